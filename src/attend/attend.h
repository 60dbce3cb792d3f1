/* Attention kernels (src/attend, the layer below the KV codecs): causal attention on KV rows as a
 * cache stores them (float32, f16, q8_0, q4_0): the decode kernel shared by the plain engine and
 * the row codecs, the sgemm prefill on float rows, and the reference attention every
 * compressed-space attention is tested against. They know row layouts, not codec objects. */
#ifndef EA_ATTEND_H
#define EA_ATTEND_H

#include <stddef.h>

/* Layout of one stored row of d values (q8_0/q4_0: llama.cpp's blocks of 32 values, the last one
 * zero-padded; see kv_qblock.c). */
typedef enum {
    EA_KV_ROWS_F32 = 0, /* 4·d bytes */
    EA_KV_ROWS_F16,     /* 2·d bytes, IEEE half */
    EA_KV_ROWS_Q8_0,    /* 34 bytes per block: f16 scale, 32 × int8 */
    EA_KV_ROWS_Q4_0     /* 18 bytes per block: f16 scale, 16 bytes of nibbles (value j low, 16+j high) */
} ea_kv_rows_format;

/* Up to this many queries take the streaming kernel; more take the sgemm prefill. */
#define EA_KV_ROWS_STREAM_MAX 4
/* Queries per sgemm block in the prefill: its scratch holds this many score rows per thread. */
#define EA_KV_ROWS_GEMM_BLOCK 64

size_t ea_kv_rows_row_bytes(ea_kv_rows_format fmt, int d);

/* Causal attention of nq (1..EA_KV_ROWS_STREAM_MAX) queries at positions pos0..pos0+nq-1 (q, out:
 * nq × d, heads concatenated) on the stored rows 0..pos0+nq-1 of k and v (row t at
 * t·ea_kv_rows_row_bytes). Reads the rows in place (nothing is decoded to memory); heads and key
 * ranges run in parallel with an online softmax. */
void ea_kv_rows_attend(ea_kv_rows_format fmt, int n_head, int d, const float *q, int nq, int pos0, const void *k,
                       const void *v, float *out);

/* ea_kv_rows_attend for grouped-query attention, reading each stored row once for a group of
 * query heads: query slot (position p, KV head h, member r < group) is at q + p·qs + h·hs + r·d/n_head
 * (out alike); np·group <= EA_KV_ROWS_STREAM_MAX. n_head and d count KV heads and the KV row width.
 * Each slot's result is bit-identical to running it alone with ea_kv_rows_attend (group 1, qs d,
 * hs d/n_head is that function). */
void ea_kv_rows_attend_group(ea_kv_rows_format fmt, int n_head, int d, int group, size_t qs, size_t hs,
                             const float *q, int np, int pos0, const void *k, const void *v, float *out);

/* Prefill attention on float rows (any nq): per head and block of EA_KV_ROWS_GEMM_BLOCK queries,
 * S = Q Kᵀ and O = softmax(S) V with sgemm. scratch: per_thread floats for each of
 * omp_get_max_threads() threads, per_thread >= EA_KV_ROWS_GEMM_BLOCK · (pos0 + nq). */
void ea_kv_rows_attend_gemm(int n_head, int d, const float *q, int nq, int pos0, const float *k, const float *v,
                            float *out, float *scratch, size_t per_thread);

/* Standard causal attention on float rows (reference, and the fallback path).
 * k, v: (pos0+nq) × d; q, out: nq × d. scratch: at least pos0+nq floats. */
void ea_attention_ref(int n_head, int d, const float *q, int nq, int pos0, const float *k, const float *v,
                      float *out, float *scratch);

#endif
