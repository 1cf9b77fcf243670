"""Tests of fastnn.conv_transpose2d / conv_transpose2d_backward (PyTorch semantics).

Against the float64 scatter references of tests/reference.py, finite differences
and torch.nn.functional.conv_transpose2d (where installed), plus the bad-input and
memory-layout rules of SPEC.md.
"""
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


def w_shape_of(layout, Cin, Cog, kh, kw):
    """NCHW: (C_in, C_out/g, kh, kw); NHWC: (kh, kw, C_out/g, C_in)."""
    return (kh, kw, Cog, Cin) if layout == "NHWC" else (Cin, Cog, kh, kw)


def pads_of(padding, H, W, k, s, d):
    """((top, bottom), (left, right)); "same" is TensorFlow's: output = input * stride."""
    if padding == "same":
        return ref.normalize_padding("same", (H * s[0], W * s[1]), k, s, d)
    return ref.normalize_padding(padding, (H, W), k, s, d)


@st.composite
def geometries(draw):
    G = draw(st.sampled_from([1, 1, 2, 3]))
    k = draw(int_pairs(1, 4))
    s = draw(int_pairs(1, 3))
    d = draw(int_pairs(1, 2))
    padding = draw(paddings_2d(3))
    op = (0, 0) if padding == "same" else tuple(
        draw(st.integers(0, max(s[a], d[a]) - 1)) for a in range(2))
    H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    pads = pads_of(padding, H, W, k, s, d)
    out = tuple((n - 1) * s[a] - sum(pads[a]) + d[a] * (k[a] - 1) + op[a] + 1
                for a, n in enumerate((H, W)))
    assume(min(out) >= 1)
    # TensorFlow's "same" output is H * stride, beyond the kernel's reach when k < stride:
    # for the reference that is output padding.
    ref_op = tuple(n * s[a] - out[a] for a, n in enumerate((H, W))) if padding == "same" else op
    return dict(N=draw(st.integers(0, 2)), Cin=G * draw(st.integers(1, 3)),
                Cog=draw(st.integers(1, 3)), G=G, H=H, W=W, k=k, stride=s, dilation=d,
                padding=padding, pads=pads, output_padding=op, ref_output_padding=ref_op,
                layout=draw(st.sampled_from(LAYOUTS)), dtype=draw(st.sampled_from(DTYPES)),
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))


def make_inputs(g):
    rng = np.random.default_rng(g["seed"])
    dt = g["dtype"]
    x = rng.standard_normal(x_shape_of(g["layout"], g["N"], g["Cin"], g["H"], g["W"])).astype(dt)
    w = rng.standard_normal(w_shape_of(g["layout"], g["Cin"], g["Cog"], *g["k"])).astype(dt)
    b = rng.standard_normal(g["Cog"] * g["G"]).astype(dt) if g["bias"] else None
    return x, w, b


def kwargs_of(g):
    return dict(stride=g["stride"], padding=g["padding"], output_padding=g["output_padding"],
                dilation=g["dilation"], groups=g["G"], layout=g["layout"])


def ref_kwargs(g):
    return dict(stride=g["stride"], pads=g["pads"], output_padding=g["ref_output_padding"],
                dilation=g["dilation"], groups=g["G"], layout=g["layout"])


