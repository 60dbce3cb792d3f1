/* libFuzzer target: loading vocab.json + merges.txt. The input is split at its first NUL byte:
 * before it vocab.json, after it merges.txt (no NUL: all of it is vocab.json, merges empty).
 * Whatever loads must then encode and decode a fixed text without crashing, and every id it
 * gives must have bytes. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char vocab[300], merges[300];
    if (!vocab[0]) {
        fuzz_path(vocab, sizeof vocab, "vocab.json");
        fuzz_path(merges, sizeof merges, "merges.txt");
    }
    const uint8_t *nul = memchr(data, 0, size);
    size_t vlen = nul ? (size_t)(nul - data) : size;
    fuzz_write(vocab, data, vlen);
    fuzz_write(merges, nul ? nul + 1 : data, nul ? size - vlen - 1 : 0);

    ea_tokenizer *t = NULL;
    if (ea_tokenizer_load(vocab, merges, &t) != EA_OK) {
        const char *msg = ea_last_error();
        FUZZ_CHECK(strstr(msg, "vocab.json") || strstr(msg, "merges.txt"), "message names no file: %s", msg);
        return 0;
    }
    static const char text[] = "Hello world, it's 2024! \xff\xfe caf\xc3\xa9 <|endoftext|>  \n\tx";
    for (int special = 0; special < 2; special++) {
        int *ids = NULL;
        size_t n = 0;
        if (ea_tokenizer_encode(t, text, sizeof text - 1, special, &ids, &n) == EA_OK) {
            for (size_t i = 0; i < n; i++) {
                size_t bl = 0;
                FUZZ_CHECK(ea_tokenizer_token_bytes(t, ids[i], &bl) != NULL, "id %d has no bytes", ids[i]);
            }
            char *back = NULL;
            size_t blen = 0;
            if (ea_tokenizer_decode(t, ids, n, &back, &blen) == EA_OK) free(back);
        }
        free(ids);
    }
    size_t dummy = 0;
    FUZZ_CHECK(ea_tokenizer_token_bytes(t, -1, &dummy) == NULL, "bytes for id -1");
    FUZZ_CHECK(ea_tokenizer_token_bytes(t, ea_tokenizer_vocab_size(t), &dummy) == NULL, "bytes past the vocabulary");
    ea_tokenizer_free(t);
    return 0;
}
