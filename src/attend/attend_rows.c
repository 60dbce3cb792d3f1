/* Attention on KV rows in the format the cache stores them, for one-token decode (and up to
 * EA_KV_ROWS_STREAM_MAX queries), plus the sgemm prefill on float rows.
 *
 * Decode is bound by reading the cache: decoding every cached row to float32 each token and then
 * attending costs more than reading f32 rows directly, so the kernel reads f16/q8_0/q4_0 rows in
 * place and dequantizes 16 or 32 values at a time in registers. Work items are (head, key range):
 * a thread takes whole heads when the head count divides evenly among threads, otherwise the keys
 * of each head are split and the partial softmax sums are merged (online softmax). Within an item,
 * keys are processed in chunks: scores of the chunk, one softmax update (rescaling what was summed
 * under an older maximum), then the probability-weighted value rows. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "attend/attend.h"
#include "attend/simd.h"

#ifdef EA_X86
/* AVX-512 and AVX2 kernels per (format, number of queries), chosen at run time: scores_table,
 * values_table */
#define ROWS_VEC 1
#define ROWS_INLINE static inline __attribute__((always_inline))
#endif

#define QK 32             /* values per q8_0 / q4_0 block */
#define CHUNK 64          /* keys scored before their values are summed */
#define PAR_MIN 16384     /* keys × d below which one thread does the whole layer */
#define NQ_MAX EA_KV_ROWS_STREAM_MAX

size_t ea_kv_rows_row_bytes(ea_kv_rows_format fmt, int d) {
    size_t nb = ((size_t)d + QK - 1) / QK;
    switch (fmt) {
    case EA_KV_ROWS_F32: return sizeof(float) * (size_t)d;
    case EA_KV_ROWS_F16: return sizeof(uint16_t) * (size_t)d;
    case EA_KV_ROWS_Q8_0: return nb * (2 + QK);
    case EA_KV_ROWS_Q4_0: return nb * (2 + QK / 2);
    }
    return 0;
}

/* fmaxf is a library call without -ffast-math (NaN rules). */
static inline float max_f(float a, float b) { return a > b ? a : b; }

static inline float half_at(const unsigned char *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return ea_f16_to_f32(h);
}

typedef struct {
    ea_kv_rows_format fmt;
    int d, hd, nq, pos0; /* nq: query slots, G per position */
    int G;               /* slots per position: query heads of one KV head (GQA), 1 without */
    size_t qs, hs;       /* floats between positions, and between KV heads, in q and out */
    int fast; /* the vector path applies: head slices are whole 16-value segments */
    ea_isa tier; /* which vector kernels (ea_isa_now) */
    size_t rb;
    const unsigned char *k, *v;
    const float *q;
    float scale;
} rows_job;

/* Query (and output) slot i of KV head h: position i / G, group member i % G. */
static inline size_t slot_off(const rows_job *j, int h, int i) {
    return (size_t)(i / j->G) * j->qs + (size_t)h * j->hs + (size_t)(i % j->G) * (size_t)j->hd;
}

/* ---- Portable path: any head dimension and alignment, any target. ---- */

/* x[0..n) = the values s..s+n-1 of a stored row, as the codec's decode would give them. */
static void row_dequant(ea_kv_rows_format fmt, const unsigned char *row, int s, int n, float *x) {
    switch (fmt) {
    case EA_KV_ROWS_F32: memcpy(x, row + sizeof(float) * (size_t)s, sizeof(float) * (size_t)n); return;
    case EA_KV_ROWS_F16:
        for (int i = 0; i < n; i++) x[i] = half_at(row + 2 * ((size_t)s + i));
        return;
    case EA_KV_ROWS_Q8_0:
        for (int i = 0; i < n; i++) {
            const unsigned char *b = row + (size_t)((s + i) / QK) * (2 + QK);
            x[i] = (float)(int8_t)b[2 + (s + i) % QK] * half_at(b);
        }
        return;
    case EA_KV_ROWS_Q4_0:
        for (int i = 0; i < n; i++) {
            int j = (s + i) % QK;
            const unsigned char *b = row + (size_t)((s + i) / QK) * (2 + QK / 2);
            int qv = j < QK / 2 ? b[2 + j] & 15 : b[2 + j - QK / 2] >> 4;
            x[i] = (float)(qv - 8) * half_at(b);
        }
        return;
    }
}

