/* Checked sizes, whole-file reads, atomic output files (and their removal on SIGINT/SIGTERM),
 * clock. */
#define _POSIX_C_SOURCE 200809L
#include "ea/core.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
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

/* Open temporaries, in a table a signal handler can read: fixed size, no locks, no allocation.
 * A writer claims a free slot (FREE -> BUSY), copies the path in and publishes it (LIVE); the
 * handler unlinks LIVE slots only. A temporary is registered right after mkstemp creates it and
 * unregistered only after it was renamed or unlinked, so a signal in between at worst unlinks a
 * name that no longer exists. Not covered: the instant between mkstemp and the registration, a
 * path of PATH_MAX bytes or more, more than TMP_SLOTS temporaries open at once, and a process that
 * changes its working directory while a relative temporary is open. */
#define TMP_SLOTS 16
enum { SLOT_FREE, SLOT_BUSY, SLOT_LIVE };
static atomic_int tmp_state[TMP_SLOTS];
static char tmp_path[TMP_SLOTS][PATH_MAX];

/* Slot + 1, or 0 when the temporary could not be registered. */
static int tmp_register(const char *path) {
    size_t n = strlen(path);
    if (n >= PATH_MAX) return 0;
    for (int i = 0; i < TMP_SLOTS; i++) {
        int expected = SLOT_FREE;
        if (atomic_compare_exchange_strong(&tmp_state[i], &expected, SLOT_BUSY)) {
            memcpy(tmp_path[i], path, n + 1);
            atomic_store(&tmp_state[i], SLOT_LIVE);
            return i + 1;
        }
    }
    return 0;
}

static void tmp_unregister(int reg) {
    if (reg > 0) atomic_store(&tmp_state[reg - 1], SLOT_FREE);
}

void ea_outfile_remove_temporaries(void) {
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_state[i]) == SLOT_LIVE) unlink(tmp_path[i]);
}

static const int cleanup_signals[] = {SIGINT, SIGTERM};
static struct sigaction default_action; /* SIG_DFL, set up by the installer */

static void cleanup_handler(int sig) {
    int saved = errno;
    ea_outfile_remove_temporaries();
    /* Die of the same signal, so the parent sees "killed by SIGINT": the re-raised signal stays
     * pending (blocked while this handler runs) and takes the default action on return. */
    sigaction(sig, &default_action, NULL);
    raise(sig);
    errno = saved;
}

void ea_outfile_install_signal_cleanup(void) {
    default_action.sa_handler = SIG_DFL;
    sigemptyset(&default_action.sa_mask);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cleanup_handler;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof cleanup_signals / sizeof *cleanup_signals; i++)
        sigaddset(&sa.sa_mask, cleanup_signals[i]);
    for (size_t i = 0; i < sizeof cleanup_signals / sizeof *cleanup_signals; i++) {
        struct sigaction old;
        /* An ignored signal (nohup, a background job) or the caller's own handler stays. */
        if (sigaction(cleanup_signals[i], NULL, &old) != 0 || old.sa_handler != SIG_DFL) continue;
        sigaction(cleanup_signals[i], &sa, NULL);
    }
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
    o->reg = tmp_register(o->tmp);
    fchmod(fd, 0644);
    o->fp = fdopen(fd, "wb");
    if (!o->fp) {
        close(fd);
        unlink(o->tmp);
        tmp_unregister(o->reg);
        free(o->path); free(o->tmp);
        memset(o, 0, sizeof *o);
        return ea_error(EA_ERR_IO, "%s: fdopen failed", path);
    }
    return EA_OK;
}

void ea_outfile_abort(ea_outfile *o) {
    if (o->fp) fclose(o->fp);
    if (o->tmp) unlink(o->tmp);
    tmp_unregister(o->reg);
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
    tmp_unregister(o->reg);
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
