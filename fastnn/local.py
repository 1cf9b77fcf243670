"""Locally connected layers: a convolution with its own kernel at every output position.

Keras ``LocallyConnected1D`` / ``LocallyConnected2D`` and the cuda-convnet "local"
layer. The patches are :func:`fastnn.im2col`'s (NHWC, ordered ``(i, j, c)``); each
output position multiplies its patch row by its own ``(kh*kw*C, K)`` kernel. 1-D
problems run as height-1 images.
"""
from __future__ import annotations

import numpy as np

from fastnn._geometry import Geometry, check_result_size, parse_padding
from fastnn._threads import threads_for
from fastnn._typing import ArrayLike, FloatArray, Int1, IntPair, Padding1D, Padding2D
from fastnn._validation import (as_bool, as_float_array, check_layout, check_ndim, contiguous,
                                int_tuple, memory_error, result_dtype)
from fastnn.conv import _col2im
from fastnn_ext import _local as _local_ext

__all__ = ["locally_connected1d", "locally_connected1d_backward", "locally_connected2d",
           "locally_connected2d_backward"]

_LC_LAYOUTS = {1: ("NWC", "NCW"), 2: ("NHWC", "NCHW")}


class _LocalGeometry:
    """x as NHWC (1-D: H = 1), the patch geometry and the expected weight shape."""

    def __init__(self, fn, nd, x, kernel_size, stride, padding, layout):
        self.fn, self.nd, self.layout = fn, nd, check_layout(layout, fn, _LC_LAYOUTS[nd])
        self.channels_last = self.layout in ("NWC", "NHWC")
        check_ndim(x, nd + 2, "x", fn, f"(layout {self.layout})")
        self.x_shape = x.shape
        k = int_tuple(kernel_size, nd, "kernel_size", fn, minimum=1)
        s = int_tuple(stride, nd, "stride", fn, minimum=1)
        x4 = self.to_nhwc(x)
        spatial = x4.shape[1:3] if nd == 2 else x4.shape[2:3]
        pads = parse_padding(padding, spatial, k, s, (1,) * nd, fn)
        if nd == 1:
            k, s, pads = (1,) + k, (1,) + s, ((0, 0),) + pads
        self.kernel, self.stride, self.pads = k, s, pads
        self.geom = Geometry(fn, "NHWC", x4.shape, k, 0, 1, s, pads, 1)
        g = self.geom
        self.P, self.ckk = g.Ho * g.Wo, k[0] * k[1] * g.C
        self.w_prefix = (g.Ho, g.Wo, self.ckk) if nd == 2 else (g.Wo, self.ckk)

    def to_nhwc(self, a):
        if self.nd == 2:
            return a if self.channels_last else a.transpose(0, 2, 3, 1)
        a = a if self.channels_last else a.transpose(0, 2, 1)
        return a[:, None]

    def from_nhwc(self, a):
        if self.nd == 2:
            return a if self.channels_last else a.transpose(0, 3, 1, 2)
        a = a[:, 0]
        return a if self.channels_last else a.transpose(0, 2, 1)

    def check_weight(self, weight):
        fn, names = self.fn, ("Ho, Wo, kh*kw*C, K" if self.nd == 2 else "Wo, kw*C, K")
        check_ndim(weight, self.nd + 2, "weight", fn, f"({names})")
        if weight.shape[:-1] != self.w_prefix:
            raise ValueError(f"{fn}: weight must have shape {self.w_prefix + ('K',)} ({names}) "
                             f"for x of shape {self.x_shape} (layout {self.layout}), "
                             f"got {weight.shape}")
        return weight.shape[-1]

    def out_shape_nhwc(self, K):
        g = self.geom
        return (g.N, g.Ho, g.Wo, K)

    def padded(self, x, dtype):
        """x as a C-contiguous NHWC image with its zero padding, ``(N, Hp, Wp, C)``:
        what the kernels read the patches from."""
        g = self.geom
        x4 = self.to_nhwc(x)
        if not (g.pt or g.pb or g.pl or g.pr):
            return contiguous(x4, dtype)
        xp = np.zeros((g.N, g.H + g.pt + g.pb, g.W + g.pl + g.pr, g.C), dtype=dtype)
        xp[:, g.pt:g.pt + g.H, g.pl:g.pl + g.W] = x4
        return xp

    def kernel_geom(self):
        g = self.geom
        return (g.Ho, g.Wo, g.kh, g.kw, g.sh, g.sw)


