"""analyze(): covariance spectra of a model's activations, as `eigenalign analyze` computes them
(per site, layer and head; three variants; each beside its isotropic-Gaussian null), returned as
the CLI's JSON keys with a few conveniences: Spectrum.k_at(x), Spectrum.C(k), Analysis.summary()."""
import math
import os

import numpy as np

from ._data import calib_path
from ._ffi import ArgumentError, Callbacks, check, ffi, lib
from .model import Model, _Cache, _int_arg

KINDS = ("hidden", "q", "k", "v", "wte")
VARIANTS = ("all", "exclude_first", "standardized")
C_KEYS = (1, 2, 5, 9, 22)


class Spectrum(dict):
    """One (site, layer, head, variant): the keys of one entry of analyze's "sites"."""

    def _ev(self):
        ev = self["eigenvalues"]
        return ffi.new("double[]", ev), len(ev)

    def k_at(self, fraction):
        """Smallest k whose cumulative variance C(k) reaches fraction (0 < fraction <= 1);
        the library's ea_spectrum_k_for, as k90/k95/k99 and k_var."""
        if not 0 < fraction <= 1:
            raise ArgumentError("fraction must lie in (0, 1]")
        return lib.ea_spectrum_k_for(*self._ev(), float(fraction))

    def C(self, k):
        """Cumulative variance share of the top k eigenvalues (ea_spectrum_cumvar)."""
        ev, d = self._ev()
        return lib.ea_spectrum_cumvar(ev, d, _int_arg("k", k, 0, d))

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


_POOLS = {"none": 0, "mean": 1, "last": 2}  # ea_pool


def _kind_names():
    return tuple(ffi.string(lib.ea_site_kind_name(k)).decode() for k in range(lib.EA_SITE_KINDS))


def _spectrum(r, extra, uncentered=False):
    """One ea_site_result as analyze's JSON entry (the CLI's result_json)."""
    s = r.sum
    ev = [s.eigenvalues[i] for i in range(s.d)]
    out = Spectrum(site=ffi.string(lib.ea_site_kind_name(r.kind)).decode(), layer=r.layer, head=r.head,
                   variant=ffi.string(lib.ea_variant_name(r.variant)).decode(), d=s.d, n=s.n, Df=s.df, trace=s.trace,
                   k90=s.k90, k95=s.k95, k99=s.k99)
    if extra:
        out["k_var"] = {"%g" % v: lib.ea_spectrum_k_for(s.eigenvalues, s.d, v) for v in extra}
    out["C"] = {str(k): lib.ea_spectrum_cumvar(s.eigenvalues, s.d, k) for k in C_KEYS}
    out["top_dims"] = [[s.top_dims[i], s.top_share[i]] for i in range(s.n_top)]
    out["eigenvalues"] = ev
    # singular values of the data matrix behind the spectrum: sqrt(n λ) for XᵀX/n, sqrt((n-1) λ) centred
    rows = s.n if uncentered else s.n - 1
    out["singular_values"] = [math.sqrt(rows * e) if rows * e > 0 else 0.0 for e in ev]
    out["null"] = {"Df": r.null_df, "k95": r.null_k95}
    return out


