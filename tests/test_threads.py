"""Threads: set_num_threads / get_num_threads / threads(n), bitwise determinism across
thread counts, the OpenMP build, fork safety, concurrent Python callers, and no
process-wide side effects (denormals, other libraries' BLAS thread counts)."""
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastnn

import reference as ref
from helpers import assert_works_after_fork, rel_err, run_python


def available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


# ------------------------------------------------------------------ semantics
def test_default_is_available_cpus_without_omp_env():
    proc = run_python("""
        import os, fastnn
        print(fastnn.get_num_threads(), len(os.sched_getaffinity(0)))
    """, env_remove=("OMP_NUM_THREADS",))
    assert proc.returncode == 0, proc.stderr
    got, cpus = proc.stdout.split()
    assert got == cpus


@pytest.mark.parametrize("value", ["3", "1", "5"])
def test_default_honours_omp_num_threads(value):
    proc = run_python("""
        import fastnn
        print(fastnn.get_num_threads())
        fastnn.set_num_threads(2)
        fastnn.set_num_threads(None)      # back to the default
        print(fastnn.get_num_threads())
    """, env_update={"OMP_NUM_THREADS": value})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [value, value]


def test_set_get_and_minus_one():
    fastnn.set_num_threads(1)
    assert fastnn.get_num_threads() == 1
    fastnn.set_num_threads(3)
    assert fastnn.get_num_threads() == 3
    fastnn.set_num_threads(-1)
    assert fastnn.get_num_threads() == available_cpus()
    fastnn.set_num_threads(np.int64(2))
    assert fastnn.get_num_threads() == 2
    fastnn.set_num_threads(None)
    default = fastnn.get_num_threads()
    assert default >= 1
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not env:
        assert default == available_cpus()


@pytest.mark.parametrize("bad", [0, -2, -5, 1.5, "2", 2.0, True, [2]])
def test_invalid_counts_raise(bad):
    fastnn.set_num_threads(2)
    with pytest.raises((ValueError, TypeError)):
        fastnn.set_num_threads(bad)
    assert fastnn.get_num_threads() == 2, "a refused value must not change the setting"
    with pytest.raises((ValueError, TypeError)):
        with fastnn.threads(bad):
            pass
    assert fastnn.get_num_threads() == 2


def test_threads_context_restores_on_exit_and_exception():
    fastnn.set_num_threads(3)
    with fastnn.threads(1):
        assert fastnn.get_num_threads() == 1
        with fastnn.threads(2):
            assert fastnn.get_num_threads() == 2
        assert fastnn.get_num_threads() == 1
    assert fastnn.get_num_threads() == 3
    with pytest.raises(RuntimeError):
        with fastnn.threads(1):
            assert fastnn.get_num_threads() == 1
            raise RuntimeError("boom")
    assert fastnn.get_num_threads() == 3
    with fastnn.threads(-1):
        assert fastnn.get_num_threads() == available_cpus()
    with fastnn.threads(None):
        assert fastnn.get_num_threads() >= 1
    assert fastnn.get_num_threads() == 3


def test_threads_context_is_per_python_thread():
    fastnn.set_num_threads(3)
    inside = threading.Event()
    release = threading.Event()
    seen = {}

    def worker():
        inside.wait(10)
        seen["other"] = fastnn.get_num_threads()
        with fastnn.threads(2):
            seen["other_ctx"] = fastnn.get_num_threads()
            release.set()
        seen["other_after"] = fastnn.get_num_threads()

    t = threading.Thread(target=worker)
    t.start()
    with fastnn.threads(1):
        inside.set()
        release.wait(10)
        seen["main"] = fastnn.get_num_threads()
    t.join(10)
    assert seen == {"other": 3, "other_ctx": 2, "other_after": 3, "main": 1}
    assert fastnn.get_num_threads() == 3


# ------------------------------------------------------------------ determinism
DET_CASES = [
    # (name, N, C, H, W, K, groups, k, conv kwargs)
    ("N1-C8-64x64-K16-k3", 1, 8, 64, 64, 16, 1, (3, 3), dict(padding=1)),
    ("N8-C3-32x32-K8-k5-s2", 8, 3, 32, 32, 8, 1, (5, 5), dict(stride=2, padding="same")),
    ("N2-C8-40x36-K8-g4-k3x2-d2", 2, 8, 40, 36, 8, 4, (3, 2), dict(dilation=2, padding=(2, 1))),
    ("N4-C16-24x24-K32-1x1", 4, 16, 24, 24, 32, 1, (1, 1), dict()),
]


