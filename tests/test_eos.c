/* End-of-sequence ids (issue 15): ea_generate stops on the model's own eos_token_id, read from
 * generation_config.json (which wins, as in transformers' generate) or config.json, an id or a list;
 * GPT-2 directories without the key keep stopping on 50256; bad values are refused naming the file.
 * The stopping point is checked against an unstopped greedy run of the same model (its own output
 * is the reference: where the chosen id first appears is where generation must end). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define NEW 24

/* A copy of gpt2-micro whose config.json has eos_value in place of its "eos_token_id" value 50256
 * (NULL: unchanged), and an optional generation_config.json. */
static char *model_copy(const char *eos_value, const char *gen_config) {
    char *dir = test_tmpdir(), path[4096], src[4096];
    snprintf(src, sizeof src, "%s/model.safetensors", TEST_MODEL_DIR);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(symlink(src, path), 0);
    char *cfg;
    size_t n;
    snprintf(src, sizeof src, "%s/config.json", TEST_MODEL_DIR);
    assert_int_equal(ea_read_file(src, 1 << 20, &cfg, &n), EA_OK);
    char *out = malloc(n + (eos_value ? strlen(eos_value) : 0) + 1);
    memcpy(out, cfg, n);
    out[n] = 0;
    if (eos_value) {
        const char *key = "\"eos_token_id\": 50256";
        char *at = strstr(out, key);
        assert_non_null(at);
        size_t pre = (size_t)(at - out) + strlen(key) - 5;
        sprintf(out + pre, "%s%.*s", eos_value, (int)(n - pre - 5), cfg + pre + 5);
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(test_write_file(path, out, strlen(out)), 0);
    free(cfg);
    free(out);
    if (gen_config) {
        snprintf(path, sizeof path, "%s/generation_config.json", dir);
        assert_int_equal(test_write_file(path, gen_config, strlen(gen_config)), 0);
    }
    return dir;
}

static int greedy(ea_model *m, int stop, int *out) {
    ea_kvcache *cache;
    assert_int_equal(ea_kvcache_init(&cache, ea_model_config(m), 64, NULL), EA_OK);
    ea_sampler_params p = ea_sampler_default();
    p.temperature = 0;
    p.stop_at_eot = stop;
    int prompt[3] = {464, 3290, 318}, n_out = 0;
    assert_int_equal(ea_generate(m, cache, prompt, 3, NEW, &p, out, &n_out), EA_OK);
    ea_kvcache_free(cache);
    return n_out;
}

static void test_stops_on_config_eos(void **state) {
    (void)state;
    ea_model *m;
    int ref[NEW], got[NEW];
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    const int *ids;
    assert_int_equal(ea_model_eos(m, &ids), 1); /* gpt2-micro's config.json names 50256 */
    assert_int_equal(ids[0], 50256);
    assert_int_equal(greedy(m, 0, ref), NEW);
    ea_model_free(m);
    /* the 6th generated id as the end-of-sequence id: generation ends at its first occurrence */
    int eos = ref[5], first = 0;
    while (ref[first] != eos) first++;
    char extra[64], gen[96];
    snprintf(extra, sizeof extra, "%d", eos);
    char *dir = model_copy(extra, NULL);
    assert_int_equal(ea_model_load(dir, &m), EA_OK);
    assert_int_equal(ea_model_eos(m, &ids), 1);
    assert_int_equal(ids[0], eos);
    int n = greedy(m, 1, got);
    assert_int_equal(n, first + 1);
    assert_memory_equal(got, ref, sizeof(int) * (size_t)n);
    assert_int_equal(greedy(m, 0, got), NEW); /* --no-stop */
    ea_model_free(m);
    test_rmdir(dir);
    free(dir);
    /* generation_config.json wins over config.json; a list stops on any of its ids */
    int other = ref[2] != eos ? ref[2] : ref[3];
    int first2 = 0;
    while (ref[first2] != eos && ref[first2] != other) first2++;
    snprintf(gen, sizeof gen, "{\"eos_token_id\": [50256, %d, %d]}", other, eos);
    dir = model_copy("7", gen);
    assert_int_equal(ea_model_load(dir, &m), EA_OK);
    assert_int_equal(ea_model_eos(m, &ids), 3);
    assert_int_equal(greedy(m, 1, got), first2 + 1);
    ea_model_free(m);
    test_rmdir(dir);
    free(dir);
}

static void test_refuses_bad_eos(void **state) {
    (void)state;
    const char *bad[] = {"\"eos_token_id\": 50257", "\"eos_token_id\": -1", "\"eos_token_id\": \"</s>\"",
                         "\"eos_token_id\": [1, 2.5]", "\"eos_token_id\": [1,2,3,4,5,6,7,8,9]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *dir = model_copy(NULL, NULL);
        /* the bad value in generation_config.json: the loader must refuse it, naming that file */
        char gen[128], path[4096];
        snprintf(gen, sizeof gen, "{%s}", bad[i]);
        snprintf(path, sizeof path, "%s/generation_config.json", dir);
        assert_int_equal(test_write_file(path, gen, strlen(gen)), 0);
        ea_model *m = NULL;
        assert_int_equal(ea_model_load(dir, &m), EA_ERR_FORMAT);
        assert_null(m);
        assert_non_null(strstr(ea_last_error(), "generation_config.json"));
        assert_non_null(strstr(ea_last_error(), "eos_token_id"));
        test_rmdir(dir);
        free(dir);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_stops_on_config_eos), cmocka_unit_test(test_refuses_bad_eos)};
    return TEST_RUN(tests, NULL, NULL);
}
