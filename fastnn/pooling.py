"""Pooling: max and average pooling over 2-D and 1-D windows, with their gradients.

Layouts: ``"NCHW"`` / ``"NHWC"`` images for the 2-D functions, ``"NCW"`` / ``"NWC"``
sequences for the 1-D ones (run as height-1 images).

Padding is never part of a window's value: max pooling pads with -inf and average
pooling divides by the number of real (unpadded) elements in each window, like
TensorFlow and PyTorch's ``count_include_pad=False``. ``"same"`` padding follows
TensorFlow's rule (output ``ceil(in / stride)``, the odd element after). A window
holding NaN gives NaN (PyTorch's behaviour; TensorFlow skips NaN), and its index is
the last NaN's. Otherwise the index is the first maximum in row-major window order;
a window of -inf values gives -inf and the index of its first real element.

Indices (``return_indices=True``) are int64 and flat within each input plane, as in
PyTorch: ``h * W + w`` for 2-D (whatever the layout), ``w`` for 1-D.
"""
import numpy as np

from fastnn._threads import get_num_threads
from fastnn._validation import as_array, as_float_array, check_ndim, contiguous, int_tuple
from fastnn.conv import _parse_padding, _parse_padding_1d
from fastnn_ext import _pooling

__all__ = ["max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "max_pool1d", "max_pool1d_backward", "avg_pool1d", "avg_pool1d_backward"]

_LAYOUTS = {2: ("NCHW", "NHWC"), 1: ("NCW", "NWC")}
_DIMS = {"NCHW": "N, C, H, W", "NHWC": "N, H, W, C", "NCW": "N, C, W", "NWC": "N, W, C"}


class _PoolGeometry:
    """Validated pooling geometry of a 2-D (or height-1) problem."""

    def __init__(self, fn, ndim, layout, x, kernel_size, stride, padding):
        if not isinstance(layout, str) or layout.upper() not in _LAYOUTS[ndim]:
            raise ValueError(f"{fn}: layout must be one of {', '.join(_LAYOUTS[ndim])}, "
                             f"got {layout!r}")
        self.layout = layout.upper()
        self.ndim = ndim
        self.channels_last = self.layout in ("NHWC", "NWC")
        check_ndim(x, ndim + 2, "x", fn, f"(layout {self.layout}: {_DIMS[self.layout]})")
        k = int_tuple(kernel_size, ndim, "kernel_size", fn, minimum=1)
        s = k if stride is None else int_tuple(stride, ndim, "stride", fn, minimum=1)
        if self.channels_last:
            self.N, self.C = x.shape[0], x.shape[-1]
            spatial = x.shape[1:-1]
        else:
            self.N, self.C = x.shape[:2]
            spatial = x.shape[2:]
        if ndim == 1:
            spatial, k, s = (1,) + spatial, (1,) + k, (1,) + s
            padding = _parse_padding_1d(padding, fn)
        self.H, self.W = spatial
        self.kh, self.kw = k
        self.sh, self.sw = s
        pads = _parse_padding(padding, spatial, k, s, (1, 1), fn)
        (self.pt, self.pb), (self.pl, self.pr) = pads
        self.Ho = (self.H + self.pt + self.pb - self.kh) // self.sh + 1
        self.Wo = (self.W + self.pl + self.pr - self.kw) // self.sw + 1
        window = f"{self.kh}x{self.kw}" if ndim == 2 else f"{self.kw}"
        padded = (f"{self.H + self.pt + self.pb}x{self.W + self.pl + self.pr}" if ndim == 2
                  else f"{self.W + self.pl + self.pr}")
        if self.Ho < 1 or self.Wo < 1:
            raise ValueError(f"{fn}: the pooling window ({window}) is larger than the padded "
                             f"input ({padded})")
        # Every window must hold a real element (else its max / mean is undefined):
        # the first window starts before the kernel's end, the last one inside the input.
        for name, p0, k_, s_, size, n_out in (("height", self.pt, self.kh, self.sh, self.H, self.Ho),
                                              ("width", self.pl, self.kw, self.sw, self.W, self.Wo)):
            if p0 >= k_ or (n_out - 1) * s_ - p0 >= size:
                raise ValueError(f"{fn}: padding {padding!r} leaves a window with no input "
                                 f"element along the {name} (padding must be smaller than "
                                 f"the window)")

    def shape(self, h, w):
        """A result shape in the caller's layout and rank."""
        if self.ndim == 1:
            return (self.N, w, self.C) if self.channels_last else (self.N, self.C, w)
        return (self.N, h, w, self.C) if self.channels_last else (self.N, self.C, h, w)

    @property
    def out_shape(self):
        return self.shape(self.Ho, self.Wo)

    @property
    def x_shape(self):
        return self.shape(self.H, self.W)

    def kernel_args(self):
        return (self.N, self.C, self.H, self.W, self.kh, self.kw, self.sh, self.sw,
                self.pt, self.pl, self.Ho, self.Wo)


def _forward(fn, ndim, x, kernel_size, stride, padding, layout, is_max, return_indices):
    x = as_float_array(x, "x", fn)
    geom = _PoolGeometry(fn, ndim, layout, x, kernel_size, stride, padding)
    if not isinstance(return_indices, (bool, np.bool_)):
        raise TypeError(f"{fn}: return_indices must be a bool, got {return_indices!r}")
    if return_indices and not is_max:
        raise ValueError(f"{fn}: return_indices is only defined for max pooling")
    y = np.empty(geom.out_shape, dtype=x.dtype)
    idx = np.empty(geom.out_shape, dtype=np.int64) if return_indices else None
    if y.size:
        _pooling.pool2d_forward(contiguous(x, x.dtype).reshape(-1), y.reshape(-1),
                                None if idx is None else idx.reshape(-1), geom.kernel_args(),
                                geom.channels_last, is_max, get_num_threads())
    return (y, idx) if return_indices else y


def _backward(fn, ndim, grad_y, x, kernel_size, stride, padding, layout, is_max, indices):
    x = as_float_array(x, "x", fn)
    geom = _PoolGeometry(fn, ndim, layout, x, kernel_size, stride, padding)
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
        _pooling.pool2d_forward(contiguous(x, x.dtype).reshape(-1),
                                np.empty(geom.out_shape, dtype=x.dtype).reshape(-1),
                                idx.reshape(-1), geom.kernel_args(), geom.channels_last, True, nt)
    else:
        idx = _check_indices(fn, indices, geom)
    # The kernel checks each index against the plane as it scatters (a min/max pass
    # over the int64 indices first cost a fifth of the whole backward).
    if _pooling.pool2d_backward(gy, None if idx is None else idx.reshape(-1), grad_x.reshape(-1),
                                geom.kernel_args(), geom.channels_last, nt):
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
    return np.ascontiguousarray(idx, dtype=np.int64)


# ------------------------------------------------------------------ 2-D
def max_pool2d(x, kernel_size, *, stride=None, padding=0, layout="NCHW", return_indices=False):
    """2-D max pooling.

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` for layout ``"NCHW"``, ``(N, H, W, C)`` for ``"NHWC"``.
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Default: ``kernel_size``.
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        Padded positions hold -inf. Every window must hold a real element.
    layout : {"NCHW", "NHWC"}
    return_indices : bool
        Also return the argmax of every window: int64, flat ``h * W + w`` within the
        input plane (PyTorch's convention, in both layouts).

    Returns
    -------
    y : ndarray
        ``(N, C, Ho, Wo)`` or ``(N, Ho, Wo, C)``, x's dtype, with
        ``Ho = (H + pad_top + pad_bottom - kh) // stride + 1``.
    indices : ndarray of int64, shaped like y (only with ``return_indices=True``)

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.array([[[[1., 5., 2., 0.], [3., 4., np.nan, 1.]]]])
    >>> y, idx = fastnn.max_pool2d(x, 2, return_indices=True)
    >>> y, idx
    (array([[[[ 5., nan]]]]), array([[[[1, 6]]]]))
    """
    return _forward("max_pool2d", 2, x, kernel_size, stride, padding, layout, True,
                    return_indices)


def avg_pool2d(x, kernel_size, *, stride=None, padding=0, layout="NCHW", return_indices=False):
    """2-D average pooling over the real (unpadded) elements of each window.

    Arguments as :func:`max_pool2d` (``return_indices`` must stay False). Padding
    does not count: a window half in the padding averages its real half, like
    TensorFlow and PyTorch's ``count_include_pad=False``.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.arange(6.0).reshape(1, 1, 2, 3)
    >>> fastnn.avg_pool2d(x, 2, padding="same")
    array([[[[2. , 3.5]]]])
    """
    return _forward("avg_pool2d", 2, x, kernel_size, stride, padding, layout, False,
                    return_indices)


def max_pool2d_backward(grad_y, x, kernel_size, *, stride=None, padding=0, layout="NCHW",
                        indices=None):
    """Gradient of :func:`max_pool2d` with respect to x.

    Each window's gradient goes to its argmax (windows that overlap add up).

    Parameters
    ----------
    grad_y : array_like
        Shaped like the forward result.
    x : array_like
        The forward input.
    kernel_size, stride, padding, layout
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
                     True, indices)


def avg_pool2d_backward(grad_y, x, kernel_size, *, stride=None, padding=0, layout="NCHW"):
    """Gradient of :func:`avg_pool2d` with respect to x (x supplies the shape and dtype).

    Each window's gradient is spread evenly over its real elements.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.avg_pool2d_backward(np.array([[[[4.]]]]), np.zeros((1, 1, 2, 2)), 2)
    array([[[[1., 1.],
             [1., 1.]]]])
    """
    return _backward("avg_pool2d_backward", 2, grad_y, x, kernel_size, stride, padding, layout,
                     False, None)


# ------------------------------------------------------------------ 1-D
def max_pool1d(x, kernel_size, *, stride=None, padding=0, layout="NCW", return_indices=False):
    """1-D max pooling of ``(N, C, W)`` (``"NCW"``) or ``(N, W, C)`` (``"NWC"``) input.

    As :func:`max_pool2d` on one axis; ``padding`` is an int, (left, right), "valid"
    or "same" (stride 1 "same" keeps the length). Indices are positions ``w``.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.max_pool1d(np.array([[[1., 3., 2., 0.]]]), 3, stride=1, padding="same")
    array([[[3., 3., 3., 2.]]])
    """
    return _forward("max_pool1d", 1, x, kernel_size, stride, padding, layout, True,
                    return_indices)


def avg_pool1d(x, kernel_size, *, stride=None, padding=0, layout="NCW", return_indices=False):
    """1-D average pooling over the real elements of each window (see :func:`avg_pool2d`).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.avg_pool1d(np.array([[[1., 3., 2., 0.]]]), 3, stride=1, padding="same")
    array([[[2.        , 2.        , 1.66666667, 1.        ]]])
    """
    return _forward("avg_pool1d", 1, x, kernel_size, stride, padding, layout, False,
                    return_indices)


def max_pool1d_backward(grad_y, x, kernel_size, *, stride=None, padding=0, layout="NCW",
                        indices=None):
    """Gradient of :func:`max_pool1d` with respect to x (see :func:`max_pool2d_backward`).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.max_pool1d_backward(np.ones((1, 1, 2)), np.array([[[1., 3., 2., 0.]]]), 2)
    array([[[0., 1., 1., 0.]]])
    """
    return _backward("max_pool1d_backward", 1, grad_y, x, kernel_size, stride, padding, layout,
                     True, indices)


def avg_pool1d_backward(grad_y, x, kernel_size, *, stride=None, padding=0, layout="NCW"):
    """Gradient of :func:`avg_pool1d` with respect to x (x supplies the shape and dtype).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.avg_pool1d_backward(np.ones((1, 1, 2)), np.zeros((1, 1, 4)), 2)
    array([[[0.5, 0.5, 0.5, 0.5]]])
    """
    return _backward("avg_pool1d_backward", 1, grad_y, x, kernel_size, stride, padding, layout,
                     False, None)
