/* Run-time choice of the decode inner loops: the AVX-512 ones when the
 * vector math runs AVX-512 (same CPU check, same MATTN_VECMATH override),
 * else the portable ones. */
#include <string.h>

#include "decode/decode.h"
#include "kernels/vecmath.h"

const mattn__dec_ops *mattn__dec_ops_get(void)
{
    if (strcmp(mattn__vecmath_get()->name, "avx512") == 0)
        return &mattn__dec_ops_avx512;
    return &mattn__dec_ops_portable;
}
