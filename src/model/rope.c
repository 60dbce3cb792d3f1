/* Rotary position embedding as Hugging Face transformers computes it (modeling_rope_utils.py and
 * LlamaRotaryEmbedding): inv_freq[i] = 1 / θ^(2i/d) for i < d/2, optionally rescaled ("linear":
 * divided by factor; "llama3": long wavelengths divided by factor, short ones kept, a smooth blend
 * between), angle = position · inv_freq in float32 (as transformers does even for float64 models),
 * and the rotate_half convention: value j pairs with value j + d/2 of the same head, not j+1. */
#include <math.h>
#include <stdlib.h>

#include "model/internal.h"

ea_status ea_rope_init(const ea_config *c, float **out) {
    int hd = ea_config_head_dim(c), half = hd / 2;
    float *f = malloc(sizeof(float) * (size_t)half);
    if (!f) return ea_error(EA_ERR_NOMEM, "rope: out of memory");
    for (int i = 0; i < half; i++) {
        /* transformers: base ** (arange(0, d, 2).float() / d) in float32, then 1.0 / that */
        float expo = (float)(2 * i) / (float)hd;
        double inv = (double)(1.0f / (float)pow(c->rope_theta, (double)expo));
        if (c->rope_type == EA_ROPE_LINEAR) inv /= c->rope_factor;
        else if (c->rope_type == EA_ROPE_LLAMA3) {
            double old = c->rope_original_max_positions, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
            double wavelen = 2 * M_PI / inv, low_wavelen = old / lo, high_wavelen = old / hi;
            if (wavelen > low_wavelen) inv /= c->rope_factor; /* long wavelengths: interpolated */
            else if (wavelen >= high_wavelen) {               /* medium: blend of both */
                double smooth = (old / wavelen - lo) / (hi - lo);
                inv = (1 - smooth) * inv / c->rope_factor + smooth * inv;
            } /* short wavelengths: unchanged */
        }
        f[i] = (float)inv;
    }
    *out = f;
    return EA_OK;
}

void ea_rope_table(const float *inv_freq, int hd, int pos0, int n, float *cs) {
    int half = hd / 2;
    for (int i = 0; i < n; i++) {
        float *row = cs + (size_t)i * hd;
        for (int j = 0; j < half; j++) {
            float a = (float)(pos0 + i) * inv_freq[j]; /* float32 product, as in transformers */
            row[j] = (float)cos((double)a);
            row[half + j] = (float)sin((double)a);
        }
    }
}

void ea_rope_apply(float *x, int n, int ld, int n_heads, int hd, const float *cs) {
    int half = hd / 2;
#pragma omp parallel for if (n > 16)
    for (int i = 0; i < n; i++) {
        const float *co = cs + (size_t)i * hd, *si = co + half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)i * ld + (size_t)h * hd;
            for (int j = 0; j < half; j++) {
                float a = v[j], b = v[j + half];
                v[j] = a * co[j] - b * si[j];
                v[j + half] = b * co[j] + a * si[j];
            }
        }
    }
}
