/* ESAP math: Procrustes, retrieval/CSLS, alignment and its null, messages, spectrum messages.
 * References are closed forms, LAPACK (QR for planted rotations) and brute-force loops. */
#include "testutil.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers -------------------------------------------------------------------------- */

static void gaussian(ea_rng *r, double *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = ea_rng_normal(r);
}

/* Random orthogonal q (n × n) from the QR factorization of a Gaussian matrix (LAPACK dgeqrf +
 * dorgqr): independent of the SVD path that ea_procrustes takes. */
static void random_orthogonal(ea_rng *r, int n, double *q) {
    double *tau = malloc((size_t)n * sizeof *tau);
    gaussian(r, q, (size_t)n * n);
    assert_int_equal(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, n, n, q, n, tau), 0);
    assert_int_equal(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, n, n, n, q, n, tau), 0);
    free(tau);
}

static void matmul(const double *a, const double *b, int n, int k, int m, double *c) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) {
            double s = 0;
            for (int l = 0; l < k; l++) s += a[(size_t)i * k + l] * b[(size_t)l * m + j];
            c[(size_t)i * m + j] = s;
        }
}

static double max_abs_diff_d(const double *a, const double *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

static double frob_residual(const double *a, const double *w, const double *b, int n, int da, int db) {
    double *aw = malloc((size_t)n * db * sizeof *aw), s = 0;
    matmul(a, w, n, da, db, aw);
    for (size_t i = 0; i < (size_t)n * db; i++) s += (aw[i] - b[i]) * (aw[i] - b[i]);
    free(aw);
    return sqrt(s);
}

/* ---- Procrustes ----------------------------------------------------------------------- */

static void test_procrustes_planted_rotation(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 11);
    int n = 200, k = 16;
    double *a = malloc((size_t)n * k * sizeof *a), *q = malloc((size_t)k * k * sizeof *q);
    double *b = malloc((size_t)n * k * sizeof *b), *w = malloc((size_t)k * k * sizeof *w);
    gaussian(&r, a, (size_t)n * k);
    random_orthogonal(&r, k, q);
    matmul(a, q, n, k, k, b);
    assert_int_equal(ea_procrustes(a, b, n, k, k, w), EA_OK);
    double diff = max_abs_diff_d(w, q, (size_t)k * k);
    printf("planted %dx%d rotation: max |W - Q| = %.3e\n", k, k, diff);
    assert_true(diff < 1e-10);
    free(a); free(q); free(b); free(w);
}

/* da < db: B = A Q with Q (da × db) having orthonormal rows; the polar factor of AᵀA Q is Q. */
static void test_procrustes_planted_semi_orthogonal(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 12);
    int n = 150, da = 8, db = 12;
    double *full = malloc((size_t)db * db * sizeof *full), *q = malloc((size_t)da * db * sizeof *q);
    double *a = malloc((size_t)n * da * sizeof *a), *b = malloc((size_t)n * db * sizeof *b);
    double *w = malloc((size_t)da * db * sizeof *w);
    random_orthogonal(&r, db, full);
    memcpy(q, full, (size_t)da * db * sizeof *q); /* first da rows: orthonormal */
    gaussian(&r, a, (size_t)n * da);
    matmul(a, q, n, da, db, b);
    assert_int_equal(ea_procrustes(a, b, n, da, db, w), EA_OK);
    double diff = max_abs_diff_d(w, q, (size_t)da * db);
    printf("planted %dx%d semi-orthogonal map: max |W - Q| = %.3e\n", da, db, diff);
    assert_true(diff < 1e-10);
    free(full); free(q); free(a); free(b); free(w);
}

/* 2-D with noise: the best rotation has the closed form θ = atan2(Σ x1y2 − x2y1, Σ x1y1 + x2y2). */
static void test_procrustes_2d_closed_form(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 13);
    int n = 100;
    double th = 0.7, a[200], b[200], w[4];
    for (int i = 0; i < n; i++) {
        a[2 * i] = ea_rng_normal(&r);
        a[2 * i + 1] = 2 * ea_rng_normal(&r);
        /* row vector times [[c, s], [-s, c]] */
        b[2 * i] = a[2 * i] * cos(th) - a[2 * i + 1] * sin(th) + 0.3 * ea_rng_normal(&r);
        b[2 * i + 1] = a[2 * i] * sin(th) + a[2 * i + 1] * cos(th) + 0.3 * ea_rng_normal(&r);
    }
    double sn = 0, sd = 0;
    for (int i = 0; i < n; i++) {
        sn += a[2 * i] * b[2 * i + 1] - a[2 * i + 1] * b[2 * i];
        sd += a[2 * i] * b[2 * i] + a[2 * i + 1] * b[2 * i + 1];
    }
    double t = atan2(sn, sd), ref[4] = {cos(t), sin(t), -sin(t), cos(t)};
    assert_int_equal(ea_procrustes(a, b, n, 2, 2, w), EA_OK);
    double diff = max_abs_diff_d(w, ref, 4);
    printf("2-D noisy: theta* = %.6f (planted %.2f), max |W - R(theta*)| = %.3e\n", t, th, diff);
    assert_true(diff < 1e-12);
}

/* Noisy k-dim case: W is orthogonal and no nearby orthogonal matrix does better. */
static void test_procrustes_optimal(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 14);
    int n = 80, k = 10;
    double *a = malloc((size_t)n * k * sizeof *a), *b = malloc((size_t)n * k * sizeof *b);
    double *w = malloc((size_t)k * k * sizeof *w), *wtw = malloc((size_t)k * k * sizeof *wtw);
    double *q = malloc((size_t)k * k * sizeof *q), *wq = malloc((size_t)k * k * sizeof *wq);
    gaussian(&r, a, (size_t)n * k);
    gaussian(&r, b, (size_t)n * k); /* unrelated: the optimum is still well defined */
    assert_int_equal(ea_procrustes(a, b, n, k, k, w), EA_OK);
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            double s = 0;
            for (int l = 0; l < k; l++) s += w[(size_t)l * k + i] * w[(size_t)l * k + j];
            wtw[(size_t)i * k + j] = s - (i == j);
        }
    double orth = max_abs_diff_d(wtw, (double[100]){0}, (size_t)k * k);
    double best = frob_residual(a, w, b, n, k, k), worst_gap = INFINITY;
    /* Small rotations of W: R = QR-orthogonalized (I + eps·G). */
    for (int trial = 0; trial < 50; trial++) {
        double tau[16];
        for (int i = 0; i < k * k; i++) q[i] = (i / k == i % k) + 0.01 * ea_rng_normal(&r);
        LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, k, k, q, k, tau);
        LAPACKE_dorgqr(LAPACK_ROW_MAJOR, k, k, k, q, k, tau);
        matmul(w, q, k, k, k, wq);
        double gap = frob_residual(a, wq, b, n, k, k) - best;
        if (gap < worst_gap) worst_gap = gap;
    }
    printf("noisy k=%d: |WtW - I| = %.3e, residual %.6f, smallest gain of 50 perturbations %.3e\n", k, orth, best,
           worst_gap);
    assert_true(orth < 1e-12);
    assert_true(worst_gap > -1e-12);
    free(a); free(b); free(w); free(wtw); free(q); free(wq);
}

