"""fastnn's thread pool next to other libraries: absurd counts refused, teams no larger
than their work, bits independent of the calling Python thread, fork and Ctrl-C
safety, other threads' BLAS untouched, threadpoolctl limits, affinity, idle workers
that sleep, teams that shrink when the cores are taken, and the coexistence setting."""
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastnn
from fastnn_ext import _runtime
from fastnn_ext._config import build_info

from test_threads import run_python

LINUX = sys.platform.startswith("linux")
# The kernels of a build without OpenMP (the macOS and Windows wheels, FASTNN_OPENMP=0,
# FASTNN_PORTABLE_C=1) never ask for a team: no worker to count, put to sleep or shrink.
needs_workers = pytest.mark.skipif(not build_info()["openmp"],
                                   reason="a serial build: the kernels start no worker")


# ------------------------------------------------------------------ counts
@pytest.mark.parametrize("bad", [100000, 2 ** 31, 2 ** 63, fastnn._threads.MAX_THREADS + 1])
def test_absurd_counts_refused_with_a_named_error(bad):
    fastnn.set_num_threads(2)
    with pytest.raises(ValueError, match=r"^n=\d+ is more than \d+ threads"):
        fastnn.set_num_threads(bad)
    with pytest.raises(ValueError, match="is more than"):
        with fastnn.threads(bad):
            pass
    assert fastnn.get_num_threads() == 2


