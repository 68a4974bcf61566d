/* Paged decode front door and the cache write (SPEC §5 `paged`).
 *
 * Every page id a sequence uses and every length is checked against the
 * table and the pool before the kernel runs: bad metadata is an error, never
 * a read (or a write) out of bounds. */
#include "core/scratch.h"
#include "core/status.h"
#include "decode/decode.h"

int mattn__dec_paged(mattn__dec *p, const mattn_tensor *q, const mattn_paged_kv *c,
                     const int32_t *cu, const mattn_tensor *o, const mattn_options *opts,
                     int whole)
{
    int rc;
    *p = (mattn__dec){0};
    if (c == NULL)
        return mattn__fail(MATTN_ERR_ARG, "paged cache is NULL");
    if ((rc = mattn__dec_check_tensor("k_pages", &c->k_pages, -1, -1, -1, -1, 1)))
        return rc;
    const mattn_tensor *kp = &c->k_pages;
    int64_t npages = kp->batch, ps = kp->seq, Hkv = kp->heads, D = kp->dim;
    if ((rc = mattn__dec_check_tensor("v_pages", &c->v_pages, npages, ps, Hkv, -1, 1)))
        return rc;
    int64_t Dv = c->v_pages.dim;
    if ((rc = mattn__dec_check_tensor("q", q, 1, -1, -1, D, 1)))
        return rc;
    int64_t T = q->seq, Hq = q->heads;
    if ((rc = mattn__dec_check_tensor("o", o, 1, T, Hq, Dv, 1)))
        return rc;
    if (Hq % Hkv != 0)
        return mattn__fail(MATTN_ERR_SHAPE, "q_heads=%lld is not a multiple of kv_heads=%lld",
                           (long long)Hq, (long long)Hkv);
    int64_t ns = c->num_seqs, mp = c->max_pages;
    if (ns < 0 || mp < 0 || ns > ((int64_t)1 << 40) || mp > ((int64_t)1 << 40))
        return mattn__fail(MATTN_ERR_SHAPE, "num_seqs=%lld, max_pages=%lld must be >= 0",
                           (long long)ns, (long long)mp);
    if (ps < 1 && ns > 0)
        return mattn__fail(MATTN_ERR_SHAPE, "page_size=%lld must be >= 1", (long long)ps);
    if (cu == NULL)
        return mattn__fail(MATTN_ERR_ARG, "cu_q_lens is NULL");
    if (ns > 0 && (c->kv_lens == NULL || (mp > 0 && c->page_table == NULL)))
        return mattn__fail(MATTN_ERR_ARG, "kv_lens or page_table is NULL");
    if (cu[0] != 0 || cu[ns] != T)
        return mattn__fail(MATTN_ERR_SHAPE,
                           "cu_q_lens must run from 0 to total_q=%lld (got %d .. %d)",
                           (long long)T, cu[0], cu[ns]);
    p->nseq = ns, p->Hq = Hq, p->Hkv = Hkv, p->group = Hq / Hkv, p->D = D, p->Dv = Dv;
    if ((rc = mattn__dec_options(p, opts)))
        return rc;
    if (opts->kv_offset != 0)
        return mattn__fail(MATTN_ERR_UNSUPPORTED,
                           "paged: kv_offset=%lld; a rank's part of a sequence is given by "
                           "kv_starts", (long long)opts->kv_offset);

    for (int64_t s = 0; s < ns; s++) {
        int64_t qn = (int64_t)cu[s + 1] - cu[s], len = c->kv_lens[s];
        int64_t start = c->kv_starts ? c->kv_starts[s] : 0;
        int64_t total = c->kv_totals ? c->kv_totals[s] : len;
        if (qn < 0)
            return mattn__fail(MATTN_ERR_SHAPE, "cu_q_lens decreases at sequence %lld",
                               (long long)s);
        if (len < 0 || len > mp * ps)
            return mattn__fail(MATTN_ERR_SHAPE,
                               "sequence %lld: kv_len=%lld is outside [0, max_pages * "
                               "page_size = %lld]",
                               (long long)s, (long long)len, (long long)(mp * ps));
        if (c->kv_totals == NULL && qn > len) /* the single-rank form */
            return mattn__fail(MATTN_ERR_SHAPE,
                               "sequence %lld: q_len=%lld is above kv_len=%lld (its queries "
                               "are its last q_len positions)",
                               (long long)s, (long long)qn, (long long)len);
        if (start < 0 || start + len > total || qn > total)
            return mattn__fail(MATTN_ERR_SHAPE,
                               "sequence %lld: kv_start=%lld + kv_len=%lld must be <= kv_total="
                               "%lld and q_len=%lld <= kv_total",
                               (long long)s, (long long)start, (long long)len,
                               (long long)total, (long long)qn);
        if (whole && (start != 0 || len != total))
            return mattn__fail(MATTN_ERR_ARG,
                               "sequence %lld: a single-rank call must hold the whole sequence "
                               "(kv_start=%lld, kv_len=%lld, kv_total=%lld)",
                               (long long)s, (long long)start, (long long)len, (long long)total);
        const int32_t *row = c->page_table + s * mp;
        for (int64_t i = 0; i < (len + ps - 1) / ps; i++)
            if (row[i] < 0 || row[i] >= npages)
                return mattn__fail(MATTN_ERR_ARG,
                                   "sequence %lld: page_table[%lld] = %d is not a page id in "
                                   "[0, %lld)",
                                   (long long)s, (long long)i, row[i], (long long)npages);
    }

    mattn__dec_seq *seq = mattn__scratch_get(sizeof(mattn__dec_seq) * (size_t)(ns ? ns : 1));
    if (seq == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "paged: cannot allocate %lld sequences",
                           (long long)ns);
    for (int64_t s = 0; s < ns; s++) {
        int64_t total = c->kv_totals ? c->kv_totals[s] : c->kv_lens[s];
        /* a sequence's queries are its last q_len positions (bottom-right) */
        seq[s] = (mattn__dec_seq){.q0 = cu[s], .qn = (int64_t)cu[s + 1] - cu[s],
                                  .qp_last = total - 1, .lo = 0, .hi = total,
                                  .pos0 = c->kv_starts ? c->kv_starts[s] : 0,
                                  .len = c->kv_lens[s], .pages = c->page_table + s * mp};
    }
    p->seq = seq;
    p->q = q->data, p->q_st = q->stride_seq, p->q_sh = q->stride_head;
    p->k = kp->data, p->k_sb = kp->stride_batch, p->k_ss = kp->stride_seq;
    p->k_sh = kp->stride_head;
    p->v = c->v_pages.data, p->v_sb = c->v_pages.stride_batch;
    p->v_ss = c->v_pages.stride_seq, p->v_sh = c->v_pages.stride_head;
    p->page_size = ps;
    p->o = o->data, p->o_st = o->stride_seq, p->o_sh = o->stride_head;
    return MATTN_OK;
}

