/* eigen-alignment spectral analysis: streaming covariance, eigen-spectra, effective rank. */
#ifndef EA_SPECTRAL_H
#define EA_SPECTRAL_H

#include "ea/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Streaming covariance accumulator in float64. Never holds the samples: each batch is centred
 * on its own mean, its scatter added with BLAS dsyrk, and batches merged with Chan et al.'s
 * pairwise update, so accumulators from threads or processes merge exactly. */
typedef struct ea_cov ea_cov;
EA_API ea_status ea_cov_init(ea_cov **out, int d);
EA_API void ea_cov_free(ea_cov *c);
EA_API void ea_cov_reset(ea_cov *c);
EA_API int ea_cov_dim(const ea_cov *c);
EA_API double ea_cov_count(const ea_cov *c);
/* Add n rows of d floats (row stride ld >= d). Rows with NaN/Inf are an EA_ERR_NUMERIC error and
 * the call then adds nothing. Rows are buffered into batches of 256, so adding a few rows at a
 * time costs the same as adding many. The accessors fold pending rows in, so one accumulator
 * must not be used from two threads at once (give each thread its own and merge). */
EA_API ea_status ea_cov_add(ea_cov *c, const float *x, int n, int ld);
EA_API ea_status ea_cov_add_f64(ea_cov *c, const double *x, int n, int ld);
EA_API ea_status ea_cov_merge(ea_cov *dst, const ea_cov *src);
EA_API const double *ea_cov_mean(const ea_cov *c);
/* Covariance (divided by n-1 when n > 1) into out (d × d, full symmetric). standardize: the
 * correlation matrix instead (zero-variance dimensions get 0 off-diagonal, 1 on the diagonal). */
EA_API ea_status ea_cov_matrix(const ea_cov *c, int standardize, double *out);
/* Serialize for merging across processes: raw float64 state (safetensors via ea_st_writer). */
EA_API ea_status ea_cov_save(const ea_cov *c, const char *path);
EA_API ea_status ea_cov_load(const char *path, ea_cov **out);

/* Eigen-decomposition of a symmetric d × d matrix with LAPACKE_dsyevd, sorted descending.
 * vectors (optional, d × d row-major): column j is the eigenvector of values[j]. Tiny negative
 * eigenvalues from rounding are clamped to 0. */
EA_API ea_status ea_eigh(const double *a, int d, double *values, double *vectors);

/* Statistics of a descending eigen-spectrum. */
EA_API double ea_spectrum_df(const double *ev, int d);             /* (Σλ)² / Σλ² */
EA_API double ea_spectrum_cumvar(const double *ev, int d, int k);  /* C(k) = Σ_{i<k} λ_i / Σλ */
EA_API int ea_spectrum_k_for(const double *ev, int d, double target); /* smallest k with C(k) >= target */

/* Summary of one site, as the analyze report prints it. */
typedef struct {
    int d;
    double n;
    double df;
    double trace;        /* trace of the decomposed matrix (Σ variances; d when standardized) */
    int k90, k95, k99;
    double *eigenvalues; /* d, descending */
    int top_dims[8];     /* dimensions with the largest raw variance, largest first (also when
                            standardized: there every correlation diagonal is 1) */
    double top_share[8]; /* their share of the covariance trace */
    int n_top;
} ea_spectrum_summary;
/* From an accumulator (at least 2 samples): covariance (or correlation), eigenvalues, statistics.
 * Release with ea_spectrum_summary_free. */
EA_API ea_status ea_spectrum_summarize(const ea_cov *c, int standardize, ea_spectrum_summary *out);
EA_API void ea_spectrum_summary_free(ea_spectrum_summary *s);

/* Null reference: Df and k95 of the sample covariance of n isotropic Gaussian vectors in d
 * dimensions (what "low rank" means for this n and d). Closed forms, no sample (see null.c):
 * Df from the exact Wishart moments, m·d/(m + d + 1) with m = n − 1; k95 from the
 * Marchenko–Pastur quantile spectrum. seed is accepted for API stability and unused (the result
 * is deterministic). n >= 2, d >= 1. */
EA_API ea_status ea_spectrum_null(int n, int d, uint64_t seed, double *df, int *k95);
EA_API double ea_spectrum_null_df(int n, int d);
/* The expected sorted null spectrum (d values, descending, trace d): MP quantiles for the
 * min(d, n − 1) non-zero eigenvalues, zeros after. For null C(k) curves. */
EA_API ea_status ea_spectrum_null_spectrum(int n, int d, double *ev);

#ifdef __cplusplus
}
#endif
#endif
