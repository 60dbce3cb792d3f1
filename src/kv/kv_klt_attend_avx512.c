/* The AVX-512 (VBMI) thread pass of one-token attention on a klt cache (kv_klt_attend.c runs it),
 * read in its block layout (kv_klt.h).
 * With one basis per layer every head's score needs all kept coefficients of a key, so the cost is
 * decoding: a coefficient of 16 keys is one masked load, a byte permute, a shift and a register
 * table lookup, then one FMA per head on 16 keys at once (no per-key reductions). Scores, softmax
 * and value sums are three passes over a thread's blocks:
 *   scores  s_t = σ-folded query (W_hᵀ q_h)·levels_t, coefficient by coefficient;
 *   weights p_t = exp(s_t - max) (times the row gain for values);
 *   values  A_hj = Σ_t p_t level_tj, coefficient by coefficient over the thread's blocks, so the
 *           16-key partial sums stay in registers and are reduced once per coefficient.
 * kv_klt_attend.c merges the threads' partial softmax states. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kv/kv_klt.h"
#include "attend/simd.h"

#ifdef EA_X86
EA_TARGET_AVX512VBMI_BEGIN /* the whole file: called only when the CPU has it (kv_klt_attend.c) */

#define BLK EA_KV_KLT_BLOCK
#define TILE_BYTES 24576    /* blocks the value pass keeps in L1 at a time */
#define INL static inline __attribute__((always_inline))

/* Per code width b: the byte permute that brings bytes (i·b)/8 .. +3 of a segment into 32-bit
 * lane i, and the shift that then puts the code in its low bits. */
typedef struct {
    _Alignas(64) unsigned char idx[EA_KV_QBITS + 1][64];
    _Alignas(64) unsigned int sh[EA_KV_QBITS + 1][16];
} lane_maps;

static lane_maps lanes;
static pthread_once_t lanes_once = PTHREAD_ONCE_INIT;

static void lanes_init(void) {
    lane_maps *m = &lanes;
    for (int b = 1; b <= EA_KV_QBITS; b++)
        for (int i = 0; i < BLK; i++) {
            for (int k = 0; k < 4; k++) {
                int byte = (i * b >> 3) + k;
                m->idx[b][4 * i + k] = (unsigned char)(byte < 63 ? byte : 63);
            }
            m->sh[b][i] = (unsigned)(i * b & 7);
        }
}

/* How a run of coefficients (same width, same level table) turns codes into levels. */
enum { CLS_LUT16, CLS_LUT32, CLS_LUT64, CLS_LUT128, CLS_GATHER, CLS_UNIFORM };

typedef struct {
    __m512i idx, sh, and;
    __mmask64 mask;
    __m512 t[8]; /* the padded table in registers (CLS_LUT*) */
    const float *tab;
} run_dec;

INL int run_class(const klt_part *p, int j) {
    int b = p->bits[j];
    if (!p->tab[j]) return CLS_UNIFORM;
    if (!p->ptab[j]) return CLS_GATHER;
    return b <= 4 ? CLS_LUT16 : b == 5 ? CLS_LUT32 : b == 6 ? CLS_LUT64 : CLS_LUT128;
}

INL void run_setup(const int cls, const klt_part *p, const klt_run *r, const lane_maps *lm, run_dec *d) {
    int b = r->b, nt = cls == CLS_LUT16 ? 1 : cls == CLS_LUT32 ? 2 : cls == CLS_LUT64 ? 4 : cls == CLS_LUT128 ? 8 : 0;
    d->idx = _mm512_load_si512(lm->idx[b]);
    d->sh = _mm512_load_si512(lm->sh[b]);
    d->and = _mm512_set1_epi32((1 << b) - 1);
    d->mask = (((__mmask64)1) << (2 * b)) - 1;
    for (int i = 0; i < nt; i++) d->t[i] = _mm512_loadu_ps(p->ptab[r->j0] + 16 * i);
    d->tab = p->tab[r->j0];
}

/* Levels of one coefficient (its codes at seg) for the 16 rows of a block, before the row gain
 * and σ; register lookups read only the index bits they need. */
