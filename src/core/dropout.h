/* The dropout hash of SPEC §4: a pure function of (seed, b, h, qp, kp), so
 * every operator and every rank count drops the same weights.
 *   mix: the splitmix64 finaliser;  u = mix(mix(mix(mix(seed^b)^h)^qp)^kp) >> 40
 * The first three rounds depend only on the row, so kernels compute them once
 * per row ("row key") and one mix per element. */
#ifndef MATTN_CORE_DROPOUT_H
#define MATTN_CORE_DROPOUT_H

#include <stdint.h>

#include "core/hash.h" /* mattn__mix */

static inline uint64_t mattn__dropout_row_key(uint64_t seed, int64_t b, int64_t h,
                                              int64_t qp)
{
    return mattn__mix(mattn__mix(mattn__mix(seed ^ (uint64_t)b) ^ (uint64_t)h) ^
                      (uint64_t)qp);
}

/* u * 2^24, an integer in [0, 2^24). */
static inline uint32_t mattn__dropout_u24(uint64_t row_key, int64_t kp)
{
    return (uint32_t)(mattn__mix(row_key ^ (uint64_t)kp) >> 40);
}

#endif
