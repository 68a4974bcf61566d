/* Front doors of splash attention (forward and backward), and sdpa's splash
 * path: validate, build or check the mask info, run the kernel, return a
 * status. */
#include "core/positions.h"
#include "core/problem.h"
#include "core/status.h"
#include "kernels/kernels.h"
#include "kernels/kernels_bwd.h"
#include "kernels/splash.h"
#include "kernels/splash_mask.h"
#include "ops/ops.h"

/* sdpa runs splash only when at least this share of blocks is skipped;
 * otherwise flash does the same work without storing mask tiles. */
#define SDPA_SPLASH_MAX_DENSITY 0.9

/* The info must describe exactly the call it serves. */
static int check_info(const mattn__problem *p, const mattn_splash_info *info,
                      const mattn_options *opts)
{
    if (info == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash: mask info is NULL");
    if (info->T != p->T || info->S != p->S)
        return mattn__fail(MATTN_ERR_SHAPE,
                           "splash: mask info was built for %lld x %lld (q x kv) but the call "
                           "is %lld x %lld",
                           (long long)info->T, (long long)info->S, (long long)p->T,
                           (long long)p->S);
    if (info->q_offset != p->q_offset || info->kv_offset != p->kv_offset)
        return mattn__fail(MATTN_ERR_ARG,
                           "splash: mask info offsets (q %lld, kv %lld) differ from the "
                           "options' (q %lld, kv %lld)",
                           (long long)info->q_offset, (long long)info->kv_offset,
                           (long long)p->q_offset, (long long)p->kv_offset);
    if (info->heads != 1 && info->heads != p->Hq)
        return mattn__fail(MATTN_ERR_SHAPE, "splash: per-head mask info has %lld heads, q has %lld",
                           (long long)info->heads, (long long)p->Hq);
    if ((opts->block_q &&
         mattn__splash_block(opts->block_q, MATTN__SPLASH_BLOCK_Q, p->T) != info->bq) ||
        (opts->block_kv &&
         mattn__splash_block(opts->block_kv, MATTN__SPLASH_BLOCK_KV, p->S) != info->bkv))
        return mattn__fail(MATTN_ERR_ARG,
                           "splash: block sizes (%d, %d) requested but the mask info has "
                           "(%lld, %lld); leave them 0 or rebuild the info",
                           opts->block_q, opts->block_kv, (long long)info->bq,
                           (long long)info->bkv);
    return MATTN_OK;
}

int mattn_splash_forward_info(const mattn_tensor *q, const mattn_tensor *k,
                              const mattn_tensor *v, const mattn_tensor *o, float *lse,
                              const mattn_splash_info *info, const mattn_options *opts)
{
    mattn__problem p;
    int rc = mattn__problem_init(&p, q, k, v, o, lse, opts);
    if (rc)
        return rc;
    if ((rc = check_info(&p, info, opts)))
        return rc;
    return mattn__splash_forward_kernel(&p, info);
}

/* Drops the predicates an info built by mattn__splash_problem_mask carries
 * (causal/window/chunk, and the boolean mask when it went in), so FULL
 * blocks do no element-wise work. */
static void strip_predicates(mattn__problem *p, int used_mask)
{
    p->causal = 0;
    p->window_left = p->window_right = -1;
    p->chunk = 0;
    if (used_mask)
        p->mask = NULL;
}

static int build_info(const mattn__problem *p, const mattn_splash_mask *mask,
                      mattn_splash_info **info)
{
    mattn_splash_info_options io = mattn_splash_info_options_default();
    io.q_offset = p->q_offset;
    io.kv_offset = p->kv_offset;
    io.block_q = p->block_q;
    io.block_kv = p->block_kv;
    return mattn_splash_info_create(mask, p->T, p->S, &io, info);
}

/* The info a call without a prebuilt one runs on, and the problem it runs.
 * With a mask object: its info, the problem unchanged. Without (NULL): the
 * info of the problem's own predicates (full when it has none), which are
 * then dropped from the problem: the info carries them. */
static int plan_call(const mattn__problem *p, const mattn_splash_mask *mask,
                     mattn__problem *run, mattn_splash_info **info)
{
    mattn_splash_mask *own = NULL;
    int used_mask = 0, rc = MATTN_OK;
    *run = *p;
    *info = NULL;
    if (mask == NULL) {
        if ((rc = mattn__splash_problem_mask(p, &own, &used_mask)))
            goto done;
        if (own == NULL && (rc = mattn_splash_mask_full(&own)))
            goto done;
        strip_predicates(run, used_mask);
        mask = own;
    } else if (mask->heads > 1 && mask->heads != p->Hq) {
        rc = mattn__fail(MATTN_ERR_SHAPE, "splash: per-head mask has %lld heads, q has %lld",
                         (long long)mask->heads, (long long)p->Hq);
        goto done;
    }
    rc = build_info(p, mask, info);
done:
    mattn_splash_mask_free(own);
    return rc;
}

int mattn_splash_forward(const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                         const mattn_tensor *o, float *lse, const mattn_splash_mask *mask,
                         const mattn_options *opts)
{
    mattn__problem p, run;
    mattn_splash_info *info = NULL;
    int rc = mattn__problem_init(&p, q, k, v, o, lse, opts);
    /* No batch entry: nothing to compute, and no info to build for lengths
     * that may be huge. */
    if (rc == MATTN_OK && p.B == 0)
        return MATTN_OK;
    if (rc == MATTN_OK && (rc = plan_call(&p, mask, &run, &info)) == MATTN_OK)
        rc = mattn__splash_forward_kernel(&run, info);
    mattn_splash_info_free(info);
    return rc;
}

/* ------------------------------------------------------------------ backward */

int mattn_splash_backward_info(const mattn_tensor *q, const mattn_tensor *k,
                               const mattn_tensor *v, const mattn_tensor *o, const float *lse,
                               const mattn_tensor *dout, const mattn_tensor *dq,
                               const mattn_tensor *dk, const mattn_tensor *dv, float *dsinks,
                               float *dbias, const mattn_splash_info *info,
                               const mattn_options *opts)
{
    mattn__problem p;
    mattn__grad g;
    int rc = mattn__backward_init(&p, &g, q, k, v, o, lse, dout, dq, dk, dv, dsinks, dbias,
                                  opts);
    if (rc)
        return rc;
    if ((rc = check_info(&p, info, opts)))
        return rc;
    return mattn__splash_backward_kernel(&p, &g, info);
}

int mattn_splash_backward(const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                          const mattn_tensor *o, const float *lse, const mattn_tensor *dout,
                          const mattn_tensor *dq, const mattn_tensor *dk, const mattn_tensor *dv,
                          float *dsinks, float *dbias, const mattn_splash_mask *mask,
                          const mattn_options *opts)
{
    mattn__problem p, run;
    mattn__grad g;
    mattn_splash_info *info = NULL;
    int rc = mattn__backward_init(&p, &g, q, k, v, o, lse, dout, dq, dk, dv, dsinks, dbias,
                                  opts);
    if (rc == MATTN_OK && p.B == 0) /* no info to build for lengths that may be huge */
        return mattn__bwd_empty(&p, &g);
    if (rc == MATTN_OK && (rc = plan_call(&p, mask, &run, &info)) == MATTN_OK)
        rc = mattn__splash_backward_kernel(&run, &g, info);
    mattn_splash_info_free(info);
    return rc;
}

/* ------------------------------------------------------------------ sdpa */

int mattn__splash_suits(const mattn__problem *p)
{
    return !mattn__no_structure(p) || (p->mask != NULL && p->mask_sb == 0);
}

/* sdpa's decision, shared by its forward and backward: *info stays NULL when
 * flash should run (nothing to skip blocks by, or under 10% of the blocks
 * empty); else *run is the problem without the predicates the info holds. */
static int sdpa_plan(const mattn__problem *p, mattn__problem *run, mattn_splash_info **info)
{
    mattn_splash_mask *mask = NULL;
    int used_mask = 0;
    *run = *p;
    *info = NULL;
    int rc = mattn__splash_problem_mask(p, &mask, &used_mask);
    if (rc || mask == NULL)
        goto done;
    if ((rc = build_info(p, mask, info))) {
        /* Too many blocks to classify (lengths in the billions): flash
         * streams any length. */
        if (rc == MATTN_ERR_SHAPE)
            rc = MATTN_OK;
        goto done;
    }
    if (mattn__splash_info_density(*info) > SDPA_SPLASH_MAX_DENSITY) {
        mattn_splash_info_free(*info);
        *info = NULL;
        goto done;
    }
    strip_predicates(run, used_mask);
done:
    mattn_splash_mask_free(mask);
    return rc;
}

int mattn__sdpa_splash(const mattn__problem *p, mattn_kernel *chosen)
{
    mattn__problem run;
    mattn_splash_info *info = NULL;
    int rc = sdpa_plan(p, &run, &info);
    if (rc == MATTN_OK) {
        if (chosen)
            *chosen = info ? MATTN_KERNEL_SPLASH : MATTN_KERNEL_FLASH;
        rc = info ? mattn__splash_forward_kernel(&run, info) : mattn__flash_forward_kernel(p);
    }
    mattn_splash_info_free(info);
    return rc;
}

int mattn__sdpa_splash_backward(const mattn__problem *p, const mattn__grad *g,
                                mattn_kernel *chosen)
{
    mattn__problem run;
    mattn_splash_info *info = NULL;
    int rc = sdpa_plan(p, &run, &info);
    if (rc == MATTN_OK) {
        if (chosen)
            *chosen = info ? MATTN_KERNEL_SPLASH : MATTN_KERNEL_FLASH;
        rc = info ? mattn__splash_backward_kernel(&run, g, info)
                  : mattn__flash_backward_kernel(p, g);
    }
    mattn_splash_info_free(info);
    return rc;
}
