/* SVG line charts: grid of panels, axes with "nice" ticks, log scales, legends. See svg.h. */
#include "ea/report.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *label, *color;
    double *x, *y;
    int n;
    ea_svg_dash dash;
    int markers;
} svg_series;

typedef struct {
    char *title, *xlabel, *ylabel;
    unsigned flags;
    double fix[4]; /* xmin xmax ymin ymax, NaN = automatic */
    svg_series *s;
    int ns;
} svg_panel;

struct ea_svg {
    char *title;
    int cols;
    double pw, ph;
    svg_panel *p;
    int np;
};

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

ea_status ea_svg_init(ea_svg **out, const char *title, int cols, double panel_w, double panel_h) {
    *out = NULL;
    if (cols < 1 || !(panel_w >= 120) || !(panel_h >= 100))
        return ea_error(EA_ERR_ARG, "ea_svg_init: %d columns of %gx%g px is not a usable layout", cols, panel_w,
                        panel_h);
    ea_svg *s = calloc(1, sizeof *s);
    if (!s || (title && !(s->title = strdup(title)))) {
        free(s);
        return ea_error(EA_ERR_NOMEM, "ea_svg_init: out of memory");
    }
    s->cols = cols;
    s->pw = panel_w;
    s->ph = panel_h;
    *out = s;
    return EA_OK;
}

void ea_svg_free(ea_svg *s) {
    if (!s) return;
    for (int i = 0; i < s->np; i++) {
        svg_panel *p = &s->p[i];
        for (int j = 0; j < p->ns; j++) {
            free(p->s[j].label);
            free(p->s[j].color);
            free(p->s[j].x);
            free(p->s[j].y);
        }
        free(p->s);
        free(p->title);
        free(p->xlabel);
        free(p->ylabel);
    }
    free(s->p);
    free(s->title);
    free(s);
}

ea_status ea_svg_panel(ea_svg *s, const char *title, const char *xlabel, const char *ylabel, unsigned flags,
                       int *panel) {
    svg_panel *np = realloc(s->p, (size_t)(s->np + 1) * sizeof *np);
    if (!np) return ea_error(EA_ERR_NOMEM, "ea_svg_panel: out of memory");
    s->p = np;
    svg_panel *p = &s->p[s->np];
    memset(p, 0, sizeof *p);
    p->flags = flags;
    for (int i = 0; i < 4; i++) p->fix[i] = NAN;
    p->title = dup_or_null(title);
    p->xlabel = dup_or_null(xlabel);
    p->ylabel = dup_or_null(ylabel);
    if ((title && !p->title) || (xlabel && !p->xlabel) || (ylabel && !p->ylabel)) {
        free(p->title);
        free(p->xlabel);
        free(p->ylabel);
        return ea_error(EA_ERR_NOMEM, "ea_svg_panel: out of memory");
    }
    *panel = s->np++;
    return EA_OK;
}

ea_status ea_svg_panel_range(ea_svg *s, int panel, double xmin, double xmax, double ymin, double ymax) {
    if (panel < 0 || panel >= s->np) return ea_error(EA_ERR_ARG, "ea_svg_panel_range: no panel %d", panel);
    double v[4] = {xmin, xmax, ymin, ymax};
    memcpy(s->p[panel].fix, v, sizeof v);
    return EA_OK;
}

