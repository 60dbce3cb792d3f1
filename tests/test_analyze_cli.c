/* End-to-end: `eigenalign analyze` on the bundled gpt2-micro and calibration text. Checks the JSON
 * shape and invariants every spectrum must satisfy, the wte site against a covariance computed
 * here from the model's own embedding matrix, and clean failures that leave no SVG behind. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    assert_non_null(v);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

static const char *str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    assert_non_null(v);
    assert_true(cJSON_IsString(v));
    return v->valuestring;
}

/* Invariants of one site entry; returns its d. */
static int check_site(const cJSON *s, double *worst_trace) {
    int d = (int)num(s, "d");
    double n = num(s, "n"), df = num(s, "Df"), trace = num(s, "trace");
    int k90 = (int)num(s, "k90"), k95 = (int)num(s, "k95"), k99 = (int)num(s, "k99");
    assert_true(d >= 1 && n >= 2);
    assert_true(df >= 1 - 1e-9 && df <= d + 1e-9);
    assert_true(1 <= k90 && k90 <= k95 && k95 <= k99 && k99 <= d);
    (void)num(s, "layer");
    (void)num(s, "head");
    const char *variant = str(s, "variant");
    assert_true(!strcmp(variant, "all") || !strcmp(variant, "exclude_first") || !strcmp(variant, "standardized"));
    /* C at the fixed keys: in (0, 1], non-decreasing. */
    const cJSON *C = cJSON_GetObjectItemCaseSensitive(s, "C");
    assert_non_null(C);
    static const char *keys[5] = {"1", "2", "5", "9", "22"};
    double prev = 0;
    for (int i = 0; i < 5; i++) {
        double c = num(C, keys[i]);
        assert_true(c > 0 && c <= 1 + 1e-12);
        assert_true(c >= prev - 1e-15);
        prev = c;
    }
    /* Eigenvalues: d of them, non-negative, descending, summing to the trace. */
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(s, "eigenvalues");
    assert_true(cJSON_IsArray(ev));
    assert_int_equal(cJSON_GetArraySize(ev), d);
    double sum = 0, last = INFINITY, first = 0, sum2 = 0;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, ev) {
        double v = e->valuedouble;
        assert_true(v >= 0);
        assert_true(v <= last);
        last = v;
        if (i++ == 0) first = v;
        sum += v;
        sum2 += v * v;
    }
    double rel = fabs(sum - trace) / trace;
    if (rel > *worst_trace) *worst_trace = rel;
    assert_true(rel < 1e-9);
    /* Df and C(1) as recomputed from the printed eigenvalues. */
    assert_true(fabs(df - sum * sum / sum2) < 1e-9 * df);
    assert_true(fabs(num(C, "1") - first / sum) < 1e-9);
    if (!strcmp(variant, "standardized")) assert_true(fabs(trace - d) < 1e-9 * d);
    /* top_dims: [index, share] pairs, shares descending and at most 1 together. */
    const cJSON *top = cJSON_GetObjectItemCaseSensitive(s, "top_dims");
    assert_true(cJSON_IsArray(top) && cJSON_GetArraySize(top) >= 1);
    double share_sum = 0, last_share = INFINITY;
    cJSON_ArrayForEach(e, top) {
        assert_int_equal(cJSON_GetArraySize(e), 2);
        int idx = cJSON_GetArrayItem(e, 0)->valueint;
        double share = cJSON_GetArrayItem(e, 1)->valuedouble;
        assert_true(idx >= 0 && idx < d);
        assert_true(share >= 0 && share <= last_share);
        last_share = share;
        share_sum += share;
    }
    assert_true(share_sum <= 1 + 1e-12);
    const cJSON *nul = cJSON_GetObjectItemCaseSensitive(s, "null");
    assert_non_null(nul);
    double ndf = num(nul, "Df");
    int nk = (int)num(nul, "k95");
    assert_true(ndf > 0 && ndf <= d);
    assert_true(nk >= 1 && nk <= d);
    return d;
}

