/* eigenalign bench-memory: the memory table by sequence length, with correct accounting.
 *   KV cache         = 2 × layers × seq × d values × bits per value (the codec's own row sizes;
 *                      d = n_kv_head × head_dim, which GQA makes smaller than n_embd)
 *   codec overhead   = fixed bytes the codec stores besides the cache (bases, means, tables); the
 *                      JSON adds codec_resident_bytes, what the codec object holds in memory
 *   attention scores = heads × seq² floats of one layer during a prefill (transient)
 *   weights          = the parameters as the engine holds them (float32)
 * and, beside the computed numbers, measured ones: the cache's own allocation
 * (ea_kvcache_allocated_bytes), the peak RSS of a fresh process that loads the model, builds the
 * codec and runs a seq-token prefill (getrusage; loading the weights usually sets it), and that
 * process's resident growth after the load (cache, codec, activations). The note's claimed reduction is shown for contrast.
 * Each measurement runs in a child process (this executable re-run with --measure-one) so that
 * peak RSS belongs to one configuration. The child does not fit anything (that would inflate its
 * peak): a klt codec is the one fitted here, saved to a temporary file (spec file:PATH); pca codecs
 * get their statistics through a temporary file. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"

static const char *usage =
    "usage: eigenalign bench-memory [--model DIR] [--codec CODEC[,CODEC...]] [--seq N[,N...]]\n"
    "                               [--calib PATH] [--calib-tokens N] [--claimed-ratio X] [--no-measure] [--json]\n"
    "  Memory by sequence length (default 64,128,256,512,1024,2048) for each codec (default\n"
    "  f32,f16,q8,q4,klt:2): KV cache = 2 x layers x seq x d x bits, codec overhead, attention scores\n"
    "  (heads x seq^2 floats per layer, transient), weights; measured: the cache's allocation and the peak\n"
    "  RSS of a child process running a seq-token prefill, and its RSS growth from after the model load\n"
    "  (cache, codec, activations, scratch). Lengths above n_positions are computed only.\n"
    "  Basis codecs are fitted on --calib (default the bundled text, first --calib-tokens, default 8192).\n"
    "  --claimed-ratio: the note's claimed KV reduction, shown for contrast (default 85).\n"
    "  Markdown on stdout, or JSON with --json.\n";

#define STATS_MAGIC 0x45414b5653544154ull /* "EAKVSTAT" */

/* ---- statistics handed to the measuring child (raw float64, this machine's byte order) ---- */

static int write_all(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n ? 0 : -1; }

