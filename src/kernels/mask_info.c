/* Mask info: classify every (q block, kv block) of a call geometry as EMPTY,
 * PARTIAL or FULL, and store each distinct PARTIAL tile once.
 *
 * Cost. Every block is first classified on the mask tree
 * (mattn__mask_classify), which is O(1) per band leaf. A PARTIAL block then
 * needs its tile. For a lazy mask (no dense leaf) the tile of a block at
 * absolute corner (q0, k0) with size (tn, jn) depends only on the signature
 * (k0 - q0, q0 mod period, tn, jn), period = lcm of the chunks (a band sees
 * kp - qp and the chunk grid only), so a signature cache materialises each
 * distinct tile once: a causal mask of any length with aligned equal blocks
 * costs one tile, and the whole build is O(blocks + distinct tiles x tile).
 * Dense leaves have no such invariance: their blocks are read (O(T S)).
 * Materialising a tile also makes the classification exact for AND / OR
 * (an all-zero candidate becomes EMPTY, an all-one one FULL). Tiles are
 * deduplicated by content across blocks and heads. */
#include "kernels/mask_info.h"

#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "core/positions.h"
#include "core/status.h"
#include "kernels/splash_mask.h"

#define POS_MAX ((int64_t)1 << 60)
#define LEN_MAX ((int64_t)1 << 40)

/* Values of a resolved block: a tile id >= 0, or one of these. */
#define RESOLVED_FULL (-1)
#define RESOLVED_EMPTY (-2)
#define RESOLVED_NOMEM (-3)

/* ------------------------------------------------------------------ hash tables */

/* Open addressing, linear probing, power-of-two capacity, at most half full.
 * Signature cache: key (4 x int64) -> resolved value. Tile set: content hash
 * -> tile id, collisions resolved by comparing the tiles. */
typedef struct sig_entry {
    int64_t key[4];
    int64_t value;
    int used;
} sig_entry;

typedef struct tile_entry {
    uint64_t hash;
    int64_t id; /* -1: free slot */
} tile_entry;

typedef struct builder {
    const mattn_splash_mask *mask;
    mattn_splash_info *info;
    int64_t mask_head;
    int64_t nnz, nnz_cap;
    int64_t tiles_cap; /* in tiles */
    sig_entry *sig;
    int64_t sig_cap, sig_used;
    tile_entry *tset;
    int64_t tset_cap, tset_used;
    uint8_t *tile;  /* [bq, bkv] candidate */
    uint8_t *stack; /* row evaluation scratch */
} builder;

static uint64_t sig_hash(const int64_t key[4])
{
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < 4; i++)
        h = mattn__mix(h ^ (uint64_t)key[i]);
    return h;
}

static sig_entry *sig_find(builder *bd, const int64_t key[4])
{
    uint64_t mask = (uint64_t)bd->sig_cap - 1;
    for (uint64_t i = sig_hash(key) & mask;; i = (i + 1) & mask) {
        sig_entry *e = &bd->sig[i];
        if (!e->used || memcmp(e->key, key, sizeof e->key) == 0)
            return e;
    }
}

static int sig_insert(builder *bd, const int64_t key[4], int64_t value)
{
    if (2 * (bd->sig_used + 1) > bd->sig_cap) {
        int64_t old_cap = bd->sig_cap, cap = old_cap ? 2 * old_cap : 256;
        sig_entry *old = bd->sig, *fresh = calloc((size_t)cap, sizeof *fresh);
        if (fresh == NULL)
            return -1;
        bd->sig = fresh;
        bd->sig_cap = cap;
        for (int64_t i = 0; i < old_cap; i++)
            if (old[i].used)
                *sig_find(bd, old[i].key) = old[i];
        free(old);
    }
    sig_entry *e = sig_find(bd, key);
    memcpy(e->key, key, sizeof e->key);
    e->value = value;
    e->used = 1;
    bd->sig_used++;
    return 0;
}