static void test_procrustes_rejects_nan(void **state) {
    (void)state;
    double a[4] = {1, 2, NAN, 4}, b[4] = {1, 0, 0, 1}, w[4];
    assert_int_equal(ea_procrustes(a, b, 2, 2, 2, w), EA_ERR_NUMERIC);
    printf("NaN anchors: %s\n", ea_last_error());
    assert_int_equal(ea_procrustes(a, b, 0, 2, 2, w), EA_ERR_ARG);
}

/* ---- retrieval ------------------------------------------------------------------------ */

/* Brute force in double, straight from the definitions. */
static void retrieval_reference(const float *x, const float *y, int n, int k, int t, ea_esap_retrieval *o) {
    double *s = malloc((size_t)n * n * sizeof *s), *rt = malloc((size_t)n * sizeof *rt), *rs = malloc((size_t)n * sizeof *rs);
    double *col = malloc((size_t)n * sizeof *col);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double xy = 0, xx = 0, yy = 0;
            for (int l = 0; l < k; l++) {
                xy += (double)x[i * k + l] * y[j * k + l];
                xx += (double)x[i * k + l] * x[i * k + l];
                yy += (double)y[j * k + l] * y[j * k + l];
            }
            s[(size_t)i * n + j] = xy / sqrt(xx * yy);
        }
    /* mean of the t largest of a vector (selection by repeated max). */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) col[j] = pass ? s[(size_t)j * n + i] : s[(size_t)i * n + j];
            double sum = 0;
            for (int c = 0; c < t; c++) {
                int best = 0;
                for (int j = 1; j < n; j++)
                    if (col[j] > col[best]) best = j;
                sum += col[best];
                col[best] = -INFINITY;
            }
            (pass ? rs : rt)[i] = sum / t;
        }
    memset(o, 0, sizeof *o);
    o->n = n;
    for (int i = 0; i < n; i++) {
        int above = 0, above_c = 0;
        double own = s[(size_t)i * n + i], own_c = 2 * own - rt[i] - rs[i];
        for (int j = 0; j < n; j++) {
            if (j == i) continue;
            above += s[(size_t)i * n + j] >= own;
            above_c += 2 * s[(size_t)i * n + j] - rt[i] - rs[j] >= own_c;
        }
        o->p_at_1 += above < 1;
        o->p_at_10 += above < 10;
        o->csls_p_at_1 += above_c < 1;
        o->csls_p_at_10 += above_c < 10;
        o->mean_cos += own;
    }
    o->p_at_1 /= n; o->p_at_10 /= n; o->csls_p_at_1 /= n; o->csls_p_at_10 /= n; o->mean_cos /= n;
    free(s); free(rt); free(rs); free(col);
}

static void noisy_pairs(ea_rng *r, int n, int k, double noise, float *x, float *y) {
    for (int i = 0; i < n * k; i++) {
        x[i] = (float)ea_rng_normal(r);
        y[i] = x[i] + (float)(noise * ea_rng_normal(r));
    }
    /* a few hubs: targets near the centre of many sources */
    for (int h = 0; h < n / 20; h++)
        for (int l = 0; l < k; l++) y[(size_t)(h * 7 % n) * k + l] *= 0.2f;
}

static void check_retrieval(int n, int k, double noise, double tol) {
    ea_rng r;
    ea_rng_seed(&r, (uint64_t)n * 31 + k);
    float *x = malloc((size_t)n * k * sizeof *x), *y = malloc((size_t)n * k * sizeof *y);
    noisy_pairs(&r, n, k, noise, x, y);
    ea_esap_retrieval got, ref;
    assert_int_equal(ea_esap_retrieve(x, y, n, k, EA_ESAP_CSLS_K, &got), EA_OK);
    retrieval_reference(x, y, n, k, EA_ESAP_CSLS_K, &ref);
    printf("retrieval n=%d k=%d: P@1 %.4f/%.4f P@10 %.4f/%.4f CSLS@1 %.4f/%.4f CSLS@10 %.4f/%.4f cos %.6f/%.6f "
           "(library/brute force)\n",
           n, k, got.p_at_1, ref.p_at_1, got.p_at_10, ref.p_at_10, got.csls_p_at_1, ref.csls_p_at_1, got.csls_p_at_10,
           ref.csls_p_at_10, got.mean_cos, ref.mean_cos);
    assert_int_equal(got.n, n);
    assert_true(fabs(got.p_at_1 - ref.p_at_1) <= tol);
    assert_true(fabs(got.p_at_10 - ref.p_at_10) <= tol);
    assert_true(fabs(got.csls_p_at_1 - ref.csls_p_at_1) <= tol);
    assert_true(fabs(got.csls_p_at_10 - ref.csls_p_at_10) <= tol);
    assert_true(fabs(got.mean_cos - ref.mean_cos) < 1e-5);
    free(x); free(y);
}

/* Small case: exact agreement. Large case (several sgemm row blocks): the library ranks in
 * float32, the reference in float64, so a near-tie may flip; allow 3 of 3000 rows. */
static void test_retrieval_matches_brute_force(void **state) {
    (void)state;
    check_retrieval(40, 6, 0.8, 0.0);
    check_retrieval(3000, 4, 0.5, 3.0 / 3000);
}

/* CSLS demotes a hub. Sources at 0° and 40°, targets at −25° and 20° (the hub, between both
 * sources). By cosine both sources pick the hub (P@1 = 1/2). With neighbourhoods of 2,
 * r_S(y0) = (cos 25° + cos 65°)/2 = 0.665 and r_S(y1) = cos 20° = 0.940, so for source 0
 * CSLS(y0) = 2cos 25° − 0.665 = 1.147 > CSLS(y1) = 2cos 20° − 0.940 = 0.940: CSLS P@1 = 1. */
static void test_retrieval_csls_hub(void **state) {
    (void)state;
    const double deg = 3.14159265358979323846 / 180;
    float x[] = {1, 0, (float)cos(40 * deg), (float)sin(40 * deg)};
    float y[] = {(float)cos(-25 * deg), (float)sin(-25 * deg), (float)cos(20 * deg), (float)sin(20 * deg)};
    ea_esap_retrieval res, ref;
    assert_int_equal(ea_esap_retrieve(x, y, 2, 2, 2, &res), EA_OK);
    retrieval_reference(x, y, 2, 2, 2, &ref);
    printf("hub: NN P@1 %.2f, CSLS P@1 %.2f (brute force %.2f, %.2f)\n", res.p_at_1, res.csls_p_at_1, ref.p_at_1,
           ref.csls_p_at_1);
    assert_true(res.p_at_1 == 0.5 && ref.p_at_1 == 0.5);
    assert_true(res.csls_p_at_1 == 1.0 && ref.csls_p_at_1 == 1.0);
    assert_int_equal(ea_esap_retrieve(x, y, 0, 2, 2, &res), EA_ERR_ARG);
}

/* ---- alignment ------------------------------------------------------------------------ */

/* n anchors in d dims with a decaying spectrum (distinct eigenvalues, so each side's eigenbasis
 * is well defined up to signs). */
