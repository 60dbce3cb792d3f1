/* Quantizers fitted to measured coefficient histograms (the histograms themselves are taken by
 * running the model, calib/kv_hist.c): the squared error of a quantizer on a histogram and Lloyd's
 * algorithm on it, which give the klt codec its level tables and distortion-rate curves. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kv/kv_internal.h"
#include "kv/kv_quant.h"

void ea_kv_hist_free(ea_kv_hist *h) {
    if (!h) return;
    free(h->h);
    free(h->enc);
    free(h->mean);
    free(h->sig);
    memset(h, 0, sizeof *h);
}

int ea_kv_hist_matches(const ea_kv_hist *h, const ea_kv_klt_opts *o) {
    return h && h->h && h->key.per_head == o->per_head && h->key.weighted == o->weighted && h->key.reg == o->reg &&
           h->key.f16_basis == o->f16_basis && h->skip_sink == o->sink && !o->token_scale && o->lloyd;
}

static double bin_x(const ea_kv_hist *h, int k) { return -h->lim + (k + 0.5) * (2.0 * h->lim / h->nbins); }

double ea_kv_hist_mse(const ea_kv_hist *h, const double *w, const ea_kv_quant *q) {
    double se = 0, n = 0;
    int c = 0;
    for (int k = 0; k < h->nbins; k++) {
        if (w[k] == 0) continue;
        double x = bin_x(h, k);
        while (c < q->n - 1 && x >= q->thr[c]) c++;
        while (c > 0 && x < q->thr[c - 1]) c--;
        double e = x - q->level[c];
        se += w[k] * e * e;
        n += w[k];
    }
    return n > 0 ? se / n : 0;
}

void ea_kv_hist_lloyd(const ea_kv_hist *h, const double *w, const ea_kv_quant *init, ea_kv_quant *q) {
    *q = *init;
    if (init->bits > EA_KV_QTAB_BITS) return; /* wide codes stay uniform */
    double tot = 0;
    for (int k = 0; k < h->nbins; k++) tot += w[k];
    if (!(tot > 0)) return;
    double lv[EA_KV_QMAX], sw[EA_KV_QMAX], sx[EA_KV_QMAX];
    for (int i = 0; i < q->n; i++) lv[i] = init->level[i];
    for (int it = 0; it < 300; it++) {
        memset(sw, 0, sizeof(double) * (size_t)q->n);
        memset(sx, 0, sizeof(double) * (size_t)q->n);
        int c = 0;
        for (int k = 0; k < h->nbins; k++) {
            if (w[k] == 0) continue;
            double x = bin_x(h, k);
            while (c < q->n - 1 && x >= 0.5 * (lv[c] + lv[c + 1])) c++;
            sw[c] += w[k];
            sx[c] += w[k] * x;
        }
        double moved = 0;
        for (int i = 0; i < q->n; i++)
            if (sw[i] > 0) {
                double y = sx[i] / sw[i];
                moved = fmax(moved, fabs(y - lv[i]));
                lv[i] = y;
            }
        for (int i = 1; i < q->n; i++) /* keep the levels strictly ascending (empty cells) */
            if (lv[i] <= lv[i - 1]) lv[i] = lv[i - 1] + 1e-6;
        if (moved < 1e-7) break;
    }
    for (int i = 0; i < q->n; i++) q->level[i] = ea_f16_to_f32(ea_f32_to_f16((float)lv[i])); /* stored in f16 */
    for (int i = 0; i < q->n - 1; i++) q->thr[i] = 0.5f * (q->level[i] + q->level[i + 1]);
    q->uniform = 0;
    q->mse = ea_kv_hist_mse(h, w, q);
}
