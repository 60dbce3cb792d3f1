/* eigenalign generate: text from a prompt, greedy or sampled, optionally on a compressed KV cache. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *usage =
    "usage: eigenalign generate [--model DIR] --prompt STR [-n 40] [--temperature T] [--top-k K]\n"
    "                           [--top-p P] [--seed S] [--no-stop] [--special] [--kv CODEC]\n"
    "                           [--calib PATH] [--calib-max-tokens N] [--save-kv FILE] [--json]\n"
    "  Greedy when --temperature is 0 (default). Stops at the model's eos_token_id\n"
    "  (generation_config.json, else config.json; GPT-2 without one: <|endoftext|>) unless --no-stop.\n"
    "  --kv CODEC keeps the KV cache compressed (f32, f16, q8, q4, pca:R, pca-head:R, klt:B) and\n"
    "  reports its size; pca and klt are first fitted on --calib text (default the bundled calibration\n"
    "  text; --calib-max-tokens caps it) as eval fits them. --save-kv FILE saves the fitted klt codec;\n"
    "  --kv file:FILE (here, in eval and bench-memory) uses it without refitting.\n";

int cmd_generate(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
    cli_args a;
    cli_args_init(&a, "generate", argc, argv);
    const char *model_dir = cli_str(&a, "--model", cli_default_model());
    const char *prompt = cli_str(&a, "--prompt", NULL);
    long n_new = cli_long(&a, "-n", 40, 0, 1 << 20);
    ea_sampler_params sp = ea_sampler_default();
    sp.temperature = (float)cli_double(&a, "--temperature", 0.0, 0.0, 100.0);
    sp.top_k = (int)cli_long(&a, "--top-k", 0, 0, 1 << 24);
    sp.top_p = (float)cli_double(&a, "--top-p", 1.0, 0.0, 1.0);
    sp.seed = (uint64_t)cli_long(&a, "--seed", 1234, 0, 0x7fffffffffffffffL);
    sp.stop_at_eot = !cli_has(&a, "--no-stop");
    int special = cli_has(&a, "--special");
    const char *kv = cli_str(&a, "--kv", NULL);
    const char *calib = cli_str(&a, "--calib", NULL);
    long calib_max = cli_long(&a, "--calib-max-tokens", 0, 0, 1L << 40);
    const char *save_kv = cli_str(&a, "--save-kv", NULL);
    int json = cli_has(&a, "--json");
    int rc = cli_finish(&a);
    cli_args_free(&a);
    if (rc) return rc;
    {
        const char *dirs[] = {model_dir}, *ins[] = {calib, kv && !strncmp(kv, "file:", 5) ? kv + 5 : NULL};
        const char *outs[] = {save_kv}, *flags[] = {"--save-kv"};
        if ((rc = cli_check_outputs("generate", dirs, 1, ins, 2, outs, flags, 1))) return rc;
    }
    if (!prompt) return cli_error("generate", "--prompt is required (see --help)"), 2;
    if (!*prompt) return cli_error("generate", "the prompt is empty");

    ea_model *m = NULL;
    ea_tokenizer *tok = NULL;
    ea_kvcache *cache = NULL;
    ea_kv_codec *codec = NULL;
    int *ids = NULL, *out = NULL, *cids = NULL;
    size_t n_cids = 0;
    char *text = NULL;
    size_t n_ids = 0, text_len = 0;
    rc = 1;
    ea_status st = cli_load_model(model_dir, &m, &tok);
    if (st) { cli_fail_status("generate", st); goto done; }
    const ea_config *cfg = ea_model_config(m);
    /* Any id the model can emit must decode: found now, not mid-generation. */
    if (ea_tokenizer_vocab_size(tok) < cfg->vocab_size) {
        cli_error("generate", "%s: the tokenizer has %d tokens, fewer than the model's vocab_size %d: generated ids "
                  "could not be decoded", model_dir, ea_tokenizer_vocab_size(tok), cfg->vocab_size);
        goto done;
    }
    if ((st = ea_tokenizer_encode(tok, prompt, strlen(prompt), special, &ids, &n_ids))) { cli_fail_status("generate", st); goto done; }
    if (n_ids == 0) { cli_error("generate", "the prompt has no tokens"); goto done; }
    if (n_ids + (size_t)n_new > (size_t)cfg->n_positions + 1) {
        cli_error("generate", "prompt (%zu tokens) + -n %ld exceed the model context of %d", n_ids, n_new, cfg->n_positions);
        goto done;
    }
    if (kv && (st = ea_kv_codec_check_spec_for(kv, cfg))) { cli_fail_status("generate", st); goto done; }
    if (kv && (!strncmp(kv, "pca", 3) || !strncmp(kv, "klt", 3))) {
        int ctx = cfg->n_positions < 1024 ? cfg->n_positions : 1024;
        if (!calib) calib = cli_default_calib();
        if ((st = cli_load_text_ids(tok, calib, (size_t)calib_max, &cids, &n_cids))) { cli_fail_status("generate", st); goto done; }
        if ((st = ea_kv_codec_fit_model(m, kv, cids, n_cids, ctx, cli_progress, NULL, &codec))) { cli_fail_status("generate", st); goto done; }
    } else if (kv && (st = ea_kv_codec_fit_model(m, kv, NULL, 0, 0, NULL, NULL, &codec))) { cli_fail_status("generate", st); goto done; }
    if (save_kv && !codec) { cli_error("generate", "--save-kv needs --kv klt:B"); goto done; }
    if (save_kv) {
        if ((st = ea_kv_codec_save(codec, save_kv))) { cli_fail_status("generate", st); goto done; }
        fprintf(stderr, "generate: saved kv codec %s to %s\n", ea_kv_codec_name(codec), save_kv);
    }
    if ((st = ea_kvcache_init(&cache, cfg, cfg->n_positions, codec))) { cli_fail_status("generate", st); goto done; }
    out = malloc(sizeof(int) * ((size_t)n_new + 1));
    int n_out = 0;
    double t0 = ea_time_now();
    if ((st = ea_generate(m, cache, ids, (int)n_ids, (int)n_new, &sp, out, &n_out))) { cli_fail_status("generate", st); goto done; }
    double secs = ea_time_now() - t0;
    if ((st = ea_tokenizer_decode(tok, out, (size_t)n_out, &text, &text_len))) { cli_fail_status("generate", st); goto done; }
    size_t cache_bytes = ea_kvcache_bytes_for(cache, ea_kvcache_len(cache));
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON *pi = cJSON_AddArrayToObject(j, "prompt_ids"), *gi = cJSON_AddArrayToObject(j, "ids");
        for (size_t i = 0; i < n_ids; i++) cJSON_AddItemToArray(pi, cJSON_CreateNumber(ids[i]));
        for (int i = 0; i < n_out; i++) cJSON_AddItemToArray(gi, cJSON_CreateNumber(out[i]));
        /* Generation can stop inside a multi-byte character: "text" is valid UTF-8 (U+FFFD for the
         * broken bytes) and "text_hex" keeps the exact bytes whenever they differ. */
        int valid = 1;
        char *utf8 = cli_utf8_sanitize(text, text_len, &valid);
        cJSON_AddStringToObject(j, "text", utf8 ? utf8 : "");
        cJSON_AddBoolToObject(j, "text_is_utf8", valid);
        if (!valid) {
            char *hex = malloc(2 * text_len + 1);
            for (size_t i = 0; hex && i < text_len; i++) snprintf(hex + 2 * i, 3, "%02x", (unsigned char)text[i]);
            if (hex) hex[2 * text_len] = 0;
            cJSON_AddStringToObject(j, "text_hex", hex ? hex : "");
            free(hex);
        }
        free(utf8);
        cJSON_AddStringToObject(j, "kv", kv ? kv : "f32");
        cJSON_AddNumberToObject(j, "cache_tokens", ea_kvcache_len(cache));
        cJSON_AddNumberToObject(j, "cache_bytes", (double)cache_bytes);
        cJSON_AddNumberToObject(j, "codec_overhead_bytes", codec ? (double)ea_kv_codec_overhead(codec) : 0);
        cJSON_AddNumberToObject(j, "codec_resident_bytes", codec ? (double)ea_kv_codec_resident(codec) : 0);
        cJSON_AddNumberToObject(j, "seconds", secs);
        cli_print_json(j);
    } else {
        printf("%s%s\n", prompt, text);
        fprintf(stderr, "[%d tokens in %.3f s; kv cache %s: %d tokens, %zu bytes + %zu bytes codec overhead (%zu in memory)]\n",
                n_out, secs, kv ? kv : "f32", ea_kvcache_len(cache), cache_bytes, codec ? ea_kv_codec_overhead(codec) : (size_t)0,
                codec ? ea_kv_codec_resident(codec) : (size_t)0);
    }
    rc = 0;
done:
    free(text);
    free(out);
    free(ids);
    free(cids);
    ea_kvcache_free(cache);
    ea_kv_codec_free(codec);
    ea_tokenizer_free(tok);
    ea_model_free(m);
    return rc;
}
