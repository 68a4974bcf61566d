/* Test-side mask expressions for the splash tests: the naive predicate of
 * each mask kind written from SPEC §3 and include/mattn/splash.h (nothing
 * from src/), plus a builder of the equivalent library mask object.
 * Header-only so test_splash.c and test_mask_info.c share it. */
#ifndef MATTN_TEST_SPLASH_MASKS_H
#define MATTN_TEST_SPLASH_MASKS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/testlib.h"

typedef enum {
    TM_FULL,
    TM_CAUSAL,  /* kp <= qp + a */
    TM_LOCAL,   /* qp - a <= kp <= qp + b, -1 unbounded */
    TM_CHUNKED, /* floor(qp / a) == floor(kp / a) and kp <= qp */
    TM_DENSE,   /* data[(qp - q0) * stride + kp - k0] inside [rows, cols] */
    TM_AND,
    TM_OR,
    TM_PER_HEAD
} tm_kind;

typedef struct tmask tm;
struct tmask {
    tm_kind kind;
    int64_t a, b;
    const uint8_t *data;
    int64_t rows, cols, stride, q0, k0;
    tm *x, *y;
    tm **heads;
    int64_t nheads;
    tm *next_alloc;
};

/* Every node of a test goes on one list, freed by tm_free_all. */
static tm *tm_all;

static tm *tm_new(tm_kind kind)
{
    tm *t = tl_alloc(sizeof *t);
    t->kind = kind;
    t->next_alloc = tm_all;
    tm_all = t;
    return t;
}

static void tm_free_all(void)
{
    while (tm_all) {
        tm *n = tm_all->next_alloc;
        free(tm_all->heads);
        free(tm_all);
        tm_all = n;
    }
}

static tm *tm_full(void)
{
    return tm_new(TM_FULL);
}

static tm *tm_causal(int64_t offset)
{
    tm *t = tm_new(TM_CAUSAL);
    t->a = offset;
    return t;
}

static tm *tm_local(int64_t left, int64_t right)
{
    tm *t = tm_new(TM_LOCAL);
    t->a = left, t->b = right;
    return t;
}

static tm *tm_chunked(int64_t chunk)
{
    tm *t = tm_new(TM_CHUNKED);
    t->a = chunk;
    return t;
}

static tm *tm_dense(const uint8_t *data, int64_t rows, int64_t cols, int64_t q0, int64_t k0)
{
    tm *t = tm_new(TM_DENSE);
    t->data = data, t->rows = rows, t->cols = cols, t->stride = cols, t->q0 = q0, t->k0 = k0;
    return t;
}

static tm *tm_pair(tm_kind kind, tm *x, tm *y)
{
    tm *t = tm_new(kind);
    t->x = x, t->y = y;
    return t;
}

static tm *tm_per_head(tm **heads, int64_t n)
{
    tm *t = tm_new(TM_PER_HEAD);
    t->heads = tl_alloc(sizeof(tm *) * (size_t)n);
    memcpy(t->heads, heads, sizeof(tm *) * (size_t)n);
    t->nheads = n;
    return t;
}

static int64_t tm_floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static int tm_allowed(const tm *t, int64_t h, int64_t qp, int64_t kp)
{
    switch (t->kind) {
    case TM_FULL:
        return 1;
    case TM_CAUSAL:
        return kp <= qp + t->a;
    case TM_LOCAL:
        return (t->a < 0 || kp >= qp - t->a) && (t->b < 0 || kp <= qp + t->b);
    case TM_CHUNKED:
        return tm_floordiv(qp, t->a) == tm_floordiv(kp, t->a) && kp <= qp;
    case TM_DENSE: {
        int64_t r = qp - t->q0, c = kp - t->k0;
        return r >= 0 && r < t->rows && c >= 0 && c < t->cols && t->data[r * t->stride + c];
    }
    case TM_AND:
        return tm_allowed(t->x, h, qp, kp) && tm_allowed(t->y, h, qp, kp);
    case TM_OR:
        return tm_allowed(t->x, h, qp, kp) || tm_allowed(t->y, h, qp, kp);
    case TM_PER_HEAD:
        return tm_allowed(t->heads[h], h, qp, kp);
    }
    return 0;
}