static float *anisotropic_rows(ea_rng *r, int n, int d) {
    float *x = malloc((size_t)n * d * sizeof *x);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) x[(size_t)i * d + j] = (float)(ea_rng_normal(r) * pow(0.93, j) + 0.5);
    return x;
}

/* y = x Q (+ noise) for Q (d × dy) with orthonormal rows. */
static float *rotated_rows(ea_rng *r, const float *x, int n, int d, int dy, double noise) {
    double *q = malloc((size_t)dy * dy * sizeof *q);
    random_orthogonal(r, dy, q);
    float *y = malloc((size_t)n * dy * sizeof *y);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < dy; j++) {
            double s = 0;
            for (int l = 0; l < d; l++) s += (double)x[(size_t)i * d + l] * q[(size_t)l * dy + j];
            y[(size_t)i * dy + j] = (float)(s + noise * ea_rng_normal(r));
        }
    free(q);
    return y;
}

/* Reduce both sides to k dims with their own eigenbases and align. Returns the standard
 * deviation expected for the null's mean pair cosine (see assert_null_near_chance). */
static double align_rows(const float *a, int da, const float *b, int db, int n, int k, int n_train, int n_test,
                         ea_esap_align_report *rep) {
    ea_esap_basis *ba, *bb;
    assert_int_equal(ea_esap_basis_fit(a, n, da, &ba), EA_OK);
    assert_int_equal(ea_esap_basis_fit(b, n, db, &bb), EA_OK);
    float *za = malloc((size_t)n * k * sizeof *za), *zb = malloc((size_t)n * k * sizeof *zb);
    assert_int_equal(ea_esap_basis_project(ba, a, n, k, za), EA_OK);
    assert_int_equal(ea_esap_basis_project(bb, b, n, k, zb), EA_OK);
    assert_int_equal(ea_esap_align_eval(za, zb, n, k, n_train, n_test, 5, NULL, rep), EA_OK);
    const double *ev = ea_esap_basis_eigenvalues(ba);
    double s = 0, sq = 0;
    for (int i = 0; i < k; i++) {
        s += ev[i];
        sq += ev[i] * ev[i];
    }
    double df_k = s * s / sq, sd = 1.0 / sqrt(EA_ESAP_NULL_SHUFFLES * k * df_k);
    printf("align k=%d train=%d test=%d: P@1 %.4f P@10 %.4f CSLS@1 %.4f test cos %.6f train cos %.6f | "
           "null P@1 %.4f P@10 %.4f cos %.4f (chance %.4f, null cos s.d. %.4f)\n",
           k, n_train, n_test, rep->test.p_at_1, rep->test.p_at_10, rep->test.csls_p_at_1, rep->test.mean_cos,
           rep->train_cosine, rep->null.p_at_1, rep->null.p_at_10, rep->null.mean_cos, rep->chance_p_at_1, sd);
    free(za); free(zb);
    ea_esap_basis_free(ba);
    ea_esap_basis_free(bb);
    return sd;
}

/* Why these bounds. Under the null, W is fitted to shuffled pairs and carries no information
 * about which held-out target belongs to which source. If it were a uniformly random rotation,
 * each of the m sources would hit its partner with probability 1/m (hits ≈ Poisson(1):
 * P(hits >= 8) < 1e-5) and land it in its top 10 with 10/m (Poisson(10): P(>= 30) < 1e-6).
 * One fitted W is, by chance, slightly aligned or anti-aligned with the true map: its mean pair
 * cosine is tr(RΣ)/tr(Σ) for a random orthogonal R, with standard deviation 1/sqrt(k·Df_k) over
 * the top-k spectrum; the reported null averages EA_ESAP_NULL_SHUFFLES shuffles, dividing that by
 * sqrt(shuffles). That chance alignment fattens the hit tails; over 200 seeds of the
 * different-widths set-up below (tools run while writing this test) the largest averaged null
 * was 3.8/m for P@1 and 23/m for P@10, and the cosine's spread matched the formula (0.036 vs
 * 0.033). Bounds: P@1 <= 8/m, P@10 <= 30/m, |cos| <= 5 standard deviations. */
static void assert_null_near_chance(const ea_esap_align_report *rep, double cos_sd) {
    int m = rep->test_anchors;
    assert_true(rep->null.p_at_1 <= 8.0 / m);
    assert_true(rep->null.p_at_10 <= 30.0 / m);
    assert_true(rep->null.csls_p_at_1 <= 8.0 / m);
    assert_true(fabs(rep->null.mean_cos) <= 5 * cos_sd);
}

static void test_align_self_rotated(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 21);
    int n = 600, d = 32;
    float *a = anisotropic_rows(&r, n, d), *b = rotated_rows(&r, a, n, d, d, 0.0);
    int ks[] = {32, 12};
    for (int i = 0; i < 2; i++) {
        ea_esap_align_report rep;
        double sd = align_rows(a, d, b, d, n, ks[i], 300, 300, &rep);
        assert_int_equal(rep.rank, ks[i]);
        assert_true(rep.test.p_at_1 == 1.0);
        assert_true(rep.test.csls_p_at_1 == 1.0);
        assert_true(rep.test.mean_cos > 0.9999);
        assert_true(rep.train_cosine > 0.9999);
        assert_null_near_chance(&rep, sd);
    }
    free(a); free(b);
}

/* Two synthetic "models" of different widths: B = A·Q (24 → 40 dims) plus noise. */
static void test_align_different_widths(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 22);
    int n = 800, da = 24, db = 40;
    float *a = anisotropic_rows(&r, n, da), *b = rotated_rows(&r, a, n, da, db, 0.05);
    ea_esap_align_report rep;
    double sd = align_rows(a, da, b, db, n, 16, 400, 400, &rep);
    assert_true(rep.test.p_at_1 > 0.95);
    assert_true(rep.test.p_at_10 >= rep.test.p_at_1);
    assert_true(rep.test.mean_cos > 0.95);
    assert_null_near_chance(&rep, sd);
    free(a); free(b);
}

/* CSLS as ea_esap_align_eval reports it, against the brute-force reference on the same held-out
 * pairs (the split from ea_esap_split, W from the call): hub-rich data, where the neighbourhood
 * size matters. Sources share a mean direction (anisotropic_rows adds 0.5 to every coordinate),
 * and one target in eight is replaced by the mapped mean plus a little noise: such a target is
 * near many mapped sources, so it is every neighbour's nearest (a hub). CSLS with neighbourhoods
 * of EA_ESAP_CSLS_K penalizes it; with 1 it penalizes much less, and the reference shows by how
 * much (asserted, so the test stays sensitive to that choice). */
