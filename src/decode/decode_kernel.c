/* The decode kernel: single-pass online softmax streaming each K/V row once.
 *
 * Shapes (src/decode/decode.h): sequences with qn query rows each, q rows
 * [Hq, D] per query, K/V rows [Hkv, D|Dv] per key position from a contiguous
 * cache or from pages; outputs o [Hq, Dv], lse, max per query row.
 *
 * Work unit. A tile is up to DEC_ROWS rows of one sequence: its queries (all
 * of them for decode, a block of them for paged prefill) x all Hq heads,
 * ordered row = (hk * qn + t) * G + g so the rows of one kv head are
 * contiguous. A task streams one piece of the tile's key range in chunks of
 * DEC_CHUNK keys; for each group of DEC_KEYS keys (cut where a page ends) it
 * walks the kv heads in order, so the K (then V) rows of consecutive
 * positions are read front to back as a few short sequential streams (a
 * [S, Hkv, D] cache row is Hkv * D contiguous floats), and each K/V row feeds
 * all rows of its kv head (GQA/MQA read K/V once):
 *   S = q_rows K_chunk^T                        (ops->dots)
 *   m' = max(m, rowmax S); P = exp(S - m'); l = l e^(m - m') + rowsum P
 *   acc = acc e^(m - m') + P V_chunk            (ops->accum)
 * and o = acc / l, lse = m + log l at the end. The e^(m - m') rescale is the
 * online softmax: one pass, no stored logits beyond a chunk.
 *
 * Prefetch. Each group also names the rows ~8 KiB of K (of V) ahead
 * (prefetch_keys; through the page table when paged) for the ops to
 * prefetch. Decode is bound by how
 * many cache lines are in flight: the FMAs waiting on demand misses fill the
 * out-of-order window long before enough lines are requested, and the
 * hardware prefetchers do not run ahead of these short interleaved runs
 * (docs/decode.md, Performance).
 *
 * Split-KV. When there are few tiles (fewer than DEC_SPLIT_TILES), a tile's
 * key range is cut into pieces of p->piece keys aligned to multiples of the
 * piece length; pieces run as separate tasks and their (o, lse) partials are
 * merged in piece order by mattn__merge_partial. Pieces depend on the
 * problem only, never on the thread count, so any thread count gives the
 * same bits. Sinks are a logit with no value: a one-piece tile starts its
 * rows with it (m = sink, l = 1), a split tile merges it after its pieces,
 * and a cross-rank caller (fold_sinks = 0) merges it after the reduction. */
#include <math.h>
#include <string.h>

#include "core/merge.h"
#include "core/parallel.h"
#include "core/scratch.h"
#include "core/status.h"
#include "decode/decode.h"
#include "kernels/vecmath.h"

#define DEC_ROWS 64        /* rows per tile for multi-query (paged) sequences */
#ifndef DEC_CHUNK         /* -DDEC_CHUNK=n etc. for experiments */
#define DEC_CHUNK 32       /* keys per softmax update: logits [rows, 32] stay in L1 */
#endif
#ifndef DEC_KEYS
#define DEC_KEYS 4         /* keys per pass over the kv heads: 4 sequential streams */
#endif
#ifndef DEC_PF_BYTES
#define DEC_PF_BYTES 8192  /* prefetch distance: bytes of K (of V) ahead (0: none) */
#endif
#define DEC_SPLIT_TILES 64 /* split tiles' key ranges only when tiles are fewer */

typedef struct dec_tile {
    int64_t seq, q0, qn; /* packed query rows [q0, q0 + qn) of sequence seq */
    int64_t first_task, ntasks;
} dec_tile;

typedef struct dec_task {
    int64_t tile, j0, j1; /* local keys [j0, j1) */
    float *part;          /* partial records (split tiles) or NULL: write output */
} dec_task;

typedef struct dec_ctx {
    const mattn__dec *p;
    const mattn__vecmath *vm;
    const mattn__dec_ops *ops;
    const dec_tile *tiles;
    const dec_task *tasks;
    int64_t rows_max;
    int64_t pf_keys; /* prefetch distance (prefetch_keys) */
    char **ws;
} dec_ctx;

