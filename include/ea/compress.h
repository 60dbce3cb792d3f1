/* eigen-alignment activation compressor: per-site mean + top-k eigenvectors (PCA projectors),
 * fitted on calibration text, saved as safetensors, evaluated by reconstruction error and by
 * the model's quality when the residual stream is replaced by its reconstruction. */
#ifndef EA_COMPRESS_H
#define EA_COMPRESS_H

#include "ea/core.h"
#include "ea/io.h"
#include "ea/kvcodec.h"
#include "ea/model.h"
#include "ea/spectral.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EA_COMPRESSOR_FORMAT "eigenalign-compressor"
#define EA_COMPRESSOR_FORMAT_VERSION 1
/* Default window: min(n_positions, 512) tokens, the same windows as `analyze`. */
#define EA_COMPRESS_DEFAULT_CTX 512
int ea_compress_default_ctx(const ea_config *cfg);

/* Which activation a projector applies to: hidden layer 0..n_layer, q/k/v layer 0..n_layer-1;
 * head -1 for the whole row, else the head's columns h*hd..(h+1)*hd of q/k/v. */
typedef struct {
    ea_site site;
    int layer;
    int head;
} ea_site_ref;

/* ---- Projector: x ≈ mean + E Eᵀ (x − mean), E orthonormal d × k ---------------------------- */

typedef struct ea_projector ea_projector;

/* How many eigenvectors to keep: rank > 0 keeps min(rank, d); otherwise the smallest k whose
 * cumulative variance reaches variance (0 < variance <= 1; variance >= 1 keeps all d). */
typedef struct {
    double variance;
    int rank;
} ea_rank_rule;

/* From a covariance matrix (d × d, symmetric, float64) and mean (d): eigendecomposition,
 * eigenvectors sorted by descending eigenvalue, each with its largest component positive. */
ea_status ea_projector_from_matrix(const double *cov, const double *mean, int d, ea_rank_rule rule,
                                   ea_site_ref ref, ea_projector **out);
/* From a streaming accumulator (covariance divided by n-1). */
ea_status ea_projector_from_cov(const ea_cov *cov, ea_rank_rule rule, ea_site_ref ref, ea_projector **out);
/* From stored parts (copied) after validating them: finite, eigenvalues non-negative and
 * non-increasing, basis orthonormal within tol (max |EᵀE − I|). what names the source in errors. */
ea_status ea_projector_from_parts(const char *what, ea_site_ref ref, int d, int k, const float *mean,
                                  const float *basis, const float *eigenvalues, double tol,
                                  ea_projector **out);
void ea_projector_free(ea_projector *p);

ea_site_ref ea_projector_site(const ea_projector *p);
int ea_projector_dim(const ea_projector *p);  /* d */
int ea_projector_rank(const ea_projector *p); /* k */
const float *ea_projector_mean(const ea_projector *p);        /* d */
const float *ea_projector_basis(const ea_projector *p);       /* d × k row-major: column j = eigenvector j */
const float *ea_projector_eigenvalues(const ea_projector *p); /* all d, descending */
/* Share of the variance the kept k directions explain, Σ_{i<k} λ_i / Σλ (1 when Σλ = 0). */
double ea_projector_variance_kept(const ea_projector *p);
/* max |EᵀE − I| computed in float64. */
double ea_projector_orthonormality_error(const ea_projector *p);

/* z (n × k, row stride k) = (x − mean) E; x has row stride ldx >= d. */
ea_status ea_projector_compress(const ea_projector *p, const float *x, int n, int ldx, float *z);
/* x (n × d, row stride ldx) = mean + z Eᵀ; z has row stride k. */
ea_status ea_projector_reconstruct(const ea_projector *p, const float *z, int n, float *x, int ldx);
/* Both: xhat = reconstruct(compress(x)); scratch holds n × k floats. x and xhat may alias when
 * ldx == ldh (in-place replacement). */
ea_status ea_projector_roundtrip(const ea_projector *p, const float *x, int n, int ldx, float *xhat, int ldh,
                                 float *scratch);

