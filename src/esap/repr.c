/* Anchor representations: "wte", "hidden:L", "hidden:last", "hidden:LA,LB". */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esap/esap_internal.h"

#define LAYER_LAST (-1)
#define LAYER_MAX 100000

static int parse_layer(const char *s, size_t len, int *out) {
    if (len == 4 && !strncmp(s, "last", 4)) {
        *out = LAYER_LAST;
        return 0;
    }
    if (len == 0 || len > 6) return -1;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > LAYER_MAX) return -1;
    *out = v;
    return 0;
}

ea_status ea_esap_repr_parse(const char *s, ea_esap_repr *out) {
    memset(out, 0, sizeof *out);
    if (!s) return ea_error(EA_ERR_ARG, "representation: missing");
    if (!strcmp(s, "wte")) {
        out->kind = EA_ESAP_REPR_WTE;
        return EA_OK;
    }
    if (!strncmp(s, "hidden:", 7)) {
        const char *p = s + 7, *comma = strchr(p, ',');
        size_t la = comma ? (size_t)(comma - p) : strlen(p);
        out->kind = EA_ESAP_REPR_HIDDEN;
        if (!parse_layer(p, la, &out->layer_a)) {
            if (!comma) {
                out->layer_b = out->layer_a;
                return EA_OK;
            }
            if (!parse_layer(comma + 1, strlen(comma + 1), &out->layer_b)) return EA_OK;
        }
    }
    return ea_error(EA_ERR_ARG, "representation '%s': expected wte, hidden:L, hidden:last or hidden:LA,LB", s);
}

ea_status ea_esap_repr_layer(const ea_esap_repr *r, int side_b, const ea_model *m, int *layer) {
    int n_layer = ea_model_config(m)->n_layer, l = side_b ? r->layer_b : r->layer_a;
    if (l == LAYER_LAST) l = n_layer;
    if (l < 0 || l > n_layer)
        return ea_error(EA_ERR_ARG, "%s: hidden layer %d out of range (model has hidden layers 0..%d)",
                        ea_model_dir(m), l, n_layer);
    *layer = l;
    return EA_OK;
}

void ea_esap_repr_name(const ea_esap_repr *r, int side_b, const ea_model *m, char *buf, size_t size) {
    int l = 0;
    if (r->kind == EA_ESAP_REPR_WTE) snprintf(buf, size, "wte");
    else if (ea_esap_repr_layer(r, side_b, m, &l) == EA_OK) snprintf(buf, size, "hidden:%d", l);
    else snprintf(buf, size, "hidden:?");
}
