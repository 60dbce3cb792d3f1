/* KV codecs: each round-trips within its analytic error bound, attention on compressed rows equals
 * attention on the decoded rows, and bits/value match the cache's allocation. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib_internal.h"
#include "kv/kv_quant.h"
#include "kv/kv_rows.h"
#include "testutil.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static ea_config small_cfg(void) {
    ea_config c = {0};
    c.n_layer = 2;
    c.n_head = 4;
    c.n_embd = 64;
    c.n_positions = 256;
    c.vocab_size = 100;
    c.n_inner = 256;
    c.layer_norm_epsilon = 1e-5f;
    return c;
}

/* Random orthogonal d × d matrix (Gram-Schmidt of a Gaussian matrix), row-major. */
static void random_orthogonal(ea_rng *r, int d, double *u) {
    for (int i = 0; i < d * d; i++) u[i] = ea_rng_normal(r);
    for (int j = 0; j < d; j++) { /* columns */
        for (int k = 0; k < j; k++) {
            double dot = 0;
            for (int i = 0; i < d; i++) dot += u[i * d + j] * u[i * d + k];
            for (int i = 0; i < d; i++) u[i * d + j] -= dot * u[i * d + k];
        }
        double nrm = 0;
        for (int i = 0; i < d; i++) nrm += u[i * d + j] * u[i * d + j];
        nrm = sqrt(nrm);
        for (int i = 0; i < d; i++) u[i * d + j] /= nrm;
    }
}

/* A Gaussian source per (layer, kind): x = mean + U diag(sqrt λ) z, λ_j decaying like j^-1.5
 * times a per-part scale. The stats hold the exact mean and covariance. */
typedef struct {
    ea_kv_stats st;
    double *u[2];   /* per kind, per layer: d × d */
    double *lam[2]; /* per kind, per layer: d */
} source;

static void source_init(source *s, const ea_config *c, uint64_t seed) {
    int L = c->n_layer, d = c->n_embd;
    ea_rng r;
    ea_rng_seed(&r, seed);
    assert_int_equal(ea_kv_stats_alloc(&s->st, L, d), EA_OK);
    s->st.n = 1e6;
    for (int k = 0; k < 2; k++) {
        s->u[k] = malloc(sizeof(double) * (size_t)L * d * d);
        s->lam[k] = malloc(sizeof(double) * (size_t)L * d);
        for (int l = 0; l < L; l++) {
            double *u = s->u[k] + (size_t)l * d * d, *lam = s->lam[k] + (size_t)l * d;
            double scale = 0.5 + l + 2.0 * k;
            random_orthogonal(&r, d, u);
            for (int j = 0; j < d; j++) lam[j] = scale * pow(1.0 + j, -1.5);
            for (int i = 0; i < d; i++) s->st.mean[k][(size_t)l * d + i] = ea_rng_normal(&r) * 0.3;
            double *cov = s->st.cov[k] + (size_t)l * d * d;
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++) {
                    double a = 0;
                    for (int m = 0; m < d; m++) a += u[i * d + m] * lam[m] * u[j * d + m];
                    cov[i * d + j] = a;
                }
        }
    }
}

static void source_free(source *s) {
    ea_kv_stats_free(&s->st);
    for (int k = 0; k < 2; k++) {
        free(s->u[k]);
        free(s->lam[k]);
    }
}

static void source_sample(const source *s, ea_rng *r, int layer, int kind, float *x) {
    int d = s->st.d;
    const double *u = s->u[kind] + (size_t)layer * d * d, *lam = s->lam[kind] + (size_t)layer * d;
    double z[d];
    for (int j = 0; j < d; j++) z[j] = ea_rng_normal(r) * sqrt(lam[j]);
    for (int i = 0; i < d; i++) {
        double a = s->st.mean[kind][(size_t)layer * d + i];
        for (int j = 0; j < d; j++) a += u[i * d + j] * z[j];
        x[i] = (float)a;
    }
}

/* A metric like the eval's: per layer a random PSD matrix (K: a query second moment, V: W Wᵀ) and,
 * optionally, part sensitivities for pooling. */
static void metric_init(ea_kv_metric *mt, const ea_config *c, uint64_t seed, int with_weights) {
    int L = c->n_layer, d = c->n_embd;
    ea_rng r;
    ea_rng_seed(&r, seed);
    memset(mt, 0, sizeof *mt);
    mt->n_layer = L;
    mt->d = d;
    mt->part_weight = NULL;
    double *g = malloc(sizeof(double) * (size_t)d * d);
    for (int k = 0; k < 2; k++) {
        mt->m[k] = malloc(sizeof(double) * (size_t)L * d * d);
        for (int l = 0; l < L; l++) {
            for (int i = 0; i < d * d; i++) g[i] = ea_rng_normal(&r) * (1 + (i % d) % 7);
            double *m = mt->m[k] + (size_t)l * d * d;
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++) {
                    double a = 0;
                    for (int q = 0; q < d; q++) a += g[i * d + q] * g[j * d + q];
                    m[i * d + j] = a / d;
                }
        }
    }
    free(g);
    if (with_weights) {
        mt->part_weight = malloc(sizeof(double) * 2 * L);
        for (int p = 0; p < 2 * L; p++) mt->part_weight[p] = 0.2 + ea_rng_uniform(&r);
    }
}

static void metric_free(ea_kv_metric *mt) {
    free(mt->part_weight);
    ea_kv_metric_free(mt);
}

static ea_kv_codec *make_ex(const char *spec, const ea_config *c, const ea_kv_stats *st, const ea_kv_metric *mt) {
    ea_kv_codec *codec = NULL;
    ea_status s = ea_kv_codec_create_ex(spec, c, st, mt, &codec);
    if (s) printf("create %s: %s\n", spec, ea_last_error());
    assert_int_equal(s, EA_OK);
    return codec;
}

static ea_kv_codec *make(const char *spec, const ea_config *c, const ea_kv_stats *st) {
    ea_kv_codec *codec = NULL;
    ea_status s = ea_kv_codec_create(spec, c, st, &codec);
    if (s) printf("create %s: %s\n", spec, ea_last_error());
    assert_int_equal(s, EA_OK);
    return codec;
}

static void roundtrip(const ea_kv_codec *codec, int layer, int kind, const float *x, float *y) {
    size_t rb = codec->ops->row_bytes(codec, layer, (ea_kv_kind)kind);
    size_t sb = ea_kv_codec_seq_bytes(codec, layer, (ea_kv_kind)kind);
    /* row 5 of a buffer laid out from row 0 (it may share bytes with its block) */
    unsigned char *buf = calloc(1, ea_kv_codec_buffer_bytes(codec, layer, (ea_kv_kind)kind, 6)), *row = buf + sb + 5 * rb;
    codec->ops->encode(codec, layer, (ea_kv_kind)kind, 5, x, row);
    codec->ops->decode(codec, layer, (ea_kv_kind)kind, 5, 1, row, y);
    free(buf);
}

