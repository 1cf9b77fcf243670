"""fastnn.jax: every wrapped kernel against an independent JAX reference (lax / jax.nn /
jnp written out here), in float64 (x64 enabled) and float32, under grad, jit and vmap, on
the FFI host-call path (the default); representative checks on the pure_callback path;
the FFI handler's protocol (metadata query, stages, errors) and its use from threads."""
import ctypes
import functools
import inspect
import subprocess
import sys
import threading

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import fastnn  # noqa: E402
import fastnn.jax as fj  # noqa: E402
from fastnn import _jax_ffi  # noqa: E402
from helpers import assert_close  # noqa: E402

HI = lax.Precision.HIGHEST
SWITCH = "FASTNN_JAX_CALLBACK"


@pytest.fixture(autouse=True)
def _ffi_path(monkeypatch):
    """Every test runs on the default (FFI) path unless it selects pure_callback."""
    monkeypatch.delenv(SWITCH, raising=False)


@pytest.fixture
def pure_callback(monkeypatch):
    monkeypatch.setenv(SWITCH, "pure_callback")


# ------------------------------------------------------------------ references
def conv2d_ref(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW"):
    s = (stride,) * 2 if isinstance(stride, int) else stride
    d = (dilation,) * 2 if isinstance(dilation, int) else dilation
    pad = "SAME" if padding == "same" else (((padding, padding),) * 2 if isinstance(padding, int)
                                             else padding)
    dn = ("NCHW", "OIHW", "NCHW") if layout == "NCHW" else ("NHWC", "HWIO", "NHWC")
    y = lax.conv_general_dilated(x, w, s, pad, rhs_dilation=d, dimension_numbers=dn,
                                 feature_group_count=groups, precision=HI)
    if b is not None:
        y = y + (b[:, None, None] if layout == "NCHW" else b)
    return y


def conv1d_ref(x, w, b=None, *, stride=1, padding=0, dilation=1):
    y = lax.conv_general_dilated(x, w, (stride,), [(padding, padding)], rhs_dilation=(dilation,),
                                 dimension_numbers=("NCH", "OIH", "NCH"), precision=HI)
    return y if b is None else y + b[:, None]


def conv_transpose2d_ref(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                         groups=1):
    # The transposed convolution as a stride-1 convolution of the dilated input with the
    # flipped kernel, PyTorch's weight (C_in, C_out/groups, kh, kw) regrouped to OIHW.
    cin, cog, kh, kw = w.shape
    wg = w.reshape(groups, cin // groups, cog, kh, kw).transpose(0, 2, 1, 3, 4)
    rhs = wg.reshape(groups * cog, cin // groups, kh, kw)[:, :, ::-1, ::-1]
    pads = [(dilation * (k - 1) - padding, dilation * (k - 1) - padding + output_padding)
            for k in (kh, kw)]
    y = lax.conv_general_dilated(x, rhs, (1, 1), pads, lhs_dilation=(stride, stride),
                                 rhs_dilation=(dilation, dilation),
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                 feature_group_count=groups, precision=HI)
    return y if b is None else y + b[:, None, None]


def _window(nd, kernel_size, stride, padding, channels_last):
    k = (kernel_size,) * nd if isinstance(kernel_size, int) else tuple(kernel_size)
    s = k if stride is None else ((stride,) * nd if isinstance(stride, int) else tuple(stride))
    if padding == "same":
        pad = "SAME"
    else:
        p = [(padding, padding)] * nd if isinstance(padding, int) else list(padding)
        pad = ([(0, 0)] + p + [(0, 0)]) if channels_last else ([(0, 0), (0, 0)] + p)
    wrap = (lambda t: (1,) + t + (1,)) if channels_last else (lambda t: (1, 1) + t)
    return wrap(k), wrap(s), pad


def max_pool_ref(x, kernel_size, *, stride=None, padding=0, dilation=1, channels_last=False):
    k, s, pad = _window(x.ndim - 2, kernel_size, stride, padding, channels_last)
    if dilation == 1:
        return lax.reduce_window(x, -jnp.inf, lax.max, k, s, pad)
    # (JAX has no gradient for dilated reduce_window max: the taps as strided slices)
    n, c, h, w = x.shape
    xp = jnp.pad(x, pad, constant_values=-jnp.inf)
    ho = (xp.shape[2] - dilation * (k[2] - 1) - 1) // s[2] + 1
    wo = (xp.shape[3] - dilation * (k[3] - 1) - 1) // s[3] + 1
    taps = [xp[:, :, i * dilation:i * dilation + s[2] * (ho - 1) + 1:s[2],
               j * dilation:j * dilation + s[3] * (wo - 1) + 1:s[3]]
            for i in range(k[2]) for j in range(k[3])]
    return functools.reduce(jnp.maximum, taps)


def avg_pool_ref(x, kernel_size, *, stride=None, padding=0, count_include_pad=False,
                 channels_last=False):
    k, s, pad = _window(x.ndim - 2, kernel_size, stride, padding, channels_last)
    total = lax.reduce_window(x, 0.0, lax.add, k, s, pad)
    if count_include_pad:       # (every window here lies inside the padded input)
        return total / np.prod(k)
    count = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, k, s, pad)
    return total / count


def xent_ref(logits, labels, reduction="mean", weight=None, ignore_index=None,
             label_smoothing=0.0):
    # PyTorch's cross_entropy, class axis 1
    C, eps = logits.shape[1], label_smoothing
    logp = jax.nn.log_softmax(logits, axis=1)
    w = jnp.ones(C, logits.dtype) if weight is None else jnp.asarray(weight, logits.dtype)
    w_b = w.reshape((1, C) + (1,) * (logits.ndim - 2))
    if jnp.issubdtype(labels.dtype, jnp.integer):
        keep = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
        target = (1 - eps) * jax.nn.one_hot(labels, C, axis=1, dtype=logits.dtype) + eps / C
        rows = jnp.where(keep, -(w_b * target * logp).sum(axis=1), 0.0)
        denominator = jnp.where(keep, w[jnp.where(keep, labels, 0)], 0.0).sum()
    else:
        rows = -(w_b * ((1 - eps) * labels + eps / C) * logp).sum(axis=1)
        denominator = rows.size
    return {"mean": rows.sum() / denominator, "sum": rows.sum(), "none": rows}[reduction]


def band_mask(n_in, n_out, lower, upper):
    i, j = np.indices((n_in, n_out))
    return ((lower < 0) | (i - j <= lower)) & ((upper < 0) | (j - i <= upper))


def local2d_ref(x, w, b=None, *, kernel_size, stride=1, padding=0, layout="NHWC"):
    if layout == "NCHW":
        x = x.transpose(0, 2, 3, 1)
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    n, k, s = x.shape[0], kernel_size, stride
    rows = []
    for oh in range(w.shape[0]):
        rows.append(jnp.stack([x[:, oh * s:oh * s + k, ow * s:ow * s + k, :].reshape(n, -1)
                               @ w[oh, ow] for ow in range(w.shape[1])], axis=1))
    y = jnp.stack(rows, axis=1)
    if b is not None:
        y = y + b
    return y.transpose(0, 3, 1, 2) if layout == "NCHW" else y


def local1d_ref(x, w, b=None, *, kernel_size, stride=1):
    n, k, s = x.shape[0], kernel_size, stride
    y = jnp.stack([x[:, o * s:o * s + k, :].reshape(n, -1) @ w[o] for o in range(w.shape[0])],
                  axis=1)
    return y if b is None else y + b


def _seq(x, time_major):
    return [x[t] for t in range(x.shape[0])] if time_major else \
        [x[:, t] for t in range(x.shape[1])]


def _stack(hs, time_major):
    return jnp.stack(hs, axis=0 if time_major else 1)


def lstm_cell_ref(x, h, c, kernel, bias, *, forget_bias=1.0):
    i, j, f, o = jnp.split(jnp.concatenate([x, h], axis=1) @ kernel + bias, 4, axis=1)
    c = c * jax.nn.sigmoid(f + forget_bias) + jax.nn.sigmoid(i) * jnp.tanh(j)
    return jnp.tanh(c) * jax.nn.sigmoid(o), c


def lstm_ref(x, h0, c0, kernel, bias, *, forget_bias=1.0, time_major=False, return_state=True):
    steps = _seq(x, time_major)
    H = kernel.shape[1] // 4
    h = jnp.zeros((steps[0].shape[0], H), x.dtype) if h0 is None else h0
    c = jnp.zeros_like(h) if c0 is None else c0
    hs = []
    for xt in steps:
        h, c = lstm_cell_ref(xt, h, c, kernel, bias, forget_bias=forget_bias)
        hs.append(h)
    out = _stack(hs, time_major)
    return (out, (h, c)) if return_state else out


def gru_cell_ref(x, h, kernel, rk, bias, *, reset_after=True):
    H = rk.shape[0]
    if reset_after:
        xz, hz = x @ kernel + bias[0], h @ rk + bias[1]
        z = jax.nn.sigmoid(xz[:, :H] + hz[:, :H])
        r = jax.nn.sigmoid(xz[:, H:2 * H] + hz[:, H:2 * H])
        hh = jnp.tanh(xz[:, 2 * H:] + r * hz[:, 2 * H:])
    else:
        xz = x @ kernel + bias
        z = jax.nn.sigmoid(xz[:, :H] + h @ rk[:, :H])
        r = jax.nn.sigmoid(xz[:, H:2 * H] + h @ rk[:, H:2 * H])
        hh = jnp.tanh(xz[:, 2 * H:] + (r * h) @ rk[:, 2 * H:])
    return z * h + (1 - z) * hh


def gru_ref(x, h0, kernel, rk, bias, *, reset_after=True, time_major=False, return_state=True):
    steps = _seq(x, time_major)
    h = jnp.zeros((steps[0].shape[0], rk.shape[0]), x.dtype) if h0 is None else h0
    hs = []
    for xt in steps:
        h = gru_cell_ref(xt, h, kernel, rk, bias, reset_after=reset_after)
        hs.append(h)
    out = _stack(hs, time_major)
    return (out, h) if return_state else out


def simple_rnn_ref(x, h0, kernel, rk, bias, *, activation="tanh", time_major=False):
    act = jnp.tanh if activation == "tanh" else jax.nn.relu
    steps = _seq(x, time_major)
    h = jnp.zeros((steps[0].shape[0], rk.shape[0]), x.dtype) if h0 is None else h0
    hs = []
    for xt in steps:
        h = act(xt @ kernel + h @ rk + bias)
        hs.append(h)
    return _stack(hs, time_major), h


# ------------------------------------------------------------------ cases
def _normal(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def _away_from_zero(rng, *shape):
    # keeps relu / leaky_relu / max-pool ties and kinks out of the gradient check
    a = rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    return a


class Case:
    def __init__(self, name, fn, ref, make, kw=None, diff=None, vmap_axes=None, ref_kw=None):
        self.name, self.fn, self.ref, self.make = name, fn, ref, make
        self.kw, self.ref_kw = kw or {}, (ref_kw if ref_kw is not None else kw or {})
        self.diff, self.vmap_axes = diff, vmap_axes

    def args(self, dtype, seed=0):
        rng = np.random.default_rng(seed)
        out = []
        for a in self.make(rng):
            if isinstance(a, np.ndarray) and a.dtype == np.float64:
                a = jnp.asarray(a, dtype=dtype)
            elif isinstance(a, np.ndarray):
                a = jnp.asarray(a)
            out.append(a)
        return out

    def diff_argnums(self, args):
        if self.diff is not None:
            return self.diff
        return tuple(i for i, a in enumerate(args)
                     if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating))

    def call(self, args):
        return self.fn(*args, **self.kw)

    def call_ref(self, args):
        return self.ref(*args, **self.ref_kw)


B_MASK = band_mask(7, 5, 1, 2)
R_MASK = np.random.default_rng(5).random((7, 5)) < 0.4

CASES = [
    Case("conv2d", fj.conv2d, conv2d_ref,
         lambda r: [_normal(r, 2, 4, 7, 6), _normal(r, 6, 4, 3, 2), _normal(r, 6)],
         dict(stride=(2, 1), padding=1, dilation=(1, 2))),
    Case("conv2d_nhwc_groups_same", fj.conv2d, conv2d_ref,
         lambda r: [_normal(r, 2, 5, 6, 4), _normal(r, 3, 3, 2, 6), None],
         dict(padding="same", groups=2, stride=2, layout="NHWC")),
    Case("conv1d", fj.conv1d, conv1d_ref,
         lambda r: [_normal(r, 2, 3, 9), _normal(r, 4, 3, 3), _normal(r, 4)],
         dict(stride=2, padding=1, dilation=2)),
    Case("conv_transpose2d", fj.conv_transpose2d, conv_transpose2d_ref,
         lambda r: [_normal(r, 2, 4, 3, 4), _normal(r, 4, 3, 3, 3), _normal(r, 6)],
         dict(stride=2, padding=1, output_padding=1, groups=2)),
    Case("max_pool2d", fj.max_pool2d, max_pool_ref, lambda r: [_normal(r, 2, 3, 7, 6)],
         dict(kernel_size=(3, 2), stride=(2, 2), padding=1)),
    Case("max_pool2d_nhwc_same", fj.max_pool2d, max_pool_ref, lambda r: [_normal(r, 2, 5, 7, 3)],
         dict(kernel_size=3, stride=2, padding="same", layout="NHWC"),
         ref_kw=dict(kernel_size=3, stride=2, padding="same", channels_last=True)),
    Case("max_pool2d_dilated", fj.max_pool2d, max_pool_ref, lambda r: [_normal(r, 2, 3, 8, 7)],
         dict(kernel_size=2, stride=1, padding=1, dilation=2)),
    Case("avg_pool2d_count_pad", fj.avg_pool2d, avg_pool_ref, lambda r: [_normal(r, 2, 3, 7, 5)],
         dict(kernel_size=3, stride=2, padding=1, count_include_pad=True)),
    Case("avg_pool2d_same", fj.avg_pool2d, avg_pool_ref, lambda r: [_normal(r, 2, 3, 7, 5)],
         dict(kernel_size=3, stride=2, padding="same")),
    Case("max_pool1d", fj.max_pool1d, max_pool_ref, lambda r: [_normal(r, 2, 3, 9)],
         dict(kernel_size=3, stride=2)),
    Case("avg_pool1d", fj.avg_pool1d, avg_pool_ref, lambda r: [_normal(r, 2, 3, 9)],
         dict(kernel_size=2, padding=1)),
    Case("relu", fj.relu, jax.nn.relu, lambda r: [_away_from_zero(r, 3, 5)]),
    Case("leaky_relu", fj.leaky_relu, lambda x, s: jax.nn.leaky_relu(x, s),
         lambda r: [_away_from_zero(r, 3, 5), 0.2]),
    Case("sigmoid", fj.sigmoid, jax.nn.sigmoid, lambda r: [_normal(r, 3, 5, scale=3)]),
    Case("tanh", fj.tanh, jnp.tanh, lambda r: [_normal(r, 3, 5, scale=2)]),
    Case("softmax", fj.softmax, jax.nn.softmax, lambda r: [_normal(r, 3, 4, 5)], dict(axis=1)),
    Case("log_softmax", fj.log_softmax, jax.nn.log_softmax, lambda r: [_normal(r, 3, 5)]),
    Case("softmax_cross_entropy", fj.softmax_cross_entropy, xent_ref,
         lambda r: [_normal(r, 6, 5, scale=2), r.integers(0, 5, 6)], vmap_axes=(0, 0),
         diff=(0,)),
    Case("softmax_cross_entropy_probs_none", fj.softmax_cross_entropy, xent_ref,
         lambda r: [_normal(r, 6, 5), r.dirichlet(np.ones(5), 6)], dict(reduction="none"),
         vmap_axes=(0, 0), diff=(0,)),
    Case("softmax_cross_entropy_sum", fj.softmax_cross_entropy, xent_ref,
         lambda r: [_normal(r, 6, 5), r.integers(0, 5, 6)], dict(reduction="sum"), diff=(0,)),
    Case("softmax_cross_entropy_weight_smoothing_ignore", fj.softmax_cross_entropy, xent_ref,
         lambda r: [_normal(r, 6, 5), np.array([0, 3, -100, 4, 1, 3])],
         dict(weight=np.array([0.5, 1.0, 2.0, 1.5, 0.7]), ignore_index=-100,
              label_smoothing=0.2), diff=(0,), vmap_axes=(0, 0)),
    Case("softmax_cross_entropy_spatial_none", fj.softmax_cross_entropy, xent_ref,
         lambda r: [_normal(r, 3, 4, 5), r.integers(0, 4, (3, 5))], dict(reduction="none"),
         diff=(0,), vmap_axes=(0, 0)),
    Case("banded_matmul", fj.banded_matmul,
         lambda x, w, lo, up, b: x @ (w * band_mask(7, 5, lo, up)) + b,
         lambda r: [_normal(r, 2, 3, 7), _normal(r, 7, 5), 1, 2, _normal(r, 5)]),
    Case("masked_matmul", fj.masked_matmul, lambda x, w, m, b: x @ (w * m) + b,
         lambda r: [_normal(r, 4, 7), _normal(r, 7, 5), R_MASK, _normal(r, 5)]),
    Case("masked_matmul_prepared", fj.masked_matmul,
         lambda x, w, m: x @ (w * R_MASK),
         lambda r: [_normal(r, 4, 7), _normal(r, 7, 5), fastnn.prepare_mask(R_MASK)]),
    Case("locally_connected2d", fj.locally_connected2d, local2d_ref,
         lambda r: [_normal(r, 2, 5, 6, 3), _normal(r, 2, 2, 27, 4), _normal(r, 2, 2, 4)],
         dict(kernel_size=3, stride=2)),
    Case("locally_connected2d_nchw_pad", fj.locally_connected2d, local2d_ref,
         lambda r: [_normal(r, 2, 2, 3, 3), _normal(r, 4, 4, 8, 3), None],
         dict(kernel_size=2, padding=1, layout="NCHW")),
    Case("locally_connected1d", fj.locally_connected1d, local1d_ref,
         lambda r: [_normal(r, 2, 7, 3), _normal(r, 3, 9, 4), _normal(r, 3, 4)],
         dict(kernel_size=3, stride=2)),
    Case("lstm", fj.lstm, lstm_ref,
         lambda r: [_normal(r, 3, 4, 5), _normal(r, 3, 6), _normal(r, 3, 6),
                    _normal(r, 11, 24, scale=0.4), _normal(r, 24)]),
    Case("lstm_time_major_no_state", fj.lstm, lstm_ref,
         lambda r: [_normal(r, 4, 3, 5), None, None, _normal(r, 11, 24, scale=0.4),
                    _normal(r, 24)],
         dict(forget_bias=0.5, time_major=True, return_state=False), vmap_axes=(1,)),
    Case("gru", fj.gru, gru_ref,
         lambda r: [_normal(r, 3, 4, 5), _normal(r, 3, 6), _normal(r, 5, 18, scale=0.4),
                    _normal(r, 6, 18, scale=0.4), _normal(r, 2, 18)]),
    Case("gru_reset_before_time_major", fj.gru, gru_ref,
         lambda r: [_normal(r, 4, 3, 5), None, _normal(r, 5, 18, scale=0.4),
                    _normal(r, 6, 18, scale=0.4), _normal(r, 18)],
         dict(reset_after=False, time_major=True)),
    Case("simple_rnn", fj.simple_rnn, simple_rnn_ref,
         lambda r: [_normal(r, 3, 4, 5), _normal(r, 3, 6), _normal(r, 5, 6, scale=0.4),
                    _normal(r, 6, 6, scale=0.4), _normal(r, 6)]),
    Case("simple_rnn_relu", fj.simple_rnn, simple_rnn_ref,
         lambda r: [_normal(r, 3, 4, 5), None, _normal(r, 5, 6, scale=0.4),
                    _normal(r, 6, 6, scale=0.4), _normal(r, 6) + 0.5], dict(activation="relu")),
    Case("lstm_cell", fj.lstm_cell, lstm_cell_ref,
         lambda r: [_normal(r, 3, 5), _normal(r, 3, 6), _normal(r, 3, 6),
                    _normal(r, 11, 24, scale=0.4), _normal(r, 24)]),
    Case("gru_cell", fj.gru_cell, gru_cell_ref,
         lambda r: [_normal(r, 3, 5), _normal(r, 3, 6), _normal(r, 5, 18, scale=0.4),
                    _normal(r, 6, 18, scale=0.4), _normal(r, 18)], dict(reset_after=False)),
]
IDS = [c.name for c in CASES]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _leaves(tree):
    return [np.asarray(t) for t in jax.tree_util.tree_leaves(tree)]


def _weights(out, seed=7):
    """Fixed random cotangents for every output leaf (float ones only)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(np.shape(o)) for o in jax.tree_util.tree_leaves(out)]


def _loss(fn, argnums, args, weights):
    def loss(*diff):
        full = list(args)
        for i, d in zip(argnums, diff):
            full[i] = d
        leaves = [o for o in jax.tree_util.tree_leaves(fn(full))
                  if jnp.issubdtype(o.dtype, jnp.floating)]
        return sum((o * jnp.asarray(w, o.dtype)).sum() for o, w in zip(leaves, weights))
    return loss


def _grads(case, fn, args, weights, jit=False):
    argnums = case.diff_argnums(args)
    loss = _loss(fn, argnums, args, weights)
    g = jax.grad(loss, argnums=tuple(range(len(argnums))))
    if jit:
        g = jax.jit(g)
    return g(*(args[i] for i in argnums))


# ------------------------------------------------------------------ tests
_REFERENCE = {}


def _traced(args):
    return [i for i, a in enumerate(args) if isinstance(a, jax.Array)]


def _with(args, positions, values):
    full = list(args)
    for i, a in zip(positions, values):
        full[i] = a
    return full


def _reference(case):
    """The float64 reference outputs (tree), cotangent weights and gradients, once per
    case (jitted: one compilation instead of one per operation)."""
    if case.name not in _REFERENCE:
        with jax.enable_x64(True):
            args = case.args(np.float64)
            arrays = _traced(args)
            want = jax.jit(lambda *a: case.call_ref(_with(args, arrays, a)))(
                *(args[i] for i in arrays))
            weights = _weights(want)
            grads = [np.asarray(g) for g in _grads(case, case.call_ref, args, weights, jit=True)]
            _REFERENCE[case.name] = (jax.tree_util.tree_map(np.asarray, want), weights, grads)
    return _REFERENCE[case.name]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float64_forward_and_grad_eager_and_jit(case, x64):
    args = case.args(np.float64)
    want, weights, g_want = _reference(case)
    got = case.call(args)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for g, w in zip(_leaves(got), _leaves(want)):
        assert g.dtype == np.float64
        assert_close(g, w, np.float64, f"{case.name} forward")
    g_got = _grads(case, case.call, args, weights)
    assert len(g_got) == len(g_want)
    for i, (a, b) in enumerate(zip(g_got, g_want)):
        assert a.dtype == np.float64
        assert_close(a, b, np.float64, f"{case.name} grad {i}")

    # jit: the same kernels, so bitwise the eager results
    arrays = _traced(args)
    jitted = jax.jit(lambda *a: case.call(_with(args, arrays, a)))(*(args[i] for i in arrays))
    for a, b in zip(_leaves(got), _leaves(jitted)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(g_got, _grads(case, case.call, args, weights, jit=True)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_forward_and_grad(case):
    want, weights, g_want = _reference(case)
    want = _leaves(want)
    with jax.enable_x64(False):       # jitted (eager is covered in float64)
        args = case.args(np.float32)
        arrays = _traced(args)
        got = _leaves(jax.jit(lambda *a: case.call(_with(args, arrays, a)))(
            *(args[i] for i in arrays)))
        for g, w in zip(got, want):
            assert g.dtype == np.float32
            assert_close(g, w, np.float32, f"{case.name} forward")
        for i, (a, b) in enumerate(zip(_grads(case, case.call, args, weights, jit=True),
                                       g_want)):
            assert a.dtype == np.float32
            assert_close(a, b, np.float32, f"{case.name} grad {i}")


def _vmap_check(case, args, axes):
    """vmap over a new axis of the arguments in ``axes`` (index -> axis) equals a loop."""
    rng = np.random.default_rng(3)
    stacked = {}
    for i, ax in axes.items():
        a = np.asarray(args[i])
        if np.issubdtype(a.dtype, np.floating):
            versions = [a, a + 0.1 * rng.standard_normal(a.shape).astype(a.dtype), 0.5 * a]
        else:
            versions = [a, a, a]
        stacked[i] = np.stack(versions, axis=ax)
    mapped = sorted(stacked)

    def run(*m):
        return case.call(_with(args, mapped, m))

    got = jax.jit(jax.vmap(run))(*(jnp.asarray(np.moveaxis(stacked[i], axes[i], 0))
                                   for i in mapped))
    for k in range(3):
        one = _with(args, mapped, [jnp.asarray(np.take(stacked[i], k, axis=axes[i]))
                                   for i in mapped])
        for g, w in zip(_leaves(got), _leaves(case.call(one))):
            np.testing.assert_allclose(g[k], w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vmap_over_batch_matches_loop(case, x64):
    args = case.args(np.float64)
    axes = case.vmap_axes or (0,)
    _vmap_check(case, args, {i: ax for i, ax in enumerate(axes)})


@pytest.mark.parametrize("case", [c for c in CASES if c.name in (
    "conv2d", "conv_transpose2d", "banded_matmul", "locally_connected1d", "lstm", "gru_cell",
    "masked_matmul")], ids=lambda c: c.name)
def test_vmap_over_weights_matches_loop(case, x64):
    # mapped weights cannot be folded into the batch: one fastnn call per element
    args = case.args(np.float64)
    floats = [i for i, a in enumerate(args) if isinstance(a, jax.Array)
              and jnp.issubdtype(a.dtype, jnp.floating)]
    _vmap_check(case, args, {i: 0 for i in floats})


@pytest.mark.parametrize("name", ["conv2d", "lstm", "max_pool2d", "softmax_cross_entropy",
                                  "locally_connected2d"])
def test_per_example_grads(name, x64):
    # vmap of grad: weight gradients per example (the backward loops), input gradients folded
    case = CASES[IDS.index(name)]
    args = case.args(np.float64)
    argnums = case.diff_argnums(args)
    weights = _weights(case.call(args))
    loss = _loss(case.call_ref, argnums, args, weights)
    mine = _loss(case.call, argnums, args, weights)
    rng = np.random.default_rng(4)
    xs = jnp.stack([args[0], args[0] + jnp.asarray(rng.standard_normal(args[0].shape))])
    all_args = tuple(range(len(argnums)))

    def per(f):
        def one(x):
            return jax.grad(f, argnums=all_args)(x, *(args[i] for i in argnums[1:]))
        return one

    got = jax.jit(jax.vmap(per(mine)))(xs)
    for k in range(2):
        want = per(loss)(xs[k])
        for a, b in zip(got, want):
            assert_close(np.asarray(a)[k], b, np.float64, name)


def test_nested_vmap_and_grad_of_vmap(x64):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 3, 2, 3, 6, 6)))
    w = jnp.asarray(rng.standard_normal((4, 3, 3, 3)))
    f = jax.vmap(jax.vmap(lambda x: fj.conv2d(x, w, padding=1)))
    ref = jax.vmap(jax.vmap(lambda x: conv2d_ref(x, w, padding=1)))
    assert_close(f(x), ref(x), np.float64, "nested vmap")
    g = jax.grad(lambda w: jnp.sum(jax.vmap(lambda x: fj.conv2d(x, w) ** 2)(x[0])))(w)
    g_ref = jax.grad(lambda w: jnp.sum(jax.vmap(lambda x: conv2d_ref(x, w) ** 2)(x[0])))(w)
    assert_close(g, g_ref, np.float64, "grad of vmap")


def test_max_pool_indices(x64):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 6, 6)))
    y, idx = fj.max_pool2d(x, 2, return_indices=True)
    y_np, idx_np = fastnn.max_pool2d(np.asarray(x), 2, return_indices=True)
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_array_equal(idx, idx_np)
    assert idx.dtype == np.int64
    g = jax.grad(lambda x: fj.max_pool2d(x, 2, return_indices=True)[0].sum())(x)
    g_ref = jax.grad(lambda x: max_pool_ref(x, 2).sum())(x)
    np.testing.assert_array_equal(g, g_ref)
    with jax.enable_x64(False):
        _, idx32 = fj.max_pool2d(np.asarray(x, np.float32), 2, return_indices=True)
        assert idx32.dtype == np.int32


def test_no_gradient_for_labels_or_class_weights():
    logits = jnp.zeros((2, 3))
    probs = jnp.full((2, 3), 1 / 3)
    with pytest.raises(NotImplementedError, match="no gradient with respect to labels"):
        jax.grad(fj.softmax_cross_entropy, argnums=1)(logits, probs)
    with pytest.raises(NotImplementedError, match="no gradient with respect to weight"):
        jax.grad(lambda w: fj.softmax_cross_entropy(logits, jnp.array([0, 1]), weight=w))(
            jnp.ones(3))
    # with their gradients stopped, the logits' gradient is fastnn's
    g = jax.grad(lambda z, p: fj.softmax_cross_entropy(z, jax.lax.stop_gradient(p)))(logits, probs)
    np.testing.assert_allclose(g, np.zeros((2, 3)), atol=1e-7)


def test_unneeded_gradients_are_skipped(monkeypatch):
    # only what the caller differentiates is computed (fastnn's need_* flags)
    calls = []
    real = fastnn.conv2d_backward

    def spy(*args, **kwargs):
        calls.append({k: kwargs[k] for k in ("bias", "need_input_grad", "need_weight_grad")})
        return real(*args, **kwargs)

    monkeypatch.setattr(fj._CONV2D, "_b", spy)
    x, w, b = jnp.ones((1, 2, 5, 5)), jnp.ones((3, 2, 3, 3)), jnp.ones(3)
    g = jax.grad(lambda w: fj.conv2d(x, w, b).sum())(w)
    np.testing.assert_allclose(g, np.full((3, 2, 3, 3), 9.0))
    assert calls == [dict(bias=False, need_input_grad=False, need_weight_grad=True)]


def test_mixed_dtypes_promote(x64):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 2, 5, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 2, 3, 3)))
    y = fj.conv2d(x, w)
    assert y.dtype == jnp.float64
    gx = jax.grad(lambda x: fj.conv2d(x, w).sum())(x)
    assert gx.dtype == jnp.float32


def test_errors_raised_at_call_time():
    x = jnp.ones((1, 3, 5, 5))
    with pytest.raises(ValueError, match="weight has 2 input channels per group, x has 3"):
        fj.conv2d(x, jnp.ones((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="weight has 2 input channels per group"):
        jax.jit(lambda x: fj.conv2d(x, jnp.ones((4, 2, 3, 3))))(x)
    with pytest.raises(TypeError, match="conv2d: weight must have dtype float32 or float64"):
        fj.conv2d(x, jnp.ones((4, 3, 3, 3), jnp.int32))
    with pytest.raises(TypeError, match="relu: x must have dtype float32 or float64"):
        fj.relu(jnp.ones(3, jnp.float16))
    with pytest.raises(ValueError, match="layout"):
        fj.max_pool2d(x, 2, layout="CHWN")
    with pytest.raises(ValueError, match="lstm: h0"):
        fj.lstm(jnp.ones((2, 3, 4)), jnp.ones((3, 5)), None, jnp.ones((9, 20)), jnp.ones(20))
    with pytest.raises(ValueError, match="axis 2 is out of bounds"):
        fj.softmax(jnp.ones((2, 2)), axis=2)
    with pytest.raises(ValueError, match="return_indices"):
        fj.avg_pool2d(x, 2, return_indices=True)
    # messages name the caller's shapes, not the empty batch the output shape comes from
    with pytest.raises(ValueError, match=r"for x of shape \(2, 5, 6, 3\)"):
        fj.locally_connected2d(jnp.ones((2, 5, 6, 3)), jnp.ones((2, 3, 18, 4)), kernel_size=3,
                               stride=2)
    with pytest.raises(ValueError, match=r"banded_matmul: x has 7 features .*\(2, 3, 7\)"):
        fj.banded_matmul(jnp.ones((2, 3, 7)), jnp.ones((6, 5)), 1, 1)


def test_inputs_unchanged():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    before = x.copy(), w.copy()
    jax.grad(lambda x, w: fj.relu(fj.conv2d(x, w)).sum(), argnums=(0, 1))(x, w)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(w, before[1])


_DROPPED = {"out", "out_h", "out_c", "training"}


@pytest.mark.parametrize("name", fj.__all__)
def test_signature_matches_fastnn(name):
    mine = inspect.signature(getattr(fj, name)).parameters
    theirs = inspect.signature(getattr(fastnn, name)).parameters
    want = [(p.name, p.kind, p.default) for p in theirs.values() if p.name not in _DROPPED]
    assert [(p.name, p.kind, p.default) for p in mine.values()] == want


def test_every_forward_with_a_backward_is_wrapped():
    forwards = {n[:-len("_backward")] for n in fastnn.__all__ if n.endswith("_backward")}
    assert forwards == set(fj.__all__)


def test_uses_the_real_jax_and_is_not_imported_by_fastnn():
    assert fj.jax.__name__ == "jax" and "fastnn" not in fj.jax.__file__
    code = "import sys, fastnn; print('fastnn.jax' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_import_error_names_the_extra():
    code = ("import sys; sys.modules['jax'] = None\n"
            "try:\n    import fastnn.jax\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "fastnn[jax]"' in out.stdout


# ------------------------------------------------------------------ host-call paths
def _prims(fn, *args):
    """The host-call primitives in the jaxpr of ``fn`` (nested jaxprs included)."""
    text = str(jax.make_jaxpr(fn)(*args))
    return {p for p in ("ffi_call", "pure_callback") if p in text}


def test_default_path_is_ffi(x64):
    assert fj._host_call_path() == "ffi"
    x = jnp.ones((1, 2, 5, 5))
    w = jnp.ones((3, 2, 3, 3))
    assert _prims(lambda x: fj.conv2d(x, w), x) == {"ffi_call"}
    assert _prims(jax.grad(lambda x: fj.conv2d(x, w).sum()), x) == {"ffi_call"}
    assert _prims(jax.vmap(lambda x: fj.conv2d(x, w)), x[None]) == {"ffi_call"}
    eqn = jax.make_jaxpr(lambda x: fj.relu(x))(x).eqns[0].params["call_jaxpr"].eqns[0]
    assert eqn.primitive.name == "ffi_call" and eqn.params["has_side_effect"] is False


@pytest.mark.parametrize("name", ["conv2d", "max_pool2d", "relu", "softmax_cross_entropy",
                                  "lstm"])
def test_pure_callback_path(name, pure_callback, x64):
    case = CASES[IDS.index(name)]
    args = case.args(np.float64)
    arrays = _traced(args)
    assert _prims(lambda *a: case.call(_with(args, arrays, a)),
                  *(args[i] for i in arrays)) == {"pure_callback"}
    test_float64_forward_and_grad_eager_and_jit(case, None)
    test_vmap_over_batch_matches_loop(case, None)


def test_paths_agree_bitwise(monkeypatch):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 3, 6, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, 3, 3, 3)), jnp.float32)

    def run():
        loss = lambda x, w: (fj.relu(fj.conv2d(x, w, padding=1)) ** 2).sum()  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)

    ffi = run()
    monkeypatch.setenv(SWITCH, "pure_callback")
    pure = run()
    for a, b in zip(jax.tree_util.tree_leaves(ffi), jax.tree_util.tree_leaves(pure)):
        np.testing.assert_array_equal(a, b)


def test_switch_values(monkeypatch):
    monkeypatch.setenv(SWITCH, " Pure_Callback ")
    assert fj._host_call_path() == "pure_callback"
    monkeypatch.setenv(SWITCH, "ffi")
    assert fj._host_call_path() == "ffi"
    monkeypatch.setenv(SWITCH, "")
    assert fj._host_call_path() == "ffi"
    monkeypatch.setenv(SWITCH, "cffi")
    with pytest.raises(ValueError, match="FASTNN_JAX_CALLBACK must be one of ffi, pure_callback"):
        fj.relu(jnp.ones(3))


def test_falls_back_to_pure_callback_without_ffi(monkeypatch):
    monkeypatch.setitem(_jax_ffi._STATE, "ok", False)
    assert fj._host_call_path() == "pure_callback"
    x = jnp.arange(-2.0, 3.0)
    assert _prims(lambda x: fj.relu(x), x) == {"pure_callback"}
    np.testing.assert_array_equal(jax.jit(fj.relu)(x), [0, 0, 0, 1, 2])
    # a jax whose jax.ffi lacks ffi_call: nothing is registered, the answer is no
    monkeypatch.delattr(jax.ffi, "ffi_call")
    kept = len(_jax_ffi._KEEP)
    assert _jax_ffi._register() is False
    assert len(_jax_ffi._KEEP) == kept


class _FakeHost:
    """A host-call target for the handler tests: returns ``outs`` or raises ``error``."""
    vmap_method = "broadcast_all"

    def __init__(self, out_specs, outs=None, error=None):
        self.out_specs, self.outs, self.error, self.calls = tuple(out_specs), outs, error, []

    def __call__(self, *arrays):
        self.calls.append([np.array(a) for a in arrays])
        if self.error is not None:
            raise self.error
        return self.outs(*arrays)


def test_error_inside_the_handler_surfaces_under_jit():
    # value-dependent: only the kernel can see it
    logits = jnp.zeros((2, 3))
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"ValueError: softmax_cross_entropy: labels must be class "
                             r"indices in \[0, 3\), got 5"):
        jax.jit(fj.softmax_cross_entropy)(logits, jnp.array([0, 5]))
    # a forced failure in the handler's target
    spec = jax.ShapeDtypeStruct((3,), jnp.float32)
    host = _FakeHost([spec], error=ValueError("bad shape (3,) for this kernel"))
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"INVALID_ARGUMENT: ValueError: bad shape \(3,\) for this kernel"):
        jax.jit(lambda x: _jax_ffi.call(host, (x,))[0])(jnp.ones(3)).block_until_ready()
    assert len(host.calls) == 1
    # a wrong result shape is refused, not copied
    host = _FakeHost([spec], outs=lambda x: (np.ones(4, np.float32),))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"a result of shape \(4,\)"):
        jax.jit(lambda x: _jax_ffi.call(host, (x,))[0])(jnp.ones(3)).block_until_ready()
    # and the process goes on
    np.testing.assert_allclose(jax.jit(fj.softmax_cross_entropy)(logits, jnp.array([0, 2])),
                               np.log(3), rtol=1e-6)


def test_kernel_error_in_the_backward_surfaces(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("conv2d_backward: broken on purpose")

    x, w = jnp.ones((1, 2, 5, 5)), jnp.ones((3, 2, 3, 3))
    f = jax.jit(jax.grad(lambda w: fj.conv2d(x, w).sum()))
    monkeypatch.setattr(fj._CONV2D, "_b", broken)
    with pytest.raises(jax.errors.JaxRuntimeError, match="broken on purpose"):
        f(w).block_until_ready()
    monkeypatch.undo()
    np.testing.assert_allclose(jax.jit(jax.grad(lambda w: fj.conv2d(x, w).sum()))(w), 9.0)


@pytest.mark.parametrize("path", ["ffi", "pure_callback"])
def test_zero_size_inputs(path, monkeypatch):
    monkeypatch.setenv(SWITCH, path)
    x = jnp.zeros((0, 3))
    assert jax.jit(fj.relu)(x).shape == (0, 3)
    assert jax.grad(lambda x: fj.relu(x).sum())(x).shape == (0, 3)
    w = jnp.ones((4, 3, 3, 3))
    xs = jnp.zeros((0, 3, 8, 8))
    assert jax.jit(lambda x: fj.conv2d(x, w))(xs).shape == (0, 4, 6, 6)
    gx, gw = jax.jit(jax.grad(lambda x, w: fj.conv2d(x, w).sum(), argnums=(0, 1)))(xs, w)
    assert gx.shape == (0, 3, 8, 8)
    np.testing.assert_array_equal(gw, np.zeros((4, 3, 3, 3)))
    assert jax.vmap(fj.relu)(jnp.zeros((2, 0))).shape == (2, 0)


def test_float64_on_the_ffi_path(x64):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 7, 7)), rng.standard_normal((4, 3, 3, 3))
    f = jax.jit(lambda x, w: fj.conv2d(x, w, stride=2))
    assert _prims(f, x, w) == {"ffi_call"}
    y = f(x, w)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, fastnn.conv2d(x, w, stride=2))
    g = jax.jit(jax.grad(lambda x: fj.tanh(x).sum()))(x)
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, 1 - np.tanh(x) ** 2, rtol=1e-12)


def _conv_step():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 3, 8, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, 3, 3, 3)), jnp.float32)
    f = jax.jit(jax.value_and_grad(lambda w, x: fj.relu(fj.conv2d(x, w)).sum()))
    return f, x, w


def test_calls_from_other_threads():
    f, x, w = _conv_step()
    want = jax.tree_util.tree_map(np.asarray, f(w, x))
    results, errors = {}, []

    def work(k):
        try:
            for i in range(15):
                results[k, i] = jax.tree_util.tree_map(np.asarray, f(w * (k + 1), x))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    for k in range(4):
        one = jax.tree_util.tree_map(np.asarray, f(w * (k + 1), x))
        for i in range(15):
            for a, b in zip(jax.tree_util.tree_leaves(results[k, i]),
                            jax.tree_util.tree_leaves(one)):
                np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(results[0, 0]), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_async_dispatch_results_read_after_blocking():
    f, x, w = _conv_step()
    pending = [f(w + 0.01 * i, x) for i in range(40)]    # no blocking in between
    jax.block_until_ready(pending)
    for i in (0, 17, 39):
        v, g = f(w + 0.01 * i, x)
        np.testing.assert_array_equal(pending[i][0], v)
        np.testing.assert_array_equal(pending[i][1], g)


def test_many_signatures_in_one_process():
    before = len(_jax_ffi._HOSTS)
    rng = np.random.default_rng(5)
    for n in range(1, 41):
        x = rng.standard_normal((n, 3)).astype(np.float32)
        np.testing.assert_array_equal(jax.jit(fj.relu)(x), np.maximum(x, 0))
        np.testing.assert_array_equal(fj.relu(x), np.maximum(x, 0))
    for size in range(3, 13):
        x = rng.standard_normal((1, 2, size, size)).astype(np.float32)
        w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
        np.testing.assert_array_equal(jax.jit(lambda x, w: fj.conv2d(x, w))(x, w),
                                      fastnn.conv2d(x, w))
        gx, gw, gb = fastnn.conv2d_backward(np.ones((1, 3, size - 2, size - 2), np.float32),
                                            x, w)
        np.testing.assert_array_equal(jax.grad(lambda w: fj.conv2d(x, w).sum())(w), gw)
    hosts = list(_jax_ffi._HOSTS.items())[before:]
    assert len(hosts) >= 40 + 20
    assert len({id(h) for _, h in hosts}) == len(hosts)


def test_unused_results_are_dropped_like_pure_callback():
    # ffi_call has no side effect: an unused result costs no host call
    x = jnp.ones(3)
    used = jax.jit(lambda x: fj.relu(x) + 1).lower(x).compile().as_text()
    unused = jax.jit(lambda x: (fj.relu(x), x + 1)[1]).lower(x).compile().as_text()
    assert _jax_ffi.TARGET in used and _jax_ffi.TARGET not in unused


# ------------------------------------------------------------------ the handler's protocol
_CODES = {np.dtype(v): k for k, v in _jax_ffi._DTYPES.items()}


class _Frame:
    """An XLA_FFI_CallFrame as XLA builds it, over NumPy arrays (everything it points to
    is kept alive by this object)."""

    def __init__(self, key, args, rets, stage=3, errors=None, version=(0, 3),
                 codes=None):
        J = _jax_ffi
        self.keep = []
        codes = codes or {}
        self.frame = J._CallFrame()
        self.frame.struct_size = J._CALL_FRAME_SIZE
        self.frame.stage = stage
        self.frame.args = self._table([self._buffer(a, codes.get(i)) for i, a in
                                       enumerate(args)])
        self.frame.rets = self._table([self._buffer(r) for r in rets])
        value = ctypes.c_int64(key)
        scalar = J._Scalar(J._S64, ctypes.addressof(value))
        types = (ctypes.c_int * 1)(J._ATTR_SCALAR)
        attrs = (ctypes.c_void_p * 1)(ctypes.addressof(scalar))
        self.keep += [value, scalar, types, attrs]
        self.frame.attrs = J._Attrs(ctypes.sizeof(J._Attrs), None, 1, types, None, attrs)
        self.errors = errors if errors is not None else []

        @J._ERROR_CREATE_TYPE
        def create(args_p):
            a = args_p.contents
            assert a.struct_size == J._ERROR_CREATE_ARGS_SIZE
            self.errors.append((a.errc, a.message.decode()))
            return 0x5A5A                      # XLA's error object, as far as we know
        api = J._Api()
        api.struct_size = ctypes.sizeof(api)
        api.api_version = J._ApiVersion(J._API_VERSION_SIZE, None, *version)
        api.error_create = ctypes.cast(create, ctypes.c_void_p).value
        self.keep += [create, api]
        self.frame.api = ctypes.pointer(api)

    def _buffer(self, a, code=None):
        J = _jax_ffi
        dims = (ctypes.c_int64 * max(a.ndim, 1))(*a.shape)
        buf = J._Buffer(ctypes.sizeof(J._Buffer), None, code or _CODES[a.dtype],
                        a.ctypes.data if a.size else None, a.ndim, dims)
        self.keep += [a, dims, buf]
        return buf

    def _table(self, buffers):
        n = len(buffers)
        types = (ctypes.c_int * max(n, 1))(*([_jax_ffi._BUFFER] * n))
        ptrs = (ctypes.c_void_p * max(n, 1))(*(ctypes.addressof(b) for b in buffers))
        self.keep += [types, ptrs]
        return _jax_ffi._Args(ctypes.sizeof(_jax_ffi._Args), None, n, types, ptrs)

    def handle(self):
        return _jax_ffi._handle(ctypes.addressof(self.frame))


def _host(outs=None, error=None):
    host = _FakeHost([], outs, error)
    return host, _jax_ffi.key_of(host)


def test_handler_executes_on_views_of_the_buffers():
    host, key = _host(outs=lambda a, b: (a + b, (a * b).astype(np.int64)))
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = np.full((2, 3), 2, np.int32)
    r0, r1 = np.zeros((2, 3), np.int32), np.zeros((2, 3), np.int64)
    frame = _Frame(key, [a, b], [r0, r1])
    seen = []
    host.outs = lambda a, b: (seen.append(a) or a + b, (a * b).astype(np.int64))
    assert frame.handle() is None and not frame.errors
    np.testing.assert_array_equal(r0, a + 2)
    np.testing.assert_array_equal(r1, a * 2)
    view = seen[0]
    assert not view.flags.writeable and view.ctypes.data == a.ctypes.data   # no copy


def test_handler_answers_the_metadata_query_with_the_running_api_version():
    J = _jax_ffi
    host, key = _host(outs=lambda a: (a,))
    a = np.ones(3, np.float32)
    frame = _Frame(key, [a], [np.zeros(3, np.float32)], version=(0, 42))
    meta = J._Metadata()
    meta.struct_size = J._METADATA_SIZE
    meta.traits = 7
    ext = J._MetadataExtension(J._ExtensionBase(ctypes.sizeof(J._MetadataExtension),
                                                J._EXTENSION_METADATA, None),
                               ctypes.pointer(meta))
    other = J._ExtensionBase(ctypes.sizeof(J._ExtensionBase), 99,
                             ctypes.cast(ctypes.pointer(ext), ctypes.POINTER(J._ExtensionBase)))
    frame.keep += [meta, ext, other]
    frame.frame.extension_start = ctypes.pointer(other)     # found along the chain
    assert frame.handle() is None and not frame.errors
    assert (meta.api_version.major_version, meta.api_version.minor_version) == (0, 42)
    assert meta.api_version.struct_size == J._API_VERSION_SIZE and meta.traits == 0
    assert host.calls == []                                  # a query runs nothing


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_handler_acts_only_on_the_execute_stage(stage):
    host, key = _host(outs=lambda a: (a,))
    frame = _Frame(key, [np.ones(2)], [np.zeros(2)], stage=stage)
    assert frame.handle() is None and not frame.errors and host.calls == []


@pytest.mark.parametrize("error, code", [(ValueError("bad shape"), 3),
                                         (NotImplementedError("bad shape"), 12),
                                         (KeyError("bad shape"), 13),
                                         (KeyboardInterrupt("bad shape"), 13)])
def test_handler_turns_exceptions_into_xla_errors(error, code):
    host, key = _host(error=error)
    out = np.zeros(2)
    frame = _Frame(key, [np.ones(2)], [out])
    assert frame.handle() == 0x5A5A
    [(errc, message)] = frame.errors
    assert errc == code
    assert message.startswith(f"{type(error).__name__}: ") and "bad shape" in message
    assert "Traceback" in message
    np.testing.assert_array_equal(out, 0)


def test_handler_refuses_what_it_cannot_read():
    host, key = _host(outs=lambda a: (a,))
    frame = _Frame(key, [np.ones(2, np.complex64)], [np.zeros(2, np.float32)],
                   codes={0: 15})                            # XLA_FFI_DataType_C64
    assert frame.handle() == 0x5A5A
    assert "unsupported XLA buffer dtype code 15" in frame.errors[0][1]
    frame = _Frame(10 ** 12, [np.ones(2)], [np.zeros(2)])    # a key no host has
    assert frame.handle() == 0x5A5A
    assert "no registered host" in frame.errors[0][1]
    frame = _Frame(key, [np.ones(2)], [np.zeros(2)])
    frame.frame.struct_size = 16                             # an older, smaller call frame
    assert frame.handle() == 0x5A5A and "XLA_FFI_CallFrame of 16 bytes" in frame.errors[0][1]
    assert host.calls == []


def test_handler_zero_size_and_null_data():
    host, key = _host(outs=lambda a: (a * 2,))
    a, out = np.zeros((0, 4)), np.zeros((0, 4))
    frame = _Frame(key, [a], [out])                         # data pointers are NULL
    assert frame.handle() is None and not frame.errors
    assert host.calls[0][0].shape == (0, 4)
    host, key = _host(outs=lambda a: (a,))
    frame = _Frame(key, [np.ones(3)], [np.zeros(3)])
    ctypes.cast(frame.frame.args.args[0], ctypes.POINTER(_jax_ffi._Buffer)).contents.data = None
    assert frame.handle() == 0x5A5A and "no data" in frame.errors[0][1]


def test_handler_scalars():
    host, key = _host(outs=lambda a: (np.asarray(a + 1), ))
    out = np.zeros((), np.float32)
    frame = _Frame(key, [np.array(2.0, np.float32)], [out])
    assert frame.handle() is None and not frame.errors
    assert out == 3.0


def test_export_is_refused():
    # an executable names its host by a number of this process: not portable
    with pytest.raises(ValueError, match="custom calls whose targets have no compatibility"):
        jax.export.export(jax.jit(lambda x: fj.relu(x)))(jnp.ones(3))
