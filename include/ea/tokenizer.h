/* eigen-alignment tokenizer: GPT-2 byte-level BPE (vocab.json + merges.txt). */
#ifndef EA_TOKENIZER_H
#define EA_TOKENIZER_H

#include "ea/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EA_TOKEN_EOT 50256

typedef struct ea_tokenizer ea_tokenizer;
ea_status ea_tokenizer_load(const char *vocab_json, const char *merges_txt, ea_tokenizer **out);
/* Loads DIR/vocab.json and DIR/merges.txt. */
ea_status ea_tokenizer_load_dir(const char *dir, ea_tokenizer **out);
void ea_tokenizer_free(ea_tokenizer *t);
int ea_tokenizer_vocab_size(const ea_tokenizer *t);

/* Encode len bytes of text (any bytes: invalid UTF-8 is encoded byte-wise, never rejected:
 * each byte that is not part of a well-formed UTF-8 sequence is a pre-token of its own, and
 * the valid text around it is pre-tokenized as if it ended/started there).
 * parse_special: when non-zero, the literal "<|endoftext|>" becomes EA_TOKEN_EOT; otherwise it
 * is plain text. *ids is malloc'd (caller frees); *n may be 0 for empty text.
 * The tokenizer is read-only after loading: threads may encode/decode with one tokenizer. */
ea_status ea_tokenizer_encode(const ea_tokenizer *t, const char *text, size_t len, int parse_special,
                              int **ids, size_t *n);
/* The same, stopping once max_tokens ids exist (0: no bound): pre-tokens are encoded independently,
 * so the ids are exactly the first ones of the full encoding; *n may exceed max_tokens by the rest
 * of the last pre-token. Text past that point is never pre-tokenized nor merged. */
ea_status ea_tokenizer_encode_max(const ea_tokenizer *t, const char *text, size_t len, int parse_special,
                                  size_t max_tokens, int **ids, size_t *n);
/* Decode ids to bytes; *text is malloc'd and NUL-terminated. Unknown ids are an error. */
ea_status ea_tokenizer_decode(const ea_tokenizer *t, const int *ids, size_t n, char **text, size_t *len);
/* The bytes of one token (pointer into the tokenizer), or NULL if out of range. */
const char *ea_tokenizer_token_bytes(const ea_tokenizer *t, int id, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
