#include "testlib.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------ runner */

int tl_rank(void)
{
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int tl_size(void)
{
    int s = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &s);
    return s;
}

static int run_subset(const char *group, const struct CMUnitTest *tests, size_t n,
                      int spread)
{
    int rank = tl_rank(), size = tl_size();
    struct CMUnitTest *mine = calloc(n ? n : 1, sizeof *mine);
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (!spread || (int)(i % (size_t)size) == rank)
            mine[count++] = tests[i];
    char name[256];
    snprintf(name, sizeof name, "%s [rank %d of %d]", group, rank, size);
    int failed = 0;
    if (count > 0)
        failed = _cmocka_run_group_tests(name, mine, count, NULL, NULL);
    free(mine);
    fflush(stdout);
    int total = 0;
    MPI_Allreduce(&failed, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%s: %d failure(s) over %d rank(s)\n", group, total, size);
    return total;
}

int tl_run_spread(const char *group, const struct CMUnitTest *tests, size_t n)
{
    return run_subset(group, tests, n, 1);
}

int tl_run_all(const char *group, const struct CMUnitTest *tests, size_t n)
{
    return run_subset(group, tests, n, 0);
}

static const char *watchdog_msg;
static size_t watchdog_len;

/* Async-signal-safe: write(2) and _exit only. */
static void watchdog_fire(int sig)
{
    (void)sig;
    if (write(2, watchdog_msg, watchdog_len) < 0)
        _exit(3);
    _exit(3);
}

void tl_watchdog(const char *message, unsigned default_seconds)
{
    watchdog_msg = message;
    watchdog_len = strlen(message);
    signal(SIGALRM, watchdog_fire);
    const char *limit = getenv("TEST_ALARM");
    alarm(limit ? (unsigned)atoi(limit) : default_seconds);
}

/* ------------------------------------------------------------------ data */

tl_rng tl_rng_make(uint64_t seed)
{
    tl_rng r = {seed * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL};
    if (r.s == 0)
        r.s = 1;
    return r;
}

static uint64_t next_u64(tl_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545f4914f6cdd1dULL;
}

double tl_uniform(tl_rng *r)
{
    return (double)(next_u64(r) >> 11) / 9007199254740992.0;
}

double tl_symmetric(tl_rng *r)
{
    return 2.0 * tl_uniform(r) - 1.0;
}

int64_t tl_int(tl_rng *r, int64_t n)
{
    return n <= 0 ? 0 : (int64_t)(next_u64(r) % (uint64_t)n);
}

void tl_fill(tl_rng *r, float *x, int64_t n, double amplitude)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(amplitude * tl_symmetric(r));
}

void *tl_alloc(size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    if (p == NULL)
        fail_msg("out of memory allocating %zu bytes", bytes);
    return p;
}

/* ------------------------------------------------------------------ problem */

tc_problem tc_make(tl_rng *r, int64_t B, int64_t T, int64_t S, int64_t Hq,
                   int64_t Hkv, int64_t D, int64_t Dv, double amp)
{
    tc_problem p;
    memset(&p, 0, sizeof p);
    p.B = B, p.T = T, p.S = S, p.Hq = Hq, p.Hkv = Hkv, p.D = D, p.Dv = Dv;
    p.q = tl_alloc(sizeof(float) * (size_t)(B * T * Hq * D));
    p.k = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * D));
    p.v = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * Dv));
    tl_fill(r, p.q, B * T * Hq * D, amp);
    tl_fill(r, p.k, B * S * Hkv * D, amp);
    tl_fill(r, p.v, B * S * Hkv * Dv, 1.0);
    p.window_left = p.window_right = -1;
    return p;
}

void tc_free(tc_problem *p)
{
    free(p->q);
    free(p->k);
    free(p->v);
    free(p->q_seg);
    free(p->kv_seg);
    free(p->mask);
    free(p->bias);
    free(p->sinks);
    memset(p, 0, sizeof *p);
}

