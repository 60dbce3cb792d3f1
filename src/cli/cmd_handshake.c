/* eigenalign handshake: ESAP section 1. Each side's spectrum message (from a model, or from a
 * message file another process wrote), their C(k) correlation and the controls that show what
 * such a correlation is worth. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static void usage(void) {
    printf("usage: eigenalign handshake [--model-a DIR | --spectrum-a FILE] [--model-b DIR | --spectrum-b FILE]\n"
           "                            [--site wte|hidden:L|hidden:last|hidden:LA,LB] [--text PATH]\n"
           "                            [--max-tokens N] [--ctx N] [--K K] [--seed S]\n"
           "                            [--save-a FILE] [--save-b FILE] [--json]\n\n"
           "Compare the eigen-spectra of two models (ESAP handshake): Df of each, Pearson r of their\n"
           "cumulative-variance curves C(k) over k = 1..K (default min(d_a, d_b)), with controls: r of each\n"
           "curve against an isotropic Gaussian sample (n = %d·d, seeded) and against a power law 1/i of the\n"
           "same d. C(k) curves are rotation-invariant and unrelated spectra often correlate above %.2f, so r\n"
           "decides nothing. With two models, the mutual %d-NN alignment of their representations of the same\n"
           "tokens (at most %d shared tokens, seeded) is measured against a permutation null (%d shuffles)\n"
           "and the verdict is \"converged\" only when it beats the null at p < %.2f (\"diverged\" otherwise;\n"
           "\"untested\" from spectrum messages, which carry no paired representations).\n\n"
           "  --model-a/-b DIR     models (default: the bundled model for both)\n"
           "  --spectrum-a/-b FILE a spectrum message written by --save-a/-b (instead of a model)\n"
           "  --site S             wte (embedding rows, default) or hidden states at layer L over --text\n"
           "  --text PATH          text for hidden sites (default: bundled calibration text)\n"
           "  --max-tokens N       use at most N tokens of the text (default: all)\n"
           "  --ctx N              window length for hidden sites (default min(n_positions, %d))\n"
           "  --K K                curve length (default min(d_a, d_b))\n"
           "  --seed S             seed of the isotropic control (default 0)\n"
           "  --save-a/-b FILE     write that side's spectrum message (JSON) for another process\n"
           "  --json               JSON on stdout\n",
           EA_ESAP_ISOTROPIC_FACTOR, EA_ESAP_CONVERGED_R, EA_ESAP_MKNN_K, EA_ESAP_MKNN_MAX_ITEMS, EA_ESAP_MKNN_PERMS,
           EA_ESAP_MKNN_ALPHA, EA_ESAP_DEFAULT_CTX);
}

/* One side: a message file, or a model's spectrum at the site. */
static ea_status side_spectrum(const char *model_dir, const char *msg_path, int side_b, const ea_esap_source *src,
                               ea_esap_spectrum *out) {
    if (msg_path) return ea_esap_spectrum_load(msg_path, out);
    ea_model *m;
    ea_tokenizer *t = NULL; /* only hidden sites tokenize text */
    ea_status st = cli_load_model(model_dir, &m, src->repr.kind == EA_ESAP_REPR_HIDDEN ? &t : NULL);
    if (st) return st;
    st = ea_esap_spectrum_from_model(m, t, side_b, src, 0, out);
    cli_progress_done();
    ea_tokenizer_free(t);
    ea_model_free(m);
    return st;
}

static cJSON *side_json(const ea_esap_spectrum *s, const char *origin) {
    cJSON *o = cJSON_CreateObject();
    cli_add_number(o, "Df", s->df);
    cJSON_AddNumberToObject(o, "d", s->d);
    cJSON_AddStringToObject(o, "site", s->site);
    cJSON_AddStringToObject(o, "fingerprint", s->fingerprint);
    cJSON_AddStringToObject(o, "source", origin);
    return o;
}

static const char *NOTE = "verdict: converged only when mutual_knn beats its permutation null at p < 0.01 "
                          "(untested without paired representations). ck_pearson > threshold (the note's 0.9) is "
                          "reported as ck_above_threshold but decides nothing: C(k) curves are rotation-invariant "
                          "and curves of unrelated spectra often correlate above 0.9.";

/* Both sides from models: the pair of models with their shared-token anchors at the site, each
 * side's spectrum, and the mutual k-NN of at most EA_ESAP_MKNN_MAX_ITEMS anchors (seeded). */
