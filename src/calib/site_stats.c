/* Per-site covariance accumulation over calibration windows, and the per-variant summaries. */
#include "ea/calib.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ea_site_kind_name(int kind) {
    static const char *names[EA_SITE_KINDS] = {"hidden", "q", "k", "v", "q_pre", "k_pre", "wte"};
    return kind >= 0 && kind < EA_SITE_KINDS ? names[kind] : "?";
}

const char *ea_variant_name(ea_variant v) {
    switch (v) {
    case EA_VARIANT_ALL: return "all";
    case EA_VARIANT_EXCLUDE_FIRST: return "exclude_first";
    case EA_VARIANT_STANDARDIZED: return "standardized";
    }
    return "?";
}

static int layers_of(int kind, int n_layer) {
    return kind == EA_SITE_HIDDEN ? n_layer + 1 : kind == EA_SITE_KIND_WTE ? 1 : n_layer;
}

void ea_site_stats_free(ea_site_stats *s) {
    if (!s) return;
    for (int i = 0; i < s->n_acc; i++) {
        ea_cov_free(s->acc[i].first);
        ea_cov_free(s->acc[i].rest);
        free(s->acc[i].pool_sum);
    }
    free(s->acc);
    free(s->index);
    free(s);
}

ea_status ea_site_stats_init(ea_site_stats **out, const ea_config *cfg, unsigned kinds_mask, int per_head) {
    *out = NULL;
    int L = cfg->n_layer, H = cfg->n_head, C = cfg->n_embd, HD = ea_config_head_dim(cfg), KVH = ea_config_kv_heads(cfg);
    if (L < 1 || H < 1 || C < 1 || HD < 1 || H % KVH)
        return ea_error(EA_ERR_ARG, "site stats: unusable shape (n_layer %d, n_head %d, n_embd %d)", L, H, C);
    ea_site_stats *s = calloc(1, sizeof *s);
    if (!s) return ea_error(EA_ERR_NOMEM, "site stats: out of memory");
    s->n_layer = L;
    s->n_head = H;
    s->n_embd = C;
    s->n_kv_head = KVH;
    s->head_dim = HD;
    s->per_head = per_head;
    int total = 0;
    for (int k = 0; k < EA_SITE_KINDS; k++) {
        int heads = per_head && k >= EA_SITE_Q && k <= EA_SITE_K_PRE ? (k == EA_SITE_Q || k == EA_SITE_Q_PRE ? H : KVH) : 0;
        if (kinds_mask & (1u << k)) total += layers_of(k, L) * (1 + heads);
    }
    s->acc = calloc((size_t)(total ? total : 1), sizeof *s->acc);
    s->index = malloc(sizeof(int) * EA_SITE_KINDS * (size_t)(L + 1));
    if (!s->acc || !s->index) {
        ea_site_stats_free(s);
        return ea_error(EA_ERR_NOMEM, "site stats: out of memory");
    }
    for (int i = 0; i < EA_SITE_KINDS * (L + 1); i++) s->index[i] = -1;
    for (int k = 0; k < EA_SITE_KINDS; k++) {
        if (!(kinds_mask & (1u << k))) continue;
        /* q: n_head heads; k, v: n_kv_head heads (fewer with GQA); all of head_dim */
        int q_like = k == EA_SITE_Q || k == EA_SITE_Q_PRE, kv_like = k == EA_SITE_K || k == EA_SITE_V || k == EA_SITE_K_PRE;
        int heads = per_head && (q_like || kv_like) ? (q_like ? H : KVH) : 0;
        int width = q_like ? H * HD : kv_like ? KVH * HD : C;
        for (int l = 0; l < layers_of(k, L); l++) {
            s->index[k * (L + 1) + l] = s->n_acc;
            for (int h = -1; h < heads; h++) {
                ea_site_acc *a = &s->acc[s->n_acc++];
                a->kind = k;
                a->layer = k == EA_SITE_KIND_WTE ? -1 : l;
                a->head = h;
                a->d = h < 0 ? width : HD;
                ea_status st = ea_cov_init(&a->first, a->d);
                if (!st) st = ea_cov_init(&a->rest, a->d);
                if (st) {
                    ea_site_stats_free(s);
                    return st;
                }
            }
        }
    }
    *out = s;
    return EA_OK;
}

