/* Spectral analysis: streaming covariance, eigh, spectrum statistics and the null reference,
 * checked against closed forms, LAPACK and two-pass long-double references. */
#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static void fill_gauss(ea_rng *r, double *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = ea_rng_normal(r);
}

/* Reference covariance: two passes (mean, then centred products) in long double. */
static void ref_cov(const double *x, int n, int d, double *cov, double *mean) {
    long double *mu = calloc((size_t)d, sizeof *mu);
    for (int r = 0; r < n; r++)
        for (int j = 0; j < d; j++) mu[j] += x[(size_t)r * d + j];
    for (int j = 0; j < d; j++) mu[j] /= n;
    for (int i = 0; i < d; i++)
        for (int j = i; j < d; j++) {
            long double s = 0;
            for (int r = 0; r < n; r++)
                s += ((long double)x[(size_t)r * d + i] - mu[i]) * ((long double)x[(size_t)r * d + j] - mu[j]);
            cov[(size_t)i * d + j] = cov[(size_t)j * d + i] = (double)(s / (n - 1));
        }
    if (mean)
        for (int j = 0; j < d; j++) mean[j] = (double)mu[j];
    free(mu);
}

static double max_rel_diff(const double *a, const double *ref, size_t n) {
    double m = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - ref[i]);
        if (!(d <= m)) m = d;
    }
    return scale > 0 ? m / scale : m;
}

/* Random d × d orthogonal matrix (row-major) from the QR of a Gaussian matrix. */
static void random_orthogonal(ea_rng *r, int d, double *q) {
    double *tau = malloc((size_t)d * sizeof(double));
    fill_gauss(r, q, (size_t)d * d);
    assert_int_equal(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, d, d, q, d, tau), 0);
    assert_int_equal(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, d, d, d, q, d, tau), 0);
    free(tau);
}

/* ---- ea_eigh against known matrices ---- */

static void test_eigh_tridiagonal(void **state) {
    (void)state;
    /* tridiag(-1, 2, -1): λ_k = 2 − 2cos(kπ/(d+1)), v_k[j] ∝ sin(jkπ/(d+1)) (closed form). */
    int d = 50;
    double *a = calloc((size_t)d * d, sizeof(double)), *ev = malloc(d * sizeof(double)),
           *V = malloc((size_t)d * d * sizeof(double));
    for (int i = 0; i < d; i++) {
        a[i * d + i] = 2;
        if (i + 1 < d) a[i * d + i + 1] = a[(i + 1) * d + i] = -1;
    }
    assert_int_equal(ea_eigh(a, d, ev, V), EA_OK);
    double max_val = 0, max_vec = 0;
    for (int k = 0; k < d; k++) {
        int kk = d - k; /* descending: the largest is k = d in the closed form */
        double want = 2 - 2 * cos(kk * M_PI / (d + 1));
        max_val = fmax(max_val, fabs(ev[k] - want));
        if (k) assert_true(ev[k] <= ev[k - 1]);
        /* Compare the eigenvector up to sign with the normalized closed form. */
        double norm = sqrt((d + 1) / 2.0), dot = 0;
        for (int j = 0; j < d; j++) dot += V[j * d + k] * sin((j + 1) * kk * M_PI / (d + 1)) / norm;
        double sgn = dot < 0 ? -1 : 1;
        for (int j = 0; j < d; j++)
            max_vec = fmax(max_vec, fabs(sgn * V[j * d + k] - sin((j + 1) * kk * M_PI / (d + 1)) / norm));
    }
    printf("eigh tridiagonal d=%d: max |λ - closed form| = %.3g, max |v - closed form| = %.3g\n", d, max_val,
           max_vec);
    assert_true(max_val < 1e-13);
    assert_true(max_vec < 1e-11);
    /* Values-only call gives the same values. */
    double *ev2 = malloc(d * sizeof(double));
    assert_int_equal(ea_eigh(a, d, ev2, NULL), EA_OK);
    printf("eigh values-only vs with vectors: max diff %.3g\n", max_rel_diff(ev2, ev, d));
    assert_true(max_rel_diff(ev2, ev, d) < 1e-13);
    free(a); free(ev); free(ev2); free(V);
}

