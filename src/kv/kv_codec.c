/* KV codec construction from a spec string, and the accounting every codec shares. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv/kv_internal.h"
#include "kv/kv_quant.h"

static ea_status check_stats(const char *spec, const ea_config *cfg, const ea_kv_stats *s) {
    if (!s) return ea_error(EA_ERR_ARG, "kv codec '%s': needs calibration statistics (a basis is fitted from them)", spec);
    if (s->n_layer != cfg->n_layer || s->d != ea_config_kv_dim(cfg))
        return ea_error(EA_ERR_MISMATCH, "kv codec '%s': statistics are for %d layers x %d dims, the model has %d x %d",
                        spec, s->n_layer, s->d, cfg->n_layer, cfg->n_embd);
    if (!(s->n >= 2) || !s->mean[0] || !s->mean[1] || !s->cov[0] || !s->cov[1])
        return ea_error(EA_ERR_ARG, "kv codec '%s': statistics are empty (%g tokens)", spec, s->n);
    return EA_OK;
}

/* "R" as a positive integer at most max. */
static ea_status parse_int(const char *spec, const char *p, int max, int *out) {
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (errno || end == p || *end || v < 1 || v > max)
        return ea_error(EA_ERR_ARG, "kv codec '%s': '%s' is not an integer in [1, %d]", spec, p, max);
    *out = (int)v;
    return EA_OK;
}

/* "B[:flags]" for klt: B in (0, 16]; flags (letters, any order) override the defaults (see
 * ea_kv_klt_default):
 * g per-layer basis, h per-head basis, s/S per-token scale on/off, l Lloyd-Max levels, u uniform,
 * p pooled allocation, b budget per layer and kind, f/F f32/f16 bases, i<n> int8
 * vectors for coefficients of at most n bits (i: all), w/m weighted metric / plain
 * squared error, k/v weight K/V only, r<x> metric regularisation x (default 1), z<x> position-0
 * step gain x, x/X position-0 row kept in f16 (the attention sink) or coded like the others. */
static ea_status parse_klt(const char *spec, const char *p, ea_kv_klt_opts *o) {
    char *end;
    errno = 0;
    double b = strtod(p, &end);
    if (errno || end == p || !isfinite(b) || b <= 0 || b > EA_KV_QBITS || (*end && *end != ':'))
        return ea_error(EA_ERR_ARG, "kv codec '%s': bit budget '%s' is not a number in (0, %d]", spec, p, EA_KV_QBITS);
    ea_kv_klt_default(o, b);
    if (*end == ':')
        for (const char *f = end + 1; *f; f++) switch (*f) {
            case 'i': { /* i<n>: int8 vectors for coefficients of at most n bits (i alone: all) */
                char *e2;
                long v = strtol(f + 1, &e2, 10);
                if (e2 == f + 1) v = EA_KV_QBITS;
                else if (v < 0 || v > EA_KV_QBITS)
                    return ea_error(EA_ERR_ARG, "kv codec '%s': flag i needs a bit count in [0, %d]", spec, EA_KV_QBITS);
                o->i8_bits = (int)v;
                f = e2 - 1;
                break;
            }
            case 'r':   /* r<x>: metric regularisation */
            case 'z': { /* z<x>: position-0 step gain */
                char *e2;
                double r = strtod(f + 1, &e2);
                if (e2 == f + 1 || !isfinite(r) || r < 0 || (*f == 'z' && r <= 0))
                    return ea_error(EA_ERR_ARG, "kv codec '%s': flag %c needs a %s number", spec, *f, *f == 'z' ? "positive" : "non-negative");
                if (*f == 'r') o->reg = r;
                else o->pos0_gain = r;
                f = e2 - 1;
                break;
            }
            case 'x': o->sink = 1; break;
            case 'X': o->sink = 0; break;
            case 'g': o->per_head = 0; break;
            case 'h': o->per_head = 1; break;
            case 's': o->token_scale = 1; break;
            case 'S': o->token_scale = 0; break;
            case 'l': o->lloyd = 1; break;
            case 'u': o->lloyd = 0; break;
            case 'p': o->pool = 1; break;
            case 'b': o->pool = 0; break;
            case 'f': o->f16_basis = 0; break;
            case 'F': o->f16_basis = 1; break;
            case 'w': o->weighted = 3; break;
            case 'k': o->weighted = 1; break;
            case 'v': o->weighted = 2; break;
            case 'm': o->weighted = 0; break;
            default: return ea_error(EA_ERR_ARG, "kv codec '%s': unknown klt flag '%c'", spec, *f);
            }
    return EA_OK;
}