@needs_workers
def test_max_count_runs_every_family():
    # The largest accepted count (4x the CPUs) runs every kernel family; teams are no
    # larger than their work items, so a one-item call starts no worker.
    code = f"""
    import numpy as np, fastnn
    from fastnn_ext import _runtime
    _runtime.configure(check_contention=False)
    rng = np.random.default_rng(0)
    fastnn.set_num_threads({fastnn._threads.MAX_THREADS})
    fastnn.relu(np.ones(3))
    fastnn.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)))
    assert _runtime.stats()["threads_created"] == 0, _runtime.stats()
    x = rng.standard_normal((8, 16, 24, 24))
    y = fastnn.conv2d(x, rng.standard_normal((16, 16, 3, 3)), padding=1)
    fastnn.conv2d_backward(y, x, rng.standard_normal((16, 16, 3, 3)), padding=1)
    fastnn.max_pool2d(x, 2); fastnn.avg_pool2d(x, 2)
    fastnn.masked_matmul(rng.standard_normal((64, 256)), rng.standard_normal((256, 256)),
                         rng.random((256, 256)) < 0.5)
    fastnn.locally_connected2d(rng.standard_normal((4, 8, 8, 3)),
                               rng.standard_normal((6, 6, 27, 5)), kernel_size=3)
    fastnn.lstm(rng.standard_normal((32, 5, 16)), np.zeros((32, 256)), np.zeros((32, 256)),
                rng.standard_normal((272, 1024)) * 0.1, np.zeros(1024))
    fastnn.banded_matmul(rng.standard_normal((64, 2048)), rng.standard_normal((2048, 2048)),
                         300, 300)
    print("OK", _runtime.stats()["threads_created"])
    """
    proc = run_python(code, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    created = int(proc.stdout.split()[-1])
    assert 1 <= created <= fastnn._threads.MAX_THREADS - 1


# ------------------------------------------------------------------ bits per Python thread
def _gemm_backed_calls(rng):
    """The paths whose tiles are matrix products inside the parallel loop."""
    x = rng.standard_normal((64, 700))
    w = rng.standard_normal((700, 600))
    gy = rng.standard_normal((64, 600))
    xs = rng.standard_normal((4, 3, 33, 29))
    ws = rng.standard_normal((5, 3, 3, 3))
    ys = fastnn.conv2d(xs, ws, stride=2)
    xn = rng.standard_normal((4, 17, 19, 40))
    wn = rng.standard_normal((1, 1, 40, 6))
    xl = rng.standard_normal((3, 9, 9, 4))
    wl = rng.standard_normal((7, 7, 36, 5))
    gl = rng.standard_normal((3, 7, 7, 5))
    return [
        lambda: fastnn.banded_matmul(x, w, 200, 150),
        lambda: fastnn.banded_matmul_backward(gy, x, w, 200, 150),
        lambda: fastnn.conv2d_backward(ys, xs, ws, stride=2),
        lambda: fastnn.conv2d(xn, wn, layout="NHWC"),
        lambda: fastnn.locally_connected2d(xl, wl, kernel_size=3),
        lambda: fastnn.locally_connected2d_backward(gl, xl, wl, kernel_size=3),
    ]


def _flat(result):
    if isinstance(result, tuple):
        return [r for r in result if r is not None]
    return [result]


@pytest.mark.parametrize("n_threads", [1, 2])
def test_bits_do_not_depend_on_the_calling_python_thread(n_threads):
    calls = _gemm_backed_calls(np.random.default_rng(3))
    with fastnn.threads(n_threads):
        want = [_flat(c()) for c in calls]
    got = {}

    def other():
        with fastnn.threads(n_threads):
            got["r"] = [_flat(c()) for c in calls]

    t = threading.Thread(target=other)
    t.start()
    t.join()
    with fastnn.threads(1):
        serial = [_flat(c()) for c in calls]
    for i, (a, b, s) in enumerate(zip(want, got["r"], serial)):
        for u, v, w in zip(a, b, s):
            assert np.array_equal(u, v), f"call {i}: other Python thread gives other bits"
            assert np.array_equal(u, w), f"call {i}: {n_threads} threads differ from 1"


# ------------------------------------------------------------------ other libraries' BLAS
def _blas_counts():
    from threadpoolctl import threadpool_info
    return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_other_threads_see_blas_unchanged_while_kernels_run():
    import scipy.linalg.cython_blas  # noqa: F401
    before = _blas_counts()
    calls = _gemm_backed_calls(np.random.default_rng(4))
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            for c in calls:
                c()

    t = threading.Thread(target=busy)
    t.start()
    try:
        seen = [_blas_counts() for _ in range(20)]
    finally:
        stop.set()
        t.join()
    assert all(s == before for s in seen), (before, seen)


@pytest.mark.skipif(not LINUX, reason="signals to the own process, Linux")
def test_ctrl_c_during_kernels_leaves_blas_threads_alone():
    code = """
    import os, signal, threading, time
    import numpy as np, scipy.linalg.cython_blas, fastnn
    from threadpoolctl import threadpool_info
    def blas():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    before = blas()
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((64, 700)), rng.standard_normal((700, 600))
    xs, ws = rng.standard_normal((4, 3, 33, 29)), rng.standard_normal((5, 3, 3, 3))
    ys = fastnn.conv2d(xs, ws, stride=2)
    hits = [0]
    t_end = time.time() + 3
    def interrupt(*_):
        # Ctrl-C about 1400 times a second until t_end: each signal arms the next one
        hits[0] += 1
        if time.time() < t_end:
            signal.setitimer(signal.ITIMER_REAL, 0.0007)
        raise KeyboardInterrupt
    signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.0007)
    def loop():
        while time.time() < t_end + 0.1:
            try:
                fastnn.banded_matmul(x, w, 200, 150)
                fastnn.conv2d_backward(ys, xs, ws, stride=2)
            except KeyboardInterrupt:
                pass
    while True:   # the test's own loop may be hit between statements too
        try:
            try:
                loop()
                break
            except KeyboardInterrupt:
                pass
        except KeyboardInterrupt:
            pass
    hits = hits[0]
    time.sleep(0.05)
    after = blas()
    assert after == before, (before, after)
    assert hits > 10, hits
    print("OK", hits)
    """
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]


# ------------------------------------------------------------------ fork
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_is_inside_a_kernel():
    code = """
    import os, threading, time
    import numpy as np, fastnn
    from fastnn_ext import _runtime
    _runtime.configure(check_contention=False)
    rng = np.random.default_rng(0)
    # a band narrow enough for fastnn's own tiles (a dense one is NumPy's matmul, and
    # OpenBLAS's fork handler can hang while another thread is inside it)
    x, w = rng.standard_normal((64, 2048)), rng.standard_normal((2048, 2048))
    want = fastnn.banded_matmul(x, w, 300, 300)
    stop = False
    def busy():
        while not stop:
            fastnn.banded_matmul(x, w, 300, 300)
    t = threading.Thread(target=busy); t.start()
    bad = 0
    for i in range(150):
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(fastnn.banded_matmul(x, w, 300, 300), want)
            with fastnn.threads(2):
                ok &= np.array_equal(fastnn.banded_matmul(x, w, 300, 300), want)
            os._exit(0 if ok else 3)
        deadline = time.time() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                os.kill(pid, 9); os.waitpid(pid, 0)
                print("HUNG", i); os._exit(5)
            time.sleep(0.001)
        bad += os.waitstatus_to_exitcode(status) != 0
    stop = True; t.join()
    print("OK" if bad == 0 else f"BAD {bad}")
    """
    proc = run_python(code, timeout=240)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-3000:]


