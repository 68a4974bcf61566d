/* Which query rows can see which key rows, decided from positions alone.
 *
 * causal, window and chunk allow, for query position qp, the key interval
 * [first(qp), last(qp)] (core/positions.h), and both ends are
 * non-decreasing in qp. So for a key range [k0, k1):
 *   A(qp) = first(qp) < k1   holds on a prefix of the query rows,
 *   B(qp) = last(qp) >= k0   holds on a suffix,
 * and since first(qp) <= qp <= last(qp) the interval is never empty: a row
 * sees the range iff A and B both hold. Two binary searches find the end
 * of the prefix and the start of the suffix; the rows overlap iff they do. */
#include "ring/ring.h"

#include "core/positions.h"

void mattn__ring_runs(int64_t n, int sp, int sp_rank, mattn_seq_layout layout,
                      mattn__runs *runs)
{
    int64_t start[2], count[2], local = 0;
    runs->n = mattn_seq_split(n, sp, sp_rank, layout, start, count);
    for (int i = 0; i < runs->n; i++) {
        runs->r[i] = (mattn__run){.local = local, .global = start[i], .count = count[i]};
        local += count[i];
    }
}

int mattn__ring_rows_live(const mattn__problem *p, int64_t q_row, int64_t qn, int64_t kv_col,
                          int64_t kn)
{
    if (qn <= 0 || kn <= 0)
        return 0;
    if (mattn__no_structure(p))
        return 1;
    /* key_range on a view whose row 0 and key 0 are the ranges' first ones:
     * it returns key indices clipped to [0, kn), so A is lo < kn and B is
     * hi > 0 (see the top of the file). */
    mattn__problem t = *p;
    t.q_offset = p->q_offset + q_row;
    t.kv_offset = p->kv_offset + kv_col;
    t.S = kn;
    int64_t lo, hi, a = 0, b = qn;
    while (a < b) { /* a = number of rows where A holds */
        int64_t mid = a + (b - a) / 2;
        mattn__key_range(&t, mid, &lo, &hi);
        if (lo < kn)
            a = mid + 1;
        else
            b = mid;
    }
    int64_t a_end = a; /* A holds on rows [0, a_end) */
    a = 0, b = qn;
    while (a < b) { /* first row where B holds */
        int64_t mid = a + (b - a) / 2;
        mattn__key_range(&t, mid, &lo, &hi);
        if (hi > 0)
            b = mid;
        else
            a = mid + 1;
    }
    return a < a_end; /* B holds on [a, qn) */
}

int mattn__ring_needs(const mattn__problem *p, const mattn_dist_shape *shape, int sp,
                      int q_rank, int kv_rank)
{
    mattn__runs q, kv;
    mattn__ring_runs(shape->q_len, sp, q_rank, shape->layout, &q);
    mattn__ring_runs(shape->kv_len, sp, kv_rank, shape->layout, &kv);
    for (int i = 0; i < q.n; i++)
        for (int j = 0; j < kv.n; j++)
            if (mattn__ring_rows_live(p, q.r[i].global, q.r[i].count, kv.r[j].global,
                                      kv.r[j].count))
                return 1;
    return 0;
}