mattn_options tc_options(const tc_problem *p)
{
    mattn_options o = mattn_options_default();
    o.scale = (float)p->scale;
    o.causal = p->causal;
    o.q_offset = p->q_offset;
    o.kv_offset = p->kv_offset;
    o.window_left = p->window_left;
    o.window_right = p->window_right;
    o.chunk = p->chunk;
    o.softcap = (float)p->softcap;
    o.q_segment_ids = p->q_seg;
    o.kv_segment_ids = p->kv_seg;
    o.sinks = p->sinks;
    if (p->mask)
        o.mask = mattn_mask_dense(p->mask, p->mask_b, p->mask_h, p->T, p->S);
    if (p->bias)
        o.bias = mattn_bias_dense(p->bias, p->bias_b, p->bias_h, p->T, p->S);
    o.dropout_p = p->dropout_p;
    o.dropout_seed = p->seed;
    o.dropout_batch_offset = p->drop_b0;
    o.dropout_head_offset = p->drop_h0;
    return o;
}

/* ------------------------------------------------------------------ reference */

static int64_t ref_floordiv(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if (a % b != 0 && ((a < 0) != (b < 0)))
        q--;
    return q;
}

int tc_allowed(const tc_problem *p, int64_t b, int64_t h, int64_t i, int64_t j)
{
    int64_t qp = p->q_offset + i, kp = p->kv_offset + j;
    if (p->causal && kp > qp)
        return 0;
    if (p->window_left >= 0 && kp < qp - p->window_left)
        return 0;
    if (p->window_right >= 0 && kp > qp + p->window_right)
        return 0;
    if (p->chunk > 0 && ref_floordiv(qp, p->chunk) != ref_floordiv(kp, p->chunk))
        return 0;
    if (p->q_seg) {
        int32_t a = p->q_seg[b * p->T + i], c = p->kv_seg[b * p->S + j];
        if (a < 0 || a != c)
            return 0;
    }
    if (p->mask) {
        int64_t mb = p->mask_b == 1 ? 0 : b, mh = p->mask_h == 1 ? 0 : h;
        if (!p->mask[((mb * p->mask_h + mh) * p->T + i) * p->S + j])
            return 0;
    }
    return 1;
}

/* splitmix64 finaliser, as written in SPEC §4. */
static uint64_t ref_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

int tc_dropout_keep(const tc_problem *p, int64_t b, int64_t h, int64_t i, int64_t j)
{
    uint64_t x = ref_mix(p->seed ^ (uint64_t)(p->drop_b0 + b));
    x = ref_mix(x ^ (uint64_t)(p->drop_h0 + h));
    x = ref_mix(x ^ (uint64_t)(p->q_offset + i));
    x = ref_mix(x ^ (uint64_t)(p->kv_offset + j));
    double u = (double)(x >> 40) / 16777216.0;
    return u >= (double)p->dropout_p;
}

/* Error model (u = 2^-24, one fp32 rounding):
 *  - a logit's error: the fp32 dot product of D terms is within (D+2) u of
 *    scale * sum |q_d k_d| (exact when exact_dots); the cap adds ~4u cap, the
 *    bias and the rounding of s add 2u (|s| + |bias|). Call the row max ds.
 *  - lse = logsumexp of the perturbed logits moves by at most ds, plus the
 *    sum of n terms (n u relative) and exp/log roundings.
 *  - a weight exp(s - lse) is off by at most ds + d(lse) relatively; the
 *    output sums n weighted values (another n u), scaled by 1/(1-p). */
