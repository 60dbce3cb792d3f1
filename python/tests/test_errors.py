"""Errors: library failures become exceptions carrying the library's message; wrong arguments
from Python raise instead of crashing; progress callbacks are called and their exceptions
propagate; the library is found (and refused) as documented."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import CALIB, MODEL, ROOT


def test_missing_model(ea, tmp_path):
    with pytest.raises(ea.IOError_) as e:
        ea.Model.load(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(e.value) and isinstance(e.value, OSError)
    assert e.value.status == -1 and e.value.status_name


def test_corrupt_compressor_file(ea, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ea.Error) as e:
        ea.ActivationCompressor.load(bad)
    assert str(bad) in str(e.value)


def test_bad_arguments(ea, model):
    with pytest.raises(ea.ArgumentError):
        ea.KVCodec("zz9", model)
    with pytest.raises(TypeError):
        ea.KVCodec(None, model)
    with pytest.raises(ea.ArgumentError):
        model.perplexity(CALIB, protocol="nope")
    with pytest.raises(ea.ArgumentError):
        model.perplexity([1, 2, -5])
    with pytest.raises(ea.ArgumentError):
        model.perplexity([])
    with pytest.raises(TypeError):
        model.generate("x", n="ten")
    with pytest.raises(ea.ArgumentError):
        model.generate("x", n=10 ** 6)
    with pytest.raises(ea.ArgumentError):
        model.activations("x " * 2000)
    with pytest.raises(ea.ArgumentError):
        model.activations("x", sites=["nope"])
    with pytest.raises(ea.ArgumentError):
        model.activations("x", layers=[99])
    with pytest.raises(ea.ArgumentError):
        ea.analyze(model, CALIB, sites=["hidden", "bogus"])
    with pytest.raises(ea.ArgumentError):
        ea.ActivationCompressor.from_model(model, CALIB, target_variance=1.5)
    with pytest.raises(ea.ArgumentError):
        ea.align(model, model, repr="nonsense")
    with pytest.raises(TypeError):
        ea.analyze("not a model")
    with pytest.raises(ea.ArgumentError):
        ea.EigenProjector.fit(np.array([[np.nan, 1.0], [2.0, 3.0], [1.0, 1.0]]))


def test_empty_and_missing_text(ea, model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ea.ArgumentError, match="empty"):
        model.perplexity(str(empty))
    with pytest.raises(ea.IOError_, match="missing.txt"):
        ea.analyze(model, str(tmp_path / "missing.txt"))


def test_mismatched_compressor(ea, model, tmp_path):
    mini = os.path.join(os.path.dirname(ROOT), "shared", "models", "gpt2-mini")
    if not os.path.isdir(mini):
        pytest.skip("../shared/models/gpt2-mini not present (a fresh clone has no ../shared)")
    c = ea.ActivationCompressor.from_model(model, CALIB, rank=8, sites="hidden", max_tokens=600)
    with pytest.raises(ea.MismatchError):
        c.evaluate(ea.Model.load(mini), CALIB, max_tokens=100)


def test_progress_called_and_exceptions_propagate(ea, model):
    seen = []
    ea.ActivationCompressor.from_model(model, CALIB, rank=4, sites="hidden", max_tokens=1100,
                                       progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] == 1100

    def boom(d, t):
        raise KeyboardInterrupt("stop")
    with pytest.raises(KeyboardInterrupt):
        ea.analyze(model, CALIB, sites="hidden", max_tokens=1100, progress=boom)
    # the model is usable afterwards (the capture hook was removed)
    assert model.generate("Hi", n=3)["ids"]


def _python(code, **env):
    e = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e)


def test_library_search_and_tuning():
    r = _python("import eigenalign as ea; print(ea.LIBRARY_PATH); print(ea.TUNING)")
    assert r.returncode == 0, r.stderr
    assert "libeigenalign.so" in r.stdout
    r = _python("import eigenalign", EIGENALIGN_LIBRARY="/nonexistent/libeigenalign.so")
    assert r.returncode != 0 and "ImportError" in r.stderr and "/nonexistent" in r.stderr
    # the tuning is what the tool applies (the library decides, in a child); EA_NO_REEXEC disables it
    r = _python("import os, eigenalign as ea; print(ea.TUNING['applied'].get('GOMP_SPINCOUNT'), "
                "os.environ.get('GOMP_SPINCOUNT'))", GOMP_SPINCOUNT="", OMP_WAIT_POLICY="")
    r = _python("import os, eigenalign as ea; print(os.environ.get('GOMP_SPINCOUNT'))")
    assert r.stdout.strip() in ("20000", os.environ.get("GOMP_SPINCOUNT", "20000"))
    r = _python("import os, eigenalign as ea; print(ea.TUNING['skipped'])", EA_NO_REEXEC="1")
    assert "EA_NO_REEXEC" in r.stdout


def test_blas_loaded_first_is_reported():
    """numpy first: its OpenBLAS takes the library's BLAS calls (shared sonames), so the import
    says so; eigenalign first: the library's own BLAS, and nothing to report."""
    r = _python("import numpy, eigenalign as ea; print(bool(ea.TUNING['blas_loaded_before']))")
    assert r.returncode == 0 and r.stdout.strip() == "True" and "Import eigenalign before numpy" in r.stderr
    r = _python("import eigenalign as ea, numpy; print(ea.TUNING['blas_loaded_before'])")
    assert r.returncode == 0 and r.stdout.strip() == "[]" and "RuntimeWarning" not in r.stderr
