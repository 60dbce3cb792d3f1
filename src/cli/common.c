/* Argument parsing, errors, JSON printing, model/text loading, progress for the CLI. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"

void cli_args_init(cli_args *a, const char *cmd, int argc, char **argv) {
    a->cmd = cmd;
    a->argc = argc;
    a->argv = argv;
    a->used = calloc((size_t)argc + 1, 1);
    a->bad = 0;
    if (argc > 0) a->used[0] = 1;
}

void cli_args_free(cli_args *a) { free(a->used); a->used = NULL; }

/* "--name" or "--name=value" (*inline_value set) at argv[i]. */
static int opt_at(const cli_args *a, int i, const char *name, const char **inline_value) {
    size_t n = strlen(name);
    if (strncmp(a->argv[i], name, n)) return 0;
    if (a->argv[i][n] == 0) return 1;
    if (a->argv[i][n] == '=' && inline_value) {
        *inline_value = a->argv[i] + n + 1;
        return 1;
    }
    return 0;
}

/* The option's position, or -1; an option given twice is an error (which one was meant?). Values
 * taken by earlier options are skipped, so "--prompt --ctx" does not count as a --ctx. */
static int find_opt(cli_args *a, const char *name, const char **inline_value) {
    int found = -1;
    for (int i = 1; i < a->argc; i++) {
        if (i > 1 && a->used[i - 1] == 2 && a->used[i]) continue; /* the value of an earlier option */
        const char *iv = NULL;
        if (!opt_at(a, i, name, inline_value ? &iv : NULL)) continue;
        if (found >= 0) {
            cli_error(a->cmd, "option %s is given twice", name);
            a->bad = 1;
            a->used[i] = 1;
            if (inline_value && !iv && i + 1 < a->argc && a->argv[i + 1][0] != '-') a->used[i + 1] = 1;
            continue;
        }
        found = i;
        if (inline_value) *inline_value = iv;
    }
    return found;
}

int cli_has(cli_args *a, const char *name) {
    int i = find_opt(a, name, NULL);
    if (i < 0) return 0;
    a->used[i] = 1;
    return 1;
}

const char *cli_str(cli_args *a, const char *name, const char *def) {
    const char *iv = NULL;
    int i = find_opt(a, name, &iv);
    if (i < 0) return def;
    if (iv) { /* --name=value: the value may be anything, "--json" included */
        a->used[i] = 1;
        return iv;
    }
    a->used[i] = 2; /* an option whose next argument is its value */
    const char *v = i + 1 < a->argc ? a->argv[i + 1] : NULL;
    /* "--text --json" is a missing value, not the text "--json": write --text=--json for that. */
    if (!v || (v[0] == '-' && v[1] == '-' && v[2] != 0)) {
        if (v) cli_error(a->cmd, "option %s needs a value, not the option '%s' (write %s=%s for that value)", name, v,
                         name, v);
        else cli_error(a->cmd, "option %s needs a value", name);
        a->bad = 1;
        return def;
    }
    a->used[i + 1] = 1;
    return v;
}

long cli_long(cli_args *a, const char *name, long def, long min, long max) {
    const char *s = cli_str(a, name, NULL);
    if (!s) return def;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        cli_error(a->cmd, "option %s: '%s' is not an integer in [%ld, %ld]", name, s, min, max);
        a->bad = 1;
        return def;
    }
    return v;
}

double cli_double(cli_args *a, const char *name, double def, double min, double max) {
    const char *s = cli_str(a, name, NULL);
    if (!s) return def;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < min || v > max) {
        cli_error(a->cmd, "option %s: '%s' is not a number in [%g, %g]", name, s, min, max);
        a->bad = 1;
        return def;
    }
    return v;
}

int cli_finish(cli_args *a) {
    int rc = a->bad ? 2 : 0;
    for (int i = 1; i < a->argc; i++)
        if (!a->used[i]) {
            cli_error(a->cmd, "unknown argument '%s' (see --help)", a->argv[i]);
            rc = 2;
        }
    return rc;
}

/* --help/-h anywhere except right after a free-text option: "--prompt --help" is then refused as
 * a missing value (cli_str), and --prompt=--help is the text "--help". */
int cli_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            const char *prev = i > 1 ? argv[i - 1] : "";
            if (!strcmp(prev, "--prompt") || !strcmp(prev, "--text")) continue;
            return 1;
        }
    return 0;
}

