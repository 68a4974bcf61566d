/* Scatter a global array from a root into every rank's shard, and gather it
 * back (SPEC §7 layouts, uneven splits included).
 *
 * Every array here is viewed as [B, L, H, Dm] 4-byte elements with element
 * strides and Dm contiguous: a tensor directly, lse [B, Hq, T] as
 * [B, T, Hq, 1] with strides (Hq*T, 1, T), segment ids [B, L] as
 * [B, L, 1, 1]. A shard is a batch range x up to two sequence runs x a head
 * range; it travels packed in local order [b][t][h][Dm].
 *
 * Why point-to-point and not MPI_Scatterv: each rank's shard is a different
 * strided sub-array (two runs under zigzag), so Scatterv would need the root
 * to pack the whole global array into a second copy first. Here the root
 * packs one shard at a time into one buffer of the largest shard's size. */
#include <limits.h>
#include <string.h>

#include "core/scratch.h"
#include "core/status.h"
#include "mesh/mesh.h"
#include "mesh/shard.h"

#define SCATTER_TAG 7101

typedef struct xarr {
    char *base;
    int64_t B, L, H, Dm;  /* sizes */
    int64_t sb, sl, sh;   /* element strides */
} xarr;

/* The part of an array one rank holds. */
typedef struct xpart {
    int64_t b0, nb, h0, nh;
    int runs;
    int64_t start[2], count[2];
    int64_t len;  /* count[0] + count[1] */
    int64_t rows; /* nb * len * nh */
} xpart;

enum { ELEM = 4 }; /* fp32 and int32 */

/* What `rank` holds of an array of the given role; heads_split = 0 for
 * arrays without a head axis (segment ids go to every tp rank). */
static xpart part_of(const mattn_mesh *m, const mattn_dist_shape *s, mattn_shard_role role,
                     int heads_split, int rank)
{
    mattn_shard sh;
    mattn__shard_of(s, m->dp, m->tp, m->sp, rank, &sh);
    xpart p = {.b0 = sh.batch_start, .nb = sh.batch_count, .h0 = 0, .nh = 1};
    if (heads_split) {
        p.h0 = role == MATTN_SHARD_Q ? sh.q_head_start : sh.kv_head_start;
        p.nh = role == MATTN_SHARD_Q ? sh.q_head_count : sh.kv_head_count;
    }
    p.runs = role == MATTN_SHARD_Q ? sh.q_runs : sh.kv_runs;
    for (int i = 0; i < 2; i++) {
        p.start[i] = role == MATTN_SHARD_Q ? sh.q_run_start[i] : sh.kv_run_start[i];
        p.count[i] = role == MATTN_SHARD_Q ? sh.q_run_count[i] : sh.kv_run_count[i];
    }
    p.len = p.count[0] + p.count[1];
    p.rows = p.nb * p.len * p.nh;
    return p;
}

/* Copies a part of the global array into dense [b][t][h][Dm] order, or
 * (unpack) back. */
static void copy_part(const xarr *g, const xpart *p, char *buf, int unpack)
{
    size_t row = (size_t)g->Dm * ELEM;
    for (int64_t b = 0; b < p->nb; b++)
        for (int r = 0; r < p->runs; r++)
            for (int64_t t = p->start[r]; t < p->start[r] + p->count[r]; t++)
                for (int64_t h = 0; h < p->nh; h++) {
                    char *e = g->base +
                              ELEM * ((p->b0 + b) * g->sb + t * g->sl + (p->h0 + h) * g->sh);
                    if (unpack)
                        memcpy(e, buf, row);
                    else
                        memcpy(buf, e, row);
                    buf += row;
                }
}

/* The same between a local array (all of it, local order) and dense order. */
static void copy_local(const xarr *l, char *buf, int unpack)
{
    size_t row = (size_t)l->Dm * ELEM;
    for (int64_t b = 0; b < l->B; b++)
        for (int64_t t = 0; t < l->L; t++)
            for (int64_t h = 0; h < l->H; h++) {
                char *e = l->base + ELEM * (b * l->sb + t * l->sl + h * l->sh);
                if (unpack)
                    memcpy(e, buf, row);
                else
                    memcpy(buf, e, row);
                buf += row;
            }
}

