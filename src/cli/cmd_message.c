/* eigenalign message: ESAP section 3. Agent A sends k eigen-coefficients for a token; agent B
 * rotates them into its space with the Procrustes map and names the token by nearest neighbour.
 * Accuracy against k and bytes on the wire against the full vector. */
#include "cli/cli.h"

static void usage(void) {
    printf("usage: eigenalign message [--model-a DIR] [--model-b DIR] [--repr wte|hidden:L|hidden:last|hidden:LA,LB]\n"
           "                          [--ranks LIST] [--anchors N] [--test M] [--seed S] [--text PATH]\n"
           "                          [--max-tokens N] [--ctx N] [--pairs ids|text|none] [--json]\n\n"
           "Compressed messages between two models (ESAP). For each held-out token, agent A sends the k\n"
           "coefficients of its (centred) vector in A's own eigenbasis: 4k bytes as float32, 2k as float16.\n"
           "Agent B maps them with W (orthogonal Procrustes fitted on N training tokens, as in `align`),\n"
           "lifts them into its full space with its own eigenbasis, and resolves the token by cosine nearest\n"
           "neighbour among its own centred vectors of all M held-out tokens (acc k-d: among those reduced to\n"
           "its own top k). Reported per k: accuracy (top 1) for float32 and float16 messages, top-10, the\n"
           "same with shuffled training pairs (null, mean of %d shuffles), chance (1/M), and the bytes\n"
           "against A's full float32 vector (4·d_a).\n\n"
           "  --model-a/-b DIR  sender and receiver (default: the bundled model for both)\n"
           "  --repr R          wte (default), hidden:L (layer L of both), hidden:last, hidden:LA,LB\n"
           "  --ranks LIST      message sizes k, e.g. 8,16,32,64 (default 4,8,16,... up to min(d_a, d_b))\n"
           "  --anchors N       training tokens for W (default min(%d, all - M))\n"
           "  --test M          held-out tokens sent as messages (default min(%d, all/5))\n"
           "  --seed S          split and null seed (default 0)\n"
           "  --text PATH       text for hidden representations (default: bundled calibration text)\n"
           "  --max-tokens N    use at most N tokens of the text\n"
           "  --ctx N           window length for hidden states (default min(n_positions, %d))\n"
           "  --pairs P         ids (tokens with the same bytes, default), text (words both tokenizers\n"
           "                    cover; hidden representations) or none (W fitted without pairs, anchor-free;\n"
           "                    the id pairs only pick the held-out tokens and score them)\n"
           "  --json            JSON on stdout\n",
           EA_ESAP_NULL_SHUFFLES, ESAP_DEFAULT_TRAIN, ESAP_DEFAULT_TEST, EA_ESAP_DEFAULT_CTX);
}

