/* One-token attention on a klt cache, read in its block layout (kv_klt.h).
 * With one basis per layer every head's score needs all kept coefficients of a key, so the cost is
 * decoding: a coefficient of 16 keys is one masked load, a byte permute, a shift and a register
 * table lookup, then one FMA per head on 16 keys at once (no per-key reductions). Scores, softmax
 * and value sums are three passes over a thread's blocks:
 *   scores  s_t = σ-folded query (W_hᵀ q_h)·levels_t, coefficient by coefficient;
 *   weights p_t = exp(s_t - max) (times the row gain for values);
 *   values  A_hj = Σ_t p_t level_tj, coefficient by coefficient over the thread's blocks, so the
 *           16-key partial sums stay in registers and are reduced once per coefficient.
 * The threads' partial softmax states are merged and projected by ea_kv_attend_merge. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "compress/kv_klt.h"
#include "compress/kv_simd.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VBMI__)

#define BLK EA_KV_KLT_BLOCK
#define BLOCKS_PER_THREAD 8 /* fewer blocks than this per thread: fewer threads */
#define INL static inline __attribute__((always_inline))

/* Per code width b: the byte permute that brings bytes (i·b)/8 .. +3 of a segment into 32-bit
 * lane i, and the shift that then puts the code in its low bits. */
typedef struct {
    _Alignas(64) unsigned char idx[EA_KV_QBITS + 1][64];
    _Alignas(64) unsigned int sh[EA_KV_QBITS + 1][16];
} lane_maps;

static void lane_maps_init(lane_maps *m) {
    for (int b = 1; b <= EA_KV_QBITS; b++)
        for (int i = 0; i < BLK; i++) {
            for (int k = 0; k < 4; k++) {
                int byte = (i * b >> 3) + k;
                m->idx[b][4 * i + k] = (unsigned char)(byte < 63 ? byte : 63);
            }
            m->sh[b][i] = (unsigned)(i * b & 7);
        }
}

/* Levels of coefficient j for the 16 rows of a block (before the row gain and σ). */
INL __m512 coef_vals(const klt_part *p, const unsigned char *blk, int j, const lane_maps *lm) {
    int b = p->bits[j];
    __m512i seg = _mm512_maskz_loadu_epi8((((__mmask64)1) << (2 * b)) - 1, blk + p->off[j]);
    __m512i x = _mm512_srlv_epi32(_mm512_permutexvar_epi8(_mm512_load_si512(lm->idx[b]), seg),
                                  _mm512_load_si512(lm->sh[b]));
    const float *t = p->ptab[j];
    if (t) { /* register lookups read only the index bits they need */
        if (b <= 4) return _mm512_permutexvar_ps(x, _mm512_loadu_ps(t));
        __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(t), x, _mm512_loadu_ps(t + 16));
        if (b == 5) return lo;
        __mmask16 b5 = _mm512_test_epi32_mask(x, _mm512_set1_epi32(32));
        lo = _mm512_mask_blend_ps(b5, lo, _mm512_permutex2var_ps(_mm512_loadu_ps(t + 32), x, _mm512_loadu_ps(t + 48)));
        if (b == 6) return lo;
        __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(t + 64), x, _mm512_loadu_ps(t + 80));
        hi = _mm512_mask_blend_ps(b5, hi, _mm512_permutex2var_ps(_mm512_loadu_ps(t + 96), x, _mm512_loadu_ps(t + 112)));
        return _mm512_mask_blend_ps(_mm512_test_epi32_mask(x, _mm512_set1_epi32(64)), lo, hi);
    }
    x = _mm512_and_si512(x, _mm512_set1_epi32((1 << b) - 1));
    if (p->tab[j]) return _mm512_i32gather_ps(x, p->tab[j], 4);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(x), _mm512_set1_ps(p->lv_a[j]), _mm512_set1_ps(p->lv_c[j]));
}

/* Gains of the 16 rows of block bk: the stored f16 row gains, position 0's step gain. */
INL __m512 block_gain(const klt_part *p, const unsigned char *blk, int bk) {
    __m512 g = p->hdr ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)blk)) : _mm512_set1_ps(1.0f);
    if (bk == 0 && p->pos0_gain != 1.0f) g = _mm512_mask_mul_ps(g, 1, g, _mm512_set1_ps(p->pos0_gain));
    return g;
}

INL int has_gain(const klt_part *p, int bk) { return p->hdr || (bk == 0 && p->pos0_gain != 1.0f); }

/* Scores of blocks [b0, b1) for all heads of a per-layer basis: s[h·ld + 16·(bk - b0) + i]. */
INL void scores_shared(const int H, const klt_part *p, const unsigned char *rows, int b0, int b1, const float *qt,
                       const lane_maps *lm, float *s, int ld) {
    int n = p->b.n_coef;
    size_t bb = BLK * p->row_bytes;
    for (int bk = b0; bk < b1; bk++) {
        const unsigned char *blk = rows + (size_t)bk * bb;
        __m512 acc[16];
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) acc[h] = _mm512_setzero_ps();
        for (int j = 0; j < n; j++) {
            __m512 x = coef_vals(p, blk, j, lm);
            const float *qj = qt + (size_t)j * H;
#pragma GCC unroll 16
            for (int h = 0; h < H; h++) acc[h] = _mm512_fmadd_ps(x, _mm512_set1_ps(qj[h]), acc[h]);
        }
        __m512 g = block_gain(p, blk, bk);
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) _mm512_storeu_ps(s + (size_t)h * ld + (size_t)(bk - b0) * BLK, _mm512_mul_ps(acc[h], g));
    }
}