ea_status ea_kv_klt_opts_from_spec(const char *spec, ea_kv_klt_opts *o) {
    if (!spec || strncmp(spec, "klt:", 4)) return ea_error(EA_ERR_ARG, "kv codec '%s': not a klt spec", spec ? spec : "");
    return parse_klt(spec, spec + 4, o);
}

ea_status ea_kv_codec_save(const ea_kv_codec *c, const char *path) {
    if (!ea_kv_is_klt(c))
        return ea_error(EA_ERR_ARG, "kv codec '%s': only klt codecs are saved (the others are rebuilt from their spec)", c ? c->name : "");
    return ea_kv_klt_save(c, path);
}

ea_status ea_kv_codec_load(const char *path, const ea_config *cfg, ea_kv_codec **out) {
    *out = NULL;
    ea_status st = ea_isa_tier(NULL); /* an EA_ISA this CPU cannot run is refused here */
    return st ? st : ea_kv_klt_load(path, cfg, out);
}

ea_status ea_kv_codec_load_embedded(const char *path, const char *spec, const ea_config *cfg, ea_kv_codec **out) {
    *out = NULL;
    ea_st_file *f = NULL;
    ea_status st = ea_st_open(path, &f);
    if (st) return st;
    const char *list = ea_st_metadata(f, "kv_codecs");
    int idx = -1, i = 0;
    for (const char *p = list; p && *p; i++) { /* "klt:1,klt:2": the i-th is under kv.<i>. */
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == strlen(spec) && !strncmp(p, spec, len)) {
            idx = i;
            break;
        }
        if (!e) break;
        p = e + 1;
    }
    if (idx >= 0) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, EA_KV_EMBED_PREFIX "%d.", idx);
        st = ea_kv_klt_read(f, prefix, cfg, out);
        if (!st && strcmp((*out)->name, spec)) {
            st = ea_error(EA_ERR_FORMAT, "%s: embedded kv codec %d is '%s', the list says '%s'", path, idx, (*out)->name, spec);
            ea_kv_codec_free(*out);
            *out = NULL;
        }
    }
    ea_st_close(f);
    return st;
}

/* A klt spec's sensitivity probe (calib/kv_sens.c: "klt:3:<flags>b") can be 2 characters
 * longer than the spec; both must fit in the codec's name, so the user's own spec is refused. */
#define SPEC_MAX ((int)sizeof(((ea_kv_codec *)0)->name) - 3)

ea_status ea_kv_codec_check_spec(const char *spec) { return ea_kv_codec_check_spec_for(spec, NULL); }

ea_status ea_kv_codec_check_spec_for(const char *spec, const ea_config *cfg) {
    /* the parsers are the real ones; with cfg, the model's bounds too */
    if (!spec || !*spec) return ea_error(EA_ERR_ARG, "kv codec: empty spec");
    if (!strncmp(spec, "file:", 5)) return spec[5] ? EA_OK : ea_error(EA_ERR_ARG, "kv codec '%s': needs a path", spec);
    if (strlen(spec) > (size_t)SPEC_MAX)
        return ea_error(EA_ERR_ARG, "kv codec '%s': spec too long (%zu characters, at most %d)", spec, strlen(spec),
                        SPEC_MAX);
    const char *colon = strchr(spec, ':');
    size_t nlen = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *known[] = {"f32", "f16", "q8", "q4", "pca", "pca-head", "klt"};
    int ok = 0;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) ok |= nlen == strlen(known[i]) && !strncmp(spec, known[i], nlen);
    if (!ok) return ea_error(EA_ERR_ARG, "kv codec '%s': unknown codec (f32, f16, q8, q4, pca:R, pca-head:R, klt:B)", spec);
    if (!colon) return (nlen == 3 && !strncmp(spec, "klt", 3)) || (nlen >= 3 && !strncmp(spec, "pca", 3))
                           ? ea_error(EA_ERR_ARG, "kv codec '%s': needs a parameter, e.g. %s:2", spec, spec)
                           : EA_OK;
    if (!strncmp(spec, "klt", 3)) {
        ea_kv_klt_opts o;
        return parse_klt(spec, colon + 1, &o);
    }
    if (!strncmp(spec, "pca", 3)) {
        int r, max = 1 << 20;
        if (cfg && ea_config_kv_dim(cfg) > 0 && ea_config_kv_heads(cfg) > 0)
            max = nlen == 3 ? ea_config_kv_dim(cfg) : ea_config_kv_dim(cfg) / ea_config_kv_heads(cfg);
        return parse_int(spec, colon + 1, max, &r);
    }
    return ea_error(EA_ERR_ARG, "kv codec '%s': takes no parameter", spec);
}

