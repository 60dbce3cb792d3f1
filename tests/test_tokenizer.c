/* GPT-2 tokenizer: reference ids from Hugging Face tokenizers (fixture), the byte alphabet
 * against its definition in OpenAI's encoder.py, round trips on random bytes, special-token
 * parsing, invalid UTF-8, merge order on hand-made vocabularies, hostile files and the CLI. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static ea_tokenizer *tok; /* the bundled gpt2-micro tokenizer, loaded once */

static int group_setup(void **state) {
    (void)state;
    double t0 = ea_time_now();
    if (ea_tokenizer_load_dir(TEST_MODEL_DIR, &tok)) {
        printf("cannot load the tokenizer: %s\n", ea_last_error());
        return -1;
    }
    printf("loaded %d tokens in %.3f s\n", ea_tokenizer_vocab_size(tok), ea_time_now() - t0);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    ea_tokenizer_free(tok);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------- */

static cJSON *read_json(const char *path) {
    char *text;
    size_t len;
    if (ea_read_file(path, (size_t)1 << 26, &text, &len)) return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    return j;
}

/* Encode; fails the test on error. */
static int *enc(const ea_tokenizer *t, const char *s, size_t len, int special, size_t *n) {
    int *ids = NULL;
    ea_status st = ea_tokenizer_encode(t, s, len, special, &ids, n);
    if (st) printf("encode failed: %s\n", ea_last_error());
    assert_int_equal(st, EA_OK);
    return ids;
}

static int ids_equal(const int *a, size_t na, const int *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static void print_ids(const char *label, const int *ids, size_t n) {
    printf("  %s:", label);
    for (size_t i = 0; i < n; i++) printf(" %d", ids[i]);
    printf("\n");
}

/* Print bytes with C escapes so failures show invisible characters. */
static void print_escaped(const char *label, const char *s, size_t n) {
    printf("  %s: \"", label);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') putchar(c);
        else printf("\\x%02x", c);
    }
    printf("\"\n");
}

/* decode(encode(x)) must give x back byte for byte. */
static int roundtrip_ok(const ea_tokenizer *t, const char *s, size_t len, int special) {
    size_t n = 0, back_len = 0;
    int *ids = enc(t, s, len, special, &n);
    char *back = NULL;
    ea_status st = ea_tokenizer_decode(t, ids, n, &back, &back_len);
    int ok = st == EA_OK && back_len == len && memcmp(back, s, len) == 0 && back[back_len] == 0;
    if (!ok) {
        print_escaped("text", s, len);
        if (back) print_escaped("decoded", back, back_len);
        else printf("  decode failed: %s\n", ea_last_error());
    }
    free(ids);
    free(back);
    return ok;
}

/* GPT-2's bytes_to_unicode, written out from its definition in encoder.py: printable Latin-1
 * bytes map to themselves, the rest to 256, 257, ... in byte order. */
static void gpt2_bytes_to_unicode(unsigned cp[256]) {
    int printable[256] = {0};
    for (int b = '!'; b <= '~'; b++) printable[b] = 1;
    for (int b = 0xA1; b <= 0xAC; b++) printable[b] = 1;
    for (int b = 0xAE; b <= 0xFF; b++) printable[b] = 1;
    unsigned next = 256;
    for (int b = 0; b < 256; b++) cp[b] = printable[b] ? (unsigned)b : next++;
}

static size_t utf8_put(unsigned cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 63)); out[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 63));
    out[2] = (char)(0x80 | ((cp >> 6) & 63)); out[3] = (char)(0x80 | (cp & 63));
    return 4;
}

/* Token text in GPT-2's alphabet for raw bytes (NUL-terminated, malloc'd). */
static char *alphabet_text(const char *bytes, size_t n) {
    unsigned cp[256];
    gpt2_bytes_to_unicode(cp);
    char *out = malloc(4 * n + 1); /* alphabet characters take 2 bytes; 4 keeps -O3 bounds checks quiet */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += utf8_put(cp[(unsigned char)bytes[i]], out + k);
    out[k] = 0;
    return out;
}

/* ---- reference ids ------------------------------------------------------------------------- */

/* Every fixture case; returns the number of failures (each printed). */
static int check_fixture_cases(const ea_tokenizer *t, const char *fixture, int *total) {
    cJSON *root = read_json(fixture);
    assert_non_null(root);
    cJSON *cases = cJSON_GetObjectItem(root, "cases"), *c;
    assert_true(cJSON_IsArray(cases));
    int bad = 0;
    *total = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(c, "text"));
        cJSON *want = cJSON_GetObjectItem(c, "ids");
        assert_non_null(text);
        assert_true(cJSON_IsArray(want));
        size_t nw = (size_t)cJSON_GetArraySize(want), n = 0;
        int *w = malloc((nw + 1) * sizeof *w);
        for (size_t i = 0; i < nw; i++) w[i] = cJSON_GetArrayItem(want, (int)i)->valueint;
        int *got = enc(t, text, strlen(text), 0, &n);
        (*total)++;
        if (!ids_equal(got, n, w, nw)) {
            bad++;
            printf("MISMATCH case %d\n", *total - 1);
            print_escaped("text", text, strlen(text));
            print_ids("expected", w, nw);
            print_ids("got     ", got, n);
        }
        free(got);
        free(w);
    }
    cJSON_Delete(root);
    return bad;
}

