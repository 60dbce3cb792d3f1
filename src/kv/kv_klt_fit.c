/* klt:B codec fitting: the transform of each part (the KLT in the codec's distortion metric), the
 * bit allocation by greedy reverse water-filling (per part or pooled over all parts, weighted by
 * measured sensitivities), level tables from measured coefficient histograms, and the codec built
 * from calibration statistics (ea_kv_klt_setup). The coded format is in kv_klt.h, the runtime in
 * kv_klt.c. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "ea/spectral.h"
#include "kv/kv_internal.h"
#include "kv/kv_klt.h"
#include "kv/kv_quant.h"

/* ---- bit allocation ---- */

/* One eigen-coefficient competing for bits. */
typedef struct {
    double gain_w;    /* weight × eigenvalue */
    int part, bits;
    const double *dm; /* distortion by width (unit variance), dm[0] = 1 */
} alloc_item;

/* Max-heap on the gain of the next bit. */
typedef struct {
    alloc_item *it;
    int *heap, n;
} alloc_heap;

/* Best distortion drop per bit over the next k >= 1 bits (measured curves need not be convex: a
 * bimodal coefficient gains little from its second bit and much from its third), k in *kbest. */
static double step_gain(const alloc_item *a, int kmax, int *kbest) {
    double best = -1;
    *kbest = 0;
    for (int k = 1; k <= kmax && a->bits + k <= EA_KV_QBITS; k++) {
        double g = a->gain_w * (a->dm[a->bits] - a->dm[a->bits + k]) / k;
        if (g > best * (1 + 1e-12)) {
            best = g;
            *kbest = k;
        }
    }
    return best;
}

static double next_gain(const alloc_heap *h, int i) {
    int k;
    return step_gain(&h->it[i], EA_KV_QBITS, &k);
}

static void sift_down(alloc_heap *h, int k) {
    for (;;) {
        int l = 2 * k + 1, r = l + 1, m = k;
        if (l < h->n && next_gain(h, h->heap[l]) > next_gain(h, h->heap[m])) m = l;
        if (r < h->n && next_gain(h, h->heap[r]) > next_gain(h, h->heap[m])) m = r;
        if (m == k) return;
        int t = h->heap[k];
        h->heap[k] = h->heap[m];
        h->heap[m] = t;
        k = m;
    }
}

/* Greedy allocation. items: n_items eigen-coefficients of n_parts parts; part p may use at most
 * cap_bits[p] code bits, and all parts together at most total_bytes whole bytes (each part's
 * codes rounded up to bytes). */
static void allocate(alloc_item *items, int n_items, const long *cap_bits, long *used, int n_parts, long total_bytes) {
    for (int i = 0; i < n_items; i++) items[i].bits = 0;
    alloc_heap h = {items, malloc(sizeof(int) * (size_t)n_items), n_items};
    for (int i = 0; i < n_items; i++) h.heap[i] = i;
    for (int k = n_items / 2 - 1; k >= 0; k--) sift_down(&h, k);
    memset(used, 0, sizeof(long) * (size_t)n_parts);
    long bytes = 0;
    while (h.n > 0) {
        int i = h.heap[0], k = 0;
        alloc_item *a = &items[i];
        long u = used[a->part], grow = 0;
        int fits = 0;
        for (int kmax = EA_KV_QBITS; kmax >= 1 && !fits; kmax = k - 1) { /* the best step that still fits */
            if (step_gain(a, kmax, &k) <= 0 || k == 0) break;
            grow = (u + k + 7) / 8 - (u + 7) / 8; /* new bytes the step opens */
            fits = u + k <= cap_bits[a->part] && bytes + grow <= total_bytes;
        }
        if (!fits) {
            h.heap[0] = h.heap[--h.n]; /* this coefficient can grow no further */
            sift_down(&h, 0);
            continue;
        }
        a->bits += k;
        used[a->part] += k;
        bytes += grow;
        sift_down(&h, 0);
    }
    free(h.heap);
}

static double round_f16d(double v) { return (double)ea_f16_to_f32(ea_f32_to_f16((float)v)); }

/* Transform of one part under the metric M cut to its per-head diagonal blocks
 * B_h = M_hh + εI (ε = reg·tr(M)/d; stored in f16, so computed from the rounded values). With
 * A = blockdiag(B_h^{1/2}), the KLT of A x has eigenvalues λ and vectors U: coefficient j is
 * y_j = (A u_j)·(x - mean) and x ≈ mean + Σ_j y_j A⁻¹u_j (column j of dec). Squared error in A x is
 * the metric's cost, so water-filling on λ minimises it. Encoding needs no vectors of its own:
 * A u_j = B (A⁻¹u_j), so y_j = dec_j·(B (x - mean)); the codec uses the least-squares form of this for
 * its rounded vectors (ea_kv_basis_set_encoder). Without a metric: the
 * plain KLT. */
