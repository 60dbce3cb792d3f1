/* Public entry points of the tokenizer.json path: loading a file or a model directory, BOS,
 * and the check that a tokenizer fits a model's embedding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer/tokjson.h"

ea_status ea_tokenizer_load_json(const char *tokenizer_json, const char *tokenizer_config_json, ea_tokenizer **out) {
    if (!out) return ea_error(EA_ERR_ARG, "ea_tokenizer_load_json: out is NULL");
    *out = NULL;
    if (!tokenizer_json) return ea_error(EA_ERR_ARG, "ea_tokenizer_load_json: path is NULL");
    ea_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return ea_error(EA_ERR_NOMEM, "cannot allocate a tokenizer");
    t->eot_id = -1;
    ea_status st = ea_tok_json_load(t, tokenizer_json, tokenizer_config_json);
    if (st) {
        ea_tokenizer_free(t);
        return st;
    }
    *out = t;
    return EA_OK;
}

ea_status ea_tok_json_load_dir(const char *dir, ea_tokenizer **out, int *has_json) {
    *has_json = 0;
    size_t n = strlen(dir) + sizeof "/tokenizer_config.json" + 1;
    char *json = malloc(n), *cfg = malloc(n);
    ea_status st = EA_OK;
    if (!json || !cfg) {
        st = ea_error(EA_ERR_NOMEM, "%s: out of memory", dir);
        *has_json = 1;
    } else {
        snprintf(json, n, "%s/tokenizer.json", dir);
        snprintf(cfg, n, "%s/tokenizer_config.json", dir);
        if (access(json, F_OK) == 0) {
            *has_json = 1;
            st = ea_tokenizer_load_json(json, cfg, out);
        }
    }
    free(json);
    free(cfg);
    return st;
}

size_t ea_tok_json_decode_strip(const ea_tok_json *j, char *s, size_t n) {
    size_t k = 0;
    while (k < n && k < (size_t)j->strip_lead && s[k] == ' ') k++;
    if (k) memmove(s, s + k, n - k + 1);
    return n - k;
}

int ea_tokenizer_bos(const ea_tokenizer *t, int *id) {
    int add = t && t->tj && t->tj->bos_add && t->tj->bos_id >= 0;
    if (id) *id = add ? t->tj->bos_id : -1;
    return add;
}

ea_status ea_tokenizer_check_vocab(const ea_tokenizer *t, int n_embd_rows, const char *model_what) {
    if (!t) return ea_error(EA_ERR_ARG, "ea_tokenizer_check_vocab: tokenizer is NULL");
    if (n_embd_rows <= 0 || t->n_vocab > n_embd_rows)
        return ea_error(EA_ERR_MISMATCH,
                        "%s: the tokenizer has ids up to %d but the model's embedding has %d rows (tokenizer and "
                        "weights do not belong together)",
                        model_what ? model_what : "model", t->n_vocab - 1, n_embd_rows);
    return EA_OK;
}

int ea_tokenizer_is_json(const ea_tokenizer *t) { return t && t->tj; }
