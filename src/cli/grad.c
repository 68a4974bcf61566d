/* `mattn grad`: the backward pass of vanilla, sdpa, flash, splash or ring on
 * .npy files or a synthetic problem, on one rank or over a mesh: dq, dk, dv
 * (and dsinks, dbias) of L = sum(do * o), with timing and a float64 check.
 *
 * The forward's o and lse come from --o/--lse or from a forward call made
 * first. Steps as `mattn run` (cli/attn.h): load, place (q, k, v, do, o,
 * lse scattered or generated), forward if needed, timed backward calls,
 * gather dq/dk/dv to rank 0, check, write. dsinks/dbias are global: every
 * rank holds the whole (summed) gradient. */
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

static const mattn__opt OPTS[] = {
    MATTN__A_SECTION("operator and files"),
    MATTN__A_CHOICE("op", op, MATTN__OP_WORDS,
                    "operator whose backward runs (default sdpa: the kernel sdpa's forward "
                    "would pick); ring shards the sequence over the ranks"),
    MATTN__ATTN_INPUT_OPTS,
    MATTN__A_FILE("do", dout, "the loss gradient with respect to o, shaped like o: [B,T,Hq,Dv] "
                              "or [B,Hq,T,Dv] (needed with --q/--k/--v; synthetic otherwise)"),
    MATTN__A_FILE("o", o, "the forward's output o (with --lse; default: the forward is run "
                          "first)"),
    MATTN__A_FILE("lse", lse, "the forward's log-sum-exp [B,Hq,T] (with --o)"),
    MATTN__A_FILE("dq", dq, "write dq, float32, shaped like q (default: not written)"),
    MATTN__A_FILE("dk", dk, "write dk, float32, shaped like k, summed over each group's q heads "
                            "(default: not written)"),
    MATTN__A_FILE("dv", dv_out, "write dv, float32, shaped like v (default: not written)"),
    MATTN__A_FILE("dsinks", dsinks, "write dsinks [Hq], float32; needs --sinks"),
    MATTN__A_FILE("dbias", dbias, "write dbias, float32, the --bias file's broadcast shape "
                                  "[B|1,Hq|1,T,S]; needs --bias"),
    MATTN__ATTN_MASK_OPTS,
    MATTN__ATTN_LOGIT_OPTS,
    MATTN__ATTN_EXEC_OPTS,
    MATTN__ATTN_SYNTH_OPTS,
    MATTN__A_SECTION("checking"),
    MATTN__A_FLAG("check", check, "compare dq, dk, dv (and dsinks) with the command's own "
                                  "float64 reference gradient; exit 1 if an error exceeds its "
                                  "fp32 bound"),
    MATTN__A_INT("check-rows", check_rows, "N", 0, (int64_t)1 << 62,
                 "with --check: compare N evenly spaced dq rows and N dk/dv rows only "
                 "(default 0: all)"),
};
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

static void print_help(FILE *out)
{
    fprintf(out,
            "usage: mattn grad [--op vanilla|sdpa|flash|splash|ring] [--q Q.npy --k K.npy --v V.npy\n"
            "                  --do DO.npy] [--o O.npy --lse LSE.npy] [--dq DQ.npy] [--dk DK.npy]\n"
            "                  [--dv DV.npy] [--dsinks DS.npy] [--dbias DB.npy] [options]\n"
            "\n"
            "The backward pass: the gradients of L = sum(do * o) with respect to q, k, v (and\n"
            "the sinks and the bias), for the forward problem the options describe (the same\n"
            "options as 'mattn run'; SPEC 4-5, docs/backward.md). o and lse come from --o/--lse\n"
            "or from a forward call made first (not timed). Under mpirun the ranks form a mesh\n"
            "as for 'mattn run'; rank 0 scatters the inputs and gathers the gradients, so the\n"
            "files are those of a single-rank run, equal to fp32 rounding.\n"
            "\n"
            "stdout gets 'key: value' lines: op, kernel, shapes, ranks, mesh, flop (2.5 x the\n"
            "forward's), time_best_s, time_median_s, gflops_best, gflops_median, and with\n"
            "--check max_abs_err_dq, max_abs_err_dk, max_abs_err_dv, max_err_over_bound, check.\n");
    mattn__opts_help(out, OPTS, N_OPTS);
    fprintf(out,
            "\n"
            "examples:\n"
            "  mattn grad --op flash --q q.npy --k k.npy --v v.npy --do do.npy --causal \\\n"
            "             --dq dq.npy --dk dk.npy --dv dv.npy\n"
            "  mpirun -np 2 mattn grad --op ring --seq-layout zigzag --causal --seq 2048 --check "
            "--check-rows 64\n");
}

