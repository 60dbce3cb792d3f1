/* Calibration statistics for the basis codecs: run the model over windows of text and accumulate
 * the mean and covariance of every layer's K and V rows in float64. Each accumulator is shifted
 * by the mean of its first batch so the sums do not lose precision to large means. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib_internal.h"
#include "model/internal.h" /* c_proj weights for the V metric */

typedef struct {
    int n_layer, d, skip;
    double *shift[2], *s1[2], *s2[2]; /* per kind: layer-major */
    double *count;                    /* per layer and kind */
    double *q2, qn;                   /* raw second moment Σ q qᵀ per layer (NULL: not wanted), rows */
    double *buf;                      /* one batch as float64 */
    int buf_rows;
    int g, hd; /* query heads per KV head, head dim: a query row folds into g rows of d (GQA) */
} fit_acc;

static ea_status fit_hook(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    fit_acc *a = user;
    if (site == EA_SITE_Q && a->q2) { /* queries of every position weigh K errors */
        /* With GQA, member r of every group forms one KV-shaped row (query heads h·g + r), so q2 sums
         * E[q_r q_rᵀ] over the g query heads that read each KV head. */
        int g = a->g, kd = a->d, hd = a->hd, rows = n * g;
        if (rows > a->buf_rows) {
            double *nb = realloc(a->buf, sizeof(double) * (size_t)rows * kd);
            if (!nb) return ea_error(EA_ERR_NOMEM, "kv stats: out of memory");
            a->buf = nb;
            a->buf_rows = rows;
        }
        for (int i = 0; i < n; i++)
            for (int r = 0; r < g; r++)
                for (int j = 0; j < kd; j++)
                    a->buf[((size_t)i * g + r) * kd + j] = x[(size_t)i * ld + (size_t)((j / hd) * g + r) * hd + j % hd];
        (void)d;
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, kd, rows, 1.0, a->buf, kd, 1.0, a->q2 + (size_t)layer * kd * kd, kd);
        if (layer == 0) a->qn += n;
        return 0;
    }
    if (site != EA_SITE_K && site != EA_SITE_V) return 0;
    int kind = site == EA_SITE_V, first = pos0 < a->skip ? a->skip - pos0 : 0;
    if (first >= n) return 0;
    int rows = n - first;
    if (rows > a->buf_rows) {
        double *nb = realloc(a->buf, sizeof(double) * (size_t)rows * d);
        if (!nb) return ea_error(EA_ERR_NOMEM, "kv stats: out of memory");
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

/* M_K: E[q qᵀ] on each head's diagonal block; M_V = W Wᵀ with W the c_proj weights ([in, out]).
 * With GQA, W row i (KV dim i of head h) is the sum of the o_proj input rows of the g query heads
 * that read head h: exact when they attend alike, an approximation otherwise. */
static ea_status metric_finish(ea_model *m, const fit_acc *a, ea_kv_metric *mt) {
    const ea_config *cfg = ea_model_config(m);
    int L = cfg->n_layer, d = ea_config_kv_dim(cfg), hd = ea_config_head_dim(cfg), C = cfg->n_embd;
    int QD = ea_config_q_dim(cfg), g = cfg->n_head / ea_config_kv_heads(cfg);
    float *W = malloc(sizeof(float) * (size_t)d * C);
    if (!W) return ea_error(EA_ERR_NOMEM, "kv metric: out of memory");
    mt->n_layer = L;
    mt->d = d;
    for (int k = 0; k < 2; k++)
        if (!(mt->m[k] = calloc((size_t)L * d * d, sizeof(double)))) {
            ea_kv_metric_free(mt);
            free(W);
            return ea_error(EA_ERR_NOMEM, "kv metric: out of memory");
        }
    for (int l = 0; l < L; l++) {
        double *mk = mt->m[0] + (size_t)l * d * d, *mv = mt->m[1] + (size_t)l * d * d;
        const double *q2 = a->q2 + (size_t)l * d * d;
        for (int i = 0; i < d; i++)
            for (int j = i; j < d; j++)
                if (i / hd == j / hd) mk[(size_t)i * d + j] = mk[(size_t)j * d + i] = q2[(size_t)i * d + j] / a->qn;
        const float *P = m->layers[l].proj_w; /* Conv1D [QD, C]; nn.Linear (m->linear) [C, QD] */
        for (int i = 0; i < d; i++)
            for (int o = 0; o < C; o++) {
                float w = 0;
                for (int r = 0; r < g; r++) {
                    size_t qi = (size_t)((i / hd) * g + r) * hd + i % hd;
                    w += m->linear ? P[(size_t)o * QD + qi] : P[qi * C + o];
                }
                W[(size_t)i * C + o] = w;
            }
        for (int i = 0; i < d; i++)
            for (int j = i; j < d; j++) {
                double s = 0;
                for (int o = 0; o < C; o++) s += (double)W[(size_t)i * C + o] * W[(size_t)j * C + o];
                mv[(size_t)i * d + j] = mv[(size_t)j * d + i] = s;
            }
    }
    free(W);
    return EA_OK;
}

ea_status ea_kv_stats_fit(ea_model *m, const int *ids, size_t n, int ctx, int skip, ea_kv_stats *out,
                                ea_kv_metric *metric) {
    const ea_config *cfg = ea_model_config(m);
    int L = cfg->n_layer, d = ea_config_kv_dim(cfg); /* cached K/V rows: n_embd without GQA */
    memset(out, 0, sizeof *out);
    if (metric) memset(metric, 0, sizeof *metric);
    if (ctx < 2 || ctx > cfg->n_positions) return ea_error(EA_ERR_ARG, "kv stats: window %d outside [2, %d]", ctx, cfg->n_positions);
    fit_acc a = {L, d, skip, {0}, {0}, {0}, NULL, NULL, 0, NULL, 0, cfg->n_head / ea_config_kv_heads(cfg), ea_config_head_dim(cfg)};
    ea_status st = ea_kv_stats_alloc(out, L, d);
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
    ea_window_run run = {.hook = fit_hook, .hook_user = &a, .min_len = 2};
    if (!st) st = ea_model_run_windows(m, ids, n, ctx, &run);
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
    if (st) ea_kv_stats_free(out);
    return st;
}

ea_status ea_kv_codec_fit_model(ea_model *m, const char *spec, const int *calib, size_t n_calib, int ctx,
                                ea_progress_fn progress, void *progress_user, ea_kv_codec **out) {
    *out = NULL;
    ea_status st = ea_kv_codec_check_spec(spec);
    if (st) return st;
    /* file: too; ea_kv_codec_fit checks that a codec file was fitted on this model */
    if (strncmp(spec, "pca", 3) && strncmp(spec, "klt", 3))
        return ea_kv_codec_fit(m, spec, NULL, NULL, NULL, 0, ctx, 0, NULL, out, progress, progress_user);
    if (!calib || n_calib < 2) return ea_error(EA_ERR_ARG, "kv codec '%s': needs calibration text (at least 2 tokens)", spec);
    ea_kv_stats stats;
    ea_kv_metric metric;
    if ((st = ea_kv_stats_fit(m, calib, n_calib, ctx, 0, &stats, &metric))) return st;
    st = ea_kv_codec_fit(m, spec, &stats, &metric, calib, n_calib, ctx, 4096, NULL, out, progress, progress_user);
    ea_kv_stats_free(&stats);
    ea_kv_metric_free(&metric);
    return st;
}
