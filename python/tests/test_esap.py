"""ESAP: handshake, align and message against the CLI for the same models and options."""
import os

import pytest

from conftest import CALIB, MODEL, ROOT, close

MINI = os.path.join(os.path.dirname(ROOT), "shared", "models", "gpt2-mini")


@pytest.fixture(scope="module")
def other(ea, model):
    """gpt2-mini from ../shared when there (two different widths), else the bundled model again."""
    return (ea.Model.load(MINI), MINI) if os.path.isdir(MINI) else (model, MODEL)


def test_handshake_matches_cli(ea, model, other, cli):
    got = ea.handshake(model, other[0], site="hidden:last", max_tokens=2048, K=64)
    ref = cli("handshake", "--model-a", MODEL, "--model-b", other[1], "--site", "hidden:last", "--max-tokens", 2048,
              "--K", 64)
    for side in "ab":
        ref[side]["source"] = got[side]["source"]
    close(got, ref, rel=1e-9)


def test_align_matches_cli(ea, model, other, cli):
    got = ea.align(model, other[0], repr="wte", rank=16, anchors=2000, test=500, seed=3)
    ref = cli("align", "--model-a", MODEL, "--model-b", other[1], "--repr", "wte", "--rank", 16, "--anchors", 2000,
              "--test", 500, "--seed", 3)
    close(got, ref, rel=1e-9)


def test_message_matches_cli(ea, model, other, cli):
    got = ea.message(model, other[0], ranks=[4, 16], anchors=2000, test=500)
    ref = cli("message", "--model-a", MODEL, "--model-b", other[1], "--ranks", "4,16", "--anchors", 2000,
              "--test", 500)
    for side in "ab":
        ref[side]["model"] = got[side]["model"]
    close(got, ref, rel=1e-9)


def test_handshake_saves_messages(ea, model, tmp_path):
    ea.handshake(model, model, save_a=tmp_path / "a.json", save_b=tmp_path / "b.json")
    assert (tmp_path / "a.json").read_text().startswith("{")
