/* Anchor-free alignment: a rotation between two k-dim spaces found with no paired data, in the
 * line of mini-vec2vec (Dar 2025) and VecMap's unsupervised initialization (Artetxe et al.
 * 2018). Three stages:
 *   1. pseudo-pairs: every point is described by a rotation-invariant profile, the sorted
 *      cosines to the other points of its own space (plus quantiles of the rest); points of the
 *      two spaces with similar profiles are paired by CSLS mutual nearest neighbours;
 *   2. W = orthogonal Procrustes on the pseudo-pairs;
 *   3. refinement: pairs = CSLS mutual nearest neighbours of (A W, B), W = Procrustes on them,
 *      until the pairs stop changing.
 * Each side is centred and cut to unit rows first; the profile uses partially whitened rows
 * (each eigen-coordinate scaled by λ^-1/4, VecMap's sqrt of the similarity matrix), so that a
 * few dominant directions do not make every profile alike. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "esap/esap_internal.h"

#define PROFILE_TOP 48       /* the nearest cosines, sorted */
#define PROFILE_QUANTILES 16 /* and the quantiles of all of them */
#define PROFILE_LEN (PROFILE_TOP + PROFILE_QUANTILES)
#define REFINE_MAX 30
#define REFINE_CSLS_K 10

static int desc_cmp(const void *x, const void *y) {
    float a = *(const float *)x, b = *(const float *)y;
    return (a < b) - (a > b);
}

/* Centre the columns, optionally scale column j by (its variance)^-power, normalize the rows. */
static void prepare(const float *x, int n, int k, double power, float *out) {
    for (int j = 0; j < k; j++) {
        double m = 0, v = 0;
        for (int i = 0; i < n; i++) m += x[(size_t)i * k + j];
        m /= n;
        for (int i = 0; i < n; i++) {
            double c = x[(size_t)i * k + j] - m;
            v += c * c;
        }
        v /= n > 1 ? n - 1 : 1;
        double s = power > 0 && v > 0 ? pow(v, -power) : 1.0;
        for (int i = 0; i < n; i++) out[(size_t)i * k + j] = (float)((x[(size_t)i * k + j] - m) * s);
    }
    ea_esap_normalize_rows(out, n, k);
}

/* Profiles (n × PROFILE_LEN, unit rows, centred over the profile positions) of unit rows x. */
static ea_status profiles(const float *x, int n, int k, float *prof) {
    int rb = (int)(((size_t)4 << 20) / (size_t)n);
    if (rb < 1) rb = 1;
    if (rb > n) rb = n;
    float *sim = ea_esap_alloc((size_t)rb, (size_t)n, sizeof *sim);
    if (!sim) return ea_error(EA_ERR_NOMEM, "unanchored: cannot allocate profiles for %d points", n);
    for (int i0 = 0; i0 < n; i0 += rb) {
        int nb = n - i0 < rb ? n - i0 : rb;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n, k, 1.0f, x + (size_t)i0 * k, k, x, k, 0.0f, sim, n);
        for (int r = 0; r < nb; r++) {
            float *s = sim + (size_t)r * n, *p = prof + (size_t)(i0 + r) * PROFILE_LEN;
            s[i0 + r] = s[0]; /* drop self: the first entry takes its place, then skip one */
            qsort(s + 1, (size_t)n - 1, sizeof *s, desc_cmp);
            int m = n - 1, top = m < PROFILE_TOP ? m : PROFILE_TOP;
            const float *v = s + 1;
            for (int t = 0; t < PROFILE_TOP; t++) p[t] = v[t < top ? t : top - 1];
            for (int q = 0; q < PROFILE_QUANTILES; q++) p[PROFILE_TOP + q] = v[(size_t)(m - 1) * (q + 1) / PROFILE_QUANTILES];
            double mean = 0;
            for (int t = 0; t < PROFILE_LEN; t++) mean += p[t];
            mean /= PROFILE_LEN;
            for (int t = 0; t < PROFILE_LEN; t++) p[t] -= (float)mean;
        }
    }
    ea_esap_normalize_rows(prof, n, PROFILE_LEN);
    free(sim);
    return EA_OK;
}

