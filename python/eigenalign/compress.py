"""Activation compression: EigenProjector (mean + top-k eigenvectors of one site) and
ActivationCompressor (the projectors of one model, `eigenalign fit` / `compress`), with NumPy
arrays in and out (float32, C order; any float input is converted)."""
import os

import numpy as np

from ._data import calib_path
from ._ffi import ArgumentError, Callbacks, check, ffi, lib
from .model import SITES, Model, _int_arg, _site_index


def _rule(target_variance, rank):
    r = ffi.new("ea_rank_rule *")
    if rank is not None:
        r.rank, r.variance = _int_arg("rank", rank, 1), 0.0
    else:
        v = float(target_variance)
        if not 0 < v <= 1:
            raise ArgumentError("target_variance must lie in (0, 1], not %r" % (target_variance,))
        r.rank, r.variance = 0, v
    return r[0]


def _rows(x, d, name="x"):
    """x as a C-order float32 array of rows (..., d) -> (lead shape, (n, d) view)."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim < 1 or a.shape[-1] != d:
        raise ArgumentError("%s: expected shape (..., %d), got %s" % (name, d, a.shape))
    if not np.isfinite(a).all():
        raise ArgumentError("%s holds NaN or Inf" % name)
    return a.shape[:-1], a.reshape(-1, d)


class EigenProjector:
    """x ≈ mean + E Eᵀ (x − mean) for one site: E holds the top-k covariance eigenvectors (d × k,
    orthonormal columns). Build one from data (fit), from a compressor, or from stored parts."""

    def __init__(self, ptr, owner=None):
        self._p = ptr if owner is not None else ffi.gc(ptr, lib.ea_projector_free)
        self._owner = owner  # a compressor that owns ptr
        ref = lib.ea_projector_site(self._p)
        self.site, self.layer, self.head = SITES[ref.site], ref.layer, ref.head

    @classmethod
    def fit(cls, x, target_variance=0.95, rank=None, site="hidden", layer=0, head=-1):
        """From samples x (n, d): covariance (n-1), eigenvectors kept by target_variance or rank."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ArgumentError("fit: x must be (n >= 2, d), got %s" % (x.shape,))
        _, rows = _rows(x, x.shape[1])
        c = ffi.new("ea_cov **")
        check(lib.ea_cov_init(c, rows.shape[1]))
        cov = ffi.gc(c[0], lib.ea_cov_free)
        check(lib.ea_cov_add(cov, ffi.from_buffer("float[]", rows), rows.shape[0], rows.shape[1]))
        ref = ffi.new("ea_site_ref *", {"site": _site_index(site), "layer": int(layer), "head": int(head)})
        p = ffi.new("ea_projector **")
        check(lib.ea_projector_from_cov(cov, _rule(target_variance, rank), ref[0], p))
        return cls(p[0])

    @classmethod
    def from_parts(cls, mean, basis, eigenvalues, site="hidden", layer=0, head=-1, tol=1e-4):
        """From stored parts, validated (finite, eigenvalues descending, basis orthonormal within tol)."""
        mean = np.ascontiguousarray(mean, dtype=np.float32)
        basis = np.ascontiguousarray(basis, dtype=np.float32)
        ev = np.ascontiguousarray(eigenvalues, dtype=np.float32)
        if mean.ndim != 1 or basis.ndim != 2 or basis.shape[0] != mean.shape[0] or ev.shape != mean.shape:
            raise ArgumentError("from_parts: mean (d,), basis (d, k) and eigenvalues (d,) expected, got %s, %s, %s" %
                                (mean.shape, basis.shape, ev.shape))
        ref = ffi.new("ea_site_ref *", {"site": _site_index(site), "layer": int(layer), "head": int(head)})
        p = ffi.new("ea_projector **")
        check(lib.ea_projector_from_parts(b"from_parts", ref[0], mean.shape[0], basis.shape[1],
                                          ffi.from_buffer("float[]", mean), ffi.from_buffer("float[]", basis),
                                          ffi.from_buffer("float[]", ev), float(tol), p))
        return cls(p[0])

    def __repr__(self):
        return "EigenProjector(%s layer %d%s: k=%d of d=%d, %.4f of the variance)" % (
            self.site, self.layer, "" if self.head < 0 else " head %d" % self.head, self.rank, self.dim,
            self.variance_kept)

    @property
    def dim(self):
        return lib.ea_projector_dim(self._p)

    @property
    def rank(self):
        return lib.ea_projector_rank(self._p)

    @property
    def variance_kept(self):
        return lib.ea_projector_variance_kept(self._p)

    @property
    def mean(self):
        return np.frombuffer(ffi.buffer(lib.ea_projector_mean(self._p), 4 * self.dim), np.float32).copy()

    @property
    def basis(self):
        """d × k, column j = eigenvector j."""
        n = self.dim * self.rank
        return np.frombuffer(ffi.buffer(lib.ea_projector_basis(self._p), 4 * n), np.float32).reshape(
            self.dim, self.rank).copy()

    @property
    def eigenvalues(self):
        return np.frombuffer(ffi.buffer(lib.ea_projector_eigenvalues(self._p), 4 * self.dim), np.float32).copy()

    def compress(self, x):
        """(..., d) -> (..., k) coefficients (x − mean) E."""
        lead, rows = _rows(x, self.dim)
        z = np.empty((rows.shape[0], self.rank), dtype=np.float32)
        if rows.shape[0]:
            check(lib.ea_projector_compress(self._p, ffi.from_buffer("float[]", rows), rows.shape[0], self.dim,
                                            ffi.from_buffer("float[]", z)))
        return z.reshape(lead + (self.rank,))

    def reconstruct(self, z):
        """(..., k) -> (..., d): mean + z Eᵀ."""
        lead, rows = _rows(z, self.rank, "z")
        x = np.empty((rows.shape[0], self.dim), dtype=np.float32)
        if rows.shape[0]:
            check(lib.ea_projector_reconstruct(self._p, ffi.from_buffer("float[]", rows), rows.shape[0],
                                               ffi.from_buffer("float[]", x), self.dim))
        return x.reshape(lead + (self.dim,))

    def error(self, x):
        """Relative Frobenius error ‖X − X̂‖/‖X‖ of reconstructing x (ea_recon_stats, as evaluate)."""
        _, rows = _rows(x, self.dim)
        xh = np.ascontiguousarray(self.reconstruct(self.compress(rows)))
        st = ffi.new("ea_recon_stats *")
        lib.ea_recon_stats_add(st, ffi.from_buffer("float[]", rows), self.dim, ffi.from_buffer("float[]", xh), self.dim,
                               rows.shape[0], self.dim)
        return lib.ea_recon_stats_rel_error(st)


