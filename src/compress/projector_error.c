/* Reconstruction error of a projector, accumulated over batches so that windows and texts
 * can be pooled: relative Frobenius norm and mean per-token cosine. */
#include <math.h>

#include "ea/compress.h"

void ea_recon_stats_add(ea_recon_stats *s, const float *x, int ldx, const float *xhat, int ldh, int n, int d) {
    for (int r = 0; r < n; r++) {
        const float *a = x + (size_t)r * ldx, *b = xhat + (size_t)r * ldh;
        double e2 = 0, aa = 0, bb = 0, ab = 0;
        for (int i = 0; i < d; i++) {
            double u = a[i], v = b[i];
            e2 += (u - v) * (u - v);
            aa += u * u;
            bb += v * v;
            ab += u * v;
        }
        s->err2 += e2;
        s->norm2 += aa;
        /* Two zero rows are identical; one zero row against a non-zero one shares no direction. */
        s->cos_sum += (aa > 0 && bb > 0) ? ab / sqrt(aa * bb) : (aa == 0 && bb == 0 ? 1.0 : 0.0);
        s->rows++;
    }
}

void ea_recon_stats_merge(ea_recon_stats *dst, const ea_recon_stats *src) {
    dst->err2 += src->err2;
    dst->norm2 += src->norm2;
    dst->cos_sum += src->cos_sum;
    dst->rows += src->rows;
}

double ea_recon_stats_rel_error(const ea_recon_stats *s) {
    if (!s->rows) return NAN;
    if (s->norm2 == 0) return s->err2 == 0 ? 0.0 : INFINITY;
    return sqrt(s->err2 / s->norm2);
}

double ea_recon_stats_cosine(const ea_recon_stats *s) { return s->rows ? s->cos_sum / (double)s->rows : NAN; }
