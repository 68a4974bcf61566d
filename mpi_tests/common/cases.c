#include "cases.h"

#include <math.h>

tc_problem tc_seeded(uint64_t seed, int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv,
                     int64_t D, int64_t Dv)
{
    tl_rng r = tl_rng_make(seed);
    return tc_make(&r, B, T, S, Hq, Hkv, D, Dv, 1.0);
}

void tc_exact_logits(tl_rng *r, tc_problem *p)
{
    for (int64_t x = 0; x < p->B * p->T * p->Hq * p->D; x++)
        p->q[x] = (float)(tl_int(r, 51) - 25);
    for (int64_t x = 0; x < p->B * p->S * p->Hkv * p->D; x++)
        p->k[x] = (float)(tl_int(r, 51) - 25);
    p->scale = 1.0;
    p->exact_dots = 1;
}

void tc_random_segments(tl_rng *r, int32_t *ids, int64_t B, int64_t L, int nseg)
{
    for (int64_t b = 0; b < B; b++) {
        int32_t id = 0;
        for (int64_t i = 0; i < L; i++) {
            if (tl_int(r, 9) == 0)
                id++;
            ids[b * L + i] = id % nseg;
        }
        for (int64_t i = L - tl_int(r, L / 4 + 1); i < L; i++)
            ids[b * L + i] = -1; /* padding tail */
    }
}

void tc_random_segment_ids(tl_rng *r, tc_problem *p, int n)
{
    tc_add_segments(p);
    for (int64_t x = 0; x < p->B * p->T; x++)
        p->q_seg[x] = (int32_t)tl_int(r, n) - 1;
    for (int64_t x = 0; x < p->B * p->S; x++)
        p->kv_seg[x] = (int32_t)tl_int(r, n) - 1;
}

void tc_add_segments(tc_problem *p)
{
    p->q_seg = tl_alloc(sizeof(int32_t) * (size_t)(p->B * p->T));
    p->kv_seg = tl_alloc(sizeof(int32_t) * (size_t)(p->B * p->S));
}

void tc_add_mask(tc_problem *p, int64_t mask_b, int64_t mask_h)
{
    p->mask_b = mask_b, p->mask_h = mask_h;
    p->mask = tl_alloc((size_t)(mask_b * mask_h * p->T * p->S));
}

void tc_random_mask(tl_rng *r, tc_problem *p, int64_t mask_b, int64_t mask_h, int64_t one_in)
{
    tc_add_mask(p, mask_b, mask_h);
    for (int64_t x = 0; x < mask_b * mask_h * p->T * p->S; x++)
        p->mask[x] = (uint8_t)(tl_int(r, one_in) != 0);
}

void tc_random_bias(tl_rng *r, tc_problem *p, int64_t bias_b, int64_t bias_h, double amp)
{
    int64_t n = bias_b * bias_h * p->T * p->S;
    p->bias_b = bias_b, p->bias_h = bias_h;
    p->bias = tl_alloc(sizeof(float) * (size_t)n);
    tl_fill(r, p->bias, n, amp);
}

void tc_random_sinks(tl_rng *r, tc_problem *p, double amp)
{
    p->sinks = tl_alloc(sizeof(float) * (size_t)p->Hq);
    tl_fill(r, p->sinks, p->Hq, amp);
}

uint8_t *tc_block_sparse_bits(int64_t T, int64_t S)
{
    uint8_t *cells = tl_alloc((size_t)(T * S));
    for (int64_t i = 0; i < T; i++)
        for (int64_t j = 0; j < S; j++)
            cells[i * S + j] = (uint8_t)(((i / 16) + 2 * (j / 16)) % 3 == 0);
    return cells;
}

void tc_striped_mask_segments(tc_problem *p)
{
    const int64_t T = p->T, S = p->S;
    tc_add_mask(p, 1, p->Hq);
    for (int64_t h = 0; h < p->Hq; h++)
        for (int64_t i = 0; i < T; i++)
            for (int64_t j = 0; j < S; j++)
                p->mask[(h * T + i) * S + j] = (uint8_t)((j / 32 + h) % 3 != 0 && (i + j) % 7);
    tc_add_segments(p);
    for (int64_t x = 0; x < p->B * T; x++)
        p->q_seg[x] = (int32_t)(x % T < T - 10 ? (x % T) / 50 : -1);
    for (int64_t x = 0; x < p->B * S; x++)
        p->kv_seg[x] = (int32_t)((x % S + 20) / 50);
}