def analyze(model, text=None, sites=KINDS, ctx=None, max_tokens=0, variants=VARIANTS, heads=True, variance=(),
            samples=0, sample_len=None, seed=1, svg=None, progress=None, center="mean", pool="none"):
    """Spectra of activations over text (a file path, default the bundled calibration text, or
    token ids), as `eigenalign analyze --json`, through the library's site statistics
    (ea_site_stats_*): sites hidden/q/k/v/wte (q_pre/k_pre on RoPE models; q/k/v also per head
    unless heads=False), variants all/exclude_first/standardized, windows of ctx tokens (default
    min(n_positions, 512)) each from an empty cache, or `samples` windows of sample_len tokens at
    seeded random starts; variance: extra fractions reported as k_var; svg: also write the
    analyze figure there; center="none" / pool="mean"|"last": the note's protocol (analyze --center,
    --pool). progress(done_windows, total_windows). Returns an Analysis (a dict)."""
    if center not in ("mean", "none"):
        raise ArgumentError("analyze: center must be 'mean' or 'none', not %r" % (center,))
    if pool not in _POOLS:
        raise ArgumentError("analyze: pool must be 'none', 'mean' or 'last', not %r" % (pool,))
    if not isinstance(model, Model):
        raise TypeError("model must be an eigenalign.Model")
    if isinstance(sites, str):
        sites = sites.split(",")
    if isinstance(variants, str):
        variants = variants.split(",")
    names = _kind_names()
    kinds = 0
    for s in sites:
        if s not in names:
            raise ArgumentError("sites: unknown name %r (expected %s)" % (s, ", ".join(names)))
        kinds |= 1 << names.index(s)
    vmask = 0
    for v in variants:
        if v not in VARIANTS:
            raise ArgumentError("variants: unknown name %r (expected %s)" % (v, ", ".join(VARIANTS)))
        vmask |= 1 << VARIANTS.index(v)
    if not kinds or not vmask:
        raise ArgumentError("sites and variants must not be empty")
    extra = [float(v) for v in variance]
    if any(not 0 < v <= 1 for v in extra):
        raise ArgumentError("variance: fractions must lie in (0, 1]")
    c = model.config
    ctx = min(c["n_positions"], 512) if ctx is None else _int_arg("ctx", ctx, 1, c["n_positions"])
    samples = _int_arg("samples", samples, 0, 1 << 24)
    wlen = ctx if not samples or sample_len is None else _int_arg("sample_len", sample_len, 1, c["n_positions"])
    seed = _int_arg("seed", seed, 0, (1 << 63) - 1)
    pre = (1 << lib.EA_SITE_Q_PRE) | (1 << lib.EA_SITE_K_PRE)
    if kinds & pre and lib.ea_model_config(model._m).rope_type == lib.EA_ROPE_NONE:
        raise ArgumentError("sites q_pre/k_pre: %s has no rotary embedding" % model.path)
    fwd = kinds & ~(1 << lib.EA_SITE_KIND_WTE)
    text_name, n_tok, n_win = None, 0, 0
    cbs = Callbacks()
    sp, rp, nr = ffi.new("ea_site_stats **"), ffi.new("ea_site_result **"), ffi.new("int *")
    wp, nw, fwd_s = ffi.new("ea_window **"), ffi.new("int *"), ffi.new("double *")
    with model._lock:
        try:
            if fwd:
                if text is None:
                    text = calib_path()
                text_name = text if isinstance(text, str) else None
                ids = model.corpus_ids(text, max_tokens)
                if samples:
                    if wlen > len(ids):
                        raise ArgumentError("%s: %d tokens are fewer than sample_len %d" % (text_name or "ids",
                                                                                           len(ids), wlen))
                    check(lib.ea_windows_sample(len(ids), samples, wlen, seed, wp, nw))
                else:
                    check(lib.ea_windows_consecutive(len(ids), ctx, wp, nw))
            check(lib.ea_site_stats_init(sp, model._cfg(), kinds, 1 if heads else 0))
            check(lib.ea_site_stats_set_protocol(sp[0], 1 if center == "none" else 0, _POOLS[pool]))
            check(lib.ea_site_stats_add_wte(sp[0], lib.ea_model_wte(model._m), c["vocab_size"], c["n_embd"]))
            if fwd:
                lib.ea_model_set_capture_prerot(model._m, 1 if kinds & pre else 0)
                cache = _Cache(model, wlen, None)
                try:
                    st = lib.ea_site_stats_run(sp[0], model._m, cache.ptr, ffi.from_buffer("int[]", ids), wp[0],
                                               nw[0], cbs.progress(progress), ffi.NULL, fwd_s)
                finally:
                    lib.ea_model_set_capture_prerot(model._m, 0)
                cbs.raise_pending()
                check(st)
                n_win = nw[0]
                n_tok = sum(wp[0][i].len for i in range(n_win))
            check(lib.ea_site_stats_summarize(sp[0], vmask, rp, nr))
            if svg is not None:
                title = "Activation spectra: %s on %s (%d tokens)" % (model.path, text_name or "ids", n_tok)
                check(lib.ea_spectra_figure_save(os.fsencode(svg), title.encode(), rp[0], nr[0], c["n_layer"]))
            out = [_spectrum(rp[0][i], extra, center == "none") for i in range(nr[0])]
        finally:
            if rp[0] != ffi.NULL:
                lib.ea_site_results_free(rp[0], nr[0])
            lib.ea_site_stats_free(sp[0])
            if wp[0] != ffi.NULL:
                lib.free(wp[0])
    return Analysis(model=model.path, fingerprint=model.fingerprint, text=text_name, tokens=n_tok, windows=n_win,
                    sampling="samples" if samples else "windows", ctx=wlen, center=center, pool=pool, sites=out)
