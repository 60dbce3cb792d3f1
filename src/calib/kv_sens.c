/* How much each layer's K or V matters: code one part at a time with a probe codec (the others
 * exact) and measure the KL it causes per unit of the probe's predicted distortion. A pooled bit
 * allocation then weighs each part's distortion by this sensitivity. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib_internal.h"

typedef struct {
    const ea_kv_codec *probe;
    int layer, kind;
    unsigned char *buf; /* room for the part's per-sequence bytes, then one row */
    size_t seq_max;
} sens_hook_ctx;

/* Replace the target part's rows by their coded version (encode + decode). */
static ea_status sens_hook(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    sens_hook_ctx *h = user;
    int kind = site == EA_SITE_V ? 1 : site == EA_SITE_K ? 0 : -1;
    if (kind != h->kind || layer != h->layer) return EA_OK;
    unsigned char *row0 = h->buf + h->seq_max; /* the sequence bytes end right before it */
    size_t rb = h->probe->ops->row_bytes(h->probe, layer, (ea_kv_kind)kind);
    for (int i = 0; i < n; i++) {
        float *r = x + (size_t)i * ld;
        /* one block of rows is enough: each row is decoded right after it is encoded */
        unsigned char *row = row0 + rb * ((size_t)(pos0 + i) % ea_kv_codec_rows_stored(h->probe, 1));
        h->probe->ops->encode(h->probe, layer, (ea_kv_kind)kind, pos0 + i, r, row);
        h->probe->ops->decode(h->probe, layer, (ea_kv_kind)kind, pos0 + i, 1, row, r);
    }
    return EA_OK;
}

/* One window: the exact logits (base) against each part coded alone. */
typedef struct {
    ea_model *m;
    sens_hook_ctx *h;
    int P, V;
    float *prob, *lg;
    double *lse;
    ea_kv_score *acc;
} sens_window_ctx;

static ea_status sens_window(void *user, ea_kvcache *cache, const int *ids, size_t s0, int len, const float *base) {
    sens_window_ctx *w = user;
    ea_status st = EA_OK;
    ea_kv_ref_prepare(base, 1, len, w->V, w->prob, w->lse);
    for (int p = 0; p < w->P && !st; p++) {
        w->h->layer = p / 2;
        w->h->kind = p % 2;
        ea_model_set_capture(w->m, sens_hook, w->h);
        ea_kvcache_reset(cache);
        st = ea_model_forward(w->m, cache, ids + s0, len, w->lg, 1);
        ea_model_set_capture(w->m, NULL, NULL);
        if (!st) ea_kv_score_window(&w->acc[p], base, w->prob, w->lse, w->lg, ids + s0, 1, len, w->V);
    }
    return st;
}

ea_status ea_kv_sensitivity(ea_model *m, const int *ids, size_t n, int ctx, const ea_kv_codec *probe, double *alpha,
                            ea_progress_fn progress, void *progress_user) {
    const ea_config *cfg = ea_model_config(m);
    int L = cfg->n_layer, P = 2 * L, V = cfg->vocab_size;
    if (ctx < 2 || ctx > cfg->n_positions) return ea_error(EA_ERR_ARG, "kv sensitivity: window %d outside [2, %d]", ctx, cfg->n_positions);
    size_t cells = (size_t)ctx * V, maxrow = 0, maxseq = 0;
    for (int p = 0; p < P; p++) {
        size_t rb = probe->ops->row_bytes(probe, p / 2, (ea_kv_kind)(p % 2));
        size_t sb = ea_kv_codec_seq_bytes(probe, p / 2, (ea_kv_kind)(p % 2));
        if (rb > maxrow) maxrow = rb;
        if (sb > maxseq) maxseq = sb;
    }
    float *base = malloc(sizeof(float) * cells), *prob = malloc(sizeof(float) * cells), *lg = malloc(sizeof(float) * cells);
    double *lse = malloc(sizeof(double) * (size_t)ctx);
    ea_kv_score *acc = calloc((size_t)P, sizeof *acc);
    sens_hook_ctx h = {probe, -1, -1, calloc(1, maxseq + maxrow * ea_kv_codec_rows_stored(probe, 1) + 8), maxseq};
    ea_status st = (!base || !prob || !lg || !lse || !acc || !h.buf) ? ea_error(EA_ERR_NOMEM, "kv sensitivity: out of memory") : EA_OK;
    sens_window_ctx wc = {m, &h, P, V, prob, lg, lse, acc};
    ea_window_run run = {.logits = base, .end = sens_window, .user = &wc, .min_len = 2, .progress = progress,
                         .progress_user = progress_user, .stage = "kv sensitivity"};
    if (!st) st = ea_model_run_windows(m, ids, n, ctx, &run);
    for (int p = 0; p < P && !st; p++) {
        double pred = ea_kv_klt_predicted_mse(probe, p / 2, p % 2);
        alpha[p] = acc[p].scored && pred > 0 ? acc[p].kl / (double)acc[p].scored / pred : 0;
    }
    free(base);
    free(prob);
    free(lg);
    free(lse);
    free(acc);
    free(h.buf);
    return st;
}

/* A pooled klt spec: the default, unless a 'b' flag comes after the last 'p'. */
static int spec_pooled(const char *spec) {
    if (strncmp(spec, "klt:", 4)) return 0;
    const char *f = strchr(spec + 4, ':');
    int p = 1;
    for (; f && *f; f++) p = *f == 'p' ? 1 : *f == 'b' ? 0 : p;
    return p;
}

