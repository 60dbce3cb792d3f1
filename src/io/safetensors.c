/* safetensors reader: files up to EA_ST_READ_LIMIT are read into memory with pread, larger ones
 * mapped; tensors are converted with pread either way, so a file truncated while it is loaded is
 * an error, never a SIGBUS in the loader. The header is untrusted: every length, offset and shape is
 * checked before anything points into the file. Format: u64 little-endian header size N, N bytes
 * of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, data. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ea/io.h"

/* Dimensions above this are hostile whatever the model: the largest real vocab is ~260k. */
#define EA_ST_MAX_DIM ((int64_t)1 << 32)
#define EA_ST_MAX_TENSORS 100000
#define EA_ST_READ_LIMIT ((size_t)64 << 20)

struct ea_st_file {
    char *path;
    void *map;      /* the file's bytes: mmap'd, or malloc'd when owned */
    int owned;      /* map is a heap copy */
    int fd;         /* kept open for pread, -1 when closed */
    size_t size;
    int n;
    ea_st_tensor *tensors;
    int n_meta;
    char **meta_keys, **meta_vals;
};

const char *ea_dtype_name(ea_dtype t) {
    static const char *names[] = {"F32", "F16", "BF16", "I32", "I64", "F64"};
    return (unsigned)t < 6 ? names[t] : "?";
}

size_t ea_dtype_size(ea_dtype t) {
    static const size_t sizes[] = {4, 2, 2, 4, 8, 8};
    return (unsigned)t < 6 ? sizes[t] : 0;
}

static int dtype_parse(const char *s, ea_dtype *out) {
    for (int i = 0; i < 6; i++)
        if (!strcmp(s, ea_dtype_name((ea_dtype)i))) { *out = (ea_dtype)i; return 0; }
    return -1;
}

/* A JSON number that is an exact non-negative integer representable in a double. */
static int json_uint(const cJSON *j, uint64_t max, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || v != floor(v) || (uint64_t)v > max) return -1;
    *out = (uint64_t)v;
    return 0;
}

void ea_st_close(ea_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) { free(f->meta_keys[i]); free(f->meta_vals[i]); }
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_vals);
    if (f->owned) free(f->map);
    else if (f->map && f->map != MAP_FAILED) munmap(f->map, f->size);
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    free(f);
}

static int cmp_by_offset(const void *a, const void *b) {
    const ea_st_tensor *x = a, *y = b;
    const char *px = x->data, *py = y->data;
    return px < py ? -1 : px > py;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const ea_st_tensor *)a)->name, ((const ea_st_tensor *)b)->name);
}

static ea_status parse_metadata(ea_st_file *f, const cJSON *meta) {
    if (!cJSON_IsObject(meta)) return ea_error(EA_ERR_FORMAT, "%s: __metadata__ is not an object", f->path);
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    f->meta_vals = calloc((size_t)n + 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_vals) return ea_error(EA_ERR_NOMEM, "%s: out of memory", f->path);
    const cJSON *it;
    cJSON_ArrayForEach(it, meta) {
        if (!cJSON_IsString(it))
            return ea_error(EA_ERR_FORMAT, "%s: __metadata__ value '%s' is not a string", f->path, it->string);
        f->meta_keys[f->n_meta] = strdup(it->string);
        f->meta_vals[f->n_meta] = strdup(it->valuestring);
        f->n_meta++;
        if (!f->meta_keys[f->n_meta - 1] || !f->meta_vals[f->n_meta - 1])
            return ea_error(EA_ERR_NOMEM, "%s: out of memory", f->path);
    }
    return EA_OK;
}

static ea_status parse_tensor(ea_st_file *f, const cJSON *it, const char *data, size_t data_size, ea_st_tensor *t) {
    const char *name = it->string;
    if (!cJSON_IsObject(it)) return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' entry is not an object", f->path, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo))
        return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' lacks dtype, shape or data_offsets", f->path, name);
    if (dtype_parse(jd->valuestring, &t->dtype))
        return ea_error(EA_ERR_UNSUPPORTED, "%s: tensor '%s' has unsupported dtype '%s'", f->path, name, jd->valuestring);
    int ndim = cJSON_GetArraySize(js);
    if (ndim > EA_MAX_DIMS)
        return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' has %d dimensions (max %d)", f->path, name, ndim, EA_MAX_DIMS);
    t->ndim = ndim;
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        uint64_t v;
        if (json_uint(cJSON_GetArrayItem(js, i), (uint64_t)EA_ST_MAX_DIM, &v))
            return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' has an invalid dimension %d (negative, fractional or above 2^32)",
                            f->path, name, i);
        t->shape[i] = (int64_t)v;
        if (ea_mul_size(numel, (size_t)v, &numel))
            return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' shape overflows", f->path, name);
    }
    t->numel = numel;
    if (ea_mul_size(numel, ea_dtype_size(t->dtype), &t->nbytes))
        return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' byte size overflows", f->path, name);
    uint64_t b, e;
    if (cJSON_GetArraySize(jo) != 2 || json_uint(cJSON_GetArrayItem(jo, 0), UINT64_MAX, &b) ||
        json_uint(cJSON_GetArrayItem(jo, 1), UINT64_MAX, &e))
        return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' has malformed data_offsets", f->path, name);
    if (e < b || e > data_size)
        return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' data_offsets [%llu, %llu] outside the data section (%zu bytes)",
                        f->path, name, (unsigned long long)b, (unsigned long long)e, data_size);
    if (e - b != t->nbytes)
        return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' shape x dtype is %zu bytes but data_offsets span %llu",
                        f->path, name, t->nbytes, (unsigned long long)(e - b));
    t->data = data + b;
    t->name = strdup(name);
    return t->name ? EA_OK : ea_error(EA_ERR_NOMEM, "%s: out of memory", f->path);
}

