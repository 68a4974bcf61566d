/* Front doors of the single-rank backward operators: validate the forward's
 * arguments (mattn__problem_init) and the gradient arguments, pick a kernel,
 * return a status. */
#include <math.h>
#include <stdlib.h>

#include "core/problem.h"
#include "core/status.h"
#include "kernels/kernels_bwd.h"
#include "ops/ops.h"

/* Builds the problem and the gradient description from the public
 * arguments, checking everything the forward checks plus the gradients. */
static int backward_init(mattn__problem *p, mattn__grad *g, const mattn_tensor *q,
                         const mattn_tensor *k, const mattn_tensor *v, const mattn_tensor *o,
                         const float *lse, const mattn_tensor *dout, const mattn_tensor *dq,
                         const mattn_tensor *dk, const mattn_tensor *dv, float *dsinks,
                         float *dbias, const mattn_options *opts)
{
    /* The problem struct names o and lse as outputs (of the forward); the
     * backward kernels only read them. */
    int rc = mattn__problem_init(p, q, k, v, o, (float *)lse, opts);
    if (rc)
        return rc;
    if (lse == NULL)
        return mattn__fail(MATTN_ERR_ARG,
                           "lse is NULL: backward needs the forward's log-sum-exp");
    if ((rc = mattn__tensor_check_like("", "dout", dout, "o", o, 0)) ||
        (rc = mattn__tensor_check_like("", "dq", dq, "q", q, 1)) ||
        (rc = mattn__tensor_check_like("", "dk", dk, "k", k, 1)) ||
        (rc = mattn__tensor_check_like("", "dv", dv, "v", v, 1)))
        return rc;
    if (dsinks && opts->sinks == NULL)
        return mattn__fail(MATTN_ERR_ARG, "dsinks given but the options have no sinks");
    if (dbias && opts->bias.data == NULL)
        return mattn__fail(MATTN_ERR_ARG, "dbias given but the options have no bias");
    /* lse is a log-sum-exp: -inf (an empty row) is legal, NaN and +inf are
     * not, and would turn every gradient of their row into NaN. */
    for (int64_t x = 0; x < p->B * p->Hq * p->T; x++)
        if (isnan(lse[x]) || lse[x] == INFINITY)
            return mattn__fail(MATTN_ERR_ARG, "lse[%lld] = %g is not a log-sum-exp",
                               (long long)x, lse[x]);

    *g = (mattn__grad){
        .dout = dout->data,
        .do_sb = dout->stride_batch, .do_st = dout->stride_seq, .do_sh = dout->stride_head,
        .dq = dq->data,
        .dq_sb = dq->stride_batch, .dq_st = dq->stride_seq, .dq_sh = dq->stride_head,
        .dk = dk->data,
        .dk_sb = dk->stride_batch, .dk_ss = dk->stride_seq, .dk_sh = dk->stride_head,
        .dv = dv->data,
        .dv_sb = dv->stride_batch, .dv_ss = dv->stride_seq, .dv_sh = dv->stride_head,
        .dsinks = dsinks,
    };
    if (dbias) {
        /* Dense [bias.batch, bias.heads, T, S]; a zero stride sums over a
         * broadcast dim. */
        const mattn_bias *b = &opts->bias;
        g->dbias = dbias;
        g->dbias_st = p->S;
        g->dbias_sh = b->heads == 1 ? 0 : p->T * p->S;
        g->dbias_sb = b->batch == 1 ? 0 : b->heads * p->T * p->S;
    }
    return MATTN_OK;
}

int mattn__backward_init(mattn__problem *p, struct mattn__grad *g, const mattn_tensor *q,
                         const mattn_tensor *k, const mattn_tensor *v, const mattn_tensor *o,
                         const float *lse, const mattn_tensor *dout, const mattn_tensor *dq,
                         const mattn_tensor *dk, const mattn_tensor *dv, float *dsinks,
                         float *dbias, const mattn_options *opts)
{
    return backward_init(p, g, q, k, v, o, lse, dout, dq, dk, dv, dsinks, dbias, opts);
}

int mattn_vanilla_backward(const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                           const mattn_tensor *o, const float *lse, const mattn_tensor *dout,
                           const mattn_tensor *dq, const mattn_tensor *dk,
                           const mattn_tensor *dv, float *dsinks, float *dbias,
                           const mattn_options *opts)
{
    mattn__problem p;
    mattn__grad g;
    int rc = backward_init(&p, &g, q, k, v, o, lse, dout, dq, dk, dv, dsinks, dbias, opts);
    if (rc)
        return rc;
    return mattn__vanilla_backward_kernel(&p, &g);
}

int mattn_flash_backward(const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                         const mattn_tensor *o, const float *lse, const mattn_tensor *dout,
                         const mattn_tensor *dq, const mattn_tensor *dk,
                         const mattn_tensor *dv, float *dsinks, float *dbias,
                         const mattn_options *opts)
{
    mattn__problem p;
    mattn__grad g;
    int rc = backward_init(&p, &g, q, k, v, o, lse, dout, dq, dk, dv, dsinks, dbias, opts);
    if (rc)
        return rc;
    return mattn__flash_backward_kernel(&p, &g);
}

int mattn_sdpa_backward(const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                        const mattn_tensor *o, const float *lse, const mattn_tensor *dout,
                        const mattn_tensor *dq, const mattn_tensor *dk, const mattn_tensor *dv,
                        float *dsinks, float *dbias, const mattn_options *opts,
                        mattn_kernel *chosen)
{
    mattn__problem p;
    mattn__grad g;
    int rc = backward_init(&p, &g, q, k, v, o, lse, dout, dq, dk, dv, dsinks, dbias, opts);
    if (rc)
        return rc;
    /* The same choice as the forward, splash's fallback to flash included. */
    mattn_kernel kernel = mattn__sdpa_choose(&p);
    if (kernel == MATTN_KERNEL_SPLASH)
        return mattn__sdpa_splash_backward(&p, &g, chosen);
    if (chosen)
        *chosen = kernel;
    if (kernel == MATTN_KERNEL_VANILLA)
        return mattn__vanilla_backward_kernel(&p, &g);
    return mattn__flash_backward_kernel(&p, &g);
}