int cli_error(const char *cmd, const char *fmt, ...) {
    /* Arguments are quoted back (a file name may hold ESC sequences): escaped like library errors. */
    char msg[2048], esc[4 * sizeof msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ea_escape_text(esc, sizeof esc, msg);
    fprintf(stderr, "eigenalign %s: error: %s\n", cmd, esc);
    return 1;
}

int cli_fail_status(const char *cmd, ea_status st) {
    return cli_error(cmd, "%s (%s)", ea_last_error(), ea_status_name(st));
}

/* Bytes of the valid UTF-8 sequence at s[0..n), or -(length of the maximal invalid subpart), as
 * Python's decode(errors="replace") counts them (one U+FFFD per subpart). */
static long utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t need = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (!need) return -1;
    for (size_t i = 1; i < need; i++) {
        unsigned lo = 0x80, hi = 0xbf;
        if (i == 1) {
            if (c == 0xe0) lo = 0xa0;
            else if (c == 0xed) hi = 0x9f;
            else if (c == 0xf0) lo = 0x90;
            else if (c == 0xf4) hi = 0x8f;
        }
        if (i >= n || s[i] < lo || s[i] > hi) return -(long)i;
    }
    return (long)need;
}

char *cli_utf8_sanitize(const char *s, size_t n, int *valid) {
    char *out = malloc(3 * n + 1), *o = out;
    if (valid) *valid = 1;
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        long k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k > 0) {
            memcpy(o, s + i, (size_t)k);
            o += k;
            i += (size_t)k;
        } else {
            memcpy(o, "\xef\xbf\xbd", 3); /* U+FFFD */
            o += 3;
            i += (size_t)-k;
            if (valid) *valid = 0;
        }
    }
    *o = 0;
    return out;
}

void cli_print_json(cJSON *j) {
    char *raw = cJSON_Print(j);
    /* JSON must be UTF-8: strings taken from files or from generated bytes may not be (the syntax
     * itself is ASCII, so only string contents change). */
    char *s = raw ? cli_utf8_sanitize(raw, strlen(raw), NULL) : NULL;
    free(raw);
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        free(s);
    }
    cJSON_Delete(j);
}

cJSON *cli_add_number(cJSON *obj, const char *key, double v) {
    if (!isfinite(v)) return cJSON_AddNullToObject(obj, key);
    return cJSON_AddNumberToObject(obj, key, v);
}

const char *cli_default_model(void) {
    const char *e = getenv("EA_MODEL");
    return (e && *e) ? e : EA_DEFAULT_MODEL_DIR;
}

const char *cli_default_calib(void) { return EA_DEFAULT_CALIB; }

ea_status cli_load_model(const char *dir, ea_model **m, ea_tokenizer **t) {
    *m = NULL;
    if (t) *t = NULL;
    ea_status st = ea_model_load(dir, m);
    if (st) return st;
    if (t && (st = ea_tokenizer_load_dir(dir, t))) {
        ea_model_free(*m);
        *m = NULL;
    }
    /* A tokenizer.json with ids past the embedding belongs to another model: refuse before any
     * work. (GPT-2's vocab.json keeps its old contract: the tiny test models pair it with a
     * 256-row embedding, and an id outside the model is refused when it occurs.) */
    if (t && !st && ea_tokenizer_is_json(*t) &&
        (st = ea_tokenizer_check_vocab(*t, ea_model_config(*m)->vocab_size, dir))) {
        ea_tokenizer_free(*t);
        *t = NULL;
        ea_model_free(*m);
        *m = NULL;
    }
    return st;
}

/* Text files above this are refused: the tools analyse corpora, not dumps. */
#define CLI_MAX_TEXT_BYTES ((size_t)1 << 30)

ea_status cli_load_text_ids(const ea_tokenizer *t, const char *path, size_t max_tokens, int **ids, size_t *n) {
    char *text;
    size_t len;
    *ids = NULL;
    *n = 0;
    ea_status st = ea_read_file(path, CLI_MAX_TEXT_BYTES, &text, &len);
    if (st) return st;
    if (len == 0) {
        free(text);
        return ea_error(EA_ERR_ARG, "%s: text is empty", path);
    }
    st = ea_tokenizer_encode_max(t, text, len, 0, max_tokens, ids, n); /* no work past --max-tokens */
    free(text);
    if (st) return st;
    if (*n == 0) return ea_error(EA_ERR_ARG, "%s: text has no tokens", path);
    if (max_tokens > 0 && *n > max_tokens) *n = max_tokens;
    return EA_OK;
}

static int progress_on = -1;
static int progress_active;

void cli_progress(void *user, const char *label, size_t done, size_t total) {
    if (progress_on < 0) {
        const char *e = getenv("EA_PROGRESS");
        progress_on = e ? atoi(e) != 0 : isatty(2);
    }
    if (!progress_on || total == 0) return;
    int width = 30, fill = (int)((double)done / (double)total * width);
    if (fill > width) fill = width;
    fprintf(stderr, "\r%-12s [", label);
    for (int i = 0; i < width; i++) fputc(i < fill ? '#' : '.', stderr);
    fprintf(stderr, "] %zu/%zu", done, total);
    fflush(stderr);
    progress_active = 1;
}

