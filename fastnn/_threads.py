"""Thread-count control for the OpenMP kernels, and BLAS held to one thread.

Semantics (also in :func:`set_num_threads`):

* ``None`` means the default: ``OMP_NUM_THREADS`` when set, else the CPUs this
  process may run on (``os.sched_getaffinity``).
* ``-1`` means every CPU available to the process.
* :func:`threads` overrides the count for the calling Python thread only.
* In a child process forked after fastnn ran, kernels run serially: GNU libgomp's
  thread pool does not survive ``fork``, and a parallel region there can hang.
"""
import contextlib
import os
import threading

__all__ = ["set_num_threads", "get_num_threads", "threads"]

_global_threads = None
class _Local(threading.local):
    # Set in each thread's first access: a missing attribute on a threading.local
    # costs ~0.4 us to look up (it raises inside), a present one ~30 ns.
    def __init__(self):
        self.stack = []


_local = _Local()
_forked_child = False


def _mark_forked_child():
    global _forked_child, _default_cache
    _forked_child = True
    _default_cache = (None, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked_child)


def _available_cpus():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_default_cache = (None, None)   # (OMP_NUM_THREADS as read, resolved default)


# os.environ.get costs ~0.7 us, half of a small kernel call; the mapping's raw store
# (what os.environ updates on assignment) is read in ~20 ns. Other Pythons use get.
try:
    _ENV_RAW, _ENV_KEY = os.environ._data, os.environ.encodekey("OMP_NUM_THREADS")
    _ENV_RAW.get(_ENV_KEY)
except Exception:  # pragma: no cover - not CPython's os._Environ
    _ENV_RAW, _ENV_KEY = os.environ, "OMP_NUM_THREADS"


def _default_threads():
    # Resolving the default asks the OS for the affinity mask (~2 us); it is cached
    # until OMP_NUM_THREADS changes or the process forks.
    global _default_cache
    raw = _ENV_RAW.get(_ENV_KEY)
    if _default_cache[0] == raw and _default_cache[1] is not None:
        return _default_cache[1]
    env = os.environ.get("OMP_NUM_THREADS")
    value = _resolve_default(env)
    _default_cache = (raw, value)
    return value


def _resolve_default(env):
    env = (env or "").strip()
    if env:
        try:
            value = int(env.split(",")[0])
        except ValueError:
            value = 0
        if value > 0:
            return value
    return _available_cpus()


def _check_count(n, name="n"):
    if n is None:
        return None
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"{name} must be None, -1 or a positive int, got {n!r}")
    n = int(n.__index__())
    if n == -1:
        return -1
    if n < 1:
        raise ValueError(f"{name} must be None, -1 or a positive int, got {n}")
    return n


def set_num_threads(n=None):
    """Set the number of threads fastnn kernels use.

    Parameters
    ----------
    n : int or None
        ``None`` restores the default (``OMP_NUM_THREADS`` if set, else the CPUs
        available to the process); ``-1`` uses all available CPUs; a positive int
        is used as given.

    Results do not depend on the thread count: every kernel splits its work by
    shape only and reduces in a fixed order.

    Examples
    --------
    >>> import fastnn
    >>> fastnn.set_num_threads(1); fastnn.get_num_threads()
    1
    >>> fastnn.set_num_threads(None)
    """
    global _global_threads
    _global_threads = _check_count(n)


def get_num_threads():
    """Return the number of threads the next kernel call will use.

    This honours :func:`threads` in the calling Python thread, then
    :func:`set_num_threads`, then the default. It is 1 in a child process forked
    after fastnn was imported (see the module notes).

    Examples
    --------
    >>> import fastnn
    >>> with fastnn.threads(3):
    ...     fastnn.get_num_threads()
    3
    >>> fastnn.get_num_threads() >= 1
    True
    """
    if _forked_child:
        return 1
    stack = _local.stack
    n = stack[-1] if stack else _global_threads
    if n is None:
        return _default_threads()
    return _available_cpus() if n == -1 else n


@contextlib.contextmanager
def threads(n):
    """Context manager: use ``n`` threads inside the ``with`` block.

    The override applies to the calling Python thread only, so concurrent callers
    do not see each other's settings.

    Examples
    --------
    >>> import fastnn
    >>> with fastnn.threads(1):
    ...     fastnn.get_num_threads()
    1
    """
    n = _check_count(n)
    stack = _local.stack
    stack.append(n)
    try:
        yield get_num_threads()
    finally:
        stack.pop()


# --- BLAS held to one thread while a kernel's prange calls GEMM -----------------
# Kernels parallelise over their own work items and call GEMM from each thread, so
# BLAS must not spawn threads of its own (two levels of threads oversubscribe the
# cores, and a BLAS that splits a product differently by thread count would break
# bitwise reproducibility). The limit is reference-counted across Python threads:
# the first kernel in sets 1 thread, the last one out restores what it found.
_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved = []
_controller = None


def _blas_libs():
    global _controller
    if _controller is None:
        import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS the kernels call)
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()  # ~1-3 ms: built once, then cached
    return [lib for lib in _controller.lib_controllers if lib.user_api == "blas"]


@contextlib.contextmanager
def blas_single_thread():
    """Hold every loaded BLAS to one thread for the duration of a kernel call."""
    global _blas_depth, _blas_saved
    with _blas_lock:
        if _blas_depth == 0:
            saved = []
            for lib in _blas_libs():
                n = lib.get_num_threads()
                if n is not None and n != 1:
                    lib.set_num_threads(1)
                    saved.append((lib, n))
            _blas_saved = saved
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for lib, n in _blas_saved:
                    lib.set_num_threads(n)
                _blas_saved = []


def blas_info():
    """Describe the BLAS libraries loaded in the process (for show_config)."""
    out = []
    for lib in _blas_libs():
        info = lib.info()
        out.append({k: info.get(k) for k in
                    ("internal_api", "version", "threading_layer", "architecture",
                     "num_threads", "filepath")})
    return out
