/* Example: the covariance spectrum of a text's activations. Runs the model over the text (one
 * window, at most n_positions tokens), captures the residual stream entering block LAYER and
 * prints its effective rank Df, k for 95% variance and C(k) for a few k.
 * usage: spectrum MODEL_DIR TEXT_FILE [LAYER] */
#include <eigenalign.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct { int layer; ea_cov *cov; ea_status st; } capture;

static int on_capture(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    (void)pos0, (void)d;
    capture *c = user;
    if (site == EA_SITE_HIDDEN && layer == c->layer && !c->st) c->st = ea_cov_add(c->cov, x, n, ld);
    return c->st != EA_OK;
}

static int fail(ea_status st) {
    fprintf(stderr, "spectrum: %s: %s\n", ea_status_name(st), ea_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) return fprintf(stderr, "usage: spectrum MODEL_DIR TEXT_FILE [LAYER]\n"), 2;
    ea_process_tune(argv); /* the tool's OpenBLAS and OpenMP settings (re-executes once) */
    ea_model *m = NULL;
    ea_tokenizer *tok = NULL;
    ea_kvcache *cache = NULL;
    char *text = NULL;
    int *ids = NULL;
    size_t len, n;
    capture c = {argc > 3 ? atoi(argv[3]) : 1, NULL, EA_OK};
    ea_status st;
    if ((st = ea_model_load(argv[1], &m)) || (st = ea_tokenizer_load_dir(argv[1], &tok)) ||
        (st = ea_read_file(argv[2], (size_t)64 << 20, &text, &len)) ||
        (st = ea_tokenizer_encode(tok, text, len, 0, &ids, &n)))
        return fail(st);
    const ea_config *cfg = ea_model_config(m);
    if (c.layer < 0 || c.layer > cfg->n_layer) return fprintf(stderr, "spectrum: layer out of range\n"), 2;
    if (n > (size_t)cfg->n_positions) n = (size_t)cfg->n_positions;
    if ((st = ea_cov_init(&c.cov, cfg->n_embd)) || (st = ea_kvcache_init(&cache, cfg, (int)n, NULL))) return fail(st);
    ea_model_set_capture(m, on_capture, &c);
    if ((st = ea_model_forward(m, cache, ids, (int)n, NULL, 0)) || (st = c.st)) return fail(st);
    ea_spectrum_summary s;
    if ((st = ea_spectrum_summarize(c.cov, 0, &s))) return fail(st);
    printf("hidden layer %d: %zu tokens, d = %d, Df = %.3f, k95 = %d", c.layer, n, s.d, s.df, s.k95);
    for (int k = 1; k <= 16; k *= 4) printf(", C(%d) = %.4f", k, ea_spectrum_cumvar(s.eigenvalues, s.d, k));
    printf("\n");
    ea_spectrum_summary_free(&s);
    ea_cov_free(c.cov);
    ea_kvcache_free(cache);
    free(ids);
    free(text);
    ea_tokenizer_free(tok);
    ea_model_free(m);
    return 0;
}