void cli_progress_done(void) {
    if (progress_active) fputc('\n', stderr);
    progress_active = 0;
}

/* Identity of a path for the same-file check: device and inode when it exists, else the
 * canonical directory plus the name (two spellings of one new file compare equal). */
typedef struct {
    int exists, regular;
    dev_t dev;
    ino_t ino;
    char *canon;
} path_id;

static void path_identity(const char *p, path_id *id) {
    memset(id, 0, sizeof *id);
    struct stat sb;
    if (stat(p, &sb) == 0) {
        id->exists = 1;
        id->regular = S_ISREG(sb.st_mode);
        id->dev = sb.st_dev;
        id->ino = sb.st_ino;
        return;
    }
    const char *slash = strrchr(p, '/');
    char *dir = slash ? strndup(p, slash == p ? 1 : (size_t)(slash - p)) : strdup(".");
    char *real = dir ? realpath(dir, NULL) : NULL;
    const char *base = slash ? slash + 1 : p;
    if (real) {
        size_t n = strlen(real) + strlen(base) + 2;
        id->canon = malloc(n);
        if (id->canon) snprintf(id->canon, n, "%s/%s", real, base);
    }
    free(real);
    free(dir);
}

static int same_path(const path_id *a, const path_id *b) {
    if (a->exists && b->exists) return a->regular && b->regular && a->dev == b->dev && a->ino == b->ino;
    if (!a->exists && !b->exists) return a->canon && b->canon && !strcmp(a->canon, b->canon);
    return 0;
}

int cli_check_outputs(const char *cmd, const char *const *model_dirs, int n_dirs, const char *const *inputs,
                      int n_in, const char *const *outputs, const char *const *out_flags, int n_out) {
    static const char *const model_files[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                                              "vocab.json", "merges.txt", "tokenizer.json"};
    enum { N_MF = sizeof model_files / sizeof *model_files };
    int n_all = n_in + n_dirs * N_MF;
    path_id *in = calloc((size_t)n_all + 1, sizeof *in), *out = calloc((size_t)n_out + 1, sizeof *out);
    const char **in_names = calloc((size_t)n_all + 1, sizeof *in_names);
    char **owned = calloc((size_t)n_all + 1, sizeof *owned);
    int rc = 0, k = 0, io = 0; /* io: the path cannot be written (exit 1, as a failed open); else usage (2) */
    if (!in || !out || !in_names || !owned) {
        rc = cli_error(cmd, "out of memory");
        goto done;
    }
    for (int i = 0; i < n_in; i++)
        if (inputs[i] && strcmp(inputs[i], "-")) in_names[k++] = inputs[i];
    for (int d = 0; d < n_dirs; d++)
        for (int f = 0; model_dirs[d] && f < N_MF; f++) {
            size_t n = strlen(model_dirs[d]) + strlen(model_files[f]) + 2;
            if ((owned[k] = malloc(n)) == NULL) continue;
            snprintf(owned[k], n, "%s/%s", model_dirs[d], model_files[f]);
            in_names[k] = owned[k];
            k++;
        }
    for (int i = 0; i < k; i++) path_identity(in_names[i], &in[i]);
    for (int o = 0; o < n_out && !rc; o++) {
        const char *p = outputs[o];
        if (!p) continue;
        if (!*p) {
            rc = cli_error(cmd, "%s: the output path is empty", out_flags[o]);
            break;
        }
        if (strlen(p) >= PATH_MAX) {
            rc = cli_error(cmd, "%s: output path of %zu bytes: %s", out_flags[o], strlen(p), strerror(ENAMETOOLONG));
            io = 1;
            break;
        }
        struct stat sb;
        if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            rc = cli_error(cmd, "%s %s: is a directory", out_flags[o], p);
            io = 1;
            break;
        }
        path_identity(p, &out[o]);
        if (!out[o].exists && !out[o].canon) {
            rc = cli_error(cmd, "%s %s: its directory does not exist or cannot be read", out_flags[o], p);
            io = 1;
            break;
        }
        for (int i = 0; i < k && !rc; i++)
            if (same_path(&out[o], &in[i]))
                rc = cli_error(cmd, "%s %s is the same file as the input %s: refusing to overwrite an input",
                               out_flags[o], p, in_names[i]);
        for (int q = 0; q < o && !rc; q++)
            if (outputs[q] && same_path(&out[o], &out[q]))
                rc = cli_error(cmd, "%s %s and %s %s are the same file", out_flags[q], outputs[q], out_flags[o], p);
    }
done:
    for (int i = 0; in && i < n_all; i++) free(in[i].canon);
    for (int o = 0; out && o < n_out; o++) free(out[o].canon);
    for (int i = 0; owned && i < n_all; i++) free(owned[i]);
    free(owned);
    free(in_names);
    free(in);
    free(out);
    return rc ? (io ? 1 : 2) : 0;
}
