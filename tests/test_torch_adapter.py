"""fastnn.torch: the custom ops (opcheck, gradcheck), the functional and module twins
against torch.nn, swap(), torch.compile, fallback and strict mode, aliasing, and the
ImportError without PyTorch.

References are PyTorch's own operators (float64) or float64 NumPy loops written here.
"""
import copy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fastnn.torch as ft  # noqa: E402
from helpers import assert_close  # noqa: E402

D64 = torch.float64
OPS = torch.ops.fastnn


@pytest.fixture(autouse=True)
def _fresh_counts():
    ft.reset_fallback_counts()
    yield
    ft.reset_fallback_counts()


def rand(*shape, dtype=D64, grad=True, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else hash(shape) % 2**31)
    t = torch.randn(shape, dtype=dtype, generator=g)
    return t.requires_grad_(grad)


def close(got, want, what=""):
    """Norm-wise relative closeness at the dtype's tolerance (helpers.assert_close)."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {got.shape} != {want.shape}"
    g, w = got.detach().cpu().numpy(), want.detach().cpu().numpy()
    if not np.issubdtype(w.dtype, np.floating):
        np.testing.assert_array_equal(g, w, err_msg=what)
        return
    finite = np.isfinite(w)
    np.testing.assert_array_equal(g[~finite], w[~finite], err_msg=f"{what}: NaN/Inf")
    assert_close(np.where(finite, g, 0), np.where(finite, w, 0), w.dtype, what)


def leaves(args):
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


def clone_args(args):
    return tuple(a.detach().clone().requires_grad_(a.requires_grad)
                 if isinstance(a, torch.Tensor) else a for a in args)


def flat(out):
    """Tensors of a (possibly nested) result, in order."""
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in flat(item)]
    return [out]


# ====================================================================== op samples
# (op name, args) with float64 tensors; differentiable inputs require grad.
def _forward_samples():
    r = rand
    B, T, I, H = 2, 3, 4, 5
    s = [
        ("conv2d", (r(2, 3, 5, 6), r(4, 3, 3, 2), r(4), [2, 1], [1, 0, 2, 1], [1, 2], 1)),
        ("conv2d", (r(1, 4, 5, 5), r(4, 2, 2, 2), None, [1, 1], [0, 0, 0, 0], [1, 1], 2)),
        ("conv1d", (r(2, 3, 7), r(4, 3, 3), r(4), [2], [1, 2], [1], 1)),
        ("conv_transpose2d", (r(1, 2, 3, 3), r(2, 3, 3, 3), r(3), [2, 2], [1, 1], [1, 0],
                              [1, 1], 1)),
        ("unfold", (r(1, 2, 5, 5), [2, 3], [1, 1], [1, 0], [2, 1])),
        ("fold", (r(1, 8, 6), [3, 4], [2, 2], [1, 1], [0, 0], [1, 1])),
        ("max_pool2d", (r(1, 2, 6, 5), [3, 2], [2, 1], [1, 0], [1, 1], False)),
        ("max_pool1d", (r(2, 2, 7), [3], [2], [1], [1], False)),
        ("avg_pool2d", (r(1, 2, 6, 5), [3, 2], [2, 1], [1, 1], False, True, None)),
        ("avg_pool1d", (r(2, 2, 7), [3], [2], [1], False, False, None)),
        ("relu", (r(3, 4),)),
        ("leaky_relu", (r(3, 4), 0.2)),
        ("sigmoid", (r(3, 4),)),
        ("tanh", (r(3, 4),)),
        ("softmax", (r(3, 4), 1)),
        ("log_softmax", (r(3, 4), 0)),
        ("cross_entropy", (r(4, 5), torch.tensor([0, 4, 2, 2]), None, -100, "mean", 0.0)),
        ("cross_entropy", (r(4, 5), torch.softmax(r(4, 5, grad=False, seed=1), 1), None, -100,
                           "none", 0.0)),
        ("banded_linear", (r(3, 6), r(5, 6), r(5), 1, 2)),
        ("banded_linear", (r(2, 3, 6), r(6, 6), None, -1, 0)),
        ("masked_linear", (r(3, 6), r(5, 6), torch.rand(5, 6) < 0.5, r(5))),
        ("locally_connected2d", (r(2, 2, 5, 5), r(2, 4, 3, 8), r(2, 4, 3), [2, 2], [2, 1],
                                 [0, 0, 0, 0])),
        ("lstm", (r(B, T, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H),
                  True, True)),
        ("lstm", (r(T, B, I), None, None, r(4 * H, I), r(4 * H, H), None, None, False, True)),
        ("gru", (r(B, T, I), r(B, H), r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H), True, True)),
        ("gru", (r(T, B, I), None, r(3 * H, I), r(3 * H, H), None, None, False, True)),
        ("rnn", (r(B, T, I), r(B, H), r(H, I), r(H, H), r(H), r(H), "tanh", True, True)),
        ("rnn", (r(T, B, I), None, r(H, I), r(H, H), None, None, "relu", False, True)),
        ("rnn", (r(T, B, I), r(B, H), r(H, I), r(H, H), r(H), r(H), "relu", False, True)),
        ("lstm_cell", (r(B, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H))),
        ("gru_cell", (r(B, I), r(B, H), r(3 * H, I), r(3 * H, H), r(3 * H), r(3 * H))),
    ]
    if ft._MAX_POOL_ARGS["dilation"] and ft._MAX_POOL_ARGS["ceil_mode"]:
        s.append(("max_pool2d", (r(1, 2, 7, 6), [2, 2], [2, 2], [1, 0], [2, 1], True)))
    if ft._AVG_POOL_ARGS["ceil_mode"] and ft._AVG_POOL_ARGS["divisor_override"]:
        s.append(("avg_pool2d", (r(1, 2, 7, 6), [3, 3], [2, 2], [1, 1], True, True, 5)))
    if ft._XENT_ARGS["weight"] and ft._XENT_ARGS["label_smoothing"]:
        s.append(("cross_entropy", (r(4, 5), torch.tensor([0, 4, -100, 2]),
                                    torch.rand(5, dtype=D64) + 0.5, -100, "mean", 0.1)))
    return s


FORWARD = _forward_samples()
N_OUTPUTS = {"max_pool1d": 1, "max_pool2d": 1, "lstm": 3, "gru": 2, "rnn": 2}   # differentiable ones


def _grads_for(outputs):
    return [torch.randn_like(o) if o.is_floating_point() else None for o in outputs]


def _backward_samples():
    """Arguments of each backward op, built from a forward sample's real outputs."""
    out = []
    for name, args in FORWARD:
        a = [x.detach() if isinstance(x, torch.Tensor) else x for x in args]
        res = flat(getattr(OPS, name)(*a))
        g = _grads_for(res)
        if name in ("conv2d", "conv1d", "conv_transpose2d"):
            x, w, b, *geom = a
            out.append((name + "_backward", (g[0], x, w, *geom, True, True, b is not None)))
            out.append((name + "_backward", (g[0], x, w, *geom, False, True, False)))
        elif name.startswith("max_pool"):
            out.append((name + "_backward", (g[0], a[0], res[1], *a[1:])))
        elif name.startswith("avg_pool"):
            out.append((name + "_backward", (g[0], *a)))
        elif name in ("relu", "sigmoid", "tanh", "softmax", "log_softmax"):
            out.append((name + "_backward", (g[0], res[0], *a[1:])))
        elif name == "leaky_relu":
            out.append((name + "_backward", (g[0], a[0], *a[1:])))
        elif name == "cross_entropy":
            out.append((name + "_backward", (g[0], *a)))
        elif name in ("banded_linear", "locally_connected2d"):
            x, w, b, *rest = a
            out.append((name + "_backward", (g[0], x, w, *rest, b is not None)))
        elif name == "masked_linear":
            x, w, m, b = a
            out.append((name + "_backward", (g[0], x, w, m, b is not None)))
        elif name == "lstm":
            x, *_, batch_first, _training = a
            out.append((name + "_backward", (g[0], g[1], g[2], x, *res[3:], batch_first,
                                             a[5] is not None)))
        elif name == "gru":
            x, *_, batch_first, _training = a
            out.append((name + "_backward", (g[0], g[1], x, *res[2:], batch_first,
                                             a[4] is not None)))
        elif name == "rnn":
            x, *_, nonlinearity, batch_first, _training = a
            out.append((name + "_backward", (g[0], g[1], x, *res[2:], nonlinearity,
                                             batch_first, a[4] is not None)))
        elif name == "lstm_cell":
            out.append((name + "_backward", (g[0], g[1], *a)))
        elif name == "gru_cell":
            out.append((name + "_backward", (g[0], *a)))
    return out


