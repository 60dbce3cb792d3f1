/* Hostile inputs: every case of tests/hostile/cases.json (made by tests/hostile/make_hostile.py)
 * must make the CLI fail cleanly: non-zero exit, no signal, no sanitizer report, nothing on
 * stdout, and a message naming the file and the problem. Two control cases (the valid tiny
 * model, single-file and sharded) must succeed, so each failure is due to the one thing its case
 * breaks. The loaders are also called in-process on the same files, and a NaN injected into one
 * layer's activations must be reported with that layer. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#define MAX_CASE_FILES 8

static cJSON *load_manifest(void) {
    char *text = NULL;
    size_t n = 0;
    ea_status st = ea_read_file(TEST_HOSTILE_DIR "/cases.json", 1 << 20, &text, &n);
    if (st) fail_msg("%s", ea_last_error());
    cJSON *j = cJSON_ParseWithLength(text, n);
    free(text);
    if (!j) fail_msg("tests/hostile/cases.json is not JSON (rerun make_hostile.py)");
    return j;
}

static int copy_file(const char *src, const char *dst) {
    char *data = NULL;
    size_t n = 0;
    if (ea_read_file(src, 64u << 20, &data, &n)) return -1;
    int rc = test_write_file(dst, data, n);
    free(data);
    return rc;
}

/* Where a linked (unbroken) file comes from: the tiny valid model for the model files, the
 * bundled gpt2-micro for the tokenizer. */
static const char *link_source(const char *fname, char *buf, size_t cap) {
    if (!strcmp(fname, "vocab.json") || !strcmp(fname, "merges.txt"))
        snprintf(buf, cap, "%s/%s", TEST_MODEL_DIR, fname);
    else
        snprintf(buf, cap, "%s/_base/%s", TEST_HOSTILE_DIR, fname);
    return buf;
}

/* Lay out ROOT/NAME: copies of the case's own files plus symlinks for the files it keeps. */
static void build_case_dir(const char *root, const cJSON *c) {
    const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
    char dir[1024], src[2048], dst[2048];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    assert_int_equal(mkdir(dir, 0755), 0);
    char casedir[1024];
    snprintf(casedir, sizeof casedir, "%s/%s", TEST_HOSTILE_DIR, name);
    DIR *d = opendir(casedir);
    if (!d) fail_msg("%s: %s (rerun tests/hostile/make_hostile.py)", casedir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue; /* ".", "..", ".keep" */
        snprintf(src, sizeof src, "%s/%s", casedir, e->d_name);
        snprintf(dst, sizeof dst, "%s/%s", dir, e->d_name);
        if (copy_file(src, dst)) fail_msg("cannot copy %s to %s", src, dst);
    }
    closedir(d);
    const cJSON *l;
    cJSON_ArrayForEach(l, cJSON_GetObjectItem(c, "symlinks")) {
        snprintf(dst, sizeof dst, "%s/%s", dir, l->string);
        if (symlink(l->valuestring, dst)) fail_msg("symlink %s: %s", dst, strerror(errno));
    }
    cJSON_ArrayForEach(l, cJSON_GetObjectItem(c, "links")) {
        snprintf(dst, sizeof dst, "%s/%s", dir, l->valuestring);
        if (symlink(link_source(l->valuestring, src, sizeof src), dst))
            fail_msg("symlink %s: %s", dst, strerror(errno));
    }
}

static int contains_nocase(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++)
        if (strncasecmp(p, needle, n) == 0) return 1;
    return n == 0;
}

/* s with every occurrence of from replaced by to (malloc'd). */
static char *replace_all(const char *s, const char *from, const char *to) {
    size_t nf = strlen(from), nt = strlen(to), count = 0;
    for (const char *p = s; (p = strstr(p, from)) != NULL; p += nf) count++;
    char *out = malloc(strlen(s) + count * nt + 1), *o = out;
    for (const char *p = s, *q; ; p = q + nf) {
        q = strstr(p, from);
        size_t n = q ? (size_t)(q - p) : strlen(p);
        memcpy(o, p, n);
        o += n;
        if (!q) break;
        memcpy(o, to, nt);
        o += nt;
    }
    *o = 0;
    return out;
}

static void first_line(const char *s, char *out, size_t cap) {
    size_t i = 0;
    while (s[i] && s[i] != '\n' && i + 1 < cap) {
        out[i] = s[i];
        i++;
    }
    out[i] = 0;
}

/* A byte that could drive a terminal (ESC, other C0 controls but newline, DEL). */
static int has_control_bytes(const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 && *p != '\n') || *p == 0x7f) return 1;
    return 0;
}

/* Run one case; returns 1 when it behaves as required, printing why not otherwise. */
static int run_case(const char *root, const cJSON *c) {
    const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    const cJSON *argv_j = cJSON_GetObjectItem(c, "argv");
    int argc = cJSON_GetArraySize(argv_j);
    const char **args = calloc((size_t)argc + 1, sizeof *args);
    char **owned = calloc((size_t)argc, sizeof *owned);
    for (int i = 0; i < argc; i++) {
        const char *a = cJSON_GetArrayItem(argv_j, i)->valuestring;
        const char *hole = strstr(a, "{dir}");
        if (hole) {
            size_t len = strlen(a) + strlen(dir);
            owned[i] = malloc(len);
            snprintf(owned[i], len, "%.*s%s%s", (int)(hole - a), a, dir, hole + 5);
            args[i] = owned[i];
        } else {
            args[i] = a;
        }
    }
    char *out = NULL, *err = NULL;
    int rc = test_run_cli(&out, &err, args);
    for (int i = 0; i < argc; i++) free(owned[i]);
    free(owned);
    free(args);

    int ok = 1;
    char line[400];
    first_line(err, line, sizeof line);
    int expect_ok = cJSON_IsTrue(cJSON_GetObjectItem(c, "expect_ok"));
    if (strstr(err, "Sanitizer") || strstr(err, "runtime error:")) {
        printf("  FAIL %-28s sanitizer report:\n%s\n", name, err);
        ok = 0;
    } else if (rc < 0) {
        printf("  FAIL %-28s killed by a signal (crash); stderr: %s\n", name, line);
        ok = 0;
    } else if (has_control_bytes(err)) {
        printf("  FAIL %-28s raw control bytes on stderr (must be escaped): %s\n", name, line);
        ok = 0;
    } else if (expect_ok) {
        if (rc != 0 || !*out) {
            printf("  FAIL %-28s control case must succeed: exit %d, stderr: %s\n", name, rc, line);
            ok = 0;
        }
    } else if (rc == 0 || rc >= 126) {
        printf("  FAIL %-28s exit %d (want a non-zero exit from the tool)\n", name, rc);
        ok = 0;
    } else if (*out) {
        printf("  FAIL %-28s failed but wrote to stdout: %.200s\n", name, out);
        ok = 0;
    } else {
        /* The case folder's own name must not satisfy a phrase: match with it blanked out. */
        char *msg = replace_all(err, dir, "<dir>");
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "expect")) {
            if (!contains_nocase(msg, e->valuestring)) {
                printf("  FAIL %-28s stderr lacks \"%s\": %s\n", name, e->valuestring, line);
                ok = 0;
            }
        }
        free(msg);
    }
    if (ok) printf("  ok   %-28s exit %d  %s\n", name, rc, expect_ok ? "(control)" : line);
    free(out);
    free(err);
    return ok;
}