static ea_status part_transform(const ea_kv_stats *s, const ea_kv_metric *mt, const ea_kv_klt_opts *o, int layer,
                                int kind, int n_head, double *evals, double *dec, double *blocks, int *weighted) {
    const double *M = (mt && (o->weighted >> kind & 1) && mt->m[kind]) ? mt->m[kind] + (size_t)layer * s->d * s->d : NULL;
    *weighted = M != NULL;
    if (!M) return ea_kv_eigen(s, layer, kind, o->per_head, n_head, evals, dec);
    int d = s->d, hd = d / n_head, groups = o->per_head ? n_head : 1, w = d / groups;
    size_t dd = (size_t)d * d, hh = (size_t)hd * hd;
    double *A = calloc(dd, sizeof(double)), *Ai = calloc(dd, sizeof(double)), *T = malloc(sizeof(double) * dd);
    double *C = malloc(sizeof(double) * (size_t)w * w), *U = malloc(sizeof(double) * (size_t)w * w);
    double *bv = malloc(sizeof(double) * hh), *bu = malloc(sizeof(double) * hh), *mu = malloc(sizeof(double) * hd);
    ea_status st = (!A || !Ai || !T || !C || !U || !bv || !bu || !mu) ? ea_error(EA_ERR_NOMEM, "kv codec: out of memory") : EA_OK;
    double tr = 0;
    for (int i = 0; i < d; i++) tr += M[(size_t)i * d + i];
    double eps = o->reg * (tr > 0 ? tr : 1) / d;
    for (int h = 0; h < n_head && !st; h++) { /* A, A⁻¹ block by block */
        double *B = blocks + (size_t)h * hh;
        for (int i = 0; i < hd; i++)
            for (int j = 0; j < hd; j++) B[(size_t)i * hd + j] = round_f16d(M[(size_t)(h * hd + i) * d + h * hd + j] + (i == j ? eps : 0));
        memcpy(bv, B, sizeof(double) * hh);
        if ((st = ea_eigh(bv, hd, mu, bu))) break;
        ea_kv_clamp_eigenvalues(mu, hd);
        for (int i = 0; i < hd; i++)
            for (int j = 0; j < hd; j++) {
                double x = 0, y = 0;
                for (int k = 0; k < hd; k++) {
                    double m = mu[k] > eps * 1e-3 ? mu[k] : eps * 1e-3, p = bu[(size_t)i * hd + k] * bu[(size_t)j * hd + k];
                    x += p * sqrt(m);
                    y += p / sqrt(m);
                }
                A[(size_t)(h * hd + i) * d + h * hd + j] = x;
                Ai[(size_t)(h * hd + i) * d + h * hd + j] = y;
            }
    }
    const double *cov = s->cov[kind] + (size_t)layer * dd;
    for (int g = 0; g < groups && !st; g++) {
        int o0 = g * w;
        for (int i = 0; i < w; i++) /* T = Σ A on the group (A is block-diagonal) */
            for (int j = 0; j < w; j++) {
                int jb = ((o0 + j) / hd) * hd;
                double x = 0;
                for (int l = jb; l < jb + hd; l++) x += cov[(size_t)(o0 + i) * d + l] * A[(size_t)l * d + o0 + j];
                T[(size_t)i * w + j] = x;
            }
        for (int i = 0; i < w; i++) /* C = A T */
            for (int j = 0; j < w; j++) {
                int ib = ((o0 + i) / hd) * hd;
                double x = 0;
                for (int k = ib; k < ib + hd; k++) x += A[(size_t)(o0 + i) * d + k] * T[(size_t)(k - o0) * w + j];
                C[(size_t)i * w + j] = x;
            }
        if ((st = ea_eigh(C, w, evals + o0, U))) break;
        ea_kv_clamp_eigenvalues(evals + o0, w);
        double *D = dec + (size_t)g * w * w;
        for (int i = 0; i < w; i++) /* dec = A⁻¹ U */
            for (int j = 0; j < w; j++) {
                int ib = ((o0 + i) / hd) * hd;
                double x = 0;
                for (int k = ib; k < ib + hd; k++) x += Ai[(size_t)(o0 + i) * d + k] * U[(size_t)(k - o0) * w + j];
                D[(size_t)i * w + j] = x;
            }
    }
    free(A);
    free(Ai);
    free(T);
    free(C);
    free(U);
    free(bv);
    free(bu);
    free(mu);
    return st;
}

