/* GPT-2 tokenizer: loading, encoding (pre-tokenize, then BPE each piece) and decoding. After
 * loading, the tokenizer is never written, so threads may share it; all scratch state of an
 * encode call (PCRE2 match data, BPE buffers, word cache) belongs to that call. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/internal.h"
#include "tokenizer/tokjson.h"

static const char eot_text[] = "<|endoftext|>";

ea_status ea_tokenizer_load(const char *vocab_json, const char *merges_txt, ea_tokenizer **out) {
    if (!out) return ea_error(EA_ERR_ARG, "ea_tokenizer_load: out is NULL");
    *out = NULL;
    if (!vocab_json || !merges_txt) return ea_error(EA_ERR_ARG, "ea_tokenizer_load: a path is NULL");
    ea_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return ea_error(EA_ERR_NOMEM, "cannot allocate a tokenizer");
    ea_tok_bytes_map map = {0};
    ea_status st = ea_tok_vocab_load(t, vocab_json, &map);
    if (!st) st = ea_tok_merges_load(t, merges_txt, &map);
    ea_tok_bytes_map_free(&map); /* merges.txt was the last thing that names tokens by text */
    if (!st) st = ea_tok_pretok_compile(t);
    if (st) {
        ea_tokenizer_free(t);
        return st;
    }
    *out = t;
    return EA_OK;
}

ea_status ea_tokenizer_load_dir(const char *dir, ea_tokenizer **out) {
    if (!out) return ea_error(EA_ERR_ARG, "ea_tokenizer_load_dir: out is NULL");
    *out = NULL;
    if (!dir) return ea_error(EA_ERR_ARG, "ea_tokenizer_load_dir: dir is NULL");
    int has_json = 0;
    ea_status jst = ea_tok_json_load_dir(dir, out, &has_json); /* tokenizer.json wins when present */
    if (has_json) return jst;
    size_t n = strlen(dir) + sizeof "/merges.txt" + 1;
    char *vocab = malloc(n), *merges = malloc(n);
    ea_status st;
    if (!vocab || !merges) {
        st = ea_error(EA_ERR_NOMEM, "%s: out of memory", dir);
    } else {
        snprintf(vocab, n, "%s/vocab.json", dir);
        snprintf(merges, n, "%s/merges.txt", dir);
        st = ea_tokenizer_load(vocab, merges, out);
    }
    free(vocab);
    free(merges);
    return st;
}

void ea_tokenizer_free(ea_tokenizer *t) {
    if (!t) return;
    free(t->pool);
    free(t->tok_off);
    free(t->tok_len);
    ea_tok_pair_map_free(&t->merges);
    pcre2_code_free(t->re);
    ea_tok_json_free(t->tj);
    free(t);
}

int ea_tokenizer_vocab_size(const ea_tokenizer *t) { return t ? t->n_vocab : 0; }

