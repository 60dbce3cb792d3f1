/* Comparing a codec's next-token distributions with the exact model's, window by window. */
#include <math.h>

#include "calib/calib_internal.h"

void ea_kv_ref_prepare(const float *base, int first, int len, int V, float *prob, double *lse) {
#pragma omp parallel for schedule(static)
    for (int t = first; t < len; t++) {
        size_t row = (size_t)(t - 1) * V;
        lse[t - 1] = ea_log_softmax(base + row, V, prob + row);
        for (int v = 0; v < V; v++) prob[row + v] = expf(prob[row + v]);
    }
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

void ea_kv_score_window(ea_kv_score *acc, const float *base, const float *prob, const double *lse, const float *logits,
                        const int *ids, int first, int len, int V) {
    double nll = 0, kl = 0;
    size_t top1 = 0;
#pragma omp parallel for reduction(+ : nll, kl, top1) schedule(static)
    for (int t = first; t < len; t++) {
        size_t row = (size_t)(t - 1) * V;
        const float *lc = logits + row, *lb = base + row, *p = prob + row;
        double lc_lse = ea_log_softmax(lc, V, NULL), s = 0;
        nll += lc_lse - lc[ids[t]];
        /* KL = Σ p_b (log p_b - log p_c) = Σ p_b (lb - lc) + lse_c - lse_b; the logit difference is
         * taken first so nearly equal distributions keep their precision */
        for (int v = 0; v < V; v++) s += (double)p[v] * ((double)lb[v] - (double)lc[v]);
        double k = s + lc_lse - lse[t - 1];
        /* KL >= 0: only a rounding-level negative (float probabilities) reads as 0; a larger
         * one is a bug and is kept so the reported KL shows it */
        kl += k < 0 && k > -EA_KL_ROUNDING ? 0 : k;
        top1 += argmax(lc, V) == argmax(lb, V);
    }
    acc->nll += nll;
    acc->kl += kl;
    acc->top1 += top1;
    acc->scored += (size_t)(len - first);
}