ea_status ea_kv_klt_transform(const ea_kv_stats *s, const ea_kv_metric *mt, const ea_kv_klt_opts *o, int n_head, int layer,
                              int kind, float *enc, float *mean, float *sig) {
    int d = s->d, hd = d / n_head, groups = o->per_head ? n_head : 1, w = d / groups, weighted = 0;
    double *ev = malloc(sizeof(double) * (size_t)d), *dec = malloc(sizeof(double) * (size_t)groups * w * w);
    double *blocks = malloc(sizeof(double) * (size_t)n_head * hd * hd), *col = malloc(sizeof(double) * (size_t)d);
    ea_status st = (!ev || !dec || !blocks || !col) ? ea_error(EA_ERR_NOMEM, "kv codec: out of memory") : EA_OK;
    if (!st) st = part_transform(s, mt, o, layer, kind, n_head, ev, dec, blocks, &weighted);
    for (int g = 0; g < groups && !st; g++)
        for (int jj = 0; jj < w; jj++) {
            int j = g * w + jj;
            memset(col, 0, sizeof(double) * (size_t)d);
            for (int i = 0; i < w; i++) col[g * w + i] = dec[(size_t)g * w * w + (size_t)i * w + jj];
            ea_kv_basis_round_vec(col + g * w, w, o->f16_basis); /* as the basis stores it */
            float *e = enc + (size_t)j * d;
            for (int h = 0; h < n_head; h++) /* encoder: B_h w_j,h (B symmetric), or w_j itself */
                for (int i = 0; i < hd; i++) {
                    double a = 0;
                    if (weighted)
                        for (int k = 0; k < hd; k++) a += (double)(float)blocks[(size_t)h * hd * hd + (size_t)i * hd + k] * col[h * hd + k];
                    else
                        a = col[h * hd + i];
                    e[h * hd + i] = (float)a;
                }
            sig[j] = (float)sqrt(ev[j] > 0 ? ev[j] : 0);
        }
    for (int i = 0; i < d && !st; i++) {
        double m = s->mean[kind][(size_t)layer * d + i];
        mean[i] = o->f16_basis != EA_KV_PREC_F32 ? (float)round_f16d(m) : (float)m;
    }
    free(ev);
    free(dec);
    free(blocks);
    free(col);
    return st;
}

/* Measured level tables of part p for every width with tables: each fitted by Lloyd's algorithm on
 * the coefficients that width is given to (all of the part's coefficients for widths nobody has),
 * each coefficient's histogram weighted by what its error costs (weight × eigenvalue). */
static void fit_part_tables(klt_state *ks, const ea_kv_hist *h, const alloc_item *it, int p, int d, double *pool) {
    const double *hp = h->h + (size_t)p * d * h->nbins;
    ea_kv_quant *pq = ks->pq + (size_t)p * (EA_KV_QBITS + 1);
    for (int b = 1; b <= EA_KV_QBITS; b++) {
        if (b > EA_KV_QTAB_BITS) {
            pq[b] = ks->q[b];
            continue;
        }
        for (int pass = 0; pass < 2; pass++) {
            memset(pool, 0, sizeof(double) * (size_t)h->nbins);
            double any = 0;
            for (int j = 0; j < d; j++) {
                if (pass == 0 && it[j].bits != b) continue;
                const double *hj = hp + (size_t)j * h->nbins;
                double n = 0;
                for (int k = 0; k < h->nbins; k++) n += hj[k];
                if (!(n > 0) || !(it[j].gain_w > 0)) continue;
                double wgt = it[j].gain_w / n;
                for (int k = 0; k < h->nbins; k++) pool[k] += wgt * hj[k];
                any += wgt;
            }
            if (any > 0) break;
        }
        ea_kv_hist_lloyd(h, pool, &ks->q[b], &pq[b]);
    }
}

