#include "shards.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sh_split(int64_t n, int parts, int i, int64_t *start, int64_t *count)
{
    *count = n / parts + (i < n % parts ? 1 : 0);
    *start = i * (n / parts) + (i < n % parts ? i : n % parts);
}

int64_t *sh_rows(int64_t n, int parts, int idx, mattn_seq_layout layout, int64_t *len)
{
    int m = layout == MATTN_SEQ_ZIGZAG ? 2 * parts : parts;
    int chunks[2] = {idx, 2 * parts - 1 - idx};
    int nc = layout == MATTN_SEQ_ZIGZAG ? 2 : 1;
    int64_t *rows = tl_alloc(sizeof(int64_t) * (size_t)(n + 1));
    *len = 0;
    for (int c = 0; c < nc; c++) {
        int64_t start, size;
        sh_split(n, m, chunks[c], &start, &size);
        for (int64_t i = 0; i < size; i++)
            rows[(*len)++] = start + i;
    }
    return rows;
}

static sh_shard cut(const tc_problem *p, int dp, int tp, int sp, int dpr, int tpr, int spr,
                    mattn_seq_layout layout)
{
    sh_shard s = {.dp = dp, .tp = tp, .sp = sp, .dpr = dpr, .tpr = tpr, .spr = spr};
    sh_split(p->B, dp, dpr, &s.b0, &s.nb);
    sh_split(p->Hkv, tp, tpr, &s.hk0, &s.nhk);
    int64_t G = p->Hq / p->Hkv; /* a kv head's q heads go with it */
    s.hq0 = s.hk0 * G, s.nhq = s.nhk * G;
    s.trow = sh_rows(p->T, sp, spr, layout, &s.T);
    s.srow = sh_rows(p->S, sp, spr, layout, &s.S);
    return s;
}

sh_shard sh_shard_make(const tc_problem *p, int dp, int tp, int sp, int rank,
                       mattn_seq_layout layout)
{
    return cut(p, dp, tp, sp, rank / (sp * tp), (rank / sp) % tp, rank % sp, layout);
}

sh_shard sh_shard_of(const tc_problem *p, const mattn_mesh *m, mattn_seq_layout layout)
{
    int dp, tp, sp, dpr, tpr, spr;
    mattn_mesh_shape(m, &dp, &tp, &sp);
    mattn_mesh_coords(m, &dpr, &tpr, &spr);
    return cut(p, dp, tp, sp, dpr, tpr, spr, layout);
}

void sh_shard_free(sh_shard *s)
{
    free(s->trow);
    free(s->srow);
    s->trow = s->srow = NULL;
}

float *sh_at(const mattn_tensor *t, int64_t b, int64_t s, int64_t h)
{
    return t->data + b * t->stride_batch + s * t->stride_seq + h * t->stride_head;
}

void sh_take(const float *g, int64_t L, int64_t H, int64_t Dm, const mattn_tensor *t,
             int64_t b0, const int64_t *rows, int64_t h0)
{
    for (int64_t b = 0; b < t->batch; b++)
        for (int64_t l = 0; l < t->seq; l++)
            for (int64_t h = 0; h < t->heads; h++)
                memcpy(sh_at(t, b, l, h), g + (((b0 + b) * L + rows[l]) * H + h0 + h) * Dm,
                       sizeof(float) * (size_t)Dm);
}

void sh_take_segments(const tc_problem *p, const sh_shard *s, mattn_options *opts, int32_t **qs,
                      int32_t **ks)
{
    *qs = *ks = NULL;
    if (!p->q_seg)
        return;
    *qs = tl_alloc(sizeof(int32_t) * (size_t)(s->nb * s->T + 1));
    *ks = tl_alloc(sizeof(int32_t) * (size_t)(s->nb * s->S + 1));
    for (int64_t b = 0; b < s->nb; b++) {
        for (int64_t t = 0; t < s->T; t++)
            (*qs)[b * s->T + t] = p->q_seg[(s->b0 + b) * p->T + s->trow[t]];
        for (int64_t j = 0; j < s->S; j++)
            (*ks)[b * s->S + j] = p->kv_seg[(s->b0 + b) * p->S + s->srow[j]];
    }
    opts->q_segment_ids = *qs;
    opts->kv_segment_ids = *ks;
}

