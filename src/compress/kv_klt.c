/* klt:B KV codec: transform coding of K and V rows.
 *   1. Rotate the row into the eigenbasis of its calibration covariance (the Karhunen-Loève
 *      transform, per layer or per head), so coefficients are uncorrelated with variances λ_j.
 *   2. Allocate whole bits per coefficient by greedy reverse water-filling: each step gives one bit
 *      to the coefficient whose distortion drops most (λ_j·(D_b - D_{b+1}) for the Gaussian
 *      quantizer distortions D_b), until the row's byte budget (B bits per value) is spent.
 *      Coefficients left with 0 bits are dropped and decode to the mean.
 *   3. Quantize each kept coefficient with the Gaussian-optimal scalar quantizer of its width,
 *      scaled by its standard deviation (optionally also by a per-row f16 gain).
 * Codes of a row form one little-endian bit stream in coefficient order. Attention reads the
 * codes directly in coefficient space (kv_attend.c); nothing is rebuilt in d dimensions. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define KLT_AVX512 1
#endif

#include "compress/kv_internal.h"
#include "compress/kv_quant.h"

/* Consecutive coefficients with the same code width (unpacked together). */
typedef struct {
    int j0, n, b;
} klt_run;

typedef struct {
    ea_kv_basis b;          /* kept coefficients only */
    unsigned char *bits;    /* n_coef code widths (1..EA_KV_QBITS) */
    float *sig;             /* n_coef standard deviations */
    const float **tab;      /* n_coef level tables (Lloyd-Max), or NULL: uniform levels */
    float *lv_a, *lv_c;     /* uniform levels: value = code·lv_a + lv_c (σ and step folded in) */
    const ea_kv_quant **qz; /* n_coef quantizers */
    klt_run *runs;
    int n_runs;
    size_t row_bytes;
    int hdr;                /* bytes before the codes (the f16 row gain) */
    float pos0_gain;        /* position 0 (an outlier row) is coded with steps this much wider */
    int sink;               /* position 0 is kept as an f16 row just before row 0 (its codes are unused) */
    double pred_mse;        /* expected squared error per row for Gaussian rows */
} klt_part;

typedef struct {
    ea_kv_klt_opts o;
    ea_kv_quant q[EA_KV_QBITS + 1]; /* by width; [0] unused */
    ea_kv_quant *pq;                /* measured tables: [part*(EA_KV_QBITS+1) + width], or NULL */
    klt_part *p;                    /* [layer*2 + kind] */
    size_t overhead;
} klt_state;

/* The defaults are what won on KL in the measurements (docs in the issue 5 report): one KLT per
 * layer (cross-head correlation is large), Lloyd-Max levels (refitted on measured coefficient
 * distributions when the fit has them), the attention-aware metric, bits pooled across layers and
 * kinds by measured sensitivity (when given), bases stored in f16 except the vectors of coefficients
 * coded with at most 4 bits (int8: halves the overhead at no measured cost, because the
 * least-squares encoder sees the rounded vectors), the sink row kept in f16. */
void ea_kv_klt_default(ea_kv_klt_opts *o, double bits) {
    memset(o, 0, sizeof *o);
    o->bits = bits;
    o->per_head = 0;
    o->token_scale = 0;
    o->lloyd = 1;
    o->pool = 1;
    o->f16_basis = 1;
    o->kv_ratio = 1.0;
    o->weighted = 3;
    o->reg = 1.0;
    o->pos0_gain = 1.0;
    o->sink = 1;
    o->i8_bits = 4;
}

static const klt_part *part_of(const ea_kv_codec *c, int layer, int kind) {
    return &((const klt_state *)c->state)->p[layer * 2 + kind];
}

static size_t klt_row_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind) { return part_of(c, layer, kind)->row_bytes; }

static size_t klt_seq_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind) {
    return part_of(c, layer, kind)->sink ? sizeof(uint16_t) * (size_t)c->d : 0;
}

/* The f16 sink row of a part whose row 0 is at row0. */
static uint16_t *sink_row(const ea_kv_codec *c, const void *row0) {
    return (uint16_t *)(void *)((unsigned char *)(uintptr_t)row0 - sizeof(uint16_t) * (size_t)c->d);
}

/* ---- bit stream ---- */
static void put_bits(unsigned char *row, size_t pos, unsigned code, int b) {
    size_t byte = pos >> 3, end = (pos + (size_t)b + 7) >> 3;
    uint32_t v = (uint32_t)code << (pos & 7); /* at most 23 bits */
    for (size_t k = byte; k < end; k++, v >>= 8) row[k] |= (unsigned char)(v & 0xff);
}

