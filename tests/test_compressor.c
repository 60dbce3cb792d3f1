/* Activation compressor: projector math against closed forms and LAPACK, the file format
 * (bit-exact round trip, refusal of other models, corrupt files), KV statistics, the
 * calibration and evaluation loops on the bundled model, and the fit/compress CLI. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- helpers ---------------------------------------------------------------------------------- */

/* Random orthogonal d × d (row-major) from the QR factorisation of a Gaussian matrix (LAPACK). */
static double *random_orthogonal(int d, ea_rng *r) {
    double *q = malloc((size_t)d * d * sizeof *q), *tau = malloc((size_t)d * sizeof *tau);
    for (int i = 0; i < d * d; i++) q[i] = ea_rng_normal(r);
    assert_int_equal(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, d, d, q, d, tau), 0);
    assert_int_equal(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, d, d, d, q, d, tau), 0);
    free(tau);
    return q;
}

/* Σ = Q diag(lambda) Qᵀ. */
static double *spd_matrix(const double *q, const double *lambda, int d) {
    double *a = calloc((size_t)d * d, sizeof *a);
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int t = 0; t < d; t++) s += q[i * d + t] * lambda[t] * q[j * d + t];
            a[i * d + j] = s;
        }
    return a;
}

/* n rows x = mean + Σ_j sqrt(lambda_j) g_j q_j + noise·g. */
static float *sample_rows(int n, int d, const double *q, const double *lambda, const double *mean, double noise,
                          ea_rng *r) {
    float *x = malloc((size_t)n * d * sizeof *x);
    double *g = malloc((size_t)d * sizeof *g);
    for (int i = 0; i < n; i++) {
        for (int t = 0; t < d; t++) g[t] = sqrt(lambda[t]) * ea_rng_normal(r);
        for (int j = 0; j < d; j++) {
            double s = mean[j] + noise * ea_rng_normal(r);
            for (int t = 0; t < d; t++) s += q[j * d + t] * g[t];
            x[(size_t)i * d + j] = (float)s;
        }
    }
    free(g);
    return x;
}

static ea_cov *cov_of(const float *x, int n, int d) {
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    assert_int_equal(ea_cov_add(c, x, n, d), EA_OK);
    return c;
}

static char *path_in(const char *dir, const char *name) {
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

static unsigned char *slurp(const char *path, size_t *n) {
    char *d;
    assert_int_equal(ea_read_file(path, 1 << 30, &d, n), EA_OK);
    return (unsigned char *)d;
}

/* ---- projector math --------------------------------------------------------------------------- */

static void test_recon_stats_closed_form(void **state) {
    (void)state;
    float x[6] = {3, 4, 0, 0, 1, 0}, xh[6] = {3, 0, 0, 0, 0, 1};
    ea_recon_stats s = {0};
    ea_recon_stats_add(&s, x, 2, xh, 2, 3, 2);
    /* err² = 16 + 0 + 2, ‖x‖² = 25 + 0 + 1; cosines 3/5, 1 (zero vs zero), 0. */
    printf("rel error %.6f (expect %.6f), cosine %.6f (expect %.6f)\n", ea_recon_stats_rel_error(&s), sqrt(18.0 / 26.0),
           ea_recon_stats_cosine(&s), 1.6 / 3);
    assert_true(fabs(ea_recon_stats_rel_error(&s) - sqrt(18.0 / 26.0)) < 1e-12);
    assert_true(fabs(ea_recon_stats_cosine(&s) - 1.6 / 3) < 1e-12);
    ea_recon_stats e = {0};
    assert_true(isnan(ea_recon_stats_rel_error(&e)));
}

static void test_orthonormal_basis(void **state) {
    (void)state;
    int d = 40;
    ea_rng r;
    ea_rng_seed(&r, 11);
    double *q = random_orthogonal(d, &r), lambda[40], mean[40];
    for (int i = 0; i < d; i++) {
        lambda[i] = 10.0 * pow(0.85, i);
        mean[i] = i * 0.1;
    }
    double *a = spd_matrix(q, lambda, d);
    ea_projector *p;
    ea_site_ref ref = {EA_SITE_HIDDEN, 0, -1};
    assert_int_equal(ea_projector_from_matrix(a, mean, d, (ea_rank_rule){0, d}, ref, &p), EA_OK);
    assert_int_equal(ea_projector_rank(p), d);
    double oe = ea_projector_orthonormality_error(p);
    /* Eigenvalues against the construction (closed form) and LAPACK's dsyev on the same matrix. */
    double *w = malloc(d * sizeof *w), *acopy = malloc((size_t)d * d * sizeof *acopy);
    memcpy(acopy, a, (size_t)d * d * sizeof *a);
    assert_int_equal(LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'N', 'U', d, acopy, d, w), 0); /* ascending */
    double worst_closed = 0, worst_lapack = 0;
    const float *ev = ea_projector_eigenvalues(p);
    for (int i = 0; i < d; i++) {
        worst_closed = fmax(worst_closed, fabs(ev[i] - lambda[i]) / lambda[i]);
        worst_lapack = fmax(worst_lapack, fabs(ev[i] - w[d - 1 - i]) / w[d - 1 - i]);
    }
    /* Each basis column is an eigenvector: ‖A e − λ e‖ small. */
    const float *b = ea_projector_basis(p);
    double worst_res = 0;
    for (int j = 0; j < d; j++) {
        double res = 0;
        for (int i = 0; i < d; i++) {
            double s = 0;
            for (int t = 0; t < d; t++) s += a[i * d + t] * b[t * d + j];
            res += (s - lambda[j] * b[i * d + j]) * (s - lambda[j] * b[i * d + j]);
        }
        worst_res = fmax(worst_res, sqrt(res) / lambda[j]);
    }
    printf("d=%d: max|EᵀE-I| %.3g, eigenvalue rel err vs closed form %.3g, vs LAPACK dsyev %.3g, eigvec residual %.3g\n",
           d, oe, worst_closed, worst_lapack, worst_res);
    assert_true(oe < 1e-6);
    assert_true(worst_closed < 1e-6 && worst_lapack < 1e-6);
    assert_true(worst_res < 1e-5);
    /* Sign convention: each column's largest-magnitude entry is positive. */
    for (int j = 0; j < d; j++) {
        int im = 0;
        for (int i = 1; i < d; i++)
            if (fabsf(b[i * d + j]) > fabsf(b[im * d + j])) im = i;
        assert_true(b[im * d + j] > 0);
    }
    ea_projector_free(p);
    free(q);
    free(a);
    free(w);
    free(acopy);
}

