/* Decode bandwidth: GB/s of K/V bytes actually read (the cost estimate's
 * kv_bytes) for a DRAM-sized cache, beside a STREAM-style triad measured in
 * the same run at the same thread count (issue #6: decode >= 0.7 x triad;
 * paged within 1.1x of contiguous ragged). A plain read of K and V in
 * address order ("read") and in the paged runs' shuffled page order
 * ("read/N") shows what the memory system itself gives each access order.
 *
 * Default problem: B=8, S=32768, Hkv=8, Hq=32, D=Dv=128: K and V are 1 GiB
 * each. The paged runs reuse the same memory as a pool of pages, no second
 * copy: "paged/N ord" with the page table in address order (what paging
 * costs the kernel), "paged/N" with a shuffled page table (pages read out of
 * order, what a long-running server's cache looks like).
 *
 * usage: bench_decode [--batch B] [--seq S] [--heads Hq] [--kv-heads Hkv]
 *                     [--dim D] [--threads "1 2"] [--reps N]
 *                     [--page-sizes "16 64"] [--quick] */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "bench_util.h"
#include "mattn.h"

/* Process CPU seconds: on a shared machine a run that loses its core to
 * other processes shows it in wall time but not here, so "cpu GB/s"
 * (bytes / (cpu seconds / threads)) estimates the unloaded figure. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct timing {
    double wall, cpu; /* best wall time, and the CPU time of that run */
} timing;

/* a = b + s c over n floats; STREAM counts 3 words per element. */
static double triad_gbs(size_t n, int threads, int reps)
{
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
    float *c = malloc(sizeof(float) * n);
    if (!a || !b || !c) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) /* first touch by the thread that streams it */
        a[i] = 0.0f, b[i] = 1.0f, c[i] = 2.0f;
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = bench_now();
#pragma omp parallel for num_threads(threads) schedule(static)
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] + 3.0f * c[i];
        double t = bench_now() - t0;
        if (r > 0 && t < best)
            best = t;
    }
    volatile float sink = a[n / 2];
    (void)sink;
    free(a), free(b), free(c);
    return 3.0 * sizeof(float) * (double)n / best / 1e9;
}

typedef struct problem {
    int64_t B, S, Hq, Hkv, D;
    float *q, *k, *v, *o;
    int32_t *ends;
} problem;

static timing time_ragged(const problem *p, int threads, int reps)
{
    mattn_tensor q = mattn_tensor_bthd(p->q, p->B, 1, p->Hq, p->D);
    mattn_tensor k = mattn_tensor_bthd(p->k, p->B, p->S, p->Hkv, p->D);
    mattn_tensor v = mattn_tensor_bthd(p->v, p->B, p->S, p->Hkv, p->D);
    mattn_tensor o = mattn_tensor_bthd(p->o, p->B, 1, p->Hq, p->D);
    mattn_options opts = mattn_options_default();
    opts.threads = threads;
    timing best = {1e30, 1e30};
    for (int r = 0; r < reps + 1; r++) {
        double t0 = bench_now(), c0 = cpu_now();
        int rc = mattn_ragged_decode(&q, &k, &v, NULL, p->ends, &o, NULL, NULL, NULL, &opts);
        double t = bench_now() - t0, c = cpu_now() - c0;
        if (rc != MATTN_OK) {
            fprintf(stderr, "ragged decode failed: %s\n", mattn_last_error());
            exit(1);
        }
        if (r > 0 && t < best.wall)
            best.wall = t;
        if (r > 0 && c < best.cpu)
            best.cpu = c;
    }
    return best;
}

/* Page ids 0..npages-1, in a fixed shuffled order (pages read out of order)
 * or, with shuffle 0, in address order. */
static int32_t *page_order(int64_t npages, int shuffle)
{
    int32_t *table = malloc(sizeof(int32_t) * (size_t)npages);
    uint64_t s = 12345;
    for (int64_t i = 0; i < npages; i++)
        table[i] = (int32_t)i;
    for (int64_t i = npages - 1; shuffle && i > 0; i--) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        int64_t j = (int64_t)(s % (uint64_t)(i + 1));
        int32_t t = table[i];
        table[i] = table[j], table[j] = t;
    }
    return table;
}

/* Seconds for a plain read of K and V (sum of every float) in blocks of
 * `block` floats visited in `order` (NULL: in address order): what the
 * memory system gives a paged read with no kernel in the way. Best of reps. */
