#!/usr/bin/env python3
"""Generate the hostile-input corpus under tests/hostile/ (python3 standard library only).

Each case is a folder holding only the files it breaks (config.json, model.safetensors,
model.safetensors.index.json and shards, vocab.json, merges.txt). tests/test_hostile.c builds a
model directory per case at test time: it copies the case's files and symlinks the missing ones
from the valid tiny model in _base/ (config.json, model.safetensors) and from models/gpt2-micro
(vocab.json, merges.txt), then runs the CLI and checks exit status and message.

cases.json lists every case: the CLI arguments ("{dir}" is the case directory), which files to
link, and the substrings that stderr must contain (the file name and the problem, compared
case-insensitively). Control cases ("expect_ok") must succeed, proving that the failures come
from the one thing each hostile case breaks.

Run from anywhere:  python3 tests/hostile/make_hostile.py   (rewrites the corpus; deterministic)
"""
import json
import math
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# A tiny but complete GPT-2: every tensor of the real layout, a few KB in all. The prompt "a" is
# token 64 (a single byte token), inside this vocabulary.
CFG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_embd": 8,
    "n_head": 2,
    "n_inner": None,
    "n_layer": 3,
    "n_positions": 16,
    "vocab_size": 256,
}
PROMPT = "a"


class Rng:
    """Deterministic LCG so the corpus is identical on every run."""

    def __init__(self, seed):
        self.s = seed

    def uniform(self):
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return ((self.s >> 11) / float(1 << 53)) * 2.0 - 1.0


def model_tensors(cfg=CFG, prefix="transformer."):
    """Ordered [(name, shape, values)] of a GPT-2 checkpoint (Conv1D weights stored [in, out])."""
    rng = Rng(12345)
    E, V, P, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"], cfg["n_layer"]

    def rand(*shape):
        return [0.1 * rng.uniform() for _ in range(math.prod(shape))]

    out = [(prefix + "wte.weight", [V, E], rand(V, E)), (prefix + "wpe.weight", [P, E], rand(P, E))]
    for i in range(L):
        h = "%sh.%d." % (prefix, i)
        out += [
            (h + "ln_1.weight", [E], [1.0] * E), (h + "ln_1.bias", [E], [0.0] * E),
            (h + "attn.c_attn.weight", [E, 3 * E], rand(E, 3 * E)), (h + "attn.c_attn.bias", [3 * E], rand(3 * E)),
            (h + "attn.c_proj.weight", [E, E], rand(E, E)), (h + "attn.c_proj.bias", [E], rand(E)),
            (h + "ln_2.weight", [E], [1.0] * E), (h + "ln_2.bias", [E], [0.0] * E),
            (h + "mlp.c_fc.weight", [E, 4 * E], rand(E, 4 * E)), (h + "mlp.c_fc.bias", [4 * E], rand(4 * E)),
            (h + "mlp.c_proj.weight", [4 * E, E], rand(4 * E, E)), (h + "mlp.c_proj.bias", [E], rand(E)),
        ]
    out += [(prefix + "ln_f.weight", [E], [1.0] * E), (prefix + "ln_f.bias", [E], [0.0] * E)]
    return out


PACK = {"F32": "<%df", "F16": "<%de", "I64": "<%dq"}


def encode(dtype, values):
    if dtype == "I64":
        values = [int(v) for v in values]
    return struct.pack(PACK[dtype] % len(values), *values)


def raw_file(header, data=b"", length=None):
    """A safetensors file from a header (str or bytes, used verbatim) and data; length overrides
    the 8-byte header length field."""
    hb = header.encode() if isinstance(header, str) else header
    n = len(hb) if length is None else length
    return struct.pack("<Q", n) + hb + data