ea_status ea_svg_series(ea_svg *s, int panel, const char *label, const double *x, const double *y, int n,
                        const char *color, ea_svg_dash dash, int markers) {
    if (panel < 0 || panel >= s->np) return ea_error(EA_ERR_ARG, "ea_svg_series: no panel %d", panel);
    if (n < 0 || (n > 0 && (!x || !y))) return ea_error(EA_ERR_ARG, "ea_svg_series: %d points without data", n);
    svg_panel *p = &s->p[panel];
    svg_series *ns = realloc(p->s, (size_t)(p->ns + 1) * sizeof *ns);
    if (!ns) return ea_error(EA_ERR_NOMEM, "ea_svg_series: out of memory");
    p->s = ns;
    svg_series *e = &p->s[p->ns];
    memset(e, 0, sizeof *e);
    size_t bytes = (size_t)(n ? n : 1) * sizeof(double);
    e->x = malloc(bytes);
    e->y = malloc(bytes);
    e->label = dup_or_null(label);
    e->color = dup_or_null(color);
    if (!e->x || !e->y || (label && !e->label) || (color && !e->color)) {
        free(e->x);
        free(e->y);
        free(e->label);
        free(e->color);
        return ea_error(EA_ERR_NOMEM, "ea_svg_series: out of memory");
    }
    if (n) {
        memcpy(e->x, x, (size_t)n * sizeof(double));
        memcpy(e->y, y, (size_t)n * sizeof(double));
    }
    e->n = n;
    e->dash = dash;
    e->markers = markers;
    p->ns++;
    return EA_OK;
}

const char *ea_svg_ramp(int i, int n, char buf[8]) {
    /* Viridis sampled at 9 stops, linearly interpolated: perceptually ordered, readable in grey. */
    static const unsigned char stops[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},
                                              {44, 113, 142}, {33, 144, 141}, {39, 173, 129},
                                              {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
    double t = n > 1 ? (double)i / (n - 1) : 0.0;
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    t *= 0.92; /* the last yellow is too pale on white */
    double pos = t * 8;
    int k = (int)pos;
    if (k > 7) k = 7;
    double f = pos - k;
    int rgb[3];
    for (int c = 0; c < 3; c++) rgb[c] = (int)lround(stops[k][c] + f * (stops[k + 1][c] - stops[k][c]));
    snprintf(buf, 8, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
    return buf;
}

/* ---- rendering ---- */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap <= b->n + (size_t)k) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

/* Text content and attribute values: escape the five XML specials. */
static void sb_text(sbuf *b, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '&': sb_printf(b, "&amp;"); break;
        case '<': sb_printf(b, "&lt;"); break;
        case '>': sb_printf(b, "&gt;"); break;
        case '"': sb_printf(b, "&quot;"); break;
        case '\'': sb_printf(b, "&apos;"); break;
        default: sb_printf(b, "%c", *s);
        }
    }
}

typedef struct {
    double lo, hi; /* axis range in data units */
    int log;
    double ticks[64];
    int nt;
} svg_axis;

