/* The analyze report's figure: C(k) curves per layer (log k) for each variant, and Df per layer,
 * one row of panels per site kind, null (isotropic Gaussian) references dashed. */
#ifndef EA_REPORT_SPECTRA_FIGURE_H
#define EA_REPORT_SPECTRA_FIGURE_H

#include "calib/site_stats.h"

/* Whole-site results only (head -1) are drawn; per-head results are ignored. Written atomically. */
ea_status ea_spectra_figure_save(const char *path, const char *title, const ea_site_result *r, int n, int n_layer);

#endif
