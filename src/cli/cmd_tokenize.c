/* eigenalign tokenize: token ids of a text (loads only the tokenizer, not the weights). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *usage =
    "usage: eigenalign tokenize [--model DIR] (--text STR | --file PATH) [--special] [--json]\n"
    "  Prints the token ids of the text, space-separated (--json: {\"ids\": [...], \"bos\": ID or null}).\n"
    "  --model DIR  directory with tokenizer.json (+ tokenizer_config.json), or vocab.json and\n"
    "               merges.txt (default: the bundled gpt2-micro); tokenizer.json wins when both exist\n"
    "  --special    turn special tokens written in the text (<|endoftext|>, <s>, ...) into their ids;\n"
    "               otherwise they are plain text\n"
    "  The ids never include BOS; \"bos\" is the id a model expects first (null: none).\n"
    "  Any bytes are accepted: invalid UTF-8 is encoded byte by byte. Empty text gives no ids.\n";

/* Text files above this are refused (the CLI reads them whole). */
#define TOKENIZE_MAX_BYTES ((size_t)1 << 30)

/* The ids are streamed rather than built as a cJSON tree: a cJSON node per id would take ~20x
 * the memory of the text for large files, and a list of integers needs no escaping. */
static int print_ids(const int *ids, size_t n, int json, int bos) {
    if (json) fputs("{\"ids\": [", stdout);
    for (size_t i = 0; i < n; i++) printf(i ? (json ? ", %d" : " %d") : "%d", ids[i]);
    if (json && bos >= 0) printf("], \"bos\": %d}\n", bos);
    else fputs(json ? "], \"bos\": null}\n" : "\n", stdout);
    return fflush(stdout) != 0 || ferror(stdout) ? -1 : 0;
}

int cmd_tokenize(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
    cli_args a;
    cli_args_init(&a, "tokenize", argc, argv);
    const char *model_dir = cli_str(&a, "--model", cli_default_model());
    const char *text_arg = cli_str(&a, "--text", NULL);
    const char *file = cli_str(&a, "--file", NULL);
    int special = cli_has(&a, "--special");
    int json = cli_has(&a, "--json");
    int rc = cli_finish(&a);
    cli_args_free(&a);
    if (rc) return rc;
    if (!text_arg == !file) return cli_error("tokenize", "give exactly one of --text STR or --file PATH (see --help)"), 2;

    ea_tokenizer *tok = NULL;
    char *buf = NULL;
    int *ids = NULL;
    size_t len = 0, n = 0;
    const char *text = text_arg;
    ea_status st = EA_OK;
    rc = 1;
    if (file) {
        if ((st = ea_read_file(file, TOKENIZE_MAX_BYTES, &buf, &len))) goto fail;
        text = buf;
    } else {
        len = strlen(text);
    }
    if ((st = ea_tokenizer_load_dir(model_dir, &tok))) goto fail;
    if ((st = ea_tokenizer_encode(tok, text, len, special, &ids, &n))) goto fail;
    int bos = -1;
    ea_tokenizer_bos(tok, &bos);
    if (print_ids(ids, n, json, bos)) {
        cli_error("tokenize", "write error on standard output: %s", strerror(errno ? errno : EIO));
        goto done;
    }
    rc = 0;
    goto done;
fail:
    cli_fail_status("tokenize", st);
done:
    free(ids);
    free(buf);
    ea_tokenizer_free(tok);
    return rc;
}
