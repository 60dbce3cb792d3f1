/* Covariance accumulation speed: ea_cov_add (float rows, streamed in windows) against one bare
 * cblas_dsyrk over the same data already converted to double — the floor for a symmetric rank-N
 * update. Target (issue 3): ea_cov_add within 1.5x of the bare dsyrk.
 *
 *   bench_covariance [--n TOKENS] [--dims 256,768] [--chunk ROWS] [--reps R] [--threads T]
 *
 * Prints one JSON object on stdout; progress-free. Best of R repetitions for each timing. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eigenalign.h"

static double time_ea_cov(const float *x, int n, int d, int chunk, double *checksum) {
    ea_cov *c;
    if (ea_cov_init(&c, d)) {
        fprintf(stderr, "ea_cov_init: %s\n", ea_last_error());
        exit(1);
    }
    double t0 = ea_time_now();
    for (int at = 0; at < n; at += chunk) {
        int k = n - at < chunk ? n - at : chunk;
        if (ea_cov_add(c, x + (size_t)at * d, k, d)) {
            fprintf(stderr, "ea_cov_add: %s\n", ea_last_error());
            exit(1);
        }
    }
    *checksum = ea_cov_mean(c)[0]; /* folds the last partial batch in: part of the timed work */
    double t = ea_time_now() - t0;
    ea_cov_free(c);
    return t;
}

static double time_bare_dsyrk(const double *xd, int n, int d, double *cmat) {
    double t0 = ea_time_now();
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, n, 1.0, xd, d, 0.0, cmat, d);
    return ea_time_now() - t0;
}

int main(int argc, char **argv) {
    int n = 46000, chunk = 512, reps = 3, threads = 0;
    int dims[8] = {256, 768}, ndims = 2;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--n") && v) n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--chunk") && v) chunk = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && v) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && v) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dims") && v) {
            ndims = 0;
            for (char *s = argv[++i]; *s && ndims < 8;) {
                dims[ndims++] = (int)strtol(s, &s, 10);
                if (*s == ',') s++;
            }
        } else {
            fprintf(stderr, "usage: %s [--n TOKENS] [--dims 256,768] [--chunk ROWS] [--reps R] [--threads T]\n",
                    argv[0]);
            return 2;
        }
    }
    if (n < 2 || chunk < 1 || reps < 1 || ndims < 1) {
        fprintf(stderr, "bench_covariance: bad arguments\n");
        return 2;
    }
    if (threads > 0) openblas_set_num_threads(threads);
    printf("{\"bench\": \"covariance\", \"n\": %d, \"chunk\": %d, \"reps\": %d, \"blas_threads\": %d, \"results\": [",
           n, chunk, reps, openblas_get_num_threads());
    for (int di = 0; di < ndims; di++) {
        int d = dims[di];
        float *x = malloc((size_t)n * d * sizeof(float));
        double *xd = malloc((size_t)n * d * sizeof(double)), *cmat = malloc((size_t)d * d * sizeof(double));
        if (!x || !xd || !cmat) {
            fprintf(stderr, "bench_covariance: out of memory for n=%d d=%d\n", n, d);
            return 1;
        }
        ea_rng r;
        ea_rng_seed(&r, 1);
        for (size_t i = 0; i < (size_t)n * d; i++) {
            x[i] = (float)(ea_rng_normal(&r) + (i % d == 7 ? 50.0 : 0.0)); /* an outlier dim, like GPT-2 */
            xd[i] = x[i];
        }
        double best_ea = 1e30, best_bare = 1e30, chk = 0;
        for (int k = 0; k < reps; k++) {
            double t = time_bare_dsyrk(xd, n, d, cmat);
            if (t < best_bare) best_bare = t;
            t = time_ea_cov(x, n, d, chunk, &chk);
            if (t < best_ea) best_ea = t;
        }
        double gflop = (double)n * d * (d + 1) / 1e9; /* n·d(d+1)/2 multiply-adds */
        printf("%s{\"d\": %d, \"ea_cov_add_s\": %.6f, \"bare_dsyrk_s\": %.6f, \"ea_cov_tokens_per_s\": %.1f, "
               "\"bare_dsyrk_tokens_per_s\": %.1f, \"bare_dsyrk_gflops\": %.2f, \"ratio\": %.3f, "
               "\"target_ratio\": 1.5, \"met\": %s, \"checksum\": %.6g}",
               di ? ", " : "", d, best_ea, best_bare, n / best_ea, n / best_bare, gflop / best_bare,
               best_ea / best_bare, best_ea / best_bare <= 1.5 ? "true" : "false", chk);
        fflush(stdout);
        free(x);
        free(xd);
        free(cmat);
    }
    printf("]}\n");
    return 0;
}
