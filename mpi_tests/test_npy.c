/* .npy reading and writing (src/cli/npy.c): round trips of every dtype and
 * rank, the exact header NumPy expects, hand-made version 2/3 and big-endian
 * files, conversions, a catalogue of malformed files (each must be
 * MATTN_ERR_IO with a message naming the file and the problem, never a
 * crash), and atomic writes. Tests are spread over the ranks; each works in
 * its own temporary directory. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/npy.h"
#include "common/testlib.h"

/* ------------------------------------------------------------------ files */

typedef struct tmpdir {
    char path[64];
} tmpdir;

static tmpdir dir_make(void)
{
    tmpdir d;
    snprintf(d.path, sizeof d.path, "/tmp/mattn-npy-XXXXXX");
    if (mkdtemp(d.path) == NULL)
        fail_msg("mkdtemp: %s", strerror(errno));
    return d;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void dir_free(tmpdir *d)
{
    nftw(d->path, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static const char *in_dir(const tmpdir *d, const char *name)
{
    static char buf[4][160];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, 160, "%s/%s", d->path, name);
    return p;
}

/* Number of entries in the directory (temporary files included). */
static int dir_count(const tmpdir *d)
{
    DIR *dir = opendir(d->path);
    assert_non_null(dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(dir));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(dir);
    return n;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void write_bytes(const char *path, const void *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_bytes(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = tl_alloc(*n + 1);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

/* A .npy file by hand: magic, version, a header length (hlen < 0: the true
 * length), the header text as given, then `data`. */
static void write_npy_raw(const char *path, int major, int minor, long hlen, const char *header,
                          const void *data, size_t ndata)
{
    size_t len = strlen(header), pre = major == 1 ? 10 : 12;
    unsigned char *b = tl_alloc(pre + len + ndata);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (unsigned char)major, b[7] = (unsigned char)minor;
    unsigned long h = hlen < 0 ? (unsigned long)len : (unsigned long)hlen;
    for (size_t x = 0; x < pre - 8; x++)
        b[8 + x] = (unsigned char)(h >> (8 * x));
    memcpy(b + pre, header, len);
    if (ndata)
        memcpy(b + pre + len, data, ndata);
    write_bytes(path, b, pre + len + ndata);
    free(b);
}

/* ------------------------------------------------------------------ round trips */

static void roundtrip(const tmpdir *d, mattn__npy_dtype dtype, int ndim, const int64_t *shape)
{
    int64_t count = 1;
    for (int x = 0; x < ndim; x++)
        count *= shape[x];
    size_t size = dtype == MATTN__NPY_U8 ? 1 : 4;
    unsigned char *data = tl_alloc((size_t)count * size + 1);
    tl_rng r = tl_rng_make((uint64_t)(count * 31 + ndim * 7 + dtype));
    for (int64_t x = 0; x < count * (int64_t)size; x++)
        data[x] = (unsigned char)tl_int(&r, 256);
    if (dtype == MATTN__NPY_F32) /* keep the floats ordinary (no NaN payloads) */
        for (int64_t x = 0; x < count; x++) {
            float f = (float)tl_symmetric(&r) * 1000.0f;
            memcpy(data + 4 * x, &f, 4);
        }
    const char *path = in_dir(d, "a.npy");
    assert_int_equal(mattn__npy_write(path, dtype, ndim, shape, data), MATTN_OK);

    mattn__npy_array a;
    assert_int_equal(mattn__npy_read(path, &a), MATTN_OK);
    assert_int_equal(a.dtype, dtype);
    assert_int_equal(a.ndim, ndim);
    for (int x = 0; x < ndim; x++)
        assert_int_equal(a.shape[x], shape[x]);
    assert_int_equal(a.count, count);
    assert_non_null(a.data);
    if (count > 0)
        assert_memory_equal(a.data, data, (size_t)count * size);
    mattn__npy_free(&a);
    assert_null(a.data);

    /* The layout NumPy writes: v1.0, data on a 64-byte boundary, header
     * ending in '\n', and the exact dict text. */
    size_t n;
    unsigned char *b = read_bytes(path, &n);
    assert_memory_equal(b, "\x93NUMPY\x01\x00", 8);
    size_t hlen = (size_t)b[8] | (size_t)b[9] << 8;
    assert_int_equal((10 + hlen) % 64, 0);
    assert_int_equal(n, 10 + hlen + (size_t)count * size);
    assert_int_equal(b[10 + hlen - 1], '\n');
    char want[256], dims[128] = "";
    for (int x = 0; x < ndim; x++)
        snprintf(dims + strlen(dims), sizeof dims - strlen(dims), "%s%lld", x ? ", " : "",
                 (long long)shape[x]);
    if (ndim == 1)
        strcat(dims, ",");
    snprintf(want, sizeof want, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
             dtype == MATTN__NPY_F32 ? "<f4" : dtype == MATTN__NPY_I32 ? "<i4" : "|u1", dims);
    assert_memory_equal(b + 10, want, strlen(want));
    for (size_t x = 10 + strlen(want); x < 10 + hlen - 1; x++)
        assert_int_equal(b[x], ' ');
    free(b);
    free(data);
}

static void test_roundtrip(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    static const int64_t s0[1] = {0}, s1[1] = {7}, s4[4] = {2, 3, 4, 5}, z1[1] = {0},
                         z3[3] = {3, 0, 2}, big[2] = {300, 301};
    for (int t = 0; t < 3; t++) {
        mattn__npy_dtype dt = (mattn__npy_dtype)t;
        roundtrip(&d, dt, 0, s0); /* a scalar: shape () */
        roundtrip(&d, dt, 1, s1);
        roundtrip(&d, dt, 4, s4);
        roundtrip(&d, dt, 1, z1); /* zero-size arrays */
        roundtrip(&d, dt, 3, z3);
        roundtrip(&d, dt, 2, big);
    }
    /* Only a.npy is left: no temporary files. */
    assert_int_equal(dir_count(&d), 1);
    dir_free(&d);
}

static void test_many_dims(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    int64_t shape[MATTN__NPY_MAX_DIMS];
    for (int x = 0; x < MATTN__NPY_MAX_DIMS; x++)
        shape[x] = 1 + (x % 2);
    roundtrip(&d, MATTN__NPY_U8, MATTN__NPY_MAX_DIMS, shape);
    dir_free(&d);
}

/* ------------------------------------------------------------------ hand-made files */

static void expect_floats(const char *path, int ndim, const int64_t *shape, const float *want,
                          int64_t n)
{
    mattn__npy_array a;
    int rc = mattn__npy_read(path, &a);
    if (rc != MATTN_OK)
        fail_msg("%s: %s", path, mattn_last_error());
    assert_int_equal(a.dtype, MATTN__NPY_F32);
    assert_int_equal(a.ndim, ndim);
    for (int x = 0; x < ndim; x++)
        assert_int_equal(a.shape[x], shape[x]);
    assert_int_equal(a.count, n);
    for (int64_t x = 0; x < n; x++) {
        float got = ((float *)a.data)[x];
        if (!(got == want[x] || (isnan(got) && isnan(want[x]))) ||
            signbit(got) != signbit(want[x]))
            fail_msg("%s element %lld: got %.9g want %.9g", path, (long long)x, got, want[x]);
    }
    mattn__npy_free(&a);
}

static void test_versions_and_variants(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    const float v[6] = {1.5f, -2.0f, 0.0f, -0.0f, 3.25e-3f, 1e30f};
    const int64_t shape[2] = {2, 3};
    const char *h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }          \n";
    /* Version 2.0 and 3.0: 4-byte header length. */
    write_npy_raw(in_dir(&d, "v2.npy"), 2, 0, -1, h, v, sizeof v);
    expect_floats(in_dir(&d, "v2.npy"), 2, shape, v, 6);
    write_npy_raw(in_dir(&d, "v3.npy"), 3, 0, -1, h, v, sizeof v);
    expect_floats(in_dir(&d, "v3.npy"), 2, shape, v, 6);
    /* Version 1.0 with 16-byte alignment (old NumPy), keys in another
     * order, double quotes, no trailing comma, no spaces, Python 2 longs. */
    static const char *const variants[] = {
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n",
        "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}\n",
        "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2, 3)}   \n",
        "{'descr':'<f4','fortran_order':False,'shape':(2,3)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }\n",
        "{ 'descr' : '=f4' , 'fortran_order' : False , 'shape' : ( 2 , 3 , ) }\n",
    };
    for (size_t x = 0; x < sizeof variants / sizeof *variants; x++) {
        write_npy_raw(in_dir(&d, "var.npy"), 1, 0, -1, variants[x], v, sizeof v);
        expect_floats(in_dir(&d, "var.npy"), 2, shape, v, 6);
    }
    /* One dimension and a scalar. */
    const int64_t s1[1] = {6};
    write_npy_raw(in_dir(&d, "one.npy"), 1, 0, -1,
                  "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }\n", v, sizeof v);
    expect_floats(in_dir(&d, "one.npy"), 1, s1, v, 6);
    write_npy_raw(in_dir(&d, "scalar.npy"), 1, 0, -1,
                  "{'descr': '<f4', 'fortran_order': False, 'shape': (), }\n", v, 4);
    expect_floats(in_dir(&d, "scalar.npy"), 0, s1, v, 1);
    dir_free(&d);
}

static void test_conversions(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    const int64_t s4[1] = {4}, s5[1] = {5};
    /* float64 -> float32, rounding to nearest; inf and NaN pass through. */
    const double f8[5] = {0.1, -1e-3, 3.0e38, INFINITY, NAN};
    const float f8_want[5] = {0.1f, -1e-3f, 3.0e38f, INFINITY, NAN};
    write_npy_raw(in_dir(&d, "f8.npy"), 1, 0, -1,
                  "{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }\n", f8, sizeof f8);
    expect_floats(in_dir(&d, "f8.npy"), 1, s5, f8_want, 5);

    /* Big-endian float32 and float64. */
    unsigned char be[40];
    for (int x = 0; x < 5; x++) {
        uint32_t w;
        memcpy(&w, &f8_want[x], 4);
        for (int y = 0; y < 4; y++)
            be[4 * x + y] = (unsigned char)(w >> (24 - 8 * y));
    }
    write_npy_raw(in_dir(&d, "bef4.npy"), 1, 0, -1,
                  "{'descr': '>f4', 'fortran_order': False, 'shape': (5,), }\n", be, 20);
    expect_floats(in_dir(&d, "bef4.npy"), 1, s5, f8_want, 5);
    for (int x = 0; x < 5; x++) {
        uint64_t w;
        memcpy(&w, &f8[x], 8);
        for (int y = 0; y < 8; y++)
            be[8 * x + y] = (unsigned char)(w >> (56 - 8 * y));
    }
    write_npy_raw(in_dir(&d, "bef8.npy"), 1, 0, -1,
                  "{'descr': '>f8', 'fortran_order': False, 'shape': (5,), }\n", be, 40);
    expect_floats(in_dir(&d, "bef8.npy"), 1, s5, f8_want, 5);

    /* int64 -> int32 at the edges of the range, little- and big-endian. */
    const int64_t i8[4] = {INT32_MIN, -1, 0, INT32_MAX};
    write_npy_raw(in_dir(&d, "i8.npy"), 1, 0, -1,
                  "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }\n", i8, sizeof i8);
    for (int x = 0; x < 4; x++)
        for (int y = 0; y < 8; y++)
            be[8 * x + y] = (unsigned char)((uint64_t)i8[x] >> (56 - 8 * y));
    write_npy_raw(in_dir(&d, "bei8.npy"), 1, 0, -1,
                  "{'descr': '>i8', 'fortran_order': False, 'shape': (4,), }\n", be, 32);
    for (int x = 0; x < 4; x++)
        for (int y = 0; y < 4; y++)
            be[4 * x + y] = (unsigned char)((uint32_t)i8[x] >> (24 - 8 * y));
    write_npy_raw(in_dir(&d, "bei4.npy"), 1, 0, -1,
                  "{'descr': '>i4', 'fortran_order': False, 'shape': (4,), }\n", be, 16);
    static const char *const ints[] = {"i8.npy", "bei8.npy", "bei4.npy"};
    for (int f = 0; f < 3; f++) {
        mattn__npy_array a;
        assert_int_equal(mattn__npy_read(in_dir(&d, ints[f]), &a), MATTN_OK);
        assert_int_equal(a.dtype, MATTN__NPY_I32);
        assert_int_equal(a.count, 4);
        for (int x = 0; x < 4; x++)
            assert_int_equal(((int32_t *)a.data)[x], (int32_t)i8[x]);
        mattn__npy_free(&a);
    }
    (void)s4;

    /* bool -> uint8 as stored. */
    const unsigned char b1[5] = {1, 0, 0, 1, 1};
    write_npy_raw(in_dir(&d, "b1.npy"), 1, 0, -1,
                  "{'descr': '|b1', 'fortran_order': False, 'shape': (5,), }\n", b1, 5);
    mattn__npy_array a;
    assert_int_equal(mattn__npy_read(in_dir(&d, "b1.npy"), &a), MATTN_OK);
    assert_int_equal(a.dtype, MATTN__NPY_U8);
    assert_memory_equal(a.data, b1, 5);
    assert_string_equal(a.descr, "|b1");
    mattn__npy_free(&a);
    dir_free(&d);
}

/* ------------------------------------------------------------------ malformed */

static void expect_io_error(const char *path, const char *needle)
{
    mattn__npy_array a;
    memset(&a, 0x5a, sizeof a);
    int rc = mattn__npy_read(path, &a);
    if (rc != MATTN_ERR_IO)
        fail_msg("%s: expected MATTN_ERR_IO for '%s', got %d (%s)", path, needle, rc,
                 mattn_last_error());
    const char *msg = mattn_last_error();
    if (strstr(msg, path) == NULL || strstr(msg, needle) == NULL)
        fail_msg("message \"%s\" should name %s and contain \"%s\"", msg, path, needle);
    assert_null(a.data); /* zeroed on failure: freeing is safe */
    mattn__npy_free(&a);
}

static void test_conversion_errors(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    const int64_t i8[3] = {5, (int64_t)INT32_MAX + 1, 0};
    write_npy_raw(in_dir(&d, "big.npy"), 1, 0, -1,
                  "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }\n", i8, sizeof i8);
    expect_io_error(in_dir(&d, "big.npy"), "element 1 = 2147483648 does not fit in int32");
    const int64_t i8n[2] = {(int64_t)INT32_MIN - 1, 0};
    write_npy_raw(in_dir(&d, "neg.npy"), 1, 0, -1,
                  "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }\n", i8n, sizeof i8n);
    expect_io_error(in_dir(&d, "neg.npy"), "does not fit in int32");
    const double f8[2] = {1.0, 1e300};
    write_npy_raw(in_dir(&d, "huge.npy"), 1, 0, -1,
                  "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n", f8, sizeof f8);
    expect_io_error(in_dir(&d, "huge.npy"), "element 1 = 1e+300 is outside float32's range");
    dir_free(&d);
}

typedef struct bad_file {
    const char *name;
    int major, minor;
    long hlen; /* -1: the true length; -2: one byte more than the file holds */
    const char *header;
    size_t ndata; /* bytes of data after the header */
    const char *needle;
} bad_file;

static void test_malformed(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    static const bad_file cases[] = {
        {"fortran", 1, 0, -1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n", 24,
         "fortran_order is True"},
        {"complex", 1, 0, -1, "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }\n", 16,
         "unsupported dtype '<c8'"},
        {"half", 1, 0, -1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }\n", 4,
         "unsupported dtype '<f2'"},
        {"object", 1, 0, -1, "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }\n", 16,
         "unsupported dtype '|O'"},
        {"uint32", 1, 0, -1, "{'descr': '<u4', 'fortran_order': False, 'shape': (2,), }\n", 8,
         "unsupported dtype '<u4'"},
        {"structured", 1, 0, -1,
         "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }\n", 8,
         "structured arrays"},
        {"noorder", 1, 0, -1, "{'descr': '|f4', 'fortran_order': False, 'shape': (2,), }\n", 8,
         "needs a byte order"},
        {"garbage_shape", 1, 0, -1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, x), }\n",
         12, "expected a dimension"},
        {"negative_dim", 1, 0, -1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }\n",
         0, "negative dimension"},
        {"overflow_dim", 1, 0, -1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }\n", 0,
         "overflows int64"},
        {"overflow_count", 1, 0, -1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }\n", 0,
         "is too large"},
        {"overflow_bytes", 1, 0, -1,
         "{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,), }\n", 0,
         "is too large"},
        {"not_tuple", 1, 0, -1, "{'descr': '<f4', 'fortran_order': False, 'shape': (5), }\n", 20,
         "not a tuple"},
        {"shape_list", 1, 0, -1, "{'descr': '<f4', 'fortran_order': False, 'shape': [5], }\n", 20,
         "expected '('"},
        {"missing_shape", 1, 0, -1, "{'descr': '<f4', 'fortran_order': False, }\n", 4,
         "missing key 'shape'"},
        {"missing_descr", 1, 0, -1, "{'fortran_order': False, 'shape': (1,), }\n", 4,
         "missing key 'descr'"},
        {"extra_key", 1, 0, -1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1, }\n", 4,
         "unexpected or repeated key 'x'"},
        {"repeated_key", 1, 0, -1,
         "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n", 4,
         "unexpected or repeated key 'descr'"},
        {"not_dict", 1, 0, -1, "[1, 2, 3]\n", 0, "expected '{'"},
        {"trailing_text", 1, 0, -1,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } junk\n", 4,
         "unexpected text after the dict"},
        {"unterminated", 1, 0, -1, "{'descr': '<f4", 0, "unterminated string"},
        {"fortran_word", 1, 0, -1, "{'descr': '<f4', 'fortran_order': Nope, 'shape': (1,), }\n", 4,
         "expected True or False"},
        {"bool_string", 1, 0, -1, "{'descr': '<f4', 'fortran_order': 'False', 'shape': (1,), }\n",
         4, "expected True or False"},
        {"too_many_dims", 1, 0, -1,
         "{'descr': '|u1', 'fortran_order': False, 'shape': "
         "(1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1), }\n",
         1, "more than 32 dimensions"},
        {"truncated_data", 1, 0, -1, "{'descr': '<f4', 'fortran_order': False, 'shape': (10,), }\n",
         20, "truncated data"},
        {"extra_bytes", 1, 0, -1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n", 9,
         "1 unexpected bytes after the data"},
        {"hlen_past_eof", 1, 0, 60000, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n",
         4, "runs past the end of the file"},
        {"hlen_past_eof_v2", 2, 0, 0x7fffffff,
         "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n", 4,
         "runs past the end of the file"},
        {"hlen_one_past", 1, 0, -2, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n",
         4, "runs past the end of the file"},
        {"hlen_short", 1, 0, 20, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n", 4,
         "malformed .npy header"},
        {"version4", 4, 0, -1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n", 4,
         "unsupported .npy format version 4.0"},
        {"version1_1", 1, 1, -1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n", 4,
         "unsupported .npy format version 1.1"},
        {"escape", 1, 0, -1, "{'de\\scr': '<f4', 'fortran_order': False, 'shape': (1,), }\n", 4,
         "escape sequences"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const bad_file *b = &cases[c];
        char name[64];
        snprintf(name, sizeof name, "%s.npy", b->name);
        unsigned char *data = tl_alloc(b->ndata + 1);
        long hlen = b->hlen == -2 ? (long)(strlen(b->header) + b->ndata + 1) : b->hlen;
        write_npy_raw(in_dir(&d, name), b->major, b->minor, hlen, b->header, data, b->ndata);
        expect_io_error(in_dir(&d, name), b->needle);
        free(data);
    }

    /* Not even a preamble. */
    write_bytes(in_dir(&d, "empty.npy"), "", 0);
    expect_io_error(in_dir(&d, "empty.npy"), "shorter than the 10-byte preamble");
    write_bytes(in_dir(&d, "short.npy"), "\x93NUMPY\x01", 7);
    expect_io_error(in_dir(&d, "short.npy"), "shorter than the 10-byte preamble");
    write_bytes(in_dir(&d, "short2.npy"), "\x93NUMPY\x02\x00\x10\x00", 10);
    expect_io_error(in_dir(&d, "short2.npy"), "ends inside the preamble");
    write_bytes(in_dir(&d, "magic.npy"), "PK\x03\x04 this is a zip file", 24);
    expect_io_error(in_dir(&d, "magic.npy"), "bad magic");
    expect_io_error(in_dir(&d, "missing.npy"), "cannot open");
    expect_io_error(d.path, "not a regular file");
    dir_free(&d);
}

