/* The Llama-family forward pass against Hugging Face transformers (float64) references: every
 * hidden state, the logits (max abs diff <= 1e-4) and 40 greedy tokens (exact), prefill and
 * token-by-token decode; the GQA cache with the f32/f16/q8/q4 codecs; config refusals. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define TOL 1e-4

typedef struct {
    int T, C, L;
    float *hidden; /* (L+1) × T × C */
    int qd, kvd, sites_seen;
    float *kpre, *k; /* layer 0: T × kvd */
} capture_ctx;

static int capture_all(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    capture_ctx *c = user;
    c->sites_seen |= 1 << site;
    for (int i = 0; i < n; i++) {
        int t = pos0 + i;
        if (site == EA_SITE_HIDDEN)
            memcpy(c->hidden + ((size_t)layer * c->T + t) * c->C, x + (size_t)i * ld, sizeof(float) * (size_t)d);
        else if (layer == 0 && (site == EA_SITE_K || site == EA_SITE_K_PRE)) {
            assert_int_equal(d, c->kvd);
            memcpy((site == EA_SITE_K ? c->k : c->kpre) + (size_t)t * d, x + (size_t)i * ld, sizeof(float) * (size_t)d);
        }
    }
    return 0;
}

static float *fixture_f32(ea_st_file *f, const char *name, size_t expect_numel) {
    const ea_st_tensor *t = ea_st_find(f, name);
    if (!t) fail_msg("fixture has no tensor %s", name);
    assert_int_equal(t->numel, expect_numel);
    float *d = malloc(sizeof(float) * t->numel);
    assert_int_equal(ea_st_to_f32(f, t, d), EA_OK);
    return d;
}

/* The repository copy when present, else ../shared. */
static const char *llama_long_dir(void) {
    static const char *repo = EA_SOURCE_DIR "/models/llama-long";
    if (access(EA_SOURCE_DIR "/models/llama-long/model.safetensors", R_OK) == 0) return repo;
    return test_shared_path("models/llama-long");
}

/* An independent RoPE check on captured K: k = rotate(k_pre) with HF's rotate_half convention,
 * computed here in double from θ. */
static void check_rotation(const capture_ctx *cc, int hd, double theta) {
    double worst = 0;
    for (int t = 0; t < cc->T; t++)
        for (int h = 0; h < cc->kvd / hd; h++) {
            const float *a = cc->kpre + (size_t)t * cc->kvd + h * hd, *b = cc->k + (size_t)t * cc->kvd + h * hd;
            for (int j = 0; j < hd / 2; j++) {
                double ang = t * pow(theta, -2.0 * j / hd);
                double r0 = a[j] * cos(ang) - a[j + hd / 2] * sin(ang), r1 = a[j + hd / 2] * cos(ang) + a[j] * sin(ang);
                worst = fmax(worst, fmax(fabs(r0 - b[j]), fabs(r1 - b[j + hd / 2])));
            }
        }
    printf("  k vs rotated k_pre (layer 0): max |diff| = %.3g\n", worst);
    assert_true(worst <= 1e-4);
}

