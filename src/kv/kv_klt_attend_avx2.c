/* The AVX2 thread pass (x86-64-v3: AVX2, FMA, F16C) of one-token attention on a klt cache
 * (kv_klt_attend.c runs it), read in its block layout (kv_klt.h). The passes are those of the
 * AVX-512 kernel (kv_klt_attend_avx512.c): scores coefficient by coefficient, softmax weights,
 * value sums coefficient by coefficient. Registers hold 8 lanes, so a block's 16 rows are two halves of
 * 8: eight codes of b bits fill b bytes exactly, so a half's codes are one 64-bit word, spread to
 * lanes by a byte shuffle and a per-lane shift; levels come from register tables (vpermps) up to
 * 5 bits, a gather above, arithmetic for uniform levels. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kv/kv_klt.h"
#include "attend/simd.h"

#ifdef EA_X86
EA_TARGET_AVX2_BEGIN /* the whole file: called only when the tier has AVX2 (kv_klt_attend.c) */

#define BLK EA_KV_KLT_BLOCK
#define HALF 8
#define INL static inline __attribute__((always_inline))

/* Per code width b <= 8: the bytes of a half's word that hold lane i's code (byte i·b/8 and the
 * next; 0x80 zeroes a byte) and the shift that then brings the code to the low bits. */
typedef struct {
    _Alignas(32) unsigned char idx[9][32];
    _Alignas(32) int sh[9][8];
} lane_maps;

static lane_maps lanes;
static pthread_once_t lanes_once = PTHREAD_ONCE_INIT;

static void lanes_init(void) {
    for (int b = 1; b <= 8; b++)
        for (int i = 0; i < HALF; i++) {
            int byte = i * b >> 3, at = 4 * (i & 3) + 16 * (i >> 2); /* lanes 4..7: the upper 128 bits */
            lanes.idx[b][at] = (unsigned char)byte;
            lanes.idx[b][at + 1] = (unsigned char)(byte + 1 < 8 ? byte + 1 : 0x80);
            lanes.idx[b][at + 2] = lanes.idx[b][at + 3] = 0x80;
            lanes.sh[b][i] = i * b & 7;
        }
}

/* How a run of coefficients (same width, same level table) turns codes into levels. */
enum { CLS_LUT16, CLS_LUT32, CLS_GATHER, CLS_UNIFORM };

INL int run_class(const klt_part *p, int j) {
    if (!p->tab[j]) return CLS_UNIFORM;
    if (!p->ptab[j] || p->bits[j] > 5) return CLS_GATHER;
    return p->bits[j] <= 4 ? CLS_LUT16 : CLS_LUT32;
}

typedef struct {
    __m256i idx, sh, mask;
    __m256 t[4]; /* the padded table in registers (CLS_LUT*) */
    const float *tab;
    int b;
    size_t safe_end; /* a segment starting below this offset may be read as 16 bytes */
} run_dec;

INL void run_setup(const int cls, const klt_part *p, const klt_run *r, size_t bb, run_dec *d) {
    int b = r->b, nt = cls == CLS_LUT16 ? 2 : cls == CLS_LUT32 ? 4 : 0;
    d->b = b;
    d->idx = _mm256_load_si256((const __m256i *)(const void *)lanes.idx[b <= 8 ? b : 8]);
    d->sh = _mm256_load_si256((const __m256i *)(const void *)lanes.sh[b <= 8 ? b : 8]);
    d->mask = _mm256_set1_epi32((1 << b) - 1);
    for (int i = 0; i < nt; i++) d->t[i] = _mm256_loadu_ps(p->ptab[r->j0] + 8 * i);
    d->tab = p->tab[r->j0];
    d->safe_end = bb >= 16 ? bb - 16 : 0;
}

