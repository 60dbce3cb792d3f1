/* Loading tokenizer.json (Hugging Face tokenizers' serialization) and tokenizer_config.json.
 * Only what changes the ids is kept: the BPE model (vocab, merges, unk, byte_fallback,
 * fuse_unk, ignore_merges), added tokens, normalizers, pre-tokenizers; the post-processor and
 * tokenizer_config.json only decide BOS, the decoder only how many leading spaces decoding drops.
 * Everything else that would change the ids (dropout, subword prefixes, other model,
 * normalizer or pre-tokenizer types) is refused with the field and value named, never ignored. */
#include <errno.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer/tokjson.h"

#define TJ_MAX_BYTES ((size_t)512 << 20)
/* Real vocabularies have at most a few hundred thousand ids; this bounds what a hostile file
 * can make the loader allocate. */
#define TJ_MAX_ID (1 << 24)

typedef struct {
    const char *path;
    ea_tokenizer *t;
    ea_tok_json *j;
} loader;

static const cJSON *field(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

/* A boolean field: absent or null gives def; anything but a boolean is an error. */
static ea_status get_bool(const loader *L, const cJSON *o, const char *where, const char *key, int def, int *out) {
    const cJSON *v = field(o, key);
    if (!v || cJSON_IsNull(v)) *out = def;
    else if (cJSON_IsBool(v)) *out = cJSON_IsTrue(v);
    else return ea_error(EA_ERR_FORMAT, "%s: %s.%s must be true or false", L->path, where, key);
    return EA_OK;
}

/* A string field; *out NULL when absent or null. */
static ea_status get_str(const loader *L, const cJSON *o, const char *where, const char *key, const char **out) {
    const cJSON *v = field(o, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return EA_OK;
    if (!cJSON_IsString(v)) return ea_error(EA_ERR_FORMAT, "%s: %s.%s must be a string", L->path, where, key);
    *out = v->valuestring;
    return EA_OK;
}

static ea_status get_id(const loader *L, const cJSON *v, const char *what, const char *name, int32_t *id) {
    if (!cJSON_IsNumber(v))
        return ea_error(EA_ERR_FORMAT, "%s: %s \"%.60s\" has a non-numeric id", L->path, what, name);
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < 0 || d >= TJ_MAX_ID)
        return ea_error(EA_ERR_FORMAT, "%s: %s \"%.60s\" has id %g (ids are integers in [0, %d))", L->path, what, name,
                        d, TJ_MAX_ID);
    *id = (int32_t)d;
    return EA_OK;
}

/* ---- patterns ------------------------------------------------------------------------------- */

#define WS_CLASS "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* Rewrite an Oniguruma pattern for PCRE2: \s and \S become Unicode White_Space classes (what
 * Oniguruma matches; PCRE2 10.42's \s also takes U+180E). \S inside a class has no PCRE2
 * spelling and is refused. */
static ea_status translate_pattern(const loader *L, const char *where, const char *in, char **out) {
    size_t n = strlen(in), cap = n * (sizeof WS_CLASS + 4) + 1;
    char *o = malloc(cap);
    if (!o) return ea_error(EA_ERR_NOMEM, "%s: cannot allocate a pattern", L->path);
    size_t k = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c == '\\' && i + 1 < n) {
            char d = in[++i];
            if (d == 's') {
                const char *r = in_class ? WS_CLASS : "[" WS_CLASS "]";
                memcpy(o + k, r, strlen(r));
                k += strlen(r);
            } else if (d == 'S') {
                if (in_class) {
                    free(o);
                    return ea_error(EA_ERR_UNSUPPORTED, "%s: %s: \\S inside a character class is not supported", L->path,
                                    where);
                }
                memcpy(o + k, "[^" WS_CLASS "]", sizeof "[^" WS_CLASS "]" - 1);
                k += sizeof "[^" WS_CLASS "]" - 1;
            } else {
                o[k++] = '\\';
                o[k++] = d;
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            o[k++] = c;
            if (i + 1 < n && in[i + 1] == '^') o[k++] = in[++i];
            if (i + 1 < n && in[i + 1] == ']') o[k++] = in[++i]; /* a leading ] is literal */
            continue;
        }
        if (in_class && c == ']') in_class = 0;
        o[k++] = c;
    }
    o[k] = 0;
    *out = o;
    return EA_OK;
}

/* Compile a {"Regex": ...} or {"String": ...} pattern object. */
static ea_status compile_pattern(const loader *L, const char *where, const cJSON *pat, pcre2_code **re, int *jit) {
    const cJSON *rx = field(pat, "Regex"), *lit = field(pat, "String");
    if (!cJSON_IsObject(pat) || (!cJSON_IsString(rx) && !cJSON_IsString(lit)))
        return ea_error(EA_ERR_FORMAT, "%s: %s.pattern must be {\"Regex\": ...} or {\"String\": ...}", L->path, where);
    char *src = NULL;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP;
    if (cJSON_IsString(rx)) {
        ea_status st = translate_pattern(L, where, rx->valuestring, &src);
        if (st) return st;
    } else {
        src = strdup(lit->valuestring);
        if (!src) return ea_error(EA_ERR_NOMEM, "%s: cannot allocate a pattern", L->path);
        opts = PCRE2_UTF | PCRE2_LITERAL; /* PCRE2 refuses UCP beside LITERAL */
    }
    int err;
    PCRE2_SIZE at;
    *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, opts, &err, &at, NULL);
    free(src);
    if (!*re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return ea_error(EA_ERR_FORMAT, "%s: %s.pattern does not compile (at offset %zu): %s", L->path, where,
                        (size_t)at, (const char *)msg);
    }
    *jit = pcre2_jit_compile(*re, PCRE2_JIT_COMPLETE) == 0;
    return EA_OK;
}