int mattn_paged_forward(const mattn_tensor *q, const mattn_paged_kv *cache,
                        const int32_t *cu_q_lens, const mattn_tensor *o, float *lse,
                        const mattn_options *opts)
{
    mattn__dec p;
    int rc = mattn__dec_paged(&p, q, cache, cu_q_lens, o, opts, 1);
    if (rc == MATTN_OK) {
        p.lse = lse, p.lse_st = 1, p.lse_sh = q->seq; /* lse [Hq, total_q] */
        rc = mattn__decode_kernel(&p);
    }
    mattn__scratch_put((void *)p.seq);
    return rc;
}

int mattn_paged_cache_write(const mattn_tensor *k_new, const mattn_tensor *v_new,
                            const int32_t *slots, const mattn_tensor *k_pages,
                            const mattn_tensor *v_pages)
{
    int rc;
    if ((rc = mattn__dec_check_tensor("k_pages", k_pages, -1, -1, -1, -1, 1)))
        return rc;
    int64_t npages = k_pages->batch, ps = k_pages->seq, Hkv = k_pages->heads;
    int64_t D = k_pages->dim;
    if ((rc = mattn__dec_check_tensor("v_pages", v_pages, npages, ps, Hkv, -1, 1)) ||
        (rc = mattn__dec_check_tensor("k_new", k_new, 1, -1, Hkv, D, 1)) ||
        (rc = mattn__dec_check_tensor("v_new", v_new, 1, k_new->seq, Hkv, v_pages->dim, 1)))
        return rc;
    int64_t T = k_new->seq, Dv = v_pages->dim, nslots = npages * ps;
    if (T > 0 && slots == NULL)
        return mattn__fail(MATTN_ERR_ARG, "slot_mapping is NULL");
    /* All slots first: a bad one leaves the cache untouched. */
    for (int64_t t = 0; t < T; t++)
        if (slots[t] >= nslots)
            return mattn__fail(MATTN_ERR_ARG,
                               "slot_mapping[%lld] = %d is beyond the %lld slots of the pages",
                               (long long)t, slots[t], (long long)nslots);
    for (int64_t t = 0; t < T; t++) {
        if (slots[t] < 0) /* padding token: not cached */
            continue;
        int64_t pg = slots[t] / ps, r = slots[t] % ps;
        for (int64_t h = 0; h < Hkv; h++) {
            const float *ks = k_new->data + t * k_new->stride_seq + h * k_new->stride_head;
            const float *vs = v_new->data + t * v_new->stride_seq + h * v_new->stride_head;
            float *kd = k_pages->data + pg * k_pages->stride_batch + r * k_pages->stride_seq +
                        h * k_pages->stride_head;
            float *vd = v_pages->data + pg * v_pages->stride_batch + r * v_pages->stride_seq +
                        h * v_pages->stride_head;
            for (int64_t d = 0; d < D; d++)
                kd[d] = ks[d];
            for (int64_t d = 0; d < Dv; d++)
                vd[d] = vs[d];
        }
    }
    return MATTN_OK;
}