@needs_workers
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_parallel_teams():
    code = """
    import os
    import numpy as np, fastnn
    from fastnn_ext import _runtime
    _runtime.configure(check_contention=False)
    x = np.random.default_rng(0).standard_normal((8, 16, 40, 40))
    w = np.random.default_rng(1).standard_normal((16, 16, 3, 3))
    with fastnn.threads(2):
        want = fastnn.conv2d(x, w, padding=1)
    pid = os.fork()
    if pid == 0:
        with fastnn.threads(2):
            ok = np.array_equal(fastnn.conv2d(x, w, padding=1), want)
        ok &= _runtime.stats()["workers"] == 1
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    """
    proc = run_python(code, timeout=60)
    assert proc.returncode == 0 and "child 0" in proc.stdout, proc.stdout + proc.stderr[-3000:]


# ------------------------------------------------------------------ threadpoolctl, affinity
def test_threadpoolctl_limits_fastnn_and_restores():
    from threadpoolctl import threadpool_info, threadpool_limits
    assert any(i["internal_api"] == "fastnn" for i in threadpool_info())
    fastnn.set_num_threads(2)
    with threadpool_limits(1):
        assert fastnn.get_num_threads() == 1
        with fastnn.threads(2):
            assert fastnn.get_num_threads() == 1
        assert _runtime.max_threads() == 1
    assert fastnn.get_num_threads() == 2
    with threadpool_limits(limits=1, user_api="openmp"):
        assert fastnn.get_num_threads() == 1
    with threadpool_limits(limits=1, user_api="blas"):
        assert fastnn.get_num_threads() == 2
    # no limit left behind: a larger count afterwards is honoured
    fastnn.set_num_threads(min(3, fastnn._threads.MAX_THREADS))
    assert fastnn.get_num_threads() == min(3, fastnn._threads.MAX_THREADS)
    assert _runtime.get_limit() == 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_default_follows_affinity_changes_at_once():
    code = """
    import os, time, fastnn
    cpus = sorted(os.sched_getaffinity(0))
    first = fastnn.get_num_threads()
    os.sched_setaffinity(0, cpus[:1])
    time.sleep(0.02)        # the mask is re-read once per coarse-clock tick (a few ms)
    one = fastnn.get_num_threads()
    os.sched_setaffinity(0, cpus)
    time.sleep(0.02)
    print(first, one, fastnn.get_num_threads(), len(cpus))
    """
    proc = run_python(code, env_remove=("OMP_NUM_THREADS",))
    first, one, back, n = map(int, proc.stdout.split())
    assert (first, one, back) == (n, 1, n), proc.stdout + proc.stderr


# ------------------------------------------------------------------ idle workers, contention
def _thread_state(tid):
    with open(f"/proc/self/task/{tid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2]


@needs_workers
@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_idle_workers_sleep_soon_after_a_kernel():
    # libgomp's workers spin ~8 ms after each region (GOMP_SPINCOUNT=300000); the pool's
    # spin for 50 us. Poll the worker's state for 3 ms after the call returns.
    old = _runtime.configure(check_contention=False)
    try:
        x = np.random.default_rng(0).standard_normal(1 << 21)
        slept = 0
        for _ in range(5):
            with fastnn.threads(2):
                fastnn.relu(x)
            t_end = time.perf_counter() + 0.003
            tids = _runtime.stats()["worker_tids"]
            assert tids, "the pool made no worker"
            while time.perf_counter() < t_end:
                if all(_thread_state(t) == "S" for t in tids):
                    slept += 1
                    break
        assert slept >= 3, f"workers still running 3 ms after the call in {5 - slept} of 5"
    finally:
        _runtime.configure(**old)


@contextlib.contextmanager
def _cores_held():
    # One busy process per CPU, and the pool's contention check on.
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(os.cpu_count() or 1)]
    old = _runtime.configure(check_contention=True)
    try:
        time.sleep(0.3)
        yield
    finally:
        _runtime.configure(**old)
        for p in spinners:
            p.kill()
            p.wait()


