/* libFuzzer target: loading tokenizer.json (+ tokenizer_config.json). The input is split at its
 * first NUL byte: before it tokenizer.json, after it tokenizer_config.json (no NUL: no config
 * file). What is refused must name one of the two files; what loads must encode a fixed text
 * (valid and invalid UTF-8, special-token text) in both special modes with every id having
 * bytes, decode it, report a BOS inside the vocabulary, and fit an embedding of its own size. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char json[300], config[300];
    if (!json[0]) {
        fuzz_path(json, sizeof json, "tokenizer.json");
        fuzz_path(config, sizeof config, "tokenizer_config.json");
    }
    const uint8_t *nul = memchr(data, 0, size);
    size_t jlen = nul ? (size_t)(nul - data) : size;
    fuzz_write(json, data, jlen);
    if (nul) fuzz_write(config, nul + 1, size - jlen - 1);
    else remove(config);

    ea_tokenizer *t = NULL;
    if (ea_tokenizer_load_json(json, config, &t) != EA_OK) {
        const char *msg = ea_last_error();
        FUZZ_CHECK(t == NULL, "a refused load returned a tokenizer");
        FUZZ_CHECK(strstr(msg, "tokenizer.json") || strstr(msg, "tokenizer_config.json"), "message names no file: %s",
                   msg);
        return 0;
    }
    static const char text[] = "Hello world, it's 2024! \xff\xfe caf\xc3\xa9 e\xcc\x81 <s> <|endoftext|>  \n\tx "
                               "\xe2\x96\x81" "ab xy 12345 \xf0\x9f\xa6\x99";
    int n_vocab = ea_tokenizer_vocab_size(t);
    for (int special = 0; special < 2; special++) {
        int *ids = NULL;
        size_t n = 0;
        if (ea_tokenizer_encode(t, text, sizeof text - 1, special, &ids, &n) == EA_OK) {
            for (size_t i = 0; i < n; i++) {
                size_t bl = 0;
                FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab, "id %d outside [0, %d)", ids[i], n_vocab);
                FUZZ_CHECK(ea_tokenizer_token_bytes(t, ids[i], &bl) != NULL, "id %d has no bytes", ids[i]);
            }
            char *back = NULL;
            size_t blen = 0;
            FUZZ_CHECK(ea_tokenizer_decode(t, ids, n, &back, &blen) == EA_OK, "encoded ids do not decode: %s",
                       ea_last_error());
            free(back);
        }
        free(ids);
    }
    int bos = -2;
    if (ea_tokenizer_bos(t, &bos)) FUZZ_CHECK(bos >= 0 && bos < n_vocab, "BOS id %d outside the vocabulary", bos);
    else FUZZ_CHECK(bos == -1, "no BOS but id %d", bos);
    FUZZ_CHECK(ea_tokenizer_check_vocab(t, n_vocab, "fuzz") == EA_OK, "does not fit its own size");
    FUZZ_CHECK(ea_tokenizer_check_vocab(t, n_vocab - 1, "fuzz") != EA_OK, "fits a smaller embedding");
    ea_tokenizer_free(t);
    return 0;
}