static tile_entry *tset_find(builder *bd, uint64_t hash, const uint8_t *tile, size_t bytes)
{
    uint64_t mask = (uint64_t)bd->tset_cap - 1;
    for (uint64_t i = hash & mask;; i = (i + 1) & mask) {
        tile_entry *e = &bd->tset[i];
        if (e->id < 0)
            return e;
        if (e->hash == hash &&
            (tile == NULL || memcmp(bd->info->tiles + (size_t)e->id * bytes, tile, bytes) == 0))
            return e;
    }
}

/* The id of the tile equal to bd->tile, adding it when new; -1 on OOM. */
static int64_t tile_intern(builder *bd)
{
    mattn_splash_info *info = bd->info;
    size_t bytes = (size_t)(info->bq * info->bkv);
    if (2 * (bd->tset_used + 1) > bd->tset_cap) {
        int64_t old_cap = bd->tset_cap, cap = old_cap ? 2 * old_cap : 64;
        tile_entry *old = bd->tset, *fresh = malloc((size_t)cap * sizeof *fresh);
        if (fresh == NULL)
            return -1;
        for (int64_t i = 0; i < cap; i++)
            fresh[i].id = -1;
        bd->tset = fresh;
        bd->tset_cap = cap;
        /* Stored tiles are distinct, so re-inserting needs no comparison. */
        for (int64_t i = 0; i < old_cap; i++)
            if (old[i].id >= 0)
                *tset_find(bd, old[i].hash, NULL, bytes) = old[i];
        free(old);
    }
    uint64_t h = mattn__hash_bytes(MATTN__HASH_SEED, bd->tile, bytes);
    tile_entry *e = tset_find(bd, h, bd->tile, bytes);
    if (e->id >= 0)
        return e->id;
    if (info->ntiles == bd->tiles_cap) {
        int64_t cap = bd->tiles_cap ? 2 * bd->tiles_cap : 16;
        uint8_t *fresh = realloc(info->tiles, bytes * (size_t)cap);
        if (fresh == NULL)
            return -1;
        info->tiles = fresh;
        bd->tiles_cap = cap;
    }
    memcpy(info->tiles + (size_t)info->ntiles * bytes, bd->tile, bytes);
    e->hash = h;
    e->id = info->ntiles++;
    bd->tset_used++;
    return e->id;
}

/* ------------------------------------------------------------------ blocks */

/* Materialises the candidate tile of a PARTIAL block and resolves it to
 * EMPTY, FULL or a tile id (RESOLVED_NOMEM when out of memory). */
static int64_t materialise(builder *bd, int64_t q0, int64_t k0, int64_t tn, int64_t jn)
{
    const mattn_splash_info *info = bd->info;
    int64_t bkv = info->bkv, ones = 0;
    memset(bd->tile, 0, (size_t)(info->bq * bkv));
    for (int64_t r = 0; r < tn; r++) {
        uint8_t *row = bd->tile + r * bkv;
        mattn__mask_row(bd->mask, bd->mask_head, q0 + r, k0, jn, row, bd->stack);
        for (int64_t j = 0; j < jn; j++)
            ones += row[j];
    }
    if (ones == 0)
        return RESOLVED_EMPTY;
    if (ones == tn * jn)
        return RESOLVED_FULL;
    int64_t id = tile_intern(bd);
    return id < 0 ? RESOLVED_NOMEM : id;
}

static int64_t resolve_partial(builder *bd, int64_t q0, int64_t k0, int64_t tn, int64_t jn)
{
    if (!bd->mask->lazy)
        return materialise(bd, q0, k0, tn, jn);
    int64_t period = bd->mask->period;
    int64_t phase = period > 0 ? q0 - mattn__floor_div(q0, period) * period : q0;
    int64_t key[4] = {k0 - q0, phase, tn, jn};
    if (bd->sig_cap > 0) {
        sig_entry *e = sig_find(bd, key);
        if (e->used)
            return e->value;
    }
    int64_t v = materialise(bd, q0, k0, tn, jn);
    if (v != RESOLVED_NOMEM && sig_insert(bd, key, v))
        return RESOLVED_NOMEM;
    return v;
}

