/* Public functions that no other test calls, each against its contract in include/ea/ headers with
 * expected values from definitions (IEEE bit layouts, closed forms, a second computation here):
 * size arithmetic, bf16/f16 decoding, dtype names, error records, rng, site names, projector
 * compress/reconstruct, recon-stat merging, the null Df closed form, power-law spectra, ESAP
 * representations and anchors, cache and codec sizes, model/file paths, config parsing, output
 * files. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

/* ---- core ---- */

static void test_size_arithmetic(void **state) {
    (void)state;
    size_t out = 7;
    assert_int_equal(ea_mul_size(3, 5, &out), 0);
    assert_int_equal(out, 15);
    assert_int_equal(ea_mul_size(SIZE_MAX / 2 + 1, 2, &out), -1);
    assert_int_equal(ea_mul_size(0, SIZE_MAX, &out), 0);
    assert_int_equal(out, 0);
    assert_int_equal(ea_add_size(SIZE_MAX - 1, 1, &out), 0);
    assert_true(out == SIZE_MAX);
    assert_int_equal(ea_add_size(SIZE_MAX, 1, &out), -1);
}

/* IEEE binary16 and bfloat16 from their bit fields (sign, biased exponent, fraction). */
static double decode_bits(unsigned h, int exp_bits, int frac_bits) {
    int bias = (1 << (exp_bits - 1)) - 1;
    unsigned e = (h >> frac_bits) & ((1u << exp_bits) - 1), f = h & ((1u << frac_bits) - 1);
    double s = (h >> (exp_bits + frac_bits)) & 1 ? -1.0 : 1.0;
    if (e == (1u << exp_bits) - 1) return f ? NAN : s * INFINITY;
    if (e == 0) return s * ldexp((double)f, 1 - bias - frac_bits);
    return s * ldexp((double)((1u << frac_bits) | f), (int)e - bias - frac_bits);
}

static void test_half_and_bfloat16(void **state) {
    (void)state;
    uint16_t *all = malloc(sizeof(uint16_t) * 65536);
    float *arr = malloc(sizeof(float) * 65536);
    for (unsigned h = 0; h < 65536; h++) all[h] = (uint16_t)h;
    ea_f16_to_f32_array(all, arr, 65536);
    for (unsigned h = 0; h < 65536; h++) {
        double want = decode_bits(h, 8, 7);
        float got = ea_bf16_to_f32((uint16_t)h);
        if (isnan(want)) assert_true(isnan(got));
        else if ((double)got != want) fail_msg("bf16 0x%04x: %g, want %g", h, (double)got, want);
        want = decode_bits(h, 5, 10);
        if (isnan(want)) assert_true(isnan(arr[h]));
        else if ((double)arr[h] != want || arr[h] != ea_f16_to_f32((uint16_t)h))
            fail_msg("f16 0x%04x: array %g, scalar %g, want %g", h, (double)arr[h], (double)ea_f16_to_f32((uint16_t)h), want);
    }
    assert_true(ea_bf16_to_f32(0x4049) == 3.140625f);
    assert_true(ea_bf16_to_f32(0xC000) == -2.0f);
    assert_true(signbit(ea_bf16_to_f32(0x8000)) && ea_bf16_to_f32(0x8000) == 0.0f);
    free(all);
    free(arr);
}

static void test_error_record(void **state) {
    (void)state;
    assert_int_equal(ea_error(EA_ERR_ARG, "file %s: value %d is out of range", "x.json", 42), EA_ERR_ARG);
    assert_string_equal(ea_last_error(), "file x.json: value 42 is out of range");
    assert_int_equal(ea_error(EA_ERR_IO, "%s", "second"), EA_ERR_IO);
    assert_string_equal(ea_last_error(), "second");
    assert_non_null(ea_status_name(EA_ERR_IO));
}

static void test_rng_u64(void **state) {
    (void)state;
    ea_rng a, b, c;
    ea_rng_seed(&a, 7);
    ea_rng_seed(&b, 7);
    ea_rng_seed(&c, 8);
    long ones[64] = {0};
    int differ = 0;
    const int N = 20000;
    for (int i = 0; i < N; i++) {
        uint64_t x = ea_rng_u64(&a), y = ea_rng_u64(&b), z = ea_rng_u64(&c);
        assert_true(x == y);
        differ += x != z;
        for (int k = 0; k < 64; k++) ones[k] += (x >> k) & 1;
    }
    assert_true(differ > N - 5);
    /* each bit is a fair coin: 20000 flips, |ones − 10000| < 6 standard deviations (424) */
    for (int k = 0; k < 64; k++) assert_true(labs(ones[k] - N / 2) < 6 * 71);
}

