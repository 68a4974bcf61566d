/* The ring's wire: the packed K/V message and the two ways it moves.
 *
 * A rank packs its own K/V shard (only its Hkv heads, GQA never expanded)
 * and its kv segment ids once per call into one contiguous buffer, and every
 * message it sends is that buffer: a shard goes straight from its owner to
 * each rank that needs it, never forwarded (ring_fwd.c explains the step
 * schedule). The receive side has two buffers, so the next step's shard can
 * arrive while the current one is computed.
 *
 * Backward (ring_bwd.c) uses the same packed layout with dK | dV appended
 * (from a unit boundary) and forwards what it holds: the buffer computed on
 * is the message, so two buffers swap roles each hop (mattn__wire_shift).
 *
 * Transports of the forward, one table:
 *   OVERLAP   MPI_Isend/MPI_Irecv started one step ahead; mattn__wire_poll
 *             (MPI_Testall) runs between kernel calls, because without a
 *             progress thread a large shared-memory message only advances
 *             inside MPI calls; MPI_Waitall at the step boundary.
 *   SENDRECV  one blocking MPI_Sendrecv at the step boundary, one buffer.
 * With skip set nothing moves and every step reads the rank's own buffer. */
#include <limits.h>
#include <string.h>

#include "core/scratch.h"
#include "core/status.h"
#include "ring/ring.h"

#define WIRE_TAG 7201
#define WIRE_UNIT 4096 /* bytes per MPI element: counts stay ints */

/* ---------------------------------------------------------------- transports */

static int overlap_start(mattn__wire *w)
{
    int rc = MPI_SUCCESS, n = (int)(w->bytes / WIRE_UNIT);
    if (w->from >= 0)
        rc = MPI_Irecv(w->slot[w->recv_slot], n, w->unit, w->from, WIRE_TAG, w->comm,
                       &w->req[1]);
    if (rc == MPI_SUCCESS && w->to >= 0)
        rc = MPI_Isend(w->own, n, w->unit, w->to, WIRE_TAG, w->comm, &w->req[0]);
    if (rc != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "ring: posting the K/V exchange failed");
    return MATTN_OK;
}

static int overlap_poll(mattn__wire *w)
{
    int done = 0;
    MPI_Status st[2]; /* not MPI_STATUSES_IGNORE: gcc 12 misreads MPICH's (MPI_Status *)1 */
    if (MPI_Testall(2, w->req, &done, st) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "ring: MPI_Testall on the K/V exchange failed");
    return MATTN_OK;
}

static int overlap_finish(mattn__wire *w)
{
    MPI_Status st[2]; /* see overlap_poll */
    if (MPI_Waitall(2, w->req, st) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "ring: MPI_Waitall on the K/V exchange failed");
    return MATTN_OK;
}

static int sendrecv_start(mattn__wire *w)
{
    (void)w; /* deferred to the step boundary */
    return MATTN_OK;
}

static int sendrecv_poll(mattn__wire *w)
{
    (void)w;
    return MATTN_OK;
}

static int sendrecv_finish(mattn__wire *w)
{
    int n = (int)(w->bytes / WIRE_UNIT);
    int to = w->to >= 0 ? w->to : MPI_PROC_NULL, from = w->from >= 0 ? w->from : MPI_PROC_NULL;
    /* MPI_PROC_NULL sides are no-ops; a NULL buffer is fine with them. */
    if (MPI_Sendrecv(w->own, w->to >= 0 ? n : 0, w->unit, to, WIRE_TAG,
                     w->slot[w->recv_slot], w->from >= 0 ? n : 0, w->unit, from, WIRE_TAG,
                     w->comm, MPI_STATUS_IGNORE) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "ring: MPI_Sendrecv of the K/V shard failed");
    return MATTN_OK;
}

typedef struct transport {
    int (*start)(mattn__wire *w);
    int (*poll)(mattn__wire *w);
    int (*finish)(mattn__wire *w);
    int slots; /* receive buffers it needs */
} transport;

static const transport transports[] = {
    [MATTN_RING_COMM_OVERLAP] = {overlap_start, overlap_poll, overlap_finish, 2},
    [MATTN_RING_COMM_SENDRECV] = {sendrecv_start, sendrecv_poll, sendrecv_finish, 1},
};

/* ---------------------------------------------------------------- buffers */

