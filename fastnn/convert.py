"""Exact weight converters between fastnn's recurrent layouts and PyTorch / Keras.

Layouts
-------
fastnn LSTM (TensorFlow BasicLSTMCell): ``kernel`` (I + H, 4H) over ``[x, h]``, column
blocks (i, j, f, o) -- j is the cell candidate -- and one ``bias`` (4H,).
PyTorch LSTM: ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih``, ``bias_hh``
(4H,), row blocks (i, f, g, o). Keras LSTM: ``kernel`` (I, 4H), ``recurrent_kernel``
(H, 4H), ``bias`` (4H,), column blocks (i, f, c, o).

GRU: fastnn uses Keras' layout -- ``kernel`` (I, 3H), ``recurrent_kernel`` (H, 3H),
blocks (z, r, h), ``bias`` (2, 3H) (input bias, recurrent bias) with reset_after=True.
PyTorch GRU: ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), row blocks (r, z, n), its
new gate being reset-after.

forget_bias
-----------
The converters move weights exactly and never fold a forget bias: a converted PyTorch
or Keras LSTM is reproduced by :func:`fastnn.lstm` with ``forget_bias=0.0``. To move a
TensorFlow BasicLSTMCell trained with ``forget_bias=b`` to a framework without one, add
``b`` to the f block of the bias first, ``bias[2 * H:3 * H] += b`` (fastnn order), and
use ``forget_bias=0.0`` from then on.

Every function returns new C-contiguous arrays in the inputs' (promoted) dtype.
"""
from __future__ import annotations

import numpy as np

from fastnn._typing import ArrayLike, FloatArray
from fastnn._validation import as_float_array, as_int, check_ndim, check_shape, result_dtype

__all__ = ["lstm_from_torch", "lstm_to_torch", "lstm_from_keras", "lstm_to_keras",
           "gru_from_torch", "gru_to_torch", "simple_rnn_from_torch", "simple_rnn_to_torch"]


def __dir__() -> list[str]:
    # dir(fastnn.convert) and tab completion list the converters, not the imports.
    return sorted(__all__)

# Block permutations (each is its own inverse).
_TORCH_LSTM = [0, 2, 1, 3]     # (i, f, g, o) <-> (i, j, f, o)
_KERAS_LSTM = [0, 2, 1, 3]     # (i, f, c, o) <-> (i, j, f, o)
_TORCH_GRU = [1, 0, 2]         # (r, z, n) <-> (z, r, h)


def _blocks(a, perm, axis):
    """``a`` with its blocks along ``axis`` (len(perm) equal parts) reordered."""
    parts = np.split(a, len(perm), axis=axis)
    return np.ascontiguousarray(np.concatenate([parts[p] for p in perm], axis=axis))


def _arrays(fn, **named):
    arrays = {k: as_float_array(v, k, fn) for k, v in named.items()}
    dt = result_dtype(*arrays.values())
    return dt, {k: v.astype(dt, copy=False) for k, v in arrays.items()}


def _gate_rows(w, gates, name, fn):
    """The hidden size of a PyTorch weight (gates * H, n)."""
    check_ndim(w, 2, name, fn, f"({gates}H, n)")
    if w.shape[0] % gates:
        raise ValueError(f"{fn}: {name} must have {gates} * H rows, got shape {w.shape}")
    return w.shape[0] // gates


def _torch_inputs(fn, gates, weight_ih, weight_hh, bias_ih, bias_hh):
    dt, a = _arrays(fn, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                    bias_hh=bias_hh)
    H = _gate_rows(a["weight_ih"], gates, "weight_ih", fn)
    check_shape(a["weight_hh"], (gates * H, H), "weight_hh", fn)
    check_shape(a["bias_ih"], (gates * H,), "bias_ih", fn)
    check_shape(a["bias_hh"], (gates * H,), "bias_hh", fn)
    return a, H


def _keras_inputs(fn, gates, kernel, recurrent_kernel, bias):
    """Keras-layout weights: kernel (I, gates * H), recurrent_kernel (H, gates * H)."""
    dt, a = _arrays(fn, kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias)
    rk, k = a["recurrent_kernel"], a["kernel"]
    check_ndim(rk, 2, "recurrent_kernel", fn, f"(H, {gates}H)")
    H = rk.shape[0]
    check_shape(rk, (H, gates * H), "recurrent_kernel", fn)
    check_ndim(k, 2, "kernel", fn, f"(I, {gates}H)")
    check_shape(k, (k.shape[0], gates * H), "kernel", fn)
    return a, H


