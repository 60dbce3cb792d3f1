/* The compressor object and its file.
 *
 * File (safetensors, every tensor F32):
 *   layer.{i}.{site}.mean          [d]      site = hidden | q | k | v
 *   layer.{i}.{site}.basis         [d, k]   column j = eigenvector j (orthonormal)
 *   layer.{i}.{site}.eigenvalues   [d]      all d, descending
 *   layer.{i}.{site}.head{h}.*              per-head q/k/v sites (d = n_embd / n_head)
 * __metadata__ (strings): format, format_version, library_version, model_fingerprint, n_layer,
 *   n_embd, n_head, calib_tokens, calib_rows, ctx, selection (variance|rank), variance or rank,
 *   exclude_first (0|1).
 * Loading refuses anything else: unknown tensors, missing parts, wrong shapes or dtypes,
 * non-finite values, a basis that is not orthonormal, metadata that is absent or malformed. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv/kv_internal.h"
#include "ea/compress.h"

/* A float32 basis written from float64 eigenvectors is orthonormal to ~1e-6 at d = 768;
 * anything beyond this was damaged or never orthonormal. */
#define ORTHO_TOL 1e-4

static const char *const site_names[4] = {"hidden", "q", "k", "v"};

struct ea_compressor {
    ea_compressor_info info;
    char *fingerprint;
    char *libver;
    ea_projector **proj;
    int n;
};

static int ref_cmp(ea_site_ref a, ea_site_ref b) {
    if (a.layer != b.layer) return a.layer < b.layer ? -1 : 1;
    if (a.site != b.site) return a.site < b.site ? -1 : 1;
    if (a.head != b.head) return a.head < b.head ? -1 : 1;
    return 0;
}

static int proj_cmp(const void *a, const void *b) {
    return ref_cmp(ea_projector_site(*(ea_projector *const *)a), ea_projector_site(*(ea_projector *const *)b));
}

void ea_compressor_free(ea_compressor *c) {
    if (!c) return;
    for (int i = 0; i < c->n; i++) ea_projector_free(c->proj[i]);
    free(c->proj);
    free(c->fingerprint);
    free(c->libver);
    free(c);
}

static void free_projs(ea_projector **proj, int n) {
    for (int i = 0; i < n; i++) ea_projector_free(proj[i]);
}

/* Is each projector where the model's shape says it can be, with the width it must have? */
static ea_status check_layout(const ea_compressor_info *info, ea_projector *const *proj, int n, const char *what) {
    if (info->n_layer <= 0 || info->n_embd <= 0 || info->n_head <= 0 || info->n_embd % info->n_head)
        return ea_error(EA_ERR_FORMAT, "%s: invalid model shape n_layer %d, n_embd %d, n_head %d", what, info->n_layer,
                        info->n_embd, info->n_head);
    for (int i = 0; i < n; i++) {
        ea_site_ref r = ea_projector_site(proj[i]);
        if ((int)r.site < 0 || (int)r.site > 3)
            return ea_error(EA_ERR_FORMAT, "%s: projector %d has an unknown site", what, i);
        int max_layer = r.site == EA_SITE_HIDDEN ? info->n_layer : info->n_layer - 1;
        if (r.layer < 0 || r.layer > max_layer)
            return ea_error(EA_ERR_FORMAT, "%s: %s layer %d is outside 0..%d", what, site_names[r.site], r.layer,
                            max_layer);
        if (r.head >= 0 && (r.site == EA_SITE_HIDDEN || r.head >= info->n_head))
            return ea_error(EA_ERR_FORMAT, "%s: layer %d %s head %d does not exist (n_head %d)", what, r.layer,
                            site_names[r.site], r.head, info->n_head);
        if (r.head < -1) return ea_error(EA_ERR_FORMAT, "%s: layer %d %s: bad head %d", what, r.layer, site_names[r.site], r.head);
        int d = r.head >= 0 ? info->n_embd / info->n_head : info->n_embd;
        if (ea_projector_dim(proj[i]) != d)
            return ea_error(EA_ERR_FORMAT, "%s: layer %d %s has dimension %d, expected %d", what, r.layer,
                            site_names[r.site], ea_projector_dim(proj[i]), d);
        if (i && ref_cmp(ea_projector_site(proj[i - 1]), r) == 0)
            return ea_error(EA_ERR_FORMAT, "%s: layer %d %s appears twice", what, r.layer, site_names[r.site]);
    }
    return EA_OK;
}