int mattn__wire_init(mattn__wire *w, MPI_Comm comm, mattn_ring_comm mode, int skip,
                     const mattn__problem *p, int64_t cap, int sends, int receives, int grads)
{
    memset(w, 0, sizeof *w);
    w->comm = comm;
    w->mode = mode;
    w->skip = skip;
    w->unit = MPI_DATATYPE_NULL;
    w->req[0] = w->req[1] = MPI_REQUEST_NULL;
    w->to = w->from = -1;
    w->B = p->B, w->H = p->Hkv, w->cap = cap, w->D = p->D, w->Dv = p->Dv;
    w->has_seg = p->kv_seg != NULL;
    size_t rows = (size_t)(w->B * w->H * cap);
    w->off_v = mattn__align64(sizeof(float) * rows * (size_t)w->D);
    w->off_seg = w->off_v + mattn__align64(sizeof(float) * rows * (size_t)w->Dv);
    size_t end = w->off_seg + (w->has_seg ? sizeof(int32_t) * (size_t)(w->B * cap) : 0);
    w->grads = grads;
    if (grads) {
        /* dK | dV start on a unit boundary: the last hop sends only them. */
        w->off_dk = (end + WIRE_UNIT - 1) / WIRE_UNIT * WIRE_UNIT;
        w->off_dv = w->off_dk + mattn__align64(sizeof(float) * rows * (size_t)w->D);
        end = w->off_dv + sizeof(float) * rows * (size_t)w->Dv;
    }
    w->bytes = (end + WIRE_UNIT - 1) / WIRE_UNIT * WIRE_UNIT;
    if (w->bytes / WIRE_UNIT > INT_MAX)
        return mattn__fail(MATTN_ERR_SHAPE, "ring: a K/V shard of %zu bytes is too large",
                           w->bytes);

    if (grads) {
        /* The travelling message is the buffer computed on: one held, one
         * receiving (the second only if anything moves). */
        for (int i = 0; i < ((sends || receives) && !skip ? 2 : 1); i++)
            if ((w->slot[i] = mattn__scratch_get(w->bytes)) == NULL)
                return mattn__fail(MATTN_ERR_NOMEM, "ring: cannot allocate %zu bytes for "
                                   "K/V with dK/dV", w->bytes);
    } else if ((sends || skip) && (w->own = mattn__scratch_get(w->bytes)) == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "ring: cannot allocate %zu bytes for the K/V "
                           "shard", w->bytes);
    if (receives && !skip && !grads) {
        for (int i = 0; i < transports[mode].slots; i++)
            if ((w->slot[i] = mattn__scratch_get(w->bytes)) == NULL)
                return mattn__fail(MATTN_ERR_NOMEM, "ring: cannot allocate %zu bytes to "
                                   "receive K/V", w->bytes);
        if (transports[mode].slots == 1)
            w->slot[1] = w->slot[0];
    }
    if (MPI_Type_contiguous(WIRE_UNIT, MPI_BYTE, &w->unit) != MPI_SUCCESS ||
        MPI_Type_commit(&w->unit) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "ring: cannot create the message datatype");
    return MATTN_OK;
}

static void pack(const mattn__wire *w, char *buf, const mattn__problem *p)
{
    float *k = (float *)buf, *v = (float *)(buf + w->off_v);
    int32_t *seg = (int32_t *)(buf + w->off_seg);
    size_t kb = sizeof(float) * (size_t)w->D, vb = sizeof(float) * (size_t)w->Dv;
    for (int64_t b = 0; b < w->B; b++) {
        for (int64_t h = 0; h < w->H; h++) {
            float *kd = k + (b * w->H + h) * w->cap * w->D;
            float *vd = v + (b * w->H + h) * w->cap * w->Dv;
            for (int64_t j = 0; j < p->S; j++) {
                memcpy(kd + j * w->D, p->k + b * p->k_sb + j * p->k_ss + h * p->k_sh, kb);
                memcpy(vd + j * w->Dv, p->v + b * p->v_sb + j * p->v_ss + h * p->v_sh, vb);
            }
            /* Rows past this shard's end: defined values for skip mode. */
            memset(kd + p->S * w->D, 0, kb * (size_t)(w->cap - p->S));
            memset(vd + p->S * w->Dv, 0, vb * (size_t)(w->cap - p->S));
        }
        if (w->has_seg) {
            memcpy(seg + b * w->cap, p->kv_seg + b * p->kv_seg_sb,
                   sizeof(int32_t) * (size_t)p->S);
            memset(seg + b * w->cap + p->S, 0, sizeof(int32_t) * (size_t)(w->cap - p->S));
        }
    }
}

void mattn__wire_pack(mattn__wire *w, const mattn__problem *p)
{
    pack(w, w->own, p);
}

void mattn__wire_pack_grads(mattn__wire *w, int slot, const mattn__problem *p)
{
    pack(w, w->slot[slot], p);
    memset(w->slot[slot] + w->off_dk, 0, w->bytes - w->off_dk);
}

