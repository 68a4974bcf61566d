#include "refgrad.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ inputs */

static double *to_double(const float *x, int64_t n)
{
    if (x == NULL)
        return NULL;
    double *d = tl_alloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

rg_inputs rg_inputs_make(const tc_problem *p, const float *dout)
{
    rg_inputs x;
    x.q = to_double(p->q, p->B * p->T * p->Hq * p->D);
    x.k = to_double(p->k, p->B * p->S * p->Hkv * p->D);
    x.v = to_double(p->v, p->B * p->S * p->Hkv * p->Dv);
    x.bias = to_double(p->bias, p->bias_b * p->bias_h * p->T * p->S);
    x.sinks = to_double(p->sinks, p->Hq);
    x.dout = to_double(dout, p->B * p->T * p->Hq * p->Dv);
    return x;
}

void rg_inputs_free(rg_inputs *x)
{
    free(x->q), free(x->k), free(x->v), free(x->bias), free(x->sinks), free(x->dout);
    memset(x, 0, sizeof *x);
}

float *rg_random_dout(tl_rng *r, const tc_problem *p)
{
    int64_t n = p->B * p->T * p->Hq * p->Dv;
    float *d = tl_alloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    tl_fill(r, d, n, 1.0);
    return d;
}

/* ------------------------------------------------------------------ one row */

/* SPEC §4 dropout: the kept weights are scaled by 1 / (1 - p). */
static double keep_factor(const tc_problem *p, int64_t b, int64_t h, int64_t i, int64_t j)
{
    if (p->dropout_p <= 0.0f)
        return 1.0;
    return tc_dropout_keep(p, b, h, i, j) ? 1.0 / (1.0 - (double)p->dropout_p) : 0.0;
}

/* The scale an fp32 implementation uses: the float nearest the request. */
static double eff_scale(const tc_problem *p)
{
    return (double)(float)(p->scale != 0.0 ? p->scale : 1.0 / sqrt((double)p->D));
}

/* Forward quantities of row (b, h, i), for every key j:
 * ok[j] allowed, x[j] = scale q.k, s[j] the final logit, P[j] the softmax
 * probability (sink in the normaliser), Z[j] the dropout keep factor.
 * Returns lse (-inf for a row with no key and no sink); *psink = P of the
 * sink. mag[j] = scale * sum |q_d k_d| (for error bounds). */
typedef struct rowbuf {
    char *ok;
    double *x, *s, *P, *Z, *mag;
} rowbuf;

static rowbuf rowbuf_make(int64_t S)
{
    size_t n = (size_t)(S > 0 ? S : 1);
    rowbuf r = {tl_alloc(n), tl_alloc(sizeof(double) * n), tl_alloc(sizeof(double) * n),
                tl_alloc(sizeof(double) * n), tl_alloc(sizeof(double) * n),
                tl_alloc(sizeof(double) * n)};
    return r;
}

static void rowbuf_free(rowbuf *r)
{
    free(r->ok), free(r->x), free(r->s), free(r->P), free(r->Z), free(r->mag);
}

static double bias_at(const tc_problem *p, const rg_inputs *in, int64_t b, int64_t h, int64_t i,
                      int64_t j)
{
    if (!in->bias)
        return 0.0;
    int64_t bb = p->bias_b == 1 ? 0 : b, bh = p->bias_h == 1 ? 0 : h;
    return in->bias[((bb * p->bias_h + bh) * p->T + i) * p->S + j];
}

static double row_forward(const tc_problem *p, const rg_inputs *in, int64_t b, int64_t h,
                          int64_t i, rowbuf *r, double *psink)
{
    const int64_t S = p->S, G = p->Hq / p->Hkv, hk = h / G;
    const double scale = eff_scale(p), cap = (double)(float)p->softcap;
    const double *q = in->q + ((b * p->T + i) * p->Hq + h) * p->D;
    double m = in->sinks ? in->sinks[h] : -INFINITY;
    for (int64_t j = 0; j < S; j++) {
        r->ok[j] = (char)tc_allowed(p, b, h, i, j);
        r->P[j] = 0.0;
        r->Z[j] = keep_factor(p, b, h, i, j);
        if (!r->ok[j])
            continue;
        const double *k = in->k + ((b * S + j) * p->Hkv + hk) * p->D;
        double dot = 0.0, mag = 0.0;
        for (int64_t d = 0; d < p->D; d++) {
            dot += q[d] * k[d];
            mag += fabs(q[d] * k[d]);
        }
        r->x[j] = scale * dot;
        r->mag[j] = fabs(scale) * mag;
        double y = cap > 0.0 ? cap * tanh(r->x[j] / cap) : r->x[j];
        r->s[j] = y + bias_at(p, in, b, h, i, j);
        m = r->s[j] > m ? r->s[j] : m;
    }
    *psink = 0.0;
    if (m == -INFINITY)
        return -INFINITY;
    double l = in->sinks ? exp(in->sinks[h] - m) : 0.0;
    for (int64_t j = 0; j < S; j++)
        if (r->ok[j])
            l += exp(r->s[j] - m);
    double lse = m + log(l);
    for (int64_t j = 0; j < S; j++)
        if (r->ok[j])
            r->P[j] = exp(r->s[j] - lse);
    if (in->sinks)
        *psink = exp(in->sinks[h] - lse);
    return lse;
}

/* ------------------------------------------------------------------ forward */

void rg_forward(const tc_problem *p, const rg_inputs *in, double *o, double *lse)
{
    const int64_t S = p->S, G = p->Hq / p->Hkv;
    rowbuf r = rowbuf_make(S);
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->Hq; h++)
            for (int64_t i = 0; i < p->T; i++) {
                double psink, l = row_forward(p, in, b, h, i, &r, &psink);
                if (lse)
                    lse[(b * p->Hq + h) * p->T + i] = l;
                if (!o)
                    continue;
                double *oi = o + ((b * p->T + i) * p->Hq + h) * p->Dv;
                memset(oi, 0, sizeof(double) * (size_t)p->Dv);
                for (int64_t j = 0; j < S; j++) {
                    if (!r.ok[j])
                        continue;
                    const double *v = in->v + ((b * S + j) * p->Hkv + h / G) * p->Dv;
                    for (int64_t d = 0; d < p->Dv; d++)
                        oi[d] += r.P[j] * r.Z[j] * v[d];
                }
            }
    rowbuf_free(&r);
}

