/* tokenizer.json: the four real tokenizers of tests/fixtures/tokenizers (GPT-2, Llama 2,
 * Llama 3, Qwen3) against Hugging Face tokenizers' reference ids when the fixture run has
 * produced them; GPT-2's tokenizer.json against the Hugging Face fixture of the vocab.json path
 * and id for id against that path; hand-checked cases whose expected ids are looked up in the
 * vocabulary of the file itself (byte fallback, ignore_merges, NFC, added tokens, BOS);
 * round trips; hand-made tokenizers for the options the real files do not use. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <utf8proc.h>

#include "testutil.h"

#define TOK_DIR TEST_FIXTURE_DIR "/tokenizers"

static const char *names[] = {"gpt2", "llama2", "llama3", "qwen3"};
#define N_TOK 4
static ea_tokenizer *toks[N_TOK];
static cJSON *vocabs[N_TOK]; /* model.vocab of each file, for hand-checked expectations */

static cJSON *read_json(const char *path) {
    char *text;
    size_t len;
    if (ea_read_file(path, (size_t)1 << 28, &text, &len)) return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    return j;
}

static int group_setup(void **state) {
    (void)state;
    for (int i = 0; i < N_TOK; i++) {
        char dir[512], path[600];
        snprintf(dir, sizeof dir, "%s/%s", TOK_DIR, names[i]);
        double t0 = ea_time_now();
        if (ea_tokenizer_load_dir(dir, &toks[i])) {
            printf("cannot load %s: %s\n", dir, ea_last_error());
            return -1;
        }
        printf("%s: %d ids loaded in %.2f s\n", names[i], ea_tokenizer_vocab_size(toks[i]), ea_time_now() - t0);
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        cJSON *root = read_json(path);
        if (!root) return -1;
        vocabs[i] = cJSON_DetachItemFromObject(cJSON_GetObjectItem(root, "model"), "vocab");
        cJSON_Delete(root);
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    for (int i = 0; i < N_TOK; i++) {
        ea_tokenizer_free(toks[i]);
        cJSON_Delete(vocabs[i]);
    }
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------- */

static int *enc(const ea_tokenizer *t, const char *s, size_t len, int special, size_t *n) {
    int *ids = NULL;
    ea_status st = ea_tokenizer_encode(t, s, len, special, &ids, n);
    if (st) printf("encode failed: %s\n", ea_last_error());
    assert_int_equal(st, EA_OK);
    return ids;
}

static void print_ids(const char *label, const int *ids, size_t n) {
    printf("  %s:", label);
    for (size_t i = 0; i < n && i < 64; i++) printf(" %d", ids[i]);
    printf(n > 64 ? " ...\n" : "\n");
}

static int same_ids(const int *a, size_t na, const int *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

/* Id of a model.vocab token by its text in the file (-1 when absent). */
static int vid(int tok, const char *text) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(vocabs[tok], text);
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

/* Hex string to bytes (malloc'd); *n its length. */
static char *from_hex(const char *hex, size_t *n) {
    size_t len = strlen(hex) / 2;
    char *out = malloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (char)v;
    }
    out[len] = 0;
    *n = len;
    return out;
}

/* The text of a case: utf8_hex when given (texts may hold NUL), else text. */
static char *case_text(const cJSON *c, size_t *n) {
    const char *hex = cJSON_GetStringValue(cJSON_GetObjectItem(c, "utf8_hex"));
    if (hex) return from_hex(hex, n);
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(c, "text"));
    assert_non_null(s);
    *n = strlen(s);
    return strdup(s);
}

/* Expect the encoding of s to be exactly want (terminated by -2). */
static int expect(int tok, const char *s, int special, const int *want) {
    size_t nw = 0, n = 0;
    while (want[nw] != -2) nw++;
    for (size_t i = 0; i < nw; i++) assert_true(want[i] >= 0); /* the vocabulary lookups worked */
    int *got = enc(toks[tok], s, strlen(s), special, &n);
    int ok = same_ids(got, n, want, nw);
    if (!ok) {
        printf("MISMATCH %s: \"%s\" (special %d)\n", names[tok], s, special);
        print_ids("expected", want, nw);
        print_ids("got     ", got, n);
    }
    free(got);
    return ok;
}

/* ---- reference ids ------------------------------------------------------------------------- */

/* HF reference ids of the fixture run: tests/fixtures/tokenizers/NAME.cases.json, cases with
 * "ids" and their text (inline or by "id" in texts.json); "special" says whether special tokens
 * were parsed (default: yes, as tokenizers' encode does). ea_tokenizer_bos must agree with
 * ids_add_special (the post-processor) and with the first id transformers gives. Returns
 * failures, -1 when the file is absent. */
static int check_reference(int tok, int *total) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.cases.json", TOK_DIR, names[tok]);
    if (access(path, R_OK) != 0) return -1;
    cJSON *root = read_json(path), *texts = read_json(TOK_DIR "/texts.json"), *c;
    assert_non_null(root);
    assert_non_null(texts);
    int bad = 0;
    *total = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const cJSON *src = c, *want = cJSON_GetObjectItem(c, "ids");
        if (!cJSON_GetObjectItem(c, "utf8_hex") && !cJSON_GetObjectItem(c, "text")) {
            const char *id = cJSON_GetStringValue(cJSON_GetObjectItem(c, "id")), *x;
            cJSON *t;
            src = NULL;
            cJSON_ArrayForEach(t, cJSON_GetObjectItem(texts, "cases")) if ((x = cJSON_GetStringValue(cJSON_GetObjectItem(t, "id"))) &&
                                                                           id && !strcmp(x, id)) src = t;
            assert_non_null(src);
        }
        const cJSON *sp = cJSON_GetObjectItem(c, "special");
        int special = sp ? cJSON_IsTrue(sp) : 1;
        size_t len, n = 0, nw = (size_t)cJSON_GetArraySize(want);
        char *s = case_text(src, &len);
        int *w = malloc((nw + 1) * sizeof *w);
        for (size_t i = 0; i < nw; i++) w[i] = cJSON_GetArrayItem(want, (int)i)->valueint;
        int *got = enc(toks[tok], s, len, special, &n);
        (*total)++;
        /* BOS as reported: what the post-processor adds (ids_add_special) and what transformers
         * puts first after reading tokenizer_config.json (ids_transformers_auto). */
        int bos = -1, add = ea_tokenizer_bos(toks[tok], &bos);
        const cJSON *with = cJSON_GetObjectItem(c, "ids_add_special"), *autos = cJSON_GetObjectItem(c, "ids_transformers_auto");
        if (cJSON_IsArray(with)) {
            int ok = (size_t)cJSON_GetArraySize(with) == nw + (size_t)add &&
                     (!add || cJSON_GetArrayItem(with, 0)->valueint == bos);
            for (size_t i = 0; ok && i < nw; i++) ok = cJSON_GetArrayItem(with, (int)(i + (size_t)add))->valueint == w[i];
            if (!ok && bad++ < 10) printf("BOS %d (add %d) disagrees with ids_add_special of %s\n", bos, add, names[tok]);
        }
        if (cJSON_IsArray(autos) && cJSON_GetArraySize(autos) > 0 && nw > 0) {
            int first = cJSON_GetArrayItem(autos, 0)->valueint;
            if ((add ? first != bos : first != w[0] && first == bos) && bad++ < 10)
                printf("BOS %d (add %d) disagrees with transformers (first id %d) on %s\n", bos, add, first, names[tok]);
        }
        if (!same_ids(got, n, w, nw)) {
            if (bad++ < 10) {
                printf("MISMATCH %s case %s (special %d): \"%.80s\"\n", names[tok],
                       cJSON_GetStringValue(cJSON_GetObjectItem(c, "id")), special, s);
                print_ids("expected", w, nw);
                print_ids("got     ", got, n);
            }
        }
        free(got);
        free(w);
        free(s);
    }
    cJSON_Delete(root);
    cJSON_Delete(texts);
    return bad;
}

