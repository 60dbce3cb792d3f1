/* Save/load an accumulator as safetensors (float64), so runs in separate processes can merge. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ea/io.h"
#include "spectral/cov_internal.h"

#define COV_FORMAT "ea_cov"
#define COV_VERSION "1"

ea_status ea_cov_save(const ea_cov *c, const char *path) {
    ea_cov_flush_pending(c);
    int d = c->d;
    /* Store M2 fully symmetric: the file stands on its own without knowing our triangle convention. */
    double *full = malloc((size_t)d * d * sizeof(double));
    if (!full) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < d; i++)
        for (int j = i; j < d; j++)
            full[(size_t)i * d + j] = full[(size_t)j * d + i] = c->m2[(size_t)i * d + j];
    ea_st_writer *w = NULL;
    ea_status st = ea_st_writer_init(&w);
    int64_t s1[1] = {1}, sd[1] = {d}, sdd[2] = {d, d};
    if (!st) st = ea_st_writer_meta(w, "format", COV_FORMAT);
    if (!st) st = ea_st_writer_meta(w, "version", COV_VERSION);
    if (!st) st = ea_st_writer_add(w, "n", EA_DTYPE_F64, 1, s1, &c->n);
    if (!st) st = ea_st_writer_add(w, "mean", EA_DTYPE_F64, 1, sd, c->mean);
    if (!st) st = ea_st_writer_add(w, "m2", EA_DTYPE_F64, 2, sdd, full);
    if (!st) st = ea_st_writer_save(w, path);
    ea_st_writer_free(w);
    free(full);
    return st;
}

static const ea_st_tensor *find_f64(const ea_st_file *f, const char *path, const char *name, int ndim,
                                    const int64_t *shape, ea_status *st) {
    const ea_st_tensor *t = ea_st_find(f, name);
    if (!t) {
        *st = ea_error(EA_ERR_FORMAT, "%s: covariance file has no tensor '%s'", path, name);
        return NULL;
    }
    int ok = t->dtype == EA_DTYPE_F64 && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        *st = ea_error(EA_ERR_FORMAT, "%s: tensor '%s' has the wrong dtype or shape", path, name);
        return NULL;
    }
    return t;
}

ea_status ea_cov_load(const char *path, ea_cov **out) {
    *out = NULL;
    ea_st_file *f = NULL;
    ea_status st = ea_st_open(path, &f);
    if (st) return st;
    const char *fmt = ea_st_metadata(f, "format"), *ver = ea_st_metadata(f, "version");
    if (!fmt || strcmp(fmt, COV_FORMAT) != 0 || !ver || strcmp(ver, COV_VERSION) != 0) {
        ea_st_close(f);
        return ea_error(EA_ERR_FORMAT, "%s: not an ea_cov version " COV_VERSION " file", path);
    }
    const ea_st_tensor *tm = ea_st_find(f, "mean");
    if (!tm || tm->ndim != 1 || tm->shape[0] < 1 || tm->shape[0] > 1000000) {
        ea_st_close(f);
        return ea_error(EA_ERR_FORMAT, "%s: tensor 'mean' is missing or not a vector of a sane length", path);
    }
    int d = (int)tm->shape[0];
    int64_t s1[1] = {1}, sd[1] = {d}, sdd[2] = {d, d};
    const ea_st_tensor *tn = find_f64(f, path, "n", 1, s1, &st), *tmean = NULL, *tm2 = NULL;
    if (tn) tmean = find_f64(f, path, "mean", 1, sd, &st);
    if (tmean) tm2 = find_f64(f, path, "m2", 2, sdd, &st);
    if (!tm2) {
        ea_st_close(f);
        return st;
    }
    double n;
    memcpy(&n, tn->data, sizeof n); /* the mapping need not be 8-byte aligned */
    if (!(n >= 0) || n > 9.0e15 || n != (double)(int64_t)n) {
        ea_st_close(f);
        return ea_error(EA_ERR_FORMAT, "%s: sample count %g is not a non-negative integer", path, n);
    }
    ea_cov *c;
    if ((st = ea_cov_init(&c, d))) {
        ea_st_close(f);
        return st;
    }
    memcpy(c->mean, tmean->data, (size_t)d * sizeof(double));
    memcpy(c->m2, tm2->data, (size_t)d * d * sizeof(double));
    ea_st_close(f);
    c->n = n;
    /* Hostile or corrupt files: every value finite, variances non-negative, M2 symmetric. */
    for (int i = 0; i < d && !st; i++) {
        if (!isfinite(c->mean[i]) || !(c->m2[(size_t)i * d + i] >= 0))
            st = ea_error(EA_ERR_FORMAT, "%s: dimension %d has a non-finite mean or a negative variance", path, i);
        for (int j = i + 1; j < d && !st; j++) {
            double u = c->m2[(size_t)i * d + j], l = c->m2[(size_t)j * d + i];
            if (!isfinite(u) || u != l)
                st = ea_error(EA_ERR_FORMAT, "%s: m2 entry (%d, %d) is not finite or not symmetric", path, i, j);
        }
    }
    if (st) {
        ea_cov_free(c);
        return st;
    }
    *out = c;
    return EA_OK;
}