static ea_status create_named(const ea_compressor_info *info, ea_projector **proj, int n, const char *what,
                              ea_compressor **out) {
    *out = NULL;
    if (n < 0 || (n > 0 && !proj)) {
        free_projs(proj, n > 0 ? n : 0);
        return ea_error(EA_ERR_ARG, "%s: no projectors", what);
    }
    if (n > 1) qsort(proj, (size_t)n, sizeof *proj, proj_cmp);
    ea_status st = check_layout(info, proj, n, what);
    if (st) {
        free_projs(proj, n);
        return st;
    }
    ea_compressor *c = calloc(1, sizeof *c);
    if (c) {
        c->fingerprint = strdup(info->fingerprint ? info->fingerprint : "");
        c->libver = strdup(info->library_version ? info->library_version : EA_VERSION);
        c->proj = malloc((size_t)(n ? n : 1) * sizeof *c->proj);
    }
    if (!c || !c->fingerprint || !c->libver || !c->proj) {
        ea_compressor_free(c);
        free_projs(proj, n);
        return ea_error(EA_ERR_NOMEM, "%s: out of memory", what);
    }
    if (n) memcpy(c->proj, proj, (size_t)n * sizeof *proj);
    c->n = n;
    c->info = *info;
    c->info.fingerprint = c->fingerprint;
    c->info.library_version = c->libver;
    if (!c->info.format_version) c->info.format_version = EA_COMPRESSOR_FORMAT_VERSION;
    *out = c;
    return EA_OK;
}

ea_status ea_compressor_create(const ea_compressor_info *info, ea_projector **proj, int n_proj,
                               ea_compressor **out) {
    return create_named(info, proj, n_proj, "compressor", out);
}

const ea_compressor_info *ea_compressor_get_info(const ea_compressor *c) { return &c->info; }
int ea_compressor_count(const ea_compressor *c) { return c->n; }
const ea_projector *ea_compressor_get(const ea_compressor *c, int i) {
    return i >= 0 && i < c->n ? c->proj[i] : NULL;
}

const ea_projector *ea_compressor_find(const ea_compressor *c, ea_site site, int layer, int head) {
    ea_site_ref key = {site, layer, head};
    for (int i = 0; i < c->n; i++)
        if (ref_cmp(ea_projector_site(c->proj[i]), key) == 0) return c->proj[i];
    return NULL;
}

/* ---- save ----------------------------------------------------------------------------------- */

static void tensor_name(char *buf, size_t n, ea_site_ref r, const char *part) {
    if (r.head >= 0)
        snprintf(buf, n, "layer.%d.%s.head%d.%s", r.layer, site_names[r.site], r.head, part);
    else
        snprintf(buf, n, "layer.%d.%s.%s", r.layer, site_names[r.site], part);
}

static ea_status meta_int(ea_st_writer *w, const char *key, long long v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    return ea_st_writer_meta(w, key, buf);
}

ea_status ea_compressor_save(const ea_compressor *c, const char *path) { return ea_compressor_save_with_kv(c, NULL, 0, path); }

