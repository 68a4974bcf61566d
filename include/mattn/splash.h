/* Splash attention: flash attention driven by a block-sparse mask (SPEC §5).
 *
 * Three objects:
 *  - a MASK OBJECT (mattn_splash_mask) says which keys a query may see, as a
 *    predicate on ABSOLUTE positions (qp, kp) of SPEC §3 (qp = q_offset + i,
 *    kp = kv_offset + j). Lazily described kinds (full, causal, local,
 *    chunked) cost nothing to hold; dense ones borrow a boolean array; any of
 *    them combine by AND / OR and per q head.
 *  - MASK INFO (mattn_splash_info) cuts the (q, kv) plane of one call
 *    geometry into block_q x block_kv blocks and records for each block
 *    whether it is EMPTY (skipped: no GEMM, no exp, no K/V traffic),
 *    PARTIAL (one of a table of distinct mask tiles is applied) or FULL (no
 *    mask work). Identical tiles are stored once. Built once, reused by any
 *    number of calls (it is immutable, so concurrent calls may share it).
 *    Lazily described masks are classified in O(number of blocks); dense
 *    and per-head ones need a scan of their elements.
 *  - the SPLASH FORWARD walks, per q block, only the non-empty kv blocks.
 *
 * Combining with mattn_options: a key is allowed iff the mask object allows
 * it AND every predicate set in the options allows it (causal, window,
 * chunk, segment ids, boolean mask). So a caller may describe the mask
 * either way, or both; segment ids (always element-wise) combine with any
 * mask object. Everything else in the options (scale, soft cap, bias,
 * sinks, dropout, lse, threads) means exactly what it means for flash.
 *
 * Equivalences with the options (same predicate, same numbers to fp32
 * rounding):   mattn_splash_mask_causal(0)      == causal = 1
 *              mattn_splash_mask_local(l, r)    == window_left = l, window_right = r
 *              mattn_splash_mask_chunked(c)     == causal = 1, chunk = c
 *              mattn_splash_mask_dense(m, T, S) == mask = m (q_offset = kv_offset = 0) */
/* The core header first, outside the guard: it includes every area header
 * in dependency order, so any of them may be included first. */
#include "mattn.h"

#ifndef MATTN_SPLASH_H
#define MATTN_SPLASH_H

#include <stdint.h>

#include "mattn.h"
#include "mattn/mesh.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- masks */

/* An immutable, reference-counted mask object. Every constructor returns a
 * new handle the caller frees with mattn_splash_mask_free; combinators take
 * their own references to their operands, so operands may be freed at once. */
typedef struct mattn_splash_mask mattn_splash_mask;

/* Every key allowed. */
MATTN_API int mattn_splash_mask_full(mattn_splash_mask **mask);
/* kp <= qp + offset (offset 0: SPEC causal; > 0 also sees `offset` keys
 * ahead, < 0 hides the diagonal and `-offset - 1` keys before it). */
MATTN_API int mattn_splash_mask_causal(int64_t offset, mattn_splash_mask **mask);
/* qp - left <= kp <= qp + right, inclusive; -1 = unbounded on that side
 * (SPEC window). left, right >= -1. */
MATTN_API int mattn_splash_mask_local(int64_t left, int64_t right, mattn_splash_mask **mask);
/* Chunked causal: qp / chunk == kp / chunk (floor division) and kp <= qp
 * (splash's ChunkedCausalMask). chunk > 0. */
MATTN_API int mattn_splash_mask_chunked(int64_t chunk, mattn_splash_mask **mask);
/* A contiguous [rows, cols] boolean array (nonzero = allowed) whose element
 * [r, c] is the pair qp = r, kp = c; pairs outside the array are not
 * allowed. The array is BORROWED: it must stay valid and unchanged while
 * this mask (or any mask combining it) is used to build mask info; the info
 * itself copies what it needs. */
MATTN_API int mattn_splash_mask_dense(const uint8_t *data, int64_t rows, int64_t cols,
                                      mattn_splash_mask **mask);
/* The same with a row stride (elements, >= cols) and the absolute position
 * of element [0, 0]: [r, c] is the pair qp = q_first + r, kp = kv_first + c. */
MATTN_API int mattn_splash_mask_dense_ex(const uint8_t *data, int64_t rows, int64_t cols,
                                         int64_t stride_row, int64_t q_first,
                                         int64_t kv_first, mattn_splash_mask **mask);
