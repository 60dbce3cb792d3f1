/* The Llama-family key layout (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM):
 *   model.embed_tokens.weight [V, C]            model.norm.weight [C]     lm_head.weight [V, C] (untied)
 *   model.layers.N.input_layernorm.weight [C]   model.layers.N.post_attention_layernorm.weight [C]
 *   model.layers.N.self_attn.{q,k,v}_proj.weight [heads·head_dim, C] (+ .bias with qkv_bias)
 *   model.layers.N.self_attn.o_proj.weight [C, n_head·head_dim] (+ .bias with o_bias)
 *   model.layers.N.self_attn.{q,k}_norm.weight [head_dim] (Qwen3)
 *   model.layers.N.mlp.{gate,up}_proj.weight [F, C], mlp.down_proj.weight [C, F]
 * Every shape comes from config.json and is checked before anything is allocated; a tensor the
 * config does not account for is refused. q/k/v are stacked into one [QD + 2·KVD, C] matrix and
 * gate/up into one [2F, C] so that each takes one sgemm. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/internal.h"

size_t ea_llama_param_count(const ea_config *c) {
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size;
    size_t QD = (size_t)ea_config_q_dim(c), KVD = (size_t)ea_config_kv_dim(c), HD = (size_t)ea_config_head_dim(c);
    size_t per_layer = 2 * C + (QD + 2 * KVD) * C + C * QD + 2 * F * C + C * F;
    if (c->qkv_bias) per_layer += QD + 2 * KVD;
    if (c->o_bias) per_layer += C;
    if (c->qk_norm) per_layer += 2 * HD;
    return V * C * (c->tie_word_embeddings ? 1 : 2) + C + per_layer * (size_t)c->n_layer;
}

/* name (shape [d0] or [d0, d1]) into dst; with p NULL only checked. */
static ea_status take(const ea_checkpoint *ck, ea_model *m, const char *name, size_t d0, size_t d1, float **dst,
                      float **p) {
    *dst = *p;
    if (*p) *p += d0 * (d1 ? d1 : 1);
    return ea_ckpt_load_tensor(ck, name, (int64_t)d0, (int64_t)d1, *dst, &m->stored_f16);
}

ea_status ea_llama_load_weights(ea_model *m, const ea_checkpoint *ck, float *p) {
    const ea_config *c = &m->cfg;
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size;
    size_t QD = (size_t)ea_config_q_dim(c), KVD = (size_t)ea_config_kv_dim(c), HD = (size_t)ea_config_head_dim(c);
    ea_status st;
    if ((st = take(ck, m, "model.embed_tokens.weight", V, C, &m->wte, &p)) ||
        (st = take(ck, m, "model.norm.weight", C, 0, &m->lnf_w, &p)))
        return st;
    m->wpe = m->lnf_b = NULL;
    if (c->tie_word_embeddings) m->lm_w = m->wte;
    else if ((st = take(ck, m, "lm_head.weight", V, C, &m->lm_w, &p))) return st;
    for (int l = 0; l < c->n_layer; l++) {
        ea_layer_weights *w = &m->layers[l];
        char n[160];
        float *dummy;
#define NAME(s) (snprintf(n, sizeof n, "model.layers.%d.%s", l, s), n)
        if ((st = take(ck, m, NAME("input_layernorm.weight"), C, 0, &w->ln1_w, &p)) ||
            (st = take(ck, m, NAME("post_attention_layernorm.weight"), C, 0, &w->ln2_w, &p)))
            return st;
        /* q, k, v rows stacked: each tensor lands at its row offset of attn_w */
        if ((st = take(ck, m, NAME("self_attn.q_proj.weight"), QD, C, &w->attn_w, &p)) ||
            (st = take(ck, m, NAME("self_attn.k_proj.weight"), KVD, C, &dummy, &p)) ||
            (st = take(ck, m, NAME("self_attn.v_proj.weight"), KVD, C, &dummy, &p)) ||
            (st = take(ck, m, NAME("self_attn.o_proj.weight"), C, QD, &w->proj_w, &p)))
            return st;
        if (c->qkv_bias &&
            ((st = take(ck, m, NAME("self_attn.q_proj.bias"), QD, 0, &w->attn_b, &p)) ||
             (st = take(ck, m, NAME("self_attn.k_proj.bias"), KVD, 0, &dummy, &p)) ||
             (st = take(ck, m, NAME("self_attn.v_proj.bias"), KVD, 0, &dummy, &p))))
            return st;
        if (c->o_bias && (st = take(ck, m, NAME("self_attn.o_proj.bias"), C, 0, &w->proj_b, &p))) return st;
        if (c->qk_norm && ((st = take(ck, m, NAME("self_attn.q_norm.weight"), HD, 0, &w->q_norm, &p)) ||
                           (st = take(ck, m, NAME("self_attn.k_norm.weight"), HD, 0, &w->k_norm, &p))))
            return st;
        if ((st = take(ck, m, NAME("mlp.gate_proj.weight"), F, C, &w->fc_w, &p)) ||
            (st = take(ck, m, NAME("mlp.up_proj.weight"), F, C, &dummy, &p)) ||
            (st = take(ck, m, NAME("mlp.down_proj.weight"), C, F, &w->fcproj_w, &p)))
            return st;
#undef NAME
    }
    return EA_OK;
}

/* Whether name is one of the tensors ea_llama_load_weights reads for this config (or a rotary
 * inv_freq buffer that older checkpoints saved and that is recomputed from the config). */
int ea_llama_tensor_accounted(const ea_model *m, const char *name) {
    const ea_config *c = &m->cfg;
    if (!strcmp(name, "model.embed_tokens.weight") || !strcmp(name, "model.norm.weight")) return 1;
    if (!strcmp(name, "lm_head.weight")) return !c->tie_word_embeddings;
    int l, off = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &off) != 1 || off == 0 || l < 0 || l >= c->n_layer) return 0;
    char canon[64];
    snprintf(canon, sizeof canon, "model.layers.%d.", l);
    if (strncmp(name, canon, strlen(canon))) return 0; /* "model.layers.01." and the like */
    const char *s = name + strlen(canon);
    static const char *always[] = {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                                   "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                   "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                                   "self_attn.rotary_emb.inv_freq"};
    for (size_t i = 0; i < sizeof always / sizeof *always; i++)
        if (!strcmp(s, always[i])) return 1;
    if (c->qkv_bias && (!strcmp(s, "self_attn.q_proj.bias") || !strcmp(s, "self_attn.k_proj.bias") ||
                        !strcmp(s, "self_attn.v_proj.bias")))
        return 1;
    if (c->o_bias && !strcmp(s, "self_attn.o_proj.bias")) return 1;
    if (c->qk_norm && (!strcmp(s, "self_attn.q_norm.weight") || !strcmp(s, "self_attn.k_norm.weight"))) return 1;
    return 0;
}
