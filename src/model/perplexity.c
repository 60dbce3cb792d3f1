/* Perplexity over non-overlapping windows, each scored from an empty cache. */
#include <math.h>
#include <stdlib.h>

#include "model/internal.h"

#define EA_PPL_CHUNK 512

double ea_log_softmax(const float *logits, int n, float *out) {
    float mx = logits[0];
    for (int i = 1; i < n; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    if (out)
        for (int i = 0; i < n; i++) out[i] = (float)(logits[i] - lse);
    return lse;
}

int ea_ppl_first_scored(ea_ppl_protocol proto, int len) {
    /* Targets are positions 1..len-1 (each predicted from the positions before it). */
    return proto == EA_PPL_LLAMA ? (len / 2 > 1 ? len / 2 : 1) : 1;
}

typedef struct {
    ea_ppl_protocol proto;
    int V;
    double nll;
    size_t scored;
} ppl_acc;

static ea_status ppl_chunk(void *user, const int *ids, size_t start, int len, int c0, int cl, const float *logits) {
    ppl_acc *a = user;
    int first = ea_ppl_first_scored(a->proto, len);
    for (int i = 0; i < cl; i++) {
        int t = c0 + i + 1; /* target position, predicted by row i */
        if (t < first || t >= len) continue;
        const float *row = logits + (size_t)i * a->V;
        a->nll += ea_log_softmax(row, a->V, NULL) - row[ids[start + t]];
        a->scored++;
    }
    return EA_OK;
}

ea_status ea_perplexity(ea_model *m, ea_kvcache *cache, const int *ids, size_t n, int ctx, ea_ppl_protocol proto,
                        ea_ppl_result *res) {
    res->tokens_scored = 0;
    res->mean_nll = res->ppl = NAN;
    if (ctx < 2 || ctx > ea_kvcache_capacity(cache))
        return ea_error(EA_ERR_ARG, "perplexity: window %d outside [2, cache capacity %d]", ctx, ea_kvcache_capacity(cache));
    if (n < 2) return ea_error(EA_ERR_ARG, "perplexity: need at least 2 tokens, got %zu", n);
    int V = m->cfg.vocab_size;
    /* A window runs through the cache in chunks, so the logits held are chunk × vocab, not ctx × vocab
     * (4,096 × 50,257 floats would be 823 MB). */
    int chunk = ctx < EA_PPL_CHUNK ? ctx : EA_PPL_CHUNK;
    float *logits = malloc(sizeof(float) * (size_t)V * (size_t)chunk);
    if (!logits) return ea_error(EA_ERR_NOMEM, "perplexity: out of memory");
    ppl_acc a = {proto, V, 0, 0};
    /* the window's last token predicts nothing but is run too: a window of at most one chunk is then
     * the same single forward pass as evaluate's, bit for bit */
    ea_window_run run = {.cache = cache, .logits = logits, .chunk = chunk, .chunk_end = ppl_chunk, .user = &a, .min_len = 2};
    ea_status st = ea_model_run_windows(m, ids, n, ctx, &run);
    double nll = a.nll;
    size_t scored = a.scored;
    free(logits);
    if (st) return st;
    res->tokens_scored = scored;
    res->mean_nll = scored ? nll / (double)scored : NAN;
    res->ppl = exp(res->mean_nll);
    return EA_OK;
}
