/* Seeded train/held-out split of anchors. */
#include "esap/esap_internal.h"

ea_status ea_esap_split(int n, int n_train, int n_test, uint64_t seed, int *perm) {
    if (n < 1 || n_train < 1 || n_test < 1 || n_train > n - n_test)
        return ea_error(EA_ERR_ARG, "split: %d training + %d held-out anchors do not fit in %d (each must be >= 1)",
                        n_train, n_test, n);
    for (int i = 0; i < n; i++) perm[i] = i;
    ea_rng rng;
    ea_rng_seed(&rng, seed);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)ea_rng_below(&rng, (uint64_t)i + 1);
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    return EA_OK;
}
