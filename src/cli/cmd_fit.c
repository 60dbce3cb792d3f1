/* eigenalign fit: calibrate an activation compressor (mean + top-k eigenvectors per site) and
 * write it as a safetensors file. */
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"

static const char *usage =
    "usage: eigenalign fit [--model DIR] [--text PATH] (--variance X | --rank K) -o FILE\n"
    "                      [--sites hidden,q,k,v] [--per-head] [--ctx N] [--max-tokens N]\n"
    "                      [--exclude-first] [--kv klt:B[,klt:B...]] [--json]\n"
    "  Runs the model over --text (default: the bundled calibration text) in non-overlapping\n"
    "  windows of --ctx tokens (default min(512, n_positions), as analyze), each from an empty\n"
    "  cache, and accumulates the covariance of every chosen site: hidden = residual stream\n"
    "  entering each block (layers 0..n_layer, the last after ln_f); q, k, v = attention\n"
    "  projections (layers 0..n_layer-1), per head with --per-head. Default sites: hidden,k,v.\n"
    "  Each site keeps its mean, all eigenvalues and the top k eigenvectors: the smallest k\n"
    "  reaching --variance (0 < X <= 1) or --rank K (clamped to the site width).\n"
    "  --exclude-first leaves position 0 of every window (the attention sink) out of the\n"
    "  statistics. For the KV-cache codecs (eval --compressor): fit --sites k,v --rank n_embd.\n"
    "  --kv klt:B,... also fits those KV-cache codecs on the same text (as eval fits them, in\n"
    "  windows of --ctx, default min(1024, n_positions)) and stores them in the file, where\n"
    "  eval --compressor FILE --kv klt:B finds them.\n";

static int parse_sites(const char *s, unsigned *out) {
    static const char *const names[4] = {"hidden", "q", "k", "v"};
    *out = 0;
    const char *p = s;
    while (*p) {
        size_t len = strcspn(p, ",");
        int found = 0;
        if (len == 3 && !strncmp(p, "all", 3)) {
            *out |= 0xfu;
            found = 1;
        }
        for (int i = 0; i < 4 && !found; i++)
            if (strlen(names[i]) == len && !strncmp(p, names[i], len)) {
                *out |= EA_SITE_BIT(i);
                found = 1;
            }
        if (!found) return cli_error("fit", "--sites: unknown site '%.*s' (use hidden, q, k, v or all)", (int)len, p);
        p += len;
        if (*p == ',') p++;
    }
    if (!*out) return cli_error("fit", "--sites: no site given");
    return 0;
}

/* Fail before the (long) calibration if the output cannot be written at all. */
static int output_dir_ok(const char *out) {
    char *copy = strdup(out);
    if (!copy) return cli_error("fit", "out of memory");
    const char *dir = dirname(copy);
    int ok = access(dir, W_OK | X_OK) == 0;
    if (!ok) cli_error("fit", "%s: cannot write into directory %s: %s", out, dir, strerror(errno));
    free(copy);
    return ok ? 0 : 1;
}

static cJSON *site_json(const ea_projector *p) {
    ea_site_ref r = ea_projector_site(p);
    int d = ea_projector_dim(p), k = ea_projector_rank(p);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "site", ea_site_name(r.site));
    cJSON_AddNumberToObject(o, "layer", r.layer);
    if (r.head >= 0) cJSON_AddNumberToObject(o, "head", r.head);
    cJSON_AddNumberToObject(o, "d", d);
    cJSON_AddNumberToObject(o, "k", k);
    cli_add_number(o, "ratio", (double)d / k);
    cli_add_number(o, "variance_kept", ea_projector_variance_kept(p));
    return o;
}

