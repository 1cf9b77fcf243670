"""Build and runtime configuration report (``fastnn.show_config``)."""
from __future__ import annotations

import os
import sys
from typing import Any, TextIO

import numpy as np


_UKERNEL_NAMES = {0: "baseline", 1: "AVX2+FMA", 2: "AVX-512"}


def config() -> dict[str, Any]:
    """Return the configuration as a dict (what :func:`show_config` prints)."""
    import fastnn
    from fastnn import _threads
    from fastnn_ext._config import build_info

    from fastnn_ext._conv import UKERNEL_LEVEL
    from fastnn_ext._winograd import FULL_WIDTH_512

    info = build_info()
    return {
        "version": fastnn.__version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "compiler": info["compiler"],
        "flags": info["flags"],
        "openmp": info["openmp"],
        "openmp_version": info["openmp_version"],
        "simd_baseline": info["simd_baseline"],
        "simd_runtime": _UKERNEL_NAMES.get(UKERNEL_LEVEL, str(UKERNEL_LEVEL)),
        "fma512_full_width": FULL_WIDTH_512,
        "blas": _threads.blas_info(),
        "pool": _threads.pool_info(),
        "coexistence": _threads.get_coexistence(),
        "num_threads": _threads.get_num_threads(),
        "cpus_available": _threads._available_cpus(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def show_config(file: TextIO | None = None) -> None:
    """Print version, compiler, build flags, OpenMP, SIMD, BLAS and thread counts.

    Examples
    --------
    >>> import fastnn
    >>> fastnn.show_config()  # doctest: +ELLIPSIS
    fastnn ...
    """
    c = config()
    lines = [
        f"fastnn {c['version']} (Python {c['python']}, NumPy {c['numpy']})",
        f"  compiler       : {c['compiler']}",
        f"  flags          : {c['flags']}",
        "  OpenMP         : " + (f"yes (version {c['openmp_version']})" if c["openmp"]
                                 else "no (kernels run single-threaded)"),
        f"  SIMD baseline  : {', '.join(c['simd_baseline'])} (compile-time flags)",
        f"  SIMD kernels   : {c['simd_runtime']} (chosen at run time; FASTNN_UKERNEL_MAX caps it)"
        + ("; 512-bit FMAs at full width" if c["fma512_full_width"] else ""),
        f"  threads        : {c['num_threads']} (CPUs available: {c['cpus_available']}, "
        f"OMP_NUM_THREADS={c['OMP_NUM_THREADS'] or 'unset'})",
        f"  thread pool    : fastnn's own ({c['pool']['workers']} workers now; idle workers "
        f"spin {c['pool']['idle_spin_us']} us, then sleep; teams shrink when other tasks hold "
        f"the cores: {'on' if c['pool']['check_contention'] else 'off'}; OpenBLAS routed "
        f"through it: {'yes' if c['coexistence'] else 'no'})",
    ]
    for lib in c["blas"]:
        lines.append(f"  BLAS           : {lib['internal_api']} {lib['version']} "
                     f"({lib['threading_layer']}, {lib['architecture']}, "
                     f"{lib['num_threads']} threads) {lib['filepath']}")
    print("\n".join(lines), file=file or sys.stdout)
