/* Helpers shared by the cmocka tests. */
#ifndef EA_TESTUTIL_H
#define EA_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "eigenalign.h"

/* Paths inside the repository (tests run with the source root as working directory). */
#define TEST_MODEL_DIR EA_SOURCE_DIR "/models/gpt2-micro"
#define TEST_FIXTURE_DIR EA_SOURCE_DIR "/tests/fixtures"
#define TEST_HOSTILE_DIR EA_SOURCE_DIR "/tests/hostile"
#define TEST_SHARED_DIR EA_SOURCE_DIR "/../shared"

/* Path to ../shared/<rel> if it exists, else NULL (tests then skip with a message). */
const char *test_shared_path(const char *rel);
/* Print "SKIP: why" and call cmocka's skip(). */
#define TEST_SKIP(...) do { printf("SKIP: " __VA_ARGS__); printf("\n"); skip(); } while (0)

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

#endif