static int grad_parse(mattn__attn_config *c, int argc, char **argv, int size, FILE *err)
{
    mattn__attn_config_init(c);
    unsigned char given[N_OPTS];
    int code = mattn__opts_parse("grad", OPTS, N_OPTS, argc, argv, 1, c, given, err);
    if (code == MATTN__CLI_EXIT_OK)
        code = mattn__attn_validate("grad", c, OPTS, N_OPTS, given, size, err);
    if (code != MATTN__CLI_EXIT_OK)
        return code;
    const char *why = NULL;
    if ((c->o != NULL) != (c->lse != NULL))
        why = "--o and --lse go together (or give neither to run the forward first)";
    else if (!c->synthetic && c->dout == NULL)
        why = "--do is needed with --q/--k/--v";
    else if (c->synthetic && (c->dout || c->o))
        why = "--do, --o and --lse go with --q/--k/--v files (a synthetic problem makes its own)";
    else if (c->dsinks && c->sinks == NULL)
        why = "--dsinks needs --sinks";
    else if (c->dbias && c->bias == NULL)
        why = "--dbias needs --bias";
    const char *outs[] = {c->dq, c->dk, c->dv_out, c->dsinks, c->dbias};
    for (int a = 0; why == NULL && a < 5; a++)
        for (int b = a + 1; why == NULL && b < 5; b++)
            if (outs[a] && outs[b] && strcmp(outs[a], outs[b]) == 0)
                why = "the same file is given for two outputs";
    if (why && err)
        fprintf(err, "mattn grad: %s\n(see 'mattn grad --help')\n", why);
    return why ? MATTN__CLI_EXIT_USAGE : MATTN__CLI_EXIT_OK;
}

/* ------------------------------------------------------------------ state */

enum { G_DQ, G_DK, G_DV, G_DSINKS, G_DBIAS, G_N };

typedef struct grad_state {
    int rank, size;
    mattn__attn_problem p;
    mattn__attn_local l;
    mattn__npy_array gdo, go, glse; /* rank 0: inputs from files (or synthetic do for --check) */
    /* this rank's tensors (global ones without a mesh) */
    float *o, *lse, *dout, *dq, *dk, *dv, *dsinks, *dbias;
    mattn_tensor to, tdo, tdq, tdk, tdv;
    /* rank 0 under a mesh: gathered gradients */
    float *gdq, *gdk, *gdv;
    mattn_tensor tgdq, tgdk, tgdv;
    mattn_splash_mask *mask; /* single-rank splash */
    mattn_options splash_opts;
    mattn__npy_writer w[G_N];
    const char *path[G_N];
} grad_state;

static void state_free(grad_state *s)
{
    for (int x = 0; x < G_N; x++)
        mattn__npy_writer_abort(&s->w[x]);
    mattn_splash_mask_free(s->mask);
    /* Without a mesh o, lse and do may alias the arrays read from files. */
    if (s->o != s->go.data)
        free(s->o);
    if (s->lse != s->glse.data)
        free(s->lse);
    if (s->dout != s->gdo.data)
        free(s->dout);
    mattn__npy_free(&s->gdo);
    mattn__npy_free(&s->go);
    mattn__npy_free(&s->glse);
    float *bufs[] = {s->dq, s->dk, s->dv, s->dsinks, s->dbias, s->gdq, s->gdk, s->gdv};
    for (size_t x = 0; x < sizeof bufs / sizeof *bufs; x++)
        free(bufs[x]);
    mattn__attn_local_free(&s->l);
    mattn__attn_problem_free(&s->p);
}

