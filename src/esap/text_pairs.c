/* Cross-tokenizer anchors: two models paired by shared text instead of shared token ids. The
 * calibration text is cut into chunks at whitespace; both models read the same chunk (each
 * through its own tokenizer), so every word is seen in the same context by both. A word (a
 * maximal run of non-whitespace bytes) is a span both tokenizers cover when, on each side, its
 * tokens start at the word or at the whitespace byte just before it and end exactly where it
 * ends. Its hidden state is the mean over those tokens; a word type's anchor is the mean over
 * its covered occurrences. Token byte offsets are the running sums of the token byte lengths,
 * which must rebuild the chunk exactly (true for byte-level BPE). */
#include <stdlib.h>
#include <string.h>

#include "esap/esap_internal.h"

#define TEXT_MAX_BYTES ((size_t)1 << 30)
#define WORD_MAX_BYTES 64     /* longer runs (URLs, dumps) are not anchors */
#define CHUNK_BYTES_PER_TOKEN 3 /* a chunk holds at most 3·ctx bytes: about ctx·3/4 GPT-2 tokens */

static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* ---- word types: an open-addressing table of byte strings ------------------------------ */

typedef struct {
    char **word;  /* per type, NUL-terminated */
    int *slot;    /* cap entries: type or -1 */
    int n, cap;   /* types, table size (power of 2) */
    int words_cap;
} word_table;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static void table_free(word_table *t) {
    for (int i = 0; i < t->n; i++) free(t->word[i]);
    free(t->word);
    free(t->slot);
    memset(t, 0, sizeof *t);
}

static ea_status table_grow(word_table *t) {
    int cap = t->cap ? t->cap * 2 : 1024;
    int *slot = malloc((size_t)cap * sizeof *slot);
    if (!slot) return ea_error(EA_ERR_NOMEM, "text pairs: cannot grow the word table to %d", cap);
    for (int i = 0; i < cap; i++) slot[i] = -1;
    for (int w = 0; w < t->n; w++) {
        uint64_t h = hash_bytes(t->word[w], strlen(t->word[w]));
        size_t p = (size_t)(h & (uint64_t)(cap - 1));
        while (slot[p] >= 0) p = (p + 1) & (size_t)(cap - 1);
        slot[p] = w;
    }
    free(t->slot);
    t->slot = slot;
    t->cap = cap;
    return EA_OK;
}

/* The type of word s[0..n), added if new. */
static ea_status table_get(word_table *t, const char *s, size_t n, int *type) {
    if (2 * (t->n + 1) > t->cap) {
        ea_status st = table_grow(t);
        if (st) return st;
    }
    size_t p = (size_t)(hash_bytes(s, n) & (uint64_t)(t->cap - 1));
    while (t->slot[p] >= 0) {
        const char *w = t->word[t->slot[p]];
        if (strlen(w) == n && !memcmp(w, s, n)) {
            *type = t->slot[p];
            return EA_OK;
        }
        p = (p + 1) & (size_t)(t->cap - 1);
    }
    if (t->n == t->words_cap) {
        int wc = t->words_cap ? t->words_cap * 2 : 1024;
        char **nw = realloc(t->word, (size_t)wc * sizeof *nw);
        if (!nw) return ea_error(EA_ERR_NOMEM, "text pairs: cannot hold %d word types", wc);
        t->word = nw;
        t->words_cap = wc;
    }
    char *copy = malloc(n + 1);
    if (!copy) return ea_error(EA_ERR_NOMEM, "text pairs: out of memory");
    memcpy(copy, s, n);
    copy[n] = 0;
    t->word[t->n] = copy;
    t->slot[p] = t->n;
    *type = t->n++;
    return EA_OK;
}

/* ---- one side: tokens of a chunk, their byte offsets, their hidden states ---------------- */

