"""Thread-count control, the cost model for how many threads a kernel gets, and the
coexistence setting for NumPy's and SciPy's OpenBLAS.

Semantics (also in :func:`set_num_threads`):

* ``None`` means the default: ``OMP_NUM_THREADS`` when set, else the CPUs this
  process may run on (``sched_getaffinity``, read again every few milliseconds, so
  ``os.sched_setaffinity`` takes effect at once for any practical purpose).
* ``-1`` means every CPU available to the process.
* :func:`threads` overrides the count for the calling Python thread only.
* ``threadpoolctl.threadpool_limits(n)`` (any ``user_api`` that includes "openmp")
  caps fastnn at ``n`` threads, as it caps scikit-learn.
* Counts above :data:`MAX_THREADS` (4x the machine's CPUs) are refused.

The kernels run on fastnn's own thread pool (``fastnn_ext/_runtime.h``), not on
libgomp's: idle workers sleep after ~50 us instead of spinning for ~8 ms, a team
shrinks to the cores that other tasks leave free, and a forked child re-creates the
pool. Results never depend on the thread count.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

from fastnn_ext import _runtime

__all__ = ["set_num_threads", "get_num_threads", "threads", "set_coexistence",
           "get_coexistence", "MAX_THREADS"]

#: The largest thread count accepted: 4x the machine's CPUs (more only oversubscribes).
MAX_THREADS = 4 * (os.cpu_count() or 1)

_global_threads = None


class _Local(threading.local):
    # Set in each thread's first access: a missing attribute on a threading.local
    # costs ~0.4 us to look up (it raises inside), a present one ~30 ns.
    def __init__(self):
        self.stack = []


_local = _Local()
_available_cpus = _runtime.available_cpus
_get_limit = _runtime.get_limit

# os.environ.get costs ~0.7 us, half of a small kernel call; the mapping's raw store
# (what os.environ updates on assignment) is read in ~20 ns. Other Pythons use get.
try:
    _ENV_RAW, _ENV_KEY = os.environ._data, os.environ.encodekey("OMP_NUM_THREADS")
    _ENV_RAW.get(_ENV_KEY)
except Exception:  # pragma: no cover - not CPython's os._Environ
    _ENV_RAW, _ENV_KEY = os.environ, "OMP_NUM_THREADS"

_env_cache = (None, None)   # (OMP_NUM_THREADS as read, its positive int value or None)


def _env_threads():
    global _env_cache
    raw = _ENV_RAW.get(_ENV_KEY)
    if _env_cache[0] != raw:
        value = None
        text = (os.environ.get("OMP_NUM_THREADS") or "").strip()
        if text:
            try:
                value = int(text.split(",")[0])
            except ValueError:
                value = None
            if value is not None and value < 1:
                value = None
        _env_cache = (raw, value)
    return _env_cache[1]


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
    if n > MAX_THREADS:
        raise ValueError(f"{name}={n} is more than {MAX_THREADS} threads (4x the "
                         f"{os.cpu_count()} CPUs of this machine); use -1 for all CPUs")
    return n


def set_num_threads(n: int | None = None) -> None:
    """Set the number of threads fastnn kernels use.

    Parameters
    ----------
    n : int or None
        ``None`` restores the default (``OMP_NUM_THREADS`` if set, else the CPUs
        available to the process); ``-1`` uses all available CPUs; a positive int up
        to :data:`MAX_THREADS` (4x the machine's CPUs) is used as given.

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


def get_num_threads() -> int:
    """Return the number of threads the next kernel call may use.

    This honours :func:`threads` in the calling Python thread, then
    :func:`set_num_threads`, then the default, capped by an active
    ``threadpoolctl.threadpool_limits``. A kernel uses fewer when its input is
    small (see :func:`threads_for`) or when other tasks hold the cores.

    Examples
    --------
    >>> import fastnn
    >>> with fastnn.threads(3):
    ...     fastnn.get_num_threads()
    3
    >>> fastnn.get_num_threads() >= 1
    True
    """
    stack = _local.stack
    n = stack[-1] if stack else _global_threads
    if n is None:
        n = _env_threads() or _available_cpus()
    elif n == -1:
        n = _available_cpus()
    limit = _get_limit()
    return limit if 0 < limit < n else n


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[int]:
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


# --- the cost model ----------------------------------------------------------------
#: Below these amounts of work (each in its kind's unit) a kernel runs on the calling
#: thread; defined once, with the measurements, in fastnn_ext/_cost.h.
SERIAL_BELOW = dict(_runtime.SERIAL_BELOW)


def threads_for(work: float, kind: str = "mac", items: int | None = None) -> int:
    """Threads for a kernel call: 1 below ``SERIAL_BELOW[kind]``, else
    :func:`get_num_threads`, never more than ``items`` (the kernel's work items)."""
    if work < SERIAL_BELOW[kind]:
        return 1
    n = get_num_threads()
    if items is not None and items < n:
        return max(1, int(items))
    return n


# --- threadpoolctl -------------------------------------------------------------------
def _register_threadpoolctl():
    """Let threadpoolctl see and limit fastnn's pool (user_api "openmp")."""
    try:
        import threadpoolctl
        base = threadpoolctl.LibController
    except (ImportError, AttributeError):  # pragma: no cover - threadpoolctl < 3
        return

    class FastnnController(base):
        """fastnn's thread pool (fastnn_ext/_runtime): the limit caps every team."""
        user_api = "openmp"
        internal_api = "fastnn"
        filename_prefixes = ("_runtime",)
        check_symbols = ("fastnn_rt_get_limit", "fastnn_rt_set_limit")

        def get_num_threads(self):
            # None while unlimited, so that restoring "the value before" clears the
            # limit instead of fixing it at today's count.
            return _get_limit() or None

        def set_num_threads(self, num_threads):
            _runtime.set_limit(int(num_threads) if num_threads else 0)

        def get_version(self):
            import fastnn
            return fastnn.__version__

    if not any(getattr(c, "internal_api", None) == "fastnn"
               for c in getattr(threadpoolctl, "_ALL_CONTROLLERS", [])):
        threadpoolctl.register(FastnnController)


_register_threadpoolctl()


# --- the coexistence setting -------------------------------------------------------
_controller = None
_coexistence = []   # [(lib controller, setter)] while the setting is on


def _blas_libs():
    global _controller
    if _controller is None:
        import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS the kernels call)
        from threadpoolctl import ThreadpoolController
        _controller = ThreadpoolController()  # ~1-3 ms: built once, then cached
    return [lib for lib in _controller.lib_controllers if lib.user_api == "blas"]