static void test_f32_exact(void **state) {
    ea_config c = small_cfg();
    ea_kv_codec *codec = make("f32", &c, NULL);
    ea_rng r;
    ea_rng_seed(&r, 1);
    float x[64], y[64];
    for (int i = 0; i < 64; i++) x[i] = (float)(ea_rng_normal(&r) * 1e3);
    x[3] = FLT_MIN / 4; /* subnormal survives */
    roundtrip(codec, 1, 1, x, y);
    assert_memory_equal(x, y, sizeof x);
    assert_true(ea_kv_codec_bits_per_value(codec) == 32.0);
    assert_int_equal(ea_kv_codec_overhead(codec), 0);
    ea_kv_codec_free(codec);
}

static void test_f16_bound(void **state) {
    ea_config c = small_cfg();
    ea_kv_codec *codec = make("f16", &c, NULL);
    ea_rng r;
    ea_rng_seed(&r, 2);
    float x[64], y[64];
    double worst = 0;
    for (int it = 0; it < 200; it++) {
        for (int i = 0; i < 64; i++) x[i] = (float)(ea_rng_normal(&r) * pow(10.0, ea_rng_uniform(&r) * 6 - 3));
        roundtrip(codec, 0, 0, x, y);
        for (int i = 0; i < 64; i++) {
            double rel = fabs((double)y[i] - x[i]) / fabs((double)x[i]);
            if (fabs(x[i]) >= 6.2e-5) { /* normal halves: round to nearest, 11 significant bits */
                assert_true(rel <= ldexp(1.0, -11));
                if (rel > worst) worst = rel;
            }
        }
    }
    printf("f16: max relative error %.3g (bound %.3g)\n", worst, ldexp(1.0, -11));
    assert_true(ea_kv_codec_bits_per_value(codec) == 16.0);
    ea_kv_codec_free(codec);
}

static float f16r(float v) { return ea_f16_to_f32(ea_f32_to_f16(v)); }

static void test_q8_bound(void **state) {
    ea_config c = small_cfg();
    ea_kv_codec *codec = make("q8", &c, NULL);
    assert_int_equal(codec->ops->row_bytes(codec, 0, EA_KV_K), 2 * 34);
    assert_true(fabs(ea_kv_codec_bits_per_value(codec) - 8.5) < 1e-12);
    ea_rng r;
    ea_rng_seed(&r, 3);
    float x[64], y[64];
    double worst = 0;
    for (int it = 0; it < 500; it++) {
        double sc = pow(10.0, ea_rng_uniform(&r) * 4 - 2);
        for (int i = 0; i < 64; i++) x[i] = (float)(ea_rng_normal(&r) * sc);
        if (it == 0) memset(x, 0, sizeof x); /* zero block: scale 0 */
        roundtrip(codec, 1, 0, x, y);
        for (int b = 0; b < 2; b++) {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
            double d = amax / 127.0f, dh = f16r((float)d);
            /* |x - q·d| <= d/2 from rounding, plus |q|·|d - f16(d)| from storing the scale in f16 */
            double bound = d / 2 + 127 * fabs(d - dh) + 4 * FLT_EPSILON * amax;
            for (int j = 0; j < 32; j++) {
                double e = fabs((double)y[b * 32 + j] - x[b * 32 + j]);
                assert_true(e <= bound);
                if (d > 0 && e / d > worst) worst = e / d;
            }
        }
    }
    printf("q8: max error %.4f d (bound 0.5 d + f16 scale rounding)\n", worst);
    ea_kv_codec_free(codec);
}

static void test_q4_bound_and_layout(void **state) {
    ea_config c = small_cfg();
    ea_kv_codec *codec = make("q4", &c, NULL);
    assert_int_equal(codec->ops->row_bytes(codec, 0, EA_KV_V), 2 * 18);
    assert_true(fabs(ea_kv_codec_bits_per_value(codec) - 4.5) < 1e-12);
    /* llama.cpp q4_0 layout: x_j = j - 16 in the first block: max = -16, d = 2, byte j holds
     * q(x_j) in its low nibble and q(x_{16+j}) in its high nibble, q = min(15, (int)(x/d + 8.5)). */
    float x[64], y[64];
    for (int i = 0; i < 64; i++) x[i] = (float)(i < 32 ? i - 16 : 0);
    unsigned char buf[36];
    codec->ops->encode(codec, 0, EA_KV_K, 0, x, buf);
    uint16_t h;
    memcpy(&h, buf, 2);
    assert_true(ea_f16_to_f32(h) == 2.0f);
    for (int j = 0; j < 16; j++) {
        int q0 = (int)((j - 16) / 2.0f + 8.5f), q1 = (int)(j / 2.0f + 8.5f);
        if (q1 > 15) q1 = 15;
        assert_int_equal(buf[2 + j], q0 | (q1 << 4));
    }
    ea_rng r;
    ea_rng_seed(&r, 4);
    double worst = 0;
    for (int it = 0; it < 500; it++) {
        double sc = pow(10.0, ea_rng_uniform(&r) * 4 - 2);
        for (int i = 0; i < 64; i++) x[i] = (float)(ea_rng_normal(&r) * sc);
        roundtrip(codec, 1, 1, x, y);
        for (int b = 0; b < 2; b++) {
            float amax = 0, mx = 0;
            for (int j = 0; j < 32; j++)
                if (fabsf(x[b * 32 + j]) > amax) { amax = fabsf(x[b * 32 + j]); mx = x[b * 32 + j]; }
            double d = mx / -8.0f, ad = fabs(d), dh = f16r((float)d);
            for (int j = 0; j < 32; j++) {
                double z = x[b * 32 + j] / d;
                /* rounding error d/2; values beyond +7.5 d clamp to level 7 (error up to d); plus
                 * |q - 8| <= 8 times the f16 scale rounding */
                double bound = (z < 7.5 ? ad / 2 : ad) + 8 * fabs(d - dh) + 8 * FLT_EPSILON * amax;
                double e = fabs((double)y[b * 32 + j] - x[b * 32 + j]);
                assert_true(e <= bound);
                if (z < 7.5 && e / ad > worst) worst = e / ad;
            }
        }
    }
    printf("q4: max error %.4f |d| on unclamped values (bound 0.5 |d| + f16 scale rounding)\n", worst);
    ea_kv_codec_free(codec);
}