static void test_eigh_reconstructs(void **state) {
    (void)state;
    /* A = Q diag(λ) Qᵀ with known λ (some zero): eigh returns λ and A·v = λ·v. */
    int d = 40;
    ea_rng r;
    ea_rng_seed(&r, 7);
    double *Q = malloc((size_t)d * d * sizeof(double)), *A = calloc((size_t)d * d, sizeof(double)),
           *lam = malloc(d * sizeof(double)), *ev = malloc(d * sizeof(double)),
           *V = malloc((size_t)d * d * sizeof(double));
    random_orthogonal(&r, d, Q);
    for (int i = 0; i < d; i++) lam[i] = i < 30 ? 100.0 * pow(0.8, i) : 0.0; /* rank 30 */
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int k = 0; k < d; k++) s += Q[i * d + k] * lam[k] * Q[j * d + k];
            A[i * d + j] = s;
        }
    assert_int_equal(ea_eigh(A, d, ev, V), EA_OK);
    double dv = 0, res = 0, orth = 0, neg = 0;
    for (int k = 0; k < d; k++) {
        dv = fmax(dv, fabs(ev[k] - lam[k]));
        neg = fmin(neg, ev[k]);
        for (int i = 0; i < d; i++) {
            double s = 0;
            for (int j = 0; j < d; j++) s += A[i * d + j] * V[j * d + k];
            res = fmax(res, fabs(s - ev[k] * V[i * d + k]));
        }
        for (int l = 0; l < d; l++) {
            double s = 0;
            for (int i = 0; i < d; i++) s += V[i * d + k] * V[i * d + l];
            orth = fmax(orth, fabs(s - (k == l)));
        }
    }
    printf("eigh Q·diag·Qᵀ d=%d: max |λ - λ_true| = %.3g, max |Av - λv| = %.3g, max |VᵀV - I| = %.3g, min λ = %g\n",
           d, dv, res, orth, neg);
    assert_true(dv < 1e-11);
    assert_true(res < 1e-11);
    assert_true(orth < 1e-12);
    assert_true(neg >= 0); /* rounding negatives of the zero eigenvalues are clamped */
    /* Non-finite input is refused. */
    A[5] = NAN;
    assert_int_equal(ea_eigh(A, d, ev, NULL), EA_ERR_NUMERIC);
    printf("NaN matrix: %s\n", ea_last_error());
    free(Q); free(A); free(lam); free(ev); free(V);
}

/* ---- spectrum statistics ---- */

static void test_spectrum_stats(void **state) {
    (void)state;
    double ev[4] = {4, 3, 2, 1};
    /* Df = 10² / 30, C(k) = partial sums / 10. */
    assert_true(fabs(ea_spectrum_df(ev, 4) - 100.0 / 30.0) < 1e-15);
    assert_true(fabs(ea_spectrum_cumvar(ev, 4, 1) - 0.4) < 1e-15);
    assert_true(fabs(ea_spectrum_cumvar(ev, 4, 2) - 0.7) < 1e-15);
    assert_true(ea_spectrum_cumvar(ev, 4, 4) == 1.0);
    assert_true(ea_spectrum_cumvar(ev, 4, 9) == 1.0);
    assert_true(ea_spectrum_cumvar(ev, 4, 0) == 0.0);
    assert_int_equal(ea_spectrum_k_for(ev, 4, 0.4), 1);
    assert_int_equal(ea_spectrum_k_for(ev, 4, 0.41), 2);
    assert_int_equal(ea_spectrum_k_for(ev, 4, 0.95), 4);
    assert_int_equal(ea_spectrum_k_for(ev, 4, 1.0), 4);
    /* Flat spectrum: Df = d, k_for(t) = ceil(t d). */
    double flat[100];
    for (int i = 0; i < 100; i++) flat[i] = 2.5;
    assert_true(fabs(ea_spectrum_df(flat, 100) - 100) < 1e-12);
    assert_int_equal(ea_spectrum_k_for(flat, 100, 0.95), 95);
    assert_int_equal(ea_spectrum_k_for(flat, 100, 0.99), 99);
    /* Huge values do not overflow Σλ². */
    double big[3] = {1e200, 1e200, 1e200};
    assert_true(fabs(ea_spectrum_df(big, 3) - 3) < 1e-12);
    double zero[3] = {0, 0, 0};
    assert_true(ea_spectrum_df(zero, 3) == 0);
}

/* ---- covariance accumulation ---- */

