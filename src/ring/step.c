/* One ring step's compute: this rank's query rows against one K/V shard.
 *
 * The flash kernel is reused as is. For each piece of query rows and each
 * run of the K/V shard whose positions allow some (query, key) pair, it runs
 * on a narrowed copy of the local problem:
 *   q, o       the piece's rows;  k, v, kv segment ids  the run's rows;
 *   q_offset   global problem's offset + the piece's global row,
 *   kv_offset  global problem's offset + the run's global key index,
 * so causal/window/chunk and dropout see global positions; mask and bias
 * are the global arrays indexed at (global row, global key); sinks are left
 * out and folded in once at the end. Its (o, lse) is a partial over the
 * run's keys; partials combine exactly through core/merge.h, so the result
 * does not depend on how the keys were split over ranks and steps.
 *
 * No MPI here: the step loop passes a poll callback that runs between
 * kernel calls (that is what lets a transfer progress during compute). */
#include <math.h>
#include <string.h>

#include "core/merge.h"
#include "core/parallel.h"
#include "core/scratch.h"
#include "kernels/kernels.h"
#include "ring/ring.h"

/* About 5 ms of kernel work between two polls at ~100 GFLOP/s: a message
 * moves in shared-memory fragments that each side must touch, so polls must
 * be frequent enough for a step's transfer to finish within its compute. */
#define RING_POLL_FLOPS 5e8
/* GEMM rows per flash task (FLASH_ROWS_TARGET in kernels/flash_fwd.c): a
 * piece is a whole number of the kernel's q blocks of this many rows. */
#define RING_KERNEL_ROWS 256

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

int64_t mattn__ring_piece_rows(const mattn__problem *b, int64_t kv_len_max)
{
    int64_t bq = b->block_q > 0 ? b->block_q : ceil_div(RING_KERNEL_ROWS, b->group);
    double per_row = 2.0 * (double)b->B * (double)b->Hq * (double)kv_len_max *
                     (double)(b->D + b->Dv);
    double want = per_row >= 1.0 ? ceil(RING_POLL_FLOPS / per_row) : 1.0;
    int64_t rows = want < (double)b->T ? (int64_t)want : b->T;
    rows = ceil_div(rows > 0 ? rows : 1, bq) * bq;
    return rows < b->T ? rows : (b->T > 0 ? b->T : 1);
}

static int64_t count_pieces(const mattn__runs *q, int64_t piece)
{
    int64_t n = 0;
    for (int i = 0; i < q->n; i++)
        n += ceil_div(q->r[i].count, piece);
    return n;
}

/* The accumulator's pieces of ws; with ws NULL only sizes them. */
static size_t acc_layout(mattn__ring_acc *a, const mattn__problem *b, int64_t piece,
                         int64_t n_pieces, char *ws)
{
    mattn__carver cv = {ws, 0};
    a->o_part = mattn__carve(&cv, sizeof(float), (size_t)(b->B * piece * b->Hq * b->Dv));
    a->lse_part = mattn__carve(&cv, sizeof(float), (size_t)(b->B * b->Hq * piece));
    /* the caller's lse is [B, Hq, T] contiguous (mattn__problem_init) */
    a->lse = b->lse ? b->lse : mattn__carve(&cv, sizeof(float), (size_t)(b->B * b->Hq * b->T));
    a->started = mattn__carve(&cv, 1, (size_t)n_pieces);
    return cv.off;
}

size_t mattn__ring_acc_bytes(const mattn__problem *b, const mattn__runs *q, int64_t piece)
{
    mattn__ring_acc sizing;
    return acc_layout(&sizing, b, piece, count_pieces(q, piece), NULL);
}

void mattn__ring_acc_init(mattn__ring_acc *a, const mattn__problem *b,
                          const mattn__ring_plan *plan, const mattn__runs *q, int64_t piece,
                          char *ws)
{
    memset(a, 0, sizeof *a);
    a->base = *b;
    a->plan = plan;
    a->q = *q;
    a->piece = piece;
    a->n_pieces = count_pieces(q, piece);
    acc_layout(a, b, piece, a->n_pieces, ws);
    memset(a->started, 0, (size_t)a->n_pieces);
}

mattn__problem mattn__ring_narrow(const mattn__problem *b, const mattn__ring_kv *kv,
                                  const mattn__run *kr, int64_t t0, int64_t g0, int64_t n)
{
    mattn__problem p = *b;
    p.T = n;
    p.S = kr->count;
    p.q = b->q + t0 * b->q_st;
    p.k = kv->k + kr->local * kv->k_ss;
    p.k_sb = kv->k_sb, p.k_ss = kv->k_ss, p.k_sh = kv->k_sh;
    p.v = kv->v + kr->local * kv->v_ss;
    p.v_sb = kv->v_sb, p.v_ss = kv->v_ss, p.v_sh = kv->v_sh;
    if (b->q_seg) { /* q_seg_sb stays the local T */
        p.q_seg = b->q_seg + t0;
        p.kv_seg = kv->seg + kr->local;
        p.kv_seg_sb = kv->seg_sb;
    }
    p.q_offset = b->q_offset + g0;
    p.kv_offset = b->kv_offset + kr->global;
    p.mask = b->mask ? b->mask + g0 * b->mask_st + kr->global : NULL;
    p.bias = b->bias ? b->bias + g0 * b->bias_st + kr->global : NULL;
    p.sinks = NULL;
    return p;
}