static void test_cli_rejects_every_hostile_case(void **state) {
    (void)state;
    cJSON *m = load_manifest();
    const cJSON *cases = cJSON_GetObjectItem(m, "cases");
    char *root = test_tmpdir();
    assert_non_null(root);
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) build_case_dir(root, c);
    int n = 0, hostile = 0, failed = 0;
    cJSON_ArrayForEach(c, cases) {
        n++;
        if (!cJSON_IsTrue(cJSON_GetObjectItem(c, "expect_ok"))) hostile++;
        if (!run_case(root, c)) failed++;
    }
    printf("hostile corpus: %d cases (%d hostile), %d failed\n", n, hostile, failed);
    test_rmdir(root);
    free(root);
    cJSON_Delete(m);
    assert_true(hostile >= 30);
    assert_int_equal(failed, 0);
}

/* The message must name the file; the status must be a failure. */
static int check_api_failure(const char *what, const char *path, ea_status st) {
    const char *msg = ea_last_error();
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (st == EA_OK) {
        printf("  FAIL %-28s %s accepted %s\n", what, base, path);
        return 0;
    }
    if (!strstr(msg, base)) {
        printf("  FAIL %-28s message does not name %s: %s\n", what, base, msg);
        return 0;
    }
    printf("  ok   %-28s %s: %s\n", what, ea_status_name(st), msg);
    return 1;
}

static int expects(const cJSON *c, const char *phrase) {
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(c, "expect")) if (!strcmp(e->valuestring, phrase)) return 1;
    return 0;
}

/* In-process, so the sanitizer build checks the loaders themselves: every broken
 * safetensors file must be refused by ea_st_open, every broken config by ea_config_load. */
static void test_loaders_reject_hostile_files_in_process(void **state) {
    (void)state;
    cJSON *m = load_manifest();
    const cJSON *c;
    int checked = 0, failed = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(m, "cases")) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        char path[1200];
        if (cJSON_GetObjectItem(c, "symlinks")) continue; /* made at test time only */
        if (!strncmp(name, "st_", 3)) {
            snprintf(path, sizeof path, "%s/%s/model.safetensors", TEST_HOSTILE_DIR, name);
            ea_st_file *f = NULL;
            ea_status st = ea_st_open(path, &f);
            if (st == EA_OK) ea_st_close(f);
            failed += !check_api_failure(name, path, st);
            checked++;
        } else if (!strncmp(name, "cfg_", 4) && expects(c, "config.json")) {
            /* (A case that blames another file is a valid config on its own.) */
            snprintf(path, sizeof path, "%s/%s/config.json", TEST_HOSTILE_DIR, name);
            ea_config cfg;
            failed += !check_api_failure(name, path, ea_config_load(path, &cfg));
            checked++;
        }
    }
    printf("in-process loader checks: %d, failed %d\n", checked, failed);
    cJSON_Delete(m);
    assert_true(checked >= 30);
    assert_int_equal(failed, 0);
}

/* The valid tiny model opens and its tensors convert; guards the corpus generator itself. */
static void test_base_model_is_valid(void **state) {
    (void)state;
    ea_model *model = NULL;
    ea_status st = ea_model_load(TEST_HOSTILE_DIR "/_base", &model);
    if (st) fail_msg("tests/hostile/_base: %s", ea_last_error());
    const ea_config *cfg = ea_model_config(model);
    printf("tiny base model: n_layer %d n_head %d n_embd %d vocab %d\n", cfg->n_layer, cfg->n_head, cfg->n_embd,
           cfg->vocab_size);
    ea_model_free(model);
}

typedef struct {
    int layer;
    int fired;
} nan_hook;

static ea_status inject_nan(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld) {
    nan_hook *h = user;
    (void)pos0;
    (void)ld;
    if (site == EA_SITE_V && layer == h->layer && n > 0 && d > 0) {
        x[0] = NAN;
        h->fired = 1;
    }
    return 0;
}

/* A NaN appearing inside block 2 (in its attention values) must stop the forward pass with an
 * error naming layer 2, not flow into the logits. */
static void test_nan_activation_is_reported_with_layer(void **state) {
    (void)state;
    ea_model *model = NULL;
    if (ea_model_load(TEST_MODEL_DIR, &model)) fail_msg("%s", ea_last_error());
    const ea_config *cfg = ea_model_config(model);
    assert_true(cfg->n_layer > 2);
    ea_kvcache *cache = NULL;
    assert_int_equal(ea_kvcache_init(&cache, cfg, 16, NULL), EA_OK);
    float *logits = malloc(sizeof(float) * (size_t)cfg->vocab_size);
    const int tokens[4] = {464, 2068, 7586, 21831};

    nan_hook h = {2, 0};
    ea_model_set_capture(model, inject_nan, &h);
    ea_model_set_check_finite(model, 1);
    ea_status st = ea_model_forward(model, cache, tokens, 4, logits, 0);
    printf("NaN in layer 2 values: status %s, message: %s\n", ea_status_name(st), ea_last_error());
    assert_true(h.fired);
    assert_int_equal(st, EA_ERR_NUMERIC);
    assert_non_null(strstr(ea_last_error(), "layer 2"));

    /* With the check off the NaN reaches the logits: the check is what stops it. */
    ea_kvcache_reset(cache);
    ea_model_set_check_finite(model, 0);
    h.fired = 0;
    st = ea_model_forward(model, cache, tokens, 4, logits, 0);
    int nonfinite = 0;
    for (int i = 0; i < cfg->vocab_size; i++) nonfinite += !isfinite(logits[i]);
    printf("check off: status %s, %d non-finite logits of %d\n", ea_status_name(st), nonfinite, cfg->vocab_size);
    assert_int_equal(st, EA_OK);
    assert_true(nonfinite > 0);

    free(logits);
    ea_kvcache_free(cache);
    ea_model_free(model);
}


