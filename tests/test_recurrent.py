"""Tests of fastnn.recurrent (LSTM, GRU, SimpleRNN cells and sequences with backward)
and fastnn.convert.

Against the float64 cell equations of tests/reference.py (property tests over random
sizes and dtypes), finite differences in float64 for every backward, PyTorch (where
installed) through the converters, the bad-input rules, memory layouts, empty batches,
out= buffers, and thread-count determinism.
"""
import os
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastnn
import fastnn.convert as convert
import reference as ref
from helpers import (DTYPES, assert_close, assert_finite_difference_grads, call_raises,
                     property_settings, run_at_simd_level, snapshot)

PROPERTY = property_settings(25)


def _lstm_params(rng, I, H, scale=0.5):
    return rng.standard_normal((I + H, 4 * H)) * scale, rng.standard_normal(4 * H) * scale


def _gru_params(rng, I, H, reset_after, scale=0.5):
    bias = rng.standard_normal((2, 3 * H) if reset_after else 3 * H) * scale
    return (rng.standard_normal((I, 3 * H)) * scale, rng.standard_normal((H, 3 * H)) * scale,
            bias)


def _rnn_params(rng, I, H, scale=0.5):
    return (rng.standard_normal((I, H)) * scale, rng.standard_normal((H, H)) * scale,
            rng.standard_normal(H) * scale)


def _cast(dtype, *arrays):
    return [None if a is None else np.asarray(a).astype(dtype) for a in arrays]


SIZES = st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 5), st.integers(1, 6))


# ------------------------------------------------------------------ forward vs reference
@PROPERTY
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), fb=st.sampled_from([0.0, 1.0, -0.5]),
       seed=st.integers(0, 2**32 - 1))
def test_lstm_cell_matches_reference(sizes, dtype, fb, seed):
    B, _, I, H = sizes
    rng = np.random.default_rng(seed)
    x, h, c = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    kernel, bias = _lstm_params(rng, I, H)
    args = _cast(dtype, x, h, c, kernel, bias)
    h_new, c_new = fastnn.lstm_cell(*args, forget_bias=fb)
    want_h, want_c = ref.lstm_cell(*args, forget_bias=fb)
    assert h_new.dtype == dtype and c_new.dtype == dtype
    assert_close(h_new, want_h, dtype, "h_new")
    assert_close(c_new, want_c, dtype, "c_new")


@PROPERTY
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), time_major=st.booleans(),
       state=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_lstm_matches_reference(sizes, dtype, time_major, state, seed):
    B, T, I, H = sizes
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I) if time_major else (B, T, I))
    h0, c0 = (rng.standard_normal((B, H)), rng.standard_normal((B, H))) if state else (None, None)
    kernel, bias = _lstm_params(rng, I, H)
    x, h0, c0, kernel, bias = _cast(dtype, x, h0, c0, kernel, bias)
    out, (h, c) = fastnn.lstm(x, h0, c0, kernel, bias, forget_bias=0.5, time_major=time_major)
    want, want_h, want_c = ref.lstm(x, h0, c0, kernel, bias, 0.5, time_major)
    assert out.dtype == dtype
    assert_close(out, want, dtype, "outputs")
    assert_close(h, want_h, dtype, "h_T")
    assert_close(c, want_c, dtype, "c_T")
    # the training form computes the same forward
    out2, (h2, c2), _ = fastnn.lstm(x, h0, c0, kernel, bias, forget_bias=0.5,
                                    time_major=time_major, training=True)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(c2, c)


@PROPERTY
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), reset_after=st.booleans(),
       time_major=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_gru_matches_reference(sizes, dtype, reset_after, time_major, seed):
    B, T, I, H = sizes
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I) if time_major else (B, T, I))
    h0 = rng.standard_normal((B, H))
    params = _gru_params(rng, I, H, reset_after)
    x, h0, *params = _cast(dtype, x, h0, *params)
    out, h = fastnn.gru(x, h0, *params, reset_after=reset_after, time_major=time_major)
    want, want_h = ref.gru(x, h0, *params, reset_after=reset_after, time_major=time_major)
    assert out.dtype == dtype
    assert_close(out, want, dtype, "outputs")
    assert_close(h, want_h, dtype, "h_T")
    cell = fastnn.gru_cell(x[0] if time_major else x[:, 0], h0, *params,
                           reset_after=reset_after) if T else None
    if T:
        assert_close(cell, ref.gru_cell(x[0] if time_major else x[:, 0], h0, *params,
                                        reset_after), dtype, "gru_cell")


