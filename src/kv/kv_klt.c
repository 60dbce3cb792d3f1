/* klt:B KV codec: transform coding of K and V rows.
 *   1. Rotate the row into the eigenbasis of its calibration covariance (the Karhunen-Loève
 *      transform, per layer or per head), so coefficients are uncorrelated with variances λ_j.
 *   2. Allocate whole bits per coefficient by greedy reverse water-filling: each step gives one bit
 *      to the coefficient whose distortion drops most (λ_j·(D_b - D_{b+1}) for the Gaussian
 *      quantizer distortions D_b), until the row's byte budget (B bits per value) is spent.
 *      Coefficients left with 0 bits are dropped and decode to the mean.
 *   3. Quantize each kept coefficient with the Gaussian-optimal scalar quantizer of its width,
 *      scaled by its standard deviation (optionally also by a per-row f16 gain).
 * Rows are stored in blocks of 16 tokens, coefficient-major (layout in kv_klt.h). This file is the
 * runtime (encode, decode, attention, the derived block layout); fitting is kv_klt_fit.c, codec
 * files kv_klt_io.c. One-token
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

#include "kv/kv_internal.h"
#include "kv/kv_klt.h"
#include "kv/kv_quant.h"
#include "kv/kv_rows.h"
#include "ea/io.h"


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

const ea_kv_codec_ops ea_kv_klt_ops = {klt_row_bytes, klt_encode,     klt_decode,     klt_attend,  klt_overhead,
                                        klt_destroy,   klt_seq_bytes, klt_encode_rows, klt_resident};

double ea_kv_klt_predicted_mse(const ea_kv_codec *c, int layer, int kind) { return part_of(c, layer, kind)->pred_mse; }

/* The per-coefficient arrays of a part with n coefficients; 0 when out of memory (klt_destroy frees
 * what was allocated). */
int ea_kv_klt_part_alloc(klt_part *kp, int n) {
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
ea_status ea_kv_klt_part_finish(klt_part *kp, const char *name) {
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

int ea_kv_is_klt(const ea_kv_codec *c) { return c && c->ops == &ea_kv_klt_ops; }
