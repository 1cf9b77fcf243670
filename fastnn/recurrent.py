"""Recurrent layers: LSTM, GRU and SimpleRNN cells and sequences, with backward (BPTT).

Layouts
-------
LSTM: TensorFlow's BasicLSTMCell. ``kernel`` (I + H, 4H) acts on ``[x, h]``; the
column blocks of ``z = [x, h] @ kernel + bias`` are the gates (i, j, f, o)::

    c_new = c * sigmoid(f + forget_bias) + sigmoid(i) * tanh(j)
    h_new = tanh(c_new) * sigmoid(o)

GRU and SimpleRNN: Keras. GRU ``kernel`` (I, 3H) and ``recurrent_kernel`` (H, 3H), gate
blocks (z, r, h); ``reset_after=True`` (Keras' default, cuDNN, PyTorch) applies the reset
gate after the recurrent product and has a bias (2, 3H) -- input bias, recurrent bias --
``reset_after=False`` (the original GRU) before it, with one bias (3H,)::

    z = sigmoid(x Wz + h Uz + b...);  r = sigmoid(x Wr + h Ur + b...)
    hh = tanh(x Wh + bh_in + r * (h Uh + bh_rec))      # reset_after=True
    hh = tanh(x Wh + bh + (r * h) Uh)                   # reset_after=False
    h_new = z * h + (1 - z) * hh

SimpleRNN: ``h_new = activation(x @ kernel + h @ recurrent_kernel + bias)``.
:mod:`fastnn.convert` moves weights from and to PyTorch and Keras.

Sequences take x as (B, T, I) (``time_major=False``, the default) or (T, B, I), return
outputs in the same layout, and with ``training=True`` also a cache for the matching
``*_backward``, which reuses the forward's products instead of redoing them. Inside,
the input projection of all steps is one GEMM, each step is one recurrent GEMM plus one
fused pass over the gates, and backward stacks the gate gradients of all steps so that
the kernel, bias and input gradients are each one big product.

Gradients are computed in the dtype of the forward (the cache); gradient arguments of
another float dtype are converted to it. ``None`` for a gradient argument means zero.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Tuple, Union, overload

import numpy as np

from fastnn._threads import SERIAL_BELOW, get_num_threads, threads_for
from fastnn._typing import ArrayLike, FloatArray, Grads5
from fastnn._validation import (FLOAT_DTYPES, as_bool, as_float_array, as_real, by_dtype,
                                check_ndim, check_shape, contiguous, finish_out, is_int,
                                memory_error, prepare_out, result_dtype)
from fastnn_ext import _recurrent

__all__ = [
    "lstm_cell", "lstm_cell_backward", "lstm", "lstm_backward",
    "gru_cell", "gru_cell_backward", "gru", "gru_backward",
    "simple_rnn", "simple_rnn_backward", "RecurrentCache",
]

_LSTM_CELL = by_dtype(_recurrent, "lstm_cell_general")
_LSTM_FWD = by_dtype(_recurrent, "lstm_forward")
_LSTM_BWD = by_dtype(_recurrent, "lstm_backward")
_GRU_FWD = by_dtype(_recurrent, "gru_forward")
_GRU_BWD = by_dtype(_recurrent, "gru_backward")
_RNN_FWD = by_dtype(_recurrent, "rnn_forward")
_RNN_BWD = by_dtype(_recurrent, "rnn_backward")


class RecurrentCache:
    """What a training forward (``lstm/gru/simple_rnn(..., training=True)``) keeps for
    its backward: the inputs in time-major order, the stored gate activations and the
    states of every step. Treat it as opaque; a backward may be called on it any number
    of times. Its fields cannot be set, and a backward checks that the arrays still
    have the shapes, dtype and layout its kernels index by (from the sizes ``T``,
    ``B``, ``I``, ``H``) before reading them, so that no edit of the cache (or a cache
    built by hand) makes a kernel read out of bounds.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.ones((1, 3, 2)); kernel = np.full((2 + 4, 16), 0.1); bias = np.zeros(16)
    >>> out, (h, c), cache = fastnn.lstm(x, None, None, kernel, bias, training=True)
    >>> cache.kind, cache.T, cache.B, cache.H
    ('lstm', 3, 1, 4)
    >>> [g.shape for g in fastnn.lstm_backward(np.ones_like(out), None, None, cache)]
    [(1, 3, 2), (1, 4), (1, 4), (6, 16), (16,)]
    """

    __slots__ = ("kind", "dtype", "time_major", "T", "B", "I", "H", "x", "kernel",
                 "recurrent_kernel", "hs", "cs", "gates", "tc", "q", "rh", "reset_after",
                 "relu")
    kind: str
    dtype: np.dtype[Any]
    time_major: bool
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    x: FloatArray
    kernel: FloatArray
    recurrent_kernel: FloatArray | None
    hs: FloatArray
    cs: FloatArray | None
    gates: FloatArray | None
    tc: FloatArray | None
    q: FloatArray | None
    rh: FloatArray | None
    reset_after: bool | None
    relu: bool | None

    def __init__(self, **fields: Any) -> None:
        unknown = set(fields) - set(self.__slots__)
        if unknown:
            raise TypeError(f"RecurrentCache: unknown fields {sorted(unknown)}")
        for name in self.__slots__:
            object.__setattr__(self, name, fields.get(name))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"RecurrentCache is read-only (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"RecurrentCache is read-only (cannot delete {name!r})")

    def __reduce__(self) -> tuple[Callable[[dict[str, Any]], RecurrentCache],
                                  tuple[dict[str, Any]]]:
        return (_rebuild_cache, ({name: getattr(self, name) for name in self.__slots__},))

    def __repr__(self) -> str:
        layout = "time-major" if self.time_major else "batch-major"
        return (f"RecurrentCache({self.kind}, T={self.T}, B={self.B}, I={self.I}, H={self.H}, "
                f"{self.dtype}, {layout})")


# What lstm, gru and simple_rnn return for a return_state or training flag that is not a
# literal (typing.Union: these are evaluated at import, also on Python 3.9).
_State = Tuple[FloatArray, FloatArray]
_LSTMResult = Union[FloatArray, Tuple[FloatArray, _State],
                    Tuple[FloatArray, _State, RecurrentCache], Tuple[FloatArray, RecurrentCache]]
_GRUResult = Union[FloatArray, _State, Tuple[FloatArray, FloatArray, RecurrentCache],
                   Tuple[FloatArray, RecurrentCache]]
_RNNResult = Union[_State, Tuple[FloatArray, FloatArray, RecurrentCache]]


def _rebuild_cache(fields):
    return RecurrentCache(**fields)


def _is_size(v):
    return is_int(v) and v >= 0


def _check_cache(cache, kind, fn):
    """What the backward kernels rely on, in O(1): the sizes are ints, the dtype a float
    dtype, and every array the kernels read has the C-contiguous shape and dtype that
    the sizes give (a cache edited behind its back, or built by hand, is refused)."""
    if not isinstance(cache, RecurrentCache) or cache.kind != kind:
        raise TypeError(f"{fn}: cache must be the cache of {kind}(..., training=True), "
                        f"got {type(cache).__name__}")
    T, B, I, H = cache.T, cache.B, cache.I, cache.H
    if not all(_is_size(v) for v in (T, B, I, H)):
        raise ValueError(f"{fn}: cache sizes must be ints >= 0, got T={T!r}, B={B!r}, "
                         f"I={I!r}, H={H!r}")
    if cache.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: cache dtype must be float32 or float64, got {cache.dtype!r}")
    for name in ("time_major", "reset_after", "relu"):
        value = getattr(cache, name)
        if value is not None and not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{fn}: cache.{name} must be a bool, got {value!r}")
    TB = T * B
    want = {"x": (TB, I), "hs": ((T + 1) * B, H)}
    if kind == "lstm":
        want.update(kernel=(I + H, 4 * H), cs=((T + 1) * B, H), gates=(TB, 4 * H), tc=(TB, H))
    elif kind == "gru":
        want.update(kernel=(I, 3 * H), recurrent_kernel=(H, 3 * H), gates=(TB, 3 * H))
        if cache.reset_after:
            want["q"] = (TB, 3 * H)
        else:
            want.update(q=(B, 2 * H), rh=(TB, H))
    else:
        want.update(kernel=(I, H), recurrent_kernel=(H, H))
    for name, shape in want.items():
        a = getattr(cache, name)
        if (not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != cache.dtype
                or not a.flags.c_contiguous):
            got = (f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray)
                   else type(a).__name__)
            raise ValueError(f"{fn}: cache.{name} must be a C-contiguous {cache.dtype} array "
                             f"of shape {shape} for T={T}, B={B}, I={I}, H={H}, got {got} "
                             f"(the cache was modified, or not made by {kind}(..., "
                             f"training=True))")


# ------------------------------------------------------------------ helpers
def _cell_threads(B, K, H, G):
    # One step: the gate pass (B x H units) and the product (B x K x G multiply-adds) go
    # parallel from their thresholds; below both the count is unused: skip asking (~1 us).
    if B * K * G >= SERIAL_BELOW["recurrent"]:
        return get_num_threads()
    return threads_for(B * H, "gate")


def _seq_threads(B, H):
    # The gate passes go parallel from SERIAL_BELOW["gate"] units, the packed recurrent
    # products (B x H x 4H multiply-adds per step) from SERIAL_BELOW["recurrent"].
    if 4 * B * H * H >= SERIAL_BELOW["recurrent"]:
        return get_num_threads()
    return threads_for(B * H, "gate")


def _state(value, B, H, name, fn, ref):
    """An initial state (B, H), zeros when None; ``ref`` names where B comes from."""
    if value is None:
        return None
    arr = as_float_array(value, name, fn)
    check_ndim(arr, 2, name, fn, "(B, H)")
    if arr.shape[0] != B:
        raise ValueError(f"{fn}: {name} has batch {arr.shape[0]}, {ref} has batch {B} "
                         f"(expected shape ({B}, {H}), got {arr.shape})")
    if arr.shape[1] != H:
        raise ValueError(f"{fn}: {name} has width {arr.shape[1]}, the kernel has H = {H} "
                         f"(expected shape ({B}, {H}), got {arr.shape})")
    return arr


def _cell_inputs(fn, x, h, c=None):
    """A cell's checked x (B, I), h (B, H) and, when given, c (h's shape)."""
    x = as_float_array(x, "x", fn)
    check_ndim(x, 2, "x", fn, "(B, I)")
    h = as_float_array(h, "h", fn)
    check_ndim(h, 2, "h", fn, "(B, H)")
    h = _state(h, x.shape[0], h.shape[1], "h", fn, "x")
    if c is None:
        return x, h
    c = as_float_array(c, "c", fn)
    if c.shape != h.shape:
        raise ValueError(f"{fn}: c must have the shape of h {h.shape}, got {c.shape}")
    return x, h, c


def _sequence_x(x, fn, time_major):
    x = as_float_array(x, "x", fn)
    check_ndim(x, 3, "x", fn, "(T, B, I)" if time_major else "(B, T, I)")
    T, B = (x.shape[0], x.shape[1]) if time_major else (x.shape[1], x.shape[0])
    return x, T, B, x.shape[2]


def _time_major(x, dtype, time_major):
    """x as a C-contiguous (T*B, I) matrix, rows ordered (t, b)."""
    if not time_major:
        x = x.transpose(1, 0, 2)
    x = contiguous(x, dtype)
    return x.reshape(x.shape[0] * x.shape[1], x.shape[2])


def _initial(value, B, H, dtype, rows):
    """A ((rows) * B, H) state buffer with the initial state (zeros for None) in block 0."""
    buf = np.empty((rows * B, H), dtype=dtype)
    if value is None:
        buf[:B] = 0
    else:
        buf[:B] = value
    return buf


def _outputs(hs, T, B, H, time_major, copy):
    """The outputs h_1..h_T from the state buffer, in the caller's layout."""
    seq = hs[B:].reshape(T, B, H)
    if not time_major:
        return np.ascontiguousarray(seq.transpose(1, 0, 2))
    return seq.copy() if copy else seq