/* dm (d × (EA_KV_QBITS+1)): measured distortion of each coefficient of part p with each width. */
static void part_distortions(const klt_state *ks, const ea_kv_hist *h, int p, int d, double *dm) {
    const double *hp = h->h + (size_t)p * d * h->nbins;
    const ea_kv_quant *pq = ks->pq + (size_t)p * (EA_KV_QBITS + 1);
    for (int j = 0; j < d; j++) {
        const double *hj = hp + (size_t)j * h->nbins;
        double *dj = dm + (size_t)j * (EA_KV_QBITS + 1), n = 0, m2 = 0;
        for (int k = 0; k < h->nbins; k++) {
            double x = -h->lim + (k + 0.5) * (2.0 * h->lim / h->nbins);
            n += hj[k];
            m2 += hj[k] * x * x;
        }
        if (!(n > 0)) { /* never observed: keep the Gaussian curve */
            dj[0] = 1;
            for (int b = 1; b <= EA_KV_QBITS; b++) dj[b] = ks->q[b].mse;
            continue;
        }
        dj[0] = m2 / n;
        for (int b = 1; b <= EA_KV_QTAB_BITS; b++) dj[b] = ea_kv_hist_mse(h, hj, &pq[b]);
        for (int b = EA_KV_QTAB_BITS + 1; b <= EA_KV_QBITS; b++) /* uniform codes: the Gaussian slope from the last table */
            dj[b] = dj[EA_KV_QTAB_BITS] * ks->q[b].mse / ks->q[EA_KV_QTAB_BITS].mse;
        for (int b = 1; b <= EA_KV_QBITS; b++) /* more bits never hurt (binning noise aside) */
            if (dj[b] > dj[b - 1]) dj[b] = dj[b - 1];
    }
}