INL __m512 run_vals(const int cls, const run_dec *d, const klt_part *p, int j, const unsigned char *seg) {
    __m512i x = _mm512_srlv_epi32(_mm512_permutexvar_epi8(d->idx, _mm512_maskz_loadu_epi8(d->mask, seg)), d->sh);
    switch (cls) {
    case CLS_LUT16: return _mm512_permutexvar_ps(x, d->t[0]);
    case CLS_LUT32: return _mm512_permutex2var_ps(d->t[0], x, d->t[1]);
    case CLS_LUT64:
    case CLS_LUT128: {
        __mmask16 b5 = _mm512_test_epi32_mask(x, _mm512_set1_epi32(32));
        __m512 lo = _mm512_mask_blend_ps(b5, _mm512_permutex2var_ps(d->t[0], x, d->t[1]), _mm512_permutex2var_ps(d->t[2], x, d->t[3]));
        if (cls == CLS_LUT64) return lo;
        __m512 hi = _mm512_mask_blend_ps(b5, _mm512_permutex2var_ps(d->t[4], x, d->t[5]), _mm512_permutex2var_ps(d->t[6], x, d->t[7]));
        return _mm512_mask_blend_ps(_mm512_test_epi32_mask(x, _mm512_set1_epi32(64)), lo, hi);
    }
    case CLS_GATHER: return _mm512_i32gather_ps(_mm512_and_si512(x, d->and), d->tab, 4);
    default:
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(x, d->and)), _mm512_set1_ps(p->lv_a[j]),
                               _mm512_set1_ps(p->lv_c[j]));
    }
}

/* Gains of the 16 rows of block bk: the stored f16 row gains, position 0's step gain. */
INL __m512 block_gain(const klt_part *p, const unsigned char *blk, int bk) {
    __m512 g = p->hdr ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)blk)) : _mm512_set1_ps(1.0f);
    if (bk == 0 && p->pos0_gain != 1.0f) g = _mm512_mask_mul_ps(g, 1, g, _mm512_set1_ps(p->pos0_gain));
    return g;
}

INL int has_gain(const klt_part *p, int bk) { return p->hdr || (bk == 0 && p->pos0_gain != 1.0f); }

/* Scratch layout: scores and weights of block bk, head h at s[(bk - b0)·H·16 + h·16]. */
#define SIDX(bk, h) ((size_t)(bk) * H * BLK + (size_t)(h) * BLK)

/* acc[h] (16 rows) += Σ over a run's coefficients of level · qt[j·H + h] (per-layer basis: every
 * head reads every coefficient; H a compile-time constant so the accumulators stay in registers). */
INL void run_scores(const int cls, const int H, const klt_part *p, const klt_run *r, const lane_maps *lm,
                    const unsigned char *blk, const float *qt, __m512 *acc) {
    run_dec d;
    run_setup(cls, p, r, lm, &d);
    const unsigned char *seg = blk + p->off[r->j0];
    for (int j = r->j0; j < r->j0 + r->n; j++, seg += 2 * r->b) {
        __m512 x = run_vals(cls, &d, p, j, seg);
        const float *qj = qt + (size_t)j * H;
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) acc[h] = _mm512_fmadd_ps(x, _mm512_set1_ps(qj[h]), acc[h]);
    }
}

INL void scores_shared(const int H, const klt_part *p, const unsigned char *rows, int b0, int b1, const float *qt,
                       const lane_maps *lm, float *s) {
    size_t bb = BLK * p->row_bytes;
    for (int bk = b0; bk < b1; bk++) {
        const unsigned char *blk = rows + (size_t)bk * bb;
        __m512 acc[16];
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) acc[h] = _mm512_setzero_ps();
        for (int ri = 0; ri < p->n_runs; ri++) {
            const klt_run *r = &p->runs[ri];
            switch (run_class(p, r->j0)) {
            case CLS_LUT16: run_scores(CLS_LUT16, H, p, r, lm, blk, qt, acc); break;
            case CLS_LUT32: run_scores(CLS_LUT32, H, p, r, lm, blk, qt, acc); break;
            case CLS_LUT64: run_scores(CLS_LUT64, H, p, r, lm, blk, qt, acc); break;
            case CLS_LUT128: run_scores(CLS_LUT128, H, p, r, lm, blk, qt, acc); break;
            case CLS_GATHER: run_scores(CLS_GATHER, H, p, r, lm, blk, qt, acc); break;
            default: run_scores(CLS_UNIFORM, H, p, r, lm, blk, qt, acc); break;
            }
        }
        __m512 g = block_gain(p, blk, bk);
        float *sb = s + SIDX(bk - b0, 0);
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) _mm512_storeu_ps(sb + (size_t)h * BLK, _mm512_mul_ps(acc[h], g));
    }
}

