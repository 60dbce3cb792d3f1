/* klt:B KV codec: transform coding of K and V rows.
 *   1. Rotate the row into the eigenbasis of its calibration covariance (the Karhunen-Loève
 *      transform, per layer or per head), so coefficients are uncorrelated with variances λ_j.
 *   2. Allocate whole bits per coefficient by greedy reverse water-filling: each step gives one bit
 *      to the coefficient whose distortion drops most (λ_j·(D_b - D_{b+1}) for the Gaussian
 *      quantizer distortions D_b), until the row's byte budget (B bits per value) is spent.
 *      Coefficients left with 0 bits are dropped and decode to the mean.
 *   3. Quantize each kept coefficient with the Gaussian-optimal scalar quantizer of its width,
 *      scaled by its standard deviation (optionally also by a per-row f16 gain).
 * Rows are stored in blocks of 16 tokens, coefficient-major (layout in kv_klt.h). One-token
 * attention reads the codes directly in coefficient space (kv_klt_attend*.c); nothing is rebuilt
 * in d dimensions. */
#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "compress/kv_internal.h"
#include "compress/kv_klt.h"
#include "compress/kv_quant.h"
#include "compress/kv_rows.h"
#include "ea/io.h"

typedef struct {
    ea_kv_klt_opts o;
    ea_kv_quant q[EA_KV_QBITS + 1]; /* by width; [0] unused */
    ea_kv_quant *pq;                /* measured tables: [part*(EA_KV_QBITS+1) + width], or NULL */
    klt_part *p;                    /* [layer*2 + kind] */
    size_t overhead;
    /* work memory of one-token attention, kept between calls (a fresh large malloc is an mmap
     * and page faults every decode step); one caller at a time, others allocate their own */
    atomic_int work_busy;
    float *work;
    size_t work_n;
} klt_state;

static float *work_take(klt_state *ks, size_t n) {
    if (atomic_exchange(&ks->work_busy, 1)) return malloc(sizeof(float) * n);
    if (ks->work_n < n) {
        float *w = realloc(ks->work, sizeof(float) * n);
        if (!w) {
            atomic_store(&ks->work_busy, 0);
            return NULL;
        }
        ks->work = w;
        ks->work_n = n;
    }
    return ks->work;
}

static void work_give(klt_state *ks, float *w) {
    if (w == ks->work) atomic_store(&ks->work_busy, 0);
    else free(w);
}

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
/* Code of b bits at bit pos of a coefficient's segment; the bits are overwritten (a reused cache
 * holds old codes, and the other lanes' bits share the bytes). */
static void put_bits(unsigned char *seg, size_t pos, unsigned code, int b) {
    size_t byte = pos >> 3, end = (pos + (size_t)b + 7) >> 3;
    uint32_t v = (uint32_t)code << (pos & 7), m = ((1u << b) - 1u) << (pos & 7); /* at most 19 bits */
    for (size_t k = byte; k < end; k++, v >>= 8, m >>= 8) seg[k] = (unsigned char)((seg[k] & ~m) | (v & 0xff));
}

static unsigned get_bits(const unsigned char *seg, size_t pos, int b) {
    size_t byte = pos >> 3, end = (pos + (size_t)b + 7) >> 3;
    uint32_t v = 0;
    for (size_t k = byte; k < end; k++) v |= (uint32_t)seg[k] << (8 * (k - byte));
    return (v >> (pos & 7)) & ((1u << b) - 1u);
}

/* The block holding the row of position pos, given that row's address. */
static unsigned char *block_of(const klt_part *p, const void *row, int pos) {
    return (unsigned char *)(uintptr_t)row - (size_t)(pos % EA_KV_KLT_BLOCK) * p->row_bytes;
}

/* Codes of coefficients j0..j1-1 (y: all of the row's, g: its gain) into lane `lane` of block blk.
 * Each coefficient has its own bytes in a block, so disjoint ranges can be written concurrently. */
static void put_range(const klt_part *p, unsigned char *blk, int lane, const float *y, float g, int j0, int j1) {
    float z[j1 - j0 + 1];
    int code[j1 - j0 + 1];
    for (int j = j0; j < j1; j++) z[j - j0] = y[j] / (p->sig[j] * g);
    for (int a = j0, b; a < j1; a = b) { /* coefficients that share a quantizer, at once */
        for (b = a + 1; b < j1 && p->qz[b] == p->qz[a]; b++) {}
        ea_kv_quant_index_n(p->qz[a], z + (a - j0), b - a, code + (a - j0));
    }
    for (int j = j0; j < j1; j++) put_bits(blk + p->off[j], (size_t)lane * p->bits[j], (unsigned)code[j - j0], p->bits[j]);
}

/* Row of position pos from its coefficients y (x: the row itself, for the sink); dst is the row's
 * address in a buffer of whole blocks. */
