"""Benchmark family "adapters": what the PyTorch adapter (:mod:`fastnn.torch`) costs per
call over the raw kernel, on inputs small enough that the overhead shows, a swapped
model's training step against native PyTorch, and a jitted :mod:`fastnn.jax` call
against the raw kernel. float32.

Contenders (the table's columns; note the "numpy" column's meaning here)
-----------------------------------------------------------------------
fastnn
    The adapter: ``fastnn.torch.relu(t)``, ``fastnn.torch.conv2d(t, w, b, padding=1)``
    on torch tensors (forward under ``torch.no_grad()``; "fwd+bwd" builds the graph and
    calls ``torch.autograd.grad`` inside the timed call), and for the training step the
    model after :func:`fastnn.torch.swap`.
numpy
    The raw fastnn kernel on the NumPy views of the same tensors (``fastnn.relu(a)``,
    ``fastnn.conv2d(a, w, b, padding=1)``, and for "fwd+bwd" the forward plus the
    ``*_backward`` kernel) -- no torch in between. It is the reference the results are
    checked against, and ``x numpy`` = raw time / adapter time, so 1 - x numpy is the
    adapter's share; the per-call overhead in microseconds is the difference of the
    two medians.
torch
    PyTorch's own operator on the same tensors (``torch.relu``, ``F.conv2d``), and the
    native model's training step.

The training step (``zero_grad``, forward, cross-entropy, backward, SGD step) is
LeNet-sized: conv 3x3 (1 -> 8), relu, max-pool 2, conv 3x3 (8 -> 16), relu, max-pool 2,
linear (64 -> 10), on a batch of 32 8x8 images (scikit-learn's digits, where every op
is small enough that the per-call cost decides), and the same with 16 and 32 channels
on a batch of 64 28x28 images (MNIST-sized, where the kernels do); both models start
from the same weights, and the first step's losses must agree (the reference is torch
there).
"""
import numpy as np

from fastnn._bench import baselines
from fastnn._bench.harness import Case, Contender

FAMILY = "adapters"
DESCRIPTION = ("fastnn.torch per-call overhead over the raw kernel (relu, conv2d; fwd and "
               "fwd+bwd) and a swapped CNN's training step vs torch (float32)")

DTYPE = np.float32
RELU_N = 1000
CONV = (1, 3, 8, 8, 4, 3)          # N, C, H, W, K, k (padding k // 2)
TRAIN_BATCH = 32


def _relu_case(backward):
    import fastnn
    n = RELU_N

    def setup(rng):
        return {"x": rng.standard_normal(n, dtype=DTYPE), "gy": rng.standard_normal(n, dtype=DTYPE)}

    def raw_make(inp):
        x, gy = inp["x"], inp["gy"]
        if not backward:
            return lambda: fastnn.relu(x)

        def fn():
            y = fastnn.relu(x)
            return y, fastnn.relu_backward(gy, y)
        return fn

    def adapter_make(inp, native=False):
        torch = baselines.get_torch()
        import fastnn.torch as ft
        f = torch.relu if native else ft.relu
        x, gy = torch.from_numpy(inp["x"]), torch.from_numpy(inp["gy"])
        if not backward:
            def fn():
                with torch.no_grad():
                    return f(x)
            return fn
        xg = x.clone().requires_grad_()

        def fn():
            y = f(xg)
            return y, torch.autograd.grad(y, xg, gy)[0]
        return fn

    return Case(
        name=f"relu {'fwd+bwd' if backward else 'fwd'} n={n}", family=FAMILY, setup=setup,
        contenders=[Contender("fastnn", adapter_make, requires="torch"),
                    Contender("numpy", raw_make),
                    Contender("torch", lambda inp: adapter_make(inp, native=True),
                              requires="torch")],
        bytes=float(4 * n * (5 if backward else 2)), dtype=np.dtype(DTYPE).name,
        params=dict(op="relu" + ("_backward" if backward else ""), n=n, what="overhead"))