/* s[i][r] = scale · q_i·k_r over head h for keys c0..c0+n-1 and queries i0..nq-1. */
static void scores_portable(const rows_job *j, int h, int c0, int n, int i0, float (*s)[CHUNK]) {
    float tmp[16];
    const unsigned char *kr = j->k + (size_t)c0 * j->rb;
    for (int r = 0; r < n; r++, kr += j->rb) {
        float a[NQ_MAX] = {0};
        for (int x = 0; x < j->hd; x += 16) {
            int w = j->hd - x < 16 ? j->hd - x : 16;
            row_dequant(j->fmt, kr, h * j->hd + x, w, tmp);
            for (int i = i0; i < j->nq; i++) {
                const float *qi = j->q + slot_off(j, h, i) + x;
                float dot = 0;
#pragma omp simd reduction(+ : dot)
                for (int e = 0; e < w; e++) dot += qi[e] * tmp[e];
                a[i] += dot;
            }
        }
        for (int i = i0; i < j->nq; i++) s[i][r] = a[i] * j->scale;
    }
}

/* acc_i += Σ_r s[i][r] · v_r over head h. */
static void values_portable(const rows_job *j, int h, int c0, int n, int i0, float (*s)[CHUNK], float *const *acc) {
    float tmp[16];
    const unsigned char *vr = j->v + (size_t)c0 * j->rb;
    for (int r = 0; r < n; r++, vr += j->rb)
        for (int x = 0; x < j->hd; x += 16) {
            int w = j->hd - x < 16 ? j->hd - x : 16;
            row_dequant(j->fmt, vr, h * j->hd + x, w, tmp);
            for (int i = i0; i < j->nq; i++) {
                float p = s[i][r], *a = acc[i] + x;
#pragma omp simd
                for (int e = 0; e < w; e++) a[e] += p * tmp[e];
            }
        }
}

/* ---- AVX-512 path: head slices made of whole 16-value segments. The format and the number of
 * queries are compile-time constants in each instance, so accumulators stay in registers. ---- */
#ifdef ROWS_VEC
EA_TARGET_AVX2_BEGIN
ROWS_INLINE float half_at_f16c(const unsigned char *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}
EA_TARGET_END

EA_TARGET_AVX512_BEGIN

/* Values s..s+15 of a row (s a multiple of 16; within one q block). */
ROWS_INLINE __m512 seg_load512(const int fmt, const unsigned char *row, int s) {
    switch (fmt) {
    case EA_KV_ROWS_F32: return _mm512_loadu_ps(row + sizeof(float) * (size_t)s);
    case EA_KV_ROWS_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const void *)(row + 2 * (size_t)s)));
    case EA_KV_ROWS_Q8_0: {
        const unsigned char *b = row + (size_t)(s / QK) * (2 + QK);
        __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const void *)(b + 2 + s % QK))));
        return _mm512_mul_ps(x, _mm512_set1_ps(half_at_f16c(b)));
    }
    default: { /* q4_0: the low nibbles are values 0..15 of the block, the high ones 16..31 */
        const unsigned char *b = row + (size_t)(s / QK) * (2 + QK / 2);
        __m128i raw = _mm_loadu_si128((const void *)(b + 2));
        if (s % QK) raw = _mm_srli_epi16(raw, 4);
        __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(raw, _mm_set1_epi8(15))));
        /* (q - 8)·d as q·d - 8d in one rounding: 8d is exact, so this equals the decoder's value */
        __m512 d = _mm512_set1_ps(half_at_f16c(b));
        return _mm512_fmsub_ps(x, d, _mm512_mul_ps(d, _mm512_set1_ps(8.0f)));
    }
    }
}

/* Values s..s+31 (s a multiple of 16): one scale conversion when they are one q block. */
ROWS_INLINE void pair_load512(const int fmt, const unsigned char *row, int s, __m512 *lo, __m512 *hi) {
    if (fmt == EA_KV_ROWS_Q8_0 && s % QK == 0) {
        const unsigned char *b = row + (size_t)(s / QK) * (2 + QK);
        __m512 d = _mm512_set1_ps(half_at_f16c(b));
        *lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const void *)(b + 2)))), d);
        *hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const void *)(b + 18)))), d);
    } else if (fmt == EA_KV_ROWS_Q4_0 && s % QK == 0) {
        const unsigned char *b = row + (size_t)(s / QK) * (2 + QK / 2);
        __m128i raw = _mm_loadu_si128((const void *)(b + 2)), m15 = _mm_set1_epi8(15);
        __m512 d = _mm512_set1_ps(half_at_f16c(b)), d8 = _mm512_mul_ps(d, _mm512_set1_ps(8.0f));
        *lo = _mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(raw, m15))), d, d8);
        __m128i high = _mm_and_si128(_mm_srli_epi16(raw, 4), m15);
        *hi = _mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(high)), d, d8);
    } else {
        *lo = seg_load512(fmt, row, s);
        *hi = seg_load512(fmt, row, s + 16);
    }
}

