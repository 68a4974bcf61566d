/* Private view of splash mask objects: an immutable, reference-counted tree.
 *
 * Leaves:
 *   BAND   allowed iff dlo <= kp - qp <= dhi and, when chunk > 0,
 *          floor(qp / chunk) == floor(kp / chunk). Full, causal(offset),
 *          local(left, right) and chunked(C) are all bands, and so is the
 *          AND of two bands with the same (or no) chunk.
 *   DENSE  a borrowed [rows, cols] uint8 array placed at (q0, k0).
 * Inner nodes: AND, OR (two children) and PER_HEAD (one child per q head).
 *
 * The allowed keys of one query under a band are one interval whose ends
 * never decrease as qp grows (within a chunk), which is what makes the
 * rectangle classification below O(1) per band. */
#ifndef MATTN_KERNELS_SPLASH_MASK_H
#define MATTN_KERNELS_SPLASH_MASK_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/problem.h"
#include "mattn.h"
#include "mattn/splash.h"

/* "Unbounded" ends of a band. Positions stay within +-2^61 (offsets are
 * bounded by 2^60 and lengths by 2^40), so differences of positions and
 * these sentinels never overflow. */
#define MATTN__BAND_NO_LO (-((int64_t)1 << 62))
#define MATTN__BAND_NO_HI ((int64_t)1 << 62)

typedef enum mattn__mask_kind {
    MATTN__MASK_BAND,
    MATTN__MASK_DENSE,
    MATTN__MASK_AND,
    MATTN__MASK_OR,
    MATTN__MASK_PER_HEAD
} mattn__mask_kind;

struct mattn_splash_mask {
    atomic_long refs;
    mattn__mask_kind kind;
    int64_t heads; /* 1, or the head count of the per-head node(s) below */
    int lazy;      /* no dense leaf below: tiles depend on positions only
                      through (kp0 - qp0, qp0 mod period) */
    int64_t period; /* lazy: lcm of the chunks below (1: none; 0: too large) */
    int depth;      /* longest path to a leaf, leaves 1 (row evaluation stack) */
    union {
        struct {
            int64_t dlo, dhi, chunk;
        } band;
        struct {
            const uint8_t *data;
            int64_t rows, cols, stride, q0, k0;
        } dense;
        struct {
            const struct mattn_splash_mask *a, *b;
        } pair;
        struct {
            const struct mattn_splash_mask **child; /* [heads] */
        } per_head;
    } u;
};

/* A band leaf from its raw ends (validated by the caller). */
int mattn__splash_mask_band(int64_t dlo, int64_t dhi, int64_t chunk, mattn_splash_mask **mask);

/* Fingerprint of the mask's structure and dense contents (0 for NULL):
 * equal masks hash alike on every rank. Reads every dense byte once. */
uint64_t mattn__splash_mask_hash(const mattn_splash_mask *m);

/* Exact point predicate. `head` selects the child of per-head nodes. */
int mattn__mask_allowed(const mattn_splash_mask *m, int64_t head, int64_t qp, int64_t kp);

/* State of the rectangle [qa, qb] x [ka, kb] (inclusive absolute positions,
 * non-empty) for `head` (-1: every head). EMPTY and FULL are exact; PARTIAL
 * is exact for a single leaf and conservative for AND / OR / head -1. */
mattn_splash_block mattn__mask_classify(const mattn_splash_mask *m, int64_t head, int64_t qa,
                                        int64_t qb, int64_t ka, int64_t kb);

/* out[j] = allowed(qp, k0 + j) for j < n, as 0/1. `stack` holds at least
 * (depth - 1) * n bytes of scratch for AND / OR. */
void mattn__mask_row(const mattn_splash_mask *m, int64_t head, int64_t qp, int64_t k0,
                     int64_t n, uint8_t *out, uint8_t *stack);

/* The mask object meaning the problem's own predicates: the band of
 * causal/window/chunk AND the boolean mask when it is shared by the batch
 * (per head when it has heads), placed at the problem's offsets (so it also
 * serves a shard of a larger problem). *used_mask says the boolean mask is
 * in it; segment ids never are (they are per batch entry). *mask is NULL
 * when the problem has neither. */
int mattn__splash_problem_mask(const mattn__problem *p, mattn_splash_mask **mask,
                               int *used_mask);

#endif
