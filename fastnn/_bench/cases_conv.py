"""Benchmark family "conv": conv2d forward and backward, NCHW and NHWC, float32.

Contenders
----------
fastnn
    ``fastnn.conv2d`` / ``fastnn.conv2d_backward`` (grad_x, grad_weight, grad_bias).
numpy
    :mod:`fastnn._bench.baselines`: im2col by ``sliding_window_view`` + matmul;
    backward = matmuls + a col2im that adds one strided slab per kernel offset.
torch
    ``torch.nn.functional.conv2d`` under ``torch.no_grad()``; backward = only
    ``torch.autograd.grad(y, (x, w, b), grad_y, retain_graph=True)`` on a graph built
    once outside the timed region. NHWC runs on channels_last tensors (the input is a
    zero-copy view of the NHWC array; the HWIO weight is converted once, untimed, to
    torch's (K, C, kh, kw) in channels_last memory format).

FLOPs: forward ``2 * N * K * Ho * Wo * C * kh * kw`` (multiply-adds of the GEMM);
backward twice that (grad_x and grad_weight; the bias terms are not counted).
"""
import numpy as np

from fastnn._bench import baselines
from fastnn._bench.harness import Case, Contender, call_contender

FAMILY = "conv"
DESCRIPTION = "conv2d forward / backward (grad_x + grad_weight + grad_bias), NCHW and NHWC"

# The default shapes: (N, C, H, W, K, k, stride, padding).
SHAPES = [
    (1, 3, 224, 224, 64, 7, 2, 3),        # ResNet stem: few channels, big image, stride 2
    (8, 64, 56, 56, 64, 3, 1, 1),         # ResNet stage-1 3x3
    (32, 3, 64, 64, 8, 4, 1, "same"),     # even kernel: asymmetric TF "same" padding
    (1, 256, 14, 14, 256, 3, 1, 1),       # deep layer, tiny image, batch 1
    (64, 16, 32, 32, 32, 3, 1, 1),        # CIFAR-style, large batch
]
LAYOUTS = ("NCHW", "NHWC")
DTYPE = np.float32


def _shape_label(N, C, H, W, K, k, s, p):
    return f"N{N} C{C} {H}x{W} K{K} k{k} s{s} p{p}"


def _inputs(N, C, H, W, K, k, s, p, layout, backward, dtype=DTYPE):
    def setup(rng):
        # Random normal data (never zeros); weights scaled by 1/sqrt(fan_in) so that
        # outputs stay O(1), as in a trained network.
        fan_in = C * k * k
        if layout == "NCHW":
            x = rng.standard_normal((N, C, H, W), dtype=dtype)
            w = rng.standard_normal((K, C, k, k), dtype=dtype)
        else:
            x = rng.standard_normal((N, H, W, C), dtype=dtype)
            w = rng.standard_normal((k, k, C, K), dtype=dtype)
        w *= dtype(1.0 / np.sqrt(fan_in))
        b = rng.standard_normal(K, dtype=dtype)
        inputs = {"x": x, "w": w, "b": b}
        if backward:
            g = baselines.conv_geometry(x.shape, w.shape, s, p, 1, layout)
            gshape = (N, K, g["Ho"], g["Wo"]) if layout == "NCHW" else (N, g["Ho"], g["Wo"], K)
            inputs["gy"] = rng.standard_normal(gshape, dtype=dtype)
        return inputs
    return setup


# ------------------------------------------------------------------ torch peer
def _torch_padding(g):
    """What to give F.conv2d for our padding, and an F.pad tuple if it needs one.

    Asymmetric padding (TF "same" with an even kernel) is an explicit F.pad inside the
    timed call -- the zero-padded copy torch's own padding="same" would make anyway.
    """
    (pt, pb), (pl, pr) = (g["pt"], g["pb"]), (g["pl"], g["pr"])
    if pt == pb and pl == pr:
        return (pt, pl), None
    return 0, (pl, pr, pt, pb)


def _torch_tensors(inputs, layout, requires_grad):
    torch = baselines.get_torch()
    x, w, b = (torch.from_numpy(inputs[k]) for k in ("x", "w", "b"))
    if layout == "NHWC":
        x = x.permute(0, 3, 1, 2)                         # NHWC memory = channels_last view
        w = w.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    if requires_grad:
        x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    return torch, x, w, b


