/* config.json of Llama-family checkpoints (LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM):
 * shapes, RMSNorm epsilon, biases, q/k norm and the rotary embedding, from either layout that
 * transformers writes: "rope_theta" + "rope_scaling" (4.x) or one "rope_parameters" object (5.x).
 * Every variant that would change the arithmetic and is not implemented is refused by name. */
#include <math.h>
#include <string.h>

#include "io/config_internal.h"

static const struct { const char *arch, *model_type; ea_arch id; } families[] = {
    {"GPT2LMHeadModel", "gpt2", EA_ARCH_GPT2},
    {"LlamaForCausalLM", "llama", EA_ARCH_LLAMA},
    {"Qwen2ForCausalLM", "qwen2", EA_ARCH_QWEN2},
    {"Qwen3ForCausalLM", "qwen3", EA_ARCH_QWEN3},
};
#define N_FAMILIES (sizeof families / sizeof *families)

const char *ea_arch_name(ea_arch a) {
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (families[i].id == a) return families[i].arch;
    return "?";
}

ea_status ea_config_family(const cJSON *root, const char *path, ea_arch *out) {
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    int by_arch = -1, by_type = -1;
    if (archs && !cJSON_IsNull(archs)) {
        const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
        if (!cJSON_IsString(a0) || cJSON_GetArraySize(archs) != 1)
            return ea_error(EA_ERR_FORMAT, "%s: \"architectures\" must be a list of one string", path);
        for (size_t i = 0; i < N_FAMILIES && by_arch < 0; i++)
            if (!strcmp(a0->valuestring, families[i].arch)) by_arch = (int)i;
        if (by_arch < 0)
            return ea_error(EA_ERR_UNSUPPORTED,
                            "%s: architectures \"%.64s\" is not supported (GPT2LMHeadModel, LlamaForCausalLM, "
                            "Qwen2ForCausalLM, Qwen3ForCausalLM)", path, a0->valuestring);
    }
    if (mt && !cJSON_IsNull(mt)) {
        if (!cJSON_IsString(mt)) return ea_error(EA_ERR_FORMAT, "%s: \"model_type\" is not a string", path);
        for (size_t i = 0; i < N_FAMILIES && by_type < 0; i++)
            if (!strcmp(mt->valuestring, families[i].model_type)) by_type = (int)i;
        if (by_type < 0)
            return ea_error(EA_ERR_UNSUPPORTED, "%s: model_type \"%.64s\" is not supported (gpt2, llama, qwen2, qwen3)", path,
                            mt->valuestring);
    }
    if (by_arch >= 0 && by_type >= 0 && by_arch != by_type)
        return ea_error(EA_ERR_FORMAT, "%s: architectures \"%s\" contradicts model_type \"%s\"", path,
                        families[by_arch].arch, families[by_type].model_type);
    int i = by_arch >= 0 ? by_arch : by_type;
    *out = i >= 0 ? families[i].id : EA_ARCH_GPT2;
    return EA_OK;
}

static ea_status get_int(const cJSON *root, const char *key, const char *path, int min, int max, int dflt, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) {
        if (dflt < 0) return ea_error(EA_ERR_FORMAT, "%s: missing \"%s\"", path, key);
        *out = dflt;
        return EA_OK;
    }
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < min || j->valuedouble > max)
        return ea_error(EA_ERR_FORMAT, "%s: \"%s\" must be an integer in [%d, %d]", path, key, min, max);
    *out = (int)j->valuedouble;
    return EA_OK;
}

/* A number in (lo, hi), or dflt when absent (dflt NAN: required). */
static ea_status get_num(const cJSON *obj, const char *where, const char *key, const char *path, double lo, double hi,
                         double dflt, double *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!j || cJSON_IsNull(j)) {
        if (isnan(dflt)) return ea_error(EA_ERR_FORMAT, "%s: missing \"%s%s\"", path, where, key);
        *out = dflt;
        return EA_OK;
    }
    if (!cJSON_IsNumber(j) || !(j->valuedouble > lo && j->valuedouble < hi))
        return ea_error(EA_ERR_FORMAT, "%s: \"%s%s\" must be a number in (%g, %g)", path, where, key, lo, hi);
    *out = j->valuedouble;
    return EA_OK;
}

