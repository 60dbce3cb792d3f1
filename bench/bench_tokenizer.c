/* Tokenizer throughput: encode data/eval.txt with the bundled GPT-2 vocabulary; prints one JSON
 * line with the median of 5 timed runs (after one warm-up run).
 * usage: bench_tokenizer [TEXT_FILE [MODEL_DIR]] */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "eigenalign.h"

#define RUNS 5

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *text_path = argc > 1 ? argv[1] : EA_SOURCE_DIR "/data/eval.txt";
    const char *model_dir = argc > 2 ? argv[2] : EA_SOURCE_DIR "/models/gpt2-micro";
    ea_tokenizer *t = NULL;
    char *text = NULL;
    size_t len = 0;
    double t0 = ea_time_now();
    if (ea_tokenizer_load_dir(model_dir, &t) || ea_read_file(text_path, (size_t)1 << 30, &text, &len)) {
        fprintf(stderr, "bench_tokenizer: %s\n", ea_last_error());
        ea_tokenizer_free(t);
        return 1;
    }
    double load_s = ea_time_now() - t0;
    double secs[RUNS];
    size_t n_tokens = 0;
    for (int r = -1; r < RUNS; r++) {
        int *ids = NULL;
        double s0 = ea_time_now();
        if (ea_tokenizer_encode(t, text, len, 0, &ids, &n_tokens)) {
            fprintf(stderr, "bench_tokenizer: %s\n", ea_last_error());
            return 1;
        }
        double dt = ea_time_now() - s0;
        free(ids);
        if (r >= 0) secs[r] = dt;
    }
    qsort(secs, RUNS, sizeof *secs, cmp_double);
    double med = secs[RUNS / 2];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "bench", "tokenizer");
    cJSON_AddStringToObject(j, "file", text_path);
    cJSON_AddNumberToObject(j, "bytes", (double)len);
    cJSON_AddNumberToObject(j, "tokens", (double)n_tokens);
    cJSON_AddNumberToObject(j, "runs", RUNS);
    cJSON_AddNumberToObject(j, "median_s", med);
    cJSON_AddNumberToObject(j, "mb_per_s", (double)len / med / 1e6);
    cJSON_AddNumberToObject(j, "tokens_per_s", (double)n_tokens / med);
    cJSON_AddNumberToObject(j, "load_s", load_s);
    char *out = cJSON_PrintUnformatted(j);
    if (out) puts(out);
    free(out);
    cJSON_Delete(j);
    free(text);
    ea_tokenizer_free(t);
    return 0;
}