ea_status ea_kv_klt_setup(ea_kv_codec *c, const ea_kv_stats *s, const ea_kv_metric *mt, const ea_kv_klt_opts *o) {
    int d = c->d, L = c->n_layer, P = 2 * L, groups = o->per_head ? c->n_head : 1, w = d / groups;
    klt_state *ks = calloc(1, sizeof *ks);
    if (!ks) return ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
    c->ops = &ea_kv_klt_ops;
    c->block_rows = EA_KV_KLT_BLOCK;
    c->state = ks;
    ks->o = *o;
    double dmse[EA_KV_QBITS + 1];
    dmse[0] = 1.0;
    for (int b = 1; b <= EA_KV_QBITS; b++) {
        ks->q[b] = *ea_kv_quant_get(b, o->lloyd);
        dmse[b] = ks->q[b].mse;
    }
    ks->p = calloc((size_t)P, sizeof *ks->p);
    double *evals = malloc(sizeof(double) * (size_t)P * d), *evecs = malloc(sizeof(double) * (size_t)P * d * w);
    int hd = d / c->n_head;
    double *blocks = malloc(sizeof(double) * (size_t)P * c->n_head * hd * hd);
    int *weighted = calloc((size_t)P, sizeof(int));
    alloc_item *items = malloc(sizeof(alloc_item) * (size_t)P * d);
    long *cap = malloc(sizeof(long) * P), *used = malloc(sizeof(long) * P);
    unsigned char *keep = malloc((size_t)d);
    double *dm_all = NULL, *pool_buf = NULL;
    ea_status st = EA_OK;
    if (!ks->p || !evals || !evecs || !blocks || !weighted || !items || !cap || !used || !keep) {
        st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
        goto done;
    }
    for (int p = 0; p < P && !st; p++)
        st = part_transform(s, mt, o, p / 2, p % 2, c->n_head, evals + (size_t)p * d, evecs + (size_t)p * d * w,
                            blocks + (size_t)p * c->n_head * hd * hd, &weighted[p]);
    if (st) goto done;
    /* Pooling needs the measured sensitivities: distortions of different parts are not comparable. */
    int pool = o->pool && mt && mt->part_weight;
    /* Row budget: whole bytes, at most B bits per value, including the row gain. */
    long row_bytes_max = (long)floor(o->bits * d / 8.0 + 1e-9);
    int hdr = o->token_scale ? 2 : 0;
    for (int p = 0; p < P; p++) {
        cap[p] = 8 * (row_bytes_max - hdr);
        if (cap[p] < 0) cap[p] = 0;
        double wt = (p % 2) ? o->kv_ratio : 1.0;
        if (pool) wt = mt->part_weight[p] > 0 ? mt->part_weight[p] : 1e-30;
        for (int j = 0; j < d; j++) items[(size_t)p * d + j] = (alloc_item){wt * evals[(size_t)p * d + j], p, 0, dmse};
    }
    long total = 0;
    for (int p = 0; p < P; p++) total += cap[p] / 8;
    if (o->sink) /* the f16 sink rows, spread over a full context, come out of the same budget */
        total -= (long)((2 * (size_t)P * d + (size_t)c->n_ctx - 1) / (size_t)c->n_ctx);
    if (total < 0) total = 0;
    if (pool) /* any layer or kind may take up to the widest code per value; the sum stays within budget */
        for (int p = 0; p < P; p++) cap[p] = (long)EA_KV_QBITS * d;
    allocate(items, P * d, cap, used, P, total);
    const ea_kv_hist *hist = mt && mt->hist && ea_kv_hist_matches(mt->hist, o) && mt->hist->n_part == P && mt->hist->d == d
                                 ? mt->hist : NULL;
    if (hist) { /* measured tables and distortions, then the allocation again on those */
        ks->pq = calloc((size_t)P * (EA_KV_QBITS + 1), sizeof *ks->pq);
        dm_all = malloc(sizeof(double) * (size_t)P * d * (EA_KV_QBITS + 1));
        pool_buf = malloc(sizeof(double) * (size_t)hist->nbins);
        if (!ks->pq || !dm_all || !pool_buf) {
            st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
            goto done;
        }
        for (int round = 0; round < 2; round++) {
            for (int p = 0; p < P; p++) {
                fit_part_tables(ks, hist, items + (size_t)p * d, p, d, pool_buf);
                part_distortions(ks, hist, p, d, dm_all + (size_t)p * d * (EA_KV_QBITS + 1));
                for (int j = 0; j < d; j++) items[(size_t)p * d + j].dm = dm_all + ((size_t)p * d + j) * (EA_KV_QBITS + 1);
            }
            allocate(items, P * d, cap, used, P, total);
        }
        for (int p = 0; p < P; p++) { /* tables for the final widths */
            fit_part_tables(ks, hist, items + (size_t)p * d, p, d, pool_buf);
            part_distortions(ks, hist, p, d, dm_all + (size_t)p * d * (EA_KV_QBITS + 1));
        }
    }
    size_t over = 0;
    if (!hist)
        for (int b = 1; b <= EA_KV_QBITS; b++) /* level tables, or one step per width */
            over += sizeof(float) * (ks->q[b].uniform ? 1 : (size_t)(1 << b));
    for (int p = 0; p < P && !st; p++) {
        klt_part *kp = &ks->p[p];
        const alloc_item *it = items + (size_t)p * d;
        const double *ev = evals + (size_t)p * d;
        for (int j = 0; j < d; j++) keep[j] = it[j].bits == 0 ? 0 : it[j].bits <= o->i8_bits ? 2 : 1;
        if ((st = ea_kv_basis_build(&kp->b, s, p / 2, p % 2, c->n_head, o->per_head, evecs + (size_t)p * d * w, keep,
                                    o->f16_basis)))
            break;
        if ((st = ea_kv_basis_set_encoder(&kp->b, weighted[p] ? blocks + (size_t)p * c->n_head * hd * hd : NULL))) break;
        int n = kp->b.n_coef;
        if (!ea_kv_klt_part_alloc(kp, n)) {
            st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
            break;
        }
        double pred = 0;
        for (int j = 0, k = 0; j < d; j++) { /* basis order = group order, eigenvalue order within */
            pred += ev[j] * it[j].dm[it[j].bits];
            if (!it[j].bits) continue;
            kp->bits[k] = (unsigned char)it[j].bits;
            kp->sig[k] = (float)sqrt(ev[j] > 0 ? ev[j] : 0);
            if (!(kp->sig[k] > 0)) kp->sig[k] = 1e-30f;
            kp->qz[k] = hist ? &ks->pq[(size_t)p * (EA_KV_QBITS + 1) + it[j].bits] : &ks->q[it[j].bits];
            k++;
        }
        kp->hdr = hdr;
        kp->pos0_gain = (float)o->pos0_gain;
        kp->sink = o->sink;
        kp->pred_mse = pred;
        if ((st = ea_kv_klt_part_finish(kp, c->name))) break;
        /* stored: means and decode vectors, width and σ per coefficient, the metric blocks (f16, one
         * triangle each) the encoder is derived from */
        over += ea_kv_basis_bytes(&kp->b) + (size_t)n * (1 + sizeof(float));
        if (hist) /* this part's measured tables of the widths it uses, f16 levels */
            for (int b = 1; b <= EA_KV_QTAB_BITS; b++) {
                int used_b = 0;
                for (int j = 0; j < n; j++) used_b |= kp->bits[j] == b;
                if (used_b) over += sizeof(uint16_t) * (size_t)(1 << b);
            }
        if (weighted[p]) over += (size_t)c->n_head * hd * (hd + 1) / 2 * 2;
    }
    ks->overhead = over;
done:
    free(dm_all);
    free(pool_buf);
    free(evals);
    free(evecs);
    free(blocks);
    free(weighted);
    free(items);
    free(cap);
    free(used);
    free(keep);
    return st;
}

