/* Attention computed on basis coefficients, without rebuilding K or V.
 * For head h with key basis W_h (coefficient j ↦ its hd-dim vector) and mean μ_h:
 *   q_h·k_t = q_h·μ_h + (W_hᵀ q_h)·c_t; the first term is the same for every key and cancels
 *   in the softmax, so scores cost one dot product of length n_coef(h) per key;
 *   Σ_t a_t v_t = μ_h + W_h (Σ_t a_t c_t) because the weights sum to 1, so values are summed on
 *   coefficients and projected once per query.
 * One query (decoding) streams over the keys in chunks with an online softmax, split across
 * threads and merged. Many queries (prefill) rebuild K and V once and use the float sgemm
 * attention: there, coefficient-space scores would cost n_coef instead of hd per key and head. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kv/kv_internal.h"
#include "kv/kv_rows.h"
#include "core/isa.h"

#define CHUNK 64      /* keys unpacked at a time while decoding */
#define DECODE_MAX 4  /* up to this many queries take the streaming path */

/* fmaxf is a library call without -ffast-math (NaN rules); scores are finite. */
static inline float max_f(float a, float b) { return a > b ? a : b; }

/* Per-thread softmax state of one query: running max, sum and value accumulator per head. */
typedef struct {
    float *m, *l, *acc; /* n_head, n_head, n_head × nv */
} stream_state;

/* Online-softmax update of head h with the chunk's scores s[r*ss] (r < n): rescales what was
 * accumulated under an older maximum; leaves p_r = exp(s_r - m) in s. */
static void softmax_chunk(stream_state *st, int h, int nvh, int nv, float *s, int ss, int n) {
    float mx = -INFINITY;
    for (int r = 0; r < n; r++) mx = max_f(mx, s[(size_t)r * ss]);
    float *acc = st->acc + (size_t)h * nv;
    if (mx > st->m[h]) { /* rescale what was accumulated under the old maximum */
        float f = expf(st->m[h] - mx);
        st->l[h] *= f;
        for (int j = 0; j < nvh; j++) acc[j] *= f;
        st->m[h] = mx;
    }
    float m = st->m[h], l = 0;
    for (int r = 0; r < n; r++) {
        float p = expf(s[(size_t)r * ss] - m);
        s[(size_t)r * ss] = p;
        l += p;
    }
    st->l[h] += l;
}

#ifdef EA_X86
EA_TARGET_AVX512_BEGIN
/* The head count is a compile-time constant in each instance, so the per-head accumulators live
 * in registers. */
static inline __attribute__((always_inline)) void scores_h(const int H, const float *c, int n, int nk, const float *qt,
                                                           float *s) {
    __mmask16 tail = (__mmask16)((1u << (nk & 15)) - 1);
    for (int r = 0; r < n; r++) {
        const float *cr = c + (size_t)r * nk;
        __m512 acc[16];
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) acc[h] = _mm512_setzero_ps();
        int j = 0;
        for (; j + 16 <= nk; j += 16) {
            __m512 x = _mm512_loadu_ps(cr + j);
#pragma GCC unroll 16
            for (int h = 0; h < H; h++) acc[h] = _mm512_fmadd_ps(x, _mm512_loadu_ps(qt + (size_t)h * nk + j), acc[h]);
        }
        if (tail) {
            __m512 x = _mm512_maskz_loadu_ps(tail, cr + j);
#pragma GCC unroll 16
            for (int h = 0; h < H; h++) acc[h] = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(tail, qt + (size_t)h * nk + j), acc[h]);
        }
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) s[(size_t)r * H + h] = _mm512_reduce_add_ps(acc[h]);
    }
}

static inline __attribute__((always_inline)) void values_h(const int H, const float *p, int n, const float *c, int nv,
                                                           float *acc) {
    for (int j = 0; j < nv; j += 16) {
        __mmask16 m = nv - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (nv - j)) - 1);
        __m512 a[16];
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) a[h] = _mm512_maskz_loadu_ps(m, acc + (size_t)h * nv + j);
        for (int r = 0; r < n; r++) {
            __m512 x = _mm512_maskz_loadu_ps(m, c + (size_t)r * nv + j);
            const float *pr = p + (size_t)r * H;
#pragma GCC unroll 16
            for (int h = 0; h < H; h++) a[h] = _mm512_fmadd_ps(_mm512_set1_ps(pr[h]), x, a[h]);
        }
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) _mm512_mask_storeu_ps(acc + (size_t)h * nv + j, m, a[h]);
    }
}