/* Variances of the wte columns, computed here two-pass from the model's matrix. */
static void wte_reference(double *trace, int *top_dim, double *top_share) {
    ea_model *m;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    const ea_config *c = ea_model_config(m);
    const float *w = ea_model_wte(m);
    int V = c->vocab_size, d = c->n_embd;
    double best = -1, tr = 0;
    for (int j = 0; j < d; j++) {
        double mean = 0, var = 0;
        for (int i = 0; i < V; i++) mean += w[(size_t)i * d + j];
        mean /= V;
        for (int i = 0; i < V; i++) {
            double t = w[(size_t)i * d + j] - mean;
            var += t * t;
        }
        var /= V - 1;
        tr += var;
        if (var > best) {
            best = var;
            *top_dim = j;
        }
    }
    *trace = tr;
    *top_share = best / tr;
    ea_model_free(m);
}

static void test_analyze_json(void **state) {
    (void)state;
    char *dir = test_tmpdir(), svg[512];
    snprintf(svg, sizeof svg, "%s/spectra.svg", dir);
    char *out = NULL, *err = NULL;
    const char *args[] = {"analyze", "--max-tokens", "300", "--ctx", "100", "--json", "--svg", svg, NULL};
    int rc = test_run_cli(&out, &err, args);
    if (rc != 0) printf("stderr: %s\n", err);
    assert_int_equal(rc, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_int_equal((int)num(j, "tokens"), 300);
    assert_int_equal((int)num(j, "windows"), 3);
    (void)str(j, "model");
    const cJSON *sites = cJSON_GetObjectItemCaseSensitive(j, "sites");
    assert_true(cJSON_IsArray(sites));
    /* gpt2-micro: 4 layers, 4 heads, d 128. hidden 5 layers × 3 variants; q/k/v 3 sites × 4 layers ×
     * (whole + 4 heads) × 3 variants; wte × 2 variants (no positions to exclude). */
    int n_sites = cJSON_GetArraySize(sites);
    printf("analyze: %d site entries\n", n_sites);
    assert_int_equal(n_sites, 5 * 3 + 3 * 4 * 5 * 3 + 2);
    double worst = 0;
    int seen_head = 0, seen_wte = 0;
    const cJSON *s;
    cJSON_ArrayForEach(s, sites) {
        int d = check_site(s, &worst);
        const char *site = str(s, "site");
        int head = (int)num(s, "head");
        const char *variant = str(s, "variant");
        double n = num(s, "n");
        if (head >= 0) {
            seen_head++;
            assert_int_equal(d, 32);
        } else {
            assert_int_equal(d, 128);
        }
        if (!strcmp(site, "wte")) {
            seen_wte++;
            assert_int_equal((int)n, 50257);
            assert_int_equal((int)num(s, "layer"), -1);
            if (!strcmp(variant, "all")) {
                double tr, share;
                int top;
                wte_reference(&tr, &top, &share);
                const cJSON *t0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(s, "top_dims"), 0);
                printf("wte: trace %.10g vs reference %.10g (rel %.2g); top dim %d (%.4f) vs %d (%.4f)\n",
                       num(s, "trace"), tr, fabs(num(s, "trace") - tr) / tr, cJSON_GetArrayItem(t0, 0)->valueint,
                       cJSON_GetArrayItem(t0, 1)->valuedouble, top, share);
                assert_true(fabs(num(s, "trace") - tr) < 1e-9 * tr);
                assert_int_equal(cJSON_GetArrayItem(t0, 0)->valueint, top);
                assert_true(fabs(cJSON_GetArrayItem(t0, 1)->valuedouble - share) < 1e-9);
            }
        } else {
            /* 3 windows of 100: exclude_first drops exactly 3 rows. */
            assert_int_equal((int)n, !strcmp(variant, "exclude_first") ? 297 : 300);
        }
    }
    printf("analyze: max |Σλ - trace| / trace = %.3g over all sites\n", worst);
    assert_int_equal(seen_head, 3 * 4 * 4 * 3);
    assert_int_equal(seen_wte, 2);
    const cJSON *timing = cJSON_GetObjectItemCaseSensitive(j, "timing");
    assert_non_null(timing);
    printf("timing: forward %.3f s, accumulate %.3f s, eigen %.3f s\n", num(timing, "forward_s"),
           num(timing, "accumulate_s"), num(timing, "eigen_s"));
    cJSON_Delete(j);
    /* The SVG was written, complete. */
    char *text;
    size_t len;
    assert_int_equal(ea_read_file(svg, 1 << 24, &text, &len), EA_OK);
    assert_non_null(strstr(text, "<svg"));
    assert_non_null(strstr(text, "</svg>"));
    assert_non_null(strstr(text, "hidden, all tokens"));
    free(text);
    free(out);
    free(err);
    test_rmdir(dir);
    free(dir);
}

