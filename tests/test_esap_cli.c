/* End-to-end ESAP commands: handshake, align, message on the bundled model against itself, and,
 * when ../shared is present, gpt2-micro (128 dims) against gpt2-mini (256 dims). */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    assert_true(cJSON_IsString(v));
    return v->valuestring;
}

/* The handshake keys the issue specifies, and the invariants they must satisfy. */
static double check_handshake(const cJSON *j) {
    const cJSON *a = test_json_obj(j, "a"), *b = test_json_obj(j, "b"), *c = test_json_obj(j, "controls");
    double r = test_json_num(j, "ck_pearson");
    assert_true(test_json_num(a, "Df") >= 1 && test_json_num(a, "Df") <= test_json_num(a, "d"));
    assert_true(test_json_num(b, "Df") >= 1 && test_json_num(b, "Df") <= test_json_num(b, "d"));
    const char *verdict = str(j, "verdict");
    /* The verdict rests on mutual k-NN against its permutation null (p < 0.01), not on the C(k)
     * correlation, which is reported beside it as ck_above_threshold; spectrum files alone cannot
     * compute the neighbourhoods ("untested"). */
    assert_true(test_json_num(j, "threshold") == 0.9);
    const cJSON *ck_above = cJSON_GetObjectItemCaseSensitive(j, "ck_above_threshold");
    assert_true(cJSON_IsBool(ck_above));
    assert_int_equal(cJSON_IsTrue(ck_above), r > 0.9);
    const cJSON *mk = cJSON_GetObjectItemCaseSensitive(j, "mutual_knn");
    if (cJSON_IsObject(mk)) {
        double p = test_json_num(mk, "p_value"), value = test_json_num(mk, "value"), nul = test_json_num(test_json_obj(mk, "null"), "mean");
        double n_perm = test_json_num(test_json_obj(mk, "null"), "n");
        assert_true(p >= 1.0 / (n_perm + 1) - 1e-12 && p <= 1);
        assert_true(value >= 0 && value <= 1 && nul >= 0 && nul <= 1);
        assert_string_equal(verdict, p < 0.01 ? "converged" : "diverged");
    } else
        assert_string_equal(verdict, "untested");
    const char *keys[] = {"a_vs_isotropic", "b_vs_isotropic", "a_vs_powerlaw", "b_vs_powerlaw"};
    for (int i = 0; i < 4; i++) {
        double v = test_json_num(c, keys[i]);
        assert_true(v >= -1 && v <= 1);
    }
    printf("handshake: Df %.4f (d=%g) vs %.4f (d=%g), K=%g, r = %.6f -> %s; controls iso %.4f/%.4f power %.4f/%.4f\n",
           test_json_num(a, "Df"), test_json_num(a, "d"), test_json_num(b, "Df"), test_json_num(b, "d"), test_json_num(j, "K"), r, verdict, test_json_num(c, "a_vs_isotropic"),
           test_json_num(c, "b_vs_isotropic"), test_json_num(c, "a_vs_powerlaw"), test_json_num(c, "b_vs_powerlaw"));
    return r;
}

static void test_handshake_self(void **state) {
    (void)state;
    cJSON *j = test_cli_json((const char *[]){"handshake", "--json", NULL});
    double r = check_handshake(j);
    assert_true(fabs(r - 1.0) < 1e-12);
    assert_int_equal((int)test_json_num(test_json_obj(j, "a"), "d"), 128);
    assert_true(test_json_num(test_json_obj(j, "a"), "Df") == test_json_num(test_json_obj(j, "b"), "Df"));
    cJSON_Delete(j);
    /* hidden site over a little text */
    j = test_cli_json((const char *[]){"handshake", "--site", "hidden:2", "--max-tokens", "400", "--json", NULL});
    r = check_handshake(j);
    assert_true(fabs(r - 1.0) < 1e-12);
    assert_string_equal(str(test_json_obj(j, "a"), "site"), "hidden:2");
    cJSON_Delete(j);
}

