"""Activations: relu, leaky_relu, sigmoid, tanh, softmax, log_softmax, softmax
cross-entropy, and their gradients.

The elementwise functions take arrays of any shape; ``*_backward(grad_y, ...)``
returns the gradient with respect to the forward input, shaped like it. Backward
functions that need the forward *output* (sigmoid, tanh, softmax, log_softmax) take
that output ``y``, as PyTorch's ``sigmoid_backward`` / ``_softmax_backward_data`` do:
it is what a layer keeps for its backward pass anyway.

``out=`` must have exactly the result shape and dtype. The elementwise functions may
write in place (``out=x``, or ``out=grad_y`` for a backward); the result is the same
as out of place. For every other overlap of ``out`` with an input the result is
computed into a temporary first. Inputs are never modified otherwise.

Every kernel makes one pass over memory (softmax and cross-entropy rows are read
again while they are in cache), runs in parallel over fixed blocks or groups of rows
above a size threshold, and is bitwise identical for any thread count.
"""
from __future__ import annotations

import math

import numpy as np

from fastnn._threads import threads_for
from fastnn._typing import ArrayLike, FloatArray
from fastnn._validation import (as_array, as_float_array, as_int, as_real, by_dtype,
                                contiguous, finish_out, prepare_out, result_dtype)
from fastnn_ext import _activations

__all__ = [
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward",
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "softmax_cross_entropy", "softmax_cross_entropy_backward",
]

_REDUCTIONS = ("mean", "sum", "none")


# ------------------------------------------------------------------ helpers
def _prepare_out_inplace(out, shape, dtype, fn, inputs):
    """``prepare_out`` for elementwise kernels, which may write over an input they
    read element by element: an input that ``out`` aliases exactly (the same elements
    in the same order) does not count as an overlap; any other overlap still goes
    through a temporary."""
    return prepare_out(out, shape, dtype, fn, inputs, exact_alias_ok=True)


_CHEAP = "elementwise"
_EXP = "exp"


def _unary(fn, kernel, par_min, x, out, *scalars):
    """``kernel[dtype](x, y, *scalars, num_threads)`` over flat buffers; y is returned
    (``out`` when given; ``out=x`` is written in place)."""
    x = as_float_array(x, "x", fn)
    dtype = x.dtype
    # as_float_array gave an aligned array and a copy is aligned too: contiguous()'s
    # own alignment check (about 35 ns) is not needed on these small-call paths.
    xc = np.ascontiguousarray(x)
    if out is None:
        buf, target = np.empty(x.shape, dtype=dtype), None
    else:
        buf, target = _prepare_out_inplace(out, x.shape, dtype, fn, (xc,))
    n = buf.size
    if n:
        kernel[dtype](xc.reshape(-1), buf.reshape(-1), *scalars, threads_for(n, par_min))
    return finish_out(buf, target)


def _binary(fn, kernel, par_min, grad_y, a, a_name, out, *scalars):
    """``kernel[dtype](grad_y, a, out, *scalars, num_threads)`` for a backward whose
    second input ``a`` (x or the forward output y) fixes the shape; ``out=grad_y`` or
    ``out=a`` is written in place."""
    grad_y = as_float_array(grad_y, "grad_y", fn)
    a = as_float_array(a, a_name, fn)
    if grad_y.shape != a.shape:
        raise ValueError(f"{fn}: grad_y must have the shape of {a_name} {a.shape}, "
                         f"got {grad_y.shape}")
    dtype = a.dtype if grad_y.dtype == a.dtype else result_dtype(grad_y, a)
    gc, ac = np.ascontiguousarray(grad_y, dtype), np.ascontiguousarray(a, dtype)  # (as in _unary)
    if out is None:
        buf, target = np.empty(a.shape, dtype=dtype), None
    else:
        buf, target = _prepare_out_inplace(out, a.shape, dtype, fn, (gc, ac))
    n = buf.size
    if n:
        kernel[dtype](gc.reshape(-1), ac.reshape(-1), buf.reshape(-1), *scalars,
                      threads_for(n, par_min))
    return finish_out(buf, target)


