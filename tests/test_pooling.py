"""Tests of fastnn.pooling: max / avg pooling, 2-D and 1-D, forward and backward.

Against the explicit window loops of tests/reference.py (property tests over random
geometries), finite differences and PyTorch (where installed), with NaN / -inf
windows, and the bad-input and memory-layout rules of SPEC.md. PyTorch's arguments
(dilation, ceil_mode, count_include_pad, divisor_override) get the same checks plus a
sweep over PyTorch's own OpInfo sample inputs of max_pool1d/2d and avg_pool1d/2d.
"""
import itertools

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastnn
import reference as ref
from helpers import (DTYPES, PROPERTY, assert_close, assert_finite_difference_grads,
                     assert_thread_count_invariant, call_raises, int_pairs, memory_variants,
                     paddings_2d, snapshot, x_shape_of)

LAYOUTS = ("NCHW", "NHWC")


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
    k = draw(int_pairs(1, 4))
    s = draw(int_pairs(1, 3))
    padding = draw(paddings_2d(3))
    hw = draw(int_pairs(1, 9))
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
        # 153,600 elements: past the cost model's 2^17, so 2 and 3 threads split it
        x = rng.standard_normal(x_shape_of(layout, 4, 80, 24, 20)).astype(np.float32)
        gy = rng.standard_normal(x_shape_of(layout, 4, 80, 12, 10)).astype(np.float32)
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


# ================================================================== PyTorch's arguments
# dilation / ceil_mode (max), ceil_mode / count_include_pad / divisor_override (avg).
def torch_geometry_ok(hw, k, s, d, pads, ceil_mode, explicit):
    """PyTorch's rules, written out: padding at most half the dilated window (explicit
    paddings), an output of at least 1x1, and every window with a tap in the input."""
    for a in range(2):
        size, (p0, p1) = hw[a], pads[a]
        if explicit and max(p0, p1) > ((k[a] - 1) * d[a] + 1) // 2:
            return False
        n = ref.pool_out_size(size, p0, p1, k[a], s[a], d[a], ceil_mode)
        if n < 1 or not all(ref._pool_taps(o, s[a], p0, k[a], d[a], size) for o in range(n)):
            return False
    return True


@st.composite
def torch_geometries(draw):
    k = draw(int_pairs(1, 4))
    s = draw(int_pairs(1, 3))
    d = draw(int_pairs(1, 3))
    padding = draw(paddings_2d(2))
    hw = draw(int_pairs(1, 9))
    ceil_mode = draw(st.booleans())
    explicit = not isinstance(padding, str)
    # max pooling runs dilated, average pooling (no dilation) on the same padding
    max_pads = ref.normalize_padding(padding, hw, k, s, d)
    avg_pads = ref.normalize_padding(padding, hw, k, s, (1, 1))
    assume(torch_geometry_ok(hw, k, s, d, max_pads, ceil_mode, explicit))
    assume(torch_geometry_ok(hw, k, s, (1, 1), avg_pads, ceil_mode, explicit))
    return dict(N=draw(st.integers(0, 2)), C=draw(st.integers(1, 70)), hw=hw, k=k, stride=s,
                dilation=d, padding=padding, max_pads=max_pads, avg_pads=avg_pads,
                ceil_mode=ceil_mode, count_include_pad=draw(st.booleans()),
                divisor_override=draw(st.sampled_from([None, None, 1, 3, -2])),
                layout=draw(st.sampled_from(LAYOUTS)), dtype=draw(st.sampled_from(DTYPES)),
                ties=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))


def avg_options(g):
    return dict(ceil_mode=g["ceil_mode"], count_include_pad=g["count_include_pad"],
                divisor_override=g["divisor_override"])