def _grad_seq(grad, cache, fn):
    """(flat buffer, step stride, row stride) of the output gradient for the kernels."""
    T, B, H, dtype = cache.T, cache.B, cache.H, cache.dtype
    if grad is None:
        return np.zeros(max(H, 1), dtype=dtype), 0, 0
    g = as_float_array(grad, "grad_outputs", fn)
    shape = (T, B, H) if cache.time_major else (B, T, H)
    check_shape(g, shape, "grad_outputs", fn, "the outputs' shape")
    g = contiguous(g, dtype).reshape(-1)
    if g.size == 0:
        return np.zeros(max(H, 1), dtype=dtype), 0, 0
    return (g, B * H, H) if cache.time_major else (g, H, T * H)


def _grad_state(grad, cache, name, fn):
    """A writable (B, H) copy of a final-state gradient (zeros for None)."""
    if grad is None:
        return np.zeros((cache.B, cache.H), dtype=cache.dtype)
    g = as_float_array(grad, name, fn)
    check_shape(g, (cache.B, cache.H), name, fn, "(B, H)")
    return np.array(g, dtype=cache.dtype, order="C")


def _grad_x(gx, cache):
    """The input gradient (T*B, I) time-major, back in the caller's layout."""
    seq = gx.reshape(cache.T, cache.B, cache.I)
    return seq if cache.time_major else np.ascontiguousarray(seq.transpose(1, 0, 2))


