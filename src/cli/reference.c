/* float64 reference of SPEC §3-4 for `mattn run --check` (see reference.h).
 *
 * Error model for the bounds (u = 2^-24, the fp32 unit roundoff). For one row:
 *  - a logit s = scale * sum_d q_d k_d computed in fp32 is off by at most
 *    (D + 2) u |scale| sum_d |q_d k_d| (dot product plus the scaling); the
 *    soft cap c tanh(s / c) has slope <= 1 and adds ~4 u c of its own; adding
 *    the bias adds 2 u (|s| + |bias|). ds = the largest over the row's keys.
 *  - lse = m + log(sum exp(s - m)) moves by at most ds from the logits, plus
 *    the rounding of n + 1 summed terms and of exp/log: 2 ds + (n + 9) u (1 + |lse|).
 *  - each probability exp(s - lse) is then off by ds + d(lse) relatively, and
 *    the output sums n of them times |v| <= vmax, scaled by 1/(1 - p).
 * The bounds are worst cases, so a correct fp32 kernel never exceeds them. */
#include "cli/reference.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/dropout.h"
#include "core/status.h"

#define UNIT_ROUNDOFF (1.0 / 16777216.0)

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

int64_t mattn__ref_structural_pairs(const mattn_options *o, int64_t T, int64_t S)
{
    int64_t total = 0;
    for (int64_t i = 0; i < T; i++) {
        int64_t qp = o->q_offset + i;
        /* Allowed absolute key positions [first, last]. */
        int64_t first = o->kv_offset, last = o->kv_offset + S - 1;
        if (o->causal && qp < last)
            last = qp;
        if (o->window_left >= 0 && qp - o->window_left > first)
            first = qp - o->window_left;
        if (o->window_right >= 0 && qp + o->window_right < last)
            last = qp + o->window_right;
        if (o->chunk > 0) {
            int64_t c0 = floor_div(qp, o->chunk) * o->chunk;
            if (c0 > first)
                first = c0;
            if (c0 + o->chunk - 1 < last)
                last = c0 + o->chunk - 1;
        }
        if (last >= first)
            total += last - first + 1;
    }
    return total;
}

/* SPEC §3: key j is allowed for row i of (b, h) iff every enabled predicate holds. */
static int allowed(const mattn__ref_problem *p, int64_t b, int64_t h, int64_t i, int64_t j)
{
    const mattn_options *o = p->opts;
    int64_t qp = o->q_offset + i, kp = o->kv_offset + j;
    if (o->causal && kp > qp)
        return 0;
    if (o->window_left >= 0 && kp < qp - o->window_left)
        return 0;
    if (o->window_right >= 0 && kp > qp + o->window_right)
        return 0;
    if (o->chunk > 0 && floor_div(qp, o->chunk) != floor_div(kp, o->chunk))
        return 0;
    if (o->q_segment_ids) {
        int32_t qs = o->q_segment_ids[b * p->q->seq + i];
        int32_t ks = o->kv_segment_ids[b * p->k->seq + j];
        if (qs < 0 || qs != ks)
            return 0;
    }
    if (o->mask.data) {
        const mattn_mask *m = &o->mask;
        int64_t mb = m->batch == 1 ? 0 : b, mh = m->heads == 1 ? 0 : h;
        if (!m->data[mb * m->stride_batch + mh * m->stride_head + i * m->stride_row + j])
            return 0;
    }
    return 1;
}

/* SPEC §4 dropout: keep iff u(seed, b, h, qp, kp) >= p, with global b and h. */
static int kept(const mattn_options *o, int64_t b, int64_t h, int64_t qp, int64_t kp)
{
    uint64_t key = mattn__dropout_row_key(o->dropout_seed, o->dropout_batch_offset + b,
                                          o->dropout_head_offset + h, qp);
    return (double)mattn__dropout_u24(key, kp) / 16777216.0 >= (double)o->dropout_p;
}

