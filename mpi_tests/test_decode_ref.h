/* A float64 reference for the decode tests, written from SPEC §3-4 and §5
 * (it uses nothing from src/), on a layout-free "logical" problem: each
 * sequence has keys and values at global positions 0..total-1
 * (k [total, Hkv, D], v [total, Hkv, Dv]) and query rows at given positions.
 * The tests lay the same numbers out as a contiguous cache, as shuffled
 * pages, or split over ranks, and compare against this.
 *
 * Error model (u = 2^-24), as testlib.c's with one addition: each logit is
 * off by at most ds = (D + 2) u |scale| sum|q_d k_d| (+ 4u cap with a soft
 * cap, + 2u |s|); lse by 2 ds + (n + 8) u (1 + |lse|) over n terms; a weight
 * by ds + d(lse) + 8u relative; o sums n weighted values (n u more). Each
 * merge of two (o, lse) partials (split-KV pieces, ranks, the sink) rounds
 * its two weights and one sum and log: at most 8u of vmax on o and
 * 4u (1 + |lse|) on lse per merge, so `merges` adds that many. */
#ifndef MATTN_TEST_DECODE_REF_H
#define MATTN_TEST_DECODE_REF_H

#include <math.h>
#include <string.h>

#include "common/testlib.h"

typedef struct dref_opts {
    double scale;  /* the fp32 scale the library uses */
    double softcap;
    int64_t window_left, window_right, chunk;
    const float *sinks; /* [Hq] or NULL */
    int64_t merges;     /* upper bound on partial merges per row */
} dref_opts;

typedef struct dref_row {
    double lse, m, l;        /* m, l with the sink folded in; -inf, 0 if empty */
    double tol_o, tol_lse, tol_m, tol_l;
    int empty;               /* no allowed key (and no sink) */
} dref_row;

static inline int64_t dref_floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* SPEC §3 for a decode query at qp over a sequence offering keys [lo, hi):
 * causal by construction (kp <= qp), window, chunk. */
static inline int dref_allowed(const dref_opts *op, int64_t qp, int64_t lo, int64_t hi,
                               int64_t kp)
{
    if (kp < lo || kp >= hi || kp > qp)
        return 0;
    if (op->window_left >= 0 && kp < qp - op->window_left)
        return 0;
    if (op->window_right >= 0 && kp > qp + op->window_right)
        return 0;
    if (op->chunk > 0 && dref_floordiv(qp, op->chunk) != dref_floordiv(kp, op->chunk))
        return 0;
    return 1;
}

/* One query row of head h: q [D], keys k [*, Hkv, D], values v [*, Hkv, Dv]
 * of its sequence, whose row 0 is position pos0. o [Dv] receives the float64
 * output. */
