/* Calibration: what runs the model to fit or score KV codecs (not public API). */
#ifndef EA_CALIB_INTERNAL_H
#define EA_CALIB_INTERNAL_H

#include "ea/model.h"
#include "kv/kv_internal.h"

/* Histograms of every coefficient of every part, in units of its standard deviation, on
 * calibration rows (kv_hist.c). */
ea_status ea_kv_hist_collect(ea_model *m, const int *ids, size_t n, int ctx, const ea_kv_stats *s, const ea_kv_metric *mt,
                             const ea_kv_klt_opts *o, ea_kv_hist *out, ea_progress_fn progress, void *progress_user);

/* ---- Fitting statistics from the model (used by eval and the benchmarks). ---- */
/* Capture K and V over windows of ctx tokens of ids; positions < skip of each window are left
 * out (the attention-sink token). Fills a fresh stats (free with ea_kvfit_stats_free). */
ea_status ea_kvfit_stats(ea_model *m, const int *ids, size_t n, int ctx, int skip, ea_kv_stats *out);
/* The same, also returning the distortion metric (metric may be NULL). */
ea_status ea_kvfit_stats_metric(ea_model *m, const int *ids, size_t n, int ctx, int skip, ea_kv_stats *out,
                                ea_kv_metric *metric);
ea_status ea_kvfit_stats_alloc(ea_kv_stats *s, int n_layer, int d);
void ea_kvfit_stats_free(ea_kv_stats *s);

/* Sensitivity of the model to coding errors in each part: with only part p (layer, kind) coded by
 * probe (a klt codec), the mean KL over the windows of ids divided by the probe's predicted
 * distortion of p. alpha: 2 × n_layer values. */
ea_status ea_kv_sensitivity(ea_model *m, const int *ids, size_t n, int ctx, const ea_kv_codec *probe, double *alpha,
                            ea_progress_fn progress, void *progress_user);

/* Sensitivities already measured, by probe spec (ea_kv_codec_fit fills and reuses it). */
typedef struct {
    int n;
    char spec[8][96];
    double *alpha[8];
    int n_hist; /* coefficient histograms already taken, by transform */
    ea_kv_hist hist[4];
} ea_kv_sens_cache;
void ea_kv_sens_cache_free(ea_kv_sens_cache *sc);

/* A codec for this model from its spec, fitted as the eval does: basis codecs from stats and
 * metric (may be NULL); a pooled klt (the default, unless flag 'b') first measures part
 * sensitivities with ea_kv_sensitivity on up to sens_tokens of calib ids (windows of ctx; skipped
 * when calib or metric is NULL). Before that, a klt codec with level tables histograms its
 * coefficients on all calib ids (ea_kv_hist_collect) and is fitted on them; the sensitivity probe
 * too. cache may be NULL. */
ea_status ea_kv_codec_fit(ea_model *m, const char *spec, const ea_kv_stats *stats, const ea_kv_metric *metric,
                          const int *calib, size_t n_calib, int ctx, size_t sens_tokens, ea_kv_sens_cache *cache,
                          ea_kv_codec **out, ea_progress_fn progress, void *progress_user);

/* Next-token scoring of one window against the exact model's logits (rows first-1..len-2):
 * base logits, base probabilities and log-sum-exps (from ea_kv_ref_prepare) and a codec's logits. */
typedef struct {
    double nll, kl;
    size_t top1, scored;
} ea_kv_score;
void ea_kv_ref_prepare(const float *base, int first, int len, int V, float *prob, double *lse);
void ea_kv_score_window(ea_kv_score *acc, const float *base, const float *prob, const double *lse, const float *logits,
                        const int *ids, int first, int len, int V);

/* One codec scored by ea_kv_codecs_eval. */
typedef struct {
    ea_kv_score score;    /* against the reference entry's logits */
    double prefill_s;     /* time in the forward passes of the windows */
    size_t prefill_tok;
    size_t cache_bytes;   /* cache bytes of a full window */
} ea_kv_codec_eval;
/* Perplexity, KL and top-1 of KV codecs on windows of ctx tokens of ids (windows of at least 2
 * tokens; proto picks the scored positions): codecs[0] (normally NULL, the exact float32 cache) is
 * the reference whose logits every entry, itself included, is scored against; each window runs
 * once per codec from an empty cache. progress: stage "eval", one step per codec and window. */
ea_status ea_kv_codecs_eval(ea_model *m, const int *ids, size_t n, int ctx, ea_ppl_protocol proto,
                            const ea_kv_codec *const *codecs, int n_codecs, ea_kv_codec_eval *out, ea_progress_fn progress,
                            void *progress_user);

/* Generation-style decode speed with a codec (NULL: the exact float32 cache): prefill
 * ctx - n_decode tokens of ids (repeated if short), then time n_decode one-token forward passes
 * with logits, so the timed steps attend to about ctx positions. */
ea_status ea_kv_decode_rate(ea_model *m, const ea_kv_codec *codec, const int *ids, size_t n, int ctx, int n_decode,
                            double *tok_s);

#endif
