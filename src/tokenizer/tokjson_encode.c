/* Encoding with a tokenizer.json pipeline (see tokjson.h for the order of the stages).
 * Pieces are byte ranges of one arena per call: splitting steps only cut ranges, steps that
 * change bytes (prefix space, Metaspace) append the new bytes, so each stage is linear in the
 * text. BPE runs on each final piece with the per-call word cache, as the GPT-2 path does. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tokjson.h"

typedef struct {
    size_t off, len;
    int first; /* begins at the start of the original text (Metaspace prepend_scheme "first") */
} piece;

typedef struct {
    size_t start, end;
    int match;
} span;

typedef struct {
    const ea_tokenizer *t;
    const ea_tok_json *j;
    int parse_special;
    pcre2_match_data *md;
    unsigned char *arena;
    size_t alen, acap;
    piece *pa, *pb;
    size_t na, nb, ca, cb;
    span *sp;
    size_t nsp, csp;
    ea_tok_bpe_work work;
    ea_tok_cache cache;
    int *ids;
    size_t n, cap;
    unsigned char *alpha;
    size_t alpha_cap;
    size_t max; /* stop once this many ids exist (0: never) */
} enc;

/* Enough ids for the caller's bound: no further piece is merged (the ids so far are the start of
 * the full encoding, since ids are only ever appended in text order). */
static int enough(const enc *e) { return e->max && e->n >= e->max; }

static ea_status grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return EA_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 4 / elem) return ea_error(EA_ERR_NOMEM, "text is too large to tokenize");
        c *= 2;
    }
    void *q = realloc(*p, c * elem);
    if (!q) return ea_error(EA_ERR_NOMEM, "cannot allocate %zu bytes for tokenizing", c * elem);
    *p = q;
    *cap = c;
    return EA_OK;
}

static ea_status push_id(enc *e, int id) {
    ea_status st = grow((void **)&e->ids, &e->cap, e->n + 1, sizeof *e->ids);
    if (!st) e->ids[e->n++] = id;
    return st;
}

static ea_status push_piece(enc *e, size_t off, size_t len, int first) {
    if (len == 0) return EA_OK; /* Hugging Face drops empty splits */
    ea_status st = grow((void **)&e->pb, &e->cb, e->nb + 1, sizeof *e->pb);
    if (!st) e->pb[e->nb++] = (piece){off, len, first};
    return st;
}

/* ---- model ---------------------------------------------------------------------------------- */

/* One unknown character: Hugging Face holds it back until the next known symbol (fusing a run
 * when fuse_unk); with no unk token the character is dropped. */
typedef struct {
    int pending;
} unk_state;

static void unk_flush(const ea_tok_json *j, ea_tok_bpe_work *w, int32_t *count, unk_state *u) {
    if (u->pending) w->sym[(*count)++] = j->unk_id;
    u->pending = 0;
}

static void unk_add(const ea_tok_json *j, ea_tok_bpe_work *w, int32_t *count, unk_state *u) {
    if (j->unk_id < 0) return;
    if (u->pending && !j->fuse_unk) w->sym[(*count)++] = j->unk_id;
    u->pending = 1;
}

/* Symbol for an unknown character of n bytes: its <0xNN> tokens when byte_fallback has them all
 * (pushed without flushing a held unk, as Hugging Face does), else unk. */
static void unknown_char(const ea_tok_json *j, ea_tok_bpe_work *w, int32_t *count, unk_state *u,
                         const unsigned char *c, size_t n) {
    if (j->byte_fallback) {
        size_t k = 0;
        while (k < n && j->byte_fb[c[k]] >= 0) k++;
        if (k == n) {
            for (k = 0; k < n; k++) w->sym[(*count)++] = j->byte_fb[c[k]];
            return;
        }
    }
    unk_add(j, w, count, u);
}

