/* Private pieces of ring attention (mattn/ring.h), one job per file:
 *   plan.c     which (query rows, key rows) pairs and which rank pairs have
 *              any allowed key: pure position arithmetic, no MPI;
 *   step.c     one step's compute: flash kernel calls into (o, lse)
 *              partials and the merge into the accumulator; no MPI;
 *   wire.c     the packed K/V message and its transports (all MPI traffic);
 *   ring_fwd.c the front door and the step loop. */
#ifndef MATTN_RING_RING_H
#define MATTN_RING_RING_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "core/problem.h"
#include "mattn.h"

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

/* True when some query of global rows [q_row, q_row + qn) may see some key
 * of global columns [kv_col, kv_col + kn) under p's causal / window / chunk
 * predicates (positions p->q_offset + row, p->kv_offset + column). Exact,
 * O(log qn). Segment ids and masks are data and never rule a pair out. */
int mattn__ring_rows_live(const mattn__problem *p, int64_t q_row, int64_t qn, int64_t kv_col,
                          int64_t kn);

/* True when sp rank q_rank has a query that may see a key of sp rank
 * kv_rank. Every rank evaluates it alike: it decides who sends to whom. */
int mattn__ring_needs(const mattn__problem *p, const mattn_dist_shape *shape, int sp,
                      int q_rank, int kv_rank);

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
    mattn__runs q;       /* this rank's query runs */
    int64_t piece, n_pieces;
    float *lse;          /* [B, Hq, T] accumulator: the caller's or workspace */
    float *o_part;       /* [B, piece, Hq, Dv] */
    float *lse_part;     /* [B, Hq, piece] */
    uint8_t *started;    /* [n_pieces]: holds a partial already */
    int64_t kernel_calls;
} mattn__ring_acc;

/* Rows per piece: enough work between two polls, whole kernel q blocks. */
int64_t mattn__ring_piece_rows(const mattn__problem *base, int64_t kv_len_max);

/* Workspace bytes for mattn__ring_acc_init (lse accumulator included when
 * base->lse is NULL). */
size_t mattn__ring_acc_bytes(const mattn__problem *base, const mattn__runs *q, int64_t piece);

/* Sets up the accumulator in `ws` (mattn__ring_acc_bytes of it). */
void mattn__ring_acc_init(mattn__ring_acc *a, const mattn__problem *base, const mattn__runs *q,
                          int64_t piece, char *ws);

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
    int has_seg;
    size_t off_v, off_seg, bytes;
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
 * communication), receive buffers if it receives. */
int mattn__wire_init(mattn__wire *w, MPI_Comm comm, mattn_ring_comm mode, int skip,
                     const mattn__problem *local, int64_t cap, int sends, int receives);
void mattn__wire_pack(mattn__wire *w, const mattn__problem *local);
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

#endif