BACKWARD = _backward_samples()


def _ids(samples):
    seen = {}
    ids = []
    for name, _ in samples:
        seen[name] = seen.get(name, -1) + 1
        ids.append(f"{name}-{seen[name]}")
    return ids


def test_every_registered_op_is_checked():
    ops = ft.registered_ops()
    assert len(ops) == len(set(ops)) == 46
    covered = {name for name, _ in FORWARD + BACKWARD}
    # unfold and fold are each other's backward: no separate *_backward op.
    assert covered == set(ops)
    for name in ops:
        assert hasattr(OPS, name), name


@pytest.mark.parametrize("name,args", FORWARD + BACKWARD, ids=_ids(FORWARD + BACKWARD))
def test_opcheck(name, args):
    torch.library.opcheck(getattr(OPS, name).default, args)


@pytest.mark.parametrize("name,args", FORWARD, ids=_ids(FORWARD))
def test_gradcheck_float64(name, args):
    pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    n_out = N_OUTPUTS.get(name)

    def fn(*tensors):
        full = list(args)
        for i, t in zip(pos, tensors):
            full[i] = t
        res = flat(getattr(OPS, name)(*full))
        return tuple(res[:n_out]) if n_out else tuple(res)

    assert torch.autograd.gradcheck(fn, tuple(args[i] for i in pos), fast_mode=True)


@pytest.mark.parametrize("fn,args", [
    (lambda x: ft.unfold(x, (2, 3), padding=1, stride=(2, 1)), (rand(1, 2, 4, 5),)),
    (lambda c: ft.fold(c, (3, 4), 2), (rand(1, 8, 6),)),
])
def test_unfold_fold_twice_differentiable(fn, args):
    # Each is the other's backward, so gradients of gradients are fastnn kernels too.
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=True)


def test_double_backward_of_kernel_backward_raises():
    x, w = rand(1, 1, 4, 4), rand(1, 1, 2, 2)
    (gx,) = torch.autograd.grad(ft.conv2d(x, w).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="conv2d_backward"):
        torch.autograd.grad(gx.sum(), w)


# ====================================================================== aliasing, inputs kept
def _storage_range(t):
    s = t.untyped_storage()
    return s.data_ptr(), s.data_ptr() + s.nbytes()


def _overlap(a, b):
    (a0, a1), (b0, b1) = _storage_range(a), _storage_range(b)
    return a1 > a0 and b1 > b0 and a0 < b1 and b0 < a1


ALIAS_EDGE = [   # cases where a lazy kernel could hand back its input
    ("max_pool2d", (rand(1, 2, 3, 3), [1, 1], [1, 1], [0, 0], [1, 1], False)),
    ("avg_pool1d", (rand(1, 2, 3), [1], [1], [0], False, False, None)),
    ("softmax", (rand(3, 1), 1)),
    ("relu", (rand(0, 3),)),
    ("unfold", (rand(1, 2, 3, 3), [1, 1], [1, 1], [0, 0], [1, 1])),
    ("fold", (rand(1, 2, 9), [3, 3], [1, 1], [1, 1], [0, 0], [1, 1])),
    ("conv2d", (rand(1, 1, 3, 3), rand(1, 1, 1, 1), None, [1, 1], [0, 0, 0, 0], [1, 1], 1)),
]


@pytest.mark.parametrize("name,args", FORWARD + BACKWARD + ALIAS_EDGE,
                         ids=_ids(FORWARD + BACKWARD + ALIAS_EDGE))
def test_no_output_aliases_an_input_and_inputs_unchanged(name, args):
    before = [a.detach().clone() if isinstance(a, torch.Tensor) else None for a in args]
    outs = flat(getattr(OPS, name)(*args))
    ins = [a for a in args if isinstance(a, torch.Tensor)]
    for i, o in enumerate(outs):
        for t in ins:
            assert not _overlap(o, t), f"output {i} shares memory with an input"
        for j, o2 in enumerate(outs[:i]):
            assert not _overlap(o, o2), f"outputs {j} and {i} share memory"
    diff = [o for o in outs[:N_OUTPUTS.get(name, len(outs))] if o.requires_grad]
    if diff:   # the backward must not touch the inputs either
        torch.autograd.backward(diff, [torch.ones_like(o) for o in diff])
    for a, b in zip(args, before):
        if b is not None:
            assert torch.equal(a.detach(), b), f"{name} modified an input"


# ====================================================================== functional twins
def _check_twin(ours, theirs, args, kwargs=None, fallback=False, name=None):
    """Outputs and input gradients of the fastnn twin vs PyTorch's function."""
    kwargs = kwargs or {}
    a1, a2 = clone_args(args), clone_args(args)
    y1, y2 = flat(ours(*a1, **kwargs)), flat(theirs(*a2, **kwargs))
    assert len(y1) == len(y2)
    for i, (u, v) in enumerate(zip(y1, y2)):
        close(u, v, f"output {i}")
    counts = ft.fallback_counts()
    assert counts == ({name: 1} if fallback else {}), counts
    diff = [i for i, v in enumerate(y2) if v.requires_grad]
    l1, l2 = leaves(a1), leaves(a2)
    if diff and l2:
        cot = [torch.randn_like(y2[i]) for i in diff]
        g1 = torch.autograd.grad([y1[i] for i in diff], l1, cot, allow_unused=True)
        g2 = torch.autograd.grad([y2[i] for i in diff], l2, cot, allow_unused=True)
        for k, (u, v) in enumerate(zip(g1, g2)):
            if v is None:
                assert u is None or not u.any()
            else:
                close(u, v, f"gradient {k}")


