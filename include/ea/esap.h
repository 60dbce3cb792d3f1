/* eigen-alignment ESAP (Eigen Spectrum Alignment Protocol): spectrum handshake between two
 * models, orthogonal Procrustes alignment on shared anchors, and k-float messages between them.
 * The math takes plain matrices (row-major), so everything here works without a model; the
 * ea_esap_anchors_* functions at the end build anchor matrices from loaded models. */
#ifndef EA_ESAP_H
#define EA_ESAP_H

#include "ea/core.h"
#include "ea/model.h"
#include "ea/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- 1. Spectrum handshake ------------------------------------------------------------- */

/* Largest dimension a spectrum message may claim: bounds what a hostile message can make us
 * allocate and compute (the isotropic control samples a d × d covariance; GPT-2 XL has d = 1600). */
#define EA_ESAP_MAX_DIM 8192
/* Longest fingerprint / site string in a message (printable ASCII). */
#define EA_ESAP_MAX_NAME 128
/* The note's threshold: Pearson r of the C(k) curves above this is called "converged". */
#define EA_ESAP_CONVERGED_R 0.9
/* Eigenvalues of a message must sum to 1 within this. */
#define EA_ESAP_SUM_TOL 1e-9

/* What one model sends: its spectrum at one site, normalized to sum 1. */
typedef struct {
    char fingerprint[EA_ESAP_MAX_NAME + 1];
    char site[EA_ESAP_MAX_NAME + 1]; /* "wte", "hidden:3", ... */
    int d;
    int K;               /* number of C(k) values, 1 <= K <= d */
    double df;           /* (Σλ)² / Σλ² */
    double *eigenvalues; /* d, descending, non-negative, sum 1 */
    double *ck;          /* ck[k-1] = C(k) = Σ_{i<k} λ_i, k = 1..K */
} ea_esap_spectrum;

/* Build a message from d eigenvalues (any order, any positive scale; tiny negatives from
 * rounding, above -1e-12 of the largest, are clamped to 0). K <= 0 means K = d. */
EA_API ea_status ea_esap_spectrum_init(ea_esap_spectrum *s, const double *eigenvalues, int d, int K,
                                const char *fingerprint, const char *site);
EA_API void ea_esap_spectrum_free(ea_esap_spectrum *s);

/* Stable JSON: fixed key order, every number printed with %.17g so parsing gives back the
 * same doubles bit for bit. *json is malloc'd and NUL-terminated. */
EA_API ea_status ea_esap_spectrum_to_json(const ea_esap_spectrum *s, char **json, size_t *len);
/* Parse and validate (types, lengths, finiteness, d <= EA_ESAP_MAX_DIM, eigenvalues
 * non-negative, descending and summing to 1, Df and C(k) consistent with them, no unknown or
 * duplicate keys). name appears in error messages (a path, or "message"). */
EA_API ea_status ea_esap_spectrum_parse(const char *json, size_t len, const char *name, ea_esap_spectrum *out);
EA_API ea_status ea_esap_spectrum_save(const ea_esap_spectrum *s, const char *path);
EA_API ea_status ea_esap_spectrum_load(const char *path, ea_esap_spectrum *out);

/* Pearson correlation of x and y (n values); NaN when n < 2 or either is constant. */
EA_API double ea_esap_pearson(const double *x, const double *y, int n);
/* C(k) = Σ_{i<k} ev_i / Σ ev for k = 1..K into ck (ev descending, d values). */
EA_API void ea_esap_cumulative(const double *ev, int d, int K, double *ck);
/* Controls. Eigenvalues (descending) of the sample covariance of n isotropic Gaussian vectors in
 * d dimensions, deterministic in seed; and the power law λ_i ∝ i^-alpha, i = 1..d. */
EA_API ea_status ea_esap_isotropic_spectrum(int d, int n, uint64_t seed, double *ev);
EA_API void ea_esap_powerlaw_spectrum(int d, double alpha, double *ev);

