"""KV-cache codecs: KVCodec (a spec such as "q8" or "klt:2", fitted to a model), eval_kv (the
`eigenalign eval` table: ppl, KL and top-1 of each codec against the exact float32 cache) and
bench_memory (the `eigenalign bench-memory` table: bytes by sequence length)."""
import math
import os

from ._data import calib_path
from ._ffi import ArgumentError, Callbacks, check, ffi, lib
from .model import Model, _Cache, _int_arg


def _needs_stats(spec):
    return spec.startswith("pca") or spec.startswith("klt")


class KVCodec:
    """How the KV cache stores each token's K and V rows: "f32", "f16", "q8", "q4", "pca:R",
    "pca-head:R", "klt:B[:flags]" or "file:PATH" (a saved klt codec). Basis codecs (pca, klt) are
    fitted on calibration text (default the bundled one; calib_max_tokens caps it) in windows of
    ctx tokens (default min(1024, n_positions)), as the CLI fits them."""

    def __init__(self, spec, model, calib=None, calib_max_tokens=0, ctx=None):
        if not isinstance(spec, str) or not spec:
            raise TypeError("spec must be a non-empty str such as 'q8' or 'klt:2'")
        if not isinstance(model, Model):
            raise TypeError("model must be an eigenalign.Model")
        self.spec, self.model = spec, model
        p = ffi.new("ea_kv_codec **")
        if _needs_stats(spec):
            n_pos = model.config["n_positions"]
            ctx = min(1024, n_pos) if ctx is None else _int_arg("ctx", ctx, 2, n_pos)
            self.calib = calib_path() if calib is None else calib
            ids = model.corpus_ids(self.calib, calib_max_tokens)
            with model._lock:
                check(lib.ea_kv_codec_fit_model(model._m, spec.encode(), ffi.from_buffer("int[]", ids), len(ids), ctx,
                                                ffi.NULL, ffi.NULL, p))
            self.calib_tokens = len(ids)
        else:  # no basis; "file:PATH" is checked against this model's fingerprint
            self.calib, self.calib_tokens = None, 0
            with model._lock:
                check(lib.ea_kv_codec_fit_model(model._m, spec.encode(), ffi.NULL, 0, 2, ffi.NULL, ffi.NULL, p))
        self._c = ffi.gc(p[0], lib.ea_kv_codec_free)

    @classmethod
    def load(cls, path, model):
        """A klt codec saved with save() (or `eigenalign generate --save-kv`)."""
        return cls("file:" + os.fspath(path), model)

    def save(self, path):
        check(lib.ea_kv_codec_save(self._c, os.fsencode(path)))

    def __repr__(self):
        return "KVCodec(%r: %.3f bits/value, overhead %d B)" % (self.spec, self.bits_per_value, self.overhead_bytes)

    @property
    def bits_per_value(self):
        """Average stored bits per cached value over the model's full context."""
        return lib.ea_kv_codec_bits_per_value(self._c)

    @property
    def overhead_bytes(self):
        """Parameters stored besides the cache (bases, means, tables)."""
        return lib.ea_kv_codec_overhead(self._c)

    @property
    def resident_bytes(self):
        """What the codec object holds in memory while in use."""
        return lib.ea_kv_codec_resident(self._c)

    def cache_bytes(self, ntok):
        """Cache bytes of a sequence of ntok tokens (all layers, K and V)."""
        return lib.ea_kv_codec_bytes(self._c, _int_arg("ntok", ntok, 0, 1 << 30))


def _codec_list(model, codecs, calib, calib_max_tokens, ctx):
    if isinstance(codecs, (str, KVCodec)):
        codecs = [codecs]
    out = []
    for c in codecs:
        out.append(c if isinstance(c, KVCodec) else KVCodec(c, model, calib, calib_max_tokens, ctx))
    if not out:
        raise ArgumentError("no codec given")
    return out


