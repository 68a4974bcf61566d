/* NumPy .npy reading and writing (see npy.h for what is accepted).
 *
 * The format: the magic "\x93NUMPY", a major and minor version byte, the
 * header length (2 bytes little-endian in version 1, 4 bytes in 2 and 3),
 * then the header: a Python dict literal with exactly the keys 'descr',
 * 'fortran_order' and 'shape', padded with spaces and ended by '\n'. The
 * array's bytes follow. Every length read from the file is checked against
 * the file's size before it is used, so a malformed file can never cause an
 * over-read or a huge allocation. */
#include "cli/npy.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/status.h"

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_ALIGN 64
/* NumPy itself refuses headers above 10000 bytes unless told otherwise; a
 * bound keeps a corrupt length from allocating gigabytes. */
#define NPY_HEADER_MAX ((uint32_t)1 << 20)
/* Conversions stream through a buffer of this many bytes. */
#define NPY_CHUNK ((size_t)1 << 16)

/* ------------------------------------------------------------------ helpers */

const char *mattn__npy_dtype_name(mattn__npy_dtype dtype)
{
    switch (dtype) {
    case MATTN__NPY_F32:
        return "float32";
    case MATTN__NPY_I32:
        return "int32";
    case MATTN__NPY_U8:
        return "uint8";
    }
    return "unknown";
}

const char *mattn__npy_shape_str(const int64_t *shape, int ndim, char *buf, size_t size)
{
    size_t used = 0;
    int n = snprintf(buf, size, "[");
    used = n > 0 ? (size_t)n : 0;
    for (int d = 0; d < ndim && used < size; d++) {
        n = snprintf(buf + used, size - used, d ? ", %" PRId64 : "%" PRId64, shape[d]);
        used += n > 0 ? (size_t)n : 0;
    }
    if (used < size)
        snprintf(buf + used, size - used, "]");
    return buf;
}

static size_t dtype_size(mattn__npy_dtype dtype)
{
    return dtype == MATTN__NPY_U8 ? 1 : 4;
}

/* Reads exactly n bytes; a short read means the file ended early. */
static int read_exact(int fd, void *buf, size_t n, const char *path, const char *what)
{
    char *p = buf;
    while (n > 0) {
        ssize_t got = read(fd, p, n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return mattn__fail(MATTN_ERR_IO, "%s: read error in %s: %s", path, what,
                               strerror(errno));
        if (got == 0)
            return mattn__fail(MATTN_ERR_IO, "%s: file ends inside the %s", path, what);
        p += got;
        n -= (size_t)got;
    }
    return MATTN_OK;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t put = write(fd, p, n);
        if (put < 0 && errno == EINTR)
            continue;
        if (put < 0)
            return -1;
        p += put;
        n -= (size_t)put;
    }
    return 0;
}

/* ------------------------------------------------------------------ header */

/* A cursor over the header text, for error messages that say where. */
typedef struct hdr {
    const char *s;
    size_t n, i;
    const char *path;
} hdr;

static int hdr_fail(const hdr *h, const char *what)
{
    /* Quote a few printable characters from the failure point. */
    char near[24];
    size_t k = 0;
    for (size_t j = h->i; j < h->n && k < sizeof near - 1; j++)
        near[k++] = (h->s[j] >= 32 && h->s[j] < 127) ? h->s[j] : '?';
    near[k] = '\0';
    return mattn__fail(MATTN_ERR_IO,
                       "%s: malformed .npy header: %s at header byte %zu (near \"%s\")",
                       h->path, what, h->i, near);
}

static void hdr_ws(hdr *h)
{
    while (h->i < h->n && (h->s[h->i] == ' ' || h->s[h->i] == '\t' || h->s[h->i] == '\n' ||
                           h->s[h->i] == '\r'))
        h->i++;
}

static int hdr_peek(hdr *h)
{
    hdr_ws(h);
    return h->i < h->n ? (unsigned char)h->s[h->i] : -1;
}

static int hdr_expect(hdr *h, char c)
{
    if (hdr_peek(h) != (unsigned char)c) {
        char what[32];
        snprintf(what, sizeof what, "expected '%c'", c);
        return hdr_fail(h, what);
    }
    h->i++;
    return MATTN_OK;
}