/* |got - want| against a bound: the ratio, +inf for NaN or a nonzero error
 * where the bound is 0 (values that must be exact). */
static double ratio(double err, double bound)
{
    if (!(err == err))
        return INFINITY;
    if (bound <= 0.0)
        return err == 0.0 ? 0.0 : INFINITY;
    return err / bound;
}

typedef struct row_verdict {
    double err_o, err_lse, err_w, ratio;
} row_verdict;

static void note(row_verdict *v, double *err_slot, double err, double bound)
{
    if (!(err == err))
        err = INFINITY;
    if (err > *err_slot)
        *err_slot = err;
    double r = ratio(err, bound);
    if (r > v->ratio)
        v->ratio = r;
}

/* Logit (i, j) of batch b, q head h (SPEC §4): scale q.k, the soft cap,
 * then the bias, in float64; *err bounds the float32 error of the same
 * steps and *raw (if not NULL) receives the value before the cap. */
static double logit(const mattn_options *opt, int64_t b, int64_t h, int64_t i, int64_t j,
                    const float *qi, const float *kj, int64_t D, double scale, double *err,
                    double *raw)
{
    const double u = UNIT_ROUNDOFF, cap = opt->softcap;
    double dot = 0.0, mag = 0.0;
    for (int64_t d = 0; d < D; d++) {
        dot += (double)qi[d] * (double)kj[d];
        mag += fabs((double)qi[d] * (double)kj[d]);
    }
    double x = scale * dot, e = (double)(D + 2) * u * fabs(scale) * mag;
    if (raw)
        *raw = x;
    if (cap > 0.0) {
        x = cap * tanh(x / cap);
        e += 4.0 * u * cap;
    }
    if (opt->bias.data) {
        const mattn_bias *bi = &opt->bias;
        int64_t bb = bi->batch == 1 ? 0 : b, bh = bi->heads == 1 ? 0 : h;
        double bias = bi->data[bb * bi->stride_batch + bh * bi->stride_head +
                               i * bi->stride_row + j];
        x += bias;
        e += 2.0 * u * (fabs(x) + fabs(bias));
    }
    *err = e;
    return x;
}

/* One query row (flat index r = (b * Hq + h) * T + i). Scratch: s [S], ok [S],
 * oref [Dv]. */