@PROPERTY
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), activation=st.sampled_from(["tanh", "relu"]),
       time_major=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_simple_rnn_matches_reference(sizes, dtype, activation, time_major, seed):
    B, T, I, H = sizes
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I) if time_major else (B, T, I))
    h0 = rng.standard_normal((B, H))
    x, h0, *params = _cast(dtype, x, h0, *_rnn_params(rng, I, H))
    out, h = fastnn.simple_rnn(x, h0, *params, activation=activation, time_major=time_major)
    want, want_h = ref.simple_rnn(x, h0, *params, activation, time_major)
    # The error scale: the same recurrence on absolute values without the squashing
    # (both activations have slope at most 1), which bounds the summands' sizes. A
    # state that cancels to almost nothing (relu of a pre-activation near 0, say
    # 1e-4 from terms of order 1) carries float32 rounding of those terms, not of itself.
    abs_out, abs_h = ref.simple_rnn(abs(x), abs(h0), *(abs(p) for p in params), "relu",
                                    time_major)
    assert out.dtype == dtype
    assert_close(out, want, dtype, "outputs", abs_out)
    assert_close(h, want_h, dtype, "h_T", abs_h)


@pytest.mark.parametrize("B", [1, 3, 4, 5, 9])
def test_lstm_cell_batch_paths(B):
    # Small batches take the in-loop product, larger ones BLAS: both match the reference.
    rng = np.random.default_rng(B)
    I, H = 13, 24
    x, h, c = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    kernel, bias = _lstm_params(rng, I, H)
    for dtype in DTYPES:
        args = _cast(dtype, x, h, c, kernel, bias)
        got = fastnn.lstm_cell(*args)
        want = ref.lstm_cell(*args)
        assert_close(got[0], want[0], dtype, "h")
        assert_close(got[1], want[1], dtype, "c")
        out, (hT, cT) = fastnn.lstm(args[0][:, None], *args[1:])
        assert_close(hT, want[0], dtype, "lstm h")