static ea_status model_piece(enc *e, const unsigned char *p, size_t n) {
    const ea_tok_json *j = e->j;
    uint64_t h;
    size_t n_cached = 0;
    const int *cached = ea_tok_cache_get(&e->cache, p, n, &n_cached, &h);
    ea_status st;
    if (cached) {
        if ((st = grow((void **)&e->ids, &e->cap, e->n + n_cached, sizeof *e->ids))) return st;
        memcpy(e->ids + e->n, cached, n_cached * sizeof *cached);
        e->n += n_cached;
        return EA_OK;
    }
    size_t before = e->n;
    if (j->ignore_merges) { /* a piece that is a whole vocabulary token is that token */
        const unsigned char *key = p;
        size_t nk = n;
        if (j->byte_level) {
            if ((st = grow((void **)&e->alpha, &e->alpha_cap, 2 * n + 1, 1))) return st;
            nk = 0;
            for (size_t i = 0; i < n; i++) {
                uint32_t cp = ea_tok_byte_to_cp(p[i]);
                if (cp < 0x80) e->alpha[nk++] = (unsigned char)cp;
                else {
                    e->alpha[nk++] = (unsigned char)(0xC0 | cp >> 6);
                    e->alpha[nk++] = (unsigned char)(0x80 | (cp & 63));
                }
            }
            key = e->alpha;
        }
        int32_t id = ea_tok_bytes_map_find(&j->mmap, key, nk);
        if (id >= 0) {
            if ((st = push_id(e, id))) return st;
            ea_tok_cache_put(&e->cache, h, p, n, e->ids + before, 1);
            return EA_OK;
        }
    }
    /* Each byte (byte_fallback) may take a symbol, so n symbols always suffice. */
    if ((st = ea_tok_bpe_reserve(&e->work, n))) return st;
    ea_tok_bpe_work *w = &e->work;
    int32_t count = 0;
    unk_state u = {0};
    if (j->byte_level) {
        for (size_t i = 0; i < n; i++) {
            int32_t id = e->t->byte_id[p[i]];
            if (id >= 0) {
                unk_flush(j, w, &count, &u);
                w->sym[count++] = id;
            } else {
                unknown_char(j, w, &count, &u, p + i, 1);
            }
        }
    } else {
        for (size_t i = 0; i < n;) {
            size_t cl = 1;
            int32_t id;
            if (p[i] < 0x80) {
                id = j->ascii_id[p[i]];
            } else {
                size_t v = ea_tok_utf8_valid_prefix(p + i, n - i < 4 ? n - i : 4);
                if (v > 0) { /* length of the first character */
                    cl = p[i] >= 0xF0 ? 4 : p[i] >= 0xE0 ? 3 : 2;
                    if (cl > v) cl = 1;
                }
                id = cl > 1 ? ea_tok_bytes_map_find(&j->mmap, p + i, cl) : -1;
            }
            if (id >= 0) {
                unk_flush(j, w, &count, &u);
                w->sym[count++] = id;
            } else {
                unknown_char(j, w, &count, &u, p + i, cl);
            }
            i += cl;
        }
    }
    unk_flush(j, w, &count, &u);
    if ((st = ea_tok_bpe_merge(&e->t->merges, w, count, &e->ids, &e->n, &e->cap))) return st;
    /* A piece can give no ids (unknown characters and no unk token): nothing to remember, and
     * e->ids may still be NULL. */
    if (e->n > before) ea_tok_cache_put(&e->cache, h, p, n, e->ids + before, e->n - before);
    return EA_OK;
}

/* ---- pre-tokenizers ------------------------------------------------------------------------- */

static ea_status collect_span(void *ctx, size_t start, size_t end, int is_match) {
    enc *e = ctx;
    ea_status st = grow((void **)&e->sp, &e->csp, e->nsp + 1, sizeof *e->sp);
    if (!st) e->sp[e->nsp++] = (span){start, end, is_match};
    return st;
}

/* Turn the spans of one piece (offsets relative to base) into pieces, as Hugging Face's
 * NormalizedString::split does for each delimiter behavior. */
static ea_status apply_behavior(enc *e, size_t base, int first, tj_behavior b, int invert) {
    span *s = e->sp;
    size_t n = e->nsp, k = 0;
    ea_status st = EA_OK;
    if (invert)
        for (size_t i = 0; i < n; i++) s[i].match = !s[i].match;
    switch (b) {
    case TJ_ISOLATED:
        k = n;
        break;
    case TJ_REMOVED:
        for (size_t i = 0; i < n; i++)
            if (!s[i].match) s[k++] = s[i];
        for (size_t i = 0; i < k; i++) s[i].match = 0;
        break;
    case TJ_CONTIGUOUS:
    case TJ_MERGED_PREV: {
        int prev = 0;
        for (size_t i = 0; i < n; i++) {
            int m = s[i].match;
            int join = b == TJ_CONTIGUOUS ? (m == prev) : (m && !prev);
            if (join && k > 0) s[k - 1].end = s[i].end;
            else s[k++] = s[i];
            prev = m;
        }
        break;
    }
    case TJ_MERGED_NEXT: { /* the same fold from the right */
        int prev = 0;
        size_t w = n; /* results grow down from the top */
        for (size_t i = n; i-- > 0;) {
            int m = s[i].match;
            if (m && !prev && w < n) s[w].start = s[i].start;
            else s[--w] = s[i];
            prev = m;
        }
        k = n - w;
        memmove(s, s + w, k * sizeof *s);
        break;
    }
    }
    for (size_t i = 0; !st && i < k; i++)
        st = push_piece(e, base + s[i].start, s[i].end - s[i].start, first && s[i].start == 0);
    return st;
}

