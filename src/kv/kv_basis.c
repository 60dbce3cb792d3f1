/* Bases of the basis codecs (pca, klt): eigen-decomposition of the calibration covariance of one
 * layer's K or V (whole, or its per-head diagonal blocks), and the linear code built from chosen
 * eigenvectors: projection onto it (encode) and expansion back (decode). */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ea/spectral.h"
#include "kv/kv_internal.h"

void ea_kv_clamp_eigenvalues(double *vals, int n) {
    for (int j = 0; j < n; j++)
        if (!(vals[j] > 0)) vals[j] = 0.0;
}

ea_status ea_kv_eigen(const ea_kv_stats *s, int layer, int kind, int per_head, int n_head, double *evals,
                      double *evecs) {
    int d = s->d, groups = per_head ? n_head : 1, w = d / groups;
    const double *cov = s->cov[kind] + (size_t)layer * d * d;
    double *a = malloc(sizeof(double) * (size_t)w * w);
    if (!a) return ea_error(EA_ERR_NOMEM, "kv basis: out of memory");
    ea_status st = EA_OK;
    for (int g = 0; g < groups && !st; g++) {
        for (int i = 0; i < w; i++)
            for (int j = 0; j < w; j++) {
                double v = cov[(size_t)(g * w + i) * d + g * w + j];
                if (!isfinite(v)) {
                    free(a);
                    return ea_error(EA_ERR_NUMERIC, "kv basis: covariance of layer %d %s is not finite", layer,
                                    kind ? "V" : "K");
                }
                a[(size_t)i * w + j] = v;
            }
        st = ea_eigh(a, w, evals + (size_t)g * w, evecs + (size_t)g * w * w);
        if (!st) ea_kv_clamp_eigenvalues(evals + (size_t)g * w, w);
    }
    free(a);
    return st;
}

static float round_f16(float v) { return ea_f16_to_f32(ea_f32_to_f16(v)); }

void ea_kv_basis_round_vec(double *v, int n, int prec) {
    if (prec == EA_KV_PREC_F32) {
        for (int i = 0; i < n; i++) v[i] = (double)(float)v[i];
    } else if (prec == EA_KV_PREC_F16) {
        for (int i = 0; i < n; i++) v[i] = round_f16((float)v[i]);
    } else { /* int8 with one f16 scale per vector */
        double mx = 0;
        for (int i = 0; i < n; i++) mx = fmax(mx, fabs(v[i]));
        double sc = round_f16((float)(mx / 127.0));
        for (int i = 0; i < n; i++) v[i] = sc > 0 ? (double)(float)(nearbyint(v[i] / sc) * sc) : 0.0;
    }
}

void ea_kv_basis_free(ea_kv_basis *b) {
    if (!b) return;
    for (int h = 0; h < b->n_head; h++) {
        if (b->w) free(b->w[h]);
    }
    free(b->w);
    free(b->enc);
    free(b->lo);
    free(b->hi);
    free(b->mean);
    memset(b, 0, sizeof *b);
}

ea_status ea_kv_basis_build(ea_kv_basis *b, const ea_kv_stats *s, int layer, int kind, int n_head, int per_head,
                            const double *dec, const unsigned char *keep, int prec) {
    int f16 = prec != EA_KV_PREC_F32; /* means: f16 for both f16 and int8 bases */
    memset(b, 0, sizeof *b);
    int d = s->d, hd = d / n_head, groups = per_head ? n_head : 1, w = d / groups;
    b->d = d;
    b->n_head = n_head;
    b->hd = hd;
    b->shared = !per_head;
    b->mean = malloc(sizeof(float) * (size_t)d);
    b->lo = calloc((size_t)n_head, sizeof(int));
    b->hi = calloc((size_t)n_head, sizeof(int));
    b->w = calloc((size_t)n_head, sizeof(float *));
    if (!b->mean || !b->lo || !b->hi || !b->w) goto nomem;
    for (int i = 0; i < d; i++) {
        float m = (float)s->mean[kind][(size_t)layer * d + i];
        b->mean[i] = f16 ? round_f16(m) : m;
    }
    /* Kept columns per group, in eigenvalue order. */
    int *cols = malloc(sizeof(int) * (size_t)d);
    if (!cols) goto nomem;
    int n = 0;
    for (int g = 0; g < groups; g++) {
        int start = n;
        for (int j = 0; j < w; j++)
            if (keep[g * w + j]) cols[n++] = j;
        if (per_head) {
            b->lo[g] = start;
            b->hi[g] = n;
        }
    }
    b->n_coef = n;
    b->prec = prec;
    /* decode vectors rounded as stored: whole group vectors (an int8 scale spans all of them) */
    double *vec = malloc(sizeof(double) * (size_t)n * w);
    if (!vec) {
        free(cols);
        goto nomem;
    }
    for (int g = 0, j = 0; g < groups; g++)
        for (; j < n && (!per_head || j < b->hi[g]); j++) {
            for (int i = 0; i < w; i++) vec[(size_t)j * w + i] = dec[(size_t)g * w * w + (size_t)i * w + cols[j]];
            int i8 = keep[g * w + cols[j]] == 2;
            ea_kv_basis_round_vec(vec + (size_t)j * w, w, i8 ? EA_KV_PREC_I8 : prec);
            b->n_i8 += i8;
        }
    for (int h = 0; h < n_head; h++) {
        int lo = per_head ? b->lo[h] : 0, hi = per_head ? b->hi[h] : n;
        b->lo[h] = lo;
        b->hi[h] = hi;
        int row0 = per_head ? 0 : h * hd; /* first dim of head h inside the group */
        float *dst = malloc(sizeof(float) * (size_t)((hi - lo) > 0 ? hi - lo : 1) * hd);
        if (!dst) {
            free(cols);
            goto nomem;
        }
        b->w[h] = dst;
        for (int j = lo; j < hi; j++)
            for (int i = 0; i < hd; i++) dst[(size_t)(j - lo) * hd + i] = (float)vec[(size_t)j * w + row0 + i];
    }
    free(vec);
    free(cols);
    return EA_OK;
nomem:
    ea_kv_basis_free(b);
    return ea_error(EA_ERR_NOMEM, "kv basis: out of memory");
}