/* ---- a hostile environment (issue 20): outputs that are not regular files, stdout that cannot
 * be written, outputs that are inputs, FIFOs as inputs. Each run has a deadline: a hang fails. */

#define RUN_TIMEOUT_S 300.0 /* generous: the machine may be loaded; a hang never ends */
#define RUN_HUNG (-1000)

/* Run the CLI with stdout on out_fd (-1: closed), stderr captured into *err (malloc'd). Returns the
 * exit status, -signal when killed by a signal, RUN_HUNG when it ran past the deadline. */
static int run_env(const char *const *args, int out_fd, char **err, double timeout_s) {
    char efile[] = "/tmp/ea_hostile_errXXXXXX";
    int efd = mkstemp(efile);
    assert_true(efd >= 0);
    unlink(efile);
    size_t na = 0;
    while (args[na]) na++;
    const char **argv = calloc(na + 2, sizeof *argv);
    argv[0] = EA_CLI_PATH;
    for (size_t i = 0; i < na; i++) argv[i + 1] = args[i];
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(efd, 2);
        if (out_fd >= 0) dup2(out_fd, 1);
        else close(1);
        execv(EA_CLI_PATH, (char *const *)argv);
        _exit(127);
    }
    free(argv);
    int status = 0, hung = 0;
    double t0 = ea_time_now();
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (ea_time_now() - t0 > timeout_s) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            hung = 1;
            break;
        }
        usleep(2000);
    }
    off_t n = lseek(efd, 0, SEEK_END);
    char *e = calloc((size_t)n + 1, 1);
    if (n > 0 && pread(efd, e, (size_t)n, 0) < 0) e[0] = 0;
    close(efd);
    if (err) *err = e;
    else free(e);
    if (hung) return RUN_HUNG;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

static int run_quiet(const char *const *args, char **err) {
    int null = open("/dev/null", O_WRONLY);
    int rc = run_env(args, null, err, RUN_TIMEOUT_S);
    close(null);
    return rc;
}

/* A character device at dir/name: mknod as root, else a symlink to the system's node. */
static void make_device(const char *dir, const char *name, int minor, const char *sys) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (mknod(p, S_IFCHR | 0666, makedev(1, minor)) != 0) assert_int_equal(symlink(sys, p), 0);
}

static int is_char_device(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISCHR(sb.st_mode);
}

/* Item 1: a device or a link as output is written through / followed, never replaced. */
static void test_outputs_that_are_not_regular_files(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char null_p[1024], full_p[1024], link_p[1024], real_p[1024], out_link[1024];
    make_device(dir, "null", 3, "/dev/null");
    make_device(dir, "full", 7, "/dev/full");
    snprintf(null_p, sizeof null_p, "%s/null", dir);
    snprintf(full_p, sizeof full_p, "%s/full", dir);
    snprintf(link_p, sizeof link_p, "%s/stdout", dir);
    assert_int_equal(symlink("/proc/self/fd/1", link_p), 0);
    snprintf(real_p, sizeof real_p, "%s/real.svg", dir);
    snprintf(out_link, sizeof out_link, "%s/out.svg", dir);
    assert_int_equal(symlink("real.svg", out_link), 0); /* dangling until written through */
    char *err = NULL;
    const char *svg_null[] = {"analyze", "--text", "data/calib.txt", "--sites", "hidden", "--max-tokens", "64",
                              "--svg", null_p, NULL};
    int rc = run_quiet(svg_null, &err);
    printf("analyze --svg <char device 1,3>: exit %d, still a device: %d\n", rc, is_char_device(null_p));
    assert_int_equal(rc, 0);
    assert_true(is_char_device(null_p));
    free(err);
    const char *fit_full[] = {"fit", "--text", "data/calib.txt", "--rank", "4", "--max-tokens", "64", "-o", full_p, NULL};
    rc = run_quiet(fit_full, &err);
    printf("fit -o <char device 1,7>: exit %d, still a device: %d, stderr: %s", rc, is_char_device(full_p), err);
    assert_int_equal(rc, 1);
    assert_true(is_char_device(full_p));
    assert_non_null(strstr(err, "No space left on device"));
    free(err);
    /* Through the link to /proc/self/fd/1 the SVG reaches the captured stdout; the link stays. */
    char ofile[] = "/tmp/ea_hostile_outXXXXXX";
    int ofd = mkstemp(ofile);
    unlink(ofile);
    const char *svg_stdout[] = {"analyze", "--text", "data/calib.txt", "--sites", "hidden", "--max-tokens", "64",
                                "--svg", link_p, NULL};
    rc = run_env(svg_stdout, ofd, &err, RUN_TIMEOUT_S);
    struct stat sb;
    off_t got = lseek(ofd, 0, SEEK_END);
    close(ofd);
    printf("analyze --svg <link to /proc/self/fd/1>: exit %d, %lld bytes on stdout\n", rc, (long long)got);
    assert_int_equal(rc, 0);
    assert_int_equal(lstat(link_p, &sb), 0);
    assert_true(S_ISLNK(sb.st_mode));
    assert_true(got > 1000);
    free(err);
    /* A symlinked output: the file it names is written, the link stays a link. */
    const char *svg_link[] = {"analyze", "--text", "data/calib.txt", "--sites", "hidden", "--max-tokens", "64",
                              "--svg", out_link, NULL};
    rc = run_quiet(svg_link, &err);
    assert_int_equal(rc, 0);
    assert_int_equal(lstat(out_link, &sb), 0);
    assert_true(S_ISLNK(sb.st_mode));
    assert_int_equal(stat(real_p, &sb), 0);
    printf("analyze --svg <symlink>: exit %d, link kept, target %lld bytes\n", rc, (long long)sb.st_size);
    assert_true(S_ISREG(sb.st_mode) && sb.st_size > 1000);
    free(err);
    test_rmdir(dir);
    free(dir);
}

