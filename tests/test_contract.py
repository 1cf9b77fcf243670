"""The contract of SPEC.md's general rules, checked over the whole public API.

One registry (``CASES``) holds every public array function with a way to build sample
inputs from a few sizes, and (where tests/reference.py has one) its float64
reference. Generic tests then run over all of it, in the style of PyTorch's OpInfo:

* bad dtypes (int, bool, complex, float16, object) and bad ranks raise an error
  naming the argument and leave the inputs and ``out`` untouched;
* byte-swapped, strided, negative-stride, Fortran-order, read-only, unaligned and
  memory-mapped inputs give the same bits as C-contiguous ones;
* every size set to 0 in turn gives the reference's result (or a ValueError);
* NaN and Inf propagate as in the reference;
* huge-but-valid geometry (a stride of 10**9) gives the result of the small problem
  it is equivalent to.
"""
import inspect

import numpy as np
import pytest

import fastnn
import reference as ref
from fastnn import convert
from helpers import assert_close

# ------------------------------------------------------------------ the registry


class Case:
    """One public function.

    ``make(rng, dt, d)`` returns ``(inputs, static)``: the array (and other) arguments
    by parameter name, built from the sizes ``d`` (a copy of ``dims``), and the fixed
    keyword arguments. ``floats`` name the float array arguments (the dtype rules),
    ``arrays`` every array argument (default ``floats``; masks and labels too).
    ``ref(inputs, static)`` gives the float64 reference results (a tuple), or None.
    ``ranks``: arguments for which one more axis is an error. ``out``: names of the
    result-buffer arguments, with ``out_shapes(result)``. ``huge``: pairs of size
    overrides ``(huge, small)`` whose problems are the same.
    """

    def __init__(self, name, fn, dims, make, floats, ref=None, arrays=None, ranks=None,
                 out=(), huge=(), results=None):
        self.name, self.fn, self.dims, self._make, self.floats = name, fn, dims, make, floats
        self.ref, self.arrays = ref, tuple(arrays or floats)
        self.ranks = tuple(floats if ranks is None else ranks)
        self.out, self.huge, self.results = tuple(out), tuple(huge), results

    def make(self, dt=np.float64, seed=0, **sizes):
        d = dict(self.dims, **sizes)
        return self._make(np.random.default_rng(seed), dt, d)

    def call(self, inputs, static):
        return self.fn(**inputs, **static)

    def __repr__(self):
        return self.name


def _r(rng, dt, *shape):
    return rng.standard_normal(shape).astype(dt)


