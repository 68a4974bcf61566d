/* Run-time choice of the vector math implementation. */
#include "kernels/vecmath.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static const mattn__vecmath *chosen;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static int cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
}

static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static void choose(void)
{
    const char *force = getenv("MATTN_VECMATH");
    if (force && strcmp(force, "portable") == 0)
        chosen = &mattn__vecmath_portable;
    else if (force && strcmp(force, "avx2") == 0 && cpu_has_avx2())
        chosen = &mattn__vecmath_avx2;
    else if (cpu_has_avx512() && !(force && strcmp(force, "avx2") == 0))
        chosen = &mattn__vecmath_avx512;
    else if (cpu_has_avx2())
        chosen = &mattn__vecmath_avx2;
    else
        chosen = &mattn__vecmath_portable;
}

const mattn__vecmath *mattn__vecmath_get(void)
{
    pthread_once(&chosen_once, choose);
    return chosen;
}
