/* Anchor pairs of two models: shared tokens, as embedding rows or averaged hidden states. */
#include <stdlib.h>
#include <string.h>

#include "esap/esap_internal.h"

typedef struct {
    const char *bytes;
    size_t len;
    int id;
} token_key;

static int key_cmp(const void *x, const void *y) {
    const token_key *a = x, *b = y;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->bytes, b->bytes, n);
    if (c) return c;
    return (a->len > b->len) - (a->len < b->len);
}

/* Pairs (id_a, id_b) of tokens with the same bytes; ids beyond either model's embedding rows
 * (padded vocabularies) are left out. */
static ea_status match_by_bytes(const ea_tokenizer *ta, const ea_tokenizer *tb, int rows_a, int rows_b, int *id_a,
                                int *id_b, int *n_out) {
    int nb = ea_tokenizer_vocab_size(tb), na = ea_tokenizer_vocab_size(ta);
    if (nb > rows_b) nb = rows_b;
    if (na > rows_a) na = rows_a;
    token_key *keys = malloc((size_t)(nb > 0 ? nb : 1) * sizeof *keys);
    if (!keys) return ea_error(EA_ERR_NOMEM, "anchors: cannot index %d tokens", nb);
    int m = 0;
    for (int i = 0; i < nb; i++) {
        size_t len;
        const char *b = ea_tokenizer_token_bytes(tb, i, &len);
        if (b) keys[m++] = (token_key){b, len, i};
    }
    qsort(keys, (size_t)m, sizeof *keys, key_cmp);
    int n = 0;
    for (int i = 0; i < na; i++) {
        token_key k;
        k.bytes = ea_tokenizer_token_bytes(ta, i, &k.len);
        if (!k.bytes) continue;
        const token_key *hit = bsearch(&k, keys, (size_t)m, sizeof *keys, key_cmp);
        if (!hit) continue;
        id_a[n] = i;
        id_b[n] = hit->id;
        n++;
    }
    free(keys);
    *n_out = n;
    return EA_OK;
}

void ea_esap_anchors_free(ea_esap_anchors *a) {
    if (!a) return;
    if (a->span)
        for (int i = 0; i < a->n; i++) free(a->span[i]);
    free(a->span);
    free(a->id_a);
    free(a->id_b);
    free(a->a);
    free(a->b);
    memset(a, 0, sizeof *a);
}

ea_status ea_esap_anchors_build(const ea_model *ma, const ea_model *mb, const ea_tokenizer *ta,
                                const ea_tokenizer *tb, const ea_esap_repr *r, const ea_esap_hidden *ha,
                                const ea_esap_hidden *hb, ea_esap_anchors *out) {
    memset(out, 0, sizeof *out);
    const ea_config *ca = ea_model_config(ma), *cb = ea_model_config(mb);
    int hidden = r->kind == EA_ESAP_REPR_HIDDEN;
    if (hidden && (!ha || !hb)) return ea_error(EA_ERR_ARG, "anchors: hidden representation without hidden states");
    if (hidden && (ea_esap_hidden_dim(ha) != ca->n_embd || ea_esap_hidden_dim(hb) != cb->n_embd))
        return ea_error(EA_ERR_MISMATCH, "anchors: hidden states do not match the models' widths");
    int cap = ca->vocab_size < cb->vocab_size ? cb->vocab_size : ca->vocab_size;
    int *id_a = malloc((size_t)cap * sizeof *id_a), *id_b = malloc((size_t)cap * sizeof *id_b), n = 0;
    ea_status st = EA_OK;
    if (!id_a || !id_b) {
        st = ea_error(EA_ERR_NOMEM, "anchors: out of memory");
        goto fail;
    }
    if (ta && tb) {
        if ((st = match_by_bytes(ta, tb, ca->vocab_size, cb->vocab_size, id_a, id_b, &n))) goto fail;
    } else {
        n = ca->vocab_size < cb->vocab_size ? ca->vocab_size : cb->vocab_size;
        for (int i = 0; i < n; i++) id_a[i] = id_b[i] = i;
    }
    if (hidden) { /* keep tokens seen on both sides */
        int m = 0;
        for (int i = 0; i < n; i++)
            if (ea_esap_hidden_token_count(ha, id_a[i]) > 0 && ea_esap_hidden_token_count(hb, id_b[i]) > 0) {
                id_a[m] = id_a[i];
                id_b[m] = id_b[i];
                m++;
            }
        n = m;
    }
    if (n < 2) {
        st = ea_error(EA_ERR_ARG, "anchors: only %d shared token%s between %s and %s%s", n, n == 1 ? "" : "s",
                      ea_model_dir(ma), ea_model_dir(mb), hidden ? " that occur in the text" : "");
        goto fail;
    }
    int da = ca->n_embd, db = cb->n_embd;
    out->a = ea_esap_alloc((size_t)n, (size_t)da, sizeof *out->a);
    out->b = ea_esap_alloc((size_t)n, (size_t)db, sizeof *out->b);
    if (!out->a || !out->b) {
        st = ea_error(EA_ERR_NOMEM, "anchors: cannot allocate %d x (%d + %d)", n, da, db);
        goto fail;
    }
    const float *wa = ea_model_wte(ma), *wb = ea_model_wte(mb);
    for (int i = 0; i < n && !st; i++) {
        float *ra = out->a + (size_t)i * da, *rb = out->b + (size_t)i * db;
        if (hidden) {
            if (!(st = ea_esap_hidden_token_mean(ha, id_a[i], ra))) st = ea_esap_hidden_token_mean(hb, id_b[i], rb);
        } else {
            memcpy(ra, wa + (size_t)id_a[i] * da, (size_t)da * sizeof *ra);
            memcpy(rb, wb + (size_t)id_b[i] * db, (size_t)db * sizeof *rb);
        }
    }
    if (st) goto fail;
    out->n = n;
    out->d_a = da;
    out->d_b = db;
    out->id_a = id_a;
    out->id_b = id_b;
    return EA_OK;
fail:
    free(id_a);
    free(id_b);
    ea_esap_anchors_free(out);
    return st;
}
