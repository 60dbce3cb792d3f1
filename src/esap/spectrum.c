/* Spectrum messages: construction from eigenvalues, the C(k) curve, Df. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ea/spectral.h"
#include "esap/esap_internal.h"

static int cmp_desc(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a < b) - (a > b);
}

/* Names travel in JSON and in file names of reports: keep them printable ASCII. */
static ea_status check_name(const char *what, const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > EA_ESAP_MAX_NAME)
        return ea_error(EA_ERR_ARG, "spectrum %s: length %zu not in [1, %d]", what, n, EA_ESAP_MAX_NAME);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return ea_error(EA_ERR_ARG, "spectrum %s: byte %zu is not printable ASCII", what, i);
    return EA_OK;
}

void ea_esap_cumulative(const double *ev, int d, int K, double *ck) {
    double total = 0, run = 0;
    for (int i = 0; i < d; i++) total += ev[i];
    for (int k = 1; k <= K; k++) {
        if (k <= d) run += ev[k - 1];
        ck[k - 1] = total > 0 ? run / total : 0.0;
    }
}

ea_status ea_esap_spectrum_init(ea_esap_spectrum *s, const double *eigenvalues, int d, int K,
                                const char *fingerprint, const char *site) {
    memset(s, 0, sizeof *s);
    if (d < 1 || d > EA_ESAP_MAX_DIM)
        return ea_error(EA_ERR_ARG, "spectrum: dimension %d not in [1, %d]", d, EA_ESAP_MAX_DIM);
    if (K <= 0) K = d;
    if (K > d) return ea_error(EA_ERR_ARG, "spectrum: K = %d exceeds d = %d", K, d);
    ea_status st;
    if ((st = check_name("fingerprint", fingerprint)) || (st = check_name("site", site))) return st;
    double *ev = malloc((size_t)d * sizeof *ev), *ck = malloc((size_t)K * sizeof *ck);
    if (!ev || !ck) {
        free(ev); free(ck);
        return ea_error(EA_ERR_NOMEM, "spectrum: cannot allocate %d values", d);
    }
    for (int i = 0; i < d; i++) {
        if (!isfinite(eigenvalues[i])) {
            free(ev); free(ck);
            return ea_error(EA_ERR_NUMERIC, "spectrum: eigenvalue %d is not finite", i);
        }
        ev[i] = eigenvalues[i];
    }
    qsort(ev, (size_t)d, sizeof *ev, cmp_desc);
    /* Rounding leaves tiny negatives on a PSD spectrum; anything larger is a caller bug. */
    double tol = 1e-12 * fabs(ev[0]);
    double total = 0;
    for (int i = 0; i < d; i++) {
        if (ev[i] < 0) {
            if (ev[i] < -tol) {
                double bad = ev[i];
                free(ev); free(ck);
                return ea_error(EA_ERR_NUMERIC, "spectrum: eigenvalue %g is negative (not a covariance)", bad);
            }
            ev[i] = 0;
        }
        total += ev[i];
    }
    if (!(total > 0)) {
        free(ev); free(ck);
        return ea_error(EA_ERR_NUMERIC, "spectrum: eigenvalues sum to %g (need a positive trace)", total);
    }
    double sq = 0;
    for (int i = 0; i < d; i++) {
        ev[i] /= total;
        sq += ev[i] * ev[i];
    }
    ea_esap_cumulative(ev, d, K, ck);
    snprintf(s->fingerprint, sizeof s->fingerprint, "%s", fingerprint);
    snprintf(s->site, sizeof s->site, "%s", site);
    s->d = d;
    s->K = K;
    s->df = 1.0 / sq; /* (Σλ)²/Σλ² with Σλ = 1 */
    s->eigenvalues = ev;
    s->ck = ck;
    return EA_OK;
}

void ea_esap_spectrum_free(ea_esap_spectrum *s) {
    if (!s) return;
    free(s->eigenvalues);
    free(s->ck);
    memset(s, 0, sizeof *s);
}

