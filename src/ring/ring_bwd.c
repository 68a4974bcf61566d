/* Ring attention backward: the front door and the hop loop.
 *
 * What stays and what travels. A rank keeps its query rows with o, dO, lse
 * and D_i = rowsum(dO*O) (computed once, by the kernels' own preparation),
 * and its dQ accumulates in place. Key/value blocks travel, and their dK/dV
 * travel WITH them: the packed message is K | V | kv segment ids | dK | dV
 * (ring/wire.c), dK/dV in fp32, and every rank the block visits adds its
 * queries' contributions into the message itself (the flash backward kernel
 * in accumulate mode, dk/dv pointing into the buffer). After the last visit
 * one more hop carries dK/dV (only that section) home, complete. dbias
 * (mattn_mesh_backward's, global) never travels: each step adds its rows and
 * the visiting block's keys into the caller's zeroed array, and one
 * allreduce after the hops sums the ranks' rows.
 *
 * Schedule. Unlike the forward, where an owner sends its shard straight to
 * every rank that needs it, here a block must pass through the ranks that
 * add to it, so messages are forwarded. The visits are cyclic shifts: at
 * shift s rank r holds the block of rank r - s. The shifts worth visiting are
 *   V = {0} u {s in 1..P-1 : some rank r needs the keys of rank r - s}
 * (mattn__ring_needs, the splash classification of ring/plan.c, the same on
 * every rank). Hop i moves every block from shift V[i] to V[i+1] (V[m] = P:
 * home): a Sendrecv to r + d and from r - d with d = V[i+1] - V[i], the same
 * d on every rank, so the exchange cannot deadlock. Causal contiguous
 * visits every shift (the last rank needs every block) but computes only
 * where the rank needs the block: a skipped step still forwards the message.
 * A bounded window visits only the shifts within reach on either side and
 * jumps over the rest in one hop; if no shift but 0 is needed, nothing moves.
 * P = 1 is shift 0 and no message.
 *
 * Why no overlap. The message a rank sends at hop i carries what its compute
 * just added, so it cannot leave before that compute ends; sending K/V ahead
 * would split it into two messages per step, which the design forbids, and
 * the transfer is a few milliseconds beside seconds of compute at the sizes
 * where the ring pays (docs/distributed.md has the measurement).
 *
 * Errors: everything is checked and agreed (one allreduce) before the first
 * message; a kernel failure later stops the compute but not the hops, and a
 * final agreement gives every rank the same status. */
#include <stdlib.h>
#include <string.h>

#include "core/scratch.h"
#include "core/status.h"
#include "kernels/kernels_bwd.h"
#include "mattn.h"
#include "mesh/dist.h"
#include "mesh/partition_bwd.h"
#include "mesh/shard.h"
#include "ring/ring.h"

static int mod(int a, int p)
{
    return ((a % p) + p) % p;
}

/* Everything one call holds on this rank. */
typedef struct bwd_run {
    const mattn_dist_shape *shape;
    const mattn__problem *local;
    mattn__grad g; /* dout, dq (this rank's); delta once prepared */
    int P, r;
    mattn__runs q_mine;
    mattn__ring_plan plan;
    int plan_ready;
    mattn__bwd_prep prep; /* D_i and this rank's dsinks */
    int prep_ready;
    float *ds_local; /* [Hq_l] or NULL */
    mattn__wire wire;
    int wire_ready;
    int *shift; /* V[0..nshift], V[nshift] = P */
    int nshift;
    int64_t steps, kernel_calls;
    double seconds_compute;
} bwd_run;

/* Allocations and D_i happen here, before the agreement, so running out of
 * memory is agreed on like any bad argument. */