/* Appends the non-empty blocks of q block qb of info head h. */
static int build_row(builder *bd, int64_t h, int64_t qb)
{
    mattn_splash_info *info = bd->info;
    int64_t q0 = info->q_offset + qb * info->bq;
    int64_t tn = info->bq < info->T - qb * info->bq ? info->bq : info->T - qb * info->bq;
    info->row_start[h * info->nqb + qb] = bd->nnz;
    for (int64_t kb = 0; kb < info->nkb; kb++) {
        int64_t k0 = info->kv_offset + kb * info->bkv;
        int64_t jn = info->bkv < info->S - kb * info->bkv ? info->bkv : info->S - kb * info->bkv;
        mattn_splash_block st =
            mattn__mask_classify(bd->mask, bd->mask_head, q0, q0 + tn - 1, k0, k0 + jn - 1);
        int64_t v = st == MATTN_SPLASH_EMPTY  ? RESOLVED_EMPTY
                    : st == MATTN_SPLASH_FULL ? RESOLVED_FULL
                                              : resolve_partial(bd, q0, k0, tn, jn);
        if (v == RESOLVED_NOMEM)
            return -1;
        if (v == RESOLVED_EMPTY) {
            info->count[MATTN_SPLASH_EMPTY]++;
            continue;
        }
        info->count[v == RESOLVED_FULL ? MATTN_SPLASH_FULL : MATTN_SPLASH_PARTIAL]++;
        if (bd->nnz == bd->nnz_cap) {
            int64_t cap = bd->nnz_cap ? 2 * bd->nnz_cap : 256;
            int32_t *kb_new = realloc(info->kv_block, sizeof(int32_t) * (size_t)cap);
            if (kb_new == NULL)
                return -1;
            info->kv_block = kb_new;
            int32_t *tl_new = realloc(info->tile_id, sizeof(int32_t) * (size_t)cap);
            if (tl_new == NULL)
                return -1;
            info->tile_id = tl_new;
            bd->nnz_cap = cap;
        }
        info->kv_block[bd->nnz] = (int32_t)kb;
        info->tile_id[bd->nnz] = (int32_t)(v == RESOLVED_FULL ? -1 : v);
        bd->nnz++;
    }
    return 0;
}

/* q blocks with the most work first (ties: later blocks first, as flash),
 * so the thread pool's tail is short. */
typedef struct weighted {
    int64_t weight;
    int32_t qb;
} weighted;

static int weighted_cmp(const void *a, const void *b)
{
    const weighted *x = a, *y = b;
    if (x->weight != y->weight)
        return x->weight > y->weight ? -1 : 1;
    return x->qb > y->qb ? -1 : (x->qb < y->qb);
}

static int build_order(mattn_splash_info *info)
{
    size_t n = (size_t)(info->nqb ? info->nqb : 1);
    weighted *w = calloc(n, sizeof *w);
    info->order = malloc(sizeof(int32_t) * n);
    if (w == NULL || info->order == NULL) {
        free(w);
        return -1;
    }
    for (int64_t qb = 0; qb < info->nqb; qb++) {
        w[qb].qb = (int32_t)qb;
        for (int64_t h = 0; h < info->heads; h++)
            w[qb].weight += info->row_start[h * info->nqb + qb + 1] -
                            info->row_start[h * info->nqb + qb];
    }
    qsort(w, (size_t)info->nqb, sizeof *w, weighted_cmp);
    for (int64_t qb = 0; qb < info->nqb; qb++)
        info->order[qb] = w[qb].qb;
    free(w);
    return 0;
}

/* ------------------------------------------------------------------ public */

mattn_splash_info_options mattn_splash_info_options_default(void)
{
    mattn_splash_info_options o = {0};
    return o;
}

void mattn_splash_info_free(mattn_splash_info *info)
{
    if (info == NULL)
        return;
    free(info->row_start);
    free(info->kv_block);
    free(info->tile_id);
    free(info->tiles);
    free(info->order);
    free(info);
}

