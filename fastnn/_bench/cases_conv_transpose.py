"""Benchmark family "conv_transpose": conv_transpose2d forward and backward, NCHW and
NHWC, float32 and float64.

Contenders
----------
fastnn
    ``fastnn.conv_transpose2d`` / ``fastnn.conv_transpose2d_backward``.
numpy
    :mod:`fastnn._bench.baselines`: ``W^T x`` as one matmul, then a col2im that adds
    one strided slab per kernel offset; backward = the im2col conv2d baseline
    (grad_x) and one matmul against im2col(grad_y) (grad_weight).
torch
    ``torch.nn.functional.conv_transpose2d`` under ``torch.no_grad()``; backward =
    ``torch.autograd.grad`` on a graph built once outside the timed region. NHWC runs
    on channels_last tensors (zero-copy views of the NHWC arrays; the weight
    converted once, untimed).

FLOPs: ``2 * N * C_in * H * W * C_out * kh * kw`` forward; backward twice that.
"""
import numpy as np

from fastnn._bench import baselines
from fastnn._bench.harness import Case, Contender, call_contender

FAMILY = "conv_transpose"
DESCRIPTION = "conv_transpose2d forward / backward, NCHW and NHWC"

# (N, C_in, H, W, C_out, k, stride, padding): the DCGAN-style 2x upsampling layer.
SHAPES = [(8, 64, 28, 28, 32, 4, 2, 1)]
LAYOUTS = ("NCHW", "NHWC")
DTYPE = np.float32


def _setup(N, C, H, W, K, k, s, p, layout, dtype=DTYPE):
    Ho, Wo = (H - 1) * s - 2 * p + k, (W - 1) * s - 2 * p + k

    def setup(rng):
        nhwc = layout == "NHWC"
        x = rng.standard_normal((N, H, W, C) if nhwc else (N, C, H, W), dtype=dtype)
        w = rng.standard_normal((k, k, K, C) if nhwc else (C, K, k, k), dtype=dtype)
        w *= dtype(1.0 / np.sqrt(C * k * k))
        return {"x": x, "w": w, "b": rng.standard_normal(K, dtype=dtype),
                "gy": rng.standard_normal((N, Ho, Wo, K) if nhwc else (N, K, Ho, Wo), dtype=dtype)}
    return setup, Ho, Wo


def _torch_make(s, p, layout, backward):
    def make(inputs):
        torch = baselines.get_torch()
        F = torch.nn.functional
        x, w, b, gy = (torch.from_numpy(inputs[k]) for k in ("x", "w", "b", "gy"))
        if layout == "NHWC":
            x, gy = x.permute(0, 3, 1, 2), gy.permute(0, 3, 1, 2)
            w = w.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        return baselines.torch_layer(lambda x, w, b: F.conv_transpose2d(x, w, b, stride=s, padding=p),
                                     x, w, b, gy, backward)

    axes = ((0, 2, 3, 1), (2, 3, 1, 0)) if layout == "NHWC" else (None, None)
    return make, lambda res: baselines.torch_layer_to_numpy(res, backward, *axes)


def _case(shape, layout, backward, dtype=DTYPE):
    import fastnn
    N, C, H, W, K, k, s, p = shape
    setup, Ho, Wo = _setup(N, C, H, W, K, k, s, p, layout, dtype)
    macs = N * C * H * W * K * k * k
    f, b, names = ((fastnn.conv_transpose2d_backward, baselines.conv_transpose2d_backward,
                    ("gy", "x", "w")) if backward else
                   (fastnn.conv_transpose2d, baselines.conv_transpose2d, ("x", "w", "b")))
    kw = dict(stride=s, padding=p, layout=layout)
    tmake, tconv = _torch_make(s, p, layout, backward)
    n_x, n_w, n_y = N * C * H * W, K * C * k * k, N * K * Ho * Wo
    moved = (2 * n_x + 2 * n_w + K + n_y) if backward else (n_x + n_w + K + n_y)
    return Case(
        name=f"{'bwd' if backward else 'fwd'} {layout} N{N} C{C} {H}x{W} K{K} k{k} s{s} p{p}"
             + ("" if dtype == DTYPE else f" {np.dtype(dtype).name}"),
        family=FAMILY, setup=setup,
        contenders=[call_contender("fastnn", f, names, **kw),
                    call_contender("numpy", b, names, **kw),
                    Contender("torch", tmake, tconv, requires="torch")],
        flops=(4.0 if backward else 2.0) * macs, bytes=float(np.dtype(dtype).itemsize * moved),
        dtype=np.dtype(dtype).name,
        params=dict(op="conv_transpose2d_backward" if backward else "conv_transpose2d",
                    layout=layout, N=N, C_in=C, H=H, W=W, C_out=K, kernel_size=k, stride=s,
                    padding=p, Ho=Ho, Wo=Wo),
    )


def cases():
    """Forward then backward; per shape both layouts; then the float64 rows (users of the
    NumPy API use float64 a lot)."""
    out = [_case(shape, layout, backward) for backward in (False, True)
           for shape in SHAPES for layout in LAYOUTS]
    return out + [_case(shape, layout, backward, np.float64) for backward in (False, True)
                  for shape in SHAPES for layout in LAYOUTS]