@PROPERTY
@given(torch_geometries())
def test_pytorch_arguments_match_reference(g):
    x = make_x(g)
    snap = snapshot([x])
    dt, lay = g["dtype"], g["layout"]
    kw = dict(stride=g["stride"], padding=g["padding"], layout=lay)
    mkw = dict(kw, dilation=g["dilation"], ceil_mode=g["ceil_mode"])
    y, idx = fastnn.max_pool2d(x, g["k"], return_indices=True, **mkw)
    ry, ridx = ref.pool2d(x, g["k"], g["stride"], g["max_pads"], "max", lay,
                          dilation=g["dilation"], ceil_mode=g["ceil_mode"])
    np.testing.assert_array_equal(y, ry.astype(dt))
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(fastnn.max_pool2d(x, g["k"], **mkw), y)   # separable path
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dt)
    want = ref.pool2d_backward(gy, x.shape, g["k"], g["stride"], g["max_pads"], "max", ridx, lay)
    for indices in (None, idx):
        assert_close(fastnn.max_pool2d_backward(gy, x, g["k"], indices=indices, **mkw), want, dt,
                     "max backward", abs_want=ref.pool2d_backward(abs(gy), x.shape, g["k"],
                                                                  g["stride"], g["max_pads"],
                                                                  "max", ridx, lay))
    akw = dict(kw, **avg_options(g))
    a = fastnn.avg_pool2d(x, g["k"], **akw)
    ra = ref.pool2d(x, g["k"], g["stride"], g["avg_pads"], "avg", lay, **avg_options(g))
    assert_close(a, ra, dt, "avg", abs_want=ref.pool2d(abs(x), g["k"], g["stride"], g["avg_pads"],
                                                       "avg", lay, **avg_options(g)))
    gy = np.random.default_rng(2).standard_normal(a.shape).astype(dt)
    want = ref.pool2d_backward(gy, x.shape, g["k"], g["stride"], g["avg_pads"], "avg", layout=lay,
                               **avg_options(g))
    assert_close(fastnn.avg_pool2d_backward(gy, x, g["k"], **akw), want, dt, "avg backward",
                 abs_want=ref.pool2d_backward(abs(gy), x.shape, g["k"], g["stride"],
                                              g["avg_pads"], "avg", layout=lay, **avg_options(g)))
    for arr, before in snap:
        np.testing.assert_array_equal(arr, before)


@PROPERTY
@given(torch_geometries())
def test_pytorch_arguments_1d_are_2d_on_height_one(g):
    k, s, d, W = g["k"][1], g["stride"][1], g["dilation"][1], g["hw"][1]
    explicit = not isinstance(g["padding"], str)
    layout = "NWC" if g["layout"] == "NHWC" else "NCW"
    to4 = (lambda a: a[:, None]) if layout == "NWC" else (lambda a: a[:, :, None])
    squeeze = (lambda a: a[:, 0]) if layout == "NWC" else (lambda a: a[:, :, 0])
    rng = np.random.default_rng(g["seed"])
    x = rng.standard_normal((g["N"], W, g["C"]) if layout == "NWC"
                            else (g["N"], g["C"], W)).astype(g["dtype"])
    for is_max, dd in ((True, d), (False, 1)):
        pads = ref.normalize_padding(g["padding"], (1, W), (1, k), (1, s), (1, dd))[1]
        if not torch_geometry_ok((1, W), (1, k), (1, s), (1, dd), ((0, 0), pads),
                                 g["ceil_mode"], explicit):
            continue
        padding = g["padding"] if isinstance(g["padding"], str) else pads
        kw = dict(stride=(s,), padding=padding, ceil_mode=g["ceil_mode"], layout=layout)
        pads4 = ((0, 0), pads)
        if is_max:
            y, idx = fastnn.max_pool1d(x, (k,), dilation=dd, return_indices=True, **kw)
            ry, ridx = ref.pool2d(to4(x), (1, k), (1, s), pads4, "max", g["layout"],
                                  dilation=(1, dd), ceil_mode=g["ceil_mode"])
            np.testing.assert_array_equal(y, squeeze(ry).astype(g["dtype"]))
            np.testing.assert_array_equal(idx, squeeze(ridx))
            gy = rng.standard_normal(y.shape).astype(g["dtype"])
            gx = fastnn.max_pool1d_backward(gy, x, k, dilation=dd, **kw)
            want = ref.pool2d_backward(to4(gy), to4(x).shape, (1, k), (1, s), pads4, "max", ridx,
                                       g["layout"])
        else:
            opts = avg_options(g)
            del kw["ceil_mode"]
            a = fastnn.avg_pool1d(x, k, **kw, **opts)
            assert_close(a, squeeze(ref.pool2d(to4(x), (1, k), (1, s), pads4, "avg", g["layout"],
                                               **opts)), g["dtype"], "avg1d")
            gy = rng.standard_normal(a.shape).astype(g["dtype"])
            gx = fastnn.avg_pool1d_backward(gy, x, k, **kw, **opts)
            want = ref.pool2d_backward(to4(gy), to4(x).shape, (1, k), (1, s), pads4, "avg",
                                       layout=g["layout"], **opts)
        assert_close(gx, squeeze(want), g["dtype"], "1d backward")