static void test_reference_ids(void **state) {
    (void)state;
    int missing = 0, bad_all = 0;
    for (int k = 0; k < N_TOK; k++) {
        int total = 0, bad = check_reference(k, &total);
        if (bad < 0) {
            printf("%s: no %s.cases.json (reference ids not produced yet)\n", names[k], names[k]);
            missing++;
            continue;
        }
        printf("%s: %d/%d cases match Hugging Face tokenizers\n", names[k], total - bad, total);
        assert_true(total >= 100);
        bad_all += bad;
    }
    assert_int_equal(bad_all, 0);
    if (missing == N_TOK) TEST_SKIP("no reference ids under %s (the fixture run has not produced them)", TOK_DIR);
}

/* GPT-2's tokenizer.json gives the ids of the Hugging Face fixture of the vocab.json path. */
static void test_gpt2_json_fixture(void **state) {
    (void)state;
    cJSON *root = read_json(TEST_FIXTURE_DIR "/tokenizer_cases.json"), *c;
    assert_non_null(root);
    int bad = 0, total = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(c, "text"));
        cJSON *want = cJSON_GetObjectItem(c, "ids");
        size_t nw = (size_t)cJSON_GetArraySize(want), n = 0;
        int *w = malloc((nw + 1) * sizeof *w);
        for (size_t i = 0; i < nw; i++) w[i] = cJSON_GetArrayItem(want, (int)i)->valueint;
        int *got = enc(toks[0], s, strlen(s), 0, &n);
        total++;
        if (!same_ids(got, n, w, nw)) {
            bad++;
            printf("MISMATCH: \"%s\"\n", s);
            print_ids("expected", w, nw);
            print_ids("got     ", got, n);
        }
        free(got);
        free(w);
    }
    printf("gpt2 tokenizer.json: %d/%d Hugging Face fixture cases match\n", total - bad, total);
    cJSON_Delete(root);
    assert_true(total >= 30);
    assert_int_equal(bad, 0);
}