static int is_dense(const xarr *a)
{
    return a->sh == a->Dm && a->sl == a->H * a->Dm && a->sb == a->L * a->H * a->Dm;
}

static int check_xarr(const char *name, const xarr *a, int64_t B, int64_t L, int64_t H)
{
    if (a->B != B || a->L != L || a->H != H)
        return mattn__fail(MATTN_ERR_SHAPE, "%s is [%lld, %lld, %lld] but must be [%lld, %lld, "
                           "%lld] here", name, (long long)a->B, (long long)a->L,
                           (long long)a->H, (long long)B, (long long)L, (long long)H);
    if (a->Dm < 1 || a->Dm > INT_MAX / ELEM)
        return mattn__fail(MATTN_ERR_SHAPE, "%s has dim %lld", name, (long long)a->Dm);
    if (a->sb < 0 || a->sl < 0 || a->sh < 0)
        return mattn__fail(MATTN_ERR_ARG, "%s has a negative stride", name);
    if (B * L * H > 0 && a->base == NULL)
        return mattn__fail(MATTN_ERR_ARG, "%s data is NULL", name);
    return MATTN_OK;
}

/* The one routine behind every scatter and gather. `global` matters on root
 * only (NULL elsewhere); `local` is this rank's shard. */
static int move(const mattn_mesh *m, const mattn_dist_shape *s, mattn_shard_role role,
                int heads_split, int root, const xarr *global, const xarr *local, int gather,
                const char *what)
{
    int rc = MATTN_OK;
    if (m == NULL)
        return mattn__fail(MATTN_ERR_ARG, "mesh is NULL");
    rc = mattn__shape_check(s);
    if (rc == MATTN_OK && role != MATTN_SHARD_Q && role != MATTN_SHARD_KV)
        rc = mattn__fail(MATTN_ERR_ARG, "unknown shard role %d", (int)role);
    if (rc == MATTN_OK && (root < 0 || root >= m->size))
        rc = mattn__fail(MATTN_ERR_ARG, "root %d is outside the mesh of %d ranks", root,
                         m->size);
    if (rc == MATTN_OK && local == NULL)
        rc = mattn__fail(MATTN_ERR_ARG, "local %s is NULL", what);
    xpart mine = {0};
    if (rc == MATTN_OK) {
        mine = part_of(m, s, role, heads_split, m->rank);
        rc = check_xarr("local shard", local, mine.nb, mine.len, mine.nh);
        if (rc == MATTN_OK && mine.rows > INT_MAX)
            rc = mattn__fail(MATTN_ERR_SHAPE, "a shard of %lld rows is too large to send",
                             (long long)mine.rows);
    }
    int64_t L = role == MATTN_SHARD_Q ? (s ? s->q_len : 0) : (s ? s->kv_len : 0);
    int64_t H = !heads_split ? 1 : role == MATTN_SHARD_Q ? (s ? s->q_heads : 0)
                                                          : (s ? s->kv_heads : 0);
    if (rc == MATTN_OK && m->rank == root) {
        if (global == NULL)
            rc = mattn__fail(MATTN_ERR_ARG, "global %s is NULL on the root", what);
        else if ((rc = check_xarr("global array", global, s->batch, L, H)) == MATTN_OK &&
                 global->Dm != local->Dm)
            rc = mattn__fail(MATTN_ERR_SHAPE, "global dim %lld differs from local dim %lld",
                             (long long)global->Dm, (long long)local->Dm);
    }
    /* Every rank must agree on what moves: sizes, root, role and the row size. */
    int64_t v[10] = {s ? s->batch : -1, s ? s->q_len : -1, s ? s->kv_len : -1,
                     s ? s->q_heads : -1, s ? s->kv_heads : -1, s ? (int64_t)s->layout : -1,
                     (int64_t)role, root, local ? local->Dm : -1, gather};
    static const char *const names[10] = {"batch", "q_len", "kv_len", "q_heads", "kv_heads",
                                          "layout", "role", "root", "dim", "direction"};
    rc = mattn__mesh_agree_values(m, rc, v, names, NULL, 10);
    if (rc)
        return rc;

    /* Buffers: root needs one of the largest part; others one of their own
     * unless their local array is already dense. */
    MPI_Datatype row = MPI_DATATYPE_NULL;
    char *buf = NULL;
    size_t row_bytes = (size_t)local->Dm * ELEM, need = 0;
    if (m->rank == root) {
        for (int r = 0; r < m->size; r++) {
            xpart p = part_of(m, s, role, heads_split, r);
            if (r != root && (size_t)p.rows * row_bytes > need)
                need = (size_t)p.rows * row_bytes;
        }
    } else if (!is_dense(local)) {
        need = (size_t)mine.rows * row_bytes;
    }
    if (need > 0 && (buf = mattn__scratch_get(need)) == NULL)
        rc = mattn__fail(MATTN_ERR_NOMEM, "cannot allocate %zu bytes to move a shard", need);
    if (MPI_Type_contiguous((int)row_bytes, MPI_BYTE, &row) != MPI_SUCCESS ||
        MPI_Type_commit(&row) != MPI_SUCCESS)
        rc = mattn__fail(MATTN_ERR_MPI, "cannot create the row datatype");
    /* Allocation is agreed on before any message. */
    rc = mattn__mesh_agree(m, rc);
    if (rc)
        goto done;

    if (m->rank == root) {
        for (int r = 0; r < m->size && rc == MATTN_OK; r++) {
            xpart p = part_of(m, s, role, heads_split, r);
            if (r == root) {
                /* own part: straight between the two arrays */
                for (int64_t b = 0; b < p.nb; b++) {
                    int64_t lt = 0;
                    for (int k = 0; k < p.runs; k++)
                        for (int64_t t = p.start[k]; t < p.start[k] + p.count[k]; t++, lt++)
                            for (int64_t h = 0; h < p.nh; h++) {
                                char *ge = global->base + ELEM * ((p.b0 + b) * global->sb +
                                                                  t * global->sl +
                                                                  (p.h0 + h) * global->sh);
                                char *le = local->base +
                                           ELEM * (b * local->sb + lt * local->sl + h * local->sh);
                                if (gather)
                                    memcpy(ge, le, row_bytes);
                                else
                                    memcpy(le, ge, row_bytes);
                            }
                }
                continue;
            }
            if (p.rows == 0)
                continue;
            if (gather) {
                if (MPI_Recv(buf, (int)p.rows, row, r, SCATTER_TAG, m->comm,
                             MPI_STATUS_IGNORE) != MPI_SUCCESS)
                    rc = mattn__fail(MATTN_ERR_MPI, "MPI_Recv of rank %d's shard failed", r);
                else
                    copy_part(global, &p, buf, 1);
            } else {
                copy_part(global, &p, buf, 0);
                if (MPI_Send(buf, (int)p.rows, row, r, SCATTER_TAG, m->comm) != MPI_SUCCESS)
                    rc = mattn__fail(MATTN_ERR_MPI, "MPI_Send of rank %d's shard failed", r);
            }
        }
    } else if (mine.rows > 0) {
        char *data = buf ? buf : local->base; /* dense local arrays move in place */
        if (gather) {
            if (buf)
                copy_local(local, buf, 0);
            if (MPI_Send(data, (int)mine.rows, row, root, SCATTER_TAG, m->comm) != MPI_SUCCESS)
                rc = mattn__fail(MATTN_ERR_MPI, "MPI_Send of the shard to the root failed");
        } else {
            if (MPI_Recv(data, (int)mine.rows, row, root, SCATTER_TAG, m->comm,
                         MPI_STATUS_IGNORE) != MPI_SUCCESS)
                rc = mattn__fail(MATTN_ERR_MPI, "MPI_Recv of the shard from the root failed");
            else if (buf)
                copy_local(local, buf, 1);
        }
    }
    rc = mattn__mesh_agree(m, rc);
done:
    if (row != MPI_DATATYPE_NULL)
        MPI_Type_free(&row);
    mattn__scratch_put(buf);
    return rc;
}

