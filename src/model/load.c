/* Loading a Hugging Face checkpoint: config.json plus one safetensors file or the shards of
 * model.safetensors.index.json. All weights are converted to float32 into one allocation. GPT-2's
 * tensors are named here; the Llama family's in load_llama.c. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <omp.h>

#include <cblas.h>

#include "model/internal.h"

#define EA_INDEX_MAX_BYTES (16u << 20)
#define EA_MAX_SHARDS 256

struct ea_checkpoint {
    int n;
    ea_st_file *files[EA_MAX_SHARDS];
    char *names[EA_MAX_SHARDS];
    cJSON *weight_map; /* NULL for a single file */
    cJSON *index_root;
    char index_path[4096];
};

static void checkpoint_close(ea_checkpoint *ck) {
    for (int i = 0; i < ck->n; i++) { ea_st_close(ck->files[i]); free(ck->names[i]); }
    cJSON_Delete(ck->index_root);
    memset(ck, 0, sizeof *ck);
}

/* 1 when p exists, 0 when nothing is there (ENOENT, not even a link); -1 with the error recorded
 * when it is there but unusable (a dangling or looping link, no permission): never hide errno. */
static int file_exists(const char *p) {
    struct stat st;
    if (stat(p, &st) == 0) return 1;
    int e = errno;
    if (e == ENOENT && lstat(p, &st) != 0) return 0;
    ea_error(EA_ERR_IO, "%s: %s", p, e == ENOENT ? "dangling symbolic link" : strerror(e));
    return -1;
}

/* dir + "/" + name into buf, or an error naming both when it does not fit (never truncated). */
static ea_status join_path(char *buf, size_t cap, const char *dir, const char *name) {
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return ea_error(EA_ERR_IO, "%.200s.../%s: path of %zu bytes: %s", dir, name, strlen(dir) + strlen(name) + 1,
                        strerror(ENAMETOOLONG));
    return EA_OK;
}

/* Shard names come from an untrusted index: plain file names only, no paths. */
static int shard_name_ok(const char *s) {
    return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..") && strlen(s) < 256;
}