ea_status ea_kv_codec_create(const char *spec, const ea_config *cfg, const ea_kv_stats *stats, ea_kv_codec **out) {
    return ea_kv_codec_create_ex(spec, cfg, stats, NULL, out);
}

void ea_kv_metric_free(ea_kv_metric *mt) {
    if (!mt) return;
    for (int k = 0; k < 2; k++) {
        free(mt->m[k]);
        mt->m[k] = NULL;
    }
}

ea_status ea_kv_codec_create_ex(const char *spec, const ea_config *cfg, const ea_kv_stats *stats,
                                const ea_kv_metric *metric, ea_kv_codec **out) {
    *out = NULL;
    ea_status ist = ea_isa_tier(NULL); /* an EA_ISA this CPU cannot run is refused here */
    if (ist) return ist;
    if (!spec || !*spec) return ea_error(EA_ERR_ARG, "kv codec: empty spec");
    if (!strncmp(spec, "file:", 5) && cfg) return ea_kv_codec_load(spec + 5, cfg, out);
    if (strlen(spec) >= sizeof(((ea_kv_codec *)0)->name))
        return ea_error(EA_ERR_ARG, "kv codec '%s': spec too long (%zu characters, at most %d)", spec, strlen(spec),
                        SPEC_MAX);
    if (!cfg || cfg->n_layer < 1 || cfg->n_head < 1 || cfg->n_embd < 1 || ea_config_head_dim(cfg) < 1 ||
        ea_config_q_dim(cfg) % ea_config_head_dim(cfg) || cfg->n_head % ea_config_kv_heads(cfg))
        return ea_error(EA_ERR_ARG, "kv codec '%s': invalid model shape", spec);
    if (metric && (metric->n_layer != cfg->n_layer || metric->d != ea_config_kv_dim(cfg)))
        return ea_error(EA_ERR_MISMATCH, "kv codec '%s': distortion metric is for %d layers x %d dims, the model has %d x %d",
                        spec, metric->n_layer, metric->d, cfg->n_layer, ea_config_kv_dim(cfg));
    ea_kv_codec *c = calloc(1, sizeof *c);
    if (!c) return ea_error(EA_ERR_NOMEM, "kv codec '%s': out of memory", spec);
    snprintf(c->name, sizeof c->name, "%s", spec);
    c->n_layer = cfg->n_layer;
    c->n_head = ea_config_kv_heads(cfg); /* the cache holds KV heads (fewer than query heads with GQA) */
    c->d = ea_config_kv_dim(cfg);
    c->n_ctx = cfg->n_positions > 0 ? cfg->n_positions : 1;
    int hd = c->d / c->n_head, r = 0;
    const char *colon = strchr(spec, ':');
    size_t nlen = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *arg = colon ? colon + 1 : NULL;
#define IS(s) (nlen == strlen(s) && !strncmp(spec, s, nlen))
    ea_status st;
    if ((IS("f32") || IS("f16") || IS("q8") || IS("q4")) && arg)
        st = ea_error(EA_ERR_ARG, "kv codec '%s': takes no parameter", spec);
    else if (IS("f32")) st = ea_kv_f32_setup(c);
    else if (IS("f16")) st = ea_kv_f16_setup(c);
    else if (IS("q8")) st = ea_kv_q8_setup(c);
    else if (IS("q4")) st = ea_kv_q4_setup(c);
    else if (IS("pca") || IS("pca-head")) {
        int per_head = IS("pca-head");
        if (!arg) st = ea_error(EA_ERR_ARG, "kv codec '%s': needs a rank, e.g. %s:16", spec, per_head ? "pca-head" : "pca");
        else if (!(st = parse_int(spec, arg, per_head ? hd : c->d, &r)) && !(st = check_stats(spec, cfg, stats)))
            st = ea_kv_pca_setup(c, stats, r, per_head);
    } else if (IS("klt")) {
        ea_kv_klt_opts o;
        if (!arg) st = ea_error(EA_ERR_ARG, "kv codec '%s': needs a bit budget, e.g. klt:2", spec);
        else if (!(st = parse_klt(spec, arg, &o)) && !(st = check_stats(spec, cfg, stats)))
            st = ea_kv_klt_setup(c, stats, metric, &o);
    } else
        st = ea_error(EA_ERR_ARG, "kv codec '%s': unknown codec (f32, f16, q8, q4, pca:R, pca-head:R, klt:B)", spec);
#undef IS
    if (st) {
        ea_kv_codec_free(c);
        return st;
    }
    *out = c;
    return EA_OK;
}