static void check_model(const char *model_dir, const char *fixture, double hidden_rel_tol) {
    ea_model *m;
    ea_st_file *fx;
    if (ea_model_load(model_dir, &m) != EA_OK) fail_msg("load %s: %s", model_dir, ea_last_error());
    if (ea_st_open(fixture, &fx) != EA_OK) fail_msg("open %s: %s", fixture, ea_last_error());
    const ea_config *cfg = ea_model_config(m);
    int C = cfg->n_embd, L = cfg->n_layer, V = cfg->vocab_size;
    for (int p = 0; p < 2; p++) {
        char name[64];
        snprintf(name, sizeof name, "p%d.input_ids", p);
        const ea_st_tensor *ti = ea_st_find(fx, name);
        assert_non_null(ti);
        int T = (int)ti->numel;
        float *idf = fixture_f32(fx, name, (size_t)T);
        int *ids = malloc(sizeof(int) * (size_t)T);
        for (int i = 0; i < T; i++) ids[i] = (int)idf[i];
        int kvd = ea_config_kv_dim(cfg);
        capture_ctx cc = {T, C, L, calloc((size_t)(L + 1) * T * C, sizeof(float)), ea_config_q_dim(cfg), kvd, 0,
                          calloc((size_t)T * kvd, sizeof(float)), calloc((size_t)T * kvd, sizeof(float))};
        ea_model_set_capture(m, capture_all, &cc);
        ea_model_set_capture_prerot(m, 1);
        ea_kvcache *cache;
        assert_int_equal(ea_kvcache_init(&cache, cfg, cfg->n_positions < 256 ? cfg->n_positions : 256, NULL), EA_OK);
        float *logits = malloc(sizeof(float) * (size_t)T * V);
        assert_int_equal(ea_model_forward(m, cache, ids, T, logits, 1), EA_OK);
        ea_model_set_capture(m, NULL, NULL);
        ea_model_set_capture_prerot(m, 0);
        assert_int_equal(cc.sites_seen, 0x3f); /* hidden, q, k, v, q_pre, k_pre */
        if (!cfg->qk_norm && cfg->rope_type == EA_ROPE_DEFAULT) check_rotation(&cc, ea_config_head_dim(cfg), cfg->rope_theta);

        snprintf(name, sizeof name, "p%d.hidden_states", p);
        float *ref_h = fixture_f32(fx, name, (size_t)(L + 1) * T * C);
        snprintf(name, sizeof name, "p%d.logits", p);
        float *ref_l = fixture_f32(fx, name, (size_t)T * V);
        for (int l = 0; l <= L; l++) {
            const float *ref = ref_h + (size_t)l * T * C;
            double dh = test_max_abs_diff(cc.hidden + (size_t)l * T * C, ref, (size_t)T * C), mx = 0;
            for (size_t i = 0; i < (size_t)T * C; i++) mx = fmax(mx, fabs(ref[i]));
            printf("  p%d hidden[%d]: max |diff| = %.3g (max |ref| %.3g)\n", p, l, dh, mx);
            assert_true(dh <= hidden_rel_tol * fmax(1.0, mx));
        }
        double dl = test_max_abs_diff(logits, ref_l, (size_t)T * V);
        printf("  %s p%d logits: max |diff| = %.3g, NMSE = %.3g\n", model_dir, p, dl, test_nmse(logits, ref_l, (size_t)T * V));
        assert_true(dl <= TOL);

        /* Incremental decode over the cache gives the same logits as prefill, at every position. */
        ea_kvcache_reset(cache);
        float *last = malloc(sizeof(float) * (size_t)V);
        double dd = 0;
        for (int i = 0; i < T; i++) {
            assert_int_equal(ea_model_forward(m, cache, ids + i, 1, last, 0), EA_OK);
            dd = fmax(dd, test_max_abs_diff(last, logits + (size_t)i * V, (size_t)V));
        }
        printf("  p%d decode vs prefill logits: max |diff| = %.3g\n", p, dd);
        assert_true(dd <= TOL);

        snprintf(name, sizeof name, "p%d.greedy_ids", p);
        float *gref = fixture_f32(fx, name, 40);
        int out[40], n_out = 0;
        ea_sampler_params sp = ea_sampler_default();
        sp.stop_at_eot = 0;
        assert_int_equal(ea_generate(m, cache, ids, T, 40, &sp, out, &n_out), EA_OK);
        assert_int_equal(n_out, 40);
        int mism = 0;
        for (int i = 0; i < 40; i++) mism += out[i] != (int)gref[i];
        printf("  p%d greedy: %d/40 tokens differ\n", p, mism);
        assert_int_equal(mism, 0);

        free(last); free(gref); free(ref_h); free(ref_l); free(logits);
        ea_kvcache_free(cache);
        free(cc.hidden); free(cc.k); free(cc.kpre); free(ids); free(idf);
    }
    ea_st_close(fx);
    ea_model_free(m);
}

static void test_llama_long_matches_reference(void **state) {
    (void)state;
    const char *dir = llama_long_dir(), *fx = test_shared_path("fixtures/llama-long.reference.safetensors");
    if (!dir || !fx) TEST_SKIP("models/llama-long or ../shared/fixtures/llama-long.reference.safetensors is absent: Llama reference test skipped");
    check_model(dir, fx, 1e-4);
}

/* Per-layer q (rotated), k_pre, k and v of llama-long against transformers in float64
 * (tests/fixtures/llama-long.qkv.reference.safetensors, 48 tokens of calib.txt). */
typedef struct { int T, L, w[4]; float *x[4]; } qkv_ctx; /* q, k_pre, k, v */

static int capture_qkv(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    qkv_ctx *c = user;
    int s = site == EA_SITE_Q ? 0 : site == EA_SITE_K_PRE ? 1 : site == EA_SITE_K ? 2 : site == EA_SITE_V ? 3 : -1;
    if (s < 0) return 0;
    assert_int_equal(d, c->w[s]);
    for (int i = 0; i < n; i++)
        memcpy(c->x[s] + ((size_t)layer * c->T + pos0 + i) * d, x + (size_t)i * ld, sizeof(float) * (size_t)d);
    return 0;
}