static void klt_encode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos, const float *x, void *dst) {
    const klt_part *p = part_of(c, layer, kind);
    int n = p->b.n_coef;
    unsigned char *row = dst;
    memset(row, 0, p->row_bytes);
    if (pos == 0 && p->sink) { /* dst is row 0: the sink row sits right before it */
        uint16_t *h = sink_row(c, dst);
        for (int i = 0; i < c->d; i++) h[i] = ea_f32_to_f16(x[i]);
        return;
    }
    float y[n + 1];
    ea_kv_basis_project(&p->b, x, y);
    float g = 1.0f;
    if (p->hdr) {
        double ss = 0;
        for (int j = 0; j < n; j++) ss += (double)(y[j] / p->sig[j]) * (y[j] / p->sig[j]);
        g = n ? (float)sqrt(ss / n) : 1.0f;
        if (!(g > 0) || !isfinite(g)) g = 1.0f;
        uint16_t h = ea_f32_to_f16(g);
        g = ea_f16_to_f32(h); /* quantize with the gain the decoder will see */
        if (!(g > 0) || !isfinite(g)) {
            h = ea_f32_to_f16(1.0f);
            g = 1.0f;
        }
        memcpy(row, &h, 2);
    }
    if (pos == 0) g *= p->pos0_gain; /* known to the decoder from the position: no side information */
    unsigned char *codes = row + p->hdr;
    size_t bp = 0;
    for (int j = 0; j < n; j++) {
        int i = ea_kv_quant_index(p->qz[j], y[j] / (p->sig[j] * g));
        put_bits(codes, bp, (unsigned)i, p->bits[j]);
        bp += p->bits[j];
    }
}

/* 64 bits of the stream from bit bp (bits past the end read as 0). */
static inline uint64_t load_bits(const unsigned char *codes, size_t clen, size_t bp) {
    size_t byte = bp >> 3;
    uint64_t w = 0;
    if (byte + 8 <= clen) memcpy(&w, codes + byte, 8);
    else
        for (size_t k = 0; byte + k < clen; k++) w |= (uint64_t)codes[byte + k] << (8 * k);
    return w >> (bp & 7);
}

#ifdef KLT_AVX512
/* Levels of 8 codes from a unit-variance table of 2^b entries. */
static inline __m256 lookup8(const float *tab, int b, __m256i idx) {
    if (b <= 3) return _mm256_permutevar8x32_ps(_mm256_loadu_ps(tab), idx);
    if (b == 4) return _mm256_permutex2var_ps(_mm256_loadu_ps(tab), idx, _mm256_loadu_ps(tab + 8));
    if (b <= 6) { /* 32 or 64 entries: two-table permutes on 16-lane registers, then a blend on bit 5 */
        __m512i i16 = _mm512_castsi256_si512(idx);
        __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(tab), i16, _mm512_loadu_ps(tab + 16));
        if (b == 5) return _mm512_castps512_ps256(lo);
        __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(tab + 32), i16, _mm512_loadu_ps(tab + 48));
        __mmask16 up = _mm512_test_epi32_mask(i16, _mm512_set1_epi32(32));
        return _mm512_castps512_ps256(_mm512_mask_blend_ps(up, lo, hi));
    }
    return _mm256_i32gather_ps(tab, idx, 4);
}

/* One run, 8 codes per 64-bit read (b <= 7) or 4 (b <= 12); a short last group is masked. */
static void unpack_run_simd(const klt_part *p, const unsigned char *codes, size_t clen, size_t *bpp, int j, int end,
                            float g, float *cr) {
    int b = p->bits[j];
    const float *tab = p->tab[j];
    size_t bp = *bpp;
    __m256 vg = _mm256_set1_ps(g);
    if (b <= 7) {
        const __m512i sh = _mm512_set_epi64(7 * b, 6 * b, 5 * b, 4 * b, 3 * b, 2 * b, b, 0);
        const __m512i mk = _mm512_set1_epi64((1 << b) - 1);
        for (; j < end; j += 8) {
            int m = end - j < 8 ? end - j : 8;
            __mmask8 lanes = (__mmask8)((1u << m) - 1);
            __m512i v = _mm512_and_si512(_mm512_srlv_epi64(_mm512_set1_epi64((long long)load_bits(codes, clen, bp)), sh), mk);
            __m256i idx = _mm512_cvtepi64_epi32(v);
            __m256 f = tab ? _mm256_mul_ps(lookup8(tab, b, idx), _mm256_maskz_loadu_ps(lanes, p->sig + j))
                           : _mm256_fmadd_ps(_mm256_cvtepi32_ps(idx), _mm256_maskz_loadu_ps(lanes, p->lv_a + j),
                                             _mm256_maskz_loadu_ps(lanes, p->lv_c + j));
            _mm256_mask_storeu_ps(cr + j, lanes, _mm256_mul_ps(f, vg));
            bp += (size_t)m * b;
        }
    } else {
        const __m256i sh = _mm256_set_epi64x(3 * b, 2 * b, b, 0), mk = _mm256_set1_epi64x((1 << b) - 1);
        for (; j < end; j += 4) {
            int m = end - j < 4 ? end - j : 4;
            __mmask8 lanes = (__mmask8)((1u << m) - 1);
            __m256i v = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x((long long)load_bits(codes, clen, bp)), sh), mk);
            __m128i idx = _mm256_cvtepi64_epi32(v);
            __m128 f = tab ? _mm_mul_ps(_mm_i32gather_ps(tab, idx, 4), _mm_maskz_loadu_ps(lanes, p->sig + j))
                           : _mm_fmadd_ps(_mm_cvtepi32_ps(idx), _mm_maskz_loadu_ps(lanes, p->lv_a + j),
                                          _mm_maskz_loadu_ps(lanes, p->lv_c + j));
            _mm_mask_storeu_ps(cr + j, lanes, _mm_mul_ps(f, _mm256_castps256_ps128(vg)));
            bp += (size_t)m * b;
        }
    }
    *bpp = bp;
}
#endif