static void test_process_tune_returns(void **state) {
    (void)state;
    /* With EA_NO_REEXEC=1 it must return (it re-executes the process otherwise). */
    setenv("EA_NO_REEXEC", "1", 1);
    char *argv[] = {(char *)"test_api", NULL};
    ea_process_tune(argv);
    unsetenv("EA_NO_REEXEC");
}

/* Entries of a directory other than . and .. */
static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void test_outfile(void **state) {
    (void)state;
    /* the named temporary (o.tmp) is what this case checks; where O_TMPFILE works, o.tmp is NULL */
    setenv("EA_NO_O_TMPFILE", "1", 1);
    char *dir = test_tmpdir(), path[600];
    snprintf(path, sizeof path, "%s/out.txt", dir);
    ea_outfile o;
    /* Where the filesystem has O_TMPFILE the temporary has no name at all until commit: nothing
     * is in the directory before it, and o.tmp is NULL. */
    assert_int_equal(ea_outfile_open(&o, path), EA_OK);
    if (!o.tmp) {
        fputs("x", (FILE *)o.fp);
        assert_int_equal(count_entries(dir), 0);
        ea_outfile_abort(&o);
        assert_int_equal(count_entries(dir), 0);
    } else
        ea_outfile_abort(&o);
    /* The named temporary "<path>.tmp.XXXXXX" (forced here; the fallback without O_TMPFILE). */
    setenv("EA_NO_O_TMPFILE", "1", 1);
    assert_int_equal(ea_outfile_open(&o, path), EA_OK);
    assert_non_null(o.tmp);
    char *tmp = strdup(o.tmp);
    fputs("hello\n", (FILE *)o.fp);
    assert_int_equal(access(path, F_OK), -1); /* nothing at the final path before commit */
    assert_int_equal(ea_outfile_commit(&o), EA_OK);
    char *data;
    size_t n;
    assert_int_equal(ea_read_file(path, 100, &data, &n), EA_OK);
    assert_int_equal(n, 6);
    assert_memory_equal(data, "hello\n", 6);
    free(data);
    assert_int_equal(access(tmp, F_OK), -1);
    free(tmp);
    /* abort: the temporary goes, the committed file stays as it was */
    assert_int_equal(ea_outfile_open(&o, path), EA_OK);
    tmp = strdup(o.tmp);
    fputs("partial", (FILE *)o.fp);
    ea_outfile_abort(&o);
    assert_int_equal(access(tmp, F_OK), -1);
    free(tmp);
    assert_int_equal(ea_read_file(path, 100, &data, &n), EA_OK);
    assert_int_equal(n, 6);
    free(data);
    /* remove_temporaries unlinks every open temporary (what a signal handler calls) */
    ea_outfile a, b;
    char p2[600];
    snprintf(p2, sizeof p2, "%s/two.txt", dir);
    assert_int_equal(ea_outfile_open(&a, path), EA_OK);
    assert_int_equal(ea_outfile_open(&b, p2), EA_OK);
    assert_int_equal(access(a.tmp, F_OK), 0);
    ea_outfile_remove_temporaries();
    assert_int_equal(access(a.tmp, F_OK), -1);
    assert_int_equal(access(b.tmp, F_OK), -1);
    ea_outfile_abort(&a);
    ea_outfile_abort(&b);
    assert_int_equal(access(p2, F_OK), -1);
    unsetenv("EA_NO_O_TMPFILE");
    test_rmdir(dir);
    free(dir);
    unsetenv("EA_NO_O_TMPFILE");
}

/* ---- io ---- */

