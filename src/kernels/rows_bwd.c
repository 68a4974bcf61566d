#include "kernels/rows_bwd.h"

#include <math.h>
#include <string.h>

void mattn__bwd_row_probs(const mattn__problem *p, const mattn__vecmath *vm,
                          const mattn__row *r, float lse, float *s, float *capf, float *w,
                          int64_t j0, int64_t n)
{
    mattn__bwd_row_probs_tile(p, vm, r, lse, s, capf, w, j0, n, NULL);
}

void mattn__bwd_row_probs_tile(const mattn__problem *p, const mattn__vecmath *vm,
                               const mattn__row *r, float lse, float *s, float *capf, float *w,
                               int64_t j0, int64_t n, const uint8_t *tile)
{
    if (p->softcap > 0.0f) {
        /* d(cap tanh(x/cap))/dx = 1 - tanh^2(x/cap). The cap itself is applied
         * again by mattn__row_logits below, by the same function, so the
         * factor and the logit agree on tanh to the last bit. */
        const float inv = 1.0f / p->softcap;
        memcpy(capf, s, sizeof(float) * (size_t)n);
        vm->softcap(capf, n, p->softcap);
        for (int64_t j = 0; j < n; j++) {
            float t = capf[j] * inv;
            capf[j] = 1.0f - t * t;
        }
    }
    mattn__row_logits(p, vm, r, s, j0, n);
    if (tile)
        for (int64_t j = 0; j < n; j++)
            s[j] = tile[j] ? s[j] : -INFINITY;
    /* lse >= every logit of the row, so P <= 1; but the fp32 logits
     * recomputed here may exceed the forward's lse by rounding. Shifting by
     * the larger of the two keeps exp's argument <= 0 (its precondition),
     * moves P by that rounding only, and keeps an inconsistent lse from
     * producing inf. The sum exp_sum returns is not needed; disallowed keys
     * (-inf) give 0. */
    float m = vm->max(s, n);
    (void)vm->exp_sum(s, n, m > lse ? m : lse);
    if (p->dropout_p > 0.0f) {
        memcpy(w, s, sizeof(float) * (size_t)n);
        mattn__row_dropout(p, vm, r, w, j0, n);
    }
}

void mattn__bwd_row_dscore(const float *P, const float *W, const float *capf,
                           float delta, float *dp, float *dbias, int64_t n)
{
    /* The sink has no value, so its dP is 0 and it only enters through D
     * (and through P's normaliser): the real keys' dS needs nothing more. */
    if (W) {
        for (int64_t j = 0; j < n; j++)
            dp[j] = W[j] * dp[j] - P[j] * delta;
    } else {
        for (int64_t j = 0; j < n; j++)
            dp[j] = P[j] * (dp[j] - delta);
    }
    if (dbias)
        for (int64_t j = 0; j < n; j++)
            dbias[j] += dp[j];
    if (capf)
        for (int64_t j = 0; j < n; j++)
            dp[j] *= capf[j];
}