/* {Σa, Σb, Σc, Σd} */
ROWS_INLINE __m128 reduce4_512(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
    __m512 x = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd))); /* per 128 bits: a b c d */
    __m256 y = _mm256_add_ps(_mm512_castps512_ps256(x),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));
}

ROWS_INLINE void scores_512(const int fmt, const int NQ, const rows_job *j, int h, int c0, int n, int i0,
                            float (*s)[CHUNK]) {
    const int hd = j->hd, base = h * hd;
    const size_t rb = j->rb;
    const float *q[NQ_MAX];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++) q[i] = j->q + slot_off(j, h, i0 + i);
    const unsigned char *kr = j->k + (size_t)c0 * rb;
    int r = 0;
    /* four keys at a time: their sums are reduced together, and four chains hide FMA latency */
    for (; r + 4 <= n; r += 4, kr += 4 * rb) {
        __m512 a[NQ_MAX][4];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) a[i][u] = _mm512_setzero_ps();
        int x = 0;
        for (; x + 32 <= hd; x += 32) {
            __m512 lo[4], hi[4];
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) pair_load512(fmt, kr + u * rb, base + x, &lo[u], &hi[u]);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++) {
                __m512 ql = _mm512_loadu_ps(q[i] + x), qh = _mm512_loadu_ps(q[i] + x + 16);
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++) a[i][u] = _mm512_fmadd_ps(hi[u], qh, _mm512_fmadd_ps(lo[u], ql, a[i][u]));
            }
        }
        if (x < hd) {
            __m512 kx[4];
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) kx[u] = seg_load512(fmt, kr + u * rb, base + x);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++) {
                __m512 qx = _mm512_loadu_ps(q[i] + x);
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++) a[i][u] = _mm512_fmadd_ps(kx[u], qx, a[i][u]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
            _mm_storeu_ps(&s[i0 + i][r],
                          _mm_mul_ps(reduce4_512(a[i][0], a[i][1], a[i][2], a[i][3]), _mm_set1_ps(j->scale)));
    }
    for (; r < n; r++, kr += rb) {
        __m512 a[NQ_MAX];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) a[i] = _mm512_setzero_ps();
        for (int x = 0; x < hd; x += 16) {
            __m512 kx = seg_load512(fmt, kr, base + x);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++) a[i] = _mm512_fmadd_ps(kx, _mm512_loadu_ps(q[i] + x), a[i]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) s[i0 + i][r] = _mm512_reduce_add_ps(a[i]) * j->scale;
    }
}

