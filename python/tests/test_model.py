"""Model: tokenize, generate, perplexity against the CLI; activations against an independent
computation (tied embeddings: logits = final hidden state · wteᵀ) and as float32 C-order arrays."""
import numpy as np
import pytest

from conftest import CALIB, MODEL, close


def test_config(model):
    assert model.config["n_layer"] == 4 and model.config["n_embd"] == 128 and model.config["vocab_size"] == 50257
    assert len(model.fingerprint) >= 8


def test_tokenize_matches_cli(model, cli):
    text = "Hello world! Ünïcödé and <|endoftext|> numbers 12345."
    assert model.tokenize(text) == cli("tokenize", "--text", text)["ids"]
    assert model.tokenize(text, special=True) == cli("tokenize", "--text", text, "--special")["ids"]
    assert model.detokenize(model.tokenize(text)) == text


def test_generate_matches_cli(model, cli):
    got = model.generate("The meaning of life is", n=12)
    ref = cli("generate", "--prompt", "The meaning of life is", "-n", 12)
    assert got["ids"] == ref["ids"] and got["prompt_ids"] == ref["prompt_ids"] and got["text"] == ref["text"]
    for k in ("kv", "cache_tokens", "cache_bytes", "codec_overhead_bytes"):
        assert got[k] == ref[k], k


def test_generate_sampled_and_q8_match_cli(model, cli):
    got = model.generate("Once upon a time", n=10, temperature=0.8, top_k=40, seed=7, kv="q8")
    ref = cli("generate", "--prompt", "Once upon a time", "-n", 10, "--temperature", 0.8, "--top-k", 40,
              "--seed", 7, "--kv", "q8")
    assert got["ids"] == ref["ids"] and got["kv"] == "q8" and got["cache_bytes"] == ref["cache_bytes"]


def test_perplexity_matches_cli(model, cli):
    got = model.perplexity(CALIB, ctx=256, max_tokens=1500, protocol="llama")
    ref = cli("perplexity", "--text", CALIB, "--ctx", 256, "--max-tokens", 1500, "--protocol", "llama")
    close({k: v for k, v in got.items() if k != "seconds"}, {k: v for k, v in ref.items() if k != "seconds"})
    ids = model.tokenize(open(CALIB, encoding="utf-8").read())[:1500]
    assert model.perplexity(ids, ctx=256, protocol="llama")["ppl"] == pytest.approx(got["ppl"], rel=1e-12)


def test_activations_shapes_and_layout(model):
    acts = model.activations("The cat sat on the mat.", sites=["hidden", "q", "k", "v"])
    n = len(model.tokenize("The cat sat on the mat."))
    assert acts["hidden"].shape == (5, n, 128) and acts["k"].shape == (4, n, 128)
    for a in acts.values():
        assert a.dtype == np.float32 and a.flags["C_CONTIGUOUS"] and np.isfinite(a).all()
    sel = model.activations("The cat sat on the mat.", sites="k", layers=[2])
    np.testing.assert_array_equal(sel["k"][0], acts["k"][2])


def test_activations_against_logits(model):
    """Tied embeddings: the logits are the final hidden state (after ln_f) times wteᵀ."""
    from eigenalign._ffi import ffi, lib
    ids = model.tokenize("Independent check of the captured residual stream.")
    h = model.activations(ids, sites="hidden", layers=[model.n_layer])["hidden"][0]
    V, d = model.config["vocab_size"], model.d
    wte = np.frombuffer(ffi.buffer(lib.ea_model_wte(model._m), 4 * V * d), np.float32).reshape(V, d)
    ref = h.astype(np.float64) @ wte.T.astype(np.float64)
    got = model.logits(ids)
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()


def test_long_calls_release_the_gil(model):
    """While the library runs a perplexity pass in one thread, Python code keeps running in another."""
    import threading
    import time
    t = threading.Thread(target=model.perplexity, args=(CALIB,), kwargs={"max_tokens": 1024})
    t.start()
    time.sleep(0.05)
    count = 0
    while t.is_alive():
        count += 1
        time.sleep(0)
    t.join()
    assert count > 100