static inline void dref_row_compute(const dref_opts *op, const float *q, const float *k,
                                    const float *v, int64_t pos0, int64_t Hq, int64_t Hkv,
                                    int64_t D, int64_t Dv, int64_t h, int64_t qp, int64_t lo,
                                    int64_t hi, double *o, dref_row *r)
{
    const double u = 1.0 / 16777216.0;
    const int64_t hk = h / (Hq / Hkv);
    double m = op->sinks ? (double)op->sinks[h] : -INFINITY, ds = 0.0, vmax = 0.0;
    int64_t n = 0;
    memset(o, 0, sizeof(double) * (size_t)Dv);
    for (int pass = 0; pass < 2; pass++) { /* pass 0: max; pass 1: sums */
        double l = op->sinks ? exp((double)op->sinks[h] - m) : 0.0;
        for (int64_t kp = lo; kp < hi; kp++) {
            if (!dref_allowed(op, qp, lo, hi, kp))
                continue;
            const float *kr = k + ((kp - pos0) * Hkv + hk) * D;
            const float *vr = v + ((kp - pos0) * Hkv + hk) * Dv;
            double dot = 0.0, mag = 0.0;
            for (int64_t d = 0; d < D; d++) {
                dot += (double)q[d] * (double)kr[d];
                mag += fabs((double)q[d] * (double)kr[d]);
            }
            double s = op->scale * dot, err = (D + 2) * u * fabs(op->scale) * mag;
            if (op->softcap > 0.0) {
                s = op->softcap * tanh(s / op->softcap);
                err += 4.0 * u * op->softcap;
            }
            err += 2.0 * u * fabs(s);
            if (pass == 0) {
                m = s > m ? s : m;
                ds = err > ds ? err : ds;
                n++;
                for (int64_t d = 0; d < Dv; d++)
                    vmax = fabs((double)vr[d]) > vmax ? fabs((double)vr[d]) : vmax;
                continue;
            }
            double w = exp(s - m);
            l += w;
            for (int64_t d = 0; d < Dv; d++)
                o[d] += w * (double)vr[d];
        }
        if (pass == 0 && m == -INFINITY) { /* empty row, no sink: o = 0, lse = -inf */
            *r = (dref_row){.lse = -INFINITY, .m = -INFINITY, .l = 0.0, .empty = 1};
            return;
        }
        if (pass == 1) {
            for (int64_t d = 0; d < Dv; d++)
                o[d] /= l;
            double nn = (double)(n + 1), mg = (double)op->merges;
            r->empty = 0;
            r->m = m;
            r->l = l;
            r->lse = m + log(l);
            double dlse = 2.0 * ds + (nn + 8.0) * u * (1.0 + fabs(r->lse)) +
                          4.0 * mg * u * (1.0 + fabs(r->lse));
            r->tol_lse = dlse;
            r->tol_o = (ds + dlse + 8.0 * u + (nn + 8.0) * u + 8.0 * mg * u) * vmax + u * vmax;
            r->tol_m = ds + 2.0 * u * fabs(m);
            r->tol_l = l * (dlse + 2.0 * r->tol_m + 8.0 * u);
        }
    }
}

/* Compares one library row with the reference; fails the test naming it. */
static inline void dref_check_row(const char *what, long long s, long long t, long long h,
                                  const float *o, const double *ro, int64_t Dv,
                                  const float *lse, const float *m, const float *l,
                                  const dref_row *r)
{
    for (int64_t d = 0; d < Dv; d++) {
        double tol = r->empty ? 0.0 : r->tol_o;
        if (!(fabs((double)o[d] - ro[d]) <= tol))
            fail_msg("%s: seq %lld query %lld head %lld: o[%lld] = %.9g, reference %.9g "
                     "(|diff| %.3g > tol %.3g)",
                     what, s, t, h, (long long)d, o[d], ro[d], fabs((double)o[d] - ro[d]),
                     tol);
    }
    if (lse) {
        int ok = r->lse == -INFINITY ? *lse == -INFINITY : fabs(*lse - r->lse) <= r->tol_lse;
        if (!ok)
            fail_msg("%s: seq %lld query %lld head %lld: lse = %.9g, reference %.9g (tol %.3g)",
                     what, s, t, h, *lse, r->lse, r->tol_lse);
    }
    if (m) {
        int ok = r->m == -INFINITY ? *m == -INFINITY : fabs(*m - r->m) <= r->tol_m;
        if (!ok)
            fail_msg("%s: seq %lld head %lld: m = %.9g, reference %.9g (tol %.3g)", what, s, h,
                     *m, r->m, r->tol_m);
    }
    if (l) {
        int ok = r->l == 0.0 ? *l == 0.0f : fabs(*l - r->l) <= r->tol_l;
        if (!ok)
            fail_msg("%s: seq %lld head %lld: l = %.9g, reference %.9g (tol %.3g)", what, s, h,
                     *l, r->l, r->tol_l);
    }
}

/* ------------------------------------------------------------ paged problems */

/* A logical paged problem: sequence s has total[s] tokens (k [total, Hkv, D],
 * v [total, Hkv, Dv]) and its last qn[s] positions as packed queries
 * q [T, Hq, D], T = sum qn. */
typedef struct pcase {
    int64_t ns, Hq, Hkv, D, Dv, T;
    int64_t *total, *qn;
    float **k, **v, *q;
    int32_t *cu;
    mattn_options opts;
} pcase;