def _torch_forward(s, p, layout):
    def make(inputs):
        torch, x, w, b = _torch_tensors(inputs, layout, False)
        F = torch.nn.functional
        g = baselines.conv_geometry(inputs["x"].shape, inputs["w"].shape, s, p, 1, layout)
        tpad, prepad = _torch_padding(g)

        def fn():
            with torch.no_grad():
                xx = F.pad(x, prepad) if prepad else x
                return F.conv2d(xx, w, b, stride=s, padding=tpad)
        return fn

    def to_numpy(y):
        y = y.detach()
        return (y.permute(0, 2, 3, 1) if layout == "NHWC" else y).numpy()
    return make, to_numpy


def _torch_backward(s, p, layout):
    def make(inputs):
        torch, x, w, b = _torch_tensors(inputs, layout, True)
        F = torch.nn.functional
        g = baselines.conv_geometry(inputs["x"].shape, inputs["w"].shape, s, p, 1, layout)
        tpad, prepad = _torch_padding(g)
        gy = torch.from_numpy(inputs["gy"])
        if layout == "NHWC":
            gy = gy.permute(0, 3, 1, 2)
        with torch.enable_grad():
            xx = F.pad(x, prepad) if prepad else x
            y = F.conv2d(xx, w, b, stride=s, padding=tpad)   # the graph, built untimed
        autograd = torch.autograd

        def fn():
            return autograd.grad(y, (x, w, b), gy, retain_graph=True)
        return fn

    def to_numpy(res):
        gx, gw, gb = (t.detach() for t in res)
        if layout == "NHWC":
            gx, gw = gx.permute(0, 2, 3, 1), gw.permute(2, 3, 1, 0)
        return gx.numpy(), gw.numpy(), gb.numpy()
    return make, to_numpy


# ------------------------------------------------------------------ cases
def _case(shape, layout, backward, dtype=DTYPE):
    import fastnn
    N, C, H, W, K, k, s, p = shape
    g = baselines.conv_geometry((N, C, H, W), (K, C, k, k), s, p, 1, "NCHW")
    macs = N * K * g["Ho"] * g["Wo"] * C * k * k
    itemsize = np.dtype(dtype).itemsize
    n_x, n_w, n_y = N * C * H * W, K * C * k * k, N * K * g["Ho"] * g["Wo"]
    kw = dict(stride=s, padding=p, layout=layout)
    if backward:
        tmake, tconv = _torch_backward(s, p, layout)
        f, b, names = fastnn.conv2d_backward, baselines.conv2d_backward, ("gy", "x", "w")
        kw["bias"] = True
        moved = 2 * n_x + 2 * n_w + K + n_y
    else:
        tmake, tconv = _torch_forward(s, p, layout)
        f, b, names = fastnn.conv2d, baselines.conv2d_forward, ("x", "w", "b")
        moved = n_x + n_w + K + n_y
    op = "conv2d_backward" if backward else "conv2d"
    return Case(
        name=f"{'bwd' if backward else 'fwd'} {layout} {_shape_label(*shape)}"
             + ("" if dtype == DTYPE else f" {np.dtype(dtype).name}"), family=FAMILY,
        setup=_inputs(N, C, H, W, K, k, s, p, layout, backward=backward, dtype=dtype),
        contenders=[call_contender("fastnn", f, names, **kw),
                    call_contender("numpy", b, names, **kw),
                    Contender("torch", tmake, tconv, requires="torch")],
        flops=(4.0 if backward else 2.0) * macs,
        bytes=float(itemsize * moved),
        dtype=np.dtype(dtype).name,
        params=dict(op=op, direction="backward" if backward else "forward", layout=layout, N=N,
                    C=C, H=H, W=W, K=K, kernel_size=k, stride=s, padding=p, Ho=g["Ho"],
                    Wo=g["Wo"]),
    )


# The float64 rows (users of the NumPy API use float64 a lot): the stage-1 3x3 shape.
FLOAT64_SHAPES = [SHAPES[1]]


def cases():
    """All conv cases: forward then backward; per shape NCHW then NHWC; then float64."""
    out = [_case(shape, layout, backward) for backward in (False, True)
           for shape in SHAPES for layout in LAYOUTS]
    return out + [_case(shape, layout, backward, np.float64) for backward in (False, True)
                  for shape in FLOAT64_SHAPES for layout in LAYOUTS]