/* The probe that measures sensitivities: the same variant at 3 bits per value, budget per part. */
static void probe_spec(const char *spec, char *out, size_t cap) {
    const char *f = strchr(spec + 4, ':');
    size_t n = (size_t)snprintf(out, cap, "klt:3:");
    for (f = f ? f + 1 : ""; *f && n + 2 < cap; f++)
        if (*f != 'p' && *f != 'b') out[n++] = *f;
    out[n++] = 'b';
    out[n] = 0;
}

ea_status ea_kv_sens_cache_new(ea_kv_sens_cache **out) {
    *out = calloc(1, sizeof **out);
    return *out ? EA_OK : ea_error(EA_ERR_NOMEM, "kv sensitivity cache: out of memory");
}

void ea_kv_sens_cache_free(ea_kv_sens_cache *sc) {
    if (!sc) return;
    for (int i = 0; i < sc->n; i++) free(sc->alpha[i]);
    for (int i = 0; i < sc->n_hist; i++) ea_kv_hist_free(&sc->hist[i]);
    free(sc);
}

/* Histograms in the transform of options o: from the cache, or taken now (*owned set when the
 * caller must free them). */
static ea_status hist_for(ea_model *m, const ea_kv_klt_opts *o, const ea_kv_stats *stats, const ea_kv_metric *metric,
                          const int *calib, size_t n_calib, int ctx, ea_kv_sens_cache *cache, ea_kv_hist *tmp,
                          const ea_kv_hist **out, ea_progress_fn progress, void *progress_user) {
    for (int i = 0; cache && i < cache->n_hist; i++)
        if (ea_kv_hist_matches(&cache->hist[i], o)) {
            *out = &cache->hist[i];
            return EA_OK;
        }
    ea_kv_hist *h = cache && cache->n_hist < 4 ? &cache->hist[cache->n_hist] : tmp;
    ea_status st = ea_kv_hist_collect(m, calib, n_calib, ctx, stats, metric, o, h, progress, progress_user);
    if (st) return st;
    if (h != tmp) cache->n_hist++;
    *out = h;
    return EA_OK;
}


/* A codec file used with a model must have been fitted on that model's weights. */
static ea_status check_codec_model(const char *spec, const ea_kv_codec *c, const ea_model *m) {
    const char *want = ea_model_fingerprint(m);
    if (!strcmp(c->fingerprint, want)) return EA_OK;
    return ea_error(EA_ERR_MISMATCH, "%s: kv codec was fitted on a model with fingerprint %s, this model's is %s "
                    "(refit it on these weights)", spec + 5, *c->fingerprint ? c->fingerprint : "(none)", want);
}

ea_status ea_kv_codec_fit(ea_model *m, const char *spec, const ea_kv_stats *stats, const ea_kv_metric *metric,
                          const int *calib, size_t n_calib, int ctx, size_t sens_tokens, ea_kv_sens_cache *cache,
                          ea_kv_codec **out, ea_progress_fn progress, void *progress_user) {
    const ea_config *cfg = ea_model_config(m);
    *out = NULL;
    if (strncmp(spec, "klt:", 4) || !calib || !stats || !metric) {
        ea_status s0 = ea_kv_codec_create_ex(spec, cfg, stats, metric, out);
        if (!s0 && !strncmp(spec, "file:", 5) && (s0 = check_codec_model(spec, *out, m))) {
            ea_kv_codec_free(*out);
            *out = NULL;
        } else if (!s0 && strncmp(spec, "file:", 5)) {
            snprintf((*out)->fingerprint, sizeof (*out)->fingerprint, "%s", ea_model_fingerprint(m));
        }
        return s0;
    }
    ea_kv_klt_opts o;
    ea_status st = ea_kv_klt_opts_from_spec(spec, &o);
    if (st) return st;
    ea_kv_metric mt = *metric;
    ea_kv_hist tmp = {0};
    if (o.lloyd && !o.token_scale) { /* measured level tables */
        if ((st = hist_for(m, &o, stats, metric, calib, n_calib, ctx, cache, &tmp, &mt.hist, progress, progress_user)))
            return st;
    }
    if (!spec_pooled(spec)) {
        st = ea_kv_codec_create_ex(spec, cfg, stats, &mt, out);
        ea_kv_hist_free(&tmp);
        return st;
    }
    char ps[96];
    probe_spec(spec, ps, sizeof ps);
    double *alpha = NULL;
    int owned = 1;
    for (int i = 0; cache && i < cache->n; i++)
        if (!strcmp(cache->spec[i], ps)) {
            alpha = cache->alpha[i];
            owned = 0;
        }
    if (!alpha) {
        ea_kv_codec *probe = NULL;
        if (!(alpha = malloc(sizeof(double) * 2 * (size_t)cfg->n_layer))) {
            ea_kv_hist_free(&tmp);
            return ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", spec);
        }
        ea_kv_metric pm = *metric; /* the probe is fitted like the codec (it has the same transform) */
        pm.hist = mt.hist;
        st = ea_kv_codec_create_ex(ps, cfg, stats, &pm, &probe);
        if (!st) st = ea_kv_sensitivity(m, calib, n_calib < sens_tokens ? n_calib : sens_tokens, ctx, probe, alpha, progress,
                                         progress_user);
        ea_kv_codec_free(probe);
        if (!st && cache && cache->n < 8) {
            snprintf(cache->spec[cache->n], sizeof cache->spec[0], "%s", ps);
            cache->alpha[cache->n++] = alpha;
            owned = 0;
        }
    }
    mt.part_weight = alpha;
    if (!st) st = ea_kv_codec_create_ex(spec, cfg, stats, &mt, out);
    if (!st) snprintf((*out)->fingerprint, sizeof (*out)->fingerprint, "%s", ea_model_fingerprint(m));
    if (owned) free(alpha);
    ea_kv_hist_free(&tmp);
    return st;
}
