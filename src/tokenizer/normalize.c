/* tokenizer.json normalizers: NFC/NFD/NFKC/NFKD, Prepend, Replace (string or regex), in a list.
 *
 * Unicode normalization uses utf8proc (Debian's libutf8proc): it works on UTF-8 directly, is
 * one small C library with no data files, and its utf8proc_map with STABLE|COMPOSE is NFC
 * exactly as the Unicode standard defines it (what Hugging Face's unicode-normalization crate
 * implements). ICU would need a UTF-16 round trip and a large C++ library for the same result.
 * Invalid UTF-8 never reaches utf8proc: each maximal valid run is normalized on its own and the
 * bytes between runs are copied as they are (Hugging Face only ever sees valid strings). */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/tokjson.h"

static ea_status reserve(unsigned char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return EA_OK;
    size_t c = *cap ? *cap : 256;
    while (c < need) {
        if (c > SIZE_MAX / 4) return ea_error(EA_ERR_NOMEM, "normalized text of %zu bytes is too large", need);
        c *= 2;
    }
    unsigned char *p = realloc(*buf, c);
    if (!p) return ea_error(EA_ERR_NOMEM, "cannot allocate %zu bytes of normalized text", c);
    *buf = p;
    *cap = c;
    return EA_OK;
}

static ea_status append(unsigned char **buf, size_t *len, size_t *cap, const void *s, size_t n) {
    if (n > SIZE_MAX - *len - 1) return ea_error(EA_ERR_NOMEM, "normalized text is too large");
    ea_status st = reserve(buf, cap, *len + n + 1);
    if (st) return st;
    if (n) memcpy(*buf + *len, s, n);
    *len += n;
    return EA_OK;
}

/* True when the run is certainly unchanged by the normalization form: NFC only changes text
 * with a code point from U+0300 on (lead byte 0xCC and up); the other forms change precomposed
 * Latin-1 letters too, so only ASCII is skipped for them. */
static int unchanged(tj_norm_kind kind, const unsigned char *s, size_t n) {
    unsigned char limit = kind == TJ_NFC ? 0xCC : 0x80;
    for (size_t i = 0; i < n; i++)
        if (s[i] >= limit) return 0;
    return 1;
}

ea_status ea_tok_unicode_normalize(tj_norm_kind kind, const unsigned char *s, size_t len, unsigned char **buf,
                                   size_t *blen, size_t *bcap) {
    utf8proc_option_t opt = UTF8PROC_STABLE;
    switch (kind) {
    case TJ_NFC: opt |= UTF8PROC_COMPOSE; break;
    case TJ_NFD: opt |= UTF8PROC_DECOMPOSE; break;
    case TJ_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case TJ_NFKD: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    default: return ea_error(EA_ERR_ARG, "not a Unicode normalization form");
    }
    size_t pos = 0;
    ea_status st;
    while (pos < len) {
        size_t v = ea_tok_utf8_valid_prefix(s + pos, len - pos);
        if (v > 0) {
            if (unchanged(kind, s + pos, v)) {
                if ((st = append(buf, blen, bcap, s + pos, v))) return st;
            } else {
                utf8proc_uint8_t *out = NULL;
                utf8proc_ssize_t r = utf8proc_map(s + pos, (utf8proc_ssize_t)v, &out, opt);
                if (r < 0) {
                    free(out);
                    return ea_error(r == UTF8PROC_ERROR_NOMEM ? EA_ERR_NOMEM : EA_ERR_FORMAT,
                                    "Unicode normalization of %zu bytes failed: %s", v, utf8proc_errmsg(r));
                }
                st = append(buf, blen, bcap, out, (size_t)r);
                free(out);
                if (st) return st;
            }
            pos += v;
        }
        if (pos < len) {
            if ((st = append(buf, blen, bcap, s + pos, 1))) return st;
            pos++;
        }
    }
    return EA_OK;
}

typedef struct {
    size_t *start, *end;
    size_t n, cap;
} match_list;

static ea_status collect_match(void *ctx, size_t start, size_t end, int is_match) {
    match_list *m = ctx;
    if (!is_match) return EA_OK;
    if (m->n == m->cap) {
        size_t c = m->cap ? m->cap * 2 : 16;
        size_t *a = realloc(m->start, c * sizeof *a);
        if (!a) return ea_error(EA_ERR_NOMEM, "cannot allocate %zu matches", c);
        m->start = a;
        size_t *b = realloc(m->end, c * sizeof *b);
        if (!b) return ea_error(EA_ERR_NOMEM, "cannot allocate %zu matches", c);
        m->end = b;
        m->cap = c;
    }
    m->start[m->n] = start;
    m->end[m->n++] = end;
    return EA_OK;
}

static ea_status replace(const tj_norm *r, pcre2_match_data *md, const unsigned char *s, size_t len,
                         unsigned char **buf, size_t *blen, size_t *bcap) {
    ea_status st;
    if (!r->re) {
        /* A literal: non-overlapping occurrences, left to right; an empty pattern matches nothing. */
        size_t pos = 0;
        while (pos < len) {
            const unsigned char *hit = r->na ? memmem(s + pos, len - pos, r->a, r->na) : NULL;
            size_t stop = hit ? (size_t)(hit - s) : len;
            if ((st = append(buf, blen, bcap, s + pos, stop - pos))) return st;
            if (!hit) break;
            if ((st = append(buf, blen, bcap, r->b, r->nb))) return st;
            pos = stop + r->na;
        }
        return EA_OK;
    }
    match_list m = {0};
    st = ea_tok_regex_spans(r->re, r->jit, md, s, len, collect_match, &m);
    size_t pos = 0;
    for (size_t i = 0; !st && i < m.n; i++) {
        st = append(buf, blen, bcap, s + pos, m.start[i] - pos);
        if (!st) st = append(buf, blen, bcap, r->b, r->nb);
        pos = m.end[i];
    }
    if (!st) st = append(buf, blen, bcap, s + pos, len - pos);
    free(m.start);
    free(m.end);
    return st;
}

ea_status ea_tok_normalize(const tj_norm *norm, int n_norm, pcre2_match_data *md, const unsigned char *s, size_t len,
                           unsigned char **out, size_t *out_len) {
    unsigned char *cur = NULL, *nxt = NULL;
    size_t ncur = 0, ccur = 0, nnxt = 0, cnxt = 0;
    ea_status st = append(&cur, &ncur, &ccur, s, len);
    for (int i = 0; !st && i < n_norm; i++) {
        const tj_norm *k = &norm[i];
        nnxt = 0;
        switch (k->kind) {
        case TJ_PREPEND: /* Hugging Face prepends only to non-empty text */
            if (ncur > 0) st = append(&nxt, &nnxt, &cnxt, k->a, k->na);
            if (!st) st = append(&nxt, &nnxt, &cnxt, cur, ncur);
            break;
        case TJ_REPLACE:
            st = replace(k, md, cur, ncur, &nxt, &nnxt, &cnxt);
            break;
        default:
            st = ea_tok_unicode_normalize(k->kind, cur, ncur, &nxt, &nnxt, &cnxt);
            break;
        }
        if (!st && !nxt) st = append(&nxt, &nnxt, &cnxt, "", 0);
        unsigned char *tp = cur;
        cur = nxt;
        nxt = tp;
        size_t tc = ccur;
        ccur = cnxt;
        cnxt = tc;
        ncur = nnxt;
    }
    free(nxt);
    if (st) {
        free(cur);
        return st;
    }
    *out = cur;
    *out_len = ncur;
    return EA_OK;
}
