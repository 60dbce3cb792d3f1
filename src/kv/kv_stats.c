/* Calibration statistics of K and V (ea_kv_stats): the arrays basis codecs are fitted from. */
#include <stdlib.h>
#include <string.h>

#include "ea/kvcodec.h"

ea_status ea_kv_stats_alloc(ea_kv_stats *s, int n_layer, int d) {
    memset(s, 0, sizeof *s);
    s->n_layer = n_layer;
    s->d = d;
    size_t nm = (size_t)n_layer * d, nc = nm * d;
    for (int k = 0; k < 2; k++) {
        s->mean[k] = calloc(nm, sizeof(double));
        s->cov[k] = calloc(nc, sizeof(double));
        if (!s->mean[k] || !s->cov[k]) {
            ea_kv_stats_free(s);
            return ea_error(EA_ERR_NOMEM, "kv stats: cannot allocate %d layers x %d dims", n_layer, d);
        }
    }
    return EA_OK;
}

void ea_kv_stats_free(ea_kv_stats *s) {
    if (!s) return;
    for (int k = 0; k < 2; k++) {
        free(s->mean[k]);
        free(s->cov[k]);
    }
    memset(s, 0, sizeof *s);
}
