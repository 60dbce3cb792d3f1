/* The forward pass against Hugging Face transformers (float64) fixtures: every hidden state,
 * every layer's qkv, the logits (max abs diff <= 1e-4) and 40 greedy tokens (exact). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define TOL 1e-4

typedef struct {
    ea_model *m;
    int T, C, L;
    float *hidden; /* (L+1) × T × C */
    float *qkv;    /* L × T × 3C */
} capture_ctx;

static ea_status capture_all(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    capture_ctx *c = user;
    for (int i = 0; i < n; i++) {
        int t = pos0 + i;
        if (site == EA_SITE_HIDDEN)
            memcpy(c->hidden + ((size_t)layer * c->T + t) * c->C, x + (size_t)i * ld, sizeof(float) * (size_t)d);
        else
            memcpy(c->qkv + ((size_t)layer * c->T + t) * 3 * c->C + (size_t)(site - EA_SITE_Q) * c->C, x + (size_t)i * ld,
                   sizeof(float) * (size_t)d);
    }
    return 0;
}

static float *fixture_f32(ea_st_file *f, const char *name, size_t expect_numel) {
    const ea_st_tensor *t = ea_st_find(f, name);
    assert_non_null(t);
    assert_int_equal(t->numel, expect_numel);
    float *d = malloc(sizeof(float) * t->numel);
    assert_int_equal(ea_st_to_f32(f, t, d), EA_OK);
    return d;
}

static void check_model(const char *model_dir, const char *fixture) {
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
        capture_ctx cc = {m, T, C, L, calloc((size_t)(L + 1) * T * C, sizeof(float)), calloc((size_t)L * T * 3 * C, sizeof(float))};
        ea_model_set_capture(m, capture_all, &cc);
        ea_kvcache *cache;
        assert_int_equal(ea_kvcache_init(&cache, cfg, cfg->n_positions, NULL), EA_OK);
        float *logits = malloc(sizeof(float) * (size_t)T * V);
        assert_int_equal(ea_model_forward(m, cache, ids, T, logits, 1), EA_OK);
        ea_model_set_capture(m, NULL, NULL);

        snprintf(name, sizeof name, "p%d.hidden_states", p);
        float *ref_h = fixture_f32(fx, name, (size_t)(L + 1) * T * C);
        snprintf(name, sizeof name, "p%d.qkv", p);
        float *ref_q = fixture_f32(fx, name, (size_t)L * T * 3 * C);
        snprintf(name, sizeof name, "p%d.logits", p);
        float *ref_l = fixture_f32(fx, name, (size_t)T * V);
        double worst = 0;
        for (int l = 0; l <= L; l++) {
            double dh = test_max_abs_diff(cc.hidden + (size_t)l * T * C, ref_h + (size_t)l * T * C, (size_t)T * C);
            printf("  %s p%d hidden[%d]: max |diff| = %.3g\n", fixture, p, l, dh);
            assert_true(dh <= TOL);
            if (dh > worst) worst = dh;
        }
        for (int l = 0; l < L; l++) {
            double dq = test_max_abs_diff(cc.qkv + (size_t)l * T * 3 * C, ref_q + (size_t)l * T * 3 * C, (size_t)T * 3 * C);
            printf("  %s p%d qkv[%d]: max |diff| = %.3g\n", fixture, p, l, dq);
            assert_true(dq <= TOL);
        }
        double dl = test_max_abs_diff(logits, ref_l, (size_t)T * V);
        printf("  %s p%d logits: max |diff| = %.3g, NMSE = %.3g\n", fixture, p, dl, test_nmse(logits, ref_l, (size_t)T * V));
        assert_true(dl <= TOL);

        /* Incremental decode over the cache gives the same last-token logits as prefill. */
        ea_kvcache_reset(cache);
        float *last = malloc(sizeof(float) * (size_t)V);
        for (int i = 0; i < T; i++) assert_int_equal(ea_model_forward(m, cache, ids + i, 1, last, 0), EA_OK);
        double dd = test_max_abs_diff(last, logits + (size_t)(T - 1) * V, (size_t)V);
        printf("  %s p%d decode vs prefill logits: max |diff| = %.3g\n", fixture, p, dd);
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
        printf("  %s p%d greedy: %d/40 tokens differ\n", fixture, p, mism);
        assert_int_equal(mism, 0);

        free(last); free(gref); free(ref_h); free(ref_q); free(ref_l); free(logits);
        ea_kvcache_free(cache);
        free(cc.hidden); free(cc.qkv); free(ids); free(idf);
    }
    ea_st_close(fx);
    ea_model_free(m);
}

static void test_micro_matches_reference(void **state) {
    (void)state;
    check_model(TEST_MODEL_DIR, TEST_FIXTURE_DIR "/gpt2-micro.reference.safetensors");
}

static void test_mini_matches_reference(void **state) {
    (void)state;
    const char *dir = test_shared_path("models/gpt2-mini"), *fx = test_shared_path("fixtures/gpt2-mini.reference.safetensors");
    if (!dir || !fx) TEST_SKIP("../shared/models/gpt2-mini or its fixture is absent: sharded-model reference test skipped");
    check_model(dir, fx);
}

static void test_cache_capacity_enforced(void **state) {
    (void)state;
    ea_model *m;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    ea_kvcache *cache;
    assert_int_equal(ea_kvcache_init(&cache, ea_model_config(m), 4, NULL), EA_OK);
    int ids[5] = {1, 2, 3, 4, 5};
    assert_int_equal(ea_model_forward(m, cache, ids, 5, NULL, 0), EA_ERR_ARG);
    int bad = 60000;
    assert_int_equal(ea_model_forward(m, cache, &bad, 1, NULL, 0), EA_ERR_ARG);
    printf("  error: %s\n", ea_last_error());
    assert_non_null(strstr(ea_last_error(), "60000"));
    ea_kvcache_free(cache);
    ea_model_free(m);
}

/* Loading a model must not change the caller's OpenMP thread count: the OpenMP build of OpenBLAS
 * implements openblas_set_num_threads(1) with omp_set_num_threads(1), which once made the whole
 * engine single-threaded (prefill and decode at half speed, every result still exact). */
static void test_load_keeps_omp_threads(void **state) {
    (void)state;
    omp_set_num_threads(3);
    ea_model *m;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    assert_int_equal(omp_get_max_threads(), 3);
    ea_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_keeps_omp_threads),
        cmocka_unit_test(test_micro_matches_reference),
        cmocka_unit_test(test_mini_matches_reference),
        cmocka_unit_test(test_cache_capacity_enforced),
    };
    return TEST_RUN(tests, NULL, NULL);
}