static void test_fixture_cases(void **state) {
    (void)state;
    int total = 0, bad = check_fixture_cases(tok, TEST_FIXTURE_DIR "/tokenizer_cases.json", &total);
    printf("fixture cases: %d/%d match Hugging Face tokenizers\n", total - bad, total);
    assert_true(total >= 30);
    assert_int_equal(bad, 0);
}

/* The larger shared model ships its own vocab/merges: they must give the same reference ids. */
static void test_fixture_cases_shared_model(void **state) {
    (void)state;
    const char *dir = test_shared_path("models/gpt2-mini");
    if (!dir) TEST_SKIP("../shared/models/gpt2-mini not present (fresh clone)");
    ea_tokenizer *t = NULL;
    assert_int_equal(ea_tokenizer_load_dir(dir, &t), EA_OK);
    int total = 0, bad = check_fixture_cases(t, TEST_FIXTURE_DIR "/tokenizer_cases.json", &total);
    printf("gpt2-mini tokenizer: %d/%d fixture cases match\n", total - bad, total);
    ea_tokenizer_free(t);
    assert_int_equal(bad, 0);
}

/* Every token's bytes equal its vocab.json text read through the byte alphabet, and each single
 * byte encodes to the token whose text is that byte's alphabet character. */
static void test_byte_alphabet_and_vocab(void **state) {
    (void)state;
    cJSON *vocab = read_json(TEST_MODEL_DIR "/vocab.json"), *item;
    assert_non_null(vocab);
    int n_vocab = ea_tokenizer_vocab_size(tok);
    assert_int_equal(n_vocab, cJSON_GetArraySize(vocab));
    unsigned cp[256];
    gpt2_bytes_to_unicode(cp);
    int bad = 0;
    cJSON_ArrayForEach(item, vocab) {
        int id = item->valueint;
        size_t len = 0;
        const char *bytes = ea_tokenizer_token_bytes(tok, id, &len);
        assert_non_null(bytes);
        char *text = alphabet_text(bytes, len);
        if (strcmp(text, item->string) != 0 && bad++ < 5) printf("token %d: vocab \"%s\", spelled \"%s\"\n", id, item->string, text);
        free(text);
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b, want[5] = {0};
        utf8_put(cp[b], want);
        size_t n = 0;
        int *ids = enc(tok, &c, 1, 0, &n);
        assert_int_equal(n, 1);
        cJSON *entry = cJSON_GetObjectItemCaseSensitive(vocab, want);
        if (!entry || entry->valueint != ids[0]) {
            printf("byte 0x%02x: encoded as %d, vocab \"%s\" is %d\n", b, ids[0], want, entry ? entry->valueint : -1);
            bad++;
        }
        free(ids);
    }
    printf("vocabulary: %d tokens checked against vocab.json, %d mismatches\n", n_vocab, bad);
    assert_int_equal(bad, 0);
    assert_null(ea_tokenizer_token_bytes(tok, -1, NULL));
    assert_null(ea_tokenizer_token_bytes(tok, n_vocab, NULL));
    size_t len = 99;
    assert_null(ea_tokenizer_token_bytes(tok, n_vocab, &len));
    assert_int_equal(len, 0);
    cJSON_Delete(vocab);
}

/* ---- round trips --------------------------------------------------------------------------- */

static void test_roundtrip_fixture_texts(void **state) {
    (void)state;
    cJSON *root = read_json(TEST_FIXTURE_DIR "/tokenizer_cases.json"), *c;
    assert_non_null(root);
    int bad = 0, total = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(c, "text"));
        for (int special = 0; special < 2; special++, total++) bad += !roundtrip_ok(tok, text, strlen(text), special);
    }
    char *eval;
    size_t eval_len;
    assert_int_equal(ea_read_file(EA_SOURCE_DIR "/data/eval.txt", (size_t)1 << 26, &eval, &eval_len), EA_OK);
    bad += !roundtrip_ok(tok, eval, eval_len, 0);
    total++;
    free(eval);
    printf("round trips: %d/%d exact\n", total - bad, total);
    cJSON_Delete(root);
    assert_int_equal(bad, 0);
}

/* Random texts of several kinds: uniform bytes (mostly invalid UTF-8), ASCII with stray high
 * bytes, random code points (including surrogates and overlong forms written by hand). */
