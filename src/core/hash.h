/* Fingerprints for the cross-rank agreement: ranks compare 64-bit hashes of
 * arguments that must be identical everywhere (masks, bias, sinks, decode
 * lengths) instead of the arguments themselves. Not cryptographic: they
 * catch a caller's mistake, not an adversary. */
#ifndef MATTN_CORE_HASH_H
#define MATTN_CORE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define MATTN__HASH_SEED 0xcbf29ce484222325ULL

/* The splitmix64 finaliser: every input bit flips about half of the output
 * bits. Also the round of the dropout hash (SPEC §4, core/dropout.h), so it
 * must not change. */
static inline uint64_t mattn__mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* h extended by the 64-bit value x. */
uint64_t mattn__hash_u64(uint64_t h, uint64_t x);

/* h extended by n bytes at p (order-sensitive; any alignment). */
uint64_t mattn__hash_bytes(uint64_t h, const void *p, size_t n);

#endif
