/* The research note's protocol in analyze (issue 18): --center none (eigenvalues of XᵀX/n, the
 * SVD of raw activations) and --pool mean|last (one vector per sample). Prescribed tiny inputs fed
 * through the capture hook, checked against direct computations here: the 2 × 2 closed form of
 * the eigenvalues, and for d = 4 the invariants Σλ = trace(M), Σλ² = ‖M‖²_F and the top eigenvalue
 * by power iteration on M built from the pooled vectors computed in this file. Then the CLI on
 * the bundled gpt2-micro (σ² = n·λ, n = samples) and its refusals. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static ea_config tiny(int d) {
    ea_config c;
    memset(&c, 0, sizeof c);
    c.n_layer = 1;
    c.n_head = 1;
    c.n_embd = d;
    c.n_inner = 4 * d;
    c.n_positions = 64;
    c.vocab_size = 10;
    return c;
}

/* The whole-site "all" result of hidden layer 0. */
static const ea_site_result *find_all(const ea_site_result *r, int n) {
    for (int i = 0; i < n; i++)
        if (r[i].kind == EA_SITE_HIDDEN && r[i].layer == 0 && r[i].head < 0 && r[i].variant == EA_VARIANT_ALL) return &r[i];
    fail_msg("no hidden layer 0 result");
    return NULL;
}

static void uncentered_2x2_closed_form(void **state) {
    (void)state;
    float x[5][2] = {{1, 2}, {3, -1}, {0.5f, 4}, {-2, 1}, {2, 2}};
    double a = 0, b = 0, c = 0;
    for (int i = 0; i < 5; i++) a += x[i][0] * x[i][0], b += x[i][0] * x[i][1], c += x[i][1] * x[i][1];
    a /= 5, b /= 5, c /= 5; /* XᵀX/n = [[a, b], [b, c]] */
    double mid = (a + c) / 2, rad = sqrt((a - c) * (a - c) / 4 + b * b);
    ea_config cfg = tiny(2);
    ea_site_stats *s;
    assert_int_equal(ea_site_stats_init(&s, &cfg, 1u << EA_SITE_HIDDEN, 0), EA_OK);
    assert_int_equal(ea_site_stats_set_protocol(s, 1, EA_POOL_NONE), EA_OK);
    assert_int_equal(ea_site_stats_capture(s, EA_SITE_HIDDEN, 0, 0, 2, 2, &x[0][0], 2), EA_OK);
    assert_int_equal(ea_site_stats_capture(s, EA_SITE_HIDDEN, 0, 2, 3, 2, &x[2][0], 2), EA_OK);
    /* hidden has n_layer + 1 = 2 layers; layer 1 gets the same rows (every site needs rows) */
    assert_int_equal(ea_site_stats_capture(s, EA_SITE_HIDDEN, 1, 0, 5, 2, &x[0][0], 2), EA_OK);
    ea_site_result *r;
    int nr;
    assert_int_equal(ea_site_stats_summarize(s, 1u << EA_VARIANT_ALL, &r, &nr), EA_OK);
    const ea_site_result *h = find_all(r, nr);
    printf("XᵀX/n eigenvalues %.12g %.12g, closed form %.12g %.12g\n", h->sum.eigenvalues[0], h->sum.eigenvalues[1],
           mid + rad, mid - rad);
    assert_true(fabs(h->sum.eigenvalues[0] - (mid + rad)) < 1e-9 * (mid + rad));
    assert_true(fabs(h->sum.eigenvalues[1] - (mid - rad)) < 1e-9 * (mid + rad));
    assert_true(fabs(h->sum.trace - (a + c)) < 1e-12 * (a + c));
    /* the standardized variant has no uncentred form: refused with a message */
    ea_site_result *r2;
    int nr2;
    assert_int_not_equal(ea_site_stats_summarize(s, 1u << EA_VARIANT_STANDARDIZED, &r2, &nr2), EA_OK);
    printf("standardized: %s\n", ea_last_error());
    ea_site_results_free(r, nr);
    ea_site_stats_free(s);
}

/* Top eigenvalue of a symmetric PSD d × d matrix by power iteration (independent of LAPACK). */
static double power_top(const double *m, int d) {
    double v[8], w[8], lam = 0;
    for (int i = 0; i < d; i++) v[i] = 1.0 + 0.1 * i;
    for (int it = 0; it < 5000; it++) {
        double nn = 0;
        for (int i = 0; i < d; i++) {
            w[i] = 0;
            for (int j = 0; j < d; j++) w[i] += m[i * d + j] * v[j];
            nn += w[i] * w[i];
        }
        nn = sqrt(nn);
        lam = nn;
        for (int i = 0; i < d; i++) v[i] = w[i] / nn;
    }
    return lam;
}

