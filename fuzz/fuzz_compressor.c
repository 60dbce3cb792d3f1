/* libFuzzer target: the compressor file loader (ea_compressor_load: a safetensors file with
 * layer.{i}.{site}.{mean,basis,eigenvalues} and __metadata__). Oracle: what loads is usable:
 * every projector has 1 <= k <= d, an orthonormal basis, and compresses / reconstructs a vector
 * into finite numbers; every refusal names the file. */
#include <math.h>

#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[300];
    if (!path[0]) fuzz_path(path, sizeof path, "model.compressor");
    fuzz_write(path, data, size);

    ea_compressor *c = NULL;
    if (ea_compressor_load(path, &c) != EA_OK) {
        FUZZ_CHECK(strstr(ea_last_error(), "model.compressor") != NULL, "message does not name the file: %s",
                   ea_last_error());
        return 0;
    }
    const ea_compressor_info *info = ea_compressor_get_info(c);
    FUZZ_CHECK(info != NULL, "no info");
    for (int i = 0; i < ea_compressor_count(c); i++) {
        const ea_projector *p = ea_compressor_get(c, i);
        int d = ea_projector_dim(p), k = ea_projector_rank(p);
        FUZZ_CHECK(d >= 1 && k >= 1 && k <= d && d <= 65536, "projector %d: d %d k %d", i, d, k);
        double orth = ea_projector_orthonormality_error(p);
        FUZZ_CHECK(orth < 1e-2, "projector %d: accepted a basis with |E'E - I| = %g", i, orth);
        ea_site_ref ref = ea_projector_site(p);
        FUZZ_CHECK(ea_compressor_find(c, ref.site, ref.layer, ref.head) == p, "find disagrees with get");
        float *x = malloc(sizeof(float) * (size_t)d * 2), *z = malloc(sizeof(float) * (size_t)k);
        for (int j = 0; j < d; j++) x[j] = (float)((j % 7) - 3) * 0.25f;
        if (ea_projector_compress(p, x, 1, d, z) == EA_OK && ea_projector_reconstruct(p, z, 1, x + d, d) == EA_OK) {
            int finite = 1;
            for (int j = 0; j < d; j++) finite &= isfinite(x[d + j]) != 0;
            FUZZ_CHECK(finite, "projector %d reconstructs a non-finite value from a finite input", i);
        }
        free(x);
        free(z);
    }
    ea_kv_stats kv;
    memset(&kv, 0, sizeof kv);
    if (ea_compressor_kv_stats(c, &kv) == EA_OK) ea_kv_stats_free(&kv);
    ea_compressor_free(c);
    return 0;
}
