/* mattn: distributed attention over MPI, on CPU over OpenBLAS.
 *
 * The semantics of every operator and option are fixed by the project's SPEC
 * (docs/semantics.md summarises it). In short:
 *   q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv], o [B, T, Hq, Dv]
 *   (any element strides over batch, sequence and head; head_dim contiguous),
 *   lse [B, Hq, T] (natural log), query head h reads kv head h / (Hq / Hkv).
 *
 * Every call returns MATTN_OK (0) or a negative mattn_status; the detail of the
 * last failure on the calling thread is in mattn_last_error(). Inputs are never
 * written. The caller owns every tensor. */
#ifndef MATTN_H
#define MATTN_H

#include <stddef.h>
#include <stdint.h>

#include "mattn/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MATTN_BUILDING) && defined(__GNUC__)
#define MATTN_API __attribute__((visibility("default")))
#else
#define MATTN_API
#endif

/* ---------------------------------------------------------------- status */

/* X(name, value, message): the one table behind the enum and mattn_strerror. */
#define MATTN_STATUS_MAP(X)                                                  \
    X(OK, 0, "success")                                                      \
    X(ERR_ARG, -1, "invalid argument")                                       \
    X(ERR_SHAPE, -2, "inconsistent or invalid tensor shape")                 \
    X(ERR_UNSUPPORTED, -3, "option not supported by this operator")         \
    X(ERR_NOMEM, -4, "out of memory")                                        \
    X(ERR_MPI, -5, "MPI error")                                              \
    X(ERR_IO, -6, "file read/write or format error")

typedef enum mattn_status {
#define MATTN_STATUS_ENUM_(name, value, msg) MATTN_##name = value,
    MATTN_STATUS_MAP(MATTN_STATUS_ENUM_)
#undef MATTN_STATUS_ENUM_
} mattn_status;

/* "invalid argument" etc.; unknown codes give "unknown error". */
MATTN_API const char *mattn_strerror(int status);
/* "MATTN_ERR_ARG" etc. */
MATTN_API const char *mattn_err_name(int status);
/* Detailed message of the last failure on this thread ("" if none). */
MATTN_API const char *mattn_last_error(void);

MATTN_API unsigned mattn_version(void); /* MATTN_VERSION_H_EX of the library */

/* ---------------------------------------------------------------- tensors */

/* A 4-d fp32 tensor [batch, seq, heads, dim]: dim is contiguous, the other
 * three have element strides. BTHD and BHTD are two choices of strides; a slice
 * of a fused QKV buffer is a third. */
typedef struct mattn_tensor {
    float *data;
    int64_t batch, seq, heads, dim;
    int64_t stride_batch, stride_seq, stride_head;
} mattn_tensor;

/* data laid out [B, T, H, D] (JAX/EasyDeL). Inputs are never written. */
MATTN_API mattn_tensor mattn_tensor_bthd(const float *data, int64_t batch,
                                         int64_t seq, int64_t heads, int64_t dim);
/* data laid out [B, H, T, D] (PyTorch). */
MATTN_API mattn_tensor mattn_tensor_bhtd(const float *data, int64_t batch,
                                         int64_t seq, int64_t heads, int64_t dim);

/* A boolean mask [B|1, Hq|1, T, S] (uint8, nonzero = allowed); a size-1
 * batch or head dimension broadcasts. The last dimension is contiguous. */
typedef struct mattn_mask {
    const uint8_t *data; /* NULL: no mask */
    int64_t batch, heads, rows, cols;
    int64_t stride_batch, stride_head, stride_row;
} mattn_mask;

/* An additive bias [B|1, Hq|1, T, S], broadcast like mattn_mask. */
typedef struct mattn_bias {
    const float *data; /* NULL: no bias */
    int64_t batch, heads, rows, cols;
    int64_t stride_batch, stride_head, stride_row;
} mattn_bias;

/* Contiguous [batch, heads, rows, cols] mask / bias. */
MATTN_API mattn_mask mattn_mask_dense(const uint8_t *data, int64_t batch,
                                      int64_t heads, int64_t rows, int64_t cols);
