/* `mattn run`: one forward pass of vanilla, sdpa, flash, splash or ring, on
 * .npy files or a synthetic problem, on one rank or over a mesh, with timing
 * and an optional float64 check.
 *
 * The steps, each collective and each ending with every rank holding the
 * same status (cli/attn.h):
 *   load     rank 0 reads the inputs; sizes and global arguments go to all,
 *   place    the mesh, each rank's shard (scattered, or generated in place),
 *   open     rank 0 creates the output files (as temporaries) before computing,
 *   compute  warm-up and timed calls of the library on the local shards,
 *   gather   o and lse back to rank 0,
 *   check    rank 0 compares with the float64 reference (--check),
 *   write    rank 0 writes the outputs and renames them into place together. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/attn.h"
#include "cli/cli.h"
#include "cli/reference.h"
#include "core/problem.h"
#include "core/status.h"

/* ------------------------------------------------------------------ options */

static const mattn__opt OPTS[] = {
    MATTN__A_SECTION("operator and files"),
    MATTN__A_CHOICE("op", op, MATTN__OP_WORDS,
                    "operator (default sdpa): vanilla materialises the logits, flash is the "
                    "blockwise online softmax, sdpa picks one and prints it as 'kernel:', "
                    "splash skips the blocks its mask object rules out, ring shards the "
                    "sequence over the ranks (sp axis of --mesh)"),
    MATTN__ATTN_INPUT_OPTS,
    MATTN__A_FILE("out", out, "write the output o, float32, in the input layout: [B,T,Hq,Dv] or "
                              "[B,Hq,T,Dv] (default: not written)"),
    MATTN__A_FILE("lse", lse, "write the natural-log log-sum-exp, float32 [B,Hq,T]: -inf (or "
                              "the sink) for a row with no allowed key (default: not written)"),
    MATTN__A_FILE("weights", weights, "vanilla on one rank only: write the softmax "
                                      "probabilities before dropout, float32 [B,Hq,T,S] "
                                      "(default: not written)"),
    MATTN__ATTN_MASK_OPTS,
    MATTN__ATTN_LOGIT_OPTS,
    MATTN__ATTN_EXEC_OPTS,
    MATTN__ATTN_SYNTH_OPTS,
    MATTN__ATTN_SYNTH_DV_OPT,
    MATTN__A_SECTION("checking"),
    MATTN__A_FLAG("check", check, "compare o, lse (and --weights) with the command's own float64 "
                                  "reference of SPEC 3-4; exit 1 if an error exceeds its fp32 "
                                  "bound"),
    MATTN__ATTN_CHECK_ROWS_OPT,
};
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

static void print_help(FILE *out)
{
    fprintf(out,
            "usage: mattn run [--op vanilla|sdpa|flash|splash|ring] [--q Q.npy --k K.npy --v V.npy]\n"
            "                 [--out O.npy] [--lse LSE.npy] [options]\n"
            "       mpirun -np P mattn run [--mesh DP,TP,SP] [--seq-layout zigzag] ... \n"
            "\n"
            "One attention forward pass, o_i = sum_j softmax_j(s_ij) v_j over the allowed keys,\n"
            "with the exact semantics of SPEC 3-4 (docs/semantics.md). With --q/--k/--v it reads\n"
            "those .npy files; without them it builds a synthetic problem (see below). The\n"
            "library is called --warmup times untimed, then --repeat times timed.\n"
            "\n"
            "Under mpirun the ranks form a dp x tp x sp mesh: rank 0 reads the files and\n"
            "scatters the shards (a synthetic problem is made shard by shard on each rank),\n"
            "every rank computes its shard, and rank 0 gathers o and lse and writes them: the\n"
            "files are those of a single-rank run, equal to fp32 rounding.\n"
            "\n"
            "stdout gets 'key: value' lines: op, kernel, the shapes, scale, ranks, mesh,\n"
            "allowed_pairs and flop (2*(D+Dv) per (query, key) pair that causal/window/chunk\n"
            "allow, times B*Hq), time_best_s, time_median_s (slowest rank), gflops_best,\n"
            "gflops_median, one 'rank_R:' line per rank under a mesh, comm_wait_s for ring,\n"
            "and with --check max_abs_err_o, max_abs_err_lse, max_err_over_bound, check.\n"
            "stderr gets progress and errors. No output file is created unless everything\n"
            "succeeds. Every rank exits with the same status.\n");
    mattn__opts_help(out, OPTS, N_OPTS);
    fprintf(out,
            "\n"
            "examples:\n"
            "  mattn run --op flash --q q.npy --k k.npy --v v.npy --causal --out o.npy\n"
            "  mattn run --op splash --mask-kind local --window 256,0 --seq 8192 --check "
            "--check-rows 500\n"
            "  mpirun -np 4 mattn run --op ring --seq-layout zigzag --causal --seq 8192 "
            "--kv-heads 4\n"
            "  mpirun -np 2 mattn run --op flash --mesh 1,2,1 --q q.npy --k k.npy --v v.npy "
            "--out o.npy\n");
}