void sh_local_make(const tc_problem *p, const mattn_mesh *m, sh_local *s)
{
    int64_t T = p->T, S = p->S, D = p->D, Dv = p->Dv;
    memset(s, 0, sizeof *s);
    s->c = sh_shard_of(p, m, MATTN_SEQ_CONTIGUOUS);
    int64_t nb = s->c.nb, nh = s->c.nhq, nhk = s->c.nhk;
    s->q = tl_alloc(sizeof(float) * (size_t)(nb * T * nh * D + 1));
    s->k = tl_alloc(sizeof(float) * (size_t)(nb * S * nhk * D + 1));
    s->v = tl_alloc(sizeof(float) * (size_t)(nb * S * nhk * Dv + 1));
    s->o = tl_alloc(sizeof(float) * (size_t)(nb * T * nh * Dv + 1));
    s->lse = tl_alloc(sizeof(float) * (size_t)(nb * nh * T + 1));
    s->tq = mattn_tensor_bthd(s->q, nb, T, nh, D);
    s->tk = mattn_tensor_bthd(s->k, nb, S, nhk, D);
    s->tv = mattn_tensor_bthd(s->v, nb, S, nhk, Dv);
    s->to = mattn_tensor_bthd(s->o, nb, T, nh, Dv);
    sh_take(p->q, T, p->Hq, D, &s->tq, s->c.b0, s->c.trow, s->c.hq0);
    sh_take(p->k, S, p->Hkv, D, &s->tk, s->c.b0, s->c.srow, s->c.hk0);
    sh_take(p->v, S, p->Hkv, Dv, &s->tv, s->c.b0, s->c.srow, s->c.hk0);
    for (int64_t x = 0; x < nb * T * nh * Dv; x++)
        s->o[x] = NAN;
    for (int64_t x = 0; x < nb * nh * T; x++)
        s->lse[x] = NAN;
    s->opts = tc_options(p); /* global sinks, mask, bias */
    sh_take_segments(p, &s->c, &s->opts, &s->qs, &s->ks);
    s->shape = (mattn_dist_shape){p->B, T, S, p->Hq, p->Hkv, MATTN_SEQ_CONTIGUOUS};
}

void sh_local_free(sh_local *s)
{
    free(s->q), free(s->k), free(s->v), free(s->o), free(s->lse), free(s->qs), free(s->ks);
    sh_shard_free(&s->c);
}

void sh_local_check(const char *what, const tc_problem *p, const sh_local *s, const float *go,
                    const float *gl, const double *ro, const double *rl, const double *tol_o,
                    const double *tol_l)
{
    const int64_t T = p->T, Dv = p->Dv, Hq = p->Hq;
    const int64_t b0 = s->c.b0, nb = s->c.nb, h0 = s->c.hq0, nh = s->c.nhq;
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < nh; h++) {
                int64_t row = ((b0 + b) * T + t) * Hq + h0 + h;
                const float *got = s->o + ((b * T + t) * nh + h) * Dv;
                for (int64_t d = 0; d < Dv; d++) {
                    if (memcmp(&got[d], &go[row * Dv + d], sizeof(float)) != 0)
                        fail_msg("%s on %dx%d, rank %d: o[b=%lld, t=%lld, h=%lld, d=%lld] = "
                                 "%.9g but single-rank gives %.9g", what, s->c.dp, s->c.tp,
                                 tl_rank(), (long long)(b0 + b), (long long)t,
                                 (long long)(h0 + h), (long long)d, got[d], go[row * Dv + d]);
                    if (!(fabs(got[d] - ro[row * Dv + d]) <= tol_o[row]))
                        fail_msg("%s: o[b=%lld, t=%lld, h=%lld] = %.9g, reference %.9g", what,
                                 (long long)(b0 + b), (long long)t, (long long)(h0 + h), got[d],
                                 ro[row * Dv + d]);
                }
                int64_t li = ((b0 + b) * Hq + h0 + h) * T + t;
                float l = s->lse[(b * nh + h) * T + t];
                if (memcmp(&l, &gl[li], sizeof l) != 0)
                    fail_msg("%s: lse[b=%lld, h=%lld, t=%lld] = %.9g but single-rank %.9g", what,
                             (long long)(b0 + b), (long long)(h0 + h), (long long)t, l, gl[li]);
                int ok = rl[li] == -INFINITY ? l == -INFINITY : fabs(l - rl[li]) <= tol_l[li];
                if (!ok)
                    fail_msg("%s: lse %.9g, reference %.9g", what, l, rl[li]);
            }
}

int sh_meshes_create(mattn_mesh **meshes, int max)
{
    int size = tl_size(), n = 0;
    for (int sp = size; sp >= 1; sp--)
        for (int tp = 1; tp <= size / sp; tp++) {
            if (size % (sp * tp) != 0)
                continue;
            int dp = size / (sp * tp);
            if (n == max || mattn_mesh_create(MPI_COMM_WORLD, dp, tp, sp, &meshes[n]) != MATTN_OK) {
                fprintf(stderr, "mesh %dx%dx%d: %s\n", dp, tp, sp,
                        n == max ? "too many meshes" : mattn_last_error());
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            n++;
        }
    return n;
}

void sh_meshes_free(mattn_mesh **meshes, int n)
{
    for (int i = 0; i < n; i++)
        mattn_mesh_free(meshes[i]);
}