int cmd_message(int argc, char **argv) {
    if (cli_wants_help(argc, argv)) {
        usage();
        return 0;
    }
    cli_args a;
    cli_args_init(&a, "message", argc, argv);
    const char *dir_a = cli_str(&a, "--model-a", cli_default_model());
    const char *dir_b = cli_str(&a, "--model-b", cli_default_model());
    const char *repr = cli_str(&a, "--repr", "wte");
    const char *ranks_s = cli_str(&a, "--ranks", NULL);
    long n_train = cli_long(&a, "--anchors", 0, 1, 1L << 30);
    long n_test = cli_long(&a, "--test", 0, 1, 1L << 30);
    long seed = cli_long(&a, "--seed", 0, 0, 0x7fffffffffffffffL);
    ea_esap_source src;
    esap_source_args(&a, &src);
    const char *pairs_s = cli_str(&a, "--pairs", NULL);
    int json = cli_has(&a, "--json");
    int rc = cli_finish(&a);
    cli_args_free(&a);
    if (rc) return rc;
    int pairs = esap_pairs_parse("message", pairs_s);
    if (pairs < 0) return 2;

    esap_pair p;
    const ea_esap_anchors *an = &p.an;
    ea_esap_message_report reps[ESAP_MAX_LIST];
    ea_status st;
    rc = 1;
    if ((st = esap_pair_open(&p, dir_a, dir_b, repr, &src, pairs))) goto fail;
    int kmax = an->d_a < an->d_b ? an->d_a : an->d_b, ranks[ESAP_MAX_LIST], nr;
    if ((nr = esap_ranks("message", ranks_s, kmax, ranks)) < 0) goto out;
    if (esap_pair_split(&p, "message", repr, &n_train, &n_test)) goto out;
    if ((st = esap_pair_fit_bases(&p))) goto fail;
    for (int i = 0; i < nr; i++) {
        st = pairs == ESAP_PAIRS_NONE
                 ? ea_esap_message_eval_unanchored(p.ba, an->a, p.bb, an->b, an->n, ranks[i], (int)n_train, (int)n_test,
                                                   (uint64_t)seed, &reps[i])
                 : ea_esap_message_eval(p.ba, an->a, p.bb, an->b, an->n, ranks[i], (int)n_train, (int)n_test,
                                        (uint64_t)seed, &reps[i]);
        if (st) goto fail;
        cli_progress(NULL, "ranks", (size_t)i + 1, (size_t)nr);
    }
    cli_progress_done();
    char name_a[64], name_b[64];
    ea_esap_repr_name(&p.src.repr, 0, p.ma, name_a, sizeof name_a);
    ea_esap_repr_name(&p.src.repr, 1, p.mb, name_b, sizeof name_b);
    size_t full = reps[0].bytes_full;
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON *sa = cJSON_AddObjectToObject(o, "a"), *sb = cJSON_AddObjectToObject(o, "b");
        cJSON_AddStringToObject(sa, "model", dir_a);
        cJSON_AddStringToObject(sa, "fingerprint", ea_model_fingerprint(p.ma));
        cJSON_AddNumberToObject(sa, "d", an->d_a);
        cJSON_AddStringToObject(sa, "repr", name_a);
        cJSON_AddStringToObject(sb, "model", dir_b);
        cJSON_AddStringToObject(sb, "fingerprint", ea_model_fingerprint(p.mb));
        cJSON_AddNumberToObject(sb, "d", an->d_b);
        cJSON_AddStringToObject(sb, "repr", name_b);
        cJSON_AddStringToObject(o, "pairs", esap_pairs_name(pairs));
        cJSON_AddNumberToObject(o, "anchors_total", an->n);
        cJSON_AddNumberToObject(o, "train_anchors", (double)n_train);
        cJSON_AddNumberToObject(o, "test_anchors", (double)n_test);
        cJSON_AddNumberToObject(o, "seed", (double)seed);
        cJSON_AddNumberToObject(o, "bytes_full", (double)full);
        cli_add_number(o, "chance", reps[0].chance);
        cJSON *arr = cJSON_AddArrayToObject(o, "results");
        for (int i = 0; i < nr; i++) {
            const ea_esap_message_report *r = &reps[i];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddNumberToObject(e, "rank", r->rank);
            cJSON_AddNumberToObject(e, "bytes_f32", (double)r->bytes_f32);
            cJSON_AddNumberToObject(e, "bytes_f16", (double)r->bytes_f16);
            cli_add_number(e, "compression_f32", (double)full / (double)r->bytes_f32);
            cli_add_number(e, "compression_f16", (double)full / (double)r->bytes_f16);
            cli_add_number(e, "accuracy_f32", r->acc_f32);
            cli_add_number(e, "accuracy_f16", r->acc_f16);
            cli_add_number(e, "top10_f32", r->top10_f32);
            cli_add_number(e, "accuracy_reduced_f32", r->acc_reduced_f32);
            cli_add_number(e, "null_accuracy", r->null_acc_f32);
            cJSON_AddItemToArray(arr, e);
        }
        cJSON_AddStringToObject(o, "note", "accuracy: held-out token resolved exactly by B's cosine nearest neighbour "
                                           "among all held-out tokens; null: W fitted on shuffled training pairs.");
        cli_print_json(o);
    } else {
        printf("ESAP messages: %s (%s, d=%d) -> %s (%s, d=%d)\n", dir_a, name_a, an->d_a, dir_b, name_b, an->d_b);
        printf("--pairs %s; W fitted %s %ld training %s; %ld held-out sent, each resolved among all %ld (chance %.4f)\n",
               esap_pairs_name(pairs), pairs == ESAP_PAIRS_NONE ? "WITHOUT pairs on the" : "on", n_train,
               pairs == ESAP_PAIRS_TEXT ? "words" : "tokens", n_test, n_test, reps[0].chance);
        printf("full vector: %zu bytes (float32, d_a = %d)\n\n", full, an->d_a);
        printf("  %5s %9s %9s %9s | %8s %8s %8s %8s | %8s\n", "k", "bytes f32", "bytes f16", "x smaller", "acc f32",
               "acc f16", "top10", "acc k-d*", "null acc");
        for (int i = 0; i < nr; i++) {
            const ea_esap_message_report *r = &reps[i];
            printf("  %5d %9zu %9zu %8.1fx | %8.4f %8.4f %8.4f %8.4f | %8.4f\n", r->rank, r->bytes_f32, r->bytes_f16,
                   (double)full / (double)r->bytes_f16, r->acc_f32, r->acc_f16, r->top10_f32, r->acc_reduced_f32,
                   r->null_acc_f32);
        }
        printf("\n  x smaller: full float32 vector / float16 message. acc: resolved among B's full vectors;\n"
               "  * acc k-d: among B's vectors reduced to its own top k (= align's P@1 at this rank).\n");
    }
    rc = 0;
    goto out;
fail:
    cli_progress_done();
    rc = cli_fail_status("message", st);
out:
    esap_pair_close(&p);
    return rc;
}
