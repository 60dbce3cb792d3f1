#!/usr/bin/env python3
"""Write the seed corpora fuzz/corpus/<target>/ from the repository's real files (standard library
only; each seed < 100 KB). Rerun after the inputs change:  python3 fuzz/make_seeds.py

- fuzz_safetensors: the bundled gpt2-micro checkpoint cut down to the tensors that fit in 3 KB
  (header rewritten to match, so the seed is valid), the same from a shard of the tiny test
  model, one file with every dtype, the hostile cases of tests/hostile.
- fuzz_config: config.json of gpt2-micro, the tiny test model, hostile configs.
- fuzz_index: the tiny model's two-shard index, hostile indexes.
- fuzz_tokenizer: first byte = parse_special flag, then text: tokenizer fixture cases, slices of
  data/eval.txt, invalid UTF-8, special-token text.
- fuzz_tokenizer_load: vocab.json restricted to ids < 600 (all 256 byte tokens included), NUL,
  the merges.txt lines that stay inside it.
- fuzz_tokenizer_json: tokenizer.json NUL tokenizer_config.json: each real file of
  tests/fixtures/tokenizers cut to its ids < 600 (merges inside them kept, added tokens
  renumbered after them), and the small hand-made file of tests/test_tokenizer_json_hostile.c.
- fuzz_esap_message: spectrum messages (power law, flat, d = 1) in the format of
  src/esap/spectrum_json.c.
- fuzz_compressor: compressors fitted by the CLI on gpt2-micro (small ranks so each is < 100 KB);
  regenerated only with --cli PATH/TO/eigenalign, otherwise the committed ones are kept.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")
MICRO = os.path.join(ROOT, "models", "gpt2-micro")
HOSTILE = os.path.join(ROOT, "tests", "hostile")
LIMIT = 90 * 1024


def read(path):
    with open(path, "rb") as f:
        return f.read()


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    assert len(data) < 100 * 1024, (target, name, len(data))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def cut_safetensors(path, budget):
    """The first tensors of a real checkpoint (by offset) that fit the budget, as a valid file."""
    raw = read(path)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    new, blob = {}, b""
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        b, e = t["data_offsets"]
        if len(blob) + (e - b) > budget:
            continue
        new[name] = dict(t, data_offsets=[len(blob), len(blob) + e - b])
        blob += data[b:e]
    if meta is not None:
        new["__metadata__"] = meta
    hs = json.dumps(new, separators=(",", ":"))
    hs += " " * (-len(hs) % 8)
    return struct.pack("<Q", len(hs)) + hs.encode() + blob


def mixed_dtypes():
    """Every dtype the reader knows, a scalar, an empty tensor and metadata, in ~600 bytes."""
    parts = [("f32", "F32", [2, 2], struct.pack("<4f", 1, -2, 3.5, 0)),
             ("f16", "F16", [3], struct.pack("<3e", 1, -0.5, 65504)),
             ("bf16", "BF16", [2], b"\x80\x3f\x00\xc0"),
             ("i32", "I32", [2], struct.pack("<2i", 7, -7)),
             ("i64", "I64", [1], struct.pack("<q", 1 << 40)),
             ("f64", "F64", [], struct.pack("<d", 0.25)),
             ("empty", "F32", [0, 4], b"")]
    header, blob = {"__metadata__": {"format": "pt", "note": "seed"}}, b""
    for name, dt, shape, data in parts:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    hs = json.dumps(header, separators=(",", ":"))
    hs += " " * (-len(hs) % 8)
    return struct.pack("<Q", len(hs)) + hs.encode() + blob


def hostile_files(prefix, fname):
    for case in sorted(os.listdir(HOSTILE)):
        p = os.path.join(HOSTILE, case, fname)
        if case.startswith(prefix) and os.path.isfile(p) and os.path.getsize(p) < 8192:
            yield case, read(p)


def esap_message(ev, K, site="wte", fp="0123456789abcdef"):
    ev = sorted(ev, reverse=True)
    total = sum(ev)
    ev = [v / total for v in ev]
    ck, acc = [], 0.0
    for v in ev[:K]:
        acc += v
        ck.append(acc)
    df = 1.0 / sum(v * v for v in ev)
    fmt = lambda xs: "[" + ", ".join("%.17g" % x for x in xs) + "]"
    return ('{"format": "eigenalign-esap-spectrum", "version": 1, "fingerprint": "%s", "site": "%s", "d": %d, '
            '"K": %d, "Df": %.17g, "eigenvalues": %s, "ck": %s}\n' % (fp, site, len(ev), K, df, fmt(ev), fmt(ck))).encode()


def compressor_seeds(cli):
    d = os.path.join(OUT, "fuzz_compressor")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    runs = {"hidden_rank1": ["--sites", "hidden", "--rank", "1"],
            "k_per_head_rank2": ["--sites", "k", "--per-head", "--rank", "2"]}
    for name, extra in runs.items():
        subprocess.run([cli, "fit", "--model", MICRO, "--max-tokens", "256", "-o", os.path.join(d, name)] + extra,
                       check=True, stdout=subprocess.DEVNULL)


def tokenizer_json_seeds():
    base = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
    for name in ("gpt2", "llama2", "llama3", "qwen3"):
        j = json.loads(read(os.path.join(base, name, "tokenizer.json")))
        cfg = read(os.path.join(base, name, "tokenizer_config.json"))
        m = j["model"]
        keep = {k: v for k, v in m["vocab"].items() if v < 600}
        merges = []
        for mg in m["merges"]:
            a, b = mg.split(" ") if isinstance(mg, str) else mg
            if a in keep and b in keep and a + b in keep:
                merges.append(mg)
        m["vocab"], m["merges"] = keep, merges
        added = []
        for i, t in enumerate(j["added_tokens"][:8]):
            t = dict(t)
            if t["id"] >= 600:
                t["id"] = 600 + i
            added.append(t)
        j["added_tokens"] = added
        ids = {t["content"]: t["id"] for t in added}
        pp = j.get("post_processor") or {}
        for st in (pp.get("special_tokens") or {}).values():
            st["ids"] = [ids.get(st["id"], 0)]
        cfg = json.loads(cfg)
        cfg.pop("chat_template", None)
        cfg.pop("added_tokens_decoder", None)
        data = json.dumps(j, ensure_ascii=False).encode() + b"\0" + json.dumps(cfg).encode()
        assert len(data) < LIMIT, (name, len(data))
        put("fuzz_tokenizer_json", name + "600", data)
    hand = {"added_tokens": [{"id": 5, "content": "<s>", "single_word": False, "lstrip": True, "rstrip": False,
                              "normalized": False, "special": True},
                             {"id": 6, "content": "xy", "single_word": True, "lstrip": False, "rstrip": True,
                              "normalized": True, "special": False}],
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Prepend", "prepend": "\u2581"},
                                                                {"type": "Replace", "pattern": {"Regex": " +"},
                                                                 "content": "\u2581"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\s+|\\p{L}+"}, "behavior": "MergedWithNext", "invert": True},
                {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}]},
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                        {"Sequence": {"id": "A", "type_id": 0}}],
                               "special_tokens": {"<s>": {"id": "<s>", "ids": [5], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [{"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
                      "ignore_merges": True, "vocab": {"a": 0, "b": 1, "ab": 2, "\u2581": 3, "<unk>": 4,
                                                        "<0x41>": 7, "\u2581a": 8},
                      "merges": ["a b", ["\u2581", "a"]]}}
    text = json.dumps(hand).encode()
    put("fuzz_tokenizer_json", "handmade", text + b"\0" + b'{"add_bos_token": true, "bos_token": "<s>"}')


def main():
    for target in os.listdir(OUT) if os.path.isdir(OUT) else []:
        if target != "fuzz_compressor":
            shutil.rmtree(os.path.join(OUT, target))
    if len(sys.argv) == 3 and sys.argv[1] == "--cli":
        compressor_seeds(sys.argv[2])
    # esap messages
    put("fuzz_esap_message", "power_law", esap_message([1.0 / i for i in range(1, 17)], 16))
    put("fuzz_esap_message", "flat_k2", esap_message([1.0] * 4, 2, site="hidden:3"))
    put("fuzz_esap_message", "d1", esap_message([2.5], 1))
    for name in ("a.spectrum", "b.spectrum"):
        for case, data in hostile_files("esap_", name):
            put("fuzz_esap_message", case + "_" + name[0], data)
    # safetensors
    # Small seeds keep executions fast: the header is what the reader parses, not the data.
    put("fuzz_safetensors", "micro_cut", cut_safetensors(os.path.join(MICRO, "model.safetensors"), 3000))
    put("fuzz_safetensors", "mini_shard_cut", cut_safetensors(os.path.join(HOSTILE, "ok_sharded",
                                                                           "model-00002-of-00002.safetensors"), 600))
    put("fuzz_safetensors", "mixed_dtypes", mixed_dtypes())
    for case, data in hostile_files("st_", "model.safetensors"):
        put("fuzz_safetensors", case, data)
    # config
    put("fuzz_config", "micro", read(os.path.join(MICRO, "config.json")))
    put("fuzz_config", "tiny", read(os.path.join(HOSTILE, "_base", "config.json")))
    # Llama family (both rope layouts, Qwen2 biases, Qwen3 q/k norm)
    put("fuzz_config", "llama_long", read(os.path.join(ROOT, "models", "llama-long", "config.json")))
    for name, fam in (("qwen3", "tiny-qwen3"), ("llama3rope_classic", "tiny-llama3rope"), ("qwen2", "tiny-qwen2")):
        put("fuzz_config", name, read(os.path.join(ROOT, "tests", "fixtures", fam, "config.json")))
    for case, data in hostile_files("cfg_", "config.json"):
        put("fuzz_config", case, data)
    # index
    put("fuzz_index", "tiny_index", read(os.path.join(HOSTILE, "ok_sharded", "model.safetensors.index.json")))
    for case, data in hostile_files("idx_", "model.safetensors.index.json"):
        put("fuzz_index", case, data)
    # tokenizer text
    cases = json.loads(read(os.path.join(ROOT, "tests", "fixtures", "tokenizer_cases.json")))["cases"]
    for i, c in enumerate(cases):
        put("fuzz_tokenizer", "case%03d" % i, b"\0" + c["text"].encode("utf-8", "surrogatepass"))
    text = read(os.path.join(ROOT, "data", "eval.txt"))
    put("fuzz_tokenizer", "eval_1k", b"\0" + text[:1024])
    put("fuzz_tokenizer", "eval_16k", b"\0" + text[20000:20000 + 16000])
    put("fuzz_tokenizer", "invalid_utf8", b"\0" + b"ok \xff\xfe \xc3\x28 \xe2\x82 \xf0\x9f\x98 caf\xc3\xa9 \xed\xa0\x80 end")
    put("fuzz_tokenizer", "special", b"\1" + b"a<|endoftext|>b <|endoftext|><|endoftext|> <|endof")
    put("fuzz_tokenizer", "spaces", b"\0" + b"  \t\n\n   x  \r\n\xc2\xa0\xe3\x80\x80 ")
    # tokenizer files
    vocab = json.loads(read(os.path.join(MICRO, "vocab.json")))
    keep = {k: v for k, v in vocab.items() if v < 600}
    lines = read(os.path.join(MICRO, "merges.txt")).decode("utf-8").split("\n")
    merges = [lines[0]]
    for line in lines[1:]:
        parts = line.split(" ")
        if len(parts) == 2 and parts[0] in keep and parts[1] in keep and parts[0] + parts[1] in keep:
            merges.append(line)
    put("fuzz_tokenizer_load", "vocab600", json.dumps(keep, ensure_ascii=False).encode() + b"\0" +
        "\n".join(merges).encode() + b"\n")
    for case, data in hostile_files("tok_", "vocab.json"):
        put("fuzz_tokenizer_load", case, data + b"\0" + b"#version: 0.2\n")
    tokenizer_json_seeds()
    for d in sorted(os.listdir(OUT)):
        files = os.listdir(os.path.join(OUT, d))
        print("%-22s %3d seeds, %6d bytes" % (d, len(files), sum(os.path.getsize(os.path.join(OUT, d, f)) for f in files)))


if __name__ == "__main__":
    main()
