/* Byte-pair merging of one pre-token. Start from one token per byte; repeatedly merge the
 * adjacent pair with the lowest rank, the leftmost one on ties, until no pair has a merge. That is
 * Hugging Face's order (a heap of (rank, position)) and OpenAI's (lowest-rank bigram, left to
 * right). A heap with lazy deletion keeps long pieces (a megabyte without spaces) at
 * O(n log n) instead of the O(n^2) of rescanning. */
#include <stdlib.h>

#include "tokenizer/internal.h"

void ea_tok_bpe_work_free(ea_tok_bpe_work *w) {
    free(w->sym);
    free(w->prev);
    free(w->next);
    free(w->heap);
    *w = (ea_tok_bpe_work){0};
}

ea_status ea_tok_bpe_reserve(ea_tok_bpe_work *w, size_t n) {
    if (n <= w->cap) return EA_OK;
    size_t cap = w->cap ? w->cap : 64;
    while (cap < n) cap *= 2;
    /* Each merge pushes at most two pairs, on top of the n-1 initial ones. */
    if (cap > (size_t)INT32_MAX / 3) return ea_error(EA_ERR_NOMEM, "pre-token of %zu bytes is too long", n);
    int32_t *sym = realloc(w->sym, cap * sizeof *sym);
    if (sym) w->sym = sym;
    int32_t *prev = realloc(w->prev, cap * sizeof *prev);
    if (prev) w->prev = prev;
    int32_t *next = realloc(w->next, cap * sizeof *next);
    if (next) w->next = next;
    ea_tok_heap_item *heap = realloc(w->heap, 3 * cap * sizeof *heap);
    if (heap) w->heap = heap;
    if (!sym || !prev || !next || !heap) return ea_error(EA_ERR_NOMEM, "cannot allocate BPE buffers for %zu bytes", n);
    w->cap = cap;
    return EA_OK;
}

static int item_before(ea_tok_heap_item a, ea_tok_heap_item b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(ea_tok_heap_item *h, size_t *n, ea_tok_heap_item it) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!item_before(it, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = it;
}

static ea_tok_heap_item heap_pop(ea_tok_heap_item *h, size_t *n) {
    ea_tok_heap_item top = h[0], last = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && item_before(h[c + 1], h[c])) c++;
        if (!item_before(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (m > 0) h[i] = last;
    return top;
}

/* Push the pair starting at symbol i, if it has a merge. */
static void push_pair(const ea_tok_pair_map *merges, ea_tok_bpe_work *w, size_t *nh, int32_t i) {
    if (i < 0) return;
    int32_t j = w->next[i];
    if (j < 0) return;
    const ea_tok_pair_slot *s = ea_tok_pair_map_get(merges, w->sym[i], w->sym[j]);
    if (s) heap_push(w->heap, nh, (ea_tok_heap_item){s->rank, i});
}

static ea_status out_reserve(int **out, size_t *cap, size_t need) {
    if (need <= *cap) return EA_OK;
    size_t c = *cap ? *cap : 256;
    while (c < need) {
        if (c > SIZE_MAX / 2 / sizeof **out) return ea_error(EA_ERR_NOMEM, "too many tokens");
        c *= 2;
    }
    int *p = realloc(*out, c * sizeof *p);
    if (!p) return ea_error(EA_ERR_NOMEM, "cannot allocate %zu token ids", c);
    *out = p;
    *cap = c;
    return EA_OK;
}

ea_status ea_tok_bpe_merge(const ea_tok_pair_map *merges, ea_tok_bpe_work *w, int32_t n, int **out, size_t *n_out,
                           size_t *cap_out) {
    if (n <= 0) return EA_OK;
    ea_status st = out_reserve(out, cap_out, *n_out + (size_t)n);
    if (st) return st;
    for (int32_t i = 0; i < n; i++) {
        w->prev[i] = i - 1;
        w->next[i] = i + 1 < n ? i + 1 : -1;
    }
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < n; i++) push_pair(merges, w, &nh, i);
    while (nh > 0) {
        ea_tok_heap_item it = heap_pop(w->heap, &nh);
        int32_t i = it.pos, j = w->next[i];
        /* Stale entries: i was merged away (sym < 0) or its pair changed. Ranks are unique per
         * pair, so an equal rank means the very same pair. */
        if (w->sym[i] < 0 || j < 0) continue;
        const ea_tok_pair_slot *s = ea_tok_pair_map_get(merges, w->sym[i], w->sym[j]);
        if (!s || s->rank != it.rank) continue;
        w->sym[i] = s->id;
        w->sym[j] = -1;
        w->next[i] = w->next[j];
        if (w->next[j] >= 0) w->prev[w->next[j]] = i;
        push_pair(merges, w, &nh, w->prev[i]);
        push_pair(merges, w, &nh, i);
    }
    for (int32_t i = 0; i >= 0; i = w->next[i]) (*out)[(*n_out)++] = w->sym[i];
    return EA_OK;
}

ea_status ea_tok_bpe_word(const ea_tokenizer *t, ea_tok_bpe_work *w, const unsigned char *piece, size_t len,
                          int **out, size_t *n_out, size_t *cap_out) {
    if (len == 0) return EA_OK;
    ea_status st = out_reserve(out, cap_out, *n_out + len);
    if (st) return st;
    if (len == 1) {
        (*out)[(*n_out)++] = t->byte_id[piece[0]];
        return EA_OK;
    }
    if ((st = ea_tok_bpe_reserve(w, len))) return st;
    for (size_t i = 0; i < len; i++) w->sym[i] = t->byte_id[piece[i]];
    return ea_tok_bpe_merge(&t->merges, w, (int32_t)len, out, n_out, cap_out);
}
