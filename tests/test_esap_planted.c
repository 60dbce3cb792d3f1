/* A different-width alignment with a planted map, built inside the test (no ../shared): a copy of
 * the bundled gpt2-micro (n_embd 128) whose token embeddings are wte·Q, Q a random 128 × 256
 * matrix with orthonormal rows (a rotation followed by zero padding to 256 dims), written with
 * the library's safetensors writer. Aligning the embeddings (--repr wte) of the two models must
 * recover the planted map: held-out P@1 of 1, cosines of 1, W equal to the map between the two
 * eigenbases that Q implies, and a null at chance. The copy's other tensors are the originals
 * zero-padded to the new width (only the shapes matter here: LayerNorm is not rotation
 * invariant, so no rotated copy of GPT-2 computes the same function, and hidden-state alignment
 * is not what this test is about). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define DA 128
#define DB 256

static char *copy_dir;
static double *Q; /* DA × DB, orthonormal rows */

/* Q = the first DA rows of a random DB × DB orthogonal matrix (Gram–Schmidt of Gaussians). */
static void planted_map(void) {
    ea_rng r;
    ea_rng_seed(&r, 2023);
    Q = malloc(sizeof(double) * DA * DB);
    for (int i = 0; i < DA; i++) {
        double *q = Q + (size_t)i * DB;
        for (int j = 0; j < DB; j++) q[j] = ea_rng_normal(&r);
        for (int pass = 0; pass < 2; pass++)
            for (int p = 0; p < i; p++) {
                const double *o = Q + (size_t)p * DB;
                double dot = 0;
                for (int j = 0; j < DB; j++) dot += q[j] * o[j];
                for (int j = 0; j < DB; j++) q[j] -= dot * o[j];
            }
        double nn = 0;
        for (int j = 0; j < DB; j++) nn += q[j] * q[j];
        for (int j = 0; j < DB; j++) q[j] /= sqrt(nn);
    }
}

static int copy_text_file(const char *name, const char *from_dir, const char *to_dir, const char *find, const char *repl) {
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/%s", from_dir, name);
    snprintf(dst, sizeof dst, "%s/%s", to_dir, name);
    char *data;
    size_t n;
    if (ea_read_file(src, (size_t)1 << 26, &data, &n)) return -1;
    int rc;
    if (find) {
        char *at = strstr(data, find);
        if (!at) {
            free(data);
            return -1;
        }
        size_t pre = (size_t)(at - data), fl = strlen(find), rl = strlen(repl);
        char *out = malloc(n - fl + rl + 1);
        memcpy(out, data, pre);
        memcpy(out + pre, repl, rl);
        memcpy(out + pre + rl, at + fl, n - pre - fl);
        rc = test_write_file(dst, out, n - fl + rl);
        free(out);
    } else {
        rc = test_write_file(dst, data, n);
    }
    free(data);
    return rc;
}

/* Write the 256-wide copy: embeddings (wte, wpe) times Q, every other tensor zero-padded (each
 * dimension doubled: d → 2d, 3d → 6d, 4d → 8d). */
