/* Front doors of the single-rank forward operators: validate, pick a kernel,
 * return a status. */
#include <stdlib.h>

#include "core/problem.h"
#include "core/status.h"
#include "kernels/kernels.h"
#include "ops/ops.h"

int mattn_vanilla_forward(const mattn_tensor *q, const mattn_tensor *k,
                          const mattn_tensor *v, const mattn_tensor *o, float *lse,
                          float *weights, const mattn_options *opts)
{
    mattn__problem p;
    int rc = mattn__problem_init(&p, q, k, v, o, lse, opts);
    if (rc)
        return rc;
    return mattn__vanilla_forward_kernel(&p, weights);
}

int mattn_flash_forward(const mattn_tensor *q, const mattn_tensor *k,
                        const mattn_tensor *v, const mattn_tensor *o, float *lse,
                        const mattn_options *opts)
{
    mattn__problem p;
    int rc = mattn__problem_init(&p, q, k, v, o, lse, opts);
    if (rc)
        return rc;
    return mattn__flash_forward_kernel(&p);
}

/* Below this many logits per head the blocked kernel's fixed costs (packing,
 * per-block BLAS calls) outweigh its savings. */
#define SDPA_VANILLA_MAX_LOGITS 4096

mattn_kernel mattn__sdpa_choose(const mattn__problem *p)
{
    const char *force = getenv("MATTN_FORCE_REFERENCE");
    if (force && force[0] && force[0] != '0')
        return MATTN_KERNEL_VANILLA;
    int64_t logits;
    if (!__builtin_mul_overflow(p->T, p->S, &logits) && logits <= SDPA_VANILLA_MAX_LOGITS)
        return MATTN_KERNEL_VANILLA;
    if (p->B == 0) /* nothing to compute: no mask info to build */
        return MATTN_KERNEL_FLASH;
    if (mattn__splash_suits(p))
        return MATTN_KERNEL_SPLASH;
    return MATTN_KERNEL_FLASH;
}

int mattn_sdpa_forward(const mattn_tensor *q, const mattn_tensor *k,
                       const mattn_tensor *v, const mattn_tensor *o, float *lse,
                       const mattn_options *opts, mattn_kernel *chosen)
{
    mattn__problem p;
    int rc = mattn__problem_init(&p, q, k, v, o, lse, opts);
    if (rc)
        return rc;
    mattn_kernel kernel = mattn__sdpa_choose(&p);
    if (kernel == MATTN_KERNEL_SPLASH) /* may still settle on flash: it reports */
        return mattn__sdpa_splash(&p, chosen);
    if (chosen)
        *chosen = kernel;
    if (kernel == MATTN_KERNEL_VANILLA)
        return mattn__vanilla_forward_kernel(&p, NULL);
    return mattn__flash_forward_kernel(&p);
}