static void test_pca_full_rank_exact(void **state) {
    ea_config c = small_cfg();
    source s;
    source_init(&s, &c, 5);
    const char *specs[] = {"pca:64", "pca-head:16"};
    ea_rng r;
    ea_rng_seed(&r, 6);
    for (int k = 0; k < 2; k++) {
        ea_kv_codec *codec = make(specs[k], &c, &s.st);
        assert_true(fabs(ea_kv_codec_bits_per_value(codec) - 32.0) < 1e-12);
        double worst = 0;
        float x[64], y[64];
        for (int it = 0; it < 50; it++) {
            source_sample(&s, &r, 1, 1, x);
            roundtrip(codec, 1, 1, x, y);
            double e = test_max_abs_diff(x, y, 64);
            if (e > worst) worst = e;
        }
        printf("%s (full rank): max reconstruction error %.3g\n", specs[k], worst);
        assert_true(worst < 1e-5);
        ea_kv_codec_free(codec);
    }
    source_free(&s);
}

/* Attention on encoded rows (ops->attend) equals ea_attention_ref on the decoded rows. */
static double attend_vs_ref(const ea_kv_codec *codec, const source *s, int nq, int pos0, uint64_t seed) {
    int d = codec->d, T = pos0 + nq, layer = 1;
    ea_rng r;
    ea_rng_seed(&r, seed);
    size_t rbk = codec->ops->row_bytes(codec, layer, EA_KV_K), rbv = codec->ops->row_bytes(codec, layer, EA_KV_V);
    size_t sk = ea_kv_codec_seq_bytes(codec, layer, EA_KV_K), sv = ea_kv_codec_seq_bytes(codec, layer, EA_KV_V);
    unsigned char *kmem = calloc(1, ea_kv_codec_buffer_bytes(codec, layer, EA_KV_K, (size_t)T));
    unsigned char *vmem = calloc(1, ea_kv_codec_buffer_bytes(codec, layer, EA_KV_V, (size_t)T)), *kb = kmem + sk, *vb = vmem + sv;
    float *x = malloc(sizeof(float) * d), *k = malloc(sizeof(float) * (size_t)T * d), *v = malloc(sizeof(float) * (size_t)T * d);
    float *q = malloc(sizeof(float) * (size_t)nq * d), *o1 = malloc(sizeof(float) * (size_t)nq * d);
    float *o2 = malloc(sizeof(float) * (size_t)nq * d), *scratch = malloc(sizeof(float) * T);
    for (int t = 0; t < T; t++) {
        source_sample(s, &r, layer, 0, x);
        if (t == 0)
            for (int i = 0; i < d; i++) x[i] *= 6; /* a sink-like outlier row */
        codec->ops->encode(codec, layer, EA_KV_K, t, x, kb + rbk * t);
        source_sample(s, &r, layer, 1, x);
        codec->ops->encode(codec, layer, EA_KV_V, t, x, vb + rbv * t);
    }
    for (int i = 0; i < nq * d; i++) q[i] = (float)(ea_rng_normal(&r) * 2);
    codec->ops->decode(codec, layer, EA_KV_K, 0, T, kb, k);
    codec->ops->decode(codec, layer, EA_KV_V, 0, T, vb, v);
    ea_attention_ref(codec->n_head, d, q, nq, pos0, k, v, o1, scratch);
    codec->ops->attend(codec, layer, q, nq, pos0, kb, vb, o2);
    double e = test_max_abs_diff(o2, o1, (size_t)nq * d);
    free(kmem); free(vmem); free(x); free(k); free(v); free(q); free(o1); free(o2); free(scratch);
    return e;
}

static void test_compressed_attention(void **state) {
    ea_config c = small_cfg();
    source s;
    source_init(&s, &c, 7);
    ea_kv_metric mt;
    metric_init(&mt, &c, 77, 1);
    const char *specs[] = {"pca:12", "pca:64", "pca-head:5", "klt:2", "klt:3:h", "klt:1.5:hs", "klt:4:u", "klt:0.5:f",
                           "klt:2:x", "klt:3:hx", "klt:0.5:xf", "klt:4:X", "klt:3:i", "klt:2:hi"};
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++)
        for (int weighted = 0; weighted < 2; weighted++) {
            if (weighted && (strncmp(specs[i], "klt", 3) || i % 2)) continue;
            /* weighted: metric-weighted transform (non-orthogonal bases) and pooled bits */
            ea_kv_codec *codec = make_ex(specs[i], &c, &s.st, weighted ? &mt : NULL);
            assert_non_null(codec->ops->attend);
            /* one query after a long context (decode path), a prefill of several query blocks, and a
             * block after a prefix */
            double e1 = attend_vs_ref(codec, &s, 1, 200, 11), e2 = attend_vs_ref(codec, &s, 300, 0, 12);
            double e3 = attend_vs_ref(codec, &s, 40, 60, 13);
            /* two queries at a context that is no multiple of the 16-row blocks, keys split over 3
             * threads (the klt kernel splits blocks, query projection and merge among them) */
            double e4 = 0;
#ifdef _OPENMP
            int saved = omp_get_max_threads();
            omp_set_num_threads(3);
#endif
            e4 = attend_vs_ref(codec, &s, 2, 597, 14);
#ifdef _OPENMP
            omp_set_num_threads(saved);
#endif
            printf("%-12s%s attend vs decoded reference: max |diff| %.2g (decode), %.2g (prefill), %.2g (block), %.2g (3 threads)\n",
                   specs[i], weighted ? " (metric)" : "         ", e1, e2, e3, e4);
            assert_true(e1 <= 1e-5 && e2 <= 1e-5 && e3 <= 1e-5 && e4 <= 1e-5);
            ea_kv_codec_free(codec);
        }
    metric_free(&mt);
    source_free(&s);
}

/* The row codecs attend on their stored rows (f32, f16, q8_0, q4_0 read in place): the result
 * equals ea_attention_ref on the decoded rows, relative to the output's scale, for decode-sized
 * query counts (the streaming kernel) and prefill-sized ones (decoded rows and sgemm), at context
 * lengths that are and are not multiples of the kernel's chunks, for head dims that do and do not
 * fill whole q blocks, and with 3 threads (keys of each head split among threads and merged). */
