"""KV-cache codecs: KVCodec (a spec such as "q8" or "klt:2", fitted to a model), eval_kv (the
`eigenalign eval` table: ppl, KL and top-1 of each codec against the exact float32 cache) and
bench_memory (the `eigenalign bench-memory` table: bytes by sequence length)."""
import os

import numpy as np

from ._data import calib_path
from ._ffi import ArgumentError, check, ffi, lib
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
                                                0, p))
            self.calib_tokens = len(ids)
        else:
            self.calib, self.calib_tokens = None, 0
            check(lib.ea_kv_codec_create(spec.encode(), model._cfg(), ffi.NULL, p))
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


def _log_softmax_rows(x):
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return lse


def _score(base, logits, ids, first, acc):
    """Accumulate nll of the codec's predictions, KL(base || codec) and top-1 agreement over
    predictions first..len-1 (row t-1 predicts ids[t]), in float64, chunk by chunk."""
    n = len(ids)
    for r0 in range(first - 1, n - 1, 64):
        r1 = min(r0 + 64, n - 1)
        lb = base[r0:r1].astype(np.float64)
        lc = logits[r0:r1].astype(np.float64)
        lse_b, lse_c = _log_softmax_rows(lb), _log_softmax_rows(lc)
        tgt = ids[r0 + 1:r1 + 1]
        acc["nll"] += float((lse_c - lc[np.arange(r1 - r0), tgt]).sum())
        pb = np.exp(lb - lse_b[:, None])
        kl = (pb * (lb - lc)).sum(axis=1) + lse_c - lse_b
        acc["kl"] += float(np.maximum(kl, 0).sum())
        acc["top1"] += int((lb.argmax(axis=1) == lc.argmax(axis=1)).sum())
        acc["scored"] += r1 - r0


def eval_kv(model, text, codecs, ctx=None, max_tokens=0, protocol="full", calib=None, calib_max_tokens=0,
            progress=None):
    """`eigenalign eval`: run the exact float32 cache and every codec on the same windows of text
    (a path or token ids) and compare next-token distributions. codecs: specs or KVCodec objects.
    Returns the CLI's JSON keys; decode speed is not measured here (decode_tok_s None), and the
    scores are computed in float64 by NumPy from the logits the library returns.
    progress(done, total) is called after each window and codec."""
    if protocol not in ("full", "llama"):
        raise ArgumentError("protocol must be full or llama, not %r" % (protocol,))
    n_pos = model.config["n_positions"]
    ctx = min(1024, n_pos) if ctx is None else _int_arg("ctx", ctx, 2, n_pos)
    ids = model.corpus_ids(text, max_tokens)
    if len(ids) < 2:
        raise ArgumentError("%s: need at least 2 tokens" % (text if isinstance(text, str) else "ids"))
    runs = [None] + _codec_list(model, codecs, calib, calib_max_tokens, ctx)
    proto = lib.EA_PPL_FULL if protocol == "full" else lib.EA_PPL_LLAMA
    V = model.config["vocab_size"]
    accs = [{"nll": 0.0, "kl": 0.0, "top1": 0, "scored": 0, "t": 0.0, "tok": 0} for _ in runs]
    caches = [_Cache(model, ctx, r) for r in runs]
    base = np.empty((ctx, V), dtype=np.float32)
    out = np.empty((ctx, V), dtype=np.float32)
    starts = [s for s in range(0, len(ids) - 1, ctx) if len(ids) - s >= 2]
    step, total = 0, len(starts) * len(runs)
    with model._lock:
        for s0 in starts:
            w = np.ascontiguousarray(ids[s0:s0 + ctx])
            first = lib.ea_ppl_first_scored(proto, len(w))
            for i, r in enumerate(runs):
                buf = base if i == 0 else out
                lib.ea_kvcache_reset(caches[i].ptr)
                t0 = lib.ea_time_now()
                check(lib.ea_model_forward(model._m, caches[i].ptr, ffi.from_buffer("int[]", w), len(w),
                                           ffi.from_buffer("float[]", buf), 1))
                accs[i]["t"] += lib.ea_time_now() - t0
                accs[i]["tok"] += len(w)
                _score(base[:len(w)], buf[:len(w)], w, first, accs[i])
                step += 1
                if progress is not None:
                    progress(step, total)
    base_ppl = float(np.exp(accs[0]["nll"] / accs[0]["scored"]))
    res = {"model": model.path, "text": text if isinstance(text, str) else None, "ctx": ctx, "protocol": protocol,
           "tokens": len(ids)}
    fitted = [r for r in runs[1:] if r.calib is not None]
    if fitted:
        res["calibration"] = {"source": fitted[0].calib, "tokens": fitted[0].calib_tokens, "skip": 0}
    res["baseline"] = {"ppl": base_ppl, "tokens_scored": accs[0]["scored"], "bits_per_value": 32,
                       "cache_bytes": lib.ea_kvcache_bytes_for(caches[0].ptr, ctx),
                       "prefill_tok_s": accs[0]["tok"] / accs[0]["t"], "decode_tok_s": None}
    res["codecs"] = []
    L, d = model.config["n_layer"], model.config["n_embd"]
    for i, r in enumerate(runs[1:], 1):
        a = accs[i]
        ppl = float(np.exp(a["nll"] / a["scored"]))
        res["codecs"].append({
            "codec": r.spec, "bits_per_value": r.cache_bytes(ctx) * 8.0 / (2.0 * L * ctx * d),
            "overhead_bytes": r.overhead_bytes, "resident_bytes": r.resident_bytes, "stored_in_compressor": False,
            "cache_bytes": lib.ea_kvcache_bytes_for(caches[i].ptr, ctx), "ppl": ppl,
            "dppl_pct": 100.0 * (ppl / base_ppl - 1), "kl": a["kl"] / a["scored"], "top1": a["top1"] / a["scored"],
            "prefill_tok_s": a["tok"] / a["t"], "decode_tok_s": None})
    return res


def _weights_bytes(c):
    d, f = float(c["n_embd"]), float(c["n_inner"] if c["n_inner"] and c["n_inner"] > 0 else 4 * c["n_embd"])
    layer = 4 * d + 3 * d * d + 3 * d + d * d + d + d * f + f + f * d + d
    return 4.0 * (c["vocab_size"] * d + c["n_positions"] * d + c["n_layer"] * layer + 2 * d)


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
    L, d, H = c["n_layer"], c["n_embd"], c["n_head"]
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
    wbytes = _weights_bytes(c)
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
    return {"model": model.path, "n_layer": L, "n_embd": d, "n_head": H, "n_positions": c["n_positions"],
            "weights_bytes": wbytes, "claimed_ratio": claimed_ratio, "rows": rows}