/* Item 2: results that cannot reach stdout fail the run. */
static void test_stdout_write_errors_fail(void **state) {
    (void)state;
    const char *tok[] = {"tokenize", "--text", "hello world", "--json", NULL};
    const char *ppl[] = {"perplexity", "--text", "data/calib.txt", "--max-tokens", "64", "--json", NULL};
    const char *fit[] = {"fit", "--text", "data/calib.txt", "--rank", "4", "--max-tokens", "64", "-o", "/dev/null", NULL};
    const char *const *cmds[] = {tok, ppl, fit};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        int full = open("/dev/full", O_WRONLY);
        assert_true(full >= 0);
        char *err = NULL;
        int rc = run_env(cmds[i], full, &err, RUN_TIMEOUT_S);
        close(full);
        printf("%s >/dev/full: exit %d, %s", cmds[i][0], rc, err);
        assert_int_equal(rc, 1);
        assert_non_null(strstr(err, "No space left on device"));
        free(err);
        rc = run_env(cmds[i], -1, &err, RUN_TIMEOUT_S);
        printf("%s >&-: exit %d, %s", cmds[i][0], rc, err);
        assert_int_equal(rc, 1);
        assert_non_null(strstr(err, "standard output"));
        free(err);
    }
}

/* Item 5: an output that is an input, or another output, is refused before anything runs. */
static void test_output_that_is_an_input_is_refused(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char text[1024], alias[1024], f[1024], f2[1024];
    snprintf(text, sizeof text, "%s/text.txt", dir);
    snprintf(alias, sizeof alias, "%s/./text.txt", dir);
    snprintf(f, sizeof f, "%s/curve.json", dir);
    snprintf(f2, sizeof f2, "%s/../%s/curve.json", dir, strrchr(dir, '/') + 1);
    static const char TEXT[] = "The quick brown fox jumps over the lazy dog.\n";
    assert_int_equal(test_write_file(text, TEXT, sizeof TEXT - 1), 0);
    char *err = NULL;
    const char *fit[] = {"fit", "--text", text, "--rank", "4", "-o", alias, NULL};
    int rc = run_quiet(fit, &err);
    printf("fit --text T -o T: exit %d, %s", rc, err);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(err, "same file"));
    char *now = NULL;
    size_t n = 0;
    assert_int_equal(ea_read_file(text, 1 << 20, &now, &n), EA_OK);
    assert_true(n == sizeof TEXT - 1 && !memcmp(now, TEXT, n));
    free(now);
    free(err);
    const char *ev[] = {"eval", "--text", text, "--kv", "q8", "--svg", f, "--curve-json", f2, NULL};
    rc = run_quiet(ev, &err);
    printf("eval --svg F --curve-json F: exit %d, %s", rc, err);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(err, "same file"));
    free(err);
    const char *model_out[] = {"fit", "--text", text, "--rank", "4", "-o", TEST_MODEL_DIR "/model.safetensors", NULL};
    rc = run_quiet(model_out, &err);
    printf("fit -o <the model's weights>: exit %d, %s", rc, err);
    assert_int_equal(rc, 2);
    free(err);
    test_rmdir(dir);
    free(dir);
}

/* Item 10: a FIFO given as any input is refused at once, never waited on. */
static void test_fifo_inputs_never_block(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char fifo[1024], model[1024], p[1200];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    assert_int_equal(mkfifo(fifo, 0644), 0);
    const char *files[] = {"config.json", "model.safetensors", "vocab.json", "merges.txt"};
    int cases = 0;
    for (size_t k = 0; k < 4; k++) { /* a model folder whose file k is a FIFO */
        snprintf(model, sizeof model, "%s/model%zu", dir, k);
        assert_int_equal(mkdir(model, 0755), 0);
        for (size_t i = 0; i < 4; i++) {
            snprintf(p, sizeof p, "%s/%s", model, files[i]);
            char src[1200];
            snprintf(src, sizeof src, "%s/%s", TEST_MODEL_DIR, files[i]);
            if (i == k) assert_int_equal(mkfifo(p, 0644), 0);
            else assert_int_equal(symlink(src, p), 0);
        }
        char *err = NULL;
        const char *gen[] = {"generate", "--model", model, "--prompt", "a", "-n", "1", NULL};
        int rc = run_env(gen, -1, &err, 20);
        printf("%s is a FIFO: exit %d, %s", files[k], rc, err);
        assert_true(rc > 0 && rc < 126);
        assert_non_null(strstr(err, "not a regular file"));
        free(err);
        cases++;
    }
    char kvspec[1100];
    snprintf(kvspec, sizeof kvspec, "file:%s", fifo);
    const char *t1[] = {"perplexity", "--text", fifo, NULL};
    const char *t2[] = {"eval", "--text", "data/calib.txt", "--max-tokens", "64", "--kv", kvspec, NULL};
    const char *t3[] = {"compress", "--compressor", fifo, "--text", "data/calib.txt", NULL};
    const char *t4[] = {"handshake", "--spectrum-a", fifo, NULL};
    const char *t5[] = {"tokenize", "--file", fifo, NULL};
    const char *t6[] = {"fit", "--text", fifo, "--rank", "2", "-o", "/dev/null", NULL};
    const char *const *cmds[] = {t1, t2, t3, t4, t5, t6};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        char *err = NULL;
        int rc = run_env(cmds[i], -1, &err, 20);
        printf("%s with a FIFO input: exit %d, %s", cmds[i][0], rc, err);
        assert_true(rc > 0 && rc < 126);
        assert_non_null(strstr(err, "not a regular file"));
        free(err);
        cases++;
    }
    printf("FIFO inputs: %d cases, none blocked\n", cases);
    test_rmdir(dir);
    free(dir);
}

/* Item 7: a model folder whose path leaves no room for "/model.safetensors" in 4096 bytes: the
 * error says the name is too long; it never opens a truncated name (a decoy file stands there). */
