/* klt codec files: a fitted klt codec written and read back whole (safetensors), on its own or
 * under a name prefix inside a compressor file. */
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "ea/io.h"
#include "kv/kv_internal.h"
#include "kv/kv_klt.h"
#include "kv/kv_quant.h"

/* ---- klt codec files: a fitted codec, so it is fitted once and used anywhere ----
 * safetensors; metadata format/version/spec/shape; per part p: mean [d], w [n, d] (decode vectors
 * placed at their head's dims), enc [n, d], lohi [2, n_head], bits [n], sig [n], info [6] =
 * {shared, hdr, sink, prec, n_i8, n}, fl [2] = {pos0_gain, pred_mse} (F64), and one table q<b> per
 * width in use: 2^b levels, or [1] = the step of a uniform quantizer. Vectors are stored as the
 * float32 values of their stored precision (f16 or int8 × scale), so the file is larger than the
 * overhead the codec reports; the values are identical. */

#define PART_TENSOR(buf, p, what) snprintf(buf, sizeof buf, "%spart.%d.%s", prefix, p, what)

/* Metadata key or tensor name under a prefix ("" for a codec file of its own). */
static const char *prefixed(char *buf, size_t cap, const char *prefix, const char *key) {
    snprintf(buf, cap, "%s%s", prefix, key);
    return buf;
}

ea_status ea_kv_klt_write(const ea_kv_codec *c, ea_st_writer *w, const char *prefix) {
    const klt_state *ks = c->state;
    int d = c->d, H = c->n_head, hd = d / H, P = 2 * c->n_layer;
    ea_status st = EA_OK;
    char key[96], val[64];
    if (strlen(prefix) > 32) return ea_error(EA_ERR_ARG, "kv codec '%s': tensor prefix too long", c->name);
    if (!st) st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, "format"), "eigenalign-kv-codec");
    /* Version 2 ties the codec to the weights it was fitted on (issue 20 item 4). */
    if (!st) st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, "version"), "2");
    if (!st) st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, "model_fingerprint"), c->fingerprint);
    if (!st) st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, "spec"), c->name);
    int dims[4] = {c->n_layer, H, d, c->n_ctx};
    const char *dn[4] = {"n_layer", "n_head", "n_embd", "n_ctx"};
    for (int i = 0; i < 4 && !st; i++) {
        snprintf(val, sizeof val, "%d", dims[i]);
        st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, dn[i]), val);
    }
    snprintf(val, sizeof val, "%zu", ks->overhead);
    if (!st) st = ea_st_writer_meta(w, prefixed(key, sizeof key, prefix, "overhead_bytes"), val);
    float *buf = NULL;
    for (int p = 0; p < P && !st; p++) {
        const klt_part *kp = &ks->p[p];
        int n = kp->b.n_coef;
        free(buf);
        if (!(buf = calloc((size_t)(n > 0 ? n : 1) * d + 2 * (size_t)d + 16, sizeof(float)))) {
            st = ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", c->name);
            break;
        }
        int64_t sd[1] = {d}, snd[2] = {n, d}, sn[1] = {n}, slh[2] = {2, H}, s6[1] = {6}, s2[1] = {2};
        PART_TENSOR(key, p, "mean");
        st = ea_st_writer_add(w, key, EA_DTYPE_F32, 1, sd, kp->b.mean);
        int32_t lohi[2 * 64 + 2], info[6] = {kp->b.shared, kp->hdr, kp->sink, kp->b.prec, kp->b.n_i8, n};
        if (!st && H > 64) st = ea_error(EA_ERR_ARG, "kv codec '%s': more than 64 heads", c->name);
        for (int h = 0; h < H && !st; h++) {
            lohi[h] = kp->b.lo[h];
            lohi[H + h] = kp->b.hi[h];
        }
        PART_TENSOR(key, p, "lohi");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_I32, 2, slh, lohi);
        PART_TENSOR(key, p, "info");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_I32, 1, s6, info);
        double fl[2] = {kp->pos0_gain, kp->pred_mse};
        PART_TENSOR(key, p, "fl");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_F64, 1, s2, fl);
        if (n == 0) continue;
        for (int h = 0; h < H; h++)
            for (int j = kp->b.lo[h]; j < kp->b.hi[h]; j++)
                for (int i = 0; i < hd; i++) buf[(size_t)j * d + h * hd + i] = kp->b.w[h][(size_t)(j - kp->b.lo[h]) * hd + i];
        PART_TENSOR(key, p, "w");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_F32, 2, snd, buf);
        PART_TENSOR(key, p, "enc");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_F32, 2, snd, kp->b.enc);
        int32_t *bits = (int32_t *)(void *)buf; /* w is written (copied): reuse the buffer */
        for (int j = 0; j < n; j++) bits[j] = kp->bits[j];
        PART_TENSOR(key, p, "bits");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_I32, 1, sn, bits);
        PART_TENSOR(key, p, "sig");
        if (!st) st = ea_st_writer_add(w, key, EA_DTYPE_F32, 1, sn, kp->sig);
        for (int b = 1; b <= EA_KV_QBITS && !st; b++) {
            const ea_kv_quant *q = NULL;
            for (int j = 0; j < n && !q; j++)
                if (kp->bits[j] == b) q = kp->qz[j];
            if (!q) continue;
            snprintf(key, sizeof key, "%spart.%d.q%d", prefix, p, b);
            int64_t sq[1] = {q->uniform ? 1 : q->n};
            st = ea_st_writer_add(w, key, EA_DTYPE_F32, 1, sq, q->uniform ? &q->step : q->level);
        }
    }
    free(buf);
    return st;
}

