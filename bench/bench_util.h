/* Small helpers shared by the benchmark programs. */
#ifndef MATTN_BENCH_UTIL_H
#define MATTN_BENCH_UTIL_H

#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* The flash benchmarks' problem and timing options (bench_flash,
 * bench_backward): --seq --heads --kv-heads --dim --threads --reps --gemm
 * --block-q --block-kv, and --quick for quick's T, gemm_n and reps. */
typedef struct bench_flash_args {
    int64_t T, Hq, Hkv, D;
    int reps, gemm_n, bq, bkv;
    const char *threads;
} bench_flash_args;

/* Parses argv over the defaults in a. 0, or 2 after naming an unknown
 * option. */
static inline int bench_flash_parse(bench_flash_args *a, const bench_flash_args *quick, int argc,
                                    char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(o, "--seq")) a->T = atoll(v), i++;
        else if (!strcmp(o, "--heads")) a->Hq = atoll(v), i++;
        else if (!strcmp(o, "--kv-heads")) a->Hkv = atoll(v), i++;
        else if (!strcmp(o, "--dim")) a->D = atoll(v), i++;
        else if (!strcmp(o, "--threads")) a->threads = v, i++;
        else if (!strcmp(o, "--reps")) a->reps = atoi(v), i++;
        else if (!strcmp(o, "--gemm")) a->gemm_n = atoi(v), i++;
        else if (!strcmp(o, "--block-q")) a->bq = atoi(v), i++;
        else if (!strcmp(o, "--block-kv")) a->bkv = atoi(v), i++;
        else if (!strcmp(o, "--quick"))
            a->T = quick->T, a->gemm_n = quick->gemm_n, a->reps = quick->reps;
        else {
            fprintf(stderr, "unknown option %s\n", o);
            return 2;
        }
    }
    return 0;
}

#endif