/* Rank 0: the synthetic do of the global problem, in the file layout. */
static int synth_do(const mattn__attn_config *c, const mattn__attn_problem *p,
                    mattn__npy_array *gdo)
{
    float *d;
    int rc = mattn__attn_alloc_floats(&d, "do", 4, (const int64_t[]){p->B, p->T, p->Hq, p->Dv});
    if (rc)
        return rc;
    int64_t n = p->B * p->T * p->Hq * p->Dv; /* allocated, so it fits */
    for (int64_t i = 0; i < n; i++)
        d[i] = mattn__attn_synth(c, 4, i);
    gdo->data = d, gdo->count = n;
    return MATTN_OK;
}

/* Rank 0: do, o, lse from their files (checked against the problem). */
static int load_grad_inputs(const mattn__attn_config *c, grad_state *s)
{
    const mattn__attn_problem *p = &s->p;
    char shp[160];
    int rc;
    if ((rc = mattn__attn_load_like(c, c->dout, "do", p->B, p->T, p->Hq, p->Dv, &s->gdo)) ||
        (rc = mattn__attn_load_like(c, c->o, "o", p->B, p->T, p->Hq, p->Dv, &s->go)))
        return rc;
    if (c->lse) {
        if ((rc = mattn__npy_read(c->lse, &s->glse)))
            return rc;
        if (s->glse.dtype != MATTN__NPY_F32 || s->glse.ndim != 3 || s->glse.shape[0] != p->B ||
            s->glse.shape[1] != p->Hq || s->glse.shape[2] != p->T)
            return mattn__fail(MATTN_ERR_SHAPE, "%s: lse has dtype '%s' and shape %s but must be "
                               "float32/float64 [B, Hq, T] = [%" PRId64 ", %" PRId64 ", %" PRId64
                               "]", c->lse, s->glse.descr,
                               mattn__npy_shape_str(s->glse.shape, s->glse.ndim, shp, sizeof shp),
                               p->B, p->Hq, p->T);
    }
    if (c->synthetic && s->l.mesh == NULL) /* single rank: do made globally */
        return synth_do(c, p, &s->gdo);
    return MATTN_OK;
}

