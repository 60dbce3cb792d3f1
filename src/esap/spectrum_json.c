/* Spectrum messages as small, stable JSON: fixed key order, %.17g numbers (exact round trip),
 * and a parser that trusts nothing. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esap/esap_internal.h"

#define MSG_FORMAT "eigenalign-esap-spectrum"
#define MSG_VERSION 1
/* A d = EA_ESAP_MAX_DIM message is about 2·8192·25 bytes; anything far above is not one. */
#define MSG_MAX_BYTES ((size_t)4 << 20)
/* The message is one object holding flat arrays: depth 2. Checked before cJSON sees the text,
 * so hostile nesting never reaches its recursive parser. */
#define MSG_MAX_DEPTH 2

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} strbuf;

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (w < 0) { b->oom = 1; return; }
        if (b->p && b->n + (size_t)w < b->cap) {
            b->n += (size_t)w;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)w;
        char *q = realloc(b->p, cap);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = cap;
    }
}

static void sb_string(strbuf *b, const char *s) {
    sb_printf(b, "\"");
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') sb_printf(b, "\\%c", *s);
        else sb_printf(b, "%c", *s);
    }
    sb_printf(b, "\"");
}

static void sb_array(strbuf *b, const double *v, int n) {
    sb_printf(b, "[");
    for (int i = 0; i < n; i++) sb_printf(b, "%s%.17g", i ? ", " : "", v[i]);
    sb_printf(b, "]");
}

ea_status ea_esap_spectrum_to_json(const ea_esap_spectrum *s, char **json, size_t *len) {
    *json = NULL;
    if (len) *len = 0;
    if (!s->eigenvalues || !s->ck) return ea_error(EA_ERR_ARG, "spectrum message is empty");
    strbuf b = {0};
    sb_printf(&b, "{\n  \"format\": \"%s\",\n  \"version\": %d,\n  \"fingerprint\": ", MSG_FORMAT, MSG_VERSION);
    sb_string(&b, s->fingerprint);
    sb_printf(&b, ",\n  \"site\": ");
    sb_string(&b, s->site);
    sb_printf(&b, ",\n  \"d\": %d,\n  \"K\": %d,\n  \"Df\": %.17g,\n  \"eigenvalues\": ", s->d, s->K, s->df);
    sb_array(&b, s->eigenvalues, s->d);
    sb_printf(&b, ",\n  \"ck\": ");
    sb_array(&b, s->ck, s->K);
    sb_printf(&b, "\n}\n");
    if (b.oom) {
        free(b.p);
        return ea_error(EA_ERR_NOMEM, "spectrum message: out of memory while serializing");
    }
    *json = b.p;
    if (len) *len = b.n;
    return EA_OK;
}

/* Deepest bracket nesting outside strings; -1 on unbalanced brackets. */
static int json_depth(const char *s, size_t n) {
    int depth = 0, max = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > max) max = depth;
            if (max > MSG_MAX_DEPTH) return max; /* enough to refuse */
        } else if (c == ']' || c == '}') {
            if (--depth < 0) return -1;
        }
    }
    return depth == 0 ? max : -1;
}

static const char *const known_keys[] = {"format", "version", "fingerprint", "site", "d", "K", "Df", "eigenvalues", "ck"};
#define N_KEYS (sizeof known_keys / sizeof *known_keys)

static ea_status get_int(const cJSON *root, const char *name, const char *key, int lo, int hi, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsNumber(v))
        return ea_error(EA_ERR_FORMAT, "%s: \"%s\" must be a number", name, key);
    double x = v->valuedouble;
    if (!isfinite(x) || x != floor(x) || x < lo || x > hi)
        return ea_error(EA_ERR_FORMAT, "%s: \"%s\" = %.17g is not an integer in [%d, %d]", name, key, x, lo, hi);
    *out = (int)x;
    return EA_OK;
}

static ea_status get_name(const cJSON *root, const char *name, const char *key, char *dst) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsString(v) || !v->valuestring)
        return ea_error(EA_ERR_FORMAT, "%s: \"%s\" must be a string", name, key);
    size_t n = strlen(v->valuestring);
    if (n == 0 || n > EA_ESAP_MAX_NAME)
        return ea_error(EA_ERR_FORMAT, "%s: \"%s\" has length %zu, not in [1, %d]", name, key, n, EA_ESAP_MAX_NAME);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v->valuestring[i] < 0x20 || (unsigned char)v->valuestring[i] > 0x7e)
            return ea_error(EA_ERR_FORMAT, "%s: \"%s\" is not printable ASCII", name, key);
    memcpy(dst, v->valuestring, n + 1);
    return EA_OK;
}