/* Coefficients of the row of position pos. */
static void unpack_row(const klt_part *p, const unsigned char *row, int pos, float *cr) {
    float g = pos == 0 ? p->pos0_gain : 1.0f;
    if (p->hdr) {
        uint16_t h;
        memcpy(&h, row, 2);
        g *= ea_f16_to_f32(h);
    }
    const unsigned char *codes = row + p->hdr;
    size_t clen = p->row_bytes - (size_t)p->hdr, bp = 0;
    for (int r = 0; r < p->n_runs; r++) {
        int j = p->runs[r].j0, end = j + p->runs[r].n;
#ifdef KLT_AVX512
        unpack_run_simd(p, codes, clen, &bp, j, end, g, cr);
        continue;
#endif
        for (; j < end; j++) {
            int b = p->bits[j];
            unsigned code = (unsigned)load_bits(codes, clen, bp) & ((1u << b) - 1);
            bp += (size_t)b;
            cr[j] = (p->tab[j] ? p->tab[j][code] * p->sig[j] : (float)code * p->lv_a[j] + p->lv_c[j]) * g;
        }
    }
}

/* Coefficients of rows t0..t0+n-1. */
static void klt_unpack(const void *self, const void *rows, int t0, int n, float *coef) {
    const klt_part *p = self;
    for (int r = 0; r < n; r++)
        unpack_row(p, (const unsigned char *)rows + (size_t)(t0 + r) * p->row_bytes, t0 + r, coef + (size_t)r * p->b.n_coef);
}

static void klt_decode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos0, int n, const void *src, float *x) {
    const klt_part *p = part_of(c, layer, kind);
    float coef[p->b.n_coef + 1];
    for (int r = 0; r < n; r++) {
        if (pos0 + r == 0 && p->sink) {
            ea_f16_to_f32_array(sink_row(c, src), x, (size_t)c->d);
            continue;
        }
        unpack_row(p, (const unsigned char *)src + (size_t)r * p->row_bytes, pos0 + r, coef);
        ea_kv_basis_expand(&p->b, coef, x + (size_t)r * c->d);
    }
}

static void klt_attend(const ea_kv_codec *c, int layer, const float *q, int nq, int pos0, const void *kbuf,
                       const void *vbuf, float *out) {
    const klt_part *pk = part_of(c, layer, EA_KV_K), *pv = part_of(c, layer, EA_KV_V);
    ea_kv_coef_src k = {&pk->b, klt_unpack, pk, kbuf, pk->sink ? sink_row(c, kbuf) : NULL},
                   v = {&pv->b, klt_unpack, pv, vbuf, pv->sink ? sink_row(c, vbuf) : NULL};
    ea_kv_basis_attend(&k, &v, q, nq, pos0, out);
}

static size_t klt_overhead(const ea_kv_codec *c) { return ((const klt_state *)c->state)->overhead; }

static void klt_destroy(ea_kv_codec *c) {
    klt_state *s = c->state;
    if (!s) return;
    if (s->p)
        for (int i = 0; i < 2 * c->n_layer; i++) {
            ea_kv_basis_free(&s->p[i].b);
            free(s->p[i].bits);
            free(s->p[i].sig);
            free(s->p[i].tab);
            free(s->p[i].lv_a);
            free(s->p[i].runs);
            free(s->p[i].lv_c);
            free(s->p[i].qz);
        }
    free(s->p);
    free(s->pq);
    free(s);
    c->state = NULL;
}