static void test_long_paths_are_never_truncated(void **state) {
    (void)state;
    char *root = test_tmpdir();
    size_t len = strlen(root);
    char *dir = malloc(8192);
    snprintf(dir, 8192, "%s", root);
    int fd = open(root, O_DIRECTORY | O_RDONLY);
    assert_true(fd >= 0);
    char comp[256];
    while (len < 4096 - 12) { /* leaves 11 bytes: "/model.safe" fits, "/config.json" does not */
        size_t n = 4096 - 12 - len - 1;
        if (n > 200) n = 200;
        if (n < 1) break;
        memset(comp, 'd', n);
        comp[n] = 0;
        assert_int_equal(mkdirat(fd, comp, 0755), 0);
        int next = openat(fd, comp, O_DIRECTORY | O_RDONLY);
        assert_true(next >= 0);
        close(fd);
        fd = next;
        len += 1 + n;
        strcat(dir, "/");
        strcat(dir, comp);
    }
    /* Decoys where a truncated "<dir>/model.safetensors" or "<dir>/config.json" would land. */
    int d1 = openat(fd, "model.safe", O_CREAT | O_WRONLY, 0644), d2 = openat(fd, "config.js", O_CREAT | O_WRONLY, 0644);
    close(d1);
    close(d2);
    close(fd);
    char *err = NULL;
    const char *gen[] = {"generate", "--model", dir, "--prompt", "a", "-n", "1", NULL};
    int rc = run_quiet(gen, &err);
    printf("model folder of %zu bytes: exit %d, ...%s", strlen(dir), rc, err + (strlen(err) > 160 ? strlen(err) - 160 : 0));
    assert_true(rc > 0 && rc < 126);
    assert_non_null(strstr(err, "too long"));
    free(err);
    ea_model *m = NULL;
    assert_int_not_equal(ea_model_load(dir, &m), EA_OK);
    assert_non_null(strstr(ea_last_error(), "too long"));
    free(dir);
    test_rmdir(root);
    free(root);
}

/* Item 13a: the loader runs in a 64 KB stack (ea_model_load's frame was 53 KB). */
static void test_load_in_a_small_stack(void **state) {
    (void)state;
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit rl = {64 << 10, 64 << 10};
        setrlimit(RLIMIT_STACK, &rl);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(EA_CLI_PATH, EA_CLI_PATH, "generate", "--prompt", "The", "-n", "2", (char *)NULL);
        _exit(127);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    printf("generate under ulimit -s 64: %s %d\n", WIFEXITED(status) ? "exit" : "signal",
           WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* Item 13b: a safetensors file truncated after it was opened is an error, never a SIGBUS: large
 * files (mapped) are converted with pread, small ones were read whole at open. */
static void test_truncated_while_open(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    const size_t sizes[] = {1000, (size_t)17 << 20}; /* 4 KB (read at open) and 68 MB (mapped) */
    for (int k = 0; k < 2; k++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/t%d.safetensors", dir, k);
        size_t n = sizes[k];
        float *v = malloc(n * sizeof *v);
        for (size_t i = 0; i < n; i++) v[i] = (float)(i % 1000);
        ea_st_writer *w = NULL;
        assert_int_equal(ea_st_writer_init(&w), EA_OK);
        int64_t shape[1] = {(int64_t)n};
        assert_int_equal(ea_st_writer_add(w, "x", EA_DTYPE_F32, 1, shape, v), EA_OK);
        uint16_t *h = malloc(n * 2);
        for (size_t i = 0; i < n; i++) h[i] = ea_f32_to_f16(v[i]);
        assert_int_equal(ea_st_writer_add(w, "y", EA_DTYPE_F16, 1, shape, h), EA_OK);
        assert_int_equal(ea_st_writer_save(w, path), EA_OK);
        ea_st_writer_free(w);
        ea_st_file *f = NULL;
        assert_int_equal(ea_st_open(path, &f), EA_OK);
        assert_int_equal(truncate(path, 4096), 0);
        float *dst = malloc(n * sizeof *dst);
        ea_status sx = ea_st_to_f32(f, ea_st_find(f, "x"), dst);
        ea_status sy = ea_st_to_f32(f, ea_st_find(f, "y"), dst);
        printf("%zu-byte file truncated to 4096 after open: x %s, y %s (%s)\n", n * 6, ea_status_name(sx),
               ea_status_name(sy), sy ? ea_last_error() : "snapshot read at open");
        if (k == 0) {
            assert_int_equal(sx, EA_OK); /* the bytes were read at open: a consistent snapshot */
            assert_int_equal(sy, EA_OK);
            for (size_t i = 0; i < n; i++) assert_true(dst[i] == v[i]);
        } else {
            assert_int_equal(sx, EA_ERR_IO);
            assert_int_equal(sy, EA_ERR_IO);
            assert_non_null(strstr(ea_last_error(), "truncated"));
        }
        ea_st_close(f);
        free(dst);
        free(v);
        free(h);
    }
    test_rmdir(dir);
    free(dir);
}

/* Item 9: under an address-space limit the tool fails cleanly ("out of memory") or succeeds; it
 * never spins (OpenBLAS retried its buffer forever, before main with the pthread build's pool). */
static void test_memory_limit_never_hangs(void **state) {
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    TEST_SKIP_PLATFORM("AddressSanitizer reserves terabytes of address space: ulimit -v cannot apply");
#else
    /* One BLAS: the OpenMP build of OpenBLAS when it is installed, never the pthread build beside it. */
    if (access("/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0", F_OK) == 0) {
        FILE *f = fopen("/proc/self/maps", "r");
        assert_non_null(f);
        char line[1024];
        int pthread_blas = 0, openmp_blas = 0;
        while (fgets(line, sizeof line, f)) {
            pthread_blas |= strstr(line, "openblas-pthread") != NULL;
            openmp_blas |= strstr(line, "openblas-openmp") != NULL;
        }
        fclose(f);
        printf("mapped: openblas-openmp %d, openblas-pthread %d\n", openmp_blas, pthread_blas);
        assert_true(openmp_blas);
        assert_false(pthread_blas);
    }
    const long limits_kb[] = {120000, 400000};
    for (int k = 0; k < 2; k++) {
        int ep[2];
        assert_int_equal(pipe(ep), 0);
        fflush(stdout);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            struct rlimit rl = {(rlim_t)limits_kb[k] << 10, (rlim_t)limits_kb[k] << 10};
            setrlimit(RLIMIT_AS, &rl);
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            dup2(ep[1], 2);
            execl(EA_CLI_PATH, EA_CLI_PATH, "perplexity", "--text", "data/calib.txt", "--max-tokens", "1024", "--ctx",
                  "512", (char *)NULL);
            _exit(127);
        }
        close(ep[1]);
        int status = 0, hung = 0;
        double t0 = ea_time_now();
        while (waitpid(pid, &status, WNOHANG) == 0) {
            if (ea_time_now() - t0 > RUN_TIMEOUT_S) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                hung = 1;
                break;
            }
            usleep(5000);
        }
        char err[2048] = "";
        ssize_t got = read(ep[0], err, sizeof err - 1);
        err[got > 0 ? got : 0] = 0;
        close(ep[0]);
        printf("perplexity under ulimit -v %ld: %s %d after %.1f s: %s", limits_kb[k], hung ? "HUNG, killed" :
               WIFEXITED(status) ? "exit" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
               ea_time_now() - t0, err);
        assert_false(hung);
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) != 0) {
            assert_int_equal(WEXITSTATUS(status), 1);
            assert_non_null(strstr(err, "out of memory"));
        }
    }