static void test_cov_streaming_matches_two_pass(void **state) {
    (void)state;
    /* Offset 1e3 with unit scale: a naive Σxxᵀ − n·μμᵀ would lose ~6 digits here. */
    int n = 3001, d = 37;
    ea_rng r;
    ea_rng_seed(&r, 11);
    double *x = malloc((size_t)n * d * sizeof(double)), *ref = malloc((size_t)d * d * sizeof(double)),
           *got = malloc((size_t)d * d * sizeof(double)), *mref = malloc(d * sizeof(double));
    fill_gauss(&r, x, (size_t)n * d);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            double *row = x + (size_t)i * d;
            row[j] = 1000.0 + (1 + j % 5) * row[j] + 0.3 * row[(j + 1) % d]; /* correlated, offset */
        }
    ref_cov(x, n, d, ref, mref);

    /* One shot. */
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    assert_int_equal(ea_cov_add_f64(c, x, n, d), EA_OK);
    assert_int_equal(ea_cov_matrix(c, 0, got), EA_OK);
    double e_one = max_rel_diff(got, ref, (size_t)d * d), e_mean = max_rel_diff(ea_cov_mean(c), mref, d);
    assert_true(ea_cov_count(c) == n);

    /* Irregular chunks (1 row, batch boundaries crossed mid-call). */
    ea_cov_reset(c);
    int chunks[] = {1, 7, 300, 255, 1, 1000, 2};
    int at = 0, ci = 0;
    while (at < n) {
        int k = chunks[ci++ % 7];
        if (k > n - at) k = n - at;
        assert_int_equal(ea_cov_add_f64(c, x + (size_t)at * d, k, d), EA_OK);
        at += k;
    }
    assert_int_equal(ea_cov_matrix(c, 0, got), EA_OK);
    double e_stream = max_rel_diff(got, ref, (size_t)d * d);

    /* Three accumulators over disjoint parts, merged in a different order. */
    ea_cov *p[3];
    int cut[4] = {0, 5, 1800, n};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ea_cov_init(&p[i], d), EA_OK);
        assert_int_equal(ea_cov_add_f64(p[i], x + (size_t)cut[i] * d, cut[i + 1] - cut[i], d), EA_OK);
    }
    assert_int_equal(ea_cov_merge(p[2], p[0]), EA_OK);
    assert_int_equal(ea_cov_merge(p[2], p[1]), EA_OK);
    assert_int_equal(ea_cov_matrix(p[2], 0, got), EA_OK);
    double e_merge = max_rel_diff(got, ref, (size_t)d * d);
    double e_merge_mean = max_rel_diff(ea_cov_mean(p[2]), mref, d);
    assert_true(ea_cov_count(p[2]) == n);
    /* Merging an empty accumulator changes nothing; merging into an empty one copies. */
    ea_cov *empty;
    assert_int_equal(ea_cov_init(&empty, d), EA_OK);
    assert_int_equal(ea_cov_merge(p[2], empty), EA_OK);
    assert_int_equal(ea_cov_merge(empty, p[2]), EA_OK);
    assert_int_equal(ea_cov_matrix(empty, 0, got), EA_OK);
    double e_copy = max_rel_diff(got, ref, (size_t)d * d);

    printf("cov vs two-pass long double (n=%d, d=%d, offset 1e3): one-shot %.3g, streaming %.3g, merged %.3g, "
           "merge-into-empty %.3g (max rel); mean %.3g / merged %.3g\n",
           n, d, e_one, e_stream, e_merge, e_copy, e_mean, e_merge_mean);
    assert_true(e_one < 1e-10);
    assert_true(e_stream < 1e-10);
    assert_true(e_merge < 1e-10);
    assert_true(e_copy < 1e-10);
    assert_true(e_mean < 1e-12 && e_merge_mean < 1e-12);
    assert_int_equal(ea_cov_merge(p[2], p[2]), EA_ERR_ARG);
    ea_cov *other;
    assert_int_equal(ea_cov_init(&other, d + 1), EA_OK);
    assert_int_equal(ea_cov_merge(p[2], other), EA_ERR_MISMATCH);
    ea_cov_free(other);
    for (int i = 0; i < 3; i++) ea_cov_free(p[i]);
    ea_cov_free(empty);
    ea_cov_free(c);
    free(x); free(ref); free(got); free(mref);
}

static void test_cov_float_input_and_stride(void **state) {
    (void)state;
    /* float rows with a stride (a slice of wider rows, as per-head q/k/v columns are). */
    int n = 700, d = 24, ld = 80, off = 16;
    ea_rng r;
    ea_rng_seed(&r, 5);
    float *xf = malloc((size_t)n * ld * sizeof(float));
    double *x = malloc((size_t)n * d * sizeof(double)), *ref = malloc((size_t)d * d * sizeof(double)),
           *got = malloc((size_t)d * d * sizeof(double));
    for (size_t i = 0; i < (size_t)n * ld; i++) xf[i] = (float)(3.0 + ea_rng_normal(&r));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) x[(size_t)i * d + j] = xf[(size_t)i * ld + off + j];
    ref_cov(x, n, d, ref, NULL);
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    assert_int_equal(ea_cov_add(c, xf + off, n, ld), EA_OK);
    assert_int_equal(ea_cov_matrix(c, 0, got), EA_OK);
    double e = max_rel_diff(got, ref, (size_t)d * d);
    printf("float input, stride %d: max rel diff vs two-pass %.3g\n", ld, e);
    assert_true(e < 1e-10);
    assert_int_equal(ea_cov_add(c, xf, n, d - 1), EA_ERR_ARG);
    ea_cov_free(c);
    free(xf); free(x); free(ref); free(got);
}

