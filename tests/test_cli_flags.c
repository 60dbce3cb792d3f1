/* CLI options no other test passes, each checked for its effect: analyze --standardize (the
 * correlation spectrum against one computed here from hidden states captured through the
 * library), --variants, --no-heads, --threads, --time-reference; bench-memory --no-measure,
 * --claimed-ratio, --measure-one, --stats; compress --texts; eval --calib-skip; fit --output and
 * --per-head. */
#include <cjson/cJSON.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

#define CALIB EA_SOURCE_DIR "/data/calib.txt"

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) fail_msg("\"%s\" is not a number", key);
    return v->valuedouble;
}

static cJSON *run_json(const char *const *args) {
    char *out, *err;
    int rc = test_run_cli(&out, &err, args);
    if (rc != 0) fail_msg("eigenalign %s exited %d: %s", args[0], rc, err);
    cJSON *j = cJSON_Parse(out);
    if (!j) fail_msg("eigenalign %s printed no JSON: %s", args[0], out);
    free(out);
    free(err);
    return j;
}

/* ---- analyze ---- */

typedef struct {
    int T, d;
    double *rows; /* all captured hidden states at layer 0 */
    size_t n;
} capture;

static int capture_hidden0(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    (void)pos0;
    capture *c = user;
    if (site != EA_SITE_HIDDEN || layer != 0) return 0;
    for (int i = 0; i < n; i++, c->n++)
        for (int j = 0; j < d; j++) c->rows[c->n * d + j] = x[(size_t)i * ld + j];
    return 0;
}

/* k for a fraction of the total variance, from descending eigenvalues. */
static int k_for(const double *ev, int d, double t) {
    double total = 0, acc = 0;
    for (int i = 0; i < d; i++) total += ev[i];
    for (int k = 1; k <= d; k++) {
        acc += ev[k - 1];
        if (acc >= t * total) return k;
    }
    return d;
}

static void test_analyze_standardize_against_correlation(void **state) {
    (void)state;
    const int ntok = 120, ctx = 40;
    const char *a1[] = {"analyze", "--text", CALIB, "--max-tokens", "120", "--ctx", "40", "--sites", "hidden",
                        "--standardize", "--threads", "1", "--json", NULL};
    const char *a2[] = {"analyze", "--text", CALIB, "--max-tokens", "120", "--ctx", "40", "--sites", "hidden",
                        "--standardize", "--threads", "2", "--time-reference", "--json", NULL};
    cJSON *j1 = run_json(a1), *j2 = run_json(a2);
    /* the hidden states of layer 0 over the same windows, through the capture hook */
    ea_model *m;
    ea_tokenizer *tok;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    assert_int_equal(ea_tokenizer_load_dir(TEST_MODEL_DIR, &tok), EA_OK);
    char *text;
    size_t len, n;
    int *ids;
    assert_int_equal(ea_read_file(CALIB, 1 << 26, &text, &len), EA_OK);
    assert_int_equal(ea_tokenizer_encode(tok, text, len, 0, &ids, &n), EA_OK);
    free(text);
    int d = ea_model_config(m)->n_embd;
    capture c = {ctx, d, malloc(sizeof(double) * (size_t)ntok * d), 0};
    ea_kvcache *cache;
    assert_int_equal(ea_kvcache_init(&cache, ea_model_config(m), ctx, NULL), EA_OK);
    ea_model_set_capture(m, capture_hidden0, &c);
    for (int s = 0; s < ntok; s += ctx) {
        ea_kvcache_reset(cache);
        assert_int_equal(ea_model_forward(m, cache, ids + s, ctx, NULL, 0), EA_OK);
    }
    assert_int_equal(c.n, (size_t)ntok);
    /* correlation matrix, two-pass, and its eigenvalues by LAPACK */
    double *mu = calloc(d, sizeof(double)), *r = calloc((size_t)d * d, sizeof(double)), *ev = malloc(sizeof(double) * d);
    for (size_t i = 0; i < c.n; i++)
        for (int a = 0; a < d; a++) mu[a] += c.rows[i * d + a] / (double)c.n;
    for (size_t i = 0; i < c.n; i++)
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++) r[a * d + b] += (c.rows[i * d + a] - mu[a]) * (c.rows[i * d + b] - mu[b]);
    for (int a = 0; a < d; a++)
        for (int b = 0; b < d; b++)
            if (a != b) r[a * d + b] /= sqrt(r[a * d + a] * r[b * d + b]);
    for (int a = 0; a < d; a++) r[a * d + a] = 1;
    assert_int_equal(LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'N', 'U', d, r, d, ev), 0);
    for (int i = 0; i < d / 2; i++) { /* ascending → descending */
        double t = ev[i];
        ev[i] = ev[d - 1 - i];
        ev[d - 1 - i] = t;
    }
    double s1 = 0, s2 = 0;
    for (int i = 0; i < d; i++) {
        s1 += ev[i];
        s2 += ev[i] * ev[i];
    }
    const cJSON *site = NULL, *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(j1, "sites")) {
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(e, "variant")->valuestring, "standardized");
        if (num(e, "layer") == 0) site = e;
    }
    assert_non_null(site);
    printf("standardized hidden:0: Df %.8f vs %.8f here, k90/95/99 %g/%g/%g vs %d/%d/%d, trace %.9f (d %d)\n",
           num(site, "Df"), s1 * s1 / s2, num(site, "k90"), num(site, "k95"), num(site, "k99"), k_for(ev, d, 0.9),
           k_for(ev, d, 0.95), k_for(ev, d, 0.99), num(site, "trace"), d);
    assert_true(fabs(num(site, "Df") - s1 * s1 / s2) < 1e-6 * s1 * s1 / s2);
    assert_true(fabs(num(site, "trace") - d) < 1e-9 * d);
    assert_true(num(site, "k90") == k_for(ev, d, 0.9));
    assert_true(num(site, "k95") == k_for(ev, d, 0.95));
    assert_true(num(site, "k99") == k_for(ev, d, 0.99));
    /* --threads 2 gives the same spectra; --time-reference adds the bare dsyrk timing */
    const cJSON *s2s = cJSON_GetObjectItemCaseSensitive(j2, "sites");
    assert_int_equal(cJSON_GetArraySize(s2s), cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j1, "sites")));
    int i = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(j1, "sites")) {
        const cJSON *f = cJSON_GetArrayItem(s2s, i++);
        /* the accumulation order follows the thread count: equal to rounding */
        assert_true(fabs(num(e, "Df") - num(f, "Df")) < 1e-6 * num(e, "Df"));
        assert_true(num(e, "k95") == num(f, "k95"));
    }
    const cJSON *t1 = cJSON_GetObjectItemCaseSensitive(j1, "timing"), *t2 = cJSON_GetObjectItemCaseSensitive(j2, "timing");
    assert_null(cJSON_GetObjectItemCaseSensitive(t1, "bare_dsyrk_s"));
    assert_true(num(t2, "bare_dsyrk_s") > 0);
    assert_true(num(t2, "accumulate_over_dsyrk") > 0);
    ea_model_set_capture(m, NULL, NULL);
    ea_kvcache_free(cache);
    ea_model_free(m);
    ea_tokenizer_free(tok);
    free(ids);
    free(c.rows);
    free(mu);
    free(r);
    free(ev);
    cJSON_Delete(j1);
    cJSON_Delete(j2);
}