static void test_align_csls_matches_brute_force(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 24);
    int n = 600, k = 12, n_train = 300, n_test = 300;
    uint64_t seed = 9;
    float *za = anisotropic_rows(&r, n, k), *zb = rotated_rows(&r, za, n, k, k, 0.5);
    double mean[64] = {0};
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) mean[j] += zb[(size_t)i * k + j] / n;
    for (int i = 0; i < n; i += 8)
        for (int j = 0; j < k; j++) zb[(size_t)i * k + j] = (float)(mean[j] + 0.3 * ea_rng_normal(&r));
    double *w = malloc((size_t)k * k * sizeof *w);
    ea_esap_align_report rep;
    assert_int_equal(ea_esap_align_eval(za, zb, n, k, n_train, n_test, seed, w, &rep), EA_OK);
    int *perm = malloc((size_t)n * sizeof *perm);
    assert_int_equal(ea_esap_split(n, n_train, n_test, seed, perm), EA_OK);
    const int *test = perm + (n - n_test);
    float *x = malloc((size_t)n_test * k * sizeof *x), *y = malloc((size_t)n_test * k * sizeof *y);
    for (int t = 0; t < n_test; t++)
        for (int j = 0; j < k; j++) {
            double s = 0;
            for (int l = 0; l < k; l++) s += (double)za[(size_t)test[t] * k + l] * w[(size_t)l * k + j];
            x[(size_t)t * k + j] = (float)s;
            y[(size_t)t * k + j] = zb[(size_t)test[t] * k + j];
        }
    ea_esap_retrieval ref, ref1;
    retrieval_reference(x, y, n_test, k, EA_ESAP_CSLS_K, &ref);
    retrieval_reference(x, y, n_test, k, 1, &ref1);
    printf("align CSLS: P@1 %.4f/%.4f P@10 %.4f/%.4f CSLS@1 %.4f/%.4f CSLS@10 %.4f/%.4f (library/brute force, "
           "neighbourhoods of %d); with neighbourhoods of 1 CSLS@1 %.4f CSLS@10 %.4f\n",
           rep.test.p_at_1, ref.p_at_1, rep.test.p_at_10, ref.p_at_10, rep.test.csls_p_at_1, ref.csls_p_at_1,
           rep.test.csls_p_at_10, ref.csls_p_at_10, EA_ESAP_CSLS_K, ref1.csls_p_at_1, ref1.csls_p_at_10);
    /* float32 ranking in the library vs float64 here: a near-tie may flip one row */
    double tol = 1.0 / n_test;
    assert_true(fabs(rep.test.p_at_1 - ref.p_at_1) <= tol);
    assert_true(fabs(rep.test.p_at_10 - ref.p_at_10) <= tol);
    assert_true(fabs(rep.test.csls_p_at_1 - ref.csls_p_at_1) <= tol);
    assert_true(fabs(rep.test.csls_p_at_10 - ref.csls_p_at_10) <= tol);
    assert_true(fabs(rep.test.mean_cos - ref.mean_cos) < 1e-5);
    /* sensitivity: the hubs make CSLS beat plain cosine, and the neighbourhood size moves the
     * result by several rows, well beyond the tolerance */
    assert_true(ref.csls_p_at_1 > ref.p_at_1 + 5 * tol);
    assert_true(fabs(ref.csls_p_at_1 - ref1.csls_p_at_1) + fabs(ref.csls_p_at_10 - ref1.csls_p_at_10) >= 4 * tol);
    free(za); free(zb); free(w); free(perm); free(x); free(y);
}

/* Unrelated sides: the real fit must be no better than the null (both near chance). */
static void test_align_unrelated_is_chance(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 23);
    int n = 600, d = 16;
    float *a = anisotropic_rows(&r, n, d), *b = anisotropic_rows(&r, n, d);
    ea_esap_align_report rep;
    double sd = align_rows(a, d, b, d, n, 16, 300, 300, &rep);
    /* a real fit to unrelated pairs is itself a single null draw (no averaging): sd·sqrt(5) */
    assert_true(rep.test.p_at_1 <= 8.0 / 300);
    assert_true(rep.test.p_at_10 <= 30.0 / 300);
    assert_true(fabs(rep.test.mean_cos) <= 5 * sd * sqrt(EA_ESAP_NULL_SHUFFLES));
    assert_null_near_chance(&rep, sd);
    free(a); free(b);
}

static void test_split(void **state) {
    (void)state;
    int n = 100, p1[100], p2[100], seen[100] = {0};
    assert_int_equal(ea_esap_split(n, 10, 30, 9, p1), EA_OK);
    assert_int_equal(ea_esap_split(n, 60, 30, 9, p2), EA_OK);
    for (int i = 0; i < n; i++) seen[p1[i]]++;
    for (int i = 0; i < n; i++) assert_int_equal(seen[i], 1);
    /* held-out set identical for any n_train: sweeps compare like with like */
    assert_memory_equal(p1 + 70, p2 + 70, 30 * sizeof(int));
    assert_int_equal(ea_esap_split(n, 71, 30, 9, p1), EA_ERR_ARG);
    assert_int_equal(ea_esap_split(n, 0, 30, 9, p1), EA_ERR_ARG);
}

static void test_basis_project_lift(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 24);
    int n = 300, d = 10;
    float *x = anisotropic_rows(&r, n, d), *z = malloc((size_t)n * d * sizeof *z), *back = malloc((size_t)n * d * sizeof *back);
    ea_esap_basis *b;
    assert_int_equal(ea_esap_basis_fit(x, n, d, &b), EA_OK);
    const double *ev = ea_esap_basis_eigenvalues(b), *mu = ea_esap_basis_mean(b);
    for (int i = 1; i < d; i++) assert_true(ev[i] <= ev[i - 1]);
    /* Full-rank projection then lift is the identity on centred rows. */
    assert_int_equal(ea_esap_basis_project(b, x, n, d, z), EA_OK);
    assert_int_equal(ea_esap_basis_lift(b, z, n, d, back), EA_OK);
    double err = 0, var0 = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < d; j++) err = fmax(err, fabs(back[i * d + j] + mu[j] - x[i * d + j]));
        var0 += (double)z[i * d] * z[i * d];
    }
    var0 /= n - 1;
    printf("project/lift round trip: max err %.3e; variance of coefficient 0 %.6f vs eigenvalue 0 %.6f\n", err, var0,
           ev[0]);
    assert_true(err < 1e-5);
    assert_true(fabs(var0 - ev[0]) < 1e-4 * ev[0]);
    assert_int_equal(ea_esap_basis_project(b, x, n, d + 1, z), EA_ERR_ARG);
    ea_esap_basis_free(b);
    free(x); free(z); free(back);
}

/* ---- messages ------------------------------------------------------------------------- */

