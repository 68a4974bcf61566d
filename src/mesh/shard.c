/* Shard geometry: the split of a global problem over the mesh axes (SPEC §7)
 * and the one collective that infers a global shape from local shards. */
#include "mesh/shard.h"

#include <limits.h>

#include "core/status.h"

/* Above this a size is certainly a caller bug (core/problem.c uses the same
 * bound); it also keeps 2 * sp chunk arithmetic far from overflow. */
#define SIZE_MAX_ ((int64_t)1 << 40)

const char *mattn_seq_layout_name(mattn_seq_layout layout)
{
    switch (layout) {
    case MATTN_SEQ_CONTIGUOUS:
        return "contiguous";
    case MATTN_SEQ_ZIGZAG:
        return "zigzag";
    }
    return "unknown";
}

int mattn_seq_split(int64_t n, int parts, int index, mattn_seq_layout layout,
                    int64_t start[2], int64_t count[2])
{
    int64_t s[2], c[2];
    int pieces, runs = 0;
    start[0] = start[1] = count[0] = count[1] = 0;
    if (n < 0 || parts < 1 || parts > INT_MAX / 2 || index < 0 || index >= parts)
        return 0;
    if (layout == MATTN_SEQ_CONTIGUOUS) {
        mattn_split(n, parts, index, &s[0], &c[0]);
        pieces = 1;
    } else if (layout == MATTN_SEQ_ZIGZAG) {
        /* chunk `index` from the front half, its mirror from the back half */
        mattn_split(n, 2 * parts, index, &s[0], &c[0]);
        mattn_split(n, 2 * parts, 2 * parts - 1 - index, &s[1], &c[1]);
        pieces = 2;
    } else {
        return 0;
    }
    for (int i = 0; i < pieces; i++) {
        if (c[i] == 0)
            continue;
        if (runs > 0 && start[runs - 1] + count[runs - 1] == s[i]) {
            count[runs - 1] += c[i]; /* adjacent (sp = 1): one run */
        } else {
            start[runs] = s[i];
            count[runs] = c[i];
            runs++;
        }
    }
    return runs;
}

int mattn__shape_check(const mattn_dist_shape *s)
{
    if (s == NULL)
        return mattn__fail(MATTN_ERR_ARG, "distributed shape is NULL");
    if (s->batch < 0 || s->q_len < 0 || s->kv_len < 0 || s->q_heads < 1 || s->kv_heads < 1 ||
        s->batch > SIZE_MAX_ || s->q_len > SIZE_MAX_ || s->kv_len > SIZE_MAX_ ||
        s->q_heads > SIZE_MAX_ || s->kv_heads > SIZE_MAX_)
        return mattn__fail(MATTN_ERR_SHAPE,
                           "invalid distributed shape: batch %lld, q_len %lld, kv_len %lld, "
                           "q_heads %lld, kv_heads %lld",
                           (long long)s->batch, (long long)s->q_len, (long long)s->kv_len,
                           (long long)s->q_heads, (long long)s->kv_heads);
    if (s->q_heads % s->kv_heads != 0)
        return mattn__fail(MATTN_ERR_SHAPE, "q_heads=%lld is not a multiple of kv_heads=%lld",
                           (long long)s->q_heads, (long long)s->kv_heads);
    if (s->layout != MATTN_SEQ_CONTIGUOUS && s->layout != MATTN_SEQ_ZIGZAG)
        return mattn__fail(MATTN_ERR_ARG, "unknown sequence layout %d", (int)s->layout);
    return MATTN_OK;
}

void mattn__shard_of(const mattn_dist_shape *s, int dp, int tp, int sp, int rank,
                     mattn_shard *out)
{
    int sp_rank = rank % sp, tp_rank = (rank / sp) % tp, dp_rank = rank / (sp * tp);
    int64_t group = s->q_heads / s->kv_heads;
    mattn_split(s->batch, dp, dp_rank, &out->batch_start, &out->batch_count);
    /* tp splits kv heads; each takes its group of q heads along. */
    mattn_split(s->kv_heads, tp, tp_rank, &out->kv_head_start, &out->kv_head_count);
    out->q_head_start = out->kv_head_start * group;
    out->q_head_count = out->kv_head_count * group;
    out->q_runs = mattn_seq_split(s->q_len, sp, sp_rank, s->layout, out->q_run_start,
                                  out->q_run_count);
    out->kv_runs = mattn_seq_split(s->kv_len, sp, sp_rank, s->layout, out->kv_run_start,
                                   out->kv_run_count);
    out->q_len = out->q_run_count[0] + out->q_run_count[1];
    out->kv_len = out->kv_run_count[0] + out->kv_run_count[1];
}

int64_t mattn__shard_kv_len_max(const mattn_dist_shape *s, int sp)
{
    int64_t best = 0, start[2], count[2];
    /* Contiguous: part 0 is the longest. Zigzag: any rank may be. */
    int ranks = s->layout == MATTN_SEQ_CONTIGUOUS ? 1 : sp;
    for (int r = 0; r < ranks; r++) {
        mattn_seq_split(s->kv_len, sp, r, s->layout, start, count);
        if (count[0] + count[1] > best)
            best = count[0] + count[1];
    }
    return best;
}

