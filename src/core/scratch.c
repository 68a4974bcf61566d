#include "core/scratch.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "mattn.h"

#define POOL_SLOTS 64
#define ALIGNMENT 64

/* Every buffer the pool has handed out or keeps, with its size. */
struct slot {
    void *ptr;
    size_t size;
    int in_use;
};

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct slot pool[POOL_SLOTS];

void *mattn__scratch_get(size_t bytes)
{
    if (bytes == 0)
        bytes = ALIGNMENT;
    pthread_mutex_lock(&pool_lock);
    int best = -1, empty = -1;
    for (int i = 0; i < POOL_SLOTS; i++) {
        if (pool[i].ptr == NULL) {
            if (empty < 0)
                empty = i;
        } else if (!pool[i].in_use && pool[i].size >= bytes &&
                   (best < 0 || pool[i].size < pool[best].size)) {
            best = i;
        }
    }
    if (best >= 0) {
        pool[best].in_use = 1;
        void *p = pool[best].ptr;
        pthread_mutex_unlock(&pool_lock);
        return p;
    }
    /* No free buffer is large enough: drop the largest free one that is too
     * small (it would never be picked again) and allocate a new one. */
    if (empty < 0) {
        for (int i = 0; i < POOL_SLOTS; i++) {
            if (pool[i].ptr && !pool[i].in_use) {
                free(pool[i].ptr);
                pool[i].ptr = NULL;
                empty = i;
                break;
            }
        }
    }
    size_t rounded = (bytes + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
    void *p = aligned_alloc(ALIGNMENT, rounded);
    if (p && empty >= 0) {
        pool[empty].ptr = p;
        pool[empty].size = rounded;
        pool[empty].in_use = 1;
    }
    pthread_mutex_unlock(&pool_lock);
    /* With every slot busy the buffer is simply not cached: scratch_put frees
     * what it does not know. */
    return p;
}

void mattn__scratch_put(void *buffer)
{
    if (buffer == NULL)
        return;
    pthread_mutex_lock(&pool_lock);
    for (int i = 0; i < POOL_SLOTS; i++) {
        if (pool[i].ptr == buffer) {
            pool[i].in_use = 0;
            pthread_mutex_unlock(&pool_lock);
            return;
        }
    }
    pthread_mutex_unlock(&pool_lock);
    free(buffer);
}

int mattn__scratch_get_each(char **bufs, int n, size_t bytes)
{
    for (int i = 0; i < n; i++) {
        bufs[i] = mattn__scratch_get(bytes);
        if (bufs[i] == NULL) {
            mattn__scratch_put_each(bufs, i);
            return 0;
        }
    }
    return n;
}

void mattn__scratch_put_each(char **bufs, int n)
{
    for (int i = 0; i < n; i++)
        mattn__scratch_put(bufs[i]);
}

void mattn_scratch_release(void)
{
    pthread_mutex_lock(&pool_lock);
    for (int i = 0; i < POOL_SLOTS; i++) {
        if (pool[i].ptr && !pool[i].in_use) {
            free(pool[i].ptr);
            pool[i].ptr = NULL;
            pool[i].size = 0;
        }
    }
    pthread_mutex_unlock(&pool_lock);
}