def _conv_case(backward):
    import fastnn
    N, C, H, W, K, k = CONV
    p = k // 2

    def setup(rng):
        return {"x": rng.standard_normal((N, C, H, W), dtype=DTYPE),
                "w": rng.standard_normal((K, C, k, k), dtype=DTYPE),
                "b": rng.standard_normal(K, dtype=DTYPE),
                "gy": rng.standard_normal((N, K, H, W), dtype=DTYPE)}

    def raw_make(inp):
        x, w, b, gy = inp["x"], inp["w"], inp["b"], inp["gy"]
        if not backward:
            return lambda: fastnn.conv2d(x, w, b, padding=p)

        def fn():
            y = fastnn.conv2d(x, w, b, padding=p)
            return (y,) + tuple(fastnn.conv2d_backward(gy, x, w, padding=p, bias=True))
        return fn

    def adapter_make(inp, native=False):
        torch = baselines.get_torch()
        import fastnn.torch as ft
        f = torch.nn.functional.conv2d if native else ft.conv2d
        x, w, b, gy = (torch.from_numpy(inp[n]) for n in ("x", "w", "b", "gy"))
        if not backward:
            def fn():
                with torch.no_grad():
                    return f(x, w, b, padding=p)
            return fn
        x, w, b = (t.clone().requires_grad_() for t in (x, w, b))

        def fn():
            y = f(x, w, b, padding=p)
            return (y,) + torch.autograd.grad(y, (x, w, b), gy)
        return fn

    flops = 2.0 * N * K * C * k * k * H * W * (3 if backward else 1)
    return Case(
        name=f"conv2d {'fwd+bwd' if backward else 'fwd'} N{N} C{C} {H}x{W} K{K} k{k}",
        family=FAMILY, setup=setup,
        contenders=[Contender("fastnn", adapter_make, requires="torch"),
                    Contender("numpy", raw_make),
                    Contender("torch", lambda inp: adapter_make(inp, native=True),
                              requires="torch")],
        flops=flops, dtype=np.dtype(DTYPE).name,
        params=dict(op="conv2d" + ("_backward" if backward else ""), N=N, C=C, H=H, W=W, K=K,
                    kernel_size=k, what="overhead"))


def _train_case(batch=TRAIN_BATCH, size=8, channels=(8, 16)):
    c1, c2 = channels

    def setup(rng):
        return {"x": rng.standard_normal((batch, 1, size, size), dtype=DTYPE),
                "y": rng.integers(0, 10, batch).astype(np.int64)}

    def model():
        torch = baselines.get_torch()
        nn = torch.nn
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(c2 * (size // 4) ** 2, 10))

    def make(inp, swapped):
        torch = baselines.get_torch()
        net = model()
        if swapped:
            import fastnn.torch as ft
            net = ft.swap(net, inplace=True)
        loss_fn = torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        x, y = torch.from_numpy(inp["x"]), torch.from_numpy(inp["y"])

        def step():
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            return loss.detach()
        return step

    return Case(
        name=f"swapped CNN train step batch {batch} {size}x{size}"
             + ("" if channels == (8, 16) else f" C{c1}/{c2}"), family=FAMILY, setup=setup,
        contenders=[Contender("fastnn", lambda inp: make(inp, True), requires="torch"),
                    Contender("torch", lambda inp: make(inp, False), requires="torch")],
        reference="torch", dtype=np.dtype(DTYPE).name,
        params=dict(op="train_step", batch=batch, size=size, channels=list(channels),
                    what="swap"))


def _jax_relu_case():
    """fastnn.jax's per-call cost: a jitted ``fastnn.jax.relu`` (a ``pure_callback``
    into the kernel) against the raw kernel on the same 1000 floats; no PyTorch
    column."""
    import fastnn
    n = RELU_N

    def setup(rng):
        return {"x": rng.standard_normal(n, dtype=DTYPE)}

    def jax_make(inp):
        import jax
        import fastnn.jax as fj
        f = jax.jit(fj.relu)
        x = jax.numpy.asarray(inp["x"])
        f(x).block_until_ready()
        return lambda: f(x).block_until_ready()

    return Case(
        name=f"jax relu fwd n={n} (jit)", family=FAMILY, setup=setup,
        contenders=[Contender("fastnn", jax_make, to_numpy=np.asarray, requires="jax"),
                    Contender("numpy", lambda inp: (lambda: fastnn.relu(inp["x"])))],
        bytes=float(4 * n * 2), dtype=np.dtype(DTYPE).name,
        params=dict(op="relu", n=n, what="overhead", adapter="jax"))


def cases():
    """relu and conv2d overhead (forward, forward + backward), the training step, then
    fastnn.jax's relu. Without PyTorch the torch cases are left out, without JAX the
    jax one."""
    import importlib.util
    out = []
    if baselines.get_torch() is not None:
        out += [_relu_case(False), _relu_case(True), _conv_case(False), _conv_case(True),
                _train_case(), _train_case(64, 28, (16, 32))]
    if importlib.util.find_spec("jax") is not None:
        out.append(_jax_relu_case())
    return out