/* ---- normalizers ---------------------------------------------------------------------------- */

static ea_status add_norm(loader *L, tj_norm **out) {
    tj_norm *p = realloc(L->j->norm, (size_t)(L->j->n_norm + 1) * sizeof *p);
    if (!p) return ea_error(EA_ERR_NOMEM, "%s: cannot allocate a normalizer", L->path);
    L->j->norm = p;
    *out = &p[L->j->n_norm++];
    memset(*out, 0, sizeof **out);
    return EA_OK;
}

static ea_status dup_str(const loader *L, const char *s, char **out, size_t *n) {
    *n = strlen(s);
    *out = malloc(*n + 1);
    if (!*out) return ea_error(EA_ERR_NOMEM, "%s: cannot allocate a string", L->path);
    memcpy(*out, s, *n + 1);
    return EA_OK;
}

static ea_status parse_normalizer(loader *L, const cJSON *o, int depth) {
    if (!o || cJSON_IsNull(o)) return EA_OK;
    if (depth > 8) return ea_error(EA_ERR_FORMAT, "%s: normalizer sequences nest too deeply", L->path);
    const char *type = NULL;
    ea_status st = get_str(L, o, "normalizer", "type", &type);
    if (st) return st;
    if (!cJSON_IsObject(o) || !type) return ea_error(EA_ERR_FORMAT, "%s: normalizer has no \"type\"", L->path);
    tj_norm *k = NULL;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = field(o, "normalizers"), *it;
        if (!cJSON_IsArray(list))
            return ea_error(EA_ERR_FORMAT, "%s: normalizer Sequence has no \"normalizers\" list", L->path);
        cJSON_ArrayForEach(it, list) if ((st = parse_normalizer(L, it, depth + 1))) return st;
        return EA_OK;
    }
    static const struct { const char *name; tj_norm_kind kind; } forms[] = {
        {"NFC", TJ_NFC}, {"NFD", TJ_NFD}, {"NFKC", TJ_NFKC}, {"NFKD", TJ_NFKD}};
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
        if (strcmp(type, forms[i].name)) continue;
        if ((st = add_norm(L, &k))) return st;
        k->kind = forms[i].kind;
        return EA_OK;
    }
    if (!strcmp(type, "Prepend")) {
        const char *s = NULL;
        if ((st = get_str(L, o, "normalizer Prepend", "prepend", &s))) return st;
        if (!s) return ea_error(EA_ERR_FORMAT, "%s: normalizer Prepend has no \"prepend\" string", L->path);
        if ((st = add_norm(L, &k))) return st;
        k->kind = TJ_PREPEND;
        return dup_str(L, s, &k->a, &k->na);
    }
    if (!strcmp(type, "Replace")) {
        const char *content = NULL;
        if ((st = get_str(L, o, "normalizer Replace", "content", &content))) return st;
        const cJSON *pat = field(o, "pattern");
        if (!content || !cJSON_IsObject(pat))
            return ea_error(EA_ERR_FORMAT, "%s: normalizer Replace needs \"pattern\" and \"content\"", L->path);
        if ((st = add_norm(L, &k))) return st;
        k->kind = TJ_REPLACE;
        if ((st = dup_str(L, content, &k->b, &k->nb))) return st;
        const cJSON *lit = field(pat, "String");
        if (cJSON_IsString(lit)) return dup_str(L, lit->valuestring, &k->a, &k->na);
        return compile_pattern(L, "normalizer Replace", pat, &k->re, &k->jit);
    }
    return ea_error(EA_ERR_UNSUPPORTED,
                    "%s: normalizer type \"%.60s\" is not supported (supported: NFC, NFD, NFKC, NFKD, Prepend, Replace, "
                    "Sequence)",
                    L->path, type);
}

/* ---- pre-tokenizers ------------------------------------------------------------------------- */

static ea_status add_pre(loader *L, tj_pre **out) {
    tj_pre *p = realloc(L->j->pre, (size_t)(L->j->n_pre + 1) * sizeof *p);
    if (!p) return ea_error(EA_ERR_NOMEM, "%s: cannot allocate a pre-tokenizer", L->path);
    L->j->pre = p;
    *out = &p[L->j->n_pre++];
    memset(*out, 0, sizeof **out);
    return EA_OK;
}