static int setup(void **state) {
    (void)state;
    planted_map();
    copy_dir = test_tmpdir();
    if (!copy_dir) return -1;
    ea_st_file *f;
    if (ea_st_open(TEST_MODEL_DIR "/model.safetensors", &f)) {
        printf("cannot open the bundled model: %s\n", ea_last_error());
        return -1;
    }
    ea_st_writer *w;
    if (ea_st_writer_init(&w)) return -1;
    for (int i = 0; i < ea_st_count(f); i++) {
        const ea_st_tensor *t = ea_st_get(f, i);
        float *x = malloc(sizeof(float) * t->numel);
        if (ea_st_to_f32(f, t, x)) return -1;
        int64_t shape[4];
        size_t numel = 1;
        float *y;
        int embed = strstr(t->name, "wte.") || strstr(t->name, "wpe.");
        if (embed) {
            if (t->ndim != 2 || t->shape[1] != DA) return -1;
            shape[0] = t->shape[0];
            shape[1] = DB;
            numel = (size_t)shape[0] * DB;
            y = malloc(sizeof(float) * numel);
            for (int64_t r = 0; r < shape[0]; r++)
                for (int j = 0; j < DB; j++) {
                    double s = 0;
                    for (int l = 0; l < DA; l++) s += (double)x[(size_t)r * DA + l] * Q[(size_t)l * DB + j];
                    y[(size_t)r * DB + j] = (float)s;
                }
        } else {
            for (int k = 0; k < t->ndim; k++) numel *= (size_t)(shape[k] = 2 * t->shape[k]);
            y = calloc(numel, sizeof(float));
            if (t->ndim == 1)
                memcpy(y, x, sizeof(float) * t->numel);
            else if (t->ndim == 2)
                for (int64_t r = 0; r < t->shape[0]; r++)
                    memcpy(y + (size_t)r * shape[1], x + (size_t)r * t->shape[1], sizeof(float) * (size_t)t->shape[1]);
            else
                return -1;
        }
        if (ea_st_writer_add(w, t->name, EA_DTYPE_F32, t->ndim, shape, y)) {
            printf("writer: %s\n", ea_last_error());
            return -1;
        }
        free(x);
        free(y);
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", copy_dir);
    if (ea_st_writer_save(w, path)) {
        printf("writer: %s\n", ea_last_error());
        return -1;
    }
    ea_st_writer_free(w);
    ea_st_close(f);
    if (copy_text_file("config.json", TEST_MODEL_DIR, copy_dir, "\"n_embd\": 128", "\"n_embd\": 256") ||
        copy_text_file("vocab.json", TEST_MODEL_DIR, copy_dir, NULL, NULL) ||
        copy_text_file("merges.txt", TEST_MODEL_DIR, copy_dir, NULL, NULL)) {
        printf("cannot copy the config or tokenizer files into %s\n", copy_dir);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    test_rmdir(copy_dir);
    free(copy_dir);
    free(Q);
    return 0;
}

/* Row i of a basis's top-k eigenvectors: project mean + e_i (centring removes the mean). */
static double *eigvecs(const ea_esap_basis *b, int d, int k) {
    const double *mu = ea_esap_basis_mean(b);
    float *x = malloc(sizeof(float) * (size_t)d * d), *z = malloc(sizeof(float) * (size_t)d * k);
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) x[(size_t)i * d + j] = (float)(mu[j] + (i == j));
    assert_int_equal(ea_esap_basis_project(b, x, d, k, z), EA_OK);
    double *e = malloc(sizeof(double) * (size_t)d * k);
    for (size_t i = 0; i < (size_t)d * k; i++) e[i] = z[i];
    free(x);
    free(z);
    return e;
}

static void test_library_recovers_planted_map(void **state) {
    (void)state;
    ea_model *ma, *mb;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &ma), EA_OK);
    if (ea_model_load(copy_dir, &mb)) fail_msg("the written copy does not load: %s", ea_last_error());
    assert_int_equal(ea_model_config(mb)->n_embd, DB);
    int V = ea_model_config(ma)->vocab_size, k = 24;
    const float *a = ea_model_wte(ma), *b = ea_model_wte(mb);
    /* the copy holds wte·Q (float32 of the double product) */
    double werr = 0;
    for (int r = 0; r < V; r += 97)
        for (int j = 0; j < DB; j++) {
            double s = 0;
            for (int l = 0; l < DA; l++) s += (double)a[(size_t)r * DA + l] * Q[(size_t)l * DB + j];
            werr = fmax(werr, fabs(s - b[(size_t)r * DB + j]));
        }
    assert_true(werr < 1e-6);
    ea_esap_basis *ba, *bb;
    assert_int_equal(ea_esap_basis_fit(a, V, DA, &ba), EA_OK);
    assert_int_equal(ea_esap_basis_fit(b, V, DB, &bb), EA_OK);
    float *za = malloc(sizeof(float) * (size_t)V * k), *zb = malloc(sizeof(float) * (size_t)V * k);
    assert_int_equal(ea_esap_basis_project(ba, a, V, k, za), EA_OK);
    assert_int_equal(ea_esap_basis_project(bb, b, V, k, zb), EA_OK);
    double w[24 * 24];
    ea_esap_align_report rep;
    assert_int_equal(ea_esap_align_eval(za, zb, V, k, 5000, 2000, 4, w, &rep), EA_OK);
    /* The planted map in k dims: z_b = z_a·S with S = E_aᵀ Q E_b (k × k), from each side's own
     * eigenvectors and Q. */
    double *ea = eigvecs(ba, DA, k), *eb = eigvecs(bb, DB, k), S[24 * 24], serr = 0, orth = 0;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            double s = 0;
            for (int l = 0; l < DA; l++) {
                double qe = 0;
                for (int m = 0; m < DB; m++) qe += Q[(size_t)l * DB + m] * eb[(size_t)m * k + j];
                s += ea[(size_t)l * k + i] * qe;
            }
            S[i * k + j] = s;
            serr = fmax(serr, fabs(w[i * k + j] - s));
        }
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            double s = 0;
            for (int l = 0; l < k; l++) s += S[i * k + l] * S[j * k + l];
            orth = fmax(orth, fabs(s - (i == j)));
        }
    printf("planted 128 -> 256: P@1 %.4f P@10 %.4f CSLS@1 %.4f test cos %.6f; null P@1 %.4f cos %.4f; "
           "max |W - S| %.3g, S orthogonal within %.3g\n",
           rep.test.p_at_1, rep.test.p_at_10, rep.test.csls_p_at_1, rep.test.mean_cos, rep.null.p_at_1, rep.null.mean_cos,
           serr, orth);
    assert_true(orth < 1e-3);  /* the top-k eigenspaces correspond, so S is orthogonal */
    assert_true(serr < 1e-3);  /* W is the planted map */
    assert_true(rep.test.p_at_1 >= 0.999);
    assert_true(rep.test.mean_cos > 0.9999);
    assert_true(rep.null.p_at_1 < 0.01);
    free(za);
    free(zb);
    free(ea);
    free(eb);
    ea_esap_basis_free(ba);
    ea_esap_basis_free(bb);
    ea_model_free(ma);
    ea_model_free(mb);
}