/* Random bytes of several kinds (for comparisons and round trips). */
static size_t random_text(ea_rng *r, char *buf, size_t max) {
    static const char *words[] = {"the", " cat", "'s", " 42", "\n\n", "  ", "<|endoftext|>", "\xc3\xa9", "!?", "\t",
                                  "e\xcc\x81", "\xe6\x97\xa5\xe6\x9c\xac", "<s>", "\xe2\x96\x81", "<think>", "1234567"};
    size_t len = (size_t)ea_rng_below(r, max / 5), k = 0;
    int kind = (int)ea_rng_below(r, 3);
    while (k < len) {
        if (kind == 0) buf[k++] = (char)ea_rng_below(r, 256);
        else if (kind == 1) buf[k++] = ea_rng_below(r, 10) ? (char)(32 + ea_rng_below(r, 95)) : (char)(128 + ea_rng_below(r, 128));
        else {
            const char *w = words[ea_rng_below(r, 16)];
            memcpy(buf + k, w, strlen(w));
            k += strlen(w);
        }
    }
    return k;
}

/* tokenizer.json and vocab.json + merges.txt of GPT-2 give the same ids on every text. */
static void test_gpt2_json_equals_vocab_merges(void **state) {
    (void)state;
    ea_tokenizer *vm = NULL;
    assert_int_equal(ea_tokenizer_load(TEST_MODEL_DIR "/vocab.json", TEST_MODEL_DIR "/merges.txt", &vm), EA_OK);
    cJSON *texts = read_json(TOK_DIR "/texts.json"), *c;
    assert_non_null(texts);
    int bad = 0, total = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(texts, "cases")) {
        size_t len;
        char *s = case_text(c, &len);
        const char *raw = cJSON_GetStringValue(cJSON_GetObjectItem(c, "raw_hex"));
        for (int v = 0; v < (raw ? 2 : 1); v++) {
            if (v == 1) { /* the raw invalid bytes too */
                free(s);
                s = from_hex(raw, &len);
            }
            for (int special = 0; special < 2; special++, total++) {
                size_t na = 0, nb = 0;
                int *a = enc(toks[0], s, len, special, &na), *b = enc(vm, s, len, special, &nb);
                if (!same_ids(a, na, b, nb) && bad++ < 5) {
                    printf("DIFFER (special %d): \"%.60s\"\n", special, s);
                    print_ids("tokenizer.json", a, na);
                    print_ids("vocab+merges  ", b, nb);
                }
                free(a);
                free(b);
            }
        }
        free(s);
    }
    ea_rng r;
    ea_rng_seed(&r, 15);
    char buf[2048];
    for (int i = 0; i < 1000; i++, total++) {
        size_t len = random_text(&r, buf, sizeof buf), na = 0, nb = 0;
        int special = i & 1;
        int *a = enc(toks[0], buf, len, special, &na), *b = enc(vm, buf, len, special, &nb);
        if (!same_ids(a, na, b, nb) && bad++ < 5) printf("DIFFER on random text %d\n", i);
        free(a);
        free(b);
    }
    /* The shared long-context model ships both files: its directory loads tokenizer.json. */
    const char *dir = test_shared_path("models/llama-long");
    if (dir) {
        ea_tokenizer *t = NULL;
        assert_int_equal(ea_tokenizer_load_dir(dir, &t), EA_OK);
        size_t na = 0, nb = 0;
        const char *s = "Hello world, it's 2024!  <|endoftext|>\n";
        int *a = enc(t, s, strlen(s), 1, &na), *b = enc(vm, s, strlen(s), 1, &nb);
        assert_true(same_ids(a, na, b, nb));
        int bos = 7;
        assert_int_equal(ea_tokenizer_bos(t, &bos), 0); /* its tokenizer_config.json: add_bos_token false */
        assert_int_equal(bos, -1);
        free(a);
        free(b);
        ea_tokenizer_free(t);
    }
    printf("gpt2: tokenizer.json and vocab.json+merges.txt agree on %d/%d encodings\n", total - bad, total);
    ea_tokenizer_free(vm);
    cJSON_Delete(texts);
    assert_int_equal(bad, 0);
}

