"""Tests of fastnn.activations: relu, leaky_relu, sigmoid, tanh, softmax, log_softmax,
softmax_cross_entropy and their backwards.

Against the float64 references of tests/reference.py (property tests over random
shapes and dtypes), finite differences in float64, PyTorch (where installed), the
NaN / Inf rules of SPEC.md, in-place use, the bad-input rules, memory layouts and
thread-count determinism.
"""
import itertools
import os
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastnn
import fastnn.activations
import reference as ref
from helpers import (DTYPES, PROPERTY, TOL, assert_close, assert_works_after_fork, call_raises,
                     memory_variants, numeric_grad, rel_err, run_at_simd_level)


def assert_same_nonfinite(got, want, what="", dtype=np.float64):
    """NaN where the reference has NaN, the same infinities, close elsewhere."""
    got = np.asarray(got, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: infinities")
    fin = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), fin, err_msg=f"{what}: finite positions")
    if fin.any():
        assert_close(got[fin], want[fin], dtype, what)


# ------------------------------------------------------------------ the ops
SLOPE = 0.2


def _sig_y(x):
    return ref.sigmoid(x)


def _tanh_y(x):
    return ref.tanh(x)


# name: (fastnn forward, reference forward)
UNARY = {
    "relu": (fastnn.relu, ref.relu),
    "leaky_relu": (lambda x, **kw: fastnn.leaky_relu(x, SLOPE, **kw),
                   lambda x: ref.leaky_relu(x, SLOPE)),
    "sigmoid": (fastnn.sigmoid, ref.sigmoid),
    "tanh": (fastnn.tanh, ref.tanh),
}

# name: (fastnn backward(grad_y, second), reference, second input from x, forward name)
BINARY = {
    "relu_backward": (fastnn.relu_backward, ref.relu_backward, None, "relu"),
    "relu_backward_at_zero": (lambda g, x, **kw: fastnn.relu_backward(g, x, at_zero=0.5, **kw),
                              lambda g, x: ref.relu_backward(g, x, 0.5), None, None),
    "leaky_relu_backward": (lambda g, x, **kw: fastnn.leaky_relu_backward(g, x, SLOPE, **kw),
                            lambda g, x: ref.leaky_relu_backward(g, x, SLOPE), None, "leaky_relu"),
    "sigmoid_backward": (fastnn.sigmoid_backward, ref.sigmoid_backward, _sig_y, "sigmoid"),
    "tanh_backward": (fastnn.tanh_backward, ref.tanh_backward, _tanh_y, "tanh"),
}


def _second(name, x, dtype):
    """The second input of a backward: x itself, or the forward output y (rounded to
    dtype, as a network would store it)."""
    make = BINARY[name][2]
    return x if make is None else make(x).astype(dtype)


# ------------------------------------------------------------------ strategies
SHAPES = st.lists(st.integers(0, 7), min_size=0, max_size=4).map(tuple)
SCALES = st.sampled_from([1e-3, 0.3, 1.0, 4.0, 40.0])


def _data(rng, shape, dtype, scale, zeros=True):
    x = rng.standard_normal(shape) * scale
    if zeros and x.size:
        x.ravel()[rng.random(x.size) < 0.1] = 0.0      # exact zeros hit the x == 0 branch
    return x.astype(dtype)


@PROPERTY
@given(name=st.sampled_from(sorted(UNARY)), shape=SHAPES, dtype=st.sampled_from(DTYPES),
       scale=SCALES, seed=st.integers(0, 2**32 - 1))
def test_unary_matches_reference(name, shape, dtype, scale, seed):
    rng = np.random.default_rng(seed)
    x = _data(rng, shape, dtype, scale)
    f, r = UNARY[name]
    y = f(x)
    assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == shape
    assert_close(y, r(x), dtype, name)
    if name in ("relu", "leaky_relu"):   # exact: a select (and one product in the dtype)
        want = r(x).astype(dtype) if name == "relu" else np.where(x > 0, x, x * dtype(SLOPE))
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(np.signbit(y), np.signbit(want))


@PROPERTY
@given(name=st.sampled_from(sorted(BINARY)), shape=SHAPES, dtype=st.sampled_from(DTYPES),
       scale=SCALES, seed=st.integers(0, 2**32 - 1))
def test_backward_matches_reference(name, shape, dtype, scale, seed):
    rng = np.random.default_rng(seed)
    x = _data(rng, shape, dtype, scale)
    g = rng.standard_normal(shape).astype(dtype)
    s = _second(name, x, dtype)
    f, r, _, _ = BINARY[name]
    got = f(g, s)
    assert got.dtype == dtype and got.shape == shape
    assert_close(got, r(g, s), dtype, name)
    if name == "relu_backward":
        np.testing.assert_array_equal(got, r(g, s).astype(dtype))
    if name == "leaky_relu_backward":
        np.testing.assert_array_equal(got, np.where(s > 0, g, g * dtype(SLOPE)))


def test_relu_matches_numpy_maximum_bitwise():
    x = np.array([-np.inf, -2.0, -0.0, 0.0, 1e-320, 3.0, np.inf, np.nan, -np.nan])
    for dtype in DTYPES:
        xd = x.astype(dtype)
        y = fastnn.relu(xd)
        want = np.maximum(xd, 0)
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(np.signbit(y), np.signbit(want))   # relu(-0.0) is +0.0
        assert np.isnan(y[-2:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_function_accuracy_over_the_range(dtype):
    # Tails, the tanh switch at |x| = 0.1, subnormal sigmoid results, signed zeros.
    x = np.concatenate([np.linspace(-120, 120, 20001), np.geomspace(1e-30, 5, 3001),
                        -np.geomspace(1e-30, 5, 3001), [0.0999999, 0.1, 0.1000001]])
    xd = x.astype(dtype)
    for name, eps_max in (("sigmoid", 3), ("tanh", 12)):   # as the docstrings promise
        f, r = UNARY[name]
        got, want = f(xd).astype(np.float64), r(xd)
        # element-wise relative error, where the reference is representable
        tiny = np.finfo(dtype).tiny
        ok = np.abs(want) >= tiny
        rel = np.abs(got[ok] - want[ok]) / np.abs(want[ok])
        assert rel.max() < eps_max * np.finfo(dtype).eps, (name, rel.max())
    assert np.signbit(fastnn.tanh(np.array([-0.0], dtype)))[0]
    assert fastnn.sigmoid(np.array([-0.0], dtype))[0] == 0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_tail_into_the_subnormal_range_and_nan(dtype):
    # exp(-|x|) is scaled by 2^(n + 32) and then 2^-32 (2^64 / 2^-64 for float64): a
    # wrong scale, a flush to zero or a double rounding shows here, where the result is
    # subnormal (x from the last normal result down to where it rounds to 0).
    lo, hi = (-104.0, -87.0) if dtype == np.float32 else (-746.0, -707.0)
    x = np.linspace(lo, hi, 20001).astype(dtype)
    got = fastnn.sigmoid(x).astype(np.longdouble)
    # exp(x) / (1 + exp(x)) in long double (80-bit on x86; float64 elsewhere, whose
    # subnormal exp is within one step too): exp(-x) would overflow float64 here.
    e = np.exp(x.astype(np.longdouble))
    want = e / (1 + e)
    step = np.finfo(dtype).smallest_subnormal
    assert np.abs(got - want).max() <= 2 * step + 4 * np.finfo(dtype).eps * want.max()
    assert (got[x > lo + 5] > 0).all() and got[0] == 0
    special = np.array([np.nan, -np.nan, np.inf, -np.inf], dtype)
    for name, at_inf in (("sigmoid", (1, 0)), ("tanh", (1, -1))):
        y = getattr(fastnn, name)(special)
        assert np.isnan(y[:2]).all() and (y[2], y[3]) == at_inf, (name, y)


# ------------------------------------------------------------------ softmax
@st.composite
def softmax_cases(draw):
    shape = draw(st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple))
    if draw(st.booleans()):            # rows long enough for the vectorised row kernel
        shape = shape[:-1] + (draw(st.integers(28, 300)),)
    if draw(st.booleans()):            # sometimes empty along some axis
        shape = tuple(0 if i == draw(st.integers(0, len(shape))) else s
                      for i, s in enumerate(shape))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return shape, axis


@PROPERTY
@given(case=softmax_cases(), log=st.booleans(), dtype=st.sampled_from(DTYPES),
       scale=SCALES, seed=st.integers(0, 2**32 - 1))
def test_softmax_matches_reference(case, log, dtype, scale, seed):
    shape, axis = case
    rng = np.random.default_rng(seed)
    x = _data(rng, shape, dtype, scale, zeros=False)
    g = rng.standard_normal(shape).astype(dtype)
    fwd, bwd = ((fastnn.log_softmax, fastnn.log_softmax_backward) if log
                else (fastnn.softmax, fastnn.softmax_backward))
    rf, rb = ((ref.log_softmax, ref.log_softmax_backward) if log
              else (ref.softmax, ref.softmax_backward))
    y = fwd(x, axis)
    assert y.dtype == dtype and y.shape == shape
    assert_close(y, rf(x, axis), dtype, "forward")
    yd = y.astype(dtype)
    gx = bwd(g, yd, axis)
    ya = np.abs(yd.astype(np.float64))
    ga = np.abs(g.astype(np.float64))
    if log:
        abs_want = ga + np.exp(yd.astype(np.float64)) * np.sum(ga, axis=axis, keepdims=True)
    else:
        abs_want = ya * (ga + np.sum(ga * ya, axis=axis, keepdims=True))
    assert_close(gx, rb(g, yd, axis), dtype, "backward", abs_want=abs_want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((3, 70001), -1), ((300, 257), 1), ((5, 1), 1),
                                        ((4, 300, 517), 1), ((2, 3, 1030), 0), ((1100, 3), 0)])
