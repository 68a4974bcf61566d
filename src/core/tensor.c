/* Constructors for the public tensor, mask and bias descriptions. */
#include "mattn.h"

/* a * b (* c), INT64_MAX when it overflows: sizes that large are refused by
 * every call's checks, and a constructor must not overflow first. */
static int64_t mul(int64_t a, int64_t b)
{
    int64_t r;
    return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}

static int64_t mul3(int64_t a, int64_t b, int64_t c)
{
    return mul(mul(a, b), c);
}

mattn_tensor mattn_tensor_bthd(const float *data, int64_t batch, int64_t seq,
                               int64_t heads, int64_t dim)
{
    mattn_tensor t = {
        .data = (float *)data, .batch = batch, .seq = seq, .heads = heads,
        .dim = dim, .stride_batch = mul3(seq, heads, dim),
        .stride_seq = mul(heads, dim), .stride_head = dim,
    };
    return t;
}

mattn_tensor mattn_tensor_bhtd(const float *data, int64_t batch, int64_t seq,
                               int64_t heads, int64_t dim)
{
    mattn_tensor t = {
        .data = (float *)data, .batch = batch, .seq = seq, .heads = heads,
        .dim = dim, .stride_batch = mul3(heads, seq, dim),
        .stride_seq = dim, .stride_head = mul(seq, dim),
    };
    return t;
}

mattn_mask mattn_mask_dense(const uint8_t *data, int64_t batch, int64_t heads,
                            int64_t rows, int64_t cols)
{
    mattn_mask m = {
        .data = data, .batch = batch, .heads = heads, .rows = rows,
        .cols = cols, .stride_batch = mul3(heads, rows, cols),
        .stride_head = mul(rows, cols), .stride_row = cols,
    };
    return m;
}

mattn_bias mattn_bias_dense(const float *data, int64_t batch, int64_t heads,
                            int64_t rows, int64_t cols)
{
    mattn_bias b = {
        .data = data, .batch = batch, .heads = heads, .rows = rows,
        .cols = cols, .stride_batch = mul3(heads, rows, cols),
        .stride_head = mul(rows, cols), .stride_row = cols,
    };
    return b;
}

mattn_options mattn_options_default(void)
{
    mattn_options o = {
        .scale = 0.0f,
        .window_left = -1,
        .window_right = -1,
        .threads = 1,
    };
    return o;
}

const char *mattn_kernel_name(mattn_kernel kernel)
{
    switch (kernel) {
    case MATTN_KERNEL_VANILLA:
        return "vanilla";
    case MATTN_KERNEL_FLASH:
        return "flash";
    case MATTN_KERNEL_SPLASH:
        return "splash";
    }
    return "unknown";
}
