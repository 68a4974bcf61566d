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
        cost->keys = L;
        cost->flops = 2 * p.Hq * L * (p.D + p.Dv);
        cost->exps = p.Hq * L;
        cost->tanhs = p.softcap > 0.0f ? p.Hq * L : 0;
        cost->kv_bytes = (int64_t)sizeof(float) * p.Hkv * L * (p.D + p.Dv);
        cost->bytes_read = cost->kv_bytes + (int64_t)sizeof(float) * p.nseq * p.Hq * p.D;
        cost->bytes_written = (int64_t)sizeof(float) * p.nseq * p.Hq * p.Dv;
    }
    mattn__scratch_put((void *)p.seq);
    return rc;
}
