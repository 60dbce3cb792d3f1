/* Half/bfloat16 conversion. With the avx2 tier or above (F16C), f32 -> f16 and the array path use
 * the hardware conversions; they round the same way as the portable code (to nearest even). */
#include "ea/core.h"

#include <string.h>

#include "core/isa.h"

#ifdef EA_X86
EA_TARGET_AVX2_BEGIN
static uint16_t f32_to_f16_f16c(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

static size_t f16_to_f32_f16c(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(src + i))));
    /* Unoptimised builds omit vzeroupper; dirty upper halves slow every later SSE libm call. */
    _mm256_zeroupper();
    return i;
}
EA_TARGET_END
#endif

float ea_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalise */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 112) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t ea_f32_to_f16(float f) {
#ifdef EA_X86
    if (ea_isa_now() >= EA_ISA_AVX2) return f32_to_f16_f16c(f);
#endif
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, exp = (x >> 23) & 0xff, man = x & 0x7fffff;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000;
        int shift = 14 - e;
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return (uint16_t)half;
}

float ea_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

void ea_f16_to_f32_array(const uint16_t *src, float *dst, size_t n) {
    size_t i = 0;
#ifdef EA_X86
    if (ea_isa_now() >= EA_ISA_AVX2) i = f16_to_f32_f16c(src, dst, n);
#endif
    for (; i < n; i++) dst[i] = ea_f16_to_f32(src[i]);
}