/* A Python string literal in ' or " quotes, without escapes. */
static int hdr_string(hdr *h, char *out, size_t cap)
{
    int q = hdr_peek(h);
    if (q != '\'' && q != '"')
        return hdr_fail(h, "expected a quoted string");
    size_t start = ++h->i, len = 0;
    while (h->i < h->n && h->s[h->i] != q) {
        if (h->s[h->i] == '\\')
            return hdr_fail(h, "escape sequences are not supported");
        h->i++;
        len++;
    }
    if (h->i >= h->n)
        return hdr_fail(h, "unterminated string");
    h->i++;
    if (len >= cap) {
        h->i = start;
        return hdr_fail(h, "string too long");
    }
    memcpy(out, h->s + start, len);
    out[len] = '\0';
    return MATTN_OK;
}

static int hdr_bool(hdr *h, int *out)
{
    hdr_ws(h);
    if (h->n - h->i >= 4 && memcmp(h->s + h->i, "True", 4) == 0) {
        h->i += 4, *out = 1;
        return MATTN_OK;
    }
    if (h->n - h->i >= 5 && memcmp(h->s + h->i, "False", 5) == 0) {
        h->i += 5, *out = 0;
        return MATTN_OK;
    }
    return hdr_fail(h, "expected True or False");
}

/* A non-negative decimal dimension (Python 2 era files may write "3L"). */
static int hdr_dim(hdr *h, int64_t *out)
{
    int c = hdr_peek(h);
    if (c == '-')
        return hdr_fail(h, "negative dimension in shape");
    if (c < '0' || c > '9')
        return hdr_fail(h, "expected a dimension (a non-negative integer)");
    int64_t v = 0;
    while (h->i < h->n && h->s[h->i] >= '0' && h->s[h->i] <= '9') {
        if (__builtin_mul_overflow(v, 10, &v) ||
            __builtin_add_overflow(v, (int64_t)(h->s[h->i] - '0'), &v))
            return hdr_fail(h, "dimension overflows int64");
        h->i++;
    }
    if (h->i < h->n && h->s[h->i] == 'L')
        h->i++;
    *out = v;
    return MATTN_OK;
}

/* "()", "(5,)", "(2, 3)" with an optional trailing comma. "(5)" is the
 * integer 5 in Python, not a tuple, so a single dimension needs its comma. */
static int hdr_shape(hdr *h, int64_t *shape, int *ndim)
{
    int rc;
    if ((rc = hdr_expect(h, '(')))
        return rc;
    *ndim = 0;
    for (;;) {
        if (*ndim == 0 && hdr_peek(h) == ')')
            break;
        if (*ndim == MATTN__NPY_MAX_DIMS)
            return hdr_fail(h, "more than 32 dimensions");
        if ((rc = hdr_dim(h, &shape[*ndim])))
            return rc;
        ++*ndim;
        int c = hdr_peek(h);
        if (c == ',') {
            h->i++;
            if (hdr_peek(h) == ')')
                break;
        } else if (c == ')' && *ndim > 1) {
            break;
        } else {
            return hdr_fail(h, *ndim == 1 && c == ')'
                                   ? "shape is not a tuple (one dimension is written \"(n,)\")"
                                   : "expected ',' or ')' in shape");
        }
    }
    h->i++; /* the ')' */
    return MATTN_OK;
}

typedef struct npy_header {
    char descr[8];
    int fortran_order;
    int ndim;
    int64_t shape[MATTN__NPY_MAX_DIMS];
} npy_header;

