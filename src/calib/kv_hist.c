/* Measured distributions of the klt coefficients. The transform coder's Gaussian assumption is
 * optimistic for K and V: their eigen-coefficients have heavier tails (kurtosis 3.5-5 on gpt2-mini),
 * and the coded error came out 1.1-6x the Gaussian prediction. So the fit runs the calibration text
 * once more, histograms every coefficient (in units of its standard deviation), and from those fits
 * the level tables (Lloyd's algorithm on the histogram) and the distortion-rate curve of every
 * coefficient that the bit allocator uses. This file takes the histograms; kv/kv_hist_quant.c fits
 * quantizers to them. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib_internal.h"

#define HIST_BINS 2048
#define HIST_LIM 12.0f /* bins cover [-12σ, 12σ]; values beyond land in the end bins */

typedef struct {
    ea_kv_hist *h;
    float *buf, *y;
    int cap;
} hist_acc;

static ea_status hist_hook(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    hist_acc *a = user;
    if (site != EA_SITE_K && site != EA_SITE_V) return 0;
    ea_kv_hist *h = a->h;
    int p = layer * 2 + (site == EA_SITE_V), first = pos0 == 0 && h->skip_sink ? 1 : 0;
    int rows = n - first;
    if (rows <= 0) return 0;
    if (rows > a->cap) {
        float *nb = realloc(a->buf, sizeof(float) * (size_t)rows * d), *ny = nb ? realloc(a->y, sizeof(float) * (size_t)rows * d) : NULL;
        if (nb) a->buf = nb;
        if (!nb || !ny) return ea_error(EA_ERR_NOMEM, "kv histograms: out of memory");
        a->y = ny;
        a->cap = rows;
    }
    const float *mu = h->mean + (size_t)p * d;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < d; j++) a->buf[(size_t)i * d + j] = x[(size_t)(first + i) * ld + j] - mu[j];
    /* y (rows × d) = (x - mean) encᵀ: every coefficient of every row */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, d, d, 1.0f, a->buf, d, h->enc + (size_t)p * d * d, d, 0.0f,
                a->y, d);
    const float *sig = h->sig + (size_t)p * d;
    double *hp = h->h + (size_t)p * d * h->nbins;
    float scale = h->nbins / (2 * h->lim);
#pragma omp parallel for schedule(static) if (d >= 64)
    for (int j = 0; j < d; j++) {
        double *hj = hp + (size_t)j * h->nbins;
        float inv = sig[j] > 0 ? 1.0f / sig[j] : 0.0f;
        for (int i = 0; i < rows; i++) {
            float z = (a->y[(size_t)i * d + j] * inv + h->lim) * scale;
            int b = z > 0 ? (int)z : 0; /* also NaN */
            hj[b < h->nbins ? b : h->nbins - 1] += 1;
        }
    }
    return 0;
}

ea_status ea_kv_hist_collect(ea_model *m, const int *ids, size_t n, int ctx, const ea_kv_stats *s, const ea_kv_metric *mt,
                             const ea_kv_klt_opts *o, ea_kv_hist *out, ea_progress_fn progress, void *progress_user) {
    const ea_config *cfg = ea_model_config(m);
    int d = ea_config_kv_dim(cfg), P = 2 * cfg->n_layer; /* cached K/V rows: n_kv_head · head_dim (GQA) */
    memset(out, 0, sizeof *out);
    if (ctx < 2 || ctx > cfg->n_positions) return ea_error(EA_ERR_ARG, "kv histograms: window %d outside [2, %d]", ctx, cfg->n_positions);
    out->n_part = P;
    out->d = d;
    out->nbins = HIST_BINS;
    out->lim = HIST_LIM;
    out->key = *o;
    out->skip_sink = o->sink;
    out->h = calloc((size_t)P * d * HIST_BINS, sizeof(double));
    out->enc = malloc(sizeof(float) * (size_t)P * d * d);
    out->mean = malloc(sizeof(float) * (size_t)P * d);
    out->sig = malloc(sizeof(float) * (size_t)P * d);
    ea_status st = (!out->h || !out->enc || !out->mean || !out->sig) ? ea_error(EA_ERR_NOMEM, "kv histograms: out of memory") : EA_OK;
    for (int p = 0; p < P && !st; p++)
        st = ea_kv_klt_transform(s, mt, o, ea_config_kv_heads(cfg), p / 2, p % 2, out->enc + (size_t)p * d * d, out->mean + (size_t)p * d,
                                 out->sig + (size_t)p * d);
    hist_acc a = {out, NULL, NULL, 0};
    ea_window_run run = {.hook = hist_hook, .hook_user = &a, .min_len = 2, .progress = progress, .progress_user = progress_user,
                         .stage = "kv histograms"};
    if (!st) st = ea_model_run_windows(m, ids, n, ctx, &run);
    free(a.buf);
    free(a.y);
    if (st) ea_kv_hist_free(out);
    return st;
}
