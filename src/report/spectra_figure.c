/* Figure for `analyze`: per site kind, one C(k) panel per variant (a curve per layer, log k) and
 * one Df-per-layer panel (a line per variant, log Df), each with its null reference dashed. */
#include "ea/report.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ea/report.h"

static const char *variant_title(ea_variant v) {
    return v == EA_VARIANT_ALL ? "all tokens" : v == EA_VARIANT_EXCLUDE_FIRST ? "position 0 excluded" : "standardized";
}

static const char *variant_color(ea_variant v) {
    return v == EA_VARIANT_ALL ? "#1f77b4" : v == EA_VARIANT_EXCLUDE_FIRST ? "#ff7f0e" : "#2ca02c";
}

static void layer_label(int kind, int layer, int n_layer, char *buf, size_t n) {
    if (kind == EA_SITE_KIND_WTE) snprintf(buf, n, "wte");
    else if (kind == EA_SITE_HIDDEN && layer == 0) snprintf(buf, n, "L0 emb");
    else if (kind == EA_SITE_HIDDEN && layer == n_layer) snprintf(buf, n, "L%d ln_f", layer);
    else snprintf(buf, n, "L%d", layer);
}

/* C(k) for k = 1..d into y, k into x. */
static void cumvar_curve(const double *ev, int d, double *x, double *y) {
    double total = 0, part = 0;
    for (int i = 0; i < d; i++) total += ev[i];
    for (int k = 1; k <= d; k++) {
        part += ev[k - 1];
        x[k - 1] = k;
        y[k - 1] = total > 0 ? part / total : 0;
    }
}

/* One C(k) panel: every layer of (kind, variant), and the null curve for its n and d. */
static ea_status add_cumvar_panel(ea_svg *s, const ea_site_result *r, int n, int kind, ea_variant v, int n_layer) {
    int p, d = 0, count = 0;
    double nrows = 0;
    for (int i = 0; i < n; i++)
        if (r[i].kind == kind && r[i].variant == v && r[i].head < 0) {
            d = r[i].sum.d;
            nrows = r[i].sum.n;
            count++;
        }
    char title[96];
    if (kind == EA_SITE_KIND_WTE && count == 1) {
        for (int i = 0; i < n; i++)
            if (r[i].kind == kind && r[i].variant == v)
                snprintf(title, sizeof title, "wte, %s (Df %.1f)", variant_title(v), r[i].sum.df);
    } else {
        snprintf(title, sizeof title, "%s, %s", ea_site_kind_name(kind), variant_title(v));
    }
    ea_status st = ea_svg_panel(s, title, "k (components)", "C(k)", EA_SVG_LOG_X, &p);
    if (st || !count) return st;
    if ((st = ea_svg_panel_range(s, p, 1, d, 0, 1))) return st;
    double *x = malloc((size_t)d * sizeof(double)), *y = malloc((size_t)d * sizeof(double)),
           *ev = malloc((size_t)d * sizeof(double));
    if (!x || !y || !ev) {
        free(x);
        free(y);
        free(ev);
        return ea_error(EA_ERR_NOMEM, "figure: out of memory");
    }
    int li = 0;
    for (int i = 0; i < n && !st; i++) {
        if (r[i].kind != kind || r[i].variant != v || r[i].head >= 0) continue;
        char label[32], col[8];
        layer_label(kind, r[i].layer, n_layer, label, sizeof label);
        cumvar_curve(r[i].sum.eigenvalues, d, x, y);
        st = ea_svg_series(s, p, label, x, y, d, count > 1 ? ea_svg_ramp(li, count, col) : variant_color(v),
                           EA_SVG_SOLID, 0);
        li++;
    }
    if (!st && nrows >= 2) {
        st = ea_spectrum_null_spectrum(nrows > 2e9 ? 2000000000 : (int)nrows, d, ev);
        if (!st) {
            cumvar_curve(ev, d, x, y);
            st = ea_svg_series(s, p, "null", x, y, d, "#888888", EA_SVG_DASHED, 0);
        }
    }
    free(x);
    free(y);
    free(ev);
    return st;
}

/* Df per layer: a line per variant with markers, then the null Df (of the first variant) dashed. */
static ea_status add_df_panel(ea_svg *s, const ea_site_result *r, int n, int kind, unsigned variants) {
    int p, nm = 0;
    char title[64];
    snprintf(title, sizeof title, "%s: effective rank Df", ea_site_kind_name(kind));
    ea_status st = ea_svg_panel(s, title, "layer", "Df (log)", EA_SVG_LOG_Y | EA_SVG_INT_X, &p);
    double *x = malloc((size_t)(n + 1) * sizeof(double)), *y = malloc((size_t)(n + 1) * sizeof(double)),
           *nx = malloc((size_t)(n + 1) * sizeof(double)), *ny = malloc((size_t)(n + 1) * sizeof(double));
    if (!x || !y || !nx || !ny) st = st ? st : ea_error(EA_ERR_NOMEM, "figure: out of memory");
    for (int v = 0; v < EA_VARIANTS && !st; v++) {
        if (!(variants & (1u << v))) continue;
        int m = 0;
        for (int i = 0; i < n; i++)
            if (r[i].kind == kind && (int)r[i].variant == v && r[i].head < 0) {
                x[m] = r[i].layer;
                y[m] = r[i].sum.df;
                if (!nm) {
                    nx[m] = r[i].layer;
                    ny[m] = r[i].null_df;
                }
                m++;
            }
        if (!m) continue;
        if (!nm) nm = m;
        /* exclude_first often sits on top of all: dotted so both stay visible. */
        st = ea_svg_series(s, p, ea_variant_name((ea_variant)v), x, y, m, variant_color((ea_variant)v),
                           v == EA_VARIANT_EXCLUDE_FIRST ? EA_SVG_DOTTED : EA_SVG_SOLID, 1);
    }
    if (!st && nm) st = ea_svg_series(s, p, "null", nx, ny, nm, "#888888", EA_SVG_DASHED, 0);
    free(x);
    free(y);
    free(nx);
    free(ny);
    return st;
}

ea_status ea_spectra_figure_save(const char *path, const char *title, const ea_site_result *r, int n, int n_layer) {
    unsigned kinds = 0, variants = 0;
    for (int i = 0; i < n; i++) {
        kinds |= 1u << r[i].kind;
        variants |= 1u << r[i].variant;
    }
    int nv = 0;
    for (int v = 0; v < EA_VARIANTS; v++) nv += (variants >> v) & 1;
    ea_svg *s;
    ea_status st = ea_svg_init(&s, title, nv + 1, 380, 290);
    if (st) return st;
    for (int k = 0; k < EA_SITE_KINDS && !st; k++) {
        if (!(kinds & (1u << k))) continue;
        for (int v = 0; v < EA_VARIANTS && !st; v++) {
            if (!(variants & (1u << v))) continue;
            int have = 0, p;
            for (int i = 0; i < n; i++) have |= r[i].kind == k && (int)r[i].variant == v;
            st = have ? add_cumvar_panel(s, r, n, k, (ea_variant)v, n_layer)
                      : ea_svg_panel(s, NULL, NULL, NULL, EA_SVG_BLANK, &p);
        }
        if (st) break;
        if (k == EA_SITE_KIND_WTE) { /* one matrix: no per-layer line to draw */
            int p;
            st = ea_svg_panel(s, NULL, NULL, NULL, EA_SVG_BLANK, &p);
        } else {
            st = add_df_panel(s, r, n, k, variants);
        }
    }
    if (!st) st = ea_svg_save(s, path);
    ea_svg_free(s);
    return st;
}