/* Buffers of this rank (and rank 0's gathered gradients), output files. */
static int grad_open(const mattn__attn_config *c, grad_state *s)
{
    const mattn__attn_problem *p = &s->p;
    mattn__attn_local *l = &s->l;
    int rc;
    int64_t B = p->B, T = p->T, S = p->S, Hq = p->Hq, Hkv = p->Hkv, D = p->D, Dv = p->Dv;
    const int64_t dq_dims[4] = {B, T, Hq, D}, dk_dims[4] = {B, S, Hkv, D},
                  dv_dims[4] = {B, S, Hkv, Dv};
    if (l->mesh == NULL) {
        s->dout = s->gdo.data;
        s->tdo = mattn__attn_view(c, s->dout, B, T, Hq, Dv);
        s->o = s->go.data;
        s->lse = s->glse.data;
        if ((!s->o &&
             (rc = mattn__attn_alloc_floats(&s->o, "o", 4, (const int64_t[]){B, T, Hq, Dv}))) ||
            (!s->lse &&
             (rc = mattn__attn_alloc_floats(&s->lse, "lse", 3, (const int64_t[]){B, Hq, T}))) ||
            (rc = mattn__attn_alloc_floats(&s->dq, "dq", 4, dq_dims)) ||
            (rc = mattn__attn_alloc_floats(&s->dk, "dk", 4, dk_dims)) ||
            (rc = mattn__attn_alloc_floats(&s->dv, "dv", 4, dv_dims)))
            return rc;
        s->to = mattn__attn_view(c, s->o, B, T, Hq, Dv);
        s->tdq = mattn__attn_view(c, s->dq, B, T, Hq, D);
        s->tdk = mattn__attn_view(c, s->dk, B, S, Hkv, D);
        s->tdv = mattn__attn_view(c, s->dv, B, S, Hkv, Dv);
    } else {
        const mattn_shard *sh = &l->shard;
        const int64_t local_lse[3] = {sh->batch_count, sh->q_head_count, sh->q_len};
        if ((rc = mattn__attn_alloc_local(l, MATTN_SHARD_Q, Dv, "the local o", &s->o, &s->to)) ||
            (rc = mattn__attn_alloc_local(l, MATTN_SHARD_Q, Dv, "the local do", &s->dout,
                                          &s->tdo)) ||
            (rc = mattn__attn_alloc_floats(&s->lse, "the local lse", 3, local_lse)) ||
            (rc = mattn__attn_alloc_local(l, MATTN_SHARD_Q, D, "the local dq", &s->dq, &s->tdq)) ||
            (rc = mattn__attn_alloc_local(l, MATTN_SHARD_KV, D, "the local dk", &s->dk, &s->tdk)) ||
            (rc = mattn__attn_alloc_local(l, MATTN_SHARD_KV, Dv, "the local dv", &s->dv, &s->tdv)))
            return rc;
        if (s->rank == 0 && (c->dq || c->dk || c->dv_out || c->check)) {
            if ((rc = mattn__attn_alloc_floats(&s->gdq, "the gathered dq", 4, dq_dims)) ||
                (rc = mattn__attn_alloc_floats(&s->gdk, "the gathered dk", 4, dk_dims)) ||
                (rc = mattn__attn_alloc_floats(&s->gdv, "the gathered dv", 4, dv_dims)))
                return rc;
            s->tgdq = mattn__attn_view(c, s->gdq, B, T, Hq, D);
            s->tgdk = mattn__attn_view(c, s->gdk, B, S, Hkv, D);
            s->tgdv = mattn__attn_view(c, s->gdv, B, S, Hkv, Dv);
        }
    }
    if ((c->dsinks || (c->check && c->sinks)) &&
        (rc = mattn__attn_alloc_floats(&s->dsinks, "dsinks", 1, &Hq)))
        return rc;
    if (c->dbias && (rc = mattn__attn_alloc_floats(&s->dbias, "dbias", 4,
                                                   (const int64_t[]){p->bias_b, p->bias_h, T, S})))
        return rc;
    s->path[G_DQ] = c->dq, s->path[G_DK] = c->dk, s->path[G_DV] = c->dv_out;
    s->path[G_DSINKS] = c->dsinks, s->path[G_DBIAS] = c->dbias;
    for (int x = 0; s->rank == 0 && x < G_N; x++)
        if (s->path[x] && (rc = mattn__npy_writer_open(&s->w[x], s->path[x])))
            return rc;
    return MATTN_OK;
}

/* Under a mesh: do, o and lse to the shards. */
static int grad_place(const mattn__attn_config *c, grad_state *s)
{
    mattn__attn_local *l = &s->l;
    int rc;
    const mattn_tensor gdo = mattn__attn_view(c, s->gdo.data, s->p.B, s->p.T, s->p.Hq, s->p.Dv);
    const mattn_tensor go = mattn__attn_view(c, s->go.data, s->p.B, s->p.T, s->p.Hq, s->p.Dv);
    int root = s->rank == 0;
    if ((rc = mattn__attn_distribute(c, l, MATTN_SHARD_Q, root && s->gdo.data ? &gdo : NULL, 4,
                                     &s->tdo)))
        return rc;
    if (c->o && ((rc = mattn_mesh_scatter(l->mesh, &l->shape, MATTN_SHARD_Q, 0,
                                          root ? &go : NULL, &s->to)) ||
                 (rc = mattn_mesh_scatter_lse(l->mesh, &l->shape, 0, s->glse.data, s->lse))))
        return rc;
    return MATTN_OK;
}

