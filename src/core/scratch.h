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

#endif
