/* Model internals shared by the files of src/model. */
#ifndef EA_MODEL_INTERNAL_H
#define EA_MODEL_INTERNAL_H

#include "kv/kv_codec.h"
#include "ea/model.h"
#include "model/matmul.h"

typedef struct {
    float *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b;
    float *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
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
} ea_run_state;

struct ea_model {
    ea_config cfg;
    char *dir;
    char fingerprint[17];
    float *params; /* one allocation; every weight pointer below points into it */
    size_t n_params;
    float *wte, *wpe, *lnf_w, *lnf_b;
    ea_layer_weights *layers;
    ea_rowmat lm_head; /* wte in stored precision, for decode logits */
    void *decode_buf;  /* one allocation behind every ea_rowmat */
    int stored_f16;    /* every weight tensor was F16 in the checkpoint */
    ea_run_state rs;
    ea_capture_fn capture;
    void *capture_user;
    int check_finite;
};

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