_RELU = by_dtype(_activations, "relu")
_RELU_BWD = by_dtype(_activations, "relu_backward")
_LEAKY = by_dtype(_activations, "leaky_relu")
_LEAKY_BWD = by_dtype(_activations, "leaky_relu_backward")
_SIGMOID = by_dtype(_activations, "sigmoid")
_SIGMOID_BWD = by_dtype(_activations, "sigmoid_backward")
_TANH = by_dtype(_activations, "tanh")
_TANH_BWD = by_dtype(_activations, "tanh_backward")
_SOFTMAX = by_dtype(_activations, "softmax")
_SOFTMAX_BWD = by_dtype(_activations, "softmax_backward")
_XENT = by_dtype(_activations, "cross_entropy")
_XENT_BWD = by_dtype(_activations, "cross_entropy_backward")


# ------------------------------------------------------------------ relu
def relu(x: ArrayLike, *, out: FloatArray | None = None) -> FloatArray:
    """Rectified linear unit, ``max(x, 0)``.

    Parameters
    ----------
    x : array_like
        float32 or float64, any shape.
    out : ndarray, optional
        Result buffer of x's shape and dtype; ``out=x`` works in place.

    Returns
    -------
    y : ndarray
        ``np.maximum(x, 0)``, exactly: ``relu(NaN)`` is NaN and ``relu(-0.0)`` is
        ``+0.0`` (``torch.relu`` keeps ``-0.0``; the values compare equal).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.relu(np.array([-2.0, 0.0, 3.0, np.nan]))
    array([ 0.,  0.,  3., nan])
    """
    return _unary("relu", _RELU, _CHEAP, x, out)


def relu_backward(grad_y: ArrayLike, x: ArrayLike, *, at_zero: float = 0.0,
                  out: FloatArray | None = None) -> FloatArray:
    """Gradient of :func:`relu`: a select, not a product.

    ``grad_x = grad_y`` where ``x > 0``, ``at_zero * grad_y`` where ``x == 0`` (either
    sign of zero), and exactly 0 where ``x < 0`` or x is NaN, so a NaN or Inf in
    ``grad_y`` at a blocked position gives 0, like PyTorch's ``threshold_backward``.
    With the default ``at_zero=0.0`` the points ``x == 0`` are blocked too (0 even
    where grad_y is NaN or Inf: exactly ``threshold_backward(grad_y, x, 0)``).

    Parameters
    ----------
    grad_y : array_like
        Gradient with respect to relu's output, x's shape.
    x : array_like
        The forward input.
    at_zero : float
        The subgradient used at ``x == 0`` (0 like PyTorch and TensorFlow; 1 or 0.5
        are other common choices).
    out : ndarray, optional
        Result buffer; ``out=grad_y`` (or ``out=x``) works in place.

    Returns
    -------
    grad_x : ndarray
        Shaped like x, in the promoted dtype of grad_y and x.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.array([-1.0, 0.0, 2.0, np.nan])
    >>> fastnn.relu_backward(np.array([np.inf, 5.0, 3.0, np.nan]), x)
    array([0., 0., 3., 0.])
    >>> fastnn.relu_backward(np.ones(4), x, at_zero=0.5)
    array([0. , 0.5, 1. , 0. ])
    """
    fn = "relu_backward"
    at_zero = as_real(at_zero, "at_zero", fn)
    return _binary(fn, _RELU_BWD, _CHEAP, grad_y, x, "x", out, at_zero)


# ------------------------------------------------------------------ leaky relu
def leaky_relu(x: ArrayLike, negative_slope: float = 0.01, *, out: FloatArray | None = None
               ) -> FloatArray:
    """Leaky ReLU: ``x`` where ``x > 0``, else ``negative_slope * x``.

    Parameters
    ----------
    x : array_like
        float32 or float64, any shape.
    negative_slope : float
        The slope for ``x <= 0`` (PyTorch's default 0.01; Keras uses 0.3).
    out : ndarray, optional
        Result buffer of x's shape and dtype; ``out=x`` works in place.

    Returns
    -------
    y : ndarray
        NaN stays NaN and ``-0.0`` gives ``-0.0`` (``torch.nn.functional.leaky_relu``'s
        rule; the slope is rounded to x's dtype first, as there).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.leaky_relu(np.array([-2.0, 0.0, 3.0]), 0.1)
    array([-0.2,  0. ,  3. ])
    """
    fn = "leaky_relu"
    negative_slope = as_real(negative_slope, "negative_slope", fn)
    return _unary(fn, _LEAKY, _CHEAP, x, out, negative_slope)