size_t ea_kv_basis_bytes(const ea_kv_basis *b) {
    size_t f = ea_kv_basis_floats(b), vec = f - (size_t)b->d;
    size_t w = b->n_coef ? vec / (size_t)b->n_coef : 0, i8 = (size_t)b->n_i8 * (w + 2); /* int8 values, f16 scale */
    if (b->prec == EA_KV_PREC_I8) return 2 * (size_t)b->d + (size_t)b->n_coef * (w + 2);
    return (b->prec == EA_KV_PREC_F32 ? 4 : 2) * (f - (size_t)b->n_i8 * w) + i8;
}

size_t ea_kv_basis_floats(const ea_kv_basis *b) {
    size_t vec = 0;
    if (b->shared) vec = (size_t)b->n_coef * b->d;
    else
        for (int h = 0; h < b->n_head; h++) vec += (size_t)(b->hi[h] - b->lo[h]) * b->hd;
    return (size_t)b->d + vec;
}

ea_status ea_kv_basis_set_encoder(ea_kv_basis *b, const double *blocks) {
    int d = b->d, n = b->n_coef, hd = b->hd;
    free(b->enc);
    b->enc = NULL;
    if (n == 0) return EA_OK;
    double *W = calloc((size_t)d * n, sizeof(double)), *BW = calloc((size_t)d * n, sizeof(double));
    double *G = malloc(sizeof(double) * (size_t)n * n), *E = malloc(sizeof(double) * (size_t)n * d);
    float *enc = malloc(sizeof(float) * (size_t)n * d);
    ea_status st = (!W || !BW || !G || !E || !enc) ? ea_error(EA_ERR_NOMEM, "kv basis: out of memory") : EA_OK;
    for (int h = 0; h < b->n_head && !st; h++) /* W (d × n): the decode vectors as columns */
        for (int j = b->lo[h]; j < b->hi[h]; j++)
            for (int i = 0; i < hd; i++) W[(size_t)(h * hd + i) * n + j] = b->w[h][(size_t)(j - b->lo[h]) * hd + i];
    for (int h = 0; h < b->n_head && !st; h++) /* BW: B block-diagonal (per head), or the identity */
        for (int i = 0; i < hd; i++)
            for (int j = 0; j < n; j++) {
                double a = 0;
                if (blocks)
                    for (int k = 0; k < hd; k++) a += blocks[(size_t)h * hd * hd + (size_t)i * hd + k] * W[(size_t)(h * hd + k) * n + j];
                else
                    a = W[(size_t)(h * hd + i) * n + j];
                BW[(size_t)(h * hd + i) * n + j] = a;
            }
    if (!st) {
        /* G = Wᵀ B W, E = G⁻¹ (B W)ᵀ */
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, n, d, 1.0, W, n, BW, n, 0.0, G, n);
        for (int j = 0; j < n; j++)
            for (int i = 0; i < d; i++) E[(size_t)j * d + i] = BW[(size_t)i * n + j];
        lapack_int info = LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', n, d, G, n, E, d);
        if (info != 0) st = ea_error(EA_ERR_NUMERIC, "kv basis: encoder system is singular (dposv info %d)", (int)info);
    }
    if (!st) {
        for (size_t i = 0; i < (size_t)n * d; i++) enc[i] = (float)E[i];
        b->enc = enc;
        enc = NULL;
    }
    free(W);
    free(BW);
    free(G);
    free(E);
    free(enc);
    return st;
}

void ea_kv_basis_project_range(const ea_kv_basis *b, const float *xc, int j0, int j1, float *coef) {
    if (j1 > j0)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, j1 - j0, b->d, 1.0f, b->enc + (size_t)j0 * b->d, b->d, xc, 1, 0.0f,
                    coef + j0, 1);
}

void ea_kv_basis_project(const ea_kv_basis *b, const float *x, float *coef) {
    int hd = b->hd;
    if (b->enc) { /* least-squares encoder: coef = E (x - mean) */
        float xc[b->d];
        for (int i = 0; i < b->d; i++) xc[i] = x[i] - b->mean[i];
        ea_kv_basis_project_range(b, xc, 0, b->n_coef, coef);
        return;
    }
    float xc[hd];
    memset(coef, 0, sizeof(float) * (size_t)b->n_coef);
    for (int h = 0; h < b->n_head; h++) {
        for (int i = 0; i < hd; i++) xc[i] = x[h * hd + i] - b->mean[h * hd + i];
        const float *w = b->w[h];
        for (int j = b->lo[h]; j < b->hi[h]; j++, w += hd) {
            float s = 0;
            for (int i = 0; i < hd; i++) s += w[i] * xc[i];
            coef[j] += s;
        }
    }
}

void ea_kv_basis_expand(const ea_kv_basis *b, const float *coef, float *x) {
    int hd = b->hd;
    for (int h = 0; h < b->n_head; h++) {
        float *xh = x + h * hd;
        memcpy(xh, b->mean + h * hd, sizeof(float) * (size_t)hd);
        const float *w = b->w[h];
        for (int j = b->lo[h]; j < b->hi[h]; j++, w += hd) {
            float cj = coef[j];
            for (int i = 0; i < hd; i++) xh[i] += cj * w[i];
        }
    }
}