/* One mask per q head: head h sees masks[h] (h is the GLOBAL q head, see
 * mattn_splash_info_options.head_first). Operands may not be per-head. */
MATTN_API int mattn_splash_mask_per_head(mattn_splash_mask *const *masks, int64_t heads,
                                         mattn_splash_mask **mask);
/* Pairs allowed by both / by either. Per-head operands must agree on the
 * head count (a non-per-head operand applies to every head). */
MATTN_API int mattn_splash_mask_and(const mattn_splash_mask *a, const mattn_splash_mask *b,
                                    mattn_splash_mask **mask);
MATTN_API int mattn_splash_mask_or(const mattn_splash_mask *a, const mattn_splash_mask *b,
                                   mattn_splash_mask **mask);
/* Drops this handle's reference. NULL is allowed. */
MATTN_API void mattn_splash_mask_free(mattn_splash_mask *mask);

/* Number of q heads a per-head mask describes; 1 for any other mask. */
MATTN_API int64_t mattn_splash_mask_heads(const mattn_splash_mask *mask);
/* 1 if the mask allows key position kp for query position qp of q head
 * `head` (ignored unless per-head), else 0. For tests and inspection. */
MATTN_API int mattn_splash_mask_allowed(const mattn_splash_mask *mask, int64_t head, int64_t qp,
                                        int64_t kp);

typedef enum mattn_splash_block {
    MATTN_SPLASH_EMPTY = 0,   /* no pair allowed: skipped */
    MATTN_SPLASH_PARTIAL = 1, /* some allowed: a mask tile is applied */
    MATTN_SPLASH_FULL = 2     /* every pair allowed: no mask work */
} mattn_splash_block;

/* State of the rectangle of absolute positions [q_first, q_first + q_count)
 * x [kv_first, kv_first + kv_count) for q head `head` (-1: for every head
 * at once: EMPTY only if empty for all heads, FULL only if full for all).
 * For a distributed caller deciding which steps or shards to skip: EMPTY
 * and FULL answers are exact; PARTIAL may be reported for an AND/OR of
 * different kinds whose rectangle is in fact empty or full. Lazily described
 * masks answer in O(1) per node; a dense mask reads the rectangle. */
MATTN_API int mattn_splash_mask_classify(const mattn_splash_mask *mask, int64_t head,
                                         int64_t q_first, int64_t q_count, int64_t kv_first,
                                         int64_t kv_count, mattn_splash_block *state);

/* ---------------------------------------------------------------- mask info */

typedef struct mattn_splash_info mattn_splash_info;

/* The call geometry an info is built for. Always start from
 * mattn_splash_info_options_default(). */
typedef struct mattn_splash_info_options {
    int64_t q_offset, kv_offset; /* absolute position of q row 0 / key 0 (as mattn_options) */
    int block_q, block_kv;       /* block sizes; 0 = 256 (at most the length) */
    /* Per-head masks: the info covers global q heads [head_first,
     * head_first + heads); heads 0 = all the mask has from head_first.
     * Ignored (the info has 1 head) for masks that are not per-head. */
    int64_t head_first, heads;
} mattn_splash_info_options;

MATTN_API mattn_splash_info_options mattn_splash_info_options_default(void);

/* Builds the block description of `mask` for calls with q_len query rows
 * and kv_len keys at the given offsets. The mask may be freed afterwards. */
MATTN_API int mattn_splash_info_create(const mattn_splash_mask *mask, int64_t q_len,
                                       int64_t kv_len, const mattn_splash_info_options *opts,
                                       mattn_splash_info **info);
MATTN_API void mattn_splash_info_free(mattn_splash_info *info); /* NULL allowed */

typedef struct mattn_splash_info_stats {
    int64_t q_len, kv_len, q_offset, kv_offset;
    int block_q, block_kv;
    int64_t q_blocks, kv_blocks; /* ceil(q_len / block_q), ceil(kv_len / block_kv) */
    int64_t head_first, heads;   /* heads: 1, or the per-head count */
    int64_t tiles;               /* distinct partial tiles stored */
    int64_t empty, partial, full; /* block counts, summed over heads */
} mattn_splash_info_stats;

MATTN_API void mattn_splash_info_describe(const mattn_splash_info *info,
                                          mattn_splash_info_stats *stats);
/* State of block (q_block, kv_block) of info head `head` (0-based within
 * the info) and, for PARTIAL, its tile id in *tile (-1 otherwise). */