# ------------------------------------------------------------------ the reference itself
def test_reference_is_the_adjoint_of_conv2d_reference():
    """<conv_transpose2d(x), y> == <x, conv2d(y)> with the same weight and geometry."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 4, 5))          # C_in = 6 = conv2d's output channels
    w = rng.standard_normal((6, 2, 3, 2))          # (C_in, C_out/g, kh, kw), groups 3
    geo = dict(stride=(2, 3), dilation=(1, 2), groups=3)
    pads = ((1, 1), (2, 2))
    yt = ref.conv_transpose2d(x, w, pads=pads, output_padding=(1, 2), **geo)
    v = rng.standard_normal(yt.shape)
    # output_padding comes off the bottom/right padding of the conv2d that maps v back.
    y2 = ref.conv2d_naive(v, w, padding=((1, 0), (2, 0)), **geo)
    assert y2.shape == x.shape
    np.testing.assert_allclose(np.vdot(yt, v), np.vdot(x, y2), rtol=1e-12)


# ------------------------------------------------------------------ property tests
@PROPERTY
@given(geometries())
def test_conv_transpose2d_and_backward_match_reference(g):
    x, w, b = make_inputs(g)
    snap = snapshot([x, w, b])
    dt = g["dtype"]
    y = fastnn.conv_transpose2d(x, w, b, **kwargs_of(g))
    want = ref.conv_transpose2d(x, w, b, **ref_kwargs(g))
    assert y.dtype == np.dtype(dt)
    assert_close(y, want, dt, "y", abs_want=ref.conv_transpose2d(abs(x), abs(w), **ref_kwargs(g)))
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dt)
    gx, gw, gb = fastnn.conv_transpose2d_backward(gy, x, w, bias=g["bias"], **kwargs_of(g))
    rx, rw, rb = ref.conv_transpose2d_backward(gy, x, w, **ref_kwargs(g))
    ax, aw, ab = ref.conv_transpose2d_backward(abs(gy), abs(x), abs(w), **ref_kwargs(g))
    assert_close(gx, rx, dt, "grad_x", abs_want=ax)
    assert_close(gw, rw, dt, "grad_weight", abs_want=aw)
    if g["bias"]:
        assert_close(gb, rb, dt, "grad_bias", abs_want=ab)
    else:
        assert gb is None
    for arr, before in snap:
        np.testing.assert_array_equal(arr, before)


# ------------------------------------------------------------------ finite differences
FD_CASES = [
    dict(layout="NCHW", stride=2, padding=1, output_padding=1, dilation=1, groups=1, k=(3, 3)),
    dict(layout="NHWC", stride=(1, 2), padding=((0, 2), (1, 0)), output_padding=0,
         dilation=(2, 1), groups=2, k=(2, 3)),
    dict(layout="NCHW", stride=1, padding=0, output_padding=(1, 0), dilation=2, groups=2,
         k=(2, 2)),
    dict(layout="NHWC", stride=2, padding="same", output_padding=0, dilation=1, groups=1,
         k=(4, 4)),
]


@pytest.mark.parametrize("case", FD_CASES, ids=str)
def test_backward_finite_differences(case):
    case = dict(case)
    layout, k = case["layout"], case.pop("k")
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape_of(layout, 2, 4, 3, 4))
    w = rng.standard_normal(w_shape_of(layout, 4, 2, *k))
    b = rng.standard_normal(2 * case["groups"])
    gy = rng.standard_normal(fastnn.conv_transpose2d(x, w, b, **case).shape)

    assert_finite_difference_grads(lambda: fastnn.conv_transpose2d(x, w, b, **case),
                                   fastnn.conv_transpose2d_backward(gy, x, w, **case), (x, w, b),
                                   ("grad_x", "grad_weight", "grad_bias"), gy)


# ------------------------------------------------------------------ PyTorch
TORCH_CASES = [
    dict(stride=1, padding=0, output_padding=0, dilation=1, groups=1, k=(3, 3)),
    dict(stride=2, padding=1, output_padding=1, dilation=1, groups=1, k=(4, 4)),
    dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), dilation=1, groups=2, k=(3, 2)),
    dict(stride=1, padding=2, output_padding=1, dilation=2, groups=1, k=(3, 3)),
    dict(stride=3, padding=0, output_padding=2, dilation=(1, 2), groups=4, k=(2, 3)),
    dict(stride=2, padding=0, output_padding=0, dilation=1, groups=1, k=(1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_conv_transpose2d_and_grads_match_torch(case, layout, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    case = dict(case)
    k = case.pop("k")
    rng = np.random.default_rng(3)
    G = case["groups"]
    x = rng.standard_normal((2, 8, 5, 6)).astype(dtype)
    w = rng.standard_normal((8, 12 // G) + k).astype(dtype)
    b = rng.standard_normal(12).astype(dtype)
    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    yt = F.conv_transpose2d(xt, wt, bt, **case)
    gy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.from_numpy(gy))
    xl, wl, gyl = x, w, gy
    if layout == "NHWC":
        xl, wl, gyl = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), gy.transpose(0, 2, 3, 1)
    y = fastnn.conv_transpose2d(xl, wl, b, layout=layout, **case)
    gx, gw, gb = fastnn.conv_transpose2d_backward(gyl, xl, wl, layout=layout, **case)
    if layout == "NHWC":
        y, gx, gw = y.transpose(0, 3, 1, 2), gx.transpose(0, 3, 1, 2), gw.transpose(3, 2, 0, 1)
    assert_close(y, yt.detach().numpy(), dtype, "y vs torch")
    assert_close(gx, xt.grad.numpy(), dtype, "grad_x vs torch")
    assert_close(gw, wt.grad.numpy(), dtype, "grad_weight vs torch")
    assert_close(gb, bt.grad.numpy(), dtype, "grad_bias vs torch")


# ------------------------------------------------------------------ behaviour
@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_padding_multiplies_size_by_stride(layout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape_of(layout, 1, 2, 5, 7))
    w = rng.standard_normal(w_shape_of(layout, 2, 3, 3, 4))
    y = fastnn.conv_transpose2d(x, w, stride=(2, 3), padding="same", layout=layout)
    assert y.shape == x_shape_of(layout, 1, 3, 10, 21)
    # It is the adjoint of the 'same' conv2d on the output: <T x, v> == <x, conv2d(v)>.
    v = rng.standard_normal(y.shape)
    back = fastnn.conv2d(v, w, stride=(2, 3), padding="same", layout=layout)
    np.testing.assert_allclose(np.vdot(y, v), np.vdot(x, back), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_memory_layout_same_result(layout, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape_of(layout, 2, 4, 5, 4)).astype(dtype)
    w = rng.standard_normal(w_shape_of(layout, 4, 3, 3, 2)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    kw = dict(stride=2, padding=(1, 0), output_padding=1, groups=2, layout=layout)
    y = fastnn.conv_transpose2d(x, w, b, **kw)
    gy = rng.standard_normal(y.shape).astype(dtype)
    grads = fastnn.conv_transpose2d_backward(gy, x, w, **kw)
    xs, ws, bs, gys = (memory_variants(a) for a in (x, w, b, gy))
    for name in xs:
        np.testing.assert_array_equal(fastnn.conv_transpose2d(xs[name], ws[name], bs[name], **kw),
                                      y, err_msg=name)
        for a, r in zip(fastnn.conv_transpose2d_backward(gys[name], xs[name], ws[name], **kw),
                        grads):
            np.testing.assert_array_equal(a, r, err_msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_buffer_empty_batch_and_promotion(layout):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape_of(layout, 2, 4, 3, 3)).astype(np.float32)
    w = rng.standard_normal(w_shape_of(layout, 4, 2, 4, 4)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    kw = dict(stride=2, padding=1, layout=layout)
    want = fastnn.conv_transpose2d(x, w, b, **kw)
    assert want.shape == x_shape_of(layout, 2, 2, 6, 6) and want.dtype == np.float32
    out = np.full(want.shape, np.nan, np.float32)
    assert fastnn.conv_transpose2d(x, w, b, out=out, **kw) is out
    np.testing.assert_array_equal(out, want)
    view = np.full((2,) + want.shape, np.nan, np.float32)[1]
    view = np.swapaxes(np.swapaxes(view, 1, 2).copy(), 1, 2)        # non-contiguous
    assert fastnn.conv_transpose2d(x, w, b, out=view, **kw) is view
    np.testing.assert_array_equal(view, want)
    call_raises(ValueError, r"conv_transpose2d: out has shape", fastnn.conv_transpose2d,
                x, w, b, out=out[:1], **kw)
    call_raises(TypeError, r"conv_transpose2d: out has dtype", fastnn.conv_transpose2d,
                x, w, b, out=out.astype(np.float64), **kw)
    y64 = fastnn.conv_transpose2d(x, w.astype(np.float64), b, **kw)
    assert y64.dtype == np.float64
    empty = fastnn.conv_transpose2d(x[:0], w, b, **kw)
    assert empty.shape == (0,) + want.shape[1:]
    gx, gw, gb = fastnn.conv_transpose2d_backward(empty, x[:0], w, **kw)
    assert gx.shape == x[:0].shape and gw.shape == w.shape and not gw.any() and not gb.any()


def test_output_rows_beyond_every_input_are_bias_only():
    # stride 1, dilation 3: output_padding 2 adds rows that no input pixel reaches.
    x = np.ones((1, 1, 2, 2))
    w = np.ones((1, 1, 2, 2))
    y = fastnn.conv_transpose2d(x, w, np.array([0.5]), dilation=3, output_padding=2)
    want = ref.conv_transpose2d(x, w, np.array([0.5]), dilation=3, output_padding=2)
    assert y.shape == (1, 1, 7, 7)
    np.testing.assert_array_equal(y, want)
    assert (y[0, 0, 5:] == 0.5).all() and (y[0, 0, :, 5:] == 0.5).all()
    gx, gw, _ = fastnn.conv_transpose2d_backward(np.ones_like(y), x, w, dilation=3,
                                                 output_padding=2)
    rx, rw, _ = ref.conv_transpose2d_backward(np.ones_like(y), x, w, dilation=3, output_padding=2)
    np.testing.assert_array_equal(gx, rx)
    np.testing.assert_array_equal(gw, rw)


def test_nan_inf_propagate_like_reference():
    x = np.ones((1, 2, 3, 3))
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 0, 2] = np.inf
    w = np.random.default_rng(0).standard_normal((2, 1, 2, 2))
    y = fastnn.conv_transpose2d(x, w, stride=2)
    want = ref.conv_transpose2d(x, w, stride=2)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    fin = np.isfinite(want)
    np.testing.assert_array_equal(np.isinf(y), np.isinf(want))
    np.testing.assert_allclose(y[fin], want[fin], rtol=1e-12)


def test_thread_count_does_not_change_bits():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 16, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 8, 4, 4)).astype(np.float32)
    kw = dict(stride=2, padding=1)
    gy = rng.standard_normal((4, 8, 28, 28)).astype(np.float32)
    assert_thread_count_invariant(lambda: (fastnn.conv_transpose2d(x, w, **kw),)
                                  + fastnn.conv_transpose2d_backward(gy, x, w, **kw))


# ------------------------------------------------------------------ stride-phase path
PHASE_CASES = [  # N, C_in, H, W, C_out, groups, k, stride, padding, output_padding
    (2, 24, 9, 7, 40, 1, (4, 4), 2, 1, 0),          # NHWC: the channel-vectorised kernel
    (2, 6, 9, 7, 10, 2, (3, 5), (2, 3), (1, 2), (1, 2)),   # NHWC: few outputs per group
    (3, 4, 5, 6, 3, 1, (3, 3), 3, 0, 2),            # rows beyond every input: bias only
    (1, 9, 4, 4, 6, 3, (2, 2), 2, "same", 0),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", PHASE_CASES, ids=str)
def test_stride_phase_path_matches_reference_and_thread_counts(case, layout, monkeypatch):
    """kernel >= stride, dilation 1: one stride-1 convolution per stride phase written
    into the interleaved output (conv._phase_forward), against the float64 scatter
    reference and bitwise the same for 1, 2 and 3 threads."""
    from fastnn import conv
    N, Cin, H, W, Cout, G, k, s, p, op = case
    taken = []
    real = conv._phase_forward
    monkeypatch.setattr(conv, "_phase_forward", lambda *a: taken.append(real(*a)) or taken[-1])
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape_of(layout, N, Cin, H, W))
    w = rng.standard_normal(w_shape_of(layout, Cin, Cout // G, *k))
    b = rng.standard_normal(Cout)
    kw = dict(stride=s, padding=p, output_padding=op, groups=G, layout=layout)
    ss = (s, s) if isinstance(s, int) else s
    want = ref.conv_transpose2d(x, w, b, stride=s, groups=G, layout=layout,
                                pads=pads_of(p, H, W, k, ss, (1, 1)),
                                output_padding=op if p != "same" else 0)
    for dt in DTYPES:
        y = fastnn.conv_transpose2d(x.astype(dt), w.astype(dt), b.astype(dt), **kw)
        assert_close(y, want, dt, "y", abs_want=ref.conv_transpose2d(
            abs(x), abs(w), stride=s, groups=G, layout=layout,
            pads=pads_of(p, H, W, k, ss, (1, 1)), output_padding=op if p != "same" else 0))
    assert taken and all(taken), taken
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    assert_thread_count_invariant(lambda: fastnn.conv_transpose2d(x32, w32, **kw))


def test_column_path_where_phases_do_not_apply(monkeypatch):
    """Stride larger than the kernel, dilation, and a weight holding NaN or Inf take
    the GEMM + col2im path (the phases would multiply padding by every tap: a NaN
    weight must not reach outputs that no input reaches)."""
    from fastnn import conv
    taken = []
    real = conv._phase_forward
    monkeypatch.setattr(conv, "_phase_forward", lambda *a: taken.append(real(*a)) or taken[-1])
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 4, 5))
    for w, kw in ((rng.standard_normal((3, 2, 2, 2)), dict(stride=3)),
                  (rng.standard_normal((3, 2, 3, 3)), dict(stride=2, dilation=2)),
                  (rng.standard_normal((3, 2, 3, 3)), dict(stride=2, output_padding=1))):
        w[0, 0, 0, 0] = np.nan if "output_padding" in kw else w[0, 0, 0, 0]
        taken.clear()
        y = fastnn.conv_transpose2d(x, w, **kw)
        want = ref.conv_transpose2d(x, w, **kw)
        assert taken == [False]
        np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
        np.testing.assert_allclose(y[~np.isnan(y)], want[~np.isnan(want)], rtol=1e-12,
                                   atol=1e-12)
    # The NaN weight reaches every output an input reaches, but not the last row and
    # column, which only output_padding adds.
    assert np.isnan(y[:, :, :-1, :-1]).any() and not np.isnan(y[:, :, -1, :]).any()


# ------------------------------------------------------------------ bad input
def test_bad_input_messages_name_the_argument():
    f = fastnn.conv_transpose2d
    x = np.zeros((2, 4, 5, 5))
    w = np.zeros((4, 3, 3, 3))
    call_raises(ValueError, r"conv_transpose2d: x must be 4-D \(layout NCHW: N, C_in, H, W\)",
                f, x[0], w)
    call_raises(ValueError, r"conv_transpose2d: weight must be 4-D \(layout NHWC: kh, kw, "
                r"C_out/groups, C_in\)", f, x, w[0], layout="NHWC")
    call_raises(ValueError, r"conv_transpose2d: weight has 5 input channels, x has 4",
                f, x, np.zeros((5, 3, 3, 3)))
    call_raises(ValueError, r"conv_transpose2d: groups=3 does not divide the 4 input channels",
                f, x, w, groups=3)
    call_raises(ValueError, r"conv_transpose2d: output_padding must be smaller than stride or "
                r"dilation along the height", f, x, w, stride=(2, 1), output_padding=(2, 0))
    call_raises(ValueError, r"conv_transpose2d: output_padding must be >= 0", f, x, w,
                output_padding=-1)
    call_raises(ValueError, r"conv_transpose2d: output_padding must be 0 with padding='same'",
                f, x, w, stride=2, padding="same", output_padding=1)
    call_raises(ValueError, r"conv_transpose2d: padding must be >= 0", f, x, w, padding=-1)
    call_raises(ValueError, r"conv_transpose2d: padding 9 leaves an output of -11x-11",
                f, x, w, padding=9)
    call_raises(ValueError, r"conv_transpose2d: bias must have shape \(3,\)", f, x, w,
                np.zeros(4))
    call_raises(ValueError, r"conv_transpose2d: layout must be one of NCHW, NHWC", f, x, w,
                layout="NCW")
    call_raises(TypeError, r"conv_transpose2d: weight must have dtype float32 or float64",
                f, x, w.astype(np.float16))
    call_raises(ValueError, r"conv_transpose2d_backward: grad_y must have the output shape "
                r"\(2, 3, 7, 7\) \(layout NCHW\), got \(2, 3, 7, 8\)",
                fastnn.conv_transpose2d_backward, np.zeros((2, 3, 7, 8)), x, w)
