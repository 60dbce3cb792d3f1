/* tokenizer.json (Hugging Face tokenizers format): what a loaded file says, in the form the
 * encoder runs it. Internal to src/tokenizer/. The pipeline is Hugging Face's:
 *   added tokens are cut out of the raw text (those with normalized=false),
 *   each remaining piece is normalized, then cut at the normalized added tokens,
 *   pre-tokenized (a list of steps, each splitting every piece), and each piece is run through
 *   the BPE model.
 * Two BPE flavours share the model code: byte-level (a ByteLevel pre-tokenizer: vocabulary
 * texts are spelled in GPT-2's byte alphabet, a piece starts as one symbol per byte) and
 * SentencePiece-style (a piece starts as one symbol per character, unknown characters fall
 * back to <0xNN> byte tokens, else to unk). */
#ifndef EA_TOKJSON_H
#define EA_TOKJSON_H

#include "tokenizer/internal.h"

typedef enum { TJ_NFC, TJ_NFD, TJ_NFKC, TJ_NFKD, TJ_PREPEND, TJ_REPLACE } tj_norm_kind;
typedef struct {
    tj_norm_kind kind;
    char *a, *b;       /* Prepend: a = text; Replace: a = literal pattern (NULL with re), b = content */
    size_t na, nb;
    pcre2_code *re;    /* Replace with a Regex pattern */
    int jit;
} tj_norm;

typedef enum { TJ_BYTELEVEL, TJ_SPLIT, TJ_METASPACE } tj_pre_kind;
typedef enum { TJ_REMOVED, TJ_ISOLATED, TJ_MERGED_PREV, TJ_MERGED_NEXT, TJ_CONTIGUOUS } tj_behavior;
typedef enum { TJ_PREPEND_ALWAYS, TJ_PREPEND_FIRST, TJ_PREPEND_NEVER } tj_prepend_scheme;
typedef struct {
    tj_pre_kind kind;
    pcre2_code *re;        /* Split pattern, or ByteLevel's GPT-2 pattern when use_regex */
    int jit;
    tj_behavior behavior;  /* Split */
    int invert;            /* Split */
    int add_prefix_space;  /* ByteLevel */
    char repl[5];          /* Metaspace replacement character (UTF-8) */
    size_t nrepl;
    tj_prepend_scheme scheme; /* Metaspace */
    int split;             /* Metaspace */
} tj_pre;

typedef struct {
    char *text;            /* what is matched (for normalized tokens: the normalized content) */
    size_t len;
    int32_t id;
    unsigned char special, single_word, lstrip, rstrip, normalized;
} tj_added;

/* Leftmost-longest matching of a set of added tokens (Hugging Face uses Aho-Corasick with
 * MatchKind::LeftmostLongest): candidates are indexed by their first two bytes. */
typedef struct {
    tj_added *tok;          /* sorted by first byte, then by length, longest first */
    int n;
    int32_t first[257];     /* tokens starting with byte b: tok[first[b] .. first[b+1]) */
    uint64_t pair_bits[1024]; /* bit (b0 << 8 | b1) set when some token starts with b0 b1 */
    unsigned char single[256]; /* some token is the single byte b */
} tj_matcher;

typedef struct ea_tok_json {
    int byte_level;          /* a ByteLevel pre-tokenizer is in the pipeline */
    tj_norm *norm;
    int n_norm;
    tj_pre *pre;
    int n_pre;
    tj_matcher raw_added;    /* normalized=false: matched on the raw text */
    tj_matcher norm_added;   /* normalized=true: matched on the normalized text */
    int n_model;             /* ids of model.vocab are < n_model */
    char *mpool;             /* model texts (as written in tokenizer.json), NUL-separated */
    size_t *moff, *mlen;     /* by id; mlen 0 for ids model.vocab does not have */
    ea_tok_bytes_map mmap;   /* model text -> id (model.vocab only) */
    int32_t ascii_id[128];   /* SentencePiece flavour: id of each ASCII character, or -1 */
    int32_t byte_fb[256];    /* id of <0xNN>, or -1 */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;          /* -1: no unk token (unknown characters are dropped, as in HF) */
    int bos_add;             /* callers should put bos_id first */
    int32_t bos_id;          /* -1 when none is known */
    int strip_lead;          /* decoding drops this many leading spaces (Strip / Metaspace decoder) */
    int sp_split;            /* SentencePiece flavour where no token has "▁" right after another
                                character: pieces may be cut before such a "▁" (see tokjson_encode.c) */
} ea_tok_json;

/* Load PATH (tokenizer.json) and, when config_path is not NULL and exists, tokenizer_config.json. */
ea_status ea_tok_json_load(ea_tokenizer *t, const char *path, const char *config_path);
void ea_tok_json_free(ea_tok_json *j);
/* DIR/tokenizer.json when it exists (*has_json 1; the result is that load's), else nothing is
 * done (*has_json 0). */
ea_status ea_tok_json_load_dir(const char *dir, ea_tokenizer **out, int *has_json);
/* Drop the leading spaces the decoder strips from decoded text s (NUL-terminated, n bytes);
 * returns the new length. */
size_t ea_tok_json_decode_strip(const ea_tok_json *j, char *s, size_t n);
/* Encode text; with max_tokens > 0 no further piece is merged once that many ids exist (the ids
 * are the start of the full encoding, possibly a few past the bound: the caller cuts them).
 * Normalization and pre-tokenization of the current segment stay linear in its length. */
ea_status ea_tok_json_encode(const ea_tokenizer *t, const char *text, size_t len, int parse_special,
                             size_t max_tokens, int **ids, size_t *n);

/* Normalizers (normalize.c): apply the list to s, giving a malloc'd result in *out. */
ea_status ea_tok_normalize(const tj_norm *norm, int n_norm, pcre2_match_data *md, const unsigned char *s, size_t len,
                           unsigned char **out, size_t *out_len);
/* NFC/NFD/NFKC/NFKD of s (valid UTF-8 runs only; other bytes are copied) appended to a buffer. */
ea_status ea_tok_unicode_normalize(tj_norm_kind kind, const unsigned char *s, size_t len, unsigned char **buf,
                                   size_t *blen, size_t *bcap);

/* Matcher (added_tokens.c). */
ea_status ea_tok_matcher_build(tj_matcher *m, tj_added *tok, int n);
void ea_tok_matcher_free(tj_matcher *m);
/* Next added token in s[from..len) as Hugging Face finds it (leftmost-longest, then single_word,
 * lstrip and rstrip applied; with skip_special, special tokens are passed over as text). Returns
 * 1 and the token's span [*start, *end) (strip whitespace included, never before from) and id, or
 * 0 when none. */
int ea_tok_matcher_next(const tj_matcher *m, const unsigned char *s, size_t len, size_t from, int skip_special,
                        size_t *start, size_t *end, int32_t *id);
/* Unicode White_Space (what Rust's and Oniguruma's \s match). */
int ea_tok_is_white_space(uint32_t cp);

#endif