static int setup(bwd_run *x, const mattn_mesh *m, const mattn_dist_shape *shape,
                 const mattn__dist *d, const mattn_tensor *dout, const mattn_tensor *dq,
                 int want_dsinks, float *dbias, const mattn_options *opts,
                 const mattn_ring_options *ro)
{
    const mattn__problem *local = &d->local;
    x->shape = shape;
    x->local = local;
    x->P = m->sp;
    x->r = m->sp_rank;
    mattn__ring_runs(shape->q_len, x->P, x->r, shape->layout, &x->q_mine);
    int rc = mattn__ring_plan_init(&x->plan, local, shape, x->P);
    if (rc)
        return rc;
    x->plan_ready = 1;

    if ((x->shift = mattn__scratch_get(sizeof(int) * (size_t)(x->P + 1))) == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "ring backward: out of memory");
    x->shift[x->nshift++] = 0;
    for (int s = 1; s < x->P; s++)
        for (int r = 0; r < x->P; r++)
            if (mattn__ring_needs(&x->plan, r, mod(r - s, x->P))) {
                x->shift[x->nshift++] = s;
                break;
            }
    x->shift[x->nshift] = x->P;

    x->g = (mattn__grad){
        .dout = dout->data,
        .do_sb = dout->stride_batch, .do_st = dout->stride_seq, .do_sh = dout->stride_head,
        .dq = dq->data,
        .dq_sb = dq->stride_batch, .dq_st = dq->stride_seq, .dq_sh = dq->stride_head,
        .accumulate = 1,
    };
    if (dbias) {
        /* The caller's global [bias.batch, bias.heads, T, S] at this shard's
         * batch and heads; a broadcast dim has stride 0 (the kernels sum
         * over it). Each step adds its rows and keys (compute). */
        const mattn_bias *bi = &opts->bias;
        int64_t plane = shape->q_len * shape->kv_len;
        x->g.dbias_sb = bi->batch == 1 ? 0 : bi->heads * plane;
        x->g.dbias_sh = bi->heads == 1 ? 0 : plane;
        x->g.dbias_st = shape->kv_len;
        x->g.dbias = dbias + d->shard.batch_start * x->g.dbias_sb +
                     d->shard.q_head_start * x->g.dbias_sh;
    }
    if (want_dsinks &&
        (x->ds_local = mattn__scratch_get(sizeof(float) * (size_t)local->Hq)) == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "ring backward: out of memory");
    /* D_i for every local row, and this rank's dsinks terms (they depend on
     * the q rows only): the kernels' own preparation, run once. */
    mattn__grad g0 = x->g;
    g0.dsinks = x->ds_local;
    g0.dbias = NULL;
    g0.accumulate = 0;
    if ((rc = mattn__bwd_prepare(local, &g0, local->threads, &x->prep)))
        return rc;
    x->prep_ready = 1;
    x->g.delta = x->prep.delta;
    x->g.delta_sb = x->prep.delta_sb;
    x->g.delta_sh = x->prep.delta_sh;

    int64_t cap = mattn__shard_kv_len_max(shape, x->P);
    int moves = x->nshift > 1;
    x->wire_ready = 1;
    return mattn__wire_init(&x->wire, m->sp_comm, ro->comm, ro->skip_comm != 0, local, cap,
                            moves, moves, 1);
}

static void teardown(bwd_run *x)
{
    if (x->wire_ready)
        mattn__wire_free(&x->wire);
    if (x->prep_ready)
        mattn__bwd_finish(x->local, &x->g, &x->prep);
    if (x->plan_ready)
        mattn__ring_plan_free(&x->plan);
    mattn__scratch_put(x->shift);
    mattn__scratch_put(x->ds_local);
}

/* The held block (slot, keys of sp rank src) against this rank's queries:
 * one accumulating kernel call per live (q run, kv run) pair. */
