/* Small helpers shared by the benchmark programs. */
#ifndef MATTN_BENCH_UTIL_H
#define MATTN_BENCH_UTIL_H

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mattn.h"

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* n floats uniform in (-1, 1), every page touched. */
static inline float *bench_alloc_random(size_t n, uint64_t seed)
{
    float *x = malloc(sizeof(float) * (n ? n : 1));
    if (!x) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)((double)(s >> 11) / 4503599627370496.0 - 1.0);
    }
    return x;
}

/* Every benchmark states what it ran on: the OpenBLAS kernel set decides
 * sgemm speed (OPENBLAS_CORETYPE=Haswell holds it to AVX2). */
static inline void bench_print_header(const char *what)
{
    const char *ct = getenv("OPENBLAS_CORETYPE");
    printf("== %s\n", what);
    printf("openblas core: %s (OPENBLAS_CORETYPE=%s), mattn %u.%u.%u\n",
           openblas_get_corename(), ct ? ct : "unset", MATTN_VERSION_MAJOR,
           MATTN_VERSION_MINOR, MATTN_VERSION_PATCH);
}

#endif
