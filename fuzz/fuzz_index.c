/* libFuzzer target: sharded checkpoints. The input is model.safetensors.index.json in a model
 * folder that also holds config.json and the two valid shards of the tiny test model
 * (tests/hostile/ok_sharded), so a well-formed index loads a real model and a mutated one
 * exercises every check of ea_model_load. Oracle: a model never loads through a shard name that
 * leaves the folder (absolute, or with a ".." component), and every refusal gives a message. */
#include <cjson/cJSON.h>
#include <sys/stat.h>

#include "fuzz_util.h"

#define HOSTILE EA_SOURCE_DIR "/tests/hostile"

static const char *model_dir(void) {
    static char dir[300];
    if (dir[0]) return dir;
    fuzz_path(dir, sizeof dir, "model");
    if (mkdir(dir, 0755) != 0) abort();
    static const char *const files[][2] = {
        {HOSTILE "/_base/config.json", "config.json"},
        {HOSTILE "/ok_sharded/model-00001-of-00002.safetensors", "model-00001-of-00002.safetensors"},
        {HOSTILE "/ok_sharded/model-00002-of-00002.safetensors", "model-00002-of-00002.safetensors"},
    };
    char dst[400];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i][1]);
        fuzz_copy(files[i][0], dst);
    }
    /* A valid checkpoint one level up: a traversal that the loader follows would load it. */
    char up[400];
    snprintf(up, sizeof up, "%s/model.safetensors", fuzz_dir());
    fuzz_copy(HOSTILE "/_base/model.safetensors", up);
    return dir;
}

static int leaves_folder(const char *name) {
    if (name[0] == '/') return 1;
    for (const char *p = name; (p = strstr(p, "..")) != NULL; p += 2) {
        int starts = p == name || p[-1] == '/';
        int ends = p[2] == 0 || p[2] == '/';
        if (starts && ends) return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = model_dir();
    char path[400];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    fuzz_write(path, data, size);

    ea_model *m = NULL;
    ea_status st = ea_model_load(dir, &m);
    if (st != EA_OK) {
        FUZZ_CHECK(strlen(ea_last_error()) > 10, "poor message: %s", ea_last_error());
        return 0;
    }
    /* Loaded: no shard name it could have used may leave the folder. */
    cJSON *j = cJSON_ParseWithLength((const char *)data, size);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map"), *e;
    cJSON_ArrayForEach(e, wm) {
        if (cJSON_IsString(e)) FUZZ_CHECK(!leaves_folder(e->valuestring), "loaded through shard '%s'", e->valuestring);
    }
    cJSON_Delete(j);
    const ea_config *cfg = ea_model_config(m);
    FUZZ_CHECK(cfg->n_layer == 3 && cfg->n_embd == 8, "a different model loaded");
    ea_model_free(m);
    return 0;
}
