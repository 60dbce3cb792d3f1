"""analyze(): covariance spectra of a model's activations, as `eigenalign analyze` computes them
(per site, layer and head; three variants; each beside its isotropic-Gaussian null), returned as
the CLI's JSON keys with a few conveniences: Spectrum.k_at(x), Spectrum.C(k), Analysis.summary()."""
import numpy as np

from ._data import calib_path
from ._ffi import ArgumentError, Callbacks, check, ffi, lib
from .model import Model, _Cache, _int_arg

KINDS = ("hidden", "q", "k", "v", "wte")
VARIANTS = ("all", "exclude_first", "standardized")
C_KEYS = (1, 2, 5, 9, 22)


class Spectrum(dict):
    """One (site, layer, head, variant): the keys of one entry of analyze's "sites"."""

    def k_at(self, fraction):
        """Smallest k whose cumulative variance C(k) reaches fraction (0 < fraction <= 1)."""
        if not 0 < fraction <= 1:
            raise ArgumentError("fraction must lie in (0, 1]")
        c = np.cumsum(self["eigenvalues"]) / max(sum(self["eigenvalues"]), 1e-300)
        return int(min(np.searchsorted(c, fraction - 1e-12) + 1, len(c)))

    def C(self, k):
        """Cumulative variance share of the top k eigenvalues."""
        ev = self["eigenvalues"]
        t = sum(ev)
        return float(sum(ev[:int(k)]) / t) if t > 0 else 1.0

    @property
    def Df(self):
        return self["Df"]


class Analysis(dict):
    """What `eigenalign analyze --json` prints; "sites" holds Spectrum entries."""

    def select(self, site=None, layer=None, head=-1, variant="all"):
        """The spectra matching the filters (head -1: whole rows; None: any)."""
        return [s for s in self["sites"] if (site is None or s["site"] == site) and
                (layer is None or s["layer"] == layer) and (head is None or s["head"] == head) and
                (variant is None or s["variant"] == variant)]

    def spectrum(self, site, layer, head=-1, variant="all"):
        r = self.select(site, layer, head, variant)
        if not r:
            raise KeyError((site, layer, head, variant))
        return r[0]

    def summary(self):
        """A table like the CLI's: one line per whole-row site, layer and variant."""
        lines = ["model %s, text %s: %d tokens in %d windows of %d" % (self["model"], self["text"], self["tokens"],
                                                                       self["windows"], self["ctx"]),
                 "(null: isotropic Gaussian data of the same n and d)",
                 "%-6s %5s  %-13s %5s %7s %8s (%6s) %5s %5s (%4s) %5s  %6s %6s" % (
                     "site", "layer", "variant", "d", "n", "Df", "null", "k90", "k95", "null", "k99", "C(1)", "C(9)")]
        for s in self["sites"]:
            if s["head"] >= 0:
                continue
            lines.append("%-6s %5s  %-13s %5d %7.0f %8.2f (%6.1f) %5d %5d (%4d) %5d  %6.4f %6.4f" % (
                s["site"], "-" if s["layer"] < 0 else s["layer"], s["variant"], s["d"], s["n"], s["Df"],
                s["null"]["Df"], s["k90"], s["k95"], s["null"]["k95"], s["k99"], s["C"]["1"], s["C"]["9"]))
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


class _Acc:
    def __init__(self, kind, layer, head, d):
        self.kind, self.layer, self.head, self.d = kind, layer, head, d
        p, q = ffi.new("ea_cov **"), ffi.new("ea_cov **")
        check(lib.ea_cov_init(p, d))
        self.first = ffi.gc(p[0], lib.ea_cov_free)
        check(lib.ea_cov_init(q, d))
        self.rest = ffi.gc(q[0], lib.ea_cov_free)

    def add(self, x, pos0, n, ld):
        nf = 1 if pos0 == 0 else 0
        check(lib.ea_cov_add(self.first, x, nf, ld))
        check(lib.ea_cov_add(self.rest, x + nf * ld, n - nf, ld))


def _spectrum(acc, cov, variant, extra):
    n = lib.ea_cov_count(cov)
    if n < 2:
        raise ArgumentError("%s layer %d%s (%s): %g row(s) cannot give a covariance; more tokens are needed" % (
            KINDS[acc.kind], acc.layer, " head %d" % acc.head if acc.head >= 0 else "", variant, n), -4)
    s = ffi.new("ea_spectrum_summary *")
    check(lib.ea_spectrum_summarize(cov, 1 if variant == "standardized" else 0, s))
    try:
        ev = [s.eigenvalues[i] for i in range(s.d)]
        ndf, nk = ffi.new("double *"), ffi.new("int *")
        check(lib.ea_spectrum_null(min(int(n), 2 ** 31 - 1), acc.d, 0, ndf, nk))
        out = Spectrum(site=KINDS[acc.kind], layer=acc.layer, head=acc.head, variant=variant, d=s.d, n=s.n, Df=s.df,
                       trace=s.trace, k90=s.k90, k95=s.k95, k99=s.k99)
        tot = sum(ev)
        if extra:
            out["k_var"] = {"%g" % v: 0 for v in extra}
        out["C"] = {str(k): (sum(ev[:k]) / tot if tot > 0 else 1.0) for k in C_KEYS}
        out["top_dims"] = [[s.top_dims[i], s.top_share[i]] for i in range(s.n_top)]
        out["eigenvalues"] = ev
        out["null"] = {"Df": ndf[0], "k95": nk[0]}
        for v in extra:
            out["k_var"]["%g" % v] = out.k_at(v)
        return out
    finally:
        lib.ea_spectrum_summary_free(s)


