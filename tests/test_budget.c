/* `eigenalign budget` and ea_budget_compute: parameter counts against the published ones
 * (GPT-2 124,439,808 as Hugging Face counts it; Llama-2-7B 6,738,415,616), the bundled model's
 * count against the sum of its checkpoint's tensors, KV bytes against the formula
 * 2 × layers × seq × kv_heads × head_dim × bytes and against the cache the engine allocates,
 * llama.cpp block sizes, and hostile input (unknown shape, bad config) → a clear error, exit 2. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static void published_counts(void **state) {
    (void)state;
    /* model.num_parameters() of the Hugging Face checkpoints (lm_head tied for GPT-2) */
    const struct { const char *name; double n; } want[] = {
        {"gpt2", 124439808.0},         {"gpt2-medium", 354823168.0}, {"gpt2-large", 774030080.0},
        {"gpt2-xl", 1557611200.0},     {"llama-2-7b", 6738415616.0},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        ea_config c;
        ea_budget b;
        assert_int_equal(ea_budget_shape(want[i].name, &c), EA_OK);
        assert_int_equal(ea_budget_compute(&c, 4096, "f32", 1, &b), EA_OK);
        printf("%-12s %.0f parameters\n", want[i].name, b.n_params);
        assert_true(b.n_params == want[i].n);
    }
}

static void gpt2_by_hand(void **state) {
    (void)state;
    ea_config c;
    ea_budget b;
    assert_int_equal(ea_budget_shape("gpt2", &c), EA_OK);
    assert_int_equal(ea_budget_compute(&c, 1024, "q8", 2, &b), EA_OK);
    /* matrices: wte 50257×768, wpe 1024×768, per layer c_attn 768×2304, attn.c_proj 768×768,
     * c_fc 768×3072, mlp.c_proj 3072×768 */
    double per_layer_m = 768.0 * 2304 + 768.0 * 768 + 768.0 * 3072 + 3072.0 * 768;
    double matrix = 50257.0 * 768 + 1024.0 * 768 + 12 * per_layer_m;
    double vector = 124439808.0 - matrix;
    assert_true(b.n_matrix == matrix);
    assert_true(b.n_vector == vector);
    assert_true(vector == 2 * 768 + 12 * (4 * 768 + 2304 + 768 + 3072 + 768)); /* ln_1, ln_2, biases; + ln_f */
    assert_true(b.w_f16 == 2 * 124439808.0);
    assert_true(b.w_q8_0 == matrix / 32 * 34 + 4 * vector);
    assert_true(b.w_q4_0 == matrix / 32 * 18 + 4 * vector);
    /* the engine: float32 of everything + f16 decode copies of the four projections and wte */
    assert_true(b.engine_f16_ckpt == 4 * 124439808.0 + 2 * (12 * per_layer_m + 50257.0 * 768));
    /* KV q8_0: 2 × 12 × 1024 rows of 768 values, 34 bytes per 32 */
    assert_true(b.kv_f32 == 2.0 * 12 * 1024 * 768 * 4);
    assert_true(b.kv_bytes == 2.0 * 12 * 1024 * (768 / 32) * 34);
    assert_true(fabs(b.kv_bits_per_value - 8.5) < 1e-12);
    assert_true(b.scores_note == 12.0 * 1024 * 1024 * 4);
    assert_true(b.scores_engine == 1024.0 * 64 * 2 * 4);
}

