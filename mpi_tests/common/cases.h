/* Problem builders shared by the test programs: a seeded problem, the
 * option arrays (segment ids, mask, bias, sinks) allocated on a tc_problem,
 * the random option mixes and the "every option at once" problem.
 *
 * Every array a builder puts on a problem belongs to it (tc_free frees it).
 * The builders draw from the caller's generator in a fixed order, so a test
 * seeded the same way runs the same cases. */
#ifndef MATTN_TEST_CASES_H
#define MATTN_TEST_CASES_H

#include "testlib.h"

/* tc_make with a generator of its own seeded `seed`, amplitude 1. */
tc_problem tc_seeded(uint64_t seed, int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv,
                     int64_t D, int64_t Dv);

/* q and k replaced by small integers in [-25, 25] with scale 1: every fp32
 * dot product is exact (exact_dots) and logits reach ~1e4. */
void tc_exact_logits(tl_rng *r, tc_problem *p);

/* Packed sequences, ids [B, L]: runs of one id (a new id with probability
 * 1/9, numbered modulo nseg), then a padding tail of -1 up to L/4 long. */
void tc_random_segments(tl_rng *r, int32_t *ids, int64_t B, int64_t L, int nseg);

/* Segment ids put on p, each drawn on its own (no runs) uniform in
 * [-1, n - 2]: q_seg [B, T] first, then kv_seg [B, S]. */
void tc_random_segment_ids(tl_rng *r, tc_problem *p, int n);

/* Option arrays put on p, all zero: q_seg [B, T] and kv_seg [B, S]; a mask
 * [mask_b, mask_h, T, S] (every key masked until the caller fills it). */
void tc_add_segments(tc_problem *p);
void tc_add_mask(tc_problem *p, int64_t mask_b, int64_t mask_h);

/* Option arrays put on p with random contents: a mask whose entries are 0
 * with probability 1/one_in (else 1); a bias uniform in (-amp, amp); sinks
 * [Hq] uniform in (-amp, amp). */
void tc_random_mask(tl_rng *r, tc_problem *p, int64_t mask_b, int64_t mask_h, int64_t one_in);
void tc_random_bias(tl_rng *r, tc_problem *p, int64_t bias_b, int64_t bias_h, double amp);
void tc_random_sinks(tl_rng *r, tc_problem *p, double amp);

/* Fixed option patterns for the splash tests. A [T, S] bit pattern (malloc'd)
 * of 16 x 16 cells, one in three kept: FULL and EMPTY blocks, PARTIAL ones
 * where the cells do not line up with the blocks. */
uint8_t *tc_block_sparse_bits(int64_t T, int64_t S);
/* A per-head mask [1, Hq, T, S] dropping every third 32-key stripe (shifted
 * per head) and a sparse diagonal pattern; segments of 50 positions, kv ids
 * shifted by 20, the last 10 queries padding. */
void tc_striped_mask_segments(tc_problem *p);
/* NaN in every head of the key and value rows j0 <= j < j1. */
void tc_nan_keys(tc_problem *p, int64_t j0, int64_t j1);

/* What tc_random_problem draws: sizes, and which options beyond causal,
 * q_offset, window, chunk, segments, sinks, softcap and dropout. */
typedef struct tc_random_spec {
    int64_t max_len;  /* T and S uniform in [1, max_len] */
    int64_t max_dim;  /* D and Dv uniform in [1, max_dim] */
    int64_t max_span; /* window sides in [-1, max_span - 2], chunk in [1, max_span] */
    int kv_offset, mask, bias, scale; /* also draw these (else left neutral) */
} tc_random_spec;

/* A random problem (B <= 2, Hkv <= 3, G <= 3) with each option switched on
 * at random; dropout, when drawn, uses dropout_seed. */
tc_problem tc_random_problem(tl_rng *r, const tc_random_spec *spec, uint64_t dropout_seed);

/* Every option at once on p (for S >= T): causal bottom-right, a window,
 * chunks, segments of 40 positions with the last query padding, a per-head
 * mask, a per-batch bias, sinks, softcap, dropout and a scale. */
void tc_every_option(tl_rng *r, tc_problem *p);

#endif
