"""Compiled kernels behind :mod:`fastnn` (Cython + OpenMP + BLAS).

Nothing here validates its arguments: call the public API in :mod:`fastnn`.

The thread pool (``_runtime``) is loaded first, with ``RTLD_GLOBAL``: every kernel
module's OpenMP entry points forward to its ``fastnn_rt_*`` functions (see
``_omp_shim.h``). Only those uniquely named symbols become global.
"""
import ctypes as _ctypes
import importlib.util as _util
import os as _os


def _load_runtime():
    spec = _util.find_spec("fastnn_ext._runtime")
    if spec is None or spec.origin is None:
        raise ImportError(
            "fastnn_ext._runtime is not built: install fastnn (pip install .), or, from a "
            "source checkout, pip install -e . and import it from outside the source folder")
    mode = getattr(_os, "RTLD_GLOBAL", 0) | getattr(_os, "RTLD_NOW", 0)
    return _ctypes.CDLL(spec.origin, mode=mode)


_RUNTIME_LIB = _load_runtime()
from fastnn_ext import _runtime  # noqa: E402,F401  (the same library, now as a module)