static size_t random_text(ea_rng *r, char *buf, size_t max) {
    size_t len = (size_t)ea_rng_below(r, max / 5);
    int kind = (int)ea_rng_below(r, 4);
    static const char *words[] = {"the", " cat", "'s", " 42", "\n\n", "  ", "<|endoftext|>", "\xc3\xa9", "!?", "\t"};
    size_t k = 0;
    while (k < len) {
        switch (kind) {
        case 0: buf[k++] = (char)ea_rng_below(r, 256); break;
        case 1: buf[k++] = ea_rng_below(r, 10) ? (char)(32 + ea_rng_below(r, 95)) : (char)(128 + ea_rng_below(r, 128)); break;
        case 2: {
            unsigned cp = (unsigned)ea_rng_below(r, 0x110000); /* surrogates give invalid 3-byte forms */
            if (ea_rng_below(r, 3) == 0) cp = (unsigned)ea_rng_below(r, 0x800);
            k += utf8_put(cp, buf + k);
            if (ea_rng_below(r, 20) == 0) { buf[k++] = '\xc0'; buf[k++] = '\xaf'; } /* overlong '/' */
            break;
        }
        default: {
            const char *w = words[ea_rng_below(r, 10)];
            memcpy(buf + k, w, strlen(w));
            k += strlen(w);
        }
        }
    }
    return k;
}

static void test_roundtrip_random_bytes(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 20240601);
    char buf[2048];
    int bad = 0, total = 0;
    size_t bytes = 0, tokens = 0;
    for (int i = 0; i < 3000; i++) {
        size_t len = random_text(&r, buf, sizeof buf);
        int special = (int)ea_rng_below(&r, 2);
        bad += !roundtrip_ok(tok, buf, len, special);
        size_t n = 0;
        int *ids = enc(tok, buf, len, special, &n);
        for (size_t j = 0; j < n; j++)
            if (ids[j] < 0 || ids[j] >= ea_tokenizer_vocab_size(tok)) bad++;
        bytes += len;
        tokens += n;
        total++;
        free(ids);
    }
    printf("random texts: %d/%d round trips exact (%zu bytes, %zu tokens)\n", total - bad, total, bytes, tokens);
    assert_int_equal(bad, 0);
}

static void test_empty_text(void **state) {
    (void)state;
    int *ids = (int *)1;
    size_t n = 99;
    assert_int_equal(ea_tokenizer_encode(tok, "", 0, 0, &ids, &n), EA_OK);
    assert_int_equal(n, 0);
    free(ids);
    assert_int_equal(ea_tokenizer_encode(tok, NULL, 0, 1, &ids, &n), EA_OK);
    assert_int_equal(n, 0);
    free(ids);
    char *text = NULL;
    size_t len = 99;
    assert_int_equal(ea_tokenizer_decode(tok, NULL, 0, &text, &len), EA_OK);
    assert_non_null(text);
    assert_int_equal(len, 0);
    assert_int_equal(text[0], 0);
    free(text);
}

/* ---- special tokens ------------------------------------------------------------------------ */

static void test_parse_special(void **state) {
    (void)state;
    const char eot[] = "<|endoftext|>";
    size_t n = 0, na = 0, nb = 0;
    int *ids = enc(tok, eot, strlen(eot), 1, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], EA_TOKEN_EOT);
    free(ids);
    /* Off by default: plain text, several ids, none of them EOT. */
    ids = enc(tok, eot, strlen(eot), 0, &n);
    assert_true(n > 1);
    for (size_t i = 0; i < n; i++) assert_int_not_equal(ids[i], EA_TOKEN_EOT);
    free(ids);
    /* The text around it is tokenized on its own: "Hello" EOT " world". */
    const char *s = "Hello<|endoftext|> world";
    ids = enc(tok, s, strlen(s), 1, &n);
    int *a = enc(tok, "Hello", 5, 0, &na), *b = enc(tok, " world", 6, 0, &nb);
    assert_int_equal(n, na + 1 + nb);
    assert_memory_equal(ids, a, na * sizeof *a);
    assert_int_equal(ids[na], EA_TOKEN_EOT);
    assert_memory_equal(ids + na + 1, b, nb * sizeof *b);
    free(ids);
    free(a);
    free(b);
    /* Adjacent and repeated; a cut-short literal stays text. */
    s = "<|endoftext|><|endoftext|>x<|endoftext|";
    ids = enc(tok, s, strlen(s), 1, &n);
    assert_true(n >= 3);
    assert_int_equal(ids[0], EA_TOKEN_EOT);
    assert_int_equal(ids[1], EA_TOKEN_EOT);
    for (size_t i = 2; i < n; i++) assert_int_not_equal(ids[i], EA_TOKEN_EOT);
    free(ids);
    char *text = NULL;
    size_t len = 0;
    int eot_id = EA_TOKEN_EOT;
    assert_int_equal(ea_tokenizer_decode(tok, &eot_id, 1, &text, &len), EA_OK);
    assert_string_equal(text, eot);
    free(text);
}

