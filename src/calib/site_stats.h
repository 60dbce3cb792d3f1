/* Per-site covariance accumulators fed by the model's capture hook: the engine behind
 * `eigenalign analyze`, reusable by any command that needs activation spectra (fit, handshake).
 *
 * Every (site, layer, head) keeps two accumulators, one for the rows at position 0 of a window
 * and one for the rest, so the three report variants cost one pass:
 *   all = merge(first, rest), exclude_first = rest, standardized = correlation of all. */
#ifndef EA_SPECTRAL_SITE_STATS_H
#define EA_SPECTRAL_SITE_STATS_H

#include "ea/model.h"
#include "ea/spectral.h"

/* Site kinds: the model's ea_site values, plus the token-embedding matrix itself. */
#define EA_SITE_KIND_WTE 4
#define EA_SITE_KINDS 5
const char *ea_site_kind_name(int kind); /* "hidden", "q", "k", "v", "wte" */

typedef enum { EA_VARIANT_ALL = 0, EA_VARIANT_EXCLUDE_FIRST = 1, EA_VARIANT_STANDARDIZED = 2 } ea_variant;
#define EA_VARIANTS 3
const char *ea_variant_name(ea_variant v); /* "all", "exclude_first", "standardized" */

typedef struct {
    int kind;  /* ea_site or EA_SITE_KIND_WTE */
    int layer; /* hidden 0..n_layer, q/k/v 0..n_layer-1, wte -1 */
    int head;  /* -1: the whole site; h: columns h*hd..(h+1)*hd of q/k/v */
    int d;
    ea_cov *first, *rest;
} ea_site_acc;

typedef struct {
    ea_site_acc *acc;
    int n_acc;
    int *index;                 /* [kind * (n_layer + 1) + layer]: first acc of that group, or -1 */
    int n_layer, n_head, n_embd;
    int per_head;
    double accumulate_s; /* time spent inside the capture hook */
    ea_status err;       /* first failure inside the hook (the forward pass only says "aborted") */
    char errmsg[512];
} ea_site_stats;

/* kinds_mask: bit (1 << kind) for each site kind wanted. per_head: also q/k/v per head. */
ea_status ea_site_stats_init(ea_site_stats **out, const ea_config *cfg, unsigned kinds_mask, int per_head);
void ea_site_stats_free(ea_site_stats *s);
/* The capture hook (user = the ea_site_stats). */
ea_status ea_site_stats_capture(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld);
/* Accumulate the rows of the wte matrix (if the wte kind was asked for). */
ea_status ea_site_stats_add_wte(ea_site_stats *s, const float *wte, int vocab, int d);

/* Consecutive windows of ctx tokens covering ids[0..n); the last may be shorter. */
ea_status ea_windows_consecutive(size_t n, int ctx, ea_window **out, int *n_out);
/* count windows of len tokens at uniformly random starts in [0, n - len], deterministic in seed. */
ea_status ea_windows_sample(size_t n, int count, int len, uint64_t seed, ea_window **out, int *n_out);

/* Run every window from an empty cache with the hook installed (and removed afterwards).
 * progress (optional) is called after each window (done/total in windows). *forward_s receives
 * the forward time excluding the hook. */
ea_status ea_site_stats_run(ea_site_stats *s, ea_model *m, ea_kvcache *cache, const int *ids, const ea_window *w,
                            int n_windows, ea_progress_fn progress, void *progress_user, double *forward_s);

/* One (site, layer, head, variant) result. */
typedef struct {
    int kind, layer, head;
    ea_variant variant;
    ea_spectrum_summary sum;
    double null_df;
    int null_k95;
} ea_site_result;
/* Summaries for the variants in variant_mask (bit 1 << ea_variant); wte has no exclude_first.
 * Results are ordered by kind, layer, head, variant. A variant with fewer than 2 rows is an
 * EA_ERR_ARG error naming the site. */
ea_status ea_site_stats_summarize(const ea_site_stats *s, unsigned variant_mask, ea_site_result **out, int *n_out);
void ea_site_results_free(ea_site_result *r, int n);

#endif