static void test_llama_long_qkv_reference(void **state) {
    (void)state;
    const char *dir = llama_long_dir(), *fxp = TEST_FIXTURE_DIR "/llama-long.qkv.reference.safetensors";
    if (!dir || access(fxp, R_OK) != 0) TEST_SKIP("models/llama-long or %s is absent: per-layer q/k/v test skipped", fxp);
    ea_model *m;
    ea_st_file *fx;
    if (ea_model_load(dir, &m) != EA_OK) fail_msg("load %s: %s", dir, ea_last_error());
    if (ea_st_open(fxp, &fx) != EA_OK) fail_msg("open %s: %s", fxp, ea_last_error());
    const ea_config *cfg = ea_model_config(m);
    const ea_st_tensor *ti = ea_st_find(fx, "input_ids");
    assert_non_null(ti);
    int T = (int)ti->numel, L = cfg->n_layer, QD = ea_config_q_dim(cfg), KVD = ea_config_kv_dim(cfg);
    float *idf = fixture_f32(fx, "input_ids", (size_t)T);
    int *ids = malloc(sizeof(int) * (size_t)T);
    for (int i = 0; i < T; i++) ids[i] = (int)idf[i];
    qkv_ctx cc = {T, L, {QD, KVD, KVD, KVD}, {NULL}};
    for (int s = 0; s < 4; s++) cc.x[s] = calloc((size_t)L * T * cc.w[s], sizeof(float));
    ea_model_set_capture(m, capture_qkv, &cc);
    ea_model_set_capture_prerot(m, 1);
    ea_kvcache *cache;
    assert_int_equal(ea_kvcache_init(&cache, cfg, T, NULL), EA_OK);
    assert_int_equal(ea_model_forward(m, cache, ids, T, NULL, 0), EA_OK);
    const char *names[4] = {"q", "k_pre", "k", "v"};
    for (int s = 0; s < 4; s++) {
        float *ref = fixture_f32(fx, names[s], (size_t)L * T * cc.w[s]);
        double d = test_max_abs_diff(cc.x[s], ref, (size_t)L * T * cc.w[s]);
        printf("  llama-long %s (%d layers x %d tokens): max |diff| = %.3g\n", names[s], L, T, d);
        assert_true(d <= TOL);
        free(ref);
        free(cc.x[s]);
    }
    ea_kvcache_free(cache);
    free(ids); free(idf);
    ea_st_close(fx);
    ea_model_free(m);
}

/* The GQA cache through every codec: "f32" is bit-identical to the plain cache; f16/q8/q4 stay
 * close to it (prefill and decode), over a 300-token context; full-rank pca is lossless and klt:4
 * beats q4. */
static void test_llama_long_gqa_codecs(void **state) {
    (void)state;
    const char *dir = llama_long_dir();
    if (!dir) TEST_SKIP("models/llama-long is absent: GQA codec test skipped");
    ea_model *m;
    if (ea_model_load(dir, &m) != EA_OK) fail_msg("load %s: %s", dir, ea_last_error());
    const ea_config *cfg = ea_model_config(m);
    assert_true(ea_config_kv_heads(cfg) < cfg->n_head);
    int T = 300, V = cfg->vocab_size;
    int *ids = malloc(sizeof(int) * (size_t)T);
    for (int i = 0; i < T; i++) ids[i] = (int)((i * 7919u + 13u) % 20000u);
    float *ref = malloc(sizeof(float) * (size_t)V), *got = malloc(sizeof(float) * (size_t)V);
    ea_kvcache *cache;
    assert_int_equal(ea_kvcache_init(&cache, cfg, T + 1, NULL), EA_OK);
    assert_int_equal(ea_model_forward(m, cache, ids, T, NULL, 0), EA_OK);
    assert_int_equal(ea_model_forward(m, cache, ids, 1, ref, 0), EA_OK);
    ea_kvcache_free(cache);
    const char *specs[] = {"f32", "f16", "q8", "q4"};
    const double tol[] = {0, 0.02, 0.1, 1.0};
    for (int s = 0; s < 4; s++) {
        ea_kv_codec *codec;
        if (ea_kv_codec_create(specs[s], cfg, NULL, &codec) != EA_OK) fail_msg("codec %s: %s", specs[s], ea_last_error());
        assert_int_equal(ea_kvcache_init(&cache, cfg, T + 1, codec), EA_OK);
        assert_int_equal(ea_model_forward(m, cache, ids, T, NULL, 0), EA_OK);
        assert_int_equal(ea_model_forward(m, cache, ids, 1, got, 0), EA_OK);
        double d = test_max_abs_diff(got, ref, (size_t)V);
        printf("  codec %s: decode logits after %d tokens, max |diff| vs float cache = %.3g\n", specs[s], T, d);
        assert_true(d <= tol[s]);
        ea_kvcache_free(cache);
        ea_kv_codec_free(codec);
    }
    /* Basis codecs per KV head: full-rank pca is lossless up to rounding; klt:4 must beat q4. The
     * bases are fitted on other token ids than those evaluated. */
    int nc = 1200;
    int *calib = malloc(sizeof(int) * (size_t)nc);
    for (int i = 0; i < nc; i++) calib[i] = (int)((i * 104729u + 7u) % 30000u);
    const char *bspecs[] = {"pca:128", "pca-head:64", "klt:4"};
    const double btol[] = {1e-3, 1e-3, 0.474};
    for (int s = 0; s < 3; s++) {
        ea_kv_codec *codec;
        if (ea_kv_codec_fit_model(m, bspecs[s], calib, (size_t)nc, 300, NULL, NULL, &codec) != EA_OK)
            fail_msg("codec %s: %s", bspecs[s], ea_last_error());
        assert_int_equal(ea_kvcache_init(&cache, cfg, T + 1, codec), EA_OK);
        assert_int_equal(ea_model_forward(m, cache, ids, T, NULL, 0), EA_OK);
        assert_int_equal(ea_model_forward(m, cache, ids, 1, got, 0), EA_OK);
        double d = test_max_abs_diff(got, ref, (size_t)V);
        printf("  codec %s: decode logits after %d tokens, max |diff| vs float cache = %.3g\n", bspecs[s], T, d);
        assert_true(d <= btol[s]);
        ea_kvcache_free(cache);
        ea_kv_codec_free(codec);
    }
    free(calib);
    free(ids); free(ref); free(got);
    ea_model_free(m);
}