/* A[h·nv + j] = post_j Σ_t w[h·ld + t] level_tj over blocks [b0, b1), per-layer basis. */
INL void values_shared(const int H, const klt_part *p, const unsigned char *rows, int b0, int b1, const float *w, int ld,
                       const lane_maps *lm, float *A) {
    int n = p->b.n_coef;
    size_t bb = BLK * p->row_bytes;
    for (int j = 0; j < n; j++) {
        __m512 acc[16];
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) acc[h] = _mm512_setzero_ps();
        for (int bk = b0; bk < b1; bk++) {
            __m512 x = coef_vals(p, rows + (size_t)bk * bb, j, lm);
            const float *wb = w + (size_t)(bk - b0) * BLK;
#pragma GCC unroll 16
            for (int h = 0; h < H; h++) acc[h] = _mm512_fmadd_ps(x, _mm512_loadu_ps(wb + (size_t)h * ld), acc[h]);
        }
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) A[(size_t)h * n + j] = _mm512_reduce_add_ps(acc[h]) * p->post[j];
    }
}

/* Per-head bases: each coefficient belongs to one head (qt: H × n_coef, a head's from 0). */
static void scores_heads(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *qt,
                         const lane_maps *lm, float *s, int ld) {
    const ea_kv_basis *b = &p->b;
    size_t bb = BLK * p->row_bytes;
    for (int bk = b0; bk < b1; bk++) {
        const unsigned char *blk = rows + (size_t)bk * bb;
        __m512 g = block_gain(p, blk, bk);
        for (int h = 0; h < b->n_head; h++) {
            __m512 acc = _mm512_setzero_ps();
            const float *qh = qt + (size_t)h * b->n_coef - b->lo[h];
            for (int j = b->lo[h]; j < b->hi[h]; j++) acc = _mm512_fmadd_ps(coef_vals(p, blk, j, lm), _mm512_set1_ps(qh[j]), acc);
            _mm512_storeu_ps(s + (size_t)h * ld + (size_t)(bk - b0) * BLK, _mm512_mul_ps(acc, g));
        }
    }
}

static void values_heads(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *w, int ld,
                         const lane_maps *lm, float *A) {
    const ea_kv_basis *b = &p->b;
    size_t bb = BLK * p->row_bytes;
    for (int h = 0; h < b->n_head; h++)
        for (int j = b->lo[h]; j < b->hi[h]; j++) {
            __m512 acc = _mm512_setzero_ps();
            for (int bk = b0; bk < b1; bk++)
                acc = _mm512_fmadd_ps(coef_vals(p, rows + (size_t)bk * bb, j, lm),
                                      _mm512_loadu_ps(w + (size_t)h * ld + (size_t)(bk - b0) * BLK), acc);
            A[(size_t)h * b->n_coef + (j - b->lo[h])] = _mm512_reduce_add_ps(acc) * p->post[j];
        }
}

static int shared_ok(int H) { return H == 4 || H == 8 || H == 12 || H == 16; }

static void scores_any(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *qt, const lane_maps *lm,
                       float *s, int ld) {
    if (!p->b.shared) {
        scores_heads(p, rows, b0, b1, qt, lm, s, ld);
        return;
    }
    switch (p->b.n_head) {
    case 4: scores_shared(4, p, rows, b0, b1, qt, lm, s, ld); break;
    case 8: scores_shared(8, p, rows, b0, b1, qt, lm, s, ld); break;
    case 12: scores_shared(12, p, rows, b0, b1, qt, lm, s, ld); break;
    default: scores_shared(16, p, rows, b0, b1, qt, lm, s, ld); break;
    }
}

static void values_any(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *w, int ld,
                       const lane_maps *lm, float *A) {
    if (!p->b.shared) {
        values_heads(p, rows, b0, b1, w, ld, lm, A);
        return;
    }
    switch (p->b.n_head) {
    case 4: values_shared(4, p, rows, b0, b1, w, ld, lm, A); break;
    case 8: values_shared(8, p, rows, b0, b1, w, ld, lm, A); break;
    case 12: values_shared(12, p, rows, b0, b1, w, ld, lm, A); break;
    default: values_shared(16, p, rows, b0, b1, w, ld, lm, A); break;
    }
}

/* One thread's blocks [b0, b1) of keys first..T-1: its softmax state (max m[H], sum l[H], weighted
 * value coefficients A[H × nv]). s: H × ld scratch, ld = 16·(b1 - b0). */