ea_status ea_compressor_save_with_kv(const ea_compressor *c, const ea_kv_codec *const *kv, int n_kv, const char *path) {
    for (int i = 0; i < n_kv; i++)
        if (!ea_kv_is_klt(kv[i]))
            return ea_error(EA_ERR_ARG, "%s: only klt codecs are embedded in a compressor ('%s' is rebuilt from its k,v "
                            "statistics)", path, kv[i]->name);
    ea_st_writer *w;
    ea_status st = ea_st_writer_init(&w);
    if (st) return st;
    const ea_compressor_info *in = &c->info;
    char buf[64];
    if (!st) st = ea_st_writer_meta(w, "format", EA_COMPRESSOR_FORMAT);
    if (!st) st = meta_int(w, "format_version", EA_COMPRESSOR_FORMAT_VERSION);
    if (!st) st = ea_st_writer_meta(w, "library_version", EA_VERSION);
    if (!st) st = ea_st_writer_meta(w, "model_fingerprint", c->fingerprint);
    if (!st) st = meta_int(w, "n_layer", in->n_layer);
    if (!st) st = meta_int(w, "n_embd", in->n_embd);
    if (!st) st = meta_int(w, "n_head", in->n_head);
    if (!st) st = meta_int(w, "calib_tokens", (long long)in->calib_tokens);
    if (!st) st = meta_int(w, "calib_rows", (long long)in->calib_rows);
    if (!st) st = meta_int(w, "ctx", in->ctx);
    if (!st) st = meta_int(w, "exclude_first", in->exclude_first ? 1 : 0);
    if (in->rule.rank > 0) {
        if (!st) st = ea_st_writer_meta(w, "selection", "rank");
        if (!st) st = meta_int(w, "rank", in->rule.rank);
    } else {
        /* Shortest text that reads back as the same double. */
        for (int prec = 6; prec <= 17; prec++) {
            snprintf(buf, sizeof buf, "%.*g", prec, in->rule.variance);
            if (strtod(buf, NULL) == in->rule.variance) break;
        }
        if (!st) st = ea_st_writer_meta(w, "selection", "variance");
        if (!st) st = ea_st_writer_meta(w, "variance", buf);
    }
    char name[96];
    for (int i = 0; !st && i < c->n; i++) {
        const ea_projector *p = c->proj[i];
        ea_site_ref r = ea_projector_site(p);
        int64_t d = ea_projector_dim(p), shape2[2] = {d, ea_projector_rank(p)};
        tensor_name(name, sizeof name, r, "mean");
        st = ea_st_writer_add(w, name, EA_DTYPE_F32, 1, &d, ea_projector_mean(p));
        tensor_name(name, sizeof name, r, "basis");
        if (!st) st = ea_st_writer_add(w, name, EA_DTYPE_F32, 2, shape2, ea_projector_basis(p));
        tensor_name(name, sizeof name, r, "eigenvalues");
        if (!st) st = ea_st_writer_add(w, name, EA_DTYPE_F32, 1, &d, ea_projector_eigenvalues(p));
    }
    char *list = n_kv > 0 ? calloc((size_t)n_kv, sizeof kv[0]->name + 1) : NULL;
    if (n_kv > 0 && !list && !st) st = ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < n_kv && !st; i++) {
        snprintf(name, sizeof name, EA_KV_EMBED_PREFIX "%d.", i);
        st = ea_kv_klt_write(kv[i], w, name);
        if (i) strcat(list, ",");
        strcat(list, kv[i]->name);
    }
    if (n_kv > 0 && !st) st = ea_st_writer_meta(w, "kv_codecs", list);
    free(list);
    if (!st) st = ea_st_writer_save(w, path);
    ea_st_writer_free(w);
    return st;
}

/* ---- load ----------------------------------------------------------------------------------- */

static ea_status meta_str(const ea_st_file *f, const char *path, const char *key, const char **out) {
    *out = ea_st_metadata(f, key);
    if (!*out) return ea_error(EA_ERR_FORMAT, "%s: metadata '%s' is missing (not a compressor file?)", path, key);
    return EA_OK;
}

