/* Gaussian scalar quantizers of the transform coder (see kv_quant.c). */
#ifndef EA_KV_QUANT_H
#define EA_KV_QUANT_H

#define EA_KV_QBITS 12     /* widest code (at most 12 bits: four codes fit one 64-bit read) */
#define EA_KV_QTAB_BITS 8  /* level tables exist up to this width; wider codes are uniform */
#define EA_KV_QMAX (1 << EA_KV_QTAB_BITS)

typedef struct ea_kv_quant {
    int bits, n, uniform;
    float step;              /* uniform: cell width (unit variance) */
    float level[EA_KV_QMAX]; /* reconstruction levels, ascending (bits <= EA_KV_QTAB_BITS) */
    float thr[EA_KV_QMAX];   /* n - 1 decision thresholds (bits <= EA_KV_QTAB_BITS) */
    double mse;              /* distortion for a unit-variance Gaussian */
} ea_kv_quant;

/* Lloyd-Max only up to EA_KV_QTAB_BITS; wider codes are always uniform (where the two coincide). */
void ea_kv_quant_design(ea_kv_quant *q, int bits, int lloyd);
/* The shared design for bits (1..EA_KV_QBITS), computed on first use. */
const ea_kv_quant *ea_kv_quant_get(int bits, int lloyd);
/* Index of the cell of z (in units of the coefficient's standard deviation), clamped. */
int ea_kv_quant_index(const ea_kv_quant *q, float z);
/* out[i] = ea_kv_quant_index(q, z[i]) for i < n (vectorized where the build allows). */
void ea_kv_quant_index_n(const ea_kv_quant *q, const float *z, int n, int *out);

#endif
