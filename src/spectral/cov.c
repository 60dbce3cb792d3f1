/* Streaming covariance in float64: batch-centred dsyrk updates merged with Chan et al.'s formula.
 *
 * State is (n, mean, M2) with M2 = Σ (x - mean)(x - mean)ᵀ, upper triangle, row-major. Rows are
 * collected into a batch of up to EA_COV_BATCH rows of doubles; a full batch is centred on its
 * own mean and folded in with ONE dsyrk: the centred rows plus one extra row δ·sqrt(n_a n_b / n), whose
 * outer product is exactly Chan's correction term (δ = batch mean − running mean). That keeps the
 * whole update inside a single BLAS-3 call instead of a dsyrk plus a memory-bound dsyr. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "spectral/cov_internal.h"

/* Rows per dsyrk: large enough that dsyrk runs near its peak (k ≥ 256), small enough that the
 * batch of doubles (256 × 768 × 8 = 1.5 MB for GPT-2 small) stays cache-friendly. */
#define EA_COV_BATCH 256

ea_status ea_cov_init(ea_cov **out, int d) {
    *out = NULL;
    if (d < 1) return ea_error(EA_ERR_ARG, "ea_cov_init: dimension %d must be positive", d);
    size_t dd, batch; /* batch: the largest buffer, (EA_COV_BATCH + 1) rows, checked once here */
    if (ea_mul_size((size_t)d, (size_t)d, &dd) || ea_mul_size(dd, sizeof(double), &dd) ||
        ea_mul_size((size_t)d * (EA_COV_BATCH + 1), sizeof(double), &batch))
        return ea_error(EA_ERR_NOMEM, "ea_cov_init: dimension %d overflows", d);
    ea_cov *c = calloc(1, sizeof *c);
    if (!c) return ea_error(EA_ERR_NOMEM, "ea_cov_init: out of memory");
    c->d = d;
    c->mean = calloc((size_t)d, sizeof(double));
    c->bmean = calloc((size_t)d, sizeof(double));
    c->m2 = calloc(1, dd);
    /* The batch buffer starts at 8 rows and doubles up to EA_COV_BATCH only as pending rows pile
     * up: an accumulator that sees few rows in all (position 0 of each window) stays small. */
    c->cap = 8;
    c->buf = malloc((size_t)(c->cap + 1) * (size_t)d * sizeof(double)); /* + the Chan row */
    if (!c->mean || !c->bmean || !c->m2 || !c->buf) {
        ea_cov_free(c);
        return ea_error(EA_ERR_NOMEM, "ea_cov_init: cannot allocate a %d x %d accumulator", d, d);
    }
    *out = c;
    return EA_OK;
}

void ea_cov_free(ea_cov *c) {
    if (!c) return;
    free(c->mean);
    free(c->bmean);
    free(c->m2);
    free(c->buf);
    free(c);
}

void ea_cov_reset(ea_cov *c) {
    size_t d = (size_t)c->d;
    c->n = 0;
    c->pending = 0;
    memset(c->mean, 0, d * sizeof(double));
    memset(c->m2, 0, d * d * sizeof(double));
}

int ea_cov_dim(const ea_cov *c) { return c->d; }

double ea_cov_count(const ea_cov *c) { return c->n + (double)c->pending; }