@pytest.mark.parametrize("H", [4, 8, 24, 7])
@pytest.mark.parametrize("panels", [True, False])
def test_lstm_recurrent_product_paths(H, panels):
    # Batches above the small-batch path multiply by a packed copy of the recurrent
    # kernel (when 4H is a whole number of panels) or through BLAS: both match.
    from fastnn_ext import _recurrent
    rng = np.random.default_rng(H)
    B, T, I = 9, 5, 5
    x, h0, c0 = rng.standard_normal((B, T, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    kernel, bias = _lstm_params(rng, I, H)
    go = rng.standard_normal((B, T, H))
    _recurrent._use_panels(panels)
    try:
        for dtype in DTYPES:
            args = _cast(dtype, x, h0, c0, kernel, bias)
            out, (h, c), cache = fastnn.lstm(*args, training=True)
            want, _, want_c = ref.lstm(*args)
            assert_close(out, want, dtype, "outputs")
            assert_close(c, want_c, dtype, "c_T")
            grads = fastnn.lstm_backward(go.astype(dtype), None, None, cache)
            if dtype == np.float64:
                def loss():
                    return np.sum(ref.lstm(x, h0, c0, kernel, bias)[0] * go)
                assert_finite_difference_grads(loss, grads, [x, h0, c0, kernel, bias],
                                               ["x", "h0", "c0", "kernel", "bias"], tol=1e-6)
    finally:
        _recurrent._use_panels(True)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("time_major", [False, True])
def test_lstm_backward_finite_differences(time_major):
    rng = np.random.default_rng(1)
    B, T, I, H = 2, 3, 3, 2
    x = rng.standard_normal((T, B, I) if time_major else (B, T, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    kernel, bias = _lstm_params(rng, I, H, 0.8)
    out, (h, c), cache = fastnn.lstm(x, h0, c0, kernel, bias, forget_bias=0.3,
                                     time_major=time_major, training=True)
    go, gh, gc = rng.standard_normal(out.shape), rng.standard_normal((B, H)), rng.standard_normal((B, H))

    def loss():
        o, hT, cT = ref.lstm(x, h0, c0, kernel, bias, 0.3, time_major)
        return np.sum(o * go) + np.sum(hT * gh) + np.sum(cT * gc)

    got = fastnn.lstm_backward(go, gh, gc, cache)
    assert_finite_difference_grads(loss, got, [x, h0, c0, kernel, bias],
                                   ["x", "h0", "c0", "kernel", "bias"], tol=1e-6)
    # the cache is not consumed: a second backward gives the same
    again = fastnn.lstm_backward(go, gh, gc, cache)
    for a, b in zip(got, again):
        np.testing.assert_array_equal(a, b)


def test_lstm_backward_none_gradients_are_zero():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 3))
    kernel, bias = _lstm_params(rng, 3, 4)
    out, (h, c), cache = fastnn.lstm(x, None, None, kernel, bias, training=True)
    gh = rng.standard_normal((2, 4))
    a = fastnn.lstm_backward(None, gh, None, cache)
    b = fastnn.lstm_backward(np.zeros_like(out), gh, np.zeros((2, 4)), cache)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    zero = fastnn.lstm_backward(None, None, None, cache)
    assert all(not np.any(g) for g in zero)


def test_lstm_cell_backward_finite_differences():
    rng = np.random.default_rng(3)
    B, I, H = 2, 3, 2
    x, h, c = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    kernel, bias = _lstm_params(rng, I, H, 0.8)
    gh, gc = rng.standard_normal((B, H)), rng.standard_normal((B, H))

    def loss():
        hn, cn = ref.lstm_cell(x, h, c, kernel, bias, 1.0)
        return np.sum(hn * gh) + np.sum(cn * gc)

    got = fastnn.lstm_cell_backward(gh, gc, x, h, c, kernel, bias)
    assert_finite_difference_grads(loss, got, [x, h, c, kernel, bias],
                                   ["x", "h", "c", "kernel", "bias"], tol=1e-6)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_backward_finite_differences(reset_after):
    rng = np.random.default_rng(4)
    B, T, I, H = 2, 3, 3, 2
    x, h0 = rng.standard_normal((B, T, I)), rng.standard_normal((B, H))
    kernel, rk, bias = _gru_params(rng, I, H, reset_after, 0.8)
    out, h, cache = fastnn.gru(x, h0, kernel, rk, bias, reset_after=reset_after, training=True)
    go, gh = rng.standard_normal(out.shape), rng.standard_normal((B, H))

    def loss():
        o, hT = ref.gru(x, h0, kernel, rk, bias, reset_after)
        return np.sum(o * go) + np.sum(hT * gh)

    got = fastnn.gru_backward(go, gh, cache)
    assert_finite_difference_grads(loss, got, [x, h0, kernel, rk, bias],
                                   ["x", "h0", "kernel", "recurrent_kernel", "bias"], tol=1e-6)
    cell = fastnn.gru_cell_backward(gh, x[:, 0], h0, kernel, rk, bias, reset_after=reset_after)
    xs = x[:, 0].copy()

    def cell_loss_x():
        return np.sum(ref.gru_cell(xs, h0, kernel, rk, bias, reset_after) * gh)

    assert_finite_difference_grads(cell_loss_x, cell, [xs, h0, kernel, rk, bias],
                                   ["x", "h", "kernel", "recurrent_kernel", "bias"], tol=1e-6)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_simple_rnn_backward_finite_differences(activation):
    rng = np.random.default_rng(5)
    B, T, I, H = 2, 3, 3, 3
    x, h0 = rng.standard_normal((B, T, I)), rng.standard_normal((B, H))
    params = list(_rnn_params(rng, I, H, 0.8))
    out, h, cache = fastnn.simple_rnn(x, h0, *params, activation=activation, training=True)
    go, gh = rng.standard_normal(out.shape), rng.standard_normal((B, H))

    def loss():
        o, hT = ref.simple_rnn(x, h0, *params, activation)
        return np.sum(o * go) + np.sum(hT * gh)

    got = fastnn.simple_rnn_backward(go, gh, cache)
    assert_finite_difference_grads(loss, got, [x, h0] + params,
                                   ["x", "h0", "kernel", "recurrent_kernel", "bias"], tol=1e-6)


# ------------------------------------------------------------------ PyTorch
def _t(torch, a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("batch_first", [True, False])
def test_lstm_matches_torch(batch_first):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    B, T, I, H = 3, 4, 5, 6
    torch.manual_seed(0)
    m = torch.nn.LSTM(I, H, batch_first=batch_first).double()
    w = [p.detach().numpy() for p in (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)]
    kernel, bias = convert.lstm_from_torch(*w)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    xt, h0t, c0t = _t(torch, x, True), _t(torch, h0[None], True), _t(torch, c0[None], True)
    out_t, (h_t, c_t) = m(xt, (h0t, c0t))
    out, (h, c), cache = fastnn.lstm(x, h0, c0, kernel, bias, forget_bias=0.0,
                                     time_major=not batch_first, training=True)
    assert_close(out, out_t.detach().numpy(), np.float64, "outputs")
    assert_close(h, h_t[0].detach().numpy(), np.float64, "h_T")
    assert_close(c, c_t[0].detach().numpy(), np.float64, "c_T")
    go, gh, gc = rng.standard_normal(out.shape), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    ((out_t * _t(torch, go)).sum() + (h_t[0] * _t(torch, gh)).sum()
     + (c_t[0] * _t(torch, gc)).sum()).backward()
    gx, gh0, gc0, gk, gb = fastnn.lstm_backward(go, gh, gc, cache)
    want_k, want_b = convert.lstm_from_torch(m.weight_ih_l0.grad.numpy(),
                                             m.weight_hh_l0.grad.numpy(),
                                             m.bias_ih_l0.grad.numpy(), np.zeros(4 * H))
    assert_close(gx, xt.grad.numpy(), np.float64, "grad_x")
    assert_close(gh0, h0t.grad[0].numpy(), np.float64, "grad_h0")
    assert_close(gc0, c0t.grad[0].numpy(), np.float64, "grad_c0")
    assert_close(gk, want_k, np.float64, "grad_kernel")
    assert_close(gb, want_b, np.float64, "grad_bias")
    np.testing.assert_allclose(m.bias_hh_l0.grad.numpy(), m.bias_ih_l0.grad.numpy())


def test_lstm_cell_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    B, I, H = 4, 3, 5
    torch.manual_seed(1)
    m = torch.nn.LSTMCell(I, H).double()
    kernel, bias = convert.lstm_from_torch(m.weight_ih.detach().numpy(), m.weight_hh.detach().numpy(),
                                           m.bias_ih.detach().numpy(), m.bias_hh.detach().numpy())
    x, h, c = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    xt, ht, ct = _t(torch, x, True), _t(torch, h, True), _t(torch, c, True)
    h_t, c_t = m(xt, (ht, ct))
    h_new, c_new = fastnn.lstm_cell(x, h, c, kernel, bias, forget_bias=0.0)
    assert_close(h_new, h_t.detach().numpy(), np.float64, "h")
    assert_close(c_new, c_t.detach().numpy(), np.float64, "c")
    gh, gc = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    ((h_t * _t(torch, gh)).sum() + (c_t * _t(torch, gc)).sum()).backward()
    gx, ghp, gcp, gk, gb = fastnn.lstm_cell_backward(gh, gc, x, h, c, kernel, bias, forget_bias=0.0)
    assert_close(gx, xt.grad.numpy(), np.float64, "grad_x")
    assert_close(ghp, ht.grad.numpy(), np.float64, "grad_h")
    assert_close(gcp, ct.grad.numpy(), np.float64, "grad_c")
    w_ih, w_hh, b_ih, b_hh = convert.lstm_to_torch(gk, gb)
    assert_close(w_ih, m.weight_ih.grad.numpy(), np.float64, "grad weight_ih")
    assert_close(w_hh, m.weight_hh.grad.numpy(), np.float64, "grad weight_hh")
    assert_close(b_ih, m.bias_ih.grad.numpy(), np.float64, "grad bias")


def test_gru_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    B, T, I, H = 3, 4, 5, 6
    torch.manual_seed(2)
    cell = torch.nn.GRUCell(I, H).double()
    w = [p.detach().numpy() for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
    kernel, rk, bias = convert.gru_from_torch(*w)
    x, h = rng.standard_normal((B, I)), rng.standard_normal((B, H))
    xt, ht = _t(torch, x, True), _t(torch, h, True)
    h_t = cell(xt, ht)
    assert_close(fastnn.gru_cell(x, h, kernel, rk, bias), h_t.detach().numpy(), np.float64, "cell")
    gh = rng.standard_normal((B, H))
    (h_t * _t(torch, gh)).sum().backward()
    gx, ghp, gk, grk, gb = fastnn.gru_cell_backward(gh, x, h, kernel, rk, bias)
    assert_close(gx, xt.grad.numpy(), np.float64, "grad_x")
    assert_close(ghp, ht.grad.numpy(), np.float64, "grad_h")
    for got, p, name in zip(convert.gru_to_torch(gk, grk, gb),
                            (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh),
                            ("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
        assert_close(got, p.grad.numpy(), np.float64, name)
    # the sequence form against nn.GRU with the same weights
    m = torch.nn.GRU(I, H, batch_first=True).double()
    with torch.no_grad():
        for dst, src in zip((m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0), w):
            dst.copy_(torch.from_numpy(src))
    xs = rng.standard_normal((B, T, I))
    out_t, h_t = m(_t(torch, xs), _t(torch, h[None]))
    out, hT = fastnn.gru(xs, h, kernel, rk, bias)
    assert_close(out, out_t.detach().numpy(), np.float64, "gru outputs")
    assert_close(hT, h_t[0].detach().numpy(), np.float64, "gru h_T")


# ------------------------------------------------------------------ converters
def test_converters_round_trip_and_keras_semantics():
    rng = np.random.default_rng(9)
    I, H = 3, 4
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    b_ih, b_hh = rng.standard_normal(4 * H), rng.standard_normal(4 * H)
    kernel, bias = convert.lstm_from_torch(w_ih, w_hh, b_ih, b_hh)
    back = convert.lstm_to_torch(kernel, bias)
    np.testing.assert_array_equal(back[0], w_ih)
    np.testing.assert_array_equal(back[1], w_hh)
    np.testing.assert_allclose(back[2], b_ih + b_hh)
    np.testing.assert_array_equal(back[3], 0)
    assert all(a.flags.c_contiguous for a in back)
    # Keras: the converted weights reproduce a Keras LSTM written out independently
    kk, krk, kb = convert.lstm_to_keras(kernel, bias, I)
    k2, b2 = convert.lstm_from_keras(kk, krk, kb)
    np.testing.assert_array_equal(k2, kernel)
    np.testing.assert_array_equal(b2, bias)
    x = rng.standard_normal((2, 5, I))
    out, _ = fastnn.lstm(x, None, None, kernel, bias, forget_bias=0.0)
    assert_close(out, ref.keras_lstm(x, kk, krk, kb), np.float64, "keras")
    # forget_bias folding, as documented
    folded = bias.copy()
    folded[2 * H:3 * H] += 1.0
    out1, _ = fastnn.lstm(x, None, None, kernel, bias, forget_bias=1.0)
    out2, _ = fastnn.lstm(x, None, None, kernel, folded, forget_bias=0.0)
    assert_close(out1, out2, np.float64, "folded forget bias")
    # GRU
    g = [rng.standard_normal(s) for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,))]
    k, rk, b = convert.gru_from_torch(*g)
    assert b.shape == (2, 3 * H)
    for got, want in zip(convert.gru_to_torch(k, rk, b), g):
        np.testing.assert_array_equal(got, want)
    # SimpleRNN: torch's h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), written out here
    r = [rng.standard_normal(s) for s in ((H, I), (H, H), (H,), (H,))]
    k, rk, b = convert.simple_rnn_from_torch(*r)
    assert k.shape == (I, H) and rk.shape == (H, H) and b.shape == (H,)
    x, h = rng.standard_normal((2, 5, I)), np.zeros((2, H))
    outs = []
    for t in range(5):
        h = np.tanh(x[:, t] @ r[0].T + r[2] + h @ r[1].T + r[3])
        outs.append(h)
    out, _ = fastnn.simple_rnn(x, None, k, rk, b)
    assert_close(out, np.stack(outs, axis=1), np.float64, "simple_rnn from torch")
    back = convert.simple_rnn_to_torch(k, rk, b)
    np.testing.assert_array_equal(back[0], r[0])
    np.testing.assert_array_equal(back[1], r[1])
    np.testing.assert_array_equal(back[2], b)
    np.testing.assert_array_equal(back[3], 0)
    # float32 stays float32
    k32, b32 = convert.lstm_from_torch(*(a.astype(np.float32) for a in (w_ih, w_hh, b_ih, b_hh)))
    assert k32.dtype == np.float32 and b32.dtype == np.float32


def test_converter_bad_input():
    call_raises(ValueError, "lstm_from_torch: weight_ih must have 4 \\* H rows",
                convert.lstm_from_torch, np.ones((5, 2)), np.ones((5, 1)), np.ones(5), np.ones(5))
    call_raises(ValueError, "lstm_from_torch: weight_hh must have shape \\(8, 2\\)",
                convert.lstm_from_torch, np.ones((8, 3)), np.ones((8, 3)), np.ones(8), np.ones(8))
    call_raises(ValueError, "lstm_from_torch: bias_hh must have shape \\(8,\\)",
                convert.lstm_from_torch, np.ones((8, 3)), np.ones((8, 2)), np.ones(8), np.ones(7))
    call_raises(ValueError, "lstm_to_keras: kernel must have input_size \\+ H",
                convert.lstm_to_keras, np.ones((5, 8)), np.ones(8), 2)
    call_raises(ValueError, "gru_to_torch: bias must have shape \\(2, 6\\)",
                convert.gru_to_torch, np.ones((3, 6)), np.ones((2, 6)), np.ones(6))
    call_raises(TypeError, "lstm_to_torch: kernel must have dtype float32 or float64",
                convert.lstm_to_torch, np.ones((5, 8), dtype=int), np.ones(8))
    call_raises(ValueError, "simple_rnn_from_torch: weight_hh must have shape \\(3, 3\\)",
                convert.simple_rnn_from_torch, np.ones((3, 2)), np.ones((3, 2)), np.ones(3),
                np.ones(3))
    call_raises(ValueError, "simple_rnn_to_torch: bias must have shape \\(3,\\)",
                convert.simple_rnn_to_torch, np.ones((2, 3)), np.ones((3, 3)), np.ones(4))
    call_raises(ValueError, "lstm_from_keras: recurrent_kernel must have shape \\(2, 8\\)",
                convert.lstm_from_keras, np.ones((3, 8)), np.ones((2, 6)), np.ones(8))


# ------------------------------------------------------------------ bad input
def test_lstm_bad_input():
    B, I, H = 2, 3, 4
    x, h, c = np.ones((B, I)), np.ones((B, H)), np.ones((B, H))
    k, b = np.ones((I + H, 4 * H)), np.ones(4 * H)
    f = fastnn.lstm_cell
    call_raises(ValueError, "lstm_cell: h has batch 3, x has batch 2", f, x, np.ones((3, H)), c, k, b)
    call_raises(ValueError, r"lstm_cell: c must have the shape of h \(2, 4\), got \(2, 5\)",
                f, x, h, np.ones((B, 5)), k, b)
    call_raises(ValueError, r"lstm_cell: c must have the shape of h \(2, 4\), got \(1, 4\)",
                f, x, h, np.ones((1, H)), k, b)
    call_raises(ValueError, r"lstm_cell: kernel must have I \+ H = 3 \+ 4 = 7 rows .*got \(6, 16\)",
                f, x, h, c, np.ones((6, 16)), b)
    call_raises(ValueError, r"lstm_cell: kernel must have 4 \* H = 16 columns .*got \(7, 12\)",
                f, x, h, c, np.ones((7, 12)), b)
    call_raises(ValueError, r"lstm_cell: bias must have shape \(16,\).*got \(12,\)",
                f, x, h, c, k, np.ones(12))
    call_raises(ValueError, "lstm_cell: x must be 2-D", f, np.ones(I), h, c, k, b)
    call_raises(TypeError, "lstm_cell: x must have dtype float32 or float64",
                f, np.ones((B, I), dtype=np.int64), h, c, k, b)
    call_raises(TypeError, "lstm_cell: bias must have dtype float32 or float64",
                f, x, h, c, k, np.ones(4 * H, dtype=np.float16))
    call_raises(TypeError, "lstm_cell: forget_bias must be a real number", f, x, h, c, k, b,
                forget_bias=True)
    call_raises(ValueError, r"lstm_cell: out_h has shape \(2, 5\), expected \(2, 4\)",
                f, x, h, c, k, b, out_h=np.empty((B, 5)))
    call_raises(TypeError, "lstm_cell: out_c has dtype float32, expected float64",
                f, x, h, c, k, b, out_c=np.empty((B, H), np.float32))
    g = fastnn.lstm
    xs = np.ones((B, 5, I))
    call_raises(ValueError, r"lstm: x must be 3-D \(B, T, I\)", g, x, None, None, k, b)
    call_raises(ValueError, "lstm: h0 has batch 3, x has batch 2", g, xs, np.ones((3, H)), None, k, b)
    call_raises(ValueError, "lstm: c0 has width 5, the kernel has H = 4", g, xs, h, np.ones((B, 5)),
                k, b)
    call_raises(ValueError, "lstm: kernel must have I \\+ H", g, xs, h, c, np.ones((8, 16)), b)
    call_raises(ValueError, "lstm: bias must have shape", g, xs, h, c, k, np.ones(15))
    out, _, cache = g(xs, h, c, k, b, training=True)
    call_raises(ValueError, r"lstm_backward: grad_outputs must have shape \(2, 5, 4\)",
                fastnn.lstm_backward, np.ones((5, 2, 4)), None, None, cache)
    call_raises(ValueError, r"lstm_backward: grad_cT must have shape \(2, 4\)",
                fastnn.lstm_backward, None, None, np.ones((2, 3)), cache)
    call_raises(TypeError, "lstm_backward: cache must be the cache of lstm", fastnn.lstm_backward,
                None, None, None, object())


def test_gru_and_rnn_bad_input():
    B, I, H = 2, 3, 4
    x, h = np.ones((B, 5, I)), np.ones((B, H))
    k, rk = np.ones((I, 3 * H)), np.ones((H, 3 * H))
    call_raises(ValueError, r"gru: bias must have shape \(2, 12\)", fastnn.gru, x, h, k, rk,
                np.ones(12))
    call_raises(ValueError, r"gru: bias must have shape \(12,\)", fastnn.gru, x, h, k, rk,
                np.ones((2, 12)), reset_after=False)
    call_raises(ValueError, r"gru: kernel must have shape \(3, 12\)", fastnn.gru, x, h,
                np.ones((4, 12)), rk, np.ones((2, 12)))
    call_raises(ValueError, "gru_cell: h has batch 1, x has batch 2", fastnn.gru_cell, x[:, 0],
                np.ones((1, H)), k, rk, np.ones((2, 12)))
    call_raises(ValueError, r"simple_rnn: recurrent_kernel must have shape \(4, 4\)",
                fastnn.simple_rnn, x, h, np.ones((I, H)), np.ones((4, 5)), np.ones(H))
    call_raises(ValueError, "simple_rnn: activation must be 'tanh' or 'relu'", fastnn.simple_rnn,
                x, h, np.ones((I, H)), np.eye(H), np.ones(H), activation="sigmoid")
    call_raises(TypeError, "simple_rnn: kernel must have dtype", fastnn.simple_rnn, x, h,
                np.ones((I, H), dtype=bool), np.eye(H), np.ones(H))
    _, _, cache = fastnn.simple_rnn(x, h, np.ones((I, H)), np.eye(H), np.ones(H), training=True)
    call_raises(TypeError, "gru_backward: cache must be the cache of gru", fastnn.gru_backward,
                None, None, cache)


# ------------------------------------------------------------------ layouts, buffers, edges
def test_layouts_and_inputs_unchanged():
    rng = np.random.default_rng(10)
    B, T, I, H = 3, 4, 5, 6
    kernel, bias = _lstm_params(rng, I, H)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    want, wh, wc = ref.lstm(x, h0, c0, kernel, bias, 1.0, True)
    # Fortran order, negative strides, read-only, lists
    kf = np.asfortranarray(kernel)
    xr = x[:, ::-1][:, ::-1].copy()
    xr.setflags(write=False)
    bn = bias[::-1].copy()[::-1]
    args = [xr, np.asfortranarray(h0), c0.tolist(), kf, bn]
    snap = snapshot(args)
    out, (h, c), cache = fastnn.lstm(*args, time_major=True, training=True)
    assert_close(out, want, np.float64, "outputs")
    fastnn.lstm_backward(np.ones_like(out), None, None, cache)
    for a, before in snap:
        np.testing.assert_array_equal(a, before)
    # a batch-major view that is a transposed time-major array
    got, _ = fastnn.lstm(x.transpose(1, 0, 2), h0, c0, kernel, bias)
    assert_close(got, want.transpose(1, 0, 2), np.float64, "transposed view")
    # cell with non-contiguous operands
    hn, cn = fastnn.lstm_cell(x[0][:, ::-1][:, ::-1], h0.T.copy().T, c0[:, :], kf, bias)
    wh1, wc1 = ref.lstm_cell(x[0], h0, c0, kernel, bias)
    assert_close(hn, wh1, np.float64, "cell h")
    # mixed dtypes promote
    out32 = fastnn.lstm(x.astype(np.float32), h0, c0, kernel.astype(np.float32), bias,
                        time_major=True)[0]
    assert out32.dtype == np.float64


def test_lstm_cell_out_buffers():
    rng = np.random.default_rng(11)
    B, I, H = 3, 4, 5
    x, h, c = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    kernel, bias = _lstm_params(rng, I, H)
    want_h, want_c = fastnn.lstm_cell(x, h, c, kernel, bias)
    oh, oc = np.empty((B, H)), np.empty((B, H))
    rh, rc = fastnn.lstm_cell(x, h, c, kernel, bias, out_h=oh, out_c=oc)
    assert rh is oh and rc is oc
    np.testing.assert_array_equal(oh, want_h)
    np.testing.assert_array_equal(oc, want_c)
    # in place: the state arrays themselves, as in a loop over time
    h2, c2 = h.copy(), c.copy()
    rh, rc = fastnn.lstm_cell(x, h2, c2, kernel, bias, out_h=h2, out_c=c2)
    assert rh is h2 and rc is c2
    np.testing.assert_array_equal(h2, want_h)
    np.testing.assert_array_equal(c2, want_c)
    # swapped state buffers and a non-contiguous out
    h3, c3 = h.copy(), c.copy()
    fastnn.lstm_cell(x, h3, c3, kernel, bias, out_h=c3, out_c=h3)
    np.testing.assert_array_equal(c3, want_h)
    np.testing.assert_array_equal(h3, want_c)
    big = np.zeros((B, 2 * H))
    fastnn.lstm_cell(x, h, c, kernel, bias, out_h=big[:, ::2])
    np.testing.assert_array_equal(big[:, ::2], want_h)
    assert not np.any(big[:, 1::2])
    # float32 in-place
    h4, c4 = h.astype(np.float32), c.astype(np.float32)
    args32 = [a.astype(np.float32) for a in (x, kernel, bias)]
    fastnn.lstm_cell(args32[0], h4, c4, *args32[1:], out_h=h4, out_c=c4)
    assert_close(h4, want_h, np.float32, "in-place float32")
    ro = np.empty((B, H))
    ro.setflags(write=False)
    call_raises(ValueError, "lstm_cell: out_h is read-only", fastnn.lstm_cell, x, h, c, kernel,
                bias, out_h=ro)


@pytest.mark.parametrize("B,T,H", [(0, 3, 4), (2, 0, 4), (0, 0, 4), (2, 3, 0)])
def test_empty(B, T, H):
    rng = np.random.default_rng(12)
    I = 3
    x = rng.standard_normal((B, T, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    kernel, bias = _lstm_params(rng, I, H)
    out, (h, c), cache = fastnn.lstm(x, h0, c0, kernel, bias, training=True)
    assert out.shape == (B, T, H)
    np.testing.assert_array_equal(h, h0 if T == 0 else ref.lstm(x, h0, c0, kernel, bias)[1])
    gh = rng.standard_normal((B, H))
    gx, gh0, gc0, gk, gb = fastnn.lstm_backward(np.ones_like(out), gh, None, cache)
    assert gx.shape == x.shape and gk.shape == kernel.shape and gb.shape == bias.shape
    if T == 0:
        np.testing.assert_array_equal(gh0, gh)
    hn, cn = fastnn.lstm_cell(x[:, 0] if T else np.ones((B, I)), h0, c0, kernel, bias)
    assert hn.shape == (B, H)
    gparams = _gru_params(rng, I, H, True)
    out, h, cache = fastnn.gru(x, h0, *gparams, training=True)
    assert out.shape == (B, T, H)
    grads = fastnn.gru_backward(None, gh, cache)
    assert [g.shape for g in grads] == [x.shape, (B, H), gparams[0].shape, gparams[1].shape,
                                        gparams[2].shape]
    out, h, cache = fastnn.simple_rnn(x, h0, *_rnn_params(rng, I, H), training=True)
    assert out.shape == (B, T, H)
    assert fastnn.simple_rnn_backward(None, gh, cache)[0].shape == x.shape


def test_nan_propagates():
    rng = np.random.default_rng(13)
    B, T, I, H = 2, 3, 3, 4
    x = rng.standard_normal((B, T, I))
    x[0, 1, 0] = np.nan
    kernel, bias = _lstm_params(rng, I, H)
    out, (h, c) = fastnn.lstm(x, None, None, kernel, bias)
    want, wh, wc = ref.lstm(x, None, None, kernel, bias)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    assert np.isnan(out[0, 1:]).all() and np.isfinite(out[1]).all()
    for relu in ("tanh", "relu"):
        o, _ = fastnn.simple_rnn(x, None, *_rnn_params(rng, I, H), activation=relu)
        assert np.isnan(o[0, 1:]).all() and np.isfinite(o[1]).all()


# ------------------------------------------------------------------ threads
def test_thread_count_bitwise_identical():
    # Big enough (B * H >= SERIAL_BELOW["gate"]) for the gate passes to run in parallel.
    from fastnn_ext import _recurrent
    rng = np.random.default_rng(14)
    B, T, I, H = 64, 3, 8, 256
    assert B * H >= fastnn._threads.SERIAL_BELOW["gate"]
    x, h0, c0 = rng.standard_normal((B, T, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    lk, lb = _lstm_params(rng, I, H, 0.1)
    gk = _gru_params(rng, I, H, True, 0.1)
    gk0 = _gru_params(rng, I, H, False, 0.1)
    rk = _rnn_params(rng, I, H, 0.1)
    go = rng.standard_normal((B, T, H))

    def run():
        res = []
        for dtype in DTYPES:
            xs, hs, cs, go_ = _cast(dtype, x, h0, c0, go)
            out, (h, c), cache = fastnn.lstm(xs, hs, cs, *_cast(dtype, lk, lb), training=True)
            res += [out, c] + list(fastnn.lstm_backward(go_, None, None, cache))
            res += list(fastnn.lstm_cell(xs[:, 0], hs, cs, *_cast(dtype, lk, lb)))
            for params, ra in ((gk, True), (gk0, False)):
                out, h, cache = fastnn.gru(xs, hs, *_cast(dtype, *params), reset_after=ra,
                                           training=True)
                res += [out] + list(fastnn.gru_backward(go_, None, cache))
            out, h, cache = fastnn.simple_rnn(xs, hs, *_cast(dtype, *rk), training=True)
            res += [out] + list(fastnn.simple_rnn_backward(go_, None, cache))
        return res

    with fastnn.threads(1):
        base = run()
    for n in (2, 3):
        with fastnn.threads(n):
            got = run()
        for a, b in zip(base, got):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ SIMD paths
SIMD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {here!r})
    import reference as ref
    import fastnn
    from fastnn_ext import _recurrent
    level = int(sys.argv[1])
    assert _recurrent.SIMD_LEVEL <= level
    rng = np.random.default_rng(level)
    B, T, I, H = 3, 4, 5, 37
    x, h0, c0 = rng.standard_normal((B, T, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    k, b = rng.standard_normal((I + H, 4 * H)) * 0.3, rng.standard_normal(4 * H)
    gk, grk, gb = rng.standard_normal((I, 3 * H)) * 0.3, rng.standard_normal((H, 3 * H)) * 0.3, rng.standard_normal((2, 3 * H))
    for dtype in (np.float32, np.float64):
        tol = 1e-4 if dtype == np.float32 else 1e-10
        c = lambda *a: [v.astype(dtype) for v in a]
        got = fastnn.lstm(*c(x, h0, c0, k, b))[0]
        want = ref.lstm(*c(x, h0, c0, k, b))[0]
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < tol, (level, dtype)
        got = fastnn.gru(*c(x, h0, gk, grk, gb))[0]
        want = ref.gru(*c(x, h0, gk, grk, gb))[0]
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < tol, (level, dtype)
    print("ok", _recurrent.SIMD_LEVEL)
""")


@pytest.mark.parametrize("level", [0, 1])
def test_simd_path_matches_reference(level):
    run_at_simd_level(SIMD_SCRIPT, level, timeout=120)


def test_import_makes_convert_available():
    import importlib
    mod = importlib.import_module("fastnn")
    assert mod.convert is convert
    assert callable(mod.convert.lstm_from_torch)
    # its namespace lists the converters only (not numpy or the validation helpers)
    assert dir(convert) == sorted(convert.__all__)



def _lstm_round_trip(x, h0, k, b):
    out, _, cache = fastnn.lstm(x, h0, h0, k, b, training=True)
    return (out,) + fastnn.lstm_backward(out, None, None, cache)


def _forked_child(args, want):
    # Runs in the forked child: exit status 0 when the results match the parent's.
    try:
        same = all(np.array_equal(a, w) for a, w in zip(_lstm_round_trip(*args), want))
        os._exit(0 if same else 3)
    except BaseException:
        os._exit(4)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_after_use_does_not_hang():
    import multiprocessing
    rng = np.random.default_rng(15)
    args = (rng.standard_normal((64, 3, 8)), rng.standard_normal((64, 256)),
            rng.standard_normal((264, 1024)) * 0.1, rng.standard_normal(1024))
    with fastnn.threads(2):
        want = _lstm_round_trip(*args)          # the OpenMP team has run in this process
        child = multiprocessing.get_context("fork").Process(target=_forked_child,
                                                            args=(args, want))
        child.start()
        child.join(60)
        if child.is_alive():
            child.kill()
            pytest.fail("lstm in a forked child hung")
        assert child.exitcode == 0
        for a, w in zip(_lstm_round_trip(*args), want):
            np.testing.assert_array_equal(a, w)