static int forward(const mattn__attn_config *c, grad_state *s)
{
    mattn__attn_local *l = &s->l;
    if (l->mesh) {
        mattn_ring_options ro = mattn_ring_options_default();
        ro.comm = (mattn_ring_comm)c->comm;
        return mattn_mesh_forward(l->mesh, &l->shape, mattn__op_mesh[c->op], &l->tq, &l->tk, &l->tv,
                                  &s->to, s->lse, &l->opts, &ro, NULL);
    }
    switch (c->op) {
    case MATTN__OP_VANILLA:
        return mattn_vanilla_forward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, NULL, &l->opts);
    case MATTN__OP_FLASH:
        return mattn_flash_forward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, &l->opts);
    case MATTN__OP_SPLASH:
        return mattn_splash_forward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, s->mask,
                                    &s->splash_opts);
    default:
        return mattn_sdpa_forward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, &l->opts, NULL);
    }
}

static int backward(const mattn__attn_config *c, grad_state *s, mattn_kernel *kernel)
{
    mattn__attn_local *l = &s->l;
    if (l->mesh) {
        mattn_ring_options ro = mattn_ring_options_default();
        ro.comm = (mattn_ring_comm)c->comm;
        *kernel = c->op == MATTN__OP_VANILLA  ? MATTN_KERNEL_VANILLA
                  : c->op == MATTN__OP_SPLASH ? MATTN_KERNEL_SPLASH
                                              : MATTN_KERNEL_FLASH;
        return mattn_mesh_backward(l->mesh, &l->shape, mattn__op_mesh[c->op], &l->tq, &l->tk, &l->tv,
                                   &s->to, s->lse, &s->tdo, &s->tdq, &s->tdk, &s->tdv, s->dsinks,
                                   s->dbias, &l->opts, &ro);
    }
    switch (c->op) {
    case MATTN__OP_VANILLA:
        *kernel = MATTN_KERNEL_VANILLA;
        return mattn_vanilla_backward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, &s->tdo, &s->tdq,
                                      &s->tdk, &s->tdv, s->dsinks, s->dbias, &l->opts);
    case MATTN__OP_FLASH:
        *kernel = MATTN_KERNEL_FLASH;
        return mattn_flash_backward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, &s->tdo, &s->tdq,
                                    &s->tdk, &s->tdv, s->dsinks, s->dbias, &l->opts);
    case MATTN__OP_SPLASH:
        *kernel = MATTN_KERNEL_SPLASH;
        return mattn_splash_backward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, &s->tdo, &s->tdq,
                                     &s->tdk, &s->tdv, s->dsinks, s->dbias, s->mask,
                                     &s->splash_opts);
    default:
        return mattn_sdpa_backward(&l->tq, &l->tk, &l->tv, &s->to, s->lse, &s->tdo, &s->tdq,
                                   &s->tdk, &s->tdv, s->dsinks, s->dbias, &l->opts, kernel);
    }
}