static void test_variance_rule(void **state) {
    (void)state;
    /* Diagonal covariance with eigenvalues 8, 4, 2, 1, 1 (sum 16): C(k) = .5, .75, .875, .9375, 1. */
    int d = 5;
    double a[25] = {0}, mean[5] = {0};
    double lam[5] = {1, 8, 2, 4, 1};
    for (int i = 0; i < d; i++) a[i * d + i] = lam[i];
    struct {
        double target;
        int k;
    } cases[] = {{0.5, 1}, {0.51, 2}, {0.75, 2}, {0.8, 3}, {0.9, 4}, {0.95, 5}, {1.0, 5}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        ea_projector *p;
        assert_int_equal(ea_projector_from_matrix(a, mean, d, (ea_rank_rule){cases[c].target, 0},
                                                  (ea_site_ref){EA_SITE_K, 0, -1}, &p),
                         EA_OK);
        printf("variance %.2f -> k = %d (expect %d), kept %.4f\n", cases[c].target, ea_projector_rank(p), cases[c].k,
               ea_projector_variance_kept(p));
        assert_int_equal(ea_projector_rank(p), cases[c].k);
        ea_projector_free(p);
    }
    ea_projector *p;
    assert_int_equal(ea_projector_from_matrix(a, mean, d, (ea_rank_rule){0, 99}, (ea_site_ref){EA_SITE_K, 0, -1}, &p),
                     EA_OK);
    assert_int_equal(ea_projector_rank(p), d); /* rank clamps to d */
    ea_projector_free(p);
    assert_int_equal(ea_projector_from_matrix(a, mean, d, (ea_rank_rule){0, 0}, (ea_site_ref){EA_SITE_K, 0, -1}, &p),
                     EA_ERR_ARG);
    assert_int_equal(ea_projector_from_matrix(a, mean, d, (ea_rank_rule){1.5, 0}, (ea_site_ref){EA_SITE_K, 0, -1}, &p),
                     EA_ERR_ARG);
}

static void test_exact_reconstruction_full_rank(void **state) {
    (void)state;
    int n = 400, d = 32;
    ea_rng r;
    ea_rng_seed(&r, 5);
    double *q = random_orthogonal(d, &r), lambda[32], mean[32];
    for (int i = 0; i < d; i++) {
        lambda[i] = 1.0 / (i + 1);
        mean[i] = 3.0 - 0.2 * i; /* a large mean: reconstruction must add it back */
    }
    float *x = sample_rows(n, d, q, lambda, mean, 0.0, &r);
    ea_cov *c = cov_of(x, n, d);
    ea_rank_rule rules[2] = {{1.0, 0}, {0, d}};
    float *xh = malloc((size_t)n * d * sizeof *xh), *z = malloc((size_t)n * d * sizeof *z);
    for (int t = 0; t < 2; t++) {
        ea_projector *p;
        assert_int_equal(ea_projector_from_cov(c, rules[t], (ea_site_ref){EA_SITE_HIDDEN, 1, -1}, &p), EA_OK);
        assert_int_equal(ea_projector_rank(p), d);
        assert_int_equal(ea_projector_roundtrip(p, x, n, d, xh, d, z), EA_OK);
        ea_recon_stats s = {0};
        ea_recon_stats_add(&s, x, d, xh, d, n, d);
        double mad = test_max_abs_diff(xh, x, (size_t)n * d);
        printf("k = d = %d (%s): rel error %.3g, cosine 1-%.3g, max |x - x^| %.3g\n", d, t ? "rank" : "variance 1",
               ea_recon_stats_rel_error(&s), 1 - ea_recon_stats_cosine(&s), mad);
        /* float32 sgemm over d terms: a few ulps of |x| ~ 3. */
        assert_true(ea_recon_stats_rel_error(&s) < 1e-6);
        assert_true(mad < 1e-5);
        assert_true(ea_recon_stats_cosine(&s) > 1 - 1e-10);
        /* In place (the injection path) gives the same result. */
        float *y = malloc((size_t)n * d * sizeof *y);
        memcpy(y, x, (size_t)n * d * sizeof *y);
        assert_int_equal(ea_projector_roundtrip(p, y, n, d, y, d, z), EA_OK);
        assert_memory_equal(y, xh, (size_t)n * d * sizeof *y);
        free(y);
        ea_projector_free(p);
    }
    ea_cov_free(c);
    free(q);
    free(x);
    free(xh);
    free(z);
}

/* Principal angles between span(E) (d × k, orthonormal) and the first k columns of Q. */
static double max_principal_angle(const float *e, const double *q, int d, int k) {
    double *m = calloc((size_t)k * k, sizeof *m), *s = malloc(k * sizeof *s), *sup = malloc(k * sizeof *sup);
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++)
            for (int t = 0; t < d; t++) m[i * k + j] += (double)e[t * k + i] * q[t * d + j];
    assert_int_equal(LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', k, k, m, k, s, NULL, k, NULL, k, sup), 0);
    double smin = s[k - 1] > 1 ? 1 : s[k - 1]; /* cosines of the principal angles, descending */
    free(m);
    free(s);
    free(sup);
    return acos(smin);
}

static void test_planted_subspace(void **state) {
    (void)state;
    int n = 2000, d = 64, k = 5;
    ea_rng r;
    ea_rng_seed(&r, 42);
    double *q = random_orthogonal(d, &r), lambda[64] = {25, 16, 9, 4, 1}, mean[64];
    for (int i = 0; i < d; i++) mean[i] = sin(i);
    double noise = 0.01; /* isotropic: variance 1e-4 per dimension, 0.0064 in all */
    float *x = sample_rows(n, d, q, lambda, mean, noise, &r);
    ea_cov *c = cov_of(x, n, d);
    ea_projector *p;
    assert_int_equal(ea_projector_from_cov(c, (ea_rank_rule){0, k}, (ea_site_ref){EA_SITE_HIDDEN, 0, -1}, &p), EA_OK);
    double ang = max_principal_angle(ea_projector_basis(p), q, d, k);
    /* Perturbation bound (Davis–Kahan): sin θ ≲ ‖noise part‖ / gap; the sample noise in the
     * signal block is ~ sqrt(λ σ² / n) ≈ 1e-3 against a gap of 1 - 1e-4. */
    printf("planted rank %d in d=%d, n=%d, noise %.2g: max principal angle %.3g rad\n", k, d, n, noise, ang);
    assert_true(ang < 5e-3);
    ea_projector_free(p);
    /* C(4) = 54/55.0064 = 0.9817 and C(5) = 0.99988: the 0.99 target must pick exactly k = 5. */
    assert_int_equal(ea_projector_from_cov(c, (ea_rank_rule){0.99, 0}, (ea_site_ref){EA_SITE_HIDDEN, 0, -1}, &p), EA_OK);
    printf("variance 0.99 -> k = %d, kept %.5f\n", ea_projector_rank(p), ea_projector_variance_kept(p));
    assert_int_equal(ea_projector_rank(p), k);
    /* Reconstruction error of the rank-5 projector = the noise share: sqrt(0.0064·(59/64)/(55+‖μ‖²)). */
    float *xh = malloc((size_t)n * d * sizeof *xh), *z = malloc((size_t)n * k * sizeof *z);
    assert_int_equal(ea_projector_roundtrip(p, x, n, d, xh, d, z), EA_OK);
    double num = 0, den = 0;
    for (size_t i = 0; i < (size_t)n * d; i++) {
        num += ((double)x[i] - xh[i]) * ((double)x[i] - xh[i]);
        den += (double)x[i] * x[i];
    }
    double mu2 = 0;
    for (int i = 0; i < d; i++) mu2 += mean[i] * mean[i];
    double expect = sqrt(noise * noise * (d - k) / (55.0 + mu2));
    printf("rank-5 relative error %.4g, expected from the noise %.4g\n", sqrt(num / den), expect);
    assert_true(fabs(sqrt(num / den) - expect) / expect < 0.1);
    free(xh);
    free(z);
    ea_projector_free(p);
    ea_cov_free(c);
    free(q);
    free(x);
}