static ea_status meta_long(const ea_st_file *f, const char *path, const char *key, long long lo, long long hi,
                           long long *out) {
    const char *s;
    ea_status st = meta_str(f, path, key, &s);
    if (st) return st;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return ea_error(EA_ERR_FORMAT, "%s: metadata '%s' = '%s' is not an integer in [%lld, %lld]", path, key, s, lo,
                        hi);
    *out = v;
    return EA_OK;
}

static ea_status load_info(const ea_st_file *f, const char *path, ea_compressor_info *in) {
    const char *s;
    long long v;
    ea_status st;
    memset(in, 0, sizeof *in);
    if ((st = meta_str(f, path, "format", &s))) return st;
    if (strcmp(s, EA_COMPRESSOR_FORMAT))
        return ea_error(EA_ERR_FORMAT, "%s: format is '%s', not '%s'", path, s, EA_COMPRESSOR_FORMAT);
    if ((st = meta_long(f, path, "format_version", 1, INT_MAX, &v))) return st;
    if (v > EA_COMPRESSOR_FORMAT_VERSION)
        return ea_error(EA_ERR_UNSUPPORTED, "%s: format version %lld is newer than this library reads (%d)", path, v,
                        EA_COMPRESSOR_FORMAT_VERSION);
    in->format_version = (int)v;
    if ((st = meta_str(f, path, "library_version", &in->library_version))) return st;
    if ((st = meta_str(f, path, "model_fingerprint", &in->fingerprint))) return st;
    if (!*in->fingerprint) return ea_error(EA_ERR_FORMAT, "%s: metadata 'model_fingerprint' is empty", path);
    if ((st = meta_long(f, path, "n_layer", 1, 4096, &v))) return st;
    in->n_layer = (int)v;
    if ((st = meta_long(f, path, "n_embd", 1, 1 << 16, &v))) return st;
    in->n_embd = (int)v;
    if ((st = meta_long(f, path, "n_head", 1, 4096, &v))) return st;
    in->n_head = (int)v;
    if (in->n_embd % in->n_head)
        return ea_error(EA_ERR_FORMAT, "%s: n_embd %d is not divisible by n_head %d", path, in->n_embd, in->n_head);
    if ((st = meta_long(f, path, "calib_tokens", 0, LLONG_MAX, &v))) return st;
    in->calib_tokens = (size_t)v;
    if ((st = meta_long(f, path, "calib_rows", 0, LLONG_MAX, &v))) return st;
    in->calib_rows = (size_t)v;
    if ((st = meta_long(f, path, "ctx", 1, INT_MAX, &v))) return st;
    in->ctx = (int)v;
    if ((st = meta_long(f, path, "exclude_first", 0, 1, &v))) return st;
    in->exclude_first = (int)v;
    if ((st = meta_str(f, path, "selection", &s))) return st;
    if (!strcmp(s, "rank")) {
        if ((st = meta_long(f, path, "rank", 1, INT_MAX, &v))) return st;
        in->rule.rank = (int)v;
    } else if (!strcmp(s, "variance")) {
        const char *vs;
        if ((st = meta_str(f, path, "variance", &vs))) return st;
        char *end;
        errno = 0;
        double x = strtod(vs, &end);
        if (errno || end == vs || *end || !(x > 0 && x <= 1))
            return ea_error(EA_ERR_FORMAT, "%s: metadata 'variance' = '%s' is not a number in (0, 1]", path, vs);
        in->rule.variance = x;
    } else {
        return ea_error(EA_ERR_FORMAT, "%s: metadata 'selection' = '%s' (expected 'variance' or 'rank')", path, s);
    }
    return EA_OK;
}

