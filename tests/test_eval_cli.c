/* End to end: `eigenalign eval` and `eigenalign bench-memory` on the bundled model, small inputs.
 * Checks the JSON shape and invariants (counts from the protocol, bits/value of the known formats,
 * delta ppl consistent with ppl), perplexity, KL and top-1 of the fixed codecs against a
 * computation in the test, the curve files, and clean failures. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "testutil.h"

#define EVAL_TEXT EA_SOURCE_DIR "/data/eval.txt"
#define CALIB_TEXT EA_SOURCE_DIR "/data/calib.txt"

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    assert_non_null(v);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

/* Scored targets of a text of n tokens cut in windows of ctx (see ea_ppl_first_scored). */
static size_t expected_scored(size_t n, int ctx, int llama) {
    size_t s = 0;
    for (size_t w0 = 0; w0 + 1 < n; w0 += (size_t)ctx) {
        int len = (int)(n - w0 < (size_t)ctx ? n - w0 : (size_t)ctx);
        if (len < 2) break;
        int first = llama ? (len / 2 > 1 ? len / 2 : 1) : 1;
        s += (size_t)(len - first);
    }
    return s;
}

/* What `eval` reports for a fixed codec (no fitting: q8, q4), computed here: the text's first n
 * tokens in windows of ctx from an empty cache, once with the exact float32 cache and once with
 * the codec's, NLL / KL / top-1 in long double from the two sets of logits. */
typedef struct {
    double base_ppl, ppl, kl, top1;
} ref_metrics;

static ref_metrics reference_codec_metrics(const char *spec, size_t n_tokens, int ctx) {
    ea_model *m;
    ea_tokenizer *tok;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    assert_int_equal(ea_tokenizer_load_dir(TEST_MODEL_DIR, &tok), EA_OK);
    char *text;
    size_t len, n;
    int *ids;
    assert_int_equal(ea_read_file(EVAL_TEXT, 1 << 26, &text, &len), EA_OK);
    assert_int_equal(ea_tokenizer_encode(tok, text, len, 0, &ids, &n), EA_OK);
    free(text);
    ea_tokenizer_free(tok);
    assert_true(n >= n_tokens);
    n = n_tokens;
    const ea_config *cfg = ea_model_config(m);
    int V = cfg->vocab_size;
    ea_kv_codec *codec;
    assert_int_equal(ea_kv_codec_fit_model(m, spec, NULL, 0, ctx, NULL, NULL, &codec), EA_OK);
    ea_kvcache *exact, *lossy;
    assert_int_equal(ea_kvcache_init(&exact, cfg, ctx, NULL), EA_OK);
    assert_int_equal(ea_kvcache_init(&lossy, cfg, ctx, codec), EA_OK);
    float *zb = malloc(sizeof(float) * (size_t)ctx * V), *zc = malloc(sizeof(float) * (size_t)ctx * V);
    long double nb = 0, nc = 0, kl = 0;
    size_t agree = 0, scored = 0;
    for (size_t s0 = 0; s0 + 1 < n; s0 += (size_t)ctx) {
        int w = (int)(n - s0 < (size_t)ctx ? n - s0 : (size_t)ctx);
        if (w < 2) break;
        ea_kvcache_reset(exact);
        ea_kvcache_reset(lossy);
        assert_int_equal(ea_model_forward(m, exact, ids + s0, w, zb, 1), EA_OK);
        assert_int_equal(ea_model_forward(m, lossy, ids + s0, w, zc, 1), EA_OK);
        for (int t = 1; t < w; t++) {
            const float *b = zb + (size_t)(t - 1) * V, *c = zc + (size_t)(t - 1) * V;
            long double lb = test_lse_ld(b, V), lc = test_lse_ld(c, V);
            nb += lb - b[ids[s0 + t]];
            nc += lc - c[ids[s0 + t]];
            for (int v = 0; v < V; v++) {
                long double lpb = b[v] - lb;
                kl += expl(lpb) * (lpb - (c[v] - lc));
            }
            agree += test_argmax(b, V) == test_argmax(c, V);
            scored++;
        }
    }
    ref_metrics r = {(double)expl(nb / scored), (double)expl(nc / scored), (double)(kl / scored), (double)agree / scored};
    free(zb);
    free(zc);
    free(ids);
    ea_kvcache_free(exact);
    ea_kvcache_free(lossy);
    ea_kv_codec_free(codec);
    ea_model_free(m);
    return r;
}

