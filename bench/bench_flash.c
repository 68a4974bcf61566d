/* Flash forward GFLOP/s beside OpenBLAS sgemm at the same thread count, in
 * one run, under the same OpenBLAS core (issue #2's target: flash >= 0.75 x
 * sgemm at 1 thread; causal counts only the unmasked half of the flops).
 *
 * usage: bench_flash [--seq T] [--heads H] [--kv-heads H] [--dim D]
 *                    [--threads "1 2"] [--reps N] [--gemm N]
 *                    [--block-q N] [--block-kv N] [--quick] */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "bench_util.h"
#include "mattn.h"

static double time_sgemm(int n, int threads, int reps)
{
    float *a = bench_alloc_random((size_t)n * n, 1), *b = bench_alloc_random((size_t)n * n, 2);
    float *c = bench_alloc_random((size_t)n * n, 3);
    openblas_set_num_threads(threads);
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) { /* first run warms up */
        double t0 = bench_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
                    0.0f, c, n);
        double t = bench_now() - t0;
        if (r > 0 && t < best)
            best = t;
    }
    free(a), free(b), free(c);
    return best;
}

static double time_flash(int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int causal,
                         int threads, int reps, int bq, int bkv)
{
    float *q = bench_alloc_random((size_t)(T * Hq * D), 4);
    float *k = bench_alloc_random((size_t)(T * Hkv * D), 5);
    float *v = bench_alloc_random((size_t)(T * Hkv * D), 6);
    float *o = bench_alloc_random((size_t)(T * Hq * D), 7);
    float *lse = bench_alloc_random((size_t)(T * Hq), 8);
    mattn_tensor tq = mattn_tensor_bthd(q, 1, T, Hq, D), tk = mattn_tensor_bthd(k, 1, T, Hkv, D),
                 tv = mattn_tensor_bthd(v, 1, T, Hkv, D), to = mattn_tensor_bthd(o, 1, T, Hq, D);
    mattn_options opts = mattn_options_default();
    opts.causal = causal;
    opts.threads = threads;
    opts.block_q = bq;
    opts.block_kv = bkv;
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = bench_now();
        int rc = mattn_flash_forward(&tq, &tk, &tv, &to, lse, &opts);
        double t = bench_now() - t0;
        if (rc != MATTN_OK) {
            fprintf(stderr, "flash failed: %s\n", mattn_last_error());
            exit(1);
        }
        if (r > 0 && t < best)
            best = t;
    }
    free(q), free(k), free(v), free(o), free(lse);
    return best;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    bench_flash_args a = {.T = 4096, .Hq = 16, .Hkv = 16, .D = 128, .reps = 3, .gemm_n = 4096,
                          .threads = "1 2"};
    const bench_flash_args quick = {.T = 2048, .gemm_n = 2048, .reps = 2};
    if (bench_flash_parse(&a, &quick, argc, argv))
        return 2;
    int64_t T = a.T, Hq = a.Hq, Hkv = a.Hkv, D = a.D;
    int reps = a.reps, gemm_n = a.gemm_n, bq = a.bq, bkv = a.bkv;
    const char *threads_list = a.threads;
    bench_print_header("flash forward vs sgemm");
    printf("problem: B=1 T=S=%lld Hq=%lld Hkv=%lld D=Dv=%lld, sgemm %d^3, best of %d\n",
           (long long)T, (long long)Hq, (long long)Hkv, (long long)D, gemm_n, reps);
    printf("%-8s %-10s %12s %12s %8s\n", "threads", "kernel", "time (s)", "GFLOP/s", "vs sgemm");
    char list[64];
    snprintf(list, sizeof list, "%s", threads_list);
    for (char *tok = strtok(list, " ,"); tok; tok = strtok(NULL, " ,")) {
        int th = atoi(tok);
        double tg = time_sgemm(gemm_n, th, reps);
        double gg = 2.0 * gemm_n * (double)gemm_n * gemm_n / tg / 1e9;
        printf("%-8d %-10s %12.4f %12.1f %8s\n", th, "sgemm", tg, gg, "1.00");
        for (int causal = 0; causal <= 1; causal++) {
            double tf = time_flash(T, Hq, Hkv, D, causal, th, reps, bq, bkv);
            /* Non-causal: 2 GEMMs of 2*T*S*D flops per head. Causal: only
             * the T(T+1)/2 allowed logits count. */
            double pairs = causal ? (double)T * (T + 1) / 2.0 : (double)T * T;
            double gf = 4.0 * pairs * D * Hq / tf / 1e9;
            printf("%-8d %-10s %12.4f %12.1f %8.2f\n", th, causal ? "flash-c" : "flash", tf, gf,
                   gf / gg);
        }
    }
    MPI_Finalize();
    return 0;
}
