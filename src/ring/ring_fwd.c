/* Ring attention forward: the front door and the step loop.
 *
 * Schedule. The sp ranks of one (dp, tp) group form the ring; P = sp. At
 * step s (1 <= s < P) rank r receives the K/V shard of rank r - s and sends
 * its own to rank r + s (mod P): a cyclic shift by s, one packed message
 * per rank per step; step 0 is the rank's own shard. Shards are sent by
 * their owner, not forwarded, which is what lets the schedule drop every
 * transfer nobody needs: rank r receives from r - s only if one of its
 * queries may see one of that rank's keys (mattn__ring_needs: the splash
 * classification of the problem's structural mask, ring/plan.c, the same
 * on every rank), and sends to r + s only if that
 * rank needs it. Causal contiguous drops the wrapped-around half of the
 * pairs; a bounded window leaves only the ranks within reach, on both
 * sides; a step nobody needs is not run at all. Messages between a pair
 * flow in step order and every rank walks the steps in the same order, so
 * the exchange cannot deadlock.
 *
 * Per rank:  start(step 1) | compute step 0, polling
 *            for each step s: finish(s); start(next step); compute s, polling
 * With OVERLAP, start posts Isend/Irecv and the receive lands in the buffer
 * not being computed on; with SENDRECV, finish does the blocking exchange.
 *
 * Errors: everything is checked and agreed on (one allreduce that also
 * checks all ranks describe the same problem) before the first message. A
 * kernel failure later (out of memory) stops the compute but not the
 * exchange, so no partner waits forever; a final agreement makes every rank
 * return the same status. */
#include <string.h>

#include "core/scratch.h"
#include "core/status.h"
#include "mattn.h"
#include "mesh/dist.h"
#include "mesh/shard.h"
#include "ring/ring.h"

const char *mattn_ring_comm_name(mattn_ring_comm comm)
{
    switch (comm) {
    case MATTN_RING_COMM_OVERLAP:
        return "overlap";
    case MATTN_RING_COMM_SENDRECV:
        return "sendrecv";
    }
    return "unknown";
}

mattn_ring_options mattn_ring_options_default(void)
{
    mattn_ring_options o = {.comm = MATTN_RING_COMM_OVERLAP, .skip_comm = 0};
    return o;
}

/* Everything one call holds on this rank. */
typedef struct ring_run {
    const mattn_dist_shape *shape;
    const mattn__problem *local;
    int P, r;
    mattn__runs kv_mine;
    mattn__ring_plan plan;
    int plan_ready;
    mattn__ring_acc acc;
    char *acc_ws;
    mattn__wire wire;
    int wire_ready;
    int64_t steps;
    double seconds_compute;
} ring_run;

static int mod(int a, int p)
{
    return ((a % p) + p) % p;
}

/* Does this rank receive / send at step s? */
static int recv_at(const ring_run *x, int s)
{
    return mattn__ring_needs(&x->plan, x->r, mod(x->r - s, x->P));
}

static int send_at(const ring_run *x, int s)
{
    return mattn__ring_needs(&x->plan, mod(x->r + s, x->P), x->r);
}

/* The first step >= s at which this rank sends or receives (P: none). */
static int next_step(const ring_run *x, int s)
{
    for (; s < x->P; s++)
        if (recv_at(x, s) || send_at(x, s))
            return s;
    return x->P;
}

static int start_step(ring_run *x, int s, int slot)
{
    return mattn__wire_start(&x->wire, slot, send_at(x, s) ? mod(x->r + s, x->P) : -1,
                             recv_at(x, s) ? mod(x->r - s, x->P) : -1);
}

/* Allocations happen here, before the agreement, so running out of memory
 * is agreed on like any bad argument. */
static int setup(ring_run *x, const mattn_mesh *m, const mattn_dist_shape *shape,
                 const mattn__problem *local, const mattn_ring_options *ro)
{
    x->shape = shape;
    x->local = local;
    x->P = m->sp;
    x->r = m->sp_rank;
    mattn__runs q;
    mattn__ring_runs(shape->q_len, x->P, x->r, shape->layout, &q);
    mattn__ring_runs(shape->kv_len, x->P, x->r, shape->layout, &x->kv_mine);
    int rc = mattn__ring_plan_init(&x->plan, local, shape, x->P);
    if (rc)
        return rc;
    x->plan_ready = 1;
    int64_t cap = mattn__shard_kv_len_max(shape, x->P);
    int64_t piece = mattn__ring_piece_rows(local, cap);
    size_t bytes = mattn__ring_acc_bytes(local, &q, piece);
    if ((x->acc_ws = mattn__scratch_get(bytes)) == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "ring: cannot allocate %zu bytes of workspace",
                           bytes);
    mattn__ring_acc_init(&x->acc, local, &x->plan, &q, piece, x->acc_ws);
    int sends = 0, receives = 0;
    for (int s = 1; s < x->P; s++)
        sends |= send_at(x, s), receives |= recv_at(x, s);
    x->wire_ready = 1;
    return mattn__wire_init(&x->wire, m->sp_comm, ro->comm, ro->skip_comm != 0, local, cap,
                            sends, receives, 0);
}

