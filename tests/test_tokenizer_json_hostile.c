/* Hostile and unsupported tokenizer.json / tokenizer_config.json files: each is refused with a
 * message naming the file and the field (and value) at fault, no tokenizer is returned, and
 * nothing crashes; randomly corrupted files either load and then encode and decode soundly, or
 * are refused the same way. The CLI refuses a tokenizer that is larger than the model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* A small valid file: a=0 b=1 ab=2 ▁=3 <unk>=4, one merge, every section present. */
static const char base_json[] =
    "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,\n"
    " \"added_tokens\": [{\"id\": 5, \"content\": \"<s>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false,"
    " \"normalized\": false, \"special\": true}],\n"
    " \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}, {\"type\": \"Prepend\", \"prepend\":"
    " \"\\u2581\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]},\n"
    " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\":"
    " \"\\\\s+|\\\\p{L}+\"}, \"behavior\": \"Isolated\", \"invert\": false}]},\n"
    " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\","
    " \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"special_tokens\": {\"<s>\": {\"id\":"
    " \"<s>\", \"ids\": [5], \"tokens\": [\"<s>\"]}}},\n"
    " \"decoder\": null,\n"
    " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": \"<unk>\", \"fuse_unk\": true, \"byte_fallback\":"
    " false, \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"\\u2581\": 3, \"<unk>\": 4}, \"merges\": [\"a b\"]}}\n";

static char *dir;

static int setup(void **state) {
    (void)state;
    dir = test_tmpdir();
    return dir ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    test_rmdir(dir);
    free(dir);
    return 0;
}

/* Replace the first `from` in base_json by `to` (malloc'd). */
static char *patched(const char *from, const char *to) {
    const char *at = strstr(base_json, from);
    assert_non_null(at);
    size_t a = (size_t)(at - base_json), nf = strlen(from), nt = strlen(to), n = strlen(base_json);
    char *out = malloc(n - nf + nt + 1);
    memcpy(out, base_json, a);
    memcpy(out + a, to, nt);
    memcpy(out + a + nt, at + nf, n - a - nf + 1);
    return out;
}

/* Write the files, load the directory; returns the status (and checks the failure contract). */
static ea_status try_load(const char *json, const char *config) {
    char path[600], cpath[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", dir);
    assert_int_equal(test_write_file(path, json, strlen(json)), 0);
    remove(cpath);
    if (config) assert_int_equal(test_write_file(cpath, config, strlen(config)), 0);
    ea_tokenizer *t = (ea_tokenizer *)&t;
    ea_status st = ea_tokenizer_load_dir(dir, &t);
    if (st) assert_null(t);
    ea_tokenizer_free(st ? NULL : t);
    return st;
}

static void test_base_file_loads(void **state) {
    (void)state;
    assert_int_equal(try_load(base_json, NULL), EA_OK);
    char path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    ea_tokenizer *t = NULL;
    assert_int_equal(ea_tokenizer_load_json(path, NULL, &t), EA_OK);
    int *ids = NULL, bos = 0;
    size_t n = 0;
    assert_int_equal(ea_tokenizer_encode(t, "ab ab<s>", 8, 1, &ids, &n), EA_OK);
    /* "▁ab▁ab": ▁ | ab | ▁ | ab, then <s> */
    assert_int_equal(n, 5);
    assert_int_equal(ids[0], 3);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[4], 5);
    assert_int_equal(ea_tokenizer_bos(t, &bos), 1);
    assert_int_equal(bos, 5);
    free(ids);
    ea_tokenizer_free(t);
}

