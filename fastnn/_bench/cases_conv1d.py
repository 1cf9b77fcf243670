"""Benchmark family "conv1d": conv1d forward and backward, NCW and NWC, float32 and float64.

Contenders
----------
fastnn
    ``fastnn.conv1d`` / ``fastnn.conv1d_backward`` (grad_x, grad_weight, grad_bias).
numpy
    :mod:`fastnn._bench.baselines`: the im2col + matmul conv2d baseline on a height-1
    image (``sliding_window_view`` patches, one batched matmul).
torch
    ``torch.nn.functional.conv1d`` under ``torch.no_grad()``; backward =
    ``torch.autograd.grad`` on a graph built once outside the timed region. NWC is
    given to torch as the permuted (N, C, W) view of the NWC array, the (kw, C, K)
    weight converted once, untimed, to torch's (K, C, kw).

FLOPs: forward ``2 * N * K * Wo * C * kw``; backward twice that.
"""
import numpy as np

from fastnn._bench import baselines
from fastnn._bench.harness import Case, Contender, call_contender

FAMILY = "conv1d"
DESCRIPTION = "conv1d forward / backward (grad_x + grad_weight + grad_bias), NCW and NWC"

# (N, C, W, K, k, stride, padding)
SHAPES = [(16, 64, 1000, 64, 5, 1, 2)]
LAYOUTS = ("NCW", "NWC")
DTYPE = np.float32


def _setup(N, C, W, K, k, s, p, layout, dtype=DTYPE):
    Wo = (W + 2 * p - k) // s + 1

    def setup(rng):
        nwc = layout == "NWC"
        x = rng.standard_normal((N, W, C) if nwc else (N, C, W), dtype=dtype)
        w = rng.standard_normal((k, C, K) if nwc else (K, C, k), dtype=dtype)
        w *= dtype(1.0 / np.sqrt(C * k))
        return {"x": x, "w": w, "b": rng.standard_normal(K, dtype=dtype),
                "gy": rng.standard_normal((N, Wo, K) if nwc else (N, K, Wo), dtype=dtype)}
    return setup, Wo


def _torch_make(s, p, layout, backward):
    def make(inputs):
        torch = baselines.get_torch()
        F = torch.nn.functional
        x, w, b, gy = (torch.from_numpy(inputs[k]) for k in ("x", "w", "b", "gy"))
        if layout == "NWC":
            x, gy = x.permute(0, 2, 1), gy.permute(0, 2, 1)
            w = w.permute(2, 1, 0).contiguous()
        return baselines.torch_layer(lambda x, w, b: F.conv1d(x, w, b, stride=s, padding=p),
                                     x, w, b, gy, backward)

    axes = ((0, 2, 1), (2, 1, 0)) if layout == "NWC" else (None, None)
    return make, lambda res: baselines.torch_layer_to_numpy(res, backward, *axes)


def _case(shape, layout, backward, dtype=DTYPE):
    import fastnn
    N, C, W, K, k, s, p = shape
    setup, Wo = _setup(N, C, W, K, k, s, p, layout, dtype)
    macs = N * K * Wo * C * k
    f, b, names = ((fastnn.conv1d_backward, baselines.conv1d_backward, ("gy", "x", "w"))
                   if backward else (fastnn.conv1d, baselines.conv1d_forward, ("x", "w", "b")))
    kw = dict(stride=s, padding=p, layout=layout)
    tmake, tconv = _torch_make(s, p, layout, backward)
    n_x, n_w, n_y = N * C * W, K * C * k, N * K * Wo
    moved = (2 * n_x + 2 * n_w + K + n_y) if backward else (n_x + n_w + K + n_y)
    return Case(
        name=f"{'bwd' if backward else 'fwd'} {layout} N{N} C{C} W{W} K{K} k{k} s{s} p{p}"
             + ("" if dtype == DTYPE else f" {np.dtype(dtype).name}"),
        family=FAMILY, setup=setup,
        contenders=[call_contender("fastnn", f, names, **kw),
                    call_contender("numpy", b, names, **kw),
                    Contender("torch", tmake, tconv, requires="torch")],
        flops=(4.0 if backward else 2.0) * macs, bytes=float(np.dtype(dtype).itemsize * moved),
        dtype=np.dtype(dtype).name,
        params=dict(op="conv1d_backward" if backward else "conv1d", layout=layout, N=N, C=C,
                    W=W, K=K, kernel_size=k, stride=s, padding=p, Wo=Wo),
    )


def cases():
    """Forward then backward; per shape both layouts; then the float64 rows (users of the
    NumPy API use float64 a lot)."""
    out = [_case(shape, layout, backward) for backward in (False, True)
           for shape in SHAPES for layout in LAYOUTS]
    return out + [_case(shape, layout, backward, np.float64) for backward in (False, True)
                  for shape in SHAPES for layout in LAYOUTS]