mattn__ring_kv mattn__wire_kv(const mattn__wire *w, int slot, const mattn__runs *runs)
{
    const char *buf = w->skip && !w->grads ? w->own : w->slot[slot];
    mattn__ring_kv kv = {
        .k = (const float *)buf,
        .k_sb = w->H * w->cap * w->D, .k_ss = w->D, .k_sh = w->cap * w->D,
        .v = (const float *)(buf + w->off_v),
        .v_sb = w->H * w->cap * w->Dv, .v_ss = w->Dv, .v_sh = w->cap * w->Dv,
        .seg = w->has_seg ? (const int32_t *)(buf + w->off_seg) : NULL,
        .seg_sb = w->cap,
        .runs = *runs,
    };
    return kv;
}

mattn__wire_grads mattn__wire_dkv(const mattn__wire *w, int slot)
{
    char *buf = w->slot[slot];
    mattn__wire_grads g = {
        .dk = (float *)(buf + w->off_dk),
        .dk_sb = w->H * w->cap * w->D, .dk_ss = w->D, .dk_sh = w->cap * w->D,
        .dv = (float *)(buf + w->off_dv),
        .dv_sb = w->H * w->cap * w->Dv, .dv_ss = w->Dv, .dv_sh = w->cap * w->Dv,
    };
    return g;
}

/* ---------------------------------------------------------------- exchange */

int mattn__wire_shift(mattn__wire *w, int slot, int to, int from, int grads_only)
{
    if (w->skip)
        return MATTN_OK;
    /* Blocking on purpose: the message carries what this step's compute just
     * added, so it cannot leave earlier (docs/distributed.md, "Ring
     * backward", has the measurements). */
    size_t off = grads_only ? w->off_dk : 0, bytes = w->bytes - off;
    int n = (int)(bytes / WIRE_UNIT);
    double t0 = MPI_Wtime();
    int rc = MPI_Sendrecv(w->slot[slot] + off, n, w->unit, to, WIRE_TAG + 1,
                          w->slot[slot ^ 1] + off, n, w->unit, from, WIRE_TAG + 1, w->comm,
                          MPI_STATUS_IGNORE);
    w->seconds_wait += MPI_Wtime() - t0;
    if (rc != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "ring: MPI_Sendrecv of K/V with dK/dV failed");
    w->messages_sent++, w->bytes_sent += (int64_t)bytes;
    w->messages_received++, w->bytes_received += (int64_t)bytes;
    return MATTN_OK;
}

int mattn__wire_start(mattn__wire *w, int slot, int to, int from)
{
    if (w->skip || (to < 0 && from < 0))
        return MATTN_OK;
    w->to = to, w->from = from, w->recv_slot = slot;
    w->pending = 1;
    return transports[w->mode].start(w);
}

int mattn__wire_poll(void *vw)
{
    mattn__wire *w = vw;
    if (!w->pending)
        return MATTN_OK;
    return transports[w->mode].poll(w);
}

int mattn__wire_finish(mattn__wire *w)
{
    if (!w->pending)
        return MATTN_OK;
    double t0 = MPI_Wtime();
    int rc = transports[w->mode].finish(w);
    w->seconds_wait += MPI_Wtime() - t0;
    if (rc != MATTN_OK)
        return rc; /* stays pending: the buffers are leaked, not reused */
    w->pending = 0;
    if (w->to >= 0)
        w->messages_sent++, w->bytes_sent += (int64_t)w->bytes;
    if (w->from >= 0)
        w->messages_received++, w->bytes_received += (int64_t)w->bytes;
    w->to = w->from = -1;
    return MATTN_OK;
}

void mattn__wire_free(mattn__wire *w)
{
    if (w->unit != MPI_DATATYPE_NULL)
        MPI_Type_free(&w->unit);
    if (w->pending) {
        /* MPI failed mid-transfer: MPI may still touch the buffers. */
        for (int i = 0; i < 2; i++)
            if (w->req[i] != MPI_REQUEST_NULL)
                MPI_Request_free(&w->req[i]);
        return;
    }
    mattn__scratch_put(w->own);
    mattn__scratch_put(w->slot[0]);
    if (w->slot[1] != w->slot[0])
        mattn__scratch_put(w->slot[1]);
    memset(w, 0, sizeof *w);
}

void mattn__wire_report(const mattn__wire *w, int64_t steps, int64_t kernel_calls,
                        double seconds_compute, double t_start, mattn_ring_stats *stats)
{
    if (stats == NULL)
        return;
    stats->steps = steps;
    stats->kernel_calls = kernel_calls;
    stats->seconds_compute = seconds_compute;
    stats->seconds_total = MPI_Wtime() - t_start;
    stats->messages_sent = w->messages_sent;
    stats->messages_received = w->messages_received;
    stats->bytes_sent = w->bytes_sent;
    stats->bytes_received = w->bytes_received;
    stats->seconds_wait = w->seconds_wait;
}