def test_softmax_large_rows_and_axes(shape, axis, dtype):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + 50).astype(dtype)   # an offset that exp cannot take
    g = rng.standard_normal(shape).astype(dtype)
    for fwd, bwd, rf, rb in ((fastnn.softmax, fastnn.softmax_backward, ref.softmax,
                              ref.softmax_backward),
                             (fastnn.log_softmax, fastnn.log_softmax_backward, ref.log_softmax,
                              ref.log_softmax_backward)):
        y = fwd(x, axis)
        assert_close(y, rf(x, axis), dtype, fwd.__name__)
        gx = bwd(g, y, axis)
        assert_close(gx, rb(g, y, axis), dtype, bwd.__name__,
                     abs_want=rb(np.abs(g), np.abs(y), axis) if fwd is fastnn.softmax else None)
    s = fastnn.softmax(x, axis).astype(np.float64).sum(axis=axis)
    np.testing.assert_allclose(s, 1.0, rtol=TOL[np.dtype(dtype)])


def test_softmax_is_stable_for_huge_logits():
    x = np.array([[1000.0, 1000.0, -1000.0], [-1e308, 0.0, 1e308]])
    np.testing.assert_allclose(fastnn.softmax(x), [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(fastnn.log_softmax(x)[0],
                               [-np.log(2), -np.log(2), -2000 - np.log(2)])
    x32 = np.array([[100.0, 0.0]], dtype=np.float32)
    assert np.isfinite(fastnn.log_softmax(x32)).all()


def test_softmax_zero_dim_and_scalar():
    assert fastnn.softmax(np.float64(3.0)) == 1.0
    assert fastnn.log_softmax(np.array(3.0, dtype=np.float32)) == 0.0
    assert fastnn.softmax(np.float64(3.0)).shape == ()


# ------------------------------------------------------------------ cross-entropy
@st.composite
def xent_cases(draw):
    N, C = draw(st.integers(0, 9)), draw(st.integers(1, 70))
    return dict(N=N, C=C, probs=draw(st.booleans()),
                reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                dtype=draw(st.sampled_from(DTYPES)), scale=draw(SCALES),
                seed=draw(st.integers(0, 2**32 - 1)))


def _xent_inputs(c):
    rng = np.random.default_rng(c["seed"])
    logits = (rng.standard_normal((c["N"], c["C"])) * c["scale"]).astype(c["dtype"])
    if c["probs"]:
        t = rng.random((c["N"], c["C"]))
        t /= np.maximum(t.sum(axis=1, keepdims=True), 1e-300)
        labels = t.astype(c["dtype"])
    else:
        labels = rng.integers(0, c["C"], c["N"])
    return rng, logits, labels


@PROPERTY
@given(c=xent_cases())
def test_cross_entropy_matches_reference(c):
    rng, logits, labels = _xent_inputs(c)
    dtype, red, N = c["dtype"], c["reduction"], c["N"]
    loss = fastnn.softmax_cross_entropy(logits, labels, reduction=red)
    want = ref.softmax_cross_entropy(logits, labels, red)
    assert loss.dtype == dtype and loss.shape == np.shape(want)
    if red == "mean" and N == 0:
        assert np.isnan(loss)
    else:
        assert_close(loss, want, dtype, "loss")
    gl = rng.standard_normal(N).astype(dtype) if red == "none" else 1.5
    grad = fastnn.softmax_cross_entropy_backward(gl, logits, labels, reduction=red)
    assert grad.dtype == dtype and grad.shape == logits.shape
    want_g = ref.softmax_cross_entropy_backward(gl, logits, labels, red)
    # The scale of the two terms that cancel in s * (p * sum(t) - t): p rounds to
    # 1 in float32 where p = 1 - 1e-10 (probability targets), the difference to 0.
    t = ref._targets(labels, logits.shape)
    s = np.abs(np.asarray(gl, dtype=np.float64)) / (N if red == "mean" and N else 1)
    abs_want = np.reshape(s, (-1, 1)) * (ref.softmax(logits, axis=1) * np.abs(t.sum(1))[:, None]
                                        + np.abs(t)) if N else None
    assert_close(grad, want_g, dtype, "grad", abs_want=abs_want if c["probs"] else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C", [(256, 10000), (3, 5000), (700, 3)])
def test_cross_entropy_large(N, C, dtype):
    rng = np.random.default_rng(N + C)
    logits = (rng.standard_normal((N, C)) * 4 + 30).astype(dtype)
    labels = rng.integers(0, C, N)
    for red in ("mean", "none"):
        assert_close(fastnn.softmax_cross_entropy(logits, labels, reduction=red),
                     ref.softmax_cross_entropy(logits, labels, red), dtype, red)
    assert_close(fastnn.softmax_cross_entropy_backward(1.0, logits, labels),
                 ref.softmax_cross_entropy_backward(1.0, logits, labels), dtype, "grad")


def test_cross_entropy_one_hot_equals_index_labels():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4))
    lab = rng.integers(0, 4, 6)
    onehot = np.eye(4)[lab]
    for red in ("mean", "sum", "none"):
        np.testing.assert_allclose(fastnn.softmax_cross_entropy(x, onehot, reduction=red),
                                   fastnn.softmax_cross_entropy(x, lab, reduction=red), rtol=1e-14)
    np.testing.assert_allclose(fastnn.softmax_cross_entropy_backward(1.0, x, onehot),
                               fastnn.softmax_cross_entropy_backward(1.0, x, lab), atol=1e-16)


def test_cross_entropy_empty_batch():
    x = np.zeros((0, 5), dtype=np.float32)
    lab = np.zeros(0, dtype=np.int64)
    loss = fastnn.softmax_cross_entropy(x, lab)
    assert loss.shape == () and loss.dtype == np.float32 and np.isnan(loss)
    assert fastnn.softmax_cross_entropy(x, lab, reduction="sum") == 0
    assert fastnn.softmax_cross_entropy(x, lab, reduction="none").shape == (0,)
    assert fastnn.softmax_cross_entropy(x, np.zeros((0, 5), np.float32)).shape == ()
    g = fastnn.softmax_cross_entropy_backward(1.0, x, lab)
    assert g.shape == (0, 5) and g.dtype == np.float32
    g = fastnn.softmax_cross_entropy_backward(np.zeros(0), x, lab, reduction="none")
    assert g.shape == (0, 5)


def test_cross_entropy_grad_loss_dtype_rules():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    lab = np.array([0, 1, 3])
    assert fastnn.softmax_cross_entropy_backward(1.0, x, lab).dtype == np.float32
    assert fastnn.softmax_cross_entropy_backward(1, x, lab).dtype == np.float32
    assert fastnn.softmax_cross_entropy_backward(np.float32(1), x, lab).dtype == np.float32
    assert fastnn.softmax_cross_entropy_backward(np.array(1.0), x, lab).dtype == np.float64
    t64 = np.full((3, 4), 0.25)
    assert fastnn.softmax_cross_entropy(x, t64).dtype == np.float64
    assert fastnn.softmax_cross_entropy_backward(1.0, x, t64).dtype == np.float64
    # any integer dtype of labels works
    for ldt in (np.int8, np.uint8, np.int32, np.uint64):
        np.testing.assert_array_equal(
            fastnn.softmax_cross_entropy(x, lab.astype(ldt), reduction="none"),
            fastnn.softmax_cross_entropy(x, lab, reduction="none"))


# ------------------------------------------------------------------ cross-entropy options
# PyTorch's weight, ignore_index and label_smoothing, and (N, C, d1, ...) logits.
IGNORE = -100


@st.composite
def xent_option_cases(draw):
    spatial = draw(st.sampled_from([(), (), (1,), (3,), (2, 3), (1, 2, 2)]))
    C = draw(st.sampled_from([1, 2, 5, 31, 33, 70]))
    return dict(N=draw(st.integers(0, 5)), C=C, spatial=spatial, probs=draw(st.booleans()),
                reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                weight=draw(st.booleans()),
                ignore_index=draw(st.sampled_from([None, IGNORE, 0, C + 3])),
                label_smoothing=draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0])),
                dtype=draw(st.sampled_from(DTYPES)), scale=draw(SCALES),
                seed=draw(st.integers(0, 2**32 - 1)))


def _xent_option_inputs(c):
    rng = np.random.default_rng(c["seed"])
    N, C, spatial, dtype = c["N"], c["C"], c["spatial"], c["dtype"]
    logits = (rng.standard_normal((N, C) + spatial) * c["scale"]).astype(dtype)
    ignore = c["ignore_index"]
    if c["probs"]:
        t = rng.random(logits.shape)
        labels = (t / np.maximum(t.sum(axis=1, keepdims=True), 1e-300)).astype(dtype)
        ignore = None if ignore is None or ignore >= 0 else ignore
    else:
        labels = rng.integers(0, C, (N,) + spatial)
        if ignore is not None and labels.size:
            labels.reshape(-1)[rng.random(labels.size) < 0.3] = ignore
    weight = (rng.random(C) + 0.25).astype(dtype) if c["weight"] else None
    kw = dict(reduction=c["reduction"], weight=weight, ignore_index=ignore,
              label_smoothing=c["label_smoothing"])
    return rng, logits, labels, kw


