/* Safetensors writer: tensors are copied in, then written in one atomic pass.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON, then the data buffer.
 * The header lists "__metadata__" first, then the tensors sorted by name (so the same
 * content always gives the same bytes); data follows in the same order with no holes, as the
 * format requires; the header is padded with spaces to a multiple of 8 so the data starts
 * aligned. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ea/io.h"

typedef struct {
    char *name;
    ea_dtype dtype;
    int ndim;
    int64_t shape[EA_MAX_DIMS];
    size_t nbytes;
    void *data;
} st_entry;

typedef struct {
    char *key, *value;
} st_meta;

struct ea_st_writer {
    st_entry *t;
    int n, cap;
    st_meta *m;
    int nm, capm;
};

/* Growable byte buffer for the header. */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t len) {
    if (b->oom) return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + len + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}

static void sb_str(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_u64(strbuf *b, unsigned long long v) {
    char tmp[32];
    int len = snprintf(tmp, sizeof tmp, "%llu", v);
    sb_put(b, tmp, (size_t)len);
}

/* JSON string literal: escapes quotes, backslashes and control bytes; other bytes pass through. */
static void sb_json_string(strbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        switch (*c) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        default:
            if (*c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", *c);
                sb_put(b, esc, 6);
            } else {
                sb_put(b, (const char *)c, 1);
            }
        }
    }
    sb_put(b, "\"", 1);
}

static const char *dtype_tag(ea_dtype t) {
    switch (t) {
    case EA_DTYPE_F32: return "F32";
    case EA_DTYPE_F16: return "F16";
    case EA_DTYPE_BF16: return "BF16";
    case EA_DTYPE_I32: return "I32";
    case EA_DTYPE_I64: return "I64";
    case EA_DTYPE_F64: return "F64";
    }
    return NULL;
}

static size_t dtype_bytes(ea_dtype t) {
    switch (t) {
    case EA_DTYPE_F16:
    case EA_DTYPE_BF16: return 2;
    case EA_DTYPE_F32:
    case EA_DTYPE_I32: return 4;
    case EA_DTYPE_I64:
    case EA_DTYPE_F64: return 8;
    }
    return 0;
}

ea_status ea_st_writer_init(ea_st_writer **out) {
    *out = calloc(1, sizeof **out);
    return *out ? EA_OK : ea_error(EA_ERR_NOMEM, "safetensors writer: out of memory");
}

void ea_st_writer_free(ea_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    for (int i = 0; i < w->nm; i++) {
        free(w->m[i].key);
        free(w->m[i].value);
    }
    free(w->t);
    free(w->m);
    free(w);
}

ea_status ea_st_writer_add(ea_st_writer *w, const char *name, ea_dtype dtype, int ndim, const int64_t *shape,
                           const void *data) {
    if (!w || !name || !*name) return ea_error(EA_ERR_ARG, "safetensors writer: empty tensor name");
    if (!strcmp(name, "__metadata__"))
        return ea_error(EA_ERR_ARG, "safetensors writer: '__metadata__' is reserved, not a tensor name");
    if (!dtype_tag(dtype)) return ea_error(EA_ERR_ARG, "safetensors writer: %s: unknown dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > EA_MAX_DIMS)
        return ea_error(EA_ERR_ARG, "safetensors writer: %s: %d dimensions (0..%d allowed)", name, ndim,
                        EA_MAX_DIMS);
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name)) return ea_error(EA_ERR_ARG, "safetensors writer: duplicate tensor %s", name);
    size_t nbytes = dtype_bytes(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return ea_error(EA_ERR_ARG, "safetensors writer: %s: negative dimension", name);
        if (ea_mul_size(nbytes, (size_t)shape[i], &nbytes))
            return ea_error(EA_ERR_NOMEM, "safetensors writer: %s: size overflows", name);
    }
    if (nbytes && !data) return ea_error(EA_ERR_ARG, "safetensors writer: %s: no data", name);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        st_entry *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) return ea_error(EA_ERR_NOMEM, "safetensors writer: out of memory");
        w->t = t;
        w->cap = cap;
    }
    st_entry *e = &w->t[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    e->data = malloc(nbytes ? nbytes : 1);
    if (!e->name || !e->data) {
        free(e->name);
        free(e->data);
        return ea_error(EA_ERR_NOMEM, "safetensors writer: %s: cannot copy %zu bytes", name, nbytes);
    }
    if (nbytes) memcpy(e->data, data, nbytes);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->nbytes = nbytes;
    w->n++;
    return EA_OK;
}

