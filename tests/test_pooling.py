"""Tests of fastnn.pooling: max / avg pooling, 2-D and 1-D, forward and backward.

Against the explicit window loops of tests/reference.py (property tests over random
geometries), finite differences and PyTorch (where installed), with NaN / -inf
windows, and the bad-input and memory-layout rules of SPEC.md.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastnn
import reference as ref
from helpers import (DTYPES, PROPERTY, assert_close, assert_finite_difference_grads,
                     assert_thread_count_invariant, call_raises, memory_variants, snapshot)

LAYOUTS = ("NCHW", "NHWC")


def x_shape_of(layout, N, C, H, W):
    return (N, H, W, C) if layout == "NHWC" else (N, C, H, W)


def pads_of(padding, hw, k, s):
    return ref.normalize_padding(padding, hw, k, s, (1, 1))


def valid_geometry(hw, k, s, pads):
    """Output at least 1x1 and no window entirely in the padding."""
    for a in range(2):
        size, (p0, p1) = hw[a], pads[a]
        n_out = (size + p0 + p1 - k[a]) // s[a] + 1
        if n_out < 1 or p0 >= k[a] or (n_out - 1) * s[a] - p0 >= size:
            return False
    return True


@st.composite
def geometries(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(
        st.just("same"), st.just("valid"), st.integers(0, 2),
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                  st.tuples(st.integers(0, 3), st.integers(0, 3)))))
    hw = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    pads = pads_of(padding, hw, k, s)
    assume(valid_geometry(hw, k, s, pads))
    return dict(N=draw(st.integers(0, 2)), C=draw(st.integers(1, 70)), hw=hw, k=k,
                stride=s, padding=padding, pads=pads, layout=draw(st.sampled_from(LAYOUTS)),
                dtype=draw(st.sampled_from(DTYPES)), ties=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))


def make_x(g):
    rng = np.random.default_rng(g["seed"])
    shape = x_shape_of(g["layout"], g["N"], g["C"], *g["hw"])
    if g["ties"]:          # small integers: many ties, so the first-maximum rule shows
        return rng.integers(-3, 3, shape).astype(g["dtype"])
    return rng.standard_normal(shape).astype(g["dtype"])


def kwargs_of(g):
    return dict(stride=g["stride"], padding=g["padding"], layout=g["layout"])


# ------------------------------------------------------------------ property tests
@PROPERTY
@given(geometries())
def test_pool2d_matches_reference(g):
    x = make_x(g)
    snap = snapshot([x])
    dt = g["dtype"]
    y, idx = fastnn.max_pool2d(x, g["k"], return_indices=True, **kwargs_of(g))
    ry, ridx = ref.pool2d(x, g["k"], g["stride"], g["pads"], "max", g["layout"])
    assert y.dtype == np.dtype(dt) and idx.dtype == np.int64
    np.testing.assert_array_equal(y, ry.astype(dt))
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(fastnn.max_pool2d(x, g["k"], **kwargs_of(g)), y)
    a = fastnn.avg_pool2d(x, g["k"], **kwargs_of(g))
    assert_close(a, ref.pool2d(x, g["k"], g["stride"], g["pads"], "avg", g["layout"]), dt, "avg",
                 abs_want=ref.pool2d(abs(x), g["k"], g["stride"], g["pads"], "avg", g["layout"]))
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dt)
    want = ref.pool2d_backward(gy, x.shape, g["k"], g["stride"], g["pads"], "max", ridx,
                               g["layout"])
    for indices in (None, idx):
        gx = fastnn.max_pool2d_backward(gy, x, g["k"], indices=indices, **kwargs_of(g))
        assert gx.dtype == np.dtype(dt)
        assert_close(gx, want, dt, "max backward",
                     abs_want=ref.pool2d_backward(abs(gy), x.shape, g["k"], g["stride"],
                                                  g["pads"], "max", ridx, g["layout"]))
    gx = fastnn.avg_pool2d_backward(gy, x, g["k"], **kwargs_of(g))
    assert_close(gx, ref.pool2d_backward(gy, x.shape, g["k"], g["stride"], g["pads"], "avg",
                                         layout=g["layout"]), dt, "avg backward",
                 abs_want=ref.pool2d_backward(abs(gy), x.shape, g["k"], g["stride"], g["pads"],
                                              "avg", layout=g["layout"]))
    for arr, before in snap:
        np.testing.assert_array_equal(arr, before)


@PROPERTY
@given(geometries())
def test_pool1d_is_pool2d_on_height_one(g):
    k, s = g["k"][1], g["stride"][1]
    W = g["hw"][1]
    pads = pads_of(g["padding"], (1, W), (1, k), (1, s))[1]
    assume(valid_geometry((1, W), (1, k), (1, s), ((0, 0), pads)))
    layout = "NWC" if g["layout"] == "NHWC" else "NCW"
    padding = g["padding"] if isinstance(g["padding"], str) else pads
    x = np.random.default_rng(g["seed"]).standard_normal(
        (g["N"], W, g["C"]) if layout == "NWC" else (g["N"], g["C"], W)).astype(g["dtype"])
    x4 = x[:, None] if layout == "NWC" else x[:, :, None]
    ry, ridx = ref.pool2d(x4, (1, k), (1, s), ((0, 0), pads), "max", g["layout"])
    squeeze = (lambda a: a[:, 0]) if layout == "NWC" else (lambda a: a[:, :, 0])
    y, idx = fastnn.max_pool1d(x, k, stride=s, padding=padding, layout=layout,
                               return_indices=True)
    np.testing.assert_array_equal(y, squeeze(ry).astype(g["dtype"]))
    np.testing.assert_array_equal(idx, squeeze(ridx))
    a = fastnn.avg_pool1d(x, k, stride=s, padding=padding, layout=layout)
    assert_close(a, squeeze(ref.pool2d(x4, (1, k), (1, s), ((0, 0), pads), "avg", g["layout"])),
                 g["dtype"], "avg1d")
    gy = np.random.default_rng(2).standard_normal(y.shape).astype(g["dtype"])
    gy4 = gy[:, None] if layout == "NWC" else gy[:, :, None]
    gx = fastnn.max_pool1d_backward(gy, x, k, stride=s, padding=padding, layout=layout)
    assert_close(gx, squeeze(ref.pool2d_backward(gy4, x4.shape, (1, k), (1, s), ((0, 0), pads),
                                                 "max", ridx, g["layout"])), g["dtype"], "max1d bwd")
    gx = fastnn.avg_pool1d_backward(gy, x, k, stride=s, padding=padding, layout=layout)
    assert_close(gx, squeeze(ref.pool2d_backward(gy4, x4.shape, (1, k), (1, s), ((0, 0), pads),
                                                 "avg", layout=g["layout"])), g["dtype"], "avg1d bwd")


# ------------------------------------------------------------------ NaN and -inf
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_and_minus_inf_windows(layout, dtype):
    x = np.arange(36, dtype=dtype).reshape(1, 1, 6, 6) % 7
    x[0, 0, 0, 1] = np.nan                      # window (0, 0): NaN
    x[0, 0, 0, 3] = np.nan                      # window (0, 1): two NaNs, the last wins
    x[0, 0, 1, 2] = np.nan
    x[0, 0, 2:4, 0:2] = -np.inf                 # window (1, 0): all -inf
    x[0, 0, 4, 4] = np.inf                      # window (2, 2): +inf
    xl = ref.from_nchw(x, layout).astype(dtype)
    y, idx = fastnn.max_pool2d(xl, 2, layout=layout, return_indices=True)
    y, idx = ref.to_nchw(y, layout)[0, 0], np.asarray(ref.to_nchw(idx, layout))[0, 0]
    assert np.isnan(y[0, 0]) and idx[0, 0] == 1
    assert np.isnan(y[0, 1]) and idx[0, 1] == 8          # (1, 2) comes after (0, 3)
    assert y[1, 0] == -np.inf and idx[1, 0] == 12        # the window's first element
    assert y[2, 2] == np.inf and idx[2, 2] == 28
    a = ref.to_nchw(fastnn.avg_pool2d(xl, 2, layout=layout), layout)[0, 0]
    assert np.isnan(a[0, 0]) and a[1, 0] == -np.inf and a[2, 2] == np.inf
    # The gradient of a NaN window goes to the NaN's position.
    gx = fastnn.max_pool2d_backward(np.ones_like(ref.from_nchw(np.ones((1, 1, 3, 3)), layout)),
                                    xl, 2, layout=layout)
    gx = ref.to_nchw(gx, layout)[0, 0]
    assert gx[0, 1] == 1 and gx[1, 2] == 1 and gx[0, 3] == 0 and gx[2, 0] == 1


# ------------------------------------------------------------------ finite differences
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,stride,padding", [(3, 2, 1), ((2, 3), 1, "same"), (2, 2, 0)])
def test_backward_finite_differences(layout, k, stride, padding):
    rng = np.random.default_rng(5)
    # Distinct values spaced far more than the step: the argmax does not move.
    x = (rng.permutation(180) / 30.0).reshape(x_shape_of(layout, 2, 3, 5, 6))
    kw = dict(stride=stride, padding=padding, layout=layout)
    gy = rng.standard_normal(fastnn.max_pool2d(x, k, **kw).shape)
    assert_finite_difference_grads(lambda: fastnn.max_pool2d(x, k, **kw),
                                   (fastnn.max_pool2d_backward(gy, x, k, **kw),), (x,),
                                   ("max grad_x",), gy)
    assert_finite_difference_grads(lambda: fastnn.avg_pool2d(x, k, **kw),
                                   (fastnn.avg_pool2d_backward(gy, x, k, **kw),), (x,),
                                   ("avg grad_x",), gy)


# ------------------------------------------------------------------ PyTorch
TORCH_CASES = [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0)), (3, 1, 1), (1, 2, 0), (4, 3, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,stride,padding", TORCH_CASES, ids=str)
def test_pool2d_and_grads_match_torch(k, stride, padding, layout, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    x[0, 1, 2, 2] = np.nan
    x[1, 0, :4, :4] = -np.inf
    xt = torch.from_numpy(x).requires_grad_()
    yt, it = F.max_pool2d(xt, k, stride, padding, return_indices=True)
    gy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.from_numpy(gy))
    xa = rng.standard_normal(x.shape).astype(dtype)
    xat = torch.from_numpy(xa).requires_grad_()
    at = F.avg_pool2d(xat, k, stride, padding, count_include_pad=False)
    at.backward(torch.from_numpy(gy))
    L = lambda a: ref.from_nchw(a, layout).copy()   # noqa: E731
    B = lambda a: ref.to_nchw(a, layout)            # noqa: E731
    kw = dict(stride=stride, padding=padding, layout=layout)
    y, idx = fastnn.max_pool2d(L(x), k, return_indices=True, **kw)
    np.testing.assert_array_equal(B(y), yt.detach().numpy())
    np.testing.assert_array_equal(np.asarray(B(idx)), it.numpy())
    gx = fastnn.max_pool2d_backward(L(gy), L(x), k, indices=idx, **kw)
    assert_close(B(gx), xt.grad.numpy(), dtype, "max grad_x vs torch")
    assert_close(B(fastnn.avg_pool2d(L(xa), k, **kw)), at.detach().numpy(), dtype, "avg vs torch")
    gx = fastnn.avg_pool2d_backward(L(gy), L(xa), k, **kw)
    assert_close(B(gx), xat.grad.numpy(), dtype, "avg grad_x vs torch")


@pytest.mark.parametrize("layout", ["NCW", "NWC"])
def test_pool1d_matches_torch(layout):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 17))
    xt = torch.from_numpy(x).requires_grad_()
    yt, it = F.max_pool1d(xt, 3, 2, 1, return_indices=True)
    gy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(gy))
    t = (lambda a: np.ascontiguousarray(np.swapaxes(a, 1, 2))) if layout == "NWC" else (lambda a: a)
    y, idx = fastnn.max_pool1d(t(x), 3, stride=2, padding=1, layout=layout, return_indices=True)
    np.testing.assert_array_equal(t(y), yt.detach().numpy())
    np.testing.assert_array_equal(t(idx), it.numpy())
    gx = fastnn.max_pool1d_backward(t(gy), t(x), 3, stride=2, padding=1, layout=layout)
    assert_close(t(gx), xt.grad.numpy(), np.float64, "grad_x vs torch")
    a = fastnn.avg_pool1d(t(x), 3, stride=2, padding=1, layout=layout)
    assert_close(t(a), F.avg_pool1d(torch.from_numpy(x), 3, 2, 1, count_include_pad=False).numpy(),
                 np.float64, "avg vs torch")


# ------------------------------------------------------------------ behaviour
def test_same_padding_stride_one_keeps_the_size():
    x = np.random.default_rng(0).standard_normal((2, 7, 3))
    for f in (fastnn.max_pool1d, fastnn.avg_pool1d):
        assert f(x, 4, stride=1, padding="same", layout="NWC").shape == x.shape
    y = fastnn.max_pool2d(np.zeros((1, 1, 5, 6)), (3, 2), stride=2, padding="same")
    assert y.shape == (1, 1, 3, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_memory_layout_same_result(layout, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape_of(layout, 2, 3, 7, 6)).astype(dtype)
    kw = dict(stride=2, padding=1, layout=layout)
    y, idx = fastnn.max_pool2d(x, 3, return_indices=True, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    want = (y, idx, fastnn.avg_pool2d(x, 3, **kw), fastnn.max_pool2d_backward(gy, x, 3, **kw),
            fastnn.avg_pool2d_backward(gy, x, 3, **kw))
    xs, gys = memory_variants(x), memory_variants(gy)
    for name in xs:
        got = fastnn.max_pool2d(xs[name], 3, return_indices=True, **kw) + (
            fastnn.avg_pool2d(xs[name], 3, **kw),
            fastnn.max_pool2d_backward(gys[name], xs[name], 3, indices=memory_variants(idx)[name], **kw),
            fastnn.avg_pool2d_backward(gys[name], xs[name], 3, **kw))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_batch_and_promotion(layout):
    x = np.zeros(x_shape_of(layout, 0, 3, 4, 4), np.float32)
    y, idx = fastnn.max_pool2d(x, 2, layout=layout, return_indices=True)
    assert y.shape == x_shape_of(layout, 0, 3, 2, 2) and y.dtype == np.float32
    assert idx.shape == y.shape and idx.dtype == np.int64
    assert fastnn.max_pool2d_backward(y, x, 2, layout=layout).shape == x.shape
    x1 = np.ones(x_shape_of(layout, 1, 3, 4, 4), np.float32)
    gy = np.ones(x_shape_of(layout, 1, 3, 2, 2), np.float64)
    assert fastnn.avg_pool2d_backward(gy, x1, 2, layout=layout).dtype == np.float64


def test_thread_count_does_not_change_bits():
    rng = np.random.default_rng(4)
    for layout in LAYOUTS:
        x = rng.standard_normal(x_shape_of(layout, 4, 80, 20, 18)).astype(np.float32)
        gy = rng.standard_normal(x_shape_of(layout, 4, 80, 10, 9)).astype(np.float32)
        kw = dict(stride=2, padding=1, layout=layout)
        assert_thread_count_invariant(lambda: fastnn.max_pool2d(x, 3, return_indices=True, **kw)
                                      + (fastnn.avg_pool2d(x, 3, **kw),
                                         fastnn.max_pool2d_backward(gy, x, 3, **kw),
                                         fastnn.avg_pool2d_backward(gy, x, 3, **kw)))


# ------------------------------------------------------------------ bad input
def test_bad_input_messages_name_the_argument():
    x = np.zeros((2, 3, 5, 5))
    f = fastnn.max_pool2d
    call_raises(ValueError, r"max_pool2d: x must be 4-D \(layout NCHW: N, C, H, W\)", f, x[0], 2)
    call_raises(ValueError, r"max_pool1d: x must be 3-D \(layout NWC: N, W, C\)", fastnn.max_pool1d,
                x, 2, layout="NWC")
    call_raises(ValueError, r"max_pool2d: the pooling window \(6x2\) is larger than the padded "
                r"input \(5x5\)", f, x, (6, 2))
    call_raises(ValueError, r"avg_pool1d: the pooling window \(9\) is larger than the padded "
                r"input \(7\)", fastnn.avg_pool1d, x[0], 9, padding=1)
    call_raises(ValueError, r"max_pool2d: padding must be >= 0", f, x, 2, padding=-1)
    call_raises(ValueError, r"avg_pool2d: padding 2 leaves a window with no input element along "
                r"the height", fastnn.avg_pool2d, x, 2, padding=2)
    call_raises(ValueError, r"max_pool2d: padding \(\(0, 3\), \(0, 0\)\) leaves a window with no "
                r"input element", f, x, 3, stride=1, padding=((0, 3), (0, 0)))
    call_raises(ValueError, r"max_pool2d: kernel_size must be >= 1", f, x, 0)
    call_raises(ValueError, r"max_pool2d: stride must be >= 1", f, x, 2, stride=0)
    call_raises(TypeError, r"max_pool2d: kernel_size must be an int", f, x, 2.0)
    call_raises(ValueError, r"max_pool2d: layout must be one of NCHW, NHWC", f, x, 2, layout="NCW")
    call_raises(ValueError, r"avg_pool2d: return_indices is only defined for max pooling",
                fastnn.avg_pool2d, x, 2, return_indices=True)
    call_raises(TypeError, r"max_pool2d: x must have dtype float32 or float64, got int64", f,
                x.astype(np.int64), 2)
    b = fastnn.max_pool2d_backward
    call_raises(ValueError, r"max_pool2d_backward: grad_y must have the output shape "
                r"\(2, 3, 2, 2\) \(layout NCHW\), got \(2, 3, 3, 3\)", b, np.zeros((2, 3, 3, 3)), x, 2)
    gy = np.zeros((2, 3, 2, 2))
    call_raises(ValueError, r"max_pool2d_backward: indices must lie in \[0, 25\)", b, gy, x, 2,
                indices=np.full((2, 3, 2, 2), 25))
    call_raises(ValueError, r"max_pool2d_backward: indices must lie in \[0, 25\)", b, gy, x, 2,
                indices=np.full((2, 3, 2, 2), -1))
    call_raises(ValueError, r"max_pool2d_backward: indices must have the output shape", b, gy, x,
                2, indices=np.zeros((2, 3, 2), np.int64))
    call_raises(TypeError, r"max_pool2d_backward: indices must be an integer array", b, gy, x, 2,
                indices=np.zeros((2, 3, 2, 2)))
    call_raises(TypeError, r"avg_pool2d_backward: grad_y must have dtype float32 or float64",
                fastnn.avg_pool2d_backward, gy.astype(np.complex128), x, 2)