double rg_loss(const tc_problem *p, const rg_inputs *in)
{
    int64_t n = p->B * p->T * p->Hq * p->Dv;
    double *o = tl_alloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    rg_forward(p, in, o, NULL);
    double L = 0.0;
    for (int64_t x = 0; x < n; x++)
        L += in->dout[x] * o[x];
    free(o);
    return L;
}

/* ------------------------------------------------------------------ backward */

/* Error of x = scale q.k and of the final logit s of key j (see below). */
static double err_dot(const tc_problem *p, const rowbuf *r, int64_t j)
{
    const double u = 1.0 / 16777216.0;
    return p->exact_dots ? 0.0 : (double)(p->D + 2) * u * r->mag[j];
}

static double err_logit(const tc_problem *p, const rg_inputs *in, const rowbuf *r, int64_t b,
                        int64_t h, int64_t i, int64_t j)
{
    const double u = 1.0 / 16777216.0, cap = (double)(float)p->softcap;
    double e = err_dot(p, r, j);
    if (cap > 0.0) {
        double t = tanh(r->x[j] / cap);
        e = e * (1.0 - t * t) + 4.0 * u * cap;
    }
    return e + 2.0 * u * (fabs(r->s[j]) + fabs(bias_at(p, in, b, h, i, j)));
}

