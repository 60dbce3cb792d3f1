/* Calibration: run the model over windows of text (each from an empty cache), accumulate a
 * float64 covariance per site through the capture hook, keep the top eigenvectors. */
#include <stdlib.h>
#include <string.h>

#include "ea/compress.h"

int ea_compress_default_ctx(const ea_config *cfg) {
    return cfg->n_positions < EA_COMPRESS_DEFAULT_CTX ? cfg->n_positions : EA_COMPRESS_DEFAULT_CTX;
}

ea_fit_params ea_fit_params_default(void) {
    ea_fit_params p;
    memset(&p, 0, sizeof p);
    p.rule.variance = 0.95;
    p.sites = EA_SITE_BIT(EA_SITE_HIDDEN) | EA_SITE_BIT(EA_SITE_K) | EA_SITE_BIT(EA_SITE_V);
    return p;
}

/* One accumulator per (site, layer, head); by_site[s][layer] lists the slots a hook call feeds. */
typedef struct {
    ea_site_ref ref;
    ea_cov *cov;
} slot;

typedef struct {
    slot *slots;
    int n_slots;
    int *first[4], *count[4]; /* per site: first slot and slot count for each layer */
    int n_layer, n_embd, hd, exclude_first;
} fit_ctx;

static ea_status fit_capture(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    fit_ctx *f = user;
    if ((int)site < 0 || (int)site > 3 || !f->first[site] || layer < 0 || layer > f->n_layer) return 0;
    int cnt = f->count[site][layer];
    if (!cnt) return 0;
    if (d != f->n_embd) {
        return ea_error(EA_ERR_ARG, "fit: %s layer %d delivered %d columns, expected %d", ea_site_name(site), layer, d,
                        f->n_embd);
    }
    int skip = (f->exclude_first && pos0 == 0) ? 1 : 0;
    if (n - skip <= 0) return 0;
    for (int i = 0; i < cnt; i++) {
        slot *s = &f->slots[f->first[site][layer] + i];
        int off = s->ref.head >= 0 ? s->ref.head * f->hd : 0;
        ea_status st = ea_cov_add(s->cov, x + (size_t)skip * ld + off, n - skip, ld);
        if (st) return st;
    }
    return EA_OK;
}

static void fit_ctx_free(fit_ctx *f) {
    for (int i = 0; i < f->n_slots; i++) ea_cov_free(f->slots[i].cov);
    free(f->slots);
    for (int s = 0; s < 4; s++) {
        free(f->first[s]);
        free(f->count[s]);
    }
}

static ea_status fit_ctx_init(fit_ctx *f, const ea_config *cfg, const ea_fit_params *p) {
    memset(f, 0, sizeof *f);
    f->n_layer = cfg->n_layer;
    f->n_embd = cfg->n_embd;
    f->hd = cfg->n_embd / cfg->n_head;
    f->exclude_first = p->exclude_first;
    int cap = 0;
    for (int s = 0; s < 4; s++)
        if (p->sites & EA_SITE_BIT(s)) {
            int layers = s == EA_SITE_HIDDEN ? cfg->n_layer + 1 : cfg->n_layer;
            cap += layers * ((p->per_head && s != EA_SITE_HIDDEN) ? cfg->n_head : 1);
        }
    f->slots = calloc((size_t)cap, sizeof *f->slots);
    if (!f->slots) return ea_error(EA_ERR_NOMEM, "fit: out of memory");
    for (int s = 0; s < 4; s++) {
        if (!(p->sites & EA_SITE_BIT(s))) continue;
        int layers = s == EA_SITE_HIDDEN ? cfg->n_layer + 1 : cfg->n_layer;
        int heads = (p->per_head && s != EA_SITE_HIDDEN) ? cfg->n_head : 0;
        /* Sized n_layer + 1 for every site so a hook call's layer index is always in range. */
        f->first[s] = calloc((size_t)cfg->n_layer + 1, sizeof(int));
        f->count[s] = calloc((size_t)cfg->n_layer + 1, sizeof(int));
        if (!f->first[s] || !f->count[s]) return ea_error(EA_ERR_NOMEM, "fit: out of memory");
        for (int l = 0; l < layers; l++) {
            f->first[s][l] = f->n_slots;
            for (int h = heads ? 0 : -1; h < heads; h++) {
                slot *sl = &f->slots[f->n_slots];
                sl->ref = (ea_site_ref){(ea_site)s, l, h};
                ea_status st = ea_cov_init(&sl->cov, h >= 0 ? f->hd : cfg->n_embd);
                if (st) return st;
                f->n_slots++;
                f->count[s][l]++;
            }
        }
    }
    return EA_OK;
}

