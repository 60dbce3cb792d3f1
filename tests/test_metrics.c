/* The numbers the tool reports at the end — NLL, perplexity, KL and top-1 agreement — against
 * values computed here, independently, in long double: from the Hugging Face fixture logits, from
 * logits perturbed on purpose (one logit raised by δ: KL has a closed form), through the library
 * (ea_log_softmax, ea_perplexity, the KV codec scorer, ea_compressor_evaluate) and through a
 * successful `eigenalign perplexity --json` run. Nothing here calls ea_log_softmax to build an
 * expected value. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib_internal.h" /* ea_kv_ref_prepare, ea_kv_score_window: what `eval --kv` reports */
#include "testutil.h"

static ea_model *model;

static int setup(void **state) {
    (void)state;
    if (ea_model_load(TEST_MODEL_DIR, &model)) {
        printf("cannot load %s: %s\n", TEST_MODEL_DIR, ea_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    ea_model_free(model);
    return 0;
}

/* KL(softmax(a) ‖ softmax(b)) = Σ p_a (log p_a − log p_b), long double. */
static long double kl_ld(const float *a, const float *b, int n) {
    long double la = test_lse_ld(a, n), lb = test_lse_ld(b, n), kl = 0;
    for (int i = 0; i < n; i++) {
        long double lpa = a[i] - la, lpb = b[i] - lb;
        kl += expl(lpa) * (lpa - lpb);
    }
    return kl;
}

/* Fixture prompt p: ids and the HF float64 logits (T × V, as float). */
static int *fixture_ids(ea_st_file *fx, int p, int *T) {
    char name[64];
    snprintf(name, sizeof name, "p%d.input_ids", p);
    const ea_st_tensor *t = ea_st_find(fx, name);
    assert_non_null(t);
    *T = (int)t->numel;
    float *f = malloc(sizeof(float) * t->numel);
    assert_int_equal(ea_st_to_f32(fx, t, f), EA_OK);
    int *ids = malloc(sizeof(int) * t->numel);
    for (size_t i = 0; i < t->numel; i++) ids[i] = (int)f[i];
    free(f);
    return ids;
}

static float *fixture_logits(ea_st_file *fx, int p, int T, int V) {
    char name[64];
    snprintf(name, sizeof name, "p%d.logits", p);
    const ea_st_tensor *t = ea_st_find(fx, name);
    assert_non_null(t);
    assert_int_equal(t->numel, (size_t)T * V);
    float *f = malloc(sizeof(float) * t->numel);
    assert_int_equal(ea_st_to_f32(fx, t, f), EA_OK);
    return f;
}

/* ea_log_softmax on fixture rows and on rows with a large offset (where dropping the max term
 * overflows or shifts everything) against long double. */
static void test_log_softmax(void **state) {
    (void)state;
    ea_st_file *fx;
    assert_int_equal(ea_st_open(TEST_FIXTURE_DIR "/gpt2-micro.reference.safetensors", &fx), EA_OK);
    int T, V = ea_model_config(model)->vocab_size;
    int *ids = fixture_ids(fx, 0, &T);
    float *lg = fixture_logits(fx, 0, T, V), *out = malloc(sizeof(float) * V);
    double worst = 0;
    for (int t = 0; t < T; t++) {
        float *row = lg + (size_t)t * V;
        for (int shift = 0; shift < 2; shift++) {
            if (shift)
                for (int v = 0; v < V; v++) row[v] += 120.0f; /* exp(z) overflows a float without the max */
            long double ref = test_lse_ld(row, V);
            double got = ea_log_softmax(row, V, out);
            worst = fmax(worst, fabs(got - (double)ref) / fabsl(ref));
            for (int v = 0; v < V; v += 97) assert_true(fabsl(out[v] - (row[v] - ref)) < 1e-4L);
        }
    }
    printf("log-softmax: worst relative lse error %.3g over %d rows\n", worst, 2 * T);
    assert_true(worst < 1e-6);
    free(ids);
    free(lg);
    free(out);
    ea_st_close(fx);
}

/* ea_perplexity on the fixture prompts (one window each) against the NLL of HF's logits. */
static void test_perplexity_vs_fixture(void **state) {
    (void)state;
    ea_st_file *fx;
    assert_int_equal(ea_st_open(TEST_FIXTURE_DIR "/gpt2-micro.reference.safetensors", &fx), EA_OK);
    const ea_config *cfg = ea_model_config(model);
    int V = cfg->vocab_size;
    for (int p = 0; p < 2; p++) {
        int T;
        int *ids = fixture_ids(fx, p, &T);
        float *lg = fixture_logits(fx, p, T, V);
        for (int proto = 0; proto < 2; proto++) {
            /* full scores targets 1..T-1; llama only the second half (from T/2) */
            int first = proto == EA_PPL_LLAMA ? (T / 2 > 1 ? T / 2 : 1) : 1;
            long double nll = 0;
            for (int t = first; t < T; t++) nll += test_lse_ld(lg + (size_t)(t - 1) * V, V) - lg[(size_t)(t - 1) * V + ids[t]];
            nll /= T - first;
            ea_kvcache *cache;
            assert_int_equal(ea_kvcache_init(&cache, cfg, T, NULL), EA_OK);
            ea_ppl_result r;
            assert_int_equal(ea_perplexity(model, cache, ids, (size_t)T, T, (ea_ppl_protocol)proto, &r), EA_OK);
            ea_kvcache_free(cache);
            printf("p%d %s: mean NLL %.8f vs HF logits %.8Lf (%zu scored), ppl %.6f vs %.6Lf\n", p, proto ? "llama" : "full",
                   r.mean_nll, nll, r.tokens_scored, r.ppl, expl(nll));
            assert_int_equal(r.tokens_scored, (size_t)(T - first));
            assert_true(fabsl(r.mean_nll - nll) < 2e-4L); /* logits agree within 1e-4 */
            assert_true(fabsl(r.ppl - expl(nll)) / expl(nll) < 2e-4L);
        }
        free(ids);
        free(lg);
    }
    ea_st_close(fx);
}

/* Windows of ctx tokens from an empty cache, the last shorter one if it has >= 2 tokens: the
 * mean NLL of the model's own logits (ea_model_forward is checked against HF in test_model). */
static long double independent_nll(const int *ids, size_t n, int ctx, size_t *scored) {
    const ea_config *cfg = ea_model_config(model);
    int V = cfg->vocab_size;
    float *lg = malloc(sizeof(float) * (size_t)V * ctx);
    ea_kvcache *cache;
    assert_int_equal(ea_kvcache_init(&cache, cfg, ctx, NULL), EA_OK);
    long double nll = 0;
    *scored = 0;
    for (size_t s = 0; s + 1 < n; s += (size_t)ctx) {
        int len = (int)(n - s < (size_t)ctx ? n - s : (size_t)ctx);
        if (len < 2) break;
        ea_kvcache_reset(cache);
        assert_int_equal(ea_model_forward(model, cache, ids + s, len, lg, 1), EA_OK);
        for (int t = 1; t < len; t++) {
            nll += test_lse_ld(lg + (size_t)(t - 1) * V, V) - lg[(size_t)(t - 1) * V + ids[s + t]];
            ++*scored;
        }
    }
    ea_kvcache_free(cache);
    free(lg);
    return nll / *scored;
}

static double json_number(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p) fail_msg("no \"%s\" in %s", key, json);
    p = strchr(p + strlen(pat), ':');
    return strtod(p + 1, NULL);
}

/* A successful `eigenalign perplexity --json` against the independent NLL of the same text. */
static void test_perplexity_cli(void **state) {
    (void)state;
    const char *text =
        "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times, "
        "it was the age of wisdom, it was the age of foolishness. Call me Ishmael. Some years ago, never mind "
        "how long precisely, having little or no money in my purse, I thought I would sail about a little.";
    char *dir = test_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/text.txt", dir);
    assert_int_equal(test_write_file(path, text, strlen(text)), 0);
    ea_tokenizer *tok;
    assert_int_equal(ea_tokenizer_load_dir(TEST_MODEL_DIR, &tok), EA_OK);
    int *ids;
    size_t n;
    assert_int_equal(ea_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n), EA_OK);
    ea_tokenizer_free(tok);
    assert_true(n > 40);
    const int ctx = 24; /* several windows and a shorter last one */
    size_t scored;
    long double nll = independent_nll(ids, n, ctx, &scored);
    const char *args[] = {"perplexity", "--text", path, "--ctx", "24", "--json", NULL};
    char *out, *err;
    int rc = test_run_cli(&out, &err, args);
    if (rc != 0) fail_msg("perplexity exited %d: %s", rc, err);
    double got_nll = json_number(out, "mean_nll"), got_ppl = json_number(out, "ppl");
    printf("perplexity --json: mean NLL %.9f vs independent %.9Lf, ppl %.6f vs %.6Lf, %g vs %zu scored\n", got_nll, nll,
           got_ppl, expl(nll), json_number(out, "tokens_scored"), scored);
    assert_true(json_number(out, "tokens_scored") == (double)scored);
    assert_true(json_number(out, "tokens") == (double)n);
    assert_true(fabsl(got_nll - nll) < 1e-6L);
    assert_true(fabsl(got_ppl - expl(nll)) / expl(nll) < 1e-6L);
    free(out);
    free(err);
    /* --max-tokens cuts the text: the first 30 tokens only */
    const char *args2[] = {"perplexity", "--text", path, "--ctx", "24", "--max-tokens", "30", "--json", NULL};
    rc = test_run_cli(&out, &err, args2);
    if (rc != 0) fail_msg("perplexity --max-tokens exited %d: %s", rc, err);
    nll = independent_nll(ids, 30, ctx, &scored);
    assert_true(json_number(out, "tokens_scored") == (double)scored);
    assert_true(fabsl(json_number(out, "mean_nll") - nll) < 1e-6L);
    free(out);
    free(err);
    free(ids);
    test_rmdir(dir);
    free(dir);
}

