/* Checked sizes, input opening (regular files only, never blocking), whole-file reads, atomic
 * output files (O_TMPFILE or a registered temporary, removed on every terminating signal), clock. */
#define _POSIX_C_SOURCE 200809L
#include "ea/core.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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

/* Open an input for reading: O_NONBLOCK so a FIFO (or a device that waits) cannot block the open,
 * then fstat and refuse what is not a regular file, then back to blocking reads. */
ea_status ea_open_input(const char *path, int *fd_out) {
    *fd_out = -1;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return ea_error(EA_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ea_error(EA_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ea_error(EA_ERR_IO, "%s: not a regular file (%s)", path,
                        S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO"
                        : S_ISCHR(st.st_mode) ? "a character device" : S_ISBLK(st.st_mode) ? "a block device"
                        : S_ISSOCK(st.st_mode) ? "a socket" : "not a file");
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    *fd_out = fd;
    return EA_OK;
}

ea_status ea_read_file(const char *path, size_t max_bytes, char **data, size_t *n) {
    *data = NULL;
    if (n) *n = 0;
    int fd;
    ea_status s = ea_open_input(path, &fd);
    if (s) return s;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return ea_error(EA_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        close(fd);
        return ea_error(EA_ERR_FORMAT, "%s: file is %lld bytes, above the limit of %zu", path,
                        (long long)st.st_size, max_bytes);
    }
    size_t sz = (size_t)st.st_size;
    char *buf = malloc(sz + 1);
    if (!buf) {
        close(fd);
        return ea_error(EA_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, sz + 1);
    }
    /* pread: a file that shrinks while read ends the loop early and is reported, never read past. */
    size_t got = 0;
    while (got < sz) {
        ssize_t r = pread(fd, buf + got, sz - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    int e = errno;
    close(fd);
    if (got != sz) {
        free(buf);
        return ea_error(EA_ERR_IO, "%s: read failed after %zu of %zu bytes: %s", path, got, sz,
                        got < sz ? "file truncated while read" : strerror(e));
    }
    buf[sz] = 0;
    *data = buf;
    if (n) *n = sz;
    return EA_OK;
}

/* Open temporaries, in a table a signal handler can read: fixed size, no locks, no allocation.
 * A writer claims a free slot (FREE -> BUSY), copies the path in and publishes it (LIVE); the
 * handler unlinks LIVE slots only. A named temporary is created and registered inside a "gap":
 * the cleanup signals are blocked in the creating thread and in_gap counts the threads inside;
 * a handler running on another thread first sets `dying` (so no new temporary is created) and
 * waits for in_gap to drop to 0 (so one being created is registered before the handler unlinks).
 * Unregistered only after it was renamed or unlinked, so a signal in between at worst unlinks a
 * name that no longer exists. Where the filesystem supports O_TMPFILE (ext4, xfs, btrfs, tmpfs)
 * the data is written to an unnamed file that the kernel frees on any death, SIGKILL included;
 * it gets a name only at commit. Not covered: more than TMP_SLOTS named temporaries at once, a
 * path of PATH_MAX bytes or more, a working directory changed while a relative one is open. */
#define TMP_SLOTS 16
enum { SLOT_FREE, SLOT_BUSY, SLOT_LIVE };
static atomic_int tmp_state[TMP_SLOTS];
static char tmp_path[TMP_SLOTS][PATH_MAX];
static atomic_int in_gap, dying;

/* Every signal whose default action terminates the process (real-time signals excepted: glibc
 * and libraries use them). Faults re-raise in place and still dump core. */
static const int cleanup_signals[] = {SIGHUP,  SIGINT,  SIGQUIT, SIGPIPE,   SIGALRM, SIGTERM, SIGUSR1, SIGUSR2,
                                      SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF, SIGABRT, SIGBUS,  SIGFPE,  SIGILL,
                                      SIGSEGV, SIGSYS,
#ifdef SIGIO
                                      SIGIO,
#endif
#ifdef SIGPWR
                                      SIGPWR,
#endif
};
#define N_CLEANUP_SIGNALS (sizeof cleanup_signals / sizeof *cleanup_signals)

static void cleanup_sigset(sigset_t *s) {
    sigemptyset(s);
    for (size_t i = 0; i < N_CLEANUP_SIGNALS; i++) sigaddset(s, cleanup_signals[i]);
}

/* 0 inside the gap (leave with gap_leave), -1 when the process is being killed. */
static int gap_enter(sigset_t *old) {
    sigset_t s;
    cleanup_sigset(&s);
    pthread_sigmask(SIG_BLOCK, &s, old);
    atomic_fetch_add(&in_gap, 1);
    if (atomic_load(&dying)) {
        atomic_fetch_sub(&in_gap, 1);
        pthread_sigmask(SIG_SETMASK, old, NULL);
        return -1;
    }
    return 0;
}

static void gap_leave(const sigset_t *old) {
    atomic_fetch_sub(&in_gap, 1);
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

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

/* Private temporary directories (bench-memory's codec and statistics files for its children), in
 * a table like the one above: the handler deletes the files directly inside each and then the
 * directory. Listing uses getdents64 on an open descriptor (opendir allocates; a handler may not). */
#define DIR_SLOTS 4
static atomic_int dir_state[DIR_SLOTS];
static char dir_path[DIR_SLOTS][PATH_MAX];

struct ea_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Async-signal-safe: unlink every entry of dir (not recursive), then rmdir it. */
static void remove_dir_files(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        long buf[1024]; /* aligned for the records */
        for (;;) {
            long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
            if (n <= 0) break;
            for (long off = 0; off < n;) {
                struct ea_dirent64 *e = (struct ea_dirent64 *)((char *)buf + off);
                off += e->d_reclen;
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlinkat(fd, e->d_name, 0);
            }
        }
        close(fd);
    }
    rmdir(dir);
}

void ea_outfile_remove_temporaries(void) {
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_state[i]) == SLOT_LIVE) unlink(tmp_path[i]);
    for (int i = 0; i < DIR_SLOTS; i++)
        if (atomic_load(&dir_state[i]) == SLOT_LIVE) remove_dir_files(dir_path[i]);
}

static struct sigaction default_action; /* SIG_DFL, set up by the installer */

static void cleanup_handler(int sig) {
    int saved = errno;
    atomic_store(&dying, 1);
    /* A thread creating a temporary finishes registering it (a few system calls); bounded wait. */
    for (int i = 0; i < 2000 && atomic_load(&in_gap) > 0; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
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
    cleanup_sigset(&sa.sa_mask);
    for (size_t i = 0; i < N_CLEANUP_SIGNALS; i++) {
        struct sigaction old;
        /* An ignored signal (nohup, a background job) or the caller's own handler (a sanitizer's)
         * stays. */
        if (sigaction(cleanup_signals[i], NULL, &old) != 0 || (old.sa_flags & SA_SIGINFO) ||
            old.sa_handler != SIG_DFL)
            continue;
        sigaction(cleanup_signals[i], &sa, NULL);
    }
}

char *ea_tempdir_create(char *tmpl) {
    if (strlen(tmpl) >= PATH_MAX) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    sigset_t old;
    if (gap_enter(&old)) {
        errno = EINTR;
        return NULL;
    }
    int slot = -1;
    for (int i = 0; i < DIR_SLOTS && slot < 0; i++) {
        int expected = SLOT_FREE;
        if (atomic_compare_exchange_strong(&dir_state[i], &expected, SLOT_BUSY)) slot = i;
    }
    char *dir = slot < 0 ? NULL : mkdtemp(tmpl);
    int e = slot < 0 ? EMFILE : errno;
    if (dir) {
        memcpy(dir_path[slot], dir, strlen(dir) + 1);
        atomic_store(&dir_state[slot], SLOT_LIVE);
    } else if (slot >= 0)
        atomic_store(&dir_state[slot], SLOT_FREE);
    gap_leave(&old);
    if (!dir) errno = e;
    return dir;
}

void ea_tempdir_remove(const char *dir) {
    if (!dir) return;
    remove_dir_files(dir);
    for (int i = 0; i < DIR_SLOTS; i++)
        if (atomic_load(&dir_state[i]) == SLOT_LIVE && !strcmp(dir_path[i], dir)) atomic_store(&dir_state[i], SLOT_FREE);
}

enum { OUT_NAMED = 0, OUT_UNNAMED = 1, OUT_THROUGH = 2 };

/* The file a path finally names: symlinks followed one by one (a dangling link names the file it
 * would create, as a shell redirection does), so the temporary goes in the target's directory and
 * the rename replaces the target, not the link. */
static ea_status resolve_target(const char *path, char **out) {
    char *cur = strdup(path);
    if (!cur) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    for (int hops = 0;; hops++) {
        struct stat st;
        if (lstat(cur, &st) != 0 || !S_ISLNK(st.st_mode)) break;
        if (hops >= 40) {
            free(cur);
            return ea_error(EA_ERR_IO, "%s: cannot write: %s", path, strerror(ELOOP));
        }
        char link[PATH_MAX];
        ssize_t n = readlink(cur, link, sizeof link);
        if (n < 0 || (size_t)n >= sizeof link) {
            free(cur);
            return ea_error(EA_ERR_IO, "%s: cannot read the symbolic link: %s", path,
                            n < 0 ? strerror(errno) : strerror(ENAMETOOLONG));
        }
        link[n] = 0;
        char *next;
        const char *slash = strrchr(cur, '/');
        if (link[0] == '/' || !slash) {
            next = strdup(link);
        } else {
            size_t dl = (size_t)(slash - cur) + 1;
            next = malloc(dl + (size_t)n + 1);
            if (next) {
                memcpy(next, cur, dl);
                memcpy(next + dl, link, (size_t)n + 1);
            }
        }
        free(cur);
        if (!next) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
        cur = next;
    }
    *out = cur;
    return EA_OK;
}

/* "<dir of path>" or "." (malloc'd). */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static int no_tmpfile_env(void) {
    const char *e = getenv("EA_NO_O_TMPFILE");
    return e && *e && strcmp(e, "0");
}

static ea_status open_failed(ea_outfile *o, ea_status st) {
    free(o->path);
    free(o->tmp);
    memset(o, 0, sizeof *o);
    return st;
}

ea_status ea_outfile_open(ea_outfile *o, const char *path) {
    memset(o, 0, sizeof *o);
    if (!path || !*path) return ea_error(EA_ERR_ARG, "empty output path");
    if (strlen(path) >= PATH_MAX)
        return ea_error(EA_ERR_IO, "%.64s...: cannot write: %s (%zu bytes)", path, strerror(ENAMETOOLONG),
                        strlen(path));
    ea_status st = resolve_target(path, &o->path);
    if (st) return st;
    struct stat sb;
    if (stat(o->path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        if (S_ISDIR(sb.st_mode))
            return open_failed(o, ea_error(EA_ERR_IO, "%s: cannot write: is a directory", path));
        if (!S_ISCHR(sb.st_mode) && !S_ISFIFO(sb.st_mode))
            return open_failed(o, ea_error(EA_ERR_IO, "%s: cannot write: not a regular file, character device "
                                                      "or FIFO", path));
        /* /dev/null, /dev/stdout, a terminal, a FIFO with a reader: written through, in place. A FIFO
         * without a reader is refused rather than waited for. */
        int fd = open(o->path, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
            return open_failed(o, ea_error(EA_ERR_IO, "%s: cannot open for writing: %s", path,
                                           errno == ENXIO ? "a FIFO with no reader" : strerror(errno)));
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        o->mode = OUT_THROUGH;
        o->fp = fdopen(fd, "wb");
        if (!o->fp) {
            close(fd);
            return open_failed(o, ea_error(EA_ERR_IO, "%s: fdopen failed", path));
        }
        return EA_OK;
    }
    int fd = -1;
#ifdef O_TMPFILE
    /* An unnamed file in the target's directory, linked in at commit through /proc/self/fd. */
    if (!no_tmpfile_env() && access("/proc/self/fd", X_OK) == 0) {
        char *dir = dir_of(o->path);
        if (!dir) return open_failed(o, ea_error(EA_ERR_NOMEM, "%s: out of memory", path));
        fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
        free(dir);
        if (fd >= 0) o->mode = OUT_UNNAMED;
    }
#endif
    if (fd < 0) {
        size_t len = strlen(o->path);
        o->tmp = malloc(len + 16);
        if (!o->tmp) return open_failed(o, ea_error(EA_ERR_NOMEM, "%s: out of memory", path));
        snprintf(o->tmp, len + 16, "%s.tmp.XXXXXX", o->path);
        sigset_t old;
        if (gap_enter(&old)) return open_failed(o, ea_error(EA_ERR_IO, "%s: interrupted", path));
        fd = mkstemp(o->tmp);
        int e = errno;
        if (fd >= 0) o->reg = tmp_register(o->tmp);
        gap_leave(&old);
        if (fd < 0)
            return open_failed(o, ea_error(EA_ERR_IO, "%s: cannot create temporary output: %s", path, strerror(e)));
        mode_t mask = umask(0);
        umask(mask);
        fchmod(fd, 0666 & ~mask);
        o->mode = OUT_NAMED;
    }
    o->fp = fdopen(fd, "wb");
    if (!o->fp) {
        close(fd);
        if (o->tmp) unlink(o->tmp);
        tmp_unregister(o->reg);
        return open_failed(o, ea_error(EA_ERR_IO, "%s: fdopen failed", path));
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

/* Give the unnamed file fd a name: the target itself when it does not exist (nothing named ever
 * holds partial data), otherwise a registered temporary renamed over the target. errno on -1. */
static int link_unnamed(ea_outfile *o, int fd) {
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, o->path, AT_SYMLINK_FOLLOW) == 0) return 0;
    if (errno != EEXIST) return -1;
    size_t len = strlen(o->path);
    o->tmp = malloc(len + 16);
    if (!o->tmp) return errno = ENOMEM, -1;
    static atomic_uint counter;
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t h = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(ea_time_now() * 1e9) ^
                     ((uint64_t)atomic_fetch_add(&counter, 1) << 40);
        h ^= h >> 29;
        h *= 0xbf58476d1ce4e5b9ull;
        h ^= h >> 32;
        char suffix[7];
        static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        for (int i = 0; i < 6; i++, h /= 62) suffix[i] = al[h % 62];
        suffix[6] = 0;
        snprintf(o->tmp, len + 16, "%s.tmp.%s", o->path, suffix);
        sigset_t old;
        if (gap_enter(&old)) return errno = EINTR, -1;
        int rc = linkat(AT_FDCWD, proc, AT_FDCWD, o->tmp, AT_SYMLINK_FOLLOW);
        int e = errno;
        if (rc == 0) o->reg = tmp_register(o->tmp);
        gap_leave(&old);
        if (rc == 0) {
            if (rename(o->tmp, o->path) == 0) return 0;
            e = errno;
            unlink(o->tmp);
            tmp_unregister(o->reg);
            o->reg = 0;
            errno = e;
            return -1;
        }
        if (e != EEXIST) return errno = e, -1;
    }
    return errno = EEXIST, -1;
}

ea_status ea_outfile_commit(ea_outfile *o) {
    FILE *f = o->fp;
    /* fsync only what stays on disk: a device or FIFO written through may not support it. */
    int bad = ferror(f) || fflush(f) != 0 || (o->mode != OUT_THROUGH && fsync(fileno(f)) != 0);
    int e = errno;
    if (!bad && o->mode == OUT_UNNAMED && link_unnamed(o, fileno(f)) != 0) {
        ea_status st = ea_error(EA_ERR_IO, "%s: cannot create: %s", o->path, strerror(errno));
        ea_outfile_abort(o);
        return st;
    }
    o->fp = NULL;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        ea_status st = ea_error(EA_ERR_IO, "%s: write failed: %s", o->path, strerror(e ? e : EIO));
        ea_outfile_abort(o);
        return st;
    }
    if (o->mode == OUT_NAMED && rename(o->tmp, o->path) != 0) {
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
        int e = errno;
        ea_outfile_abort(&o);
        return ea_error(EA_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    return ea_outfile_commit(&o);
}