/* Every prefix of a valid file is an error, never a crash or an over-read
 * (run under AddressSanitizer by `make sanitize`). */
static void test_every_truncation(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    const int64_t shape[2] = {3, 5};
    float data[15];
    for (int x = 0; x < 15; x++)
        data[x] = (float)x;
    assert_int_equal(mattn__npy_write(in_dir(&d, "full.npy"), MATTN__NPY_F32, 2, shape, data),
                     MATTN_OK);
    size_t n;
    unsigned char *b = read_bytes(in_dir(&d, "full.npy"), &n);
    for (size_t len = 0; len < n; len++) {
        write_bytes(in_dir(&d, "cut.npy"), b, len);
        mattn__npy_array a;
        assert_int_equal(mattn__npy_read(in_dir(&d, "cut.npy"), &a), MATTN_ERR_IO);
        assert_null(a.data);
    }
    /* And random byte corruption of the preamble and header. */
    tl_rng r = tl_rng_make(4242);
    for (int iter = 0; iter < 300; iter++) {
        unsigned char *c = tl_alloc(n);
        memcpy(c, b, n);
        size_t at = (size_t)tl_int(&r, 80);
        c[at] = (unsigned char)tl_int(&r, 256);
        write_bytes(in_dir(&d, "bit.npy"), c, n);
        mattn__npy_array a;
        int rc = mattn__npy_read(in_dir(&d, "bit.npy"), &a);
        assert_true(rc == MATTN_OK || rc == MATTN_ERR_IO);
        if (rc == MATTN_OK)
            assert_int_equal(a.count * 4, 15 * 4); /* only a harmless change got through */
        mattn__npy_free(&a);
        free(c);
    }
    free(b);
    dir_free(&d);
}