def test_reference_pool_out_size_is_pytorchs_rule():
    # ceil_mode drops a last window that would start in the trailing padding
    assert ref.pool_out_size(5, 1, 1, 2, 2, 1, False) == 3
    assert ref.pool_out_size(5, 1, 1, 2, 2, 1, True) == 3     # ceil(5 / 2) + 1 = 4, dropped
    assert ref.pool_out_size(6, 0, 0, 2, 2, 2, True) == 3
    assert ref.pool_out_size(4, 0, 0, 5, 2, 1, True) == 1     # window larger than the input


# ------------------------------------------------------------------ PyTorch sample sweep
def _layout_pair(layout):
    """(to the layout, back to N C ...) for 4-D and 3-D arrays."""
    if layout in ("NHWC", "NWC"):
        return (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1)),
                lambda a: np.moveaxis(np.asarray(a), -1, 1))
    return (lambda a: np.array(a)), (lambda a: np.asarray(a))


def _sweep_input(rng, shape, dtype, nan=True):
    x = rng.standard_normal(shape).astype(dtype)
    if nan and x.size > 4:                      # a NaN and an -inf window or two
        x.reshape(-1)[rng.integers(0, x.size, 2)] = np.nan
        x.reshape(-1)[rng.integers(0, x.size, 2)] = -np.inf
    return x


def _check_max_against_torch(torch, fn, bwd, x, dtype, layout, kwargs):
    F = torch.nn.functional
    to, back = _layout_pair(layout)
    tfn = getattr(F, fn)
    xt = torch.from_numpy(x).requires_grad_()
    yt, it = tfn(xt, return_indices=True, **kwargs)
    gy = np.random.default_rng(7).standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.from_numpy(gy))
    ours = {k: v for k, v in kwargs.items() if v is not None}
    y, idx = getattr(fastnn, fn)(to(x), return_indices=True, layout=layout, **ours)
    np.testing.assert_array_equal(back(y), yt.detach().numpy(), err_msg=f"{fn} {kwargs}")
    np.testing.assert_array_equal(back(idx), it.numpy(), err_msg=f"{fn} indices {kwargs}")
    for indices in (idx, None):
        gx = bwd(to(gy), to(x), layout=layout, indices=indices, **ours)
        assert_close(back(gx), xt.grad.numpy(), dtype, f"{fn} grad {kwargs}")


def _check_avg_against_torch(torch, fn, bwd, x, dtype, layout, kwargs):
    F = torch.nn.functional
    to, back = _layout_pair(layout)
    xt = torch.from_numpy(x).requires_grad_()
    yt = getattr(F, fn)(xt, **kwargs)
    gy = np.random.default_rng(8).standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.from_numpy(gy))
    ours = dict(kwargs)
    ours.setdefault("count_include_pad", True)          # PyTorch's default, not ours
    y = getattr(fastnn, fn)(to(x), layout=layout, **ours)
    assert_close(back(y), yt.detach().numpy(), dtype, f"{fn} {kwargs}")
    gx = bwd(to(gy), to(x), layout=layout, **ours)
    assert_close(back(gx), xt.grad.numpy(), dtype, f"{fn} grad {kwargs}")


