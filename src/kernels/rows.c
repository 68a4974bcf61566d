#include "kernels/rows.h"

#include <math.h>

#include "core/dropout.h"
#include "core/positions.h"

void mattn__row_init(const mattn__problem *p, int64_t b, int64_t h, int64_t i,
                     mattn__row *r)
{
    mattn__key_range(p, i, &r->lo, &r->hi);
    r->q_seg = 0;
    r->kv_seg = NULL;
    if (p->q_seg) {
        r->q_seg = p->q_seg[b * p->q_seg_sb + i];
        r->kv_seg = p->kv_seg + b * p->kv_seg_sb;
        if (r->q_seg < 0) /* padding: attends to nothing */
            r->hi = r->lo;
    }
    r->mask = p->mask ? p->mask + b * p->mask_sb + h * p->mask_sh + i * p->mask_st : NULL;
    r->bias = p->bias ? p->bias + b * p->bias_sb + h * p->bias_sh + i * p->bias_st : NULL;
    r->drop_key = p->dropout_p > 0.0f
                      ? mattn__dropout_row_key(p->dropout_seed, p->dropout_b0 + b,
                                               p->dropout_h0 + h, p->q_offset + i)
                      : 0;
}

void mattn__row_logits(const mattn__problem *p, const mattn__vecmath *vm,
                       const mattn__row *r, float *s, int64_t j0, int64_t n)
{
    if (p->softcap > 0.0f)
        vm->softcap(s, n, p->softcap);
    if (r->bias) {
        const float *bias = r->bias + j0;
        for (int64_t j = 0; j < n; j++)
            s[j] += bias[j];
    }
    if (mattn__row_covers(r, j0, n))
        return;
    /* Keys before lo and from hi on are out of the structural range. */
    int64_t a = r->lo - j0, z = r->hi - j0;
    a = a < 0 ? 0 : (a > n ? n : a);
    z = z < a ? a : (z > n ? n : z);
    for (int64_t j = 0; j < a; j++)
        s[j] = -INFINITY;
    for (int64_t j = z; j < n; j++)
        s[j] = -INFINITY;
    if (r->kv_seg) {
        const int32_t *seg = r->kv_seg + j0;
        for (int64_t j = a; j < z; j++)
            if (seg[j] != r->q_seg)
                s[j] = -INFINITY;
    }
    if (r->mask) {
        const uint8_t *mask = r->mask + j0;
        for (int64_t j = a; j < z; j++)
            if (!mask[j])
                s[j] = -INFINITY;
    }
}