static void test_message_eval(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 25);
    int n = 800, da = 24, db = 40;
    float *a = anisotropic_rows(&r, n, da), *b = rotated_rows(&r, a, n, da, db, 0.02);
    ea_esap_basis *ba, *bb;
    assert_int_equal(ea_esap_basis_fit(a, n, da, &ba), EA_OK);
    assert_int_equal(ea_esap_basis_fit(b, n, db, &bb), EA_OK);
    double prev = -1;
    int ks[] = {2, 8, 24};
    for (int i = 0; i < 3; i++) {
        ea_esap_message_report m;
        assert_int_equal(ea_esap_message_eval(ba, a, bb, b, n, ks[i], 400, 400, 3, &m), EA_OK);
        printf("message k=%2d: %zu B (f32) / %zu B (f16) vs %zu B full: acc %.4f (f16 %.4f) top10 %.4f reduced %.4f "
               "null %.4f chance %.4f\n",
               ks[i], m.bytes_f32, m.bytes_f16, m.bytes_full, m.acc_f32, m.acc_f16, m.top10_f32, m.acc_reduced_f32,
               m.null_acc_f32, m.chance);
        assert_int_equal(m.bytes_f32, 4 * (size_t)ks[i]);
        assert_int_equal(m.bytes_f16, 2 * (size_t)ks[i]);
        assert_int_equal(m.bytes_full, 4 * (size_t)da);
        assert_true(m.acc_f32 >= prev - 0.02); /* more coefficients never hurt much */
        assert_true(m.null_acc_f32 <= 8.0 / 400);
        prev = m.acc_f32;
        if (ks[i] == da) {
            assert_true(m.acc_f32 > 0.98);
            assert_true(fabs(m.acc_f16 - m.acc_f32) <= 0.01);
        }
        /* A receiver resolving in its own k-space is exactly align's P@1 on the same split. */
        float *za = malloc((size_t)n * ks[i] * sizeof *za), *zb = malloc((size_t)n * ks[i] * sizeof *zb);
        assert_int_equal(ea_esap_basis_project(ba, a, n, ks[i], za), EA_OK);
        assert_int_equal(ea_esap_basis_project(bb, b, n, ks[i], zb), EA_OK);
        ea_esap_align_report rep;
        assert_int_equal(ea_esap_align_eval(za, zb, n, ks[i], 400, 400, 3, NULL, &rep), EA_OK);
        assert_true(m.acc_reduced_f32 == rep.test.p_at_1);
        free(za);
        free(zb);
    }
    ea_esap_message_report m;
    assert_int_equal(ea_esap_message_eval(ba, a, bb, b, n, da + 1, 400, 400, 3, &m), EA_ERR_ARG);
    ea_esap_basis_free(ba);
    ea_esap_basis_free(bb);
    free(a); free(b);
}

/* ---- spectrum messages ---------------------------------------------------------------- */

static void test_spectrum_known_values(void **state) {
    (void)state;
    ea_esap_spectrum s;
    double ev[] = {1, 2, 3, 4}; /* any order, any scale */
    assert_int_equal(ea_esap_spectrum_init(&s, ev, 4, 0, "abc123", "wte"), EA_OK);
    double want_ev[] = {0.4, 0.3, 0.2, 0.1}, want_ck[] = {0.4, 0.7, 0.9, 1.0};
    assert_int_equal(s.K, 4);
    assert_true(max_abs_diff_d(s.eigenvalues, want_ev, 4) < 1e-15);
    assert_true(max_abs_diff_d(s.ck, want_ck, 4) < 1e-15);
    printf("spectrum [4,3,2,1]: Df %.15f (closed form 10/3)\n", s.df);
    assert_true(fabs(s.df - 10.0 / 3.0) < 1e-13);
    ea_esap_spectrum_free(&s);
    double bad[] = {1, -0.5};
    assert_int_equal(ea_esap_spectrum_init(&s, bad, 2, 0, "f", "wte"), EA_ERR_NUMERIC);
    double zero[] = {0, 0};
    assert_int_equal(ea_esap_spectrum_init(&s, zero, 2, 0, "f", "wte"), EA_ERR_NUMERIC);
    assert_int_equal(ea_esap_spectrum_init(&s, ev, 4, 5, "f", "wte"), EA_ERR_ARG);
    assert_int_equal(ea_esap_spectrum_init(&s, ev, 4, 0, "bad\nname", "wte"), EA_ERR_ARG);
}

static void test_pearson_closed_form(void **state) {
    (void)state;
    double x[] = {1, 2, 3, 4, 5}, y[] = {2, 4, 5, 4, 5}, z[] = {3, 3, 3, 3, 3}, neg[] = {10, 8, 6, 4, 2};
    double r = ea_esap_pearson(x, y, 5);
    printf("pearson: %.17g (closed form sqrt(0.6) = %.17g)\n", r, sqrt(0.6));
    assert_true(fabs(r - sqrt(0.6)) < 1e-15);
    assert_true(fabs(ea_esap_pearson(x, neg, 5) + 1.0) < 1e-15);
    assert_true(isnan(ea_esap_pearson(x, z, 5)));
    assert_true(isnan(ea_esap_pearson(x, y, 1)));
}

static ea_esap_spectrum random_spectrum(uint64_t seed, int d, int K) {
    ea_rng r;
    ea_rng_seed(&r, seed);
    double *ev = malloc((size_t)d * sizeof *ev);
    for (int i = 0; i < d; i++) ev[i] = exp(-0.1 * i) * (1 + 0.1 * ea_rng_uniform(&r));
    ea_esap_spectrum s;
    assert_int_equal(ea_esap_spectrum_init(&s, ev, d, K, "0123456789abcdef", "hidden:3"), EA_OK);
    free(ev);
    return s;
}

static void test_spectrum_round_trip(void **state) {
    (void)state;
    ea_esap_spectrum s = random_spectrum(31, 128, 100), t;
    char *json, *json2;
    size_t len, len2;
    assert_int_equal(ea_esap_spectrum_to_json(&s, &json, &len), EA_OK);
    assert_int_equal(ea_esap_spectrum_parse(json, len, "message", &t), EA_OK);
    assert_string_equal(t.fingerprint, s.fingerprint);
    assert_string_equal(t.site, s.site);
    assert_int_equal(t.d, s.d);
    assert_int_equal(t.K, s.K);
    assert_memory_equal(&t.df, &s.df, sizeof s.df); /* bit for bit */
    assert_memory_equal(t.eigenvalues, s.eigenvalues, (size_t)s.d * sizeof(double));
    assert_memory_equal(t.ck, s.ck, (size_t)s.K * sizeof(double));
    assert_int_equal(ea_esap_spectrum_to_json(&t, &json2, &len2), EA_OK);
    assert_int_equal(len, len2);
    assert_memory_equal(json, json2, len); /* stable text */
    printf("round trip: %zu bytes for d=%d, K=%d; bitwise identical\n", len, s.d, s.K);

    /* and through a file */
    char *dir = test_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/a.json", dir);
    ea_esap_spectrum u;
    assert_int_equal(ea_esap_spectrum_save(&s, path), EA_OK);
    assert_int_equal(ea_esap_spectrum_load(path, &u), EA_OK);
    assert_memory_equal(u.eigenvalues, s.eigenvalues, (size_t)s.d * sizeof(double));
    ea_esap_spectrum_free(&u);
    snprintf(path, sizeof path, "%s/missing.json", dir);
    assert_int_equal(ea_esap_spectrum_load(path, &u), EA_ERR_IO);
    assert_non_null(strstr(ea_last_error(), "missing.json"));
    test_rmdir(dir);
    free(dir);
    free(json); free(json2);
    ea_esap_spectrum_free(&s);
    ea_esap_spectrum_free(&t);
}

/* Replace the first occurrence of `from` in the valid message by `to` and expect a clean error
 * naming `want`. */