static void encode_coefs(const ea_kv_codec *c, const klt_part *p, int pos, const float *x, const float *y, void *dst) {
    int n = p->b.n_coef, lane = pos % EA_KV_KLT_BLOCK;
    unsigned char *blk = block_of(p, dst, pos);
    if (pos == 0 && p->sink) { /* dst is row 0: the sink row sits right before it */
        uint16_t *h = sink_row(c, dst);
        for (int i = 0; i < c->d; i++) h[i] = ea_f32_to_f16(x[i]);
        return;
    }
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
        memcpy(blk + (size_t)lane * p->hdr, &h, 2);
    }
    if (pos == 0) g *= p->pos0_gain; /* known to the decoder from the position: no side information */
    put_range(p, blk, lane, y, g, 0, n);
}

static void klt_encode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos, const float *x, void *dst) {
    const klt_part *p = part_of(c, layer, kind);
    int n = p->b.n_coef, d = c->d, nth = 1;
    float y[n + 1];
#ifdef _OPENMP
    if (!omp_in_parallel() && n >= 64) nth = omp_get_max_threads() < 2 ? omp_get_max_threads() : 2;
#endif
    if (nth < 2 || !p->b.enc || p->hdr || (pos == 0 && p->sink)) {
        ea_kv_basis_project(&p->b, x, y);
        encode_coefs(c, p, pos, x, y, dst);
        return;
    }
    /* One decode step encodes one row; reading the n × d encoder is bandwidth-bound, so two
     * threads project and quantize half of the coefficients each. */
    float xc[d];
    for (int i = 0; i < d; i++) xc[i] = x[i] - p->b.mean[i];
    unsigned char *blk = block_of(p, dst, pos);
    float g = pos == 0 ? p->pos0_gain : 1.0f;
#pragma omp parallel num_threads(2)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
#endif
        int j0 = t ? n / 2 : 0, j1 = t ? n : n / 2;
        ea_kv_basis_project_range(&p->b, xc, j0, j1, y);
        put_range(p, blk, pos % EA_KV_KLT_BLOCK, y, g, j0, j1);
    }
}

/* Many rows at once (prefill): one sgemm projects them all, then rows are quantized in parallel. */
static void klt_encode_rows(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos0, int n, const float *x, int ld,
                            void *dst) {
    const klt_part *p = part_of(c, layer, kind);
    int d = c->d, nk = p->b.n_coef;
    float *xc = n >= 8 && p->b.enc ? malloc(sizeof(float) * (size_t)n * d) : NULL;
    float *y = xc ? malloc(sizeof(float) * (size_t)n * (nk > 0 ? nk : 1)) : NULL;
    if (!y) { /* short, no encoder matrix, or no memory: row by row */
        free(xc);
        for (int i = 0; i < n; i++) klt_encode(c, layer, kind, pos0 + i, x + (size_t)i * ld, (unsigned char *)dst + p->row_bytes * i);
        return;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) xc[(size_t)i * d + j] = x[(size_t)i * ld + j] - p->b.mean[j];
    if (nk > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nk, d, 1.0f, xc, d, p->b.enc, d, 0.0f, y, nk);
    /* rows of one block share bytes: a thread takes whole blocks */
    int b0 = pos0 / EA_KV_KLT_BLOCK, b1 = (pos0 + n - 1) / EA_KV_KLT_BLOCK;
#pragma omp parallel for schedule(static) if (n >= 64)
    for (int bk = b0; bk <= b1; bk++) {
        int i0 = bk * EA_KV_KLT_BLOCK - pos0, i1 = i0 + EA_KV_KLT_BLOCK;
        for (int i = i0 < 0 ? 0 : i0; i < i1 && i < n; i++)
            encode_coefs(c, p, pos0 + i, x + (size_t)i * ld, y + (size_t)i * nk, (unsigned char *)dst + p->row_bytes * i);
    }
    free(xc);
    free(y);
}

/* The 16 codes of a coefficient (its 2·b bytes at seg). Eight codes fill b bytes exactly, so up to
 * 8 bits each half is one little-endian word read byte by byte (no read past the segment). */
static void block_codes(const unsigned char *seg, int b, unsigned *code) {
    unsigned mask = (1u << b) - 1u;
    if (b <= 8) {
        for (int half = 0; half < 2; half++, seg += b) {
            uint64_t w = 0;
            for (int k = 0; k < b; k++) w |= (uint64_t)seg[k] << (8 * k);
            for (int i = 0; i < 8; i++, w >>= b) code[8 * half + i] = (unsigned)w & mask;
        }
        return;
    }
    for (int i = 0; i < EA_KV_KLT_BLOCK; i++) code[i] = get_bits(seg, (size_t)i * (size_t)b, b);
}

/* Coefficients of lanes l0..l1-1 of block bk into coef (row r = lane - l0 at coef + r·n_coef):
 * coefficient by coefficient, so the code width, table and scale are looked up once per 16 rows
 * (a per-row unpack spent half of a portable build's decode time in bit extraction). */
