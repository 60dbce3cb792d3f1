"""eigenalign: Python binding of libeigenalign (cffi, ABI mode; NumPy arrays in and out).

    import eigenalign as ea
    m = ea.Model.load("models/gpt2-micro")
    print(ea.analyze(m, "data/calib.txt").summary())
    comp = ea.ActivationCompressor.from_model(m, target_variance=0.95)
    z = comp.compress_hidden(m.activations("Hello world")["hidden"][m.n_layer])

Results are plain Python objects with the keys of the CLI's --json output; library errors raise
eigenalign.Error subclasses (ArgumentError is also a ValueError, IOError_ an OSError, ...) with
the library's message. Importing the package first sets what the `eigenalign` tool tunes at start
(OPENBLAS_CORETYPE, GOMP_SPINCOUNT) before the library loads; see eigenalign.TUNING.
"""
from ._ffi import (LIBRARY_PATH, TUNING, ArgumentError, Error, FormatError, IOError_, MismatchError, NoMemoryError,
                   NumericError, UnsupportedError)
from ._data import calib_path
from .model import Model
from .analysis import Analysis, Spectrum, analyze
from .compress import ActivationCompressor, EigenProjector
from .kv import KVCodec, bench_memory, eval_kv
from .esap import align, handshake, message

__version__ = "0.1.0"  # the library's EA_VERSION
__all__ = ["Model", "analyze", "Analysis", "Spectrum", "ActivationCompressor", "EigenProjector", "KVCodec",
           "eval_kv", "bench_memory", "handshake", "align", "message", "Error", "ArgumentError", "IOError_",
           "FormatError", "NoMemoryError", "UnsupportedError", "NumericError", "MismatchError", "LIBRARY_PATH",
           "TUNING", "calib_path"]
