#include "core/hash.h"

#include <string.h>

uint64_t mattn__hash_u64(uint64_t h, uint64_t x)
{
    return mattn__mix(h ^ mattn__mix(x + 0x9e3779b97f4a7c15ULL));
}

uint64_t mattn__hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    /* Eight independent lanes of xor-multiply-shift (each step a bijection
     * of the lane, so one differing word always changes the result), so the
     * multiplies of consecutive words overlap: ~13 GB/s here instead of one
     * multiply latency per word. */
    enum { LANES = 8 };
    uint64_t a[LANES];
    for (int l = 0; l < LANES; l++)
        a[l] = h ^ ((uint64_t)(l + 1) * 0x9e3779b97f4a7c15ULL);
    size_t i = 0;
    for (; i + 8 * LANES <= n; i += 8 * LANES)
        for (int l = 0; l < LANES; l++) {
            uint64_t w;
            memcpy(&w, b + i + 8 * l, 8);
            a[l] = (a[l] ^ w) * 0x9fb21c651e98df25ULL;
            a[l] ^= a[l] >> 29;
        }
    uint64_t t = mattn__hash_u64(h, n);
    for (int l = 0; l < LANES; l++)
        t = mattn__hash_u64(t, a[l]);
    for (; i < n; i += 8) {
        uint64_t w = 0;
        memcpy(&w, b + i, n - i < 8 ? n - i : 8);
        t = mattn__hash_u64(t, w);
    }
    return t;
}
