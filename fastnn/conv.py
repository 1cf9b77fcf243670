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
from __future__ import annotations

import os

import numpy as np

from fastnn._geometry import (DERIVED_LIMIT, Geometry, cached, check_index_range,
                              check_result_size, image_shape, parse_padding, parse_padding_1d,
                              same_padding)
from fastnn._threads import get_num_threads, threads_for
from fastnn._typing import (ArrayLike, FloatArray, Grads3, Int1, IntPair, Padding1D,
                             Padding2D)
from fastnn._validation import (as_bool, as_float_array, as_int, by_dtype, check_bias,
                                check_layout, check_ndim, contiguous, finish_out, int_tuple,
                                memory_error, prepare_out, result_dtype)
from fastnn_ext import _conv, _winograd

__all__ = ["conv2d", "conv2d_backward", "conv1d", "conv1d_backward", "conv_transpose2d",
           "conv_transpose2d_backward", "im2col", "col2im", "flip_kernel"]

_LAYOUTS = ("NCHW", "NHWC")


def _image_and_kernel(fn, layout, x, weight, x_dims, w_dims):
    """The layout checked and x, weight as 4-D float arrays; ``*_dims`` name the axes
    (NHWC form, NCHW form) for the error message."""
    layout = check_layout(layout, fn, _LAYOUTS)
    x = as_float_array(x, "x", fn)
    weight = as_float_array(weight, "weight", fn)
    nhwc = layout == "NHWC"
    if x.ndim != 4 or weight.ndim != 4:        # (the messages are built only here)
        check_ndim(x, 4, "x", fn, f"(layout {layout}: {x_dims[0] if nhwc else x_dims[1]})")
        check_ndim(weight, 4, "weight", fn,
                   f"(layout {layout}: {w_dims[0] if nhwc else w_dims[1]})")
    return layout, x, weight


# The float32 / float64 kernels, looked up once (Cython's fused dispatch costs about as
# much as a small convolution's kernel call): _K["conv2d_forward"][dtype](...).
_K = {name: by_dtype(_conv, name) for name in (
    "conv2d_forward", "conv2d_bias_grad", "conv2d_input_grad", "conv2d_weight_grad",
    "conv2d_weight_grad_cols", "conv2d_weight_grad_implicit", "flip_kernel_transposed",
    "im2col", "col2im", "pad_planes", "split_planes")}


def _finite(weight):
    """Whether a kernel holds no NaN or Inf. Small kernels are tested element by element
    (a bool temporary of at most 4096 bytes costs less than ``np.errstate``), large ones
    by their sum, one pass without a temporary (a sum that overflows reads as not
    finite: the callers then take their exact path)."""
    if weight.size <= 4096:
        return bool(np.isfinite(weight).all())
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.sum(weight)))


def _conv_setup(fn, x, weight, stride, padding, dilation, groups, layout, ndim=2):
    """Validate x and weight; return (x array, weight array, geometry)."""
    layout, x, weight = _image_and_kernel(fn, layout, x, weight, ("N, H, W, C", "N, C, H, W"),
                                          ("kh, kw, C/groups, K", "K, C/groups, kh, kw"))
    groups = as_int(groups, "groups", fn, minimum=1)
    if layout == "NHWC":
        kh, kw, cpg, K = weight.shape
        C = x.shape[3]
    else:
        K, cpg, kh, kw = weight.shape
        C = x.shape[1]
    if groups > max(C, K, 1):
        raise ValueError(f"{fn}: groups={groups} is more than the channels ({C} in, {K} out)")
    if C % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide the {C} input channels of x")
    if K % groups:
        raise ValueError(f"{fn}: groups={groups} does not divide the {K} output channels of weight")
    if cpg != C // groups:
        raise ValueError(f"{fn}: weight has {cpg} input channels per group, x has "
                         f"{C // groups} (layout {layout})")
    if kh < 1 or kw < 1:
        raise ValueError(f"{fn}: weight has an empty kernel ({kh}x{kw})")
    geom = cached(Geometry, fn, layout, x.shape, (kh, kw), K, groups, stride, padding,
                  dilation, ndim)
    return x, weight, geom


def conv2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
           stride: IntPair = 1, padding: Padding2D = 0, dilation: IntPair = 1,
           groups: int = 1, layout: str = "NCHW", out: FloatArray | None = None
           ) -> FloatArray:
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

    Notes
    -----
    3x3 kernels with stride 1, dilation 1 and one group run as Winograd F(4x4, 3x3)
    when the shape is large enough to gain, which needs 2.25x fewer multiplications
    than the direct product. What is large enough depends on the CPU: where 512-bit
    FMAs run as two halves (AMD Zen 4) or there is no AVX-512, at least 16 input and
    output channels and 16 output tiles of 4x4 (32 in float64); where they run at full
    width (Zen 5, Intel AVX-512), at least 32 channels, 96 tiles and, in NCHW, 49 tiles
    per image. The rule and its measurements are in ``_winograd_blocks``; on a given
    CPU the choice depends on the shape only, so results are reproducible. Its
    float32 error is a few times the direct one (measured norm-wise 1e-6 to 4.5e-6
    against float64, C up to 512; float64 below 1e-14). Results stay bitwise
    identical for any thread count.
    An output that is not finite sends the call to the direct path, so Inf and NaN
    propagate as there. ``FASTNN_WINOGRAD=0`` in the environment (read at each call)
    turns Winograd off; the input gradient of :func:`conv2d_backward` follows it.

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
    bias = check_bias(bias, geom.K, fn)
    dtype = result_dtype(x, weight, bias)
    buf, target = prepare_out(out, geom.out_shape, dtype, fn, (x, weight, bias))
    if buf.size:
        try:
            _forward(x, weight, bias, buf, geom, dtype)
        except MemoryError as exc:
            raise memory_error(fn, exc) from None
    return finish_out(buf, target)