def _conv_out(size, k, s=1, p=0, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


CASES = []


def case(*args, **kwargs):
    CASES.append(Case(*args, **kwargs))


# ---- convolution
_CONV = dict(N=2, C=3, H=5, W=6, K=4, stride=1)


def _conv_make(rng, dt, d):
    x = _r(rng, dt, d["N"], d["C"], d["H"], d["W"])
    w = _r(rng, dt, d["K"], d["C"], 2, 3)
    return dict(x=x, weight=w, bias=_r(rng, dt, d["K"])), dict(padding=1, stride=d["stride"])


def _conv_bwd_make(rng, dt, d):
    inputs, static = _conv_make(rng, dt, d)
    ho, wo = (_conv_out(d["H"], 2, d["stride"], 1), _conv_out(d["W"], 3, d["stride"], 1))
    del inputs["bias"]
    return dict(grad_y=_r(rng, dt, d["N"], d["K"], ho, wo), **inputs), static


_HUGE_STRIDE = (dict(stride=10 ** 9), dict(stride=9))   # both leave one window per axis
case("conv2d", fastnn.conv2d, _CONV, _conv_make, ("x", "weight", "bias"),
     ref=lambda i, s: (ref.conv2d(i["x"], i["weight"], i["bias"], **s),),
     ranks=("x", "weight", "bias"), out=("out",), huge=(_HUGE_STRIDE,))
case("conv2d_backward", fastnn.conv2d_backward, _CONV, _conv_bwd_make,
     ("grad_y", "x", "weight"),
     ref=lambda i, s: ref.conv2d_backward(i["grad_y"], i["x"], i["weight"], **s),
     huge=(_HUGE_STRIDE,))


def _conv1d_make(rng, dt, d):
    x = _r(rng, dt, d["N"], d["C"], d["W"])
    return (dict(x=x, weight=_r(rng, dt, d["K"], d["C"], 3), bias=_r(rng, dt, d["K"])),
            dict(padding=1, stride=d["stride"]))


def _conv1d_bwd_make(rng, dt, d):
    inputs, static = _conv1d_make(rng, dt, d)
    del inputs["bias"]
    gy = _r(rng, dt, d["N"], d["K"], _conv_out(d["W"], 3, d["stride"], 1))
    return dict(grad_y=gy, **inputs), static


def _pads1(s):
    return dict(s, padding=(s["padding"], s["padding"]))


case("conv1d", fastnn.conv1d, _CONV, _conv1d_make, ("x", "weight", "bias"),
     ref=lambda i, s: (ref.conv1d(i["x"], i["weight"], i["bias"], **_pads1(s)),),
     out=("out",), huge=(_HUGE_STRIDE,))
case("conv1d_backward", fastnn.conv1d_backward, _CONV, _conv1d_bwd_make,
     ("grad_y", "x", "weight"),
     ref=lambda i, s: ref.conv1d_backward(i["grad_y"], i["x"], i["weight"], **_pads1(s)),
     huge=(_HUGE_STRIDE,))


def _convt_make(rng, dt, d):
    x = _r(rng, dt, d["N"], d["K"], d["H"], d["W"])
    return (dict(x=x, weight=_r(rng, dt, d["K"], d["C"], 2, 2), bias=_r(rng, dt, d["C"])),
            dict(stride=2))


def _convt_bwd_make(rng, dt, d):
    inputs, static = _convt_make(rng, dt, d)
    del inputs["bias"]
    gy = _r(rng, dt, d["N"], d["C"], 2 * d["H"], 2 * d["W"])
    return dict(grad_y=gy, **inputs), static


case("conv_transpose2d", fastnn.conv_transpose2d, _CONV, _convt_make, ("x", "weight", "bias"),
     ref=lambda i, s: (ref.conv_transpose2d(i["x"], i["weight"], i["bias"], **s),),
     out=("out",))
case("conv_transpose2d_backward", fastnn.conv_transpose2d_backward, _CONV, _convt_bwd_make,
     ("grad_y", "x", "weight"),
     ref=lambda i, s: ref.conv_transpose2d_backward(i["grad_y"], i["x"], i["weight"], **s))


def _im2col_make(rng, dt, d):
    return (dict(x=_r(rng, dt, d["N"], d["C"], d["H"], d["W"])),
            dict(kernel_size=2, padding=1, stride=d["stride"]))


def _col2im_make(rng, dt, d):
    P = _conv_out(d["H"], 2, d["stride"], 1) * _conv_out(d["W"], 2, d["stride"], 1)
    return (dict(cols=_r(rng, dt, d["N"], d["C"] * 4, P),
                 x_shape=(d["N"], d["C"], d["H"], d["W"])),
            dict(kernel_size=2, padding=1, stride=d["stride"]))


case("im2col", fastnn.im2col, _CONV, _im2col_make, ("x",),
     ref=lambda i, s: (ref.im2col(i["x"], 2, padding=1, stride=s["stride"]),),
     huge=(_HUGE_STRIDE,))
case("col2im", fastnn.col2im, _CONV, _col2im_make, ("cols",),
     ref=lambda i, s: (ref.col2im(i["cols"], i["x_shape"], 2, padding=1, stride=s["stride"]),),
     huge=(_HUGE_STRIDE,))
case("flip_kernel", fastnn.flip_kernel, _CONV,
     lambda rng, dt, d: (dict(weight=_r(rng, dt, d["K"], d["C"], 2, 3)), {}), ("weight",),
     ref=lambda i, s: (np.asarray(i["weight"], np.float64)[:, :, ::-1, ::-1],))

# ---- activations
_ACT = dict(N=3, C=5)


def _unary(name, refn, **static):
    case(name, getattr(fastnn, name), _ACT,
         lambda rng, dt, d: (dict(x=_r(rng, dt, d["N"], d["C"])), dict(static)), ("x",),
         ref=lambda i, s: (refn(i["x"], **s),), ranks=(), out=("out",))


def _binary(name, refn, second, forward=None, **static):
    def make(rng, dt, d):
        a = _r(rng, dt, d["N"], d["C"])
        if forward is not None:          # the backward of y = forward(x) takes y
            a = forward(a.astype(np.float64)).astype(dt)
        return dict(grad_y=_r(rng, dt, d["N"], d["C"]), **{second: a}), dict(static)
    case(name, getattr(fastnn, name), _ACT, make, ("grad_y", second),
         ref=lambda i, s: (refn(i["grad_y"], i[second], **s),), ranks=("grad_y",),
         out=("out",))


_unary("relu", ref.relu)
_binary("relu_backward", ref.relu_backward, "x", at_zero=0.5)
_unary("leaky_relu", ref.leaky_relu, negative_slope=0.2)
_binary("leaky_relu_backward", ref.leaky_relu_backward, "x", negative_slope=0.2)
_unary("sigmoid", ref.sigmoid)
_binary("sigmoid_backward", ref.sigmoid_backward, "y", forward=ref.sigmoid)
_unary("tanh", ref.tanh)
_binary("tanh_backward", ref.tanh_backward, "y", forward=np.tanh)
_unary("softmax", ref.softmax)
_binary("softmax_backward", ref.softmax_backward, "y", forward=ref.softmax)
_unary("log_softmax", ref.log_softmax)
_binary("log_softmax_backward", ref.log_softmax_backward, "y", forward=ref.log_softmax)


def _xent_make(rng, dt, d):
    labels = rng.integers(0, max(d["C"], 1), d["N"]) if d["C"] else np.zeros(d["N"], np.int64)
    return dict(logits=_r(rng, dt, d["N"], d["C"]), labels=labels), dict(reduction="sum")


def _xent_bwd_make(rng, dt, d):
    inputs, static = _xent_make(rng, dt, d)
    return dict(grad_loss=np.asarray(rng.standard_normal(), dt), **inputs), static


case("softmax_cross_entropy", fastnn.softmax_cross_entropy, _ACT, _xent_make, ("logits",),
     ref=lambda i, s: (ref.softmax_cross_entropy(i["logits"], i["labels"], **s),),
     arrays=("logits", "labels"), ranks=())      # logits (N, C, d1, ...): any rank >= 2
case("softmax_cross_entropy_backward", fastnn.softmax_cross_entropy_backward, _ACT,
     _xent_bwd_make, ("grad_loss", "logits"), arrays=("grad_loss", "logits", "labels"),
     ref=lambda i, s: (ref.softmax_cross_entropy_backward(i["grad_loss"], i["logits"],
                                                          i["labels"], **s),),
     ranks=("grad_loss",), out=("out",))

# ---- pooling
_POOL = dict(N=2, C=3, H=5, W=6, stride=2)


def _pool_make(rng, dt, d, oned=False):
    shape = (d["N"], d["C"], d["W"]) if oned else (d["N"], d["C"], d["H"], d["W"])
    return dict(x=_r(rng, dt, *shape)), dict(kernel_size=2, stride=d["stride"])


def _pool_ref(i, s, mode, oned=False):
    x = np.asarray(i["x"], np.float64)
    x4 = x[:, :, None] if oned else x
    k = (1, 2) if oned else 2
    st = (1, s["stride"]) if oned else s["stride"]
    y = ref.pool2d(x4, k, st, ((0, 0), (0, 0)), mode)
    y = y[0] if mode == "max" else y
    return ((y[:, :, 0] if oned else y),)


def _pool_bwd_make(rng, dt, d, oned=False):
    inputs, static = _pool_make(rng, dt, d, oned)
    ho = (d["H"] - 2) // d["stride"] + 1
    wo = (d["W"] - 2) // d["stride"] + 1
    shape = (d["N"], d["C"], wo) if oned else (d["N"], d["C"], ho, wo)
    return dict(grad_y=_r(rng, dt, *shape), **inputs), static


def _pool_bwd_ref(i, s, mode, oned=False):
    x = np.asarray(i["x"], np.float64)
    gy = np.asarray(i["grad_y"], np.float64)
    x4, gy4 = (x[:, :, None], gy[:, :, None]) if oned else (x, gy)
    k = (1, 2) if oned else 2
    st = (1, s["stride"]) if oned else s["stride"]
    pads = ((0, 0), (0, 0))
    idx = ref.pool2d(x4, k, st, pads, "max")[1] if mode == "max" else None
    gx = ref.pool2d_backward(gy4, x4.shape, k, st, pads, mode, indices=idx)
    return ((gx[:, :, 0] if oned else gx),)


for _mode in ("max", "avg"):
    for _oned in (False, True):
        _n = f"{_mode}_pool{'1' if _oned else '2'}d"
        case(_n, getattr(fastnn, _n), _POOL,
             lambda rng, dt, d, o=_oned: _pool_make(rng, dt, d, o), ("x",),
             ref=lambda i, s, m=_mode, o=_oned: _pool_ref(i, s, m, o),
             huge=((dict(stride=10 ** 9), dict(stride=7)),))
        case(_n + "_backward", getattr(fastnn, _n + "_backward"), _POOL,
             lambda rng, dt, d, o=_oned: _pool_bwd_make(rng, dt, d, o), ("grad_y", "x"),
             ref=lambda i, s, m=_mode, o=_oned: _pool_bwd_ref(i, s, m, o),
             huge=((dict(stride=10 ** 9), dict(stride=7)),))

# ---- recurrent
_RNN = dict(B=2, T=3, I=2, H=4)


def _lstm_cell_make(rng, dt, d):
    B, I, H = d["B"], d["I"], d["H"]
    return dict(x=_r(rng, dt, B, I), h=_r(rng, dt, B, H), c=_r(rng, dt, B, H),
                kernel=_r(rng, dt, I + H, 4 * H), bias=_r(rng, dt, 4 * H)), {}


case("lstm_cell", fastnn.lstm_cell, _RNN, _lstm_cell_make, ("x", "h", "c", "kernel", "bias"),
     ref=lambda i, s: ref.lstm_cell(**i), out=("out_h", "out_c"))


def _lstm_cell_bwd_make(rng, dt, d):
    inputs, static = _lstm_cell_make(rng, dt, d)
    g = dict(grad_h=_r(rng, dt, d["B"], d["H"]), grad_c=_r(rng, dt, d["B"], d["H"]))
    return dict(g, **inputs), static


case("lstm_cell_backward", fastnn.lstm_cell_backward, _RNN, _lstm_cell_bwd_make,
     ("grad_h", "grad_c", "x", "h", "c", "kernel", "bias"))


def _lstm_make(rng, dt, d):
    B, T, I, H = d["B"], d["T"], d["I"], d["H"]
    return dict(x=_r(rng, dt, B, T, I), h0=_r(rng, dt, B, H), c0=_r(rng, dt, B, H),
                kernel=_r(rng, dt, I + H, 4 * H), bias=_r(rng, dt, 4 * H)), {}


def _lstm_ref(i, s):
    out, h, c = ref.lstm(**i)
    return out, h, c


case("lstm", fastnn.lstm, _RNN, _lstm_make, ("x", "h0", "c0", "kernel", "bias"), ref=_lstm_ref)


def _gru_cell_make(rng, dt, d):
    B, I, H = d["B"], d["I"], d["H"]
    return dict(x=_r(rng, dt, B, I), h=_r(rng, dt, B, H), kernel=_r(rng, dt, I, 3 * H),
                recurrent_kernel=_r(rng, dt, H, 3 * H), bias=_r(rng, dt, 2, 3 * H)), {}


case("gru_cell", fastnn.gru_cell, _RNN, _gru_cell_make,
     ("x", "h", "kernel", "recurrent_kernel", "bias"), ref=lambda i, s: (ref.gru_cell(**i),))


def _gru_cell_bwd_make(rng, dt, d):
    inputs, static = _gru_cell_make(rng, dt, d)
    return dict(grad_h=_r(rng, dt, d["B"], d["H"]), **inputs), static


case("gru_cell_backward", fastnn.gru_cell_backward, _RNN, _gru_cell_bwd_make,
     ("grad_h", "x", "h", "kernel", "recurrent_kernel", "bias"))


def _gru_make(rng, dt, d):
    B, T, I, H = d["B"], d["T"], d["I"], d["H"]
    return dict(x=_r(rng, dt, B, T, I), h0=_r(rng, dt, B, H), kernel=_r(rng, dt, I, 3 * H),
                recurrent_kernel=_r(rng, dt, H, 3 * H), bias=_r(rng, dt, 2, 3 * H)), {}


case("gru", fastnn.gru, _RNN, _gru_make, ("x", "h0", "kernel", "recurrent_kernel", "bias"),
     ref=lambda i, s: ref.gru(**i))


def _rnn_make(rng, dt, d):
    B, T, I, H = d["B"], d["T"], d["I"], d["H"]
    return dict(x=_r(rng, dt, B, T, I), h0=_r(rng, dt, B, H), kernel=_r(rng, dt, I, H),
                recurrent_kernel=_r(rng, dt, H, H), bias=_r(rng, dt, H)), {}


case("simple_rnn", fastnn.simple_rnn, _RNN, _rnn_make,
     ("x", "h0", "kernel", "recurrent_kernel", "bias"), ref=lambda i, s: ref.simple_rnn(**i))


def _seq_bwd_make(forward, make, states):
    def build(rng, dt, d):
        inputs, _ = make(rng, dt, d)
        res = forward(**inputs, training=True)
        out, cache = res[0], res[-1]
        grads = dict(grad_outputs=_r(rng, dt, *out.shape))
        for s in states:
            grads[s] = _r(rng, dt, d["B"], d["H"])
        return dict(grads, cache=cache), {}
    return build


case("lstm_backward", fastnn.lstm_backward, _RNN,
     _seq_bwd_make(fastnn.lstm, _lstm_make, ("grad_hT", "grad_cT")),
     ("grad_outputs", "grad_hT", "grad_cT"))
case("gru_backward", fastnn.gru_backward, _RNN,
     _seq_bwd_make(fastnn.gru, _gru_make, ("grad_hT",)), ("grad_outputs", "grad_hT"))
case("simple_rnn_backward", fastnn.simple_rnn_backward, _RNN,
     _seq_bwd_make(fastnn.simple_rnn, _rnn_make, ("grad_hT",)), ("grad_outputs", "grad_hT"))

# ---- banded and masked weights
_BAND = dict(B=3, n_in=6, n_out=5)


def _band_make(rng, dt, d):
    return (dict(x=_r(rng, dt, d["B"], d["n_in"]), w=_r(rng, dt, d["n_in"], d["n_out"]),
                 bias=_r(rng, dt, d["n_out"])), dict(num_lower=1, num_upper=2))


def _band_bwd_make(rng, dt, d):
    inputs, static = _band_make(rng, dt, d)
    del inputs["bias"]
    return dict(grad_y=_r(rng, dt, d["B"], d["n_out"]), **inputs), static


case("band_part", fastnn.band_part, _BAND,
     lambda rng, dt, d: (dict(w=_r(rng, dt, d["n_in"], d["n_out"])),
                         dict(num_lower=1, num_upper=2)), ("w",),
     ref=lambda i, s: (ref.band_part(i["w"], **s),), ranks=())
case("banded_matmul", fastnn.banded_matmul, _BAND, _band_make, ("x", "w", "bias"),
     ref=lambda i, s: (ref.banded_matmul(i["x"], i["w"], s["num_lower"], s["num_upper"],
                                         i["bias"]),),
     ranks=("w", "bias"), out=("out",))
case("banded_matmul_backward", fastnn.banded_matmul_backward, _BAND, _band_bwd_make,
     ("grad_y", "x", "w"),
     ref=lambda i, s: ref.banded_matmul_backward(i["grad_y"], i["x"], i["w"],
                                                 s["num_lower"], s["num_upper"]),
     ranks=("grad_y", "w"))


def _mask(rng, d):
    return rng.random((d["n_in"], d["n_out"])) < 0.3


def _masked_make(rng, dt, d):
    inputs, _ = _band_make(rng, dt, d)
    return dict(inputs, mask=_mask(rng, d)), {}


def _masked_bwd_make(rng, dt, d):
    inputs, _ = _band_bwd_make(rng, dt, d)
    return dict(inputs, mask=_mask(rng, d)), {}


case("masked_matmul", fastnn.masked_matmul, _BAND, _masked_make, ("x", "w", "bias"),
     arrays=("x", "w", "bias", "mask"),
     ref=lambda i, s: (ref.masked_matmul(i["x"], i["w"], i["mask"], i["bias"]),),
     ranks=("w", "bias"), out=("out",))
case("masked_matmul_backward", fastnn.masked_matmul_backward, _BAND, _masked_bwd_make,
     ("grad_y", "x", "w"), arrays=("grad_y", "x", "w", "mask"),
     ref=lambda i, s: ref.masked_matmul_backward(i["grad_y"], i["x"], i["w"], i["mask"]),
     ranks=("grad_y", "w"))
case("prepare_mask", fastnn.prepare_mask, _BAND,
     lambda rng, dt, d: (dict(mask=_r(rng, dt, d["n_in"], d["n_out"]) > 0.8), {}), (),
     arrays=("mask",), ranks=(),
     results=lambda m: (m.bytes,) + tuple(a for a in (m.row_ptr, m.row_cols, m.col_ptr,
                                                      m.col_rows) if a is not None))

# ---- locally connected
_LC = dict(N=2, C=3, H=4, W=5, K=2)


def _lc2_make(rng, dt, d):
    ho, wo = max(d["H"] - 1, 0), max(d["W"] - 1, 0)
    return (dict(x=_r(rng, dt, d["N"], d["H"], d["W"], d["C"]),
                 weight=_r(rng, dt, ho, wo, 4 * d["C"], d["K"]),
                 bias=_r(rng, dt, ho, wo, d["K"])), dict(kernel_size=2))


def _lc2_bwd_make(rng, dt, d):
    inputs, static = _lc2_make(rng, dt, d)
    del inputs["bias"]
    return (dict(grad_y=_r(rng, dt, d["N"], max(d["H"] - 1, 0), max(d["W"] - 1, 0), d["K"]),
                 **inputs), static)


_LC_GEO = ((2, 2), (1, 1), ((0, 0), (0, 0)))
case("locally_connected2d", fastnn.locally_connected2d, _LC, _lc2_make, ("x", "weight", "bias"),
     ref=lambda i, s: (ref.locally_connected2d(i["x"], i["weight"], i["bias"], *_LC_GEO),))
case("locally_connected2d_backward", fastnn.locally_connected2d_backward, _LC, _lc2_bwd_make,
     ("grad_y", "x", "weight"),
     ref=lambda i, s: ref.locally_connected2d_backward(i["grad_y"], i["x"], i["weight"],
                                                       *_LC_GEO))


def _lc1_make(rng, dt, d):
    wo = max(d["W"] - 1, 0)
    return (dict(x=_r(rng, dt, d["N"], d["W"], d["C"]), weight=_r(rng, dt, wo, 2 * d["C"], d["K"]),
                 bias=_r(rng, dt, wo, d["K"])), dict(kernel_size=2))


def _lc1_bwd_make(rng, dt, d):
    inputs, static = _lc1_make(rng, dt, d)
    del inputs["bias"]
    return dict(grad_y=_r(rng, dt, d["N"], max(d["W"] - 1, 0), d["K"]), **inputs), static


def _lc1_ref(i, s):
    y = ref.locally_connected2d(np.asarray(i["x"])[:, None], np.asarray(i["weight"])[None],
                                np.asarray(i["bias"])[None], (1, 2), (1, 1), ((0, 0), (0, 0)))
    return (y[:, 0],)


def _lc1_bwd_ref(i, s):
    gx, gw, gb = ref.locally_connected2d_backward(
        np.asarray(i["grad_y"])[:, None], np.asarray(i["x"])[:, None],
        np.asarray(i["weight"])[None], (1, 2), (1, 1), ((0, 0), (0, 0)))
    return gx[:, 0], gw[0], gb[0]


case("locally_connected1d", fastnn.locally_connected1d, _LC, _lc1_make, ("x", "weight", "bias"),
     ref=_lc1_ref)
case("locally_connected1d_backward", fastnn.locally_connected1d_backward, _LC, _lc1_bwd_make,
     ("grad_y", "x", "weight"), ref=_lc1_bwd_ref)

# ---- converters (exact permutations: no reference needed beyond the bits)
_CV = dict(I=2, H=3)


def _cv(fn, shapes, **static):
    names = list(shapes)

    def make(rng, dt, d):
        return {n: _r(rng, dt, *(s(d) for s in shapes[n])) for n in names}, dict(static)
    case(f"convert.{fn}", getattr(convert, fn), _CV, make, tuple(names))


_I = lambda d: d["I"]           # noqa: E731
_H = lambda d: d["H"]           # noqa: E731
_IH = lambda d: d["I"] + d["H"]  # noqa: E731
_4H = lambda d: 4 * d["H"]      # noqa: E731
_3H = lambda d: 3 * d["H"]      # noqa: E731
_TWO = lambda d: 2              # noqa: E731
_cv("lstm_from_torch", dict(weight_ih=(_4H, _I), weight_hh=(_4H, _H), bias_ih=(_4H,),
                            bias_hh=(_4H,)))
_cv("lstm_to_torch", dict(kernel=(_IH, _4H), bias=(_4H,)))
_cv("lstm_from_keras", dict(kernel=(_I, _4H), recurrent_kernel=(_H, _4H), bias=(_4H,)))
CASES.append(Case("convert.lstm_to_keras", convert.lstm_to_keras, _CV,
                  lambda rng, dt, d: (dict(kernel=_r(rng, dt, d["I"] + d["H"], 4 * d["H"]),
                                           bias=_r(rng, dt, 4 * d["H"])),
                                      dict(input_size=d["I"])), ("kernel", "bias")))
_cv("gru_from_torch", dict(weight_ih=(_3H, _I), weight_hh=(_3H, _H), bias_ih=(_3H,),
                           bias_hh=(_3H,)))
_cv("gru_to_torch", dict(kernel=(_I, _3H), recurrent_kernel=(_H, _3H), bias=(_TWO, _3H)))
_cv("simple_rnn_from_torch", dict(weight_ih=(_H, _I), weight_hh=(_H, _H), bias_ih=(_H,),
                                  bias_hh=(_H,)))
_cv("simple_rnn_to_torch", dict(kernel=(_I, _H), recurrent_kernel=(_H, _H), bias=(_H,)))

BY_NAME = {c.name: c for c in CASES}

# Public names that are not array functions, and why the generic checks skip them.
NOT_ARRAY_FUNCTIONS = {
    "__version__": "a string",
    "show_config": "prints the build configuration",
    "set_num_threads": "thread settings (test_threads.py)",
    "get_num_threads": "thread settings (test_threads.py)",
    "threads": "thread settings (test_threads.py)",
    "set_coexistence": "thread settings (test_threads.py)",
    "get_coexistence": "thread settings (test_threads.py)",
    "RecurrentCache": "a class (the *_backward cases take it; test_hardening.py edits it)",
    "convert": "a module (its functions are cases convert.*)",
}


def test_registry_covers_the_whole_api():
    public = set(fastnn.__all__) | {f"convert.{n}" for n in convert.__all__}
    assert public - set(BY_NAME) - set(NOT_ARRAY_FUNCTIONS) == set()
    assert set(BY_NAME) - public == set()
    for c in CASES:                      # every argument named exists in the signature
        params = inspect.signature(c.fn).parameters
        inputs, static = c.make()
        assert set(inputs) | set(static) <= set(params), c.name
        assert set(c.arrays) | set(c.out) <= set(params), c.name


# ------------------------------------------------------------------ helpers
def _results(c, res):
    """The arrays a call returned, flattened (caches and Nones left out)."""
    if c.results is not None:
        return tuple(c.results(res))
    out = []
    for r in res if isinstance(res, tuple) else (res,):
        if isinstance(r, tuple):
            out.extend(_results(c, r))
        elif isinstance(r, np.ndarray):
            out.append(r)
    return tuple(out)


def _same_bits(got, want, what):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what}: result {i}"
        np.testing.assert_array_equal(g, w, err_msg=f"{what}: result {i}")