static ea_status checkpoint_open(const char *dir, ea_checkpoint *ck) {
    memset(ck, 0, sizeof *ck);
    char path[sizeof ck->index_path];
    ea_status st = join_path(path, sizeof path, dir, "model.safetensors");
    if (st) return st;
    int ex = file_exists(path);
    if (ex < 0) return EA_ERR_IO;
    if (ex) {
        ck->n = 1;
        ck->names[0] = strdup("model.safetensors");
        return ea_st_open(path, &ck->files[0]);
    }
    if ((st = join_path(ck->index_path, sizeof ck->index_path, dir, "model.safetensors.index.json"))) return st;
    if ((ex = file_exists(ck->index_path)) < 0) return EA_ERR_IO;
    if (!ex) return ea_error(EA_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
    char *buf;
    size_t n;
    st = ea_read_file(ck->index_path, EA_INDEX_MAX_BYTES, &buf, &n);
    if (st) return st;
    ck->index_root = cJSON_ParseWithLength(buf, n);
    free(buf);
    if (!ck->index_root) return ea_error(EA_ERR_FORMAT, "%s: not valid JSON", ck->index_path);
    ck->weight_map = cJSON_GetObjectItemCaseSensitive(ck->index_root, "weight_map");
    if (!cJSON_IsObject(ck->weight_map)) return ea_error(EA_ERR_FORMAT, "%s: no \"weight_map\" object", ck->index_path);
    const cJSON *it;
    cJSON_ArrayForEach(it, ck->weight_map) {
        if (!cJSON_IsString(it)) return ea_error(EA_ERR_FORMAT, "%s: weight_map entry '%s' is not a string", ck->index_path, it->string);
        const char *s = it->valuestring;
        if (!shard_name_ok(s))
            return ea_error(EA_ERR_FORMAT, "%s: shard name '%s' is not a plain file name", ck->index_path, s);
        int known = 0;
        for (int i = 0; i < ck->n && !known; i++) known = !strcmp(ck->names[i], s);
        if (known) continue;
        if (ck->n == EA_MAX_SHARDS) return ea_error(EA_ERR_FORMAT, "%s: more than %d shards", ck->index_path, EA_MAX_SHARDS);
        if ((st = join_path(path, sizeof path, dir, s))) return st;
        ck->names[ck->n] = strdup(s);
        if ((st = ea_st_open(path, &ck->files[ck->n++]))) return st;
    }
    if (ck->n == 0) return ea_error(EA_ERR_FORMAT, "%s: weight_map is empty", ck->index_path);
    return EA_OK;
}

/* Find a tensor under either key layout: "transformer.<name>" or "<name>". */
static ea_status checkpoint_find(const ea_checkpoint *ck, const char *dir, const char *name,
                                 const ea_st_file **file, const ea_st_tensor **t) {
    char full[256];
    snprintf(full, sizeof full, "transformer.%s", name);
    const char *keys[2] = {full, name};
    for (int k = 0; k < 2; k++) {
        if (ck->weight_map) {
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(ck->weight_map, keys[k]);
            if (!e) continue;
            for (int i = 0; i < ck->n; i++)
                if (!strcmp(ck->names[i], e->valuestring)) {
                    *file = ck->files[i];
                    if ((*t = ea_st_find(ck->files[i], keys[k]))) return EA_OK;
                    return ea_error(EA_ERR_FORMAT, "%s: index maps '%s' to this shard but it is not there",
                                    ea_st_path(ck->files[i]), keys[k]);
                }
        } else if ((*t = ea_st_find(ck->files[0], keys[k]))) {
            *file = ck->files[0];
            return EA_OK;
        }
    }
    return ea_error(EA_ERR_FORMAT, "%s: missing tensor '%s' (also tried 'transformer.%s')",
                    ck->weight_map ? ck->index_path : ea_st_path(ck->files[0]), name, name);
    (void)dir;
}

static ea_status load_tensor(const ea_checkpoint *ck, const char *dir, const char *name, int64_t d0, int64_t d1,
                             float *dst, int *all_f16) {
    const ea_st_file *f = NULL;
    const ea_st_tensor *t = NULL;
    ea_status st = checkpoint_find(ck, dir, name, &f, &t);
    if (st) return st;
    int ndim = d1 > 0 ? 2 : 1;
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        char got[128] = "", want[64];
        for (int i = 0; i < t->ndim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        if (ndim == 2) snprintf(want, sizeof want, "[%lld, %lld]", (long long)d0, (long long)d1);
        else snprintf(want, sizeof want, "[%lld]", (long long)d0);
        return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' has shape [%s], expected %s", ea_st_path(f), t->name, got, want);
    }
    if (t->dtype != EA_DTYPE_F32 && t->dtype != EA_DTYPE_F16 && t->dtype != EA_DTYPE_BF16)
        return ea_error(EA_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; weights must be F32, F16 or BF16",
                        ea_st_path(f), t->name, ea_dtype_name(t->dtype));
    if (t->dtype != EA_DTYPE_F16) *all_f16 = 0;
    if (!dst) return EA_OK; /* checking pass */
    if ((st = ea_st_to_f32(f, t, dst))) return st;
    for (size_t i = 0; i < t->numel; i++)
        if (!isfinite(dst[i]))
            return ea_error(EA_ERR_NUMERIC, "%s: tensor '%s' has a non-finite value (%g) at index %zu", ea_st_path(f),
                            t->name, (double)dst[i], i);
    return EA_OK;
}

ea_status ea_ckpt_load_tensor(const ea_checkpoint *ck, const char *name, int64_t d0, int64_t d1, float *dst,
                              int *all_f16) {
    return load_tensor(ck, NULL, name, d0, d1, dst, all_f16);
}

ea_status ea_ckpt_check_unused(const ea_checkpoint *ck, int (*accounted)(const ea_model *, const char *),
                               const ea_model *m) {
    for (int f = 0; f < ck->n; f++)
        for (int i = 0; i < ea_st_count(ck->files[f]); i++) {
            const char *name = ea_st_get(ck->files[f], i)->name;
            if (!accounted(m, name))
                return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' is not part of a %s with this config.json", ea_st_path(ck->files[f]),
                                name, ea_arch_name(m->cfg.arch));
        }
    return EA_OK;
}

