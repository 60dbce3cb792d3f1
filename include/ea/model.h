/* eigen-alignment model: GPT-2 forward pass, activation capture, KV cache, generation, perplexity. */
#ifndef EA_MODEL_H
#define EA_MODEL_H

#include "ea/core.h"
#include "ea/io.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ea_model ea_model;
typedef struct ea_kvcache ea_kvcache;
typedef struct ea_kv_codec ea_kv_codec; /* see ea/kvcodec.h */

/* Load DIR/config.json and DIR/model.safetensors (or the shards listed in
 * DIR/model.safetensors.index.json). Both key layouts ("transformer.h.0..." and "h.0...") work. */
EA_API ea_status ea_model_load(const char *dir, ea_model **out);
EA_API void ea_model_free(ea_model *m);
EA_API const ea_config *ea_model_config(const ea_model *m);
EA_API const char *ea_model_dir(const ea_model *m);
/* Hex digest of the config and weights: identifies a model in compressor and ESAP files. */
EA_API const char *ea_model_fingerprint(const ea_model *m);
/* Token embedding matrix wte, vocab_size × n_embd, float32. */
EA_API const float *ea_model_wte(const ea_model *m);

/* Activation sites. Hidden layer i (0..n_layer): the residual stream entering block i;
 * i = n_layer is the final output after ln_f (as Hugging Face's hidden_states).
 * Q/K/V layer i (0..n_layer-1): the c_attn output of block i before the head split (RoPE
 * families: q/k/v projections, q and k rotated; K and V are n_kv_head·head_dim wide). */
typedef enum { EA_SITE_HIDDEN = 0, EA_SITE_Q = 1, EA_SITE_K = 2, EA_SITE_V = 3, EA_SITE_Q_PRE = 4, EA_SITE_K_PRE = 5 } ea_site;
EA_API const char *ea_site_name(ea_site s);
EA_API ea_status ea_site_parse(const char *name, ea_site *out);

/* Capture hook: called during ea_model_forward with n rows of d floats (row stride ld) whose
 * first row is at position pos0. The hook may overwrite x to replace the activation
 * (residual stream, or q/k/v before attention and before the cache). EA_OK continues; any other
 * status ends the forward pass, which returns it unchanged (an error keeps the message the hook
 * recorded with ea_error; EA_STOPPED says the hook has what it needs, and leaves the cache and
 * logits of that pass incomplete). */
typedef ea_status (*ea_capture_fn)(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld);
EA_API void ea_model_set_capture(ea_model *m, ea_capture_fn fn, void *user);
/* RoPE models: Q and K are captured after the rotation (sites q, k: what the cache stores); with
 * this on (default off, so hooks written for the four sites never see more), also before it, after
 * Qwen3's q/k norm (sites q_pre, k_pre; n_head·head_dim and n_kv_head·head_dim wide). */
EA_API void ea_model_set_capture_prerot(ea_model *m, int on);

/* Windows over a token stream: start index and length of each. */
typedef struct {
    size_t start;
    int len;
} ea_window;

/* How ea_model_run_windows runs each window (zero-initialise, then set what is needed). */
typedef struct {
    ea_kvcache *cache;   /* NULL: a float32 cache of ctx tokens made for the run */
    float *logits;       /* NULL: no logits; else len × vocab_size floats (every row) per window */
    ea_capture_fn hook;  /* installed for every window's forward pass, removed at the end (NULL: none) */
    void *hook_user;
    /* Optional, before and after each window's forward pass (ids + start: its tokens). end sees
     * the window's logits and may run the model again on cache (its own hooks included). */
    ea_status (*begin)(void *user, ea_kvcache *cache, const int *ids, size_t start, int len);
    ea_status (*end)(void *user, ea_kvcache *cache, const int *ids, size_t start, int len, const float *logits);
    void *user;
    /* Windows shorter than this are not run: 2 for next-token scoring (a last window of one
     * token predicts nothing), 0 or 1 to see every token. */
    int min_len;
    /* Explicit windows (any start, len <= the cache) instead of consecutive ones of ctx tokens. */
    const ea_window *list;
    int n_list;
    /* Optional: run each window through the cache in chunks of this many tokens (0: the whole window
     * at once), with logits of chunk × vocab_size floats, calling chunk_end after each chunk (c0: its
     * offset in the window). Keeps the logits held at chunk × vocab however long the window. */
    int chunk;
    ea_status (*chunk_end)(void *user, const int *ids, size_t start, int len, int c0, int cl, const float *logits);
    /* Optional progress after each window: tokens done (consecutive windows) or windows done (list). */
    ea_progress_fn progress;
    void *progress_user;
    const char *stage;
} ea_window_run;
/* The one loop over context windows: consecutive windows of ctx tokens of ids[0..n) (the last may
 * be shorter) or r->list, each run from an empty cache with r->hook installed. A status other than
 * EA_OK from the forward pass or a callback ends the run and is returned unchanged, except
 * EA_STOPPED from the hook, which ends only that window's pass. */