static void test_rows_attention(void **state) {
    static const struct { int n_head, d; } shapes[] = {
        {1, 32}, {1, 64}, {4, 128}, {4, 256}, {8, 256}, {8, 512}, {12, 384}, {12, 768}, /* hd 32 and 64 */
        {4, 64}, {2, 96}, {5, 80},  /* hd 16, 48: heads starting mid-block; d = 80: half a last block */
        {1, 45}, {3, 99}, {4, 52}}; /* hd not a multiple of 16 (odd d, partial last q block) */
    static const int pos0s[] = {0, 1, 5, 31, 63, 64, 100, 129, 300, 517};
    static const int prefill[][2] = {{5, 0}, {40, 0}, {7, 77}, {70, 130}}; /* {nq, pos0} */
    const char *specs[] = {"f32", "f16", "q8", "q4"};
    const int T = 600, threads[] = {0, 3};
    for (size_t si = 0; si < sizeof specs / sizeof *specs; si++) {
        double worst = 0;
        for (size_t sh = 0; sh < sizeof shapes / sizeof *shapes; sh++) {
            ea_config c = small_cfg();
            c.n_head = shapes[sh].n_head;
            c.n_embd = shapes[sh].d;
            c.n_positions = 1024;
            ea_kv_codec *codec = make(specs[si], &c, NULL);
            assert_non_null(codec->ops->attend);
            int d = c.n_embd;
            size_t rb = codec->ops->row_bytes(codec, 0, EA_KV_K);
            assert_int_equal(rb, ea_kv_rows_row_bytes(si == 0 ? EA_KV_ROWS_F32 : si == 1 ? EA_KV_ROWS_F16
                                                      : si == 2 ? EA_KV_ROWS_Q8_0 : EA_KV_ROWS_Q4_0, d));
            unsigned char *kb = malloc(rb * T), *vb = malloc(rb * T);
            float *x = malloc(sizeof(float) * d), *k = malloc(sizeof(float) * (size_t)T * d);
            float *v = malloc(sizeof(float) * (size_t)T * d), *q = malloc(sizeof(float) * 70 * d);
            float *o1 = malloc(sizeof(float) * 70 * d), *o2 = malloc(sizeof(float) * 70 * d);
            float *scratch = malloc(sizeof(float) * T);
            ea_rng r;
            ea_rng_seed(&r, 100 + sh);
            for (int t = 0; t < T; t++) {
                /* keys of varied norm (a sink-like row 0), so later chunks raise the running maximum */
                double g = t == 0 ? 6 : 0.5 + 2 * ea_rng_uniform(&r);
                for (int i = 0; i < d; i++) x[i] = (float)(ea_rng_normal(&r) * g);
                codec->ops->encode(codec, 0, EA_KV_K, t, x, kb + rb * t);
                for (int i = 0; i < d; i++) x[i] = (float)ea_rng_normal(&r);
                codec->ops->encode(codec, 0, EA_KV_V, t, x, vb + rb * t);
            }
            codec->ops->decode(codec, 0, EA_KV_K, 0, T, kb, k);
            codec->ops->decode(codec, 0, EA_KV_V, 0, T, vb, v);
            for (int i = 0; i < 70 * d; i++) q[i] = (float)(ea_rng_normal(&r) * 1.5);
            int ncase = (int)(sizeof pos0s / sizeof *pos0s) * EA_KV_ROWS_STREAM_MAX, nall = ncase + 4;
            for (size_t th = 0; th < sizeof threads / sizeof *threads; th++) {
#ifdef _OPENMP
                int saved = omp_get_max_threads();
                if (threads[th]) omp_set_num_threads(threads[th]);
#else
                if (threads[th]) continue;
#endif
                for (int cs = 0; cs < nall; cs++) {
                    int nq = cs < ncase ? cs % EA_KV_ROWS_STREAM_MAX + 1 : prefill[cs - ncase][0];
                    int pos0 = cs < ncase ? pos0s[cs / EA_KV_ROWS_STREAM_MAX] : prefill[cs - ncase][1];
                    ea_attention_ref(codec->n_head, d, q, nq, pos0, k, v, o1, scratch);
                    memset(o2, 0xff, sizeof(float) * (size_t)nq * d); /* NaN: every output must be written */
                    codec->ops->attend(codec, 0, q, nq, pos0, kb, vb, o2);
                    double scale = 0;
                    for (int i = 0; i < nq * d; i++) scale = fmax(scale, fabs(o1[i]));
                    double e = test_max_abs_diff(o2, o1, (size_t)nq * d) / scale;
                    if (!(e <= 1e-5))
                        printf("%s n_head %d d %d threads %d nq %d pos0 %d: relative error %.3g\n", specs[si],
                               codec->n_head, d, threads[th], nq, pos0, e);
                    assert_true(e <= 1e-5);
                    if (e > worst) worst = e;
                }
#ifdef _OPENMP
                omp_set_num_threads(saved);
#endif
            }
            free(kb); free(vb); free(x); free(k); free(v); free(q); free(o1); free(o2); free(scratch);
            ea_kv_codec_free(codec);
        }
        printf("%s: attention on stored rows vs decoded reference: max error %.3g of the output scale\n", specs[si],
               worst);
    }
}

/* GQA decode (ea_kv_rows_attend_group): the query heads of a KV group passed as slots of one call
 * must give, bit for bit, what each head gives alone through ea_kv_rows_attend (the engine relies
 * on this to read each cached row once per group). */