def analyze(model, text=None, sites=KINDS, ctx=None, max_tokens=0, variants=VARIANTS, heads=True, variance=(),
            progress=None):
    """Spectra of activations over text (a file path, default the bundled calibration text, or
    token ids), as `eigenalign analyze --json`: sites hidden/q/k/v/wte (q/k/v also per head unless
    heads=False), variants all/exclude_first/standardized, windows of ctx tokens (default
    min(n_positions, 512)) each from an empty cache; variance: extra fractions reported as k_var.
    progress(done_windows, total_windows). Returns an Analysis (a dict)."""
    if not isinstance(model, Model):
        raise TypeError("model must be an eigenalign.Model")
    if isinstance(sites, str):
        sites = sites.split(",")
    if isinstance(variants, str):
        variants = variants.split(",")
    for s in sites:
        if s not in KINDS:
            raise ArgumentError("sites: unknown name %r (expected %s)" % (s, ", ".join(KINDS)))
    for v in variants:
        if v not in VARIANTS:
            raise ArgumentError("variants: unknown name %r (expected %s)" % (v, ", ".join(VARIANTS)))
    if not sites or not variants:
        raise ArgumentError("sites and variants must not be empty")
    extra = [float(v) for v in variance]
    if any(not 0 < v <= 1 for v in extra):
        raise ArgumentError("variance: fractions must lie in (0, 1]")
    c = model.config
    L, H, C = c["n_layer"], c["n_head"], c["n_embd"]
    ctx = min(c["n_positions"], 512) if ctx is None else _int_arg("ctx", ctx, 1, c["n_positions"])
    kinds = [k for k in range(5) if KINDS[k] in sites]
    accs, index = [], {}
    for k in kinds:
        nh = H if heads and 1 <= k <= 3 else 0
        for layer in range({0: L + 1, 4: 1}.get(k, L)):
            index[(k, layer)] = len(accs)
            for h in range(-1, nh):
                accs.append(_Acc(k, -1 if k == 4 else layer, h, C if h < 0 else C // H))
    if 4 in kinds:
        check(lib.ea_cov_add(accs[index[(4, 0)]].rest, lib.ea_model_wte(model._m), c["vocab_size"], C))
    fwd = [k for k in kinds if k != 4]
    n_tok, n_win = 0, 0
    text_name = None
    if fwd:
        if text is None:
            text = calib_path()
        text_name = text if isinstance(text, str) else None
        ids = model.corpus_ids(text, max_tokens)
        starts = list(range(0, len(ids), ctx))
        cbs = Callbacks()

        def hook(user, site, layer, pos0, n, d, x, ld):
            gi = index.get((site, layer))
            if gi is None or n < 1:
                return 0
            try:
                a = accs[gi]
                a.add(x, pos0, n, ld)
                if heads and site != 0:
                    hd = d // H
                    for h in range(H):
                        accs[gi + 1 + h].add(x + h * hd, pos0, n, ld)
            except BaseException as e:
                cbs.error = e
                return 1
            return 0
        with model._lock:
            cache = _Cache(model, ctx, None)
            cb = ffi.callback("ea_capture_fn", hook)
            lib.ea_model_set_capture(model._m, cb, ffi.NULL)
            try:
                for i, s0 in enumerate(starts):
                    w = np.ascontiguousarray(ids[s0:s0 + ctx])
                    lib.ea_kvcache_reset(cache.ptr)
                    st = lib.ea_model_forward(model._m, cache.ptr, ffi.from_buffer("int[]", w), len(w), ffi.NULL, 0)
                    cbs.raise_pending()
                    check(st)
                    n_tok += len(w)
                    if progress is not None:
                        progress(i + 1, len(starts))
            finally:
                lib.ea_model_set_capture(model._m, ffi.NULL, ffi.NULL)
        n_win = len(starts)
    out = []
    for a in accs:
        allc = None
        if "all" in variants or "standardized" in variants:
            p = ffi.new("ea_cov **")
            check(lib.ea_cov_init(p, a.d))
            allc = ffi.gc(p[0], lib.ea_cov_free)
            check(lib.ea_cov_merge(allc, a.rest))
            check(lib.ea_cov_merge(allc, a.first))
        for v in VARIANTS:
            if v not in variants or (v == "exclude_first" and a.kind == 4):
                continue
            out.append(_spectrum(a, a.rest if v == "exclude_first" else allc, v, extra))
    return Analysis(model=model.path, fingerprint=model.fingerprint, text=text_name, tokens=n_tok, windows=n_win,
                    sampling="windows", ctx=ctx, sites=out)