/* CSLS nearest neighbours both ways between unit rows x (na) and y (nb), d dims: fwd[i] = best
 * j for x_i, bwd[j] = best i for y_j. CSLS(x, y) = 2cos − r_y(x) − r_x(y), r = mean cosine to
 * the REFINE_CSLS_K nearest in the other set. */
static ea_status csls_nn(const float *x, int na, const float *y, int nb, int d, int *fwd, int *bwd) {
    int t = REFINE_CSLS_K < na && REFINE_CSLS_K < nb ? REFINE_CSLS_K : (na < nb ? na : nb);
    float *sim = ea_esap_alloc((size_t)na, (size_t)nb, sizeof *sim);
    double *rx = calloc((size_t)na, sizeof *rx), *ry = calloc((size_t)nb, sizeof *ry);
    float *top = malloc((size_t)t * sizeof *top);
    float *best_b = malloc((size_t)nb * sizeof *best_b);
    if (!sim || !rx || !ry || !top || !best_b) {
        free(sim); free(rx); free(ry); free(top); free(best_b);
        return ea_error(EA_ERR_NOMEM, "unanchored: cannot allocate %d x %d similarities", na, nb);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, na, nb, d, 1.0f, x, d, y, d, 0.0f, sim, nb);
    /* r for rows (the t largest of each row) and for columns (of each column). */
    for (int pass = 0; pass < 2; pass++) {
        int outer = pass ? nb : na, inner = pass ? na : nb;
        double *r = pass ? ry : rx;
        for (int o = 0; o < outer; o++) {
            for (int u = 0; u < t; u++) top[u] = -3.0f;
            for (int in = 0; in < inner; in++) {
                float v = pass ? sim[(size_t)in * nb + o] : sim[(size_t)o * nb + in];
                if (v > top[0]) { /* top ascending: top[0] is the smallest kept */
                    int p = 0;
                    while (p + 1 < t && top[p + 1] < v) {
                        top[p] = top[p + 1];
                        p++;
                    }
                    top[p] = v;
                }
            }
            double s = 0;
            for (int u = 0; u < t; u++) s += top[u];
            r[o] = s / t;
        }
    }
    for (int j = 0; j < nb; j++) {
        best_b[j] = -INFINITY;
        bwd[j] = -1;
    }
    for (int i = 0; i < na; i++) {
        float best = -INFINITY;
        int bi = -1;
        for (int j = 0; j < nb; j++) {
            float c = (float)(2.0 * sim[(size_t)i * nb + j] - rx[i] - ry[j]);
            if (c > best) {
                best = c;
                bi = j;
            }
            if (c > best_b[j]) {
                best_b[j] = c;
                bwd[j] = i;
            }
        }
        fwd[i] = bi;
    }
    free(sim); free(rx); free(ry); free(top); free(best_b);
    return EA_OK;
}

/* Mutual pairs of fwd/bwd into src/dst; returns their count. */
static int mutual(const int *fwd, int na, const int *bwd, int *src, int *dst) {
    int m = 0;
    for (int i = 0; i < na; i++)
        if (fwd[i] >= 0 && bwd[fwd[i]] == i) {
            src[m] = i;
            dst[m] = fwd[i];
            m++;
        }
    return m;
}