static double nice_step(double span, int target) {
    double raw = span / target, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

/* Range from data (or the fixed ends), rounded out to ticks. */
static void axis_build(svg_axis *a, double dmin, double dmax, double fixlo, double fixhi, int log, int integer) {
    a->log = log;
    a->nt = 0;
    if (!isnan(fixlo)) dmin = fixlo;
    if (!isnan(fixhi)) dmax = fixhi;
    if (!(dmin <= dmax)) { /* no data */
        dmin = log ? 1 : 0;
        dmax = log ? 10 : 1;
    }
    if (log) {
        if (dmin == dmax) {
            dmin /= 3;
            dmax *= 3;
        }
        double e0 = floor(log10(dmin) + 1e-9), e1 = ceil(log10(dmax) - 1e-9);
        if (e1 <= e0) e1 = e0 + 1;
        a->lo = isnan(fixlo) ? pow(10, e0) : dmin;
        a->hi = isnan(fixhi) ? pow(10, e1) : dmax;
        int decades = (int)(e1 - e0);
        static const double sub[3] = {1, 2, 5};
        for (double e = e0; e <= e1 && a->nt < 64; e++)
            for (int k = 0; k < (decades <= 2 ? 3 : 1) && a->nt < 64; k++) {
                double v = sub[k] * pow(10, e);
                if (v >= a->lo * (1 - 1e-9) && v <= a->hi * (1 + 1e-9)) a->ticks[a->nt++] = v;
            }
        return;
    }
    if (dmin == dmax) {
        double pad = dmin != 0 ? fabs(dmin) * 0.1 : 1;
        dmin -= pad;
        dmax += pad;
    }
    double step = nice_step(dmax - dmin, 5);
    if (integer && step < 1) step = 1;
    a->lo = isnan(fixlo) ? floor(dmin / step + 1e-9) * step : dmin;
    a->hi = isnan(fixhi) ? ceil(dmax / step - 1e-9) * step : dmax;
    for (double i = ceil(a->lo / step - 1e-9); a->nt < 64; i++) {
        double v = i * step;
        if (v > a->hi + step * 1e-9) break;
        a->ticks[a->nt++] = fabs(v) < step * 1e-9 ? 0 : v;
    }
}

static double axis_frac(const svg_axis *a, double v) {
    if (a->log) return (log10(v) - log10(a->lo)) / (log10(a->hi) - log10(a->lo));
    return (v - a->lo) / (a->hi - a->lo);
}

static int point_ok(double v, int log) { return isfinite(v) && (!log || v > 0); }

static const char *dash_attr(ea_svg_dash d) {
    return d == EA_SVG_DASHED ? " stroke-dasharray=\"6,4\"" : d == EA_SVG_DOTTED ? " stroke-dasharray=\"2,3\"" : "";
}

static void render_panel(sbuf *b, const ea_svg *s, int idx, double ox, double oy) {
    static const char *palette[10] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
    const svg_panel *p = &s->p[idx];
    if (p->flags & EA_SVG_BLANK) return;
    int logx = (p->flags & EA_SVG_LOG_X) != 0, logy = (p->flags & EA_SVG_LOG_Y) != 0;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    size_t maxlab = 0;
    int nlab = 0;
    for (int j = 0; j < p->ns; j++) {
        const svg_series *e = &p->s[j];
        for (int i = 0; i < e->n; i++) {
            if (!point_ok(e->x[i], logx) || !point_ok(e->y[i], logy)) continue;
            xmin = fmin(xmin, e->x[i]);
            xmax = fmax(xmax, e->x[i]);
            ymin = fmin(ymin, e->y[i]);
            ymax = fmax(ymax, e->y[i]);
        }
        if (e->label) {
            nlab++;
            if (strlen(e->label) > maxlab) maxlab = strlen(e->label);
        }
    }
    svg_axis ax, ay;
    axis_build(&ax, xmin, xmax, p->fix[0], p->fix[1], logx, (p->flags & EA_SVG_INT_X) != 0);
    axis_build(&ay, ymin, ymax, p->fix[2], p->fix[3], logy, 0);
    /* Legend on the right, sized to the longest label (≈6 px a character at 10 px). */
    double legend_w = nlab ? fmin(fmax(40.0 + 6.0 * (double)maxlab, 70.0), s->pw * 0.4) : 0;
    double L = ox + 62, R = ox + s->pw - 12 - legend_w, T = oy + 30, B = oy + s->ph - 42;
    double W = R - L, H = B - T;
    sb_printf(b, "<g class=\"panel\">\n");
    if (p->title) {
        sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">",
                  (L + R) / 2, oy + 18);
        sb_text(b, p->title);
        sb_printf(b, "</text>\n");
    }
    sb_printf(b, "<clipPath id=\"clip%d\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/></clipPath>\n", idx,
              L, T, W, H);
    /* Grid and ticks. */
    for (int i = 0; i < ax.nt; i++) {
        double X = L + axis_frac(&ax, ax.ticks[i]) * W;
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n", X, T, X, B);
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>\n", X, B, X, B + 4);
        sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\">%.4g</text>\n", X, B + 15,
                  ax.ticks[i]);
    }
    for (int i = 0; i < ay.nt; i++) {
        double Y = B - axis_frac(&ay, ay.ticks[i]) * H;
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n", L, Y, R, Y);
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>\n", L - 4, Y, L, Y);
        sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"10\">%.4g</text>\n", L - 6, Y + 3.5,
                  ay.ticks[i]);
    }
    sb_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", L, T, W,
              H);
    if (p->xlabel) {
        sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">", (L + R) / 2, B + 32);
        sb_text(b, p->xlabel);
        sb_printf(b, "</text>\n");
    }
    if (p->ylabel) {
        sb_printf(b, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\" font-size=\"11\">",
                  ox + 14, (T + B) / 2);
        sb_text(b, p->ylabel);
        sb_printf(b, "</text>\n");
    }
    /* Series: one path each, broken at skipped points. */
    int lab_i = 0;
    double lh = 13, ly0 = T + 8;
    int lab_room = (int)((B - ly0) / lh);
    for (int j = 0; j < p->ns; j++) {
        const svg_series *e = &p->s[j];
        const char *col = e->color ? e->color : palette[j % 10];
        sb_printf(b, "<path clip-path=\"url(#clip%d)\" fill=\"none\" stroke=\"", idx);
        sb_text(b, col);
        sb_printf(b, "\" stroke-width=\"1.6\"%s d=\"", dash_attr(e->dash));
        int pen = 0;
        for (int i = 0; i < e->n; i++) {
            if (!point_ok(e->x[i], logx) || !point_ok(e->y[i], logy)) {
                pen = 0;
                continue;
            }
            sb_printf(b, "%c%.2f %.2f ", pen ? 'L' : 'M', L + axis_frac(&ax, e->x[i]) * W,
                      B - axis_frac(&ay, e->y[i]) * H);
            pen = 1;
        }
        sb_printf(b, "\"/>\n");
        if (e->markers)
            for (int i = 0; i < e->n; i++) {
                if (!point_ok(e->x[i], logx) || !point_ok(e->y[i], logy)) continue;
                sb_printf(b, "<circle clip-path=\"url(#clip%d)\" cx=\"%.2f\" cy=\"%.2f\" r=\"2.5\" fill=\"", idx,
                          L + axis_frac(&ax, e->x[i]) * W, B - axis_frac(&ay, e->y[i]) * H);
                sb_text(b, col);
                sb_printf(b, "\"/>\n");
            }
        if (!e->label) continue;
        /* Legend entry, or one "+k more" line when the panel is full. */
        if (lab_i < lab_room - 1 || (lab_i == lab_room - 1 && nlab == lab_room)) {
            double y = ly0 + lab_i * lh, x = R + 10;
            sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"", x, y, x + 20, y);
            sb_text(b, col);
            sb_printf(b, "\" stroke-width=\"2\"%s/>\n", dash_attr(e->dash));
            sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">", x + 25, y + 3.5);
            sb_text(b, e->label);
            sb_printf(b, "</text>\n");
        } else if (lab_i == lab_room - 1) {
            sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">(+%d more)</text>\n", R + 10,
                      ly0 + lab_i * lh + 3.5, nlab - lab_i);
        }
        lab_i++;
    }
    sb_printf(b, "</g>\n");
}