static void thread_range(const klt_part *k, const klt_part *v, const unsigned char *kr, const unsigned char *vr, int first,
                         int T, int b0, int b1, const float *qt, const lane_maps *lm, float *s, float *m, float *l,
                         float *A) {
    int H = k->b.n_head, ld = BLK * (b1 - b0);
    scores_any(k, kr, b0, b1, qt, lm, s, ld);
    for (int h = 0; h < H; h++) { /* rows outside first..T-1 (the sink lane, past the end) weigh 0 */
        float *sh = s + (size_t)h * ld;
        for (int t = b0 * BLK; t < first; t++) sh[t - b0 * BLK] = -INFINITY;
        for (int t = T; t < b1 * BLK; t++) sh[t - b0 * BLK] = -INFINITY;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int i = 0; i < ld; i += BLK) mx = _mm512_max_ps(mx, _mm512_loadu_ps(sh + i));
        m[h] = _mm512_reduce_max_ps(mx);
        __m512 vm = _mm512_set1_ps(m[h]), sum = _mm512_setzero_ps();
        for (int i = 0; i < ld; i += BLK) {
            __m512 x = _mm512_loadu_ps(sh + i);
            __m512 e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ),
                                           ea_kv_exp_ps(_mm512_sub_ps(x, vm)));
            sum = _mm512_add_ps(sum, e);
            _mm512_storeu_ps(sh + i, e);
        }
        l[h] = m[h] == -INFINITY ? 0.0f : _mm512_reduce_add_ps(sum);
    }
    size_t bb = BLK * v->row_bytes;
    for (int bk = b0; bk < b1; bk++) /* the value rows' gains scale their weights */
        if (has_gain(v, bk)) {
            __m512 g = block_gain(v, vr + (size_t)bk * bb, bk);
            for (int h = 0; h < H; h++) {
                float *w = s + (size_t)h * ld + (size_t)(bk - b0) * BLK;
                _mm512_storeu_ps(w, _mm512_mul_ps(_mm512_loadu_ps(w), g));
            }
        }
    values_any(v, vr, b0, b1, s, ld, lm, A);
}

int ea_kv_klt_attend_one(const klt_part *k, const klt_part *v, const void *krows, const void *vrows,
                         const uint16_t *ksink, const uint16_t *vsink, const float *q, int T, float *out) {
    const ea_kv_basis *bk = &k->b, *bv = &v->b;
    int H = bk->n_head, hd = bk->hd, nk = bk->n_coef, nv = bv->n_coef;
    if (bk->shared != bv->shared || (bk->shared && !shared_ok(H)) || !ksink != !vsink || T < 1) return 0;
    int first = ksink ? 1 : 0, nblk = (T + BLK - 1) / BLK;
    float scale = 1.0f / sqrtf((float)hd);
    /* the query in coefficient space, σ and the softmax scale folded in: per-layer bases
     * coefficient-major (qt[j·H + h]), per-head bases head-major (qt[h·nk + j]) */
    float *qt = malloc(sizeof(float) * ((size_t)H * nk + 1));
    lane_maps *lm = aligned_alloc(64, sizeof(lane_maps));
    float s0[16 > H ? 16 : H];
    int nth = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) nth = omp_get_max_threads();
#endif
    if (nth > nblk / BLOCKS_PER_THREAD) nth = nblk / BLOCKS_PER_THREAD > 0 ? nblk / BLOCKS_PER_THREAD : 1;
    size_t per = (size_t)2 * H + (size_t)H * nv, chunk = (size_t)H * BLK * ((nblk + nth - 1) / nth);
    float *states = malloc(sizeof(float) * (per * nth + 1)), *scratch = malloc(sizeof(float) * chunk * nth);
    if (!qt || !lm || !states || !scratch) {
        free(qt);
        free(lm);
        free(states);
        free(scratch);
        return 0;
    }
    lane_maps_init(lm);
    for (int h = 0; h < H; h++) {
        const float *w = bk->w[h], *qh = q + h * hd;
        for (int j = 0; j < bk->hi[h] - bk->lo[h]; j++, w += hd) {
            float a = 0;
            for (int i = 0; i < hd; i++) a += w[i] * qh[i];
            a *= scale * k->post[bk->lo[h] + j];
            qt[bk->shared ? (size_t)j * H + h : (size_t)h * nk + j] = a;
        }
    }
    if (first) ea_kv_sink_scores(bk, ksink, q, scale, s0);
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        int b0 = (int)((long)nblk * tid / nth), b1 = (int)((long)nblk * (tid + 1) / nth);
        float *st = states + per * tid;
        thread_range(k, v, krows, vrows, first, T, b0, b1, qt, lm, scratch + chunk * tid, st, st + H, st + 2 * H);
    }
    ea_kv_attend_merge(bv, vsink, states, per, nth, first ? s0 : NULL, out);
    free(qt);
    free(lm);
    free(states);
    free(scratch);
    return 1;
}

#else

int ea_kv_klt_attend_one(const klt_part *k, const klt_part *v, const void *krows, const void *vrows,
                         const uint16_t *ksink, const uint16_t *vsink, const float *q, int T, float *out) {
    (void)k, (void)v, (void)krows, (void)vrows, (void)ksink, (void)vsink, (void)q, (void)T, (void)out;
    return 0; /* no vector kernel in this build: the generic coefficient-space attention runs */
}

#endif
