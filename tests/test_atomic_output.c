/* No lost output: a run killed while writing must leave the previous good file untouched and no
 * truncated file at the target path (outputs go to a temporary file linked or renamed on commit);
 * a run stopped by any terminating signal must not leave its temporary file behind either, and
 * where O_TMPFILE works (this test's ext4/tmpfs folder) not even SIGKILL leaves one.
 * Part 1 kills a process inside ea_outfile writes (exact control over "midway"), with and without
 * ea_outfile_install_signal_cleanup, with the unnamed (O_TMPFILE) and the named temporary
 * (EA_NO_O_TMPFILE=1), and hammers the instant between creating a named temporary and registering
 * it. Part 2 kills the real CLI commands that write files, when their output file is open and at
 * fractions of their normal run time, with SIGKILL, SIGINT and SIGTERM, in both modes. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char GOOD[] = "{\"previous\": \"good file\"}\n";

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static int file_equals(const char *path, const void *want, size_t n) {
    char *data = NULL;
    size_t got = 0;
    if (ea_read_file(path, 1u << 30, &data, &got)) return 0;
    int eq = got == n && memcmp(data, want, n) == 0;
    free(data);
    return eq;
}

/* Names in dir other than target: temporaries (target.tmp.*) are counted apart; anything else
 * (e.g. a half-written file under another name) is an error. */
static void scan_dir(const char *dir, const char *target_name, int *temps, int *others) {
    *temps = *others = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s.tmp.", target_name);
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, target_name)) continue;
        if (!strncmp(e->d_name, prefix, strlen(prefix))) (*temps)++;
        else {
            printf("    unexpected file %s/%s\n", dir, e->d_name);
            (*others)++;
        }
    }
    closedir(d);
}

static int temp_exists(const char *dir, const char *target_name) {
    int temps, others;
    scan_dir(dir, target_name, &temps, &others);
    return temps > 0;
}

/* The process holds a file of dir open for writing: a named temporary, or an unnamed O_TMPFILE
 * (/proc shows it as "dir/#inode (deleted)"). */