typedef struct {
    int d_a, d_b, K;
    double df_a, df_b;
    double ck_pearson;  /* r of C_a(k), C_b(k) over k = 1..K; NaN if undefined */
    double threshold;   /* EA_ESAP_CONVERGED_R */
    int converged;      /* ck_pearson > threshold */
    /* r of each curve against an isotropic Gaussian sample (same d, n = 10·d, seeded) and
     * against λ_i ∝ 1/i of the same d, over the same k = 1..K. */
    double a_vs_isotropic, b_vs_isotropic, a_vs_powerlaw, b_vs_powerlaw;
} ea_esap_handshake;
#define EA_ESAP_ISOTROPIC_FACTOR 10 /* isotropic control sample: n = 10·d vectors */
/* K <= 0 means min(d_a, d_b); K must not exceed either message's K. The isotropic controls use
 * seeds seed (side a) and seed + 1 (side b). */
EA_API ea_status ea_esap_compare(const ea_esap_spectrum *a, const ea_esap_spectrum *b, int K, uint64_t seed,
                          ea_esap_handshake *out);

/* ---- 2. Alignment ---------------------------------------------------------------------- */

/* Orthogonal Procrustes: W = argmin ‖A W − B‖_F over W with orthonormal columns (da × db,
 * da >= db) or rows (da < db), W = U Vᵀ from the SVD of AᵀB = U Σ Vᵀ (LAPACK dgesdd).
 * a: n × da, b: n × db, w: da × db, all row-major. */
EA_API ea_status ea_procrustes(const double *a, const double *b, int n, int da, int db, double *w);

/* One side's own eigenbasis: the mean and the covariance eigenvectors of its anchor vectors
 * (no correspondence is used, so it leaks nothing about the pairing). */
typedef struct ea_esap_basis ea_esap_basis;
EA_API ea_status ea_esap_basis_fit(const float *x, int n, int d, ea_esap_basis **out);
EA_API void ea_esap_basis_free(ea_esap_basis *b);
EA_API int ea_esap_basis_dim(const ea_esap_basis *b);
/* Mean of the anchor vectors (d values). */
EA_API const double *ea_esap_basis_mean(const ea_esap_basis *b);
/* Covariance eigenvalues, descending (d values). */
EA_API const double *ea_esap_basis_eigenvalues(const ea_esap_basis *b);
/* Centre n rows of d floats and project on the top-k eigenvectors: out n × k. */
EA_API ea_status ea_esap_basis_project(const ea_esap_basis *b, const float *x, int n, int k, float *out);
/* Back from k coefficients to d dims (centred: the mean is not added): out n × d. */
EA_API ea_status ea_esap_basis_lift(const ea_esap_basis *b, const float *z, int n, int k, float *out);

/* Deterministic split of n anchors: perm (n entries) is a seeded permutation; training anchors
 * are perm[0 .. n_train), held-out anchors perm[n - n_test .. n). Growing n_train with the same
 * seed and n_test keeps the held-out set fixed, so sweeps compare like with like. */
EA_API ea_status ea_esap_split(int n, int n_train, int n_test, uint64_t seed, int *perm);

/* Retrieval of pairs (x_i, y_i): for each mapped source row x_i, rank every target row y_j by
 * cosine (nearest neighbour) and by CSLS (Conneau et al. 2018): 2cos(x,y) − r_T(x) − r_S(y),
 * r = mean cosine to the csls_k nearest neighbours in the other set. Ties count against the
 * true pair. */
typedef struct {
    int n;
    double p_at_1, p_at_10;
    double csls_p_at_1, csls_p_at_10;
    double mean_cos; /* mean cosine of the pairs (x_i, y_i) */
} ea_esap_retrieval;
#define EA_ESAP_CSLS_K 10
EA_API ea_status ea_esap_retrieve(const float *x, const float *y, int n, int k, int csls_k, ea_esap_retrieval *out);