/* Two processes exchange messages: write them, then compare from the files alone. */
static void test_handshake_messages(void **state) {
    (void)state;
    char *dir = test_tmpdir(), pa[512], pb[512], bad[512];
    snprintf(pa, sizeof pa, "%s/a.json", dir);
    snprintf(pb, sizeof pb, "%s/b.json", dir);
    snprintf(bad, sizeof bad, "%s/bad.json", dir);
    cJSON *j1 = test_cli_json((const char *[]){"handshake", "--save-a", pa, "--save-b", pb, "--json", NULL});
    cJSON *j2 = test_cli_json((const char *[]){"handshake", "--spectrum-a", pa, "--spectrum-b", pb, "--json", NULL});
    assert_true(test_json_num(j1, "ck_pearson") == test_json_num(j2, "ck_pearson"));
    assert_true(test_json_num(test_json_obj(j1, "a"), "Df") == test_json_num(test_json_obj(j2, "a"), "Df"));
    assert_true(test_json_num(test_json_obj(j1, "controls"), "a_vs_isotropic") == test_json_num(test_json_obj(j2, "controls"), "a_vs_isotropic"));
    ea_esap_spectrum s;
    assert_int_equal(ea_esap_spectrum_load(pa, &s), EA_OK);
    assert_int_equal(s.d, 128);
    ea_esap_spectrum_free(&s);
    cJSON_Delete(j1);
    cJSON_Delete(j2);

    /* A malformed message: clear error naming the file, and no --save-b output written. */
    const char *text = "{\"format\": \"eigenalign-esap-spectrum\", \"version\": 1}";
    assert_int_equal(test_write_file(bad, text, strlen(text)), 0);
    char saved[512];
    snprintf(saved, sizeof saved, "%s/out.json", dir);
    test_cli_fails((const char *[]){"handshake", "--spectrum-a", bad, "--save-b", saved, "--json", NULL}, "bad.json");
    struct stat st;
    assert_int_not_equal(stat(saved, &st), 0);
    test_cli_fails((const char *[]){"handshake", "--spectrum-a", pa, "--model-a", TEST_MODEL_DIR, NULL}, "not both");
    test_rmdir(dir);
    free(dir);
}

static void check_align(const cJSON *j) {
    const char *keys[] = {"rank", "train_anchors", "test_anchors", "p_at_1", "p_at_10", "csls_p_at_1", "test_cosine",
                          "train_cosine"};
    for (int i = 0; i < 8; i++) (void)test_json_num(j, keys[i]);
    const cJSON *n = test_json_obj(j, "null");
    double p1 = test_json_num(j, "p_at_1"), p10 = test_json_num(j, "p_at_10"), m = test_json_num(j, "test_anchors");
    assert_true(p1 >= 0 && p1 <= p10 && p10 <= 1);
    printf("align rank %g train %g test %g: P@1 %.4f P@10 %.4f CSLS@1 %.4f test cos %.4f train cos (in-sample) %.4f | "
           "null P@1 %.4f cos %.4f\n",
           test_json_num(j, "rank"), test_json_num(j, "train_anchors"), m, p1, p10, test_json_num(j, "csls_p_at_1"), test_json_num(j, "test_cosine"),
           test_json_num(j, "train_cosine"), test_json_num(n, "p_at_1"), test_json_num(n, "test_cosine"));
    /* Null near chance: see test_esap.c (assert_null_near_chance) for the bound. */
    assert_true(test_json_num(n, "p_at_1") <= 8.0 / m);
}

static void test_align_self(void **state) {
    (void)state;
    cJSON *j = test_cli_json((const char *[]){"align", "--rank", "32", "--anchors", "3000", "--test", "1000", "--json", NULL});
    check_align(j);
    assert_int_equal((int)test_json_num(j, "rank"), 32);
    assert_int_equal((int)test_json_num(j, "anchors_total"), 50257);
    assert_true(test_json_num(j, "p_at_1") == 1.0); /* a model against itself: W = I up to eigenvector signs */
    assert_true(test_json_num(j, "test_cosine") > 0.9999);
    cJSON_Delete(j);
    j = test_cli_json((const char *[]){"align", "--repr", "hidden:last", "--max-tokens", "600", "--rank", "16", "--json", NULL});
    check_align(j);
    assert_string_equal(str(j, "repr_a"), "hidden:4");
    assert_true(test_json_num(j, "p_at_1") == 1.0);
    cJSON_Delete(j);
}

static void test_align_sweep(void **state) {
    (void)state;
    cJSON *j = test_cli_json((const char *[]){"align", "--sweep", "--ranks", "8,16", "--anchor-counts", "100,1000", "--test",
                                         "500", "--json", NULL});
    assert_true(cJSON_IsArray(j));
    assert_int_equal(cJSON_GetArraySize(j), 4);
    const cJSON *e;
    int i = 0;
    cJSON_ArrayForEach(e, j) {
        check_align(e);
        assert_int_equal((int)test_json_num(e, "rank"), i < 2 ? 8 : 16);
        assert_int_equal((int)test_json_num(e, "train_anchors"), i % 2 ? 1000 : 100);
        assert_int_equal((int)test_json_num(e, "test_anchors"), 500);
        i++;
    }
    cJSON_Delete(j);
}

