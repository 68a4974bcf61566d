/* The one merge of softmax partials (SPEC §7, STYLE "one merge").
 *
 * A partial result over a subset of keys is (o, lse) with o normalised over
 * that subset. Two partials over disjoint key sets combine exactly:
 *   lse = log(e^lse_a + e^lse_b)
 *   o   = e^(lse_a - lse) o_a + e^(lse_b - lse) o_b
 * A partial with lse = -inf (no allowed key) contributes nothing, and two
 * such give o = 0, lse = -inf, which is the fully-masked-row convention.
 * A sink is a partial with lse = sink and o = 0. Ring steps, split-KV decode
 * and the cross-rank decode reduction all go through here. fp32 throughout. */
#ifndef MATTN_CORE_MERGE_H
#define MATTN_CORE_MERGE_H

#include <stdint.h>

/* Merges n rows of (o_part, lse_part) into (o_acc, lse_acc) in place. Row r
 * of o lives at o + r * o_stride (Dv contiguous floats), its lse at
 * lse + r * lse_stride. */
void mattn__merge_partial(int64_t n, int64_t Dv, float *o_acc, int64_t o_acc_stride,
                          float *lse_acc, int64_t lse_acc_stride, const float *o_part,
                          int64_t o_part_stride, const float *lse_part,
                          int64_t lse_part_stride);

/* Folds a sink logit into n rows: the same as merging (o = 0, lse = sink). */
void mattn__merge_sink(int64_t n, int64_t Dv, float *o, int64_t o_stride, float *lse,
                       int64_t lse_stride, float sink);

#endif