static int run_parse(mattn__attn_config *c, int argc, char **argv, int size, FILE *err)
{
    mattn__attn_config_init(c);
    unsigned char given[N_OPTS];
    int code = mattn__opts_parse("run", OPTS, N_OPTS, argc, argv, 1, c, given, err);
    if (code == MATTN__CLI_EXIT_OK)
        code = mattn__attn_validate("run", c, OPTS, N_OPTS, given, size, err);
    if (code != MATTN__CLI_EXIT_OK)
        return code;
    const char *why = NULL;
    if (c->weights && c->op != MATTN__OP_VANILLA)
        why = "--weights needs --op vanilla (only vanilla materialises the probabilities)";
    else if (c->weights && mattn__attn_uses_mesh(c, size))
        why = "--weights is for a single-rank vanilla run (no --mesh, one rank)";
    char twice[600];
    const char *outs[] = {c->out, c->lse, c->weights};
    for (int a = 0; why == NULL && a < 3; a++)
        for (int b = a + 1; why == NULL && b < 3; b++)
            if (outs[a] && outs[b] && strcmp(outs[a], outs[b]) == 0) {
                snprintf(twice, sizeof twice, "the same file '%s' is given for two outputs",
                         outs[a]);
                why = twice;
            }
    if (why && err)
        fprintf(err, "mattn run: %s\n(see 'mattn run --help')\n", why);
    return why ? MATTN__CLI_EXIT_USAGE : MATTN__CLI_EXIT_OK;
}

/* ------------------------------------------------------------------ state */

typedef struct run_state {
    int rank, size;
    mattn__attn_problem p;
    mattn__attn_local l;
    /* this rank's results: the global arrays without a mesh */
    float *o, *lse, *weights;
    mattn_tensor to;
    /* rank 0, under a mesh: the gathered results */
    float *go, *glse;
    mattn_tensor tgo;
    /* single-rank splash */
    mattn_splash_info *info;
    mattn_options splash_opts;
    /* outputs (rank 0) */
    mattn__npy_writer w[3];
    const char *path[3];
} run_state;

static void state_free(run_state *s)
{
    for (int x = 0; x < 3; x++)
        mattn__npy_writer_abort(&s->w[x]); /* removes temporaries; nothing after a commit */
    mattn_splash_info_free(s->info);
    free(s->o);
    free(s->lse);
    free(s->weights);
    free(s->go);
    free(s->glse);
    mattn__attn_local_free(&s->l);
    mattn__attn_problem_free(&s->p);
}