def _max_pool2d_samples():
    """PyTorch's OpInfo sample inputs of max_pool2d (_TestParamsMaxPool2d): every
    combination of kernel_size, stride, ceil_mode, padding and dilation over its shapes."""
    keys = ("kernel_size", "stride", "ceil_mode", "padding", "dilation")
    values = ([3, (3, 2)], [2, None, (2, 1)], [True, False], [0, 1, (1, 1)], [1, (1, 2)])
    shapes = [(b, 2, h, 6) for b in (1, 2) for h in (3, 6)]
    for shape in shapes:
        for combo in itertools.product(*values):
            yield shape, dict(zip(keys, combo))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool2d_opinfo_samples_match_torch(layout, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    n = 0
    for shape, kwargs in _max_pool2d_samples():
        x = _sweep_input(rng, shape, dtype)
        try:
            torch.nn.functional.max_pool2d(torch.from_numpy(x), **kwargs)
        except RuntimeError:
            # PyTorch refuses it (output too small): so must we.
            call_raises(ValueError, "max_pool2d", fastnn.max_pool2d,
                        ref.from_nchw(x, layout).copy(), layout=layout,
                        **{k: v for k, v in kwargs.items() if v is not None})
            continue
        _check_max_against_torch(torch, "max_pool2d", fastnn.max_pool2d_backward, x, dtype,
                                 layout, kwargs)
        n += 1
    assert n > 250


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCW", "NWC"])
def test_max_pool1d_opinfo_samples_match_torch(layout, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    keys = ("kernel_size", "stride", "ceil_mode", "padding", "dilation")
    values = ([3, (3,)], [2, None, (2,)], [True, False], [0, 1, (1,)], [1, (1,), 2])
    for shape in [(b, 2, w) for b in (1, 2) for w in (3, 6, 11)]:
        for combo in itertools.product(*values):
            kwargs = dict(zip(keys, combo))
            x = _sweep_input(rng, shape, dtype)
            try:
                torch.nn.functional.max_pool1d(torch.from_numpy(x), **kwargs)
            except RuntimeError:
                call_raises(ValueError, "max_pool1d", fastnn.max_pool1d,
                            _layout_pair(layout)[0](x), layout=layout,
                            **{k: v for k, v in kwargs.items() if v is not None})
                continue
            _check_max_against_torch(torch, "max_pool1d", fastnn.max_pool1d_backward, x, dtype,
                                     layout, kwargs)


# PyTorch's OpInfo sample inputs of avg_pool2d: input shape, kernel_size, stride, padding,
# ceil_mode, count_include_pad, divisor_override -- plus dilation-free extras of ours.
AVG_POOL2D_SAMPLES = [
    ((1, 3, 9, 9), 3, 1, 1, True, False, 2),
    ((1, 3, 9, 9), (4, 4), (2, 3), 1, True, False, 2),
    ((1, 3, 9, 9), (6, 6), (3, 3), (2, 3), True, True, 2),
    ((2, 3, 9, 9), (3, 3), (1, 1), (1,), True, False, 2),
    ((1, 1, 4, 4), (2, 2), (), (0,), False, True, -2),
    ((1, 2, 6, 6), (4, 4), (2, 2), (2,), True, True, None),
    ((1, 3, 9, 9), (3, 3), None, 0, False, True, None),
    ((2, 2, 7, 8), (3, 2), (2, 2), (1, 1), True, True, None),
    ((2, 2, 7, 8), (3, 2), (2, 2), (1, 1), True, False, None),
    ((2, 2, 5, 5), 2, 2, 1, True, True, None),
    ((1, 2, 4, 4), 5, 2, 0, True, True, None),        # a window larger than the input
    ((2, 3, 10, 7), (5, 3), (3, 2), (2, 1), True, True, 7),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("sample", AVG_POOL2D_SAMPLES, ids=str)
def test_avg_pool2d_opinfo_samples_match_torch(sample, layout, dtype):
    torch = pytest.importorskip("torch")
    shape, k, stride, padding, ceil_mode, cip, div = sample
    x = _sweep_input(np.random.default_rng(13), shape, dtype, nan=False)
    kwargs = dict(kernel_size=k, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=cip, divisor_override=div)
    _check_avg_against_torch(torch, "avg_pool2d", fastnn.avg_pool2d_backward, x, dtype, layout,
                             kwargs)


AVG_POOL1D_SAMPLES = [
    ((2, 3, 9), (3,), {}),
    ((1, 3, 9), 3, dict(stride=1, padding=1, ceil_mode=True, count_include_pad=False)),
    ((1, 3, 9), (6,), dict(stride=(3,), padding=(2,), ceil_mode=True, count_include_pad=True)),
    ((2, 3, 9), (3,), dict(stride=(1,), padding=(1,), ceil_mode=False, count_include_pad=True)),
    ((0, 3, 9), (6,), dict(stride=(3,), padding=(2,), ceil_mode=False, count_include_pad=True)),
    ((1, 2, 9), (7,), dict(stride=(3,), padding=(2,), ceil_mode=False)),
    ((1, 2, 9), (7,), dict(stride=(3,), padding=(3,), ceil_mode=True)),
    ((1, 2, 9), (7,), dict(stride=(3,), ceil_mode=False)),
    ((1, 2, 9), (7,), dict(stride=(3,), ceil_mode=True)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCW", "NWC"])
@pytest.mark.parametrize("sample", AVG_POOL1D_SAMPLES, ids=str)
def test_avg_pool1d_opinfo_samples_match_torch(sample, layout, dtype):
    torch = pytest.importorskip("torch")
    shape, k, kwargs = sample
    x = _sweep_input(np.random.default_rng(14), shape, dtype, nan=False)
    _check_avg_against_torch(torch, "avg_pool1d", fastnn.avg_pool1d_backward, x, dtype, layout,
                             dict(kwargs, kernel_size=k))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_divisor_override_and_nan_windows_match_torch(layout):
    # divisor_override with NaN / inf in a window: the sum carries them, as in PyTorch.
    torch = pytest.importorskip("torch")
    x = _sweep_input(np.random.default_rng(15), (2, 3, 8, 7), np.float64)
    x[0, 0, 0, 0], x[1, 2, 3, 3] = np.inf, np.nan
    to, back = _layout_pair(layout)
    for kwargs in (dict(divisor_override=3), dict(count_include_pad=True, ceil_mode=True),
                   dict(ceil_mode=True)):
        want = torch.nn.functional.avg_pool2d(torch.from_numpy(x), 3, 2, 1, **kwargs).numpy()
        got = back(fastnn.avg_pool2d(to(x), 3, stride=2, padding=1, layout=layout,
                                     **dict(dict(count_include_pad=True), **kwargs)))
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        fin = np.isfinite(want)
        np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)])
        assert_close(got[fin], want[fin], np.float64, str(kwargs))


# ------------------------------------------------------------------ finite differences
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k,stride,padding,dilation,ceil_mode", [
    (3, 2, 1, 2, True), ((2, 3), (2, 1), (1, 1), (2, 1), False), (2, 3, 0, 1, True),
    (3, 1, "same", 2, False)], ids=str)