static void test_cov_rejects_nonfinite(void **state) {
    (void)state;
    int d = 8;
    float x[3 * 8];
    for (int i = 0; i < 24; i++) x[i] = (float)i;
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    assert_int_equal(ea_cov_add(c, x, 3, d), EA_OK);
    x[2 * 8 + 5] = NAN;
    assert_int_equal(ea_cov_add(c, x, 3, d), EA_ERR_NUMERIC);
    printf("NaN row: %s\n", ea_last_error());
    assert_non_null(strstr(ea_last_error(), "NaN"));
    x[2 * 8 + 5] = INFINITY;
    assert_int_equal(ea_cov_add(c, x, 3, d), EA_ERR_NUMERIC);
    assert_non_null(strstr(ea_last_error(), "Inf"));
    double xd[8] = {0, 1, 2, 3, -INFINITY, 5, 6, 7};
    assert_int_equal(ea_cov_add_f64(c, xd, 1, d), EA_ERR_NUMERIC);
    assert_true(ea_cov_count(c) == 3); /* rejected calls add nothing */
    ea_cov_free(c);
}

static void test_cov_standardize(void **state) {
    (void)state;
    /* Correlation = D^-1/2 C D^-1/2; a constant dimension gets 1 on the diagonal, 0 elsewhere. */
    int n = 500, d = 6;
    ea_rng r;
    ea_rng_seed(&r, 3);
    double *x = malloc((size_t)n * d * sizeof(double)), ref[36], got[36];
    fill_gauss(&r, x, (size_t)n * d);
    for (int i = 0; i < n; i++) {
        x[i * d + 1] = 50 * x[i * d + 1] + 3 * x[i * d + 0];
        x[i * d + 4] = 7.0; /* constant */
    }
    ref_cov(x, n, d, ref, NULL);
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    assert_int_equal(ea_cov_add_f64(c, x, n, d), EA_OK);
    assert_int_equal(ea_cov_matrix(c, 1, got), EA_OK);
    double e = 0;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double want = (i == 4 || j == 4) ? (i == j) : ref[i * d + j] / sqrt(ref[i * d + i] * ref[j * d + j]);
            e = fmax(e, fabs(got[i * d + j] - want));
        }
    printf("correlation matrix: max |diff| vs reference %.3g\n", e);
    assert_true(e < 1e-12);
    ea_spectrum_summary s;
    assert_int_equal(ea_spectrum_summarize(c, 0, &s), EA_OK);
    /* Top dimension by raw variance is the scaled one, with its share of the trace. */
    double tr = 0;
    for (int i = 0; i < d; i++) tr += ref[i * d + i];
    assert_int_equal(s.top_dims[0], 1);
    assert_true(fabs(s.top_share[0] - ref[1 * d + 1] / tr) < 1e-12);
    assert_int_equal(s.n_top, d);
    ea_spectrum_summary_free(&s);
    assert_int_equal(ea_spectrum_summarize(c, 1, &s), EA_OK);
    double sum = 0;
    for (int i = 0; i < d; i++) sum += s.eigenvalues[i];
    printf("correlation spectrum trace %.15g (d = %d)\n", sum, d);
    assert_true(fabs(sum - d) < 1e-12);
    ea_spectrum_summary_free(&s);
    ea_cov_free(c);
    free(x);
}

/* ---- spectra of constructed data ---- */

static void test_isotropic_df(void **state) {
    (void)state;
    /* Isotropic Gaussian, n = 20000, d = 64. Wishart: E[tr S]²/E[tr S²] = m·d/(m+d+1) = 63.79
     * (m = n − 1). Writing S = I + E/√m, the first-order fluctuations of (tr S)² and tr S² cancel
     * in Df, leaving a relative spread of order 1/m (measured ≈ 1.8/m at n = 300..400, see the
     * null test), here ≈ 1e-4; a 0.1% window is ~10 of those. The
     * gap to d itself is the finite-sample bias (d+1)/m ≈ 0.3%, so Df must be within 1% of d. */
    int n = 20000, d = 64;
    ea_rng r;
    ea_rng_seed(&r, 2024);
    double *row = malloc(d * sizeof(double));
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    for (int i = 0; i < n; i++) {
        fill_gauss(&r, row, d);
        assert_int_equal(ea_cov_add_f64(c, row, 1, d), EA_OK);
    }
    ea_spectrum_summary s;
    assert_int_equal(ea_spectrum_summarize(c, 0, &s), EA_OK);
    double null_df;
    int null_k95;
    assert_int_equal(ea_spectrum_null(n, d, 0, &null_df, &null_k95), EA_OK);
    printf("isotropic n=%d d=%d: Df = %.3f (d = %d, Wishart E = %.3f), k95 = %d (null %d), C(1) = %.4f\n", n, d,
           s.df, d, null_df, s.k95, null_k95, ea_spectrum_cumvar(s.eigenvalues, d, 1));
    assert_true(fabs(s.df - null_df) < 1e-3 * null_df);
    assert_true(fabs(s.df - d) < 0.01 * d);
    assert_true(abs(s.k95 - null_k95) <= 1);
    ea_spectrum_summary_free(&s);
    ea_cov_free(c);
    free(row);
}

