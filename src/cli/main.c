/* eigenalign: command dispatch; standard streams checked (open at start, written at exit). */
#include <errno.h>
#include <fcntl.h>
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
    if (!strcmp(argv[1], "--version")) {
        printf("eigenalign %s\n", EA_VERSION);
        return finish_stdout(0);
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) return finish_stdout(commands[i].run(argc - 1, argv + 1));
    fprintf(stderr, "eigenalign: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
