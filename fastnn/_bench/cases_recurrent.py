"""Benchmark family "recurrent": the LSTM cell by size, and an LSTM over a sequence
(forward, and forward + backward), float32.

Contenders
----------
fastnn
    ``fastnn.lstm_cell`` (new result arrays each call); ``fastnn.lstm`` batch-major, and
    ``lstm(..., training=True)`` + ``lstm_backward``.
numpy
    :mod:`fastnn._bench.baselines`: the cell equations with two products into the gate
    matrix; the sequence with the input projection of all steps as one product, and BPTT
    with the stacked gate gradients turned into the weight and input gradients by one
    product each.
torch
    ``torch.nn.LSTMCell`` / ``torch.nn.LSTM(batch_first=True)`` under ``no_grad`` with the
    same weights (converted with :mod:`fastnn.convert`); forward + backward builds the
    graph inside the timed call and takes ``torch.autograd.grad`` of the outputs with
    respect to the input and the four weight tensors, as a training step does.

All use ``forget_bias=0.0`` (PyTorch has none). Rates: the GEMM work, 2 B (I + H) 4H
flops per step (three times that for forward + backward); the gate nonlinearities are
not counted.
"""
import numpy as np

from fastnn._bench import baselines
from fastnn._bench.harness import Case, Contender

FAMILY = "recurrent"
DESCRIPTION = ("LSTM cell by size, LSTM sequence forward and forward+backward (float32; the "
               "sequence in float64 too)")

CELL_SIZES = [(1, 12, 64), (16, 128, 256), (64, 512, 512), (256, 1024, 1024)]
SEQUENCE = (32, 50, 128, 256)          # B, T, I, H
DTYPE = np.float32


def _weights(rng, I, H, dtype=DTYPE):
    scale = 1.0 / np.sqrt(I + H)
    return {"kernel": (rng.standard_normal((I + H, 4 * H)) * scale).astype(dtype),
            "bias": (rng.standard_normal(4 * H) * 0.1).astype(dtype)}


