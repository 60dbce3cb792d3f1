/* Shared helpers of the libFuzzer targets: a private scratch folder per process for the loaders
 * that take paths, and a trap that turns a broken invariant into a reported crash. */
#ifndef EA_FUZZ_UTIL_H
#define EA_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eigenalign.h"

/* A broken invariant is a bug the fuzzer must report: print why, then crash. */
#define FUZZ_CHECK(cond, ...)                                                \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "fuzz invariant failed: %s: ", #cond);          \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            __builtin_trap();                                                \
        }                                                                    \
    } while (0)

static char fuzz_dir_path[256];

static void fuzz_dir_remove(void) {
    char cmd[320];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_dir_path);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", fuzz_dir_path);
}

/* The per-process scratch folder (created on first use, removed at exit). */
static inline const char *fuzz_dir(void) {
    if (!fuzz_dir_path[0]) {
        /* tmpfs when there is one: the loaders take paths, so every input is written to a file,
         * and a disk-backed /tmp makes that the bottleneck. */
        const char *base = getenv("EA_FUZZ_TMPDIR");
        if (!base || !*base) base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/ea_fuzz_XXXXXX", base);
        if (!mkdtemp(fuzz_dir_path)) {
            perror("mkdtemp");
            abort();
        }
        atexit(fuzz_dir_remove);
    }
    return fuzz_dir_path;
}

/* Path of NAME inside the scratch folder. */
static inline void fuzz_path(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", fuzz_dir(), name);
}

static inline void fuzz_write(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

/* Copy a repository file into the scratch folder (setup of a model directory). */
static inline void fuzz_copy(const char *src, const char *dst) {
    char *data = NULL;
    size_t n = 0;
    if (ea_read_file(src, 64u << 20, &data, &n)) {
        fprintf(stderr, "%s\n", ea_last_error());
        abort();
    }
    fuzz_write(dst, data, n);
    free(data);
}

#endif