static void test_rank_one(void **state) {
    (void)state;
    /* x_i = μ + a_i·u: the covariance is var(a)·uuᵀ, so Df = 1 and C(1) = 1 exactly. */
    int n = 1000, d = 48;
    ea_rng r;
    ea_rng_seed(&r, 9);
    double *u = malloc(d * sizeof(double)), *x = malloc((size_t)n * d * sizeof(double));
    fill_gauss(&r, u, d);
    for (int i = 0; i < n; i++) {
        double a = 5 * ea_rng_normal(&r);
        for (int j = 0; j < d; j++) x[(size_t)i * d + j] = 2.0 + a * u[j];
    }
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    assert_int_equal(ea_cov_add_f64(c, x, n, d), EA_OK);
    ea_spectrum_summary s;
    assert_int_equal(ea_spectrum_summarize(c, 0, &s), EA_OK);
    double c1 = ea_spectrum_cumvar(s.eigenvalues, d, 1);
    printf("rank-1: Df = %.15f, C(1) = %.15f, λ2/λ1 = %.3g, k90/95/99 = %d/%d/%d\n", s.df, c1,
           s.eigenvalues[1] / s.eigenvalues[0], s.k90, s.k95, s.k99);
    assert_true(fabs(s.df - 1) < 1e-9);
    assert_true(fabs(c1 - 1) < 1e-12);
    assert_int_equal(s.k90, 1);
    assert_int_equal(s.k95, 1);
    assert_int_equal(s.k99, 1);
    ea_spectrum_summary_free(&s);
    ea_cov_free(c);
    free(u); free(x);
}

static void test_prescribed_spectrum(void **state) {
    (void)state;
    /* X = sqrt(n−1)·Z·diag(√λ)·Qᵀ with Z centred and orthonormal (QR of centred Gaussians) has
     * sample covariance exactly Q·diag(λ)·Qᵀ, so the spectrum must come back to rounding. */
    int n = 2000, d = 32;
    ea_rng r;
    ea_rng_seed(&r, 77);
    double *Z = malloc((size_t)n * d * sizeof(double)), *Q = malloc((size_t)d * d * sizeof(double)),
           *X = malloc((size_t)n * d * sizeof(double)), *tau = malloc(d * sizeof(double)), lam[32];
    fill_gauss(&r, Z, (size_t)n * d);
    for (int j = 0; j < d; j++) {
        double m = 0;
        for (int i = 0; i < n; i++) m += Z[(size_t)i * d + j];
        m /= n;
        for (int i = 0; i < n; i++) Z[(size_t)i * d + j] -= m;
    }
    assert_int_equal(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, n, d, Z, d, tau), 0);
    assert_int_equal(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, n, d, d, Z, d, tau), 0);
    random_orthogonal(&r, d, Q);
    for (int k = 0; k < d; k++) lam[k] = k == 0 ? 400.0 : 10.0 * pow(0.7, k); /* an outlier and a decay */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int k = 0; k < d; k++) s += Z[(size_t)i * d + k] * sqrt(lam[k]) * Q[j * d + k];
            X[(size_t)i * d + j] = sqrt(n - 1.0) * s - 4.0; /* with a mean offset */
        }
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    assert_int_equal(ea_cov_add_f64(c, X, n, d), EA_OK);
    ea_spectrum_summary s;
    assert_int_equal(ea_spectrum_summarize(c, 0, &s), EA_OK);
    double e = max_rel_diff(s.eigenvalues, lam, d);
    double df = ea_spectrum_df(lam, d);
    printf("prescribed spectrum d=%d: max |λ - λ_true| / λ_max = %.3g, Df %.12f (true %.12f), k95 %d (true %d)\n",
           d, e, s.df, df, s.k95, ea_spectrum_k_for(lam, d, 0.95));
    assert_true(e < 1e-12);
    assert_true(fabs(s.df - df) < 1e-10 * df);
    assert_int_equal(s.k95, ea_spectrum_k_for(lam, d, 0.95));
    /* Eigenvectors recovered too (up to sign): |⟨v_k, q_k⟩| = 1. */
    double *a = malloc((size_t)d * d * sizeof(double)), *V = malloc((size_t)d * d * sizeof(double)), ev[32], worst = 0;
    assert_int_equal(ea_cov_matrix(c, 0, a), EA_OK);
    assert_int_equal(ea_eigh(a, d, ev, V), EA_OK);
    for (int k = 0; k < d; k++) {
        double dot = 0;
        for (int j = 0; j < d; j++) dot += V[j * d + k] * Q[j * d + k];
        worst = fmax(worst, fabs(fabs(dot) - 1));
    }
    printf("prescribed spectrum: eigenvectors max ||<v,q>| - 1| = %.3g\n", worst);
    assert_true(worst < 1e-9);
    ea_spectrum_summary_free(&s);
    ea_cov_free(c);
    free(Z); free(Q); free(X); free(tau); free(a); free(V);
}

/* A covariance accumulator whose sample covariance is exactly Q·diag(λ)·Qᵀ (the construction of
 * test_prescribed_spectrum: X = sqrt(n−1)·Z·diag(√λ)·Qᵀ, Z centred with orthonormal columns). */
