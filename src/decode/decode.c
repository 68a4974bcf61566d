/* Front doors of the single-rank contiguous-cache decode operators:
 * ar_decode, ragged_decode and its cost estimate (SPEC §5). Both operators
 * are the same problem (queries at position end - 1 over keys
 * [starts, end)); they differ in what they return. */
#include <math.h>

#include "core/scratch.h"
#include "core/status.h"
#include "decode/decode.h"

int mattn_ar_decode(const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                    const int32_t *starts, const int32_t *index, const mattn_tensor *o,
                    float *lse, const mattn_options *opts)
{
    mattn__dec p;
    int rc = mattn__dec_contiguous(&p, q, k, v, starts, index, o, opts, 1);
    if (rc == MATTN_OK) {
        p.lse = lse, p.lse_st = p.Hq, p.lse_sh = 1;
        rc = mattn__decode_kernel(&p);
    }
    mattn__scratch_put((void *)p.seq);
    return rc;
}

/* l = sum exp(s - m) from lse = m + log l: exp(lse - m), 0 for an empty row
 * (m = -inf). */
void mattn__dec_l_from_lse(int64_t n, const float *lse, const float *m, float *l)
{
    for (int64_t i = 0; i < n; i++)
        l[i] = m[i] == -INFINITY ? 0.0f : expf(lse[i] - m[i]);
}

int mattn_ragged_decode(const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                        const int32_t *starts, const int32_t *ends, const mattn_tensor *o,
                        float *m, float *l, float *lse, const mattn_options *opts)
{
    mattn__dec p;
    float *tmp = NULL;
    int rc = mattn__dec_contiguous(&p, q, k, v, starts, ends, o, opts, 1);
    if (rc)
        goto done;
    int64_t n = p.nseq * p.Hq;
    /* l needs both lse and the max: borrow buffers for the ones not asked. */
    if (l && (!lse || !m)) {
        tmp = mattn__scratch_get(sizeof(float) * (size_t)(2 * n + 1));
        if (tmp == NULL) {
            rc = mattn__fail(MATTN_ERR_NOMEM, "ragged decode: cannot allocate %lld rows",
                             (long long)n);
            goto done;
        }
    }
    p.lse = lse ? lse : l ? tmp : NULL, p.lse_st = p.Hq, p.lse_sh = 1;
    p.mx = m ? m : l ? tmp + n : NULL, p.mx_st = p.Hq, p.mx_sh = 1;
    rc = mattn__decode_kernel(&p);
    if (rc == MATTN_OK && l)
        mattn__dec_l_from_lse(n, p.lse, p.mx, l);
done:
    mattn__scratch_put(tmp);
    mattn__scratch_put((void *)p.seq);
    return rc;
}

int mattn_ragged_decode_cost(const mattn_tensor *q, const mattn_tensor *k,
                             const mattn_tensor *v, const int32_t *starts,
                             const int32_t *ends, const mattn_options *opts,
                             mattn_decode_cost *cost)
{
    if (cost == NULL)
        return mattn__fail(MATTN_ERR_ARG, "cost is NULL");
    *cost = (mattn_decode_cost){0};
    mattn__dec p;
    int rc = mattn__dec_contiguous(&p, q, k, v, starts, ends, NULL, opts, 1);
    if (rc == MATTN_OK) {
        int64_t L = 0;
        for (int64_t b = 0; b < p.nseq; b++) {
            int64_t lo, hi;
            mattn__dec_row_range(&p, &p.seq[b], p.seq[b].qp_last, &lo, &hi);
            L += hi - lo;
        }
        /* L <= B * S, which the shape checks keep in int64; the products
         * below are checked: a shapes-only call may describe any size. */
        int64_t hl, fl, ex, kv, qb, ob;
        if (__builtin_mul_overflow(p.Hq, L, &hl) ||
            __builtin_mul_overflow(hl, 2 * (p.D + p.Dv), &fl) ||
            __builtin_mul_overflow(p.Hkv * (int64_t)sizeof(float), L, &kv) ||
            __builtin_mul_overflow(kv, p.D + p.Dv, &kv) ||
            __builtin_mul_overflow(p.nseq * p.Hq, (int64_t)sizeof(float) * p.D, &qb) ||
            __builtin_add_overflow(kv, qb, &ex) ||
            __builtin_mul_overflow(p.nseq * p.Hq, (int64_t)sizeof(float) * p.Dv, &ob)) {
            rc = mattn__fail(MATTN_ERR_SHAPE, "ragged decode cost: the counts overflow int64");
        } else {
            cost->keys = L;
            cost->flops = fl;
            cost->exps = hl;
            cost->tanhs = p.softcap > 0.0f ? hl : 0;
            cost->kv_bytes = kv;
            cost->bytes_read = ex;
            cost->bytes_written = ob;
        }
    }
    mattn__scratch_put((void *)p.seq);
    return rc;
}