def _local_forward(fn, nd, x, weight, bias, kernel_size, stride, padding, layout):
    x = as_float_array(x, "x", fn)
    weight = as_float_array(weight, "weight", fn)
    lg = _LocalGeometry(fn, nd, x, kernel_size, stride, padding, layout)
    K = lg.check_weight(weight)
    if bias is not None:
        bias = as_float_array(bias, "bias", fn)
        if bias.shape != lg.w_prefix[:-1] + (K,):
            raise ValueError(f"{fn}: bias must have shape {lg.w_prefix[:-1] + (K,)}, "
                             f"got {bias.shape}")
    dtype = result_dtype(x, weight, bias)
    N, P = lg.geom.N, lg.P
    y = np.empty((N, P, K), dtype=dtype)
    if y.size and lg.ckk == 0:
        y[...] = 0 if bias is None else bias.reshape(1, P, K)
    elif y.size:
        w3 = contiguous(weight, dtype).reshape(P, lg.ckk, K)
        b2 = None if bias is None else contiguous(bias, dtype).reshape(P, K)
        try:
            _local_ext.local_forward(lg.padded(x, dtype), w3, b2, y, lg.kernel_geom(),
                                     threads_for(N * P * lg.ckk * K))
        except MemoryError as exc:
            raise memory_error(fn, exc) from None
    return np.ascontiguousarray(lg.from_nhwc(y.reshape(lg.out_shape_nhwc(K))))


def _local_backward(fn, nd, grad_y, x, weight, kernel_size, stride, padding, layout, bias):
    bias = as_bool(bias, "bias", fn)
    x = as_float_array(x, "x", fn)
    weight = as_float_array(weight, "weight", fn)
    lg = _LocalGeometry(fn, nd, x, kernel_size, stride, padding, layout)
    K = lg.check_weight(weight)
    grad_y = as_float_array(grad_y, "grad_y", fn)
    want = lg.from_nhwc(np.empty(lg.out_shape_nhwc(K), dtype=np.uint8)).shape
    if grad_y.shape != want:
        raise ValueError(f"{fn}: grad_y must have the output shape {want} "
                         f"(layout {lg.layout}), got {grad_y.shape}")
    dtype = result_dtype(grad_y, x, weight)
    N, P, ckk = lg.geom.N, lg.P, lg.ckk
    gy3 = contiguous(lg.to_nhwc(grad_y), dtype).reshape(N, P, K)
    check_result_size(fn, "the patch gradients", (N, P, ckk))
    w3 = contiguous(weight, dtype).reshape(P, ckk, K)
    grad_w = np.zeros((P, ckk, K), dtype=dtype)
    gcols = np.zeros((N, P, ckk), dtype=dtype)
    nt = threads_for(N * P * ckk * K)
    if N:
        try:
            _local_ext.local_weight_grad(lg.padded(x, dtype), gy3, grad_w, lg.kernel_geom(), nt)
        except MemoryError as exc:
            raise memory_error(fn, exc) from None
        _local_ext.local_cols_grad(gy3, w3, gcols, nt)
    grad_x = np.ascontiguousarray(lg.from_nhwc(_col2im(gcols, lg.geom)))
    grad_b = None
    if bias:
        # NumPy adds the rows in order, whatever the thread count.
        grad_b = np.add.reduce(gy3.reshape(N, P * K), axis=0, dtype=dtype)
        grad_b = grad_b.reshape(lg.w_prefix[:-1] + (K,))
    return grad_x, grad_w.reshape(weight.shape), grad_b