static void fingerprint(ea_model *m) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)&m->cfg;
    int ints[6] = {m->cfg.n_layer, m->cfg.n_head, m->cfg.n_embd, m->cfg.n_positions, m->cfg.vocab_size, m->cfg.n_inner};
    p = (const unsigned char *)ints;
    for (size_t i = 0; i < sizeof ints; i++) h = (h ^ p[i]) * 1099511628211ull;
    if (m->cfg.arch != EA_ARCH_GPT2) { /* GPT-2 fingerprints stay as they were */
        const ea_config *c = &m->cfg;
        double more[] = {c->arch, c->n_kv_head, c->head_dim, c->tie_word_embeddings, c->qkv_bias, c->o_bias, c->qk_norm,
                         c->rope_type, c->rope_theta, c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                         c->rope_original_max_positions, c->layer_norm_epsilon};
        p = (const unsigned char *)more;
        for (size_t i = 0; i < sizeof more; i++) h = (h ^ p[i]) * 1099511628211ull;
    }
    p = (const unsigned char *)m->params;
    for (size_t i = 0; i < m->n_params * sizeof(float); i++) h = (h ^ p[i]) * 1099511628211ull;
    snprintf(m->fingerprint, sizeof m->fingerprint, "%016llx", (unsigned long long)h);
}

/* Transposed copies [out, in] of the projection matrices (and wte as is), in the stored
 * precision: decode is bound by the bytes of weights read per token. */
typedef struct { ea_rowmat *dst; const float *src; size_t in, out; int transpose; } decode_job;

static ea_status build_decode_weights(ea_model *m) {
    const ea_config *c = &m->cfg;
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size;
    size_t QD = (size_t)ea_config_q_dim(c), KVD = (size_t)ea_config_kv_dim(c);
    /* Llama family: nn.Linear is already [out, in]; SwiGLU's gate and up are one [2F, C] matrix */
    int tr = !m->linear;
    size_t fc_out = m->linear ? 2 * F : F;
    size_t per_layer = (QD + 2 * KVD) * C + C * QD + fc_out * C + C * F, total = per_layer * (size_t)c->n_layer + V * C;
    size_t esize = m->stored_f16 ? 2 : 4;
    m->decode_buf = malloc(total * esize);
    if (!m->decode_buf) return ea_error(EA_ERR_NOMEM, "%s: cannot allocate decode weights", m->dir);
    size_t off = 0;
    /* On the heap: 41 KB of jobs made ea_model_load's frame 53 KB (ulimit -s 64 crashed it). */
    decode_job *jobs = malloc(sizeof *jobs * (4 * 256 + 1));
    if (!jobs) return ea_error(EA_ERR_NOMEM, "%s: out of memory", m->dir);
    int nj = 0;
    for (int l = 0; l < c->n_layer && l < 256; l++) {
        ea_layer_weights *w = &m->layers[l];
        jobs[nj++] = (decode_job){&w->attn_t, w->attn_w, C, QD + 2 * KVD, tr};
        jobs[nj++] = (decode_job){&w->proj_t, w->proj_w, QD, C, tr};
        jobs[nj++] = (decode_job){&w->fc_t, w->fc_w, C, fc_out, tr};
        jobs[nj++] = (decode_job){&w->fcproj_t, w->fcproj_w, F, C, tr};
    }
    jobs[nj++] = (decode_job){&m->lm_head, m->lm_w, C, V, 0};
    for (int j = 0; j < nj; j++) {
        ea_rowmat *r = jobs[j].dst;
        size_t in = jobs[j].in, outn = jobs[j].out;
        r->rows = (int)outn;
        r->cols = (int)in;
        if (m->stored_f16) r->f16 = (uint16_t *)m->decode_buf + off;
        else r->f32 = (float *)m->decode_buf + off;
        off += in * outn;
        for (size_t o = 0; o < outn; o++)
            for (size_t i = 0; i < in; i++) {
                /* source is [in, out] when transposing, else already [out, in] */
                float v = jobs[j].transpose ? jobs[j].src[i * outn + o] : jobs[j].src[o * in + i];
                if (m->stored_f16) r->f16[o * in + i] = ea_f32_to_f16(v);
                else r->f32[o * in + i] = v;
            }
    }
    free(jobs);
    return EA_OK;
}