void tc_reference(const tc_problem *p, double *o, double *lse, double *weights,
                  double *tol_o, double *tol_lse, double *tol_w)
{
    const double u = 1.0 / 16777216.0;
    const int64_t G = p->Hq / p->Hkv, S = p->S;
    double scale = (double)(float)(p->scale != 0.0 ? p->scale : 1.0 / sqrt((double)p->D));
    double cap = (double)(float)p->softcap;
    double dscale = p->dropout_p > 0.0f ? 1.0 / (1.0 - (double)p->dropout_p) : 1.0;
    double *s = malloc(sizeof(double) * (size_t)(S > 0 ? S : 1));
    char *ok = malloc((size_t)(S > 0 ? S : 1));

    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->Hq; h++)
            for (int64_t i = 0; i < p->T; i++) {
                int64_t hk = h / G;
                const float *qi = p->q + ((b * p->T + i) * p->Hq + h) * p->D;
                double m = p->sinks ? (double)p->sinks[h] : -INFINITY;
                double ds = 0.0, vmax = 0.0;
                int64_t n = 0;
                for (int64_t j = 0; j < S; j++) {
                    ok[j] = (char)tc_allowed(p, b, h, i, j);
                    if (!ok[j])
                        continue;
                    const float *kj = p->k + ((b * S + j) * p->Hkv + hk) * p->D;
                    const float *vj = p->v + ((b * S + j) * p->Hkv + hk) * p->Dv;
                    double dot = 0.0, mag = 0.0;
                    for (int64_t d = 0; d < p->D; d++) {
                        dot += (double)qi[d] * (double)kj[d];
                        mag += fabs((double)qi[d] * (double)kj[d]);
                    }
                    double x = scale * dot, err = p->exact_dots ? 0.0 : (p->D + 2) * u * fabs(scale) * mag;
                    if (cap > 0.0) {
                        x = cap * tanh(x / cap);
                        err += 4.0 * u * cap;
                    }
                    double bias = 0.0;
                    if (p->bias) {
                        int64_t bb = p->bias_b == 1 ? 0 : b, bh = p->bias_h == 1 ? 0 : h;
                        bias = (double)p->bias[((bb * p->bias_h + bh) * p->T + i) * S + j];
                    }
                    x += bias;
                    err += 2.0 * u * (fabs(x) + fabs(bias));
                    s[j] = x;
                    ds = err > ds ? err : ds;
                    m = x > m ? x : m;
                    for (int64_t d = 0; d < p->Dv; d++)
                        vmax = fabs((double)vj[d]) > vmax ? fabs((double)vj[d]) : vmax;
                    n++;
                }
                double *orow = o ? o + ((b * p->T + i) * p->Hq + h) * p->Dv : NULL;
                double *wrow = weights ? weights + ((b * p->Hq + h) * p->T + i) * S : NULL;
                int64_t lidx = (b * p->Hq + h) * p->T + i;
                int64_t tidx = (b * p->T + i) * p->Hq + h;
                if (orow)
                    memset(orow, 0, sizeof(double) * (size_t)p->Dv);
                if (wrow)
                    memset(wrow, 0, sizeof(double) * (size_t)S);
                if (m == -INFINITY) { /* fully masked row, no sink */
                    if (lse)
                        lse[lidx] = -INFINITY;
                    if (tol_o)
                        tol_o[tidx] = 0.0;
                    if (tol_lse)
                        tol_lse[lidx] = 0.0;
                    if (tol_w)
                        tol_w[lidx] = 0.0;
                    continue;
                }
                double l = p->sinks ? exp((double)p->sinks[h] - m) : 0.0;
                for (int64_t j = 0; j < S; j++)
                    if (ok[j])
                        l += exp(s[j] - m);
                double row_lse = m + log(l);
                if (lse)
                    lse[lidx] = row_lse;
                for (int64_t j = 0; j < S; j++) {
                    if (!ok[j])
                        continue;
                    double w = exp(s[j] - m) / l;
                    if (wrow)
                        wrow[j] = w;
                    if (p->dropout_p > 0.0f)
                        w = tc_dropout_keep(p, b, h, i, j) ? w * dscale : 0.0;
                    if (orow) {
                        const float *vj = p->v + ((b * S + j) * p->Hkv + hk) * p->Dv;
                        for (int64_t d = 0; d < p->Dv; d++)
                            orow[d] += w * (double)vj[d];
                    }
                }
                double nn = (double)(n + 1);
                double dlse = 2.0 * ds + (nn + 8.0) * u * (1.0 + fabs(row_lse));
                double rel_w = ds + dlse + 8.0 * u;
                if (tol_o)
                    tol_o[tidx] = (rel_w + (nn + 8.0) * u) * dscale * vmax + u * vmax;
                if (tol_lse)
                    tol_lse[lidx] = dlse;
                if (tol_w)
                    tol_w[lidx] = rel_w;
            }
    free(s);
    free(ok);
}

/* ------------------------------------------------------------------ checks */

void tl_assert_close_(double a, double e, double tol, const char *file, int line,
                      const char *fmt, ...)
{
    if (fabs(a - e) <= tol || (a == e))
        return;
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    print_error("%s: got %.9g, expected %.9g (|diff| %.3g > tol %.3g)\n", what, a, e,
                fabs(a - e), tol);
    _fail(file, line);
}

