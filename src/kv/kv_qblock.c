/* q8 and q4 KV codecs: llama.cpp's q8_0 and q4_0 block formats. Each row is cut into blocks of
 * 32 consecutive values with one f16 scale per block (a last partial block is padded with zeros).
 *   q8_0: d = max|x| / 127, q = round(x / d) as int8, x' = q·d            (34 bytes per 32 values)
 *   q4_0: d = m / -8 (m: the value of largest magnitude, with its sign),
 *         q = min(15, (int)(x / d + 8.5)) as nibbles, x' = (q - 8)·d       (18 bytes per 32 values)
 * The q4_0 nibble layout is llama.cpp's: byte j holds value j (low) and value 16 + j (high). */
#include <math.h>
#include <string.h>

#include "kv/kv_internal.h"
#include "kv/kv_rows.h"

#define QK 32

static int n_blocks(const ea_kv_codec *c) { return (c->d + QK - 1) / QK; }

/* One block of 32 values (zero-padded past the row end). */
static void load_block(const float *x, int d, int b, float *blk) {
    for (int j = 0; j < QK; j++) {
        int i = b * QK + j;
        blk[j] = i < d ? x[i] : 0.0f;
    }
}

static void store_block(float *x, int d, int b, const float *blk) {
    int n = d - b * QK < QK ? d - b * QK : QK;
    memcpy(x + b * QK, blk, sizeof(float) * (size_t)n);
}

static void put_f16(unsigned char *p, float v) {
    uint16_t h = ea_f32_to_f16(v);
    memcpy(p, &h, 2);
}

static float get_f16(const unsigned char *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return ea_f16_to_f32(h);
}

/* ---- q8_0 ---- */
static size_t q8_row_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind) { return (size_t)n_blocks(c) * (2 + QK); }

static void q8_encode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos, const float *x, void *dst) {
    unsigned char *p = dst;
    float blk[QK];
    for (int b = 0; b < n_blocks(c); b++, p += 2 + QK) {
        load_block(x, c->d, b, blk);
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(blk[j]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        put_f16(p, d);
        for (int j = 0; j < QK; j++) p[2 + j] = (unsigned char)(int8_t)roundf(blk[j] * id);
    }
}

static void q8_decode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos0, int n, const void *src, float *x) {
    const unsigned char *p = src;
    float blk[QK];
    for (int r = 0; r < n; r++, x += c->d)
        for (int b = 0; b < n_blocks(c); b++, p += 2 + QK) {
            float d = get_f16(p);
            for (int j = 0; j < QK; j++) blk[j] = (float)(int8_t)p[2 + j] * d;
            store_block(x, c->d, b, blk);
        }
}

/* ---- q4_0 ---- */
static size_t q4_row_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind) { return (size_t)n_blocks(c) * (2 + QK / 2); }

static void q4_encode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos, const float *x, void *dst) {
    unsigned char *p = dst;
    float blk[QK];
    for (int b = 0; b < n_blocks(c); b++, p += 2 + QK / 2) {
        load_block(x, c->d, b, blk);
        float amax = 0, max = 0;
        for (int j = 0; j < QK; j++)
            if (amax < fabsf(blk[j])) {
                amax = fabsf(blk[j]);
                max = blk[j];
            }
        float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
        put_f16(p, d);
        for (int j = 0; j < QK / 2; j++) {
            int q0 = (int)(int8_t)(blk[j] * id + 8.5f), q1 = (int)(int8_t)(blk[QK / 2 + j] * id + 8.5f);
            if (q0 > 15) q0 = 15;
            if (q1 > 15) q1 = 15;
            p[2 + j] = (unsigned char)(q0 | (q1 << 4));
        }
    }
}

static void q4_decode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos0, int n, const void *src, float *x) {
    const unsigned char *p = src;
    float blk[QK];
    for (int r = 0; r < n; r++, x += c->d)
        for (int b = 0; b < n_blocks(c); b++, p += 2 + QK / 2) {
            float d = get_f16(p);
            for (int j = 0; j < QK / 2; j++) {
                blk[j] = (float)((p[2 + j] & 15) - 8) * d;
                blk[QK / 2 + j] = (float)((p[2 + j] >> 4) - 8) * d;
            }
            store_block(x, c->d, b, blk);
        }
}

/* Attention reads the blocks in place (kv_attend_rows.c). */
static void q8_attend(const ea_kv_codec *c, int layer, const float *q, int nq, int pos0, const void *kbuf,
                      const void *vbuf, float *out) {
    ea_kv_rows_codec_attend(c, EA_KV_ROWS_Q8_0, layer, q, nq, pos0, kbuf, vbuf, out);
}

static void q4_attend(const ea_kv_codec *c, int layer, const float *q, int nq, int pos0, const void *kbuf,
                      const void *vbuf, float *out) {
    ea_kv_rows_codec_attend(c, EA_KV_ROWS_Q4_0, layer, q, nq, pos0, kbuf, vbuf, out);
}

static size_t q_overhead(const ea_kv_codec *c) { return 0; }
static void q_destroy(ea_kv_codec *c) {}

static const ea_kv_codec_ops q8_ops = {q8_row_bytes, q8_encode, q8_decode, q8_attend, q_overhead, q_destroy, NULL, NULL, NULL};
static const ea_kv_codec_ops q4_ops = {q4_row_bytes, q4_encode, q4_decode, q4_attend, q_overhead, q_destroy, NULL, NULL, NULL};

ea_status ea_kv_q8_setup(ea_kv_codec *c) {
    c->ops = &q8_ops;
    c->rows_fmt1 = 1 + EA_KV_ROWS_Q8_0;
    return EA_OK;
}

ea_status ea_kv_q4_setup(ea_kv_codec *c) {
    c->ops = &q4_ops;
    c->rows_fmt1 = 1 + EA_KV_ROWS_Q4_0;
    return EA_OK;
}
