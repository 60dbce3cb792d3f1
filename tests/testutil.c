/* Helpers shared by the cmocka tests. */
#include "testutil.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int test_skipped;

int test_require_all(void) {
    const char *e = getenv("EA_REQUIRE_SHARED");
    return e && strcmp(e, "1") == 0;
}

int test_exit_status(int failures) {
    if (failures) return failures;
    if (test_skipped) {
        printf("%d case(s) skipped: exiting 77 so ctest reports this binary as Skipped\n", test_skipped);
        return 77;
    }
    return 0;
}

const char *test_shared_path(const char *rel) {
    static char buf[8][1024];
    static int slot;
    char *p = buf[slot++ & 7];
    snprintf(p, 1024, "%s/%s", TEST_SHARED_DIR, rel);
    struct stat st;
    return stat(p, &st) == 0 ? p : NULL;
}

static char *slurp_fd(int fd) {
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    for (;;) {
        if (n + 1 >= cap) b = realloc(b, cap *= 2);
        ssize_t r = read(fd, b + n, cap - n - 1);
        if (r <= 0) break;
        n += (size_t)r;
    }
    b[n] = 0;
    return b;
}

int test_run_cli(char **out, char **err, const char *const *args) {
    char ofile[] = "/tmp/ea_test_outXXXXXX", efile[] = "/tmp/ea_test_errXXXXXX";
    int ofd = mkstemp(ofile), efd = mkstemp(efile);
    if (ofd < 0 || efd < 0) return -1;
    size_t na = 0;
    while (args[na]) na++;
    const char **argv = calloc(na + 2, sizeof *argv);
    argv[0] = EA_CLI_PATH;
    for (size_t i = 0; i < na; i++) argv[i + 1] = args[i];
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(ofd, 1);
        dup2(efd, 2);
        execv(EA_CLI_PATH, (char *const *)argv);
        _exit(127);
    }
    free(argv);
    int status = 0;
    waitpid(pid, &status, 0);
    lseek(ofd, 0, SEEK_SET);
    lseek(efd, 0, SEEK_SET);
    char *o = slurp_fd(ofd), *e = slurp_fd(efd);
    close(ofd);
    close(efd);
    unlink(ofile);
    unlink(efile);
    if (out) *out = o; else free(o);
    if (err) *err = e; else free(e);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

double test_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

double test_nmse(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

char *test_tmpdir(void) {
    char tmpl[] = "/tmp/ea_testXXXXXX";
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

void test_rmdir(const char *dir) {
    if (!dir) return;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

int test_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

cJSON *test_cli_json(const char *const *args) {
    char *out, *err;
    int rc = test_run_cli(&out, &err, args);
    if (rc != 0) printf("exit %d, stderr:\n%s\n", rc, err);
    assert_int_equal(rc, 0);
    cJSON *j = cJSON_Parse(out);
    if (!j) printf("stdout is not JSON:\n%s\n", out);
    assert_non_null(j);
    free(out);
    free(err);
    return j;
}

void test_cli_fails(const char *const *args, const char *want) {
    char *out, *err;
    int rc = test_run_cli(&out, &err, args);
    printf("  exit %d: %s", rc, err);
    assert_true(rc != 0 && rc != -1);
    assert_non_null(strstr(err, want));
    assert_string_equal(out, "");
    free(out);
    free(err);
}

double test_json_num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) printf("missing number \"%s\"\n", key);
    assert_true(cJSON_IsNumber(v));
    return v->valuedouble;
}

const cJSON *test_json_obj(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsObject(v)) printf("missing object \"%s\"\n", key);
    assert_true(cJSON_IsObject(v));
    return v;
}

long double test_lse_ld(const float *z, int n) {
    long double mx = z[0], s = 0;
    for (int i = 1; i < n; i++)
        if (z[i] > mx) mx = z[i];
    for (int i = 0; i < n; i++) s += expl((long double)z[i] - mx);
    return mx + logl(s);
}

int test_argmax(const float *z, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (z[i] > z[b]) b = i;
    return b;
}
