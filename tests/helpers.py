"""Test helpers shared by the test modules (tests/ is on sys.path via conftest.py)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
DTYPES = (np.float32, np.float64)

# FASTNN_TEST_EXAMPLES=2000 for a longer hunt; 60 keeps the suite fast.
PROPERTY = settings(max_examples=int(os.environ.get("FASTNN_TEST_EXAMPLES", "60")),
                    deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow])


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


def assert_close(got, want, dtype, what="", abs_want=None):
    """Norm-wise relative error within the dtype's tolerance (DESIGN.md).

    ``abs_want`` (the same computation on absolute values) guards against a
    reference that cancels to almost nothing: the error is then measured against
    a tenth of its norm, the scale rounding errors actually live on.
    """
    got = np.asarray(got)
    assert got.shape == np.shape(want), f"{what}: shape {got.shape} != {np.shape(want)}"
    got64, want = got.astype(np.float64).ravel(), np.asarray(want, dtype=np.float64).ravel()
    big = max(np.max(np.abs(want), initial=0.0), np.max(np.abs(got64), initial=0.0))
    unit = big if np.isfinite(big) and big > 0 else 1.0    # no overflow in the norms
    diff = np.linalg.norm((got64 - want) / unit)
    scale = np.linalg.norm(want / unit)
    if abs_want is not None:
        scale = max(scale, 0.1 * np.linalg.norm(np.ravel(abs_want) / unit))
    err = diff / scale if scale > 0 else diff
    assert err <= TOL[np.dtype(dtype)], f"{what}: relative error {err:.3g} ({np.dtype(dtype)})"


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


def assert_finite_difference_grads(forward, grads, arrays, names, grad_y, tol=1e-7):
    """``grads`` (the analytic gradients of sum(forward() * grad_y) with respect to the
    float64 ``arrays``, in order) agree with central finite differences."""
    def loss():
        return float(np.sum(forward() * grad_y))

    for got, a, name in zip(grads, arrays, names):
        err = np.linalg.norm(got - numeric_grad(loss, a)) / max(np.linalg.norm(got), 1e-300)
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
