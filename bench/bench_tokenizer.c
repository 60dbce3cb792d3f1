/* Tokenizer throughput: encode data/eval.txt with the bundled GPT-2 vocabulary (vocab.json +
 * merges.txt) and with each tokenizer.json of tests/fixtures/tokenizers (GPT-2, Llama 2,
 * Llama 3, Qwen3). Runs are interleaved (one run of each tokenizer per round, one warm-up
 * round, then 5 timed), so the medians are comparable on a loaded machine; one JSON line per
 * tokenizer, "vs_first" is its median over the first tokenizer's.
 * usage: bench_tokenizer [TEXT_FILE [MODEL_DIR ...]] */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "eigenalign.h"

#define RUNS 5
#define MAX_TOK 16

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *text_path = argc > 1 ? argv[1] : EA_SOURCE_DIR "/data/eval.txt";
    const char *defaults[] = {EA_SOURCE_DIR "/models/gpt2-micro", EA_SOURCE_DIR "/tests/fixtures/tokenizers/gpt2",
                              EA_SOURCE_DIR "/tests/fixtures/tokenizers/llama2",
                              EA_SOURCE_DIR "/tests/fixtures/tokenizers/llama3",
                              EA_SOURCE_DIR "/tests/fixtures/tokenizers/qwen3"};
    const char **dirs = argc > 2 ? (const char **)argv + 2 : defaults;
    int n_tok = argc > 2 ? argc - 2 : 5;
    if (n_tok > MAX_TOK) n_tok = MAX_TOK;
    ea_tokenizer *t[MAX_TOK] = {0};
    double load_s[MAX_TOK], secs[MAX_TOK][RUNS];
    size_t n_tokens[MAX_TOK] = {0};
    char *text = NULL;
    size_t len = 0;
    int rc = 1;
    if (ea_read_file(text_path, (size_t)1 << 30, &text, &len)) {
        fprintf(stderr, "bench_tokenizer: %s\n", ea_last_error());
        return 1;
    }
    for (int k = 0; k < n_tok; k++) {
        double t0 = ea_time_now();
        if (ea_tokenizer_load_dir(dirs[k], &t[k])) {
            fprintf(stderr, "bench_tokenizer: %s\n", ea_last_error());
            goto done;
        }
        load_s[k] = ea_time_now() - t0;
    }
    for (int r = -1; r < RUNS; r++) {
        for (int k = 0; k < n_tok; k++) {
            int *ids = NULL;
            double s0 = ea_time_now();
            if (ea_tokenizer_encode(t[k], text, len, 0, &ids, &n_tokens[k])) {
                fprintf(stderr, "bench_tokenizer: %s\n", ea_last_error());
                goto done;
            }
            double dt = ea_time_now() - s0;
            free(ids);
            if (r >= 0) secs[k][r] = dt;
        }
    }
    double first = 0;
    for (int k = 0; k < n_tok; k++) {
        qsort(secs[k], RUNS, sizeof *secs[k], cmp_double);
        double med = secs[k][RUNS / 2];
        if (k == 0) first = med;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "bench", "tokenizer");
        cJSON_AddStringToObject(j, "tokenizer", dirs[k]);
        cJSON_AddStringToObject(j, "file", text_path);
        cJSON_AddNumberToObject(j, "bytes", (double)len);
        cJSON_AddNumberToObject(j, "tokens", (double)n_tokens[k]);
        cJSON_AddNumberToObject(j, "runs", RUNS);
        cJSON_AddNumberToObject(j, "median_s", med);
        cJSON_AddNumberToObject(j, "mb_per_s", (double)len / med / 1e6);
        cJSON_AddNumberToObject(j, "tokens_per_s", (double)n_tokens[k] / med);
        cJSON_AddNumberToObject(j, "vs_first", med / first);
        cJSON_AddNumberToObject(j, "load_s", load_s[k]);
        char *out = cJSON_PrintUnformatted(j);
        if (out) puts(out);
        free(out);
        cJSON_Delete(j);
    }
    rc = 0;
done:
    for (int k = 0; k < n_tok; k++) ea_tokenizer_free(t[k]);
    free(text);
    return rc;
}