ea_status ea_site_stats_set_protocol(ea_site_stats *s, int uncentered, ea_pool pool) {
    if (pool != EA_POOL_NONE && pool != EA_POOL_MEAN && pool != EA_POOL_LAST)
        return ea_error(EA_ERR_ARG, "site stats: unknown pooling %d", (int)pool);
    for (int i = 0; i < s->n_acc; i++)
        if (ea_cov_count(s->acc[i].first) + ea_cov_count(s->acc[i].rest) > 0)
            return ea_error(EA_ERR_ARG, "site stats: the protocol is set before any rows are added");
    s->uncentered = uncentered != 0;
    s->pool = (int)pool;
    for (int i = 0; i < s->n_acc && pool; i++) {
        ea_site_acc *a = &s->acc[i];
        if (a->kind == EA_SITE_KIND_WTE || a->pool_sum) continue;
        if (!(a->pool_sum = calloc((size_t)a->d, sizeof *a->pool_sum)))
            return ea_error(EA_ERR_NOMEM, "site stats: out of memory");
    }
    return EA_OK;
}

ea_status ea_site_stats_end_sample(ea_site_stats *s) {
    if (!s->pool) return EA_OK;
    ea_status st = EA_OK;
    for (int i = 0; i < s->n_acc && !st; i++) {
        ea_site_acc *a = &s->acc[i];
        if (!a->pool_sum || a->pool_rows == 0) continue;
        if (s->pool == EA_POOL_MEAN)
            for (int j = 0; j < a->d; j++) a->pool_sum[j] /= a->pool_rows;
        st = ea_cov_add_f64(a->rest, a->pool_sum, 1, a->d);
        memset(a->pool_sum, 0, sizeof *a->pool_sum * (size_t)a->d);
        a->pool_rows = 0;
    }
    return st;
}

/* Pooling: the rows only update the current sample's vector. */
static void acc_pool(ea_site_acc *a, int pool, const float *x, int n, int ld) {
    if (pool == EA_POOL_LAST) {
        for (int j = 0; j < a->d; j++) a->pool_sum[j] = x[(size_t)(n - 1) * ld + j];
    } else {
        for (int r = 0; r < n; r++)
            for (int j = 0; j < a->d; j++) a->pool_sum[j] += x[(size_t)r * ld + j];
    }
    a->pool_rows += n;
}

/* Rows at position 0 of a window go to `first`, the others to `rest`. */
static ea_status acc_add(ea_site_acc *a, int pool, const float *x, int pos0, int n, int ld) {
    if (pool && a->pool_sum) {
        for (size_t i = 0; i < (size_t)n * ld; i += (size_t)ld)
            for (int j = 0; j < a->d; j++)
                if (!isfinite(x[i + (size_t)j])) return ea_error(EA_ERR_NUMERIC, "non-finite activation (%g)", (double)x[i + (size_t)j]);
        acc_pool(a, pool, x, n, ld);
        return EA_OK;
    }
    int nf = pos0 == 0 ? 1 : 0;
    ea_status st = ea_cov_add(a->first, x, nf, ld);
    if (!st) st = ea_cov_add(a->rest, x + (size_t)nf * ld, n - nf, ld);
    return st;
}

ea_status ea_site_stats_capture(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    ea_site_stats *s = user;
    if (s->err) return ea_error(s->err, "%s", s->errmsg);
    if ((int)site < 0 || (int)site > EA_SITE_K_PRE || layer < 0 || layer > s->n_layer || n < 1) return EA_OK;
    int gi = s->index[(int)site * (s->n_layer + 1) + layer];
    if (gi < 0) return EA_OK; /* not asked for */
    double t0 = ea_time_now();
    ea_site_acc *g = &s->acc[gi];
    ea_status st = EA_OK;
    if (d != g->d)
        st = ea_error(EA_ERR_MISMATCH, "capture gave %d columns, expected %d", d, g->d);
    if (!st) st = acc_add(g, s->pool, x, pos0, n, ld);
    if (s->per_head && site != EA_SITE_HIDDEN) {
        int hd = s->head_dim, nh = site == EA_SITE_Q || site == EA_SITE_Q_PRE ? s->n_head : s->n_kv_head;
        for (int h = 0; h < nh && !st; h++) st = acc_add(&s->acc[gi + 1 + h], s->pool, x + (size_t)h * hd, pos0, n, ld);
    }
    s->accumulate_s += ea_time_now() - t0;
    if (st) {
        s->err = st;
        snprintf(s->errmsg, sizeof s->errmsg, "%s layer %d: %s", ea_site_name(site), layer, ea_last_error());
        return ea_error(st, "%s", s->errmsg);
    }
    return EA_OK;
}

