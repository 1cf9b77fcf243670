"""Tests of fastnn.conv1d / conv1d_backward (layouts NCW and NWC).

Against the float64 tap-loop references of tests/reference.py, finite differences
and PyTorch (where installed), plus the bad-input and memory-layout rules of SPEC.md.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastnn
import reference as ref
from helpers import (DTYPES, PROPERTY, assert_close, assert_finite_difference_grads,
                     assert_thread_count_invariant, call_raises, memory_variants, snapshot,
                     x_shape_of)

LAYOUTS = ("NCW", "NWC")


def w_shape_of(layout, K, Cg, k):
    return (k, Cg, K) if layout == "NWC" else (K, Cg, k)


def pads_of(padding, W, k, s, d):
    """(left, right) for every accepted 1-D padding form."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        return ref.same_padding(W, k, s, d)
    if isinstance(padding, int):
        return (padding, padding)
    if len(padding) == 1:
        return (padding[0], padding[0])
    return tuple(padding)


@st.composite
def geometries(draw):
    G = draw(st.sampled_from([1, 1, 2, 3]))
    k = draw(st.integers(1, 5))
    s = draw(st.integers(1, 3))
    d = draw(st.integers(1, 3))
    padding = draw(st.one_of(st.just("same"), st.just("valid"), st.integers(0, 3),
                             st.tuples(st.integers(0, 3)),
                             st.tuples(st.integers(0, 3), st.integers(0, 3))))
    W = draw(st.integers(1, 20))
    left, right = pads_of(padding, W, k, s, d)
    W = max(W, d * (k - 1) + 1 - left - right)
    left, right = pads_of(padding, W, k, s, d)
    return dict(N=draw(st.integers(0, 3)), C=G * draw(st.integers(1, 3)), W=W,
                K=G * draw(st.integers(1, 4)), G=G, k=k, stride=s, dilation=d,
                padding=padding, pads=(left, right), layout=draw(st.sampled_from(LAYOUTS)),
                dtype=draw(st.sampled_from(DTYPES)), bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))


def make_inputs(g):
    rng = np.random.default_rng(g["seed"])
    dt = g["dtype"]
    x = rng.standard_normal(x_shape_of(g["layout"], g["N"], g["C"], g["W"])).astype(dt)
    w = rng.standard_normal(w_shape_of(g["layout"], g["K"], g["C"] // g["G"], g["k"])).astype(dt)
    b = rng.standard_normal(g["K"]).astype(dt) if g["bias"] else None
    return x, w, b


def kwargs_of(g):
    return dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"],
                groups=g["G"], layout=g["layout"])


def ref_kwargs(g):
    return dict(stride=g["stride"], padding=g["pads"], dilation=g["dilation"],
                groups=g["G"], layout=g["layout"])


# ------------------------------------------------------------------ the reference itself
def test_reference_matches_conv2d_reference_on_height_one():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 11))
    w = rng.standard_normal((6, 2, 3))
    y = ref.conv1d(x, w, stride=2, padding=(1, 2), dilation=2, groups=2)
    y2 = ref.conv2d_naive(x[:, :, None], w[:, :, None], stride=(1, 2),
                          padding=((0, 0), (1, 2)), dilation=(1, 2), groups=2)
    np.testing.assert_allclose(y, y2[:, :, 0], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ property tests
@PROPERTY
@given(geometries())
def test_conv1d_and_backward_match_reference(g):
    x, w, b = make_inputs(g)
    snap = snapshot([x, w, b])
    y = fastnn.conv1d(x, w, b, **kwargs_of(g))
    want = ref.conv1d(x, w, b, **ref_kwargs(g))
    assert y.dtype == np.dtype(g["dtype"])
    assert_close(y, want, g["dtype"], "y", abs_want=ref.conv1d(abs(x), abs(w), None, **ref_kwargs(g)))
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(g["dtype"])
    gx, gw, gb = fastnn.conv1d_backward(gy, x, w, bias=g["bias"], **kwargs_of(g))
    rx, rw, rb = ref.conv1d_backward(gy, x, w, **ref_kwargs(g))
    assert_close(gx, rx, g["dtype"], "grad_x")
    assert_close(gw, rw, g["dtype"], "grad_weight",
                 abs_want=ref.conv1d_backward(abs(gy), abs(x), abs(w), **ref_kwargs(g))[1])
    if g["bias"]:
        assert_close(gb, rb, g["dtype"], "grad_bias", abs_want=abs(gy).sum(axis=(0, 2 if g["layout"] == "NCW" else 1)))
    else:
        assert gb is None
    for arr, before in snap:
        np.testing.assert_array_equal(arr, before)


# ------------------------------------------------------------------ finite differences
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, "same", 1, 1), (2, (2, 0), 2, 2)])
def test_backward_finite_differences(layout, stride, padding, dilation, groups):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape_of(layout, 2, 4, 9))
    w = rng.standard_normal(w_shape_of(layout, 4, 4 // groups, 3))
    b = rng.standard_normal(4)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)
    gy = rng.standard_normal(fastnn.conv1d(x, w, b, **kw).shape)

    assert_finite_difference_grads(lambda: fastnn.conv1d(x, w, b, **kw),
                                   fastnn.conv1d_backward(gy, x, w, **kw), (x, w, b),
                                   ("grad_x", "grad_weight", "grad_bias"), gy)


# ------------------------------------------------------------------ PyTorch
@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [dict(stride=1, padding=0, dilation=1, groups=1),
                                  dict(stride=2, padding=3, dilation=2, groups=2),
                                  dict(stride=1, padding="same", dilation=2, groups=4),
                                  dict(stride=3, padding=1, dilation=1, groups=1)], ids=str)
