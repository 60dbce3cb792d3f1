/* eigenalign: command dispatch; standard streams checked (open at start, written at exit). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

typedef struct {
    const char *name;
    int (*run)(int, char **);
    const char *summary;
} command;

static const command commands[] = {
    {"analyze", cmd_analyze, "spectra of activations: effective rank, cumulative variance, outliers"},
    {"fit", cmd_fit, "fit an activation compressor (mean + top-k eigenvectors) on calibration text"},
    {"compress", cmd_compress, "reconstruction error and model quality of a compressor on unseen text"},
    {"eval", cmd_eval, "perplexity, KL and speed of KV-cache codecs against the exact cache"},
    {"bench-memory", cmd_bench_memory, "memory table by sequence length, computed and measured"},
    {"budget", cmd_budget, "memory arithmetic for any config or named shape, beside the note's"},
    {"handshake", cmd_handshake, "ESAP: compare two models' spectra, with controls"},
    {"align", cmd_align, "ESAP: Procrustes alignment of two models on shared anchors"},
    {"message", cmd_message, "ESAP: k-dimensional messages between two aligned models"},
    {"generate", cmd_generate, "generate text from a prompt"},
    {"perplexity", cmd_perplexity, "perplexity of a text file"},
    {"tokenize", cmd_tokenize, "GPT-2 token ids of a text"},
};

static void usage(FILE *f) {
    fprintf(f, "eigenalign %s: measure the low-rank structure of GPT-2 activations and use it to\n"
               "shrink inference memory.\n\nusage: eigenalign COMMAND [options]   (COMMAND --help for its options)\n\n",
            EA_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-13s %s\n", commands[i].name, commands[i].summary);
}

/* OpenBLAS's constructor (run before main) takes a ~129 MB buffer of address space per BLAS thread
 * and, when the address-space limit (ulimit -v) leaves no room, retries forever: a hang before main
 * (issue 20 item 9). An executable's preinit_array runs before every shared library's constructor:
 * check there, with system calls only, and fail with a message instead. */
static long env_threads(char **envp, const char *name) {
    size_t n = strlen(name);
    for (char **e = envp; e && *e; e++)
        if (!strncmp(*e, name, n) && (*e)[n] == '=') return strtol(*e + n + 1, NULL, 10);
    return 0;
}

static void check_address_space(int argc, char **argv, char **envp) {
    (void)argc;
    (void)argv;
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return;
    long nt = env_threads(envp, "OPENBLAS_NUM_THREADS");
    if (nt <= 0) nt = env_threads(envp, "GOTO_NUM_THREADS");
    if (nt <= 0) nt = env_threads(envp, "OMP_NUM_THREADS");
    if (nt <= 0) nt = sysconf(_SC_NPROCESSORS_ONLN);
    if (nt <= 0 || nt > 4096) nt = 1;
    size_t need = (size_t)nt * ((size_t)136 << 20);
    void *p = mmap(NULL, need, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) {
        munmap(p, need);
        return;
    }
    char msg[320];
    int len = snprintf(msg, sizeof msg, "eigenalign: error: out of memory: the address-space limit (ulimit -v %llu KB) "
                       "leaves no room for the BLAS work buffers (%zu MB for %ld threads); raise it or lower "
                       "OMP_NUM_THREADS\n", (unsigned long long)rl.rlim_cur >> 10, need >> 20, nt);
    if (len > 0 && write(2, msg, (size_t)len) < 0) _exit(1);
    _exit(1);
}
__attribute__((section(".preinit_array"), used)) static void (*const ea_preinit)(int, char **, char **) =
    check_address_space;

/* A closed fd 0/1/2 would be taken by the next file opened (an output file would then receive the
 * JSON meant for stdout): hold each with /dev/null opened the wrong way round, so writes to a
 * closed stdout fail with EBADF and are reported, and reads of a closed stdin fail likewise. */
static void hold_std_fds(void) {
    for (int fd = 0; fd <= 2; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            int n = open("/dev/null", fd == 0 ? O_WRONLY : O_RDONLY);
            if (n >= 0 && n != fd) {
                dup2(n, fd);
                close(n);
            }
        }
}

/* Every result goes to stdout: a write that failed anywhere (disk full, closed, EPIPE with SIGPIPE
 * ignored) makes the run fail, whatever the command returned. */
static int finish_stdout(int rc) {
    int bad = ferror(stdout) != 0;
    errno = 0;
    if (fflush(stdout) != 0) bad = 1;
    int e = errno;
    if (fclose(stdout) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad && (rc == 0 || e)) {
        fprintf(stderr, "eigenalign: write error on standard output: %s\n", strerror(e ? e : EIO));
    }
    if (bad) return rc ? rc : 1;
    return rc;
}

int main(int argc, char **argv) {
    hold_std_fds();
    ea_process_tune(argv);
    ea_outfile_install_signal_cleanup(); /* Ctrl-C leaves no <output>.tmp.XXXXXX behind */
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return finish_stdout(argc < 2 ? 2 : 0);
    }
    ea_isa tier;
    if (ea_isa_tier(&tier)) { /* EA_ISA names a tier this CPU cannot run: refuse rather than run another */
        fprintf(stderr, "eigenalign: %s\n", ea_last_error());
        return 2;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("eigenalign %s (kernels: %s)\n", EA_VERSION, ea_isa_name(tier));
        return finish_stdout(0);
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) return finish_stdout(commands[i].run(argc - 1, argv + 1));
    fprintf(stderr, "eigenalign: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