/* Timed backward calls; times are the slowest rank's. */
static int grad_compute(MPI_Comm comm, const mattn__attn_config *c, grad_state *s,
                        mattn_kernel *kernel, double *best, double *median)
{
    double *times = malloc(sizeof(double) * (size_t)c->repeat);
    int rc = mattn__attn_agree(comm, times ? MATTN_OK
                                           : mattn__fail(MATTN_ERR_NOMEM, "out of memory"));
    *best = INFINITY;
    for (int64_t x = 0; x < c->warmup + c->repeat && rc == MATTN_OK; x++) {
        if (s->size > 1)
            MPI_Barrier(comm);
        double t0 = mattn__cli_now();
        rc = backward(c, s, kernel);
        double mine = mattn__cli_now() - t0, dt = mine;
        if (s->size > 1)
            MPI_Allreduce(&mine, &dt, 1, MPI_DOUBLE, MPI_MAX, comm);
        int warm = x < c->warmup;
        if (!warm) {
            times[x - c->warmup] = dt;
            *best = dt < *best ? dt : *best;
        }
        if (rc == MATTN_OK && !c->quiet && s->rank == 0)
            fprintf(mattn__cli_err(), "mattn grad: %s %" PRId64 "/%" PRId64 ": %.4f s\n",
                    warm ? "warm-up" : "run", warm ? x + 1 : x - c->warmup + 1,
                    warm ? c->warmup : c->repeat, dt);
    }
    if (rc == MATTN_OK) {
        qsort(times, (size_t)c->repeat, sizeof *times, mattn__cli_cmp_double);
        int64_t n = c->repeat;
        *median = n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
    }
    free(times);
    return rc;
}

static int grad_gather(MPI_Comm comm, grad_state *s)
{
    mattn__attn_local *l = &s->l;
    int root = s->rank == 0, rc = MATTN_OK, any = s->gdq != NULL;
    /* Whether rank 0 gathers is its decision: tell everyone. */
    if (s->size > 1 && MPI_Bcast(&any, 1, MPI_INT, 0, comm) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "MPI_Bcast failed");
    if (l->mesh == NULL || !any)
        return MATTN_OK;
    if ((rc = mattn_mesh_gather(l->mesh, &l->shape, MATTN_SHARD_Q, 0, &s->tdq,
                                root ? &s->tgdq : NULL)) ||
        (rc = mattn_mesh_gather(l->mesh, &l->shape, MATTN_SHARD_KV, 0, &s->tdk,
                                root ? &s->tgdk : NULL)) ||
        (rc = mattn_mesh_gather(l->mesh, &l->shape, MATTN_SHARD_KV, 0, &s->tdv,
                                root ? &s->tgdv : NULL)))
        return rc;
    return MATTN_OK;
}

/* Rank 0: every gradient against the float64 reference of the global problem. */
static int grad_check(const mattn__attn_config *c, grad_state *s, mattn__ref_grad_report *r)
{
    mattn__attn_problem *p = &s->p;
    int rc, mesh = s->l.mesh != NULL;
    if (p->q.data == NULL && (rc = mattn__attn_materialise(c, p)))
        return rc;
    if (s->gdo.data == NULL && (rc = synth_do(c, p, &s->gdo))) /* synthetic do under a mesh */
        return rc;
    mattn_tensor tdo = mattn__attn_view(c, s->gdo.data, p->B, p->T, p->Hq, p->Dv);
    mattn__ref_grad_problem g = {&p->tq, &p->tk, &p->tv, &tdo,
                                 mesh ? &s->tgdq : &s->tdq, mesh ? &s->tgdk : &s->tdk,
                                 mesh ? &s->tgdv : &s->tdv, s->dsinks, &p->opts};
    return mattn__ref_grad_check(&g, c->check_rows, mattn__resolve_threads((int)c->threads), r);
}

