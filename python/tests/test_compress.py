"""ActivationCompressor and EigenProjector: fitted as `eigenalign fit` fits, files interchangeable
with the CLI, evaluate() against `eigenalign compress --json`, projections against NumPy, arrays
round-tripped in every accepted shape and layout."""
import numpy as np
import pytest

from conftest import CALIB, EVAL, MODEL, close


@pytest.fixture(scope="module")
def comp(ea, model):
    return ea.ActivationCompressor.from_model(model, CALIB, target_variance=0.9, max_tokens=3000)


def test_fit_matches_cli_file(ea, comp, cli, tmp_path):
    path = tmp_path / "cli.safetensors"
    cli("fit", "--model", MODEL, "--text", CALIB, "--variance", 0.9, "--max-tokens", 3000, "-o", path)
    ref = ea.ActivationCompressor.load(path)
    assert [(p.site, p.layer, p.rank) for p in comp.projectors] == [(p.site, p.layer, p.rank) for p in ref.projectors]
    for a, b in zip(comp.projectors, ref.projectors):
        np.testing.assert_allclose(a.basis, b.basis, atol=1e-6)
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-6)


def test_evaluate_matches_cli(comp, model, cli, tmp_path):
    path = tmp_path / "py.safetensors"
    comp.save(path)
    got = comp.evaluate(model, EVAL, max_tokens=1024, inject=2)
    ref = cli("compress", "--model", MODEL, "--compressor", path, "--text", EVAL, "--max-tokens", 1024,
              "--inject", 2)
    close({k: v for k, v in got.items() if k not in ("seconds", "model", "texts")},
          {k: v for k, v in ref.items() if k not in ("seconds", "model", "texts")}, rel=1e-9)
    assert got["quality"]["kl"] > 0 and 0 < got["quality"]["top1"] < 1


def test_compress_hidden_shapes(comp, model):
    h = model.activations("The quick brown fox jumps over the lazy dog.")["hidden"]
    p = comp.projector("hidden", model.n_layer)
    z2 = comp.compress_hidden(h[-1])
    assert z2.shape == (h.shape[1], p.rank) and z2.dtype == np.float32 and z2.flags["C_CONTIGUOUS"]
    z3 = comp.compress_hidden(np.stack([h[-1], h[-1]]))
    assert z3.shape == (2, h.shape[1], p.rank)
    np.testing.assert_allclose(z3[1], z2, rtol=1e-5, atol=1e-5)  # one GEMM over both: blocking differs
    # float64 and Fortran-order input give the same coefficients
    np.testing.assert_allclose(comp.compress_hidden(np.asfortranarray(h[-1].astype(np.float64))), z2, atol=1e-6)
    x = comp.reconstruct(z3)
    assert x.shape == (2, h.shape[1], model.d) and x.dtype == np.float32
    # against NumPy: z = (x - mean) E, x^ = mean + z Eᵀ
    E, mu = p.basis, p.mean
    np.testing.assert_allclose(z2, (h[-1] - mu) @ E, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(x[0], mu + z2 @ E.T, rtol=1e-4, atol=1e-4)


def test_layer_choice_and_errors(ea, comp, model):
    h = model.activations("Some text here.")["hidden"]
    assert comp.compress_hidden(h[1], layer=1).shape[-1] == comp.projector("hidden", 1).rank
    with pytest.raises(ea.ArgumentError):
        comp.compress_hidden(h[1][:, :64])
    with pytest.raises(ea.ArgumentError):
        comp.compress_hidden(h[1][0])  # 1-d
    with pytest.raises(ea.ArgumentError):
        comp.projector("q", 0)
    with pytest.raises(ea.ArgumentError):
        comp.reconstruct(np.zeros((3, 5), np.float32))


def test_benchmark_accounting(comp):
    b = comp.benchmark([64, 256, 1024, 4096])["benchmarks"]
    assert [r["seq_length"] for r in b] == [64, 256, 1024, 4096]
    ps = comp.projectors
    for r in b:
        s = r["seq_length"]
        orig = sum(s * p.dim * 4 for p in ps)
        stored = sum(s * p.rank * 4 + 4 * (2 * p.dim + p.dim * p.rank) for p in ps)
        assert r["original_bytes"] == orig and r["reduction"] == pytest.approx(orig / stored)
    assert b[0]["reduction"] < b[-1]["reduction"] < b[-1]["reduction_without_overhead"]


def test_projector_fit_against_numpy(ea):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)) @ np.diag(np.linspace(3, 0.1, 16)) @ np.linalg.qr(rng.standard_normal((16, 16)))[0]
    p = ea.EigenProjector.fit(x, rank=5)
    ev = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    np.testing.assert_allclose(p.eigenvalues, ev, rtol=1e-4)
    assert p.rank == 5 and p.dim == 16 and p.variance_kept == pytest.approx(ev[:5].sum() / ev.sum(), rel=1e-5)
    np.testing.assert_allclose(p.basis.T @ p.basis, np.eye(5), atol=1e-5)
    q = ea.EigenProjector.from_parts(p.mean, p.basis, p.eigenvalues)
    np.testing.assert_array_equal(q.compress(x), p.compress(x))
    xf = x.astype(np.float32)
    xh = p.reconstruct(p.compress(xf)).astype(np.float64)
    want = np.sqrt(((xf - xh) ** 2).sum() / (xf.astype(np.float64) ** 2).sum())  # independent, float64
    assert 0 < p.error(x) < 1 and p.error(x) == pytest.approx(want, rel=1e-9)
    with pytest.raises(ea.FormatError, match="orthonormal"):
        ea.EigenProjector.from_parts(p.mean, p.basis * 2, p.eigenvalues)