def _same_or_nan(got, want, dtype, what, abs_want=None):
    """NaN exactly where the reference has NaN (an all-ignored or empty mean), close
    elsewhere."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN")
    keep = ~np.isnan(want)
    assert_close(got[keep], want[keep], dtype, what,
                 abs_want=None if abs_want is None else np.asarray(abs_want)[keep])


def _probs_grad_scale(gl, x, t, kw):
    """s * (p * sum(t) + t) with the weighted, smoothed targets t: the size of the two
    terms that cancel in the gradient for probability targets (p = 1 - 1e-10 rounds to
    1 in float32, the difference to 0)."""
    x = np.asarray(x, dtype=np.float64)
    C = x.shape[1]
    w = np.ones(C) if kw.get("weight") is None else np.asarray(kw["weight"], np.float64)
    eps = kw.get("label_smoothing", 0.0)
    tt = w.reshape((1, C) + (1,) * (x.ndim - 2)) * ((1 - eps) * np.asarray(t, np.float64)
                                                     + eps / C)
    g = np.abs(np.asarray(gl, dtype=np.float64))
    red = kw.get("reduction", "mean")
    s = np.expand_dims(g, 1) if red == "none" else g / (max(x.size // max(C, 1), 1)
                                                        if red == "mean" else 1)
    return s * (ref.softmax(x, axis=1) * np.abs(tt.sum(axis=1, keepdims=True)) + np.abs(tt))


@PROPERTY
@given(c=xent_option_cases())
def test_cross_entropy_options_match_reference(c):
    rng, logits, labels, kw = _xent_option_inputs(c)
    dtype, red = c["dtype"], c["reduction"]
    positions = (c["N"],) + c["spatial"]
    before = [logits.copy(), np.array(labels, copy=True)]
    loss = fastnn.softmax_cross_entropy(logits, labels, **kw)
    want = ref.softmax_cross_entropy(logits, labels, **kw)
    assert loss.dtype == dtype and loss.shape == np.shape(want)
    _same_or_nan(loss, want, dtype, "loss")
    gl = rng.standard_normal(positions).astype(dtype) if red == "none" else 1.5
    grad = fastnn.softmax_cross_entropy_backward(gl, logits, labels, **kw)
    assert grad.dtype == dtype and grad.shape == logits.shape
    want_g = ref.softmax_cross_entropy_backward(gl, logits, labels, **kw)
    # Probability targets: p * sum(t) - t cancels (see test_cross_entropy_matches_reference).
    _same_or_nan(grad, want_g, dtype, "grad", abs_want=_probs_grad_scale(gl, logits, labels, kw)
                 if c["probs"] and logits.size else None)
    np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(labels, before[1])


def _torch_xent(torch, x, labels, gl, **kw):
    """PyTorch's loss and autograd gradient, with fastnn's keyword names."""
    tk = dict(reduction=kw.get("reduction", "mean"),
              label_smoothing=kw.get("label_smoothing", 0.0))
    if kw.get("weight") is not None:
        tk["weight"] = torch.from_numpy(np.ascontiguousarray(kw["weight"]))
    if kw.get("ignore_index") is not None:
        tk["ignore_index"] = kw["ignore_index"]
    tx = _t(torch, x, grad=True)
    tloss = torch.nn.functional.cross_entropy(tx, torch.from_numpy(np.ascontiguousarray(labels)),
                                              **tk)
    tloss.backward(torch.as_tensor(np.asarray(gl), dtype=tx.dtype))
    return tloss.detach().numpy().astype(np.float64), tx.grad.numpy().astype(np.float64)


def _cross_entropy_samples(rng, dtype):
    """PyTorch's OpInfo sample inputs of cross_entropy (sample_inputs_cross_entropy):
    (2, 3) logits and the (2, 3, 1), (2, 3, 1, 2), (2, 3, 1, 2, 3) shapes, every
    reduction, weight, ignore_index=1, class indices and probabilities -- plus
    label_smoothing and the torch adapter's ignore_index=-100 on each."""
    shape = (2, 3)
    cases = [(shape, {}), (shape + (1,), {}), (shape + (1, 2), {}), (shape + (1, 2, 3), {})]
    cases += [(shape, dict(reduction=r)) for r in ("mean", "sum", "none")]
    cases += [(shape, dict(weight="w", reduction=r)) for r in ("mean", "sum", "none")]
    cases += [(shape, dict(ignore_index=1))]
    cases += [(shape + (1, 2), dict(weight="w", reduction=r, ignore_index=1))
              for r in ("mean", "sum", "none")]
    for (s, kw), probs, smoothing, adapter in itertools.product(cases, (False, True),
                                                                (0.0, 0.25, 1.0), (False, True)):
        if probs and "ignore_index" in kw:        # PyTorch: class indices only
            continue
        kw = dict(kw, label_smoothing=smoothing)
        if adapter and "ignore_index" not in kw:
            kw["ignore_index"] = IGNORE
        x = rng.uniform(-9, 9, s).astype(dtype)   # make_tensor's range
        if kw.get("weight") == "w":
            kw["weight"] = rng.uniform(0, 9, s[1]).astype(dtype)
        if probs:
            labels = rng.uniform(0, 1, s).astype(dtype)
        else:
            labels = rng.integers(0, s[1], (s[0],) + s[2:])
            if "ignore_index" in kw and kw["ignore_index"] != IGNORE and (
                    labels == kw["ignore_index"]).all():
                labels.reshape(-1)[0] = 0          # at least one target counts
            if adapter and labels.size > 1:
                labels.reshape(-1)[-1] = IGNORE if kw.get("ignore_index") == IGNORE else \
                    labels.reshape(-1)[-1]
        yield x, labels, kw


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_opinfo_samples_match_torch(torch, dtype):
    rng = np.random.default_rng(21)
    n = 0
    for x, labels, kw in _cross_entropy_samples(rng, dtype):
        positions = (x.shape[0],) + x.shape[2:]
        red = kw.get("reduction", "mean")
        gl = rng.standard_normal(positions).astype(dtype) if red == "none" else 0.75
        tloss, tgrad = _torch_xent(torch, x, labels, gl, **kw)
        what = f"{x.shape} {kw} probs={labels.dtype.kind == 'f'}"
        loss = fastnn.softmax_cross_entropy(x, labels, **kw)
        assert loss.dtype == dtype and loss.shape == tloss.shape, what
        assert_close(loss, tloss, dtype, what)
        grad = fastnn.softmax_cross_entropy_backward(gl, x, labels, **kw)
        assert_close(grad, tgrad, dtype, what + " grad")
        n += 1
    assert n == 144


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(33, 17), (9, 40, 5), (4, 300, 3, 2), (3, 7, 1, 1), (5, 2, 513)],
                         ids=str)
def test_cross_entropy_options_and_autograd_match_torch(torch, dtype, shape):
    rng = np.random.default_rng(22)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    N, C = shape[:2]
    positions = (N,) + shape[2:]
    for red, weighted, ignore, smoothing in itertools.product(
            ("mean", "sum", "none"), (False, True), (None, IGNORE, 1), (0.0, 0.3)):
        labels = rng.integers(0, C, positions)
        if ignore is not None:
            labels.reshape(-1)[::4] = ignore
        kw = dict(reduction=red, ignore_index=ignore, label_smoothing=smoothing,
                  weight=(rng.random(C) * 2).astype(dtype) if weighted else None)
        gl = rng.standard_normal(positions).astype(dtype) if red == "none" else 1.0
        tloss, tgrad = _torch_xent(torch, x, labels, gl, **kw)
        assert_close(fastnn.softmax_cross_entropy(x, labels, **kw), tloss, dtype, str(kw))
        assert_close(fastnn.softmax_cross_entropy_backward(gl, x, labels, **kw), tgrad, dtype,
                     f"{kw} grad")
    # probability targets with weight and smoothing
    t = rng.random(shape)
    t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    for red, smoothing in itertools.product(("mean", "sum", "none"), (0.0, 0.3)):
        kw = dict(reduction=red, weight=(rng.random(C) * 2).astype(dtype),
                  label_smoothing=smoothing, ignore_index=IGNORE)
        gl = rng.standard_normal(positions).astype(dtype) if red == "none" else 1.0
        tloss, tgrad = _torch_xent(torch, x, t, gl, **kw)
        assert_close(fastnn.softmax_cross_entropy(x, t, **kw), tloss, dtype, f"probs {kw}")
        g = fastnn.softmax_cross_entropy_backward(gl, x, t, **kw)
        assert_close(g, tgrad, dtype, f"probs {kw} grad", abs_want=_probs_grad_scale(gl, x, t, kw))