def test_conv1d_and_grads_match_torch(case, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 8, 17)).astype(dtype)
    w = rng.standard_normal((12, 8 // case["groups"], 4 if case["padding"] != "same" else 3)).astype(dtype)
    b = rng.standard_normal(12).astype(dtype)
    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    yt = F.conv1d(xt, wt, bt, **case)
    gy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.from_numpy(gy))
    for layout in LAYOUTS:
        t = (lambda a: a.transpose(0, 2, 1)) if layout == "NWC" else (lambda a: a)
        tw = (lambda a: a.transpose(2, 1, 0)) if layout == "NWC" else (lambda a: a)
        y = fastnn.conv1d(t(x), tw(w), b, layout=layout, **case)
        assert_close(t(y), yt.detach().numpy(), dtype, f"{layout} y vs torch")
        gx, gw, gb = fastnn.conv1d_backward(t(gy), t(x), tw(w), layout=layout, **case)
        assert_close(t(gx), xt.grad.numpy(), dtype, f"{layout} grad_x vs torch")
        assert_close(tw(gw), wt.grad.numpy(), dtype, f"{layout} grad_weight vs torch")
        assert_close(gb, bt.grad.numpy(), dtype, f"{layout} grad_bias vs torch")


# ------------------------------------------------------------------ behaviour
@pytest.mark.parametrize("layout", LAYOUTS)
def test_padding_forms_agree(layout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape_of(layout, 2, 3, 10))
    w = rng.standard_normal(w_shape_of(layout, 4, 3, 3))
    f = lambda p: fastnn.conv1d(x, w, padding=p, layout=layout)  # noqa: E731
    np.testing.assert_array_equal(f(2), f((2,)))
    np.testing.assert_array_equal(f(2), f((2, 2)))
    np.testing.assert_array_equal(f(2), f(((2, 2),)))
    np.testing.assert_array_equal(f(0), f("valid"))
    np.testing.assert_array_equal(f(1), f("same"))
    assert f((0, 3)).shape == x_shape_of(layout, 2, 4, 11)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_memory_layout_same_result(layout, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape_of(layout, 3, 4, 12)).astype(dtype)
    w = rng.standard_normal(w_shape_of(layout, 6, 2, 3)).astype(dtype)
    kw = dict(stride=2, padding=(1, 0), dilation=2, groups=2, layout=layout)
    y = fastnn.conv1d(x, w, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    grads = fastnn.conv1d_backward(gy, x, w, **kw)
    for name, xv in memory_variants(x).items():
        wv = memory_variants(w)[name]
        gv = memory_variants(gy)[name]
        np.testing.assert_array_equal(fastnn.conv1d(xv, wv, **kw), y, err_msg=name)
        for a, b_ in zip(fastnn.conv1d_backward(gv, xv, wv, **kw), grads):
            np.testing.assert_array_equal(a, b_, err_msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_buffer_and_empty_batch(layout):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape_of(layout, 2, 4, 9)).astype(np.float32)
    w = rng.standard_normal(w_shape_of(layout, 5, 4, 3)).astype(np.float32)
    want = fastnn.conv1d(x, w, padding=1, layout=layout)
    out = np.full(want.shape, np.nan, np.float32)
    assert fastnn.conv1d(x, w, padding=1, layout=layout, out=out) is out
    np.testing.assert_array_equal(out, want)
    big = np.full(want.shape[:-1] + (2 * want.shape[-1],), np.nan, np.float32)
    view = big[..., ::2]
    assert fastnn.conv1d(x, w, padding=1, layout=layout, out=view) is view
    np.testing.assert_array_equal(view, want)
    call_raises(ValueError, r"conv1d: out has shape", fastnn.conv1d, x, w, layout=layout, out=out)
    call_raises(TypeError, r"conv1d: out has dtype", fastnn.conv1d, x, w, padding=1,
                layout=layout, out=out.astype(np.float64))
    empty = fastnn.conv1d(x[:0], w, padding=1, layout=layout)
    assert empty.shape == (0,) + want.shape[1:] and empty.dtype == np.float32
    gx, gw, gb = fastnn.conv1d_backward(empty, x[:0], w, padding=1, layout=layout)
    assert gx.shape == x[:0].shape and not gw.any() and not gb.any()


def test_thread_count_does_not_change_bits():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 16, 300)).astype(np.float32)
    w = rng.standard_normal((32, 16, 5)).astype(np.float32)
    gy = rng.standard_normal((8, 32, 296)).astype(np.float32)
    assert_thread_count_invariant(lambda: (fastnn.conv1d(x, w),) + fastnn.conv1d_backward(gy, x, w))