EA_API ea_status ea_model_run_windows(ea_model *m, const int *ids, size_t n, int ctx, const ea_window_run *r);

/* When on (default), every block's output is checked for NaN/Inf and the forward pass fails
 * naming the layer. */
EA_API void ea_model_set_check_finite(ea_model *m, int on);

/* KV cache of capacity tokens. codec NULL means float32 (exact). The codec is not owned and
 * must outlive the cache. */
EA_API ea_status ea_kvcache_init(ea_kvcache **out, const ea_config *cfg, int capacity, const ea_kv_codec *codec);
EA_API void ea_kvcache_free(ea_kvcache *c);
EA_API void ea_kvcache_reset(ea_kvcache *c);
EA_API int ea_kvcache_len(const ea_kvcache *c);
EA_API int ea_kvcache_capacity(const ea_kvcache *c);
/* Bytes the cache stores for ntok tokens (all layers, K and V), from the codec's row sizes. */
EA_API size_t ea_kvcache_bytes_for(const ea_kvcache *c, int ntok);
/* Bytes actually allocated for cache storage (capacity tokens). */
EA_API size_t ea_kvcache_allocated_bytes(const ea_kvcache *c);
EA_API const ea_kv_codec *ea_kvcache_codec(const ea_kvcache *c);

/* Run n tokens at positions len(cache)..len+n-1, appending their K/V to the cache.
 * logits: NULL, or n × vocab_size floats when all_logits, else vocab_size floats (last token). */
EA_API ea_status ea_model_forward(ea_model *m, ea_kvcache *cache, const int *tokens, int n, float *logits,
                           int all_logits);

/* Sampling. temperature <= 0 is greedy; top_k <= 0 and top_p >= 1 disable those filters. */
typedef struct {
    float temperature;
    int top_k;
    float top_p;
    uint64_t seed;
    int stop_at_eot;
} ea_sampler_params;
EA_API ea_sampler_params ea_sampler_default(void);
/* Pick a token from logits (modified in place). */
EA_API int ea_sample(float *logits, int vocab, const ea_sampler_params *p, ea_rng *rng);

/* End-of-sequence ids of the model (at most EA_MAX_EOS): "eos_token_id" (an id or a list) of
 * generation_config.json, else of config.json; neither naming one: 50256 for GPT-2, none otherwise.
 * Returns how many; *ids (when ids is not NULL) points at them. */
#define EA_MAX_EOS 8
EA_API int ea_model_eos(const ea_model *m, const int **ids);

/* Generate up to n_new tokens after the prompt (cache is reset first). out holds n_new ids;
 * *n_out receives how many were produced (fewer when stop_at_eot and an end-of-sequence id of
 * ea_model_eos is sampled; it is kept as the last id). */
EA_API ea_status ea_generate(ea_model *m, ea_kvcache *cache, const int *prompt, int n_prompt, int n_new,
                      const ea_sampler_params *p, int *out, int *n_out);

/* A per-prediction KL below zero by less than this is float rounding and is reported as 0; a
 * more negative one is reported as it is (KL >= 0, so it can only be a bug, and it must show). */
#define EA_KL_ROUNDING 1e-6

/* Perplexity protocol: the text is cut into non-overlapping windows of ctx tokens (the last,
 * shorter window is scored too if it has at least 2 tokens); each window is run from an empty
 * cache. EA_PPL_FULL scores every next-token prediction in the window; EA_PPL_LLAMA scores only
 * the second half of each window, as llama.cpp's perplexity tool does. */
typedef enum { EA_PPL_FULL = 0, EA_PPL_LLAMA = 1 } ea_ppl_protocol;
typedef struct {
    size_t tokens_scored;
    double mean_nll;
    double ppl;
} ea_ppl_result;
/* First scored target index within a window of length len (targets are positions 1..len-1). */
EA_API int ea_ppl_first_scored(ea_ppl_protocol proto, int len);
EA_API ea_status ea_perplexity(ea_model *m, ea_kvcache *cache, const int *ids, size_t n, int ctx,
                        ea_ppl_protocol proto, ea_ppl_result *res);
/* log-softmax of one row of logits into out (may alias). Returns logsumexp. */
EA_API double ea_log_softmax(const float *logits, int n, float *out);

#ifdef __cplusplus
}
#endif
#endif
