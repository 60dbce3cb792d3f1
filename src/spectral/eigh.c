/* Symmetric eigen-decomposition with LAPACKE_dsyevd, returned in descending order. */
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ea/spectral.h"

ea_status ea_eigh(const double *a, int d, double *values, double *vectors) {
    if (d < 1 || !a || !values) return ea_error(EA_ERR_ARG, "ea_eigh: bad arguments (d = %d)", d);
    size_t dd;
    if (ea_mul_size((size_t)d, (size_t)d, &dd) || ea_mul_size(dd, sizeof(double), &dd))
        return ea_error(EA_ERR_NOMEM, "ea_eigh: dimension %d overflows", d);
    for (size_t i = 0; i < (size_t)d * d; i++)
        if (!isfinite(a[i]))
            return ea_error(EA_ERR_NUMERIC, "ea_eigh: matrix entry (%zu, %zu) is not finite", i / d, i % d);
    double *z = malloc(dd), *w = malloc((size_t)d * sizeof(double));
    if (!z || !w) {
        free(z);
        free(w);
        return ea_error(EA_ERR_NOMEM, "ea_eigh: cannot allocate for a %d x %d matrix", d, d);
    }
    memcpy(z, a, dd);
    /* Only the upper triangle of the row-major matrix is read. The one eigensolver of the library
     * (the KV codecs' bases too): row-major 'U' is the call the KV codecs always made, so their
     * fitted bases stay bit-identical; analyze's and the compressor's spectra moved from the
     * column-major 'L' call by rounding only (docs/NOTES.md, "One eigensolver"). On return column
     * j of z (row-major) is the eigenvector of w[j], ascending. */
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, vectors ? 'V' : 'N', 'U', d, z, d, w);
    if (info != 0) {
        free(z);
        free(w);
        if (info < 0) return ea_error(EA_ERR_ARG, "ea_eigh: dsyevd argument %d is invalid", (int)-info);
        return ea_error(EA_ERR_NUMERIC, "ea_eigh: dsyevd failed to converge (info %d) for a %d x %d matrix",
                        (int)info, d, d);
    }
    /* dsyevd's backward error is O(d·ε·‖A‖); negative eigenvalues within that of a positive
     * semi-definite matrix are rounding, not signal, and would break Df and C(k). */
    double scale = fmax(fabs(w[0]), fabs(w[d - 1]));
    double tol = 8.0 * d * DBL_EPSILON * scale;
    for (int k = 0; k < d; k++) {
        double v = w[d - 1 - k];
        values[k] = (v < 0 && v >= -tol) ? 0.0 : v;
    }
    if (vectors)
        for (int i = 0; i < d; i++)
            for (int k = 0; k < d; k++) vectors[(size_t)i * d + k] = z[(size_t)i * d + (d - 1 - k)];
    free(z);
    free(w);
    return EA_OK;
}