static void expect_bad(const char *good, const char *from, const char *to, ea_status code, const char *want) {
    const char *at = strstr(good, from);
    assert_non_null(at);
    size_t n = strlen(good) - strlen(from) + strlen(to);
    char *bad = malloc(n + 1);
    size_t pre = (size_t)(at - good);
    memcpy(bad, good, pre);
    strcpy(bad + pre, to);
    strcat(bad, at + strlen(from));
    ea_esap_spectrum s;
    ea_status st = ea_esap_spectrum_parse(bad, strlen(bad), "peer.json", &s);
    printf("  %-34.34s -> %s\n", to, ea_last_error());
    assert_int_equal(st, code);
    assert_non_null(strstr(ea_last_error(), "peer.json"));
    assert_non_null(strstr(ea_last_error(), want));
    assert_null(s.eigenvalues);
    free(bad);
}

static void test_spectrum_malformed(void **state) {
    (void)state;
    double ev[] = {0.5, 0.25, 0.125, 0.125};
    ea_esap_spectrum s;
    assert_int_equal(ea_esap_spectrum_init(&s, ev, 4, 3, "fp", "wte"), EA_OK);
    char *g;
    size_t len;
    assert_int_equal(ea_esap_spectrum_to_json(&s, &g, &len), EA_OK);
    printf("valid message:\n%s", g);
    const ea_status F = EA_ERR_FORMAT;
    expect_bad(g, "{", "[", F, "invalid JSON");
    expect_bad(g, "\n}\n", "\n", F, "unbalanced");
    expect_bad(g, "{", "{\"x\": [[[[1]]]], ", F, "nested deeper");
    expect_bad(g, "\"format\"", "\"fmt\"", F, "unknown key \"fmt\"");
    expect_bad(g, "\"K\": 3,", "\"K\": 3, \"K\": 3,", F, "duplicate key \"K\"");
    expect_bad(g, "\"K\": 3,", "", F, "missing key \"K\"");
    expect_bad(g, "eigenalign-esap-spectrum", "something-else", F, "\"format\"");
    expect_bad(g, "\"version\": 1", "\"version\": 2", EA_ERR_UNSUPPORTED, "version 2");
    expect_bad(g, "\"d\": 4", "\"d\": 4.5", F, "\"d\"");
    expect_bad(g, "\"d\": 4", "\"d\": \"4\"", F, "\"d\" must be a number");
    expect_bad(g, "\"d\": 4", "\"d\": 100000", F, "not an integer in [1, 8192]");
    expect_bad(g, "\"d\": 4", "\"d\": 5", F, "\"eigenvalues\" has 4 values, expected 5");
    expect_bad(g, "\"K\": 3", "\"K\": 5", F, "\"K\"");
    expect_bad(g, "\"fingerprint\": \"fp\"", "\"fingerprint\": \"f\\u0001p\"", F, "printable");
    expect_bad(g, "\"fingerprint\": \"fp\"", "\"fingerprint\": 7", F, "\"fingerprint\" must be a string");
    expect_bad(g, "[0.5, 0.25", "[1e999, 0.25", F, "not finite");
    expect_bad(g, "[0.5, 0.25", "[\"x\", 0.25", F, "\"eigenvalues\"[0] is not a number");
    expect_bad(g, "[0.5, 0.25, 0.125, 0.125]", "[0.5, 0.375, 0.25, -0.125]", F, "negative");
    expect_bad(g, "[0.5, 0.25, 0.125, 0.125]", "[0.25, 0.5, 0.125, 0.125]", F, "descending");
    expect_bad(g, "[0.5, 0.25, 0.125, 0.125]", "[0.5, 0.25, 0.125, 0.1]", F, "sum to");
    expect_bad(g, "[0.5, 0.75, 0.875]", "[0.5, 0.875, 0.75]", F, "not monotone");
    expect_bad(g, "[0.5, 0.75, 0.875]", "[0.5, 0.7, 0.875]", F, "C(2)");
    expect_bad(g, "[0.5, 0.75, 0.875]", "[0.5, 0.75, 1.5]", F, "outside [0, 1]");
    expect_bad(g, "\"Df\": ", "\"Df\": 1.5, \"Dx\": ", F, "unknown key");
    expect_bad(g, "\n}\n", "\n} x", F, "trailing data");
    expect_bad(g, "\"eigenvalues\": [0.5, 0.25, 0.125, 0.125]", "\"eigenvalues\": {\"a\": 1}", F, "must be an array");

    /* Df that contradicts the eigenvalues */
    char *df = strstr(g, "\"Df\": ");
    assert_non_null(df);
    char *bad = strdup(g);
    bad[df - g + 6] = '9'; /* 2.909... -> 9.909... */
    ea_esap_spectrum t;
    assert_int_equal(ea_esap_spectrum_parse(bad, strlen(bad), "peer.json", &t), F);
    printf("  Df altered -> %s\n", ea_last_error());
    assert_non_null(strstr(ea_last_error(), "Df"));
    free(bad);

    /* Hostile nesting never reaches the recursive parser. */
    size_t deep = 200000;
    char *nest = malloc(2 * deep + 1);
    memset(nest, '[', deep);
    memset(nest + deep, ']', deep);
    nest[2 * deep] = 0;
    assert_int_equal(ea_esap_spectrum_parse(nest, 2 * deep, "deep.json", &t), F);
    printf("  200000-deep nesting -> %s\n", ea_last_error());
    free(nest);
    /* Embedded NUL, empty text, not an object. */
    assert_int_equal(ea_esap_spectrum_parse("{\0}", 3, "nul.json", &t), F);
    assert_non_null(strstr(ea_last_error(), "NUL"));
    assert_int_equal(ea_esap_spectrum_parse("", 0, "empty.json", &t), F);
    assert_int_equal(ea_esap_spectrum_parse("42", 2, "num.json", &t), F);
    assert_non_null(strstr(ea_last_error(), "JSON object"));
    assert_int_equal(ea_esap_spectrum_parse("{\"format\": ", 11, "cut.json", &t), F);
    free(g);
    ea_esap_spectrum_free(&s);
}

/* ---- handshake comparison ------------------------------------------------------------- */