def _backward_inputs(grad_outputs, grad_hT, cache, kind, fn):
    """Checked backward arguments: (output gradient for the kernel, step stride, row
    stride, writable grad_hT copy)."""
    _check_cache(cache, kind, fn)
    g, g_step, ldg = _grad_seq(grad_outputs, cache, fn)
    return g, g_step, ldg, _grad_state(grad_hT, cache, "grad_hT", fn)


def _zero_grads(*arrays):
    for a in arrays:
        a[...] = 0


# ------------------------------------------------------------------ LSTM
def _lstm_weights(kernel, bias, I, H, fn):
    kernel = as_float_array(kernel, "kernel", fn)
    check_ndim(kernel, 2, "kernel", fn, "(I + H, 4H)")
    if kernel.shape[0] != I + H:
        raise ValueError(f"{fn}: kernel must have I + H = {I} + {H} = {I + H} rows "
                         f"(expected shape ({I + H}, {4 * H})), got {kernel.shape}")
    if kernel.shape[1] != 4 * H:
        raise ValueError(f"{fn}: kernel must have 4 * H = {4 * H} columns "
                         f"(expected shape ({I + H}, {4 * H})), got {kernel.shape}")
    bias = as_float_array(bias, "bias", fn)
    check_shape(bias, (4 * H,), "bias", fn, "4 * H")
    return kernel, bias


def lstm_cell(x: ArrayLike, h: ArrayLike, c: ArrayLike, kernel: ArrayLike, bias: ArrayLike, *,
              forget_bias: float = 1.0, out_h: FloatArray | None = None,
              out_c: FloatArray | None = None) -> tuple[FloatArray, FloatArray]:
    """One LSTM step in TensorFlow's BasicLSTMCell layout.

    ``z = [x, h] @ kernel + bias`` split in column blocks (i, j, f, o);
    ``c_new = c * sigmoid(f + forget_bias) + sigmoid(i) * tanh(j)``,
    ``h_new = tanh(c_new) * sigmoid(o)``. Computed as one product (BLAS; for batches
    of up to 4 rows a loop that streams the kernel once per row) and one fused pass for
    all gates, in a single call that releases the GIL.

    Parameters
    ----------
    x : array_like
        (B, I) input.
    h, c : array_like
        (B, H) state.
    kernel : array_like
        (I + H, 4H): rows for x, then rows for h; column blocks (i, j, f, o).
    bias : array_like
        (4H,).
    forget_bias : float
        Added to the forget gate's pre-activation (TensorFlow's default 1.0; use 0.0
        for weights converted from PyTorch or Keras, see :mod:`fastnn.convert`).
    out_h, out_c : ndarray, optional
        (B, H) result buffers of the result dtype. ``out_h=h`` and ``out_c=c`` update
        the state in place, so a loop over time allocates nothing.

    Returns
    -------
    h_new, c_new : ndarray
        (B, H) each (``out_h`` / ``out_c`` when given).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> B, I, H = 2, 3, 4
    >>> x, h, c = np.ones((B, I)), np.zeros((B, H)), np.zeros((B, H))
    >>> kernel, bias = np.full((I + H, 4 * H), 0.1), np.zeros(4 * H)
    >>> h_new, c_new = fastnn.lstm_cell(x, h, c, kernel, bias)
    >>> h_new.shape, round(float(c_new[0, 0]), 6)
    ((2, 4), 0.167342)
    """
    if type(forget_bias) is float:
        try:
            done = _recurrent.lstm_cell(x, h, c, kernel, bias, forget_bias, out_h, out_c,
                                        get_num_threads)
        except MemoryError as exc:
            raise memory_error("lstm_cell", exc) from None
        if done is not None:
            return done
    fn = "lstm_cell"
    forget_bias = as_real(forget_bias, "forget_bias", fn)
    x, h, c = _cell_inputs(fn, x, h, c)
    (B, I), H = x.shape, h.shape[1]
    kernel, bias = _lstm_weights(kernel, bias, I, H, fn)
    dt = result_dtype(x, h, c, kernel, bias)
    xc, hc, cc = contiguous(x, dt), contiguous(h, dt), contiguous(c, dt)
    kc, bc = contiguous(kernel, dt), contiguous(bias, dt)
    # The kernel reads h and c completely (h in the GEMM, c element by element before
    # writing that element), so out_h=h / out_c=c exactly is safe and stays in place.
    in_place_h = out_h is not None and out_h is h and hc is h
    in_place_c = out_c is not None and out_c is c and cc is c
    others = (xc, kc, bc)
    if in_place_h:
        hbuf, htarget = out_h, out_h
    else:
        hbuf, htarget = prepare_out(out_h, (B, H), dt, fn, others + (hc, cc, out_c), "out_h")
    if in_place_c:
        cbuf, ctarget = out_c, out_c
    else:
        cbuf, ctarget = prepare_out(out_c, (B, H), dt, fn, others + (hc, hbuf), "out_c")
    if B and H:
        try:
            _LSTM_CELL[dt](xc, hc, cc, kc, bc, forget_bias, hbuf, cbuf,
                           _cell_threads(B, I + H, H, 4 * H))
        except MemoryError as exc:
            raise memory_error(fn, exc) from None
    return finish_out(hbuf, htarget), finish_out(cbuf, ctarget)