/* Error model for an fp32 backward (u = 2^-24; first order, every term an
 * absolute bound, summed; the final factor 1.01 covers the second-order
 * products of these small relative errors). Per allowed key j of a row:
 *  - x = scale q.k: the D-term fp32 dot of the scaled q (rounded once) is
 *    within (D+2) u mag_j, mag_j = |scale| sum |q_d k_d| (0 with exact_dots).
 *  - cap: y = cap tanh(x/cap) moves by (1 - t^2) err_x, plus ~4u cap for the
 *    tanh evaluation; s = y + bias adds 2u (|s| + |bias|): err_s.
 *  - P = exp(s - lse): lse is given rounded (u |lse|, plus the caller's own
 *    error of lse: err_lse), s - lse rounds (u |s - lse|), exp is within 3u.
 *    An implementation may shift by its row max where that exceeds the given
 *    lse (only by rounding: at most ds + err_lse, ds the row's largest
 *    err_s). So P is off by (err_s + ds + 2 err_lse + u |s - lse| + 3u) P,
 *    plus 2^-125 absolute for the flush of results below 2^-126 to 0.
 *  - W = P Z: the fp32 1/(1-p) and the product add 3u W.
 *  - dW = dO.v_j: a Dv-term dot, (Dv+1) u sum |dO_d v_jd|.
 *  - D = dO.o with o given rounded (u |o|, plus the caller's error of o):
 *    2u sum |o_d dO_d| + tol_o sum |dO_d|.
 *  - dS = W dW - P D: eW |dW| + W e_dW + eP |D| + P eD + 2u (W |dW| + P |D|).
 *  - cap factor f = 1 - t^2: t is off by 6u + err_x (1 - t^2)/cap, so f by
 *    2 |t| that + 2u; dx = dS f: err_dS f + |dS| e_f + u |dx|.
 * Sums over n terms in any order and grouping (GEMM blocks, accumulators,
 * partials) stay within n u sum |terms| of the exact sum of the rounded
 * terms; so, per element:
 *   dq   : scale (sum_j err_dx |k| + (S+2) u sum_j |dx k|) + u |dq|
 *   dk   : sum_i err_dx |scale q| + (G T + 3) u sum_i |dx scale q|
 *   dv   : sum_i eW |dO| + (G T + 1) u sum_i W |dO|
 *   dbias: sum err_dS + (n + 2) u sum |dS| over the n rows it sums
 *   dsink: sum_i (err_lse + 3u) P_sink |D| + P_sink eD, + u |dsink|. */
