"""Loading libeigenalign through cffi (ABI mode: no compiler at install time) and turning its
status codes into Python exceptions.

The library is found, in this order: $EIGENALIGN_LIBRARY; next to this package; where
`cmake --install` put it (_paths.py); a build/ directory of the source tree this package sits in
(in-place use with PYTHONPATH=python); the system's library path.

Before the library (and with it OpenBLAS and libgomp) is loaded, the environment gets what the
`eigenalign` tool sets by re-executing itself (see ea_process_tune_env): both runtimes read
those variables only when they load, so this must happen first, and a re-exec is out of the
question inside an interpreter. The library decides them itself, in a short child process.
"""
import ctypes.util
import os
import re
import subprocess
import sys
import warnings

import cffi

ffi = cffi.FFI()
# Every exported declaration of include/ea/*.h, copied in the headers' order with EA_API, comments
# and preprocessor lines removed (only integer #defines kept; array lengths written as numbers).
# Left out: ea_error (variadic, for C callers). tests/test_api.py compares every struct and signature with the
# headers and checks that every exported function is declared here.
ffi.cdef(r"""
/* ea/core.h */
typedef enum {
    EA_OK = 0,
    EA_ERR_IO = -1,
    EA_ERR_FORMAT = -2,
    EA_ERR_NOMEM = -3,
    EA_ERR_ARG = -4,
    EA_ERR_UNSUPPORTED = -5,
    EA_ERR_NUMERIC = -6,
    EA_ERR_MISMATCH = -7,
    EA_STOPPED = 1
} ea_status;
const char *ea_last_error(void);
const char *ea_status_name(ea_status s);
typedef void (*ea_progress_fn)(void *user, const char *stage, size_t done, size_t total);
size_t ea_escape_text(char *dst, size_t cap, const char *src);
typedef struct { uint64_t s[4]; } ea_rng;
void ea_rng_seed(ea_rng *r, uint64_t seed);
uint64_t ea_rng_u64(ea_rng *r);
double ea_rng_uniform(ea_rng *r);
double ea_rng_normal(ea_rng *r);
uint64_t ea_rng_below(ea_rng *r, uint64_t n);
float ea_f16_to_f32(uint16_t h);
uint16_t ea_f32_to_f16(float f);
float ea_bf16_to_f32(uint16_t h);
void ea_f16_to_f32_array(const uint16_t *src, float *dst, size_t n);
typedef enum { EA_ISA_GENERIC = 0, EA_ISA_AVX2 = 1, EA_ISA_AVX512 = 2 } ea_isa;
ea_status ea_isa_tier(ea_isa *tier);
const char *ea_isa_name(ea_isa tier);
int ea_mul_size(size_t a, size_t b, size_t *out);
int ea_add_size(size_t a, size_t b, size_t *out);
typedef struct {
    void *fp;
    char *path;
    char *tmp;
    int reg;
    int mode;
} ea_outfile;
ea_status ea_outfile_open(ea_outfile *o, const char *path);
ea_status ea_outfile_commit(ea_outfile *o);
void ea_outfile_abort(ea_outfile *o);
void ea_outfile_install_signal_cleanup(void);
void ea_outfile_remove_temporaries(void);
ea_status ea_write_file_atomic(const char *path, const void *data, size_t n);
char *ea_tempdir_create(char *tmpl);
void ea_tempdir_remove(const char *dir);
ea_status ea_open_input(const char *path, int *fd);
ea_status ea_read_file(const char *path, size_t max_bytes, char **data, size_t *n);
void ea_process_tune(char **argv);
int ea_process_tune_env(void);
double ea_time_now(void);
/* ea/io.h */
typedef enum { EA_DTYPE_F32, EA_DTYPE_F16, EA_DTYPE_BF16, EA_DTYPE_I32, EA_DTYPE_I64, EA_DTYPE_F64 } ea_dtype;
const char *ea_dtype_name(ea_dtype t);
size_t ea_dtype_size(ea_dtype t);
#define EA_MAX_DIMS 8
typedef struct {
    char *name;
    ea_dtype dtype;
    int ndim;
    int64_t shape[8];
    size_t numel;
    size_t nbytes;
    const void *data;
} ea_st_tensor;
typedef struct ea_st_file ea_st_file;
ea_status ea_st_open(const char *path, ea_st_file **out);
void ea_st_close(ea_st_file *f);
int ea_st_count(const ea_st_file *f);
const ea_st_tensor *ea_st_get(const ea_st_file *f, int i);
const ea_st_tensor *ea_st_find(const ea_st_file *f, const char *name);
const char *ea_st_path(const ea_st_file *f);
const char *ea_st_metadata(const ea_st_file *f, const char *key);
ea_status ea_st_to_f32(const ea_st_file *f, const ea_st_tensor *t, float *dst);
typedef struct ea_st_writer ea_st_writer;
ea_status ea_st_writer_init(ea_st_writer **out);
void ea_st_writer_free(ea_st_writer *w);
ea_status ea_st_writer_add(ea_st_writer *w, const char *name, ea_dtype dtype, int ndim,
                           const int64_t *shape, const void *data);
ea_status ea_st_writer_meta(ea_st_writer *w, const char *key, const char *value);
ea_status ea_st_writer_save(ea_st_writer *w, const char *path);
typedef enum { EA_ARCH_GPT2 = 0, EA_ARCH_LLAMA, EA_ARCH_QWEN2, EA_ARCH_QWEN3 } ea_arch;
typedef enum { EA_ROPE_NONE = 0, EA_ROPE_DEFAULT, EA_ROPE_LINEAR, EA_ROPE_LLAMA3 } ea_rope_type;
typedef struct {
    int n_layer, n_head, n_embd, n_positions, vocab_size, n_inner;
    float layer_norm_epsilon;
    ea_arch arch;
    int n_kv_head;
    int head_dim;
    int tie_word_embeddings;
    int qkv_bias, o_bias;
    int qk_norm;
    ea_rope_type rope_type;
    double rope_theta, rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_positions;
} ea_config;
ea_status ea_config_load(const char *path, ea_config *cfg);
ea_status ea_config_parse(const char *json, size_t len, const char *path_for_errors, ea_config *cfg);
int ea_config_kv_heads(const ea_config *cfg);
int ea_config_head_dim(const ea_config *cfg);
int ea_config_kv_dim(const ea_config *cfg);
int ea_config_q_dim(const ea_config *cfg);
const char *ea_arch_name(ea_arch a);
/* ea/tokenizer.h */
#define EA_TOKEN_EOT 50256
typedef struct ea_tokenizer ea_tokenizer;
ea_status ea_tokenizer_load(const char *vocab_json, const char *merges_txt, ea_tokenizer **out);
ea_status ea_tokenizer_load_dir(const char *dir, ea_tokenizer **out);
ea_status ea_tokenizer_load_json(const char *tokenizer_json, const char *tokenizer_config_json, ea_tokenizer **out);
int ea_tokenizer_bos(const ea_tokenizer *t, int *id);
ea_status ea_tokenizer_check_vocab(const ea_tokenizer *t, int n_embd_rows, const char *model_what);
int ea_tokenizer_is_json(const ea_tokenizer *t);
void ea_tokenizer_free(ea_tokenizer *t);
int ea_tokenizer_vocab_size(const ea_tokenizer *t);
ea_status ea_tokenizer_encode(const ea_tokenizer *t, const char *text, size_t len, int parse_special,
                              int **ids, size_t *n);
ea_status ea_tokenizer_encode_max(const ea_tokenizer *t, const char *text, size_t len, int parse_special,
                                  size_t max_tokens, int **ids, size_t *n);
ea_status ea_tokenizer_decode(const ea_tokenizer *t, const int *ids, size_t n, char **text, size_t *len);
const char *ea_tokenizer_token_bytes(const ea_tokenizer *t, int id, size_t *len);
/* ea/model.h */
typedef struct ea_model ea_model;
typedef struct ea_kvcache ea_kvcache;
typedef struct ea_kv_codec ea_kv_codec;
ea_status ea_model_load(const char *dir, ea_model **out);
void ea_model_free(ea_model *m);
const ea_config *ea_model_config(const ea_model *m);
const char *ea_model_dir(const ea_model *m);
int ea_model_eos(const ea_model *m, const int **ids);
const char *ea_model_fingerprint(const ea_model *m);
const float *ea_model_wte(const ea_model *m);
typedef enum { EA_SITE_HIDDEN = 0, EA_SITE_Q = 1, EA_SITE_K = 2, EA_SITE_V = 3, EA_SITE_Q_PRE = 4, EA_SITE_K_PRE = 5 } ea_site;
const char *ea_site_name(ea_site s);
ea_status ea_site_parse(const char *name, ea_site *out);
typedef ea_status (*ea_capture_fn)(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld);
void ea_model_set_capture(ea_model *m, ea_capture_fn fn, void *user);
void ea_model_set_capture_prerot(ea_model *m, int on);
typedef struct {
    size_t start;
    int len;
} ea_window;
typedef struct {
    ea_kvcache *cache;
    float *logits;
    ea_capture_fn hook;
    void *hook_user;
    ea_status (*begin)(void *user, ea_kvcache *cache, const int *ids, size_t start, int len);
    ea_status (*end)(void *user, ea_kvcache *cache, const int *ids, size_t start, int len, const float *logits);
    void *user;
    int min_len;
    const ea_window *list;
    int n_list;
    int chunk;
    ea_status (*chunk_end)(void *user, const int *ids, size_t start, int len, int c0, int cl, const float *logits);
    ea_progress_fn progress;
    void *progress_user;
    const char *stage;
} ea_window_run;
ea_status ea_model_run_windows(ea_model *m, const int *ids, size_t n, int ctx, const ea_window_run *r);
void ea_model_set_check_finite(ea_model *m, int on);
ea_status ea_kvcache_init(ea_kvcache **out, const ea_config *cfg, int capacity, const ea_kv_codec *codec);
void ea_kvcache_free(ea_kvcache *c);
void ea_kvcache_reset(ea_kvcache *c);
int ea_kvcache_len(const ea_kvcache *c);
int ea_kvcache_capacity(const ea_kvcache *c);
size_t ea_kvcache_bytes_for(const ea_kvcache *c, int ntok);
size_t ea_kvcache_allocated_bytes(const ea_kvcache *c);
const ea_kv_codec *ea_kvcache_codec(const ea_kvcache *c);
ea_status ea_model_forward(ea_model *m, ea_kvcache *cache, const int *tokens, int n, float *logits,
                           int all_logits);
typedef struct {
    float temperature;
    int top_k;
    float top_p;
    uint64_t seed;
    int stop_at_eot;
} ea_sampler_params;
ea_sampler_params ea_sampler_default(void);
int ea_sample(float *logits, int vocab, const ea_sampler_params *p, ea_rng *rng);
ea_status ea_generate(ea_model *m, ea_kvcache *cache, const int *prompt, int n_prompt, int n_new,
                      const ea_sampler_params *p, int *out, int *n_out);
typedef enum { EA_PPL_FULL = 0, EA_PPL_LLAMA = 1 } ea_ppl_protocol;
typedef struct {
    size_t tokens_scored;
    double mean_nll;
    double ppl;
} ea_ppl_result;
int ea_ppl_first_scored(ea_ppl_protocol proto, int len);
ea_status ea_perplexity(ea_model *m, ea_kvcache *cache, const int *ids, size_t n, int ctx,
                        ea_ppl_protocol proto, ea_ppl_result *res);
double ea_log_softmax(const float *logits, int n, float *out);
/* ea/kvcodec.h */
typedef enum { EA_KV_K = 0, EA_KV_V = 1 } ea_kv_kind;
typedef struct ea_kv_codec ea_kv_codec;
const char *ea_kv_codec_name(const ea_kv_codec *c);
int ea_kv_codec_n_layer(const ea_kv_codec *c);
int ea_kv_codec_n_head(const ea_kv_codec *c);
int ea_kv_codec_dim(const ea_kv_codec *c);
typedef struct {
    int n_layer, d;
    double n;
    double *mean[2];
    double *cov[2];
} ea_kv_stats;
ea_status ea_kv_stats_alloc(ea_kv_stats *s, int n_layer, int d);
void ea_kv_stats_free(ea_kv_stats *s);
struct ea_kv_hist;
typedef struct {
    int n_layer, d;
    double *m[2];
    double *part_weight;
    const struct ea_kv_hist *hist;
} ea_kv_metric;
void ea_kv_metric_free(ea_kv_metric *mt);
ea_status ea_kv_codec_check_spec(const char *spec);
ea_status ea_kv_codec_check_spec_for(const char *spec, const ea_config *cfg);
ea_status ea_kv_codec_create(const char *spec, const ea_config *cfg, const ea_kv_stats *stats,
                             ea_kv_codec **out);
void ea_kv_codec_free(ea_kv_codec *c);
ea_status ea_kv_codec_save(const ea_kv_codec *c, const char *path);
ea_status ea_kv_codec_load(const char *path, const ea_config *cfg, ea_kv_codec **out);
ea_status ea_kv_codec_load_embedded(const char *path, const char *spec, const ea_config *cfg, ea_kv_codec **out);
double ea_kv_codec_bits_per_value(const ea_kv_codec *c);
size_t ea_kv_codec_bytes(const ea_kv_codec *c, int ntok);
size_t ea_kv_codec_seq_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind);
size_t ea_kv_codec_rows_stored(const ea_kv_codec *c, size_t ntok);
size_t ea_kv_codec_buffer_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind, size_t ntok);
size_t ea_kv_codec_overhead(const ea_kv_codec *c);
size_t ea_kv_codec_resident(const ea_kv_codec *c);
/* ea/spectral.h */
typedef struct ea_cov ea_cov;
ea_status ea_cov_init(ea_cov **out, int d);
void ea_cov_free(ea_cov *c);
void ea_cov_reset(ea_cov *c);
int ea_cov_dim(const ea_cov *c);
double ea_cov_count(const ea_cov *c);
ea_status ea_cov_add(ea_cov *c, const float *x, int n, int ld);
ea_status ea_cov_add_f64(ea_cov *c, const double *x, int n, int ld);
ea_status ea_cov_merge(ea_cov *dst, const ea_cov *src);
const double *ea_cov_mean(const ea_cov *c);
ea_status ea_cov_matrix(const ea_cov *c, int standardize, double *out);
ea_status ea_cov_save(const ea_cov *c, const char *path);
ea_status ea_cov_load(const char *path, ea_cov **out);
ea_status ea_eigh(const double *a, int d, double *values, double *vectors);
double ea_spectrum_df(const double *ev, int d);
double ea_spectrum_cumvar(const double *ev, int d, int k);
int ea_spectrum_k_for(const double *ev, int d, double target);
typedef struct {
    int d;
    double n;
    double df;
    double trace;
    int k90, k95, k99;
    double *eigenvalues;
    int top_dims[8];
    double top_share[8];
    int n_top;
} ea_spectrum_summary;
ea_status ea_spectrum_summarize(const ea_cov *c, int standardize, ea_spectrum_summary *out);
void ea_spectrum_summary_free(ea_spectrum_summary *s);
ea_status ea_spectrum_null(int n, int d, uint64_t seed, double *df, int *k95);
double ea_spectrum_null_df(int n, int d);
ea_status ea_spectrum_null_spectrum(int n, int d, double *ev);
/* ea/calib.h */
ea_status ea_kv_stats_fit(ea_model *m, const int *ids, size_t n, int ctx, int skip, ea_kv_stats *out,
                          ea_kv_metric *metric);
typedef struct ea_kv_sens_cache ea_kv_sens_cache;
ea_status ea_kv_sens_cache_new(ea_kv_sens_cache **out);
void ea_kv_sens_cache_free(ea_kv_sens_cache *sc);
ea_status ea_kv_codec_fit(ea_model *m, const char *spec, const ea_kv_stats *stats, const ea_kv_metric *metric,
                          const int *calib, size_t n_calib, int ctx, size_t sens_tokens, ea_kv_sens_cache *cache,
                          ea_kv_codec **out, ea_progress_fn progress, void *progress_user);
ea_status ea_kv_codec_fit_model(ea_model *m, const char *spec, const int *calib, size_t n_calib, int ctx,
                                ea_progress_fn progress, void *progress_user, ea_kv_codec **out);
typedef struct {
    double nll, kl;
    size_t top1, scored;
} ea_kv_score;
typedef struct {
    ea_kv_score score;
    double prefill_s;
    size_t prefill_tok;
    size_t cache_bytes;
} ea_kv_codec_eval;
ea_status ea_kv_codecs_eval(ea_model *m, const int *ids, size_t n, int ctx, ea_ppl_protocol proto,
                            const ea_kv_codec *const *codecs, int n_codecs, ea_kv_codec_eval *out, ea_progress_fn progress,
                            void *progress_user);
ea_status ea_kv_decode_rate(ea_model *m, const ea_kv_codec *codec, const int *ids, size_t n, int ctx, int n_decode,
                            double *tok_s);
#define EA_SITE_KIND_WTE 6
#define EA_SITE_KINDS 7
const char *ea_site_kind_name(int kind);
typedef enum { EA_VARIANT_ALL = 0, EA_VARIANT_EXCLUDE_FIRST = 1, EA_VARIANT_STANDARDIZED = 2 } ea_variant;
#define EA_VARIANTS 3
const char *ea_variant_name(ea_variant v);
typedef struct {
    int kind;
    int layer;
    int head;
    int d;
    ea_cov *first, *rest;
    double *pool_sum;
    int pool_rows;
} ea_site_acc;
typedef struct {
    ea_site_acc *acc;
    int n_acc;
    int *index;
    int n_layer, n_head, n_embd;
    int n_kv_head, head_dim;
    int per_head;
    double accumulate_s;
    ea_status err;
    char errmsg[512];
    int uncentered;
    int pool;
} ea_site_stats;
ea_status ea_site_stats_init(ea_site_stats **out, const ea_config *cfg, unsigned kinds_mask, int per_head);
typedef enum { EA_POOL_NONE = 0, EA_POOL_MEAN = 1, EA_POOL_LAST = 2 } ea_pool;
ea_status ea_site_stats_set_protocol(ea_site_stats *s, int uncentered, ea_pool pool);
ea_status ea_site_stats_end_sample(ea_site_stats *s);
void ea_site_stats_free(ea_site_stats *s);
ea_status ea_site_stats_capture(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld);
ea_status ea_site_stats_add_wte(ea_site_stats *s, const float *wte, int vocab, int d);
ea_status ea_windows_consecutive(size_t n, int ctx, ea_window **out, int *n_out);
ea_status ea_windows_sample(size_t n, int count, int len, uint64_t seed, ea_window **out, int *n_out);
ea_status ea_site_stats_run(ea_site_stats *s, ea_model *m, ea_kvcache *cache, const int *ids, const ea_window *w,
                            int n_windows, ea_progress_fn progress, void *progress_user, double *forward_s);
typedef struct {
    int kind, layer, head;
    ea_variant variant;
    ea_spectrum_summary sum;
    double null_df;
    int null_k95;
} ea_site_result;
ea_status ea_site_stats_summarize(const ea_site_stats *s, unsigned variant_mask, ea_site_result **out, int *n_out);
void ea_site_results_free(ea_site_result *r, int n);
/* ea/compress.h */
#define EA_COMPRESSOR_FORMAT_VERSION 1
#define EA_COMPRESS_DEFAULT_CTX 512
int ea_compress_default_ctx(const ea_config *cfg);
typedef struct {
    ea_site site;
    int layer;
    int head;
} ea_site_ref;
typedef struct ea_projector ea_projector;
typedef struct {
    double variance;
    int rank;
} ea_rank_rule;
ea_status ea_projector_from_matrix(const double *cov, const double *mean, int d, ea_rank_rule rule,
                                   ea_site_ref ref, ea_projector **out);
ea_status ea_projector_from_cov(const ea_cov *cov, ea_rank_rule rule, ea_site_ref ref, ea_projector **out);
ea_status ea_projector_from_parts(const char *what, ea_site_ref ref, int d, int k, const float *mean,
                                  const float *basis, const float *eigenvalues, double tol,
                                  ea_projector **out);
void ea_projector_free(ea_projector *p);
ea_site_ref ea_projector_site(const ea_projector *p);
int ea_projector_dim(const ea_projector *p);
int ea_projector_rank(const ea_projector *p);
const float *ea_projector_mean(const ea_projector *p);
const float *ea_projector_basis(const ea_projector *p);
const float *ea_projector_eigenvalues(const ea_projector *p);
double ea_projector_variance_kept(const ea_projector *p);
double ea_projector_orthonormality_error(const ea_projector *p);
ea_status ea_projector_compress(const ea_projector *p, const float *x, int n, int ldx, float *z);
ea_status ea_projector_reconstruct(const ea_projector *p, const float *z, int n, float *x, int ldx);
ea_status ea_projector_roundtrip(const ea_projector *p, const float *x, int n, int ldx, float *xhat, int ldh,
                                 float *scratch);
typedef struct {
    double err2, norm2, cos_sum;
    size_t rows;
} ea_recon_stats;
void ea_recon_stats_add(ea_recon_stats *s, const float *x, int ldx, const float *xhat, int ldh, int n, int d);
void ea_recon_stats_merge(ea_recon_stats *dst, const ea_recon_stats *src);
double ea_recon_stats_rel_error(const ea_recon_stats *s);
double ea_recon_stats_cosine(const ea_recon_stats *s);
typedef struct ea_compressor ea_compressor;
typedef struct {
    const char *fingerprint;
    int n_layer, n_embd, n_head;
    size_t calib_tokens;
    size_t calib_rows;
    int ctx;
    ea_rank_rule rule;
    int exclude_first;
    const char *library_version;
    int format_version;
} ea_compressor_info;
typedef struct {
    ea_rank_rule rule;
    unsigned sites;
    int per_head;
    int ctx;
    int exclude_first;
    ea_progress_fn progress;
    void *progress_user;
} ea_fit_params;
ea_fit_params ea_fit_params_default(void);
ea_status ea_compressor_fit(ea_model *m, const int *ids, size_t n, const ea_fit_params *p, ea_compressor **out);
ea_status ea_compressor_create(const ea_compressor_info *info, ea_projector **proj, int n_proj,
                               ea_compressor **out);
void ea_compressor_free(ea_compressor *c);
const ea_compressor_info *ea_compressor_get_info(const ea_compressor *c);
int ea_compressor_count(const ea_compressor *c);
const ea_projector *ea_compressor_get(const ea_compressor *c, int i);
const ea_projector *ea_compressor_find(const ea_compressor *c, ea_site site, int layer, int head);
ea_status ea_compressor_save(const ea_compressor *c, const char *path);
ea_status ea_compressor_save_with_kv(const ea_compressor *c, const ea_kv_codec *const *kv, int n_kv, const char *path);
ea_status ea_compressor_load(const char *path, ea_compressor **out);
ea_status ea_compressor_check(const ea_compressor *c, const char *what, const ea_config *cfg,
                              const char *fingerprint);
ea_status ea_compressor_check_model(const ea_compressor *c, const char *what, const ea_model *m);
ea_status ea_compressor_kv_stats(const ea_compressor *c, ea_kv_stats *out);
typedef struct {
    int ctx;
    int inject;
    ea_progress_fn progress;
    void *progress_user;
} ea_eval_params;
typedef struct {
    int n_sites;
    ea_recon_stats *site;
    size_t windows;
    size_t tokens;
    size_t scored;
    double nll_full, nll_compressed;
    double kl_sum;
    size_t top1_agree;
} ea_eval_result;
ea_status ea_eval_result_init(ea_eval_result *r, const ea_compressor *c);
void ea_eval_result_free(ea_eval_result *r);
double ea_eval_ppl_full(const ea_eval_result *r);
double ea_eval_ppl_compressed(const ea_eval_result *r);
double ea_eval_kl(const ea_eval_result *r);
double ea_eval_top1(const ea_eval_result *r);
ea_status ea_compressor_evaluate(ea_model *m, const ea_compressor *c, const int *ids, size_t n,
                                 const ea_eval_params *p, ea_eval_result *r);
/* ea/esap.h */
#define EA_ESAP_MAX_DIM 8192
#define EA_ESAP_MAX_NAME 128
typedef struct {
    char fingerprint[129];
    char site[129];
    int d;
    int K;
    double df;
    double *eigenvalues;
    double *ck;
} ea_esap_spectrum;
ea_status ea_esap_spectrum_init(ea_esap_spectrum *s, const double *eigenvalues, int d, int K,
                                const char *fingerprint, const char *site);
void ea_esap_spectrum_free(ea_esap_spectrum *s);
ea_status ea_esap_spectrum_to_json(const ea_esap_spectrum *s, char **json, size_t *len);
ea_status ea_esap_spectrum_parse(const char *json, size_t len, const char *name, ea_esap_spectrum *out);
ea_status ea_esap_spectrum_save(const ea_esap_spectrum *s, const char *path);
ea_status ea_esap_spectrum_load(const char *path, ea_esap_spectrum *out);
double ea_esap_pearson(const double *x, const double *y, int n);
void ea_esap_cumulative(const double *ev, int d, int K, double *ck);
ea_status ea_esap_isotropic_spectrum(int d, int n, uint64_t seed, double *ev);
void ea_esap_powerlaw_spectrum(int d, double alpha, double *ev);
typedef struct {
    int d_a, d_b, K;
    double df_a, df_b;
    double ck_pearson;
    double threshold;
    int converged;
    double a_vs_isotropic, b_vs_isotropic, a_vs_powerlaw, b_vs_powerlaw;
} ea_esap_handshake;
#define EA_ESAP_ISOTROPIC_FACTOR 10
ea_status ea_esap_compare(const ea_esap_spectrum *a, const ea_esap_spectrum *b, int K, uint64_t seed,
                          ea_esap_handshake *out);
ea_status ea_procrustes(const double *a, const double *b, int n, int da, int db, double *w);
typedef struct ea_esap_basis ea_esap_basis;
ea_status ea_esap_basis_fit(const float *x, int n, int d, ea_esap_basis **out);
void ea_esap_basis_free(ea_esap_basis *b);
int ea_esap_basis_dim(const ea_esap_basis *b);
const double *ea_esap_basis_mean(const ea_esap_basis *b);
const double *ea_esap_basis_eigenvalues(const ea_esap_basis *b);
ea_status ea_esap_basis_project(const ea_esap_basis *b, const float *x, int n, int k, float *out);
ea_status ea_esap_basis_lift(const ea_esap_basis *b, const float *z, int n, int k, float *out);
ea_status ea_esap_split(int n, int n_train, int n_test, uint64_t seed, int *perm);
typedef struct {
    int n;
    double p_at_1, p_at_10;
    double csls_p_at_1, csls_p_at_10;
    double mean_cos;
} ea_esap_retrieval;
#define EA_ESAP_CSLS_K 10
ea_status ea_esap_retrieve(const float *x, const float *y, int n, int k, int csls_k, ea_esap_retrieval *out);
typedef struct {
    int rank, train_anchors, test_anchors;
    ea_esap_retrieval test;
    double train_cosine;
    ea_esap_retrieval null;
    double null_train_cosine;
    double chance_p_at_1;
} ea_esap_align_report;
#define EA_ESAP_NULL_SHUFFLES 5
ea_status ea_esap_align_eval(const float *za, const float *zb, int n, int k, int n_train, int n_test,
                             uint64_t seed, double *w, ea_esap_align_report *out);
ea_status ea_esap_knn(const float *x, int n, int d, int k, int *nbr);
typedef struct {
    int n, k, n_perm;
    double value;
    double null_mean, null_sd;
    double p_value;
    double chance;
} ea_esap_mknn;
#define EA_ESAP_MKNN_K 10
#define EA_ESAP_MKNN_PERMS 999
#define EA_ESAP_MKNN_MAX_ITEMS 4096
ea_status ea_esap_mutual_knn(const float *a, int da, const float *b, int db, int n, int k, int n_perm, uint64_t seed,
                             ea_esap_mknn *out);
typedef struct {
    int init_pairs;
    int iterations;
    int final_pairs;
} ea_esap_unanchored_info;
ea_status ea_esap_unanchored_fit(const float *xa, int na, const float *xb, int nb, int k, double *w,
                                 ea_esap_unanchored_info *info);
ea_status ea_esap_unanchored_eval(const float *za, const float *zb, int n, int k, int n_train, int n_test,
                                  uint64_t seed, double *w, ea_esap_align_report *out,
                                  ea_esap_unanchored_info *info);
typedef struct {
    int rank, train_anchors, test_anchors;
    size_t bytes_f32, bytes_f16;
    size_t bytes_full;
    double acc_f32, acc_f16;
    double acc_reduced_f32;
    double top10_f32;
    double null_acc_f32;
    double chance;
} ea_esap_message_report;
ea_status ea_esap_message_eval(const ea_esap_basis *basis_a, const float *a, const ea_esap_basis *basis_b,
                               const float *b, int n, int k, int n_train, int n_test, uint64_t seed,
                               ea_esap_message_report *out);
ea_status ea_esap_message_eval_unanchored(const ea_esap_basis *basis_a, const float *a, const ea_esap_basis *basis_b,
                                          const float *b, int n, int k, int n_train, int n_test, uint64_t seed,
                                          ea_esap_message_report *out);
typedef enum { EA_ESAP_REPR_WTE = 0, EA_ESAP_REPR_HIDDEN = 1 } ea_esap_repr_kind;
typedef struct {
    ea_esap_repr_kind kind;
    int layer_a, layer_b;
} ea_esap_repr;
ea_status ea_esap_repr_parse(const char *s, ea_esap_repr *out);
ea_status ea_esap_repr_layer(const ea_esap_repr *r, int side_b, const ea_model *m, int *layer);
void ea_esap_repr_name(const ea_esap_repr *r, int side_b, const ea_model *m, char *buf, size_t size);
typedef struct ea_esap_hidden ea_esap_hidden;
ea_status ea_esap_hidden_collect(ea_model *m, int layer, const int *ids, size_t n, int ctx, ea_progress_fn progress,
                                 void *progress_user, const char *label, ea_esap_hidden **out);
void ea_esap_hidden_free(ea_esap_hidden *h);
int ea_esap_hidden_dim(const ea_esap_hidden *h);
size_t ea_esap_hidden_positions(const ea_esap_hidden *h);
ea_status ea_esap_hidden_covariance(const ea_esap_hidden *h, double *cov);
int ea_esap_hidden_token_count(const ea_esap_hidden *h, int id);
ea_status ea_esap_hidden_token_mean(const ea_esap_hidden *h, int id, float *out);
typedef struct {
    int n, d_a, d_b;
    int *id_a, *id_b;
    float *a, *b;
    char **span;
} ea_esap_anchors;
ea_status ea_esap_anchors_build(const ea_model *ma, const ea_model *mb, const ea_tokenizer *ta,
                                const ea_tokenizer *tb, const ea_esap_repr *r, const ea_esap_hidden *ha,
                                const ea_esap_hidden *hb, ea_esap_anchors *out);
void ea_esap_anchors_free(ea_esap_anchors *a);
#define EA_ESAP_DEFAULT_CTX 256
typedef struct {
    ea_esap_repr repr;
    const char *text_path;
    size_t max_tokens;
    int ctx;
    ea_progress_fn progress;
    void *progress_user;
} ea_esap_source;
ea_status ea_esap_anchors_from_models(ea_model *ma, const ea_tokenizer *ta, ea_model *mb, const ea_tokenizer *tb,
                                      const ea_esap_source *src, ea_esap_anchors *out);
ea_status ea_esap_text_anchors(ea_model *ma, const ea_tokenizer *ta, ea_model *mb, const ea_tokenizer *tb,
                               const ea_esap_source *src, ea_esap_anchors *out);
ea_status ea_esap_spectrum_from_model(ea_model *m, const ea_tokenizer *t, int side_b, const ea_esap_source *src, int K,
                                      ea_esap_spectrum *out);
/* ea/report.h */
typedef struct ea_svg ea_svg;
enum { EA_SVG_LOG_X = 1, EA_SVG_LOG_Y = 2, EA_SVG_BLANK = 4, EA_SVG_INT_X = 8 };
typedef enum { EA_SVG_SOLID = 0, EA_SVG_DASHED = 1, EA_SVG_DOTTED = 2 } ea_svg_dash;
ea_status ea_svg_init(ea_svg **out, const char *title, int cols, double panel_w, double panel_h);
void ea_svg_free(ea_svg *s);
ea_status ea_svg_panel(ea_svg *s, const char *title, const char *xlabel, const char *ylabel, unsigned flags,
                       int *panel);
ea_status ea_svg_panel_range(ea_svg *s, int panel, double xmin, double xmax, double ymin, double ymax);
ea_status ea_svg_series(ea_svg *s, int panel, const char *label, const double *x, const double *y, int n,
                        const char *color, ea_svg_dash dash, int markers);
const char *ea_svg_ramp(int i, int n, char buf[8]);
ea_status ea_svg_render(const ea_svg *s, char **out, size_t *len);
ea_status ea_svg_save(const ea_svg *s, const char *path);
ea_status ea_spectra_figure_save(const char *path, const char *title, const ea_site_result *r, int n, int n_layer);
typedef struct {
    double n_params, n_matrix, n_vector;
    double n_decode;
    double w_f32, w_f16, w_q8_0, w_q4_0;
    double engine_f16_ckpt, engine_f32_ckpt;
    int kv_heads, kv_dim;
    double kv_f32;
    double kv_bytes, kv_bits_per_value;
    double kv_overhead;
    double scores_note;
    double scores_engine;
    double activations;
    double logits_last, logits_all;
} ea_budget;
ea_status ea_budget_compute(const ea_config *cfg, int seq, const char *kv_spec, int threads, ea_budget *out);
ea_status ea_budget_shape(const char *name, ea_config *cfg);
const char *ea_budget_shape_list(void);
/* libc */
void free(void *p);
""")