typedef struct {
    ea_model *m;
    const ea_tokenizer *t;
    int layer, n_layer, d, ctx;
    ea_kvcache *cache;
    int *ids;
    size_t n_ids;
    size_t *start; /* n_ids + 1 byte offsets */
    float *h;      /* ctx × d hidden states of the chunk's first tokens */
    int stopped;
    /* per type sums, grown with the table */
    double *sum;
    int sum_cap;
} side;

static int on_capture(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    side *s = user;
    if (site != EA_SITE_HIDDEN || layer != s->layer || d != s->d) return 0;
    for (int r = 0; r < n && pos0 + r < s->ctx; r++)
        memcpy(s->h + (size_t)(pos0 + r) * d, x + (size_t)r * ld, (size_t)d * sizeof *x);
    s->stopped = layer < s->n_layer;
    return s->stopped;
}

/* Tokenize the chunk, check that the tokens rebuild it, run the first ctx tokens. */
static ea_status side_run(side *s, const char *chunk, size_t len, const char *path, size_t at) {
    free(s->ids);
    s->ids = NULL;
    ea_status st = ea_tokenizer_encode(s->t, chunk, len, 0, &s->ids, &s->n_ids);
    if (st) return st;
    size_t *start = realloc(s->start, (s->n_ids + 1) * sizeof *start);
    if (!start) return ea_error(EA_ERR_NOMEM, "text pairs: out of memory");
    s->start = start;
    size_t off = 0;
    for (size_t i = 0; i < s->n_ids; i++) {
        size_t tl;
        const char *tb = ea_tokenizer_token_bytes(s->t, s->ids[i], &tl);
        if (!tb || off + tl > len || memcmp(tb, chunk + off, tl))
            return ea_error(EA_ERR_UNSUPPORTED,
                            "%s: the tokens of %s do not rebuild the text at byte %zu (text pairing needs a "
                            "byte-level tokenizer)",
                            path, ea_model_dir(s->m), at + off);
        start[i] = off;
        off += tl;
    }
    start[s->n_ids] = off;
    if (off != len)
        return ea_error(EA_ERR_UNSUPPORTED, "%s: the tokens of %s cover %zu of %zu bytes at byte %zu", path,
                        ea_model_dir(s->m), off, len, at);
    int n = s->n_ids < (size_t)s->ctx ? (int)s->n_ids : s->ctx;
    if (n == 0) return EA_OK;
    ea_kvcache_reset(s->cache);
    s->stopped = 0;
    ea_model_set_capture(s->m, on_capture, s);
    st = ea_model_forward(s->m, s->cache, s->ids, n, NULL, 0);
    ea_model_set_capture(s->m, NULL, NULL);
    if (st && s->stopped) st = EA_OK; /* the hook ended the pass after the captured layer */
    return st;
}

/* Tokens [t0, t1] covering word [ws, we) (chunk offsets), within the first ctx tokens; 0 if the
 * side does not cover it as one span. */
static int side_cover(const side *s, const char *chunk, size_t ws, size_t we, int *t0, int *t1) {
    size_t n = s->n_ids < (size_t)s->ctx ? s->n_ids : (size_t)s->ctx;
    /* first token ending after ws (binary search on the starts) */
    size_t lo = 0, hi = s->n_ids;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->start[mid + 1] <= ws) lo = mid + 1;
        else hi = mid;
    }
    if (lo >= n) return 0;
    size_t ts = s->start[lo];
    if (!(ts == ws || (ts + 1 == ws && is_space((unsigned char)chunk[ts])))) return 0;
    size_t j = lo;
    while (j < s->n_ids && s->start[j + 1] < we) j++;
    if (j >= n || s->start[j + 1] != we) return 0;
    *t0 = (int)lo;
    *t1 = (int)j;
    return 1;
}