r = rand
CONV2D = [
    ((r(2, 3, 6, 7), r(4, 3, 3, 2), r(4)), {}),
    ((r(2, 3, 6, 7), r(4, 3, 3, 3), r(4)), dict(stride=2, padding=1)),
    ((r(2, 3, 6, 7), r(4, 3, 3, 3), None), dict(stride=(1, 2), padding=(1, 2), dilation=(2, 1))),
    ((r(2, 3, 6, 7), r(4, 3, 2, 4), r(4)), dict(padding="same", dilation=2)),
    ((r(2, 3, 6, 7), r(4, 3, 3, 3), r(4)), dict(padding="valid")),
    ((r(2, 4, 5, 5), r(6, 2, 3, 3), r(6)), dict(groups=2, padding=1)),
    ((r(3, 6, 6), r(4, 3, 3, 3), r(4)), dict(padding=1)),                     # unbatched
    ((r(2, 3, 6, 6), r(4, 3, 3, 3), r(4)), dict(stride=(2,), padding=(1,))),  # 1-tuples
    ((r(0, 3, 5, 5), r(4, 3, 3, 3), r(4)), {}),                               # empty batch
    ((r(2, 3, 6, 6).to(memory_format=torch.channels_last).detach().requires_grad_(),
      r(4, 3, 3, 3), r(4)), dict(padding=1)),
]
CONV1D = [
    ((r(2, 3, 9), r(4, 3, 3), r(4)), {}),
    ((r(2, 3, 9), r(4, 3, 4), r(4)), dict(padding="same", dilation=2)),
    ((r(2, 4, 9), r(6, 2, 3), None), dict(groups=2, stride=2, padding=(1,))),
    ((r(3, 9), r(4, 3, 3), r(4)), dict(padding=1)),                          # unbatched
]
CONVT = [
    ((r(2, 3, 4, 4), r(3, 2, 3, 3), r(2)), dict(stride=2, padding=1, output_padding=1)),
    ((r(2, 4, 3, 4), r(4, 3, 2, 3), r(6)), dict(groups=2, dilation=(2, 1), stride=(1, 2))),
    ((r(3, 4, 4), r(3, 2, 3, 3), None), dict(padding=(1, 0))),               # unbatched
]


@pytest.mark.parametrize("args,kwargs", CONV2D)
def test_conv2d_twin(args, kwargs):
    _check_twin(ft.conv2d, F.conv2d, args, kwargs)


@pytest.mark.parametrize("args,kwargs", CONV1D)
def test_conv1d_twin(args, kwargs):
    _check_twin(ft.conv1d, F.conv1d, args, kwargs)


@pytest.mark.parametrize("args,kwargs", CONVT)
def test_conv_transpose2d_twin(args, kwargs):
    _check_twin(ft.conv_transpose2d, F.conv_transpose2d, args, kwargs)


def test_conv_positional_arguments_in_torch_order():
    x, w, b = r(1, 2, 5, 5), r(2, 1, 3, 3), r(2)
    _check_twin(ft.conv2d, F.conv2d, (x, w, b, 1, 1, 1, 2))
    # conv_transpose2d: groups before dilation, as in PyTorch
    _check_twin(ft.conv_transpose2d, F.conv_transpose2d, (r(1, 2, 3, 3), r(2, 1, 3, 3), None,
                                                           2, 1, 1, 2, 1))


_MAX_NEW = not (ft._MAX_POOL_ARGS["dilation"] and ft._MAX_POOL_ARGS["ceil_mode"])
_AVG_NEW = not all(ft._AVG_POOL_ARGS.values())
POOL = [
    (ft.max_pool2d, F.max_pool2d, (r(2, 3, 6, 7), 2), {}, False),
    (ft.max_pool2d, F.max_pool2d, (r(2, 3, 6, 7), 3), dict(stride=2, padding=1), False),
    (ft.max_pool2d, F.max_pool2d, (r(2, 3, 6, 7), (2, 3)), dict(stride=(1, 2),
                                                                  return_indices=True), False),
    (ft.max_pool2d, F.max_pool2d, (r(3, 6, 7), 2), dict(return_indices=True), False),
    (ft.max_pool2d, F.max_pool2d, (r(2, 3, 7, 7), 3), dict(stride=2, dilation=2), _MAX_NEW),
    (ft.max_pool2d, F.max_pool2d, (r(2, 3, 7, 6), 2), dict(ceil_mode=True, padding=1), _MAX_NEW),
    (ft.max_pool1d, F.max_pool1d, (r(2, 3, 9), 3), dict(stride=2, padding=1), False),
    (ft.max_pool1d, F.max_pool1d, (r(3, 9), (2,)), dict(return_indices=True), False),
    (ft.max_pool1d, F.max_pool1d, (r(2, 3, 9), 2), dict(dilation=3, ceil_mode=True), _MAX_NEW),
    (ft.avg_pool2d, F.avg_pool2d, (r(2, 3, 6, 7), 2), {}, False),
    (ft.avg_pool2d, F.avg_pool2d, (r(2, 3, 6, 7), 3), dict(stride=2, padding=1), _AVG_NEW),
    (ft.avg_pool2d, F.avg_pool2d, (r(2, 3, 6, 7), 3), dict(stride=2, padding=1,
                                                            count_include_pad=False), False),
    (ft.avg_pool2d, F.avg_pool2d, (r(2, 3, 7, 6), 3), dict(stride=2, ceil_mode=True, padding=1),
     _AVG_NEW),
    (ft.avg_pool2d, F.avg_pool2d, (r(2, 3, 6, 6), 2), dict(divisor_override=3), _AVG_NEW),
    (ft.avg_pool2d, F.avg_pool2d, (r(3, 6, 7), (2, 3)), dict(stride=(2, 1)), False),
    (ft.avg_pool1d, F.avg_pool1d, (r(2, 3, 9), 3), dict(stride=2, padding=1), _AVG_NEW),
    (ft.avg_pool1d, F.avg_pool1d, (r(2, 3, 9), 3), dict(stride=2, padding=1,
                                                         count_include_pad=False), False),
    (ft.avg_pool1d, F.avg_pool1d, (r(2, 3, 8), 3), dict(stride=2, ceil_mode=True), _AVG_NEW),
    (ft.avg_pool1d, F.avg_pool1d, (r(3, 9), 2), {}, False),
]


@pytest.mark.parametrize("ours,theirs,args,kwargs,fallback", POOL,
                         ids=[f"{p[0].__name__}-{i}" for i, p in enumerate(POOL)])
def test_pooling_twin(ours, theirs, args, kwargs, fallback):
    # With the installed fastnn's pooling arguments the call must not fall back.
    _check_twin(ours, theirs, args, kwargs, fallback=fallback, name=ours.__name__)


ELEMENTWISE = [(ft.relu, F.relu, ()), (ft.leaky_relu, F.leaky_relu, (0.2,)),
               (ft.leaky_relu, F.leaky_relu, ()), (ft.sigmoid, torch.sigmoid, ()),
               (ft.tanh, torch.tanh, ())]


@pytest.mark.parametrize("ours,theirs,extra", ELEMENTWISE)
@pytest.mark.parametrize("shape", [(3, 4), (), (0, 3), (2, 3, 4)])
def test_elementwise_twins(ours, theirs, extra, shape):
    _check_twin(ours, theirs, (r(*shape),) + extra)
    _check_twin(ours, theirs, (r(4, 3).t(),) + extra)        # non-contiguous view


def test_elementwise_nan_and_zero_like_torch():
    x = torch.tensor([float("nan"), 0.0, -0.0, 1.0, -1.0, float("inf")], dtype=D64,
                     requires_grad=True)
    for ours, theirs, extra in ELEMENTWISE[1:]:
        _check_twin(ours, theirs, (x,) + extra)
    y = ft.relu(x)
    close(y, F.relu(x), "relu")
    (g,) = torch.autograd.grad(y, x, torch.full((6,), 3.0, dtype=D64))
    (want,) = torch.autograd.grad(F.relu(x), x, torch.full((6,), 3.0, dtype=D64))
    close(g[1:], want[1:], "relu gradient")
    # fastnn's relu_backward blocks a NaN input (SPEC); PyTorch passes the gradient there.
    assert g[0] == 0 and want[0] == 3