ROWS_INLINE void values_512(const int fmt, const int NQ, const rows_job *j, int h, int c0, int n, int i0,
                            float (*s)[CHUNK], float *const *acc) {
    const int hd = j->hd, base = h * hd;
    const size_t rb = j->rb;
    const unsigned char *v0 = j->v + (size_t)c0 * rb;
    int x = 0;
    for (; x + 32 <= hd; x += 32) {
        /* [query][key parity][half]: two keys per step give each query four independent chains */
        __m512 a[NQ_MAX][2][2];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) {
            a[i][0][0] = _mm512_loadu_ps(acc[i0 + i] + x);
            a[i][0][1] = _mm512_loadu_ps(acc[i0 + i] + x + 16);
            a[i][1][0] = a[i][1][1] = _mm512_setzero_ps();
        }
        const unsigned char *vr = v0;
        int r = 0;
        for (; r + 2 <= n; r += 2, vr += 2 * rb) {
            __m512 l0, h0, l1, h1;
            pair_load512(fmt, vr, base + x, &l0, &h0);
            pair_load512(fmt, vr + rb, base + x, &l1, &h1);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++) {
                __m512 p0 = _mm512_set1_ps(s[i0 + i][r]), p1 = _mm512_set1_ps(s[i0 + i][r + 1]);
                a[i][0][0] = _mm512_fmadd_ps(p0, l0, a[i][0][0]);
                a[i][0][1] = _mm512_fmadd_ps(p0, h0, a[i][0][1]);
                a[i][1][0] = _mm512_fmadd_ps(p1, l1, a[i][1][0]);
                a[i][1][1] = _mm512_fmadd_ps(p1, h1, a[i][1][1]);
            }
        }
        if (r < n) {
            __m512 l0, h0;
            pair_load512(fmt, vr, base + x, &l0, &h0);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++) {
                __m512 p0 = _mm512_set1_ps(s[i0 + i][r]);
                a[i][0][0] = _mm512_fmadd_ps(p0, l0, a[i][0][0]);
                a[i][0][1] = _mm512_fmadd_ps(p0, h0, a[i][0][1]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) {
            _mm512_storeu_ps(acc[i0 + i] + x, _mm512_add_ps(a[i][0][0], a[i][1][0]));
            _mm512_storeu_ps(acc[i0 + i] + x + 16, _mm512_add_ps(a[i][0][1], a[i][1][1]));
        }
    }
    if (x < hd) { /* a last 16-value segment (head dims ≡ 16 mod 32) */
        __m512 a[NQ_MAX];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) a[i] = _mm512_loadu_ps(acc[i0 + i] + x);
        const unsigned char *vr = v0;
        for (int r = 0; r < n; r++, vr += rb) {
            __m512 vx = seg_load512(fmt, vr, base + x);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++) a[i] = _mm512_fmadd_ps(_mm512_set1_ps(s[i0 + i][r]), vx, a[i]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) _mm512_storeu_ps(acc[i0 + i] + x, a[i]);
    }
}

EA_TARGET_END
#endif /* ROWS_VEC: AVX-512 */

/* ---- AVX2 path (x86-64-v3): the same item structure on 8-lane registers; a 16-value segment is
 * a pair of them, so the formats' block handling stays that of the AVX-512 path. ---- */
#ifdef ROWS_VEC
EA_TARGET_AVX2_BEGIN

typedef struct {
    __m256 lo, hi; /* values s..s+7, s+8..s+15 */
} seg8x2;

/* Values s..s+15 of a row (s a multiple of 16; within one q block), as the decoder gives them. */
ROWS_INLINE seg8x2 seg_load256(const int fmt, const unsigned char *row, int s) {
    seg8x2 r;
    switch (fmt) {
    case EA_KV_ROWS_F32: {
        const float *p = (const float *)(const void *)(row + sizeof(float) * (size_t)s);
        r.lo = _mm256_loadu_ps(p);
        r.hi = _mm256_loadu_ps(p + 8);
        return r;
    }
    case EA_KV_ROWS_F16: {
        const unsigned char *p = row + 2 * (size_t)s;
        r.lo = _mm256_cvtph_ps(_mm_loadu_si128((const void *)p));
        r.hi = _mm256_cvtph_ps(_mm_loadu_si128((const void *)(p + 16)));
        return r;
    }
    case EA_KV_ROWS_Q8_0: {
        const unsigned char *b = row + (size_t)(s / QK) * (2 + QK);
        __m128i raw = _mm_loadu_si128((const void *)(b + 2 + s % QK));
        __m256 d = _mm256_set1_ps(half_at_f16c(b));
        r.lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw)), d);
        r.hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(raw, 8))), d);
        return r;
    }
    default: { /* q4_0: low nibbles are values 0..15 of the block, high ones 16..31; (q - 8)·d as q·d - 8d */
        const unsigned char *b = row + (size_t)(s / QK) * (2 + QK / 2);
        __m128i raw = _mm_loadu_si128((const void *)(b + 2));
        if (s % QK) raw = _mm_srli_epi16(raw, 4);
        raw = _mm_and_si128(raw, _mm_set1_epi8(15));
        __m256 d = _mm256_set1_ps(half_at_f16c(b)), d8 = _mm256_mul_ps(d, _mm256_set1_ps(8.0f));
        r.lo = _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(raw)), d, d8);
        r.hi = _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(raw, 8))), d, d8);
        return r;
    }
    }
}

/* {Σa, Σb, Σc, Σd} */
ROWS_INLINE __m128 reduce4_256(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 x = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d)); /* per 128 bits: a b c d */
    return _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
}