def _det_inputs(layout, dtype, N, C, H, W, K, G, k):
    rng = np.random.default_rng(21)
    xs = (N, H, W, C) if layout == "NHWC" else (N, C, H, W)
    ws = (k[0], k[1], C // G, K) if layout == "NHWC" else (K, C // G, k[0], k[1])
    return rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype), \
        rng.standard_normal(K).astype(dtype)


def _all_results(x, w, b, G, k, kwargs, layout):
    y = fastnn.conv2d(x, w, b, groups=G, layout=layout, **kwargs)
    grads = fastnn.conv2d_backward(y, x, w, groups=G, layout=layout, **kwargs)
    cols = fastnn.im2col(x, k, layout=layout, **kwargs)
    back = fastnn.col2im(cols, x.shape, k, layout=layout, **kwargs)
    return [y, *grads, cols, back]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", DET_CASES, ids=[c[0] for c in DET_CASES])
def test_bitwise_identical_across_thread_counts(case, layout, dtype):
    _, N, C, H, W, K, G, k, kwargs = case
    x, w, b = _det_inputs(layout, dtype, N, C, H, W, K, G, k)
    results = {}
    for n in (1, 2, 3):
        with fastnn.threads(n):
            results[n] = _all_results(x, w, b, G, k, kwargs, layout)
    names = ["y", "grad_x", "grad_weight", "grad_bias", "im2col", "col2im"]
    for n in (2, 3):
        for name, a, b1 in zip(names, results[n], results[1]):
            assert a.dtype == np.dtype(dtype)
            assert np.array_equal(a, b1), f"{name}: {n} threads differ from 1 thread"
    # ... and from run to run
    with fastnn.threads(2):
        again = _all_results(x, w, b, G, k, kwargs, layout)
    for name, a, b1 in zip(names, again, results[2]):
        assert np.array_equal(a, b1), f"{name}: differs between two runs with 2 threads"
    # sanity: the shared result is right
    want = ref.conv2d(x, w, b, groups=G, layout=layout, **kwargs)
    assert rel_err(results[1][0], want) < (1e-4 if dtype == np.float32 else 1e-10)


# ------------------------------------------------------------------ OpenMP
def test_default_build_has_openmp():
    flag = os.environ.get("FASTNN_OPENMP")
    if flag == "0":
        pytest.skip("FASTNN_OPENMP=0: this build was asked to go without OpenMP")
    if sys.platform == "win32":
        pytest.skip("Windows builds are serial (setup.py: MSVC, no OpenMP)")
    from fastnn_ext._config import build_info
    info = build_info()
    assert info["openmp"] is True, (
        f"fastnn was built without OpenMP although FASTNN_OPENMP is "
        f"{'unset' if flag is None else repr(flag)}: {info}")
    assert info["openmp_version"] > 0


# ------------------------------------------------------------------ fork
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_after_use_does_not_hang():
    assert_works_after_fork("""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, 8, 48, 48))
        w = rng.standard_normal((16, 8, 3, 3))
        fastnn.set_num_threads(2)
        y = fastnn.conv2d(x, w, padding=1)            # spins up the OpenMP pool
        gx, gw, gb = fastnn.conv2d_backward(y, x, w, padding=1)
        """, """
        ok = np.array_equal(fastnn.conv2d(x, w, padding=1), y)
        with fastnn.threads(2):
            ok &= np.array_equal(fastnn.conv2d(x, w, padding=1), y)
            g2 = fastnn.conv2d_backward(y, x, w, padding=1)
        ok &= all(np.array_equal(a, b) for a, b in zip(g2, (gx, gw, gb)))
        ok &= np.array_equal(fastnn.im2col(x, 3, padding=1), fastnn.im2col(x, 3, padding=1))
        """, """
        # the parent still works with threads after the fork
        ok = np.array_equal(fastnn.conv2d(x, w, padding=1), y)
        """)


# ------------------------------------------------------------------ concurrency
def _blas_threads():
    from threadpoolctl import threadpool_info
    return {(i["filepath"], i["internal_api"]): i["num_threads"]
            for i in threadpool_info() if i["user_api"] == "blas"}


