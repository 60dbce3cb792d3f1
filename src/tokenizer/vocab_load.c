/* vocab.json: a JSON object {token text: id}; token texts are written in GPT-2's byte alphabet.
 * The ids must be exactly 0..n-1 (each once): anything else is a hostile or broken file, and
 * refusing it keeps every id in range and every token decodable. */
#include <errno.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/internal.h"

/* vocab.json of GPT-2 is ~1 MB; this only stops absurd inputs. */
#define VOCAB_MAX_BYTES ((size_t)256 << 20)

static ea_status parse_json(const char *path, const char *text, size_t len, cJSON **out) {
    const char *end = NULL;
    /* cJSON returns NULL for a syntax error and for a failed allocation alike; malloc sets
     * ENOMEM, so errno (cleared first) tells them apart. */
    errno = 0;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root && errno == ENOMEM)
        return ea_error(EA_ERR_NOMEM, "%s: out of memory while parsing its %zu bytes of JSON", path, len);
    if (!root) {
        size_t at = (end && end >= text && end <= text + len) ? (size_t)(end - text) : 0;
        return ea_error(EA_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", path, at);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ea_error(EA_ERR_FORMAT, "%s: expected a JSON object mapping token text to id", path);
    }
    *out = root;
    return EA_OK;
}

/* The id of one entry: an integer in [0, n). */
static ea_status entry_id(const char *path, const cJSON *item, size_t n, int32_t *id) {
    if (!cJSON_IsNumber(item))
        return ea_error(EA_ERR_FORMAT, "%s: token \"%.60s\" has a non-numeric id", path, item->string);
    double v = item->valuedouble;
    if (!isfinite(v) || v != floor(v))
        return ea_error(EA_ERR_FORMAT, "%s: token \"%.60s\" has a non-integer id %g", path, item->string, v);
    if (v < 0 || v >= (double)n)
        return ea_error(EA_ERR_FORMAT, "%s: token \"%.60s\" has id %g outside [0, %zu) (ids must be 0..n-1)", path,
                        item->string, v, n);
    *id = (int32_t)v;
    return EA_OK;
}

static ea_status fill_tokens(ea_tokenizer *t, const char *path, const cJSON *root, size_t n, size_t pool_cap) {
    size_t used = 0;
    for (size_t i = 0; i < n; i++) t->tok_off[i] = SIZE_MAX;
    for (const cJSON *item = root->child; item; item = item->next) {
        int32_t id = 0;
        ea_status st = entry_id(path, item, n, &id);
        if (st) return st;
        if (t->tok_off[id] != SIZE_MAX)
            return ea_error(EA_ERR_FORMAT, "%s: id %d is given to two tokens (the second is \"%.60s\")", path, (int)id,
                            item->string);
        size_t klen = strlen(item->string);
        if (klen == 0) return ea_error(EA_ERR_FORMAT, "%s: id %d has an empty token text", path, (int)id);
        if (klen + 1 > pool_cap - used) return ea_error(EA_ERR_FORMAT, "%s: token texts larger than the file", path);
        long nb = ea_tok_alphabet_decode(item->string, klen, (unsigned char *)t->pool + used);
        if (nb < 0)
            return ea_error(EA_ERR_FORMAT, "%s: token \"%.60s\" (id %d) has a character outside GPT-2's byte alphabet",
                            path, item->string, (int)id);
        t->tok_off[id] = used;
        t->tok_len[id] = (size_t)nb;
        used += (size_t)nb;
        t->pool[used++] = 0;
    }
    return EA_OK;
}

static ea_status index_tokens(ea_tokenizer *t, const char *path, ea_tok_bytes_map *map) {
    ea_status st = ea_tok_bytes_map_init(map, (size_t)t->n_vocab, t->pool, t->tok_off, t->tok_len);
    if (st) return st;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        int32_t other = ea_tok_bytes_map_add(map, id);
        if (other >= 0)
            return ea_error(EA_ERR_FORMAT, "%s: ids %d and %d spell the same token \"%.60s\"", path, (int)other, (int)id,
                            t->pool + t->tok_off[id]);
    }
    /* Byte-level BPE starts from single bytes: without all 256 some text could not be encoded. */
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        t->byte_id[b] = ea_tok_bytes_map_find(map, &c, 1);
        if (t->byte_id[b] < 0)
            return ea_error(EA_ERR_FORMAT, "%s: no token for byte 0x%02x (a byte-level vocabulary needs all 256)", path, b);
    }
    static const char eot[] = "<|endoftext|>";
    t->eot_id = ea_tok_bytes_map_find(map, eot, sizeof eot - 1);
    return EA_OK;
}

ea_status ea_tok_vocab_load(ea_tokenizer *t, const char *path, ea_tok_bytes_map *map) {
    char *text = NULL;
    size_t len = 0;
    ea_status st = ea_read_file(path, VOCAB_MAX_BYTES, &text, &len);
    if (st) return st;
    cJSON *root = NULL;
    st = parse_json(path, text, len, &root);
    free(text);
    if (st) return st;
    size_t n = (size_t)cJSON_GetArraySize(root);
    if (n == 0) {
        cJSON_Delete(root);
        return ea_error(EA_ERR_FORMAT, "%s: the vocabulary is empty", path);
    }
    /* Decoded tokens are never longer than their UTF-8 text, which fits in the file. */
    size_t pool_cap = len + n + 1;
    t->n_vocab = (int)n;
    t->pool = malloc(pool_cap);
    t->tok_off = malloc(n * sizeof *t->tok_off);
    t->tok_len = malloc(n * sizeof *t->tok_len);
    if (!t->pool || !t->tok_off || !t->tok_len) st = ea_error(EA_ERR_NOMEM, "%s: cannot allocate %zu tokens", path, n);
    if (!st) st = fill_tokens(t, path, root, n, pool_cap);
    cJSON_Delete(root);
    if (!st) st = index_tokens(t, path, map);
    return st;
}
