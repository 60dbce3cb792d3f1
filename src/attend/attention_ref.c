/* Reference causal multi-head attention on float rows: the cache's fallback path and the
 * reference every compressed-space attention is tested against. */
#include <math.h>
#include <string.h>

#include "attend/attend.h"

void ea_attention_ref(int n_head, int d, const float *q, int nq, int pos0, const float *k, const float *v,
                      float *out, float *scratch) {
    int hd = d / n_head;
    float scale = 1.0f / sqrtf((float)hd);
    for (int i = 0; i < nq; i++) {
        int nk = pos0 + i + 1; /* causal: keys 0..pos0+i */
        const float *qi = q + (size_t)i * d;
        float *oi = out + (size_t)i * d;
        for (int h = 0; h < n_head; h++) {
            const float *qh = qi + h * hd;
            float mx = -INFINITY;
            for (int t = 0; t < nk; t++) {
                const float *kt = k + (size_t)t * d + h * hd;
                float s = 0;
                for (int j = 0; j < hd; j++) s += qh[j] * kt[j];
                s *= scale;
                scratch[t] = s;
                if (s > mx) mx = s;
            }
            float sum = 0;
            for (int t = 0; t < nk; t++) {
                scratch[t] = expf(scratch[t] - mx);
                sum += scratch[t];
            }
            float inv = 1.0f / sum, *oh = oi + h * hd;
            memset(oh, 0, sizeof(float) * (size_t)hd);
            for (int t = 0; t < nk; t++) {
                const float *vt = v + (size_t)t * d + h * hd;
                float a = scratch[t] * inv;
                for (int j = 0; j < hd; j++) oh[j] += a * vt[j];
            }
        }
    }
}
