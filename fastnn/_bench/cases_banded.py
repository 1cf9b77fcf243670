"""Benchmark family "banded": banded_matmul (forward and backward), masked_matmul and a
locally connected layer, float32.

Contenders
----------
fastnn
    ``fastnn.banded_matmul`` / ``banded_matmul_backward`` on the dense w and the band,
    ``fastnn.masked_matmul`` with the boolean mask as given (indexed on every call) or
    prepared once by ``fastnn.prepare_mask`` (outside the timed call, as a training
    loop with a fixed mask would), ``fastnn.locally_connected2d``.
numpy
    :mod:`fastnn._bench.baselines`: the dense-masked product ``x @ (w * mask)`` (and its
    dense gradients), the sliding-window locally connected layer.
torch
    ``x @ (w * mask)`` on tensors (backward: the same dense formulas), and for the
    locally connected layer ``F.unfold`` + a batched matmul.

Rates: every case counts the useful work -- 2 flops per kept weight per batch row (the
band's or the mask's non-zeros, two products for a backward) -- so GFLOP/s shows how
well the band is used, not the dense product's flops. The forward banded cases over
n = 1024, 2048, 4096 at band (8, 8) show the time growing linearly in n.
"""
import numpy as np

from fastnn._bench import baselines
from fastnn._bench.harness import Case, Contender, call_contender

FAMILY = "banded"
DESCRIPTION = "banded_matmul fwd/bwd, masked_matmul, locally_connected2d (float32)"
DTYPE = np.float32

# (batch, n, num_lower, num_upper)
BANDED = [(64, 1024, 1, 1), (64, 1024, 8, 8), (64, 2048, 8, 8), (64, 4096, 8, 8),
          (256, 4096, 32, 32), (1, 4096, 3, 3), (128, 2048, 256, 256)]
BANDED_BACKWARD = [(64, 4096, 8, 8), (128, 2048, 256, 256)]
# (batch, n, density, mask given as a fastnn.prepare_mask result)
MASKED = [(64, 2048, 0.01, True), (64, 2048, 0.01, False), (64, 2048, 0.30, False)]
LOCAL = (32, 16, 16, 32, 32, 3)    # N, H, W, C, K, k ("same", stride 1)


def _band_count(n, lower, upper):
    return int(baselines.band_mask(n, n, lower, upper).sum())


def _banded_case(B, n, lower, upper, backward):
    import fastnn

    def setup(rng):
        inp = {"x": rng.standard_normal((B, n), dtype=DTYPE),
               "w": rng.standard_normal((n, n), dtype=DTYPE),
               "mask": baselines.band_mask(n, n, lower, upper)}
        if backward:
            inp["g"] = rng.standard_normal((B, n), dtype=DTYPE)
        return inp

    if backward:
        fastnn_c = call_contender("fastnn", fastnn.banded_matmul_backward, ("g", "x", "w"),
                                  lower, upper)
        numpy_c = call_contender("numpy", baselines.masked_matmul_backward,
                                 ("g", "x", "w", "mask"))
    else:
        fastnn_c = call_contender("fastnn", fastnn.banded_matmul, ("x", "w"), lower, upper)
        numpy_c = call_contender("numpy", baselines.masked_matmul, ("x", "w", "mask"))

    kind = "bwd" if backward else "fwd"
    return Case(
        name=f"banded {kind} B{B} n{n} band({lower},{upper})", family=FAMILY, setup=setup,
        contenders=[fastnn_c, numpy_c,
                    Contender("torch", _torch_masked(backward), requires="torch")],
        flops=(2.0 if backward else 1.0) * 2.0 * B * _band_count(n, lower, upper),
        dtype=np.dtype(DTYPE).name,
        params=dict(op=f"banded_matmul {kind}", batch=B, n=n, num_lower=lower, num_upper=upper),
    )


