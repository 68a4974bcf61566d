/* Flash backward GFLOP/s beside flash forward on the same problem and
 * OpenBLAS sgemm at the same thread count, in one run, under the same
 * OpenBLAS core (issue #5's target: backward >= 0.6 x sgemm at 1 thread).
 * Backward flops are counted as 2.5 x forward's (five GEMMs per block
 * against two); causal counts only the allowed half, as bench_flash does.
 *
 * The machine may be shared: every kernel's ratio is taken against an sgemm
 * timed just before it, and at 1 thread a second ratio uses the calling
 * thread's CPU time, which time-slicing by other processes does not inflate
 * (process CPU time would count OpenBLAS's idle pool threads spinning).
 *
 * usage: bench_backward [--seq T] [--heads H] [--kv-heads H] [--dim D]
 *                       [--threads "1 2"] [--reps N] [--gemm N]
 *                       [--block-q N] [--block-kv N] [--quick] */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "bench_util.h"
#include "mattn.h"

/* Wall and calling-thread CPU seconds of the best run. */
typedef struct timing {
    double wall, cpu;
} timing;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void keep_best(timing *best, double w0, double c0)
{
    double w = bench_now() - w0, c = cpu_now() - c0;
    if (w < best->wall)
        best->wall = w;
    if (c < best->cpu)
        best->cpu = c;
}

static timing time_sgemm(int n, int threads, int reps)
{
    float *a = bench_alloc_random((size_t)n * n, 1), *b = bench_alloc_random((size_t)n * n, 2);
    float *c = bench_alloc_random((size_t)n * n, 3);
    openblas_set_num_threads(threads);
    timing best = {1e30, 1e30};
    for (int r = 0; r < reps + 1; r++) { /* the first run warms up */
        double w0 = bench_now(), c0 = cpu_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        if (r > 0)
            keep_best(&best, w0, c0);
    }
    openblas_set_num_threads(1);
    free(a), free(b), free(c);
    return best;
}

typedef struct problem {
    int64_t T, Hq, Hkv, D;
    float *q, *k, *v, *o, *lse, *dout, *dq, *dk, *dv;
} problem;

static problem make_problem(int64_t T, int64_t Hq, int64_t Hkv, int64_t D)
{
    problem p = {.T = T, .Hq = Hq, .Hkv = Hkv, .D = D};
    p.q = bench_alloc_random((size_t)(T * Hq * D), 4);
    p.k = bench_alloc_random((size_t)(T * Hkv * D), 5);
    p.v = bench_alloc_random((size_t)(T * Hkv * D), 6);
    p.o = bench_alloc_random((size_t)(T * Hq * D), 7);
    p.lse = bench_alloc_random((size_t)(T * Hq), 8);
    p.dout = bench_alloc_random((size_t)(T * Hq * D), 9);
    p.dq = bench_alloc_random((size_t)(T * Hq * D), 10);
    p.dk = bench_alloc_random((size_t)(T * Hkv * D), 11);
    p.dv = bench_alloc_random((size_t)(T * Hkv * D), 12);
    return p;
}

static void free_problem(problem *p)
{
    free(p->q), free(p->k), free(p->v), free(p->o), free(p->lse), free(p->dout);
    free(p->dq), free(p->dk), free(p->dv);
}

/* Best time of `reps` runs (after one warm-up) of the forward (backward = 0)
 * or of the backward (backward = 1, after a forward that made o and lse). */
