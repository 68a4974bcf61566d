/* Run-time choice of the decode inner loops: those of the instruction set
 * the vector math runs (same CPU check, same MATTN_VECMATH override). */
#include <string.h>

#include "decode/decode.h"
#include "kernels/vecmath.h"

const mattn__dec_ops *mattn__dec_ops_get(void)
{
    const char *isa = mattn__vecmath_get()->name;
    if (strcmp(isa, "avx512") == 0)
        return &mattn__dec_ops_avx512;
    if (strcmp(isa, "avx2") == 0)
        return &mattn__dec_ops_avx2;
    return &mattn__dec_ops_portable;
}