/* ---- invalid UTF-8: each invalid byte is its own pre-token ---------------------------------- */

static int byte_token(unsigned char c) {
    size_t n = 0;
    int *ids = enc(tok, (const char *)&c, 1, 0, &n);
    assert_int_equal(n, 1);
    int id = ids[0];
    free(ids);
    return id;
}

/* encode(left + bad + right) == encode(left) ++ byte tokens of bad ++ encode(right). */
static int split_at_invalid_ok(const char *left, const char *bad, size_t nbad, const char *right) {
    char buf[512];
    size_t nl = strlen(left), nr = strlen(right), n = 0, n1 = 0, n2 = 0;
    memcpy(buf, left, nl);
    memcpy(buf + nl, bad, nbad);
    memcpy(buf + nl + nbad, right, nr);
    int *all = enc(tok, buf, nl + nbad + nr, 0, &n), *l = enc(tok, left, nl, 0, &n1), *r = enc(tok, right, nr, 0, &n2);
    int *want = malloc((n1 + nbad + n2 + 1) * sizeof *want);
    if (n1) memcpy(want, l, n1 * sizeof *l);
    for (size_t i = 0; i < nbad; i++) want[n1 + i] = byte_token((unsigned char)bad[i]);
    if (n2) memcpy(want + n1 + nbad, r, n2 * sizeof *r);
    int ok = ids_equal(all, n, want, n1 + nbad + n2);
    if (!ok) {
        print_escaped("text", buf, nl + nbad + nr);
        print_ids("expected", want, n1 + nbad + n2);
        print_ids("got     ", all, n);
    }
    free(all);
    free(l);
    free(r);
    free(want);
    return ok;
}

static void test_invalid_utf8(void **state) {
    (void)state;
    static const struct { const char *bytes; size_t n; const char *what; } bad[] = {
        {"\xff", 1, "0xff"},
        {"\x80", 1, "lone continuation"},
        {"\xe2\x82", 2, "cut-short euro sign"},
        {"\xc0\xaf", 2, "overlong slash"},
        {"\xed\xa0\x80", 3, "UTF-16 surrogate"},
        {"\xf4\x90\x80\x80", 4, "above U+10FFFF"},
        {"\xf8\x88\x80\x80\x80", 5, "5-byte form"},
    };
    static const char *sides[][2] = {{"abc", " def"}, {"", ""}, {"x", ""}, {"", "y"}, {"caf\xc3\xa9 ", "  \n"},
                                     {"It", "s 99"}, {"  ", "  "}};
    int ok = 0, total = 0;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        for (size_t j = 0; j < sizeof sides / sizeof *sides; j++, total++) {
            int good = split_at_invalid_ok(sides[j][0], bad[i].bytes, bad[i].n, sides[j][1]);
            if (!good) printf("  (%s)\n", bad[i].what);
            ok += good;
        }
    printf("invalid UTF-8: %d/%d texts split as documented\n", ok, total);
    assert_int_equal(ok, total);
    /* A valid sequence right next to an invalid byte stays one character. */
    size_t n = 0, n2 = 0;
    int *a = enc(tok, "\xe2\x82\xac\xff", 4, 0, &n), *b = enc(tok, "\xe2\x82\xac", 3, 0, &n2);
    assert_int_equal(n, n2 + 1);
    assert_memory_equal(a, b, n2 * sizeof *a);
    free(a);
    free(b);
}

static void test_decode_rejects_unknown_ids(void **state) {
    (void)state;
    int ids[] = {15496, -1};
    char *text = (char *)1;
    size_t len = 5;
    assert_int_equal(ea_tokenizer_decode(tok, ids, 2, &text, &len), EA_ERR_ARG);
    assert_null(text);
    printf("decode -1: %s\n", ea_last_error());
    assert_non_null(strstr(ea_last_error(), "position 1"));
    ids[1] = ea_tokenizer_vocab_size(tok);
    assert_int_equal(ea_tokenizer_decode(tok, ids, 2, &text, &len), EA_ERR_ARG);
    assert_null(text);
}

/* Half a megabyte without a space is one pre-token: BPE must stay near-linear and exact. */
static void test_long_pieces(void **state) {
    (void)state;
    size_t len = (size_t)1 << 19;
    char *s = malloc(len);
    const char *fills[] = {"x", "ab", " ", "7", "!", "\xe4\xb8\xad"};
    for (size_t f = 0; f < sizeof fills / sizeof *fills; f++) {
        size_t fl = strlen(fills[f]), k = 0;
        while (k + fl <= len) { memcpy(s + k, fills[f], fl); k += fl; }
        double t0 = ea_time_now();
        size_t n = 0;
        int *ids = enc(tok, s, k, 0, &n);
        double dt = ea_time_now() - t0;
        free(ids);
        printf("%zu bytes of \"%s\": %zu tokens in %.3f s\n", k, f == 5 ? "U+4E2D" : fills[f], n, dt);
        assert_true(roundtrip_ok(tok, s, k, 0));
    }
    free(s);
}