/* The piece's problem; `direct` writes into the accumulator itself. */
static mattn__problem piece_problem(const mattn__ring_acc *a, const mattn__ring_kv *kv,
                                    const mattn__run *kr, int64_t t0, int64_t g0, int64_t n,
                                    int direct)
{
    const mattn__problem *b = &a->base;
    mattn__problem p = mattn__ring_narrow(b, kv, kr, t0, g0, n);
    if (direct) {
        p.o = b->o + t0 * b->o_st;
        p.lse = a->lse + t0;
        p.lse_sb = b->Hq * b->T, p.lse_sh = b->T;
    } else {
        p.o = a->o_part;
        p.o_sb = n * b->Hq * b->Dv, p.o_st = b->Hq * b->Dv, p.o_sh = b->Dv;
        p.lse = a->lse_part;
        p.lse_sb = b->Hq * n, p.lse_sh = n;
    }
    return p;
}

typedef struct merge_ctx {
    const mattn__ring_acc *a;
    int64_t t0, n;
} merge_ctx;

/* One (batch, head): the piece's partial rows into the accumulator. */
static void merge_task(void *vctx, int64_t task, int worker)
{
    const merge_ctx *c = vctx;
    const mattn__ring_acc *a = c->a;
    const mattn__problem *p = &a->base;
    int64_t b = task / p->Hq, h = task % p->Hq, n = c->n;
    (void)worker;
    mattn__merge_partial(n, p->Dv, p->o + b * p->o_sb + c->t0 * p->o_st + h * p->o_sh, p->o_st,
                         a->lse + (b * p->Hq + h) * p->T + c->t0, 1,
                         a->o_part + (b * n * p->Hq + h) * p->Dv, p->Hq * p->Dv,
                         a->lse_part + (b * p->Hq + h) * n, 1);
}

int mattn__ring_acc_add(mattn__ring_acc *a, const mattn__ring_kv *kv, mattn__ring_poll_fn poll,
                        void *poll_ctx)
{
    const mattn__problem *b = &a->base;
    int64_t piece_index = 0;
    int rc;
    for (int i = 0; i < a->q.n; i++) {
        const mattn__run *qr = &a->q.r[i];
        for (int64_t off = 0; off < qr->count; off += a->piece, piece_index++) {
            int64_t n = a->piece < qr->count - off ? a->piece : qr->count - off;
            int64_t t0 = qr->local + off, g0 = qr->global + off;
            for (int j = 0; j < kv->runs.n; j++) {
                const mattn__run *kr = &kv->runs.r[j];
                if (!mattn__ring_live(a->plan, g0, n, kr->global, kr->count))
                    continue;
                if (poll && (rc = poll(poll_ctx)) != MATTN_OK)
                    return rc;
                int direct = !a->started[piece_index];
                mattn__problem p = piece_problem(a, kv, kr, t0, g0, n, direct);
                if ((rc = mattn__flash_forward_kernel(&p)) != MATTN_OK)
                    return rc;
                a->kernel_calls++;
                if (direct) {
                    a->started[piece_index] = 1;
                } else {
                    merge_ctx c = {a, t0, n};
                    mattn__parallel_for(b->threads, b->B * b->Hq, merge_task, &c);
                }
            }
        }
    }
    return MATTN_OK;
}

void mattn__ring_acc_finish(mattn__ring_acc *a)
{
    const mattn__problem *p = &a->base;
    int64_t piece_index = 0;
    for (int i = 0; i < a->q.n; i++) {
        const mattn__run *qr = &a->q.r[i];
        for (int64_t off = 0; off < qr->count; off += a->piece, piece_index++) {
            if (a->started[piece_index])
                continue;
            /* No key reached these rows: the fully-masked convention. */
            int64_t n = a->piece < qr->count - off ? a->piece : qr->count - off;
            for (int64_t b = 0; b < p->B; b++)
                for (int64_t h = 0; h < p->Hq; h++)
                    for (int64_t t = qr->local + off; t < qr->local + off + n; t++) {
                        memset(p->o + b * p->o_sb + t * p->o_st + h * p->o_sh, 0,
                               sizeof(float) * (size_t)p->Dv);
                        a->lse[(b * p->Hq + h) * p->T + t] = -INFINITY;
                    }
        }
    }
    if (p->sinks)
        for (int64_t b = 0; b < p->B; b++)
            for (int64_t h = 0; h < p->Hq; h++)
                mattn__merge_sink(p->T, p->Dv, p->o + b * p->o_sb + h * p->o_sh, p->o_st,
                                  a->lse + (b * p->Hq + h) * p->T, 1, p->sinks[h]);
}
