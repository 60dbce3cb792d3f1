/* Cache of pre-token -> ids for the duration of one encode call. Words repeat (Zipf), so most
 * pieces skip BPE; the cache lives in the call, not in the tokenizer, so a tokenizer shared by
 * threads stays read-only. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/internal.h"

/* Long pieces are rare and would bloat the cache; the total is capped so memory stays bounded
 * on hostile input with millions of distinct words. */
#define CACHE_MAX_KEY 64
#define CACHE_MAX_ENTRIES ((size_t)1 << 18)

void ea_tok_cache_free(ea_tok_cache *c) {
    free(c->slots);
    free(c->keys);
    free(c->ids);
    *c = (ea_tok_cache){0};
}

const int *ea_tok_cache_get(const ea_tok_cache *c, const unsigned char *piece, size_t len, size_t *n_ids,
                            uint64_t *hash) {
    uint64_t h = ea_tok_hash_bytes(piece, len);
    *hash = h;
    if (!c->slots) return NULL;
    for (size_t i = (size_t)h & c->mask;; i = (i + 1) & c->mask) {
        const ea_tok_cache_slot *s = &c->slots[i];
        if (s->key_len == 0) return NULL;
        if (s->hash == h && s->key_len == len && memcmp(c->keys + s->key_off, piece, len) == 0) {
            *n_ids = s->n_ids;
            return c->ids + s->ids_off;
        }
    }
}

static int grow_table(ea_tok_cache *c) {
    size_t cap = c->slots ? (c->mask + 1) * 2 : 1024;
    ea_tok_cache_slot *slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
    if (c->slots) {
        for (size_t i = 0; i <= c->mask; i++) {
            if (c->slots[i].key_len == 0) continue;
            size_t j = (size_t)c->slots[i].hash & (cap - 1);
            while (slots[j].key_len) j = (j + 1) & (cap - 1);
            slots[j] = c->slots[i];
        }
        free(c->slots);
    }
    c->slots = slots;
    c->mask = cap - 1;
    return 0;
}

/* Make room for `more` elements of size `elem` in a growable array. */
static int reserve(void **buf, size_t *cap, size_t used, size_t more, size_t elem) {
    if (used + more <= *cap) return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < used + more) c *= 2;
    void *p = realloc(*buf, c * elem);
    if (!p) return -1;
    *buf = p;
    *cap = c;
    return 0;
}

void ea_tok_cache_put(ea_tok_cache *c, uint64_t hash, const unsigned char *piece, size_t len, const int *ids,
                      size_t n_ids) {
    if (len == 0 || len > CACHE_MAX_KEY || c->count >= CACHE_MAX_ENTRIES) return;
    if ((!c->slots || (c->count + 1) * 2 > c->mask + 1) && grow_table(c)) return;
    if (reserve((void **)&c->keys, &c->keys_cap, c->keys_len, len, 1) ||
        reserve((void **)&c->ids, &c->ids_cap, c->ids_len, n_ids, sizeof *c->ids))
        return;
    size_t i = (size_t)hash & c->mask;
    while (c->slots[i].key_len) i = (i + 1) & c->mask;
    c->slots[i] = (ea_tok_cache_slot){hash, (uint32_t)c->keys_len, (uint32_t)len, (uint32_t)c->ids_len, (uint32_t)n_ids};
    memcpy(c->keys + c->keys_len, piece, len);
    memcpy(c->ids + c->ids_len, ids, n_ids * sizeof *ids);
    c->keys_len += len;
    c->ids_len += n_ids;
    c->count++;
}