static const ea_kv_codec_ops klt_ops = {klt_row_bytes, klt_encode, klt_decode, klt_attend, klt_overhead, klt_destroy, klt_seq_bytes};

/* ---- bit allocation ---- */

/* One eigen-coefficient competing for bits. */
typedef struct {
    double gain_w;    /* weight × eigenvalue */
    int part, bits;
    const double *dm; /* distortion by width (unit variance), dm[0] = 1 */
} alloc_item;

/* Max-heap on the gain of the next bit. */
typedef struct {
    alloc_item *it;
    int *heap, n;
} alloc_heap;

/* Best distortion drop per bit over the next k >= 1 bits (measured curves need not be convex: a
 * bimodal coefficient gains little from its second bit and much from its third), k in *kbest. */
static double step_gain(const alloc_item *a, int kmax, int *kbest) {
    double best = -1;
    *kbest = 0;
    for (int k = 1; k <= kmax && a->bits + k <= EA_KV_QBITS; k++) {
        double g = a->gain_w * (a->dm[a->bits] - a->dm[a->bits + k]) / k;
        if (g > best * (1 + 1e-12)) {
            best = g;
            *kbest = k;
        }
    }
    return best;
}

static double next_gain(const alloc_heap *h, int i) {
    int k;
    return step_gain(&h->it[i], EA_KV_QBITS, &k);
}

static void sift_down(alloc_heap *h, int k) {
    for (;;) {
        int l = 2 * k + 1, r = l + 1, m = k;
        if (l < h->n && next_gain(h, h->heap[l]) > next_gain(h, h->heap[m])) m = l;
        if (r < h->n && next_gain(h, h->heap[r]) > next_gain(h, h->heap[m])) m = r;
        if (m == k) return;
        int t = h->heap[k];
        h->heap[k] = h->heap[m];
        h->heap[m] = t;
        k = m;
    }
}

/* Greedy allocation. items: n_items eigen-coefficients of n_parts parts; part p may use at most
 * cap_bits[p] code bits, and all parts together at most total_bytes whole bytes (each part's
 * codes rounded up to bytes). */
static void allocate(alloc_item *items, int n_items, const long *cap_bits, long *used, int n_parts, long total_bytes) {
    for (int i = 0; i < n_items; i++) items[i].bits = 0;
    alloc_heap h = {items, malloc(sizeof(int) * (size_t)n_items), n_items};
    for (int i = 0; i < n_items; i++) h.heap[i] = i;
    for (int k = n_items / 2 - 1; k >= 0; k--) sift_down(&h, k);
    memset(used, 0, sizeof(long) * (size_t)n_parts);
    long bytes = 0;
    while (h.n > 0) {
        int i = h.heap[0], k = 0;
        alloc_item *a = &items[i];
        long u = used[a->part], grow = 0;
        int fits = 0;
        for (int kmax = EA_KV_QBITS; kmax >= 1 && !fits; kmax = k - 1) { /* the best step that still fits */
            if (step_gain(a, kmax, &k) <= 0 || k == 0) break;
            grow = (u + k + 7) / 8 - (u + 7) / 8; /* new bytes the step opens */
            fits = u + k <= cap_bits[a->part] && bytes + grow <= total_bytes;
        }
        if (!fits) {
            h.heap[0] = h.heap[--h.n]; /* this coefficient can grow no further */
            sift_down(&h, 0);
            continue;
        }
        a->bits += k;
        used[a->part] += k;
        bytes += grow;
        sift_down(&h, 0);
    }
    free(h.heap);
}

static double round_f16d(double v) { return (double)ea_f16_to_f32(ea_f32_to_f16((float)v)); }

/* Transform of one part under the metric M cut to its per-head diagonal blocks
 * B_h = M_hh + εI (ε = reg·tr(M)/d; stored in f16, so computed from the rounded values). With
 * A = blockdiag(B_h^{1/2}), the KLT of A x has eigenvalues λ and vectors U: coefficient j is
 * y_j = (A u_j)·(x - mean) and x ≈ mean + Σ_j y_j A⁻¹u_j (column j of dec). Squared error in A x is
 * the metric's cost, so water-filling on λ minimises it. Encoding needs no vectors of its own:
 * A u_j = B (A⁻¹u_j), so y_j = dec_j·(B (x - mean)) (ea_kv_basis_set_metric). Without a metric: the
 * plain KLT. */