static void test_dtype_names_and_paths(void **state) {
    (void)state;
    /* the safetensors dtype strings and element sizes */
    struct { ea_dtype t; const char *name; size_t size; } want[] = {
        {EA_DTYPE_F32, "F32", 4}, {EA_DTYPE_F16, "F16", 2}, {EA_DTYPE_BF16, "BF16", 2},
        {EA_DTYPE_I32, "I32", 4}, {EA_DTYPE_I64, "I64", 8}, {EA_DTYPE_F64, "F64", 8}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        assert_string_equal(ea_dtype_name(want[i].t), want[i].name);
        assert_int_equal(ea_dtype_size(want[i].t), want[i].size);
    }
    const char *fx = TEST_FIXTURE_DIR "/gpt2-micro.reference.safetensors";
    ea_st_file *f;
    assert_int_equal(ea_st_open(fx, &f), EA_OK);
    assert_string_equal(ea_st_path(f), fx);
    ea_st_close(f);
    ea_model *m;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    assert_string_equal(ea_model_dir(m), TEST_MODEL_DIR);
    ea_model_free(m);
}

static void test_config_parse(void **state) {
    (void)state;
    const char *js = "{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_head\": 4, \"n_layer\": 3, \"n_positions\": 96, "
                     "\"vocab_size\": 1000, \"layer_norm_epsilon\": 1e-5}";
    ea_config cfg;
    assert_int_equal(ea_config_parse(js, strlen(js), "mem.json", &cfg), EA_OK);
    assert_int_equal(cfg.n_embd, 64);
    assert_int_equal(cfg.n_head, 4);
    assert_int_equal(cfg.n_layer, 3);
    assert_int_equal(cfg.n_positions, 96);
    assert_int_equal(cfg.vocab_size, 1000);
    assert_true(fabsf(cfg.layer_norm_epsilon - 1e-5f) < 1e-12f);
    /* the default window is min(n_positions, 512) */
    assert_int_equal(ea_compress_default_ctx(&cfg), 96);
    cfg.n_positions = 2048;
    assert_int_equal(ea_compress_default_ctx(&cfg), EA_COMPRESS_DEFAULT_CTX);
    const char *bad = "{\"n_embd\": 64, \"n_head\": 5, \"n_layer\": 3}";
    assert_int_not_equal(ea_config_parse(bad, strlen(bad), "bad.json", &cfg), EA_OK);
    printf("bad config: %s\n", ea_last_error());
    assert_non_null(strstr(ea_last_error(), "bad.json"));
}

/* ---- model, kv cache, codecs ---- */

static void test_site_parse(void **state) {
    (void)state;
    const char *names[] = {"hidden", "q", "k", "v"};
    for (int s = 0; s < 4; s++) {
        ea_site got;
        assert_int_equal(ea_site_parse(names[s], &got), EA_OK);
        assert_int_equal(got, s);
        assert_string_equal(ea_site_name((ea_site)s), names[s]);
    }
    ea_site got;
    assert_int_equal(ea_site_parse("attn", &got), EA_ERR_ARG);
    assert_int_equal(ea_site_parse("", &got), EA_ERR_ARG);
}

static void test_kvcache_and_codec_sizes(void **state) {
    (void)state;
    ea_model *m;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    const ea_config *cfg = ea_model_config(m);
    int L = cfg->n_layer, d = cfg->n_embd;
    ea_kvcache *c;
    assert_int_equal(ea_kvcache_init(&c, cfg, 40, NULL), EA_OK);
    assert_int_equal(ea_kvcache_capacity(c), 40);
    assert_int_equal(ea_kvcache_len(c), 0);
    assert_null(ea_kvcache_codec(c));
    /* float32 rows: K and V of every layer, d floats each */
    assert_int_equal(ea_kvcache_bytes_for(c, 10), (size_t)10 * L * 2 * d * 4);
    int ids[5] = {464, 2068, 7586, 21831, 18045};
    assert_int_equal(ea_model_forward(m, c, ids, 5, NULL, 0), EA_OK);
    assert_int_equal(ea_kvcache_len(c), 5);
    ea_kvcache_reset(c);
    assert_int_equal(ea_kvcache_len(c), 0);
    ea_kvcache_free(c);
    assert_int_equal(ea_kv_codec_rows_stored(NULL, 7), 7);

    /* q8_0: 32 values per block, an f16 scale and 32 int8 (34 bytes) */
    ea_kv_codec *q8;
    assert_int_equal(ea_kv_codec_fit_model(m, "q8", NULL, 0, 64, NULL, NULL, &q8), EA_OK);
    size_t row = (size_t)(d / 32) * 34;
    assert_int_equal(ea_kv_codec_bytes(q8, 10), (size_t)10 * L * 2 * row);
    assert_int_equal(ea_kv_codec_rows_stored(q8, 10), 10);
    /* the shape accessors report the model's (gpt2-micro: no GQA, so the codec has every head) */
    assert_string_equal(ea_kv_codec_name(q8), "q8");
    assert_int_equal(ea_kv_codec_n_layer(q8), L);
    assert_int_equal(ea_kv_codec_n_head(q8), cfg->n_head);
    assert_int_equal(ea_kv_codec_dim(q8), d);
    assert_true(ea_kv_codec_resident(q8) >= ea_kv_codec_overhead(q8));
    assert_int_equal(ea_kvcache_init(&c, cfg, 40, q8), EA_OK);
    assert_ptr_equal(ea_kvcache_codec(c), q8);
    assert_int_equal(ea_kvcache_bytes_for(c, 10), ea_kv_codec_bytes(q8, 10));
    ea_kvcache_free(c);
    ea_kv_codec_free(q8);
    ea_model_free(m);
}