#endif
}

/* Strict UTF-8 check (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF). */
static int valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (!k || i + k > n) return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return 0;
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] > 0x9f) || (c == 0xf0 && s[i + 1] < 0x90) ||
            (c == 0xf4 && s[i + 1] > 0x8f))
            return 0;
        i += k;
    }
    return 1;
}

/* Item 3: greedy generation on gpt2-micro stops inside "…" (bytes e2 80): the JSON stays valid
 * UTF-8, "text" ends in U+FFFD and "text_hex" keeps the exact bytes. */
static void test_generate_json_is_always_utf8(void **state) {
    (void)state;
    const char *args[] = {"generate", "--prompt",
                          "She opened the letter slowly, and as she read, her face grew pale; for the words were",
                          "-n", "40", "--json", NULL};
    char *out = NULL, *err = NULL;
    int rc = test_run_cli(&out, &err, args);
    assert_int_equal(rc, 0);
    size_t n = strlen(out);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    const char *hex = cJSON_GetStringValue(cJSON_GetObjectItem(j, "text_hex"));
    const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(j, "text"));
    printf("generate --json: %zu bytes, valid UTF-8 %d, text ends \"%s\", text_hex ends %s\n", n,
           valid_utf8((const unsigned char *)out, n), text ? text + (strlen(text) > 12 ? strlen(text) - 12 : 0) : "?",
           hex ? hex + (strlen(hex) > 8 ? strlen(hex) - 8 : 0) : "(none)");
    assert_true(valid_utf8((const unsigned char *)out, n));
    assert_non_null(text);
    assert_non_null(hex);
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(j, "text_is_utf8")));
    size_t hl = strlen(hex), tl = strlen(text);
    assert_true(hl >= 4 && !strcmp(hex + hl - 4, "e280"));          /* generation stopped inside U+2026 */
    assert_true(tl >= 3 && !memcmp(text + tl - 3, "\xef\xbf\xbd", 3)); /* one U+FFFD for the broken pair */
    cJSON_Delete(j);
    free(out);
    free(err);
}

/* Item 11: --max-tokens bounds tokenization. encode_max gives exactly the first ids of the full
 * encoding and never touches the text past the pre-token that reached the bound: a 64 MB word
 * after it is not merged (it would take a minute and a gigabyte). */
static void test_max_tokens_bounds_tokenization(void **state) {
    (void)state;
    ea_tokenizer *t = NULL;
    assert_int_equal(ea_tokenizer_load_dir(TEST_MODEL_DIR, &t), EA_OK);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(ea_read_file(EA_SOURCE_DIR "/data/calib.txt", 1 << 26, &text, &len), EA_OK);
    int *all = NULL;
    size_t n_all = 0;
    assert_int_equal(ea_tokenizer_encode(t, text, len, 0, &all, &n_all), EA_OK);
    const size_t bounds[] = {1, 2, 7, 64, 1000, n_all, n_all + 5};
    for (size_t k = 0; k < sizeof bounds / sizeof *bounds; k++) {
        int *ids = NULL;
        size_t n = 0;
        assert_int_equal(ea_tokenizer_encode_max(t, text, len, 0, bounds[k], &ids, &n), EA_OK);
        assert_true(n >= (bounds[k] < n_all ? bounds[k] : n_all) && n <= n_all);
        assert_memory_equal(ids, all, n * sizeof *ids);
        free(ids);
    }
    /* "The cat sat." then one 64 MB word: with a bound of 3 the word is never pre-tokenized. */
    size_t big = (size_t)64 << 20;
    char *huge = malloc(big + 16);
    memcpy(huge, "The cat sat. ", 13);
    for (size_t i = 13; i < big; i++) huge[i] = (char)('a' + (i * 2654435761u >> 13) % 10);
    int *ids = NULL;
    size_t n = 0;
    double t0 = ea_time_now();
    assert_int_equal(ea_tokenizer_encode_max(t, huge, big, 0, 3, &ids, &n), EA_OK);
    printf("calib.txt: %zu ids, every bound gives the full encoding's prefix; a 64 MB word after 3 tokens: %zu ids "
           "in %.3f s\n", n_all, n, ea_time_now() - t0);
    assert_int_equal(n, 3);
    free(ids);
    free(huge);
    free(all);
    free(text);
    ea_tokenizer_free(t);
}

/* Item 11 for tokenizer.json: the same contract. Every bound gives the start of the full
 * encoding (four pipelines: GPT-2 byte-level, Llama 3 / Qwen3 split regexes, Llama 2 SentencePiece
 * with its "▁" cuts); with a bound of 3, a 16 MB word after "The cat sat. " is never merged
 * (whole, its BPE would take minutes). */