static int parse_header(const char *path, const char *text, size_t n, npy_header *out)
{
    hdr h = {text, n, 0, path};
    int rc, seen_descr = 0, seen_fortran = 0, seen_shape = 0;
    if ((rc = hdr_expect(&h, '{')))
        return rc;
    while (hdr_peek(&h) != '}') {
        char key[32];
        if ((rc = hdr_string(&h, key, sizeof key)) || (rc = hdr_expect(&h, ':')))
            return rc;
        if (strcmp(key, "descr") == 0 && !seen_descr) {
            if (hdr_peek(&h) == '[')
                return mattn__fail(MATTN_ERR_IO,
                                   "%s: unsupported dtype: structured arrays are not supported "
                                   "(supported: float32, float64, int32, int64, bool, uint8)",
                                   path);
            if ((rc = hdr_string(&h, out->descr, sizeof out->descr)))
                return rc;
            seen_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !seen_fortran) {
            if ((rc = hdr_bool(&h, &out->fortran_order)))
                return rc;
            seen_fortran = 1;
        } else if (strcmp(key, "shape") == 0 && !seen_shape) {
            if ((rc = hdr_shape(&h, out->shape, &out->ndim)))
                return rc;
            seen_shape = 1;
        } else {
            char what[64];
            snprintf(what, sizeof what, "unexpected or repeated key '%s'", key);
            return hdr_fail(&h, what);
        }
        int c = hdr_peek(&h);
        if (c == ',')
            h.i++;
        else if (c != '}')
            return hdr_fail(&h, "expected ',' or '}'");
    }
    h.i++;
    hdr_ws(&h);
    if (h.i != h.n)
        return hdr_fail(&h, "unexpected text after the dict");
    if (!seen_descr || !seen_fortran || !seen_shape)
        return mattn__fail(MATTN_ERR_IO, "%s: malformed .npy header: missing key '%s'", path,
                           !seen_descr ? "descr" : !seen_fortran ? "fortran_order" : "shape");
    return MATTN_OK;
}

/* ------------------------------------------------------------------ reading */

/* How the file stores elements, and what they become in memory. */
typedef struct npy_format {
    char kind;     /* 'f', 'i', 'u', 'b' */
    size_t size;   /* bytes per element in the file */
    int swap;      /* big-endian file on this little-endian host */
    mattn__npy_dtype dtype;
} npy_format;

static int parse_descr(const char *path, const char *descr, npy_format *f)
{
    size_t len = strlen(descr);
    char order = len == 3 ? descr[0] : 0, kind = len == 3 ? descr[1] : 0;
    int size = len == 3 ? descr[2] - '0' : 0;
    int known = (kind == 'f' && (size == 4 || size == 8)) ||
                (kind == 'i' && (size == 4 || size == 8)) ||
                ((kind == 'u' || kind == 'b') && size == 1);
    if (!known || (order != '<' && order != '>' && order != '=' && order != '|'))
        return mattn__fail(MATTN_ERR_IO,
                           "%s: unsupported dtype '%s' (supported: float32, float64, int32, "
                           "int64, bool, uint8)",
                           path, descr);
    if (order == '|' && size != 1)
        return mattn__fail(MATTN_ERR_IO, "%s: dtype '%s' needs a byte order ('<' or '>')",
                           path, descr);
    f->kind = kind;
    f->size = (size_t)size;
    f->swap = order == '>' && size > 1 && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
    if (order == '<' && size > 1 && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__)
        f->swap = 1;
    f->dtype = kind == 'f' ? MATTN__NPY_F32 : kind == 'i' ? MATTN__NPY_I32 : MATTN__NPY_U8;
    return MATTN_OK;
}

/* Converts n file elements at src (element index first) into dst. */
static int convert(const char *path, const npy_format *f, const unsigned char *src, size_t n,
                   int64_t first, void *dst)
{
    if (f->size == 4) { /* same type, other byte order */
        for (size_t x = 0; x < n; x++) {
            uint32_t w;
            memcpy(&w, src + 4 * x, 4);
            w = __builtin_bswap32(w);
            memcpy((char *)dst + 4 * x, &w, 4);
        }
        return MATTN_OK;
    }
    for (size_t x = 0; x < n; x++) {
        uint64_t w;
        memcpy(&w, src + 8 * x, 8);
        if (f->swap)
            w = __builtin_bswap64(w);
        if (f->kind == 'f') {
            double d;
            memcpy(&d, &w, 8);
            float s = (float)d;
            if (isfinite(d) && !isfinite(s))
                return mattn__fail(MATTN_ERR_IO,
                                   "%s: element %" PRId64 " = %g is outside float32's range",
                                   path, first + (int64_t)x, d);
            ((float *)dst)[x] = s;
        } else {
            int64_t v = (int64_t)w;
            if (v < INT32_MIN || v > INT32_MAX)
                return mattn__fail(MATTN_ERR_IO,
                                   "%s: element %" PRId64 " = %" PRId64
                                   " does not fit in int32",
                                   path, first + (int64_t)x, v);
            ((int32_t *)dst)[x] = (int32_t)v;
        }
    }
    return MATTN_OK;
}