/* The AVX-512 instances for the head counts they exist for; 0: another head count. */
static int chunk_scores_512(const float *c, int n, int nk, const float *qt, int H, float *s) {
    switch (H) {
    case 4: scores_h(4, c, n, nk, qt, s); return 1;
    case 8: scores_h(8, c, n, nk, qt, s); return 1;
    case 12: scores_h(12, c, n, nk, qt, s); return 1;
    case 16: scores_h(16, c, n, nk, qt, s); return 1;
    }
    return 0;
}

static int chunk_values_512(const float *p, int n, const float *c, int nv, int H, float *acc) {
    switch (H) {
    case 4: values_h(4, p, n, c, nv, acc); return 1;
    case 8: values_h(8, p, n, c, nv, acc); return 1;
    case 12: values_h(12, p, n, c, nv, acc); return 1;
    case 16: values_h(16, p, n, c, nv, acc); return 1;
    }
    return 0;
}
EA_TARGET_END
#endif

/* s (n × H) = c (n × nk) qtᵀ (qt: H × nk): scores of a chunk of keys for every head. */
static void chunk_scores(const float *c, int n, int nk, const float *qt, int H, float *s) {
#ifdef EA_X86
    if (ea_isa_now() >= EA_ISA_AVX512 && chunk_scores_512(c, n, nk, qt, H, s)) return;
#endif
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, H, nk, 1.0f, c, nk, qt, nk, 0.0f, s, H);
}

/* acc (H × nv) += pᵀ (p: n × H) c (n × nv): attention-weighted sums of a chunk's value coefficients. */
static void chunk_values(const float *p, int n, const float *c, int nv, int H, float *acc) {
#ifdef EA_X86
    if (ea_isa_now() >= EA_ISA_AVX512 && chunk_values_512(p, n, c, nv, H, acc)) return;
#endif
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, nv, n, 1.0f, p, H, c, nv, 1.0f, acc, nv);
}

static void stream_range(const ea_kv_coef_src *k, const ea_kv_coef_src *v, const float *qt, int t0, int t1,
                         stream_state *st, float *ck, float *cv, float *s) {
    const ea_kv_basis *bk = k->b, *bv = v->b;
    int H = bk->n_head, nk = bk->n_coef, nv = bv->n_coef;
    for (int c0 = t0; c0 < t1; c0 += CHUNK) {
        int n = t1 - c0 < CHUNK ? t1 - c0 : CHUNK;
        if (nk) k->unpack(k->self, k->rows, c0, n, ck);
        if (nv) v->unpack(v->self, v->rows, c0, n, cv);
        if (bk->shared && bv->shared && nk && nv) {
            /* every head reads all coefficients: scores and value sums are small matrix products */
            chunk_scores(ck, n, nk, qt, H, s);
            for (int h = 0; h < H; h++) softmax_chunk(st, h, nv, nv, s + h, H, n);
            chunk_values(s, n, cv, nv, H, st->acc);
            continue;
        }
        for (int h = 0; h < H; h++) {
            int lo = bk->lo[h], nh = bk->hi[h] - lo, vlo = bv->lo[h], nvh = bv->hi[h] - vlo;
            const float *qh = qt + (size_t)h * nk;
            for (int r = 0; r < n; r++) {
                const float *cr = ck + (size_t)r * nk + lo;
                float a = 0;
#pragma omp simd reduction(+ : a)
                for (int j = 0; j < nh; j++) a += qh[j] * cr[j];
                s[r] = a;
            }
            softmax_chunk(st, h, nvh, nv, s, 1, n);
            float *acc = st->acc + (size_t)h * nv;
            for (int r = 0; r < n; r++) {
                const float *cr = cv + (size_t)r * nv + vlo;
                float p = s[r];
#pragma omp simd
                for (int j = 0; j < nvh; j++) acc[j] += p * cr[j];
            }
        }
    }
}

