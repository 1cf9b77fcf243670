"""Pure-NumPy baselines that fastnn races, and the optional PyTorch peer.

The baselines are what a competent NumPy user would write -- im2col through
``sliding_window_view`` plus one BLAS matrix product -- not strawmen. They are also
the reference every contender's result is checked against before it is timed, so
they are written for clarity first: their own geometry code (no fastnn imports),
float32 in and out, no loops over pixels.

PyTorch is imported lazily (:func:`get_torch`): importing it takes seconds and it is
an optional dependency.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["get_torch", "conv_geometry", "conv2d_forward", "conv2d_backward", "relu_backward",
           "sigmoid", "softmax", "softmax_backward", "softmax_cross_entropy"]

_torch = None
_torch_tried = False


def get_torch():
    """The ``torch`` module, or None when it is not installed (imported once)."""
    global _torch, _torch_tried
    if not _torch_tried:
        _torch_tried = True
        try:
            import torch
        except Exception:  # ImportError, or a broken install (missing libs)
            torch = None
        _torch = torch
    return _torch


def _pair(v):
    if isinstance(v, (tuple, list)):
        a, b = v
        return int(a), int(b)
    return int(v), int(v)


def conv_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, layout="NCHW"):
    """Convolution geometry as a dict: sizes, strides, per-side padding and output size.

    ``padding`` accepts an int, ``(ph, pw)``, ``((top, bottom), (left, right))``,
    ``"valid"`` or ``"same"`` (TensorFlow's rule: out = ceil(in / stride), the odd
    padding element goes after).
    """
    if layout == "NCHW":
        N, C, H, W = x_shape
        K, _, kh, kw = w_shape
    elif layout == "NHWC":
        N, H, W, C = x_shape
        kh, kw, _, K = w_shape
    else:
        raise ValueError(f"unknown layout {layout!r}")
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0), (0, 0))
        elif padding == "same":
            pads = []
            for size, s, span in ((H, sh, span_h), (W, sw, span_w)):
                out = -(-size // s)
                total = max((out - 1) * s + span - size, 0)
                pads.append((total // 2, total - total // 2))
            pads = tuple(pads)
        else:
            raise ValueError(f"unknown padding {padding!r}")
    elif isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding):
        pads = (_pair(padding[0]), _pair(padding[1]))
    else:
        ph, pw = _pair(padding)
        pads = ((ph, ph), (pw, pw))
    (pt, pb), (pl, pr) = pads
    Ho = (H + pt + pb - span_h) // sh + 1
    Wo = (W + pl + pr - span_w) // sw + 1
    return dict(N=N, C=C, H=H, W=W, K=K, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw,
                pt=pt, pb=pb, pl=pl, pr=pr, Ho=Ho, Wo=Wo, layout=layout)


def _windows(x, g):
    """Strided view of every receptive field: (N, C, Ho, Wo, kh, kw) for NCHW,
    (N, Ho, Wo, C, kh, kw) for NHWC. The padded copy of x is the only copy made."""
    span_h = g["dh"] * (g["kh"] - 1) + 1
    span_w = g["dw"] * (g["kw"] - 1) + 1
    if g["layout"] == "NCHW":
        xp = np.pad(x, ((0, 0), (0, 0), (g["pt"], g["pb"]), (g["pl"], g["pr"])))
        v = sliding_window_view(xp, (span_h, span_w), axis=(2, 3))
        return v[:, :, ::g["sh"], ::g["sw"], ::g["dh"], ::g["dw"]][:, :, :g["Ho"], :g["Wo"]]
    xp = np.pad(x, ((0, 0), (g["pt"], g["pb"]), (g["pl"], g["pr"]), (0, 0)))
    v = sliding_window_view(xp, (span_h, span_w), axis=(1, 2))
    return v[:, ::g["sh"], ::g["sw"], :, ::g["dh"], ::g["dw"]][:, :g["Ho"], :g["Wo"]]


def _im2col(x, g):
    """NCHW: (N, C*kh*kw, Ho*Wo), rows (c, i, j). NHWC: (N*Ho*Wo, kh*kw*C), columns (i, j, c)."""
    v = _windows(x, g)
    N, C, kh, kw, Ho, Wo = g["N"], g["C"], g["kh"], g["kw"], g["Ho"], g["Wo"]
    if g["layout"] == "NCHW":
        # (N, C, kh, kw, Ho, Wo): the copy runs along output columns, the matmul below
        # then writes NCHW directly (no transpose of the result).
        return np.ascontiguousarray(v.transpose(0, 1, 4, 5, 2, 3)).reshape(N, C * kh * kw, Ho * Wo)
    return np.ascontiguousarray(v.transpose(0, 1, 2, 4, 5, 3)).reshape(N * Ho * Wo, kh * kw * C)


def _check_groups(groups):
    if groups != 1:
        raise NotImplementedError("the NumPy conv baseline covers groups=1 only")


def conv2d_forward(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                   layout="NCHW"):
    """NumPy conv2d: im2col by ``sliding_window_view``, then one (batched) matmul."""
    _check_groups(groups)
    g = conv_geometry(x.shape, weight.shape, stride, padding, dilation, layout)
    N, K, Ho, Wo = g["N"], g["K"], g["Ho"], g["Wo"]
    cols = _im2col(x, g)
    if layout == "NCHW":
        y = np.matmul(weight.reshape(K, -1), cols)           # (N, K, Ho*Wo)
        if bias is not None:
            y += bias[:, None]
        return y.reshape(N, K, Ho, Wo)
    y = cols @ weight.reshape(-1, K)                          # (N*Ho*Wo, K)
    if bias is not None:
        y += bias
    return y.reshape(N, Ho, Wo, K)


def conv2d_backward(grad_y, x, weight, *, stride=1, padding=0, dilation=1, groups=1,
                    layout="NCHW", bias=True):
    """NumPy conv2d gradients: (grad_x, grad_weight, grad_bias).

    grad_weight = grad_y x im2col(x)^T (one matmul); grad_x = col2im(W^T x grad_y),
    where col2im adds each of the kh*kw kernel offsets' strided slab into the padded
    gradient (one vectorised add per offset: within one offset the slices never
    overlap, so no ``np.add.at`` is needed).
    """
    _check_groups(groups)
    g = conv_geometry(x.shape, weight.shape, stride, padding, dilation, layout)
    N, C, H, W, K = g["N"], g["C"], g["H"], g["W"], g["K"]
    kh, kw, sh, sw, dh, dw = g["kh"], g["kw"], g["sh"], g["sw"], g["dh"], g["dw"]
    Ho, Wo, pt, pl = g["Ho"], g["Wo"], g["pt"], g["pl"]
    Hp, Wp = H + pt + g["pb"], W + pl + g["pr"]
    cols = _im2col(x, g)
    if layout == "NCHW":
        gy = grad_y.reshape(N, K, Ho * Wo)
        # Batched (K, P) x (P, CKK) products, then the sum over the batch.
        grad_w = np.matmul(gy, cols.transpose(0, 2, 1)).sum(axis=0).reshape(weight.shape)
        dcols = np.matmul(weight.reshape(K, -1).T, gy).reshape(N, C, kh, kw, Ho, Wo)
        gxp = np.zeros((N, C, Hp, Wp), dtype=dcols.dtype)
        for i in range(kh):
            for j in range(kw):
                gxp[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh,
                    j * dw:j * dw + sw * (Wo - 1) + 1:sw] += dcols[:, :, i, j]
        grad_x = np.ascontiguousarray(gxp[:, :, pt:pt + H, pl:pl + W])
        grad_b = grad_y.sum(axis=(0, 2, 3)) if bias else None
        return grad_x, grad_w, grad_b
    gy = grad_y.reshape(N * Ho * Wo, K)
    grad_w = (cols.T @ gy).reshape(weight.shape)
    dcols = (gy @ weight.reshape(-1, K).T).reshape(N, Ho, Wo, kh, kw, C)
    gxp = np.zeros((N, Hp, Wp, C), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            gxp[:, i * dh:i * dh + sh * (Ho - 1) + 1:sh,
                j * dw:j * dw + sw * (Wo - 1) + 1:sw, :] += dcols[:, :, :, i, j, :]
    grad_x = np.ascontiguousarray(gxp[:, pt:pt + H, pl:pl + W, :])
    grad_b = gy.sum(axis=0) if bias else None
    return grad_x, grad_w, grad_b


# ------------------------------------------------------------------ activations
def relu_backward(grad_y, x, out=None):
    """``grad_y * (x > 0)`` (a product: NaN in grad_y at blocked positions stays NaN,
    which fastnn's select does not do; the benchmark inputs hold no NaN)."""
    if out is None:
        return grad_y * (x > 0)
    return np.multiply(grad_y, x > 0, out=out)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` (overflows to 0 with a warning below -88 in float32)."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


def softmax(x):
    """Max-subtracted softmax over the last axis."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def softmax_backward(grad_y, y):
    """``y * (grad_y - sum(grad_y * y))`` over the last axis."""
    return y * (grad_y - np.sum(grad_y * y, axis=-1, keepdims=True))


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of class-index labels and its gradient, max-subtracted:
    (loss as a 0-d array, grad_logits)."""
    N = logits.shape[0]
    rows = np.arange(N)
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    loss = np.mean(np.log(s[:, 0]) - z[rows, labels])
    e /= s
    e[rows, labels] -= 1
    e *= logits.dtype.type(1.0 / N)
    return np.asarray(loss, dtype=logits.dtype), e


# ------------------------------------------------------------------ banded and masked weights
def band_mask(n_in, n_out, num_lower, num_upper):
    """Boolean (n_in, n_out) mask of ``tf.linalg.band_part``'s band."""
    i = np.arange(n_in)[:, None]
    j = np.arange(n_out)[None, :]
    return (i - j <= num_lower) & (j - i <= num_upper)


def masked_matmul(x, w, mask):
    """``x @ (w * mask)``: the dense product a NumPy user writes for masked weights."""
    return x @ (w * mask)


def masked_matmul_backward(grad_y, x, w, mask):
    """Dense-masked gradients: (grad_y @ (w * mask).T, (x.T @ grad_y) * mask, sum of grad_y)."""
    return grad_y @ (w * mask).T, (x.T @ grad_y) * mask, grad_y.sum(axis=0)


def locally_connected2d(x, weight, bias, kernel_size, padding):
    """NHWC locally connected layer, stride 1: patches by ``sliding_window_view`` of the
    zero-padded image, ordered (i, j, c), then one batched matmul over output pixels."""
    N, H, W, C = x.shape
    Ho, Wo, ckk, K = weight.shape
    kh, kw = kernel_size
    (pt, pb), (pl, pr) = padding
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    win = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, :Ho, :Wo]   # N, Ho, Wo, C, kh, kw
    cols = win.transpose(1, 2, 0, 4, 5, 3).reshape(Ho * Wo, N, ckk)
    y = np.matmul(cols, weight.reshape(Ho * Wo, ckk, K))                  # Ho*Wo, N, K
    return y.transpose(1, 0, 2).reshape(N, Ho, Wo, K) + bias


__all__ += ["band_mask", "masked_matmul", "masked_matmul_backward", "locally_connected2d"]
