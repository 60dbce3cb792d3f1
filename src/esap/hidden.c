/* Hidden states of one model over a text: covariance of all positions and per-token sums. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ea/spectral.h"
#include "esap/esap_internal.h"

struct ea_esap_hidden {
    int d, vocab, layer;
    size_t positions;
    ea_cov *cov;
    int *slot;      /* vocab: token id → row of sums, -1 if absent */
    int *count;     /* per slot */
    double *sums;   /* n_slots × d */
    int n_slots;
    const int *win; /* token ids of the window being run */
    int n_layer;
    int stopped;    /* the hook ended the pass on purpose after the captured layer */
    ea_status err;  /* why the hook stopped the forward pass, and the message */
    char msg[512];
};

static int hook_fail(ea_esap_hidden *h, ea_status st) {
    h->err = st;
    snprintf(h->msg, sizeof h->msg, "%s", ea_last_error());
    return 1;
}

static int on_capture(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    ea_esap_hidden *h = user;
    if (site != EA_SITE_HIDDEN || layer != h->layer) return 0;
    if (d != h->d) return hook_fail(h, ea_error(EA_ERR_MISMATCH, "hidden capture: width %d, expected %d", d, h->d));
    ea_status st = ea_cov_add(h->cov, x, n, ld);
    if (st) return hook_fail(h, st);
    for (int r = 0; r < n; r++) {
        int s = h->slot[h->win[pos0 + r]];
        double *sum = h->sums + (size_t)s * d;
        const float *row = x + (size_t)r * ld;
        for (int j = 0; j < d; j++) sum[j] += row[j];
        h->count[s]++;
    }
    h->positions += (size_t)n;
    /* Nothing above this layer is needed: stop the pass here (the cache is reset before every
     * window, so the half-run window leaves nothing behind). */
    h->stopped = layer < h->n_layer;
    return h->stopped;
}

ea_status ea_esap_hidden_collect(ea_model *m, int layer, const int *ids, size_t n, int ctx, ea_esap_progress_fn progress,
                                 const char *label, ea_esap_hidden **out) {
    *out = NULL;
    const ea_config *cfg = ea_model_config(m);
    if (layer < 0 || layer > cfg->n_layer)
        return ea_error(EA_ERR_ARG, "%s: hidden layer %d out of range 0..%d", ea_model_dir(m), layer, cfg->n_layer);
    if (ctx < 1 || ctx > cfg->n_positions)
        return ea_error(EA_ERR_ARG, "%s: window of %d tokens (model allows 1..%d)", ea_model_dir(m), ctx,
                        cfg->n_positions);
    if (n == 0) return ea_error(EA_ERR_ARG, "hidden capture: no tokens");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= cfg->vocab_size)
            return ea_error(EA_ERR_ARG, "%s: token %d at position %zu is outside the vocabulary of %d",
                            ea_model_dir(m), ids[i], i, cfg->vocab_size);
    ea_esap_hidden *h = calloc(1, sizeof *h);
    if (!h) return ea_error(EA_ERR_NOMEM, "hidden capture: out of memory");
    h->d = cfg->n_embd;
    h->vocab = cfg->vocab_size;
    h->layer = layer;
    h->n_layer = cfg->n_layer;
    h->slot = malloc((size_t)cfg->vocab_size * sizeof *h->slot);
    ea_status st = EA_OK;
    if (!h->slot) {
        st = ea_error(EA_ERR_NOMEM, "hidden capture: out of memory");
        goto fail;
    }
    for (int i = 0; i < cfg->vocab_size; i++) h->slot[i] = -1;
    for (size_t i = 0; i < n; i++)
        if (h->slot[ids[i]] < 0) h->slot[ids[i]] = h->n_slots++;
    h->count = calloc((size_t)h->n_slots, sizeof *h->count);
    h->sums = calloc((size_t)h->n_slots * (size_t)h->d, sizeof *h->sums);
    if (!h->count || !h->sums) {
        st = ea_error(EA_ERR_NOMEM, "hidden capture: cannot allocate %d token sums", h->n_slots);
        goto fail;
    }
    if ((st = ea_cov_init(&h->cov, h->d))) goto fail;
    ea_kvcache *cache;
    if ((st = ea_kvcache_init(&cache, cfg, ctx, NULL))) goto fail;
    ea_model_set_capture(m, on_capture, h);
    for (size_t off = 0; off < n && !st; off += (size_t)ctx) {
        int len = n - off < (size_t)ctx ? (int)(n - off) : ctx;
        h->win = ids + off;
        ea_kvcache_reset(cache);
        h->stopped = 0;
        st = ea_model_forward(m, cache, ids + off, len, NULL, 0);
        if (st && h->stopped && !h->err) st = EA_OK;
        if (st && h->err) st = ea_error(h->err, "%s: hidden layer %d, window at token %zu: %s", ea_model_dir(m), layer,
                                        off, h->msg);
        if (progress) progress(label ? label : "hidden", off + (size_t)len, n);
    }
    ea_model_set_capture(m, NULL, NULL);
    ea_kvcache_free(cache);
    if (st) goto fail;
    if (h->positions < 2) {
        st = ea_error(EA_ERR_ARG, "%s: hidden layer %d captured %zu positions (need at least 2)", ea_model_dir(m),
                      layer, h->positions);
        goto fail;
    }
    h->win = NULL;
    *out = h;
    return EA_OK;
fail:
    ea_esap_hidden_free(h);
    return st;
}

void ea_esap_hidden_free(ea_esap_hidden *h) {
    if (!h) return;
    ea_cov_free(h->cov);
    free(h->slot);
    free(h->count);
    free(h->sums);
    free(h);
}

int ea_esap_hidden_dim(const ea_esap_hidden *h) { return h->d; }
size_t ea_esap_hidden_positions(const ea_esap_hidden *h) { return h->positions; }

ea_status ea_esap_hidden_covariance(const ea_esap_hidden *h, double *cov) { return ea_cov_matrix(h->cov, 0, cov); }

int ea_esap_hidden_token_count(const ea_esap_hidden *h, int id) {
    if (id < 0 || id >= h->vocab || h->slot[id] < 0) return 0;
    return h->count[h->slot[id]];
}

ea_status ea_esap_hidden_token_mean(const ea_esap_hidden *h, int id, float *out) {
    int c = ea_esap_hidden_token_count(h, id);
    if (c == 0) return ea_error(EA_ERR_ARG, "hidden capture: token %d never occurred", id);
    const double *sum = h->sums + (size_t)h->slot[id] * h->d;
    for (int j = 0; j < h->d; j++) out[j] = (float)(sum[j] / c);
    return EA_OK;
}
