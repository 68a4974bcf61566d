/* Decode: attention of a few new query tokens over a KV cache (SPEC §5, §7).
 *
 *   ar_decode      one new token per sequence over a cache [B, S, Hkv, D];
 *                  keys starts[b] <= j < index[b] (index includes the new token)
 *   ragged_decode  the same problem with ends[b] ("lengths" in EasyDeL), plus
 *                  the raw softmax statistics m, l and a cost estimate
 *   paged          KV in pages, packed queries of any number of sequences,
 *                  prefill, decode and mixed batches in one call; and the
 *                  cache write that scatters new K/V into the pages
 *
 * Positions. A decode query sits at the last position of its sequence:
 * qp = index[b] - 1 (ar), ends[b] - 1 (ragged); a paged sequence's q_len
 * queries sit at its last q_len positions, kv_len - q_len + i (causal,
 * bottom-right). Key j of a cache sits at kv_offset + j (opts->kv_offset,
 * default 0: the global position of this cache's first row, used when the
 * cache is split over ranks). Windows and chunks (SPEC §3) are measured in
 * these absolute positions. Decode attention is causal by construction:
 * opts->causal is not consulted.
 *
 * Options. scale, softcap, window_left/right, chunk, sinks and threads mean
 * what they mean everywhere (SPEC §3-4). block_kv > 0 sets the split-KV piece
 * (keys per task; default 2048): long sequences are cut in pieces that run on
 * different threads and merge as (o, lse) partials, so pieces are a function
 * of the problem, not of the thread count, and results are bit-identical at
 * any thread count. Options decode cannot honour are MATTN_ERR_UNSUPPORTED:
 * q_offset != 0 (positions come from the lengths), segment ids, mask, bias,
 * dropout, block_q.
 *
 * Dv may differ from D everywhere. Fully masked rows (empty ranges) give
 * o = 0 and lse = -inf, or lse = sink with sinks; never NaN. */
/* The core header first, outside the guard: it includes every area header
 * in dependency order, so any of them may be included first. */
#include "mattn.h"

#ifndef MATTN_DECODE_H
#define MATTN_DECODE_H

#include <mpi.h>

#include "mattn.h"
#include "mattn/mesh.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- contiguous cache */

/* q [B, 1, Hq, D] (a [B, Hq, D] buffer is mattn_tensor_bthd(q, B, 1, Hq, D)),
 * k [B, S, Hkv, D], v [B, S, Hkv, Dv], o [B, 1, Hq, Dv]; starts [B] (NULL = 0)
 * and index [B] int32, 0 <= starts[b] <= index[b]. The cache row j is
 * position kv_offset + j: a nonempty range must lie in it (kv_offset <=
 * starts[b], index[b] <= kv_offset + S); an empty one (starts[b] = index[b])
 * may lie anywhere and gives o = 0. lse [B, Hq] may be NULL. */
MATTN_API int mattn_ar_decode(const mattn_tensor *q, const mattn_tensor *k,
                              const mattn_tensor *v, const int32_t *starts,
                              const int32_t *index, const mattn_tensor *o, float *lse,
                              const mattn_options *opts);

/* As mattn_ar_decode with keys starts[b] <= j < ends[b]; an empty range gives
 * o = 0. m [B, Hq] receives the row's largest logit (max with the sink) and
 * l [B, Hq] the sum of exp(s - m) (sink term included), so lse = m + log l;
 * an empty row without sink has m = -inf, l = 0. m, l, lse may each be NULL.
 * K/V rows of a kv head are read once for all q heads of its group. */
MATTN_API int mattn_ragged_decode(const mattn_tensor *q, const mattn_tensor *k,
                                  const mattn_tensor *v, const int32_t *starts,
                                  const int32_t *ends, const mattn_tensor *o, float *m,
                                  float *l, float *lse, const mattn_options *opts);

/* What a ragged decode (or an ar decode) of these arguments costs, counted
 * over the keys the options allow (L_b per sequence, window and chunk
 * applied; L = sum L_b). Reads only shapes, starts/ends and options. */
typedef struct mattn_decode_cost {
    int64_t keys;          /* L: allowed (sequence, key) pairs */
    int64_t flops;         /* 2 Hq L (D + Dv): 4 B Hq L D for uniform L and Dv = D */
    int64_t exps;          /* Hq L: one exp per allowed logit */
    int64_t tanhs;         /* Hq L with a soft cap, else 0 */
    int64_t kv_bytes;      /* 4 Hkv L (D + Dv): K/V rows read, once per kv head */
    int64_t bytes_read;    /* kv_bytes + q (4 B Hq D) */
    int64_t bytes_written; /* o (4 B Hq Dv) */
} mattn_decode_cost;

MATTN_API int mattn_ragged_decode_cost(const mattn_tensor *q, const mattn_tensor *k,
                                       const mattn_tensor *v, const int32_t *starts,
                                       const int32_t *ends, const mattn_options *opts,
                                       mattn_decode_cost *cost);

/* ---------------------------------------------------------------- paged cache */

