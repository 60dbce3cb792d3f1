/* Hostile inputs: every case of tests/hostile/cases.json (made by tests/hostile/make_hostile.py)
 * must make the CLI fail cleanly: non-zero exit, no signal, no sanitizer report, nothing on
 * stdout, and a message naming the file and the problem. Two control cases (the valid tiny
 * model, single-file and sharded) must succeed, so each failure is due to the one thing its case
 * breaks. The loaders are also called in-process on the same files, and a NaN injected into one
 * layer's activations must be reported with that layer. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base_model_is_valid),
        cmocka_unit_test(test_loaders_reject_hostile_files_in_process),
        cmocka_unit_test(test_cli_rejects_every_hostile_case),
        cmocka_unit_test(test_nan_activation_is_reported_with_layer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