ROWS_INLINE void scores_256(const int fmt, const int NQ, const rows_job *j, int h, int c0, int n, int i0,
                            float (*s)[CHUNK]) {
    const int hd = j->hd, base = h * hd;
    const size_t rb = j->rb;
    const float *q[NQ_MAX];
#pragma GCC unroll 4
    for (int i = 0; i < NQ; i++) q[i] = j->q + slot_off(j, h, i0 + i);
    const unsigned char *kr = j->k + (size_t)c0 * rb;
    int r = 0;
    /* four keys at a time: their sums are reduced together, and four chains hide FMA latency */
    for (; r + 4 <= n; r += 4, kr += 4 * rb) {
        __m256 a[NQ_MAX][4];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) a[i][u] = _mm256_setzero_ps();
        for (int x = 0; x < hd; x += 16) {
            seg8x2 kx[4];
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) kx[u] = seg_load256(fmt, kr + u * rb, base + x);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++) {
                __m256 ql = _mm256_loadu_ps(q[i] + x), qh = _mm256_loadu_ps(q[i] + x + 8);
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++) a[i][u] = _mm256_fmadd_ps(kx[u].hi, qh, _mm256_fmadd_ps(kx[u].lo, ql, a[i][u]));
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++)
            _mm_storeu_ps(&s[i0 + i][r], _mm_mul_ps(reduce4_256(a[i][0], a[i][1], a[i][2], a[i][3]), _mm_set1_ps(j->scale)));
    }
    for (; r < n; r++, kr += rb) {
        __m256 a[NQ_MAX];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) a[i] = _mm256_setzero_ps();
        for (int x = 0; x < hd; x += 16) {
            seg8x2 kx = seg_load256(fmt, kr, base + x);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++)
                a[i] = _mm256_fmadd_ps(kx.hi, _mm256_loadu_ps(q[i] + x + 8),
                                       _mm256_fmadd_ps(kx.lo, _mm256_loadu_ps(q[i] + x), a[i]));
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) s[i0 + i][r] = ea_kv_hsum8(a[i]) * j->scale;
    }
}

ROWS_INLINE void values_256(const int fmt, const int NQ, const rows_job *j, int h, int c0, int n, int i0,
                            float (*s)[CHUNK], float *const *acc) {
    const int hd = j->hd, base = h * hd;
    const size_t rb = j->rb;
    const unsigned char *v0 = j->v + (size_t)c0 * rb;
    for (int x = 0; x < hd; x += 16) {
        /* [query][key parity][half]: two keys per step give each query four independent chains */
        __m256 a[NQ_MAX][2][2];
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) {
            a[i][0][0] = _mm256_loadu_ps(acc[i0 + i] + x);
            a[i][0][1] = _mm256_loadu_ps(acc[i0 + i] + x + 8);
            a[i][1][0] = a[i][1][1] = _mm256_setzero_ps();
        }
        const unsigned char *vr = v0;
        int r = 0;
        for (; r + 2 <= n; r += 2, vr += 2 * rb) {
            seg8x2 v0x = seg_load256(fmt, vr, base + x), v1x = seg_load256(fmt, vr + rb, base + x);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++) {
                __m256 p0 = _mm256_set1_ps(s[i0 + i][r]), p1 = _mm256_set1_ps(s[i0 + i][r + 1]);
                a[i][0][0] = _mm256_fmadd_ps(p0, v0x.lo, a[i][0][0]);
                a[i][0][1] = _mm256_fmadd_ps(p0, v0x.hi, a[i][0][1]);
                a[i][1][0] = _mm256_fmadd_ps(p1, v1x.lo, a[i][1][0]);
                a[i][1][1] = _mm256_fmadd_ps(p1, v1x.hi, a[i][1][1]);
            }
        }
        if (r < n) {
            seg8x2 v0x = seg_load256(fmt, vr, base + x);
#pragma GCC unroll 4
            for (int i = 0; i < NQ; i++) {
                __m256 p0 = _mm256_set1_ps(s[i0 + i][r]);
                a[i][0][0] = _mm256_fmadd_ps(p0, v0x.lo, a[i][0][0]);
                a[i][0][1] = _mm256_fmadd_ps(p0, v0x.hi, a[i][0][1]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < NQ; i++) {
            _mm256_storeu_ps(acc[i0 + i] + x, _mm256_add_ps(a[i][0][0], a[i][1][0]));
            _mm256_storeu_ps(acc[i0 + i] + x + 8, _mm256_add_ps(a[i][0][1], a[i][1][1]));
        }
    }
}
EA_TARGET_END
#endif /* ROWS_VEC: AVX2 */

