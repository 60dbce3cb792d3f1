/* config.json of a GPT-2 checkpoint: the hyper-parameters we need, each checked. Llama-family
 * configs are handed to config_llama.c. */
#include <errno.h>
#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ea/io.h"
#include "io/config_internal.h"

#define EA_CONFIG_MAX_BYTES (1u << 20)

static ea_status get_int(const cJSON *root, const char *key, const char *path, int min, int max, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j) return ea_error(EA_ERR_FORMAT, "%s: missing \"%s\"", path, key);
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < min || j->valuedouble > max)
        return ea_error(EA_ERR_FORMAT, "%s: \"%s\" must be an integer in [%d, %d]", path, key, min, max);
    *out = (int)j->valuedouble;
    return EA_OK;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Hugging Face (Python's json) keeps the last of duplicate keys, cJSON finds the first: a file
 * with both could pass our checks with one value and mean another. Refused at every level. */
static ea_status check_duplicate_keys(const cJSON *j, const char *path) {
    if (cJSON_IsObject(j)) {
        size_t n = 0;
        for (const cJSON *c = j->child; c; c = c->next) n++;
        const char **names = n ? malloc(n * sizeof *names) : NULL;
        if (n && !names) return ea_error(EA_ERR_NOMEM, "%s: out of memory", path);
        size_t k = 0;
        for (const cJSON *c = j->child; c; c = c->next) names[k++] = c->string ? c->string : "";
        if (n > 1) qsort(names, n, sizeof *names, cmp_str_ptr); /* qsort(NULL, 0) is undefined */
        for (size_t i = 1; i < n; i++)
            if (!strcmp(names[i - 1], names[i])) {
                ea_status st = ea_error(EA_ERR_FORMAT, "%s: duplicate key \"%.200s\" (which value is meant is "
                                        "ambiguous)", path, names[i]);
                free(names);
                return st;
            }
        free(names);
    }
    if (cJSON_IsObject(j) || cJSON_IsArray(j))
        for (const cJSON *c = j->child; c; c = c->next) {
            ea_status st = check_duplicate_keys(c, path);
            if (st) return st;
        }
    return EA_OK;
}

ea_status ea_config_parse(const char *json, size_t len, const char *path, ea_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    errno = 0; /* ENOMEM after a NULL: an allocation failed, not the syntax */
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root && errno == ENOMEM) return ea_error(EA_ERR_NOMEM, "%s: out of memory while parsing JSON", path);
    if (!root) return ea_error(EA_ERR_FORMAT, "%s: not valid JSON", path);
    ea_status st = EA_OK;
    if (!cJSON_IsObject(root)) { st = ea_error(EA_ERR_FORMAT, "%s: not a JSON object", path); goto done; }
    if ((st = check_duplicate_keys(root, path))) goto done;
    ea_arch arch;
    if ((st = ea_config_family(root, path, &arch))) goto done;
    if (arch != EA_ARCH_GPT2) {
        st = ea_config_parse_llama(root, path, arch, cfg);
        goto done;
    }
    if ((st = get_int(root, "n_layer", path, 1, 256, &cfg->n_layer)) ||
        (st = get_int(root, "n_head", path, 1, 1024, &cfg->n_head)) ||
        (st = get_int(root, "n_embd", path, 1, 65536, &cfg->n_embd)) ||
        (st = get_int(root, "n_positions", path, 1, 1 << 20, &cfg->n_positions)) ||
        (st = get_int(root, "vocab_size", path, 1, 1 << 22, &cfg->vocab_size)))
        goto done;
    if (cfg->n_embd % cfg->n_head) {
        st = ea_error(EA_ERR_FORMAT, "%s: n_embd %d is not divisible by n_head %d", path, cfg->n_embd, cfg->n_head);
        goto done;
    }
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(root, "n_inner");
    if (inner && !cJSON_IsNull(inner)) {
        if ((st = get_int(root, "n_inner", path, 1, 1 << 20, &cfg->n_inner))) goto done;
    } else cfg->n_inner = 4 * cfg->n_embd;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    cfg->layer_norm_epsilon = 1e-5f;
    if (eps) {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0 && eps->valuedouble < 1)) {
            st = ea_error(EA_ERR_FORMAT, "%s: layer_norm_epsilon must be a number in (0, 1)", path);
            goto done;
        }
        cfg->layer_norm_epsilon = (float)eps->valuedouble;
        if (!(cfg->layer_norm_epsilon >= FLT_MIN)) { /* 1e-50 would become 0 (or a denormal) */
            st = ea_error(EA_ERR_FORMAT, "%s: layer_norm_epsilon %g is below the smallest normal float32 (%g)", path,
                          eps->valuedouble, (double)FLT_MIN);
            goto done;
        }
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "gelu_new"))) {
        st = ea_error(EA_ERR_UNSUPPORTED, "%s: activation_function %s%s%s is not supported (only gelu_new)", path,
                      cJSON_IsString(act) ? "\"" : "", cJSON_IsString(act) ? act->valuestring : "(not a string)",
                      cJSON_IsString(act) ? "\"" : "");
        goto done;
    }
    cfg->n_kv_head = cfg->n_head;
    cfg->head_dim = cfg->n_embd / cfg->n_head;
    cfg->tie_word_embeddings = 1;
    /* Variants that change the arithmetic are refused rather than silently computed wrong. */
    const char *flags[] = {"scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"};
    for (size_t i = 0; i < 3; i++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, flags[i]);
        if (f && cJSON_IsTrue(f)) {
            st = ea_error(EA_ERR_UNSUPPORTED, "%s: %s = true is not supported", path, flags[i]);
            goto done;
        }
    }
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(root, "scale_attn_weights");
    if (sc && cJSON_IsFalse(sc)) st = ea_error(EA_ERR_UNSUPPORTED, "%s: scale_attn_weights = false is not supported", path);
done:
    cJSON_Delete(root);
    return st;
}

int ea_config_kv_heads(const ea_config *c) { return c->n_kv_head > 0 ? c->n_kv_head : c->n_head; }
int ea_config_head_dim(const ea_config *c) { return c->head_dim > 0 ? c->head_dim : c->n_head > 0 ? c->n_embd / c->n_head : 0; }
int ea_config_kv_dim(const ea_config *c) { return ea_config_kv_heads(c) * ea_config_head_dim(c); }
int ea_config_q_dim(const ea_config *c) { return c->n_head * ea_config_head_dim(c); }

ea_status ea_config_load(const char *path, ea_config *cfg) {
    char *buf;
    size_t n;
    ea_status st = ea_read_file(path, EA_CONFIG_MAX_BYTES, &buf, &n);
    if (st) return st;
    st = ea_config_parse(buf, n, path, cfg);
    free(buf);
    return st;
}