static void test_analyze_variants_and_heads(void **state) {
    (void)state;
    const char *with[] = {"analyze", "--text", CALIB, "--max-tokens", "80", "--ctx", "40", "--sites", "k",
                          "--variants", "all,standardized", "--json", NULL};
    const char *without[] = {"analyze", "--text", CALIB, "--max-tokens", "80", "--ctx", "40", "--sites", "k",
                             "--variants", "exclude_first", "--no-heads", "--json", NULL};
    cJSON *a = run_json(with), *b = run_json(without);
    int heads = 0, rows = 0, all = 0, std = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(a, "sites")) {
        const char *v = cJSON_GetObjectItemCaseSensitive(e, "variant")->valuestring;
        all += !strcmp(v, "all");
        std += !strcmp(v, "standardized");
        heads += num(e, "head") >= 0;
    }
    printf("--variants all,standardized: %d all, %d standardized, %d per-head entries\n", all, std, heads);
    assert_true(all > 0 && all == std && heads > 0);
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(b, "sites")) {
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(e, "variant")->valuestring, "exclude_first");
        assert_true(num(e, "head") == -1); /* --no-heads */
        rows++;
    }
    assert_true(rows > 0 && rows == all - heads / 2);
    cJSON_Delete(a);
    cJSON_Delete(b);
}

/* ---- bench-memory ---- */