/* OpenBLAS 0.3.21 takes a ~129 MB work buffer of address space per calling thread at its first
 * level-3 call and, when that mmap fails, retries forever (issue 20 item 9: a hang under ulimit -v).
 * Under an address-space limit, check now that the buffers fit (a clean "out of memory" if not)
 * and make every OpenMP thread take its buffer at once, so no later call has to find room. */
static ea_status reserve_blas_buffers(const char *dir) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return EA_OK;
    int nt = omp_get_max_threads();
    size_t need = (size_t)nt * ((size_t)136 << 20);
    void *p = mmap(NULL, need, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return ea_error(EA_ERR_NOMEM, "%s: the address-space limit (ulimit -v %llu KB) leaves no room for the BLAS "
                        "work buffers (%zu MB for %d threads): raise the limit or lower OMP_NUM_THREADS", dir,
                        (unsigned long long)rl.rlim_cur >> 10, need >> 20, nt);
    munmap(p, need);
    enum { W = 96 }; /* above OpenBLAS's small-matrix path, which takes no buffer */
#pragma omp parallel
    {
        float *a = calloc(3 * W * W, sizeof *a);
        if (a) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, W, W, W, 1.0f, a, W, a + W * W, W, 0.0f,
                           a + 2 * W * W, W);
        free(a);
    }
    return EA_OK;
}

/* Every tensor of the checkpoint must be one the config accounts for (llama.cpp likewise refuses
 * a wrong tensor count): "n_layer": 2 on a 4-layer checkpoint must not run half the model. Known
 * harmless extras: the attention mask buffers old GPT-2 checkpoints store (h.N.attn.bias,
 * h.N.attn.masked_bias, for N < n_layer) and a tied lm_head.weight. */
static int tensor_accounted(const char *name, int n_layer) {
    static const char *const top[] = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "lm_head.weight"};
    static const char *const per_layer[] = {"ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                                            "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                                            "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
                                            "mlp.c_proj.bias", "attn.bias", "attn.masked_bias"};
    if (!strncmp(name, "transformer.", 12)) name += 12;
    for (size_t i = 0; i < sizeof top / sizeof *top; i++)
        if (!strcmp(name, top[i])) return 1;
    if (strncmp(name, "h.", 2) || name[2] < '0' || name[2] > '9') return 0;
    char *end;
    long l = strtol(name + 2, &end, 10);
    if (*end != '.' || l < 0 || l >= n_layer || (name[2] == '0' && end != name + 3)) return 0;
    for (size_t i = 0; i < sizeof per_layer / sizeof *per_layer; i++)
        if (!strcmp(end + 1, per_layer[i])) return 1;
    return 0;
}

static ea_status check_unused_tensors(const ea_checkpoint *ck, int n_layer) {
    for (int f = 0; f < ck->n; f++)
        for (int i = 0; i < ea_st_count(ck->files[f]); i++) {
            const ea_st_tensor *t = ea_st_get(ck->files[f], i);
            if (!tensor_accounted(t->name, n_layer))
                return ea_error(EA_ERR_FORMAT, "%s: tensor '%s' is not used by a GPT-2 model with n_layer %d "
                                "(config.json does not account for it)", ea_st_path(ck->files[f]), t->name, n_layer);
        }
    return EA_OK;
}

