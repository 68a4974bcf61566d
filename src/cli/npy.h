/* NumPy .npy files (SPEC §8): format versions 1.0, 2.0 and 3.0, C order.
 *
 * Reading accepts float32/float64, int32/int64, bool and uint8, in either
 * byte order, and converts to the three in-memory types the library uses:
 * float64 -> float32 (a finite value beyond float32's range is an error),
 * int64 -> int32 (range-checked), bool -> uint8 (0/1 as stored).
 * Writing produces float32, int32 or uint8 with a version 1.0 header (2.0 if
 * the header would not fit), padded so the data starts on a 64-byte boundary,
 * as NumPy writes them.
 *
 * Every failure is MATTN_ERR_IO (MATTN_ERR_NOMEM for allocation) with
 * mattn_last_error() naming the file and the problem. The file must hold
 * exactly header + shape * itemsize bytes: trailing bytes are an error, since
 * they mean the header and the data disagree. */
#ifndef MATTN_CLI_NPY_H
#define MATTN_CLI_NPY_H

#include <stddef.h>
#include <stdint.h>

/* In-memory element types. */
typedef enum mattn__npy_dtype {
    MATTN__NPY_F32 = 0,
    MATTN__NPY_I32 = 1,
    MATTN__NPY_U8 = 2
} mattn__npy_dtype;

#define MATTN__NPY_MAX_DIMS 32

typedef struct mattn__npy_array {
    mattn__npy_dtype dtype; /* after conversion */
    char descr[8];          /* as the file spelled it: "<f8", "|b1", ... */
    int ndim;               /* 0 for a scalar */
    int64_t shape[MATTN__NPY_MAX_DIMS];
    int64_t count; /* product of shape (1 for a scalar, 0 for an empty array) */
    void *data;    /* count elements of dtype; never NULL after a read */
} mattn__npy_array;

/* Reads path into *a (zeroed first, so mattn__npy_free is always safe). */
int mattn__npy_read(const char *path, mattn__npy_array *a);
/* Frees a's data and zeroes it. */
void mattn__npy_free(mattn__npy_array *a);

/* "float32", "int32", "uint8". */
const char *mattn__npy_dtype_name(mattn__npy_dtype dtype);
/* Formats "[2, 3, 4]" ("[]" for a scalar) into buf and returns buf. */
const char *mattn__npy_shape_str(const int64_t *shape, int ndim, char *buf, size_t size);

/* Atomic writing in two steps, so a command can create its output files
 * before a long computation (a bad directory fails early) and still leave no
 * output at all when anything fails later:
 *   open   creates "<path>.tmp.<pid>",
 *   put    writes the header and data to it and closes it,
 *   commit renames it onto path,
 *   abort  removes the temporary file (safe at any point, also after commit,
 *          where it does nothing). */
typedef struct mattn__npy_writer {
    char *path, *tmp; /* NULL when not open */
    int fd;           /* -1 once closed */
    int written;      /* put succeeded */
} mattn__npy_writer;

int mattn__npy_writer_open(mattn__npy_writer *w, const char *path);
int mattn__npy_writer_put(mattn__npy_writer *w, mattn__npy_dtype dtype, int ndim,
                          const int64_t *shape, const void *data);
int mattn__npy_writer_commit(mattn__npy_writer *w);
void mattn__npy_writer_abort(mattn__npy_writer *w);

/* open + put + commit; on failure nothing is left behind. */
int mattn__npy_write(const char *path, mattn__npy_dtype dtype, int ndim,
                     const int64_t *shape, const void *data);

#endif