_here = os.path.dirname(os.path.abspath(__file__))
_SONAME = "libeigenalign.so.0"


def _candidates():
    env = os.environ.get("EIGENALIGN_LIBRARY")
    if env:
        return [env]  # explicit: nothing else is tried
    out = [os.path.join(_here, n) for n in (_SONAME, "libeigenalign.so")]
    try:
        from . import _paths  # written by cmake --install
        out.append(_paths.LIBRARY)
    except ImportError:
        pass
    src = os.path.dirname(os.path.dirname(_here))  # python/eigenalign -> the source tree
    out.append(os.path.join(src, "build", _SONAME))
    out.append(_SONAME)  # the system's library path (ldconfig, LD_LIBRARY_PATH)
    found = ctypes.util.find_library("eigenalign")
    if found:
        out.append(found)
    return out


def _find_library():
    tried = []
    for c in _candidates():
        if os.sep in c and not os.path.exists(c):
            tried.append(c)
            continue
        return c, tried
    raise ImportError("eigenalign: libeigenalign.so not found (tried %s); build it (cmake --build build) "
                      "or set EIGENALIGN_LIBRARY" % ", ".join(tried + [_SONAME]))


def _loaded(name):
    try:
        with open("/proc/self/maps") as f:
            return name in f.read()
    except OSError:
        return False


