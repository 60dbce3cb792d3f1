/* Open-addressing hash map from a token pair to its merge rank and merged token. */
#include <stdlib.h>

#include "tokenizer/internal.h"

ea_status ea_tok_pair_map_init(ea_tok_pair_map *m, size_t expected) {
    size_t cap = 16;
    int bits = 4;
    /* Load factor at most 1/2 keeps probe chains short. */
    while (cap < expected * 2) {
        if (cap > SIZE_MAX / 4 / sizeof *m->slots) return ea_error(EA_ERR_NOMEM, "merge table of %zu pairs is too large", expected);
        cap *= 2;
        bits++;
    }
    m->slots = malloc(cap * sizeof *m->slots);
    if (!m->slots) return ea_error(EA_ERR_NOMEM, "cannot allocate a merge table of %zu pairs", expected);
    for (size_t i = 0; i < cap; i++) m->slots[i].key = EA_TOK_PAIR_EMPTY;
    m->mask = cap - 1;
    m->count = 0;
    m->shift = 64 - bits;
    return EA_OK;
}

void ea_tok_pair_map_free(ea_tok_pair_map *m) {
    free(m->slots);
    m->slots = NULL;
    m->count = 0;
}

void ea_tok_pair_map_put(ea_tok_pair_map *m, int32_t left, int32_t right, int32_t rank, int32_t id) {
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> m->shift);
    while (m->slots[i].key != EA_TOK_PAIR_EMPTY && m->slots[i].key != key) i = (i + 1) & m->mask;
    if (m->slots[i].key == EA_TOK_PAIR_EMPTY) m->count++;
    m->slots[i].key = key;
    m->slots[i].rank = rank;
    m->slots[i].id = id;
}