typedef struct {
    int rank, train_anchors, test_anchors;
    ea_esap_retrieval test;   /* held-out pairs, W fitted on the training pairs */
    double train_cosine;      /* IN-SAMPLE: mean cosine of the training pairs W was fitted on */
    ea_esap_retrieval null;   /* held-out pairs, W fitted on shuffled training correspondences
                                 (mean over EA_ESAP_NULL_SHUFFLES shuffles) */
    double null_train_cosine; /* in-sample cosine of those null fits (mean) */
    double chance_p_at_1;     /* 1 / test_anchors */
} ea_esap_align_report;
#define EA_ESAP_NULL_SHUFFLES 5
/* za, zb: the n anchors of each side already reduced to k dims (ea_esap_basis_project), row i
 * of za paired with row i of zb. Splits with ea_esap_split(seed), fits W on the training pairs
 * and evaluates on the held-out ones; w (k × k, optional) receives W. The null shuffles the
 * training correspondences with streams derived from seed and averages over the shuffles. */
EA_API ea_status ea_esap_align_eval(const float *za, const float *zb, int n, int k, int n_train, int n_test,
                             uint64_t seed, double *w, ea_esap_align_report *out);

/* ---- 2b. Mutual k-NN alignment, anchor-free alignment ----------------------------------- */

/* Cosine k nearest neighbours of each of n rows (d floats) among the others, self excluded:
 * nbr (n × k) receives row indices, nearest first; equal similarities rank the lower index
 * first, NaN similarities last. EA_ERR_ARG unless 1 <= k < n. */
ea_status ea_esap_knn(const float *x, int n, int d, int k, int *nbr);

/* Mutual k-NN alignment (Huh et al. 2024) of two representations of the same n items (row i of
 * a and row i of b are one item): value = mean over i of |kNN_a(i) ∩ kNN_b(i)| / k, cosine
 * neighbourhoods, self excluded. Null: b's rows shuffled (n_perm seeded permutations);
 * p_value = (1 + #{null >= value}) / (1 + n_perm). chance = k / (n − 1), the null's expectation. */
typedef struct {
    int n, k, n_perm;
    double value;
    double null_mean, null_sd;
    double p_value;
    double chance;
} ea_esap_mknn;
#define EA_ESAP_MKNN_K 10
#define EA_ESAP_MKNN_PERMS 999   /* p resolves down to 0.001 */
#define EA_ESAP_MKNN_ALPHA 0.01  /* the handshake's "converged" needs p < this */
#define EA_ESAP_MKNN_MAX_ITEMS 4096 /* callers subsample larger anchor sets to this many */
EA_API ea_status ea_esap_mutual_knn(const float *a, int da, const float *b, int db, int n, int k, int n_perm, uint64_t seed,
                             ea_esap_mknn *out);

/* Anchor-free alignment (src/esap/unanchored.c): W (k × k, orthogonal) from two unpaired point
 * sets xa (na × k) and xb (nb × k), no correspondence used: pseudo-pairs from rotation-invariant
 * neighbourhood profiles (sorted cosines to the other points of the same space), Procrustes,
 * then refinement by CSLS mutual nearest neighbours and Procrustes until the pairs settle. Each
 * side needs more than 64 points. */
typedef struct {
    int init_pairs;  /* mutual pseudo-pairs the profiles gave */
    int iterations;  /* refinement rounds run */
    int final_pairs; /* mutual pairs the last W was fitted on */
} ea_esap_unanchored_info;
ea_status ea_esap_unanchored_fit(const float *xa, int na, const float *xb, int nb, int k, double *w,
                                 ea_esap_unanchored_info *info);
/* ea_esap_align_eval's protocol with W from ea_esap_unanchored_fit: the same seeded split, the
 * training rows of za and (in an independently shuffled order) of zb as the two point sets, the
 * same held-out pairs and the same shuffled-correspondence null. train_cosine is the mean cosine
 * of the true training pairs under that W (reported, never used by the fit). */
EA_API ea_status ea_esap_unanchored_eval(const float *za, const float *zb, int n, int k, int n_train, int n_test,
                                  uint64_t seed, double *w, ea_esap_align_report *out,
                                  ea_esap_unanchored_info *info);

