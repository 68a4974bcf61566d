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
 * Every figure is the best of --reps rounds after a warm-up round, and the
 * rounds interleave all of one thread count's measurements, triad included
 * (run_threads).
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

/* Keeps the best of the rounds after the first (a warm-up). */
static void keep_best(timing *best, int round, double wall, double cpu)
{
    if (round == 0)
        return;
    if (wall < best->wall)
        best->wall = wall, best->cpu = cpu;
}

typedef struct triad {
    float *a, *b, *c;
    size_t n;
} triad;

static triad triad_alloc(size_t n, int threads)
{
    triad t = {malloc(sizeof(float) * n), malloc(sizeof(float) * n), malloc(sizeof(float) * n), n};
    if (!t.a || !t.b || !t.c) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    float *a = t.a, *b = t.b, *c = t.c;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) /* first touch by the thread that streams it */
        a[i] = 0.0f, b[i] = 1.0f, c[i] = 2.0f;
    return t;
}

/* Seconds for a = b + s c over n floats; STREAM counts 3 words per element. */
static double triad_once(const triad *t, int threads)
{
    float *a = t->a;
    const float *b = t->b, *c = t->c;
    size_t n = t->n;
    double t0 = bench_now();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++)
        a[i] = b[i] + 3.0f * c[i];
    double s = bench_now() - t0;
    volatile float sink = a[n / 2];
    (void)sink;
    return s;
}

typedef struct problem {
    int64_t B, S, Hq, Hkv, D;
    float *q, *k, *v, *o;
    int32_t *ends;
} problem;

