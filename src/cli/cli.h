/* Shared pieces of the eigenalign command-line tool. */
#ifndef EA_CLI_H
#define EA_CLI_H

#include <cjson/cJSON.h>
#include <stdio.h>

#include "eigenalign.h"

/* Minimal option parser: "--name value", "--name=value" and "--flag". Every option a command reads
 * is marked used; cli_finish() rejects what is left, so typos never pass silently. An option given
 * twice is an error; a value that looks like an option ("--text --json") is refused as missing
 * (--text=--json passes it). */
typedef struct {
    const char *cmd;
    int argc;
    char **argv;
    unsigned char *used;
    int bad; /* set when a value failed to parse; the message is already printed */
} cli_args;

void cli_args_init(cli_args *a, const char *cmd, int argc, char **argv);
void cli_args_free(cli_args *a);
int cli_has(cli_args *a, const char *name); /* flag present */
const char *cli_str(cli_args *a, const char *name, const char *def);
long cli_long(cli_args *a, const char *name, long def, long min, long max);
double cli_double(cli_args *a, const char *name, double def, double min, double max);
/* 0 when every argument was used and parsed; otherwise prints why and returns 2. */
int cli_finish(cli_args *a);
int cli_wants_help(int argc, char **argv);

/* Print "eigenalign CMD: error: ..." on stderr; returns 1 for use as an exit status. */
int cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, appending ea_last_error(). */
int cli_fail_status(const char *cmd, ea_status st);

/* s[0..n) as valid UTF-8 (malloc'd, NUL-terminated): each maximal invalid subpart becomes U+FFFD,
 * as Python's bytes.decode(errors="replace"); *valid (may be NULL) says whether s was valid. */
char *cli_utf8_sanitize(const char *s, size_t n, int *valid);
/* Print JSON to stdout (pretty unless compact), always valid UTF-8, and free it. */
void cli_print_json(cJSON *j);
/* Add a double that may be non-finite (JSON has no NaN: written as null). */
cJSON *cli_add_number(cJSON *obj, const char *key, double v);

/* Before any work: every output (NULL ones skipped; out_flags name them) must be a usable path (not
 * empty, not a directory, not too long, in an existing directory) and must not be the same file as
 * an input, a model directory's files, or another output. 0; 1 (a path that cannot be written) or 2
 * (empty, or the same file as another path) with the error printed. */
int cli_check_outputs(const char *cmd, const char *const *model_dirs, int n_dirs, const char *const *inputs,
                      int n_in, const char *const *outputs, const char *const *out_flags, int n_out);

const char *cli_default_model(void);
const char *cli_default_calib(void);
ea_status cli_load_model(const char *dir, ea_model **m, ea_tokenizer **t);
/* Read and tokenize a text file (empty or unreadable text is an error); keep at most
 * max_tokens ids when max_tokens > 0. */
ea_status cli_load_text_ids(const ea_tokenizer *t, const char *path, size_t max_tokens, int **ids, size_t *n);

/* Progress on stderr: "stage [#####.....] done/total" (only when stderr is a terminal, or when
 * EA_PROGRESS=1); cli_progress_done ends the line. An ea_progress_fn (user unused), so it is what
 * the CLI hands to every long-running library call. */
void cli_progress(void *user, const char *label, size_t done, size_t total);
void cli_progress_done(void);

/* ESAP commands (esap_pair.c). Default split of the anchors into training and held-out pairs. */
#define ESAP_DEFAULT_TRAIN 5000
#define ESAP_DEFAULT_TEST 2000
#define ESAP_MAX_LIST 32 /* longest --ranks / --anchor-counts list */

/* --text, --max-tokens, --ctx (read in that order) into src, progress to cli_progress; src->repr is
 * left zero for ea_esap_repr_parse. */
void esap_source_args(cli_args *a, ea_esap_source *src);
/* "8,16,32": up to max values, each in [lo, hi]; the count, or -1 when malformed. */
int esap_parse_list(const char *s, int *out, int max, int lo, int hi);
/* Ranks from --ranks s (NULL: 4, 8, 16, ... below kmax, then kmax), at most ESAP_MAX_LIST. The
 * count, or -1 with the error printed. */
int esap_ranks(const char *cmd, const char *s, int kmax, int *ranks);

/* Two models, their tokenizers, the anchors they share and each side's eigenbasis: what align and
 * message hold for a run. esap_pair_close frees whatever was opened, after any failure too. */
/* --pairs: how the two models' representations are paired. ids: shared token bytes (default);
 * text: shared words of the text (cross-tokenizer); none: W fitted with no pairs (anchor-free),
 * the id pairs only score it. */
typedef enum { ESAP_PAIRS_IDS = 0, ESAP_PAIRS_TEXT = 1, ESAP_PAIRS_NONE = 2 } esap_pairs_mode;
/* Parse --pairs (NULL: ids); -1 with the error printed. */
int esap_pairs_parse(const char *cmd, const char *s);
const char *esap_pairs_name(int mode);
typedef struct {
    ea_esap_source src; /* with the parsed representation */
    int pairs;          /* esap_pairs_mode */
    ea_model *ma, *mb;
    ea_tokenizer *ta, *tb;
    ea_esap_anchors an;
    ea_esap_basis *ba, *bb;
} esap_pair;
/* Parse repr, load both models with their tokenizers, build the anchors. */
ea_status esap_pair_open(esap_pair *p, const char *dir_a, const char *dir_b, const char *repr,
                         const ea_esap_source *src, int pairs);
/* Mutual k-NN (k = EA_ESAP_MKNN_K, EA_ESAP_MKNN_PERMS permutations) of the anchors rows[0..m),
 * each side centred on its anchor mean. */
ea_status esap_pair_mknn(const esap_pair *p, const int *rows, int m, uint64_t seed, ea_esap_mknn *out);
/* Add a mutual_knn object (value, null {mean, sd, n}, p_value, chance, k, items) to o. */
void esap_mknn_json(cJSON *o, const ea_esap_mknn *m);
/* Default (0) and check --anchors and --test against the anchors: 0, or 1 with the error printed. */
int esap_pair_split(const esap_pair *p, const char *cmd, const char *repr, long *n_train, long *n_test);
/* Each side's eigenbasis, fitted on all its anchor vectors. */
ea_status esap_pair_fit_bases(esap_pair *p);
void esap_pair_close(esap_pair *p);

/* Commands: each takes argv after the command name (argv[0] is the command). */
int cmd_tokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_analyze(int argc, char **argv);
int cmd_budget(int argc, char **argv);
int cmd_fit(int argc, char **argv);
int cmd_compress(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench_memory(int argc, char **argv);
int cmd_handshake(int argc, char **argv);
int cmd_align(int argc, char **argv);
int cmd_message(int argc, char **argv);

#endif