/* ---- threads share one tokenizer -------------------------------------------------------------- */

typedef struct {
    const char *text;
    size_t len;
    int *ids;
    size_t n;
    ea_status st;
} thread_job;

static void *encode_thread(void *arg) {
    thread_job *j = arg;
    for (int rep = 0; rep < 3; rep++) {
        free(j->ids);
        j->ids = NULL;
        j->st = ea_tokenizer_encode(tok, j->text, j->len, rep & 1, &j->ids, &j->n);
        if (j->st) break;
    }
    return NULL;
}

static void test_threads_share_tokenizer(void **state) {
    (void)state;
    char *text;
    size_t len;
    assert_int_equal(ea_read_file(EA_SOURCE_DIR "/data/eval.txt", (size_t)1 << 26, &text, &len), EA_OK);
    size_t n_ref = 0;
    int *ref = enc(tok, text, len, 0, &n_ref);
    enum { NT = 4 };
    pthread_t th[NT];
    thread_job jobs[NT];
    for (int i = 0; i < NT; i++) {
        jobs[i] = (thread_job){text, len, NULL, 0, EA_OK};
        assert_int_equal(pthread_create(&th[i], NULL, encode_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].st, EA_OK);
        assert_true(ids_equal(jobs[i].ids, jobs[i].n, ref, n_ref));
        free(jobs[i].ids);
    }
    printf("%d threads encoded eval.txt (%zu tokens) identically\n", NT, n_ref);
    free(ref);
    free(text);
}

/* ---- hand-made vocabularies: merge order ---------------------------------------------------- */

/* Write vocab.json with the 256 single bytes (ids 0..255, in byte order) plus extra tokens (raw
 * bytes, ids 256...), and merges.txt with the given content. */
static void write_small_tokenizer(const char *dir, const char *const *extra, size_t n_extra, const char *merges) {
    cJSON *v = cJSON_CreateObject();
    for (int b = 0; b < 256; b++) {
        char c = (char)b, *t = alphabet_text(&c, 1);
        cJSON_AddNumberToObject(v, t, b);
        free(t);
    }
    for (size_t i = 0; i < n_extra; i++) {
        char *t = alphabet_text(extra[i], strlen(extra[i]));
        cJSON_AddNumberToObject(v, t, (double)(256 + i));
        free(t);
    }
    char *js = cJSON_PrintUnformatted(v), path[1024];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    assert_int_equal(test_write_file(path, js, strlen(js)), 0);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    assert_int_equal(test_write_file(path, merges, strlen(merges)), 0);
    free(js);
    cJSON_Delete(v);
}

/* Load the small tokenizer and check the ids of text; ids given as a -1-terminated list. */
static void expect_small(const char *dir, const char *text, const int *want) {
    ea_tokenizer *t = NULL;
    ea_status st = ea_tokenizer_load_dir(dir, &t);
    if (st) printf("load failed: %s\n", ea_last_error());
    assert_int_equal(st, EA_OK);
    size_t nw = 0, n = 0;
    while (want[nw] >= 0) nw++;
    int *ids = enc(t, text, strlen(text), 0, &n);
    if (!ids_equal(ids, n, want, nw)) {
        print_escaped("text", text, strlen(text));
        print_ids("expected", want, nw);
        print_ids("got     ", ids, n);
        fail();
    }
    free(ids);
    ea_tokenizer_free(t);
}

