/* One site's summary: covariance (or correlation) → eigenvalues → Df, k90/95/99, top dimensions. */
#include <stdlib.h>
#include <string.h>

#include "spectral/cov_internal.h"

ea_status ea_spectrum_summarize(const ea_cov *c, int standardize, ea_spectrum_summary *out) {
    memset(out, 0, sizeof *out);
    int d = c->d;
    ea_cov_flush_pending(c);
    if (c->n < 2)
        return ea_error(EA_ERR_ARG, "ea_spectrum_summarize: %g samples are too few for a covariance", c->n);
    double *a = malloc((size_t)d * d * sizeof(double)), *ev = malloc((size_t)d * sizeof(double));
    if (!a || !ev) {
        free(a);
        free(ev);
        return ea_error(EA_ERR_NOMEM, "ea_spectrum_summarize: cannot allocate for d = %d", d);
    }
    ea_status st = ea_cov_matrix(c, standardize, a);
    double mtrace = 0;
    for (int i = 0; i < d; i++) mtrace += a[(size_t)i * d + i];
    if (!st) st = ea_eigh(a, d, ev, NULL);
    free(a);
    if (st) {
        free(ev);
        return st;
    }
    out->d = d;
    out->n = c->n;
    out->eigenvalues = ev;
    out->df = ea_spectrum_df(ev, d);
    out->trace = mtrace;
    out->k90 = ea_spectrum_k_for(ev, d, 0.90);
    out->k95 = ea_spectrum_k_for(ev, d, 0.95);
    out->k99 = ea_spectrum_k_for(ev, d, 0.99);
    /* Outlier dimensions come from the raw variances (M2's diagonal) in both modes: after
     * standardizing every dimension has variance 1, and the question is still which raw
     * dimensions dominate. Selection keeps the first index on ties, so the order is stable. */
    double trace = 0;
    for (int i = 0; i < d; i++) trace += c->m2[(size_t)i * d + i];
    int nt = d < 8 ? d : 8;
    for (int t = 0; t < nt; t++) {
        int best = -1;
        for (int i = 0; i < d; i++) {
            int taken = 0;
            for (int u = 0; u < t; u++) taken |= out->top_dims[u] == i;
            if (taken) continue;
            if (best < 0 || c->m2[(size_t)i * d + i] > c->m2[(size_t)best * d + best]) best = i;
        }
        out->top_dims[t] = best;
        out->top_share[t] = trace > 0 ? c->m2[(size_t)best * d + best] / trace : 0;
    }
    out->n_top = nt;
    return EA_OK;
}

void ea_spectrum_summary_free(ea_spectrum_summary *s) {
    if (!s) return;
    free(s->eigenvalues);
    s->eigenvalues = NULL;
}