static int64_t tm_heads(const tm *t)
{
    if (t->kind == TM_PER_HEAD)
        return t->nheads;
    if (t->kind == TM_AND || t->kind == TM_OR) {
        int64_t a = tm_heads(t->x), b = tm_heads(t->y);
        return a > b ? a : b;
    }
    return 1;
}

/* The library mask object for t (caller frees). */
static mattn_splash_mask *tm_build(const tm *t)
{
    mattn_splash_mask *m = NULL, *x = NULL, *y = NULL;
    int rc = MATTN_ERR_ARG;
    switch (t->kind) {
    case TM_FULL:
        rc = mattn_splash_mask_full(&m);
        break;
    case TM_CAUSAL:
        rc = mattn_splash_mask_causal(t->a, &m);
        break;
    case TM_LOCAL:
        rc = mattn_splash_mask_local(t->a, t->b, &m);
        break;
    case TM_CHUNKED:
        rc = mattn_splash_mask_chunked(t->a, &m);
        break;
    case TM_DENSE:
        rc = mattn_splash_mask_dense_ex(t->data, t->rows, t->cols, t->stride, t->q0, t->k0, &m);
        break;
    case TM_AND:
    case TM_OR:
        x = tm_build(t->x);
        y = tm_build(t->y);
        rc = t->kind == TM_AND ? mattn_splash_mask_and(x, y, &m) : mattn_splash_mask_or(x, y, &m);
        mattn_splash_mask_free(x); /* the combination holds its own references */
        mattn_splash_mask_free(y);
        break;
    case TM_PER_HEAD: {
        mattn_splash_mask **hs = tl_alloc(sizeof *hs * (size_t)t->nheads);
        for (int64_t h = 0; h < t->nheads; h++)
            hs[h] = tm_build(t->heads[h]);
        rc = mattn_splash_mask_per_head(hs, t->nheads, &m);
        for (int64_t h = 0; h < t->nheads; h++)
            mattn_splash_mask_free(hs[h]);
        free(hs);
        break;
    }
    }
    if (rc != MATTN_OK)
        fail_msg("building a splash mask failed: %s", mattn_last_error());
    return m;
}

/* The reference problem: `call` with the mask object folded into its
 * boolean mask (AND), per head when either is per head; free its mask. */
static inline tc_problem tm_reference_of(const tc_problem *call, const tm *t)
{
    tc_problem ref = *call;
    int64_t mb = call->mask ? call->mask_b : 1;
    int64_t mh = (tm_heads(t) > 1 || (call->mask && call->mask_h > 1)) ? call->Hq : 1;
    ref.mask_b = mb, ref.mask_h = mh;
    ref.mask = tl_alloc((size_t)(mb * mh * call->T * call->S + 1));
    for (int64_t b = 0; b < mb; b++)
        for (int64_t h = 0; h < mh; h++)
            for (int64_t i = 0; i < call->T; i++)
                for (int64_t j = 0; j < call->S; j++) {
                    int ok = tm_allowed(t, tm_heads(t) > 1 ? h : 0, call->q_offset + i,
                                        call->kv_offset + j);
                    if (call->mask) {
                        int64_t cb = call->mask_b == 1 ? 0 : b, ch = call->mask_h == 1 ? 0 : h;
                        ok = ok && call->mask[((cb * call->mask_h + ch) * call->T + i) * call->S + j];
                    }
                    ref.mask[((b * mh + h) * call->T + i) * call->S + j] = (uint8_t)ok;
                }
    return ref;
}

/* A random boolean array with about `density` ones. */
static uint8_t *tm_random_bits(tl_rng *r, int64_t n, double density)
{
    uint8_t *d = tl_alloc((size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++)
        d[i] = (uint8_t)(tl_uniform(r) < density ? 1 + tl_int(r, 255) : 0);
    return d;
}

#endif