@pytest.mark.parametrize("shape", [(4, 6), (2, 5, 3), (2, 4, 2, 3)], ids=str)
@pytest.mark.parametrize("kw", [
    dict(weight=np.array([0.5, 2.0, 1.0, 3.0, 0.25, 1.5])),
    dict(ignore_index=2), dict(label_smoothing=0.3),
    dict(weight=np.array([0.5, 2.0, 1.0, 3.0, 0.25, 1.5]), ignore_index=1, label_smoothing=0.6)],
    ids=lambda kw: ",".join(kw))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_options_backward_finite_differences(shape, kw, reduction):
    rng = np.random.default_rng(23)
    x = rng.standard_normal(shape) * 2
    C = shape[1]
    kw = dict(kw, reduction=reduction)
    if "weight" in kw:
        kw["weight"] = kw["weight"][:C]
    positions = (shape[0],) + shape[2:]
    labels = rng.integers(0, C, positions)
    labels.reshape(-1)[:2] = [1, 2]
    gl = rng.standard_normal(positions) if reduction == "none" else 0.7

    def loss():
        return float(np.sum(fastnn.softmax_cross_entropy(x, labels, **kw) * gl))

    num = numeric_grad(loss, x)
    got = fastnn.softmax_cross_entropy_backward(gl, x, labels, **kw)
    assert rel_err(got, num) < 1e-7
    if kw.get("ignore_index") is not None:          # ignored rows get exactly 0
        ignored = np.moveaxis(got, 1, -1)[labels == kw["ignore_index"]]
        assert ignored.size and (ignored == 0).all()
    t = rng.random(x.shape)
    t /= t.sum(axis=1, keepdims=True)
    pkw = {k: v for k, v in kw.items() if k != "ignore_index"}

    def ploss():
        return float(np.sum(fastnn.softmax_cross_entropy(x, t, **pkw) * gl))

    assert rel_err(fastnn.softmax_cross_entropy_backward(gl, x, t, **pkw),
                       numeric_grad(ploss, x)) < 1e-7


@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3)], ids=str)
def test_reference_cross_entropy_options_finite_differences(shape, probs):
    # The reference gradient with the options (it checks fastnn above).
    rng = np.random.default_rng(24)
    x = rng.standard_normal(shape)
    positions = (shape[0],) + shape[2:]
    kw = dict(weight=rng.random(shape[1]) + 0.5, label_smoothing=0.35, reduction="mean")
    if probs:
        labels = rng.random(shape)
    else:
        labels = rng.integers(0, shape[1], positions)
        labels.reshape(-1)[0] = 7
        kw["ignore_index"] = 7
    num = numeric_grad(lambda: float(ref.softmax_cross_entropy(x, labels, **kw)), x)
    assert rel_err(ref.softmax_cross_entropy_backward(1.0, x, labels, **kw), num) < 1e-7


def test_cross_entropy_ignore_index_rules():
    rng = np.random.default_rng(25)
    x = rng.standard_normal((6, 4))
    lab = np.array([0, 3, -100, 1, -100, 2])
    keep = lab != -100
    # ignored rows: 0 loss, 0 gradient, out of the mean
    none = fastnn.softmax_cross_entropy(x, lab, reduction="none", ignore_index=-100)
    assert (none[~keep] == 0).all()
    np.testing.assert_array_equal(none[keep], fastnn.softmax_cross_entropy(
        x[keep], lab[keep], reduction="none"))
    np.testing.assert_allclose(fastnn.softmax_cross_entropy(x, lab, ignore_index=-100),
                               fastnn.softmax_cross_entropy(x[keep], lab[keep]), rtol=1e-15)
    g = fastnn.softmax_cross_entropy_backward(1.0, x, lab, ignore_index=-100)
    assert (g[~keep] == 0).all()
    np.testing.assert_allclose(g[keep], fastnn.softmax_cross_entropy_backward(
        1.0, x[keep], lab[keep]), rtol=1e-14)
    # an ignored row's logits are not read: NaN there changes nothing
    xn = x.copy()
    xn[2] = np.nan
    np.testing.assert_array_equal(fastnn.softmax_cross_entropy(xn, lab, reduction="none",
                                                               ignore_index=-100), none)
    np.testing.assert_array_equal(fastnn.softmax_cross_entropy_backward(1.0, xn, lab,
                                                                        ignore_index=-100), g)
    # an ignore_index inside [0, C) ignores that class; one no label has is no-op, bit for bit
    lab2 = np.array([0, 3, 2, 1, 2, 2])
    np.testing.assert_array_equal(fastnn.softmax_cross_entropy(x, lab2, ignore_index=2),
                                  fastnn.softmax_cross_entropy(x[lab2 != 2], lab2[lab2 != 2]))
    for ii in (-100, 9):
        assert fastnn.softmax_cross_entropy(x, lab2, ignore_index=ii).tobytes() == \
            fastnn.softmax_cross_entropy(x, lab2).tobytes()
        assert fastnn.softmax_cross_entropy_backward(1.0, x, lab2, ignore_index=ii).tobytes() \
            == fastnn.softmax_cross_entropy_backward(1.0, x, lab2).tobytes()
    # every target ignored: the mean is NaN (0 / 0, as PyTorch), the gradient 0
    allign = np.full(6, 5)
    assert np.isnan(fastnn.softmax_cross_entropy(x, allign, ignore_index=5))
    assert fastnn.softmax_cross_entropy(x, allign, ignore_index=5, reduction="sum") == 0
    assert (fastnn.softmax_cross_entropy_backward(1.0, x, allign, ignore_index=5) == 0).all()
    # segmentation-style uint8 labels with 255 ignored, (N, C, H, W) logits
    x4 = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    seg = rng.integers(0, 3, (2, 4, 5)).astype(np.uint8)
    seg[0, 0] = 255
    want = ref.softmax_cross_entropy(x4, seg.astype(np.int64), ignore_index=255)
    assert_close(fastnn.softmax_cross_entropy(x4, seg, ignore_index=255), want, np.float32, "seg")