static ea_status pair_side(const char *dir_a, const char *dir_b, const char *site, const ea_esap_source *src,
                           uint64_t seed, ea_esap_spectrum *sa, ea_esap_spectrum *sb, ea_esap_mknn *mk) {
    esap_pair p;
    int *perm = NULL;
    ea_status st;
    if ((st = esap_pair_open(&p, dir_a, dir_b, site, src, ESAP_PAIRS_IDS)) ||
        (st = ea_esap_spectrum_from_model(p.ma, p.ta, 0, &p.src, 0, sa)) ||
        (st = ea_esap_spectrum_from_model(p.mb, p.tb, 1, &p.src, 0, sb)) || (st = esap_pair_fit_bases(&p)))
        goto done;
    int n = p.an.n, m = n - 1 < EA_ESAP_MKNN_MAX_ITEMS ? n - 1 : EA_ESAP_MKNN_MAX_ITEMS;
    if (m <= EA_ESAP_MKNN_K) {
        st = ea_error(EA_ERR_ARG, "handshake: %d shared anchors, too few for a mutual %d-NN", n, EA_ESAP_MKNN_K);
        goto done;
    }
    if (!(perm = malloc((size_t)n * sizeof *perm))) {
        st = ea_error(EA_ERR_NOMEM, "handshake: out of memory");
        goto done;
    }
    if (!(st = ea_esap_split(n, n - m, m, seed, perm))) st = esap_pair_mknn(&p, perm + (n - m), m, seed, mk);
done:
    cli_progress_done();
    free(perm);
    esap_pair_close(&p);
    return st;
}

