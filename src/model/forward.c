/* The forward pass: prefill of T tokens with sgemm, or one-token decode, over a KV cache. One pass
 * for every family; the Llama family swaps in its pieces (RMSNorm, RoPE, SwiGLU, no learned
 * positions, nn.Linear layout; norm.c, rope.c) and any number of KV heads (gqa.c). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "attend/attend.h"
#include "model/internal.h"

static ea_status run_state_reserve(ea_model *m, int t, int kv) {
    ea_run_state *r = &m->rs;
    const ea_config *c = &m->cfg;
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, QD = (size_t)ea_config_q_dim(c), KVD = (size_t)ea_config_kv_dim(c);
    int grew = t > r->cap_t;
    if (grew) {
        /* fc: SwiGLU keeps gate/up (2F) and their product (F) */
        float **bufs[] = {&r->x, &r->xn, &r->qkv, &r->q, &r->att, &r->fc, &r->tmp, &r->rope, &r->qg, &r->og};
        size_t widths[] = {C, C, QD + 2 * KVD, QD, QD, m->linear ? 3 * F : F, C, (size_t)ea_config_head_dim(c), KVD, KVD};
        int nbuf = m->inv_freq || KVD != QD ? 10 : 7;
        for (int i = 0; i < nbuf; i++) {
            free(*bufs[i]);
            if (!(*bufs[i] = malloc(sizeof(float) * widths[i] * (size_t)t))) {
                r->cap_t = 0;
                return ea_error(EA_ERR_NOMEM, "forward: cannot allocate buffers for %d tokens", t);
            }
        }
        r->cap_t = t;
    }
    int nth = omp_get_max_threads();
    if (grew || kv > r->cap_kv || nth != r->n_threads) {
        free(r->scores);
        /* per thread: one block of prefill queries' scores over kv keys */
        if (!(r->scores = malloc(sizeof(float) * (size_t)kv * EA_KV_ROWS_GEMM_BLOCK * (size_t)nth))) {
            r->cap_kv = 0;
            return ea_error(EA_ERR_NOMEM, "forward: cannot allocate attention scratch");
        }
        r->cap_kv = kv;
        r->n_threads = nth;
    }
    return EA_OK;
}

static void layernorm(float *out, const float *x, const float *w, const float *b, int n, int C, float eps) {
#pragma omp parallel for if (n > 4)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * C;
        float *oi = out + (size_t)i * C;
        float mean = 0, var = 0;
        for (int j = 0; j < C; j++) mean += xi[j];
        mean /= (float)C;
        for (int j = 0; j < C; j++) { float d = xi[j] - mean; var += d * d; }
        float rstd = 1.0f / sqrtf(var / (float)C + eps);
        for (int j = 0; j < C; j++) oi[j] = (xi[j] - mean) * rstd * w[j] + b[j];
    }
}

/* out (n × cols) = x (n × rows) W + bias (bias may be NULL): Conv1D stores W as [in, out],
 * nn.Linear (m->linear) as [out, in]. One token takes the decode layout Wt ([out, in], stored
 * precision) instead. */
static void matmul_bias(const ea_model *m, float *out, const float *x, const float *W, const ea_rowmat *Wt,
                        const float *bias, int n, int rows, int cols) {
    if (n == 1) {
        ea_matvec(out, Wt, bias, x);
        return;
    }
    if (bias)
        for (int i = 0; i < n; i++) memcpy(out + (size_t)i * cols, bias, sizeof(float) * (size_t)cols);
    ea_gemm(n, cols, rows, x, rows, W, m->linear ? rows : cols, m->linear, out, cols, bias ? 1.0f : 0.0f);
}

/* The block's normalization: LayerNorm (GPT-2) or RMSNorm (Llama family, no shift). */
static void norm(const ea_model *m, float *out, const float *x, const float *w, const float *b, int n, int C) {
    if (m->linear) ea_rmsnorm(out, x, w, n, C, C, m->cfg.layer_norm_epsilon);
    else layernorm(out, x, w, b, n, C, m->cfg.layer_norm_epsilon);
}

/* gelu_new: 0.5·x·(1 + tanh(u)), u = √(2/π)(x + 0.044715x³), computed as the identical
 * x / (1 + e^(−2u)): one expf is much cheaper than tanhf, and the form stays finite at both ends. */
static void gelu_new(float *x, size_t n) {
    const float s2 = -2.0f * 0.7978845608028654f;
#pragma omp parallel for if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        x[i] = v / (1.0f + expf(s2 * (v + 0.044715f * v * v * v)));
    }
}

static ea_status capture(ea_model *m, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    return m->capture ? m->capture(m->capture_user, site, layer, pos0, n, d, x, ld) : EA_OK;
}

static ea_status check_finite(const ea_model *m, const float *x, size_t n, const char *where, int layer) {
    if (!m->check_finite) return EA_OK;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return ea_error(EA_ERR_NUMERIC, "%s: non-finite activation (%g) in %s of layer %d", m->dir, (double)x[i], where,
                            layer);
    return EA_OK;
}