def test_cross_entropy_weight_rules():
    rng = np.random.default_rng(26)
    x = rng.standard_normal((5, 3))
    lab = np.array([0, 1, 2, 2, 1])
    w = np.array([2.0, 0.5, 1.0])
    none = fastnn.softmax_cross_entropy(x, lab, reduction="none", weight=w)
    np.testing.assert_allclose(none, w[lab] * fastnn.softmax_cross_entropy(x, lab,
                                                                           reduction="none"),
                               rtol=1e-15)
    # "mean" divides by the weights of the targets, as PyTorch
    np.testing.assert_allclose(fastnn.softmax_cross_entropy(x, lab, weight=w),
                               none.sum() / w[lab].sum(), rtol=1e-15)
    # dtype promotion follows NumPy: float32 logits with float64 weights give float64
    assert fastnn.softmax_cross_entropy(x.astype(np.float32), lab, weight=w).dtype == np.float64
    assert fastnn.softmax_cross_entropy_backward(1.0, x.astype(np.float32), lab,
                                                 weight=w.astype(np.float32)).dtype == np.float32
    # weights of zero: the mean is 0 / 0 (NaN), as PyTorch
    assert np.isnan(fastnn.softmax_cross_entropy(x, lab, weight=np.zeros(3)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_confident_rows_keep_the_label_gradient(dtype):
    # p - 1 at the label from the other classes, also with weights and on the strided
    # (N, C, d) path: a confident row's label gradient is tiny but not 0.
    C = 40
    x = np.zeros((3, C), dtype=dtype)
    x[:, 0] = 30.0
    lab = np.zeros(3, dtype=np.int64)
    w = np.linspace(0.5, 2, C).astype(dtype)
    for kw in (dict(), dict(weight=w), dict(weight=w, ignore_index=7)):
        want = ref.softmax_cross_entropy_backward(1.0, x, lab, **kw)
        got = fastnn.softmax_cross_entropy_backward(1.0, x, lab, **kw)
        assert want[0, 0] < 0
        np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=TOL[np.dtype(dtype)] * 10)
        x3 = np.ascontiguousarray(np.broadcast_to(x[:, :, None], (3, C, 5)))
        got3 = fastnn.softmax_cross_entropy_backward(1.0, x3, np.zeros((3, 5), np.int64), **kw)
        np.testing.assert_allclose(got3[:, 0], np.repeat(want[:, :1], 5, axis=1) / 5,
                                   rtol=TOL[np.dtype(dtype)] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_spatial_nan_inf_like_reference(dtype):
    # The strided (N, C, d) kernel: NaN / Inf logits as in the reference, with options.
    x = np.array([[0.0, 1.0, np.nan], [np.inf, 0.0, 0.0], [-np.inf, 1.0, 2.0],
                  [1.0, 2.0, 3.0]], dtype=dtype).T[None]          # (1, 3, 4)
    lab = np.array([[0, 1, 2, 0]])
    for kw in (dict(), dict(weight=np.array([1.0, 2.0, 0.5], dtype)), dict(label_smoothing=0.2),
               dict(ignore_index=1)):
        with np.errstate(invalid="ignore"):
            assert_same_nonfinite(fastnn.softmax_cross_entropy(x, lab, reduction="none", **kw),
                                  ref.softmax_cross_entropy(x, lab, "none", **kw), str(kw), dtype)
            assert_same_nonfinite(fastnn.softmax_cross_entropy_backward(1.0, x, lab, **kw),
                                  ref.softmax_cross_entropy_backward(1.0, x, lab, **kw),
                                  f"{kw} grad", dtype)
    t = np.full(x.shape, 1 / 3, dtype=dtype)
    with np.errstate(invalid="ignore"):
        assert_same_nonfinite(fastnn.softmax_cross_entropy(x, t, reduction="none"),
                              ref.softmax_cross_entropy(x, t, "none"), "probs", dtype)


def test_cross_entropy_spatial_logits_any_memory_layout():
    rng = np.random.default_rng(27)
    x = rng.standard_normal((3, 5, 4, 6))
    lab = rng.integers(0, 5, (3, 4, 6))
    kw = dict(weight=rng.random(5), label_smoothing=0.1, ignore_index=3)
    want = (fastnn.softmax_cross_entropy(x, lab, reduction="none", **kw),
            fastnn.softmax_cross_entropy_backward(1.0, x, lab, **kw))
    xs, ls = memory_variants(x), memory_variants(lab)
    for name in xs:
        got = (fastnn.softmax_cross_entropy(xs[name], ls[name], reduction="none", **kw),
               fastnn.softmax_cross_entropy_backward(1.0, xs[name], ls[name], **kw))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=name)
    # an NHWC-style array viewed as NCHW goes through the same kernel
    xt = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    np.testing.assert_array_equal(fastnn.softmax_cross_entropy(np.moveaxis(xt, -1, 1), lab,
                                                               reduction="none", **kw), want[0])


def test_cross_entropy_empty_and_degenerate_shapes_with_options():
    kw = dict(weight=np.ones(4), ignore_index=-100, label_smoothing=0.2)
    x = np.zeros((0, 4, 3, 2))
    lab = np.zeros((0, 3, 2), np.int64)
    assert np.isnan(fastnn.softmax_cross_entropy(x, lab, **kw))
    assert fastnn.softmax_cross_entropy(x, lab, reduction="sum", **kw) == 0
    assert fastnn.softmax_cross_entropy(x, lab, reduction="none", **kw).shape == (0, 3, 2)
    assert fastnn.softmax_cross_entropy_backward(1.0, x, lab, **kw).shape == x.shape
    assert fastnn.softmax_cross_entropy_backward(np.zeros((0, 3, 2)), x, lab, reduction="none",
                                                 **kw).shape == x.shape
    x0 = np.zeros((2, 4, 0))                     # no positions
    assert fastnn.softmax_cross_entropy(x0, np.zeros((2, 0), np.int64),
                                        reduction="none").shape == (2, 0)
    assert fastnn.softmax_cross_entropy_backward(1.0, x0, np.zeros((2, 0), np.int64)).shape == \
        x0.shape
    # (N, C, 1, 1) is (N, C)
    rng = np.random.default_rng(28)
    x2 = rng.standard_normal((5, 4))
    l2 = rng.integers(0, 4, 5)
    np.testing.assert_array_equal(
        fastnn.softmax_cross_entropy(x2[:, :, None, None], l2[:, None, None], reduction="none",
                                     **kw)[:, 0, 0],
        fastnn.softmax_cross_entropy(x2, l2, reduction="none", **kw))


def test_cross_entropy_options_thread_count_invariant():
    rng = np.random.default_rng(29)
    m = rng.standard_normal((300, 1001))
    lab = rng.integers(0, 1001, 300)
    lab[::7] = -100
    m4 = rng.standard_normal((6, 21, 40, 30)).astype(np.float32)
    lab4 = rng.integers(0, 21, (6, 40, 30))
    lab4[:, ::5] = -100
    w = rng.random(1001)
    w4 = rng.random(21).astype(np.float32)
    t4 = rng.random(m4.shape).astype(np.float32)
    opts = dict(ignore_index=-100, label_smoothing=0.1)
    cases = [
        lambda: fastnn.softmax_cross_entropy(m, lab, reduction="none", weight=w, **opts),
        lambda: fastnn.softmax_cross_entropy_backward(1.0, m, lab, weight=w, **opts),
        lambda: fastnn.softmax_cross_entropy(m4, lab4, reduction="none", **opts),
        lambda: fastnn.softmax_cross_entropy(m4, lab4, weight=w4, **opts),
        lambda: fastnn.softmax_cross_entropy_backward(1.0, m4, lab4, weight=w4, **opts),
        lambda: fastnn.softmax_cross_entropy_backward(1.0, m4, np.maximum(lab4, 0)),
        lambda: fastnn.softmax_cross_entropy_backward(1.0, m4, t4, weight=w4, label_smoothing=0.2),
    ]
    for i, f in enumerate(cases):
        with fastnn.threads(1):
            a = f()
        with fastnn.threads(2):
            b = f()
        assert a.tobytes() == b.tobytes(), f"case {i}"


def test_cross_entropy_bad_options_name_the_argument():
    x = np.zeros((3, 4))
    lab = np.array([0, 1, 2])
    f, b = fastnn.softmax_cross_entropy, fastnn.softmax_cross_entropy_backward
    call_raises(ValueError, r"softmax_cross_entropy: weight must have shape \(4,\) \(one weight "
                r"per class\), got \(3,\)", f, x, lab, weight=np.ones(3))
    call_raises(TypeError, r"softmax_cross_entropy: weight must have dtype float32 or float64",
                f, x, lab, weight=np.ones(4, np.int64))
    call_raises(TypeError, r"softmax_cross_entropy: ignore_index must be an int", f, x, lab,
                ignore_index=1.0)
    call_raises(TypeError, r"softmax_cross_entropy: ignore_index must be an int", f, x, lab,
                ignore_index=True)
    call_raises(ValueError, r"softmax_cross_entropy: ignore_index must fit in int64", f, x, lab,
                ignore_index=2**70)
    call_raises(ValueError, r"softmax_cross_entropy: label_smoothing must be in \[0, 1\], got "
                r"1.5", f, x, lab, label_smoothing=1.5)
    call_raises(ValueError, r"label_smoothing must be in \[0, 1\]", f, x, lab,
                label_smoothing=-0.1)
    call_raises(ValueError, r"label_smoothing must be in \[0, 1\]", b, 1.0, x, lab,
                label_smoothing=float("nan"))
    call_raises(TypeError, r"softmax_cross_entropy: label_smoothing must be a real number", f,
                x, lab, label_smoothing="0.1")
    # labels out of range other than ignore_index stay an error
    info = call_raises(ValueError, r"softmax_cross_entropy: labels must be class indices in "
                       r"\[0, 4\) or ignore_index \(-100\), got -1", f, x, np.array([0, -100, -1]),
                       ignore_index=-100)
    call_raises(ValueError, r"labels must be class indices in \[0, 4\) or ignore_index \(9\), "
                r"got 4", b, 1.0, x, np.array([9, 4, 0]), ignore_index=9)
    assert "ignore_index" in str(info.value)
    # ignore_index with probability targets: only None or negative (PyTorch refuses others)
    call_raises(ValueError, r"softmax_cross_entropy: ignore_index \(0\) applies to class-index "
                r"labels only", f, x, np.full((3, 4), 0.25), ignore_index=0)
    np.testing.assert_array_equal(f(x, np.full((3, 4), 0.25), ignore_index=-100),
                                  f(x, np.full((3, 4), 0.25)))
    # (N, C, d1, ...) shapes
    x4 = np.zeros((2, 4, 3, 5))
    call_raises(ValueError, r"softmax_cross_entropy: labels must have shape \(2, 3, 5\) \(one "
                r"class index per row", f, x4, np.zeros((2, 5, 3), np.int64))
    call_raises(TypeError, r"labels of shape \(2, 3, 5\) are class indices and must have an "
                r"integer dtype", f, x4, np.zeros((2, 3, 5)))
    call_raises(ValueError, r"probability labels must have the shape of logits \(2, 4, 3, 5\)",
                f, x4, np.zeros((2, 4, 5, 3)))
    call_raises(ValueError, r"labels must be class indices of shape \(2, 3, 5\) or "
                r"probabilities of shape \(2, 4, 3, 5\), got shape \(2,\)", f, x4,
                np.zeros(2, np.int64))
    call_raises(ValueError, r"softmax_cross_entropy_backward: grad_loss must be one value per "
                r"row and position for reduction='none', shape \(2, 3, 5\), got \(2,\)", b,
                np.zeros(2), x4, np.zeros((2, 3, 5), np.int64), reduction="none")
    call_raises(ValueError, r"logits has no classes", f, np.zeros((2, 0, 3)),
                np.zeros((2, 3), np.int64))


# ------------------------------------------------------------------ finite differences
def _away_from_zero(rng, shape):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.05, 0.5, x)   # relu / leaky kinks are not differentiable


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_elementwise_backward_finite_differences(name):
    rng = np.random.default_rng(1)
    x = _away_from_zero(rng, (4, 7))
    gy = rng.standard_normal(x.shape)
    f, _ = UNARY[name]
    num = numeric_grad(lambda: float(np.sum(f(x) * gy)), x)
    if name == "relu":
        got = fastnn.relu_backward(gy, x)
    elif name == "leaky_relu":
        got = fastnn.leaky_relu_backward(gy, x, SLOPE)
    elif name == "sigmoid":
        got = fastnn.sigmoid_backward(gy, fastnn.sigmoid(x))
    else:
        got = fastnn.tanh_backward(gy, fastnn.tanh(x))
    assert rel_err(got, num) < 1e-7


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape,axis", [((3, 5), -1), ((2, 4, 3), 1), ((4, 2), 0)])
def test_softmax_backward_finite_differences(log, shape, axis):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    gy = rng.standard_normal(shape)
    fwd = fastnn.log_softmax if log else fastnn.softmax
    bwd = fastnn.log_softmax_backward if log else fastnn.softmax_backward
    num = numeric_grad(lambda: float(np.sum(fwd(x, axis) * gy)), x)
    assert rel_err(bwd(gy, fwd(x, axis), axis), num) < 1e-7


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probs", [False, True])
def test_cross_entropy_backward_finite_differences(reduction, probs):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 6)) * 2
    if probs:
        labels = rng.random((4, 6))
        labels /= labels.sum(axis=1, keepdims=True)
    else:
        labels = np.array([0, 5, 2, 2])
    gl = rng.standard_normal(4) if reduction == "none" else 0.7

    def loss():
        return float(np.sum(fastnn.softmax_cross_entropy(x, labels, reduction=reduction) * gl))

    num = numeric_grad(loss, x)
    got = fastnn.softmax_cross_entropy_backward(gl, x, labels, reduction=reduction)
    assert rel_err(got, num) < 1e-7


