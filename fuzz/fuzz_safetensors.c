/* libFuzzer target: the safetensors reader (8-byte length, JSON header, tensor table, data).
 * Oracle beyond "no crash": whatever ea_st_open accepts must be consistent with the bytes the
 * fuzzer gave: each tensor's bytes equal the input at 8 + header + data_offsets (the input buffer
 * is exactly sized, so a range the reader wrongly accepted makes ASan report the overread here),
 * numel and nbytes agree with shape and dtype, and every error message names the file. */
#include <cjson/cJSON.h>
#include <math.h>

#include "fuzz_util.h"

static void check_tensor(const ea_st_file *f, const ea_st_tensor *t, const uint8_t *data, size_t size,
                         const cJSON *header, size_t data_start) {
    FUZZ_CHECK(t->ndim >= 0 && t->ndim <= EA_MAX_DIMS, "ndim %d", t->ndim);
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        FUZZ_CHECK(t->shape[d] >= 0, "%s: dim %d is %lld", t->name, d, (long long)t->shape[d]);
        FUZZ_CHECK(ea_mul_size(numel, (size_t)t->shape[d], &numel) == 0, "%s: shape overflows", t->name);
    }
    FUZZ_CHECK(numel == t->numel, "%s: numel %zu, shape says %zu", t->name, t->numel, numel);
    size_t nbytes;
    FUZZ_CHECK(ea_mul_size(numel, ea_dtype_size(t->dtype), &nbytes) == 0 && nbytes == t->nbytes,
               "%s: nbytes %zu", t->name, t->nbytes);
    FUZZ_CHECK(ea_st_find(f, t->name) == t, "%s: find returns another tensor", t->name);

    /* Where the header says the bytes are; the reader accepted it, so it must be in the file. */
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(header, t->name);
    FUZZ_CHECK(entry != NULL, "accepted tensor '%s' is not in the header", t->name);
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    FUZZ_CHECK(cJSON_GetArraySize(offs) == 2, "%s: data_offsets", t->name);
    double b = cJSON_GetArrayItem(offs, 0)->valuedouble, e = cJSON_GetArrayItem(offs, 1)->valuedouble;
    FUZZ_CHECK(b >= 0 && e >= b && e - b == (double)nbytes && data_start + e <= (double)size,
               "%s: accepted range [%.17g, %.17g) of %zu bytes, file has %zu", t->name, b, e, nbytes, size);
    if (nbytes) FUZZ_CHECK(memcmp(t->data, data + data_start + (size_t)b, nbytes) == 0, "%s: bytes differ", t->name);

    if (numel <= (1u << 16) && (t->dtype == EA_DTYPE_F32 || t->dtype == EA_DTYPE_F16 || t->dtype == EA_DTYPE_BF16)) {
        float *buf = malloc(numel ? numel * sizeof(float) : 1);
        FUZZ_CHECK(ea_st_to_f32(f, t, buf) == EA_OK, "%s: to_f32: %s", t->name, ea_last_error());
        free(buf);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[300];
    if (!path[0]) fuzz_path(path, sizeof path, "model.safetensors");
    fuzz_write(path, data, size);

    ea_st_file *f = NULL;
    ea_status st = ea_st_open(path, &f);
    if (st != EA_OK) {
        FUZZ_CHECK(strstr(ea_last_error(), "model.safetensors") != NULL, "message does not name the file: %s",
                   ea_last_error());
        return 0;
    }
    /* Accepted: the header is JSON of the declared length right after the length field. */
    FUZZ_CHECK(size >= 8, "accepted a %zu-byte file", size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | data[i];
    FUZZ_CHECK(hlen <= size - 8 && hlen <= EA_ST_MAX_HEADER, "accepted header length %llu of %zu bytes",
               (unsigned long long)hlen, size);
    cJSON *header = cJSON_ParseWithLength((const char *)data + 8, (size_t)hlen);
    FUZZ_CHECK(header != NULL, "accepted a header cJSON cannot parse");
    for (int i = 0; i < ea_st_count(f); i++) {
        const ea_st_tensor *t = ea_st_get(f, i);
        FUZZ_CHECK(t && t->name, "tensor %d", i);
        check_tensor(f, t, data, size, header, 8 + (size_t)hlen);
    }
    FUZZ_CHECK(ea_st_get(f, ea_st_count(f)) == NULL, "get past the end");
    FUZZ_CHECK(ea_st_find(f, "no such tensor \x01") == NULL, "find of a missing name");
    const char *fmt = ea_st_metadata(f, "format");
    if (fmt) (void)strlen(fmt);
    cJSON_Delete(header);
    ea_st_close(f);
    return 0;
}