@overload
def lstm(x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, kernel: ArrayLike,
         bias: ArrayLike, *,
         forget_bias: float = 1.0, time_major: bool = False,
         return_state: Literal[True] = ..., training: Literal[False] = ...
         ) -> tuple[FloatArray, tuple[FloatArray, FloatArray]]: ...


@overload
def lstm(x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, kernel: ArrayLike,
         bias: ArrayLike, *,
         forget_bias: float = 1.0, time_major: bool = False,
         return_state: Literal[False], training: Literal[False] = ...
         ) -> FloatArray: ...


@overload
def lstm(x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, kernel: ArrayLike,
         bias: ArrayLike, *,
         forget_bias: float = 1.0, time_major: bool = False,
         return_state: Literal[True] = ..., training: Literal[True]
         ) -> tuple[FloatArray, tuple[FloatArray, FloatArray], RecurrentCache]: ...


@overload
def lstm(x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, kernel: ArrayLike,
         bias: ArrayLike, *,
         forget_bias: float = 1.0, time_major: bool = False,
         return_state: Literal[False], training: Literal[True]
         ) -> tuple[FloatArray, RecurrentCache]: ...


@overload
def lstm(x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, kernel: ArrayLike,
         bias: ArrayLike, *,
         forget_bias: float = 1.0, time_major: bool = False,
         return_state: bool = ..., training: bool = ...
         ) -> _LSTMResult: ...


def lstm(x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, kernel: ArrayLike,
         bias: ArrayLike, *,
         forget_bias: float = 1.0, time_major: bool = False,
         return_state: bool = True, training: bool = False
         ) -> _LSTMResult:
    """An LSTM over a sequence (TensorFlow BasicLSTMCell layout, see :func:`lstm_cell`).

    Parameters
    ----------
    x : array_like
        (B, T, I), or (T, B, I) with ``time_major=True``.
    h0, c0 : array_like or None
        (B, H) initial state; None means zeros.
    kernel : array_like
        (I + H, 4H), column blocks (i, j, f, o).
    bias : array_like
        (4H,).
    forget_bias : float
        Added to the forget gate (0.0 for converted PyTorch / Keras weights).
    time_major : bool
        Layout of x and of the outputs.
    return_state : bool
        Also return the final state ``(h_T, c_T)``.
    training : bool
        Also return a :class:`RecurrentCache` for :func:`lstm_backward`.

    Returns
    -------
    outputs : ndarray
        h_1 .. h_T, (B, T, H) or (T, B, H).
    (h_T, c_T) : tuple of ndarray
        (B, H) each; only when ``return_state``.
    cache : RecurrentCache
        Only when ``training``.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> B, T, I, H = 2, 5, 3, 4
    >>> x = np.ones((B, T, I))
    >>> kernel, bias = np.full((I + H, 4 * H), 0.1), np.zeros(4 * H)
    >>> out, (h, c) = fastnn.lstm(x, None, None, kernel, bias)
    >>> out.shape, bool(np.array_equal(out[:, -1], h))
    ((2, 5, 4), True)
    """
    fn = "lstm"
    forget_bias = as_real(forget_bias, "forget_bias", fn)
    time_major = as_bool(time_major, "time_major", fn)
    return_state = as_bool(return_state, "return_state", fn)
    training = as_bool(training, "training", fn)
    x, T, B, I = _sequence_x(x, fn, time_major)
    if h0 is not None:
        h0 = as_float_array(h0, "h0", fn)
        check_ndim(h0, 2, "h0", fn, "(B, H)")
        H = h0.shape[1]
    else:
        k = as_float_array(kernel, "kernel", fn)
        check_ndim(k, 2, "kernel", fn, "(I + H, 4H)")
        H = k.shape[0] - I
        if H < 0:
            raise ValueError(f"{fn}: kernel must have I + H rows with I = {I}, got {k.shape}")
    h0 = _state(h0, B, H, "h0", fn, "x")
    c0 = _state(c0, B, H, "c0", fn, "x")
    kernel, bias = _lstm_weights(kernel, bias, I, H, fn)
    return _lstm_forward(x, h0, c0, kernel, bias, forget_bias, time_major, return_state,
                         training)


