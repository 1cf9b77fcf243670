"""Measure what this machine can do, so kernel rates can be read as a fraction of it.

Two ceilings, both measured at the start of a run with the benchmark's thread count:

* **GEMM**: the better of float32 ``A @ B`` of two 2048x2048 matrices through NumPy's
  BLAS (``2 * n**3`` FLOPs, best of several) and fastnn's own register-blocked kernel
  at its best (a 1x1 convolution, C = K = 256 on 8 images of 56x56: one product per
  image, no im2col). A compute-bound kernel's GFLOP/s is reported as a percentage of
  this. The benchmark's child process runs with ``OPENBLAS_CORETYPE`` and
  ``OPENBLAS_L2_SIZE`` unset (see ``child.ISOLATION_UNSET``): a machine that sets them to
  tame old OpenBLAS builds otherwise measures NumPy at half its real speed (SkylakeX
  kernel 444 GFLOP/s, Haswell kernel 252, on a 2-core Zen 5).
* **Copy**: ``np.copyto`` between two 256 MB float32 arrays (far beyond any cache),
  counting the bytes read plus the bytes written (best of several; the array is
  split across threads when more than one is used, and the better of the single- and
  multi-threaded rates is the ceiling). Memory-bound kernels report GB/s against it.

Best-of (not median) is right here: a ceiling is what the machine reaches when
nothing disturbs it; noise only ever makes a run slower.
"""
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["measure_limits", "gemm_gflops", "fastnn_gflops", "copy_gbps"]


def _blas_limits(n_threads):
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=n_threads, user_api="blas")


def gemm_gflops(n_threads, size=2048, repeats=5, seed=0, dtype=np.float32):
    """Best GEMM rate in GFLOP/s of ``size x size`` matrices with BLAS on n threads."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    c = np.empty((size, size), dtype=dtype)
    flops = 2.0 * size ** 3
    best = float("inf")
    with _blas_limits(n_threads):
        np.matmul(a, b, out=c)  # warm up: BLAS thread pool, pages of c
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
    return {"gflops": flops / best / 1e9, "size": size, "seconds": best, "repeats": repeats,
            "threads": n_threads,
            "how": f"numpy.matmul {np.dtype(dtype).name} {size}x{size} @ {size}x{size}, best of {repeats}"}


def fastnn_gflops(n_threads, repeats=5, seed=0, dtype=np.float32):
    """Best rate of fastnn's own product kernel: a 1x1 convolution (one
    (K x C) @ (C x HW) product per image on the register-blocked kernel)."""
    import fastnn
    rng = np.random.default_rng(seed)
    N, C, H, W, K = 8, 256, 56, 56, 256
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, 1, 1)).astype(dtype)
    flops = 2.0 * N * K * C * H * W
    best = float("inf")
    with fastnn.threads(n_threads):
        fastnn.conv2d(x, w)
        for _ in range(repeats):
            t0 = time.perf_counter()
            fastnn.conv2d(x, w)
            best = min(best, time.perf_counter() - t0)
    return {"gflops": flops / best / 1e9, "seconds": best, "repeats": repeats,
            "threads": n_threads,
            "how": f"fastnn.conv2d 1x1 N{N} C{C} {H}x{W} K{K} {np.dtype(dtype).name}, best of {repeats}"}


def _copy_rate(dst, src, n_threads, repeats, pool):
    if n_threads <= 1 or pool is None:
        def run():
            np.copyto(dst, src)
    else:
        # np.copyto releases the GIL for plain dtypes, so chunks copy in parallel.
        bounds = np.linspace(0, src.size, n_threads + 1).astype(int)
        pairs = [(dst[lo:hi], src[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]

        def run():
            list(pool.map(lambda p: np.copyto(p[0], p[1]), pairs))
    run()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * src.nbytes / best / 1e9, best


def copy_gbps(n_threads, megabytes=256, repeats=5):
    """Best memory-copy rate in GB/s (read + write bytes) of ``megabytes``-sized arrays."""
    n = megabytes * 2 ** 20 // 4
    src = np.full(n, 1.5, dtype=np.float32)
    dst = np.full(n, -1.0, dtype=np.float32)  # touch every page before timing
    single, t_single = _copy_rate(dst, src, 1, repeats, None)
    multi = t_multi = None
    if n_threads > 1:
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            multi, t_multi = _copy_rate(dst, src, n_threads, repeats, pool)
    best = max(single, multi or 0.0)
    del src, dst
    return {"gbps": best, "gbps_1_thread": single, "gbps_n_threads": multi, "megabytes": megabytes,
            "repeats": repeats, "threads": n_threads,
            "how": f"np.copyto float32 {megabytes} MB, read+write bytes, best of {repeats}"}


def measure_limits(n_threads, quick=False, max_attempts=3):
    """Measure the GEMM and copy ceilings; returns a dict (also stored in --json).

    A ceiling measured while another process is using the CPUs would be too low and
    flatter every "% limit"; when other processes were busy during a measurement it
    is repeated (up to ``max_attempts``) and the best value is kept.
    """
    from fastnn._bench.harness import CpuMonitor
    repeats = 3 if quick else 5
    t0 = time.perf_counter()
    gemm = copy = None
    attempts = []
    for _ in range(max_attempts):
        mon = CpuMonitor()
        g = _gemm_ceiling(n_threads, repeats, np.float32)
        c = copy_gbps(n_threads, repeats=repeats)
        other = mon.foreign_cpus()
        attempts.append({"gflops": g["gflops"], "gbps": c["gbps"], "other_processes_cpus": other})
        if gemm is None or g["gflops"] > gemm["gflops"]:
            gemm = g
        if copy is None or c["gbps"] > copy["gbps"]:
            copy = c
        if other is None or other < 0.15:
            break
    # The float64 ceiling, for the float64 rows' "% limit" (measured once: those rows
    # are few).
    gemm64 = _gemm_ceiling(n_threads, repeats, np.float64)
    return {"gemm": gemm, "gemm_float64": gemm64, "copy": copy, "attempts": attempts,
            "seconds": time.perf_counter() - t0}


def _gemm_ceiling(n_threads, repeats, dtype):
    """The better of NumPy's BLAS and fastnn's own kernel at their best, in one dtype.

    fastnn's kernel is measured first: right after NumPy's GEMM, OpenBLAS's workers
    still spin and fastnn's team shrinks to the free core (one run read 92 GFLOP/s
    there against 165 alone); fastnn's own idle workers sleep within 50 us, so NumPy's
    GEMM after them is not disturbed."""
    try:
        f = fastnn_gflops(n_threads, repeats=repeats, dtype=dtype)
    except Exception as exc:  # a partial build must not stop the benchmark
        f = {"gflops": 0.0, "how": f"fastnn kernel unavailable ({type(exc).__name__})"}
    g = gemm_gflops(n_threads, repeats=repeats, dtype=dtype)
    g = dict(g, numpy_gflops=g["gflops"], numpy_how=g["how"], fastnn_gflops=f["gflops"],
             fastnn_how=f["how"])
    if f["gflops"] > g["gflops"]:
        g.update(gflops=f["gflops"], how=f["how"] + " (above NumPy's "
                 f"{g['numpy_gflops']:.0f} GFLOP/s: {g['numpy_how']})")
    else:
        g["how"] += f" (fastnn's own kernel: {f['gflops']:.0f} GFLOP/s)"
    return g
