/* Example: fit an activation compressor (mean + top-k eigenvectors per site, 95% of the variance)
 * on calibration text and report its reconstruction error on another text.
 * usage: compress MODEL_DIR CALIB_FILE EVAL_FILE [MAX_TOKENS] */
#include <eigenalign.h>
#include <stdio.h>
#include <stdlib.h>

static ea_status load_ids(const ea_tokenizer *tok, const char *path, size_t max, int **ids, size_t *n) {
    char *text = NULL;
    size_t len;
    ea_status st = ea_read_file(path, (size_t)64 << 20, &text, &len);
    if (!st) st = ea_tokenizer_encode(tok, text, len, 0, ids, n);
    if (!st && max && *n > max) *n = max;
    free(text);
    return st;
}

int main(int argc, char **argv) {
    if (argc < 4) return fprintf(stderr, "usage: compress MODEL_DIR CALIB_FILE EVAL_FILE [MAX_TOKENS]\n"), 2;
    ea_process_tune(argv); /* the tool's OpenBLAS and OpenMP settings (re-executes once) */
    size_t max = argc > 4 ? strtoull(argv[4], NULL, 10) : 4096;
    ea_model *m = NULL;
    ea_tokenizer *tok = NULL;
    ea_compressor *c = NULL;
    ea_eval_result r = {0};
    int *calib = NULL, *eval = NULL;
    size_t n_calib, n_eval;
    ea_fit_params fp = ea_fit_params_default();           /* 95% variance; hidden, k, v */
    ea_eval_params ep = {0, EA_INJECT_NONE, NULL, NULL}; /* reconstruction error only */
    ea_status st;
    if ((st = ea_model_load(argv[1], &m)) || (st = ea_tokenizer_load_dir(argv[1], &tok)) ||
        (st = load_ids(tok, argv[2], max, &calib, &n_calib)) || (st = load_ids(tok, argv[3], max, &eval, &n_eval)) ||
        (st = ea_compressor_fit(m, calib, n_calib, &fp, &c)) || (st = ea_eval_result_init(&r, c)) ||
        (st = ea_compressor_evaluate(m, c, eval, n_eval, &ep, &r))) {
        fprintf(stderr, "compress: %s: %s\n", ea_status_name(st), ea_last_error());
        return 1;
    }
    printf("fitted on %zu tokens, evaluated on %zu\n", n_calib, n_eval);
    for (int i = 0; i < ea_compressor_count(c); i++) {
        const ea_projector *p = ea_compressor_get(c, i);
        ea_site_ref s = ea_projector_site(p);
        if (s.site != EA_SITE_HIDDEN) continue;
        printf("hidden %2d: k = %3d of %d, relative error %.4f, cosine %.4f\n", s.layer, ea_projector_rank(p),
               ea_projector_dim(p), ea_recon_stats_rel_error(&r.site[i]), ea_recon_stats_cosine(&r.site[i]));
    }
    ea_eval_result_free(&r);
    ea_compressor_free(c);
    free(calib);
    free(eval);
    ea_tokenizer_free(tok);
    ea_model_free(m);
    return 0;
}
