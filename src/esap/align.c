/* Procrustes alignment on a training split of anchors, evaluated on the held-out split, with
 * a shuffled-correspondence null. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "esap/esap_internal.h"

/* Stream for the null's shuffle, distinct from the split's. */
#define NULL_SEED_SALT 0x6e756c6c5f736565ull

void ea_esap_null_partners(const int *train, int n_train, uint64_t seed, int shuffle, int *partner) {
    memcpy(partner, train, (size_t)n_train * sizeof *partner);
    ea_rng rng;
    ea_rng_seed(&rng, (seed ^ NULL_SEED_SALT) + (uint64_t)shuffle);
    for (int i = n_train - 1; i > 0; i--) {
        int j = (int)ea_rng_below(&rng, (uint64_t)i + 1), t = partner[i];
        partner[i] = partner[j];
        partner[j] = t;
    }
}

ea_status ea_esap_fit_rotation(const float *za, const float *zb, int k, const int *src, const int *dst, int m, double *w) {
    double *a = ea_esap_alloc((size_t)m, (size_t)k, sizeof *a), *b = ea_esap_alloc((size_t)m, (size_t)k, sizeof *b);
    if (!a || !b) {
        free(a); free(b);
        return ea_error(EA_ERR_NOMEM, "align: cannot allocate %d anchors of %d dims", m, k);
    }
    for (int r = 0; r < m; r++)
        for (int j = 0; j < k; j++) {
            a[(size_t)r * k + j] = za[(size_t)src[r] * k + j];
            b[(size_t)r * k + j] = zb[(size_t)dst[r] * k + j];
        }
    ea_status st = ea_procrustes(a, b, m, k, k, w);
    free(a); free(b);
    return st;
}

/* out[r] = z[rows[r]] · W (k × k), through dgemm on a float64 copy (tmp: m × k doubles). */
static void map_rows(const float *z, const int *rows, int m, int k, const double *w, double *tmp, float *out) {
    for (int r = 0; r < m; r++)
        for (int j = 0; j < k; j++) tmp[(size_t)r * k + j] = z[(size_t)rows[r] * k + j];
    double *res = tmp + (size_t)m * k;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, k, k, 1.0, tmp, k, w, k, 0.0, res, k);
    for (size_t i = 0; i < (size_t)m * k; i++) out[i] = (float)res[i];
}

static void gather(const float *z, const int *rows, int m, int k, float *out) {
    for (int r = 0; r < m; r++) memcpy(out + (size_t)r * k, z + (size_t)rows[r] * k, (size_t)k * sizeof *out);
}

static double mean_pair_cos(const float *x, const float *y, int m, int k) {
    double total = 0;
    for (int r = 0; r < m; r++) {
        double xy = 0, xx = 0, yy = 0;
        for (int j = 0; j < k; j++) {
            double a = x[(size_t)r * k + j], b = y[(size_t)r * k + j];
            xy += a * b;
            xx += a * a;
            yy += b * b;
        }
        total += xx > 0 && yy > 0 ? xy / sqrt(xx * yy) : 0.0;
    }
    return total / m;
}

/* Fit W on pairs (za[src[r]], zb[dst[r]]); report the in-sample cosine and the held-out
 * retrieval of (za[test] W, zb[test]). */
static ea_status fit_and_eval(const float *za, const float *zb, int k, const int *src, const int *dst, int m,
                              const int *test, int n_test, double *w, double *train_cos, ea_esap_retrieval *res) {
    ea_status st = EA_OK;
    int mm = m > n_test ? m : n_test;
    float *x = ea_esap_alloc((size_t)mm, (size_t)k, sizeof *x), *y = ea_esap_alloc((size_t)mm, (size_t)k, sizeof *y);
    double *tmp = ea_esap_alloc((size_t)mm, 2 * (size_t)k, sizeof *tmp);
    if (!x || !y || !tmp) {
        st = ea_error(EA_ERR_NOMEM, "align: cannot allocate %d anchors of %d dims", mm, k);
        goto done;
    }
    if ((st = ea_esap_fit_rotation(za, zb, k, src, dst, m, w))) goto done;
    map_rows(za, src, m, k, w, tmp, x);
    gather(zb, dst, m, k, y);
    *train_cos = mean_pair_cos(x, y, m, k);
    map_rows(za, test, n_test, k, w, tmp, x);
    gather(zb, test, n_test, k, y);
    st = ea_esap_retrieve(x, y, n_test, k, EA_ESAP_CSLS_K, res);
done:
    free(x); free(y); free(tmp);
    return st;
}

