"""Convolution: im2col + GEMM kernels with a NumPy/PyTorch/TensorFlow-style API.

Layouts
-------
``"NCHW"``: x ``(N, C, H, W)``, weight ``(K, C/groups, kh, kw)`` (PyTorch),
y ``(N, K, Ho, Wo)``.
``"NHWC"``: x ``(N, H, W, C)``, weight ``(kh, kw, C/groups, K)`` (TensorFlow HWIO),
y ``(N, Ho, Wo, K)``.

All functions compute cross-correlation, like every framework; see
:func:`flip_kernel` for true convolution.
"""
import contextlib

import numpy as np

from fastnn._threads import blas_single_thread, get_num_threads
from fastnn._validation import (as_float_array, as_int, check_ndim, contiguous,
                                finish_out, int_tuple, prepare_out, result_dtype)
from fastnn_ext import _conv

__all__ = ["conv2d", "conv2d_backward", "im2col", "col2im", "flip_kernel"]

_LAYOUTS = ("NCHW", "NHWC")


def _check_layout(layout, fn, allowed=_LAYOUTS):
    if not isinstance(layout, str) or layout.upper() not in allowed:
        raise ValueError(f"{fn}: layout must be one of {', '.join(allowed)}, got {layout!r}")
    return layout.upper()


