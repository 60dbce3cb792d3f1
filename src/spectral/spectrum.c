/* Statistics of a descending eigen-spectrum: effective rank Df, cumulative variance C(k), k for a
 * variance target. */
#include <math.h>

#include "ea/spectral.h"

double ea_spectrum_df(const double *ev, int d) {
    if (d < 1) return 0;
    /* Scale by the largest |λ| so Σλ² never overflows or underflows. */
    double m = 0;
    for (int i = 0; i < d; i++) m = fmax(m, fabs(ev[i]));
    if (m == 0) return 0; /* no variance at all: no effective dimension */
    double s = 0, s2 = 0;
    for (int i = 0; i < d; i++) {
        double v = ev[i] / m;
        s += v;
        s2 += v * v;
    }
    return s * s / s2;
}

/* Prefix and total use the same summation order, so C(d) is exactly 1 and a target of 1.0 is
 * reached at k = d at the latest. */
double ea_spectrum_cumvar(const double *ev, int d, int k) {
    if (k < 0) k = 0;
    if (k > d) k = d;
    double total = 0, part = 0;
    for (int i = 0; i < d; i++) {
        total += ev[i];
        if (i == k - 1) part = total;
    }
    if (!(total > 0)) return k >= d ? 1.0 : 0.0; /* no variance: nothing is explained before all */
    return part / total;
}

int ea_spectrum_k_for(const double *ev, int d, double target) {
    if (d < 1 || target <= 0) return 0;
    double total = 0;
    for (int i = 0; i < d; i++) total += ev[i];
    if (!(total > 0)) return d;
    double part = 0;
    for (int k = 1; k <= d; k++) {
        part += ev[k - 1];
        if (part / total >= target) return k;
    }
    return d; /* target above 1: never reached, report every dimension */
}