@pytest.mark.parametrize("ours,theirs", [(ft.relu, F.relu), (ft.leaky_relu, F.leaky_relu)])
def test_inplace_activation(ours, theirs):
    base1, base2 = r(3, 4), r(3, 4)
    with torch.no_grad():
        base2.copy_(base1)
    h1, h2 = base1 * 2, base2 * 2                    # non-leaves: in-place is allowed
    y1, y2 = ours(h1, inplace=True), theirs(h2, inplace=True)
    assert y1 is h1
    close(h1, h2, "in-place result")
    cot = torch.randn(3, 4, dtype=D64)
    (g1,), (g2,) = torch.autograd.grad(y1, base1, cot), torch.autograd.grad(y2, base2, cot)
    close(g1, g2, "gradient through the in-place op")
    with pytest.raises(RuntimeError):                 # a leaf that requires grad, as torch
        ours(r(3), inplace=True)


SOFTMAX = [((r(3, 4),), dict(dim=1)), ((r(3, 4),), dict(dim=-1)), ((r(2, 3, 4),), dict(dim=0)),
           ((r(),), dict(dim=0)), ((r(2, 3, 4),), dict(dim=1, dtype=D64)),
           ((r(0, 4),), dict(dim=1))]


@pytest.mark.parametrize("ours,theirs", [(ft.softmax, F.softmax),
                                         (ft.log_softmax, F.log_softmax)])
@pytest.mark.parametrize("args,kwargs", SOFTMAX)
def test_softmax_twins(ours, theirs, args, kwargs):
    _check_twin(ours, theirs, args, kwargs)


def test_softmax_dtype_casts_first_and_implicit_dim_warns():
    x = r(2, 3, dtype=torch.float32)
    _check_twin(ft.softmax, F.softmax, (x,), dict(dim=1, dtype=D64))
    with pytest.warns(UserWarning, match="Implicit dimension"):
        _check_twin(ft.log_softmax, F.log_softmax, (r(2, 3),))


_XENT_W = not ft._XENT_ARGS["weight"]
_XENT_LS = not ft._XENT_ARGS["label_smoothing"]
_XENT_II = not ft._XENT_ARGS["ignore_index"]
_XENT_SP = not ft._XENT_SPATIAL
_labels = torch.tensor([0, 4, 2, 2, 1])
_probs = torch.softmax(r(5, 5, grad=False, seed=3), 1)
XENT = [
    ((r(5, 5), _labels), {}, False),
    ((r(5, 5), _labels), dict(reduction="sum"), False),
    ((r(5, 5), _labels), dict(reduction="none"), False),
    ((r(5, 5), _probs), {}, False),
    ((r(5, 5), _probs), dict(reduction="none"), False),
    ((r(5, 5), _labels.to(torch.uint8)), {}, False),                       # Byte labels
    ((r(5), torch.tensor(3)), {}, False),                                   # unbatched
    ((r(5), torch.tensor(3)), dict(reduction="none"), False),
    ((r(5, 5), _labels), dict(weight=torch.rand(5, dtype=D64) + 0.5), _XENT_W),
    ((r(5, 5), torch.tensor([0, -100, 2, -100, 1])), {}, _XENT_II),
    ((r(5, 5), torch.tensor([0, 3, 2, 3, 1])), dict(ignore_index=3, reduction="sum"), _XENT_II),
    ((r(5, 5), _labels), dict(label_smoothing=0.1), _XENT_LS),
    ((r(5, 5), _probs), dict(label_smoothing=0.2, reduction="sum"), _XENT_LS),
    ((r(2, 5, 3, 2), torch.randint(0, 5, (2, 3, 2), generator=torch.Generator().manual_seed(0))),
     dict(reduction="none"), _XENT_SP),
    ((r(2, 5, 3), torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(1))),
     dict(weight=torch.rand(5, dtype=D64) + 0.5, label_smoothing=0.1),
     _XENT_SP or _XENT_W or _XENT_LS),
]


@pytest.mark.parametrize("args,kwargs,fallback", XENT, ids=[f"xent-{i}" for i in range(len(XENT))])
def test_cross_entropy_twin(args, kwargs, fallback):
    _check_twin(ft.cross_entropy, F.cross_entropy, args, kwargs, fallback=fallback,
                name="cross_entropy")


def test_cross_entropy_legacy_reduction_and_prob_target_grad():
    _check_twin(ft.cross_entropy, F.cross_entropy, (r(4, 3), torch.tensor([0, 1, 2, 0])),
                dict(size_average=False))
    # A probability target that requires grad: fastnn has no gradient for it -> PyTorch
    _check_twin(ft.cross_entropy, F.cross_entropy, (r(4, 3), torch.softmax(r(4, 3), 1)),
                fallback=True, name="cross_entropy")


UNFOLD = [((r(2, 3, 5, 6), 2), {}),
          ((r(2, 3, 5, 6), (2, 3)), dict(dilation=(1, 2), padding=1, stride=(2, 1))),
          ((r(3, 5, 6), 3), dict(padding=1)),                              # unbatched
          ((r(0, 3, 5, 6), 2), {})]


@pytest.mark.parametrize("args,kwargs", UNFOLD)
def test_unfold_twin(args, kwargs):
    _check_twin(ft.unfold, F.unfold, args, kwargs)


FOLD = [((r(2, 12, 20), (5, 6), 2), {}),
        ((r(2, 18, 12), (5, 6), (2, 3)), dict(dilation=(1, 2), padding=1, stride=(2, 1))),
        ((r(12, 20), (5, 6), 2), {})]                                      # unbatched


@pytest.mark.parametrize("args,kwargs", FOLD)
def test_fold_twin(args, kwargs):
    _check_twin(ft.fold, F.fold, args, kwargs)


# ---------------------------------------------------------------------- fastnn-only layers
def band_mask(n_out, n_in, num_lower, num_upper):
    o, i = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
    keep = np.ones((n_out, n_in), bool)
    if num_lower >= 0:
        keep &= (o - i) <= num_lower
    if num_upper >= 0:
        keep &= (i - o) <= num_upper
    return torch.from_numpy(keep)


@pytest.mark.parametrize("n_out,n_in,lo,up,bias", [(6, 6, 1, 2, True), (5, 8, 0, 3, False),
                                                   (8, 5, 2, 0, True), (6, 6, -1, 0, True),
                                                   (4, 4, 9, 9, False)])
def test_banded_linear_is_the_band_of_the_out_in_weight(n_out, n_in, lo, up, bias):
    x, w = r(3, 2, n_in), r(n_out, n_in)
    b = r(n_out) if bias else None
    mask = band_mask(n_out, n_in, lo, up)

    def reference(x, w, b):
        return F.linear(x, w * mask, b)

    _check_twin(lambda *a: ft.banded_linear(a[0], a[1], lo, up, a[2]), reference, (x, w, b))
    y = ft.banded_linear(x, w, lo, up, b)
    (gw,) = torch.autograd.grad(y.sum(), w)
    assert not gw[~mask].any(), "weights outside the band got a gradient"


def test_masked_linear():
    x, w, b = r(4, 6), r(5, 6), r(5)
    mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) < 0.4
    _check_twin(lambda x, w, b: ft.masked_linear(x, w, mask, b),
                lambda x, w, b: F.linear(x, w * mask, b), (x, w, b))
    y = ft.masked_linear(x, w, mask.to(D64), b)          # float masks work too
    (gw,) = torch.autograd.grad(y.sum(), w)
    assert not gw[~mask].any()
    with torch.no_grad():
        w2 = w.clone()
        w2[~mask] = float("nan")                          # masked NaN weights are exact zeros
    assert torch.isfinite(ft.masked_linear(x.detach(), w2, mask)).all()