static void unpack_block(const klt_part *p, const unsigned char *blk, int bk, int l0, int l1, float *coef) {
    int n = p->b.n_coef;
    float g[EA_KV_KLT_BLOCK];
    for (int i = 0; i < EA_KV_KLT_BLOCK; i++) {
        g[i] = bk == 0 && i == 0 ? p->pos0_gain : 1.0f;
        if (p->hdr) {
            uint16_t h;
            memcpy(&h, blk + (size_t)i * p->hdr, 2);
            g[i] *= ea_f16_to_f32(h);
        }
    }
    for (int j = 0; j < n; j++) {
        unsigned code[EA_KV_KLT_BLOCK];
        block_codes(blk + p->off[j], p->bits[j], code);
        float *cj = coef + j;
        if (p->tab[j]) {
            const float *t = p->tab[j];
            float sg = p->sig[j];
            for (int i = l0; i < l1; i++) cj[(size_t)(i - l0) * n] = t[code[i]] * sg * g[i];
        } else {
            float a = p->lv_a[j], c0 = p->lv_c[j];
            for (int i = l0; i < l1; i++) cj[(size_t)(i - l0) * n] = ((float)code[i] * a + c0) * g[i];
        }
    }
}

/* Coefficients of rows t0..t0+n-1 (rows: row 0). */
static void klt_unpack(const void *self, const void *rows, int t0, int n, float *coef) {
    const klt_part *p = self;
    size_t blk_bytes = EA_KV_KLT_BLOCK * p->row_bytes;
    for (int pos = t0; pos < t0 + n;) {
        int bk = pos / EA_KV_KLT_BLOCK, l0 = pos % EA_KV_KLT_BLOCK;
        int l1 = t0 + n - bk * EA_KV_KLT_BLOCK < EA_KV_KLT_BLOCK ? t0 + n - bk * EA_KV_KLT_BLOCK : EA_KV_KLT_BLOCK;
        unpack_block(p, (const unsigned char *)rows + (size_t)bk * blk_bytes, bk, l0, l1, coef + (size_t)(pos - t0) * p->b.n_coef);
        pos += l1 - l0;
    }
}

static void klt_decode(const ea_kv_codec *c, int layer, ea_kv_kind kind, int pos0, int n, const void *src, float *x) {
    const klt_part *p = part_of(c, layer, kind);
    int nc = p->b.n_coef;
    float coef[(size_t)EA_KV_KLT_BLOCK * (size_t)nc + 1];
    for (int pos = pos0; pos < pos0 + n;) {
        int bk = pos / EA_KV_KLT_BLOCK, l0 = pos % EA_KV_KLT_BLOCK;
        int l1 = pos0 + n - bk * EA_KV_KLT_BLOCK < EA_KV_KLT_BLOCK ? pos0 + n - bk * EA_KV_KLT_BLOCK : EA_KV_KLT_BLOCK;
        unpack_block(p, block_of(p, (const unsigned char *)src + (size_t)(pos - pos0) * p->row_bytes, pos), bk, l0, l1, coef);
        for (int i = l0; i < l1; i++, pos++) {
            float *xr = x + (size_t)(pos - pos0) * c->d;
            if (pos == 0 && p->sink) ea_f16_to_f32_array(sink_row(c, src), xr, (size_t)c->d);
            else ea_kv_basis_expand(&p->b, coef + (size_t)(i - l0) * nc, xr);
        }
    }
}

static void klt_attend(const ea_kv_codec *c, int layer, const float *q, int nq, int pos0, const void *kbuf,
                       const void *vbuf, float *out) {
    const klt_part *pk = part_of(c, layer, EA_KV_K), *pv = part_of(c, layer, EA_KV_V);
    ea_kv_coef_src k = {&pk->b, klt_unpack, pk, kbuf, pk->sink ? sink_row(c, kbuf) : NULL},
                   v = {&pv->b, klt_unpack, pv, vbuf, pv->sink ? sink_row(c, vbuf) : NULL};
    if (nq <= EA_KV_ROWS_STREAM_MAX) {
        klt_state *ks = c->state;
        float *work = work_take(ks, ea_kv_klt_attend_floats(pk, pv, pos0 + nq));
        int i = 0, d = c->d;
        for (; work && i < nq; i++)
            if (!ea_kv_klt_attend_one(pk, pv, kbuf, vbuf, k.sink, v.sink, q + (size_t)i * d, pos0 + i + 1, out + (size_t)i * d,
                                      work))
                break;
        if (work) work_give(ks, work);
        if (i == nq) return;
    }
    ea_kv_basis_attend(&k, &v, q, nq, pos0, out);
}

static size_t klt_overhead(const ea_kv_codec *c) { return ((const klt_state *)c->state)->overhead; }

/* What the codec object holds in memory: float32 working copies of the vectors and the encoder,
 * per-coefficient arrays, padded and measured level tables (not the attention's work memory). */
static size_t klt_resident(const ea_kv_codec *c) {
    const klt_state *ks = c->state;
    size_t bytes = sizeof *ks;
    for (int p = 0; p < 2 * c->n_layer; p++) {
        const klt_part *kp = &ks->p[p];
        size_t n = (size_t)kp->b.n_coef;
        bytes += sizeof *kp + sizeof(float) * ea_kv_basis_floats(&kp->b) + (kp->b.enc ? sizeof(float) * n * (size_t)c->d : 0);
        bytes += (size_t)c->n_head * (2 * sizeof(int) + sizeof(float *));
        bytes += n * (sizeof *kp->bits + sizeof *kp->sig + sizeof *kp->tab + sizeof *kp->lv_a + sizeof *kp->lv_c +
                      sizeof *kp->qz + sizeof *kp->off + sizeof *kp->ptab + sizeof *kp->post);
        bytes += sizeof(float) * kp->n_pad + sizeof(klt_run) * (size_t)kp->n_runs;
    }
    if (ks->pq) bytes += sizeof(ea_kv_quant) * 2 * (size_t)c->n_layer * (EA_KV_QBITS + 1);
    return bytes;
}

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
            free(s->p[i].off);
            free(s->p[i].ptab);
            free(s->p[i].pad);
            free(s->p[i].post);
        }
    free(s->p);
    free(s->pq);
    free(s->work);
    free(s);
    c->state = NULL;
}

