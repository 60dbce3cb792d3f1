/* eigenalign analyze: activation spectra per site and layer (effective rank Df, cumulative
 * variance C(k), k for 90/95/99%, outlier dimensions), three variants side by side, each number
 * next to its isotropic-Gaussian null reference. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *usage =
    "usage: eigenalign analyze [--model DIR] [--text PATH] [--ctx N] [--max-tokens N]\n"
    "                          [--sites hidden,q,k,v,q_pre,k_pre,wte] [--exclude-first] [--standardize]\n"
    "                          [--variants all,exclude_first,standardized] [--variance X[,X...]]\n"
    "                          [--samples N [--sample-len T] [--seed S]] [--no-heads]\n"
    "                          [--center mean|none] [--pool none|mean|last]\n"
    "                          [--threads N] [--json] [--svg PATH] [--time-reference]\n"
    "  Covariance spectra of activations over calibration text (default: the bundled data/calib.txt).\n"
    "  Sites: hidden = residual stream entering each block (0 = embeddings, n_layer = after ln_f);\n"
    "  q, k, v = attention inputs of each block, whole and per head (head h = columns h*hd..(h+1)*hd);\n"
    "  wte = the token-embedding matrix itself (layer -1). Default: hidden,q,k,v,wte. RoPE models (Llama,\n"
    "  Qwen): q and k are after the rotation; q_pre, k_pre before it (k/v have n_kv_head heads with GQA).\n"
    "  Variants (default all three, side by side): all tokens; exclude_first = position 0 of every\n"
    "  window dropped; standardized = every dimension z-scored (correlation-matrix spectrum).\n"
    "  --exclude-first / --standardize report only the variants they name; --variants lists them.\n"
    "  Windows: the text is cut into windows of --ctx tokens (default min(n_positions, 512): the same\n"
    "  windows for models of different n_positions), each run from an empty cache. --samples N\n"
    "  instead draws N windows of --sample-len tokens (default ctx) at random starts (--seed, default 1).\n"
    "  --max-tokens N keeps the first N tokens of the text. --variance X adds k for a fraction X in (0,1].\n"
    "  Null reference: Df and k95 of the sample covariance of isotropic Gaussian data of the same n\n"
    "  and d (Wishart moments for Df, Marchenko-Pastur quantiles for k), shown in parentheses.\n"
    "  The note's protocol: --center none decomposes X^T X/n (the SVD of the raw, uncentred activations, as\n"
    "  the note's code) instead of the covariance (variants all, exclude_first); --pool mean|last takes\n"
    "  one vector per sample, the mean of its tokens or its last token, where a sample is a window (the\n"
    "  note's 500 sentences: --samples 500 --sample-len 32; variant all). Both report eigenvalues λ and\n"
    "  singular values σ = sqrt(n·λ) (centred: sqrt((n-1)·λ)), n = rows (tokens or samples).\n"
    "  example: eigenalign analyze --sites hidden --center none --pool mean --samples 500 --sample-len 32\n"
    "  --svg PATH: C(k) curves per layer (log k) for each variant and Df per layer, per site.\n"
    "  --time-reference: also time a bare dsyrk over the same shapes (accumulation overhead).\n"
    "  --json: {\"model\", \"tokens\", \"sites\": [{\"site\", \"layer\", \"head\", \"variant\", \"d\", \"n\", \"Df\", \"trace\",\n"
    "  \"k90\", \"k95\", \"k99\", \"C\": {\"1\",\"2\",\"5\",\"9\",\"22\"}, \"top_dims\": [[index, share]...],\n"
    "  \"eigenvalues\", \"null\": {\"Df\", \"k95\"}}...], \"timing\"}. Progress on stderr (EA_PROGRESS=1 forces it).\n";

#define MAX_EXTRA_VAR 8
static const int c_keys[5] = {1, 2, 5, 9, 22};

typedef struct {
    const char *model_dir, *text, *svg, *sites_s, *variants_s, *variance_s, *center_s, *pool_s;
    int uncentered;
    ea_pool pool;
    long ctx, max_tokens, samples, sample_len, seed, threads;
    int json, exclude_first, standardize, no_heads, time_reference;
    unsigned kinds, variants;
    double extra_var[MAX_EXTRA_VAR];
    int n_extra;
} analyze_opts;

/* Comma-separated names → bit mask; returns -1 (after printing) on an unknown name. */
static int parse_names(const char *list, const char *opt, const char *(*name_of)(int), int count, unsigned *mask) {
    *mask = 0;
    char *copy = strdup(list), *save = NULL;
    if (!copy) return cli_error("analyze", "out of memory"), -1;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int found = -1;
        for (int i = 0; i < count; i++)
            if (!strcmp(t, name_of(i))) found = i;
        if (found < 0) {
            cli_error("analyze", "%s: unknown name '%s'", opt, t);
            free(copy);
            return -1;
        }
        *mask |= 1u << found;
    }
    free(copy);
    if (!*mask) return cli_error("analyze", "%s: empty list", opt), -1;
    return 0;
}