static ea_status part_transform(const ea_kv_stats *s, const ea_kv_metric *mt, const ea_kv_klt_opts *o, int layer,
                                int kind, int n_head, double *evals, double *dec, double *blocks, int *weighted) {
    const double *M = (mt && (o->weighted >> kind & 1) && mt->m[kind]) ? mt->m[kind] + (size_t)layer * s->d * s->d : NULL;
    *weighted = M != NULL;
    if (!M) return ea_kv_eigen(s, layer, kind, o->per_head, n_head, evals, dec);
    int d = s->d, hd = d / n_head, groups = o->per_head ? n_head : 1, w = d / groups;
    size_t dd = (size_t)d * d, hh = (size_t)hd * hd;
    double *A = calloc(dd, sizeof(double)), *Ai = calloc(dd, sizeof(double)), *T = malloc(sizeof(double) * dd);
    double *C = malloc(sizeof(double) * (size_t)w * w), *U = malloc(sizeof(double) * (size_t)w * w);
    double *bv = malloc(sizeof(double) * hh), *bu = malloc(sizeof(double) * hh), *mu = malloc(sizeof(double) * hd);
    ea_status st = (!A || !Ai || !T || !C || !U || !bv || !bu || !mu) ? ea_error(EA_ERR_NOMEM, "kv codec: out of memory") : EA_OK;
    double tr = 0;
    for (int i = 0; i < d; i++) tr += M[(size_t)i * d + i];
    double eps = o->reg * (tr > 0 ? tr : 1) / d;
    for (int h = 0; h < n_head && !st; h++) { /* A, A⁻¹ block by block */
        double *B = blocks + (size_t)h * hh;
        for (int i = 0; i < hd; i++)
            for (int j = 0; j < hd; j++) B[(size_t)i * hd + j] = round_f16d(M[(size_t)(h * hd + i) * d + h * hd + j] + (i == j ? eps : 0));
        memcpy(bv, B, sizeof(double) * hh);
        if ((st = ea_kv_eigh(bv, hd, mu, bu))) break;
        for (int i = 0; i < hd; i++)
            for (int j = 0; j < hd; j++) {
                double x = 0, y = 0;
                for (int k = 0; k < hd; k++) {
                    double m = mu[k] > eps * 1e-3 ? mu[k] : eps * 1e-3, p = bu[(size_t)i * hd + k] * bu[(size_t)j * hd + k];
                    x += p * sqrt(m);
                    y += p / sqrt(m);
                }
                A[(size_t)(h * hd + i) * d + h * hd + j] = x;
                Ai[(size_t)(h * hd + i) * d + h * hd + j] = y;
            }
    }
    const double *cov = s->cov[kind] + (size_t)layer * dd;
    for (int g = 0; g < groups && !st; g++) {
        int o0 = g * w;
        for (int i = 0; i < w; i++) /* T = Σ A on the group (A is block-diagonal) */
            for (int j = 0; j < w; j++) {
                int jb = ((o0 + j) / hd) * hd;
                double x = 0;
                for (int l = jb; l < jb + hd; l++) x += cov[(size_t)(o0 + i) * d + l] * A[(size_t)l * d + o0 + j];
                T[(size_t)i * w + j] = x;
            }
        for (int i = 0; i < w; i++) /* C = A T */
            for (int j = 0; j < w; j++) {
                int ib = ((o0 + i) / hd) * hd;
                double x = 0;
                for (int k = ib; k < ib + hd; k++) x += A[(size_t)(o0 + i) * d + k] * T[(size_t)(k - o0) * w + j];
                C[(size_t)i * w + j] = x;
            }
        if ((st = ea_kv_eigh(C, w, evals + o0, U))) break;
        double *D = dec + (size_t)g * w * w;
        for (int i = 0; i < w; i++) /* dec = A⁻¹ U */
            for (int j = 0; j < w; j++) {
                int ib = ((o0 + i) / hd) * hd;
                double x = 0;
                for (int k = ib; k < ib + hd; k++) x += Ai[(size_t)(o0 + i) * d + k] * U[(size_t)(k - o0) * w + j];
                D[(size_t)i * w + j] = x;
            }
    }
    free(A);
    free(Ai);
    free(T);
    free(C);
    free(U);
    free(bv);
    free(bu);
    free(mu);
    return st;
}