static const ea_kv_codec_ops klt_ops = {klt_row_bytes, klt_encode,     klt_decode,     klt_attend,  klt_overhead,
                                        klt_destroy,   klt_seq_bytes, klt_encode_rows, klt_resident};

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
 * A u_j = B (A⁻¹u_j), so y_j = dec_j·(B (x - mean)); the codec uses the least-squares form of this for
 * its rounded vectors (ea_kv_basis_set_encoder). Without a metric: the
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

/* The per-coefficient arrays of a part with n coefficients; 0 when out of memory (klt_destroy frees
 * what was allocated). */
static int part_alloc(klt_part *kp, int n) {
    kp->bits = malloc((size_t)n + 1);
    kp->sig = malloc(sizeof(float) * ((size_t)n + 1));
    kp->tab = malloc(sizeof(float *) * ((size_t)n + 1));
    kp->qz = malloc(sizeof(ea_kv_quant *) * ((size_t)n + 1));
    kp->lv_a = malloc(sizeof(float) * ((size_t)n + 1));
    kp->lv_c = malloc(sizeof(float) * ((size_t)n + 1));
    return kp->bits && kp->sig && kp->tab && kp->qz && kp->lv_a && kp->lv_c;
}

/* What a part derives from its widths, σ and quantizers: level scales, runs of equal width and
 * the row size (setup and load share it). bits, sig, qz, tab, lv_a, lv_c must hold n_coef entries. */
static ea_status part_finish(klt_part *kp, const char *name) {
    int n = kp->b.n_coef;
    long nbits = 0;
    for (int k = 0; k < n; k++) {
        const ea_kv_quant *qz = kp->qz[k];
        kp->tab[k] = qz->uniform ? NULL : qz->level;
        kp->lv_a[k] = qz->step * kp->sig[k];
        kp->lv_c[k] = -0.5f * (float)(qz->n - 1) * qz->step * kp->sig[k];
        nbits += kp->bits[k];
    }
    kp->runs = malloc(sizeof(klt_run) * ((size_t)n + 1));
    if (!kp->runs) return ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", name);
    kp->n_runs = 0;
    /* runs: same width and level table, within one head's coefficients (decoders are set up per run) */
    for (int j = 0, h = 0; j < n; j++) {
        int head_start = 0;
        for (; h < kp->b.n_head && j >= kp->b.hi[h]; h++) head_start = 1;
        if (h < kp->b.n_head && j == kp->b.lo[h]) head_start = 1;
        if (j == 0 || head_start || kp->bits[j] != kp->bits[j - 1] || kp->tab[j] != kp->tab[j - 1])
            kp->runs[kp->n_runs++] = (klt_run){j, 1, kp->bits[j]};
        else kp->runs[kp->n_runs - 1].n++;
    }
    kp->row_bytes = (size_t)kp->hdr + (size_t)((nbits + 7) / 8);
    if (kp->row_bytes == 0) kp->row_bytes = 1; /* nothing kept: keep rows addressable */
    /* block layout: gains, then 2·bits[j] bytes per coefficient; padded level tables for the
     * register lookups (a table of 2^b < 16 levels repeats, so stray high index bits do no harm) */
    kp->off = malloc(sizeof(int) * ((size_t)n + 1));
    kp->ptab = calloc((size_t)n + 1, sizeof(float *));
    kp->post = malloc(sizeof(float) * ((size_t)n + 1));
    size_t npad = 0;
    for (int j = 0; j < n; j++)
        if (kp->tab[j] && kp->bits[j] <= 7 && (j == 0 || kp->tab[j] != kp->tab[j - 1]))
            npad += kp->bits[j] < 4 ? 16 : (size_t)1 << kp->bits[j];
    kp->pad = malloc(sizeof(float) * (npad + 1));
    kp->n_pad = npad;
    if (!kp->off || !kp->ptab || !kp->post || !kp->pad) return ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", name);
    int off = EA_KV_KLT_BLOCK * kp->hdr;
    float *pad = kp->pad;
    for (int j = 0; j < n; j++) {
        kp->off[j] = off;
        off += 2 * kp->bits[j];
        kp->post[j] = kp->tab[j] ? kp->sig[j] : 1.0f;
        if (!kp->tab[j] || kp->bits[j] > 7) continue;
        if (j > 0 && kp->tab[j] == kp->tab[j - 1] && kp->ptab[j - 1]) {
            kp->ptab[j] = kp->ptab[j - 1];
            continue;
        }
        int nl = 1 << kp->bits[j], np = nl < 16 ? 16 : nl;
        for (int i = 0; i < np; i++) pad[i] = kp->tab[j][i % nl];
        kp->ptab[j] = pad;
        pad += np;
    }
    return EA_OK;
}