def _same_padding(size, k, s, d):
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _parse_padding(padding, in_size, kernel_size, stride, dilation, fn):
    """Padding as ((top, bottom), (left, right)) from every accepted form."""
    nd = len(in_size)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0),) * nd
        if mode == "same":
            return tuple(_same_padding(in_size[a], kernel_size[a], stride[a], dilation[a])
                         for a in range(nd))
        raise ValueError(f"{fn}: padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, (bool, np.bool_)):
        p = as_int(padding, "padding", fn, minimum=0)
        return ((p, p),) * nd
    try:
        items = tuple(padding)
    except TypeError:
        raise TypeError(f"{fn}: padding must be an int, a tuple, 'valid' or 'same', got {padding!r}") from None
    if len(items) != nd:
        raise ValueError(f"{fn}: padding must have {nd} entries (one per spatial axis), got {padding!r}")
    sides = []
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
            p = as_int(item, "padding", fn, minimum=0)
            sides.append((p, p))
        else:
            pair = int_tuple(item, 2, "padding", fn, minimum=0)
            sides.append(pair)
    return tuple(sides)


class _Geometry:
    """Normalised convolution geometry (2-D; 1-D uses H = 1)."""

    def __init__(self, fn, layout, x_shape, kernel_size, channels_out, groups,
                 stride, padding, dilation):
        self.layout = layout
        self.nhwc = layout == "NHWC"
        if self.nhwc:
            self.N, self.H, self.W, self.C = x_shape
        else:
            self.N, self.C, self.H, self.W = x_shape
        self.K = channels_out
        self.groups = groups
        self.kh, self.kw = kernel_size
        self.sh, self.sw = int_tuple(stride, 2, "stride", fn, minimum=1)
        self.dh, self.dw = int_tuple(dilation, 2, "dilation", fn, minimum=1)
        (self.pt, self.pb), (self.pl, self.pr) = _parse_padding(
            padding, (self.H, self.W), kernel_size, (self.sh, self.sw), (self.dh, self.dw), fn)
        span_h = self.dh * (self.kh - 1) + 1
        span_w = self.dw * (self.kw - 1) + 1
        self.Ho = (self.H + self.pt + self.pb - span_h) // self.sh + 1
        self.Wo = (self.W + self.pl + self.pr - span_w) // self.sw + 1
        if self.Ho < 1 or self.Wo < 1:
            raise ValueError(
                f"{fn}: kernel (dilated extent {span_h}x{span_w}) is larger than the padded "
                f"input ({self.H + self.pt + self.pb}x{self.W + self.pl + self.pr}); "
                f"output would be {self.Ho}x{self.Wo}")

    @property
    def out_shape(self):
        if self.nhwc:
            return (self.N, self.Ho, self.Wo, self.K)
        return (self.N, self.K, self.Ho, self.Wo)

    @property
    def x_shape(self):
        if self.nhwc:
            return (self.N, self.H, self.W, self.C)
        return (self.N, self.C, self.H, self.W)

    def kernel_args(self):
        return (self.N, self.C, self.H, self.W, self.K, self.kh, self.kw, self.sh, self.sw,
                self.dh, self.dw, self.pt, self.pl, self.Ho, self.Wo, self.groups)


def _conv_setup(fn, x, weight, stride, padding, dilation, groups, layout):
    """Validate x and weight; return (x array, weight array, geometry)."""
    layout = _check_layout(layout, fn)
    x = as_float_array(x, "x", fn)
    weight = as_float_array(weight, "weight", fn)
    check_ndim(x, 4, "x", fn, f"(layout {layout}: {'N, H, W, C' if layout == 'NHWC' else 'N, C, H, W'})")
    check_ndim(weight, 4, "weight", fn,
               f"(layout {layout}: {'kh, kw, C/groups, K' if layout == 'NHWC' else 'K, C/groups, kh, kw'})")
    groups = as_int(groups, "groups", fn, minimum=1)
    if layout == "NHWC":
        kh, kw, cpg, K = weight.shape
        C = x.shape[3]
    else:
        K, cpg, kh, kw = weight.shape
        C = x.shape[1]
    if C % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide the {C} input channels of x")
    if K % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide the {K} output channels of weight")
    if cpg != C // groups:
        raise ValueError(f"{fn}: weight has {cpg} input channels per group, x has "
                         f"{C // groups} (layout {layout})")
    if kh < 1 or kw < 1:
        raise ValueError(f"{fn}: weight has an empty kernel ({kh}x{kw})")
    geom = _Geometry(fn, layout, x.shape, (kh, kw), K, groups, stride, padding, dilation)
    return x, weight, geom


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
           layout="NCHW", out=None):
    """2-D convolution (cross-correlation) by im2col tiles and GEMM.

    Parameters
    ----------
    x : array_like
        Input, ``(N, C, H, W)`` for layout ``"NCHW"`` or ``(N, H, W, C)`` for ``"NHWC"``.
    weight : array_like
        ``(K, C/groups, kh, kw)`` (PyTorch) for ``"NCHW"``, ``(kh, kw, C/groups, K)``
        (TensorFlow HWIO) for ``"NHWC"``.
    bias : array_like, optional
        ``(K,)``.
    stride, dilation : int or (int, int)
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        ``"same"`` follows TensorFlow: output ``ceil(in / stride)``, the extra
        padding row/column goes after (bottom/right).
    groups : int
        Channel groups; ``groups == C`` (with K a multiple of C) is depthwise.
    layout : {"NCHW", "NHWC"}
    out : ndarray, optional
        Result buffer of exactly the output shape and dtype.

    Returns
    -------
    y : ndarray
        ``(N, K, Ho, Wo)`` or ``(N, Ho, Wo, K)`` in the promoted dtype of the inputs,
        with ``Ho = (H + pad_top + pad_bottom - dilation*(kh-1) - 1) // stride + 1``.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 2, 2), dtype=np.float32)
    >>> fastnn.conv2d(x, w, stride=2)[0, 0]
    array([[10., 18.],
           [42., 50.]], dtype=float32)
    """
    fn = "conv2d"
    x, weight, geom = _conv_setup(fn, x, weight, stride, padding, dilation, groups, layout)
    if bias is not None:
        bias = as_float_array(bias, "bias", fn)
        if bias.shape != (geom.K,):
            raise ValueError(f"{fn}: bias must have shape ({geom.K},), got {bias.shape}")
    dtype = result_dtype(x, weight, bias)
    buf, target = prepare_out(out, geom.out_shape, dtype, fn, (x, weight, bias))
    if buf.size:
        _forward(x, weight, bias, buf, geom, dtype)
    return finish_out(buf, target)