#ifdef ROWS_VEC
/* One instance per (tier, format, number of queries). */
#define ROWS_INSTANCE(T, name, F, N)                                                                                 \
    static void scores_##T##_##name##_##N(const rows_job *j, int h, int c0, int n, int i0, float (*s)[CHUNK]) {    \
        scores_##T(F, N, j, h, c0, n, i0, s);                                                                      \
    }                                                                                                              \
    static void values_##T##_##name##_##N(const rows_job *j, int h, int c0, int n, int i0, float (*s)[CHUNK],     \
                                          float *const *acc) {                                                     \
        values_##T(F, N, j, h, c0, n, i0, s, acc);                                                                 \
    }
#define ROWS_INSTANCES(T, name, F)                                                                                 \
    ROWS_INSTANCE(T, name, F, 1) ROWS_INSTANCE(T, name, F, 2) ROWS_INSTANCE(T, name, F, 3) ROWS_INSTANCE(T, name, F, 4)
#define ROWS_TIER(T)                                                                                               \
    ROWS_INSTANCES(T, f32, EA_KV_ROWS_F32)                                                                         \
    ROWS_INSTANCES(T, f16, EA_KV_ROWS_F16) ROWS_INSTANCES(T, q8, EA_KV_ROWS_Q8_0) ROWS_INSTANCES(T, q4, EA_KV_ROWS_Q4_0)
EA_TARGET_AVX512_BEGIN
ROWS_TIER(512)
EA_TARGET_END
EA_TARGET_AVX2_BEGIN
ROWS_TIER(256)
EA_TARGET_END

typedef void (*scores_fn)(const rows_job *, int, int, int, int, float (*)[CHUNK]);
typedef void (*values_fn)(const rows_job *, int, int, int, int, float (*)[CHUNK], float *const *);
#define ROWS_ROW(name) {name##_1, name##_2, name##_3, name##_4}
#define ROWS_TABLE(kind, T)                                                                                        \
    {ROWS_ROW(kind##_##T##_f32), ROWS_ROW(kind##_##T##_f16), ROWS_ROW(kind##_##T##_q8), ROWS_ROW(kind##_##T##_q4)}
/* [0]: AVX2, [1]: AVX-512 */
static const scores_fn scores_table[2][4][NQ_MAX] = {ROWS_TABLE(scores, 256), ROWS_TABLE(scores, 512)};
static const values_fn values_table[2][4][NQ_MAX] = {ROWS_TABLE(values, 256), ROWS_TABLE(values, 512)};

#endif /* ROWS_VEC */

/* max of s[0..n) */
static float chunk_max(const float *s, int n) {
    float mx = -INFINITY;
    for (int r = 0; r < n; r++) mx = max_f(mx, s[r]);
    return mx;
}

/* s[r] = e^(s[r] - m); returns their sum. */
static float chunk_exp(float *s, int n, float m) {
    float sum = 0;
    for (int r = 0; r < n; r++) sum += (s[r] = expf(s[r] - m));
    return sum;
}

#ifdef ROWS_VEC
EA_TARGET_AVX512_BEGIN
static float chunk_max_512(const float *s, int n) {
    int r = 0;
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (; r + 16 <= n; r += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + r));
    float mx = _mm512_reduce_max_ps(m);
    for (; r < n; r++) mx = max_f(mx, s[r]);
    return mx;
}

static float chunk_exp_512(float *s, int n, float m) {
    __m512 vm = _mm512_set1_ps(m), acc = _mm512_setzero_ps();
    for (int r = 0; r < n; r += 16) {
        __mmask16 k = n - r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - r)) - 1);
        __m512 e = ea_kv_exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + r), vm));
        _mm512_mask_storeu_ps(s + r, k, e);
        acc = _mm512_mask_add_ps(acc, k, acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}
EA_TARGET_END

EA_TARGET_AVX2_BEGIN
static float chunk_max_256(const float *s, int n) {
    int r = 0;
    __m256 m = _mm256_set1_ps(-INFINITY);
    for (; r + 8 <= n; r += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + r));
    float mx = ea_kv_hmax8(m);
    for (; r < n; r++) mx = max_f(mx, s[r]);
    return mx;
}

