/* KV-cache codecs: pieces shared by the codec files of src/kv (not public API): the distortion
 * metric, codec construction, the klt options and files, histogram quantizers, linear bases and
 * coefficient-space attention. Nothing here runs the model (that is src/calib). */
#ifndef EA_KV_INTERNAL_H
#define EA_KV_INTERNAL_H

#include "ea/kvcodec.h"
#include "kv/kv_codec.h"

/* ea_kv_codec_create with an optional metric (used by the klt codec). */
ea_status ea_kv_codec_create_ex(const char *spec, const ea_config *cfg, const ea_kv_stats *stats,
                                const ea_kv_metric *metric, ea_kv_codec **out);

/* Each setup fills c->ops and c->state of a codec whose name and shape are already set. */
ea_status ea_kv_f32_setup(ea_kv_codec *c);
ea_status ea_kv_f16_setup(ea_kv_codec *c);
ea_status ea_kv_q8_setup(ea_kv_codec *c);
ea_status ea_kv_q4_setup(ea_kv_codec *c);
/* pca:R (per_head 0: R coefficients per row) or pca-head:R (R per head). */
ea_status ea_kv_pca_setup(ea_kv_codec *c, const ea_kv_stats *s, int rank, int per_head);

/* Options of the transform coder (klt); the spec string sets them, see kv_klt.c. */
typedef struct {
    double bits;        /* average budget, bits per cached value (K and V, all layers) */
    int per_head;       /* 1: one KLT per head (hd × hd blocks); 0: one per layer (d × d) */
    int token_scale;    /* 1: one f16 gain per row rescales the coefficients */
    int lloyd;          /* 1: Lloyd-Max levels for a Gaussian; 0: optimal uniform step */
    int pool;           /* 1: one greedy pool over all layers and kinds; 0: budget per layer and kind */
    int f16_basis;      /* basis precision EA_KV_PREC_*: 0 f32, 1 f16, 2 int8 with a f16 scale per vector */
    int i8_bits;        /* vectors of coefficients coded with at most this many bits are stored in int8 */
    double kv_ratio;    /* weight of V distortion against K distortion in the pooled allocation */
    int weighted;       /* use the metric (when one is given): bit 0 for K, bit 1 for V */
    double reg;         /* metric regularisation: M + reg·tr(M)/w·I per group */
    double pos0_gain;   /* steps of the position-0 row scaled by this (it is an outlier) */
    int sink;           /* 1: the position-0 row (the attention sink) is kept in f16 beside the codes */
} ea_kv_klt_opts;
void ea_kv_klt_default(ea_kv_klt_opts *o, double bits);
/* klt codec files (kv_klt.c): a fitted codec written and read back whole. */
int ea_kv_is_klt(const ea_kv_codec *c);
ea_status ea_kv_klt_save(const ea_kv_codec *c, const char *path);
ea_status ea_kv_klt_load(const char *path, const ea_config *cfg, ea_kv_codec **out);
/* The same under a name prefix in a safetensors file shared with other content ("" for a codec
 * file of its own): metadata keys and tensor names all start with prefix. */
ea_status ea_kv_klt_write(const ea_kv_codec *c, ea_st_writer *w, const char *prefix);
ea_status ea_kv_klt_read(const ea_st_file *f, const char *prefix, const ea_config *cfg, ea_kv_codec **out);
/* Tensors of KV codecs embedded in a compressor file start with this (ea_compressor_save_with_kv). */
#define EA_KV_EMBED_PREFIX "kv."
/* Options of a "klt:B[:flags]" spec. */
ea_status ea_kv_klt_opts_from_spec(const char *spec, ea_kv_klt_opts *o);
ea_status ea_kv_klt_setup(ea_kv_codec *c, const ea_kv_stats *s, const ea_kv_metric *mt, const ea_kv_klt_opts *o);
/* Expected squared error per row of (layer, kind) (in the codec's metric): for Gaussian rows with the
 * calibration covariance, or from the measured coefficient distributions when it was fitted on them. */