ea_status ea_st_writer_meta(ea_st_writer *w, const char *key, const char *value) {
    if (!w || !key || !*key || !value) return ea_error(EA_ERR_ARG, "safetensors writer: empty metadata key or value");
    for (int i = 0; i < w->nm; i++)
        if (!strcmp(w->m[i].key, key)) { /* last value wins */
            char *v = strdup(value);
            if (!v) return ea_error(EA_ERR_NOMEM, "safetensors writer: out of memory");
            free(w->m[i].value);
            w->m[i].value = v;
            return EA_OK;
        }
    if (w->nm == w->capm) {
        int cap = w->capm ? 2 * w->capm : 16;
        st_meta *m = realloc(w->m, (size_t)cap * sizeof *m);
        if (!m) return ea_error(EA_ERR_NOMEM, "safetensors writer: out of memory");
        w->m = m;
        w->capm = cap;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return ea_error(EA_ERR_NOMEM, "safetensors writer: out of memory");
    }
    w->m[w->nm].key = k;
    w->m[w->nm].value = v;
    w->nm++;
    return EA_OK;
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->name, ((const st_entry *)b)->name);
}

static int cmp_meta(const void *a, const void *b) { return strcmp(((const st_meta *)a)->key, ((const st_meta *)b)->key); }

/* The JSON header, padded with spaces to a multiple of 8. */
static ea_status build_header(ea_st_writer *w, const char *path, strbuf *b) {
    sb_put(b, "{", 1);
    int first = 1;
    if (w->nm) {
        sb_str(b, "\"__metadata__\":{");
        for (int i = 0; i < w->nm; i++) {
            if (i) sb_put(b, ",", 1);
            sb_json_string(b, w->m[i].key);
            sb_put(b, ":", 1);
            sb_json_string(b, w->m[i].value);
        }
        sb_put(b, "}", 1);
        first = 0;
    }
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const st_entry *e = &w->t[i];
        if (!first) sb_put(b, ",", 1);
        first = 0;
        sb_json_string(b, e->name);
        sb_str(b, ":{\"dtype\":\"");
        sb_str(b, dtype_tag(e->dtype));
        sb_str(b, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            if (d) sb_put(b, ",", 1);
            sb_u64(b, (unsigned long long)e->shape[d]);
        }
        sb_str(b, "],\"data_offsets\":[");
        sb_u64(b, off);
        sb_put(b, ",", 1);
        if (ea_add_size(off, e->nbytes, &off))
            return ea_error(EA_ERR_NOMEM, "%s: data size overflows", path);
        sb_u64(b, off);
        sb_str(b, "]}");
    }
    sb_put(b, "}", 1);
    while (!b->oom && b->n % 8) sb_put(b, " ", 1);
    if (b->oom) return ea_error(EA_ERR_NOMEM, "%s: out of memory building the header", path);
    if (b->n > EA_ST_MAX_HEADER)
        return ea_error(EA_ERR_ARG, "%s: header of %zu bytes exceeds the %u-byte limit", path, b->n,
                        (unsigned)EA_ST_MAX_HEADER);
    return EA_OK;
}

ea_status ea_st_writer_save(ea_st_writer *w, const char *path) {
    if (!w || !path || !*path) return ea_error(EA_ERR_ARG, "safetensors writer: no output path");
    if (w->n > 1) qsort(w->t, (size_t)w->n, sizeof *w->t, cmp_entry);
    if (w->nm > 1) qsort(w->m, (size_t)w->nm, sizeof *w->m, cmp_meta);
    strbuf b = {0};
    ea_status st = build_header(w, path, &b);
    if (st) {
        free(b.p);
        return st;
    }
    ea_outfile o;
    if ((st = ea_outfile_open(&o, path))) {
        free(b.p);
        return st;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)b.n >> (8 * i));
    FILE *f = o.fp;
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(b.p, 1, b.n, f) == b.n;
    for (int i = 0; ok && i < w->n; i++)
        if (w->t[i].nbytes) ok = fwrite(w->t[i].data, 1, w->t[i].nbytes, f) == w->t[i].nbytes;
    free(b.p);
    if (!ok) {
        int e = errno;
        ea_outfile_abort(&o);
        return ea_error(EA_ERR_IO, "%s: write failed: %s", path, strerror(e ? e : EIO));
    }
    return ea_outfile_commit(&o);
}
