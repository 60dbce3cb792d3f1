/* The KV-codec interface (not public API): the operations every codec implements and the codec
 * object. The forward pass and the cache only call these, so codecs are interchangeable. */
#ifndef EA_KV_CODEC_H
#define EA_KV_CODEC_H

#include "ea/kvcodec.h"

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
    /* rows_fmt + 1 when rows are stored in an ea_kv_rows_format (f32, f16, q8, q4) and read in place
     * by the rows kernels, so GQA decode can call them for a whole query group; 0 otherwise. */
    int rows_fmt1;
    void *state;
    /* ea_model_fingerprint of the model a klt codec was fitted on ("" when unknown): saved in codec
     * files (version 2) and checked when a file: codec is used with a model (ea_kv_codec_fit). */
    char fingerprint[32];
};


#endif