/* ---- spectral, compress ---- */

static void test_null_df_closed_form(void **state) {
    (void)state;
    /* Df of the Wishart null: m·d / (m + d + 1) with m = n − 1 (the mean is estimated), >= 1 */
    struct { int n, d; } cases[] = {{101, 50}, {1000, 64}, {65, 64}, {11, 300}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        double m = cases[i].n - 1.0, d = cases[i].d, want = m * d / (m + d + 1);
        assert_true(fabs(ea_spectrum_null_df(cases[i].n, cases[i].d) - want) < 1e-12 * want);
    }
    assert_true(ea_spectrum_null_df(2, 1) == 1.0); /* m/(m+2) = 1/3 is clamped to 1 */
    assert_true(ea_spectrum_null_df(1, 5) == 0.0);
    ea_cov *c;
    assert_int_equal(ea_cov_init(&c, 7), EA_OK);
    assert_int_equal(ea_cov_dim(c), 7);
    ea_cov_free(c);
}

static void test_projector_compress_reconstruct(void **state) {
    (void)state;
    int d = 10, k = 4, n = 6, ldx = 13;
    /* covariance with eigenvectors along rotated axes: build from a random orthogonal basis */
    ea_rng r;
    ea_rng_seed(&r, 3);
    double cov[100] = {0}, mean[10], lam[10];
    for (int i = 0; i < d; i++) {
        mean[i] = ea_rng_normal(&r);
        lam[i] = 10.0 / (i + 1);
    }
    double qm[100];
    for (int i = 0; i < d * d; i++) qm[i] = ea_rng_normal(&r);
    for (int j = 0; j < d; j++) { /* Gram–Schmidt on columns */
        for (int p = 0; p < j; p++) {
            double dot = 0;
            for (int i = 0; i < d; i++) dot += qm[i * d + j] * qm[i * d + p];
            for (int i = 0; i < d; i++) qm[i * d + j] -= dot * qm[i * d + p];
        }
        double nn = 0;
        for (int i = 0; i < d; i++) nn += qm[i * d + j] * qm[i * d + j];
        for (int i = 0; i < d; i++) qm[i * d + j] /= sqrt(nn);
    }
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++)
            for (int l = 0; l < d; l++) cov[i * d + j] += qm[i * d + l] * lam[l] * qm[j * d + l];
    ea_projector *p;
    assert_int_equal(ea_projector_from_matrix(cov, mean, d, (ea_rank_rule){0, k}, (ea_site_ref){EA_SITE_HIDDEN, 0, -1}, &p),
                     EA_OK);
    const float *E = ea_projector_basis(p), *mu = ea_projector_mean(p);
    /* the basis spans the top-k eigenvectors: |<E_j, q_j>| = 1 */
    for (int j = 0; j < k; j++) {
        double dot = 0;
        for (int i = 0; i < d; i++) dot += E[i * k + j] * qm[i * d + j];
        assert_true(fabs(fabs(dot) - 1) < 1e-5);
    }
    float x[6 * 13], z[6 * 4], xr[6 * 13], xt[6 * 13], zt[6 * 4];
    for (int i = 0; i < n * ldx; i++) x[i] = (float)ea_rng_normal(&r);
    assert_int_equal(ea_projector_compress(p, x, n, ldx, z), EA_OK);
    for (int i = 0; i < n * ldx; i++) xr[i] = 99.0f; /* the stride gap must stay untouched */
    assert_int_equal(ea_projector_reconstruct(p, z, n, xr, ldx), EA_OK);
    for (int row = 0; row < n; row++) {
        for (int j = 0; j < k; j++) {
            double s = 0;
            for (int i = 0; i < d; i++) s += ((double)x[row * ldx + i] - mu[i]) * E[i * k + j];
            assert_true(fabs(s - z[row * k + j]) < 1e-5);
        }
        for (int i = 0; i < d; i++) {
            double s = mu[i];
            for (int j = 0; j < k; j++) s += (double)z[row * k + j] * E[i * k + j];
            assert_true(fabs(s - xr[row * ldx + i]) < 1e-5);
        }
        for (int i = d; i < ldx; i++) assert_true(xr[row * ldx + i] == 99.0f);
    }
    /* and the one-call round trip gives the same */
    assert_int_equal(ea_projector_roundtrip(p, x, n, ldx, xt, ldx, zt), EA_OK);
    for (int row = 0; row < n; row++)
        for (int i = 0; i < d; i++) assert_true(fabsf(xt[row * ldx + i] - xr[row * ldx + i]) < 1e-5f);
    /* recon stats over two halves, merged, equal one pass over all rows and the definitions */
    ea_recon_stats all = {0}, h1 = {0}, h2 = {0};
    ea_recon_stats_add(&all, x, ldx, xr, ldx, n, d);
    ea_recon_stats_add(&h1, x, ldx, xr, ldx, 2, d);
    ea_recon_stats_add(&h2, x + 2 * ldx, ldx, xr + 2 * ldx, ldx, n - 2, d);
    ea_recon_stats_merge(&h1, &h2);
    assert_int_equal(h1.rows, (size_t)n);
    assert_true(fabs(h1.err2 - all.err2) < 1e-9 * all.err2);
    assert_true(fabs(h1.norm2 - all.norm2) < 1e-9 * all.norm2);
    assert_true(fabs(h1.cos_sum - all.cos_sum) < 1e-9);
    double e2 = 0, n2 = 0, cs = 0;
    for (int row = 0; row < n; row++) {
        double ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < d; i++) {
            double a = x[row * ldx + i], b = xr[row * ldx + i];
            e2 += (a - b) * (a - b);
            n2 += a * a;
            ab += a * b;
            aa += a * a;
            bb += b * b;
        }
        cs += ab / sqrt(aa * bb);
    }
    assert_true(fabs(ea_recon_stats_rel_error(&h1) - sqrt(e2 / n2)) < 1e-9);
    assert_true(fabs(ea_recon_stats_cosine(&h1) - cs / n) < 1e-9);
    ea_recon_stats empty = {0};
    ea_recon_stats_merge(&h1, &empty);
    assert_int_equal(h1.rows, (size_t)n);
    ea_projector_free(p);
}