ea_status ea_kv_klt_save(const ea_kv_codec *c, const char *path) {
    ea_st_writer *w = NULL;
    ea_status st = ea_st_writer_init(&w);
    if (!st) st = ea_kv_klt_write(c, w, "");
    if (!st) st = ea_st_writer_save(w, path);
    ea_st_writer_free(w);
    return st;
}

/* A tensor of a codec file with the expected dtype and shape (ndim values in shape). */
static ea_status file_tensor(const ea_st_file *f, const char *name, ea_dtype dt, int ndim, const int64_t *shape,
                             const ea_st_tensor **out) {
    const ea_st_tensor *t = ea_st_find(f, name);
    if (!t) return ea_error(EA_ERR_FORMAT, "%s: kv codec file has no tensor '%s'", ea_st_path(f), name);
    int ok = t->dtype == dt && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' has the wrong dtype or shape", ea_st_path(f), name);
    *out = t;
    return EA_OK;
}

/* Parameters of a real codec are far inside this; bounding them keeps every product of finite
 * rows with them finite (a file could otherwise hold 1e38 and overflow attention). */
#define FILE_MAX_ABS 1e6f

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(x[i]) <= FILE_MAX_ABS)) return 0; /* also NaN */
    return 1;
}

static ea_status load_part(const ea_st_file *f, const char *prefix, ea_kv_codec *c, klt_state *ks, int p) {
    const char *path = ea_st_path(f);
    int d = c->d, H = c->n_head, hd = d / H;
    klt_part *kp = &ks->p[p];
    char key[96];
    const ea_st_tensor *t;
    int64_t s6[1] = {6}, s2[1] = {2}, slh[2] = {2, H}, sd[1] = {d};
    ea_status st;
    PART_TENSOR(key, p, "info");
    if ((st = file_tensor(f, key, EA_DTYPE_I32, 1, s6, &t))) return st;
    int32_t info[6];
    memcpy(info, t->data, sizeof info);
    int n = info[5];
    if (info[0] < 0 || info[0] > 1 || (info[1] != 0 && info[1] != 2) || info[2] < 0 || info[2] > 1 || info[3] < 0 ||
        info[3] > 2 || n < 0 || n > d || info[4] < 0 || info[4] > n)
        return ea_error(EA_ERR_FORMAT, "%s: part %d: invalid info values", path, p);
    PART_TENSOR(key, p, "fl");
    if ((st = file_tensor(f, key, EA_DTYPE_F64, 1, s2, &t))) return st;
    double fl[2];
    memcpy(fl, t->data, sizeof fl);
    if (!(fl[0] >= 1e-6 && fl[0] <= FILE_MAX_ABS) || !isfinite(fl[1]) || fl[1] < 0)
        return ea_error(EA_ERR_FORMAT, "%s: part %d: invalid position-0 gain or predicted error", path, p);
    PART_TENSOR(key, p, "lohi");
    if ((st = file_tensor(f, key, EA_DTYPE_I32, 2, slh, &t))) return st;
    ea_kv_basis *b = &kp->b;
    b->d = d;
    b->n_head = H;
    b->hd = hd;
    b->n_coef = n;
    b->shared = info[0];
    b->prec = info[3];
    b->n_i8 = info[4];
    b->mean = malloc(sizeof(float) * (size_t)d);
    b->lo = calloc((size_t)H, sizeof(int));
    b->hi = calloc((size_t)H, sizeof(int));
    b->w = calloc((size_t)H, sizeof(float *));
    if (!b->mean || !b->lo || !b->hi || !b->w) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    for (int h = 0; h < H; h++) {
        int32_t lo, hi;
        memcpy(&lo, (const char *)t->data + 4 * (size_t)h, 4);
        memcpy(&hi, (const char *)t->data + 4 * (size_t)(H + h), 4);
        int ok = b->shared ? (lo == 0 && hi == n) : (lo == (h ? b->hi[h - 1] : 0) && hi >= lo && hi - lo <= hd && (h < H - 1 || hi == n));
        if (!ok) return ea_error(EA_ERR_FORMAT, "%s: part %d: invalid coefficient ranges of head %d", path, p, h);
        b->lo[h] = lo;
        b->hi[h] = hi;
    }
    PART_TENSOR(key, p, "mean");
    if ((st = file_tensor(f, key, EA_DTYPE_F32, 1, sd, &t))) return st;
    memcpy(b->mean, t->data, sizeof(float) * (size_t)d);
    if (!all_finite(b->mean, (size_t)d)) return ea_error(EA_ERR_FORMAT, "%s: part %d: mean not finite or out of range", path, p);
    kp->hdr = info[1];
    kp->sink = info[2];
    kp->pos0_gain = (float)fl[0];
    kp->pred_mse = fl[1];
    if (!ea_kv_klt_part_alloc(kp, n)) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    for (int h = 0; h < H; h++) {
        int nh = b->hi[h] - b->lo[h];
        if (!(b->w[h] = malloc(sizeof(float) * (size_t)(nh > 0 ? nh : 1) * hd))) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    }
    if (n > 0) {
        int64_t snd[2] = {n, d}, sn[1] = {n};
        PART_TENSOR(key, p, "w");
        if ((st = file_tensor(f, key, EA_DTYPE_F32, 2, snd, &t))) return st;
        const float *W = t->data;
        if (!all_finite(W, (size_t)n * d)) return ea_error(EA_ERR_FORMAT, "%s: part %d: basis not finite or out of range", path, p);
        for (int h = 0; h < H; h++)
            for (int j = b->lo[h]; j < b->hi[h]; j++)
                memcpy(b->w[h] + (size_t)(j - b->lo[h]) * hd, W + (size_t)j * d + h * hd, sizeof(float) * (size_t)hd);
        PART_TENSOR(key, p, "enc");
        if ((st = file_tensor(f, key, EA_DTYPE_F32, 2, snd, &t))) return st;
        if (!(b->enc = malloc(sizeof(float) * (size_t)n * d))) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
        memcpy(b->enc, t->data, sizeof(float) * (size_t)n * d);
        if (!all_finite(b->enc, (size_t)n * d)) return ea_error(EA_ERR_FORMAT, "%s: part %d: encoder not finite or out of range", path, p);
        PART_TENSOR(key, p, "sig");
        if ((st = file_tensor(f, key, EA_DTYPE_F32, 1, sn, &t))) return st;
        memcpy(kp->sig, t->data, sizeof(float) * (size_t)n);
        PART_TENSOR(key, p, "bits");
        if ((st = file_tensor(f, key, EA_DTYPE_I32, 1, sn, &t))) return st;
        for (int j = 0; j < n; j++) {
            int32_t bj;
            memcpy(&bj, (const char *)t->data + 4 * (size_t)j, 4);
            if (bj < 1 || bj > EA_KV_QBITS || !(kp->sig[j] > 0) || !(kp->sig[j] <= FILE_MAX_ABS))
                return ea_error(EA_ERR_FORMAT, "%s: part %d: coefficient %d has an invalid width or deviation", path, p, j);
            kp->bits[j] = (unsigned char)bj;
        }
    }
    for (int bw = 1; bw <= EA_KV_QBITS; bw++) { /* the tables of the widths in use */
        int used = 0;
        for (int j = 0; j < n; j++) used |= kp->bits[j] == bw;
        if (!used) continue;
        ea_kv_quant *q = &ks->pq[(size_t)p * (EA_KV_QBITS + 1) + bw];
        snprintf(key, sizeof key, "%spart.%d.q%d", prefix, p, bw);
        t = ea_st_find(f, key);
        int nl = 1 << bw;
        if (!t || t->dtype != EA_DTYPE_F32 || t->ndim != 1 || !(t->shape[0] == 1 || (t->shape[0] == nl && bw <= EA_KV_QTAB_BITS)))
            return ea_error(EA_ERR_FORMAT, "%s: part %d: missing or malformed level table for %d-bit codes", path, p, bw);
        memset(q, 0, sizeof *q);
        q->bits = bw;
        q->n = nl;
        q->uniform = t->shape[0] == 1;
        if (q->uniform) {
            memcpy(&q->step, t->data, sizeof(float));
            if (!(q->step > 0) || !(q->step <= FILE_MAX_ABS)) return ea_error(EA_ERR_FORMAT, "%s: part %d: invalid step for %d-bit codes", path, p, bw);
        } else {
            memcpy(q->level, t->data, sizeof(float) * (size_t)nl);
            for (int i = 0; i < nl; i++)
                if (!(fabsf(q->level[i]) <= FILE_MAX_ABS) || (i && !(q->level[i] > q->level[i - 1])))
                    return ea_error(EA_ERR_FORMAT, "%s: part %d: %d-bit levels are not bounded and ascending", path, p, bw);
            for (int i = 0; i < nl - 1; i++) q->thr[i] = 0.5f * (q->level[i] + q->level[i + 1]);
        }
        for (int j = 0; j < n; j++)
            if (kp->bits[j] == bw) kp->qz[j] = q;
    }
    return ea_kv_klt_part_finish(kp, c->name);
}

