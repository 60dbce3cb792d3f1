/* eigenalign eval: perplexity, KL and speed of KV-cache codecs against the exact float32 cache.
 * Windows are scored one at a time: the baseline logits of a window are kept while every codec
 * runs the same window, so memory stays at a few windows of logits whatever the text length. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *usage =
    "usage: eigenalign eval [--model DIR] --text PATH --kv CODEC[,CODEC...]\n"
    "                       [--compressor FILE | --calib PATH] [--ctx N] [--max-tokens N] [--protocol full|llama]\n"
    "                       [--calib-max-tokens N] [--calib-skip N] [--sens-tokens N] [--decode-tokens N]\n"
    "                       [--curve-json PATH] [--svg PATH] [--json]\n"
    "  Runs the exact float32 cache once per window and every codec on the same window; reports per\n"
    "  codec bits per cached value, fixed overhead bytes, cache bytes at --ctx, ppl, delta ppl %, mean\n"
    "  KL(baseline || codec) and top-1 agreement over the scored tokens, prefill and decode tok/s.\n"
    "  Codecs: f32 f16 q8 q4 (llama.cpp q8_0/q4_0), pca:R pca-head:R (the note's method: R float\n"
    "  coefficients per row / per head), klt:B (transform coding at B bits per value: per-layer KLT under an\n"
    "  attention-aware metric, Lloyd-Max levels, bits pooled across layers by measured sensitivity, f16 bases).\n"
    "  klt flags after a second ':' change one choice each: h per-head bases, u uniform levels, m plain squared\n"
    "  error (no metric), b fixed budget per layer and kind, f float32 bases, s per-row gain, r<x> metric\n"
    "  regularisation, z<x> position-0 step gain (e.g. klt:2:umbf is the simple KLT coder).\n"
    "  Basis codecs take K/V statistics from --compressor (a full-rank k,v compressor from 'fit'; klt codecs\n"
    "  that 'fit --kv' stored in it are used as stored; others are built from its statistics, without the\n"
    "  query metric and pooling, which need calibration text), or fit them on --calib text\n"
    "  (default the bundled calibration text; --calib-max-tokens caps it), leaving out the first\n"
    "  --calib-skip positions of each window (default 0); sensitivities use its first --sens-tokens\n"
    "  (default 4096).\n"
    "  --ctx: window (default min(1024, n_positions)); --protocol full scores every token of each window,\n"
    "  llama only its second half. --decode-tokens: one-token steps timed at the end of a --ctx window\n"
    "  (default 128, 0 skips). --curve-json / --svg: bits/value against KL and delta ppl for every codec.\n";

typedef struct {
    const char *spec;
    ea_kv_codec *codec; /* NULL for the baseline */
    size_t cache_bytes; /* at --ctx */
    ea_kv_score sc;
    double prefill_s, decode_tok_s;
    size_t prefill_tok;
    int embedded; /* the codec came fitted in the --compressor file */
} codec_run;

static int needs_stats(const char *spec) { return !strncmp(spec, "pca", 3) || !strncmp(spec, "klt", 3); }

static ea_status load_stats(ea_model *m, ea_tokenizer *tok, const char *compressor, const char *calib, long calib_max,
                            int ctx, int skip, ea_kv_stats *st, ea_kv_metric *mt, int *from_compressor, int **cids,
                            size_t *cn) {
    ea_status s;
    *cids = NULL;
    *cn = 0;
    if (compressor) {
        ea_compressor *c = NULL;
        *from_compressor = 1;
        if ((s = ea_compressor_load(compressor, &c))) return s;
        if (!(s = ea_compressor_check_model(c, compressor, m))) s = ea_compressor_kv_stats(c, st);
        ea_compressor_free(c);
        return s;
    }
    *from_compressor = 0;
    if ((s = cli_load_text_ids(tok, calib, (size_t)calib_max, cids, cn))) return s;
    return ea_kv_stats_fit(m, *cids, *cn, ctx, skip, st, mt);
}