/* ---- synthetic compressor and its file ---------------------------------------------------------- */

#define SYN_L 2
#define SYN_D 8
#define SYN_H 2

static ea_projector *syn_projector(ea_site_ref ref, int d, int rank, ea_rng *r) {
    double *q = random_orthogonal(d, r), lambda[SYN_D], mean[SYN_D];
    for (int i = 0; i < d; i++) {
        lambda[i] = 5.0 * pow(0.6, i) + 0.01;
        mean[i] = ea_rng_normal(r);
    }
    double *a = spd_matrix(q, lambda, d);
    ea_projector *p;
    assert_int_equal(ea_projector_from_matrix(a, mean, d, (ea_rank_rule){0, rank}, ref, &p), EA_OK);
    free(q);
    free(a);
    return p;
}

/* hidden 0..L (rank 3), k and v 0..L-1 at full rank, q per head (rank 2). */
static ea_compressor *syn_compressor(const char *fingerprint, uint64_t seed) {
    ea_rng r;
    ea_rng_seed(&r, seed);
    ea_projector *proj[32];
    int n = 0;
    for (int l = 0; l <= SYN_L; l++) proj[n++] = syn_projector((ea_site_ref){EA_SITE_HIDDEN, l, -1}, SYN_D, 3, &r);
    for (int l = 0; l < SYN_L; l++) {
        proj[n++] = syn_projector((ea_site_ref){EA_SITE_V, l, -1}, SYN_D, SYN_D, &r);
        proj[n++] = syn_projector((ea_site_ref){EA_SITE_K, l, -1}, SYN_D, SYN_D, &r);
        for (int h = 0; h < SYN_H; h++) proj[n++] = syn_projector((ea_site_ref){EA_SITE_Q, l, h}, SYN_D / SYN_H, 2, &r);
    }
    ea_compressor_info in = {0};
    in.fingerprint = fingerprint;
    in.n_layer = SYN_L;
    in.n_embd = SYN_D;
    in.n_head = SYN_H;
    in.calib_tokens = 1000;
    in.calib_rows = 996;
    in.ctx = 250;
    in.rule.variance = 0.95;
    in.exclude_first = 1;
    in.library_version = EA_VERSION;
    ea_compressor *c;
    assert_int_equal(ea_compressor_create(&in, proj, n, &c), EA_OK);
    return c;
}

static void assert_same_compressor(const ea_compressor *a, const ea_compressor *b) {
    const ea_compressor_info *x = ea_compressor_get_info(a), *y = ea_compressor_get_info(b);
    assert_string_equal(x->fingerprint, y->fingerprint);
    assert_int_equal(x->n_layer, y->n_layer);
    assert_int_equal(x->n_embd, y->n_embd);
    assert_int_equal(x->n_head, y->n_head);
    assert_int_equal(x->calib_tokens, y->calib_tokens);
    assert_int_equal(x->calib_rows, y->calib_rows);
    assert_int_equal(x->ctx, y->ctx);
    assert_int_equal(x->exclude_first, y->exclude_first);
    assert_int_equal(x->rule.rank, y->rule.rank);
    assert_memory_equal(&x->rule.variance, &y->rule.variance, sizeof(double));
    assert_string_equal(y->library_version, EA_VERSION);
    assert_int_equal(ea_compressor_count(a), ea_compressor_count(b));
    for (int i = 0; i < ea_compressor_count(a); i++) {
        const ea_projector *p = ea_compressor_get(a, i), *q = ea_compressor_get(b, i);
        ea_site_ref r1 = ea_projector_site(p), r2 = ea_projector_site(q);
        assert_int_equal(r1.site, r2.site);
        assert_int_equal(r1.layer, r2.layer);
        assert_int_equal(r1.head, r2.head);
        int d = ea_projector_dim(p), k = ea_projector_rank(p);
        assert_int_equal(d, ea_projector_dim(q));
        assert_int_equal(k, ea_projector_rank(q));
        assert_memory_equal(ea_projector_mean(p), ea_projector_mean(q), d * sizeof(float));
        assert_memory_equal(ea_projector_eigenvalues(p), ea_projector_eigenvalues(q), d * sizeof(float));
        assert_memory_equal(ea_projector_basis(p), ea_projector_basis(q), (size_t)d * k * sizeof(float));
    }
}

static void test_file_round_trip(void **state) {
    (void)state;
    char *dir = test_tmpdir(), *p1 = path_in(dir, "c1.safetensors"), *p2 = path_in(dir, "c2.safetensors");
    ea_compressor *c = syn_compressor("feedfacecafebeef", 3), *d;
    assert_int_equal(ea_compressor_save(c, p1), EA_OK);
    assert_int_equal(ea_compressor_load(p1, &d), EA_OK);
    assert_same_compressor(c, d);
    assert_int_equal(ea_compressor_save(d, p2), EA_OK);
    size_t n1, n2;
    unsigned char *b1 = slurp(p1, &n1), *b2 = slurp(p2, &n2);
    printf("compressor with %d projectors: %zu bytes, re-saved file identical: %s\n", ea_compressor_count(c), n1,
           n1 == n2 && !memcmp(b1, b2, n1) ? "yes" : "no");
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    /* The file is ordinary safetensors with the documented names and metadata. */
    ea_st_file *f;
    assert_int_equal(ea_st_open(p1, &f), EA_OK);
    assert_non_null(ea_st_find(f, "layer.2.hidden.basis"));
    assert_non_null(ea_st_find(f, "layer.1.q.head1.eigenvalues"));
    assert_string_equal(ea_st_metadata(f, "format"), EA_COMPRESSOR_FORMAT);
    assert_string_equal(ea_st_metadata(f, "model_fingerprint"), "feedfacecafebeef");
    assert_string_equal(ea_st_metadata(f, "library_version"), EA_VERSION);
    assert_string_equal(ea_st_metadata(f, "exclude_first"), "1");
    assert_string_equal(ea_st_metadata(f, "calib_tokens"), "1000");
    ea_st_close(f);
    /* Lookup by site. */
    assert_non_null(ea_compressor_find(d, EA_SITE_Q, 1, 1));
    assert_null(ea_compressor_find(d, EA_SITE_Q, 1, -1));
    assert_null(ea_compressor_find(d, EA_SITE_V, 2, -1));
    free(b1);
    free(b2);
    ea_compressor_free(c);
    ea_compressor_free(d);
    test_rmdir(dir);
    free(dir);
    free(p1);
    free(p2);
}