static void test_rows_attention_group(void **state) {
    static const struct { int n_head, d; } shapes[] = {{2, 128}, {1, 64}, {3, 99}, {2, 96}};
    static const int pos0s[] = {0, 3, 64, 200, 298};
    const char *specs[] = {"f32", "f16", "q8", "q4"};
    const ea_kv_rows_format fmts[] = {EA_KV_ROWS_F32, EA_KV_ROWS_F16, EA_KV_ROWS_Q8_0, EA_KV_ROWS_Q4_0};
    const int T = 300, threads[] = {0, 3};
    for (size_t si = 0; si < 4; si++)
        for (size_t sh = 0; sh < sizeof shapes / sizeof *shapes; sh++) {
            ea_config c = small_cfg();
            c.n_head = shapes[sh].n_head;
            c.n_embd = shapes[sh].d;
            c.n_positions = 1024;
            ea_kv_codec *codec = make(specs[si], &c, NULL);
            int d = c.n_embd, H = c.n_head, hd = d / H;
            size_t rb = codec->ops->row_bytes(codec, 0, EA_KV_K);
            unsigned char *kb = malloc(rb * T), *vb = malloc(rb * T);
            float *x = malloc(sizeof(float) * d), *q = malloc(sizeof(float) * 4 * d), *og = malloc(sizeof(float) * 4 * d);
            float *qr = malloc(sizeof(float) * 2 * d), *orr = malloc(sizeof(float) * 2 * d);
            ea_rng r;
            ea_rng_seed(&r, 900 + sh);
            for (int t = 0; t < T; t++) {
                double g = t == 0 ? 6 : 0.5 + 2 * ea_rng_uniform(&r);
                for (int i = 0; i < d; i++) x[i] = (float)(ea_rng_normal(&r) * g);
                codec->ops->encode(codec, 0, EA_KV_K, t, x, kb + rb * t);
                for (int i = 0; i < d; i++) x[i] = (float)ea_rng_normal(&r);
                codec->ops->encode(codec, 0, EA_KV_V, t, x, vb + rb * t);
            }
            for (int i = 0; i < 4 * d; i++) q[i] = (float)(ea_rng_normal(&r) * 1.5);
            for (size_t th = 0; th < sizeof threads / sizeof *threads; th++) {
#ifdef _OPENMP
                int saved = omp_get_max_threads();
                if (threads[th]) omp_set_num_threads(threads[th]);
#else
                if (threads[th]) continue;
#endif
                for (size_t pi = 0; pi < sizeof pos0s / sizeof *pos0s; pi++)
                    for (int np = 1; np <= 2; np++)
                        for (int G = 2; np * G <= EA_KV_ROWS_STREAM_MAX; G++) {
                            int pos0 = pos0s[pi] + np <= T ? pos0s[pi] : T - np;
                            size_t qs = (size_t)G * d, hs = (size_t)G * hd; /* q, og: np × H × G × hd */
                            memset(og, 0xff, sizeof(float) * (size_t)np * qs);
                            ea_kv_rows_attend_group(fmts[si], H, d, G, qs, hs, q, np, pos0, kb, vb, og);
                            for (int m = 0; m < G; m++) {
                                for (int p = 0; p < np; p++)
                                    for (int h = 0; h < H; h++)
                                        memcpy(qr + (size_t)p * d + h * hd, q + p * qs + h * hs + (size_t)m * hd,
                                               sizeof(float) * hd);
                                ea_kv_rows_attend(fmts[si], H, d, qr, np, pos0, kb, vb, orr);
                                for (int p = 0; p < np; p++)
                                    for (int h = 0; h < H; h++)
                                        if (memcmp(orr + (size_t)p * d + h * hd, og + p * qs + h * hs + (size_t)m * hd,
                                                   sizeof(float) * hd))
                                            fail_msg("%s H %d d %d G %d np %d pos0 %d: slot (%d, %d, %d) differs from "
                                                     "its head alone", specs[si], H, d, G, np, pos0, p, h, m);
                            }
                        }
#ifdef _OPENMP
                omp_set_num_threads(saved);
#endif
            }
            free(kb); free(vb); free(x); free(q); free(og); free(qr); free(orr);
            ea_kv_codec_free(codec);
        }
}

/* Under a metric the coder minimises the weighted error Σ eᵀ B e (B: the regularised per-head
 * blocks of the metric); the measured weighted error must match the prediction. */
/* Lloyd's algorithm on a measured histogram: on a Gaussian histogram it finds the Lloyd-Max
 * levels; on a heavier-tailed (Laplacian) one its error beats the Gaussian design on that data. */
static void test_hist_lloyd(void **state) {
    ea_kv_hist h = {0};
    h.nbins = 2048;
    h.lim = 12.0f;
    double *gauss = malloc(sizeof(double) * h.nbins), *lap = malloc(sizeof(double) * h.nbins);
    for (int k = 0; k < h.nbins; k++) {
        double x = -h.lim + (k + 0.5) * (2.0 * h.lim / h.nbins);
        gauss[k] = 1e6 * exp(-0.5 * x * x);
        lap[k] = 1e6 * exp(-sqrt(2.0) * fabs(x)); /* unit variance */
    }
    for (int b = 1; b <= 6; b++) {
        const ea_kv_quant *g = ea_kv_quant_get(b, 1);
        ea_kv_quant fg, fl;
        ea_kv_hist_lloyd(&h, gauss, g, &fg);
        ea_kv_hist_lloyd(&h, lap, g, &fl);
        double dl = 0;
        for (int i = 0; i < g->n; i++) dl = fmax(dl, fabs(fg.level[i] - g->level[i]));
        double on_lap_gauss = ea_kv_hist_mse(&h, lap, g);
        printf("%d bits: gaussian histogram: levels within %.2g of Lloyd-Max, mse %.5f (exact %.5f); laplacian: "
               "fitted %.5f vs gaussian design %.5f\n", b, dl, fg.mse, g->mse, fl.mse, on_lap_gauss);
        assert_true(dl < 2e-2);
        assert_true(fabs(fg.mse - g->mse) < 0.02 * g->mse + 1e-4);
        assert_true(fl.mse < on_lap_gauss);
        for (int i = 1; i < fl.n; i++) assert_true(fl.level[i] > fl.level[i - 1]);
    }
    free(gauss);
    free(lap);
}

/* A saved klt codec loads back identical: same row bytes for every row, same attention output; a
 * damaged or mismatched file is refused with its path in the message and nothing is built. */
/* Codecs a and b (one loaded from what the other saved) encode 20 sampled rows of every part into
 * identical bytes, sequence bytes included, after every row. */
static void assert_same_encoding(const ea_kv_codec *a, const ea_kv_codec *b, const source *s, uint64_t seed) {
    ea_rng r;
    ea_rng_seed(&r, seed);
    float x[256];
    for (int layer = 0; layer < a->n_layer; layer++)
        for (int kind = 0; kind < 2; kind++) {
            size_t rb = a->ops->row_bytes(a, layer, (ea_kv_kind)kind), sb = ea_kv_codec_seq_bytes(a, layer, (ea_kv_kind)kind);
            assert_true(rb == b->ops->row_bytes(b, layer, (ea_kv_kind)kind));
            size_t nb = ea_kv_codec_buffer_bytes(a, layer, (ea_kv_kind)kind, 20);
            assert_true(nb == ea_kv_codec_buffer_bytes(b, layer, (ea_kv_kind)kind, 20));
            unsigned char *m1 = calloc(1, nb), *m2 = calloc(1, nb);
            for (int t = 0; t < 20; t++) {
                source_sample(s, &r, layer, kind, x);
                a->ops->encode(a, layer, (ea_kv_kind)kind, t, x, m1 + sb + rb * t);
                b->ops->encode(b, layer, (ea_kv_kind)kind, t, x, m2 + sb + rb * t);
                assert_memory_equal(m1, m2, nb);
            }
            free(m1);
            free(m2);
        }
}

