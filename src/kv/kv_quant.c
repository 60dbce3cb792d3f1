/* Scalar quantizers for a unit-variance Gaussian with 2^b levels (b = 1..8): the uniform quantizer
 * with the MSE-optimal step, or the Lloyd-Max quantizer (optimal non-uniform levels). The transform
 * coder scales them by each coefficient's standard deviation. Distortions are exact integrals of
 * the Gaussian density, so the bit allocator and the tests can predict the error. */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "kv/kv_quant.h"
#include "core/isa.h"

static double pdf(double x) { return isinf(x) ? 0.0 : exp(-0.5 * x * x) / sqrt(2.0 * M_PI); }
static double cdf(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

/* ∫_a^b (x - y)² φ(x) dx, a may be -inf and b +inf. */
static double cell_mse(double a, double b, double y) {
    double xa = isinf(a) ? 0.0 : a * pdf(a), xb = isinf(b) ? 0.0 : b * pdf(b);
    return (1 + y * y) * (cdf(b) - cdf(a)) - (xb - xa) + 2 * y * (pdf(b) - pdf(a));
}

static double quant_mse(const ea_kv_quant *q) {
    double d = 0;
    for (int i = 0; i < q->n; i++) {
        double a = i ? q->thr[i - 1] : -INFINITY, b = i < q->n - 1 ? q->thr[i] : INFINITY;
        d += cell_mse(a, b, q->level[i]);
    }
    return d;
}

static void set_uniform(ea_kv_quant *q, double step) {
    q->step = (float)step;
    for (int i = 0; i < q->n; i++) q->level[i] = (float)((i - (q->n - 1) * 0.5) * step);
    for (int i = 0; i < q->n - 1; i++) q->thr[i] = (float)((i + 1 - q->n * 0.5) * step);
}

static double uniform_mse(ea_kv_quant *q, double step) {
    set_uniform(q, step);
    return quant_mse(q);
}

/* Wide codes (no tables): the n - 2 inner cells are fine enough that each contributes step²/12
 * of its probability; the two outer cells, where overload lives, are integrated exactly. */
static double wide_uniform_mse(ea_kv_quant *q, double step) {
    double a = (q->n * 0.5 - 1) * step, y = (q->n - 1) * 0.5 * step;
    q->step = (float)step;
    return step * step / 12.0 * (1 - 2 * cdf(-a)) + 2 * cell_mse(a, INFINITY, y);
}

static double design_mse(ea_kv_quant *q, double step) {
    return q->bits > EA_KV_QTAB_BITS ? wide_uniform_mse(q, step) : uniform_mse(q, step);
}

/* Golden-section search for the step (the MSE is unimodal in the step). */
static void design_uniform(ea_kv_quant *q) {
    double a = 1e-6, b = 4.0, g = (sqrt(5.0) - 1) / 2;
    double x1 = b - g * (b - a), x2 = a + g * (b - a), f1 = design_mse(q, x1), f2 = design_mse(q, x2);
    for (int it = 0; it < 120; it++) {
        if (f1 < f2) {
            b = x2; x2 = x1; f2 = f1; x1 = b - g * (b - a); f1 = design_mse(q, x1);
        } else {
            a = x1; x1 = x2; f1 = f2; x2 = a + g * (b - a); f2 = design_mse(q, x2);
        }
    }
    q->uniform = 1;
    q->mse = design_mse(q, 0.5 * (a + b));
}

/* Lloyd-Max iteration from the uniform design: thresholds at midpoints, levels at centroids. */
static void design_lloyd(ea_kv_quant *q) {
    design_uniform(q);
    double lv[EA_KV_QMAX], th[EA_KV_QMAX];
    for (int i = 0; i < q->n; i++) lv[i] = q->level[i];
    for (int it = 0; it < 2000; it++) {
        for (int i = 0; i < q->n - 1; i++) th[i] = 0.5 * (lv[i] + lv[i + 1]);
        double moved = 0;
        for (int i = 0; i < q->n; i++) {
            double a = i ? th[i - 1] : -INFINITY, b = i < q->n - 1 ? th[i] : INFINITY;
            double p = cdf(b) - cdf(a), y = p > 1e-300 ? (pdf(a) - pdf(b)) / p : 0.5 * (a + b);
            moved = fmax(moved, fabs(y - lv[i]));
            lv[i] = y;
        }
        if (moved < 1e-9) break;
    }
    for (int i = 0; i < q->n; i++) q->level[i] = (float)lv[i];
    for (int i = 0; i < q->n - 1; i++) q->thr[i] = (float)(0.5 * (lv[i] + lv[i + 1]));
    q->uniform = 0;
    q->mse = quant_mse(q);
}

void ea_kv_quant_design(ea_kv_quant *q, int bits, int lloyd) {
    memset(q, 0, sizeof *q);
    q->bits = bits;
    q->n = 1 << bits;
    if (lloyd && bits <= EA_KV_QTAB_BITS) design_lloyd(q);
    else design_uniform(q);
}

int ea_kv_quant_index(const ea_kv_quant *q, float z) {
    if (q->uniform) {
        double f = (double)z / q->step + 0.5 * q->n; /* cell index before clamping */
        if (!(f > 0)) return 0; /* also NaN */
        return (int)fmin(f, (double)(q->n - 1));
    }
    /* the number of thresholds <= z, by a branchless binary search (selects, not jumps: the
     * comparisons are unpredictable and a decode step encodes hundreds of coefficients) */
    const float *t = q->thr;
    int len = q->n - 1;
    if (len < 1 || !(z == z)) return q->n - 1; /* NaN: as the comparisons below would say */
    while (len > 1) {
        int half = len >> 1;
        t = t[half - 1] <= z ? t + half : t;
        len -= half;
    }
    return (int)(t - q->thr) + (*t <= z);
}

#ifdef EA_X86
EA_TARGET_AVX512_BEGIN
/* The same branchless search on 16 values at a time, thresholds fetched by gathers. */
static void quant_index_512(const ea_kv_quant *q, const float *z, int n, int *out) {
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, z + i);
        __m512i base = _mm512_setzero_si512();
        int len = q->n - 1;
        while (len > 1) {
            int half = len >> 1;
            __m512 t = _mm512_i32gather_ps(_mm512_add_epi32(base, _mm512_set1_epi32(half - 1)), q->thr, 4);
            base = _mm512_mask_add_epi32(base, _mm512_cmp_ps_mask(t, v, _CMP_LE_OQ), base, _mm512_set1_epi32(half));
            len -= half;
        }
        __m512 t = _mm512_i32gather_ps(base, q->thr, 4);
        base = _mm512_mask_add_epi32(base, _mm512_cmp_ps_mask(t, v, _CMP_LE_OQ), base, _mm512_set1_epi32(1));
        base = _mm512_mask_mov_epi32(base, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(q->n - 1));
        _mm512_mask_storeu_epi32(out + i, m, base);
    }
}
EA_TARGET_END
#endif

void ea_kv_quant_index_n(const ea_kv_quant *q, const float *z, int n, int *out) {
#ifdef EA_X86
    if (!q->uniform && q->n > 2 && ea_isa_now() >= EA_ISA_AVX512) {
        quant_index_512(q, z, n, out);
        return;
    }
#endif
    for (int i = 0; i < n; i++) out[i] = ea_kv_quant_index(q, z[i]);
}

/* Every design is computed once per process (the Lloyd-Max iterations take a while). */
static ea_kv_quant designs[2][EA_KV_QBITS + 1];
static pthread_once_t designs_once = PTHREAD_ONCE_INIT;

static void design_all(void) {
    for (int l = 0; l < 2; l++)
        for (int b = 1; b <= EA_KV_QBITS; b++) ea_kv_quant_design(&designs[l][b], b, l);
}

const ea_kv_quant *ea_kv_quant_get(int bits, int lloyd) {
    pthread_once(&designs_once, design_all);
    return &designs[lloyd ? 1 : 0][bits];
}