static void test_other_model_refused(void **state) {
    (void)state;
    ea_compressor *c = syn_compressor("feedfacecafebeef", 3);
    ea_config cfg = {.n_layer = SYN_L, .n_head = SYN_H, .n_embd = SYN_D, .n_positions = 64, .vocab_size = 100};
    assert_int_equal(ea_compressor_check(c, "c.st", &cfg, "feedfacecafebeef"), EA_OK);
    ea_status st = ea_compressor_check(c, "c.st", &cfg, "0123456789abcdef");
    printf("other fingerprint: %s\n", ea_last_error());
    assert_int_equal(st, EA_ERR_MISMATCH);
    assert_non_null(strstr(ea_last_error(), "c.st"));
    assert_non_null(strstr(ea_last_error(), "0123456789abcdef"));
    assert_non_null(strstr(ea_last_error(), "fingerprint"));
    ea_config wider = cfg, deeper = cfg, heads = cfg;
    wider.n_embd = 16;
    deeper.n_layer = 3;
    heads.n_head = 4;
    const ea_config *bad[3] = {&wider, &deeper, &heads};
    for (int i = 0; i < 3; i++) {
        st = ea_compressor_check(c, "c.st", bad[i], "feedfacecafebeef");
        printf("other shape: %s\n", ea_last_error());
        assert_int_equal(st, EA_ERR_MISMATCH);
        assert_non_null(strstr(ea_last_error(), "this model has"));
    }
    ea_compressor_free(c);
}

/* Corruptions of a good file, each with the words the error must contain. */
typedef enum {
    CORRUPT_NONE,
    CORRUPT_TRUNCATE,
    CORRUPT_MEAN_SHAPE,
    CORRUPT_BASIS_K,
    CORRUPT_NONORTHO,
    CORRUPT_NAN_MEAN,
    CORRUPT_INF_EIG,
    CORRUPT_NEG_EIG,
    CORRUPT_ASCENDING,
    CORRUPT_MISSING_PART,
    CORRUPT_EXTRA_TENSOR,
    CORRUPT_DTYPE,
    CORRUPT_LAYER_RANGE,
    CORRUPT_HEAD_RANGE,
    CORRUPT_NO_FINGERPRINT,
    CORRUPT_FORMAT_NAME,
    CORRUPT_FUTURE_VERSION,
    CORRUPT_BAD_NUMBER,
    CORRUPT_NO_PROJECTORS,
    CORRUPT_COUNT
} corruption;

static const char *expect_msg[CORRUPT_COUNT] = {
    NULL,           "truncated",       "layer.0.hidden.mean must have shape", "layer.0.hidden.basis must have shape",
    "not orthonormal", "mean[2] is not finite", "eigenvalue 1 is not finite", "negative",
    "descending",   "layer.1.k.eigenvalues is missing", "unexpected tensor", "expected F32",
    "outside",      "head 5 does not exist", "model_fingerprint", "format is",
    "newer",        "n_embd",          "no projectors",
};

static void write_corrupt(const ea_compressor *c, const char *path, corruption what) {
    const ea_compressor_info *in = ea_compressor_get_info(c);
    ea_st_writer *w;
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    char buf[64];
    ea_st_writer_meta(w, "format", what == CORRUPT_FORMAT_NAME ? "something-else" : EA_COMPRESSOR_FORMAT);
    ea_st_writer_meta(w, "format_version", what == CORRUPT_FUTURE_VERSION ? "99" : "1");
    ea_st_writer_meta(w, "library_version", EA_VERSION);
    if (what != CORRUPT_NO_FINGERPRINT) ea_st_writer_meta(w, "model_fingerprint", in->fingerprint);
    snprintf(buf, sizeof buf, "%d", in->n_layer);
    ea_st_writer_meta(w, "n_layer", buf);
    snprintf(buf, sizeof buf, "%d", in->n_embd);
    ea_st_writer_meta(w, "n_embd", what == CORRUPT_BAD_NUMBER ? "8x" : buf);
    snprintf(buf, sizeof buf, "%d", in->n_head);
    ea_st_writer_meta(w, "n_head", buf);
    ea_st_writer_meta(w, "calib_tokens", "1000");
    ea_st_writer_meta(w, "calib_rows", "996");
    ea_st_writer_meta(w, "ctx", "250");
    ea_st_writer_meta(w, "exclude_first", "1");
    ea_st_writer_meta(w, "selection", "variance");
    ea_st_writer_meta(w, "variance", "0.95");
    for (int i = 0; what != CORRUPT_NO_PROJECTORS && i < ea_compressor_count(c); i++) {
        const ea_projector *p = ea_compressor_get(c, i);
        ea_site_ref r = ea_projector_site(p);
        int d = ea_projector_dim(p), k = ea_projector_rank(p);
        float mean[SYN_D + 1] = {0}, eig[SYN_D], basis[2 * SYN_D * SYN_D];
        memcpy(mean, ea_projector_mean(p), d * sizeof(float));
        memcpy(eig, ea_projector_eigenvalues(p), d * sizeof(float));
        memcpy(basis, ea_projector_basis(p), (size_t)d * k * sizeof(float));
        int first = i == 0; /* layer.0.hidden */
        int64_t sm[1] = {d + (first && what == CORRUPT_MEAN_SHAPE)}, se[1] = {d};
        int64_t sb[2] = {d, k + (first && what == CORRUPT_BASIS_K ? d : 0)};
        if (first && what == CORRUPT_BASIS_K) memset(basis, 0, sizeof basis);
        if (first && what == CORRUPT_NONORTHO)
            for (int t = 0; t < d; t++) basis[t * k + 1] *= 1.1f;
        if (first && what == CORRUPT_NAN_MEAN) mean[2] = NAN;
        if (first && what == CORRUPT_INF_EIG) eig[1] = INFINITY;
        if (first && what == CORRUPT_NEG_EIG) eig[d - 1] = -1.0f;
        if (first && what == CORRUPT_ASCENDING) {
            float t = eig[0];
            eig[0] = eig[1];
            eig[1] = t;
        }
        char prefix[64], name[96];
        if (r.head >= 0)
            snprintf(prefix, sizeof prefix, "layer.%d.%s.head%d", r.layer, ea_site_name(r.site), r.head);
        else
            snprintf(prefix, sizeof prefix, "layer.%d.%s", r.layer, ea_site_name(r.site));
        if (first && what == CORRUPT_LAYER_RANGE) snprintf(prefix, sizeof prefix, "layer.7.hidden");
        if (first && what == CORRUPT_HEAD_RANGE) snprintf(prefix, sizeof prefix, "layer.0.q.head5");
        snprintf(name, sizeof name, "%s.mean", prefix);
        assert_int_equal(ea_st_writer_add(w, name, EA_DTYPE_F32, 1, sm, mean), EA_OK);
        snprintf(name, sizeof name, "%s.basis", prefix);
        if (first && what == CORRUPT_DTYPE) {
            double db[SYN_D * SYN_D];
            for (int t = 0; t < d * k; t++) db[t] = basis[t];
            assert_int_equal(ea_st_writer_add(w, name, EA_DTYPE_F64, 2, sb, db), EA_OK);
        } else {
            assert_int_equal(ea_st_writer_add(w, name, EA_DTYPE_F32, 2, sb, basis), EA_OK);
        }
        snprintf(name, sizeof name, "%s.eigenvalues", prefix);
        if (!(what == CORRUPT_MISSING_PART && r.site == EA_SITE_K && r.layer == 1))
            assert_int_equal(ea_st_writer_add(w, name, EA_DTYPE_F32, 1, se, eig), EA_OK);
    }
    if (what == CORRUPT_EXTRA_TENSOR) {
        float one = 1;
        assert_int_equal(ea_st_writer_add(w, "layer.0.hidden.scale", EA_DTYPE_F32, 0, NULL, &one), EA_OK);
    }
    assert_int_equal(ea_st_writer_save(w, path), EA_OK);
    ea_st_writer_free(w);
    if (what == CORRUPT_TRUNCATE) {
        size_t n;
        unsigned char *b = slurp(path, &n);
        assert_int_equal(test_write_file(path, b, n / 2), 0);
        free(b);
    }
}