static void test_klt_file_roundtrip(void **state) {
    ea_config c = small_cfg();
    source s;
    source_init(&s, &c, 21);
    ea_kv_metric mt;
    metric_init(&mt, &c, 22, 1);
    char *dir = test_tmpdir(), path[512], spec[600];
    const char *specs[] = {"klt:2.5", "klt:1:hXu", "klt:3:i"};
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        ea_kv_codec *a = make_ex(specs[i], &c, &s.st, i ? NULL : &mt), *b = NULL;
        snprintf(path, sizeof path, "%s/codec%zu.safetensors", dir, i);
        assert_int_equal(ea_kv_codec_save(a, path), EA_OK);
        snprintf(spec, sizeof spec, "file:%s", path);
        assert_int_equal(ea_kv_codec_create(spec, &c, NULL, &b), EA_OK);
        assert_string_equal(a->name, b->name);
        assert_true(ea_kv_codec_overhead(a) == ea_kv_codec_overhead(b));
        assert_same_encoding(a, b, &s, 5);
        double e1 = attend_vs_ref(a, &s, 1, 100, 3), e2 = attend_vs_ref(b, &s, 1, 100, 3);
        printf("%-10s saved and loaded: rows identical, attention error %.2g / %.2g\n", specs[i], e1, e2);
        assert_true(e1 == e2);
        ea_kv_codec_free(b);
        if (i == 0) { /* damaged and mismatched files */
            ea_config other = c;
            other.n_embd = c.n_embd * 2;
            b = (ea_kv_codec *)1;
            assert_int_equal(ea_kv_codec_load(path, &other, &b), EA_ERR_MISMATCH);
            assert_null(b);
            printf("other shape: %s\n", ea_last_error());
            FILE *f = fopen(path, "rb");
            fseek(f, 0, SEEK_END);
            long len = ftell(f);
            fseek(f, 0, SEEK_SET);
            unsigned char *bytes = malloc((size_t)len);
            assert_int_equal(fread(bytes, 1, (size_t)len, f), (size_t)len);
            fclose(f);
            char bad[600];
            snprintf(bad, sizeof bad, "%s/truncated.safetensors", dir);
            f = fopen(bad, "wb");
            fwrite(bytes, 1, (size_t)len / 2, f);
            fclose(f);
            assert_true(ea_kv_codec_load(bad, &c, &b) != EA_OK);
            assert_null(b);
            assert_non_null(strstr(ea_last_error(), "truncated.safetensors"));
            printf("truncated: %s\n", ea_last_error());
            /* every coefficient width set to 0 (little-endian int32 1..12 -> 0 is invalid) */
            snprintf(bad, sizeof bad, "%s/badbits.safetensors", dir);
            ea_st_file *sf = NULL;
            assert_int_equal(ea_st_open(path, &sf), EA_OK);
            const ea_st_tensor *bt = ea_st_find(sf, "part.0.bits");
            assert_non_null(bt);
            uint64_t hl; /* the data section starts after the 8-byte header length and the header */
            memcpy(&hl, bytes, 8);
            const unsigned char *first = ea_st_get(sf, 0)->data;
            for (int k = 0; k < ea_st_count(sf); k++)
                if ((const unsigned char *)ea_st_get(sf, k)->data < first) first = ea_st_get(sf, k)->data;
            size_t base = 8 + (size_t)hl, off = (size_t)((const unsigned char *)bt->data - first);
            memset(bytes + base + off, 0, bt->nbytes);
            ea_st_close(sf);
            f = fopen(bad, "wb");
            fwrite(bytes, 1, (size_t)len, f);
            fclose(f);
            assert_int_equal(ea_kv_codec_load(bad, &c, &b), EA_ERR_FORMAT);
            assert_null(b);
            printf("bad widths: %s\n", ea_last_error());
            free(bytes);
        }
        ea_kv_codec_free(a);
    }
    free(dir);
    metric_free(&mt);
    source_free(&s);
}

/* Batched encoding (prefill) writes the rows row-by-row encoding writes: one sgemm instead of a
 * matrix-vector product per row may round a coefficient across a cell boundary, so a few rows may
 * differ, by one cell. */
static void test_klt_encode_rows(void **state) {
    ea_config c = small_cfg();
    source s;
    source_init(&s, &c, 31);
    const char *specs[] = {"klt:2", "klt:3:h", "klt:1.5:X"};
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        ea_kv_codec *codec = make_ex(specs[i], &c, &s.st, NULL);
        assert_non_null(codec->ops->encode_rows);
        int T = 100, d = c.n_embd, same = 0;
        size_t rb = codec->ops->row_bytes(codec, 1, EA_KV_V), sb = ea_kv_codec_seq_bytes(codec, 1, EA_KV_V);
        float *x = malloc(sizeof(float) * (size_t)T * d);
        size_t nb = ea_kv_codec_buffer_bytes(codec, 1, EA_KV_V, (size_t)T);
        unsigned char *m1 = calloc(1, nb), *m2 = calloc(1, nb);
        float *y1 = malloc(sizeof(float) * d), *y2 = malloc(sizeof(float) * d);
        ea_rng r;
        ea_rng_seed(&r, 9);
        for (int t = 0; t < T; t++) source_sample(&s, &r, 1, 1, x + (size_t)t * d);
        for (int t = 0; t < T; t++) codec->ops->encode(codec, 1, EA_KV_V, t, x + (size_t)t * d, m1 + sb + rb * t);
        codec->ops->encode_rows(codec, 1, EA_KV_V, 0, T, x, d, m2 + sb);
        assert_memory_equal(m1, m2, sb); /* the sink row */
        for (int t = 0; t < T; t++) { /* rows share bytes within a block: compare what they decode to */
            codec->ops->decode(codec, 1, EA_KV_V, t, 1, m1 + sb + rb * t, y1);
            codec->ops->decode(codec, 1, EA_KV_V, t, 1, m2 + sb + rb * t, y2);
            same += !memcmp(y1, y2, sizeof(float) * d);
        }
        printf("%-10s batched encoding: %d of %d rows identical to row-by-row\n", specs[i], same, T);
        assert_true(same >= T * 95 / 100);
        free(y1);
        free(y2);
        free(x);
        free(m1);
        free(m2);
        ea_kv_codec_free(codec);
    }
    source_free(&s);
}