def test_reference_cross_entropy_backward_finite_differences():
    # The reference gradient itself (it checks fastnn in the property tests).
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 5))
    t = rng.random((3, 5))
    num = numeric_grad(lambda: float(ref.softmax_cross_entropy(x, t, "sum")), x)
    assert rel_err(ref.softmax_cross_entropy_backward(1.0, x, t, "sum"), num) < 1e-7


# ------------------------------------------------------------------ PyTorch
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _t(torch, a, grad=False):
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.clone().requires_grad_() if grad else t


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_and_threshold_backward_match_torch(torch, dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(5000).astype(dtype)
    x[::7] = 0.0
    x[::11] = -0.0
    x[3::13] = np.nan
    g = rng.standard_normal(5000).astype(dtype)
    g[::5] = np.nan                       # NaN / Inf gradients, many at blocked positions
    g[1::6] = np.inf
    g[2::9] = -np.inf
    y = fastnn.relu(x)
    np.testing.assert_array_equal(y, torch.relu(_t(torch, x)).numpy())   # -0.0 == 0.0
    got = fastnn.relu_backward(g, x)
    want = torch.ops.aten.threshold_backward(_t(torch, g), _t(torch, x), 0).numpy()
    # Where x is NaN, threshold_backward (x <= 0 ? 0 : g) passes g through; SPEC.md
    # blocks it (x NaN gives 0). Everywhere else the two agree bit for bit.
    nan_x = np.isnan(x)
    np.testing.assert_array_equal(got[~nan_x], want[~nan_x])
    assert (got[(x <= 0) | nan_x] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_and_autograd_match_torch(torch, dtype):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((37, 29)) * 3).astype(dtype)
    x[0, :5] = 0.0
    g = rng.standard_normal(x.shape).astype(dtype)
    F = torch.nn.functional
    cases = [
        ("relu", fastnn.relu(x), lambda t: torch.relu(t), lambda: fastnn.relu_backward(g, x)),
        ("leaky", fastnn.leaky_relu(x, SLOPE), lambda t: F.leaky_relu(t, SLOPE),
         lambda: fastnn.leaky_relu_backward(g, x, SLOPE)),
        ("sigmoid", fastnn.sigmoid(x), torch.sigmoid,
         lambda: fastnn.sigmoid_backward(g, fastnn.sigmoid(x))),
        ("tanh", fastnn.tanh(x), torch.tanh, lambda: fastnn.tanh_backward(g, fastnn.tanh(x))),
    ]
    for name, y, tf, back in cases:
        tx = _t(torch, x, grad=True)
        ty = tf(tx)
        ty.backward(_t(torch, g))
        assert_close(y, ty.detach().numpy().astype(np.float64), dtype, name)
        assert_close(back(), tx.grad.numpy().astype(np.float64), dtype, name + " grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((16, 1000), -1), ((4, 7, 5), 1), ((6, 3), 0)])
def test_softmax_and_autograd_match_torch(torch, dtype, shape, axis):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    for fwd, bwd, tf in ((fastnn.softmax, fastnn.softmax_backward, torch.softmax),
                         (fastnn.log_softmax, fastnn.log_softmax_backward, torch.log_softmax)):
        tx = _t(torch, x, grad=True)
        ty = tf(tx, axis)
        ty.backward(_t(torch, g))
        y = fwd(x, axis)
        assert_close(y, ty.detach().numpy().astype(np.float64), dtype, fwd.__name__)
        want = tx.grad.numpy().astype(np.float64)
        assert_close(bwd(g, y, axis), want, dtype, bwd.__name__,
                     abs_want=ref.softmax_backward(np.abs(g), np.abs(y), axis))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probs", [False, True])
def test_cross_entropy_and_autograd_match_torch(torch, dtype, reduction, probs):
    rng = np.random.default_rng(10)
    N, C = 33, 17
    x = (rng.standard_normal((N, C)) * 3).astype(dtype)
    if probs:
        t = rng.random((N, C))
        labels = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
        tl = _t(torch, labels)
    else:
        labels = rng.integers(0, C, N)
        tl = _t(torch, labels)
    tx = _t(torch, x, grad=True)
    tloss = torch.nn.functional.cross_entropy(tx, tl, reduction=reduction)
    gl = rng.standard_normal(N).astype(dtype) if reduction == "none" else 1.0
    tloss.backward(_t(torch, gl) if reduction == "none" else None)
    loss = fastnn.softmax_cross_entropy(x, labels, reduction=reduction)
    assert_close(loss, tloss.detach().numpy().astype(np.float64), dtype, "loss")
    grad = fastnn.softmax_cross_entropy_backward(gl, x, labels, reduction=reduction)
    assert_close(grad, tx.grad.numpy().astype(np.float64), dtype, "grad")


# ------------------------------------------------------------------ NaN and Inf
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-310, -1e-310, 2.0, -3.0, 800.0,
                     -800.0, 1e308, -1e308])


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_nan_inf_like_reference(dtype):
    with np.errstate(over="ignore"):
        x = SPECIALS.astype(dtype)
    rng = np.random.default_rng(12)
    g = np.concatenate([SPECIALS[:3], rng.standard_normal(SPECIALS.size - 3)]).astype(dtype)
    g = np.stack([g, np.roll(g, 4), np.roll(g, 9)])
    xs = np.stack([x, x, x])
    for name, (f, r) in UNARY.items():
        assert_same_nonfinite(f(xs), r(xs), name, dtype)
    for name, (f, r, make, _) in BINARY.items():
        s = xs if make is None else make(xs).astype(dtype)
        assert_same_nonfinite(f(g, s), r(g, s), name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_nan_inf_like_reference(dtype):
    x = np.array([[0.0, 1.0, np.nan, 2.0],          # NaN anywhere: the row is NaN
                  [np.inf, 1.0, 0.0, 0.0],           # +inf: inf - inf, NaN (as PyTorch)
                  [-np.inf, 1.0, 2.0, -np.inf],      # -inf entries: exactly 0
                  [-np.inf] * 4,                     # all -inf: NaN
                  [1.0, 2.0, 3.0, 4.0]], dtype=dtype)
    for f, r in ((fastnn.softmax, ref.softmax), (fastnn.log_softmax, ref.log_softmax)):
        assert_same_nonfinite(f(x), r(x), f.__name__, dtype)
        assert_same_nonfinite(f(x.T.copy(), 0), r(x.T, 0), f.__name__ + " axis 0", dtype)
    assert fastnn.softmax(x)[2, 0] == 0 and fastnn.softmax(x)[2, 3] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_nan_inf_like_reference(dtype):
    x = np.array([[0.0, 1.0, np.nan], [np.inf, 0.0, 0.0], [-np.inf, 1.0, 2.0],
                  [1.0, 2.0, 3.0]], dtype=dtype)
    lab = np.array([0, 1, 2, 0])
    assert_same_nonfinite(fastnn.softmax_cross_entropy(x, lab, reduction="none"),
                          ref.softmax_cross_entropy(x, lab, "none"), "index", dtype)
    t = np.full(x.shape, 1 / 3, dtype=dtype)
    assert_same_nonfinite(fastnn.softmax_cross_entropy(x, t, reduction="none"),
                          ref.softmax_cross_entropy(x, t, "none"), "probs", dtype)
    assert np.isnan(fastnn.softmax_cross_entropy(x, lab))
    with np.errstate(invalid="ignore"):
        assert_same_nonfinite(fastnn.softmax_cross_entropy_backward(1.0, x, lab),
                              ref.softmax_cross_entropy_backward(1.0, x, lab), "grad", dtype)


# ------------------------------------------------------------------ in place, out=
ALL_ELEMENTWISE = [(n, "unary") for n in UNARY] + [(n, "binary") for n in BINARY]


@pytest.mark.parametrize("size", [1, 1000, 70000, 200003])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,kind", ALL_ELEMENTWISE)
def test_in_place_equals_out_of_place(name, kind, dtype, size):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * 3).astype(dtype)
    x[::17] = 0.0
    if kind == "unary":
        f = UNARY[name][0]
        want = f(x)
        buf = x.copy()
        assert f(buf, out=buf) is buf
        np.testing.assert_array_equal(buf, want)
        return
    f = BINARY[name][0]
    s = _second(name, x, dtype)
    g = rng.standard_normal(size).astype(dtype)
    want = f(g, s)
    for which in ("grad_y", "second"):
        gb, sb = g.copy(), s.copy()
        out = gb if which == "grad_y" else sb
        assert f(gb, sb, out=out) is out
        np.testing.assert_array_equal(out, want, err_msg=which)
    gb = g.copy()
    view = gb[:]                              # another array object over grad_y's memory
    assert f(gb, s, out=view) is view
    np.testing.assert_array_equal(gb, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_partial_overlap_and_views(dtype):
    rng = np.random.default_rng(13)
    base = (rng.standard_normal(101) * 3).astype(dtype)
    x = base[:-1].copy()
    want = fastnn.sigmoid(x)
    buf = base.copy()
    res = fastnn.sigmoid(buf[:-1], out=buf[1:])          # shifted overlap: via a temporary
    np.testing.assert_array_equal(res, want)
    buf = np.repeat(x, 2)
    res = fastnn.tanh(buf[::2], out=buf[::2])             # the same strided elements
    np.testing.assert_array_equal(res, fastnn.tanh(x))
    np.testing.assert_array_equal(buf[1::2], x)           # the other elements untouched
    # softmax-like ops take out=x too (through a temporary)
    m = rng.standard_normal((5, 9)).astype(dtype)
    want = fastnn.softmax(m)
    mb = m.copy()
    assert fastnn.softmax(mb, out=mb) is mb
    np.testing.assert_array_equal(mb, want)
    g = rng.standard_normal((5, 9)).astype(dtype)
    want = fastnn.softmax_backward(g, fastnn.softmax(m))
    gb = g.copy()
    np.testing.assert_array_equal(fastnn.softmax_backward(gb, fastnn.softmax(m), out=gb), want)
    lg = fastnn.softmax_cross_entropy_backward(1.0, m, np.arange(5))
    mb = m.copy()
    np.testing.assert_array_equal(fastnn.softmax_cross_entropy_backward(1.0, mb, np.arange(5),
                                                                        out=mb), lg)


def test_out_non_contiguous_and_returned():
    x = np.linspace(-2, 2, 24).reshape(4, 6)
    out = np.zeros((6, 4)).T
    assert fastnn.relu(x, out=out) is out
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    out = np.zeros((4, 6))
    assert fastnn.softmax(x, out=out) is out
    np.testing.assert_allclose(out, ref.softmax(x), rtol=1e-12)


# ------------------------------------------------------------------ bad inputs
BAD_DTYPES = [np.int32, np.int64, np.bool_, np.complex128, np.float16, object]


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_bad_dtypes_raise_type_error_naming_argument(bad):
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    g = np.ones((3, 4))
    xb, gb = x.astype(bad), g.astype(bad)
    for f in (fastnn.relu, fastnn.sigmoid, fastnn.tanh, fastnn.leaky_relu, fastnn.softmax,
              fastnn.log_softmax):
        call_raises(TypeError, r"\bx\b", f, xb)
    for f in (fastnn.relu_backward, fastnn.leaky_relu_backward):
        call_raises(TypeError, r"grad_y", f, gb, x)
        call_raises(TypeError, r"\bx\b", f, g, xb)
    for f in (fastnn.sigmoid_backward, fastnn.tanh_backward, fastnn.softmax_backward,
              fastnn.log_softmax_backward):
        call_raises(TypeError, r"grad_y", f, gb, x)
        call_raises(TypeError, r"\by\b", f, g, xb)
    call_raises(TypeError, r"logits", fastnn.softmax_cross_entropy, xb, np.array([0, 1, 2]))
    call_raises(TypeError, r"logits", fastnn.softmax_cross_entropy_backward, 1.0, xb,
                np.array([0, 1, 2]))
    if bad not in (np.int32, np.int64):        # integer (N, C) targets are refused too
        call_raises(TypeError, r"labels", fastnn.softmax_cross_entropy, x, gb)
    call_raises(TypeError, r"labels", fastnn.softmax_cross_entropy, x, g.astype(np.int64))
    call_raises(TypeError, r"grad_loss", fastnn.softmax_cross_entropy_backward,
                np.array(1).astype(bad), x, np.array([0, 1, 2]))


def test_shape_mismatch_names_arguments_and_shapes():
    x = np.ones((3, 4))
    for f in (fastnn.relu_backward, fastnn.leaky_relu_backward):
        info = call_raises(ValueError, r"grad_y", f, np.ones((4, 3)), x)
        assert "(3, 4)" in str(info.value) and "(4, 3)" in str(info.value)
    for f in (fastnn.sigmoid_backward, fastnn.tanh_backward, fastnn.softmax_backward,
              fastnn.log_softmax_backward):
        info = call_raises(ValueError, r"grad_y.*\by\b", f, np.ones(12), x)
        assert "(12,)" in str(info.value)


def test_cross_entropy_bad_labels():
    x = np.zeros((3, 4))
    info = call_raises(ValueError, r"labels", fastnn.softmax_cross_entropy, x, np.array([0, 4, 1]))
    assert "[0, 4)" in str(info.value) and "4" in str(info.value)
    call_raises(ValueError, r"labels.*-1", fastnn.softmax_cross_entropy, x, np.array([0, -1, 1]))
    call_raises(ValueError, r"labels.*\(3,\)", fastnn.softmax_cross_entropy, x, np.array([0, 1]))
    call_raises(TypeError, r"labels.*integer", fastnn.softmax_cross_entropy, x,
                np.array([0.0, 1.0, 2.0]))
    call_raises(TypeError, r"labels", fastnn.softmax_cross_entropy, x,
                np.array([True, False, True]))
    call_raises(ValueError, r"labels.*\(3, 4\)", fastnn.softmax_cross_entropy, x, np.ones((3, 5)))
    call_raises(ValueError, r"labels", fastnn.softmax_cross_entropy, x, np.zeros((3, 4, 1)))
    call_raises(ValueError, r"logits.*2-D", fastnn.softmax_cross_entropy, np.zeros(4),
                np.array([1]))
    call_raises(ValueError, r"logits.*no classes", fastnn.softmax_cross_entropy, np.zeros((2, 0)),
                np.array([0, 0]))
    call_raises(ValueError, r"reduction", fastnn.softmax_cross_entropy, x, np.array([0, 1, 2]),
                reduction="avg")
    call_raises(ValueError, r"labels", fastnn.softmax_cross_entropy_backward, 1.0, x,
                np.array([0, 9, 1]))
    call_raises(ValueError, r"grad_loss.*scalar", fastnn.softmax_cross_entropy_backward,
                np.ones(3), x, np.array([0, 1, 2]))
    call_raises(ValueError, r"grad_loss.*\(3,\)", fastnn.softmax_cross_entropy_backward,
                1.0, x, np.array([0, 1, 2]), reduction="none")


def test_bad_scalars_and_axis():
    x = np.ones((2, 3))
    call_raises(TypeError, r"at_zero", fastnn.relu_backward, x, x, at_zero="1")
    call_raises(TypeError, r"at_zero", fastnn.relu_backward, x, x, at_zero=True)
    call_raises(TypeError, r"negative_slope", fastnn.leaky_relu, x, 1j)
    call_raises(TypeError, r"negative_slope", fastnn.leaky_relu_backward, x, x, None)
    call_raises(ValueError, r"axis 2", fastnn.softmax, x, 2)
    call_raises(ValueError, r"axis -3", fastnn.log_softmax_backward, x, x, -3)
    call_raises(TypeError, r"axis", fastnn.softmax, x, 1.0)
    assert fastnn.leaky_relu(x, np.float32(0.5)).dtype == np.float64
    assert fastnn.relu_backward(x, x, at_zero=1).dtype == np.float64


@pytest.mark.parametrize("dtype", DTYPES)
def test_bad_out(dtype):
    x = np.ones((2, 3), dtype=dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    for f, args in ((fastnn.relu, (x,)), (fastnn.relu_backward, (x, x)), (fastnn.softmax, (x,)),
                    (fastnn.softmax_backward, (x, x)),
                    (fastnn.softmax_cross_entropy_backward, (1.0, x, np.array([0, 1])))):
        call_raises(ValueError, r"out.*\(3, 2\)", f, *args, out=np.zeros((3, 2), dtype))
        call_raises(TypeError, r"out.*dtype", f, *args, out=np.zeros((2, 3), other))
        call_raises(TypeError, r"out", f, *args, out=[[0.0] * 3] * 2)
        ro = np.zeros((2, 3), dtype)
        ro.flags.writeable = False
        call_raises(ValueError, r"out.*read-only", f, *args, out=ro)


# ------------------------------------------------------------------ layouts, dtypes
@pytest.mark.parametrize("dtype", DTYPES)
def test_any_memory_layout_same_result(dtype):
    rng = np.random.default_rng(14)
    base = (rng.standard_normal((6, 8, 5)) * 2).astype(dtype)
    g_base = rng.standard_normal((6, 8, 5)).astype(dtype)
    views = {
        "C": lambda a: a,
        "F": np.asfortranarray,
        "strided": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
        "negative": lambda a: a[::-1, :, ::-1].copy()[::-1, :, ::-1],
        "transposed": lambda a: np.ascontiguousarray(a.transpose(2, 1, 0)).transpose(2, 1, 0),
        "readonly": lambda a: np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape),
    }
    funcs = [lambda x, g: fastnn.relu(x), lambda x, g: fastnn.sigmoid(x),
             lambda x, g: fastnn.relu_backward(g, x), lambda x, g: fastnn.tanh_backward(g, x),
             lambda x, g: fastnn.softmax(x, 1), lambda x, g: fastnn.log_softmax_backward(g, x, 0),
             lambda x, g: fastnn.softmax_cross_entropy(x[:, :, 0], np.arange(6) % 8,
                                                       reduction="none")]
    for i, f in enumerate(funcs):
        want = f(base, g_base)
        for name, v in views.items():
            xv, gv = v(base), v(g_base)
            np.testing.assert_array_equal(f(xv, gv), want, err_msg=f"func {i}, layout {name}")
            np.testing.assert_array_equal(xv, base)
    assert fastnn.relu(views["readonly"](base)).flags.writeable


def test_inputs_never_mutated_and_lists_accepted():
    x = [[-1.0, 2.0], [3.0, -4.0]]
    np.testing.assert_array_equal(fastnn.relu(x), [[0.0, 2.0], [3.0, 0.0]])
    np.testing.assert_array_equal(fastnn.relu_backward([[1.0, 1.0], [1.0, 1.0]], x),
                                  [[0.0, 1.0], [1.0, 0.0]])
    assert fastnn.softmax_cross_entropy(x, [0, 1]).shape == ()
    a = np.array(x)
    g = np.ones_like(a)
    before = [a.copy(), g.copy()]
    for f in (lambda: fastnn.relu(a), lambda: fastnn.relu_backward(g, a),
              lambda: fastnn.softmax(a), lambda: fastnn.log_softmax_backward(g, a),
              lambda: fastnn.softmax_cross_entropy(a, np.array([1, 0])),
              lambda: fastnn.softmax_cross_entropy_backward(1.0, a, g / 2)):
        f()
        np.testing.assert_array_equal(a, before[0])
        np.testing.assert_array_equal(g, before[1])


def test_mixed_dtypes_follow_numpy_promotion():
    x32 = np.linspace(-1, 1, 6, dtype=np.float32)
    x64 = x32.astype(np.float64)
    assert fastnn.relu_backward(x32, x64).dtype == np.float64
    assert fastnn.relu_backward(x64, x32).dtype == np.float64
    assert fastnn.sigmoid_backward(x32, x32).dtype == np.float32
    assert fastnn.softmax_backward(x32, x64).dtype == np.float64
    np.testing.assert_array_equal(fastnn.relu_backward(x32, x64), ref.relu_backward(x32, x64))
    for f in (fastnn.relu, fastnn.sigmoid, fastnn.tanh, fastnn.softmax, fastnn.log_softmax):
        assert f(x32).dtype == np.float32


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 4)])
def test_empty_arrays(shape):
    x = np.zeros(shape, dtype=np.float32)
    for f, r in UNARY.values():
        y = f(x)
        assert y.shape == shape and y.dtype == np.float32
    for f, *_ in BINARY.values():
        assert f(x, x).shape == shape
    for axis in range(len(shape)):
        for f in (fastnn.softmax, fastnn.log_softmax):
            assert f(x, axis).shape == shape
        for f in (fastnn.softmax_backward, fastnn.log_softmax_backward):
            assert f(x, x, axis).shape == shape
    out = np.zeros(shape, np.float32)
    assert fastnn.relu(x, out=out) is out