/* Output buffers and files: this rank's o (and lse), rank 0's global ones. */
static int run_open(const mattn__attn_config *c, run_state *s)
{
    const mattn__attn_problem *p = &s->p;
    const mattn__attn_local *l = &s->l;
    int rc, want_lse = c->lse || c->check;
    int gather = c->out || want_lse;
    int64_t B = p->B, T = p->T, Hq = p->Hq, Dv = p->Dv;
    const int64_t o_dims[4] = {B, T, Hq, Dv}, lse_dims[3] = {B, Hq, T};
    if (l->mesh == NULL) {
        if ((rc = mattn__attn_alloc_floats(&s->o, "the output o", 4, o_dims)) ||
            (want_lse && (rc = mattn__attn_alloc_floats(&s->lse, "lse", 3, lse_dims))) ||
            (c->weights && (rc = mattn__attn_alloc_floats(&s->weights, "weights", 4,
                                                          (const int64_t[]){B, Hq, T, p->S}))))
            return rc;
        s->to = mattn__attn_view(c, s->o, B, T, Hq, Dv);
    } else {
        const mattn_shard *sh = &l->shard;
        const int64_t local_lse[3] = {sh->batch_count, sh->q_head_count, sh->q_len};
        if ((rc = mattn__attn_alloc_local(l, MATTN_SHARD_Q, Dv, "the local o", &s->o, &s->to)) ||
            (want_lse && (rc = mattn__attn_alloc_floats(&s->lse, "the local lse", 3, local_lse))))
            return rc;
        if (s->rank == 0 && gather &&
            ((rc = mattn__attn_alloc_floats(&s->go, "the gathered o", 4, o_dims)) ||
             (want_lse &&
              (rc = mattn__attn_alloc_floats(&s->glse, "the gathered lse", 3, lse_dims)))))
            return rc;
        if (s->go)
            s->tgo = mattn__attn_view(c, s->go, B, T, Hq, Dv);
    }
    /* With --check the output starts as NaN, so an element the kernel never
     * wrote cannot pass. */
    if (c->check)
        for (int64_t x = 0, n = s->to.batch * s->to.seq * s->to.heads * s->to.dim; x < n; x++)
            s->o[x] = NAN;
    s->path[0] = c->out, s->path[1] = c->lse, s->path[2] = c->weights;
    for (int x = 0; s->rank == 0 && x < 3; x++)
        if (s->path[x] && (rc = mattn__npy_writer_open(&s->w[x], s->path[x])))
            return rc;
    return MATTN_OK;
}

/* Single-rank splash: the mask object from the options, its block info
 * built once, outside the timed calls. */
static int splash_prepare(run_state *s)
{
    mattn_splash_mask *mask = NULL;
    const mattn_options *o = &s->p.opts;
    int rc = mattn__attn_splash_mask(&s->p, o, &s->splash_opts, &mask);
    if (rc == MATTN_OK) {
        mattn_splash_info_options io = mattn_splash_info_options_default();
        io.q_offset = o->q_offset;
        io.kv_offset = o->kv_offset;
        io.block_q = o->block_q;
        io.block_kv = o->block_kv;
        rc = mattn_splash_info_create(mask, s->p.T, s->p.S, &io, &s->info);
    }
    mattn_splash_mask_free(mask);
    return rc;
}

/* ------------------------------------------------------------------ compute */