def leaky_relu_backward(grad_y: ArrayLike, x: ArrayLike, negative_slope: float = 0.01, *,
                        out: FloatArray | None = None) -> FloatArray:
    """Gradient of :func:`leaky_relu`: ``grad_y`` where ``x > 0``, else
    ``negative_slope * grad_y`` (also at ``x == 0`` and where x is NaN, like PyTorch).

    Parameters
    ----------
    grad_y : array_like
        Gradient with respect to leaky_relu's output, x's shape.
    x : array_like
        The forward input.
    negative_slope : float
        As given to the forward call.
    out : ndarray, optional
        Result buffer; ``out=grad_y`` (or ``out=x``) works in place.

    Returns
    -------
    grad_x : ndarray
        Shaped like x, in the promoted dtype of grad_y and x.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.leaky_relu_backward(np.ones(3), np.array([-2.0, 0.0, 3.0]), 0.1)
    array([0.1, 0.1, 1. ])
    """
    fn = "leaky_relu_backward"
    negative_slope = as_real(negative_slope, "negative_slope", fn)
    return _binary(fn, _LEAKY_BWD, _CHEAP, grad_y, x, "x", out, negative_slope)


# ------------------------------------------------------------------ sigmoid, tanh
def sigmoid(x: ArrayLike, *, out: FloatArray | None = None) -> FloatArray:
    """Logistic sigmoid ``1 / (1 + exp(-x))``.

    Parameters
    ----------
    x : array_like
        float32 or float64, any shape.
    out : ndarray, optional
        Result buffer of x's shape and dtype; ``out=x`` works in place.

    Returns
    -------
    y : ndarray
        Relative error below 2 eps of the dtype (measured) in both tails: it is
        computed from ``exp(-|x|)``, so nothing overflows and the tiny values for very
        negative x keep their relative accuracy (down to subnormals). NaN stays NaN.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.sigmoid(np.array([-np.inf, 0.0, np.inf]))
    array([0. , 0.5, 1. ])
    """
    return _unary("sigmoid", _SIGMOID, _EXP, x, out)


def sigmoid_backward(grad_y: ArrayLike, y: ArrayLike, *, out: FloatArray | None = None
                     ) -> FloatArray:
    """Gradient of :func:`sigmoid` from its **output** ``y = sigmoid(x)``:
    ``grad_y * y * (1 - y)`` (PyTorch's ``sigmoid_backward(grad_output, output)``).

    Parameters
    ----------
    grad_y : array_like
        Gradient with respect to sigmoid's output, y's shape.
    y : array_like
        The forward **output** (not x): what a layer keeps for its backward pass.
    out : ndarray, optional
        Result buffer; ``out=grad_y`` (or ``out=y``) works in place.

    Returns
    -------
    grad_x : ndarray
        Shaped like y, in the promoted dtype of grad_y and y.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> y = fastnn.sigmoid(np.zeros(2))
    >>> fastnn.sigmoid_backward(np.array([1.0, 2.0]), y)
    array([0.25, 0.5 ])
    """
    return _binary("sigmoid_backward", _SIGMOID_BWD, _CHEAP, grad_y, y, "y", out)


def tanh(x: ArrayLike, *, out: FloatArray | None = None) -> FloatArray:
    """Hyperbolic tangent.

    Parameters
    ----------
    x : array_like
        float32 or float64, any shape.
    out : ndarray, optional
        Result buffer of x's shape and dtype; ``out=x`` works in place.

    Returns
    -------
    y : ndarray
        Relative error below 10 eps of the dtype (measured, worst near
        ``|x| = 0.1`` where the formula switches); ``tanh(-0.0)`` is ``-0.0``,
        ``tanh(+-inf)`` is ``+-1``, NaN stays NaN.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.tanh(np.array([-np.inf, 0.0, np.inf]))
    array([-1.,  0.,  1.])
    """
    return _unary("tanh", _TANH, _EXP, x, out)


