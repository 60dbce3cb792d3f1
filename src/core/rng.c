/* xoshiro256** (Blackman & Vigna), seeded through splitmix64 so any 64-bit seed works. */
#include "ea/core.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void ea_rng_seed(ea_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ea_rng_u64(ea_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return result;
}

double ea_rng_uniform(ea_rng *r) { return (double)(ea_rng_u64(r) >> 11) * 0x1.0p-53; }

double ea_rng_normal(ea_rng *r) {
    /* Box-Muller; u1 in (0,1] so log is finite. */
    double u1 = 1.0 - ea_rng_uniform(r), u2 = ea_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint64_t ea_rng_below(ea_rng *r, uint64_t n) {
    if (n == 0) return 0;
    uint64_t lim = UINT64_MAX - UINT64_MAX % n, x;
    do x = ea_rng_u64(r); while (x >= lim);
    return x % n;
}
