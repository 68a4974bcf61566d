/* The part of the SIMD decode inner loops that is the same for every
 * instruction set: the prefetch requests, the walk over a group's kv heads
 * and the dispatch to compiled-in sizes. Included (once) by each
 * decode_ops_<isa>.c after it defines ALWAYS_INLINE and its own
 *   dots_head(q, R, D, k, ks, nk, s, ld)  and
 *   accum_head(p, ld, R, v, vs, nk, Dv, acc),
 * so everything here is compiled with that file's instruction set; it
 * defines dec_dots and dec_accum, the file's mattn__dec_ops entries. */
#ifndef MATTN_DECODE_OPS_HEADS_H
#define MATTN_DECODE_OPS_HEADS_H

#include <xmmintrin.h>

#include "decode/decode.h"

/* Asks for the n rows of len floats at pf (stride st) one cache line at a
 * time. The hardware prefetchers do not follow the kernel's interleaved
 * short runs through K and V far enough ahead; these requests keep enough
 * lines in flight without tying up the out-of-order window the way the FMAs
 * waiting on a demand miss do. The requests go out line by line across the
 * rows (line 0 of every row, then line 1, ...) so the n streams advance
 * together: row after row streamed ~5% slower on the 2-core VM. */
static ALWAYS_INLINE void prefetch_rows(const float *pf, int64_t st, int64_t n, int64_t len)
{
    if (pf == NULL)
        return;
    for (int64_t d = 0; d < len; d += 16, pf += 16)
        for (int64_t i = 0; i < n; i++)
            _mm_prefetch((const char *)(pf + i * st), _MM_HINT_T0);
}

/* All heads of a group. Inlined twice: with D and nk the caller's, and with
 * the common case's constants (a full group of 4 keys at D = 64, 128, 256),
 * where the d loops unroll, no tail is masked and the general loops'
 * per-call setup disappears. Decode overlaps memory and compute only partly,
 * so fewer instructions per byte is bandwidth: +13-18% decode GB/s at
 * D = 128 (docs/decode.md). */
static ALWAYS_INLINE void dots_heads(const int64_t D, const int64_t nk, const mattn__dec_heads *w,
                                     int64_t j, const float *k, int64_t ks, int64_t kh,
                                     const float *pf)
{
    for (int64_t h = 0; h < w->n; h++) {
        prefetch_rows(pf ? pf + h * kh : NULL, ks, nk, D);
        dots_head(w->q + h * w->R * D, w->R, D, k + h * kh, ks, nk,
                  w->s + h * w->R * w->ld + j, w->ld);
    }
}

static ALWAYS_INLINE void accum_heads(const int64_t Dv, const int64_t nk,
                                      const mattn__dec_heads *w, int64_t j, const float *v,
                                      int64_t vs, int64_t vh, const float *pf)
{
    for (int64_t h = 0; h < w->n; h++) {
        prefetch_rows(pf ? pf + h * vh : NULL, vs, nk, Dv);
        accum_head(w->s + h * w->R * w->ld + j, w->ld, w->R, v + h * vh, vs, nk, Dv,
                   w->acc + h * w->R * Dv);
    }
}

static void dec_dots(const mattn__dec_heads *w, int64_t j, const float *k, int64_t ks,
                        int64_t kh, int64_t nk, const float *pf)
{
    switch (nk == 4 ? w->D : 0) {
    case 64: dots_heads(64, 4, w, j, k, ks, kh, pf); break;
    case 128: dots_heads(128, 4, w, j, k, ks, kh, pf); break;
    case 256: dots_heads(256, 4, w, j, k, ks, kh, pf); break;
    default: dots_heads(w->D, nk, w, j, k, ks, kh, pf); break;
    }
}

static void dec_accum(const mattn__dec_heads *w, int64_t j, const float *v, int64_t vs,
                         int64_t vh, int64_t nk, const float *pf)
{
    switch (nk == 4 ? w->Dv : 0) {
    case 64: accum_heads(64, 4, w, j, v, vs, vh, pf); break;
    case 128: accum_heads(128, 4, w, j, v, vs, vh, pf); break;
    case 256: accum_heads(256, 4, w, j, v, vs, vh, pf); break;
    default: accum_heads(w->Dv, nk, w, j, v, vs, vh, pf); break;
    }
}

#endif
