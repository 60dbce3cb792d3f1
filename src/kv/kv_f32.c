/* f32 KV codec: rows stored as they are (the exact reference; the cache's default). */
#include <string.h>

#include "kv/kv_internal.h"
#include "kv/kv_rows.h"

static size_t f32_row_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind) { return sizeof(float) * (size_t)c->d; }

static void f32_encode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos, const float *x, void *dst) {
    memcpy(dst, x, sizeof(float) * (size_t)c->d);
}

static void f32_decode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos0, int n, const void *src, float *x) {
    memcpy(x, src, sizeof(float) * (size_t)c->d * (size_t)n);
}

static void f32_attend(const ea_kv_codec *c, int layer, const float *q, int nq, int pos0, const void *kbuf,
                       const void *vbuf, float *out) {
    ea_kv_rows_codec_attend(c, EA_KV_ROWS_F32, layer, q, nq, pos0, kbuf, vbuf, out);
}

static size_t f32_overhead(const ea_kv_codec *c) { return 0; }
static void f32_destroy(ea_kv_codec *c) {}

static const ea_kv_codec_ops f32_ops = {f32_row_bytes, f32_encode, f32_decode, f32_attend, f32_overhead, f32_destroy, NULL, NULL, NULL};

ea_status ea_kv_f32_setup(ea_kv_codec *c) {
    c->ops = &f32_ops;
    c->rows_fmt1 = 1 + EA_KV_ROWS_F32;
    return EA_OK;
}