def tanh_backward(grad_y: ArrayLike, y: ArrayLike, *, out: FloatArray | None = None) -> FloatArray:
    """Gradient of :func:`tanh` from its **output** ``y = tanh(x)``:
    ``grad_y * (1 - y**2)`` (PyTorch's ``tanh_backward(grad_output, output)``),
    computed as ``(1 - y) * (1 + y)``, which keeps full accuracy for ``|y|`` near 1.

    Parameters
    ----------
    grad_y : array_like
        Gradient with respect to tanh's output, y's shape.
    y : array_like
        The forward **output** (not x).
    out : ndarray, optional
        Result buffer; ``out=grad_y`` (or ``out=y``) works in place.

    Returns
    -------
    grad_x : ndarray
        Shaped like y, in the promoted dtype of grad_y and y.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.tanh_backward(np.array([1.0, 1.0]), np.array([0.0, 0.5]))
    array([1.  , 0.75])
    """
    return _binary("tanh_backward", _TANH_BWD, _CHEAP, grad_y, y, "y", out)


# ------------------------------------------------------------------ softmax
def _axis(axis, ndim, fn):
    if type(axis) is not int:
        axis = as_int(axis, "axis", fn)
    n = max(ndim, 1)
    if not -n <= axis < n:
        raise ValueError(f"{fn}: axis {axis} is out of bounds for an array of dimension {ndim}")
    return axis % n


def _softmax_view(shape, axis):
    """(outer, n, inner) of a C-contiguous array reduced along ``axis``."""
    if not shape:
        return 1, 1, 1
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _softmax_forward(fn, x, axis, out, log):
    x = as_float_array(x, "x", fn)
    axis = _axis(axis, x.ndim, fn)
    dtype = x.dtype
    buf, target = prepare_out(out, x.shape, dtype, fn, (x,))
    if buf.size:
        outer, n, inner = _softmax_view(x.shape, axis)
        _SOFTMAX[dtype](contiguous(x, dtype).reshape(-1), buf.reshape(-1), outer, n, inner, log,
                        threads_for(buf.size, _EXP))
    return finish_out(buf, target)


def _softmax_backward(fn, grad_y, y, axis, out, log):
    grad_y = as_float_array(grad_y, "grad_y", fn)
    y = as_float_array(y, "y", fn)
    if grad_y.shape != y.shape:
        raise ValueError(f"{fn}: grad_y must have the shape of y {y.shape}, got {grad_y.shape}")
    axis = _axis(axis, y.ndim, fn)
    dtype = result_dtype(grad_y, y)
    buf, target = prepare_out(out, y.shape, dtype, fn, (grad_y, y))
    if buf.size:
        outer, n, inner = _softmax_view(y.shape, axis)
        _SOFTMAX_BWD[dtype](contiguous(grad_y, dtype).reshape(-1),
                            contiguous(y, dtype).reshape(-1), buf.reshape(-1),
                            outer, n, inner, log, threads_for(buf.size, _EXP))
    return finish_out(buf, target)


def softmax(x: ArrayLike, axis: int = -1, *, out: FloatArray | None = None) -> FloatArray:
    """Softmax along ``axis``: ``exp(x - max) / sum(exp(x - max))``.

    Numerically stable (the maximum is subtracted first, so nothing overflows). A
    row holding NaN or +inf, or only -inf, gives NaN, as the NumPy formula and
    PyTorch do.

    Parameters
    ----------
    x : array_like
        float32 or float64, any shape (any axis; the last is the fastest).
    axis : int
        The axis that sums to 1.
    out : ndarray, optional
        Result buffer of x's shape and dtype (``out=x`` goes through a temporary).

    Returns
    -------
    y : ndarray
        x's shape and dtype; sums are accumulated in float64, so float32 rows of any
        length sum to 1 within float32 rounding.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.softmax(np.array([[1.0, 1.0], [0.0, np.log(3.0)]]))
    array([[0.5 , 0.5 ],
           [0.25, 0.75]])
    """
    return _softmax_forward("softmax", x, axis, out, False)


