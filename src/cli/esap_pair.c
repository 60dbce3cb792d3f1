/* What the ESAP commands (handshake, align, message) share: the text options, rank lists, and the
 * two models with their anchors and bases. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

void esap_source_args(cli_args *a, ea_esap_source *src) {
    memset(src, 0, sizeof *src);
    src->text_path = cli_str(a, "--text", cli_default_calib());
    src->max_tokens = (size_t)cli_long(a, "--max-tokens", 0, 0, 1L << 40);
    src->ctx = (int)cli_long(a, "--ctx", 0, 1, 1 << 20);
    src->progress = cli_progress;
}

int esap_parse_list(const char *s, int *out, int max, int lo, int hi) {
    int n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < lo || v > hi || n == max || (*end && *end != ',')) return -1;
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
        if (*end && !*s) return -1;
    }
    return n;
}

int esap_ranks(const char *cmd, const char *s, int kmax, int *ranks) {
    int n = 0;
    if (s) {
        if ((n = esap_parse_list(s, ranks, ESAP_MAX_LIST, 1, kmax)) <= 0) {
            cli_error(cmd, "--ranks '%s': expected up to %d comma-separated ranks in [1, %d]", s, ESAP_MAX_LIST, kmax);
            return -1;
        }
        return n;
    }
    for (int k = 4; k < kmax && n < ESAP_MAX_LIST - 1; k *= 2) ranks[n++] = k;
    ranks[n++] = kmax;
    return n;
}

int esap_pairs_parse(const char *cmd, const char *s) {
    if (!s || !strcmp(s, "ids")) return ESAP_PAIRS_IDS;
    if (!strcmp(s, "text")) return ESAP_PAIRS_TEXT;
    if (!strcmp(s, "none")) return ESAP_PAIRS_NONE;
    cli_error(cmd, "--pairs '%s': expected ids, text or none", s);
    return -1;
}

const char *esap_pairs_name(int mode) {
    return mode == ESAP_PAIRS_TEXT ? "text" : mode == ESAP_PAIRS_NONE ? "none" : "ids";
}

ea_status esap_pair_open(esap_pair *p, const char *dir_a, const char *dir_b, const char *repr,
                         const ea_esap_source *src, int pairs) {
    memset(p, 0, sizeof *p);
    p->src = *src;
    p->pairs = pairs;
    ea_status st;
    if ((st = ea_esap_repr_parse(repr, &p->src.repr)) || (st = cli_load_model(dir_a, &p->ma, &p->ta)) ||
        (st = cli_load_model(dir_b, &p->mb, &p->tb)))
        return st;
    if (pairs == ESAP_PAIRS_TEXT) st = ea_esap_text_anchors(p->ma, p->ta, p->mb, p->tb, &p->src, &p->an);
    else st = ea_esap_anchors_from_models(p->ma, p->ta, p->mb, p->tb, &p->src, &p->an);
    if (st) return st;
    cli_progress_done();
    return EA_OK;
}

int esap_pair_split(const esap_pair *p, const char *cmd, const char *repr, long *n_train, long *n_test) {
    int n = p->an.n;
    if (*n_test == 0) *n_test = n / 5 < ESAP_DEFAULT_TEST ? (n / 5 > 0 ? n / 5 : 1) : ESAP_DEFAULT_TEST;
    if (*n_test >= n) return cli_error(cmd, "--test %ld leaves no training anchors (%d anchors in all)", *n_test, n);
    int room = n - (int)*n_test;
    if (*n_train == 0) *n_train = room < ESAP_DEFAULT_TRAIN ? room : ESAP_DEFAULT_TRAIN;
    if (*n_train > room)
        return cli_error(cmd, "--anchors %ld + --test %ld exceed the %d anchors available (%s)", *n_train, *n_test, n,
                         repr);
    return 0;
}

ea_status esap_pair_fit_bases(esap_pair *p) {
    ea_status st = ea_esap_basis_fit(p->an.a, p->an.n, p->an.d_a, &p->ba);
    return st ? st : ea_esap_basis_fit(p->an.b, p->an.n, p->an.d_b, &p->bb);
}

ea_status esap_pair_mknn(const esap_pair *p, const int *rows, int m, uint64_t seed, ea_esap_mknn *out) {
    const ea_esap_anchors *an = &p->an;
    float *a = malloc((size_t)m * an->d_a * sizeof *a), *b = malloc((size_t)m * an->d_b * sizeof *b);
    ea_status st;
    if (!a || !b) st = ea_error(EA_ERR_NOMEM, "mutual knn: cannot allocate %d anchors", m);
    else {
        const double *ma = ea_esap_basis_mean(p->ba), *mb = ea_esap_basis_mean(p->bb);
        for (int r = 0; r < m; r++) {
            for (int j = 0; j < an->d_a; j++)
                a[(size_t)r * an->d_a + j] = (float)(an->a[(size_t)rows[r] * an->d_a + j] - ma[j]);
            for (int j = 0; j < an->d_b; j++)
                b[(size_t)r * an->d_b + j] = (float)(an->b[(size_t)rows[r] * an->d_b + j] - mb[j]);
        }
        st = ea_esap_mutual_knn(a, an->d_a, b, an->d_b, m, EA_ESAP_MKNN_K, EA_ESAP_MKNN_PERMS, seed, out);
    }
    free(a);
    free(b);
    return st;
}

void esap_mknn_json(cJSON *o, const ea_esap_mknn *m) {
    cJSON *k = cJSON_AddObjectToObject(o, "mutual_knn");
    cli_add_number(k, "value", m->value);
    cJSON *n = cJSON_AddObjectToObject(k, "null");
    cli_add_number(n, "mean", m->null_mean);
    cli_add_number(n, "sd", m->null_sd);
    cJSON_AddNumberToObject(n, "n", m->n_perm);
    cli_add_number(k, "p_value", m->p_value);
    cli_add_number(k, "chance", m->chance);
    cJSON_AddNumberToObject(k, "k", m->k);
    cJSON_AddNumberToObject(k, "items", m->n);
}

void esap_pair_close(esap_pair *p) {
    ea_esap_basis_free(p->ba);
    ea_esap_basis_free(p->bb);
    ea_esap_anchors_free(&p->an);
    ea_tokenizer_free(p->ta);
    ea_tokenizer_free(p->tb);
    ea_model_free(p->ma);
    ea_model_free(p->mb);
    memset(p, 0, sizeof *p);
}
