/* float64 reference gradients of attention (SPEC §4-5), written from the
 * formulas with nothing from src/, plus per-element error bounds for an fp32
 * implementation, and the helpers that run a library backward and compare.
 *
 * Inputs are held in double (rg_inputs) so finite differences can perturb
 * them; the problem's shapes and options come from a tc_problem (testlib.h),
 * whose float q/k/v/bias/sinks are the values rg_inputs_make copies. */
#ifndef MATTN_REFGRAD_H
#define MATTN_REFGRAD_H

#include "testlib.h"

typedef struct rg_inputs {
    double *q, *k, *v; /* BTHD as in tc_problem */
    double *bias;      /* [bias_b, bias_h, T, S] or NULL */
    double *sinks;     /* [Hq] or NULL */
    double *dout;      /* [B, T, Hq, Dv]: the loss is L = sum(dout * o) */
} rg_inputs;

/* Double copies of p's float inputs and of dout. */
rg_inputs rg_inputs_make(const tc_problem *p, const float *dout);
void rg_inputs_free(rg_inputs *x);

/* Forward in float64: o [B, T, Hq, Dv], lse [B, Hq, T] (either may be NULL). */
void rg_forward(const tc_problem *p, const rg_inputs *x, double *o, double *lse);
/* L = sum(dout * o). */
double rg_loss(const tc_problem *p, const rg_inputs *x);

typedef struct rg_grads {
    double *o, *lse;                       /* the forward */
    double *dq, *dk, *dv, *dsinks, *dbias; /* dsinks/dbias NULL without sinks/bias */
    /* Bounds on |fp32 result - reference| for each element of the above. */
    double *tol_dq, *tol_dk, *tol_dv, *tol_dsinks, *tol_dbias;
} rg_grads;

/* Extra error of the o and lse an fp32 backward is given, beyond rounding
 * the reference values to fp32 (e.g. tc_reference's tol_o [B, T, Hq] and
 * tol_lse [B, Hq, T] when o and lse come from a library forward). */
typedef struct rg_input_err {
    const double *tol_o, *tol_lse;
} rg_input_err;

/* Reference gradients of L and their fp32 error bounds (see refgrad.c for
 * the derivation). err may be NULL. Allocates; free with rg_grads_free. */
rg_grads rg_backward(const tc_problem *p, const rg_inputs *x, const rg_input_err *err);
void rg_grads_free(rg_grads *g);

/* The reference o [B, T, Hq, Dv] and lse [B, Hq, T] rounded to fp32 (each
 * malloc'd with one float spare): what an fp32 backward is given. */
void rg_round_forward(const tc_problem *p, const rg_grads *g, float **o, float **lse);

/* Compares n fp32 values with the reference within per-element tolerances;
 * fails the test naming the first bad index. */
void rg_check(const char *what, const char *name, const float *got, const double *want,
              const double *tol, int64_t n);

/* Runs `op` ("vanilla", "flash", "sdpa") backward on p in a layout ('t'
 * BTHD, 'h' BHTD, 'p' padded strides, 'f' q/k/v and dq/dk/dv as slices of
 * fused buffers), with o and lse the reference's rounded to fp32, the given
 * threads and flash block sizes (0 = default), and checks dq, dk, dv, dsinks
 * and dbias against the reference. Returns the operator's status. */
int rg_run_and_check(const char *op, const tc_problem *p, const float *dout, char layout,
                     int threads, int block_q, int block_kv);

/* A random dout [B, T, Hq, Dv] in (-1, 1) (malloc'd). */
float *rg_random_dout(tl_rng *r, const tc_problem *p);

#endif