/* The value sums of a run's coefficients over blocks [t0, t1) of the thread's [b0, b1): partial
 * 16-row sums parked in part between tiles, reduced into A (times σ) after the last tile. */
INL void run_values(const int cls, const int H, const klt_part *p, const klt_run *r, const lane_maps *lm,
                    const unsigned char *rows, int b0, int b1, int t0, int t1, const float *w, float *A, float *part) {
    run_dec d;
    run_setup(cls, p, r, lm, &d);
    size_t bb = BLK * p->row_bytes;
    int n = p->b.n_coef;
    for (int j = r->j0; j < r->j0 + r->n; j++) {
        __m512 acc[16];
        float *pj = part + (size_t)j * H * BLK;
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) acc[h] = t0 == b0 ? _mm512_setzero_ps() : _mm512_loadu_ps(pj + h * BLK);
        const unsigned char *seg = rows + (size_t)t0 * bb + p->off[j];
        const float *wb = w + SIDX(t0 - b0, 0);
        for (int bk = t0; bk < t1; bk++, seg += bb, wb += (size_t)H * BLK) {
            __m512 x = run_vals(cls, &d, p, j, seg);
#pragma GCC unroll 16
            for (int h = 0; h < H; h++) acc[h] = _mm512_fmadd_ps(x, _mm512_loadu_ps(wb + h * BLK), acc[h]);
        }
        if (t1 < b1) {
#pragma GCC unroll 16
            for (int h = 0; h < H; h++) _mm512_storeu_ps(pj + h * BLK, acc[h]);
            continue;
        }
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) A[(size_t)h * n + j] = _mm512_reduce_add_ps(acc[h]) * p->post[j];
    }
}

/* A[h·nv + j] = post_j Σ_t w_h(t) level_tj over blocks [b0, b1), per-layer basis. Blocks go in
 * tiles that stay in L1 while every coefficient passes over them. */
INL void values_shared(const int H, const klt_part *p, const unsigned char *rows, int b0, int b1, const float *w,
                       const lane_maps *lm, float *A, float *part) {
    size_t bb = BLK * p->row_bytes;
    int tile = (int)(TILE_BYTES / bb) > 1 ? (int)(TILE_BYTES / bb) : 1;
    for (int t0 = b0; t0 < b1; t0 += tile) {
        int t1 = b1 - t0 < tile ? b1 : t0 + tile;
        for (int ri = 0; ri < p->n_runs; ri++) {
            const klt_run *r = &p->runs[ri];
            switch (run_class(p, r->j0)) {
            case CLS_LUT16: run_values(CLS_LUT16, H, p, r, lm, rows, b0, b1, t0, t1, w, A, part); break;
            case CLS_LUT32: run_values(CLS_LUT32, H, p, r, lm, rows, b0, b1, t0, t1, w, A, part); break;
            case CLS_LUT64: run_values(CLS_LUT64, H, p, r, lm, rows, b0, b1, t0, t1, w, A, part); break;
            case CLS_LUT128: run_values(CLS_LUT128, H, p, r, lm, rows, b0, b1, t0, t1, w, A, part); break;
            case CLS_GATHER: run_values(CLS_GATHER, H, p, r, lm, rows, b0, b1, t0, t1, w, A, part); break;
            default: run_values(CLS_UNIFORM, H, p, r, lm, rows, b0, b1, t0, t1, w, A, part); break;
            }
        }
    }
}

/* Per-head bases: each coefficient belongs to one head (qt: H × n_coef, a head's from 0; runs do
 * not cross heads). One accumulator per head and block. */