static ea_status split_regex(enc *e, const piece *pc, const pcre2_code *re, int jit, tj_behavior b, int invert) {
    e->nsp = 0;
    ea_status st = ea_tok_regex_spans(re, jit, e->md, e->arena + pc->off, pc->len, collect_span, e);
    if (st) return st;
    return apply_behavior(e, pc->off, pc->first, b, invert);
}

/* Append bytes to the arena; returns their offset in *off. */
static ea_status arena_append(enc *e, const void *s, size_t n, size_t *off) {
    ea_status st = grow((void **)&e->arena, &e->acap, e->alen + n + 1, 1);
    if (st) return st;
    *off = e->alen;
    if (n) memcpy(e->arena + e->alen, s, n);
    e->alen += n;
    return EA_OK;
}

static ea_status step_bytelevel(enc *e, const tj_pre *p, piece pc) {
    ea_status st;
    if (p->add_prefix_space && e->arena[pc.off] != ' ') {
        if ((st = grow((void **)&e->arena, &e->acap, e->alen + pc.len + 2, 1))) return st;
        size_t off;
        arena_append(e, " ", 1, &off);
        arena_append(e, e->arena + pc.off, pc.len, &(size_t){0});
        pc.off = off;
        pc.len++;
    }
    if (!p->re) return push_piece(e, pc.off, pc.len, pc.first);
    return split_regex(e, &pc, p->re, p->jit, TJ_ISOLATED, 0);
}

static ea_status step_metaspace(enc *e, const tj_pre *p, piece pc) {
    size_t spaces = 0;
    for (size_t i = 0; i < pc.len; i++) spaces += e->arena[pc.off + i] == ' ';
    ea_status st = grow((void **)&e->arena, &e->acap, e->alen + pc.len + spaces * p->nrepl + p->nrepl + 1, 1);
    if (st) return st;
    size_t start = e->alen, d = start;
    const unsigned char *s = e->arena + pc.off; /* stable: the arena does not move below */
    int starts_repl = pc.len >= p->nrepl && !memcmp(s, p->repl, p->nrepl);
    if (spaces && pc.len && s[0] == ' ') starts_repl = 1; /* the space becomes the replacement */
    int prepend = !starts_repl && (p->scheme == TJ_PREPEND_ALWAYS || (p->scheme == TJ_PREPEND_FIRST && pc.first));
    if (prepend) {
        memcpy(e->arena + d, p->repl, p->nrepl);
        d += p->nrepl;
    }
    for (size_t i = 0; i < pc.len; i++) {
        if (s[i] == ' ') {
            memcpy(e->arena + d, p->repl, p->nrepl);
            d += p->nrepl;
        } else {
            e->arena[d++] = s[i];
        }
    }
    e->alen = d;
    piece np = {start, d - start, pc.first};
    if (!p->split) return push_piece(e, np.off, np.len, np.first);
    /* Split on the replacement character, each one merged with what follows it. */
    e->nsp = 0;
    size_t prev = 0;
    const unsigned char *t = e->arena + np.off;
    for (size_t i = 0; i + p->nrepl <= np.len;) {
        if (!memcmp(t + i, p->repl, p->nrepl)) {
            if (i > prev && (st = collect_span(e, prev, i, 0))) return st;
            if ((st = collect_span(e, i, i + p->nrepl, 1))) return st;
            i += p->nrepl;
            prev = i;
        } else {
            i++;
        }
    }
    if (prev < np.len && (st = collect_span(e, prev, np.len, 0))) return st;
    return apply_behavior(e, np.off, np.first, TJ_MERGED_NEXT, 0);
}

