/* eigenalign align: ESAP section 2. Shared tokens as anchors, each side reduced to k dims with its
 * own eigenbasis, orthogonal Procrustes on a training split, retrieval on the held-out split,
 * a shuffled-correspondence null beside it. */
#include <math.h>
#include <stdlib.h>

#include "cli/cli.h"

#define DEFAULT_RANK 64

static void usage(void) {
    printf("usage: eigenalign align [--model-a DIR] [--model-b DIR] [--repr wte|hidden:L|hidden:last|hidden:LA,LB]\n"
           "                        [--rank K] [--anchors N] [--test M] [--seed S] [--text PATH]\n"
           "                        [--max-tokens N] [--ctx N] [--pairs ids|text|none]\n"
           "                        [--sweep [--ranks LIST] [--anchor-counts LIST]] [--json]\n\n"
           "Align two models on shared tokens (ESAP). Anchors: tokens with the same bytes in both vocabularies,\n"
           "as embedding rows (wte) or as hidden states at a layer averaged over the token's occurrences in\n"
           "--text (only tokens seen in the text). Each side is centred and reduced to K dims with its own\n"
           "eigenbasis (fitted on all its anchor vectors: no pairing used), W = orthogonal Procrustes on N\n"
           "training pairs; P@1, P@10 (cosine and CSLS) and the mean cosine are measured on M held-out pairs\n"
           "against all M held-out candidates. null: the same with the training pairs shuffled (mean of %d\n"
           "shuffles). train_cosine is IN-SAMPLE (the pairs W was fitted on).\n\n"
           "  --model-a/-b DIR     models (default: the bundled model for both)\n"
           "  --repr R             wte (default), hidden:L (layer L of both), hidden:last, hidden:LA,LB\n"
           "  --rank K             dims per side (default min(%d, d_a, d_b))\n"
           "  --anchors N          training anchors (default min(%d, all - M))\n"
           "  --test M             held-out anchors (default min(%d, all/5))\n"
           "  --seed S             split and null seed (default 0)\n"
           "  --text PATH          text for hidden representations (default: bundled calibration text)\n"
           "  --max-tokens N       use at most N tokens of the text\n"
           "  --ctx N              window length for hidden states (default min(n_positions, %d))\n"
           "  --pairs P            ids: anchors are tokens with the same bytes (default); text: words of --text\n"
           "                       both tokenizers cover, hidden states pooled over each word's tokens (models\n"
           "                       with different tokenizers; hidden representations only); none: W is fitted\n"
           "                       with NO pairs (anchor-free: neighbourhood-profile pseudo-pairs, Procrustes,\n"
           "                       CSLS refinement) and scored on the same held-out id pairs and null as ids\n"
           "  --sweep              table over ranks x training-anchor counts (same held-out set throughout)\n"
           "  --ranks LIST         sweep ranks, e.g. 8,16,32 (default powers of 2 up to min(d_a, d_b))\n"
           "  --anchor-counts LIST sweep training sizes (default 100,300,1000,... up to all - M)\n"
           "  --json               JSON on stdout (an array with --sweep)\n",
           EA_ESAP_NULL_SHUFFLES, DEFAULT_RANK, ESAP_DEFAULT_TRAIN, ESAP_DEFAULT_TEST, EA_ESAP_DEFAULT_CTX);
}