void tc_nan_keys(tc_problem *p, int64_t j0, int64_t j1)
{
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t j = j0; j < j1; j++) {
            for (int64_t x = 0; x < p->Hkv * p->D; x++)
                p->k[(b * p->S + j) * p->Hkv * p->D + x] = NAN;
            for (int64_t x = 0; x < p->Hkv * p->Dv; x++)
                p->v[(b * p->S + j) * p->Hkv * p->Dv + x] = NAN;
        }
}

/* The draws happen in this order whatever the spec says; an option the spec
 * leaves out draws nothing, so adding one to a spec changes later cases. */
tc_problem tc_random_problem(tl_rng *r, const tc_random_spec *spec, uint64_t dropout_seed)
{
    int64_t Hkv = 1 + tl_int(r, 3), G = 1 + tl_int(r, 3);
    int64_t T = 1 + tl_int(r, spec->max_len), S = 1 + tl_int(r, spec->max_len);
    int64_t D = 1 + tl_int(r, spec->max_dim), Dv = 1 + tl_int(r, spec->max_dim);
    int64_t B = 1 + tl_int(r, 2);
    tc_problem p = tc_make(r, B, T, S, Hkv * G, Hkv, D, Dv, 1.0);
    p.causal = (int)tl_int(r, 2);
    p.q_offset = tl_int(r, 3) == 0 ? S - T : tl_int(r, 20) - 5;
    if (spec->kv_offset)
        p.kv_offset = tl_int(r, 3) == 0 ? tl_int(r, 10) : 0;
    if (tl_int(r, 2)) {
        p.window_left = tl_int(r, spec->max_span) - 1;
        p.window_right = tl_int(r, spec->max_span) - 1;
    }
    if (tl_int(r, 3) == 0)
        p.chunk = 1 + tl_int(r, spec->max_span);
    if (tl_int(r, 3) == 0)
        tc_random_segment_ids(r, &p, 4); /* ids in {-1, 0, 1, 2}, no runs */
    if (spec->mask && tl_int(r, 3) == 0) {
        int64_t mb = tl_int(r, 2) ? B : 1; /* one draw a statement: a fixed order */
        int64_t mh = tl_int(r, 2) ? p.Hq : 1;
        tc_random_mask(r, &p, mb, mh, 4);
    }
    if (spec->bias && tl_int(r, 3) == 0) {
        int64_t bb = tl_int(r, 2) ? B : 1;
        int64_t bh = tl_int(r, 2) ? p.Hq : 1;
        tc_random_bias(r, &p, bb, bh, 2.0);
    }
    if (tl_int(r, 3) == 0)
        tc_random_sinks(r, &p, 3.0);
    if (tl_int(r, 3) == 0)
        p.softcap = 1.0 + 10.0 * tl_uniform(r);
    if (tl_int(r, 3) == 0)
        p.dropout_p = (float)(0.8 * tl_uniform(r)), p.seed = dropout_seed;
    if (spec->scale && tl_int(r, 3) == 0)
        p.scale = 0.05 + tl_uniform(r);
    return p;
}

void tc_every_option(tl_rng *r, tc_problem *p)
{
    p->causal = 1, p->q_offset = p->S - p->T;
    p->window_left = 50, p->window_right = 3;
    p->chunk = 64;
    tc_add_segments(p);
    for (int64_t b = 0; b < p->B; b++) {
        for (int64_t i = 0; i < p->T; i++)
            p->q_seg[b * p->T + i] = (int32_t)((p->q_offset + i) / 40);
        for (int64_t j = 0; j < p->S; j++)
            p->kv_seg[b * p->S + j] = (int32_t)((p->kv_offset + j) / 40);
        p->q_seg[b * p->T + p->T - 1] = -1;
    }
    tc_random_mask(r, p, 1, p->Hq, 5);
    tc_random_bias(r, p, p->B, 1, 1.0);
    tc_random_sinks(r, p, 2.0);
    p->softcap = 8.0;
    p->dropout_p = 0.25f, p->seed = 5;
    p->scale = 0.3;
}