typedef struct dec_ws {
    float *q;       /* [rows, D] scaled q rows */
    float *s;       /* [rows, DEC_CHUNK] logits, then probabilities */
    float *acc;     /* [rows, Dv] unnormalised output */
    float *m, *l;   /* running max and sum */
    int64_t *range; /* [rows, 2] allowed local keys [lo, hi) */
} dec_ws;

/* With w NULL only sizes the workspace. */
static size_t dec_ws_layout(const mattn__dec *p, int64_t rows, char *base, dec_ws *w)
{
    size_t n = (size_t)rows;
    mattn__carver cv = {base, 0};
    dec_ws sizing;
    if (w == NULL)
        w = &sizing;
    w->q = mattn__carve(&cv, sizeof *w->q, n * (size_t)p->D);
    w->s = mattn__carve(&cv, sizeof *w->s, n * DEC_CHUNK);
    w->acc = mattn__carve(&cv, sizeof *w->acc, n * (size_t)p->Dv);
    w->m = mattn__carve(&cv, sizeof *w->m, n);
    w->l = mattn__carve(&cv, sizeof *w->l, n);
    w->range = mattn__carve(&cv, sizeof *w->range, 2 * n);
    return cv.off;
}

/* Global position of packed query row t of sequence s. */
static inline int64_t query_pos(const mattn__dec_seq *s, int64_t t)
{
    return s->qp_last - (s->q0 + s->qn - 1 - t);
}

/* Page-table index of local key j (page_size > 0). The kernel asks a few
 * times per group of keys; a 64-bit division costs as much as the group's
 * address arithmetic, so power-of-two page sizes (the usual case) shift. */
static inline int64_t page_index(const mattn__dec *p, int64_t j)
{
    int64_t ps = p->page_size;
    return (ps & (ps - 1)) == 0 ? j >> __builtin_ctzll((unsigned long long)ps) : j / ps;
}

/* Address of local key j, head 0, of sequence s in cache base x. */
static inline const float *key_row(const mattn__dec *p, const mattn__dec_seq *s,
                                   const float *x, int64_t sb, int64_t ss, int64_t j)
{
    if (p->page_size == 0)
        return x + s->batch * sb + j * ss;
    int64_t i = page_index(p, j);
    return x + s->pages[i] * sb + (j - i * p->page_size) * ss;
}

/* Keys in the group starting at local key j (< c1): DEC_KEYS, fewer at the
 * chunk's end or where a page ends, so a group's rows are equally spaced. */
static inline int64_t key_group(const mattn__dec *p, int64_t j, int64_t c1)
{
    int64_t e = j + DEC_KEYS < c1 ? j + DEC_KEYS : c1;
    if (p->page_size > 0) {
        int64_t page_end = (page_index(p, j) + 1) * p->page_size;
        e = e < page_end ? e : page_end;
    }
    return e - j;
}

/* Prefetch distance in keys: DEC_PF_BYTES of K/V rows (all kv heads of a
 * position), in whole groups. Measured on the 2-core VM: with 4 KiB rows, 4
 * keys ahead streamed ~10% faster than 16 (lines prefetched further ahead
 * leave L1 before they are used and are filled twice); with 256-byte rows, 4
 * keys ahead (1 KiB) was 25-45% slower than 16: the requests must still
 * cover the memory latency. */
static int64_t prefetch_keys(const mattn__dec *p)
{
    int64_t row = p->Hkv * (p->D > p->Dv ? p->D : p->Dv) * (int64_t)sizeof(float);
    int64_t n = row > 0 ? (DEC_PF_BYTES + row - 1) / row : 0;
    return DEC_PF_BYTES == 0 ? 0 : (n + DEC_KEYS - 1) / DEC_KEYS * DEC_KEYS;
}

/* The rows pf keys after local key j, for the ops to prefetch; NULL when pf
 * is 0 or past the task's range. In a page the block may run past the
 * page's end: harmless, a prefetch is only a hint. */
static inline const float *ahead(const mattn__dec *p, const mattn__dec_seq *s, const float *x,
                                 int64_t sb, int64_t ss, int64_t j, int64_t j1, int64_t pf)
{
    if (pf == 0 || j + pf >= j1)
        return NULL;
    return key_row(p, s, x, sb, ss, j + pf);
}

