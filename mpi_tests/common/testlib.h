/* Shared helpers for the cmocka test programs.
 *
 * - an MPI-aware runner (single-rank tests are spread over the ranks; every
 *   rank's failures are summed; only the verdict is collective),
 * - a self-contained float64 reference of SPEC §3-4 written from the formulas
 *   (it uses nothing from src/),
 * - tolerances derived from fp32 error bounds, and comparisons.
 *
 * The reference problem ("tc_problem") stores q/k/v in BTHD order; tests
 * convert to other layouts themselves. */
#ifndef MATTN_TESTLIB_H
#define MATTN_TESTLIB_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <mpi.h>

#include "mattn.h"

/* ------------------------------------------------------------------ runner */

/* Runs the tests with index % size == rank on this rank (single-rank tests
 * spread over the job) and returns the failure count summed over ranks. */
int tl_run_spread(const char *group, const struct CMUnitTest *tests, size_t n);
/* Runs every test on every rank (collective tests); returns summed failures. */
int tl_run_all(const char *group, const struct CMUnitTest *tests, size_t n);

/* From now on, a run longer than $TEST_ALARM seconds (else default_seconds)
 * writes `message` to stderr and exits with status 3: a collective call
 * that hangs (or ranks left waiting in a collective by one rank's failed
 * assertion) fails the program instead of blocking the suite. */
void tl_watchdog(const char *message, unsigned default_seconds);

int tl_rank(void);
int tl_size(void);

/* ------------------------------------------------------------------ data */

/* Deterministic generator (xorshift64*), seeded per test. */
typedef struct tl_rng {
    uint64_t s;
} tl_rng;
tl_rng tl_rng_make(uint64_t seed);
double tl_uniform(tl_rng *r);           /* [0, 1) */
double tl_symmetric(tl_rng *r);         /* (-1, 1) */
int64_t tl_int(tl_rng *r, int64_t n);   /* [0, n) */
void tl_fill(tl_rng *r, float *x, int64_t n, double amplitude);

void *tl_alloc(size_t bytes); /* calloc that fails the test on NULL */

/* ------------------------------------------------------------------ views */

/* A strided view [B, L, H, Dm] over buf in a layout: 't' BTHD, 'h' BHTD,
 * 'p' BTHD with every head padded by 3 floats, every position by 5 and
 * every batch entry by 7 (strides no packed layout has). */
mattn_tensor tl_view(float *buf, char layout, int64_t B, int64_t L, int64_t H, int64_t Dm);
/* How many floats the buffer of such a view spans. */
size_t tl_view_floats(char layout, int64_t B, int64_t L, int64_t H, int64_t Dm);
/* n + 1 floats, every one NaN: an output element never written fails. */
float *tl_nan_floats(size_t n);
/* Copies a BTHD array into the elements a view names (scatter), and back. */
void tl_scatter(const float *bthd, const mattn_tensor *t);
void tl_gather(float *bthd, const mattn_tensor *t);

/* ------------------------------------------------------------------ problem */

typedef struct tc_problem {
    int64_t B, T, S, Hq, Hkv, D, Dv;
    float *q, *k, *v; /* BTHD contiguous */
    /* options, as in mattn_options; scale 0 = 1/sqrt(D) */
    double scale;
    int causal;
    int64_t q_offset, kv_offset, window_left, window_right, chunk;
    double softcap;
    int32_t *q_seg, *kv_seg;  /* [B, T], [B, S] or NULL */
    uint8_t *mask;            /* [mask_b, mask_h, T, S] or NULL */
    int64_t mask_b, mask_h;
    float *bias;              /* [bias_b, bias_h, T, S] or NULL */
    int64_t bias_b, bias_h;
    float *sinks;             /* [Hq] or NULL */
    float dropout_p;
    uint64_t seed;
    int64_t drop_b0, drop_h0; /* dropout global index offsets */
    /* Set when q and k hold small integers and scale is a power of two, so
     * every fp32 dot product is exact (used to tighten tolerances). */
    int exact_dots;
} tc_problem;

/* Allocates q, k, v uniformly in (-amp, amp) with neutral options. */
tc_problem tc_make(tl_rng *r, int64_t B, int64_t T, int64_t S, int64_t Hq,
                   int64_t Hkv, int64_t D, int64_t Dv, double amp);
void tc_free(tc_problem *p);

/* The library options that describe the problem's options. */
mattn_options tc_options(const tc_problem *p);

/* ------------------------------------------------------------------ reference */

/* Allowed(b, h, i, j) straight from SPEC §3. */
int tc_allowed(const tc_problem *p, int64_t b, int64_t h, int64_t i, int64_t j);

/* SPEC §4 dropout: 1 when the weight of (b, h, i, j) is kept, i.e. the
 * hash u(seed, drop_b0 + b, drop_h0 + h, q position, kv position) >= p. */
int tc_dropout_keep(const tc_problem *p, int64_t b, int64_t h, int64_t i, int64_t j);

/* float64 reference of SPEC §4. o [B, T, Hq, Dv], lse [B, Hq, T],
 * weights [B, Hq, T, S] (before dropout); any may be NULL. tol_o [B, T, Hq],
 * tol_lse [B, Hq, T] and tol_w [B, Hq, T] (relative, for weights) receive
 * per-row error bounds for an fp32 implementation (may be NULL). */
void tc_reference(const tc_problem *p, double *o, double *lse, double *weights,
                  double *tol_o, double *tol_lse, double *tol_w);

/* ------------------------------------------------------------------ checks */

/* Compares an fp32 result to the reference with per-row tolerances:
 * o [B, T, Hq, Dv] (BTHD) and lse [B, Hq, T]. A reference lse of -inf
 * demands exactly -inf and an all-zero o row. Fails the test on mismatch,
 * naming the first bad element. `what` labels the message. */
void tc_check_o(const char *what, const tc_problem *p, const float *o,
                const double *ref_o, const double *tol_o);
void tc_check_lse(const char *what, const tc_problem *p, const float *lse,
                  const double *ref_lse, const double *tol_lse);

/* Runs the problem through an operator ("vanilla", "flash", "sdpa") with the
 * given layout ('t' = BTHD, 'h' = BHTD, 'f' = slices of one fused QKV
 * buffer), compares o and lse with the reference, and returns the status. */
int tc_run_and_check(const char *op, const tc_problem *p, char layout, int threads);

/* Fails the test unless a call returned `code` and left an error message. */
void tl_expect_error(int rc, int code, const char *what);

/* Double-precision closeness with an absolute tolerance. */
#define tl_assert_close(actual, expected, tol, ...)                                 \
    tl_assert_close_((double)(actual), (double)(expected), (double)(tol), __FILE__, \
                     __LINE__, __VA_ARGS__)
void tl_assert_close_(double a, double e, double tol, const char *file, int line,
                      const char *fmt, ...) __attribute__((format(printf, 6, 7)));

#endif