def test_zero_dim():
    y = fastnn.relu(np.float64(-2.0))
    assert isinstance(y, np.ndarray) and y.shape == () and y == 0
    assert fastnn.sigmoid(0.0) == 0.5
    assert fastnn.relu_backward(np.float32(3.0), np.float32(1.0)) == 3


# ------------------------------------------------------------------ threads
def _thread_cases():
    rng = np.random.default_rng(15)
    big = (rng.standard_normal(300007) * 4).astype(np.float32)
    g = rng.standard_normal(big.size).astype(np.float32)
    m = (rng.standard_normal((300, 1001)) * 3).astype(np.float64)
    gm = rng.standard_normal(m.shape)
    m3 = rng.standard_normal((8, 40, 300)).astype(np.float32)
    lab = rng.integers(0, 1001, 300)
    t = rng.random(m.shape)
    return [
        lambda: fastnn.relu(big), lambda: fastnn.relu_backward(g, big),
        lambda: fastnn.leaky_relu_backward(g, big), lambda: fastnn.sigmoid(big),
        lambda: fastnn.tanh(big.astype(np.float64)), lambda: fastnn.tanh_backward(g, big),
        lambda: fastnn.softmax(m), lambda: fastnn.log_softmax_backward(gm, m),
        lambda: fastnn.softmax_backward(gm, m), lambda: fastnn.softmax(m3, 1),
        lambda: fastnn.log_softmax_backward(m3, m3, 1),
        lambda: fastnn.softmax_cross_entropy(m, lab, reduction="none"),
        lambda: fastnn.softmax_cross_entropy(m, lab),
        lambda: fastnn.softmax_cross_entropy(m, t),
        lambda: fastnn.softmax_cross_entropy_backward(1.0, m, lab),
        lambda: fastnn.softmax_cross_entropy_backward(1.0, m, t),
    ]