def log_softmax(x: ArrayLike, axis: int = -1, *, out: FloatArray | None = None) -> FloatArray:
    """Log of :func:`softmax` along ``axis``: ``x - max - log(sum(exp(x - max)))``.

    Stable for any input scale (``log_softmax([0, -1000])`` is ``[0, -1000]``, where
    ``log(softmax(x))`` would give ``-inf``).

    Parameters
    ----------
    x : array_like
        float32 or float64, any shape.
    axis : int
        The axis normalised over.
    out : ndarray, optional
        Result buffer of x's shape and dtype (``out=x`` goes through a temporary).

    Returns
    -------
    y : ndarray
        x's shape and dtype. NaN and Inf behave as in :func:`softmax`.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.log_softmax(np.array([0.0, -1000.0]))
    array([    0., -1000.])
    """
    return _softmax_forward("log_softmax", x, axis, out, True)


def softmax_backward(grad_y: ArrayLike, y: ArrayLike, axis: int = -1, *,
                     out: FloatArray | None = None) -> FloatArray:
    """Gradient of :func:`softmax` from its **output** ``y``:
    ``y * (grad_y - sum(grad_y * y, axis))`` (PyTorch's ``_softmax_backward_data``).

    Parameters
    ----------
    grad_y : array_like
        Gradient with respect to softmax's output, y's shape.
    y : array_like
        The forward **output** ``softmax(x, axis)``.
    axis : int
        As given to the forward call.
    out : ndarray, optional
        Result buffer of y's shape and the promoted dtype.

    Returns
    -------
    grad_x : ndarray

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> y = fastnn.softmax(np.zeros(2))
    >>> fastnn.softmax_backward(np.array([1.0, 0.0]), y)
    array([ 0.25, -0.25])
    """
    return _softmax_backward("softmax_backward", grad_y, y, axis, out, False)


def log_softmax_backward(grad_y: ArrayLike, y: ArrayLike, axis: int = -1, *,
                         out: FloatArray | None = None) -> FloatArray:
    """Gradient of :func:`log_softmax` from its **output** ``y``:
    ``grad_y - exp(y) * sum(grad_y, axis)``.

    Parameters
    ----------
    grad_y, y, axis, out
        As for :func:`softmax_backward`, with ``y = log_softmax(x, axis)``.

    Returns
    -------
    grad_x : ndarray

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> y = fastnn.log_softmax(np.zeros(2))
    >>> fastnn.log_softmax_backward(np.array([1.0, 0.0]), y)
    array([ 0.5, -0.5])
    """
    return _softmax_backward("log_softmax_backward", grad_y, y, axis, out, True)


# ------------------------------------------------------------------ cross-entropy
_INT64 = np.iinfo(np.int64)


