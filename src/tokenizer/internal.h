/* Tokenizer internals shared by the files of src/tokenizer/ (not installed, not public). */
#ifndef EA_TOKENIZER_INTERNAL_H
#define EA_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "ea/tokenizer.h"

/* ---- GPT-2 byte alphabet (bytes_to_unicode) ---------------------------------------------- */
/* GPT-2 spells every byte as one printable code point: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes map to U+0100..U+0143 in byte order. */
uint32_t ea_tok_byte_to_cp(unsigned char b);
/* The byte a code point spells, or -1 when it is outside the alphabet. */
int ea_tok_cp_to_byte(uint32_t cp);
/* Decode a UTF-8 string written in the alphabet into raw bytes (out needs len bytes; the
 * result is never longer). Returns the byte count, or -1 (invalid UTF-8 or a character
 * outside the alphabet). */
long ea_tok_alphabet_decode(const char *s, size_t len, unsigned char *out);

/* ---- UTF-8 --------------------------------------------------------------------------------- */
/* Length of the longest prefix of s that is well-formed UTF-8 (Unicode table 3-7: no
 * overlongs, no surrogates, nothing above U+10FFFF); a sequence cut short is not part of it. */
size_t ea_tok_utf8_valid_prefix(const unsigned char *s, size_t len);

/* ---- (id, id) -> (rank, merged id) ----------------------------------------------------------- */
typedef struct {
    uint64_t key; /* (left << 32) | right; EA_TOK_PAIR_EMPTY when free */
    int32_t rank;
    int32_t id;
} ea_tok_pair_slot;
typedef struct {
    ea_tok_pair_slot *slots;
    size_t mask;  /* capacity - 1 (capacity is a power of two) */
    size_t count;
    int shift;    /* 64 - log2(capacity), for Fibonacci hashing */
} ea_tok_pair_map;
#define EA_TOK_PAIR_EMPTY UINT64_MAX
ea_status ea_tok_pair_map_init(ea_tok_pair_map *m, size_t expected);
void ea_tok_pair_map_free(ea_tok_pair_map *m);
/* Insert or overwrite (the last merge of a repeated pair wins, as in Hugging Face tokenizers). */
void ea_tok_pair_map_put(ea_tok_pair_map *m, int32_t left, int32_t right, int32_t rank, int32_t id);
static inline const ea_tok_pair_slot *ea_tok_pair_map_get(const ea_tok_pair_map *m, int32_t left, int32_t right) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> m->shift);
    for (;;) {
        const ea_tok_pair_slot *s = &m->slots[i];
        if (s->key == key) return s;
        if (s->key == EA_TOK_PAIR_EMPTY) return NULL;
        i = (i + 1) & m->mask;
    }
}

/* ---- byte string -> id (load time only) ------------------------------------------------------ */
typedef struct {
    int32_t *slots; /* token id, or -1 when free */
    size_t mask;
    const char *pool;           /* token bytes, see ea_tokenizer */
    const size_t *off, *len;
} ea_tok_bytes_map;
uint64_t ea_tok_hash_bytes(const unsigned char *p, size_t n);
ea_status ea_tok_bytes_map_init(ea_tok_bytes_map *m, size_t expected, const char *pool, const size_t *off,
                                const size_t *len);
void ea_tok_bytes_map_free(ea_tok_bytes_map *m);
/* Existing id with these bytes, or -1. */
int32_t ea_tok_bytes_map_find(const ea_tok_bytes_map *m, const void *bytes, size_t n);
/* Add id (its bytes are already in the pool); returns the id already holding them, or -1. */
int32_t ea_tok_bytes_map_add(ea_tok_bytes_map *m, int32_t id);

/* ---- the tokenizer -------------------------------------------------------------------------- */
struct ea_tokenizer {
    int n_vocab;
    char *pool;          /* bytes of every token, each followed by a NUL */
    size_t *tok_off;     /* token i = pool[tok_off[i] .. + tok_len[i]) */
    size_t *tok_len;
    int32_t byte_id[256];  /* token of each single byte */
    int32_t eot_id;        /* id of "<|endoftext|>", or -1 if the vocabulary lacks it */
    ea_tok_pair_map merges;
    pcre2_code *re;        /* GPT-2 pre-tokenizer pattern */
    int jit;               /* re was JIT-compiled */
    struct ea_tok_json *tj; /* set when loaded from tokenizer.json (see tokjson.h), else NULL */
};