static const struct {
    const char *from, *to; /* patch of base_json (from NULL: `to` is the whole file) */
    const char *want;      /* a phrase the message must hold */
} cases[] = {
    {NULL, "{", "not valid JSON"},
    {NULL, "[1, 2]", "expected a JSON object"},
    {NULL, "{}", "no \"model\" object"},
    {NULL, "", "not valid JSON"},
    {"\"type\": \"BPE\"", "\"type\": \"Unigram\"", "model.type \"Unigram\""},
    {"\"type\": \"BPE\"", "\"type\": \"WordPiece\"", "model.type \"WordPiece\""},
    {"\"type\": \"BPE\"", "\"type\": 7", "model.type must be a string"},
    {"{\"type\": \"NFC\"}", "{\"type\": \"Lowercase\"}", "normalizer type \"Lowercase\""},
    {"{\"type\": \"NFC\"}", "{\"typo\": \"NFC\"}", "normalizer has no \"type\""},
    {"{\"type\": \"NFC\"}", "{\"type\": \"Sequence\"}", "no \"normalizers\" list"},
    {"\"type\": \"Split\"", "\"type\": \"Whitespace\"", "pre_tokenizer type \"Whitespace\""},
    {"\"Isolated\"", "\"Sideways\"", "behavior \"Sideways\""},
    {"\"\\\\s+|\\\\p{L}+\"", "\"(unclosed\"", "pre_tokenizer Split.pattern does not compile"},
    {"\"\\\\s+|\\\\p{L}+\"", "\"[\\\\S]\"", "\\S inside a character class"},
    {"{\"Regex\":", "{\"Regexp\":", "pattern must be"},
    {"\"a\": 0,", "\"a\": -1,", "id -1"},
    {"\"a\": 0,", "\"a\": 1e12,", "id 1e+12"},
    {"\"a\": 0,", "\"a\": 16000000,", "sparse ids are refused"},
    {"\"a\": 0,", "\"a\": 0.5,", "id 0.5"},
    {"\"a\": 0,", "\"a\": \"0\",", "non-numeric id"},
    {"\"a\": 0,", "\"a\": 1,", "gives id 1 to two tokens"},
    {"\"a\": 0,", "\"\": 0,", "empty token"},
    {"\"vocab\": {", "\"vocab\": {\"a\": 6, ", "spell the same token"},
    {"\"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \"\\u2581\": 3, \"<unk>\": 4}", "\"vocab\": {}", "model.vocab is empty"},
    {"\"vocab\": {", "\"vocab\": [", "not valid JSON"},
    {"\"vocab\": {\"a\"", "\"vocab\": 3, \"x\": {\"a\"", "model.vocab must be an object"},
    {"[\"a b\"]", "[\"a c\"]", "token \"c\" is not in model.vocab"},
    {"[\"a b\"]", "[\"b a\"]", "result \"ba\" is not in model.vocab"},
    {"[\"a b\"]", "[\"a b b\"]", "one space"},
    {"[\"a b\"]", "[[1, 2]]", "neither"},
    {"[\"a b\"]", "{\"a\": \"b\"}", "model.merges must be a list"},
    {"\"dropout\": null", "\"dropout\": 0.1", "model.dropout"},
    {"\"dropout\": null", "\"continuing_subword_prefix\": \"##\"", "continuing_subword_prefix \"##\""},
    {"\"dropout\": null", "\"end_of_word_suffix\": \"</w>\"", "end_of_word_suffix \"</w>\""},
    {"\"unk_token\": \"<unk>\"", "\"unk_token\": \"<UNK>\"", "unk_token \"<UNK>\" is not in model.vocab"},
    {"\"fuse_unk\": true", "\"fuse_unk\": \"yes\"", "model.fuse_unk must be true or false"},
    {"\"content\": \"<s>\"", "\"content\": \"\"", "empty content"},
    {"\"content\": \"<s>\"", "\"contents\": \"<s>\"", "no \"content\" string"},
    {"\"id\": 5, \"content\"", "\"id\": \"5\", \"content\"", "added token \"<s>\" has a non-numeric id"},
    {"\"id\": 5, \"content\"", "\"id\": 99999999, \"content\"", "id 1e+08"},
    {"\"added_tokens\": [", "\"added_tokens\": {\"x\": [", "not valid JSON"},
    {"\"added_tokens\": [{", "\"added_tokens\": 5, \"x\": [{", "added_tokens must be a list"},
    {"\"lstrip\": false", "\"lstrip\": 0", "lstrip must be true or false"},
    {"\"type\": \"TemplateProcessing\"", "\"type\": \"Weird\"", "post_processor type \"Weird\""},
    {"\"ids\": [5]", "\"ids\": [-5]", "id -5"},
    {"\"type\": \"Split\"", "\"type\": \"Metaspace\", \"replacement\": \"ab\"", "replacement must be one character"},
    {"\"type\": \"Split\"", "\"type\": \"Metaspace\", \"prepend_scheme\": \"sometimes\"", "prepend_scheme \"sometimes\""},
    {"{\"type\": \"NFC\"}",
     "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Sequence\", "
     "\"normalizers\": [{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Sequence\", \"normalizers\": [{\"type\": "
     "\"Sequence\", \"normalizers\": [{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Sequence\", \"normalizers\": "
     "[{\"type\": \"NFC\"}]}]}]}]}]}]}]}]}",
     "nest too deeply"},
};

static void test_refused_with_reason(void **state) {
    (void)state;
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *json = cases[i].from ? patched(cases[i].from, cases[i].to) : strdup(cases[i].to);
        ea_status st = try_load(json, NULL);
        const char *msg = ea_last_error();
        int ok = st != EA_OK && strstr(msg, "tokenizer.json") && strstr(msg, cases[i].want);
        printf("%s case %zu: %s\n", ok ? "ok  " : "BAD ", i, st ? msg : "(loaded)");
        if (!ok) printf("     wanted \"%s\"\n", cases[i].want);
        bad += !ok;
        free(json);
    }
    assert_int_equal(bad, 0);
}