static void test_max_tokens_bounds_tokenizer_json(void **state) {
    (void)state;
    static const char *const dirs[] = {"gpt2", "llama3", "qwen3", "llama2"};
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(ea_read_file(EA_SOURCE_DIR "/data/calib.txt", 1 << 26, &text, &len), EA_OK);
    if (len > 20000) len = 20000;
    size_t big = (size_t)16 << 20;
    char *huge = malloc(big);
    assert_non_null(huge);
    memcpy(huge, "The cat sat. ", 13);
    for (size_t i = 13; i < big; i++) huge[i] = (char)('a' + (i * 2654435761u >> 13) % 10);
    for (size_t d = 0; d < sizeof dirs / sizeof *dirs; d++) {
        char path[512];
        snprintf(path, sizeof path, "%s/tokenizers/%s", TEST_FIXTURE_DIR, dirs[d]);
        ea_tokenizer *t = NULL;
        assert_int_equal(ea_tokenizer_load_dir(path, &t), EA_OK);
        for (int special = 0; special < 2; special++) {
            int *all = NULL;
            size_t n_all = 0;
            assert_int_equal(ea_tokenizer_encode(t, text, len, special, &all, &n_all), EA_OK);
            const size_t bounds[] = {1, 2, 7, 64, 1000, n_all - 1, n_all, n_all + 5};
            for (size_t k = 0; k < sizeof bounds / sizeof *bounds; k++) {
                int *ids = NULL;
                size_t n = 0;
                assert_int_equal(ea_tokenizer_encode_max(t, text, len, special, bounds[k], &ids, &n), EA_OK);
                assert_int_equal(n, bounds[k] < n_all ? bounds[k] : n_all);
                assert_memory_equal(ids, all, n * sizeof *ids);
                free(ids);
            }
            free(all);
        }
        int *ids = NULL;
        size_t n = 0;
        double t0 = ea_time_now();
        assert_int_equal(ea_tokenizer_encode_max(t, huge, big, 0, 3, &ids, &n), EA_OK);
        printf("%s: a 16 MB word after 3 tokens: %zu ids in %.3f s\n", dirs[d], n, ea_time_now() - t0);
        assert_int_equal(n, 3);
        int *head = NULL;
        size_t nh = 0; /* the 3 ids are those of the text without the word */
        assert_int_equal(ea_tokenizer_encode(t, huge, 13, 0, &head, &nh), EA_OK);
        assert_true(nh >= 3);
        assert_memory_equal(ids, head, 3 * sizeof *ids);
        free(head);
        free(ids);
        ea_tokenizer_free(t);
    }
    free(huge);
    free(text);
}

/* Item 14: arguments the model decides (codec specs' bounds, --calib-skip) are refused before
 * anything is fitted: no "fitting" progress line, exit 2, the spec as typed. */
static void test_arguments_checked_before_fitting(void **state) {
    (void)state;
    static const char *const cases[][12] = {
        {"eval", "--text", "data/calib.txt", "--kv", "q8,pca:100000", NULL},
        {"eval", "--text", "data/calib.txt", "--kv", "q8,pca-head:65", NULL},
        {"eval", "--text", "data/calib.txt", "--kv", "klt:2:ssssssssssssssssssssssssssssssssssssssssssssssssssssssss", NULL},
        {"eval", "--text", "data/calib.txt", "--kv", "pca:4", "--ctx", "64", "--calib-skip", "64", NULL},
        {"bench-memory", "--codec", "q8,pca:99999", "--no-measure", NULL},
        {"generate", "--prompt", "hello", "-n", "2", "--kv", "pca:129", NULL},
    };
    static const char *const want[] = {"'pca:100000'", "'pca-head:65'", "spec too long", "--calib-skip 64", "'pca:99999'",
                                       "'pca:129'"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *out = NULL, *err = NULL;
        int rc = test_run_cli(&out, &err, (const char *const *)cases[i]);
        printf("  %s (%s): exit %d, %s", cases[i][0], want[i], rc, err);
        assert_true(rc == 1 || rc == 2);
        assert_non_null(strstr(err, want[i]));
        assert_null(strstr(err, "fitting"));
        assert_string_equal(out, "");
        free(out);
        free(err);
    }
}

/* Item 14: out of memory while parsing vocab.json (or tokenizer.json) says so, never "not valid
 * JSON". A fresh process (this binary with --load-tokenizer: a forked one would inherit a heap with
 * megabytes of free holes) loads a tokenizer under an address-space limit a little above what it
 * already maps, for a range of margins: some fail inside the parser, the largest succeed. */
static int load_tokenizer_limited(const char *dir, long margin_kb) {
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld", &pages) != 1) return 3;
    fclose(f);
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (rlim_t)margin_kb * 1024;
    if (setrlimit(RLIMIT_AS, &rl)) return 4;
    ea_tokenizer *t = NULL;
    ea_status st = ea_tokenizer_load_dir(dir, &t);
    fputs(st ? ea_last_error() : "ok", stdout);
    return st ? 1 : 0;
}

static void test_json_out_of_memory_is_reported_as_such(void **state) {
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    TEST_SKIP_PLATFORM("AddressSanitizer reserves terabytes of address space: RLIMIT_AS cannot apply");
#else
    static const char *const dirs[] = {TEST_MODEL_DIR, TEST_FIXTURE_DIR "/tokenizers/gpt2"};
    for (size_t d = 0; d < 2; d++) {
        int oom = 0, invalid = 0, ok = 0;
        for (long margin_kb = 64; margin_kb <= 96 * 1024; margin_kb += margin_kb / 3) {
            int p[2];
            assert_int_equal(pipe(p), 0);
            char margin_s[32];
            snprintf(margin_s, sizeof margin_s, "%ld", margin_kb);
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                dup2(p[1], 1);
                close(p[0]);
                close(p[1]);
                execl("/proc/self/exe", "test_hostile", "--load-tokenizer", dirs[d], margin_s, (char *)NULL);
                _exit(127);
            }
            close(p[1]);
            char msg[1024] = {0};
            size_t got = 0;
            ssize_t r;
            while (got < sizeof msg - 1 && (r = read(p[0], msg + got, sizeof msg - 1 - got)) > 0) got += (size_t)r;
            close(p[0]);
            int status = 0;
            assert_int_equal(waitpid(pid, &status, 0), pid);
            if (!WIFEXITED(status) || WEXITSTATUS(status) > 1) /* a limit too tight to start is not a finding */
                continue;
            if (strstr(msg, "not valid JSON")) {
                printf("  %s, +%ld KB: %s\n", dirs[d], margin_kb, msg);
                invalid++;
            }
            if (strstr(msg, "out of memory while parsing")) oom++;
            if (!strcmp(msg, "ok")) ok++;
        }
        printf("%s: %d limits failed inside the JSON parser, reported as out of memory; %d loaded\n", dirs[d], oom, ok);
        assert_int_equal(invalid, 0);
        assert_true(oom > 0);
        assert_true(ok > 0);
    }
#endif
}