/* "klt:2:hs" -> family "klt:*:hs" (codecs that differ only in their size parameter). */
static void family_of(const char *spec, char *out, size_t cap) {
    const char *c1 = strchr(spec, ':');
    if (!c1) {
        snprintf(out, cap, "%s", !strcmp(spec, "q8") || !strcmp(spec, "q4") ? "q8_0/q4_0" : spec);
        return;
    }
    const char *c2 = strchr(c1 + 1, ':');
    snprintf(out, cap, "%.*s%s", (int)(c1 - spec), spec, c2 ? c2 : "");
}

/* Bits per cached value at the window length actually used (per-sequence bytes such as a sink row
 * included): cache bytes × 8 / values. */
static double bits_at(const ea_kv_codec *c, int ctx) {
    return (double)ea_kv_codec_bytes(c, ctx) * 8.0 / (2.0 * ea_kv_codec_n_layer(c) * (double)ctx * ea_kv_codec_dim(c));
}

static double dppl_pct(const codec_run *r, double base_ppl) { return 100.0 * (exp(r->sc.nll / (double)r->sc.scored) / base_ppl - 1); }

static cJSON *curve_json(const codec_run *runs, int nr, double base_ppl, const char *model, const char *text, int ctx,
                         const char *proto) {
    cJSON *j = cJSON_CreateObject(), *pts = cJSON_CreateArray();
    cJSON_AddStringToObject(j, "model", model);
    cJSON_AddStringToObject(j, "text", text);
    cJSON_AddNumberToObject(j, "ctx", ctx);
    cJSON_AddStringToObject(j, "protocol", proto);
    cli_add_number(j, "baseline_ppl", base_ppl);
    for (int i = 1; i < nr; i++) {
        char fam[64];
        family_of(runs[i].spec, fam, sizeof fam);
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "codec", runs[i].spec);
        cJSON_AddStringToObject(p, "family", fam);
        cli_add_number(p, "bits_per_value", bits_at(runs[i].codec, ctx));
        cli_add_number(p, "overhead_bytes", (double)ea_kv_codec_overhead(runs[i].codec));
        cli_add_number(p, "kl", runs[i].sc.kl / (double)runs[i].sc.scored);
        cli_add_number(p, "dppl_pct", dppl_pct(&runs[i], base_ppl));
        cli_add_number(p, "top1", (double)runs[i].sc.top1 / (double)runs[i].sc.scored);
        cJSON_AddItemToArray(pts, p);
    }
    cJSON_AddItemToObject(j, "points", pts);
    return j;
}

static int cmp_bits(const void *a, const void *b) {
    const double *x = a, *y = b;
    return (x[0] > y[0]) - (x[0] < y[0]);
}

static ea_status write_svg(const codec_run *runs, int nr, double base_ppl, const char *path, const char *title, int ctx) {
    ea_svg *s = NULL;
    int p0, p1;
    ea_status st = ea_svg_init(&s, title, 2, 460, 320);
    if (!st) st = ea_svg_panel(s, "KL(f32 || codec) per token", "bits per cached value", "mean KL (nats)", EA_SVG_LOG_Y, &p0);
    if (!st) st = ea_svg_panel(s, "perplexity change", "bits per cached value", "|delta ppl| (%)", EA_SVG_LOG_Y, &p1);
    char done[64][64];
    int nd = 0;
    for (int i = 1; i < nr && !st && nd < 64; i++) {
        char fam[64];
        family_of(runs[i].spec, fam, sizeof fam);
        int seen = 0;
        for (int k = 0; k < nd; k++) seen |= !strcmp(done[k], fam);
        if (seen) continue;
        snprintf(done[nd++], 64, "%s", fam);
        double pts[3 * 64];
        int n = 0;
        for (int k = i; k < nr && n < 64; k++) {
            char f2[64];
            family_of(runs[k].spec, f2, sizeof f2);
            if (strcmp(f2, fam)) continue;
            pts[3 * n] = bits_at(runs[k].codec, ctx);
            pts[3 * n + 1] = runs[k].sc.kl / (double)runs[k].sc.scored;
            pts[3 * n + 2] = fabs(dppl_pct(&runs[k], base_ppl));
            n++;
        }
        qsort(pts, (size_t)n, 3 * sizeof(double), cmp_bits);
        double x[64], y0[64], y1[64];
        for (int k = 0; k < n; k++) {
            x[k] = pts[3 * k];
            y0[k] = pts[3 * k + 1];
            y1[k] = pts[3 * k + 2];
        }
        if (!st) st = ea_svg_series(s, p0, fam, x, y0, n, NULL, EA_SVG_SOLID, 1);
        if (!st) st = ea_svg_series(s, p1, fam, x, y1, n, NULL, EA_SVG_SOLID, 1);
    }
    if (!st) st = ea_svg_save(s, path);
    ea_svg_free(s);
    return st;
}