/* ---- esap ---- */

static void test_powerlaw_and_basis_dim(void **state) {
    (void)state;
    double ev[50];
    ea_esap_powerlaw_spectrum(50, 1.3, ev);
    for (int i = 0; i < 50; i++) assert_true(fabs(ev[i] / ev[0] - pow(i + 1.0, -1.3)) < 1e-12);
    ea_esap_powerlaw_spectrum(5, 0.0, ev);
    for (int i = 1; i < 5; i++) assert_true(ev[i] == ev[0]);
    float x[40 * 6];
    ea_rng r;
    ea_rng_seed(&r, 1);
    for (int i = 0; i < 40 * 6; i++) x[i] = (float)ea_rng_normal(&r);
    ea_esap_basis *b;
    assert_int_equal(ea_esap_basis_fit(x, 40, 6, &b), EA_OK);
    assert_int_equal(ea_esap_basis_dim(b), 6);
    ea_esap_basis_free(b);
}

static void test_repr_layers_names_and_anchors(void **state) {
    (void)state;
    ea_model *m;
    assert_int_equal(ea_model_load(TEST_MODEL_DIR, &m), EA_OK);
    int L = ea_model_config(m)->n_layer, layer;
    char name[32];
    ea_esap_repr r;
    assert_int_equal(ea_esap_repr_parse("hidden:1,3", &r), EA_OK);
    assert_int_equal(ea_esap_repr_layer(&r, 0, m, &layer), EA_OK);
    assert_int_equal(layer, 1);
    assert_int_equal(ea_esap_repr_layer(&r, 1, m, &layer), EA_OK);
    assert_int_equal(layer, 3);
    ea_esap_repr_name(&r, 1, m, name, sizeof name);
    assert_string_equal(name, "hidden:3");
    assert_int_equal(ea_esap_repr_parse("hidden:last", &r), EA_OK);
    assert_int_equal(ea_esap_repr_layer(&r, 0, m, &layer), EA_OK);
    assert_int_equal(layer, L);
    assert_int_equal(ea_esap_repr_parse("hidden:9", &r), EA_OK);
    assert_int_equal(ea_esap_repr_layer(&r, 0, m, &layer), EA_ERR_ARG);
    ea_esap_repr_name(&r, 0, m, name, sizeof name);
    assert_string_equal(name, "hidden:?");
    assert_int_equal(ea_esap_repr_parse("wte", &r), EA_OK);
    ea_esap_repr_name(&r, 0, m, name, sizeof name);
    assert_string_equal(name, "wte");

    /* Anchors of a model with itself through the whole path: hidden states at layer 2 averaged
     * per token over a text; each anchor row equals the token's mean hidden state collected
     * directly, and both sides hold the same rows. */
    ea_tokenizer *t;
    assert_int_equal(ea_tokenizer_load_dir(TEST_MODEL_DIR, &t), EA_OK);
    char *dir = test_tmpdir(), path[600];
    snprintf(path, sizeof path, "%s/t.txt", dir);
    const char *text = "the cat sat on the mat and the dog sat on the log while the cat watched the dog";
    assert_int_equal(test_write_file(path, text, strlen(text)), 0);
    ea_esap_source src = {.text_path = path, .max_tokens = 0, .ctx = 16, .progress = NULL};
    assert_int_equal(ea_esap_repr_parse("hidden:2", &src.repr), EA_OK);
    ea_esap_anchors an;
    assert_int_equal(ea_esap_anchors_from_models(m, t, m, t, &src, &an), EA_OK);
    int *ids;
    size_t n;
    assert_int_equal(ea_tokenizer_encode(t, text, strlen(text), 0, &ids, &n), EA_OK);
    ea_esap_hidden *h;
    assert_int_equal(ea_esap_hidden_collect(m, 2, ids, n, 16, NULL, NULL, "direct", &h), EA_OK);
    assert_int_equal(ea_esap_hidden_dim(h), ea_model_config(m)->n_embd);
    int distinct = 0;
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < i; j++) seen |= ids[j] == ids[i];
        distinct += !seen;
    }
    printf("anchors: %d of %d distinct tokens, d %d/%d\n", an.n, distinct, an.d_a, an.d_b);
    assert_int_equal(an.n, distinct);
    float *mean = malloc(sizeof(float) * an.d_a);
    for (int i = 0; i < an.n; i++) {
        assert_int_equal(an.id_a[i], an.id_b[i]);
        assert_int_equal(ea_esap_hidden_token_mean(h, an.id_a[i], mean), EA_OK);
        assert_true(test_max_abs_diff(an.a + (size_t)i * an.d_a, mean, (size_t)an.d_a) < 1e-4);
        assert_true(test_max_abs_diff(an.b + (size_t)i * an.d_b, mean, (size_t)an.d_b) < 1e-4);
    }
    free(mean);
    free(ids);
    ea_esap_hidden_free(h);
    ea_esap_anchors_free(&an);
    ea_tokenizer_free(t);
    test_rmdir(dir);
    free(dir);
    ea_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_arithmetic),
        cmocka_unit_test(test_half_and_bfloat16),
        cmocka_unit_test(test_error_record),
        cmocka_unit_test(test_rng_u64),
        cmocka_unit_test(test_process_tune_returns),
        cmocka_unit_test(test_outfile),
        cmocka_unit_test(test_dtype_names_and_paths),
        cmocka_unit_test(test_config_parse),
        cmocka_unit_test(test_site_parse),
        cmocka_unit_test(test_kvcache_and_codec_sizes),
        cmocka_unit_test(test_null_df_closed_form),
        cmocka_unit_test(test_projector_compress_reconstruct),
        cmocka_unit_test(test_powerlaw_and_basis_dim),
        cmocka_unit_test(test_repr_layers_names_and_anchors),
    };
    return TEST_RUN(tests, NULL, NULL);
}