class _Xent:
    """A validated cross-entropy problem: logits (N, C, d1, ...) as (N, C, inner), the
    kernel's arguments and the mean's denominator."""

    def __init__(self, fn, logits, labels, reduction, weight, ignore_index, label_smoothing):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{fn}: reduction must be one of "
                             f"{', '.join(map(repr, _REDUCTIONS))}, got {reduction!r}")
        logits = as_float_array(logits, "logits", fn)
        if logits.ndim < 2:
            raise ValueError(f"{fn}: logits must be 2-D (N, C) or more (N, C, d1, ...), "
                             f"got shape {logits.shape}")
        eps = as_real(label_smoothing, "label_smoothing", fn)
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"{fn}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        if ignore_index is not None:
            ignore_index = as_int(ignore_index, "ignore_index", fn)
            if not _INT64.min <= ignore_index <= _INT64.max:
                raise ValueError(f"{fn}: ignore_index must fit in int64, got {ignore_index}")
        N, C = logits.shape[:2]
        spatial = logits.shape[2:]
        self.positions = (N,) + spatial
        self.N, self.C, self.inner = N, C, math.prod(spatial)
        self.reduction, self.eps, self.logits = reduction, eps, logits
        if weight is not None:
            weight = as_float_array(weight, "weight", fn)
            if weight.shape != (C,):
                raise ValueError(f"{fn}: weight must have shape ({C},) (one weight per class), "
                                 f"got {weight.shape}")
        lab = as_array(labels, "labels", fn)
        n_pos = N * self.inner
        if lab.ndim == logits.ndim - 1:
            if lab.dtype == np.bool_ or not np.issubdtype(lab.dtype, np.integer):
                raise TypeError(f"{fn}: labels of shape {lab.shape} are class indices and must "
                                f"have an integer dtype, got {lab.dtype} (probability targets "
                                f"have the shape of logits, {logits.shape})")
            if lab.shape != self.positions:
                raise ValueError(f"{fn}: labels must have shape {self.positions} (one class "
                                 f"index per row of logits {logits.shape}, class axis 1), got "
                                 f"{lab.shape}")
            if n_pos and C == 0:
                raise ValueError(f"{fn}: logits has no classes (shape {logits.shape})")
            self.labels, self.ignore, n_ignored = self._class_indices(fn, lab, ignore_index)
            self.target = None
            self.dtype = logits.dtype if weight is None else result_dtype(logits, weight)
            self.weight = None if weight is None else contiguous(weight, self.dtype)
            if self.weight is None:
                self.wsum, self.denominator = float(C), float(n_pos - n_ignored)
            else:
                w64 = self.weight.astype(np.float64)
                self.wsum = float(w64.sum())
                # The mean divides by the weights of the targets that count (PyTorch's).
                kept = self.labels if self.ignore is None else self.labels[self.labels != self.ignore]
                self.denominator = float(np.bincount(kept, minlength=C) @ w64) if n_pos else 0.0
            return
        if lab.ndim == logits.ndim:
            target = as_float_array(lab, "labels", fn)
            if target.shape != logits.shape:
                raise ValueError(f"{fn}: probability labels must have the shape of logits "
                                 f"{logits.shape}, got {target.shape}")
            if n_pos and C == 0:
                raise ValueError(f"{fn}: logits has no classes (shape {logits.shape})")
            if ignore_index is not None and ignore_index >= 0:
                raise ValueError(f"{fn}: ignore_index ({ignore_index}) applies to class-index "
                                 f"labels only, not to probability targets")
            self.dtype = result_dtype(logits, target, weight)
            if eps or weight is not None:
                # Folded into the targets, PyTorch's formula: w_c ((1 - eps) t_c + eps / C).
                target = target.astype(self.dtype) * (1 - eps) + eps / C
                if weight is not None:
                    target *= contiguous(weight, self.dtype).reshape((C,) + (1,) * len(spatial))
            self.target = contiguous(target, self.dtype).reshape(-1)
            self.labels, self.ignore, self.weight, self.eps = None, None, None, 0.0
            self.wsum, self.denominator = float(C), float(n_pos)
            return
        raise ValueError(f"{fn}: labels must be class indices of shape {self.positions} or "
                         f"probabilities of shape {logits.shape}, got shape {lab.shape}")

    def _class_indices(self, fn, lab, ignore_index):
        """(labels as flat int64, the ignore value the kernel needs or None, ignored count)."""
        C = self.C
        if lab.dtype.kind == "u" and lab.size and lab.max() > _INT64.max:
            raise ValueError(f"{fn}: labels must be class indices in [0, {C}), got {lab.max()}")
        lab = contiguous(lab, np.int64).reshape(-1)
        if not lab.size:
            return lab, None, 0
        lo, hi = lab.min(), lab.max()
        ignored = None
        if ignore_index is not None and lo <= ignore_index <= hi:
            ignored = lab == ignore_index
        if lo < 0 or hi >= C:
            bad = (lab < 0) | (lab >= C)
            if ignored is not None:
                bad &= ~ignored
            if bad.any():
                raise ValueError(f"{fn}: labels must be class indices in [0, {C})"
                                 + ("" if ignore_index is None else f" or ignore_index "
                                    f"({ignore_index})") + f", got {lab[bad][0]}")
        n_ignored = 0 if ignored is None else int(np.count_nonzero(ignored))
        # Without any ignored label the kernel runs its plain path, bit for bit as if no
        # ignore_index had been given.
        return lab, (ignore_index if n_ignored else None), n_ignored

    def kernel_args(self):
        return (contiguous(self.logits, self.dtype).reshape(-1), self.labels, self.target,
                self.weight)

    def options(self):
        return (self.N, self.C, self.inner, self.ignore, self.eps, self.wsum)


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, *, reduction: str = "mean",
                          weight: ArrayLike | None = None, ignore_index: int | None = None,
                          label_smoothing: float = 0.0) -> FloatArray:
    """Cross-entropy of ``softmax(logits)`` against labels, fused and stable.

    ``torch.nn.functional.cross_entropy``'s semantics, with the class axis 1:
    ``loss_i = logsumexp(logits_i) - logits_i[labels_i]`` for class indices, or
    ``sum_c labels_ic * (logsumexp(logits_i) - logits_ic)`` for probability (or
    one-hot) targets, per row ``i`` of (N, C) logits or per position of (N, C, d1, ...)
    ones. Each row is read twice while it is in cache (max, then the exp-sum); no
    softmax is ever written. (N, C, d1, ...) logits are read in place along the class
    axis (no transposed copy).

    Parameters
    ----------
    logits : array_like
        ``(N, C)`` or ``(N, C, d1, d2, ...)``, float32 or float64.
    labels : array_like
        ``(N,)`` (``(N, d1, ...)``) integer class indices in ``[0, C)``, or float targets
        shaped like logits (probabilities along axis 1; used as given, not
        renormalised).
    reduction : {"mean", "sum", "none"}
        ``"mean"`` (the default, as in PyTorch) divides the sum by the number of targets
        that count -- with ``weight``, by the sum of their classes' weights; ignored
        targets are left out (NaN when nothing counts, e.g. N == 0, like PyTorch);
        probability targets divide by the number of rows (positions). ``"sum"`` adds
        the losses; ``"none"`` returns them, shaped ``(N,)`` (``(N, d1, ...)``).
    weight : array_like, optional
        ``(C,)`` per-class weights: a target of class ``c`` contributes ``weight[c]``
        times its loss (probability targets: each class's term is weighted).
    ignore_index : int, optional
        A label value whose rows contribute 0 to the loss and to the gradient and are
        left out of the mean. Default None: nothing is ignored (PyTorch's default is
        -100, a value no class index has; pass it for the same behaviour). It may lie
        outside ``[0, C)``; other labels outside it are a ValueError. With probability
        targets only None or a negative value is accepted (and changes nothing), as in
        PyTorch.
    label_smoothing : float in [0, 1]
        PyTorch's label smoothing: the target becomes ``(1 - eps) * onehot + eps / C``
        (with weights: ``weight[c] * ((1 - eps) * onehot_c + eps / C)``); for class
        indices the mean's denominator stays the weights of the targets, as in PyTorch.

    Returns
    -------
    loss : ndarray
        0-d for "mean" and "sum", shaped like the positions for "none"; in the
        promoted dtype of logits, weight (and float targets). Losses are summed in
        float64 in row order, so the result does not depend on the thread count.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> fastnn.softmax_cross_entropy(logits, np.array([0, 2]), reduction="none")
    array([0.23954..., 1.09861...])
    >>> fastnn.softmax_cross_entropy(logits, np.array([0, 2]))
    array(0.669078...)
    >>> fastnn.softmax_cross_entropy(logits, np.array([0, -100]), ignore_index=-100)
    array(0.239544...)
    >>> w = np.array([1.0, 1.0, 3.0])
    >>> fastnn.softmax_cross_entropy(logits, np.array([0, 2]), weight=w, label_smoothing=0.1)
    array(0.917884...)
    """
    fn = "softmax_cross_entropy"
    p = _Xent(fn, logits, labels, reduction, weight, ignore_index, label_smoothing)
    rows = np.zeros(p.N * p.inner, dtype=np.float64)
    if rows.size:
        _XENT[p.dtype](*p.kernel_args(), rows, *p.options(),
                       threads_for(rows.size * p.C, _EXP))
    if reduction == "none":
        return rows.reshape(p.positions).astype(p.dtype)
    total = rows.sum()
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total / np.float64(p.denominator) if rows.size else np.nan
    return np.asarray(total, dtype=p.dtype)


