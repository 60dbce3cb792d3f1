/* One-token attention on a klt cache: the threads, the query in coefficient space and the merge,
 * around the tier's decode kernel (kv_klt_attend_avx512.c or kv_klt_attend_avx2.c, chosen at run
 * time), which scores, weighs and sums one thread's blocks of keys. The generic tier takes the
 * coefficient-space attention (ea_kv_basis_attend). */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kv/kv_klt.h"

#ifdef EA_X86

#define BLK EA_KV_KLT_BLOCK
#define BLOCKS_PER_THREAD 8 /* fewer blocks than this per thread: fewer threads */
#define KLT_MAX_HEADS 256   /* heads the kernels take (sink scores on the stack) */

static int threads_for(int nblk) {
    int nth = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) nth = omp_get_max_threads();
#endif
    if (nth > nblk / BLOCKS_PER_THREAD) nth = nblk / BLOCKS_PER_THREAD > 0 ? nblk / BLOCKS_PER_THREAD : 1;
    return nth;
}

typedef struct {
    size_t (*scratch)(int H, int nv, int nb);
    void (*range)(const klt_part *, const klt_part *, const unsigned char *, const unsigned char *, int, int, int, int,
                  const float *, float *, float *);
} klt_kernel;

/* The tier's kernel, or 0 (generic tier). */
static int kernel_for(klt_kernel *kk) {
    if (ea_isa_vbmi()) {
        kk->scratch = ea_kv_klt_kernel_scratch_avx512;
        kk->range = ea_kv_klt_kernel_range_avx512;
    } else if (ea_isa_now() >= EA_ISA_AVX2) {
        kk->scratch = ea_kv_klt_kernel_scratch_avx2;
        kk->range = ea_kv_klt_kernel_range_avx2;
    } else
        return 0;
    return 1;
}

/* The query in coefficient space for heads [h0, h1), σ and the softmax scale folded in: per-layer
 * bases coefficient-major (qt[j·H + h]), per-head bases head-major (qt[h·nk + j]). One body,
 * vectorised per tier (the sums' lane count, hence their rounding, follows the tier). */
static inline __attribute__((always_inline)) void project_q_body(const klt_part *k, const float *q, float scale, int h0,
                                                                 int h1, float *qt) {
    const ea_kv_basis *bk = &k->b;
    int H = bk->n_head, hd = bk->hd, nk = bk->n_coef;
    for (int h = h0; h < h1; h++) {
        const float *w = bk->w[h], *qh = q + h * hd, *post = k->post + bk->lo[h];
        for (int j = 0; j < bk->hi[h] - bk->lo[h]; j++) {
            float a = 0;
#pragma omp simd reduction(+ : a)
            for (int i = 0; i < hd; i++) a += w[(size_t)j * hd + i] * qh[i];
            qt[bk->shared ? (size_t)j * H + h : (size_t)h * nk + j] = a * scale * post[j];
        }
    }
}

EA_TARGET_AVX2_BEGIN
static void project_q_avx2(const klt_part *k, const float *q, float scale, int h0, int h1, float *qt) {
    project_q_body(k, q, scale, h0, h1, qt);
}
EA_TARGET_END

EA_TARGET_AVX512_BEGIN
static void project_q_avx512(const klt_part *k, const float *q, float scale, int h0, int h1, float *qt) {
    project_q_body(k, q, scale, h0, h1, qt);
}
EA_TARGET_END

/* Per-layer bases: the kernels keep one accumulator per head in registers, instantiated for these. */
static int shared_ok(int H) { return H == 4 || H == 8 || H == 12 || H == 16; }

/* Work: the query in coefficient space (H × nk), each thread's softmax state (2H + H·nv) and the
 * kernel's scratch for the thread's blocks. */
static size_t per_state(int H, int nv) { return (size_t)2 * H + (size_t)H * nv; }
static size_t per_scratch(const klt_kernel *kk, int H, int nv, int nblk, int nth) {
    return kk->scratch(H, nv, (nblk + nth - 1) / nth);
}

size_t ea_kv_klt_attend_floats(const klt_part *k, const klt_part *v, int T) {
    klt_kernel kk;
    if (!kernel_for(&kk)) return 1;
    int H = k->b.n_head, nv = v->b.n_coef, nblk = (T + BLK - 1) / BLK, nth = threads_for(nblk);
    return (size_t)H * k->b.n_coef + (per_state(H, nv) + per_scratch(&kk, H, nv, nblk, nth)) * nth + 1;
}

int ea_kv_klt_attend_one(const klt_part *k, const klt_part *v, const void *krows, const void *vrows,
                         const uint16_t *ksink, const uint16_t *vsink, const float *q, int T, float *out, float *work) {
    const ea_kv_basis *bk = &k->b, *bv = &v->b;
    int H = bk->n_head, hd = bk->hd, nk = bk->n_coef, nv = bv->n_coef;
    if (bk->shared != bv->shared || (bk->shared && !shared_ok(H)) || H > KLT_MAX_HEADS || !ksink != !vsink || T < 1)
        return 0;
    klt_kernel kk;
    if (!kernel_for(&kk)) return 0;
    void (*project_q)(const klt_part *, const float *, float, int, int, float *) =
        ea_isa_now() >= EA_ISA_AVX512 ? project_q_avx512 : project_q_avx2;
    int first = ksink ? 1 : 0, nblk = (T + BLK - 1) / BLK, nth = threads_for(nblk);
    size_t per = per_state(H, nv), chunk = per_scratch(&kk, H, nv, nblk, nth);
    float *qt = work, *states = qt + (size_t)H * nk, *scratch = states + per * nth;
    float scale = 1.0f / sqrtf((float)hd), s0[KLT_MAX_HEADS]; /* fixed size: no VLA captured by the region */
    if (first) ea_kv_sink_scores(bk, ksink, q, scale, s0);
    /* One region, three phases split over the threads: the query in coefficient space (heads split;
     * reading the basis is bandwidth-bound, so two cores halve it), the thread's blocks, the merge
     * and projection (heads split). */
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        int h0 = H * tid / nth, h1 = H * (tid + 1) / nth;
        project_q(k, q, scale, h0, h1, qt);
#pragma omp barrier
        int b0 = (int)((long)nblk * tid / nth), b1 = (int)((long)nblk * (tid + 1) / nth);
        kk.range(k, v, krows, vrows, first, T, b0, b1, qt, scratch + chunk * tid, states + per * tid);
#pragma omp barrier
        ea_kv_attend_merge(bv, vsink, states, per, nth, first ? s0 : NULL, h0, h1, out);
    }
    return 1;
}

#else

size_t ea_kv_klt_attend_floats(const klt_part *k, const klt_part *v, int T) {
    (void)k, (void)v, (void)T;
    return 1;
}

int ea_kv_klt_attend_one(const klt_part *k, const klt_part *v, const void *krows, const void *vrows,
                         const uint16_t *ksink, const uint16_t *vsink, const float *q, int T, float *out, float *work) {
    (void)k, (void)v, (void)krows, (void)vrows, (void)ksink, (void)vsink, (void)q, (void)T, (void)out, (void)work;
    return 0; /* no vector kernel off x86: the generic coefficient-space attention runs */
}

#endif