/* The first bytes of the bundled calibration text in dir/short.txt (tokenizing the whole file
 * costs seconds under the sanitizers; these tests do not need it). */
static void write_short_text(const char *dir, char *path, size_t n) {
    char *text;
    size_t len;
    assert_int_equal(ea_read_file(EA_SOURCE_DIR "/data/calib.txt", 1 << 24, &text, &len), EA_OK);
    snprintf(path, n, "%s/short.txt", dir);
    assert_int_equal(test_write_file(path, text, len < 4000 ? len : 4000), 0);
    free(text);
}

static void test_analyze_table_and_samples(void **state) {
    (void)state;
    char *dir = test_tmpdir(), text[512];
    write_short_text(dir, text, sizeof text);
    char *out = NULL, *err = NULL;
    const char *args[] = {"analyze", "--text", text, "--sites", "hidden", "--samples", "4", "--sample-len", "40",
                          "--seed", "3", "--variance", "0.8", NULL};
    int rc = test_run_cli(&out, &err, args);
    if (rc) printf("stderr: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "160 tokens in 4 random windows of"));
    assert_non_null(strstr(out, "exclude_first"));
    assert_non_null(strstr(out, "standardized"));
    assert_non_null(strstr(out, "k80"));
    assert_null(strstr(out, "\nq "));
    assert_non_null(strstr(err, "timing: forward"));
    /* Same seed, same windows, same report. */
    char *out2 = NULL;
    assert_int_equal(test_run_cli(&out2, NULL, args), 0);
    assert_string_equal(out, out2);
    printf("sampled table: %zu bytes, identical on a second run\n", strlen(out2));
    free(out);
    free(out2);
    free(err);
    test_rmdir(dir);
    free(dir);
}

static void test_analyze_failures(void **state) {
    (void)state;
    char *dir = test_tmpdir(), svg[512], missing[512];
    snprintf(svg, sizeof svg, "%s/never.svg", dir);
    snprintf(missing, sizeof missing, "%s/no-such-text.txt", dir);
    char *out = NULL, *err = NULL;
    const char *args[] = {"analyze", "--text", missing, "--svg", svg, "--json", NULL};
    int rc = test_run_cli(&out, &err, args);
    printf("missing text: rc %d, stderr: %s", rc, err);
    assert_true(rc != 0);
    assert_non_null(strstr(err, "no-such-text.txt"));
    assert_string_equal(out, "");
    assert_false(file_exists(svg));
    free(out);
    free(err);
    /* Unknown site name, unknown option: usage errors (2), nothing written. */
    const char *bad_site[] = {"analyze", "--sites", "hidden,mlp", "--svg", svg, NULL};
    assert_int_equal(test_run_cli(&out, &err, bad_site), 2);
    assert_non_null(strstr(err, "mlp"));
    assert_false(file_exists(svg));
    free(out);
    free(err);
    const char *bad_opt[] = {"analyze", "--frobnicate", NULL};
    assert_int_equal(test_run_cli(&out, &err, bad_opt), 2);
    free(out);
    free(err);
    /* An SVG path in a missing directory fails without printing a report. */
    char bad_svg[600], text[512];
    snprintf(bad_svg, sizeof bad_svg, "%s/nodir/x.svg", dir);
    write_short_text(dir, text, sizeof text);
    const char *bad_out[] = {"analyze", "--text", text, "--sites", "hidden", "--max-tokens", "50", "--svg", bad_svg, NULL};
    rc = test_run_cli(&out, &err, bad_out);
    printf("bad svg path: rc %d, stderr: %s", rc, err);
    assert_int_equal(rc, 1);
    assert_string_equal(out, "");
    free(out);
    free(err);
    const char *help[] = {"analyze", "--help", NULL};
    assert_int_equal(test_run_cli(&out, NULL, help), 0);
    assert_non_null(strstr(out, "usage: eigenalign analyze"));
    free(out);
    test_rmdir(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_analyze_json),
        cmocka_unit_test(test_analyze_table_and_samples),
        cmocka_unit_test(test_analyze_failures),
    };
    return TEST_RUN(tests, NULL, NULL);
}