static ea_status parse_header(ea_st_file *f, const char *json, size_t len, const char *data, size_t data_size) {
    errno = 0; /* ENOMEM after a NULL: an allocation failed, not the syntax */
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root && errno == ENOMEM) return ea_error(EA_ERR_NOMEM, "%s: out of memory while parsing the header", f->path);
    if (!root) return ea_error(EA_ERR_FORMAT, "%s: header is not valid JSON", f->path);
    ea_status st = EA_OK;
    if (!cJSON_IsObject(root)) {
        st = ea_error(EA_ERR_FORMAT, "%s: header is not a JSON object", f->path);
        goto done;
    }
    int n = cJSON_GetArraySize(root);
    if (n > EA_ST_MAX_TENSORS) {
        st = ea_error(EA_ERR_FORMAT, "%s: header lists %d entries (max %d)", f->path, n, EA_ST_MAX_TENSORS);
        goto done;
    }
    f->tensors = calloc((size_t)n + 1, sizeof *f->tensors);
    if (!f->tensors) { st = ea_error(EA_ERR_NOMEM, "%s: out of memory", f->path); goto done; }
    const cJSON *it;
    int seen_meta = 0;
    cJSON_ArrayForEach(it, root) {
        if (!strcmp(it->string, "__metadata__")) {
            if (seen_meta++) { st = ea_error(EA_ERR_FORMAT, "%s: duplicate __metadata__", f->path); goto done; }
            if ((st = parse_metadata(f, it))) goto done;
            continue;
        }
        if ((st = parse_tensor(f, it, data, data_size, &f->tensors[f->n]))) goto done;
        f->n++;
    }
    /* Duplicate names would make lookups ambiguous; overlapping ranges mean crafted aliasing. */
    qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_by_name);
    for (int i = 1; i < f->n; i++)
        if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name)) {
            st = ea_error(EA_ERR_FORMAT, "%s: duplicate tensor name '%s'", f->path, f->tensors[i].name);
            goto done;
        }
    ea_st_tensor *byoff = malloc(sizeof *byoff * ((size_t)f->n + 1));
    if (!byoff) { st = ea_error(EA_ERR_NOMEM, "%s: out of memory", f->path); goto done; }
    memcpy(byoff, f->tensors, sizeof *byoff * (size_t)f->n);
    qsort(byoff, (size_t)f->n, sizeof *byoff, cmp_by_offset);
    /* The tensors must tile the data section in offset order, as the reference implementation
     * requires: a gap would hide bytes no tensor accounts for. */
    size_t covered = 0;
    for (int i = 0; i < f->n && !st; i++) {
        size_t begin = (size_t)((const char *)byoff[i].data - data);
        if (begin < covered)
            st = ea_error(EA_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", f->path, byoff[i - 1].name, byoff[i].name);
        else if (begin > covered)
            st = ea_error(EA_ERR_FORMAT, "%s: data bytes [%zu, %zu) are not covered by any tensor", f->path, covered, begin);
        covered = begin + byoff[i].nbytes;
    }
    if (!st && covered != data_size)
        st = ea_error(EA_ERR_FORMAT, "%s: data bytes [%zu, %zu) are not covered by any tensor", f->path, covered,
                      data_size);
    free(byoff);
done:
    cJSON_Delete(root);
    return st;
}

/* n bytes at off, or an error saying the file shrank (it was truncated while in use). */
static ea_status ea_st_pread(const ea_st_file *f, void *dst, size_t n, size_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(f->fd, (char *)dst + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return ea_error(EA_ERR_IO, "%s: read failed at byte %zu: %s", f->path, off + got, strerror(errno));
        if (r == 0) {
            struct stat sb;
            long long now = fstat(f->fd, &sb) == 0 ? (long long)sb.st_size : -1;
            return ea_error(EA_ERR_IO, "%s: file truncated while in use: %lld bytes now, %zu when opened", f->path,
                            now, f->size);
        }
        got += (size_t)r;
    }
    return EA_OK;
}