double ea_kv_klt_predicted_mse(const ea_kv_codec *c, int layer, int kind);
/* The full transform of one part (every coefficient, kept or not): coefficient j of row x is
 * enc[j]·(x - mean) (enc: d × d row-major), with calibration standard deviation sig[j]. Basis and
 * mean are rounded as the codec stores them, so the coefficients are the codec's. */
ea_status ea_kv_klt_transform(const ea_kv_stats *s, const ea_kv_metric *mt, const ea_kv_klt_opts *o, int n_head, int layer,
                              int kind, float *enc, float *mean, float *sig);

/* Histograms of every coefficient of every part, in units of its standard deviation, on
 * calibration rows (taken by calib/kv_hist.c). */
typedef struct ea_kv_hist {
    int n_part, d, nbins;
    float lim;            /* bins cover [-lim, lim] */
    double *h;            /* [part][coef][bin] counts */
    float *enc, *mean, *sig; /* the transforms they were taken in (ea_kv_klt_transform) */
    ea_kv_klt_opts key;   /* options that determine the transform */
    int skip_sink;        /* position 0 left out (it is kept in f16) */
} ea_kv_hist;
void ea_kv_hist_free(ea_kv_hist *h);
/* Whether h was taken in the transform that options o build (and o uses level tables). */
int ea_kv_hist_matches(const ea_kv_hist *h, const ea_kv_klt_opts *o);
struct ea_kv_quant;
/* Mean squared error of quantizer q on the histogram w (nbins weights over h's bins). */
double ea_kv_hist_mse(const ea_kv_hist *h, const double *w, const struct ea_kv_quant *q);
/* Lloyd's algorithm on the histogram w from the levels of init; q gets f16-rounded levels. */
void ea_kv_hist_lloyd(const ea_kv_hist *h, const double *w, const struct ea_kv_quant *init, struct ea_kv_quant *q);

/* ---- A linear code of one (layer, kind): x ≈ mean + Σ_j coef_j · basis_j. ----
 * Coefficients of head h are [lo[h], hi[h]); basis rows of head h are w[h] ((hi-lo) × hd, row j is
 * coefficient lo+j's vector restricted to head h's dims). A per-layer basis has lo = 0, hi = n for
 * every head; a per-head basis has disjoint ranges. */
typedef struct {
    int d, n_head, hd, n_coef;
    float *mean;   /* d */
    int *lo, *hi;  /* n_head each */
    float **w;     /* n_head matrices: decode vectors */
    int shared;    /* every head uses all coefficients (per-layer basis) */
    int prec;      /* how the vectors are stored: EA_KV_PREC_* */
    int n_i8;      /* vectors stored in int8 whatever prec says (keep == 2) */
    float *enc;    /* least-squares encoder (n_coef × d): coefficients = enc (x - mean); NULL: orthonormal, coef = W (x - mean) */
} ea_kv_basis;
enum { EA_KV_PREC_F32 = 0, EA_KV_PREC_F16 = 1, EA_KV_PREC_I8 = 2 };
/* Round a vector as a basis of precision prec stores it (int8: one f16 scale for the n values). */
void ea_kv_basis_round_vec(double *v, int n, int prec);
/* Encoder that minimises the metric's error for the stored (rounded) vectors W:
 * E = (Wᵀ B W)⁻¹ Wᵀ B, B = the per-head blocks (hd × hd each, n_head of them) or I when NULL. With
 * it, rounding the vectors (even to int8) costs next to nothing: the encoder sees the vectors the
 * decoder uses. */
ea_status ea_kv_basis_set_encoder(ea_kv_basis *b, const double *blocks);
/* Stored bytes of the basis (mean and vectors in its precision). */
size_t ea_kv_basis_bytes(const ea_kv_basis *b);

