/* The accumulator's layout, shared by the spectral sources (cov.c, cov_io.c, summary.c). */
#ifndef EA_SPECTRAL_COV_INTERNAL_H
#define EA_SPECTRAL_COV_INTERNAL_H

#include "ea/spectral.h"

struct ea_cov {
    int d;
    double n;       /* rows folded into mean/m2 */
    double *mean;   /* d */
    double *m2;     /* d × d row-major; only the upper triangle (j >= i) is maintained */
    double *buf;    /* (cap + 1) × d: pending rows, then centred in place; +1 for Chan's row */
    double *bmean;  /* d: batch mean / scratch */
    int pending;    /* rows in buf not yet folded in */
    int cap;
};

/* Fold pending rows into (n, mean, m2). Logically const; not thread-safe on one accumulator. */
void ea_cov_flush_pending(const ea_cov *c);
/* Merge a raw state (nb rows with mean_b and upper-triangular m2_b) into dst. */
ea_status ea_cov_merge_raw(ea_cov *dst, double nb, const double *mean_b, const double *m2_b);

#endif