/* Codes of half hf of a coefficient whose segment is at byte off of the block blk. */
INL __m256i half_codes(const run_dec *d, const unsigned char *blk, size_t off, int hf) {
    const unsigned char *p = blk + off + (size_t)hf * (size_t)d->b;
    if (d->b > 8) { /* wide codes (rare): one at a time */
        _Alignas(32) int c[HALF];
        for (int i = 0; i < HALF; i++) {
            size_t pos = (size_t)i * (size_t)d->b;
            uint32_t v = p[pos >> 3] | (uint32_t)p[(pos >> 3) + 1] << 8;
            if ((pos & 7) + (size_t)d->b > 16) v |= (uint32_t)p[(pos >> 3) + 2] << 16;
            c[i] = (int)((v >> (pos & 7)) & ((1u << d->b) - 1u));
        }
        return _mm256_load_si256((const __m256i *)(const void *)c);
    }
    uint64_t w = 0;
    if (off < d->safe_end) memcpy(&w, p, 8); /* inside the block: one load */
    else
        for (int k = 0; k < d->b; k++) w |= (uint64_t)p[k] << (8 * k); /* the block's end: no read past it */
    __m256i x = _mm256_shuffle_epi8(_mm256_set1_epi64x((long long)w), d->idx);
    return _mm256_and_si256(_mm256_srlv_epi32(x, d->sh), d->mask);
}

/* table[x] for a 16-entry table in two registers: bit 3 of x picks the register */
INL __m256 lut16(__m256 t0, __m256 t1, __m256i x) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, x), _mm256_permutevar8x32_ps(t1, x),
                            _mm256_castsi256_ps(_mm256_slli_epi32(x, 28)));
}

/* Levels of coefficient j for half hf of the block (before the row gain and σ). */
INL __m256 half_vals(const int cls, const run_dec *d, const klt_part *p, int j, const unsigned char *blk, int hf) {
    __m256i x = half_codes(d, blk, (size_t)p->off[j], hf);
    switch (cls) {
    case CLS_LUT16: return lut16(d->t[0], d->t[1], x);
    case CLS_LUT32:
        return _mm256_blendv_ps(lut16(d->t[0], d->t[1], x), lut16(d->t[2], d->t[3], x),
                                _mm256_castsi256_ps(_mm256_slli_epi32(x, 27)));
    case CLS_GATHER: return _mm256_i32gather_ps(d->tab, x, 4);
    default:
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(x), _mm256_set1_ps(p->lv_a[j]), _mm256_set1_ps(p->lv_c[j]));
    }
}

/* Gains of half hf of block bk's rows: the stored f16 row gains, position 0's step gain. */
INL __m256 half_gain(const klt_part *p, const unsigned char *blk, int bk, int hf) {
    __m256 g = p->hdr ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(blk + 2 * HALF * hf)))
                      : _mm256_set1_ps(1.0f);
    if (bk == 0 && hf == 0 && p->pos0_gain != 1.0f) g = _mm256_mul_ps(g, _mm256_setr_ps(p->pos0_gain, 1, 1, 1, 1, 1, 1, 1));
    return g;
}

INL int has_gain(const klt_part *p, int bk) { return p->hdr || (bk == 0 && p->pos0_gain != 1.0f); }

/* Scratch layout: scores and weights of block bk, head h at s[(bk - b0)·H·16 + h·16]. */
#define SIDX(bk, h) ((size_t)(bk) * H * BLK + (size_t)(h) * BLK)

#define RUN_DISPATCH(fn, ...)                                                                                          \
    switch (run_class(p, r->j0)) {                                                                                     \
    case CLS_LUT16: fn(CLS_LUT16, __VA_ARGS__); break;                                                                 \
    case CLS_LUT32: fn(CLS_LUT32, __VA_ARGS__); break;                                                                 \
    case CLS_GATHER: fn(CLS_GATHER, __VA_ARGS__); break;                                                               \
    default: fn(CLS_UNIFORM, __VA_ARGS__); break;                                                                      \
    }

/* ---- per-layer basis: every head reads every coefficient (qt[j·H + h]); H a compile-time
 * constant so the per-head accumulators of a half stay in registers ---- */