static int read_data(int fd, const char *path, const npy_format *f, int64_t count, void *dst)
{
    size_t out_size = dtype_size(f->dtype);
    if (!f->swap && f->size == out_size)
        return read_exact(fd, dst, (size_t)count * f->size, path, "array data");
    /* Byte swapping or narrowing: stream through a small buffer. */
    unsigned char *buf = malloc(NPY_CHUNK);
    if (buf == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "%s: out of memory", path);
    int rc = MATTN_OK;
    size_t per = NPY_CHUNK / f->size;
    for (int64_t done = 0; done < count && rc == MATTN_OK;) {
        size_t n = (size_t)(count - done) < per ? (size_t)(count - done) : per;
        rc = read_exact(fd, buf, n * f->size, path, "array data");
        if (rc == MATTN_OK)
            rc = convert(path, f, buf, n, done, (char *)dst + (size_t)done * out_size);
        done += (int64_t)n;
    }
    free(buf);
    return rc;
}

int mattn__npy_read(const char *path, mattn__npy_array *a)
{
    int rc = MATTN_OK, fd = -1;
    char *text = NULL;
    memset(a, 0, sizeof *a);
    if (path == NULL)
        return mattn__fail(MATTN_ERR_ARG, "no file name given");

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        goto done;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    int64_t size = (int64_t)st.st_size;

    /* Preamble: magic, version, header length. */
    unsigned char pre[12];
    if (size < 10) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: not a .npy file (%" PRId64 " bytes is shorter than "
                         "the 10-byte preamble)", path, size);
        goto done;
    }
    if ((rc = read_exact(fd, pre, 10, path, "preamble")))
        goto done;
    if (memcmp(pre, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: bad magic: not a .npy file", path);
        goto done;
    }
    int major = pre[6], minor = pre[7];
    if ((major < 1 || major > 3) || minor != 0) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: unsupported .npy format version %d.%d "
                         "(1.0, 2.0 and 3.0 are)", path, major, minor);
        goto done;
    }
    uint32_t hlen;
    int64_t pre_len = major == 1 ? 10 : 12;
    if (major == 1) {
        hlen = (uint32_t)pre[8] | (uint32_t)pre[9] << 8;
    } else {
        if (size < 12) {
            rc = mattn__fail(MATTN_ERR_IO, "%s: file ends inside the preamble", path);
            goto done;
        }
        if ((rc = read_exact(fd, pre + 10, 2, path, "preamble")))
            goto done;
        hlen = (uint32_t)pre[8] | (uint32_t)pre[9] << 8 | (uint32_t)pre[10] << 16 |
               (uint32_t)pre[11] << 24;
    }
    if ((int64_t)hlen > size - pre_len) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: header length %" PRIu32 " runs past the end of "
                         "the file (%" PRId64 " bytes)", path, hlen, size);
        goto done;
    }
    if (hlen > NPY_HEADER_MAX) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: header length %" PRIu32 " is implausibly large",
                         path, hlen);
        goto done;
    }
    text = malloc((size_t)hlen + 1);
    if (text == NULL) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if ((rc = read_exact(fd, text, hlen, path, "header")))
        goto done;
    text[hlen] = '\0';

    npy_header h;
    memset(&h, 0, sizeof h);
    npy_format f = {0};
    if ((rc = parse_header(path, text, hlen, &h)) || (rc = parse_descr(path, h.descr, &f)))
        goto done;
    if (h.fortran_order) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: fortran_order is True; only C order is supported "
                         "(save np.ascontiguousarray(x))", path);
        goto done;
    }

    /* The data must be exactly count * itemsize bytes. As NumPy, a shape is
     * too large when its nonzero dims overflow, even if another dim is 0:
     * the command multiplies dims of several files in any order. */
    int64_t bytes = (int64_t)f.size;
    int big = 0, empty = 0;
    for (int d = 0; d < h.ndim; d++) {
        empty |= h.shape[d] == 0;
        big |= h.shape[d] > 0 && __builtin_mul_overflow(bytes, h.shape[d], &bytes);
    }
    char shp[256];
    mattn__npy_shape_str(h.shape, h.ndim, shp, sizeof shp);
    if (big) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: shape %s is too large", path, shp);
        goto done;
    }
    if (empty)
        bytes = 0;
    int64_t count = bytes / (int64_t)f.size;
    int64_t avail = size - pre_len - (int64_t)hlen;
    if (avail < bytes) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: truncated data: shape %s of '%s' needs %" PRId64
                         " bytes but only %" PRId64 " follow the header", path, shp, h.descr,
                         bytes, avail);
        goto done;
    }
    if (avail > bytes) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: %" PRId64 " unexpected bytes after the data of "
                         "shape %s '%s'", path, avail - bytes, shp, h.descr);
        goto done;
    }
    if ((uint64_t)count > SIZE_MAX / 8) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "%s: shape %s does not fit in memory", path, shp);
        goto done;
    }

    a->dtype = f.dtype;
    snprintf(a->descr, sizeof a->descr, "%s", h.descr);
    a->ndim = h.ndim;
    memcpy(a->shape, h.shape, sizeof(int64_t) * (size_t)h.ndim);
    a->count = count;
    size_t out_bytes = (size_t)count * dtype_size(f.dtype);
    a->data = malloc(out_bytes ? out_bytes : 1);
    if (a->data == NULL) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "%s: out of memory for shape %s", path, shp);
        goto done;
    }
    rc = read_data(fd, path, &f, count, a->data);

