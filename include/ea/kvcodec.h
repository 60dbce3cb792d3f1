/* eigen-alignment KV-cache codecs: how the cache stores each token's K and V rows.
 *
 * The cache keeps, per layer and per kind (K or V), one fixed-size encoded row per token. A codec
 * is an opaque handle made from a spec string; the operations every codec implements are internal
 * (src/kv/kv_codec.h), so codecs are interchangeable. */
#ifndef EA_KVCODEC_H
#define EA_KVCODEC_H

#include "ea/core.h"
#include "ea/io.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { EA_KV_K = 0, EA_KV_V = 1 } ea_kv_kind;

typedef struct ea_kv_codec ea_kv_codec;

/* Codec name (its spec, or the spec of the file it came from) and shape. */
EA_API const char *ea_kv_codec_name(const ea_kv_codec *c);
EA_API int ea_kv_codec_n_layer(const ea_kv_codec *c);
EA_API int ea_kv_codec_n_head(const ea_kv_codec *c);
EA_API int ea_kv_codec_dim(const ea_kv_codec *c);

/* Calibration statistics of K and V per layer (what basis-based codecs are fitted from):
 * mean[kind][layer*d + i], cov[kind][layer*d*d + i*d + j] (float64, row-major), n tokens. */
typedef struct {
    int n_layer, d;
    double n;
    double *mean[2];
    double *cov[2];
} ea_kv_stats;

/* Allocate zeroed statistics for n_layer layers of width d; ea_kv_stats_free frees the arrays
 * (and accepts a zeroed struct). */
EA_API ea_status ea_kv_stats_alloc(ea_kv_stats *s, int n_layer, int d);
EA_API void ea_kv_stats_free(ea_kv_stats *s);

/* Distortion metric of the transform coder (klt), per layer (d × d, symmetric PSD, float64): an
 * error e in a K row costs eᵀ M_K e, in a V row eᵀ M_V e. M_K = E[q qᵀ] restricted to each head's
 * block (what an error does to the attention scores), M_V = W_o W_oᵀ (what it does to the
 * attention block's output). NULL anywhere means plain squared error. ea_kv_stats_fit (calib.h)
 * measures it. */
struct ea_kv_hist;
typedef struct {
    int n_layer, d;
    double *m[2];
    /* Optional: KL per unit of distortion of each part [layer*2 + kind] (measured sensitivities);
     * with it, a pooled klt allocation spends bits where they lower KL most. */
    double *part_weight;
    /* Optional, internal: measured coefficient distributions for klt codecs whose transform
     * they were taken in (borrowed). */
    const struct ea_kv_hist *hist;
} ea_kv_metric;
EA_API void ea_kv_metric_free(ea_kv_metric *mt);

/* Syntax of a codec spec (name, parameter, flags) without building it: lets commands reject a
 * typo before loading anything. */
EA_API ea_status ea_kv_codec_check_spec(const char *spec);
/* The same, and the bounds that depend on the model (a pca rank within the cached row or head):
 * lets commands reject a spec right after loading the config, before fitting anything. */
EA_API ea_status ea_kv_codec_check_spec_for(const char *spec, const ea_config *cfg);

/* Codec from a spec string: "f32", "f16", "q8", "q4", "pca:R", "pca-head:R", "klt:B" (B average
 * bits per value, may be fractional), "file:PATH" (a saved codec). Basis codecs need stats (else
 * EA_ERR_ARG). */
EA_API ea_status ea_kv_codec_create(const char *spec, const ea_config *cfg, const ea_kv_stats *stats,
                             ea_kv_codec **out);
EA_API void ea_kv_codec_free(ea_kv_codec *c);
/* A fitted klt codec saved whole (safetensors, written atomically) and loaded back for a model of
 * the same shape; the spec "file:PATH" loads one wherever a spec is taken. Other codecs are rebuilt
 * from their spec and statistics, so only klt codecs are saved. */
EA_API ea_status ea_kv_codec_save(const ea_kv_codec *c, const char *path);
EA_API ea_status ea_kv_codec_load(const char *path, const ea_config *cfg, ea_kv_codec **out);
/* The klt codec `spec` embedded in the compressor file at path (ea_compressor_save_with_kv), for a model of shape cfg; EA_OK
 * with *out NULL when the file holds no codec of that spec. */
EA_API ea_status ea_kv_codec_load_embedded(const char *path, const char *spec, const ea_config *cfg, ea_kv_codec **out);
/* Average stored bits per cached value over a full context of n_ctx tokens: (n_ctx rows +
 * per-sequence bytes) × 8 / (2 × n_layer × n_ctx × d). */
EA_API double ea_kv_codec_bits_per_value(const ea_kv_codec *c);
/* Cache bytes of a sequence of ntok tokens (all layers and kinds, per-sequence bytes included;
 * rows in whole blocks). */
EA_API size_t ea_kv_codec_bytes(const ea_kv_codec *c, int ntok);
/* Per-sequence bytes of (layer, kind) besides its rows (0 for most codecs). */
EA_API size_t ea_kv_codec_seq_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind);
/* Rows that storage for ntok rows holds: ntok rounded up to whole blocks (c may be NULL: ntok). */
EA_API size_t ea_kv_codec_rows_stored(const ea_kv_codec *c, size_t ntok);
/* Bytes of a buffer for rows 0..ntok-1 of (layer, kind): the per-sequence bytes, then whole
 * blocks of rows (row 0 at the buffer + ea_kv_codec_seq_bytes). */
EA_API size_t ea_kv_codec_buffer_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind, size_t ntok);
EA_API size_t ea_kv_codec_overhead(const ea_kv_codec *c);
/* Bytes the codec holds in memory while in use (>= the stored overhead for klt, whose float32
 * working copies of vectors and encoder are derived at build or load). */
EA_API size_t ea_kv_codec_resident(const ea_kv_codec *c);
#ifdef __cplusplus
}
#endif
#endif