static void test_compare(void **state) {
    (void)state;
    ea_esap_spectrum a = random_spectrum(41, 64, 0), b = random_spectrum(42, 96, 0);
    ea_esap_handshake h;
    assert_int_equal(ea_esap_compare(&a, &a, 0, 1, &h), EA_OK);
    printf("self: r = %.17g, verdict %s\n", h.ck_pearson, h.converged ? "converged" : "diverged");
    assert_true(fabs(h.ck_pearson - 1.0) < 1e-15 && h.converged);
    assert_int_equal(ea_esap_compare(&a, &b, 0, 1, &h), EA_OK);
    printf("a (d=64) vs b (d=96): K=%d r=%.6f Df %.3f / %.3f; controls iso %.4f / %.4f, power %.4f / %.4f\n", h.K,
           h.ck_pearson, h.df_a, h.df_b, h.a_vs_isotropic, h.b_vs_isotropic, h.a_vs_powerlaw, h.b_vs_powerlaw);
    assert_int_equal(h.K, 64);
    assert_true(h.threshold == EA_ESAP_CONVERGED_R);
    assert_true(h.converged == (h.ck_pearson > 0.9));
    /* Reference: the controls are Pearson of the curves against spectra built independently here. */
    double *ev = malloc(96 * sizeof *ev), ck[64];
    for (int i = 0; i < 64; i++) ev[i] = 1.0 / (i + 1);
    ea_esap_spectrum p;
    assert_int_equal(ea_esap_spectrum_init(&p, ev, 64, 0, "power", "wte"), EA_OK);
    double r_pow = ea_esap_pearson(a.ck, p.ck, 64);
    assert_true(fabs(r_pow - h.a_vs_powerlaw) < 1e-15);
    ea_esap_spectrum_free(&p);
    /* isotropic control is the same function with the same seed (deterministic) */
    assert_int_equal(ea_esap_isotropic_spectrum(64, 640, 1, ev), EA_OK);
    ea_esap_cumulative(ev, 64, 64, ck);
    assert_true(fabs(ea_esap_pearson(a.ck, ck, 64) - h.a_vs_isotropic) < 1e-15);
    /* K larger than a curve, and K = 1 (no correlation), are refused */
    assert_int_equal(ea_esap_compare(&a, &b, 65, 1, &h), EA_ERR_ARG);
    assert_int_equal(ea_esap_compare(&a, &b, 1, 1, &h), EA_ERR_ARG);
    free(ev);
    ea_esap_spectrum_free(&a);
    ea_esap_spectrum_free(&b);
}

/* Marchenko–Pastur: the sample covariance of n isotropic vectors has E[Σλ²] / (Σλ)² ≈
 * (1 + d/n) / d, so Df ≈ d / (1 + d/n); its sampling spread is well under 2% at d = 64, n = 640. */
static void test_isotropic_control(void **state) {
    (void)state;
    int d = 64, n = 640;
    double ev[64], ev2[64];
    assert_int_equal(ea_esap_isotropic_spectrum(d, n, 7, ev), EA_OK);
    assert_int_equal(ea_esap_isotropic_spectrum(d, n, 7, ev2), EA_OK);
    assert_memory_equal(ev, ev2, sizeof ev);
    double s = 0, sq = 0;
    for (int i = 0; i < d; i++) {
        s += ev[i];
        sq += ev[i] * ev[i];
        if (i) assert_true(ev[i] <= ev[i - 1]);
    }
    double df = s * s / sq, want = d / (1.0 + (double)d / n);
    printf("isotropic d=%d n=%d: Df %.3f, Marchenko-Pastur %.3f, trace/d %.4f\n", d, n, df, want, s / d);
    assert_true(fabs(df - want) < 0.03 * want);
    assert_true(fabs(s / d - 1.0) < 0.05); /* unit variance: mean eigenvalue ≈ 1 within ~5 s.e. */
    /* The same sample drawn here (n rows of d standard normals from ea_rng seeded with 7, row
     * after row), its covariance two-pass in double and eigenvalues by LAPACK: the control is the
     * spectrum of that sample, not merely some spectrum near Marchenko–Pastur. */
    ea_rng r;
    ea_rng_seed(&r, 7);
    double *x = malloc(sizeof(double) * (size_t)n * d), *c = calloc((size_t)d * d, sizeof(double)), mu[64] = {0}, w[64];
    for (int i = 0; i < n * d; i++) x[i] = ea_rng_normal(&r);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) mu[j] += x[i * d + j] / n;
    for (int i = 0; i < n; i++)
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++) c[a * d + b] += (x[i * d + a] - mu[a]) * (x[i * d + b] - mu[b]) / (n - 1);
    assert_int_equal(LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'N', 'U', d, c, d, w), 0);
    double worst = 0;
    for (int i = 0; i < d; i++) worst = fmax(worst, fabs(ev[i] - w[d - 1 - i]));
    printf("isotropic control vs the same sample computed here: max |diff| %.3g\n", worst);
    assert_true(worst < 1e-10);
    assert_int_equal(ea_esap_isotropic_spectrum(d, n, 8, ev2), EA_OK);
    assert_true(memcmp(ev, ev2, sizeof ev) != 0);
    free(x);
    free(c);
}


/* ---- with the bundled model ------------------------------------------------------------ */

typedef struct {
    int layer, n_seen;
    float *rows; /* every captured row, in text order */
    int off;
} capture_all;

static ea_status keep_rows(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    capture_all *c = user;
    if (site != EA_SITE_HIDDEN || layer != c->layer) return 0;
    for (int r = 0; r < n; r++) memcpy(c->rows + (size_t)(c->off + pos0 + r) * d, x + (size_t)r * ld, (size_t)d * sizeof(float));
    c->n_seen += n;
    return 0;
}

/* The hidden collector (which stops each pass after the captured layer) against a plain capture
 * of every row of full passes, averaged and covaried here in float64. */
