/* Work distribution over threads, and OpenBLAS kept single-threaded inside. */
#ifndef MATTN_CORE_PARALLEL_H
#define MATTN_CORE_PARALLEL_H

#include <stdint.h>

/* One unit of work; `worker` in [0, threads) indexes per-thread workspaces. */
typedef void (*mattn__task_fn)(void *ctx, int64_t task, int worker);

/* Runs fn for every task in [0, ntasks) on up to `threads` workers, handing
 * out tasks in order as workers free up (so put the heaviest first). */
void mattn__parallel_for(int threads, int64_t ntasks, mattn__task_fn fn, void *ctx);

/* Kernels call OpenBLAS on small blocks from their own threads: it must not
 * start threads of its own there. hold() sets it to one thread until the
 * matching release(); nested and concurrent holds are counted, and the
 * caller's setting is restored by the last release. */
void mattn__blas_hold(void);
void mattn__blas_release(void);

#endif
