"""Benchmark family "activations": relu_backward, sigmoid, softmax and softmax
cross-entropy, float32.

Contenders
----------
fastnn
    ``fastnn.relu_backward(g, x)`` (and with ``out=``), ``fastnn.sigmoid``,
    ``fastnn.softmax`` + ``softmax_backward``, ``fastnn.softmax_cross_entropy`` +
    ``softmax_cross_entropy_backward(1.0, ...)``.
numpy
    :mod:`fastnn._bench.baselines`: ``g * (x > 0)`` (``np.multiply(g, x > 0, out=o)``),
    ``1 / (1 + np.exp(-x))``, and the max-subtracted softmax / cross-entropy a careful
    NumPy user writes.
torch
    ``torch.ops.aten.threshold_backward`` (F.relu's backward; its ``grad_input=`` out
    variant with out=), ``torch.sigmoid``; softmax and ``F.cross_entropy`` forward plus
    ``torch.autograd.grad`` of the result -- the graph is built inside the timed call,
    as in a training step.

Rates: these kernels are memory-bound (or exp-bound), so each case counts the bytes
it must move at least and is rated in GB/s against the machine's copy ceiling.
relu_backward moves 12 bytes per element (read grad_y and x, write grad_x). sigmoid
moves 8. Softmax forward + backward moves 5 x 4 bytes per element (read x, write y;
read grad_y and y, write grad_x), cross-entropy forward + backward 3 x 4 (read the
logits twice, write the gradient).
"""
import numpy as np

from fastnn._bench import baselines
from fastnn._bench.harness import Case, Contender, call_contender

FAMILY = "activations"
DESCRIPTION = "relu_backward, sigmoid, softmax fwd+bwd, softmax cross-entropy fwd+bwd (float32)"

RELU_SIZES = [2 ** 12, 2 ** 16, 2 ** 20, 2 ** 24]
SIGMOID_SIZE = 2 ** 20
SOFTMAX_SHAPE = (256, 10000)
XENT_SHAPE = (256, 10000)
DTYPE = np.float32


def _log2(n):
    return n.bit_length() - 1


# ------------------------------------------------------------------ relu_backward
def _relu_backward_case(n, with_out):
    import fastnn

    def setup(rng):
        inp = {"g": rng.standard_normal(n, dtype=DTYPE), "x": rng.standard_normal(n, dtype=DTYPE)}
        if with_out:
            inp["out"] = np.empty(n, dtype=DTYPE)
        return inp

    def fastnn_make(inp):
        g, x, out = inp["g"], inp["x"], inp.get("out")
        if with_out:
            return lambda: fastnn.relu_backward(g, x, out=out)
        return lambda: fastnn.relu_backward(g, x)

    def numpy_make(inp):
        g, x, out = inp["g"], inp["x"], inp.get("out")
        if with_out:
            return lambda: baselines.relu_backward(g, x, out=out)
        return lambda: baselines.relu_backward(g, x)

    def torch_make(inp):
        torch = baselines.get_torch()
        g, x = torch.from_numpy(inp["g"]), torch.from_numpy(inp["x"])
        threshold_backward = torch.ops.aten.threshold_backward
        if with_out:
            out = torch.empty_like(g)
            grad_input = threshold_backward.grad_input
            return lambda: grad_input(g, x, 0, grad_input=out)
        return lambda: threshold_backward(g, x, 0)

    label = f"relu_backward n=2^{_log2(n)}" + (" out=" if with_out else "")
    return Case(
        name=label, family=FAMILY, setup=setup,
        contenders=[Contender("fastnn", fastnn_make), Contender("numpy", numpy_make),
                    Contender("torch", torch_make, requires="torch")],
        bytes=12.0 * n, dtype=np.dtype(DTYPE).name,
        params=dict(op="relu_backward", n=n, out=with_out, bytes_per_element=12),
    )


