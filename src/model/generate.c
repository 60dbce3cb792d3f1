/* Sampling and generation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ea/tokenizer.h"
#include "model/internal.h"

ea_sampler_params ea_sampler_default(void) {
    ea_sampler_params p = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .seed = 1234, .stop_at_eot = 1};
    return p;
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

typedef struct { float p; int id; } prob_id;

static int cmp_desc(const void *a, const void *b) {
    float x = ((const prob_id *)a)->p, y = ((const prob_id *)b)->p;
    return (x < y) - (x > y);
}

int ea_sample(float *logits, int vocab, const ea_sampler_params *p, ea_rng *rng) {
    if (p->temperature <= 0) return argmax(logits, vocab);
    float mx = logits[argmax(logits, vocab)];
    prob_id *c = malloc(sizeof *c * (size_t)vocab);
    if (!c) return argmax(logits, vocab);
    double sum = 0;
    for (int i = 0; i < vocab; i++) {
        c[i].p = expf((logits[i] - mx) / p->temperature);
        c[i].id = i;
        sum += c[i].p;
    }
    int n = vocab;
    int filter = (p->top_k > 0 && p->top_k < vocab) || p->top_p < 1.0f;
    if (filter) {
        qsort(c, (size_t)vocab, sizeof *c, cmp_desc);
        if (p->top_k > 0 && p->top_k < n) n = p->top_k;
        sum = 0;
        for (int i = 0; i < n; i++) sum += c[i].p;
        if (p->top_p < 1.0f) {
            double acc = 0;
            for (int i = 0; i < n; i++) {
                acc += c[i].p;
                if (acc >= p->top_p * sum) { n = i + 1; break; }
            }
            sum = 0;
            for (int i = 0; i < n; i++) sum += c[i].p;
        }
    }
    double u = ea_rng_uniform(rng) * sum, acc = 0;
    int pick = c[n - 1].id;
    for (int i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc) { pick = c[i].id; break; }
    }
    free(c);
    return pick;
}

ea_status ea_generate(ea_model *m, ea_kvcache *cache, const int *prompt, int n_prompt, int n_new,
                      const ea_sampler_params *p, int *out, int *n_out) {
    *n_out = 0;
    if (n_prompt < 1) return ea_error(EA_ERR_ARG, "generate: empty prompt");
    if (n_new < 0) return ea_error(EA_ERR_ARG, "generate: negative token count");
    if (n_prompt + n_new > ea_kvcache_capacity(cache) + 1)
        return ea_error(EA_ERR_ARG, "generate: prompt (%d) + new tokens (%d) exceed the context of %d", n_prompt, n_new,
                        ea_kvcache_capacity(cache));
    int V = m->cfg.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)V);
    if (!logits) return ea_error(EA_ERR_NOMEM, "generate: out of memory");
    ea_rng rng;
    ea_rng_seed(&rng, p->seed);
    ea_kvcache_reset(cache);
    ea_status st = ea_model_forward(m, cache, prompt, n_prompt, logits, 0);
    for (int i = 0; !st && i < n_new; i++) {
        int tok = ea_sample(logits, V, p, &rng);
        out[(*n_out)++] = tok;
        if (p->stop_at_eot && ea_model_is_eos(m, tok)) break;
        if (i + 1 < n_new) st = ea_model_forward(m, cache, &tok, 1, logits, 0);
    }
    free(logits);
    return st;
}