ea_status ea_site_stats_add_wte(ea_site_stats *s, const float *wte, int vocab, int d) {
    int gi = s->index[EA_SITE_KIND_WTE * (s->n_layer + 1)];
    if (gi < 0) return EA_OK;
    if (d != s->acc[gi].d) return ea_error(EA_ERR_MISMATCH, "wte has %d columns, expected %d", d, s->acc[gi].d);
    double t0 = ea_time_now();
    /* Every row is a "rest" row: there is no position in a vocabulary. */
    ea_status st = ea_cov_add(s->acc[gi].rest, wte, vocab, d);
    s->accumulate_s += ea_time_now() - t0;
    if (st) return ea_error(st, "wte: %s", ea_last_error());
    return EA_OK;
}

ea_status ea_windows_consecutive(size_t n, int ctx, ea_window **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    if (ctx < 1 || n == 0) return ea_error(EA_ERR_ARG, "windows: %zu tokens in windows of %d", n, ctx);
    size_t nw = (n + (size_t)ctx - 1) / (size_t)ctx;
    if (nw > INT_MAX) return ea_error(EA_ERR_ARG, "windows: %zu windows are too many", nw);
    ea_window *w = malloc(nw * sizeof *w);
    if (!w) return ea_error(EA_ERR_NOMEM, "windows: out of memory");
    for (size_t i = 0; i < nw; i++) {
        w[i].start = i * (size_t)ctx;
        w[i].len = (int)(n - w[i].start < (size_t)ctx ? n - w[i].start : (size_t)ctx);
    }
    *out = w;
    *n_out = (int)nw;
    return EA_OK;
}

ea_status ea_windows_sample(size_t n, int count, int len, uint64_t seed, ea_window **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    if (count < 1 || len < 1 || (size_t)len > n)
        return ea_error(EA_ERR_ARG, "windows: cannot sample %d windows of %d tokens from %zu tokens", count, len, n);
    ea_window *w = malloc((size_t)count * sizeof *w);
    if (!w) return ea_error(EA_ERR_NOMEM, "windows: out of memory");
    ea_rng r;
    ea_rng_seed(&r, seed);
    for (int i = 0; i < count; i++) {
        w[i].start = (size_t)ea_rng_below(&r, (uint64_t)(n - (size_t)len) + 1);
        w[i].len = len;
    }
    *out = w;
    *n_out = count;
    return EA_OK;
}

typedef struct {
    ea_site_stats *s;
    double t0, total, acc0;
} run_timer;

static ea_status timer_begin(void *user, ea_kvcache *cache, const int *ids, size_t start, int len) {
    ((run_timer *)user)->t0 = ea_time_now();
    return EA_OK;
}

static ea_status timer_end(void *user, ea_kvcache *cache, const int *ids, size_t start, int len, const float *logits) {
    run_timer *t = user;
    t->total += ea_time_now() - t->t0;
    return ea_site_stats_end_sample(t->s); /* a sample is a window */
}

ea_status ea_site_stats_run(ea_site_stats *s, ea_model *m, ea_kvcache *cache, const int *ids, const ea_window *w,
                            int n_windows, ea_progress_fn progress, void *progress_user, double *forward_s) {
    run_timer t = {s, 0, 0, s->accumulate_s};
    ea_window_run run = {.cache = cache, .hook = ea_site_stats_capture, .hook_user = s, .begin = timer_begin,
                         .end = timer_end, .user = &t, .list = w, .n_list = n_windows, .progress = progress,
                         .progress_user = progress_user, .stage = "analyze"};
    ea_status st = ea_model_run_windows(m, ids, 0, 0, &run);
    if (forward_s) *forward_s = t.total - (s->accumulate_s - t.acc0);
    return st;
}

void ea_site_results_free(ea_site_result *r, int n) {
    if (!r) return;
    for (int i = 0; i < n; i++) ea_spectrum_summary_free(&r[i].sum);
    free(r);
}

/* The note's spectrum: eigenvalues of the second-moment matrix XᵀX/n = (n-1)/n · cov + μμᵀ. The
 * summary's statistics as ea_spectrum_summarize computes them, of this matrix; top dims from its
 * diagonal (mean squares). */