ea_status ea_kv_klt_setup(ea_kv_codec *c, const ea_kv_stats *s, const ea_kv_metric *mt, const ea_kv_klt_opts *o) {
    int d = c->d, L = c->n_layer, P = 2 * L, groups = o->per_head ? c->n_head : 1, w = d / groups;
    klt_state *ks = calloc(1, sizeof *ks);
    if (!ks) return ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
    c->ops = &klt_ops;
    c->block_rows = EA_KV_KLT_BLOCK;
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
        if (!part_alloc(kp, n)) {
            st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
            break;
        }
        double pred = 0;
        for (int j = 0, k = 0; j < d; j++) { /* basis order = group order, eigenvalue order within */
            pred += ev[j] * it[j].dm[it[j].bits];
            if (!it[j].bits) continue;
            kp->bits[k] = (unsigned char)it[j].bits;
            kp->sig[k] = (float)sqrt(ev[j] > 0 ? ev[j] : 0);
            if (!(kp->sig[k] > 0)) kp->sig[k] = 1e-30f;
            kp->qz[k] = hist ? &ks->pq[(size_t)p * (EA_KV_QBITS + 1) + it[j].bits] : &ks->q[it[j].bits];
            k++;
        }
        kp->hdr = hdr;
        kp->pos0_gain = (float)o->pos0_gain;
        kp->sink = o->sink;
        kp->pred_mse = pred;
        if ((st = part_finish(kp, c->name))) break;
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

/* ---- klt codec files: a fitted codec, so it is fitted once and used anywhere ----
 * safetensors; metadata format/version/spec/shape; per part p: mean [d], w [n, d] (decode vectors
 * placed at their head's dims), enc [n, d], lohi [2, n_head], bits [n], sig [n], info [6] =
 * {shared, hdr, sink, prec, n_i8, n}, fl [2] = {pos0_gain, pred_mse} (F64), and one table q<b> per
 * width in use: 2^b levels, or [1] = the step of a uniform quantizer. Vectors are stored as the
 * float32 values of their stored precision (f16 or int8 × scale), so the file is larger than the
 * overhead the codec reports; the values are identical. */
int ea_kv_is_klt(const ea_kv_codec *c) { return c && c->ops == &klt_ops; }

#define PART_TENSOR(buf, p, what) snprintf(buf, sizeof buf, "%spart.%d.%s", prefix, p, what)

/* Metadata key or tensor name under a prefix ("" for a codec file of its own). */
static const char *prefixed(char *buf, size_t cap, const char *prefix, const char *key) {
    snprintf(buf, cap, "%s%s", prefix, key);
    return buf;
}

ea_status ea_kv_klt_write(const ea_kv_codec *c, ea_st_writer *w, const char *prefix) {
    const klt_state *ks = c->state;
    int d = c->d, H = c->n_head, hd = d / H, P = 2 * c->n_layer;
    ea_status st = EA_OK;
    char key[96], val[64];
    if (strlen(prefix) > 32) return ea_error(EA_ERR_ARG, "kv codec '%s': tensor prefix too long", c->name);
    if (!st) st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, "format"), "eigenalign-kv-codec");
    /* Version 2 ties the codec to the weights it was fitted on (issue 20 item 4). */
    if (!st) st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, "version"), "2");
    if (!st) st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, "model_fingerprint"), c->fingerprint);
    if (!st) st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, "spec"), c->name);
    int dims[4] = {c->n_layer, H, d, c->n_ctx};
    const char *dn[4] = {"n_layer", "n_head", "n_embd", "n_ctx"};
    for (int i = 0; i < 4 && !st; i++) {
        snprintf(val, sizeof val, "%d", dims[i]);
        st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, dn[i]), val);
    }
    snprintf(val, sizeof val, "%zu", ks->overhead);
    if (!st) st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, "overhead_bytes"), val);
    float *buf = NULL;
    for (int p = 0; p < P && !st; p++) {
        const klt_part *kp = &ks->p[p];
        int n = kp->b.n_coef;
        free(buf);
        if (!(buf = calloc((size_t)(n > 0 ? n : 1) * d + 2 * (size_t)d + 16, sizeof(float)))) {
            st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
            break;
        }
        int64_t sd[1] = {d}, snd[2] = {n, d}, sn[1] = {n}, slh[2] = {2, H}, s6[1] = {6}, s2[1] = {2};
        PART_TENSOR(key, p, "mean");
        st = ea_st_writer_add(w, key, EA_DTYPE_F32, 1, sd, kp->b.mean);
        int32_t lohi[2 * 64 + 2], info[6] = {kp->b.shared, kp->hdr, kp->sink, kp->b.prec, kp->b.n_i8, n};
        if (!st && H > 64) st = ea_error(EA_ERR_ARG, "kv codec '%s': more than 64 heads", c->name);
        for (int h = 0; h < H && !st; h++) {
            lohi[h] = kp->b.lo[h];
            lohi[H + h] = kp->b.hi[h];
        }
        PART_TENSOR(key, p, "lohi");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_I32, 2, slh, lohi);
        PART_TENSOR(key, p, "info");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_I32, 1, s6, info);
        double fl[2] = {kp->pos0_gain, kp->pred_mse};
        PART_TENSOR(key, p, "fl");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_F64, 1, s2, fl);
        if (n == 0) continue;
        for (int h = 0; h < H; h++)
            for (int j = kp->b.lo[h]; j < kp->b.hi[h]; j++)
                for (int i = 0; i < hd; i++) buf[(size_t)j * d + h * hd + i] = kp->b.w[h][(size_t)(j - kp->b.lo[h]) * hd + i];
        PART_TENSOR(key, p, "w");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_F32, 2, snd, buf);
        PART_TENSOR(key, p, "enc");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_F32, 2, snd, kp->b.enc);
        int32_t *bits = (int32_t *)(void *)buf; /* w is written (copied): reuse the buffer */
        for (int j = 0; j < n; j++) bits[j] = kp->bits[j];
        PART_TENSOR(key, p, "bits");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_I32, 1, sn, bits);
        PART_TENSOR(key, p, "sig");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_F32, 1, sn, kp->sig);
        for (int b = 1; b <= EA_KV_QBITS && !st; b++) {
            const ea_kv_quant *q = NULL;
            for (int j = 0; j < n && !q; j++)
                if (kp->bits[j] == b) q = kp->qz[j];
            if (!q) continue;
            snprintf(key, sizeof key, "%spart.%d.q%d", prefix, p, b);
            int64_t sq[1] = {q->uniform ? 1 : q->n};
            st = ea_st_writer_add(w, key, EA_DTYPE_F32, 1, sq, q->uniform ? &q->step : q->level);
        }
    }
    free(buf);
    return st;
}