rg_grads rg_backward(const tc_problem *p, const rg_inputs *in, const rg_input_err *err)
{
    const double u = 1.0 / 16777216.0, tiny = 0x1p-125;
    const int64_t B = p->B, T = p->T, S = p->S, Hq = p->Hq, Hkv = p->Hkv, D = p->D,
                  Dv = p->Dv, G = Hq / Hkv;
    const double scale = eff_scale(p), cap = (double)(float)p->softcap;
    const int dropout = p->dropout_p > 0.0f;
    size_t nq = (size_t)(B * T * Hq * D), nk = (size_t)(B * S * Hkv * D),
           nv = (size_t)(B * S * Hkv * Dv), no = (size_t)(B * T * Hq * Dv),
           nl = (size_t)(B * Hq * T), nb = (size_t)(p->bias_b * p->bias_h * T * S);
#define ALLOC(n) tl_alloc(sizeof(double) * ((n) + 1))
    rg_grads g = {0};
    g.o = ALLOC(no), g.lse = ALLOC(nl);
    g.dq = ALLOC(nq), g.dk = ALLOC(nk), g.dv = ALLOC(nv);
    g.tol_dq = ALLOC(nq), g.tol_dk = ALLOC(nk), g.tol_dv = ALLOC(nv);
    double *mq = ALLOC(nq), *mk = ALLOC(nk), *mv = ALLOC(nv), *mb = NULL, *ms = NULL;
    if (in->sinks)
        g.dsinks = ALLOC(Hq), g.tol_dsinks = ALLOC(Hq), ms = ALLOC(Hq);
    if (in->bias)
        g.dbias = ALLOC(nb), g.tol_dbias = ALLOC(nb), mb = ALLOC(nb);
    double *dW = ALLOC(S), *edW = ALLOC(S), *eP = ALLOC(S), *eW = ALLOC(S), *dS = ALLOC(S),
           *edS = ALLOC(S), *dx = ALLOC(S), *edx = ALLOC(S);
#undef ALLOC
    rowbuf r = rowbuf_make(S);

    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < T; i++) {
                const int64_t hk = h / G, row = (b * T + i) * Hq + h, lrow = (b * Hq + h) * T + i;
                double psink, lse = row_forward(p, in, b, h, i, &r, &psink);
                g.lse[lrow] = lse;
                double *o = g.o + row * Dv;
                const double *dO = in->dout + row * Dv;
                const double *q = in->q + row * D;
                for (int64_t j = 0; j < S; j++) {
                    if (!r.ok[j])
                        continue;
                    const double *v = in->v + ((b * S + j) * Hkv + hk) * Dv;
                    for (int64_t d = 0; d < Dv; d++)
                        o[d] += r.P[j] * r.Z[j] * v[d];
                }
                if (lse == -INFINITY)
                    continue; /* no key, no sink: o = 0, every gradient 0 */

                /* D from its definition, sum_j P_j dP_j, not from dO.o: the
                 * identity D = dO.o (which the kernels use) is then tested. */
                double Dsum = 0.0, odo = 0.0, ado = 0.0;
                for (int64_t d = 0; d < Dv; d++) {
                    odo += fabs(o[d] * dO[d]);
                    ado += fabs(dO[d]);
                }
                for (int64_t j = 0; j < S; j++) {
                    if (!r.ok[j])
                        continue;
                    const double *v = in->v + ((b * S + j) * Hkv + hk) * Dv;
                    double w = 0.0, m = 0.0;
                    for (int64_t d = 0; d < Dv; d++) {
                        w += dO[d] * v[d];
                        m += fabs(dO[d] * v[d]);
                    }
                    dW[j] = w;
                    edW[j] = (double)(Dv + 1) * u * m;
                    Dsum += r.P[j] * r.Z[j] * w;
                }
                double err_lse = u * fabs(lse) + (err && err->tol_lse ? err->tol_lse[lrow] : 0.0);
                double eD = 2.0 * u * odo + (err && err->tol_o ? err->tol_o[row] * ado : 0.0);

                double ds = 0.0; /* the row's largest logit error */
                for (int64_t j = 0; j < S; j++)
                    if (r.ok[j])
                        ds = fmax(ds, err_logit(p, in, &r, b, h, i, j));
                for (int64_t j = 0; j < S; j++) {
                    dS[j] = dx[j] = edS[j] = edx[j] = eP[j] = eW[j] = 0.0;
                    if (!r.ok[j])
                        continue;
                    double P = r.P[j], W = P * r.Z[j];
                    double err_x = err_dot(p, &r, j);
                    double t = 0.0, f = 1.0, ef = 0.0;
                    if (cap > 0.0) {
                        t = tanh(r.x[j] / cap);
                        f = 1.0 - t * t;
                        ef = 2.0 * fabs(t) * (6.0 * u + err_x * f / cap) + 2.0 * u;
                    }
                    double err_s = err_logit(p, in, &r, b, h, i, j);
                    eP[j] = (err_s + ds + 2.0 * err_lse + u * fabs(r.s[j] - lse) + 3.0 * u) * P +
                            tiny;
                    eW[j] = r.Z[j] * eP[j] + (dropout ? 3.0 * u * W : 0.0);
                    dS[j] = P * (r.Z[j] * dW[j] - Dsum);
                    edS[j] = eW[j] * fabs(dW[j]) + W * edW[j] + eP[j] * fabs(Dsum) + P * eD +
                             2.0 * u * (W * fabs(dW[j]) + P * fabs(Dsum));
                    dx[j] = dS[j] * f;
                    edx[j] = cap > 0.0 ? edS[j] * f + fabs(dS[j]) * ef + u * fabs(dx[j]) : edS[j];
                }

                /* dq_i = scale sum_j dx_j k_j */
                double *dq = g.dq + row * D, *tq = g.tol_dq + row * D, *mqi = mq + row * D;
                for (int64_t j = 0; j < S; j++) {
                    if (!r.ok[j])
                        continue;
                    const double *k = in->k + ((b * S + j) * Hkv + hk) * D;
                    for (int64_t d = 0; d < D; d++) {
                        dq[d] += scale * dx[j] * k[d];
                        tq[d] += fabs(scale) * edx[j] * fabs(k[d]);
                        mqi[d] += fabs(scale * dx[j] * k[d]);
                    }
                }
                /* dk_j += scale dx_j q_i, dv_j += W_j dO_i (all heads of the group) */
                for (int64_t j = 0; j < S; j++) {
                    if (!r.ok[j])
                        continue;
                    int64_t kr = (b * S + j) * Hkv + hk;
                    double W = r.P[j] * r.Z[j];
                    for (int64_t d = 0; d < D; d++) {
                        double sq = scale * q[d];
                        g.dk[kr * D + d] += dx[j] * sq;
                        g.tol_dk[kr * D + d] += edx[j] * fabs(sq);
                        mk[kr * D + d] += fabs(dx[j] * sq);
                    }
                    for (int64_t d = 0; d < Dv; d++) {
                        g.dv[kr * Dv + d] += W * dO[d];
                        g.tol_dv[kr * Dv + d] += eW[j] * fabs(dO[d]);
                        mv[kr * Dv + d] += W * fabs(dO[d]);
                    }
                }
                if (in->bias) {
                    int64_t bb = p->bias_b == 1 ? 0 : b, bh = p->bias_h == 1 ? 0 : h;
                    int64_t base = ((bb * p->bias_h + bh) * T + i) * S;
                    for (int64_t j = 0; j < S; j++) {
                        g.dbias[base + j] += dS[j];
                        g.tol_dbias[base + j] += edS[j];
                        mb[base + j] += fabs(dS[j]);
                    }
                }
                if (in->sinks) {
                    /* The sink is a logit with no value: dP_sink = 0, so
                     * dS_sink = P_sink (0 - D). */
                    g.dsinks[h] -= psink * Dsum;
                    g.tol_dsinks[h] += (err_lse + 3.0 * u) * psink * fabs(Dsum) + psink * eD;
                    ms[h] += psink * fabs(Dsum);
                }
            }

    const double safety = 1.01;
    for (size_t x = 0; x < nq; x++)
        g.tol_dq[x] = safety * (g.tol_dq[x] + (double)(S + 2) * u * mq[x] + u * fabs(g.dq[x]));
    for (size_t x = 0; x < nk; x++)
        g.tol_dk[x] = safety * (g.tol_dk[x] + (double)(G * T + 3) * u * mk[x]);
    for (size_t x = 0; x < nv; x++)
        g.tol_dv[x] = safety * (g.tol_dv[x] + (double)(G * T + 1) * u * mv[x]);
    if (in->bias) {
        double nsum = (double)(B / p->bias_b * (Hq / p->bias_h));
        for (size_t x = 0; x < nb; x++)
            g.tol_dbias[x] = safety * (g.tol_dbias[x] + (nsum + 2.0) * u * mb[x]);
    }
    if (in->sinks)
        for (int64_t h = 0; h < Hq; h++)
            g.tol_dsinks[h] = safety * (g.tol_dsinks[h] + u * fabs(g.dsinks[h]) + u * ms[h]);

    rowbuf_free(&r);
    free(mq), free(mk), free(mv), free(mb), free(ms);
    free(dW), free(edW), free(eP), free(eW), free(dS), free(edS), free(dx), free(edx);
    return g;
}