def _snapshot(inputs):
    return {k: np.array(v, copy=True) for k, v in inputs.items() if isinstance(v, np.ndarray)}


def _unchanged(inputs, snap):
    for k, before in snap.items():
        np.testing.assert_array_equal(inputs[k], before, err_msg=f"input {k} changed")


def _out_buffers(c, inputs, static):
    """Result buffers for c's out= arguments, filled with a sentinel."""
    res = _results(c, c.call(inputs, static))
    return {name: np.full(r.shape, 7.25, r.dtype) for name, r in zip(c.out, res)}


def _param_cases(attr):
    return [pytest.param(c, a, id=f"{c.name}-{a}") for c in CASES for a in getattr(c, attr)]


# ------------------------------------------------------------------ bad dtypes and ranks
BAD_DTYPES = [np.int32, np.int64, np.bool_, np.complex128, np.float16, object]


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("c, arg", _param_cases("floats"))
def test_bad_dtype_names_the_argument(c, arg, bad):
    inputs, static = c.make()
    inputs[arg] = np.asarray(inputs[arg]).astype(bad)
    outs = _out_buffers(c, *c.make()) if c.out else {}
    snap, out_snap = _snapshot(inputs), _snapshot(outs)
    with pytest.raises(TypeError, match=rf"\b{arg}\b"):
        c.call(dict(inputs, **outs), static)
    _unchanged(inputs, snap)
    _unchanged(outs, out_snap)