static void ragged_once(const problem *p, int threads, int round, timing *best)
{
    mattn_tensor q = mattn_tensor_bthd(p->q, p->B, 1, p->Hq, p->D);
    mattn_tensor k = mattn_tensor_bthd(p->k, p->B, p->S, p->Hkv, p->D);
    mattn_tensor v = mattn_tensor_bthd(p->v, p->B, p->S, p->Hkv, p->D);
    mattn_tensor o = mattn_tensor_bthd(p->o, p->B, 1, p->Hq, p->D);
    mattn_options opts = mattn_options_default();
    opts.threads = threads;
    double t0 = bench_now(), c0 = cpu_now();
    int rc = mattn_ragged_decode(&q, &k, &v, NULL, p->ends, &o, NULL, NULL, NULL, &opts);
    double t = bench_now() - t0, c = cpu_now() - c0;
    if (rc != MATTN_OK) {
        fprintf(stderr, "ragged decode failed: %s\n", mattn_last_error());
        exit(1);
    }
    keep_best(best, round, t, c);
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
 * memory system gives a paged read with no kernel in the way. */
static double read_once(const problem *p, int64_t block, const int32_t *order, int threads)
{
    int64_t nblocks = p->B * p->S * p->Hkv * p->D / block;
    double sum = 0.0, t0 = bench_now();
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
    volatile double sink = sum;
    (void)sink;
    return t;
}

/* The same K/V memory seen as a pool of ps-token pages, each sequence's
 * pages in address order (shuffle 0) or in a fixed shuffled order. */
typedef struct paged_setup {
    int64_t ps;
    int32_t *table, *lens, *cu;
    mattn_paged_kv kv;
} paged_setup;

static paged_setup paged_setup_make(const problem *p, int64_t ps, int shuffle)
{
    int64_t per_seq = p->S / ps, npages = p->B * per_seq;
    paged_setup u = {.ps = ps, .table = page_order(npages, shuffle)};
    u.lens = malloc(sizeof(int32_t) * (size_t)p->B);
    u.cu = malloc(sizeof(int32_t) * (size_t)(p->B + 1));
    for (int64_t b = 0; b <= p->B; b++)
        u.cu[b] = (int32_t)b;
    for (int64_t b = 0; b < p->B; b++)
        u.lens[b] = (int32_t)(per_seq * ps);
    u.kv = (mattn_paged_kv){.k_pages = mattn_tensor_bthd(p->k, npages, ps, p->Hkv, p->D),
                            .v_pages = mattn_tensor_bthd(p->v, npages, ps, p->Hkv, p->D),
                            .page_table = u.table, .num_seqs = p->B, .max_pages = per_seq,
                            .kv_lens = u.lens};
    return u;
}

static void paged_setup_free(paged_setup *u)
{
    free(u->table), free(u->lens), free(u->cu);
}

static void paged_once(const problem *p, const paged_setup *u, int threads, int round,
                       timing *best)
{
    mattn_tensor q = mattn_tensor_bthd(p->q, 1, p->B, p->Hq, p->D);
    mattn_tensor o = mattn_tensor_bthd(p->o, 1, p->B, p->Hq, p->D);
    mattn_options opts = mattn_options_default();
    opts.threads = threads;
    double t0 = bench_now(), c0 = cpu_now();
    int rc = mattn_paged_forward(&q, &u->kv, u->cu, &o, NULL, &opts);
    double t = bench_now() - t0, c = cpu_now() - c0;
    if (rc != MATTN_OK) {
        fprintf(stderr, "paged decode failed: %s\n", mattn_last_error());
        exit(1);
    }
    keep_best(best, round, t, c);
}

/* Runs every measurement of one thread count in interleaved rounds (triad,
 * read, ragged, then per page size paged ord, paged, read/N) and prints the
 * best of each: the triad and the kernels see the same minutes of a VM whose
 * memory speed drifts, so their ratios hold better than figures taken one
 * after the other. */
static void run_threads(const problem *p, int th, int reps, const int64_t *sizes, int nsizes,
                        double kv_bytes)
{
    /* triad arrays of 1/8 of the cache each: well beyond every cache level */
    triad tr = triad_alloc((size_t)(p->B * p->S * p->Hkv * p->D) / 8, th);
    paged_setup setups[2 * 8];
    for (int i = 0; i < nsizes; i++)
        for (int shuffle = 0; shuffle <= 1; shuffle++)
            setups[2 * i + shuffle] = paged_setup_make(p, sizes[i], shuffle);
    const timing none = {1e30, 1e30};
    timing t_triad = none, t_read = none, t_ragged = none, t_paged[2 * 8], t_readn[8];
    for (int i = 0; i < 2 * nsizes; i++)
        t_paged[i] = none;
    for (int i = 0; i < nsizes; i++)
        t_readn[i] = none;
    for (int r = 0; r < reps + 1; r++) {
        keep_best(&t_triad, r, triad_once(&tr, th), 0.0);
        keep_best(&t_read, r, read_once(p, p->S * p->Hkv * p->D, NULL, th), 0.0);
        ragged_once(p, th, r, &t_ragged);
        for (int i = 0; i < nsizes; i++) {
            paged_once(p, &setups[2 * i], th, r, &t_paged[2 * i]);
            paged_once(p, &setups[2 * i + 1], th, r, &t_paged[2 * i + 1]);
            /* the shuffled pages read plainly: the memory system's share */
            keep_best(&t_readn[i], r,
                      read_once(p, sizes[i] * p->Hkv * p->D, setups[2 * i + 1].table, th), 0.0);
        }
    }
    double tri = 3.0 * sizeof(float) * (double)tr.n / t_triad.wall / 1e9;
    printf("%-8d %-12s %10s %10.1f %12s %10s\n", th, "triad", "-", tri, "-", "1.00");
    printf("%-8d %-12s %10.2f %10.1f %12s %10.2f  (ratio: x triad)\n", th, "read",
           t_read.wall * 1e3, kv_bytes / t_read.wall / 1e9, "-", kv_bytes / t_read.wall / 1e9 / tri);
    double gr = kv_bytes / t_ragged.wall / 1e9;
    printf("%-8d %-12s %10.2f %10.1f %12.0f %10.2f %11.1f  (ratio: x triad)\n", th, "ragged",
           t_ragged.wall * 1e3, gr, (double)p->B / t_ragged.wall, gr / tri,
           kv_bytes * th / t_ragged.cpu / 1e9);
    for (int i = 0; i < nsizes; i++) {
        char name[32];
        for (int shuffle = 0; shuffle <= 1; shuffle++) {
            const timing *tp = &t_paged[2 * i + shuffle];
            snprintf(name, sizeof name, "paged/%lld%s", (long long)sizes[i], shuffle ? "" : " ord");
            printf("%-8d %-12s %10.2f %10.1f %12.0f %10.2f %11.1f  (ratio: time / ragged)\n", th,
                   name, tp->wall * 1e3, kv_bytes / tp->wall / 1e9, (double)p->B / tp->wall,
                   tp->wall / t_ragged.wall, kv_bytes * th / tp->cpu / 1e9);
        }
        snprintf(name, sizeof name, "read/%lld", (long long)sizes[i]);
        printf("%-8d %-12s %10.2f %10.1f %12s %10.2f  (ratio: time / read)\n", th, name,
               t_readn[i].wall * 1e3, kv_bytes / t_readn[i].wall / 1e9, "-",
               t_readn[i].wall / t_read.wall);
    }
    for (int i = 0; i < 2 * nsizes; i++)
        paged_setup_free(&setups[i]);
    free(tr.a), free(tr.b), free(tr.c);
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
    /* page sizes that divide S, at most 8 */
    int64_t sizes[8];
    int nsizes = 0;
    char list[64];
    snprintf(list, sizeof list, "%s", page_list);
    for (char *tok = strtok(list, " ,"); tok && nsizes < 8; tok = strtok(NULL, " ,")) {
        int64_t ps = atoll(tok);
        if (ps >= 1 && p.S % ps == 0)
            sizes[nsizes++] = ps;
    }
    snprintf(list, sizeof list, "%s", threads_list);
    for (char *tok = strtok(list, " ,"); tok; tok = strtok(NULL, " ,"))
        run_threads(&p, atoi(tok), reps, sizes, nsizes, (double)cost.kv_bytes);
    free(p.q), free(p.o), free(p.k), free(p.v), free(p.ends);
    MPI_Finalize();
    return 0;
}