static void test_corrupt_files(void **state) {
    (void)state;
    char *dir = test_tmpdir(), *path = path_in(dir, "bad.safetensors");
    ea_compressor *c = syn_compressor("feedfacecafebeef", 9), *d;
    for (int what = 0; what < CORRUPT_COUNT; what++) {
        write_corrupt(c, path, (corruption)what);
        ea_status st = ea_compressor_load(path, &d);
        if (what == CORRUPT_NONE) {
            assert_int_equal(st, EA_OK); /* the writer above is right; each case changes one thing */
            assert_same_compressor(c, d);
            ea_compressor_free(d);
            continue;
        }
        printf("case %2d: %s (%s)\n", what, ea_last_error(), ea_status_name(st));
        assert_int_not_equal(st, EA_OK);
        assert_null(d);
        assert_non_null(strstr(ea_last_error(), path));
        assert_non_null(strstr(ea_last_error(), expect_msg[what]));
    }
    /* A missing file is an I/O error naming it. */
    assert_int_equal(ea_compressor_load("/nonexistent/c.safetensors", &d), EA_ERR_IO);
    assert_non_null(strstr(ea_last_error(), "/nonexistent/c.safetensors"));
    ea_compressor_free(c);
    test_rmdir(dir);
    free(dir);
    free(path);
}

static void test_kv_stats(void **state) {
    (void)state;
    /* Full-rank k and v from known covariances: the statistics must give the matrices back. */
    ea_rng r;
    ea_rng_seed(&r, 77);
    int d = SYN_D, L = SYN_L;
    ea_projector *proj[8];
    double *truth[2][SYN_L], mean[2][SYN_L][SYN_D];
    int n = 0;
    for (int kind = 0; kind < 2; kind++)
        for (int l = 0; l < L; l++) {
            double *q = random_orthogonal(d, &r), lambda[SYN_D];
            for (int i = 0; i < d; i++) {
                lambda[i] = 3.0 / (i + 1 + kind + l);
                mean[kind][l][i] = ea_rng_normal(&r);
            }
            truth[kind][l] = spd_matrix(q, lambda, d);
            assert_int_equal(ea_projector_from_matrix(truth[kind][l], mean[kind][l], d, (ea_rank_rule){0, d},
                                                      (ea_site_ref){kind ? EA_SITE_V : EA_SITE_K, l, -1}, &proj[n++]),
                             EA_OK);
            free(q);
        }
    proj[n++] = syn_projector((ea_site_ref){EA_SITE_HIDDEN, 0, -1}, d, 2, &r);
    ea_compressor_info in = {.fingerprint = "x", .n_layer = L, .n_embd = d, .n_head = SYN_H, .calib_rows = 500,
                             .ctx = 10, .rule = {0, d}};
    ea_compressor *c;
    assert_int_equal(ea_compressor_create(&in, proj, n, &c), EA_OK);
    ea_kv_stats s;
    assert_int_equal(ea_compressor_kv_stats(c, &s), EA_OK);
    assert_int_equal(s.n_layer, L);
    assert_int_equal(s.d, d);
    assert_true(s.n == 500);
    double worst = 0, worst_mean = 0;
    for (int kind = 0; kind < 2; kind++)
        for (int l = 0; l < L; l++) {
            double num = 0, den = 0;
            for (int i = 0; i < d * d; i++) {
                double diff = s.cov[kind][(size_t)l * d * d + i] - truth[kind][l][i];
                num += diff * diff;
                den += truth[kind][l][i] * truth[kind][l][i];
            }
            worst = fmax(worst, sqrt(num / den));
            for (int i = 0; i < d; i++) worst_mean = fmax(worst_mean, fabs(s.mean[kind][(size_t)l * d + i] - mean[kind][l][i]));
            free(truth[kind][l]);
        }
    printf("kv stats: covariance rel Frobenius error %.3g, mean max error %.3g (float32 storage)\n", worst, worst_mean);
    assert_true(worst < 1e-6);
    assert_true(worst_mean < 1e-6);
    ea_kv_stats_free(&s);
    ea_compressor_free(c);
    /* The synthetic compressor has full-rank k and v too; one with rank < d is refused. */
    c = syn_compressor("x", 1);
    assert_int_equal(ea_compressor_kv_stats(c, &s), EA_OK);
    ea_kv_stats_free(&s);
    ea_compressor_free(c);
    ea_projector *only_hidden[1] = {syn_projector((ea_site_ref){EA_SITE_HIDDEN, 0, -1}, d, 2, &r)};
    assert_int_equal(ea_compressor_create(&in, only_hidden, 1, &c), EA_OK);
    assert_int_equal(ea_compressor_kv_stats(c, &s), EA_ERR_ARG);
    printf("no k/v: %s\n", ea_last_error());
    assert_non_null(strstr(ea_last_error(), "layer 0"));
    ea_compressor_free(c);
    ea_projector *low[4];
    for (int l = 0; l < L; l++) {
        low[2 * l] = syn_projector((ea_site_ref){EA_SITE_K, l, -1}, d, d, &r);
        low[2 * l + 1] = syn_projector((ea_site_ref){EA_SITE_V, l, -1}, d, l == 1 ? d - 1 : d, &r);
    }
    assert_int_equal(ea_compressor_create(&in, low, 4, &c), EA_OK);
    assert_int_equal(ea_compressor_kv_stats(c, &s), EA_ERR_ARG);
    printf("rank < d: %s\n", ea_last_error());
    assert_non_null(strstr(ea_last_error(), "full rank"));
    ea_compressor_free(c);
}