static void print_table(const codec_run *runs, int nr, double base_ppl, int ctx) {
    printf("%-14s %9s %12s %12s %12s %10s %9s %10s %7s %10s %10s\n", "codec", "bits/val", "overhead B", "resident B",
           "cache B", "ppl", "dppl %", "KL", "top1", "prefill/s", "decode/s");
    const codec_run *b = &runs[0];
    printf("%-14s %9.3f %12d %12d %12zu %10.4f %9s %10s %7s %10.1f %10.1f\n", "f32 (baseline)", 32.0, 0, 0,
           b->cache_bytes, base_ppl, "-", "-", "-", b->prefill_tok / b->prefill_s, b->decode_tok_s);
    for (int i = 1; i < nr; i++) {
        const codec_run *r = &runs[i];
        printf("%-14s %9.3f %12zu %12zu %12zu %10.4f %+9.3f %10.6f %6.2f%% %10.1f %10.1f\n", r->spec,
               bits_at(r->codec, ctx), ea_kv_codec_overhead(r->codec), ea_kv_codec_resident(r->codec),
               r->cache_bytes,
               exp(r->sc.nll / (double)r->sc.scored), dppl_pct(r, base_ppl), r->sc.kl / (double)r->sc.scored,
               100.0 * (double)r->sc.top1 / (double)r->sc.scored, r->prefill_tok / r->prefill_s, r->decode_tok_s);
    }
}

