/* The resolved decode problem every decode front door builds, and the one
 * streaming kernel that computes it (src/decode/decode_kernel.c).
 *
 * ar, ragged and paged decode are the same computation seen three ways: a
 * set of sequences, each with a few query rows at its last positions and a
 * range of keys read from a contiguous cache or from pages. The front doors
 * (decode.c, paged.c, decode_dist.c) validate and fill this struct; the
 * kernel reads only this struct and never calls MPI. */
#ifndef MATTN_DECODE_DECODE_H
#define MATTN_DECODE_DECODE_H

#include <stdint.h>

#include "mattn/decode.h"

/* One sequence of the problem. Positions are global (SPEC §3). */
typedef struct mattn__dec_seq {
    int64_t q0, qn;       /* packed query rows [q0, q0 + qn) */
    int64_t qp_last;      /* global position of the last query row */
    int64_t lo, hi;       /* global key positions the sequence offers: [lo, hi) */
    int64_t pos0;         /* global position of local key 0 */
    int64_t len;          /* local keys held: local j in [0, len) */
    int64_t batch;        /* contiguous cache: batch index into k/v */
    const int32_t *pages; /* paged cache: this sequence's page table row */
} mattn__dec_seq;

typedef struct mattn__dec {
    int64_t nseq, Hq, Hkv, group, D, Dv;
    const mattn__dec_seq *seq;

    /* Query row t, head h at q + t * q_st + h * q_sh (D contiguous). */
    const float *q;
    int64_t q_st, q_sh;
    /* Key j of head hk: contiguous k + batch * k_sb + j * k_ss + hk * k_sh;
     * paged (page_size > 0): page pg = pages[j / page_size] at
     * k + pg * k_sb + (j % page_size) * k_ss + hk * k_sh. V likewise. */
    const float *k;
    int64_t k_sb, k_ss, k_sh;
    const float *v;
    int64_t v_sb, v_ss, v_sh;
    int64_t page_size; /* 0: contiguous cache */

    /* Outputs per (query row t, head h); lse and mx may be NULL. mx is the
     * row's largest logit (with the sink when sinks are folded), -inf if
     * none. */
    float *o;
    int64_t o_st, o_sh;
    float *lse;
    int64_t lse_st, lse_sh;
    float *mx;
    int64_t mx_st, mx_sh;

    float scale, softcap; /* softcap 0: off */
    int64_t window_left, window_right, chunk;
    const float *sinks; /* [Hq] or NULL */
    int fold_sinks;     /* 0: leave sinks to the caller (cross-rank merge) */
    int threads;
    int64_t piece; /* split-KV piece length in keys */
} mattn__dec;

/* Local keys [*lo, *hi) that a query at global position qp of sequence s may
 * see: the sequence's range, causal (kp <= qp), window and chunk, clipped to
 * the keys held locally. Empty when *lo >= *hi. */
static inline void mattn__dec_row_range(const mattn__dec *p, const mattn__dec_seq *s,
                                        int64_t qp, int64_t *lo, int64_t *hi)
{
    int64_t first = s->lo, end = s->hi; /* global, [first, end) */
    if (qp + 1 < end)
        end = qp + 1;
    if (p->window_left >= 0 && qp - p->window_left > first)
        first = qp - p->window_left;
    if (p->window_right >= 0 && qp + p->window_right + 1 < end)
        end = qp + p->window_right + 1;
    if (p->chunk > 0) {
        int64_t c0 = qp >= 0 ? qp / p->chunk * p->chunk
                             : -((-qp + p->chunk - 1) / p->chunk) * p->chunk;
        if (c0 > first)
            first = c0;
        if (c0 + p->chunk < end)
            end = c0 + p->chunk;
    }
    int64_t l = first - s->pos0, h = end - s->pos0;
    *lo = l < 0 ? 0 : (l > s->len ? s->len : l);
    *hi = h < 0 ? 0 : (h > s->len ? s->len : h);
    if (*hi < *lo)
        *hi = *lo;
}

