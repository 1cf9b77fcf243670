"""Test helpers shared by the test modules (tests/ is on sys.path via conftest.py)."""
import contextlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
DTYPES = (np.float32, np.float64)


def property_settings(examples=60, *suppress):
    """hypothesis settings of the property tests: ``examples`` per test unless
    FASTNN_TEST_EXAMPLES says (2000 for a longer hunt), no deadline, no database;
    ``suppress``: health checks besides too_slow to turn off."""
    return settings(max_examples=int(os.environ.get("FASTNN_TEST_EXAMPLES", str(examples))),
                    deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, *suppress])


PROPERTY = property_settings()


def int_pairs(lo, hi):
    """Strategy: (a, b), each an int in [lo, hi] (one per spatial axis)."""
    return st.tuples(st.integers(lo, hi), st.integers(lo, hi))


def paddings_2d(side_max=3):
    """Strategy: every 2-D padding form -- "same", "valid", an int, (ph, pw) and
    ((top, bottom), (left, right)) with sides up to ``side_max``."""
    return st.one_of(st.just("same"), st.just("valid"), st.integers(0, 2), int_pairs(0, 2),
                     st.tuples(int_pairs(0, side_max), int_pairs(0, side_max)))


def snapshot(values):
    """(array, copy) pairs for the ndarrays among values, to check nothing changed."""
    return [(v, v.copy()) for v in values if isinstance(v, np.ndarray)]