void ea_kv_sink_scores(const ea_kv_basis *bk, const uint16_t *ksink, const float *q, float scale, float *s0) {
    int hd = bk->hd;
    for (int h = 0; h < bk->n_head; h++) {
        const float *qh = q + h * hd, *mu = bk->mean + h * hd;
        float a = 0;
        for (int i = 0; i < hd; i++) a += qh[i] * (ea_f16_to_f32(ksink[h * hd + i]) - mu[i]);
        s0[h] = a * scale;
    }
}

void ea_kv_attend_merge(const ea_kv_basis *bv, const uint16_t *vsink, const float *states, size_t per, int nth,
                        const float *s0, int h0, int h1, float *out) {
    int H = bv->n_head, hd = bv->hd, nv = bv->n_coef, first = s0 != NULL;
    float acc[nv + 1];
    for (int h = h0; h < h1; h++) {
        int vlo = bv->lo[h], nvh = bv->hi[h] - vlo;
        float M = first ? s0[h] : -INFINITY, L = first ? 1.0f : 0.0f;
        for (int t = 0; t < nth; t++) M = max_f(M, states[per * t + h]);
        if (first) L = expf(s0[h] - M);
        memset(acc, 0, sizeof(float) * (size_t)(nvh > 0 ? nvh : 1));
        for (int t = 0; t < nth; t++) {
            const float *base = states + per * t;
            if (base[h] == -INFINITY) continue;
            float f = expf(base[h] - M);
            L += base[H + h] * f;
            const float *a = base + 2 * H + (size_t)h * nv;
            for (int j = 0; j < nvh; j++) acc[j] += a[j] * f;
        }
        float inv = 1.0f / L, *oh = out + h * hd;
        memcpy(oh, bv->mean + h * hd, sizeof(float) * (size_t)hd);
        const float *w = bv->w[h];
        for (int j = 0; j < nvh; j++, w += hd) { /* small: a BLAS call costs more than it saves */
            float a = acc[j] * inv;
#pragma omp simd
            for (int i = 0; i < hd; i++) oh[i] += a * w[i];
        }
        if (first) {
            float a0 = expf(s0[h] - M) * inv;
            for (int i = 0; i < hd; i++) oh[i] += a0 * (ea_f16_to_f32(vsink[h * hd + i]) - bv->mean[h * hd + i]);
        }
    }
}

static void attend_one(const ea_kv_coef_src *k, const ea_kv_coef_src *v, const float *q, int T, float *out) {
    const ea_kv_basis *bk = k->b, *bv = v->b;
    int H = bk->n_head, hd = bk->hd, nk = bk->n_coef, nv = bv->n_coef;
    float scale = 1.0f / sqrtf((float)hd);
    float *qt = malloc(sizeof(float) * ((size_t)H * nk + 1));
    for (int h = 0; h < H; h++)
        if (bk->hi[h] > bk->lo[h])
            cblas_sgemv(CblasRowMajor, CblasNoTrans, bk->hi[h] - bk->lo[h], hd, scale, bk->w[h], hd, q + h * hd, 1, 0.0f,
                        qt + (size_t)h * nk, 1);
    /* the sink row (position 0 at full precision) is scored here, in d dimensions */
    int first = k->sink ? 1 : 0;
    float s0[H > 0 ? H : 1];
    if (first) ea_kv_sink_scores(bk, k->sink, q, scale, s0);
    int nth = 1, nkeys = T - first;
#ifdef _OPENMP
    if (nkeys >= 4 * CHUNK && !omp_in_parallel()) nth = omp_get_max_threads();
    if (nth > nkeys / CHUNK) nth = nkeys / CHUNK > 0 ? nkeys / CHUNK : 1;
#endif
    size_t per = (size_t)2 * H + (size_t)H * nv;
    float *states = malloc(sizeof(float) * per * nth);
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        stream_state st = {states + per * tid, states + per * tid + H, states + per * tid + 2 * H};
        for (int h = 0; h < H; h++) {
            st.m[h] = -INFINITY;
            st.l[h] = 0;
        }
        memset(st.acc, 0, sizeof(float) * (size_t)H * nv);
        /* contiguous, chunk-aligned ranges of keys per thread */
        int nchunks = (nkeys + CHUNK - 1) / CHUNK;
        int c0 = (int)((long)nchunks * tid / nth), c1 = (int)((long)nchunks * (tid + 1) / nth);
        int t0 = first + c0 * CHUNK, t1 = first + c1 * CHUNK < T ? first + c1 * CHUNK : T;
        float *ck = malloc(sizeof(float) * ((size_t)CHUNK * nk + 1));
        float *cv = malloc(sizeof(float) * ((size_t)CHUNK * nv + 1));
        float *s = malloc(sizeof(float) * (size_t)CHUNK * H); /* scores: chunk rows × heads */
        if (t0 < t1) stream_range(k, v, qt, t0, t1, &st, ck, cv, s);
        free(ck);
        free(cv);
        free(s);
    }
    ea_kv_attend_merge(bv, v->sink, states, per, nth, first ? s0 : NULL, 0, H, out);
    free(states);
    free(qt);
}