/* Rank 0: all outputs written, then renamed together. */
static int grad_write(const mattn__attn_config *c, grad_state *s)
{
    const mattn__attn_problem *p = &s->p;
    int bthd = c->layout == MATTN__LAYOUT_BTHD, mesh = s->l.mesh != NULL, rc = MATTN_OK;
    int64_t qs[4] = {p->B, bthd ? p->T : p->Hq, bthd ? p->Hq : p->T, p->D};
    int64_t ks[4] = {p->B, bthd ? p->S : p->Hkv, bthd ? p->Hkv : p->S, p->D};
    int64_t vs[4] = {p->B, ks[1], ks[2], p->Dv};
    int64_t ss[1] = {p->Hq}, bs[4] = {p->bias_b, p->bias_h, p->T, p->S};
    struct {
        int ndim;
        const int64_t *shape;
        const float *data;
    } o[G_N] = {{4, qs, mesh ? s->gdq : s->dq}, {4, ks, mesh ? s->gdk : s->dk},
                {4, vs, mesh ? s->gdv : s->dv}, {1, ss, s->dsinks}, {4, bs, s->dbias}};
    for (int x = 0; rc == MATTN_OK && x < G_N; x++)
        if (s->path[x])
            rc = mattn__npy_writer_put(&s->w[x], MATTN__NPY_F32, o[x].ndim, o[x].shape, o[x].data);
    for (int x = 0; rc == MATTN_OK && x < G_N; x++)
        if (s->path[x] && (rc = mattn__npy_writer_commit(&s->w[x])))
            for (int y = 0; y < x; y++)
                if (s->path[y])
                    unlink(s->path[y]);
    return rc;
}

static void grad_print(const mattn__attn_config *c, const grad_state *s, mattn_kernel kernel,
                       double best, double median, const mattn__ref_grad_report *r)
{
    const mattn__attn_problem *p = &s->p;
    FILE *out = mattn__cli_out();
    double pairs = (double)mattn__ref_structural_pairs(&p->opts, p->T, p->S) * (double)p->B *
                   (double)p->Hq;
    /* The usual count: backward = 2.5 x the forward's 2*(D+Dv) per pair. */
    double flop = 2.5 * 2.0 * (double)(p->D + p->Dv) * pairs;
    fprintf(out, "op: %s\nkernel: %s\n", mattn__op_names[c->op], mattn_kernel_name(kernel));
    fprintf(out, "inputs: %s\nlayout: %s\n", c->synthetic ? "synthetic" : "files",
            c->layout == MATTN__LAYOUT_BTHD ? "bthd" : "bhtd");
    fprintf(out, "forward: %s\n", c->o ? "files" : "computed");
    fprintf(out, "batch: %" PRId64 "\nseq: %" PRId64 "\nkv_seq: %" PRId64 "\n", p->B, p->T, p->S);
    fprintf(out, "heads: %" PRId64 "\nkv_heads: %" PRId64 "\n", p->Hq, p->Hkv);
    fprintf(out, "dim: %" PRId64 "\ndv: %" PRId64 "\n", p->D, p->Dv);
    fprintf(out, "threads: %d\nranks: %d\n", mattn__resolve_threads((int)c->threads), s->size);
    if (s->l.mesh) {
        fprintf(out, "mesh: %d,%d,%d\n", s->l.dims[0], s->l.dims[1], s->l.dims[2]);
        fprintf(out, "seq_layout: %s\n", mattn_seq_layout_name((mattn_seq_layout)c->seq_layout));
    }
    fprintf(out, "allowed_pairs: %.0f\nflop: %.0f\n", pairs, flop);
    fprintf(out, "warmup: %" PRId64 "\nrepeat: %" PRId64 "\n", c->warmup, c->repeat);
    fprintf(out, "time_best_s: %.6f\ntime_median_s: %.6f\n", best, median);
    fprintf(out, "gflops_best: %.3f\n", best > 0 ? flop / best * 1e-9 : 0.0);
    fprintf(out, "gflops_median: %.3f\n", median > 0 ? flop / median * 1e-9 : 0.0);
    if (r) {
        fprintf(out, "check_rows: %" PRId64 "\ncheck_kv_rows: %" PRId64 "\n", r->rows, r->kv_rows);
        fprintf(out, "max_abs_err_dq: %.9g\nmax_abs_err_dk: %.9g\nmax_abs_err_dv: %.9g\n",
                r->max_err_dq, r->max_err_dk, r->max_err_dv);
        if (s->dsinks)
            fprintf(out, "max_abs_err_dsinks: %.9g\n", r->max_err_dsinks);
        fprintf(out, "max_err_over_bound: %.9g\n", r->max_ratio);
        fprintf(out, "check: %s\n", r->max_ratio <= 1.0 ? "pass" : "fail");
    }
}