ea_status ea_kv_klt_save(const ea_kv_codec *c, const char *path) {
    ea_st_writer *w = NULL;
    ea_status st = ea_st_writer_init(&w);
    if (!st) st = ea_kv_klt_write(c, w, "");
    if (!st) st = ea_st_writer_save(w, path);
    ea_st_writer_free(w);
    return st;
}

/* A tensor of a codec file with the expected dtype and shape (ndim values in shape). */
static ea_status file_tensor(const ea_st_file *f, const char *name, ea_dtype dt, int ndim, const int64_t *shape,
                             const ea_st_tensor **out) {
    const ea_st_tensor *t = ea_st_find(f, name);
    if (!t) return ea_error(EA_ERR_FORMAT, "%s: kv codec file has no tensor '%s'", ea_st_path(f), name);
    int ok = t->dtype == dt && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' has the wrong dtype or shape", ea_st_path(f), name);
    *out = t;
    return EA_OK;
}

/* Parameters of a real codec are far inside this; bounding them keeps every product of finite
 * rows with them finite (a file could otherwise hold 1e38 and overflow attention). */
#define FILE_MAX_ABS 1e6f

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(x[i]) <= FILE_MAX_ABS)) return 0; /* also NaN */
    return 1;
}

static ea_status load_part(const ea_st_file *f, const char *prefix, ea_kv_codec *c, klt_state *ks, int p) {
    const char *path = ea_st_path(f);
    int d = c->d, H = c->n_head, hd = d / H;
    klt_part *kp = &ks->p[p];
    char key[96];
    const ea_st_tensor *t;
    int64_t s6[1] = {6}, s2[1] = {2}, slh[2] = {2, H}, sd[1] = {d};
    ea_status st;
    PART_TENSOR(key, p, "info");
    if ((st = file_tensor(f, key, EA_DTYPE_I32, 1, s6, &t))) return st;
    int32_t info[6];
    memcpy(info, t->data, sizeof info);
    int n = info[5];
    if (info[0] < 0 || info[0] > 1 || (info[1] != 0 && info[1] != 2) || info[2] < 0 || info[2] > 1 || info[3] < 0 ||
        info[3] > 2 || n < 0 || n > d || info[4] < 0 || info[4] > n)
        return ea_error(EA_ERR_FORMAT, "%s: part %d: invalid info values", path, p);
    PART_TENSOR(key, p, "fl");
    if ((st = file_tensor(f, key, EA_DTYPE_F64, 1, s2, &t))) return st;
    double fl[2];
    memcpy(fl, t->data, sizeof fl);
    if (!(fl[0] >= 1e-6 && fl[0] <= FILE_MAX_ABS) || !isfinite(fl[1]) || fl[1] < 0)
        return ea_error(EA_ERR_FORMAT, "%s: part %d: invalid position-0 gain or predicted error", path, p);
    PART_TENSOR(key, p, "lohi");
    if ((st = file_tensor(f, key, EA_DTYPE_I32, 2, slh, &t))) return st;
    ea_kv_basis *b = &kp->b;
    b->d = d;
    b->n_head = H;
    b->hd = hd;
    b->n_coef = n;
    b->shared = info[0];
    b->prec = info[3];
    b->n_i8 = info[4];
    b->mean = malloc(sizeof(float) * (size_t)d);
    b->lo = calloc((size_t)H, sizeof(int));
    b->hi = calloc((size_t)H, sizeof(int));
    b->w = calloc((size_t)H, sizeof(float *));
    if (!b->mean || !b->lo || !b->hi || !b->w) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    for (int h = 0; h < H; h++) {
        int32_t lo, hi;
        memcpy(&lo, (const char *)t->data + 4 * (size_t)h, 4);
        memcpy(&hi, (const char *)t->data + 4 * (size_t)(H + h), 4);
        int ok = b->shared ? (lo == 0 && hi == n) : (lo == (h ? b->hi[h - 1] : 0) && hi >= lo && hi - lo <= hd && (h < H - 1 || hi == n));
        if (!ok) return ea_error(EA_ERR_FORMAT, "%s: part %d: invalid coefficient ranges of head %d", path, p, h);
        b->lo[h] = lo;
        b->hi[h] = hi;
    }
    PART_TENSOR(key, p, "mean");
    if ((st = file_tensor(f, key, EA_DTYPE_F32, 1, sd, &t))) return st;
    memcpy(b->mean, t->data, sizeof(float) * (size_t)d);
    if (!all_finite(b->mean, (size_t)d)) return ea_error(EA_ERR_FORMAT, "%s: part %d: mean not finite or out of range", path, p);
    kp->hdr = info[1];
    kp->sink = info[2];
    kp->pos0_gain = (float)fl[0];
    kp->pred_mse = fl[1];
    if (!part_alloc(kp, n)) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    for (int h = 0; h < H; h++) {
        int nh = b->hi[h] - b->lo[h];
        if (!(b->w[h] = malloc(sizeof(float) * (size_t)(nh > 0 ? nh : 1) * hd))) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    }
    if (n > 0) {
        int64_t snd[2] = {n, d}, sn[1] = {n};
        PART_TENSOR(key, p, "w");
        if ((st = file_tensor(f, key, EA_DTYPE_F32, 2, snd, &t))) return st;
        const float *W = t->data;
        if (!all_finite(W, (size_t)n * d)) return ea_error(EA_ERR_FORMAT, "%s: part %d: basis not finite or out of range", path, p);
        for (int h = 0; h < H; h++)
            for (int j = b->lo[h]; j < b->hi[h]; j++)
                memcpy(b->w[h] + (size_t)(j - b->lo[h]) * hd, W + (size_t)j * d + h * hd, sizeof(float) * (size_t)hd);
        PART_TENSOR(key, p, "enc");
        if ((st = file_tensor(f, key, EA_DTYPE_F32, 2, snd, &t))) return st;
        if (!(b->enc = malloc(sizeof(float) * (size_t)n * d))) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
        memcpy(b->enc, t->data, sizeof(float) * (size_t)n * d);
        if (!all_finite(b->enc, (size_t)n * d)) return ea_error(EA_ERR_FORMAT, "%s: part %d: encoder not finite or out of range", path, p);
        PART_TENSOR(key, p, "sig");
        if ((st = file_tensor(f, key, EA_DTYPE_F32, 1, sn, &t))) return st;
        memcpy(kp->sig, t->data, sizeof(float) * (size_t)n);
        PART_TENSOR(key, p, "bits");
        if ((st = file_tensor(f, key, EA_DTYPE_I32, 1, sn, &t))) return st;
        for (int j = 0; j < n; j++) {
            int32_t bj;
            memcpy(&bj, (const char *)t->data + 4 * (size_t)j, 4);
            if (bj < 1 || bj > EA_KV_QBITS || !(kp->sig[j] > 0) || !(kp->sig[j] <= FILE_MAX_ABS))
                return ea_error(EA_ERR_FORMAT, "%s: part %d: coefficient %d has an invalid width or deviation", path, p, j);
            kp->bits[j] = (unsigned char)bj;
        }
    }
    for (int bw = 1; bw <= EA_KV_QBITS; bw++) { /* the tables of the widths in use */
        int used = 0;
        for (int j = 0; j < n; j++) used |= kp->bits[j] == bw;
        if (!used) continue;
        ea_kv_quant *q = &ks->pq[(size_t)p * (EA_KV_QBITS + 1) + bw];
        snprintf(key, sizeof key, "%spart.%d.q%d", prefix, p, bw);
        t = ea_st_find(f, key);
        int nl = 1 << bw;
        if (!t || t->dtype != EA_DTYPE_F32 || t->ndim != 1 || !(t->shape[0] == 1 || (t->shape[0] == nl && bw <= EA_KV_QTAB_BITS)))
            return ea_error(EA_ERR_FORMAT, "%s: part %d: missing or malformed level table for %d-bit codes", path, p, bw);
        memset(q, 0, sizeof *q);
        q->bits = bw;
        q->n = nl;
        q->uniform = t->shape[0] == 1;
        if (q->uniform) {
            memcpy(&q->step, t->data, sizeof(float));
            if (!(q->step > 0) || !(q->step <= FILE_MAX_ABS)) return ea_error(EA_ERR_FORMAT, "%s: part %d: invalid step for %d-bit codes", path, p, bw);
        } else {
            memcpy(q->level, t->data, sizeof(float) * (size_t)nl);
            for (int i = 0; i < nl; i++)
                if (!(fabsf(q->level[i]) <= FILE_MAX_ABS) || (i && !(q->level[i] > q->level[i - 1])))
                    return ea_error(EA_ERR_FORMAT, "%s: part %d: %d-bit levels are not bounded and ascending", path, p, bw);
            for (int i = 0; i < nl - 1; i++) q->thr[i] = 0.5f * (q->level[i] + q->level[i + 1]);
        }
        for (int j = 0; j < n; j++)
            if (kp->bits[j] == bw) kp->qz[j] = q;
    }
    return part_finish(kp, c->name);
}