double ea_esap_pearson(const double *x, const double *y, int n) {
    if (n < 2) return NAN;
    double mx = 0, my = 0;
    for (int i = 0; i < n; i++) {
        mx += x[i];
        my += y[i];
    }
    mx /= n;
    my /= n;
    double sxy = 0, sxx = 0, syy = 0;
    for (int i = 0; i < n; i++) {
        double a = x[i] - mx, b = y[i] - my;
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    if (!(sxx > 0) || !(syy > 0)) return NAN;
    double r = sxy / sqrt(sxx * syy);
    return r > 1 ? 1 : r < -1 ? -1 : r;
}

void ea_esap_powerlaw_spectrum(int d, double alpha, double *ev) {
    for (int i = 0; i < d; i++) ev[i] = pow((double)(i + 1), -alpha);
}

#define ISO_BLOCK 512

ea_status ea_esap_isotropic_spectrum(int d, int n, uint64_t seed, double *ev) {
    if (d < 1 || d > EA_ESAP_MAX_DIM || n < 2)
        return ea_error(EA_ERR_ARG, "isotropic control: d = %d, n = %d (need 1 <= d <= %d, n >= 2)", d, n,
                        EA_ESAP_MAX_DIM);
    double *cov = ea_esap_alloc((size_t)d, (size_t)d, sizeof *cov), *blk = ea_esap_alloc(ISO_BLOCK, (size_t)d, sizeof *blk);
    ea_cov *acc = NULL;
    ea_status st = EA_OK;
    if (!cov || !blk) {
        st = ea_error(EA_ERR_NOMEM, "isotropic control: cannot allocate %d x %d", d, d);
        goto done;
    }
    if ((st = ea_cov_init(&acc, d))) goto done;
    ea_rng rng;
    ea_rng_seed(&rng, seed);
    /* The sample is never stored whole: generated and accumulated block by block. */
    for (int i0 = 0; i0 < n && !st; i0 += ISO_BLOCK) {
        int nb = n - i0 < ISO_BLOCK ? n - i0 : ISO_BLOCK;
        for (size_t i = 0; i < (size_t)nb * d; i++) blk[i] = ea_rng_normal(&rng);
        st = ea_cov_add_f64(acc, blk, nb, d);
    }
    if (!st) st = ea_cov_matrix(acc, 0, cov);
    if (!st) st = ea_eigh(cov, d, ev, NULL);
done:
    ea_cov_free(acc);
    free(cov);
    free(blk);
    return st;
}

ea_status ea_esap_compare(const ea_esap_spectrum *a, const ea_esap_spectrum *b, int K, uint64_t seed,
                          ea_esap_handshake *out) {
    memset(out, 0, sizeof *out);
    if (!a->ck || !b->ck) return ea_error(EA_ERR_ARG, "compare: empty spectrum message");
    if (K <= 0) K = a->d < b->d ? a->d : b->d;
    if (K > a->K || K > b->K)
        return ea_error(EA_ERR_ARG, "compare: K = %d exceeds the curves sent (K_a = %d, K_b = %d)", K, a->K, b->K);
    if (K < 2) return ea_error(EA_ERR_ARG, "compare: K = %d (a correlation needs at least 2 points)", K);
    int dmax = a->d > b->d ? a->d : b->d;
    double *ev = malloc((size_t)dmax * sizeof *ev), *c1 = malloc((size_t)K * sizeof *c1);
    if (!ev || !c1) {
        free(ev); free(c1);
        return ea_error(EA_ERR_NOMEM, "compare: cannot allocate %d values", dmax);
    }
    out->d_a = a->d;
    out->d_b = b->d;
    out->K = K;
    out->df_a = a->df;
    out->df_b = b->df;
    out->ck_pearson = ea_esap_pearson(a->ck, b->ck, K);
    if (!isfinite(out->ck_pearson)) { /* a verdict on an undefined r would be a silent wrong answer */
        int const_a = !(a->ck[K - 1] > a->ck[0]), const_b = !(b->ck[K - 1] > b->ck[0]);
        free(ev);
        free(c1);
        return ea_error(EA_ERR_NUMERIC, "compare: the Pearson r of C(k) over k = 1..%d is undefined: C(k) of %s is "
                        "constant (%s spectrum of rank 1, or every eigenvalue past the first zero)", K,
                        const_a && const_b ? "both sides" : const_a ? "side a" : const_b ? "side b" : "a side",
                        const_a && const_b ? "each a" : "a");
    }
    out->threshold = EA_ESAP_CONVERGED_R;
    out->converged = out->ck_pearson > EA_ESAP_CONVERGED_R; /* NaN → not converged */
    ea_status st = EA_OK;
    for (int side = 0; side < 2 && !st; side++) {
        const ea_esap_spectrum *s = side ? b : a;
        int n = EA_ESAP_ISOTROPIC_FACTOR * s->d;
        /* Distinct streams per side so two equal-d sides still get independent samples. */
        if ((st = ea_esap_isotropic_spectrum(s->d, n, seed + (uint64_t)side, ev))) break;
        ea_esap_cumulative(ev, s->d, K, c1);
        double r_iso = ea_esap_pearson(s->ck, c1, K);
        ea_esap_powerlaw_spectrum(s->d, 1.0, ev);
        ea_esap_cumulative(ev, s->d, K, c1);
        double r_pow = ea_esap_pearson(s->ck, c1, K);
        if (side) {
            out->b_vs_isotropic = r_iso;
            out->b_vs_powerlaw = r_pow;
        } else {
            out->a_vs_isotropic = r_iso;
            out->a_vs_powerlaw = r_pow;
        }
    }
    free(ev);
    free(c1);
    return st;
}