static inline pcase pcase_make(uint64_t seed, int64_t ns, const int64_t *total,
                               const int64_t *qn, int64_t Hq, int64_t Hkv, int64_t D,
                               int64_t Dv)
{
    tl_rng r = tl_rng_make(seed);
    pcase c = {.ns = ns, .Hq = Hq, .Hkv = Hkv, .D = D, .Dv = Dv};
    c.total = tl_alloc(sizeof(int64_t) * (size_t)(ns + 1));
    c.qn = tl_alloc(sizeof(int64_t) * (size_t)(ns + 1));
    c.k = tl_alloc(sizeof(float *) * (size_t)(ns + 1));
    c.v = tl_alloc(sizeof(float *) * (size_t)(ns + 1));
    c.cu = tl_alloc(sizeof(int32_t) * (size_t)(ns + 1));
    for (int64_t s = 0; s < ns; s++) {
        c.total[s] = total[s], c.qn[s] = qn[s];
        c.k[s] = tl_alloc(sizeof(float) * (size_t)(total[s] * Hkv * D + 1));
        c.v[s] = tl_alloc(sizeof(float) * (size_t)(total[s] * Hkv * Dv + 1));
        tl_fill(&r, c.k[s], total[s] * Hkv * D, 2.0);
        tl_fill(&r, c.v[s], total[s] * Hkv * Dv, 1.0);
        c.cu[s + 1] = c.cu[s] + (int32_t)qn[s];
    }
    c.T = c.cu[ns];
    c.q = tl_alloc(sizeof(float) * (size_t)(c.T * Hq * D + 1));
    tl_fill(&r, c.q, c.T * Hq * D, 2.0);
    c.opts = mattn_options_default();
    return c;
}

static inline void pcase_free(pcase *c)
{
    for (int64_t s = 0; s < c->ns; s++)
        free(c->k[s]), free(c->v[s]);
    free(c->total), free(c->qn), free(c->k), free(c->v), free(c->cu), free(c->q);
}

/* A page pool holding tokens [lo[s], lo[s] + len[s]) of each sequence (lo,
 * len NULL: all of it) in shuffled pages of page_size, with spare pages and
 * garbage in the unused page-table entries. Written through
 * mattn_paged_cache_write when use_write (checked to succeed), else copied.
 * The caller frees kv->k_pages.data, kv->v_pages.data and the three arrays. */
