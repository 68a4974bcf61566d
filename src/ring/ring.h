/* Private pieces of ring attention (mattn/ring.h), one job per file:
 *   plan.c     which (query rows, key rows) pairs and which rank pairs have
 *              any allowed key: splash classification of the problem's
 *              structural mask, no MPI;
 *   step.c     one step's compute: flash kernel calls into (o, lse)
 *              partials and the merge into the accumulator; no MPI;
 *   wire.c     the packed K/V message and its transports (all MPI traffic);
 *   ring_fwd.c the forward front door and its step loop;
 *   ring_bwd.c the backward front door and its step loop (dK/dV travel
 *              with their K/V). */
#ifndef MATTN_RING_RING_H
#define MATTN_RING_RING_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "core/problem.h"
#include "mattn.h"
#include "mattn/splash.h"

/* ---------------------------------------------------------------- plan.c */

/* A run of consecutive rows: `local` is its first row in the holder's local
 * order (or packed buffer), `global` its first global row index. */
typedef struct mattn__run {
    int64_t local, global, count;
} mattn__run;

typedef struct mattn__runs {
    int n; /* 0, 1 or 2 */
    mattn__run r[2];
} mattn__runs;

/* The runs of part sp_rank of n rows under the layout (mattn_seq_split). */
void mattn__ring_runs(int64_t n, int sp, int sp_rank, mattn_seq_layout layout,
                      mattn__runs *runs);

/* What positions allow, for one call: the problem's structural mask as a
 * splash mask object (NULL: every pair allowed) and which sp rank's queries
 * may see which sp rank's keys. */
typedef struct mattn__ring_plan {
    mattn_splash_mask *mask;
    int64_t q_offset, kv_offset; /* global problem's: position of row / key 0 */
    int P;
    uint8_t *needs; /* [P * P]: needs[q_rank * P + kv_rank] */
} mattn__ring_plan;

/* From the local problem of mesh/dist.h (mask indexed by global rows, this
 * rank's heads) and the global shape; sp ranks. Allocates. */
int mattn__ring_plan_init(mattn__ring_plan *pl, const mattn__problem *local,
                          const mattn_dist_shape *shape, int sp);
void mattn__ring_plan_free(mattn__ring_plan *pl);

/* False only when no query of global rows [q_row, q_row + qn) may see any
 * key of global columns [kv_col, kv_col + kn) for any head (splash
 * classification of the rectangle: EMPTY). */
int mattn__ring_live(const mattn__ring_plan *pl, int64_t q_row, int64_t qn, int64_t kv_col,
                     int64_t kn);

/* True when sp rank q_rank has a query that may see a key of sp rank kv_rank. */
static inline int mattn__ring_needs(const mattn__ring_plan *pl, int q_rank, int kv_rank)
{
    return pl->needs[q_rank * pl->P + kv_rank];
}

/* ---------------------------------------------------------------- step.c */

/* A K/V shard as the kernel reads it: its runs, with `local` the row inside
 * k / v / seg. */
typedef struct mattn__ring_kv {
    const float *k, *v;
    int64_t k_sb, k_ss, k_sh, v_sb, v_ss, v_sh;
    const int32_t *seg; /* NULL without segment ids */
    int64_t seg_sb;
    mattn__runs runs;
} mattn__ring_kv;

/* Called between kernel calls so a transfer in flight progresses. */
typedef int (*mattn__ring_poll_fn)(void *ctx);

/* The running (o, lse) of this rank's query rows. Rows are handled in
 * pieces of `piece` rows per q run: the first partial of a piece is written
 * straight into o / lse, later ones go through the partial buffers and the
 * one merge routine (core/merge.h). */
typedef struct mattn__ring_acc {
    mattn__problem base; /* the local problem (mesh/dist.h) */
    const mattn__ring_plan *plan;
    mattn__runs q;       /* this rank's query runs */
    int64_t piece, n_pieces;
    float *lse;          /* [B, Hq, T] accumulator: the caller's or workspace */
    float *o_part;       /* [B, piece, Hq, Dv] */
    float *lse_part;     /* [B, Hq, piece] */
    uint8_t *started;    /* [n_pieces]: holds a partial already */
    int64_t kernel_calls;
} mattn__ring_acc;

/* The local problem `base` narrowed to its query rows [t0, t0 + n) (global
 * row g0) and run kr of kv: q, q segment ids, k, v, kv segment ids moved,
 * offsets set to the global positions, mask and bias indexed at (g0, the
 * run's global key), sinks dropped (they fold in once, by the caller). o and
 * lse still point at the local problem's row 0: the caller places them. */
mattn__problem mattn__ring_narrow(const mattn__problem *base, const mattn__ring_kv *kv,
                                  const mattn__run *kr, int64_t t0, int64_t g0, int64_t n);

/* Rows per piece: enough work between two polls, whole kernel q blocks. */
int64_t mattn__ring_piece_rows(const mattn__problem *base, int64_t kv_len_max);

/* Workspace bytes for mattn__ring_acc_init (lse accumulator included when
 * base->lse is NULL). */
size_t mattn__ring_acc_bytes(const mattn__problem *base, const mattn__runs *q, int64_t piece);

