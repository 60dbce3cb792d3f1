/* The tiny random Llama / Qwen2 / Qwen3 checkpoints of tests/fixtures (saved by Hugging Face
 * transformers, references computed by it in float64; see make_family_fixtures.py) against the
 * forward pass: per-layer q_pre, q, k_pre, k, v, every hidden state, the logits (max abs diff
 * <= 1e-4), decode == prefill, and 40 greedy tokens (exact). Between them they cover GQA, odd
 * sizes, head_dim != hidden/heads, untied lm_head, Qwen2 q/k/v biases, Qwen3 q/k norm, F32/F16/BF16
 * weights, llama3 rope scaling, and both config layouts (rope_parameters and rope_theta+rope_scaling). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define TOL 1e-4
enum { S_QPRE, S_Q, S_KPRE, S_K, S_V, N_S };
static const char *site_key[N_S] = {"q_pre", "q", "k_pre", "k", "v"};

typedef struct {
    int T, C, L, w[N_S];
    float *hidden;    /* (L+1) × T × C */
    float *site[N_S]; /* L × T × w */
} cap_ctx;

static int capture_all(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    cap_ctx *c = user;
    int s = site == EA_SITE_Q_PRE ? S_QPRE : site == EA_SITE_Q ? S_Q : site == EA_SITE_K_PRE ? S_KPRE
          : site == EA_SITE_K ? S_K : site == EA_SITE_V ? S_V : -1;
    for (int i = 0; i < n; i++) {
        int t = pos0 + i;
        if (site == EA_SITE_HIDDEN)
            memcpy(c->hidden + ((size_t)layer * c->T + t) * c->C, x + (size_t)i * ld, sizeof(float) * (size_t)d);
        else {
            assert_int_equal(d, c->w[s]);
            memcpy(c->site[s] + ((size_t)layer * c->T + t) * d, x + (size_t)i * ld, sizeof(float) * (size_t)d);
        }
    }
    return 0;
}

static float *ref_f32(ea_st_file *f, const char *name, size_t expect) {
    const ea_st_tensor *t = ea_st_find(f, name);
    if (!t) fail_msg("%s: no tensor %s", ea_st_path(f), name);
    if (t->numel != expect) fail_msg("%s: %s has %zu values, expected %zu", ea_st_path(f), name, t->numel, expect);
    float *d = malloc(sizeof(float) * t->numel);
    assert_int_equal(ea_st_to_f32(f, t, d), EA_OK);
    return d;
}

/* max |a - b| <= TOL · max(1, max |b|): activations of random-weight models reach tens. */
static void compare(const char *what, const float *a, const float *b, size_t n) {
    double d = test_max_abs_diff(a, b, n), mx = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(b[i]));
    printf("    %-18s max |diff| = %.3g (max |ref| %.3g)\n", what, d, mx);
    assert_true(d <= TOL * fmax(1.0, mx));
}

