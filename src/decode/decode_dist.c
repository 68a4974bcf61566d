/* Decode across the sp ranks of a mesh (SPEC §7, last bullet): all MPI
 * traffic of the decode area lives here.
 *
 * Each rank of an sp group holds part of every sequence's cache, runs the
 * local kernel with global positions into packed records (lse, max, o[Dv])
 * per (query row, head), and the group merges the records:
 *
 *   allreduce (default): ONE MPI_Allreduce over sp_comm with a user
 *     operation that calls mattn__merge_partial (the one merge), created
 *     non-commutative. MPI then combines the ranks' records in rank order;
 *     only the bracketing ((r0 r1) r2 vs r0 (r1 r2)) is the implementation's
 *     choice (MPI-4.0 §6.9.1), and the standard "strongly recommends" that
 *     the same arguments in the same order give the same result. Open MPI
 *     and MPICH pick the algorithm and tree from the communicator size, the
 *     message size and the op's commutativity only, never from timing or
 *     arrival order, so at a given rank count and problem the result is
 *     bit-identical from run to run. (A commutative op would let an
 *     implementation combine in arrival order; this one forbids it. The merge
 *     of two records is itself symmetric bit for bit: max, a sum of two
 *     products and one add.) Every rank ends with the same bits because the
 *     non-commutative algorithms either broadcast the root's result or have
 *     both partners of each exchange compute the same operation on the same
 *     operands; the test suite checks both properties at 1-4 ranks.
 *   allgather (MATTN_DECODE_MERGE=allgather): MPI_Allgather of the records,
 *     then a merge in rank order on every rank. Order-fixed by construction,
 *     whatever the MPI library, at P times the traffic: the choice for an MPI
 *     whose reduction trees are not deterministic.
 *
 * Sinks are merged once, after the reduction, on every rank alike.
 *
 * Protocol: validate locally; the sp group gathers a small signature (shapes,
 * hashes of the lengths and of the options, the merge algorithm, this rank's
 * cache range) so a rank with a different problem or a cache split that does
 * not tile the sequence fails the same way on every rank; the mesh agrees on the status; the kernel runs; the mesh
 * agrees again (a rank may run out of memory); only then the merge. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "core/merge.h"
#include "core/scratch.h"
#include "core/status.h"
#include "decode/decode.h"
#include "mesh/mesh.h"

/* a (+)= b over n records [lse, max, o[W - 2]]: the one merge for (o, lse),
 * a max for the largest logit. */
static void merge_rows(float *a, const float *b, int64_t n, int64_t W)
{
    mattn__merge_partial(n, W - 2, a + 2, W, a, W, b + 2, W, b, W);
    for (int64_t r = 0; r < n; r++)
        a[r * W + 1] = b[r * W + 1] > a[r * W + 1] ? b[r * W + 1] : a[r * W + 1];
}

/* MPI user operation: inout = in (+) inout, where in holds lower ranks. The
 * record width comes from the datatype. */
static void merge_records_op(void *in, void *inout, int *len, MPI_Datatype *type)
{
    int bytes = 0;
    MPI_Type_size(*type, &bytes);
    merge_rows(inout, in, *len, bytes / (int)sizeof(float));
}

static int merge_allreduce(MPI_Comm comm, float *rec, int64_t rows, int64_t W)
{
    MPI_Datatype type = MPI_DATATYPE_NULL;
    MPI_Op op = MPI_OP_NULL;
    int rc = MPI_Type_contiguous((int)W, MPI_FLOAT, &type);
    if (rc == MPI_SUCCESS)
        rc = MPI_Type_commit(&type);
    if (rc == MPI_SUCCESS)
        rc = MPI_Op_create(merge_records_op, 0 /* not commutative: rank order */, &op);
    if (rc == MPI_SUCCESS)
        rc = MPI_Allreduce(MPI_IN_PLACE, rec, (int)rows, type, op, comm);
    if (op != MPI_OP_NULL)
        MPI_Op_free(&op);
    if (type != MPI_DATATYPE_NULL)
        MPI_Type_free(&type);
    return rc == MPI_SUCCESS ? MATTN_OK
                             : mattn__fail(MATTN_ERR_MPI, "decode merge: MPI_Allreduce failed");
}

