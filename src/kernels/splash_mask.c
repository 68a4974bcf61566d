/* Splash mask objects: constructors, the exact point predicate, rectangle
 * classification and row evaluation (see splash_mask.h for the tree). */
#include "kernels/splash_mask.h"

#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "core/positions.h"
#include "core/status.h"

/* Same bounds as problem.c: positions and lengths stay far from overflow. */
#define POS_MAX ((int64_t)1 << 60)
#define LEN_MAX ((int64_t)1 << 40)

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* ------------------------------------------------------------------ objects */

static mattn_splash_mask *mask_new(mattn__mask_kind kind)
{
    mattn_splash_mask *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    atomic_init(&m->refs, 1);
    m->kind = kind;
    m->heads = 1;
    m->lazy = 1;
    m->period = 1;
    m->depth = 1;
    return m;
}

/* Takes a reference on an immutable mask: the count is the only mutable
 * field, so casting away const for it is safe. */
static const mattn_splash_mask *mask_ref(const mattn_splash_mask *m)
{
    atomic_fetch_add_explicit(&((mattn_splash_mask *)m)->refs, 1, memory_order_relaxed);
    return m;
}

void mattn_splash_mask_free(mattn_splash_mask *m)
{
    if (m == NULL)
        return;
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1)
        return;
    switch (m->kind) {
    case MATTN__MASK_AND:
    case MATTN__MASK_OR:
        mattn_splash_mask_free((mattn_splash_mask *)m->u.pair.a);
        mattn_splash_mask_free((mattn_splash_mask *)m->u.pair.b);
        break;
    case MATTN__MASK_PER_HEAD:
        for (int64_t h = 0; h < m->heads; h++)
            mattn_splash_mask_free((mattn_splash_mask *)m->u.per_head.child[h]);
        free(m->u.per_head.child);
        break;
    default:
        break;
    }
    free(m);
}

int mattn__splash_mask_band(int64_t dlo, int64_t dhi, int64_t chunk, mattn_splash_mask **mask)
{
    mattn_splash_mask *m = mask_new(MATTN__MASK_BAND);
    if (m == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "splash mask: out of memory");
    m->u.band.dlo = dlo;
    m->u.band.dhi = dhi;
    m->u.band.chunk = chunk;
    m->period = chunk > 0 ? chunk : 1;
    *mask = m;
    return MATTN_OK;
}