static void test_merge_order(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    assert_non_null(dir);
    const char *extra[] = {"ab", "bc", "abc", "aa", "aaaa"}; /* ids 256..260 */
    enum { AB = 256, BC, ABC, AA, AAAA };
    /* Lowest rank first: "b c" beats "a b", then "a bc". */
    write_small_tokenizer(dir, extra, 5, "#version: 0.2\nb c\na bc\na b\n");
    expect_small(dir, "abc", (int[]){ABC, -1});
    /* The other order gives ab + c, and "ab c" is not a merge. */
    write_small_tokenizer(dir, extra, 5, "#version: 0.2\na b\nb c\na bc\n");
    expect_small(dir, "abc", (int[]){AB, 'c', -1});
    /* Equal ranks: leftmost first, so "aaa" is aa + a, "aaaaa" is aaaa + a. */
    write_small_tokenizer(dir, extra, 5, "a a\naa aa\n");
    expect_small(dir, "aaa", (int[]){AA, 'a', -1});
    expect_small(dir, "aaaaa", (int[]){AAAA, 'a', -1});
    /* Merges never cross pre-tokens: "ab ab" is "ab" + " ab" and " ab" becomes ' ' + ab. */
    expect_small(dir, "ab ab", (int[]){'a', 'b', ' ', 'a', 'b', -1});
    write_small_tokenizer(dir, extra, 5, "a b\r\n\r\n");
    expect_small(dir, "ab ab", (int[]){AB, ' ', AB, -1});
    /* A pair listed twice takes its last rank (as Hugging Face tokenizers does): here "a b" ends
     * below "b c". */
    write_small_tokenizer(dir, extra, 5, "a b\nb c\na b\n");
    expect_small(dir, "abc", (int[]){'a', BC, -1});
    /* No merges at all: one token per byte. */
    write_small_tokenizer(dir, extra, 5, "");
    expect_small(dir, "abc", (int[]){'a', 'b', 'c', -1});
    /* Without <|endoftext|> in the vocabulary, parse_special has nothing to parse to. */
    ea_tokenizer *t = NULL;
    assert_int_equal(ea_tokenizer_load_dir(dir, &t), EA_OK);
    int *ids = NULL;
    size_t n = 0;
    assert_int_equal(ea_tokenizer_encode(t, "a<|endoftext|>", 14, 1, &ids, &n), EA_ERR_ARG);
    printf("special without EOT: %s\n", ea_last_error());
    assert_int_equal(ea_tokenizer_encode(t, "a<|endoftext|>", 14, 0, &ids, &n), EA_OK);
    assert_int_equal(n, 14);
    free(ids);
    ea_tokenizer_free(t);
    test_rmdir(dir);
    free(dir);
}

/* ---- hostile files -------------------------------------------------------------------------- */

typedef struct {
    const char *what;
    const char *vocab;  /* NULL: the valid small vocab */
    const char *merges; /* NULL: empty merges */
    ea_status want;
    const char *names;  /* the file the message must name */
} hostile_case;

static void test_hostile_files(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    assert_non_null(dir);
    char vocab[1024], merges[1024], base[65536];
    snprintf(vocab, sizeof vocab, "%s/vocab.json", dir);
    snprintf(merges, sizeof merges, "%s/merges.txt", dir);
    /* A valid 256-byte vocab plus "ab" (256), as text, to splice hostile entries into. */
    write_small_tokenizer(dir, (const char *[]){"ab"}, 1, "");
    char *good;
    size_t good_len;
    assert_int_equal(ea_read_file(vocab, sizeof base, &good, &good_len), EA_OK);
    good[good_len - 1] = 0; /* drop the closing brace */
    const hostile_case cases[] = {
        {"empty vocab file", "", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"truncated JSON", "{\"a\": 1, \"b\"", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"JSON array", "[1, 2, 3]", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"empty object", "{}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"string id", "%s,\"xy\":\"257\"}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"fractional id", "%s,\"xy\":256.5}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"negative id", "%s,\"xy\":-1}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"id past the end", "%s,\"xy\":258}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"huge id", "%s,\"xy\":1e300}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"id given twice", "%s,\"xy\":256}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"token given twice", "%s,\"ab\":257}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"object as id", "%s,\"xy\":{\"a\":1}}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"null id", "%s,\"xy\":null}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"character outside the byte alphabet", "%s,\"x y\":257}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"escaped NUL in a token", "%s,\"\\u0000\":257}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"missing byte tokens", "{\"a\":0,\"b\":1}", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"deep nesting", "deep", NULL, EA_ERR_FORMAT, "vocab.json"},
        {"merge of an unknown token", NULL, "a b\nq zz\n", EA_ERR_FORMAT, "merges.txt:2"},
        {"merge result not in vocab", NULL, "a b\nb c\n", EA_ERR_FORMAT, "merges.txt:2"},
        {"three tokens on a line", NULL, "a b c\n", EA_ERR_FORMAT, "merges.txt:1"},
        {"one token on a line", NULL, "ab\n", EA_ERR_FORMAT, "merges.txt:1"},
        {"two spaces", NULL, "a  b\n", EA_ERR_FORMAT, "merges.txt:1"},
        {"leading space", NULL, " a b\n", EA_ERR_FORMAT, "merges.txt:1"},
        {"raw byte outside the alphabet", NULL, "a\x01 b\n", EA_ERR_FORMAT, "merges.txt:1"},
        {"NUL byte", NULL, "a b\n\0 b\n", EA_ERR_FORMAT, "merges.txt:2"},
        {"invalid UTF-8", NULL, "\xff\xfe b\n", EA_ERR_FORMAT, "merges.txt:1"},
    };
    int ok = 0, total = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++, total++) {
        const hostile_case *c = &cases[i];
        int nb = snprintf(base, sizeof base, c->vocab ? c->vocab : "%s}", good);
        if (c->vocab && strcmp(c->vocab, "deep") == 0) { /* 20000 nested arrays */
            for (nb = 0; nb < 20000; nb++) base[nb] = '[';
            for (; nb < 40000; nb++) base[nb] = ']';
        }
        assert_true(nb >= 0 && (size_t)nb < sizeof base);
        assert_int_equal(test_write_file(vocab, base, (size_t)nb), 0);
        /* The NUL case needs its real length: 4 + 4 bytes. */
        const char *m = c->merges ? c->merges : "";
        size_t ml = (c->merges && strcmp(c->what, "NUL byte") == 0) ? 8 : strlen(m);
        assert_int_equal(test_write_file(merges, m, ml), 0);
        ea_tokenizer *t = (ea_tokenizer *)1;
        ea_status st = ea_tokenizer_load(vocab, merges, &t);
        int good_case = st == c->want && t == NULL && strstr(ea_last_error(), c->names) != NULL;
        printf("%-38s -> %s: %s%s\n", c->what, ea_status_name(st), ea_last_error(), good_case ? "" : "   <-- WRONG");
        if (st == EA_OK) ea_tokenizer_free(t);
        ok += good_case;
    }
    free(good);
    /* Missing files and a directory in place of a file: I/O errors naming the path. */
    char missing[1100];
    snprintf(missing, sizeof missing, "%s/nope", dir);
    ea_tokenizer *t = (ea_tokenizer *)1;
    total += 3;
    ok += ea_tokenizer_load_dir(missing, &t) == EA_ERR_IO && t == NULL && strstr(ea_last_error(), "nope/vocab.json");
    printf("missing dir: %s\n", ea_last_error());
    ok += ea_tokenizer_load(vocab, missing, &t) == EA_ERR_IO && strstr(ea_last_error(), missing);
    printf("missing merges: %s\n", ea_last_error());
    ok += ea_tokenizer_load(dir, merges, &t) == EA_ERR_IO && strstr(ea_last_error(), dir);
    printf("directory as vocab: %s\n", ea_last_error());
    printf("hostile files: %d/%d rejected with the right status and file name\n", ok, total);
    test_rmdir(dir);
    free(dir);
    assert_int_equal(ok, total);
}

