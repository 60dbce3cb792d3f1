/* Hidden states of one model over a text: covariance of all positions and per-token sums. */
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
};

static ea_status on_capture(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    ea_esap_hidden *h = user;
    if (site != EA_SITE_HIDDEN || layer != h->layer) return EA_OK;
    if (d != h->d) return ea_error(EA_ERR_MISMATCH, "hidden capture: width %d, expected %d", d, h->d);
    ea_status st = ea_cov_add(h->cov, x, n, ld);
    if (st) return st;
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
    return layer < h->n_layer ? EA_STOPPED : EA_OK;
}

static ea_status on_window(void *user, ea_kvcache *cache, const int *ids, size_t start, int len) {
    ((ea_esap_hidden *)user)->win = ids + start;
    return EA_OK;
}

ea_status ea_esap_hidden_collect(ea_model *m, int layer, const int *ids, size_t n, int ctx, ea_progress_fn progress,
                                 void *progress_user, const char *label, ea_esap_hidden **out) {
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
    ea_window_run run = {.hook = on_capture, .hook_user = h, .begin = on_window, .user = h, .progress = progress,
                         .progress_user = progress_user, .stage = label ? label : "hidden"};
    st = ea_model_run_windows(m, ids, n, ctx, &run);
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