INL void run_scores(const int cls, const int H, const klt_part *p, const klt_run *r, size_t bb, const unsigned char *blk,
                    int hf, const float *qt, __m256 *acc) {
    run_dec d;
    run_setup(cls, p, r, bb, &d);
    for (int j = r->j0; j < r->j0 + r->n; j++) {
        __m256 x = half_vals(cls, &d, p, j, blk, hf);
        const float *qj = qt + (size_t)j * H;
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) acc[h] = _mm256_fmadd_ps(x, _mm256_broadcast_ss(qj + h), acc[h]);
    }
}

INL void scores_shared(const int H, const klt_part *p, const unsigned char *rows, int b0, int b1, const float *qt, float *s) {
    size_t bb = BLK * p->row_bytes;
    for (int bk = b0; bk < b1; bk++) {
        const unsigned char *blk = rows + (size_t)bk * bb;
        for (int hf = 0; hf < 2; hf++) {
            __m256 acc[16];
#pragma GCC unroll 16
            for (int h = 0; h < H; h++) acc[h] = _mm256_setzero_ps();
            for (int ri = 0; ri < p->n_runs; ri++) {
                const klt_run *r = &p->runs[ri];
                RUN_DISPATCH(run_scores, H, p, r, bb, blk, hf, qt, acc)
            }
            __m256 g = half_gain(p, blk, bk, hf);
            float *sb = s + SIDX(bk - b0, 0) + HALF * hf;
#pragma GCC unroll 16
            for (int h = 0; h < H; h++) _mm256_storeu_ps(sb + (size_t)h * BLK, _mm256_mul_ps(acc[h], g));
        }
    }
}

/* A[h·nv + j] = post_j Σ_t w_h(t) level_tj over blocks [b0, b1) for a run's coefficients. */
INL void run_values(const int cls, const int H, const klt_part *p, const klt_run *r, const unsigned char *rows, int b0,
                    int b1, const float *w, float *A) {
    size_t bb = BLK * p->row_bytes;
    run_dec d;
    run_setup(cls, p, r, bb, &d);
    int n = p->b.n_coef;
    for (int j = r->j0; j < r->j0 + r->n; j++) {
        __m256 acc[16];
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) acc[h] = _mm256_setzero_ps();
        const unsigned char *blk = rows + (size_t)b0 * bb;
        const float *wb = w;
        for (int bk = b0; bk < b1; bk++, blk += bb, wb += (size_t)H * BLK)
            for (int hf = 0; hf < 2; hf++) {
                __m256 x = half_vals(cls, &d, p, j, blk, hf);
#pragma GCC unroll 16
                for (int h = 0; h < H; h++) acc[h] = _mm256_fmadd_ps(x, _mm256_loadu_ps(wb + h * BLK + HALF * hf), acc[h]);
            }
#pragma GCC unroll 16
        for (int h = 0; h < H; h++) A[(size_t)h * n + j] = ea_kv_hsum8(acc[h]) * p->post[j];
    }
}

INL void values_shared(const int H, const klt_part *p, const unsigned char *rows, int b0, int b1, const float *w, float *A) {
    for (int ri = 0; ri < p->n_runs; ri++) {
        const klt_run *r = &p->runs[ri];
        RUN_DISPATCH(run_values, H, p, r, rows, b0, b1, w, A)
    }
}

/* ---- per-head bases: each coefficient belongs to one head (qt: H × n_coef, a head's from 0;
 * runs do not cross heads) ---- */

