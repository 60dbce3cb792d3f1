"""The binding's declarations (cffi ABI mode computes struct layouts from them) against the
public headers they were copied from: every struct field for field, every function's signature.
A header change the binding does not follow fails here instead of corrupting memory."""
import os
import re

import pytest

from conftest import ROOT

INCLUDE = os.path.join(ROOT, "include", "ea")
# Exported declarations the binding leaves out on purpose: variadic, for C callers.
NOT_BOUND = {"ea_error"}


def _norm(s):
    s = re.sub(r"/\*.*?\*/", " ", s, flags=re.S)
    s = s.replace("EA_ESAP_MAX_NAME + 1", "129").replace("EA_MAX_DIMS", "8")
    s = re.sub(r"\s+", " ", s)
    return re.sub(r" ?([*(),;{}\[\]+]) ?", r"\1", s).strip()


@pytest.fixture(scope="module")
def texts():
    if not os.path.isdir(INCLUDE):
        pytest.skip("no include/ea beside the package (installed copy)")
    headers = "\n".join(open(os.path.join(INCLUDE, f), encoding="utf-8").read() for f in sorted(os.listdir(INCLUDE))
                        if f.endswith(".h"))
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
    # (a match whose "arguments" start with '*' is a function pointer: checked below and in the structs)
    funcs = [f for f in re.findall(r"(?<![A-Za-z0-9_])(ea_\w+)\(([^;]*?)\);", cdef) if not f[1].startswith("*")]
    assert len(funcs) > 200
    for name, args in funcs:
        m = re.search(r"(?<![A-Za-z0-9_])" + name + r"\(([^;]*?)\)(?:__attribute__[^;]*)?;", headers)
        assert m, "%s not declared in the headers" % name
        want = m.group(1)
        assert want == args, "%s: header (%s) vs cdef (%s)" % (name, want, args)


def test_callback_types_match_headers(texts):
    headers, cdef = texts
    fps = re.findall(r"typedef([^;{}]*)\(\*(\w+)\)\(([^;]*?)\);", cdef)
    assert {"ea_capture_fn", "ea_progress_fn"} <= {n for _, n, _ in fps}
    for ret, name, args in fps:
        m = re.search(r"typedef([^;{}]*)\(\*" + name + r"\)\(([^;]*?)\);", headers)
        assert m, "callback type %s not in the headers" % name
        assert (m.group(1), m.group(2)) == (ret, args), "%s: header %s vs cdef %s" % (name, m.groups(), (ret, args))


def test_every_exported_function_declared(texts):
    """Every EA_API function of the headers is in the binding (the binding follows the whole
    public API, not only what it calls today), and the library exports each one."""
    headers, cdef = texts
    public = set(re.findall(r"EA_API[^;(]*?(?<![A-Za-z0-9_])(ea_\w+)\(", headers)) - NOT_BOUND
    assert len(public) > 200
    declared = set(n for n, a in re.findall(r"(?<![A-Za-z0-9_])(ea_\w+)\(([^;]*?)\);", cdef) if not a.startswith("*"))
    assert not public - declared, "public functions missing from _ffi.py: %s" % sorted(public - declared)
    from eigenalign._ffi import lib
    missing = [n for n in sorted(declared) if not _exported(lib, n)]
    assert not missing, "declared but not exported by %s: %s" % ("libeigenalign", missing)


def _exported(lib, name):
    try:
        getattr(lib, name)
        return True
    except AttributeError:
        return False