static void test_klt_weighted_distortion(void **state) {
    ea_config c = small_cfg();
    source s;
    source_init(&s, &c, 21);
    ea_kv_metric mt;
    metric_init(&mt, &c, 22, 0);
    int d = c.n_embd, hd = d / c.n_head, N = 2000;
    ea_rng r;
    ea_rng_seed(&r, 23);
    const char *specs[] = {"klt:2:f", "klt:3:uf"};
    float x[64], y[64];
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        ea_kv_codec *codec = make_ex(specs[i], &c, &s.st, &mt);
        for (int part = 0; part < 4; part++) {
            int layer = part / 2, kind = part % 2;
            const double *M = mt.m[kind] + (size_t)layer * d * d;
            double tr = 0;
            for (int j = 0; j < d; j++) tr += M[j * d + j];
            double eps = tr / d, we = 0, plain = 0; /* regularisation 1 (the default) */
            for (int n = 0; n < N; n++) {
                source_sample(&s, &r, layer, kind, x);
                roundtrip(codec, layer, kind, x, y);
                for (int a = 0; a < d; a++) {
                    double ea = (double)y[a] - x[a];
                    plain += ea * ea;
                    for (int b = (a / hd) * hd; b < (a / hd + 1) * hd; b++)
                        we += ea * (M[a * d + b] + (a == b ? eps : 0)) * ((double)y[b] - x[b]);
                }
            }
            double pred = ea_kv_klt_predicted_mse(codec, layer, kind);
            printf("%-9s layer %d %s: weighted error %.5g predicted %.5g (ratio %.3f); plain mse %.5g\n", specs[i], layer,
                   kind ? "V" : "K", we / N, pred, we / N / pred, plain / N);
            assert_true(fabs(we / N / pred - 1) < 0.08);
        }
        ea_kv_codec_free(codec);
    }
    metric_free(&mt);
    source_free(&s);
}

static void test_klt_predicted_distortion(void **state) {
    ea_config c = small_cfg();
    source s;
    source_init(&s, &c, 8);
    const char *specs[] = {"klt:1", "klt:2:u", "klt:4:h", "klt:2.5:hu", "klt:6", "klt:4:i", "klt:3:hi"};
    ea_rng r;
    ea_rng_seed(&r, 9);
    int d = c.n_embd, N = 2000;
    float x[64], y[64];
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        ea_kv_codec *codec = make(specs[i], &c, &s.st);
        double bpv = ea_kv_codec_bits_per_value(codec), bud = atof(specs[i] + 4);
        assert_true(bpv <= bud + 1e-12);
        for (int part = 0; part < 4; part++) {
            int layer = part / 2, kind = part % 2;
            double se = 0, tot = 0;
            for (int n = 0; n < N; n++) {
                source_sample(&s, &r, layer, kind, x);
                roundtrip(codec, layer, kind, x, y);
                for (int j = 0; j < d; j++) {
                    double e = (double)y[j] - x[j];
                    se += e * e;
                    tot += s.lam[kind][(size_t)layer * d + j];
                }
            }
            double mse = se / N, pred = ea_kv_klt_predicted_mse(codec, layer, kind);
            printf("%-10s (%.3f bits/value) layer %d %s: mse %.5g predicted %.5g (ratio %.3f, NMSE %.4f)\n", specs[i],
                   bpv, layer, kind ? "V" : "K", mse, pred, mse / pred, se / tot);
            /* sampling error of a mean of 2000 rows is ~2-3%; 8% leaves room for quantizer clamping */
            assert_true(fabs(mse / pred - 1) < 0.08);
        }
        ea_kv_codec_free(codec);
    }
    source_free(&s);
}

static void test_spec_errors(void **state) {
    ea_config c = small_cfg();
    source s;
    source_init(&s, &c, 10);
    ea_kv_codec *codec = NULL;
    const char *bad[] = {"", "f64", "q8:3", "pca", "pca:0", "pca:65", "pca-head:17", "klt", "klt:0", "klt:x", "klt:2:z", "klt:13", "klt:2:r"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ea_status st = ea_kv_codec_create(bad[i], &c, &s.st, &codec);
        printf("'%s' -> %s: %s\n", bad[i], ea_status_name(st), ea_last_error());
        assert_int_equal(st, EA_ERR_ARG);
        assert_null(codec);
    }
    assert_int_equal(ea_kv_codec_create("klt:2", &c, NULL, &codec), EA_ERR_ARG);
    assert_non_null(strstr(ea_last_error(), "statistics"));
    ea_config other = c;
    other.n_embd = 128;
    assert_int_equal(ea_kv_codec_create("pca:4", &other, &s.st, &codec), EA_ERR_MISMATCH);
    printf("mismatch: %s\n", ea_last_error());
    source_free(&s);
}

/* bits/value from the codec equals the cache's allocation / values at a full context for every codec
 * (per-sequence bytes such as a sink row included). */
static void test_accounting_matches_cache(void **state) {
    ea_config c = small_cfg();
    source s;
    source_init(&s, &c, 11);
    ea_kv_metric mt;
    metric_init(&mt, &c, 12, 1);
    const char *specs[] = {"f32", "f16", "q8", "q4", "pca:9", "pca-head:3", "klt:1", "klt:2:s", "klt:3.3:h", "klt:1.5:x", "klt:2.7", "klt:2.7:x"};
    int n = c.n_positions;
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        /* the last two pooled over parts with a metric */
        ea_kv_codec *codec = make_ex(specs[i], &c, &s.st, i + 2 >= sizeof specs / sizeof *specs ? &mt : NULL);
        ea_kvcache *cache = NULL;
        assert_int_equal(ea_kvcache_init(&cache, &c, n, codec), EA_OK);
        double values = 2.0 * c.n_layer * n * c.n_embd;
        double bpv = (double)ea_kvcache_allocated_bytes(cache) * 8 / values;
        printf("%-10s bits/value %.4f, cache %zu bytes for %d tokens, overhead %zu bytes\n", specs[i],
               ea_kv_codec_bits_per_value(codec), ea_kvcache_allocated_bytes(cache), n, ea_kv_codec_overhead(codec));
        assert_true(fabs(bpv - ea_kv_codec_bits_per_value(codec)) < 1e-12);
        if (!strncmp(specs[i], "klt:", 4)) assert_true(bpv <= atof(specs[i] + 4) + 1e-12);
        ea_kvcache_free(cache);
        ea_kv_codec_free(codec);
    }
    metric_free(&mt);
    source_free(&s);
}

/* The f32 codec reproduces the plain engine bit for bit; a compressed codec runs through the same
 * forward pass (attention on codes) and stays close. */
static void test_f32_codec_matches_engine(void **state) {
    ea_model *m = NULL;
    if (ea_model_load(TEST_MODEL_DIR, &m) != EA_OK) {
        printf("%s\n", ea_last_error());
        fail();
    }
    const ea_config *cfg = ea_model_config(m);
    int n = 48, V = cfg->vocab_size;
    int toks[48];
    for (int i = 0; i < n; i++) toks[i] = (i * 7919 + 13) % V;
    float *a = malloc(sizeof(float) * (size_t)n * V), *b = malloc(sizeof(float) * (size_t)n * V);
    ea_kv_codec *f32 = make("f32", cfg, NULL);
    ea_kvcache *c0 = NULL, *c1 = NULL;
    assert_int_equal(ea_kvcache_init(&c0, cfg, 64, NULL), EA_OK);
    assert_int_equal(ea_kvcache_init(&c1, cfg, 64, f32), EA_OK);
    /* prefill then token-by-token decode, both paths */
    assert_int_equal(ea_model_forward(m, c0, toks, n - 8, a, 1), EA_OK);
    assert_int_equal(ea_model_forward(m, c1, toks, n - 8, b, 1), EA_OK);
    for (int i = n - 8; i < n; i++) {
        assert_int_equal(ea_model_forward(m, c0, toks + i, 1, a + (size_t)i * V, 0), EA_OK);
        assert_int_equal(ea_model_forward(m, c1, toks + i, 1, b + (size_t)i * V, 0), EA_OK);
    }
    printf("f32 codec vs plain cache: max |logit diff| %g over %d positions\n", test_max_abs_diff(a, b, (size_t)n * V), n);
    assert_memory_equal(a, b, sizeof(float) * (size_t)n * V);
    ea_kvcache_free(c0);
    ea_kvcache_free(c1);
    ea_kv_codec_free(f32);
    free(a);
    free(b);
    ea_model_free(m);
}

