"""Model: a loaded GPT-2 checkpoint with its tokenizer; tokenize, generate, perplexity and
activation capture. Text arguments follow the CLI: `text` of tokenize/generate/activations is the
text itself (--text STR, --prompt STR); functions that read a corpus (perplexity, analyze, fit,
evaluate, eval_kv) take a file path (--text PATH) or a sequence of token ids."""
import os
import threading

import numpy as np

from ._ffi import Callbacks, ArgumentError, check, ffi, lib, take_string

MAX_TEXT_BYTES = 1 << 30  # as the CLI
SITES = ("hidden", "q", "k", "v")
CONFIG_KEYS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "n_inner", "layer_norm_epsilon",
               "tie_word_embeddings", "qkv_bias", "o_bias", "qk_norm", "rope_theta", "rope_factor",
               "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_positions")


def _site_index(name):
    try:
        return SITES.index(name)
    except (ValueError, TypeError):
        raise ArgumentError("unknown site %r: expected one of %s" % (name, ", ".join(SITES))) from None


def _int_arg(name, v, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError("%s must be an int, not %s" % (name, type(v).__name__))
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        raise ArgumentError("%s = %d is out of range [%d, %s]" % (name, v, lo, "inf" if hi is None else hi))
    return v


class Model:
    """A GPT-2 model and its tokenizer. Model.load(dir) reads DIR/config.json, the safetensors
    weights and DIR/vocab.json + merges.txt. One call at a time per model (a lock guards it)."""

    def __init__(self, path, ptr, tok):
        self.path = path
        self._m = ffi.gc(ptr, lib.ea_model_free)
        self._tok = ffi.gc(tok, lib.ea_tokenizer_free)
        self._lock = threading.RLock()
        c = lib.ea_model_config(self._m)
        self.config = {k: getattr(c, k) for k in CONFIG_KEYS}
        self.config["arch"] = ffi.string(lib.ea_arch_name(c.arch)).decode()
        # the widths with GQA and head_dim resolved (0 in config.json-less GPT-2 configs)
        self.config.update(n_kv_head=lib.ea_config_kv_heads(c), head_dim=lib.ea_config_head_dim(c),
                           kv_dim=lib.ea_config_kv_dim(c), q_dim=lib.ea_config_q_dim(c))
        self.fingerprint = ffi.string(lib.ea_model_fingerprint(self._m)).decode()

    @classmethod
    def load(cls, path):
        path = os.fspath(path)
        m = ffi.new("ea_model **")
        check(lib.ea_model_load(path.encode(), m))
        t = ffi.new("ea_tokenizer **")
        st = lib.ea_tokenizer_load_dir(path.encode(), t)
        if st:
            lib.ea_model_free(m[0])
            check(st)
        return cls(path, m[0], t[0])

    def __repr__(self):
        c = self.config
        return "Model(%r: %d layers, d=%d, %d heads, ctx %d)" % (self.path, c["n_layer"], c["n_embd"], c["n_head"],
                                                                  c["n_positions"])

    @property
    def n_layer(self):
        return self.config["n_layer"]

    @property
    def d(self):
        return self.config["n_embd"]

    def _cfg(self):
        return lib.ea_model_config(self._m)

    # ---- tokens ----
    def tokenize(self, text, special=False):
        """GPT-2 token ids of text (str or bytes), as `eigenalign tokenize --json` ("ids")."""
        if isinstance(text, str):
            text = text.encode("utf-8", "surrogateescape")
        if not isinstance(text, (bytes, bytearray)):
            raise TypeError("text must be str or bytes, not %s" % type(text).__name__)
        ids, n = ffi.new("int **"), ffi.new("size_t *")
        check(lib.ea_tokenizer_encode(self._tok, bytes(text), len(text), 1 if special else 0, ids, n))
        try:
            return [ids[0][i] for i in range(n[0])]
        finally:
            lib.free(ids[0])

    def detokenize(self, ids):
        """The text of token ids (str; bytes that are not UTF-8 become U+FFFD)."""
        a = self._ids_array(ids)
        out, n = ffi.new("char **"), ffi.new("size_t *")
        check(lib.ea_tokenizer_decode(self._tok, ffi.from_buffer("int[]", a), len(a), out, n))
        return take_string(out[0], n[0]).decode("utf-8", "replace")

    def _ids_array(self, ids):
        a = np.asarray(ids)
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise TypeError("token ids must be a 1-d sequence of ints")
        if a.size and (a.min() < 0 or a.max() >= self.config["vocab_size"]):
            raise ArgumentError("token ids must lie in [0, %d)" % self.config["vocab_size"])
        return np.ascontiguousarray(a, dtype=np.int32)

    def corpus_ids(self, text, max_tokens=0):
        """Token ids of a corpus: a file path (read like the CLI's --text PATH: empty text is an
        error) or a sequence of token ids; the first max_tokens when max_tokens > 0."""
        max_tokens = _int_arg("max_tokens", max_tokens, 0)
        if isinstance(text, (str, bytes, os.PathLike)):
            path = os.fsencode(text)
            buf, n = ffi.new("char **"), ffi.new("size_t *")
            check(lib.ea_read_file(path, MAX_TEXT_BYTES, buf, n))
            data = take_string(buf[0], n[0])
            name = os.fsdecode(path)
            if not data:
                raise ArgumentError("%s: text is empty" % name, -4)
            ids, cnt = ffi.new("int **"), ffi.new("size_t *")
            check(lib.ea_tokenizer_encode(self._tok, data, len(data), 0, ids, cnt))
            try:
                a = np.frombuffer(ffi.buffer(ids[0], 4 * cnt[0]), dtype=np.int32).copy()
            finally:
                lib.free(ids[0])
            if a.size == 0:
                raise ArgumentError("%s: text has no tokens" % name, -4)
        else:
            a = self._ids_array(text)
            if a.size == 0:
                raise ArgumentError("no token ids given", -4)
        return a[:max_tokens] if max_tokens else a

    # ---- generation and perplexity ----
    def generate(self, prompt, n=40, temperature=0.0, top_k=0, top_p=1.0, seed=1234, stop=True, special=False,
                 kv=None):
        """Continue prompt by up to n tokens (greedy at temperature 0; stops at the model's end-of-sequence id unless
        stop=False). kv: a KVCodec or a spec ("q8", "klt:2", ...; basis codecs are fitted on the
        bundled calibration text, as the CLI does) to keep the cache compressed.
        Returns the keys of `eigenalign generate --json`."""
        from .kv import KVCodec
        n = _int_arg("n", n, 0, 1 << 24)
        top_k = _int_arg("top_k", top_k, 0)
        seed = _int_arg("seed", seed, 0, (1 << 63) - 1)
        if not 0.0 <= float(temperature) <= 100.0 or not 0.0 <= float(top_p) <= 1.0:
            raise ArgumentError("temperature must lie in [0, 100] and top_p in [0, 1]")
        ids = self.tokenize(prompt, special)
        if not ids:
            raise ArgumentError("the prompt has no tokens")
        if len(ids) + n > self.config["n_positions"] + 1:
            raise ArgumentError("prompt (%d tokens) + n %d exceed the model context of %d" %
                                (len(ids), n, self.config["n_positions"]))
        codec = kv if isinstance(kv, KVCodec) or kv is None else KVCodec(kv, self)
        sp = lib.ea_sampler_default()
        sp.temperature, sp.top_k, sp.top_p, sp.seed, sp.stop_at_eot = float(temperature), top_k, float(top_p), \
            seed, 1 if stop else 0
        with self._lock:
            cache = _Cache(self, self.config["n_positions"], codec)
            a = np.asarray(ids, dtype=np.int32)
            out = np.zeros(n + 1, dtype=np.int32)
            n_out = ffi.new("int *")
            t0 = lib.ea_time_now()
            check(lib.ea_generate(self._m, cache.ptr, ffi.from_buffer("int[]", a), len(a), n,
                                  ffi.new("ea_sampler_params *", sp), ffi.from_buffer("int[]", out), n_out))
            secs = lib.ea_time_now() - t0
            got = out[:n_out[0]].tolist()
            clen = lib.ea_kvcache_len(cache.ptr)
            return {"prompt_ids": ids, "ids": got, "text": self.detokenize(got) if got else "",
                    "kv": codec.spec if codec else "f32", "cache_tokens": clen,
                    "cache_bytes": lib.ea_kvcache_bytes_for(cache.ptr, clen),
                    "codec_overhead_bytes": codec.overhead_bytes if codec else 0,
                    "codec_resident_bytes": codec.resident_bytes if codec else 0, "seconds": secs}

    def perplexity(self, text, ctx=None, max_tokens=0, protocol="full"):
        """Perplexity of a text file (or token ids) in windows of ctx tokens (default n_positions),
        each from an empty cache; protocol "full" scores every prediction, "llama" the second half
        of each window. Returns the keys of `eigenalign perplexity --json`."""
        if protocol not in ("full", "llama"):
            raise ArgumentError("protocol must be full or llama, not %r" % (protocol,))
        ctx = self.config["n_positions"] if ctx is None else _int_arg("ctx", ctx, 2, self.config["n_positions"])
        ids = self.corpus_ids(text, max_tokens)
        res = ffi.new("ea_ppl_result *")
        with self._lock:
            cache = _Cache(self, ctx, None)
            t0 = lib.ea_time_now()
            check(lib.ea_perplexity(self._m, cache.ptr, ffi.from_buffer("int[]", ids), len(ids), ctx,
                                    lib.EA_PPL_FULL if protocol == "full" else lib.EA_PPL_LLAMA, res))
            secs = lib.ea_time_now() - t0
        return {"tokens_scored": res.tokens_scored, "mean_nll": res.mean_nll, "ppl": res.ppl, "ctx": ctx,
                "protocol": protocol, "tokens": len(ids), "seconds": secs}

    def logits(self, ids):
        """Next-token logits of every position of one window of token ids: (len, vocab) float32."""
        a = self._ids_array(ids)
        if not 1 <= len(a) <= self.config["n_positions"]:
            raise ArgumentError("a window holds 1..%d tokens, not %d" % (self.config["n_positions"], len(a)))
        out = np.empty((len(a), self.config["vocab_size"]), dtype=np.float32)
        with self._lock:
            cache = _Cache(self, len(a), None)
            check(lib.ea_model_forward(self._m, cache.ptr, ffi.from_buffer("int[]", a), len(a),
                                       ffi.from_buffer("float[]", out), 1))
        return out

    # ---- activations ----
    def activations(self, text, sites=("hidden",), layers=None, special=False):
        """Activations of one window of text (str, bytes, or token ids; at most n_positions
        tokens): {site: float32 array (len(layers), tokens, d)}. Sites: "hidden" (layer i = the
        residual stream entering block i; n_layer = after ln_f), "q", "k", "v" (c_attn output of
        block i; RoPE models: q and k after the rotation, k and v n_kv_head·head_dim wide). layers: list
        of layer indices (default all of the site)."""
        if isinstance(sites, str):
            sites = [sites]
        ids = self._ids_array(text) if not isinstance(text, (str, bytes, bytearray)) else \
            np.asarray(self.tokenize(text, special), dtype=np.int32)
        n = len(ids)
        if not 1 <= n <= self.config["n_positions"]:
            raise ArgumentError("activations: %d tokens; one window holds 1..%d" % (n, self.config["n_positions"]))
        c = self.config
        L = c["n_layer"]
        want = {}
        for s in sites:
            si = _site_index(s)
            top = L if si == 0 else L - 1
            d = (c["n_embd"], c["q_dim"], c["kv_dim"], c["kv_dim"])[si]  # K and V: n_kv_head heads (GQA)
            ls = list(range(top + 1)) if layers is None else [_int_arg("layer", x, 0, top) for x in layers]
            want[si] = (ls, np.empty((len(ls), n, d), dtype=np.float32))
        cbs = Callbacks()

        def hook(user, site, layer, pos0, cnt, dd, x, ld):
            w = want.get(site)
            if w is None or layer not in w[0]:
                return lib.EA_OK
            try:
                rows = np.frombuffer(ffi.buffer(x, 4 * ((cnt - 1) * ld + dd)), dtype=np.float32)
                w[1][w[0].index(layer), pos0:pos0 + cnt] = np.lib.stride_tricks.as_strided(
                    rows, (cnt, dd), (4 * ld, 4))
            except BaseException as e:
                cbs.error = e
                return lib.EA_ERR_ARG  # ends the pass; raise_pending() raises e before check()
            return lib.EA_OK
        with self._lock:
            cb = ffi.callback("ea_capture_fn", hook)
            cache = _Cache(self, n, None)
            lib.ea_model_set_capture(self._m, cb, ffi.NULL)
            try:
                st = lib.ea_model_forward(self._m, cache.ptr, ffi.from_buffer("int[]", ids), n, ffi.NULL, 0)
            finally:
                lib.ea_model_set_capture(self._m, ffi.NULL, ffi.NULL)
            cbs.raise_pending()
            check(st)
        return {SITES[si]: arr for si, (ls, arr) in want.items()}


class _Cache:
    """A KV cache owned by one call."""

    def __init__(self, model, capacity, codec):
        p = ffi.new("ea_kvcache **")
        check(lib.ea_kvcache_init(p, model._cfg(), capacity, codec._c if codec is not None else ffi.NULL))
        self.ptr = ffi.gc(p[0], lib.ea_kvcache_free)
        self.codec = codec  # the codec must outlive the cache
