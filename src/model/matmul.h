/* Matrix products of the forward pass. */
#ifndef EA_MODEL_MATMUL_H
#define EA_MODEL_MATMUL_H

#include <stdint.h>

#include "ea/core.h"

/* A weight matrix laid out for decode: rows × cols, each output's weights contiguous, in the
 * checkpoint's stored precision (f16 when every source tensor was F16, else f32). */
typedef struct {
    int rows, cols;
    uint16_t *f16;
    float *f32;
} ea_rowmat;

/* C (M × N) = A (M × K) · B (K × N, or N × K when trans_b) + beta·C, threads over M or N. */
void ea_gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, int trans_b, float *C, int ldc,
             float beta);
/* y (rows) = W x + bias (bias may be NULL), threads over rows. */
void ea_matvec(float *y, const ea_rowmat *W, const float *bias, const float *x);

#endif