static int output_open(pid_t pid, const char *dir, const char *target_name) {
    if (temp_exists(dir, target_name)) return 1;
    char fddir[64], link[1200], target[1200];
    snprintf(fddir, sizeof fddir, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(fddir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    size_t dl = strlen(dir);
    while (!found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(link, sizeof link, "%s/%s", fddir, e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n <= 0) continue;
        target[n] = 0;
        found = !strncmp(target, dir, dl) && target[dl] == '/';
    }
    closedir(d);
    return found;
}

static int tmpfile_mode; /* 1: default (O_TMPFILE where supported); 0: EA_NO_O_TMPFILE=1 */
static void set_mode(int unnamed) {
    tmpfile_mode = unnamed;
    if (unnamed) unsetenv("EA_NO_O_TMPFILE");
    else setenv("EA_NO_O_TMPFILE", "1", 1);
}

static const char *sig_name(int sig) {
    static char buf[32];
    const char *s = strsignal(sig);
    snprintf(buf, sizeof buf, "%s", sig == SIGKILL ? "SIGKILL" : sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM"
                                    : s ? s : "signal");
    return buf;
}

/* Child of part 1: open the output, write 64 KB chunks forever, tell the parent after the first. */
static void writer_child(const char *target, int ready_fd, int cleanup) {
    struct rlimit no_core = {0, 0}; /* SIGQUIT, SIGXFSZ, ... dump core by default */
    setrlimit(RLIMIT_CORE, &no_core);
    if (cleanup) ea_outfile_install_signal_cleanup();
    ea_outfile o;
    if (ea_outfile_open(&o, target) != EA_OK) _exit(10);
    static char chunk[65536];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 100000; i++) {
        if (fwrite(chunk, 1, sizeof chunk, o.fp) != sizeof chunk) _exit(11);
        fflush(o.fp);
        if (i == 0 && write(ready_fd, "r", 1) != 1) _exit(12);
        if (i > 4) usleep(1000);
    }
    _exit(13); /* never committed: the parent kills us first */
}

/* Named temporary: without the handlers (the library installs none by itself) every signal
 * leaves it; with them, every terminating signal removes it and the process still dies of the
 * signal. Unnamed (O_TMPFILE): nothing is ever left. */
static void killed_writers(int cleanup) {
    const int sigs[] = {SIGKILL, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2, SIGALRM, SIGXFSZ,
                        SIGXCPU, SIGVTALRM, SIGPROF};
    for (size_t k = 0; k < sizeof sigs / sizeof *sigs; k++) {
        char *dir = test_tmpdir();
        char target[512];
        snprintf(target, sizeof target, "%s/report.json", dir);
        assert_int_equal(test_write_file(target, GOOD, sizeof GOOD - 1), 0);
        int p[2];
        assert_int_equal(pipe(p), 0);
        fflush(stdout);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            writer_child(target, p[1], cleanup);
        }
        close(p[1]);
        char c;
        assert_int_equal(read(p[0], &c, 1), 1); /* the child has written its first chunk */
        close(p[0]);
        sleep_s(0.02);
        struct stat st;
        int temps, others;
        scan_dir(dir, "report.json", &temps, &others);
        assert_true(output_open(pid, dir, "report.json"));
        if (tmpfile_mode && temps == 1) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            test_rmdir(dir);
            free(dir);
            TEST_SKIP("O_TMPFILE is not supported in this test's folder; the named temporary was used");
        }
        assert_int_equal(temps, tmpfile_mode ? 0 : 1); /* the partial output: unnamed, or its temporary name */
        assert_int_equal(kill(pid, sigs[k]), 0);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == sigs[k]);
        assert_int_equal(stat(target, &st), 0);
        scan_dir(dir, "report.json", &temps, &others);
        printf("killed writer (%s, %s temporary) with %s: target %lld bytes (previous %zu), %d temporary file(s) "
               "left\n", cleanup ? "signal cleanup installed" : "no handlers", tmpfile_mode ? "unnamed" : "named",
               sig_name(sigs[k]), (long long)st.st_size, sizeof GOOD - 1, temps);
        assert_true(file_equals(target, GOOD, sizeof GOOD - 1));
        assert_int_equal(others, 0);
        assert_int_equal(temps, tmpfile_mode || (cleanup && sigs[k] != SIGKILL) ? 0 : 1);
        test_rmdir(dir);
        free(dir);
    }
}

static void test_killed_writer_keeps_previous_file(void **state) {
    (void)state;
    for (int unnamed = 0; unnamed <= 1; unnamed++) {
        set_mode(unnamed);
        killed_writers(0);
        killed_writers(1);
    }
    set_mode(1);
}

/* Child of the gap test: create and drop named temporaries as fast as it can, forever. */
static void churn_child(const char *target, int ready_fd) {
    ea_outfile_install_signal_cleanup();
    int told = 0;
    for (;;) {
        ea_outfile o;
        if (ea_outfile_open(&o, target) != EA_OK) _exit(10);
        if (!told && write(ready_fd, "r", 1) == 1) told = 1;
        ea_outfile_abort(&o);
    }
}

/* Issue 23: a SIGINT landing between mkstemp and the registration of the temporary left it behind.
 * The temporary is now created with the signals blocked, so a process that does nothing but create
 * and remove temporaries, interrupted at arbitrary instants, never leaves one. */
static void test_signal_between_create_and_register(void **state) {
    (void)state;
    set_mode(0);
    char *dir = test_tmpdir();
    char target[512];
    snprintf(target, sizeof target, "%s/out.json", dir);
    int leaked = 0, runs = 200;
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (int r = 0; r < runs; r++) {
        int p[2];
        assert_int_equal(pipe(p), 0);
        fflush(stdout);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(p[0]);
            churn_child(target, p[1]);
        }
        close(p[1]);
        char c;
        assert_int_equal(read(p[0], &c, 1), 1);
        close(p[0]);
        sleep_s(0.0005 * (r % 7));
        int sig = sigs[r % 3];
        assert_int_equal(kill(pid, sig), 0);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == sig);
        int temps, others;
        scan_dir(dir, "out.json", &temps, &others);
        assert_int_equal(others, 0);
        if (temps) {
            leaked++;
            DIR *d = opendir(dir);
            struct dirent *e;
            char path[1024];
            while ((e = readdir(d)) != NULL)
                if (strstr(e->d_name, ".tmp.")) {
                    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                    unlink(path);
                }
            closedir(d);
        }
    }
    printf("%d processes churning named temporaries interrupted at arbitrary instants: %d left a temporary\n",
           runs, leaked);
    assert_int_equal(leaked, 0);
    set_mode(1);
    test_rmdir(dir);
    free(dir);
}

