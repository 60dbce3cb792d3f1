/* eigenalign: command dispatch. */
#include <string.h>

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

int main(int argc, char **argv) {
    ea_process_tune(argv);
    ea_outfile_install_signal_cleanup(); /* Ctrl-C leaves no <output>.tmp.XXXXXX behind */
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    ea_isa tier;
    if (ea_isa_tier(&tier)) { /* EA_ISA names a tier this CPU cannot run: refuse rather than run another */
        fprintf(stderr, "eigenalign: %s\n", ea_last_error());
        return 2;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("eigenalign %s (kernels: %s)\n", EA_VERSION, ea_isa_name(tier));
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "eigenalign: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