/* ---- 3. Messages ----------------------------------------------------------------------- */

/* Agent A sends the k eigen-coefficients of a token's vector (float32, or rounded to float16);
 * agent B maps them with W into its own k-space, lifts them to its full d_b-dim space with its
 * eigenbasis and resolves the token by cosine nearest neighbour among its own (centred, full)
 * vectors of the held-out tokens. A receiver that first reduces its own vectors to its top k
 * (acc_reduced) is what ea_esap_align_eval's P@1 measures. W is fitted on the training anchors
 * as in ea_esap_align_eval. */
typedef struct {
    int rank, train_anchors, test_anchors;
    size_t bytes_f32, bytes_f16; /* per message: 4k and 2k */
    size_t bytes_full;           /* the full float32 vector of A: 4·d_a */
    double acc_f32, acc_f16;     /* token resolved exactly (top 1) among B's full vectors */
    double acc_reduced_f32;      /* resolved among B's vectors reduced to its top k */
    double top10_f32;            /* true token among B's 10 nearest */
    double null_acc_f32;         /* W fitted on shuffled training correspondences (mean of
                                    EA_ESAP_NULL_SHUFFLES shuffles) */
    double chance;               /* 1 / test_anchors */
} ea_esap_message_report;
EA_API ea_status ea_esap_message_eval(const ea_esap_basis *basis_a, const float *a, const ea_esap_basis *basis_b,
                               const float *b, int n, int k, int n_train, int n_test, uint64_t seed,
                               ea_esap_message_report *out);

/* The same with W from ea_esap_unanchored_fit on the training rows (no pairs used); the null is
 * unchanged (W fitted on shuffled training pairs). */
EA_API ea_status ea_esap_message_eval_unanchored(const ea_esap_basis *basis_a, const float *a, const ea_esap_basis *basis_b,
                                          const float *b, int n, int k, int n_train, int n_test, uint64_t seed,
                                          ea_esap_message_report *out);

/* ---- Anchors from models --------------------------------------------------------------- */

/* Representation of anchor tokens: rows of the token embedding, or the hidden state entering
 * block `layer` (layer = n_layer: the final output after ln_f) averaged over the token's
 * occurrences in a text. */
typedef enum { EA_ESAP_REPR_WTE = 0, EA_ESAP_REPR_HIDDEN = 1 } ea_esap_repr_kind;
typedef struct {
    ea_esap_repr_kind kind;
    int layer_a, layer_b; /* hidden only; -1 means the model's last (n_layer) */
} ea_esap_repr;
/* "wte", "hidden:L", "hidden:last" or "hidden:LA,LB" (a layer for each model). */
EA_API ea_status ea_esap_repr_parse(const char *s, ea_esap_repr *out);
/* The hidden layer one side uses (side_b: 0 for model a, 1 for b), checked against the model:
 * EA_ERR_ARG naming the model when out of range. */
EA_API ea_status ea_esap_repr_layer(const ea_esap_repr *r, int side_b, const ea_model *m, int *layer);
/* Canonical name of one side's representation ("wte" or "hidden:L"), into buf. */
EA_API void ea_esap_repr_name(const ea_esap_repr *r, int side_b, const ea_model *m, char *buf, size_t size);

/* Hidden states of one model over a token stream, cut into windows of ctx tokens, each run from
 * an empty cache. Accumulates the covariance of all positions (for the handshake) and the
 * per-token sums (for averaged anchors). */
typedef struct ea_esap_hidden ea_esap_hidden;
/* progress (optional) is called after each window with stage label, in tokens. */
EA_API ea_status ea_esap_hidden_collect(ea_model *m, int layer, const int *ids, size_t n, int ctx, ea_progress_fn progress,
                                 void *progress_user, const char *label, ea_esap_hidden **out);
