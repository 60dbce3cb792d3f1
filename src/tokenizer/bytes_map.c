/* Load-time hash map from a token's bytes to its id (merges.txt names tokens by their text). */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/internal.h"

uint64_t ea_tok_hash_bytes(const unsigned char *p, size_t n) {
    /* FNV-1a over 8-byte words with a final avalanche: fast for short keys, good enough spread. */
    uint64_t h = 0xcbf29ce484222325ull ^ (n * 0x9E3779B97F4A7C15ull);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    uint64_t w = 0;
    memcpy(&w, p + i, n - i);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ull;
    h ^= h >> 32;
    return h;
}

ea_status ea_tok_bytes_map_init(ea_tok_bytes_map *m, size_t expected, const char *pool, const size_t *off,
                                const size_t *len) {
    size_t cap = 16;
    while (cap < expected * 2) {
        if (cap > SIZE_MAX / 4 / sizeof *m->slots) return ea_error(EA_ERR_NOMEM, "vocabulary of %zu tokens is too large", expected);
        cap *= 2;
    }
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots) return ea_error(EA_ERR_NOMEM, "cannot allocate a vocabulary table of %zu tokens", expected);
    for (size_t i = 0; i < cap; i++) m->slots[i] = -1;
    m->mask = cap - 1;
    m->pool = pool;
    m->off = off;
    m->len = len;
    return EA_OK;
}

void ea_tok_bytes_map_free(ea_tok_bytes_map *m) {
    free(m->slots);
    m->slots = NULL;
}

static size_t probe(const ea_tok_bytes_map *m, const void *bytes, size_t n) {
    size_t i = (size_t)ea_tok_hash_bytes(bytes, n) & m->mask;
    for (;;) {
        int32_t id = m->slots[i];
        if (id < 0 || (m->len[id] == n && memcmp(m->pool + m->off[id], bytes, n) == 0)) return i;
        i = (i + 1) & m->mask;
    }
}

int32_t ea_tok_bytes_map_find(const ea_tok_bytes_map *m, const void *bytes, size_t n) {
    return m->slots[probe(m, bytes, n)];
}

int32_t ea_tok_bytes_map_add(ea_tok_bytes_map *m, int32_t id) {
    size_t i = probe(m, m->pool + m->off[id], m->len[id]);
    if (m->slots[i] >= 0) return m->slots[i];
    m->slots[i] = id;
    return -1;
}