/* Pre-tokenize arena[off, off+len) and run the model on every piece. */
static ea_status pretok_and_model(enc *e, size_t off, size_t len, int first) {
    if (len == 0 || enough(e)) return EA_OK;
    e->na = 0;
    ea_status st = grow((void **)&e->pa, &e->ca, 1, sizeof *e->pa);
    if (st) return st;
    e->pa[e->na++] = (piece){off, len, first};
    for (int s = 0; s < e->j->n_pre; s++) {
        const tj_pre *p = &e->j->pre[s];
        e->nb = 0;
        for (size_t i = 0; !st && i < e->na; i++) {
            piece pc = e->pa[i];
            switch (p->kind) {
            case TJ_BYTELEVEL: st = step_bytelevel(e, p, pc); break;
            case TJ_SPLIT: st = split_regex(e, &pc, p->re, p->jit, p->behavior, p->invert); break;
            case TJ_METASPACE: st = step_metaspace(e, p, pc); break;
            }
        }
        if (st) return st;
        piece *tp = e->pa;
        e->pa = e->pb;
        e->pb = tp;
        size_t tc = e->ca;
        e->ca = e->cb;
        e->cb = tc;
        e->na = e->nb;
    }
    for (size_t i = 0; !st && i < e->na && !enough(e); i++) {
        const unsigned char *p = e->arena + e->pa[i].off;
        size_t n = e->pa[i].len, from = 0;
        /* SentencePiece without a pre-tokenizer sees the whole text as one piece; where no
         * token can span a "▁" that follows another character, cutting there gives the same
         * ids and lets the word cache work (sp_split, checked at load). */
        if (e->j->sp_split) {
            for (size_t k = 1; !st && !enough(e) && k + 3 <= n; k++)
                if (p[k] == 0xE2 && p[k + 1] == 0x96 && p[k + 2] == 0x81 &&
                    !(k >= 3 && p[k - 3] == 0xE2 && p[k - 2] == 0x96 && p[k - 1] == 0x81)) {
                    st = model_piece(e, p + from, k - from);
                    from = k;
                }
        }
        if (!st && !enough(e)) st = model_piece(e, p + from, n - from);
    }
    return st;
}

/* One stretch of raw text between raw added tokens: normalize, cut at normalized added
 * tokens, pre-tokenize and encode. */
static ea_status segment(enc *e, const unsigned char *s, size_t n, int first) {
    const ea_tok_json *j = e->j;
    ea_status st;
    e->alen = 0;
    size_t off;
    if (j->n_norm > 0) {
        unsigned char *norm = NULL;
        size_t nn = 0;
        if ((st = ea_tok_normalize(j->norm, j->n_norm, e->md, s, n, &norm, &nn))) return st;
        st = arena_append(e, norm, nn, &off);
        free(norm);
        if (st) return st;
    } else if ((st = arena_append(e, s, n, &off))) {
        return st;
    }
    size_t len = e->alen, pos = 0;
    while (pos < len && !enough(e)) {
        size_t a, b;
        int32_t id;
        int hit = ea_tok_matcher_next(&j->norm_added, e->arena, len, pos, !e->parse_special, &a, &b, &id);
        size_t stop = hit ? a : len;
        if ((st = pretok_and_model(e, pos, stop - pos, first && pos == 0))) return st;
        if (!hit || enough(e)) break;
        if ((st = push_id(e, id))) return st;
        pos = b;
    }
    return EA_OK;
}

ea_status ea_tok_json_encode(const ea_tokenizer *t, const char *text, size_t len, int parse_special,
                             size_t max_tokens, int **ids, size_t *n) {
    enc e = {.t = t, .j = t->tj, .parse_special = parse_special, .max = max_tokens};
    e.md = pcre2_match_data_create(1, NULL);
    if (!e.md) return ea_error(EA_ERR_NOMEM, "cannot allocate regex match data");
    const unsigned char *s = (const unsigned char *)text;
    ea_status st = EA_OK;
    size_t pos = 0;
    while (!st && pos < len && !enough(&e)) {
        size_t a, b;
        int32_t id;
        int hit = ea_tok_matcher_next(&e.j->raw_added, s, len, pos, !parse_special, &a, &b, &id);
        size_t stop = hit ? a : len;
        if (stop > pos) st = segment(&e, s + pos, stop - pos, pos == 0);
        if (!st && hit && !enough(&e)) st = push_id(&e, id);
        pos = hit ? b : len;
    }
    pcre2_match_data_free(e.md);
    free(e.arena);
    free(e.pa);
    free(e.pb);
    free(e.sp);
    free(e.alpha);
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
