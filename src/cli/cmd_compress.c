/* eigenalign compress: how well a fitted compressor reconstructs activations of unseen text,
 * and what replacing the residual stream by its reconstruction does to the model. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char *usage =
    "usage: eigenalign compress [--model DIR] --compressor FILE (--text PATH | --prompt STR ...)\n"
    "                           [--texts FILE] [--max-tokens N] [--inject LAYER|all|none]\n"
    "                           [--ctx N] [--json]\n"
    "  Sites: reconstruction error ||X - X^||_F / ||X||_F and mean per-token cosine of every\n"
    "  projector, on the uncompressed model's activations.\n"
    "  Quality: each window of --ctx tokens (default min(512, n_positions), as analyze; each\n"
    "  from an empty cache) runs twice: untouched, and with the residual stream entering block\n"
    "  LAYER (0..n_layer-1; every block with 'all', the default) replaced by its\n"
    "  reconstruction. Every next-token prediction is compared: perplexity of both, mean\n"
    "  KL(full || compressed), top-1 agreement.\n"
    "  If the compressor was fitted with --exclude-first, position 0 of each window is neither\n"
    "  measured nor replaced (it is kept exact, as it was left out of the fit).\n"
    "  Texts table: every --prompt (repeatable) and every non-empty line of --texts FILE gets\n"
    "  its own reconstruction error (mean over the sites). Without --text, quality is measured\n"
    "  on the prompts.\n";

typedef struct {
    char **s;
    int n, cap;
} strlist;

static int strlist_push(strlist *l, char *s) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        char **p = realloc(l->s, (size_t)cap * sizeof *p);
        if (!p) return -1;
        l->s = p;
        l->cap = cap;
    }
    l->s[l->n++] = s;
    return 0;
}

/* Every "--prompt STR" (the parser only sees the first occurrence of an option). */
static int collect_prompts(cli_args *a, strlist *out) {
    for (int i = 1; i < a->argc; i++) {
        if (strcmp(a->argv[i], "--prompt")) continue;
        a->used[i] = 1;
        if (i + 1 >= a->argc) return cli_error("compress", "option --prompt needs a value");
        a->used[i + 1] = 1;
        char *s = strdup(a->argv[++i]);
        if (!s || strlist_push(out, s)) return cli_error("compress", "out of memory");
    }
    return 0;
}

/* Non-empty lines of a file. */
static ea_status read_lines(const char *path, strlist *out) {
    char *buf;
    size_t len;
    ea_status st = ea_read_file(path, (size_t)64 << 20, &buf, &len);
    if (st) return st;
    int before = out->n;
    for (char *p = buf, *end; p < buf + len; p = end + 1) {
        end = memchr(p, '\n', (size_t)(buf + len - p));
        if (!end) end = buf + len;
        size_t l = (size_t)(end - p);
        if (l && p[l - 1] == '\r') l--;
        if (!l) continue;
        char *s = strndup(p, l);
        if (!s || strlist_push(out, s)) {
            free(s);
            free(buf);
            return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
        }
    }
    free(buf);
    if (out->n == before) return ea_error(EA_ERR_ARG, "%s: no non-empty lines", path);
    return EA_OK;
}

static ea_status encode_str(const ea_tokenizer *t, const char *s, size_t max_tokens, int **ids, size_t *n) {
    ea_status st = ea_tokenizer_encode(t, s, strlen(s), 0, ids, n);
    if (st) return st;
    if (*n == 0) {
        free(*ids);
        *ids = NULL;
        return ea_error(EA_ERR_ARG, "prompt '%s' has no tokens", s);
    }
    if (max_tokens > 0 && *n > max_tokens) *n = max_tokens;
    return EA_OK;
}

/* Mean over sites of the relative error and cosine (sites with no rows are skipped). */
static void mean_site_error(const ea_eval_result *r, double *err, double *cosv) {
    double se = 0, sc = 0;
    int k = 0;
    for (int i = 0; i < r->n_sites; i++)
        if (r->site[i].rows) {
            se += ea_recon_stats_rel_error(&r->site[i]);
            sc += ea_recon_stats_cosine(&r->site[i]);
            k++;
        }
    *err = k ? se / k : NAN;
    *cosv = k ? sc / k : NAN;
}

