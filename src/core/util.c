/* Checked sizes, whole-file reads, atomic output files, clock. */
#define _POSIX_C_SOURCE 200809L
#include "ea/core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int ea_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return -1;
    *out = a * b;
    return 0;
}

int ea_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return -1;
    *out = a + b;
    return 0;
}

double ea_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

ea_status ea_read_file(const char *path, size_t max_bytes, char **data, size_t *n) {
    *data = NULL;
    if (n) *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return ea_error(EA_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return ea_error(EA_ERR_IO, "%s: not a regular file", path);
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        fclose(f);
        return ea_error(EA_ERR_FORMAT, "%s: file is %lld bytes, above the limit of %zu", path,
                        (long long)st.st_size, max_bytes);
    }
    size_t sz = (size_t)st.st_size;
    char *buf = malloc(sz + 1);
    if (!buf) {
        fclose(f);
        return ea_error(EA_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, sz + 1);
    }
    size_t got = fread(buf, 1, sz, f);
    int err = ferror(f);
    fclose(f);
    if (err || got != sz) {
        free(buf);
        return ea_error(EA_ERR_IO, "%s: read failed", path);
    }
    buf[sz] = 0;
    *data = buf;
    if (n) *n = sz;
    return EA_OK;
}

ea_status ea_outfile_open(ea_outfile *o, const char *path) {
    memset(o, 0, sizeof *o);
    if (!path || !*path) return ea_error(EA_ERR_ARG, "empty output path");
    size_t len = strlen(path);
    o->path = strdup(path);
    o->tmp = malloc(len + 16);
    if (!o->path || !o->tmp) {
        free(o->path); free(o->tmp);
        return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(o->tmp, len + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(o->tmp);
    if (fd < 0) {
        ea_status st = ea_error(EA_ERR_IO, "%s: cannot create temporary output: %s", path, strerror(errno));
        free(o->path); free(o->tmp);
        memset(o, 0, sizeof *o);
        return st;
    }
    fchmod(fd, 0644);
    o->fp = fdopen(fd, "wb");
    if (!o->fp) {
        close(fd);
        unlink(o->tmp);
        free(o->path); free(o->tmp);
        memset(o, 0, sizeof *o);
        return ea_error(EA_ERR_IO, "%s: fdopen failed", path);
    }
    return EA_OK;
}

void ea_outfile_abort(ea_outfile *o) {
    if (o->fp) fclose(o->fp);
    if (o->tmp) unlink(o->tmp);
    free(o->path);
    free(o->tmp);
    memset(o, 0, sizeof *o);
}

ea_status ea_outfile_commit(ea_outfile *o) {
    FILE *f = o->fp;
    int bad = ferror(f) || fflush(f) != 0 || fsync(fileno(f)) != 0;
    o->fp = NULL;
    if (fclose(f) != 0) bad = 1;
    if (bad) {
        ea_status st = ea_error(EA_ERR_IO, "%s: write failed: %s", o->path, strerror(errno));
        ea_outfile_abort(o);
        return st;
    }
    if (rename(o->tmp, o->path) != 0) {
        ea_status st = ea_error(EA_ERR_IO, "%s: cannot rename from %s: %s", o->path, o->tmp, strerror(errno));
        ea_outfile_abort(o);
        return st;
    }
    free(o->path);
    free(o->tmp);
    memset(o, 0, sizeof *o);
    return EA_OK;
}

ea_status ea_write_file_atomic(const char *path, const void *data, size_t n) {
    ea_outfile o;
    ea_status st = ea_outfile_open(&o, path);
    if (st) return st;
    if (n && fwrite(data, 1, n, o.fp) != n) {
        ea_outfile_abort(&o);
        return ea_error(EA_ERR_IO, "%s: write failed", path);
    }
    return ea_outfile_commit(&o);
}
