/* config.json parsing shared by the GPT-2 parser (config.c) and the Llama-family one
 * (config_llama.c). */
#ifndef EA_IO_CONFIG_INTERNAL_H
#define EA_IO_CONFIG_INTERNAL_H

#include <cjson/cJSON.h>

#include "ea/io.h"

/* The family named by "architectures" (its first entry) or else "model_type"; GPT-2 when neither
 * is present. Unknown names, or the two naming different families, are refused naming field and value. */
ea_status ea_config_family(const cJSON *root, const char *path, ea_arch *out);
/* Llama / Qwen2 / Qwen3 hyper-parameters (cfg zeroed by the caller). */
ea_status ea_config_parse_llama(const cJSON *root, const char *path, ea_arch arch, ea_config *cfg);

#endif