static void pooled(ea_pool pool) {
    enum { D = 4, NS = 6 };
    /* six samples of 3..8 rows, deterministic values; each fed in two captures (chunked prefill) */
    float rows[NS][8][D];
    int len[NS];
    double p[NS][D];
    for (int smp = 0; smp < NS; smp++) {
        len[smp] = 3 + smp;
        for (int t = 0; t < len[smp]; t++)
            for (int j = 0; j < D; j++) rows[smp][t][j] = (float)(sin(1.7 * smp + 0.9 * t + 2.3 * j) + 0.5 * j + 0.1 * smp);
        for (int j = 0; j < D; j++) {
            double acc = 0;
            for (int t = 0; t < len[smp]; t++) acc += rows[smp][t][j];
            p[smp][j] = pool == EA_POOL_MEAN ? acc / len[smp] : rows[smp][len[smp] - 1][j];
        }
    }
    double m[D * D] = {0};
    for (int smp = 0; smp < NS; smp++)
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) m[i * D + j] += p[smp][i] * p[smp][j] / NS;
    double tr = 0, fro = 0;
    for (int i = 0; i < D; i++) tr += m[i * D + i];
    for (int i = 0; i < D * D; i++) fro += m[i] * m[i];

    ea_config cfg = tiny(D);
    ea_site_stats *s;
    assert_int_equal(ea_site_stats_init(&s, &cfg, 1u << EA_SITE_HIDDEN, 0), EA_OK);
    assert_int_equal(ea_site_stats_set_protocol(s, 1, pool), EA_OK);
    for (int smp = 0; smp < NS; smp++) {
        int a = len[smp] / 2;
        assert_int_equal(ea_site_stats_capture(s, EA_SITE_HIDDEN, 0, 0, a, D, &rows[smp][0][0], D), EA_OK);
        assert_int_equal(ea_site_stats_capture(s, EA_SITE_HIDDEN, 0, a, len[smp] - a, D, &rows[smp][a][0], D), EA_OK);
        assert_int_equal(ea_site_stats_capture(s, EA_SITE_HIDDEN, 1, 0, len[smp], D, &rows[smp][0][0], D), EA_OK);
        assert_int_equal(ea_site_stats_end_sample(s), EA_OK);
    }
    ea_site_result *r;
    int nr;
    assert_int_equal(ea_site_stats_summarize(s, 1u << EA_VARIANT_ALL, &r, &nr), EA_OK);
    const ea_site_result *h = find_all(r, nr);
    assert_true(h->sum.n == NS);
    double s1 = 0, s2 = 0;
    for (int i = 0; i < D; i++) s1 += h->sum.eigenvalues[i], s2 += h->sum.eigenvalues[i] * h->sum.eigenvalues[i];
    double top = power_top(m, D);
    printf("pool %s: Σλ %.12g (trace %.12g), Σλ² %.12g (‖M‖² %.12g), λ1 %.12g (power %.12g)\n",
           pool == EA_POOL_MEAN ? "mean" : "last", s1, tr, s2, fro, h->sum.eigenvalues[0], top);
    assert_true(fabs(s1 - tr) < 1e-9 * tr);
    assert_true(fabs(s2 - fro) < 1e-9 * fro);
    assert_true(fabs(h->sum.eigenvalues[0] - top) < 1e-8 * top);
    assert_true(fabs(h->sum.df - tr * tr / fro) < 1e-9 * h->sum.df);
    ea_site_results_free(r, nr);
    /* protocol after rows were added: refused */
    assert_int_not_equal(ea_site_stats_set_protocol(s, 0, EA_POOL_NONE), EA_OK);
    ea_site_stats_free(s);
}

static void pooled_mean(void **state) { (void)state; pooled(EA_POOL_MEAN); }
static void pooled_last(void **state) { (void)state; pooled(EA_POOL_LAST); }

static void cli_protocol(void **state) {
    (void)state;
    char *out, *err;
    const char *args[] = {"analyze", "--sites", "hidden", "--no-heads", "--center", "none", "--pool", "last",
                          "--samples", "12", "--sample-len", "8", "--max-tokens", "2000", "--json", NULL};
    int rc = test_run_cli(&out, &err, args);
    if (rc) fail_msg("analyze exited %d: %s", rc, err);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "center")->valuestring, "none");
    assert_string_equal(cJSON_GetObjectItem(j, "pool")->valuestring, "last");
    const cJSON *site;
    int seen = 0;
    cJSON_ArrayForEach(site, cJSON_GetObjectItem(j, "sites")) {
        assert_string_equal(cJSON_GetObjectItem(site, "variant")->valuestring, "all"); /* the only variant pooled+uncentred */
        double n = cJSON_GetObjectItem(site, "n")->valuedouble;
        assert_true(n == 12);
        const cJSON *ev = cJSON_GetObjectItem(site, "eigenvalues"), *sv = cJSON_GetObjectItem(site, "singular_values");
        assert_int_equal(cJSON_GetArraySize(ev), cJSON_GetArraySize(sv));
        for (int i = 0; i < cJSON_GetArraySize(ev); i++) {
            double l = cJSON_GetArrayItem(ev, i)->valuedouble, sg = cJSON_GetArrayItem(sv, i)->valuedouble;
            assert_true(fabs(sg * sg - n * l) <= 1e-6 * (n * l) + 1e-9);
        }
        seen++;
    }
    assert_int_equal(seen, 5); /* gpt2-micro: hidden 0..4 */
    cJSON_Delete(j);
    free(out), free(err);

    const char *bad[][8] = {
        {"analyze", "--center", "median", NULL},
        {"analyze", "--pool", "max", NULL},
        {"analyze", "--center", "none", "--standardize", NULL},
        {"analyze", "--pool", "mean", "--exclude-first", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rc = test_run_cli(&out, &err, bad[i]);
        printf("%s %s: rc %d, %s", bad[i][1], bad[i][2], rc, err);
        assert_int_equal(rc, 2);
        assert_string_equal(out, "");
        free(out), free(err);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(uncentered_2x2_closed_form),
        cmocka_unit_test(pooled_mean),
        cmocka_unit_test(pooled_last),
        cmocka_unit_test(cli_protocol),
    };
    return TEST_RUN(tests, NULL, NULL);
}
