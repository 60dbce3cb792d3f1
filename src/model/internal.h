/* Model internals shared by the files of src/model. */
#ifndef EA_MODEL_INTERNAL_H
#define EA_MODEL_INTERNAL_H

#include "kv/kv_codec.h"
#include "ea/model.h"
#include "model/matmul.h"

/* GPT-2 stores Conv1D matrices [in, out]; Llama-family models store nn.Linear [out, in] (m->linear).
 * Llama family: attn_w holds q_proj, k_proj, v_proj rows stacked, fc_w gate_proj then up_proj;
 * biases and LayerNorm shifts a family lacks are NULL. */
typedef struct {
    float *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b;
    float *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
    float *q_norm, *k_norm; /* Qwen3: per-head RMSNorm weights (head_dim) */
    /* The same matrices transposed to [out, in] in stored precision, for one-token decode. */
    ea_rowmat attn_t, proj_t, fc_t, fcproj_t;
} ea_layer_weights;

/* Run state, sized for the largest batch seen so far (grown on demand). */
typedef struct {
    int cap_t;   /* rows the buffers hold */
    int cap_kv;  /* positions the attention scratch holds */
    float *x, *xn, *qkv, *q, *att, *fc, *tmp;
    float *scores; /* n_threads × cap_kv */
    int n_threads;
    float *rope;   /* RoPE: cap_t × head_dim (cos then sin of each position's angles) */
    float *qg, *og; /* GQA: one query of each group, and its output (cap_t × kv_dim) */
} ea_run_state;

struct ea_model {
    ea_config cfg;
    char *dir;
    char fingerprint[17];
    float *params; /* one allocation; every weight pointer below points into it */
    size_t n_params;
    float *wte, *wpe, *lnf_w, *lnf_b;
    float *lm_w;       /* lm_head [vocab, n_embd]: wte when tied */
    int linear;        /* weights are [out, in] (nn.Linear), not GPT-2's Conv1D [in, out] */
    float *inv_freq;   /* RoPE: head_dim/2 inverse frequencies after scaling (NULL for GPT-2) */
    ea_layer_weights *layers;
    ea_rowmat lm_head; /* wte in stored precision, for decode logits */
    void *decode_buf;  /* one allocation behind every ea_rowmat */
    int stored_f16;    /* every weight tensor was F16 in the checkpoint */
    ea_run_state rs;
    ea_capture_fn capture;
    void *capture_user;
    int check_finite;
    int capture_prerot; /* also emit EA_SITE_Q_PRE / EA_SITE_K_PRE */
    int eos[EA_MAX_EOS], n_eos; /* end-of-sequence ids (eos.c) */
};

/* eos.c: read the end-of-sequence ids of dir into m (after its config); whether tok is one. */
ea_status ea_model_load_eos(ea_model *m, const char *dir);
int ea_model_is_eos(const ea_model *m, int tok);

/* Checkpoint access shared by load.c and the per-family loaders (load_llama.c). */
typedef struct ea_checkpoint ea_checkpoint;
/* Load tensor name (shape [d0] or [d0, d1], F32/F16/BF16) into dst, or with dst NULL only check it. */
ea_status ea_ckpt_load_tensor(const ea_checkpoint *ck, const char *name, int64_t d0, int64_t d1, float *dst,
                              int *all_f16);
/* Refuse any tensor for which accounted(name) is 0, naming it. */
ea_status ea_ckpt_check_unused(const ea_checkpoint *ck, int (*accounted)(const ea_model *, const char *),
                               const ea_model *m);

/* Llama family (load_llama.c): float count of the weights, and pointing/loading them from p
 * (p NULL: check presence, shapes and dtypes only). */
size_t ea_llama_param_count(const ea_config *c);
ea_status ea_llama_load_weights(ea_model *m, const ea_checkpoint *ck, float *p);
int ea_llama_tensor_accounted(const ea_model *m, const char *name);

/* Per-family pieces of the forward pass. */
void ea_rmsnorm(float *out, const float *x, const float *w, int n, int C, int ld, float eps);
/* RoPE inverse frequencies (head_dim/2 floats) for the config's rope type, as transformers computes them. */
ea_status ea_rope_init(const ea_config *c, float **inv_freq);
/* cs (n × head_dim): cos then sin of the angles of positions pos0..pos0+n-1. */
void ea_rope_table(const float *inv_freq, int head_dim, int pos0, int n, float *cs);
/* Rotate n rows (stride ld) of n_heads heads of head_dim values in place (rotate_half convention). */
void ea_rope_apply(float *x, int n, int ld, int n_heads, int head_dim, const float *cs);
/* SwiGLU: out[i][j] = silu(gu[i][j]) · gu[i][F + j] for n rows of 2F. */
void ea_swiglu(float *out, const float *gu, int n, int F);
/* Causal attention of layer l for n queries (n × n_head·head_dim) over the cache, any n_kv_head. */
void ea_model_attend(ea_model *m, ea_kvcache *cache, int l, const float *q, int n, int pos0, float *out);

/* The cache, as the forward pass sees it. */
struct ea_kvcache {
    ea_config cfg;
    int cap, len;
    const ea_kv_codec *codec; /* NULL: float32 rows stored directly */
    size_t *row_bytes;        /* [layer*2 + kind] */
    unsigned char **store;    /* [layer*2 + kind]: the codec's per-sequence bytes, then cap rows */
    unsigned char **rows;     /* [layer*2 + kind]: row 0 inside store */
    size_t *seq_bytes;        /* [layer*2 + kind] */
    float *kdec, *vdec;       /* decoded rows for one layer (cap × d), codec caches only */
};

/* Append n rows (stride ld) of K and V of one layer at positions pos0.. (pos0 == len). */
void ea_kvcache_append(ea_kvcache *c, int layer, int pos0, int n, const float *k, const float *v, int ld);
/* Float rows 0..n-1 of a layer (decoded for codecs without an attend op; NULL for those with one). */
void ea_kvcache_view(ea_kvcache *c, int layer, int n, const float **k, const float **v);

#endif
