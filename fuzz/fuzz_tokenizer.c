/* libFuzzer target: GPT-2 tokenizer encode/decode on arbitrary bytes (invalid UTF-8, long runs,
 * "<|endoftext|>" fragments). The first byte selects parse_special; the rest is the text.
 * Oracle: byte-level BPE is lossless, so decode(encode(x)) == x byte for byte, and every id is a
 * token of the vocabulary. */
#include "fuzz_util.h"

static ea_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (ea_tokenizer_load_dir(EA_SOURCE_DIR "/models/gpt2-micro", &tok)) {
        fprintf(stderr, "%s\n", ea_last_error());
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int special = data[0] & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int *ids = NULL;
    size_t n = 0;
    ea_status st = ea_tokenizer_encode(tok, text, len, special, &ids, &n);
    FUZZ_CHECK(st == EA_OK, "encode refused %zu bytes: %s", len, ea_last_error());
    FUZZ_CHECK(n <= len, "%zu ids for %zu bytes", n, len);
    int vocab = ea_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "id %d", ids[i]);
    char *back = NULL;
    size_t blen = 0;
    st = ea_tokenizer_decode(tok, ids, n, &back, &blen);
    FUZZ_CHECK(st == EA_OK, "decode: %s", ea_last_error());
    FUZZ_CHECK(blen == len && memcmp(back, text, len) == 0, "round trip of %zu bytes gave %zu", len, blen);
    FUZZ_CHECK(back[blen] == 0, "decode result not terminated");
    free(back);
    free(ids);
    return 0;
}