/* The quantizer's cell index is the number of decision thresholds <= z (a linear count as the
 * reference), at and around every threshold and for random z, every tabled width. */
static void test_quant_index(void **state) {
    ea_rng r;
    ea_rng_seed(&r, 77);
    long checked = 0;
    for (int lloyd = 0; lloyd < 2; lloyd++)
        for (int b = 1; b <= EA_KV_QTAB_BITS; b++) {
            const ea_kv_quant *q = ea_kv_quant_get(b, lloyd);
            if (q->uniform) continue;
            for (int i = -1; i < 3000; i++) {
                float z = i < 0 ? -INFINITY : i < q->n - 1 ? q->thr[i] : i < 2 * (q->n - 1) ? nextafterf(q->thr[i - (q->n - 1)], -INFINITY)
                                                                      : (float)(ea_rng_normal(&r) * 4);
                int want = 0;
                for (int k = 0; k < q->n - 1; k++) want += q->thr[k] <= z;
                assert_int_equal(ea_kv_quant_index(q, z), want);
                int got;
                ea_kv_quant_index_n(q, &z, 1, &got);
                assert_int_equal(got, want);
                checked++;
            }
        }
    /* the vector path on whole batches, NaN included */
    for (int b = 2; b <= EA_KV_QTAB_BITS; b++) {
        const ea_kv_quant *q = ea_kv_quant_get(b, 1);
        float z[37];
        int got[37];
        for (int i = 0; i < 37; i++) z[i] = i == 20 ? NAN : (float)(ea_rng_normal(&r) * 3);
        ea_kv_quant_index_n(q, z, 37, got);
        for (int i = 0; i < 37; i++) assert_int_equal(got[i], ea_kv_quant_index(q, z[i]));
    }
    printf("quant index = threshold count for %ld values\n", checked);
    assert_true(checked > 10000);
}

/* klt codecs embedded in a shared safetensors file (a compressor's, under "kv.<i>."): the one the
 * list names loads and encodes exactly as the original; a spec not listed is absent (no error); a
 * listed codec whose tensors are missing is refused, naming the file. */
static void test_klt_embedded(void **state) {
    ea_config c = small_cfg();
    source s;
    source_init(&s, &c, 41);
    char *dir = test_tmpdir(), path[600], bad[600];
    snprintf(path, sizeof path, "%s/compressor.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    ea_kv_codec *a = make_ex("klt:2", &c, &s.st, NULL), *b = make_ex("klt:1:h", &c, &s.st, NULL), *got = NULL;
    float one = 1;
    int64_t s1[1] = {1};
    ea_st_writer *w = NULL;
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    assert_int_equal(ea_st_writer_add(w, "layer.0.k.mean", EA_DTYPE_F32, 1, s1, &one), EA_OK); /* other content */
    assert_int_equal(ea_kv_klt_write(a, w, "kv.0."), EA_OK);
    assert_int_equal(ea_kv_klt_write(b, w, "kv.1."), EA_OK);
    assert_int_equal(ea_st_writer_meta(w, "kv_codecs", "klt:2,klt:1:h"), EA_OK);
    assert_int_equal(ea_st_writer_save(w, path), EA_OK);
    ea_st_writer_free(w);
    const ea_kv_codec *want[2] = {a, b};
    const char *specs[2] = {"klt:2", "klt:1:h"};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ea_kv_codec_load_embedded(path, specs[i], &c, &got), EA_OK);
        assert_non_null(got);
        assert_string_equal(got->name, specs[i]);
        assert_true(ea_kv_codec_overhead(got) == ea_kv_codec_overhead(want[i]));
        assert_same_encoding(want[i], got, &s, 6);
        ea_kv_codec_free(got);
    }
    assert_int_equal(ea_kv_codec_load_embedded(path, "klt:3", &c, &got), EA_OK);
    assert_null(got);
    /* listed, but nothing stored under kv.0. */
    assert_int_equal(ea_st_writer_init(&w), EA_OK);
    assert_int_equal(ea_st_writer_add(w, "layer.0.k.mean", EA_DTYPE_F32, 1, s1, &one), EA_OK);
    assert_int_equal(ea_st_writer_meta(w, "kv_codecs", "klt:2"), EA_OK);
    assert_int_equal(ea_st_writer_save(w, bad), EA_OK);
    ea_st_writer_free(w);
    assert_int_equal(ea_kv_codec_load_embedded(bad, "klt:2", &c, &got), EA_ERR_FORMAT);
    assert_null(got);
    printf("embedded codec missing: %s\n", ea_last_error());
    assert_non_null(strstr(ea_last_error(), "bad.safetensors"));
    ea_kv_codec_free(a);
    ea_kv_codec_free(b);
    test_rmdir(dir);
    free(dir);
    source_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_exact),
        cmocka_unit_test(test_quant_index),
        cmocka_unit_test(test_f16_bound),
        cmocka_unit_test(test_q8_bound),
        cmocka_unit_test(test_q4_bound_and_layout),
        cmocka_unit_test(test_pca_full_rank_exact),
        cmocka_unit_test(test_compressed_attention),
        cmocka_unit_test(test_rows_attention), cmocka_unit_test(test_rows_attention_group),
        cmocka_unit_test(test_klt_predicted_distortion),
        cmocka_unit_test(test_klt_weighted_distortion),
        cmocka_unit_test(test_hist_lloyd),
        cmocka_unit_test(test_klt_file_roundtrip),
        cmocka_unit_test(test_klt_embedded),
        cmocka_unit_test(test_klt_encode_rows),
        cmocka_unit_test(test_f32_codec_matches_engine),
        cmocka_unit_test(test_spec_errors),
        cmocka_unit_test(test_accounting_matches_cache),
    };
    return TEST_RUN(tests, NULL, NULL);
}
