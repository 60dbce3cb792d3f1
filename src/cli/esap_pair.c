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

ea_status esap_pair_open(esap_pair *p, const char *dir_a, const char *dir_b, const char *repr,
                         const ea_esap_source *src) {
    memset(p, 0, sizeof *p);
    p->src = *src;
    ea_status st;
    if ((st = ea_esap_repr_parse(repr, &p->src.repr)) || (st = cli_load_model(dir_a, &p->ma, &p->ta)) ||
        (st = cli_load_model(dir_b, &p->mb, &p->tb)) ||
        (st = ea_esap_anchors_from_models(p->ma, p->ta, p->mb, p->tb, &p->src, &p->an)))
        return st;
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