/* A paged KV cache. Page p holds page_size consecutive tokens of one
 * sequence: k_pages [num_pages, page_size, Hkv, D] and v_pages
 * [num_pages, page_size, Hkv, Dv] as tensors (batch = page, seq = slot in the
 * page; any strides, vLLM's [num_blocks, block_size, H, D] is BTHD).
 * Token t of sequence s lives in page page_table[s * max_pages + t / page_size]
 * at slot t % page_size; pages may be used in any order. Page ids must lie in
 * [0, num_pages) for every page a sequence uses, and kv_lens[s] <=
 * max_pages * page_size: anything else is an error, never a read out of
 * bounds.
 *
 * Split over ranks (mattn_paged_forward_mesh), a rank holds tokens
 * [kv_starts[s], kv_starts[s] + kv_lens[s]) of each sequence (positions
 * global, token kv_starts[s] + t in local page t / page_size) and kv_totals[s]
 * is the whole sequence's length. Single rank: both NULL (0 and kv_lens). */
typedef struct mattn_paged_kv {
    mattn_tensor k_pages, v_pages;
    const int32_t *page_table; /* [num_seqs, max_pages] row-major */
    int64_t num_seqs, max_pages;
    const int32_t *kv_lens;   /* [num_seqs] tokens held */
    const int32_t *kv_starts; /* [num_seqs] or NULL */
    const int32_t *kv_totals; /* [num_seqs] or NULL */
} mattn_paged_kv;

/* Packed queries q [1, total_q, Hq, D] (a [total_q, Hq, D] buffer is
 * mattn_tensor_bthd(q, 1, total_q, Hq, D)); sequence s owns queries
 * cu_q_lens[s] <= t < cu_q_lens[s+1] (cu_q_lens[0] = 0, nondecreasing,
 * cu_q_lens[num_seqs] = total_q), its q_len = cu_q_lens[s+1] - cu_q_lens[s]
 * last positions: query i at kv_len - q_len + i, q_len <= kv_len. Prefill
 * (q_len = kv_len), decode (q_len = 1) and any mix in one call. o [1, total_q,
 * Hq, Dv]; lse [Hq, total_q] (SPEC's [B, Hq, T] with B = 1) may be NULL. */
MATTN_API int mattn_paged_forward(const mattn_tensor *q, const mattn_paged_kv *cache,
                                  const int32_t *cu_q_lens, const mattn_tensor *o,
                                  float *lse, const mattn_options *opts);

/* Writes new tokens into the pages: token t of k_new [1, T, Hkv, D] and
 * v_new [1, T, Hkv, Dv] goes to slot slot_mapping[t] (page slot / page_size,
 * row slot % page_size); slot < 0 skips the token. Every slot is checked
 * before anything is written (slot >= num_pages * page_size is an error).
 * With repeated slots the later token wins. */
MATTN_API int mattn_paged_cache_write(const mattn_tensor *k_new, const mattn_tensor *v_new,
                                      const int32_t *slot_mapping,
                                      const mattn_tensor *k_pages,
                                      const mattn_tensor *v_pages);

/* ---------------------------------------------------------------- across ranks */

/* The same operators with the cache split over the mesh's sp axis (SPEC §7):
 * each rank passes its own part of every sequence's cache and the global
 * starts/index/ends (identical on the ranks of an sp group), computes (o, lse)
 * partials with global positions, and one MPI_Allreduce with a
 * non-commutative user operation over packed (lse, max, o) records merges
 * them, so every rank of the sp group returns the whole answer. Contiguous:
 * a rank holds cache rows [kv_offset, kv_offset + S) (opts->kv_offset); the
 * ranges of an sp group must tile one range [P0, P0 + S_total) without gap or
 * overlap (P0 the smallest kv_offset held, 0 for a whole cache; e.g. kv_offset
 * = P0 + the start from mattn_split(S_total, sp, sp_rank, ...)) and every
 * nonempty sequence range must lie in it; a rank may hold nothing (S = 0).
 * Paged: see mattn_paged_kv; over more than one sp rank kv_totals is
 * required. The lengths, the options that change the numbers (scale,
 * softcap, window, chunk, sinks) and MATTN_DECODE_MERGE must be the same on
 * every rank of an sp group: the call checks, and fails on every rank when
 * they differ. dp and tp shards are independent problems: q, o and the
 * lengths are this rank's batch / head shard. Collective over the mesh;
 * every rank returns the same status. The result is bit-identical from
 * run to run at a given rank count (docs/decode.md says why) and equals the
 * single-rank result to fp32 rounding. */
MATTN_API int mattn_ar_decode_mesh(const mattn_mesh *mesh, const mattn_tensor *q,
                                   const mattn_tensor *k, const mattn_tensor *v,
                                   const int32_t *starts, const int32_t *index,
                                   const mattn_tensor *o, float *lse,
                                   const mattn_options *opts);

MATTN_API int mattn_ragged_decode_mesh(const mattn_mesh *mesh, const mattn_tensor *q,
                                       const mattn_tensor *k, const mattn_tensor *v,
                                       const int32_t *starts, const int32_t *ends,
                                       const mattn_tensor *o, float *m, float *l,
                                       float *lse, const mattn_options *opts);

MATTN_API int mattn_paged_forward_mesh(const mattn_mesh *mesh, const mattn_tensor *q,
                                       const mattn_paged_kv *cache,
                                       const int32_t *cu_q_lens, const mattn_tensor *o,
                                       float *lse, const mattn_options *opts);

#ifdef __cplusplus
}
#endif

#endif