/* ---- hand-checked cases (expected ids looked up in each file's own vocabulary) -------------- */

static void test_llama2_sentencepiece(void **state) {
    (void)state;
    int ok = 1;
    /* Prepend("▁") + Replace(" ", "▁"), merges to whole words. */
    ok &= expect(1, "Hello world", 1, (int[]){vid(1, "\xe2\x96\x81Hello"), vid(1, "\xe2\x96\x81world"), -2});
    /* Two spaces: "▁▁world" has no merge of its own beyond the vocabulary's "▁▁"? Use the file. */
    /* Byte fallback: a character the vocabulary lacks becomes its UTF-8 bytes as <0xNN>. */
    const char *emoji = "\xf0\x9f\xa6\x99"; /* U+1F999 */
    assert_int_equal(vid(1, emoji), -1);
    ok &= expect(1, emoji, 1,
                 (int[]){vid(1, "\xe2\x96\x81"), vid(1, "<0xF0>"), vid(1, "<0x9F>"), vid(1, "<0xA6>"), vid(1, "<0x99>"), -2});
    /* Newline is byte-fallback too in SentencePiece vocabularies. */
    ok &= expect(1, "a\nb", 1, (int[]){vid(1, "\xe2\x96\x81" "a"), vid(1, "<0x0A>"), vid(1, "b"), -2});
    /* Special tokens: cut out with parse_special; the text after one gets its own "▁". */
    ok &= expect(1, "<s>x", 1, (int[]){1, vid(1, "\xe2\x96\x81x"), -2});
    ok &= expect(1, "</s>", 1, (int[]){2, -2});
    assert_true(ok);
    /* Without parse_special, "<s>" is text. */
    size_t n = 0;
    int *ids = enc(toks[1], "<s>", 3, 0, &n);
    assert_true(n > 1);
    for (size_t i = 0; i < n; i++) assert_int_not_equal(ids[i], 1);
    free(ids);
    /* BOS: tokenizer_config.json says add_bos_token true, bos_token <s>. */
    int bos = -7;
    assert_int_equal(ea_tokenizer_bos(toks[1], &bos), 1);
    assert_int_equal(bos, 1);
    /* Decoding drops the leading space of the prepended "▁" (the decoder's Strip). */
    char *text = NULL;
    size_t len = 0;
    ids = enc(toks[1], "Hello  world\n", 13, 0, &n);
    assert_int_equal(ea_tokenizer_decode(toks[1], ids, n, &text, &len), EA_OK);
    assert_string_equal(text, "Hello  world\n");
    free(text);
    free(ids);
}

static void test_llama3_byte_level(void **state) {
    (void)state;
    int ok = 1;
    ok &= expect(2, "Hello world", 0, (int[]){vid(2, "Hello"), vid(2, "\xc4\xa0world"), -2});
    /* Digits in runs of at most three (\p{N}{1,3}). */
    ok &= expect(2, "1234567", 0, (int[]){vid(2, "123"), vid(2, "456"), vid(2, "7"), -2});
    /* Specials: 128000.. with parse_special; plain text without. */
    ok &= expect(2, "<|begin_of_text|>hi", 1, (int[]){128000, vid(2, "hi"), -2});
    ok &= expect(2, "<|end_of_text|>", 1, (int[]){128001, -2});
    assert_true(ok);
    size_t n = 0;
    int *ids = enc(toks[2], "<|begin_of_text|>", 17, 0, &n);
    assert_true(n > 1);
    free(ids);
    /* ignore_merges: a piece that is a vocabulary token is that token, whatever the merges
     * would build. Every vocabulary token of ASCII letters (with or without a leading space: the
     * pattern keeps " ?letters" whole) must come back as itself. */
    int checked = 0, bad = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocabs[2]) {
        size_t nb = 0, k;
        const char *bytes = ea_tokenizer_token_bytes(toks[2], it->valueint, &nb);
        if (!bytes || nb < 2) continue;
        for (k = bytes[0] == ' '; k < nb; k++)
            if (!((bytes[k] >= 'a' && bytes[k] <= 'z') || (bytes[k] >= 'A' && bytes[k] <= 'Z'))) break;
        if (k < nb) continue;
        int *got = enc(toks[2], bytes, nb, 0, &n);
        checked++;
        if ((n != 1 || got[0] != it->valueint) && bad++ < 5) printf("token %d came back as %zu ids\n", it->valueint, n);
        free(got);
    }
    printf("llama3: %d whole-piece vocabulary tokens encode to themselves (%d not)\n", checked, bad);
    assert_true(checked > 5000);
    assert_int_equal(bad, 0);
    int bos = 5;
    assert_int_equal(ea_tokenizer_bos(toks[2], &bos), 0); /* this file's post-processor adds none */
}