_TUNE_VARS = ("OPENBLAS_CORETYPE", "GOMP_SPINCOUNT")
_PROBE = ("import ctypes, sys\n"
          "lib = ctypes.CDLL(sys.argv[1])\n"
          "lib.ea_process_tune_env()\n"
          "libc = ctypes.CDLL(None); libc.getenv.restype = ctypes.c_char_p\n"
          "for v in sys.argv[2:]:\n"
          "    x = libc.getenv(v.encode())\n"
          "    print(v + '=' + (x.decode() if x is not None else ''))\n")


def _tune(path):
    """Set what ea_process_tune_env would set, before this process loads OpenBLAS and libgomp.
    Returns {"applied": {...}, "skipped": reason or None}."""
    if os.environ.get("EA_NO_REEXEC"):
        return {"applied": {}, "skipped": "EA_NO_REEXEC is set"}
    if _loaded("libopenblas") or _loaded("libblas.so") or _loaded("libgomp.so"):
        return {"applied": {}, "skipped": "OpenBLAS or libgomp was already loaded in this process "
                                          "(import eigenalign first to get the tuning)"}
    unset = [v for v in _TUNE_VARS if v not in os.environ]
    if not unset or (unset == ["GOMP_SPINCOUNT"] and "OMP_WAIT_POLICY" in os.environ):
        return {"applied": {}, "skipped": None}
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE, path] + list(_TUNE_VARS), capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return {"applied": {}, "skipped": "probe failed: %s" % e}
    if r.returncode != 0:
        return {"applied": {}, "skipped": "probe failed: %s" % r.stderr.strip()[-300:]}
    applied = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition("=")
        if k in unset and v:
            os.environ[k] = v
            applied[k] = v
    return {"applied": applied, "skipped": None}


