/* Orthogonal Procrustes (Schönemann 1966): argmin ‖A W − B‖_F over orthogonal W is U Vᵀ,
 * where AᵀB = U Σ Vᵀ. */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>

#include "esap/esap_internal.h"

ea_status ea_procrustes(const double *a, const double *b, int n, int da, int db, double *w) {
    if (n < 1 || da < 1 || db < 1)
        return ea_error(EA_ERR_ARG, "procrustes: n = %d, da = %d, db = %d (all must be positive)", n, da, db);
    int r = da < db ? da : db;
    double *m = ea_esap_alloc((size_t)da, (size_t)db, sizeof *m), *u = ea_esap_alloc((size_t)da, (size_t)r, sizeof *u);
    double *vt = ea_esap_alloc((size_t)r, (size_t)db, sizeof *vt), *s = ea_esap_alloc((size_t)r, 1, sizeof *s);
    if (!m || !u || !vt || !s) {
        free(m); free(u); free(vt); free(s);
        return ea_error(EA_ERR_NOMEM, "procrustes: cannot allocate %d x %d", da, db);
    }
    ea_status st = EA_OK;
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, da, db, n, 1.0, a, da, b, db, 0.0, m, db);
    for (size_t i = 0; i < (size_t)da * db; i++)
        if (!isfinite(m[i])) {
            st = ea_error(EA_ERR_NUMERIC, "procrustes: the anchors contain NaN or Inf");
            goto done;
        }
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', da, db, m, db, s, u, r, vt, db);
    if (info != 0) {
        st = ea_error(EA_ERR_NUMERIC, "procrustes: SVD failed (LAPACKE_dgesdd info %d)", (int)info);
        goto done;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, da, db, r, 1.0, u, r, vt, db, 0.0, w, db);
done:
    free(m); free(u); free(vt); free(s);
    return st;
}