int cmd_eval(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    cli_args a;
    cli_args_init(&a, "eval", argc, argv);
    const char *model_dir = cli_str(&a, "--model", cli_default_model());
    const char *text = cli_str(&a, "--text", NULL);
    const char *kv = cli_str(&a, "--kv", NULL);
    const char *compressor = cli_str(&a, "--compressor", NULL);
    const char *calib = cli_str(&a, "--calib", NULL);
    long ctx = cli_long(&a, "--ctx", 0, 2, 1 << 20);
    long max_tokens = cli_long(&a, "--max-tokens", 0, 0, 1L << 40);
    long calib_max = cli_long(&a, "--calib-max-tokens", 0, 0, 1L << 40);
    long calib_skip = cli_long(&a, "--calib-skip", 0, 0, 1 << 20);
    long n_decode = cli_long(&a, "--decode-tokens", 128, 0, 1 << 20);
    long sens_tokens = cli_long(&a, "--sens-tokens", 4096, 2, 1L << 40);
    const char *proto_s = cli_str(&a, "--protocol", "full");
    const char *curve_path = cli_str(&a, "--curve-json", NULL);
    const char *svg_path = cli_str(&a, "--svg", NULL);
    int json = cli_has(&a, "--json");
    int rc = cli_finish(&a);
    cli_args_free(&a);
    if (rc) return rc;
    if (!text) return cli_error("eval", "--text is required (see --help)"), 2;
    {
        /* Inputs: the texts, the compressor, and every "file:PATH" codec of --kv. */
        const char *ins[2 + 64] = {text, compressor, calib};
        int n_in = 3;
        char *kvc = kv ? strdup(kv) : NULL;
        for (char *sv = NULL, *s = kvc ? strtok_r(kvc, ",", &sv) : NULL; s && n_in < 66; s = strtok_r(NULL, ",", &sv))
            if (!strncmp(s, "file:", 5)) ins[n_in++] = s + 5;
        const char *dirs[] = {model_dir}, *outs[] = {curve_path, svg_path}, *flags[] = {"--curve-json", "--svg"};
        rc = cli_check_outputs("eval", dirs, 1, ins, n_in, outs, flags, 2);
        free(kvc);
        if (rc) return rc;
    }
    if (!kv || !*kv) return cli_error("eval", "--kv is required, e.g. --kv q8,q4,klt:2 (see --help)"), 2;
    if (compressor && calib) return cli_error("eval", "give --compressor or --calib, not both"), 2;
    ea_ppl_protocol proto;
    if (!strcmp(proto_s, "full")) proto = EA_PPL_FULL;
    else if (!strcmp(proto_s, "llama")) proto = EA_PPL_LLAMA;
    else return cli_error("eval", "--protocol must be full or llama, not '%s'", proto_s), 2;

    char *kv_copy = strdup(kv);
    int nr = 1;
    for (const char *p = kv; *p; p++) nr += *p == ',';
    nr += 1;
    codec_run *runs = calloc((size_t)nr, sizeof *runs);
    ea_model *m = NULL;
    ea_tokenizer *tok = NULL;
    ea_kv_stats stats = {0};
    ea_kv_metric metric = {0};
    ea_kv_sens_cache *sens = NULL;
    int have_stats = 0, from_compressor = 0, *ids = NULL, *cids = NULL;
    size_t cn = 0;
    const ea_kv_codec **codecs = NULL;
    ea_kv_codec_eval *ev = NULL;
    cJSON *curve = NULL;
    size_t n = 0;
    rc = 1;
    ea_status st;
    if (!kv_copy || !runs) {
        cli_error("eval", "out of memory");
        goto done;
    }
    nr = 1;
    runs[0].spec = "f32";
    for (char *save = NULL, *s = strtok_r(kv_copy, ",", &save); s; s = strtok_r(NULL, ",", &save)) runs[nr++].spec = s;
    if (nr == 1) {
        cli_error("eval", "--kv lists no codec");
        rc = 2;
        goto done;
    }
    for (int i = 1; i < nr; i++)
        if ((st = ea_kv_codec_check_spec(runs[i].spec))) {
            cli_fail_status("eval", st);
            rc = 2;
            goto done;
        }
    if ((st = cli_load_model(model_dir, &m, &tok))) {
        cli_fail_status("eval", st);
        goto done;
    }
    const ea_config *cfg = ea_model_config(m);
    if (ctx == 0) ctx = cfg->n_positions < 1024 ? cfg->n_positions : 1024;
    if (ctx > cfg->n_positions) {
        cli_error("eval", "--ctx %ld exceeds the model's n_positions %d", ctx, cfg->n_positions);
        goto done;
    }
    /* everything the model decides, before any text is read or statistic fitted */
    if (!compressor && calib_skip >= ctx) {
        cli_error("eval", "--calib-skip %ld leaves no position of a %ld-token window (at most %ld)", calib_skip, ctx,
                  ctx - 1);
        rc = 2;
        goto done;
    }
    for (int i = 1; i < nr; i++)
        if ((st = ea_kv_codec_check_spec_for(runs[i].spec, cfg))) {
            cli_fail_status("eval", st);
            rc = 2;
            goto done;
        }
    if ((st = cli_load_text_ids(tok, text, (size_t)max_tokens, &ids, &n))) {
        cli_fail_status("eval", st);
        goto done;
    }
    if (n < 2) {
        cli_error("eval", "%s: need at least 2 tokens", text);
        goto done;
    }
    int want_stats = 0;
    for (int i = 1; i < nr; i++) {
        /* klt codecs fitted with the compressor (fit --kv) are stored in it */
        if (compressor && !strncmp(runs[i].spec, "klt", 3)) {
            if ((st = ea_kv_codec_load_embedded(compressor, runs[i].spec, cfg, &runs[i].codec))) {
                cli_fail_status("eval", st);
                goto done;
            }
            if ((runs[i].embedded = runs[i].codec != NULL))
                fprintf(stderr, "eval: %s: the codec stored in %s\n", runs[i].spec, compressor);
        }
        want_stats |= needs_stats(runs[i].spec) && !runs[i].codec;
    }
    if (want_stats) {
        if (!compressor && !calib) calib = cli_default_calib();
        fprintf(stderr, "eval: fitting K/V statistics from %s\n", compressor ? compressor : calib);
        if ((st = load_stats(m, tok, compressor, calib, calib_max, (int)ctx, (int)calib_skip, &stats, &metric,
                             &from_compressor, &cids, &cn))) {
            cli_fail_status("eval", st);
            goto done;
        }
        have_stats = 1;
    }
    for (int i = 1; i < nr; i++) {
        cli_progress(NULL, "codecs", (size_t)i - 1, (size_t)nr - 1);
        if (runs[i].codec) continue; /* stored in the compressor */
        if ((st = sens ? EA_OK : ea_kv_sens_cache_new(&sens)) ||
            (st = ea_kv_codec_fit(m, runs[i].spec, have_stats ? &stats : NULL, metric.m[0] ? &metric : NULL, cids, cn,
                                  (int)ctx, (size_t)sens_tokens, sens, &runs[i].codec, cli_progress, NULL))) {
            cli_fail_status("eval", st);
            goto done;
        }
    }
    cli_progress_done();
    codecs = malloc(sizeof *codecs * (size_t)nr);
    ev = malloc(sizeof *ev * (size_t)nr);
    if (!codecs || !ev) {
        cli_error("eval", "out of memory");
        goto done;
    }
    for (int i = 0; i < nr; i++) codecs[i] = runs[i].codec;
    if ((st = ea_kv_codecs_eval(m, ids, n, (int)ctx, proto, codecs, nr, ev, cli_progress, NULL))) {
        cli_fail_status("eval", st);
        goto done;
    }
    for (int i = 0; i < nr; i++) {
        runs[i].sc = ev[i].score;
        runs[i].prefill_s = ev[i].prefill_s;
        runs[i].prefill_tok = ev[i].prefill_tok;
        runs[i].cache_bytes = ev[i].cache_bytes;
    }
    cli_progress_done();
    if (n_decode > 0)
        for (int i = 0; i < nr; i++) {
            if ((st = ea_kv_decode_rate(m, runs[i].codec, ids, n, (int)ctx, (int)n_decode, &runs[i].decode_tok_s))) {
                cli_fail_status("eval", st);
                goto done;
            }
            cli_progress(NULL, "decode", (size_t)i + 1, (size_t)nr);
        }
    cli_progress_done();
    double base_ppl = exp(runs[0].sc.nll / (double)runs[0].sc.scored);
    if (curve_path || svg_path) {
        curve = curve_json(runs, nr, base_ppl, model_dir, text, (int)ctx, proto_s);
        if (curve_path) {
            char *sj = cJSON_Print(curve);
            st = sj ? ea_write_file_atomic(curve_path, sj, strlen(sj)) : ea_error(EA_ERR_NOMEM, "%s: out of memory", curve_path);
            free(sj);
            if (st) {
                cli_fail_status("eval", st);
                goto done;
            }
        }
        if (svg_path) {
            char title[256];
            snprintf(title, sizeof title, "KV-cache codecs: %s, ctx %ld, protocol %s", model_dir, ctx, proto_s);
            if ((st = write_svg(runs, nr, base_ppl, svg_path, title, (int)ctx))) {
                cli_fail_status("eval", st);
                goto done;
            }
        }
    }
    if (json) {
        cJSON *j = cJSON_CreateObject(), *b = cJSON_CreateObject(), *arr = cJSON_CreateArray();
        cJSON_AddStringToObject(j, "model", model_dir);
        cJSON_AddStringToObject(j, "text", text);
        cJSON_AddNumberToObject(j, "ctx", (double)ctx);
        cJSON_AddStringToObject(j, "protocol", proto_s);
        cJSON_AddNumberToObject(j, "tokens", (double)n);
        if (have_stats) {
            cJSON *c = cJSON_AddObjectToObject(j, "calibration");
            cJSON_AddStringToObject(c, "source", from_compressor ? compressor : calib);
            cJSON_AddNumberToObject(c, "rows", stats.n);
            cJSON_AddNumberToObject(c, "skip", from_compressor ? 0 : (double)calib_skip);
        }
        cli_add_number(b, "ppl", base_ppl);
        cJSON_AddNumberToObject(b, "tokens_scored", (double)runs[0].sc.scored);
        cJSON_AddNumberToObject(b, "bits_per_value", 32);
        cJSON_AddNumberToObject(b, "cache_bytes", (double)runs[0].cache_bytes);
        cli_add_number(b, "prefill_tok_s", runs[0].prefill_tok / runs[0].prefill_s);
        if (n_decode > 0) cli_add_number(b, "decode_tok_s", runs[0].decode_tok_s);
        else cJSON_AddNullToObject(b, "decode_tok_s");
        cJSON_AddItemToObject(j, "baseline", b);
        for (int i = 1; i < nr; i++) {
            const codec_run *r = &runs[i];
            cJSON *c = cJSON_CreateObject();
            cJSON_AddStringToObject(c, "codec", r->spec);
            cli_add_number(c, "bits_per_value", bits_at(r->codec, ctx));
            cJSON_AddNumberToObject(c, "overhead_bytes", (double)ea_kv_codec_overhead(r->codec));
            cJSON_AddNumberToObject(c, "resident_bytes", (double)ea_kv_codec_resident(r->codec));
            cJSON_AddBoolToObject(c, "stored_in_compressor", r->embedded);
            cJSON_AddNumberToObject(c, "cache_bytes", (double)r->cache_bytes);
            cli_add_number(c, "ppl", exp(r->sc.nll / (double)r->sc.scored));
            cli_add_number(c, "dppl_pct", dppl_pct(r, base_ppl));
            cli_add_number(c, "kl", r->sc.kl / (double)r->sc.scored);
            cli_add_number(c, "top1", (double)r->sc.top1 / (double)r->sc.scored);
            cli_add_number(c, "prefill_tok_s", r->prefill_tok / r->prefill_s);
            if (n_decode > 0) cli_add_number(c, "decode_tok_s", r->decode_tok_s);
            else cJSON_AddNullToObject(c, "decode_tok_s");
            cJSON_AddItemToArray(arr, c);
        }
        cJSON_AddItemToObject(j, "codecs", arr);
        cli_print_json(j);
    } else {
        printf("%s: %zu tokens, windows of %ld, protocol %s, %zu tokens scored\n", text, n, ctx, proto_s, runs[0].sc.scored);
        print_table(runs, nr, base_ppl, (int)ctx);
    }
    rc = 0;
done:
    cJSON_Delete(curve);
    for (int i = 0; i < nr && runs; i++) {
        ea_kv_codec_free(runs[i].codec);
    }
    if (have_stats) ea_kv_stats_free(&stats);
    ea_kv_metric_free(&metric);
    ea_kv_sens_cache_free(sens);
    free(runs);
    free(kv_copy);
    free(ids);
    free(cids);
    free(codecs);
    free(ev);
    ea_tokenizer_free(tok);
    ea_model_free(m);
    return rc;
}
