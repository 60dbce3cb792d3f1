/* From loaded models to ESAP inputs: text → hidden states → anchors, and site spectra. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ea/spectral.h"
#include "esap/esap_internal.h"

/* Corpora, not dumps: the same bound the CLI puts on text files. */
#define TEXT_MAX_BYTES ((size_t)1 << 30)

static ea_status text_ids(const ea_tokenizer *t, const char *path, size_t max_tokens, int **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    if (!path) return ea_error(EA_ERR_ARG, "hidden representation needs a text file");
    char *text;
    size_t len;
    ea_status st = ea_read_file(path, TEXT_MAX_BYTES, &text, &len);
    if (st) return st;
    st = ea_tokenizer_encode_max(t, text, len, 0, max_tokens, ids, n);
    free(text);
    if (st) return st;
    if (*n < 2) {
        free(*ids);
        *ids = NULL;
        return ea_error(EA_ERR_ARG, "%s: text has %zu token%s (need at least 2)", path, *n, *n == 1 ? "" : "s");
    }
    if (max_tokens > 0 && *n > max_tokens) *n = max_tokens;
    return EA_OK;
}

static ea_status collect(ea_model *m, const ea_tokenizer *t, int side_b, const ea_esap_source *src,
                         ea_esap_hidden **out) {
    int layer, *ids;
    size_t n;
    ea_status st = ea_esap_repr_layer(&src->repr, side_b, m, &layer);
    if (st) return st;
    if ((st = text_ids(t, src->text_path, src->max_tokens, &ids, &n))) return st;
    const ea_config *c = ea_model_config(m);
    int ctx = src->ctx > 0 ? src->ctx : c->n_positions < EA_ESAP_DEFAULT_CTX ? c->n_positions : EA_ESAP_DEFAULT_CTX;
    st = ea_esap_hidden_collect(m, layer, ids, n, ctx, src->progress, src->progress_user, side_b ? "model b" : "model a", out);
    free(ids);
    return st;
}

ea_status ea_esap_anchors_from_models(ea_model *ma, const ea_tokenizer *ta, ea_model *mb, const ea_tokenizer *tb,
                                      const ea_esap_source *src, ea_esap_anchors *out) {
    memset(out, 0, sizeof *out);
    ea_esap_hidden *ha = NULL, *hb = NULL;
    ea_status st = EA_OK;
    if (src->repr.kind == EA_ESAP_REPR_HIDDEN && ((st = collect(ma, ta, 0, src, &ha)) || (st = collect(mb, tb, 1, src, &hb))))
        goto done;
    st = ea_esap_anchors_build(ma, mb, ta, tb, &src->repr, ha, hb, out);
done:
    ea_esap_hidden_free(ha);
    ea_esap_hidden_free(hb);
    return st;
}

ea_status ea_esap_spectrum_from_model(ea_model *m, const ea_tokenizer *t, int side_b, const ea_esap_source *src, int K,
                                      ea_esap_spectrum *out) {
    memset(out, 0, sizeof *out);
    const ea_config *c = ea_model_config(m);
    int d = c->n_embd;
    double *cov = ea_esap_alloc((size_t)d, (size_t)d, sizeof *cov), *ev = malloc((size_t)d * sizeof *ev);
    ea_esap_hidden *h = NULL;
    ea_cov *acc = NULL;
    ea_status st = EA_OK;
    if (!cov || !ev) {
        st = ea_error(EA_ERR_NOMEM, "%s: cannot allocate a %d x %d covariance", ea_model_dir(m), d, d);
        goto done;
    }
    if (src->repr.kind == EA_ESAP_REPR_HIDDEN) {
        if ((st = collect(m, t, side_b, src, &h)) || (st = ea_esap_hidden_covariance(h, cov))) goto done;
    } else {
        if ((st = ea_cov_init(&acc, d)) || (st = ea_cov_add(acc, ea_model_wte(m), c->vocab_size, d)) ||
            (st = ea_cov_matrix(acc, 0, cov)))
            goto done;
    }
    if ((st = ea_eigh(cov, d, ev, NULL))) goto done;
    char site[64];
    ea_esap_repr_name(&src->repr, side_b, m, site, sizeof site);
    st = ea_esap_spectrum_init(out, ev, d, K, ea_model_fingerprint(m), site);
done:
    ea_esap_hidden_free(h);
    ea_cov_free(acc);
    free(cov);
    free(ev);
    return st;
}