static ea_status side_init(side *s, ea_model *m, const ea_tokenizer *t, int layer, int ctx) {
    memset(s, 0, sizeof *s);
    const ea_config *c = ea_model_config(m);
    s->m = m;
    s->t = t;
    s->layer = layer;
    s->n_layer = c->n_layer;
    s->d = c->n_embd;
    s->ctx = ctx;
    s->h = ea_esap_alloc((size_t)ctx, (size_t)s->d, sizeof *s->h);
    if (!s->h) return ea_error(EA_ERR_NOMEM, "text pairs: cannot allocate %d x %d hidden states", ctx, s->d);
    return ea_kvcache_init(&s->cache, c, ctx, NULL);
}

static void side_free(side *s) {
    ea_kvcache_free(s->cache);
    free(s->ids);
    free(s->start);
    free(s->h);
    free(s->sum);
}

static ea_status side_reserve(side *s, int types) {
    if (types <= s->sum_cap) return EA_OK;
    int cap = s->sum_cap ? s->sum_cap : 1024;
    while (cap < types) cap *= 2;
    double *sum = realloc(s->sum, (size_t)cap * (size_t)s->d * sizeof *sum);
    if (!sum) return ea_error(EA_ERR_NOMEM, "text pairs: cannot hold %d word sums", cap);
    memset(sum + (size_t)s->sum_cap * s->d, 0, (size_t)(cap - s->sum_cap) * s->d * sizeof *sum);
    s->sum = sum;
    s->sum_cap = cap;
    return EA_OK;
}

static void side_add(side *s, int type, int t0, int t1) {
    double *acc = s->sum + (size_t)type * s->d, inv = 1.0 / (t1 - t0 + 1);
    for (int t = t0; t <= t1; t++)
        for (int j = 0; j < s->d; j++) acc[j] += s->h[(size_t)t * s->d + j] * inv;
}