static cJSON *report_json(const ea_esap_align_report *r) {
    /* (mutual k-NN and the anchor-free details are added by the caller) */
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "rank", r->rank);
    cJSON_AddNumberToObject(o, "train_anchors", r->train_anchors);
    cJSON_AddNumberToObject(o, "test_anchors", r->test_anchors);
    cli_add_number(o, "p_at_1", r->test.p_at_1);
    cli_add_number(o, "p_at_10", r->test.p_at_10);
    cli_add_number(o, "csls_p_at_1", r->test.csls_p_at_1);
    cli_add_number(o, "csls_p_at_10", r->test.csls_p_at_10);
    cli_add_number(o, "test_cosine", r->test.mean_cos);
    cli_add_number(o, "train_cosine", r->train_cosine);
    cli_add_number(o, "chance_p_at_1", r->chance_p_at_1);
    cJSON *n = cJSON_AddObjectToObject(o, "null");
    cli_add_number(n, "p_at_1", r->null.p_at_1);
    cli_add_number(n, "p_at_10", r->null.p_at_10);
    cli_add_number(n, "csls_p_at_1", r->null.csls_p_at_1);
    cli_add_number(n, "csls_p_at_10", r->null.csls_p_at_10);
    cli_add_number(n, "test_cosine", r->null.mean_cos);
    cli_add_number(n, "train_cosine", r->null_train_cosine);
    cJSON_AddNumberToObject(n, "shuffles", EA_ESAP_NULL_SHUFFLES);
    return o;
}

static void table_header(void) {
    printf("  %5s %7s %6s | %6s %6s %7s %8s %9s | %11s %9s | %6s %9s\n", "rank", "train", "test", "P@1", "P@10",
           "CSLS@1", "CSLS@10", "test_cos", "train_cos*", "chance@1", "null@1", "null_cos");
}

static void table_row(const ea_esap_align_report *r) {
    printf("  %5d %7d %6d | %6.4f %6.4f %7.4f %8.4f %9.4f | %11.4f %9.4f | %6.4f %9.4f\n", r->rank,
           r->train_anchors, r->test_anchors, r->test.p_at_1, r->test.p_at_10, r->test.csls_p_at_1,
           r->test.csls_p_at_10, r->test.mean_cos, r->train_cosine, r->chance_p_at_1, r->null.p_at_1,
           r->null.mean_cos);
}

/* Project both sides to k dims once, then evaluate every training size at that rank. */
static ea_status run_rank(const ea_esap_anchors *an, const ea_esap_basis *ba, const ea_esap_basis *bb, int k,
                          const int *counts, int nc, int n_test, uint64_t seed, int unanchored,
                          ea_esap_align_report *reps, ea_esap_unanchored_info *infos) {
    float *za = malloc((size_t)an->n * k * sizeof *za), *zb = malloc((size_t)an->n * k * sizeof *zb);
    ea_status st;
    if (!za || !zb) st = ea_error(EA_ERR_NOMEM, "align: cannot allocate %d x %d", an->n, k);
    else if (!(st = ea_esap_basis_project(ba, an->a, an->n, k, za)) && !(st = ea_esap_basis_project(bb, an->b, an->n, k, zb)))
        for (int j = 0; j < nc && !st; j++)
            st = unanchored ? ea_esap_unanchored_eval(za, zb, an->n, k, counts[j], n_test, seed, NULL, &reps[j], &infos[j])
                            : ea_esap_align_eval(za, zb, an->n, k, counts[j], n_test, seed, NULL, &reps[j]);
    free(za);
    free(zb);
    return st;
}

