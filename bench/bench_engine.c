/* Engine benchmark: prefill and decode tokens/s by context length, peak RSS. JSON lines on stdout.
 * usage: bench_engine [MODEL_DIR ...] (default: bundled gpt2-micro, plus ../shared gpt2-mini if present)
 * Prefill: forward of N tokens from an empty cache (logits of the last token only, as llama-bench pp).
 * Decode: 128 tokens one at a time after a 1-token prompt (as llama-bench tg128), and the last 64
 * tokens of a context of N one at a time. Each figure is the median of 5 runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "eigenalign.h"

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return v[n / 2];
}

static const char *isa = "generic"; /* the kernel tier (ea_isa_tier) */

static void bench_model(const char *dir) {
    ea_model *m;
    if (ea_model_load(dir, &m)) { fprintf(stderr, "bench_engine: %s\n", ea_last_error()); return; }
    const ea_config *c = ea_model_config(m);
    ea_kvcache *cache;
    ea_kvcache_init(&cache, c, c->n_positions, NULL);
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    int *ids = malloc(sizeof(int) * (size_t)c->n_positions);
    ea_rng rng;
    ea_rng_seed(&rng, 7);
    for (int i = 0; i < c->n_positions; i++) ids[i] = (int)ea_rng_below(&rng, 50000);
    const char *name = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    int ctxs[] = {128, 512, 1024, 4096}; /* 4096: long-context models (llama-long) */
    ea_model_forward(m, cache, ids, 64, logits, 0); /* warm-up */
    for (int ci = 0; ci < 4; ci++) {
        int n = ctxs[ci];
        if (n > c->n_positions) continue;
        double pre[5], dec[5];
        for (int r = 0; r < 5; r++) {
            ea_kvcache_reset(cache);
            double t0 = ea_time_now();
            ea_model_forward(m, cache, ids, n, logits, 0);
            pre[r] = n / (ea_time_now() - t0);
            /* decode: the last 64 tokens of a context of n, one at a time */
            ea_kvcache_reset(cache);
            ea_model_forward(m, cache, ids, n - 64, logits, 0);
            t0 = ea_time_now();
            for (int i = n - 64; i < n; i++) ea_model_forward(m, cache, ids + i, 1, logits, 0);
            dec[r] = 64 / (ea_time_now() - t0);
        }
        printf("{\"bench\":\"engine\",\"model\":\"%s\",\"isa\":\"%s\",\"ctx\":%d,\"prefill_tok_s\":%.1f,"
               "\"decode_tok_s_at_ctx\":%.1f}\n",
               name, isa, n, median(pre, 5), median(dec, 5));
        fflush(stdout);
    }
    double tg[5];
    for (int r = 0; r < 5; r++) {
        ea_kvcache_reset(cache);
        ea_model_forward(m, cache, ids, 1, logits, 0);
        double t0 = ea_time_now();
        for (int i = 0; i < 128; i++) ea_model_forward(m, cache, ids + 1 + i, 1, logits, 0);
        tg[r] = 128 / (ea_time_now() - t0);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"bench\":\"engine\",\"model\":\"%s\",\"isa\":\"%s\",\"decode_tg128_tok_s\":%.1f,\"peak_rss_kb\":%ld}\n", name,
           isa, median(tg, 5), ru.ru_maxrss);
    free(ids);
    free(logits);
    ea_kvcache_free(cache);
    ea_model_free(m);
}

int main(int argc, char **argv) {
    ea_process_tune(argv);
    ea_isa tier;
    if (ea_isa_tier(&tier)) {
        fprintf(stderr, "bench_engine: %s\n", ea_last_error());
        return 2;
    }
    isa = ea_isa_name(tier);
    if (argc > 1) {
        for (int i = 1; i < argc; i++) bench_model(argv[i]);
        return 0;
    }
    bench_model(EA_SOURCE_DIR "/models/gpt2-micro");
    struct stat st;
    if (stat(EA_SOURCE_DIR "/../shared/models/gpt2-mini", &st) == 0) bench_model(EA_SOURCE_DIR "/../shared/models/gpt2-mini");
    else fprintf(stderr, "bench_engine: ../shared/models/gpt2-mini absent, skipped\n");
    return 0;
}