def softmax_cross_entropy_backward(grad_loss: ArrayLike, logits: ArrayLike, labels: ArrayLike,
                                   *, reduction: str = "mean", weight: ArrayLike | None = None,
                                   ignore_index: int | None = None,
                                   label_smoothing: float = 0.0,
                                   out: FloatArray | None = None) -> FloatArray:
    """Gradient of :func:`softmax_cross_entropy` with respect to the logits.

    ``grad_logits_i = s_i * (softmax(logits_i) * sum(t_i) - t_i)`` along the class
    axis, with ``t_i`` the target row -- the labels' one-hot rows (or the probability
    rows), times ``weight`` and smoothed as :func:`softmax_cross_entropy` says -- and
    ``s_i`` ``grad_loss / denominator`` for "mean" (the forward's), ``grad_loss`` for
    "sum" and ``grad_loss[i]`` for "none"; 0 for ignored rows. The softmax is
    recomputed from the logits (nothing is cached between the calls); each row is read
    three times while in cache and written once. At the label, ``p - 1`` is computed
    from the other classes' terms (no cancellation for confident rows).

    Parameters
    ----------
    grad_loss : float or array_like
        Gradient of the final loss with respect to this loss: a scalar for "mean" and
        "sum" (usually ``1.0``), shaped like the positions (``(N,)``, ``(N, d1, ...)``)
        for "none". A Python ``int`` or ``float`` takes the dtype of logits (as NumPy
        treats Python scalars).
    logits, labels, reduction, weight, ignore_index, label_smoothing
        As given to :func:`softmax_cross_entropy`.
    out : ndarray, optional
        Result buffer of logits' shape and the result dtype.

    Returns
    -------
    grad_logits : ndarray
        Shaped like logits.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.softmax_cross_entropy_backward(1.0, np.zeros((1, 2)), np.array([1]))
    array([[ 0.5, -0.5]])
    >>> fastnn.softmax_cross_entropy_backward(1.0, np.zeros((2, 2)), np.array([1, 0]),
    ...                                       ignore_index=0, label_smoothing=0.5)
    array([[ 0.25, -0.25],
           [ 0.  ,  0.  ]])
    """
    fn = "softmax_cross_entropy_backward"
    p = _Xent(fn, logits, labels, reduction, weight, ignore_index, label_smoothing)
    dtype = p.dtype
    weak = type(grad_loss) in (int, float)   # Python scalars do not promote (NEP 50)
    if weak:
        scale = np.asarray(as_real(grad_loss, "grad_loss", fn), dtype=np.float64)
    else:
        scale = as_float_array(grad_loss, "grad_loss", fn)
        dtype = result_dtype(p.logits, p.target, p.weight, scale)
    want = p.positions if reduction == "none" else ()
    if scale.shape != want:
        what = ("one value per row" + (" and position" if p.inner != 1 or len(want) > 1 else "")
                if reduction == "none" else "a scalar")
        raise ValueError(f"{fn}: grad_loss must be {what} for reduction={reduction!r}, "
                         f"shape {want}, got {scale.shape}")
    scale = scale.astype(np.float64).reshape(-1)
    if reduction == "mean" and p.N * p.inner:
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = scale / np.float64(p.denominator)
    if dtype != p.dtype:
        p.dtype = dtype
        p.weight = None if p.weight is None else contiguous(p.weight, dtype)
        p.target = None if p.target is None else contiguous(p.target, dtype)
    buf, target_out = prepare_out(out, p.logits.shape, dtype, fn, (p.logits, p.target, p.weight))
    if buf.size:
        _XENT_BWD[dtype](*p.kernel_args(), scale.astype(dtype), buf.reshape(-1), *p.options(),
                         threads_for(buf.size, _EXP))
    return finish_out(buf, target_out)
