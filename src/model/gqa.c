/* Attention of one layer over the cache for any number of KV heads. With grouped-query attention
 * (n_kv_head < n_head) query head h reads KV head h / g (g = n_head / n_kv_head, transformers'
 * repeat_kv), so query heads kv·g .. kv·g+g-1 lie side by side in q.
 * Decode on rows read in place (no codec, f32, f16, q8, q4): the rows kernel takes up to
 * EA_KV_ROWS_STREAM_MAX query slots, so the group's heads are passed as slots of one call (in runs of
 * up to 4 / n heads): each cached row is read once per token for its whole group instead of g times,
 * with bit-identical results (each slot's arithmetic is unchanged).
 * Everything else (prefill, the coefficient-space codecs pca/klt, whose attend takes one query
 * head per KV head) runs the g heads as g passes: pass r gathers query heads {kv·g + r} into an
 * n × kv_dim block. */
#include <string.h>

#include "attend/attend.h"
#include "model/internal.h"

/* One pass: q and out are n × kvd, one query head per KV head. K/V are the float rows when the
 * codec has no attend op (decoded once by the caller). */
static void attend_pass(ea_model *m, ea_kvcache *cache, int l, const float *q, int n, int pos0, const float *K,
                        const float *V, float *out) {
    const ea_config *c = &m->cfg;
    int nkv = ea_config_kv_heads(c), kvd = ea_config_kv_dim(c);
    const ea_kv_codec *codec = cache->codec;
    ea_run_state *r = &m->rs;
    if (codec && codec->ops->attend) {
        codec->ops->attend(codec, l, q, n, pos0, cache->rows[2 * l], cache->rows[2 * l + 1], out);
        return;
    }
    /* the same kernels as the f32 codec's attend, so the two stay bit-identical */
    if (n <= EA_KV_ROWS_STREAM_MAX)
        ea_kv_rows_attend(EA_KV_ROWS_F32, nkv, kvd, q, n, pos0, K, V, out);
    else
        ea_kv_rows_attend_gemm(nkv, kvd, q, n, pos0, K, V, out, r->scores, (size_t)r->cap_kv * EA_KV_ROWS_GEMM_BLOCK);
}

void ea_model_attend(ea_model *m, ea_kvcache *cache, int l, const float *q, int n, int pos0, float *out) {
    const ea_config *c = &m->cfg;
    int nkv = ea_config_kv_heads(c), hd = ea_config_head_dim(c), kvd = nkv * hd, qd = c->n_head * hd;
    int g = c->n_head / nkv;
    const float *K = NULL, *V = NULL;
    if (!cache->codec || !cache->codec->ops->attend) ea_kvcache_view(cache, l, pos0 + n, &K, &V);
    int fmt1 = !cache->codec ? 1 + EA_KV_ROWS_F32 : cache->codec->ops->attend ? cache->codec->rows_fmt1 : 0;
    if (g > 1 && fmt1 && n <= EA_KV_ROWS_STREAM_MAX / 2) {
        const void *kr = cache->rows[2 * l], *vr = cache->rows[2 * l + 1]; /* as the codecs' attend reads them */
        int run = EA_KV_ROWS_STREAM_MAX / n; /* group members per call */
        for (int r0 = 0; r0 < g; r0 += run)
            ea_kv_rows_attend_group((ea_kv_rows_format)(fmt1 - 1), nkv, kvd, g - r0 < run ? g - r0 : run, (size_t)qd,
                                    (size_t)g * hd, q + (size_t)r0 * hd, n, pos0, kr, vr, out + (size_t)r0 * hd);
        return;
    }
    if (g == 1) {
        attend_pass(m, cache, l, q, n, pos0, K, V, out);
        return;
    }
    float *qg = m->rs.qg, *og = m->rs.og;
    for (int rep = 0; rep < g; rep++) {
        for (int i = 0; i < n; i++)
            for (int h = 0; h < nkv; h++)
                memcpy(qg + (size_t)i * kvd + (size_t)h * hd, q + (size_t)i * qd + (size_t)(h * g + rep) * hd,
                       sizeof(float) * (size_t)hd);
        attend_pass(m, cache, l, qg, n, pos0, K, V, og);
        for (int i = 0; i < n; i++)
            for (int h = 0; h < nkv; h++)
                memcpy(out + (size_t)i * qd + (size_t)(h * g + rep) * hd, og + (size_t)i * kvd + (size_t)h * hd,
                       sizeof(float) * (size_t)hd);
    }
}
