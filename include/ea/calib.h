/* eigen-alignment calibration: what runs the model to fit or score something. K/V statistics and
 * KV-codec fitting (histograms, sensitivities), scoring codecs against the exact model, and the
 * per-site covariance accumulators behind `eigenalign analyze`.
 *
 * Site statistics: per-site covariance accumulators fed by the model's capture hook, reusable by
 * any command that needs activation spectra.
 *
 * Every (site, layer, head) keeps two accumulators, one for the rows at position 0 of a window
 * and one for the rest, so the three report variants cost one pass:
 *   all = merge(first, rest), exclude_first = rest, standardized = correlation of all. */
#ifndef EA_CALIB_H
#define EA_CALIB_H

#include "ea/kvcodec.h"
#include "ea/model.h"
#include "ea/spectral.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- K/V statistics and KV-codec fitting ---- */

/* Capture K and V over windows of ctx tokens of ids (windows of at least 2 tokens); positions
 * < skip of each window are left out (the attention-sink token). Fills a fresh stats (free with
 * ea_kv_stats_free) and, when metric is not NULL, the klt codec's distortion metric (free with
 * ea_kv_metric_free). */
EA_API ea_status ea_kv_stats_fit(ea_model *m, const int *ids, size_t n, int ctx, int skip, ea_kv_stats *out,
                          ea_kv_metric *metric);

/* Sensitivities and coefficient histograms already measured, reused across codecs fitted on the
 * same calibration ids (ea_kv_codec_fit fills it). */
typedef struct ea_kv_sens_cache ea_kv_sens_cache;
EA_API ea_status ea_kv_sens_cache_new(ea_kv_sens_cache **out);
EA_API void ea_kv_sens_cache_free(ea_kv_sens_cache *sc);

/* A codec for this model from its spec, fitted as `eigenalign eval` does: basis codecs from stats
 * and metric (may be NULL); a pooled klt (the default, unless flag 'b') first measures per-part
 * sensitivities on up to sens_tokens of calib ids (windows of ctx; skipped when calib or metric is
 * NULL). Before that, a klt codec with level tables histograms its coefficients on all calib ids
 * and is fitted on them; the sensitivity probe too. cache may be NULL. progress (optional): stages
 * "kv histograms" and "kv sensitivity", in tokens. */
EA_API ea_status ea_kv_codec_fit(ea_model *m, const char *spec, const ea_kv_stats *stats, const ea_kv_metric *metric,
                          const int *calib, size_t n_calib, int ctx, size_t sens_tokens, ea_kv_sens_cache *cache,
                          ea_kv_codec **out, ea_progress_fn progress, void *progress_user);
/* The same from calibration ids alone: K/V statistics and metric on them first. Codecs without a
 * basis need no ids (calib may be NULL). */
EA_API ea_status ea_kv_codec_fit_model(ea_model *m, const char *spec, const int *calib, size_t n_calib, int ctx,
                                ea_progress_fn progress, void *progress_user, ea_kv_codec **out);

/* ---- Scoring KV codecs against the exact model ---- */

/* Next-token scores summed over windows: NLL, KL(reference || codec), top-1 agreements, scored tokens. */
typedef struct {
    double nll, kl;
    size_t top1, scored;
} ea_kv_score;
/* One codec scored by ea_kv_codecs_eval. */
typedef struct {
    ea_kv_score score;  /* against the reference entry's logits */
    double prefill_s;   /* time in the forward passes of the windows */
    size_t prefill_tok;
    size_t cache_bytes; /* cache bytes of a full window */
} ea_kv_codec_eval;
/* Perplexity, KL and top-1 of KV codecs on windows of ctx tokens of ids (windows of at least 2
 * tokens; proto picks the scored positions): codecs[0] (normally NULL, the exact float32 cache) is
 * the reference whose logits every entry, itself included, is scored against; each window runs
 * once per codec from an empty cache. progress: stage "eval", one step per codec and window. */
EA_API ea_status ea_kv_codecs_eval(ea_model *m, const int *ids, size_t n, int ctx, ea_ppl_protocol proto,
                            const ea_kv_codec *const *codecs, int n_codecs, ea_kv_codec_eval *out, ea_progress_fn progress,
                            void *progress_user);
/* Generation-style decode speed with a codec (NULL: the exact float32 cache): prefill
 * ctx - n_decode tokens of ids (repeated if short), then time n_decode one-token forward passes
 * with logits, so the timed steps attend to about ctx positions. */
EA_API ea_status ea_kv_decode_rate(ea_model *m, const ea_kv_codec *codec, const int *ids, size_t n, int ctx, int n_decode,
                            double *tok_s);

/* ---- Site statistics (analyze) ---- */

/* Site kinds: the model's ea_site values (q_pre/k_pre: RoPE models, before the rotation), plus the
 * token-embedding matrix itself. */
#define EA_SITE_KIND_WTE 6
#define EA_SITE_KINDS 7
EA_API const char *ea_site_kind_name(int kind); /* "hidden", "q", "k", "v", "q_pre", "k_pre", "wte" */

