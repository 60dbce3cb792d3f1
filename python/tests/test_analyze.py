"""analyze() against `eigenalign analyze --json` on the same text: every site, layer, head and
variant, every number; and the conveniences (k_at, C, summary)."""
import pytest

from conftest import CALIB, MODEL, close


@pytest.fixture(scope="module")
def pair(ea, model, cli):
    got = ea.analyze(model, CALIB, max_tokens=2048, ctx=256, sites=["hidden", "k", "wte"], variance=[0.8])
    ref = cli("analyze", "--model", MODEL, "--text", CALIB, "--max-tokens", 2048, "--ctx", 256, "--sites",
              "hidden,k,wte", "--variance", 0.8)
    return got, ref


def test_matches_cli(pair):
    got, ref = pair
    assert len(got["sites"]) == len(ref["sites"]) == (5 * 3 + 4 * 5 * 3 + 2)
    ref = dict(ref, model=got["model"])
    close({k: v for k, v in got.items() if k != "timing"}, {k: v for k, v in ref.items() if k != "timing"},
          rel=1e-9, abs_=1e-12)


def test_conveniences(pair):
    got, _ = pair
    for s in got["sites"]:
        assert s.k_at(0.95) == s["k95"] and s.k_at(0.9) == s["k90"] and s.k_at(0.8) == s["k_var"]["0.8"]
        assert s.C(9) == s["C"]["9"] and s.C(22) == s["C"]["22"]  # ea_spectrum_cumvar, as the CLI
    h = got.spectrum("hidden", 2)
    assert h["variant"] == "all" and h.Df == h["Df"] > 1
    assert len(got.select("k", 1, head=None, variant="exclude_first")) == 5  # whole row + 4 heads
    text = got.summary()
    assert "hidden" in text and "wte" in text and "%.2f" % h["Df"] in text


def test_readme_line(ea, model):
    """The README's one-liner: the bundled calibration text by default."""
    s = ea.analyze(model, sites="hidden", variants="all", max_tokens=1024).summary()
    assert s.count("\n") == 2 + model.n_layer + 1
