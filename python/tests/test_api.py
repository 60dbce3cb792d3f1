"""The binding's declarations (cffi ABI mode computes struct layouts from them) against the
public headers they were copied from: every struct field for field, every function's signature.
A header change the binding does not follow fails here instead of corrupting memory."""
import os
import re

import pytest

from conftest import ROOT

INCLUDE = os.path.join(ROOT, "include", "ea")
# Deliberate differences: the binding passes K/V statistics as an opaque pointer (always NULL).
ALLOWED = {"ea_kv_codec_create": ("const ea_kv_stats *stats", "const void *stats")}


def _norm(s):
    s = re.sub(r"/\*.*?\*/", " ", s, flags=re.S)
    s = s.replace("EA_ESAP_MAX_NAME + 1", "129").replace("EA_MAX_DIMS", "8")
    s = re.sub(r"\s+", " ", s)
    return re.sub(r" ?([*(),;{}\[\]+]) ?", r"\1", s).strip()


@pytest.fixture(scope="module")
def texts():
    if not os.path.isdir(INCLUDE):
        pytest.skip("no include/ea beside the package (installed copy)")
    headers = "\n".join(open(os.path.join(INCLUDE, f), encoding="utf-8").read() for f in sorted(os.listdir(INCLUDE)))
    from eigenalign import _ffi
    src = open(_ffi.__file__, encoding="utf-8").read()
    cdef = src[src.index('ffi.cdef(r"""') + 13:src.index('""")')]
    return _norm(headers), _norm(cdef)


def test_structs_match_headers(texts):
    headers, cdef = texts
    structs = re.findall(r"typedef struct\{([^{}]*)\}(\w+);", cdef)
    assert len(structs) > 15
    for body, name in structs:
        m = re.search(r"typedef struct\{([^{}]*)\}" + name + ";", headers)
        assert m, "struct %s not in the headers" % name
        assert m.group(1) == body, "struct %s differs:\n header %s\n cdef   %s" % (name, m.group(1), body)


def test_functions_match_headers(texts):
    headers, cdef = texts
    funcs = re.findall(r"(?<![A-Za-z0-9_])(ea_\w+)\(([^;]*?)\);", cdef)
    assert len(funcs) > 80
    for name, args in funcs:
        m = re.search(r"(?<![A-Za-z0-9_])" + name + r"\(([^;]*?)\)(?:__attribute__[^;]*)?;", headers)
        assert m, "%s not declared in the headers" % name
        want = m.group(1)
        if name in ALLOWED:
            want = want.replace(_norm(ALLOWED[name][0]), _norm(ALLOWED[name][1]))
        assert want == args, "%s: header (%s) vs cdef (%s)" % (name, want, args)