def _phase_split(x, geom, dtype, nchw=None, splits=None):
    """x zero-padded and split by stride phase, as (array, Hq, Wq).

    NCHW gives (N, C, sh, sw, Hq, Wq) with ``xq[n, c, a, b, u, v] =
    xpad[n, c, u*sh + a, v*sw + b]`` (NHWC: (N, sh, sw, Hq, Wq, C)), so that every
    kernel tap of a strided convolution reads a contiguous run. For stride 1 it is
    just the padded image (and x itself when there is no padding). ``nchw=True``
    turns an NHWC x into the NCHW form. ``splits``: a dict shared by the calls that
    split the same x with the same geometry, so that the split is made once.
    """
    if splits is not None:
        key = bool(nchw)
        if key not in splits:
            splits[key] = _phase_split(x, geom, dtype, nchw)
        return splits[key]
    to_nchw = geom.nhwc and nchw
    if to_nchw:
        x = x.transpose(0, 3, 1, 2)
    sh, sw = geom.sh, geom.sw
    Hq = -(-(geom.H + geom.pt + geom.pb) // sh)
    Wq = -(-(geom.W + geom.pl + geom.pr) // sw)
    if sh == sw == 1 and Hq == geom.H and Wq == geom.W:
        return contiguous(x, dtype), Hq, Wq
    if sh == sw == 1 and not to_nchw:
        return _padded(x, geom.nhwc, geom.pt, geom.pl, Hq, Wq, dtype, _threads(geom)), Hq, Wq
    if geom.nhwc and not to_nchw:
        # Padding and phases in one pass (runs of C elements). In NCHW the runs are
        # single elements: there the threaded pad and NumPy's strided copy measured
        # faster (N8 C32 56x56 stride 2: 0.32 against 0.35 ms).
        xq = np.empty((geom.N, sh, sw, Hq, Wq, geom.C), dtype=dtype)
        _K["split_planes"][dtype](contiguous(x, dtype).reshape(-1), xq.reshape(-1), geom.N,
                                  geom.H, geom.W, geom.C, geom.pt, geom.pl, sh, sw, Hq, Wq,
                                  _threads(geom))
        return xq, Hq, Wq
    if to_nchw:
        # An NHWC image to the NCHW form: the transposing copy and the padding in one
        # assignment.
        xp = np.zeros((geom.N, geom.C, Hq * sh, Wq * sw), dtype=dtype)
        xp[:, :, geom.pt:geom.pt + geom.H, geom.pl:geom.pl + geom.W] = x
    else:
        xp = _padded(x, False, geom.pt, geom.pl, Hq * sh, Wq * sw, dtype, _threads(geom))
    if sh == sw == 1:
        return xp, Hq, Wq
    xq = xp.reshape(geom.N, geom.C, Hq, sh, Wq, sw).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(xq), Hq, Wq


def _threads(geom):
    """Threads for every region of one convolution call: the cost model's "conv" kind
    (serial below 2^20 multiply-adds, see fastnn_ext/_cost.h)."""
    return threads_for(geom.macs, "conv")


def _padded(x, nhwc, pt, pl, Hp, Wp, dtype, nt):
    """A 4-D image zero-padded to Hp x Wp with its first row at pt and first column at
    pl (both >= 0; the rest of the padding is at the bottom and right), in x's own
    layout (NCHW or NHWC), on nt threads. One threaded pass that writes each element once:
    N8 C64 28x28 NCHW padded by 1 measured 0.087 ms with np.zeros and a slice
    assignment, which writes the interior twice and copies rows of 28 one at a time."""
    if nhwc:
        N, H, W, C = x.shape
        planes, shape = N, (N, Hp, Wp, C)
    else:
        N, C, H, W = x.shape
        planes, C, shape = N * C, 1, (N, C, Hp, Wp)
    xp = np.empty(shape, dtype=dtype)
    _K["pad_planes"][dtype](contiguous(x, dtype).reshape(-1), xp.reshape(-1), planes, H, W, C,
                            pt, pl, Hp, Wp, nt)
    return xp


def _winograd_blocks(geom, dtype):
    """(tile_block, k_block) for a Winograd F(4x4, 3x3) call, or None for the direct
    path. ``FASTNN_WINOGRAD=0`` turns it off, ``=1`` takes it for every 3x3 stride-1
    convolution (tests); unset, the measured rule below decides."""
    if not (geom.kh == geom.kw == 3 and geom.sh == geom.sw == 1 and geom.dh == geom.dw == 1
            and geom.groups == 1):
        return None
    mode = os.environ.get("FASTNN_WINOGRAD", "").strip()
    if mode == "0":
        return None
    # Measured (float32, 2 threads, Zen 4, whose 512-bit FMAs run as two halves; direct
    # / Winograd ms; in-process A/B, min of 9): N8 C64 56x56 K64 19.7/11.0 NCHW,
    # 18.8/8.5 NHWC; N64 C16 32x32 K32 8.6/7.0, 9.0/6.2; N1 C128 14x14 K128 1.41/0.70,
    # 0.76/0.54; N2 C64 28x28 K64 1.71/1.07, 1.63/0.65; N1 C256 14x14 K256 (16 tiles) 2.8-3.0/2.7-3.1, 3.1-3.4/2.0-4.8 (noisy:
    # the transformed kernel, 4x the weights, is written and read once per call).
    # Losing: fewer than 16 channels in or out (the transforms run along channels in
    # NHWC, and the products are too thin: N16 C3 32x32 K16 0.26/0.51, N8 C8 28x28
    # K32 0.48/0.66, N8 C32 28x28 K8 0.46/0.51) and fewer than 16 output tiles (the
    # kernel transform is not repaid: N1 C512 7x7 K512 3.8/14.7, N1 C32 8x8 K32
    # 0.076/0.078 and 0.039/0.046). float64 alike (N8 C64 56x56 K64 38.5/22.0,
    # 41.9/20.6; N64 C16 32x32 K32 15.3/13.4, 15.7/8.7), except that 16 tiles do not
    # pay there (N1 C256 14x14 K256 5.8/5.8, 6.8/7.9): it needs 32.
    #
    # Where 512-bit FMAs run at full width (Zen 5, AVX-512 Intel: _winograd.FULL_WIDTH_512)
    # the direct products are twice as fast per cycle and the transforms are not, so
    # Winograd needs wider products and more tiles. Measured there (float32, 2 threads,
    # direct / Winograd ms, in-process A/B, min of 7 x 0.25 s): N8 C64 56x56 K64
    # 4.98/3.58 NCHW, 4.75/2.77 NHWC (grad_x 4.92/3.64, 4.51/2.98); N2 C64 28x28 K64
    # 0.335/0.301, 0.307/0.196; N8 C32 56x56 K32 1.43/1.15, 1.19/1.03; N16 C32 32x32 K32
    # 0.885/0.930, 0.788/0.688. Losing: 16 channels (N64 C16 32x32 K32 1.95/2.25,
    # 1.71/1.81; grad_x 2.25/2.76 NCHW; N32 C16 32x32 K16 0.57/0.77), fewer than about
    # 100 tiles (N1 C256 14x14 K256, 16 tiles, 0.67/1.14, 1.02/1.07; N1 C128 14x14
    # 0.24/0.43, 0.18/0.38; N4 C128 14x14, 64 tiles, 0.67/0.90, 0.67/0.87; N1 C64 28x28,
    # 49 tiles, 0.19/0.29, 0.18/0.19), and in NCHW, images of fewer than 7x7 tiles
    # (N4 C256 14x14, 64 tiles of 4x4 per image, 2.94/3.20 NCHW, 3.19/2.44 NHWC). Near
    # the line the rule takes a small loss: N16 C32 32x32 NCHW above. float64 alike
    # (N8 C64 56x56 K64 11.3/6.6, 11.1/6.1; N2 C64 28x28 0.70/0.51, 0.77/0.42; N8 C32
    # 56x56 NCHW 3.25/3.18), and the rule gives up a win at 64 tiles there (N4 C256
    # 14x14 NHWC 7.2/5.2).
    tiles_per_image = -(-geom.Ho // 4) * -(-geom.Wo // 4)
    tiles = geom.N * tiles_per_image
    if _winograd.FULL_WIDTH_512:
        too_small = (geom.C < 32 or geom.K < 32 or tiles < 96
                     or (not geom.nhwc and tiles_per_image < 49))
    else:
        min_tiles = 16 if np.dtype(dtype) == np.float32 else 32
        too_small = geom.C < 16 or geom.K < 16 or tiles < min_tiles
    if mode != "1" and too_small:
        return None
    # The transformed kernel is 4x the weights: past 256 MiB of it (C = K = 1365 in
    # float32) the memory, not the speed, decides.
    if 36 * geom.K * geom.C * np.dtype(dtype).itemsize > 256 << 20:
        return None
    # 64 tiles (4 vectors of them in NCHW, 8 row blocks in NHWC) by 128 output channels
    # per work item: N8 C64 56x56 K64 NCHW 6.6 ms against 10.6 (16 tiles) and 8.5
    # (64 x 32); N1 C256 14x14 K256 1.25 against 1.57 (64 x 64).
    return 64, 128


def _forward(x, weight, bias, buf, geom, dtype, splits=None, winograd=True):
    if geom.C == 0 or geom.H == 0 or geom.W == 0:
        # No input channels or pixels (the padding alone makes the output): every
        # output is its bias, and no kernel takes the address of an element of an
        # empty x or weight.
        buf[...] = 0 if bias is None else (bias if geom.nhwc else bias[:, None, None])
        return
    blocks = _winograd_blocks(geom, dtype) if winograd else None
    if blocks is not None and _winograd_forward(x, weight, bias, buf, geom, dtype, blocks):
        return
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
    if direct or not geom.split_is_cheap:
        xc = contiguous(x, dtype)
    elif geom.nhwc and kg < block_k:
        xq, Hq, Wq = _phase_split(x, geom, dtype, nchw=True, splits=splits)
        xc = xq
        wc = np.ascontiguousarray(wc.transpose(3, 2, 0, 1))
        out_nhwc = True
    else:
        xq, Hq, Wq = _phase_split(x, geom, dtype, splits=splits)
        xc = xq
    _K["conv2d_forward"][dtype](xc.reshape(-1), wc.reshape(-1), bc, buf.reshape(-1),
                                geom.kernel_args, geom.nhwc and not out_nhwc, _threads(geom),
                                None if xq is None else xq.reshape(-1), Hq, Wq, out_nhwc)


def _winograd_forward(x, weight, bias, buf, geom, dtype, blocks, flipped=False):
    """Winograd F(4x4, 3x3) into buf; False (buf to be overwritten) when an output is
    not finite, so that Inf and NaN propagate exactly as on the direct path.
    ``flipped``: ``weight`` is the forward kernel whose flipped, transposed copy this
    convolution uses (grad_x); the transform reads it in place."""
    nt = _threads(geom)
    u = np.empty(36 * geom.K * geom.C, dtype=dtype)
    _winograd.transform_weight(contiguous(weight, dtype).reshape(-1), u, geom.C, geom.K,
                               geom.nhwc, nt, flipped)
    return _winograd.conv3x3_forward(
        contiguous(x, dtype).reshape(-1), u, None if bias is None else contiguous(bias, dtype),
        buf.reshape(-1), (geom.N, geom.C, geom.H, geom.W, geom.K, geom.pt, geom.pl, geom.Ho,
                          geom.Wo), geom.nhwc, nt, blocks[0], blocks[1])


def conv2d_backward(grad_y: ArrayLike, x: ArrayLike, weight: ArrayLike, *,
                    stride: IntPair = 1, padding: Padding2D = 0, dilation: IntPair = 1,
                    groups: int = 1, layout: str = "NCHW", bias: bool = True,
                    need_input_grad: bool = True, need_weight_grad: bool = True) -> Grads3:
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
    bias = as_bool(bias, "bias", fn)
    need_input_grad = as_bool(need_input_grad, "need_input_grad", fn)
    need_weight_grad = as_bool(need_weight_grad, "need_weight_grad", fn)
    x, weight, geom = _conv_setup(fn, x, weight, stride, padding, dilation, groups, layout)
    grad_y = as_float_array(grad_y, "grad_y", fn)
    if grad_y.shape != geom.out_shape:
        raise ValueError(f"{fn}: grad_y must have the output shape {geom.out_shape} "
                         f"(layout {geom.layout}), got {grad_y.shape}")
    try:
        return _backward(grad_y, x, weight, geom, bias, need_input_grad, need_weight_grad)
    except MemoryError as exc:
        raise memory_error(fn, exc) from None


def _backward(grad_y, x, weight, geom, bias, need_input_grad, need_weight_grad):
    dtype = result_dtype(grad_y, x, weight)
    gyc = contiguous(grad_y, dtype).reshape(-1)
    nt = _threads(geom)
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
            _K["conv2d_bias_grad"][dtype](gyc, grad_b, geom.kernel_args, geom.nhwc, nt)
    return grad_x, grad_w, grad_b


def _weight_grad_from_cols(geom):
    """Whether grad_weight takes the whole patches (im2col) and one product per block
    of the weight, instead of reducing over tiles of pixels: for a few small images
    the tile reduction has too few pixels per work item. FASTNN_WG_COLS=0/1 forces it
    off/on (tests, measurements)."""
    mode = os.environ.get("FASTNN_WG_COLS", "").strip()
    if mode in ("0", "1"):
        return mode == "1" and geom.groups == 1
    pixels = geom.N * geom.Ho * geom.Wo
    # The patches are pixels x C*kh*kw: bounded, so that a huge kernel (C*kh*kw in the
    # millions) keeps the tile path's bounded scratch instead.
    return (geom.groups == 1 and pixels <= _WG_COLS_MAX_PIXELS
            and pixels * geom.C * geom.kh * geom.kw <= _WG_COLS_MAX_PATCHES)


# Reduction length (images x output pixels) up to which the whole-patches product wins.
# Measured (2 threads, Zen 5, weight gradient alone, tiles / cols ms, in-process A/B,
# min of 6 x 0.2 s): float32 N1 C256 14x14 K256 (196 pixels) 3.08/1.10 NCHW,
# 0.79/0.73 NHWC; N2 (392) 3.23/2.30, 1.58/1.51; N1 C512 7x7 K512 (49) 8.9/0.85,
# 1.47/0.70; float64 N1 C256 14x14 3.34/1.54, 1.74/1.68. From 784 pixels the tiles
# win or tie (N4 C256 14x14 4.10/5.24, 3.45/3.64; N1 C128 28x28 1.04/0.95, 0.64/0.63),
# and far past it they win by far (N8 C64 28x28 k4 s2, 1568: 0.67/1.22 NCHW; N64 C16
# 32x32: 2.6/23.6): each work item of the cols product walks all the pixels.
_WG_COLS_MAX_PIXELS = 400
_WG_COLS_MAX_PATCHES = 1 << 24


def _weight_grad(x, gyc, grad_w, geom, dtype, nt, splits=None):
    """grad_weight: for a few small images, the whole patches (im2col) and one product
    per block of the weight (_weight_grad_from_cols); otherwise patches read in place
    from the phase-split image by the register-blocked kernel (vectorised along output
    channels), or packed im2col tiles and the packed product when a group has too few
    output channels to fill a vector."""
    if x.size == 0 or gyc.size == 0:
        grad_w[...] = 0         # only padding (or nothing) under every tap
        return
    kg = geom.K // geom.groups
    if _weight_grad_from_cols(geom):
        P, ckk = geom.Ho * geom.Wo, geom.C * geom.kh * geom.kw
        cols = _im2col(contiguous(x, dtype), geom, nt)
        _K["conv2d_weight_grad_cols"][dtype](cols.reshape(-1), gyc, grad_w.reshape(-1), geom.N,
                                             P, ckk, geom.K, geom.nhwc, nt)
        return
    if kg >= 64 // np.dtype(dtype).itemsize and geom.split_is_cheap:
        xq, Hq, Wq = _phase_split(x, geom, dtype, splits=splits)
        _K["conv2d_weight_grad_implicit"][dtype](xq.reshape(-1), gyc, grad_w.reshape(-1),
                                                 geom.kernel_args, geom.nhwc, nt, Hq, Wq)
        return
    _K["conv2d_weight_grad"][dtype](contiguous(x, dtype).reshape(-1), gyc, grad_w.reshape(-1),
                                    geom.kernel_args, geom.nhwc, nt)


def _flipped_window(size, size_out, k, d, pad_before, pad_after):
    """For stride 1 along one axis: grad_x = correlation of grad_y with the reversed
    kernel, padded by (k-1)*d - pad on each side. A negative padding there (the
    forward padded by more than the kernel reach) crops grad_y instead: returns
    ((top, bottom), (lo, hi)), the padding and the grad_y rows lo:hi."""
    top, bottom = (k - 1) * d - pad_before, (k - 1) * d - pad_after
    return (max(top, 0), max(bottom, 0)), (max(-top, 0), size_out + min(bottom, 0))


def _input_grad(grad_y, gyc, weight, grad_x, geom, dtype, nt):
    """grad_x: with stride 1, a convolution of grad_y with the flipped, transposed
    kernel on the fast forward kernel; strided, GEMM tiles followed by a gather-add
    col2im. (Splitting a strided grad_x into one stride-1 convolution per stride
    phase measured 0.33-0.94x the GEMM path: the phase kernels are too small.)
    The flipped convolution also multiplies the zeros it pads grad_y with by every
    weight, which a NaN or Inf weight turns into NaN where no output reaches: such a
    kernel (:func:`_finite`) takes the GEMM path, which sums only real terms."""
    if geom.sh > 1 or geom.sw > 1 or not _finite(weight):
        w = contiguous(weight, dtype)
        if geom.nhwc:
            # (kh, kw, C/groups, K) -> (K, kh*kw*C/groups): the products then read
            # w_g^T's rows in place; transposing it inside them repacked the whole
            # weight for every tile of pixels.
            w = np.ascontiguousarray(w.reshape(-1, geom.K).T)
        _K["conv2d_input_grad"][dtype](gyc, w.reshape(-1), grad_x.reshape(-1), geom.kernel_args,
                                       geom.nhwc, nt)
        return
    G, kh, kw = geom.groups, geom.kh, geom.kw
    cg, kg = geom.C // G, geom.K // G
    h0, h1, w0, w1, tgeom = _flipped(geom)
    w = contiguous(weight, dtype)
    gy = grad_y[:, h0:h1, w0:w1, :] if geom.nhwc else grad_y[:, :, h0:h1, w0:w1]
    if tgeom.C and tgeom.H and tgeom.W:
        # On the Winograd path the weight transform reads the flipped, transposed
        # kernel straight from w: no copy (N1 C256 14x14 K256 NCHW: 0.34-0.47 ms of a
        # 1.6 ms grad_x).
        blocks = _winograd_blocks(tgeom, dtype)
        if blocks is not None and _winograd_forward(gy, w, None, grad_x, tgeom, dtype, blocks,
                                                    flipped=True):
            return
    # Flipping both spatial axes is reversing the flattened tap axis; the channel axes
    # swap within each group (a blocked copy: _conv.flip_kernel_transposed).
    wt = np.empty((kh, kw, kg, geom.C) if geom.nhwc else (geom.C, kg, kh, kw), dtype=dtype)
    _K["flip_kernel_transposed"][dtype](w.reshape(-1), wt.reshape(-1), G, kg, cg, kh * kw,
                                        geom.nhwc, nt)
    _forward(gy, wt, None, grad_x, tgeom, dtype, winograd=False)   # (decided above)


def _flipped(geom):
    """The stride-1 grad_x convolution of a geometry: grad_y's rows h0:h1 and columns
    w0:w1 and the convolution's own geometry, ``(h0, h1, w0, w1, tgeom)``. Computed
    once and kept on the (shared, otherwise never modified) geometry: a training loop
    asks for it every step."""
    flipped = geom.__dict__.get("_flipped")
    if flipped is None:
        pad_h, (h0, h1) = _flipped_window(geom.H, geom.Ho, geom.kh, geom.dh, geom.pt, geom.pb)
        pad_w, (w0, w1) = _flipped_window(geom.W, geom.Wo, geom.kw, geom.dw, geom.pl, geom.pr)
        rows, cols = len(range(geom.Ho)[h0:h1]), len(range(geom.Wo)[w0:w1])   # as sliced
        shape = image_shape(geom.nhwc, geom.N, geom.K, rows, cols)
        tgeom = cached(Geometry, geom.fn, geom.layout, shape, (geom.kh, geom.kw), geom.C,
                       geom.groups, 1, (pad_h, pad_w), (geom.dh, geom.dw), limit=DERIVED_LIMIT)
        flipped = geom._flipped = (h0, h1, w0, w1, tgeom)
    return flipped


def _patch_geometry(fn, x_shape, kernel_size, stride, padding, dilation, layout):
    kernel_size = int_tuple(kernel_size, 2, "kernel_size", fn, minimum=1)
    return Geometry(fn, layout, x_shape, kernel_size, 0, 1, stride, padding, dilation)


def _cols_shape(geom):
    ckk = geom.C * geom.kh * geom.kw
    if geom.nhwc:
        return (geom.N, geom.Ho * geom.Wo, ckk)
    return (geom.N, ckk, geom.Ho * geom.Wo)


def _im2col(x, geom, nt=None):
    """:func:`im2col` of a float image of shape ``geom.x_shape``, checked by the caller,
    on nt threads (None: :func:`get_num_threads`)."""
    cols = np.empty(_cols_shape(geom), dtype=x.dtype)
    if cols.size and not x.size:
        cols.fill(0)            # an empty image under padding: every patch is padding
    elif cols.size:
        _K["im2col"][x.dtype](contiguous(x, x.dtype).reshape(-1), cols.reshape(-1),
                              geom.kernel_args, geom.nhwc, get_num_threads() if nt is None else nt)
    return cols


def _col2im(cols, geom):
    """:func:`col2im` of float patches of shape ``_cols_shape(geom)``, checked by the
    caller."""
    x = np.empty(geom.x_shape, dtype=cols.dtype)
    if x.size:
        if cols.size:
            _K["col2im"][cols.dtype](contiguous(cols, cols.dtype).reshape(-1), x.reshape(-1),
                                     geom.kernel_args, geom.nhwc, get_num_threads())
        else:
            x.fill(0)
    return x


def im2col(x: ArrayLike, kernel_size: IntPair, *, stride: IntPair = 1,
           padding: Padding2D = 0, dilation: IntPair = 1, layout: str = "NCHW"
           ) -> FloatArray:
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
    layout = check_layout(layout, fn, _LAYOUTS)
    x = as_float_array(x, "x", fn)
    check_ndim(x, 4, "x", fn, f"(layout {layout})")
    geom = _patch_geometry(fn, x.shape, kernel_size, stride, padding, dilation, layout)
    check_result_size(fn, "cols", _cols_shape(geom))
    return _im2col(x, geom)


def col2im(cols: ArrayLike, x_shape: tuple[int, ...], kernel_size: IntPair, *,
           stride: IntPair = 1, padding: Padding2D = 0, dilation: IntPair = 1,
           layout: str = "NCHW") -> FloatArray:
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
    layout = check_layout(layout, fn, _LAYOUTS)
    cols = as_float_array(cols, "cols", fn)
    x_shape = int_tuple(x_shape, 4, "x_shape", fn, minimum=0)
    check_result_size(fn, "the image (x_shape)", x_shape)
    geom = _patch_geometry(fn, x_shape, kernel_size, stride, padding, dilation, layout)
    expected = _cols_shape(geom)
    if cols.shape != expected:
        raise ValueError(f"{fn}: cols must have shape {expected} for x_shape {x_shape} "
                         f"(layout {layout}), got {cols.shape}")
    return _col2im(cols, geom)


def flip_kernel(weight: ArrayLike, layout: str = "NCHW") -> FloatArray:
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
    layout = check_layout(layout, fn, _LAYOUTS)
    weight = as_float_array(weight, "weight", fn)
    check_ndim(weight, 4, "weight", fn, f"(layout {layout})")
    flipped = weight[::-1, ::-1] if layout == "NHWC" else weight[:, :, ::-1, ::-1]
    return flipped.copy(order="C")     # (a new array also for a 1x1 kernel)


# ------------------------------------------------------------------ conv1d
_LAYOUTS_1D = ("NCW", "NWC")


def _conv1d_setup(fn, x, weight, stride, padding, dilation, groups, layout):
    """Check 1-D arguments and return the problem as a height-1 2-D one:
    (x4, w4, geometry, 1-D layout). NCW runs as NCHW with H = 1, NWC as NHWC."""
    layout = check_layout(layout, fn, _LAYOUTS_1D)
    nwc = layout == "NWC"
    x = as_float_array(x, "x", fn)
    weight = as_float_array(weight, "weight", fn)
    check_ndim(x, 3, "x", fn, f"(layout {layout}: {'N, W, C' if nwc else 'N, C, W'})")
    check_ndim(weight, 3, "weight", fn,
               f"(layout {layout}: {'kw, C/groups, K' if nwc else 'K, C/groups, kw'})")
    (s,) = int_tuple(stride, 1, "stride", fn, minimum=1)
    (d,) = int_tuple(dilation, 1, "dilation", fn, minimum=1)
    pad2 = parse_padding_1d(padding, fn)
    x4, w4 = (x[:, None], weight[None]) if nwc else (x[:, :, None], weight[:, :, None])
    layout2d = "NHWC" if nwc else "NCHW"
    try:
        x4, w4, geom = _conv_setup(fn, x4, w4, (1, s), pad2, (1, d), groups, layout2d, ndim=1)
    except ValueError as exc:
        raise ValueError(str(exc).replace(f"(layout {layout2d})", f"(layout {layout})")) from None
    return x4, w4, geom, layout


def _shape_1d(shape4, geom):
    """A height-1 2-D shape without its H axis."""
    return shape4[:1] + shape4[2:] if geom.nhwc else shape4[:2] + shape4[3:]


def conv1d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
           stride: Int1 = 1, padding: Padding1D = 0, dilation: Int1 = 1, groups: int = 1,
           layout: str = "NCW", out: FloatArray | None = None) -> FloatArray:
    """1-D convolution (cross-correlation), run by the :func:`conv2d` kernels on a
    height-1 image.

    Parameters
    ----------
    x : array_like
        ``(N, C, W)`` for layout ``"NCW"`` (PyTorch) or ``(N, W, C)`` for ``"NWC"``
        (TensorFlow/Keras).
    weight : array_like
        ``(K, C/groups, kw)`` for ``"NCW"``, ``(kw, C/groups, K)`` for ``"NWC"``.
    bias : array_like, optional
        ``(K,)``.
    stride, dilation : int or (int,)
    padding : int, (int,), (left, right), "valid" or "same"
        A pair is (left, right); ``"same"`` follows TensorFlow (output
        ``ceil(W / stride)``, the odd padding element on the right).
    groups : int
    layout : {"NCW", "NWC"}
    out : ndarray, optional
        Result buffer of exactly the output shape and dtype.

    Returns
    -------
    y : ndarray
        ``(N, K, Wo)`` or ``(N, Wo, K)`` with
        ``Wo = (W + left + right - dilation*(kw-1) - 1) // stride + 1``.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.arange(6, dtype=np.float32).reshape(1, 1, 6)
    >>> fastnn.conv1d(x, np.ones((1, 1, 3), np.float32), padding="same")[0, 0]
    array([ 1.,  3.,  6.,  9., 12.,  9.], dtype=float32)
    """
    fn = "conv1d"
    x4, w4, geom, layout = _conv1d_setup(fn, x, weight, stride, padding, dilation, groups, layout)
    bias = check_bias(bias, geom.K, fn)
    dtype = result_dtype(x4, w4, bias)
    buf, target = prepare_out(out, _shape_1d(geom.out_shape, geom), dtype, fn, (x4, w4, bias))
    if buf.size:
        try:
            _forward(x4, w4, bias, buf.reshape(geom.out_shape), geom, dtype)
        except MemoryError as exc:
            raise memory_error(fn, exc) from None
    return finish_out(buf, target)


def conv1d_backward(grad_y: ArrayLike, x: ArrayLike, weight: ArrayLike, *,
                    stride: Int1 = 1, padding: Padding1D = 0, dilation: Int1 = 1,
                    groups: int = 1, layout: str = "NCW", bias: bool = True,
                    need_input_grad: bool = True, need_weight_grad: bool = True) -> Grads3:
    """Gradients of :func:`conv1d` with respect to x, weight and bias.

    Arguments as :func:`conv2d_backward`, with the 1-D shapes and layouts of
    :func:`conv1d`. Returns ``(grad_x, grad_weight, grad_bias)``, shaped like x,
    weight and ``(K,)``; entries not requested are ``None``.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> gx, gw, gb = fastnn.conv1d_backward(np.ones((1, 1, 3)), np.ones((1, 1, 4)),
    ...                                     np.ones((1, 1, 2)))
    >>> gx[0, 0], gw[0, 0], gb
    (array([1., 2., 2., 1.]), array([3., 3.]), array([3.]))
    """
    fn = "conv1d_backward"
    bias = as_bool(bias, "bias", fn)
    need_input_grad = as_bool(need_input_grad, "need_input_grad", fn)
    need_weight_grad = as_bool(need_weight_grad, "need_weight_grad", fn)
    x4, w4, geom, layout = _conv1d_setup(fn, x, weight, stride, padding, dilation, groups, layout)
    grad_y = as_float_array(grad_y, "grad_y", fn)
    expected = _shape_1d(geom.out_shape, geom)
    if grad_y.shape != expected:
        raise ValueError(f"{fn}: grad_y must have the output shape {expected} "
                         f"(layout {layout}), got {grad_y.shape}")
    gy4 = grad_y.reshape(geom.out_shape)
    try:
        gx, gw, gb = _backward(gy4, x4, w4, geom, bias, need_input_grad, need_weight_grad)
    except MemoryError as exc:
        raise memory_error(fn, exc) from None
    if gx is not None:
        gx = gx.reshape(_shape_1d(gx.shape, geom))
    if gw is not None:
        gw = gw.reshape(w4.shape[1:] if geom.nhwc else w4.shape[:2] + w4.shape[3:])
    return gx, gw, gb


# ------------------------------------------------------------------ conv_transpose2d
class _TransposeGeometry:
    """conv_transpose2d as the adjoint of a conv2d: ``fwd`` is the geometry of the
    convolution whose input gradient the transposed convolution is.

    Output rows that no input pixel reaches (output_padding beyond the bottom/right
    padding) are cropped from ``fwd``'s input (``Hc x Wc``) and come out zero.
    """

    def __init__(self, fn, layout, x, weight, stride, padding, output_padding, dilation, groups):
        if layout == "NHWC":
            N, H, W, Cin = x.shape
            kh, kw, cog, Kw = weight.shape
        else:
            N, Cin, H, W = x.shape
            Kw, cog, kh, kw = weight.shape
        if Kw != Cin:
            raise ValueError(f"{fn}: weight has {Kw} input channels, x has {Cin} (layout {layout}; "
                             f"weight is {'(kh, kw, C_out/groups, C_in)' if layout == 'NHWC' else '(C_in, C_out/groups, kh, kw)'})")
        if Cin % groups:
            raise ValueError(f"{fn}: groups={groups} does not divide the {Cin} input channels of x")
        if kh < 1 or kw < 1:
            raise ValueError(f"{fn}: weight has an empty kernel ({kh}x{kw})")
        Cout = cog * groups
        s = int_tuple(stride, 2, "stride", fn, minimum=1)
        d = int_tuple(dilation, 2, "dilation", fn, minimum=1)
        op = int_tuple(output_padding, 2, "output_padding", fn, minimum=0)
        for a, name in ((0, "height"), (1, "width")):
            if op[a] >= max(s[a], d[a]):
                raise ValueError(f"{fn}: output_padding must be smaller than stride or dilation "
                                 f"along the {name}, got output_padding={op[a]}, stride={s[a]}, "
                                 f"dilation={d[a]}")
        k = (kh, kw)
        if isinstance(padding, str) and padding.lower() == "same":
            if any(op):
                raise ValueError(f"{fn}: output_padding must be 0 with padding='same'")
            # TensorFlow's conv2d_transpose 'SAME': output = input * stride, padded as the
            # 'same' convolution that maps it back.
            out = (H * s[0], W * s[1])
            pads = tuple(same_padding(out[a], k[a], s[a], d[a]) for a in range(2))
        else:
            pads = parse_padding(padding, (H, W), k, s, d, fn)
            out = tuple((size - 1) * s[a] - sum(pads[a]) + d[a] * (k[a] - 1) + op[a] + 1
                        for a, size in enumerate((H, W)))
        if out[0] < 1 or out[1] < 1:
            raise ValueError(f"{fn}: padding {padding!r} leaves an output of {out[0]}x{out[1]}")
        check_index_range(fn, max(Cin, Cout),
                          *(out[a] + sum(pads[a]) + d[a] * (k[a] - 1) + 1 + s[a] for a in range(2)))
        check_result_size(fn, "the output", (N, Cout) + out)
        self.layout, self.nhwc = layout, layout == "NHWC"
        self.N, self.Cout, self.Ho, self.Wo = N, Cout, out[0], out[1]
        self.Cin, self.H, self.W, self.groups = Cin, H, W, groups
        self.k, self.s, self.d, self.pad_before = k, s, d, (pads[0][0], pads[1][0])
        # Bottom/right padding of the adjoint convolution, minus the output padding;
        # a negative value crops rows that receive no input pixel.
        self.Hc = min(out[0], out[0] + pads[0][1] - op[0])
        self.Wc = min(out[1], out[1] + pads[1][1] - op[1])
        self.fwd = None
        if self.Hc >= 1 and self.Wc >= 1:
            crop_pads = ((pads[0][0], max(pads[0][1] - op[0], 0)),
                         (pads[1][0], max(pads[1][1] - op[1], 0)))
            xs = image_shape(self.nhwc, N, Cout, self.Hc, self.Wc)
            self.fwd = Geometry(fn, layout, xs, k, Cin, groups, s, crop_pads, d)
            assert (self.fwd.Ho, self.fwd.Wo) == (H, W), (self.fwd.Ho, self.fwd.Wo, H, W)

    @property
    def out_shape(self):
        return image_shape(self.nhwc, self.N, self.Cout, self.Ho, self.Wo)

    @property
    def cropped(self):
        return self.Hc < self.Ho or self.Wc < self.Wo

    def crop(self, a):
        """The part of an output-shaped array that the adjoint convolution covers."""
        if self.nhwc:
            return a[:, :self.Hc, :self.Wc, :]
        return a[:, :, :self.Hc, :self.Wc]


def _transpose_setup(fn, x, weight, stride, padding, output_padding, dilation, groups, layout):
    layout, x, weight = _image_and_kernel(fn, layout, x, weight, ("N, H, W, C_in", "N, C_in, H, W"),
                                          ("kh, kw, C_out/groups, C_in", "C_in, C_out/groups, kh, kw"))
    groups = as_int(groups, "groups", fn, minimum=1)
    tg = _TransposeGeometry(fn, layout, x, weight, stride, padding, output_padding, dilation, groups)
    return x, weight, tg


def conv_transpose2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
                     stride: IntPair = 1, padding: Padding2D = 0, output_padding: IntPair = 0,
                     dilation: IntPair = 1, groups: int = 1, layout: str = "NCHW",
                     out: FloatArray | None = None) -> FloatArray:
    """2-D transposed convolution (the adjoint of :func:`conv2d`), PyTorch semantics.

    ``conv_transpose2d(x, w, ...)`` equals the input gradient of ``conv2d(y, w, ...)``
    with ``grad_y = x``, and runs on the same kernels.

    Parameters
    ----------
    x : array_like
        ``(N, C_in, H, W)`` for layout ``"NCHW"``, ``(N, H, W, C_in)`` for ``"NHWC"``.
    weight : array_like
        ``(C_in, C_out/groups, kh, kw)`` for ``"NCHW"`` (``torch.nn.ConvTranspose2d``),
        ``(kh, kw, C_out/groups, C_in)`` for ``"NHWC"`` (``tf.nn.conv2d_transpose``'s
        filter; for groups > 1 the input channels form the groups, as in PyTorch).
    bias : array_like, optional
        ``(C_out,)``.
    stride, dilation : int or (int, int)
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        Removed from the output's borders, as in PyTorch. ``"same"`` follows
        TensorFlow's ``conv2d_transpose``: the output is ``H * stride``.
    output_padding : int or (int, int)
        Extra rows/columns at the bottom/right, each smaller than the stride or the
        dilation (PyTorch's rule).
    groups : int
    layout : {"NCHW", "NHWC"}
    out : ndarray, optional
        Result buffer of exactly the output shape and dtype.

    Returns
    -------
    y : ndarray
        ``(N, C_out, Ho, Wo)`` or ``(N, Ho, Wo, C_out)`` with
        ``Ho = (H - 1)*stride - pad_top - pad_bottom + dilation*(kh - 1) + output_padding + 1``.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.array([[[[1.0, 2.0]]]])
    >>> fastnn.conv_transpose2d(x, np.ones((1, 1, 2, 2)), stride=2)[0, 0]
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.]])
    """
    fn = "conv_transpose2d"
    x, weight, tg = _transpose_setup(fn, x, weight, stride, padding, output_padding, dilation,
                                     groups, layout)
    bias = check_bias(bias, tg.Cout, fn)
    dtype = result_dtype(x, weight, bias)
    buf, target = prepare_out(out, tg.out_shape, dtype, fn, (x, weight, bias))
    if buf.size:
        # Zero what the adjoint convolution does not write: rows no input pixel
        # reaches, or everything when x has no input channels (or pixels) at all.
        if tg.fwd is None or tg.cropped or not x.size:
            buf.fill(0)
        if tg.fwd is not None and x.size and _phase_forward(x, weight, bias, buf, tg, dtype):
            return finish_out(buf, target)
        if tg.fwd is not None and x.size:
            dst = np.empty(tg.fwd.x_shape, dtype=dtype) if tg.cropped else buf
            try:
                _input_grad(x, contiguous(x, dtype).reshape(-1), weight, dst, tg.fwd, dtype,
                            _threads(tg.fwd))
            except MemoryError as exc:
                raise memory_error(fn, exc) from None
            if tg.cropped:
                tg.crop(buf)[...] = dst
        if bias is not None:
            buf += bias.astype(dtype, copy=False) if tg.nhwc else bias.astype(dtype)[:, None, None]
    return finish_out(buf, target)


def _axis_phases(size_in, size_out, k, s, pad):
    """The stride phases of one axis of a transposed convolution (dilation 1).

    Output o = q*s + r - pad receives x[q - t] * w[r + t*s] for the taps t with
    r + t*s < k: the outputs o = phase, phase + s, ... are a stride-1 correlation of x
    with the taps r, r + s, ... reversed. Returns the zero padding (before, after) of x
    that every phase's window fits in, and per phase (phase, count, r, taps, first):
    ``count`` outputs, kernel taps ``r::s`` (``taps`` of them), and ``first`` the
    index in the padded x of the first output's first tap.
    """
    phases, lo, hi = [], 0, size_in - 1
    for phase in range(min(s, size_out)):
        count = len(range(phase, size_out, s))
        r, q0 = (phase + pad) % s, (phase + pad) // s
        taps = len(range(r, k, s))
        if taps:
            lo = min(lo, q0 - taps + 1)
            hi = max(hi, q0 + count - 1)
        phases.append((phase, count, r, taps, q0 - taps + 1))
    before = -lo
    return (before, hi - (size_in - 1)), [(ph, n, r, t, first + before)
                                          for ph, n, r, t, first in phases]


def _phase_forward(x, weight, bias, buf, tg, dtype):
    """conv_transpose2d straight into its output, one stride-1 convolution per stride
    phase (no GEMM to a column buffer and no col2im scatter-add). Each phase reads
    the zero-padded x through the implicit-im2col kernel with the reversed taps of
    the kernel that land on it, and writes its outputs, ``stride`` apart, in place.
    False where the column path takes the call instead (see below).

    Measured on N8 C64 28x28 K32 k4 s2 p1 (float32, 2 threads, Zen 4, the bench's
    isolation environment, min of 5 interleaved rounds of 0.3 s, ms): NCHW 2.80
    against 3.30 on the column path, NHWC 2.28 against 2.70 (torch 2.57 and 2.37
    channels_last in the same run). Each phase there is M = 28 output pixels per row,
    N = 32, K = 4 * 64; the column path's col2im pass over the output is what it saves.
    """
    (sh, sw), (kh, kw) = tg.s, tg.k
    if sh == sw == 1 or tg.d != (1, 1) or kh < sh or kw < sw or not weight.size:
        # Stride 1 is already one convolution (the flipped-kernel path); dilation
        # would make the phases' taps dilated (not written); a stride larger than
        # the kernel leaves phases that no tap reaches (up to one per output pixel
        # for a huge stride), which the column path skips for free.
        return False
    if not _finite(weight):
        # The padding zeros are multiplied by every tap: a NaN or Inf weight would
        # reach outputs that no input reaches (the column path sums only real terms).
        return False
    (pt, pb), rows = _axis_phases(tg.H, tg.Ho, kh, sh, tg.pad_before[0])
    (pl, pr), cols = _axis_phases(tg.W, tg.Wo, kw, sw, tg.pad_before[1])
    N, Cin, Cout, G = tg.N, tg.Cin, tg.Cout, tg.groups
    cig, cog = Cin // G, Cout // G
    Hp, Wp = tg.H + pt + pb, tg.W + pl + pr
    w = contiguous(weight, dtype)
    # NHWC vectorises along output channels; with fewer than one 512-bit vector of
    # them per group it runs the channel-major kernel and stores NHWC (as _forward).
    out_nhwc = tg.nhwc and cog < 64 // np.dtype(dtype).itemsize
    if not out_nhwc:
        xp = _padded(x, tg.nhwc, pt, pl, Hp, Wp, dtype, _threads(tg.fwd))
    else:
        xp = np.zeros((N, Cin, Hp, Wp), dtype=dtype)
        xp[:, :, pt:pt + tg.H, pl:pl + tg.W] = x.transpose(0, 3, 1, 2)
    if tg.nhwc:
        view = (tg.Ho * tg.Wo * Cout, 1, sh * tg.Wo * Cout, sw * Cout)
    else:
        view = (Cout * tg.Ho * tg.Wo, tg.Ho * tg.Wo, sh * tg.Wo, sw)
    bc = None if bias is None else contiguous(bias, dtype)
    flat, xflat, nt = buf.reshape(-1), xp.reshape(-1), _threads(tg.fwd)
    for oh, nh, rh, th, fh in rows:
        for ow, nw, rw, tw, fw in cols:
            start = (oh * tg.Wo + ow) * (Cout if tg.nhwc else 1)
            if tg.nhwc and not out_nhwc:
                # (kh, kw, C_out/g, C_in) -> the phase's reversed taps, HWIO
                sub = w[rh::sh, rw::sw][::-1, ::-1].reshape(th, tw, cog, G, cig)
                wp = np.ascontiguousarray(sub.transpose(0, 1, 4, 3, 2)).reshape(-1)
                x_off = (fh * Wp + fw) * Cin
            else:
                if tg.nhwc:
                    sub = w[rh::sh, rw::sw][::-1, ::-1].transpose(3, 2, 0, 1)
                else:
                    sub = w[:, :, rh::sh, rw::sw][:, :, ::-1, ::-1]
                # (C_in, C_out/g, th, tw) -> OIHW (C_out, C_in/g, th, tw)
                sub = sub.reshape(G, cig, cog, th, tw).transpose(0, 2, 1, 3, 4)
                wp = np.ascontiguousarray(sub).reshape(-1)
                x_off = fh * Wp + fw
            geom = (N, Cin, Hp, Wp, Cout, th, tw, 1, 1, 1, 1, 0, 0, nh, nw, G)
            _K["conv2d_forward"][dtype](xflat, wp, bc, flat[start:], geom,
                                        tg.nhwc and not out_nhwc, nt, xflat, Hp, Wp, out_nhwc,
                                        x_off, view)
    return True


def conv_transpose2d_backward(grad_y: ArrayLike, x: ArrayLike, weight: ArrayLike, *,
                              stride: IntPair = 1, padding: Padding2D = 0,
                              output_padding: IntPair = 0, dilation: IntPair = 1,
                              groups: int = 1, layout: str = "NCHW", bias: bool = True,
                              need_input_grad: bool = True, need_weight_grad: bool = True
                              ) -> Grads3:
    """Gradients of :func:`conv_transpose2d` with respect to x, weight and bias.

    ``grad_x`` is :func:`conv2d` of ``grad_y`` with the same weight, and
    ``grad_weight`` the weight gradient of that convolution, so both run on the
    convolution kernels.

    Parameters
    ----------
    grad_y : array_like
        Shaped like :func:`conv_transpose2d`'s result.
    x, weight, stride, padding, output_padding, dilation, groups, layout
        As given to the forward call.
    bias : bool
        Whether the forward had a bias (compute ``grad_bias``, shape ``(C_out,)``).
    need_input_grad, need_weight_grad : bool

    Returns
    -------
    grad_x, grad_weight, grad_bias : ndarray or None

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> gx, gw, gb = fastnn.conv_transpose2d_backward(np.ones((1, 1, 2, 4)),
    ...     np.array([[[[1.0, 2.0]]]]), np.ones((1, 1, 2, 2)), stride=2)
    >>> gx[0, 0], gw[0, 0], gb
    (array([[4., 4.]]), array([[3., 3.],
           [3., 3.]]), array([8.]))
    """
    fn = "conv_transpose2d_backward"
    bias = as_bool(bias, "bias", fn)
    need_input_grad = as_bool(need_input_grad, "need_input_grad", fn)
    need_weight_grad = as_bool(need_weight_grad, "need_weight_grad", fn)
    x, weight, tg = _transpose_setup(fn, x, weight, stride, padding, output_padding, dilation,
                                     groups, layout)
    grad_y = as_float_array(grad_y, "grad_y", fn)
    if grad_y.shape != tg.out_shape:
        raise ValueError(f"{fn}: grad_y must have the output shape {tg.out_shape} "
                         f"(layout {layout}), got {grad_y.shape}")
    try:
        return _transpose_backward(fn, grad_y, x, weight, tg, bias, need_input_grad,
                                   need_weight_grad)
    except MemoryError as exc:
        raise memory_error(fn, exc) from None


def _transpose_backward(fn, grad_y, x, weight, tg, bias, need_input_grad, need_weight_grad):
    dtype = result_dtype(grad_y, x, weight)
    nt = get_num_threads() if tg.fwd is None else _threads(tg.fwd)
    grad_x = grad_w = grad_b = None
    reach = None if tg.fwd is None else tg.crop(grad_y)
    splits = {}     # grad_x and grad_weight both read reach padded and phase-split
    if need_input_grad:
        grad_x = np.zeros(x.shape, dtype=dtype)
        if grad_x.size and reach is not None:
            _forward(reach, weight, None, grad_x, tg.fwd, dtype, splits)
    if need_weight_grad:
        grad_w = np.zeros(weight.shape, dtype=dtype)
        if grad_w.size and x.size and reach is not None:
            _weight_grad(reach, contiguous(x, dtype).reshape(-1), grad_w, tg.fwd, dtype, nt,
                         splits)
    if bias:
        grad_b = np.zeros(tg.Cout, dtype=dtype)
        if grad_y.size:
            # Per-channel sums of grad_y: the bias gradient of a 1x1 convolution over it.
            one = Geometry(fn, tg.layout, grad_y.shape, (1, 1), tg.Cout, 1, 1, 0, 1)
            _K["conv2d_bias_grad"][dtype](contiguous(grad_y, dtype).reshape(-1), grad_b,
                                          one.kernel_args, tg.nhwc, nt)
    return grad_x, grad_w, grad_b