/* The other half of the contract: a run that finishes replaces the file and cleans up. */
static void test_committed_writer_replaces_file(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    char target[512];
    snprintf(target, sizeof target, "%s/out.bin", dir);
    assert_int_equal(test_write_file(target, GOOD, sizeof GOOD - 1), 0);
    size_t n = 3u << 20;
    unsigned char *data = malloc(n);
    for (size_t i = 0; i < n; i++) data[i] = (unsigned char)(i * 2654435761u >> 24);
    assert_int_equal(ea_write_file_atomic(target, data, n), EA_OK);
    assert_true(file_equals(target, data, n));
    int temps, others;
    scan_dir(dir, "out.bin", &temps, &others);
    assert_int_equal(temps + others, 0);

    /* A failed open (missing folder) leaves nothing behind and says which path. */
    char bad[600];
    snprintf(bad, sizeof bad, "%s/missing/out.bin", dir);
    ea_outfile o;
    assert_int_not_equal(ea_outfile_open(&o, bad), EA_OK);
    printf("open in a missing folder: %s\n", ea_last_error());
    assert_non_null(strstr(ea_last_error(), bad));
    free(data);
    test_rmdir(dir);
    free(dir);
}

/* ---- part 2: the real CLI ---- */

typedef struct {
    const char *name;
    const char *out_name;     /* file name of the output inside the temp folder */
    const char *const *argv;  /* "{out}" is replaced by the output path */
} cli_writer;

/* Small inputs keep each run near a second (the suite also runs under ASan); the files are still
 * 100-200 KB, so the write itself takes a while. */
static const char *const FIT_ARGV[] = {"fit", "--text", "data/calib.txt", "--rank", "16", "--max-tokens", "256",
                                       "-o", "{out}", NULL};
static const char *const ANALYZE_ARGV[] = {"analyze", "--text", "data/calib.txt", "--sites", "hidden,k",
                                           "--max-tokens", "256", "--svg", "{out}", NULL};
static const cli_writer WRITERS[] = {
    {"fit -o", "model.compressor", FIT_ARGV},
    {"analyze --svg", "spectra.svg", ANALYZE_ARGV},
};

static pid_t spawn_cli(const char *const *argv, const char *out) {
    size_t n = 0;
    while (argv[n]) n++;
    char **args = calloc(n + 2, sizeof *args);
    args[0] = (char *)EA_CLI_PATH;
    for (size_t i = 0; i < n; i++) args[i + 1] = (char *)(strcmp(argv[i], "{out}") ? argv[i] : out);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        execv(EA_CLI_PATH, args);
        _exit(127);
    }
    free(args);
    return pid;
}

static int run_cli_to(const char *const *argv, const char *out, char **err) {
    size_t n = 0;
    while (argv[n]) n++;
    const char **args = calloc(n + 1, sizeof *args);
    for (size_t i = 0; i < n; i++) args[i] = strcmp(argv[i], "{out}") ? argv[i] : out;
    int rc = test_run_cli(NULL, err, args);
    free(args);
    return rc;
}

/* One interrupted run: start, wait for the trigger, send sig; then check the target. Returns 1 if
 * the signal landed before the command finished. */