static void check_row(const mattn__ref_problem *p, int64_t r, double *s, char *ok, double *oref,
                      row_verdict *v)
{
    const mattn_tensor *q = p->q, *k = p->k, *vt = p->v, *o = p->o;
    const mattn_options *opt = p->opts;
    const int64_t T = q->seq, S = k->seq, Hq = q->heads, D = q->dim, Dv = vt->dim;
    const int64_t b = r / (Hq * T), h = r / T % Hq, i = r % T;
    const int64_t hk = h / (Hq / k->heads);
    const double u = UNIT_ROUNDOFF;
    /* The library holds the scale as a float: the default 1/sqrt(D) is
     * applied rounded to fp32, so that is the exact scale to compare with. */
    const double scale = opt->scale != 0.0f ? (double)opt->scale
                                            : (double)(float)(1.0 / sqrt((double)D));
    const double sink = opt->sinks ? (double)opt->sinks[h] : -INFINITY;
    const float *qi = q->data + b * q->stride_batch + i * q->stride_seq + h * q->stride_head;

    double m = sink, ds = 0.0, vmax = 0.0;
    int64_t n = 0;
    for (int64_t j = 0; j < S; j++) {
        ok[j] = (char)allowed(p, b, h, i, j);
        if (!ok[j])
            continue;
        const float *kj = k->data + b * k->stride_batch + j * k->stride_seq + hk * k->stride_head;
        const float *vj = vt->data + b * vt->stride_batch + j * vt->stride_seq +
                          hk * vt->stride_head;
        double err, x = logit(opt, b, h, i, j, qi, kj, D, scale, &err, NULL);
        s[j] = x;
        ds = err > ds ? err : ds;
        m = x > m ? x : m;
        for (int64_t d = 0; d < Dv; d++)
            vmax = fabs((double)vj[d]) > vmax ? fabs((double)vj[d]) : vmax;
        n++;
    }

    const float *orow = o->data + b * o->stride_batch + i * o->stride_seq + h * o->stride_head;
    const float *wrow = p->weights ? p->weights + r * S : NULL;
    const int64_t lidx = r;
    memset(v, 0, sizeof *v);

    if (m == -INFINITY) {
        /* SPEC §4: a row with no allowed key (and no finite sink) is o = 0,
         * lse = -inf exactly; never NaN. */
        for (int64_t d = 0; d < Dv; d++)
            note(v, &v->err_o, fabs((double)orow[d]), 0.0);
        if (p->lse)
            note(v, &v->err_lse, p->lse[lidx] == -INFINITY ? 0.0 : INFINITY, 0.0);
        for (int64_t j = 0; wrow && j < S; j++)
            note(v, &v->err_w, fabs((double)wrow[j]), 0.0);
        return;
    }

    double l = sink > -INFINITY ? exp(sink - m) : 0.0;
    for (int64_t j = 0; j < S; j++)
        if (ok[j])
            l += exp(s[j] - m);
    const double lse = m + log(l);
    const double dscale = opt->dropout_p > 0.0f ? 1.0 / (1.0 - (double)opt->dropout_p) : 1.0;
    const double nn = (double)(n + 1);
    const double tol_lse = 2.0 * ds + (nn + 8.0) * u * (1.0 + fabs(lse));
    const double rel_w = ds + tol_lse + 8.0 * u;
    const double tol_o = ((rel_w + (nn + 8.0) * u) * dscale + u) * vmax;

    memset(oref, 0, sizeof(double) * (size_t)Dv);
    for (int64_t j = 0; j < S; j++) {
        if (!ok[j]) {
            if (wrow)
                note(v, &v->err_w, fabs((double)wrow[j]), 0.0);
            continue;
        }
        double w = exp(s[j] - m) / l;
        if (wrow) /* weights are before dropout; below FLT_MIN fp32 may flush */
            note(v, &v->err_w, fabs((double)wrow[j] - w), rel_w * w + FLT_MIN);
        if (opt->dropout_p > 0.0f)
            w = kept(opt, b, h, opt->q_offset + i, opt->kv_offset + j) ? w * dscale : 0.0;
        const float *vj = vt->data + b * vt->stride_batch + j * vt->stride_seq +
                          hk * vt->stride_head;
        for (int64_t d = 0; d < Dv; d++)
            oref[d] += w * (double)vj[d];
    }
    for (int64_t d = 0; d < Dv; d++)
        note(v, &v->err_o, fabs((double)orow[d] - oref[d]), tol_o);
    if (p->lse)
        note(v, &v->err_lse, fabs((double)p->lse[lidx] - lse), tol_lse);
}

