/* Evaluation on unseen text. Each window runs twice from an empty cache: once untouched, where
 * the capture hook measures every projector's reconstruction error on the true activations,
 * and once with the residual stream entering the chosen block(s) replaced by its
 * reconstruction. The two runs' next-token distributions give perplexities, KL and top-1
 * agreement. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ea/compress.h"

#include "core/isa.h"

/* GCC emits vzeroupper only when optimising, so unoptimised (Debug, sanitizer) AVX code in the
 * forward pass can leave the upper register halves dirty; libm's exp then runs ~10x slower
 * (measured: 100 log-softmax rows of 50257 take 1.65 s instead of 0.12 s). Clear them before
 * the exp-heavy scoring; with optimisation this is a no-op in effect. */
#ifdef EA_X86
EA_TARGET_AVX2_BEGIN
static void zeroupper_avx(void) { _mm256_zeroupper(); }
EA_TARGET_END
static void clear_avx_upper(void) {
    if (ea_isa_now() >= EA_ISA_AVX2) zeroupper_avx();
}
#else
static void clear_avx_upper(void) {}
#endif

ea_status ea_eval_result_init(ea_eval_result *r, const ea_compressor *c) {
    memset(r, 0, sizeof *r);
    r->n_sites = ea_compressor_count(c);
    r->site = calloc((size_t)(r->n_sites ? r->n_sites : 1), sizeof *r->site);
    return r->site ? EA_OK : ea_error(EA_ERR_NOMEM, "evaluate: out of memory");
}

void ea_eval_result_free(ea_eval_result *r) {
    free(r->site);
    memset(r, 0, sizeof *r);
}

double ea_eval_ppl_full(const ea_eval_result *r) { return r->scored ? exp(r->nll_full / (double)r->scored) : NAN; }
double ea_eval_ppl_compressed(const ea_eval_result *r) {
    return r->scored ? exp(r->nll_compressed / (double)r->scored) : NAN;
}
double ea_eval_kl(const ea_eval_result *r) { return r->scored ? r->kl_sum / (double)r->scored : NAN; }
double ea_eval_top1(const ea_eval_result *r) { return r->scored ? (double)r->top1_agree / (double)r->scored : NAN; }

typedef struct {
    const ea_compressor *c;
    ea_eval_result *res;
    int n_layer, hd, exclude_first;
    int *first[4], *count[4]; /* projectors of (site, layer): indices first..first+count-1 */
    int inject;               /* this run replaces hidden states when >= EA_INJECT_ALL */
    float *z, *xhat;          /* ctx × d scratch */
    ea_model *m;
    int inject_want;          /* the inject asked for (the first pass of a window runs without) */
    float *comp;              /* logits of the compressed pass */
    int vocab;
    ea_eval_result *r;
} eval_ctx;

static ea_status eval_capture(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    eval_ctx *e = user;
    if ((int)site < 0 || (int)site > 3 || layer < 0 || layer > e->n_layer) return 0;
    int skip = (e->exclude_first && pos0 == 0) ? 1 : 0;
    if (n - skip <= 0) return 0;
    float *row0 = x + (size_t)skip * ld;
    ea_status st = EA_OK;
    if (e->inject != EA_INJECT_NONE) {
        if (site != EA_SITE_HIDDEN || layer == e->n_layer || (e->inject >= 0 && layer != e->inject)) return 0;
        const ea_projector *p = ea_compressor_find(e->c, EA_SITE_HIDDEN, layer, -1);
        if (p) st = ea_projector_roundtrip(p, row0, n - skip, ld, row0, ld, e->z);
    } else {
        for (int i = 0; !st && i < e->count[site][layer]; i++) {
            int idx = e->first[site][layer] + i;
            const ea_projector *p = ea_compressor_get(e->c, idx);
            ea_site_ref r = ea_projector_site(p);
            int pd = ea_projector_dim(p), off = r.head >= 0 ? r.head * e->hd : 0;
            if (off + pd > d) {
                st = ea_error(EA_ERR_ARG, "evaluate: %s layer %d delivered %d columns, projector needs %d",
                              ea_site_name(site), layer, d, off + pd);
                break;
            }
            st = ea_projector_roundtrip(p, row0 + off, n - skip, ld, e->xhat, pd, e->z);
            if (!st) ea_recon_stats_add(&e->res->site[idx], row0 + off, ld, e->xhat, pd, n - skip, pd);
        }
    }
    return st;
}