done:
    free(text);
    if (fd >= 0)
        close(fd);
    if (rc != MATTN_OK)
        mattn__npy_free(a);
    return rc;
}

void mattn__npy_free(mattn__npy_array *a)
{
    if (a == NULL)
        return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------------ writing */

int mattn__npy_writer_open(mattn__npy_writer *w, const char *path)
{
    memset(w, 0, sizeof *w);
    w->fd = -1;
    if (path == NULL || path[0] == '\0')
        return mattn__fail(MATTN_ERR_ARG, "empty output file name");
    size_t n = strlen(path) + 32;
    w->path = strdup(path);
    w->tmp = malloc(n);
    if (w->path == NULL || w->tmp == NULL) {
        free(w->tmp); /* nothing was created: abort must not unlink */
        w->tmp = NULL;
        mattn__npy_writer_abort(w);
        return mattn__fail(MATTN_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(w->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    /* 0666 minus the umask, as any other program creating a data file. */
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (w->fd < 0) {
        int rc = mattn__fail(MATTN_ERR_IO, "%s: cannot create the file (as %s): %s", path,
                             w->tmp, strerror(errno));
        free(w->tmp); /* nothing was created: abort must not unlink */
        w->tmp = NULL;
        mattn__npy_writer_abort(w);
        return rc;
    }
    return MATTN_OK;
}

/* The NumPy header for dtype and shape, padded so that preamble + header is
 * a multiple of 64 and ended by '\n'. Returns its length, or 0 if buf is too
 * small. *major receives 1, or 2 when the length needs 4 bytes. */
static size_t make_header(char *buf, size_t cap, mattn__npy_dtype dtype, int ndim,
                          const int64_t *shape, int *major)
{
    static const char *const descr[] = {"<f4", "<i4", "|u1"};
    char dims[MATTN__NPY_MAX_DIMS * 22 + 4];
    size_t used = 0;
    for (int d = 0; d < ndim; d++)
        used += (size_t)snprintf(dims + used, sizeof dims - used, "%s%" PRId64,
                                 d ? ", " : "", shape[d]);
    if (ndim == 1)
        snprintf(dims + used, sizeof dims - used, ",");
    if (ndim == 0)
        dims[0] = '\0';
    int len = snprintf(buf, cap, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                       descr[dtype], dims);
    if (len < 0 || (size_t)len >= cap)
        return 0;
    *major = (size_t)len + 1 + 10 > 65535 ? 2 : 1;
    size_t pre = *major == 1 ? 10 : 12;
    size_t total = (size_t)len + 1;
    size_t pad = (NPY_ALIGN - (pre + total) % NPY_ALIGN) % NPY_ALIGN;
    if ((size_t)len + pad + 1 >= cap)
        return 0;
    memset(buf + len, ' ', pad);
    buf[(size_t)len + pad] = '\n';
    return (size_t)len + pad + 1;
}

int mattn__npy_writer_put(mattn__npy_writer *w, mattn__npy_dtype dtype, int ndim,
                          const int64_t *shape, const void *data)
{
    int rc = MATTN_OK;
    if (w->fd < 0 || w->written)
        return mattn__fail(MATTN_ERR_ARG, "%s: writer is not open", w->path ? w->path : "?");
    if (ndim < 0 || ndim > MATTN__NPY_MAX_DIMS || (unsigned)dtype > MATTN__NPY_U8) {
        rc = mattn__fail(MATTN_ERR_ARG, "%s: cannot write %d dimensions", w->path, ndim);
        goto fail;
    }
    int64_t count = 1, bytes;
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0 || __builtin_mul_overflow(count, shape[d], &count)) {
            rc = mattn__fail(MATTN_ERR_ARG, "%s: invalid shape to write", w->path);
            goto fail;
        }
    if (__builtin_mul_overflow(count, (int64_t)dtype_size(dtype), &bytes) ||
        (bytes > 0 && data == NULL)) {
        rc = mattn__fail(MATTN_ERR_ARG, "%s: invalid data to write", w->path);
        goto fail;
    }

    char header[2048 + NPY_ALIGN];
    int major;
    size_t hlen = make_header(header, sizeof header, dtype, ndim, shape, &major);
    unsigned char pre[12];
    memcpy(pre, NPY_MAGIC, NPY_MAGIC_LEN);
    pre[6] = (unsigned char)major, pre[7] = 0;
    for (int x = 0; x < (major == 1 ? 2 : 4); x++)
        pre[8 + x] = (unsigned char)(hlen >> (8 * x));
    if (hlen == 0 || write_all(w->fd, pre, major == 1 ? 10 : 12) != 0 ||
        write_all(w->fd, header, hlen) != 0 || write_all(w->fd, data, (size_t)bytes) != 0) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: write failed: %s", w->path,
                         hlen == 0 ? "header too long" : strerror(errno));
        goto fail;
    }
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0) { /* delayed write errors (NFS, quota) surface here */
        rc = mattn__fail(MATTN_ERR_IO, "%s: write failed: %s", w->path, strerror(errno));
        goto fail;
    }
    w->written = 1;
    return MATTN_OK;

fail:
    mattn__npy_writer_abort(w);
    return rc;
}