def locally_connected2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
                        kernel_size: IntPair, stride: IntPair = 1, padding: Padding2D = 0,
                        layout: str = "NHWC") -> FloatArray:
    """2-D locally connected layer: a convolution with one kernel per output pixel.

    Keras ``LocallyConnected2D`` / cuda-convnet "local" layer semantics.

    Parameters
    ----------
    x : array_like
        ``(N, H, W, C)`` for layout ``"NHWC"``, ``(N, C, H, W)`` for ``"NCHW"``.
    weight : array_like
        ``(Ho, Wo, kh*kw*C, K)`` in both layouts: the kernel of output pixel
        ``(oh, ow)`` over its patch ordered ``(i, j, c)`` as NHWC :func:`im2col`.
    bias : array_like, optional
        ``(Ho, Wo, K)``.
    kernel_size : int or (int, int)
    stride : int or (int, int)
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        As :func:`fastnn.conv2d` (``"same"``: TensorFlow's rule).
    layout : {"NHWC", "NCHW"}

    Returns
    -------
    y : ndarray
        ``(N, Ho, Wo, K)`` (NHWC) or ``(N, K, Ho, Wo)`` (NCHW).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
    >>> w = np.ones((1, 1, 4, 1))
    >>> fastnn.locally_connected2d(x, w, kernel_size=2)[..., 0]
    array([[[6.]]])
    """
    return _local_forward("locally_connected2d", 2, x, weight, bias, kernel_size, stride,
                          padding, layout)


def locally_connected2d_backward(grad_y: ArrayLike, x: ArrayLike, weight: ArrayLike, *,
                                 kernel_size: IntPair, stride: IntPair = 1, padding: Padding2D = 0,
                                 layout: str = "NHWC", bias: bool = True
                                 ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Gradients of :func:`locally_connected2d`.

    Returns
    -------
    grad_x : ndarray
        Shaped like x.
    grad_weight : ndarray
        ``(Ho, Wo, kh*kw*C, K)``.
    grad_bias : ndarray or None
        ``(Ho, Wo, K)`` when ``bias`` is true.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
    >>> gx, gw, gb = fastnn.locally_connected2d_backward(
    ...     np.ones((1, 1, 1, 1)), x, np.ones((1, 1, 4, 1)), kernel_size=2)
    >>> gx[..., 0], gw[0, 0, :, 0], gb
    (array([[[1., 1.],
            [1., 1.]]]), array([0., 1., 2., 3.]), array([[[1.]]]))
    """
    return _local_backward("locally_connected2d_backward", 2, grad_y, x, weight, kernel_size,
                           stride, padding, layout, bias)


def locally_connected1d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
                        kernel_size: Int1, stride: Int1 = 1, padding: Padding1D = 0,
                        layout: str = "NWC") -> FloatArray:
    """1-D locally connected layer (Keras ``LocallyConnected1D``).

    Parameters
    ----------
    x : array_like
        ``(N, W, C)`` for layout ``"NWC"``, ``(N, C, W)`` for ``"NCW"``.
    weight : array_like
        ``(Wo, kw*C, K)``, patches ordered ``(j, c)``.
    bias : array_like, optional
        ``(Wo, K)``.
    kernel_size, stride : int
    padding : int, (left, right), "valid" or "same"
    layout : {"NWC", "NCW"}

    Returns
    -------
    y : ndarray
        ``(N, Wo, K)`` (NWC) or ``(N, K, Wo)`` (NCW).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.arange(3.0).reshape(1, 3, 1)
    >>> fastnn.locally_connected1d(x, np.ones((2, 2, 1)), kernel_size=2)[..., 0]
    array([[1., 3.]])
    """
    return _local_forward("locally_connected1d", 1, x, weight, bias, kernel_size, stride,
                          padding, layout)


def locally_connected1d_backward(grad_y: ArrayLike, x: ArrayLike, weight: ArrayLike, *,
                                 kernel_size: Int1, stride: Int1 = 1, padding: Padding1D = 0,
                                 layout: str = "NWC", bias: bool = True
                                 ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Gradients of :func:`locally_connected1d`: ``(grad_x, grad_weight, grad_bias)``
    shaped like x, ``(Wo, kw*C, K)`` and ``(Wo, K)`` (None when ``bias`` is false).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.arange(3.0).reshape(1, 3, 1)
    >>> gx, gw, gb = fastnn.locally_connected1d_backward(
    ...     np.ones((1, 2, 1)), x, np.ones((2, 2, 1)), kernel_size=2)
    >>> gx[..., 0], gw[..., 0]
    (array([[1., 2., 1.]]), array([[0., 1.],
           [1., 2.]]))
    """
    return _local_backward("locally_connected1d_backward", 1, grad_y, x, weight, kernel_size,
                           stride, padding, layout, bias)
