"""Shared fixtures: the bundled model, and the CLI whose --json output every binding result is
checked against (EIGENALIGN_CLI, default build/eigenalign of this source tree)."""
import json
import os
import subprocess

import pytest

# The package before anything that loads numpy: numpy's OpenBLAS (Debian: the pthread build, same
# libblas.so.3 soname) would otherwise be the one the library's BLAS calls bind to, and results
# would differ from the CLI's in the last bits (see eigenalign.TUNING).
import eigenalign  # noqa: F401,E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "models", "gpt2-micro")
CALIB = os.path.join(ROOT, "data", "calib.txt")
EVAL = os.path.join(ROOT, "data", "eval.txt")
CLI = os.environ.get("EIGENALIGN_CLI", os.path.join(ROOT, "build", "eigenalign"))


@pytest.fixture(scope="session")
def ea():
    import eigenalign
    return eigenalign


@pytest.fixture(scope="session")
def model(ea):
    return ea.Model.load(MODEL)


@pytest.fixture(scope="session")
def cli():
    if not os.access(CLI, os.X_OK):
        pytest.fail("the eigenalign tool is not built at %s (set EIGENALIGN_CLI)" % CLI)

    def run(*args):
        r = subprocess.run([CLI] + [str(a) for a in args] + ["--json"], capture_output=True, text=True,
                           env=dict(os.environ, EA_PROGRESS="0"))
        assert r.returncode == 0, "%s %s failed: %s" % (CLI, " ".join(map(str, args)), r.stderr)
        return json.loads(r.stdout)
    return run


def close(a, b, rel=1e-9, abs_=1e-12, path=""):
    """Recursive comparison of two JSON-like values: numbers within rel/abs, the rest equal."""
    if isinstance(b, dict):
        assert isinstance(a, dict), path
        for k in b:
            assert k in a, "%s: key %r missing" % (path, k)
            close(a[k], b[k], rel, abs_, path + "." + k)
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), "%s: lengths %s vs %d" % (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, rel, abs_, "%s[%d]" % (path, i))
    elif isinstance(b, bool) or b is None or isinstance(b, str):
        assert a == b, "%s: %r != %r" % (path, a, b)
    else:
        assert a == pytest.approx(b, rel=rel, abs=abs_), "%s: %r != %r" % (path, a, b)


def without(d, *keys):
    """A copy of a dict without the keys that legitimately differ (timings, paths)."""
    return {k: v for k, v in d.items() if k not in keys}