ea_status ea_compressor_fit(ea_model *m, const int *ids, size_t n, const ea_fit_params *p, ea_compressor **out) {
    *out = NULL;
    const ea_config *cfg = ea_model_config(m);
    int ctx = p->ctx > 0 ? p->ctx : ea_compress_default_ctx(cfg);
    if (ctx > cfg->n_positions)
        return ea_error(EA_ERR_ARG, "fit: window %d is longer than the model's %d positions", ctx, cfg->n_positions);
    if (!(p->sites & 0xfu) || (p->sites & ~0xfu))
        return ea_error(EA_ERR_ARG, "fit: choose at least one of the sites hidden, q, k, v");
    if (p->rule.rank <= 0 && !(p->rule.variance > 0 && p->rule.variance <= 1))
        return ea_error(EA_ERR_ARG, "fit: need --rank K >= 1 or --variance in (0, 1], got %g", p->rule.variance);
    if (p->rule.rank > cfg->n_embd)
        return ea_error(EA_ERR_ARG, "fit: rank %d exceeds the model width %d", p->rule.rank, cfg->n_embd);
    size_t rows = 0;
    for (size_t off = 0; off < n; off += (size_t)ctx) {
        size_t len = n - off < (size_t)ctx ? n - off : (size_t)ctx;
        rows += len - (p->exclude_first ? 1 : 0);
    }
    if (rows < 2)
        return ea_error(EA_ERR_ARG, "fit: %zu calibration tokens give %zu rows per site; need at least 2", n, rows);

    fit_ctx f;
    ea_kvcache *cache = NULL;
    ea_projector **proj = NULL;
    int np = 0;
    ea_status st = fit_ctx_init(&f, cfg, p);
    if (!st) st = ea_kvcache_init(&cache, cfg, ctx, NULL);
    if (st) goto done;
    ea_window_run run = {.cache = cache, .hook = fit_capture, .hook_user = &f, .progress = p->progress,
                         .progress_user = p->progress_user, .stage = "fit"};
    st = ea_model_run_windows(m, ids, n, ctx, &run);
    if (st) goto done;
    proj = calloc((size_t)f.n_slots, sizeof *proj);
    if (!proj) {
        st = ea_error(EA_ERR_NOMEM, "fit: out of memory");
        goto done;
    }
    for (np = 0; np < f.n_slots; np++)
        if ((st = ea_projector_from_cov(f.slots[np].cov, p->rule, f.slots[np].ref, &proj[np]))) goto done;
    ea_compressor_info info;
    memset(&info, 0, sizeof info);
    info.fingerprint = ea_model_fingerprint(m);
    info.n_layer = cfg->n_layer;
    info.n_embd = cfg->n_embd;
    info.n_head = cfg->n_head;
    info.calib_tokens = n;
    info.calib_rows = rows;
    info.ctx = ctx;
    info.rule = p->rule;
    if (info.rule.rank > 0) info.rule.variance = 0;
    info.exclude_first = p->exclude_first ? 1 : 0;
    info.library_version = EA_VERSION;
    info.format_version = EA_COMPRESSOR_FORMAT_VERSION;
    st = ea_compressor_create(&info, proj, np, out);
    np = 0; /* the projectors belong to the compressor now, also on failure; the array does not */
done:
    if (proj)
        for (int i = 0; i < np; i++) ea_projector_free(proj[i]);
    free(proj);
    ea_kvcache_free(cache);
    fit_ctx_free(&f);
    return st;
}