static void test_qwen3_nfc_and_added(void **state) {
    (void)state;
    size_t n1 = 0, n2 = 0;
    /* NFC: a decomposed é encodes as the precomposed one. */
    int *a = enc(toks[3], "caf\xc3\xa9 e\xcc\x81t\xc3\xa9", 10, 0, &n1);
    int *b = enc(toks[3], "caf\xc3\xa9 \xc3\xa9t\xc3\xa9", 9, 0, &n2);
    assert_true(same_ids(a, n1, b, n2));
    free(a);
    free(b);
    /* Hangul jamo compose to a syllable under NFC. */
    a = enc(toks[3], "\xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab", 9, 0, &n1); /* U+1112 U+1161 U+11AB */
    b = enc(toks[3], "\xed\x95\x9c", 3, 0, &n2);                          /* U+D55C */
    assert_true(same_ids(a, n1, b, n2));
    free(a);
    free(b);
    int ok = 1;
    /* Digits one by one (\p{N}). */
    ok &= expect(3, "2024", 0, (int[]){vid(3, "2"), vid(3, "0"), vid(3, "2"), vid(3, "4"), -2});
    /* <think> is a non-special added token: cut out even without parse_special. */
    ok &= expect(3, "<think>ok", 0, (int[]){151667, vid(3, "ok"), -2});
    ok &= expect(3, "<|im_start|>user", 1, (int[]){151644, vid(3, "user"), -2});
    assert_true(ok);
    int bos = 3;
    assert_int_equal(ea_tokenizer_bos(toks[3], &bos), 0);
    assert_int_equal(bos, -1);
}

/* Llama 2 cuts its one piece before each "▁" that follows another character (no token spans
 * such a place). The same file with one unreachable token "x▁y" added cannot cut: both must
 * give the same ids on every text. */
static void test_sentencepiece_cut_is_exact(void **state) {
    (void)state;
    char *json = NULL;
    size_t len = 0;
    assert_int_equal(ea_read_file(TOK_DIR "/llama2/tokenizer.json", (size_t)1 << 28, &json, &len), EA_OK);
    const char *at = strstr(json, "\"vocab\": {");
    assert_non_null(at);
    static const char extra[] = "\"x\\u2581y\": 32000, ";
    size_t a = (size_t)(at - json) + strlen("\"vocab\": {");
    char *mod = malloc(len + sizeof extra);
    memcpy(mod, json, a);
    memcpy(mod + a, extra, sizeof extra - 1);
    memcpy(mod + a + sizeof extra - 1, json + a, len - a);
    char *dir = test_tmpdir(), path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    assert_int_equal(test_write_file(path, mod, len + sizeof extra - 1), 0);
    ea_tokenizer *whole = NULL;
    assert_int_equal(ea_tokenizer_load_json(path, NULL, &whole), EA_OK);
    test_rmdir(dir);
    free(dir);
    free(mod);
    free(json);
    cJSON *texts = read_json(TOK_DIR "/texts.json"), *c;
    int bad = 0, total = 0;
    ea_rng r;
    ea_rng_seed(&r, 2);
    char buf[2048];
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(texts, "cases")) {
        size_t n;
        char *s = case_text(c, &n);
        for (int rep = 0; rep < 2; rep++, total++) {
            const char *x = rep ? buf : s;
            size_t xn = rep ? random_text(&r, buf, sizeof buf) : n, na = 0, nb = 0;
            int *ia = enc(toks[1], x, xn, 1, &na), *ib = enc(whole, x, xn, 1, &nb);
            if (!same_ids(ia, na, ib, nb) && bad++ < 5) printf("cut and uncut differ on \"%.60s\"\n", x);
            free(ia);
            free(ib);
        }
        free(s);
    }
    printf("llama2: cut and uncut pieces agree on %d/%d texts\n", total - bad, total);
    cJSON_Delete(texts);
    ea_tokenizer_free(whole);
    assert_int_equal(bad, 0);
}

/* decode(encode(x)) == x for the byte-level tokenizers on every text (raw bytes included), and
 * for Llama 2 on texts without "▁" or literal special tokens (its normalizer is lossy there, as
 * in Hugging Face). */
