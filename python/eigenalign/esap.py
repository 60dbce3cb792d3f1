"""ESAP between two models, as `eigenalign handshake`, `align` and `message` (same JSON keys):
the spectrum handshake with its controls, Procrustes alignment on shared anchor tokens with
held-out retrieval, and k-dimensional messages."""
import math
import os

import numpy as np

from ._data import calib_path
from ._ffi import ArgumentError, Callbacks, check, ffi, lib
from .model import Model, _int_arg

DEFAULT_TRAIN, DEFAULT_TEST, DEFAULT_RANK = 5000, 2000, 64
ISOTROPIC_FACTOR, CONVERGED_R = 10, 0.9
PAIRS = ("ids", "text", "none")
MKNN_ALPHA = 0.01  # EA_ESAP_MKNN_ALPHA (a float #define: not visible to cffi)
_NOTE_ALIGN = ("train_cosine is in-sample (the pairs W was fitted on; with pairs none, "
               "the true training pairs under the anchor-free W); every other number is "
               "on held-out anchors. null: training pairs shuffled. mutual_knn: held-out "
               "anchors' full vectors, null = one side's rows permuted; p_at_1_over_null "
               "divides by max(null P@1, chance).")
_NOTE_MESSAGE = ("accuracy: held-out token resolved exactly by B's cosine nearest neighbour "
                 "among all held-out tokens; null: W fitted on shuffled training pairs.")


def _source(repr_, text, max_tokens, ctx, cbs, progress):
    src = ffi.new("ea_esap_source *")
    check(lib.ea_esap_repr_parse(repr_.encode(), ffi.addressof(src, "repr")))
    path = (calib_path() if text is None else text).encode()
    src.text_path = keep = ffi.new("char[]", path)
    src.max_tokens = _int_arg("max_tokens", max_tokens, 0)
    src.ctx = 0 if ctx is None else _int_arg("ctx", ctx, 1)
    src.progress, src.progress_user = cbs.progress(progress), ffi.NULL
    return src, keep


def _models(a, b):
    if not isinstance(a, Model) or not isinstance(b, Model):
        raise TypeError("model_a and model_b must be eigenalign.Model objects")


def _spectrum_json(s):
    return {"Df": s.df, "d": s.d, "site": ffi.string(s.site).decode(), "fingerprint": ffi.string(s.fingerprint).decode()}


_NOTE_HANDSHAKE = ("verdict: converged only when mutual_knn beats its permutation null at p < 0.01 "
                   "(untested without paired representations). ck_pearson > threshold (the note's 0.9) is "
                   "reported as ck_above_threshold but decides nothing: C(k) curves are rotation-invariant "
                   "and curves of unrelated spectra often correlate above 0.9.")


def _mutual_knn(pair, seed, m):
    """Mutual k-NN of the m anchors at the held-out end of a seeded split (ea_esap_split(n, n - m,
    m, seed)), each side centred on its own anchor mean, as the CLI computes it."""
    n = pair.n
    perm = np.empty(n, dtype=np.int32)
    check(lib.ea_esap_split(n, n - m, m, seed, ffi.from_buffer("int[]", perm)))
    rows = perm[n - m:]
    sides = []
    for x, d, basis in ((pair.an.a, pair.d_a, pair.bases[0]), (pair.an.b, pair.d_b, pair.bases[1])):
        full = np.frombuffer(ffi.buffer(x, 4 * n * d), dtype=np.float32).reshape(n, d)
        mean = np.frombuffer(ffi.buffer(lib.ea_esap_basis_mean(basis), 8 * d), dtype=np.float64)
        sides.append(np.ascontiguousarray((full[rows] - mean).astype(np.float32)))
    mk = ffi.new("ea_esap_mknn *")
    check(lib.ea_esap_mutual_knn(ffi.from_buffer("float[]", sides[0]), pair.d_a, ffi.from_buffer("float[]", sides[1]),
                                 pair.d_b, m, lib.EA_ESAP_MKNN_K, lib.EA_ESAP_MKNN_PERMS, seed, mk))
    return {"value": mk.value, "null": {"mean": mk.null_mean, "sd": mk.null_sd, "n": mk.n_perm},
            "p_value": mk.p_value, "chance": mk.chance, "k": mk.k, "items": mk.n}