/* ---- on the bundled model --------------------------------------------------------------------- */

static ea_model *model;
static int *ids;
static size_t n_ids;
#define CALIB_TOKENS 400
#define EVAL_TOKENS 200

static int load_model(void **state) {
    (void)state;
    ea_tokenizer *t = NULL;
    if (ea_model_load(TEST_MODEL_DIR, &model) || ea_tokenizer_load_dir(TEST_MODEL_DIR, &t)) {
        printf("model or tokenizer unavailable: %s\n", ea_last_error());
        ea_model_free(model);
        model = NULL;
        ea_tokenizer_free(t);
        return -1; /* the bundled model is part of the repository: failing to load it is a failure */
    }
    char *text;
    size_t len;
    if (ea_read_file(EA_SOURCE_DIR "/data/calib.txt", 1 << 26, &text, &len) == EA_OK) {
        if (ea_tokenizer_encode(t, text, len, 0, &ids, &n_ids) != EA_OK) n_ids = 0;
        free(text);
    }
    ea_tokenizer_free(t);
    return 0;
}

static int free_model(void **state) {
    (void)state;
    ea_model_free(model);
    free(ids);
    return 0;
}

/* Independent K/V covariance through the capture hook, to check the fitted statistics. */
typedef struct {
    ea_cov *cov[2];
    int layer;
} kv_capture;

static ea_status capture_kv(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    kv_capture *k = user;
    if (layer != k->layer || (site != EA_SITE_K && site != EA_SITE_V)) return 0;
    int skip = pos0 == 0; /* exclude_first */
    return ea_cov_add(k->cov[site == EA_SITE_V], x + (size_t)skip * ld, n - skip, ld);
}

static void test_fit_full_rank_on_model(void **state) {
    (void)state;
    if (!model || n_ids < CALIB_TOKENS * 2) fail_msg("bundled model or data/calib.txt not loadable (group setup)");
    const ea_config *cfg = ea_model_config(model);
    int d = cfg->n_embd, ctx = 100;
    ea_fit_params fp = ea_fit_params_default();
    fp.rule = (ea_rank_rule){0, d};
    fp.sites = 0xfu;
    fp.ctx = ctx;
    fp.exclude_first = 1;
    ea_compressor *c;
    assert_int_equal(ea_compressor_fit(model, ids, CALIB_TOKENS, &fp, &c), EA_OK);
    const ea_compressor_info *in = ea_compressor_get_info(c);
    assert_int_equal(ea_compressor_count(c), (cfg->n_layer + 1) + 3 * cfg->n_layer);
    assert_int_equal(in->calib_rows, CALIB_TOKENS - CALIB_TOKENS / ctx);
    assert_string_equal(in->fingerprint, ea_model_fingerprint(model));
    assert_int_equal(ea_compressor_check_model(c, "fitted", model), EA_OK);

    /* KV statistics equal an independent accumulation of the same rows (layer 1). */
    kv_capture kc = {.layer = 1};
    assert_int_equal(ea_cov_init(&kc.cov[0], d), EA_OK);
    assert_int_equal(ea_cov_init(&kc.cov[1], d), EA_OK);
    ea_kvcache *cache;
    assert_int_equal(ea_kvcache_init(&cache, cfg, ctx, NULL), EA_OK);
    ea_model_set_capture(model, capture_kv, &kc);
    for (int off = 0; off < CALIB_TOKENS; off += ctx) {
        ea_kvcache_reset(cache);
        assert_int_equal(ea_model_forward(model, cache, ids + off, ctx, NULL, 0), EA_OK);
    }
    ea_model_set_capture(model, NULL, NULL);
    ea_kvcache_free(cache);
    ea_kv_stats s;
    assert_int_equal(ea_compressor_kv_stats(c, &s), EA_OK);
    double *ref = malloc((size_t)d * d * sizeof *ref);
    for (int kind = 0; kind < 2; kind++) {
        assert_int_equal(ea_cov_matrix(kc.cov[kind], 0, ref), EA_OK);
        double num = 0, den = 0, mnum = 0, mden = 0;
        for (int i = 0; i < d * d; i++) {
            double diff = s.cov[kind][(size_t)d * d + i] - ref[i];
            num += diff * diff;
            den += ref[i] * ref[i];
        }
        const double *mu = ea_cov_mean(kc.cov[kind]);
        for (int i = 0; i < d; i++) {
            mnum += (s.mean[kind][d + i] - mu[i]) * (s.mean[kind][d + i] - mu[i]);
            mden += mu[i] * mu[i];
        }
        printf("layer 1 %s: covariance rel error %.3g, mean rel error %.3g vs direct accumulation\n", kind ? "V" : "K",
               sqrt(num / den), sqrt(mnum / mden));
        assert_true(sqrt(num / den) < 1e-5);
        assert_true(sqrt(mnum / mden) < 1e-6);
        ea_cov_free(kc.cov[kind]);
    }
    free(ref);
    ea_kv_stats_free(&s);

    /* At k = d the replaced residual stream is the original to float precision: the model's
     * predictions must not move (held-out tokens). */
    ea_eval_result r;
    assert_int_equal(ea_eval_result_init(&r, c), EA_OK);
    ea_eval_params ep = {ctx, EA_INJECT_ALL, NULL, NULL};
    assert_int_equal(ea_compressor_evaluate(model, c, ids + CALIB_TOKENS, EVAL_TOKENS, &ep, &r), EA_OK);
    double worst = 0;
    for (int i = 0; i < r.n_sites; i++) {
        assert_int_equal(r.site[i].rows, EVAL_TOKENS - EVAL_TOKENS / ctx); /* position 0 of each window left out */
        worst = fmax(worst, ea_recon_stats_rel_error(&r.site[i]));
    }
    printf("k = d: worst site error %.3g; ppl %.4f -> %.4f, KL %.3g, top1 %.4f over %zu predictions\n", worst,
           ea_eval_ppl_full(&r), ea_eval_ppl_compressed(&r), ea_eval_kl(&r), ea_eval_top1(&r), r.scored);
    assert_int_equal(r.scored, EVAL_TOKENS - EVAL_TOKENS / ctx);
    /* The uncompressed side is the model's own perplexity protocol (full, same windows). */
    ea_ppl_result pr;
    assert_int_equal(ea_kvcache_init(&cache, cfg, ctx, NULL), EA_OK);
    assert_int_equal(ea_perplexity(model, cache, ids + CALIB_TOKENS, EVAL_TOKENS, ctx, EA_PPL_FULL, &pr), EA_OK);
    ea_kvcache_free(cache);
    printf("ppl_full %.10f vs ea_perplexity %.10f (%zu tokens scored)\n", ea_eval_ppl_full(&r), pr.ppl, pr.tokens_scored);
    assert_int_equal(pr.tokens_scored, r.scored);
    assert_true(fabs(ea_eval_ppl_full(&r) - pr.ppl) / pr.ppl < 1e-9);
    assert_true(worst < 1e-5);
    assert_true(ea_eval_kl(&r) < 1e-6);
    assert_true(fabs(ea_eval_ppl_full(&r) - ea_eval_ppl_compressed(&r)) / ea_eval_ppl_full(&r) < 1e-4);
    /* A tie between the top two logits within float noise could flip one argmax in 198. */
    assert_true(ea_eval_top1(&r) >= 0.99);
    ea_eval_result_free(&r);
    ea_compressor_free(c);
}

