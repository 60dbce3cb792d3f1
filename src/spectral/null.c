/* Null reference for "low rank": the spectrum of the sample covariance of n isotropic Gaussian
 * vectors in d dimensions, from closed forms rather than a sample, so it costs microseconds for
 * any n × d (a sample of 46k × 768 would cost more than the analysis it annotates).
 *
 * - Df: the exact Wishart moments. With m = n − 1 degrees of freedom (the mean is estimated),
 *   m·S ~ W_d(I, m), E tr S = d and E tr S² = d(m + d + 1)/m, so
 *   Df_null = (E tr S)² / E tr S² = m·d / (m + d + 1)   (→ d/(1 + d/n) for large n).
 *   This is the ratio of expectations; it tracks E[Df] when m·d is large (clamped to Df >= 1).
 * - The sorted spectrum (and so k95 and the C(k) curve): the Marchenko–Pastur law. The p = min(d, m)
 *   non-zero eigenvalues follow MP with ratio r = p / max(d, m) ≤ 1 (scaled so the trace is d);
 *   the i-th largest is taken as the MP quantile at 1 − (i − ½)/p, the rest are 0.
 *   The test suite checks both against sampled Gaussian data. */
#include <math.h>
#include <stdlib.h>

#include "ea/spectral.h"

#define MP_CELLS 4096

/* MP density in the variable x = a + (b − a) sin²φ, φ ∈ [0, π/2], where it is smooth even at the
 * hard edge a = 0 (r = 1): f(x) dx = (b − a)² sin²φ cos²φ / (π r x) dφ. */
static double mp_integrand(double phi, double a, double b, double r) {
    double s = sin(phi), c = cos(phi);
    double x = a + (b - a) * s * s;
    return (b - a) * (b - a) * s * s * c * c / (M_PI * r * x);
}

ea_status ea_spectrum_null_spectrum(int n, int d, double *ev) {
    if (n < 2 || d < 1 || !ev)
        return ea_error(EA_ERR_ARG, "ea_spectrum_null_spectrum: need n >= 2 and d >= 1 (n = %d, d = %d)", n, d);
    int m = n - 1, p = d < m ? d : m, big = d < m ? m : d;
    double r = (double)p / big, sr = sqrt(r);
    double a = (1 - sr) * (1 - sr), b = (1 + sr) * (1 + sr);
    double *cdf = malloc((MP_CELLS + 1) * sizeof(double));
    if (!cdf) return ea_error(EA_ERR_NOMEM, "ea_spectrum_null_spectrum: out of memory");
    /* Cumulative distribution at cell edges (midpoint rule; midpoints avoid the 0/0 at φ = 0). */
    double h = (M_PI / 2) / MP_CELLS;
    cdf[0] = 0;
    for (int j = 0; j < MP_CELLS; j++) cdf[j + 1] = cdf[j] + h * mp_integrand((j + 0.5) * h, a, b, r);
    double total = cdf[MP_CELLS];
    int j = MP_CELLS - 1;
    for (int i = 0; i < p; i++) {
        double q = (1.0 - (i + 0.5) / p) * total; /* descending: the largest first */
        while (j > 0 && cdf[j] > q) j--;
        double t = (q - cdf[j]) / (cdf[j + 1] - cdf[j]);
        double phi = (j + t) * h, s = sin(phi);
        ev[i] = a + (b - a) * s * s;
    }
    for (int i = p; i < d; i++) ev[i] = 0;
    /* Midpoint quantiles of a skewed law miss the trace by ~0.1%: rescale so it is d exactly. */
    double tr = 0;
    for (int i = 0; i < p; i++) tr += ev[i];
    for (int i = 0; i < p; i++) ev[i] *= d / tr;
    free(cdf);
    return EA_OK;
}

double ea_spectrum_null_df(int n, int d) {
    if (n < 2 || d < 1) return 0;
    double m = n - 1.0;
    /* Good when m·d is large (within 1% of sampled means for m·d >= 2000 in the tests); for tiny
     * shapes the ratio of expectations undershoots (d = 1 gives m/(m+2), not 1), and Df >= 1 always. */
    double df = m * d / (m + d + 1);
    return df < 1 ? 1 : df;
}

ea_status ea_spectrum_null(int n, int d, uint64_t seed, double *df, int *k95) {
    (void)seed; /* closed forms: deterministic without a sample */
    if (n < 2 || d < 1) return ea_error(EA_ERR_ARG, "ea_spectrum_null: need n >= 2 and d >= 1 (n = %d, d = %d)", n, d);
    if (df) *df = ea_spectrum_null_df(n, d);
    if (k95) {
        double *ev = malloc((size_t)d * sizeof(double));
        if (!ev) return ea_error(EA_ERR_NOMEM, "ea_spectrum_null: out of memory");
        ea_status st = ea_spectrum_null_spectrum(n, d, ev);
        if (!st) *k95 = ea_spectrum_k_for(ev, d, 0.95);
        free(ev);
        if (st) return st;
    }
    return EA_OK;
}