/* Parse "layer.{i}.{site}[.head{h}].{part}"; 0 on success. */
static int parse_name(const char *name, ea_site_ref *r, int *part) {
    static const char *const parts[3] = {"mean", "basis", "eigenvalues"};
    if (strncmp(name, "layer.", 6)) return -1;
    const char *p = name + 6;
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9')) return -1;
    long layer = 0;
    while (*p >= '0' && *p <= '9') {
        layer = layer * 10 + (*p++ - '0');
        if (layer > 100000) return -1;
    }
    if (*p++ != '.') return -1;
    int site = -1;
    for (int s = 0; s < 4; s++) {
        size_t len = strlen(site_names[s]);
        if (!strncmp(p, site_names[s], len) && p[len] == '.') {
            site = s;
            p += len + 1;
            break;
        }
    }
    if (site < 0) return -1;
    long head = -1;
    if (!strncmp(p, "head", 4)) {
        p += 4;
        if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9')) return -1;
        head = 0;
        while (*p >= '0' && *p <= '9') {
            head = head * 10 + (*p++ - '0');
            if (head > 100000) return -1;
        }
        if (*p++ != '.') return -1;
    }
    for (int i = 0; i < 3; i++)
        if (!strcmp(p, parts[i])) {
            r->site = (ea_site)site;
            r->layer = (int)layer;
            r->head = (int)head;
            *part = i;
            return 0;
        }
    return -1;
}

typedef struct {
    ea_site_ref ref;
    const ea_st_tensor *t[3]; /* mean, basis, eigenvalues */
} group;

static ea_status read_f32(const char *path, const ea_st_tensor *t, float **out) {
    *out = NULL;
    if (t->dtype != EA_DTYPE_F32)
        return ea_error(EA_ERR_FORMAT, "%s: tensor %s has dtype %s, expected F32", path, t->name, ea_dtype_name(t->dtype));
    *out = malloc(t->numel ? t->numel * sizeof **out : 1);
    if (!*out) return ea_error(EA_ERR_NOMEM, "%s: cannot allocate tensor %s", path, t->name);
    /* memcpy, not a cast: the mapping need not be 4-byte aligned, and the bits must round-trip. */
    if (t->numel) memcpy(*out, t->data, t->numel * sizeof **out);
    return EA_OK;
}

static ea_status load_group(const char *path, const ea_compressor_info *in, const group *g, ea_projector **out) {
    static const char *const parts[3] = {"mean", "basis", "eigenvalues"};
    char lab[96];
    ea_site_ref r = g->ref;
    tensor_name(lab, sizeof lab, r, "");
    lab[strlen(lab) - 1] = 0; /* drop the trailing dot */
    for (int i = 0; i < 3; i++)
        if (!g->t[i]) return ea_error(EA_ERR_FORMAT, "%s: tensor %s.%s is missing", path, lab, parts[i]);
    int d = r.head >= 0 ? in->n_embd / in->n_head : in->n_embd;
    const ea_st_tensor *m = g->t[0], *b = g->t[1], *e = g->t[2];
    if (m->ndim != 1 || m->shape[0] != d)
        return ea_error(EA_ERR_FORMAT, "%s: %s.mean must have shape [%d]", path, lab, d);
    if (e->ndim != 1 || e->shape[0] != d)
        return ea_error(EA_ERR_FORMAT, "%s: %s.eigenvalues must have shape [%d]", path, lab, d);
    if (b->ndim != 2 || b->shape[0] != d || b->shape[1] < 1 || b->shape[1] > d)
        return ea_error(EA_ERR_FORMAT, "%s: %s.basis must have shape [%d, k] with 1 <= k <= %d", path, lab, d, d);
    float *fm = NULL, *fb = NULL, *fe = NULL;
    ea_status st = read_f32(path, m, &fm);
    if (!st) st = read_f32(path, b, &fb);
    if (!st) st = read_f32(path, e, &fe);
    if (!st) st = ea_projector_from_parts(path, r, d, (int)b->shape[1], fm, fb, fe, ORTHO_TOL, out);
    free(fm);
    free(fb);
    free(fe);
    return st;
}