static int compute(bwd_run *x, int slot, int src)
{
    const mattn__problem *b = x->local;
    mattn__runs kv_runs;
    mattn__ring_runs(x->shape->kv_len, x->P, src, x->shape->layout, &kv_runs);
    mattn__ring_kv kv = mattn__wire_kv(&x->wire, slot, &kv_runs);
    mattn__wire_grads d = mattn__wire_dkv(&x->wire, slot);
    for (int i = 0; i < x->q_mine.n; i++) {
        const mattn__run *qr = &x->q_mine.r[i];
        for (int j = 0; j < kv_runs.n; j++) {
            const mattn__run *kr = &kv_runs.r[j];
            if (!mattn__ring_live(&x->plan, qr->global, qr->count, kr->global, kr->count))
                continue;
            mattn__problem p = mattn__ring_narrow(b, &kv, kr, qr->local, qr->global, qr->count);
            p.o = b->o + qr->local * b->o_st; /* read for nothing: D_i is given */
            p.lse = b->lse + qr->local;
            mattn__grad g = x->g;
            g.dout = x->g.dout + qr->local * g.do_st;
            g.delta = x->g.delta + qr->local;
            g.dq = x->g.dq + qr->local * g.dq_st;
            g.dk = d.dk + kr->local * d.dk_ss;
            g.dk_sb = d.dk_sb, g.dk_ss = d.dk_ss, g.dk_sh = d.dk_sh;
            g.dv = d.dv + kr->local * d.dv_ss;
            g.dv_sb = d.dv_sb, g.dv_ss = d.dv_ss, g.dv_sh = d.dv_sh;
            if (g.dbias) /* the same rows and keys as the bias (mattn__ring_narrow) */
                g.dbias = x->g.dbias + qr->global * g.dbias_st + kr->global;
            int rc = mattn__flash_backward_kernel(&p, &g);
            if (rc)
                return rc;
            x->kernel_calls++;
        }
    }
    return MATTN_OK;
}

/* dq starts at zero: the kernels accumulate into it. */
static void zero_dq(const bwd_run *x)
{
    const mattn__problem *p = x->local;
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t t = 0; t < p->T; t++)
            for (int64_t h = 0; h < p->Hq; h++)
                memset(x->g.dq + b * x->g.dq_sb + t * x->g.dq_st + h * x->g.dq_sh, 0,
                       sizeof(float) * (size_t)p->D);
}

/* The home block's dK/dV from its slot into the caller's dk / dv. */
static void unpack(const bwd_run *x, int slot, const mattn_tensor *dk, const mattn_tensor *dv)
{
    const mattn__problem *p = x->local;
    mattn__wire_grads d = mattn__wire_dkv(&x->wire, slot);
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->Hkv; h++)
            for (int64_t j = 0; j < p->S; j++) {
                memcpy(dk->data + b * dk->stride_batch + j * dk->stride_seq +
                           h * dk->stride_head,
                       d.dk + b * d.dk_sb + h * d.dk_sh + j * d.dk_ss,
                       sizeof(float) * (size_t)p->D);
                memcpy(dv->data + b * dv->stride_batch + j * dv->stride_seq +
                           h * dv->stride_head,
                       d.dv + b * d.dv_sb + h * d.dv_sh + j * d.dv_ss,
                       sizeof(float) * (size_t)p->Dv);
            }
}

static int run_hops(bwd_run *x, const mattn_tensor *dk, const mattn_tensor *dv)
{
    int rc = MATTN_OK, slot = 0;
    double t0 = MPI_Wtime();
    zero_dq(x);
    mattn__wire_pack_grads(&x->wire, slot, x->local);
    x->seconds_compute += MPI_Wtime() - t0;
    for (int i = 0; i < x->nshift; i++) {
        int s = x->shift[i], src = mod(x->r - s, x->P);
        if (rc == MATTN_OK && mattn__ring_needs(&x->plan, x->r, src)) {
            t0 = MPI_Wtime();
            rc = compute(x, slot, src);
            x->seconds_compute += MPI_Wtime() - t0;
            x->steps++;
        }
        int d = x->shift[i + 1] - s;
        if (d == x->P || x->wire.skip)
            continue; /* the block never leaves, or nothing moves (benchmarks) */
        int wrc = mattn__wire_shift(&x->wire, slot, mod(x->r + d, x->P), mod(x->r - d, x->P),
                                    i == x->nshift - 1);
        if (wrc)
            return wrc; /* MPI itself failed: nothing more can be trusted */
        slot ^= 1;
    }
    if (rc == MATTN_OK)
        unpack(x, slot, dk, dv);
    return rc;
}

