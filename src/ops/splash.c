/* Front doors of splash attention, and sdpa's splash path: validate, build or
 * check the mask info, run the kernel, return a status. */
#include "core/positions.h"
#include "core/problem.h"
#include "core/status.h"
#include "kernels/kernels.h"
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
    if ((opts->block_q && opts->block_q != info->bq) ||
        (opts->block_kv && opts->block_kv != info->bkv))
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

int mattn_splash_forward(const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                         const mattn_tensor *o, float *lse, const mattn_splash_mask *mask,
                         const mattn_options *opts)
{
    mattn__problem p;
    int rc = mattn__problem_init(&p, q, k, v, o, lse, opts);
    if (rc)
        return rc;
    if (mask == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash: mask is NULL (use mattn_splash_mask_full)");
    if (mask->heads > 1 && mask->heads != p.Hq)
        return mattn__fail(MATTN_ERR_SHAPE, "splash: per-head mask has %lld heads, q has %lld",
                           (long long)mask->heads, (long long)p.Hq);
    mattn_splash_info_options io = mattn_splash_info_options_default();
    io.q_offset = p.q_offset;
    io.kv_offset = p.kv_offset;
    io.block_q = p.block_q;
    io.block_kv = p.block_kv;
    mattn_splash_info *info = NULL;
    if ((rc = mattn_splash_info_create(mask, p.T, p.S, &io, &info)))
        return rc;
    rc = mattn__splash_forward_kernel(&p, info);
    mattn_splash_info_free(info);
    return rc;
}

/* ------------------------------------------------------------------ sdpa */

int mattn__splash_suits(const mattn__problem *p)
{
    return !mattn__no_structure(p) || (p->mask != NULL && p->mask_sb == 0);
}

int mattn__sdpa_splash(const mattn__problem *p, mattn_kernel *chosen)
{
    mattn_splash_mask *mask = NULL;
    mattn_splash_info *info = NULL;
    int used_mask = 0;
    int rc = mattn__splash_problem_mask(p, &mask, &used_mask);
    if (rc)
        goto done;
    if (mask == NULL) { /* nothing to skip blocks by */
        if (chosen)
            *chosen = MATTN_KERNEL_FLASH;
        rc = mattn__flash_forward_kernel(p);
        goto done;
    }
    mattn_splash_info_options io = mattn_splash_info_options_default();
    io.q_offset = p->q_offset;
    io.kv_offset = p->kv_offset;
    io.block_q = p->block_q;
    io.block_kv = p->block_kv;
    if ((rc = mattn_splash_info_create(mask, p->T, p->S, &io, &info)))
        goto done;
    if (mattn__splash_info_density(info) > SDPA_SPLASH_MAX_DENSITY) {
        if (chosen)
            *chosen = MATTN_KERNEL_FLASH;
        rc = mattn__flash_forward_kernel(p);
        goto done;
    }
    /* The info now carries the structural predicates (and the boolean mask):
     * drop them from the problem so FULL blocks do no element-wise work. */
    mattn__problem sp = *p;
    sp.causal = 0;
    sp.window_left = sp.window_right = -1;
    sp.chunk = 0;
    if (used_mask)
        sp.mask = NULL;
    if (chosen)
        *chosen = MATTN_KERNEL_SPLASH;
    rc = mattn__splash_forward_kernel(&sp, info);
done:
    mattn_splash_info_free(info);
    mattn_splash_mask_free(mask);
    return rc;
}