typedef enum { EA_VARIANT_ALL = 0, EA_VARIANT_EXCLUDE_FIRST = 1, EA_VARIANT_STANDARDIZED = 2 } ea_variant;
#define EA_VARIANTS 3
EA_API const char *ea_variant_name(ea_variant v); /* "all", "exclude_first", "standardized" */

typedef struct {
    int kind;  /* ea_site or EA_SITE_KIND_WTE */
    int layer; /* hidden 0..n_layer, q/k/v 0..n_layer-1, wte -1 */
    int head;  /* -1: the whole site; h: columns h*hd..(h+1)*hd of q/k/v */
    int d;
    ea_cov *first, *rest;
    double *pool_sum; /* --pool: the current sample's running sum (mean) or last row (last); d */
    int pool_rows;    /* rows of the current sample seen so far */
} ea_site_acc;

typedef struct {
    ea_site_acc *acc;
    int n_acc;
    int *index;                 /* [kind * (n_layer + 1) + layer]: first acc of that group, or -1 */
    int n_layer, n_head, n_embd;
    int n_kv_head, head_dim; /* k and v have n_kv_head heads (GQA) */
    int per_head;
    double accumulate_s; /* time spent inside the capture hook */
    ea_status err;       /* first failure inside the hook (the forward pass only says "aborted") */
    char errmsg[512];
    int uncentered;      /* ea_site_stats_set_protocol: spectra of XᵀX/n, not the covariance */
    int pool;            /* ea_pool */
} ea_site_stats;

/* The research note's protocol (issue 18). pool: one vector per sample instead of one per token:
 * EA_POOL_MEAN the mean of a sample's rows, EA_POOL_LAST its last row; a sample ends at
 * ea_site_stats_end_sample (ea_site_stats_run calls it after every window, so a sample is a
 * window). Pooled vectors go to the accumulators' "rest" (there is no position 0 in a pooled
 * vector: exclude_first then equals all). uncentered: summaries decompose the second-moment
 * matrix XᵀX/n = (n-1)/n · cov + μμᵀ (the note's SVD of raw activations: its singular values are
 * sqrt(n · eigenvalue)) instead of the covariance; the standardized variant is then refused. Call
 * before any capture. wte rows are never pooled. */
typedef enum { EA_POOL_NONE = 0, EA_POOL_MEAN = 1, EA_POOL_LAST = 2 } ea_pool;
EA_API ea_status ea_site_stats_set_protocol(ea_site_stats *s, int uncentered, ea_pool pool);
/* End the current sample: add each accumulator's pooled vector (if it saw rows) and reset. A
 * no-op without pooling. */
EA_API ea_status ea_site_stats_end_sample(ea_site_stats *s);

/* kinds_mask: bit (1 << kind) for each site kind wanted. per_head: also q/k/v per head. */
EA_API ea_status ea_site_stats_init(ea_site_stats **out, const ea_config *cfg, unsigned kinds_mask, int per_head);
EA_API void ea_site_stats_free(ea_site_stats *s);
/* The capture hook (user = the ea_site_stats). */
EA_API ea_status ea_site_stats_capture(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld);
/* Accumulate the rows of the wte matrix (if the wte kind was asked for). */
EA_API ea_status ea_site_stats_add_wte(ea_site_stats *s, const float *wte, int vocab, int d);

/* Windows (ea_window, model.h) over a token stream. Consecutive windows of ctx tokens covering
 * ids[0..n); the last may be shorter. */
EA_API ea_status ea_windows_consecutive(size_t n, int ctx, ea_window **out, int *n_out);
/* count windows of len tokens at uniformly random starts in [0, n - len], deterministic in seed. */
EA_API ea_status ea_windows_sample(size_t n, int count, int len, uint64_t seed, ea_window **out, int *n_out);

/* Run every window from an empty cache with the hook installed (and removed afterwards).
 * progress (optional) is called after each window (done/total in windows). *forward_s receives
 * the forward time excluding the hook. */
EA_API ea_status ea_site_stats_run(ea_site_stats *s, ea_model *m, ea_kvcache *cache, const int *ids, const ea_window *w,
                            int n_windows, ea_progress_fn progress, void *progress_user, double *forward_s);

/* One (site, layer, head, variant) result. */
typedef struct {
    int kind, layer, head;
    ea_variant variant;
    ea_spectrum_summary sum;
    double null_df;
    int null_k95;
} ea_site_result;
/* Summaries for the variants in variant_mask (bit 1 << ea_variant); wte has no exclude_first.
 * Results are ordered by kind, layer, head, variant. A variant with fewer than 2 rows is an
 * EA_ERR_ARG error naming the site. */
EA_API ea_status ea_site_stats_summarize(const ea_site_stats *s, unsigned variant_mask, ea_site_result **out, int *n_out);
EA_API void ea_site_results_free(ea_site_result *r, int n);

#ifdef __cplusplus
}
#endif
#endif