/* One shuffled W is by chance a little aligned or anti-aligned with the true map (its mean pair
 * cosine has a spread of about 1/sqrt(k·Df)), which widens the spread of a single null; the
 * average of several shuffles estimates the null level more steadily. */
ea_status ea_esap_shuffled_null(const float *za, const float *zb, int k, const int *train, int n_train, const int *test,
                             int n_test, uint64_t seed, ea_esap_retrieval *null, double *null_train_cos) {
    memset(null, 0, sizeof *null);
    *null_train_cos = 0;
    int *shuf = malloc((size_t)(n_train > 0 ? n_train : 1) * sizeof *shuf);
    double *w = ea_esap_alloc((size_t)k, (size_t)k, sizeof *w);
    ea_status st = EA_OK;
    if (!shuf || !w) {
        st = ea_error(EA_ERR_NOMEM, "align: cannot allocate for %d anchors", n_train);
        goto done;
    }
    for (int sh = 0; sh < EA_ESAP_NULL_SHUFFLES; sh++) {
        ea_esap_retrieval res;
        double tc;
        ea_esap_null_partners(train, n_train, seed, sh, shuf);
        if ((st = fit_and_eval(za, zb, k, train, shuf, n_train, test, n_test, w, &tc, &res))) goto done;
        *null_train_cos += tc / EA_ESAP_NULL_SHUFFLES;
        null->p_at_1 += res.p_at_1 / EA_ESAP_NULL_SHUFFLES;
        null->p_at_10 += res.p_at_10 / EA_ESAP_NULL_SHUFFLES;
        null->csls_p_at_1 += res.csls_p_at_1 / EA_ESAP_NULL_SHUFFLES;
        null->csls_p_at_10 += res.csls_p_at_10 / EA_ESAP_NULL_SHUFFLES;
        null->mean_cos += res.mean_cos / EA_ESAP_NULL_SHUFFLES;
        null->n = res.n;
    }
done:
    free(shuf);
    free(w);
    return st;
}

ea_status ea_esap_eval_rotation(const float *za, const float *zb, int k, const int *rows, int m, const double *w,
                             double *pair_cos, ea_esap_retrieval *res) {
    float *x = ea_esap_alloc((size_t)m, (size_t)k, sizeof *x), *y = ea_esap_alloc((size_t)m, (size_t)k, sizeof *y);
    double *tmp = ea_esap_alloc((size_t)m, 2 * (size_t)k, sizeof *tmp);
    ea_status st = EA_OK;
    if (!x || !y || !tmp) st = ea_error(EA_ERR_NOMEM, "align: cannot allocate %d anchors of %d dims", m, k);
    else {
        map_rows(za, rows, m, k, w, tmp, x);
        gather(zb, rows, m, k, y);
        if (pair_cos) *pair_cos = mean_pair_cos(x, y, m, k);
        if (res) st = ea_esap_retrieve(x, y, m, k, EA_ESAP_CSLS_K, res);
    }
    free(x); free(y); free(tmp);
    return st;
}

ea_status ea_esap_align_eval(const float *za, const float *zb, int n, int k, int n_train, int n_test,
                             uint64_t seed, double *w_out, ea_esap_align_report *out) {
    memset(out, 0, sizeof *out);
    if (k < 1) return ea_error(EA_ERR_ARG, "align: rank %d must be positive", k);
    int *perm = malloc((size_t)(n > 0 ? n : 1) * sizeof *perm);
    double *w = ea_esap_alloc((size_t)k, (size_t)k, sizeof *w);
    ea_status st = EA_OK;
    if (!perm || !w) {
        st = ea_error(EA_ERR_NOMEM, "align: cannot allocate for %d anchors", n);
        goto done;
    }
    if ((st = ea_esap_split(n, n_train, n_test, seed, perm))) goto done;
    const int *train = perm, *test = perm + (n - n_test);
    out->rank = k;
    out->train_anchors = n_train;
    out->test_anchors = n_test;
    out->chance_p_at_1 = 1.0 / n_test;
    if ((st = fit_and_eval(za, zb, k, train, train, n_train, test, n_test, w, &out->train_cosine, &out->test)))
        goto done;
    if (w_out) memcpy(w_out, w, (size_t)k * k * sizeof *w);
    st = ea_esap_shuffled_null(za, zb, k, train, n_train, test, n_test, seed, &out->null, &out->null_train_cosine);
done:
    free(perm); free(w);
    return st;
}