static ea_status parse_pretok(loader *L, const cJSON *o, int depth) {
    if (!o || cJSON_IsNull(o)) return EA_OK;
    if (depth > 8) return ea_error(EA_ERR_FORMAT, "%s: pre_tokenizer sequences nest too deeply", L->path);
    const char *type = NULL;
    ea_status st = get_str(L, o, "pre_tokenizer", "type", &type);
    if (st) return st;
    if (!cJSON_IsObject(o) || !type) return ea_error(EA_ERR_FORMAT, "%s: pre_tokenizer has no \"type\"", L->path);
    tj_pre *p = NULL;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = field(o, "pretokenizers"), *it;
        if (!cJSON_IsArray(list))
            return ea_error(EA_ERR_FORMAT, "%s: pre_tokenizer Sequence has no \"pretokenizers\" list", L->path);
        cJSON_ArrayForEach(it, list) if ((st = parse_pretok(L, it, depth + 1))) return st;
        return EA_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        int aps = 0, use_regex = 1;
        if ((st = get_bool(L, o, "pre_tokenizer ByteLevel", "add_prefix_space", 1, &aps)) ||
            (st = get_bool(L, o, "pre_tokenizer ByteLevel", "use_regex", 1, &use_regex)))
            return st;
        if ((st = add_pre(L, &p))) return st;
        p->kind = TJ_BYTELEVEL;
        p->add_prefix_space = aps;
        L->j->byte_level = 1;
        if (use_regex) {
            int err;
            PCRE2_SIZE at;
            p->re = pcre2_compile((PCRE2_SPTR)ea_tok_gpt2_pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err,
                                  &at, NULL);
            if (!p->re) return ea_error(EA_ERR_UNSUPPORTED, "%s: the ByteLevel pattern does not compile", L->path);
            p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0;
        }
        return EA_OK;
    }
    if (!strcmp(type, "Split")) {
        const char *beh = NULL;
        int invert = 0;
        if ((st = get_str(L, o, "pre_tokenizer Split", "behavior", &beh)) ||
            (st = get_bool(L, o, "pre_tokenizer Split", "invert", 0, &invert)))
            return st;
        static const struct { const char *name; tj_behavior b; } behs[] = {
            {"Removed", TJ_REMOVED}, {"Isolated", TJ_ISOLATED}, {"MergedWithPrevious", TJ_MERGED_PREV},
            {"MergedWithNext", TJ_MERGED_NEXT}, {"Contiguous", TJ_CONTIGUOUS}};
        int found = -1;
        for (int i = 0; beh && i < 5; i++)
            if (!strcmp(beh, behs[i].name)) found = i;
        if (found < 0)
            return ea_error(EA_ERR_UNSUPPORTED, "%s: pre_tokenizer Split behavior \"%.60s\" is not supported", L->path,
                            beh ? beh : "(missing)");
        if ((st = add_pre(L, &p))) return st;
        p->kind = TJ_SPLIT;
        p->behavior = behs[found].b;
        p->invert = invert;
        return compile_pattern(L, "pre_tokenizer Split", field(o, "pattern"), &p->re, &p->jit);
    }
    if (!strcmp(type, "Digits")) { /* Rust's char::is_numeric (N*): one piece per digit, or per run */
        int individual = 0;
        if ((st = get_bool(L, o, "pre_tokenizer Digits", "individual_digits", 0, &individual))) return st;
        if ((st = add_pre(L, &p))) return st;
        p->kind = TJ_SPLIT;
        p->behavior = individual ? TJ_ISOLATED : TJ_CONTIGUOUS;
        cJSON *pat = cJSON_CreateObject();
        if (!pat || !cJSON_AddStringToObject(pat, "Regex", "\\p{N}")) {
            cJSON_Delete(pat);
            return ea_error(EA_ERR_NOMEM, "%s: cannot allocate a pattern", L->path);
        }
        st = compile_pattern(L, "pre_tokenizer Digits", pat, &p->re, &p->jit);
        cJSON_Delete(pat);
        return st;
    }
    if (!strcmp(type, "Metaspace")) {
        const char *repl = NULL, *scheme = NULL;
        int aps = 1, split = 1;
        const cJSON *has_aps = field(o, "add_prefix_space");
        if ((st = get_str(L, o, "pre_tokenizer Metaspace", "replacement", &repl)) ||
            (st = get_str(L, o, "pre_tokenizer Metaspace", "prepend_scheme", &scheme)) ||
            (st = get_bool(L, o, "pre_tokenizer Metaspace", "add_prefix_space", 1, &aps)) ||
            (st = get_bool(L, o, "pre_tokenizer Metaspace", "split", 1, &split)))
            return st;
        if (!repl) repl = "\xe2\x96\x81";
        size_t nr = strlen(repl);
        unsigned char r0 = (unsigned char)repl[0];
        size_t one = r0 < 0x80 ? 1 : r0 >= 0xF0 ? 4 : r0 >= 0xE0 ? 3 : 2; /* bytes of one character */
        if (nr != one || ea_tok_utf8_valid_prefix((const unsigned char *)repl, nr) != nr)
            return ea_error(EA_ERR_FORMAT, "%s: pre_tokenizer Metaspace replacement must be one character", L->path);
        if ((st = add_pre(L, &p))) return st;
        p->kind = TJ_METASPACE;
        memcpy(p->repl, repl, nr);
        p->nrepl = nr;
        p->split = split;
        if (scheme) {
            if (!strcmp(scheme, "always")) p->scheme = TJ_PREPEND_ALWAYS;
            else if (!strcmp(scheme, "first")) p->scheme = TJ_PREPEND_FIRST;
            else if (!strcmp(scheme, "never")) p->scheme = TJ_PREPEND_NEVER;
            else
                return ea_error(EA_ERR_UNSUPPORTED, "%s: pre_tokenizer Metaspace prepend_scheme \"%.60s\" is not supported",
                                L->path, scheme);
        } else {
            /* Files older than prepend_scheme say add_prefix_space. */
            p->scheme = (has_aps && !aps) ? TJ_PREPEND_NEVER : TJ_PREPEND_ALWAYS;
        }
        return EA_OK;
    }
    return ea_error(EA_ERR_UNSUPPORTED,
                    "%s: pre_tokenizer type \"%.60s\" is not supported (supported: ByteLevel, Split, Digits, Metaspace, "
                    "Sequence)",
                    L->path, type);
}

