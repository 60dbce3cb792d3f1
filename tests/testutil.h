/* Helpers shared by the cmocka tests. */
#ifndef EA_TESTUTIL_H
#define EA_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>

#include "eigenalign.h"

/* Paths inside the repository (tests run with the source root as working directory). */
#define TEST_MODEL_DIR EA_SOURCE_DIR "/models/gpt2-micro"
#define TEST_FIXTURE_DIR EA_SOURCE_DIR "/tests/fixtures"
#define TEST_HOSTILE_DIR EA_SOURCE_DIR "/tests/hostile"
#define TEST_SHARED_DIR EA_SOURCE_DIR "/../shared"

/* Path to ../shared/<rel> if it exists, else NULL (tests then skip with a message). */
const char *test_shared_path(const char *rel);
/* Skips are visible. TEST_SKIP prints "SKIP: why", counts the case in test_skipped and calls
 * cmocka's skip(); cmocka's return value counts only failures, so each test main returns
 * TEST_RUN(tests, setup, teardown), which exits 77 (ctest's SKIP_RETURN_CODE: the binary shows as
 * "Skipped", its output names each skipped case and the count) when no case failed and at least
 * one skipped, even if others passed: a binary that did not run all its cases never reads
 * "Passed". With EA_REQUIRE_SHARED=1 in the environment (scripts/test.sh sets it when ../shared
 * exists, as in CI) every skip is a failure instead. A group setup that returns non-zero fails
 * the binary (cmocka returns 1). */
extern int test_skipped;
int test_require_all(void); /* EA_REQUIRE_SHARED=1 */
#define TEST_SKIP(...)                                                                                 \
    do {                                                                                               \
        if (test_require_all()) fail_msg("EA_REQUIRE_SHARED=1 but this case would skip: " __VA_ARGS__); \
        printf("SKIP: " __VA_ARGS__);                                                                  \
        printf("\n");                                                                                  \
        test_skipped++;                                                                                \
        skip();                                                                                        \
    } while (0)
/* A case that cannot apply to this build or platform (ulimit -v under AddressSanitizer), as
 * opposed to one lacking ../shared: visible and counted like TEST_SKIP (exit 77), but not made a
 * failure by EA_REQUIRE_SHARED=1, which scripts/test.sh also sets for its ASan run. */
#define TEST_SKIP_PLATFORM(...)        \
    do {                               \
        printf("SKIP: " __VA_ARGS__);  \
        printf("\n");                  \
        test_skipped++;                \
        skip();                        \
    } while (0)
/* cmocka's failure count → the process status: failures as they are, else 77 if anything skipped. */
int test_exit_status(int failures);
#define TEST_RUN(tests, setup, teardown) test_exit_status(cmocka_run_group_tests(tests, setup, teardown))

/* Run the CLI with arguments (a shell-free argv); capture stdout and stderr (malloc'd,
 * NUL-terminated). Returns the exit status, or -1 if it could not run / was signalled. */
int test_run_cli(char **out, char **err, const char *const *args);

/* Max |a-b| over n floats; and NMSE = Σ(a-b)² / Σb². */
double test_max_abs_diff(const float *a, const float *b, size_t n);
double test_nmse(const float *a, const float *ref, size_t n);

/* A fresh temporary directory (malloc'd path); removed by test_rmdir. */
char *test_tmpdir(void);
void test_rmdir(const char *dir);
/* Write bytes to a file; 0 on success. */
int test_write_file(const char *path, const void *data, size_t n);

/* CLI runs whose output is JSON: exit 0 and parsed stdout (caller deletes it); or a failure (exit
 * neither 0 nor -1) with want on stderr and nothing on stdout. */
cJSON *test_cli_json(const char *const *args);
void test_cli_fails(const char *const *args, const char *want);
/* A number / an object member of o that must exist. */
double test_json_num(const cJSON *o, const char *key);
const cJSON *test_json_obj(const cJSON *o, const char *key);

/* Independent references for the reported metrics: log Σ exp(z) in long double (max-shifted) and
 * the first index of the maximum. */
long double test_lse_ld(const float *z, int n);
int test_argmax(const float *z, int n);

#endif
