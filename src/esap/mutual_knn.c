/* Mutual k-nearest-neighbour alignment of two representations of the same items (Huh et al.
 * 2024, "The Platonic Representation Hypothesis"): the mean overlap of each item's cosine
 * neighbourhoods in the two spaces, against a permutation null that shuffles one side's rows.
 * The neighbour lists are computed once; a permuted B only relabels them, so every null draw
 * costs O(n·k) instead of another n² search. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "esap/esap_internal.h"

/* Stream of the permutations, distinct from the split's and the alignment null's. */
#define MKNN_SEED_SALT 0x6d6b6e6e5f6e756cull

/* Insert candidate j with similarity s into the row's top-k lists (descending by similarity,
 * ties keep the lower index first: candidates arrive in increasing j). */
static void top_push(float *ts, int *ti, int k, float s, int j) {
    int p = k - 1;
    if (ti[p] >= 0) {
        if (!(s > ts[p])) return; /* full, and not better than the last */
    } else {
        while (p > 0 && ti[p - 1] < 0) p--; /* first empty slot */
    }
    while (p > 0 && ts[p - 1] < s) {
        ts[p] = ts[p - 1];
        ti[p] = ti[p - 1];
        p--;
    }
    ts[p] = s;
    ti[p] = j;
}

ea_status ea_esap_knn(const float *x, int n, int d, int k, int *nbr) {
    if (n < 2 || d < 1 || k < 1 || k > n - 1)
        return ea_error(EA_ERR_ARG, "knn: k = %d neighbours among %d rows of %d dims (need 1 <= k < n)", k, n, d);
    int rb = (int)(((size_t)8 << 20) / (size_t)n);
    if (rb < 1) rb = 1;
    if (rb > n) rb = n;
    float *xn = ea_esap_alloc((size_t)n, (size_t)d, sizeof *xn), *sim = ea_esap_alloc((size_t)rb, (size_t)n, sizeof *sim);
    float *ts = malloc((size_t)k * sizeof *ts);
    if (!xn || !sim || !ts) {
        free(xn); free(sim); free(ts);
        return ea_error(EA_ERR_NOMEM, "knn: cannot allocate for %d rows of %d dims", n, d);
    }
    memcpy(xn, x, (size_t)n * d * sizeof *xn);
    ea_esap_normalize_rows(xn, n, d);
    for (int i0 = 0; i0 < n; i0 += rb) {
        int nb = n - i0 < rb ? n - i0 : rb;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n, d, 1.0f, xn + (size_t)i0 * d, d, xn, d, 0.0f, sim, n);
        for (int r = 0; r < nb; r++) {
            int i = i0 + r, *ti = nbr + (size_t)i * k;
            const float *s = sim + (size_t)r * n;
            for (int t = 0; t < k; t++) {
                ts[t] = -INFINITY;
                ti[t] = -1;
            }
            for (int j = 0; j < n; j++)
                if (j != i) top_push(ts, ti, k, isnan(s[j]) ? -INFINITY : s[j], j); /* NaN ranks last */
        }
    }
    free(xn); free(sim); free(ts);
    return EA_OK;
}

/* Overlap of A's list of item i with B's list of item pi[i], B's labels mapped back by pinv
 * (pi = NULL: the identity). mark is n ints, stamp-tagged, so it is never cleared. */
static long overlap_sum(const int *na, const int *nb, int n, int k, const int *pi, const int *pinv, int *mark,
                        int *stamp) {
    long total = 0;
    for (int i = 0; i < n; i++) {
        int s = ++*stamp, j = pi ? pi[i] : i;
        for (int t = 0; t < k; t++) mark[na[(size_t)i * k + t]] = s;
        for (int t = 0; t < k; t++) {
            int m = nb[(size_t)j * k + t];
            total += mark[pinv ? pinv[m] : m] == s;
        }
    }
    return total;
}

ea_status ea_esap_mutual_knn(const float *a, int da, const float *b, int db, int n, int k, int n_perm, uint64_t seed,
                             ea_esap_mknn *out) {
    memset(out, 0, sizeof *out);
    if (n_perm < 1) return ea_error(EA_ERR_ARG, "mutual knn: %d permutations (need >= 1)", n_perm);
    if (n < 2 || k < 1 || k > n - 1)
        return ea_error(EA_ERR_ARG, "mutual knn: k = %d neighbours among %d items (need 1 <= k < n)", k, n);
    int *na = ea_esap_alloc((size_t)n, (size_t)k, sizeof *na), *nb = ea_esap_alloc((size_t)n, (size_t)k, sizeof *nb);
    int *pi = malloc((size_t)n * sizeof *pi), *pinv = malloc((size_t)n * sizeof *pinv);
    int *mark = calloc((size_t)n, sizeof *mark);
    double *null = malloc((size_t)n_perm * sizeof *null);
    ea_status st = EA_OK;
    if (!na || !nb || !pi || !pinv || !mark || !null) {
        st = ea_error(EA_ERR_NOMEM, "mutual knn: cannot allocate for %d items", n);
        goto done;
    }
    if ((st = ea_esap_knn(a, n, da, k, na)) || (st = ea_esap_knn(b, n, db, k, nb))) goto done;
    int stamp = 0;
    double scale = 1.0 / ((double)n * k);
    out->n = n;
    out->k = k;
    out->n_perm = n_perm;
    out->chance = (double)k / (n - 1);
    out->value = (double)overlap_sum(na, nb, n, k, NULL, NULL, mark, &stamp) * scale;
    ea_rng rng;
    ea_rng_seed(&rng, seed ^ MKNN_SEED_SALT);
    long ge = 0;
    double sum = 0, sq = 0;
    for (int p = 0; p < n_perm; p++) {
        /* B's row i becomes B's row pi[i]: its list is B's list of pi[i], relabelled by pinv. */
        for (int i = 0; i < n; i++) pi[i] = i;
        for (int i = n - 1; i > 0; i--) {
            int j = (int)ea_rng_below(&rng, (uint64_t)i + 1), t = pi[i];
            pi[i] = pi[j];
            pi[j] = t;
        }
        for (int i = 0; i < n; i++) pinv[pi[i]] = i;
        if (stamp > 0x3fffffff) {
            memset(mark, 0, (size_t)n * sizeof *mark);
            stamp = 0;
        }
        double v = (double)overlap_sum(na, nb, n, k, pi, pinv, mark, &stamp) * scale;
        null[p] = v;
        sum += v;
        ge += v >= out->value;
    }
    out->null_mean = sum / n_perm;
    for (int p = 0; p < n_perm; p++) sq += (null[p] - out->null_mean) * (null[p] - out->null_mean);
    out->null_sd = n_perm > 1 ? sqrt(sq / (n_perm - 1)) : 0.0;
    out->p_value = (1.0 + (double)ge) / (1.0 + n_perm);
done:
    free(na); free(nb); free(pi); free(pinv); free(mark); free(null);
    return st;
}