static void llama_gqa_by_hand(void **state) {
    (void)state;
    ea_config c;
    ea_budget b;
    assert_int_equal(ea_budget_shape("llama-2-7b", &c), EA_OK);
    assert_int_equal(ea_budget_compute(&c, 4096, "f16", 1, &b), EA_OK);
    assert_true(b.kv_bytes == 2.0 * 32 * 4096 * 32 * 128 * 2); /* 2 GiB: the commonly quoted figure */
    assert_true(b.kv_bytes == 2147483648.0);
    /* a GQA config: 8 layers, 4 query heads, 2 KV heads of 64 */
    const char *js = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 256, \"intermediate_size\": 768,"
                     "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 64, \"num_hidden_layers\": 8,"
                     "\"vocab_size\": 1000, \"max_position_embeddings\": 4096, \"rms_norm_eps\": 1e-5,"
                     "\"tie_word_embeddings\": false}";
    assert_int_equal(ea_config_parse(js, strlen(js), "gqa.json", &c), EA_OK);
    assert_int_equal(ea_budget_compute(&c, 3000, "q4", 1, &b), EA_OK);
    assert_int_equal(b.kv_heads, 2);
    assert_true(b.kv_f32 == 2.0 * 8 * 3000 * 2 * 64 * 4);
    assert_true(b.kv_bytes == 2.0 * 8 * 3000 * (128 / 32) * 18);
    /* q, k, v, o, gate, up, down; embed + untied lm_head; 2 norms per layer + final */
    double per = 256.0 * 256 + 2 * 128.0 * 256 + 256.0 * 256 + 3 * 768.0 * 256;
    assert_true(b.n_params == 2 * 1000.0 * 256 + 8 * per + 8 * 2 * 256.0 + 256);
    /* pca:9 = 9 float coefficients per row; bases = mean + 9 vectors of 128 per (layer, K|V) */
    assert_int_equal(ea_budget_compute(&c, 3000, "pca:9", 1, &b), EA_OK);
    assert_true(b.kv_bytes == 2.0 * 8 * 3000 * 9 * 4);
    assert_true(b.kv_overhead == 2.0 * 8 * (128 + 9 * 128) * 4);
    assert_int_equal(ea_budget_compute(&c, 3000, "klt:2", 1, &b), EA_OK);
    assert_true(isnan(b.kv_overhead));
    assert_true(b.kv_bytes == 2.0 * 8 * 3000 * 128 * 2 / 8);
}

/* The bundled model: the count equals the checkpoint's tensors (less GPT-2's mask buffers), and
 * the KV bytes equal what the engine's cache allocates. */
static void bundled_model_agrees(void **state) {
    (void)state;
    ea_config c;
    assert_int_equal(ea_config_load(TEST_MODEL_DIR "/config.json", &c), EA_OK);
    ea_budget b;
    assert_int_equal(ea_budget_compute(&c, 256, "q8", 1, &b), EA_OK);
    ea_st_file *f;
    assert_int_equal(ea_st_open(TEST_MODEL_DIR "/model.safetensors", &f), EA_OK);
    double n = 0;
    for (int i = 0; i < ea_st_count(f); i++) {
        const ea_st_tensor *t = ea_st_get(f, i);
        size_t len = strlen(t->name);
        if ((len > 10 && !strcmp(t->name + len - 10, ".attn.bias")) || strstr(t->name, "masked_bias") ||
            !strcmp(t->name, "lm_head.weight"))
            continue;
        n += (double)t->numel;
    }
    ea_st_close(f);
    printf("gpt2-micro: %.0f parameters in the file, %.0f counted\n", n, b.n_params);
    assert_true(n == b.n_params);
    ea_kv_codec *codec;
    ea_kvcache *cache;
    assert_int_equal(ea_kv_codec_create("q8", &c, NULL, &codec), EA_OK);
    assert_int_equal(ea_kvcache_init(&cache, &c, 256, codec), EA_OK);
    size_t alloc = ea_kvcache_allocated_bytes(cache);
    printf("kv q8 at 256: %zu allocated, %.0f computed\n", alloc, b.kv_bytes);
    assert_true(fabs((double)alloc - b.kv_bytes) <= 2.0 * c.n_layer); /* + at most a guard byte per buffer */
    ea_kvcache_free(cache);
    ea_kv_codec_free(codec);
}