static ea_cov *prescribed_cov(const double *lam, int d, int n, uint64_t seed) {
    ea_rng r;
    ea_rng_seed(&r, seed);
    double *Z = malloc((size_t)n * d * sizeof(double)), *Q = malloc((size_t)d * d * sizeof(double)),
           *X = malloc((size_t)n * d * sizeof(double)), *tau = malloc(d * sizeof(double));
    fill_gauss(&r, Z, (size_t)n * d);
    for (int j = 0; j < d; j++) {
        double m = 0;
        for (int i = 0; i < n; i++) m += Z[(size_t)i * d + j];
        for (int i = 0; i < n; i++) Z[(size_t)i * d + j] -= m / n;
    }
    assert_int_equal(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, n, d, Z, d, tau), 0);
    assert_int_equal(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, n, d, d, Z, d, tau), 0);
    random_orthogonal(&r, d, Q);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int k = 0; k < d; k++) s += Z[(size_t)i * d + k] * sqrt(lam[k]) * Q[j * d + k];
            X[(size_t)i * d + j] = sqrt(n - 1.0) * s + 1.5;
        }
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    assert_int_equal(ea_cov_add_f64(c, X, n, d), EA_OK);
    free(Z); free(Q); free(X); free(tau);
    return c;
}

/* k90, k95 and k99 of ea_spectrum_summarize on spectra where the three differ, each threshold
 * at least 0.08% away from a partial sum (checked below) so rounding cannot move it. Spectrum A sums to 100 with
 * partial sums 40 60 72 80 86 91 93.5 96 97.5 98.6 99.4 100: k90 = 6, k95 = 8, k99 = 11 (read
 * off by hand). Spectrum B is geometric, λ_i = 0.8^i over 40 dims: C(k) = (1 − 0.8^k)/(1 − 0.8^40),
 * so k_t = ceil(log(1 − t(1 − 0.8^40)) / log 0.8) = 11, 14, 21 (C(10) = 0.8927, C(11) = 0.9142,
 * C(13) = 0.9452, C(14) = 0.9561, C(20) = 0.9886, C(21) = 0.9909). */
static void test_summary_k_thresholds(void **state) {
    (void)state;
    double a[12] = {40, 20, 12, 8, 6, 5, 2.5, 2.5, 1.5, 1.1, 0.8, 0.6}, b[40];
    for (int i = 0; i < 40; i++) b[i] = pow(0.8, i);
    struct { const double *lam; int d, k90, k95, k99; } cases[] = {{a, 12, 6, 8, 11}, {b, 40, 11, 14, 21}};
    for (int t = 0; t < 2; t++) {
        int d = cases[t].d;
        /* the hand-derived thresholds, re-derived here in long double with their margins */
        long double total = 0, acc = 0;
        for (int i = 0; i < d; i++) total += cases[t].lam[i];
        int want[3] = {cases[t].k90, cases[t].k95, cases[t].k99};
        const long double target[3] = {0.90L, 0.95L, 0.99L};
        for (int k = 1; k <= d; k++) {
            acc += cases[t].lam[k - 1];
            for (int q = 0; q < 3; q++) {
                if (k < want[q]) assert_true(acc / total < target[q] - 0.001L);
                if (k == want[q]) assert_true(acc / total >= target[q] + 0.0008L);
            }
        }
        ea_cov *c = prescribed_cov(cases[t].lam, d, 500, 91 + t);
        ea_spectrum_summary s;
        assert_int_equal(ea_spectrum_summarize(c, 0, &s), EA_OK);
        long double sq = 0;
        for (int i = 0; i < d; i++) sq += (long double)cases[t].lam[i] * cases[t].lam[i];
        printf("spectrum %c (d=%d): k90 %d k95 %d k99 %d (true %d %d %d), Df %.10f (true %.10Lf), trace %.10f\n", 'A' + t,
               d, s.k90, s.k95, s.k99, want[0], want[1], want[2], s.df, total * total / sq, s.trace);
        assert_int_equal(s.k90, want[0]);
        assert_int_equal(s.k95, want[1]);
        assert_int_equal(s.k99, want[2]);
        assert_true(fabsl(s.df - total * total / sq) < 1e-9L * s.df);
        assert_true(fabsl(s.trace - total) < 1e-9L * total);
        for (int i = 0; i < d; i++) assert_true(fabs(s.eigenvalues[i] - cases[t].lam[i]) < 1e-10 * cases[t].lam[0]);
        ea_spectrum_summary_free(&s);
        ea_cov_free(c);
    }
}

/* ---- thread independence ---- */

