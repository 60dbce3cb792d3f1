/* K/V calibration statistics for the KV-cache codecs, rebuilt from a compressor's full-rank
 * k and v projectors: mean μ and covariance Σ = E Λ Eᵀ (exact up to float32 storage, because
 * a full-rank basis spans everything). */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "ea/compress.h"

/* Σ = E Λ Eᵀ for one site into cov (d × d, float64). */
static ea_status rebuild_cov(const ea_projector *p, double *cov) {
    int d = ea_projector_dim(p);
    const float *basis = ea_projector_basis(p), *ev = ea_projector_eigenvalues(p);
    double *e = malloc((size_t)d * d * sizeof *e), *el = malloc((size_t)d * d * sizeof *el);
    if (!e || !el) {
        free(e);
        free(el);
        return ea_error(EA_ERR_NOMEM, "kv stats: cannot allocate a %d × %d basis", d, d);
    }
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            e[(size_t)i * d + j] = basis[(size_t)i * d + j];
            el[(size_t)i * d + j] = (double)basis[(size_t)i * d + j] * (double)ev[j];
        }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d, d, d, 1.0, el, d, e, d, 0.0, cov, d);
    /* Symmetric by construction; remove the rounding asymmetry so consumers may rely on it. */
    for (int i = 0; i < d; i++)
        for (int j = i + 1; j < d; j++) {
            double v = 0.5 * (cov[(size_t)i * d + j] + cov[(size_t)j * d + i]);
            cov[(size_t)i * d + j] = cov[(size_t)j * d + i] = v;
        }
    free(e);
    free(el);
    return EA_OK;
}

ea_status ea_compressor_kv_stats(const ea_compressor *c, ea_kv_stats *out) {
    memset(out, 0, sizeof *out);
    const ea_compressor_info *in = ea_compressor_get_info(c);
    int L = in->n_layer, d = in->n_embd;
    const ea_site kinds[2] = {EA_SITE_K, EA_SITE_V};
    /* Check everything first, so the message names the first missing site. */
    for (int kind = 0; kind < 2; kind++)
        for (int l = 0; l < L; l++) {
            const ea_projector *p = ea_compressor_find(c, kinds[kind], l, -1);
            if (!p)
                return ea_error(EA_ERR_ARG,
                                "compressor has no whole-row %s projector for layer %d: KV statistics need k and v "
                                "for every layer (fit with --sites k,v --rank %d)",
                                ea_site_name(kinds[kind]), l, d);
            if (ea_projector_rank(p) != d)
                return ea_error(EA_ERR_ARG,
                                "compressor's layer %d %s projector keeps %d of %d directions: KV statistics need "
                                "full rank (fit with --rank %d)",
                                l, ea_site_name(kinds[kind]), ea_projector_rank(p), d, d);
        }
    size_t md, cd;
    if (ea_mul_size((size_t)L, (size_t)d, &md) || ea_mul_size(md, (size_t)d, &cd))
        return ea_error(EA_ERR_NOMEM, "kv stats: size overflows");
    out->n_layer = L;
    out->d = d;
    out->n = (double)in->calib_rows;
    for (int kind = 0; kind < 2; kind++) {
        out->mean[kind] = malloc(md * sizeof(double));
        out->cov[kind] = malloc(cd * sizeof(double));
        if (!out->mean[kind] || !out->cov[kind]) {
            ea_kv_stats_free(out);
            return ea_error(EA_ERR_NOMEM, "kv stats: cannot allocate %d layers × %d × %d", L, d, d);
        }
        for (int l = 0; l < L; l++) {
            const ea_projector *p = ea_compressor_find(c, kinds[kind], l, -1);
            const float *mu = ea_projector_mean(p);
            for (int i = 0; i < d; i++) out->mean[kind][(size_t)l * d + i] = mu[i];
            ea_status st = rebuild_cov(p, out->cov[kind] + (size_t)l * d * d);
            if (st) {
                ea_kv_stats_free(out);
                return st;
            }
        }
    }
    return EA_OK;
}