static float chunk_exp_256(float *s, int n, float m) {
    int r = 0;
    __m256 vm = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
    for (; r + 8 <= n; r += 8) {
        __m256 e = ea_kv_exp8_ps(_mm256_sub_ps(_mm256_loadu_ps(s + r), vm));
        _mm256_storeu_ps(s + r, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = ea_kv_hsum8(acc);
    for (; r < n; r++) sum += (s[r] = expf(s[r] - m));
    return sum;
}
EA_TARGET_END
#endif

/* Keys t0..t1-1 of head h for queries i0..nq-1 (every one of them sees all these keys). */
static void range_attend(const rows_job *j, int h, int t0, int t1, int i0, float *m, float *l, float *const *acc) {
    float s[NQ_MAX][CHUNK];
    float (*cmax)(const float *, int) = chunk_max;
    float (*cexp)(float *, int, float) = chunk_exp;
    int vec = 0; /* scores_table and values_table apply */
#ifdef ROWS_VEC
    if (j->tier >= EA_ISA_AVX2) {
        int t = j->tier >= EA_ISA_AVX512;
        cmax = t ? chunk_max_512 : chunk_max_256;
        cexp = t ? chunk_exp_512 : chunk_exp_256;
        vec = j->fast;
    }
#endif
    for (int c0 = t0; c0 < t1; c0 += CHUNK) {
        int n = t1 - c0 < CHUNK ? t1 - c0 : CHUNK;
#ifdef ROWS_VEC
        if (vec) scores_table[j->tier >= EA_ISA_AVX512][j->fmt][j->nq - i0 - 1](j, h, c0, n, i0, s);
        else
#endif
            scores_portable(j, h, c0, n, i0, s);
        for (int i = i0; i < j->nq; i++) {
            float mx = cmax(s[i], n);
            if (mx > m[i]) {
                if (m[i] != -INFINITY) { /* rescale what was summed under the older maximum */
                    float f = expf(m[i] - mx);
                    l[i] *= f;
                    for (int e = 0; e < j->hd; e++) acc[i][e] *= f;
                }
                m[i] = mx;
            }
            l[i] += cexp(s[i], n, m[i]);
        }
#ifdef ROWS_VEC
        if (vec) values_table[j->tier >= EA_ISA_AVX512][j->fmt][j->nq - i0 - 1](j, h, c0, n, i0, s, acc);
        else
#endif
            values_portable(j, h, c0, n, i0, s, acc);
    }
}

/* Keys t0..t1-1 of head h for every query: keys 0..pos0 are seen by all queries, key pos0+i only
 * by the queries of position i and later (slots from i·G on). */
static void item_attend(const rows_job *j, int h, int t0, int t1, float *m, float *l, float *const *acc) {
    int all = j->pos0 + 1;
    if (t0 < all) range_attend(j, h, t0, t1 < all ? t1 : all, 0, m, l, acc);
    for (int t = t0 > all ? t0 : all; t < t1; t++) range_attend(j, h, t, t + 1, (t - j->pos0) * j->G, m, l, acc);
}

static int gcd(int a, int b) {
    while (b) {
        int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

void ea_kv_rows_attend(ea_kv_rows_format fmt, int n_head, int d, const float *q, int nq, int pos0, const void *k,
                       const void *v, float *out) {
    ea_kv_rows_attend_group(fmt, n_head, d, 1, (size_t)d, (size_t)(d / n_head), q, nq, pos0, k, v, out);
}

void ea_kv_rows_attend_group(ea_kv_rows_format fmt, int n_head, int d, int group, size_t qs, size_t hs,
                             const float *q, int np, int pos0, const void *k, const void *v, float *out) {
    int H = n_head, hd = d / n_head, T = pos0 + np, nq = np * group;
    rows_job j = {fmt, d, hd, nq, pos0, group, qs, hs, hd % 16 == 0, ea_isa_now(), ea_kv_rows_row_bytes(fmt, d),
                  k, v, q, 1.0f / sqrtf((float)hd)};
    int nth = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && (size_t)T * (size_t)d >= PAR_MIN) nth = omp_get_max_threads();
#endif
    /* key splits per head so that items divide evenly among threads; a split keeps >= CHUNK keys */
    int S = nth > 1 ? nth / gcd(H, nth) : 1;
    if (S > T / CHUNK) S = T / CHUNK > 1 ? T / CHUNK : 1;
    size_t per = (size_t)nq * (2 + (size_t)hd); /* a split's m, l and sums of every query */
    float *part = NULL;
    if (S > 1 && !(part = malloc(sizeof(float) * per * (size_t)H * (size_t)S))) S = 1; /* whole heads */
    int items = H * S;
#pragma omp parallel for schedule(static) num_threads(nth) if (nth > 1 && items > 1)
    for (int it = 0; it < items; it++) {
        int h = it / S, sp = it % S;
        int t0 = (int)((long long)T * sp / S), t1 = (int)((long long)T * (sp + 1) / S);
        float mloc[NQ_MAX], lloc[NQ_MAX], *m = mloc, *l = lloc, *acc[NQ_MAX];
        if (part) {
            m = part + per * (size_t)it;
            l = m + nq;
            for (int i = 0; i < nq; i++) acc[i] = l + nq + (size_t)i * hd;
        } else
            for (int i = 0; i < nq; i++) acc[i] = out + slot_off(&j, h, i); /* summed in place */
        for (int i = 0; i < nq; i++) {
            m[i] = -INFINITY;
            l[i] = 0;
            memset(acc[i], 0, sizeof(float) * (size_t)hd);
        }
        item_attend(&j, h, t0, t1, m, l, acc);
        if (!part)
            for (int i = 0; i < nq; i++) {
                float inv = 1.0f / l[i];
                for (int e = 0; e < hd; e++) acc[i][e] *= inv;
            }
    }
    if (!part) return;
    /* merge the splits of each head: weights e^(m_s - M) bring them to a common maximum */
    for (int h = 0; h < H; h++)
        for (int i = 0; i < nq; i++) {
            float M = -INFINITY, L = 0, *oh = out + slot_off(&j, h, i);
            for (int sp = 0; sp < S; sp++) M = max_f(M, part[per * (size_t)(h * S + sp) + i]);
            memset(oh, 0, sizeof(float) * (size_t)hd);
            for (int sp = 0; sp < S; sp++) {
                const float *p = part + per * (size_t)(h * S + sp);
                if (p[i] == -INFINITY) continue; /* a split no key of which this query sees */
                float f = expf(p[i] - M);
                L += p[nq + i] * f;
                const float *a = p + 2 * nq + (size_t)i * hd;
                for (int e = 0; e < hd; e++) oh[e] += a[e] * f;
            }
            float inv = 1.0f / L;
            for (int e = 0; e < hd; e++) oh[e] *= inv;
        }
    free(part);
}

/* A block only sees keys up to its last query, so little of the causal upper triangle is computed;
 * BLAS beats a loop even counting the masked part. */
void ea_kv_rows_attend_gemm(int n_head, int d, const float *q, int nq, int pos0, const float *k, const float *v,
                            float *out, float *scratch, size_t per_thread) {
    int H = n_head, hd = d / H, nblk = (nq + EA_KV_ROWS_GEMM_BLOCK - 1) / EA_KV_ROWS_GEMM_BLOCK;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int h = 0; h < H; h++)
        for (int b = nblk - 1; b >= 0; b--) { /* biggest blocks first balances the threads */
            int i0 = b * EA_KV_ROWS_GEMM_BLOCK, i1 = i0 + EA_KV_ROWS_GEMM_BLOCK < nq ? i0 + EA_KV_ROWS_GEMM_BLOCK : nq;
            int bq = i1 - i0, nk = pos0 + i1, tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            float *S = scratch + (size_t)tid * per_thread;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, nk, hd, scale, q + (size_t)i0 * d + h * hd, d,
                        k + h * hd, d, 0.0f, S, nk);
            for (int i = 0; i < bq; i++) {
                float *row = S + (size_t)i * nk, mx = -INFINITY, sum = 0;
                int valid = pos0 + i0 + i + 1;
                for (int t = 0; t < valid; t++) mx = row[t] > mx ? row[t] : mx;
                for (int t = 0; t < valid; t++) {
                    row[t] = expf(row[t] - mx);
                    sum += row[t];
                }
                float inv = 1.0f / sum;
                for (int t = 0; t < valid; t++) row[t] *= inv;
                for (int t = valid; t < nk; t++) row[t] = 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, hd, nk, 1.0f, S, nk, v + h * hd, d, 0.0f,
                        out + (size_t)i0 * d + h * hd, d);
        }
}