def handshake(model_a, model_b, site="wte", text=None, max_tokens=0, ctx=None, K=None, seed=0, save_a=None,
              save_b=None, progress=None):
    """ESAP handshake: each model's spectrum at site ("wte", "hidden:L", "hidden:last",
    "hidden:LA,LB"; hidden sites over text, default the bundled calibration text), Pearson r of
    the C(k) curves over k = 1..K with the isotropic / power-law controls, and the mutual k-NN
    of the shared anchor tokens against its permutation null (what the verdict rests on).
    save_a/save_b write each side's spectrum message."""
    _models(model_a, model_b)
    K = 0 if K is None else _int_arg("K", K, 2)
    seed = _int_arg("seed", seed, 0, (1 << 63) - 1)
    pair = _Pair(model_a, model_b, site, text, max_tokens, ctx, progress)
    sa, sb = ffi.new("ea_esap_spectrum *"), ffi.new("ea_esap_spectrum *")
    try:
        for side, (m, s) in enumerate(((model_a, sa), (model_b, sb))):
            with m._lock:
                st = lib.ea_esap_spectrum_from_model(m._m, m._tok, side, pair.src, 0, s)
            pair.cbs.raise_pending()
            check(st)
        m = min(pair.n - 1, lib.EA_ESAP_MKNN_MAX_ITEMS)
        if m <= lib.EA_ESAP_MKNN_K:
            raise ArgumentError("handshake: %d shared anchors, too few for a mutual %d-NN" % (pair.n,
                                                                                            lib.EA_ESAP_MKNN_K), -4)
        mk = _mutual_knn(pair, seed, m)
        h = ffi.new("ea_esap_handshake *")
        check(lib.ea_esap_compare(sa, sb, K, seed, h))
        if save_a:
            check(lib.ea_esap_spectrum_save(sa, os.fsencode(save_a)))
        if save_b:
            check(lib.ea_esap_spectrum_save(sb, os.fsencode(save_b)))
        ctl = max(h.a_vs_isotropic, h.b_vs_isotropic, h.a_vs_powerlaw, h.b_vs_powerlaw)
        a, b = _spectrum_json(sa), _spectrum_json(sb)
        a["source"], b["source"] = model_a.path, model_b.path
        return {"a": a, "b": b, "K": h.K, "ck_pearson": h.ck_pearson, "threshold": h.threshold,
                "ck_above_threshold": bool(h.converged),
                "mutual_knn": mk, "verdict": "converged" if mk["p_value"] < MKNN_ALPHA else "diverged",
                "verdict_basis": "mutual_knn p_value < 0.01",
                "controls": {"a_vs_isotropic": h.a_vs_isotropic, "b_vs_isotropic": h.b_vs_isotropic,
                             "a_vs_powerlaw": h.a_vs_powerlaw, "b_vs_powerlaw": h.b_vs_powerlaw,
                             "isotropic_n_per_d": ISOTROPIC_FACTOR, "powerlaw_alpha": 1.0, "seed": seed},
                "above_controls": bool(math.isfinite(h.ck_pearson) and h.ck_pearson > ctl), "note": _NOTE_HANDSHAKE}
    finally:
        lib.ea_esap_spectrum_free(sa)
        lib.ea_esap_spectrum_free(sb)