static void test_thread_independence(void **state) {
    (void)state;
    int n = 3000, d = 256;
    ea_rng r;
    ea_rng_seed(&r, 42);
    float *x = malloc((size_t)n * d * sizeof(float));
    for (size_t i = 0; i < (size_t)n * d; i++) x[i] = (float)(ea_rng_normal(&r) * (1 + i % 7));
    double *cov[3];
    double df[3];
    int k95[3], threads[3] = {1, 2, 4};
    int saved_blas = openblas_get_num_threads(), saved_omp = omp_get_max_threads();
    for (int t = 0; t < 3; t++) {
        openblas_set_num_threads(threads[t]);
        omp_set_num_threads(threads[t]);
        ea_cov *c;
        assert_int_equal(ea_cov_init(&c, d), EA_OK);
        assert_int_equal(ea_cov_add(c, x, n, d), EA_OK);
        cov[t] = malloc((size_t)d * d * sizeof(double));
        assert_int_equal(ea_cov_matrix(c, 0, cov[t]), EA_OK);
        ea_spectrum_summary s;
        assert_int_equal(ea_spectrum_summarize(c, 0, &s), EA_OK);
        df[t] = s.df;
        k95[t] = s.k95;
        ea_spectrum_summary_free(&s);
        ea_cov_free(c);
    }
    openblas_set_num_threads(saved_blas);
    omp_set_num_threads(saved_omp);
    double e2 = max_rel_diff(cov[1], cov[0], (size_t)d * d), e4 = max_rel_diff(cov[2], cov[0], (size_t)d * d);
    printf("threads 1/2/4: covariance max rel diff %.3g / %.3g; Df %.12f %.12f %.12f; k95 %d %d %d\n", e2, e4,
           df[0], df[1], df[2], k95[0], k95[1], k95[2]);
    /* OpenBLAS partitions dsyrk's output, not the sum over rows, so results agree to rounding
     * (in practice bit for bit). */
    assert_true(e2 < 1e-14 && e4 < 1e-14);
    assert_true(fabs(df[1] - df[0]) < 1e-10 * df[0] && fabs(df[2] - df[0]) < 1e-10 * df[0]);
    assert_int_equal(k95[0], k95[1]);
    assert_int_equal(k95[0], k95[2]);
    for (int t = 0; t < 3; t++) free(cov[t]);
    free(x);
}

/* ---- null reference ---- */

static void sample_null(int n, int d, uint64_t seed, double *df, int *k95) {
    ea_rng r;
    ea_rng_seed(&r, seed);
    double *x = malloc((size_t)n * d * sizeof(double));
    fill_gauss(&r, x, (size_t)n * d);
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    assert_int_equal(ea_cov_add_f64(c, x, n, d), EA_OK);
    ea_spectrum_summary s;
    assert_int_equal(ea_spectrum_summarize(c, 0, &s), EA_OK);
    *df = s.df;
    *k95 = s.k95;
    ea_spectrum_summary_free(&s);
    ea_cov_free(c);
    free(x);
}

static void test_null_matches_samples(void **state) {
    (void)state;
    /* Closed forms vs the mean of 16 Gaussian samples of the same shape, including n < d (rank
     * deficient) and n − 1 = d (the MP hard edge). */
    int shapes[][2] = {{4000, 64}, {400, 64}, {65, 64}, {40, 64}, {1000, 128}, {300, 32}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int n = shapes[si][0], d = shapes[si][1];
        double df_null;
        int k_null;
        assert_int_equal(ea_spectrum_null(n, d, 1, &df_null, &k_null), EA_OK);
        double df_mean = 0, k_mean = 0;
        for (int rep = 0; rep < 16; rep++) {
            double df;
            int k;
            sample_null(n, d, 100 + rep, &df, &k);
            df_mean += df / 16;
            k_mean += k / 16.0;
        }
        printf("null n=%5d d=%3d: Df closed %.3f vs sampled %.3f (rel %.2g); k95 closed %d vs sampled %.2f\n", n, d,
               df_null, df_mean, fabs(df_null - df_mean) / df_mean, k_null, k_mean);
        /* Df: over 200 samples per shape (measured once) the closed form is within 0.1% of the
         * mean, and one sample's relative sd is 0.45% (n=400) to 1.9% (n=40), so the mean of 16
         * has sd <= 0.5% and 2% is a 4-sd bound. k95: MP quantiles land within about one
         * eigenvalue of the sampled mean at these sizes. */
        assert_true(fabs(df_null - df_mean) < 0.02 * df_mean);
        assert_true(fabs(k_null - k_mean) <= 1.5 + 0.02 * d);
    }
    /* The quantile spectrum: trace d, descending, and n − 1 non-zero values when n − 1 < d. */
    double ev[64];
    assert_int_equal(ea_spectrum_null_spectrum(40, 64, ev), EA_OK);
    double tr = 0;
    int nz = 0;
    for (int i = 0; i < 64; i++) {
        tr += ev[i];
        nz += ev[i] > 0;
        if (i) assert_true(ev[i] <= ev[i - 1]);
    }
    printf("null spectrum n=40 d=64: trace %.6f, non-zero %d\n", tr, nz);
    assert_true(fabs(tr - 64) < 1e-9);
    assert_int_equal(nz, 39);
    /* Huge n: the null is nearly flat, so k95 = 95% of d. */
    int k;
    assert_int_equal(ea_spectrum_null(100000000, 100, 0, NULL, &k), EA_OK);
    assert_int_equal(k, 95);
    assert_int_equal(ea_spectrum_null(1, 10, 0, NULL, &k), EA_ERR_ARG);
}