static const char *variant_name_i(int i) { return ea_variant_name((ea_variant)i); }

static int parse_variance(analyze_opts *o) {
    o->n_extra = 0;
    if (!o->variance_s) return 0;
    const char *s = o->variance_s;
    while (*s) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || !(v > 0 && v <= 1) || (*end && *end != ',') || o->n_extra == MAX_EXTRA_VAR)
            return cli_error("analyze", "--variance: '%s' is not a list of up to %d fractions in (0, 1]", o->variance_s,
                             MAX_EXTRA_VAR), -1;
        o->extra_var[o->n_extra++] = v;
        s = *end ? end + 1 : end;
    }
    return 0;
}

static int parse_opts(int argc, char **argv, analyze_opts *o) {
    memset(o, 0, sizeof *o);
    cli_args a;
    cli_args_init(&a, "analyze", argc, argv);
    o->model_dir = cli_str(&a, "--model", cli_default_model());
    o->text = cli_str(&a, "--text", cli_default_calib());
    o->ctx = cli_long(&a, "--ctx", 0, 1, 1 << 20);
    o->max_tokens = cli_long(&a, "--max-tokens", 0, 0, 1L << 40);
    o->sites_s = cli_str(&a, "--sites", "hidden,q,k,v,wte");
    o->exclude_first = cli_has(&a, "--exclude-first");
    o->standardize = cli_has(&a, "--standardize");
    o->variants_s = cli_str(&a, "--variants", NULL);
    o->variance_s = cli_str(&a, "--variance", NULL);
    o->samples = cli_long(&a, "--samples", 0, 1, 1 << 24);
    o->sample_len = cli_long(&a, "--sample-len", 0, 1, 1 << 20);
    o->seed = cli_long(&a, "--seed", 1, 0, 0x7fffffffffffffffL);
    o->threads = cli_long(&a, "--threads", 0, 1, 4096);
    o->no_heads = cli_has(&a, "--no-heads");
    o->json = cli_has(&a, "--json");
    o->svg = cli_str(&a, "--svg", NULL);
    o->time_reference = cli_has(&a, "--time-reference");
    o->center_s = cli_str(&a, "--center", "mean");
    o->pool_s = cli_str(&a, "--pool", "none");
    int rc = cli_finish(&a);
    cli_args_free(&a);
    if (rc) return rc;
    {
        const char *dirs[] = {o->model_dir}, *ins[] = {o->text}, *outs[] = {o->svg}, *flags[] = {"--svg"};
        if ((rc = cli_check_outputs("analyze", dirs, 1, ins, 1, outs, flags, 1))) return rc;
    }
    if (parse_names(o->sites_s, "--sites", ea_site_kind_name, EA_SITE_KINDS, &o->kinds)) return 2;
    if (o->variants_s) {
        if (o->exclude_first || o->standardize)
            return cli_error("analyze", "--variants cannot be combined with --exclude-first/--standardize"), 2;
        if (parse_names(o->variants_s, "--variants", variant_name_i, EA_VARIANTS, &o->variants)) return 2;
    } else if (o->exclude_first || o->standardize) {
        o->variants = (o->exclude_first ? 1u << EA_VARIANT_EXCLUDE_FIRST : 0) |
                      (o->standardize ? 1u << EA_VARIANT_STANDARDIZED : 0);
    } else {
        o->variants = (1u << EA_VARIANTS) - 1;
    }
    if (!strcmp(o->center_s, "none")) o->uncentered = 1;
    else if (strcmp(o->center_s, "mean")) return cli_error("analyze", "--center must be mean or none, not '%s'", o->center_s), 2;
    if (!strcmp(o->pool_s, "mean")) o->pool = EA_POOL_MEAN;
    else if (!strcmp(o->pool_s, "last")) o->pool = EA_POOL_LAST;
    else if (strcmp(o->pool_s, "none")) return cli_error("analyze", "--pool must be none, mean or last, not '%s'", o->pool_s), 2;
    int explicit_variants = o->variants_s || o->exclude_first || o->standardize;
    if (o->uncentered && (o->variants & (1u << EA_VARIANT_STANDARDIZED))) {
        if (explicit_variants)
            return cli_error("analyze", "--center none: the standardized variant (a correlation spectrum) has no uncentred form"), 2;
        o->variants &= ~(1u << EA_VARIANT_STANDARDIZED);
    }
    if (o->pool && (o->variants & (1u << EA_VARIANT_EXCLUDE_FIRST))) {
        if (explicit_variants)
            return cli_error("analyze", "--pool: one vector per sample has no position 0 to exclude (exclude_first)"), 2;
        o->variants &= ~(1u << EA_VARIANT_EXCLUDE_FIRST);
    }
    if (o->sample_len && !o->samples) return cli_error("analyze", "--sample-len needs --samples"), 2;
    if (parse_variance(o)) return 2;
    return 0;
}

