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

#endif
