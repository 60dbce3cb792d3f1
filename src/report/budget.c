/* Memory budget from a config alone (eigenalign budget): weights in each format and as the engine
 * holds them, the KV cache at a codec, attention scores and activations. The counts follow the
 * loader (model/load.c, load_llama.c) and the forward pass's buffers (model/forward.c) line by
 * line; tests/test_budget.c checks them against hand computation and published parameter counts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ea/kvcodec.h"
#include "ea/report.h"

/* Public hyper-parameters, from each checkpoint's config.json on the Hugging Face hub:
 * openai-community/gpt2, gpt2-medium, gpt2-large, gpt2-xl (n_inner null = 4 × n_embd) and
 * meta-llama/Llama-2-7b-hf (hidden 4096, intermediate 11008, 32 layers, 32 heads = 32 KV heads,
 * vocab 32000, max_position_embeddings 4096, untied lm_head). */
typedef struct {
    const char *name;
    int layers, heads, kv_heads, embd, inner, positions, vocab, llama;
} shape;

static const shape shapes[] = {
    {"gpt2", 12, 12, 12, 768, 3072, 1024, 50257, 0},
    {"gpt2-medium", 24, 16, 16, 1024, 4096, 1024, 50257, 0},
    {"gpt2-large", 36, 20, 20, 1280, 5120, 1024, 50257, 0},
    {"gpt2-xl", 48, 25, 25, 1600, 6400, 1024, 50257, 0},
    {"llama-2-7b", 32, 32, 32, 4096, 11008, 4096, 32000, 1},
};

const char *ea_budget_shape_list(void) { return "gpt2, gpt2-medium, gpt2-large, gpt2-xl, llama-2-7b"; }

ea_status ea_budget_shape(const char *name, ea_config *cfg) {
    if (!name || !cfg) return ea_error(EA_ERR_ARG, "budget: no shape name");
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const shape *s = &shapes[i];
        if (strcmp(name, s->name)) continue;
        memset(cfg, 0, sizeof *cfg);
        cfg->n_layer = s->layers;
        cfg->n_head = s->heads;
        cfg->n_embd = s->embd;
        cfg->n_inner = s->inner;
        cfg->n_positions = s->positions;
        cfg->vocab_size = s->vocab;
        cfg->layer_norm_epsilon = 1e-5f;
        if (s->llama) {
            cfg->arch = EA_ARCH_LLAMA;
            cfg->n_kv_head = s->kv_heads;
            cfg->head_dim = s->embd / s->heads;
            cfg->tie_word_embeddings = 0;
            cfg->rope_type = EA_ROPE_DEFAULT;
            cfg->rope_theta = 10000.0;
        } else {
            cfg->arch = EA_ARCH_GPT2;
            cfg->tie_word_embeddings = 1;
        }
        return EA_OK;
    }
    return ea_error(EA_ERR_ARG, "shape '%s': unknown (known: %s)", name, ea_budget_shape_list());
}

/* Parameters split into 2-D matrices and 1-D tensors, as the loaders count them. */
static void count_params(const ea_config *c, double *matrix, double *vector, double *decode) {
    double C = c->n_embd, F = c->n_inner, V = c->vocab_size, P = c->n_positions, L = c->n_layer;
    double QD = ea_config_q_dim(c), KVD = ea_config_kv_dim(c), HD = ea_config_head_dim(c);
    if (c->arch == EA_ARCH_GPT2) {
        /* wte, wpe; per layer c_attn [C, 3C], attn.c_proj [C, C], c_fc [C, F], mlp.c_proj [F, C];
         * ln_1/ln_2 weight+bias, c_attn/c_proj/c_fc/mlp.c_proj biases; ln_f weight+bias */
        *matrix = V * C + P * C + L * (3 * C * C + C * C + C * F + F * C);
        *vector = 2 * C + L * (2 * C + 3 * C + C + 2 * C + F + C);
        *decode = L * (3 * C * C + C * C + C * F + F * C) + V * C;
    } else {
        double per = (QD + 2 * KVD) * C + C * QD + 2 * F * C + C * F; /* q,k,v; o; gate, up; down */
        *matrix = V * C * (c->tie_word_embeddings ? 1 : 2) + L * per;
        double pv = 2 * C;
        if (c->qkv_bias) pv += QD + 2 * KVD;
        if (c->o_bias) pv += C;
        if (c->qk_norm) pv += 2 * HD;
        *vector = C + L * pv;
        *decode = L * per + V * C;
    }
}

static double blocks32(double n, double bytes_per_block) { return ceil(n / 32.0) * bytes_per_block; }