def _mask_layouts():
    keep = torch.rand(6, 12, generator=torch.Generator().manual_seed(3)) < 0.5
    for dtype in (torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32, D64):
        m = keep.to(dtype)
        yield f"{dtype}-contiguous", m[:, :6].t().contiguous()
        yield f"{dtype}-transposed", m[:, :6].t()              # (out, in) view, F-ordered
        yield f"{dtype}-strided", m[:, ::2].t()                 # no unit stride at all
    yield "float-values", torch.where(keep[:, :6].t(), torch.rand(6, 6) + 0.5, 0.0)


@pytest.mark.parametrize("name,mask", list(_mask_layouts()), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_masked_linear_takes_masks_of_any_layout_and_dtype(name, mask):
    # fastnn.masked_matmul refuses some non-C-contiguous non-bool masks; the adapter
    # hands it their non-zero pattern instead, so none of these falls back.
    assert tuple(mask.shape) == (6, 6)
    _check_twin(lambda x, w, b: ft.masked_linear(x, w, mask, b),
                lambda x, w, b: F.linear(x, torch.where(mask != 0, w, 0), b),
                (r(3, 6), r(6, 6, seed=1), r(6)))


def local_reference(x, w, b, k, s, p):
    """Float64 NumPy loop: one (out, in) matrix per output pixel, patch in (i, j, c)."""
    x = np.pad(x.detach().numpy(), ((0, 0), (0, 0), (p, p), (p, p)))
    w = w.detach().numpy()
    Ho, Wo, K, P = w.shape
    y = np.zeros((x.shape[0], K, Ho, Wo))
    for oh in range(Ho):
        for ow in range(Wo):
            patch = x[:, :, oh * s:oh * s + k, ow * s:ow * s + k].transpose(0, 2, 3, 1)
            y[:, :, oh, ow] = patch.reshape(x.shape[0], P) @ w[oh, ow].T
            if b is not None:
                y[:, :, oh, ow] += b.detach().numpy()[oh, ow]
    return torch.from_numpy(y)


@pytest.mark.parametrize("k,s,p,bias", [(3, 1, 0, True), (2, 2, 1, False), (3, 2, 1, True)])
def test_locally_connected2d(k, s, p, bias):
    C, K, H = 2, 3, 6
    Ho = (H + 2 * p - k) // s + 1
    x, w = r(2, C, H, H), r(Ho, Ho, K, k * k * C)
    b = r(Ho, Ho, K) if bias else None
    y = ft.locally_connected2d(x, w, b, kernel_size=k, stride=s, padding=p)
    close(y, local_reference(x, w, b, k, s, p), "locally_connected2d")
    yu = ft.locally_connected2d(x[0], w, b, kernel_size=k, stride=s, padding=p)   # unbatched
    close(yu, y[0], "unbatched")
    # gradients: PyTorch's autograd through the float64 einsum formulation
    _check_twin(lambda *a: ft.locally_connected2d(*a, kernel_size=k, stride=s, padding=p),
                lambda x, w, b: ft._local_torch(x, w, b, (k, k), (s, s), [p] * 4), (x, w, b))


# ====================================================================== module twins
def _module_pair(torch_cls, twin_cls, *args, **kwargs):
    torch.manual_seed(0)
    theirs = torch_cls(*args, **kwargs)
    torch.manual_seed(0)
    ours = twin_cls(*args, **kwargs)
    return ours.double(), theirs.double()


MODULES = [
    (nn.Conv1d, ft.Conv1d, (3, 4, 3), dict(padding=1), (2, 3, 8)),
    (nn.Conv1d, ft.Conv1d, (4, 4, 3), dict(groups=2, padding="same", padding_mode="circular"),
     (2, 4, 8)),
    (nn.Conv2d, ft.Conv2d, (3, 4, 3), dict(stride=2, padding=1), (2, 3, 7, 7)),
    (nn.Conv2d, ft.Conv2d, (3, 4, (3, 2)), dict(padding=1, padding_mode="reflect", bias=False),
     (2, 3, 6, 7)),
    (nn.Conv2d, ft.Conv2d, (3, 4, 3), dict(padding="same"), (3, 6, 6)),
    (nn.ConvTranspose2d, ft.ConvTranspose2d, (3, 2, 3), dict(stride=2, padding=1,
                                                             output_padding=1), (2, 3, 4, 4)),
    (nn.MaxPool1d, ft.MaxPool1d, (3,), dict(stride=2, padding=1, return_indices=True),
     (2, 3, 9)),
    (nn.MaxPool2d, ft.MaxPool2d, (2,), {}, (2, 3, 6, 6)),
    (nn.MaxPool2d, ft.MaxPool2d, (3,), dict(stride=2, dilation=2, ceil_mode=True), (2, 3, 9, 8)),
    (nn.AvgPool1d, ft.AvgPool1d, (3,), dict(stride=2, padding=1), (2, 3, 9)),
    (nn.AvgPool2d, ft.AvgPool2d, (2,), {}, (2, 3, 6, 6)),
    (nn.AvgPool2d, ft.AvgPool2d, (3,), dict(stride=2, padding=1, ceil_mode=True,
                                            count_include_pad=False), (2, 3, 7, 6)),
    (nn.ReLU, ft.ReLU, (), {}, (3, 4)),
    (nn.LeakyReLU, ft.LeakyReLU, (0.3,), {}, (3, 4)),
    (nn.Sigmoid, ft.Sigmoid, (), {}, (3, 4)),
    (nn.Tanh, ft.Tanh, (), {}, (3, 4)),
    (nn.Softmax, ft.Softmax, (1,), {}, (3, 4)),
    (nn.LogSoftmax, ft.LogSoftmax, (-1,), {}, (3, 4)),
    (nn.Unfold, ft.Unfold, (2,), dict(stride=2), (2, 3, 6, 6)),
    (nn.Fold, ft.Fold, ((4, 5), 2), {}, (2, 12, 12)),
    (nn.LSTMCell, ft.LSTMCell, (3, 4), {}, (2, 3)),
    (nn.LSTMCell, ft.LSTMCell, (3, 4), dict(bias=False), (3,)),
    (nn.GRUCell, ft.GRUCell, (3, 4), {}, (2, 3)),
    (nn.GRUCell, ft.GRUCell, (3, 4), dict(bias=False), (3,)),
    (nn.LSTM, ft.LSTM, (3, 4), {}, (5, 2, 3)),
    (nn.LSTM, ft.LSTM, (3, 4), dict(batch_first=True, num_layers=2), (2, 5, 3)),
    (nn.LSTM, ft.LSTM, (3, 4), dict(bidirectional=True, bias=False), (5, 2, 3)),
    (nn.LSTM, ft.LSTM, (3, 4), dict(num_layers=2, bidirectional=True, batch_first=True),
     (2, 5, 3)),
    (nn.LSTM, ft.LSTM, (3, 4), {}, (5, 3)),                                 # unbatched
    (nn.GRU, ft.GRU, (3, 4), {}, (5, 2, 3)),
    (nn.GRU, ft.GRU, (3, 4), dict(batch_first=True, num_layers=2, bias=False), (2, 5, 3)),
    (nn.GRU, ft.GRU, (3, 4), dict(bidirectional=True, num_layers=2), (5, 2, 3)),
    (nn.GRU, ft.GRU, (3, 4), dict(batch_first=True), (5, 3)),               # unbatched
    (nn.RNN, ft.RNN, (3, 4), {}, (5, 2, 3)),
    (nn.RNN, ft.RNN, (3, 4), dict(nonlinearity="relu", batch_first=True), (2, 5, 3)),
    (nn.RNN, ft.RNN, (3, 4, 1, "relu"), dict(bias=False), (5, 2, 3)),       # positional
    (nn.RNN, ft.RNN, (3, 4), dict(bias=False, batch_first=True), (2, 5, 3)),
    (nn.RNN, ft.RNN, (3, 4), dict(num_layers=2, bidirectional=True, nonlinearity="relu"),
     (5, 2, 3)),
    (nn.RNN, ft.RNN, (3, 4), dict(batch_first=True), (5, 3)),               # unbatched
]


@pytest.mark.parametrize("torch_cls,twin_cls,args,kwargs,shape", MODULES,
                         ids=[f"{m[0].__name__}-{i}" for i, m in enumerate(MODULES)])
def test_module_twin(torch_cls, twin_cls, args, kwargs, shape):
    ours, theirs = _module_pair(torch_cls, twin_cls, *args, **kwargs)
    sd1, sd2 = ours.state_dict(), theirs.state_dict()
    assert list(sd1) == list(sd2)
    for k in sd2:                     # the same initialisation from the same seed
        assert torch.equal(sd1[k], sd2[k]), k
    ours.load_state_dict(theirs.state_dict())     # and interchangeable
    x = r(*shape)
    x1, x2 = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    y1, y2 = ours(x1), theirs(x2)
    out1 = [t for t in flat(y1) for t in flat(t)]
    out2 = [t for t in flat(y2) for t in flat(t)]
    for i, (u, v) in enumerate(zip(out1, out2)):
        close(u, v, f"output {i}")
    assert ft.fallback_counts() == {}
    diff = [i for i, v in enumerate(out2) if v.is_floating_point()]
    cot = [torch.randn_like(out2[i]) for i in diff]
    p1, p2 = [x1] + list(ours.parameters()), [x2] + list(theirs.parameters())
    g1 = torch.autograd.grad([out1[i] for i in diff], p1, cot, allow_unused=True)
    g2 = torch.autograd.grad([out2[i] for i in diff], p2, cot, allow_unused=True)
    for k, (u, v) in enumerate(zip(g1, g2)):
        if v is None:
            assert u is None
        else:
            close(u, v, f"gradient {k}")


@pytest.mark.parametrize("cls,twin,kwargs", [(nn.LSTM, ft.LSTM, {}), (nn.GRU, ft.GRU, {}),
                                             (nn.RNN, ft.RNN, {}),
                                             (nn.RNN, ft.RNN, dict(nonlinearity="relu"))])
@pytest.mark.parametrize("batched", [True, False])
def test_recurrent_with_initial_state(cls, twin, kwargs, batched):
    ours, theirs = _module_pair(cls, twin, 3, 4, num_layers=2, bidirectional=True, **kwargs)
    x = r(5, 2, 3) if batched else r(5, 3)
    hshape = (4, 2, 4) if batched else (4, 4)
    hx = (r(*hshape), r(*hshape, seed=7)) if cls is nn.LSTM else r(*hshape)
    _check_twin(lambda x, *h: ours(x, h if cls is nn.LSTM else h[0]),
                lambda x, *h: theirs(x, h if cls is nn.LSTM else h[0]),
                (x,) + (hx if isinstance(hx, tuple) else (hx,)))


@pytest.mark.parametrize("cls,twin", [(nn.LSTMCell, ft.LSTMCell), (nn.GRUCell, ft.GRUCell)])
def test_cells_with_state(cls, twin):
    ours, theirs = _module_pair(cls, twin, 3, 4)
    if cls is nn.LSTMCell:
        _check_twin(lambda x, h, c: ours(x, (h, c)), lambda x, h, c: theirs(x, (h, c)),
                    (r(2, 3), r(2, 4), r(2, 4, seed=5)))
    else:
        _check_twin(ours, theirs, (r(2, 3), r(2, 4)))


def test_recurrent_twins_are_not_rnnbase_and_check_arguments_like_torch():
    m = ft.LSTM(3, 4)
    assert not isinstance(m, nn.RNNBase)
    with pytest.raises(RuntimeError, match="input_size"):
        m(torch.randn(5, 2, 2))
    with pytest.raises(RuntimeError, match="Expected hidden"):
        m(torch.randn(5, 2, 3), (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)))
    with pytest.raises(ValueError, match="proj_size"):
        ft.LSTM(3, 4, proj_size=4)
    assert repr(ft.GRU(3, 4, num_layers=2)) == "GRU(3, 4, num_layers=2)"
    rnn = ft.RNN(3, 4, 2, "relu")
    assert not isinstance(rnn, nn.RNNBase)
    assert rnn.nonlinearity == "relu" and rnn.num_layers == 2 and rnn.mode == "RNN_RELU"
    assert repr(rnn) == repr(nn.RNN(3, 4, 2, "relu"))
    with pytest.raises(RuntimeError, match="input_size"):
        rnn(torch.randn(5, 2, 2))
    with pytest.raises(RuntimeError, match="Expected hidden"):
        rnn(torch.randn(5, 2, 3), torch.zeros(2, 3, 4))
    with pytest.raises(RuntimeError, match="hx should also be 3-D"):
        rnn(torch.randn(5, 2, 3), torch.zeros(2, 4))
    for bad in (dict(proj_size=2), dict(nonlinearity="sigmoid")):     # as torch.nn.RNN
        with pytest.raises(ValueError) as theirs:
            nn.RNN(3, 4, **bad)
        with pytest.raises(ValueError, match=str(theirs.value)):
            ft.RNN(3, 4, **bad)