static ea_status stats_dump(const char *path, const ea_kv_stats *s) {
    FILE *f = fopen(path, "wb");
    if (!f) return ea_error(EA_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    uint64_t hdr[3] = {STATS_MAGIC, (uint64_t)s->n_layer, (uint64_t)s->d};
    size_t nm = (size_t)s->n_layer * s->d, nc = nm * s->d;
    int bad = write_all(f, hdr, sizeof hdr) || write_all(f, &s->n, sizeof s->n);
    for (int k = 0; k < 2 && !bad; k++) bad = write_all(f, s->mean[k], nm * 8) || write_all(f, s->cov[k], nc * 8);
    if (fclose(f) || bad) return ea_error(EA_ERR_IO, "%s: write failed", path);
    return EA_OK;
}

static ea_status stats_load(const char *path, const ea_config *cfg, ea_kv_stats *s) {
    FILE *f = fopen(path, "rb");
    if (!f) return ea_error(EA_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    uint64_t hdr[3];
    ea_status st = EA_OK;
    if (fread(hdr, sizeof hdr, 1, f) != 1 || hdr[0] != STATS_MAGIC || hdr[1] != (uint64_t)cfg->n_layer ||
        hdr[2] != (uint64_t)cfg->n_embd)
        st = ea_error(EA_ERR_FORMAT, "%s: not statistics for this model", path);
    if (!st) st = ea_kv_stats_alloc(s, cfg->n_layer, cfg->n_embd);
    size_t nm = (size_t)cfg->n_layer * cfg->n_embd, nc = nm * cfg->n_embd;
    int bad = st != EA_OK || fread(&s->n, 8, 1, f) != 1;
    for (int k = 0; k < 2 && !bad; k++) bad = fread(s->mean[k], 8, nm, f) != nm || fread(s->cov[k], 8, nc, f) != nc;
    fclose(f);
    if (bad && !st) st = ea_error(EA_ERR_FORMAT, "%s: truncated statistics", path);
    if (st) ea_kv_stats_free(s);
    return st;
}

/* ---- the child: one (codec, seq) measurement ---- */

/* Resident bytes now (/proc/self/statm), 0 if unknown. */
static double rss_now(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (!f) return 0;
    int ok = fscanf(f, "%ld %ld", &size, &res) == 2;
    fclose(f);
    return ok ? (double)res * (double)sysconf(_SC_PAGESIZE) : 0;
}

static int measure_one(const char *model_dir, const char *spec, int seq, const char *stats_path) {
    ea_model *m = NULL;
    ea_kv_codec *codec = NULL;
    ea_kvcache *cache = NULL;
    ea_kv_stats s = {0};
    int *tok = NULL, have = 0, rc = 1;
    float *logits = NULL;
    ea_status st = ea_model_load(model_dir, &m);
    if (st) goto done;
    double rss_loaded = rss_now();
    const ea_config *cfg = ea_model_config(m);
    if (stats_path && (st = stats_load(stats_path, cfg, &s))) goto done;
    have = stats_path != NULL;
    if (strcmp(spec, "f32") && (st = ea_kv_codec_create(spec, cfg, have ? &s : NULL, &codec))) goto done;
    ea_kv_stats_free(&s); /* the codec keeps what it needs; the statistics are not its memory */
    if ((st = ea_kvcache_init(&cache, cfg, seq, codec))) goto done;
    tok = malloc(sizeof(int) * (size_t)seq);
    logits = malloc(sizeof(float) * (size_t)cfg->vocab_size);
    if (!tok || !logits) {
        st = ea_error(EA_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < seq; i++) tok[i] = (int)((i * 7919u + 13u) % (unsigned)cfg->vocab_size);
    if ((st = ea_model_forward(m, cache, tok, seq, logits, 0))) goto done;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%ld %zu %.0f\n", ru.ru_maxrss, ea_kvcache_allocated_bytes(cache), rss_now() - rss_loaded);
    rc = 0;
done:
    if (st) fprintf(stderr, "eigenalign bench-memory: %s\n", ea_last_error());
    free(tok);
    free(logits);
    ea_kvcache_free(cache);
    ea_kv_codec_free(codec);
    ea_kv_stats_free(&s);
    ea_model_free(m);
    return rc;
}

/* Run this executable with --measure-one and read "peak_rss_kb cache_bytes rss_growth_bytes". */
static int spawn_measure(const char *model_dir, const char *spec, int seq, const char *stats_path, long *rss_kb,
                         size_t *cache_bytes, double *growth) {
    int fd[2];
    if (pipe(fd)) return -1;
    char seq_s[32];
    snprintf(seq_s, sizeof seq_s, "%d", seq);
    const char *argv[] = {"eigenalign", "bench-memory", "--model", model_dir, "--measure-one", spec, "--seq", seq_s,
                          stats_path ? "--stats" : NULL, stats_path, NULL};
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]);
        close(fd[1]);
        return -1;
    }
    if (pid == 0) { /* only exec after fork: the parent has threads */
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execv("/proc/self/exe", (char *const *)argv);
        _exit(127);
    }
    close(fd[1]);
    char buf[128] = {0};
    size_t got = 0;
    ssize_t r;
    while (got + 1 < sizeof buf && (r = read(fd[0], buf + got, sizeof buf - 1 - got)) > 0) got += (size_t)r;
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
    return sscanf(buf, "%ld %zu %lf", rss_kb, cache_bytes, growth) == 3 ? 0 : -1;
}

/* ---- the table ---- */

static double weights_bytes(const ea_config *c) {
    double d = c->n_embd, f = c->n_inner > 0 ? c->n_inner : 4.0 * c->n_embd;
    if (c->arch != EA_ARCH_GPT2) { /* Llama family: RMSNorm, q/k/v/o, SwiGLU, no learned positions */
        double qd = ea_config_q_dim(c), kvd = ea_config_kv_dim(c), hd = ea_config_head_dim(c);
        double layer = 2 * d + (qd + 2 * kvd) * d + d * qd + 3 * f * d + (c->qkv_bias ? qd + 2 * kvd : 0) +
                       (c->o_bias ? d : 0) + (c->qk_norm ? 2 * hd : 0);
        return 4.0 * ((double)c->vocab_size * d * (c->tie_word_embeddings ? 1 : 2) + c->n_layer * layer + d);
    }
    double layer = 4 * d /* two layer norms */ + 3 * d * d + 3 * d + d * d + d + d * f + f + f * d + d;
    return 4.0 * ((double)c->vocab_size * d + (double)c->n_positions * d + c->n_layer * layer + 2 * d);
}