int mattn__ref_check(const mattn__ref_problem *p, int64_t rows, int threads,
                     mattn__ref_progress progress, void *ctx, mattn__ref_report *report)
{
    const int64_t total = p->q->batch * p->q->heads * p->q->seq;
    const int64_t S = p->k->seq, Dv = p->v->dim;
    const int64_t n = rows <= 0 || rows > total ? total : rows;
    int64_t done = 0;
    int nomem = 0;
    memset(report, 0, sizeof *report);
    report->rows = n;
    if (threads < 1)
        threads = 1;

#pragma omp parallel num_threads(threads)
    {
        double *s = malloc(sizeof(double) * (size_t)(S + Dv + 1));
        char *ok = malloc((size_t)S + 1);
        row_verdict mine = {0, 0, 0, 0};
        int64_t worst = 0;
        if (s == NULL || ok == NULL) {
#pragma omp atomic write
            nomem = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t x = 0; x < n; x++) {
            int stop;
#pragma omp atomic read
            stop = nomem;
            if (stop)
                continue;
            /* Evenly spaced rows: floor(x * total / n), exact in 128 bits. */
            typedef unsigned __int128 u128;
            int64_t r = (int64_t)((u128)x * (u128)total / (u128)n);
            row_verdict v;
            check_row(p, r, s, ok, s + S, &v);
            mine.err_o = v.err_o > mine.err_o ? v.err_o : mine.err_o;
            mine.err_lse = v.err_lse > mine.err_lse ? v.err_lse : mine.err_lse;
            mine.err_w = v.err_w > mine.err_w ? v.err_w : mine.err_w;
            if (v.ratio > mine.ratio)
                mine.ratio = v.ratio, worst = r;
            int64_t now;
#pragma omp atomic capture
            now = ++done;
            if (progress && omp_get_thread_num() == 0)
                progress(ctx, now, n);
        }
#pragma omp critical(mattn_cli_reference)
        {
            if (mine.err_o > report->max_err_o)
                report->max_err_o = mine.err_o;
            if (mine.err_lse > report->max_err_lse)
                report->max_err_lse = mine.err_lse;
            if (mine.err_w > report->max_err_weights)
                report->max_err_weights = mine.err_w;
            if (mine.ratio > report->max_ratio)
                report->max_ratio = mine.ratio, report->worst_row = worst;
        }
        free(s);
        free(ok);
    }
    if (progress)
        progress(ctx, n, n);
    return nomem ? mattn__fail(MATTN_ERR_NOMEM, "out of memory in the reference check")
                 : MATTN_OK;
}

/* ------------------------------------------------------------------ gradients */

/* SPEC §5 from the formulas, per query row (b, h, i), with W = P*Z:
 *   dW_j = do_i . v_j,  D_i = sum_j W_j dW_j,  dS_j = P_j (Z_j dW_j - D_i),
 *   dx_j = dS_j (1 - tanh^2(x_j / cap)) (x_j the logit before the cap),
 *   dq_i = scale sum_j dx_j k_j;  dk_j, dv_j sum (scale dx_ij q_i), (W_ij do_i)
 *   over the rows and q heads of the group;  dsink_h = -sum exp(sink - lse_i) D_i.
 * Error bounds extend the forward's (top of this file): P_j has relative error
 * eP = ds + tol_lse + 8u; dW_j is a dot of Dv terms; the kernel forms D_i from
 * its own fp32 o, whose error is the forward's tol_o; a sum of n terms adds
 * (n + 2) u of the sum of magnitudes; the cap's derivative moves by at most
 * 2 ds / cap with the logit. */

typedef struct grad_row {
    double lse, Di, errD, eP;
    int64_t n;
    int empty; /* no allowed key: zero gradients */
} grad_row;

/* Statistics of one row; s/x/ok scratch of S entries (logit after cap and
 * bias, logit before the cap, allowed). */