INL void run_scores1(const int cls, const klt_part *p, const klt_run *r, const lane_maps *lm, const unsigned char *blk,
                     const float *qh, __m512 *acc) {
    run_dec d;
    run_setup(cls, p, r, lm, &d);
    const unsigned char *seg = blk + p->off[r->j0];
    __m512 a0 = *acc, a1 = _mm512_setzero_ps(); /* two chains: FMA latency */
    int j = r->j0;
    for (; j + 1 < r->j0 + r->n; j += 2, seg += 4 * r->b) {
        a0 = _mm512_fmadd_ps(run_vals(cls, &d, p, j, seg), _mm512_set1_ps(qh[j]), a0);
        a1 = _mm512_fmadd_ps(run_vals(cls, &d, p, j + 1, seg + 2 * r->b), _mm512_set1_ps(qh[j + 1]), a1);
    }
    if (j < r->j0 + r->n) a0 = _mm512_fmadd_ps(run_vals(cls, &d, p, j, seg), _mm512_set1_ps(qh[j]), a0);
    *acc = _mm512_add_ps(a0, a1);
}

INL void run_values1(const int cls, const klt_part *p, const klt_run *r, const lane_maps *lm, const unsigned char *rows,
                     int b0, int b1, const float *wh, size_t ws, float *Ah) {
    run_dec d;
    run_setup(cls, p, r, lm, &d);
    size_t bb = BLK * p->row_bytes;
    for (int j = r->j0; j < r->j0 + r->n; j++) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        const unsigned char *seg = rows + (size_t)b0 * bb + p->off[j];
        int bk = b0;
        for (; bk + 1 < b1; bk += 2, seg += 2 * bb) {
            a0 = _mm512_fmadd_ps(run_vals(cls, &d, p, j, seg), _mm512_loadu_ps(wh + (size_t)(bk - b0) * ws), a0);
            a1 = _mm512_fmadd_ps(run_vals(cls, &d, p, j, seg + bb), _mm512_loadu_ps(wh + (size_t)(bk + 1 - b0) * ws), a1);
        }
        if (bk < b1) a0 = _mm512_fmadd_ps(run_vals(cls, &d, p, j, seg), _mm512_loadu_ps(wh + (size_t)(bk - b0) * ws), a0);
        Ah[j] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * p->post[j];
    }
}

#define RUN_DISPATCH(fn, ...)                                                                                          \
    switch (run_class(p, r->j0)) {                                                                                     \
    case CLS_LUT16: fn(CLS_LUT16, __VA_ARGS__); break;                                                                 \
    case CLS_LUT32: fn(CLS_LUT32, __VA_ARGS__); break;                                                                 \
    case CLS_LUT64: fn(CLS_LUT64, __VA_ARGS__); break;                                                                 \
    case CLS_LUT128: fn(CLS_LUT128, __VA_ARGS__); break;                                                               \
    case CLS_GATHER: fn(CLS_GATHER, __VA_ARGS__); break;                                                               \
    default: fn(CLS_UNIFORM, __VA_ARGS__); break;                                                                      \
    }

/* The head a run belongs to (runs are in coefficient order, heads' ranges ascending). */
static int run_head(const ea_kv_basis *b, const klt_run *r) {
    int h = 0;
    while (h + 1 < b->n_head && r->j0 >= b->hi[h]) h++;
    return h;
}

static void scores_heads(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *qt,
                         const lane_maps *lm, float *s) {
    const ea_kv_basis *b = &p->b;
    int H = b->n_head;
    size_t bb = BLK * p->row_bytes;
    for (int bk = b0; bk < b1; bk++) {
        const unsigned char *blk = rows + (size_t)bk * bb;
        __m512 g = block_gain(p, blk, bk), acc[H];
        for (int h = 0; h < H; h++) acc[h] = _mm512_setzero_ps();
        for (int ri = 0; ri < p->n_runs; ri++) {
            const klt_run *r = &p->runs[ri];
            int h = run_head(b, r);
            const float *qh = qt + (size_t)h * b->n_coef - b->lo[h];
            RUN_DISPATCH(run_scores1, p, r, lm, blk, qh, &acc[h])
        }
        for (int h = 0; h < H; h++) _mm512_storeu_ps(s + SIDX(bk - b0, h), _mm512_mul_ps(acc[h], g));
    }
}

static void values_heads(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *w,
                         const lane_maps *lm, float *A) {
    const ea_kv_basis *b = &p->b;
    int H = b->n_head;
    for (int ri = 0; ri < p->n_runs; ri++) {
        const klt_run *r = &p->runs[ri];
        int h = run_head(b, r);
        RUN_DISPATCH(run_values1, p, r, lm, rows, b0, b1, w + SIDX(0, h), (size_t)H * BLK, A + (size_t)h * b->n_coef - b->lo[h])
    }
}