def test_max_pool_pytorch_arguments_finite_differences(layout, k, stride, padding, dilation,
                                                       ceil_mode):
    rng = np.random.default_rng(16)
    x = (rng.permutation(2 * 3 * 7 * 8) / 30.0).reshape(x_shape_of(layout, 2, 3, 7, 8))
    kw = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode,
              layout=layout)
    gy = rng.standard_normal(fastnn.max_pool2d(x, k, **kw).shape)
    assert_finite_difference_grads(lambda: fastnn.max_pool2d(x, k, **kw),
                                   (fastnn.max_pool2d_backward(gy, x, k, **kw),), (x,),
                                   ("max grad_x",), gy)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("options", [
    dict(ceil_mode=True), dict(count_include_pad=True), dict(ceil_mode=True, count_include_pad=True),
    dict(divisor_override=-3), dict(ceil_mode=True, divisor_override=2)], ids=str)
def test_avg_pool_pytorch_arguments_finite_differences(layout, options):
    rng = np.random.default_rng(17)
    x = rng.standard_normal(x_shape_of(layout, 2, 3, 7, 8))
    kw = dict(stride=2, padding=1, layout=layout, **options)
    gy = rng.standard_normal(fastnn.avg_pool2d(x, 3, **kw).shape)
    assert_finite_difference_grads(lambda: fastnn.avg_pool2d(x, 3, **kw),
                                   (fastnn.avg_pool2d_backward(gy, x, 3, **kw),), (x,),
                                   ("avg grad_x",), gy)
    x1 = rng.standard_normal((2, 9, 3) if layout == "NHWC" else (2, 3, 9))
    kw1 = dict(kw, layout="NWC" if layout == "NHWC" else "NCW")
    gy1 = rng.standard_normal(fastnn.avg_pool1d(x1, 3, **kw1).shape)
    assert_finite_difference_grads(lambda: fastnn.avg_pool1d(x1, 3, **kw1),
                                   (fastnn.avg_pool1d_backward(gy1, x1, 3, **kw1),), (x1,),
                                   ("avg1d grad_x",), gy1)


