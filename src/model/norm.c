/* The Llama family's RMSNorm and SwiGLU (GPT-2's LayerNorm and GELU live in forward.c). */
#include <math.h>

#include "model/internal.h"

/* y = x / sqrt(mean(x²) + eps) · w, over rows of C values (stride ld for x and out). The sum is
 * accumulated in double: transformers computes it in float32 for float16 models and in float64 for
 * the float64 references, and float32 accumulation is not needed for speed here. */
void ea_rmsnorm(float *out, const float *x, const float *w, int n, int C, int ld, float eps) {
#pragma omp parallel for if (n > 4)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * ld;
        float *oi = out + (size_t)i * ld;
        double ss = 0;
        for (int j = 0; j < C; j++) ss += (double)xi[j] * xi[j];
        float r = (float)(1.0 / sqrt(ss / C + (double)eps));
        for (int j = 0; j < C; j++) oi[j] = xi[j] * r * w[j];
    }
}

/* silu(g)·u with silu(g) = g / (1 + e^(−g)). */
void ea_swiglu(float *out, const float *gu, int n, int F) {
#pragma omp parallel for if ((size_t)n * F > 4096)
    for (int i = 0; i < n; i++) {
        const float *g = gu + (size_t)i * 2 * F, *u = g + F;
        float *o = out + (size_t)i * F;
        for (int j = 0; j < F; j++) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}