static int forward(const mattn__attn_config *c, run_state *s, mattn_kernel *kernel,
                   mattn_ring_stats *stats)
{
    mattn__attn_local *l = &s->l;
    if (l->mesh != NULL) {
        mattn_ring_options ro = mattn_ring_options_default();
        ro.comm = (mattn_ring_comm)c->comm;
        if (c->op == MATTN__OP_RING) {
            *kernel = MATTN_KERNEL_FLASH; /* the ring runs the flash kernel per step */
            return mattn_ring_forward_ex(l->mesh, &l->shape, &l->tq, &l->tk, &l->tv, &s->to,
                                         s->lse, &l->opts, &ro, stats);
        }
        *kernel = c->op == MATTN__OP_VANILLA  ? MATTN_KERNEL_VANILLA
                  : c->op == MATTN__OP_SPLASH ? MATTN_KERNEL_SPLASH
                                              : MATTN_KERNEL_FLASH;
        return mattn_mesh_forward(l->mesh, &l->shape, mattn__op_mesh[c->op], &l->tq, &l->tk, &l->tv,
                                  &s->to, s->lse, &l->opts, &ro,
                                  c->op == MATTN__OP_SDPA ? kernel : NULL);
    }
    switch (c->op) {
    case MATTN__OP_VANILLA:
        *kernel = MATTN_KERNEL_VANILLA;
        return mattn_vanilla_forward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, s->weights,
                                     &l->opts);
    case MATTN__OP_FLASH:
        *kernel = MATTN_KERNEL_FLASH;
        return mattn_flash_forward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, &l->opts);
    case MATTN__OP_SPLASH:
        *kernel = MATTN_KERNEL_SPLASH;
        return mattn_splash_forward_info(&l->tq, &l->tk, &l->tv, &s->to, s->lse, s->info,
                                         &s->splash_opts);
    default:
        return mattn_sdpa_forward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, &l->opts, kernel);
    }
}

/* What the timed calls measured. Times are the slowest rank's: a
 * distributed call is done when its last rank is. */
typedef struct run_timing {
    mattn_kernel kernel;
    double best, median;
    double local;           /* this rank's time in the best call */
    mattn_ring_stats stats; /* this rank's ring statistics in the best call */
} run_timing;

static int run_compute(MPI_Comm comm, const mattn__attn_config *c, run_state *s, run_timing *t)
{
    FILE *err = mattn__cli_err();
    double *times = malloc(sizeof(double) * (size_t)c->repeat);
    int rc = mattn__attn_agree(comm, times ? MATTN_OK
                                           : mattn__fail(MATTN_ERR_NOMEM, "out of memory"));
    t->best = INFINITY;
    for (int64_t x = 0; x < c->warmup + c->repeat && rc == MATTN_OK; x++) {
        mattn_ring_stats st;
        memset(&st, 0, sizeof st);
        /* Start together, so the slowest rank's time is the call's. */
        if (s->size > 1)
            MPI_Barrier(comm);
        double t0 = mattn__cli_now();
        rc = forward(c, s, &t->kernel, &st);
        double mine = mattn__cli_now() - t0, dt = mine;
        /* Library calls on a mesh return the same status everywhere; without
         * a mesh there is one rank. */
        if (s->size > 1)
            MPI_Allreduce(&mine, &dt, 1, MPI_DOUBLE, MPI_MAX, comm);
        int warm = x < c->warmup;
        if (!warm) {
            times[x - c->warmup] = dt;
            if (dt < t->best)
                t->best = dt, t->local = mine, t->stats = st;
        }
        if (rc == MATTN_OK && !c->quiet && s->rank == 0)
            fprintf(err, "mattn run: %s %" PRId64 "/%" PRId64 ": %.4f s\n",
                    warm ? "warm-up" : "run", warm ? x + 1 : x - c->warmup + 1,
                    warm ? c->warmup : c->repeat, dt);
    }
    if (rc == MATTN_OK) {
        qsort(times, (size_t)c->repeat, sizeof *times, mattn__cli_cmp_double);
        int64_t n = c->repeat;
        t->median = n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
    }
    free(times);
    return rc;
}

static int run_gather(const mattn__attn_config *c, run_state *s)
{
    mattn__attn_local *l = &s->l;
    int rc = MATTN_OK;
    if (l->mesh == NULL)
        return MATTN_OK;
    if (c->out || c->lse || c->check)
        rc = mattn_mesh_gather(l->mesh, &l->shape, MATTN_SHARD_Q, 0, &s->to,
                               s->rank == 0 ? &s->tgo : NULL);
    if (rc == MATTN_OK && s->lse)
        rc = mattn_mesh_gather_lse(l->mesh, &l->shape, 0, s->lse, s->glse);
    return rc;
}

/* ------------------------------------------------------------------ check */

typedef struct progress_ctx {
    FILE *err;
    double start, last;
    int quiet, finished;
} progress_ctx;