static void test_eval_json(void **state) {
    char *dir = test_tmpdir(), curve[512], svg[512], *out = NULL, *err = NULL;
    snprintf(curve, sizeof curve, "%s/curve.json", dir);
    snprintf(svg, sizeof svg, "%s/curve.svg", dir);
    const char *args[] = {"eval", "--text", EVAL_TEXT, "--max-tokens", "200", "--ctx", "64", "--kv", "q8,q4,pca:8,klt:2",
                          "--calib", CALIB_TEXT, "--calib-max-tokens", "768", "--sens-tokens", "64", "--decode-tokens", "4",
                          "--curve-json", curve, "--svg", svg, "--json", NULL};
    int rc = test_run_cli(&out, &err, args);
    if (rc != 0) printf("stderr: %s\n", err);
    assert_int_equal(rc, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "baseline");
    double base_ppl = num(b, "ppl");
    assert_true(base_ppl > 1 && isfinite(base_ppl));
    assert_int_equal((size_t)num(b, "tokens_scored"), expected_scored(200, 64, 0));
    const cJSON *codecs = cJSON_GetObjectItemCaseSensitive(j, "codecs");
    assert_int_equal(cJSON_GetArraySize(codecs), 4);
    const char *names[] = {"q8", "q4", "pca:8", "klt:2"};
    const double bits[] = {8.5, 4.5, 8.0 * 32 / 128, 2.0};
    for (int i = 0; i < 4; i++) {
        const cJSON *c = cJSON_GetArrayItem(codecs, i);
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(c, "codec")->valuestring, names[i]);
        double bpv = num(c, "bits_per_value"), kl = num(c, "kl"), top1 = num(c, "top1"), ppl = num(c, "ppl");
        double dppl = num(c, "dppl_pct"), cache = num(c, "cache_bytes"), over = num(c, "overhead_bytes");
        printf("%-6s bits %.3f overhead %.0f cache %.0f ppl %.3f (base %.3f) dppl %+.3f%% KL %.5f top1 %.3f decode %.1f/s\n",
               names[i], bpv, over, cache, ppl, base_ppl, dppl, kl, top1, num(c, "decode_tok_s"));
        if (i < 3) assert_true(fabs(bpv - bits[i]) < 1e-9);
        /* basis codecs: at most their budget, which is set at the model's context (512); a klt sink row
         * (16 bits per value of one token) is spread over only --ctx 64 tokens here */
        else assert_true(bpv <= bits[i] + (strncmp(names[i], "klt", 3) ? 0 : 16.0 / 64) + 1e-9 && bpv > bits[i] - 0.1);
        if (i < 2) { /* the fixed codecs, against the computation above */
            ref_metrics r = reference_codec_metrics(names[i], 200, 64);
            printf("       reference: base ppl %.6f ppl %.6f KL %.6f top1 %.4f\n", r.base_ppl, r.ppl, r.kl, r.top1);
            assert_true(fabs(base_ppl - r.base_ppl) < 1e-6 * r.base_ppl);
            assert_true(fabs(ppl - r.ppl) < 1e-6 * r.ppl);
            assert_true(fabs(kl - r.kl) < 1e-4 * r.kl + 1e-7);
            assert_true(r.kl > 1e-5); /* a lossy codec: the sign and size of KL are checked */
            assert_true(fabs(top1 - r.top1) <= 1.0 / 200);
        }
        assert_true(fabs(dppl - 100 * (ppl / base_ppl - 1)) < 1e-6 * fabs(dppl) + 1e-9);
        /* cache bytes at --ctx: 2 x layers x ctx x d x bits / 8 for the bundled model (4 x 128) */
        assert_true(fabs(cache - 2.0 * 4 * 64 * 128 * bpv / 8) < 0.5);
        assert_true(num(c, "decode_tok_s") > 0);
        if (i >= 2) assert_true(over > 0);
        /* what the codec holds in memory: at least its stored parameters (klt: float32 working copies) */
        double res = num(c, "resident_bytes");
        assert_true(res >= over && (strncmp(names[i], "klt", 3) ? res == over : res > over));
    }
    /* q8 is much closer to the exact cache than the note's pca at the same bits */
    assert_true(num(cJSON_GetArrayItem(codecs, 0), "kl") < num(cJSON_GetArrayItem(codecs, 2), "kl"));
    cJSON_Delete(j);
    char *cj = NULL;
    size_t n = 0;
    assert_int_equal(ea_read_file(curve, 1 << 20, &cj, &n), EA_OK);
    cJSON *cv = cJSON_Parse(cj);
    assert_non_null(cv);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(cv, "points")), 4);
    cJSON_Delete(cv);
    free(cj);
    char *sv = NULL;
    assert_int_equal(ea_read_file(svg, 1 << 22, &sv, &n), EA_OK);
    assert_non_null(strstr(sv, "<svg"));
    free(sv);
    free(out);
    free(err);
    test_rmdir(dir);
    free(dir);
}