def _callback_setter(lib):
    import ctypes
    dll = ctypes.CDLL(lib.filepath)
    prefix = getattr(lib, "_symbol_prefix", "") or ""
    suffix = getattr(lib, "_symbol_suffix", "") or ""
    names = [f"{prefix}openblas_set_threads_callback_function{suffix}",
             "openblas_set_threads_callback_function"]
    for name in names:
        fn = getattr(dll, name, None)
        if fn is not None:
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = None
            return fn
    return None


def set_coexistence(on: bool = True) -> list[str]:
    """Run NumPy's and SciPy's OpenBLAS threads on fastnn's pool (opt-in, reversible).

    OpenBLAS's own workers busy-wait about 100 ms after every multi-threaded call,
    so a fastnn kernel right after a NumPy matmul finds the cores taken and runs on
    one thread (fastnn detects this; it never gets slower than serial). With the
    setting on, OpenBLAS hands its jobs to fastnn's pool (through OpenBLAS's
    ``openblas_set_threads_callback_function``), whose idle workers sleep after
    ~50 us: both libraries then run at full speed one after the other. The split of
    OpenBLAS's work, and so its results, stay the same. This changes how NumPy and
    SciPy run their BLAS threads for the whole process, which is why it is not the
    default; ``set_coexistence(False)`` gives OpenBLAS its own threads back. Switch
    it while no BLAS call is running in another thread.

    Parameters
    ----------
    on : bool
        True to route OpenBLAS's threads through fastnn's pool, False to undo it.

    Returns
    -------
    list of str
        The BLAS libraries now routed (empty when off, when no loaded BLAS
        offers the callback: OpenBLAS 0.3.28 or newer does, or in a serial build
        such as the Windows wheel, which has no pool to lend).

    Examples
    --------
    >>> import fastnn
    >>> routed = fastnn.set_coexistence(True)
    >>> fastnn.get_coexistence() == bool(routed)
    True
    >>> fastnn.set_coexistence(False)
    []
    """
    if not isinstance(on, bool):
        raise TypeError(f"set_coexistence: on must be a bool, got {on!r}")
    global _coexistence
    for lib, setter in _coexistence:
        setter(None)
    _coexistence = []
    if not on:
        return []
    address = _runtime.openblas_callback_address()
    if not address:   # a serial build (Windows): no pool to run OpenBLAS's jobs on
        return []
    for lib in _blas_libs():
        if lib.internal_api != "openblas":
            continue
        setter = _callback_setter(lib)
        if setter is not None:
            setter(address)
            _coexistence.append((lib, setter))
    return [lib.filepath for lib, _ in _coexistence]


def get_coexistence() -> bool:
    """True while :func:`set_coexistence` routes some OpenBLAS through fastnn's pool."""
    return bool(_coexistence)


def _after_fork_child():
    global _env_cache
    _env_cache = (None, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_child)


def pool_info() -> dict[str, Any]:
    """State and counters of fastnn's thread pool (for show_config and the benchmark)."""
    return _runtime.stats()


def blas_info() -> list[dict[str, Any]]:
    """Describe the BLAS libraries loaded in the process (for show_config)."""
    out = []
    for lib in _blas_libs():
        info = lib.info()
        out.append({k: info.get(k) for k in
                    ("internal_api", "version", "threading_layer", "architecture",
                     "num_threads", "filepath")})
    return out
