/* eigen-alignment reports: the analyze figure (ea_spectra_figure_save) and the small SVG line-chart
 * writer behind it: a figure is a grid of panels, each panel a line chart
 * (series of (x, y) points) with axes, ticks, optional log scales, a legend and a title.
 * No dependencies beyond the core; files are written atomically through ea_outfile.
 *
 *   ea_svg *s; int p;
 *   ea_svg_init(&s, "Figure title", 2, 420, 300);          // 2 panels per row, 420×300 each
 *   ea_svg_panel(s, "C(k)", "k", "cumulative variance", EA_SVG_LOG_X, &p);
 *   ea_svg_series(s, p, "layer 0", xs, ys, n, NULL, EA_SVG_SOLID, 0);
 *   ea_svg_save(s, "out.svg");  ea_svg_free(s);
 */
#ifndef EA_REPORT_H
#define EA_REPORT_H

#include <stddef.h>

#include "ea/calib.h"
#include "ea/core.h"
#include "ea/io.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ea_svg ea_svg;

/* Panel flags. EA_SVG_BLANK: an empty grid cell (keeps the grid aligned). EA_SVG_INT_X: a linear
 * x axis of whole numbers (layers): ticks only at integers. */
enum { EA_SVG_LOG_X = 1, EA_SVG_LOG_Y = 2, EA_SVG_BLANK = 4, EA_SVG_INT_X = 8 };
typedef enum { EA_SVG_SOLID = 0, EA_SVG_DASHED = 1, EA_SVG_DOTTED = 2 } ea_svg_dash;

/* cols panels per row; every panel is panel_w × panel_h pixels. title may be NULL. */
EA_API ea_status ea_svg_init(ea_svg **out, const char *title, int cols, double panel_w, double panel_h);
EA_API void ea_svg_free(ea_svg *s);
/* Append a panel (grid filled row by row); its index goes to *panel. flags: EA_SVG_LOG_*. */
EA_API ea_status ea_svg_panel(ea_svg *s, const char *title, const char *xlabel, const char *ylabel, unsigned flags,
                       int *panel);
/* Fix an axis range; NaN leaves that end automatic (data range, rounded out to ticks). */
EA_API ea_status ea_svg_panel_range(ea_svg *s, int panel, double xmin, double xmax, double ymin, double ymax);
/* Add a series (points copied). Non-finite points, and non-positive ones on a log axis, are
 * skipped and break the line. label NULL: not in the legend. color: any SVG colour, NULL for the
 * default palette. markers: draw a dot at each point. */
EA_API ea_status ea_svg_series(ea_svg *s, int panel, const char *label, const double *x, const double *y, int n,
                        const char *color, ea_svg_dash dash, int markers);
/* Colour i of n from a sequential (viridis-like) ramp, as "#rrggbb" in buf (8 bytes); returns buf.
 * For series that are ordered (layers). */
EA_API const char *ea_svg_ramp(int i, int n, char buf[8]);
/* Render to a malloc'd NUL-terminated string; or write to path atomically. */
EA_API ea_status ea_svg_render(const ea_svg *s, char **out, size_t *len);
EA_API ea_status ea_svg_save(const ea_svg *s, const char *path);

/* The analyze report's figure: C(k) curves per layer (log k) for each variant, and Df per layer.
 * Whole-site results only (head -1) are drawn; per-head results are ignored. Written atomically. */
EA_API ea_status ea_spectra_figure_save(const char *path, const char *title, const ea_site_result *r, int n, int n_layer);

/* ---- Memory budget (budget.c): arithmetic from a config alone, no weights ----
 * Every figure is bytes (doubles: exact below 2^53). Weights: f16 = 2 bytes per parameter; q8_0 and
 * q4_0 are llama.cpp's blocks of 32 values (34 and 18 bytes: an f16 scale plus 32 int8 / 32 nibbles)
 * applied to every 2-D matrix, 1-D tensors (norms, biases) kept float32 as llama.cpp does. The
 * engine holds a float32 copy of every parameter (load.c) plus decode copies of the projection
 * matrices and lm_head in the checkpoint's precision (f16 when every tensor was F16, else f32). */
typedef struct {
    double n_params, n_matrix, n_vector;   /* parameters: all, in 2-D matrices, in 1-D tensors */
    double n_decode;                       /* values in the engine's decode copies */
    double w_f32, w_f16, w_q8_0, w_q4_0;   /* weights in each format */
    double engine_f16_ckpt, engine_f32_ckpt; /* what the engine holds: float32 copy + decode copies */
    int kv_heads, kv_dim;                  /* cached heads; kv_dim = kv_heads × head_dim */
    double kv_f32;                         /* 2 × layers × seq × kv_dim × 4 */
    double kv_bytes, kv_bits_per_value;    /* at the codec: rows (whole blocks) + per-sequence bytes; every
                                            * built-in codec attends on its rows (no decoded copy) */
    double kv_overhead;                    /* codec's fixed bytes (bases, means); NaN when it depends on the fit */
    double scores_note;                    /* heads × seq² floats: one layer's full score matrix */
    double scores_engine;                  /* what the prefill allocates: seq × 64 × threads floats */
    double activations;                    /* the forward pass's buffers for a seq-token prefill */
    double logits_last, logits_all;        /* vocab floats for the last token; for all seq tokens */
} ea_budget;

/* Budget of cfg at seq tokens with KV codec kv_spec ("f32", "f16", "q8", "q4", "pca:R",
 * "pca-head:R", "klt:B"; file: specs are refused) and `threads` OpenMP threads (>= 1). */
EA_API ea_status ea_budget_compute(const ea_config *cfg, int seq, const char *kv_spec, int threads, ea_budget *out);
/* A named shape (gpt2, gpt2-medium, gpt2-large, gpt2-xl, llama-2-7b) from the public config.json
 * hyper-parameters; EA_ERR_ARG naming the known shapes otherwise. */
EA_API ea_status ea_budget_shape(const char *name, ea_config *cfg);
EA_API const char *ea_budget_shape_list(void); /* "gpt2, gpt2-medium, ..." */

#ifdef __cplusplus
}
#endif
#endif