/* Reconstruction error accumulated over batches: relative Frobenius ‖X − X̂‖/‖X‖ and mean
 * per-token cosine(x, x̂) (a zero row against a zero row counts as cosine 1). */
typedef struct {
    double err2, norm2, cos_sum;
    size_t rows;
} ea_recon_stats;
void ea_recon_stats_add(ea_recon_stats *s, const float *x, int ldx, const float *xhat, int ldh, int n, int d);
void ea_recon_stats_merge(ea_recon_stats *dst, const ea_recon_stats *src);
double ea_recon_stats_rel_error(const ea_recon_stats *s); /* NaN when no rows */
double ea_recon_stats_cosine(const ea_recon_stats *s);    /* NaN when no rows */

/* ---- Compressor: the projectors of one model ---------------------------------------------- */

typedef struct ea_compressor ea_compressor;

/* What a compressor records about how it was made (strings owned by the compressor). */
typedef struct {
    const char *fingerprint; /* ea_model_fingerprint of the model it was fitted on */
    int n_layer, n_embd, n_head;
    size_t calib_tokens;     /* tokens run through the model */
    size_t calib_rows;       /* rows accumulated per site (tokens minus dropped position-0 rows) */
    int ctx;                 /* calibration window */
    ea_rank_rule rule;       /* variance target or rank */
    int exclude_first;       /* position 0 of each window was left out of calibration */
    const char *library_version;
    int format_version;
} ea_compressor_info;

/* Bits of ea_fit_params.sites. */
#define EA_SITE_BIT(s) (1u << (unsigned)(s))

typedef struct {
    ea_rank_rule rule;
    unsigned sites;    /* EA_SITE_BIT(EA_SITE_HIDDEN) | ...; hidden covers layers 0..n_layer */
    int per_head;      /* q/k/v sites fitted per head instead of whole rows */
    int ctx;           /* window length (1..n_positions; <= 0: ea_compress_default_ctx); each window
                        * starts from an empty cache */
    int exclude_first; /* drop position 0 of every window (the attention sink) */
    /* Optional progress report after each window. */
    void (*progress)(void *user, size_t done_tokens, size_t total_tokens);
    void *progress_user;
} ea_fit_params;
ea_fit_params ea_fit_params_default(void); /* variance 0.95, sites hidden|k|v, default ctx */

/* Calibrate: run the model over windows of ids, accumulate a covariance per site, keep the
 * top eigenvectors by the rule. The model's capture hook is used and cleared afterwards. */
ea_status ea_compressor_fit(ea_model *m, const int *ids, size_t n, const ea_fit_params *p, ea_compressor **out);
/* Build one from projectors: the projectors (not the array holding them) pass to the
 * compressor, also on failure. Checks that each site exists in a model of info's shape. */
ea_status ea_compressor_create(const ea_compressor_info *info, ea_projector **proj, int n_proj,
                               ea_compressor **out);
void ea_compressor_free(ea_compressor *c);

const ea_compressor_info *ea_compressor_get_info(const ea_compressor *c);
int ea_compressor_count(const ea_compressor *c);
const ea_projector *ea_compressor_get(const ea_compressor *c, int i); /* sorted by layer, site, head */
const ea_projector *ea_compressor_find(const ea_compressor *c, ea_site site, int layer, int head);

/* File: safetensors with layer.{i}.{site}[.head{h}].{mean,basis,eigenvalues} (F32) and
 * __metadata__ (see compressor.c). Written atomically. Loading validates every tensor. */
ea_status ea_compressor_save(const ea_compressor *c, const char *path);
/* The same file with fitted klt KV codecs inside (tensors and metadata under "kv.<i>.", their
 * specs listed in the metadata key "kv_codecs"), so a compressor carries the codecs fitted with
 * it; ea_compressor_load ignores them. Other codecs are rebuilt from statistics: EA_ERR_ARG. */