static void test_eval_llama_protocol(void **state) {
    char *out = NULL, *err = NULL;
    const char *args[] = {"eval", "--text", EVAL_TEXT, "--max-tokens", "150", "--ctx", "64", "--kv", "f16",
                          "--protocol", "llama", "--decode-tokens", "0", "--json", NULL};
    int rc = test_run_cli(&out, &err, args);
    if (rc != 0) printf("stderr: %s\n", err);
    assert_int_equal(rc, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    size_t scored = (size_t)num(cJSON_GetObjectItemCaseSensitive(j, "baseline"), "tokens_scored");
    printf("llama protocol: %zu tokens scored (expected %zu)\n", scored, expected_scored(150, 64, 1));
    assert_int_equal(scored, expected_scored(150, 64, 1));
    const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "codecs"), 0);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c, "decode_tok_s")));
    printf("f16 KL %.3g\n", num(c, "kl"));
    assert_true(num(c, "kl") < 1e-4);
    cJSON_Delete(j);
    free(out);
    free(err);
}

static void test_eval_errors(void **state) {
    char *dir = test_tmpdir(), curve[512], *out = NULL, *err = NULL;
    snprintf(curve, sizeof curve, "%s/curve.json", dir);
    /* a missing text file: named in the message, no curve written */
    const char *a1[] = {"eval", "--text", "/nonexistent/eval.txt", "--kv", "q8", "--curve-json", curve, NULL};
    int rc = test_run_cli(&out, &err, a1);
    printf("missing text: rc %d, %s", rc, err);
    assert_true(rc != 0);
    assert_non_null(strstr(err, "/nonexistent/eval.txt"));
    assert_false(exists(curve));
    free(out);
    free(err);
    /* an unknown codec: named, before any work */
    const char *a2[] = {"eval", "--text", EVAL_TEXT, "--max-tokens", "50", "--kv", "q8,zip:3", "--curve-json", curve, NULL};
    rc = test_run_cli(&out, &err, a2);
    printf("unknown codec: rc %d, %s", rc, err);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(err, "zip:3"));
    assert_false(exists(curve));
    free(out);
    free(err);
    const char *a3[] = {"eval", "--text", EVAL_TEXT, "--kv", "klt:2", "--compressor", "x", "--calib", "y", NULL};
    rc = test_run_cli(&out, &err, a3);
    assert_int_equal(rc, 2);
    free(out);
    free(err);
    const char *a4[] = {"eval", "--text", EVAL_TEXT, NULL};
    rc = test_run_cli(&out, &err, a4);
    printf("no --kv: rc %d, %s", rc, err);
    assert_int_equal(rc, 2);
    free(out);
    free(err);
    const char *a5[] = {"eval", "--kv", "q8", "--text", EVAL_TEXT, "--ctx", "4096", NULL};
    rc = test_run_cli(&out, &err, a5);
    printf("ctx too long: rc %d, %s", rc, err);
    assert_true(rc != 0);
    free(out);
    free(err);
    test_rmdir(dir);
    free(dir);
}