/* x (n × k) times W (k × k) into out, unit rows. */
static void map_unit(const float *x, int n, int k, const double *w, float *out) {
    float *wf = malloc((size_t)k * k * sizeof *wf);
    if (wf) {
        for (size_t i = 0; i < (size_t)k * k; i++) wf[i] = (float)w[i];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, k, k, 1.0f, x, k, wf, k, 0.0f, out, k);
        free(wf);
    } else {
        for (int i = 0; i < n; i++)
            for (int j = 0; j < k; j++) {
                double s = 0;
                for (int l = 0; l < k; l++) s += (double)x[(size_t)i * k + l] * w[(size_t)l * k + j];
                out[(size_t)i * k + j] = (float)s;
            }
    }
    ea_esap_normalize_rows(out, n, k);
}

ea_status ea_esap_unanchored_fit(const float *xa, int na, const float *xb, int nb, int k, double *w,
                                 ea_esap_unanchored_info *info) {
    if (info) memset(info, 0, sizeof *info);
    if (k < 1 || na < PROFILE_LEN + 1 || nb < PROFILE_LEN + 1)
        return ea_error(EA_ERR_ARG, "unanchored: %d and %d points of %d dims (need k >= 1 and more than %d points a side)",
                        na, nb, k, PROFILE_LEN);
    int nmax = na > nb ? na : nb;
    float *ua = ea_esap_alloc((size_t)na, (size_t)k, sizeof *ua), *ub = ea_esap_alloc((size_t)nb, (size_t)k, sizeof *ub);
    float *wa = ea_esap_alloc((size_t)na, (size_t)k, sizeof *wa), *wb = ea_esap_alloc((size_t)nb, (size_t)k, sizeof *wb);
    float *pa = ea_esap_alloc((size_t)na, PROFILE_LEN, sizeof *pa), *pb = ea_esap_alloc((size_t)nb, PROFILE_LEN, sizeof *pb);
    int *fwd = malloc((size_t)na * sizeof *fwd), *bwd = malloc((size_t)nb * sizeof *bwd);
    int *src = malloc((size_t)nmax * sizeof *src), *dst = malloc((size_t)nmax * sizeof *dst);
    int *prev = malloc((size_t)na * sizeof *prev);
    ea_status st = EA_OK;
    if (!ua || !ub || !wa || !wb || !pa || !pb || !fwd || !bwd || !src || !dst || !prev) {
        st = ea_error(EA_ERR_NOMEM, "unanchored: cannot allocate for %d + %d points", na, nb);
        goto done;
    }
    prepare(xa, na, k, 0.0, ua);
    prepare(xb, nb, k, 0.0, ub);
    prepare(xa, na, k, 0.25, wa);
    prepare(xb, nb, k, 0.25, wb);
    if ((st = profiles(wa, na, k, pa)) || (st = profiles(wb, nb, k, pb))) goto done;
    if ((st = csls_nn(pa, na, pb, nb, PROFILE_LEN, fwd, bwd))) goto done;
    int m = mutual(fwd, na, bwd, src, dst);
    if (info) info->init_pairs = m;
    if (m < 2) {
        st = ea_error(EA_ERR_NUMERIC, "unanchored: the profiles gave %d mutual pseudo-pairs (need >= 2)", m);
        goto done;
    }
    if ((st = ea_esap_fit_rotation(ua, ub, k, src, dst, m, w))) goto done;
    for (int i = 0; i < na; i++) prev[i] = fwd[i];
    int it = 0;
    for (; it < REFINE_MAX; it++) {
        map_unit(ua, na, k, w, wa); /* wa now holds A W */
        if ((st = csls_nn(wa, na, ub, nb, k, fwd, bwd))) goto done;
        int changed = 0;
        for (int i = 0; i < na; i++) changed += fwd[i] != prev[i];
        memcpy(prev, fwd, (size_t)na * sizeof *prev);
        m = mutual(fwd, na, bwd, src, dst);
        if (m < 2) {
            st = ea_error(EA_ERR_NUMERIC, "unanchored: refinement %d kept %d mutual pairs (need >= 2)", it, m);
            goto done;
        }
        if ((st = ea_esap_fit_rotation(ua, ub, k, src, dst, m, w))) goto done;
        if (info) info->final_pairs = m;
        if (changed == 0) {
            it++;
            break;
        }
    }
    if (info) info->iterations = it;
done:
    free(ua); free(ub); free(wa); free(wb); free(pa); free(pb);
    free(fwd); free(bwd); free(src); free(dst); free(prev);
    return st;
}

