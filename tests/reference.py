"""Float64 pure-NumPy references for the fastnn kernels.

Written from the definitions in SPEC.md, independently of fastnn: nothing here
imports fastnn. Everything is computed in float64 on the NCHW / OIHW layout; the
NHWC / HWIO forms are plain transposes of it, so one obviously-right core serves
both layouts.

Geometry conventions (SPEC.md, "Convolution"):

* padding: int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
  (TensorFlow's rule, see :func:`same_padding`);
* Ho = floor((H + top + bottom - d*(kh-1) - 1) / s) + 1;
* output pixel (oh, ow), kernel tap (i, j) reads padded input row
  oh*sh + i*dh and column ow*sw + j*dw (cross-correlation).
"""
import numpy as np

__all__ = [
    "same_padding", "normalize_padding", "out_size", "conv_out_hw",
    "to_nchw", "from_nchw", "weight_to_oihw", "weight_from_oihw",
    "patches_nchw", "im2col", "col2im", "conv2d", "conv2d_backward",
    "conv2d_naive", "conv1d", "conv1d_backward", "conv_transpose2d",
    "conv_transpose2d_backward", "pool_out_size", "pool2d", "pool2d_backward",
]


# ------------------------------------------------------------------ geometry
def _pair(v):
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def same_padding(in_size, k, s, d):
    """TensorFlow "same" padding for one axis: (before, after).

    out = ceil(in / s); total = max((out - 1) * s + (k - 1) * d + 1 - in, 0);
    before = total // 2; after = total - before.

    >>> same_padding(5, 3, 2, 1)
    (1, 1)
    >>> same_padding(6, 3, 2, 1)   # the odd extra row goes after
    (0, 1)
    >>> same_padding(4, 1, 3, 1)
    (0, 0)
    """
    out = (in_size + s - 1) // s
    total = (out - 1) * s + (k - 1) * d + 1 - in_size
    if total < 0:
        total = 0
    before = total // 2
    return before, total - before


def normalize_padding(padding, hw, ksize, stride, dilation):
    """Any SPEC padding form as ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            return (same_padding(hw[0], ksize[0], stride[0], dilation[0]),
                    same_padding(hw[1], ksize[1], stride[1], dilation[1]))
        raise ValueError(padding)
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        return (p, p), (p, p)
    ph, pw = padding
    return _pair(ph), _pair(pw)


def out_size(in_size, pad_before, pad_after, k, s, d):
    """floor((in + before + after - d*(k-1) - 1) / s) + 1 (may be < 1)."""
    return (in_size + pad_before + pad_after - d * (k - 1) - 1) // s + 1


def conv_out_hw(hw, ksize, stride=1, padding=0, dilation=1):
    """(Ho, Wo) and the normalised padding for a spatial size ``hw``."""
    ksize, stride, dilation = _pair(ksize), _pair(stride), _pair(dilation)
    (pt, pb), (pl, pr) = normalize_padding(padding, hw, ksize, stride, dilation)
    ho = out_size(hw[0], pt, pb, ksize[0], stride[0], dilation[0])
    wo = out_size(hw[1], pl, pr, ksize[1], stride[1], dilation[1])
    return (ho, wo), ((pt, pb), (pl, pr))


# ------------------------------------------------------------------ layouts
def to_nchw(x, layout):
    x = np.asarray(x, dtype=np.float64)
    return x.transpose(0, 3, 1, 2) if layout == "NHWC" else x


def from_nchw(y, layout):
    return y.transpose(0, 2, 3, 1) if layout == "NHWC" else y


def weight_to_oihw(w, layout):
    """(K, C/g, kh, kw) from the layout's weight; HWIO (kh, kw, C/g, K) for NHWC."""
    w = np.asarray(w, dtype=np.float64)
    return w.transpose(3, 2, 0, 1) if layout == "NHWC" else w


def weight_from_oihw(w, layout):
    return w.transpose(2, 3, 1, 0) if layout == "NHWC" else w


# ------------------------------------------------------------------ patches
def _geometry(hw, ksize, stride, padding, dilation):
    ksize, stride, dilation = _pair(ksize), _pair(stride), _pair(dilation)
    (ho, wo), pads = conv_out_hw(hw, ksize, stride, padding, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(f"output would be {ho}x{wo}")
    return ksize, stride, dilation, pads, ho, wo


def patches_nchw(x, ksize, stride=1, padding=0, dilation=1):
    """P[n, c, i, j, oh, ow] = xpad[n, c, oh*sh + i*dh, ow*sw + j*dw] (float64).

    x is NCHW; the result has shape (N, C, kh, kw, Ho, Wo).
    """
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), ho, wo = _geometry(
        (H, W), ksize, stride, padding, dilation)
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr))
    xp[:, :, pt:pt + H, pl:pl + W] = x
    P = np.empty((N, C, kh, kw, ho, wo))
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            P[:, :, i, j] = xp[:, :, r0:r0 + sh * (ho - 1) + 1:sh, c0:c0 + sw * (wo - 1) + 1:sw]
    return P