ea_status ea_kv_klt_transform(const ea_kv_stats *s, const ea_kv_metric *mt, const ea_kv_klt_opts *o, int n_head, int layer,
                              int kind, float *enc, float *mean, float *sig) {
    int d = s->d, hd = d / n_head, groups = o->per_head ? n_head : 1, w = d / groups, weighted = 0;
    double *ev = malloc(sizeof(double) * (size_t)d), *dec = malloc(sizeof(double) * (size_t)groups * w * w);
    double *blocks = malloc(sizeof(double) * (size_t)n_head * hd * hd), *col = malloc(sizeof(double) * (size_t)d);
    ea_status st = (!ev || !dec || !blocks || !col) ? ea_error(EA_ERR_NOMEM, "kv codec: out of memory") : EA_OK;
    if (!st) st = part_transform(s, mt, o, layer, kind, n_head, ev, dec, blocks, &weighted);
    for (int g = 0; g < groups && !st; g++)
        for (int jj = 0; jj < w; jj++) {
            int j = g * w + jj;
            memset(col, 0, sizeof(double) * (size_t)d);
            for (int i = 0; i < w; i++) col[g * w + i] = dec[(size_t)g * w * w + (size_t)i * w + jj];
            ea_kv_basis_round_vec(col + g * w, w, o->f16_basis); /* as the basis stores it */
            float *e = enc + (size_t)j * d;
            for (int h = 0; h < n_head; h++) /* encoder: B_h w_j,h (B symmetric), or w_j itself */
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    if (weighted)
                        for (int k = 0; k < hd; k++) a += (double)(float)blocks[(size_t)h * hd * hd + (size_t)i * hd + k] * col[h * hd + k];
                    else
                        a = col[h * hd + i];
                    e[h * hd + i] = (float)a;
                }
            sig[j] = (float)sqrt(ev[j] > 0 ? ev[j] : 0);
        }
    for (int i = 0; i < d && !st; i++) {
        double m = s->mean[kind][(size_t)layer * d + i];
        mean[i] = o->f16_basis != EA_KV_PREC_F32 ? (float)round_f16d(m) : (float)m;
    }
    free(ev);
    free(dec);
    free(blocks);
    free(col);
    return st;
}

/* Measured level tables of part p for every width with tables: each fitted by Lloyd's algorithm on
 * the coefficients that width is given to (all of the part's coefficients for widths nobody has),
 * each coefficient's histogram weighted by what its error costs (weight × eigenvalue). */
static void fit_part_tables(klt_state *ks, const ea_kv_hist *h, const alloc_item *it, int p, int d, double *pool) {
    const double *hp = h->h + (size_t)p * d * h->nbins;
    ea_kv_quant *pq = ks->pq + (size_t)p * (EA_KV_QBITS + 1);
    for (int b = 1; b <= EA_KV_QBITS; b++) {
        if (b > EA_KV_QTAB_BITS) {
            pq[b] = ks->q[b];
            continue;
        }
        for (int pass = 0; pass < 2; pass++) {
            memset(pool, 0, sizeof(double) * (size_t)h->nbins);
            double any = 0;
            for (int j = 0; j < d; j++) {
                if (pass == 0 && it[j].bits != b) continue;
                const double *hj = hp + (size_t)j * h->nbins;
                double n = 0;
                for (int k = 0; k < h->nbins; k++) n += hj[k];
                if (!(n > 0) || !(it[j].gain_w > 0)) continue;
                double wgt = it[j].gain_w / n;
                for (int k = 0; k < h->nbins; k++) pool[k] += wgt * hj[k];
                any += wgt;
            }
            if (any > 0) break;
        }
        ea_kv_hist_lloyd(h, pool, &ks->q[b], &pq[b]);
    }
}

/* dm (d × (EA_KV_QBITS+1)): measured distortion of each coefficient of part p with each width. */
static void part_distortions(const klt_state *ks, const ea_kv_hist *h, int p, int d, double *dm) {
    const double *hp = h->h + (size_t)p * d * h->nbins;
    const ea_kv_quant *pq = ks->pq + (size_t)p * (EA_KV_QBITS + 1);
    for (int j = 0; j < d; j++) {
        const double *hj = hp + (size_t)j * h->nbins;
        double *dj = dm + (size_t)j * (EA_KV_QBITS + 1), n = 0, m2 = 0;
        for (int k = 0; k < h->nbins; k++) {
            double x = -h->lim + (k + 0.5) * (2.0 * h->lim / h->nbins);
            n += hj[k];
            m2 += hj[k] * x * x;
        }
        if (!(n > 0)) { /* never observed: keep the Gaussian curve */
            dj[0] = 1;
            for (int b = 1; b <= EA_KV_QBITS; b++) dj[b] = ks->q[b].mse;
            continue;
        }
        dj[0] = m2 / n;
        for (int b = 1; b <= EA_KV_QTAB_BITS; b++) dj[b] = ea_kv_hist_mse(h, hj, &pq[b]);
        for (int b = EA_KV_QTAB_BITS + 1; b <= EA_KV_QBITS; b++) /* uniform codes: the Gaussian slope from the last table */
            dj[b] = dj[EA_KV_QTAB_BITS] * ks->q[b].mse / ks->q[EA_KV_QTAB_BITS].mse;
        for (int b = 1; b <= EA_KV_QBITS; b++) /* more bits never hurt (binning noise aside) */
            if (dj[b] > dj[b - 1]) dj[b] = dj[b - 1];
    }
}

