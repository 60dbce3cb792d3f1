/* The GPT-2 forward pass: prefill of T tokens with sgemm, or one-token decode, over a KV cache. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kv/kv_rows.h"
#include "model/internal.h"

static ea_status run_state_reserve(ea_model *m, int t, int kv) {
    ea_run_state *r = &m->rs;
    size_t C = (size_t)m->cfg.n_embd, F = (size_t)m->cfg.n_inner;
    int grew = t > r->cap_t;
    if (grew) {
        float **bufs[] = {&r->x, &r->xn, &r->qkv, &r->q, &r->att, &r->fc, &r->tmp};
        size_t widths[] = {C, C, 3 * C, C, C, F, C};
        for (int i = 0; i < 7; i++) {
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

/* out (n × cols) = x (n × rows) W (rows × cols) + bias: Conv1D stores W as [in, out]. One token
 * takes the decode layout Wt ([out, in], stored precision) instead. */
static void matmul_bias(float *out, const float *x, const float *W, const ea_rowmat *Wt, const float *bias, int n, int rows,
                        int cols) {
    if (n == 1) {
        ea_matvec(out, Wt, bias, x);
        return;
    }
    for (int i = 0; i < n; i++) memcpy(out + (size_t)i * cols, bias, sizeof(float) * (size_t)cols);
    ea_gemm(n, cols, rows, x, rows, W, cols, 0, out, cols, 1.0f);
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
    if (n < 1) return ea_error(EA_ERR_ARG, "forward: no tokens");
    if (cache->cfg.n_layer != c->n_layer || cache->cfg.n_embd != C)
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
        const float *te = m->wte + (size_t)tokens[i] * C, *pe = m->wpe + (size_t)(pos0 + i) * C;
        for (int j = 0; j < C; j++) x[(size_t)i * C + j] = te[j] + pe[j];
    }
    if ((st = capture(m, EA_SITE_HIDDEN, 0, pos0, n, C, x, C))) return st;

    for (int l = 0; l < c->n_layer; l++) {
        const ea_layer_weights *w = &m->layers[l];
        layernorm(xn, x, w->ln1_w, w->ln1_b, n, C, c->layer_norm_epsilon);
        matmul_bias(qkv, xn, w->attn_w, &w->attn_t, w->attn_b, n, C, 3 * C);
        if ((st = capture(m, EA_SITE_Q, l, pos0, n, C, qkv, 3 * C)) || (st = capture(m, EA_SITE_K, l, pos0, n, C, qkv + C, 3 * C)) ||
            (st = capture(m, EA_SITE_V, l, pos0, n, C, qkv + 2 * C, 3 * C)))
            return st; /* the hook's status and message, unchanged */
        ea_kvcache_append(cache, l, pos0, n, qkv + C, qkv + 2 * C, 3 * C);
        for (int i = 0; i < n; i++) memcpy(r->q + (size_t)i * C, qkv + (size_t)i * 3 * C, sizeof(float) * (size_t)C);
        const ea_kv_codec *codec = cache->codec;
        if (codec && codec->ops->attend) {
            codec->ops->attend(codec, l, r->q, n, pos0, cache->rows[2 * l], cache->rows[2 * l + 1], r->att);
        } else { /* float rows: in place, or decoded by a codec without attention of its own */
            const float *K, *Vv;
            ea_kvcache_view(cache, l, pos0 + n, &K, &Vv);
            /* the same kernels as the f32 codec's attend, so the two stay bit-identical */
            if (n <= EA_KV_ROWS_STREAM_MAX)
                ea_kv_rows_attend(EA_KV_ROWS_F32, c->n_head, C, r->q, n, pos0, K, Vv, r->att);
            else
                ea_kv_rows_attend_gemm(c->n_head, C, r->q, n, pos0, K, Vv, r->att, r->scores,
                                       (size_t)r->cap_kv * EA_KV_ROWS_GEMM_BLOCK);
        }
        matmul_bias(r->tmp, r->att, w->proj_w, &w->proj_t, w->proj_b, n, C, C);
        for (size_t i = 0; i < (size_t)n * C; i++) x[i] += r->tmp[i];
        layernorm(xn, x, w->ln2_w, w->ln2_b, n, C, c->layer_norm_epsilon);
        matmul_bias(r->fc, xn, w->fc_w, &w->fc_t, w->fc_b, n, C, F);
        gelu_new(r->fc, (size_t)n * F);
        matmul_bias(r->tmp, r->fc, w->fcproj_w, &w->fcproj_t, w->fcproj_b, n, F, C);
        for (size_t i = 0; i < (size_t)n * C; i++) x[i] += r->tmp[i];
        if ((st = check_finite(m, x, (size_t)n * C, "the output", l))) return st;
        if (l + 1 < c->n_layer && (st = capture(m, EA_SITE_HIDDEN, l + 1, pos0, n, C, x, C))) return st;
    }
    cache->len = pos0 + n;
    layernorm(xn, x, m->lnf_w, m->lnf_b, n, C, c->layer_norm_epsilon);
    if ((st = capture(m, EA_SITE_HIDDEN, c->n_layer, pos0, n, C, xn, C))) return st;
    if (!logits) return EA_OK;
    /* Tied lm_head: logits = h · wteᵀ. */
    if (all_logits && n > 1)
        ea_gemm(n, V, C, xn, C, m->wte, C, 1, logits, V, 0.0f);
    else
        ea_matvec(logits, &m->lm_head, NULL, xn + (size_t)(n - 1) * C);
    return EA_OK;
}