def call_raises(exc, match, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises exc matching `match`; no array argument changed."""
    snap = snapshot(list(args) + list(kwargs.values()))
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    for arr, before in snap:
        np.testing.assert_array_equal(arr, before)
    return info


def rel_err(got, want, abs_want=None):
    """The error metric of every comparison here: norm-wise relative error
    ``||got - want|| / ||want||`` (absolute when want is 0), shapes equal.

    ``abs_want`` (the same computation on absolute values) guards against a
    reference that cancels to almost nothing: the error is then measured against
    a tenth of its norm, the scale rounding errors actually live on. Both norms are
    taken after dividing by the largest magnitude, so huge values do not overflow.
    """
    got = np.asarray(got)
    assert got.shape == np.shape(want), f"shape {got.shape} != {np.shape(want)}"
    got64, want = got.astype(np.float64).ravel(), np.asarray(want, dtype=np.float64).ravel()
    big = max(np.max(np.abs(want), initial=0.0), np.max(np.abs(got64), initial=0.0))
    unit = big if np.isfinite(big) and big > 0 else 1.0    # no overflow in the norms
    diff = np.linalg.norm((got64 - want) / unit)
    scale = np.linalg.norm(want / unit)
    if abs_want is not None:
        scale = max(scale, 0.1 * np.linalg.norm(np.ravel(abs_want) / unit))
    return diff / scale if scale > 0 else diff


def assert_close(got, want, dtype, what="", abs_want=None, check_dtype=False):
    """:func:`rel_err` within the dtype's tolerance ``TOL`` (DESIGN.md);
    ``check_dtype``: got must also have that dtype."""
    got = np.asarray(got)
    assert got.shape == np.shape(want), f"{what}: shape {got.shape} != {np.shape(want)}"
    if check_dtype:
        assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype} != {np.dtype(dtype)}"
    err = rel_err(got, want, abs_want)
    assert err <= TOL[np.dtype(dtype)], f"{what}: relative error {err:.3g} ({np.dtype(dtype)})"


def x_shape_of(layout, N, C, *spatial):
    """An input's shape in ``layout``: channels last for NHWC / NWC, else after N."""
    return (N, *spatial, C) if layout.endswith("C") else (N, C, *spatial)


def numeric_grad(f, a, eps=1e-6):
    """Central finite differences of the scalar f() with respect to the array a
    (perturbed in place and restored)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def memory_variants(a):
    """The same values in other memory layouts: Fortran, negative strides, slices,
    read-only, transposed."""
    out = {"C": np.ascontiguousarray(a), "F": np.asfortranarray(a)}
    flip = (slice(None, None, -1),) * a.ndim
    rev = np.ascontiguousarray(a[flip])[flip]
    if a.size > 1:
        assert rev.strides[0] < 0 or a.shape[0] == 1
    out["negative"] = rev
    big = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
    sl = big[tuple(slice(1, None, 2) for _ in a.shape)]
    sl[...] = a
    out["strided"] = sl
    ro = a.copy()
    ro.setflags(write=False)
    out["readonly"] = ro
    out["transposed"] = np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2) \
        if a.ndim >= 2 else a.copy()
    for v in out.values():
        np.testing.assert_array_equal(v, a)
    return out


@contextlib.contextmanager
def convolutions_parallel_at_any_size():
    """Within the block every convolution call uses its thread count, however small
    (the cost model runs calls below 2^20 multiply-adds serially): so that the tests'
    small shapes exercise the split of the work between threads. conftest.py applies
    it to every test; ``_threads.SERIAL_BELOW["conv"]`` is the real threshold inside
    ``real_conv_cost_model``."""
    from fastnn import _threads
    old = _threads.SERIAL_BELOW["conv"]
    _threads.SERIAL_BELOW["conv"] = 0
    try:
        yield
    finally:
        _threads.SERIAL_BELOW["conv"] = old


def assert_thread_count_invariant(fn, counts=(1, 2, 3)):
    """fn() (a tuple of arrays or Nones) is bitwise the same under every thread count."""
    import fastnn
    results = []
    for n in counts:
        with fastnn.threads(n):
            res = fn()
        results.append(res if isinstance(res, tuple) else (res,))
    for n, other in zip(counts[1:], results[1:]):
        for i, (a, b) in enumerate(zip(results[0], other)):
            if a is None:
                assert b is None
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"result {i}, {counts[0]} vs {n} threads")


def assert_finite_difference_grads(f, grads, arrays, names, grad_y=None, tol=1e-7):
    """``grads`` (the analytic gradients, in order, with respect to the float64
    ``arrays``) agree with :func:`numeric_grad`: :func:`rel_err` either way round below
    ``tol``. The loss is ``sum(f() * grad_y)``, or the scalar ``f()`` when grad_y is None."""
    def loss():
        return float(f()) if grad_y is None else float(np.sum(f() * grad_y))

    for got, a, name in zip(grads, arrays, names):
        num = numeric_grad(loss, a)
        err = max(rel_err(got, num), rel_err(num, got))
        assert err < tol, f"{name}: relative error vs finite differences {err:.3g}"


HERE = os.path.dirname(os.path.abspath(__file__))


def run_at_simd_level(script, level, timeout=300):
    """Run ``script`` (formatted with ``here`` = this folder, given the level as argv[1])
    in a fresh interpreter whose kernels are capped at SIMD ``level``
    (``FASTNN_UKERNEL_MAX``); it must exit 0 and print a line starting with "ok"."""
    env = dict(os.environ, FASTNN_UKERNEL_MAX=str(level))
    proc = subprocess.run([sys.executable, "-c", script.format(here=HERE), str(level)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok"), proc.stdout


def run_python(code, env_update=None, env_remove=(), timeout=120):
    """Run `code` in a fresh interpreter with this process's import path."""
    env = dict(os.environ)
    for k in env_remove:
        env.pop(k, None)
    paths = [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in (env.get("PYTHONPATH", "").split(os.pathsep) + paths) if p])
    if env_update:
        env.update(env_update)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


_FORK_SCRIPT = """\
import os, sys
import numpy as np
import fastnn
{setup}
pid = os.fork()
if pid == 0:
    try:
{child}
        os._exit(0 if ok else 3)
    except BaseException as exc:
        print("child error:", repr(exc), flush=True)
        os._exit(4)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
{parent}
print("child", code, "parent", ok)
sys.exit(0 if code == 0 and ok else 1)
"""


def assert_works_after_fork(setup, child, parent, timeout=60):
    """A fresh interpreter runs ``setup`` (fastnn with its thread pool up) and forks;
    the ``child`` code and then, in the parent, the ``parent`` code each set ``ok``,
    which must be true on both sides, within ``timeout`` seconds (no hang)."""
    script = _FORK_SCRIPT.format(setup=textwrap.dedent(setup),
                                 child=textwrap.indent(textwrap.dedent(child), " " * 8),
                                 parent=textwrap.dedent(parent))
    try:
        proc = run_python(script, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fork test hung (child or parent did not finish within {timeout} s)")
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "child 0 parent True" in proc.stdout