def _fold_nchw(P, x_shape, ksize, stride, padding, dilation):
    """Adjoint of :func:`patches_nchw`: sum P[n, c, i, j, oh, ow] into its pixel."""
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (dh, dw), ((pt, pb), (pl, pr)), ho, wo = _geometry(
        (H, W), ksize, stride, padding, dilation)
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr))
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            # Within one tap (i, j) the strided slice hits each pixel at most once,
            # so += is an exact scatter-add here; overlaps come from different taps.
            xp[:, :, r0:r0 + sh * (ho - 1) + 1:sh, c0:c0 + sw * (wo - 1) + 1:sw] += P[:, :, i, j]
    return xp[:, :, pt:pt + H, pl:pl + W].copy()


def im2col(x, ksize, stride=1, padding=0, dilation=1, layout="NCHW"):
    """NCHW: (N, C*kh*kw, Ho*Wo) rows (c, i, j); NHWC: (N, Ho*Wo, kh*kw*C) columns (i, j, c)."""
    P = patches_nchw(to_nchw(x, layout), ksize, stride, padding, dilation)
    N, C, kh, kw, ho, wo = P.shape
    if layout == "NHWC":
        return P.transpose(0, 4, 5, 2, 3, 1).reshape(N, ho * wo, kh * kw * C)
    return P.reshape(N, C * kh * kw, ho * wo)


def col2im(cols, x_shape, ksize, stride=1, padding=0, dilation=1, layout="NCHW"):
    """Adjoint of :func:`im2col` (overlapping patches summed), shaped ``x_shape``."""
    cols = np.asarray(cols, dtype=np.float64)
    if layout == "NHWC":
        N, H, W, C = x_shape
    else:
        N, C, H, W = x_shape
    ksize = _pair(ksize)
    (ho, wo), _ = conv_out_hw((H, W), ksize, stride, padding, dilation)
    kh, kw = ksize
    if layout == "NHWC":
        P = cols.reshape(N, ho, wo, kh, kw, C).transpose(0, 5, 3, 4, 1, 2)
    else:
        P = cols.reshape(N, C, kh, kw, ho, wo)
    x = _fold_nchw(P, (N, C, H, W), ksize, stride, padding, dilation)
    return from_nchw(x, layout)