/* ---- vocabulary ----------------------------------------------------------------------------- */

/* Bytes a model token decodes to: byte-level texts through GPT-2's alphabet (a text with other
 * characters stays as it is, as Hugging Face's ByteLevel decoder does), SentencePiece texts with
 * U+2581 as a space and <0xNN> as the byte NN. */
static size_t decode_model_text(int byte_level, const char *s, size_t n, unsigned char *out) {
    if (byte_level) {
        long nb = ea_tok_alphabet_decode(s, n, out);
        if (nb >= 0) return (size_t)nb;
        memcpy(out, s, n);
        return n;
    }
    if (n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>') {
        unsigned v;
        char hex[3] = {s[3], s[4], 0};
        char *end;
        v = (unsigned)strtoul(hex, &end, 16);
        if (*end == 0 && hex[0] != '+' && hex[0] != '-' && hex[0] != ' ') {
            out[0] = (unsigned char)v;
            return 1;
        }
    }
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && !memcmp(s + i, "\xe2\x96\x81", 3)) {
            out[k++] = ' ';
            i += 3;
        } else {
            out[k++] = (unsigned char)s[i++];
        }
    }
    return k;
}

static ea_status load_vocab(loader *L, const cJSON *vocab, const cJSON *added) {
    ea_tokenizer *t = L->t;
    ea_tok_json *j = L->j;
    ea_status st;
    int32_t max_id = -1;
    size_t text_bytes = 0, n_model = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = 0;
        if ((st = get_id(L, it, "model.vocab token", it->string, &id))) return st;
        if (id > max_id) max_id = id;
        size_t n = strlen(it->string);
        if (n == 0) return ea_error(EA_ERR_FORMAT, "%s: model.vocab has an empty token (id %d)", L->path, (int)id);
        text_bytes += n + 1;
        n_model++;
    }
    cJSON_ArrayForEach(it, added) {
        const cJSON *idv = field(it, "id"), *content = field(it, "content");
        if (!cJSON_IsObject(it) || !cJSON_IsString(content))
            return ea_error(EA_ERR_FORMAT, "%s: an added_tokens entry has no \"content\" string", L->path);
        if (!content->valuestring[0]) return ea_error(EA_ERR_FORMAT, "%s: an added token has empty content", L->path);
        int32_t id = 0;
        if ((st = get_id(L, idv, "added token", content->valuestring, &id))) return st;
        if (id > max_id) max_id = id;
        text_bytes += strlen(content->valuestring) + 1;
    }
    if (n_model == 0) return ea_error(EA_ERR_FORMAT, "%s: model.vocab is empty", L->path);
    size_t n = (size_t)max_id + 1, n_tokens = n_model + (size_t)cJSON_GetArraySize(added);
    /* Real vocabularies are dense (holes at most in the padding of added tokens); sparse ids
     * would let a small file claim gigabytes of tables. */
    if (n > 4 * n_tokens + 4096)
        return ea_error(EA_ERR_FORMAT, "%s: ids go up to %d for only %zu tokens (sparse ids are refused)", L->path,
                        (int)max_id, n_tokens);
    t->n_vocab = (int)n;
    j->n_model = (int)n;
    t->pool = malloc(text_bytes + 1);
    t->tok_off = malloc(n * sizeof *t->tok_off);
    t->tok_len = calloc(n, sizeof *t->tok_len);
    j->mpool = malloc(text_bytes + 1);
    j->moff = malloc(n * sizeof *j->moff);
    j->mlen = calloc(n, sizeof *j->mlen);
    if (!t->pool || !t->tok_off || !t->tok_len || !j->mpool || !j->moff || !j->mlen)
        return ea_error(EA_ERR_NOMEM, "%s: cannot allocate %zu tokens", L->path, n);
    for (size_t i = 0; i < n; i++) t->tok_off[i] = j->moff[i] = SIZE_MAX;
    size_t used = 0, mused = 0;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id = (int32_t)it->valuedouble;
        if (j->moff[id] != SIZE_MAX)
            return ea_error(EA_ERR_FORMAT, "%s: model.vocab gives id %d to two tokens (the second is \"%.60s\")", L->path,
                            (int)id, it->string);
        size_t len = strlen(it->string);
        memcpy(j->mpool + mused, it->string, len + 1);
        j->moff[id] = mused;
        j->mlen[id] = len;
        mused += len + 1;
        size_t nb = decode_model_text(j->byte_level, it->string, len, (unsigned char *)t->pool + used);
        t->tok_off[id] = used;
        t->tok_len[id] = nb;
        used += nb;
        t->pool[used++] = 0;
    }
    /* Added tokens decode to their content (Hugging Face looks them up before the model). */
    cJSON_ArrayForEach(it, added) {
        int32_t id = (int32_t)field(it, "id")->valuedouble;
        const char *c = field(it, "content")->valuestring;
        size_t len = strlen(c);
        memcpy(t->pool + used, c, len + 1);
        t->tok_off[id] = used;
        t->tok_len[id] = len;
        used += len + 1;
    }
    if ((st = ea_tok_bytes_map_init(&j->mmap, n_model, j->mpool, j->moff, j->mlen))) return st;
    for (int32_t id = 0; id < (int32_t)n; id++) {
        if (j->moff[id] == SIZE_MAX) continue;
        int32_t other = ea_tok_bytes_map_add(&j->mmap, id);
        if (other >= 0)
            return ea_error(EA_ERR_FORMAT, "%s: model.vocab ids %d and %d spell the same token \"%.60s\"", L->path,
                            (int)other, (int)id, j->mpool + j->moff[id]);
    }
    return EA_OK;
}

