/* Row-wise vector math for the softmax kernels, chosen once at run time.
 *
 * glibc expf costs ~25x a vectorised polynomial and decides flash speed, so
 * every exp in a hot loop goes through this table. All exps here take
 * arguments <= 0 (x - rowmax, or -2|x| for tanh), which the implementations
 * rely on: results lie in [0, 1] and never overflow. */
#ifndef MATTN_KERNELS_VECMATH_H
#define MATTN_KERNELS_VECMATH_H

#include <stdint.h>

typedef struct mattn__vecmath {
    const char *name; /* "avx512", "avx2" or "portable" */
    /* max of x[0..n), -inf when n == 0 or all -inf */
    float (*max)(const float *x, int64_t n);
    /* x[j] = exp(x[j] - m) for x[j] - m <= 0 (-inf gives 0); returns the sum.
     * m must be finite. */
    float (*exp_sum)(float *x, int64_t n, float m);
    /* x[j] = cap * tanh(x[j] / cap) */
    void (*softcap)(float *x, int64_t n, float cap);
    /* Dropout over one row segment: w[j] *= keep ? scale : 0 where
     * keep = mattn__dropout_u24(row_key, kp0 + j) >= threshold. */
    void (*dropout)(float *w, int64_t n, uint64_t row_key, int64_t kp0,
                    uint32_t threshold, float scale);
} mattn__vecmath;

/* The best implementation this CPU runs. MATTN_VECMATH=portable|avx2|avx512
 * in the environment forces one (for tests and benchmarks). */
const mattn__vecmath *mattn__vecmath_get(void);

extern const mattn__vecmath mattn__vecmath_portable;
extern const mattn__vecmath mattn__vecmath_avx2;
extern const mattn__vecmath mattn__vecmath_avx512;

#endif