static void test_fit_low_rank_on_model(void **state) {
    (void)state;
    if (!model || n_ids < CALIB_TOKENS * 2) fail_msg("bundled model or data/calib.txt not loadable (group setup)");
    const ea_config *cfg = ea_model_config(model);
    ea_fit_params fp = ea_fit_params_default();
    fp.rule = (ea_rank_rule){0.6, 0};
    fp.sites = EA_SITE_BIT(EA_SITE_HIDDEN) | EA_SITE_BIT(EA_SITE_Q);
    fp.per_head = 1;
    fp.ctx = 100;
    ea_compressor *c;
    assert_int_equal(ea_compressor_fit(model, ids, CALIB_TOKENS, &fp, &c), EA_OK);
    assert_int_equal(ea_compressor_count(c), cfg->n_layer + 1 + cfg->n_layer * cfg->n_head);
    for (int i = 0; i < ea_compressor_count(c); i++) {
        const ea_projector *p = ea_compressor_get(c, i);
        assert_true(ea_projector_variance_kept(p) >= 0.6 - 1e-9);
        assert_true(ea_projector_orthonormality_error(p) < 1e-5);
    }
    /* Per-head q sites have d = head width. */
    assert_int_equal(ea_projector_dim(ea_compressor_find(c, EA_SITE_Q, 0, 1)), cfg->n_embd / cfg->n_head);
    ea_eval_result all, one;
    ea_eval_params ep = {100, EA_INJECT_ALL, NULL, NULL};
    assert_int_equal(ea_eval_result_init(&all, c), EA_OK);
    assert_int_equal(ea_eval_result_init(&one, c), EA_OK);
    assert_int_equal(ea_compressor_evaluate(model, c, ids + CALIB_TOKENS, EVAL_TOKENS, &ep, &all), EA_OK);
    ep.inject = 2;
    assert_int_equal(ea_compressor_evaluate(model, c, ids + CALIB_TOKENS, EVAL_TOKENS, &ep, &one), EA_OK);
    for (int i = 0; i < all.n_sites; i++) {
        double e = ea_recon_stats_rel_error(&all.site[i]);
        assert_true(e > 0 && e < 1);
        /* Reconstruction is measured on the untouched model: identical whatever is injected. */
        assert_true(ea_recon_stats_rel_error(&one.site[i]) == e);
    }
    printf("variance 0.6, inject all: ppl %.3f -> %.3f, KL %.4f, top1 %.3f; inject 2: ppl -> %.3f, KL %.4f, top1 %.3f\n",
           ea_eval_ppl_full(&all), ea_eval_ppl_compressed(&all), ea_eval_kl(&all), ea_eval_top1(&all),
           ea_eval_ppl_compressed(&one), ea_eval_kl(&one), ea_eval_top1(&one));
    assert_true(ea_eval_ppl_full(&all) == ea_eval_ppl_full(&one));
    assert_true(ea_eval_kl(&all) > 1e-4);
    assert_true(ea_eval_kl(&one) > 0);
    assert_true(ea_eval_top1(&all) >= 0 && ea_eval_top1(&all) < 1);
    ea_eval_result_free(&all);
    ea_eval_result_free(&one);
    /* Injecting where there is no hidden projector, or a layer that does not exist. */
    ea_compressor *kv;
    fp.sites = EA_SITE_BIT(EA_SITE_K);
    fp.per_head = 0;
    assert_int_equal(ea_compressor_fit(model, ids, 200, &fp, &kv), EA_OK);
    assert_int_equal(ea_eval_result_init(&all, kv), EA_OK);
    ep.inject = EA_INJECT_ALL;
    assert_int_equal(ea_compressor_evaluate(model, kv, ids, 100, &ep, &all), EA_ERR_ARG);
    assert_non_null(strstr(ea_last_error(), "no hidden projector"));
    ep.inject = cfg->n_layer;
    assert_int_equal(ea_compressor_evaluate(model, kv, ids, 100, &ep, &all), EA_ERR_ARG);
    ea_eval_result_free(&all);
    ea_compressor_free(kv);
    ea_compressor_free(c);
}

/* ---- CLI end to end --------------------------------------------------------------------------- */