static int32_t model_id(const ea_tok_json *j, const char *s, size_t n) { return ea_tok_bytes_map_find(&j->mmap, s, n); }

static ea_status merge_side(const loader *L, size_t rank, const char *s, size_t n, int32_t *id) {
    *id = model_id(L->j, s, n);
    if (*id < 0)
        return ea_error(EA_ERR_FORMAT, "%s: merge %zu: token \"%.*s\" is not in model.vocab", L->path, rank + 1,
                        (int)(n > 60 ? 60 : n), s);
    return EA_OK;
}

static ea_status load_merges(loader *L, const cJSON *merges) {
    ea_status st = ea_tok_pair_map_init(&L->t->merges, (size_t)cJSON_GetArraySize(merges));
    if (st) return st;
    char *buf = NULL;
    size_t cap = 0, rank = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, merges) {
        const char *a, *b;
        size_t na, nb;
        if (cJSON_IsString(it)) { /* "a b": exactly one space, as Hugging Face requires */
            a = it->valuestring;
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                st = ea_error(EA_ERR_FORMAT, "%s: merge %zu \"%.60s\" is not two tokens separated by one space", L->path,
                              rank + 1, a);
                break;
            }
            na = (size_t)(sp - a);
            b = sp + 1;
            nb = strlen(b);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            a = cJSON_GetArrayItem(it, 0)->valuestring;
            b = cJSON_GetArrayItem(it, 1)->valuestring;
            na = strlen(a);
            nb = strlen(b);
        } else {
            st = ea_error(EA_ERR_FORMAT, "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", L->path, rank + 1);
            break;
        }
        int32_t ia, ib;
        if ((st = merge_side(L, rank, a, na, &ia)) || (st = merge_side(L, rank, b, nb, &ib))) break;
        if (na + nb + 1 > cap) {
            cap = 2 * (na + nb + 1);
            char *p = realloc(buf, cap);
            if (!p) {
                st = ea_error(EA_ERR_NOMEM, "%s: cannot allocate a merge", L->path);
                break;
            }
            buf = p;
        }
        memcpy(buf, a, na);
        memcpy(buf + na, b, nb);
        int32_t ab = model_id(L->j, buf, na + nb);
        if (ab < 0) {
            st = ea_error(EA_ERR_FORMAT, "%s: merge %zu: the result \"%.*s%.*s\" is not in model.vocab", L->path, rank + 1,
                          (int)(na > 40 ? 40 : na), a, (int)(nb > 40 ? 40 : nb), b);
            break;
        }
        if (rank >= INT32_MAX) {
            st = ea_error(EA_ERR_FORMAT, "%s: too many merges", L->path);
            break;
        }
        ea_tok_pair_map_put(&L->t->merges, ia, ib, (int32_t)rank, ab);
        rank++;
    }
    free(buf);
    return st;
}