int cmd_fit(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    cli_args a;
    cli_args_init(&a, "fit", argc, argv);
    const char *model_dir = cli_str(&a, "--model", cli_default_model());
    const char *text = cli_str(&a, "--text", cli_default_calib());
    const char *var_s = cli_str(&a, "--variance", NULL);
    double variance = cli_double(&a, "--variance", 0, 1e-9, 1.0);
    long rank = cli_long(&a, "--rank", 0, 1, 1 << 20);
    const char *sites_s = cli_str(&a, "--sites", "hidden,k,v");
    int per_head = cli_has(&a, "--per-head");
    long ctx = cli_long(&a, "--ctx", 0, 2, 1 << 20);
    long max_tokens = cli_long(&a, "--max-tokens", 0, 0, 1L << 40);
    int exclude_first = cli_has(&a, "--exclude-first");
    const char *out = cli_str(&a, "-o", NULL);
    if (!out) out = cli_str(&a, "--output", NULL);
    int json = cli_has(&a, "--json");
    const char *kv_s = cli_str(&a, "--kv", NULL);
    int rc = cli_finish(&a);
    cli_args_free(&a);
    if (rc) return rc;
    if (!out) return cli_error("fit", "-o FILE is required (see --help)"), 2;
    {
        const char *dirs[] = {model_dir}, *ins[] = {text}, *outs[] = {out}, *flags[] = {"-o"};
        if ((rc = cli_check_outputs("fit", dirs, 1, ins, 1, outs, flags, 1))) return rc;
    }
    if (kv_s) { /* check the codec list before anything is loaded or fitted */
        char *l = strdup(kv_s);
        int bad = !l || !*kv_s, count = 0;
        for (char *sv = NULL, *spec = l ? strtok_r(l, ",", &sv) : NULL; spec && !bad; spec = strtok_r(NULL, ",", &sv)) {
            if (strncmp(spec, "klt:", 4) || ++count > 16) {
                cli_error("fit", "--kv: '%s': give up to 16 klt codecs (pca is rebuilt from the k,v statistics)", spec);
                bad = 2;
            } else if (ea_kv_codec_check_spec(spec)) {
                cli_fail_status("fit", EA_ERR_ARG);
                bad = 2;
            }
        }
        if (bad == 1) cli_error("fit", "--kv: empty codec list");
        free(l);
        if (bad) return 2;
    }
    if ((var_s != NULL) == (rank > 0)) return cli_error("fit", "give exactly one of --variance X or --rank K"), 2;
    ea_fit_params fp = ea_fit_params_default();
    if (parse_sites(sites_s, &fp.sites)) return 2;
    if (output_dir_ok(out)) return 1;
    fp.rule.variance = rank > 0 ? 0 : variance;
    fp.rule.rank = (int)rank;
    fp.per_head = per_head;
    fp.ctx = (int)ctx;
    fp.exclude_first = exclude_first;
    fp.progress = cli_progress;

    ea_model *m = NULL;
    ea_tokenizer *tok = NULL;
    ea_compressor *c = NULL;
    ea_kv_codec *kv[16] = {NULL};
    int n_kv = 0;
    int *ids = NULL;
    size_t n = 0;
    rc = 1;
    ea_status st = cli_load_model(model_dir, &m, &tok);
    if (st) {
        cli_fail_status("fit", st);
        goto done;
    }
    const ea_config *cfg = ea_model_config(m);
    if (ctx > cfg->n_positions) {
        cli_error("fit", "--ctx %ld exceeds the model's n_positions %d", ctx, cfg->n_positions);
        goto done;
    }
    if (rank > cfg->n_embd) {
        cli_error("fit", "--rank %ld exceeds the model width n_embd %d", rank, cfg->n_embd);
        goto done;
    }
    if ((st = cli_load_text_ids(tok, text, (size_t)max_tokens, &ids, &n))) {
        cli_fail_status("fit", st);
        goto done;
    }
    double t0 = ea_time_now();
    st = ea_compressor_fit(m, ids, n, &fp, &c);
    cli_progress_done();
    if (st) {
        cli_fail_status("fit", st);
        goto done;
    }
    double secs = ea_time_now() - t0;
    /* KV-cache codecs fitted on the same text, stored in the same file */
    char *kv_list = kv_s ? strdup(kv_s) : NULL;
    for (char *sv = NULL, *spec = kv_list ? strtok_r(kv_list, ",", &sv) : NULL; spec; spec = strtok_r(NULL, ",", &sv)) {
        int kctx = ctx > 0 ? (int)ctx : (cfg->n_positions < 1024 ? cfg->n_positions : 1024);
        if ((st = ea_kv_codec_fit_model(m, spec, ids, n, kctx, cli_progress, NULL, &kv[n_kv]))) {
            cli_fail_status("fit", st);
            free(kv_list);
            goto done;
        }
        n_kv++;
    }
    free(kv_list);
    if ((st = ea_compressor_save_with_kv(c, (const ea_kv_codec *const *)kv, n_kv, out))) {
        cli_fail_status("fit", st);
        goto done;
    }
    struct stat sb;
    double bytes = stat(out, &sb) == 0 ? (double)sb.st_size : 0;
    const ea_compressor_info *in = ea_compressor_get_info(c);
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "output", out);
        cJSON_AddStringToObject(j, "model", model_dir);
        cJSON_AddStringToObject(j, "fingerprint", in->fingerprint);
        cJSON_AddStringToObject(j, "text", text);
        cJSON_AddNumberToObject(j, "tokens", (double)in->calib_tokens);
        cJSON_AddNumberToObject(j, "rows", (double)in->calib_rows);
        cJSON_AddNumberToObject(j, "ctx", in->ctx);
        cJSON_AddBoolToObject(j, "exclude_first", in->exclude_first);
        if (in->rule.rank > 0) cJSON_AddNumberToObject(j, "rank", in->rule.rank);
        else cJSON_AddNumberToObject(j, "variance", in->rule.variance);
        cJSON_AddNumberToObject(j, "bytes", bytes);
        cJSON_AddNumberToObject(j, "seconds", secs);
        cJSON *kva = cJSON_AddArrayToObject(j, "kv_codecs");
        for (int i = 0; i < n_kv; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "codec", ea_kv_codec_name(kv[i]));
            cJSON_AddNumberToObject(o, "bits_per_value", ea_kv_codec_bits_per_value(kv[i]));
            cJSON_AddNumberToObject(o, "overhead_bytes", (double)ea_kv_codec_overhead(kv[i]));
            cJSON_AddNumberToObject(o, "resident_bytes", (double)ea_kv_codec_resident(kv[i]));
            cJSON_AddItemToArray(kva, o);
        }
        cJSON *arr = cJSON_AddArrayToObject(j, "sites");
        for (int i = 0; i < ea_compressor_count(c); i++) cJSON_AddItemToArray(arr, site_json(ea_compressor_get(c, i)));
        cli_print_json(j);
    } else {
        printf("fitted %d sites on %zu tokens (%zu rows per site, windows of %d%s) in %.2f s\n",
               ea_compressor_count(c), in->calib_tokens, in->calib_rows, in->ctx,
               in->exclude_first ? ", position 0 excluded" : "", secs);
        if (in->rule.rank > 0) printf("rule: rank %d\n", in->rule.rank);
        else printf("rule: smallest k reaching %.4g of the variance\n", in->rule.variance);
        printf("\n%-8s %5s %4s %5s %5s %7s %9s\n", "site", "layer", "head", "d", "k", "ratio", "var kept");
        for (int i = 0; i < ea_compressor_count(c); i++) {
            const ea_projector *p = ea_compressor_get(c, i);
            ea_site_ref r = ea_projector_site(p);
            char head[16] = "-";
            if (r.head >= 0) snprintf(head, sizeof head, "%d", r.head);
            printf("%-8s %5d %4s %5d %5d %7.2f %9.4f\n", ea_site_name(r.site), r.layer, head, ea_projector_dim(p),
                   ea_projector_rank(p), (double)ea_projector_dim(p) / ea_projector_rank(p),
                   ea_projector_variance_kept(p));
        }
        for (int i = 0; i < n_kv; i++)
            printf("kv codec %s: %.3f bits/value, overhead %zu bytes (stored inside)\n", ea_kv_codec_name(kv[i]),
                   ea_kv_codec_bits_per_value(kv[i]), ea_kv_codec_overhead(kv[i]));
        printf("\nwrote %s (%.0f bytes)\n", out, bytes);
    }
    rc = 0;
done:
    for (int i = 0; i < n_kv; i++) ea_kv_codec_free(kv[i]);
    ea_compressor_free(c);
    free(ids);
    ea_tokenizer_free(tok);
    ea_model_free(m);
    return rc;
}