int mattn__ring_backward(const mattn_mesh *m, const mattn_dist_shape *shape,
                         const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                         const mattn_tensor *o, const float *lse, const mattn_tensor *dout,
                         const mattn_tensor *dq, const mattn_tensor *dk, const mattn_tensor *dv,
                         float *dsinks, float *dbias, const mattn_options *opts,
                         const mattn_ring_options *ring, mattn_ring_stats *stats)
{
    double t_start = MPI_Wtime();
    if (stats)
        memset(stats, 0, sizeof *stats);
    if (m == NULL) /* nothing to agree over */
        return mattn__fail(MATTN_ERR_ARG, "mesh is NULL");
    mattn_ring_options ro = ring ? *ring : mattn_ring_options_default();
    mattn__dist d;
    memset(&d, 0, sizeof d);
    bwd_run x;
    memset(&x, 0, sizeof x);
    int rc = mattn__dist_prepare(m, shape, q, k, v, o, (float *)lse, opts, &d);
    if (rc == MATTN_OK)
        rc = mattn__dist_grad_check(&d, q, k, v, o, lse, dout, dq, dk, dv, dsinks, dbias, opts);
    if (rc == MATTN_OK && ro.comm != MATTN_RING_COMM_OVERLAP &&
        ro.comm != MATTN_RING_COMM_SENDRECV)
        rc = mattn__fail(MATTN_ERR_ARG, "unknown ring communication mode %d", (int)ro.comm);
    if (rc == MATTN_OK && d.active)
        rc = setup(&x, m, shape, &d, dout, dq, dsinks != NULL, dbias, opts, &ro);
    double *ds_sum = NULL;
    if (rc == MATTN_OK && dsinks && (ds_sum = mattn__dist_dsinks_ws(shape)) == NULL)
        rc = MATTN_ERR_NOMEM;
    int tag = MATTN_OP_RING | MATTN__AGREE_BACKWARD | (dsinks ? MATTN__AGREE_DSINKS : 0) |
              (dbias ? MATTN__AGREE_DBIAS : 0);
    rc = mattn__dist_agree(m, rc, shape, q, v, opts, (mattn_op)tag, &ro);
    if (rc == MATTN_OK) { /* every rank is here, or every rank failed alike */
        /* dbias: every rank (active or not) zeroes the global array, adds
         * its rows during the hops, and the sum below completes it. */
        if (dbias)
            memset(dbias, 0, sizeof(float) * (size_t)(opts->bias.batch * opts->bias.heads *
                                                      shape->q_len * shape->kv_len));
        if (d.active)
            rc = run_hops(&x, dk, dv);
        rc = mattn__mesh_agree(m, rc);
        /* Presence of dsinks / dbias is agreed: all ranks enter a sum or none. */
        if (rc == MATTN_OK && dsinks)
            rc = mattn__mesh_agree(
                m, mattn__dist_sum_dsinks(m, shape, &d.shard, x.ds_local, ds_sum, dsinks));
        if (rc == MATTN_OK && dbias)
            rc = mattn__mesh_agree(m, mattn__dist_sum_dbias(m, shape, opts, dbias));
    }
    free(ds_sum);
    mattn__wire_report(&x.wire, x.steps, x.kernel_calls, x.seconds_compute, t_start, stats);
    teardown(&x);
    return rc;
}

int mattn_ring_backward_ex(const mattn_mesh *m, const mattn_dist_shape *shape,
                           const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                           const mattn_tensor *o, const float *lse, const mattn_tensor *dout,
                           const mattn_tensor *dq, const mattn_tensor *dk,
                           const mattn_tensor *dv, float *dsinks, const mattn_options *opts,
                           const mattn_ring_options *ring, mattn_ring_stats *stats)
{
    return mattn__ring_backward(m, shape, q, k, v, o, lse, dout, dq, dk, dv, dsinks, NULL, opts,
                                ring, stats);
}

int mattn_ring_backward(const mattn_mesh *m, const mattn_dist_shape *shape,
                        const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                        const mattn_tensor *o, const float *lse, const mattn_tensor *dout,
                        const mattn_tensor *dq, const mattn_tensor *dk, const mattn_tensor *dv,
                        float *dsinks, const mattn_options *opts)
{
    return mattn_ring_backward_ex(m, shape, q, k, v, o, lse, dout, dq, dk, dv, dsinks, opts,
                                  NULL, NULL);
}