/* ---- timing reference: a bare dsyrk over the same shapes ---- */

static double time_dsyrk(int rows, int d) {
    double *x = malloc((size_t)rows * d * sizeof(double)), *c = calloc((size_t)d * d, sizeof(double));
    double t = NAN;
    if (x && c) {
        ea_rng r;
        ea_rng_seed(&r, 3);
        for (size_t i = 0; i < (size_t)rows * d; i++) x[i] = ea_rng_normal(&r);
        /* Best of 3: the reference should be the floor, not a sample of the machine's noise. */
        for (int rep = 0; rep < 3; rep++) {
            double t0 = ea_time_now();
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, rows, 1.0, x, d, 0.0, c, d);
            double dt = ea_time_now() - t0;
            if (!(dt >= t)) t = dt;
        }
    }
    free(x);
    free(c);
    return t;
}

/* Σ over accumulators of one dsyrk of (their row count × d); equal shapes are timed once. */
static double reference_seconds(const ea_site_stats *s) {
    double total = 0;
    int done[64][2], nd = 0;
    double tdone[64];
    for (int i = 0; i < s->n_acc; i++) {
        const ea_site_acc *a = &s->acc[i];
        int rows = (int)(ea_cov_count(a->first) + ea_cov_count(a->rest)), j;
        for (j = 0; j < nd; j++)
            if (done[j][0] == rows && done[j][1] == a->d) break;
        if (j == nd) {
            if (nd == 64) return NAN;
            done[nd][0] = rows;
            done[nd][1] = a->d;
            tdone[nd++] = rows > 0 ? time_dsyrk(rows, a->d) : 0;
        }
        total += tdone[j];
    }
    return total;
}

/* ---- output ---- */

static cJSON *result_json(const ea_site_result *r, const analyze_opts *o) {
    const ea_spectrum_summary *s = &r->sum;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "site", ea_site_kind_name(r->kind));
    cJSON_AddNumberToObject(j, "layer", r->layer);
    cJSON_AddNumberToObject(j, "head", r->head);
    cJSON_AddStringToObject(j, "variant", ea_variant_name(r->variant));
    cJSON_AddNumberToObject(j, "d", s->d);
    cJSON_AddNumberToObject(j, "n", s->n);
    cli_add_number(j, "Df", s->df);
    cli_add_number(j, "trace", s->trace);
    cJSON_AddNumberToObject(j, "k90", s->k90);
    cJSON_AddNumberToObject(j, "k95", s->k95);
    cJSON_AddNumberToObject(j, "k99", s->k99);
    if (o->n_extra) {
        cJSON *kv = cJSON_AddObjectToObject(j, "k_var");
        for (int i = 0; i < o->n_extra; i++) {
            char key[32];
            snprintf(key, sizeof key, "%g", o->extra_var[i]);
            cJSON_AddNumberToObject(kv, key, ea_spectrum_k_for(s->eigenvalues, s->d, o->extra_var[i]));
        }
    }
    cJSON *c = cJSON_AddObjectToObject(j, "C");
    for (int i = 0; i < 5; i++) {
        char key[8];
        snprintf(key, sizeof key, "%d", c_keys[i]);
        cli_add_number(c, key, ea_spectrum_cumvar(s->eigenvalues, s->d, c_keys[i]));
    }
    cJSON *top = cJSON_AddArrayToObject(j, "top_dims");
    for (int i = 0; i < s->n_top; i++) {
        cJSON *pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateNumber(s->top_dims[i]));
        cJSON_AddItemToArray(pair, cJSON_CreateNumber(s->top_share[i]));
        cJSON_AddItemToArray(top, pair);
    }
    cJSON_AddItemToObject(j, "eigenvalues", cJSON_CreateDoubleArray(s->eigenvalues, s->d));
    /* singular values of the data matrix behind the spectrum: sqrt(n λ) for XᵀX/n, sqrt((n-1) λ) centred */
    cJSON *sv = cJSON_AddArrayToObject(j, "singular_values");
    double rows = o->uncentered ? s->n : s->n - 1;
    for (int i = 0; i < s->d; i++) cJSON_AddItemToArray(sv, cJSON_CreateNumber(sqrt(rows * s->eigenvalues[i])));
    cJSON *nul = cJSON_AddObjectToObject(j, "null");
    cli_add_number(nul, "Df", r->null_df);
    cJSON_AddNumberToObject(nul, "k95", r->null_k95);
    return j;
}