@needs_workers
@pytest.mark.skipif(not LINUX, reason="reads /proc/loadavg")
def test_team_shrinks_when_other_tasks_hold_the_cores():
    with _cores_held():
        rng = np.random.default_rng(0)
        x = rng.standard_normal(1 << 21)
        want = fastnn.relu(x)
        # an lstm_cell step whose product is cut in blocks for a team: on a team shrunk
        # to one it takes the single product (the same bits either way)
        cell = (rng.standard_normal((16, 128)), rng.standard_normal((16, 256)),
                rng.standard_normal((16, 256)), rng.standard_normal((384, 1024)) * 0.05,
                rng.standard_normal(1024) * 0.05)
        with fastnn.threads(1):
            want_cell = fastnn.lstm_cell(*cell)
        before = _runtime.stats()["shrunk"]
        with fastnn.threads(2):
            for _ in range(5):
                assert np.array_equal(fastnn.relu(x), want)
                for got, w in zip(fastnn.lstm_cell(*cell), want_cell):
                    assert np.array_equal(got, w)
        assert _runtime.stats()["shrunk"] > before


@needs_workers
@pytest.mark.skipif(not LINUX, reason="reads /proc/loadavg")
def test_a_held_machine_is_not_re_read_before_every_region():
    # Reading /proc/loadavg is a system call, which right after a NumPy matmul slows
    # the next kernel by several us. A reading that found the cores held is kept a
    # quarter of the time they have been found held (from 0.5 ms of that on, at most
    # 10 ms); a free machine is re-read after 20 us.
    with _cores_held():
        x = np.random.default_rng(0).standard_normal(1 << 17)   # parallel from 2^16
        want = fastnn.relu(x)
        s0 = _runtime.stats()
        with fastnn.threads(2):
            for _ in range(400):
                assert np.array_equal(fastnn.relu(x), want)
        s1 = _runtime.stats()
        regions = s1["regions"] - s0["regions"]
        reads = s1["loadavg_reads"] - s0["loadavg_reads"]
        assert regions == 400 and s1["shrunk"] - s0["shrunk"] >= 300
        assert reads <= regions // 4, (reads, regions)
        # ... and never kept past 10 ms: after a pause the next region reads again
        time.sleep(0.015)
        with fastnn.threads(2):
            fastnn.relu(x)
        assert _runtime.stats()["loadavg_reads"] == s1["loadavg_reads"] + 1


@needs_workers
@pytest.mark.skipif(not LINUX, reason="reads /proc/loadavg")
def test_back_to_back_regions_reuse_a_free_reading():
    # Regions that start within 20 us of the last one's end (kernels called back to
    # back) reuse a reading that found the machine free, for up to 1 ms.
    old = _runtime.configure(check_contention=True)
    try:
        x = np.random.default_rng(0).standard_normal(1 << 17)   # parallel from 2^16
        time.sleep(0.02)       # past any held reading an earlier test left (<= 10 ms)
        for _ in range(5):     # a loop during which no other task took a core
            with fastnn.threads(2):
                fastnn.relu(x)
                s0 = _runtime.stats()
                t0 = time.perf_counter()
                for _ in range(200):
                    fastnn.relu(x)
                elapsed = time.perf_counter() - t0
            s1 = _runtime.stats()
            if s1["shrunk"] == s0["shrunk"]:
                break
            time.sleep(0.02)
        else:
            pytest.skip("other tasks held the cores during every loop")
        reads = s1["loadavg_reads"] - s0["loadavg_reads"]
        # at most one read a millisecond (plus those after a gap the scheduler made),
        # against one every 20 us before
        assert reads <= 10 + elapsed / 1e-3, (reads, elapsed)
    finally:
        _runtime.configure(**old)