static void teardown(ring_run *x)
{
    if (x->wire_ready)
        mattn__wire_free(&x->wire);
    mattn__scratch_put(x->acc_ws);
    if (x->plan_ready)
        mattn__ring_plan_free(&x->plan);
}

/* Compute one step's keys; after a failure only the exchange goes on. */
static void compute(ring_run *x, const mattn__ring_kv *kv, int *rc)
{
    if (*rc != MATTN_OK)
        return;
    double t0 = MPI_Wtime();
    *rc = mattn__ring_acc_add(&x->acc, kv, mattn__wire_poll, &x->wire);
    x->seconds_compute += MPI_Wtime() - t0;
    x->steps++;
}

static int run_steps(ring_run *x)
{
    int rc = MATTN_OK;
    if (x->wire.own)
        mattn__wire_pack(&x->wire, x->local);
    int next = next_step(x, 1), slot = 0;
    if (next < x->P)
        rc = start_step(x, next, slot);

    /* Step 0: the rank's own shard, read in place. */
    if (rc == MATTN_OK && mattn__ring_needs(&x->plan, x->r, x->r)) {
        const mattn__problem *p = x->local;
        mattn__ring_kv own = {p->k, p->v, p->k_sb, p->k_ss, p->k_sh, p->v_sb, p->v_ss,
                              p->v_sh, p->kv_seg, p->kv_seg_sb, x->kv_mine};
        compute(x, &own, &rc);
    }
    while (next < x->P) {
        int wrc = mattn__wire_finish(&x->wire);
        if (wrc != MATTN_OK)
            return wrc; /* MPI itself failed: nothing more can be trusted */
        int s = next;
        next = next_step(x, s + 1);
        if (next < x->P && (wrc = start_step(x, next, slot ^ 1)) != MATTN_OK)
            return wrc;
        if (recv_at(x, s)) {
            mattn__runs runs;
            int src = mod(x->r - s, x->P);
            mattn__ring_runs(x->shape->kv_len, x->P, src, x->shape->layout, &runs);
            mattn__ring_kv kv = mattn__wire_kv(&x->wire, slot, &runs);
            compute(x, &kv, &rc);
        }
        slot ^= 1;
    }
    if (rc == MATTN_OK) {
        double t0 = MPI_Wtime();
        mattn__ring_acc_finish(&x->acc);
        x->seconds_compute += MPI_Wtime() - t0;
    }
    return rc;
}

int mattn_ring_forward_ex(const mattn_mesh *m, const mattn_dist_shape *shape,
                          const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                          const mattn_tensor *o, float *lse, const mattn_options *opts,
                          const mattn_ring_options *ring, mattn_ring_stats *stats)
{
    double t_start = MPI_Wtime();
    if (stats)
        memset(stats, 0, sizeof *stats);
    if (m == NULL) /* nothing to agree over */
        return mattn__fail(MATTN_ERR_ARG, "mesh is NULL");
    mattn_ring_options ro = ring ? *ring : mattn_ring_options_default();
    mattn__dist d;
    ring_run x;
    memset(&x, 0, sizeof x);
    int rc = mattn__dist_prepare(m, shape, q, k, v, o, lse, opts, &d);
    if (rc == MATTN_OK && ro.comm != MATTN_RING_COMM_OVERLAP &&
        ro.comm != MATTN_RING_COMM_SENDRECV)
        rc = mattn__fail(MATTN_ERR_ARG, "unknown ring communication mode %d", (int)ro.comm);
    if (rc == MATTN_OK && d.active)
        rc = setup(&x, m, shape, &d.local, &ro);
    rc = mattn__dist_agree(m, rc, shape, q, v, opts, MATTN_OP_RING, &ro);
    if (rc == MATTN_OK) { /* every rank is here, or every rank failed alike */
        if (d.active)
            rc = run_steps(&x);
        rc = mattn__mesh_agree(m, rc);
    }
    mattn__wire_report(&x.wire, x.steps, x.acc.kernel_calls, x.seconds_compute, t_start, stats);
    teardown(&x);
    return rc;
}

int mattn_ring_forward(const mattn_mesh *m, const mattn_dist_shape *shape,
                       const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                       const mattn_tensor *o, float *lse, const mattn_options *opts)
{
    return mattn_ring_forward_ex(m, shape, q, k, v, o, lse, opts, NULL, NULL);
}