def test_concurrent_python_threads_correct_and_blas_restored():
    rng = np.random.default_rng(5)
    jobs = []
    for i in range(8):
        layout = "NHWC" if i % 2 else "NCHW"
        N, C, H, W, K = 2, 4, 20 + i, 18, 8
        xs = (N, H, W, C) if layout == "NHWC" else (N, C, H, W)
        ws = (3, 3, C, K) if layout == "NHWC" else (K, C, 3, 3)
        jobs.append((rng.standard_normal(xs), rng.standard_normal(ws), layout))
    with fastnn.threads(1):
        want = [(fastnn.conv2d(x, w, padding=1, layout=lay),
                 fastnn.conv2d_backward(np.ones(fastnn.conv2d(x, w, padding=1, layout=lay).shape),
                                        x, w, padding=1, layout=lay))
                for x, w, lay in jobs]
    for (x, w, lay), (y, _) in zip(jobs, want):
        assert rel_err(y, ref.conv2d(x, w, padding=1, layout=lay)) < 1e-10
    before = _blas_threads()

    def work(i):
        x, w, lay = jobs[i % len(jobs)]
        with fastnn.threads(1 + i % 2):
            y = fastnn.conv2d(x, w, padding=1, layout=lay)
            g = fastnn.conv2d_backward(np.ones(y.shape), x, w, padding=1, layout=lay)
        return i, y, g

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(48)))
    for i, y, g in results:
        wy, wg = want[i % len(jobs)]
        assert np.array_equal(y, wy), f"job {i}: forward differs under concurrency"
        for a, b in zip(g, wg):
            assert np.array_equal(a, b), f"job {i}: backward differs under concurrency"
    after = _blas_threads()
    assert after == before, f"BLAS thread counts changed: {before} -> {after}"


def test_blas_thread_count_restored_after_kernel_call():
    from threadpoolctl import threadpool_limits
    x = np.ones((2, 3, 10, 10))
    w = np.ones((4, 3, 3, 3))
    fastnn.conv2d(x, w)           # loads whatever BLAS the kernels use
    before = _blas_threads()
    fastnn.conv2d(x, w)
    fastnn.conv2d_backward(np.ones((2, 4, 8, 8)), x, w)
    assert _blas_threads() == before
    with threadpool_limits(limits=2, user_api="blas"):
        inside = _blas_threads()
        fastnn.conv2d(x, w)
        assert _blas_threads() == inside
    assert _blas_threads() == before


# ------------------------------------------------------------------ process state
STATE_SCRIPT = r"""
import numpy as np
import scipy.linalg.cython_blas                      # load the BLAS fastnn will use
from threadpoolctl import threadpool_info

def blas():
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

def denormals_survive(tag):
    t32 = np.finfo(np.float32).smallest_subnormal
    t64 = np.finfo(np.float64).smallest_subnormal
    checks = {
        "f32 scalar": np.float32(1e-40) * np.float32(1.0) != 0,
        "f32 tiny": t32 * np.float32(1.0) == t32,
        "f64 tiny": t64 * np.float64(1.0) == t64,
        "f32 array": bool(np.all(np.full(64, t32, np.float32) * np.float32(1.0) == t32)),
        "f64 array": bool(np.all(np.full(64, t64) * 1.0 == t64)),
        "f64 sum": bool(np.sum(np.full(64, t64)) == 64 * t64),
        "f32 as input (DAZ)": bool(np.all((np.full(64, t32, np.float32) + np.float32(0)) * np.float32(2) == 2 * t32)),
    }
    bad = [k for k, v in checks.items() if not v]
    assert not bad, f"denormals flushed {tag}: {bad}"

denormals_survive("before import")
before = blas()
import fastnn
denormals_survive("after import fastnn")
assert blas() == before, f"import changed BLAS threads: {before} -> {blas()}"
fastnn.set_num_threads(2)
x = np.full((1, 2, 8, 8), np.finfo(np.float64).smallest_subnormal * 4)
w = np.zeros((2, 2, 1, 1)); w[0, 0] = w[1, 1] = 1.0
y = fastnn.conv2d(x, w)
assert np.array_equal(y, x), "conv2d flushed denormal data"
fastnn.conv2d_backward(y, x, w)
fastnn.conv2d(np.ones((2, 3, 16, 16), np.float32), np.ones((4, 3, 3, 3), np.float32))
denormals_survive("after conv2d")
after = {k: v for k, v in blas().items() if k in before}
assert after == before, f"conv2d left BLAS threads changed: {before} -> {after}"
print("OK")
"""


def test_import_and_calls_change_no_process_state():
    proc = run_python(STATE_SCRIPT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), \
        proc.stdout + proc.stderr[-2000:]