static void scores_any(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *qt, const lane_maps *lm,
                       float *s) {
    if (!p->b.shared) {
        scores_heads(p, rows, b0, b1, qt, lm, s);
        return;
    }
    switch (p->b.n_head) {
    case 4: scores_shared(4, p, rows, b0, b1, qt, lm, s); break;
    case 8: scores_shared(8, p, rows, b0, b1, qt, lm, s); break;
    case 12: scores_shared(12, p, rows, b0, b1, qt, lm, s); break;
    default: scores_shared(16, p, rows, b0, b1, qt, lm, s); break;
    }
}

static void values_any(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *w,
                       const lane_maps *lm, float *A, float *part) {
    if (!p->b.shared) {
        values_heads(p, rows, b0, b1, w, lm, A);
        return;
    }
    switch (p->b.n_head) {
    case 4: values_shared(4, p, rows, b0, b1, w, lm, A, part); break;
    case 8: values_shared(8, p, rows, b0, b1, w, lm, A, part); break;
    case 12: values_shared(12, p, rows, b0, b1, w, lm, A, part); break;
    default: values_shared(16, p, rows, b0, b1, w, lm, A, part); break;
    }
}

/* One thread's blocks [b0, b1) of keys first..T-1: its softmax state (max m[H], sum l[H], weighted
 * value coefficients A[H × nv]). s: H × 16·(b1 - b0) scratch (SIDX layout); part: nv × H × 16. */
static void thread_range(const klt_part *k, const klt_part *v, const unsigned char *kr, const unsigned char *vr, int first,
                         int T, int b0, int b1, const float *qt, const lane_maps *lm, float *s, float *part, float *m,
                         float *l, float *A) {
    int H = k->b.n_head;
    scores_any(k, kr, b0, b1, qt, lm, s);
    for (int t = b0 * BLK; t < first; t++) /* rows outside first..T-1 (the sink, past the end) weigh 0 */
        for (int h = 0; h < H; h++) s[SIDX(t / BLK - b0, h) + t % BLK] = -INFINITY;
    for (int t = T; t < b1 * BLK; t++)
        for (int h = 0; h < H; h++) s[SIDX(t / BLK - b0, h) + t % BLK] = -INFINITY;
    for (int h = 0; h < H; h++) {
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int bk = 0; bk < b1 - b0; bk++) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + SIDX(bk, h)));
        m[h] = _mm512_reduce_max_ps(mx);
        __m512 vm = _mm512_set1_ps(m[h]), sum = _mm512_setzero_ps();
        for (int bk = 0; bk < b1 - b0; bk++) {
            float *sh = s + SIDX(bk, h);
            __m512 x = _mm512_loadu_ps(sh);
            __m512 e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ),
                                           ea_kv_exp_ps(_mm512_sub_ps(x, vm)));
            sum = _mm512_add_ps(sum, e);
            _mm512_storeu_ps(sh, e);
        }
        l[h] = m[h] == -INFINITY ? 0.0f : _mm512_reduce_add_ps(sum);
    }
    size_t bb = BLK * v->row_bytes;
    for (int bk = b0; bk < b1; bk++) /* the value rows' gains scale their weights */
        if (has_gain(v, bk)) {
            __m512 g = block_gain(v, vr + (size_t)bk * bb, bk);
            for (int h = 0; h < H; h++) {
                float *w = s + SIDX(bk - b0, h);
                _mm512_storeu_ps(w, _mm512_mul_ps(_mm512_loadu_ps(w), g));
            }
        }
    values_any(v, vr, b0, b1, s, lm, A, part);
}

size_t ea_kv_klt_kernel_scratch_avx512(int H, int nv, int nb) { return (size_t)H * BLK * ((size_t)nb + (size_t)nv); }

/* scratch: the scores of the thread's blocks, then the value pass's partial sums */
void ea_kv_klt_kernel_range_avx512(const klt_part *k, const klt_part *v, const unsigned char *kr, const unsigned char *vr,
                            int first, int T, int b0, int b1, const float *qt, float *scratch, float *st) {
    pthread_once(&lanes_once, lanes_init);
    int H = k->b.n_head;
    thread_range(k, v, kr, vr, first, T, b0, b1, qt, &lanes, scratch, scratch + (size_t)H * BLK * (b1 - b0), st, st + H,
                 st + 2 * H);
}

EA_TARGET_END
#endif
