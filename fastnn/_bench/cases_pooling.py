"""Benchmark family "pooling": max_pool2d forward and backward, avg_pool2d forward,
NCHW and NHWC, float32.

Contenders
----------
fastnn
    ``fastnn.max_pool2d`` (no indices), ``fastnn.max_pool2d_backward`` given the
    forward's indices (what a layer keeps), ``fastnn.avg_pool2d``.
numpy
    :mod:`fastnn._bench.baselines`: the reshape-max a NumPy user writes for
    non-overlapping windows, and its backward through a first-argmax mask.
torch
    ``F.max_pool2d`` / ``F.avg_pool2d`` under ``torch.no_grad()``; backward =
    ``torch.autograd.grad`` on a graph built once outside the timed region (it holds
    the indices). NHWC runs on channels_last tensors (zero-copy views of the arrays).

Rates: pooling is memory-bound; each case counts the bytes it must move (forward:
read x, write y; backward: read grad_y and the int64 indices, write grad_x) and is
rated against the machine's copy ceiling.
"""
import numpy as np

from fastnn._bench import baselines
from fastnn._bench.harness import Case, Contender, call_contender

FAMILY = "pooling"
DESCRIPTION = "max_pool2d forward / backward, avg_pool2d forward (float32)"

SHAPES = [(32, 64, 56, 56, 2)]          # (N, C, H, W, window = stride)
LAYOUTS = ("NCHW", "NHWC")
DTYPE = np.float32


def _setup(N, C, H, W, k, layout):
    def setup(rng):
        nhwc = layout == "NHWC"
        x = rng.standard_normal((N, H, W, C) if nhwc else (N, C, H, W), dtype=DTYPE)
        Ho, Wo = H // k, W // k
        gy = rng.standard_normal((N, Ho, Wo, C) if nhwc else (N, C, Ho, Wo), dtype=DTYPE)
        import fastnn
        _, idx = fastnn.max_pool2d(x, k, layout=layout, return_indices=True)
        return {"x": x, "gy": gy, "idx": idx}
    return setup


def _torch_make(op, k, layout, backward):
    def make(inputs):
        torch = baselines.get_torch()
        F = torch.nn.functional
        x, gy = torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["gy"])
        if layout == "NHWC":
            x, gy = x.permute(0, 3, 1, 2), gy.permute(0, 3, 1, 2)
        f = F.max_pool2d if op == "max" else F.avg_pool2d
        if not backward:
            def fn():
                with torch.no_grad():
                    return f(x, k)
            return fn
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            y = f(x, k)
        return lambda: torch.autograd.grad(y, x, gy, retain_graph=True)[0]

    def to_numpy(res):
        res = res.detach()
        return (res.permute(0, 2, 3, 1) if layout == "NHWC" else res).numpy()
    return make, to_numpy


def _case(shape, layout, op, backward):
    import fastnn
    N, C, H, W, k = shape
    n_x, n_y = N * C * H * W, N * C * (H // k) * (W // k)
    tmake, tconv = _torch_make(op, k, layout, backward)
    torch_c = Contender("torch", tmake, tconv, requires="torch")
    if backward:
        def fastnn_make(inp):
            return lambda: fastnn.max_pool2d_backward(inp["gy"], inp["x"], k, layout=layout,
                                                      indices=inp["idx"])

        def numpy_make(inp):
            return lambda: baselines.max_pool2d_backward(inp["gy"], inp["x"], k, layout)
        contenders = [Contender("fastnn", fastnn_make), Contender("numpy", numpy_make), torch_c]
        moved = 4 * n_y + 8 * n_y + 4 * n_x
    else:
        f = fastnn.max_pool2d if op == "max" else fastnn.avg_pool2d
        b = baselines.max_pool2d if op == "max" else baselines.avg_pool2d
        contenders = [call_contender("fastnn", f, ("x",), k, layout=layout),
                      call_contender("numpy", b, ("x",), k, layout), torch_c]
        moved = 4 * n_x + 4 * n_y
    return Case(
        name=f"{op}_pool2d {'bwd' if backward else 'fwd'} {layout} N{N} C{C} {H}x{W} k{k} s{k}",
        family=FAMILY, setup=_setup(N, C, H, W, k, layout),
        contenders=contenders, bytes=float(moved), dtype=np.dtype(DTYPE).name,
        params=dict(op=f"{op}_pool2d" + ("_backward" if backward else ""), layout=layout, N=N,
                    C=C, H=H, W=W, kernel_size=k, stride=k),
    )


def cases():
    """max forward, max backward, avg forward; per shape NCHW then NHWC."""
    return [_case(shape, layout, op, backward)
            for op, backward in (("max", False), ("max", True), ("avg", False))
            for shape in SHAPES for layout in LAYOUTS]