/* Loaders fill the fields above; on failure they leave what they allocated for ea_tokenizer_free. */
ea_status ea_tok_vocab_load(ea_tokenizer *t, const char *path, ea_tok_bytes_map *map);
ea_status ea_tok_merges_load(ea_tokenizer *t, const char *path, const ea_tok_bytes_map *map);

/* ---- pre-tokenizer -------------------------------------------------------------------------- */
ea_status ea_tok_pretok_compile(ea_tokenizer *t);
/* Called with each pre-token in order; a non-zero status stops the split and is returned. */
typedef ea_status (*ea_tok_piece_fn)(void *ctx, const unsigned char *piece, size_t len);
/* Split text into GPT-2 pre-tokens. md is the caller's match data (one per thread). */
ea_status ea_tok_pretok_split(const ea_tokenizer *t, pcre2_match_data *md, const unsigned char *text, size_t len,
                              ea_tok_piece_fn fn, void *ctx);
/* The GPT-2 pattern (ByteLevel's use_regex in tokenizer.json), for other callers to compile. */
extern const char ea_tok_gpt2_pattern[];
/* Called with each span of a regex split: [start, end) of the text, is_match 0 for the text
 * between matches (and for each byte that is not valid UTF-8). */
typedef ea_status (*ea_tok_span_fn)(void *ctx, size_t start, size_t end, int is_match);
/* Every match of re in text, and the gaps between them, in order, covering the text. Invalid
 * UTF-8 is cut out as in ea_tok_pretok_split: each such byte is a gap of its own. */
ea_status ea_tok_regex_spans(const pcre2_code *re, int jit, pcre2_match_data *md, const unsigned char *text,
                             size_t len, ea_tok_span_fn fn, void *ctx);

/* ---- BPE on one pre-token ------------------------------------------------------------------- */
typedef struct { int32_t rank, pos; } ea_tok_heap_item;
typedef struct {
    int32_t *sym, *prev, *next;
    ea_tok_heap_item *heap;
    size_t cap;        /* symbols the buffers hold */
} ea_tok_bpe_work;
void ea_tok_bpe_work_free(ea_tok_bpe_work *w);
/* Room for n symbols in w. */
ea_status ea_tok_bpe_reserve(ea_tok_bpe_work *w, size_t n);
/* Merge the n symbols already in w->sym[0..n) by the ranks of merges; appends the surviving ids
 * to out (n_out updated, out grown). */
ea_status ea_tok_bpe_merge(const ea_tok_pair_map *merges, ea_tok_bpe_work *w, int32_t n, int **out, size_t *n_out,
                           size_t *cap_out);
/* Merge the bytes of one pre-token; appends the ids to out (n_out updated, out grown). */
ea_status ea_tok_bpe_word(const ea_tokenizer *t, ea_tok_bpe_work *w, const unsigned char *piece, size_t len,
                          int **out, size_t *n_out, size_t *cap_out);

/* ---- per-call cache: pre-token bytes -> ids --------------------------------------------------- */
typedef struct {
    uint64_t hash;
    uint32_t key_off, key_len; /* in keys */
    uint32_t ids_off, n_ids;   /* in ids */
} ea_tok_cache_slot;
typedef struct {
    ea_tok_cache_slot *slots;
    size_t mask, count;
    unsigned char *keys;
    size_t keys_len, keys_cap;
    int *ids;
    size_t ids_len, ids_cap;
} ea_tok_cache;
void ea_tok_cache_free(ea_tok_cache *c);
/* The cached ids of a piece, or NULL; *hash receives the piece's hash for a following put. */
const int *ea_tok_cache_get(const ea_tok_cache *c, const unsigned char *piece, size_t len, size_t *n_ids,
                            uint64_t *hash);
/* Remember ids for a piece; silently does nothing when the piece is too long or the cache is full
 * (the cache only saves time). */
void ea_tok_cache_put(ea_tok_cache *c, uint64_t hash, const unsigned char *piece, size_t len, const int *ids,
                      size_t n_ids);

#endif