/* ---- save / load ---- */

static void test_cov_save_load(void **state) {
    (void)state;
    int n = 900, d = 20;
    ea_rng r;
    ea_rng_seed(&r, 8);
    double *x = malloc((size_t)n * d * sizeof(double)), a[400], b[400];
    fill_gauss(&r, x, (size_t)n * d);
    ea_cov *c, *half, *loaded;
    assert_int_equal(ea_cov_init(&c, d), EA_OK);
    assert_int_equal(ea_cov_init(&half, d), EA_OK);
    assert_int_equal(ea_cov_add_f64(c, x, n, d), EA_OK);
    assert_int_equal(ea_cov_add_f64(half, x, 333, d), EA_OK); /* pending rows must be saved too */
    char *dir = test_tmpdir(), path[512], bad[512];
    snprintf(path, sizeof path, "%s/half.safetensors", dir);
    assert_int_equal(ea_cov_save(half, path), EA_OK);
    assert_int_equal(ea_cov_load(path, &loaded), EA_OK);
    assert_true(ea_cov_count(loaded) == 333);
    /* A second "process" adds the rest, then merges the loaded part. */
    ea_cov *rest;
    assert_int_equal(ea_cov_init(&rest, d), EA_OK);
    assert_int_equal(ea_cov_add_f64(rest, x + 333 * d, n - 333, d), EA_OK);
    assert_int_equal(ea_cov_merge(rest, loaded), EA_OK);
    assert_int_equal(ea_cov_matrix(c, 0, a), EA_OK);
    assert_int_equal(ea_cov_matrix(rest, 0, b), EA_OK);
    double e = max_rel_diff(b, a, 400);
    printf("save/load/merge vs one accumulator: max rel diff %.3g\n", e);
    assert_true(e < 1e-12);

    /* Not a covariance file / asymmetric m2 / missing file: clean errors. */
    ea_st_writer *w;
    int64_t s1[1] = {1}, sd[1] = {2}, sdd[2] = {2, 2};
    double nn = 10, mean[2] = {0, 0}, m2[4] = {1, 0.5, 0.4, 1};
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    assert_int_equal(ea_st_writer_meta(w, "format", "ea_cov"), EA_OK);
    assert_int_equal(ea_st_writer_meta(w, "version", "1"), EA_OK);
    assert_int_equal(ea_st_writer_add(w, "n", EA_DTYPE_F64, 1, s1, &nn), EA_OK);
    assert_int_equal(ea_st_writer_add(w, "mean", EA_DTYPE_F64, 1, sd, mean), EA_OK);
    assert_int_equal(ea_st_writer_add(w, "m2", EA_DTYPE_F64, 2, sdd, m2), EA_OK);
    snprintf(bad, sizeof bad, "%s/asym.safetensors", dir);
    assert_int_equal(ea_st_writer_save(w, bad), EA_OK);
    ea_st_writer_free(w);
    ea_cov *z = NULL;
    assert_int_equal(ea_cov_load(bad, &z), EA_ERR_FORMAT);
    printf("asymmetric m2: %s\n", ea_last_error());
    assert_null(z);
    assert_int_equal(ea_cov_load(TEST_FIXTURE_DIR "/gpt2-micro.reference.safetensors", &z), EA_ERR_FORMAT);
    printf("foreign safetensors: %s\n", ea_last_error());
    snprintf(bad, sizeof bad, "%s/missing.safetensors", dir);
    assert_true(ea_cov_load(bad, &z) != EA_OK);
    ea_cov_free(c); ea_cov_free(half); ea_cov_free(loaded); ea_cov_free(rest);
    test_rmdir(dir);
    free(dir);
    free(x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eigh_tridiagonal),
        cmocka_unit_test(test_eigh_reconstructs),
        cmocka_unit_test(test_spectrum_stats),
        cmocka_unit_test(test_cov_streaming_matches_two_pass),
        cmocka_unit_test(test_cov_float_input_and_stride),
        cmocka_unit_test(test_cov_rejects_nonfinite),
        cmocka_unit_test(test_cov_standardize),
        cmocka_unit_test(test_isotropic_df),
        cmocka_unit_test(test_rank_one),
        cmocka_unit_test(test_prescribed_spectrum),
        cmocka_unit_test(test_summary_k_thresholds),
        cmocka_unit_test(test_thread_independence),
        cmocka_unit_test(test_null_matches_samples),
        cmocka_unit_test(test_cov_save_load),
    };
    return TEST_RUN(tests, NULL, NULL);
}