def _blas_loaded():
    """BLAS libraries already in this process (numpy's): Debian's OpenBLAS variants share the
    libblas.so.3 / liblapack.so.3 sonames, so the library's BLAS calls would bind to the one
    loaded first (e.g. the pthread build numpy uses instead of the library's OpenMP one), and
    results would differ from the eigenalign tool's in the last bits."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return []
    return sorted(set(re.findall(r"/\S*/lib(?:open)?blas[^/\s]*\.so[^/\s]*", maps)))


LIBRARY_PATH, _tried = _find_library()
TUNING = _tune(LIBRARY_PATH)
TUNING["blas_loaded_before"] = _blas_loaded()
if TUNING["blas_loaded_before"]:
    warnings.warn("eigenalign: a BLAS was loaded before libeigenalign (%s; numpy imported first?): the library's "
                  "BLAS calls use it, so results can differ from the eigenalign tool's in the last bits. "
                  "Import eigenalign before numpy." % ", ".join(TUNING["blas_loaded_before"]), RuntimeWarning)
try:
    lib = ffi.dlopen(LIBRARY_PATH)
    libc = ffi.dlopen(None)
except OSError as e:
    raise ImportError("eigenalign: cannot load %s: %s" % (LIBRARY_PATH, e)) from e


class Error(Exception):
    """A libeigenalign failure: .status (the ea_status code), .status_name, and the library's
    message (naming the file and the values) as the exception text."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status
        self.status_name = ffi.string(lib.ea_status_name(status)).decode() if status is not None else None