/* Random corruption of valid files: each load either succeeds (and then encodes and decodes
 * random text exactly) or fails with a message; it never crashes (ASan checks the rest). */
static void test_corrupted_files_fuzz(void **state) {
    (void)state;
    char *dir = test_tmpdir();
    assert_non_null(dir);
    const char *extra[] = {"ab", "bc", "abc", " a", " ab", "aa"};
    write_small_tokenizer(dir, extra, 6, "#version: 0.2\na b\nb c\na bc\n\xc4\xa0 a\n\xc4\xa0""a b\na a\n");
    char vocab[1024], merges[1024];
    snprintf(vocab, sizeof vocab, "%s/vocab.json", dir);
    snprintf(merges, sizeof merges, "%s/merges.txt", dir);
    char *v0, *m0;
    size_t vl, ml;
    assert_int_equal(ea_read_file(vocab, 1 << 20, &v0, &vl), EA_OK);
    assert_int_equal(ea_read_file(merges, 1 << 20, &m0, &ml), EA_OK);
    ea_rng r;
    ea_rng_seed(&r, 77);
    int loaded = 0, refused = 0, bad = 0;
    char *v = malloc(vl + 1), *m = malloc(ml + 1), text[256];
    for (int it = 0; it < 300; it++) {
        memcpy(v, v0, vl);
        memcpy(m, m0, ml);
        size_t vn = vl, mn = ml;
        int flips = 1 + (int)ea_rng_below(&r, 4);
        for (int f = 0; f < flips; f++) {
            if (ea_rng_below(&r, 2)) v[ea_rng_below(&r, vl)] = (char)ea_rng_below(&r, 256);
            else m[ea_rng_below(&r, ml)] = (char)ea_rng_below(&r, 256);
        }
        if (ea_rng_below(&r, 8) == 0) vn = (size_t)ea_rng_below(&r, vl); /* truncate */
        if (ea_rng_below(&r, 8) == 0) mn = (size_t)ea_rng_below(&r, ml);
        assert_int_equal(test_write_file(vocab, v, vn), 0);
        assert_int_equal(test_write_file(merges, m, mn), 0);
        ea_tokenizer *t = NULL;
        ea_status st = ea_tokenizer_load(vocab, merges, &t);
        if (st) {
            refused++;
            if (!*ea_last_error() || t) bad++;
            continue;
        }
        loaded++;
        size_t len = random_text(&r, text, sizeof text);
        if (!roundtrip_ok(t, text, len, 0)) bad++;
        ea_tokenizer_free(t);
    }
    printf("corrupted files: %d loaded (and round-tripped), %d refused, %d bad\n", loaded, refused, bad);
    free(v);
    free(m);
    free(v0);
    free(m0);
    test_rmdir(dir);
    free(dir);
    assert_int_equal(bad, 0);
}