/* The online softmax update of one row over keys [c0, c0 + n) whose logits
 * are s[0..n); leaves the probabilities (0 for excluded keys) in s. */
static void row_update(const mattn__dec *p, const mattn__vecmath *vm, float *s, int64_t n,
                       int64_t c0, int64_t lo, int64_t hi, float *m, float *l, float *acc)
{
    if (hi <= c0 || lo >= c0 + n || lo >= hi) {
        memset(s, 0, sizeof(float) * (size_t)n);
        return;
    }
    if (p->softcap > 0.0f)
        vm->softcap(s, n, p->softcap);
    for (int64_t i = 0; i < lo - c0; i++) /* excluded keys contribute nothing */
        s[i] = -INFINITY;
    for (int64_t i = hi - c0; i < n; i++)
        s[i] = -INFINITY;
    float mb = vm->max(s, n);
    float m_new = mb > *m ? mb : *m;
    if (m_new == -INFINITY) { /* nothing allowed yet (only -inf logits) */
        memset(s, 0, sizeof(float) * (size_t)n);
        return;
    }
    /* e^(m - m') rescales what was accumulated under the old max; it is 0
     * when nothing was (m = -inf) and exactly 1 when the max did not move. */
    float alpha = expf(*m - m_new);
    *l = *l * alpha + vm->exp_sum(s, n, m_new);
    *m = m_new;
    if (alpha != 1.0f)
        for (int64_t d = 0; d < p->Dv; d++)
            acc[d] *= alpha;
}

static void dec_task_run(void *vctx, int64_t ti, int worker)
{
    const dec_ctx *c = vctx;
    const mattn__dec *p = c->p;
    const dec_task *task = &c->tasks[ti];
    const dec_tile *tile = &c->tiles[task->tile];
    const mattn__dec_seq *sq = &p->seq[tile->seq];
    const int64_t G = p->group, D = p->D, Dv = p->Dv, Hq = p->Hq, qn = tile->qn;
    const int64_t Rg = qn * G, R = qn * Hq; /* rows per kv head, rows */
    const int sink_first = p->fold_sinks && p->sinks && task->part == NULL;

    dec_ws w;
    dec_ws_layout(p, c->rows_max, c->ws[worker], &w);
    for (int64_t r = 0; r < R; r++) {
        int64_t hk = r / Rg, tq = (r / G) % qn, h = hk * G + r % G, t = tile->q0 + tq;
        const float *src = p->q + t * p->q_st + h * p->q_sh;
        for (int64_t d = 0; d < D; d++)
            w.q[r * D + d] = src[d] * p->scale;
        mattn__dec_row_range(p, sq, query_pos(sq, t), &w.range[2 * r], &w.range[2 * r + 1]);
        w.m[r] = sink_first ? p->sinks[h] : -INFINITY;
        w.l[r] = sink_first && p->sinks[h] > -INFINITY ? 1.0f : 0.0f;
    }
    memset(w.acc, 0, sizeof(float) * (size_t)(R * Dv));
    const mattn__dec_heads heads = {.n = p->Hkv, .R = Rg, .D = D, .Dv = Dv, .ld = DEC_CHUNK,
                                    .q = w.q, .s = w.s, .acc = w.acc};

    for (int64_t c0 = task->j0; c0 < task->j1;) {
        int64_t c1 = c0 + DEC_CHUNK < task->j1 ? c0 + DEC_CHUNK : task->j1;
        int64_t n = c1 - c0;
        for (int64_t j = 0, nk; j < n; j += nk) {
            nk = key_group(p, c0 + j, c1);
            const float *kb = key_row(p, sq, p->k, p->k_sb, p->k_ss, c0 + j);
            c->ops->dots(&heads, j, kb, p->k_ss, p->k_sh, nk,
                         ahead(p, sq, p->k, p->k_sb, p->k_ss, c0 + j, task->j1, c->pf_keys));
        }
        for (int64_t r = 0; r < R; r++)
            row_update(p, c->vm, w.s + r * DEC_CHUNK, n, c0, w.range[2 * r],
                       w.range[2 * r + 1], &w.m[r], &w.l[r], w.acc + r * Dv);
        for (int64_t j = 0, nk; j < n; j += nk) {
            nk = key_group(p, c0 + j, c1);
            const float *vb = key_row(p, sq, p->v, p->v_sb, p->v_ss, c0 + j);
            c->ops->accum(&heads, j, vb, p->v_ss, p->v_sh, nk,
                          ahead(p, sq, p->v, p->v_sb, p->v_ss, c0 + j, task->j1, c->pf_keys));
        }
        c0 = c1;
    }

    const int64_t W = Dv + 2; /* partial record: lse, max, o[Dv] */
    for (int64_t r = 0; r < R; r++) {
        int64_t hk = r / Rg, tq = (r / G) % qn, h = hk * G + r % G, t = tile->q0 + tq;
        /* l == 0 only for a row with no allowed key and no sink: o = 0. */
        float l = w.l[r], inv = l > 0.0f ? 1.0f / l : 0.0f;
        float lse = l > 0.0f ? w.m[r] + logf(l) : -INFINITY;
        const float *acc = w.acc + r * Dv;
        if (task->part) {
            float *rec = task->part + (tq * Hq + h) * W;
            rec[0] = lse;
            rec[1] = w.m[r];
            for (int64_t d = 0; d < Dv; d++)
                rec[2 + d] = acc[d] * inv;
            continue;
        }
        float *o = p->o + t * p->o_st + h * p->o_sh;
        for (int64_t d = 0; d < Dv; d++)
            o[d] = acc[d] * inv;
        if (p->lse)
            p->lse[t * p->lse_st + h * p->lse_sh] = lse;
        if (p->mx)
            p->mx[t * p->mx_st + h * p->mx_sh] = w.m[r];
    }
}