int cmd_compress(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    cli_args a;
    cli_args_init(&a, "compress", argc, argv);
    strlist prompts = {0};
    int bad = collect_prompts(&a, &prompts);
    const char *model_dir = cli_str(&a, "--model", cli_default_model());
    const char *comp_path = cli_str(&a, "--compressor", NULL);
    const char *text = cli_str(&a, "--text", NULL);
    const char *texts = cli_str(&a, "--texts", NULL);
    long max_tokens = cli_long(&a, "--max-tokens", 0, 0, 1L << 40);
    const char *inject_s = cli_str(&a, "--inject", "all");
    long ctx = cli_long(&a, "--ctx", 0, 2, 1 << 20);
    int json = cli_has(&a, "--json");
    int rc = cli_finish(&a);
    cli_args_free(&a);
    ea_model *m = NULL;
    ea_tokenizer *tok = NULL;
    ea_compressor *c = NULL;
    ea_eval_result res = {0};
    int *ids = NULL;
    size_t n = 0;
    double *t_err = NULL, *t_cos = NULL;
    size_t *t_tok = NULL;
    if (bad || rc) {
        rc = 2;
        goto done;
    }
    rc = 2;
    if (!comp_path) {
        cli_error("compress", "--compressor FILE is required (see --help)");
        goto done;
    }
    if (!text && !prompts.n) {
        cli_error("compress", "give --text PATH or at least one --prompt STR (see --help)");
        goto done;
    }
    rc = 1;
    ea_status st = cli_load_model(model_dir, &m, &tok);
    if (st) {
        cli_fail_status("compress", st);
        goto done;
    }
    const ea_config *cfg = ea_model_config(m);
    int inject;
    if (!strcmp(inject_s, "all")) inject = EA_INJECT_ALL;
    else if (!strcmp(inject_s, "none")) inject = EA_INJECT_NONE;
    else {
        char *end;
        long v = strtol(inject_s, &end, 10);
        if (end == inject_s || *end || v < 0 || v >= cfg->n_layer) {
            cli_error("compress", "--inject: '%s' is not a layer in 0..%d, 'all' or 'none'", inject_s, cfg->n_layer - 1);
            rc = 2;
            goto done;
        }
        inject = (int)v;
    }
    if (ctx > cfg->n_positions) {
        cli_error("compress", "--ctx %ld exceeds the model's n_positions %d", ctx, cfg->n_positions);
        rc = 2;
        goto done;
    }
    if (texts && (st = read_lines(texts, &prompts))) {
        cli_fail_status("compress", st);
        goto done;
    }
    if ((st = ea_compressor_load(comp_path, &c)) || (st = ea_compressor_check_model(c, comp_path, m))) {
        cli_fail_status("compress", st);
        goto done;
    }
    if ((st = ea_eval_result_init(&res, c))) {
        cli_fail_status("compress", st);
        goto done;
    }
    ea_eval_params ep = {(int)ctx, inject, cli_progress, NULL};
    double t0 = ea_time_now();
    /* Main evaluation: the text file, else every prompt in turn (each its own windows). */
    if (text) {
        if ((st = cli_load_text_ids(tok, text, (size_t)max_tokens, &ids, &n)) ||
            (st = ea_compressor_evaluate(m, c, ids, n, &ep, &res))) {
            cli_progress_done();
            cli_fail_status("compress", st);
            goto done;
        }
        free(ids);
        ids = NULL;
    } else {
        for (int i = 0; i < prompts.n; i++) {
            if ((st = encode_str(tok, prompts.s[i], (size_t)max_tokens, &ids, &n)) ||
                (st = ea_compressor_evaluate(m, c, ids, n, &ep, &res))) {
                cli_progress_done();
                cli_fail_status("compress", st);
                goto done;
            }
            free(ids);
            ids = NULL;
        }
    }
    cli_progress_done();
    /* Texts table: reconstruction only, one result per text. */
    t_err = calloc((size_t)prompts.n + 1, sizeof *t_err);
    t_cos = calloc((size_t)prompts.n + 1, sizeof *t_cos);
    t_tok = calloc((size_t)prompts.n + 1, sizeof *t_tok);
    if (!t_err || !t_cos || !t_tok) {
        cli_error("compress", "out of memory");
        goto done;
    }
    for (int i = 0; i < prompts.n; i++) {
        ea_eval_result r1;
        ea_eval_params p1 = {(int)ctx, EA_INJECT_NONE, NULL, NULL};
        if ((st = encode_str(tok, prompts.s[i], (size_t)max_tokens, &ids, &n)) || (st = ea_eval_result_init(&r1, c))) {
            cli_fail_status("compress", st);
            goto done;
        }
        st = ea_compressor_evaluate(m, c, ids, n, &p1, &r1);
        free(ids);
        ids = NULL;
        if (st) {
            ea_eval_result_free(&r1);
            cli_fail_status("compress", st);
            goto done;
        }
        mean_site_error(&r1, &t_err[i], &t_cos[i]);
        t_tok[i] = n;
        ea_eval_result_free(&r1);
    }
    double secs = ea_time_now() - t0;

    const char *inj_name = inject == EA_INJECT_ALL ? "all" : inject == EA_INJECT_NONE ? "none" : NULL;
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON *sites = cJSON_AddArrayToObject(j, "sites");
        for (int i = 0; i < ea_compressor_count(c); i++) {
            const ea_projector *p = ea_compressor_get(c, i);
            ea_site_ref r = ea_projector_site(p);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "site", ea_site_name(r.site));
            cJSON_AddNumberToObject(o, "layer", r.layer);
            if (r.head >= 0) cJSON_AddNumberToObject(o, "head", r.head);
            cJSON_AddNumberToObject(o, "d", ea_projector_dim(p));
            cJSON_AddNumberToObject(o, "k", ea_projector_rank(p));
            cli_add_number(o, "ratio", (double)ea_projector_dim(p) / ea_projector_rank(p));
            cli_add_number(o, "recon_error", ea_recon_stats_rel_error(&res.site[i]));
            cli_add_number(o, "cosine", ea_recon_stats_cosine(&res.site[i]));
            cJSON_AddItemToArray(sites, o);
        }
        cJSON *q = cJSON_AddObjectToObject(j, "quality");
        cli_add_number(q, "ppl_full", ea_eval_ppl_full(&res));
        cli_add_number(q, "ppl_compressed", ea_eval_ppl_compressed(&res));
        cli_add_number(q, "kl", ea_eval_kl(&res));
        cli_add_number(q, "top1", ea_eval_top1(&res));
        if (inj_name) cJSON_AddStringToObject(j, "inject", inj_name);
        else cJSON_AddNumberToObject(j, "inject", inject);
        cJSON_AddStringToObject(j, "model", model_dir);
        cJSON_AddStringToObject(j, "compressor", comp_path);
        cJSON_AddNumberToObject(j, "ctx", ctx > 0 ? ctx : ea_compress_default_ctx(cfg));
        cJSON_AddNumberToObject(j, "tokens", (double)res.tokens);
        cJSON_AddNumberToObject(j, "windows", (double)res.windows);
        cJSON_AddNumberToObject(j, "scored", (double)res.scored);
        cJSON_AddBoolToObject(j, "exclude_first", ea_compressor_get_info(c)->exclude_first);
        cJSON_AddNumberToObject(j, "seconds", secs);
        cJSON *tj = cJSON_AddArrayToObject(j, "texts");
        for (int i = 0; i < prompts.n; i++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "text", prompts.s[i]);
            cJSON_AddNumberToObject(o, "tokens", (double)t_tok[i]);
            cli_add_number(o, "recon_error", t_err[i]);
            cli_add_number(o, "cosine", t_cos[i]);
            cJSON_AddItemToArray(tj, o);
        }
        cli_print_json(j);
    } else {
        printf("%zu tokens in %zu windows; compressor %s\n\n", res.tokens, res.windows, comp_path);
        printf("%-8s %5s %4s %5s %5s %7s %11s %8s\n", "site", "layer", "head", "d", "k", "ratio", "recon error",
               "cosine");
        for (int i = 0; i < ea_compressor_count(c); i++) {
            const ea_projector *p = ea_compressor_get(c, i);
            ea_site_ref r = ea_projector_site(p);
            char head[16] = "-";
            if (r.head >= 0) snprintf(head, sizeof head, "%d", r.head);
            printf("%-8s %5d %4s %5d %5d %7.2f %11.4f %8.4f\n", ea_site_name(r.site), r.layer, head,
                   ea_projector_dim(p), ea_projector_rank(p), (double)ea_projector_dim(p) / ea_projector_rank(p),
                   ea_recon_stats_rel_error(&res.site[i]), ea_recon_stats_cosine(&res.site[i]));
        }
        if (inject != EA_INJECT_NONE) {
            printf("\nquality with the hidden state replaced at layer %s (%zu predictions):\n",
                   inj_name ? inj_name : inject_s, res.scored);
            printf("  perplexity   %.4f full -> %.4f compressed\n", ea_eval_ppl_full(&res),
                   ea_eval_ppl_compressed(&res));
            printf("  mean KL      %.6f nats (full || compressed)\n", ea_eval_kl(&res));
            printf("  top-1 agree  %.4f\n", ea_eval_top1(&res));
        }
        if (prompts.n) {
            printf("\n%-50s %6s %11s %8s\n", "text", "tokens", "recon error", "cosine");
            for (int i = 0; i < prompts.n; i++) {
                size_t l = strlen(prompts.s[i]), cut = l > 50 ? 47 : l;
                while (cut < l && cut > 0 && ((unsigned char)prompts.s[i][cut] & 0xC0) == 0x80) cut--; /* UTF-8 */
                int cols = cut < l ? 3 : 0; /* columns shown: code points, not bytes */
                for (size_t b = 0; b < cut; b++) cols += ((unsigned char)prompts.s[i][b] & 0xC0) != 0x80;
                printf("%.*s%s%*s %6zu %11.4f %8.4f\n", (int)cut, prompts.s[i], cut < l ? "..." : "",
                       cols < 50 ? 50 - cols : 0, "", t_tok[i], t_err[i], t_cos[i]);
            }
            printf("(reconstruction error: mean over the compressor's %d sites)\n", ea_compressor_count(c));
        }
    }
    rc = 0;
done:
    free(t_err);
    free(t_cos);
    free(t_tok);
    ea_eval_result_free(&res);
    for (int i = 0; i < prompts.n; i++) free(prompts.s[i]);
    free(prompts.s);
    free(ids);
    ea_compressor_free(c);
    ea_tokenizer_free(tok);
    ea_model_free(m);
    return rc;
}