def eval_kv(model, text, codecs, ctx=None, max_tokens=0, protocol="full", calib=None, calib_max_tokens=0,
            decode_tokens=0, progress=None):
    """`eigenalign eval`: the exact float32 cache and every codec on the same windows of text (a
    path or token ids), scored by the library (ea_kv_codecs_eval: KL(f32 || codec), top-1 and ppl
    against the f32 logits), so the numbers are the CLI's. codecs: specs or KVCodec objects.
    decode_tokens > 0 also times that many one-token decode steps per codec at the end of a ctx
    window (ea_kv_decode_rate; 0 leaves decode_tok_s None, as --decode-tokens 0).
    progress(done, total) is called after each window and codec. Returns the CLI's JSON keys."""
    if protocol not in ("full", "llama"):
        raise ArgumentError("protocol must be full or llama, not %r" % (protocol,))
    n_pos = model.config["n_positions"]
    ctx = min(1024, n_pos) if ctx is None else _int_arg("ctx", ctx, 2, n_pos)
    decode_tokens = _int_arg("decode_tokens", decode_tokens, 0, 1 << 20)
    ids = model.corpus_ids(text, max_tokens)
    if len(ids) < 2:
        raise ArgumentError("%s: need at least 2 tokens" % (text if isinstance(text, str) else "ids"))
    runs = [None] + _codec_list(model, codecs, calib, calib_max_tokens, ctx)
    proto = lib.EA_PPL_FULL if protocol == "full" else lib.EA_PPL_LLAMA
    handles = ffi.new("const ea_kv_codec *[]", [ffi.NULL if r is None else r._c for r in runs])
    ev = ffi.new("ea_kv_codec_eval[]", len(runs))
    cbs = Callbacks()
    idp = ffi.from_buffer("int[]", ids)
    decode = [None] * len(runs)
    with model._lock:
        st = lib.ea_kv_codecs_eval(model._m, idp, len(ids), ctx, proto, handles, len(runs), ev, cbs.progress(progress),
                                   ffi.NULL)
        cbs.raise_pending()
        check(st)
        if decode_tokens:
            rate = ffi.new("double *")
            for i in range(len(runs)):
                check(lib.ea_kv_decode_rate(model._m, handles[i], idp, len(ids), ctx, decode_tokens, rate))
                decode[i] = rate[0]

    def ppl(sc):
        return math.exp(sc.nll / sc.scored)
    base = ev[0]
    base_ppl = ppl(base.score)
    res = {"model": model.path, "text": text if isinstance(text, str) else None, "ctx": ctx, "protocol": protocol,
           "tokens": len(ids)}
    fitted = [r for r in runs[1:] if r.calib is not None]
    if fitted:
        res["calibration"] = {"source": fitted[0].calib, "tokens": fitted[0].calib_tokens, "skip": 0}
    res["baseline"] = {"ppl": base_ppl, "tokens_scored": base.score.scored, "bits_per_value": 32,
                       "cache_bytes": base.cache_bytes, "prefill_tok_s": base.prefill_tok / base.prefill_s,
                       "decode_tok_s": decode[0]}
    res["codecs"] = []
    for i, r in enumerate(runs[1:], 1):
        sc = ev[i].score
        p = ppl(sc)
        res["codecs"].append({
            "codec": r.spec,
            "bits_per_value": r.cache_bytes(ctx) * 8.0 / (2.0 * lib.ea_kv_codec_n_layer(r._c) * ctx *
                                                          lib.ea_kv_codec_dim(r._c)),
            "overhead_bytes": r.overhead_bytes, "resident_bytes": r.resident_bytes, "stored_in_compressor": False,
            "cache_bytes": ev[i].cache_bytes, "ppl": p, "dppl_pct": 100.0 * (p / base_ppl - 1),
            "kl": sc.kl / sc.scored, "top1": sc.top1 / sc.scored,
            "prefill_tok_s": ev[i].prefill_tok / ev[i].prefill_s, "decode_tok_s": decode[i]})
    return res