int mattn_mesh_shard(const mattn_mesh *m, const mattn_dist_shape *shape, int rank,
                     mattn_shard *shard)
{
    if (m == NULL || shard == NULL)
        return mattn__fail(MATTN_ERR_ARG, "mesh or shard output is NULL");
    int rc = mattn__shape_check(shape);
    if (rc)
        return rc;
    if (rank < 0 || rank >= m->size)
        return mattn__fail(MATTN_ERR_ARG, "rank %d is outside the mesh of %d ranks", rank,
                           m->size);
    mattn__shard_of(shape, m->dp, m->tp, m->sp, rank, shard);
    return MATTN_OK;
}

/* Local sizes of a tensor as shard sizes allow them: heads may be 0 on a
 * rank whose head shard is empty (mattn_tensor otherwise needs >= 1). */
static int check_local(const char *name, const mattn_tensor *t)
{
    if (t == NULL)
        return mattn__fail(MATTN_ERR_ARG, "%s is NULL", name);
    if (t->batch < 0 || t->seq < 0 || t->heads < 0 || t->batch > SIZE_MAX_ ||
        t->seq > SIZE_MAX_ || t->heads > SIZE_MAX_)
        return mattn__fail(MATTN_ERR_SHAPE, "%s has invalid sizes [%lld, %lld, %lld, *]", name,
                           (long long)t->batch, (long long)t->seq, (long long)t->heads);
    return MATTN_OK;
}

int mattn_mesh_infer_shape(const mattn_mesh *m, const mattn_tensor *q, const mattn_tensor *k,
                           mattn_seq_layout layout, mattn_dist_shape *shape)
{
    if (m == NULL)
        return mattn__fail(MATTN_ERR_ARG, "mesh is NULL");
    int rc = check_local("q", q);
    if (rc == MATTN_OK)
        rc = check_local("k", k);
    if (rc == MATTN_OK && shape == NULL)
        rc = mattn__fail(MATTN_ERR_ARG, "shape output is NULL");
    if (rc == MATTN_OK && layout != MATTN_SEQ_CONTIGUOUS && layout != MATTN_SEQ_ZIGZAG)
        rc = mattn__fail(MATTN_ERR_ARG, "unknown sequence layout %d", (int)layout);

    /* Each global size is the sum of the local ones along its own axis,
     * counted once: batch by the ranks with tp = sp = 0, and so on. */
    int64_t mine[5] = {0, 0, 0, 0, 0}, sum[5];
    if (rc == MATTN_OK) {
        if (m->tp_rank == 0 && m->sp_rank == 0)
            mine[0] = q->batch;
        if (m->dp_rank == 0 && m->sp_rank == 0)
            mine[1] = q->heads, mine[2] = k->heads;
        if (m->dp_rank == 0 && m->tp_rank == 0)
            mine[3] = q->seq, mine[4] = k->seq;
    }
    if (MPI_Allreduce(mine, sum, 5, MPI_INT64_T, MPI_SUM, m->comm) != MPI_SUCCESS)
        rc = mattn__fail(MATTN_ERR_MPI, "MPI_Allreduce failed while inferring the shape");
    mattn_dist_shape s = {.batch = sum[0], .q_heads = sum[1], .kv_heads = sum[2],
                          .q_len = sum[3], .kv_len = sum[4], .layout = layout};
    if (rc == MATTN_OK)
        rc = mattn__shape_check(&s);
    if (rc == MATTN_OK) {
        mattn_shard sh;
        mattn__shard_of(&s, m->dp, m->tp, m->sp, m->rank, &sh);
        if (q->batch != sh.batch_count || q->seq != sh.q_len || q->heads != sh.q_head_count ||
            k->batch != sh.batch_count || k->seq != sh.kv_len || k->heads != sh.kv_head_count)
            rc = mattn__fail(MATTN_ERR_SHAPE,
                             "local q [%lld, %lld, %lld] / k [%lld, %lld, %lld] are not the "
                             "shard of the inferred global shape (q [%lld, %lld, %lld], k "
                             "[%lld, %lld, %lld] expected)",
                             (long long)q->batch, (long long)q->seq, (long long)q->heads,
                             (long long)k->batch, (long long)k->seq, (long long)k->heads,
                             (long long)sh.batch_count, (long long)sh.q_len,
                             (long long)sh.q_head_count, (long long)sh.batch_count,
                             (long long)sh.kv_len, (long long)sh.kv_head_count);
    }
    int64_t agreed[1] = {(int64_t)layout};
    static const char *const names[1] = {"layout"};
    rc = mattn__mesh_agree_values(m, rc, agreed, names, NULL, 1);
    if (rc == MATTN_OK)
        *shape = s;
    return rc;
}