static void grad_row_stats(const mattn__ref_grad_problem *g, int64_t b, int64_t h, int64_t i,
                           double *s, double *x, char *ok, grad_row *st)
{
    const mattn_tensor *q = g->q, *k = g->k, *vt = g->v, *dout = g->dout;
    const mattn_options *opt = g->opts;
    mattn__ref_problem rp = {q, k, vt, NULL, NULL, NULL, opt};
    const int64_t S = k->seq, D = q->dim, Dv = vt->dim, hk = h / (q->heads / k->heads);
    const double u = UNIT_ROUNDOFF;
    const double scale = opt->scale != 0.0f ? (double)opt->scale
                                            : (double)(float)(1.0 / sqrt((double)D));
    const double sink = opt->sinks ? (double)opt->sinks[h] : -INFINITY;
    const float *qi = q->data + b * q->stride_batch + i * q->stride_seq + h * q->stride_head;
    const float *di = dout->data + b * dout->stride_batch + i * dout->stride_seq +
                      h * dout->stride_head;
    double m = sink, ds = 0.0, vmax = 0.0;
    int64_t n = 0;
    for (int64_t j = 0; j < S; j++) {
        ok[j] = (char)allowed(&rp, b, h, i, j);
        if (!ok[j])
            continue;
        const float *kj = k->data + b * k->stride_batch + j * k->stride_seq + hk * k->stride_head;
        const float *vj = vt->data + b * vt->stride_batch + j * vt->stride_seq +
                          hk * vt->stride_head;
        double err, y = logit(opt, b, h, i, j, qi, kj, D, scale, &err, &x[j]);
        s[j] = y;
        ds = err > ds ? err : ds;
        m = y > m ? y : m;
        for (int64_t d = 0; d < Dv; d++)
            vmax = fabs((double)vj[d]) > vmax ? fabs((double)vj[d]) : vmax;
        n++;
    }
    memset(st, 0, sizeof *st);
    st->n = n;
    if (m == -INFINITY) {
        st->empty = 1;
        st->lse = -INFINITY;
        return;
    }
    double l = sink > -INFINITY ? exp(sink - m) : 0.0;
    for (int64_t j = 0; j < S; j++)
        if (ok[j])
            l += exp(s[j] - m);
    const double dscale = opt->dropout_p > 0.0f ? 1.0 / (1.0 - (double)opt->dropout_p) : 1.0;
    const double nn = (double)(n + 1);
    st->lse = m + log(l);
    const double tol_lse = 2.0 * ds + (nn + 8.0) * u * (1.0 + fabs(st->lse));
    st->eP = ds + tol_lse + 8.0 * u;
    const double tol_o = ((st->eP + (nn + 8.0) * u) * dscale + u) * vmax;
    double Di = 0.0, dmag = 0.0;
    for (int64_t j = 0; j < S; j++) {
        if (!ok[j])
            continue;
        double w = exp(s[j] - st->lse);
        if (opt->dropout_p > 0.0f)
            w = kept(opt, b, h, opt->q_offset + i, opt->kv_offset + j) ? w * dscale : 0.0;
        const float *vj = vt->data + b * vt->stride_batch + j * vt->stride_seq +
                          hk * vt->stride_head;
        double dw = 0.0;
        for (int64_t d = 0; d < Dv; d++)
            dw += (double)di[d] * (double)vj[d];
        Di += w * dw;
    }
    for (int64_t d = 0; d < Dv; d++)
        dmag += fabs((double)di[d]);
    st->Di = Di;
    st->errD = dmag * (tol_o + ((double)Dv + 2.0) * u * vmax * dscale);
}

/* dS, dx and their bounds for key j of a row whose statistics are st. */
typedef struct grad_pair {
    double w, dx, err_dx, err_w;
} grad_pair;

static grad_pair grad_pair_at(const mattn__ref_grad_problem *g, int64_t b, int64_t h, int64_t i,
                              int64_t j, double s, double x, const grad_row *st)
{
    const mattn_tensor *vt = g->v, *dout = g->dout;
    const mattn_options *opt = g->opts;
    const int64_t Dv = vt->dim, hk = h / (g->q->heads / g->k->heads);
    const double u = UNIT_ROUNDOFF, cap = opt->softcap;
    const float *di = dout->data + b * dout->stride_batch + i * dout->stride_seq +
                      h * dout->stride_head;
    const float *vj = vt->data + b * vt->stride_batch + j * vt->stride_seq + hk * vt->stride_head;
    double P = exp(s - st->lse), z = 1.0;
    if (opt->dropout_p > 0.0f)
        z = kept(opt, b, h, opt->q_offset + i, opt->kv_offset + j)
                ? 1.0 / (1.0 - (double)opt->dropout_p)
                : 0.0;
    double dw = 0.0, dwmag = 0.0;
    for (int64_t d = 0; d < Dv; d++) {
        dw += (double)di[d] * (double)vj[d];
        dwmag += fabs((double)di[d] * (double)vj[d]);
    }
    double dS = P * (z * dw - st->Di);
    double err_dS = P * (st->eP * fabs(z * dw - st->Di) + z * ((double)Dv + 2.0) * u * dwmag +
                         st->errD) + 4.0 * u * fabs(dS);
    grad_pair r = {P * z, dS, err_dS, (st->eP + 2.0 * u) * P * z};
    if (cap > 0.0) {
        double t = tanh(x / cap), fac = 1.0 - t * t;
        r.dx = dS * fac;
        /* the logit's error moves the derivative by <= 2 |t| dx / cap */
        r.err_dx = err_dS * fac + fabs(dS) * (2.0 * fabs(t) * (st->eP) + 8.0 * u);
    }
    return r;
}

