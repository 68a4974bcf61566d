/* Portable decode inner loops: plain C the compiler vectorises for any
 * target. Same contract as the AVX-512 ones (src/decode/decode.h). */
#include "decode/decode.h"

static void dots_head(const float *q, int64_t R, int64_t D, const float *k, int64_t ks,
                      int64_t nk, float *s, int64_t ld)
{
    for (int64_t i = 0; i < nk; i++) {
        const float *ki = k + i * ks;
        for (int64_t r = 0; r < R; r++) {
            const float *qr = q + r * D;
            /* 8 partial sums: a loop the compiler can vectorise (a single
             * sum is a serial chain of adds it may not reorder). */
            float part[8] = {0};
            int64_t d = 0;
            for (; d + 8 <= D; d += 8)
                for (int l = 0; l < 8; l++)
                    part[l] += qr[d + l] * ki[d + l];
            float acc = 0.0f;
            for (; d < D; d++)
                acc += qr[d] * ki[d];
            for (int l = 0; l < 8; l++)
                acc += part[l];
            s[r * ld + i] = acc;
        }
    }
}

static void accum_head(const float *p, int64_t ld, int64_t R, const float *v, int64_t vs,
                       int64_t nk, int64_t Dv, float *acc)
{
    for (int64_t r = 0; r < R; r++) {
        float *a = acc + r * Dv;
        for (int64_t i = 0; i < nk; i++) {
            float w = p[r * ld + i];
            const float *vi = v + i * vs;
            for (int64_t d = 0; d < Dv; d++)
                a[d] += w * vi[d];
        }
    }
}

static void dots_portable(const mattn__dec_heads *w, int64_t j, const float *k, int64_t ks,
                          int64_t kh, int64_t nk, const float *pf)
{
    (void)pf;
    for (int64_t h = 0; h < w->n; h++)
        dots_head(w->q + h * w->R * w->D, w->R, w->D, k + h * kh, ks, nk,
                  w->s + h * w->R * w->ld + j, w->ld);
}

static void accum_portable(const mattn__dec_heads *w, int64_t j, const float *v, int64_t vs,
                           int64_t vh, int64_t nk, const float *pf)
{
    (void)pf;
    for (int64_t h = 0; h < w->n; h++)
        accum_head(w->s + h * w->R * w->ld + j, w->ld, w->R, v + h * vh, vs, nk, w->Dv,
                   w->acc + h * w->R * w->Dv);
}

const mattn__dec_ops mattn__dec_ops_portable = {
    .name = "portable",
    .dots = dots_portable,
    .accum = accum_portable,
};
