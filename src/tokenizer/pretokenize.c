/* GPT-2 pre-tokenizer: split text into words, numbers, punctuation runs and whitespace with
 * GPT-2's pattern
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * where \s is spelled out as Unicode's White_Space property: that is what Oniguruma (used by
 * Hugging Face tokenizers) and Python's regex (used by OpenAI) match, while PCRE2 10.42's \s also
 * matches U+180E, which left White_Space in Unicode 6.3.
 *
 * Invalid UTF-8: PCRE2 may only see valid UTF-8 (PCRE2_NO_UTF_CHECK on anything else is undefined
 * behaviour), so the text is cut into maximal valid runs, each run is split by the pattern on its
 * own, and every byte that is not part of a valid sequence becomes a pre-token by itself. A valid
 * run therefore ends where an invalid byte starts, as if the text ended there. Tokenizers that
 * take strings (Hugging Face, tiktoken) never see such bytes, so there is no reference to follow;
 * this choice keeps every byte and keeps decode(encode(x)) == x. */
#include <string.h>

#include "tokenizer/internal.h"

#define WS "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
const char ea_tok_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

ea_status ea_tok_pretok_compile(ea_tokenizer *t) {
    int err;
    PCRE2_SIZE at;
    t->re = pcre2_compile((PCRE2_SPTR)ea_tok_gpt2_pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &at, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return ea_error(EA_ERR_UNSUPPORTED, "pre-tokenizer pattern does not compile at offset %zu: %s", (size_t)at,
                        (const char *)msg);
    }
    /* JIT is several times faster; without it (unsupported CPU or build) the interpreter is used. */
    t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    return EA_OK;
}

static ea_status match_at(const pcre2_code *re, int jit, pcre2_match_data *md, const unsigned char *s, size_t n,
                          size_t off, size_t *start, size_t *end, int *found) {
    if (found) *found = 0;
    int rc = PCRE2_ERROR_JIT_BADOPTION;
    if (jit) rc = pcre2_jit_match(re, s, n, off, 0, md, NULL);
    /* JIT stack exhaustion (or no JIT): the interpreter keeps its backtracking on the heap. */
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_JIT_BADOPTION)
        rc = pcre2_match(re, s, n, off, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) {
        *start = *end = n;
        return EA_OK;
    }
    if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return ea_error(EA_ERR_UNSUPPORTED, "pre-tokenizer failed at byte %zu of a %zu-byte run: %s", off, n,
                        (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    if (found) *found = 1;
    *start = ov[0];
    *end = ov[1];
    return EA_OK;
}

/* Split one valid UTF-8 run. */
static ea_status split_valid(const ea_tokenizer *t, pcre2_match_data *md, const unsigned char *s, size_t n,
                             ea_tok_piece_fn fn, void *ctx) {
    size_t off = 0;
    while (off < n) {
        size_t start, end;
        ea_status st = match_at(t->re, t->jit, md, s, n, off, &start, &end, NULL);
        if (st) return st;
        /* Every character matches some branch, so there are no gaps; should one appear anyway
         * (a Unicode-table corner), it is kept as its own piece rather than dropped. */
        if (start > off && (st = fn(ctx, s + off, start - off))) return st;
        if (end <= start) { /* cannot happen (no branch matches empty); never loop forever */
            if (start >= n) break;
            end = start + 1;
            while (end < n && (s[end] & 0xC0) == 0x80) end++;
        }
        if ((st = fn(ctx, s + start, end - start))) return st;
        off = end;
    }
    return EA_OK;
}

ea_status ea_tok_pretok_split(const ea_tokenizer *t, pcre2_match_data *md, const unsigned char *text, size_t len,
                              ea_tok_piece_fn fn, void *ctx) {
    size_t pos = 0;
    while (pos < len) {
        size_t valid = ea_tok_utf8_valid_prefix(text + pos, len - pos);
        ea_status st;
        if (valid > 0 && (st = split_valid(t, md, text + pos, valid, fn, ctx))) return st;
        pos += valid;
        if (pos < len) {
            if ((st = fn(ctx, text + pos, 1))) return st;
            pos++;
        }
    }
    return EA_OK;
}

/* ---- generic spans (tokenizer.json Split pre-tokenizer, Replace normalizer) ------------------ */

typedef struct {
    ea_tok_span_fn fn;
    void *ctx;
    size_t base; /* offset of the valid run in the whole text */
} span_ctx;

/* One valid run: matches and the gaps between them, iterated as Oniguruma's find_iter does
 * (an empty match right where the previous match ended is skipped by one character). */
static ea_status spans_valid(const pcre2_code *re, int jit, pcre2_match_data *md, const unsigned char *s, size_t n,
                             const span_ctx *c) {
    size_t off = 0, prev = 0, last_end = SIZE_MAX;
    ea_status st;
    while (off <= n) {
        size_t start, end;
        int found;
        if ((st = match_at(re, jit, md, s, n, off, &start, &end, &found))) return st;
        if (!found) break;
        if (start == end && last_end == end) {
            off = end + 1;
            while (off < n && (s[off] & 0xC0) == 0x80) off++;
            continue;
        }
        if (start > prev && (st = c->fn(c->ctx, c->base + prev, c->base + start, 0))) return st;
        if ((st = c->fn(c->ctx, c->base + start, c->base + end, 1))) return st;
        prev = last_end = off = end;
    }
    if (prev < n) return c->fn(c->ctx, c->base + prev, c->base + n, 0);
    return EA_OK;
}

ea_status ea_tok_regex_spans(const pcre2_code *re, int jit, pcre2_match_data *md, const unsigned char *text,
                             size_t len, ea_tok_span_fn fn, void *ctx) {
    size_t pos = 0;
    while (pos < len) {
        size_t valid = ea_tok_utf8_valid_prefix(text + pos, len - pos);
        span_ctx c = {fn, ctx, pos};
        ea_status st;
        if (valid > 0 && (st = spans_valid(re, jit, md, text + pos, valid, &c))) return st;
        pos += valid;
        if (pos < len) {
            if ((st = fn(ctx, pos, pos + 1, 0))) return st;
            pos++;
        }
    }
    return EA_OK;
}