static xarr tensor_xarr(const mattn_tensor *t)
{
    xarr a = {(char *)t->data, t->batch, t->seq, t->heads, t->dim,
              t->stride_batch, t->stride_seq, t->stride_head};
    return a;
}

static int move_tensor(const mattn_mesh *m, const mattn_dist_shape *s, mattn_shard_role role,
                       int root, const mattn_tensor *global, const mattn_tensor *local,
                       int gather)
{
    xarr g, l, *gp = NULL, *lp = NULL;
    if (global) {
        g = tensor_xarr(global);
        gp = &g;
    }
    if (local) {
        l = tensor_xarr(local);
        lp = &l;
    }
    return move(m, s, role, 1, root, gp, lp, gather, "tensor");
}

int mattn_mesh_scatter(const mattn_mesh *m, const mattn_dist_shape *s, mattn_shard_role role,
                       int root, const mattn_tensor *global, const mattn_tensor *local)
{
    return move_tensor(m, s, role, root, global, local, 0);
}

int mattn_mesh_gather(const mattn_mesh *m, const mattn_dist_shape *s, mattn_shard_role role,
                      int root, const mattn_tensor *local, const mattn_tensor *global)
{
    return move_tensor(m, s, role, root, global, local, 1);
}

/* lse [B, Hq, T] as [B, T, Hq, 1]. Sizes come from the shape (a NULL shape
 * is reported by move()). */