def _lstm_forward(x, h0, c0, kernel, bias, forget_bias, time_major, return_state, training):
    """:func:`lstm` on checked arguments: float arrays of consistent shapes (h0 and c0
    may be None), a float forget_bias and bool flags."""
    T, B = (x.shape[0], x.shape[1]) if time_major else (x.shape[1], x.shape[0])
    I, H = x.shape[2], bias.shape[0] // 4
    dt = result_dtype(x, h0, c0, kernel, bias)
    xt = _time_major(x, dt, time_major)
    kc, bc = contiguous(kernel, dt), contiguous(bias, dt)
    hs = _initial(h0, B, H, dt, T + 1)
    cs = _initial(c0, B, H, dt, T + 1 if training else 2)
    z = np.empty((T * B, 4 * H), dt)
    tc = np.empty((T * B if training else 0, H), dt)
    if T and B and H:
        _LSTM_FWD[dt](xt, kc, bc, forget_bias, z, hs, cs, tc, T, B, bool(training),
                      _seq_threads(B, H))
    outputs = _outputs(hs, T, B, H, time_major, training)
    last = T if training else T % 2
    state = (hs[T * B:].copy(), cs[last * B:(last + 1) * B].copy())
    result = (outputs, state) if return_state else (outputs,)
    if training:
        cache = RecurrentCache(kind="lstm", dtype=dt, time_major=bool(time_major), T=T, B=B,
                               I=I, H=H, x=xt, kernel=kc, hs=hs, cs=cs, gates=z, tc=tc)
        result += (cache,)
    return result if len(result) > 1 else result[0]


def lstm_backward(grad_outputs: ArrayLike | None, grad_hT: ArrayLike | None,
                  grad_cT: ArrayLike | None, cache: RecurrentCache) -> Grads5:
    """Backpropagation through time for :func:`lstm`.

    Parameters
    ----------
    grad_outputs : array_like or None
        Gradient with respect to the outputs, their shape and layout; None for zero.
    grad_hT, grad_cT : array_like or None
        (B, H) gradients with respect to the final state; None for zero.
    cache : RecurrentCache
        From ``lstm(..., training=True)``; not modified.

    Returns
    -------
    grad_x : ndarray
        x's shape and layout.
    grad_h0, grad_c0 : ndarray
        (B, H).
    grad_kernel : ndarray
        (I + H, 4H).
    grad_bias : ndarray
        (4H,) (also the gradient of forget_bias summed over the f block).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> B, T, I, H = 2, 5, 3, 4
    >>> rng = np.random.default_rng(0)
    >>> kernel, bias = rng.standard_normal((I + H, 4 * H)), np.zeros(4 * H)
    >>> out, (h, c), cache = fastnn.lstm(rng.standard_normal((B, T, I)), None, None,
    ...                                  kernel, bias, training=True)
    >>> gx, gh0, gc0, gk, gb = fastnn.lstm_backward(np.ones_like(out), None, None, cache)
    >>> gx.shape, gk.shape, gb.shape
    ((2, 5, 3), (7, 16), (16,))
    """
    fn = "lstm_backward"
    g, g_step, ldg, dh = _backward_inputs(grad_outputs, grad_hT, cache, "lstm", fn)
    T, B, I, H, dt = cache.T, cache.B, cache.I, cache.H, cache.dtype
    dc = _grad_state(grad_cT, cache, "grad_cT", fn)
    dz = np.empty((T * B, 4 * H), dt)
    gx = np.empty((T * B, I), dt)
    gk = np.empty((I + H, 4 * H), dt)
    gb = np.empty(4 * H, dt)
    if T and B and H:
        _LSTM_BWD[dt](cache.x, cache.kernel, cache.gates, cache.tc, cache.hs, cache.cs, g,
                      g_step, ldg, dh, dc, dz, gx, gk, gb, T, B, _seq_threads(B, H))
    else:
        _zero_grads(gx, gk, gb)
    return _grad_x(gx, cache), dh, dc, gk, gb


def lstm_cell_backward(grad_h: ArrayLike | None, grad_c: ArrayLike | None, x: ArrayLike,
                       h: ArrayLike, c: ArrayLike, kernel: ArrayLike, bias: ArrayLike, *,
                       forget_bias: float = 1.0) -> Grads5:
    """Gradients of :func:`lstm_cell` (one forward step with its cache, then the backward).

    Parameters
    ----------
    grad_h, grad_c : array_like or None
        (B, H) gradients with respect to h_new and c_new; None for zero.
    x, h, c, kernel, bias, forget_bias
        As given to :func:`lstm_cell`.

    Returns
    -------
    grad_x, grad_h, grad_c, grad_kernel, grad_bias : ndarray
        Shaped like x, h, c, kernel, bias.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x, h, c = np.ones((1, 2)), np.zeros((1, 3)), np.zeros((1, 3))
    >>> gx, gh, gc, gk, gb = fastnn.lstm_cell_backward(np.ones((1, 3)), None, x, h, c,
    ...                                                np.full((5, 12), 0.1), np.zeros(12))
    >>> gk.shape
    (5, 12)
    """
    fn = "lstm_cell_backward"
    forget_bias = as_real(forget_bias, "forget_bias", fn)
    x, h, c = _cell_inputs(fn, x, h, c)
    kernel, bias = _lstm_weights(kernel, bias, x.shape[1], h.shape[1], fn)
    _, _, cache = _lstm_forward(x[:, None], h, c, kernel, bias, forget_bias, False, True, True)
    g = None if grad_h is None else _grad_state(grad_h, cache, "grad_h", fn)
    gc = None if grad_c is None else _grad_state(grad_c, cache, "grad_c", fn)
    gx, gh, gc, gk, gb = lstm_backward(None, g, gc, cache)
    return gx[:, 0], gh, gc, gk, gb


# ------------------------------------------------------------------ GRU
def _gru_weights(kernel, recurrent_kernel, bias, I, H, reset_after, fn):
    kernel = as_float_array(kernel, "kernel", fn)
    check_shape(kernel, (I, 3 * H), "kernel", fn, "(I, 3H)")
    rk = as_float_array(recurrent_kernel, "recurrent_kernel", fn)
    check_shape(rk, (H, 3 * H), "recurrent_kernel", fn, "(H, 3H)")
    bias = as_float_array(bias, "bias", fn)
    if reset_after:
        check_shape(bias, (2, 3 * H), "bias", fn, "(2, 3H) with reset_after=True")
    else:
        check_shape(bias, (3 * H,), "bias", fn, "(3H,) with reset_after=False")
    return kernel, rk, bias


