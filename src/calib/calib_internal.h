/* Calibration: what runs the model to fit or score KV codecs (not public API). */
#ifndef EA_CALIB_INTERNAL_H
#define EA_CALIB_INTERNAL_H

#include "ea/calib.h"
#include "kv/kv_internal.h"

/* Histograms of every coefficient of every part, in units of its standard deviation, on
 * calibration rows (kv_hist.c). */
ea_status ea_kv_hist_collect(ea_model *m, const int *ids, size_t n, int ctx, const ea_kv_stats *s, const ea_kv_metric *mt,
                             const ea_kv_klt_opts *o, ea_kv_hist *out, ea_progress_fn progress, void *progress_user);

/* Sensitivity of the model to coding errors in each part: with only part p (layer, kind) coded by
 * probe (a klt codec), the mean KL over the windows of ids divided by the probe's predicted
 * distortion of p. alpha: 2 × n_layer values. */
ea_status ea_kv_sensitivity(ea_model *m, const int *ids, size_t n, int ctx, const ea_kv_codec *probe, double *alpha,
                            ea_progress_fn progress, void *progress_user);

/* Sensitivities already measured, by probe spec (ea_kv_codec_fit fills and reuses it). */
struct ea_kv_sens_cache {
    int n;
    char spec[8][96];
    double *alpha[8];
    int n_hist; /* coefficient histograms already taken, by transform */
    ea_kv_hist hist[4];
};

/* Next-token scoring of one window against the exact model's logits (rows first-1..len-2):
 * base logits, base probabilities and log-sum-exps (from ea_kv_ref_prepare) and a codec's logits. */
void ea_kv_ref_prepare(const float *base, int first, int len, int V, float *prob, double *lse);
void ea_kv_score_window(ea_kv_score *acc, const float *base, const float *prob, const double *lse, const float *logits,
                        const int *ids, int first, int len, int V);

#endif