static int grad_job(MPI_Comm comm, const mattn__attn_config *c)
{
    grad_state s;
    mattn__ref_grad_report r;
    mattn_kernel kernel = MATTN_KERNEL_FLASH;
    double best = 0, median = 0;
    int code = MATTN__CLI_EXIT_OK, rc;
    memset(&s, 0, sizeof s);
    for (int x = 0; x < G_N; x++)
        s.w[x].fd = -1;
    MPI_Comm_rank(comm, &s.rank);
    MPI_Comm_size(comm, &s.size);

    rc = mattn__attn_load(comm, c, &s.p);
    if (rc == MATTN_OK)
        rc = mattn__attn_place(comm, c, &s.p, &s.l);
    if (rc == MATTN_OK) {
        rc = s.rank == 0 ? load_grad_inputs(c, &s) : MATTN_OK;
        if (rc == MATTN_OK)
            rc = grad_open(c, &s);
        if (rc == MATTN_OK && s.l.mesh == NULL && c->op == MATTN__OP_SPLASH)
            rc = mattn__attn_splash_mask(&s.p, &s.p.opts, &s.splash_opts, &s.mask);
        rc = mattn__attn_agree(comm, rc);
    }
    if (rc == MATTN_OK && s.l.mesh)
        rc = mattn__attn_agree(comm, grad_place(c, &s));
    if (rc == MATTN_OK && c->o == NULL)
        rc = mattn__attn_agree(comm, forward(c, &s));
    if (rc == MATTN_OK)
        rc = grad_compute(comm, c, &s, &kernel, &best, &median);
    if (rc == MATTN_OK)
        rc = mattn__attn_agree(comm, grad_gather(comm, &s));
    if (rc == MATTN_OK && c->check)
        rc = mattn__cli_root_code(comm, s.rank == 0 ? grad_check(c, &s, &r) : MATTN_OK);
    if (rc != MATTN_OK) {
        code = s.rank == 0 ? mattn__cli_report("grad", rc) : MATTN__CLI_EXIT_RUNTIME;
        goto done;
    }
    if (s.rank == 0) {
        grad_print(c, &s, kernel, best, median, c->check ? &r : NULL);
        if (c->check && !(r.max_ratio <= 1.0)) {
            fprintf(mattn__cli_err(), "mattn grad: check failed: %s is %.3g times its fp32 "
                    "bound (at element %" PRId64 "); no output written\n", r.worst_what,
                    r.max_ratio, r.worst_index);
            code = MATTN__CLI_EXIT_RUNTIME;
        } else if ((rc = grad_write(c, &s))) {
            code = mattn__cli_report("grad", rc);
        } else {
            static const char *const names[G_N] = {"dq", "dk", "dv", "dsinks", "dbias"};
            for (int x = 0; x < G_N; x++)
                if (s.path[x])
                    fprintf(mattn__cli_out(), "%s: %s\n", names[x], s.path[x]);
        }
        fflush(mattn__cli_out());
        fflush(mattn__cli_err());
    }
    code = mattn__cli_root_code(comm, code);
done:
    state_free(&s);
    return code;
}

int mattn__cli_grad(MPI_Comm comm, int argc, char **argv)
{
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    mattn__attn_config c;
    int code = grad_parse(&c, argc, argv, size, rank == 0 ? mattn__cli_err() : NULL);
    code = mattn__cli_agree_parse(comm, code, print_help);
    if (code != MATTN__CLI_EXIT_OK)
        return code == MATTN__CLI_HELP ? MATTN__CLI_EXIT_OK : code;
    code = grad_job(comm, &c);
    fflush(mattn__cli_out());
    fflush(mattn__cli_err());
    return code;
}