int mattn_splash_mask_full(mattn_splash_mask **mask)
{
    if (mask == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash mask: output pointer is NULL");
    return mattn__splash_mask_band(MATTN__BAND_NO_LO, MATTN__BAND_NO_HI, 0, mask);
}

int mattn_splash_mask_causal(int64_t offset, mattn_splash_mask **mask)
{
    if (mask == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash mask: output pointer is NULL");
    if (offset < -POS_MAX || offset > POS_MAX)
        return mattn__fail(MATTN_ERR_ARG, "causal mask offset=%lld beyond +-2^60",
                           (long long)offset);
    return mattn__splash_mask_band(MATTN__BAND_NO_LO, offset, 0, mask);
}

int mattn_splash_mask_local(int64_t left, int64_t right, mattn_splash_mask **mask)
{
    if (mask == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash mask: output pointer is NULL");
    if (left < -1 || right < -1 || left > POS_MAX || right > POS_MAX)
        return mattn__fail(MATTN_ERR_ARG,
                           "local mask (%lld, %lld): each side must be in [-1, 2^60] "
                           "(-1 = unbounded)",
                           (long long)left, (long long)right);
    return mattn__splash_mask_band(left < 0 ? MATTN__BAND_NO_LO : -left,
                                   right < 0 ? MATTN__BAND_NO_HI : right, 0, mask);
}

int mattn_splash_mask_chunked(int64_t chunk, mattn_splash_mask **mask)
{
    if (mask == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash mask: output pointer is NULL");
    if (chunk < 1 || chunk > POS_MAX)
        return mattn__fail(MATTN_ERR_ARG, "chunked mask: chunk=%lld must be in [1, 2^60]",
                           (long long)chunk);
    return mattn__splash_mask_band(MATTN__BAND_NO_LO, 0, chunk, mask);
}

int mattn_splash_mask_dense_ex(const uint8_t *data, int64_t rows, int64_t cols,
                               int64_t stride_row, int64_t q_first, int64_t kv_first,
                               mattn_splash_mask **mask)
{
    if (mask == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash mask: output pointer is NULL");
    *mask = NULL;
    if (rows < 0 || cols < 0 || rows > LEN_MAX || cols > LEN_MAX)
        return mattn__fail(MATTN_ERR_SHAPE, "dense mask [%lld, %lld] has an invalid shape",
                           (long long)rows, (long long)cols);
    if (stride_row < 0)
        return mattn__fail(MATTN_ERR_ARG, "dense mask row stride %lld is negative",
                           (long long)stride_row);
    if (data == NULL && rows > 0 && cols > 0)
        return mattn__fail(MATTN_ERR_ARG, "dense mask data is NULL");
    if (q_first < -POS_MAX || q_first > POS_MAX || kv_first < -POS_MAX || kv_first > POS_MAX)
        return mattn__fail(MATTN_ERR_ARG, "dense mask origin beyond +-2^60");
    mattn_splash_mask *m = mask_new(MATTN__MASK_DENSE);
    if (m == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "splash mask: out of memory");
    m->lazy = 0;
    m->period = 0;
    m->u.dense.data = data;
    m->u.dense.rows = rows;
    m->u.dense.cols = cols;
    m->u.dense.stride = stride_row;
    m->u.dense.q0 = q_first;
    m->u.dense.k0 = kv_first;
    *mask = m;
    return MATTN_OK;
}

int mattn_splash_mask_dense(const uint8_t *data, int64_t rows, int64_t cols,
                            mattn_splash_mask **mask)
{
    return mattn_splash_mask_dense_ex(data, rows, cols, cols, 0, 0, mask);
}

/* lcm of two chunk periods; 0 (no sharing of tiles across q blocks by
 * position) once it exceeds any length a problem can have. */
static int64_t period_lcm(int64_t a, int64_t b)
{
    if (a == 0 || b == 0)
        return 0;
    int64_t x = a, y = b;
    while (y) {
        int64_t t = x % y;
        x = y, y = t;
    }
    int64_t l;
    if (__builtin_mul_overflow(a / x, b, &l) || l > LEN_MAX)
        return 0;
    return l;
}

static int combine(mattn__mask_kind kind, const mattn_splash_mask *a,
                   const mattn_splash_mask *b, mattn_splash_mask **mask)
{
    const char *name = kind == MATTN__MASK_AND ? "and" : "or";
    if (mask == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash mask %s: output pointer is NULL", name);
    *mask = NULL;
    if (a == NULL || b == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash mask %s: an operand is NULL", name);
    if (a->heads > 1 && b->heads > 1 && a->heads != b->heads)
        return mattn__fail(MATTN_ERR_SHAPE,
                           "splash mask %s: per-head operands have %lld and %lld heads", name,
                           (long long)a->heads, (long long)b->heads);
    /* The intersection of two bands of one chunking is a band: keeping it a
     * single leaf keeps its classification exact. */
    if (kind == MATTN__MASK_AND && a->kind == MATTN__MASK_BAND && b->kind == MATTN__MASK_BAND &&
        (a->u.band.chunk == 0 || b->u.band.chunk == 0 || a->u.band.chunk == b->u.band.chunk))
        return mattn__splash_mask_band(max64(a->u.band.dlo, b->u.band.dlo),
                                       min64(a->u.band.dhi, b->u.band.dhi),
                                       max64(a->u.band.chunk, b->u.band.chunk), mask);
    mattn_splash_mask *m = mask_new(kind);
    if (m == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "splash mask: out of memory");
    m->heads = max64(a->heads, b->heads);
    m->lazy = a->lazy && b->lazy;
    m->period = period_lcm(a->period, b->period);
    m->depth = 1 + (a->depth > b->depth ? a->depth : b->depth);
    m->u.pair.a = mask_ref(a);
    m->u.pair.b = mask_ref(b);
    *mask = m;
    return MATTN_OK;
}

int mattn_splash_mask_and(const mattn_splash_mask *a, const mattn_splash_mask *b,
                          mattn_splash_mask **mask)
{
    return combine(MATTN__MASK_AND, a, b, mask);
}

int mattn_splash_mask_or(const mattn_splash_mask *a, const mattn_splash_mask *b,
                         mattn_splash_mask **mask)
{
    return combine(MATTN__MASK_OR, a, b, mask);
}

int mattn_splash_mask_per_head(mattn_splash_mask *const *masks, int64_t heads,
                               mattn_splash_mask **mask)
{
    if (mask == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash per-head mask: output pointer is NULL");
    *mask = NULL;
    if (masks == NULL || heads < 1 || heads > ((int64_t)1 << 31))
        return mattn__fail(MATTN_ERR_ARG,
                           "splash per-head mask: need masks != NULL and 1 <= heads <= 2^31 "
                           "(heads=%lld)",
                           (long long)heads);
    for (int64_t h = 0; h < heads; h++) {
        if (masks[h] == NULL)
            return mattn__fail(MATTN_ERR_ARG, "splash per-head mask: masks[%lld] is NULL",
                               (long long)h);
        if (masks[h]->heads > 1)
            return mattn__fail(MATTN_ERR_ARG,
                               "splash per-head mask: masks[%lld] is itself per-head",
                               (long long)h);
    }
    if (heads == 1) { /* one head for all: the mask itself */
        *mask = (mattn_splash_mask *)mask_ref(masks[0]);
        return MATTN_OK;
    }
    mattn_splash_mask *m = mask_new(MATTN__MASK_PER_HEAD);
    const mattn_splash_mask **child = calloc((size_t)heads, sizeof *child);
    if (m == NULL || child == NULL) {
        free(m);
        free(child);
        return mattn__fail(MATTN_ERR_NOMEM, "splash mask: out of memory");
    }
    m->heads = heads;
    for (int64_t h = 0; h < heads; h++) {
        child[h] = mask_ref(masks[h]);
        m->lazy = m->lazy && masks[h]->lazy;
        m->period = period_lcm(m->period, masks[h]->period);
        m->depth = masks[h]->depth > m->depth ? masks[h]->depth : m->depth;
    }
    m->u.per_head.child = child;
    *mask = m;
    return MATTN_OK;
}

int64_t mattn_splash_mask_heads(const mattn_splash_mask *mask)
{
    return mask ? mask->heads : 0;
}

uint64_t mattn__splash_mask_hash(const mattn_splash_mask *m)
{
    if (m == NULL)
        return 0;
    uint64_t h = mattn__hash_u64(MATTN__HASH_SEED, (uint64_t)m->kind);
    h = mattn__hash_u64(h, (uint64_t)m->heads);
    switch (m->kind) {
    case MATTN__MASK_BAND:
        h = mattn__hash_u64(h, (uint64_t)m->u.band.dlo);
        h = mattn__hash_u64(h, (uint64_t)m->u.band.dhi);
        return mattn__hash_u64(h, (uint64_t)m->u.band.chunk);
    case MATTN__MASK_DENSE:
        h = mattn__hash_u64(h, (uint64_t)m->u.dense.rows);
        h = mattn__hash_u64(h, (uint64_t)m->u.dense.cols);
        h = mattn__hash_u64(h, (uint64_t)m->u.dense.q0);
        h = mattn__hash_u64(h, (uint64_t)m->u.dense.k0);
        for (int64_t r = 0; r < m->u.dense.rows; r++)
            h = mattn__hash_bytes(h, m->u.dense.data + r * m->u.dense.stride,
                                  (size_t)m->u.dense.cols);
        return h;
    case MATTN__MASK_AND:
    case MATTN__MASK_OR:
        h = mattn__hash_u64(h, mattn__splash_mask_hash(m->u.pair.a));
        return mattn__hash_u64(h, mattn__splash_mask_hash(m->u.pair.b));
    case MATTN__MASK_PER_HEAD:
        for (int64_t i = 0; i < m->heads; i++)
            h = mattn__hash_u64(h, mattn__splash_mask_hash(m->u.per_head.child[i]));
        return h;
    }
    return h;
}

/* ------------------------------------------------------------------ predicate */

static int band_allowed(const mattn_splash_mask *m, int64_t qp, int64_t kp)
{
    int64_t d = kp - qp, c = m->u.band.chunk;
    if (d < m->u.band.dlo || d > m->u.band.dhi)
        return 0;
    return c == 0 || mattn__floor_div(qp, c) == mattn__floor_div(kp, c);
}

int mattn__mask_allowed(const mattn_splash_mask *m, int64_t head, int64_t qp, int64_t kp)
{
    switch (m->kind) {
    case MATTN__MASK_BAND:
        return band_allowed(m, qp, kp);
    case MATTN__MASK_DENSE: {
        int64_t r = qp - m->u.dense.q0, c = kp - m->u.dense.k0;
        if (r < 0 || r >= m->u.dense.rows || c < 0 || c >= m->u.dense.cols)
            return 0;
        return m->u.dense.data[r * m->u.dense.stride + c] != 0;
    }
    case MATTN__MASK_AND:
        return mattn__mask_allowed(m->u.pair.a, head, qp, kp) &&
               mattn__mask_allowed(m->u.pair.b, head, qp, kp);
    case MATTN__MASK_OR:
        return mattn__mask_allowed(m->u.pair.a, head, qp, kp) ||
               mattn__mask_allowed(m->u.pair.b, head, qp, kp);
    case MATTN__MASK_PER_HEAD:
        return mattn__mask_allowed(m->u.per_head.child[head], head, qp, kp);
    }
    return 0;
}

static int check_head(const mattn_splash_mask *m, int64_t head, int allow_all)
{
    if (m == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash mask is NULL");
    if (head < (allow_all ? -1 : 0) || (m->heads > 1 && head >= m->heads))
        return mattn__fail(MATTN_ERR_ARG, "head %lld is outside the mask's %lld head(s)",
                           (long long)head, (long long)m->heads);
    return MATTN_OK;
}

int mattn_splash_mask_allowed(const mattn_splash_mask *mask, int64_t head, int64_t qp,
                              int64_t kp)
{
    int rc = check_head(mask, head, 0);
    if (rc)
        return rc;
    if (qp < -2 * POS_MAX || qp > 2 * POS_MAX || kp < -2 * POS_MAX || kp > 2 * POS_MAX)
        return mattn__fail(MATTN_ERR_ARG, "position beyond +-2^61");
    return mattn__mask_allowed(mask, mask->heads > 1 ? head : 0, qp, kp);
}

/* ------------------------------------------------------------------ rectangles */

/* A band without chunks over [qa, qb] x [ka, kb]: the pairs' differences
 * kp - qp cover exactly [ka - qb, kb - qa], so compare that with [dlo, dhi]. */
static mattn_splash_block band_plain(int64_t dlo, int64_t dhi, int64_t qa, int64_t qb,
                                     int64_t ka, int64_t kb)
{
    int64_t dmin = ka - qb, dmax = kb - qa;
    if (dlo > dhi || dmin > dhi || dmax < dlo)
        return MATTN_SPLASH_EMPTY;
    if (dmin >= dlo && dmax <= dhi)
        return MATTN_SPLASH_FULL;
    return MATTN_SPLASH_PARTIAL;
}

/* With chunks, only pairs inside one common chunk c can be allowed. Chunks
 * strictly between the first and last common one are covered whole by both
 * ranges, so they all look alike (the band depends on kp - qp only): the
 * first, the last and one interior chunk decide emptiness in O(1). */
static mattn_splash_block band_classify(const mattn_splash_mask *m, int64_t qa, int64_t qb,
                                        int64_t ka, int64_t kb)
{
    int64_t dlo = m->u.band.dlo, dhi = m->u.band.dhi, C = m->u.band.chunk;
    if (C == 0)
        return band_plain(dlo, dhi, qa, qb, ka, kb);
    int64_t cqa = mattn__floor_div(qa, C), cqb = mattn__floor_div(qb, C);
    int64_t cka = mattn__floor_div(ka, C), ckb = mattn__floor_div(kb, C);
    int64_t lo = max64(cqa, cka), hi = min64(cqb, ckb);
    if (lo > hi)
        return MATTN_SPLASH_EMPTY;
    if (cqa == cqb && cka == ckb && cqa == cka)
        return band_plain(dlo, dhi, qa, qb, ka, kb);
    int64_t probe[3] = {lo, hi, hi - lo >= 2 ? lo + 1 : lo};
    for (int i = 0; i < 3; i++) {
        int64_t c0 = probe[i] * C, c1 = c0 + C - 1;
        if (band_plain(dlo, dhi, max64(qa, c0), min64(qb, c1), max64(ka, c0), min64(kb, c1)) !=
            MATTN_SPLASH_EMPTY)
            return MATTN_SPLASH_PARTIAL; /* some pair allowed, some pair in two chunks */
    }
    return MATTN_SPLASH_EMPTY;
}

/* Reads the part of the rectangle inside the array; pairs outside it are
 * disallowed. Stops as soon as both an allowed and a disallowed pair are seen. */
static mattn_splash_block dense_classify(const mattn_splash_mask *m, int64_t qa, int64_t qb,
                                         int64_t ka, int64_t kb)
{
    int64_t ra = max64(qa - m->u.dense.q0, 0), rb = min64(qb - m->u.dense.q0, m->u.dense.rows - 1);
    int64_t ca = max64(ka - m->u.dense.k0, 0), cb = min64(kb - m->u.dense.k0, m->u.dense.cols - 1);
    if (ra > rb || ca > cb)
        return MATTN_SPLASH_EMPTY;
    int any_zero = ra != qa - m->u.dense.q0 || rb != qb - m->u.dense.q0 ||
                   ca != ka - m->u.dense.k0 || cb != kb - m->u.dense.k0;
    int any_one = 0;
    int64_t width = cb - ca + 1;
    for (int64_t r = ra; r <= rb && !(any_one && any_zero); r++) {
        const uint8_t *row = m->u.dense.data + r * m->u.dense.stride + ca;
        /* 8 bytes at a time: OR finds a nonzero byte; (w - 0x01..) & ~w &
         * 0x80.. is nonzero iff some byte of w is zero. Branch-free, so it
         * vectorises (a sdpa call scans the whole T x S mask this way). */
        uint64_t ors = 0, zeros = 0;
        int64_t c = 0;
        for (; c + 8 <= width; c += 8) {
            uint64_t w;
            memcpy(&w, row + c, 8);
            ors |= w;
            zeros |= (w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL;
        }
        for (; c < width; c++) {
            ors |= row[c];
            zeros |= row[c] == 0;
        }
        any_one |= ors != 0;
        any_zero |= zeros != 0;
    }
    if (!any_one)
        return MATTN_SPLASH_EMPTY;
    return any_zero ? MATTN_SPLASH_PARTIAL : MATTN_SPLASH_FULL;
}

mattn_splash_block mattn__mask_classify(const mattn_splash_mask *m, int64_t head, int64_t qa,
                                        int64_t qb, int64_t ka, int64_t kb)
{
    mattn_splash_block x, y;
    switch (m->kind) {
    case MATTN__MASK_BAND:
        return band_classify(m, qa, qb, ka, kb);
    case MATTN__MASK_DENSE:
        return dense_classify(m, qa, qb, ka, kb);
    case MATTN__MASK_AND:
        if ((x = mattn__mask_classify(m->u.pair.a, head, qa, qb, ka, kb)) == MATTN_SPLASH_EMPTY)
            return x;
        if ((y = mattn__mask_classify(m->u.pair.b, head, qa, qb, ka, kb)) == MATTN_SPLASH_EMPTY)
            return y;
        return x == MATTN_SPLASH_FULL && y == MATTN_SPLASH_FULL ? MATTN_SPLASH_FULL
                                                                : MATTN_SPLASH_PARTIAL;
    case MATTN__MASK_OR:
        if ((x = mattn__mask_classify(m->u.pair.a, head, qa, qb, ka, kb)) == MATTN_SPLASH_FULL)
            return x;
        if ((y = mattn__mask_classify(m->u.pair.b, head, qa, qb, ka, kb)) == MATTN_SPLASH_FULL)
            return y;
        return x == MATTN_SPLASH_EMPTY && y == MATTN_SPLASH_EMPTY ? MATTN_SPLASH_EMPTY
                                                                  : MATTN_SPLASH_PARTIAL;
    case MATTN__MASK_PER_HEAD:
        if (head >= 0)
            return mattn__mask_classify(m->u.per_head.child[head], head, qa, qb, ka, kb);
        /* Every head at once: one answer only when all heads agree. */
        x = mattn__mask_classify(m->u.per_head.child[0], 0, qa, qb, ka, kb);
        for (int64_t h = 1; h < m->heads && x != MATTN_SPLASH_PARTIAL; h++)
            if (mattn__mask_classify(m->u.per_head.child[h], h, qa, qb, ka, kb) != x)
                x = MATTN_SPLASH_PARTIAL;
        return x;
    }
    return MATTN_SPLASH_PARTIAL;
}

int mattn_splash_mask_classify(const mattn_splash_mask *mask, int64_t head, int64_t q_first,
                               int64_t q_count, int64_t kv_first, int64_t kv_count,
                               mattn_splash_block *state)
{
    int rc = check_head(mask, head, 1);
    if (rc)
        return rc;
    if (state == NULL)
        return mattn__fail(MATTN_ERR_ARG, "splash classify: state pointer is NULL");
    if (q_count < 0 || kv_count < 0 || q_count > LEN_MAX || kv_count > LEN_MAX ||
        q_first < -POS_MAX || q_first > POS_MAX || kv_first < -POS_MAX || kv_first > POS_MAX)
        return mattn__fail(MATTN_ERR_ARG,
                           "splash classify: rectangle (%lld +%lld) x (%lld +%lld) is invalid",
                           (long long)q_first, (long long)q_count, (long long)kv_first,
                           (long long)kv_count);
    if (q_count == 0 || kv_count == 0) {
        *state = MATTN_SPLASH_EMPTY;
        return MATTN_OK;
    }
    *state = mattn__mask_classify(mask, mask->heads > 1 ? head : 0, q_first,
                                  q_first + q_count - 1, kv_first, kv_first + kv_count - 1);
    return MATTN_OK;
}

/* ------------------------------------------------------------------ rows */

void mattn__mask_row(const mattn_splash_mask *m, int64_t head, int64_t qp, int64_t k0,
                     int64_t n, uint8_t *out, uint8_t *stack)
{
    switch (m->kind) {
    case MATTN__MASK_BAND: {
        /* One interval of keys per query: [qp + dlo, qp + dhi] within its chunk. */
        int64_t lo = max64(k0, qp + m->u.band.dlo), hi = min64(k0 + n - 1, qp + m->u.band.dhi);
        if (m->u.band.chunk > 0) {
            int64_t c0 = mattn__floor_div(qp, m->u.band.chunk) * m->u.band.chunk;
            lo = max64(lo, c0);
            hi = min64(hi, c0 + m->u.band.chunk - 1);
        }
        if (lo > hi) {
            memset(out, 0, (size_t)n);
            return;
        }
        memset(out, 0, (size_t)(lo - k0));
        memset(out + (lo - k0), 1, (size_t)(hi - lo + 1));
        memset(out + (hi - k0 + 1), 0, (size_t)(k0 + n - 1 - hi));
        return;
    }
    case MATTN__MASK_DENSE: {
        int64_t r = qp - m->u.dense.q0;
        memset(out, 0, (size_t)n);
        if (r < 0 || r >= m->u.dense.rows)
            return;
        /* Columns of the array that fall in [k0, k0 + n). */
        int64_t c0 = max64(k0 - m->u.dense.k0, 0);
        int64_t c1 = min64(k0 + n - m->u.dense.k0, m->u.dense.cols);
        const uint8_t *row = m->u.dense.data + r * m->u.dense.stride;
        for (int64_t c = c0; c < c1; c++)
            out[c + m->u.dense.k0 - k0] = row[c] != 0;
        return;
    }
    case MATTN__MASK_AND:
    case MATTN__MASK_OR:
        mattn__mask_row(m->u.pair.a, head, qp, k0, n, out, stack);
        mattn__mask_row(m->u.pair.b, head, qp, k0, n, stack, stack + n);
        if (m->kind == MATTN__MASK_AND)
            for (int64_t j = 0; j < n; j++)
                out[j] &= stack[j];
        else
            for (int64_t j = 0; j < n; j++)
                out[j] |= stack[j];
        return;
    case MATTN__MASK_PER_HEAD:
        mattn__mask_row(m->u.per_head.child[head], head, qp, k0, n, out, stack);
        return;
    }
}

/* ------------------------------------------------------------------ problems */

/* Dense leaves index the problem's own rows and keys, so they are placed at
 * (q_offset, kv_offset) with the mask's row stride. */
int mattn__splash_problem_mask(const mattn__problem *p, mattn_splash_mask **out, int *used_mask)
{
    mattn_splash_mask *band = NULL, *dense = NULL, **heads = NULL;
    int rc = MATTN_OK;
    *out = NULL;
    *used_mask = 0;
    if (!mattn__no_structure(p)) {
        int64_t dlo = p->window_left >= 0 ? -p->window_left : MATTN__BAND_NO_LO;
        int64_t dhi = p->window_right >= 0 ? p->window_right : MATTN__BAND_NO_HI;
        if (p->causal && dhi > 0)
            dhi = 0;
        if ((rc = mattn__splash_mask_band(dlo, dhi, p->chunk, &band)))
            goto done;
    }
    if (p->mask != NULL && p->mask_sb == 0) {
        int64_t nh = p->mask_sh != 0 ? p->Hq : 1;
        heads = calloc((size_t)nh, sizeof *heads);
        if (heads == NULL) {
            rc = mattn__fail(MATTN_ERR_NOMEM, "splash mask: out of memory");
            goto done;
        }
        for (int64_t h = 0; h < nh; h++)
            if ((rc = mattn_splash_mask_dense_ex(p->mask + h * p->mask_sh, p->T, p->S,
                                                 p->mask_st, p->q_offset, p->kv_offset,
                                                 &heads[h])))
                goto done;
        if ((rc = mattn_splash_mask_per_head(heads, nh, &dense)))
            goto done;
        *used_mask = 1;
    }
    if (band && dense)
        rc = mattn_splash_mask_and(band, dense, out);
    else {
        *out = band ? band : dense;
        band = dense = NULL; /* ownership moved to *out */
    }
done:
    if (heads) {
        for (int64_t h = 0; h < (p->mask_sh != 0 ? p->Hq : 1); h++)
            mattn_splash_mask_free(heads[h]);
        free(heads);
    }
    mattn_splash_mask_free(band);
    mattn_splash_mask_free(dense);
    return rc;
}