/* ---- argument checks shared by the front doors (decode_args.c) ---- */

/* Validates a public tensor: not NULL, sane non-negative shape and strides,
 * data present when it has elements (need_data), and each expected extent
 * that is >= 0 matched. */
int mattn__dec_check_tensor(const char *name, const mattn_tensor *t, int64_t batch,
                            int64_t seq, int64_t heads, int64_t dim, int need_data);

/* Checks the mattn_options fields decode cannot honour (UNSUPPORTED) and the
 * ranges of the others, and fills scale, softcap, window, chunk, sinks,
 * threads and piece. p->Hq and p->D must be set. */
int mattn__dec_options(mattn__dec *p, const mattn_options *opts);

/* Contiguous cache (ar / ragged): validates and fills p, with p->seq
 * allocated from the scratch pool (the caller returns it with
 * mattn__scratch_put). q [B,1,Hq,D], k [B,S,Hkv,D], v [B,S,Hkv,Dv],
 * o [B,1,Hq,Dv] (o may be NULL: shapes only, for the cost estimate);
 * starts may be NULL. Single rank (whole = 1) requires each range inside the
 * local cache; split over ranks the cross-rank code checks coverage. */
int mattn__dec_contiguous(mattn__dec *p, const mattn_tensor *q, const mattn_tensor *k,
                          const mattn_tensor *v, const int32_t *starts, const int32_t *ends,
                          const mattn_tensor *o, const mattn_options *opts, int whole);

/* Paged cache: the same for mattn_paged_forward's arguments. Single rank
 * (whole = 1) requires kv_starts = 0 and kv_lens = kv_totals. */
int mattn__dec_paged(mattn__dec *p, const mattn_tensor *q, const mattn_paged_kv *cache,
                     const int32_t *cu_q_lens, const mattn_tensor *o,
                     const mattn_options *opts, int whole);

/* ragged decode's raw l from the kernel's lse and max: l = exp(lse - m),
 * 0 for an empty row. */
void mattn__dec_l_from_lse(int64_t n, const float *lse, const float *m, float *l);

/* Computes the problem on local memory. MATTN_OK or MATTN_ERR_NOMEM. */
int mattn__decode_kernel(const mattn__dec *p);

/* What the inner loops work on for one task: n kv heads, each with R q rows
 * (q [n][R][D], scaled), their logits s [n][R][ld] and unnormalised outputs
 * acc [n][R][Dv]. */
typedef struct mattn__dec_heads {
    int64_t n, R, D, Dv, ld;
    const float *q;
    float *s, *acc;
} mattn__dec_heads;

/* The inner loops of the kernel, chosen once at run time like the vector
 * math (MATTN_VECMATH=portable forces the portable ones). Both walk all n
 * heads of a group of nk keys whose rows are ks apart (head h at + h * kh),
 * and write or read logits columns [j, j + nk). pf, if not NULL, is the
 * group the kernel reads a few calls later: a hint to prefetch, never
 * dereferenced (it may point past the end of the data). */
typedef struct mattn__dec_ops {
    const char *name;
    /* s[h][r][j + i] = dot(q[h][r], k + h * kh + i * ks), i < nk. */
    void (*dots)(const mattn__dec_heads *w, int64_t j, const float *k, int64_t ks,
                 int64_t kh, int64_t nk, const float *pf);
    /* acc[h][r][:] += sum_{i < nk} s[h][r][j + i] * (v + h * vh + i * vs)[:]. */
    void (*accum)(const mattn__dec_heads *w, int64_t j, const float *v, int64_t vs,
                  int64_t vh, int64_t nk, const float *pf);
} mattn__dec_ops;

const mattn__dec_ops *mattn__dec_ops_get(void);
extern const mattn__dec_ops mattn__dec_ops_portable;
extern const mattn__dec_ops mattn__dec_ops_avx2;
extern const mattn__dec_ops mattn__dec_ops_avx512;

#endif