static int merge_allgather(MPI_Comm comm, float *rec, int64_t rows, int64_t W)
{
    int size, rc = MATTN_OK;
    MPI_Comm_size(comm, &size);
    int64_t n = rows * W;
    float *all = mattn__scratch_get(sizeof(float) * (size_t)(n * size));
    int local = all ? MATTN_OK : MATTN_ERR_NOMEM, worst;
    /* every rank enters the allgather or none does */
    if (MPI_Allreduce(&local, &worst, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
        rc = mattn__fail(MATTN_ERR_MPI, "decode merge: MPI_Allreduce failed");
    else if (worst != MATTN_OK)
        rc = mattn__fail(MATTN_ERR_NOMEM, "decode merge: cannot allocate %d x %lld floats",
                         size, (long long)n);
    else if (MPI_Allgather(rec, (int)n, MPI_FLOAT, all, (int)n, MPI_FLOAT, comm) !=
             MPI_SUCCESS)
        rc = mattn__fail(MATTN_ERR_MPI, "decode merge: MPI_Allgather failed");
    else {
        memcpy(rec, all, sizeof(float) * (size_t)n);
        for (int r = 1; r < size; r++) /* rank order */
            merge_rows(rec, all + r * n, rows, W);
    }
    mattn__scratch_put(all);
    return rc;
}

enum { MERGE_ALLREDUCE, MERGE_ALLGATHER };

/* The merge algorithm this rank's environment asks for. Read per call and
 * part of the group signature: ranks that disagree would enter different
 * collectives. */
static int merge_choice(void)
{
    const char *alg = getenv("MATTN_DECODE_MERGE");
    return alg && strcmp(alg, "allgather") == 0 ? MERGE_ALLGATHER : MERGE_ALLREDUCE;
}

static int merge_records(MPI_Comm comm, int alg, float *rec, int64_t rows, int64_t W)
{
    if (rows > INT32_MAX / W)
        return mattn__fail(MATTN_ERR_UNSUPPORTED,
                           "decode merge: %lld records exceed one MPI message", (long long)rows);
    if (alg == MERGE_ALLGATHER)
        return merge_allgather(comm, rec, rows, W);
    return merge_allreduce(comm, rec, rows, W);
}

/* ---------------------------------------------------------------- agreement */

/* n values, NULL hashing as n zeros (so NULL starts equal explicit zeros). */
static uint64_t hash_i32(uint64_t h, const int32_t *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        h = mattn__hash_u64(h, (uint64_t)(int64_t)(x ? x[i] : 0));
    return h;
}

static uint64_t hash_f32(uint64_t h, float x)
{
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return mattn__hash_u64(h, bits);
}

/* Everything in the resolved problem besides shapes and lengths that changes
 * the numbers: the effective scale, soft cap, window, chunk and sinks. */
static uint64_t hash_options(const mattn__dec *p)
{
    uint64_t h = hash_f32(MATTN__HASH_SEED, p->scale);
    h = hash_f32(h, p->softcap);
    h = mattn__hash_u64(h, (uint64_t)p->window_left);
    h = mattn__hash_u64(h, (uint64_t)p->window_right);
    h = mattn__hash_u64(h, (uint64_t)p->chunk);
    h = mattn__hash_u64(h, p->sinks != NULL);
    for (int64_t i = 0; p->sinks && i < p->Hq; i++)
        h = hash_f32(h, p->sinks[i]);
    return h;
}

/* What every rank of an sp group must share, and this rank's cache range. */
typedef struct group_sig {
    int64_t ok; /* local validation passed */
    int64_t nseq, Hq, Hkv, D, Dv, rows;
    uint64_t lengths; /* hash of the lengths (starts/ends, cu_q_lens, kv_totals) */
    uint64_t options; /* hash_options */
    int64_t merge;    /* merge_choice */
    int64_t off, len; /* contiguous: cache positions [off, off + len) */
} group_sig;

static void sig_fill(group_sig *g, const mattn__dec *p, int64_t rows, uint64_t lengths)
{
    g->nseq = p->nseq, g->Hq = p->Hq, g->Hkv = p->Hkv, g->D = p->D, g->Dv = p->Dv;
    g->rows = rows;
    g->lengths = lengths;
    g->options = hash_options(p);
    g->merge = merge_choice();
}

/* Signatures of groups up to this size are gathered on the stack. */
enum { SIGS_ON_STACK = 64 };

/* The buffer for the group's signatures: `stack` (SIGS_ON_STACK entries)
 * for small groups, else the heap; NULL when some rank of the group has no
 * memory for it (all know: they gather only into a buffer every one has). */
static group_sig *sig_buffer(const mattn_mesh *mesh, group_sig *stack)
{
    if (mesh->sp <= SIGS_ON_STACK)
        return stack;
    group_sig *all = malloc(sizeof(group_sig) * (size_t)mesh->sp);
    int have = all != NULL, everyone = 0;
    if (MPI_Allreduce(&have, &everyone, 1, MPI_INT, MPI_MIN, mesh->sp_comm) != MPI_SUCCESS ||
        !everyone) {
        free(all);
        return NULL;
    }
    return all;
}

static void sig_buffer_free(group_sig *all, const group_sig *stack)
{
    if (all != stack)
        free(all);
}

/* Gathers the signatures of the sp group (every rank takes part, valid or
 * not) into all (from sig_buffer) and checks that they describe one
 * problem. Same verdict on every rank of the group. */
static int check_group(const mattn_mesh *mesh, int local, group_sig *mine, group_sig *all)
{
    mine->ok = local == MATTN_OK;
    if (all == NULL)
        return local ? local
                     : mattn__fail(MATTN_ERR_NOMEM, "decode: no memory to gather the %d sp "
                                   "ranks' signatures", mesh->sp);
    if (MPI_Allgather(mine, (int)sizeof *mine, MPI_BYTE, all, (int)sizeof *mine, MPI_BYTE,
                      mesh->sp_comm) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "decode: MPI_Allgather of the signatures failed");
    if (local != MATTN_OK)
        return local;
    for (int r = 0; r < mesh->sp; r++) {
        const group_sig *g = &all[r];
        if (!g->ok)
            return MATTN_OK; /* that rank reports its own error in the agreement */
        if (g->nseq != mine->nseq || g->Hq != mine->Hq || g->Hkv != mine->Hkv ||
            g->D != mine->D || g->Dv != mine->Dv || g->rows != mine->rows)
            return mattn__fail(MATTN_ERR_SHAPE,
                               "decode: sp rank %d has different shapes (sequences %lld, "
                               "query rows %lld, Hq %lld, Hkv %lld, D %lld, Dv %lld; here "
                               "%lld, %lld, %lld, %lld, %lld, %lld)",
                               r, (long long)g->nseq, (long long)(g->rows / g->Hq),
                               (long long)g->Hq, (long long)g->Hkv, (long long)g->D,
                               (long long)g->Dv, (long long)mine->nseq,
                               (long long)(mine->rows / mine->Hq), (long long)mine->Hq,
                               (long long)mine->Hkv, (long long)mine->D, (long long)mine->Dv);
        if (g->lengths != mine->lengths)
            return mattn__fail(MATTN_ERR_ARG,
                               "decode: sp rank %d has different sequence lengths (starts and "
                               "ends, or cu_q_lens and kv_totals, must be the same on every "
                               "sp rank)", r);
        if (g->options != mine->options)
            return mattn__fail(MATTN_ERR_ARG,
                               "decode: sp rank %d has different options (scale, softcap, "
                               "window, chunk or sinks must be the same on every sp rank)", r);
        if (g->merge != mine->merge)
            return mattn__fail(MATTN_ERR_ARG,
                               "decode: sp rank %d merges by %s, this rank by %s "
                               "(MATTN_DECODE_MERGE must be the same on every rank)",
                               r, g->merge == MERGE_ALLGATHER ? "allgather" : "allreduce",
                               mine->merge == MERGE_ALLGATHER ? "allgather" : "allreduce");
    }
    return MATTN_OK;
}

/* Checks that nonempty ranges [off_r, off_r + len_r) over the group are
 * disjoint and lie in [base, base + total) with lengths summing to total:
 * then they tile it exactly (no key missed, none counted twice). */
static int check_tiling(int P, const int64_t *off, const int64_t *len, int64_t base,
                        int64_t total, const char *what, int64_t seq)
{
    int64_t sum = 0;
    for (int r = 0; r < P; r++) {
        if (len[r] == 0)
            continue;
        sum += len[r];
        if (off[r] < base || off[r] - base > total - len[r])
            goto bad;
        for (int s = 0; s < r; s++)
            if (len[s] > 0 && off[s] < off[r] + len[r] && off[r] < off[s] + len[s])
                goto bad;
    }
    if (sum == total)
        return MATTN_OK;
bad:
    return mattn__fail(MATTN_ERR_ARG,
                       "decode: the sp ranks' %s of sequence %lld do not tile [%lld, %lld) "
                       "exactly (a key would be missed or counted twice)",
                       what, (long long)seq, (long long)base, (long long)(base + total));
}

/* The contiguous caches of an sp group: the ranks' rows must tile one range
 * [base, base + total), base the smallest offset held, and every nonempty
 * sequence range must lie inside it (as the single-rank call requires of its
 * one cache). */
static int check_caches(const mattn__dec *p, int P, const group_sig *all,
                        const int32_t *starts, const int32_t *ends)
{
    int64_t *offs = malloc(sizeof(int64_t) * 2 * (size_t)P);
    if (offs == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "decode: out of memory");
    int64_t *lens = offs + P, base = INT64_MAX, total = 0;
    for (int r = 0; r < P; r++) {
        offs[r] = all[r].off, lens[r] = all[r].len, total += all[r].len;
        if (all[r].len > 0 && all[r].off < base)
            base = all[r].off;
    }
    if (total == 0)
        base = 0;
    int rc = check_tiling(P, offs, lens, base, total, "cache rows", 0);
    free(offs);
    for (int64_t b = 0; b < p->nseq && rc == MATTN_OK; b++) {
        int64_t lo = starts ? starts[b] : 0, hi = ends[b];
        if (hi > lo && (lo < base || hi > base + total))
            rc = mattn__fail(MATTN_ERR_SHAPE,
                             "decode: sequence %lld: keys [%lld, %lld) are not all in the sp "
                             "ranks' caches, which hold positions [%lld, %lld)",
                             (long long)b, (long long)lo, (long long)hi, (long long)base,
                             (long long)(base + total));
    }
    return rc;
}

/* ---------------------------------------------------------------- the merge */

/* Runs the kernel into records, agrees, merges over sp, folds the sinks and
 * unpacks o [t, h] / lse / max. Rows are (query t, head h), t * Hq + h. */
static int run_and_merge(const mattn_mesh *mesh, mattn__dec *p, int64_t T, int alg,
                         float **recp)
{
    const int64_t Hq = p->Hq, Dv = p->Dv, W = Dv + 2, rows = T * Hq;
    float *o = p->o;
    int64_t o_st = p->o_st, o_sh = p->o_sh;
    float *rec = mattn__scratch_get(sizeof(float) * (size_t)(rows * W + 1));
    int rc = rec ? MATTN_OK
                 : mattn__fail(MATTN_ERR_NOMEM, "decode: cannot allocate %lld records",
                               (long long)rows);
    *recp = rec;
    if (rc == MATTN_OK) {
        p->o = rec + 2, p->o_st = Hq * W, p->o_sh = W;
        p->lse = rec, p->lse_st = Hq * W, p->lse_sh = W;
        p->mx = rec + 1, p->mx_st = Hq * W, p->mx_sh = W;
        p->fold_sinks = 0; /* once, after the merge */
        rc = mattn__decode_kernel(p);
    }
    if ((rc = mattn__mesh_agree(mesh, rc)))
        return rc;
    if (mesh->sp > 1 && rows > 0)
        rc = merge_records(mesh->sp_comm, alg, rec, rows, W);
    if ((rc = mattn__mesh_agree(mesh, rc)))
        return rc;
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < Hq; h++) {
            float *x = rec + (t * Hq + h) * W;
            if (p->sinks) {
                mattn__merge_sink(1, Dv, x + 2, W, x, W, p->sinks[h]);
                x[1] = p->sinks[h] > x[1] ? p->sinks[h] : x[1];
            }
            memcpy(o + t * o_st + h * o_sh, x + 2, sizeof(float) * (size_t)Dv);
        }
    return MATTN_OK;
}

static int dist_contiguous(const mattn_mesh *mesh, const mattn_tensor *q,
                           const mattn_tensor *k, const mattn_tensor *v,
                           const int32_t *starts, const int32_t *ends,
                           const mattn_tensor *o, float *m, float *l, float *lse,
                           const mattn_options *opts)
{
    if (mesh == NULL)
        return mattn__fail(MATTN_ERR_ARG, "mesh is NULL");
    mattn__dec p;
    float *rec = NULL;
    group_sig mine = {0}, stack[SIGS_ON_STACK], *all = sig_buffer(mesh, stack);
    int rc = mattn__dec_contiguous(&p, q, k, v, starts, ends, o, opts, 0);
    if (rc == MATTN_OK) {
        sig_fill(&mine, &p, p.nseq * p.Hq,
                 hash_i32(hash_i32(MATTN__HASH_SEED, starts, p.nseq), ends, p.nseq));
        mine.off = opts->kv_offset, mine.len = k->seq;
    }
    rc = check_group(mesh, rc, &mine, all);
    if (rc == MATTN_OK) {
        int ok = 1;
        for (int r = 0; r < mesh->sp; r++)
            ok &= (int)all[r].ok;
        if (ok)
            rc = check_caches(&p, mesh->sp, all, starts, ends);
    }
    if ((rc = mattn__mesh_agree(mesh, rc)))
        goto done;

    rc = run_and_merge(mesh, &p, p.nseq, (int)mine.merge, &rec);
    if (rc)
        goto done;
    const int64_t W = p.Dv + 2, n = p.nseq * p.Hq;
    for (int64_t i = 0; i < n; i++) { /* records [lse, max, o] */
        float x_lse = rec[i * W], x_m = rec[i * W + 1];
        if (lse)
            lse[i] = x_lse;
        if (m)
            m[i] = x_m;
        if (l)
            mattn__dec_l_from_lse(1, &x_lse, &x_m, &l[i]);
    }
done:
    sig_buffer_free(all, stack);
    mattn__scratch_put(rec);
    mattn__scratch_put((void *)p.seq);
    return rc;
}

int mattn_ar_decode_mesh(const mattn_mesh *mesh, const mattn_tensor *q, const mattn_tensor *k,
                         const mattn_tensor *v, const int32_t *starts, const int32_t *index,
                         const mattn_tensor *o, float *lse, const mattn_options *opts)
{
    return dist_contiguous(mesh, q, k, v, starts, index, o, NULL, NULL, lse, opts);
}

int mattn_ragged_decode_mesh(const mattn_mesh *mesh, const mattn_tensor *q,
                             const mattn_tensor *k, const mattn_tensor *v,
                             const int32_t *starts, const int32_t *ends,
                             const mattn_tensor *o, float *m, float *l, float *lse,
                             const mattn_options *opts)
{
    return dist_contiguous(mesh, q, k, v, starts, ends, o, m, l, lse, opts);
}

int mattn_paged_forward_mesh(const mattn_mesh *mesh, const mattn_tensor *q,
                             const mattn_paged_kv *cache, const int32_t *cu_q_lens,
                             const mattn_tensor *o, float *lse, const mattn_options *opts)
{
    if (mesh == NULL)
        return mattn__fail(MATTN_ERR_ARG, "mesh is NULL");
    mattn__dec p;
    float *rec = NULL;
    int32_t *ranges = NULL;
    group_sig mine = {0}, stack[SIGS_ON_STACK], *all = sig_buffer(mesh, stack);
    int rc;
    int64_t ns = 0;
    p.seq = NULL;
    if (cache && mesh->sp > 1 && cache->num_seqs > 0 && cache->kv_totals == NULL)
        rc = mattn__fail(MATTN_ERR_ARG,
                         "paged decode over %d sp ranks: kv_totals is NULL (each sequence's "
                         "whole length is needed)", mesh->sp);
    else
        rc = mattn__dec_paged(&p, q, cache, cu_q_lens, o, opts, 0);
    if (rc == MATTN_OK) {
        ns = p.nseq;
        uint64_t h = hash_i32(MATTN__HASH_SEED, cu_q_lens, ns + 1);
        sig_fill(&mine, &p, q->seq * p.Hq,
                 hash_i32(h, cache->kv_totals ? cache->kv_totals : cache->kv_lens, ns));
    }
    rc = check_group(mesh, rc, &mine, all);
    /* Same verdict on the whole group: every rank valid and alike, so all
     * gather the per-sequence ranges, or none does. */
    int gather = all != NULL;
    for (int r = 0; gather && r < mesh->sp; r++)
        gather &= (int)all[r].ok;
    if (gather && rc == MATTN_OK) {
        ranges = malloc(sizeof(int32_t) * (size_t)(2 * ns * mesh->sp + 2));
        int32_t *minev = malloc(sizeof(int32_t) * (size_t)(2 * ns + 2));
        int local = ranges && minev ? MATTN_OK
                                    : mattn__fail(MATTN_ERR_NOMEM, "decode: out of memory");
        /* an allocation failure must not leave the group half in a collective */
        int worst = MATTN_ERR_MPI;
        if (MPI_Allreduce(&local, &worst, 1, MPI_INT, MPI_MIN, mesh->sp_comm) != MPI_SUCCESS)
            local = mattn__fail(MATTN_ERR_MPI, "decode: MPI_Allreduce failed");
        if (worst == MATTN_OK) {
            for (int64_t s = 0; s < ns; s++) {
                minev[2 * s] = cache->kv_starts ? cache->kv_starts[s] : 0;
                minev[2 * s + 1] = cache->kv_lens[s];
            }
            if (MPI_Allgather(minev, (int)(2 * ns), MPI_INT32_T, ranges, (int)(2 * ns),
                              MPI_INT32_T, mesh->sp_comm) != MPI_SUCCESS)
                rc = mattn__fail(MATTN_ERR_MPI, "decode: MPI_Allgather of ranges failed");
            int64_t *offs = malloc(sizeof(int64_t) * 2 * (size_t)mesh->sp);
            if (rc == MATTN_OK && offs == NULL)
                rc = mattn__fail(MATTN_ERR_NOMEM, "decode: out of memory");
            for (int64_t s = 0; s < ns && rc == MATTN_OK; s++) {
                int64_t *lens = offs + mesh->sp;
                for (int r = 0; r < mesh->sp; r++)
                    offs[r] = ranges[(r * ns + s) * 2], lens[r] = ranges[(r * ns + s) * 2 + 1];
                rc = check_tiling(mesh->sp, offs, lens, 0,
                                  cache->kv_totals ? cache->kv_totals[s] : cache->kv_lens[s],
                                  "token ranges", s);
            }
            free(offs);
        } else {
            rc = local ? local : mattn__fail(MATTN_ERR_NOMEM, "decode: out of memory");
        }
        free(minev);
    }
    if ((rc = mattn__mesh_agree(mesh, rc)))
        goto done;

    rc = run_and_merge(mesh, &p, q->seq, (int)mine.merge, &rec);
    if (rc == MATTN_OK && lse) { /* lse [Hq, total_q] */
        const int64_t W = p.Dv + 2, T = q->seq;
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < p.Hq; h++)
                lse[h * T + t] = rec[(t * p.Hq + h) * W];
    }
done:
    sig_buffer_free(all, stack);
    free(ranges);
    mattn__scratch_put(rec);
    mattn__scratch_put((void *)p.seq);
    return rc;
}