static void test_roundtrips(void **state) {
    (void)state;
    cJSON *texts = read_json(TOK_DIR "/texts.json"), *c;
    int bad = 0, total = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(texts, "cases")) {
        size_t len;
        char *s = case_text(c, &len);
        const char *raw = cJSON_GetStringValue(cJSON_GetObjectItem(c, "raw_hex"));
        if (raw) {
            free(s);
            s = from_hex(raw, &len);
        }
        /* Qwen3 normalizes to NFC: only texts already in NFC come back unchanged. */
        utf8proc_uint8_t *nfc = NULL;
        utf8proc_ssize_t nn = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &nfc,
                                           UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        int is_nfc = nn == (utf8proc_ssize_t)len && !memcmp(nfc, s, len);
        free(nfc);
        for (int k = 0; k < N_TOK; k++) {
            if (k == 3 && !is_nfc) continue;
            if (k == 1 && (memmem(s, len, "\xe2\x96\x81", 3) || memmem(s, len, "<s>", 3) || memmem(s, len, "</s>", 4) ||
                           memmem(s, len, "<unk>", 5)))
                continue;
            size_t n = 0, bl = 0;
            int *ids = enc(toks[k], s, len, 1, &n);
            char *back = NULL;
            assert_int_equal(ea_tokenizer_decode(toks[k], ids, n, &back, &bl), EA_OK);
            total++;
            if ((bl != len || memcmp(back, s, len)) && bad++ < 5)
                printf("round trip differs: %s \"%.60s\" -> \"%.60s\"\n", names[k], s, back);
            free(back);
            free(ids);
        }
        free(s);
    }
    cJSON_Delete(texts);
    printf("round trips: %d/%d exact\n", total - bad, total);
    assert_int_equal(bad, 0);
}

/* ---- hand-made tokenizers: options the real files do not use --------------------------------- */