def test_lstm_fallbacks_run_torch():
    ours, theirs = _module_pair(nn.LSTM, ft.LSTM, 3, 5, proj_size=2)
    x = r(4, 2, 3)
    close(ours(x)[0], theirs(x)[0], "proj_size")
    assert ft.fallback_counts() == {"lstm": 1}
    packed = nn.utils.rnn.pack_padded_sequence(r(4, 2, 3), [4, 2])
    ours, theirs = _module_pair(nn.GRU, ft.GRU, 3, 5)
    close(ours(packed)[0].data, theirs(packed)[0].data, "PackedSequence")
    assert ft.fallback_counts() == {"lstm": 1, "gru": 1}
    ours, theirs = _module_pair(nn.RNN, ft.RNN, 3, 5, nonlinearity="relu")
    close(ours(packed)[0].data, theirs(packed)[0].data, "PackedSequence")
    assert ft.fallback_counts() == {"lstm": 1, "gru": 1, "rnn": 1}
    x = r(4, 2, 3).to(torch.bfloat16)                      # a dtype fastnn does not run
    assert torch.equal(ours.to(torch.bfloat16)(x)[0], theirs.to(torch.bfloat16)(x)[0])
    assert ft.fallback_counts() == {"lstm": 1, "gru": 1, "rnn": 2}


def test_lstm_dropout_between_layers_matches_torch():
    ours, theirs = _module_pair(nn.LSTM, ft.LSTM, 3, 4, num_layers=3, dropout=0.5)
    x = r(5, 2, 3)
    torch.manual_seed(1)
    y1 = ours(x)[0]
    torch.manual_seed(1)
    y2 = theirs(x)[0]
    close(y1, y2, "training with dropout")
    ours.eval()
    theirs.eval()
    close(ours(x)[0], theirs(x)[0], "eval")