# ------------------------------------------------------------------ conv2d
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, layout="NCHW"):
    """Cross-correlation in float64, any layout / geometry of SPEC.md."""
    xn = to_nchw(x, layout)
    w = weight_to_oihw(weight, layout)
    N, C, H, W = xn.shape
    K, Cg, kh, kw = w.shape
    G = groups
    assert C == G * Cg and K % G == 0
    P = patches_nchw(xn, (kh, kw), stride, padding, dilation)
    ho, wo = P.shape[-2:]
    Pg = P.reshape(N, G, Cg, kh, kw, ho, wo)
    wg = w.reshape(G, K // G, Cg, kh, kw)
    y = np.einsum("ngcijhw,gkcij->ngkhw", Pg, wg).reshape(N, K, ho, wo)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return from_nchw(y, layout)


def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    layout="NCHW"):
    """(grad_x, grad_weight, grad_bias) of :func:`conv2d`, in float64.

    The forward is y[n,g,k] = sum_{c,i,j} w[g,k,c,i,j] P[n,g,c,i,j]; its adjoint
    sends grad_y back through the same patch tensor (grad_w = sum_n gy P) and
    through the transpose of the patch extraction (grad_x = fold(w^T gy)).
    """
    xn = to_nchw(x, layout)
    w = weight_to_oihw(weight, layout)
    gy = to_nchw(grad_y, layout)
    N, C, H, W = xn.shape
    K, Cg, kh, kw = w.shape
    G = groups
    P = patches_nchw(xn, (kh, kw), stride, padding, dilation)
    ho, wo = P.shape[-2:]
    Pg = P.reshape(N, G, Cg, kh, kw, ho, wo)
    wg = w.reshape(G, K // G, Cg, kh, kw)
    gyg = gy.reshape(N, G, K // G, ho, wo)
    grad_w = np.einsum("ngcijhw,ngkhw->gkcij", Pg, gyg).reshape(K, Cg, kh, kw)
    gP = np.einsum("gkcij,ngkhw->ngcijhw", wg, gyg).reshape(N, C, kh, kw, ho, wo)
    grad_x = _fold_nchw(gP, (N, C, H, W), (kh, kw), stride, padding, dilation)
    grad_b = gy.sum(axis=(0, 2, 3))
    return from_nchw(grad_x, layout), weight_from_oihw(grad_w, layout), grad_b


def conv2d_naive(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                 layout="NCHW"):
    """The definition as seven nested Python loops (tiny sizes only).

    Used to check :func:`conv2d` itself; shares nothing with it but the layout
    transposes and the padding normalisation.
    """
    xn = to_nchw(x, layout)
    w = weight_to_oihw(weight, layout)
    N, C, H, W = xn.shape
    K, Cg, kh, kw = w.shape
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    (pt, pb), (pl, pr) = normalize_padding(padding, (H, W), (kh, kw), (sh, sw), (dh, dw))
    ho = out_size(H, pt, pb, kh, sh, dh)
    wo = out_size(W, pl, pr, kw, sw, dw)
    Kg = K // groups
    y = np.zeros((N, K, ho, wo))
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for oh in range(ho):
                for ow in range(wo):
                    acc = 0.0 if bias is None else float(bias[k])
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                ih = oh * sh - pt + i * dh
                                iw = ow * sw - pl + j * dw
                                if 0 <= ih < H and 0 <= iw < W:
                                    acc += w[k, c, i, j] * xn[n, g * Cg + c, ih, iw]
                    y[n, k, oh, ow] = acc
    return from_nchw(y, layout)


# ------------------------------------------------------------------ conv1d
def _groups_1d(x, w, padding, groups):
    """x zero-padded to (N, G, C/G, W + left + right) and w as (G, K/G, C/G, kw)."""
    N, C, W = x.shape
    K, Cg, kw = w.shape
    pl, pr = padding
    xp = np.zeros((N, C, W + pl + pr))
    xp[:, :, pl:pl + W] = x
    return xp.reshape(N, groups, Cg, W + pl + pr), w.reshape(groups, K // groups, Cg, kw)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, layout="NCW"):
    """1-D cross-correlation in float64 by a loop over kernel taps.

    NCW: x (N, C, W), weight (K, C/g, kw); NWC: x (N, W, C), weight (kw, C/g, K).
    ``padding`` is already (left, right).
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    if layout == "NWC":
        x, w = x.transpose(0, 2, 1), w.transpose(2, 1, 0)
    N, C, W = x.shape
    K, Cg, kw = w.shape
    pl, pr = padding
    wo = (W + pl + pr - dilation * (kw - 1) - 1) // stride + 1
    xg, wg = _groups_1d(x, w, padding, groups)
    y = np.zeros((N, groups, K // groups, wo))
    for j in range(kw):
        start = j * dilation
        cols = xg[..., start:start + (wo - 1) * stride + 1:stride]
        y += np.einsum("ngcw,gkc->ngkw", cols, wg[..., j])
    y = y.reshape(N, K, wo)
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None]
    return y.transpose(0, 2, 1) if layout == "NWC" else y


def conv1d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1, layout="NCW"):
    """(grad_x, grad_weight, grad_bias) of :func:`conv1d`: each tap's adjoint."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    gy = np.asarray(grad_y, dtype=np.float64)
    if layout == "NWC":
        x, w, gy = x.transpose(0, 2, 1), w.transpose(2, 1, 0), gy.transpose(0, 2, 1)
    N, C, W = x.shape
    K, Cg, kw = w.shape
    pl, pr = padding
    wo = gy.shape[2]
    xg, wg = _groups_1d(x, w, padding, groups)
    gyg = gy.reshape(N, groups, K // groups, wo)
    gxp = np.zeros_like(xg)
    gw = np.zeros_like(wg)
    for j in range(kw):
        sl = slice(j * dilation, j * dilation + (wo - 1) * stride + 1, stride)
        gw[..., j] = np.einsum("ngcw,ngkw->gkc", xg[..., sl], gyg)
        gxp[..., sl] += np.einsum("gkc,ngkw->ngcw", wg[..., j], gyg)
    gx = gxp.reshape(N, C, W + pl + pr)[:, :, pl:pl + W]
    gw = gw.reshape(K, Cg, kw)
    gb = gy.sum(axis=(0, 2))
    if layout == "NWC":
        return gx.transpose(0, 2, 1), gw.transpose(2, 1, 0), gb
    return gx, gw, gb


# ------------------------------------------------------------------ conv_transpose2d
def _transpose_canvas(H, W, out_hw, ksize, stride, pads, dilation):
    """Size of the uncropped canvas every input pixel scatters its kernel into."""
    (kh, kw), (sh, sw), (dh, dw) = ksize, stride, dilation
    (pt, _), (pl, _) = pads
    return (max((H - 1) * sh + (kh - 1) * dh + 1, pt + out_hw[0]),
            max((W - 1) * sw + (kw - 1) * dw + 1, pl + out_hw[1]))


def conv_transpose2d(x, weight, bias=None, stride=1, pads=((0, 0), (0, 0)), output_padding=0,
                     dilation=1, groups=1, layout="NCHW"):
    """Transposed convolution in float64 by scattering every input pixel's kernel
    (PyTorch's definition): canvas[h*s + i*d, w*s + j*d] += x[h, w] * w[i, j], then
    the output is the canvas from (top, left) on, of size
    (H-1)*s - top - bottom + d*(k-1) + output_padding + 1.

    NCHW: x (N, C_in, H, W), weight (C_in, C_out/g, kh, kw); NHWC: x (N, H, W, C_in),
    weight (kh, kw, C_out/g, C_in). ``pads`` is ((top, bottom), (left, right)).
    """
    xn = to_nchw(x, layout)
    w = weight_to_oihw(weight, layout)    # (C_in, C_out/g, kh, kw): the same transpose
    N, Cin, H, W = xn.shape
    _, Cog, kh, kw = w.shape
    (sh, sw), (dh, dw), (oph, opw) = _pair(stride), _pair(dilation), _pair(output_padding)
    (pt, pb), (pl, pr) = pads
    ho = (H - 1) * sh - pt - pb + dh * (kh - 1) + oph + 1
    wo = (W - 1) * sw - pl - pr + dw * (kw - 1) + opw + 1
    ch, cw = _transpose_canvas(H, W, (ho, wo), (kh, kw), (sh, sw), pads, (dh, dw))
    G = groups
    canvas = np.zeros((N, G, Cog, ch, cw))
    xg = xn.reshape(N, G, Cin // G, H, W)
    wg = w.reshape(G, Cin // G, Cog, kh, kw)
    for i in range(kh):
        for j in range(kw):
            canvas[:, :, :, i * dh:i * dh + (H - 1) * sh + 1:sh, j * dw:j * dw + (W - 1) * sw + 1:sw] += \
                np.einsum("ngchw,gco->ngohw", xg, wg[..., i, j])
    y = canvas.reshape(N, G * Cog, ch, cw)[:, :, pt:pt + ho, pl:pl + wo]
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return from_nchw(y, layout)


def conv_transpose2d_backward(grad_y, x, weight, stride=1, pads=((0, 0), (0, 0)),
                              output_padding=0, dilation=1, groups=1, layout="NCHW"):
    """(grad_x, grad_weight, grad_bias) of :func:`conv_transpose2d`: the scatter's
    adjoint gathers grad_y (placed back on the canvas) under every kernel tap."""
    xn = to_nchw(x, layout)
    gy = to_nchw(grad_y, layout)
    w = weight_to_oihw(weight, layout)    # (C_in, C_out/g, kh, kw): the same transpose
    N, Cin, H, W = xn.shape
    _, Cog, kh, kw = w.shape
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    (pt, _), (pl, _) = pads
    ho, wo = gy.shape[2:]
    ch, cw = _transpose_canvas(H, W, (ho, wo), (kh, kw), (sh, sw), pads, (dh, dw))
    G = groups
    canvas = np.zeros((N, G * Cog, ch, cw))
    canvas[:, :, pt:pt + ho, pl:pl + wo] = gy
    cg = canvas.reshape(N, G, Cog, ch, cw)
    xg = xn.reshape(N, G, Cin // G, H, W)
    wg = w.reshape(G, Cin // G, Cog, kh, kw)
    gx = np.zeros_like(xg)
    gw = np.zeros_like(wg)
    for i in range(kh):
        for j in range(kw):
            win = cg[..., i * dh:i * dh + (H - 1) * sh + 1:sh, j * dw:j * dw + (W - 1) * sw + 1:sw]
            gx += np.einsum("ngohw,gco->ngchw", win, wg[..., i, j])
            gw[..., i, j] = np.einsum("ngohw,ngchw->gco", win, xg)
    gw = gw.reshape(Cin, Cog, kh, kw)
    if layout == "NHWC":
        gw = gw.transpose(2, 3, 1, 0)
    return from_nchw(gx.reshape(N, Cin, H, W), layout), gw, gy.sum(axis=(0, 2, 3))


# ------------------------------------------------------------------ pooling
def pool_out_size(size, pad_before, pad_after, k, s, d=1, ceil_mode=False):
    """PyTorch's pooling output size: floor (or ceil) of
    (size + before + after - d*(k-1) - 1) / s, plus 1; in ceil mode a last window that
    would start past the input and the leading padding is dropped."""
    span = size + pad_before + pad_after - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    n = -(-span // s) + 1
    if (n - 1) * s >= size + pad_before:
        n -= 1
    return n


def _pool_taps(o, s, p0, k, d, size):
    """The in-input positions of window o along one axis, in window order."""
    return [o * s - p0 + i * d for i in range(k) if 0 <= o * s - p0 + i * d < size]


def pool2d(x, kernel_size, stride, pads, mode="max", layout="NCHW", dilation=1,
           ceil_mode=False, count_include_pad=False, divisor_override=None):
    """Max or average pooling by an explicit loop over windows, in float64.

    ``pads`` is ((top, bottom), (left, right)); window (oh, ow) has taps at padded
    rows oh*sh - top + i*dh, columns ow*sw - left + j*dw. Padded taps are skipped
    (max: -inf padding). Average: the window's sum divided by ``divisor_override``
    when given, else (``count_include_pad``) by the window's extent clipped at the
    padded end (H + bottom, W + right), else by its number of real elements. Max
    returns (y, indices): the first maximum in row-major window order, a NaN beating
    everything and the last NaN winning (PyTorch's rule), indices flat h*W + w; a
    window of -inf gives the index of its first real tap.
    """
    xn = to_nchw(x, layout)
    N, C, H, W = xn.shape
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel_size), _pair(stride), _pair(dilation)
    (pt, pb), (pl, pr) = pads
    ho = pool_out_size(H, pt, pb, kh, sh, dh, ceil_mode)
    wo = pool_out_size(W, pl, pr, kw, sw, dw, ceil_mode)
    y = np.zeros((N, C, ho, wo))
    idx = np.zeros((N, C, ho, wo), dtype=np.int64)
    for oh in range(ho):
        for ow in range(wo):
            hs = _pool_taps(oh, sh, pt, kh, dh, H)
            ws = _pool_taps(ow, sw, pl, kw, dw, W)
            if mode == "avg":
                if divisor_override is not None:
                    div = divisor_override
                elif count_include_pad:
                    h0, w0 = oh * sh - pt, ow * sw - pl
                    div = (min(h0 + kh, H + pb) - h0) * (min(w0 + kw, W + pr) - w0)
                else:
                    div = len(hs) * len(ws)
                y[:, :, oh, ow] = xn[:, :, hs][:, :, :, ws].sum(axis=(2, 3)) / div
                continue
            for n in range(N):
                for c in range(C):
                    best, at = -np.inf, hs[0] * W + ws[0]
                    for h in hs:
                        for w in ws:
                            v = xn[n, c, h, w]
                            if v > best or np.isnan(v):
                                best, at = v, h * W + w
                    y[n, c, oh, ow], idx[n, c, oh, ow] = best, at
    if mode == "avg":
        return from_nchw(y, layout)
    return from_nchw(y, layout), from_nchw(idx, layout)


def pool2d_backward(grad_y, x_shape, kernel_size, stride, pads, mode="max", indices=None,
                    layout="NCHW", ceil_mode=False, count_include_pad=False,
                    divisor_override=None):
    """The adjoint of :func:`pool2d`: each window's gradient to its argmax (max, by
    ``indices``) or, divided by the window's divisor, to each of its real elements
    (avg). ``ceil_mode`` only fixes the output size, which grad_y already has."""
    del ceil_mode
    gy = to_nchw(grad_y, layout)
    if layout == "NHWC":
        N, H, W, C = x_shape
    else:
        N, C, H, W = x_shape
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    (pt, pb), (pl, pr) = pads
    gx = np.zeros((N, C, H * W))
    ho, wo = gy.shape[2:]
    if mode == "max":
        idx = np.asarray(indices).transpose(0, 3, 1, 2) if layout == "NHWC" else np.asarray(indices)
        for n in range(N):
            for c in range(C):
                np.add.at(gx[n, c], idx[n, c].ravel(), gy[n, c].ravel())
        return from_nchw(gx.reshape(N, C, H, W), layout)
    gx = gx.reshape(N, C, H, W)
    for oh in range(ho):
        for ow in range(wo):
            a, b = oh * sh - pt, ow * sw - pl
            h0, w0 = max(a, 0), max(b, 0)
            h1, w1 = min(a + kh, H), min(b + kw, W)
            if divisor_override is not None:
                div = divisor_override
            elif count_include_pad:
                div = (min(a + kh, H + pb) - a) * (min(b + kw, W + pr) - b)
            else:
                div = (h1 - h0) * (w1 - w0)
            gx[:, :, h0:h1, w0:w1] += (gy[:, :, oh, ow] / div)[:, :, None, None]
    return from_nchw(gx, layout)


# ------------------------------------------------------------------ activations
# Written from SPEC.md "Activations" with plain NumPy in float64; the selects are
# np.where, so NaN / Inf behave exactly as the spec words them.
def relu(x):
    """max(x, 0) as np.maximum: relu(NaN) is NaN."""
    return np.maximum(np.asarray(x, dtype=np.float64), 0.0)


def relu_backward(grad_y, x, at_zero=0.0):
    """grad_y where x > 0, at_zero * grad_y where x == 0, exactly 0 elsewhere (x < 0
    or NaN, whatever grad_y holds); at_zero == 0 blocks x == 0 too (threshold_backward)."""
    g = np.asarray(grad_y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        at = at_zero * g if at_zero != 0 else np.zeros_like(g)
    return np.where(x > 0, g, np.where(x == 0, at, 0.0))


def leaky_relu(x, negative_slope=0.01):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x, negative_slope * x)


def leaky_relu_backward(grad_y, x, negative_slope=0.01):
    g = np.asarray(grad_y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, g, negative_slope * g)


def sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: exp of -|x| only."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_backward(grad_y, y):
    """From the forward output y = sigmoid(x)."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.asarray(grad_y, dtype=np.float64) * y * (1.0 - y)


def tanh(x):
    return np.tanh(np.asarray(x, dtype=np.float64))


def tanh_backward(grad_y, y):
    """From the forward output y = tanh(x): grad_y * (1 - y**2), as (1 - y) * (1 + y),
    which does not cancel for |y| near 1."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(grad_y, dtype=np.float64) * ((1.0 - y) * (1.0 + y))


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along axis."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    with np.errstate(invalid="ignore"):
        e = np.exp(x - np.max(x, axis=axis, keepdims=True))
        return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    with np.errstate(invalid="ignore"):
        z = x - np.max(x, axis=axis, keepdims=True)
        return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax_backward(grad_y, y, axis=-1):
    """Vector-Jacobian product of softmax from its output y: y * (g - sum(g * y))."""
    g = np.asarray(grad_y, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return y * (g - np.sum(g * y, axis=axis, keepdims=True))


def log_softmax_backward(grad_y, y, axis=-1):
    """From the log_softmax output y: g - exp(y) * sum(g)."""
    g = np.asarray(grad_y, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return g - np.exp(y) * np.sum(g, axis=axis, keepdims=True)


def _targets(labels, shape):
    """Class indices (N,) as one-hot rows, or probability rows as given (float64)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        t = np.zeros(shape)
        t[np.arange(shape[0]), labels] = 1.0
        return t
    return labels.astype(np.float64)


def _class_axis_last(a):
    """(N, C, d1, ...) as (N * d1 * ..., C) rows, for the per-row formulas below."""
    a = np.asarray(a)
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def softmax_cross_entropy(logits, labels, reduction="mean", weight=None, ignore_index=None,
                          label_smoothing=0.0):
    """PyTorch's cross_entropy written out per row (class axis 1 of (N, C, d1, ...)).

    Class indices y: loss = (1 - eps) * w[y] * nll + eps / C * sum_c w[c] * (-lsm[c]),
    nll = -lsm[y]; rows whose label is ``ignore_index`` give 0 and the mean divides by
    the sum of w[y] over the other rows (by their count without weight). Only the
    labelled entry enters nll (no 0 * -inf = NaN from the other classes), as the
    definition -log_softmax(x)[label] says. Probability targets t: loss = -sum_c
    w[c] * ((1 - eps) t_c + eps / C) * lsm[c], the mean over rows.
    """
    x = np.asarray(logits, dtype=np.float64)
    N, C = x.shape[:2]
    positions = (N,) + x.shape[2:]
    lsm = log_softmax(_class_axis_last(x), axis=1)
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    eps = float(label_smoothing)
    labels = np.asarray(labels)
    if labels.ndim == x.ndim - 1:
        y = labels.reshape(-1).astype(np.int64)
        keep = np.ones(y.shape, bool) if ignore_index is None else y != ignore_index
        yk = np.where(keep, y, 0)
        nll = -lsm[np.arange(y.size), yk] * w[yk]
        loss = (1 - eps) * nll
        if eps:
            with np.errstate(invalid="ignore"):
                loss = loss + eps / C * -(lsm * w).sum(axis=1)
        loss = np.where(keep, loss, 0.0)
        denominator = np.sum(np.where(keep, w[yk], 0.0))
    else:
        t = _class_axis_last(labels.astype(np.float64))
        t = w * ((1 - eps) * t + eps / C)
        with np.errstate(invalid="ignore"):
            loss = -np.sum(t * lsm, axis=1)
        denominator = loss.size
    if reduction == "none":
        return loss.reshape(positions)
    if reduction == "sum":
        return np.sum(loss)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(loss) / np.float64(denominator) if loss.size else np.nan


def softmax_cross_entropy_backward(grad_loss, logits, labels, reduction="mean", weight=None,
                                   ignore_index=None, label_smoothing=0.0):
    """The derivative of :func:`softmax_cross_entropy`, per row:
    s_i * ((1 - eps) w[y] (p - onehot_y) + eps / C (W p - w)) for class indices (W =
    sum w; 0 for ignored rows), s_i * (p sum(t) - t) with t = w ((1 - eps) t + eps / C)
    for probabilities; s_i = grad_loss / denominator, grad_loss, grad_loss[i]. At the
    label, p - 1 is -(the other classes' p), which does not cancel for confident rows.
    """
    x = np.asarray(logits, dtype=np.float64)
    N, C = x.shape[:2]
    rows = _class_axis_last(x)
    M = rows.shape[0]
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    eps = float(label_smoothing)
    labels = np.asarray(labels)
    g = np.asarray(grad_loss, dtype=np.float64)
    p = softmax(rows, axis=1)
    if labels.ndim == x.ndim - 1:
        y = labels.reshape(-1).astype(np.int64)
        keep = np.ones(M, bool) if ignore_index is None else y != ignore_index
        yk = np.where(keep, y, 0)
        r = np.arange(M)
        pm1 = p.copy()
        pm1[r, yk] = -np.where(np.arange(C) == yk[:, None], 0.0, p).sum(axis=1)
        grad = (1 - eps) * w[yk][:, None] * pm1
        if eps:
            other = w.sum() * p - w
            other[r, yk] = (w.sum() - w[yk]) * p[r, yk] + w[yk] * pm1[r, yk]
            grad = grad + eps / C * other
        denominator = np.sum(np.where(keep, w[yk], 0.0))
    else:
        t = w * ((1 - eps) * _class_axis_last(labels.astype(np.float64)) + eps / C)
        grad = p * t.sum(axis=1, keepdims=True) - t
        keep, denominator = np.ones(M, bool), M
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.full(M, g / np.float64(denominator)) if M else np.zeros(0)
    elif reduction == "sum":
        s = np.full(M, g)
    else:
        s = g.reshape(-1)
    with np.errstate(invalid="ignore"):
        grad = np.where(keep[:, None], s[:, None] * grad, 0.0)   # ignored rows: exactly 0
    return np.moveaxis(grad.reshape((N,) + x.shape[2:] + (C,)), -1, 1)


__all__ += [
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "softmax", "log_softmax", "softmax_backward", "log_softmax_backward",
    "softmax_cross_entropy", "softmax_cross_entropy_backward",
]


# ------------------------------------------------------------------ recurrent
# The cell equations of SPEC.md ("Recurrent cells") written out one step at a time,
# batch-major, in float64. Gradients of these are checked by finite differences in the
# tests, not derived here.
def _sig(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))      # the logistic function, no overflow


def lstm_cell(x, h, c, kernel, bias, forget_bias=1.0):
    """TensorFlow BasicLSTMCell: z = [x, h] @ kernel + bias, blocks (i, j, f, o)."""
    x, h, c, kernel, bias = (np.asarray(a, dtype=np.float64) for a in (x, h, c, kernel, bias))
    H = h.shape[1]
    z = np.concatenate([x, h], axis=1) @ kernel + bias
    i, j, f, o = (z[:, k * H:(k + 1) * H] for k in range(4))
    c_new = c * _sig(f + forget_bias) + _sig(i) * np.tanh(j)
    return np.tanh(c_new) * _sig(o), c_new


def lstm(x, h0, c0, kernel, bias, forget_bias=1.0, time_major=False):
    """(outputs, h_T, c_T) over x (B, T, I) (or (T, B, I)), state zeros for None."""
    x = np.asarray(x, dtype=np.float64)
    if time_major:
        x = x.transpose(1, 0, 2)
    B, T = x.shape[:2]
    H = np.shape(kernel)[1] // 4
    h = np.zeros((B, H)) if h0 is None else np.asarray(h0, dtype=np.float64)
    c = np.zeros((B, H)) if c0 is None else np.asarray(c0, dtype=np.float64)
    outs = []
    for t in range(T):
        h, c = lstm_cell(x[:, t], h, c, kernel, bias, forget_bias)
        outs.append(h)
    out = np.stack(outs, axis=1) if outs else np.zeros((B, 0, H))
    return (out.transpose(1, 0, 2) if time_major else out), h, c


def keras_lstm(x, kernel, recurrent_kernel, bias):
    """Keras LSTM (gate blocks i, f, c, o), x (B, T, I), zero initial state."""
    H = recurrent_kernel.shape[0]
    h = c = np.zeros((x.shape[0], H))
    outs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        c = _sig(f) * c + _sig(i) * np.tanh(g)
        h = _sig(o) * np.tanh(c)
        outs.append(h)
    return np.stack(outs, axis=1)


def gru_cell(x, h, kernel, recurrent_kernel, bias, reset_after=True):
    """Keras GRU, gate blocks (z, r, h); bias (2, 3H) with reset_after, else (3H,)."""
    x, h, kernel, recurrent_kernel, bias = (np.asarray(a, dtype=np.float64)
                                            for a in (x, h, kernel, recurrent_kernel, bias))
    H = h.shape[1]
    blk = lambda a, k: a[..., k * H:(k + 1) * H]   # noqa: E731
    if reset_after:
        xz = x @ kernel + bias[0]
        hz = h @ recurrent_kernel + bias[1]
        z = _sig(blk(xz, 0) + blk(hz, 0))
        r = _sig(blk(xz, 1) + blk(hz, 1))
        hh = np.tanh(blk(xz, 2) + r * blk(hz, 2))
    else:
        xz = x @ kernel + bias
        z = _sig(blk(xz, 0) + h @ blk(recurrent_kernel, 0))
        r = _sig(blk(xz, 1) + h @ blk(recurrent_kernel, 1))
        hh = np.tanh(blk(xz, 2) + (r * h) @ blk(recurrent_kernel, 2))
    return z * h + (1 - z) * hh


def gru(x, h0, kernel, recurrent_kernel, bias, reset_after=True, time_major=False):
    """(outputs, h_T) of the Keras GRU over a sequence."""
    x = np.asarray(x, dtype=np.float64)
    if time_major:
        x = x.transpose(1, 0, 2)
    B, T = x.shape[:2]
    H = np.shape(recurrent_kernel)[0]
    h = np.zeros((B, H)) if h0 is None else np.asarray(h0, dtype=np.float64)
    outs = []
    for t in range(T):
        h = gru_cell(x[:, t], h, kernel, recurrent_kernel, bias, reset_after)
        outs.append(h)
    out = np.stack(outs, axis=1) if outs else np.zeros((B, 0, H))
    return (out.transpose(1, 0, 2) if time_major else out), h


def simple_rnn(x, h0, kernel, recurrent_kernel, bias, activation="tanh", time_major=False):
    """(outputs, h_T) of h_t = act(x_t W + h_{t-1} U + b)."""
    x = np.asarray(x, dtype=np.float64)
    if time_major:
        x = x.transpose(1, 0, 2)
    B, T = x.shape[:2]
    H = np.shape(recurrent_kernel)[0]
    act = np.tanh if activation == "tanh" else (lambda v: np.maximum(v, 0))
    h = np.zeros((B, H)) if h0 is None else np.asarray(h0, dtype=np.float64)
    outs = []
    for t in range(T):
        h = act(x[:, t] @ kernel + h @ recurrent_kernel + bias)
        outs.append(h)
    out = np.stack(outs, axis=1) if outs else np.zeros((B, 0, H))
    return (out.transpose(1, 0, 2) if time_major else out), h


__all__ += ["lstm_cell", "lstm", "keras_lstm", "gru_cell", "gru", "simple_rnn"]
# ------------------------------------------------------------------ banded and masked weights
def band_keep(n_rows, n_cols, num_lower, num_upper):
    """Boolean band of tf.linalg.band_part, entry by entry."""
    keep = np.zeros((n_rows, n_cols), dtype=bool)
    for i in range(n_rows):
        for j in range(n_cols):
            keep[i, j] = ((num_lower < 0 or i - j <= num_lower)
                          and (num_upper < 0 or j - i <= num_upper))
    return keep


def band_part(w, num_lower, num_upper):
    w = np.asarray(w, dtype=np.float64)
    return np.where(band_keep(w.shape[-2], w.shape[-1], num_lower, num_upper), w, 0.0)


def masked_weight(w, mask):
    """w where mask is non-zero, exact zeros elsewhere (a NaN under a zero mask is dropped)."""
    return np.where(np.asarray(mask) != 0, np.asarray(w, dtype=np.float64), 0.0)


def masked_matmul(x, w, mask, bias=None):
    """x @ (w * mask) + bias in float64, over the leading axes of x."""
    y = np.asarray(x, dtype=np.float64) @ masked_weight(w, mask)
    return y if bias is None else y + np.asarray(bias, dtype=np.float64)


def masked_matmul_backward(grad_y, x, w, mask):
    """(grad_x, grad_w, grad_bias) of masked_matmul: grad_w is (x^T grad_y) * mask."""
    g = np.asarray(grad_y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    rows = int(np.prod(x.shape[:-1]))
    g2, x2 = g.reshape(rows, g.shape[-1]), x.reshape(rows, x.shape[-1])
    keep = np.asarray(mask) != 0
    return (g @ masked_weight(w, mask).T, np.where(keep, x2.T @ g2, 0.0), g2.sum(axis=0))


def banded_matmul(x, w, num_lower, num_upper, bias=None):
    w = np.asarray(w)
    return masked_matmul(x, w, band_keep(*w.shape, num_lower, num_upper), bias)


def banded_matmul_backward(grad_y, x, w, num_lower, num_upper):
    w = np.asarray(w)
    return masked_matmul_backward(grad_y, x, w, band_keep(*w.shape, num_lower, num_upper))


def _lc_padding(size, k, s, padding):
    if padding == "same":
        return same_padding(size, k, s, 1)
    if padding == "valid":
        return 0, 0
    if isinstance(padding, (int, np.integer)):
        return int(padding), int(padding)
    return tuple(padding)


def _lc_padded(x, kernel_size, stride, padding):
    """x (NHWC) zero-padded in float64, and its (top, left) padding."""
    x = np.asarray(x, dtype=np.float64)
    N, H, W, C = x.shape
    if isinstance(padding, str):
        (pt, pb), (pl, pr) = (_lc_padding(H, kernel_size[0], stride[0], padding),
                              _lc_padding(W, kernel_size[1], stride[1], padding))
    else:
        (pt, pb), (pl, pr) = padding
    xp = np.zeros((N, H + pt + pb, W + pl + pr, C))
    xp[:, pt:pt + H, pl:pl + W] = x
    return xp, (pt, pl)


def locally_connected2d(x, weight, bias, kernel_size, stride, padding):
    """NHWC locally connected layer by an explicit loop over output pixels.

    ``padding`` is "same", "valid" or ((top, bottom), (left, right)); weight
    (Ho, Wo, kh*kw*C, K) with patch rows ordered (i, j, c)."""
    xp, _ = _lc_padded(x, kernel_size, stride, padding)
    N, C = x.shape[0], x.shape[3]
    (kh, kw), (sh, sw) = kernel_size, stride
    Ho = (xp.shape[1] - kh) // sh + 1
    Wo = (xp.shape[2] - kw) // sw + 1
    K = weight.shape[-1]
    y = np.zeros((N, Ho, Wo, K))
    for oh in range(Ho):
        for ow in range(Wo):
            patch = xp[:, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw, :].reshape(N, kh * kw * C)
            y[:, oh, ow] = patch @ np.asarray(weight[oh, ow], dtype=np.float64)
            if bias is not None:
                y[:, oh, ow] += bias[oh, ow]
    return y


def locally_connected2d_backward(grad_y, x, weight, kernel_size, stride, padding):
    """(grad_x, grad_weight, grad_bias) of locally_connected2d, by the same pixel loop."""
    g = np.asarray(grad_y, dtype=np.float64)
    xp, (pt, pl) = _lc_padded(x, kernel_size, stride, padding)
    N, H, W, C = x.shape
    (kh, kw), (sh, sw) = kernel_size, stride
    gxp = np.zeros_like(xp)
    Ho, Wo = g.shape[1:3]
    gw = np.zeros(weight.shape)
    for oh in range(Ho):
        for ow in range(Wo):
            rows, cols = slice(oh * sh, oh * sh + kh), slice(ow * sw, ow * sw + kw)
            patch = xp[:, rows, cols, :].reshape(N, kh * kw * C)
            gw[oh, ow] = patch.T @ g[:, oh, ow]
            gxp[:, rows, cols, :] += (g[:, oh, ow] @ np.asarray(weight[oh, ow], dtype=np.float64).T
                                      ).reshape(N, kh, kw, C)
    return gxp[:, pt:pt + H, pl:pl + W], gw, g.sum(axis=0)


__all__ += ["band_keep", "band_part", "masked_weight", "masked_matmul", "masked_matmul_backward",
            "banded_matmul", "banded_matmul_backward", "locally_connected2d",
            "locally_connected2d_backward"]