static void test_message_self(void **state) {
    (void)state;
    cJSON *j = test_cli_json((const char *[]){"message", "--ranks", "8,128", "--test", "600", "--anchors", "3000", "--json",
                                         NULL});
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(j, "results"), *e;
    assert_true(cJSON_IsArray(res));
    assert_int_equal(cJSON_GetArraySize(res), 2);
    assert_int_equal((int)test_json_num(j, "bytes_full"), 4 * 128);
    cJSON_ArrayForEach(e, res) {
        double k = test_json_num(e, "rank");
        printf("message k=%g: %g B f32 / %g B f16 (full %g B): acc %.4f f16 %.4f top10 %.4f reduced %.4f null %.4f\n", k,
               test_json_num(e, "bytes_f32"), test_json_num(e, "bytes_f16"), test_json_num(j, "bytes_full"), test_json_num(e, "accuracy_f32"),
               test_json_num(e, "accuracy_f16"), test_json_num(e, "top10_f32"), test_json_num(e, "accuracy_reduced_f32"), test_json_num(e, "null_accuracy"));
        assert_true(test_json_num(e, "bytes_f32") == 4 * k && test_json_num(e, "bytes_f16") == 2 * k);
        assert_true(test_json_num(e, "null_accuracy") <= 8.0 / 600);
        if (k == 128) assert_true(test_json_num(e, "accuracy_f32") == 1.0); /* full rank, same model: exact */
    }
    cJSON_Delete(j);
}

static void test_errors(void **state) {
    (void)state;
    test_cli_fails((const char *[]){"align", "--model-b", "/nonexistent/model", NULL}, "/nonexistent/model");
    test_cli_fails((const char *[]){"align", "--repr", "hidden:x", NULL}, "hidden:x");
    test_cli_fails((const char *[]){"align", "--repr", "hidden:9", NULL}, "out of range");
    test_cli_fails((const char *[]){"align", "--rank", "129", NULL}, "--rank 129");
    test_cli_fails((const char *[]){"align", "--anchors", "50000", "--test", "2000", NULL}, "exceed");
    test_cli_fails((const char *[]){"align", "--sweep", "--ranks", "8,,16", NULL}, "--ranks");
    test_cli_fails((const char *[]){"align", "--bogus", NULL}, "--bogus");
    test_cli_fails((const char *[]){"message", "--ranks", "0", NULL}, "--ranks");
    test_cli_fails((const char *[]){"handshake", "--site", "hidden:1", "--text", "/nonexistent/text.txt", NULL},
             "/nonexistent/text.txt");
    test_cli_fails((const char *[]){"handshake", "--K", "1", NULL}, "--K");
    char *out;
    assert_int_equal(test_run_cli(&out, NULL, (const char *[]){"message", "--help", NULL}), 0);
    assert_non_null(strstr(out, "usage: eigenalign message"));
    free(out);
}

/* gpt2-micro (128) vs gpt2-mini (256): different widths, same tokenizer. */
static void test_micro_vs_mini(void **state) {
    (void)state;
    const char *mini = test_shared_path("models/gpt2-mini");
    if (!mini) TEST_SKIP("../shared/models/gpt2-mini is absent: micro-vs-mini ESAP run skipped");
    cJSON *j = test_cli_json((const char *[]){"handshake", "--model-b", mini, "--json", NULL});
    check_handshake(j);
    assert_int_equal((int)test_json_num(test_json_obj(j, "b"), "d"), 256);
    assert_int_equal((int)test_json_num(j, "K"), 128);
    cJSON_Delete(j);
    j = test_cli_json((const char *[]){"align", "--model-b", mini, "--rank", "64", "--anchors", "3000", "--test", "1000",
                                  "--json", NULL});
    check_align(j);
    /* Real signal: far above the shuffled null and chance. */
    assert_true(test_json_num(j, "p_at_1") > 20 * test_json_num(j, "chance_p_at_1"));
    cJSON_Delete(j);
    j = test_cli_json((const char *[]){"align", "--model-b", mini, "--repr", "hidden:last", "--max-tokens", "1000", "--rank",
                                  "32", "--json", NULL});
    check_align(j);
    assert_true(test_json_num(j, "p_at_1") > 20 * test_json_num(j, "chance_p_at_1"));
    cJSON_Delete(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_self),
        cmocka_unit_test(test_handshake_messages),
        cmocka_unit_test(test_align_self),
        cmocka_unit_test(test_align_sweep),
        cmocka_unit_test(test_message_self),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_micro_vs_mini),
    };
    return TEST_RUN(tests, NULL, NULL);
}