static ea_status load_model(loader *L, const cJSON *model, const cJSON *added) {
    ea_tok_json *j = L->j;
    if (!cJSON_IsObject(model)) return ea_error(EA_ERR_FORMAT, "%s: no \"model\" object", L->path);
    const char *type = NULL, *unk = NULL, *prefix = NULL, *suffix = NULL;
    ea_status st;
    if ((st = get_str(L, model, "model", "type", &type))) return st;
    if (type && strcmp(type, "BPE"))
        return ea_error(EA_ERR_UNSUPPORTED, "%s: model.type \"%.60s\" is not supported (only BPE)", L->path, type);
    const cJSON *vocab = field(model, "vocab"), *merges = field(model, "merges"), *dropout = field(model, "dropout");
    if (!cJSON_IsObject(vocab)) return ea_error(EA_ERR_FORMAT, "%s: model.vocab must be an object", L->path);
    if (!cJSON_IsArray(merges))
        return ea_error(type ? EA_ERR_FORMAT : EA_ERR_UNSUPPORTED, "%s: model.merges must be a list (only BPE models are supported)",
                        L->path);
    if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return ea_error(EA_ERR_UNSUPPORTED, "%s: model.dropout is set (random merges are not supported)", L->path);
    if ((st = get_str(L, model, "model", "unk_token", &unk)) ||
        (st = get_str(L, model, "model", "continuing_subword_prefix", &prefix)) ||
        (st = get_str(L, model, "model", "end_of_word_suffix", &suffix)) ||
        (st = get_bool(L, model, "model", "fuse_unk", 0, &j->fuse_unk)) ||
        (st = get_bool(L, model, "model", "byte_fallback", 0, &j->byte_fallback)) ||
        (st = get_bool(L, model, "model", "ignore_merges", 0, &j->ignore_merges)))
        return st;
    if (prefix && *prefix)
        return ea_error(EA_ERR_UNSUPPORTED, "%s: model.continuing_subword_prefix \"%.20s\" is not supported", L->path, prefix);
    if (suffix && *suffix)
        return ea_error(EA_ERR_UNSUPPORTED, "%s: model.end_of_word_suffix \"%.20s\" is not supported", L->path, suffix);
    if ((st = load_vocab(L, vocab, added))) return st;
    if ((st = load_merges(L, merges))) return st;
    j->unk_id = -1;
    if (unk) {
        j->unk_id = model_id(j, unk, strlen(unk));
        if (j->unk_id < 0)
            return ea_error(EA_ERR_FORMAT, "%s: model.unk_token \"%.60s\" is not in model.vocab", L->path, unk);
    }
    for (int b = 0; b < 256; b++) {
        char code[8];
        snprintf(code, sizeof code, "<0x%02X>", b);
        j->byte_fb[b] = model_id(j, code, 6);
        L->t->byte_id[b] = -1;
        if (j->byte_level) {
            char ch[4];
            uint32_t cp = ea_tok_byte_to_cp((unsigned char)b);
            size_t n = cp < 0x80 ? 1 : 2;
            if (n == 1) ch[0] = (char)cp;
            else {
                ch[0] = (char)(0xC0 | cp >> 6);
                ch[1] = (char)(0x80 | (cp & 63));
            }
            L->t->byte_id[b] = model_id(j, ch, n);
        }
    }
    /* Can a piece be cut before each "▁" that follows another character? Only when no token
     * spans such a place (then no merge crosses it, and unk runs cannot: "▁" is known) and
     * whole-piece lookups (ignore_merges) are off. */
    int32_t meta = model_id(j, "\xe2\x96\x81", 3);
    j->sp_split = !j->byte_level && !j->ignore_merges && meta >= 0;
    for (int32_t id = 0; j->sp_split && id < L->t->n_vocab; id++) {
        if (j->moff[id] == SIZE_MAX) continue;
        const char *s = j->mpool + j->moff[id];
        for (size_t i = 1; i + 3 <= j->mlen[id]; i++)
            if (!memcmp(s + i, "\xe2\x96\x81", 3) && !(i >= 3 && !memcmp(s + i - 3, "\xe2\x96\x81", 3))) {
                j->sp_split = 0;
                break;
            }
    }
    for (int c = 0; c < 128; c++) {
        char ch = (char)c;
        j->ascii_id[c] = c ? model_id(j, &ch, 1) : model_id(j, "\0", 1);
    }
    return EA_OK;
}

/* ---- added tokens --------------------------------------------------------------------------- */

static ea_status load_added(loader *L, const cJSON *added) {
    int n = cJSON_GetArraySize(added), nraw = 0, nnorm = 0;
    tj_added *raw = calloc((size_t)n + 1, sizeof *raw), *nrm = calloc((size_t)n + 1, sizeof *nrm);
    ea_status st = EA_OK;
    if (!raw || !nrm) st = ea_error(EA_ERR_NOMEM, "%s: cannot allocate %d added tokens", L->path, n);
    const cJSON *it;
    cJSON_ArrayForEach(it, added) {
        if (st) break;
        tj_added a = {0};
        int sw = 0, ls = 0, rs = 0, nz = 0, sp = 0;
        if ((st = get_bool(L, it, "added_tokens[]", "single_word", 0, &sw)) ||
            (st = get_bool(L, it, "added_tokens[]", "lstrip", 0, &ls)) ||
            (st = get_bool(L, it, "added_tokens[]", "rstrip", 0, &rs)) ||
            (st = get_bool(L, it, "added_tokens[]", "special", 0, &sp)) ||
            (st = get_bool(L, it, "added_tokens[]", "normalized", !sp, &nz)))
            break;
        a.id = (int32_t)field(it, "id")->valuedouble;
        a.single_word = (unsigned char)sw;
        a.lstrip = (unsigned char)ls;
        a.rstrip = (unsigned char)rs;
        a.normalized = (unsigned char)nz;
        a.special = (unsigned char)sp;
        const char *c = field(it, "content")->valuestring;
        if (nz) { /* matched against the normalized text, so normalized itself */
            unsigned char *o = NULL;
            size_t no = 0;
            pcre2_match_data *md = pcre2_match_data_create(1, NULL);
            if (!md) st = ea_error(EA_ERR_NOMEM, "%s: cannot allocate match data", L->path);
            else st = ea_tok_normalize(L->j->norm, L->j->n_norm, md, (const unsigned char *)c, strlen(c), &o, &no);
            pcre2_match_data_free(md);
            if (st) break;
            if (no == 0) { /* normalized to nothing: it can never match */
                free(o);
                continue;
            }
            a.text = (char *)o;
            a.len = no;
            nrm[nnorm++] = a;
        } else {
            if ((st = dup_str(L, c, &a.text, &a.len))) break;
            raw[nraw++] = a;
        }
    }
    if (st) {
        for (int i = 0; raw && i < nraw; i++) free(raw[i].text);
        for (int i = 0; nrm && i < nnorm; i++) free(nrm[i].text);
        free(raw);
        free(nrm);
        return st;
    }
    ea_tok_matcher_build(&L->j->raw_added, raw, nraw);
    ea_tok_matcher_build(&L->j->norm_added, nrm, nnorm);
    return EA_OK;
}

