/* Calibration statistics for the basis codecs: run the model over windows of text and accumulate
 * the mean and covariance of every layer's K and V rows in float64. Each accumulator is shifted
 * by the mean of its first batch so the sums do not lose precision to large means. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compress/kv_internal.h"
#include "ea/compress.h"
#include "model/internal.h" /* c_proj weights for the V metric */

typedef struct {
    int n_layer, d, skip;
    double *shift[2], *s1[2], *s2[2]; /* per kind: layer-major */
    double *count;                    /* per layer and kind */
    double *q2, qn;                   /* raw second moment Σ q qᵀ per layer (NULL: not wanted), rows */
    double *buf;                      /* one batch as float64 */
    int buf_rows;
    ea_status err;
} fit_acc;

static int fit_hook(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    fit_acc *a = user;
    if (site == EA_SITE_Q && a->q2) { /* queries of every position weigh K errors */
        if (n > a->buf_rows) {
            double *nb = realloc(a->buf, sizeof(double) * (size_t)n * d);
            if (!nb) {
                a->err = ea_error(EA_ERR_NOMEM, "kv stats: out of memory");
                return 1;
            }
            a->buf = nb;
            a->buf_rows = n;
        }
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) a->buf[(size_t)i * d + j] = x[(size_t)i * ld + j];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, n, 1.0, a->buf, d, 1.0, a->q2 + (size_t)layer * d * d, d);
        if (layer == 0) a->qn += n;
        return 0;
    }
    if (site != EA_SITE_K && site != EA_SITE_V) return 0;
    int kind = site == EA_SITE_V, first = pos0 < a->skip ? a->skip - pos0 : 0;
    if (first >= n) return 0;
    int rows = n - first;
    if (rows > a->buf_rows) {
        double *nb = realloc(a->buf, sizeof(double) * (size_t)rows * d);
        if (!nb) {
            a->err = ea_error(EA_ERR_NOMEM, "kv stats: out of memory");
            return 1;
        }
        a->buf = nb;
        a->buf_rows = rows;
    }
    double *shift = a->shift[kind] + (size_t)layer * d, *s1 = a->s1[kind] + (size_t)layer * d;
    double *s2 = a->s2[kind] + (size_t)layer * d * d;
    double cnt = a->count[layer * 2 + kind];
    if (cnt == 0) { /* shift: this batch's mean */
        memset(shift, 0, sizeof(double) * (size_t)d);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < d; j++) shift[j] += x[(size_t)(first + i) * ld + j];
        for (int j = 0; j < d; j++) shift[j] /= rows;
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < d; j++) {
            double v = (double)x[(size_t)(first + i) * ld + j] - shift[j];
            a->buf[(size_t)i * d + j] = v;
            s1[j] += v;
        }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, rows, 1.0, a->buf, d, 1.0, s2, d);
    a->count[layer * 2 + kind] = cnt + rows;
    return 0;
}

ea_status ea_kvfit_stats_alloc(ea_kv_stats *s, int n_layer, int d) {
    memset(s, 0, sizeof *s);
    s->n_layer = n_layer;
    s->d = d;
    size_t nm = (size_t)n_layer * d, nc = nm * d;
    for (int k = 0; k < 2; k++) {
        s->mean[k] = calloc(nm, sizeof(double));
        s->cov[k] = calloc(nc, sizeof(double));
        if (!s->mean[k] || !s->cov[k]) {
            ea_kvfit_stats_free(s);
            return ea_error(EA_ERR_NOMEM, "kv stats: cannot allocate %d layers x %d dims", n_layer, d);
        }
    }
    return EA_OK;
}

void ea_kvfit_stats_free(ea_kv_stats *s) {
    if (!s) return;
    for (int k = 0; k < 2; k++) {
        free(s->mean[k]);
        free(s->cov[k]);
        s->mean[k] = s->cov[k] = NULL;
    }
}

ea_status ea_kv_run_windows(ea_model *m, const int *ids, size_t n, int ctx, ea_capture_fn hook, void *user,
                           const ea_status *hook_err) {
    ea_kvcache *cache = NULL;
    ea_status st = ea_kvcache_init(&cache, ea_model_config(m), ctx, NULL);
    if (st) return st;
    ea_model_set_capture(m, hook, user);
    for (size_t w0 = 0; w0 + 1 < n && !st; w0 += (size_t)ctx) {
        int len = n - w0 < (size_t)ctx ? (int)(n - w0) : ctx;
        ea_kvcache_reset(cache);
        st = ea_model_forward(m, cache, ids + w0, len, NULL, 0);
        if (*hook_err) st = *hook_err; /* the hook's own error says more than "aborted" */
    }
    ea_model_set_capture(m, NULL, NULL);
    ea_kvcache_free(cache);
    return st;
}

ea_status ea_kvfit_stats(ea_model *m, const int *ids, size_t n, int ctx, int skip, ea_kv_stats *out) {
    return ea_kvfit_stats_metric(m, ids, n, ctx, skip, out, NULL);
}