def _gru_cell_inputs(fn, x, h, kernel, recurrent_kernel, bias, reset_after):
    """A GRU cell's checked x, h and (kernel, recurrent_kernel, bias)."""
    x, h = _cell_inputs(fn, x, h)
    rk = as_float_array(recurrent_kernel, "recurrent_kernel", fn)
    check_ndim(rk, 2, "recurrent_kernel", fn, "(H, 3H)")
    h = _state(h, x.shape[0], rk.shape[0], "h", fn, "x")
    return x, h, _gru_weights(kernel, rk, bias, x.shape[1], rk.shape[0], reset_after, fn)


@overload
def gru(x: ArrayLike, h0: ArrayLike | None, kernel: ArrayLike, recurrent_kernel: ArrayLike,
        bias: ArrayLike, *,
        reset_after: bool = True, time_major: bool = False,
        return_state: Literal[True] = ..., training: Literal[False] = ...
        ) -> tuple[FloatArray, FloatArray]: ...


@overload
def gru(x: ArrayLike, h0: ArrayLike | None, kernel: ArrayLike, recurrent_kernel: ArrayLike,
        bias: ArrayLike, *,
        reset_after: bool = True, time_major: bool = False,
        return_state: Literal[False], training: Literal[False] = ...
        ) -> FloatArray: ...


@overload
def gru(x: ArrayLike, h0: ArrayLike | None, kernel: ArrayLike, recurrent_kernel: ArrayLike,
        bias: ArrayLike, *,
        reset_after: bool = True, time_major: bool = False,
        return_state: Literal[True] = ..., training: Literal[True]
        ) -> tuple[FloatArray, FloatArray, RecurrentCache]: ...


@overload
def gru(x: ArrayLike, h0: ArrayLike | None, kernel: ArrayLike, recurrent_kernel: ArrayLike,
        bias: ArrayLike, *,
        reset_after: bool = True, time_major: bool = False,
        return_state: Literal[False], training: Literal[True]
        ) -> tuple[FloatArray, RecurrentCache]: ...


@overload
def gru(x: ArrayLike, h0: ArrayLike | None, kernel: ArrayLike, recurrent_kernel: ArrayLike,
        bias: ArrayLike, *,
        reset_after: bool = True, time_major: bool = False,
        return_state: bool = ..., training: bool = ...
        ) -> _GRUResult: ...


def gru(x: ArrayLike, h0: ArrayLike | None, kernel: ArrayLike, recurrent_kernel: ArrayLike,
        bias: ArrayLike, *,
        reset_after: bool = True, time_major: bool = False,
        return_state: bool = True, training: bool = False
        ) -> _GRUResult:
    """A GRU over a sequence (Keras layout; see the module notes for the equations).

    Parameters
    ----------
    x : array_like
        (B, T, I), or (T, B, I) with ``time_major=True``.
    h0 : array_like or None
        (B, H) initial state; None means zeros.
    kernel : array_like
        (I, 3H), column blocks (z, r, h).
    recurrent_kernel : array_like
        (H, 3H).
    bias : array_like
        (2, 3H) -- input bias, recurrent bias -- with ``reset_after=True``, else (3H,).
    reset_after : bool
        True: Keras' default, cuDNN and PyTorch; False: the original GRU.
    time_major, return_state, training : bool
        As for :func:`lstm`.

    Returns
    -------
    outputs : ndarray
        (B, T, H) or (T, B, H).
    h_T : ndarray
        (B, H), only when ``return_state``.
    cache : RecurrentCache
        Only when ``training``, for :func:`gru_backward`.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> B, T, I, H = 2, 5, 3, 4
    >>> out, h = fastnn.gru(np.ones((B, T, I)), None, np.full((I, 3 * H), 0.1),
    ...                     np.full((H, 3 * H), 0.1), np.zeros((2, 3 * H)))
    >>> out.shape, h.shape
    ((2, 5, 4), (2, 4))
    """
    fn = "gru"
    reset_after = as_bool(reset_after, "reset_after", fn)
    time_major = as_bool(time_major, "time_major", fn)
    return_state = as_bool(return_state, "return_state", fn)
    training = as_bool(training, "training", fn)
    x, T, B, I = _sequence_x(x, fn, time_major)
    rk = as_float_array(recurrent_kernel, "recurrent_kernel", fn)
    check_ndim(rk, 2, "recurrent_kernel", fn, "(H, 3H)")
    H = rk.shape[0]
    h0 = _state(h0, B, H, "h0", fn, "x")
    kernel, rk, bias = _gru_weights(kernel, rk, bias, I, H, reset_after, fn)
    return _gru_forward(x, h0, kernel, rk, bias, reset_after, time_major, return_state,
                        training)