class IOError_(Error, OSError):
    pass


class FormatError(Error, ValueError):
    pass


class NoMemoryError(Error, MemoryError):
    pass


class ArgumentError(Error, ValueError):
    pass


class UnsupportedError(Error, NotImplementedError):
    pass


class NumericError(Error, ArithmeticError):
    pass


class MismatchError(Error, ValueError):
    pass


_CLASSES = {-1: IOError_, -2: FormatError, -3: NoMemoryError, -4: ArgumentError, -5: UnsupportedError,
            -6: NumericError, -7: MismatchError}


def check(st):
    """Raise the exception for a non-zero ea_status, with ea_last_error() as its message."""
    if st != 0:
        msg = ffi.string(lib.ea_last_error()).decode("utf-8", "replace")
        raise _CLASSES.get(st, Error)(msg, st)


def take_string(ptr, n=None):
    """Copy a malloc'd char* the library returned and free it."""
    try:
        return ffi.string(ptr) if n is None else bytes(ffi.buffer(ptr, n))
    finally:
        libc.free(ptr)


class Callbacks:
    """Keeps a Python callable alive as a C callback for one call, and carries an exception it
    raised across the C frames: raise_pending() re-raises it once the call returned."""

    def __init__(self):
        self.error = None

    def progress(self, fn):
        """An ea_progress_fn calling fn(done, total), or NULL when fn is None."""
        if fn is None:
            return ffi.NULL

        def cb(user, stage, done, total):
            if self.error is None:
                try:
                    fn(int(done), int(total))
                except BaseException as e:  # reported after the call; the C side cannot stop here
                    self.error = e
        self._p = ffi.callback("ea_progress_fn", cb)
        return self._p

    def raise_pending(self):
        if self.error is not None:
            e, self.error = self.error, None
            raise e