static int move_lse(const mattn_mesh *m, const mattn_dist_shape *s, int root,
                    const float *global, float *local, int gather)
{
    xarr g = {0}, l = {0};
    mattn_shard sh = {0};
    int ok = m != NULL && mattn__shape_check(s) == MATTN_OK;
    if (ok) {
        mattn__shard_of(s, m->dp, m->tp, m->sp, m->rank, &sh);
        g = (xarr){(char *)global, s->batch, s->q_len, s->q_heads, 1,
                   s->q_heads * s->q_len, 1, s->q_len};
        l = (xarr){(char *)local, sh.batch_count, sh.q_len, sh.q_head_count, 1,
                   sh.q_head_count * sh.q_len, 1, sh.q_len};
    }
    return move(m, s, MATTN_SHARD_Q, 1, root, global || !ok ? &g : NULL, &l, gather, "lse");
}

int mattn_mesh_scatter_lse(const mattn_mesh *m, const mattn_dist_shape *s, int root,
                           const float *global, float *local)
{
    return move_lse(m, s, root, global, local, 0);
}

int mattn_mesh_gather_lse(const mattn_mesh *m, const mattn_dist_shape *s, int root,
                          const float *local, float *global)
{
    return move_lse(m, s, root, global, (float *)local, 1);
}

int mattn_mesh_scatter_segment_ids(const mattn_mesh *m, const mattn_dist_shape *s,
                                   mattn_shard_role role, int root, const int32_t *global,
                                   int32_t *local)
{
    xarr g = {0}, l = {0};
    int ok = m != NULL && mattn__shape_check(s) == MATTN_OK &&
             (role == MATTN_SHARD_Q || role == MATTN_SHARD_KV);
    if (ok) {
        mattn_shard sh;
        mattn__shard_of(s, m->dp, m->tp, m->sp, m->rank, &sh);
        int64_t L = role == MATTN_SHARD_Q ? s->q_len : s->kv_len;
        int64_t Ll = role == MATTN_SHARD_Q ? sh.q_len : sh.kv_len;
        g = (xarr){(char *)global, s->batch, L, 1, 1, L, 1, 0};
        l = (xarr){(char *)local, sh.batch_count, Ll, 1, 1, Ll, 1, 0};
    }
    return move(m, s, role, 0, root, global || !ok ? &g : NULL, &l, 0, "segment ids");
}