INL void run_scores1(const int cls, const klt_part *p, const klt_run *r, size_t bb, const unsigned char *blk, int hf,
                     const float *qh, __m256 *acc) {
    run_dec d;
    run_setup(cls, p, r, bb, &d);
    __m256 a0 = *acc, a1 = _mm256_setzero_ps(); /* two chains: FMA latency */
    int j = r->j0;
    for (; j + 1 < r->j0 + r->n; j += 2) {
        a0 = _mm256_fmadd_ps(half_vals(cls, &d, p, j, blk, hf), _mm256_set1_ps(qh[j]), a0);
        a1 = _mm256_fmadd_ps(half_vals(cls, &d, p, j + 1, blk, hf), _mm256_set1_ps(qh[j + 1]), a1);
    }
    if (j < r->j0 + r->n) a0 = _mm256_fmadd_ps(half_vals(cls, &d, p, j, blk, hf), _mm256_set1_ps(qh[j]), a0);
    *acc = _mm256_add_ps(a0, a1);
}

INL void run_values1(const int cls, const klt_part *p, const klt_run *r, const unsigned char *rows, int b0, int b1,
                     const float *wh, size_t ws, float *Ah) {
    size_t bb = BLK * p->row_bytes;
    run_dec d;
    run_setup(cls, p, r, bb, &d);
    for (int j = r->j0; j < r->j0 + r->n; j++) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        const unsigned char *blk = rows + (size_t)b0 * bb;
        for (int bk = b0; bk < b1; bk++, blk += bb) {
            const float *wb = wh + (size_t)(bk - b0) * ws;
            a0 = _mm256_fmadd_ps(half_vals(cls, &d, p, j, blk, 0), _mm256_loadu_ps(wb), a0);
            a1 = _mm256_fmadd_ps(half_vals(cls, &d, p, j, blk, 1), _mm256_loadu_ps(wb + HALF), a1);
        }
        Ah[j] = ea_kv_hsum8(_mm256_add_ps(a0, a1)) * p->post[j];
    }
}

/* The head a run belongs to (runs are in coefficient order, heads' ranges ascending). */
static int run_head(const ea_kv_basis *b, const klt_run *r) {
    int h = 0;
    while (h + 1 < b->n_head && r->j0 >= b->hi[h]) h++;
    return h;
}

static void scores_heads(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *qt, float *s) {
    const ea_kv_basis *b = &p->b;
    int H = b->n_head;
    size_t bb = BLK * p->row_bytes;
    for (int bk = b0; bk < b1; bk++) {
        const unsigned char *blk = rows + (size_t)bk * bb;
        for (int hf = 0; hf < 2; hf++) {
            __m256 g = half_gain(p, blk, bk, hf), acc[H];
            for (int h = 0; h < H; h++) acc[h] = _mm256_setzero_ps();
            for (int ri = 0; ri < p->n_runs; ri++) {
                const klt_run *r = &p->runs[ri];
                int h = run_head(b, r);
                const float *qh = qt + (size_t)h * b->n_coef - b->lo[h];
                RUN_DISPATCH(run_scores1, p, r, bb, blk, hf, qh, &acc[h])
            }
            for (int h = 0; h < H; h++) _mm256_storeu_ps(s + SIDX(bk - b0, h) + HALF * hf, _mm256_mul_ps(acc[h], g));
        }
    }
}

static void values_heads(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *w, float *A) {
    const ea_kv_basis *b = &p->b;
    int H = b->n_head;
    for (int ri = 0; ri < p->n_runs; ri++) {
        const klt_run *r = &p->runs[ri];
        int h = run_head(b, r);
        RUN_DISPATCH(run_values1, p, r, rows, b0, b1, w + SIDX(0, h), (size_t)H * BLK, A + (size_t)h * b->n_coef - b->lo[h])
    }
}

static void scores_any(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *qt, float *s) {
    if (!p->b.shared) {
        scores_heads(p, rows, b0, b1, qt, s);
        return;
    }
    switch (p->b.n_head) {
    case 4: scores_shared(4, p, rows, b0, b1, qt, s); break;
    case 8: scores_shared(8, p, rows, b0, b1, qt, s); break;
    case 12: scores_shared(12, p, rows, b0, b1, qt, s); break;
    default: scores_shared(16, p, rows, b0, b1, qt, s); break;
    }
}