static void test_bench_memory_json(void **state) {
    char *out = NULL, *err = NULL;
    const char *args[] = {"bench-memory", "--seq", "48,4096", "--codec", "f32,q4,klt:1:b", "--calib", CALIB_TEXT,
                          "--calib-tokens", "512", "--json", NULL};
    int rc = test_run_cli(&out, &err, args);
    if (rc != 0) printf("stderr: %s\n", err);
    assert_int_equal(rc, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(j, "rows");
    assert_int_equal(cJSON_GetArraySize(rows), 6);
    const cJSON *r;
    cJSON_ArrayForEach(r, rows) {
        int seq = (int)num(r, "seq");
        const char *codec = cJSON_GetObjectItemCaseSensitive(r, "codec")->valuestring;
        double kv = num(r, "kv_bytes"), bits = num(r, "bits_per_value");
        /* 2 x layers x seq x d x bits / 8 for the bundled model */
        assert_true(fabs(kv - 2.0 * 4 * seq * 128 * bits / 8) < 0.5);
        assert_true(fabs(num(r, "attn_scores_bytes") - 4.0 * 4 * seq * seq) < 0.5);
        const cJSON *cache = cJSON_GetObjectItemCaseSensitive(r, "cache_allocated_bytes");
        if (seq > 512) assert_true(cJSON_IsNull(cache)); /* beyond n_positions: computed only */
        else {
            printf("%-6s seq %4d: computed KV %.0f B, allocated %.0f B, peak RSS %.1f MiB\n", codec, seq, kv,
                   cache->valuedouble, num(r, "peak_rss_bytes") / 1048576);
            assert_true(fabs(cache->valuedouble - kv) < 0.5); /* the cache's own accounting agrees */
            assert_true(num(r, "peak_rss_bytes") > kv);
        }
    }
    cJSON_Delete(j);
    free(out);
    free(err);
}

/* generate --kv klt:B fits the codec on calibration text and runs on it: the cache is the codec's
 * size (sink row included), far below f32, and the overhead is reported. */
static void test_generate_klt(void **state) {
    char *out = NULL, *err = NULL;
    char *dir = test_tmpdir(), file[512], spec[600];
    snprintf(file, sizeof file, "%s/klt2.safetensors", dir);
    snprintf(spec, sizeof spec, "file:%s", file);
    /* 3 prompt tokens + 14 new: the cache holds 16 tokens, one whole block of klt rows */
    const char *args[] = {"generate", "--prompt", "The old house", "-n", "14", "--no-stop", "--kv", "klt:2", "--calib", EVAL_TEXT,
                          "--calib-max-tokens", "1024", "--save-kv", file, "--json", NULL};
    int rc = test_run_cli(&out, &err, args);
    if (rc != 0) printf("stderr: %s\n", err);
    assert_int_equal(rc, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    double toks = num(j, "cache_tokens"), bytes = num(j, "cache_bytes"), over = num(j, "codec_overhead_bytes");
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "ids"));
    printf("generate klt:2: %d tokens, cache %.0f bytes for %.0f tokens, overhead %.0f bytes\n", n, bytes, toks, over);
    assert_true(n == 14 && toks == 16);
    assert_true(over > 0);
    /* gpt2-micro: 4 layers x 128 dims; f32 rows are 4096 bytes per token */
    assert_true(bytes > 0 && bytes < toks * 4096 / 8);
    /* the saved codec generates the same tokens without refitting */
    char *out2 = NULL, *err2 = NULL;
    const char *args2[] = {"generate", "--prompt", "The old house", "-n", "14", "--no-stop", "--kv", spec, "--json", NULL};
    rc = test_run_cli(&out2, &err2, args2);
    if (rc != 0) printf("stderr: %s\n", err2);
    assert_int_equal(rc, 0);
    cJSON *j2 = cJSON_Parse(out2);
    assert_non_null(j2);
    char *ids1 = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j, "ids"));
    char *ids2 = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j2, "ids"));
    printf("fitted: %s, loaded from file: %s\n", ids1, ids2);
    assert_string_equal(ids1, ids2);
    assert_true(num(j2, "cache_bytes") == bytes && num(j2, "codec_overhead_bytes") == over);
    free(ids1);
    free(ids2);
    cJSON_Delete(j2);
    free(out2);
    free(err2);
    test_rmdir(dir);
    free(dir);
    cJSON_Delete(j);
    free(out);
    free(err);
}

