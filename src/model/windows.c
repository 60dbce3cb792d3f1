/* The one loop over context windows: every command that runs the model over a text (perplexity,
 * statistics, fitting, scoring) cuts it into windows, runs each from an empty cache and observes
 * it through a capture hook, the window's logits, or both. */
#include "model/internal.h"

ea_status ea_model_run_windows(ea_model *m, const int *ids, size_t n, int ctx, const ea_window_run *r) {
    const ea_config *cfg = ea_model_config(m);
    ea_kvcache *cache = r->cache;
    ea_status st = EA_OK;
    if (!r->list && (ctx < 1 || (r->cache && ctx > ea_kvcache_capacity(r->cache)) || ctx > cfg->n_positions))
        return ea_error(EA_ERR_ARG, "windows: window of %d tokens outside [1, %d]", ctx,
                        r->cache ? ea_kvcache_capacity(r->cache) : cfg->n_positions);
    if (!cache && (st = ea_kvcache_init(&cache, cfg, ctx, NULL))) return st;
    size_t n_win = r->list ? (size_t)r->n_list : n;
    for (size_t i = 0, off = 0; !st; i++) {
        size_t start;
        int len;
        if (r->list) {
            if (i >= (size_t)r->n_list) break;
            start = r->list[i].start;
            len = r->list[i].len;
            if (len > ea_kvcache_capacity(cache)) {
                st = ea_error(EA_ERR_ARG, "window %zu has %d tokens, above the cache capacity %d", i, len,
                              ea_kvcache_capacity(cache));
                break;
            }
        } else {
            if (off >= n) break;
            start = off;
            len = n - off < (size_t)ctx ? (int)(n - off) : ctx;
            off += (size_t)ctx;
        }
        if (len < r->min_len) break; /* only the last consecutive window can be this short */
        if (r->begin && (st = r->begin(r->user, cache, ids, start, len))) break;
        ea_model_set_capture(m, r->hook, r->hook_user);
        ea_kvcache_reset(cache);
        if (r->chunk > 0) {
            for (int c0 = 0; c0 < len && !st; c0 += r->chunk) {
                int cl = len - c0 < r->chunk ? len - c0 : r->chunk;
                st = ea_model_forward(m, cache, ids + start + c0, cl, r->logits, 1);
                if (!st && r->chunk_end) st = r->chunk_end(r->user, ids, start, len, c0, cl, r->logits);
            }
        } else
            st = ea_model_forward(m, cache, ids + start, len, r->logits, 1);
        if (st == EA_STOPPED) st = EA_OK;
        if (!st && r->end) st = r->end(r->user, cache, ids, start, len, r->logits);
        if (!st && r->progress) r->progress(r->progress_user, r->stage, r->list ? i + 1 : start + (size_t)len, n_win);
    }
    ea_model_set_capture(m, NULL, NULL);
    if (cache != r->cache) ea_kvcache_free(cache);
    return st;
}