/* Copy a safetensors file to dst with its JSON header changed by edit (offsets kept valid by the
 * caller: the data bytes are copied as they are). */
static void rewrite_st(const char *src, const char *dst, void (*edit)(cJSON *)) {
    char *b = NULL;
    size_t n = 0;
    assert_int_equal(ea_read_file(src, 1u << 30, &b, &n), EA_OK);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (unsigned char)b[i];
    cJSON *h = cJSON_ParseWithLength(b + 8, (size_t)hl);
    assert_non_null(h);
    edit(h);
    char *hs = cJSON_PrintUnformatted(h);
    size_t hn = strlen(hs), pad = (8 - hn % 8) % 8;
    FILE *f = fopen(dst, "wb");
    assert_non_null(f);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((hn + pad) >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(hs, 1, hn, f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    fwrite(b + 8 + hl, 1, n - 8 - (size_t)hl, f);
    assert_int_equal(fclose(f), 0);
    free(hs);
    cJSON_Delete(h);
    free(b);
}

static void swap_layer_norms(cJSON *h) {
    cJSON *a = cJSON_GetObjectItem(cJSON_GetObjectItem(h, "transformer.h.0.ln_1.weight"), "data_offsets");
    cJSON *b = cJSON_GetObjectItem(cJSON_GetObjectItem(h, "transformer.h.1.ln_1.weight"), "data_offsets");
    assert_non_null(a);
    assert_non_null(b);
    cJSON *ca = cJSON_Duplicate(a, 1), *cb = cJSON_Duplicate(b, 1);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "transformer.h.0.ln_1.weight"), "data_offsets", cb);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(h, "transformer.h.1.ln_1.weight"), "data_offsets", ca);
}

static void codec_version_1(cJSON *h) {
    cJSON *m = cJSON_GetObjectItem(h, "__metadata__");
    cJSON_ReplaceItemInObject(m, "version", cJSON_CreateString("1"));
    cJSON_DeleteItemFromObject(m, "model_fingerprint");
}

/* Item 4: a saved KV codec is tied to the weights it was fitted on. gpt2-micro with two layer
 * norms' offsets swapped has the same shapes: the codec used to run on it silently (twice the KL). */
static void test_kv_codec_is_tied_to_its_model(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char codec[1024], spec[1100], old[1024], oldspec[1100], model[1024], p[1200];
    snprintf(codec, sizeof codec, "%s/codec.st", dir);
    snprintf(spec, sizeof spec, "file:%s", codec);
    snprintf(old, sizeof old, "%s/codec_v1.st", dir);
    snprintf(oldspec, sizeof oldspec, "file:%s", old);
    snprintf(model, sizeof model, "%s/swapped", dir);
    assert_int_equal(mkdir(model, 0755), 0);
    const char *keep[] = {"config.json", "vocab.json", "merges.txt"};
    for (int i = 0; i < 3; i++) {
        char src[1200];
        snprintf(src, sizeof src, "%s/%s", TEST_MODEL_DIR, keep[i]);
        snprintf(p, sizeof p, "%s/%s", model, keep[i]);
        assert_int_equal(symlink(src, p), 0);
    }
    snprintf(p, sizeof p, "%s/model.safetensors", model);
    rewrite_st(TEST_MODEL_DIR "/model.safetensors", p, swap_layer_norms);
    char *err = NULL;
    const char *save[] = {"generate", "--prompt", "The", "-n", "2", "--kv", "klt:2", "--calib-max-tokens", "512",
                          "--save-kv", codec, NULL};
    assert_int_equal(run_quiet(save, &err), 0);
    free(err);
    rewrite_st(codec, old, codec_version_1);
    const char *same[] = {"eval", "--text", "data/calib.txt", "--max-tokens", "128", "--decode-tokens", "0", "--kv", spec,
                          NULL};
    int rc = run_quiet(same, &err);
    printf("codec on the model it was fitted on: exit %d\n", rc);
    assert_int_equal(rc, 0);
    free(err);
    const char *other[] = {"eval", "--model", model, "--text", "data/calib.txt", "--max-tokens", "128",
                           "--decode-tokens", "0", "--kv", spec, NULL};
    rc = run_quiet(other, &err);
    printf("codec on gpt2-micro with two layer norms swapped: exit %d, %s", rc, err);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(err, "fingerprint"));
    assert_non_null(strstr(err, "codec.st"));
    free(err);
    const char *gen_other[] = {"generate", "--model", model, "--prompt", "The", "-n", "2", "--kv", spec, NULL};
    rc = run_quiet(gen_other, &err);
    printf("generate --kv file: on the swapped model: exit %d\n", rc);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(err, "fingerprint"));
    free(err);
    const char *v1[] = {"eval", "--text", "data/calib.txt", "--max-tokens", "128", "--decode-tokens", "0", "--kv",
                        oldspec, NULL};
    rc = run_quiet(v1, &err);
    printf("a version-1 codec file: exit %d, %s", rc, err);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(err, "version 1"));
    free(err);
    test_rmdir(dir);
    free(dir);
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "--load-tokenizer")) return load_tokenizer_limited(argv[2], atol(argv[3]));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base_model_is_valid),
        cmocka_unit_test(test_loaders_reject_hostile_files_in_process),
        cmocka_unit_test(test_cli_rejects_every_hostile_case),
        cmocka_unit_test(test_nan_activation_is_reported_with_layer),
        cmocka_unit_test(test_outputs_that_are_not_regular_files),
        cmocka_unit_test(test_stdout_write_errors_fail),
        cmocka_unit_test(test_output_that_is_an_input_is_refused),
        cmocka_unit_test(test_fifo_inputs_never_block),
        cmocka_unit_test(test_long_paths_are_never_truncated),
        cmocka_unit_test(test_load_in_a_small_stack),
        cmocka_unit_test(test_truncated_while_open),
        cmocka_unit_test(test_memory_limit_never_hangs),
        cmocka_unit_test(test_generate_json_is_always_utf8),
        cmocka_unit_test(test_max_tokens_bounds_tokenization),
        cmocka_unit_test(test_max_tokens_bounds_tokenizer_json),
        cmocka_unit_test(test_arguments_checked_before_fitting),
        cmocka_unit_test(test_json_out_of_memory_is_reported_as_such),
        cmocka_unit_test(test_kv_codec_is_tied_to_its_model),
    };
    return TEST_RUN(tests, NULL, NULL);
}
