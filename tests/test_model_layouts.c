/* Both checkpoint layouts load to the same model: the transformers layout (F16, keys prefixed
 * "transformer.") and the original openai-community/gpt2 layout (F32, bare keys, extra
 * h.N.attn.bias / h.N.attn.masked_bias buffers). Built here from the bundled model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

static char *make_original_layout(void) {
    char *dir = test_tmpdir(), path[1024];
    ea_st_file *src;
    assert_int_equal(ea_st_open(TEST_MODEL_DIR "/model.safetensors", &src), EA_OK);
    ea_st_writer *w;
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    for (int i = 0; i < ea_st_count(src); i++) {
        const ea_st_tensor *t = ea_st_get(src, i);
        float *buf = malloc(sizeof(float) * t->numel);
        assert_int_equal(ea_st_to_f32(src, t, buf), EA_OK);
        const char *name = strncmp(t->name, "transformer.", 12) == 0 ? t->name + 12 : t->name;
        assert_int_equal(ea_st_writer_add(w, name, EA_DTYPE_F32, t->ndim, t->shape, buf), EA_OK);
        free(buf);
    }
    /* The original file's causal-mask buffers: not weights, must be ignored. */
    int64_t bshape[4] = {1, 1, 512, 512}, scalar_shape[1] = {1};
    float *mask = calloc(512 * 512, sizeof(float)), masked = -1e4f;
    for (int l = 0; l < 4; l++) {
        char name[64];
        snprintf(name, sizeof name, "h.%d.attn.bias", l);
        assert_int_equal(ea_st_writer_add(w, name, EA_DTYPE_F32, 4, bshape, mask), EA_OK);
        snprintf(name, sizeof name, "h.%d.attn.masked_bias", l);
        assert_int_equal(ea_st_writer_add(w, name, EA_DTYPE_F32, 1, scalar_shape, &masked), EA_OK);
    }
    free(mask);
    ea_st_writer_meta(w, "format", "pt");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(ea_st_writer_save(w, path), EA_OK);
    ea_st_writer_free(w);
    ea_st_close(src);
    const char *links[] = {"config.json", "vocab.json", "merges.txt"};
    for (int i = 0; i < 3; i++) {
        char from[1024];
        snprintf(from, sizeof from, "%s/%s", TEST_MODEL_DIR, links[i]);
        snprintf(path, sizeof path, "%s/%s", dir, links[i]);
        assert_int_equal(symlink(from, path), 0);
    }
    return dir;
}

static void test_original_layout_matches(void **state) {
    (void)state;
    char *dir = make_original_layout();
    ea_model *a, *b;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &a), EA_OK);
    if (ea_model_load(dir, &b) != EA_OK) fail_msg("original layout: %s", ea_last_error());
    /* F16 -> F32 is exact, so both hold the same weights. */
    printf("  fingerprints: %s vs %s\n", ea_model_fingerprint(a), ea_model_fingerprint(b));
    assert_string_equal(ea_model_fingerprint(a), ea_model_fingerprint(b));
    const ea_config *c = ea_model_config(a);
    int ids[6] = {464, 1468, 582, 3114, 379, 262};
    ea_kvcache *ca, *cb;
    ea_kvcache_init(&ca, c, 16, NULL);
    ea_kvcache_init(&cb, c, 16, NULL);
    float *la = malloc(sizeof(float) * 6 * c->vocab_size), *lb = malloc(sizeof(float) * 6 * c->vocab_size);
    assert_int_equal(ea_model_forward(a, ca, ids, 6, la, 1), EA_OK);
    assert_int_equal(ea_model_forward(b, cb, ids, 6, lb, 1), EA_OK);
    double d = test_max_abs_diff(la, lb, (size_t)6 * c->vocab_size);
    printf("  prefill logits F16/prefixed vs F32/bare: max |diff| = %.3g\n", d);
    assert_true(d == 0.0);
    /* Decode reads the stored precision (F16 vs F32 rows): equal up to summation order. */
    float *da = malloc(sizeof(float) * c->vocab_size), *db = malloc(sizeof(float) * c->vocab_size);
    assert_int_equal(ea_model_forward(a, ca, ids, 1, da, 0), EA_OK);
    assert_int_equal(ea_model_forward(b, cb, ids, 1, db, 0), EA_OK);
    d = test_max_abs_diff(da, db, (size_t)c->vocab_size);
    printf("  decode logits: max |diff| = %.3g\n", d);
    assert_true(d <= 1e-4);
    free(la); free(lb); free(da); free(db);
    ea_kvcache_free(ca);
    ea_kvcache_free(cb);
    ea_model_free(a);
    ea_model_free(b);
    test_rmdir(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_original_layout_matches)};
    return TEST_RUN(tests, NULL, NULL);
}