/* The KV codec scorer (what `eval --kv` reports per codec) on HF fixture logits as the exact
 * model and deliberately perturbed logits as the codec's: row t gets δ_t added to one logit j_t,
 * so KL(p ‖ q) = log(1 − p_j + p_j e^δ) − δ p_j exactly, and the argmax moves where δ beats the
 * gap to the top. */
static void test_kv_score_against_closed_forms(void **state) {
    (void)state;
    ea_st_file *fx;
    assert_int_equal(ea_st_open(TEST_FIXTURE_DIR "/gpt2-micro.reference.safetensors", &fx), EA_OK);
    int V = ea_model_config(model)->vocab_size;
    for (int p = 0; p < 2; p++) {
        int T;
        int *ids = fixture_ids(fx, p, &T);
        float *base = fixture_logits(fx, p, T, V), *pert = malloc(sizeof(float) * (size_t)T * V);
        float *prob = malloc(sizeof(float) * (size_t)T * V);
        double *lse = malloc(sizeof(double) * T);
        memcpy(pert, base, sizeof(float) * (size_t)T * V);
        long double kl_closed = 0, kl_direct = 0, nll = 0;
        size_t agree = 0, target_is_top = 0;
        for (int t = 1; t < T; t++) {
            float *row = pert + (size_t)(t - 1) * V;
            const float *b = base + (size_t)(t - 1) * V;
            int top = test_argmax(b, V);
            /* even rows: raise the runner-up past the top (argmax moves); odd rows: raise a
             * low-probability logit a little (argmax stays) */
            int j = 0;
            for (int v = 0; v < V; v++)
                if (v != top && (j == top || b[v] > b[j])) j = v;
            float delta = (t % 2 == 0) ? (b[top] - b[j]) + 1.5f : 2.0f;
            if (t % 2) j = (top + 7 * t + 1) % V;
            row[j] += delta;
            long double dl = (long double)row[j] - b[j]; /* the δ float rounding left */
            long double lb = test_lse_ld(b, V), pj = expl((long double)b[j] - lb);
            kl_closed += logl(1 - pj + pj * expl(dl)) - dl * pj;
            kl_direct += kl_ld(b, row, V);
            nll += test_lse_ld(row, V) - row[ids[t]];
            agree += test_argmax(row, V) == top;
            target_is_top += test_argmax(row, V) == ids[t];
        }
        int scored = T - 1;
        ea_kv_ref_prepare(base, 1, T, V, prob, lse);
        ea_kv_score sc = {0};
        ea_kv_score_window(&sc, base, prob, lse, pert, ids, 1, T, V);
        printf("p%d: KL %.9f vs closed form %.9Lf (direct %.9Lf); NLL %.6f vs %.6Lf; top-1 %zu vs %zu of %d "
               "(the codec's argmax is the target %zu times)\n",
               p, sc.kl / scored, kl_closed / scored, kl_direct / scored, sc.nll / scored, nll / scored, sc.top1, agree,
               scored, target_is_top);
        assert_int_equal(sc.scored, (size_t)scored);
        assert_true(fabsl(kl_closed - kl_direct) < 1e-9L * scored); /* the reference agrees with itself */
        assert_true(kl_closed / scored > 0.1L);                      /* a KL far from 0: a wrong sign shows */
        assert_true(fabsl(sc.kl - kl_closed) < 1e-5L * scored);
        assert_true(fabsl(sc.nll - nll) < 1e-5L * scored);
        assert_int_equal(sc.top1, agree);
        /* top-1 agreement is argmax == the exact model's argmax, not == the next token: the two
         * counts differ on these rows, so confusing them fails */
        assert_true(agree != target_is_top);

        /* The exact model against itself, and against itself shifted by a constant (the same
         * distribution): KL 0 within rounding (never negative beyond it), every argmax agrees. */
        for (int shift = 0; shift < 2; shift++) {
            for (size_t i = 0; i < (size_t)T * V; i++) pert[i] = base[i] + (shift ? 3.25f : 0.0f);
            ea_kv_score z = {0};
            ea_kv_score_window(&z, base, prob, lse, pert, ids, 1, T, V);
            printf("p%d shift %d: KL %.3g\n", p, shift, z.kl);
            assert_true(fabs(z.kl) < 1e-5 * scored);
            assert_int_equal(z.top1, (size_t)scored);
        }
        free(ids);
        free(base);
        free(pert);
        free(prob);
        free(lse);
    }
    ea_st_close(fx);
}