/* Point every weight into p (one allocation) and fill it; with p NULL, only check shapes and dtypes. */
static ea_status load_weights(ea_model *m, const ea_checkpoint *ckp, const char *dir, float *p) {
    const ea_config *c = &m->cfg;
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size, P = (size_t)c->n_positions;
    ea_status st;
#define TAKE(ptr, n) (ptr = p, p = p ? p + (n) : NULL)
    TAKE(m->wte, V * C);
    TAKE(m->wpe, P * C);
    TAKE(m->lnf_w, C);
    TAKE(m->lnf_b, C);
    if ((st = load_tensor(ckp, dir, "wte.weight", (int64_t)V, (int64_t)C, m->wte, &m->stored_f16)) ||
        (st = load_tensor(ckp, dir, "wpe.weight", (int64_t)P, (int64_t)C, m->wpe, &m->stored_f16)) ||
        (st = load_tensor(ckp, dir, "ln_f.weight", (int64_t)C, 0, m->lnf_w, &m->stored_f16)) ||
        (st = load_tensor(ckp, dir, "ln_f.bias", (int64_t)C, 0, m->lnf_b, &m->stored_f16)))
        return st;
    for (int l = 0; l < c->n_layer; l++) {
        ea_layer_weights *w = &m->layers[l];
        struct { const char *name; float **dst; size_t d0, d1; } spec[] = {
            {"ln_1.weight", &w->ln1_w, C, 0},       {"ln_1.bias", &w->ln1_b, C, 0},
            {"attn.c_attn.weight", &w->attn_w, C, 3 * C}, {"attn.c_attn.bias", &w->attn_b, 3 * C, 0},
            {"attn.c_proj.weight", &w->proj_w, C, C}, {"attn.c_proj.bias", &w->proj_b, C, 0},
            {"ln_2.weight", &w->ln2_w, C, 0},       {"ln_2.bias", &w->ln2_b, C, 0},
            {"mlp.c_fc.weight", &w->fc_w, C, F},    {"mlp.c_fc.bias", &w->fc_b, F, 0},
            {"mlp.c_proj.weight", &w->fcproj_w, F, C}, {"mlp.c_proj.bias", &w->fcproj_b, C, 0},
        };
        for (size_t i = 0; i < sizeof spec / sizeof *spec; i++) {
            char name[128];
            snprintf(name, sizeof name, "h.%d.%s", l, spec[i].name);
            TAKE(*spec[i].dst, spec[i].d0 * (spec[i].d1 ? spec[i].d1 : 1));
            if ((st = load_tensor(ckp, dir, name, (int64_t)spec[i].d0, (int64_t)spec[i].d1, *spec[i].dst, &m->stored_f16))) return st;
        }
    }
#undef TAKE
    return EA_OK;
}