static void eval_ctx_free(eval_ctx *e) {
    for (int s = 0; s < 4; s++) {
        free(e->first[s]);
        free(e->count[s]);
    }
    free(e->z);
    free(e->xhat);
}

static ea_status eval_ctx_init(eval_ctx *e, const ea_compressor *c, const ea_config *cfg, int ctx, ea_eval_result *r) {
    memset(e, 0, sizeof *e);
    e->c = c;
    e->res = r;
    e->n_layer = cfg->n_layer;
    e->hd = cfg->n_embd / cfg->n_head;
    e->exclude_first = ea_compressor_get_info(c)->exclude_first;
    e->inject = EA_INJECT_NONE;
    e->z = malloc((size_t)ctx * cfg->n_embd * sizeof *e->z);
    e->xhat = malloc((size_t)ctx * cfg->n_embd * sizeof *e->xhat);
    if (!e->z || !e->xhat) return ea_error(EA_ERR_NOMEM, "evaluate: out of memory");
    for (int s = 0; s < 4; s++) {
        e->first[s] = calloc((size_t)cfg->n_layer + 1, sizeof(int));
        e->count[s] = calloc((size_t)cfg->n_layer + 1, sizeof(int));
        if (!e->first[s] || !e->count[s]) return ea_error(EA_ERR_NOMEM, "evaluate: out of memory");
    }
    /* Projectors are sorted by (layer, site, head), so each (site, layer) is one run. */
    for (int i = ea_compressor_count(c) - 1; i >= 0; i--) {
        ea_site_ref ref = ea_projector_site(ea_compressor_get(c, i));
        e->first[ref.site][ref.layer] = i;
        e->count[ref.site][ref.layer]++;
    }
    return EA_OK;
}

/* Compare the two runs' predictions for targets ids[1..len-1]. With lse = log Σ exp(z):
 * NLL = lse − z[target]; KL(f ‖ c) = Σ p_f (z_f − z_c − (lse_f − lse_c)), p_f = exp(z_f − lse_f).
 * Rows are independent, so they are scored in parallel. */
static void score_window(ea_eval_result *r, const int *ids, int len, const float *full, const float *comp, int vocab) {
    double nll_f = 0, nll_c = 0, kl_sum = 0;
    long long agree = 0;
#pragma omp parallel for schedule(static) reduction(+ : nll_f, nll_c, kl_sum, agree)
    for (int t = 0; t < len - 1; t++) {
        clear_avx_upper();
        const float *zf = full + (size_t)t * vocab, *zc = comp + (size_t)t * vocab;
        double lse_f = ea_log_softmax(zf, vocab, NULL), lse_c = ea_log_softmax(zc, vocab, NULL);
        double shift = lse_f - lse_c, kl = 0;
        int af = 0, ac = 0;
        for (int v = 0; v < vocab; v++) {
            double pf = expf((float)((double)zf[v] - lse_f));
            kl += pf * ((double)zf[v] - (double)zc[v] - shift);
            if (zf[v] > zf[af]) af = v;
            if (zc[v] > zc[ac]) ac = v;
        }
        int target = ids[t + 1];
        nll_f += lse_f - zf[target];
        nll_c += lse_c - zc[target];
        /* KL >= 0: only a rounding-level negative reads as 0; a larger one is kept, so a bug shows */
        kl_sum += kl < 0 && kl > -EA_KL_ROUNDING ? 0 : kl;
        agree += af == ac;
    }
    r->nll_full += nll_f;
    r->nll_compressed += nll_c;
    r->kl_sum += kl_sum;
    r->top1_agree += (size_t)agree;
    r->scored += (size_t)(len > 1 ? len - 1 : 0);
}