/* M_K: E[q qᵀ] on each head's diagonal block; M_V = W Wᵀ with W the c_proj weights ([in, out]). */
static ea_status metric_finish(ea_model *m, const fit_acc *a, ea_kv_metric *mt) {
    const ea_config *cfg = ea_model_config(m);
    int L = cfg->n_layer, d = cfg->n_embd, hd = d / cfg->n_head;
    mt->n_layer = L;
    mt->d = d;
    for (int k = 0; k < 2; k++)
        if (!(mt->m[k] = calloc((size_t)L * d * d, sizeof(double)))) {
            ea_kv_metric_free(mt);
            return ea_error(EA_ERR_NOMEM, "kv metric: out of memory");
        }
    for (int l = 0; l < L; l++) {
        double *mk = mt->m[0] + (size_t)l * d * d, *mv = mt->m[1] + (size_t)l * d * d;
        const double *q2 = a->q2 + (size_t)l * d * d;
        for (int i = 0; i < d; i++)
            for (int j = i; j < d; j++)
                if (i / hd == j / hd) mk[(size_t)i * d + j] = mk[(size_t)j * d + i] = q2[(size_t)i * d + j] / a->qn;
        const float *W = m->layers[l].proj_w;
        for (int i = 0; i < d; i++)
            for (int j = i; j < d; j++) {
                double s = 0;
                for (int o = 0; o < d; o++) s += (double)W[(size_t)i * d + o] * W[(size_t)j * d + o];
                mv[(size_t)i * d + j] = mv[(size_t)j * d + i] = s;
            }
    }
    return EA_OK;
}

ea_status ea_kvfit_stats_metric(ea_model *m, const int *ids, size_t n, int ctx, int skip, ea_kv_stats *out,
                                ea_kv_metric *metric) {
    const ea_config *cfg = ea_model_config(m);
    int L = cfg->n_layer, d = cfg->n_embd;
    memset(out, 0, sizeof *out);
    if (metric) memset(metric, 0, sizeof *metric);
    if (ctx < 2 || ctx > cfg->n_positions) return ea_error(EA_ERR_ARG, "kv stats: window %d outside [2, %d]", ctx, cfg->n_positions);
    fit_acc a = {L, d, skip, {0}, {0}, {0}, NULL, NULL, 0, NULL, 0, EA_OK};
    ea_status st = ea_kvfit_stats_alloc(out, L, d);
    if (st) return st;
    size_t nm = (size_t)L * d;
    a.count = calloc((size_t)2 * L, sizeof(double));
    for (int k = 0; k < 2; k++) {
        a.shift[k] = calloc(nm, sizeof(double));
        a.s1[k] = calloc(nm, sizeof(double));
        a.s2[k] = calloc(nm * d, sizeof(double));
        if (!a.shift[k] || !a.s1[k] || !a.s2[k]) st = ea_error(EA_ERR_NOMEM, "kv stats: out of memory");
    }
    if (metric && !(a.q2 = calloc(nm * d, sizeof(double)))) st = ea_error(EA_ERR_NOMEM, "kv stats: out of memory");
    if (!a.count && !st) st = ea_error(EA_ERR_NOMEM, "kv stats: out of memory");
    if (!st) st = ea_kv_run_windows(m, ids, n, ctx, fit_hook, &a, &a.err);
    if (!st) {
        double nmin = a.count[0];
        for (int i = 1; i < 2 * L; i++)
            if (a.count[i] < nmin) nmin = a.count[i];
        if (nmin < 2) st = ea_error(EA_ERR_ARG, "kv stats: only %g calibration rows (need at least 2)", nmin);
        out->n = nmin;
    }
    for (int k = 0; k < 2 && !st; k++)
        for (int l = 0; l < L; l++) {
            double cnt = a.count[l * 2 + k];
            const double *s1 = a.s1[k] + (size_t)l * d, *s2 = a.s2[k] + (size_t)l * d * d, *sh = a.shift[k] + (size_t)l * d;
            double *mean = out->mean[k] + (size_t)l * d, *cov = out->cov[k] + (size_t)l * d * d;
            for (int i = 0; i < d; i++) mean[i] = sh[i] + s1[i] / cnt;
            for (int i = 0; i < d; i++)
                for (int j = i; j < d; j++) {
                    double v = (s2[(size_t)i * d + j] - s1[i] * s1[j] / cnt) / (cnt - 1);
                    cov[(size_t)i * d + j] = cov[(size_t)j * d + i] = v;
                }
        }
    if (!st && metric) st = metric_finish(m, &a, metric);
    free(a.q2);
    for (int k = 0; k < 2; k++) {
        free(a.shift[k]);
        free(a.s1[k]);
        free(a.s2[k]);
    }
    free(a.count);
    free(a.buf);
    if (st) ea_kvfit_stats_free(out);
    return st;
}

ea_status ea_kv_codec_fit_model(ea_model *m, const char *spec, const int *calib, size_t n_calib, int ctx, int verbose,
                                ea_kv_codec **out) {
    *out = NULL;
    ea_status st = ea_kv_codec_check_spec(spec);
    if (st) return st;
    /* file: too; ea_kv_codec_fit checks that a codec file was fitted on this model */
    if (strncmp(spec, "pca", 3) && strncmp(spec, "klt", 3)) return ea_kv_codec_fit(m, spec, NULL, NULL, NULL, 0, ctx, 0, NULL, out);
    if (!calib || n_calib < 2) return ea_error(EA_ERR_ARG, "kv codec '%s': needs calibration text (at least 2 tokens)", spec);
    ea_kv_stats stats;
    ea_kv_metric metric;
    if (verbose) fprintf(stderr, "kv fit: %s: K/V statistics on %zu calibration tokens\n", spec, n_calib);
    if ((st = ea_kvfit_stats_metric(m, calib, n_calib, ctx, 0, &stats, &metric))) return st;
    if (verbose && !strncmp(spec, "klt", 3)) fprintf(stderr, "kv fit: %s: distributions and layer sensitivities\n", spec);
    st = ea_kv_codec_fit(m, spec, &stats, &metric, calib, n_calib, ctx, 4096, NULL, out);
    ea_kvfit_stats_free(&stats);
    ea_kv_metric_free(&metric);
    return st;
}