typedef struct {
    double forward_s, accumulate_s, eigen_s, total_s, reference_s;
} analyze_timing;

static void print_json(const analyze_opts *o, const ea_model *m, size_t n_tokens, int n_windows, int ctx,
                       const ea_site_result *r, int nr, const analyze_timing *t) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", o->model_dir);
    cJSON_AddStringToObject(j, "fingerprint", ea_model_fingerprint(m));
    if (o->kinds & ~(1u << EA_SITE_KIND_WTE)) cJSON_AddStringToObject(j, "text", o->text);
    else cJSON_AddNullToObject(j, "text"); /* wte alone reads no text */
    cJSON_AddNumberToObject(j, "tokens", (double)n_tokens);
    cJSON_AddNumberToObject(j, "windows", n_windows);
    cJSON_AddStringToObject(j, "sampling", o->samples ? "samples" : "windows");
    cJSON_AddNumberToObject(j, "ctx", ctx); /* window length (--sample-len when sampling) */
    cJSON_AddStringToObject(j, "center", o->uncentered ? "none" : "mean");
    cJSON_AddStringToObject(j, "pool", o->pool_s);
    cJSON *sites = cJSON_AddArrayToObject(j, "sites");
    for (int i = 0; i < nr; i++) cJSON_AddItemToArray(sites, result_json(&r[i], o));
    cJSON *tj = cJSON_AddObjectToObject(j, "timing");
    cli_add_number(tj, "forward_s", t->forward_s);
    cli_add_number(tj, "accumulate_s", t->accumulate_s);
    cli_add_number(tj, "eigen_s", t->eigen_s);
    cli_add_number(tj, "total_s", t->total_s);
    cli_add_number(tj, "accumulate_tokens_per_s", t->accumulate_s > 0 ? (double)n_tokens / t->accumulate_s : NAN);
    if (o->time_reference) {
        cli_add_number(tj, "bare_dsyrk_s", t->reference_s);
        cli_add_number(tj, "accumulate_over_dsyrk", t->accumulate_s / t->reference_s);
    }
    cli_print_json(j);
}

