"""Pooling: max and average pooling over 2-D and 1-D windows, with their gradients.

Layouts: ``"NCHW"`` / ``"NHWC"`` images for the 2-D functions, ``"NCW"`` / ``"NWC"``
sequences for the 1-D ones (run as height-1 images).

By default padding is never part of a window's value: max pooling pads with -inf
and average pooling divides by the number of real (unpadded) elements in each
window, like TensorFlow and PyTorch's ``count_include_pad=False`` (PyTorch's default
is True; ``count_include_pad=True`` and ``divisor_override`` give PyTorch's other
divisors). ``"same"`` padding follows TensorFlow's rule (output ``ceil(in / stride)``,
the odd element after) on the dilated window. PyTorch's ``dilation`` (max pooling)
and ``ceil_mode`` follow PyTorch's definitions, output size rule included; they are
index arithmetic in the kernels, nothing is padded or copied for them. A window
holding NaN gives NaN (PyTorch's behaviour; TensorFlow skips NaN), and its index is
the last NaN's. Otherwise the index is the first maximum in row-major window order;
a window of -inf values gives -inf and the index of its first real element.

Indices (``return_indices=True``) are int64 and flat within each input plane, as in
PyTorch: ``h * W + w`` for 2-D (whatever the layout), ``w`` for 1-D.
"""
from __future__ import annotations

from typing import Literal, overload

import numpy as np

from fastnn._geometry import (cached, check_index_range, check_result_size, parse_padding,
                              parse_padding_1d)
from fastnn._threads import get_num_threads
from fastnn._typing import (ArrayLike, FloatArray, IndexArray, Int1, Padding1D, PoolPadding2D,
                             PoolSize2D, PoolStride1D, PoolStride2D)
from fastnn._validation import (as_array, as_bool, as_float_array, as_int, by_dtype,
                                check_layout, check_ndim, contiguous, int_tuple, is_int,
                                memory_error)
from fastnn_ext import _pooling

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "max_pool1d", "max_pool1d_backward", "avg_pool1d", "avg_pool1d_backward"]

_LAYOUTS = {2: ("NCHW", "NHWC"), 1: ("NCW", "NWC")}
_DIMS = {"NCHW": "N, C, H, W", "NHWC": "N, H, W, C", "NCW": "N, C, W", "NWC": "N, W, C"}


def _expand_one(value, ndim):
    """PyTorch expands a 1-element tuple to every spatial axis (``(3,)`` means 3)."""
    if ndim == 2 and isinstance(value, (tuple, list)) and len(value) == 1:
        (item,) = value
        if is_int(item):
            return item
    return value