# ------------------------------------------------------------------ bad input
def test_bad_input_messages_name_the_argument():
    x = np.zeros((2, 4, 10))
    w = np.zeros((6, 4, 3))
    call_raises(ValueError, r"conv1d: x must be 3-D \(layout NCW: N, C, W\)", fastnn.conv1d,
                x[None], w)
    call_raises(ValueError, r"conv1d: weight must be 3-D \(layout NWC: kw, C/groups, K\)",
                fastnn.conv1d, x, w[None], layout="NWC")
    call_raises(ValueError, r"conv1d: weight has 4 input channels per group, x has 2 \(layout NCW\)",
                fastnn.conv1d, x, w, groups=2)
    call_raises(ValueError, r"conv1d: layout must be one of NCW, NWC", fastnn.conv1d, x, w,
                layout="NCHW")
    call_raises(ValueError, r"conv1d: kernel \(dilated extent 13\) is larger than the padded "
                r"input \(10\)", fastnn.conv1d, x, w, dilation=6)
    call_raises(ValueError, r"conv1d: padding must be >= 0", fastnn.conv1d, x, w, padding=-1)
    call_raises(ValueError, r"conv1d: padding must be an int or a tuple of 2", fastnn.conv1d,
                x, w, padding=(1, 2, 3))
    call_raises(ValueError, r"conv1d: padding must be an int, a tuple, 'valid' or 'same'",
                fastnn.conv1d, x, w, padding="full")
    call_raises(ValueError, r"conv1d: stride must be >= 1", fastnn.conv1d, x, w, stride=0)
    call_raises(ValueError, r"conv1d: stride must be an int or a tuple of 1", fastnn.conv1d,
                x, w, stride=(1, 2))
    call_raises(ValueError, r"conv1d: bias must have shape \(6,\)", fastnn.conv1d, x, w,
                np.zeros(5))
    call_raises(TypeError, r"conv1d: x must have dtype float32 or float64, got int64",
                fastnn.conv1d, x.astype(np.int64), w)
    call_raises(ValueError, r"conv1d_backward: grad_y must have the output shape \(2, 6, 8\) "
                r"\(layout NCW\), got \(2, 6, 9\)", fastnn.conv1d_backward, np.zeros((2, 6, 9)), x, w)