# ------------------------------------------------------------------ sigmoid
def _sigmoid_case(n, dtype=DTYPE):
    import fastnn

    def setup(rng):
        return {"x": (rng.standard_normal(n) * 4).astype(dtype)}

    def torch_make(inp):
        torch = baselines.get_torch()
        x = torch.from_numpy(inp["x"])
        return lambda: torch.sigmoid(x)

    return Case(
        name=f"sigmoid n=2^{_log2(n)}" + ("" if dtype == DTYPE else f" {np.dtype(dtype).name}"),
        family=FAMILY, setup=setup,
        contenders=[call_contender("fastnn", fastnn.sigmoid, ("x",)),
                    call_contender("numpy", baselines.sigmoid, ("x",)),
                    Contender("torch", torch_make, requires="torch")],
        bytes=2.0 * np.dtype(dtype).itemsize * n, dtype=np.dtype(dtype).name,
        params=dict(op="sigmoid", n=n, bytes_per_element=2 * np.dtype(dtype).itemsize),
    )


# ------------------------------------------------------------------ softmax
def _softmax_make(softmax, softmax_backward):
    """make(inputs) of a contender timing ``y = softmax(x)`` and its backward from y."""
    def make(inp):
        x, g = inp["x"], inp["g"]

        def fn():
            y = softmax(x)
            return y, softmax_backward(g, y)
        return fn
    return make


def _softmax_case(shape):
    import fastnn
    N, C = shape

    def setup(rng):
        return {"x": (rng.standard_normal(shape) * 3).astype(DTYPE),
                "g": rng.standard_normal(shape, dtype=DTYPE)}

    def torch_make(inp):
        torch = baselines.get_torch()
        x0, g = torch.from_numpy(inp["x"]), torch.from_numpy(inp["g"])

        def fn():
            with torch.enable_grad():
                x = x0.detach().requires_grad_()
                y = torch.softmax(x, -1)
                (gx,) = torch.autograd.grad(y, x, g)
            return y.detach(), gx
        return fn

    return Case(
        name=f"softmax fwd+bwd {N}x{C}", family=FAMILY, setup=setup,
        contenders=[Contender("fastnn", _softmax_make(fastnn.softmax, fastnn.softmax_backward)),
                    Contender("numpy", _softmax_make(baselines.softmax, baselines.softmax_backward)),
                    Contender("torch", torch_make, requires="torch")],
        bytes=20.0 * N * C, dtype=np.dtype(DTYPE).name,
        params=dict(op="softmax+softmax_backward", N=N, C=C, bytes_per_element=20),
    )


# ------------------------------------------------------------------ cross-entropy
def _xent_case(shape):
    import fastnn
    N, C = shape

    def setup(rng):
        return {"x": (rng.standard_normal(shape) * 3).astype(DTYPE),
                "labels": rng.integers(0, C, N)}

    def fastnn_make(inp):
        x, labels = inp["x"], inp["labels"]

        def fn():
            loss = fastnn.softmax_cross_entropy(x, labels)
            return loss, fastnn.softmax_cross_entropy_backward(1.0, x, labels)
        return fn

    def numpy_make(inp):
        x, labels = inp["x"], inp["labels"]
        return lambda: baselines.softmax_cross_entropy(x, labels)

    def torch_make(inp):
        torch = baselines.get_torch()
        x0, labels = torch.from_numpy(inp["x"]), torch.from_numpy(inp["labels"])
        F = torch.nn.functional

        def fn():
            with torch.enable_grad():
                x = x0.detach().requires_grad_()
                loss = F.cross_entropy(x, labels)
                (gx,) = torch.autograd.grad(loss, x)
            return loss.detach(), gx
        return fn

    return Case(
        name=f"softmax_cross_entropy fwd+bwd {N}x{C}", family=FAMILY, setup=setup,
        contenders=[Contender("fastnn", fastnn_make), Contender("numpy", numpy_make),
                    Contender("torch", torch_make, requires="torch")],
        bytes=12.0 * N * C, dtype=np.dtype(DTYPE).name,
        params=dict(op="softmax_cross_entropy+backward", N=N, C=C, reduction="mean",
                    bytes_per_element=12),
    )


def cases():
    """relu_backward by size (without, then with out=), sigmoid, softmax, cross-entropy,
    sigmoid in float64."""
    out = []
    for n in RELU_SIZES:
        out.append(_relu_backward_case(n, False))
        out.append(_relu_backward_case(n, True))
    out.append(_sigmoid_case(SIGMOID_SIZE))
    out.append(_softmax_case(SOFTMAX_SHAPE))
    out.append(_xent_case(XENT_SHAPE))
    out.append(_sigmoid_case(SIGMOID_SIZE, np.float64))   # float64, the NumPy API's default
    return out
