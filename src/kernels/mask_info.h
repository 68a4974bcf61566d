/* Private view of splash mask info: the block-sparse description of one
 * mask over one call geometry (public API in include/mattn/splash.h).
 *
 * Blocks are block_q x block_kv; q block qb covers local rows
 * [qb * bq, min((qb + 1) * bq, T)) at absolute positions q_offset + row, and
 * likewise for kv blocks. For each (info head, q block) the non-empty kv
 * blocks are stored in increasing order, CSR style (splash's data_next /
 * block_mask): entries row_start[h * nqb + qb] .. row_start[h * nqb + qb + 1]
 * of kv_block[] and tile_id[] (-1 = FULL, else an index into tiles[]). EMPTY
 * blocks are simply absent, so the kernel never sees them. */
#ifndef MATTN_KERNELS_MASK_INFO_H
#define MATTN_KERNELS_MASK_INFO_H

#include <stdint.h>

#include "mattn/splash.h"

/* Default block sizes. Measured with bench_splash --cpu-time (T = 8192,
 * D = 128, 1 thread, Haswell sgemm kernels): 256 x 256 was ~10% faster than
 * 128 x 128 for MHA (OpenBLAS packs both operands on every call, so larger
 * blocks amortise it) and level with the other shapes tried for GQA/MQA; a
 * causal mask still skips all but 50.8% of the blocks at T = 16384. */
#define MATTN__SPLASH_BLOCK_Q 256
#define MATTN__SPLASH_BLOCK_KV 256

/* The block size an info uses for a length: the request (0: the default),
 * never more than the length (at least 1), since a larger block is the same
 * single block with more memory. */
static inline int64_t mattn__splash_block(int64_t requested, int64_t dflt, int64_t len)
{
    int64_t b = requested ? requested : dflt, cap = len > 0 ? len : 1;
    return b < cap ? b : cap;
}

struct mattn_splash_info {
    int64_t T, S, q_offset, kv_offset;
    int64_t bq, bkv, nqb, nkb;
    int64_t heads, head_first; /* heads: 1, or per-head info for heads [head_first, +heads) */
    int64_t *row_start;        /* [heads * nqb + 1] */
    int32_t *kv_block;         /* [nnz] non-empty kv blocks, increasing within a row */
    int32_t *tile_id;          /* [nnz] -1 = FULL, else the PARTIAL block's tile */
    int64_t ntiles;
    uint8_t *tiles;            /* [ntiles, bq, bkv], 1 = allowed */
    int32_t *order;            /* [nqb] q blocks, most non-empty kv blocks first */
    int64_t count[3];          /* blocks per mattn_splash_block state, over heads */
};

/* Share of blocks (over heads) that are not EMPTY, in [0, 1]; 1 for an info
 * with no blocks. */
double mattn__splash_info_density(const mattn_splash_info *info);

#endif