ea_status ea_model_load(const char *dir, ea_model **out) {
    *out = NULL;
    ea_status ist = ea_isa_tier(NULL); /* an EA_ISA this CPU cannot run is refused here */
    if (ist) return ist;
    if (!dir || !*dir) return ea_error(EA_ERR_ARG, "empty model directory");
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return ea_error(EA_ERR_IO, "%s: not a model directory", dir);
    ea_model *m = calloc(1, sizeof *m);
    if (!m) return ea_error(EA_ERR_NOMEM, "out of memory");
    m->check_finite = 1;
    m->stored_f16 = 1;
    m->dir = strdup(dir);
    size_t plen = strlen(dir) + sizeof "/config.json";
    char *path = malloc(plen);
    ea_checkpoint *ckp = calloc(1, sizeof *ckp); /* 8 KB: kept off the stack */
    ea_status st;
    if (!m->dir || !path || !ckp) {
        free(path);
        free(ckp);
        ea_model_free(m);
        return ea_error(EA_ERR_NOMEM, "%s: out of memory", dir);
    }
    snprintf(path, plen, "%s/config.json", dir);
    st = ea_config_load(path, &m->cfg);
    free(path);
    if (st) goto fail;
    const ea_config *c = &m->cfg;
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, V = (size_t)c->vocab_size, P = (size_t)c->n_positions;
    size_t per_layer = 2 * C + C * 3 * C + 3 * C + C * C + C + 2 * C + C * F + F + F * C + C;
    size_t total = V * C + P * C + 2 * C + per_layer * (size_t)c->n_layer;
    int llama = c->arch != EA_ARCH_GPT2;
    if (llama) total = ea_llama_param_count(c);
    m->linear = llama;
    m->n_params = total;
    m->layers = calloc((size_t)c->n_layer, sizeof *m->layers);
    if (!m->layers) { st = ea_error(EA_ERR_NOMEM, "%s: out of memory", dir); goto fail; }
    if ((st = checkpoint_open(dir, ckp))) goto fail;
    /* Pass 0 checks every tensor's presence, shape and dtype against config.json; only then is
     * memory reserved for them (pass 1 converts): config.json alone cannot make us allocate. */
    if ((st = llama ? ea_llama_load_weights(m, ckp, NULL) : load_weights(m, ckp, dir, NULL))) goto fail;
    if (llama && ((st = ea_ckpt_check_unused(ckp, ea_llama_tensor_accounted, m)) || (st = ea_rope_init(c, &m->inv_freq))))
        goto fail;
    if (!llama && (st = check_unused_tensors(ckp, c->n_layer))) goto fail;
    m->params = malloc(total * sizeof(float));
    if (!m->params) { st = ea_error(EA_ERR_NOMEM, "%s: cannot allocate %zu parameters", dir, total); goto fail; }
    if ((st = llama ? ea_llama_load_weights(m, ckp, m->params) : load_weights(m, ckp, dir, m->params))) goto fail;
    if (!llama) m->lm_w = m->wte;
    checkpoint_close(ckp);
    if ((st = build_decode_weights(m))) goto fail;
    /* One thread pool: OpenMP. BLAS is called on per-thread blocks (see matmul.c). The OpenMP
     * build of OpenBLAS implements openblas_set_num_threads with omp_set_num_threads, which would
     * make every later parallel region of the caller single-threaded (it halved prefill and decode
     * until this was found): keep the caller's OpenMP thread count. */
    int omp_threads = omp_get_max_threads();
    openblas_set_num_threads(1);
    omp_set_num_threads(omp_threads);
    if ((st = reserve_blas_buffers(dir))) goto fail;
    if ((st = ea_model_load_eos(m, dir))) goto fail;
    fingerprint(m);
    free(ckp);
    *out = m;
    return EA_OK;
fail:
    checkpoint_close(ckp);
    free(ckp);
    ea_model_free(m);
    return st;
}

void ea_model_free(ea_model *m) {
    if (!m) return;
    ea_run_state *r = &m->rs;
    free(r->x); free(r->xn); free(r->qkv); free(r->q); free(r->att); free(r->fc); free(r->tmp); free(r->scores);
    free(r->rope); free(r->qg); free(r->og); free(m->inv_freq);
    free(m->params);
    free(m->decode_buf);
    free(m->layers);
    free(m->dir);
    free(m);
}

const ea_config *ea_model_config(const ea_model *m) { return &m->cfg; }
const char *ea_model_dir(const ea_model *m) { return m->dir; }
const char *ea_model_fingerprint(const ea_model *m) { return m->fingerprint; }
const float *ea_model_wte(const ea_model *m) { return m->wte; }
void ea_model_set_capture(ea_model *m, ea_capture_fn fn, void *user) { m->capture = fn; m->capture_user = user; }
void ea_model_set_check_finite(ea_model *m, int on) { m->check_finite = on; }
void ea_model_set_capture_prerot(ea_model *m, int on) { m->capture_prerot = on; }

const char *ea_site_name(ea_site s) {
    switch (s) {
    case EA_SITE_HIDDEN: return "hidden";
    case EA_SITE_Q: return "q";
    case EA_SITE_K: return "k";
    case EA_SITE_V: return "v";
    case EA_SITE_Q_PRE: return "q_pre";
    case EA_SITE_K_PRE: return "k_pre";
    }
    return "?";
}

ea_status ea_site_parse(const char *name, ea_site *out) {
    for (int s = 0; s < 4; s++)
        if (!strcmp(name, ea_site_name((ea_site)s))) { *out = (ea_site)s; return EA_OK; }
    return ea_error(EA_ERR_ARG, "unknown site '%s' (hidden, q, k, v)", name);
}