/* At most one line every 2 s, plus the final one. */
static void check_progress(void *vctx, int64_t done, int64_t total)
{
    progress_ctx *pc = vctx;
    double t = mattn__cli_now();
    if (pc->quiet || pc->finished || (done < total && t - pc->last < 2.0))
        return;
    pc->last = t;
    pc->finished = done == total;
    fprintf(pc->err, "mattn run: check: %" PRId64 "/%" PRId64 " rows (%.0f%%), %.1f s\n", done,
            total, total ? 100.0 * (double)done / (double)total : 100.0, t - pc->start);
}

/* Rank 0: the global result against the reference of the global problem. */
static int run_check(const mattn__attn_config *c, run_state *s, mattn__ref_report *r)
{
    mattn__attn_problem *p = &s->p;
    int rc;
    if (p->q.data == NULL && (rc = mattn__attn_materialise(c, p)))
        return rc;
    int mesh = s->l.mesh != NULL;
    const mattn_tensor *o = mesh ? &s->tgo : &s->to;
    mattn__ref_problem rp = {&p->tq, &p->tk, &p->tv, o, mesh ? s->glse : s->lse, s->weights,
                             &p->opts};
    progress_ctx pc = {mattn__cli_err(), mattn__cli_now(), mattn__cli_now(), c->quiet, 0};
    return mattn__ref_check(&rp, c->check_rows, mattn__resolve_threads((int)c->threads),
                            check_progress, &pc, r);
}

/* ------------------------------------------------------------------ report */

/* Per rank: time in the best call, flop of its shard, time blocked in MPI. */
typedef struct rank_line {
    double time, flop, wait, q_rows;
} rank_line;

static void run_print(const mattn__attn_config *c, const run_state *s, const run_timing *t,
                      const rank_line *lines, const mattn__ref_report *r)
{
    const mattn__attn_problem *p = &s->p;
    FILE *out = mattn__cli_out();
    int64_t pairs = mattn__ref_structural_pairs(&p->opts, p->T, p->S);
    double all_pairs = (double)pairs * (double)p->B * (double)p->Hq;
    /* q.k costs 2D flops per pair and p.v 2Dv (4D when Dv = D, the usual count). */
    double fpp = 2.0 * (double)(p->D + p->Dv), flop = fpp * all_pairs;
    double scale = c->scale != 0.0 ? (double)(float)c->scale
                                   : (double)(float)(1.0 / sqrt((double)p->D));
    fprintf(out, "op: %s\n", mattn__op_names[c->op]);
    fprintf(out, "kernel: %s\n", mattn_kernel_name(t->kernel));
    fprintf(out, "inputs: %s\n", c->synthetic ? "synthetic" : "files");
    fprintf(out, "layout: %s\n", c->layout == MATTN__LAYOUT_BTHD ? "bthd" : "bhtd");
    fprintf(out, "batch: %" PRId64 "\nseq: %" PRId64 "\nkv_seq: %" PRId64 "\n", p->B, p->T, p->S);
    fprintf(out, "heads: %" PRId64 "\nkv_heads: %" PRId64 "\n", p->Hq, p->Hkv);
    fprintf(out, "dim: %" PRId64 "\ndv: %" PRId64 "\n", p->D, p->Dv);
    fprintf(out, "scale: %.9g\n", scale);
    fprintf(out, "threads: %d\n", mattn__resolve_threads((int)c->threads));
    fprintf(out, "ranks: %d\n", s->size);
    if (s->l.mesh) {
        fprintf(out, "mesh: %d,%d,%d\n", s->l.dims[0], s->l.dims[1], s->l.dims[2]);
        fprintf(out, "seq_layout: %s\n", mattn_seq_layout_name((mattn_seq_layout)c->seq_layout));
        if (c->op == MATTN__OP_RING)
            fprintf(out, "comm: %s\n", mattn_ring_comm_name((mattn_ring_comm)c->comm));
    }
    fprintf(out, "allowed_pairs: %.0f\n", all_pairs);
    fprintf(out, "flop: %.0f\n", flop);
    fprintf(out, "warmup: %" PRId64 "\nrepeat: %" PRId64 "\n", c->warmup, c->repeat);
    fprintf(out, "time_best_s: %.6f\ntime_median_s: %.6f\n", t->best, t->median);
    fprintf(out, "gflops_best: %.3f\n", t->best > 0 ? flop / t->best * 1e-9 : 0.0);
    fprintf(out, "gflops_median: %.3f\n", t->median > 0 ? flop / t->median * 1e-9 : 0.0);
    if (lines) {
        double wait = 0.0;
        for (int x = 0; x < s->size; x++) {
            const rank_line *ln = &lines[x];
            fprintf(out, "rank_%d: q_rows=%.0f gflop=%.3f time_s=%.6f gflops=%.3f wait_s=%.6f\n",
                    x, ln->q_rows, ln->flop * 1e-9, ln->time,
                    ln->time > 0 ? ln->flop / ln->time * 1e-9 : 0.0, ln->wait);
            wait = ln->wait > wait ? ln->wait : wait;
        }
        if (c->op == MATTN__OP_RING)
            fprintf(out, "comm_wait_s: %.6f\n", wait);
    }
    if (r) {
        fprintf(out, "check_rows: %" PRId64 "\n", r->rows);
        fprintf(out, "max_abs_err_o: %.9g\n", r->max_err_o);
        fprintf(out, "max_abs_err_lse: %.9g\n", r->max_err_lse);
        if (s->weights)
            fprintf(out, "max_abs_err_weights: %.9g\n", r->max_err_weights);
        fprintf(out, "max_err_over_bound: %.9g\n", r->max_ratio);
        fprintf(out, "check: %s\n", r->max_ratio <= 1.0 ? "pass" : "fail");
    }
}