ea_status ea_compressor_save_with_kv(const ea_compressor *c, const ea_kv_codec *const *kv, int n_kv, const char *path);
/* The klt codec `spec` embedded in the compressor file at path, for a model of shape cfg; EA_OK
 * with *out NULL when the file holds no codec of that spec. */
ea_status ea_kv_codec_load_embedded(const char *path, const char *spec, const ea_config *cfg, ea_kv_codec **out);
ea_status ea_compressor_load(const char *path, ea_compressor **out);
/* Does the compressor fit this model? EA_ERR_MISMATCH with the reason (width, layers, heads,
 * fingerprint) otherwise. what names the compressor in messages (its path). */
ea_status ea_compressor_check(const ea_compressor *c, const char *what, const ea_config *cfg,
                              const char *fingerprint);
ea_status ea_compressor_check_model(const ea_compressor *c, const char *what, const ea_model *m);

/* K/V calibration statistics (mean, covariance = E Λ Eᵀ) for the KV codecs: needs full-rank
 * (k = d) whole-row k and v projectors for every layer, else EA_ERR_ARG saying what is missing. */
ea_status ea_compressor_kv_stats(const ea_compressor *c, ea_kv_stats *out);
/* A KV codec for model m fitted on calibration token ids (windows of ctx tokens): K/V statistics,
 * and for klt codecs the attention-aware metric, measured coefficient distributions and per-layer
 * sensitivities, as `eigenalign eval` fits them. Codecs without a basis need no ids (calib may be
 * NULL). Progress goes to stderr when verbose. */
ea_status ea_kv_codec_fit_model(ea_model *m, const char *spec, const int *calib, size_t n_calib, int ctx, int verbose,
                                ea_kv_codec **out);
void ea_kv_stats_free(ea_kv_stats *s);

/* ---- Evaluation on unseen text -------------------------------------------------------------- */

#define EA_INJECT_NONE (-2)
#define EA_INJECT_ALL (-1)
/* A per-prediction KL below zero by less than this is float rounding and is reported as 0; a
 * more negative one is reported as it is (KL >= 0, so it can only be a bug, and it must show). */
#define EA_KL_ROUNDING 1e-6

typedef struct {
    int ctx;    /* window length (<= 0: ea_compress_default_ctx); each window runs from an empty cache */
    int inject; /* hidden layer 0..n_layer-1 whose input is replaced, EA_INJECT_ALL, or EA_INJECT_NONE */
    void (*progress)(void *user, size_t done_tokens, size_t total_tokens);
    void *progress_user;
} ea_eval_params;

/* Accumulated over one or more texts. site[i] belongs to ea_compressor_get(c, i). Quality
 * compares next-token distributions of the uncompressed and the injected model on every
 * position of each window (targets 1..len-1). */
typedef struct {
    int n_sites;
    ea_recon_stats *site;
    size_t windows;
    size_t tokens;        /* tokens run */
    size_t scored;        /* next-token predictions compared */
    double nll_full, nll_compressed; /* sums over scored predictions */
    double kl_sum;        /* Σ KL(full ‖ compressed) */
    size_t top1_agree;
} ea_eval_result;
ea_status ea_eval_result_init(ea_eval_result *r, const ea_compressor *c);
void ea_eval_result_free(ea_eval_result *r);
double ea_eval_ppl_full(const ea_eval_result *r);
double ea_eval_ppl_compressed(const ea_eval_result *r);
double ea_eval_kl(const ea_eval_result *r);
double ea_eval_top1(const ea_eval_result *r);

/* Run ids through the model (and, unless inject is EA_INJECT_NONE, a second time with the
 * hidden state replaced by its reconstruction) and add to r. Position 0 of each window is
 * neither measured nor replaced when the compressor was fitted with exclude_first. The
 * compressor must fit the model (ea_compressor_check_model). */
ea_status ea_compressor_evaluate(ea_model *m, const ea_compressor *c, const int *ids, size_t n,
                                 const ea_eval_params *p, ea_eval_result *r);

#ifdef __cplusplus
}
#endif
#endif