/* After a window's exact pass: the compressed pass (hidden states replaced) and its scores. */
static ea_status eval_window(void *user, ea_kvcache *cache, const int *ids, size_t off, int len, const float *full) {
    eval_ctx *e = user;
    ea_status st = EA_OK;
    if (e->inject_want != EA_INJECT_NONE) {
        e->inject = e->inject_want;
        ea_kvcache_reset(cache);
        st = ea_model_forward(e->m, cache, ids + off, len, e->comp, 1);
        e->inject = EA_INJECT_NONE;
        if (st) return st;
        score_window(e->r, ids + off, len, full, e->comp, e->vocab);
    }
    e->r->windows++;
    e->r->tokens += (size_t)len;
    return EA_OK;
}

ea_status ea_compressor_evaluate(ea_model *m, const ea_compressor *c, const int *ids, size_t n,
                                 const ea_eval_params *p, ea_eval_result *r) {
    const ea_config *cfg = ea_model_config(m);
    ea_status st = ea_compressor_check_model(c, "compressor", m);
    if (st) return st;
    if (r->n_sites != ea_compressor_count(c) || !r->site)
        return ea_error(EA_ERR_ARG, "evaluate: result was not initialised for this compressor");
    int ctx = p->ctx > 0 ? p->ctx : ea_compress_default_ctx(cfg);
    if (ctx > cfg->n_positions)
        return ea_error(EA_ERR_ARG, "evaluate: window %d is longer than the model's %d positions", ctx,
                        cfg->n_positions);
    int inject = p->inject;
    if (inject != EA_INJECT_NONE && inject != EA_INJECT_ALL && (inject < 0 || inject >= cfg->n_layer))
        return ea_error(EA_ERR_ARG, "evaluate: inject layer %d is outside 0..%d", inject, cfg->n_layer - 1);
    for (int l = 0; inject != EA_INJECT_NONE && l < cfg->n_layer; l++)
        if ((inject == EA_INJECT_ALL || inject == l) && !ea_compressor_find(c, EA_SITE_HIDDEN, l, -1))
            return ea_error(EA_ERR_ARG, "evaluate: compressor has no hidden projector for layer %d to inject (fit with --sites hidden)", l);

    eval_ctx e;
    ea_kvcache *cache = NULL;
    float *full = NULL, *comp = NULL;
    int vocab = cfg->vocab_size;
    if ((st = eval_ctx_init(&e, c, cfg, ctx, r))) goto done;
    if ((st = ea_kvcache_init(&cache, cfg, ctx, NULL))) goto done;
    if (inject != EA_INJECT_NONE) {
        size_t sz;
        if (ea_mul_size((size_t)ctx, (size_t)vocab, &sz) || ea_mul_size(sz, sizeof(float), &sz)) {
            st = ea_error(EA_ERR_NOMEM, "evaluate: logits size overflows");
            goto done;
        }
        full = malloc(sz);
        comp = malloc(sz);
        if (!full || !comp) {
            st = ea_error(EA_ERR_NOMEM, "evaluate: cannot allocate 2 × %d × %d logits", ctx, vocab);
            goto done;
        }
    }
    e.m = m;
    e.inject_want = inject;
    e.comp = comp;
    e.vocab = vocab;
    e.r = r;
    ea_window_run run = {.cache = cache, .logits = full, .hook = eval_capture, .hook_user = &e, .end = eval_window,
                         .user = &e, .progress = p->progress, .progress_user = p->progress_user, .stage = "evaluate"};
    st = ea_model_run_windows(m, ids, n, ctx, &run);
done:
    free(full);
    free(comp);
    ea_kvcache_free(cache);
    eval_ctx_free(&e);
    return st;
}