double ea_kv_klt_predicted_mse(const ea_kv_codec *c, int layer, int kind) { return part_of(c, layer, kind)->pred_mse; }

ea_status ea_kv_klt_setup(ea_kv_codec *c, const ea_kv_stats *s, const ea_kv_metric *mt, const ea_kv_klt_opts *o) {
    int d = c->d, L = c->n_layer, P = 2 * L, groups = o->per_head ? c->n_head : 1, w = d / groups;
    klt_state *ks = calloc(1, sizeof *ks);
    if (!ks) return ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
    c->ops = &klt_ops;
    c->state = ks;
    ks->o = *o;
    double dmse[EA_KV_QBITS + 1];
    dmse[0] = 1.0;
    for (int b = 1; b <= EA_KV_QBITS; b++) {
        ks->q[b] = *ea_kv_quant_get(b, o->lloyd);
        dmse[b] = ks->q[b].mse;
    }
    ks->p = calloc((size_t)P, sizeof *ks->p);
    double *evals = malloc(sizeof(double) * (size_t)P * d), *evecs = malloc(sizeof(double) * (size_t)P * d * w);
    int hd = d / c->n_head;
    double *blocks = malloc(sizeof(double) * (size_t)P * c->n_head * hd * hd);
    int *weighted = calloc((size_t)P, sizeof(int));
    alloc_item *items = malloc(sizeof(alloc_item) * (size_t)P * d);
    long *cap = malloc(sizeof(long) * P), *used = malloc(sizeof(long) * P);
    unsigned char *keep = malloc((size_t)d);
    double *dm_all = NULL, *pool_buf = NULL;
    ea_status st = EA_OK;
    if (!ks->p || !evals || !evecs || !blocks || !weighted || !items || !cap || !used || !keep) {
        st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
        goto done;
    }
    for (int p = 0; p < P && !st; p++)
        st = part_transform(s, mt, o, p / 2, p % 2, c->n_head, evals + (size_t)p * d, evecs + (size_t)p * d * w,
                            blocks + (size_t)p * c->n_head * hd * hd, &weighted[p]);
    if (st) goto done;
    /* Pooling needs the measured sensitivities: distortions of different parts are not comparable. */
    int pool = o->pool && mt && mt->part_weight;
    /* Row budget: whole bytes, at most B bits per value, including the row gain. */
    long row_bytes_max = (long)floor(o->bits * d / 8.0 + 1e-9);
    int hdr = o->token_scale ? 2 : 0;
    for (int p = 0; p < P; p++) {
        cap[p] = 8 * (row_bytes_max - hdr);
        if (cap[p] < 0) cap[p] = 0;
        double wt = (p % 2) ? o->kv_ratio : 1.0;
        if (pool) wt = mt->part_weight[p] > 0 ? mt->part_weight[p] : 1e-30;
        for (int j = 0; j < d; j++) items[(size_t)p * d + j] = (alloc_item){wt * evals[(size_t)p * d + j], p, 0, dmse};
    }
    long total = 0;
    for (int p = 0; p < P; p++) total += cap[p] / 8;
    if (o->sink) /* the f16 sink rows, spread over a full context, come out of the same budget */
        total -= (long)((2 * (size_t)P * d + (size_t)c->n_ctx - 1) / (size_t)c->n_ctx);
    if (total < 0) total = 0;
    if (pool) /* any layer or kind may take up to the widest code per value; the sum stays within budget */
        for (int p = 0; p < P; p++) cap[p] = (long)EA_KV_QBITS * d;
    allocate(items, P * d, cap, used, P, total);
    const ea_kv_hist *hist = mt && mt->hist && ea_kv_hist_matches(mt->hist, o) && mt->hist->n_part == P && mt->hist->d == d
                                 ? mt->hist : NULL;
    if (hist) { /* measured tables and distortions, then the allocation again on those */
        ks->pq = calloc((size_t)P * (EA_KV_QBITS + 1), sizeof *ks->pq);
        dm_all = malloc(sizeof(double) * (size_t)P * d * (EA_KV_QBITS + 1));
        pool_buf = malloc(sizeof(double) * (size_t)hist->nbins);
        if (!ks->pq || !dm_all || !pool_buf) {
            st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
            goto done;
        }
        for (int round = 0; round < 2; round++) {
            for (int p = 0; p < P; p++) {
                fit_part_tables(ks, hist, items + (size_t)p * d, p, d, pool_buf);
                part_distortions(ks, hist, p, d, dm_all + (size_t)p * d * (EA_KV_QBITS + 1));
                for (int j = 0; j < d; j++) items[(size_t)p * d + j].dm = dm_all + ((size_t)p * d + j) * (EA_KV_QBITS + 1);
            }
            allocate(items, P * d, cap, used, P, total);
        }
        for (int p = 0; p < P; p++) { /* tables for the final widths */
            fit_part_tables(ks, hist, items + (size_t)p * d, p, d, pool_buf);
            part_distortions(ks, hist, p, d, dm_all + (size_t)p * d * (EA_KV_QBITS + 1));
        }
    }
    size_t over = 0;
    if (!hist)
        for (int b = 1; b <= EA_KV_QBITS; b++) /* level tables, or one step per width */
            over += sizeof(float) * (ks->q[b].uniform ? 1 : (size_t)(1 << b));
    for (int p = 0; p < P && !st; p++) {
        klt_part *kp = &ks->p[p];
        const alloc_item *it = items + (size_t)p * d;
        const double *ev = evals + (size_t)p * d;
        for (int j = 0; j < d; j++) keep[j] = it[j].bits == 0 ? 0 : it[j].bits <= o->i8_bits ? 2 : 1;
        if ((st = ea_kv_basis_build(&kp->b, s, p / 2, p % 2, c->n_head, o->per_head, evecs + (size_t)p * d * w, keep,
                                    o->f16_basis)))
            break;
        if ((st = ea_kv_basis_set_encoder(&kp->b, weighted[p] ? blocks + (size_t)p * c->n_head * hd * hd : NULL))) break;
        int n = kp->b.n_coef;
        kp->bits = malloc((size_t)n + 1);
        kp->sig = malloc(sizeof(float) * ((size_t)n + 1));
        kp->tab = malloc(sizeof(float *) * ((size_t)n + 1));
        kp->qz = malloc(sizeof(ea_kv_quant *) * ((size_t)n + 1));
        kp->lv_a = malloc(sizeof(float) * ((size_t)n + 1));
        kp->lv_c = malloc(sizeof(float) * ((size_t)n + 1));
        if (!kp->bits || !kp->sig || !kp->tab || !kp->qz || !kp->lv_a || !kp->lv_c) {
            st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
            break;
        }
        long nbits = 0;
        double pred = 0;
        for (int j = 0, k = 0; j < d; j++) { /* basis order = group order, eigenvalue order within */
            pred += ev[j] * it[j].dm[it[j].bits];
            if (!it[j].bits) continue;
            kp->bits[k] = (unsigned char)it[j].bits;
            kp->sig[k] = (float)sqrt(ev[j] > 0 ? ev[j] : 0);
            if (!(kp->sig[k] > 0)) kp->sig[k] = 1e-30f;
            const ea_kv_quant *qz = hist ? &ks->pq[(size_t)p * (EA_KV_QBITS + 1) + it[j].bits] : &ks->q[it[j].bits];
            kp->qz[k] = qz;
            kp->tab[k] = qz->uniform ? NULL : qz->level;
            kp->lv_a[k] = qz->step * kp->sig[k];
            kp->lv_c[k] = -0.5f * (float)(qz->n - 1) * qz->step * kp->sig[k];
            nbits += it[j].bits;
            k++;
        }
        kp->runs = malloc(sizeof(klt_run) * ((size_t)n + 1));
        if (!kp->runs) {
            st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
            break;
        }
        for (int j = 0; j < n; j++)
            if (j == 0 || kp->bits[j] != kp->bits[j - 1]) kp->runs[kp->n_runs++] = (klt_run){j, 1, kp->bits[j]};
            else kp->runs[kp->n_runs - 1].n++;
        kp->hdr = hdr;
        kp->pos0_gain = (float)o->pos0_gain;
        kp->sink = o->sink;
        kp->row_bytes = (size_t)hdr + (size_t)((nbits + 7) / 8);
        if (kp->row_bytes == 0) kp->row_bytes = 1; /* nothing kept: keep rows addressable */
        kp->pred_mse = pred;
        /* stored: means and decode vectors, width and σ per coefficient, the metric blocks (f16, one
         * triangle each) the encoder is derived from */
        over += ea_kv_basis_bytes(&kp->b) + (size_t)n * (1 + sizeof(float));
        if (hist) /* this part's measured tables of the widths it uses, f16 levels */
            for (int b = 1; b <= EA_KV_QTAB_BITS; b++) {
                int used_b = 0;
                for (int j = 0; j < n; j++) used_b |= kp->bits[j] == b;
                if (used_b) over += sizeof(uint16_t) * (size_t)(1 << b);
            }
        if (weighted[p]) over += (size_t)c->n_head * hd * (hd + 1) / 2 * 2;
    }
    ks->overhead = over;
done:
    free(dm_all);
    free(pool_buf);
    free(evals);
    free(evecs);
    free(blocks);
    free(weighted);
    free(items);
    free(cap);
    free(used);
    free(keep);
    return st;
}
