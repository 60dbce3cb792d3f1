"""The research note's example, measured: fit an activation compressor on calibration text,
compress a sentence's hidden states to k dimensions and back, then count memory correctly
(activations and the KV cache) at 64..4096 tokens, and check what compression does to the model.

    PYTHONPATH=python python3 python/examples/compress_llm.py [MODEL_DIR]
"""
import os
import sys
import time

import eigenalign as ea  # before numpy: the library then binds to its own OpenBLAS (see ea.TUNING)
import numpy as np

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
model = ea.Model.load(sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "models", "gpt2-micro"))
print(model)

# 1. Fit: mean + top eigenvectors per site, keeping 95% of the variance (bundled calibration text).
t0 = time.time()
comp = ea.ActivationCompressor.from_model(model, target_variance=0.95)
info = comp.info
print("fitted on %d tokens in %.1f s: %r" % (info["calib_tokens"], time.time() - t0, comp))

# 2. Compress hidden states, (batch, seq, d) -> (batch, seq, k), and reconstruct them.
sentences = ["The capital of France is Paris, and the capital of Italy is Rome.",
             "Transformers keep a cache of keys and values for every token they have seen."]
layer = model.n_layer  # the final hidden state (after ln_f)
h = [model.activations(s, sites="hidden", layers=[layer])["hidden"][0] for s in sentences]
seq = min(len(x) for x in h)
batch = np.stack([x[:seq] for x in h])  # (2, seq, d)
z = comp.compress_hidden(batch, layer=layer)
back = comp.reconstruct(z, layer=layer)
err = np.linalg.norm(batch - back) / np.linalg.norm(batch)
cos = np.mean(np.sum(batch * back, -1) / (np.linalg.norm(batch, axis=-1) * np.linalg.norm(back, axis=-1)))
print("hidden states %s -> coefficients %s -> %s: relative error %.3f, mean cosine %.4f" % (
    batch.shape, z.shape, back.shape, err, cos))

# 3. Memory, counted with the projectors' own storage (the note left it out).
print("\nactivation memory (all %d projectors, float32):" % len(comp.projectors))
print("%8s %12s %12s %12s %9s %20s" % ("tokens", "original", "compressed", "overhead", "reduction", "without overhead"))
for r in comp.benchmark([64, 256, 1024, 4096])["benchmarks"]:
    print("%8d %12d %12d %12d %8.2fx %19.2fx" % (r["seq_length"], r["original_bytes"], r["compressed_bytes"],
                                                  r["overhead_bytes"], r["reduction"], r["reduction_without_overhead"]))
kv = ea.bench_memory(model, [64, 256, 1024, 4096], codecs=["f32", "f16", "q8", "q4", "pca:9"])
print("\nKV cache plus codec overhead (pca:9 is the note's method; the note claimed %gx):" % kv["claimed_ratio"])
for r in (r for r in kv["rows"] if r["seq"] in (64, 4096)):
    print("%8d %-6s %12d bytes  %6.2fx vs f32" % (r["seq"], r["codec"], r["kv_plus_overhead_bytes"], r["ratio_vs_f32"]))

# 4. What it costs: the model with its residual stream replaced by the reconstruction, unseen text.
text = os.path.join(root, "data", "eval.txt")
q = comp.evaluate(model, text, max_tokens=4096)
hid = [s for s in q["sites"] if s["site"] == "hidden"]
print("\non %d unseen tokens: hidden recon error %.3f (mean over %d layers, mean k %.1f of %d)" % (
    q["tokens"], np.mean([s["recon_error"] for s in hid]), len(hid), np.mean([s["k"] for s in hid]), model.d))
print("ppl %.2f -> %.2f, KL %.4f nats, top-1 agreement %.1f%%" % (
    q["quality"]["ppl_full"], q["quality"]["ppl_compressed"], q["quality"]["kl"], 100 * q["quality"]["top1"]))
