/* Added tokens of tokenizer.json: finding them in text as Hugging Face's AddedVocabulary does.
 * Matches are leftmost-longest and non-overlapping (its Aho-Corasick automaton runs with
 * MatchKind::LeftmostLongest); a match that fails single_word, or a special token while special
 * tokens are not parsed, is passed over as text, and the search goes on after it. lstrip and
 * rstrip widen the match over Unicode whitespace (Rust's \s) on that side. Candidates are found by
 * their first two bytes, so text without any token's first bytes is scanned at memchr-like speed. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/tokjson.h"

int ea_tok_is_white_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

static int cmp_added(const void *pa, const void *pb) {
    const tj_added *a = pa, *b = pb;
    unsigned char fa = (unsigned char)a->text[0], fb = (unsigned char)b->text[0];
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

ea_status ea_tok_matcher_build(tj_matcher *m, tj_added *tok, int n) {
    memset(m, 0, sizeof *m);
    m->tok = tok;
    m->n = n;
    if (n > 0) qsort(tok, (size_t)n, sizeof *tok, cmp_added);
    int k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < n && (unsigned char)tok[k].text[0] < b) k++;
        m->first[b] = k;
    }
    for (int i = 0; i < n; i++) {
        unsigned char b0 = (unsigned char)tok[i].text[0];
        if (tok[i].len == 1) m->single[b0] = 1;
        else {
            unsigned key = (unsigned)b0 << 8 | (unsigned char)tok[i].text[1];
            m->pair_bits[key >> 6] |= 1ull << (key & 63);
        }
    }
    return EA_OK;
}

void ea_tok_matcher_free(tj_matcher *m) {
    if (!m->tok) return;
    for (int i = 0; i < m->n; i++) free(m->tok[i].text);
    free(m->tok);
    m->tok = NULL;
    m->n = 0;
}

/* The code point of the valid UTF-8 sequence at s[i..len), its length in *n; -1 when invalid. */
static long cp_at(const unsigned char *s, size_t len, size_t i, size_t *n) {
    size_t v = ea_tok_utf8_valid_prefix(s + i, len - i < 4 ? len - i : 4);
    utf8proc_int32_t cp;
    utf8proc_ssize_t r = v ? utf8proc_iterate(s + i, (utf8proc_ssize_t)v, &cp) : -1;
    if (r <= 0) {
        *n = 1;
        return -1;
    }
    *n = (size_t)r;
    return cp;
}

/* Start of the code point that ends at s[end) (end > 0); its value, or -1 if not valid UTF-8. */
static long cp_before(const unsigned char *s, size_t end, size_t *start) {
    size_t i = end - 1, k = 0;
    while (i > 0 && k < 3 && (s[i] & 0xC0) == 0x80) i--, k++;
    size_t n;
    long cp = cp_at(s, end, i, &n);
    if (cp < 0 || i + n != end) {
        *start = end - 1;
        return -1;
    }
    *start = i;
    return cp;
}

/* Rust regex's \w: Alphabetic, marks, decimal digits, connector punctuation, joiners. */
static int is_word(long cp) {
    if (cp < 0) return 0;
    if (cp == 0x200C || cp == 0x200D) return 1;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

/* Longest token starting at s[pos], or -1. */
static int longest_at(const tj_matcher *m, const unsigned char *s, size_t len, size_t pos) {
    unsigned char b = s[pos];
    int lo = m->first[b], hi = m->first[b + 1];
    if (lo == hi) return -1;
    if (!m->single[b]) {
        if (pos + 1 >= len) return -1;
        unsigned key = (unsigned)b << 8 | s[pos + 1];
        if (!(m->pair_bits[key >> 6] >> (key & 63) & 1)) return -1;
    }
    for (int i = lo; i < hi; i++)
        if (m->tok[i].len <= len - pos && memcmp(m->tok[i].text, s + pos, m->tok[i].len) == 0) return i;
    return -1;
}

int ea_tok_matcher_next(const tj_matcher *m, const unsigned char *s, size_t len, size_t from, int skip_special,
                        size_t *start, size_t *end, int32_t *id) {
    if (m->n == 0) return 0;
    for (size_t pos = from; pos < len; pos++) {
        int k = longest_at(m, s, len, pos);
        if (k < 0) continue;
        const tj_added *a = &m->tok[k];
        size_t st = pos, en = pos + a->len, n;
        /* Passed over: the search resumes after the match (the automaton does not overlap). */
        int skip = skip_special && a->special;
        if (!skip && a->single_word) {
            size_t ps;
            int left_ok = st == 0 || !is_word(cp_before(s, st, &ps));
            int right_ok = en == len || !is_word(cp_at(s, len, en, &n));
            skip = !left_ok || !right_ok;
        }
        if (skip) {
            pos = en - 1;
            continue;
        }
        if (a->lstrip) {
            while (st > from) {
                size_t ps;
                long cp = cp_before(s, st, &ps);
                if (cp < 0 || !ea_tok_is_white_space((uint32_t)cp) || ps < from) break;
                st = ps;
            }
        }
        if (a->rstrip) {
            while (en < len) {
                long cp = cp_at(s, len, en, &n);
                if (cp < 0 || !ea_tok_is_white_space((uint32_t)cp)) break;
                en += n;
            }
        }
        *start = st;
        *end = en;
        *id = a->id;
        return 1;
    }
    return 0;
}