static ea_tokenizer *load_text(const char *json, const char *config) {
    char *dir = test_tmpdir(), path[600], cpath[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    assert_int_equal(test_write_file(path, json, strlen(json)), 0);
    if (config) assert_int_equal(test_write_file(cpath, config, strlen(config)), 0);
    ea_tokenizer *t = NULL;
    ea_status st = ea_tokenizer_load_dir(dir, &t);
    if (st) printf("load failed: %s\n", ea_last_error());
    assert_int_equal(st, EA_OK);
    test_rmdir(dir);
    free(dir);
    return t;
}

static void expect_t(ea_tokenizer *t, const char *s, int special, const int *want) {
    size_t nw = 0, n = 0;
    while (want[nw] != -2) nw++;
    int *got = enc(t, s, strlen(s), special, &n);
    if (!same_ids(got, n, want, nw)) {
        printf("MISMATCH: \"%s\"\n", s);
        print_ids("expected", want, nw);
        print_ids("got     ", got, n);
    }
    assert_true(same_ids(got, n, want, nw));
    free(got);
}

/* Vocabulary a=0 b=1 c=2 ab=3 ▁=4 ▁a=5 <unk>=6; merges a b, ▁ a. */
#define TINY_MODEL(extra)                                                                                             \
    "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", " extra                                             \
    " \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"\\u2581\": 4, \"\\u2581a\": 5, \"<unk>\": 6}, "         \
    "\"merges\": [\"a b\", [\"\\u2581\", \"a\"]]}"

static void test_handmade_options(void **state) {
    (void)state;
    /* unk, not fused: each unknown character is its own <unk>; fused: one per run. */
    ea_tokenizer *t = load_text("{\"normalizer\": null, \"pre_tokenizer\": null, " TINY_MODEL("\"fuse_unk\": false,") "}",
                                NULL);
    expect_t(t, "abxyc", 0, (int[]){3, 6, 6, 2, -2});
    ea_tokenizer_free(t);
    t = load_text("{\"normalizer\": null, \"pre_tokenizer\": null, " TINY_MODEL("\"fuse_unk\": true,") "}", NULL);
    expect_t(t, "abxyc", 0, (int[]){3, 6, 2, -2});
    ea_tokenizer_free(t);
    /* No unk token: unknown characters are dropped (as in HF); a text of only those gives no ids
     * (found by fuzz_tokenizer_json: the piece's empty result was cached from a NULL array). */
    t = load_text("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]}}",
                  NULL);
    expect_t(t, "xyz", 0, (int[]){-2});
    expect_t(t, "axb", 0, (int[]){2, -2}); /* x is dropped, so a and b meet and merge (as in HF) */
    expect_t(t, "xy ab xy", 0, (int[]){2, -2});
    ea_tokenizer_free(t);
    /* Metaspace (legacy add_prefix_space): spaces become ▁, split before each ▁. */
    t = load_text("{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"add_prefix_space\": true}, "
                  TINY_MODEL("") "}",
                  NULL);
    expect_t(t, "ab a", 0, (int[]){4, 3, 5, -2});
    ea_tokenizer_free(t);
    /* Metaspace prepend_scheme first: only the text at the very start gets ▁. Added token
     * [X] (lstrip, rstrip) eats the spaces around it. */
    t = load_text("{\"added_tokens\": [{\"id\": 7, \"content\": \"[X]\", \"single_word\": false, \"lstrip\": true, "
                  "\"rstrip\": true, \"normalized\": false, \"special\": true}], "
                  "\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": "
                  "\"first\", \"split\": false}, " TINY_MODEL("") "}",
                  NULL);
    expect_t(t, "a  [X]  a", 1, (int[]){5, 7, 0, -2});
    ea_tokenizer_free(t);
    /* single_word: [X] only as a word of its own. */
    t = load_text("{\"added_tokens\": [{\"id\": 7, \"content\": \"[X]\", \"single_word\": true, \"lstrip\": false, "
                  "\"rstrip\": false, \"normalized\": false, \"special\": false}], "
                  "\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": \"Removed\", "
                  "\"invert\": false}, " TINY_MODEL("") "}",
                  NULL);
    expect_t(t, "a [X] b", 0, (int[]){0, 7, 1, -2});
    expect_t(t, "a[X]", 0, (int[]){0, 6, 6, 6, -2}); /* "[" "X" "]" are unknown, unk not fused */
    ea_tokenizer_free(t);
    /* Split MergedWithPrevious / MergedWithNext / Contiguous on "a". */
    static const struct { const char *beh; int want[6]; } splits[] = {
        {"MergedWithPrevious", {0, 1, 0, 1, -2}},   /* "a" "ba" "b" ("ba" has no merge) */
        {"MergedWithNext", {3, 3, -2}},            /* "ab" "ab" */
        {"Contiguous", {0, 1, 0, 1, -2}},          /* "a" "b" "a" "b" */
        {"Isolated", {0, 1, 0, 1, -2}},
    };
    for (size_t i = 0; i < sizeof splits / sizeof *splits; i++) {
        char json[1024];
        snprintf(json, sizeof json,
                 "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"%s\", "
                 "\"invert\": false}, " TINY_MODEL("") "}",
                 splits[i].beh);
        t = load_text(json, NULL);
        printf("Split %s\n", splits[i].beh);
        expect_t(t, "abab", 0, splits[i].want);
        ea_tokenizer_free(t);
    }
    /* Digits (SmolLM's pre-tokenizer): each digit alone, or each run of digits, as Rust's
     * char::is_numeric sees them (the Arabic-Indic digit U+0661 too). */
    static const char digits_vocab[] =
        "\"model\": {\"type\": \"BPE\", \"vocab\": {\"1\": 0, \"2\": 1, \"12\": 2, \"x\": 3, \"x1\": 4, "
        "\"\\u0661\": 5, \"\\u06612\": 6}, \"merges\": [\"1 2\", \"x 1\", \"\\u0661 2\"]}}";
    char dj[1024];
    snprintf(dj, sizeof dj, "{\"pre_tokenizer\": {\"type\": \"Digits\", \"individual_digits\": true}, %s", digits_vocab);
    t = load_text(dj, NULL);
    expect_t(t, "x12\xd9\xa1" "2", 0, (int[]){3, 0, 1, 5, 1, -2});
    ea_tokenizer_free(t);
    snprintf(dj, sizeof dj, "{\"pre_tokenizer\": {\"type\": \"Digits\", \"individual_digits\": false}, %s", digits_vocab);
    t = load_text(dj, NULL);
    expect_t(t, "x12\xd9\xa1" "2", 0, (int[]){3, 2, 6, -2}); /* "x" | "12\u06612": "12", then "\u06612" */
    ea_tokenizer_free(t);
    /* BOS from a TemplateProcessing template, overridden by tokenizer_config.json. */
    const char *tmpl = "{\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": "
                       "\"<unk>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"special_tokens\": "
                       "{\"<unk>\": {\"id\": \"<unk>\", \"ids\": [6], \"tokens\": [\"<unk>\"]}}}, " TINY_MODEL("") "}";
    int bos = 0;
    t = load_text(tmpl, NULL);
    assert_int_equal(ea_tokenizer_bos(t, &bos), 1);
    assert_int_equal(bos, 6);
    ea_tokenizer_free(t);
    t = load_text(tmpl, "{\"add_bos_token\": false}");
    assert_int_equal(ea_tokenizer_bos(t, &bos), 0);
    ea_tokenizer_free(t);
    t = load_text("{" TINY_MODEL("") "}", "{\"add_bos_token\": true, \"bos_token\": {\"content\": \"ab\"}}");
    assert_int_equal(ea_tokenizer_bos(t, &bos), 1);
    assert_int_equal(bos, 3);
    ea_tokenizer_free(t);
}

/* The embedding check: a tokenizer larger than the model is refused with both sizes named. */
static void test_check_vocab(void **state) {
    (void)state;
    assert_int_equal(ea_tokenizer_check_vocab(toks[3], 151936, "qwen3"), EA_OK); /* Qwen3 pads its embedding */
    assert_int_equal(ea_tokenizer_check_vocab(toks[0], 50257, "gpt2"), EA_OK);
    ea_status st = ea_tokenizer_check_vocab(toks[3], 32000, "tiny/config.json");
    assert_int_equal(st, EA_ERR_MISMATCH);
    printf("refused: %s\n", ea_last_error());
    assert_non_null(strstr(ea_last_error(), "tiny/config.json"));
    assert_non_null(strstr(ea_last_error(), "151668"));
    assert_non_null(strstr(ea_last_error(), "32000"));
}

/* Threads share one tokenizer: every encoding equals the single-threaded one. */
typedef struct {
    const ea_tokenizer *t;
    const char *text;
    size_t len;
    int *ids;
    size_t n;
    ea_status st;
} job;

static void *encode_job(void *arg) {
    job *j = arg;
    j->st = ea_tokenizer_encode(j->t, j->text, j->len, 1, &j->ids, &j->n);
    return NULL;
}

static void test_threads_share(void **state) {
    (void)state;
    char *text;
    size_t len;
    assert_int_equal(ea_read_file(EA_SOURCE_DIR "/data/eval.txt", (size_t)1 << 26, &text, &len), EA_OK);
    enum { NT = 8 };
    pthread_t th[NT];
    job jobs[NT];
    size_t nref[N_TOK];
    int *ref[N_TOK];
    for (int k = 0; k < N_TOK; k++) ref[k] = enc(toks[k], text, len, 1, &nref[k]);
    for (int i = 0; i < NT; i++) {
        jobs[i] = (job){toks[i % N_TOK], text, len, NULL, 0, EA_OK};
        assert_int_equal(pthread_create(&th[i], NULL, encode_job, &jobs[i]), 0);
    }
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].st, EA_OK);
        assert_true(same_ids(jobs[i].ids, jobs[i].n, ref[i % N_TOK], nref[i % N_TOK]));
        free(jobs[i].ids);
    }
    printf("%d threads (2 per tokenizer) encoded eval.txt identically\n", NT);
    for (int k = 0; k < N_TOK; k++) free(ref[k]);
    free(text);
}

