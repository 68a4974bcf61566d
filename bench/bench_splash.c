/* Splash vs flash-with-a-dense-mask (issue #4), in one run under one
 * OpenBLAS core:
 *  - "dense": flash with opts.mask set to the [T, S] boolean array of the
 *    mask, so every block is computed and masked element-wise;
 *  - "ideal" = dense time x the fraction of blocks splash does not skip;
 *  - splash time / ideal (target <= 1.2) for causal and a local window;
 *  - causal splash speed-up over non-causal (full-mask) splash (target >= 1.8).
 * Also flash with opts.causal (structural block skipping) for comparison.
 * Then the same for the backward (unless --no-backward): flash backward
 * with the dense causal / local mask against splash backward, ideal = dense
 * backward time x the fraction of non-empty blocks (the same target).
 *
 * usage: bench_splash [--seq T] [--heads H] [--kv-heads H] [--dim D]
 *                     [--window L,R] [--threads N] [--reps N]
 *                     [--block-q N] [--block-kv N] [--quick] [--cpu-time]
 *                     [--no-backward]
 * --cpu-time times with the process CPU clock instead of the wall clock: on a
 * machine shared with other jobs it is far less noisy (1 thread only). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "bench_util.h"
#include "mattn.h"

typedef struct bench {
    int64_t T, Hq, Hkv, D;
    int threads, reps, bq, bkv;
    mattn_tensor q, k, v, o;
    float *lse;
} bench;

static int use_cpu_time;

static double clock_now(void)
{
    if (!use_cpu_time)
        return bench_now();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "%s failed: %s\n", what, mattn_last_error());
    exit(1);
}

/* Best of reps runs of flash with the given options. */
static double time_flash(const bench *b, const mattn_options *opts)
{
    double best = INFINITY;
    for (int r = 0; r < b->reps; r++) {
        double t0 = clock_now();
        if (mattn_flash_forward(&b->q, &b->k, &b->v, &b->o, b->lse, opts) != MATTN_OK)
            die("flash");
        double t = clock_now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

/* Best of reps runs of splash over a prebuilt info (built once, outside the
 * timing, as a user reusing it across layers or steps would). */
static double time_splash(const bench *b, const mattn_splash_info *info)
{
    mattn_options opts = mattn_options_default();
    opts.threads = b->threads;
    double best = INFINITY;
    for (int r = 0; r < b->reps; r++) {
        double t0 = clock_now();
        if (mattn_splash_forward_info(&b->q, &b->k, &b->v, &b->o, b->lse, info, &opts) !=
            MATTN_OK)
            die("splash");
        double t = clock_now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

/* Backward buffers: dO and the gradients (shaped like o, q, k, v). */
typedef struct bwd_bufs {
    mattn_tensor dout, dq, dk, dv;
} bwd_bufs;

/* Best of reps runs of flash backward with the given options; o and lse
 * must hold that forward's outputs. */
static double time_flash_bwd(const bench *b, const bwd_bufs *g, const mattn_options *opts)
{
    double best = INFINITY;
    for (int r = 0; r < b->reps; r++) {
        double t0 = clock_now();
        if (mattn_flash_backward(&b->q, &b->k, &b->v, &b->o, b->lse, &g->dout, &g->dq, &g->dk,
                                 &g->dv, NULL, NULL, opts) != MATTN_OK)
            die("flash backward");
        double t = clock_now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

/* The same for splash backward over a prebuilt info (the forward runs
 * first, untimed, for o and lse). */
static double time_splash_bwd(const bench *b, const bwd_bufs *g, const mattn_splash_info *info)
{
    mattn_options opts = mattn_options_default();
    opts.threads = b->threads;
    if (mattn_splash_forward_info(&b->q, &b->k, &b->v, &b->o, b->lse, info, &opts) != MATTN_OK)
        die("splash");
    double best = INFINITY;
    for (int r = 0; r < b->reps; r++) {
        double t0 = clock_now();
        if (mattn_splash_backward_info(&b->q, &b->k, &b->v, &b->o, b->lse, &g->dout, &g->dq,
                                       &g->dk, &g->dv, NULL, NULL, info, &opts) != MATTN_OK)
            die("splash backward");
        double t = clock_now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

/* Builds the info of `mask` and reports the share of non-empty blocks and
 * the build time. */
static mattn_splash_info *build_info(const bench *b, const mattn_splash_mask *mask,
                                     double *fraction, double *build_s)
{
    mattn_splash_info_options io = mattn_splash_info_options_default();
    io.block_q = b->bq, io.block_kv = b->bkv;
    mattn_splash_info *info;
    double t0 = clock_now();
    if (mattn_splash_info_create(mask, b->T, b->T, &io, &info) != MATTN_OK)
        die("mattn_splash_info_create");
    *build_s = clock_now() - t0;
    mattn_splash_info_stats st;
    mattn_splash_info_describe(info, &st);
    *fraction = (double)(st.partial + st.full) / (double)(st.q_blocks * st.kv_blocks * st.heads);
    return info;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    bench b = {.T = 16384, .Hq = 4, .Hkv = 4, .D = 128, .threads = 1, .reps = 2};
    int64_t wl = 512, wr = 0;
    int backward = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--seq")) b.T = atoll(v), i++;
        else if (!strcmp(a, "--heads")) b.Hq = atoll(v), i++;
        else if (!strcmp(a, "--kv-heads")) b.Hkv = atoll(v), i++;
        else if (!strcmp(a, "--dim")) b.D = atoll(v), i++;
        else if (!strcmp(a, "--threads")) b.threads = atoi(v), i++;
        else if (!strcmp(a, "--reps")) b.reps = atoi(v), i++;
        else if (!strcmp(a, "--block-q")) b.bq = atoi(v), i++;
        else if (!strcmp(a, "--block-kv")) b.bkv = atoi(v), i++;
        else if (!strcmp(a, "--window")) {
            if (sscanf(v, "%lld,%lld", (long long *)&wl, (long long *)&wr) != 2) {
                fprintf(stderr, "--window takes L,R\n");
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--cpu-time")) use_cpu_time = 1;
        else if (!strcmp(a, "--no-backward")) backward = 0;
        else if (!strcmp(a, "--quick")) b.T = 4096, b.Hq = b.Hkv = 2, b.reps = 1;
        else {
            fprintf(stderr, "unknown option %s\n", a);
            return 2;
        }
    }
    if (b.Hkv < 1 || b.Hq % b.Hkv != 0 || b.T < 1 || b.reps < 1) {
        fprintf(stderr, "bad problem: need T >= 1, reps >= 1, heads %% kv-heads == 0\n");
        return 2;
    }
    int64_t T = b.T;
    float *q = bench_alloc_random((size_t)(T * b.Hq * b.D), 1);
    float *k = bench_alloc_random((size_t)(T * b.Hkv * b.D), 2);
    float *v = bench_alloc_random((size_t)(T * b.Hkv * b.D), 3);
    float *o = bench_alloc_random((size_t)(T * b.Hq * b.D), 4);
    b.lse = bench_alloc_random((size_t)(T * b.Hq), 5);
    b.q = mattn_tensor_bthd(q, 1, T, b.Hq, b.D);
    b.k = mattn_tensor_bthd(k, 1, T, b.Hkv, b.D);
    b.v = mattn_tensor_bthd(v, 1, T, b.Hkv, b.D);
    b.o = mattn_tensor_bthd(o, 1, T, b.Hq, b.D);
    uint8_t *dense = malloc((size_t)(T * T));
    if (dense == NULL) {
        fprintf(stderr, "out of memory for the %lld x %lld dense mask\n", (long long)T,
                (long long)T);
        return 1;
    }

    bench_print_header("splash vs flash with a dense mask");
    printf("problem: B=1 T=S=%lld Hq=%lld Hkv=%lld D=Dv=%lld, threads=%d, blocks %dx%d "
           "(0 = default), local window (%lld, %lld), best of %d, %s time\n",
           (long long)T, (long long)b.Hq, (long long)b.Hkv, (long long)b.D, b.threads, b.bq,
           b.bkv, (long long)wl, (long long)wr, b.reps, use_cpu_time ? "CPU" : "wall");

    mattn_splash_mask *full, *causal, *local;
    if (mattn_splash_mask_full(&full) || mattn_splash_mask_causal(0, &causal) ||
        mattn_splash_mask_local(wl, wr, &local))
        die("mask");
    double f_full, f_causal, f_local, b_full, b_causal, b_local;
    mattn_splash_info *i_full = build_info(&b, full, &f_full, &b_full);
    mattn_splash_info *i_causal = build_info(&b, causal, &f_causal, &b_causal);
    mattn_splash_info *i_local = build_info(&b, local, &f_local, &b_local);

    /* Warm the scratch pool and OpenBLAS on a small problem first. */
    {
        bench w = b;
        w.T = T < 1024 ? T : 1024;
        w.q.seq = w.k.seq = w.v.seq = w.o.seq = w.T;
        mattn_splash_info_options io = mattn_splash_info_options_default();
        io.block_q = b.bq, io.block_kv = b.bkv;
        mattn_splash_info *wi;
        if (mattn_splash_info_create(causal, w.T, w.T, &io, &wi) != MATTN_OK)
            die("warm-up info");
        w.reps = 1;
        time_splash(&w, wi);
        mattn_splash_info_free(wi);
    }

    mattn_options fo = mattn_options_default();
    fo.threads = b.threads;
    fo.block_q = b.bq, fo.block_kv = b.bkv;
    fo.mask = mattn_mask_dense(dense, 1, 1, T, T);
    for (int64_t i = 0; i < T; i++)
        for (int64_t j = 0; j < T; j++)
            dense[i * T + j] = (uint8_t)(j <= i);
    double t_dense_causal = time_flash(&b, &fo);
    /* sdpa with the same dense array: it scans the mask into block info
     * (counted in its time) and picks splash. */
    double t_sdpa_causal = INFINITY;
    mattn_kernel chosen = MATTN_KERNEL_FLASH;
    for (int r = 0; r < b.reps; r++) {
        double t0 = clock_now();
        if (mattn_sdpa_forward(&b.q, &b.k, &b.v, &b.o, b.lse, &fo, &chosen) != MATTN_OK)
            die("sdpa");
        double t = clock_now() - t0;
        t_sdpa_causal = t < t_sdpa_causal ? t : t_sdpa_causal;
    }
    for (int64_t i = 0; i < T; i++)
        for (int64_t j = 0; j < T; j++)
            dense[i * T + j] = (uint8_t)((wl < 0 || j >= i - wl) && (wr < 0 || j <= i + wr));
    double t_dense_local = time_flash(&b, &fo);
    fo.mask.data = NULL;
    fo.causal = 1;
    double t_flash_causal = time_flash(&b, &fo);

    double t_full = time_splash(&b, i_full);
    double t_causal = time_splash(&b, i_causal);
    double t_local = time_splash(&b, i_local);

    printf("%-28s %10s %10s %10s %10s %12s\n", "kernel", "time (s)", "blocks", "ideal (s)",
           "vs ideal", "info build");
    printf("%-28s %10.4f %10s %10s %10s %12s\n", "flash, dense causal mask", t_dense_causal, "1.000",
           "", "", "");
    printf("%-28s %10.4f %10s %10s %10s %12s\n", "flash, dense local mask", t_dense_local, "1.000",
           "", "", "");
    printf("%-28s %10.4f %10.3f %10s %10s %12s\n", "flash, opts.causal", t_flash_causal, f_causal,
           "", "", "");
    printf("%-28s %10.4f %10.3f %10.4f %10.2f %12s\n", "sdpa, dense causal mask", t_sdpa_causal,
           f_causal, t_dense_causal * f_causal, t_sdpa_causal / (t_dense_causal * f_causal),
           mattn_kernel_name(chosen));
    printf("%-28s %10.4f %10.3f %10.4f %10.2f %10.4f s\n", "splash, full mask", t_full, f_full,
           t_dense_causal * f_full, t_full / (t_dense_causal * f_full), b_full);
    printf("%-28s %10.4f %10.3f %10.4f %10.2f %10.4f s\n", "splash, causal", t_causal, f_causal,
           t_dense_causal * f_causal, t_causal / (t_dense_causal * f_causal), b_causal);
    printf("%-28s %10.4f %10.3f %10.4f %10.2f %10.4f s\n", "splash, local", t_local, f_local,
           t_dense_local * f_local, t_local / (t_dense_local * f_local), b_local);
    printf("causal splash speed-up over non-causal splash: %.2fx (target >= 1.8)\n",
           t_full / t_causal);
    printf("splash / ideal: causal %.2f, local %.2f (target <= 1.2)\n",
           t_causal / (t_dense_causal * f_causal), t_local / (t_dense_local * f_local));

    if (backward) {
        float *dout = bench_alloc_random((size_t)(T * b.Hq * b.D), 6);
        float *dq = bench_alloc_random((size_t)(T * b.Hq * b.D), 7);
        float *dk = bench_alloc_random((size_t)(T * b.Hkv * b.D), 8);
        float *dv = bench_alloc_random((size_t)(T * b.Hkv * b.D), 9);
        bwd_bufs g = {mattn_tensor_bthd(dout, 1, T, b.Hq, b.D), mattn_tensor_bthd(dq, 1, T, b.Hq, b.D),
                      mattn_tensor_bthd(dk, 1, T, b.Hkv, b.D), mattn_tensor_bthd(dv, 1, T, b.Hkv, b.D)};
        mattn_options bo = mattn_options_default();
        bo.threads = b.threads;
        bo.mask = mattn_mask_dense(dense, 1, 1, T, T);
        double tb_dense[2], tb_splash[2], fr[2] = {f_causal, f_local};
        const mattn_splash_info *infos[2] = {i_causal, i_local};
        for (int c = 0; c < 2; c++) {
            for (int64_t i = 0; i < T; i++)
                for (int64_t j = 0; j < T; j++)
                    dense[i * T + j] = (uint8_t)(c == 0 ? j <= i
                                                        : (wl < 0 || j >= i - wl) &&
                                                              (wr < 0 || j <= i + wr));
            if (mattn_flash_forward(&b.q, &b.k, &b.v, &b.o, b.lse, &bo) != MATTN_OK)
                die("flash");
            tb_dense[c] = time_flash_bwd(&b, &g, &bo);
            tb_splash[c] = time_splash_bwd(&b, &g, infos[c]);
        }
        printf("%-28s %10s %10s %10s %10s\n", "backward kernel", "time (s)", "blocks",
               "ideal (s)", "vs ideal");
        printf("%-28s %10.4f %10s\n", "flash bwd, dense causal", tb_dense[0], "1.000");
        printf("%-28s %10.4f %10s\n", "flash bwd, dense local", tb_dense[1], "1.000");
        printf("%-28s %10.4f %10.3f %10.4f %10.2f\n", "splash bwd, causal", tb_splash[0], fr[0],
               tb_dense[0] * fr[0], tb_splash[0] / (tb_dense[0] * fr[0]));
        printf("%-28s %10.4f %10.3f %10.4f %10.2f\n", "splash bwd, local", tb_splash[1], fr[1],
               tb_dense[1] * fr[1], tb_splash[1] / (tb_dense[1] * fr[1]));
        printf("splash backward / ideal: causal %.2f, local %.2f (target <= 1.2); "
               "backward / forward time: causal %.2f, local %.2f\n",
               tb_splash[0] / (tb_dense[0] * fr[0]), tb_splash[1] / (tb_dense[1] * fr[1]),
               tb_splash[0] / t_causal, tb_splash[1] / t_local);
        free(dout), free(dq), free(dk), free(dv);
    }

    mattn_splash_info_free(i_full);
    mattn_splash_info_free(i_causal);
    mattn_splash_info_free(i_local);
    mattn_splash_mask_free(full);
    mattn_splash_mask_free(causal);
    mattn_splash_mask_free(local);
    free(dense), free(q), free(k), free(v), free(o), free(b.lse);
    MPI_Finalize();
    return 0;
}
