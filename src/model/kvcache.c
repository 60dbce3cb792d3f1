/* The KV cache: per layer and kind, one fixed-size encoded row per token. The forward pass
 * never knows the codec; with no codec, rows are plain float32 and read in place. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/internal.h"

ea_status ea_kvcache_init(ea_kvcache **out, const ea_config *cfg, int capacity, const ea_kv_codec *codec) {
    *out = NULL;
    if (capacity < 1 || capacity > cfg->n_positions)
        return ea_error(EA_ERR_ARG, "kv cache capacity %d outside [1, n_positions=%d]", capacity, cfg->n_positions);
    int kvd = ea_config_kv_dim(cfg); /* K and V rows: n_kv_head × head_dim (n_embd without GQA) */
    if (codec && (codec->n_layer != cfg->n_layer || codec->d != kvd || codec->n_head != ea_config_kv_heads(cfg)))
        return ea_error(EA_ERR_MISMATCH, "kv codec '%s' was built for %d layers x %d dims (%d heads), the model's cache has %d x %d (%d heads)",
                        codec->name, codec->n_layer, codec->d, codec->n_head, cfg->n_layer, kvd, ea_config_kv_heads(cfg));
    ea_kvcache *c = calloc(1, sizeof *c);
    if (!c) return ea_error(EA_ERR_NOMEM, "kv cache: out of memory");
    c->cfg = *cfg;
    c->cap = capacity;
    c->codec = codec;
    int nb = 2 * cfg->n_layer;
    c->row_bytes = calloc((size_t)nb, sizeof *c->row_bytes);
    c->store = calloc((size_t)nb, sizeof *c->store);
    c->rows = calloc((size_t)nb, sizeof *c->rows);
    c->seq_bytes = calloc((size_t)nb, sizeof *c->seq_bytes);
    if (!c->row_bytes || !c->store || !c->rows || !c->seq_bytes) goto nomem;
    for (int i = 0; i < nb; i++) {
        c->row_bytes[i] = codec ? codec->ops->row_bytes(codec, i / 2, (ea_kv_kind)(i % 2)) : sizeof(float) * (size_t)kvd;
        c->seq_bytes[i] = codec ? ea_kv_codec_seq_bytes(codec, i / 2, (ea_kv_kind)(i % 2)) : 0;
        size_t bytes;
        /* whole blocks of rows (codecs that store rows in blocks; 1 row otherwise) */
        if (ea_mul_size(c->row_bytes[i], ea_kv_codec_rows_stored(codec, (size_t)capacity), &bytes) || bytes > SIZE_MAX - c->seq_bytes[i] ||
            !(c->store[i] = calloc(1, bytes + c->seq_bytes[i] + 1)))
            goto nomem;
        c->rows[i] = c->store[i] + c->seq_bytes[i];
    }
    if (codec && !codec->ops->attend) { /* decoded rows for the standard attention */
        size_t n = (size_t)capacity * (size_t)kvd;
        if (!(c->kdec = malloc(n * sizeof(float))) || !(c->vdec = malloc(n * sizeof(float)))) goto nomem;
    }
    *out = c;
    return EA_OK;
nomem:
    ea_kvcache_free(c);
    return ea_error(EA_ERR_NOMEM, "kv cache: cannot allocate %d tokens", capacity);
}

void ea_kvcache_free(ea_kvcache *c) {
    if (!c) return;
    if (c->store)
        for (int i = 0; i < 2 * c->cfg.n_layer; i++) free(c->store[i]);
    free(c->store);
    free(c->rows);
    free(c->seq_bytes);
    free(c->row_bytes);
    free(c->kdec);
    free(c->vdec);
    free(c);
}

void ea_kvcache_reset(ea_kvcache *c) { c->len = 0; }
int ea_kvcache_len(const ea_kvcache *c) { return c->len; }
int ea_kvcache_capacity(const ea_kvcache *c) { return c->cap; }
const ea_kv_codec *ea_kvcache_codec(const ea_kvcache *c) { return c->codec; }

size_t ea_kvcache_bytes_for(const ea_kvcache *c, int ntok) {
    size_t row = 0, seq = 0;
    for (int i = 0; i < 2 * c->cfg.n_layer; i++) {
        row += c->row_bytes[i];
        seq += c->seq_bytes[i];
    }
    return ntok > 0 ? seq + row * ea_kv_codec_rows_stored(c->codec, (size_t)ntok) : 0;
}

size_t ea_kvcache_allocated_bytes(const ea_kvcache *c) { return ea_kvcache_bytes_for(c, c->cap); }

void ea_kvcache_append(ea_kvcache *c, int layer, int pos0, int n, const float *k, const float *v, int ld) {
    for (int kind = 0; kind < 2; kind++) {
        const float *src = kind ? v : k;
        size_t rb = c->row_bytes[layer * 2 + kind];
        unsigned char *dst = c->rows[layer * 2 + kind] + rb * (size_t)pos0;
        if (c->codec && c->codec->ops->encode_rows && n > 1) {
            c->codec->ops->encode_rows(c->codec, layer, (ea_kv_kind)kind, pos0, n, src, ld, dst);
            continue;
        }
        for (int i = 0; i < n; i++) {
            if (c->codec) c->codec->ops->encode(c->codec, layer, (ea_kv_kind)kind, pos0 + i, src + (size_t)i * ld, dst + rb * i);
            else memcpy(dst + rb * i, src + (size_t)i * ld, rb);
        }
    }
}

void ea_kvcache_view(ea_kvcache *c, int layer, int n, const float **k, const float **v) {
    if (!c->codec) {
        *k = (const float *)(void *)c->rows[layer * 2];
        *v = (const float *)(void *)c->rows[layer * 2 + 1];
        return;
    }
    if (!c->kdec) { /* codecs with their own attention have no decoded copy (the forward pass never asks) */
        *k = *v = NULL;
        return;
    }
    c->codec->ops->decode(c->codec, layer, EA_KV_K, 0, n, c->rows[layer * 2], c->kdec);
    c->codec->ops->decode(c->codec, layer, EA_KV_V, 0, n, c->rows[layer * 2 + 1], c->vdec);
    *k = c->kdec;
    *v = c->vdec;
}
