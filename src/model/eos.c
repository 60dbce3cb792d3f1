/* End-of-sequence ids of a checkpoint, which ea_generate stops on: "eos_token_id" of
 * generation_config.json (what transformers' generate() uses) when that file names one, else of
 * config.json; an integer or a list of them (Llama 3 lists several). A directory naming none stops on
 * GPT-2's <|endoftext|> (50256) for a GPT-2 model (directories written before these keys), on
 * nothing otherwise. An id outside the vocabulary or a value of another type is refused, naming the
 * file. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ea/tokenizer.h"
#include "model/internal.h"

/* 1: found (ids set), 0: the file or the key is absent or null, <0: error (recorded). */
static int eos_from(const char *dir, const char *file, int vocab, int *ids, int *n) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) return 0;
    struct stat sb;
    if (stat(path, &sb) != 0) return 0;
    char *buf;
    size_t len;
    if (ea_read_file(path, 1u << 20, &buf, &len)) return -1;
    cJSON *root = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        ea_error(EA_ERR_FORMAT, "%s: not a JSON object", path);
        return -1;
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    int rc = 0, k = 0;
    if (e && !cJSON_IsNull(e)) {
        rc = 1;
        const cJSON *it = cJSON_IsArray(e) ? e->child : e;
        if (cJSON_IsArray(e) && !it) rc = 0; /* [] names none */
        for (; it && rc == 1; it = cJSON_IsArray(e) ? it->next : NULL) {
            if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 ||
                it->valuedouble >= vocab) {
                ea_error(EA_ERR_FORMAT, "%s: \"eos_token_id\" must be a token id in [0, %d) or a list of them", path, vocab);
                rc = -1;
            } else if (k == EA_MAX_EOS) {
                ea_error(EA_ERR_FORMAT, "%s: \"eos_token_id\" lists more than %d ids", path, EA_MAX_EOS);
                rc = -1;
            } else ids[k++] = (int)it->valuedouble;
        }
    }
    cJSON_Delete(root);
    if (rc == 1) *n = k;
    return rc;
}

ea_status ea_model_load_eos(ea_model *m, const char *dir) {
    int V = m->cfg.vocab_size;
    m->n_eos = 0;
    int rc = eos_from(dir, "generation_config.json", V, m->eos, &m->n_eos);
    if (rc == 0) rc = eos_from(dir, "config.json", V, m->eos, &m->n_eos);
    if (rc < 0) return EA_ERR_FORMAT;
    if (rc == 0 && m->cfg.arch == EA_ARCH_GPT2 && EA_TOKEN_EOT < V) m->eos[m->n_eos++] = EA_TOKEN_EOT;
    return EA_OK;
}

int ea_model_eos(const ea_model *m, const int **ids) {
    if (ids) *ids = m->eos;
    return m->n_eos;
}

int ea_model_is_eos(const ea_model *m, int tok) {
    for (int i = 0; i < m->n_eos; i++)
        if (m->eos[i] == tok) return 1;
    return 0;
}
