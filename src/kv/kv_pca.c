/* pca:R and pca-head:R KV codecs (the note's method): per layer and kind, the calibration mean and
 * the top-R eigenvectors of the covariance (of the whole row, or of each head's block); the cache
 * holds R float32 coefficients per row (per head for pca-head). Attention runs on the
 * coefficients (kv_attend.c). */
#include <stdlib.h>
#include <string.h>

#include "kv/kv_internal.h"

typedef struct {
    ea_kv_basis *b; /* [layer*2 + kind] */
} pca_state;

static const ea_kv_basis *basis_of(const ea_kv_codec *c, int layer, int kind) {
    return &((const pca_state *)c->state)->b[layer * 2 + kind];
}

static size_t pca_row_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind) {
    return sizeof(float) * (size_t)basis_of(c, layer, kind)->n_coef;
}

static void pca_encode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos, const float *x, void *dst) {
    const ea_kv_basis *b = basis_of(c, layer, kind);
    float coef[b->n_coef + 1];
    ea_kv_basis_project(b, x, coef);
    memcpy(dst, coef, sizeof(float) * (size_t)b->n_coef);
}

static void pca_decode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos0, int n, const void *src, float *x) {
    const ea_kv_basis *b = basis_of(c, layer, kind);
    const unsigned char *p = src;
    float coef[b->n_coef + 1];
    for (int r = 0; r < n; r++, p += sizeof(float) * (size_t)b->n_coef) {
        memcpy(coef, p, sizeof(float) * (size_t)b->n_coef);
        ea_kv_basis_expand(b, coef, x + (size_t)r * c->d);
    }
}

/* Rows are already float coefficients. */
static void pca_unpack(const void *self, const void *rows, int t0, int n, float *coef) {
    const ea_kv_basis *b = self;
    memcpy(coef, (const float *)rows + (size_t)t0 * b->n_coef, sizeof(float) * (size_t)n * b->n_coef);
}

static void pca_attend(const ea_kv_codec *c, int layer, const float *q, int nq, int pos0, const void *kbuf,
                       const void *vbuf, float *out) {
    const ea_kv_basis *bk = basis_of(c, layer, EA_KV_K), *bv = basis_of(c, layer, EA_KV_V);
    ea_kv_coef_src k = {bk, pca_unpack, bk, kbuf, NULL}, v = {bv, pca_unpack, bv, vbuf, NULL};
    ea_kv_basis_attend(&k, &v, q, nq, pos0, out);
}

static size_t pca_overhead(const ea_kv_codec *c) {
    size_t n = 0;
    for (int i = 0; i < 2 * c->n_layer; i++) n += ea_kv_basis_floats(&((const pca_state *)c->state)->b[i]);
    return n * sizeof(float);
}

static void pca_destroy(ea_kv_codec *c) {
    pca_state *s = c->state;
    if (!s) return;
    if (s->b)
        for (int i = 0; i < 2 * c->n_layer; i++) ea_kv_basis_free(&s->b[i]);
    free(s->b);
    free(s);
    c->state = NULL;
}

static const ea_kv_codec_ops pca_ops = {pca_row_bytes, pca_encode, pca_decode, pca_attend, pca_overhead, pca_destroy, NULL, NULL, NULL};

ea_status ea_kv_pca_setup(ea_kv_codec *c, const ea_kv_stats *s, int rank, int per_head) {
    int d = c->d, groups = per_head ? c->n_head : 1, w = d / groups;
    pca_state *ps = calloc(1, sizeof *ps);
    if (!ps) return ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
    c->ops = &pca_ops;
    c->state = ps;
    ps->b = calloc((size_t)2 * c->n_layer, sizeof *ps->b);
    double *evals = malloc(sizeof(double) * (size_t)d), *evecs = malloc(sizeof(double) * (size_t)w * d);
    unsigned char *keep = malloc((size_t)d);
    ea_status st = EA_OK;
    if (!ps->b || !evals || !evecs || !keep) st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
    for (int g = 0; g < groups && !st; g++)
        for (int j = 0; j < w; j++) keep[g * w + j] = j < rank;
    for (int i = 0; i < 2 * c->n_layer && !st; i++)
        if (!(st = ea_kv_eigen(s, i / 2, i % 2, per_head, c->n_head, evals, evecs)))
            st = ea_kv_basis_build(&ps->b[i], s, i / 2, i % 2, c->n_head, per_head, evecs, keep, 0);
    free(evals);
    free(evecs);
    free(keep);
    return st;
}