/* Eigen-decompositions use the library's one solver, ea_eigh (ea/spectral.h); the codecs then
 * clamp every negative eigenvalue to 0 (their matrices are covariances or metrics). */
void ea_kv_clamp_eigenvalues(double *vals, int n);
/* Eigen-decomposition of the calibration covariance (layer, kind): per group (one, or one per head)
 * the eigenvalues (descending) and eigenvectors. evals: d values, group g at [g*w, (g+1)*w);
 * evecs: per group w × w row-major, column j = eigenvector j, group g at g*w*w. */
ea_status ea_kv_eigen(const ea_kv_stats *s, int layer, int kind, int per_head, int n_head, double *evals,
                      double *evecs);
/* Basis keeping, for each group g, the columns keep[g*w + j] != 0 of dec (layout of evecs) as
 * decode vectors, rounded to precision prec (EA_KV_PREC_*; means in f16 unless f32), or to int8
 * where keep is 2. */
ea_status ea_kv_basis_build(ea_kv_basis *b, const ea_kv_stats *s, int layer, int kind, int n_head, int per_head,
                            const double *dec, const unsigned char *keep, int prec);
void ea_kv_basis_free(ea_kv_basis *b);
/* Stored floats of the basis: means and decode vectors. */
size_t ea_kv_basis_floats(const ea_kv_basis *b);
/* coef[j0..j1) = rows j0..j1-1 of the encoder times xc = x - mean (bases with an encoder) */
void ea_kv_basis_project_range(const ea_kv_basis *b, const float *xc, int j0, int j1, float *coef);
/* coef (n_coef) = basisᵀ (x - mean) */
void ea_kv_basis_project(const ea_kv_basis *b, const float *x, float *coef);
/* x (d) = mean + basis coef */
void ea_kv_basis_expand(const ea_kv_basis *b, const float *coef, float *x);
/* Where attention reads coefficients from: unpack(self, rows, t0, n, coef) writes the
 * coefficients of encoded rows t0..t0+n-1 of buffer rows into coef (n × b->n_coef). */
typedef struct {
    const ea_kv_basis *b;
    void (*unpack)(const void *self, const void *rows, int t0, int n, float *coef);
    const void *self;
    const void *rows;
    const uint16_t *sink; /* position 0 kept as an f16 row (d values) instead of its coefficients, or NULL */
} ea_kv_coef_src;
/* Causal attention of nq queries (positions pos0..pos0+nq-1, q and out nq × d) on the keys and
 * values 0..pos0+nq-1 held as coefficients, without rebuilding K or V:
 *   score_t = (W_hᵀ q_h)·c_t (q·mean is the same for every t and cancels in the softmax),
 *   out_h = mean_h + W_h Σ_t a_t c_t (the weights sum to 1).
 * A sink row (k or v given as a full f16 row at position 0) enters in d dimensions: its score is
 * q_h·(k_0h - mean_h) and its value adds a_0 (v_0h - mean_h); both sources must have one or neither. */
void ea_kv_basis_attend(const ea_kv_coef_src *k, const ea_kv_coef_src *v, const float *q, int nq, int pos0,
                        float *out);
/* Scores of the f16 sink row (position 0) per head: scale · q_h·(k_0h - mean_h). */
void ea_kv_sink_scores(const ea_kv_basis *bk, const uint16_t *ksink, const float *q, float scale, float *s0);
/* The end of one-query coefficient-space attention for heads h0..h1-1: merge nth partial
 * online-softmax states (states + t·per: running max[H], sum[H], value coefficients[H × n_coef of
 * bv] summed with those weights; a head's coefficients from its lo) with the sink (s0: its scores,
 * NULL when none), then out_h = mean_h + W_h (weighted coefficients) + a_0 (v_0h - mean_h). */
void ea_kv_attend_merge(const ea_kv_basis *bv, const uint16_t *vsink, const float *states, size_t per, int nth,
                        const float *s0, int h0, int h1, float *out);

#endif
