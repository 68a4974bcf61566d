/* float64 reference of decode for `mattn decode --check` (see decode_ref.h).
 *
 * Error model (u = 2^-24, fp32 unit roundoff), per row over its n allowed keys:
 *  - a logit scale * dot(q, k) in fp32 is off by (D + 2) u |scale| sum|q_d k_d|;
 *    the soft cap (slope <= 1) adds 4 u cap, the final rounding 2 u |s|;
 *    ds = the largest over the row.
 *  - lse moves by 2 ds from the logits plus the rounding of n + 1 summed
 *    terms and exp/log: 2 ds + (n + 9) u (1 + |lse|).
 *  - o sums n weights exp(s - lse) (each off by ds + d(lse) relatively)
 *    times |v| <= vmax, plus the rounding of the sum and the division.
 *  - every merge of two (o, lse) partials (split-KV pieces, sp ranks, the
 *    sink) rounds two weights, a sum and a log: 8 u vmax on o and
 *    4 u (1 + |lse|) on lse each. merges = pieces + ranks + 1 bounds them.
 * Worst cases all, so a correct kernel never exceeds them. */
#include "cli/decode_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

#define U (1.0 / 16777216.0)

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* SPEC §3 for a query at qp over a sequence offering [lo, hi). */
static int allowed(const mattn__dref_problem *p, int64_t qp, int64_t lo, int64_t hi, int64_t kp)
{
    if (kp < lo || kp >= hi || kp > qp)
        return 0;
    if (p->window_left >= 0 && kp < qp - p->window_left)
        return 0;
    if (p->window_right >= 0 && kp > qp + p->window_right)
        return 0;
    if (p->chunk > 0 && floor_div(qp, p->chunk) != floor_div(kp, p->chunk))
        return 0;
    return 1;
}

static const float *row_of(const mattn__dref_problem *p, const float *x, int64_t dim, int64_t s,
                           int64_t j, int64_t hk)
{
    int64_t row;
    if (p->page_size == 0)
        row = s * p->S + j;
    else
        row = (int64_t)p->table[s * p->max_pages + j / p->page_size] * p->page_size +
              j % p->page_size;
    return x + (row * p->Hkv + hk) * dim;
}

static double ratio(double err, double bound)
{
    if (!(err == err))
        return INFINITY;
    if (bound <= 0.0)
        return err == 0.0 ? 0.0 : INFINITY;
    return err / bound;
}

/* |got - want| / bound, where equal infinities (an empty row's -inf) match. */
static double compare(double got, double want, double bound, double *max_err)
{
    if (isinf(want) || isinf(got))
        return got == want ? 0.0 : INFINITY;
    double err = fabs(got - want);
    if (!(err <= *max_err))
        *max_err = err;
    return ratio(err, bound);
}

typedef struct row_ref {
    double lse, m, l, tol_o, tol_lse, tol_m, tol_l;
} row_ref;

