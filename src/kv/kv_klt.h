/* The klt codec's coded parts and their storage layout, shared by the codec (kv_klt.c) and its
 * decode attention (kv_klt_attend*.c). Not public API.
 *
 * Layout: rows come in blocks of EA_KV_KLT_BLOCK tokens. A block holds the tokens' f16 gains (hdr
 * bytes each, when the part has them), then, per coefficient j in order, the codes of its 16
 * tokens: 16 × bits[j] bits = 2·bits[j] bytes, token (lane) i at bits [i·b, i·b + b). A block is
 * EA_KV_KLT_BLOCK × row_bytes bytes, so the cache's per-row accounting is unchanged; attention
 * decodes one coefficient of 16 keys with a few vector instructions instead of a bit stream per
 * row. */
#ifndef EA_KV_KLT_H
#define EA_KV_KLT_H

#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "kv/kv_internal.h"
#include "kv/kv_quant.h"
#include "core/isa.h"

#define EA_KV_KLT_BLOCK 16

/* Consecutive coefficients with the same code width. */
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
    size_t row_bytes;       /* average bytes per row: a block is EA_KV_KLT_BLOCK of them */
    int hdr;                /* bytes of the per-row f16 gain (0 or 2) */
    float pos0_gain;        /* position 0 (an outlier row) is coded with steps this much wider */
    int sink;               /* position 0 is kept as an f16 row just before row 0 (its codes are unused) */
    double pred_mse;        /* expected squared error per row for Gaussian rows */
    /* derived by part_finish for the block layout and the vector decoder */
    int *off;               /* n_coef: byte offset of coefficient j's codes in a block */
    const float **ptab;     /* n_coef: level table padded for register lookups (widths <= 7), else NULL */
    float *pad;             /* storage of the padded tables */
    size_t n_pad;           /* floats in pad */
    float *post;            /* n_coef: factor of a decoded level (σ for tables, 1 for uniform levels) */
} klt_part;


/* The codec's state (c->state of a klt codec). */
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
/* The operations of a klt codec (kv_klt.c); setup and load install them. */
extern const ea_kv_codec_ops ea_kv_klt_ops;
/* The per-coefficient arrays of a part with n coefficients; 0 when out of memory (the codec's
 * destroy frees what was allocated). */
int ea_kv_klt_part_alloc(klt_part *kp, int n);
/* What a part derives from its widths, σ and quantizers: level scales, runs of equal width, the
 * block layout and the row size (setup and load share it). */
ea_status ea_kv_klt_part_finish(klt_part *kp, const char *name);

#ifdef EA_X86
/* The decode kernels, kv_klt_attend_avx512.c (AVX-512 with VBMI's byte permutes) and
 * kv_klt_attend_avx2.c (x86-64-v3); kv_klt_attend.c picks one at run time (ea_isa_now) and splits
 * the blocks over threads. CPUs with neither take the generic coefficient-space attention.
 * Each kernel provides: */
/* floats of scratch one thread needs for nb blocks (H heads, nv value coefficients); */
size_t ea_kv_klt_kernel_scratch_avx2(int H, int nv, int nb);
size_t ea_kv_klt_kernel_scratch_avx512(int H, int nv, int nb);
/* one thread's blocks [b0, b1) of keys first..T-1 (qt: the query in coefficient space, σ and the
 * softmax scale folded in: per-layer bases qt[j·H + h], per-head bases qt[h·n_coef + j]): its
 * softmax state st = max m[H], sum l[H], weighted value coefficients A[H × nv]. */
void ea_kv_klt_kernel_range_avx2(const klt_part *k, const klt_part *v, const unsigned char *kr, const unsigned char *vr,
                                 int first, int T, int b0, int b1, const float *qt, float *scratch, float *st);
void ea_kv_klt_kernel_range_avx512(const klt_part *k, const klt_part *v, const unsigned char *kr,
                                   const unsigned char *vr, int first, int T, int b0, int b1, const float *qt,
                                   float *scratch, float *st);
#endif
/* Floats of work memory ea_kv_klt_attend_one needs for T rows. */
size_t ea_kv_klt_attend_floats(const klt_part *k, const klt_part *v, int T);
/* One query at position T-1 attending to rows 0..T-1 of parts k and v (rows: row 0 of each, the
 * f16 sink rows before them when the parts keep one); work: ea_kv_klt_attend_floats floats.
 * Returns 0 when this build or shape has no vector kernel (the caller takes the generic path). */
int ea_kv_klt_attend_one(const klt_part *k, const klt_part *v, const void *krows, const void *vrows,
                         const uint16_t *ksink, const uint16_t *vsink, const float *q, int T, float *out, float *work);

#endif