/* Sets up the accumulator in `ws` (mattn__ring_acc_bytes of it). */
void mattn__ring_acc_init(mattn__ring_acc *a, const mattn__problem *base,
                          const mattn__ring_plan *plan, const mattn__runs *q, int64_t piece,
                          char *ws);

/* Folds the keys of `kv` into the accumulator: every live (piece, kv run)
 * pair is one kernel call; poll (may be NULL) runs before each. */
int mattn__ring_acc_add(mattn__ring_acc *a, const mattn__ring_kv *kv, mattn__ring_poll_fn poll,
                        void *poll_ctx);

/* Rows no key reached become o = 0, lse = -inf; then sinks fold in once. */
void mattn__ring_acc_finish(mattn__ring_acc *a);

/* ---------------------------------------------------------------- wire.c */

/* One rank's side of the K/V exchange. The packed shard is
 *   K [B][Hkv][cap][D] | V [B][Hkv][cap][Dv] | kv segment ids [B][cap] int32
 * with cap the longest kv shard of the ring, each section 64-byte aligned
 * and the whole rounded up to a 4 KiB unit (so counts fit an int). */
typedef struct mattn__wire {
    MPI_Comm comm;
    mattn_ring_comm mode;
    int skip;
    int64_t B, H, cap, D, Dv;
    int has_seg, grads;
    size_t off_v, off_seg, off_dk, off_dv, bytes;
    MPI_Datatype unit;
    char *own;     /* this rank's packed shard (sends only ever read it) */
    char *slot[2]; /* receive buffers; one buffer twice for SENDRECV */
    /* the transfer of the next step */
    MPI_Request req[2]; /* send, receive */
    int to, from, recv_slot, pending;
    int64_t messages_sent, messages_received, bytes_sent, bytes_received;
    double seconds_wait;
} mattn__wire;

/* Allocates what this rank needs: its packed shard if it sends (or skips
 * communication), receive buffers if it receives. With `grads` (backward)
 * the message also carries dK [B][Hkv][cap][D] | dV [B][Hkv][cap][Dv] from
 * offset off_dk (a unit boundary), and there are two slots that swap roles
 * (slot[1] only when something moves). */
int mattn__wire_init(mattn__wire *w, MPI_Comm comm, mattn_ring_comm mode, int skip,
                     const mattn__problem *local, int64_t cap, int sends, int receives,
                     int grads);
void mattn__wire_pack(mattn__wire *w, const mattn__problem *local);
/* Backward: packs the local shard into `slot` with zero dK/dV. */
void mattn__wire_pack_grads(mattn__wire *w, int slot, const mattn__problem *local);

/* The dK/dV section of a slot (backward), strides in floats. */
typedef struct mattn__wire_grads {
    float *dk, *dv;
    int64_t dk_sb, dk_ss, dk_sh, dv_sb, dv_ss, dv_sh;
} mattn__wire_grads;
mattn__wire_grads mattn__wire_dkv(const mattn__wire *w, int slot);

/* Backward hop: sends slot `slot` to `to` and receives the message from
 * `from` into slot ^ 1 (one blocking MPI_Sendrecv); `grads_only` moves only
 * the dK/dV section (the last hop, home). Nothing with skip. */
int mattn__wire_shift(mattn__wire *w, int slot, int to, int from, int grads_only);

/* The shard of another rank in receive slot `slot` (its own packed shard
 * when communication is skipped), with that rank's runs. */
mattn__ring_kv mattn__wire_kv(const mattn__wire *w, int slot, const mattn__runs *runs);
/* Starts the exchange of one step: send the packed shard to `to`, receive
 * into `slot` from `from` (-1: none). The blocking transport defers both to
 * mattn__wire_finish. */
int mattn__wire_start(mattn__wire *w, int slot, int to, int from);
int mattn__wire_poll(void *w); /* a mattn__ring_poll_fn */
int mattn__wire_finish(mattn__wire *w);
/* Frees the buffers; after an MPI failure left a transfer pending they are
 * leaked instead, since MPI may still write into them. */
void mattn__wire_free(mattn__wire *w);
/* Fills stats (NULL: nothing) at the end of a ring call: the call's steps,
 * kernel calls, compute time and wall time since t_start (MPI_Wtime), and
 * the wire's transfer counters and wait time. */
void mattn__wire_report(const mattn__wire *w, int64_t steps, int64_t kernel_calls,
                        double seconds_compute, double t_start, mattn_ring_stats *stats);

/* ---------------------------------------------------------------- ring_bwd.c */

/* mattn_ring_backward_ex plus dbias (mattn_mesh_backward's global
 * [bias.batch, bias.heads, T, S], or NULL). */
int mattn__ring_backward(const mattn_mesh *m, const mattn_dist_shape *shape,
                         const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                         const mattn_tensor *o, const float *lse, const mattn_tensor *dout,
                         const mattn_tensor *dq, const mattn_tensor *dk, const mattn_tensor *dv,
                         float *dsinks, float *dbias, const mattn_options *opts,
                         const mattn_ring_options *ring, mattn_ring_stats *stats);

#endif