def _torch_masked(backward):
    def make(inp):
        torch = baselines.get_torch()
        x, w = torch.from_numpy(inp["x"]), torch.from_numpy(inp["w"])
        m = torch.from_numpy(inp["mask"]).to(x.dtype)
        if not backward:
            return lambda: x @ (w * m)
        g = torch.from_numpy(inp["g"])
        return lambda: (g @ (w * m).T, (x.T @ g) * m, g.sum(0))
    return make


def _masked_case(B, n, density, prepared):
    import fastnn

    def setup(rng):
        return {"x": rng.standard_normal((B, n), dtype=DTYPE),
                "w": rng.standard_normal((n, n), dtype=DTYPE),
                "mask": rng.random((n, n)) < density}

    def fastnn_make(inp):
        x, w, m = inp["x"], inp["w"], inp["mask"]
        if prepared:     # the mask is fixed while the weights train: index it once
            m = fastnn.prepare_mask(m)
        return lambda: fastnn.masked_matmul(x, w, m)

    how = "prepared mask" if prepared else "mask array"
    return Case(
        name=f"masked fwd B{B} {n}x{n} density {density:.0%} {how}", family=FAMILY, setup=setup,
        contenders=[Contender("fastnn", fastnn_make),
                    call_contender("numpy", baselines.masked_matmul, ("x", "w", "mask")),
                    Contender("torch", _torch_masked(False), requires="torch")],
        flops=2.0 * B * n * n * density, dtype=np.dtype(DTYPE).name,
        params=dict(op="masked_matmul", batch=B, n=n, density=density, prepared=prepared),
    )


def _local_case():
    import fastnn
    N, H, W, C, K, k = LOCAL
    pads = ((k - 1) // 2, k // 2)

    def setup(rng):
        return {"x": rng.standard_normal((N, H, W, C), dtype=DTYPE),
                "w": (rng.standard_normal((H, W, k * k * C, K)) / k).astype(DTYPE),
                "b": rng.standard_normal((H, W, K), dtype=DTYPE)}

    def fastnn_make(inp):
        x, w, b = inp["x"], inp["w"], inp["b"]
        return lambda: fastnn.locally_connected2d(x, w, b, kernel_size=k, padding="same")

    def numpy_make(inp):
        x, w, b = inp["x"], inp["w"], inp["b"]
        return lambda: baselines.locally_connected2d(x, w, b, (k, k), (pads, pads))

    def torch_make(inp):
        torch = baselines.get_torch()
        F = torch.nn.functional
        x = torch.from_numpy(inp["x"]).permute(0, 3, 1, 2)
        w = torch.from_numpy(inp["w"]).reshape(H * W, k * k * C, K)
        b = torch.from_numpy(inp["b"])
        # unfold orders a patch (c, i, j); the weight's rows are (i, j, c).
        perm = torch.arange(k * k * C).reshape(k * k, C).T.reshape(-1)
        wt = w[:, perm, :].contiguous()

        def run():
            xp = F.pad(x, (pads[0], pads[1], pads[0], pads[1]))
            cols = F.unfold(xp, k).permute(2, 0, 1)                 # HW, N, C*k*k
            return torch.bmm(cols, wt).permute(1, 0, 2).reshape(N, H, W, K) + b
        return run

    return Case(
        name=f"locally_connected2d N{N} {H}x{W}x{C}->{K} k{k} same", family=FAMILY, setup=setup,
        contenders=[Contender("fastnn", fastnn_make), Contender("numpy", numpy_make),
                    Contender("torch", torch_make, requires="torch")],
        flops=2.0 * N * H * W * k * k * C * K, dtype=np.dtype(DTYPE).name,
        params=dict(op="locally_connected2d", N=N, H=H, W=W, C=C, K=K, k=k),
    )


def cases():
    """banded forward by shape and band, backward, masked at 1% and 30%, locally connected."""
    out = [_banded_case(*spec, backward=False) for spec in BANDED]
    out += [_banded_case(*spec, backward=True) for spec in BANDED_BACKWARD]
    out += [_masked_case(*spec) for spec in MASKED]
    out.append(_local_case())
    return out