/* The CLI loads tokenizer.json from --model and reports BOS beside the ids. */
static void test_cli_tokenize_json(void **state) {
    (void)state;
    if (access(EA_CLI_PATH, X_OK) != 0) TEST_SKIP("%s not built", EA_CLI_PATH);
    char *out = NULL, *err = NULL;
    int rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--model", TOK_DIR "/llama2", "--text", "Hello world",
                                                        "--json", NULL});
    printf("tokenize llama2: rc %d, %s%s", rc, out, err);
    assert_int_equal(rc, 0);
    cJSON *j = cJSON_Parse(out);
    assert_non_null(j);
    cJSON *ids = cJSON_GetObjectItem(j, "ids");
    assert_int_equal(cJSON_GetArraySize(ids), 2);
    assert_int_equal(cJSON_GetArrayItem(ids, 0)->valueint, vid(1, "\xe2\x96\x81Hello"));
    assert_int_equal(cJSON_GetObjectItem(j, "bos")->valueint, 1);
    cJSON_Delete(j);
    free(out);
    free(err);
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--model", TOK_DIR "/qwen3", "--text", "hi", "--json", NULL});
    assert_int_equal(rc, 0);
    j = cJSON_Parse(out);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "bos")));
    cJSON_Delete(j);
    free(out);
    free(err);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpt2_json_fixture),
        cmocka_unit_test(test_gpt2_json_equals_vocab_merges),
        cmocka_unit_test(test_llama2_sentencepiece),
        cmocka_unit_test(test_llama3_byte_level),
        cmocka_unit_test(test_qwen3_nfc_and_added),
        cmocka_unit_test(test_sentencepiece_cut_is_exact),
        cmocka_unit_test(test_roundtrips),
        cmocka_unit_test(test_handmade_options),
        cmocka_unit_test(test_check_vocab),
        cmocka_unit_test(test_reference_ids),
        cmocka_unit_test(test_cli_tokenize_json),
        cmocka_unit_test(test_threads_share),
    };
    return TEST_RUN(tests, group_setup, group_teardown);
}