def _phase_split(x, geom, dtype, nchw=None):
    """x zero-padded and split by stride phase, as (array, Hq, Wq).

    NCHW gives (N, C, sh, sw, Hq, Wq) with ``xq[n, c, a, b, u, v] =
    xpad[n, c, u*sh + a, v*sw + b]`` (NHWC: (N, sh, sw, Hq, Wq, C)), so that every
    kernel tap of a strided convolution reads a contiguous run. For stride 1 it is
    just the padded image (and x itself when there is no padding). ``nchw=True``
    turns an NHWC x into the NCHW form.
    """
    to_nchw = geom.nhwc and nchw
    if to_nchw:
        x = x.transpose(0, 3, 1, 2)
    sh, sw = geom.sh, geom.sw
    Hq = -(-(geom.H + geom.pt + geom.pb) // sh)
    Wq = -(-(geom.W + geom.pl + geom.pr) // sw)
    if sh == sw == 1 and Hq == geom.H and Wq == geom.W:
        return contiguous(x, dtype), Hq, Wq
    hs, ws = slice(geom.pt, geom.pt + geom.H), slice(geom.pl, geom.pl + geom.W)
    if geom.nhwc and not to_nchw:
        xp = np.zeros((geom.N, Hq * sh, Wq * sw, geom.C), dtype=dtype)
        xp[:, hs, ws, :] = x
        if sh == sw == 1:
            return xp, Hq, Wq
        xq = xp.reshape(geom.N, Hq, sh, Wq, sw, geom.C).transpose(0, 2, 4, 1, 3, 5)
    else:
        xp = np.zeros((geom.N, geom.C, Hq * sh, Wq * sw), dtype=dtype)
        xp[:, :, hs, ws] = x
        if sh == sw == 1:
            return xp, Hq, Wq
        xq = xp.reshape(geom.N, geom.C, Hq, sh, Wq, sw).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(xq), Hq, Wq


def _forward(x, weight, bias, buf, geom, dtype):
    wc = contiguous(weight, dtype)
    bc = None if bias is None else contiguous(bias, dtype)
    kg = geom.K // geom.groups
    # Output channels of the narrowest kernel block (one 512-bit vector).
    block_k = 64 // np.dtype(dtype).itemsize
    direct = (geom.kh == geom.kw == 1 and geom.sh == geom.sw == 1 and geom.pt == geom.pl == 0
              and geom.Ho == geom.H and geom.Wo == geom.W)
    # The kernel reads shifted rows of the padded, phase-split image (implicit
    # im2col): measured faster than packed tiles on every default shape. NHWC
    # vectorises along output channels; with fewer than one vector of them per
    # group it runs the channel-major (NCHW) kernel and stores y transposed.
    # 1x1 stride-1 convolutions need no im2col at all (x is its own) and take the
    # packed path with x as the tile.
    out_nhwc = False
    xq, Hq, Wq = None, 0, 0
    if direct:
        xc = contiguous(x, dtype)
    elif geom.nhwc and kg < block_k:
        xq, Hq, Wq = _phase_split(x, geom, dtype, nchw=True)
        xc = xq
        wc = np.ascontiguousarray(wc.transpose(3, 2, 0, 1))
        out_nhwc = True
    else:
        xq, Hq, Wq = _phase_split(x, geom, dtype)
        xc = xq
    # Only the packed NHWC path with few output channels calls BLAS. Toggling BLAS's
    # thread count when it is not needed is not free: OpenBLAS wakes its thread
    # pool on the way back up, and those threads spin against ours.
    uses_blas = direct and geom.nhwc and kg < _conv.SMALL_K_CHANNELS
    with blas_single_thread() if uses_blas else contextlib.nullcontext():
        _conv.conv2d_forward(xc.reshape(-1), wc.reshape(-1), bc, buf.reshape(-1),
                             geom.kernel_args(), geom.nhwc and not out_nhwc, get_num_threads(),
                             None if xq is None else xq.reshape(-1), Hq, Wq, out_nhwc)


def conv2d_backward(grad_y, x, weight, *, stride=1, padding=0, dilation=1, groups=1,
                    layout="NCHW", bias=True, need_input_grad=True, need_weight_grad=True):
    """Gradients of :func:`conv2d` with respect to x, weight and bias.

    Parameters
    ----------
    grad_y : array_like
        Gradient of the loss with respect to the output, shaped like ``conv2d``'s result.
    x, weight : array_like
        The forward inputs (same layouts as :func:`conv2d`).
    stride, padding, dilation, groups, layout
        As given to the forward call.
    bias : bool
        Whether the forward had a bias (compute ``grad_bias``).
    need_input_grad, need_weight_grad : bool
        Skip the gradients that are not needed.

    Returns
    -------
    grad_x, grad_weight, grad_bias : ndarray or None
        Shaped like x, weight and ``(K,)``; an entry not requested is ``None``.
        ``grad_weight`` is reduced over the batch in a fixed order, so it is
        bitwise identical for every thread count.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.ones((1, 1, 3, 3)); w = np.ones((1, 1, 2, 2))
    >>> gx, gw, gb = fastnn.conv2d_backward(np.ones((1, 1, 2, 2)), x, w)
    >>> gx[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    >>> gw[0, 0], gb
    (array([[4., 4.],
           [4., 4.]]), array([4.]))
    """
    fn = "conv2d_backward"
    x, weight, geom = _conv_setup(fn, x, weight, stride, padding, dilation, groups, layout)
    grad_y = as_float_array(grad_y, "grad_y", fn)
    if grad_y.shape != geom.out_shape:
        raise ValueError(f"{fn}: grad_y must have the output shape {geom.out_shape} "
                         f"(layout {geom.layout}), got {grad_y.shape}")
    dtype = result_dtype(grad_y, x, weight)
    gyc = contiguous(grad_y, dtype).reshape(-1)
    args = geom.kernel_args()
    nt = get_num_threads()
    grad_x = grad_w = grad_b = None
    if need_input_grad:
        grad_x = np.empty(geom.x_shape, dtype=dtype)
        if grad_x.size:
            _input_grad(grad_y, gyc, weight, grad_x, geom, dtype, nt)
    if need_weight_grad:
        grad_w = np.empty(weight.shape, dtype=dtype)
        if grad_w.size:
            _weight_grad(x, gyc, grad_w, geom, dtype, nt)
    if bias:
        grad_b = np.zeros(geom.K, dtype=dtype)
        if grad_y.size:
            _conv.conv2d_bias_grad(gyc, grad_b, args, geom.nhwc, nt)
    return grad_x, grad_w, grad_b


def _weight_grad(x, gyc, grad_w, geom, dtype, nt):
    """grad_weight: patches read in place from the phase-split image by the
    register-blocked kernel (vectorised along output channels), or packed im2col
    tiles and BLAS when a group has too few output channels to fill a vector."""
    kg = geom.K // geom.groups
    if kg >= 64 // np.dtype(dtype).itemsize:
        xq, Hq, Wq = _phase_split(x, geom, dtype)
        _conv.conv2d_weight_grad_implicit(xq.reshape(-1), gyc, grad_w.reshape(-1),
                                          geom.kernel_args(), geom.nhwc, nt, Hq, Wq)
        return
    with blas_single_thread():
        _conv.conv2d_weight_grad(contiguous(x, dtype).reshape(-1), gyc, grad_w.reshape(-1),
                                 geom.kernel_args(), geom.nhwc, nt)


def _input_grad(grad_y, gyc, weight, grad_x, geom, dtype, nt):
    """grad_x: a stride-1 convolution of grad_y with the flipped, transposed kernel
    when that is expressible (it then runs on the fast forward kernel), else GEMM
    tiles followed by a gather-add col2im."""
    G, kh, kw = geom.groups, geom.kh, geom.kw
    pads = ((kh - 1) * geom.dh - geom.pt, (kh - 1) * geom.dh - geom.pb,
            (kw - 1) * geom.dw - geom.pl, (kw - 1) * geom.dw - geom.pr)
    cg, kg = geom.C // G, geom.K // G
    if geom.sh == geom.sw == 1 and min(pads) >= 0:
        # Flipping both spatial axes is reversing the flattened tap axis; assigning the
        # strided view into a fresh array measured 3.5x faster than ascontiguousarray
        # of the 5-D view (0.41 vs 1.42 ms for a 256x256x3x3 kernel).
        w = contiguous(weight, dtype)
        if geom.nhwc:
            wt = np.empty((kh, kw, kg, geom.C), dtype=dtype)
            wt.reshape(kh * kw, kg, G, cg)[...] = \
                w.reshape(kh * kw, cg, G, kg)[::-1].transpose(0, 3, 2, 1)
        else:
            wt = np.empty((geom.C, kg, kh, kw), dtype=dtype)
            wt.reshape(G, cg, kg, kh * kw)[...] = \
                w.reshape(G, kg, cg, kh * kw)[..., ::-1].transpose(0, 2, 1, 3)
        tgeom = _Geometry("conv2d_backward", geom.layout, geom.out_shape, (kh, kw), geom.C, G,
                          1, ((pads[0], pads[1]), (pads[2], pads[3])), (geom.dh, geom.dw))
        _forward(grad_y, wt, None, grad_x, tgeom, dtype)
        return
    with blas_single_thread():
        _conv.conv2d_input_grad(gyc, contiguous(weight, dtype).reshape(-1), grad_x.reshape(-1),
                                geom.kernel_args(), geom.nhwc, nt)


def _patch_geometry(fn, x_shape, kernel_size, stride, padding, dilation, layout):
    kernel_size = int_tuple(kernel_size, 2, "kernel_size", fn, minimum=1)
    return _Geometry(fn, layout, x_shape, kernel_size, 0, 1, stride, padding, dilation)


def _cols_shape(geom):
    ckk = geom.C * geom.kh * geom.kw
    if geom.nhwc:
        return (geom.N, geom.Ho * geom.Wo, ckk)
    return (geom.N, ckk, geom.Ho * geom.Wo)


def im2col(x, kernel_size, *, stride=1, padding=0, dilation=1, layout="NCHW"):
    """Extract sliding patches (unfold).

    Returns
    -------
    cols : ndarray
        ``"NCHW"``: ``(N, C*kh*kw, Ho*Wo)``, rows ordered ``(c, i, j)``, as
        ``torch.nn.functional.unfold``. ``"NHWC"``: ``(N, Ho*Wo, kh*kw*C)``, columns
        ordered ``(i, j, c)``, as ``tf.image.extract_patches`` (flattened spatially).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> fastnn.im2col(x, 2)[0]
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [3., 4., 6., 7.],
           [4., 5., 7., 8.]])
    """
    fn = "im2col"
    layout = _check_layout(layout, fn)
    x = as_float_array(x, "x", fn)
    check_ndim(x, 4, "x", fn, f"(layout {layout})")
    geom = _patch_geometry(fn, x.shape, kernel_size, stride, padding, dilation, layout)
    cols = np.empty(_cols_shape(geom), dtype=x.dtype)
    if cols.size:
        _conv.im2col(contiguous(x, x.dtype).reshape(-1), cols.reshape(-1), geom.kernel_args(),
                     geom.nhwc, get_num_threads())
    return cols


def col2im(cols, x_shape, kernel_size, *, stride=1, padding=0, dilation=1, layout="NCHW"):
    """Sum patches back into an image (fold): the exact adjoint of :func:`im2col`.

    Parameters
    ----------
    cols : array_like
        Shaped as :func:`im2col` returns for an input of shape ``x_shape``.
    x_shape : tuple of 4 ints
        The image shape in ``layout``.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.col2im(np.ones((1, 4, 4)), (1, 1, 3, 3), 2)[0, 0]
    array([[1., 2., 1.],
           [2., 4., 2.],
           [1., 2., 1.]])
    """
    fn = "col2im"
    layout = _check_layout(layout, fn)
    cols = as_float_array(cols, "cols", fn)
    x_shape = int_tuple(x_shape, 4, "x_shape", fn, minimum=0)
    geom = _patch_geometry(fn, x_shape, kernel_size, stride, padding, dilation, layout)
    expected = _cols_shape(geom)
    if cols.shape != expected:
        raise ValueError(f"{fn}: cols must have shape {expected} for x_shape {x_shape} "
                         f"(layout {layout}), got {cols.shape}")
    x = np.empty(x_shape, dtype=cols.dtype)
    if x.size:
        if cols.size:
            _conv.col2im(contiguous(cols, cols.dtype).reshape(-1), x.reshape(-1),
                         geom.kernel_args(), geom.nhwc, get_num_threads())
        else:
            x.fill(0)
    return x


def flip_kernel(weight, layout="NCHW"):
    """Rotate a kernel by 180 degrees so that :func:`conv2d` computes true convolution.

    ``"NCHW"`` weights ``(K, C, kh, kw)`` are flipped on their last two axes,
    ``"NHWC"`` (HWIO) weights ``(kh, kw, C, K)`` on their first two. Returns a new array.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.flip_kernel(np.arange(4.0).reshape(1, 1, 2, 2))[0, 0]
    array([[3., 2.],
           [1., 0.]])
    """
    fn = "flip_kernel"
    layout = _check_layout(layout, fn)
    weight = as_float_array(weight, "weight", fn)
    check_ndim(weight, 4, "weight", fn, f"(layout {layout})")
    flipped = weight[::-1, ::-1] if layout == "NHWC" else weight[:, :, ::-1, ::-1]
    return np.ascontiguousarray(flipped)