def test_fastnn_only_modules():
    torch.manual_seed(0)
    banded = ft.BandedLinear(6, 5, num_lower=1, num_upper=2).double()
    mask = band_mask(5, 6, 1, 2)
    assert not banded.weight[~mask].any()           # initialised inside the band
    x = r(3, 6)
    close(banded(x), F.linear(x, banded.weight * mask, banded.bias), "BandedLinear")
    assert list(banded.state_dict()) == ["weight", "bias"]
    m = torch.rand(5, 6) < 0.5
    masked = ft.MaskedLinear(6, 5, m).double()
    close(masked(x), F.linear(x, masked.weight * m, masked.bias), "MaskedLinear")
    assert list(masked.state_dict()) == ["weight", "bias", "mask"]
    with pytest.raises(ValueError, match="mask"):
        ft.MaskedLinear(6, 5, torch.ones(6, 5))
    local = ft.LocallyConnected2d(2, 3, (6, 5), 3, stride=1, padding=1).double()
    assert tuple(local.weight.shape) == (6, 5, 3, 18) and tuple(local.bias.shape) == (6, 5, 3)
    xi = r(2, 2, 6, 5)
    ref = ft._local_torch(xi, local.weight, local.bias, (3, 3), (1, 1), [1, 1, 1, 1])
    close(local(xi), ref, "LocallyConnected2d")
    assert ft.fallback_counts() == {}