static void values_any(const klt_part *p, const unsigned char *rows, int b0, int b1, const float *w, float *A) {
    if (!p->b.shared) {
        values_heads(p, rows, b0, b1, w, A);
        return;
    }
    switch (p->b.n_head) {
    case 4: values_shared(4, p, rows, b0, b1, w, A); break;
    case 8: values_shared(8, p, rows, b0, b1, w, A); break;
    case 12: values_shared(12, p, rows, b0, b1, w, A); break;
    default: values_shared(16, p, rows, b0, b1, w, A); break;
    }
}

/* One thread's blocks [b0, b1) of keys first..T-1: its softmax state (max m[H], sum l[H], weighted
 * value coefficients A[H × nv]). s: H × 16·(b1 - b0) scratch (SIDX layout). */
static void thread_range(const klt_part *k, const klt_part *v, const unsigned char *kr, const unsigned char *vr, int first,
                         int T, int b0, int b1, const float *qt, float *s, float *m, float *l, float *A) {
    int H = k->b.n_head;
    scores_any(k, kr, b0, b1, qt, s);
    for (int t = b0 * BLK; t < first; t++) /* rows outside first..T-1 (the sink, past the end) weigh 0 */
        for (int h = 0; h < H; h++) s[SIDX(t / BLK - b0, h) + t % BLK] = -INFINITY;
    for (int t = T; t < b1 * BLK; t++)
        for (int h = 0; h < H; h++) s[SIDX(t / BLK - b0, h) + t % BLK] = -INFINITY;
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    for (int h = 0; h < H; h++) {
        __m256 mx = ninf;
        for (int bk = 0; bk < b1 - b0; bk++)
            mx = _mm256_max_ps(mx, _mm256_max_ps(_mm256_loadu_ps(s + SIDX(bk, h)), _mm256_loadu_ps(s + SIDX(bk, h) + HALF)));
        m[h] = ea_kv_hmax8(mx);
        __m256 vm = _mm256_set1_ps(m[h]), sum = _mm256_setzero_ps();
        for (int bk = 0; bk < b1 - b0; bk++)
            for (int hf = 0; hf < 2; hf++) {
                float *sh = s + SIDX(bk, h) + HALF * hf;
                __m256 x = _mm256_loadu_ps(sh);
                __m256 e = _mm256_and_ps(_mm256_cmp_ps(x, ninf, _CMP_NEQ_OQ), ea_kv_exp8_ps(_mm256_sub_ps(x, vm)));
                sum = _mm256_add_ps(sum, e);
                _mm256_storeu_ps(sh, e);
            }
        l[h] = m[h] == -INFINITY ? 0.0f : ea_kv_hsum8(sum);
    }
    size_t bb = BLK * v->row_bytes;
    for (int bk = b0; bk < b1; bk++) /* the value rows' gains scale their weights */
        if (has_gain(v, bk))
            for (int hf = 0; hf < 2; hf++) {
                __m256 g = half_gain(v, vr + (size_t)bk * bb, bk, hf);
                for (int h = 0; h < H; h++) {
                    float *w = s + SIDX(bk - b0, h) + HALF * hf;
                    _mm256_storeu_ps(w, _mm256_mul_ps(_mm256_loadu_ps(w), g));
                }
            }
    values_any(v, vr, b0, b1, s, A);
}

size_t ea_kv_klt_kernel_scratch_avx2(int H, int nv, int nb) {
    (void)nv;
    return (size_t)H * BLK * (size_t)nb; /* the scores of the thread's blocks */
}

void ea_kv_klt_kernel_range_avx2(const klt_part *k, const klt_part *v, const unsigned char *kr, const unsigned char *vr,
                            int first, int T, int b0, int b1, const float *qt, float *scratch, float *st) {
    pthread_once(&lanes_once, lanes_init);
    int H = k->b.n_head;
    thread_range(k, v, kr, vr, first, T, b0, b1, qt, scratch, st, st + H, st + 2 * H);
}

EA_TARGET_END
#endif