void ea_kv_codec_free(ea_kv_codec *c) {
    if (!c) return;
    if (c->ops && c->ops->destroy) c->ops->destroy(c);
    free(c);
}

size_t ea_kv_codec_seq_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind) {
    return c->ops->seq_bytes ? c->ops->seq_bytes(c, layer, kind) : 0;
}

size_t ea_kv_codec_rows_stored(const ea_kv_codec *c, size_t ntok) {
    size_t br = c && c->block_rows > 1 ? (size_t)c->block_rows : 1;
    return (ntok + br - 1) / br * br;
}

size_t ea_kv_codec_buffer_bytes(const ea_kv_codec *c, int layer, ea_kv_kind kind, size_t ntok) {
    return ea_kv_codec_seq_bytes(c, layer, kind) + c->ops->row_bytes(c, layer, kind) * ea_kv_codec_rows_stored(c, ntok);
}

size_t ea_kv_codec_bytes(const ea_kv_codec *c, int ntok) {
    size_t b = 0;
    if (ntok > 0) ntok = (int)ea_kv_codec_rows_stored(c, (size_t)ntok);
    for (int l = 0; l < c->n_layer; l++)
        for (int k = 0; k < 2; k++)
            b += c->ops->row_bytes(c, l, (ea_kv_kind)k) * (size_t)ntok + ea_kv_codec_seq_bytes(c, l, (ea_kv_kind)k);
    return ntok > 0 ? b : 0;
}

double ea_kv_codec_bits_per_value(const ea_kv_codec *c) {
    double bytes = 0;
    for (int l = 0; l < c->n_layer; l++)
        for (int k = 0; k < 2; k++)
            bytes += (double)c->ops->row_bytes(c, l, (ea_kv_kind)k) * (double)ea_kv_codec_rows_stored(c, (size_t)c->n_ctx) +
                     (double)ea_kv_codec_seq_bytes(c, l, (ea_kv_kind)k);
    return bytes * 8.0 / (2.0 * c->n_layer * c->d * (double)c->n_ctx);
}

size_t ea_kv_codec_overhead(const ea_kv_codec *c) { return c->ops->overhead_bytes ? c->ops->overhead_bytes(c) : 0; }
size_t ea_kv_codec_resident(const ea_kv_codec *c) {
    return c->ops->resident_bytes ? c->ops->resident_bytes(c) : ea_kv_codec_overhead(c);
}

const char *ea_kv_codec_name(const ea_kv_codec *c) { return c->name; }
int ea_kv_codec_n_layer(const ea_kv_codec *c) { return c->n_layer; }
int ea_kv_codec_n_head(const ea_kv_codec *c) { return c->n_head; }
int ea_kv_codec_dim(const ea_kv_codec *c) { return c->d; }