def st_file(tensors, metadata=None, dtypes=None, edit=None):
    """A well-formed safetensors file (contiguous offsets, header padded to 8 bytes with spaces).
    dtypes maps name -> dtype (default F32); edit(header_dict) may change the header afterwards."""
    dtypes = dtypes or {}
    header = {"__metadata__": metadata or {"format": "pt"}}
    data = b""
    for name, shape, values in tensors:
        blob = encode(dtypes.get(name, "F32"), values)
        header[name] = {"dtype": dtypes.get(name, "F32"), "shape": shape,
                        "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    if edit:
        edit(header)
    hs = json.dumps(header, separators=(",", ":"))
    hs += " " * (-len(hs) % 8)
    return raw_file(hs, data)


def replace(tensors, name, values=None, shape=None, new_name=None):
    out = []
    for n, s, v in tensors:
        if n == name:
            n, s, v = new_name or n, shape or s, values if values is not None else v
        out.append((n, s, v))
    return out


def drop(tensors, name):
    return [t for t in tensors if t[0] != name]


def cfg_json(**changes):
    c = dict(CFG)
    for k, v in changes.items():
        if v is DELETE:
            c.pop(k, None)
        else:
            c[k] = v
    return json.dumps(c, indent=2)


DELETE = object()
T = model_tensors()
P = "transformer."
STF = "model.safetensors"
IDX = "model.safetensors.index.json"
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def sharded(tensors, weight_map_edit=None, shard_edit=None):
    """Files of a two-shard checkpoint: shard 1 holds embeddings and block 0, shard 2 the rest."""
    first = [t for t in tensors if t[0].startswith((P + "wte", P + "wpe", P + "h.0."))]
    second = [t for t in tensors if t not in first]
    if shard_edit:
        first, second = shard_edit(first, second)
    wmap = {n: SHARD1 for n, _, _ in first}
    wmap.update({n: SHARD2 for n, _, _ in second})
    if weight_map_edit:
        weight_map_edit(wmap)
    index = {"metadata": {"total_size": 0}, "weight_map": wmap}
    return {IDX: json.dumps(index, indent=2), SHARD1: st_file(first), SHARD2: st_file(second)}


def nested(depth):
    return "[" * depth + "]" * depth


GEN = ["generate", "--model", "{dir}", "--prompt", PROMPT, "-n", "1"]
MODEL_LINKS = ["config.json", STF, "vocab.json", "merges.txt"]
SHARD_LINKS = ["config.json", "vocab.json", "merges.txt"]

CASES = []


def case(name, files, expect, argv=GEN, links=MODEL_LINKS, why="", symlinks=None):
    """symlinks: {file name: absolute target} made at test time (device files cannot live in git)."""
    c = {"name": name, "files": files, "expect": expect, "argv": argv,
         "links": [l for l in links if l not in files and l not in (symlinks or {})], "why": why}
    if symlinks:
        c["symlinks"] = symlinks
    CASES.append(c)


def control(name, files, links=MODEL_LINKS, why=""):
    CASES.append({"name": name, "files": files, "expect_ok": True, "argv": GEN,
                  "links": [l for l in links if l not in files], "why": why})


def header_only(header_obj, data=b""):
    hs = json.dumps(header_obj) if not isinstance(header_obj, str) else header_obj
    return raw_file(hs, data)


def one_tensor(entry, data=b"\0" * 16):
    return header_only({"evil": entry}, data)


# ---- controls: the valid tiny model, single file and sharded ----
control("ok_single", {}, why="the valid tiny model: every hostile case differs from it in one thing")
control("ok_sharded", sharded(T), links=SHARD_LINKS, why="the same model split in two shards")

# ---- safetensors container ----
case("st_empty_file", {STF: b""}, [STF, "truncated"], why="zero bytes")
case("st_truncated_length", {STF: b"\x10\x00\x00"}, [STF, "truncated"], why="3 of the 8 length bytes")
case("st_header_beyond_file", {STF: raw_file('{"a":1}', length=4096)}, [STF, "header length 4096", "past the end"],
     why="header length 4096 in a 15-byte file")
case("st_giant_header_length", {STF: raw_file("{}", length=(1 << 63) + 5)}, [STF, "header length", "limit"],
     why="2^63+5: 8 + length wraps around in 64 bits")
case("st_header_not_json", {STF: raw_file("{this is not json}   ")}, [STF, "not valid json"])
case("st_header_array", {STF: raw_file("[1, 2, 3]")}, [STF, "not a json object"], why="JSON but not an object")
case("st_header_deep_nesting", {STF: raw_file(nested(20000))}, [STF, "not valid json"],
     why="20000 nested arrays: a recursive parser without a depth limit overflows the stack")
case("st_header_nul_bytes", {STF: raw_file(b'{"a\x00b": {}}')}, [STF, "'a'", "lacks"],
     why="a NUL inside a tensor name (the name ends there, and the empty entry is refused)")
case("st_tensor_not_object", {STF: header_only({"evil": 5})}, [STF, "'evil'", "not an object"],
     why="tensor entry is a number")
case("st_overlapping_offsets", {STF: header_only({
    "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24)}, [STF, "'a' and 'b' overlap"])
case("st_offsets_out_of_range", {STF: one_tensor(
    {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]})}, [STF, "'evil'", "outside the data"],
    why="range ends at 4096, the data has 16 bytes")
case("st_offsets_end_before_begin", {STF: one_tensor(
    {"dtype": "F32", "shape": [2], "data_offsets": [16, 8]})}, [STF, "'evil'", "data_offsets"])
case("st_offsets_negative", {STF: one_tensor(
    {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]})}, [STF, "'evil'", "data_offsets"])
case("st_offsets_not_integers", {STF: one_tensor(
    {"dtype": "F32", "shape": [2], "data_offsets": [0.5, 8.5]})}, [STF, "'evil'", "data_offsets"])
case("st_offsets_huge", {STF: one_tensor(
    {"dtype": "F32", "shape": [2], "data_offsets": [18446744073709551608, 18446744073709551616]})},
    [STF, "'evil'", "data_offsets"], why="offsets near 2^64: begin + size wraps")
case("st_size_mismatch", {STF: one_tensor(
    {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]})}, [STF, "'evil'", "12 bytes", "16"],
    why="3 floats in 16 bytes")
case("st_shape_product_overflow", {STF: one_tensor(
    {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}, b"")}, [STF, "'evil'", "overflow"],
    why="2^32 x 2^32 wraps to 0 in 64 bits and would match the empty range")
case("st_shape_bytes_overflow", {STF: one_tensor(
    {"dtype": "F32", "shape": [4294967296, 1073741824], "data_offsets": [0, 0]}, b"")}, [STF, "'evil'", "overflow"],
    why="2^62 elements x 4 bytes wraps to 0")
case("st_negative_dim", {STF: one_tensor(
    {"dtype": "F32", "shape": [-4, -1], "data_offsets": [0, 16]})}, [STF, "'evil'", "dimension"],
    why="(-4) x (-1) = 4 would match the range")
case("st_huge_dim", {STF: one_tensor(
    {"dtype": "F32", "shape": [1e300], "data_offsets": [0, 16]})}, [STF, "'evil'", "dimension"],
    why="a dimension that does not fit any integer type")
case("st_too_many_dims", {STF: one_tensor(
    {"dtype": "F32", "shape": [1] * 60 + [4], "data_offsets": [0, 16]})}, [STF, "'evil'", "61 dimensions"],
    why="61 dimensions (the loader keeps at most 8)")
case("st_unknown_dtype", {STF: one_tensor(
    {"dtype": "Q4_K", "shape": [4], "data_offsets": [0, 16]})}, [STF, "'evil'", "dtype 'Q4_K'"])
case("st_missing_dtype", {STF: one_tensor({"shape": [4], "data_offsets": [0, 16]})}, [STF, "'evil'", "lacks dtype"])
case("st_duplicate_key", {STF: raw_file(
    '{"evil":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
    '"evil":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', b"\0" * 16)}, [STF, "duplicate", "'evil'"])
case("st_metadata_not_strings", {STF: header_only({"__metadata__": {"format": 5}})}, [STF, "__metadata__"])
case("st_trailing_data_gap", {STF: one_tensor(
    {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, b"\0" * 4096)}, [STF, "not covered"],
    why="4088 bytes that no tensor covers (the reference safetensors implementation refuses this)")

# ---- checkpoint contents (a well-formed file that does not make a GPT-2) ----
case("w_missing_tensor", {STF: st_file(drop(T, P + "h.1.attn.c_proj.weight"))},
     [STF, "missing tensor", "h.1.attn.c_proj.weight"])
case("w_wrong_shape", {STF: st_file(replace(T, P + "h.0.attn.c_attn.weight", shape=[24, 8]))},
     [STF, "h.0.attn.c_attn.weight", "[24, 8]", "[8, 24]"], why="transposed: same size, wrong shape")
case("w_wrong_dtype_i64", {STF: st_file(T, dtypes={P + "h.0.mlp.c_fc.weight": "I64"})},
     [STF, "h.0.mlp.c_fc.weight", "I64"], why="an integer tensor where a weight belongs")
case("w_vocab_mismatch", {STF: st_file(replace(T, P + "wte.weight", shape=[200, 8], values=T[0][2][:1600]))},
     [STF, "wte.weight", "[200, 8]", "[256, 8]"], why="wte has 200 rows, config.json says vocab_size 256")
case("w_nan_weight", {STF: st_file(replace(T, P + "h.2.ln_1.weight", values=[float("nan")] * 8))},
     [STF, "h.2.ln_1.weight", "non-finite"], why="NaN in block 2's ln_1")
case("w_inf_weight", {STF: st_file(replace(T, P + "h.1.mlp.c_fc.weight", values=[float("inf")] + T[0][2][:255]))},
     [STF, "h.1.mlp.c_fc.weight", "non-finite"], why="+Inf in block 1's c_fc")
case("w_nan_f16_weight", {STF: st_file(replace(T, P + "ln_f.bias", values=[0.0] * 7 + [float("nan")]),
                                       dtypes={P + "ln_f.bias": "F16"})},
     [STF, "ln_f.bias", "non-finite"], why="a NaN half-float (conversion must keep it NaN)")

# ---- config.json ----
case("cfg_empty", {"config.json": ""}, ["config.json", "not valid json"], why="zero-length config.json")
case("cfg_not_json", {"config.json": "n_layer = 3\n"}, ["config.json", "not valid json"])
case("cfg_array", {"config.json": "[]"}, ["config.json", "not a json object"])
case("cfg_deep_nesting", {"config.json": '{"x": ' + nested(20000) + "}"}, ["config.json", "not valid json"])
case("cfg_n_head_zero", {"config.json": cfg_json(n_head=0)}, ["config.json", "n_head"])
case("cfg_not_divisible", {"config.json": cfg_json(n_head=3)}, ["config.json", "not divisible", "n_head"],
     why="n_embd 8 is not divisible by n_head 3")
case("cfg_negative_layers", {"config.json": cfg_json(n_layer=-1)}, ["config.json", "n_layer"])
case("cfg_missing_n_embd", {"config.json": cfg_json(n_embd=DELETE)}, ["config.json", "missing", "n_embd"])
case("cfg_n_embd_string", {"config.json": cfg_json(n_embd="8")}, ["config.json", "n_embd"])
case("cfg_n_embd_fraction", {"config.json": cfg_json(n_embd=8.5)}, ["config.json", "n_embd"])
case("cfg_huge_n_embd", {"config.json": cfg_json(n_embd=1e300)}, ["config.json", "n_embd"],
     why="1e300 overflows an int conversion (undefined behaviour if unchecked)")
case("cfg_huge_dims_product", {"config.json": cfg_json(n_embd=1 << 30, n_head=1, vocab_size=1 << 30)},
     ["config.json", "n_embd"], why="vocab x n_embd = 2^60 floats")
case("cfg_huge_allocation", {"config.json": cfg_json(n_embd=65536, n_head=1, vocab_size=4194304, n_layer=256,
                                                      n_positions=1048576)},
     [STF, "wte.weight", "[256, 8]"],
     why="every value within its own limit, together ~1.2 TB of float32: the checkpoint's shapes must be "
         "checked against config.json before memory is reserved for them")
# ---- issue 20: configs Hugging Face reads differently, tensors the config does not account for ----
case("cfg_duplicate_key", {"config.json": cfg_json().replace('"n_layer": 3', '"n_layer": 3,\n  "n_layer": 2')},
     ["config.json", "duplicate", "n_layer"], why="HF keeps the last value, cJSON the first")
case("cfg_duplicate_variant_flag", {"config.json": cfg_json(scale_attn_by_inverse_layer_idx=False).replace(
    '"scale_attn_by_inverse_layer_idx": false', '"scale_attn_by_inverse_layer_idx": false,\n'
    '  "scale_attn_by_inverse_layer_idx": true')}, ["config.json", "duplicate", "scale_attn_by_inverse_layer_idx"],
     why="an unsupported variant hidden behind a first, harmless value")
case("cfg_epsilon_underflow", {"config.json": cfg_json(layer_norm_epsilon=1e-50)},
     ["config.json", "layer_norm_epsilon"], why="1e-50 becomes 0.0f")
case("w_config_fewer_layers", {"config.json": cfg_json(n_layer=2)}, [STF, "'transformer.h.2.", "not used"],
     why="n_layer 2 on a 3-layer checkpoint would run a truncated model")
case("w_extra_tensor", {STF: st_file(T + [(P + "h.0.attn.c_attn.lora", [2], [0.0, 0.0])])},
     [STF, "'transformer.h.0.attn.c_attn.lora'", "not used"], why="a tensor no GPT-2 layer reads")
case("idx_shard_name_escapes", sharded(T, weight_map_edit=lambda m: m.update(
    {P + "ln_f.bias": "\x1b[2J\x1b[31mpwned.safetensors"})), [r"\x1b[2J\x1b[31mpwned.safetensors", "cannot open"],
     links=SHARD_LINKS,
     why="ESC sequences in a shard name must not reach the terminal raw")
case("cfg_dev_zero", {}, ["config.json", "not a regular file"], symlinks={"config.json": "/dev/zero"},
     why="an endless device file must be refused, not read")
case("st_dev_zero", {}, [STF, "not a regular file"], symlinks={STF: "/dev/zero"})
case("cfg_bad_activation", {"config.json": cfg_json(activation_function="relu")}, ["config.json", "relu"])
case("cfg_bad_epsilon", {"config.json": cfg_json(layer_norm_epsilon=-1.0)}, ["config.json", "layer_norm_epsilon"])

# ---- sharded checkpoints ----
case("idx_missing_shard", sharded(T, lambda m: m.update({P + "ln_f.weight": "model-00003-of-00003.safetensors"})),
     ["model-00003-of-00003.safetensors", "cannot open"], links=SHARD_LINKS)
case("idx_tensor_not_in_shard", sharded(T, lambda m: m.update({P + "ln_f.bias": SHARD1})),
     [SHARD1, "ln_f.bias"], links=SHARD_LINKS, why="the index puts ln_f.bias in shard 1; shard 2 has it")
case("idx_path_traversal", {IDX: json.dumps({"weight_map": {
    n: "../ok_single/" + STF for n, _, _ in T}})}, [IDX, "'../ok_single/model.safetensors'", "not a plain file name"],
    links=SHARD_LINKS, why="a shard name that climbs out of the model directory to a valid file must still be refused")
case("idx_absolute_path", {IDX: json.dumps({"weight_map": {P + "wte.weight": "/etc/passwd"}})},
     [IDX, "'/etc/passwd'", "not a plain file name"], links=SHARD_LINKS)
case("idx_not_json", {IDX: "{weight_map: }"}, [IDX, "not valid json"], links=SHARD_LINKS)
case("idx_weight_map_not_object", {IDX: json.dumps({"weight_map": ["a", "b"]})}, [IDX, "weight_map"],
     links=SHARD_LINKS)
case("idx_shard_not_string", {IDX: json.dumps({"weight_map": {P + "wte.weight": 7}})}, [IDX, "wte.weight"],
     links=SHARD_LINKS)
case("idx_missing_tensor", sharded(T, shard_edit=lambda a, b: (a, drop(b, P + "ln_f.weight"))),
     [IDX, "missing tensor", "ln_f.weight"], links=SHARD_LINKS)

# ---- tokenizer files ----
case("tok_vocab_empty", {"vocab.json": ""}, ["vocab.json", "not valid json"])
case("tok_vocab_not_json", {"vocab.json": '{"a": 0, "b": '}, ["vocab.json", "not valid json"])
case("tok_vocab_array", {"vocab.json": "[1, 2]"}, ["vocab.json", "expected a json object"])
case("tok_vocab_bad_ids", {"vocab.json": json.dumps({"a": -5, "b": "x", "c": 1e12})}, ["vocab.json", "id -5"])
case("tok_vocab_missing_bytes", {"vocab.json": json.dumps({"a": 0, "b": 1})}, ["vocab.json", "no token for byte"],
     why="a byte-level vocabulary without all 256 byte tokens")
case("tok_merges_garbage", {"merges.txt": bytes(range(256)) * 4}, ["merges.txt:1:", "two tokens"])
case("tok_merges_unknown_tokens", {"merges.txt": "#version: 0.2\nqqqzzz xxyyww\n"},
     ["merges.txt:2:", "not in the vocabulary"], why="a merge whose parts are not in vocab.json")

# ---- compressor files and ESAP spectrum messages (the other loaders of untrusted files) ----
with open(os.path.join(os.path.dirname(os.path.dirname(HERE)), "fuzz", "corpus", "fuzz_compressor",
                       "hidden_rank1"), "rb") as _f:
    COMPRESSOR = _f.read()  # fitted on gpt2-micro by `eigenalign fit --sites hidden --rank 1`
COMP_ARGV = ["compress", "--model", "{dir}", "--compressor", "{dir}/model.compressor", "--prompt", PROMPT, "--json"]
case("comp_truncated", {"model.compressor": COMPRESSOR[:1000]}, ["model.compressor", "truncated"], argv=COMP_ARGV)
case("comp_other_model", {"model.compressor": COMPRESSOR}, ["model.compressor", "fitted on a model"], argv=COMP_ARGV,
     why="a gpt2-micro compressor (n_embd 128) applied to the tiny model (n_embd 8)")


def esap_message(ev, K, d=None, df=None):
    total = sum(ev)
    ev = [v / total for v in sorted(ev, reverse=True)]
    ck = [sum(ev[:k + 1]) for k in range(K)]
    fmt = lambda xs: "[" + ", ".join("%.17g" % x for x in xs) + "]"
    return ('{"format": "eigenalign-esap-spectrum", "version": 1, "fingerprint": "00", "site": "wte", "d": %d, '
            '"K": %d, "Df": %.17g, "eigenvalues": %s, "ck": %s}' % (d or len(ev), K, df or 1 / sum(v * v for v in ev),
                                                                   fmt(ev), fmt(ck)))


GOOD_SPECTRUM = esap_message([1.0 / i for i in range(1, 9)], 8)
ESAP_ARGV = ["handshake", "--spectrum-a", "{dir}/a.spectrum", "--spectrum-b", "{dir}/b.spectrum", "--json"]
case("esap_truncated", {"a.spectrum": GOOD_SPECTRUM[:120], "b.spectrum": GOOD_SPECTRUM}, ["a.spectrum", "unbalanced"],
     argv=ESAP_ARGV, links=[])
case("esap_huge_dim", {"a.spectrum": esap_message([1.0] * 8, 8, d=100000000), "b.spectrum": GOOD_SPECTRUM},
     ["a.spectrum", "\"d\""], argv=ESAP_ARGV, links=[], why="d = 10^8 would size the allocations")
case("esap_wrong_df", {"a.spectrum": GOOD_SPECTRUM, "b.spectrum": esap_message([1.0] * 8, 8, df=3.0)},
     ["b.spectrum", "Df"], argv=ESAP_ARGV, links=[], why="Df inconsistent with the eigenvalues")
case("esap_rank1", {"a.spectrum": esap_message([1.0] + [0.0] * 7, 8), "b.spectrum": GOOD_SPECTRUM},
     ["undefined", "side a", "rank 1"], argv=ESAP_ARGV, links=[],
     why="C(k) constant at 1: the Pearson r is undefined, not 'nan -> diverged' with exit 0")

# ---- command line ----
case("cli_missing_model_dir", {}, ["does-not-exist", "not a model directory"], links=[],
     argv=["generate", "--model", "{dir}/does-not-exist", "--prompt", PROMPT, "-n", "1"])
case("cli_repeated_option", {}, ["--ctx", "given twice"], links=[],
     argv=["perplexity", "--model", "{dir}", "--text", "{dir}/none.txt", "--ctx", "8", "--ctx", "9"])
case("cli_value_is_an_option", {}, ["--text", "needs a value", "--json"], links=[],
     argv=["tokenize", "--model", "{dir}", "--text", "--json"])
case("cli_help_as_a_value", {}, ["--prompt", "needs a value", "--help"], links=[],
     argv=["generate", "--model", "{dir}", "--prompt", "--help"])
case("cli_empty_model_dir", {}, ["config.json", "cannot open"], links=[])
case("cli_empty_prompt", {}, ["prompt", "empty"], argv=["generate", "--model", "{dir}", "--prompt", "", "-n", "1"])
case("cli_prompt_outside_vocab", {}, ["token id", "outside [0, 256)"],
     argv=["generate", "--model", "{dir}", "--prompt", "hello world", "-n", "1"],
     why="ids of the GPT-2 tokenizer beyond this model's 256-row embedding")
case("cli_text_missing", {}, ["nope.txt", "cannot open"],
     argv=["perplexity", "--model", "{dir}", "--text", "{dir}/nope.txt"])
case("cli_text_empty", {"empty.txt": ""}, ["empty.txt", "text is empty"],
     argv=["perplexity", "--model", "{dir}", "--text", "{dir}/empty.txt"])
case("cli_text_is_directory", {}, ["not a regular file"], argv=["perplexity", "--model", "{dir}", "--text", "{dir}"])
case("cli_tokenize_missing_file", {}, ["nope.txt", "cannot open"],
     argv=["tokenize", "--model", "{dir}", "--file", "{dir}/nope.txt"])
case("cli_unknown_option", {}, ["unknown argument", "--bogus"],
     argv=["generate", "--model", "{dir}", "--prompt", PROMPT, "--bogus"])
case("cli_context_overflow", {}, ["context"], argv=["generate", "--model", "{dir}", "--prompt", PROMPT, "-n", "100"],
     why="1 + 100 tokens in a 16-position model")


def byte_vocab():
    """vocab.json of the 256 byte tokens alone, in GPT-2's byte alphabet (no merges)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cps, n = {}, 0
    for b in range(256):
        if b in keep:
            cps[b] = b
        else:
            cps[b] = 256 + n
            n += 1
    return json.dumps({chr(cps[b]): b for b in range(256)})


V300 = dict(CFG, vocab_size=300)
case("cli_tokenizer_smaller_than_vocab",
     {"config.json": cfg_json(vocab_size=300), STF: st_file(model_tensors(V300)), "vocab.json": byte_vocab(),
      "merges.txt": "#version: 0.2\n"},
     ["256 tokens", "vocab_size 300"], why="ids 256..299 could be generated but not decoded: refused before generating")
LONG_KLT = "klt:2:" + "s" * 56
case("cli_kv_spec_too_long", {"t.txt": "some text"}, [LONG_KLT, "too long", "at most 61"],
     argv=["eval", "--model", "{dir}", "--text", "{dir}/t.txt", "--kv", LONG_KLT],
     why="reported with the spec the user typed (not the sensitivity probe's), before any fitting")
case("cli_kv_pca_rank_past_model", {"t.txt": "some text"}, ["pca:9", "[1, 8]"],
     argv=["eval", "--model", "{dir}", "--text", "{dir}/t.txt", "--kv", "pca:9"],
     why="a rank above the cached row width (8) is refused once config.json is read, before fitting")
case("cli_kv_pca_head_rank_past_head", {}, ["pca-head:5", "[1, 4]"],
     argv=["generate", "--model", "{dir}", "--prompt", PROMPT, "-n", "1", "--kv", "pca-head:5"],
     why="a rank above head_dim (4)")
case("cli_calib_skip_past_window", {"t.txt": "some text"}, ["--calib-skip 16", "16-token window"],
     argv=["eval", "--model", "{dir}", "--text", "{dir}/t.txt", "--kv", "pca:2", "--calib-skip", "16"],
     why="no position of any window would be left to fit on")

def write_case(root, c):
    d = os.path.join(root, c["name"])
    os.makedirs(d, exist_ok=True)
    for fname, content in c["files"].items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
    # An empty case still needs to exist in git.
    if not c["files"]:
        open(os.path.join(d, ".keep"), "w").close()


def main():
    for entry in os.listdir(HERE):
        p = os.path.join(HERE, entry)
        if os.path.isdir(p):
            shutil.rmtree(p)
    base = os.path.join(HERE, "_base")
    os.makedirs(base)
    with open(os.path.join(base, "config.json"), "w") as f:
        f.write(cfg_json())
    with open(os.path.join(base, STF), "wb") as f:
        f.write(st_file(T))
    for c in CASES:
        write_case(HERE, c)
    manifest = [{k: v for k, v in c.items() if k != "files"} for c in CASES]
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump({"about": __doc__.strip().splitlines()[0], "prompt": PROMPT, "cases": manifest}, f, indent=1)
    hostile = sum(1 for c in CASES if not c.get("expect_ok"))
    print("%d cases (%d hostile, %d controls) in %s" % (len(CASES), hostile, len(CASES) - hostile, HERE))


if __name__ == "__main__":
    main()
