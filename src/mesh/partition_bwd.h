/* What the distributed backward front doors (partition_bwd.c, ring/ring_bwd.c)
 * share: the checks of the gradient arguments on one rank, and the tag that
 * makes the status agreement tell a backward call from a forward one. */
#ifndef MATTN_MESH_PARTITION_BWD_H
#define MATTN_MESH_PARTITION_BWD_H

#include "mattn.h"
#include "mesh/dist.h"

/* Or-ed into the operator the agreement compares (mattn__dist_agree), with
 * whether dsinks / dbias are wanted: a rank calling forward while another
 * calls backward, or asking for dsinks alone, is reported as an "operator"
 * mismatch on every rank instead of hanging in a collective the others skip. */
#define MATTN__AGREE_BACKWARD 0x100
#define MATTN__AGREE_DSINKS 0x200
#define MATTN__AGREE_DBIAS 0x400

/* The gradient arguments of this rank against its shard (d from
 * mattn__dist_prepare): lse present and a log-sum-exp, dout like o, dq / dk /
 * dv like q / k / v and non-overlapping, dsinks / dbias only with sinks /
 * a bias. Local: the caller agrees on the status. */
int mattn__dist_grad_check(const mattn__dist *d, const mattn_tensor *q, const mattn_tensor *k,
                           const mattn_tensor *v, const mattn_tensor *o, const float *lse,
                           const mattn_tensor *dout, const mattn_tensor *dq,
                           const mattn_tensor *dk, const mattn_tensor *dv,
                           const float *dsinks, const float *dbias, const mattn_options *opts);

/* The workspace of mattn__dist_sum_dsinks: Hq + 1 doubles, allocated
 * before the call's agreement (a failure after it would leave the other
 * ranks in the sum). NULL with a message when out of memory. */
double *mattn__dist_dsinks_ws(const mattn_dist_shape *shape);

/* Collective over the mesh: dsinks [Hq] (global) from this rank's [Hq_l]
 * contribution `local` at q head q_head_start (NULL or Hq_l = 0: none),
 * summed in double over every rank in ws (from mattn__dist_dsinks_ws). */
int mattn__dist_sum_dsinks(const mattn_mesh *m, const mattn_dist_shape *shape,
                           const mattn_shard *sh, const float *local, double *ws,
                           float *dsinks);

/* Collective over the mesh: the global dbias [bias.batch, bias.heads, T, S]
 * in place, each rank holding its contributions and zeros elsewhere, summed
 * over every rank. */
int mattn__dist_sum_dbias(const mattn_mesh *m, const mattn_dist_shape *shape,
                          const mattn_options *opts, float *dbias);

#endif