static ea_status get_bool(const cJSON *root, const char *key, const char *path, int dflt, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) { *out = dflt; return EA_OK; }
    if (!cJSON_IsBool(j)) return ea_error(EA_ERR_FORMAT, "%s: \"%s\" must be true or false", path, key);
    *out = cJSON_IsTrue(j);
    return EA_OK;
}

/* The rotary embedding: rope_parameters (transformers 5) holds theta and the scaling in one object;
 * the older layout has rope_theta beside a rope_scaling object (whose type key is "rope_type", or
 * "type" in older files). */
static ea_status parse_rope(const cJSON *root, const char *path, ea_config *cfg) {
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    const char *where = "rope_scaling.";
    const cJSON *obj = NULL;
    ea_status st;
    if ((st = get_num(root, "", "rope_theta", path, 0, 1e12, 10000.0, &cfg->rope_theta))) return st;
    if (params && !cJSON_IsNull(params)) {
        if (!cJSON_IsObject(params)) return ea_error(EA_ERR_FORMAT, "%s: \"rope_parameters\" is not an object", path);
        obj = params;
        where = "rope_parameters.";
        if ((st = get_num(params, where, "rope_theta", path, 0, 1e12, cfg->rope_theta, &cfg->rope_theta))) return st;
    } else {
        if (scaling && !cJSON_IsNull(scaling)) {
            if (!cJSON_IsObject(scaling)) return ea_error(EA_ERR_FORMAT, "%s: \"rope_scaling\" is not an object", path);
            obj = scaling;
        }
    }
    cfg->rope_type = EA_ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    if (!obj) return EA_OK;
    const char *tkey = "rope_type";
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, tkey);
    if (!t) t = cJSON_GetObjectItemCaseSensitive(obj, tkey = "type");
    if (!t) {
        if (obj == params) return EA_OK; /* theta only */
        return ea_error(EA_ERR_FORMAT, "%s: \"rope_scaling\" has no \"rope_type\"", path);
    }
    if (!cJSON_IsString(t)) return ea_error(EA_ERR_FORMAT, "%s: \"%s%s\" is not a string", path, where, tkey);
    const char *ty = t->valuestring;
    if (!strcmp(ty, "default")) return EA_OK;
    if (!strcmp(ty, "linear")) {
        cfg->rope_type = EA_ROPE_LINEAR;
        return get_num(obj, where, "factor", path, 0, 1e9, NAN, &cfg->rope_factor);
    }
    if (!strcmp(ty, "llama3")) {
        cfg->rope_type = EA_ROPE_LLAMA3;
        double omp = 0;
        if ((st = get_num(obj, where, "factor", path, 0, 1e9, NAN, &cfg->rope_factor)) ||
            (st = get_num(obj, where, "low_freq_factor", path, 0, 1e9, NAN, &cfg->rope_low_freq_factor)) ||
            (st = get_num(obj, where, "high_freq_factor", path, 0, 1e9, NAN, &cfg->rope_high_freq_factor)) ||
            (st = get_num(obj, where, "original_max_position_embeddings", path, 0, 1 << 24, NAN, &omp)))
            return st;
        if (omp != floor(omp))
            return ea_error(EA_ERR_FORMAT, "%s: \"%soriginal_max_position_embeddings\" must be an integer", path, where);
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
            return ea_error(EA_ERR_FORMAT, "%s: \"%shigh_freq_factor\" %g must exceed low_freq_factor %g", path, where,
                            cfg->rope_high_freq_factor, cfg->rope_low_freq_factor);
        cfg->rope_original_max_positions = (int)omp;
        return EA_OK;
    }
    return ea_error(EA_ERR_UNSUPPORTED, "%s: \"%s%s\" \"%.64s\" is not supported (default, linear, llama3)", path, where,
                    tkey, ty);
}

