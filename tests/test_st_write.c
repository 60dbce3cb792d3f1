/* Safetensors writer: round trip through the reader (tensors, dtypes, shapes, metadata), the
 * format's layout rules (header padded to 8, no holes, sorted), determinism, atomic output,
 * argument errors, and a rewrite of the Hugging Face–written reference fixture. */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char *path_in(const char *dir, const char *name) {
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static unsigned char *slurp(const char *path, size_t *n) {
    char *d;
    assert_int_equal(ea_read_file(path, 1 << 30, &d, n), EA_OK);
    return (unsigned char *)d;
}

/* Test data: a few tensors of every dtype, including a scalar and an empty tensor. */
static float f32[3][4];
static double f64[5];
static int64_t i64[2] = {-7, 1LL << 40};
static int32_t i32[3] = {1, -2, 3};
static uint16_t f16[6];
static float scalar = 3.25f;

static void fill_data(void) {
    for (int i = 0; i < 12; i++) f32[i / 4][i % 4] = (float)i * 0.5f - 2.0f;
    for (int i = 0; i < 5; i++) f64[i] = 1.0 / (i + 1);
    for (int i = 0; i < 6; i++) f16[i] = ea_f32_to_f16((float)i - 2.5f);
}

static void add_all(ea_st_writer *w, int reverse) {
    int64_t s_f32[2] = {3, 4}, s_f64[1] = {5}, s_i64[1] = {2}, s_i32[1] = {3}, s_f16[3] = {1, 2, 3}, s_empty[2] = {0, 7};
    struct {
        const char *name;
        ea_dtype t;
        int nd;
        const int64_t *shape;
        const void *data;
    } items[] = {
        {"weights.f32", EA_DTYPE_F32, 2, s_f32, f32},     {"a.f64", EA_DTYPE_F64, 1, s_f64, f64},
        {"z.i64", EA_DTYPE_I64, 1, s_i64, i64},           {"m.i32", EA_DTYPE_I32, 1, s_i32, i32},
        {"b.f16", EA_DTYPE_F16, 3, s_f16, f16},           {"scalar", EA_DTYPE_F32, 0, NULL, &scalar},
        {"empty", EA_DTYPE_F32, 2, s_empty, NULL},        {"name with \"quotes\" \\ and é", EA_DTYPE_F32, 0, NULL, &scalar},
    };
    int n = (int)(sizeof items / sizeof *items);
    for (int k = 0; k < n; k++) {
        int i = reverse ? n - 1 - k : k;
        assert_int_equal(ea_st_writer_add(w, items[i].name, items[i].t, items[i].nd, items[i].shape, items[i].data), EA_OK);
    }
    assert_int_equal(ea_st_writer_meta(w, reverse ? "zkey" : "format", reverse ? "last" : "test"), EA_OK);
    assert_int_equal(ea_st_writer_meta(w, reverse ? "format" : "zkey", reverse ? "test" : "last"), EA_OK);
    assert_int_equal(ea_st_writer_meta(w, "tricky", "quote \" backslash \\ newline \n tab \t ctl \x01 utf8 ü"), EA_OK);
}

static void test_round_trip(void **state) {
    (void)state;
    fill_data();
    char *dir = test_tmpdir(), *path = path_in(dir, "t.safetensors");
    ea_st_writer *w;
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    add_all(w, 0);
    assert_int_equal(ea_st_writer_save(w, path), EA_OK);
    ea_st_writer_free(w);
    assert_int_equal(count_entries(dir), 1); /* no temporary left behind */

    ea_st_file *f;
    assert_int_equal(ea_st_open(path, &f), EA_OK);
    assert_int_equal(ea_st_count(f), 8);
    const ea_st_tensor *t = ea_st_find(f, "weights.f32");
    assert_non_null(t);
    assert_int_equal(t->dtype, EA_DTYPE_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 3);
    assert_int_equal(t->shape[1], 4);
    assert_memory_equal(t->data, f32, sizeof f32);
    assert_non_null(t = ea_st_find(f, "a.f64"));
    assert_int_equal(t->dtype, EA_DTYPE_F64);
    assert_memory_equal(t->data, f64, sizeof f64);
    assert_non_null(t = ea_st_find(f, "z.i64"));
    assert_int_equal(t->dtype, EA_DTYPE_I64);
    assert_memory_equal(t->data, i64, sizeof i64);
    assert_non_null(t = ea_st_find(f, "m.i32"));
    assert_memory_equal(t->data, i32, sizeof i32);
    assert_non_null(t = ea_st_find(f, "b.f16"));
    assert_int_equal(t->dtype, EA_DTYPE_F16);
    assert_int_equal(t->ndim, 3);
    assert_memory_equal(t->data, f16, sizeof f16);
    assert_non_null(t = ea_st_find(f, "scalar"));
    assert_int_equal(t->ndim, 0);
    assert_int_equal(t->numel, 1);
    assert_memory_equal(t->data, &scalar, 4);
    assert_non_null(t = ea_st_find(f, "empty"));
    assert_int_equal(t->numel, 0);
    assert_int_equal(t->nbytes, 0);
    assert_non_null(ea_st_find(f, "name with \"quotes\" \\ and é"));
    assert_string_equal(ea_st_metadata(f, "format"), "test");
    assert_string_equal(ea_st_metadata(f, "zkey"), "last");
    assert_string_equal(ea_st_metadata(f, "tricky"), "quote \" backslash \\ newline \n tab \t ctl \x01 utf8 ü");
    ea_st_close(f);

    /* Layout: header length a multiple of 8; data contiguous in sorted-name order; file size exact. */
    size_t n;
    unsigned char *b = slurp(path, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | b[i];
    size_t total = sizeof f32 + sizeof f64 + sizeof i64 + sizeof i32 + sizeof f16 + 2 * sizeof scalar;
    printf("header %llu bytes, data %zu bytes, file %zu bytes\n", (unsigned long long)hl, total, n);
    assert_int_equal(hl % 8, 0);
    assert_int_equal(n, 8 + hl + total);
    assert_true(memcmp(b + 8, "{\"__metadata__\":", 16) == 0);
    /* Sorted names: "a.f64" is the first tensor and starts at offset 0. */
    assert_non_null(strstr((char *)b + 8, "\"a.f64\":{\"dtype\":\"F64\",\"shape\":[5],\"data_offsets\":[0,40]}"));
    free(b);
    test_rmdir(dir);
    free(dir);
    free(path);
}

static void test_deterministic(void **state) {
    (void)state;
    fill_data();
    char *dir = test_tmpdir(), *p1 = path_in(dir, "a.safetensors"), *p2 = path_in(dir, "b.safetensors");
    ea_st_writer *w;
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    add_all(w, 0);
    assert_int_equal(ea_st_writer_save(w, p1), EA_OK);
    ea_st_writer_free(w);
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    add_all(w, 1);
    assert_int_equal(ea_st_writer_save(w, p2), EA_OK);
    ea_st_writer_free(w);
    size_t n1, n2;
    unsigned char *b1 = slurp(p1, &n1), *b2 = slurp(p2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    free(b1);
    free(b2);
    test_rmdir(dir);
    free(dir);
    free(p1);
    free(p2);
}

static void test_atomic(void **state) {
    (void)state;
    fill_data();
    char *dir = test_tmpdir(), *path = path_in(dir, "out.safetensors");
    assert_int_equal(test_write_file(path, "previous", 8), 0);
    ea_st_writer *w;
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    add_all(w, 0);
    /* Replaces the old file in one rename; nothing else remains in the directory. */
    assert_int_equal(ea_st_writer_save(w, path), EA_OK);
    assert_int_equal(count_entries(dir), 1);
    ea_st_file *f;
    assert_int_equal(ea_st_open(path, &f), EA_OK);
    ea_st_close(f);
    /* A directory that does not exist: an I/O error naming the path, and no file anywhere. */
    char *bad = path_in(dir, "missing/x.safetensors");
    ea_status st = ea_st_writer_save(w, bad);
    printf("save into a missing directory: %s\n", ea_last_error());
    assert_int_equal(st, EA_ERR_IO);
    assert_non_null(strstr(ea_last_error(), bad));
    assert_int_equal(count_entries(dir), 1);
    ea_st_writer_free(w);
    free(bad);
    test_rmdir(dir);
    free(dir);
    free(path);
}

static void test_bad_arguments(void **state) {
    (void)state;
    ea_st_writer *w;
    float x[2] = {1, 2};
    int64_t s1[1] = {2}, neg[1] = {-1}, many[EA_MAX_DIMS + 1];
    for (int i = 0; i <= EA_MAX_DIMS; i++) many[i] = 1;
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    assert_int_equal(ea_st_writer_add(w, "x", EA_DTYPE_F32, 1, s1, x), EA_OK);
    assert_int_equal(ea_st_writer_add(w, "x", EA_DTYPE_F32, 1, s1, x), EA_ERR_ARG);
    assert_non_null(strstr(ea_last_error(), "duplicate"));
    assert_int_equal(ea_st_writer_add(w, "__metadata__", EA_DTYPE_F32, 1, s1, x), EA_ERR_ARG);
    assert_int_equal(ea_st_writer_add(w, "", EA_DTYPE_F32, 1, s1, x), EA_ERR_ARG);
    assert_int_equal(ea_st_writer_add(w, "neg", EA_DTYPE_F32, 1, neg, x), EA_ERR_ARG);
    assert_int_equal(ea_st_writer_add(w, "many", EA_DTYPE_F32, EA_MAX_DIMS + 1, many, x), EA_ERR_ARG);
    assert_int_equal(ea_st_writer_add(w, "nodata", EA_DTYPE_F32, 1, s1, NULL), EA_ERR_ARG);
    assert_int_equal(ea_st_writer_add(w, "dtype", (ea_dtype)99, 1, s1, x), EA_ERR_ARG);
    int64_t huge[3] = {1LL << 40, 1LL << 40, 1LL << 40};
    assert_int_equal(ea_st_writer_add(w, "huge", EA_DTYPE_F32, 3, huge, x), EA_ERR_NOMEM);
    assert_int_equal(ea_st_writer_meta(w, "", "v"), EA_ERR_ARG);
    ea_st_writer_free(w);
}

/* The reference fixture was written by Hugging Face's safetensors: rewrite every tensor and
 * metadata entry with our writer and check the reader sees identical contents. */
static void test_rewrite_reference(void **state) {
    (void)state;
    const char *ref = TEST_FIXTURE_DIR "/gpt2-micro.reference.safetensors";
    ea_st_file *f;
    assert_int_equal(ea_st_open(ref, &f), EA_OK);
    char *dir = test_tmpdir(), *path = path_in(dir, "copy.safetensors");
    ea_st_writer *w;
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    for (int i = 0; i < ea_st_count(f); i++) {
        const ea_st_tensor *t = ea_st_get(f, i);
        void *buf = malloc(t->nbytes ? t->nbytes : 1);
        memcpy(buf, t->data, t->nbytes);
        assert_int_equal(ea_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, buf), EA_OK);
        free(buf);
    }
    const char *keys[] = {"hidden_states", "qkv", "about", "prompts", "greedy_ids"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        assert_non_null(ea_st_metadata(f, keys[k]));
        assert_int_equal(ea_st_writer_meta(w, keys[k], ea_st_metadata(f, keys[k])), EA_OK);
    }
    assert_int_equal(ea_st_writer_save(w, path), EA_OK);
    ea_st_writer_free(w);
    ea_st_file *g;
    assert_int_equal(ea_st_open(path, &g), EA_OK);
    assert_int_equal(ea_st_count(g), ea_st_count(f));
    size_t bytes = 0;
    for (int i = 0; i < ea_st_count(f); i++) {
        const ea_st_tensor *a = ea_st_get(f, i), *b = ea_st_find(g, a->name);
        assert_non_null(b);
        assert_int_equal(a->dtype, b->dtype);
        assert_int_equal(a->ndim, b->ndim);
        for (int d = 0; d < a->ndim; d++) assert_int_equal(a->shape[d], b->shape[d]);
        assert_int_equal(a->nbytes, b->nbytes);
        assert_memory_equal(a->data, b->data, a->nbytes);
        bytes += a->nbytes;
    }
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
        assert_string_equal(ea_st_metadata(f, keys[k]), ea_st_metadata(g, keys[k]));
    printf("rewrote %d tensors (%zu bytes) of %s identically\n", ea_st_count(f), bytes, ref);
    ea_st_close(g);
    ea_st_close(f);
    test_rmdir(dir);
    free(dir);
    free(path);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),   cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_atomic),       cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_rewrite_reference),
    };
    return TEST_RUN(tests, NULL, NULL);
}