/* Refusals name the field and the value. */
static void test_llama_config_refusals(void **state) {
    (void)state;
    const char *base = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4,\"intermediate_size\":96,"
                       "\"max_position_embeddings\":128,\"vocab_size\":100,\"rms_norm_eps\":1e-6";
    struct { const char *tail, *expect; } cases[] = {
        {",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", "yarn"},
        {",\"rope_parameters\":{\"rope_theta\":10000,\"rope_type\":\"dynamic\"}}", "rope_parameters.rope_type"},
        {",\"hidden_act\":\"gelu\"}", "gelu"},
        {",\"num_key_value_heads\":3}", "num_key_value_heads"},
        {",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}", "low_freq_factor"},
    };
    char buf[1024];
    ea_config c;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(buf, sizeof buf, "%s%s", base, cases[i].tail);
        assert_int_not_equal(ea_config_parse(buf, strlen(buf), "cfg.json", &c), EA_OK);
        printf("  error: %s\n", ea_last_error());
        assert_non_null(strstr(ea_last_error(), cases[i].expect));
    }
    const char *arch = "{\"architectures\":[\"MistralForCausalLM\"],\"model_type\":\"mistral\"}";
    assert_int_equal(ea_config_parse(arch, strlen(arch), "cfg.json", &c), EA_ERR_UNSUPPORTED);
    assert_non_null(strstr(ea_last_error(), "MistralForCausalLM"));
    /* both layouts give the same rotary parameters */
    snprintf(buf, sizeof buf, "%s,\"num_key_value_heads\":2,\"rope_theta\":500000,\"rope_scaling\":{\"type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,"
             "\"high_freq_factor\":4,\"original_max_position_embeddings\":64}}", base);
    assert_int_equal(ea_config_parse(buf, strlen(buf), "cfg.json", &c), EA_OK);
    ea_config c5;
    snprintf(buf, sizeof buf, "%s,\"num_key_value_heads\":2,\"rope_parameters\":{\"rope_theta\":500000,\"rope_type\":\"llama3\",\"factor\":8,"
             "\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":64}}", base);
    assert_int_equal(ea_config_parse(buf, strlen(buf), "cfg.json", &c5), EA_OK);
    assert_int_equal(c.rope_type, EA_ROPE_LLAMA3);
    assert_memory_equal(&c, &c5, sizeof c);
    assert_int_equal(ea_config_kv_dim(&c), 32);
    assert_int_equal(c.tie_word_embeddings, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_config_refusals),
        cmocka_unit_test(test_llama_long_matches_reference),
        cmocka_unit_test(test_llama_long_qkv_reference),
        cmocka_unit_test(test_llama_long_gqa_codecs),
    };
    return TEST_RUN(tests, NULL, NULL);
}