static void check_family(const char *name) {
    char dir[512], fxp[512];
    snprintf(dir, sizeof dir, "%s/%s", TEST_FIXTURE_DIR, name);
    snprintf(fxp, sizeof fxp, "%s/%s.reference.safetensors", TEST_FIXTURE_DIR, name);
    if (access(fxp, R_OK) != 0 || access(dir, R_OK) != 0) TEST_SKIP("%s or its directory is absent (branch fixtures not merged)", fxp);
    ea_model *m;
    ea_st_file *fx;
    if (ea_model_load(dir, &m) != EA_OK) fail_msg("load %s: %s", dir, ea_last_error());
    if (ea_st_open(fxp, &fx) != EA_OK) fail_msg("open %s: %s", fxp, ea_last_error());
    const ea_config *cfg = ea_model_config(m);
    int C = cfg->n_embd, L = cfg->n_layer, V = cfg->vocab_size, QD = ea_config_q_dim(cfg), KVD = ea_config_kv_dim(cfg);
    printf("  %s: %s, %d layers, hidden %d, %d heads / %d kv heads of %d, rope %d, qkv_bias %d, qk_norm %d, tied %d\n", name,
           ea_arch_name(cfg->arch), L, C, cfg->n_head, ea_config_kv_heads(cfg), ea_config_head_dim(cfg), (int)cfg->rope_type,
           cfg->qkv_bias, cfg->qk_norm, cfg->tie_word_embeddings);
    for (int p = 0; p < 2; p++) {
        char key[64];
        snprintf(key, sizeof key, "p%d.input_ids", p);
        const ea_st_tensor *ti = ea_st_find(fx, key);
        if (!ti) fail_msg("%s: no %s", fxp, key);
        int T = (int)ti->numel;
        float *idf = ref_f32(fx, key, (size_t)T);
        int *ids = malloc(sizeof(int) * (size_t)T);
        for (int i = 0; i < T; i++) ids[i] = (int)idf[i];
        cap_ctx cc = {T, C, L, {QD, QD, KVD, KVD, KVD}, calloc((size_t)(L + 1) * T * C, sizeof(float)), {0}};
        for (int s = 0; s < N_S; s++) cc.site[s] = calloc((size_t)L * T * cc.w[s], sizeof(float));
        ea_model_set_capture(m, capture_all, &cc);
        ea_model_set_capture_prerot(m, 1);
        ea_kvcache *cache;
        assert_int_equal(ea_kvcache_init(&cache, cfg, cfg->n_positions, NULL), EA_OK);
        float *logits = malloc(sizeof(float) * (size_t)T * V);
        if (ea_model_forward(m, cache, ids, T, logits, 1) != EA_OK) fail_msg("forward: %s", ea_last_error());
        ea_model_set_capture(m, NULL, NULL);
        ea_model_set_capture_prerot(m, 0);
        printf("  p%d (%d tokens)\n", p, T);
        for (int s = 0; s < N_S; s++) {
            snprintf(key, sizeof key, "p%d.%s", p, site_key[s]);
            float *ref = ref_f32(fx, key, (size_t)L * T * cc.w[s]);
            compare(site_key[s], cc.site[s], ref, (size_t)L * T * cc.w[s]);
            free(ref);
        }
        snprintf(key, sizeof key, "p%d.hidden_states", p);
        float *ref_h = ref_f32(fx, key, (size_t)(L + 1) * T * C);
        compare("hidden_states", cc.hidden, ref_h, (size_t)(L + 1) * T * C);
        snprintf(key, sizeof key, "p%d.logits", p);
        float *ref_l = ref_f32(fx, key, (size_t)T * V);
        double dl = test_max_abs_diff(logits, ref_l, (size_t)T * V);
        printf("    logits             max |diff| = %.3g, NMSE = %.3g\n", dl, test_nmse(logits, ref_l, (size_t)T * V));
        assert_true(dl <= TOL);

        ea_kvcache_reset(cache);
        float *last = malloc(sizeof(float) * (size_t)V);
        double dd = 0;
        for (int i = 0; i < T; i++) {
            assert_int_equal(ea_model_forward(m, cache, ids + i, 1, last, 0), EA_OK);
            dd = fmax(dd, test_max_abs_diff(last, logits + (size_t)i * V, (size_t)V));
        }
        printf("    decode vs prefill  max |diff| = %.3g\n", dd);
        assert_true(dd <= TOL);

        snprintf(key, sizeof key, "p%d.greedy_ids", p);
        if (ea_st_find(fx, key)) {
            float *gref = ref_f32(fx, key, 40);
            int out[40], n_out = 0;
            ea_sampler_params sp = ea_sampler_default();
            sp.stop_at_eot = 0;
            assert_int_equal(ea_generate(m, cache, ids, T, 40, &sp, out, &n_out), EA_OK);
            assert_int_equal(n_out, 40);
            int mism = 0;
            for (int i = 0; i < 40; i++) mism += out[i] != (int)gref[i];
            printf("    greedy: %d/40 tokens differ\n", mism);
            assert_int_equal(mism, 0);
            free(gref);
        }
        free(last); free(ref_h); free(ref_l); free(logits);
        ea_kvcache_free(cache);
        for (int s = 0; s < N_S; s++) free(cc.site[s]);
        free(cc.hidden); free(ids); free(idf);
    }
    ea_st_close(fx);
    ea_model_free(m);
}

static void test_tiny_llama(void **state) { (void)state; check_family("tiny-llama"); }
static void test_tiny_llama3rope(void **state) { (void)state; check_family("tiny-llama3rope"); }
static void test_tiny_qwen2(void **state) { (void)state; check_family("tiny-qwen2"); }
static void test_tiny_qwen3(void **state) { (void)state; check_family("tiny-qwen3"); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_llama),
        cmocka_unit_test(test_tiny_llama3rope),
        cmocka_unit_test(test_tiny_qwen2),
        cmocka_unit_test(test_tiny_qwen3),
    };
    return TEST_RUN(tests, NULL, NULL);
}