/* Merges a split tile's piece partials in piece order, folds the sinks and
 * writes the outputs. */
static void merge_tile(const mattn__dec *p, const dec_tile *tile, const dec_task *tasks)
{
    const int64_t Hq = p->Hq, Dv = p->Dv, W = Dv + 2, R = tile->qn * Hq;
    float *acc = tasks[tile->first_task].part;
    for (int64_t k = 1; k < tile->ntasks; k++) {
        const float *part = tasks[tile->first_task + k].part;
        mattn__merge_partial(R, Dv, acc + 2, W, acc, W, part + 2, W, part, W);
        for (int64_t r = 0; r < R; r++)
            acc[r * W + 1] = part[r * W + 1] > acc[r * W + 1] ? part[r * W + 1] : acc[r * W + 1];
    }
    for (int64_t tq = 0; tq < tile->qn; tq++)
        for (int64_t h = 0; h < Hq; h++) {
            float *rec = acc + (tq * Hq + h) * W;
            int64_t t = tile->q0 + tq;
            if (p->fold_sinks && p->sinks) {
                mattn__merge_sink(1, Dv, rec + 2, W, rec, W, p->sinks[h]);
                rec[1] = p->sinks[h] > rec[1] ? p->sinks[h] : rec[1];
            }
            memcpy(p->o + t * p->o_st + h * p->o_sh, rec + 2, sizeof(float) * (size_t)Dv);
            if (p->lse)
                p->lse[t * p->lse_st + h * p->lse_sh] = rec[0];
            if (p->mx)
                p->mx[t * p->mx_st + h * p->mx_sh] = rec[1];
        }
}

/* Union of the tile's rows' key ranges; empty as [0, 0). */
static void tile_range(const mattn__dec *p, const dec_tile *tile, int64_t *jlo, int64_t *jhi)
{
    const mattn__dec_seq *sq = &p->seq[tile->seq];
    *jlo = INT64_MAX, *jhi = 0;
    for (int64_t t = tile->q0; t < tile->q0 + tile->qn; t++) {
        int64_t lo, hi;
        mattn__dec_row_range(p, sq, query_pos(sq, t), &lo, &hi);
        if (lo < hi) {
            *jlo = lo < *jlo ? lo : *jlo;
            *jhi = hi > *jhi ? hi : *jhi;
        }
    }
    if (*jlo >= *jhi)
        *jlo = *jhi = 0;
}