ea_status ea_esap_text_anchors(ea_model *ma, const ea_tokenizer *ta, ea_model *mb, const ea_tokenizer *tb,
                               const ea_esap_source *src, ea_esap_anchors *out) {
    memset(out, 0, sizeof *out);
    if (src->repr.kind != EA_ESAP_REPR_HIDDEN)
        return ea_error(EA_ERR_ARG, "text pairs: pairing by text needs a hidden representation (not wte)");
    if (!ta || !tb) return ea_error(EA_ERR_ARG, "text pairs: both tokenizers are needed");
    if (!src->text_path) return ea_error(EA_ERR_ARG, "text pairs: no text file");
    int la, lb;
    ea_status st;
    if ((st = ea_esap_repr_layer(&src->repr, 0, ma, &la)) || (st = ea_esap_repr_layer(&src->repr, 1, mb, &lb))) return st;
    const ea_config *ca = ea_model_config(ma), *cb = ea_model_config(mb);
    int npos = ca->n_positions < cb->n_positions ? ca->n_positions : cb->n_positions;
    int ctx = src->ctx > 0 ? src->ctx : npos < EA_ESAP_DEFAULT_CTX ? npos : EA_ESAP_DEFAULT_CTX;
    if (ctx > npos) return ea_error(EA_ERR_ARG, "text pairs: window of %d tokens (the models allow up to %d)", ctx, npos);
    char *text = NULL;
    size_t len;
    if ((st = ea_read_file(src->text_path, TEXT_MAX_BYTES, &text, &len))) return st;
    side A, B;
    memset(&A, 0, sizeof A);
    memset(&B, 0, sizeof B);
    word_table wt;
    memset(&wt, 0, sizeof wt);
    int *count = NULL, count_cap = 0;
    if ((st = side_init(&A, ma, ta, la, ctx)) || (st = side_init(&B, mb, tb, lb, ctx))) goto done;
    size_t chunk_max = (size_t)ctx * CHUNK_BYTES_PER_TOKEN, tokens_a = 0;
    for (size_t off = 0; off < len;) {
        while (off < len && is_space((unsigned char)text[off])) off++;
        if (off >= len) break;
        size_t end = off + chunk_max < len ? off + chunk_max : len;
        if (end < len) { /* end the chunk after the last whitespace, unless there is none */
            size_t e = end;
            while (e > off && !is_space((unsigned char)text[e - 1])) e--;
            if (e > off) end = e;
        }
        const char *chunk = text + off;
        size_t clen = end - off;
        if ((st = side_run(&A, chunk, clen, src->text_path, off)) || (st = side_run(&B, chunk, clen, src->text_path, off)))
            goto done;
        for (size_t ws = 0; ws < clen;) {
            if (is_space((unsigned char)chunk[ws])) {
                ws++;
                continue;
            }
            size_t we = ws;
            while (we < clen && !is_space((unsigned char)chunk[we])) we++;
            /* A word cut by a chunk edge (no whitespace to cut at) is not a whole word. */
            int cut = (ws == 0 && off > 0 && !is_space((unsigned char)text[off - 1])) ||
                      (we == clen && end < len && !is_space((unsigned char)text[end]));
            int a0, a1, b0, b1, type = -1;
            if (!cut && we - ws <= WORD_MAX_BYTES && side_cover(&A, chunk, ws, we, &a0, &a1) &&
                side_cover(&B, chunk, ws, we, &b0, &b1)) {
                if ((st = table_get(&wt, chunk + ws, we - ws, &type)) || (st = side_reserve(&A, wt.n)) ||
                    (st = side_reserve(&B, wt.n)))
                    goto done;
                if (wt.n > count_cap) {
                    int cc = count_cap ? count_cap * 2 : 1024;
                    while (cc < wt.n) cc *= 2;
                    int *nc = realloc(count, (size_t)cc * sizeof *nc);
                    if (!nc) {
                        st = ea_error(EA_ERR_NOMEM, "text pairs: out of memory");
                        goto done;
                    }
                    memset(nc + count_cap, 0, (size_t)(cc - count_cap) * sizeof *nc);
                    count = nc;
                    count_cap = cc;
                }
                side_add(&A, type, a0, a1);
                side_add(&B, type, b0, b1);
                count[type]++;
            }
            ws = we;
        }
        tokens_a += A.n_ids;
        if (src->progress) src->progress(src->progress_user, "text pairs", end, len);
        if (src->max_tokens > 0 && tokens_a >= src->max_tokens) break;
        off = end;
    }
    if (wt.n < 2) {
        st = ea_error(EA_ERR_ARG, "%s: only %d word%s covered by both tokenizers (need at least 2)", src->text_path, wt.n,
                      wt.n == 1 ? "" : "s");
        goto done;
    }
    int n = wt.n, da = A.d, db = B.d;
    out->a = ea_esap_alloc((size_t)n, (size_t)da, sizeof *out->a);
    out->b = ea_esap_alloc((size_t)n, (size_t)db, sizeof *out->b);
    out->id_a = malloc((size_t)n * sizeof *out->id_a);
    out->id_b = malloc((size_t)n * sizeof *out->id_b);
    if (!out->a || !out->b || !out->id_a || !out->id_b) {
        st = ea_error(EA_ERR_NOMEM, "text pairs: cannot allocate %d anchors", n);
        goto done;
    }
    for (int w = 0; w < n; w++) {
        out->id_a[w] = out->id_b[w] = w;
        for (int j = 0; j < da; j++) out->a[(size_t)w * da + j] = (float)(A.sum[(size_t)w * da + j] / count[w]);
        for (int j = 0; j < db; j++) out->b[(size_t)w * db + j] = (float)(B.sum[(size_t)w * db + j] / count[w]);
    }
    out->n = n;
    out->d_a = da;
    out->d_b = db;
    out->span = wt.word; /* handed over: the anchors own the strings now */
    wt.word = NULL;
    wt.n = 0;
done:
    if (st) ea_esap_anchors_free(out);
    side_free(&A);
    side_free(&B);
    table_free(&wt);
    free(count);
    free(text);
    return st;
}