ea_status ea_budget_compute(const ea_config *cfg, int seq, const char *kv_spec, int threads, ea_budget *out) {
    if (!cfg || !out || !kv_spec) return ea_error(EA_ERR_ARG, "budget: NULL argument");
    if (seq < 1) return ea_error(EA_ERR_ARG, "budget: sequence length %d must be at least 1", seq);
    if (threads < 1) return ea_error(EA_ERR_ARG, "budget: thread count %d must be at least 1", threads);
    if (cfg->n_layer < 1 || cfg->n_head < 1 || cfg->n_embd < 1 || cfg->n_inner < 1 || cfg->vocab_size < 1 ||
        cfg->n_positions < 1)
        return ea_error(EA_ERR_ARG, "budget: config has a non-positive size (layers %d, heads %d, embd %d, inner %d, "
                        "vocab %d, positions %d)", cfg->n_layer, cfg->n_head, cfg->n_embd, cfg->n_inner,
                        cfg->vocab_size, cfg->n_positions);
    ea_status st = ea_kv_codec_check_spec(kv_spec);
    if (st) return st;
    if (!strncmp(kv_spec, "file:", 5))
        return ea_error(EA_ERR_ARG, "kv codec '%s': a saved codec needs its file and a model; give its spec (klt:B)", kv_spec);
    memset(out, 0, sizeof *out);
    const ea_config *c = cfg;
    double L = c->n_layer, C = c->n_embd, F = c->n_inner, V = c->vocab_size, S = seq;
    double QD = ea_config_q_dim(c), KVD = ea_config_kv_dim(c), HD = ea_config_head_dim(c);
    count_params(c, &out->n_matrix, &out->n_vector, &out->n_decode);
    out->n_params = out->n_matrix + out->n_vector;
    out->w_f32 = 4 * out->n_params;
    out->w_f16 = 2 * out->n_params;
    /* llama.cpp: block_q8_0 = f16 d + int8 qs[32] (34 B), block_q4_0 = f16 d + uint8 qs[16] (18 B);
     * blocks run along rows of 32-divisible length, so the count is matrix values / 32 */
    out->w_q8_0 = blocks32(out->n_matrix, 34) + 4 * out->n_vector;
    out->w_q4_0 = blocks32(out->n_matrix, 18) + 4 * out->n_vector;
    out->engine_f32_ckpt = 4 * out->n_params + 4 * out->n_decode;
    out->engine_f16_ckpt = 4 * out->n_params + 2 * out->n_decode;

    out->kv_heads = ea_config_kv_heads(c);
    out->kv_dim = ea_config_kv_dim(c);
    out->kv_f32 = 2 * L * S * KVD * 4;
    /* the largest figure: above 2^53 doubles stop being exact byte counts (and size_t may wrap in
     * the codec's own accounting): refuse rather than print a rounded or wrapped number */
    double biggest = fmax(fmax(out->kv_f32, (double)c->n_head * S * S * 4), fmax(out->engine_f32_ckpt, V * S * 4));
    if (biggest > 9007199254740992.0)
        return ea_error(EA_ERR_ARG, "%g bytes at seq %d are beyond exact counting (2^53); use a shorter --seq", biggest, seq);
    const char *colon = strchr(kv_spec, ':');
    if (!strncmp(kv_spec, "pca", 3)) {
        int per_head = !strncmp(kv_spec, "pca-head", 8);
        long r = strtol(colon + 1, NULL, 10);
        long max = per_head ? (long)HD : (long)KVD;
        if (r > max)
            return ea_error(EA_ERR_ARG, "kv codec '%s': rank %ld exceeds %s %ld", kv_spec, r,
                            per_head ? "head_dim" : "the cached width", max);
        /* kv_pca.c: a row is its float32 coefficients (R, or R per KV head); the stored basis of
         * each (layer, K|V) is its mean (kv_dim floats) and R × kv_dim vector floats */
        double coef = per_head ? (double)r * out->kv_heads : (double)r;
        out->kv_bytes = 2 * L * S * coef * 4;
        out->kv_overhead = 2 * L * (KVD + (double)r * KVD) * 4;
    } else if (!strncmp(kv_spec, "klt", 3)) {
        /* B is the average stored bits per value the fit allocates, per-sequence bytes included;
         * the basis, encoder and level tables it keeps depend on which directions the fit keeps */
        double b = strtod(colon + 1, NULL);
        out->kv_bytes = 2 * L * S * KVD * b / 8;
        out->kv_overhead = NAN;
    } else {
        ea_kv_codec *codec = NULL;
        if ((st = ea_kv_codec_create(kv_spec, c, NULL, &codec))) return st;
        out->kv_bytes = (double)ea_kv_codec_bytes(codec, seq);
        out->kv_overhead = (double)ea_kv_codec_overhead(codec);
        ea_kv_codec_free(codec);
    }
    out->kv_bits_per_value = out->kv_bytes * 8 / (2 * L * S * KVD);

    out->scores_note = (double)c->n_head * S * S * 4;
    out->scores_engine = S * 64 * threads * 4; /* forward.c: kv × EA_KV_ROWS_GEMM_BLOCK × threads floats */
    /* forward.c run_state_reserve: x, xn, qkv, q, att, fc (SwiGLU 3F), tmp; with RoPE or GQA also
     * the rotation table (head_dim) and two KV-width buffers; each × seq floats */
    int llama_bufs = c->arch != EA_ARCH_GPT2 || KVD != QD;
    double w = C + C + (QD + 2 * KVD) + QD + QD + (c->arch != EA_ARCH_GPT2 ? 3 * F : F) + C;
    if (llama_bufs) w += HD + KVD + KVD;
    out->activations = w * S * 4;
    out->logits_last = V * 4;
    out->logits_all = V * S * 4;
    return EA_OK;
}
