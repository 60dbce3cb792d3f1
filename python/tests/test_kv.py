"""KV codecs: eval_kv against `eigenalign eval --json` (both scored by ea_kv_codecs_eval, so equal
to float64 rounding), bench_memory against `eigenalign bench-memory --no-measure`, KVCodec
save/load."""
import pytest

from conftest import CALIB, EVAL, MODEL, close


def test_eval_kv_matches_cli(ea, model, cli):
    got = ea.eval_kv(model, EVAL, ["f16", "q8", "q4"], ctx=256, max_tokens=512)
    ref = cli("eval", "--model", MODEL, "--text", EVAL, "--kv", "f16,q8,q4", "--ctx", 256, "--max-tokens", 512,
              "--decode-tokens", 0)
    drop = ("prefill_tok_s",)  # timings
    assert got["tokens"] == ref["tokens"] and got["ctx"] == ref["ctx"] == 256
    # the same library call scores both: equal to the last bit, or within float64 rounding
    close({k: v for k, v in got["baseline"].items() if k not in drop},
          {k: v for k, v in ref["baseline"].items() if k not in drop}, rel=1e-12, abs_=0)
    assert len(got["codecs"]) == len(ref["codecs"]) == 3
    for g, r in zip(got["codecs"], ref["codecs"]):
        close({k: v for k, v in g.items() if k not in drop}, {k: v for k, v in r.items() if k not in drop},
              rel=1e-12, abs_=0)
    assert got["codecs"][2]["kl"] > got["codecs"][1]["kl"] > got["codecs"][0]["kl"] > 0


def test_eval_kv_decode_rate(ea, model):
    r = ea.eval_kv(model, EVAL, ["q8"], ctx=128, max_tokens=256, decode_tokens=8)
    assert r["baseline"]["decode_tok_s"] > 0 and r["codecs"][0]["decode_tok_s"] > 0


def test_klt_codec_fit_save_load(ea, model, tmp_path):
    c = ea.KVCodec("klt:2", model, calib=CALIB, calib_max_tokens=768, ctx=128)
    assert 1.5 < c.bits_per_value < 2.6 and c.overhead_bytes > 0 and c.resident_bytes >= c.overhead_bytes
    c.save(tmp_path / "klt.safetensors")
    d = ea.KVCodec.load(tmp_path / "klt.safetensors", model)
    assert d.bits_per_value == c.bits_per_value and d.overhead_bytes == c.overhead_bytes
    r = ea.eval_kv(model, EVAL, [c, d], ctx=128, max_tokens=256)
    assert r["codecs"][0]["kl"] == r["codecs"][1]["kl"] and r["codecs"][0]["kl"] < 0.05
    assert r["calibration"]["source"] == CALIB


def test_bench_memory_matches_cli(ea, model, cli):
    got = ea.bench_memory(model, [64, 512, 2048], codecs=["f32", "f16", "q8", "q4"])
    ref = cli("bench-memory", "--model", MODEL, "--codec", "f32,f16,q8,q4", "--seq", "64,512,2048", "--no-measure")
    measured = ("cache_allocated_bytes", "peak_rss_bytes", "rss_growth_bytes")
    close({k: v for k, v in got.items() if k not in ("rows", "model")},
          {k: v for k, v in ref.items() if k not in ("rows", "model")})
    for g, r in zip(got["rows"], ref["rows"]):
        close({k: v for k, v in g.items() if k not in measured}, {k: v for k, v in r.items() if k not in measured})
        if g["seq"] <= model.config["n_positions"]:
            assert g["cache_allocated_bytes"] >= g["kv_bytes"] * 0.99
    assert len(got["rows"]) == 12
