/* eigenalign perplexity: mean NLL and perplexity of a text under a stated windowing protocol. */
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *usage =
    "usage: eigenalign perplexity [--model DIR] --text PATH [--ctx N] [--max-tokens N] [--protocol full|llama] [--json]\n"
    "  Protocol: the text is cut into non-overlapping windows of --ctx tokens (default n_positions),\n"
    "  each run from an empty cache; 'full' scores every next-token prediction of each window,\n"
    "  'llama' only those of its second half (as llama.cpp's perplexity tool).\n";

int cmd_perplexity(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
    cli_args a;
    cli_args_init(&a, "perplexity", argc, argv);
    const char *model_dir = cli_str(&a, "--model", cli_default_model());
    const char *path = cli_str(&a, "--text", NULL);
    long ctx = cli_long(&a, "--ctx", 0, 2, 1 << 20);
    long max_tokens = cli_long(&a, "--max-tokens", 0, 0, 1L << 40);
    const char *proto_s = cli_str(&a, "--protocol", "full");
    int json = cli_has(&a, "--json");
    int rc = cli_finish(&a);
    cli_args_free(&a);
    if (rc) return rc;
    if (!path) return cli_error("perplexity", "--text is required (see --help)"), 2;
    ea_ppl_protocol proto;
    if (!strcmp(proto_s, "full")) proto = EA_PPL_FULL;
    else if (!strcmp(proto_s, "llama")) proto = EA_PPL_LLAMA;
    else return cli_error("perplexity", "--protocol must be full or llama, not '%s'", proto_s), 2;

    ea_model *m = NULL;
    ea_tokenizer *tok = NULL;
    ea_kvcache *cache = NULL;
    int *ids = NULL;
    size_t n = 0;
    rc = 1;
    ea_status st = cli_load_model(model_dir, &m, &tok);
    if (st) { cli_fail_status("perplexity", st); goto done; }
    const ea_config *cfg = ea_model_config(m);
    if (ctx == 0) ctx = cfg->n_positions;
    if (ctx > cfg->n_positions) { cli_error("perplexity", "--ctx %ld exceeds n_positions %d", ctx, cfg->n_positions); goto done; }
    if ((st = cli_load_text_ids(tok, path, (size_t)max_tokens, &ids, &n))) { cli_fail_status("perplexity", st); goto done; }
    if ((st = ea_kvcache_init(&cache, cfg, (int)ctx, NULL))) { cli_fail_status("perplexity", st); goto done; }
    ea_ppl_result res;
    double t0 = ea_time_now();
    if ((st = ea_perplexity(m, cache, ids, n, (int)ctx, proto, &res))) { cli_fail_status("perplexity", st); goto done; }
    double secs = ea_time_now() - t0;
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "tokens_scored", (double)res.tokens_scored);
        cli_add_number(j, "mean_nll", res.mean_nll);
        cli_add_number(j, "ppl", res.ppl);
        cJSON_AddNumberToObject(j, "ctx", (double)ctx);
        cJSON_AddStringToObject(j, "protocol", proto_s);
        cJSON_AddNumberToObject(j, "tokens", (double)n);
        cJSON_AddNumberToObject(j, "seconds", secs);
        cli_print_json(j);
    } else {
        printf("tokens scored %zu (of %zu, windows of %ld, protocol %s)\nmean NLL      %.6f\nperplexity    %.4f\n",
               res.tokens_scored, n, ctx, proto_s, res.mean_nll, res.ppl);
    }
    rc = 0;
done:
    free(ids);
    ea_kvcache_free(cache);
    ea_tokenizer_free(tok);
    ea_model_free(m);
    return rc;
}