void tc_check_o(const char *what, const tc_problem *p, const float *o,
                const double *ref_o, const double *tol_o)
{
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t i = 0; i < p->T; i++)
            for (int64_t h = 0; h < p->Hq; h++) {
                int64_t row = (b * p->T + i) * p->Hq + h;
                for (int64_t d = 0; d < p->Dv; d++) {
                    double got = o[row * p->Dv + d], want = ref_o[row * p->Dv + d];
                    if (!(fabs(got - want) <= tol_o[row]))
                        fail_msg("%s: o[b=%lld, t=%lld, h=%lld, d=%lld] = %.9g, reference "
                                 "%.9g, |diff| %.3g > tol %.3g",
                                 what, (long long)b, (long long)i, (long long)h,
                                 (long long)d, got, want, fabs(got - want), tol_o[row]);
                }
            }
}

void tc_check_lse(const char *what, const tc_problem *p, const float *lse,
                  const double *ref_lse, const double *tol_lse)
{
    for (int64_t x = 0; x < p->B * p->Hq * p->T; x++) {
        double got = lse[x], want = ref_lse[x];
        int ok = want == -INFINITY ? got == -INFINITY : fabs(got - want) <= tol_lse[x];
        if (!ok)
            fail_msg("%s: lse[%lld] (b=%lld, h=%lld, t=%lld) = %.9g, reference %.9g, "
                     "tol %.3g",
                     what, (long long)x, (long long)(x / (p->Hq * p->T)),
                     (long long)(x / p->T % p->Hq), (long long)(x % p->T), got, want,
                     tol_lse[x]);
    }
}

void tl_expect_error(int rc, int code, const char *what)
{
    if (rc != code)
        fail_msg("%s: returned %d (%s), expected %d", what, rc, mattn_err_name(rc), code);
    assert_true(strlen(mattn_last_error()) > 0);
}

/* ------------------------------------------------------------------ views */

mattn_tensor tl_view(float *buf, char layout, int64_t B, int64_t L, int64_t H, int64_t Dm)
{
    if (layout == 'h')
        return mattn_tensor_bhtd(buf, B, L, H, Dm);
    if (layout == 'p') {
        mattn_tensor t = {.data = buf, .batch = B, .seq = L, .heads = H, .dim = Dm};
        t.stride_head = Dm + 3;
        t.stride_seq = H * (Dm + 3) + 5;
        t.stride_batch = L * t.stride_seq + 7;
        return t;
    }
    return mattn_tensor_bthd(buf, B, L, H, Dm);
}

size_t tl_view_floats(char layout, int64_t B, int64_t L, int64_t H, int64_t Dm)
{
    if (layout == 'p')
        return (size_t)(B * (L * (H * (Dm + 3) + 5) + 7));
    return (size_t)(B * L * H * Dm);
}

float *tl_nan_floats(size_t n)
{
    float *x = tl_alloc(sizeof(float) * (n + 1));
    for (size_t i = 0; i < n + 1; i++)
        x[i] = NAN;
    return x;
}

void tl_scatter(const float *bthd, const mattn_tensor *t)
{
    for (int64_t b = 0; b < t->batch; b++)
        for (int64_t s = 0; s < t->seq; s++)
            for (int64_t h = 0; h < t->heads; h++)
                memcpy(t->data + b * t->stride_batch + s * t->stride_seq + h * t->stride_head,
                       bthd + ((b * t->seq + s) * t->heads + h) * t->dim,
                       sizeof(float) * (size_t)t->dim);
}

void tl_gather(float *bthd, const mattn_tensor *t)
{
    for (int64_t b = 0; b < t->batch; b++)
        for (int64_t s = 0; s < t->seq; s++)
            for (int64_t h = 0; h < t->heads; h++)
                memcpy(bthd + ((b * t->seq + s) * t->heads + h) * t->dim,
                       t->data + b * t->stride_batch + s * t->stride_seq + h * t->stride_head,
                       sizeof(float) * (size_t)t->dim);
}