void rg_grads_free(rg_grads *g)
{
    free(g->o), free(g->lse), free(g->dq), free(g->dk), free(g->dv), free(g->dsinks);
    free(g->dbias), free(g->tol_dq), free(g->tol_dk), free(g->tol_dv), free(g->tol_dsinks);
    free(g->tol_dbias);
    memset(g, 0, sizeof *g);
}

void rg_round_forward(const tc_problem *p, const rg_grads *g, float **o, float **lse)
{
    size_t no = (size_t)(p->B * p->T * p->Hq * p->Dv), nl = (size_t)(p->B * p->Hq * p->T);
    *o = tl_alloc(sizeof(float) * (no + 1));
    *lse = tl_alloc(sizeof(float) * (nl + 1));
    for (size_t x = 0; x < no; x++)
        (*o)[x] = (float)g->o[x];
    for (size_t x = 0; x < nl; x++)
        (*lse)[x] = (float)g->lse[x];
}

/* ------------------------------------------------------------------ checks */

void rg_check(const char *what, const char *name, const float *got, const double *want,
              const double *tol, int64_t n)
{
    for (int64_t x = 0; x < n; x++)
        if (!(fabs((double)got[x] - want[x]) <= tol[x]))
            fail_msg("%s: %s[%lld] = %.9g, reference %.9g, |diff| %.3g > tol %.3g", what, name,
                     (long long)x, (double)got[x], want[x], fabs((double)got[x] - want[x]),
                     tol[x]);
}