static void unpack_all(const ea_kv_coef_src *src, int T, float *c) {
    int n = src->b->n_coef;
    if (!n) return;
#pragma omp parallel for schedule(static)
    for (int t0 = 0; t0 < T; t0 += CHUNK)
        src->unpack(src->self, src->rows, t0, T - t0 < CHUNK ? T - t0 : CHUNK, c + (size_t)t0 * n);
}

/* Rows 0..T-1 of a source rebuilt in d dimensions: x = mean + W_h c per head (one sgemm each), the
 * sink row from its f16 copy. */
static void expand_all(const ea_kv_coef_src *src, int T, const float *c, float *x) {
    const ea_kv_basis *b = src->b;
    int d = b->d, hd = b->hd, n = b->n_coef;
    for (int h = 0; h < b->n_head; h++) {
        int lo = b->lo[h], nh = b->hi[h] - lo;
        for (int t = 0; t < T; t++) memcpy(x + (size_t)t * d + h * hd, b->mean + h * hd, sizeof(float) * (size_t)hd);
        if (nh > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, nh, 1.0f, c + lo, n, b->w[h], hd, 1.0f,
                        x + h * hd, d);
    }
    if (src->sink) ea_f16_to_f32_array(src->sink, x, (size_t)d);
}

/* Prefill: with many queries, scores in coefficient space cost n_coef (all of a per-layer basis)
 * per key and head instead of hd; rebuilding K and V once (n_coef × d per row) and running the
 * float sgemm attention is several times cheaper. 0 when the memory cannot be had. */
static int attend_expanded(const ea_kv_coef_src *k, const ea_kv_coef_src *v, const float *q, int nq, int pos0,
                           float *out) {
    const ea_kv_basis *bk = k->b, *bv = v->b;
    int d = bk->d, T = pos0 + nq, nth = 1;
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    size_t per = (size_t)EA_KV_ROWS_GEMM_BLOCK * T;
    size_t nc = (size_t)T * (bk->n_coef > bv->n_coef ? bk->n_coef : bv->n_coef);
    float *kx = malloc(sizeof(float) * (size_t)T * d), *vx = malloc(sizeof(float) * (size_t)T * d);
    float *c = malloc(sizeof(float) * (nc + 1)), *scratch = malloc(sizeof(float) * per * nth);
    int ok = kx && vx && c && scratch;
    if (ok) {
        unpack_all(k, T, c);
        expand_all(k, T, c, kx);
        unpack_all(v, T, c);
        expand_all(v, T, c, vx);
        ea_kv_rows_attend_gemm(bk->n_head, d, q, nq, pos0, kx, vx, out, scratch, per);
    }
    free(kx);
    free(vx);
    free(c);
    free(scratch);
    return ok;
}

void ea_kv_basis_attend(const ea_kv_coef_src *k, const ea_kv_coef_src *v, const float *q, int nq, int pos0,
                        float *out) {
    int d = k->b->d;
    if (nq > DECODE_MAX && attend_expanded(k, v, q, nq, pos0, out)) return;
    /* few queries (or no memory for the rebuilt rows): one query at a time on the coefficients */
    for (int i = 0; i < nq; i++) attend_one(k, v, q + (size_t)i * d, pos0 + i + 1, out + (size_t)i * d);
}
