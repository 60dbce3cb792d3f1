/* eigen-alignment KV-cache codecs: how the cache stores each token's K and V rows.
 *
 * The cache keeps, per layer and per kind (K or V), one fixed-size encoded row per token. The
 * forward pass only calls these operations, so codecs are interchangeable. */
#ifndef EA_KVCODEC_H
#define EA_KVCODEC_H

#include "ea/core.h"
#include "ea/io.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { EA_KV_K = 0, EA_KV_V = 1 } ea_kv_kind;

typedef struct ea_kv_codec ea_kv_codec;

typedef struct {
    /* Bytes of one encoded row (d = n_embd values) of a layer's K or V. */
    size_t (*row_bytes)(const ea_kv_codec *c, int layer, ea_kv_kind kind);
    /* Encode one row x (d floats) of the token at position pos. dst is the row's address in a
     * buffer laid out from row 0 (see block_rows: the row may share bytes with its block). */
    void (*encode)(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos, const float *x, void *dst);
    /* Decode n consecutive rows starting at position pos0 (src: row pos0's address, as for encode)
     * into x (n × d). */
    void (*decode)(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos0, int n, const void *src,
                   float *x);
    /* Optional: causal attention computed directly on encoded rows, for any nq (one-token decode
     * and prefill). q: nq × d (rows for positions pos0..pos0+nq-1), kbuf/vbuf: encoded rows
     * 0..pos0+nq-1, out: nq × d (heads concatenated). NULL means the cache decodes rows and runs
     * standard attention. */
    void (*attend)(const ea_kv_codec *c, int layer, const float *q, int nq, int pos0, const void *kbuf,
                   const void *vbuf, float *out);
    /* Fixed bytes the codec needs besides the cache (bases, means, tables). */
    size_t (*overhead_bytes)(const ea_kv_codec *c);
    void (*destroy)(ea_kv_codec *c);
    /* Optional: bytes a sequence keeps once per layer and kind besides its rows (e.g. the
     * attention-sink row of position 0 at full precision). The cache lays them out just before
     * row 0, so encode, decode and attend reach them at (row 0) - seq_bytes. NULL means none. */
    size_t (*seq_bytes)(const ea_kv_codec *c, int layer, ea_kv_kind kind);
    /* Optional: encode n rows of positions pos0.. (x: stride ld) into consecutive rows from dst, as n
     * calls of encode would (prefill batches them). NULL means encode row by row. */
    void (*encode_rows)(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos0, int n, const float *x, int ld,
                        void *dst);
    /* Optional: bytes the codec object holds in memory (working copies in float32 and the like),
     * where that differs from overhead_bytes, which counts parameters at their stored precision.
     * NULL means the same as overhead_bytes. */
    size_t (*resident_bytes)(const ea_kv_codec *c);
} ea_kv_codec_ops;

struct ea_kv_codec {
    const ea_kv_codec_ops *ops;
    char name[64];
    int n_layer, n_head, d;
    int n_ctx; /* the model's context: what bits per value are quoted at */
    /* Rows are stored in blocks of this many (0 or 1: every row on its own). A row's bytes then lie
     * in its block, which starts (pos mod block_rows) rows before it, so buffers that rows are
     * encoded into hold whole blocks (ea_kv_codec_buffer_bytes) and are addressed from row 0. */
    int block_rows;
    void *state;
    /* ea_model_fingerprint of the model a klt codec was fitted on ("" when unknown): saved in codec
     * files (version 2) and checked when a file: codec is used with a model (ea_kv_codec_fit). */
    char fingerprint[32];
};

/* Calibration statistics of K and V per layer (what basis-based codecs are fitted from):
 * mean[kind][layer*d + i], cov[kind][layer*d*d + i*d + j] (float64, row-major), n tokens. */
typedef struct {
    int n_layer, d;
    double n;
    double *mean[2];
    double *cov[2];
} ea_kv_stats;

/* Codec from a spec string: "f32", "f16", "q8", "q4", "pca:R", "pca-head:R", "klt:B" (B average
 * bits per value, may be fractional), "file:PATH" (a saved codec). Basis codecs need stats (else
 * EA_ERR_ARG). */
ea_status ea_kv_codec_create(const char *spec, const ea_config *cfg, const ea_kv_stats *stats,
                             ea_kv_codec **out);
void ea_kv_codec_free(ea_kv_codec *c);
/* A fitted klt codec saved whole (safetensors, written atomically) and loaded back for a model of
 * the same shape; the spec "file:PATH" loads one wherever a spec is taken. Other codecs are rebuilt
 * from their spec and statistics, so only klt codecs are saved. */
ea_status ea_kv_codec_save(const ea_kv_codec *c, const char *path);
ea_status ea_kv_codec_load(const char *path, const ea_config *cfg, ea_kv_codec **out);
/* Average stored bits per cached value over a full context of n_ctx tokens: (n_ctx rows +
 * per-sequence bytes) × 8 / (2 × n_layer × n_ctx × d). */
double ea_kv_codec_bits_per_value(const ea_kv_codec *c);
/* Cache bytes of a sequence of ntok tokens (all layers and kinds, per-sequence bytes included;
 * rows in whole blocks). */
size_t ea_kv_codec_bytes(const ea_kv_codec *c, int ntok);
/* Per-sequence bytes of (layer, kind) besides its rows (0 for most codecs). */
size_t ea_kv_codec_seq_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind);
/* Rows that storage for ntok rows holds: ntok rounded up to whole blocks (c may be NULL: ntok). */
size_t ea_kv_codec_rows_stored(const ea_kv_codec *c, size_t ntok);
/* Bytes of a buffer for rows 0..ntok-1 of (layer, kind): the per-sequence bytes, then whole
 * blocks of rows (row 0 at the buffer + ea_kv_codec_seq_bytes). */
size_t ea_kv_codec_buffer_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind, size_t ntok);
size_t ea_kv_codec_overhead(const ea_kv_codec *c);
/* Bytes the codec holds in memory while in use (>= the stored overhead for klt, whose float32
 * working copies of vectors and encoder are derived at build or load). */
size_t ea_kv_codec_resident(const ea_kv_codec *c);
/* Standard causal attention on float rows (reference, and the fallback path).
 * k, v: (pos0+nq) × d; q, out: nq × d. scratch: at least pos0+nq floats. */
void ea_attention_ref(int n_head, int d, const float *q, int nq, int pos0, const float *k, const float *v,
                      float *out, float *scratch);

#ifdef __cplusplus
}
#endif
#endif
