/* Each side's own eigenbasis (mean + covariance eigenvectors) and projections onto it. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ea/spectral.h"
#include "esap/esap_internal.h"

struct ea_esap_basis {
    int d;
    double *mean;    /* d */
    double *values;  /* d, descending */
    double *vectors; /* d × d, column j = eigenvector j */
};

ea_status ea_esap_basis_fit(const float *x, int n, int d, ea_esap_basis **out) {
    *out = NULL;
    if (n < 2 || d < 1) return ea_error(EA_ERR_ARG, "eigenbasis: %d rows of %d dims (need >= 2 rows)", n, d);
    ea_esap_basis *b = calloc(1, sizeof *b);
    double *cov = ea_esap_alloc((size_t)d, (size_t)d, sizeof *cov);
    if (b) {
        b->d = d;
        b->mean = malloc((size_t)d * sizeof *b->mean);
        b->values = malloc((size_t)d * sizeof *b->values);
        b->vectors = ea_esap_alloc((size_t)d, (size_t)d, sizeof *b->vectors);
    }
    if (!b || !cov || !b->mean || !b->values || !b->vectors) {
        free(cov);
        ea_esap_basis_free(b);
        return ea_error(EA_ERR_NOMEM, "eigenbasis: cannot allocate %d x %d", d, d);
    }
    ea_cov *acc = NULL;
    ea_status st = ea_cov_init(&acc, d);
    if (!st) st = ea_cov_add(acc, x, n, d);
    if (!st) st = ea_cov_matrix(acc, 0, cov);
    if (!st) {
        memcpy(b->mean, ea_cov_mean(acc), (size_t)d * sizeof *b->mean);
        st = ea_eigh(cov, d, b->values, b->vectors);
    }
    ea_cov_free(acc);
    free(cov);
    if (st) {
        ea_esap_basis_free(b);
        return st;
    }
    for (int i = 0; i < d; i++)
        if (b->values[i] < 0) b->values[i] = 0; /* rounding on a PSD matrix */
    *out = b;
    return EA_OK;
}

void ea_esap_basis_free(ea_esap_basis *b) {
    if (!b) return;
    free(b->mean);
    free(b->values);
    free(b->vectors);
    free(b);
}

int ea_esap_basis_dim(const ea_esap_basis *b) { return b->d; }
const double *ea_esap_basis_mean(const ea_esap_basis *b) { return b->mean; }
const double *ea_esap_basis_eigenvalues(const ea_esap_basis *b) { return b->values; }

#define PROJ_BLOCK 1024

ea_status ea_esap_basis_project(const ea_esap_basis *b, const float *x, int n, int k, float *out) {
    int d = b->d;
    if (k < 1 || k > d) return ea_error(EA_ERR_ARG, "project: rank %d not in [1, %d]", k, d);
    double *in = ea_esap_alloc(PROJ_BLOCK, (size_t)d, sizeof *in), *res = ea_esap_alloc(PROJ_BLOCK, (size_t)k, sizeof *res);
    if (!in || !res) {
        free(in); free(res);
        return ea_error(EA_ERR_NOMEM, "project: cannot allocate a block of %d dims", d);
    }
    for (int i0 = 0; i0 < n; i0 += PROJ_BLOCK) {
        int nb = n - i0 < PROJ_BLOCK ? n - i0 : PROJ_BLOCK;
        for (int i = 0; i < nb; i++)
            for (int j = 0; j < d; j++) in[(size_t)i * d + j] = x[(size_t)(i0 + i) * d + j] - b->mean[j];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, k, d, 1.0, in, d, b->vectors, d, 0.0, res, k);
        for (size_t i = 0; i < (size_t)nb * k; i++) out[(size_t)i0 * k + i] = (float)res[i];
    }
    free(in);
    free(res);
    return EA_OK;
}

ea_status ea_esap_basis_lift(const ea_esap_basis *b, const float *z, int n, int k, float *out) {
    int d = b->d;
    if (k < 1 || k > d) return ea_error(EA_ERR_ARG, "lift: rank %d not in [1, %d]", k, d);
    double *in = ea_esap_alloc(PROJ_BLOCK, (size_t)k, sizeof *in), *res = ea_esap_alloc(PROJ_BLOCK, (size_t)d, sizeof *res);
    if (!in || !res) {
        free(in); free(res);
        return ea_error(EA_ERR_NOMEM, "lift: cannot allocate a block of %d dims", d);
    }
    for (int i0 = 0; i0 < n; i0 += PROJ_BLOCK) {
        int nb = n - i0 < PROJ_BLOCK ? n - i0 : PROJ_BLOCK;
        for (size_t i = 0; i < (size_t)nb * k; i++) in[i] = z[(size_t)i0 * k + i];
        /* res = in · V[:, :k]ᵀ */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, d, k, 1.0, in, k, b->vectors, d, 0.0, res, d);
        for (size_t i = 0; i < (size_t)nb * d; i++) out[(size_t)i0 * d + i] = (float)res[i];
    }
    free(in);
    free(res);
    return EA_OK;
}