int mattn__decode_kernel(const mattn__dec *p)
{
    int rc = MATTN_OK;
    dec_tile *tiles = NULL;
    dec_task *tasks = NULL;
    float *parts = NULL;
    char *ws[p->threads > 0 ? p->threads : 1];
    int got = 0;

    /* Tiles: a multi-query sequence is cut in blocks of qb queries. */
    int64_t qb = DEC_ROWS / p->Hq > 1 ? DEC_ROWS / p->Hq : 1, ntiles = 0, qmax = 0;
    for (int64_t s = 0; s < p->nseq; s++) {
        ntiles += (p->seq[s].qn + qb - 1) / qb;
        qmax = p->seq[s].qn > qmax ? p->seq[s].qn : qmax;
    }
    if (ntiles == 0)
        return MATTN_OK;
    tiles = mattn__scratch_get(sizeof(dec_tile) * (size_t)ntiles);
    if (tiles == NULL) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "decode: cannot allocate %lld tiles",
                         (long long)ntiles);
        goto done;
    }
    int64_t ntasks = 0, nparts = 0, ti = 0;
    const int split = ntiles < DEC_SPLIT_TILES;
    for (int64_t s = 0; s < p->nseq; s++)
        for (int64_t t0 = 0; t0 < p->seq[s].qn; t0 += qb, ti++) {
            dec_tile *tl = &tiles[ti];
            tl->seq = s;
            tl->q0 = p->seq[s].q0 + t0;
            tl->qn = p->seq[s].qn - t0 < qb ? p->seq[s].qn - t0 : qb;
            int64_t jlo, jhi;
            tile_range(p, tl, &jlo, &jhi);
            tl->first_task = ntasks;
            tl->ntasks = split && jhi > jlo ? (jhi - 1) / p->piece - jlo / p->piece + 1 : 1;
            ntasks += tl->ntasks;
            if (tl->ntasks > 1)
                nparts += tl->ntasks * tl->qn * p->Hq;
        }
    tasks = mattn__scratch_get(sizeof(dec_task) * (size_t)ntasks);
    if (nparts > 0)
        parts = mattn__scratch_get(sizeof(float) * (size_t)(nparts * (p->Dv + 2)));
    if (tasks == NULL || (nparts > 0 && parts == NULL)) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "decode: cannot allocate %lld tasks and "
                         "%lld partial rows", (long long)ntasks, (long long)nparts);
        goto done;
    }
    float *next_part = parts;
    for (ti = 0; ti < ntiles; ti++) {
        const dec_tile *tl = &tiles[ti];
        int64_t jlo, jhi;
        tile_range(p, tl, &jlo, &jhi);
        for (int64_t k = 0; k < tl->ntasks; k++) {
            dec_task *task = &tasks[tl->first_task + k];
            task->tile = ti;
            task->j0 = jlo, task->j1 = jhi;
            task->part = NULL;
            if (tl->ntasks > 1) {
                int64_t a = (jlo / p->piece + k) * p->piece;
                task->j0 = a > jlo ? a : jlo;
                task->j1 = a + p->piece < jhi ? a + p->piece : jhi;
                task->part = next_part;
                next_part += tl->qn * p->Hq * (p->Dv + 2);
            }
        }
    }

    dec_ctx c = {.p = p, .vm = mattn__vecmath_get(), .ops = mattn__dec_ops_get(),
                 .tiles = tiles, .tasks = tasks};
    c.rows_max = (qmax < qb ? qmax : qb) * p->Hq;
    c.pf_keys = prefetch_keys(p);
    int threads = p->threads < ntasks ? p->threads : (int)ntasks;
    if (threads < 1)
        threads = 1;
    size_t ws_bytes = dec_ws_layout(p, c.rows_max, NULL, NULL);
    got = mattn__scratch_get_each(ws, threads, ws_bytes);
    if (got == 0) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "decode: cannot allocate %zu bytes of workspace",
                         ws_bytes);
        goto done;
    }
    c.ws = ws;
    mattn__parallel_for(threads, ntasks, dec_task_run, &c);
    for (ti = 0; ti < ntiles; ti++)
        if (tiles[ti].ntasks > 1)
            merge_tile(p, &tiles[ti], tasks);
done:
    mattn__scratch_put_each(ws, got);
    mattn__scratch_put(parts);
    mattn__scratch_put(tasks);
    mattn__scratch_put(tiles);
    return rc;
}