static void test_hidden_collect_matches_capture(void **state) {
    (void)state;
    ea_model *m;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    const ea_config *cfg = ea_model_config(m);
    int d = cfg->n_embd, n = 300, ctx = 64, layer = 1;
    int *ids = malloc((size_t)n * sizeof *ids);
    ea_rng r;
    ea_rng_seed(&r, 51);
    for (int i = 0; i < n; i++) ids[i] = (int)ea_rng_below(&r, 40); /* few distinct tokens: many repeats */
    ea_esap_hidden *h;
    assert_int_equal(ea_esap_hidden_collect(m, layer, ids, (size_t)n, ctx, NULL, NULL, NULL, &h), EA_OK);
    assert_int_equal((int)ea_esap_hidden_positions(h), n);

    capture_all c = {.layer = layer, .rows = malloc((size_t)n * d * sizeof(float))};
    ea_kvcache *cache;
    assert_int_equal(ea_kvcache_init(&cache, cfg, ctx, NULL), EA_OK);
    ea_model_set_capture(m, keep_rows, &c);
    for (int off = 0; off < n; off += ctx) {
        int len = n - off < ctx ? n - off : ctx;
        c.off = off;
        ea_kvcache_reset(cache);
        assert_int_equal(ea_model_forward(m, cache, ids + off, len, NULL, 0), EA_OK);
    }
    ea_model_set_capture(m, NULL, NULL);
    assert_int_equal(c.n_seen, n);

    /* per-token means */
    double worst = 0;
    float *mean = malloc((size_t)d * sizeof *mean);
    for (int tok = 0; tok < 40; tok++) {
        int cnt = 0;
        double *acc = calloc((size_t)d, sizeof *acc);
        for (int i = 0; i < n; i++)
            if (ids[i] == tok) {
                cnt++;
                for (int j = 0; j < d; j++) acc[j] += c.rows[(size_t)i * d + j];
            }
        assert_int_equal(ea_esap_hidden_token_count(h, tok), cnt);
        if (cnt) {
            assert_int_equal(ea_esap_hidden_token_mean(h, tok, mean), EA_OK);
            for (int j = 0; j < d; j++) worst = fmax(worst, fabs(mean[j] - acc[j] / cnt));
        } else {
            assert_int_equal(ea_esap_hidden_token_mean(h, tok, mean), EA_ERR_ARG);
        }
        free(acc);
    }
    /* covariance of all positions, two-pass */
    double *mu = calloc((size_t)d, sizeof *mu), *ref = calloc((size_t)d * d, sizeof *ref), *got = malloc((size_t)d * d * sizeof *got);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) mu[j] += c.rows[(size_t)i * d + j] / (double)n;
    for (int i = 0; i < n; i++)
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++)
                ref[(size_t)a * d + b] += (c.rows[(size_t)i * d + a] - mu[a]) * (c.rows[(size_t)i * d + b] - mu[b]) / (n - 1);
    assert_int_equal(ea_esap_hidden_covariance(h, got), EA_OK);
    double cov_err = 0, cov_max = 0;
    for (size_t i = 0; i < (size_t)d * d; i++) {
        cov_err = fmax(cov_err, fabs(got[i] - ref[i]));
        cov_max = fmax(cov_max, fabs(ref[i]));
    }
    printf("hidden layer %d, %d tokens in windows of %d: token means max diff %.3e; covariance max diff %.3e (max |C| %.3e)\n",
           layer, n, ctx, worst, cov_err, cov_max);
    assert_true(worst < 1e-5);
    assert_true(cov_err < 1e-9 * cov_max);

    /* anchors from the model with itself: every token pairs with itself; hidden keeps the seen ones */
    ea_tokenizer *t;
    assert_int_equal(ea_tokenizer_load_dir(TEST_MODEL_DIR, &t), EA_OK);
    ea_esap_anchors an;
    ea_esap_repr wte = {.kind = EA_ESAP_REPR_WTE}, hid = {.kind = EA_ESAP_REPR_HIDDEN, .layer_a = layer, .layer_b = layer};
    assert_int_equal(ea_esap_anchors_build(m, m, t, t, &wte, NULL, NULL, &an), EA_OK);
    assert_int_equal(an.n, cfg->vocab_size);
    for (int i = 0; i < an.n; i++) assert_true(an.id_a[i] == i && an.id_b[i] == i);
    assert_memory_equal(an.a + (size_t)777 * d, ea_model_wte(m) + (size_t)777 * d, (size_t)d * sizeof(float));
    ea_esap_anchors_free(&an);
    assert_int_equal(ea_esap_anchors_build(m, m, t, t, &hid, h, h, &an), EA_OK);
    int distinct = 0;
    for (int tok = 0; tok < 40; tok++) distinct += ea_esap_hidden_token_count(h, tok) > 0;
    assert_int_equal(an.n, distinct);
    ea_esap_anchors_free(&an);
    assert_int_equal(ea_esap_anchors_build(m, m, t, t, &hid, NULL, NULL, &an), EA_ERR_ARG);

    ea_tokenizer_free(t);
    ea_kvcache_free(cache);
    ea_esap_hidden_free(h);
    ea_model_free(m);
    free(ids); free(c.rows); free(mean); free(mu); free(ref); free(got);
}

/* The wte spectrum message against a closed form that needs no eigen-decomposition:
 * Df = (tr C)² / ‖C‖_F² for the covariance C of the embedding rows (computed here). */
static void test_wte_spectrum_df(void **state) {
    (void)state;
    ea_model *m;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    const ea_config *cfg = ea_model_config(m);
    int d = cfg->n_embd, n = cfg->vocab_size;
    const float *w = ea_model_wte(m);
    double *mu = calloc((size_t)d, sizeof *mu), *x = malloc((size_t)n * d * sizeof *x), *cv = calloc((size_t)d * d, sizeof *cv);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) mu[j] += w[(size_t)i * d + j];
    for (int j = 0; j < d; j++) mu[j] /= n;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) x[(size_t)i * d + j] = w[(size_t)i * d + j] - mu[j];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, n, 1.0 / (n - 1), x, d, 0.0, cv, d);
    double tr = 0, fro = 0;
    for (int a = 0; a < d; a++) {
        tr += cv[(size_t)a * d + a];
        for (int b = a; b < d; b++) fro += (a == b ? 1.0 : 2.0) * cv[(size_t)a * d + b] * cv[(size_t)a * d + b];
    }
    ea_esap_source src = {.repr = {.kind = EA_ESAP_REPR_WTE}};
    ea_esap_spectrum s;
    assert_int_equal(ea_esap_spectrum_from_model(m, NULL, 0, &src, 0, &s), EA_OK);
    double df = tr * tr / fro;
    printf("wte spectrum: Df %.12f, (tr C)^2/||C||_F^2 = %.12f, site %s, fingerprint %s\n", s.df, df, s.site,
           s.fingerprint);
    assert_true(fabs(s.df - df) < 1e-9 * df);
    assert_string_equal(s.site, "wte");
    assert_string_equal(s.fingerprint, ea_model_fingerprint(m));
    assert_int_equal(s.d, d);
    ea_esap_spectrum_free(&s);
    ea_model_free(m);
    free(mu); free(x); free(cv);
}

static void test_repr_parse(void **state) {
    (void)state;
    ea_esap_repr r;
    assert_int_equal(ea_esap_repr_parse("wte", &r), EA_OK);
    assert_int_equal(r.kind, EA_ESAP_REPR_WTE);
    assert_int_equal(ea_esap_repr_parse("hidden:3", &r), EA_OK);
    assert_true(r.kind == EA_ESAP_REPR_HIDDEN && r.layer_a == 3 && r.layer_b == 3);
    assert_int_equal(ea_esap_repr_parse("hidden:last", &r), EA_OK);
    assert_true(r.layer_a == -1 && r.layer_b == -1);
    assert_int_equal(ea_esap_repr_parse("hidden:2,last", &r), EA_OK);
    assert_true(r.layer_a == 2 && r.layer_b == -1);
    const char *bad[] = {"", "hidden", "hidden:", "hidden:-1", "hidden:2,", "hidden:,2", "hidden:1x", "hidden:9999999", "WTE", "q:1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(ea_esap_repr_parse(bad[i], &r), EA_ERR_ARG);
        assert_non_null(strstr(ea_last_error(), bad[i]));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_procrustes_planted_rotation),
        cmocka_unit_test(test_procrustes_planted_semi_orthogonal),
        cmocka_unit_test(test_procrustes_2d_closed_form),
        cmocka_unit_test(test_procrustes_optimal),
        cmocka_unit_test(test_procrustes_rejects_nan),
        cmocka_unit_test(test_retrieval_matches_brute_force),
        cmocka_unit_test(test_retrieval_csls_hub),
        cmocka_unit_test(test_align_self_rotated),
        cmocka_unit_test(test_align_different_widths),
        cmocka_unit_test(test_align_unrelated_is_chance),
        cmocka_unit_test(test_align_csls_matches_brute_force),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_basis_project_lift),
        cmocka_unit_test(test_message_eval),
        cmocka_unit_test(test_spectrum_known_values),
        cmocka_unit_test(test_pearson_closed_form),
        cmocka_unit_test(test_spectrum_round_trip),
        cmocka_unit_test(test_spectrum_malformed),
        cmocka_unit_test(test_compare),
        cmocka_unit_test(test_isotropic_control),
        cmocka_unit_test(test_hidden_collect_matches_capture),
        cmocka_unit_test(test_wte_spectrum_df),
        cmocka_unit_test(test_repr_parse),
    };
    return TEST_RUN(tests, NULL, NULL);
}
