"""Where the bundled calibration text is: the installed share/eigenalign (see _paths.py), or
data/ of the source tree this package sits in."""
import os

_here = os.path.dirname(os.path.abspath(__file__))


def calib_path():
    """Path of the bundled calibration text (data/calib.txt)."""
    cands = []
    try:
        from . import _paths
        cands.append(os.path.join(_paths.DATA_DIR, "calib.txt"))
    except ImportError:
        pass
    cands.append(os.path.join(os.path.dirname(os.path.dirname(_here)), "data", "calib.txt"))
    for c in cands:
        if os.path.exists(c):
            return c
    from ._ffi import IOError_
    raise IOError_("the bundled calibration text is not installed (looked for %s); pass calib=PATH" % ", ".join(cands))