static void test_bench_memory_flags(void **state) {
    (void)state;
    const char *args[] = {"bench-memory", "--codec", "q8", "--seq", "64,128", "--no-measure", "--claimed-ratio", "50",
                          "--json", NULL};
    cJSON *j = run_json(args);
    assert_true(num(j, "claimed_ratio") == 50);
    const cJSON *r;
    int rows = 0;
    cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(j, "rows")) {
        double kv32 = num(r, "kv_f32_bytes"), seq = num(r, "seq");
        assert_true(kv32 == 2.0 * 4 * seq * 128 * 4); /* K and V, 4 layers, d 128, float32 */
        assert_true(num(r, "kv_bytes") == 2.0 * 4 * seq * 4 * 34); /* q8_0: 34 bytes per 32 values */
        assert_true(fabs(num(r, "claimed_bytes") - kv32 / 50) < 1e-9);
        assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(r, "peak_rss_bytes"))); /* --no-measure */
        rows++;
    }
    assert_int_equal(rows, 2);
    cJSON_Delete(j);
    /* --measure-one: the child's report, "peak_rss_kb cache_bytes rss_growth_bytes" */
    char *out, *err;
    const char *one[] = {"bench-memory", "--measure-one", "q8", "--seq", "64", NULL};
    int rc = test_run_cli(&out, &err, one);
    if (rc) fail_msg("--measure-one exited %d: %s", rc, err);
    long rss;
    size_t cache;
    assert_int_equal(sscanf(out, "%ld %zu", &rss, &cache), 2);
    printf("--measure-one q8 64: %s", out);
    assert_int_equal(cache, (size_t)2 * 4 * 64 * 4 * 34);
    assert_true(rss > 0);
    free(out);
    free(err);
    /* --stats: a file that is not a statistics file is refused, naming it */
    char *dir = test_tmpdir(), bad[600];
    snprintf(bad, sizeof bad, "%s/not-stats.bin", dir);
    assert_int_equal(test_write_file(bad, "garbage, not EAKVSTAT", 21), 0);
    const char *st[] = {"bench-memory", "--measure-one", "pca:8", "--seq", "64", "--stats", bad, NULL};
    rc = test_run_cli(&out, &err, st);
    printf("--stats garbage: rc %d, %s", rc, err);
    assert_true(rc != 0);
    assert_non_null(strstr(err, "not-stats.bin"));
    free(out);
    free(err);
    test_rmdir(dir);
    free(dir);
}

/* ---- fit, compress, eval ---- */

static void test_fit_output_per_head_and_compress_texts(void **state) {
    (void)state;
    char *dir = test_tmpdir(), cpath[600], texts[600];
    snprintf(cpath, sizeof cpath, "%s/heads.safetensors", dir);
    snprintf(texts, sizeof texts, "%s/texts.txt", dir);
    const char *fit[] = {"fit", "--text", CALIB, "--max-tokens", "200", "--ctx", "100", "--rank", "8", "--sites", "k,v",
                         "--per-head", "--output", cpath, "--json", NULL};
    cJSON *j = run_json(fit);
    /* per head: 4 layers × 4 heads × (k, v), each of the head width 32 */
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "sites")), 4 * 4 * 2);
    cJSON_Delete(j);
    ea_compressor *c;
    if (ea_compressor_load(cpath, &c)) fail_msg("--output %s: %s", cpath, ea_last_error());
    assert_int_equal(ea_compressor_count(c), 32);
    for (int i = 0; i < 32; i++) {
        const ea_projector *p = ea_compressor_get(c, i);
        assert_int_equal(ea_projector_dim(p), 32);
        assert_int_equal(ea_projector_rank(p), 8);
        assert_true(ea_projector_site(p).head >= 0);
    }
    ea_compressor_free(c);
    /* compress --texts: one table row per non-empty line (no hidden sites: nothing injected) */
    const char *lines = "The first line.\n\nA second line, after an empty one.\nThird.\n";
    assert_int_equal(test_write_file(texts, lines, strlen(lines)), 0);
    const char *comp[] = {"compress", "--compressor", cpath, "--prompt", "A prompt.", "--texts", texts, "--inject", "none",
                          "--json", NULL};
    j = run_json(comp);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "texts")), 1 + 3);
    cJSON_Delete(j);
    test_rmdir(dir);
    free(dir);
}

static void test_eval_calib_skip(void **state) {
    (void)state;
    /* the pca codec is fitted on calibration statistics; --calib-skip drops the first positions of
     * every calibration window, so it changes the fitted basis and the reported KL */
    double kl[2];
    for (int s = 0; s < 2; s++) {
        const char *args[] = {"eval", "--text", EA_SOURCE_DIR "/data/eval.txt", "--max-tokens", "128", "--ctx", "64",
                              "--kv", "pca:16", "--calib", CALIB, "--calib-max-tokens", "512", "--calib-skip",
                              s ? "8" : "0", "--decode-tokens", "0", "--json", NULL};
        cJSON *j = run_json(args);
        const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "codecs"), 0);
        kl[s] = num(c0, "kl");
        const cJSON *cal = cJSON_GetObjectItemCaseSensitive(j, "calibration");
        assert_true(num(cal, "skip") == (s ? 8 : 0));
        /* 512 calibration tokens in 8 windows of 64, minus 8 positions of each with the skip */
        assert_true(num(cal, "rows") == (s ? 512 - 8 * 8 : 512));
        cJSON_Delete(j);
    }
    printf("pca:16 KL with --calib-skip 0: %.6f, 8: %.6f\n", kl[0], kl[1]);
    assert_true(kl[0] > 0 && kl[1] > 0 && kl[0] != kl[1]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_analyze_standardize_against_correlation),
        cmocka_unit_test(test_analyze_variants_and_heads),
        cmocka_unit_test(test_bench_memory_flags),
        cmocka_unit_test(test_fit_output_per_head_and_compress_texts),
        cmocka_unit_test(test_eval_calib_skip),
    };
    return TEST_RUN(tests, NULL, NULL);
}