ea_status ea_compressor_load(const char *path, ea_compressor **out) {
    *out = NULL;
    ea_st_file *f;
    ea_status st = ea_st_open(path, &f);
    if (st) return st;
    ea_compressor_info in;
    group *g = NULL;
    ea_projector **proj = NULL;
    int ng = 0, np = 0;
    if ((st = load_info(f, path, &in))) goto done;
    int nt = ea_st_count(f);
    g = calloc((size_t)(nt ? nt : 1), sizeof *g);
    if (!g) {
        st = ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < nt; i++) {
        const ea_st_tensor *t = ea_st_get(f, i);
        ea_site_ref r;
        int part, j;
        if (!strncmp(t->name, EA_KV_EMBED_PREFIX, strlen(EA_KV_EMBED_PREFIX))) continue; /* embedded KV codecs */
        if (parse_name(t->name, &r, &part)) {
            st = ea_error(EA_ERR_FORMAT, "%s: unexpected tensor '%s' (expected layer.N.SITE[.headH].{mean,basis,eigenvalues})",
                          path, t->name);
            goto done;
        }
        for (j = 0; j < ng && ref_cmp(g[j].ref, r); j++) {}
        if (j == ng) g[ng++].ref = r;
        if (g[j].t[part]) {
            st = ea_error(EA_ERR_FORMAT, "%s: tensor '%s' appears twice", path, t->name);
            goto done;
        }
        g[j].t[part] = t;
    }
    if (ng == 0) {
        st = ea_error(EA_ERR_FORMAT, "%s: compressor file has no projectors", path);
        goto done;
    }
    proj = calloc((size_t)ng, sizeof *proj);
    if (!proj) {
        st = ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (np = 0; np < ng; np++) {
        int max_layer = g[np].ref.site == EA_SITE_HIDDEN ? in.n_layer : in.n_layer - 1;
        if (g[np].ref.layer > max_layer) {
            st = ea_error(EA_ERR_FORMAT, "%s: %s layer %d is outside 0..%d (n_layer %d)", path,
                          site_names[g[np].ref.site], g[np].ref.layer, max_layer, in.n_layer);
            goto done;
        }
        if (g[np].ref.head >= 0 && (g[np].ref.site == EA_SITE_HIDDEN || g[np].ref.head >= in.n_head)) {
            st = ea_error(EA_ERR_FORMAT, "%s: layer %d %s head %d does not exist (n_head %d)", path, g[np].ref.layer,
                          site_names[g[np].ref.site], g[np].ref.head, in.n_head);
            goto done;
        }
        if ((st = load_group(path, &in, &g[np], &proj[np]))) goto done;
    }
    st = create_named(&in, proj, np, path, out); /* copies the metadata strings before f closes */
    np = 0; /* the projectors belong to the compressor now, also on failure; the array does not */
done:
    if (proj) free_projs(proj, np);
    free(proj);
    free(g);
    ea_st_close(f);
    return st;
}

/* ---- fit to a model ------------------------------------------------------------------------- */

ea_status ea_compressor_check(const ea_compressor *c, const char *what, const ea_config *cfg,
                              const char *fingerprint) {
    const ea_compressor_info *in = &c->info;
    if (in->n_embd != cfg->n_embd || in->n_layer != cfg->n_layer || in->n_head != cfg->n_head)
        return ea_error(EA_ERR_MISMATCH,
                        "%s: compressor was fitted on a model with n_layer %d, n_embd %d, n_head %d; this model has "
                        "n_layer %d, n_embd %d, n_head %d",
                        what, in->n_layer, in->n_embd, in->n_head, cfg->n_layer, cfg->n_embd, cfg->n_head);
    if (!fingerprint || strcmp(fingerprint, c->fingerprint))
        return ea_error(EA_ERR_MISMATCH,
                        "%s: compressor was fitted on model %s, but this model's fingerprint is %s (same shape, "
                        "different weights or config)",
                        what, c->fingerprint, fingerprint ? fingerprint : "(none)");
    return EA_OK;
}

ea_status ea_compressor_check_model(const ea_compressor *c, const char *what, const ea_model *m) {
    return ea_compressor_check(c, what, ea_model_config(m), ea_model_fingerprint(m));
}