/* Rank 0: every output to its temporary file, then all renamed; if a rename
 * fails, the ones already renamed are removed again. */
static int run_write(const mattn__attn_config *c, run_state *s)
{
    const mattn__attn_problem *p = &s->p;
    int rc = MATTN_OK, mesh = s->l.mesh != NULL;
    int bthd = c->layout == MATTN__LAYOUT_BTHD;
    int64_t o_shape[4] = {p->B, bthd ? p->T : p->Hq, bthd ? p->Hq : p->T, p->Dv};
    int64_t lse_shape[3] = {p->B, p->Hq, p->T};
    int64_t w_shape[4] = {p->B, p->Hq, p->T, p->S};
    if (s->path[0])
        rc = mattn__npy_writer_put(&s->w[0], MATTN__NPY_F32, 4, o_shape, mesh ? s->go : s->o);
    if (rc == MATTN_OK && s->path[1])
        rc = mattn__npy_writer_put(&s->w[1], MATTN__NPY_F32, 3, lse_shape,
                                   mesh ? s->glse : s->lse);
    if (rc == MATTN_OK && s->path[2])
        rc = mattn__npy_writer_put(&s->w[2], MATTN__NPY_F32, 4, w_shape, s->weights);
    for (int x = 0; rc == MATTN_OK && x < 3; x++)
        if (s->path[x] && (rc = mattn__npy_writer_commit(&s->w[x])))
            for (int y = 0; y < x; y++)
                if (s->path[y])
                    unlink(s->path[y]);
    return rc;
}

/* ------------------------------------------------------------------ command */