def _out_size(size, p0, p1, k, s, d, ceil_mode):
    """PyTorch's pooling output size (``pooling_output_shape_pad_lr``): floor or ceil
    of (size + p0 + p1 - ((k - 1) d + 1)) / s, plus one; in ceil mode the last window
    must start inside the input or the left padding."""
    span = size + p0 + p1 - ((k - 1) * d + 1)
    if not ceil_mode:
        return span // s + 1
    n = -(-span // s) + 1
    if (n - 1) * s >= size + p0:
        n -= 1
    return n


class _PoolGeometry:
    """Validated pooling geometry of a 2-D (or height-1) problem.

    ``pytorch_args`` (dilation other than 1, ceil_mode, count_include_pad or
    divisor_override in use) adds PyTorch's padding limit of half the effective
    window; the TensorFlow-style calls without them keep the looser rule that every
    window holds an input element (which both kinds of call must satisfy).
    """

    def __init__(self, fn, ndim, layout, x_shape, kernel_size, stride, padding, dilation=1,
                 ceil_mode=False, count_include_pad=False, divisor_override=None):
        self.layout = check_layout(layout, fn, _LAYOUTS[ndim])
        self.ndim = ndim
        self.channels_last = self.layout in ("NHWC", "NWC")
        check_ndim(x_shape, ndim + 2, "x", fn, f"(layout {self.layout}: {_DIMS[self.layout]})")
        k = int_tuple(_expand_one(kernel_size, ndim), ndim, "kernel_size", fn, minimum=1)
        if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
            s = k                                       # PyTorch: None or () is kernel_size
        else:
            s = int_tuple(_expand_one(stride, ndim), ndim, "stride", fn, minimum=1)
        d = int_tuple(_expand_one(dilation, ndim), ndim, "dilation", fn, minimum=1)
        ceil_mode = as_bool(ceil_mode, "ceil_mode", fn)
        count_include_pad = as_bool(count_include_pad, "count_include_pad", fn)
        if divisor_override is not None:
            divisor_override = as_int(divisor_override, "divisor_override", fn)
            if divisor_override == 0:
                raise ValueError(f"{fn}: divisor_override must not be zero")
            if not -(1 << 62) < divisor_override < 1 << 62:
                raise ValueError(f"{fn}: divisor_override must be below 2**62 in magnitude, "
                                 f"got {divisor_override}")
        pytorch_args = (any(v != 1 for v in d) or ceil_mode or count_include_pad
                        or divisor_override is not None)
        if self.channels_last:
            self.N, self.C = x_shape[0], x_shape[-1]
            spatial = x_shape[1:-1]
        else:
            self.N, self.C = x_shape[:2]
            spatial = x_shape[2:]
        shown = padding                                 # as the caller wrote it
        if ndim == 1:
            spatial, k, s, d = (1,) + spatial, (1,) + k, (1,) + s, (1,) + d
            padding = parse_padding_1d(padding, fn)
        else:
            padding = _expand_one(padding, ndim)
        self.H, self.W = spatial
        self.kh, self.kw = k
        self.sh, self.sw = s
        self.dh, self.dw = d
        # "same": TensorFlow's rule on the effective (dilated) window (k - 1) d + 1.
        pads = parse_padding(padding, spatial, k, s, d, fn)
        (self.pt, self.pb), (self.pl, self.pr) = pads
        check_index_range(fn, self.C,
                          self.H + self.pt + self.pb + (self.kh - 1) * self.dh + 1 + self.sh,
                          self.W + self.pl + self.pr + (self.kw - 1) * self.dw + 1 + self.sw)
        self.Ho = _out_size(self.H, self.pt, self.pb, self.kh, self.sh, self.dh, ceil_mode)
        self.Wo = _out_size(self.W, self.pl, self.pr, self.kw, self.sw, self.dw, ceil_mode)
        self.mode = 2 if divisor_override is not None else (1 if count_include_pad else 0)
        self.div = divisor_override or 0
        axes = (("height", self.H, self.pt, self.pb, self.kh, self.sh, self.dh, self.Ho),
                ("width", self.W, self.pl, self.pr, self.kw, self.sw, self.dw, self.Wo))
        if ndim == 1:
            axes = axes[1:]
        if self.Ho < 1 or self.Wo < 1:
            window = "x".join(str(a[4]) for a in axes)
            if any(a[6] != 1 for a in axes):
                window += ", dilated to " + "x".join(str((a[4] - 1) * a[6] + 1) for a in axes)
            padded = "x".join(str(a[1] + a[2] + a[3]) for a in axes)
            raise ValueError(f"{fn}: the pooling window ({window}) is larger than the padded "
                             f"input ({padded})")
        check_result_size(fn, "the output", (self.N, self.C, self.Ho, self.Wo))
        for name, size, p0, p1, k_, s_, d_, n_out in axes:
            span = (k_ - 1) * d_ + 1
            if pytorch_args and not isinstance(padding, str) and max(p0, p1) > span // 2:
                raise ValueError(
                    f"{fn}: padding {shown!r} must be at most half the effective window "
                    f"along the {name} ({max(p0, p1)} > {span} // 2) when dilation, ceil_mode, "
                    f"count_include_pad or divisor_override is used (PyTorch's rule)")
            if not _every_window_real(size, p0, k_, s_, d_, n_out):
                raise ValueError(f"{fn}: padding {shown!r} leaves a window with no input "
                                 f"element along the {name} (padding must be smaller than "
                                 f"the window" + (", and some dilated tap must land in the "
                                                  "input)" if d_ > 1 else ")"))
        # Fixed from here on (a cached geometry serves every later call of this shape).
        self.out_shape = self.shape(self.Ho, self.Wo)
        self.x_shape = self.shape(self.H, self.W)
        self.kernel_args = (self.N, self.C, self.H, self.W, self.kh, self.kw, self.sh,
                            self.sw, self.pt, self.pl, self.Ho, self.Wo, self.dh, self.dw,
                            self.H + self.pb, self.W + self.pr, self.mode, self.div)

    def shape(self, h, w):
        """A result shape in the caller's layout and rank."""
        if self.ndim == 1:
            return (self.N, w, self.C) if self.channels_last else (self.N, self.C, w)
        return (self.N, h, w, self.C) if self.channels_last else (self.N, self.C, h, w)


_FORWARD = by_dtype(_pooling, "pool2d_forward")
_BACKWARD = by_dtype(_pooling, "pool2d_backward")


def _every_window_real(size, p0, k, s, d, n_out):
    """Every window along one axis has a tap inside [0, size): the last one starts
    before the input's end, and each that starts in the leading padding reaches the
    input with a tap (with dilation the taps can step over it). Only the windows
    starting in the padding are visited: at most p0 / s + 1 of them."""
    if (n_out - 1) * s - p0 >= size or p0 > (k - 1) * d:
        return False
    for o in range(min(n_out, -(-p0 // s))):
        lo = o * s - p0
        first = lo + (-lo + d - 1) // d * d
        if first >= size or first > lo + (k - 1) * d:
            return False
    return True


def _forward(fn, ndim, x, kernel_size, stride, padding, layout, is_max, return_indices,
             **options):
    x = as_float_array(x, "x", fn)
    geom = cached(_PoolGeometry, fn, ndim, layout, x.shape, kernel_size, stride, padding,
                  **options)
    return_indices = as_bool(return_indices, "return_indices", fn)
    if return_indices and not is_max:
        raise ValueError(f"{fn}: return_indices is only defined for max pooling")
    y = np.empty(geom.out_shape, dtype=x.dtype)
    idx = np.empty(geom.out_shape, dtype=np.int64) if return_indices else None
    if y.size:
        _FORWARD[x.dtype](contiguous(x, x.dtype).reshape(-1), y.reshape(-1),
                          None if idx is None else idx.reshape(-1), geom.kernel_args,
                          geom.channels_last, is_max, get_num_threads())
    return (y, idx) if return_indices else y


def _backward(fn, ndim, grad_y, x, kernel_size, stride, padding, layout, is_max, indices,
              **options):
    x = as_float_array(x, "x", fn)
    geom = cached(_PoolGeometry, fn, ndim, layout, x.shape, kernel_size, stride, padding,
                  **options)
    grad_y = as_float_array(grad_y, "grad_y", fn)
    if grad_y.shape != geom.out_shape:
        raise ValueError(f"{fn}: grad_y must have the output shape {geom.out_shape} "
                         f"(layout {geom.layout}), got {grad_y.shape}")
    dtype = np.result_type(grad_y.dtype, x.dtype)
    grad_x = np.empty(geom.x_shape, dtype=dtype)
    if grad_x.size == 0:
        return grad_x
    if grad_y.size == 0:
        grad_x.fill(0)
        return grad_x
    gy = contiguous(grad_y, dtype).reshape(-1)
    nt = get_num_threads()
    if not is_max:
        idx = None
    elif indices is None:
        # Recompute the argmax (one forward pass) rather than ask for the indices.
        idx = np.empty(geom.out_shape, dtype=np.int64)
        _FORWARD[x.dtype](contiguous(x, x.dtype).reshape(-1),
                          np.empty(geom.out_shape, dtype=x.dtype).reshape(-1),
                          idx.reshape(-1), geom.kernel_args, geom.channels_last, True, nt)
    else:
        idx = _check_indices(fn, indices, geom)
    # The kernel checks each index against the plane as it scatters (a min/max pass
    # over the int64 indices first cost a fifth of the whole backward).
    try:
        bad = _BACKWARD[dtype](gy, None if idx is None else idx.reshape(-1),
                               grad_x.reshape(-1), geom.kernel_args, geom.channels_last, nt)
    except MemoryError as exc:
        raise memory_error(fn, exc) from None
    if bad:
        raise ValueError(f"{fn}: indices must lie in [0, {geom.H * geom.W}) (flat positions "
                         f"in an input plane)")
    return grad_x


def _check_indices(fn, indices, geom):
    idx = as_array(indices, "indices", fn)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{fn}: indices must be an integer array, got dtype {idx.dtype}")
    if idx.shape != geom.out_shape:
        raise ValueError(f"{fn}: indices must have the output shape {geom.out_shape} "
                         f"(layout {geom.layout}), got {idx.shape}")
    return contiguous(idx, np.int64)


# ------------------------------------------------------------------ 2-D
@overload
def max_pool2d(x: ArrayLike, kernel_size: PoolSize2D, *, stride: PoolStride2D = None,
               padding: PoolPadding2D = 0, dilation: PoolSize2D = 1, ceil_mode: bool = False,
               layout: str = "NCHW", return_indices: Literal[False] = ...) -> FloatArray: ...


@overload
def max_pool2d(x: ArrayLike, kernel_size: PoolSize2D, *, stride: PoolStride2D = None,
               padding: PoolPadding2D = 0, dilation: PoolSize2D = 1, ceil_mode: bool = False,
               layout: str = "NCHW", return_indices: Literal[True]
               ) -> tuple[FloatArray, IndexArray]: ...


@overload
def max_pool2d(x: ArrayLike, kernel_size: PoolSize2D, *, stride: PoolStride2D = None,
               padding: PoolPadding2D = 0, dilation: PoolSize2D = 1, ceil_mode: bool = False,
               layout: str = "NCHW", return_indices: bool = ...
               ) -> FloatArray | tuple[FloatArray, IndexArray]: ...


def max_pool2d(x: ArrayLike, kernel_size: PoolSize2D, *, stride: PoolStride2D = None,
               padding: PoolPadding2D = 0, dilation: PoolSize2D = 1, ceil_mode: bool = False,
               layout: str = "NCHW", return_indices: bool = False
               ) -> FloatArray | tuple[FloatArray, IndexArray]:
    """2-D max pooling.

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` for layout ``"NCHW"``, ``(N, H, W, C)`` for ``"NHWC"``.
    kernel_size : int or (int, int)
        A 1-element tuple ``(k,)`` means ``k`` on both axes, as in PyTorch (also for
        stride, padding and dilation).
    stride : int or (int, int), optional
        Default (None or ``()``): ``kernel_size``.
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        Padded positions hold -inf. Every window must hold a real element. ``"same"``
        uses TensorFlow's rule on the dilated window ``(k - 1) * dilation + 1``.
        With ``dilation > 1`` or ``ceil_mode`` an explicit padding may be at most half
        the dilated window on each side (PyTorch's limit).
    dilation : int or (int, int)
        Spacing of the window's taps (PyTorch's ``dilation``; default 1).
    ceil_mode : bool
        Round the output size up instead of down (PyTorch's ``ceil_mode``): one more
        window where the input leaves a partial one, provided it starts inside the
        input or the leading padding. Default False, as in PyTorch.
    layout : {"NCHW", "NHWC"}
    return_indices : bool
        Also return the argmax of every window: int64, flat ``h * W + w`` within the
        input plane (PyTorch's convention, in both layouts).

    Returns
    -------
    y : ndarray
        ``(N, C, Ho, Wo)`` or ``(N, Ho, Wo, C)``, x's dtype, with
        ``Ho = floor((H + pad_top + pad_bottom - (kh - 1) * dilation - 1) / stride) + 1``
        (``ceil`` in ceil_mode).
    indices : ndarray of int64, shaped like y (only with ``return_indices=True``)

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.array([[[[1., 5., 2., 0.], [3., 4., np.nan, 1.]]]])
    >>> y, idx = fastnn.max_pool2d(x, 2, return_indices=True)
    >>> y, idx
    (array([[[[ 5., nan]]]]), array([[[[1, 6]]]]))
    >>> fastnn.max_pool2d(np.arange(12.).reshape(1, 1, 2, 6), (1, 2), stride=(1, 2),
    ...                   dilation=2, ceil_mode=True)
    array([[[[ 2.,  4.,  4.],
             [ 8., 10., 10.]]]])
    """
    return _forward("max_pool2d", 2, x, kernel_size, stride, padding, layout, True,
                    return_indices, dilation=dilation, ceil_mode=ceil_mode)


def avg_pool2d(x: ArrayLike, kernel_size: PoolSize2D, *, stride: PoolStride2D = None,
               padding: PoolPadding2D = 0, ceil_mode: bool = False,
               count_include_pad: bool = False, divisor_override: int | None = None,
               layout: str = "NCHW", return_indices: bool = False) -> FloatArray:
    """2-D average pooling.

    Arguments as :func:`max_pool2d` (no dilation; ``return_indices`` must stay False),
    plus PyTorch's divisor options.

    Parameters
    ----------
    count_include_pad : bool
        False (the default -- **PyTorch's default is True**): divide by the number of
        real (unpadded) elements of each window, like TensorFlow. True: the padded
        zeros count too, as in PyTorch, except the part of a ceil_mode window that
        hangs past the padded end.
    divisor_override : int, optional
        Divide every window's sum by this (non-zero) int instead (PyTorch's
        ``divisor_override``).
    ceil_mode : bool
        As in :func:`max_pool2d`. With ceil_mode, count_include_pad or
        divisor_override an explicit padding may be at most half the window.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.arange(6.0).reshape(1, 1, 2, 3)
    >>> fastnn.avg_pool2d(x, 2, padding="same")
    array([[[[2. , 3.5]]]])
    >>> fastnn.avg_pool2d(x, 2, padding=1, count_include_pad=True)
    array([[[[0.  , 0.75],
             [0.75, 2.25]]]])
    >>> fastnn.avg_pool2d(x, 2, ceil_mode=True, divisor_override=1)
    array([[[[8., 7.]]]])
    """
    return _forward("avg_pool2d", 2, x, kernel_size, stride, padding, layout, False,
                    return_indices, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                    divisor_override=divisor_override)


def max_pool2d_backward(grad_y: ArrayLike, x: ArrayLike, kernel_size: PoolSize2D, *,
                        stride: PoolStride2D = None, padding: PoolPadding2D = 0,
                        dilation: PoolSize2D = 1, ceil_mode: bool = False,
                        layout: str = "NCHW", indices: ArrayLike | None = None) -> FloatArray:
    """Gradient of :func:`max_pool2d` with respect to x.

    Each window's gradient goes to its argmax (windows that overlap add up).

    Parameters
    ----------
    grad_y : array_like
        Shaped like the forward result.
    x : array_like
        The forward input.
    kernel_size, stride, padding, dilation, ceil_mode, layout
        As given to the forward call.
    indices : array_like of int, optional
        The forward's ``return_indices`` result; without it the argmax is recomputed
        from x (the same values: one extra pass over x).

    Returns
    -------
    grad_x : ndarray
        Shaped like x, in the promoted dtype of grad_y and x.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.array([[[[1., 5.], [3., 4.]]]])
    >>> fastnn.max_pool2d_backward(np.array([[[[2.]]]]), x, 2)
    array([[[[0., 2.],
             [0., 0.]]]])
    """
    return _backward("max_pool2d_backward", 2, grad_y, x, kernel_size, stride, padding, layout,
                     True, indices, dilation=dilation, ceil_mode=ceil_mode)


def avg_pool2d_backward(grad_y: ArrayLike, x: ArrayLike, kernel_size: PoolSize2D, *,
                        stride: PoolStride2D = None, padding: PoolPadding2D = 0,
                        ceil_mode: bool = False, count_include_pad: bool = False,
                        divisor_override: int | None = None, layout: str = "NCHW") -> FloatArray:
    """Gradient of :func:`avg_pool2d` with respect to x (x supplies the shape and dtype).

    Each window's gradient, divided by the window's divisor (see :func:`avg_pool2d`;
    the arguments must be those of the forward call), goes to each of its real
    elements.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.avg_pool2d_backward(np.array([[[[4.]]]]), np.zeros((1, 1, 2, 2)), 2)
    array([[[[1., 1.],
             [1., 1.]]]])
    >>> fastnn.avg_pool2d_backward(np.ones((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)), 2,
    ...                            padding=1, stride=2, count_include_pad=True)
    array([[[[0.25]]]])
    """
    return _backward("avg_pool2d_backward", 2, grad_y, x, kernel_size, stride, padding, layout,
                     False, None, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                     divisor_override=divisor_override)


# ------------------------------------------------------------------ 1-D
@overload
def max_pool1d(x: ArrayLike, kernel_size: Int1, *, stride: PoolStride1D = None,
               padding: Padding1D = 0, dilation: Int1 = 1, ceil_mode: bool = False,
               layout: str = "NCW", return_indices: Literal[False] = ...) -> FloatArray: ...


@overload
def max_pool1d(x: ArrayLike, kernel_size: Int1, *, stride: PoolStride1D = None,
               padding: Padding1D = 0, dilation: Int1 = 1, ceil_mode: bool = False,
               layout: str = "NCW", return_indices: Literal[True]
               ) -> tuple[FloatArray, IndexArray]: ...


@overload
def max_pool1d(x: ArrayLike, kernel_size: Int1, *, stride: PoolStride1D = None,
               padding: Padding1D = 0, dilation: Int1 = 1, ceil_mode: bool = False,
               layout: str = "NCW", return_indices: bool = ...
               ) -> FloatArray | tuple[FloatArray, IndexArray]: ...


def max_pool1d(x: ArrayLike, kernel_size: Int1, *, stride: PoolStride1D = None,
               padding: Padding1D = 0, dilation: Int1 = 1, ceil_mode: bool = False,
               layout: str = "NCW", return_indices: bool = False
               ) -> FloatArray | tuple[FloatArray, IndexArray]:
    """1-D max pooling of ``(N, C, W)`` (``"NCW"``) or ``(N, W, C)`` (``"NWC"``) input.

    As :func:`max_pool2d` on one axis; ``padding`` is an int, (left, right), "valid"
    or "same" (stride 1 "same" keeps the length); ``dilation`` and ``ceil_mode`` as
    in PyTorch. Indices are positions ``w``.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.max_pool1d(np.array([[[1., 3., 2., 0.]]]), 3, stride=1, padding="same")
    array([[[3., 3., 3., 2.]]])
    >>> fastnn.max_pool1d(np.array([[[1., 3., 2., 0., 5.]]]), 2, stride=2, dilation=2,
    ...                   ceil_mode=True)
    array([[[2., 5.]]])
    """
    return _forward("max_pool1d", 1, x, kernel_size, stride, padding, layout, True,
                    return_indices, dilation=dilation, ceil_mode=ceil_mode)


def avg_pool1d(x: ArrayLike, kernel_size: Int1, *, stride: PoolStride1D = None,
               padding: Padding1D = 0, ceil_mode: bool = False,
               count_include_pad: bool = False, divisor_override: int | None = None,
               layout: str = "NCW", return_indices: bool = False) -> FloatArray:
    """1-D average pooling (see :func:`avg_pool2d`; ``count_include_pad`` defaults to
    False, the real-elements rule, where PyTorch's default is True).

    ``divisor_override`` is not an argument of PyTorch's ``avg_pool1d``; it is
    offered here as in the 2-D function.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.avg_pool1d(np.array([[[1., 3., 2., 0.]]]), 3, stride=1, padding="same")
    array([[[2.        , 2.        , 1.66666667, 1.        ]]])
    >>> fastnn.avg_pool1d(np.array([[[1., 3., 2., 0.]]]), 3, stride=1, padding=1,
    ...                   count_include_pad=True)
    array([[[1.33333333, 2.        , 1.66666667, 0.66666667]]])
    """
    return _forward("avg_pool1d", 1, x, kernel_size, stride, padding, layout, False,
                    return_indices, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                    divisor_override=divisor_override)


def max_pool1d_backward(grad_y: ArrayLike, x: ArrayLike, kernel_size: Int1, *,
                        stride: PoolStride1D = None, padding: Padding1D = 0,
                        dilation: Int1 = 1, ceil_mode: bool = False,
                        layout: str = "NCW", indices: ArrayLike | None = None) -> FloatArray:
    """Gradient of :func:`max_pool1d` with respect to x (see :func:`max_pool2d_backward`).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.max_pool1d_backward(np.ones((1, 1, 2)), np.array([[[1., 3., 2., 0.]]]), 2)
    array([[[0., 1., 1., 0.]]])
    """
    return _backward("max_pool1d_backward", 1, grad_y, x, kernel_size, stride, padding, layout,
                     True, indices, dilation=dilation, ceil_mode=ceil_mode)


def avg_pool1d_backward(grad_y: ArrayLike, x: ArrayLike, kernel_size: Int1, *,
                        stride: PoolStride1D = None, padding: Padding1D = 0,
                        ceil_mode: bool = False, count_include_pad: bool = False,
                        divisor_override: int | None = None, layout: str = "NCW") -> FloatArray:
    """Gradient of :func:`avg_pool1d` with respect to x (x supplies the shape and dtype).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.avg_pool1d_backward(np.ones((1, 1, 2)), np.zeros((1, 1, 4)), 2)
    array([[[0.5, 0.5, 0.5, 0.5]]])
    """
    return _backward("avg_pool1d_backward", 1, grad_y, x, kernel_size, stride, padding, layout,
                     False, None, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                     divisor_override=divisor_override)