static int check_geometry(const mattn_splash_mask *mask, int64_t T, int64_t S,
                          const mattn_splash_info_options *o)
{
    if (mask == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash info: mask is NULL");
    if (o == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash info: options are NULL");
    if (T < 0 || S < 0 || T > LEN_MAX || S > LEN_MAX)
        return mattn__fail(MATTN_ERR_SHAPE, "splash info: lengths q=%lld kv=%lld are invalid",
                           (long long)T, (long long)S);
    if (o->q_offset < -POS_MAX || o->q_offset > POS_MAX || o->kv_offset < -POS_MAX ||
        o->kv_offset > POS_MAX)
        return mattn__fail(MATTN_ERR_ARG, "splash info: q_offset/kv_offset beyond +-2^60");
    if (o->block_q < 0 || o->block_kv < 0 || o->block_q > 65536 || o->block_kv > 65536)
        return mattn__fail(MATTN_ERR_ARG, "splash info: block sizes (%d, %d) must be in [0, 65536]",
                           o->block_q, o->block_kv);
    if (o->head_first < 0 || o->heads < 0)
        return mattn__fail(MATTN_ERR_ARG, "splash info: head_first=%lld heads=%lld are negative",
                           (long long)o->head_first, (long long)o->heads);
    if (mask->heads > 1 &&
        (o->head_first >= mask->heads || o->heads > mask->heads - o->head_first))
        return mattn__fail(MATTN_ERR_SHAPE,
                           "splash info: heads [%lld, +%lld) are outside the per-head mask's "
                           "%lld heads",
                           (long long)o->head_first, (long long)o->heads, (long long)mask->heads);
    return MATTN_OK;
}

int mattn_splash_info_create(const mattn_splash_mask *mask, int64_t q_len, int64_t kv_len,
                             const mattn_splash_info_options *opts, mattn_splash_info **out)
{
    if (out == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash info: output pointer is NULL");
    *out = NULL;
    int rc = check_geometry(mask, q_len, kv_len, opts);
    if (rc)
        return rc;

    builder bd = {.mask = mask};
    mattn_splash_info *info = calloc(1, sizeof *info);
    if (info == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "splash info: out of memory");
    bd.info = info;
    info->T = q_len, info->S = kv_len;
    info->q_offset = opts->q_offset, info->kv_offset = opts->kv_offset;
    info->bq = mattn__splash_block(opts->block_q, MATTN__SPLASH_BLOCK_Q, q_len);
    info->bkv = mattn__splash_block(opts->block_kv, MATTN__SPLASH_BLOCK_KV, kv_len);
    info->nqb = (q_len + info->bq - 1) / info->bq;
    info->nkb = (kv_len + info->bkv - 1) / info->bkv;
    if (mask->heads > 1) {
        info->head_first = opts->head_first;
        info->heads = opts->heads ? opts->heads : mask->heads - opts->head_first;
    } else {
        info->head_first = 0;
        info->heads = 1;
    }
    /* Every block is classified once: bound their number (2^31 blocks take
     * tens of seconds to build) rather than run for days on huge lengths. */
    int64_t rows, blocks;
    if (info->nqb > INT32_MAX || info->nkb > INT32_MAX ||
        __builtin_mul_overflow(info->heads, info->nqb, &rows) || rows > LEN_MAX ||
        __builtin_mul_overflow(rows, info->nkb, &blocks) || blocks > INT32_MAX) {
        rc = mattn__fail(MATTN_ERR_SHAPE,
                         "splash info: %lld heads x %lld x %lld blocks is too many; use "
                         "larger blocks",
                         (long long)info->heads, (long long)info->nqb, (long long)info->nkb);
        goto fail;
    }
    info->row_start = calloc((size_t)(rows + 1), sizeof *info->row_start);
    bd.tile = malloc((size_t)(info->bq * info->bkv));
    bd.stack = malloc((size_t)(mask->depth * info->bkv));
    if (info->row_start == NULL || bd.tile == NULL || bd.stack == NULL)
        goto nomem;

    for (int64_t h = 0; h < info->heads; h++) {
        bd.mask_head = mask->heads > 1 ? info->head_first + h : 0;
        /* Signatures are per mask head: forget the previous head's. */
        free(bd.sig);
        bd.sig = NULL;
        bd.sig_cap = bd.sig_used = 0;
        for (int64_t qb = 0; qb < info->nqb; qb++)
            if (build_row(&bd, h, qb))
                goto nomem;
    }
    info->row_start[rows] = bd.nnz;
    if (build_order(info))
        goto nomem;
    *out = info;
    rc = MATTN_OK;
    goto done;
nomem:
    rc = mattn__fail(MATTN_ERR_NOMEM, "splash info: out of memory (%lld x %lld blocks)",
                     (long long)info->nqb, (long long)info->nkb);
fail:
    mattn_splash_info_free(info);
done:
    free(bd.sig);
    free(bd.tset);
    free(bd.tile);
    free(bd.stack);
    return rc;
}

double mattn__splash_info_density(const mattn_splash_info *info)
{
    int64_t total = info->heads * info->nqb * info->nkb;
    if (total == 0)
        return 1.0;
    return (double)(total - info->count[MATTN_SPLASH_EMPTY]) / (double)total;
}

void mattn_splash_info_describe(const mattn_splash_info *info, mattn_splash_info_stats *s)
{
    if (s == NULL)
        return;
    memset(s, 0, sizeof *s);
    if (info == NULL)
        return;
    s->q_len = info->T, s->kv_len = info->S;
    s->q_offset = info->q_offset, s->kv_offset = info->kv_offset;
    s->block_q = (int)info->bq, s->block_kv = (int)info->bkv;
    s->q_blocks = info->nqb, s->kv_blocks = info->nkb;
    s->head_first = info->head_first, s->heads = info->heads;
    s->tiles = info->ntiles;
    s->empty = info->count[MATTN_SPLASH_EMPTY];
    s->partial = info->count[MATTN_SPLASH_PARTIAL];
    s->full = info->count[MATTN_SPLASH_FULL];
}

int64_t mattn_splash_info_row(const mattn_splash_info *info, int64_t head, int64_t q_block,
                              const int32_t **kv_blocks, const int32_t **tiles)
{
    if (info == NULL || head < 0 || head >= info->heads || q_block < 0 || q_block >= info->nqb)
        return -1;
    int64_t r = head * info->nqb + q_block, a = info->row_start[r];
    if (kv_blocks)
        *kv_blocks = info->kv_block + a;
    if (tiles)
        *tiles = info->tile_id + a;
    return info->row_start[r + 1] - a;
}

int mattn_splash_info_block(const mattn_splash_info *info, int64_t head, int64_t q_block,
                            int64_t kv_block, mattn_splash_block *state, int64_t *tile)
{
    if (info == NULL || state == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash info block: NULL argument");
    if (head < 0 || head >= info->heads || q_block < 0 || q_block >= info->nqb ||
        kv_block < 0 || kv_block >= info->nkb)
        return mattn__fail(MATTN_ERR_ARG,
                           "splash info block (head %lld, %lld, %lld) is outside %lld x %lld x "
                           "%lld",
                           (long long)head, (long long)q_block, (long long)kv_block,
                           (long long)info->heads, (long long)info->nqb, (long long)info->nkb);
    const int32_t *kb, *tl;
    int64_t n = mattn_splash_info_row(info, head, q_block, &kb, &tl), lo = 0, hi = n;
    while (lo < hi) { /* first entry >= kv_block */
        int64_t mid = (lo + hi) / 2;
        if (kb[mid] < kv_block)
            lo = mid + 1;
        else
            hi = mid;
    }
    *state = MATTN_SPLASH_EMPTY;
    if (tile)
        *tile = -1;
    if (lo < n && kb[lo] == kv_block) {
        *state = tl[lo] < 0 ? MATTN_SPLASH_FULL : MATTN_SPLASH_PARTIAL;
        if (tile)
            *tile = tl[lo];
    }
    return MATTN_OK;
}

const uint8_t *mattn_splash_info_tile(const mattn_splash_info *info, int64_t tile)
{
    if (info == NULL || tile < 0 || tile >= info->ntiles)
        return NULL;
    return info->tiles + (size_t)tile * (size_t)(info->bq * info->bkv);
}