typedef struct {
    const char *spec;
    char file[PATH_MAX + 8]; /* klt: the fitted codec saved for the measuring child ("" otherwise) */
    double bits, row_b, seq_b; /* bits at n_ctx; bytes per token and per sequence */
    size_t overhead, resident; /* stored parameters; what the codec object holds in memory */
} codec_info;

static int parse_ints(const char *s, int *out, int max) {
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > (1 << 20) || (*end && *end != ',')) return -1;
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
    }
    return n;
}

static void human(double b, char *out, size_t cap) {
    const char *u[] = {"B", "KiB", "MiB", "GiB"};
    int i = 0;
    while (b >= 1024 && i < 3) { b /= 1024; i++; }
    snprintf(out, cap, i ? "%.2f %s" : "%.0f %s", b, u[i]);
}

int cmd_bench_memory(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    cli_args a;
    cli_args_init(&a, "bench-memory", argc, argv);
    const char *model_dir = cli_str(&a, "--model", cli_default_model());
    const char *one = cli_str(&a, "--measure-one", NULL);
    const char *stats_path = cli_str(&a, "--stats", NULL);
    const char *codecs_s = cli_str(&a, "--codec", "f32,f16,q8,q4,klt:2");
    const char *seq_s = cli_str(&a, "--seq", "64,128,256,512,1024,2048");
    const char *calib = cli_str(&a, "--calib", cli_default_calib());
    long calib_tokens = cli_long(&a, "--calib-tokens", 8192, 2, 1L << 40);
    double claimed = cli_double(&a, "--claimed-ratio", 85, 1e-6, 1e9);
    int no_measure = cli_has(&a, "--no-measure"), json = cli_has(&a, "--json");
    int rc = cli_finish(&a);
    cli_args_free(&a);
    if (rc) return rc;
    int seqs[32];
    int ns = parse_ints(seq_s, seqs, 32);
    if (ns <= 0) return cli_error("bench-memory", "--seq: '%s' is not a list of positive integers", seq_s), 2;
    if (one) return measure_one(model_dir, one, seqs[0], stats_path);

    char *list = strdup(codecs_s), tmpl[PATH_MAX], *tmpdir = NULL, stats_file[PATH_MAX] = "";
    codec_info cinfo[32];
    int nc = 0, *ids = NULL;
    size_t nids = 0;
    ea_model *m = NULL;
    ea_tokenizer *tok = NULL;
    ea_kv_stats stats = {0};
    ea_kv_metric metric = {0};
    ea_kv_sens_cache *sens = NULL;
    int have_stats = 0;
    rc = 1;
    ea_status st;
    for (char *sv = NULL, *s = strtok_r(list, ",", &sv); s && nc < 32; s = strtok_r(NULL, ",", &sv)) {
        cinfo[nc].file[0] = 0;
        cinfo[nc++].spec = s;
    }
    if (!nc) {
        cli_error("bench-memory", "--codec lists no codec");
        goto done;
    }
    for (int i = 0; i < nc; i++)
        if ((st = ea_kv_codec_check_spec(cinfo[i].spec))) {
            cli_fail_status("bench-memory", st);
            rc = 2;
            goto done;
        }
    if ((st = cli_load_model(model_dir, &m, &tok))) {
        cli_fail_status("bench-memory", st);
        goto done;
    }
    const ea_config *cfg = ea_model_config(m);
    int L = cfg->n_layer, d = ea_config_kv_dim(cfg), H = cfg->n_head; /* d: one cached K or V row */
    for (int i = 0; i < nc; i++) /* the model's bounds, before fitting anything */
        if ((st = ea_kv_codec_check_spec_for(cinfo[i].spec, cfg))) {
            cli_fail_status("bench-memory", st);
            rc = 2;
            goto done;
        }
    int want = 0;
    for (int i = 0; i < nc; i++) want |= !strncmp(cinfo[i].spec, "pca", 3) || !strncmp(cinfo[i].spec, "klt", 3);
    int fit_ctx = cfg->n_positions < 1024 ? cfg->n_positions : 1024;
    if (want) {
        fprintf(stderr, "bench-memory: fitting K/V statistics on %s\n", calib);
        if ((st = cli_load_text_ids(tok, calib, (size_t)calib_tokens, &ids, &nids)) ||
            (st = ea_kv_stats_fit(m, ids, nids, fit_ctx, 0, &stats, &metric))) {
            cli_fail_status("bench-memory", st);
            goto done;
        }
        have_stats = 1;
    }
    /* In $TMPDIR (default /tmp), registered so that a terminating signal removes it with its files. */
    const char *tmp_root = getenv("TMPDIR");
    if (!tmp_root || !*tmp_root) tmp_root = "/tmp";
    if (have_stats && !no_measure) {
        int n = snprintf(tmpl, sizeof tmpl, "%s/ea_bench_memory_XXXXXX", tmp_root);
        if (n < 0 || (size_t)n + 32 >= sizeof tmpl) {
            cli_error("bench-memory", "TMPDIR '%s' is too long (%s)", tmp_root, strerror(ENAMETOOLONG));
            goto done;
        }
        if (!(tmpdir = ea_tempdir_create(tmpl))) {
            cli_error("bench-memory", "cannot create a temporary directory in %s: %s", tmp_root, strerror(errno));
            goto done;
        }
    }
    for (int i = 0; i < nc; i++) {
        ea_kv_codec *c = NULL;
        if (!strcmp(cinfo[i].spec, "f32")) {
            cinfo[i].bits = 32;
            cinfo[i].overhead = cinfo[i].resident = 0;
            cinfo[i].row_b = 2.0 * L * d * 4;
            cinfo[i].seq_b = 0;
            continue;
        }
        if ((st = sens ? EA_OK : ea_kv_sens_cache_new(&sens)) ||
            (st = ea_kv_codec_fit(m, cinfo[i].spec, have_stats ? &stats : NULL, have_stats ? &metric : NULL, ids, nids,
                                  fit_ctx, 4096, sens, &c, cli_progress, NULL))) {
            cli_fail_status("bench-memory", st);
            goto done;
        }
        cinfo[i].bits = ea_kv_codec_bits_per_value(c);
        int br = (int)ea_kv_codec_rows_stored(c, 1); /* rows are stored in blocks of br */
        cinfo[i].row_b = (double)(ea_kv_codec_bytes(c, 2 * br) - ea_kv_codec_bytes(c, br)) / br;
        cinfo[i].seq_b = (double)ea_kv_codec_bytes(c, br) - br * cinfo[i].row_b;
        cinfo[i].overhead = ea_kv_codec_overhead(c);
        cinfo[i].resident = ea_kv_codec_resident(c);
        if (tmpdir && !strncmp(cinfo[i].spec, "klt", 3)) { /* the child measures this very codec */
            snprintf(cinfo[i].file, sizeof cinfo[i].file, "file:%s/codec%d.safetensors", tmpdir, i);
            st = ea_kv_codec_save(c, cinfo[i].file + 5);
        }
        ea_kv_codec_free(c);
        if (st) {
            cli_fail_status("bench-memory", st);
            goto done;
        }
    }
    if (tmpdir) {
        snprintf(stats_file, sizeof stats_file, "%s/stats.bin", tmpdir);
        if ((st = stats_dump(stats_file, &stats))) {
            cli_fail_status("bench-memory", st);
            goto done;
        }
    }
    double wbytes = weights_bytes(cfg);
    cJSON *root = cJSON_CreateObject(), *rows = cJSON_CreateArray();
    cJSON_AddStringToObject(root, "model", model_dir);
    cJSON_AddNumberToObject(root, "n_layer", L);
    cJSON_AddNumberToObject(root, "n_embd", cfg->n_embd);
    cJSON_AddNumberToObject(root, "kv_dim", d);
    cJSON_AddNumberToObject(root, "n_kv_head", ea_config_kv_heads(cfg));
    cJSON_AddNumberToObject(root, "n_head", H);
    cJSON_AddNumberToObject(root, "n_positions", cfg->n_positions);
    cJSON_AddNumberToObject(root, "weights_bytes", wbytes);
    cJSON_AddNumberToObject(root, "claimed_ratio", claimed);
    if (!json) {
        printf("Memory by sequence length: %s (%d layers, KV row d = %d, %d heads, %d KV heads; weights %.1f MiB as float32)\n\n",
               model_dir, L, d, H, ea_config_kv_heads(cfg), wbytes / 1048576.0);
        printf("KV cache = 2 x %d layers x seq x %d values x bits/value; scores = %d heads x seq^2 floats (one layer, "
               "transient); the note's claim = float32 KV / %g.\n\n", L, d, H, claimed);
        printf("| seq | codec | bits/value | KV cache | codec overhead | KV + overhead | vs f32 KV | note's claim | "
               "attn scores | measured cache | RSS growth | peak RSS |\n");
        printf("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    }
    for (int si = 0; si < ns; si++)
        for (int i = 0; i < nc; i++) {
            int seq = seqs[si];
            /* rows, and per-sequence bytes (a codec's sink row): bits per value at this length */
            double kv = cinfo[i].seq_b + seq * cinfo[i].row_b, kv32 = 2.0 * L * seq * d * 4;
            double bits_seq = kv * 8 / (2.0 * L * seq * d);
            double total = kv + (double)cinfo[i].overhead, scores = 4.0 * H * (double)seq * seq;
            long rss = -1;
            size_t cache_b = 0;
            double growth = 0;
            int measured = !no_measure && seq <= cfg->n_positions;
            if (measured) {
                int needs = strncmp(cinfo[i].spec, "pca", 3) == 0;
                const char *child = cinfo[i].file[0] ? cinfo[i].file : cinfo[i].spec;
                if (spawn_measure(model_dir, child, seq, needs ? stats_file : NULL, &rss, &cache_b, &growth)) {
                    cli_error("bench-memory", "measuring %s at %d tokens failed", cinfo[i].spec, seq);
                    cJSON_Delete(root);
                    cJSON_Delete(rows);
                    goto done;
                }
                cli_progress(NULL, "measure", (size_t)(si * nc + i + 1), (size_t)(ns * nc));
            }
            cJSON *r = cJSON_CreateObject();
            cJSON_AddNumberToObject(r, "seq", seq);
            cJSON_AddStringToObject(r, "codec", cinfo[i].spec);
            cli_add_number(r, "bits_per_value", bits_seq);
            cJSON_AddNumberToObject(r, "kv_bytes", kv);
            cJSON_AddNumberToObject(r, "kv_f32_bytes", kv32);
            cJSON_AddNumberToObject(r, "overhead_bytes", (double)cinfo[i].overhead);
            cJSON_AddNumberToObject(r, "codec_resident_bytes", (double)cinfo[i].resident);
            cJSON_AddNumberToObject(r, "kv_plus_overhead_bytes", total);
            cJSON_AddNumberToObject(r, "ratio_vs_f32", kv32 / total);
            cJSON_AddNumberToObject(r, "claimed_bytes", kv32 / claimed);
            cJSON_AddNumberToObject(r, "attn_scores_bytes", scores);
            cJSON_AddNumberToObject(r, "weights_bytes", wbytes);
            if (measured) {
                cJSON_AddNumberToObject(r, "cache_allocated_bytes", (double)cache_b);
                cJSON_AddNumberToObject(r, "peak_rss_bytes", (double)rss * 1024);
                cJSON_AddNumberToObject(r, "rss_growth_bytes", growth);
            } else {
                cJSON_AddNullToObject(r, "cache_allocated_bytes");
                cJSON_AddNullToObject(r, "peak_rss_bytes");
                cJSON_AddNullToObject(r, "rss_growth_bytes");
            }
            cJSON_AddItemToArray(rows, r);
            if (!json) {
                char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32], b7[32], b8[32];
                human(kv, b1, sizeof b1);
                human((double)cinfo[i].overhead, b2, sizeof b2);
                human(total, b3, sizeof b3);
                human(kv32 / claimed, b4, sizeof b4);
                human(scores, b5, sizeof b5);
                if (measured) {
                    human((double)cache_b, b6, sizeof b6);
                    human((double)rss * 1024, b7, sizeof b7);
                    human(growth, b8, sizeof b8);
                } else {
                    snprintf(b6, sizeof b6, "n/a (> n_positions)");
                    snprintf(b7, sizeof b7, "n/a");
                    snprintf(b8, sizeof b8, "n/a");
                }
                printf("| %d | %s | %.3f | %s | %s | %s | %.2fx | %s | %s | %s | %s | %s |\n", seq, cinfo[i].spec,
                       bits_seq, b1, b2, b3, kv32 / total, b4, b5, b6, b8, b7);
            }
        }
    cli_progress_done();
    cJSON_AddItemToObject(root, "rows", rows);
    if (json) cli_print_json(root);
    else cJSON_Delete(root);
    rc = 0;
done:
    ea_tempdir_remove(tmpdir); /* the statistics and the saved codecs with it */
    free(list);
    free(ids);
    if (have_stats) ea_kv_stats_free(&stats);
    ea_kv_metric_free(&metric);
    ea_kv_sens_cache_free(sens);
    ea_tokenizer_free(tok);
    ea_model_free(m);
    return rc;
}