ea_status ea_config_parse_llama(const cJSON *root, const char *path, ea_arch arch, ea_config *cfg) {
    ea_status st;
    cfg->arch = arch;
    if ((st = get_int(root, "num_hidden_layers", path, 1, 256, -1, &cfg->n_layer)) ||
        (st = get_int(root, "num_attention_heads", path, 1, 1024, -1, &cfg->n_head)) ||
        (st = get_int(root, "hidden_size", path, 1, 65536, -1, &cfg->n_embd)) ||
        (st = get_int(root, "max_position_embeddings", path, 1, 1 << 20, -1, &cfg->n_positions)) ||
        (st = get_int(root, "vocab_size", path, 1, 1 << 22, -1, &cfg->vocab_size)) ||
        (st = get_int(root, "intermediate_size", path, 1, 1 << 20, -1, &cfg->n_inner)) ||
        (st = get_int(root, "num_key_value_heads", path, 1, 1024, cfg->n_head, &cfg->n_kv_head)))
        return st;
    if (cfg->n_embd % cfg->n_head && !cJSON_GetObjectItemCaseSensitive(root, "head_dim"))
        return ea_error(EA_ERR_FORMAT, "%s: hidden_size %d is not divisible by num_attention_heads %d (and no head_dim)", path,
                        cfg->n_embd, cfg->n_head);
    if ((st = get_int(root, "head_dim", path, 2, 4096, cfg->n_embd / cfg->n_head, &cfg->head_dim))) return st;
    if (cfg->head_dim % 2) return ea_error(EA_ERR_FORMAT, "%s: head_dim %d is odd (RoPE rotates pairs)", path, cfg->head_dim);
    if (cfg->n_head % cfg->n_kv_head)
        return ea_error(EA_ERR_FORMAT, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
                        cfg->n_head, cfg->n_kv_head);
    if ((double)cfg->n_head * cfg->head_dim > 1 << 20)
        return ea_error(EA_ERR_FORMAT, "%s: num_attention_heads x head_dim is too large", path);
    double eps = 0;
    if ((st = get_num(root, "", "rms_norm_eps", path, 0, 1, 1e-6, &eps))) return st;
    cfg->layer_norm_epsilon = (float)eps;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")))
        return ea_error(EA_ERR_UNSUPPORTED, "%s: hidden_act %s%.64s%s is not supported (only silu)", path,
                        cJSON_IsString(act) ? "\"" : "", cJSON_IsString(act) ? act->valuestring : "(not a string)",
                        cJSON_IsString(act) ? "\"" : "");
    if ((st = get_bool(root, "tie_word_embeddings", path, 0, &cfg->tie_word_embeddings))) return st;
    int attn_bias = 0, flag = 0;
    if ((st = get_bool(root, "attention_bias", path, 0, &attn_bias))) return st;
    if (arch == EA_ARCH_QWEN2) { /* Qwen2 always has q/k/v biases and never an o_proj bias */
        cfg->qkv_bias = 1;
        cfg->o_bias = 0;
    } else cfg->qkv_bias = cfg->o_bias = attn_bias;
    cfg->qk_norm = arch == EA_ARCH_QWEN3;
    /* Variants that change the arithmetic are refused rather than computed wrong. */
    if ((st = get_bool(root, "mlp_bias", path, 0, &flag))) return st;
    if (flag) return ea_error(EA_ERR_UNSUPPORTED, "%s: mlp_bias = true is not supported", path);
    if ((st = get_bool(root, "use_sliding_window", path, 0, &flag))) return st;
    if (flag) return ea_error(EA_ERR_UNSUPPORTED, "%s: use_sliding_window = true is not supported", path);
    double prf = 1;
    if ((st = get_num(root, "", "partial_rotary_factor", path, 0, 2, 1.0, &prf))) return st;
    if (prf != 1.0) return ea_error(EA_ERR_UNSUPPORTED, "%s: partial_rotary_factor %g is not supported (only 1)", path, prf);
    return parse_rope(root, path, cfg);
}