static ea_status summarize_uncentered(const ea_cov *c, ea_spectrum_summary *out) {
    memset(out, 0, sizeof *out);
    int d = ea_cov_dim(c);
    double n = ea_cov_count(c);
    double *m = malloc((size_t)d * d * sizeof *m), *ev = malloc((size_t)d * sizeof *ev);
    if (!m || !ev) {
        free(m);
        free(ev);
        return ea_error(EA_ERR_NOMEM, "uncentered spectrum: cannot allocate for d = %d", d);
    }
    ea_status st = ea_cov_matrix(c, 0, m);
    const double *mu = ea_cov_mean(c);
    double trace = 0;
    if (!st)
        for (int i = 0; i < d; i++) {
            for (int j = 0; j < d; j++) m[(size_t)i * d + j] = m[(size_t)i * d + j] * (n - 1) / n + mu[i] * mu[j];
            trace += m[(size_t)i * d + i];
        }
    int nt = d < 8 ? d : 8;
    for (int t = 0; t < nt && !st; t++) {
        int best = -1;
        for (int i = 0; i < d; i++) {
            int taken = 0;
            for (int u = 0; u < t; u++) taken |= out->top_dims[u] == i;
            if (!taken && (best < 0 || m[(size_t)i * d + i] > m[(size_t)best * d + best])) best = i;
        }
        out->top_dims[t] = best;
        out->top_share[t] = trace > 0 ? m[(size_t)best * d + best] / trace : 0;
    }
    out->n_top = nt;
    if (!st) st = ea_eigh(m, d, ev, NULL);
    free(m);
    if (st) {
        free(ev);
        return st;
    }
    out->d = d;
    out->n = n;
    out->eigenvalues = ev;
    out->df = ea_spectrum_df(ev, d);
    out->trace = trace;
    out->k90 = ea_spectrum_k_for(ev, d, 0.90);
    out->k95 = ea_spectrum_k_for(ev, d, 0.95);
    out->k99 = ea_spectrum_k_for(ev, d, 0.99);
    return EA_OK;
}

static ea_status summarize_one(const ea_site_acc *a, const ea_cov *c, ea_variant v, int uncentered, ea_site_result *r) {
    memset(r, 0, sizeof *r);
    r->kind = a->kind;
    r->layer = a->layer;
    r->head = a->head;
    r->variant = v;
    double n = ea_cov_count(c);
    if (n < 2) {
        char head[24] = "";
        if (a->head >= 0) snprintf(head, sizeof head, " head %d", a->head);
        return ea_error(EA_ERR_ARG, "%s layer %d%s (%s): %g row(s) cannot give a covariance; more tokens are needed",
                        ea_site_kind_name(a->kind), a->layer, head, ea_variant_name(v), n);
    }
    if (uncentered && v == EA_VARIANT_STANDARDIZED)
        return ea_error(EA_ERR_ARG, "%s layer %d: the standardized variant is a correlation spectrum: it has no "
                        "uncentered form", ea_site_kind_name(a->kind), a->layer);
    ea_status st = uncentered ? summarize_uncentered(c, &r->sum) : ea_spectrum_summarize(c, v == EA_VARIANT_STANDARDIZED, &r->sum);
    if (st) return st;
    return ea_spectrum_null(n > INT_MAX ? INT_MAX : (int)n, a->d, 0, &r->null_df, &r->null_k95);
}

ea_status ea_site_stats_summarize(const ea_site_stats *s, unsigned variant_mask, ea_site_result **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    ea_site_result *res = calloc((size_t)s->n_acc * EA_VARIANTS + 1, sizeof *res);
    if (!res) return ea_error(EA_ERR_NOMEM, "summaries: out of memory");
    int nr = 0;
    ea_status st = EA_OK;
    for (int i = 0; i < s->n_acc && !st; i++) {
        const ea_site_acc *a = &s->acc[i];
        ea_cov *all = NULL;
        if (variant_mask & ((1u << EA_VARIANT_ALL) | (1u << EA_VARIANT_STANDARDIZED))) {
            st = ea_cov_init(&all, a->d);
            if (!st) st = ea_cov_merge(all, a->rest);
            if (!st) st = ea_cov_merge(all, a->first);
        }
        for (int v = 0; v < EA_VARIANTS && !st; v++) {
            if (!(variant_mask & (1u << v))) continue;
            if (v == EA_VARIANT_EXCLUDE_FIRST && a->kind == EA_SITE_KIND_WTE) continue;
            st = summarize_one(a, v == EA_VARIANT_EXCLUDE_FIRST ? a->rest : all, (ea_variant)v, s->uncentered, &res[nr]);
            nr++; /* counted even on failure so the partial summary is freed */
        }
        ea_cov_free(all);
    }
    if (st) {
        ea_site_results_free(res, nr);
        return st;
    }
    *out = res;
    *n_out = nr;
    return EA_OK;
}