MATTN_API mattn_bias mattn_bias_dense(const float *data, int64_t batch,
                                      int64_t heads, int64_t rows, int64_t cols);

/* ---------------------------------------------------------------- options */

/* Options shared by every operator. Always start from mattn_options_default():
 * new fields keep their neutral default, so old callers never break. */
typedef struct mattn_options {
    float scale;    /* softmax scale; 0 selects 1/sqrt(D) */
    int causal;     /* key allowed iff kv position <= q position */
    int64_t q_offset;  /* absolute position of query row 0 (default 0) */
    int64_t kv_offset; /* absolute position of key 0 (default 0) */
    int64_t window_left, window_right; /* q-left <= k <= q+right; -1 unbounded */
    int64_t chunk;  /* > 0: q and k must share position / chunk; 0 off */
    float softcap;  /* > 0: s = softcap * tanh(s / softcap); 0 off */
    /* Segment ids, int32, contiguous [B, T] and [B, S] (both or neither);
     * a key is allowed iff ids match and are >= 0 (negative = padding). */
    const int32_t *q_segment_ids;
    const int32_t *kv_segment_ids;
    const float *sinks; /* [Hq] extra per-head logit with no value; NULL off */
    mattn_mask mask;    /* data NULL: none */
    mattn_bias bias;    /* data NULL: none */
    float dropout_p;    /* in [0, 1); 0 off */
    uint64_t dropout_seed;
    /* Global batch and q-head index of this call's first entry, for dropout
     * only: u(seed, b, h, qp, kp) uses global indices, so a shard computes the
     * same drops as the whole problem. 0 for an unsharded call. */
    int64_t dropout_batch_offset, dropout_head_offset;
    int threads;        /* worker threads; 1 default, 0 = all online CPUs */
    int block_q, block_kv; /* flash/splash block sizes; 0 = tuned default */
} mattn_options;

MATTN_API mattn_options mattn_options_default(void);

/* ---------------------------------------------------------------- operators */

typedef enum mattn_kernel {
    MATTN_KERNEL_VANILLA = 0,
    MATTN_KERNEL_FLASH = 1,
    MATTN_KERNEL_SPLASH = 2
} mattn_kernel;

MATTN_API const char *mattn_kernel_name(mattn_kernel kernel);

/* Reference attention: materialises the logits. lse [B, Hq, T] and
 * weights [B, Hq, T, S] (softmax probabilities before dropout) may be NULL. */
MATTN_API int mattn_vanilla_forward(const mattn_tensor *q, const mattn_tensor *k,
                                    const mattn_tensor *v, const mattn_tensor *o,
                                    float *lse, float *weights,
                                    const mattn_options *opts);

/* Blockwise online-softmax attention: O(T*D) memory, blocks that the
 * causal/window/chunk predicates fully mask are skipped. */
MATTN_API int mattn_flash_forward(const mattn_tensor *q, const mattn_tensor *k,
                                  const mattn_tensor *v, const mattn_tensor *o,
                                  float *lse, const mattn_options *opts);

/* Fused dot-product attention front door: picks the best kernel for the
 * arguments and reports it in *chosen (may be NULL). */
MATTN_API int mattn_sdpa_forward(const mattn_tensor *q, const mattn_tensor *k,
                                 const mattn_tensor *v, const mattn_tensor *o,
                                 float *lse, const mattn_options *opts,
                                 mattn_kernel *chosen);

/* ---------------------------------------------------------------- memory */

/* Kernels keep their workspaces between calls (a first touch of a fresh page
 * is expensive); this returns the cached ones to the system. */
MATTN_API void mattn_scratch_release(void);

#ifdef __cplusplus
}
#endif

/* ---------------------------------------------------------------- areas */
/* Each area of the API has its own header under mattn/; this header is the
 * only one users need to include. */
#include "mattn/mesh.h"
#include "mattn/decode.h"
#include "mattn/splash.h"
#include "mattn/ring.h"
#include "mattn/backward.h"

#endif /* MATTN_H */