def _torch_module(cls, kernel, bias, I, H, **kw):
    """A torch LSTM / LSTMCell holding fastnn's weights (forget_bias 0)."""
    torch = baselines.get_torch()
    from fastnn import convert
    m = cls(I, H, **kw).to(torch.from_numpy(kernel).dtype)
    names = (["weight_ih", "weight_hh", "bias_ih", "bias_hh"] if cls is torch.nn.LSTMCell
             else ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"])
    with torch.no_grad():
        for name, value in zip(names, convert.lstm_to_torch(kernel, bias)):
            getattr(m, name).copy_(torch.from_numpy(value))
    return m, [getattr(m, n) for n in names]


# ------------------------------------------------------------------ cell
def _cell_case(B, I, H):
    import fastnn

    def setup(rng):
        inp = _weights(rng, I, H)
        inp.update(x=rng.standard_normal((B, I), dtype=DTYPE),
                   h=rng.standard_normal((B, H), dtype=DTYPE),
                   c=rng.standard_normal((B, H), dtype=DTYPE))
        return inp

    def fastnn_make(inp):
        x, h, c, k, b = inp["x"], inp["h"], inp["c"], inp["kernel"], inp["bias"]
        return lambda: fastnn.lstm_cell(x, h, c, k, b, forget_bias=0.0)

    def numpy_make(inp):
        x, h, c, k, b = inp["x"], inp["h"], inp["c"], inp["kernel"], inp["bias"]
        return lambda: baselines.lstm_cell(x, h, c, k, b)

    def torch_make(inp):
        torch = baselines.get_torch()
        m, _ = _torch_module(torch.nn.LSTMCell, inp["kernel"], inp["bias"], I, H)
        x, h, c = (torch.from_numpy(inp[k]) for k in ("x", "h", "c"))

        def fn():
            with torch.no_grad():
                return m(x, (h, c))
        return fn

    return Case(
        name=f"lstm_cell B{B} I{I} H{H}", family=FAMILY, setup=setup,
        contenders=[Contender("fastnn", fastnn_make), Contender("numpy", numpy_make),
                    Contender("torch", torch_make, requires="torch")],
        flops=2.0 * B * (I + H) * 4 * H, dtype=np.dtype(DTYPE).name,
        params=dict(op="lstm_cell", B=B, I=I, H=H),
    )


# ------------------------------------------------------------------ sequence
def _sequence_setup(B, T, I, H, backward, dtype):
    def setup(rng):
        inp = _weights(rng, I, H, dtype)
        inp.update(x=rng.standard_normal((B, T, I), dtype=dtype),
                   h0=rng.standard_normal((B, H), dtype=dtype),
                   c0=rng.standard_normal((B, H), dtype=dtype))
        if backward:
            inp["grad_out"] = rng.standard_normal((B, T, H), dtype=dtype)
        return inp
    return setup


def _sequence_case(B, T, I, H, backward, dtype=DTYPE):
    import fastnn

    def fastnn_make(inp):
        x, h0, c0, k, b = inp["x"], inp["h0"], inp["c0"], inp["kernel"], inp["bias"]
        if not backward:
            return lambda: fastnn.lstm(x, h0, c0, k, b, forget_bias=0.0)[0]
        g = inp["grad_out"]

        def fn():
            out, _, cache = fastnn.lstm(x, h0, c0, k, b, forget_bias=0.0, training=True)
            gx, _, _, gk, gb = fastnn.lstm_backward(g, None, None, cache)
            return out, gx, gk, gb
        return fn

    def numpy_make(inp):
        args = [inp[k] for k in ("x", "h0", "c0", "kernel", "bias")]
        if not backward:
            return lambda: baselines.lstm_forward(*args)[0]
        return lambda: baselines.lstm_forward_backward(*args, inp["grad_out"])

    def torch_make(inp):
        torch = baselines.get_torch()
        m, params = _torch_module(torch.nn.LSTM, inp["kernel"], inp["bias"], I, H,
                                  batch_first=True)
        x0 = torch.from_numpy(inp["x"])
        state = (torch.from_numpy(inp["h0"])[None], torch.from_numpy(inp["c0"])[None])
        if not backward:
            def fwd():
                with torch.no_grad():
                    return m(x0, state)[0]
            return fwd
        g = torch.from_numpy(inp["grad_out"])

        def fn():
            with torch.enable_grad():
                x = x0.detach().requires_grad_()
                out = m(x, state)[0]
                grads = torch.autograd.grad(out, [x] + params, g)
            return out.detach(), grads
        return fn

    def torch_to_numpy(result):
        from fastnn import convert
        out, (gx, gwi, gwh, gbi, _) = result
        gk, gb = convert.lstm_from_torch(gwi.numpy(), gwh.numpy(), gbi.numpy(),
                                         np.zeros_like(gbi.numpy()))
        return out.numpy(), gx.numpy(), gk, gb

    step_flops = 2.0 * B * (I + H) * 4 * H
    what = "fwd+bwd" if backward else "fwd"
    return Case(
        name=f"lstm {what} B{B} T{T} I{I} H{H}"
             + ("" if dtype == DTYPE else f" {np.dtype(dtype).name}"), family=FAMILY,
        setup=_sequence_setup(B, T, I, H, backward, dtype),
        contenders=[Contender("fastnn", fastnn_make), Contender("numpy", numpy_make),
                    Contender("torch", torch_make, requires="torch",
                              to_numpy=torch_to_numpy if backward else None)],
        flops=step_flops * T * (3 if backward else 1), dtype=np.dtype(dtype).name,
        rtol=2e-3 if backward else 1e-3,
        params=dict(op="lstm+lstm_backward" if backward else "lstm", B=B, T=T, I=I, H=H,
                    batch_first=True),
    )


def cases():
    """The cell at four sizes, then the sequence forward and forward + backward."""
    out = [_cell_case(*size) for size in CELL_SIZES]
    out.append(_sequence_case(*SEQUENCE, backward=False))
    out.append(_sequence_case(*SEQUENCE, backward=True))
    # float64 (users of the NumPy API use it a lot)
    out.append(_sequence_case(*SEQUENCE, backward=False, dtype=np.float64))
    out.append(_sequence_case(*SEQUENCE, backward=True, dtype=np.float64))
    return out