ea_status ea_kv_klt_read(const ea_st_file *f, const char *prefix, const ea_config *cfg, ea_kv_codec **out) {
    *out = NULL;
    const char *path = ea_st_path(f);
    char key[96];
    ea_status st = EA_OK;
    if (strlen(prefix) > 32) return ea_error(EA_ERR_ARG, "%s: kv codec tensor prefix too long", path);
    const char *fmt = ea_st_metadata(f, prefixed(key, sizeof key, prefix, "format"));
    const char *ver = ea_st_metadata(f, prefixed(key, sizeof key, prefix, "version"));
    const char *spec = ea_st_metadata(f, prefixed(key, sizeof key, prefix, "spec"));
    if (fmt && !strcmp(fmt, "eigenalign-kv-codec") && ver && strcmp(ver, "2"))
        return ea_error(EA_ERR_FORMAT, "%s: kv codec file version %.16s is not supported: version 2 records the model "
                        "fingerprint the codec was fitted on; refit it (eigenalign fit --kv, generate --save-kv)", path, ver);
    if (!fmt || strcmp(fmt, "eigenalign-kv-codec") || !ver || !spec || strncmp(spec, "klt:", 4) ||
        strlen(spec) >= sizeof(((ea_kv_codec *)0)->name))
        return ea_error(EA_ERR_FORMAT, "%s: not an eigenalign kv codec%s%s (version 2, klt)", path, *prefix ? " under " : " file",
                        prefix);
    const char *fp = ea_st_metadata(f, prefixed(key, sizeof key, prefix, "model_fingerprint"));
    if (!fp || strlen(fp) >= sizeof(((ea_kv_codec *)0)->fingerprint))
        return ea_error(EA_ERR_FORMAT, "%s: kv codec lacks a valid model_fingerprint", path);
    /* n_head and n_embd of the file are the cached rows' KV heads and width (fewer than the query
     * heads with GQA), as the codec was created */
    int dims[4] = {cfg->n_layer, ea_config_kv_heads(cfg), ea_config_kv_dim(cfg), cfg->n_positions};
    const char *dn[4] = {"n_layer", "n_head", "n_embd", "n_ctx"};
    for (int i = 0; i < 4; i++) {
        const char *v = ea_st_metadata(f, prefixed(key, sizeof key, prefix, dn[i]));
        if (!v || atol(v) != dims[i])
            return ea_error(EA_ERR_MISMATCH, "%s: codec was fitted for %s = %s, the model has %d", path, dn[i], v ? v : "?", dims[i]);
    }
    const char *ov = ea_st_metadata(f, prefixed(key, sizeof key, prefix, "overhead_bytes"));
    ea_kv_codec *c = calloc(1, sizeof *c);
    klt_state *ks = calloc(1, sizeof *ks);
    if (!c || !ks) {
        free(c);
        free(ks);
        return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(c->fingerprint, sizeof c->fingerprint, "%s", fp);
    snprintf(c->name, sizeof c->name, "%s", spec);
    c->n_layer = cfg->n_layer;
    c->n_head = ea_config_kv_heads(cfg);
    c->d = ea_config_kv_dim(cfg);
    c->n_ctx = cfg->n_positions;
    c->ops = &ea_kv_klt_ops;
    c->block_rows = EA_KV_KLT_BLOCK;
    c->state = ks;
    int P = 2 * c->n_layer;
    if ((st = ea_kv_klt_opts_from_spec(spec, &ks->o))) { /* the file's spec names the file's problem */
        char why[256];
        snprintf(why, sizeof why, "%s", ea_last_error()); /* ea_error writes the buffer it would read */
        st = ea_error(EA_ERR_FORMAT, "%s: invalid codec spec in the metadata: %s", path, why);
    }
    ks->overhead = ov ? (size_t)strtoull(ov, NULL, 10) : 0;
    ks->p = calloc((size_t)P, sizeof *ks->p);
    ks->pq = calloc((size_t)P * (EA_KV_QBITS + 1), sizeof *ks->pq);
    if (!st && (!ks->p || !ks->pq)) st = ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
    for (int b = 1; b <= EA_KV_QBITS && !st; b++) ks->q[b] = *ea_kv_quant_get(b, ks->o.lloyd);
    for (int p = 0; p < P && !st; p++) st = load_part(f, prefix, c, ks, p);
    for (int p = 1; p < P && !st; p++) /* attention reads K's and V's sink rows together */
        if (ks->p[p].sink != ks->p[0].sink) st = ea_error(EA_ERR_FORMAT, "%s: part %d: sink flag differs from part 0", path, p);
    if (st) {
        ea_kv_codec_free(c);
        return st;
    }
    *out = c;
    return EA_OK;
}

ea_status ea_kv_klt_load(const char *path, const ea_config *cfg, ea_kv_codec **out) {
    *out = NULL;
    ea_st_file *f = NULL;
    ea_status st = ea_st_open(path, &f);
    if (!st) st = ea_kv_klt_read(f, "", cfg, out);
    ea_st_close(f); /* after the message: it may quote the file's metadata */
    return st;
}