ea_status ea_svg_render(const ea_svg *s, char **out, size_t *len) {
    *out = NULL;
    if (len) *len = 0;
    int cols = s->np < s->cols ? (s->np ? s->np : 1) : s->cols;
    int rows = s->np ? (s->np + cols - 1) / cols : 1;
    double top = s->title ? 34 : 0, width = cols * s->pw, height = top + rows * s->ph;
    sbuf b = {0};
    sb_printf(&b,
              "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
              "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
              "font-family=\"Helvetica, Arial, sans-serif\">\n"
              "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
              width, height, width, height);
    if (s->title) {
        sb_printf(&b, "<text x=\"%.1f\" y=\"22\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">",
                  width / 2);
        sb_text(&b, s->title);
        sb_printf(&b, "</text>\n");
    }
    for (int i = 0; i < s->np; i++) render_panel(&b, s, i, (i % cols) * s->pw, top + (i / cols) * s->ph);
    sb_printf(&b, "</svg>\n");
    if (b.oom) {
        free(b.p);
        return ea_error(EA_ERR_NOMEM, "ea_svg_render: out of memory");
    }
    *out = b.p;
    if (len) *len = b.n;
    return EA_OK;
}

ea_status ea_svg_save(const ea_svg *s, const char *path) {
    char *text;
    size_t n;
    ea_status st = ea_svg_render(s, &text, &n);
    if (st) return st;
    st = ea_write_file_atomic(path, text, n);
    free(text);
    return st;
}
