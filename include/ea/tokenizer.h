/* eigen-alignment tokenizer: byte-level BPE (GPT-2's vocab.json + merges.txt, or a Hugging Face
 * tokenizer.json: GPT-2, Llama 3, Qwen2/3, SmolLM) and SentencePiece-style BPE with byte
 * fallback from tokenizer.json (Llama 2, TinyLlama, Mistral). */
#ifndef EA_TOKENIZER_H
#define EA_TOKENIZER_H

#include "ea/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EA_TOKEN_EOT 50256

typedef struct ea_tokenizer ea_tokenizer;
EA_API ea_status ea_tokenizer_load(const char *vocab_json, const char *merges_txt, ea_tokenizer **out);
/* Loads DIR/tokenizer.json (with DIR/tokenizer_config.json when present) when it exists, else
 * DIR/vocab.json and DIR/merges.txt. tokenizer.json wins when both exist: it alone carries the
 * added tokens, normalizer and pre-tokenizer, and it is what Hugging Face's fast tokenizers use
 * (on GPT-2 both give the same ids). */
EA_API ea_status ea_tokenizer_load_dir(const char *dir, ea_tokenizer **out);
/* Loads a Hugging Face tokenizer.json; tokenizer_config_json may be NULL or a missing file
 * (it is only read for add_bos_token and bos_token). Unsupported model, normalizer or
 * pre-tokenizer types are refused with the field and value named. */
EA_API ea_status ea_tokenizer_load_json(const char *tokenizer_json, const char *tokenizer_config_json, ea_tokenizer **out);
/* Whether text should start with a BOS token, and which (*id, -1 when none): tokenizer_config.json's
 * add_bos_token when it says, else whether tokenizer.json's post-processor template puts a special
 * token first. Encoding never adds it: callers that feed a model put *id first. Always 0 for
 * vocab.json + merges.txt (GPT-2 adds none). */
EA_API int ea_tokenizer_bos(const ea_tokenizer *t, int *id);
/* Refuse (EA_ERR_MISMATCH, message naming model_what) a tokenizer whose ids do not all fit an
 * embedding of n_embd_rows rows; loaders call it before any work (the CLI does for tokenizer.json). */
EA_API ea_status ea_tokenizer_check_vocab(const ea_tokenizer *t, int n_embd_rows, const char *model_what);
/* 1 when t was loaded from a tokenizer.json, 0 for vocab.json + merges.txt (or NULL). */
EA_API int ea_tokenizer_is_json(const ea_tokenizer *t);
EA_API void ea_tokenizer_free(ea_tokenizer *t);
EA_API int ea_tokenizer_vocab_size(const ea_tokenizer *t);

/* Encode len bytes of text (any bytes: invalid UTF-8 is encoded byte-wise, never rejected:
 * each byte that is not part of a well-formed UTF-8 sequence is a pre-token of its own, and
 * the valid text around it is pre-tokenized as if it ended/started there).
 * parse_special: when non-zero, the literal "<|endoftext|>" becomes EA_TOKEN_EOT; otherwise it
 * is plain text. With tokenizer.json: added tokens are cut out of the text as Hugging Face does;
 * parse_special 0 passes over the special ones as text (HF's encode_special_tokens), while the
 * non-special added tokens are always cut out. *ids is malloc'd (caller frees); *n may be 0 for empty text.
 * The tokenizer is read-only after loading: threads may encode/decode with one tokenizer. */
EA_API ea_status ea_tokenizer_encode(const ea_tokenizer *t, const char *text, size_t len, int parse_special,
                              int **ids, size_t *n);
/* The same, stopping once max_tokens ids exist (0: no bound): pre-tokens are encoded independently,
 * so the ids are exactly the first ones of the full encoding; *n may exceed max_tokens by the rest
 * of the last pre-token. Text past that point is never pre-tokenized nor merged. */
EA_API ea_status ea_tokenizer_encode_max(const ea_tokenizer *t, const char *text, size_t len, int parse_special,
                                  size_t max_tokens, int **ids, size_t *n);
/* Decode ids to bytes; *text is malloc'd and NUL-terminated. Unknown ids are an error. */
EA_API ea_status ea_tokenizer_decode(const ea_tokenizer *t, const int *ids, size_t n, char **text, size_t *len);
/* The bytes of one token (pointer into the tokenizer), or NULL if out of range or an id no token
 * has. SentencePiece tokens are given as the text they decode to (U+2581 as a space, <0xNN> as
 * the byte); decoding then drops the leading space the tokenizer.json decoder strips. */
EA_API const char *ea_tokenizer_token_bytes(const ea_tokenizer *t, int id, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