EA_API void ea_esap_hidden_free(ea_esap_hidden *h);
EA_API int ea_esap_hidden_dim(const ea_esap_hidden *h);
EA_API size_t ea_esap_hidden_positions(const ea_esap_hidden *h);
/* Covariance (n-1 denominator) of all captured positions, d × d. */
EA_API ea_status ea_esap_hidden_covariance(const ea_esap_hidden *h, double *cov);
/* Occurrences of token id, and its mean hidden state (d floats; EA_ERR_ARG if it never occurred). */
EA_API int ea_esap_hidden_token_count(const ea_esap_hidden *h, int id);
EA_API ea_status ea_esap_hidden_token_mean(const ea_esap_hidden *h, int id, float *out);

/* Anchor pairs of two models: token ids present in both vocabularies and, for hidden
 * representations, seen at least once in both collections. With both tokenizers given, a pair is
 * two ids whose tokens have the same bytes (ids may differ between vocabularies); without them
 * (NULL), ids below the smaller vocab size pair with themselves (same GPT-2 tokenizer). */
typedef struct {
    int n, d_a, d_b;
    int *id_a, *id_b; /* n each */
    float *a, *b;     /* n × d_a and n × d_b */
    char **span;      /* pairing by text: the n words (NUL-terminated); NULL for token pairs */
} ea_esap_anchors;
/* ha/hb: hidden collections of each model (NULL for EA_ESAP_REPR_WTE). */
EA_API ea_status ea_esap_anchors_build(const ea_model *ma, const ea_model *mb, const ea_tokenizer *ta,
                                const ea_tokenizer *tb, const ea_esap_repr *r, const ea_esap_hidden *ha,
                                const ea_esap_hidden *hb, ea_esap_anchors *out);
EA_API void ea_esap_anchors_free(ea_esap_anchors *a);

/* The whole path from two loaded models to their anchors or spectra. Hidden representations read
 * text_path, tokenized by each model's own tokenizer (at most max_tokens tokens, 0 = all), run in
 * windows of ctx tokens (0 = min(n_positions, EA_ESAP_DEFAULT_CTX)). */
#define EA_ESAP_DEFAULT_CTX 256
typedef struct {
    ea_esap_repr repr;
    const char *text_path;
    size_t max_tokens;
    int ctx;
    ea_progress_fn progress; /* optional, in tokens of each model's text */
    void *progress_user;
} ea_esap_source;
EA_API ea_status ea_esap_anchors_from_models(ea_model *ma, const ea_tokenizer *ta, ea_model *mb, const ea_tokenizer *tb,
                                      const ea_esap_source *src, ea_esap_anchors *out);
/* Anchors paired by shared text (src/esap/text_pairs.c), for models whose tokenizers differ.
 * src->text_path is cut at whitespace into chunks of at most 3·ctx bytes; both models read each
 * chunk (its first ctx tokens) through their own tokenizer. A word (maximal run of non-whitespace
 * bytes, at most 64) is an anchor where both tokenizations cover it as one span: tokens starting
 * at the word or at the whitespace byte before it and ending where it ends. Its vector on each
 * side is the mean hidden state over its tokens, averaged over its covered occurrences; id_a[i] =
 * id_b[i] = i and span[i] is the word. Needs a hidden representation and byte-level tokenizers
 * (token bytes must rebuild the text: EA_ERR_UNSUPPORTED naming the model otherwise).
 * max_tokens > 0 stops after the chunk where model a's token count reaches it. */
EA_API ea_status ea_esap_text_anchors(ea_model *ma, const ea_tokenizer *ta, ea_model *mb, const ea_tokenizer *tb,
                               const ea_esap_source *src, ea_esap_anchors *out);
/* Spectrum message of one side (side_b: which layer of repr to use) at its site: the
 * covariance of the wte rows, or of the hidden states at every position of the text. K <= 0
 * means K = d. */
EA_API ea_status ea_esap_spectrum_from_model(ea_model *m, const ea_tokenizer *t, int side_b, const ea_esap_source *src, int K,
                                      ea_esap_spectrum *out);

#ifdef __cplusplus
}
#endif
#endif
