/* Small numeric helpers shared inside src/esap. */
#include <math.h>
#include <stdlib.h>

#include "esap/esap_internal.h"

void *ea_esap_alloc(size_t a, size_t b, size_t sz) {
    size_t n;
    if (ea_mul_size(a, b, &n) || ea_mul_size(n, sz, &n)) return NULL;
    return malloc(n ? n : 1);
}

void ea_esap_normalize_rows(float *x, int n, int k) {
    for (int i = 0; i < n; i++) {
        float *r = x + (size_t)i * k;
        double s = 0;
        for (int j = 0; j < k; j++) s += (double)r[j] * r[j];
        if (s > 0) {
            float inv = (float)(1.0 / sqrt(s));
            for (int j = 0; j < k; j++) r[j] *= inv;
        }
    }
}