@needs_workers
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_small_convolutions_run_serially_by_the_cost_model(real_conv_cost_model, layout):
    # Below 2^20 multiply-adds a convolution call starts no parallel region (waking a
    # sleeping worker costs more than the call); from there on it does. The results
    # are the same bits either way.
    rng = np.random.default_rng(5)

    def regions_of(N, C, H, W, K, backward):
        nhwc = layout == "NHWC"
        x = rng.standard_normal((N, H, W, C) if nhwc else (N, C, H, W)).astype(np.float32)
        w = rng.standard_normal((3, 3, C, K) if nhwc else (K, C, 3, 3)).astype(np.float32)
        gy = rng.standard_normal((N, H, W, K) if nhwc else (N, K, H, W)).astype(np.float32)
        call = ((lambda: fastnn.conv2d_backward(gy, x, w, padding=1, layout=layout))
                if backward else (lambda: (fastnn.conv2d(x, w, padding=1, layout=layout),)))
        with fastnn.threads(1):
            want = call()
        before = _runtime.stats()["teams"]
        with fastnn.threads(2):
            got = call()
        for a, b in zip(got, want):
            assert np.array_equal(a, b)
        return _runtime.stats()["teams"] - before

    for backward in (False, True):
        assert regions_of(32, 8, 4, 4, 16, backward) == 0        # 589,824 multiply-adds
        assert regions_of(1, 3, 8, 8, 4, backward) == 0          # 6,912
        assert regions_of(16, 8, 16, 16, 16, backward) > 0       # 4,718,592
    # conv_transpose2d counts the multiply-adds of its adjoint convolution
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    before = _runtime.stats()["teams"]
    with fastnn.threads(2):
        fastnn.conv_transpose2d(x, w, stride=2, padding=1)
        fastnn.conv_transpose2d_backward(
            rng.standard_normal((1, 4, 15, 15)).astype(np.float32), x, w, stride=2, padding=1)
    assert _runtime.stats()["teams"] == before


# ------------------------------------------------------------------ coexistence
def test_coexistence_routes_openblas_and_keeps_results():
    import scipy.linalg.blas as sblas
    rng = np.random.default_rng(9)
    a = rng.standard_normal((500, 400), dtype=np.float32)
    b = rng.standard_normal((400, 300), dtype=np.float32)
    want_np, want_sp = a @ b, sblas.sgemm(1.0, a, b)
    calls = _gemm_backed_calls(rng)
    want_fastnn = [_flat(c()) for c in calls]
    assert not fastnn.get_coexistence()
    routed = fastnn.set_coexistence(True)
    try:
        if not routed:
            pytest.skip("no loaded OpenBLAS offers openblas_set_threads_callback_function, "
                        "or a serial build has no pool to lend")
        assert fastnn.get_coexistence()
        regions = _runtime.stats()["regions"]
        for _ in range(3):
            assert np.array_equal(a @ b, want_np)
            assert np.array_equal(sblas.sgemm(1.0, a, b), want_sp)
        for c, w in zip(calls, want_fastnn):
            for u, v in zip(_flat(c()), w):
                assert np.array_equal(u, v)
        assert _runtime.stats()["regions"] > regions   # OpenBLAS's jobs ran on the pool

        # NumPy's BLAS from several Python threads at once (the pool is busy: the
        # callback makes threads of its own)
        out = []
        ts = [threading.Thread(target=lambda: out.append(np.array_equal(a @ b, want_np)))
              for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert out == [True] * 4
    finally:
        assert fastnn.set_coexistence(False) == []
    assert not fastnn.get_coexistence()
    assert np.array_equal(a @ b, want_np)
    with pytest.raises(TypeError, match="on must be a bool"):
        fastnn.set_coexistence(1)


# ------------------------------------------------------------------ products on the pool
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,k,n,trans_a,trans_b", [
    (16, 384, 1024, False, False),   # an lstm_cell step's product: 2 x 4 blocks of work
    (97, 65, 257, False, False),     # partial blocks in every direction, k past one K block
    (130, 70, 300, True, False),
    (40, 129, 513, False, True),
    (3, 1, 5, False, False),         # below the serial threshold
    (5, 0, 7, False, False),         # k = 0: zeros
])
def test_products_on_the_pool_match_float64_and_any_thread_count(dtype, m, k, n, trans_a,
                                                                   trans_b):
    # The recurrent kernels' products that run on fastnn's pool instead of BLAS's.
    from fastnn_ext import _recurrent
    rng = np.random.default_rng(m * n + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)
    got = [_recurrent._product_check(a, b, trans_a, trans_b, True, t) for t in (1, 2, 3, 7)]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    scale = max(1.0, float(np.abs(ref).max()))
    assert got[0].shape == (m, n) and got[0].dtype == dtype
    np.testing.assert_allclose(got[0], ref, rtol=0, atol=tol * scale * max(1, k) ** 0.5)
    for other in got[1:]:
        assert np.array_equal(other, got[0])
