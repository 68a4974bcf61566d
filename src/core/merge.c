#include "core/merge.h"

#include <math.h>
#include <stddef.h>

/* Weights e^(a - m), e^(b - m) with m = max(a, b), so the larger is exactly 1
 * and nothing overflows; lse = m + log(wa + wb). */
static inline void merge_one(int64_t Dv, float *oa, float *la, const float *ob, float lb)
{
    float a = *la;
    if (lb == -INFINITY)
        return;
    if (a == -INFINITY) {
        for (int64_t d = 0; d < Dv; d++)
            oa[d] = ob ? ob[d] : 0.0f;
        *la = lb;
        return;
    }
    float m = a > lb ? a : lb;
    float wa = expf(a - m), wb = expf(lb - m), sum = wa + wb;
    wa /= sum, wb /= sum;
    if (ob)
        for (int64_t d = 0; d < Dv; d++)
            oa[d] = wa * oa[d] + wb * ob[d];
    else
        for (int64_t d = 0; d < Dv; d++)
            oa[d] = wa * oa[d];
    *la = m + logf(sum);
}

void mattn__merge_partial(int64_t n, int64_t Dv, float *o_acc, int64_t o_acc_stride,
                          float *lse_acc, int64_t lse_acc_stride, const float *o_part,
                          int64_t o_part_stride, const float *lse_part,
                          int64_t lse_part_stride)
{
    for (int64_t r = 0; r < n; r++)
        merge_one(Dv, o_acc + r * o_acc_stride, lse_acc + r * lse_acc_stride,
                  o_part + r * o_part_stride, lse_part[r * lse_part_stride]);
}

void mattn__merge_sink(int64_t n, int64_t Dv, float *o, int64_t o_stride, float *lse,
                       int64_t lse_stride, float sink)
{
    for (int64_t r = 0; r < n; r++)
        merge_one(Dv, o + r * o_stride, lse + r * lse_stride, NULL, sink);
}