def _gru_forward(x, h0, kernel, rk, bias, reset_after, time_major, return_state, training):
    """:func:`gru` on checked arguments: float arrays of consistent shapes (h0 may be
    None) and bool flags."""
    T, B = (x.shape[0], x.shape[1]) if time_major else (x.shape[1], x.shape[0])
    I, H = x.shape[2], rk.shape[0]
    dt = result_dtype(x, h0, kernel, rk, bias)
    xt = _time_major(x, dt, time_major)
    kc, rkc = contiguous(kernel, dt), contiguous(rk, dt)
    bc = contiguous(bias, dt).reshape(-1)
    hs = _initial(h0, B, H, dt, T + 1)
    z = np.empty((T * B, 3 * H), dt)
    steps = T if training else 1
    if reset_after:
        q, qh, rh = np.empty((steps * B, 3 * H), dt), z[:0], z[:0]
        b_in, b_rec = bc[:3 * H], bc[3 * H:]
    else:
        q, qh, rh = np.empty((B, 2 * H), dt), np.empty((B, H), dt), np.empty((steps * B, H), dt)
        b_in = b_rec = bc
    if T and B and H:
        _GRU_FWD[dt](xt, kc, rkc, b_in, b_rec, z, q, qh, rh, hs, T, B, bool(reset_after),
                     bool(training), _seq_threads(B, H))
    outputs = _outputs(hs, T, B, H, time_major, training)
    result = (outputs, hs[T * B:].copy()) if return_state else (outputs,)
    if training:
        cache = RecurrentCache(kind="gru", dtype=dt, time_major=bool(time_major), T=T, B=B,
                               I=I, H=H, x=xt, kernel=kc, recurrent_kernel=rkc, hs=hs,
                               gates=z, q=q, rh=rh, reset_after=bool(reset_after))
        result += (cache,)
    return result if len(result) > 1 else result[0]


def gru_backward(grad_outputs: ArrayLike | None, grad_hT: ArrayLike | None,
                 cache: RecurrentCache) -> Grads5:
    """Backpropagation through time for :func:`gru`.

    Parameters
    ----------
    grad_outputs : array_like or None
        Gradient with respect to the outputs (their shape and layout); None for zero.
    grad_hT : array_like or None
        (B, H) gradient with respect to the final state; None for zero.
    cache : RecurrentCache
        From ``gru(..., training=True)``.

    Returns
    -------
    grad_x, grad_h0, grad_kernel, grad_recurrent_kernel, grad_bias : ndarray
        Shaped like x, h0 (B, H), kernel, recurrent_kernel and bias.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> rng = np.random.default_rng(0)
    >>> out, h, cache = fastnn.gru(rng.standard_normal((2, 5, 3)), None,
    ...                            rng.standard_normal((3, 12)), rng.standard_normal((4, 12)),
    ...                            np.zeros((2, 12)), training=True)
    >>> [g.shape for g in fastnn.gru_backward(np.ones_like(out), None, cache)]
    [(2, 5, 3), (2, 4), (3, 12), (4, 12), (2, 12)]
    """
    fn = "gru_backward"
    g, g_step, ldg, dh = _backward_inputs(grad_outputs, grad_hT, cache, "gru", fn)
    T, B, I, H, dt = cache.T, cache.B, cache.I, cache.H, cache.dtype
    dz = np.empty((T * B, 3 * H), dt)
    dq = np.empty((T * B, 3 * H) if cache.reset_after else (B, H), dt)
    gx = np.empty((T * B, I), dt)
    gk = np.empty((I, 3 * H), dt)
    grk = np.empty((H, 3 * H), dt)
    gb = np.empty((2 if cache.reset_after else 1, 3 * H), dt)
    if T and B and H:
        _GRU_BWD[dt](cache.x, cache.kernel, cache.recurrent_kernel, cache.gates, cache.q,
                     cache.rh, cache.hs, g, g_step, ldg, dh, dz, dq, gx, gk, grk, gb, T, B,
                     cache.reset_after, _seq_threads(B, H))
    else:
        _zero_grads(gx, gk, grk, gb)
    return _grad_x(gx, cache), dh, gk, grk, gb if cache.reset_after else gb[0]


def gru_cell(x: ArrayLike, h: ArrayLike, kernel: ArrayLike, recurrent_kernel: ArrayLike,
             bias: ArrayLike, *, reset_after: bool = True) -> FloatArray:
    """One GRU step (Keras layout; :func:`gru` over a single step).

    Parameters
    ----------
    x : array_like
        (B, I).
    h : array_like
        (B, H).
    kernel, recurrent_kernel, bias, reset_after
        As for :func:`gru`.

    Returns
    -------
    h_new : ndarray
        (B, H).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> h = fastnn.gru_cell(np.ones((1, 2)), np.zeros((1, 3)), np.full((2, 9), 0.1),
    ...                     np.full((3, 9), 0.1), np.zeros(9), reset_after=False)
    >>> round(float(h[0, 0]), 6)
    0.088852
    """
    fn = "gru_cell"
    reset_after = as_bool(reset_after, "reset_after", fn)
    x, h, weights = _gru_cell_inputs(fn, x, h, kernel, recurrent_kernel, bias, reset_after)
    _, h_new = _gru_forward(x[:, None], h, *weights, reset_after, False, True, False)
    return h_new


def gru_cell_backward(grad_h: ArrayLike | None, x: ArrayLike, h: ArrayLike, kernel: ArrayLike,
                      recurrent_kernel: ArrayLike, bias: ArrayLike, *, reset_after: bool = True
                      ) -> Grads5:
    """Gradients of :func:`gru_cell` (one forward step with its cache, then the backward).

    Returns
    -------
    grad_x, grad_h, grad_kernel, grad_recurrent_kernel, grad_bias : ndarray
        Shaped like x, h, kernel, recurrent_kernel and bias.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> grads = fastnn.gru_cell_backward(np.ones((1, 3)), np.ones((1, 2)), np.zeros((1, 3)),
    ...                                  np.full((2, 9), 0.1), np.full((3, 9), 0.1),
    ...                                  np.zeros((2, 9)))
    >>> [g.shape for g in grads]
    [(1, 2), (1, 3), (2, 9), (3, 9), (2, 9)]
    """
    fn = "gru_cell_backward"
    reset_after = as_bool(reset_after, "reset_after", fn)
    x, h, weights = _gru_cell_inputs(fn, x, h, kernel, recurrent_kernel, bias, reset_after)
    _, _, cache = _gru_forward(x[:, None], h, *weights, reset_after, False, True, True)
    gx, gh, gk, grk, gb = gru_backward(None, _grad_state(grad_h, cache, "grad_h", fn), cache)
    return gx[:, 0], gh, gk, grk, gb