@pytest.mark.parametrize("c, arg", _param_cases("ranks"))
def test_extra_axis_names_the_argument(c, arg):
    inputs, static = c.make()
    inputs[arg] = inputs[arg][None]
    outs = _out_buffers(c, *c.make()) if c.out else {}
    snap, out_snap = _snapshot(inputs), _snapshot(outs)
    with pytest.raises((ValueError, TypeError), match=rf"\b{arg}\b"):
        c.call(dict(inputs, **outs), static)
    _unchanged(inputs, snap)
    _unchanged(outs, out_snap)


@pytest.mark.parametrize("c", [c for c in CASES if c.out], ids=repr)
def test_out_of_the_wrong_dtype_or_shape_is_refused_untouched(c):
    inputs, static = c.make()
    for name, buf in _out_buffers(c, inputs, static).items():
        for bad in (buf.astype(np.float32), np.zeros(buf.shape + (1,), buf.dtype)):
            snap = bad.copy()
            with pytest.raises((TypeError, ValueError), match=rf"\b{name}\b"):
                c.call(dict(inputs, **{name: bad}), static)
            np.testing.assert_array_equal(bad, snap)


# ------------------------------------------------------------------ memory layouts
def _byteswapped(a):
    return a.astype(a.dtype.newbyteorder("S"))