static timing time_flash(problem *p, int backward, int causal, int threads, int reps, int bq,
                         int bkv)
{
    int64_t T = p->T, Hq = p->Hq, Hkv = p->Hkv, D = p->D;
    mattn_tensor tq = mattn_tensor_bthd(p->q, 1, T, Hq, D), tk = mattn_tensor_bthd(p->k, 1, T, Hkv, D),
                 tv = mattn_tensor_bthd(p->v, 1, T, Hkv, D), to = mattn_tensor_bthd(p->o, 1, T, Hq, D),
                 tdo = mattn_tensor_bthd(p->dout, 1, T, Hq, D),
                 tdq = mattn_tensor_bthd(p->dq, 1, T, Hq, D),
                 tdk = mattn_tensor_bthd(p->dk, 1, T, Hkv, D),
                 tdv = mattn_tensor_bthd(p->dv, 1, T, Hkv, D);
    mattn_options opts = mattn_options_default();
    opts.causal = causal;
    opts.threads = threads;
    opts.block_q = bq;
    opts.block_kv = bkv;
    int rc = MATTN_OK;
    if (backward) /* o and lse of this very problem */
        rc = mattn_flash_forward(&tq, &tk, &tv, &to, p->lse, &opts);
    timing best = {1e30, 1e30};
    for (int r = 0; r < reps + 1 && rc == MATTN_OK; r++) {
        double w0 = bench_now(), c0 = cpu_now();
        rc = backward ? mattn_flash_backward(&tq, &tk, &tv, &to, p->lse, &tdo, &tdq, &tdk, &tdv,
                                             NULL, NULL, &opts)
                      : mattn_flash_forward(&tq, &tk, &tv, &to, p->lse, &opts);
        if (r > 0)
            keep_best(&best, w0, c0);
    }
    if (rc != MATTN_OK) {
        fprintf(stderr, "flash %s failed: %s\n", backward ? "backward" : "forward",
                mattn_last_error());
        exit(1);
    }
    return best;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    bench_flash_args a = {.T = 4096, .Hq = 16, .Hkv = 16, .D = 128, .reps = 2, .gemm_n = 2048,
                          .threads = "1 2"};
    const bench_flash_args quick = {.T = 1024, .gemm_n = 1024, .reps = 1};
    if (bench_flash_parse(&a, &quick, argc, argv))
        return 2;
    int64_t T = a.T, Hq = a.Hq, Hkv = a.Hkv, D = a.D;
    int reps = a.reps, gemm_n = a.gemm_n, bq = a.bq, bkv = a.bkv;
    const char *threads_list = a.threads;
    bench_print_header("flash backward vs flash forward vs sgemm");
    printf("problem: B=1 T=S=%lld Hq=%lld Hkv=%lld D=Dv=%lld, sgemm %d^3 timed before each "
           "kernel, best of %d\n",
           (long long)T, (long long)Hq, (long long)Hkv, (long long)D, gemm_n, reps);
    printf("%-8s %-11s %10s %9s %9s %9s %9s %9s\n", "threads", "kernel", "time (s)", "GFLOP/s",
           "sgemm", "vs sgemm", "cpu-ratio", "bwd/fwd");
    problem p = make_problem(T, Hq, Hkv, D);
    char list[64];
    snprintf(list, sizeof list, "%s", threads_list);
    double gemm_flops = 2.0 * gemm_n * (double)gemm_n * gemm_n;
    for (char *tok = strtok(list, " ,"); tok; tok = strtok(NULL, " ,")) {
        int th = atoi(tok);
        for (int causal = 0; causal <= 1; causal++) {
            /* Forward: 2 GEMMs of 2*T*S*D flops per head over the allowed
             * logits; backward counted as 2.5 x that. */
            double pairs = causal ? (double)T * (T + 1) / 2.0 : (double)T * T;
            double fwd_flops = 4.0 * pairs * D * Hq;
            double t_fwd = 0.0;
            for (int bwd = 0; bwd <= 1; bwd++) {
                double flops = bwd ? 2.5 * fwd_flops : fwd_flops;
                timing g = time_sgemm(gemm_n, th, reps);
                timing k = time_flash(&p, bwd, causal, th, reps, bq, bkv);
                double gf = flops / k.wall / 1e9, gg = gemm_flops / g.wall / 1e9;
                char cpu_ratio[16] = "-", ratio[16] = "";
                if (th == 1)
                    snprintf(cpu_ratio, sizeof cpu_ratio, "%.2f",
                             (flops / k.cpu) / (gemm_flops / g.cpu));
                if (bwd)
                    snprintf(ratio, sizeof ratio, "%.2f", k.wall / t_fwd);
                else
                    t_fwd = k.wall;
                const char *name = bwd ? (causal ? "bwd-causal" : "bwd") : (causal ? "fwd-causal" : "fwd");
                printf("%-8d %-11s %10.4f %9.1f %9.1f %9.2f %9s %9s\n", th, name, k.wall, gf, gg,
                       gf / gg, cpu_ratio, ratio);
                fflush(stdout);
            }
        }
    }
    free_problem(&p);
    MPI_Finalize();
    return 0;
}