static void test_config_refused(void **state) {
    (void)state;
    static const struct { const char *config, *want; } cfg[] = {
        {"{\"add_bos_token\": \"yes\"}", "add_bos_token must be true or false"},
        {"{\"add_bos_token\": true, \"bos_token\": \"<bos>\"}", "bos_token \"<bos>\" is not in"},
        {"{\"bos_token\": {\"content\": \"<none>\"}}", "bos_token \"<none>\""},
        {"not json", "not valid JSON"},
        {"[]", "expected a JSON object"},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cfg / sizeof *cfg; i++) {
        ea_status st = try_load(base_json, cfg[i].config);
        const char *msg = ea_last_error();
        int ok = st != EA_OK && strstr(msg, "tokenizer_config.json") && strstr(msg, cfg[i].want);
        printf("%s config %zu: %s\n", ok ? "ok  " : "BAD ", i, st ? msg : "(loaded)");
        bad += !ok;
    }
    /* add_bos_token true without any BOS named anywhere. */
    char *json = patched("\"post_processor\": {", "\"post_processor\": null, \"x\": {");
    ea_status st = try_load(json, "{\"add_bos_token\": true}");
    printf("no bos named: %s\n", ea_last_error());
    bad += st == EA_OK || !strstr(ea_last_error(), "no bos_token");
    free(json);
    assert_int_equal(bad, 0);
}

/* Corrupted copies of the base file: loaded (and then sound) or refused with the file named. */
static void test_corrupted(void **state) {
    (void)state;
    ea_rng r;
    ea_rng_seed(&r, 1515);
    size_t n = strlen(base_json);
    char *buf = malloc(n + 1), path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    int loaded = 0, refused = 0, bad = 0;
    for (int it = 0; it < 1500; it++) {
        memcpy(buf, base_json, n + 1);
        size_t len = n;
        int flips = 1 + (int)ea_rng_below(&r, 3);
        for (int f = 0; f < flips; f++) buf[ea_rng_below(&r, n)] = (char)(32 + ea_rng_below(&r, 95));
        if (ea_rng_below(&r, 10) == 0) len = (size_t)ea_rng_below(&r, n);
        assert_int_equal(test_write_file(path, buf, len), 0);
        ea_tokenizer *t = NULL;
        if (ea_tokenizer_load_json(path, NULL, &t)) {
            refused++;
            if (t || !strstr(ea_last_error(), "tokenizer.json")) bad++;
            continue;
        }
        loaded++;
        static const char text[] = "ab ba  a\xff<s>\xc3\xa9 b<s";
        for (int special = 0; special < 2; special++) {
            int *ids = NULL;
            size_t k = 0;
            if (ea_tokenizer_encode(t, text, sizeof text - 1, special, &ids, &k)) {
                bad++;
                continue;
            }
            for (size_t i = 0; i < k; i++)
                if (!ea_tokenizer_token_bytes(t, ids[i], NULL)) bad++;
            char *back = NULL;
            if (ea_tokenizer_decode(t, ids, k, &back, NULL)) bad++;
            free(back);
            free(ids);
        }
        ea_tokenizer_free(t);
    }
    printf("corrupted tokenizer.json: %d loaded (and sound), %d refused, %d bad\n", loaded, refused, bad);
    free(buf);
    assert_true(loaded > 0 && refused > 0);
    assert_int_equal(bad, 0);
}

/* A model whose embedding is smaller than its tokenizer is refused by the CLI, with both named. */
static void test_cli_refuses_larger_tokenizer(void **state) {
    (void)state;
    /* gpt2-micro's weights beside Qwen3's tokenizer.json (151669 ids > 50257 rows). */
    static const char *files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char src[600], dst[600];
        snprintf(src, sizeof src, "%s/%s", TEST_MODEL_DIR, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        char *data = NULL;
        size_t n = 0;
        assert_int_equal(ea_read_file(src, (size_t)1 << 28, &data, &n), EA_OK);
        assert_int_equal(test_write_file(dst, data, n), 0);
        free(data);
    }
    char *data = NULL, dst[600];
    size_t n = 0;
    assert_int_equal(ea_read_file(TEST_FIXTURE_DIR "/tokenizers/qwen3/tokenizer.json", (size_t)1 << 28, &data, &n), EA_OK);
    snprintf(dst, sizeof dst, "%s/tokenizer.json", dir);
    assert_int_equal(test_write_file(dst, data, n), 0);
    free(data);
    snprintf(dst, sizeof dst, "%s/tokenizer_config.json", dir);
    remove(dst);
    char *out = NULL, *err = NULL;
    int rc = test_run_cli(&out, &err, (const char *[]){"generate", "--model", dir, "--prompt", "hi", "-n", "2", NULL});
    printf("generate with a larger tokenizer: rc %d, %s", rc, err);
    assert_int_not_equal(rc, 0);
    assert_string_equal(out, "");
    assert_non_null(strstr(err, "151668"));
    assert_non_null(strstr(err, "50257"));
    free(out);
    free(err);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base_file_loads),
        cmocka_unit_test(test_refused_with_reason),
        cmocka_unit_test(test_config_refused),
        cmocka_unit_test(test_corrupted),
        cmocka_unit_test(test_cli_refuses_larger_tokenizer),
    };
    return TEST_RUN(tests, setup, teardown);
}