/* Stream of the order B's training rows are handed over in, distinct from the split's. */
#define ORDER_SEED_SALT 0x756e616e63686f72ull

ea_status ea_esap_unanchored_train(const float *za, const float *zb, int k, const int *train, int n_train, uint64_t seed,
                                double *w, ea_esap_unanchored_info *info) {
    int *order = malloc((size_t)(n_train > 0 ? n_train : 1) * sizeof *order);
    float *xa = ea_esap_alloc((size_t)(n_train > 0 ? n_train : 1), (size_t)k, sizeof *xa);
    float *xb = ea_esap_alloc((size_t)(n_train > 0 ? n_train : 1), (size_t)k, sizeof *xb);
    ea_status st = EA_OK;
    if (!order || !xa || !xb) {
        st = ea_error(EA_ERR_NOMEM, "unanchored: cannot allocate for %d anchors", n_train);
        goto done;
    }
    /* A's training rows in split order, B's in an independent shuffle: the fit sees two point
     * sets and nothing of which row of one is which row of the other. */
    memcpy(order, train, (size_t)n_train * sizeof *order);
    ea_rng rng;
    ea_rng_seed(&rng, seed ^ ORDER_SEED_SALT);
    for (int i = n_train - 1; i > 0; i--) {
        int j = (int)ea_rng_below(&rng, (uint64_t)i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int r = 0; r < n_train; r++) {
        memcpy(xa + (size_t)r * k, za + (size_t)train[r] * k, (size_t)k * sizeof *xa);
        memcpy(xb + (size_t)r * k, zb + (size_t)order[r] * k, (size_t)k * sizeof *xb);
    }
    st = ea_esap_unanchored_fit(xa, n_train, xb, n_train, k, w, info);
done:
    free(order); free(xa); free(xb);
    return st;
}

ea_status ea_esap_unanchored_eval(const float *za, const float *zb, int n, int k, int n_train, int n_test,
                                  uint64_t seed, double *w_out, ea_esap_align_report *out,
                                  ea_esap_unanchored_info *info) {
    memset(out, 0, sizeof *out);
    if (info) memset(info, 0, sizeof *info);
    if (k < 1) return ea_error(EA_ERR_ARG, "unanchored: rank %d must be positive", k);
    int *perm = malloc((size_t)(n > 0 ? n : 1) * sizeof *perm);
    double *w = ea_esap_alloc((size_t)k, (size_t)k, sizeof *w);
    ea_status st = EA_OK;
    if (!perm || !w) {
        st = ea_error(EA_ERR_NOMEM, "unanchored: cannot allocate for %d anchors", n);
        goto done;
    }
    if ((st = ea_esap_split(n, n_train, n_test, seed, perm))) goto done;
    const int *train = perm, *test = perm + (n - n_test);
    if ((st = ea_esap_unanchored_train(za, zb, k, train, n_train, seed, w, info))) goto done;
    out->rank = k;
    out->train_anchors = n_train;
    out->test_anchors = n_test;
    out->chance_p_at_1 = 1.0 / n_test;
    if ((st = ea_esap_eval_rotation(za, zb, k, train, n_train, w, &out->train_cosine, NULL)) ||
        (st = ea_esap_eval_rotation(za, zb, k, test, n_test, w, NULL, &out->test)))
        goto done;
    if (w_out) memcpy(w_out, w, (size_t)k * k * sizeof *w);
    st = ea_esap_shuffled_null(za, zb, k, train, n_train, test, n_test, seed, &out->null, &out->null_train_cosine);
done:
    free(perm); free(w);
    return st;
}