/* ---- ea_compressor_evaluate against an independent second run ---- */

typedef struct {
    const float *mean, *basis; /* d, d × k */
    int d, k, layer;
} inject_ctx;

/* x ← mean + E Eᵀ (x − mean) on the residual stream entering block `layer`, in double. */
static int inject_hook(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    (void)pos0;
    inject_ctx *c = user;
    if (site != EA_SITE_HIDDEN || layer != c->layer) return 0;
    assert_int_equal(d, c->d);
    double *z = malloc(sizeof(double) * c->k);
    for (int r = 0; r < n; r++) {
        float *row = x + (size_t)r * ld;
        for (int j = 0; j < c->k; j++) {
            double s = 0;
            for (int i = 0; i < d; i++) s += ((double)row[i] - c->mean[i]) * c->basis[(size_t)i * c->k + j];
            z[j] = s;
        }
        for (int i = 0; i < d; i++) {
            double s = c->mean[i];
            for (int j = 0; j < c->k; j++) s += c->basis[(size_t)i * c->k + j] * z[j];
            row[i] = (float)s;
        }
    }
    free(z);
    return 0;
}

static void test_compressor_evaluate_independent(void **state) {
    (void)state;
    const ea_config *cfg = ea_model_config(model);
    int d = cfg->n_embd, V = cfg->vocab_size, k = d / 2, layer = 1, ctx = 32;
    /* A projector from a diagonal covariance with descending variances: its basis is the first
     * k coordinate axes, and a mean of 0.1 per dimension. */
    double *cov = calloc((size_t)d * d, sizeof *cov), *mean = malloc(sizeof(double) * d);
    for (int i = 0; i < d; i++) {
        cov[(size_t)i * d + i] = 2.0 - (double)i / d;
        mean[i] = 0.1;
    }
    ea_projector *pj;
    assert_int_equal(ea_projector_from_matrix(cov, mean, d, (ea_rank_rule){0, k}, (ea_site_ref){EA_SITE_HIDDEN, layer, -1}, &pj),
                     EA_OK);
    free(cov);
    free(mean);
    ea_compressor_info in = {.fingerprint = ea_model_fingerprint(model), .n_layer = cfg->n_layer, .n_embd = d,
                             .n_head = cfg->n_head, .calib_rows = 100, .ctx = ctx, .rule = {0, k}};
    ea_compressor *c;
    assert_int_equal(ea_compressor_create(&in, &pj, 1, &c), EA_OK);
    const ea_projector *p = ea_compressor_get(c, 0);
    assert_int_equal(ea_projector_rank(p), k);

    ea_tokenizer *tok;
    assert_int_equal(ea_tokenizer_load_dir(TEST_MODEL_DIR, &tok), EA_OK);
    const char *text = "Once upon a time there was a little girl who lived in a village near the forest. "
                       "Whenever she went out, the little girl wore a red riding cloak, so everyone in the village "
                       "called her Little Red Riding Hood.";
    int *ids;
    size_t n;
    assert_int_equal(ea_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n), EA_OK);
    ea_tokenizer_free(tok);
    assert_true(n > (size_t)ctx);

    ea_eval_result r;
    assert_int_equal(ea_eval_result_init(&r, c), EA_OK);
    ea_eval_params ep = {ctx, layer, NULL, NULL};
    assert_int_equal(ea_compressor_evaluate(model, c, ids, n, &ep, &r), EA_OK);

    /* The same windows, run here: once untouched, once through inject_hook. */
    float *full = malloc(sizeof(float) * (size_t)ctx * V), *comp = malloc(sizeof(float) * (size_t)ctx * V);
    ea_kvcache *cache;
    assert_int_equal(ea_kvcache_init(&cache, cfg, ctx, NULL), EA_OK);
    inject_ctx ic = {ea_projector_mean(p), ea_projector_basis(p), d, k, layer};
    long double nf = 0, nc = 0, kl = 0;
    size_t agree = 0, scored = 0;
    for (size_t off = 0; off < n; off += (size_t)ctx) {
        int len = (int)(n - off < (size_t)ctx ? n - off : (size_t)ctx);
        ea_model_set_capture(model, NULL, NULL);
        ea_kvcache_reset(cache);
        assert_int_equal(ea_model_forward(model, cache, ids + off, len, full, 1), EA_OK);
        ea_model_set_capture(model, inject_hook, &ic);
        ea_kvcache_reset(cache);
        assert_int_equal(ea_model_forward(model, cache, ids + off, len, comp, 1), EA_OK);
        ea_model_set_capture(model, NULL, NULL);
        for (int t = 0; t + 1 < len; t++) {
            const float *zf = full + (size_t)t * V, *zc = comp + (size_t)t * V;
            nf += test_lse_ld(zf, V) - zf[ids[off + t + 1]];
            nc += test_lse_ld(zc, V) - zc[ids[off + t + 1]];
            kl += kl_ld(zf, zc, V);
            agree += test_argmax(zf, V) == test_argmax(zc, V);
            scored++;
        }
    }
    ea_kvcache_free(cache);
    printf("evaluate: ppl %.6f -> %.6f vs %.6Lf -> %.6Lf; KL %.6f vs %.6Lf; top-1 %.4f vs %.4f (%zu scored)\n",
           ea_eval_ppl_full(&r), ea_eval_ppl_compressed(&r), expl(nf / scored), expl(nc / scored), ea_eval_kl(&r),
           kl / scored, ea_eval_top1(&r), (double)agree / scored, scored);
    assert_int_equal(r.scored, scored);
    assert_true(kl / scored > 0.01L); /* a real difference, so the sign and size are checked */
    assert_true(fabsl(ea_eval_ppl_full(&r) - expl(nf / scored)) / expl(nf / scored) < 1e-6L);
    assert_true(fabsl(ea_eval_ppl_compressed(&r) - expl(nc / scored)) / expl(nc / scored) < 1e-4L);
    assert_true(fabsl(ea_eval_kl(&r) - kl / scored) < 1e-4L * (kl / scored) + 1e-6L);
    /* the compressed argmax can sit within float noise of a runner-up in a row or two */
    assert_true(fabs(ea_eval_top1(&r) - (double)agree / scored) <= 2.0 / scored);
    free(full);
    free(comp);
    free(ids);
    ea_eval_result_free(&r);
    ea_compressor_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_softmax),
        cmocka_unit_test(test_perplexity_vs_fixture),
        cmocka_unit_test(test_perplexity_cli),
        cmocka_unit_test(test_kv_score_against_closed_forms),
        cmocka_unit_test(test_compressor_evaluate_independent),
    };
    return TEST_RUN(tests, setup, teardown);
}