/* Id of a token named by its text: added tokens first, then the model vocabulary. */
static int32_t token_id(const loader *L, const cJSON *added, const char *s) {
    const cJSON *it;
    cJSON_ArrayForEach(it, added) if (!strcmp(field(it, "content")->valuestring, s)) return (int32_t)field(it, "id")->valuedouble;
    return model_id(L->j, s, strlen(s));
}

/* ---- BOS and decoding ----------------------------------------------------------------------- */

/* The BOS a post-processor puts first: the special tokens before the sequence in a
 * TemplateProcessing "single" template, or Roberta/Bert's cls. -1 when none. */
static ea_status post_bos(loader *L, const cJSON *pp, const cJSON *added, int depth, int32_t *bos) {
    *bos = -1;
    if (!pp || cJSON_IsNull(pp)) return EA_OK;
    const char *type = NULL;
    ea_status st = get_str(L, pp, "post_processor", "type", &type);
    if (st) return st;
    if (!type) return ea_error(EA_ERR_FORMAT, "%s: post_processor has no \"type\"", L->path);
    if (!strcmp(type, "ByteLevel")) return EA_OK;
    if (!strcmp(type, "Sequence") && depth < 8) {
        const cJSON *it;
        cJSON_ArrayForEach(it, field(pp, "processors")) {
            if ((st = post_bos(L, it, added, depth + 1, bos))) return st;
            if (*bos >= 0) return EA_OK;
        }
        return EA_OK;
    }
    if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = field(pp, "single"), *it;
        cJSON_ArrayForEach(it, single) {
            const cJSON *sp = field(it, "SpecialToken");
            if (!sp) return EA_OK; /* the sequence comes first: no BOS */
            const char *name = NULL;
            if ((st = get_str(L, sp, "post_processor.single[].SpecialToken", "id", &name))) return st;
            if (!name) return ea_error(EA_ERR_FORMAT, "%s: post_processor.single has a SpecialToken without id", L->path);
            const cJSON *ids = field(field(field(pp, "special_tokens"), name), "ids");
            if (cJSON_IsArray(ids) && cJSON_GetArraySize(ids) > 0) {
                if ((st = get_id(L, cJSON_GetArrayItem(ids, 0), "post_processor special token", name, bos))) return st;
            } else {
                *bos = token_id(L, added, name);
            }
            if (*bos < 0 || *bos >= L->t->n_vocab)
                return ea_error(EA_ERR_FORMAT, "%s: post_processor special token \"%.60s\" has no id in the vocabulary",
                                L->path, name);
            return EA_OK;
        }
        return EA_OK;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const cJSON *cls = field(pp, "cls");
        if (cJSON_IsArray(cls) && cJSON_GetArraySize(cls) == 2)
            return get_id(L, cJSON_GetArrayItem(cls, 1), "post_processor cls", type, bos);
        return ea_error(EA_ERR_FORMAT, "%s: post_processor %s has no cls [token, id]", L->path, type);
    }
    return ea_error(EA_ERR_UNSUPPORTED,
                    "%s: post_processor type \"%.60s\" is not supported (supported: TemplateProcessing, ByteLevel, "
                    "RobertaProcessing, BertProcessing, Sequence)",
                    L->path, type);
}

/* How many leading spaces the decoder drops: Strip(content " ", start N) in the decoder
 * sequence, or a Metaspace decoder that prepends. */
static int decoder_strip(const cJSON *d, int depth) {
    const cJSON *type = field(d, "type");
    if (!cJSON_IsString(type) || depth > 8) return 0;
    if (!strcmp(type->valuestring, "Sequence")) {
        int s = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, field(d, "decoders")) s += decoder_strip(it, depth + 1);
        return s;
    }
    if (!strcmp(type->valuestring, "Strip")) {
        const cJSON *c = field(d, "content"), *start = field(d, "start");
        if (cJSON_IsString(c) && !strcmp(c->valuestring, " ") && cJSON_IsNumber(start) && start->valuedouble > 0 &&
            start->valuedouble < 16)
            return (int)start->valuedouble;
        return 0;
    }
    if (!strcmp(type->valuestring, "Metaspace")) {
        const cJSON *scheme = field(d, "prepend_scheme"), *aps = field(d, "add_prefix_space");
        if (cJSON_IsString(scheme)) return strcmp(scheme->valuestring, "never") != 0;
        return !cJSON_IsFalse(aps);
    }
    return 0;
}

