/* Decode speed of a KV codec at a given context: what generation pays per token. */
#include <stdlib.h>

#include "calib/calib_internal.h"

ea_status ea_kv_decode_rate(ea_model *m, const ea_kv_codec *codec, const int *ids, size_t n, int ctx, int n_decode,
                            double *tok_s) {
    const ea_config *cfg = ea_model_config(m);
    *tok_s = 0;
    if (n < 1 || ctx < 2 || ctx > cfg->n_positions)
        return ea_error(EA_ERR_ARG, "decode rate: context %d outside [2, %d] or no tokens", ctx, cfg->n_positions);
    if (n_decode >= ctx) n_decode = ctx - 1;
    if (n_decode < 1) n_decode = 1;
    int n_prefill = ctx - n_decode;
    int *tok = malloc(sizeof(int) * (size_t)ctx);
    float *logits = malloc(sizeof(float) * (size_t)cfg->vocab_size);
    ea_kvcache *cache = NULL;
    ea_status st = (!tok || !logits) ? ea_error(EA_ERR_NOMEM, "decode rate: out of memory") : EA_OK;
    if (!st) st = ea_kvcache_init(&cache, cfg, ctx, codec);
    if (!st) {
        for (int i = 0; i < ctx; i++) tok[i] = ids[(size_t)i % n];
        st = ea_model_forward(m, cache, tok, n_prefill, NULL, 0);
    }
    double t0 = ea_time_now();
    for (int i = 0; i < n_decode && !st; i++) st = ea_model_forward(m, cache, tok + n_prefill + i, 1, logits, 0);
    double dt = ea_time_now() - t0;
    if (!st) *tok_s = dt > 0 ? n_decode / dt : 0;
    ea_kvcache_free(cache);
    free(tok);
    free(logits);
    return st;
}
