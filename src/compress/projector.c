/* One PCA projector: mean μ (d), orthonormal basis E (d × k), all d eigenvalues.
 * compress: z = (x − μ) E; reconstruct: x̂ = μ + z Eᵀ (both one cblas_sgemm). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ea/compress.h"

struct ea_projector {
    ea_site_ref ref;
    int d, k;
    float *mean;  /* d */
    float *basis; /* d × k */
    float *eval;  /* d */
};

static ea_status projector_alloc(ea_site_ref ref, int d, int k, ea_projector **out) {
    *out = NULL;
    size_t dk;
    if (d <= 0 || k <= 0 || k > d) return ea_error(EA_ERR_ARG, "projector: invalid d = %d, k = %d", d, k);
    if (ea_mul_size((size_t)d, (size_t)k, &dk)) return ea_error(EA_ERR_NOMEM, "projector: d × k overflows");
    ea_projector *p = calloc(1, sizeof *p);
    if (!p) return ea_error(EA_ERR_NOMEM, "projector: out of memory");
    p->ref = ref;
    p->d = d;
    p->k = k;
    p->mean = malloc((size_t)d * sizeof *p->mean);
    p->eval = malloc((size_t)d * sizeof *p->eval);
    p->basis = malloc(dk * sizeof *p->basis);
    if (!p->mean || !p->eval || !p->basis) {
        ea_projector_free(p);
        return ea_error(EA_ERR_NOMEM, "projector: cannot allocate d = %d, k = %d", d, k);
    }
    *out = p;
    return EA_OK;
}

void ea_projector_free(ea_projector *p) {
    if (!p) return;
    free(p->mean);
    free(p->basis);
    free(p->eval);
    free(p);
}

static int rule_k(const double *ev, int d, ea_rank_rule rule) {
    if (rule.rank > 0) return rule.rank < d ? rule.rank : d;
    /* C(d) computed by summation may land a rounding error below 1, so "all the variance"
     * is taken literally instead of through the cumulative sum. */
    if (rule.variance >= 1.0) return d;
    int k = ea_spectrum_k_for(ev, d, rule.variance);
    if (k < 1) k = 1;
    return k > d ? d : k;
}

ea_status ea_projector_from_matrix(const double *cov, const double *mean, int d, ea_rank_rule rule,
                                   ea_site_ref ref, ea_projector **out) {
    *out = NULL;
    if (d <= 0) return ea_error(EA_ERR_ARG, "projector: dimension %d", d);
    if (rule.rank <= 0 && !(rule.variance > 0 && rule.variance <= 1))
        return ea_error(EA_ERR_ARG, "projector: need a rank >= 1 or a variance target in (0, 1], got %g",
                        rule.variance);
    size_t dd;
    if (ea_mul_size((size_t)d, (size_t)d, &dd) || ea_mul_size(dd, sizeof(double), &dd))
        return ea_error(EA_ERR_NOMEM, "projector: d × d overflows");
    double *vec = malloc(dd), *val = malloc((size_t)d * sizeof *val);
    if (!vec || !val) {
        free(vec);
        free(val);
        return ea_error(EA_ERR_NOMEM, "projector: cannot allocate a %d × %d eigenbasis", d, d);
    }
    ea_status st = ea_eigh(cov, d, val, vec);
    if (st) goto done;
    int k = rule_k(val, d, rule);
    ea_projector *p;
    if ((st = projector_alloc(ref, d, k, &p))) goto done;
    for (int i = 0; i < d; i++) {
        p->mean[i] = (float)mean[i];
        p->eval[i] = (float)val[i];
    }
    for (int j = 0; j < k; j++) {
        /* Eigenvectors are defined up to sign: fix it so equal inputs give equal files. */
        int imax = 0;
        for (int i = 1; i < d; i++)
            if (fabs(vec[(size_t)i * d + j]) > fabs(vec[(size_t)imax * d + j])) imax = i;
        double s = vec[(size_t)imax * d + j] < 0 ? -1.0 : 1.0;
        for (int i = 0; i < d; i++) p->basis[(size_t)i * k + j] = (float)(s * vec[(size_t)i * d + j]);
    }
    *out = p;
done:
    free(vec);
    free(val);
    return st;
}

ea_status ea_projector_from_cov(const ea_cov *cov, ea_rank_rule rule, ea_site_ref ref, ea_projector **out) {
    *out = NULL;
    int d = ea_cov_dim(cov);
    if (ea_cov_count(cov) < 2)
        return ea_error(EA_ERR_ARG, "projector %s layer %d: fewer than 2 calibration rows", ea_site_name(ref.site),
                        ref.layer);
    size_t dd;
    if (d <= 0 || ea_mul_size((size_t)d, (size_t)d, &dd) || ea_mul_size(dd, sizeof(double), &dd))
        return ea_error(EA_ERR_NOMEM, "projector: d × d overflows");
    double *m = malloc(dd);
    if (!m) return ea_error(EA_ERR_NOMEM, "projector: cannot allocate a %d × %d covariance", d, d);
    ea_status st = ea_cov_matrix(cov, 0, m);
    if (!st) st = ea_projector_from_matrix(m, ea_cov_mean(cov), d, rule, ref, out);
    free(m);
    return st;
}

/* max |EᵀE − I| in float64 (the stored basis is float32, so ~1e-6 is the floor). */
static double ortho_error(const float *basis, int d, int k) {
    size_t dk = (size_t)d * k;
    double *e = malloc(dk * sizeof *e), *g = malloc((size_t)k * k * sizeof *g);
    if (!e || !g) {
        free(e);
        free(g);
        return INFINITY;
    }
    for (size_t i = 0; i < dk; i++) e[i] = basis[i];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, k, d, 1.0, e, k, 0.0, g, k);
    double worst = 0;
    for (int i = 0; i < k; i++)
        for (int j = i; j < k; j++) {
            double v = fabs(g[(size_t)i * k + j] - (i == j ? 1.0 : 0.0));
            if (!(v <= worst)) worst = v; /* NaN wins */
        }
    free(e);
    free(g);
    return worst;
}