static double json_number(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p) fail_msg("no \"%s\" in %s", key, json);
    return strtod(strchr(p + strlen(pat), ':') + 1, NULL);
}

static void test_cli_align_recovers_planted_map(void **state) {
    (void)state;
    const char *args[] = {"align", "--model-a", TEST_MODEL_DIR, "--model-b", copy_dir, "--repr", "wte", "--rank", "32",
                          "--anchors", "3000", "--test", "1000", "--seed", "5", "--json", NULL};
    char *out, *err;
    int rc = test_run_cli(&out, &err, args);
    if (rc != 0) fail_msg("align exited %d: %s", rc, err);
    printf("%s", out);
    assert_true(json_number(out, "rank") == 32);
    assert_true(json_number(out, "train_anchors") == 3000);
    assert_true(json_number(out, "test_anchors") == 1000);
    assert_true(json_number(out, "p_at_1") >= 0.999);
    assert_true(json_number(out, "test_cosine") > 0.9999);
    const char *null = strstr(out, "\"null\"");
    assert_non_null(null);
    assert_true(json_number(null, "p_at_1") < 0.01);
    free(out);
    free(err);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_library_recovers_planted_map),
        cmocka_unit_test(test_cli_align_recovers_planted_map),
    };
    return TEST_RUN(tests, setup, teardown);
}
