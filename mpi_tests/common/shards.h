/* The tests' own reading of how a dp x tp x sp mesh cuts a global problem
 * (SPEC §7), written out here and not taken from the library: batch entries
 * over dp, kv-head groups (with their q heads) over tp, sequence rows over
 * sp in the contiguous or zigzag layout. Plus copying a shard's rows out of
 * the global BTHD arrays, and the list of every mesh of the job. */
#ifndef MATTN_TEST_SHARDS_H
#define MATTN_TEST_SHARDS_H

#include "testlib.h"

/* n items in `parts` near-equal runs, the first n % parts one longer: the
 * start and length of run i. */
void sh_split(int64_t n, int parts, int i, int64_t *start, int64_t *count);

/* n sequence rows cut into m near-equal chunks (split's rule); contiguous:
 * part idx is chunk idx of parts; zigzag: chunks idx and 2 parts - 1 - idx
 * of 2 parts. Returns the global row of every local row (malloc'd, *len
 * of them). */
int64_t *sh_rows(int64_t n, int parts, int idx, mattn_seq_layout layout, int64_t *len);

/* What one rank holds of a problem. */
typedef struct sh_shard {
    int dp, tp, sp, dpr, tpr, spr;             /* mesh shape, this rank's coordinates */
    int64_t b0, nb, hq0, nhq, hk0, nhk, T, S;  /* batch, q-head, kv-head runs; lengths */
    int64_t *trow, *srow;                      /* global row of each local q / kv row */
} sh_shard;

/* The shard of mesh rank `rank` on a dp x tp x sp mesh, its coordinates
 * read from the rank as the test understands it (sp fastest, then tp). */
sh_shard sh_shard_make(const tc_problem *p, int dp, int tp, int sp, int rank,
                       mattn_seq_layout layout);
/* This rank's shard on mesh m (shape and coordinates from the mesh). */
sh_shard sh_shard_of(const tc_problem *p, const mattn_mesh *m, mattn_seq_layout layout);
void sh_shard_free(sh_shard *s);

/* The element (b, s, h, 0) of a view. */
float *sh_at(const mattn_tensor *t, int64_t b, int64_t s, int64_t h);

/* Copies rows of a global BTHD array [B, L, H, Dm] into a local view:
 * local (b, l, h) <- global (b0 + b, rows[l], h0 + h). */
void sh_take(const float *g, int64_t L, int64_t H, int64_t Dm, const mattn_tensor *t,
             int64_t b0, const int64_t *rows, int64_t h0);

/* The shard's rows of p's segment ids ([nb, T] and [nb, S], malloc'd) put
 * on opts; *qs = *ks = NULL and opts untouched when p has none. */
void sh_take_segments(const tc_problem *p, const sh_shard *s, mattn_options *opts, int32_t **qs,
                      int32_t **ks);

/* What a rank passes to a mesh call on an sp = 1 mesh (whole sequences):
 * its rows of q, k, v (BTHD), NaN-filled o and lse, the problem's options
 * (sinks, mask and bias global; segment ids its own rows) and the global
 * shape. */
typedef struct sh_local {
    sh_shard c;
    float *q, *k, *v, *o, *lse;
    int32_t *qs, *ks;
    mattn_tensor tq, tk, tv, to;
    mattn_options opts;
    mattn_dist_shape shape;
} sh_local;

void sh_local_make(const tc_problem *p, const mattn_mesh *m, sh_local *s);
void sh_local_free(sh_local *s);

/* Checks the o and lse of such a call: equal bit for bit to the rows of the
 * same operator run single-rank on the whole problem (go [B, T, Hq, Dv],
 * gl [B, Hq, T]), and within the per-row tolerances of the reference
 * (ro, rl; tol_o [B, T, Hq], tol_l [B, Hq, T]). `what` labels failures. */
void sh_local_check(const char *what, const tc_problem *p, const sh_local *s, const float *go,
                    const float *gl, const double *ro, const double *rl, const double *tol_o,
                    const double *tol_l);

/* Every dp x tp x sp factorisation of the job size, sequence-heavy first
 * (sp from the size down, then tp up); aborts the job if one fails.
 * Returns how many (at most max) were stored in meshes. */
int sh_meshes_create(mattn_mesh **meshes, int max);
void sh_meshes_free(mattn_mesh **meshes, int n);

#endif