/* ---- CLI ------------------------------------------------------------------------------------ */

/* Parse {"ids": [...]} from CLI output into an array; returns -1 if malformed. */
static long parse_cli_ids(const char *out, int **ids) {
    cJSON *j = cJSON_Parse(out);
    cJSON *arr = cJSON_GetObjectItem(j, "ids"), *x;
    if (!cJSON_IsArray(arr)) { cJSON_Delete(j); return -1; }
    long n = cJSON_GetArraySize(arr), k = 0;
    *ids = malloc(((size_t)n + 1) * sizeof **ids);
    cJSON_ArrayForEach(x, arr) (*ids)[k++] = x->valueint;
    cJSON_Delete(j);
    return n;
}

static void test_cli_tokenize(void **state) {
    (void)state;
    if (access(EA_CLI_PATH, X_OK) != 0) TEST_SKIP("%s not built", EA_CLI_PATH);
    char *out = NULL, *err = NULL;
    int *ids = NULL;
    /* --json */
    int rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--text", "Hello world", "--json", NULL});
    printf("tokenize --json: rc %d, %s", rc, out);
    assert_int_equal(rc, 0);
    assert_int_equal(parse_cli_ids(out, &ids), 2);
    assert_int_equal(ids[0], 15496);
    assert_int_equal(ids[1], 995);
    free(ids); free(out); free(err);
    /* plain */
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--text", "Hello world", "--model", TEST_MODEL_DIR, NULL});
    assert_int_equal(rc, 0);
    assert_string_equal(out, "15496 995\n");
    free(out); free(err);
    /* --special */
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--text", "<|endoftext|>", "--special", "--json", NULL});
    assert_int_equal(rc, 0);
    assert_int_equal(parse_cli_ids(out, &ids), 1);
    assert_int_equal(ids[0], EA_TOKEN_EOT);
    free(ids); free(out); free(err);
    /* empty text */
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--text", "", "--json", NULL});
    assert_int_equal(rc, 0);
    assert_int_equal(parse_cli_ids(out, &ids), 0);
    free(ids); free(out); free(err);
    /* --file equals the library on the same file */
    const char *path = EA_SOURCE_DIR "/data/eval.txt";
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--file", path, "--json", NULL});
    assert_int_equal(rc, 0);
    long n = parse_cli_ids(out, &ids);
    char *text;
    size_t len, nref = 0;
    assert_int_equal(ea_read_file(path, (size_t)1 << 26, &text, &len), EA_OK);
    int *ref = enc(tok, text, len, 0, &nref);
    printf("tokenize --file eval.txt: %ld ids (library: %zu)\n", n, nref);
    assert_true(n >= 0 && ids_equal(ids, (size_t)n, ref, nref));
    free(ref); free(text); free(ids); free(out); free(err);
    /* errors: missing file named, no text, both, missing model files */
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--file", "/nonexistent/x.txt", NULL});
    printf("missing file: rc %d, %s", rc, err);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(err, "/nonexistent/x.txt"));
    assert_string_equal(out, "");
    free(out); free(err);
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--json", NULL});
    assert_int_not_equal(rc, 0);
    free(out); free(err);
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--text", "a", "--file", path, NULL});
    assert_int_not_equal(rc, 0);
    free(out); free(err);
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--text", "a", "--model", "/nonexistent-model", NULL});
    printf("missing model: rc %d, %s", rc, err);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(err, "/nonexistent-model/vocab.json"));
    free(out); free(err);
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--text", "a", "--bogus", NULL});
    assert_int_not_equal(rc, 0);
    free(out); free(err);
    rc = test_run_cli(&out, &err, (const char *[]){"tokenize", "--help", NULL});
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "usage"));
    free(out); free(err);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_cases),
        cmocka_unit_test(test_fixture_cases_shared_model),
        cmocka_unit_test(test_byte_alphabet_and_vocab),
        cmocka_unit_test(test_roundtrip_fixture_texts),
        cmocka_unit_test(test_roundtrip_random_bytes),
        cmocka_unit_test(test_empty_text),
        cmocka_unit_test(test_parse_special),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_decode_rejects_unknown_ids),
        cmocka_unit_test(test_long_pieces),
        cmocka_unit_test(test_threads_share_tokenizer),
        cmocka_unit_test(test_merge_order),
        cmocka_unit_test(test_hostile_files),
        cmocka_unit_test(test_corrupted_files_fuzz),
        cmocka_unit_test(test_cli_tokenize),
    };
    return TEST_RUN(tests, group_setup, group_teardown);
}