# ====================================================================== swap
class Every(nn.Module):
    """A model with every module type swap() replaces (and some it keeps)."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(2, 3, 3, padding=1)
        self.pool1d = nn.MaxPool1d(2)
        self.avg1d = nn.AvgPool1d(3, 1, 1)
        self.conv = nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(2)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(3, 1, 1)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.leaky = nn.LeakyReLU(0.1)
        self.unfold = nn.Unfold(2, stride=2)
        self.fold = nn.Fold((8, 8), 2, stride=2)
        self.sig = nn.Sigmoid()
        self.tanh = nn.Tanh()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.gru = nn.GRU(4, 4, num_layers=2, bidirectional=True)
        self.rnn = nn.RNN(8, 8, nonlinearity="relu")
        self.lstm_cell = nn.LSTMCell(8, 5)
        self.gru_cell = nn.GRUCell(5, 5)
        self.head = nn.Linear(2 * 8 * 8 + 5, 6)
        self.softmax = nn.Softmax(dim=1)
        self.log_softmax = nn.LogSoftmax(dim=1)
        self.shared = nn.Tanh()
        self.block = nn.Sequential(self.shared, nn.Identity(), self.shared)

    def forward(self, img, seq):
        s = self.avg1d(self.pool1d(self.conv1d(seq)))                   # (N, 3, 4)
        s, _ = self.lstm(s.transpose(1, 2))                               # (N, 4, 4)
        s, _ = self.gru(s.transpose(0, 1))                                # (4, N, 8)
        s, _ = self.rnn(s)                                                # (4, N, 8)
        h, c = self.lstm_cell(s[-1])
        h = self.gru_cell(self.block(h), h)
        z = self.pool(self.act(self.conv(self.bn(img))))                  # (N, 4, 4, 4)
        z = self.leaky(self.up(self.avg(z)))                              # (N, 2, 8, 8)
        z = self.fold(self.sig(self.unfold(z))) + self.tanh(z)
        out = self.head(torch.cat([z.flatten(1), h], 1))
        return self.log_softmax(out) + self.softmax(out)


def _every_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 2, 8, 8, generator=g, dtype=dtype), \
        torch.randn(3, 2, 8, generator=g, dtype=dtype)


def test_swap_replaces_every_supported_module_sharing_parameters():
    torch.manual_seed(0)
    model = Every()
    fast = ft.swap(model)
    assert fast is not model
    kept = {"bn": nn.BatchNorm2d, "head": nn.Linear}
    for name, m in list(fast.named_modules())[1:]:
        if name in kept:
            assert type(m) is kept[name]
        elif name and type(m) not in (nn.Sequential, nn.Identity):
            assert type(m).__module__ == "fastnn.torch", (name, type(m))
    for name, m in list(model.named_modules())[1:]:       # the original is untouched
        assert type(m).__module__.startswith("torch.nn"), name
    assert fast.block[0] is fast.block[2] is fast.shared  # shared modules stay shared
    assert list(fast.state_dict()) == list(model.state_dict())
    same = ft.swap(model, inplace=True)
    assert same is model and type(model.conv) is ft.Conv2d
    assert all(p is q for p, q in zip(model.parameters(), same.parameters()))


def test_swap_shares_the_parameter_objects():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LSTMCell(2, 2))
    params = list(model.parameters())
    fast = ft.swap(model, inplace=True)
    assert [id(p) for p in fast.parameters()] == [id(p) for p in params]
    lstm = nn.LSTM(2, 3, num_layers=2)
    twin = ft.swap(lstm, inplace=True)
    assert type(twin) is ft.LSTM
    assert all(getattr(twin, n) is getattr(lstm, n) for n in lstm._flat_weights_names)
    rnn = nn.RNN(2, 3, nonlinearity="relu", batch_first=True)
    twin = ft.swap(rnn)
    assert type(twin) is ft.RNN and twin.nonlinearity == "relu" and twin.batch_first
    x = r(2, 4, 2, dtype=torch.float32)
    close(twin(x)[0], rnn(x)[0], "swapped RNN")


def test_swap_keeps_unsupported_configurations():
    model = nn.Sequential(nn.LSTM(3, 5, proj_size=2), nn.Linear(2, 2))
    fast = ft.swap(model)
    assert type(fast[0]) is nn.LSTM and type(fast[1]) is nn.Linear

    class MyConv(nn.Conv2d):             # subclasses may override forward: kept
        pass
    assert type(ft.swap(MyConv(1, 1, 1))) is MyConv


def test_swapped_model_same_outputs_gradients_and_training():
    torch.manual_seed(0)
    model = Every()
    fast = ft.swap(model)
    img, seq = _every_inputs()
    target = torch.tensor([0, 5, 2])
    loss_fn, fast_loss = nn.CrossEntropyLoss(), ft.swap(nn.CrossEntropyLoss())
    assert type(fast_loss) is ft.CrossEntropyLoss
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fopt = torch.optim.SGD(fast.parameters(), lr=0.1)
    losses, flosses = [], []
    for step in range(3):
        opt.zero_grad()
        fopt.zero_grad()
        y, fy = model(img, seq), fast(img, seq)
        if step == 0:
            close(fy, y, "output")
        loss, floss = loss_fn(y, target), fast_loss(fy, target)
        loss.backward()
        floss.backward()
        if step == 0:
            for (n, p), q in zip(model.named_parameters(), fast.parameters()):
                close(q.grad, p.grad, f"gradient of {n}")
        opt.step()
        fopt.step()
        losses.append(loss.item())
        flosses.append(floss.item())
    assert flosses[-1] < flosses[0]                       # it trains
    np.testing.assert_allclose(flosses, losses, rtol=1e-4)
    assert ft.fallback_counts() == {}


def _tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(4, 3), nn.LogSoftmax(1))


def test_compile_fullgraph_swapped_model_trains():
    # aot_eager: Dynamo (fullgraph) + AOT autograd through the fake kernels and the
    # backward ops, without Inductor's code generation (which would dominate the time).
    model = _tiny_cnn()
    fast = ft.swap(model)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 1, 8, 8)
    y, ref = compiled(x), model(x)
    close(y, ref, "compiled output")
    y.sum().backward()
    ref.sum().backward()
    for (n, p), q in zip(model.named_parameters(), fast.parameters()):
        close(q.grad, p.grad, f"compiled gradient of {n}")
    lstm = ft.LSTM(3, 4, batch_first=True)
    out, (h, c) = torch.compile(lstm, fullgraph=True, backend="aot_eager")(torch.randn(2, 5, 3))
    out.sum().backward()
    assert lstm.weight_ih_l0.grad is not None
    rnn = ft.RNN(3, 4, nonlinearity="relu")
    x = torch.randn(5, 2, 3)
    out, h = torch.compile(rnn, fullgraph=True, backend="aot_eager")(x)
    close(out, rnn(x)[0], "compiled RNN")
    (out.sum() + h.sum()).backward()
    assert rnn.weight_hh_l0.grad is not None


def test_compile_fullgraph_inductor_inference():
    fast = ft.swap(_tiny_cnn())
    compiled = torch.compile(fast, fullgraph=True)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        close(compiled(x), fast(x), "inductor output")


# ====================================================================== fallback, strict
def test_fallback_counts_and_results():
    x = torch.arange(-2, 3)
    assert torch.equal(ft.relu(x), F.relu(x))
    h = torch.randn(2, 3, 5, 5).to(torch.bfloat16)
    w = torch.randn(4, 3, 3, 3).to(torch.bfloat16)
    assert torch.equal(ft.conv2d(h, w), F.conv2d(h, w))
    meta = torch.empty(2, 3, 5, 5, device="meta")
    assert ft.max_pool2d(meta, 2).device.type == "meta"
    assert ft.fallback_counts() == {"relu": 1, "conv2d": 1, "max_pool2d": 1}
    counts = ft.fallback_counts()
    counts["relu"] = 99                                    # a copy
    assert ft.fallback_counts()["relu"] == 1
    ft.reset_fallback_counts()
    assert ft.fallback_counts() == {}
    with pytest.raises(RuntimeError):                      # mixed dtypes: PyTorch's error
        ft.conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 2, 2, dtype=D64))
    m = ft.Conv2d(3, 4, 3, device="meta")
    assert m(meta).shape == (2, 4, 3, 3)
    assert ft.fallback_counts() == {"conv2d": 2}


@pytest.mark.parametrize("call,match", [
    (lambda: ft.relu(torch.arange(3)), r"fastnn.torch.relu: input has dtype torch.int64"),
    (lambda: ft.conv2d(torch.empty(1, 1, 3, 3, device="meta"), torch.empty(1, 1, 2, 2,
                                                                           device="meta")),
     r"input is on meta"),
    (lambda: ft.softmax(torch.randn(2, 3, dtype=torch.float16), 1), r"dtype torch.float16"),
    (lambda: ft.cross_entropy(torch.randn(3, 2), torch.rand(3, 2, requires_grad=True)),
     r"target requires grad"),
    (lambda: ft.LSTM(3, 5, proj_size=2)(torch.randn(2, 1, 3)), r"proj_size"),
    (lambda: ft.masked_linear(torch.randn(2, 3), torch.randn(2, 3),
                              torch.ones(2, 3, requires_grad=True)), r"mask requires grad"),
])
def test_strict_raises_naming_the_reason(call, match):
    with ft.strict():
        with pytest.raises(ft.FallbackError, match=match):
            call()
    assert ft.fallback_counts() == {}
    call()                                                 # outside: falls back
    assert sum(ft.fallback_counts().values()) == 1


def test_strict_nests_and_allows_what_fastnn_runs():
    with ft.strict():
        with ft.strict():
            ft.relu(torch.randn(3))
        with pytest.raises(ft.FallbackError):
            ft.relu(torch.arange(3))
        ft.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 2, 2))
    ft.relu(torch.arange(3))
    assert ft.fallback_counts() == {"relu": 1}


def test_float32_twins_within_tolerance():
    f32 = torch.float32
    x, w, b = r(2, 3, 6, 6, dtype=f32), r(4, 3, 3, 3, dtype=f32), r(4, dtype=f32)
    _check_twin(ft.conv2d, F.conv2d, (x, w, b), dict(padding=1))
    _check_twin(ft.max_pool2d, F.max_pool2d, (x, 2))
    _check_twin(ft.log_softmax, F.log_softmax, (x, 1))
    ours, theirs = _module_pair(nn.LSTM, ft.LSTM, 3, 4)
    ours.float()
    theirs.float()
    close(ours(r(5, 2, 3, dtype=f32))[0], theirs(r(5, 2, 3, dtype=f32))[0], "LSTM float32")
    for nonlinearity in ("tanh", "relu"):
        ours, theirs = _module_pair(nn.RNN, ft.RNN, 3, 4, nonlinearity=nonlinearity,
                                    batch_first=True)
        ours.float()
        theirs.float()
        x, h0 = r(2, 5, 3, dtype=f32), r(1, 2, 4, dtype=f32)
        _check_twin(ours, theirs, (x, h0))
        g1 = torch.autograd.grad(ours(x, h0)[0].sum(), list(ours.parameters()))
        g2 = torch.autograd.grad(theirs(x, h0)[0].sum(), list(theirs.parameters()))
        for k, (u, v) in enumerate(zip(g1, g2)):
            close(u, v, f"RNN float32 gradient {k}")


# ====================================================================== the module itself
def test_import_torch_inside_is_pytorch_and_fastnn_does_not_import_the_adapter():
    assert ft.torch is torch
    code = "import sys, fastnn; assert 'fastnn.torch' not in sys.modules; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_import_error_without_torch_names_the_extra():
    code = ("import sys\nsys.modules['torch'] = None\n"
            "try:\n    import fastnn.torch\nexcept ImportError as e:\n    print(e)\n"
            "else:\n    print('imported')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "fastnn[torch]"' in proc.stdout, proc.stdout
    assert "PyTorch >= 2.4" in proc.stdout


def test_plain_eager_calls_and_dispatched_calls_agree():
    # Without autograd, modes or tracing the functional twins run the op's CPU kernel
    # directly; under a dispatch mode (as under fake tensors or torch.compile) the
    # registered op is dispatched, and both give the same result.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x, w = r(2, 3, 5, 5, grad=False), r(4, 3, 3, 3, grad=False)
    direct = [ft.relu(x), ft.conv2d(x, w, padding=1)]
    with Log() as log:
        dispatched = [ft.relu(x), ft.conv2d(x, w, padding=1)]
    assert "fastnn.relu.default" in log.ops and "fastnn.conv2d.default" in log.ops
    for a, b in zip(direct, dispatched):
        assert torch.equal(a, b)


def test_tensor_left_from_a_finished_transform_takes_the_registered_op():
    # A tensor that escapes torch.func.grad is a dead functorch wrapper: the eager fast
    # path (which calls Function.apply's C part and skips its unwrapping) must not take
    # it; the registered op gets it, unwrapped, and computes the plain result.
    leaked = []

    def f(t):
        leaked.append(t)
        return t.sum()

    x = r(3, 5, grad=False)
    torch.func.grad(f)(x)
    (dead,) = leaked
    assert torch._C._functorch.is_functorch_wrapped_tensor(dead)
    assert ft._eager_mode((dead,)) == 0
    assert torch.equal(ft.relu(dead), torch.relu(x))
    xg = x.clone().requires_grad_()
    assert ft._eager_mode((xg,)) == 2 and ft._eager_mode((x,)) == 1
    (gx,) = torch.autograd.grad(ft.relu(xg).sum(), xg)
    assert torch.equal(gx, (x > 0).to(x.dtype))