# ------------------------------------------------------------------ behaviour
def test_one_element_tuples_expand_like_pytorch():
    x = np.random.default_rng(18).standard_normal((2, 3, 9, 8))
    for f, extra in ((fastnn.max_pool2d, dict(dilation=(2,))), (fastnn.avg_pool2d, {})):
        want = f(x, 3, stride=2, padding=1, **{k: v[0] for k, v in extra.items()})
        got = f(x, (3,), stride=(2,), padding=(1,), **extra)
        np.testing.assert_array_equal(got, want)
    gy = np.ones(fastnn.max_pool2d(x, 3, stride=2, padding=1, dilation=2).shape)
    np.testing.assert_array_equal(
        fastnn.max_pool2d_backward(gy, x, (3,), stride=(2,), padding=(1,), dilation=(2,)),
        fastnn.max_pool2d_backward(gy, x, 3, stride=2, padding=1, dilation=2))
    x1 = x[:, :, 0]
    np.testing.assert_array_equal(fastnn.max_pool1d(x1, (3,), stride=(2,), padding=(1,),
                                                    dilation=(2,)),
                                  fastnn.max_pool1d(x1, 3, stride=2, padding=1, dilation=2))
    # stride () is kernel_size, as PyTorch's default
    np.testing.assert_array_equal(fastnn.avg_pool2d(x, 2, stride=()), fastnn.avg_pool2d(x, 2))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_padding_uses_the_dilated_window(layout):
    rng = np.random.default_rng(19)
    x = rng.standard_normal(x_shape_of(layout, 2, 3, 7, 9))
    for k, s, d in (((3, 2), 1, (2, 3)), (3, 2, 2), ((2, 4), (2, 3), (3, 1))):
        y, idx = fastnn.max_pool2d(x, k, stride=s, padding="same", dilation=d, layout=layout,
                                   return_indices=True)
        ks, ss, ds = ref._pair(k), ref._pair(s), ref._pair(d)
        assert ref.to_nchw(y, layout).shape[2:] == (-(-7 // ss[0]), -(-9 // ss[1]))
        pads = ref.normalize_padding("same", (7, 9), ks, ss, ds)
        ry, ridx = ref.pool2d(x, k, s, pads, "max", layout, dilation=d)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(idx, ridx)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_rule_with_dilation_and_ceil_mode(layout):
    # 1x9 plane, kernel 2, dilation 3, stride 2, ceil_mode: windows {0, 3}, {2, 5}, {4, 7},
    # {6, (9)} -- the last one is ceil_mode's, hanging past the input.
    x = np.array([[[[1.0, np.nan, 2.0, 5.0, np.nan, 0.0, -np.inf, 3.0, 7.0]]]])
    x2 = np.concatenate([x, x], axis=1)
    xl = ref.from_nchw(x2, layout).copy()
    kw = dict(stride=(1, 2), dilation=(1, 3), ceil_mode=True, layout=layout)
    y, idx = fastnn.max_pool2d(xl, (1, 2), return_indices=True, **kw)
    y, idx = ref.to_nchw(y, layout)[0, 0, 0], np.asarray(ref.to_nchw(idx, layout))[0, 0, 0]
    np.testing.assert_array_equal(y, [5.0, 2.0, np.nan, -np.inf])
    np.testing.assert_array_equal(idx, [3, 2, 4, 6])   # the NaN at 1 falls between taps
    gx = fastnn.max_pool2d_backward(np.ones_like(fastnn.max_pool2d(xl, (1, 2), **kw)), xl,
                                    (1, 2), **kw)
    np.testing.assert_array_equal(ref.to_nchw(gx, layout)[0, 0, 0], [0, 0, 1, 1, 1, 0, 1, 0, 0])
    a = fastnn.avg_pool2d(xl, (1, 3), stride=(1, 3), ceil_mode=True, layout=layout)
    np.testing.assert_array_equal(ref.to_nchw(a, layout)[0, 0, 0, :2], [np.nan, np.nan])
    assert ref.to_nchw(a, layout)[0, 0, 0, 2] == np.float64(-np.inf)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_batch_with_pytorch_arguments(layout):
    x = np.zeros(x_shape_of(layout, 0, 3, 5, 5), np.float32)
    kw = dict(stride=2, padding=1, ceil_mode=True, layout=layout)
    y, idx = fastnn.max_pool2d(x, 3, dilation=2, return_indices=True, **kw)
    want = x_shape_of(layout, 0, 3, ref.pool_out_size(5, 1, 1, 3, 2, 2, True),
                      ref.pool_out_size(5, 1, 1, 3, 2, 2, True))
    assert y.shape == want and idx.shape == want and y.dtype == np.float32
    assert fastnn.max_pool2d_backward(y, x, 3, dilation=2, **kw).shape == x.shape
    a = fastnn.avg_pool2d(x, 3, count_include_pad=True, divisor_override=2, **kw)
    assert a.shape == x_shape_of(layout, 0, 3, 3, 3)
    assert fastnn.avg_pool2d_backward(a, x, 3, count_include_pad=True, **kw).shape == x.shape
    x1 = np.zeros((0, 2, 9))
    assert fastnn.avg_pool1d(x1, 6, stride=3, padding=2, count_include_pad=True).shape == (0, 2, 3)


def test_thread_count_does_not_change_bits_with_pytorch_arguments():
    rng = np.random.default_rng(20)
    for layout in LAYOUTS:
        x = rng.standard_normal(x_shape_of(layout, 4, 80, 24, 20)).astype(np.float32)
        mkw = dict(stride=2, padding=2, dilation=2, ceil_mode=True, layout=layout)
        akw = dict(stride=2, padding=1, ceil_mode=True, count_include_pad=True, layout=layout)
        gy_m = rng.standard_normal(fastnn.max_pool2d(x, 3, **mkw).shape).astype(np.float32)
        gy_a = rng.standard_normal(fastnn.avg_pool2d(x, 3, **akw).shape).astype(np.float32)
        assert_thread_count_invariant(
            lambda: fastnn.max_pool2d(x, 3, return_indices=True, **mkw)
            + (fastnn.max_pool2d_backward(gy_m, x, 3, **mkw), fastnn.avg_pool2d(x, 3, **akw),
               fastnn.avg_pool2d(x, 3, divisor_override=5, **dict(akw, count_include_pad=False)),
               fastnn.avg_pool2d_backward(gy_a, x, 3, **akw)), counts=(1, 2))


def test_default_path_keeps_the_tensorflow_rules():
    # Without PyTorch's arguments a padding up to the window size still works (every
    # window holds an input element) and averages count real elements only.
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y = fastnn.avg_pool2d(x, 3, stride=3, padding=2)
    assert y.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(y, ref.pool2d(x, 3, 3, ((2, 2), (2, 2)), "avg"))
    assert y[0, 0, 0, 0] == 0.0                        # the one real element, x[0, 0]


# ------------------------------------------------------------------ bad input
def test_bad_pytorch_arguments_name_the_argument():
    x = np.zeros((2, 3, 5, 5))
    f, a = fastnn.max_pool2d, fastnn.avg_pool2d
    call_raises(ValueError, r"max_pool2d: dilation must be >= 1", f, x, 2, dilation=0)
    call_raises(ValueError, r"max_pool1d: dilation must be >= 1", fastnn.max_pool1d, x[0], 2,
                dilation=(0,))
    call_raises(TypeError, r"max_pool2d: dilation must be an int", f, x, 2, dilation=1.5)
    call_raises(ValueError, r"max_pool2d: dilation must be an int or a tuple of 2", f, x, 2,
                dilation=(1, 2, 3))
    call_raises(TypeError, r"max_pool2d: ceil_mode must be a bool", f, x, 2, ceil_mode=1)
    call_raises(TypeError, r"avg_pool2d: count_include_pad must be a bool", a, x, 2,
                count_include_pad="yes")
    call_raises(ValueError, r"avg_pool2d: divisor_override must not be zero", a, x, 2,
                divisor_override=0)
    call_raises(TypeError, r"avg_pool1d: divisor_override must be an int", fastnn.avg_pool1d,
                x[0], 2, divisor_override=2.0)
    call_raises(TypeError, r"avg_pool2d: divisor_override must be an int", a, x, 2,
                divisor_override=True)
    # PyTorch's padding limit, half the dilated window, once its arguments are in use
    call_raises(ValueError, r"max_pool2d: padding 2 must be at most half the effective window "
                r"along the height \(2 > 3 // 2\)", f, x, 3, padding=2, ceil_mode=True)
    call_raises(ValueError, r"avg_pool2d: padding \(0, 2\) must be at most half the effective "
                r"window along the width", a, x, 3, padding=(0, 2), count_include_pad=True)
    call_raises(ValueError, r"max_pool1d: padding \(1, 3\) must be at most half", fastnn.max_pool1d,
                x[0], 3, padding=(1, 3), dilation=2)
    call_raises(ValueError, r"avg_pool2d: padding 3 must be at most half", a, x, 3, padding=3,
                divisor_override=1)
    # an output below 1, with the dilated extent in the message
    call_raises(ValueError, r"max_pool2d: the pooling window \(3x3, dilated to 5x5\) is larger "
                r"than the padded input \(4x4\)", f, np.zeros((1, 1, 4, 4)), 3, dilation=2)
    call_raises(ValueError, r"max_pool1d: the pooling window \(4, dilated to 10\) is larger",
                fastnn.max_pool1d, np.zeros((1, 1, 8)), 4, stride=1, dilation=3, ceil_mode=True)
    # dilated taps that step over the whole input
    call_raises(ValueError, r"max_pool2d: padding 1 leaves a window with no input element along "
                r"the height.*dilated", f, np.zeros((1, 1, 1, 3)), 2, padding=1, dilation=2,
                stride=1)
    for bwd, kw in ((fastnn.max_pool2d_backward, dict(dilation=0)),
                    (fastnn.avg_pool2d_backward, dict(divisor_override=0)),
                    (fastnn.avg_pool2d_backward, dict(ceil_mode=None))):
        call_raises((ValueError, TypeError), r"_pool2d_backward: (dilation|divisor_override|"
                    r"ceil_mode)", bwd, np.zeros((2, 3, 2, 2)), x, 2, **kw)
    call_raises(ValueError, r"max_pool2d_backward: grad_y must have the output shape "
                r"\(2, 3, 3, 3\)", fastnn.max_pool2d_backward, np.zeros((2, 3, 2, 2)), x, 2,
                ceil_mode=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (1, 2, 7, 9), (3, 1, 2, 3)])
def test_2x2_backward_scatters_any_in_plane_indices(shape, dtype):
    # The 2x2 stride-2 backward writes each gradient at its window's argmax; indices the
    # caller made that point outside their window (here: several windows onto one
    # element) must still be scatter-added, as the general kernel does.
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    y, idx = fastnn.max_pool2d(x, 2, return_indices=True)
    gy = rng.standard_normal(y.shape).astype(dtype)
    N, C, H, W = shape

    def scatter(ind):
        want = np.zeros((N * C, H * W))
        np.add.at(want, (np.arange(N * C)[:, None], ind.reshape(N * C, -1)),
                  gy.reshape(N * C, -1).astype(np.float64))
        return want.reshape(shape)

    got = fastnn.max_pool2d_backward(gy, x, 2, indices=idx)
    assert np.array_equal(got, scatter(idx).astype(dtype))
    odd = idx.copy()
    odd[..., 0, 0] = 0                  # every plane's first window: still in-window
    odd[..., -1, -1] = 0                # the last window onto element 0: out of window
    assert np.array_equal(fastnn.max_pool2d_backward(gy, x, 2, indices=odd),
                          scatter(odd).astype(dtype))