/* fit --kv stores fitted klt codecs in the compressor file; eval --compressor uses them as
 * stored: the same KL as fitting on the same calibration tokens and window, and pca still builds
 * from the same file's k,v statistics (the compressor loader skips the embedded codecs). */
static void test_fit_kv_embedded(void **state) {
    char *dir = test_tmpdir(), file[512];
    snprintf(file, sizeof file, "%s/kv.safetensors", dir);
    char *out = NULL, *err = NULL;
    const char *fa[] = {"fit", "--text", CALIB_TEXT, "--sites", "k,v", "--rank", "128", "--max-tokens", "1024", "--ctx", "64",
                        "--kv", "klt:1", "-o", file, "--json", NULL};
    int rc = test_run_cli(&out, &err, fa);
    if (rc != 0) printf("stderr: %s\n", err);
    assert_int_equal(rc, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(j, "kv_codecs");
    assert_int_equal(cJSON_GetArraySize(kvs), 1);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(kvs, 0), "codec")->valuestring, "klt:1");
    cJSON_Delete(j);
    free(out);
    free(err);
    const char *ea[] = {"eval", "--compressor", file, "--text", EVAL_TEXT, "--max-tokens", "256", "--ctx", "64", "--kv",
                        "klt:1,pca:8", "--decode-tokens", "0", "--json", NULL};
    const char *eb[] = {"eval", "--calib", CALIB_TEXT, "--calib-max-tokens", "1024", "--text", EVAL_TEXT, "--max-tokens", "256",
                        "--ctx", "64", "--kv", "klt:1", "--decode-tokens", "0", "--json", NULL};
    double kl[2];
    for (int k = 0; k < 2; k++) {
        rc = test_run_cli(&out, &err, k ? eb : ea);
        if (rc != 0) printf("stderr: %s\n", err);
        assert_int_equal(rc, 0);
        j = cJSON_Parse(out);
        assert_non_null(j);
        const cJSON *codecs = cJSON_GetObjectItemCaseSensitive(j, "codecs"), *c0 = cJSON_GetArrayItem(codecs, 0);
        kl[k] = num(c0, "kl");
        assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c0, "stored_in_compressor")) == !k);
        if (!k) {
            const cJSON *c1 = cJSON_GetArrayItem(codecs, 1);
            assert_string_equal(cJSON_GetObjectItemCaseSensitive(c1, "codec")->valuestring, "pca:8");
            assert_true(isfinite(num(c1, "kl")) && num(c1, "kl") > kl[0]);
        }
        cJSON_Delete(j);
        free(out);
        free(err);
    }
    printf("klt:1 KL: stored in the compressor %.9g, fitted on the same calibration tokens %.9g\n", kl[0], kl[1]);
    assert_true(kl[0] == kl[1]);
    /* only klt codecs are stored; a typo is refused before anything is fitted */
    const char *fc[] = {"fit", "--rank", "8", "--kv", "pca:8", "-o", file, NULL};
    assert_int_equal(test_run_cli(&out, &err, fc), 2);
    printf("fit --kv pca:8: %s", err);
    assert_non_null(strstr(err, "klt"));
    free(out);
    free(err);
    test_rmdir(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eval_json),
        cmocka_unit_test(test_eval_llama_protocol),
        cmocka_unit_test(test_eval_errors),
        cmocka_unit_test(test_bench_memory_json),
        cmocka_unit_test(test_generate_klt),
        cmocka_unit_test(test_fit_kv_embedded),
    };
    return TEST_RUN(tests, NULL, NULL);
}