const char *ea_tokenizer_token_bytes(const ea_tokenizer *t, int id, size_t *len) {
    if (!t || id < 0 || id >= t->n_vocab || t->tok_off[id] == SIZE_MAX) { /* SIZE_MAX: an id no token has */
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->tok_len[id];
    return t->pool + t->tok_off[id];
}

/* State of one encode call. */
typedef struct {
    const ea_tokenizer *t;
    int *ids;
    size_t n, cap;
    ea_tok_bpe_work work;
    ea_tok_cache cache;
    size_t max;  /* stop once this many ids exist (0: never) */
    int stopped; /* set when max was reached: the split loop was cut short on purpose */
} encoder;

static ea_status encode_piece(void *ctx, const unsigned char *piece, size_t len) {
    encoder *e = ctx;
    if (e->max && e->n >= e->max) { /* enough: end the pre-token loop (not an error, see below) */
        e->stopped = 1;
        return EA_ERR_ARG;
    }
    uint64_t h;
    size_t n_cached = 0;
    const int *cached = ea_tok_cache_get(&e->cache, piece, len, &n_cached, &h);
    if (cached) {
        if (e->n + n_cached > e->cap) {
            size_t c = e->cap ? e->cap : 256;
            while (c < e->n + n_cached) c *= 2;
            int *p = realloc(e->ids, c * sizeof *p);
            if (!p) return ea_error(EA_ERR_NOMEM, "cannot allocate %zu token ids", c);
            e->ids = p;
            e->cap = c;
        }
        memcpy(e->ids + e->n, cached, n_cached * sizeof *cached);
        e->n += n_cached;
        return EA_OK;
    }
    size_t before = e->n;
    ea_status st = ea_tok_bpe_word(e->t, &e->work, piece, len, &e->ids, &e->n, &e->cap);
    if (st) return st;
    ea_tok_cache_put(&e->cache, h, piece, len, e->ids + before, e->n - before);
    return EA_OK;
}

static ea_status append_id(encoder *e, int id) {
    if (e->n == e->cap) {
        size_t c = e->cap ? e->cap * 2 : 256;
        int *p = realloc(e->ids, c * sizeof *p);
        if (!p) return ea_error(EA_ERR_NOMEM, "cannot allocate %zu token ids", c);
        e->ids = p;
        e->cap = c;
    }
    e->ids[e->n++] = id;
    return EA_OK;
}

ea_status ea_tokenizer_encode(const ea_tokenizer *t, const char *text, size_t len, int parse_special, int **ids,
                              size_t *n) {
    return ea_tokenizer_encode_max(t, text, len, parse_special, 0, ids, n);
}

ea_status ea_tokenizer_encode_max(const ea_tokenizer *t, const char *text, size_t len, int parse_special,
                                  size_t max_tokens, int **ids, size_t *n) {
    if (!ids || !n) return ea_error(EA_ERR_ARG, "ea_tokenizer_encode: ids or n is NULL");
    *ids = NULL;
    *n = 0;
    if (!t || (!text && len > 0)) return ea_error(EA_ERR_ARG, "ea_tokenizer_encode: tokenizer or text is NULL");
    if (len == 0) return EA_OK;
    if (t->tj) { /* tokenizer.json: no piece is merged once the bound is reached; cut the last one's excess */
        ea_status js = ea_tok_json_encode(t, text, len, parse_special, max_tokens, ids, n);
        if (!js && max_tokens > 0 && *n > max_tokens) *n = max_tokens;
        return js;
    }
    encoder e = {.t = t, .max = max_tokens};
    ea_status st = EA_OK;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md) return ea_error(EA_ERR_NOMEM, "cannot allocate regex match data");
    const unsigned char *p = (const unsigned char *)text, *end = p + len;
    /* With parse_special, each literal <|endoftext|> is cut out and becomes one token; the text
     * around it is pre-tokenized separately (as Hugging Face does for added tokens). */
    while (!st && p < end && !(max_tokens && e.n >= max_tokens)) {
        const unsigned char *hit = NULL;
        if (parse_special) hit = memmem(p, (size_t)(end - p), eot_text, sizeof eot_text - 1);
        const unsigned char *stop = hit ? hit : end;
        if (stop > p) st = ea_tok_pretok_split(t, md, p, (size_t)(stop - p), encode_piece, &e);
        if (!st && hit) {
            if (t->eot_id < 0) st = ea_error(EA_ERR_ARG, "the vocabulary has no <|endoftext|> token to parse");
            else st = append_id(&e, t->eot_id);
            stop += sizeof eot_text - 1;
        }
        p = stop;
    }
    if (e.stopped) st = EA_OK;
    pcre2_match_data_free(md);
    ea_tok_bpe_work_free(&e.work);
    ea_tok_cache_free(&e.cache);
    if (st) {
        free(e.ids);
        return st;
    }
    *ids = e.ids;
    *n = e.n;
    return EA_OK;
}

ea_status ea_tokenizer_decode(const ea_tokenizer *t, const int *ids, size_t n, char **text, size_t *len) {
    if (!text) return ea_error(EA_ERR_ARG, "ea_tokenizer_decode: text is NULL");
    *text = NULL;
    if (len) *len = 0;
    if (!t || (!ids && n > 0)) return ea_error(EA_ERR_ARG, "ea_tokenizer_decode: tokenizer or ids is NULL");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return ea_error(EA_ERR_ARG, "token id %d at position %zu is outside the vocabulary [0, %d)", ids[i], i,
                            t->n_vocab);
        if (t->tok_off[ids[i]] == SIZE_MAX)
            return ea_error(EA_ERR_ARG, "token id %d at position %zu belongs to no token", ids[i], i);
        if (ea_add_size(total, t->tok_len[ids[i]], &total) || total == SIZE_MAX)
            return ea_error(EA_ERR_NOMEM, "decoded text of %zu ids is too large", n);
    }
    char *out = malloc(total + 1);
    if (!out) return ea_error(EA_ERR_NOMEM, "cannot allocate %zu bytes of decoded text", total + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(out + k, t->pool + t->tok_off[ids[i]], t->tok_len[ids[i]]);
        k += t->tok_len[ids[i]];
    }
    out[k] = 0;
    if (t->tj) k = ea_tok_json_decode_strip(t->tj, out, k);
    *text = out;
    if (len) *len = k;
    return EA_OK;
}
