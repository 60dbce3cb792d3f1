/* Matrix products for the forward pass. One thread pool (OpenMP): BLAS runs single-threaded on
 * per-thread blocks, because OpenBLAS's own pthread pool and OpenMP spin against each other. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "core/isa.h"
#include "model/matmul.h"

void ea_gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, int trans_b, float *Cm, int ldc,
             float beta) {
    int nt = omp_get_max_threads();
    int split_m = M >= 4 * nt;
#pragma omp parallel if (nt > 1 && (long)M * N * K > 200000)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        int len = split_m ? M : N, lo = (int)((long)len * t / n), hi = (int)((long)len * (t + 1) / n);
        if (hi > lo) {
            if (split_m)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, hi - lo, N, K, 1.0f,
                            A + (size_t)lo * lda, lda, B, ldb, beta, Cm + (size_t)lo * ldc, ldc);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, hi - lo, K, 1.0f, A, lda,
                            trans_b ? B + (size_t)lo * ldb : B + lo, ldb, beta, Cm + lo, ldc);
        }
    }
}

static float dot_f16(const uint16_t *w, const float *x, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += ea_f16_to_f32(w[i]) * x[i];
    return s;
}

/* One body, vectorised for each tier that inlines it (the reduction's lane count, and so its
 * rounding, follows the tier's vector width). */
static inline __attribute__((always_inline)) float dot_f32_body(const float *w, const float *x, int n) {
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

static float dot_f32(const float *w, const float *x, int n) { return dot_f32_body(w, x, n); }

#ifdef EA_X86
EA_TARGET_AVX2_BEGIN
static float dot_f16_avx2(const uint16_t *w, const float *x, int n) {
    int i = 0;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(w + i))), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(w + i + 8))),
                             _mm256_loadu_ps(x + i + 8), a1);
    }
    a0 = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    float s = _mm_cvtss_f32(h);
    _mm256_zeroupper(); /* see ea_f16_to_f32_array */
    for (; i < n; i++) s += _cvtsh_ss(w[i]) * x[i];
    return s;
}

static float dot_f32_avx2(const float *w, const float *x, int n) { return dot_f32_body(w, x, n); }
EA_TARGET_END

EA_TARGET_AVX512_BEGIN
static float dot_f32_avx512(const float *w, const float *x, int n) { return dot_f32_body(w, x, n); }
EA_TARGET_END
#endif

/* y[j0..j1) of ea_matvec, one instance per tier so that the dot products inline. */
#define MATVEC_ROWS(name, D16, D32)                                                                            \
    static void name(float *y, const ea_rowmat *W, const float *bias, const float *x, int j0, int j1) {        \
        int cols = W->cols;                                                                                    \
        for (int j = j0; j < j1; j++) {                                                                        \
            float s = W->f16 ? D16(W->f16 + (size_t)j * cols, x, cols) : D32(W->f32 + (size_t)j * cols, x, cols); \
            y[j] = bias ? s + bias[j] : s;                                                                     \
        }                                                                                                      \
    }
MATVEC_ROWS(rows_generic, dot_f16, dot_f32)
#ifdef EA_X86
EA_TARGET_AVX2_BEGIN
MATVEC_ROWS(rows_avx2, dot_f16_avx2, dot_f32_avx2)
EA_TARGET_END
EA_TARGET_AVX512_BEGIN
MATVEC_ROWS(rows_avx512, dot_f16_avx2, dot_f32_avx512)
EA_TARGET_END
#endif

void ea_matvec(float *y, const ea_rowmat *W, const float *bias, const float *x) {
    int rows = W->rows;
    void (*run)(float *, const ea_rowmat *, const float *, const float *, int, int) = rows_generic;
#ifdef EA_X86
    ea_isa tier = ea_isa_now();
    run = tier >= EA_ISA_AVX512 ? rows_avx512 : tier >= EA_ISA_AVX2 ? rows_avx2 : rows_generic;
#endif
#pragma omp parallel if ((long)rows * W->cols > 32768)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        run(y, W, bias, x, (int)((long)rows * t / n), (int)((long)rows * (t + 1) / n));
    }
}
