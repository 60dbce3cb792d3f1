/* eigen-alignment io: safetensors (read on mmap, write atomically), model config. */
#ifndef EA_IO_H
#define EA_IO_H

#include "ea/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { EA_DTYPE_F32, EA_DTYPE_F16, EA_DTYPE_BF16, EA_DTYPE_I32, EA_DTYPE_I64, EA_DTYPE_F64 } ea_dtype;
EA_API const char *ea_dtype_name(ea_dtype t);
EA_API size_t ea_dtype_size(ea_dtype t);

#define EA_MAX_DIMS 8
/* Safetensors header length cap: the real GPT-2 header is ~15 KB; 100 MB is the format's own limit. */
#define EA_ST_MAX_HEADER (100u * 1024u * 1024u)

typedef struct {
    char *name;
    ea_dtype dtype;
    int ndim;
    int64_t shape[EA_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data; /* points into the mapping */
} ea_st_tensor;

/* One safetensors file, mapped read-only and fully validated at open. */
typedef struct ea_st_file ea_st_file;
EA_API ea_status ea_st_open(const char *path, ea_st_file **out);
EA_API void ea_st_close(ea_st_file *f);
EA_API int ea_st_count(const ea_st_file *f);
EA_API const ea_st_tensor *ea_st_get(const ea_st_file *f, int i);
EA_API const ea_st_tensor *ea_st_find(const ea_st_file *f, const char *name);
EA_API const char *ea_st_path(const ea_st_file *f);
/* __metadata__ value for key, or NULL. */
EA_API const char *ea_st_metadata(const ea_st_file *f, const char *key);
/* Copy a tensor to float32 (F32/F16/BF16; I32 and F64 also convert). dst holds numel floats. */
EA_API ea_status ea_st_to_f32(const ea_st_file *f, const ea_st_tensor *t, float *dst);

/* Writer: collect tensors (copied), then write atomically. */
typedef struct ea_st_writer ea_st_writer;
EA_API ea_status ea_st_writer_init(ea_st_writer **out);
EA_API void ea_st_writer_free(ea_st_writer *w);
EA_API ea_status ea_st_writer_add(ea_st_writer *w, const char *name, ea_dtype dtype, int ndim,
                           const int64_t *shape, const void *data);
EA_API ea_status ea_st_writer_meta(ea_st_writer *w, const char *key, const char *value);
EA_API ea_status ea_st_writer_save(ea_st_writer *w, const char *path);

/* Model families, chosen by config.json "architectures" (else "model_type"). */
typedef enum { EA_ARCH_GPT2 = 0, EA_ARCH_LLAMA, EA_ARCH_QWEN2, EA_ARCH_QWEN3 } ea_arch;
/* Rotary position embedding variants (Hugging Face rope_type); NONE: learned positions (GPT-2). */
typedef enum { EA_ROPE_NONE = 0, EA_ROPE_DEFAULT, EA_ROPE_LINEAR, EA_ROPE_LLAMA3 } ea_rope_type;

/* Hyper-parameters from config.json. The first fields keep GPT-2's names for every family:
 * n_embd = hidden_size, n_head = num_attention_heads, n_positions = max_position_embeddings,
 * n_inner = intermediate_size, layer_norm_epsilon = rms_norm_eps for RMSNorm families. */
typedef struct {
    int n_layer, n_head, n_embd, n_positions, vocab_size, n_inner;
    float layer_norm_epsilon;
    ea_arch arch;
    int n_kv_head;       /* num_key_value_heads (GQA); 0 means n_head (read it via ea_config_kv_heads) */
    int head_dim;        /* 0 means n_embd / n_head (read it via ea_config_head_dim) */
    int tie_word_embeddings;
    int qkv_bias, o_bias; /* Qwen2: q/k/v biases; Llama/Qwen3 attention_bias: q/k/v and o */
    int qk_norm;          /* Qwen3: per-head RMSNorm of q and k before the rotation */
    ea_rope_type rope_type;
    double rope_theta, rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_positions;
} ea_config;
EA_API ea_status ea_config_load(const char *path, ea_config *cfg);
EA_API ea_status ea_config_parse(const char *json, size_t len, const char *path_for_errors, ea_config *cfg);
/* Shape helpers that also accept a hand-filled GPT-2-style config (n_kv_head, head_dim 0). */
EA_API int ea_config_kv_heads(const ea_config *cfg);
EA_API int ea_config_head_dim(const ea_config *cfg);
EA_API int ea_config_kv_dim(const ea_config *cfg); /* kv heads × head_dim: the width of a cached K or V row */
EA_API int ea_config_q_dim(const ea_config *cfg);  /* n_head × head_dim */
EA_API const char *ea_arch_name(ea_arch a);

#ifdef __cplusplus
}
#endif
#endif