static double jnum(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

static void test_cli_fit_compress(void **state) {
    (void)state;
    if (!model) fail_msg("bundled model not loadable (group setup)");
    const ea_config *cfg = ea_model_config(model);
    char *dir = test_tmpdir(), *cpath = path_in(dir, "c.safetensors"), *out, *err;
    const char *fit[] = {"fit", "--text", EA_SOURCE_DIR "/data/calib.txt", "--max-tokens", "300", "--ctx", "100",
                         "--variance", "0.9", "--sites", "hidden,k,v", "--exclude-first", "-o", cpath, "--json", NULL};
    int rc = test_run_cli(&out, &err, fit);
    if (rc) printf("fit stderr: %s\n", err);
    assert_int_equal(rc, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    assert_int_equal((int)jnum(j, "tokens"), 300);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "sites")), (cfg->n_layer + 1) + 2 * cfg->n_layer);
    cJSON_Delete(j);
    free(out);
    free(err);

    const char *comp[] = {"compress", "--compressor", cpath, "--text", EA_SOURCE_DIR "/data/eval.txt", "--max-tokens",
                          "200", "--ctx", "100", "--inject", "all", "--prompt", "The cat sat on the mat.", "--prompt",
                          "In 1905, Einstein published four papers.", "--json", NULL};
    rc = test_run_cli(&out, &err, comp);
    if (rc) printf("compress stderr: %s\n", err);
    assert_int_equal(rc, 0);
    j = cJSON_Parse(out);
    assert_non_null(j);
    /* The numbers the CLI prints are ea_compressor_evaluate's on the same compressor file and the
     * same 200 tokens (whose own metrics test_metrics checks against an independent computation). */
    ea_compressor *lc;
    assert_int_equal(ea_compressor_load(cpath, &lc), EA_OK);
    ea_tokenizer *tok;
    assert_int_equal(ea_tokenizer_load_dir(TEST_MODEL_DIR, &tok), EA_OK);
    char *etext;
    size_t elen, en;
    int *eids;
    assert_int_equal(ea_read_file(EA_SOURCE_DIR "/data/eval.txt", 1 << 26, &etext, &elen), EA_OK);
    assert_int_equal(ea_tokenizer_encode(tok, etext, elen, 0, &eids, &en), EA_OK);
    free(etext);
    ea_tokenizer_free(tok);
    ea_eval_result lr;
    assert_int_equal(ea_eval_result_init(&lr, lc), EA_OK);
    ea_eval_params lp = {100, EA_INJECT_ALL, NULL, NULL};
    assert_int_equal(ea_compressor_evaluate(model, lc, eids, 200, &lp, &lr), EA_OK);
    free(eids);
    const cJSON *sites = cJSON_GetObjectItem(j, "sites"), *s;
    assert_int_equal(cJSON_GetArraySize(sites), (cfg->n_layer + 1) + 2 * cfg->n_layer);
    assert_int_equal(cJSON_GetArraySize(sites), lr.n_sites);
    int si = 0;
    cJSON_ArrayForEach(s, sites) {
        assert_true(cJSON_IsString(cJSON_GetObjectItem(s, "site")));
        const ea_projector *pj = ea_compressor_get(lc, si);
        double d = jnum(s, "d"), k = jnum(s, "k"), e = jnum(s, "recon_error"), cs = jnum(s, "cosine");
        assert_true(jnum(s, "layer") == ea_projector_site(pj).layer);
        assert_true(d == cfg->n_embd && k == ea_projector_rank(pj));
        assert_true(fabs(jnum(s, "ratio") - d / k) < 1e-12);
        assert_true(fabs(e - ea_recon_stats_rel_error(&lr.site[si])) < 1e-9 * e + 1e-12);
        assert_true(fabs(cs - ea_recon_stats_cosine(&lr.site[si])) < 1e-9);
        si++;
    }
    const cJSON *q = cJSON_GetObjectItem(j, "quality");
    double pf = jnum(q, "ppl_full"), pc = jnum(q, "ppl_compressed"), kl = jnum(q, "kl"), t1 = jnum(q, "top1");
    printf("CLI: ppl %.3f -> %.3f, KL %.4f, top1 %.3f; library: ppl %.3f -> %.3f, KL %.4f, top1 %.3f\n", pf, pc, kl, t1,
           ea_eval_ppl_full(&lr), ea_eval_ppl_compressed(&lr), ea_eval_kl(&lr), ea_eval_top1(&lr));
    assert_true(fabs(pf - ea_eval_ppl_full(&lr)) < 1e-9 * pf);
    assert_true(fabs(pc - ea_eval_ppl_compressed(&lr)) < 1e-9 * pc);
    assert_true(fabs(kl - ea_eval_kl(&lr)) < 1e-9 * kl + 1e-12);
    assert_true(fabs(t1 - ea_eval_top1(&lr)) < 1e-12);
    assert_true(kl > 0 && pc > pf); /* variance 0.9 at every layer is a real loss */
    ea_eval_result_free(&lr);
    ea_compressor_free(lc);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "texts")), 2);
    cJSON_Delete(j);
    free(out);
    free(err);

    /* Human-readable output has the table of texts. */
    const char *human[] = {"compress", "--compressor", cpath, "--prompt", "Hello world, this is a test.", "--inject", "1", NULL};
    assert_int_equal(test_run_cli(&out, &err, human), 0);
    assert_non_null(strstr(out, "recon error"));
    assert_non_null(strstr(out, "Hello world, this is a test."));
    free(out);
    free(err);

    /* Failures: exit non-zero with a message naming the problem, and no output file. */
    char *nofile = path_in(dir, "nope.safetensors"), *nodir = path_in(dir, "nodir/c.safetensors");
    const char *missing[] = {"compress", "--compressor", nofile, "--prompt", "x y", "--json", NULL};
    rc = test_run_cli(&out, &err, missing);
    printf("missing compressor: rc %d, %s", rc, err);
    assert_true(rc != 0 && rc != -1);
    assert_non_null(strstr(err, nofile));
    free(out);
    free(err);
    const char *both[] = {"fit", "--rank", "4", "--variance", "0.9", "-o", nofile, NULL};
    rc = test_run_cli(&out, &err, both);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(err, "exactly one"));
    free(out);
    free(err);
    const char *badtext[] = {"fit", "--rank", "4", "--text", "/nonexistent/t.txt", "-o", nofile, NULL};
    rc = test_run_cli(&out, &err, badtext);
    printf("missing text: rc %d, %s", rc, err);
    assert_true(rc != 0 && rc != -1);
    assert_non_null(strstr(err, "/nonexistent/t.txt"));
    free(out);
    free(err);
    const char *baddir[] = {"fit", "--rank", "4", "--max-tokens", "50", "-o", nodir, NULL};
    rc = test_run_cli(&out, &err, baddir);
    printf("unwritable output: rc %d, %s", rc, err);
    assert_true(rc != 0 && rc != -1);
    free(out);
    free(err);
    struct stat sb;
    assert_int_not_equal(stat(nofile, &sb), 0);

    /* A compressor for another model (same shape, other fingerprint) is refused by name. */
    ea_compressor *c;
    assert_int_equal(ea_compressor_load(cpath, &c), EA_OK);
    ea_compressor_info in = *ea_compressor_get_info(c);
    in.fingerprint = "0000000000000000";
    ea_projector **proj = malloc(ea_compressor_count(c) * sizeof *proj);
    for (int i = 0; i < ea_compressor_count(c); i++) {
        const ea_projector *p = ea_compressor_get(c, i);
        assert_int_equal(ea_projector_from_parts("copy", ea_projector_site(p), ea_projector_dim(p), ea_projector_rank(p),
                                                 ea_projector_mean(p), ea_projector_basis(p),
                                                 ea_projector_eigenvalues(p), 1e-4, &proj[i]),
                         EA_OK);
    }
    ea_compressor *other;
    assert_int_equal(ea_compressor_create(&in, proj, ea_compressor_count(c), &other), EA_OK);
    free(proj);
    char *opath = path_in(dir, "other.safetensors");
    assert_int_equal(ea_compressor_save(other, opath), EA_OK);
    const char *refuse[] = {"compress", "--compressor", opath, "--prompt", "x y", "--json", NULL};
    rc = test_run_cli(&out, &err, refuse);
    printf("other model: rc %d, %s", rc, err);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(err, opath));
    assert_non_null(strstr(err, "fingerprint"));
    free(out);
    free(err);
    ea_compressor_free(other);
    ea_compressor_free(c);
    free(opath);
    free(nofile);
    free(nodir);
    test_rmdir(dir);
    free(dir);
    free(cpath);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recon_stats_closed_form),
        cmocka_unit_test(test_orthonormal_basis),
        cmocka_unit_test(test_variance_rule),
        cmocka_unit_test(test_exact_reconstruction_full_rank),
        cmocka_unit_test(test_planted_subspace),
        cmocka_unit_test(test_file_round_trip),
        cmocka_unit_test(test_other_model_refused),
        cmocka_unit_test(test_corrupt_files),
        cmocka_unit_test(test_kv_stats),
        cmocka_unit_test(test_fit_full_rank_on_model),
        cmocka_unit_test(test_fit_low_rank_on_model),
        cmocka_unit_test(test_cli_fit_compress),
    };
    return TEST_RUN(tests, load_model, free_model);
}