static int run_job(MPI_Comm comm, const mattn__attn_config *c)
{
    run_state s;
    run_timing t;
    mattn__ref_report r;
    rank_line *lines = NULL;
    int code = MATTN__CLI_EXIT_OK, rc;
    memset(&s, 0, sizeof s);
    memset(&t, 0, sizeof t);
    for (int x = 0; x < 3; x++)
        s.w[x].fd = -1;
    MPI_Comm_rank(comm, &s.rank);
    MPI_Comm_size(comm, &s.size);

    rc = mattn__attn_load(comm, c, &s.p);
    if (rc == MATTN_OK)
        rc = mattn__attn_place(comm, c, &s.p, &s.l);
    if (rc == MATTN_OK) {
        rc = run_open(c, &s);
        if (rc == MATTN_OK && s.l.mesh == NULL && c->op == MATTN__OP_SPLASH)
            rc = splash_prepare(&s);
        rc = mattn__attn_agree(comm, rc);
    }
    if (rc == MATTN_OK)
        rc = run_compute(comm, c, &s, &t);
    if (rc == MATTN_OK)
        rc = mattn__attn_agree(comm, run_gather(c, &s));
    if (rc == MATTN_OK && s.l.mesh) { /* the per-rank report lines */
        rank_line mine = {t.local, 2.0 * (double)(s.p.D + s.p.Dv) *
                                       mattn__attn_local_pairs(&s.p, &s.l),
                          t.stats.seconds_wait, (double)s.l.shard.q_len};
        lines = s.rank == 0 ? malloc(sizeof *lines * (size_t)s.size) : NULL;
        rc = mattn__attn_agree(comm, s.rank == 0 && lines == NULL
                                         ? mattn__fail(MATTN_ERR_NOMEM, "out of memory")
                                         : MATTN_OK);
        if (rc == MATTN_OK &&
            MPI_Gather(&mine, 4, MPI_DOUBLE, lines, 4, MPI_DOUBLE, 0, comm) != MPI_SUCCESS)
            rc = mattn__fail(MATTN_ERR_MPI, "MPI_Gather of the per-rank report failed");
    }
    /* The check runs on rank 0 alone and may be long: the others wait
     * without spinning (mattn__cli_root_code) so rank 0 keeps its core. */
    if (rc == MATTN_OK && c->check)
        rc = mattn__cli_root_code(comm, s.rank == 0 ? run_check(c, &s, &r) : MATTN_OK);
    if (rc != MATTN_OK) {
        code = s.rank == 0 ? mattn__cli_report("run", rc) : MATTN__CLI_EXIT_RUNTIME;
        goto done;
    }

    /* From here on only rank 0 works; the others wait for its verdict. */
    if (s.rank == 0) {
        run_print(c, &s, &t, lines, c->check ? &r : NULL);
        if (c->check && !(r.max_ratio <= 1.0)) {
            int64_t row = r.worst_row, T = s.p.T, Hq = s.p.Hq;
            fprintf(mattn__cli_err(), "mattn run: check failed: an error is %.3g times its "
                    "fp32 bound (worst at b=%" PRId64 ", h=%" PRId64 ", t=%" PRId64 "); no "
                    "output written\n", r.max_ratio, row / (Hq * T), row / T % Hq, row % T);
            code = MATTN__CLI_EXIT_RUNTIME;
        } else if ((rc = run_write(c, &s))) {
            code = mattn__cli_report("run", rc);
        } else {
            for (int x = 0; x < 3; x++)
                if (s.path[x])
                    fprintf(mattn__cli_out(), "%s: %s\n",
                            x == 0 ? "out" : x == 1 ? "lse" : "weights", s.path[x]);
        }
        fflush(mattn__cli_out());
        fflush(mattn__cli_err());
    }
    code = mattn__cli_root_code(comm, code);

done:
    free(lines);
    state_free(&s);
    return code;
}

int mattn__cli_run(MPI_Comm comm, int argc, char **argv)
{
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    mattn__attn_config c;
    int code = run_parse(&c, argc, argv, size, rank == 0 ? mattn__cli_err() : NULL);
    code = mattn__cli_agree_parse(comm, code, print_help);
    if (code != MATTN__CLI_EXIT_OK)
        return code == MATTN__CLI_HELP ? MATTN__CLI_EXIT_OK : code;
    code = run_job(comm, &c);
    fflush(mattn__cli_out());
    fflush(mattn__cli_err());
    return code;
}