/* bos_token in tokenizer_config.json: a string, or an object with "content". */
static const char *config_token_text(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    const cJSON *c = field(v, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

static ea_status parse_json_file(const char *path, size_t max, cJSON **out) {
    char *text = NULL;
    size_t len = 0;
    ea_status st = ea_read_file(path, max, &text, &len);
    if (st) return st;
    const char *end = NULL;
    /* cJSON returns NULL for a syntax error and for a failed allocation alike; malloc sets
     * ENOMEM, so errno (cleared first) tells them apart. */
    errno = 0;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    int oom = !root && errno == ENOMEM;
    size_t at = (end && end >= text && end <= text + len) ? (size_t)(end - text) : 0;
    free(text);
    if (oom) return ea_error(EA_ERR_NOMEM, "%s: out of memory while parsing its %zu bytes of JSON", path, len);
    if (!root) return ea_error(EA_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", path, at);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ea_error(EA_ERR_FORMAT, "%s: expected a JSON object", path);
    }
    *out = root;
    return EA_OK;
}

static ea_status load_bos(loader *L, const cJSON *root, const cJSON *added, const char *config_path) {
    ea_tok_json *j = L->j;
    int32_t tmpl = -1;
    ea_status st = post_bos(L, field(root, "post_processor"), added, 0, &tmpl);
    if (st) return st;
    j->bos_add = tmpl >= 0;
    j->bos_id = tmpl;
    if (!config_path || access(config_path, F_OK) != 0) return EA_OK;
    cJSON *cfg = NULL;
    if ((st = parse_json_file(config_path, (size_t)64 << 20, &cfg))) return st;
    const cJSON *add = field(cfg, "add_bos_token"), *bos = field(cfg, "bos_token");
    if (add && !cJSON_IsNull(add) && !cJSON_IsBool(add))
        st = ea_error(EA_ERR_FORMAT, "%s: add_bos_token must be true or false", config_path);
    const char *text = config_token_text(bos);
    if (!st && text) {
        int32_t id = token_id(L, added, text);
        if (id < 0) st = ea_error(EA_ERR_FORMAT, "%s: bos_token \"%.60s\" is not in %s", config_path, text, L->path);
        else j->bos_id = id;
    }
    /* tokenizer_config.json's add_bos_token overrides the template, as transformers does when
     * it rebuilds the post-processor from it. */
    if (!st && cJSON_IsBool(add)) j->bos_add = cJSON_IsTrue(add);
    if (!st && j->bos_add && j->bos_id < 0)
        st = ea_error(EA_ERR_FORMAT, "%s: add_bos_token is true but no bos_token is named", config_path);
    cJSON_Delete(cfg);
    return st;
}

ea_status ea_tok_json_load(ea_tokenizer *t, const char *path, const char *config_path) {
    cJSON *root = NULL;
    ea_status st = parse_json_file(path, TJ_MAX_BYTES, &root);
    if (st) return st;
    ea_tok_json *j = calloc(1, sizeof *j);
    if (!j) {
        cJSON_Delete(root);
        return ea_error(EA_ERR_NOMEM, "%s: cannot allocate a tokenizer", path);
    }
    t->tj = j;
    j->bos_id = -1;
    loader L = {path, t, j};
    const cJSON *added = field(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        st = ea_error(EA_ERR_FORMAT, "%s: added_tokens must be a list", path);
    if (added && !cJSON_IsArray(added)) added = NULL;
    /* The pre-tokenizer decides how the vocabulary is spelled (ByteLevel: GPT-2's alphabet). */
    if (!st) st = parse_normalizer(&L, field(root, "normalizer"), 0);
    if (!st) st = parse_pretok(&L, field(root, "pre_tokenizer"), 0);
    if (!st) st = load_model(&L, field(root, "model"), added);
    if (!st) st = load_added(&L, added);
    if (!st) st = load_bos(&L, root, added, config_path);
    if (!st) j->strip_lead = decoder_strip(field(root, "decoder"), 0);
    cJSON_Delete(root);
    return st;
}

void ea_tok_json_free(ea_tok_json *j) {
    if (!j) return;
    for (int i = 0; i < j->n_norm; i++) {
        free(j->norm[i].a);
        free(j->norm[i].b);
        pcre2_code_free(j->norm[i].re);
    }
    free(j->norm);
    for (int i = 0; i < j->n_pre; i++) pcre2_code_free(j->pre[i].re);
    free(j->pre);
    ea_tok_matcher_free(&j->raw_added);
    ea_tok_matcher_free(&j->norm_added);
    free(j->mpool);
    free(j->moff);
    free(j->mlen);
    ea_tok_bytes_map_free(&j->mmap);
    free(j);
}