def _strided(a):
    if a.ndim == 0:
        return np.array(a)
    big = np.zeros(tuple(2 * s + 1 for s in a.shape), a.dtype)
    view = big[tuple(slice(1, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def _negative(a):
    if a.ndim == 0:
        return np.array(a)
    flip = (slice(None, None, -1),) * a.ndim
    return np.ascontiguousarray(a[flip])[flip]


def _readonly(a):
    b = a.copy()
    b.flags.writeable = False
    return b


def _unaligned(a):
    """A view at byte offset 1 of a bytes buffer (read-only, misaligned)."""
    raw = b"\0" + np.ascontiguousarray(a).tobytes()
    return np.frombuffer(raw, a.dtype, count=a.size, offset=1).reshape(a.shape)


VARIANTS = {
    "byteswapped": lambda a, tmp: _byteswapped(a),
    "strided": lambda a, tmp: _strided(a),
    "negative-strides": lambda a, tmp: _negative(a),
    "fortran": lambda a, tmp: np.asfortranarray(a) if a.ndim else np.array(a),
    "readonly": lambda a, tmp: _readonly(a),
    "unaligned": lambda a, tmp: _unaligned(a),
    "memmap": None,
}


def _memmap(a, path):
    m = np.memmap(path, dtype=a.dtype, mode="w+", shape=max(a.size, 1))
    m[:a.size] = a.ravel()
    m.flush()
    del m
    r = np.memmap(path, dtype=a.dtype, mode="r", shape=max(a.size, 1))
    return r[:a.size].reshape(a.shape)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("c", CASES, ids=repr)
def test_memory_layouts_give_the_same_bits(c, dt, variant, tmp_path):
    inputs, static = c.make(dt)
    want = _results(c, c.call(inputs, static))
    for arg in c.arrays:
        a = np.asarray(inputs[arg])
        if variant == "byteswapped" and a.dtype.kind not in "fiu":
            continue
        if variant == "memmap":
            v = _memmap(a, tmp_path / f"{arg}.bin")
        else:
            v = VARIANTS[variant](a, tmp_path)
        np.testing.assert_array_equal(v, a)
        snap = np.array(v, copy=True)
        got = _results(c, c.call(dict(inputs, **{arg: v}), static))
        _same_bits(got, want, f"{c.name}: {arg} {variant}")
        np.testing.assert_array_equal(v, snap)


# ------------------------------------------------------------------ sizes 0
def _compare(c, got, want, dt, what):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        w = np.asarray(w, np.float64)
        assert g.shape == w.shape, f"{what}: result {i} shape {g.shape} != {w.shape}"
        assert g.dtype == np.dtype(dt), f"{what}: result {i} dtype {g.dtype}"
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{what}: NaN, result {i}")
        np.testing.assert_array_equal(np.isposinf(g), np.isposinf(w),
                                      err_msg=f"{what}: +Inf, result {i}")
        np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w),
                                      err_msg=f"{what}: -Inf, result {i}")
        fin = np.isfinite(w)
        assert_close(np.where(fin, g, 0), np.where(fin, w, 0), dt, f"{what}: result {i}")


def _zero_cases():
    return [pytest.param(c, k, id=f"{c.name}-{k}=0") for c in CASES for k in c.dims
            if isinstance(c.dims[k], int) and k != "stride"]


@pytest.mark.parametrize("c, dim", _zero_cases())
def test_every_size_zero(c, dim):
    """Each size set to 0 in turn: the reference's result (empty, zeros or the bias),
    or a ValueError where the geometry leaves no output (a window larger than an empty
    image); never uninitialised memory, a crash or an IndexError."""
    dt = np.float64
    inputs, static = c.make(dt, **{dim: 0})
    for a in inputs.values():     # a heap full of NaN for np.empty to hand out
        if isinstance(a, np.ndarray) and a.nbytes:
            junk = np.full(max(a.size, 64), np.nan)
            del junk
    try:
        res = c.call(inputs, static)
    except ValueError as exc:
        assert str(exc).startswith(c.name.split(".")[-1] + ":") or "must" in str(exc), exc
        return
    got = _results(c, res)
    if c.ref is None:
        for g in got:
            assert not np.isnan(g).any(), f"{c.name}: NaN from size-0 {dim}"
        return
    want = c.ref(inputs, static)
    _compare(c, got, want, dt, f"{c.name} with {dim}=0")


# ------------------------------------------------------------------ NaN and Inf
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("c, arg", _param_cases("floats"))
def test_nan_and_inf_propagate_as_in_the_reference(c, arg, value):
    dt = np.float64
    inputs, static = c.make(dt)
    a = np.array(inputs[arg], dtype=dt)
    if a.size == 0:
        return
    a.flat[a.size // 2] = value
    inputs[arg] = a
    with np.errstate(all="ignore"):
        got = _results(c, c.call(inputs, static))
        if c.ref is None:
            # Without a reference: a NaN must reach some result (an Inf may vanish
            # through a saturating gate, as it does in the mathematics).
            assert not np.isnan(value) or any(np.isnan(g).any() for g in got), \
                f"{c.name}: NaN in {arg} reached no result"
            return
        want = c.ref(inputs, static)
    _compare(c, got, want, dt, f"{c.name}: {value} in {arg}")


# ------------------------------------------------------------------ huge geometry
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("c", [c for c in CASES if c.huge], ids=repr)
def test_huge_but_valid_geometry(c, dt):
    for huge, small in c.huge:
        inputs, static = c.make(dt, **huge)
        small_inputs, small_static = c.make(dt, **small)
        for k in inputs:             # the same problem: the same arrays
            if isinstance(inputs[k], np.ndarray):
                np.testing.assert_array_equal(inputs[k], small_inputs[k])
        got = _results(c, c.call(inputs, static))
        want = c.ref(small_inputs, small_static)
        _compare(c, got, want, dt, f"{c.name} {huge}")