static void bad_input(void **state) {
    (void)state;
    ea_config c;
    ea_budget b;
    assert_int_not_equal(ea_budget_shape("gpt5", &c), EA_OK);
    assert_non_null(strstr(ea_last_error(), "gpt5"));
    assert_int_equal(ea_budget_shape("gpt2", &c), EA_OK);
    assert_int_not_equal(ea_budget_compute(&c, 0, "f32", 1, &b), EA_OK);
    assert_int_not_equal(ea_budget_compute(&c, 16, "zip", 1, &b), EA_OK);
    assert_int_not_equal(ea_budget_compute(&c, 16, "pca:769", 1, &b), EA_OK);
    assert_int_not_equal(ea_budget_compute(&c, 16, "file:/x", 1, &b), EA_OK);
    /* the largest shape config.json allows at the longest --seq: refused, not wrapped */
    const char *huge = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 65536, \"intermediate_size\": 1048576,"
                       "\"num_attention_heads\": 1024, \"num_key_value_heads\": 1024, \"head_dim\": 1024,"
                       "\"num_hidden_layers\": 256, \"vocab_size\": 4194304, \"max_position_embeddings\": 1048576}";
    ea_config hc;
    assert_int_equal(ea_config_parse(huge, strlen(huge), "huge.json", &hc), EA_OK);
    assert_int_not_equal(ea_budget_compute(&hc, 1 << 24, "q8", 1, &b), EA_OK);
    printf("huge: %s\n", ea_last_error());
    assert_int_equal(ea_budget_compute(&hc, 1, "q8", 1, &b), EA_OK); /* one token still counts exactly */

    char *out, *err;
    const char *unknown[] = {"budget", "--shape", "gpt5", NULL};
    assert_int_equal(test_run_cli(&out, &err, unknown), 2);
    assert_non_null(strstr(err, "gpt5"));
    assert_string_equal(out, "");
    free(out), free(err);

    char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    const char *bad = "{\"n_layer\": 2, \"n_head\": 5, \"n_embd\": 64}";
    assert_int_equal(test_write_file(path, bad, strlen(bad)), 0);
    const char *bad_cfg[] = {"budget", "--config", path, NULL};
    assert_int_equal(test_run_cli(&out, &err, bad_cfg), 2);
    assert_non_null(strstr(err, "config.json"));
    assert_string_equal(out, "");
    free(out), free(err);
    const char *bad_model[] = {"budget", "--model", dir, "--json", NULL};
    assert_int_equal(test_run_cli(&out, &err, bad_model), 2);
    assert_string_equal(out, "");
    free(out), free(err);
    test_rmdir(dir);
    free(dir);
    const char *both[] = {"budget", "--shape", "gpt2", "--config", "x.json", NULL};
    assert_int_equal(test_run_cli(&out, &err, both), 2);
    free(out), free(err);
    const char *seq0[] = {"budget", "--seq", "0", NULL};
    assert_int_equal(test_run_cli(&out, &err, seq0), 2);
    free(out), free(err);
    const char *badkv[] = {"budget", "--kv", "pca:0", NULL};
    assert_int_equal(test_run_cli(&out, &err, badkv), 2);
    assert_non_null(strstr(err, "pca:0"));
    free(out), free(err);
}

static void cli_json(void **state) {
    (void)state;
    char *out, *err;
    const char *args[] = {"budget", "--shape", "llama-2-7b", "--kv", "f16", "--json", NULL};
    int rc = test_run_cli(&out, &err, args);
    if (rc) fail_msg("budget exited %d: %s", rc, err);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_true(cJSON_GetObjectItem(j, "n_params")->valuedouble == 6738415616.0);
    assert_true(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "kv"), "bytes")->valuedouble == 2147483648.0);
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(j, "note_path")) == 4);
    cJSON_Delete(j);
    free(out), free(err);
    const char *table[] = {"budget", NULL};
    assert_int_equal(test_run_cli(&out, &err, table), 0);
    assert_non_null(strstr(out, "124439808"));
    assert_non_null(strstr(out, "| KV cache | 85x"));
    free(out), free(err);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(published_counts), cmocka_unit_test(gpt2_by_hand), cmocka_unit_test(llama_gqa_by_hand),
        cmocka_unit_test(bundled_model_agrees), cmocka_unit_test(bad_input), cmocka_unit_test(cli_json),
    };
    return TEST_RUN(tests, NULL, NULL);
}