int mattn__npy_writer_commit(mattn__npy_writer *w)
{
    if (!w->written || w->tmp == NULL) {
        int rc = mattn__fail(MATTN_ERR_ARG, "%s: nothing written to commit",
                             w->path ? w->path : "?");
        mattn__npy_writer_abort(w);
        return rc;
    }
    if (rename(w->tmp, w->path) != 0) {
        int rc = mattn__fail(MATTN_ERR_IO, "%s: cannot rename %s onto it: %s", w->path, w->tmp,
                             strerror(errno));
        mattn__npy_writer_abort(w);
        return rc;
    }
    free(w->tmp);
    free(w->path);
    memset(w, 0, sizeof *w);
    w->fd = -1;
    return MATTN_OK;
}

void mattn__npy_writer_abort(mattn__npy_writer *w)
{
    if (w->fd >= 0)
        close(w->fd);
    if (w->tmp)
        unlink(w->tmp);
    free(w->tmp);
    free(w->path);
    memset(w, 0, sizeof *w);
    w->fd = -1;
}

int mattn__npy_write(const char *path, mattn__npy_dtype dtype, int ndim, const int64_t *shape,
                     const void *data)
{
    mattn__npy_writer w;
    int rc = mattn__npy_writer_open(&w, path);
    if (rc == MATTN_OK)
        rc = mattn__npy_writer_put(&w, dtype, ndim, shape, data);
    if (rc == MATTN_OK)
        rc = mattn__npy_writer_commit(&w);
    return rc;
}
