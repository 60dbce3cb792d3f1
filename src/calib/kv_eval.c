/* Scoring KV codecs against the exact model: every window runs once per codec from an empty cache,
 * and each codec's next-token distributions are compared with the reference entry's (the exact
 * float32 cache) on the same window, so memory stays at a few windows of logits whatever the text
 * length. */
#include <stdlib.h>

#include "calib/calib_internal.h"

typedef struct {
    ea_model *m;
    ea_kv_codec_eval *runs;
    ea_kvcache **caches;
    int nr, V;
    ea_ppl_protocol proto;
    float *prob, *logits;
    double *lse, t0;
    size_t steps, total;
    ea_progress_fn progress;
    void *progress_user;
} eval_ctx;

static ea_status eval_begin(void *user, ea_kvcache *cache, const int *ids, size_t s0, int len) {
    ((eval_ctx *)user)->t0 = ea_time_now();
    return EA_OK;
}

/* After the reference pass (run 0) of a window: its probabilities, then every codec on the window. */
static ea_status eval_end(void *user, ea_kvcache *cache0, const int *ids, size_t s0, int len, const float *base) {
    eval_ctx *e = user;
    int first = ea_ppl_first_scored(e->proto, len);
    for (int i = 0; i < e->nr; i++) {
        ea_kv_codec_eval *r = &e->runs[i];
        if (i) {
            ea_kvcache_reset(e->caches[i]);
            e->t0 = ea_time_now();
            ea_status st = ea_model_forward(e->m, e->caches[i], ids + s0, len, e->logits, 1);
            if (st) return st;
        }
        r->prefill_s += ea_time_now() - e->t0;
        r->prefill_tok += (size_t)len;
        if (i == 0) ea_kv_ref_prepare(base, first, len, e->V, e->prob, e->lse);
        ea_kv_score_window(&r->score, base, e->prob, e->lse, i ? e->logits : base, ids + s0, first, len, e->V);
        if (e->progress) e->progress(e->progress_user, "eval", ++e->steps, e->total);
    }
    return EA_OK;
}

ea_status ea_kv_codecs_eval(ea_model *m, const int *ids, size_t n, int ctx, ea_ppl_protocol proto,
                            const ea_kv_codec *const *codecs, int n_codecs, ea_kv_codec_eval *out, ea_progress_fn progress,
                            void *progress_user) {
    const ea_config *cfg = ea_model_config(m);
    int V = cfg->vocab_size;
    for (int i = 0; i < n_codecs; i++) out[i] = (ea_kv_codec_eval){0};
    if (n_codecs < 1 || ctx < 2 || ctx > cfg->n_positions || n < 2)
        return ea_error(EA_ERR_ARG, "kv eval: %d codecs, window %d (need [2, %d]), %zu tokens (need 2)", n_codecs, ctx,
                        cfg->n_positions, n);
    size_t cells = (size_t)ctx * (size_t)V;
    eval_ctx e = {m, out, calloc((size_t)n_codecs, sizeof(ea_kvcache *)), n_codecs, V, proto, malloc(sizeof(float) * cells),
                  malloc(sizeof(float) * cells), malloc(sizeof(double) * (size_t)ctx), 0, 0, 0, progress, progress_user};
    float *base = malloc(sizeof(float) * cells);
    ea_status st = (!e.caches || !e.prob || !e.logits || !e.lse || !base)
                       ? ea_error(EA_ERR_NOMEM, "kv eval: out of memory for %d x %d logits", ctx, V)
                       : EA_OK;
    for (int i = 0; i < n_codecs && !st; i++) {
        st = ea_kvcache_init(&e.caches[i], cfg, ctx, codecs[i]);
        if (!st) out[i].cache_bytes = ea_kvcache_bytes_for(e.caches[i], ctx);
    }
    for (size_t s0 = 0; s0 + 1 < n; s0 += (size_t)ctx) e.total += (size_t)n_codecs;
    ea_window_run run = {.cache = st ? NULL : e.caches[0], .logits = base, .begin = eval_begin, .end = eval_end, .user = &e,
                         .min_len = 2};
    if (!st) st = ea_model_run_windows(m, ids, n, ctx, &run);
    for (int i = 0; i < n_codecs && e.caches; i++) ea_kvcache_free(e.caches[i]);
    free(e.caches);
    free(e.prob);
    free(e.logits);
    free(e.lse);
    free(base);
    return st;
}