MATTN_API int mattn_splash_info_block(const mattn_splash_info *info, int64_t head,
                                      int64_t q_block, int64_t kv_block,
                                      mattn_splash_block *state, int64_t *tile);
/* Tile `tile` as a row-major [block_q, block_kv] uint8 array, 1 = allowed
 * (rows / columns past the end of a short edge block are 0); NULL when out
 * of range. */
MATTN_API const uint8_t *mattn_splash_info_tile(const mattn_splash_info *info, int64_t tile);
/* The compact list the kernel walks for one q block: *kv_blocks[n] are the
 * non-empty kv blocks in increasing order and *tiles[n] their tile ids
 * (-1 = FULL). Returns n, or -1 for an out-of-range head or q block. */
MATTN_API int64_t mattn_splash_info_row(const mattn_splash_info *info, int64_t head,
                                        int64_t q_block, const int32_t **kv_blocks,
                                        const int32_t **tiles);

/* ---------------------------------------------------------------- forward */

/* Splash attention forward: shapes and options as mattn_flash_forward. The
 * info must have been built for q_len = T, kv_len = S, the options' q_offset
 * and kv_offset, and 1 or Hq heads; the options' block_q / block_kv must be
 * 0 or equal the info's. */
MATTN_API int mattn_splash_forward_info(const mattn_tensor *q, const mattn_tensor *k,
                                        const mattn_tensor *v, const mattn_tensor *o,
                                        float *lse, const mattn_splash_info *info,
                                        const mattn_options *opts);
/* The same, building the info from `mask` for this call (the options' offsets
 * and block sizes, heads [0, Hq)); build it once with mattn_splash_info_create
 * to reuse it. mask NULL: the mask is derived from the options' structural
 * predicates (causal, window, chunk, and a boolean mask shared by the batch,
 * per head if it has heads), as sdpa's splash path does; with none of them
 * every block is FULL. */
MATTN_API int mattn_splash_forward(const mattn_tensor *q, const mattn_tensor *k,
                                   const mattn_tensor *v, const mattn_tensor *o, float *lse,
                                   const mattn_splash_mask *mask, const mattn_options *opts);

/* ---------------------------------------------------------------- backward */

/* Gradients of splash attention (arguments and semantics as
 * mattn_flash_backward in mattn/backward.h: o and lse are the forward's,
 * dsinks / dbias NULL or wanted). Probabilities are recomputed from lse per
 * (q block, kv block) of the info: EMPTY blocks are skipped entirely, FULL
 * blocks do no mask work. The info must describe the call as for
 * mattn_splash_forward_info. */
MATTN_API int mattn_splash_backward_info(const mattn_tensor *q, const mattn_tensor *k,
                                         const mattn_tensor *v, const mattn_tensor *o,
                                         const float *lse, const mattn_tensor *dout,
                                         const mattn_tensor *dq, const mattn_tensor *dk,
                                         const mattn_tensor *dv, float *dsinks, float *dbias,
                                         const mattn_splash_info *info,
                                         const mattn_options *opts);
/* The same, building the info from `mask` (NULL: from the options) as
 * mattn_splash_forward does. */
MATTN_API int mattn_splash_backward(const mattn_tensor *q, const mattn_tensor *k,
                                    const mattn_tensor *v, const mattn_tensor *o,
                                    const float *lse, const mattn_tensor *dout,
                                    const mattn_tensor *dq, const mattn_tensor *dk,
                                    const mattn_tensor *dv, float *dsinks, float *dbias,
                                    const mattn_splash_mask *mask, const mattn_options *opts);

/* ---------------------------------------------------------------- mesh */

/* Collective: splash under the mesh's batch/head partitioning (dp x tp;
 * sp must be 1, else MATTN_ERR_UNSUPPORTED: the ring is the
 * sequence-parallel path). Arguments follow mattn_mesh_forward's rule
 * (q, k, v, o, lse are this rank's shards; sinks, mask and bias global;
 * positions global). `mask` is the GLOBAL mask object, the same on every
 * rank; a per-head mask has the global Hq heads and each rank uses those of
 * its q heads. mask NULL: derived from the options, as
 * mattn_mesh_forward(MATTN_OP_SPLASH) does. Every rank returns the same
 * status. */
MATTN_API int mattn_mesh_splash_forward(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                        const mattn_tensor *q, const mattn_tensor *k,
                                        const mattn_tensor *v, const mattn_tensor *o,
                                        float *lse, const mattn_splash_mask *mask,
                                        const mattn_options *opts);

#ifdef __cplusplus
}
#endif

#endif