int tc_run_and_check(const char *op, const tc_problem *p, char layout, int threads)
{
    int64_t B = p->B, T = p->T, S = p->S;
    mattn_tensor q, k, v, o;
    float *qb = NULL, *kb = NULL, *vb = NULL, *ob = NULL, *fused = NULL;
    if (layout == 'f') {
        /* One [B, T, Hq*D + Hkv*D + Hkv*Dv] buffer, q/k/v are column slices. */
        assert_true(T == S);
        int64_t row = p->Hq * p->D + p->Hkv * p->D + p->Hkv * p->Dv;
        fused = tl_alloc(sizeof(float) * (size_t)(B * T * row));
        q = (mattn_tensor){fused, B, T, p->Hq, p->D, T * row, row, p->D};
        k = (mattn_tensor){fused + p->Hq * p->D, B, S, p->Hkv, p->D, T * row, row, p->D};
        v = (mattn_tensor){fused + (p->Hq + p->Hkv) * p->D, B, S, p->Hkv, p->Dv, T * row,
                           row, p->Dv};
        ob = tl_alloc(sizeof(float) * tl_view_floats('t', B, T, p->Hq, p->Dv));
        o = tl_view(ob, 't', B, T, p->Hq, p->Dv);
    } else {
        qb = tl_alloc(sizeof(float) * tl_view_floats(layout, B, T, p->Hq, p->D));
        kb = tl_alloc(sizeof(float) * tl_view_floats(layout, B, S, p->Hkv, p->D));
        vb = tl_alloc(sizeof(float) * tl_view_floats(layout, B, S, p->Hkv, p->Dv));
        ob = tl_alloc(sizeof(float) * tl_view_floats(layout, B, T, p->Hq, p->Dv));
        q = tl_view(qb, layout, B, T, p->Hq, p->D);
        k = tl_view(kb, layout, B, S, p->Hkv, p->D);
        v = tl_view(vb, layout, B, S, p->Hkv, p->Dv);
        o = tl_view(ob, layout, B, T, p->Hq, p->Dv);
    }
    tl_scatter(p->q, &q);
    tl_scatter(p->k, &k);
    tl_scatter(p->v, &v);
    /* NaN everywhere in the outputs: any element left unwritten fails. */
    size_t on = layout == 'f' ? tl_view_floats('t', B, T, p->Hq, p->Dv)
                              : tl_view_floats(layout, B, T, p->Hq, p->Dv);
    for (size_t x = 0; x < on; x++)
        ob[x] = NAN;
    float *lse = tl_alloc(sizeof(float) * (size_t)(B * p->Hq * T + 1));
    for (int64_t x = 0; x < B * p->Hq * T; x++)
        lse[x] = NAN;

    mattn_options opts = tc_options(p);
    opts.threads = threads;
    int rc;
    mattn_kernel chosen;
    if (strcmp(op, "vanilla") == 0)
        rc = mattn_vanilla_forward(&q, &k, &v, &o, lse, NULL, &opts);
    else if (strcmp(op, "flash") == 0)
        rc = mattn_flash_forward(&q, &k, &v, &o, lse, &opts);
    else
        rc = mattn_sdpa_forward(&q, &k, &v, &o, lse, &opts, &chosen);

    if (rc == MATTN_OK) {
        float *o_bthd = tl_alloc(sizeof(float) * (size_t)(B * T * p->Hq * p->Dv));
        tl_gather(o_bthd, &o);
        size_t nrow = (size_t)(B * T * p->Hq), nl = (size_t)(B * p->Hq * T);
        double *ro = tl_alloc(sizeof(double) * nrow * (size_t)p->Dv);
        double *rl = tl_alloc(sizeof(double) * (nl + 1));
        double *to = tl_alloc(sizeof(double) * (nrow + 1));
        double *tlse = tl_alloc(sizeof(double) * (nl + 1));
        tc_reference(p, ro, rl, NULL, to, tlse, NULL);
        char what[96];
        snprintf(what, sizeof what, "%s layout=%c threads=%d", op, layout, threads);
        tc_check_o(what, p, o_bthd, ro, to);
        tc_check_lse(what, p, lse, rl, tlse);
        free(o_bthd);
        free(ro);
        free(rl);
        free(to);
        free(tlse);
    }
    free(qb);
    free(kb);
    free(vb);
    free(ob);
    free(fused);
    free(lse);
    return rc;
}