ea_status ea_kv_klt_read(const ea_st_file *f, const char *prefix, const ea_config *cfg, ea_kv_codec **out) {
    *out = NULL;
    const char *path = ea_st_path(f);
    char key[96];
    ea_status st = EA_OK;
    if (strlen(prefix) > 32) return ea_error(EA_ERR_ARG, "%s: kv codec tensor prefix too long", path);
    const char *fmt = ea_st_metadata(f, prefixed(key, sizeof key, prefix, "format"));
    const char *ver = ea_st_metadata(f, prefixed(key, sizeof key, prefix, "version"));
    const char *spec = ea_st_metadata(f, prefixed(key, sizeof key, prefix, "spec"));
    if (fmt && !strcmp(fmt, "eigenalign-kv-codec") && ver && strcmp(ver, "2"))
        return ea_error(EA_ERR_FORMAT, "%s: kv codec file version %.16s is not supported: version 2 records the model "
                        "fingerprint the codec was fitted on; refit it (eigenalign fit --kv, generate --save-kv)", path, ver);
    if (!fmt || strcmp(fmt, "eigenalign-kv-codec") || !ver || !spec || strncmp(spec, "klt:", 4) ||
        strlen(spec) >= sizeof(((ea_kv_codec *)0)->name))
        return ea_error(EA_ERR_FORMAT, "%s: not an eigenalign kv codec%s%s (version 2, klt)", path, *prefix ? " under " : " file",
                        prefix);
    const char *fp = ea_st_metadata(f, prefixed(key, sizeof key, prefix, "model_fingerprint"));
    if (!fp || strlen(fp) >= sizeof(((ea_kv_codec *)0)->fingerprint))
        return ea_error(EA_ERR_FORMAT, "%s: kv codec lacks a valid model_fingerprint", path);
    int dims[4] = {cfg->n_layer, cfg->n_head, cfg->n_embd, cfg->n_positions};
    const char *dn[4] = {"n_layer", "n_head", "n_embd", "n_ctx"};
    for (int i = 0; i < 4; i++) {
        const char *v = ea_st_metadata(f, prefixed(key, sizeof key, prefix, dn[i]));
        if (!v || atol(v) != dims[i])
            return ea_error(EA_ERR_MISMATCH, "%s: codec was fitted for %s = %s, the model has %d", path, dn[i], v ? v : "?", dims[i]);
    }
    const char *ov = ea_st_metadata(f, prefixed(key, sizeof key, prefix, "overhead_bytes"));
    ea_kv_codec *c = calloc(1, sizeof *c);
    klt_state *ks = calloc(1, sizeof *ks);
    if (!c || !ks) {
        free(c);
        free(ks);
        return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(c->fingerprint, sizeof c->fingerprint, "%s", fp);
    snprintf(c->name, sizeof c->name, "%s", spec);
    c->n_layer = cfg->n_layer;
    c->n_head = cfg->n_head;
    c->d = cfg->n_embd;
    c->n_ctx = cfg->n_positions;
    c->ops = &klt_ops;
    c->block_rows = EA_KV_KLT_BLOCK;
    c->state = ks;
    int P = 2 * c->n_layer;
    if ((st = ea_kv_klt_opts_from_spec(spec, &ks->o))) { /* the file's spec names the file's problem */
        char why[256];
        snprintf(why, sizeof why, "%s", ea_last_error()); /* ea_error writes the buffer it would read */
        st = ea_error(EA_ERR_FORMAT, "%s: invalid codec spec in the metadata: %s", path, why);
    }
    ks->overhead = ov ? (size_t)strtoull(ov, NULL, 10) : 0;
    ks->p = calloc((size_t)P, sizeof *ks->p);
    ks->pq = calloc((size_t)P * (EA_KV_QBITS + 1), sizeof *ks->pq);
    if (!st && (!ks->p || !ks->pq)) st = ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    for (int b = 1; b <= EA_KV_QBITS && !st; b++) ks->q[b] = *ea_kv_quant_get(b, ks->o.lloyd);
    for (int p = 0; p < P && !st; p++) st = load_part(f, prefix, c, ks, p);
    for (int p = 1; p < P && !st; p++) /* attention reads K's and V's sink rows together */
        if (ks->p[p].sink != ks->p[0].sink) st = ea_error(EA_ERR_FORMAT, "%s: part %d: sink flag differs from part 0", path, p);
    if (st) {
        ea_kv_codec_free(c);
        return st;
    }
    *out = c;
    return EA_OK;
}

ea_status ea_kv_klt_load(const char *path, const ea_config *cfg, ea_kv_codec **out) {
    *out = NULL;
    ea_st_file *f = NULL;
    ea_status st = ea_st_open(path, &f);
    if (!st) st = ea_kv_klt_read(f, "", cfg, out);
    ea_st_close(f); /* after the message: it may quote the file's metadata */
    return st;
}