/* Row (s, query at qp, head h): o[Dv] and the statistics in float64. */
static void row_compute(const mattn__dref_problem *p, int64_t s, int64_t t, int64_t qp,
                        int64_t h, double *o, row_ref *r)
{
    const int64_t hk = h / (p->Hq / p->Hkv), lo = p->lo ? p->lo[s] : 0, hi = p->hi[s];
    const float *q = p->q + (t * p->Hq + h) * p->D;
    const double sink = p->sinks ? (double)p->sinks[h] : -INFINITY;
    double m = sink, ds = 0.0, vmax = 0.0;
    int64_t n = 0;
    for (int64_t j = lo; j < hi; j++) { /* pass 1: the max and the error terms */
        if (!allowed(p, qp, lo, hi, j))
            continue;
        const float *k = row_of(p, p->k, p->D, s, j, hk), *v = row_of(p, p->v, p->Dv, s, j, hk);
        double dot = 0.0, mag = 0.0;
        for (int64_t d = 0; d < p->D; d++) {
            dot += (double)q[d] * (double)k[d];
            mag += fabs((double)q[d] * (double)k[d]);
        }
        double x = p->scale * dot, err = (double)(p->D + 2) * U * fabs(p->scale) * mag;
        if (p->softcap > 0.0) {
            x = p->softcap * tanh(x / p->softcap);
            err += 4.0 * U * p->softcap;
        }
        err += 2.0 * U * fabs(x);
        m = x > m ? x : m;
        ds = err > ds ? err : ds;
        for (int64_t d = 0; d < p->Dv; d++)
            vmax = fabs((double)v[d]) > vmax ? fabs((double)v[d]) : vmax;
        n++;
    }
    memset(o, 0, sizeof(double) * (size_t)p->Dv);
    *r = (row_ref){.lse = -INFINITY, .m = -INFINITY, .l = 0.0};
    if (m == -INFINITY) /* no allowed key, no sink: o = 0, lse = -inf exactly */
        return;
    double l = p->sinks ? exp(sink - m) : 0.0;
    for (int64_t j = lo; j < hi; j++) { /* pass 2: the weights */
        if (!allowed(p, qp, lo, hi, j))
            continue;
        const float *k = row_of(p, p->k, p->D, s, j, hk), *v = row_of(p, p->v, p->Dv, s, j, hk);
        double dot = 0.0;
        for (int64_t d = 0; d < p->D; d++)
            dot += (double)q[d] * (double)k[d];
        double x = p->scale * dot;
        if (p->softcap > 0.0)
            x = p->softcap * tanh(x / p->softcap);
        double w = exp(x - m);
        l += w;
        for (int64_t d = 0; d < p->Dv; d++)
            o[d] += w * (double)v[d];
    }
    for (int64_t d = 0; d < p->Dv; d++)
        o[d] /= l;
    double merges = (double)(n / (p->piece > 0 ? p->piece : 1) + 2 + p->ranks + 1);
    double nn = (double)n, lse = m + log(l);
    r->lse = lse, r->m = m, r->l = l;
    r->tol_lse = 2.0 * ds + (nn + 9.0) * U * (1.0 + fabs(lse)) + 4.0 * merges * U * (1.0 + fabs(lse));
    r->tol_o = (ds + r->tol_lse + (nn + 16.0) * U + 8.0 * merges * U) * vmax + U * vmax;
    r->tol_m = ds + 2.0 * U * fabs(m);
    r->tol_l = l * (r->tol_lse + 2.0 * r->tol_m + 8.0 * U);
}

int mattn__dref_check(const mattn__dref_problem *p, int64_t rows, mattn__dref_report *r)
{
    memset(r, 0, sizeof *r);
    const int64_t total = p->T * p->Hq;
    if (rows <= 0 || rows > total)
        rows = total;
    double *o = malloc(sizeof(double) * (size_t)(p->Dv > 0 ? p->Dv : 1)); /* Dv is the file's */
    if (o == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "check: cannot allocate a row of %lld doubles",
                           (long long)p->Dv);
    int64_t s = 0;
    for (int64_t x = 0; x < rows; x++) {
        /* Evenly spaced rows: floor(x * total / rows), exact in 128 bits. */
        typedef unsigned __int128 u128;
        int64_t row = (int64_t)((u128)x * (u128)total / (u128)rows);
        int64_t t = row / p->Hq, h = row % p->Hq;
        /* sequence of query row t (rows are visited in increasing order) */
        if (p->cu)
            while (s + 1 < p->nseq && p->cu[s + 1] <= t)
                s++;
        else
            s = t;
        int64_t qn = p->cu ? p->cu[s + 1] - p->cu[s] : 1, first = p->cu ? p->cu[s] : s;
        int64_t qp = p->hi[s] - qn + (t - first);
        row_ref ref;
        row_compute(p, s, t, qp, h, o, &ref);
        const float *got = p->o + (t * p->Hq + h) * p->Dv;
        double worst = 0.0;
        for (int64_t d = 0; d < p->Dv; d++) {
            double e = fabs((double)got[d] - o[d]), q = ratio(e, ref.m == -INFINITY ? 0.0 : ref.tol_o);
            if (!(e <= r->max_err_o))
                r->max_err_o = e;
            worst = q > worst || q != q ? q : worst;
        }
        int64_t at = t * p->st + h * p->sh;
        double q;
        if (p->lse && (q = compare(p->lse[at], ref.lse, ref.tol_lse, &r->max_err_lse)) > worst)
            worst = q;
        if (p->m && (q = compare(p->m[at], ref.m, ref.tol_m, &r->max_err_m)) > worst)
            worst = q;
        if (p->l && (q = compare(p->l[at], ref.l, ref.tol_l, &r->max_err_l)) > worst)
            worst = q;
        if (worst > r->max_ratio || worst != worst) {
            r->max_ratio = worst != worst ? INFINITY : worst;
            r->worst_t = t, r->worst_h = h;
        }
    }
    r->rows = rows;
    free(o);
    return MATTN_OK;
}
