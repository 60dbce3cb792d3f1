/* Nearest-neighbour and CSLS retrieval of paired rows, blockwise through sgemm so the n × n
 * similarity matrix is never held whole. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "esap/esap_internal.h"

/* Keep the t largest values seen in top[0..t) (ascending, so top[0] is the one to evict). */
static void top_insert(float *top, int t, float v) {
    if (!(v > top[0])) return;
    int i = 0;
    while (i + 1 < t && top[i + 1] < v) {
        top[i] = top[i + 1];
        i++;
    }
    top[i] = v;
}

static double top_mean(const float *top, int t) {
    double s = 0;
    for (int i = 0; i < t; i++) s += top[i];
    return s / t;
}

ea_status ea_esap_retrieve(const float *x, const float *y, int n, int k, int csls_k, ea_esap_retrieval *out) {
    memset(out, 0, sizeof *out);
    if (n < 1 || k < 1) return ea_error(EA_ERR_ARG, "retrieval: %d pairs of %d dims", n, k);
    int t = csls_k < 1 ? 1 : csls_k > n ? n : csls_k;
    /* Rows per block: bound the block of similarities to about 32 MB. */
    int rb = (int)((size_t)8 << 20) / n;
    if (rb < 1) rb = 1;
    if (rb > n) rb = n;
    float *xn = ea_esap_alloc((size_t)n, (size_t)k, sizeof *xn), *yn = ea_esap_alloc((size_t)n, (size_t)k, sizeof *yn);
    float *sim = ea_esap_alloc((size_t)rb, (size_t)n, sizeof *sim);
    float *col_top = ea_esap_alloc((size_t)n, (size_t)t, sizeof *col_top);
    double *r_s = malloc((size_t)n * sizeof *r_s);
    if (!xn || !yn || !sim || !col_top || !r_s) {
        free(xn); free(yn); free(sim); free(col_top); free(r_s);
        return ea_error(EA_ERR_NOMEM, "retrieval: cannot allocate for %d pairs", n);
    }
    memcpy(xn, x, (size_t)n * k * sizeof *xn);
    memcpy(yn, y, (size_t)n * k * sizeof *yn);
    ea_esap_normalize_rows(xn, n, k);
    ea_esap_normalize_rows(yn, n, k);
    for (size_t i = 0; i < (size_t)n * t; i++) col_top[i] = -2.0f; /* below any cosine */

    /* Pass 1: r_S (mean cosine of each target to its t nearest mapped sources) and the pair
     * cosines. r_T(x) is the same for every candidate of one source, so it never changes a
     * CSLS ranking and is not computed. */
    double cos_sum = 0;
    for (int i0 = 0; i0 < n; i0 += rb) {
        int nb = n - i0 < rb ? n - i0 : rb;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n, k, 1.0f, xn + (size_t)i0 * k, k, yn, k, 0.0f, sim, n);
        for (int r = 0; r < nb; r++) {
            const float *s = sim + (size_t)r * n;
            for (int j = 0; j < n; j++) top_insert(col_top + (size_t)j * t, t, s[j]);
            cos_sum += s[i0 + r];
        }
    }
    for (int j = 0; j < n; j++) r_s[j] = top_mean(col_top + (size_t)j * t, t);

    /* Pass 2: rank of the true partner by cosine and by CSLS (2cos − r_S). */
    long hit1 = 0, hit10 = 0, chit1 = 0, chit10 = 0;
    for (int i0 = 0; i0 < n; i0 += rb) {
        int nb = n - i0 < rb ? n - i0 : rb;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, n, k, 1.0f, xn + (size_t)i0 * k, k, yn, k, 0.0f, sim, n);
        for (int r = 0; r < nb; r++) {
            const float *s = sim + (size_t)r * n;
            int i = i0 + r;
            float own = s[i];
            double own_c = 2.0 * own - r_s[i];
            long above = 0, above_c = 0;
            for (int j = 0; j < n; j++) {
                if (j == i) continue;
                above += s[j] >= own;
                above_c += 2.0 * s[j] - r_s[j] >= own_c;
            }
            hit1 += above < 1;
            hit10 += above < 10;
            chit1 += above_c < 1;
            chit10 += above_c < 10;
        }
    }
    out->n = n;
    out->p_at_1 = (double)hit1 / n;
    out->p_at_10 = (double)hit10 / n;
    out->csls_p_at_1 = (double)chit1 / n;
    out->csls_p_at_10 = (double)chit10 / n;
    out->mean_cos = cos_sum / n;
    free(xn); free(yn); free(sim); free(col_top); free(r_s);
    return EA_OK;
}