static int interrupt_once(const cli_writer *w, const char *dir, const char *target, const char *ref, size_t ref_n,
                          int sig, double after_s, int at_temp) {
    assert_int_equal(test_write_file(target, GOOD, sizeof GOOD - 1), 0);
    pid_t pid = spawn_cli(w->argv, target);
    assert_true(pid > 0);
    int status = 0, done = 0;
    double t0 = ea_time_now();
    while (!done) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            done = 1;
            break;
        }
        if (at_temp ? output_open(pid, dir, w->out_name) : ea_time_now() - t0 >= after_s) break;
        if (ea_time_now() - t0 > 60) break;
        if (!at_temp) sleep_s(0.001);
    }
    if (!done) {
        kill(pid, sig);
        waitpid(pid, &status, 0);
    }
    int killed = WIFSIGNALED(status);
    struct stat st;
    int exists = stat(target, &st) == 0;
    int temps, others;
    scan_dir(dir, w->out_name, &temps, &others);
    printf("  %-14s %-7s %s %s: %s, target %lld bytes, %d temporary left\n", w->name, sig_name(sig),
           tmpfile_mode ? "unnamed" : "named", at_temp ? "when the output was open" : "at a fixed time", killed ? "killed" : "finished first",
           exists ? (long long)st.st_size : -1LL, temps);
    assert_true(exists);
    assert_int_equal(others, 0);
    /* Killed or not, the target is the previous file or the complete new one (a kill can land
     * after the rename, while the process is exiting); never anything in between. */
    int old_file = file_equals(target, GOOD, sizeof GOOD - 1), new_file = file_equals(target, ref, ref_n);
    printf("    target is %s\n", old_file ? "the previous file" : new_file ? "the complete new output" : "CORRUPT");
    assert_true(old_file || new_file);
    if (!killed) assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0 && new_file);
    /* The CLI's handlers remove the temporary and die of the same signal. */
    if (killed) assert_int_equal(WTERMSIG(status), sig);
    if (sig != SIGKILL || tmpfile_mode) assert_int_equal(temps, 0);
    /* Clear temporaries so the next trigger sees only its own. */
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp.")) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    closedir(d);
    return killed && old_file;
}

static void test_killed_cli_keeps_previous_output(void **state) {
    (void)state;
    int tested = 0;
    for (size_t i = 0; i < sizeof WRITERS / sizeof *WRITERS; i++) {
        const cli_writer *w = &WRITERS[i];
        char *dir = test_tmpdir();
        char target[512];
        snprintf(target, sizeof target, "%s/%s", dir, w->out_name);
        char *err = NULL;
        double t0 = ea_time_now();
        int rc = run_cli_to(w->argv, target, &err);
        double dur = ea_time_now() - t0;
        if (rc != 0 && strstr(err, "not implemented")) {
            /* visible, and a failure under EA_REQUIRE_SHARED=1; the other commands still run */
            if (test_require_all()) fail_msg("EA_REQUIRE_SHARED=1 but eigenalign %s is not implemented", w->name);
            printf("SKIP: eigenalign %s is not implemented yet\n", w->name);
            test_skipped++;
            free(err);
            test_rmdir(dir);
            free(dir);
            continue;
        }
        if (rc != 0) {
            char why[2048];
            snprintf(why, sizeof why, "%s", err);
            free(err);
            test_rmdir(dir);
            free(dir);
            fail_msg("eigenalign %s failed (exit %d): %s", w->name, rc, why);
        }
        free(err);
        char *ref = NULL;
        size_t ref_n = 0;
        assert_int_equal(ea_read_file(target, 1u << 30, &ref, &ref_n), EA_OK);
        /* The output must be reproducible for "complete new output" to be checkable. */
        assert_int_equal(run_cli_to(w->argv, target, NULL), 0);
        assert_true(file_equals(target, ref, ref_n));
        printf("eigenalign %s runs %.2f s, writes %zu bytes\n", w->name, dur, ref_n);
        int landed = 0;
        landed += interrupt_once(w, dir, target, ref, ref_n, SIGKILL, 0, 1);
        landed += interrupt_once(w, dir, target, ref, ref_n, SIGKILL, 0.5 * dur, 0);
        /* Under load a kill can keep landing after the rename; retry so the test does see one
         * that stops a run mid-way. */
        int tries = 2;
        for (int extra = 0; landed == 0 && extra < 5; extra++, tries++)
            landed += interrupt_once(w, dir, target, ref, ref_n, SIGKILL, (0.2 + 0.15 * extra) * dur, 0);
        /* SIGINT and SIGTERM once the output is open (interrupt_once checks no temporary is left),
         * with the unnamed and the named temporary: retry until one stops the run before the
         * commit, so the cleanup is seen removing it. */
        const int catchable[] = {SIGINT, SIGTERM, SIGINT, SIGTERM};
        for (size_t s = 0; s < sizeof catchable / sizeof *catchable; s++) {
            set_mode(s < 2);
            int stopped = 0, n_try = 0;
            while (!stopped && n_try < 8) {
                stopped = interrupt_once(w, dir, target, ref, ref_n, catchable[s], 0, 1);
                n_try++;
            }
            printf("eigenalign %s: %s stopped the run mid-write after %d tr%s; no temporary left\n", w->name,
                   sig_name(catchable[s]), n_try, n_try == 1 ? "y" : "ies");
            assert_true(stopped);
            landed += stopped;
            tries += n_try;
        }
        set_mode(1);
        printf("eigenalign %s: %d of %d interruptions stopped the run before its output was complete; "
               "the previous file was intact each time\n", w->name, landed, tries);
        assert_true(landed > 0);
        free(ref);
        tested++;
        test_rmdir(dir);
        free(dir);
    }
    if (!tested) TEST_SKIP("no CLI command that writes an output file is implemented yet");
}