def test_one_and_two_threads_bitwise_identical():
    for i, f in enumerate(_thread_cases()):
        with fastnn.threads(1):
            a = f()
        with fastnn.threads(2):
            b = f()
        with fastnn.threads(3):
            c = f()
        np.testing.assert_array_equal(a, b, err_msg=f"case {i}")
        np.testing.assert_array_equal(a, c, err_msg=f"case {i}")
        assert a.tobytes() == b.tobytes()


def test_concurrent_python_threads():
    cases = _thread_cases()[:8]
    want = [f() for f in cases]
    errors = []

    def work():
        try:
            for _ in range(3):
                for f, w in zip(cases, want):
                    np.testing.assert_array_equal(f(), w)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_after_use_does_not_hang():
    check = "ok = all(np.array_equal(a, b) for a, b in zip(run(), want))"
    assert_works_after_fork("""
        rng = np.random.default_rng(0)
        x = rng.standard_normal(1 << 18).astype(np.float32)
        m = rng.standard_normal((64, 4096))
        lab = rng.integers(0, 4096, 64)
        fastnn.set_num_threads(2)

        def run():
            return (fastnn.sigmoid(x), fastnn.relu_backward(x, x), fastnn.softmax(m),
                    fastnn.softmax_cross_entropy_backward(1.0, m, lab))

        want = run()                          # the OpenMP pool is up
        """, check, check)


SIMD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {here!r})
    import reference as ref
    import fastnn
    from fastnn_ext import _activations
    level = int(sys.argv[1])
    assert _activations.SIMD_LEVEL <= level, _activations.SIMD_LEVEL
    rng = np.random.default_rng(level)
    worst = 0.0
    for dtype in (np.float32, np.float64):
        tol = 1e-4 if dtype == np.float32 else 1e-10
        x = (rng.standard_normal((67, 131)) * 5).astype(dtype)
        x[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
        g = rng.standard_normal(x.shape).astype(dtype)
        lab = rng.integers(0, 131, 67)
        pairs = [
            (fastnn.relu(x), ref.relu(x)), (fastnn.leaky_relu(x), ref.leaky_relu(x)),
            (fastnn.sigmoid(x), ref.sigmoid(x)), (fastnn.tanh(x), ref.tanh(x)),
            (fastnn.relu_backward(g, x), ref.relu_backward(g, x)),
            (fastnn.relu_backward(g, x, at_zero=0.5), ref.relu_backward(g, x, 0.5)),
            (fastnn.leaky_relu_backward(g, x), ref.leaky_relu_backward(g, x)),
            (fastnn.sigmoid_backward(g, x), ref.sigmoid_backward(g, x)),
            (fastnn.tanh_backward(g, x), ref.tanh_backward(g, x)),
        ]
        xf = x[1:]
        y = fastnn.softmax(xf); ly = fastnn.log_softmax(xf)
        pairs += [(y, ref.softmax(xf)), (ly, ref.log_softmax(xf)),
                  (fastnn.softmax_backward(g[1:], y), ref.softmax_backward(g[1:], y)),
                  (fastnn.log_softmax_backward(g[1:], ly), ref.log_softmax_backward(g[1:], ly)),
                  (fastnn.softmax_cross_entropy(xf, lab[1:], reduction="none"),
                   ref.softmax_cross_entropy(xf, lab[1:], "none")),
                  (fastnn.softmax_cross_entropy_backward(1.0, xf, lab[1:]),
                   ref.softmax_cross_entropy_backward(1.0, xf, lab[1:]))]
        # cross-entropy's options, on rows and on the strided (N, C, d) kernel
        wt = rng.random(131).astype(dtype)
        lo = lab[1:].copy()
        lo[::5] = -100
        x3 = xf.reshape(6, 11, 131)
        l3 = rng.integers(0, 11, (6, 131))
        l3[:, ::7] = -100
        opts = dict(ignore_index=-100, label_smoothing=0.2)
        for args, kw in (((xf, lo), dict(opts, weight=wt)), ((x3, l3), dict(opts, weight=wt[:11])),
                         ((x3, l3), opts)):
            pairs += [(fastnn.softmax_cross_entropy(*args, reduction="none", **kw),
                       ref.softmax_cross_entropy(*args, reduction="none", **kw)),
                      (fastnn.softmax_cross_entropy_backward(1.0, *args, **kw),
                       ref.softmax_cross_entropy_backward(1.0, *args, **kw))]
        for i, (got, want) in enumerate(pairs):
            got = np.asarray(got, dtype=np.float64)
            assert (np.isnan(got) == np.isnan(want)).all(), (level, dtype, i)
            fin = np.isfinite(want)
            assert (got[~fin & ~np.isnan(want)] == want[~fin & ~np.isnan(want)]).all(), i
            err = np.linalg.norm(got[fin] - want[fin]) / max(np.linalg.norm(want[fin]), 1e-300)
            assert err < tol, (level, dtype, i, err)
            worst = max(worst, err)
    print("ok", _activations.SIMD_LEVEL, worst)
""")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_simd_path_matches_reference(level):
    run_at_simd_level(SIMD_SCRIPT, level, timeout=300)


# ------------------------------------------------------------------ imports
NAMES = fastnn.activations.__all__


@pytest.mark.parametrize("name", NAMES)
def test_top_level_import(name):
    assert callable(getattr(fastnn, name))
    assert getattr(fastnn, name) is getattr(fastnn.activations, name)
    assert name in fastnn.__all__
    assert getattr(fastnn, name).__doc__ and "Examples" in getattr(fastnn, name).__doc__