double ea_projector_orthonormality_error(const ea_projector *p) { return ortho_error(p->basis, p->d, p->k); }

static const char *site_label(ea_site_ref r, char *buf, size_t n) {
    if (r.head >= 0)
        snprintf(buf, n, "layer %d %s head %d", r.layer, ea_site_name(r.site), r.head);
    else
        snprintf(buf, n, "layer %d %s", r.layer, ea_site_name(r.site));
    return buf;
}

static int first_nonfinite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return (int)(i < 0x7fffffff ? i : 0x7fffffff);
    return -1;
}

ea_status ea_projector_from_parts(const char *what, ea_site_ref ref, int d, int k, const float *mean,
                                  const float *basis, const float *eigenvalues, double tol,
                                  ea_projector **out) {
    *out = NULL;
    char lab[96];
    site_label(ref, lab, sizeof lab);
    if (d <= 0 || k <= 0 || k > d)
        return ea_error(EA_ERR_FORMAT, "%s: %s: basis has %d columns for dimension %d (need 1..d)", what, lab, k, d);
    int bad;
    if ((bad = first_nonfinite(mean, (size_t)d)) >= 0)
        return ea_error(EA_ERR_FORMAT, "%s: %s: mean[%d] is not finite", what, lab, bad);
    if ((bad = first_nonfinite(eigenvalues, (size_t)d)) >= 0)
        return ea_error(EA_ERR_FORMAT, "%s: %s: eigenvalue %d is not finite", what, lab, bad);
    if ((bad = first_nonfinite(basis, (size_t)d * k)) >= 0)
        return ea_error(EA_ERR_FORMAT, "%s: %s: basis entry %d is not finite", what, lab, bad);
    for (int i = 0; i < d; i++) {
        if (eigenvalues[i] < 0)
            return ea_error(EA_ERR_FORMAT, "%s: %s: eigenvalue %d is negative (%g)", what, lab, i, eigenvalues[i]);
        if (i && eigenvalues[i] > eigenvalues[i - 1])
            return ea_error(EA_ERR_FORMAT, "%s: %s: eigenvalues are not in descending order at %d", what, lab, i);
    }
    double oe = ortho_error(basis, d, k);
    if (!(oe <= tol))
        return ea_error(EA_ERR_FORMAT, "%s: %s: basis is not orthonormal (max |EᵀE - I| = %.3g > %.3g)", what, lab, oe,
                        tol);
    ea_projector *p;
    ea_status st = projector_alloc(ref, d, k, &p);
    if (st) return st;
    memcpy(p->mean, mean, (size_t)d * sizeof *mean);
    memcpy(p->eval, eigenvalues, (size_t)d * sizeof *eigenvalues);
    memcpy(p->basis, basis, (size_t)d * k * sizeof *basis);
    *out = p;
    return EA_OK;
}

ea_site_ref ea_projector_site(const ea_projector *p) { return p->ref; }
int ea_projector_dim(const ea_projector *p) { return p->d; }
int ea_projector_rank(const ea_projector *p) { return p->k; }
const float *ea_projector_mean(const ea_projector *p) { return p->mean; }
const float *ea_projector_basis(const ea_projector *p) { return p->basis; }
const float *ea_projector_eigenvalues(const ea_projector *p) { return p->eval; }

double ea_projector_variance_kept(const ea_projector *p) {
    double all = 0, kept = 0;
    for (int i = 0; i < p->d; i++) {
        all += p->eval[i];
        if (i < p->k) kept += p->eval[i];
    }
    return all > 0 ? kept / all : 1.0;
}

ea_status ea_projector_compress(const ea_projector *p, const float *x, int n, int ldx, float *z) {
    if (n < 0 || ldx < p->d) return ea_error(EA_ERR_ARG, "projector compress: n = %d, ldx = %d < d = %d", n, ldx, p->d);
    if (n == 0) return EA_OK;
    float *c = malloc((size_t)n * p->d * sizeof *c);
    if (!c) return ea_error(EA_ERR_NOMEM, "projector compress: cannot allocate %d rows", n);
    for (int r = 0; r < n; r++)
        for (int i = 0; i < p->d; i++) c[(size_t)r * p->d + i] = x[(size_t)r * ldx + i] - p->mean[i];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, p->k, p->d, 1.0f, c, p->d, p->basis, p->k, 0.0f, z,
                p->k);
    free(c);
    return EA_OK;
}

ea_status ea_projector_reconstruct(const ea_projector *p, const float *z, int n, float *x, int ldx) {
    if (n < 0 || ldx < p->d)
        return ea_error(EA_ERR_ARG, "projector reconstruct: n = %d, ldx = %d < d = %d", n, ldx, p->d);
    if (n == 0) return EA_OK;
    for (int r = 0; r < n; r++) memcpy(x + (size_t)r * ldx, p->mean, (size_t)p->d * sizeof *x);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, p->d, p->k, 1.0f, z, p->k, p->basis, p->k, 1.0f, x, ldx);
    return EA_OK;
}

ea_status ea_projector_roundtrip(const ea_projector *p, const float *x, int n, int ldx, float *xhat, int ldh,
                                 float *scratch) {
    ea_status st = ea_projector_compress(p, x, n, ldx, scratch);
    if (!st) st = ea_projector_reconstruct(p, scratch, n, xhat, ldh);
    return st;
}