static double time_read(const problem *p, int64_t block, const int32_t *order, int threads,
                        int reps)
{
    int64_t nblocks = p->B * p->S * p->Hkv * p->D / block;
    double best = 1e30, sum = 0.0;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = bench_now();
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : sum)
        for (int64_t b = 0; b < nblocks; b++) {
            const float *k = p->k + (order ? order[b] : b) * block;
            const float *v = p->v + (order ? order[b] : b) * block;
            float acc[32] = {0}; /* independent sums: bound by memory, not add latency */
            int64_t i = 0;
            for (; i + 32 <= block; i += 32)
                for (int j = 0; j < 32; j++)
                    acc[j] += k[i + j] + v[i + j];
            for (; i < block; i++)
                acc[0] += k[i] + v[i];
            for (int j = 0; j < 32; j++)
                sum += acc[j];
        }
        double t = bench_now() - t0;
        if (r > 0 && t < best)
            best = t;
    }
    volatile double sink = sum;
    (void)sink;
    return best;
}

static timing time_paged(const problem *p, int64_t ps, int shuffle, int threads, int reps)
{
    int64_t per_seq = p->S / ps, npages = p->B * per_seq;
    int32_t *table = page_order(npages, shuffle);
    int32_t *lens = malloc(sizeof(int32_t) * (size_t)p->B), *cu = malloc(sizeof(int32_t) * (size_t)(p->B + 1));
    for (int64_t b = 0; b <= p->B; b++)
        cu[b] = (int32_t)b;
    for (int64_t b = 0; b < p->B; b++)
        lens[b] = (int32_t)(per_seq * ps);
    mattn_paged_kv kv = {.k_pages = mattn_tensor_bthd(p->k, npages, ps, p->Hkv, p->D),
                         .v_pages = mattn_tensor_bthd(p->v, npages, ps, p->Hkv, p->D),
                         .page_table = table, .num_seqs = p->B, .max_pages = per_seq,
                         .kv_lens = lens};
    mattn_tensor q = mattn_tensor_bthd(p->q, 1, p->B, p->Hq, p->D);
    mattn_tensor o = mattn_tensor_bthd(p->o, 1, p->B, p->Hq, p->D);
    mattn_options opts = mattn_options_default();
    opts.threads = threads;
    timing best = {1e30, 1e30};
    for (int r = 0; r < reps + 1; r++) {
        double t0 = bench_now(), c0 = cpu_now();
        int rc = mattn_paged_forward(&q, &kv, cu, &o, NULL, &opts);
        double t = bench_now() - t0, c = cpu_now() - c0;
        if (rc != MATTN_OK) {
            fprintf(stderr, "paged decode failed: %s\n", mattn_last_error());
            exit(1);
        }
        if (r > 0 && t < best.wall)
            best.wall = t;
        if (r > 0 && c < best.cpu)
            best.cpu = c;
    }
    free(table), free(lens), free(cu);
    return best;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    problem p = {.B = 8, .S = 32768, .Hq = 32, .Hkv = 8, .D = 128};
    int reps = 3;
    const char *threads_list = "1 2", *page_list = "16 64";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--batch")) p.B = atoll(v), i++;
        else if (!strcmp(a, "--seq")) p.S = atoll(v), i++;
        else if (!strcmp(a, "--heads")) p.Hq = atoll(v), i++;
        else if (!strcmp(a, "--kv-heads")) p.Hkv = atoll(v), i++;
        else if (!strcmp(a, "--dim")) p.D = atoll(v), i++;
        else if (!strcmp(a, "--threads")) threads_list = v, i++;
        else if (!strcmp(a, "--page-sizes")) page_list = v, i++;
        else if (!strcmp(a, "--reps")) reps = atoi(v), i++;
        else if (!strcmp(a, "--quick")) p.S = 8192, reps = 2;
        else {
            fprintf(stderr, "unknown option %s\n", a);
            return 2;
        }
    }
    bench_print_header("decode bandwidth vs STREAM triad");
    size_t nkv = (size_t)(p.B * p.S * p.Hkv * p.D);
    p.q = bench_alloc_random((size_t)(p.B * p.Hq * p.D), 1);
    p.o = bench_alloc_random((size_t)(p.B * p.Hq * p.D), 2);
    p.k = bench_alloc_random(nkv, 3);
    p.v = bench_alloc_random(nkv, 4);
    p.ends = malloc(sizeof(int32_t) * (size_t)p.B);
    for (int64_t b = 0; b < p.B; b++)
        p.ends[b] = (int32_t)p.S;
    /* Bytes of K/V actually read, from the library's own cost estimate. */
    mattn_decode_cost cost;
    mattn_tensor tq = mattn_tensor_bthd(NULL, p.B, 1, p.Hq, p.D);
    mattn_tensor tk = mattn_tensor_bthd(NULL, p.B, p.S, p.Hkv, p.D);
    mattn_options o = mattn_options_default();
    mattn_ragged_decode_cost(&tq, &tk, &tk, NULL, p.ends, &o, &cost);
    double gib = (double)cost.kv_bytes / (1 << 30);
    printf("problem: B=%lld S=%lld Hq=%lld Hkv=%lld D=Dv=%lld, K/V read %.2f GiB per call, "
           "triad 3 x %.0f MiB, best of %d\n",
           (long long)p.B, (long long)p.S, (long long)p.Hq, (long long)p.Hkv, (long long)p.D, gib,
           (double)nkv / 8 * 4 / (1 << 20), reps);
    printf("%-8s %-12s %10s %10s %12s %10s %11s\n", "threads", "kernel", "time (ms)", "GB/s",
           "tokens/s", "ratio", "cpu GB/s");
    char list[64], plist[64];
    snprintf(list, sizeof list, "%s", threads_list);
    for (char *tok = strtok(list, " ,"); tok; tok = strtok(NULL, " ,")) {
        int th = atoi(tok);
        /* triad arrays of 1/8 of the cache each: well beyond every cache level */
        double tri = triad_gbs(nkv / 8, th, reps);
        printf("%-8d %-12s %10s %10.1f %12s %10s\n", th, "triad", "-", tri, "-", "1.00");
        double rd = time_read(&p, p.S * p.Hkv * p.D, NULL, th, reps);
        printf("%-8d %-12s %10.2f %10.1f %12s %10.2f  (ratio: x triad)\n", th, "read",
               rd * 1e3, (double)cost.kv_bytes / rd / 1e9, "-", (double)cost.kv_bytes / rd / 1e9 / tri);
        timing tr = time_ragged(&p, th, reps);
        double gr = (double)cost.kv_bytes / tr.wall / 1e9;
        printf("%-8d %-12s %10.2f %10.1f %12.0f %10.2f %11.1f  (ratio: x triad)\n", th, "ragged",
               tr.wall * 1e3, gr, (double)p.B / tr.wall, gr / tri,
               (double)cost.kv_bytes * th / tr.cpu / 1e9);
        snprintf(plist, sizeof plist, "%s", page_list);
        char *save = NULL;
        for (char *pt = strtok_r(plist, " ,", &save); pt; pt = strtok_r(NULL, " ,", &save)) {
            int64_t ps = atoll(pt);
            if (ps < 1 || p.S % ps != 0)
                continue;
            char name[32];
            /* pages in address order first: the kernel's own cost of paging */
            for (int shuffle = 0; shuffle <= 1; shuffle++) {
                timing tp = time_paged(&p, ps, shuffle, th, reps);
                double gp = (double)cost.kv_bytes / tp.wall / 1e9;
                snprintf(name, sizeof name, "paged/%lld%s", (long long)ps, shuffle ? "" : " ord");
                printf("%-8d %-12s %10.2f %10.1f %12.0f %10.2f %11.1f  (ratio: time / ragged)\n",
                       th, name, tp.wall * 1e3, gp, (double)p.B / tp.wall, tp.wall / tr.wall,
                       (double)cost.kv_bytes * th / tp.cpu / 1e9);
            }
            /* the same pages read plainly, out of order: the memory system's share */
            int32_t *order = page_order(p.B * p.S / ps, 1);
            double rp = time_read(&p, ps * p.Hkv * p.D, order, th, reps);
            free(order);
            snprintf(name, sizeof name, "read/%lld", (long long)ps);
            printf("%-8d %-12s %10.2f %10.1f %12s %10.2f  (ratio: time / read)\n", th, name,
                   rp * 1e3, (double)cost.kv_bytes / rp / 1e9, "-", rp / rd);
        }
    }
    free(p.q), free(p.o), free(p.k), free(p.v), free(p.ends);
    MPI_Finalize();
    return 0;
}