def lstm_from_torch(weight_ih: ArrayLike, weight_hh: ArrayLike, bias_ih: ArrayLike,
                    bias_hh: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """PyTorch ``nn.LSTM`` / ``nn.LSTMCell`` weights to fastnn's ``(kernel, bias)``.

    Parameters
    ----------
    weight_ih : array_like
        (4H, I), row blocks (i, f, g, o) (``weight_ih_l0`` of ``nn.LSTM``).
    weight_hh : array_like
        (4H, H).
    bias_ih, bias_hh : array_like
        (4H,) each; they are summed.

    Returns
    -------
    kernel : ndarray
        (I + H, 4H), column blocks (i, j, f, o).
    bias : ndarray
        (4H,). Use ``forget_bias=0.0`` with these weights.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import convert
    >>> w_ih, w_hh = np.arange(8.0).reshape(4, 2), np.arange(4.0).reshape(4, 1)
    >>> kernel, bias = convert.lstm_from_torch(w_ih, w_hh, np.arange(4.0), np.ones(4))
    >>> kernel
    array([[0., 4., 2., 6.],
           [1., 5., 3., 7.],
           [0., 2., 1., 3.]])
    >>> bias
    array([1., 3., 2., 4.])
    """
    fn = "lstm_from_torch"
    a, H = _torch_inputs(fn, 4, weight_ih, weight_hh, bias_ih, bias_hh)
    w = np.concatenate([a["weight_ih"], a["weight_hh"]], axis=1)
    return _blocks(w, _TORCH_LSTM, 0).T.copy(), _blocks(a["bias_ih"] + a["bias_hh"],
                                                        _TORCH_LSTM, 0)


def _fastnn_lstm(fn, kernel, bias):
    dt, a = _arrays(fn, kernel=kernel, bias=bias)
    k = a["kernel"]
    check_ndim(k, 2, "kernel", fn, "(I + H, 4H)")
    if k.shape[1] % 4:
        raise ValueError(f"{fn}: kernel must have 4 * H columns, got shape {k.shape}")
    H = k.shape[1] // 4
    if k.shape[0] < H:
        raise ValueError(f"{fn}: kernel must have I + H >= {H} rows, got shape {k.shape}")
    check_shape(a["bias"], (4 * H,), "bias", fn)
    return k, a["bias"], H


def lstm_to_torch(kernel: ArrayLike, bias: ArrayLike
                  ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """fastnn's LSTM ``(kernel, bias)`` to PyTorch ``(weight_ih, weight_hh, bias_ih, bias_hh)``.

    The whole bias goes to ``bias_ih``; ``bias_hh`` is zero. A fastnn model run with
    ``forget_bias=b != 0`` needs ``b`` added to the f block first (see the module notes).

    Parameters
    ----------
    kernel : array_like
        (I + H, 4H), column blocks (i, j, f, o).
    bias : array_like
        (4H,).

    Returns
    -------
    weight_ih : ndarray
        (4H, I), row blocks (i, f, g, o).
    weight_hh : ndarray
        (4H, H).
    bias_ih, bias_hh : ndarray
        (4H,).

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import convert
    >>> w_ih, w_hh, b_ih, b_hh = convert.lstm_to_torch(np.ones((3, 4)), np.arange(4.0))
    >>> w_ih.shape, w_hh.shape, b_ih, b_hh
    ((4, 2), (4, 1), array([0., 2., 1., 3.]), array([0., 0., 0., 0.]))
    """
    fn = "lstm_to_torch"
    k, b, H = _fastnn_lstm(fn, kernel, bias)
    I = k.shape[0] - H
    w = _blocks(k.T, _TORCH_LSTM, 0)
    return (np.ascontiguousarray(w[:, :I]), np.ascontiguousarray(w[:, I:]),
            _blocks(b, _TORCH_LSTM, 0), np.zeros_like(b))


def lstm_from_keras(kernel: ArrayLike, recurrent_kernel: ArrayLike, bias: ArrayLike
                    ) -> tuple[FloatArray, FloatArray]:
    """Keras ``LSTM`` weights to fastnn's ``(kernel, bias)``.

    Parameters
    ----------
    kernel : array_like
        (I, 4H), column blocks (i, f, c, o).
    recurrent_kernel : array_like
        (H, 4H).
    bias : array_like
        (4H,) (Keras' ``unit_forget_bias`` is already in it).

    Returns
    -------
    kernel : ndarray
        (I + H, 4H), column blocks (i, j, f, o).
    bias : ndarray
        (4H,). Use ``forget_bias=0.0``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import convert
    >>> k, b = convert.lstm_from_keras(np.ones((2, 4)), np.zeros((1, 4)), np.arange(4.0))
    >>> k.shape, b
    ((3, 4), array([0., 2., 1., 3.]))
    """
    fn = "lstm_from_keras"
    a, H = _keras_inputs(fn, 4, kernel, recurrent_kernel, bias)
    check_shape(a["bias"], (4 * H,), "bias", fn)
    k = np.concatenate([a["kernel"], a["recurrent_kernel"]], axis=0)
    return _blocks(k, _KERAS_LSTM, 1), _blocks(a["bias"], _KERAS_LSTM, 0)


def lstm_to_keras(kernel: ArrayLike, bias: ArrayLike, input_size: int
                  ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """fastnn's LSTM ``(kernel, bias)`` to Keras ``(kernel, recurrent_kernel, bias)``.

    Parameters
    ----------
    kernel : array_like
        (I + H, 4H), column blocks (i, j, f, o).
    bias : array_like
        (4H,).
    input_size : int
        I, the number of kernel rows that act on x.

    Returns
    -------
    kernel : ndarray
        (I, 4H), column blocks (i, f, c, o).
    recurrent_kernel : ndarray
        (H, 4H).
    bias : ndarray
        (4H,).

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import convert
    >>> k, rk, b = convert.lstm_to_keras(np.ones((3, 4)), np.arange(4.0), 2)
    >>> k.shape, rk.shape, b
    ((2, 4), (1, 4), array([0., 2., 1., 3.]))
    """
    fn = "lstm_to_keras"
    I = as_int(input_size, "input_size", fn, minimum=0)
    k, b, H = _fastnn_lstm(fn, kernel, bias)
    if k.shape[0] != I + H:
        raise ValueError(f"{fn}: kernel must have input_size + H = {I} + {H} = {I + H} rows, "
                         f"got shape {k.shape}")
    k = _blocks(k, _KERAS_LSTM, 1)
    return np.ascontiguousarray(k[:I]), np.ascontiguousarray(k[I:]), _blocks(b, _KERAS_LSTM, 0)


def gru_from_torch(weight_ih: ArrayLike, weight_hh: ArrayLike, bias_ih: ArrayLike,
                   bias_hh: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """PyTorch ``nn.GRU`` / ``nn.GRUCell`` weights to fastnn's (Keras) GRU layout.

    Parameters
    ----------
    weight_ih : array_like
        (3H, I), row blocks (r, z, n).
    weight_hh : array_like
        (3H, H).
    bias_ih, bias_hh : array_like
        (3H,) each.

    Returns
    -------
    kernel : ndarray
        (I, 3H), column blocks (z, r, h).
    recurrent_kernel : ndarray
        (H, 3H).
    bias : ndarray
        (2, 3H): input bias, recurrent bias. Use ``reset_after=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import convert
    >>> k, rk, b = convert.gru_from_torch(np.ones((3, 2)), np.ones((3, 1)), np.arange(3.0),
    ...                                   np.zeros(3))
    >>> k.shape, rk.shape, b
    ((2, 3), (1, 3), array([[1., 0., 2.],
           [0., 0., 0.]]))
    """
    fn = "gru_from_torch"
    a, H = _torch_inputs(fn, 3, weight_ih, weight_hh, bias_ih, bias_hh)
    bias = np.stack([_blocks(a["bias_ih"], _TORCH_GRU, 0), _blocks(a["bias_hh"], _TORCH_GRU, 0)])
    return (_blocks(a["weight_ih"], _TORCH_GRU, 0).T.copy(),
            _blocks(a["weight_hh"], _TORCH_GRU, 0).T.copy(), bias)


def gru_to_torch(kernel: ArrayLike, recurrent_kernel: ArrayLike, bias: ArrayLike
                 ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """fastnn's (Keras) GRU weights, reset_after=True, to PyTorch's.

    Parameters
    ----------
    kernel : array_like
        (I, 3H), column blocks (z, r, h).
    recurrent_kernel : array_like
        (H, 3H).
    bias : array_like
        (2, 3H): input bias, recurrent bias. (A reset_after=False GRU, bias (3H,), has
        no exact PyTorch equivalent: ValueError.)

    Returns
    -------
    weight_ih : ndarray
        (3H, I), row blocks (r, z, n).
    weight_hh : ndarray
        (3H, H).
    bias_ih, bias_hh : ndarray
        (3H,).

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import convert
    >>> w_ih, w_hh, b_ih, b_hh = convert.gru_to_torch(np.ones((2, 3)), np.ones((1, 3)),
    ...                                               np.arange(6.0).reshape(2, 3))
    >>> w_ih.shape, b_ih, b_hh
    ((3, 2), array([1., 0., 2.]), array([4., 3., 5.]))
    """
    fn = "gru_to_torch"
    a, H = _keras_inputs(fn, 3, kernel, recurrent_kernel, bias)
    rk = a["recurrent_kernel"]
    if a["bias"].shape != (2, 3 * H):
        raise ValueError(f"{fn}: bias must have shape (2, {3 * H}) (reset_after=True; PyTorch "
                         f"has no reset_after=False GRU), got {a['bias'].shape}")
    b = a["bias"]
    return (_blocks(a["kernel"], _TORCH_GRU, 1).T.copy(), _blocks(rk, _TORCH_GRU, 1).T.copy(),
            _blocks(b[0], _TORCH_GRU, 0), _blocks(b[1], _TORCH_GRU, 0))


def simple_rnn_from_torch(weight_ih: ArrayLike, weight_hh: ArrayLike, bias_ih: ArrayLike,
                          bias_hh: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """PyTorch ``nn.RNN`` / ``nn.RNNCell`` weights to fastnn's (Keras) SimpleRNN layout.

    Parameters
    ----------
    weight_ih : array_like
        (H, I).
    weight_hh : array_like
        (H, H).
    bias_ih, bias_hh : array_like
        (H,) each.

    Returns
    -------
    kernel : ndarray
        (I, H).
    recurrent_kernel : ndarray
        (H, H).
    bias : ndarray
        (H,): ``bias_ih + bias_hh`` (the two only ever appear summed).

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import convert
    >>> k, rk, b = convert.simple_rnn_from_torch(np.ones((3, 2)), np.eye(3), np.arange(3.0),
    ...                                          np.ones(3))
    >>> k.shape, rk.shape, b
    ((2, 3), (3, 3), array([1., 2., 3.]))
    """
    a, H = _torch_inputs("simple_rnn_from_torch", 1, weight_ih, weight_hh, bias_ih, bias_hh)
    return a["weight_ih"].T.copy(), a["weight_hh"].T.copy(), a["bias_ih"] + a["bias_hh"]


def simple_rnn_to_torch(kernel: ArrayLike, recurrent_kernel: ArrayLike, bias: ArrayLike
                        ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """fastnn's (Keras) SimpleRNN weights to PyTorch's ``nn.RNN`` ones.

    Parameters
    ----------
    kernel : array_like
        (I, H).
    recurrent_kernel : array_like
        (H, H).
    bias : array_like
        (H,).

    Returns
    -------
    weight_ih : ndarray
        (H, I).
    weight_hh : ndarray
        (H, H).
    bias_ih, bias_hh : ndarray
        (H,): the bias, and zeros.

    Examples
    --------
    >>> import numpy as np
    >>> from fastnn import convert
    >>> w_ih, w_hh, b_ih, b_hh = convert.simple_rnn_to_torch(np.ones((2, 3)), np.eye(3),
    ...                                                      np.arange(3.0))
    >>> w_ih.shape, b_ih, b_hh
    ((3, 2), array([0., 1., 2.]), array([0., 0., 0.]))
    """
    fn = "simple_rnn_to_torch"
    a, H = _keras_inputs(fn, 1, kernel, recurrent_kernel, bias)
    check_shape(a["bias"], (H,), "bias", fn)
    return (a["kernel"].T.copy(), a["recurrent_kernel"].T.copy(), a["bias"].copy(),
            np.zeros_like(a["bias"]))
