"""Tests of fastnn.conv: conv2d, conv2d_backward, im2col, col2im, flip_kernel.

Against the float64 references of tests/reference.py (property tests over random
geometries), finite differences, PyTorch (where installed) and scipy, plus the
bad-input and memory-layout rules of SPEC.md.
"""
import os

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastnn
import fastnn.conv
import reference as ref
from helpers import (DTYPES, PROPERTY, assert_close, assert_thread_count_invariant, call_raises,
                     memory_variants, numeric_grad, rel_err, snapshot, x_shape_of)

LAYOUTS = ("NCHW", "NHWC")


def w_shape_of(layout, K, Cg, kh, kw):
    return (kh, kw, Cg, K) if layout == "NHWC" else (K, Cg, kh, kw)


def make_conv_inputs(seed, layout, dtype, N, C, H, W, K, G, kh, kw):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape_of(layout, N, C, H, W)).astype(dtype)
    w = rng.standard_normal(w_shape_of(layout, K, C // G, kh, kw)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


# ------------------------------------------------------------------ strategies
ints = st.integers
STRIDE = st.one_of(ints(1, 3), st.tuples(ints(1, 3), ints(1, 3)))
DILATION = st.one_of(ints(1, 3), st.tuples(ints(1, 3), ints(1, 3)))
PAD = ints(0, 3)
PADDING = st.one_of(
    st.just("valid"), st.just("same"), PAD, st.tuples(PAD, PAD),
    st.tuples(st.tuples(PAD, PAD), st.tuples(PAD, PAD)))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _explicit_pads(padding):
    """((t, b), (l, r)) for the explicit forms; None for "same"."""
    if padding == "same":
        return None
    return ref.normalize_padding(padding, (1, 1), (1, 1), (1, 1), (1, 1))


@st.composite
def geometries(draw, groups=True, min_batch=0):
    """A conv geometry whose output is at least 1x1."""
    G = draw(ints(1, 3)) if groups else 1
    Cg = draw(ints(1, 6 // G))
    Kg = draw(ints(1, 6 // G))
    kh, kw = draw(ints(1, 4)), draw(ints(1, 4))
    stride, dilation, padding = draw(STRIDE), draw(DILATION), draw(PADDING)
    (dh, dw) = _pair(dilation)
    pads = _explicit_pads(padding)
    # Smallest input size with an output >= 1 on each axis (no rejection sampling).
    min_h = 1 if pads is None else max(1, dh * (kh - 1) + 1 - sum(pads[0]))
    min_w = 1 if pads is None else max(1, dw * (kw - 1) + 1 - sum(pads[1]))
    H = draw(ints(min_h, max(min_h, 12)))
    W = draw(ints(min_w, max(min_w, 12)))
    (ho, wo), _ = ref.conv_out_hw((H, W), (kh, kw), stride, padding, dilation)
    assume(ho >= 1 and wo >= 1)
    return dict(N=draw(ints(min_batch, 3)), C=G * Cg, K=G * Kg, G=G, H=H, W=W, kh=kh, kw=kw,
                stride=stride, padding=padding, dilation=dilation,
                layout=draw(st.sampled_from(LAYOUTS)),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(ints(0, 2**32 - 1)))


@st.composite
def bad_geometries(draw):
    """A geometry whose output would be smaller than 1 on at least one axis."""
    kh, kw = draw(ints(1, 4)), draw(ints(1, 4))
    stride, dilation = draw(STRIDE), draw(DILATION)
    padding = draw(st.one_of(st.just("valid"), PAD, st.tuples(PAD, PAD),
                             st.tuples(st.tuples(PAD, PAD), st.tuples(PAD, PAD))))
    (dh, dw) = _pair(dilation)
    pads = _explicit_pads(padding)
    min_h = dh * (kh - 1) + 1 - sum(pads[0])
    min_w = dw * (kw - 1) + 1 - sum(pads[1])
    bad_axis = draw(st.sampled_from(["h", "w"]))
    if bad_axis == "h":
        assume(min_h >= 2)
        H, W = draw(ints(1, min_h - 1)), draw(ints(1, 12))
    else:
        assume(min_w >= 2)
        H, W = draw(ints(1, 12)), draw(ints(1, min_w - 1))
    (ho, wo), _ = ref.conv_out_hw((H, W), (kh, kw), stride, padding, dilation)
    assert ho < 1 or wo < 1
    return dict(N=draw(ints(0, 2)), C=draw(ints(1, 3)), K=draw(ints(1, 3)), H=H, W=W,
                kh=kh, kw=kw, stride=stride, padding=padding, dilation=dilation,
                layout=draw(st.sampled_from(LAYOUTS)))


def geo_kwargs(g):
    return dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"],
                layout=g["layout"])


# ------------------------------------------------------------------ the reference itself
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geo", [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=2, padding=((1, 2), (0, 1)), dilation=(1, 2), groups=2),
    dict(stride=(2, 3), padding="same", dilation=1, groups=2),
    dict(stride=3, padding=(2, 1), dilation=(2, 1), groups=1),
])
def test_reference_matches_naive_loops(layout, geo):
    rng = np.random.default_rng(0)
    G = geo["groups"]
    x = rng.standard_normal(x_shape_of(layout, 2, 4, 7, 6))
    w = rng.standard_normal(w_shape_of(layout, 6, 4 // G, 3, 2))
    b = rng.standard_normal(6)
    a = ref.conv2d(x, w, b, layout=layout, **geo)
    n = ref.conv2d_naive(x, w, b, layout=layout, **geo)
    assert rel_err(a, n) < 1e-14


def test_reference_same_padding_rule():
    # TensorFlow's documented examples: in 5, k 3, s 2 -> pad 1/1; in 6 -> pad 0/1.
    assert ref.same_padding(5, 3, 2, 1) == (1, 1)
    assert ref.same_padding(6, 3, 2, 1) == (0, 1)
    assert ref.same_padding(7, 4, 1, 1) == (1, 2)
    assert ref.same_padding(3, 1, 5, 1) == (0, 0)
    for n in range(1, 15):
        for k in range(1, 5):
            for s in range(1, 4):
                for d in range(1, 4):
                    before, after = ref.same_padding(n, k, s, d)
                    ho = ref.out_size(n, before, after, k, s, d)
                    assert ho == -(-n // s)
                    assert 0 <= after - before <= 1


def test_reference_col2im_is_adjoint_of_im2col():
    rng = np.random.default_rng(1)
    for layout in LAYOUTS:
        xs = x_shape_of(layout, 2, 3, 7, 8)
        x = rng.standard_normal(xs)
        kw = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), layout=layout)
        cols = ref.im2col(x, (3, 2), **kw)
        c = rng.standard_normal(cols.shape)
        lhs = np.vdot(cols, c)
        rhs = np.vdot(x, ref.col2im(c, xs, (3, 2), **kw))
        assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


# ------------------------------------------------------------------ property tests
@PROPERTY
@given(geometries())
def test_conv2d_matches_reference(g):
    x, w, b = make_conv_inputs(g["seed"], g["layout"], g["dtype"], g["N"], g["C"], g["H"],
                               g["W"], g["K"], g["G"], g["kh"], g["kw"])
    use_bias = g["seed"] % 2 == 0
    y = fastnn.conv2d(x, w, b if use_bias else None, groups=g["G"], **geo_kwargs(g))
    want = ref.conv2d(x, w, b if use_bias else None, groups=g["G"], **geo_kwargs(g))
    abs_want = ref.conv2d(abs(x), abs(w), abs(b) if use_bias else None, groups=g["G"],
                          **geo_kwargs(g))
    assert isinstance(y, np.ndarray)
    assert y.dtype == np.dtype(g["dtype"])
    assert_close(y, want, g["dtype"], "conv2d", abs_want)


@PROPERTY
@given(geometries(min_batch=0))
def test_conv2d_backward_matches_reference(g):
    x, w, _ = make_conv_inputs(g["seed"], g["layout"], g["dtype"], g["N"], g["C"], g["H"],
                               g["W"], g["K"], g["G"], g["kh"], g["kw"])
    y_shape = ref.conv2d(x, w, groups=g["G"], **geo_kwargs(g)).shape
    gy = np.random.default_rng(g["seed"] + 1).standard_normal(y_shape).astype(g["dtype"])
    gx, gw, gb = fastnn.conv2d_backward(gy, x, w, groups=g["G"], **geo_kwargs(g))
    rx, rw, rb = ref.conv2d_backward(gy, x, w, groups=g["G"], **geo_kwargs(g))
    ax, aw, ab = ref.conv2d_backward(abs(gy), abs(x), abs(w), groups=g["G"], **geo_kwargs(g))
    for got in (gx, gw, gb):
        assert got.dtype == np.dtype(g["dtype"])
    assert_close(gx, rx, g["dtype"], "grad_x", ax)
    assert_close(gw, rw, g["dtype"], "grad_weight", aw)
    assert_close(gb, rb, g["dtype"], "grad_bias", ab)


@PROPERTY
@given(geometries(min_batch=0), st.sampled_from(["0", "1"]))
def test_weight_grad_paths_match_reference(g, mode):
    # Both weight-gradient paths on every geometry: the whole-patches product (taken by
    # default for few small images, FASTNN_WG_COLS=1) and the tile reduction (=0).
    x, w, _ = make_conv_inputs(g["seed"], g["layout"], g["dtype"], g["N"], g["C"], g["H"],
                               g["W"], g["K"], g["G"], g["kh"], g["kw"])
    y_shape = ref.conv2d(x, w, groups=g["G"], **geo_kwargs(g)).shape
    gy = np.random.default_rng(g["seed"] + 1).standard_normal(y_shape).astype(g["dtype"])
    old = os.environ.get("FASTNN_WG_COLS")
    os.environ["FASTNN_WG_COLS"] = mode
    try:
        _, gw, _ = fastnn.conv2d_backward(gy, x, w, groups=g["G"], need_input_grad=False,
                                          bias=False, **geo_kwargs(g))
    finally:
        if old is None:
            del os.environ["FASTNN_WG_COLS"]
        else:
            os.environ["FASTNN_WG_COLS"] = old
    _, rw, _ = ref.conv2d_backward(gy, x, w, groups=g["G"], **geo_kwargs(g))
    _, aw, _ = ref.conv2d_backward(abs(gy), abs(x), abs(w), groups=g["G"], **geo_kwargs(g))
    assert gw.dtype == np.dtype(g["dtype"])
    assert_close(gw, rw, g["dtype"], "grad_weight", aw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_small_batch_weight_grad_takes_the_patches_product(monkeypatch, layout, dtype):
    # N1 C40 9x9 (81 pixels, under the measured limit): the whole-patches product, with
    # more weight blocks than threads (NCHW 360 columns in blocks of 128, NHWC 360 rows
    # in blocks of 64) and more pixels than one 64-deep block of the product.
    monkeypatch.delenv("FASTNN_WG_COLS", raising=False)
    calls = []
    kernels = fastnn.conv._K["conv2d_weight_grad_cols"]

    def spy():
        # The kernel is looked up by dtype (no fused dispatch): wrap each entry.
        for key, inner in list(kernels.items()):
            monkeypatch.setitem(kernels, key,
                                lambda *a, inner=inner: calls.append(a[3:8]) or inner(*a))
    spy()
    x, w, _ = make_conv_inputs(3, layout, dtype, 1, 40, 9, 9, 24, 1, 3, 3)
    gy = np.random.default_rng(4).standard_normal(
        ref.conv2d(x, w, padding=1, layout=layout).shape).astype(dtype)

    def grads():
        return fastnn.conv2d_backward(gy, x, w, padding=1, layout=layout)[1]
    assert_thread_count_invariant(grads)
    assert calls and calls[0] == (1, 81, 360, 24, layout == "NHWC")
    want = ref.conv2d_backward(gy, x, w, padding=1, layout=layout)[1]
    assert_close(grads(), want, dtype, "grad_weight")
    # Patches past the size bound take the tile reduction too.
    calls.clear()
    monkeypatch.setattr(fastnn.conv, "_WG_COLS_MAX_PATCHES", 81 * 360 - 1)
    assert_close(grads(), want, dtype, "grad_weight")
    assert not calls
    monkeypatch.undo()
    monkeypatch.delenv("FASTNN_WG_COLS", raising=False)
    spy()
    # Many images take the tile reduction.
    calls.clear()
    xb, wb, _ = make_conv_inputs(5, layout, dtype, 8, 4, 9, 9, 4, 1, 3, 3)
    gyb = np.ones(ref.conv2d(xb, wb, padding=1, layout=layout).shape, dtype)
    fastnn.conv2d_backward(gyb, xb, wb, padding=1, layout=layout)
    assert not calls


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_few_output_channel_weight_grad_over_many_tiles(layout, groups):
    # Kg = 3 output channels per group (fewer than a vector: the gradient is accumulated
    # transposed), 16 x 40 x 40 pixels: many tile items and reduction chunks.
    x, w, _ = make_conv_inputs(13, layout, np.float32, 16, 8, 40, 40, 3 * groups, groups,
                               3, 3)
    gy = np.random.default_rng(14).standard_normal(
        ref.conv2d(x, w, padding=1, groups=groups, layout=layout).shape).astype(np.float32)

    def grad_weight():
        return fastnn.conv2d_backward(gy, x, w, padding=1, groups=groups, layout=layout,
                                      need_input_grad=False, bias=False)[1]
    assert_thread_count_invariant(grad_weight)
    want = ref.conv2d_backward(gy, x, w, padding=1, groups=groups, layout=layout)[1]
    assert_close(grad_weight(), want, np.float32, "grad_weight")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nhwc_bias_grad_blocks(dtype):
    # 2 x 71 x 67 = 9514 rows (three row blocks of the NHWC bias gradient, the last
    # partial) by 21 channels (a full and a partial block of 16), 1..3 threads.
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 71, 67, 3)).astype(dtype)
    w = rng.standard_normal((1, 1, 3, 21)).astype(dtype)
    gy = rng.standard_normal((2, 71, 67, 21)).astype(dtype)

    def grad_bias():
        return fastnn.conv2d_backward(gy, x, w, layout="NHWC", need_input_grad=False,
                                      need_weight_grad=False)[2]
    assert_thread_count_invariant(grad_bias)
    want = gy.astype(np.float64).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(grad_bias(), want, rtol=1e-6 if dtype == np.float32 else 1e-13,
                               atol=1e-6 if dtype == np.float32 else 1e-12)


@PROPERTY
@given(geometries(groups=False))
def test_im2col_matches_reference(g):
    x, _, _ = make_conv_inputs(g["seed"], g["layout"], g["dtype"], g["N"], g["C"], g["H"],
                               g["W"], 1, 1, 1, 1)
    cols = fastnn.im2col(x, (g["kh"], g["kw"]), **geo_kwargs(g))
    want = ref.im2col(x, (g["kh"], g["kw"]), **geo_kwargs(g))
    assert cols.dtype == np.dtype(g["dtype"])
    # im2col only moves numbers: it must be exact in either dtype.
    assert cols.shape == want.shape
    np.testing.assert_array_equal(cols, want.astype(g["dtype"]))


@PROPERTY
@given(geometries(groups=False))
def test_col2im_matches_reference(g):
    xs = x_shape_of(g["layout"], g["N"], g["C"], g["H"], g["W"])
    k = (g["kh"], g["kw"])
    cols_shape = ref.im2col(np.zeros(xs), k, **geo_kwargs(g)).shape
    cols = np.random.default_rng(g["seed"]).standard_normal(cols_shape).astype(g["dtype"])
    got = fastnn.col2im(cols, xs, k, **geo_kwargs(g))
    want = ref.col2im(cols, xs, k, **geo_kwargs(g))
    abs_want = ref.col2im(abs(cols), xs, k, **geo_kwargs(g))
    assert got.dtype == np.dtype(g["dtype"])
    assert_close(got, want, g["dtype"], "col2im", abs_want)


@PROPERTY
@given(geometries(groups=False))
def test_col2im_is_adjoint_of_im2col(g):
    xs = x_shape_of(g["layout"], g["N"], g["C"], g["H"], g["W"])
    k = (g["kh"], g["kw"])
    rng = np.random.default_rng(g["seed"])
    x = rng.standard_normal(xs)
    cols = fastnn.im2col(x, k, **geo_kwargs(g))
    c = rng.standard_normal(cols.shape)
    lhs = np.vdot(cols, c)
    rhs = np.vdot(x, fastnn.col2im(c, xs, k, **geo_kwargs(g)))
    scale = np.linalg.norm(cols) * np.linalg.norm(c) + 1e-300
    assert abs(lhs - rhs) <= 1e-12 * scale


@PROPERTY
@given(bad_geometries())
def test_output_below_one_raises(g):
    layout = g["layout"]
    xs = x_shape_of(layout, g["N"], g["C"], g["H"], g["W"])
    x = np.ones(xs)
    w = np.ones(w_shape_of(layout, g["K"], g["C"], g["kh"], g["kw"]))
    kw = geo_kwargs(g)
    with pytest.raises(ValueError):
        fastnn.conv2d(x, w, **kw)
    gy = np.ones(x_shape_of(layout, g["N"], g["K"], 1, 1))
    with pytest.raises(ValueError):
        fastnn.conv2d_backward(gy, x, w, **kw)
    with pytest.raises(ValueError):
        fastnn.im2col(x, (g["kh"], g["kw"]), **kw)
    cols = np.ones((g["N"], 1, 1))
    with pytest.raises(ValueError):
        fastnn.col2im(cols, xs, (g["kh"], g["kw"]), **kw)


# Geometries where some kernel taps lie entirely in the left/top padding for every
# output pixel of a row (pad > tap offset + (Wo - 1) * stride): an im2col packer that
# zero-fills "up to the first valid column" must not write past the row it fills.
TAPS_IN_PADDING = [
    dict(H=2, W=1, k=(1, 3), padding="same", dilation=(1, 2), stride=1),
    dict(H=2, W=1, k=(1, 2), padding=((0, 0), (2, 0)), dilation=(1, 2), stride=1),
    dict(H=3, W=1, k=(1, 2), padding=((0, 0), (2, 0)), dilation=(1, 2), stride=1),
    dict(H=2, W=2, k=(1, 3), padding=((0, 0), (3, 3)), dilation=(1, 3), stride=(1, 2)),
    dict(H=2, W=3, k=(1, 3), padding=((0, 0), (4, 0)), dilation=(1, 3), stride=1),
    dict(H=1, W=2, k=(3, 1), padding=((6, 0), (0, 0)), dilation=(3, 1), stride=1),
    dict(H=4, W=3, k=(3, 4), padding=((3, 1), (5, 2)), dilation=(2, 3), stride=(1, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", TAPS_IN_PADDING, ids=str)
def test_kernel_taps_entirely_in_padding(case, layout, dtype):
    rng = np.random.default_rng(12)
    N, C, K = 2, 2, 3
    x = rng.uniform(1, 2, x_shape_of(layout, N, C, case["H"], case["W"])).astype(dtype)
    w = rng.standard_normal(w_shape_of(layout, K, C, *case["k"])).astype(dtype)
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
              layout=layout)
    cols = fastnn.im2col(x, case["k"], **kw)
    np.testing.assert_array_equal(cols, ref.im2col(x, case["k"], **kw).astype(dtype))
    y = fastnn.conv2d(x, w, **kw)
    assert_close(y, ref.conv2d(x, w, **kw), dtype, "conv2d")
    gy = rng.standard_normal(y.shape).astype(dtype)
    for got, want, name in zip(fastnn.conv2d_backward(gy, x, w, **kw),
                               ref.conv2d_backward(gy, x, w, **kw),
                               ("grad_x", "grad_weight", "grad_bias")):
        assert_close(got, want, dtype, name)


def test_kernel_exactly_fits_gives_one_pixel():
    x = np.arange(2 * 3 * 5 * 4, dtype=np.float64).reshape(2, 3, 5, 4)
    w = np.ones((2, 3, 3, 2))
    y = fastnn.conv2d(x, w, dilation=2)   # extent 5x3 ... in a 5x4 input: 1x2 output
    assert y.shape == (2, 2, 1, 2)
    assert_close(y, ref.conv2d(x, w, dilation=2), np.float64)


# ------------------------------------------------------------------ finite differences
FD_CASES = [
    dict(layout="NCHW", groups=1, stride=1, padding=1, dilation=1, k=(3, 3)),
    dict(layout="NHWC", groups=1, stride=1, padding=((0, 1), (2, 0)), dilation=(1, 2), k=(2, 3)),
    dict(layout="NCHW", groups=2, stride=2, padding="same", dilation=1, k=(2, 3)),
    dict(layout="NHWC", groups=2, stride=2, padding="same", dilation=1, k=(3, 2)),
    dict(layout="NHWC", groups=4, stride=(2, 1), padding=(1, 0), dilation=1, k=(3, 1)),
]


@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: f"{c['layout']}-g{c['groups']}-s{c['stride']}-p{c['padding']}")
def test_backward_finite_differences(case):
    layout, G = case["layout"], case["groups"]
    kh, kw = case["k"]
    N, C, H, W, K = 2, 4, 5, 6, 4
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape_of(layout, N, C, H, W))
    w = rng.standard_normal(w_shape_of(layout, K, C // G, kh, kw))
    b = rng.standard_normal(K)
    kwargs = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                  groups=G, layout=layout)
    gy = rng.standard_normal(fastnn.conv2d(x, w, b, **kwargs).shape)

    def loss():
        return float(np.sum(fastnn.conv2d(x, w, b, **kwargs) * gy))

    num_x = numeric_grad(loss, x)
    num_w = numeric_grad(loss, w)
    num_b = numeric_grad(loss, b)
    gx, gw, gb = fastnn.conv2d_backward(gy, x, w, **kwargs)
    for got, num, name in ((gx, num_x, "grad_x"), (gw, num_w, "grad_weight"),
                           (gb, num_b, "grad_bias")):
        err = rel_err(got, num)
        assert err < 1e-7, f"{name}: relative error vs finite differences {err:.3g}"


# ------------------------------------------------------------------ PyTorch
@pytest.fixture
def torch_f():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    return torch, F


def _torch_dtype(torch, dtype):
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


TORCH_CASES = [
    dict(k=(3, 3), stride=1, padding=0, dilation=1, groups=1, C=3, K=4),
    dict(k=(3, 2), stride=2, padding=((1, 0), (2, 1)), dilation=1, groups=1, C=4, K=6),
    dict(k=(2, 3), stride=(1, 2), padding=(1, 2), dilation=(2, 1), groups=2, C=4, K=6),
    dict(k=(3, 3), stride=2, padding="same", dilation=1, groups=1, C=3, K=5),
    dict(k=(3, 3), stride=1, padding=2, dilation=2, groups=1, C=2, K=3),
    dict(k=(3, 3), stride=1, padding=1, dilation=1, groups=5, C=5, K=10),   # depthwise
    dict(k=(4, 1), stride=3, padding=(0, 1), dilation=(1, 3), groups=5, C=5, K=5),  # depthwise
    dict(k=(1, 1), stride=1, padding=0, dilation=1, groups=1, C=6, K=3),   # 1x1 fast path
]


def _torch_conv_ref(torch, F, xn, wn, b, case, gy=None):
    """PyTorch forward (and grads) in NCHW/OIHW, asymmetric padding via F.pad."""
    H, W = xn.shape[2:]
    kh, kw = case["k"]
    (pt, pb), (pl, pr) = ref.normalize_padding(case["padding"], (H, W), (kh, kw),
                                               _pair(case["stride"]), _pair(case["dilation"]))
    xt = torch.from_numpy(np.ascontiguousarray(xn)).requires_grad_(True)
    wt = torch.from_numpy(np.ascontiguousarray(wn)).requires_grad_(True)
    bt = torch.from_numpy(b).requires_grad_(True)
    y = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt, bt, stride=case["stride"],
                 dilation=case["dilation"], groups=case["groups"])
    if gy is None:
        return y.detach().numpy()
    y.backward(torch.from_numpy(np.ascontiguousarray(gy)))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: f"k{c['k']}-s{c['stride']}-p{c['padding']}-d{c['dilation']}-g{c['groups']}")
def test_conv2d_and_grads_match_torch(torch_f, case, layout, dtype):
    torch, F = torch_f
    rng = np.random.default_rng(3)
    N, H, W = 2, 9, 8
    C, K, G = case["C"], case["K"], case["groups"]
    xn = rng.standard_normal((N, C, H, W)).astype(dtype)
    wn = rng.standard_normal((K, C // G) + case["k"]).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    kwargs = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                  groups=G, layout=layout)
    x = ref.from_nchw(xn, layout).copy()
    w = ref.weight_from_oihw(wn, layout).copy()
    y = fastnn.conv2d(x, w, b, **kwargs)
    gyn = rng.standard_normal(ref.to_nchw(y, layout).shape).astype(dtype)
    ty, tgx, tgw, tgb = _torch_conv_ref(torch, F, xn, wn, b, case, gyn)
    assert y.dtype == np.dtype(dtype)
    assert_close(ref.to_nchw(y, layout), ty, dtype, "y vs torch")
    gx, gw, gb = fastnn.conv2d_backward(ref.from_nchw(gyn, layout).copy(), x, w, **kwargs)
    assert_close(ref.to_nchw(gx, layout), tgx, dtype, "grad_x vs torch")
    assert_close(ref.weight_to_oihw(gw, layout), tgw, dtype, "grad_weight vs torch")
    assert_close(gb, tgb, dtype, "grad_bias vs torch")


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [(1, 3), (3, 3), (5, 2)])
def test_same_stride1_matches_torch_same(torch_f, k, dtype):
    # torch's own padding="same" (stride 1) puts the odd extra row/column after,
    # like TensorFlow; an independent check of the "same" arithmetic.
    torch, F = torch_f
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    w = rng.standard_normal((4, 3) + k).astype(dtype)
    for d in (1, 2):
        want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding="same",
                        dilation=d).numpy()
        assert_close(fastnn.conv2d(x, w, padding="same", dilation=d), want, dtype, "same")


UNFOLD_CASES = [
    dict(k=(3, 3), stride=1, padding=0, dilation=1),
    dict(k=(2, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(k=(3, 1), stride=3, padding=1, dilation=2),
    dict(k=(4, 4), stride=2, padding=(0, 3), dilation=1),
    dict(k=(1, 1), stride=1, padding=0, dilation=1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", UNFOLD_CASES, ids=str)
def test_im2col_col2im_match_torch_unfold_fold(torch_f, case, layout, dtype):
    torch, F = torch_f
    rng = np.random.default_rng(5)
    N, C, H, W = 2, 3, 9, 10
    xn = rng.standard_normal((N, C, H, W)).astype(dtype)
    kh, kw = case["k"]
    tkw = dict(kernel_size=case["k"], stride=case["stride"], padding=case["padding"],
               dilation=case["dilation"])
    unf = F.unfold(torch.from_numpy(xn), **tkw).numpy()          # (N, C*kh*kw, L)
    L = unf.shape[-1]
    x = ref.from_nchw(xn, layout).copy()
    cols = fastnn.im2col(x, case["k"], stride=case["stride"], padding=case["padding"],
                         dilation=case["dilation"], layout=layout)
    if layout == "NHWC":   # (i, j, c) columns per pixel
        want = unf.reshape(N, C, kh, kw, L).transpose(0, 4, 2, 3, 1).reshape(N, L, -1)
    else:
        want = unf
    np.testing.assert_array_equal(cols, want)

    c_nchw = rng.standard_normal(unf.shape).astype(dtype)
    folded = F.fold(torch.from_numpy(c_nchw), output_size=(H, W), **tkw).numpy()
    if layout == "NHWC":
        c = c_nchw.reshape(N, C, kh, kw, L).transpose(0, 4, 2, 3, 1).reshape(N, L, -1).copy()
    else:
        c = c_nchw
    got = fastnn.col2im(c, x.shape, case["k"], stride=case["stride"],
                        padding=case["padding"], dilation=case["dilation"], layout=layout)
    assert got.dtype == np.dtype(dtype)
    assert_close(ref.to_nchw(got, layout), folded, dtype, "col2im vs fold")


# ------------------------------------------------------------------ flip_kernel
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", ["valid", "full"])
def test_flip_kernel_gives_true_convolution(layout, mode):
    from scipy.signal import convolve2d
    rng = np.random.default_rng(6)
    N, C, H, W, K, kh, kw = 2, 3, 7, 6, 4, 3, 2
    xn = rng.standard_normal((N, C, H, W))
    wn = rng.standard_normal((K, C, kh, kw))
    want = np.zeros((N, K) + convolve2d(xn[0, 0], wn[0, 0], mode=mode).shape)
    for n in range(N):
        for k in range(K):
            for c in range(C):
                want[n, k] += convolve2d(xn[n, c], wn[k, c], mode=mode)
    w = ref.weight_from_oihw(wn, layout).copy()
    w_before = w.copy()
    flipped = fastnn.flip_kernel(w, layout=layout)
    np.testing.assert_array_equal(w, w_before)
    assert flipped.shape == w.shape and not np.shares_memory(flipped, w)
    padding = 0 if mode == "valid" else (kh - 1, kw - 1)
    y = fastnn.conv2d(ref.from_nchw(xn, layout).copy(), flipped, padding=padding, layout=layout)
    assert_close(ref.to_nchw(y, layout), want, np.float64, "true convolution")


def test_flip_kernel_is_180_degree_rotation():
    w = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)
    f = fastnn.flip_kernel(w)
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f, w[:, :, ::-1, ::-1])
    np.testing.assert_array_equal(fastnn.flip_kernel(f), w)
    h = np.moveaxis(w, (0, 1), (3, 2))   # HWIO view
    np.testing.assert_array_equal(fastnn.flip_kernel(h, layout="NHWC"), h[::-1, ::-1])


# ------------------------------------------------------------------ bad input
def _inputs(layout="NCHW", dtype=np.float64, N=2, C=4, H=6, W=5, K=3, G=1, k=(3, 2)):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(x_shape_of(layout, N, C, H, W)).astype(dtype)
    w = rng.standard_normal(w_shape_of(layout, K, C // G, *k)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bad_ranks(layout):
    x, w, b = _inputs(layout)
    y = fastnn.conv2d(x, w, b, layout=layout)
    gy = np.ones_like(y)
    call_raises(ValueError, r"x.*\(6, 5\)|x.*4-D", fastnn.conv2d, x[0], w, layout=layout)
    call_raises(ValueError, r"\bx\b", fastnn.conv2d, x[None], w, layout=layout)
    call_raises(ValueError, r"weight", fastnn.conv2d, x, w[0], layout=layout)
    call_raises(ValueError, r"weight", fastnn.conv2d, x, w[None], layout=layout)
    call_raises(ValueError, r"bias", fastnn.conv2d, x, w, b[:, None], layout=layout)
    call_raises(ValueError, r"bias", fastnn.conv2d, x, w, np.float64(1.0), layout=layout)
    call_raises(ValueError, r"bias.*\(3,\).*\(4,\)|bias.*\(4,\).*\(3,\)", fastnn.conv2d, x, w,
                np.ones(4), layout=layout)
    call_raises(ValueError, r"\bx\b", fastnn.conv2d_backward, gy, x[0], w, layout=layout)
    call_raises(ValueError, r"weight", fastnn.conv2d_backward, gy, x, w[0], layout=layout)
    call_raises(ValueError, r"grad_y", fastnn.conv2d_backward, gy[0], x, w, layout=layout)
    call_raises(ValueError, r"grad_y", fastnn.conv2d_backward, gy[:, :, :-1], x, w,
                layout=layout)
    call_raises(ValueError, r"\bx\b", fastnn.im2col, x[0], 2, layout=layout)
    call_raises(ValueError, r"\bx\b", fastnn.im2col, x[None], 2, layout=layout)
    cols = fastnn.im2col(x, 2, layout=layout)
    call_raises(ValueError, r"cols", fastnn.col2im, cols[0], x.shape, 2, layout=layout)
    call_raises(ValueError, r"cols", fastnn.col2im, cols[:, :-1], x.shape, 2, layout=layout)
    call_raises(ValueError, r"x_shape", fastnn.col2im, cols, x.shape[1:], 2, layout=layout)
    call_raises(ValueError, r"weight", fastnn.flip_kernel, w[0], layout=layout)


def test_shape_error_message_names_argument_and_shapes():
    x, w, b = _inputs()
    info = call_raises(ValueError, "bias", fastnn.conv2d, x, w, np.ones(5))
    assert "(3,)" in str(info.value) and "(5,)" in str(info.value)
    info = call_raises(ValueError, "x", fastnn.conv2d, x[0], w)
    assert str(x[0].shape) in str(info.value)
    gy = np.ones((2, 3, 4, 3))
    info = call_raises(ValueError, "grad_y", fastnn.conv2d_backward, gy, x, w)
    assert "(2, 3, 4, 4)" in str(info.value) and str(gy.shape) in str(info.value)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_channel_mismatch_message(layout):
    x, _, _ = _inputs(layout, C=4)
    w = np.ones(w_shape_of(layout, 3, 3, 3, 2))
    call_raises(ValueError, r"weight has 3 input channels per group, x has 4",
                fastnn.conv2d, x, w, layout=layout)
    call_raises(ValueError, r"weight has 3 input channels per group, x has 4",
                fastnn.conv2d_backward, np.ones((2, 3, 4, 4)), x, w, layout=layout)
    # with groups: C/groups = 2 per group, weight has 4
    w4 = np.ones(w_shape_of(layout, 4, 4, 3, 2))
    call_raises(ValueError, r"weight has 4 input channels per group, x has 2",
                fastnn.conv2d, x, w4, groups=2, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_groups_must_divide_channels(layout):
    x, _, _ = _inputs(layout, C=4)
    w = np.ones(w_shape_of(layout, 3, 1, 3, 2))        # K=3, C/g = 1 for g = 4
    call_raises(ValueError, r"groups", fastnn.conv2d, x, w, groups=4, layout=layout)  # K % 4
    w = np.ones(w_shape_of(layout, 6, 1, 3, 2))
    call_raises(ValueError, r"groups", fastnn.conv2d, x, w, groups=3, layout=layout)  # C % 3
    w = np.ones(w_shape_of(layout, 6, 4, 3, 2))
    for g in (0, -1):
        call_raises(ValueError, r"groups", fastnn.conv2d, x, w, groups=g, layout=layout)
    call_raises(TypeError, r"groups", fastnn.conv2d, x, w, groups=1.0, layout=layout)


@pytest.mark.parametrize("name", ["stride", "dilation"])
@pytest.mark.parametrize("value", [0, -1, (1, 0), (-2, 1)])
def test_stride_dilation_must_be_positive(name, value):
    x, w, b = _inputs()
    kw = {name: value}
    call_raises(ValueError, name, fastnn.conv2d, x, w, b, **kw)
    call_raises(ValueError, name, fastnn.conv2d_backward, np.ones((2, 3, 4, 4)), x, w, **kw)
    call_raises(ValueError, name, fastnn.im2col, x, 2, **kw)
    call_raises(ValueError, name, fastnn.col2im, np.ones((2, 16, 20)), x.shape, 2, **kw)


@pytest.mark.parametrize("padding", [-1, (1, -1), (-1, 0), ((0, -1), (0, 0)),
                                     ((0, 0), (-2, 1))])
def test_negative_padding_raises(padding):
    x, w, b = _inputs()
    call_raises(ValueError, "padding", fastnn.conv2d, x, w, b, padding=padding)
    call_raises(ValueError, "padding", fastnn.im2col, x, 2, padding=padding)
    call_raises(ValueError, "padding", fastnn.col2im, np.ones((2, 16, 20)), x.shape, 2,
                padding=padding)


@pytest.mark.parametrize("padding", ["full", "", "causal", "valid "])
def test_bad_padding_string_raises(padding):
    x, w, b = _inputs()
    call_raises(ValueError, "padding", fastnn.conv2d, x, w, b, padding=padding)
    call_raises(ValueError, "padding", fastnn.im2col, x, 2, padding=padding)


def test_bad_padding_structure_raises():
    x, w, b = _inputs()
    for padding in [(1, 2, 3), ((1, 2, 3), (0, 0)), ((1,), (0, 0))]:
        with pytest.raises((ValueError, TypeError)):
            fastnn.conv2d(x, w, b, padding=padding)


def test_flat_four_sides_padding_names_the_nested_form():
    # padding=(1, 2, 3, 4) reads as four sides (PyTorch's F.pad order differs, so it is
    # refused), and the message shows the nested form that means it.
    x, w, b = _inputs()
    with pytest.raises(ValueError, match=r"\(\(top, bottom\), \(left, right\)\), "
                                         r"e\.g\. padding=\(\(1, 2\), \(3, 4\)\)"):
        fastnn.conv2d(x, w, b, padding=(1, 2, 3, 4))
    y = fastnn.conv2d(x, w, b, padding=((1, 2), (3, 4)))
    assert y.shape[2:] == (x.shape[2] + 3 - w.shape[2] + 1, x.shape[3] + 7 - w.shape[3] + 1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernel_larger_than_padded_input(layout):
    x, _, _ = _inputs(layout, H=3, W=5)
    w = np.ones(w_shape_of(layout, 3, 4, 4, 2))
    call_raises(ValueError, None, fastnn.conv2d, x, w, layout=layout)
    call_raises(ValueError, None, fastnn.im2col, x, (4, 2), layout=layout)
    # dilation makes a 2x2 kernel span 3x3 rows
    call_raises(ValueError, None, fastnn.conv2d, x, np.ones(w_shape_of(layout, 3, 4, 2, 2)),
                dilation=(3, 1), layout=layout)
    # ... but padding rescues it
    y = fastnn.conv2d(x, w, padding=(1, 0), layout=layout)
    assert y.shape == x_shape_of(layout, 2, 3, 2, 4)


BAD_DTYPES = [np.int32, np.int64, np.bool_, np.complex128, np.float16, object]


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_bad_dtypes_raise_type_error_naming_argument(bad):
    x, w, b = _inputs()
    gy = np.ones((2, 3, 4, 4))
    cols = fastnn.im2col(x, 2)
    xb, wb, bb, gyb, colsb = (a.astype(bad) for a in (x, w, b, gy, cols))
    call_raises(TypeError, r"\bx\b", fastnn.conv2d, xb, w, b)
    call_raises(TypeError, r"weight", fastnn.conv2d, x, wb, b)
    call_raises(TypeError, r"bias", fastnn.conv2d, x, w, bb)
    call_raises(TypeError, r"grad_y", fastnn.conv2d_backward, gyb, x, w)
    call_raises(TypeError, r"\bx\b", fastnn.conv2d_backward, gy, xb, w)
    call_raises(TypeError, r"weight", fastnn.conv2d_backward, gy, x, wb)
    call_raises(TypeError, r"\bx\b", fastnn.im2col, xb, 2)
    call_raises(TypeError, r"cols", fastnn.col2im, colsb, x.shape, 2)
    call_raises(TypeError, r"weight", fastnn.flip_kernel, wb)


def test_python_int_lists_raise_type_error():
    call_raises(TypeError, r"\bx\b", fastnn.conv2d, [[[[1, 2], [3, 4]]]], np.ones((1, 1, 1, 1)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bad_out(layout):
    x, w, b = _inputs(layout)
    y_shape = fastnn.conv2d(x, w, b, layout=layout).shape
    sentinel = 12345.0

    def filled(shape, dtype=np.float64):
        return np.full(shape, sentinel, dtype=dtype)

    out = filled(y_shape[:-1] + (y_shape[-1] + 1,))
    call_raises(ValueError, "out", fastnn.conv2d, x, w, b, layout=layout, out=out)
    out = filled(y_shape[1:])
    call_raises(ValueError, "out", fastnn.conv2d, x, w, b, layout=layout, out=out)
    out = filled(y_shape, np.float32)
    call_raises(TypeError, "out", fastnn.conv2d, x, w, b, layout=layout, out=out)
    out = filled(y_shape, np.int64)
    call_raises(TypeError, "out", fastnn.conv2d, x, w, b, layout=layout, out=out)
    out = filled(y_shape)
    out.setflags(write=False)
    call_raises(ValueError, "out", fastnn.conv2d, x, w, b, layout=layout, out=out)
    # float32 inputs: a float64 out is the wrong dtype too (no silent upcast)
    out = filled(y_shape)
    call_raises(TypeError, "out", fastnn.conv2d, x.astype(np.float32), w.astype(np.float32),
                layout=layout, out=out)


@pytest.mark.parametrize("layout", ["NCWH", "CHWN", "NC", "", None, 1])
def test_bad_layout(layout):
    x, w, b = _inputs()
    call_raises(ValueError, "layout", fastnn.conv2d, x, w, b, layout=layout)
    call_raises(ValueError, "layout", fastnn.conv2d_backward, np.ones((2, 3, 4, 4)), x, w,
                layout=layout)
    call_raises(ValueError, "layout", fastnn.im2col, x, 2, layout=layout)
    call_raises(ValueError, "layout", fastnn.col2im, np.ones((2, 16, 20)), x.shape, 2,
                layout=layout)
    call_raises(ValueError, "layout", fastnn.flip_kernel, w, layout=layout)


def test_bad_kernel_size():
    x, _, _ = _inputs()
    for k in (0, (2, 0), -1):
        call_raises(ValueError, "kernel_size", fastnn.im2col, x, k)
        call_raises(ValueError, "kernel_size", fastnn.col2im, np.ones((2, 16, 20)), x.shape, k)
    call_raises(TypeError, "kernel_size", fastnn.im2col, x, 2.0)


# ------------------------------------------------------------------ memory layouts
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_memory_layout_same_result(layout, dtype):
    x, w, b = _inputs(layout, dtype, N=2, C=4, H=7, W=6, K=4, G=2, k=(3, 2))
    kw = dict(stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2), groups=2, layout=layout)
    y = fastnn.conv2d(x, w, b, **kw)
    gy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    grads = fastnn.conv2d_backward(gy, x, w, **kw)
    pk = dict(stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2), layout=layout)
    cols = fastnn.im2col(x, (3, 2), **pk)
    back = fastnn.col2im(cols, x.shape, (3, 2), **pk)
    xs, ws, bs, gys, colss = (memory_variants(a) for a in (x, w, b, gy, cols))
    for name in xs:
        xv, wv, bv, gyv, cv = xs[name], ws[name], bs[name], gys[name], colss[name]
        snap = snapshot([xv, wv, bv, gyv, cv])
        np.testing.assert_array_equal(fastnn.conv2d(xv, wv, bv, **kw), y, err_msg=name)
        for got, want in zip(fastnn.conv2d_backward(gyv, xv, wv, **kw), grads):
            np.testing.assert_array_equal(got, want, err_msg=name)
        np.testing.assert_array_equal(fastnn.im2col(xv, (3, 2), **pk), cols, err_msg=name)
        np.testing.assert_array_equal(fastnn.col2im(cv, x.shape, (3, 2), **pk), back,
                                      err_msg=name)
        for arr, before in snap:
            np.testing.assert_array_equal(arr, before, err_msg=f"{name}: input mutated")


def test_inputs_never_mutated_and_lists_accepted():
    x, w, b = _inputs()
    copies = [a.copy() for a in (x, w, b)]
    y = fastnn.conv2d(x, w, b, padding="same")
    fastnn.conv2d_backward(y, x, w, padding="same")
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)
    y2 = fastnn.conv2d(x.tolist(), w.tolist(), b.tolist(), padding="same")
    assert isinstance(y2, np.ndarray) and y2.dtype == np.float64
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_contiguous_and_non_contiguous(layout):
    x, w, b = _inputs(layout)
    want = fastnn.conv2d(x, w, b, layout=layout)
    out = np.full(want.shape, np.nan)
    res = fastnn.conv2d(x, w, b, layout=layout, out=out)
    assert res is out
    np.testing.assert_array_equal(out, want)
    big = np.full(tuple(2 * s for s in want.shape), -7.0)
    out = big[::2, 1::2, ::-2, 1::2]
    assert not out.flags.c_contiguous
    res = fastnn.conv2d(x, w, b, layout=layout, out=out)
    assert res is out
    np.testing.assert_array_equal(out, want)
    mask = np.ones(big.shape, bool)
    mask[::2, 1::2, ::-2, 1::2] = False
    assert np.all(big[mask] == -7.0), "conv2d wrote outside out"
    outf = np.asfortranarray(np.zeros(want.shape))
    assert fastnn.conv2d(x, w, b, layout=layout, out=outf) is outf
    np.testing.assert_array_equal(outf, want)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_overlapping_input_is_correct_or_refused(layout):
    # 1x1 conv with C == K: out may be x itself, or another view of x's buffer.
    rng = np.random.default_rng(9)
    for how in ("same", "shifted", "weight"):
        buf = rng.standard_normal(2 * 3 * 5 * 4 * 2)
        x = buf[:120].reshape(x_shape_of(layout, 2, 3, 5, 4))
        w = rng.standard_normal(w_shape_of(layout, 3, 3, 1, 1))
        b = rng.standard_normal(3)
        if how == "same":
            out = x
        elif how == "shifted":
            out = buf[7:127].reshape(x.shape)
        else:
            w = buf[:9].reshape(w.shape)
            x = buf[9:129].reshape(x.shape)
            out = buf[5:125].reshape(x.shape)
        x0, w0 = x.copy(), w.copy()
        want = ref.conv2d(x0, w0, b, layout=layout)
        try:
            res = fastnn.conv2d(x, w, b, layout=layout, out=out)
        except ValueError:
            continue   # refused: allowed
        assert res is out
        assert_close(out, want, np.float64, f"overlap {how}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mixed_dtypes_follow_numpy_promotion(layout):
    x, w, b = _inputs(layout)
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    cases = [((x32, w, b), np.float64), ((x, w32, b32), np.float64),
             ((x32, w32, b), np.float64), ((x32, w32, b32), np.float32),
             ((x32, w32, None), np.float32)]
    for (xi, wi, bi), dt in cases:
        y = fastnn.conv2d(xi, wi, bi, layout=layout)
        assert y.dtype == dt
        assert_close(y, ref.conv2d(xi, wi, bi, layout=layout), dt, "mixed")
    y_shape = fastnn.conv2d(x, w, layout=layout).shape
    gy = np.random.default_rng(1).standard_normal(y_shape)
    for args, dt in [((gy, x32, w32), np.float64), ((gy.astype(np.float32), x32, w), np.float64),
                     ((gy.astype(np.float32), x32, w32), np.float32)]:
        grads = fastnn.conv2d_backward(*args, layout=layout)
        want = ref.conv2d_backward(*args, layout=layout)
        for got, r in zip(grads, want):
            assert got.dtype == dt
            assert_close(got, r, dt, "mixed backward")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_stays_float32(layout):
    x, w, b = _inputs(layout, np.float32)
    y = fastnn.conv2d(x, w, b, layout=layout)
    assert y.dtype == np.float32
    for g in fastnn.conv2d_backward(y, x, w, layout=layout):
        assert g.dtype == np.float32
    cols = fastnn.im2col(x, 2, layout=layout)
    assert cols.dtype == np.float32
    assert fastnn.col2im(cols, x.shape, 2, layout=layout).dtype == np.float32
    assert fastnn.flip_kernel(w, layout=layout).dtype == np.float32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_batch(layout, dtype):
    x, w, b = _inputs(layout, dtype, N=0, C=4, H=6, W=5, K=6, G=2, k=(3, 2))
    kw = dict(stride=2, padding=1, groups=2, layout=layout)
    y = fastnn.conv2d(x, w, b, **kw)
    assert y.shape == x_shape_of(layout, 0, 6, 3, 3) and y.dtype == dtype
    out = np.empty(y.shape, dtype)
    assert fastnn.conv2d(x, w, b, out=out, **kw) is out
    cols = fastnn.im2col(x, (3, 2), stride=2, padding=1, layout=layout)
    want_cols = ref.im2col(x, (3, 2), stride=2, padding=1, layout=layout)
    assert cols.shape == want_cols.shape and cols.dtype == dtype
    back = fastnn.col2im(cols, x.shape, (3, 2), stride=2, padding=1, layout=layout)
    assert back.shape == x.shape and back.dtype == dtype


# conv2d_backward on an empty batch runs in a child process: a crash there (a signal)
# must fail this test, not kill the whole pytest run.
_EMPTY_BACKWARD_SCRIPT = r"""
import sys
import numpy as np
import fastnn

layout, dtype = sys.argv[1], np.dtype(sys.argv[2])
cases = [  # (C, H, W, K, groups, (kh, kw), conv kwargs)
    (4, 6, 5, 3 * 2, 2, (3, 2), dict(stride=2, padding=1)),
    (3, 5, 5, 2, 1, (1, 1), dict()),
    (2, 7, 4, 4, 1, (2, 3), dict(padding="same", dilation=2)),
]
for C, H, W, K, G, (kh, kw), extra in cases:
    xs = (0, H, W, C) if layout == "NHWC" else (0, C, H, W)
    ws = (kh, kw, C // G, K) if layout == "NHWC" else (K, C // G, kh, kw)
    x, w = np.zeros(xs, dtype), np.ones(ws, dtype)
    kwargs = dict(groups=G, layout=layout, **extra)
    y = fastnn.conv2d(x, w, **kwargs)
    for need_x, need_w in ((True, False), (False, True), (True, True)):
        print("case", C, H, W, K, G, (kh, kw), extra, "need", need_x, need_w, flush=True)
        gx, gw, gb = fastnn.conv2d_backward(y, x, w, need_input_grad=need_x,
                                            need_weight_grad=need_w, **kwargs)
        if need_x:
            assert gx.shape == x.shape and gx.dtype == dtype, (gx.shape, gx.dtype)
        if need_w:
            assert gw.shape == w.shape and gw.dtype == dtype, (gw.shape, gw.dtype)
            assert np.all(gw == 0), "grad_weight of an empty batch must be 0"
        assert gb.shape == (K,) and gb.dtype == dtype and np.all(gb == 0)
print("OK")
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_empty_batch_isolated(layout, dtype):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", _EMPTY_BACKWARD_SCRIPT, layout, dtype],
                          capture_output=True, text=True, timeout=120)
    last = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    assert proc.returncode == 0 and last == ["OK"], (
        f"conv2d_backward with N=0 failed (exit code {proc.returncode}"
        f"{', signal %d' % -proc.returncode if proc.returncode < 0 else ''}); "
        f"last case: {last}; stderr tail: {proc.stderr[-800:]}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_optional_entries(layout):
    x, w, b = _inputs(layout)
    y = fastnn.conv2d(x, w, b, layout=layout)
    full = fastnn.conv2d_backward(y, x, w, layout=layout)
    gx, gw, gb = fastnn.conv2d_backward(y, x, w, layout=layout, bias=False)
    assert gb is None
    np.testing.assert_array_equal(gx, full[0])
    np.testing.assert_array_equal(gw, full[1])
    gx, gw, gb = fastnn.conv2d_backward(y, x, w, layout=layout, need_input_grad=False)
    assert gx is None
    np.testing.assert_array_equal(gw, full[1])
    np.testing.assert_array_equal(gb, full[2])
    gx, gw, gb = fastnn.conv2d_backward(y, x, w, layout=layout, need_weight_grad=False)
    assert gw is None
    np.testing.assert_array_equal(gx, full[0])
    np.testing.assert_array_equal(gb, full[2])
    assert fastnn.conv2d_backward(y, x, w, layout=layout, bias=False, need_input_grad=False,
                                  need_weight_grad=False) == (None, None, None)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_inf_propagate_like_reference(layout):
    x, w, b = _inputs(layout, H=8, W=7)
    x[(0, 1, 2, 3) if layout == "NCHW" else (0, 2, 3, 1)] = np.nan
    x[(1, 0, 5, 0) if layout == "NCHW" else (1, 5, 0, 0)] = np.inf
    kw = dict(stride=2, padding="same", layout=layout)
    y = fastnn.conv2d(x, w, b, **kw)
    want = ref.conv2d(x, w, b, **kw)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(want))
    finite = np.isfinite(want)
    assert np.isnan(want).any() and finite.any()
    assert_close(y[finite], want[finite], np.float64, "finite part")


# ------------------------------------------------------------------ imports
CONV_NAMES = ["conv2d", "conv2d_backward", "im2col", "col2im", "flip_kernel"]


@pytest.mark.parametrize("name", CONV_NAMES)
def test_top_level_import(name):
    assert callable(getattr(fastnn, name))
    assert getattr(fastnn, name) is getattr(fastnn.conv, name)
    assert name in fastnn.__all__
    ns = {}
    exec(f"from fastnn import {name}; from fastnn.conv import {name} as _m", ns)
    assert ns[name] is ns["_m"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,K,groups,k", [
    (32, 3, 8, 1, 4),     # few output channels: the weight gradient accumulated transposed
    (5, 6, 2, 2, 3),      # grouped, Kg = 1
    (3, 8, 4, 2, 5),
    (2, 1, 1, 1, 1),      # 1x1, one channel
])
def test_weight_gradient_with_few_output_channels(dtype, N, C, K, groups, k):
    rng = np.random.default_rng(N * 100 + C * 10 + K)
    x = rng.standard_normal((N, C, 19, 17))
    w = rng.standard_normal((K, C // groups, k, k))
    kw = dict(padding="same", groups=groups)
    y = ref.conv2d(x, w, **kw)
    gy = rng.standard_normal(y.shape)
    want = ref.conv2d_backward(gy, x, w, **kw)
    args = [a.astype(dtype) for a in (gy, x, w)]
    got = fastnn.conv2d_backward(*args, **kw)
    for g_, w_, name in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        assert_close(g_, w_, dtype, name)
    assert_thread_count_invariant(lambda: fastnn.conv2d_backward(*args, **kw))


def test_memoised_geometry_keeps_refusing_what_it_refused():
    # Validated geometries are memoised on their exact arguments: a bool is not the
    # int it compares equal to, and a call that raised is never remembered.
    x, w, b = _inputs()
    fastnn.conv2d(x, w, b, stride=1, padding=1)
    call_raises(TypeError, "stride", fastnn.conv2d, x, w, b, stride=True, padding=1)
    call_raises(TypeError, "padding", fastnn.conv2d, x, w, b, stride=1, padding=True)
    fastnn.max_pool2d(x, 2, ceil_mode=True)
    call_raises(TypeError, "ceil_mode", fastnn.max_pool2d, x, 2, ceil_mode=1)
    for _ in range(2):
        call_raises(ValueError, "padding", fastnn.conv2d, x, w, b, padding=-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 1, 1, 1), (3, 0, 0, 2), (0, 2, 4, 0),
                                  (2, 5, 1, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_padding_kernel_writes_every_element_once(dtype, nhwc, pads, threads):
    """The zero padding of the implicit-im2col paths (``pad_planes``): every element of
    the result written (the buffer starts as NaN), the image at its offset and zeros
    around it, as NumPy's zeros-and-assign gives; planes large enough for the threaded
    pass too."""
    from fastnn_ext import _conv
    pt, pb, pl, pr = pads
    rng = np.random.default_rng(sum(pads))
    for N, C, H, W in [(2, 3, 5, 7), (4, 64, 17, 9), (1, 1, 1, 1), (3, 2, 0, 4)]:
        shape = (N, H, W, C) if nhwc else (N, C, H, W)
        x = rng.standard_normal(shape).astype(dtype)
        Hp, Wp = H + pt + pb, W + pl + pr
        expect = np.zeros((N, Hp, Wp, C) if nhwc else (N, C, Hp, Wp), dtype=dtype)
        if nhwc:
            expect[:, pt:pt + H, pl:pl + W, :] = x
        else:
            expect[:, :, pt:pt + H, pl:pl + W] = x
        got = np.full(expect.shape, np.nan, dtype=dtype)
        planes, inner = (N, C) if nhwc else (N * C, 1)
        _conv.pad_planes(x.reshape(-1), got.reshape(-1), planes, H, W, inner, pt, pl, Hp, Wp,
                         threads)
        np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("shape", [(1, 256, 6, 5, 96), (2, 64, 9, 7, 70), (1, 120, 5, 6, 130)])
def test_deep_products_with_bias_and_channel_blocks(dtype, layout, shape):
    """Reductions over more than one chunk of the register-blocked kernel (C*kh*kw of
    576 to 2304 against chunks of 512: the bias must be added once), and NHWC weights
    large enough to be split in blocks of output channels (3x3x256x96 and 3x3x120x130
    past 512 KiB in float64), partial panels included (K = 70, 130), forward and
    backward against the float64 reference, the same bits on 1 to 3 threads."""
    N, C, H, W, K = shape
    rng = np.random.default_rng(C + K)
    nhwc = layout == "NHWC"
    x = rng.standard_normal((N, H, W, C) if nhwc else (N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((3, 3, C, K) if nhwc else (K, C, 3, 3)) / C).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    for padding in (1, 0):
        with fastnn.threads(1):
            y = fastnn.conv2d(x, w, b, padding=padding, layout=layout)
        assert_close(y, ref.conv2d(x, w, b, padding=padding, layout=layout), dtype,
                     f"forward padding={padding}")
        assert_thread_count_invariant(
            lambda: (fastnn.conv2d(x, w, b, padding=padding, layout=layout),))
        gy = rng.standard_normal(y.shape).astype(dtype)
        got = fastnn.conv2d_backward(gy, x, w, padding=padding, layout=layout)
        want = ref.conv2d_backward(gy, x, w, padding=padding, layout=layout)
        for g, r, name in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
            assert_close(g, r, dtype, f"{name} padding={padding}")
        assert_thread_count_invariant(
            lambda: fastnn.conv2d_backward(gy, x, w, padding=padding, layout=layout))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("groups, kg, cg, kh, kw", [(1, 3, 5, 3, 3), (2, 40, 33, 3, 2),
                                                    (3, 1, 70, 1, 5), (1, 256, 64, 3, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_flipped_transposed_kernel_of_the_input_gradient(dtype, nhwc, groups, kg, cg, kh, kw,
                                                         threads):
    """The kernel grad_x convolves with (``flip_kernel_transposed``): taps reversed and
    the channel axes swapped within each group, every element written (the buffer
    starts as NaN), against NumPy's flip and transpose; blocks of channels that do not
    divide them included."""
    from fastnn_ext import _conv
    rng = np.random.default_rng(kg * cg)
    G = groups
    if nhwc:
        w = rng.standard_normal((kh, kw, cg, G * kg)).astype(dtype)
        expect = w[::-1, ::-1].reshape(kh, kw, cg, G, kg).transpose(0, 1, 4, 3, 2)
        expect = expect.reshape(kh, kw, kg, G * cg)
    else:
        w = rng.standard_normal((G * kg, cg, kh, kw)).astype(dtype)
        expect = w[:, :, ::-1, ::-1].reshape(G, kg, cg, kh, kw).transpose(0, 2, 1, 3, 4)
        expect = expect.reshape(G * cg, kg, kh, kw)
    got = np.full(expect.shape, np.nan, dtype=dtype)
    _conv.flip_kernel_transposed(w.reshape(-1), got.reshape(-1), G, kg, cg, kh * kw, nhwc,
                                 threads)
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("stride", [(2, 2), (3, 2), (1, 3), (4, 4)])
@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 2, 1, 0), (3, 3, 3, 3), (0, 5, 2, 1)])
def test_stride_phases_of_the_padded_image_in_one_pass(dtype, nhwc, stride, pads):
    """``split_planes`` (the phase split of strided convolutions): every element written
    (the buffer starts as NaN) and equal to NumPy's pad, reshape and transpose, with
    phase columns that start or end inside the padding."""
    from fastnn_ext import _conv
    sh, sw = stride
    pt, pl, pb, pr = pads
    rng = np.random.default_rng(sh * 10 + sw)
    for N, C, H, W in [(2, 3, 9, 11), (3, 1, 7, 2), (1, 64, 30, 31)]:
        Hq, Wq = -(-(H + pt + pb) // sh), -(-(W + pl + pr) // sw)
        x = rng.standard_normal((N, H, W, C) if nhwc else (N, C, H, W)).astype(dtype)
        if nhwc:
            xp = np.zeros((N, Hq * sh, Wq * sw, C), dtype)
            xp[:, pt:pt + H, pl:pl + W] = x
            expect = xp.reshape(N, Hq, sh, Wq, sw, C).transpose(0, 2, 4, 1, 3, 5)
        else:
            xp = np.zeros((N, C, Hq * sh, Wq * sw), dtype)
            xp[:, :, pt:pt + H, pl:pl + W] = x
            expect = xp.reshape(N, C, Hq, sh, Wq, sw).transpose(0, 1, 3, 5, 2, 4)
        got = np.full(expect.shape, np.nan, dtype)
        planes, inner = (N, C) if nhwc else (N * C, 1)
        _conv.split_planes(x.reshape(-1), got.reshape(-1), planes, H, W, inner, pt, pl, sh, sw,
                           Hq, Wq, 2)
        np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("W, padding, dilation", [(32, 1, 1), (64, 0, 1), (66, 0, 1), (36, 0, 2)])
def test_nchw_rows_a_whole_number_of_panels_wide(dtype, groups, W, padding, dilation):
    """NCHW outputs whose rows are a multiple of 32 pixels wide are computed one row per
    product straight into y (no tile copy): against the float64 reference with a bias
    and groups, rows of 32 and 64 pixels (dilation 2 included) and of 62 (the tile
    path) side by side, the same bits on 1 to 3 threads."""
    rng = np.random.default_rng(W + groups)
    N, C, H, K = 2, 4 * groups, 5, 6 * groups
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    kw = dict(padding=padding, dilation=dilation, groups=groups)
    y = fastnn.conv2d(x, w, b, **kw)
    assert_close(y, ref.conv2d(x, w, b, **kw), dtype, "forward")
    assert_thread_count_invariant(lambda: (fastnn.conv2d(x, w, b, **kw),))
    gy = rng.standard_normal(y.shape).astype(dtype)
    got = fastnn.conv2d_backward(gy, x, w, **kw)
    for g, r, name in zip(got, ref.conv2d_backward(gy, x, w, **kw),
                          ("grad_x", "grad_weight", "grad_bias")):
        assert_close(g, r, dtype, name)