class _Pair:
    """Both models' anchors and eigenbases (what align and message share)."""

    def __init__(self, model_a, model_b, repr_, text, max_tokens, ctx, progress, pairs="ids"):
        _models(model_a, model_b)
        if pairs not in PAIRS:
            raise ArgumentError("pairs must be one of %s, not %r" % (", ".join(PAIRS), pairs))
        self.pairs = pairs
        self.ma, self.mb = model_a, model_b
        self.cbs = cbs = Callbacks()
        src, keep = _source(repr_, text, max_tokens, ctx, cbs, progress)
        self.src, self._keep = src, keep
        self.an = ffi.new("ea_esap_anchors *")
        with model_a._lock, model_b._lock:
            build = lib.ea_esap_text_anchors if pairs == "text" else lib.ea_esap_anchors_from_models
            st = build(model_a._m, model_a._tok, model_b._m, model_b._tok, src, self.an)
        cbs.raise_pending()
        check(st)
        self.an = ffi.gc(self.an, lib.ea_esap_anchors_free)
        self.n, self.d_a, self.d_b = self.an.n, self.an.d_a, self.an.d_b
        self.bases = []
        for x, d in ((self.an.a, self.d_a), (self.an.b, self.d_b)):
            p = ffi.new("ea_esap_basis **")
            check(lib.ea_esap_basis_fit(x, self.n, d, p))
            self.bases.append(ffi.gc(p[0], lib.ea_esap_basis_free))

    def split(self, n_train, n_test):
        n = self.n
        n_test = _int_arg("n_test", n_test, 1) if n_test else (min(n // 5, DEFAULT_TEST) if n // 5 > 0 else 1)
        if n_test >= n:
            raise ArgumentError("test %d leaves no training anchors (%d anchors in all)" % (n_test, n))
        room = n - n_test
        n_train = _int_arg("anchors", n_train, 1) if n_train else min(room, DEFAULT_TRAIN)
        if n_train > room:
            raise ArgumentError("anchors %d + test %d exceed the %d anchors available" % (n_train, n_test, n))
        return n_train, n_test

    def names(self):
        out = []
        for side, m in ((0, self.ma), (1, self.mb)):
            buf = ffi.new("char[64]")
            lib.ea_esap_repr_name(ffi.addressof(self.src, "repr"), side, m._m, buf, 64)
            out.append(ffi.string(buf).decode())
        return out


def _retrieval(r):
    return r.p_at_1, r.p_at_10, r.csls_p_at_1, r.csls_p_at_10, r.mean_cos


def align(model_a, model_b, repr="wte", rank=None, anchors=0, test=0, seed=0, text=None, max_tokens=0, ctx=None,
          pairs="ids", progress=None):
    """ESAP alignment: orthogonal Procrustes between the two models' anchors (repr "wte" or hidden
    states "hidden:L" averaged over text), reduced to rank dimensions in each side's own
    eigenbasis; held-out retrieval P@1/P@10 (NN and CSLS), cosines, a shuffled-pairs null and the
    mutual k-NN of the held-out anchors. pairs: "ids" (tokens with the same bytes), "text" (words
    both tokenizers cover; hidden representations) or "none" (W fitted anchor-free)."""
    pair = _Pair(model_a, model_b, repr, text, max_tokens, ctx, progress, pairs)
    kmax = min(pair.d_a, pair.d_b)
    rank = min(kmax, DEFAULT_RANK) if rank is None else _int_arg("rank", rank, 1)
    if rank > kmax:
        raise ArgumentError("rank %d exceeds the smaller width min(%d, %d)" % (rank, pair.d_a, pair.d_b))
    n_train, n_test = pair.split(anchors, test)
    seed = _int_arg("seed", seed, 0, (1 << 63) - 1)
    za = np.empty((pair.n, rank), dtype=np.float32)
    zb = np.empty((pair.n, rank), dtype=np.float32)
    check(lib.ea_esap_basis_project(pair.bases[0], pair.an.a, pair.n, rank, ffi.from_buffer("float[]", za)))
    check(lib.ea_esap_basis_project(pair.bases[1], pair.an.b, pair.n, rank, ffi.from_buffer("float[]", zb)))
    r = ffi.new("ea_esap_align_report *")
    info = ffi.new("ea_esap_unanchored_info *")
    if pairs == "none":
        check(lib.ea_esap_unanchored_eval(ffi.from_buffer("float[]", za), ffi.from_buffer("float[]", zb), pair.n, rank,
                                          n_train, n_test, seed, ffi.NULL, r, info))
    else:
        check(lib.ea_esap_align_eval(ffi.from_buffer("float[]", za), ffi.from_buffer("float[]", zb), pair.n, rank,
                                     n_train, n_test, seed, ffi.NULL, r))
    mk = _mutual_knn(pair, seed, n_test)
    na, nb = pair.names()
    out = {"rank": r.rank, "train_anchors": r.train_anchors, "test_anchors": r.test_anchors,
           "p_at_1": r.test.p_at_1, "p_at_10": r.test.p_at_10, "csls_p_at_1": r.test.csls_p_at_1,
           "csls_p_at_10": r.test.csls_p_at_10, "test_cosine": r.test.mean_cos, "train_cosine": r.train_cosine,
           "chance_p_at_1": r.chance_p_at_1,
           "null": {"p_at_1": r.null.p_at_1, "p_at_10": r.null.p_at_10, "csls_p_at_1": r.null.csls_p_at_1,
                    "csls_p_at_10": r.null.csls_p_at_10, "test_cosine": r.null.mean_cos,
                    "train_cosine": r.null_train_cosine, "shuffles": lib.EA_ESAP_NULL_SHUFFLES},
           "pairs": pairs}
    if pairs == "none":
        out["anchor_free"] = {"init_pseudo_pairs": info.init_pairs, "refinements": info.iterations,
                              "final_pairs": info.final_pairs,
                              "p_at_1_over_null": r.test.p_at_1 / max(r.null.p_at_1, r.chance_p_at_1)}
    out.update({"mutual_knn": mk, "repr_a": na, "repr_b": nb, "anchors_total": pair.n, "d_a": pair.d_a,
                "d_b": pair.d_b, "seed": seed, "fingerprint_a": model_a.fingerprint,
                "fingerprint_b": model_b.fingerprint, "note": _NOTE_ALIGN})
    return out


def message(model_a, model_b, repr="wte", ranks=None, anchors=0, test=0, seed=0, text=None, max_tokens=0, ctx=None,
            pairs="ids", progress=None):
    """ESAP messages: A sends k eigen-coefficients of a held-out token's vector (float32 or
    float16), B maps them with W and resolves the token among its own vectors. ranks: message
    sizes (default 4, 8, 16, ... up to min(d_a, d_b)). pairs: as align's."""
    pair = _Pair(model_a, model_b, repr, text, max_tokens, ctx, progress, pairs)
    kmax = min(pair.d_a, pair.d_b)
    if ranks is None:
        ranks, k = [], 4
        while k < kmax and len(ranks) < 31:
            ranks.append(k)
            k *= 2
        ranks.append(kmax)
    ranks = [_int_arg("rank", k, 1, kmax) for k in ranks]
    if not ranks or len(ranks) > 32:
        raise ArgumentError("ranks: 1 to 32 message sizes expected")
    n_train, n_test = pair.split(anchors, test)
    seed = _int_arg("seed", seed, 0, (1 << 63) - 1)
    reps = []
    for k in ranks:
        r = ffi.new("ea_esap_message_report *")
        fn = lib.ea_esap_message_eval_unanchored if pairs == "none" else lib.ea_esap_message_eval
        check(fn(pair.bases[0], pair.an.a, pair.bases[1], pair.an.b, pair.n, k, n_train, n_test, seed, r))
        reps.append(r)
    na, nb = pair.names()
    full = reps[0].bytes_full
    return {"a": {"model": model_a.path, "fingerprint": model_a.fingerprint, "d": pair.d_a, "repr": na},
            "b": {"model": model_b.path, "fingerprint": model_b.fingerprint, "d": pair.d_b, "repr": nb},
            "pairs": pairs, "anchors_total": pair.n, "train_anchors": n_train, "test_anchors": n_test, "seed": seed,
            "bytes_full": full, "chance": reps[0].chance,
            "results": [{"rank": r.rank, "bytes_f32": r.bytes_f32, "bytes_f16": r.bytes_f16,
                         "compression_f32": full / r.bytes_f32, "compression_f16": full / r.bytes_f16,
                         "accuracy_f32": r.acc_f32, "accuracy_f16": r.acc_f16, "top10_f32": r.top10_f32,
                         "accuracy_reduced_f32": r.acc_reduced_f32, "null_accuracy": r.null_acc_f32} for r in reps],
            "note": _NOTE_MESSAGE}
