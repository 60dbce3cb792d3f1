/* Helpers shared inside src/esap (not public API). */
#ifndef EA_ESAP_INTERNAL_H
#define EA_ESAP_INTERNAL_H

#include "ea/esap.h"

/* Normalize n rows of k floats to unit length in place (zero rows stay zero). */
void ea_esap_normalize_rows(float *x, int n, int k);

/* malloc of a × b elements of size sz with overflow check; NULL on failure. */
void *ea_esap_alloc(size_t a, size_t b, size_t sz);

/* W (k × k) = Procrustes fit of pairs (za[src[r]], zb[dst[r]]), r < m (rows of k floats). */
ea_status ea_esap_fit_rotation(const float *za, const float *zb, int k, const int *src, const int *dst, int m, double *w);
/* The null's partners: the training rows shuffled by stream number `shuffle` derived from seed. */
void ea_esap_null_partners(const int *train, int n_train, uint64_t seed, int shuffle, int *partner);
/* The alignment null: mean held-out retrieval (and in-sample cosine) of W fitted on training pairs
 * shuffled EA_ESAP_NULL_SHUFFLES times. */
ea_status ea_esap_shuffled_null(const float *za, const float *zb, int k, const int *train, int n_train, const int *test,
                             int n_test, uint64_t seed, ea_esap_retrieval *null, double *null_train_cos);
/* Pairs (za[rows[r]] W, zb[rows[r]]): their mean cosine (pair_cos, optional) and retrieval among
 * themselves (res, optional). */
ea_status ea_esap_eval_rotation(const float *za, const float *zb, int k, const int *rows, int m, const double *w,
                             double *pair_cos, ea_esap_retrieval *res);
/* W from ea_esap_unanchored_fit on za[train] and zb[train] handed over in an independently
 * shuffled order (seeded). */
ea_status ea_esap_unanchored_train(const float *za, const float *zb, int k, const int *train, int n_train, uint64_t seed,
                                double *w, ea_esap_unanchored_info *info);

#endif