def _sites_mask(sites):
    if isinstance(sites, str):
        sites = sites.split(",")
    m = 0
    for s in sites:
        m |= 1 << _site_index(s)
    if not m:
        raise ArgumentError("sites must not be empty")
    return m


class ActivationCompressor:
    """Per-site PCA projectors of one model (the note's ActivationCompressor), fitted on
    calibration text: from_model(...), or load(path) for a file written by save() or
    `eigenalign fit`."""

    def __init__(self, ptr, path=None):
        self._c = ffi.gc(ptr, lib.ea_compressor_free)
        self.path = path

    @classmethod
    def from_model(cls, model, calib=None, target_variance=0.95, rank=None, sites=("hidden", "k", "v"),
                   exclude_first=False, per_head=False, ctx=None, max_tokens=0, progress=None):
        """Fit on calib (a text file path, None = the bundled calibration text, or token ids) in
        windows of ctx tokens (default min(512, n_positions)): keep eigenvectors up to
        target_variance, or exactly rank of them. progress(done_tokens, total_tokens)."""
        if not isinstance(model, Model):
            raise TypeError("model must be an eigenalign.Model")
        p = lib.ea_fit_params_default()
        p.rule = _rule(target_variance, rank)
        p.sites = _sites_mask(sites)
        p.per_head = 1 if per_head else 0
        p.exclude_first = 1 if exclude_first else 0
        p.ctx = 0 if ctx is None else _int_arg("ctx", ctx, 1, model.config["n_positions"])
        ids = model.corpus_ids(calib_path() if calib is None else calib, max_tokens)
        cbs = Callbacks()
        p.progress, p.progress_user = cbs.progress(progress), ffi.NULL
        out = ffi.new("ea_compressor **")
        with model._lock:
            st = lib.ea_compressor_fit(model._m, ffi.from_buffer("int[]", ids), len(ids), ffi.new("ea_fit_params *", p),
                                       out)
        cbs.raise_pending()
        check(st)
        return cls(out[0])

    @classmethod
    def load(cls, path):
        out = ffi.new("ea_compressor **")
        check(lib.ea_compressor_load(os.fsencode(path), out))
        return cls(out[0], os.fspath(path))

    def save(self, path):
        """Write the compressor file (safetensors, atomically); `eigenalign compress` reads it."""
        check(lib.ea_compressor_save(self._c, os.fsencode(path)))
        self.path = os.fspath(path)

    @property
    def info(self):
        i = lib.ea_compressor_get_info(self._c)
        return {"fingerprint": ffi.string(i.fingerprint).decode(), "n_layer": i.n_layer, "n_embd": i.n_embd,
                "n_head": i.n_head, "calib_tokens": i.calib_tokens, "calib_rows": i.calib_rows, "ctx": i.ctx,
                "variance": i.rule.variance, "rank": i.rule.rank, "exclude_first": bool(i.exclude_first),
                "library_version": ffi.string(i.library_version).decode(), "format_version": i.format_version}

    @property
    def projectors(self):
        return [EigenProjector(lib.ea_compressor_get(self._c, i), owner=self)
                for i in range(lib.ea_compressor_count(self._c))]

    def projector(self, site="hidden", layer=None, head=-1):
        """The projector of one site (layer None: the last hidden layer, n_layer)."""
        if layer is None:
            layer = self.info["n_layer"] if site == "hidden" else self.info["n_layer"] - 1
        p = lib.ea_compressor_find(self._c, _site_index(site), int(layer), int(head))
        if p == ffi.NULL:
            raise ArgumentError("the compressor has no projector for %s layer %s head %s" % (site, layer, head))
        return EigenProjector(p, owner=self)

    def __repr__(self):
        ps = self.projectors
        return "ActivationCompressor(%d projectors, mean k %.1f of d %d)" % (
            len(ps), np.mean([p.rank for p in ps]) if ps else 0, ps[0].dim if ps else 0)

    def compress_hidden(self, h, layer=None):
        """Hidden states (seq, d) or (batch, seq, d) -> coefficients of the same leading shape with
        k columns. layer: which residual-stream projector (default the last, n_layer)."""
        h = np.asarray(h)
        if h.ndim not in (2, 3):
            raise ArgumentError("compress_hidden: expected (seq, d) or (batch, seq, d), got %s" % (h.shape,))
        return self.projector("hidden", layer).compress(h)

    def reconstruct(self, c, layer=None):
        """Coefficients (..., k) back to hidden states (..., d)."""
        return self.projector("hidden", layer).reconstruct(c)

    def benchmark(self, seq_lengths=(64, 256, 1024, 4096)):
        """Memory of the compressed activations by sequence length, counted correctly: for every
        projector, f32 activations (seq × d × 4 bytes) against the f32 coefficients (seq × k × 4)
        plus what the projector itself stores (mean, d × k basis, d eigenvalues, float32).
        "reduction" = original / (compressed + overhead); "reduction_without_overhead" is the
        note's d / k. Returns {"benchmarks": [{"seq_length", "original_bytes", "compressed_bytes",
        "overhead_bytes", "reduction", "reduction_without_overhead"}, ...]}."""
        ps = self.projectors
        out = []
        for s in seq_lengths:
            s = _int_arg("seq_length", s, 1)
            orig = sum(s * p.dim * 4 for p in ps)
            comp = sum(s * p.rank * 4 for p in ps)
            over = sum((2 * p.dim + p.dim * p.rank) * 4 for p in ps)
            out.append({"seq_length": s, "original_bytes": orig, "compressed_bytes": comp, "overhead_bytes": over,
                        "reduction": orig / (comp + over), "reduction_without_overhead": orig / comp})
        return {"benchmarks": out, "projectors": len(ps)}

    def evaluate(self, model, text, ctx=None, inject="all", max_tokens=0, progress=None):
        """`eigenalign compress --json` on a text file (or token ids): reconstruction error and
        cosine of every projector, and the model's quality with the residual stream entering block
        `inject` (a layer, "all" or "none") replaced by its reconstruction: ppl, KL, top-1."""
        if not isinstance(model, Model):
            raise TypeError("model must be an eigenalign.Model")
        L = model.config["n_layer"]
        if inject == "all":
            inj = -1
        elif inject == "none" or inject is None:
            inj = -2
        else:
            inj = _int_arg("inject", inject, 0, L - 1)
        what = (self.path or "compressor").encode()
        check(lib.ea_compressor_check_model(self._c, what, model._m))
        ids = model.corpus_ids(text, max_tokens)
        cbs = Callbacks()
        ep = ffi.new("ea_eval_params *")
        ep.ctx = 0 if ctx is None else _int_arg("ctx", ctx, 1, model.config["n_positions"])
        ep.inject, ep.progress, ep.progress_user = inj, cbs.progress(progress), ffi.NULL
        r = ffi.new("ea_eval_result *")
        check(lib.ea_eval_result_init(r, self._c))
        try:
            t0 = lib.ea_time_now()
            with model._lock:
                st = lib.ea_compressor_evaluate(model._m, self._c, ffi.from_buffer("int[]", ids), len(ids), ep, r)
            secs = lib.ea_time_now() - t0
            cbs.raise_pending()
            check(st)
            sites = []
            for i, p in enumerate(self.projectors):
                e = {"site": p.site, "layer": p.layer}
                if p.head >= 0:
                    e["head"] = p.head
                e.update(d=p.dim, k=p.rank, ratio=p.dim / p.rank,
                         recon_error=lib.ea_recon_stats_rel_error(ffi.addressof(r.site[i])),
                         cosine=lib.ea_recon_stats_cosine(ffi.addressof(r.site[i])))
                sites.append(e)
            return {"sites": sites,
                    "quality": {"ppl_full": lib.ea_eval_ppl_full(r), "ppl_compressed": lib.ea_eval_ppl_compressed(r),
                                "kl": lib.ea_eval_kl(r), "top1": lib.ea_eval_top1(r)},
                    "inject": inject if isinstance(inject, str) else ("none" if inject is None else inj),
                    "model": model.path, "compressor": self.path,
                    "ctx": ep.ctx if ep.ctx > 0 else lib.ea_compress_default_ctx(model._cfg()),
                    "tokens": r.tokens, "windows": r.windows, "scored": r.scored,
                    "exclude_first": self.info["exclude_first"], "seconds": secs, "texts": []}
        finally:
            lib.ea_eval_result_free(r)