/* An array of exactly n finite numbers. */
static ea_status get_array(const cJSON *root, const char *name, const char *key, int n, double *dst) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsArray(v)) return ea_error(EA_ERR_FORMAT, "%s: \"%s\" must be an array", name, key);
    int got = cJSON_GetArraySize(v);
    if (got != n) return ea_error(EA_ERR_FORMAT, "%s: \"%s\" has %d values, expected %d", name, key, got, n);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsNumber(e))
            return ea_error(EA_ERR_FORMAT, "%s: \"%s\"[%d] is not a number", name, key, i);
        if (!isfinite(e->valuedouble))
            return ea_error(EA_ERR_FORMAT, "%s: \"%s\"[%d] is not finite", name, key, i);
        dst[i++] = e->valuedouble;
    }
    return EA_OK;
}

/* The eigenvalues, Df and C(k) must describe one and the same normalized spectrum. */
static ea_status check_consistent(const char *name, const ea_esap_spectrum *s) {
    double sum = 0, sq = 0;
    for (int i = 0; i < s->d; i++) {
        double l = s->eigenvalues[i];
        if (l < 0) return ea_error(EA_ERR_FORMAT, "%s: eigenvalue %d is negative (%.17g)", name, i, l);
        if (i > 0 && l > s->eigenvalues[i - 1])
            return ea_error(EA_ERR_FORMAT, "%s: eigenvalues are not in descending order at index %d", name, i);
        sum += l;
        sq += l * l;
    }
    if (!(fabs(sum - 1.0) <= EA_ESAP_SUM_TOL))
        return ea_error(EA_ERR_FORMAT, "%s: eigenvalues sum to %.17g, not 1 (tolerance %g)", name, sum, EA_ESAP_SUM_TOL);
    double df = 1.0 / sq;
    if (!(s->df >= 1.0 - 1e-9) || !(fabs(s->df - df) <= 1e-9 * df))
        return ea_error(EA_ERR_FORMAT, "%s: Df = %.17g does not match the eigenvalues (%.17g)", name, s->df, df);
    for (int k = 1; k <= s->K; k++) {
        double c = s->ck[k - 1];
        if (c < 0 || c > 1.0 + EA_ESAP_SUM_TOL)
            return ea_error(EA_ERR_FORMAT, "%s: C(%d) = %.17g is outside [0, 1]", name, k, c);
        if (k > 1 && c < s->ck[k - 2])
            return ea_error(EA_ERR_FORMAT, "%s: C(k) is not monotone: C(%d) = %.17g < C(%d) = %.17g", name, k, c,
                            k - 1, s->ck[k - 2]);
    }
    double run = 0;
    for (int k = 1; k <= s->K; k++) {
        run += s->eigenvalues[k - 1];
        if (!(fabs(s->ck[k - 1] - run) <= EA_ESAP_SUM_TOL))
            return ea_error(EA_ERR_FORMAT, "%s: C(%d) = %.17g does not match the eigenvalues (%.17g)", name, k,
                            s->ck[k - 1], run);
    }
    return EA_OK;
}