typedef struct grad_verdict {
    double dq, dk, dv, dsinks, ratio;
    const char *what;
    int64_t where;
} grad_verdict;

static void grad_note(grad_verdict *v, double *slot, const char *what, int64_t where, double err,
                      double bound)
{
    if (!(err == err))
        err = INFINITY;
    if (err > *slot)
        *slot = err;
    double r = ratio(err, bound);
    if (r > v->ratio)
        v->ratio = r, v->what = what, v->where = where;
}

static void grad_merge(grad_verdict *into, const grad_verdict *v)
{
    into->dq = v->dq > into->dq ? v->dq : into->dq;
    into->dk = v->dk > into->dk ? v->dk : into->dk;
    into->dv = v->dv > into->dv ? v->dv : into->dv;
    into->dsinks = v->dsinks > into->dsinks ? v->dsinks : into->dsinks;
    if (v->ratio > into->ratio)
        into->ratio = v->ratio, into->what = v->what, into->where = v->where;
}

int mattn__ref_grad_check(const mattn__ref_grad_problem *g, int64_t rows, int threads,
                          mattn__ref_grad_report *report)
{
    const mattn_tensor *q = g->q, *k = g->k;
    const int64_t B = q->batch, T = q->seq, S = k->seq, Hq = q->heads, Hkv = k->heads;
    const int64_t D = q->dim, Dv = g->v->dim, G = Hq / Hkv;
    const int64_t total = B * Hq * T, total_kv = B * Hkv * S;
    const int64_t n = rows <= 0 || rows > total ? total : rows;
    const int64_t nkv = rows <= 0 || rows > total_kv ? total_kv : rows;
    const int full = n == total;
    const double u = UNIT_ROUNDOFF;
    const double scale = g->opts->scale != 0.0f ? (double)g->opts->scale
                                                : (double)(float)(1.0 / sqrt((double)D));
    typedef unsigned __int128 u128;
    grad_verdict all = {0, 0, 0, 0, 0, "dq", 0};
    int nomem = 0;
    if (threads < 1)
        threads = 1;
    /* Row statistics of one (b, kv-head group) at a time: [G][T]. */
    grad_row *stats = malloc(sizeof(grad_row) * (size_t)(G * T + 1));
    double *sink_sum = calloc((size_t)Hq + 1, sizeof(double));
    double *sink_tol = calloc((size_t)Hq + 1, sizeof(double));
    if (stats == NULL || sink_sum == NULL || sink_tol == NULL)
        nomem = 1;

    /* dq: sampled query rows, each alone. */
#pragma omp parallel num_threads(threads)
    {
        double *s = malloc(sizeof(double) * (size_t)(2 * S + 2 * D + 2));
        char *ok = malloc((size_t)S + 1);
        grad_verdict mine = {0, 0, 0, 0, 0, "dq", 0};
        if (s == NULL || ok == NULL) {
#pragma omp atomic write
            nomem = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t x = 0; x < n; x++) {
            if (s == NULL || ok == NULL)
                continue;
            int64_t r = (int64_t)((u128)x * (u128)total / (u128)n);
            int64_t b = r / (Hq * T), h = r / T % Hq, i = r % T, hk = h / G;
            double *xs = s + S, *acc = s + 2 * S, *tol = acc + D;
            grad_row st;
            grad_row_stats(g, b, h, i, s, xs, ok, &st);
            memset(acc, 0, sizeof(double) * (size_t)(2 * D));
            for (int64_t j = 0; !st.empty && j < S; j++) {
                if (!ok[j])
                    continue;
                grad_pair pr = grad_pair_at(g, b, h, i, j, s[j], xs[j], &st);
                const float *kj = k->data + b * k->stride_batch + j * k->stride_seq +
                                  hk * k->stride_head;
                for (int64_t d = 0; d < D; d++) {
                    acc[d] += scale * pr.dx * (double)kj[d];
                    tol[d] += fabs(scale) * (pr.err_dx + ((double)st.n + 2.0) * u * fabs(pr.dx)) *
                              fabs((double)kj[d]);
                }
            }
            const float *dq = g->dq->data + b * g->dq->stride_batch + i * g->dq->stride_seq +
                              h * g->dq->stride_head;
            for (int64_t d = 0; d < D; d++)
                grad_note(&mine, &mine.dq, "dq", r, fabs((double)dq[d] - acc[d]),
                          tol[d] + u * fabs(acc[d]));
            if (full && g->dsinks && g->opts->sinks && !st.empty) {
                /* every row once: dsink_h = -sum exp(sink - lse) D_i */
                double e = exp((double)g->opts->sinks[h] - st.lse);
#pragma omp critical(mattn_cli_refgrad_sink)
                {
                    sink_sum[h] -= e * st.Di;
                    sink_tol[h] += e * (st.errD + st.eP * fabs(st.Di)) +
                                   ((double)total / (double)Hq + 2.0) * u * e * fabs(st.Di);
                }
            }
        }
#pragma omp critical(mattn_cli_refgrad)
        grad_merge(&all, &mine);
        free(s);
        free(ok);
    }
    if (full && g->dsinks && g->opts->sinks)
        for (int64_t h = 0; h < Hq; h++)
            grad_note(&all, &all.dsinks, "dsinks", h, fabs((double)g->dsinks[h] - sink_sum[h]),
                      sink_tol[h] + u * fabs(sink_sum[h]));

    /* dk, dv: sampled key rows, grouped by (b, kv head); the statistics of
     * every query row of the group first. */
    int64_t cached = -1;
    for (int64_t x0 = 0; x0 < nkv && !nomem;) {
        int64_t r0 = (int64_t)((u128)x0 * (u128)total_kv / (u128)nkv), grp = r0 / S;
        int64_t x1 = x0;
        while (x1 < nkv && (int64_t)((u128)x1 * (u128)total_kv / (u128)nkv) / S == grp)
            x1++;
        int64_t b = grp / Hkv, hk = grp % Hkv;
        if (cached != grp) {
#pragma omp parallel num_threads(threads)
            {
                double *s = malloc(sizeof(double) * (size_t)(2 * S + 1));
                char *ok = malloc((size_t)S + 1);
                if (s == NULL || ok == NULL) {
#pragma omp atomic write
                    nomem = 1;
                }
#pragma omp for schedule(dynamic, 4)
                for (int64_t r = 0; r < G * T; r++)
                    if (s && ok)
                        grad_row_stats(g, b, hk * G + r / T, r % T, s, s + S, ok, &stats[r]);
                free(s);
                free(ok);
            }
            cached = grp;
        }
#pragma omp parallel num_threads(threads)
        {
            double *acc = malloc(sizeof(double) * (size_t)(2 * (D + Dv) + 1));
            grad_verdict mine = {0, 0, 0, 0, 0, "dk", 0};
            mattn__ref_problem rp = {g->q, g->k, g->v, NULL, NULL, NULL, g->opts};
            if (acc == NULL) {
#pragma omp atomic write
                nomem = 1;
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t x = x0; x < x1; x++) {
                if (acc == NULL)
                    continue;
                int64_t r = (int64_t)((u128)x * (u128)total_kv / (u128)nkv), j = r % S;
                double *dk = acc, *tk = acc + D, *dv = acc + 2 * D, *tv = dv + Dv;
                memset(acc, 0, sizeof(double) * (size_t)(2 * (D + Dv)));
                const float *kj = k->data + b * k->stride_batch + j * k->stride_seq +
                                  hk * k->stride_head;
                for (int64_t hh = 0; hh < G; hh++)
                    for (int64_t i = 0; i < T; i++) {
                        int64_t h = hk * G + hh;
                        const grad_row *st = &stats[hh * T + i];
                        if (st->empty || !allowed(&rp, b, h, i, j))
                            continue;
                        /* the logit of (i, j), as in the row statistics */
                        const float *qi = q->data + b * q->stride_batch + i * q->stride_seq +
                                          h * q->stride_head;
                        double dot = 0.0;
                        for (int64_t d = 0; d < D; d++)
                            dot += (double)qi[d] * (double)kj[d];
                        double xr = scale * dot, y = xr, cap = g->opts->softcap;
                        if (cap > 0.0)
                            y = cap * tanh(y / cap);
                        if (g->opts->bias.data) {
                            const mattn_bias *bi = &g->opts->bias;
                            int64_t bb = bi->batch == 1 ? 0 : b, bh = bi->heads == 1 ? 0 : h;
                            y += bi->data[bb * bi->stride_batch + bh * bi->stride_head +
                                          i * bi->stride_row + j];
                        }
                        grad_pair pr = grad_pair_at(g, b, h, i, j, y, xr, st);
                        const double terms = (double)(G * T) + 2.0;
                        const float *di = g->dout->data + b * g->dout->stride_batch +
                                          i * g->dout->stride_seq + h * g->dout->stride_head;
                        for (int64_t d = 0; d < D; d++) {
                            dk[d] += scale * pr.dx * (double)qi[d];
                            tk[d] += fabs(scale) * (pr.err_dx + terms * u * fabs(pr.dx)) *
                                     fabs((double)qi[d]);
                        }
                        for (int64_t d = 0; d < Dv; d++) {
                            dv[d] += pr.w * (double)di[d];
                            tv[d] += (pr.err_w + terms * u * pr.w) * fabs((double)di[d]);
                        }
                    }
                const float *gk = g->dk->data + b * g->dk->stride_batch + j * g->dk->stride_seq +
                                  hk * g->dk->stride_head;
                const float *gv = g->dv->data + b * g->dv->stride_batch + j * g->dv->stride_seq +
                                  hk * g->dv->stride_head;
                for (int64_t d = 0; d < D; d++)
                    grad_note(&mine, &mine.dk, "dk", r, fabs((double)gk[d] - dk[d]),
                              tk[d] + u * fabs(dk[d]));
                for (int64_t d = 0; d < Dv; d++)
                    grad_note(&mine, &mine.dv, "dv", r, fabs((double)gv[d] - dv[d]),
                              tv[d] + u * fabs(dv[d]));
            }
#pragma omp critical(mattn_cli_refgrad)
            grad_merge(&all, &mine);
            free(acc);
        }
        x0 = x1;
    }
    free(stats);
    free(sink_sum);
    free(sink_tol);
    memset(report, 0, sizeof *report);
    report->rows = n;
    report->kv_rows = nkv;
    report->max_err_dq = all.dq;
    report->max_err_dk = all.dk;
    report->max_err_dv = all.dv;
    report->max_err_dsinks = all.dsinks;
    report->max_ratio = all.ratio;
    report->worst_what = all.what;
    report->worst_index = all.where;
    return nomem ? mattn__fail(MATTN_ERR_NOMEM, "out of memory in the reference gradient check")
                 : MATTN_OK;
}