ea_status ea_model_forward(ea_model *m, ea_kvcache *cache, const int *tokens, int n, float *logits, int all_logits) {
    const ea_config *c = &m->cfg;
    int C = c->n_embd, F = c->n_inner, V = c->vocab_size, pos0 = cache->len;
    int HD = ea_config_head_dim(c), QD = ea_config_q_dim(c), KVD = ea_config_kv_dim(c), NKV = ea_config_kv_heads(c);
    int W = QD + 2 * KVD; /* one row of q, k, v */
    if (n < 1) return ea_error(EA_ERR_ARG, "forward: no tokens");
    if (cache->cfg.n_layer != c->n_layer || cache->cfg.n_embd != C || ea_config_kv_dim(&cache->cfg) != KVD)
        return ea_error(EA_ERR_MISMATCH, "forward: kv cache was made for another model shape");
    if (pos0 + n > cache->cap)
        return ea_error(EA_ERR_ARG, "forward: %d tokens after %d cached exceed the cache capacity %d", n, pos0, cache->cap);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return ea_error(EA_ERR_ARG, "forward: token id %d at index %d outside [0, %d)", tokens[i], i, V);
    ea_status st = run_state_reserve(m, n, cache->cap);
    if (st) return st;
    ea_run_state *r = &m->rs;
    float *x = r->x, *xn = r->xn, *qkv = r->qkv;

    for (int i = 0; i < n; i++) {
        const float *te = m->wte + (size_t)tokens[i] * C;
        if (m->wpe) {
            const float *pe = m->wpe + (size_t)(pos0 + i) * C;
            for (int j = 0; j < C; j++) x[(size_t)i * C + j] = te[j] + pe[j];
        } else
            memcpy(x + (size_t)i * C, te, sizeof(float) * (size_t)C);
    }
    if ((st = capture(m, EA_SITE_HIDDEN, 0, pos0, n, C, x, C))) return st;
    if (m->inv_freq) ea_rope_table(m->inv_freq, HD, pos0, n, r->rope);

    for (int l = 0; l < c->n_layer; l++) {
        const ea_layer_weights *w = &m->layers[l];
        norm(m, xn, x, w->ln1_w, w->ln1_b, n, C);
        matmul_bias(m, qkv, xn, w->attn_w, &w->attn_t, w->attn_b, n, C, W);
        if (m->inv_freq) { /* RoPE families: optional per-head q/k norm, then the rotation */
            if (w->q_norm)
                for (int i = 0; i < n; i++) {
                    ea_rmsnorm(qkv + (size_t)i * W, qkv + (size_t)i * W, w->q_norm, c->n_head, HD, HD, c->layer_norm_epsilon);
                    ea_rmsnorm(qkv + (size_t)i * W + QD, qkv + (size_t)i * W + QD, w->k_norm, NKV, HD, HD, c->layer_norm_epsilon);
                }
            if (m->capture_prerot && ((st = capture(m, EA_SITE_Q_PRE, l, pos0, n, QD, qkv, W)) ||
                                      (st = capture(m, EA_SITE_K_PRE, l, pos0, n, KVD, qkv + QD, W))))
                return st; /* the hook's status and message, unchanged */
            ea_rope_apply(qkv, n, W, c->n_head, HD, r->rope);
            ea_rope_apply(qkv + QD, n, W, NKV, HD, r->rope);
        }
        if ((st = capture(m, EA_SITE_Q, l, pos0, n, QD, qkv, W)) || (st = capture(m, EA_SITE_K, l, pos0, n, KVD, qkv + QD, W)) ||
            (st = capture(m, EA_SITE_V, l, pos0, n, KVD, qkv + QD + KVD, W)))
            return st; /* the hook's status and message, unchanged */
        ea_kvcache_append(cache, l, pos0, n, qkv + QD, qkv + QD + KVD, W);
        for (int i = 0; i < n; i++) memcpy(r->q + (size_t)i * QD, qkv + (size_t)i * W, sizeof(float) * (size_t)QD);
        ea_model_attend(m, cache, l, r->q, n, pos0, r->att);
        matmul_bias(m, r->tmp, r->att, w->proj_w, &w->proj_t, w->proj_b, n, QD, C);
        for (size_t i = 0; i < (size_t)n * C; i++) x[i] += r->tmp[i];
        norm(m, xn, x, w->ln2_w, w->ln2_b, n, C);
        if (m->linear) { /* SwiGLU: down(silu(gate x) · up x) */
            float *act = r->fc + (size_t)n * 2 * F;
            matmul_bias(m, r->fc, xn, w->fc_w, &w->fc_t, NULL, n, C, 2 * F);
            ea_swiglu(act, r->fc, n, F);
            matmul_bias(m, r->tmp, act, w->fcproj_w, &w->fcproj_t, NULL, n, F, C);
        } else {
            matmul_bias(m, r->fc, xn, w->fc_w, &w->fc_t, w->fc_b, n, C, F);
            gelu_new(r->fc, (size_t)n * F);
            matmul_bias(m, r->tmp, r->fc, w->fcproj_w, &w->fcproj_t, w->fcproj_b, n, F, C);
        }
        for (size_t i = 0; i < (size_t)n * C; i++) x[i] += r->tmp[i];
        if ((st = check_finite(m, x, (size_t)n * C, "the output", l))) return st;
        if (l + 1 < c->n_layer && (st = capture(m, EA_SITE_HIDDEN, l + 1, pos0, n, C, x, C))) return st;
    }
    cache->len = pos0 + n;
    norm(m, xn, x, m->lnf_w, m->lnf_b, n, C);
    if ((st = capture(m, EA_SITE_HIDDEN, c->n_layer, pos0, n, C, xn, C))) return st;
    if (!logits) return EA_OK;
    /* logits = h · lm_headᵀ (lm_head is wte when tied) */
    if (all_logits && n > 1)
        ea_gemm(n, V, C, xn, C, m->lm_w, C, 1, logits, V, 0.0f);
    else
        ea_matvec(logits, &m->lm_head, NULL, xn + (size_t)(n - 1) * C);
    return EA_OK;
}