static inline void pcase_pages(const pcase *c, int64_t ps, const int64_t *lo,
                               const int64_t *len, uint64_t seed, int use_write,
                               mattn_paged_kv *kv)
{
    tl_rng r = tl_rng_make(seed);
    int64_t ns = c->ns, npages = 3, mp = 1;
    for (int64_t s = 0; s < ns; s++) {
        int64_t n = len ? len[s] : c->total[s], need = (n + ps - 1) / ps;
        npages += need;
        mp = need + 1 > mp ? need + 1 : mp;
    }
    int32_t *perm = tl_alloc(sizeof(int32_t) * (size_t)npages);
    for (int64_t i = 0; i < npages; i++)
        perm[i] = (int32_t)i;
    for (int64_t i = npages - 1; i > 0; i--) { /* pages used out of order */
        int64_t j = tl_int(&r, i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    float *kp = tl_alloc(sizeof(float) * (size_t)(npages * ps * c->Hkv * c->D));
    float *vp = tl_alloc(sizeof(float) * (size_t)(npages * ps * c->Hkv * c->Dv));
    for (int64_t i = 0; i < npages * ps * c->Hkv * c->D; i++)
        kp[i] = NAN; /* a slot read by mistake poisons the result */
    for (int64_t i = 0; i < npages * ps * c->Hkv * c->Dv; i++)
        vp[i] = NAN;
    int32_t *table = tl_alloc(sizeof(int32_t) * (size_t)(ns * mp + 1));
    int32_t *lens = tl_alloc(sizeof(int32_t) * (size_t)(ns + 1));
    int32_t *starts = tl_alloc(sizeof(int32_t) * (size_t)(ns + 1));
    int32_t *totals = tl_alloc(sizeof(int32_t) * (size_t)(ns + 1));
    *kv = (mattn_paged_kv){.k_pages = mattn_tensor_bthd(kp, npages, ps, c->Hkv, c->D),
                           .v_pages = mattn_tensor_bthd(vp, npages, ps, c->Hkv, c->Dv),
                           .page_table = table, .num_seqs = ns, .max_pages = mp,
                           .kv_lens = lens, .kv_starts = lo ? starts : NULL,
                           .kv_totals = lo ? totals : NULL};
    int64_t next = 0;
    for (int64_t s = 0; s < ns; s++) {
        int64_t first = lo ? lo[s] : 0, n = len ? len[s] : c->total[s];
        lens[s] = (int32_t)n, starts[s] = (int32_t)first, totals[s] = (int32_t)c->total[s];
        for (int64_t i = 0; i < mp; i++)
            table[s * mp + i] = i % 2 ? -5 : (int32_t)1 << 30; /* unused entries */
        for (int64_t i = 0; i < (n + ps - 1) / ps; i++)
            table[s * mp + i] = perm[next++];
        const float *ks = c->k[s] + first * c->Hkv * c->D, *vs = c->v[s] + first * c->Hkv * c->Dv;
        if (use_write) {
            int32_t *slot = tl_alloc(sizeof(int32_t) * (size_t)(n + 1));
            for (int64_t t = 0; t < n; t++)
                slot[t] = (int32_t)(table[s * mp + t / ps] * ps + t % ps);
            mattn_tensor kn = mattn_tensor_bthd(ks, 1, n, c->Hkv, c->D);
            mattn_tensor vn = mattn_tensor_bthd(vs, 1, n, c->Hkv, c->Dv);
            int rc = mattn_paged_cache_write(&kn, &vn, slot, &kv->k_pages, &kv->v_pages);
            if (rc != MATTN_OK)
                fail_msg("cache write: %s", mattn_last_error());
            free(slot);
        } else {
            for (int64_t t = 0; t < n; t++) {
                int64_t pg = table[s * mp + t / ps], row = pg * ps + t % ps;
                memcpy(kp + row * c->Hkv * c->D, ks + t * c->Hkv * c->D,
                       sizeof(float) * (size_t)(c->Hkv * c->D));
                memcpy(vp + row * c->Hkv * c->Dv, vs + t * c->Hkv * c->Dv,
                       sizeof(float) * (size_t)(c->Hkv * c->Dv));
            }
        }
    }
    free(perm);
    if (!lo)
        free(starts), free(totals);
}

static inline void pcase_pages_free(mattn_paged_kv *kv)
{
    free(kv->k_pages.data), free(kv->v_pages.data);
    free((void *)kv->page_table), free((void *)kv->kv_lens);
    free((void *)kv->kv_starts), free((void *)kv->kv_totals);
}

/* Checks o [T, Hq, Dv] and lse [Hq, T] (may be NULL) of a paged run. */
static inline void pcase_check(const char *what, const pcase *c, const float *o,
                               const float *lse, int64_t merges)
{
    dref_opts op = {.scale = (double)(c->opts.scale != 0.0f
                                          ? c->opts.scale
                                          : (float)(1.0 / sqrt((double)c->D))),
                    .softcap = (double)c->opts.softcap,
                    .window_left = c->opts.window_left,
                    .window_right = c->opts.window_right,
                    .chunk = c->opts.chunk,
                    .sinks = c->opts.sinks,
                    .merges = merges};
    double *ro = tl_alloc(sizeof(double) * (size_t)c->Dv);
    for (int64_t s = 0; s < c->ns; s++)
        for (int64_t i = 0; i < c->qn[s]; i++)
            for (int64_t h = 0; h < c->Hq; h++) {
                int64_t t = c->cu[s] + i, qp = c->total[s] - c->qn[s] + i;
                dref_row r;
                dref_row_compute(&op, c->q + (t * c->Hq + h) * c->D, c->k[s], c->v[s], 0, c->Hq,
                                 c->Hkv, c->D, c->Dv, h, qp, 0, c->total[s], ro, &r);
                dref_check_row(what, s, i, h, o + (t * c->Hq + h) * c->Dv, ro, c->Dv,
                               lse ? lse + h * c->T + t : NULL, NULL, NULL, &r);
            }
    free(ro);
}

#endif
