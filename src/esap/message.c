/* Section 3: k-float messages. A sends its token's eigen-coefficients; B rotates them into its
 * k-space, lifts them into its full space and names the token by nearest neighbour. */
#include <stdlib.h>
#include <string.h>

#include "esap/esap_internal.h"

/* Resolve every held-out message (za rows, possibly already rounded) against B's centred full
 * vectors of the held-out tokens. */
/* B's side of the wire: out[r] = za[test[r]] · W, in k dims. */
static void rotate(const float *za, const double *w, const int *test, int n_test, int k, float *out) {
    for (int r = 0; r < n_test; r++) {
        const float *z = za + (size_t)test[r] * k;
        for (int j = 0; j < k; j++) {
            double acc = 0;
            for (int l = 0; l < k; l++) acc += (double)z[l] * w[(size_t)l * k + j];
            out[(size_t)r * k + j] = (float)acc;
        }
    }
}

static ea_status resolve(const float *za, const double *w, const ea_esap_basis *basis_b, const float *cand,
                         const int *test, int n_test, int k, float *tmp_k, float *lifted, ea_esap_retrieval *res) {
    rotate(za, w, test, n_test, k, tmp_k);
    ea_status st = ea_esap_basis_lift(basis_b, tmp_k, n_test, k, lifted);
    if (st) return st;
    return ea_esap_retrieve(lifted, cand, n_test, ea_esap_basis_dim(basis_b), EA_ESAP_CSLS_K, res);
}

static ea_status message_eval(const ea_esap_basis *basis_a, const float *a, const ea_esap_basis *basis_b,
                               const float *b, int n, int k, int n_train, int n_test, uint64_t seed, int unanchored,
                               ea_esap_message_report *out) {
    memset(out, 0, sizeof *out);
    int da = ea_esap_basis_dim(basis_a), db = ea_esap_basis_dim(basis_b);
    int kmax = da < db ? da : db;
    if (k < 1 || k > kmax) return ea_error(EA_ERR_ARG, "message: rank %d not in [1, %d]", k, kmax);
    ea_status st = EA_OK;
    int *perm = malloc((size_t)(n > 0 ? n : 1) * sizeof *perm);
    int *partner = malloc((size_t)(n_train > 0 ? n_train : 1) * sizeof *partner);
    float *za = ea_esap_alloc((size_t)(n > 0 ? n : 1), (size_t)k, sizeof *za);
    float *zb = ea_esap_alloc((size_t)(n > 0 ? n : 1), (size_t)k, sizeof *zb);
    float *zr = ea_esap_alloc((size_t)(n > 0 ? n : 1), (size_t)k, sizeof *zr);
    float *tmp = ea_esap_alloc((size_t)(n_test > 0 ? n_test : 1), (size_t)k, sizeof *tmp);
    float *lifted = ea_esap_alloc((size_t)(n_test > 0 ? n_test : 1), (size_t)db, sizeof *lifted);
    float *cand = ea_esap_alloc((size_t)(n_test > 0 ? n_test : 1), (size_t)db, sizeof *cand);
    double *w = ea_esap_alloc((size_t)k, (size_t)k, sizeof *w);
    if (!perm || !partner || !za || !zb || !zr || !tmp || !lifted || !cand || !w) {
        st = ea_error(EA_ERR_NOMEM, "message: cannot allocate for %d anchors", n);
        goto done;
    }
    if ((st = ea_esap_split(n, n_train, n_test, seed, perm))) goto done;
    const int *train = perm, *test = perm + (n - n_test);
    if ((st = ea_esap_basis_project(basis_a, a, n, k, za)) || (st = ea_esap_basis_project(basis_b, b, n, k, zb)))
        goto done;
    const double *mb = ea_esap_basis_mean(basis_b);
    for (int r = 0; r < n_test; r++)
        for (int j = 0; j < db; j++)
            cand[(size_t)r * db + j] = (float)(b[(size_t)test[r] * db + j] - mb[j]);

    out->rank = k;
    out->train_anchors = n_train;
    out->test_anchors = n_test;
    out->bytes_f32 = (size_t)k * sizeof(float);
    out->bytes_f16 = (size_t)k * sizeof(uint16_t);
    out->bytes_full = (size_t)da * sizeof(float);
    out->chance = 1.0 / n_test;
    ea_esap_retrieval res;
    if ((st = unanchored ? ea_esap_unanchored_train(za, zb, k, train, n_train, seed, w, NULL)
                         : ea_esap_fit_rotation(za, zb, k, train, train, n_train, w)))
        goto done;
    if ((st = resolve(za, w, basis_b, cand, test, n_test, k, tmp, lifted, &res))) goto done;
    out->acc_f32 = res.p_at_1;
    out->top10_f32 = res.p_at_10;
    /* Receiver resolving in its own k-space: candidates are its reduced held-out vectors. */
    float *cand_k = lifted; /* n_test × k fits in the n_test × d_b buffer */
    for (int r = 0; r < n_test; r++) memcpy(cand_k + (size_t)r * k, zb + (size_t)test[r] * k, (size_t)k * sizeof *zb);
    rotate(za, w, test, n_test, k, tmp);
    if ((st = ea_esap_retrieve(tmp, cand_k, n_test, k, EA_ESAP_CSLS_K, &res))) goto done;
    out->acc_reduced_f32 = res.p_at_1;
    /* The same messages after a float16 round trip on the wire. */
    for (size_t i = 0; i < (size_t)n * k; i++) zr[i] = ea_f16_to_f32(ea_f32_to_f16(za[i]));
    if ((st = resolve(zr, w, basis_b, cand, test, n_test, k, tmp, lifted, &res))) goto done;
    out->acc_f16 = res.p_at_1;
    for (int sh = 0; sh < EA_ESAP_NULL_SHUFFLES; sh++) {
        ea_esap_null_partners(train, n_train, seed, sh, partner);
        if ((st = ea_esap_fit_rotation(za, zb, k, train, partner, n_train, w))) goto done;
        if ((st = resolve(za, w, basis_b, cand, test, n_test, k, tmp, lifted, &res))) goto done;
        out->null_acc_f32 += res.p_at_1 / EA_ESAP_NULL_SHUFFLES;
    }
done:
    free(perm); free(partner); free(za); free(zb); free(zr); free(tmp); free(lifted); free(cand); free(w);
    return st;
}

ea_status ea_esap_message_eval(const ea_esap_basis *basis_a, const float *a, const ea_esap_basis *basis_b,
                               const float *b, int n, int k, int n_train, int n_test, uint64_t seed,
                               ea_esap_message_report *out) {
    return message_eval(basis_a, a, basis_b, b, n, k, n_train, n_test, seed, 0, out);
}

ea_status ea_esap_message_eval_unanchored(const ea_esap_basis *basis_a, const float *a, const ea_esap_basis *basis_b,
                                          const float *b, int n, int k, int n_train, int n_test, uint64_t seed,
                                          ea_esap_message_report *out) {
    return message_eval(basis_a, a, basis_b, b, n, k, n_train, n_test, seed, 1, out);
}