int cmd_align(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage();
        return 0;
    }
    cli_args a;
    cli_args_init(&a, "align", argc, argv);
    const char *dir_a = cli_str(&a, "--model-a", cli_default_model());
    const char *dir_b = cli_str(&a, "--model-b", cli_default_model());
    const char *repr = cli_str(&a, "--repr", "wte");
    long rank = cli_long(&a, "--rank", 0, 1, EA_ESAP_MAX_DIM);
    long n_train = cli_long(&a, "--anchors", 0, 1, 1L << 30);
    long n_test = cli_long(&a, "--test", 0, 1, 1L << 30);
    long seed = cli_long(&a, "--seed", 0, 0, 0x7fffffffffffffffL);
    ea_esap_source src;
    esap_source_args(&a, &src);
    int sweep = cli_has(&a, "--sweep");
    const char *ranks_s = cli_str(&a, "--ranks", NULL), *counts_s = cli_str(&a, "--anchor-counts", NULL);
    const char *pairs_s = cli_str(&a, "--pairs", NULL);
    int json = cli_has(&a, "--json");
    int rc = cli_finish(&a);
    cli_args_free(&a);
    if (rc) return rc;
    int pairs = esap_pairs_parse("align", pairs_s);
    if (pairs < 0) return 2;
    if (!sweep && (ranks_s || counts_s)) return cli_error("align", "--ranks and --anchor-counts need --sweep");
    if (sweep && (rank || n_train)) return cli_error("align", "--sweep takes --ranks and --anchor-counts, not --rank/--anchors");

    esap_pair p;
    const ea_esap_anchors *an = &p.an;
    ea_esap_align_report *reps = NULL;
    ea_esap_unanchored_info *infos = NULL;
    int *perm = NULL;
    ea_esap_mknn mk;
    int nrep = 0;
    ea_status st;
    rc = 1;
    if ((st = esap_pair_open(&p, dir_a, dir_b, repr, &src, pairs))) goto fail;
    int kmax = an->d_a < an->d_b ? an->d_a : an->d_b;
    if (esap_pair_split(&p, "align", repr, &n_train, &n_test)) goto out;
    int room = an->n - (int)n_test;
    if (rank == 0) rank = kmax < DEFAULT_RANK ? kmax : DEFAULT_RANK;
    if (rank > kmax) {
        cli_error("align", "--rank %ld exceeds the smaller width min(%d, %d)", rank, an->d_a, an->d_b);
        goto out;
    }
    int ranks[ESAP_MAX_LIST], counts[ESAP_MAX_LIST], nr = 0, nc = 0;
    if (sweep) {
        if ((nr = esap_ranks("align", ranks_s, kmax, ranks)) < 0) goto out;
        if (counts_s) {
            if ((nc = esap_parse_list(counts_s, counts, ESAP_MAX_LIST, 1, room)) <= 0) {
                cli_error("align", "--anchor-counts '%s': expected up to %d comma-separated counts in [1, %d]", counts_s,
                          ESAP_MAX_LIST, room);
                goto out;
            }
        } else {
            static const int ladder[] = {100, 300, 1000, 3000, 10000, 30000, 100000, 300000};
            for (size_t i = 0; i < sizeof ladder / sizeof *ladder && ladder[i] < room; i++) counts[nc++] = ladder[i];
            counts[nc++] = room;
        }
    } else {
        ranks[nr++] = (int)rank;
        counts[nc++] = (int)n_train;
    }
    if ((st = esap_pair_fit_bases(&p))) goto fail;
    reps = calloc((size_t)nr * nc, sizeof *reps);
    infos = calloc((size_t)nr * nc, sizeof *infos);
    perm = malloc((size_t)an->n * sizeof *perm);
    if (!reps || !infos || !perm) {
        st = ea_error(EA_ERR_NOMEM, "align: out of memory");
        goto fail;
    }
    for (int i = 0; i < nr; i++) {
        if ((st = run_rank(an, p.ba, p.bb, ranks[i], counts, nc, (int)n_test, (uint64_t)seed, pairs == ESAP_PAIRS_NONE,
                           reps + nrep, infos + nrep)))
            goto fail;
        nrep += nc;
        if (sweep) cli_progress(NULL, "sweep", (size_t)nrep, (size_t)nr * nc);
    }
    /* Mutual k-NN of the two models' full (centred) vectors of the held-out anchors: a property of
     * the representations and the pairing, not of W. */
    if ((st = ea_esap_split(an->n, (int)(an->n - n_test), (int)n_test, (uint64_t)seed, perm)) ||
        (st = esap_pair_mknn(&p, perm + an->n - n_test, (int)n_test, (uint64_t)seed, &mk)))
        goto fail;
    cli_progress_done();
    char name_a[64], name_b[64];
    ea_esap_repr_name(&p.src.repr, 0, p.ma, name_a, sizeof name_a);
    ea_esap_repr_name(&p.src.repr, 1, p.mb, name_b, sizeof name_b);
    if (json) {
        if (sweep) {
            cJSON *arr = cJSON_CreateArray();
            for (int i = 0; i < nrep; i++) {
                cJSON *e = report_json(&reps[i]);
                cJSON_AddStringToObject(e, "pairs", esap_pairs_name(pairs));
                cJSON_AddItemToArray(arr, e);
            }
            cli_print_json(arr);
        } else {
            cJSON *o = report_json(&reps[0]);
            cJSON_AddStringToObject(o, "pairs", esap_pairs_name(pairs));
            if (pairs == ESAP_PAIRS_NONE) {
                cJSON *u = cJSON_AddObjectToObject(o, "anchor_free");
                cJSON_AddNumberToObject(u, "init_pseudo_pairs", infos[0].init_pairs);
                cJSON_AddNumberToObject(u, "refinements", infos[0].iterations);
                cJSON_AddNumberToObject(u, "final_pairs", infos[0].final_pairs);
                cli_add_number(u, "p_at_1_over_null", reps[0].test.p_at_1 / fmax(reps[0].null.p_at_1, reps[0].chance_p_at_1));
            }
            esap_mknn_json(o, &mk);
            cJSON_AddStringToObject(o, "repr_a", name_a);
            cJSON_AddStringToObject(o, "repr_b", name_b);
            cJSON_AddNumberToObject(o, "anchors_total", an->n);
            cJSON_AddNumberToObject(o, "d_a", an->d_a);
            cJSON_AddNumberToObject(o, "d_b", an->d_b);
            cJSON_AddNumberToObject(o, "seed", (double)seed);
            cJSON_AddStringToObject(o, "fingerprint_a", ea_model_fingerprint(p.ma));
            cJSON_AddStringToObject(o, "fingerprint_b", ea_model_fingerprint(p.mb));
            cJSON_AddStringToObject(o, "note", "train_cosine is in-sample (the pairs W was fitted on; with pairs none, "
                                               "the true training pairs under the anchor-free W); every other number is "
                                               "on held-out anchors. null: training pairs shuffled. mutual_knn: held-out "
                                               "anchors' full vectors, null = one side's rows permuted; p_at_1_over_null "
                                               "divides by max(null P@1, chance).");
            cli_print_json(o);
        }
    } else {
        printf("ESAP alignment: %s (%s, d=%d) -> %s (%s, d=%d)\n", dir_a, name_a, an->d_a, dir_b, name_b, an->d_b);
        printf("%d %s anchors (--pairs %s); held-out set of %ld fixed by seed %ld; retrieval over all held-out "
               "candidates\n",
               an->n, pairs == ESAP_PAIRS_TEXT ? "shared-word" : "shared-token", esap_pairs_name(pairs), n_test, seed);
        if (pairs == ESAP_PAIRS_NONE)
            printf("W fitted WITHOUT pairs (anchor-free): %d pseudo-pairs, %d refinements, %d final pairs\n",
                   infos[0].init_pairs, infos[0].iterations, infos[0].final_pairs);
        printf("mutual %d-NN of the held-out anchors: %.4f (null %.4f ± %.4f over %d permutations, p = %.4g)\n\n", mk.k,
               mk.value, mk.null_mean, mk.null_sd, mk.n_perm, mk.p_value);
        table_header();
        for (int i = 0; i < nrep; i++) table_row(&reps[i]);
        printf("\n  * train_cos is IN-SAMPLE (the pairs W was fitted on); all other columns are held-out.\n"
               "  null: W fitted on shuffled training pairs (mean of %d shuffles); chance@1 = 1/test.\n",
               EA_ESAP_NULL_SHUFFLES);
    }
    rc = 0;
    goto out;
fail:
    cli_progress_done();
    rc = cli_fail_status("align", st);
out:
    free(reps);
    free(infos);
    free(perm);
    esap_pair_close(&p);
    return rc;
}
