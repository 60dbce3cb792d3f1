/* libFuzzer target: the klt codec file loader (ea_kv_codec_load: safetensors with part.{p}.*
 * tensors and format/shape metadata) for a small model shape. Oracle: what loads is usable: a
 * finite row encodes, decodes and attends to finite numbers, and bits per value are in (0, 16];
 * every refusal names the file. */
#include <math.h>

#include "kv/kv_internal.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[300];
    if (!path[0]) fuzz_path(path, sizeof path, "codec.safetensors");
    fuzz_write(path, data, size);

    ea_config cfg = {0};
    cfg.n_layer = 2;
    cfg.n_head = 2;
    cfg.n_embd = 16;
    cfg.n_positions = 64;
    cfg.n_inner = 64;
    cfg.vocab_size = 32;
    ea_kv_codec *c = NULL;
    if (ea_kv_codec_load(path, &cfg, &c) != EA_OK) {
        FUZZ_CHECK(c == NULL, "a refused file left a codec");
        FUZZ_CHECK(strstr(ea_last_error(), "codec.safetensors") != NULL, "message does not name the file: %s",
                   ea_last_error());
        return 0;
    }
    double bpv = ea_kv_codec_bits_per_value(c);
    FUZZ_CHECK(bpv > 0 && bpv <= 16.5, "bits per value %g", bpv);
    int d = cfg.n_embd, T = 3;
    float x[16], q[16], out[16], y[3 * 16];
    for (int l = 0; l < cfg.n_layer; l++) {
        size_t rk = c->ops->row_bytes(c, l, EA_KV_K), rv = c->ops->row_bytes(c, l, EA_KV_V);
        size_t sk = ea_kv_codec_seq_bytes(c, l, EA_KV_K), sv = ea_kv_codec_seq_bytes(c, l, EA_KV_V);
        unsigned char *kb = calloc(1, ea_kv_codec_buffer_bytes(c, l, EA_KV_K, (size_t)T) + 8);
        unsigned char *vb = calloc(1, ea_kv_codec_buffer_bytes(c, l, EA_KV_V, (size_t)T) + 8);
        for (int t = 0; t < T; t++) {
            for (int i = 0; i < d; i++) x[i] = (float)(((i + t) % 5) - 2) * 0.5f;
            c->ops->encode(c, l, EA_KV_K, t, x, kb + sk + rk * t);
            c->ops->encode(c, l, EA_KV_V, t, x, vb + sv + rv * t);
        }
        c->ops->decode(c, l, EA_KV_V, 0, T, vb + sv, y);
        for (int i = 0; i < d; i++) q[i] = (float)((i % 3) - 1);
        c->ops->attend(c, l, q, 1, T - 1, kb + sk, vb + sv, out);
        int finite = 1;
        for (int i = 0; i < d; i++) finite &= isfinite(out[i]) != 0;
        for (int i = 0; i < T * d; i++) finite &= isfinite(y[i]) != 0;
        FUZZ_CHECK(finite, "layer %d: a loaded codec gives non-finite values for finite rows", l);
        free(kb);
        free(vb);
    }
    ea_kv_codec_free(c);
    return 0;
}
