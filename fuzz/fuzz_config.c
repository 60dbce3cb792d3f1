/* libFuzzer target: config.json parsing (ea_config_parse takes a buffer that is not
 * NUL-terminated here, so reading past len is caught). Oracle: what is accepted is a usable
 * GPT-2 shape; every refusal names the file. */
#include <math.h>

#include "fuzz_util.h"

#define NAME "fuzz/config.json"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = malloc(size ? size : 1); /* exactly size bytes: no terminator to lean on */
    if (size) memcpy(buf, data, size);
    ea_config cfg;
    memset(&cfg, 0xA5, sizeof cfg);
    ea_status st = ea_config_parse(buf, size, NAME, &cfg);
    free(buf);
    if (st != EA_OK) {
        FUZZ_CHECK(strstr(ea_last_error(), NAME) != NULL, "message does not name the file: %s", ea_last_error());
        return 0;
    }
    FUZZ_CHECK(cfg.n_layer >= 1 && cfg.n_head >= 1 && cfg.n_embd >= 1 && cfg.n_positions >= 1 && cfg.vocab_size >= 1,
               "accepted n_layer %d n_head %d n_embd %d n_positions %d vocab %d", cfg.n_layer, cfg.n_head,
               cfg.n_embd, cfg.n_positions, cfg.vocab_size);
    /* GPT-2 splits n_embd into heads; the Llama family may set head_dim explicitly (Qwen3: 18 × 6 heads
     * on 64 dims), so there the heads must share the KV heads evenly instead. */
    if (cfg.arch == EA_ARCH_GPT2)
        FUZZ_CHECK(cfg.n_embd % cfg.n_head == 0, "accepted n_embd %d with n_head %d", cfg.n_embd, cfg.n_head);
    else
        FUZZ_CHECK(ea_config_head_dim(&cfg) >= 1 && ea_config_kv_heads(&cfg) >= 1 &&
                       cfg.n_head % ea_config_kv_heads(&cfg) == 0,
                   "accepted head_dim %d, %d heads and %d KV heads", ea_config_head_dim(&cfg), cfg.n_head,
                   ea_config_kv_heads(&cfg));
    FUZZ_CHECK(cfg.n_inner >= 1, "accepted n_inner %d", cfg.n_inner);
    FUZZ_CHECK(isfinite(cfg.layer_norm_epsilon) && cfg.layer_norm_epsilon >= 0, "accepted epsilon %g",
               (double)cfg.layer_norm_epsilon);
    /* The biggest matrices must have a size that fits size_t. */
    size_t a, b;
    FUZZ_CHECK(ea_mul_size((size_t)cfg.vocab_size, (size_t)cfg.n_embd, &a) == 0 &&
                   ea_mul_size((size_t)cfg.n_embd, (size_t)cfg.n_inner, &b) == 0,
               "sizes overflow");
    return 0;
}