/* ------------------------------------------------------------------ atomic writes */

static void test_atomic_writes(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    const int64_t shape[1] = {1000};
    float *data = tl_alloc(sizeof(float) * 1000);

    /* A missing directory: an error naming the file, nothing created. */
    const char *nowhere = in_dir(&d, "no/such/dir/o.npy");
    assert_int_equal(mattn__npy_write(nowhere, MATTN__NPY_F32, 1, shape, data), MATTN_ERR_IO);
    assert_non_null(strstr(mattn_last_error(), nowhere));
    assert_non_null(strstr(mattn_last_error(), "cannot create"));
    assert_int_equal(dir_count(&d), 0);

    /* Opened then abandoned, before or after put: no file, no temporary. */
    mattn__npy_writer w;
    assert_int_equal(mattn__npy_writer_open(&w, in_dir(&d, "a.npy")), MATTN_OK);
    assert_int_equal(dir_count(&d), 1); /* the temporary */
    assert_false(exists(in_dir(&d, "a.npy")));
    mattn__npy_writer_abort(&w);
    assert_int_equal(dir_count(&d), 0);
    assert_int_equal(mattn__npy_writer_open(&w, in_dir(&d, "a.npy")), MATTN_OK);
    assert_int_equal(mattn__npy_writer_put(&w, MATTN__NPY_F32, 1, shape, data), MATTN_OK);
    assert_false(exists(in_dir(&d, "a.npy")));
    mattn__npy_writer_abort(&w);
    mattn__npy_writer_abort(&w); /* twice is harmless */
    assert_int_equal(dir_count(&d), 0);

    /* Committed: the file is there and abort afterwards leaves it. */
    assert_int_equal(mattn__npy_writer_open(&w, in_dir(&d, "a.npy")), MATTN_OK);
    assert_int_equal(mattn__npy_writer_put(&w, MATTN__NPY_F32, 1, shape, data), MATTN_OK);
    assert_int_equal(mattn__npy_writer_commit(&w), MATTN_OK);
    mattn__npy_writer_abort(&w);
    assert_true(exists(in_dir(&d, "a.npy")));
    assert_int_equal(dir_count(&d), 1);

    /* The target is a directory: the rename fails, the temporary goes. */
    assert_int_equal(mkdir(in_dir(&d, "adir"), 0755), 0);
    assert_int_equal(mattn__npy_write(in_dir(&d, "adir"), MATTN__NPY_F32, 1, shape, data),
                     MATTN_ERR_IO);
    assert_non_null(strstr(mattn_last_error(), "cannot rename"));
    assert_int_equal(dir_count(&d), 2); /* a.npy and adir */

    /* A write that fails half-way (the file size limit): the old file keeps
     * its content and no temporary is left. */
    size_t old_n;
    unsigned char *old = read_bytes(in_dir(&d, "a.npy"), &old_n);
    struct rlimit saved, small;
    getrlimit(RLIMIT_FSIZE, &saved);
    small = saved;
    small.rlim_cur = 1000; /* header + 936 bytes of the 4000 */
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    for (int x = 0; x < 1000; x++)
        data[x] = 1.0f;
    int rc = mattn__npy_write(in_dir(&d, "a.npy"), MATTN__NPY_F32, 1, shape, data);
    setrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, prev);
    assert_int_equal(rc, MATTN_ERR_IO);
    assert_non_null(strstr(mattn_last_error(), "write failed"));
    size_t now_n;
    unsigned char *now = read_bytes(in_dir(&d, "a.npy"), &now_n);
    assert_int_equal(now_n, old_n);
    assert_memory_equal(now, old, old_n);
    assert_int_equal(dir_count(&d), 2);
    free(old);
    free(now);

    /* Misuse is an error, not a crash. */
    const int64_t bad_shape[1] = {-3};
    assert_int_equal(mattn__npy_write(in_dir(&d, "b.npy"), MATTN__NPY_F32, 1, bad_shape, data),
                     MATTN_ERR_ARG);
    assert_int_equal(mattn__npy_write(in_dir(&d, "b.npy"), MATTN__NPY_F32, 1, shape, NULL),
                     MATTN_ERR_ARG);
    assert_int_equal(mattn__npy_write("", MATTN__NPY_F32, 1, shape, data), MATTN_ERR_ARG);
    assert_int_equal(dir_count(&d), 2);
    free(data);
    dir_free(&d);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_many_dims),
        cmocka_unit_test(test_versions_and_variants),
        cmocka_unit_test(test_conversions),
        cmocka_unit_test(test_conversion_errors),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_atomic_writes),
    };
    int failed = tl_run_spread("npy", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