/* First name in dir starting with prefix, into out (size n); 1 if found. */
static int find_entry(const char *dir, const char *prefix, char *out, size_t n) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d)) != NULL)
        if (!strncmp(e->d_name, prefix, strlen(prefix))) found = snprintf(out, n, "%s/%s", dir, e->d_name) < (int)n;
    closedir(d);
    return found;
}

/* Issue 20 item 12: bench-memory keeps the fitted codec and the statistics for its measuring
 * children in $TMPDIR/ea_bench_memory_XXXXXX; a terminating signal (while the codec is fitted, or
 * while the children measure) must remove that directory with its files. */
static void test_killed_bench_memory_leaves_no_directory(void **state) {
    (void)state;
    static const char *const ARGV[] = {"bench-memory", "--codec", "klt:1:b,q8", "--seq", "32,48,64", "--calib",
                                       "data/calib.txt", "--calib-tokens", "512", NULL};
    const int sigs[] = {SIGTERM, SIGHUP, SIGINT, SIGQUIT};
    int killed = 0;
    for (int phase = 0; phase < 2; phase++)
        for (size_t k = 0; k < sizeof sigs / sizeof *sigs; k++) {
            char *dir = test_tmpdir();
            const char *old = getenv("TMPDIR");
            char *saved = old ? strdup(old) : NULL;
            setenv("TMPDIR", dir, 1);
            pid_t pid = spawn_cli(ARGV, "");
            if (saved) setenv("TMPDIR", saved, 1);
            else unsetenv("TMPDIR");
            free(saved);
            assert_true(pid > 0);
            /* phase 0: as soon as the directory exists (the klt fit runs); phase 1: once the
             * statistics are written (the measuring children run) */
            char found[1024], stats[1100];
            int ready = 0, status = 0;
            for (int i = 0; i < 60000 && !ready; i++) {
                if (find_entry(dir, "ea_bench_memory_", found, sizeof found)) {
                    snprintf(stats, sizeof stats, "%s/stats.bin", found);
                    ready = phase == 0 || access(stats, F_OK) == 0;
                }
                if (!ready) {
                    if (waitpid(pid, &status, WNOHANG) == pid) break; /* finished first */
                    sleep_s(0.001);
                }
            }
            if (ready) {
                kill(pid, sigs[k]);
                assert_int_equal(waitpid(pid, &status, 0), pid);
            }
            /* killed by the signal (not a normal exit: the run must not have finished first) */
            if (WIFSIGNALED(status) && WTERMSIG(status) == sigs[k]) killed++;
            else printf("    phase %d, signal %d: the run ended first (status 0x%x)\n", phase, sigs[k], status);
            int temps, others;
            scan_dir(dir, "", &temps, &others);
            if (others) printf("    phase %d, signal %d: left %s\n", phase, sigs[k], found);
            assert_int_equal(others, 0);
            test_rmdir(dir);
            free(dir);
        }
    /* a run that ended before the signal proves nothing; all but one must have been killed */
    assert_true(killed >= 7);
}

int main(void) {
    set_mode(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_killed_writer_keeps_previous_file),
        cmocka_unit_test(test_committed_writer_replaces_file),
        cmocka_unit_test(test_signal_between_create_and_register),
        cmocka_unit_test(test_killed_cli_keeps_previous_output),
        cmocka_unit_test(test_killed_bench_memory_leaves_no_directory),
    };
    return TEST_RUN(tests, NULL, NULL);
}