int cmd_handshake(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage();
        return 0;
    }
    cli_args a;
    cli_args_init(&a, "handshake", argc, argv);
    const char *model_a = cli_str(&a, "--model-a", cli_default_model());
    const char *model_b = cli_str(&a, "--model-b", cli_default_model());
    const char *spec_a = cli_str(&a, "--spectrum-a", NULL), *spec_b = cli_str(&a, "--spectrum-b", NULL);
    const char *site = cli_str(&a, "--site", "wte");
    ea_esap_source src;
    esap_source_args(&a, &src);
    long K = cli_long(&a, "--K", 0, 2, EA_ESAP_MAX_DIM);
    long seed = cli_long(&a, "--seed", 0, 0, 0x7fffffffffffffffL);
    const char *save_a = cli_str(&a, "--save-a", NULL), *save_b = cli_str(&a, "--save-b", NULL);
    int json = cli_has(&a, "--json");
    int given_a = cli_has(&a, "--model-a"), given_b = cli_has(&a, "--model-b");
    int rc = cli_finish(&a);
    cli_args_free(&a);
    if (rc) return rc;
    {
        const char *dirs[] = {spec_a ? NULL : model_a, spec_b ? NULL : model_b};
        const char *ins[] = {spec_a, spec_b, src.text_path}, *outs[] = {save_a, save_b};
        const char *flags[] = {"--save-a", "--save-b"};
        if ((rc = cli_check_outputs("handshake", dirs, 2, ins, 3, outs, flags, 2))) return rc;
    }
    if (spec_a && given_a) return cli_error("handshake", "give --model-a or --spectrum-a, not both");
    if (spec_b && given_b) return cli_error("handshake", "give --model-b or --spectrum-b, not both");

    ea_status st = ea_esap_repr_parse(site, &src.repr);
    if (st) return cli_fail_status("handshake", st);

    ea_esap_spectrum sa, sb;
    memset(&sa, 0, sizeof sa);
    memset(&sb, 0, sizeof sb);
    ea_esap_mknn mk;
    memset(&mk, 0, sizeof mk);
    int paired = !spec_a && !spec_b;
    if (paired) {
        if ((st = pair_side(model_a, model_b, site, &src, (uint64_t)seed, &sa, &sb, &mk))) {
            ea_esap_spectrum_free(&sa);
            ea_esap_spectrum_free(&sb);
            return cli_fail_status("handshake", st);
        }
    } else {
        if ((st = side_spectrum(model_a, spec_a, 0, &src, &sa))) return cli_fail_status("handshake", st);
        if ((st = side_spectrum(model_b, spec_b, 1, &src, &sb))) {
            ea_esap_spectrum_free(&sa);
            return cli_fail_status("handshake", st);
        }
    }
    ea_esap_handshake h;
    if (!(st = ea_esap_compare(&sa, &sb, (int)K, (uint64_t)seed, &h))) {
        /* Messages are written only once the comparison succeeded: no output on failure. */
        if (save_a) st = ea_esap_spectrum_save(&sa, save_a);
        if (!st && save_b) st = ea_esap_spectrum_save(&sb, save_b);
    }
    if (st) {
        ea_esap_spectrum_free(&sa);
        ea_esap_spectrum_free(&sb);
        return cli_fail_status("handshake", st);
    }
    const char *verdict = !paired ? "untested" : mk.p_value < EA_ESAP_MKNN_ALPHA ? "converged" : "diverged";
    double ctl_max = fmax(fmax(h.a_vs_isotropic, h.b_vs_isotropic), fmax(h.a_vs_powerlaw, h.b_vs_powerlaw));
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "a", side_json(&sa, spec_a ? spec_a : model_a));
        cJSON_AddItemToObject(o, "b", side_json(&sb, spec_b ? spec_b : model_b));
        cJSON_AddNumberToObject(o, "K", h.K);
        cli_add_number(o, "ck_pearson", h.ck_pearson);
        cJSON_AddNumberToObject(o, "threshold", h.threshold);
        cJSON_AddBoolToObject(o, "ck_above_threshold", h.converged);
        if (paired) esap_mknn_json(o, &mk);
        cJSON_AddStringToObject(o, "verdict", verdict);
        cJSON_AddStringToObject(o, "verdict_basis", "mutual_knn p_value < 0.01");
        cJSON *c = cJSON_AddObjectToObject(o, "controls");
        cli_add_number(c, "a_vs_isotropic", h.a_vs_isotropic);
        cli_add_number(c, "b_vs_isotropic", h.b_vs_isotropic);
        cli_add_number(c, "a_vs_powerlaw", h.a_vs_powerlaw);
        cli_add_number(c, "b_vs_powerlaw", h.b_vs_powerlaw);
        cJSON_AddNumberToObject(c, "isotropic_n_per_d", EA_ESAP_ISOTROPIC_FACTOR);
        cJSON_AddNumberToObject(c, "powerlaw_alpha", 1.0);
        cJSON_AddNumberToObject(c, "seed", (double)seed);
        cJSON_AddBoolToObject(o, "above_controls", isfinite(h.ck_pearson) && h.ck_pearson > ctl_max);
        cJSON_AddStringToObject(o, "note", NOTE);
        cli_print_json(o);
    } else {
        printf("ESAP handshake over C(k), k = 1..%d\n\n", h.K);
        printf("  %-2s %-10s %6s %10s  %s\n", "", "site", "d", "Df", "source");
        printf("  %-2s %-10s %6d %10.3f  %s\n", "a", sa.site, sa.d, sa.df, spec_a ? spec_a : model_a);
        printf("  %-2s %-10s %6d %10.3f  %s\n\n", "b", sb.site, sb.d, sb.df, spec_b ? spec_b : model_b);
        printf("  Pearson r of C_a(k), C_b(k): %.6f (the note's threshold r > %.2f: %s; decides nothing)\n", h.ck_pearson,
               h.threshold, h.converged ? "above" : "below");
        if (paired)
            printf("  mutual %d-NN over %d shared tokens: %.4f (null %.4f ± %.4f, %d permutations, p = %.4g)\n", mk.k,
                   mk.n, mk.value, mk.null_mean, mk.null_sd, mk.n_perm, mk.p_value);
        printf("  verdict: %s (converged only when mutual k-NN beats its null at p < %.2f)\n\n", verdict,
               EA_ESAP_MKNN_ALPHA);
        printf("  controls (same k range)       a          b\n");
        printf("    vs isotropic (n = %d·d)   %8.6f   %8.6f\n", EA_ESAP_ISOTROPIC_FACTOR, h.a_vs_isotropic, h.b_vs_isotropic);
        printf("    vs power law 1/i          %8.6f   %8.6f\n\n", h.a_vs_powerlaw, h.b_vs_powerlaw);
        printf("  r between the models is %s every control (largest control r = %.6f).\n",
               isfinite(h.ck_pearson) && h.ck_pearson > ctl_max ? "above" : "NOT above", ctl_max);
        printf("  Note: C(k) curves are rotation-invariant and unrelated spectra often correlate above %.2f;\n"
               "  a high r alone does not show that two models share a representation.\n",
               h.threshold);
        if (save_a) printf("  wrote %s\n", save_a);
        if (save_b) printf("  wrote %s\n", save_b);
    }
    ea_esap_spectrum_free(&sa);
    ea_esap_spectrum_free(&sb);
    return 0;
}