ea_status ea_st_open(const char *path, ea_st_file **out) {
    *out = NULL;
    ea_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) { free(f); return ea_error(EA_ERR_NOMEM, "%s: out of memory", path); }
    f->fd = -1;
    ea_status st;
    int fd;
    if ((st = ea_open_input(path, &fd))) goto fail; /* never blocks on a FIFO */
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = ea_error(EA_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        goto fail;
    }
    f->size = (size_t)sb.st_size;
    if (f->size < 8) {
        close(fd);
        st = ea_error(EA_ERR_FORMAT, "%s: truncated: %zu bytes, shorter than the 8-byte header length", path, f->size);
        goto fail;
    }
    f->fd = fd;
    if (f->size <= EA_ST_READ_LIMIT) {
        f->map = malloc(f->size);
        if (!f->map) { st = ea_error(EA_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, f->size); goto fail; }
        f->owned = 1;
        if ((st = ea_st_pread(f, f->map, f->size, 0))) goto fail;
    } else {
        f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) { f->map = NULL; st = ea_error(EA_ERR_IO, "%s: mmap failed: %s", path, strerror(errno)); goto fail; }
    }
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > EA_ST_MAX_HEADER) {
        st = ea_error(EA_ERR_FORMAT, "%s: header length %llu exceeds the %u-byte limit", path, (unsigned long long)hlen,
                      EA_ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > f->size - 8) {
        st = ea_error(EA_ERR_FORMAT, "%s: truncated: header length %llu runs past the end of the %zu-byte file", path,
                      (unsigned long long)hlen, f->size);
        goto fail;
    }
    if ((st = parse_header(f, (const char *)p + 8, (size_t)hlen, (const char *)p + 8 + hlen, f->size - 8 - (size_t)hlen)))
        goto fail;
    *out = f;
    return EA_OK;
fail:
    ea_st_close(f);
    return st;
}

int ea_st_count(const ea_st_file *f) { return f->n; }
const ea_st_tensor *ea_st_get(const ea_st_file *f, int i) { return (i >= 0 && i < f->n) ? &f->tensors[i] : NULL; }
const char *ea_st_path(const ea_st_file *f) { return f->path; }

const ea_st_tensor *ea_st_find(const ea_st_file *f, const char *name) {
    ea_st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, (size_t)f->n, sizeof key, cmp_by_name);
}

const char *ea_st_metadata(const ea_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_vals[i];
    return NULL;
}

static ea_status convert_f32(const ea_st_file *f, const ea_st_tensor *t, const unsigned char *src, size_t n,
                             float *dst);

/* From a mapped file the bytes are read with pread in chunks, never through the mapping. */
ea_status ea_st_to_f32(const ea_st_file *f, const ea_st_tensor *t, float *dst) {
    if (f->owned || f->fd < 0) return convert_f32(f, t, t->data, t->numel, dst);
    size_t es = t->numel ? t->nbytes / t->numel : 0, off = (size_t)((const char *)t->data - (const char *)f->map);
    if (t->dtype == EA_DTYPE_F32) return ea_st_pread(f, dst, t->nbytes, off);
    enum { CHUNK = 1 << 16 };
    unsigned char *buf = malloc(CHUNK);
    if (!buf) return ea_error(EA_ERR_NOMEM, "%s: out of memory", f->path);
    ea_status st = EA_OK;
    for (size_t i = 0; i < t->numel && !st;) {
        size_t k = t->numel - i < CHUNK / es ? t->numel - i : CHUNK / es;
        if (!(st = ea_st_pread(f, buf, k * es, off + i * es))) st = convert_f32(f, t, buf, k, dst + i);
        i += k;
    }
    free(buf);
    return st;
}

static ea_status convert_f32(const ea_st_file *f, const ea_st_tensor *t, const unsigned char *src, size_t n,
                             float *dst) {
    /* src may be unaligned: read through memcpy */
    switch (t->dtype) {
    case EA_DTYPE_F32: memcpy(dst, src, n * 4); break;
    case EA_DTYPE_F16:
        if (((uintptr_t)src & 1) == 0) ea_f16_to_f32_array((const uint16_t *)(const void *)src, dst, n);
        else for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, src + 2 * i, 2); dst[i] = ea_f16_to_f32(h); }
        break;
    case EA_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, src + 2 * i, 2); dst[i] = ea_bf16_to_f32(h); }
        break;
    case EA_DTYPE_I32:
        for (size_t i = 0; i < n; i++) { int32_t v; memcpy(&v, src + 4 * i, 4); dst[i] = (float)v; }
        break;
    case EA_DTYPE_I64:
        for (size_t i = 0; i < n; i++) { int64_t v; memcpy(&v, src + 8 * i, 8); dst[i] = (float)v; }
        break;
    case EA_DTYPE_F64:
        for (size_t i = 0; i < n; i++) { double v; memcpy(&v, src + 8 * i, 8); dst[i] = (float)v; }
        break;
    default: return ea_error(EA_ERR_UNSUPPORTED, "%s: tensor '%s': unsupported dtype", f->path, t->name);
    }
    return EA_OK;
}