def _weights_bytes(c, gpt2):
    """Parameters as float32, as `eigenalign bench-memory` counts them (the CLI's weights_bytes)."""
    d = float(c["n_embd"])
    f = float(c["n_inner"]) if c["n_inner"] > 0 else 4.0 * c["n_embd"]
    if not gpt2:  # Llama family: RMSNorm, q/k/v/o, SwiGLU, no learned positions
        qd, kvd, hd = float(c["q_dim"]), float(c["kv_dim"]), float(c["head_dim"])
        layer = 2 * d + (qd + 2 * kvd) * d + d * qd + 3 * f * d + (qd + 2 * kvd if c["qkv_bias"] else 0) + \
            (d if c["o_bias"] else 0) + (2 * hd if c["qk_norm"] else 0)
        return 4.0 * (float(c["vocab_size"]) * d * (1 if c["tie_word_embeddings"] else 2) + c["n_layer"] * layer + d)
    layer = 4 * d + 3 * d * d + 3 * d + d * d + d + d * f + f + f * d + d
    return 4.0 * (float(c["vocab_size"]) * d + float(c["n_positions"]) * d + c["n_layer"] * layer + 2 * d)


def bench_memory(model, seq_lens=(64, 128, 256, 512, 1024, 2048), codecs=("f32", "f16", "q8", "q4", "klt:2"),
                 calib=None, calib_tokens=8192, claimed_ratio=85.0):
    """`eigenalign bench-memory`: memory by sequence length for each codec, with the correct
    accounting (KV cache = 2 x layers x seq x d x bits, plus the codec's stored overhead;
    attention scores = heads x seq^2 floats of one layer; weights in float32) and the cache's
    measured allocation. The CLI's per-process peak RSS columns are None here (an interpreter's
    RSS says nothing about the library). Returns the CLI's JSON keys."""
    if isinstance(seq_lens, int):
        seq_lens = [seq_lens]
    seqs = [_int_arg("seq", s, 1, 1 << 24) for s in seq_lens]
    if isinstance(codecs, (str, KVCodec)):
        codecs = [codecs]
    c = model.config
    L, d, H = c["n_layer"], c["kv_dim"], c["n_head"]  # d: one cached K or V row
    fit_ctx = min(1024, c["n_positions"])
    info = []
    for spec in codecs:
        if spec == "f32":
            info.append(("f32", None, 32.0, 2.0 * L * d * 4, 0.0, 0, 0))
            continue
        k = spec if isinstance(spec, KVCodec) else KVCodec(spec, model, calib, calib_tokens, fit_ctx)
        br = lib.ea_kv_codec_rows_stored(k._c, 1)
        row_b = (lib.ea_kv_codec_bytes(k._c, 2 * br) - lib.ea_kv_codec_bytes(k._c, br)) / br
        seq_b = lib.ea_kv_codec_bytes(k._c, br) - br * row_b
        info.append((k.spec, k, k.bits_per_value, row_b, seq_b, k.overhead_bytes, k.resident_bytes))
    wbytes = _weights_bytes(c, lib.ea_model_config(model._m).arch == lib.EA_ARCH_GPT2)
    rows = []
    for seq in seqs:
        for spec, k, bits, row_b, seq_b, over, res in info:
            kv = seq_b + seq * row_b
            kv32 = 2.0 * L * seq * d * 4
            total = kv + over
            alloc = None
            if seq <= c["n_positions"]:
                alloc = lib.ea_kvcache_allocated_bytes(_Cache(model, seq, k).ptr)
            rows.append({"seq": seq, "codec": spec, "bits_per_value": kv * 8 / (2.0 * L * seq * d), "kv_bytes": kv,
                         "kv_f32_bytes": kv32, "overhead_bytes": over, "codec_resident_bytes": res,
                         "kv_plus_overhead_bytes": total, "ratio_vs_f32": kv32 / total,
                         "claimed_bytes": kv32 / claimed_ratio, "attn_scores_bytes": 4.0 * H * seq * seq,
                         "weights_bytes": wbytes, "cache_allocated_bytes": alloc, "peak_rss_bytes": None,
                         "rss_growth_bytes": None})
    return {"model": model.path, "n_layer": L, "n_embd": c["n_embd"], "kv_dim": d, "n_kv_head": c["n_kv_head"],
            "n_head": H, "n_positions": c["n_positions"],
            "weights_bytes": wbytes, "claimed_ratio": claimed_ratio, "rows": rows}
