/* The attend op of the row codecs (f32, f16, q8_0, q4_0): the attention kernels of src/attend on
 * the rows in place for a few queries, or the rows decoded with the codec's decode op and the sgemm
 * prefill for many. */
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kv/kv_rows.h"

#define CHUNK 64 /* rows decoded per work item */

void ea_kv_rows_codec_attend(const ea_kv_codec *c, ea_kv_rows_format fmt, int layer, const float *q, int nq, int pos0,
                             const void *kbuf, const void *vbuf, float *out) {
    int d = c->d, T = pos0 + nq, nth = 1;
    if (nq <= EA_KV_ROWS_STREAM_MAX) {
        ea_kv_rows_attend(fmt, c->n_head, d, q, nq, pos0, kbuf, vbuf, out);
        return;
    }
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    int decoded = fmt != EA_KV_ROWS_F32; /* f32 rows are read in place */
    size_t per = (size_t)EA_KV_ROWS_GEMM_BLOCK * (size_t)T, n = decoded ? (size_t)T * (size_t)d : 0;
    float *scratch = malloc(sizeof(float) * (per * (size_t)nth + 2 * n));
    if (!scratch) { /* no memory for the prefill: the streaming kernel needs none, four queries at a time */
        for (int i0 = 0; i0 < nq; i0 += EA_KV_ROWS_STREAM_MAX) {
            int g = nq - i0 < EA_KV_ROWS_STREAM_MAX ? nq - i0 : EA_KV_ROWS_STREAM_MAX;
            ea_kv_rows_attend(fmt, c->n_head, d, q + (size_t)i0 * d, g, pos0 + i0, kbuf, vbuf, out + (size_t)i0 * d);
        }
        return;
    }
    const float *k = kbuf, *v = vbuf;
    if (decoded) {
        float *kd = scratch + per * (size_t)nth, *vd = kd + n;
        size_t rb = ea_kv_rows_row_bytes(fmt, d);
        const unsigned char *kb = kbuf, *vb = vbuf;
#pragma omp parallel for schedule(static)
        for (int t0 = 0; t0 < T; t0 += CHUNK) {
            int m = T - t0 < CHUNK ? T - t0 : CHUNK;
            c->ops->decode(c, layer, EA_KV_K, t0, m, kb + rb * (size_t)t0, kd + (size_t)t0 * d);
            c->ops->decode(c, layer, EA_KV_V, t0, m, vb + rb * (size_t)t0, vd + (size_t)t0 * d);
        }
        k = kd;
        v = vd;
    }
    ea_kv_rows_attend_gemm(c->n_head, d, q, nq, pos0, k, v, out, scratch, per);
    free(scratch);
}