/* Fold the pending rows into (n, mean, M2). */
static void cov_flush_batch(ea_cov *c) {
    int d = c->d, nb = c->pending;
    if (nb == 0) return;
    double *buf = c->buf, *bm = c->bmean;
    /* Batch mean, then centre in place. Row order is fixed, so results never depend on threads. */
    memset(bm, 0, (size_t)d * sizeof(double));
    for (int r = 0; r < nb; r++) {
        const double *row = buf + (size_t)r * d;
        for (int j = 0; j < d; j++) bm[j] += row[j];
    }
    double inv = 1.0 / nb;
    for (int j = 0; j < d; j++) bm[j] *= inv;
    for (int r = 0; r < nb; r++) {
        double *row = buf + (size_t)r * d;
        for (int j = 0; j < d; j++) row[j] -= bm[j];
    }
    double na = c->n, n = na + nb;
    int k = nb;
    if (na > 0) {
        /* Chan et al.: M2 += M2_b + δδᵀ n_a n_b / n, with the δ term as one more dsyrk row. */
        double w = sqrt(na * (double)nb / n);
        double *extra = buf + (size_t)nb * d;
        for (int j = 0; j < d; j++) extra[j] = (bm[j] - c->mean[j]) * w;
        k++;
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, k, 1.0, buf, d, 1.0, c->m2, d);
    double f = (double)nb / n;
    for (int j = 0; j < d; j++) c->mean[j] += (bm[j] - c->mean[j]) * f;
    c->n = n;
    c->pending = 0;
}

void ea_cov_flush_pending(const ea_cov *c) {
    /* Logically const: the statistics the accumulator represents do not change, only where the
     * pending rows live. (Not safe to call concurrently on one accumulator, like every accessor.) */
    cov_flush_batch((ea_cov *)c);
}

/* Make room for one more pending row: grow the buffer towards EA_COV_BATCH rows, or fold the
 * batch in when it is full (or when growing fails: a smaller batch is only slower). */
static void cov_make_room(ea_cov *c) {
    if (c->pending < c->cap) return;
    if (c->cap < EA_COV_BATCH) {
        int cap = c->cap * 2 > EA_COV_BATCH ? EA_COV_BATCH : c->cap * 2;
        double *nb = realloc(c->buf, (size_t)(cap + 1) * (size_t)c->d * sizeof(double));
        if (nb) {
            c->buf = nb;
            c->cap = cap;
            return;
        }
    }
    cov_flush_batch(c);
}

/* Exponent all ones: Inf or NaN. Bit test so the scan vectorizes without -ffast-math. */
static int find_nonfinite_f32(const float *x, int n, int d, int ld, int *row, int *col) {
    for (int r = 0; r < n; r++) {
        const uint32_t *p = (const uint32_t *)(const void *)(x + (size_t)r * ld);
        uint32_t bad = 0;
        for (int j = 0; j < d; j++) bad |= ((p[j] & 0x7f800000u) == 0x7f800000u);
        if (bad) {
            for (int j = 0; j < d; j++)
                if (!isfinite(x[(size_t)r * ld + j])) {
                    *row = r;
                    *col = j;
                    return 1;
                }
        }
    }
    return 0;
}

