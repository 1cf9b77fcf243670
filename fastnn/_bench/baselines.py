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
    grad_w = _conv_weight_grad(grad_y, x, weight.shape, g)
    grad_x = _conv_input_grad(grad_y, weight, g)
    if not bias:
        return grad_x, grad_w, None
    return grad_x, grad_w, grad_y.sum(axis=(0, 2, 3) if layout == "NCHW" else (0, 1, 2))


def _conv_weight_grad(grad_y, x, w_shape, g):
    N, K, Ho, Wo = g["N"], g["K"], g["Ho"], g["Wo"]
    cols = _im2col(x, g)
    if g["layout"] == "NCHW":
        # Batched (K, P) x (P, CKK) products, then the sum over the batch.
        gy = grad_y.reshape(N, K, Ho * Wo)
        return np.matmul(gy, cols.transpose(0, 2, 1)).sum(axis=0).reshape(w_shape)
    return (cols.T @ grad_y.reshape(N * Ho * Wo, K)).reshape(w_shape)


def _conv_input_grad(grad_y, weight, g):
    N, C, H, W, K = g["N"], g["C"], g["H"], g["W"], g["K"]
    kh, kw, sh, sw, dh, dw = g["kh"], g["kw"], g["sh"], g["sw"], g["dh"], g["dw"]
    Ho, Wo, pt, pl = g["Ho"], g["Wo"], g["pt"], g["pl"]
    Hp, Wp = H + pt + g["pb"], W + pl + g["pr"]
    if g["layout"] == "NCHW":
        gy = grad_y.reshape(N, K, Ho * Wo)
        dcols = np.matmul(weight.reshape(K, -1).T, gy).reshape(N, C, kh, kw, Ho, Wo)
        gxp = np.zeros((N, C, Hp, Wp), dtype=dcols.dtype)
        for i in range(kh):
            for j in range(kw):
                gxp[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh,
                    j * dw:j * dw + sw * (Wo - 1) + 1:sw] += dcols[:, :, i, j]
        return np.ascontiguousarray(gxp[:, :, pt:pt + H, pl:pl + W])
    gy = grad_y.reshape(N * Ho * Wo, K)
    dcols = (gy @ weight.reshape(-1, K).T).reshape(N, Ho, Wo, kh, kw, C)
    gxp = np.zeros((N, Hp, Wp, C), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            gxp[:, i * dh:i * dh + sh * (Ho - 1) + 1:sh,
                j * dw:j * dw + sw * (Wo - 1) + 1:sw, :] += dcols[:, :, :, i, j, :]
    return np.ascontiguousarray(gxp[:, pt:pt + H, pl:pl + W, :])


# ------------------------------------------------------------------ conv1d, conv_transpose2d
def _height_one(a, layout):
    """A 1-D (NCW / NWC) array as the height-1 image of the 2-D baselines."""
    return a[:, None] if layout == "NWC" else a[:, :, None]


def conv1d_forward(x, weight, bias=None, *, stride=1, padding=0, layout="NCW"):
    """NumPy conv1d: the conv2d baseline on a height-1 image."""
    layout2d = "NHWC" if layout == "NWC" else "NCHW"
    y = conv2d_forward(_height_one(x, layout), weight[None] if layout == "NWC" else weight[:, :, None],
                       bias, stride=(1, stride), padding=((0, 0), (padding, padding)),
                       layout=layout2d)
    return y[:, 0] if layout == "NWC" else y[:, :, 0]


def conv1d_backward(grad_y, x, weight, *, stride=1, padding=0, layout="NCW"):
    """NumPy conv1d gradients (grad_x, grad_weight, grad_bias), via the 2-D baseline."""
    nwc = layout == "NWC"
    gx, gw, gb = conv2d_backward(_height_one(grad_y, layout), _height_one(x, layout),
                                 weight[None] if nwc else weight[:, :, None],
                                 stride=(1, stride), padding=((0, 0), (padding, padding)),
                                 layout="NHWC" if nwc else "NCHW")
    return (gx[:, 0], gw[0], gb) if nwc else (gx[:, :, 0], gw[:, :, 0], gb)


def _transpose_geometry(x_shape, w_shape, stride, padding, layout):
    """The geometry of the conv2d whose input gradient conv_transpose2d is (output
    padding 0): its input is the transposed convolution's output."""
    if layout == "NCHW":
        N, _, H, W = x_shape
        _, cog, kh, kw = w_shape
    else:
        N, H, W, _ = x_shape
        kh, kw, cog, _ = w_shape
    Ho, Wo = (H - 1) * stride - 2 * padding + kh, (W - 1) * stride - 2 * padding + kw
    y_shape = (N, cog, Ho, Wo) if layout == "NCHW" else (N, Ho, Wo, cog)
    return conv_geometry(y_shape, w_shape, stride, padding, 1, layout)


def conv_transpose2d(x, weight, bias=None, *, stride=1, padding=0, layout="NCHW"):
    """NumPy transposed convolution (groups 1): W^T x x, then col2im."""
    g = _transpose_geometry(x.shape, weight.shape, stride, padding, layout)
    y = _conv_input_grad(x, weight, g)
    if bias is not None:
        y += bias[:, None, None] if layout == "NCHW" else bias
    return y


def conv_transpose2d_backward(grad_y, x, weight, *, stride=1, padding=0, layout="NCHW"):
    """NumPy gradients of :func:`conv_transpose2d`: grad_x is conv2d of grad_y, grad_weight
    that convolution's weight gradient with x in the role of its output gradient."""
    g = _transpose_geometry(x.shape, weight.shape, stride, padding, layout)
    grad_x = conv2d_forward(grad_y, weight, stride=stride, padding=padding, layout=layout)
    grad_w = _conv_weight_grad(x, grad_y, weight.shape, g)
    return grad_x, grad_w, grad_y.sum(axis=(0, 2, 3) if layout == "NCHW" else (0, 1, 2))


def torch_layer(op, x, w, b, grad_y, backward):
    """A timed callable for the torch peer of a layer: ``op(x, w, b)`` under
    ``no_grad``, or (backward) ``autograd.grad`` of that op's graph, built here, once,
    outside the timed region, for ``grad_y``."""
    torch = get_torch()
    if not backward:
        def fn():
            with torch.no_grad():
                return op(x, w, b)
        return fn
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    with torch.enable_grad():
        y = op(x, w, b)
    return lambda: torch.autograd.grad(y, (x, w, b), grad_y, retain_graph=True)


def torch_layer_to_numpy(res, backward, x_axes=None, w_axes=None):
    """NumPy arrays of :func:`torch_layer`'s result; ``*_axes`` permute torch's layout
    back to the case's (y and grad_x use ``x_axes``)."""
    if not backward:
        y = res.detach()
        return (y.permute(*x_axes) if x_axes else y).numpy()
    gx, gw, gb = (t.detach() for t in res)
    if x_axes:
        gx, gw = gx.permute(*x_axes), gw.permute(*w_axes)
    return gx.numpy(), gw.numpy(), gb.numpy()


# ------------------------------------------------------------------ pooling
def _windows_view(x, k, layout):
    """Non-overlapping k x k windows as two extra axes: (N, C, Ho, k, Wo, k) for NCHW,
    (N, Ho, k, Wo, k, C) for NHWC (a reshape, no copy)."""
    if layout == "NCHW":
        N, C, H, W = x.shape
        return x[:, :, :H // k * k, :W // k * k].reshape(N, C, H // k, k, W // k, k), (3, 5)
    N, H, W, C = x.shape
    return x[:, :H // k * k, :W // k * k].reshape(N, H // k, k, W // k, k, C), (2, 4)


def max_pool2d(x, k, layout="NCHW"):
    """NumPy max pooling, window = stride = k: the reshape-max."""
    v, axes = _windows_view(x, k, layout)
    return v.max(axis=axes)


def avg_pool2d(x, k, layout="NCHW"):
    """NumPy average pooling, window = stride = k (no padding, so every count is k*k)."""
    v, axes = _windows_view(x, k, layout)
    return v.mean(axis=axes, dtype=x.dtype)


def max_pool2d_backward(grad_y, x, k, layout="NCHW"):
    """NumPy max-pool gradient: grad_y broadcast over each window, kept at its first
    maximum (the mask of x == max, minus later duplicates, via a cumulative sum)."""
    v, axes = _windows_view(x, k, layout)
    y = np.expand_dims(v.max(axis=axes), axes)
    hit = v == y
    if layout == "NCHW":
        flat = hit.transpose(0, 1, 2, 4, 3, 5).reshape(hit.shape[:3] + (hit.shape[4], k * k))
        first = flat & (np.cumsum(flat, axis=-1) == 1)
        first = first.reshape(hit.shape[:3] + (hit.shape[4], k, k)).transpose(0, 1, 2, 4, 3, 5)
    else:
        flat = hit.transpose(0, 1, 3, 5, 2, 4).reshape(hit.shape[:2] + (hit.shape[3], hit.shape[5], k * k))
        first = flat & (np.cumsum(flat, axis=-1) == 1)
        first = first.reshape(hit.shape[:2] + (hit.shape[3], hit.shape[5], k, k)).transpose(0, 1, 4, 2, 5, 3)
    gx = np.zeros_like(x)
    gv, _ = _windows_view(gx, k, layout)
    gv[...] = first * np.expand_dims(grad_y, axes)
    return gx


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


# ------------------------------------------------------------------ recurrent
# TensorFlow BasicLSTMCell layout: kernel (I + H, 4H) over [x, h], gate blocks (i, j, f, o).
def _lstm_gates(z, H, forget_bias):
    si = sigmoid(z[:, :H])
    tj = np.tanh(z[:, H:2 * H])
    sf = sigmoid(z[:, 2 * H:3 * H] + forget_bias)
    so = sigmoid(z[:, 3 * H:])
    return si, tj, sf, so


def lstm_cell(x, h, c, kernel, bias, forget_bias=0.0):
    """One step: two products into the gate matrix (no concatenation of x and h), then
    the gate nonlinearities as whole-array NumPy operations."""
    I, H = x.shape[1], h.shape[1]
    z = x @ kernel[:I]
    z += h @ kernel[I:]
    z += bias
    si, tj, sf, so = _lstm_gates(z, H, forget_bias)
    c_new = c * sf + si * tj
    return np.tanh(c_new) * so, c_new


def _lstm_projection(x, h0, kernel, bias):
    """(B, T, I, H, the input projection of all steps as one product (B, T, 4H), an
    empty (B, T, H) output) for batch-major x."""
    B, T, I = x.shape
    H = h0.shape[1]
    zx = (x.reshape(B * T, I) @ kernel[:I]).reshape(B, T, 4 * H) + bias
    return B, T, I, H, zx, np.empty((B, T, H), dtype=x.dtype)


def lstm_forward(x, h0, c0, kernel, bias, forget_bias=0.0):
    """Batch-major x (B, T, I): the input projection of all steps as one product, then
    one recurrent product and the gate update per step. Returns (outputs, h_T, c_T)."""
    B, T, I, H, zx, out = _lstm_projection(x, h0, kernel, bias)
    wh = kernel[I:]
    h, c = h0, c0
    for t in range(T):
        si, tj, sf, so = _lstm_gates(zx[:, t] + h @ wh, H, forget_bias)
        c = c * sf + si * tj
        h = np.tanh(c) * so
        out[:, t] = h
    return out, h, c


def lstm_forward_backward(x, h0, c0, kernel, bias, grad_out, forget_bias=0.0):
    """Forward keeping the gates, then backpropagation through time with the gate
    gradients of all steps stacked, so that the kernel, bias and input gradients are one
    product each. Returns (outputs, grad_x, grad_kernel, grad_bias)."""
    B, T, I, H, zx, out = _lstm_projection(x, h0, kernel, bias)
    wh = kernel[I:]
    h, c = h0, c0
    hprev = np.empty((B, T, H), dtype=x.dtype)
    saved = []
    for t in range(T):
        hprev[:, t] = h
        si, tj, sf, so = _lstm_gates(zx[:, t] + h @ wh, H, forget_bias)
        c_prev = c
        c = c * sf + si * tj
        tc = np.tanh(c)
        h = tc * so
        out[:, t] = h
        saved.append((si, tj, sf, so, tc, c_prev))
    dz = np.empty((B, T, 4 * H), dtype=x.dtype)
    dh = np.zeros((B, H), dtype=x.dtype)
    dc = np.zeros((B, H), dtype=x.dtype)
    for t in range(T - 1, -1, -1):
        si, tj, sf, so, tc, c_prev = saved[t]
        d = grad_out[:, t] + dh
        dc = dc + d * so * (1 - tc * tc)
        dz[:, t, :H] = dc * tj * si * (1 - si)
        dz[:, t, H:2 * H] = dc * si * (1 - tj * tj)
        dz[:, t, 2 * H:3 * H] = dc * c_prev * sf * (1 - sf)
        dz[:, t, 3 * H:] = d * tc * so * (1 - so)
        dc = dc * sf
        dh = dz[:, t] @ wh.T
    dz2 = dz.reshape(B * T, 4 * H)
    grad_kernel = np.concatenate([x.reshape(B * T, I).T @ dz2, hprev.reshape(B * T, H).T @ dz2])
    grad_x = (dz2 @ kernel[:I].T).reshape(B, T, I)
    return out, grad_x, grad_kernel, dz2.sum(axis=0)


__all__ += ["lstm_cell", "lstm_forward", "lstm_forward_backward"]
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