ea_status ea_esap_spectrum_parse(const char *json, size_t len, const char *name, ea_esap_spectrum *out) {
    memset(out, 0, sizeof *out);
    if (!name) name = "message";
    if (!json || len == 0) return ea_error(EA_ERR_FORMAT, "%s: empty spectrum message", name);
    if (len > MSG_MAX_BYTES)
        return ea_error(EA_ERR_FORMAT, "%s: %zu bytes, above the %zu-byte limit of a spectrum message", name, len,
                        MSG_MAX_BYTES);
    if (memchr(json, 0, len)) return ea_error(EA_ERR_FORMAT, "%s: contains a NUL byte", name);
    int depth = json_depth(json, len);
    if (depth < 0) return ea_error(EA_ERR_FORMAT, "%s: unbalanced brackets", name);
    if (depth > MSG_MAX_DEPTH)
        return ea_error(EA_ERR_FORMAT, "%s: JSON nested deeper than %d levels (not a spectrum message)", name,
                        MSG_MAX_DEPTH);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        return ea_error(EA_ERR_FORMAT, "%s: invalid JSON near byte %zu", name, at);
    }
    for (size_t i = (size_t)(end - json); i < len; i++)
        if (json[i] != ' ' && json[i] != '\n' && json[i] != '\r' && json[i] != '\t') {
            cJSON_Delete(root);
            return ea_error(EA_ERR_FORMAT, "%s: trailing data after the JSON object at byte %zu", name, i);
        }
    ea_status st = EA_OK;
    ea_esap_spectrum s;
    memset(&s, 0, sizeof s);
    if (!cJSON_IsObject(root)) {
        st = ea_error(EA_ERR_FORMAT, "%s: a spectrum message must be a JSON object", name);
        goto done;
    }
    int seen[N_KEYS] = {0};
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        size_t k = 0;
        while (k < N_KEYS && strcmp(item->string, known_keys[k])) k++;
        if (k == N_KEYS) {
            st = ea_error(EA_ERR_FORMAT, "%s: unknown key \"%.40s\"", name, item->string);
            goto done;
        }
        if (seen[k]++) {
            st = ea_error(EA_ERR_FORMAT, "%s: duplicate key \"%s\"", name, item->string);
            goto done;
        }
    }
    for (size_t k = 0; k < N_KEYS; k++)
        if (!seen[k]) {
            st = ea_error(EA_ERR_FORMAT, "%s: missing key \"%s\"", name, known_keys[k]);
            goto done;
        }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, MSG_FORMAT)) {
        st = ea_error(EA_ERR_FORMAT, "%s: \"format\" must be \"%s\"", name, MSG_FORMAT);
        goto done;
    }
    int version;
    if ((st = get_int(root, name, "version", 0, 1 << 30, &version))) goto done;
    if (version != MSG_VERSION) {
        st = ea_error(EA_ERR_UNSUPPORTED, "%s: message version %d (this build reads version %d)", name, version,
                      MSG_VERSION);
        goto done;
    }
    if ((st = get_name(root, name, "fingerprint", s.fingerprint)) || (st = get_name(root, name, "site", s.site)) ||
        (st = get_int(root, name, "d", 1, EA_ESAP_MAX_DIM, &s.d)) || (st = get_int(root, name, "K", 1, s.d, &s.K)))
        goto done;
    const cJSON *df = cJSON_GetObjectItemCaseSensitive(root, "Df");
    if (!cJSON_IsNumber(df) || !isfinite(df->valuedouble)) {
        st = ea_error(EA_ERR_FORMAT, "%s: \"Df\" must be a finite number", name);
        goto done;
    }
    s.df = df->valuedouble;
    s.eigenvalues = malloc((size_t)s.d * sizeof *s.eigenvalues);
    s.ck = malloc((size_t)s.K * sizeof *s.ck);
    if (!s.eigenvalues || !s.ck) {
        st = ea_error(EA_ERR_NOMEM, "%s: cannot allocate %d values", name, s.d);
        goto done;
    }
    if ((st = get_array(root, name, "eigenvalues", s.d, s.eigenvalues)) || (st = get_array(root, name, "ck", s.K, s.ck)) ||
        (st = check_consistent(name, &s)))
        goto done;
    *out = s;
    memset(&s, 0, sizeof s);
done:
    ea_esap_spectrum_free(&s);
    cJSON_Delete(root);
    return st;
}

ea_status ea_esap_spectrum_save(const ea_esap_spectrum *s, const char *path) {
    char *json;
    size_t len;
    ea_status st = ea_esap_spectrum_to_json(s, &json, &len);
    if (st) return st;
    st = ea_write_file_atomic(path, json, len);
    free(json);
    return st;
}

ea_status ea_esap_spectrum_load(const char *path, ea_esap_spectrum *out) {
    memset(out, 0, sizeof *out);
    char *json;
    size_t len;
    ea_status st = ea_read_file(path, MSG_MAX_BYTES, &json, &len);
    if (st) return st;
    st = ea_esap_spectrum_parse(json, len, path, out);
    free(json);
    return st;
}
