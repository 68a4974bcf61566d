#include "core/parallel.h"

#include <cblas.h>
#include <omp.h>
#include <pthread.h>

void mattn__parallel_for(int threads, int64_t ntasks, mattn__task_fn fn, void *ctx)
{
    if (threads > ntasks)
        threads = (int)ntasks;
    if (threads <= 1) {
        for (int64_t t = 0; t < ntasks; t++)
            fn(ctx, t, 0);
        return;
    }
    int64_t next = 0;
#pragma omp parallel num_threads(threads)
    {
        int worker = omp_get_thread_num();
        for (;;) {
            int64_t t;
#pragma omp atomic capture
            t = next++;
            if (t >= ntasks)
                break;
            fn(ctx, t, worker);
        }
    }
}

static pthread_mutex_t hold_lock = PTHREAD_MUTEX_INITIALIZER;
static int hold_count;
static int saved_threads;

void mattn__blas_hold(void)
{
    pthread_mutex_lock(&hold_lock);
    if (hold_count++ == 0) {
        saved_threads = openblas_get_num_threads();
        if (saved_threads != 1)
            openblas_set_num_threads(1);
    }
    pthread_mutex_unlock(&hold_lock);
}

void mattn__blas_release(void)
{
    pthread_mutex_lock(&hold_lock);
    if (--hold_count == 0 && saved_threads != 1)
        openblas_set_num_threads(saved_threads);
    pthread_mutex_unlock(&hold_lock);
}
