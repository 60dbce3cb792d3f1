/* f16 KV codec: IEEE half per value (F16C when the build targets it). */
#include "kv/kv_internal.h"
#include "kv/kv_rows.h"

static size_t f16_row_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind) { return sizeof(uint16_t) * (size_t)c->d; }

static void f16_encode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos, const float *x, void *dst) {
    uint16_t *h = dst;
    for (int i = 0; i < c->d; i++) h[i] = ea_f32_to_f16(x[i]);
}

static void f16_decode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos0, int n, const void *src, float *x) {
    ea_f16_to_f32_array(src, x, (size_t)c->d * (size_t)n);
}

static void f16_attend(const ea_kv_codec *c, int layer, const float *q, int nq, int pos0, const void *kbuf,
                       const void *vbuf, float *out) {
    ea_kv_rows_codec_attend(c, EA_KV_ROWS_F16, layer, q, nq, pos0, kbuf, vbuf, out);
}

static size_t f16_overhead(const ea_kv_codec *c) { return 0; }
static void f16_destroy(ea_kv_codec *c) {}

static const ea_kv_codec_ops f16_ops = {f16_row_bytes, f16_encode, f16_decode, f16_attend, f16_overhead, f16_destroy, NULL, NULL, NULL};

ea_status ea_kv_f16_setup(ea_kv_codec *c) {
    c->ops = &f16_ops;
    c->rows_fmt1 = 1 + EA_KV_ROWS_F16;
    return EA_OK;
}
