/* Decode speed with compressed KV caches against the exact float32 cache, at a given context.
 * Each codec (f32 first) is timed reps times, interleaved so that machine load drifts hit all
 * codecs alike; the median is reported. One JSON object per line on stdout.
 *
 *   bench_kvcache [--model DIR] [--ctx N] [--decode N] [--reps R] [--kv f16,q8,q4,klt:2]
 *                 [--calib PATH] [--calib-tokens N] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib_internal.h"
#include "eigenalign.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const char *arg(int argc, char **argv, const char *name, const char *def) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) return argv[i + 1];
    return def;
}

int main(int argc, char **argv) {
    ea_process_tune(argv); /* the CLI's runtime choices, so timings match it */
    ea_isa tier;
    if (ea_isa_tier(&tier)) {
        fprintf(stderr, "bench_kvcache: %s\n", ea_last_error());
        return 2;
    }
    const char *dir = arg(argc, argv, "--model", EA_SOURCE_DIR "/models/gpt2-micro");
    const char *calib = arg(argc, argv, "--calib", EA_SOURCE_DIR "/data/calib.txt");
    const char *kv = arg(argc, argv, "--kv", "f16,q8,q4,klt:1,klt:2,klt:4");
    int ctx = atoi(arg(argc, argv, "--ctx", "0")), n_dec = atoi(arg(argc, argv, "--decode", "64"));
    int reps = atoi(arg(argc, argv, "--reps", "3"));
    size_t calib_tokens = (size_t)atol(arg(argc, argv, "--calib-tokens", "16384"));
    ea_model *m = NULL;
    ea_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0, n = 0;
    int *ids = NULL;
    ea_status st = ea_model_load(dir, &m);
    if (!st) st = ea_tokenizer_load_dir(dir, &tok);
    if (!st) st = ea_read_file(calib, (size_t)1 << 30, &text, &len);
    if (!st) st = ea_tokenizer_encode(tok, text, len, 0, &ids, &n);
    if (st) {
        fprintf(stderr, "bench_kvcache: %s\n", ea_last_error());
        return 1;
    }
    if (n > calib_tokens) n = calib_tokens;
    const ea_config *cfg = ea_model_config(m);
    if (ctx <= 0 || ctx > cfg->n_positions) ctx = cfg->n_positions < 1024 ? cfg->n_positions : 1024;
    ea_kv_stats stats;
    ea_kv_metric metric;
    if ((st = ea_kv_stats_fit(m, ids, n, ctx, 0, &stats, &metric))) {
        fprintf(stderr, "bench_kvcache: %s\n", ea_last_error());
        return 1;
    }
    ea_kv_sens_cache *sens = NULL;
    char *list = strdup(kv);
    const char *specs[64];
    ea_kv_codec *codecs[64] = {NULL};
    int nc = 0;
    specs[nc++] = "f32";
    for (char *sv = NULL, *s = strtok_r(list, ",", &sv); s && nc < 64; s = strtok_r(NULL, ",", &sv)) specs[nc++] = s;
    for (int i = 1; i < nc; i++)
        if ((st = sens ? EA_OK : ea_kv_sens_cache_new(&sens)) ||
            (st = ea_kv_codec_fit(m, specs[i], &stats, &metric, ids, n, ctx, 4096, sens, &codecs[i], NULL, NULL))) {
            fprintf(stderr, "bench_kvcache: %s\n", ea_last_error());
            return 1;
        }
    double *rate = calloc((size_t)nc * reps, sizeof(double));
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < nc; i++)
            if ((st = ea_kv_decode_rate(m, codecs[i], ids, n, ctx, n_dec, &rate[i * reps + r]))) {
                fprintf(stderr, "bench_kvcache: %s\n", ea_last_error());
                return 1;
            }
    double base = 0;
    for (int i = 0; i < nc; i++) {
        qsort(rate + i * reps, (size_t)reps, sizeof(double), cmp_double);
        double med = rate[i * reps + reps / 2];
        if (i == 0) base = med;
        printf("{\"bench\": \"kvcache_decode\", \"model\": \"%s\", \"isa\": \"%s\", \"codec\": \"%s\", \"ctx\": %d, "
               "\"decode_tokens\": %d, "
               "\"reps\": %d, \"bits_per_value\": %.4f, \"decode_tok_s\": %.2f, \"decode_tok_s_min\": %.2f, "
               "\"decode_tok_s_max\": %.2f, \"speed_vs_f32\": %.3f}\n",
               dir, ea_isa_name(tier), specs[i], ctx, n_dec, reps, codecs[i] ? ea_kv_codec_bits_per_value(codecs[i]) : 32.0, med,
               rate[i * reps], rate[i * reps + reps - 1], med / base);
        fflush(stdout);
    }
    for (int i = 0; i < nc; i++) ea_kv_codec_free(codecs[i]);
    free(rate);
    free(list);
    ea_kv_stats_free(&stats);
    ea_kv_metric_free(&metric);
    ea_kv_sens_cache_free(sens);
    free(ids);
    free(text);
    ea_tokenizer_free(tok);
    ea_model_free(m);
    return 0;
}
