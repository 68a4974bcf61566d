/* Reusable, 64-byte aligned workspaces.
 *
 * A first touch of a fresh 4 KiB page costs ~10 us on the VMs we run on, so
 * kernels never malloc per call: they borrow a buffer from this pool and give
 * it back, and the pages stay mapped for the next call. Thread-safe. */
#ifndef MATTN_CORE_SCRATCH_H
#define MATTN_CORE_SCRATCH_H

#include <stddef.h>

/* A buffer of at least `bytes`, or NULL when out of memory. Contents are
 * undefined. Return it with mattn__scratch_put. */
void *mattn__scratch_get(size_t bytes);
void mattn__scratch_put(void *buffer);

/* One workspace of `bytes` per worker in bufs[0..n): n, or 0 when one
 * cannot be had (those already obtained go back to the pool). */
int mattn__scratch_get_each(char **bufs, int n, size_t bytes);
/* Returns bufs[0..n), n as mattn__scratch_get_each gave it. */
void mattn__scratch_put_each(char **bufs, int n);

static inline size_t mattn__align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

/* Consecutive 64-byte aligned pieces of one workspace block. Layouts run
 * twice: with base NULL only off adds up (the pieces are NULL), which sizes
 * the block; then with the block, to carve it. */
typedef struct mattn__carver {
    char *base;
    size_t off;
} mattn__carver;

static inline void *mattn__carve(mattn__carver *c, size_t size, size_t count)
{
    void *piece = c->base ? c->base + c->off : NULL;
    c->off += mattn__align64(size * count);
    return piece;
}

#endif