/* Three views [B, L, H0|H1|H2, D0|D1|D2] as column slices of one fused
 * [B, L, H0*D0 + H1*D1 + H2*D2] buffer (a fused QKV or dQKV). */
static float *fused3(mattn_tensor *t0, mattn_tensor *t1, mattn_tensor *t2, int64_t B, int64_t L,
                     int64_t H0, int64_t D0, int64_t H1, int64_t D1, int64_t H2, int64_t D2)
{
    int64_t row = H0 * D0 + H1 * D1 + H2 * D2;
    float *buf = tl_nan_floats((size_t)(B * L * row));
    *t0 = (mattn_tensor){buf, B, L, H0, D0, L * row, row, D0};
    *t1 = (mattn_tensor){buf + H0 * D0, B, L, H1, D1, L * row, row, D1};
    *t2 = (mattn_tensor){buf + H0 * D0 + H1 * D1, B, L, H2, D2, L * row, row, D2};
    return buf;
}

int rg_run_and_check(const char *op, const tc_problem *p, const float *dout, char layout,
                     int threads, int block_q, int block_kv)
{
    const int64_t B = p->B, T = p->T, S = p->S, Hq = p->Hq, Hkv = p->Hkv, D = p->D, Dv = p->Dv;
    rg_inputs in = rg_inputs_make(p, dout);
    rg_grads ref = rg_backward(p, &in, NULL);
    char lo = layout == 'f' ? 't' : layout;
    mattn_tensor q, k, v, dq, dk, dv;
    float *bufs[6] = {0};
    if (layout == 'f') {
        assert_true(T == S);
        bufs[0] = fused3(&q, &k, &v, B, T, Hq, D, Hkv, D, Hkv, Dv);
        bufs[1] = fused3(&dq, &dk, &dv, B, T, Hq, D, Hkv, D, Hkv, Dv);
    } else {
        bufs[0] = tl_nan_floats(tl_view_floats(layout, B, T, Hq, D));
        bufs[1] = tl_nan_floats(tl_view_floats(layout, B, S, Hkv, D));
        bufs[2] = tl_nan_floats(tl_view_floats(layout, B, S, Hkv, Dv));
        bufs[3] = tl_nan_floats(tl_view_floats(layout, B, T, Hq, D));
        bufs[4] = tl_nan_floats(tl_view_floats(layout, B, S, Hkv, D));
        bufs[5] = tl_nan_floats(tl_view_floats(layout, B, S, Hkv, Dv));
        q = tl_view(bufs[0], layout, B, T, Hq, D), k = tl_view(bufs[1], layout, B, S, Hkv, D);
        v = tl_view(bufs[2], layout, B, S, Hkv, Dv), dq = tl_view(bufs[3], layout, B, T, Hq, D);
        dk = tl_view(bufs[4], layout, B, S, Hkv, D), dv = tl_view(bufs[5], layout, B, S, Hkv, Dv);
    }
    tl_scatter(p->q, &q), tl_scatter(p->k, &k), tl_scatter(p->v, &v);

    /* o and lse: the reference's, rounded to fp32 (the error model's input). */
    float *obthd, *lse;
    rg_round_forward(p, &ref, &obthd, &lse);
    float *obuf = tl_nan_floats(tl_view_floats(lo, B, T, Hq, Dv));
    float *dobuf = tl_nan_floats(tl_view_floats(lo, B, T, Hq, Dv));
    mattn_tensor o = tl_view(obuf, lo, B, T, Hq, Dv), dot = tl_view(dobuf, lo, B, T, Hq, Dv);
    tl_scatter(obthd, &o), tl_scatter(dout, &dot);

    size_t nb = (size_t)(p->bias_b * p->bias_h * T * S);
    float *dsinks = p->sinks ? tl_nan_floats((size_t)Hq) : NULL;
    float *dbias = p->bias ? tl_nan_floats(nb) : NULL;

    mattn_options opts = tc_options(p);
    opts.threads = threads;
    opts.block_q = block_q;
    opts.block_kv = block_kv;
    int rc;
    mattn_kernel chosen;
    if (strcmp(op, "vanilla") == 0)
        rc = mattn_vanilla_backward(&q, &k, &v, &o, lse, &dot, &dq, &dk, &dv, dsinks, dbias, &opts);
    else if (strcmp(op, "flash") == 0)
        rc = mattn_flash_backward(&q, &k, &v, &o, lse, &dot, &dq, &dk, &dv, dsinks, dbias, &opts);
    else
        rc = mattn_sdpa_backward(&q, &k, &v, &o, lse, &dot, &dq, &dk, &dv, dsinks, dbias, &opts,
                                 &chosen);

    if (rc == MATTN_OK) {
        size_t nq = (size_t)(B * T * Hq * D), nk = (size_t)(B * S * Hkv * D),
               nv = (size_t)(B * S * Hkv * Dv);
        float *gq = tl_alloc(sizeof(float) * (nq + 1)), *gk = tl_alloc(sizeof(float) * (nk + 1)),
              *gv = tl_alloc(sizeof(float) * (nv + 1));
        tl_gather(gq, &dq), tl_gather(gk, &dk), tl_gather(gv, &dv);
        char what[128];
        snprintf(what, sizeof what, "%s backward layout=%c threads=%d blocks=(%d,%d)", op,
                 layout, threads, block_q, block_kv);
        rg_check(what, "dq", gq, ref.dq, ref.tol_dq, (int64_t)nq);
        rg_check(what, "dk", gk, ref.dk, ref.tol_dk, (int64_t)nk);
        rg_check(what, "dv", gv, ref.dv, ref.tol_dv, (int64_t)nv);
        if (dsinks)
            rg_check(what, "dsinks", dsinks, ref.dsinks, ref.tol_dsinks, Hq);
        if (dbias)
            rg_check(what, "dbias", dbias, ref.dbias, ref.tol_dbias, (int64_t)nb);
        free(gq), free(gk), free(gv);
    }
    for (int x = 0; x < 6; x++)
        free(bufs[x]);
    free(obthd), free(lse), free(obuf), free(dobuf), free(dsinks), free(dbias);
    rg_grads_free(&ref);
    rg_inputs_free(&in);
    return rc;
}