static int find_nonfinite_f64(const double *x, int n, int d, int ld, int *row, int *col) {
    for (int r = 0; r < n; r++) {
        const uint64_t *p = (const uint64_t *)(const void *)(x + (size_t)r * ld);
        uint64_t bad = 0;
        for (int j = 0; j < d; j++)
            bad |= ((p[j] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull);
        if (bad) {
            for (int j = 0; j < d; j++)
                if (!isfinite(x[(size_t)r * ld + j])) {
                    *row = r;
                    *col = j;
                    return 1;
                }
        }
    }
    return 0;
}

static ea_status check_add_args(const ea_cov *c, const void *x, int n, int ld) {
    if (n < 0 || (n > 0 && !x)) return ea_error(EA_ERR_ARG, "ea_cov_add: %d rows with data %p", n, x);
    if (ld < c->d) return ea_error(EA_ERR_ARG, "ea_cov_add: row stride %d is below the dimension %d", ld, c->d);
    return EA_OK;
}

ea_status ea_cov_add(ea_cov *c, const float *x, int n, int ld) {
    ea_status st = check_add_args(c, x, n, ld);
    if (st) return st;
    int bad_r, bad_c;
    /* Validate everything first so a rejected call leaves the accumulator untouched. */
    if (find_nonfinite_f32(x, n, c->d, ld, &bad_r, &bad_c))
        return ea_error(EA_ERR_NUMERIC, "ea_cov_add: row %d, dimension %d is %s (NaN/Inf rejected)", bad_r,
                        bad_c, isnan(x[(size_t)bad_r * ld + bad_c]) ? "NaN" : "Inf");
    int d = c->d;
    for (int r = 0; r < n; r++) {
        cov_make_room(c);
        const float *src = x + (size_t)r * ld;
        double *dst = c->buf + (size_t)c->pending++ * d;
        for (int j = 0; j < d; j++) dst[j] = (double)src[j];
    }
    return EA_OK;
}

ea_status ea_cov_add_f64(ea_cov *c, const double *x, int n, int ld) {
    ea_status st = check_add_args(c, x, n, ld);
    if (st) return st;
    int bad_r, bad_c;
    if (find_nonfinite_f64(x, n, c->d, ld, &bad_r, &bad_c))
        return ea_error(EA_ERR_NUMERIC, "ea_cov_add_f64: row %d, dimension %d is %s (NaN/Inf rejected)", bad_r,
                        bad_c, isnan(x[(size_t)bad_r * ld + bad_c]) ? "NaN" : "Inf");
    int d = c->d;
    for (int r = 0; r < n; r++) {
        cov_make_room(c);
        memcpy(c->buf + (size_t)c->pending++ * d, x + (size_t)r * ld, (size_t)d * sizeof(double));
    }
    return EA_OK;
}

ea_status ea_cov_merge_raw(ea_cov *dst, double nb, const double *mean_b, const double *m2_b) {
    int d = dst->d;
    ea_cov_flush_pending(dst);
    if (nb <= 0) return EA_OK;
    double na = dst->n, n = na + nb;
    double w = na * nb / n, f = nb / n;
    double *delta = dst->bmean;
    for (int j = 0; j < d; j++) delta[j] = mean_b[j] - dst->mean[j];
    for (int i = 0; i < d; i++) {
        double *row = dst->m2 + (size_t)i * d;
        const double *rb = m2_b + (size_t)i * d;
        double di = delta[i] * w;
        for (int j = i; j < d; j++) row[j] += rb[j] + di * delta[j];
    }
    for (int j = 0; j < d; j++) dst->mean[j] += delta[j] * f;
    dst->n = n;
    return EA_OK;
}

ea_status ea_cov_merge(ea_cov *dst, const ea_cov *src) {
    if (dst == src) return ea_error(EA_ERR_ARG, "ea_cov_merge: cannot merge an accumulator into itself");
    if (dst->d != src->d)
        return ea_error(EA_ERR_MISMATCH, "ea_cov_merge: dimensions differ (%d vs %d)", dst->d, src->d);
    ea_cov_flush_pending(src);
    return ea_cov_merge_raw(dst, src->n, src->mean, src->m2);
}

const double *ea_cov_mean(const ea_cov *c) {
    ea_cov_flush_pending(c);
    return c->mean;
}

ea_status ea_cov_matrix(const ea_cov *c, int standardize, double *out) {
    ea_cov_flush_pending(c);
    int d = c->d;
    double div = c->n > 1 ? c->n - 1 : 1;
    const double *m2 = c->m2;
    for (int i = 0; i < d; i++)
        for (int j = i; j < d; j++) {
            double v = m2[(size_t)i * d + j] / div;
            out[(size_t)i * d + j] = v;
            out[(size_t)j * d + i] = v;
        }
    if (!standardize) return EA_OK;
    /* Correlation: r_ij = c_ij / sqrt(c_ii c_jj). A dimension with zero variance has no
     * correlation: 1 on its diagonal, 0 elsewhere, so it adds one unit eigenvalue. */
    double *s = c->bmean; /* scratch: 1/sd per dimension (0 for constant dimensions) */
    for (int i = 0; i < d; i++) {
        double v = out[(size_t)i * d + i];
        s[i] = v > 0 ? 1.0 / sqrt(v) : 0.0;
    }
    for (int i = 0; i < d; i++) {
        for (int j = 0; j < d; j++) out[(size_t)i * d + j] *= s[i] * s[j];
        out[(size_t)i * d + i] = 1.0;
    }
    return EA_OK;
}