static void print_table_row(const ea_site_result *r, const analyze_opts *o) {
    const ea_spectrum_summary *s = &r->sum;
    char layer[16];
    if (r->layer < 0) snprintf(layer, sizeof layer, "-");
    else snprintf(layer, sizeof layer, "%d", r->layer);
    printf("%-6s %5s  %-13s %5d %7.0f %8.2f (%6.1f) %5d %5d (%4d) %5d  %6.4f %6.4f  %5d (%5.1f%%)", ea_site_kind_name(r->kind),
           layer, ea_variant_name(r->variant), s->d, s->n, s->df, r->null_df, s->k90, s->k95, r->null_k95, s->k99,
           ea_spectrum_cumvar(s->eigenvalues, s->d, 1), ea_spectrum_cumvar(s->eigenvalues, s->d, 9), s->top_dims[0],
           100 * s->top_share[0]);
    for (int i = 0; i < o->n_extra; i++) printf(" %5d", ea_spectrum_k_for(s->eigenvalues, s->d, o->extra_var[i]));
    if (o->uncentered || o->pool) {
        double rows = o->uncentered ? s->n : s->n - 1;
        printf("  %10.4g %10.4g", s->eigenvalues[0], sqrt(rows * s->eigenvalues[0]));
    }
    printf("\n");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Per-head results in one line per (site, layer, variant): the spread across heads. */
static void print_head_summary(const ea_site_result *r, int nr) {
    int printed = 0;
    for (int i = 0; i < nr; i++) {
        if (r[i].head != 0) continue;
        int cnt = 0;
        while (i + cnt < nr && r[i + cnt].kind == r[i].kind && r[i + cnt].layer == r[i].layer && r[i + cnt].head >= 0)
            cnt++;
        /* Results are ordered head-major then variant; gather this variant's heads. */
        double df[256];
        int kmin = 1 << 30, kmax = 0, nh = 0;
        for (int j = i; j < i + cnt && nh < 256; j++) {
            if (r[j].variant != r[i].variant) continue;
            df[nh++] = r[j].sum.df;
            if (r[j].sum.k95 < kmin) kmin = r[j].sum.k95;
            if (r[j].sum.k95 > kmax) kmax = r[j].sum.k95;
        }
        if (!printed) {
            printf("\nper head (every head is in --json): Df min / median / max (null), k95 min..max (null)\n");
            printed = 1;
        }
        qsort(df, (size_t)nh, sizeof *df, cmp_double);
        printf("%-6s %5d  %-13s %2d heads of d %3d   Df %7.2f / %7.2f / %7.2f (%6.1f)   k95 %3d..%-3d (%d)\n",
               ea_site_kind_name(r[i].kind), r[i].layer, ea_variant_name(r[i].variant), nh, r[i].sum.d, df[0],
               nh % 2 ? df[nh / 2] : 0.5 * (df[nh / 2 - 1] + df[nh / 2]), df[nh - 1], r[i].null_df, kmin, kmax,
               r[i].null_k95);
    }
}

static void print_table(const analyze_opts *o, size_t n_tokens, int n_windows, int ctx, const ea_site_result *r, int nr) {
    if (n_windows)
        printf("model %s, text %s: %zu tokens in %d %s of %d\n", o->model_dir, o->text, n_tokens, n_windows,
               o->samples ? "random windows" : "windows", ctx);
    else
        printf("model %s (wte only: no text read)\n", o->model_dir);
    printf("(in parentheses: the null reference, isotropic Gaussian data of the same n and d)\n");
    if (o->uncentered || o->pool)
        printf("protocol: %s; %s (n = %s); σ = sqrt(%s·λ); every λ and σ is in --json\n",
               o->uncentered ? "uncentred, eigenvalues λ of XᵀX/n (the note's SVD of raw activations)" : "centred covariance",
               o->pool == EA_POOL_MEAN ? "one vector per sample: the mean of its tokens"
               : o->pool == EA_POOL_LAST ? "one vector per sample: its last token" : "every token a row",
               o->pool ? "samples" : "tokens", o->uncentered ? "n" : "(n-1)");
    printf("\n");
    printf("%-6s %5s  %-13s %5s %7s %8s (%6s) %5s %5s (%4s) %5s  %6s %6s  %s", "site", "layer", "variant", "d", "n", "Df",
           "null", "k90", "k95", "null", "k99", "C(1)", "C(9)", "top dim (share)");
    for (int i = 0; i < o->n_extra; i++) printf(" k%-4g", 100 * o->extra_var[i]);
    if (o->uncentered || o->pool) printf("  %10s %10s", "λ1", "σ1");
    printf("\n");
    int last_kind = -1;
    for (int i = 0; i < nr; i++) {
        if (r[i].head >= 0) continue;
        if (last_kind >= 0 && r[i].kind != last_kind) printf("\n");
        last_kind = r[i].kind;
        print_table_row(&r[i], o);
    }
    print_head_summary(r, nr);
}

int cmd_analyze(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    analyze_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc) return rc;
    if (o.threads > 0) {
        openblas_set_num_threads((int)o.threads);
        omp_set_num_threads((int)o.threads);
    }
    ea_model *m = NULL;
    ea_tokenizer *tok = NULL;
    ea_kvcache *cache = NULL;
    ea_site_stats *stats = NULL;
    ea_site_result *res = NULL;
    ea_window *win = NULL;
    int *ids = NULL, nres = 0, nwin = 0;
    size_t n = 0;
    rc = 1;
    double t_start = ea_time_now();
    analyze_timing tm = {0};
    ea_status st = cli_load_model(o.model_dir, &m, &tok);
    if (st) goto fail;
    const ea_config *cfg = ea_model_config(m);
    int ctx = o.ctx ? (int)o.ctx : (cfg->n_positions < 512 ? cfg->n_positions : 512);
    if (ctx > cfg->n_positions) {
        cli_error("analyze", "--ctx %d exceeds the model's n_positions %d", ctx, cfg->n_positions);
        goto done;
    }
    unsigned fwd_kinds = o.kinds & ~(1u << EA_SITE_KIND_WTE);
    unsigned pre_kinds = (1u << EA_SITE_Q_PRE) | (1u << EA_SITE_K_PRE);
    if ((o.kinds & pre_kinds) && cfg->rope_type == EA_ROPE_NONE) {
        cli_error("analyze", "--sites q_pre/k_pre: %s has no rotary embedding (%s)", o.model_dir, ea_arch_name(cfg->arch));
        goto done;
    }
    ea_model_set_capture_prerot(m, (o.kinds & pre_kinds) != 0);
    int len = o.samples ? (int)(o.sample_len ? o.sample_len : ctx) : ctx; /* window length */
    if (fwd_kinds) {
        if ((st = cli_load_text_ids(tok, o.text, (size_t)o.max_tokens, &ids, &n))) goto fail;
        if (len > cfg->n_positions) {
            cli_error("analyze", "--sample-len %d exceeds the model's n_positions %d", len, cfg->n_positions);
            goto done;
        }
        if (o.samples && (size_t)len > n) {
            cli_error("analyze", "%s: %zu tokens are fewer than --sample-len %d", o.text, n, len);
            goto done;
        }
        st = o.samples ? ea_windows_sample(n, (int)o.samples, len, (uint64_t)o.seed, &win, &nwin)
                       : ea_windows_consecutive(n, ctx, &win, &nwin);
        if (st) goto fail;
        if ((st = ea_kvcache_init(&cache, cfg, len, NULL))) goto fail;
    }
    if ((st = ea_site_stats_init(&stats, cfg, o.kinds, !o.no_heads))) goto fail;
    if ((st = ea_site_stats_set_protocol(stats, o.uncentered, o.pool))) goto fail;
    if ((st = ea_site_stats_add_wte(stats, ea_model_wte(m), cfg->vocab_size, cfg->n_embd))) goto fail;
    if (fwd_kinds) {
        st = ea_site_stats_run(stats, m, cache, ids, win, nwin, cli_progress, NULL, &tm.forward_s);
        cli_progress_done();
        if (st) goto fail;
    }
    size_t tokens = 0;
    for (int i = 0; i < nwin; i++) tokens += (size_t)win[i].len;
    tm.accumulate_s = stats->accumulate_s;
    double t0 = ea_time_now();
    if ((st = ea_site_stats_summarize(stats, o.variants, &res, &nres))) goto fail;
    tm.eigen_s = ea_time_now() - t0;
    if (o.time_reference) tm.reference_s = reference_seconds(stats);
    tm.total_s = ea_time_now() - t_start;
    /* The figure first: if it cannot be written, nothing is printed either. */
    if (o.svg) {
        char title[512];
        snprintf(title, sizeof title, "Activation spectra: %s on %s (%zu tokens)", o.model_dir, o.text, tokens);
        if ((st = ea_spectra_figure_save(o.svg, title, res, nres, cfg->n_layer))) goto fail;
    }
    if (o.json) print_json(&o, m, tokens, nwin, len, res, nres, &tm);
    else print_table(&o, tokens, nwin, len, res, nres);
    fprintf(stderr, "timing: forward %.2f s, accumulation %.2f s (%.0f tokens/s), eigen %.2f s, total %.2f s", tm.forward_s,
            tm.accumulate_s, tm.accumulate_s > 0 ? (double)tokens / tm.accumulate_s : 0.0, tm.eigen_s, tm.total_s);
    if (o.time_reference)
        fprintf(stderr, "; bare dsyrk over the same shapes %.2f s (accumulation / dsyrk = %.2f)", tm.reference_s,
                tm.accumulate_s / tm.reference_s);
    fprintf(stderr, "\n");
    rc = fflush(stdout) != 0 || ferror(stdout) ? cli_error("analyze", "cannot write to stdout") : 0;
    goto done;
fail:
    cli_fail_status("analyze", st);
done:
    ea_site_results_free(res, nres);
    ea_site_stats_free(stats);
    free(win);
    free(ids);
    ea_kvcache_free(cache);
    ea_tokenizer_free(tok);
    ea_model_free(m);
    return rc;
}