# ------------------------------------------------------------------ SimpleRNN
_ACTIVATIONS = ("tanh", "relu")


@overload
def simple_rnn(x: ArrayLike, h0: ArrayLike | None, kernel: ArrayLike,
               recurrent_kernel: ArrayLike, bias: ArrayLike, *,
               activation: str = "tanh", time_major: bool = False,
               training: Literal[False] = ...
               ) -> tuple[FloatArray, FloatArray]: ...


@overload
def simple_rnn(x: ArrayLike, h0: ArrayLike | None, kernel: ArrayLike,
               recurrent_kernel: ArrayLike, bias: ArrayLike, *,
               activation: str = "tanh", time_major: bool = False,
               training: Literal[True]
               ) -> tuple[FloatArray, FloatArray, RecurrentCache]: ...


@overload
def simple_rnn(x: ArrayLike, h0: ArrayLike | None, kernel: ArrayLike,
               recurrent_kernel: ArrayLike, bias: ArrayLike, *,
               activation: str = "tanh", time_major: bool = False,
               training: bool = ...
               ) -> _RNNResult: ...


def simple_rnn(x: ArrayLike, h0: ArrayLike | None, kernel: ArrayLike,
               recurrent_kernel: ArrayLike, bias: ArrayLike, *,
               activation: str = "tanh", time_major: bool = False,
               training: bool = False
               ) -> _RNNResult:
    """A simple (Elman) RNN over a sequence, Keras layout:
    ``h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)``.

    Parameters
    ----------
    x : array_like
        (B, T, I), or (T, B, I) with ``time_major=True``.
    h0 : array_like or None
        (B, H) initial state; None means zeros.
    kernel : array_like
        (I, H).
    recurrent_kernel : array_like
        (H, H).
    bias : array_like
        (H,).
    activation : {"tanh", "relu"}
    time_major, training : bool
        As for :func:`lstm`.

    Returns
    -------
    outputs : ndarray
        (B, T, H) or (T, B, H).
    h_T : ndarray
        (B, H).
    cache : RecurrentCache
        Only when ``training``, for :func:`simple_rnn_backward`.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> out, h = fastnn.simple_rnn(np.ones((1, 3, 2)), None, np.full((2, 2), 0.5),
    ...                            np.eye(2), np.zeros(2), activation="relu")
    >>> out[0, :, 0]
    array([1., 2., 3.])
    """
    fn = "simple_rnn"
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be 'tanh' or 'relu', got {activation!r}")
    time_major = as_bool(time_major, "time_major", fn)
    training = as_bool(training, "training", fn)
    x, T, B, I = _sequence_x(x, fn, time_major)
    rk = as_float_array(recurrent_kernel, "recurrent_kernel", fn)
    check_ndim(rk, 2, "recurrent_kernel", fn, "(H, H)")
    H = rk.shape[0]
    check_shape(rk, (H, H), "recurrent_kernel", fn, "(H, H)")
    h0 = _state(h0, B, H, "h0", fn, "x")
    kernel = as_float_array(kernel, "kernel", fn)
    check_shape(kernel, (I, H), "kernel", fn, "(I, H)")
    bias = as_float_array(bias, "bias", fn)
    check_shape(bias, (H,), "bias", fn, "(H,)")
    dt = result_dtype(x, h0, kernel, rk, bias)
    xt = _time_major(x, dt, time_major)
    kc, rkc, bc = contiguous(kernel, dt), contiguous(rk, dt), contiguous(bias, dt)
    hs = _initial(h0, B, H, dt, T + 1)
    z = np.empty((T * B, H), dt)
    relu = activation == "relu"
    if T and B and H:
        _RNN_FWD[dt](xt, kc, rkc, bc, z, hs, T, B, relu, _seq_threads(B, H))
    result = (_outputs(hs, T, B, H, time_major, training), hs[T * B:].copy())
    if training:
        result += (RecurrentCache(kind="simple_rnn", dtype=dt, time_major=bool(time_major),
                                  T=T, B=B, I=I, H=H, x=xt, kernel=kc, recurrent_kernel=rkc,
                                  hs=hs, relu=relu),)
    return result


def simple_rnn_backward(grad_outputs: ArrayLike | None, grad_hT: ArrayLike | None,
                        cache: RecurrentCache) -> Grads5:
    """Backpropagation through time for :func:`simple_rnn`.

    Returns
    -------
    grad_x, grad_h0, grad_kernel, grad_recurrent_kernel, grad_bias : ndarray
        Shaped like x, h0 (B, H), kernel, recurrent_kernel and bias. With relu the
        derivative at 0 is taken as 0.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> out, h, cache = fastnn.simple_rnn(np.ones((1, 3, 2)), None, np.full((2, 2), 0.5),
    ...                                   np.eye(2), np.zeros(2), activation="relu",
    ...                                   training=True)
    >>> gx, gh0, gk, grk, gb = fastnn.simple_rnn_backward(None, np.ones((1, 2)), cache)
    >>> gb
    array([3., 3.])
    """
    fn = "simple_rnn_backward"
    g, g_step, ldg, dh = _backward_inputs(grad_outputs, grad_hT, cache, "simple_rnn", fn)
    T, B, I, H, dt = cache.T, cache.B, cache.I, cache.H, cache.dtype
    dz = np.empty((T * B, H), dt)
    gx = np.empty((T * B, I), dt)
    gk = np.empty((I, H), dt)
    grk = np.empty((H, H), dt)
    gb = np.empty(H, dt)
    if T and B and H:
        _RNN_BWD[dt](cache.x, cache.kernel, cache.recurrent_kernel, cache.hs, g, g_step, ldg,
                     dh, dz, gx, gk, grk, gb, T, B, cache.relu, _seq_threads(B, H))
    else:
        _zero_grads(gx, gk, grk, gb)
    return _grad_x(gx, cache), dh, gk, grk, gb
