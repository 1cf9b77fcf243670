"""PyTorch adapter: fastnn's kernels as ``torch.ops.fastnn.*`` custom ops, functional and
``nn.Module`` twins of ``torch.nn``, and :func:`swap` for whole models.

Import it explicitly (``import fastnn.torch``; ``import fastnn`` never does); it needs
PyTorch >= 2.4 (``pip install "fastnn[torch]"``).

Three layers
------------
Custom ops
    Every kernel family is a ``torch.library.custom_op`` in the namespace ``fastnn``
    (``torch.ops.fastnn.conv2d``, ...; :func:`registered_ops` lists them) with a fake
    (meta) implementation and an autograd formula whose backward is fastnn's
    ``*_backward`` kernel, itself registered as an op (``torch.ops.fastnn.conv2d_backward``,
    ...), so the ops work under ``torch.compile`` and pass ``torch.library.opcheck``.
    The ops take explicit arguments (lists of ints, asymmetric padding as
    ``[top, bottom, left, right]``) and CPU float32/float64 tensors of one dtype.
    Tensors reach fastnn as zero-copy NumPy views (``t.detach().numpy()``, any strides)
    and results come back through ``torch.from_numpy``; no output shares memory with an
    input.
Functional twins
    :func:`conv1d`, :func:`conv2d`, ... :func:`fold` take what the
    ``torch.nn.functional`` function of the same name takes (unbatched inputs, string
    padding, 1-element tuples, ``inplace=``), normalise it and call the op. Plus
    :func:`banded_linear`, :func:`masked_linear` and :func:`locally_connected2d`, which
    have no PyTorch counterpart and use ``nn.Linear``'s ``(out, in)`` weight layout.
Modules
    :class:`Conv2d`, :class:`MaxPool2d`, ... subclass the ``torch.nn`` class and only
    override the forward, so constructor arguments, ``state_dict`` keys and
    initialisation are PyTorch's. :class:`LSTM`, :class:`GRU` and :class:`RNN` are plain
    ``nn.Module`` subclasses with ``torch.nn``'s parameter names (Dynamo refuses
    ``nn.RNNBase`` subclasses under ``fullgraph=True``). :func:`swap` puts the twins into a model.

Eager calls
    A plain eager call (CPU tensors, no dispatch or function mode, no transform, not
    being compiled) skips the dispatcher: without autograd it runs the op's CPU kernel
    directly, with autograd the op's own setup and backward as a
    ``torch.autograd.Function`` -- the same code ``torch.compile`` and opcheck see, at a
    fraction of the per-call cost, which matters for small tensors.

Fallback
--------
A call fastnn cannot run runs on PyTorch's own operator instead and is counted in
:func:`fallback_counts`; inside ``with strict():`` it raises :class:`FallbackError`
naming the reason. Under ``torch.compile`` the decision is made (and counted) once,
while tracing. What falls back: tensors not on the CPU, dtypes other than float32 and
float64 (or mixed dtypes), sparse layouts, argument forms PyTorch
itself refuses (so that its error is raised), probability targets or class weights of
``cross_entropy`` that require grad, a mask of ``masked_linear`` that requires grad,
``LSTM(proj_size > 0)`` and ``PackedSequence`` inputs of :class:`LSTM` / :class:`GRU` /
:class:`RNN`,
and -- with an older fastnn -- the pooling arguments ``dilation``, ``ceil_mode``,
``count_include_pad=True`` with padding and ``divisor_override``, and ``cross_entropy``'s
``weight``, ``label_smoothing``, (N, C, d1, ...) logits and labels equal to
``ignore_index`` (detected from the installed fastnn's signatures at import).

Recurrent backward
------------------
``custom_op`` outputs must be tensors and an op must be a pure function of its inputs,
so the :class:`fastnn.RecurrentCache` of a training forward cannot be kept on the side
(a registry keyed by a token would not survive fake-tensor tracing, AOT compilation or
opcheck's comparisons of eager and compiled runs). Instead the forward op returns the
cache's arrays as extra, non-differentiable outputs; autograd saves them like any
other tensor (freed with the graph, traced by ``torch.compile``), and the backward op
rebuilds the cache from them and calls :func:`fastnn.lstm_backward` /
:func:`fastnn.gru_backward` / :func:`fastnn.simple_rnn_backward` -- no forward is
recomputed. Without gradients the forward
runs with ``training=False`` and those outputs are empty.

Examples
--------
>>> import torch, fastnn.torch as ft
>>> x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
>>> y = ft.conv2d(x, w, padding="same")
>>> y.shape, bool(torch.allclose(y, torch.nn.functional.conv2d(x, w, padding="same"), atol=1e-5))
(torch.Size([2, 4, 8, 8]), True)
"""
import collections
import contextlib
import copy
import inspect
import math
import threading
from typing import List, Optional, Tuple

import numpy as np

_EXTRA = 'pip install "fastnn[torch]"'
try:
    import torch
except ImportError as exc:  # also when sys.modules["torch"] is None
    raise ImportError(f"fastnn.torch needs PyTorch >= 2.4, which is not installed: {_EXTRA}") \
        from exc
if not hasattr(torch, "library") or not hasattr(torch.library, "custom_op") \
        or torch.__version__ < "2.4":
    raise ImportError(f"fastnn.torch needs PyTorch >= 2.4, found {torch.__version__}: "
                      f"{_EXTRA}")

import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import fastnn  # noqa: E402
from fastnn import convert  # noqa: E402

__all__ = [
    "fallback_counts", "reset_fallback_counts", "strict", "FallbackError", "registered_ops",
    "conv1d", "conv2d", "conv_transpose2d", "max_pool1d", "max_pool2d", "avg_pool1d",
    "avg_pool2d", "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax",
    "cross_entropy", "unfold", "fold", "banded_linear", "masked_linear", "locally_connected2d",
    "Conv1d", "Conv2d", "ConvTranspose2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "CrossEntropyLoss",
    "Unfold", "Fold", "LSTM", "LSTMCell", "GRU", "GRUCell", "RNN", "BandedLinear",
    "MaskedLinear", "LocallyConnected2d", "swap",
]

_FLOATS = (torch.float32, torch.float64)
_STRIDED = torch.strided


# ------------------------------------------------------------------ what fastnn offers
def _accepts(fn, *names):
    """Whether the installed fastnn function takes all these keyword arguments."""
    params = inspect.signature(fn).parameters
    return all(n in params for n in names)


# Pooling and cross-entropy arguments that newer fastnn versions take; without them the
# calls that need them run on PyTorch (their defaults are always handled here).
_MAX_POOL_ARGS = {a: all(_accepts(f, a) for f in (fastnn.max_pool2d, fastnn.max_pool2d_backward,
                                                    fastnn.max_pool1d, fastnn.max_pool1d_backward))
                  for a in ("dilation", "ceil_mode")}
_AVG_POOL_ARGS = {a: all(_accepts(f, a) for f in (fastnn.avg_pool2d, fastnn.avg_pool2d_backward,
                                                    fastnn.avg_pool1d, fastnn.avg_pool1d_backward))
                  for a in ("ceil_mode", "count_include_pad")}
_AVG_POOL_ARGS["divisor_override"] = all(
    _accepts(f, "divisor_override") for f in (fastnn.avg_pool2d, fastnn.avg_pool2d_backward))
_XENT_ARGS = {a: _accepts(fastnn.softmax_cross_entropy, a)
              and _accepts(fastnn.softmax_cross_entropy_backward, a)
              for a in ("weight", "ignore_index", "label_smoothing")}


def _probe_spatial_xent():
    try:
        fastnn.softmax_cross_entropy(np.zeros((1, 2, 1)), np.zeros((1, 1), np.int64))
        fastnn.softmax_cross_entropy_backward(1.0, np.zeros((1, 2, 1)), np.zeros((1, 1), np.int64))
    except (ValueError, TypeError):
        return False
    return True


_XENT_SPATIAL = _probe_spatial_xent()


# ------------------------------------------------------------------ fallback bookkeeping
class FallbackError(RuntimeError):
    """Raised inside :func:`strict` by a call that fastnn cannot run."""


_COUNTS = collections.Counter()
_LOCAL = threading.local()


def fallback_counts():
    """How many calls ran on PyTorch's operator instead of fastnn, by op name.

    Returns
    -------
    dict
        ``{op name: count}`` (a copy), e.g. ``{"conv2d": 3}``; ops that never fell back
        are absent. Under ``torch.compile`` a call site counts once, when traced.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.reset_fallback_counts()
    >>> _ = ft.relu(torch.arange(3))          # an integer tensor: PyTorch runs it
    >>> ft.fallback_counts()
    {'relu': 1}
    """
    return dict(_COUNTS)


def reset_fallback_counts():
    """Set every count of :func:`fallback_counts` back to zero."""
    _COUNTS.clear()


@contextlib.contextmanager
def strict():
    """Inside this context a call fastnn cannot run raises :class:`FallbackError`
    (naming the argument and why) instead of running on PyTorch. Per thread; nestable.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> with ft.strict():
    ...     ft.relu(torch.arange(3))
    Traceback (most recent call last):
    ...
    fastnn.torch.FallbackError: fastnn.torch.relu: input has dtype torch.int64 (fastnn runs ...
    """
    _LOCAL.depth = getattr(_LOCAL, "depth", 0) + 1
    try:
        yield
    finally:
        _LOCAL.depth -= 1


def _fallback(name, reason, fn, *args, **kwargs):
    """Run PyTorch's operator for a call fastnn cannot take (or raise in strict mode)."""
    if getattr(_LOCAL, "depth", 0):
        raise FallbackError(f"fastnn.torch.{name}: {reason}; strict() forbids running it on "
                            f"PyTorch")
    _COUNTS[name] += 1
    return fn(*args, **kwargs)


def _why_not(**tensors):
    """Why fastnn cannot take these tensors (None: it can). None values are skipped."""
    dtype = None
    for t in tensors.values():      # the common case first, without building messages
        if t is None:
            continue
        if type(t) not in _PLAIN or not t.is_cpu or t.layout is not _STRIDED \
                or t.dtype not in _FLOATS or (dtype is not None and t.dtype is not dtype):
            break
        dtype = t.dtype
    else:
        return None
    dtype = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            return f"{name} is a {type(t).__name__}, not a tensor"
        if t.device.type != "cpu":
            return f"{name} is on {t.device} (fastnn runs on the CPU)"
        if t.layout != torch.strided:
            return f"{name} has layout {t.layout} (fastnn takes dense tensors)"
        if t.dtype not in _FLOATS:
            return f"{name} has dtype {t.dtype} (fastnn runs float32 and float64)"
        if dtype is None:
            dtype = t.dtype
        elif t.dtype != dtype:
            return f"mixed dtypes ({name} is {t.dtype}, others {dtype})"
    return None


def _ints(value, n):
    """``value`` as an n-tuple of ints (an int or a 1-element sequence is repeated, as
    PyTorch does); None when it is not that."""
    if isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) == 1:
            value = tuple(value) * n
        if len(value) == n and all(isinstance(v, (int, torch.SymInt))
                                   and not isinstance(v, bool) for v in value):
            return tuple(value)
    return None


def _bad(name, value):
    return f"{name}={value!r} is not a form fastnn.torch parses"


# ------------------------------------------------------------------ NumPy <-> torch
def _np(t):
    """A zero-copy NumPy view of a CPU tensor (None stays None)."""
    if t is None:
        return None
    if t.requires_grad:
        t = t.detach()
    try:
        return t.numpy()
    except RuntimeError:  # a lazily negated view: materialise it
        return t.detach().resolve_neg().resolve_conj().numpy()


def _fresh(arrays, inputs):
    """``arrays`` as tensors sharing no memory with ``inputs`` or with each other, each
    C-contiguous (the layout the fake implementations promise)."""
    out = []
    for a in arrays:            # the common case: each array allocated by the call
        if a.base is not None:
            break
        flags = a.flags
        if not (flags.c_contiguous and flags.writeable):
            break
        out.append(torch.from_numpy(a))
    else:
        return out
    out, seen = [], None
    for a in arrays:
        # An array that owns its data was allocated during the call: it cannot overlap
        # the (live) inputs or another output. Views are checked.
        if a.base is not None or not (a.flags.c_contiguous and a.flags.writeable):
            if seen is None:
                seen = [b for b in inputs if b is not None] + \
                    [t.numpy() for t in out]
            if not (a.flags.c_contiguous and a.flags.writeable) or any(
                    np.may_share_memory(a, b) for b in seen):
                a = np.array(a, order="C", copy=True)
            seen.append(a)
        elif seen is not None:
            seen.append(a)
        out.append(torch.from_numpy(a))
    return out


def _fresh_t(a, inputs):
    """A tensor holding ``a``'s last two axes swapped, as a strided view of C-contiguous
    memory (the (out, in) gradient of an (in, out) kernel without a transposing copy)."""
    (t,) = _fresh([a], inputs)
    return t.transpose(-1, -2) if t.dim() >= 2 else t


def _empty_t(like, shape):
    """Fake of :func:`_fresh_t`: ``shape`` with the strides of a transposed C array."""
    *lead, r, c = shape
    base = like.new_empty(tuple(lead) + (c, r))
    return base.transpose(-1, -2)


def _empty(x):
    """An empty tensor standing for a gradient nobody asked for."""
    return x.new_empty((0,))


def _op(name):
    make = torch.library.custom_op(f"fastnn::{name}", mutates_args=(), device_types="cpu")

    def register(fn):
        op = make(fn)
        op._fastnn_impl = fn
        op._fastnn_eager = op._fastnn_apply = None    # set by _register for ops with a backward
        return op
    return register


_PLAIN = (Tensor, nn.Parameter)
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_transforms = torch._C._functorch.peek_interpreter_stack
_is_compiling = torch.compiler.is_compiling
# A tensor left over from a finished functorch transform ("dead wrapper"): Function.apply
# unwraps those, so such a call takes the registered op.
_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", lambda t: False)
# Function.apply's C part: the Python classmethod around it binds arguments and unwraps
# dead functorch wrappers (~0.8 us a call); _eager_mode has ruled out both.
_C_APPLY = torch._C._FunctionBase.__dict__.get("apply")


def _eager_mode(args):
    """How a call may skip the dispatcher: 0 -- it may not (a mode, transform or tracer
    is active, or a tensor subclass is involved); 1 -- plain tensors and no autograd
    needed: the op's CPU kernel runs directly; 2 -- plain tensors that need autograd:
    the op's own forward, setup and backward run as a torch.autograd.Function."""
    if _dispatch_modes() or _function_modes() or _transforms() is not None:
        return 0
    grad = torch.is_grad_enabled()
    mode = 1
    for a in args:
        if isinstance(a, Tensor):
            if type(a) not in _PLAIN or _wrapped(a):
                return 0
            if grad and a.requires_grad:
                mode = 2
    return mode


def _run(op, *args):
    """Call a fastnn custom op. Plain eager calls skip the dispatcher and custom_op's
    autograd wrapper (together ~10-20 us a call, more than a small kernel) but run the
    same implementation, setup and backward; everything else -- torch.compile, fake
    tensors, vmap, dispatch and function modes, subclasses -- calls the registered op."""
    if not _is_compiling():
        mode = _eager_mode(args)
        if mode == 1:
            return op._fastnn_impl(*args)
        if mode == 2 and op._fastnn_eager is not None:
            return op._fastnn_apply(*args)
    return op(*args)


def _eager_function(op, setup_context, backward):
    """The op's autograd formula as a torch.autograd.Function around its CPU kernel."""
    impl = op._fastnn_impl

    # forward(ctx, ...) style: Function.apply binds the arguments with inspect (~50 us)
    # when a separate setup_context is defined.
    class EagerFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    EagerFunction.__name__ = EagerFunction.__qualname__ = f"fastnn_{op._name}"
    return EagerFunction


_REGISTERED = []


def _register(fwd, bwd, backward, setup_context):
    fwd.register_autograd(backward, setup_context=setup_context)
    fwd._fastnn_eager = eager = _eager_function(fwd, setup_context, backward)
    fwd._fastnn_apply = eager.apply if _C_APPLY is None else _C_APPLY.__get__(None, eager)
    _REGISTERED.extend(op for op in (fwd, bwd) if op is not None)


def registered_ops():
    """Names of the ``torch.ops.fastnn`` custom ops this module registers.

    Examples
    --------
    >>> import fastnn.torch as ft
    >>> "conv2d" in ft.registered_ops() and "conv2d_backward" in ft.registered_ops()
    True
    """
    return [op._name for op in _REGISTERED]


def _pads2(p):
    """[top, bottom, left, right] in fastnn's form: one int when all four agree, (h, w)
    when symmetric, else ((top, bottom), (left, right)) -- the shortest form, which
    fastnn parses fastest."""
    if p[0] == p[1] and p[2] == p[3]:
        return p[0] if p[0] == p[2] else (p[0], p[2])
    return ((p[0], p[1]), (p[2], p[3]))


def _pair(v):
    """A list of two ints as one int when they agree (fastnn parses that fastest)."""
    return v[0] if v[0] == v[1] else (v[0], v[1])


def _conv_out(size, k, s, p_total, d):
    return (size + p_total - d * (k - 1) - 1) // s + 1


# ================================================================== convolution ops
@_op("conv2d")
def _conv2d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
               padding: List[int], dilation: List[int], groups: int) -> Tensor:
    xs, ws, bs = _np(x), _np(weight), _np(bias)
    y = fastnn.conv2d(xs, ws, bs, stride=_pair(stride), padding=_pads2(padding),
                      dilation=_pair(dilation), groups=groups)
    return _fresh([y], [xs, ws, bs])[0]


@_conv2d_op.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    N, _, H, W = x.shape
    K, _, kh, kw = weight.shape
    return x.new_empty((N, K, _conv_out(H, kh, stride[0], padding[0] + padding[1], dilation[0]),
                        _conv_out(W, kw, stride[1], padding[2] + padding[3], dilation[1])))


@_op("conv2d_backward")
def _conv2d_bwd_op(grad_y: Tensor, x: Tensor, weight: Tensor, stride: List[int],
                   padding: List[int], dilation: List[int], groups: int, need_x: bool,
                   need_weight: bool, need_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    gs, xs, ws = _np(grad_y), _np(x), _np(weight)
    gx, gw, gb = fastnn.conv2d_backward(
        gs, xs, ws, stride=_pair(stride), padding=_pads2(padding), dilation=_pair(dilation),
        groups=groups, bias=need_bias, need_input_grad=need_x, need_weight_grad=need_weight)
    e = np.empty(0, xs.dtype)
    return tuple(_fresh([e if g is None else g for g in (gx, gw, gb)], [gs, xs, ws]))


@_conv2d_bwd_op.register_fake
def _(grad_y, x, weight, stride, padding, dilation, groups, need_x, need_weight, need_bias):
    return (torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else _empty(x),
            torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight
            else _empty(x),
            x.new_empty((weight.shape[0],)) if need_bias else _empty(x))


def _conv_setup(ctx, inputs, output):
    x, weight, bias = inputs[:3]
    ctx.save_for_backward(x, weight)
    ctx.args = tuple(inputs[3:])
    ctx.has_bias = bias is not None


def _conv_backward(op):
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, gw, gb = _run(op, grad_y, x, weight, *ctx.args, need[0], need[1],
                        ctx.has_bias and need[2])
        return ((gx if need[0] else None, gw if need[1] else None,
                 gb if ctx.has_bias and need[2] else None) + (None,) * len(ctx.args))
    return backward


_register(_conv2d_op, _conv2d_bwd_op, _conv_backward(_conv2d_bwd_op), _conv_setup)


@_op("conv1d")
def _conv1d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
               padding: List[int], dilation: List[int], groups: int) -> Tensor:
    xs, ws, bs = _np(x), _np(weight), _np(bias)
    y = fastnn.conv1d(xs, ws, bs, stride=stride[0], padding=(padding[0], padding[1]),
                      dilation=dilation[0], groups=groups)
    return _fresh([y], [xs, ws, bs])[0]


@_conv1d_op.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    N, _, L = x.shape
    K, _, k = weight.shape
    return x.new_empty((N, K, _conv_out(L, k, stride[0], padding[0] + padding[1], dilation[0])))


@_op("conv1d_backward")
def _conv1d_bwd_op(grad_y: Tensor, x: Tensor, weight: Tensor, stride: List[int],
                   padding: List[int], dilation: List[int], groups: int, need_x: bool,
                   need_weight: bool, need_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    gs, xs, ws = _np(grad_y), _np(x), _np(weight)
    gx, gw, gb = fastnn.conv1d_backward(
        gs, xs, ws, stride=stride[0], padding=(padding[0], padding[1]), dilation=dilation[0],
        groups=groups, bias=need_bias, need_input_grad=need_x, need_weight_grad=need_weight)
    e = np.empty(0, xs.dtype)
    return tuple(_fresh([e if g is None else g for g in (gx, gw, gb)], [gs, xs, ws]))


@_conv1d_bwd_op.register_fake
def _(grad_y, x, weight, stride, padding, dilation, groups, need_x, need_weight, need_bias):
    return (torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else _empty(x),
            torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight
            else _empty(x),
            x.new_empty((weight.shape[0],)) if need_bias else _empty(x))


_register(_conv1d_op, _conv1d_bwd_op, _conv_backward(_conv1d_bwd_op), _conv_setup)


@_op("conv_transpose2d")
def _convt2d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                padding: List[int], output_padding: List[int], dilation: List[int],
                groups: int) -> Tensor:
    xs, ws, bs = _np(x), _np(weight), _np(bias)
    y = fastnn.conv_transpose2d(xs, ws, bs, stride=_pair(stride), padding=_pair(padding),
                                output_padding=_pair(output_padding), dilation=_pair(dilation),
                                groups=groups)
    return _fresh([y], [xs, ws, bs])[0]


def _convt_out(size, k, s, p, op, d):
    return (size - 1) * s - 2 * p + d * (k - 1) + op + 1


@_convt2d_op.register_fake
def _(x, weight, bias, stride, padding, output_padding, dilation, groups):
    N, _, H, W = x.shape
    _, Kg, kh, kw = weight.shape
    return x.new_empty((N, Kg * groups,
                        _convt_out(H, kh, stride[0], padding[0], output_padding[0], dilation[0]),
                        _convt_out(W, kw, stride[1], padding[1], output_padding[1], dilation[1])))


@_op("conv_transpose2d_backward")
def _convt2d_bwd_op(grad_y: Tensor, x: Tensor, weight: Tensor, stride: List[int],
                    padding: List[int], output_padding: List[int], dilation: List[int],
                    groups: int, need_x: bool, need_weight: bool,
                    need_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    gs, xs, ws = _np(grad_y), _np(x), _np(weight)
    gx, gw, gb = fastnn.conv_transpose2d_backward(
        gs, xs, ws, stride=_pair(stride), padding=_pair(padding),
        output_padding=_pair(output_padding), dilation=_pair(dilation), groups=groups,
        bias=need_bias, need_input_grad=need_x, need_weight_grad=need_weight)
    e = np.empty(0, xs.dtype)
    return tuple(_fresh([e if g is None else g for g in (gx, gw, gb)], [gs, xs, ws]))


@_convt2d_bwd_op.register_fake
def _(grad_y, x, weight, stride, padding, output_padding, dilation, groups, need_x,
      need_weight, need_bias):
    return (torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else _empty(x),
            torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight
            else _empty(x),
            x.new_empty((weight.shape[1] * groups,)) if need_bias else _empty(x))


_register(_convt2d_op, _convt2d_bwd_op, _conv_backward(_convt2d_bwd_op), _conv_setup)


# ================================================================== unfold / fold
def _fold_args(kernel_size, dilation, padding, stride):
    return dict(stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation))


@_op("unfold")
def _unfold_op(x: Tensor, kernel_size: List[int], dilation: List[int], padding: List[int],
               stride: List[int]) -> Tensor:
    xs = _np(x)
    cols = fastnn.im2col(xs, _pair(kernel_size), **_fold_args(kernel_size, dilation, padding,
                                                             stride))
    return _fresh([cols], [xs])[0]


@_unfold_op.register_fake
def _(x, kernel_size, dilation, padding, stride):
    N, C, H, W = x.shape
    kh, kw = kernel_size
    Ho = _conv_out(H, kh, stride[0], 2 * padding[0], dilation[0])
    Wo = _conv_out(W, kw, stride[1], 2 * padding[1], dilation[1])
    return x.new_empty((N, C * kh * kw, Ho * Wo))


@_op("fold")
def _fold_op(cols: Tensor, output_size: List[int], kernel_size: List[int], dilation: List[int],
             padding: List[int], stride: List[int]) -> Tensor:
    cs = _np(cols)
    kh, kw = kernel_size
    N, CK = cs.shape[:2]
    if CK % (kh * kw):
        raise ValueError(f"fold: input has {CK} rows, not a multiple of kernel_size "
                         f"{kh}x{kw}")
    x = fastnn.col2im(cs, (N, CK // (kh * kw)) + tuple(output_size), _pair(kernel_size),
                      **_fold_args(kernel_size, dilation, padding, stride))
    return _fresh([x], [cs])[0]


@_fold_op.register_fake
def _(cols, output_size, kernel_size, dilation, padding, stride):
    N, CK = cols.shape[:2]
    return cols.new_empty((N, CK // (kernel_size[0] * kernel_size[1])) + tuple(output_size))


def _unfold_setup(ctx, inputs, output):
    ctx.x_size = tuple(inputs[0].shape[2:])
    ctx.args = tuple(inputs[1:])


def _unfold_backward(ctx, grad):
    # col2im is im2col's exact adjoint (and the other way round), both with autograd,
    # so these two ops are twice (and any number of times) differentiable.
    return (_run(_fold_op, grad, list(ctx.x_size), *ctx.args),) + (None,) * len(ctx.args)


def _fold_setup(ctx, inputs, output):
    ctx.args = tuple(inputs[2:])


def _fold_backward(ctx, grad):
    return (_run(_unfold_op, grad, *ctx.args), None) + (None,) * len(ctx.args)


_register(_unfold_op, None, _unfold_backward, _unfold_setup)
_register(_fold_op, None, _fold_backward, _fold_setup)


# ================================================================== pooling ops
def _pool_out(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling output length."""
    num = size + 2 * p - d * (k - 1) - 1 + ((s - 1) if ceil_mode else 0)
    out = num // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out = out - 1
    return out


def _lacking(flags, arg, fn):
    if not flags[arg]:
        raise TypeError(f"fastnn::{fn}: the installed fastnn has no {arg} argument (the "
                        f"functional fastnn.torch.{fn} runs such calls on PyTorch)")


def _max_kw(dilation, ceil_mode, nd):
    if not ceil_mode and dilation[0] == 1 and dilation[-1] == 1:
        return {}
    fn = f"max_pool{nd}d"
    kw = {}
    if any(d != 1 for d in dilation):
        _lacking(_MAX_POOL_ARGS, "dilation", fn)
        kw["dilation"] = _pair(dilation) if nd == 2 else dilation[0]
    if ceil_mode:
        _lacking(_MAX_POOL_ARGS, "ceil_mode", fn)
        kw["ceil_mode"] = True
    return kw


def _avg_kw(ceil_mode, count_include_pad, divisor_override, padding, nd):
    fn = f"avg_pool{nd}d"
    kw = {}
    if _AVG_POOL_ARGS["count_include_pad"]:
        kw["count_include_pad"] = bool(count_include_pad)
    elif count_include_pad and any(p != 0 for p in padding):
        _lacking(_AVG_POOL_ARGS, "count_include_pad", fn)   # without padding the rules agree
    if ceil_mode:
        _lacking(_AVG_POOL_ARGS, "ceil_mode", fn)
        kw["ceil_mode"] = True
    if divisor_override is not None:
        _lacking(_AVG_POOL_ARGS, "divisor_override", fn)
        kw["divisor_override"] = divisor_override
    return kw


def _pool_geom(nd, kernel_size, stride, padding):
    if nd == 2:
        return {"kernel_size": _pair(kernel_size), "stride": _pair(stride),
                "padding": _pair(padding)}
    return {"kernel_size": kernel_size[0], "stride": stride[0], "padding": padding[0]}


def _pool_fake_shape(x, nd, kernel_size, stride, padding, dilation, ceil_mode):
    spatial = x.shape[2:]
    return tuple(x.shape[:2]) + tuple(
        _pool_out(spatial[a], kernel_size[a], stride[a], padding[a], dilation[a], ceil_mode)
        for a in range(nd))


def _make_max_pool(nd):
    name = f"max_pool{nd}d"
    fwd_fn = getattr(fastnn, name)
    bwd_fn = getattr(fastnn, name + "_backward")

    @_op(name)
    def fwd(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
            dilation: List[int], ceil_mode: bool) -> Tuple[Tensor, Tensor]:
        xs = _np(x)
        y, idx = fwd_fn(xs, **_pool_geom(nd, kernel_size, stride, padding), return_indices=True,
                        **_max_kw(dilation, ceil_mode, nd))
        y, idx = _fresh([y, idx], [xs])
        return y, idx

    @fwd.register_fake
    def _(x, kernel_size, stride, padding, dilation, ceil_mode):
        shape = _pool_fake_shape(x, nd, kernel_size, stride, padding, dilation, ceil_mode)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)

    @_op(name + "_backward")
    def bwd(grad_y: Tensor, x: Tensor, indices: Tensor, kernel_size: List[int],
            stride: List[int], padding: List[int], dilation: List[int],
            ceil_mode: bool) -> Tensor:
        gs, xs, ids = _np(grad_y), _np(x), _np(indices)
        gx = bwd_fn(gs, xs, **_pool_geom(nd, kernel_size, stride, padding), indices=ids,
                    **_max_kw(dilation, ceil_mode, nd))
        return _fresh([gx], [gs, xs, ids])[0]

    @bwd.register_fake
    def _(grad_y, x, indices, kernel_size, stride, padding, dilation, ceil_mode):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def setup(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[0], output[1])
        ctx.args = tuple(inputs[1:])

    def backward(ctx, grad_y, _grad_indices):
        x, indices = ctx.saved_tensors
        return (_run(bwd, grad_y, x, indices, *ctx.args),) + (None,) * len(ctx.args)

    _register(fwd, bwd, backward, setup)
    return fwd


def _make_avg_pool(nd):
    name = f"avg_pool{nd}d"
    fwd_fn = getattr(fastnn, name)
    bwd_fn = getattr(fastnn, name + "_backward")

    @_op(name)
    def fwd(x: Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
            ceil_mode: bool, count_include_pad: bool, divisor_override: Optional[int]) -> Tensor:
        xs = _np(x)
        y = fwd_fn(xs, **_pool_geom(nd, kernel_size, stride, padding),
                   **_avg_kw(ceil_mode, count_include_pad, divisor_override, padding, nd))
        return _fresh([y], [xs])[0]

    @fwd.register_fake
    def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        return x.new_empty(_pool_fake_shape(x, nd, kernel_size, stride, padding, (1,) * nd,
                                            ceil_mode))

    @_op(name + "_backward")
    def bwd(grad_y: Tensor, x: Tensor, kernel_size: List[int], stride: List[int],
            padding: List[int], ceil_mode: bool, count_include_pad: bool,
            divisor_override: Optional[int]) -> Tensor:
        gs, xs = _np(grad_y), _np(x)
        gx = bwd_fn(gs, xs, **_pool_geom(nd, kernel_size, stride, padding),
                    **_avg_kw(ceil_mode, count_include_pad, divisor_override, padding, nd))
        return _fresh([gx], [gs, xs])[0]

    @bwd.register_fake
    def _(grad_y, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
          divisor_override):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def setup(ctx, inputs, output):
        # Average pooling's gradient does not depend on x's values, only on its shape;
        # the backward kernel takes x for that shape.
        ctx.save_for_backward(inputs[0])
        ctx.args = tuple(inputs[1:])

    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        return (_run(bwd, grad_y, x, *ctx.args),) + (None,) * len(ctx.args)

    _register(fwd, bwd, backward, setup)
    return fwd


_max_pool1d_op = _make_max_pool(1)
_max_pool2d_op = _make_max_pool(2)
_avg_pool1d_op = _make_avg_pool(1)
_avg_pool2d_op = _make_avg_pool(2)


# ================================================================== activation ops
def _make_elementwise(name, save, extra=()):
    """An elementwise op ``y = f(x, *extra)`` whose backward kernel takes
    ``(grad_y, saved, *extra)``, ``saved`` being the output y or the input x."""
    fwd_fn = getattr(fastnn, name)
    bwd_fn = getattr(fastnn, name + "_backward")
    if extra:
        @_op(name)
        def fwd(x: Tensor, negative_slope: float) -> Tensor:
            xs = _np(x)
            return _fresh([fwd_fn(xs, negative_slope)], [xs])[0]

        @_op(name + "_backward")
        def bwd(grad_y: Tensor, saved: Tensor, negative_slope: float) -> Tensor:
            gs, ss = _np(grad_y), _np(saved)
            return _fresh([bwd_fn(gs, ss, negative_slope)], [gs, ss])[0]
    else:
        @_op(name)
        def fwd(x: Tensor) -> Tensor:
            xs = _np(x)
            return _fresh([fwd_fn(xs)], [xs])[0]

        @_op(name + "_backward")
        def bwd(grad_y: Tensor, saved: Tensor) -> Tensor:
            gs, ss = _np(grad_y), _np(saved)
            return _fresh([bwd_fn(gs, ss)], [gs, ss])[0]

    @fwd.register_fake
    def _(x, *args):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @bwd.register_fake
    def _(grad_y, saved, *args):
        return torch.empty_like(saved, memory_format=torch.contiguous_format)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(save(inputs, output))
        ctx.args = tuple(inputs[1:])

    def backward(ctx, grad_y):
        (saved,) = ctx.saved_tensors
        return (_run(bwd, grad_y, saved, *ctx.args),) + (None,) * len(ctx.args)

    _register(fwd, bwd, backward, setup)
    return fwd


def _output(inputs, output):
    return output


def _leaky_saved(inputs, output):
    # With a slope >= 0 the output has the input's sign pattern (y > 0 iff x > 0), so the
    # backward can read y -- which lets relu_(x) style in-place use overwrite x.
    return output if inputs[1] >= 0 else inputs[0]


# relu's gradient from y: y > 0 exactly where x > 0, and NaN where x is NaN (gradient 0
# either way): PyTorch's threshold_backward(grad, result, 0).
_relu_op = _make_elementwise("relu", _output)
_leaky_relu_op = _make_elementwise("leaky_relu", _leaky_saved, extra=("negative_slope",))
_sigmoid_op = _make_elementwise("sigmoid", _output)
_tanh_op = _make_elementwise("tanh", _output)


def _make_softmax(name):
    fwd_fn = getattr(fastnn, name)
    bwd_fn = getattr(fastnn, name + "_backward")

    @_op(name)
    def fwd(x: Tensor, dim: int) -> Tensor:
        xs = _np(x)
        return _fresh([fwd_fn(xs, dim)], [xs])[0]

    @fwd.register_fake
    def _(x, dim):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @_op(name + "_backward")
    def bwd(grad_y: Tensor, y: Tensor, dim: int) -> Tensor:
        gs, ys = _np(grad_y), _np(y)
        return _fresh([bwd_fn(gs, ys, dim)], [gs, ys])[0]

    @bwd.register_fake
    def _(grad_y, y, dim):
        return torch.empty_like(y, memory_format=torch.contiguous_format)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.dim = inputs[1]

    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        return _run(bwd, grad_y, y, ctx.dim), None

    _register(fwd, bwd, backward, setup)
    return fwd


_softmax_op = _make_softmax("softmax")
_log_softmax_op = _make_softmax("log_softmax")


# ------------------------------------------------------------------ cross-entropy
def _xent_kw(weight, ignore_index, label_smoothing, class_indices):
    kw = {}
    if weight is not None:
        _lacking(_XENT_ARGS, "weight", "cross_entropy")
        kw["weight"] = weight
    if class_indices and _XENT_ARGS["ignore_index"]:
        kw["ignore_index"] = ignore_index
    if label_smoothing:
        _lacking(_XENT_ARGS, "label_smoothing", "cross_entropy")
        kw["label_smoothing"] = label_smoothing
    return kw


def _xent_labels(target, ignore_index):
    ts = _np(target)
    if ts.dtype.kind in "iu" and not _XENT_ARGS["ignore_index"] and np.any(ts == ignore_index):
        raise ValueError(f"cross_entropy: target holds ignore_index={ignore_index}, which "
                         f"the installed fastnn cannot ignore")
    return ts


@_op("cross_entropy")
def _xent_op(logits: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
             reduction: str, label_smoothing: float) -> Tensor:
    ls, ts, ws = _np(logits), _xent_labels(target, ignore_index), _np(weight)
    loss = fastnn.softmax_cross_entropy(
        ls, ts, reduction=reduction,
        **_xent_kw(ws, ignore_index, label_smoothing, not target.is_floating_point()))
    return _fresh([np.asarray(loss)], [ls, ts, ws])[0]


@_xent_op.register_fake
def _(logits, target, weight, ignore_index, reduction, label_smoothing):
    if reduction != "none":
        return logits.new_empty(())
    if target.is_floating_point():
        return logits.new_empty((logits.shape[0],) + tuple(logits.shape[2:]))
    return logits.new_empty(target.shape)


@_op("cross_entropy_backward")
def _xent_bwd_op(grad_loss: Tensor, logits: Tensor, target: Tensor, weight: Optional[Tensor],
                 ignore_index: int, reduction: str, label_smoothing: float) -> Tensor:
    gs, ls, ts, ws = _np(grad_loss), _np(logits), _xent_labels(target, ignore_index), _np(weight)
    g = fastnn.softmax_cross_entropy_backward(
        gs, ls, ts, reduction=reduction,
        **_xent_kw(ws, ignore_index, label_smoothing, not target.is_floating_point()))
    return _fresh([g], [gs, ls, ts, ws])[0]


@_xent_bwd_op.register_fake
def _(grad_loss, logits, target, weight, ignore_index, reduction, label_smoothing):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _xent_setup(ctx, inputs, output):
    logits, target, weight = inputs[:3]
    ctx.save_for_backward(logits, target, weight)
    ctx.args = tuple(inputs[3:])


def _xent_backward(ctx, grad_loss):
    logits, target, weight = ctx.saved_tensors
    g = _run(_xent_bwd_op, grad_loss, logits, target, weight, *ctx.args)
    return (g, None, None) + (None,) * len(ctx.args)


_register(_xent_op, _xent_bwd_op, _xent_backward, _xent_setup)


# ================================================================== banded / masked / local
def _linear_fake(x, weight):
    return x.new_empty(tuple(x.shape[:-1]) + (weight.shape[0],))


def _zero_if_none(a, shape, dtype):
    return np.zeros(shape, dtype) if a is None else a


@_op("banded_linear")
def _banded_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], num_lower: int,
               num_upper: int) -> Tensor:
    xs, ws, bs = _np(x), _np(weight), _np(bias)
    # weight (out, in) is fastnn's w (in, out) transposed: a band (num_lower below,
    # num_upper above the diagonal) of weight is (num_upper below, num_lower above) of w.
    y = fastnn.banded_matmul(xs, ws.T, num_upper, num_lower, bs)
    return _fresh([y], [xs, ws, bs])[0]


@_banded_op.register_fake
def _(x, weight, bias, num_lower, num_upper):
    return _linear_fake(x, weight)


@_op("banded_linear_backward")
def _banded_bwd_op(grad_y: Tensor, x: Tensor, weight: Tensor, num_lower: int, num_upper: int,
                   has_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    gs, xs, ws = _np(grad_y), _np(x), _np(weight)
    gx, gw, gb = fastnn.banded_matmul_backward(gs, xs, ws.T, num_upper, num_lower, bias=has_bias)
    inputs = [gs, xs, ws]
    gx, gb = _fresh([gx, _zero_if_none(gb, (0,), xs.dtype)], inputs)
    return gx, _fresh_t(gw, inputs), gb


@_banded_bwd_op.register_fake
def _(grad_y, x, weight, num_lower, num_upper, has_bias):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            _empty_t(weight, weight.shape),
            x.new_empty((weight.shape[0],)) if has_bias else _empty(x))


def _linear_setup(ctx, inputs, output):
    x, weight, third = inputs[:3]
    ctx.save_for_backward(x, weight)
    ctx.args = tuple(inputs[3:])
    ctx.has_bias = third is not None


def _banded_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    gx, gw, gb = _run(_banded_bwd_op, grad_y, x, weight, *ctx.args, ctx.has_bias)
    return (gx, gw, gb if ctx.has_bias else None) + (None,) * len(ctx.args)


_register(_banded_op, _banded_bwd_op, _banded_backward, _linear_setup)


def _mask_t(ms):
    """The (in, out) mask for fastnn as a transposed view. Non-bool masks become their
    non-zero pattern first: fastnn's masked_matmul refuses a non-C-contiguous mask of
    another dtype (the same entries are kept either way)."""
    return ms.T if ms.dtype == np.bool_ else ms.T != 0


@_op("masked_linear")
def _masked_op(x: Tensor, weight: Tensor, mask: Tensor, bias: Optional[Tensor]) -> Tensor:
    xs, ws, ms, bs = _np(x), _np(weight), _np(mask), _np(bias)
    y = fastnn.masked_matmul(xs, ws.T, _mask_t(ms), bs)
    return _fresh([y], [xs, ws, ms, bs])[0]


@_masked_op.register_fake
def _(x, weight, mask, bias):
    return _linear_fake(x, weight)


@_op("masked_linear_backward")
def _masked_bwd_op(grad_y: Tensor, x: Tensor, weight: Tensor, mask: Tensor,
                   has_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    gs, xs, ws, ms = _np(grad_y), _np(x), _np(weight), _np(mask)
    gx, gw, gb = fastnn.masked_matmul_backward(gs, xs, ws.T, _mask_t(ms), bias=has_bias)
    inputs = [gs, xs, ws, ms]
    gx, gb = _fresh([gx, _zero_if_none(gb, (0,), xs.dtype)], inputs)
    return gx, _fresh_t(gw, inputs), gb


@_masked_bwd_op.register_fake
def _(grad_y, x, weight, mask, has_bias):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            _empty_t(weight, weight.shape),
            x.new_empty((weight.shape[0],)) if has_bias else _empty(x))


def _masked_setup(ctx, inputs, output):
    x, weight, mask, bias = inputs
    ctx.save_for_backward(x, weight, mask)
    ctx.has_bias = bias is not None


def _masked_backward(ctx, grad_y):
    x, weight, mask = ctx.saved_tensors
    gx, gw, gb = _run(_masked_bwd_op, grad_y, x, weight, mask, ctx.has_bias)
    return gx, gw, None, gb if ctx.has_bias else None


_register(_masked_op, _masked_bwd_op, _masked_backward, _masked_setup)


@_op("locally_connected2d")
def _local2d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], kernel_size: List[int],
                stride: List[int], padding: List[int]) -> Tensor:
    xs, ws, bs = _np(x), _np(weight), _np(bias)
    y = fastnn.locally_connected2d(xs, np.swapaxes(ws, -1, -2), bs,
                                   kernel_size=_pair(kernel_size), stride=_pair(stride),
                                   padding=_pads2(padding), layout="NCHW")
    return _fresh([y], [xs, ws, bs])[0]


@_local2d_op.register_fake
def _(x, weight, bias, kernel_size, stride, padding):
    Ho, Wo, K, _ = weight.shape
    return x.new_empty((x.shape[0], K, Ho, Wo))


@_op("locally_connected2d_backward")
def _local2d_bwd_op(grad_y: Tensor, x: Tensor, weight: Tensor, kernel_size: List[int],
                    stride: List[int], padding: List[int],
                    has_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    gs, xs, ws = _np(grad_y), _np(x), _np(weight)
    gx, gw, gb = fastnn.locally_connected2d_backward(
        gs, xs, np.swapaxes(ws, -1, -2), kernel_size=_pair(kernel_size), stride=_pair(stride),
        padding=_pads2(padding), layout="NCHW", bias=has_bias)
    inputs = [gs, xs, ws]
    gx, gb = _fresh([gx, _zero_if_none(gb, (0,), xs.dtype)], inputs)
    return gx, _fresh_t(gw, inputs), gb


@_local2d_bwd_op.register_fake
def _(grad_y, x, weight, kernel_size, stride, padding, has_bias):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            _empty_t(weight, weight.shape),
            x.new_empty(tuple(weight.shape[:3])) if has_bias else _empty(x))


def _local2d_backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    gx, gw, gb = _run(_local2d_bwd_op, grad_y, x, weight, *ctx.args, ctx.has_bias)
    return (gx, gw, gb if ctx.has_bias else None) + (None,) * len(ctx.args)


_register(_local2d_op, _local2d_bwd_op, _local2d_backward, _linear_setup)


# ================================================================== recurrent ops
def _torch_bias(b, n, dtype):
    return np.zeros(n, dtype) if b is None else b


def _from_torch(to_fastnn, w_ih, w_hh, b_ih, b_hh):
    """PyTorch's recurrent weights through a fastnn.convert converter (missing biases as
    zeros)."""
    n, dt = w_ih.shape[0], w_ih.dtype
    return to_fastnn(w_ih, w_hh, _torch_bias(b_ih, n, dt), _torch_bias(b_hh, n, dt))


def _seq_dims(x, batch_first):
    return (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])   # T, B


def _time_major_rows(xs, batch_first):
    """x as the C-contiguous (T*B, I) time-major matrix a fastnn RecurrentCache holds."""
    seq = np.ascontiguousarray(xs.transpose(1, 0, 2) if batch_first else xs)
    return seq.reshape(seq.shape[0] * seq.shape[1], seq.shape[2])


# The sequence ops (lstm, gru, rnn) share one form. Forward arguments: x, the initial
# states (None: zeros), w_ih, w_hh, b_ih, b_hh, the op's own flags, batch_first,
# training. Forward outputs: output, the final states and, when ``training``, the
# arrays of the fastnn.RecurrentCache (else empty). Backward arguments: the gradients
# of output and of the final states, x, the cache arrays, the op's own flags,
# batch_first, has_bias; outputs: the gradients of x, the states and the four weights
# (the biases empty without ``has_bias``).
class _Sequence:
    def __init__(self, name, kind, n_states, gates, cache_fields, cache_shapes):
        self.name, self.kind, self.n_states, self.gates = name, kind, n_states, gates
        self.cache_fields, self.cache_shapes = cache_fields, cache_shapes

    def result(self, res, training, inputs, dtype):
        """The forward op's outputs from fastnn's (output, states..., [cache])."""
        if training:
            *outputs, cache = res
            arrays = [getattr(cache, f) for f in self.cache_fields]
        else:
            outputs, arrays = list(res), [np.empty(0, dtype)] * len(self.cache_fields)
        return tuple(_fresh(outputs + arrays, inputs))

    def cache(self, xs, batch_first, arrays, **fields):
        """The fastnn.RecurrentCache a backward op rebuilds from the cache arrays."""
        T, B = _seq_dims(xs, batch_first)
        fields.update(zip(self.cache_fields, arrays))
        return fastnn.RecurrentCache(
            kind=self.kind, dtype=xs.dtype,
            time_major=not batch_first, T=T, B=B, I=xs.shape[2], H=fields["hs"].shape[1],
            x=_time_major_rows(xs, batch_first), **fields)

    def grads(self, grads, weight_grads, has_bias, inputs, dtype):
        """The backward op's outputs: the gradients of x and the states, then w_ih, w_hh,
        b_ih, b_hh (the biases empty without a bias)."""
        gw_ih, gw_hh, gb_ih, gb_hh = weight_grads
        if not has_bias:
            gb_ih = gb_hh = np.empty(0, dtype)
        return tuple(_fresh(list(grads) + [gw_ih, gw_hh, gb_ih, gb_hh], inputs))

    def fake(self, x, w_hh, batch_first, training):
        T, B = _seq_dims(x, batch_first)
        H, I = w_hh.shape[1], x.shape[2]
        shapes = self.cache_shapes(T, B, I, H)
        cache = tuple(x.new_empty(s) if training else _empty(x) for s in shapes)
        states = tuple(x.new_empty((B, H)) for _ in range(self.n_states))
        return (x.new_empty(tuple(x.shape[:2]) + (H,)),) + states + cache

    def backward_fake(self, x, hs, batch_first, has_bias):
        T, B = _seq_dims(x, batch_first)
        H, I, G = hs.shape[1], x.shape[2], self.gates * hs.shape[1]
        b = (x.new_empty((G,)), x.new_empty((G,))) if has_bias else (_empty(x), _empty(x))
        states = tuple(x.new_empty((B, H)) for _ in range(self.n_states))
        return (torch.empty_like(x, memory_format=torch.contiguous_format),) + states + \
            (x.new_empty((G, I)), x.new_empty((G, H))) + b

    def setup(self, ctx, inputs, output):
        n = self.n_states
        ctx.mark_non_differentiable(*output[1 + n:])
        ctx.save_for_backward(inputs[0], *output[1 + n:])
        ctx.has_state = tuple(s is not None for s in inputs[1:1 + n])
        ctx.has_bias = inputs[3 + n] is not None
        ctx.flags = tuple(inputs[5 + n:-2])
        ctx.batch_first, ctx.training = inputs[-2], inputs[-1]

    def backward(self, ctx, grad_out, *grads):
        if not ctx.training:
            raise RuntimeError(f"fastnn::{self.name} was run with training=False (no cache for "
                               f"the backward); call it with training=True when gradients are "
                               f"needed")
        n = self.n_states
        x, *cache = ctx.saved_tensors
        res = _run(self.bwd, grad_out, *grads[:n], x, *cache, *ctx.flags, ctx.batch_first,
                   ctx.has_bias)
        hb = ctx.has_bias
        states = tuple(g if has else None for g, has in zip(res[1:1 + n], ctx.has_state))
        gb_ih, gb_hh = res[3 + n:5 + n]
        return (res[0],) + states + (res[1 + n], res[2 + n], gb_ih if hb else None,
                                     gb_hh if hb else None) + (None,) * (len(ctx.flags) + 2)

    def register(self, fwd, bwd):
        n, hs = self.n_states, 2 + self.n_states + self.cache_fields.index("hs")

        def fake(x, *args):
            return self.fake(x, args[n + 1], args[-2], args[-1])

        def backward_fake(*args):
            return self.backward_fake(args[n + 1], args[hs], args[-2], args[-1])

        self.fwd, self.bwd = fwd, bwd
        fwd.register_fake(fake)
        bwd.register_fake(backward_fake)
        _register(fwd, bwd, self.backward, self.setup)


_LSTM = _Sequence("lstm", "lstm", 2, 4, ("kernel", "hs", "cs", "gates", "tc"),
                  lambda T, B, I, H: ((I + H, 4 * H), ((T + 1) * B, H), ((T + 1) * B, H),
                                      (T * B, 4 * H), (T * B, H)))
_GRU = _Sequence("gru", "gru", 1, 3, ("kernel", "recurrent_kernel", "hs", "gates", "q"),
                 lambda T, B, I, H: ((I, 3 * H), (H, 3 * H), ((T + 1) * B, H), (T * B, 3 * H),
                                     (T * B, 3 * H)))
_RNN = _Sequence("rnn", "simple_rnn", 1, 1, ("kernel", "recurrent_kernel", "hs"),
                 lambda T, B, I, H: ((I, H), (H, H), ((T + 1) * B, H)))


@_op("lstm")
def _lstm_op(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
             b_ih: Optional[Tensor], b_hh: Optional[Tensor], batch_first: bool,
             training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                      Tensor]:
    """One unidirectional LSTM layer (PyTorch weights and gate order). Outputs: output,
    h_T, c_T and, when ``training``, the cache's arrays (kernel, hs, cs, gates, tc) for
    ``lstm_backward`` (else empty)."""
    xs, h0s, c0s = _np(x), _np(h0), _np(c0)
    ws = [_np(w) for w in (w_ih, w_hh, b_ih, b_hh)]
    kernel, bias = _from_torch(convert.lstm_from_torch, *ws)
    res = fastnn.lstm(xs, h0s, c0s, kernel, bias, forget_bias=0.0, time_major=not batch_first,
                      training=training)
    out, (hT, cT), *cache = res
    return _LSTM.result([out, hT, cT] + cache, training, [xs, h0s, c0s] + ws, xs.dtype)


@_op("lstm_backward")
def _lstm_bwd_op(grad_output: Tensor, grad_hT: Tensor, grad_cT: Tensor, x: Tensor,
                 kernel: Tensor, hs: Tensor, cs: Tensor, gates: Tensor, tc: Tensor,
                 batch_first: bool, has_bias: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor,
                                                             Tensor, Tensor, Tensor]:
    """Gradients of one LSTM layer from the forward's cache arrays: x, h0, c0, w_ih,
    w_hh, b_ih, b_hh (the biases empty without ``has_bias``)."""
    go, gh, gc, xs = _np(grad_output), _np(grad_hT), _np(grad_cT), _np(x)
    arrays = [_np(t) for t in (kernel, hs, cs, gates, tc)]
    gx, gh0, gc0, gk, gb = fastnn.lstm_backward(go, gh, gc, _LSTM.cache(xs, batch_first, arrays))
    gw_ih, gw_hh, gb_ih, _ = convert.lstm_to_torch(gk, gb)
    # both biases enter as one sum
    return _LSTM.grads([gx, gh0, gc0], [gw_ih, gw_hh, gb_ih, gb_ih.copy()], has_bias,
                       [go, gh, gc, xs] + arrays, xs.dtype)


_LSTM.register(_lstm_op, _lstm_bwd_op)


@_op("gru")
def _gru_op(x: Tensor, h0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
            b_hh: Optional[Tensor], batch_first: bool,
            training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One unidirectional GRU layer (PyTorch weights, reset-after). Outputs: output, h_T
    and, when ``training``, the cache's arrays (kernel, recurrent_kernel, hs, gates, q)
    for ``gru_backward`` (else empty)."""
    xs, h0s = _np(x), _np(h0)
    ws = [_np(w) for w in (w_ih, w_hh, b_ih, b_hh)]
    kernel, rk, bias = _from_torch(convert.gru_from_torch, *ws)
    res = fastnn.gru(xs, h0s, kernel, rk, bias, reset_after=True, time_major=not batch_first,
                     training=training)
    return _GRU.result(res, training, [xs, h0s] + ws, xs.dtype)


@_op("gru_backward")
def _gru_bwd_op(grad_output: Tensor, grad_hT: Tensor, x: Tensor, kernel: Tensor,
                recurrent_kernel: Tensor, hs: Tensor, gates: Tensor, q: Tensor,
                batch_first: bool, has_bias: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor,
                                                            Tensor, Tensor]:
    """Gradients of one GRU layer from the forward's cache arrays: x, h0, w_ih, w_hh,
    b_ih, b_hh (the biases empty without ``has_bias``)."""
    go, gh, xs = _np(grad_output), _np(grad_hT), _np(x)
    arrays = [_np(t) for t in (kernel, recurrent_kernel, hs, gates, q)]
    cache = _GRU.cache(xs, batch_first, arrays, rh=arrays[3][:0], reset_after=True)
    gx, gh0, gk, grk, gb = fastnn.gru_backward(go, gh, cache)
    return _GRU.grads([gx, gh0], convert.gru_to_torch(gk, grk, gb), has_bias,
                      [go, gh, xs] + arrays, xs.dtype)


_GRU.register(_gru_op, _gru_bwd_op)


def _activation(nonlinearity):
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return nonlinearity


@_op("rnn")
def _rnn_op(x: Tensor, h0: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
            b_hh: Optional[Tensor], nonlinearity: str, batch_first: bool,
            training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One unidirectional Elman RNN layer (``torch.nn.RNN``'s weights; ``nonlinearity``
    "tanh" or "relu") on :func:`fastnn.simple_rnn`. Outputs: output, h_T and, when
    ``training``, the cache's arrays (kernel, recurrent_kernel, hs) for ``rnn_backward``
    (else empty)."""
    xs, h0s = _np(x), _np(h0)
    ws = [_np(w) for w in (w_ih, w_hh, b_ih, b_hh)]
    kernel, rk, bias = _from_torch(convert.simple_rnn_from_torch, *ws)
    res = fastnn.simple_rnn(xs, h0s, kernel, rk, bias, activation=_activation(nonlinearity),
                            time_major=not batch_first, training=training)
    return _RNN.result(res, training, [xs, h0s] + ws, xs.dtype)


@_op("rnn_backward")
def _rnn_bwd_op(grad_output: Tensor, grad_hT: Tensor, x: Tensor, kernel: Tensor,
                recurrent_kernel: Tensor, hs: Tensor, nonlinearity: str, batch_first: bool,
                has_bias: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of one RNN layer from the forward's cache arrays: x, h0, w_ih, w_hh,
    b_ih, b_hh (the biases empty without ``has_bias``)."""
    go, gh, xs = _np(grad_output), _np(grad_hT), _np(x)
    arrays = [_np(t) for t in (kernel, recurrent_kernel, hs)]
    cache = _RNN.cache(xs, batch_first, arrays, relu=_activation(nonlinearity) == "relu")
    gx, gh0, gk, grk, gb = fastnn.simple_rnn_backward(go, gh, cache)
    # (I, H) and (H, H) kernels back to PyTorch's (H, I) and (H, H); both biases
    # enter as one sum.
    return _RNN.grads([gx, gh0], [gk.T, grk.T, gb, gb.copy()], has_bias, [go, gh, xs] + arrays,
                      xs.dtype)


_RNN.register(_rnn_op, _rnn_bwd_op)


@_op("lstm_cell")
def _lstm_cell_op(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                  b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    xs, hs, cs = _np(x), _np(h), _np(c)
    ws = [_np(w) for w in (w_ih, w_hh, b_ih, b_hh)]
    kernel, bias = _from_torch(convert.lstm_from_torch, *ws)
    h1, c1 = fastnn.lstm_cell(xs, hs, cs, kernel, bias, forget_bias=0.0)
    return tuple(_fresh([h1, c1], [xs, hs, cs] + ws))


@_lstm_cell_op.register_fake
def _(x, h, c, w_ih, w_hh, b_ih, b_hh):
    return (torch.empty_like(h, memory_format=torch.contiguous_format),
            torch.empty_like(c, memory_format=torch.contiguous_format))


@_op("lstm_cell_backward")
def _lstm_cell_bwd_op(grad_h: Tensor, grad_c: Tensor, x: Tensor, h: Tensor, c: Tensor,
                      w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                      b_hh: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                       Tensor, Tensor]:
    ghs, gcs, xs, hs, cs = (_np(t) for t in (grad_h, grad_c, x, h, c))
    ws = [_np(w) for w in (w_ih, w_hh, b_ih, b_hh)]
    kernel, bias = _from_torch(convert.lstm_from_torch, *ws)
    gx, gh, gc, gk, gb = fastnn.lstm_cell_backward(ghs, gcs, xs, hs, cs, kernel, bias,
                                                   forget_bias=0.0)
    gw_ih, gw_hh, gb_ih, _ = convert.lstm_to_torch(gk, gb)
    if b_ih is None:
        gb_ih = gb_hh = np.empty(0, xs.dtype)
    else:
        gb_hh = gb_ih.copy()
    return tuple(_fresh([gx, gh, gc, gw_ih, gw_hh, gb_ih, gb_hh], [ghs, gcs, xs, hs, cs] + ws))


@_lstm_cell_bwd_op.register_fake
def _(grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh):
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    b = (like(b_ih), like(b_hh)) if b_ih is not None else (_empty(x), _empty(x))
    return (like(x), like(h), like(c), like(w_ih), like(w_hh)) + b


def _cell_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _lstm_cell_backward(ctx, grad_h, grad_c):
    x, h, c, w_ih, w_hh, b_ih, b_hh = ctx.saved_tensors
    gx, gh, gc, gw_ih, gw_hh, gb_ih, gb_hh = _run(_lstm_cell_bwd_op, grad_h, grad_c, x, h, c,
                                                  w_ih, w_hh, b_ih, b_hh)
    hb = b_ih is not None
    return gx, gh, gc, gw_ih, gw_hh, gb_ih if hb else None, gb_hh if hb else None


_register(_lstm_cell_op, _lstm_cell_bwd_op, _lstm_cell_backward, _cell_setup)


@_op("gru_cell")
def _gru_cell_op(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor]) -> Tensor:
    xs, hs = _np(x), _np(h)
    ws = [_np(w) for w in (w_ih, w_hh, b_ih, b_hh)]
    kernel, rk, bias = _from_torch(convert.gru_from_torch, *ws)
    return _fresh([fastnn.gru_cell(xs, hs, kernel, rk, bias, reset_after=True)], [xs, hs] + ws)[0]


@_gru_cell_op.register_fake
def _(x, h, w_ih, w_hh, b_ih, b_hh):
    return torch.empty_like(h, memory_format=torch.contiguous_format)


@_op("gru_cell_backward")
def _gru_cell_bwd_op(grad_h: Tensor, x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor,
                     b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tuple[Tensor, Tensor,
                                                                              Tensor, Tensor,
                                                                              Tensor, Tensor]:
    ghs, xs, hs = _np(grad_h), _np(x), _np(h)
    ws = [_np(w) for w in (w_ih, w_hh, b_ih, b_hh)]
    kernel, rk, bias = _from_torch(convert.gru_from_torch, *ws)
    gx, gh, gk, grk, gb = fastnn.gru_cell_backward(ghs, xs, hs, kernel, rk, bias,
                                                   reset_after=True)
    gw_ih, gw_hh, gb_ih, gb_hh = convert.gru_to_torch(gk, grk, gb)
    if b_ih is None:
        gb_ih = gb_hh = np.empty(0, xs.dtype)
    return tuple(_fresh([gx, gh, gw_ih, gw_hh, gb_ih, gb_hh], [ghs, xs, hs] + ws))


@_gru_cell_bwd_op.register_fake
def _(grad_h, x, h, w_ih, w_hh, b_ih, b_hh):
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    b = (like(b_ih), like(b_hh)) if b_ih is not None else (_empty(x), _empty(x))
    return (like(x), like(h), like(w_ih), like(w_hh)) + b


def _gru_cell_backward(ctx, grad_h):
    x, h, w_ih, w_hh, b_ih, b_hh = ctx.saved_tensors
    gx, gh, gw_ih, gw_hh, gb_ih, gb_hh = _run(_gru_cell_bwd_op, grad_h, x, h, w_ih, w_hh, b_ih,
                                              b_hh)
    hb = b_ih is not None
    return gx, gh, gw_ih, gw_hh, gb_ih if hb else None, gb_hh if hb else None


_register(_gru_cell_op, _gru_cell_bwd_op, _gru_cell_backward, _cell_setup)


# ================================================================== functional twins
def _compiling():
    return torch.compiler.is_compiling()


def _conv_padding(padding, nd, kernel, stride, dilation):
    """PyTorch conv padding as [before, after] per axis, flattened; None if unparseable."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0] * (2 * nd)
        if padding == "same" and all(s == 1 for s in stride):
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return pads
        return None     # PyTorch raises for these
    p = _ints(padding, nd)
    if p is None:
        return None
    return [v for v in p for _ in (0, 1)]


def _conv_nd(name, nd, op, torch_fn, input, weight, bias, stride, padding, dilation, groups):
    why = _why_not(input=input, weight=weight, bias=bias)
    if why is None:
        s, d = _ints(stride, nd), _ints(dilation, nd)
        pads = None if s is None or d is None or weight.dim() != nd + 2 else \
            _conv_padding(padding, nd, tuple(weight.shape[2:]), s, d)
        if input.dim() not in (nd + 1, nd + 2):
            why = f"input has {input.dim()} dimensions"
        elif s is None:
            why = _bad("stride", stride)
        elif d is None:
            why = _bad("dilation", dilation)
        elif pads is None:
            why = _bad("padding", padding)
        elif not isinstance(groups, int):
            why = _bad("groups", groups)
    if why is not None:
        return _fallback(name, why, torch_fn, input, weight, bias, stride, padding, dilation,
                         groups)
    unbatched = input.dim() == nd + 1
    x = input.unsqueeze(0) if unbatched else input
    y = _run(op, x, weight, bias, list(s), pads, list(d), groups)
    return y.squeeze(0) if unbatched else y


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``torch.nn.functional.conv2d`` on :func:`fastnn.conv2d` (NCHW, PyTorch weights).

    Same arguments: input ``(N, C, H, W)`` or unbatched ``(C, H, W)``; weight
    ``(K, C/groups, kh, kw)``; stride, padding, dilation an int or tuple (``padding``
    also ``"valid"`` or ``"same"``, PyTorch's rule: the odd element after).

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2)).flatten().tolist()
    [4.0, 4.0, 4.0, 4.0]
    """
    return _conv_nd("conv2d", 2, _conv2d_op, F.conv2d, input, weight, bias, stride, padding,
                    dilation, groups)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``torch.nn.functional.conv1d`` on :func:`fastnn.conv1d` (NCW, PyTorch weights).

    Input ``(N, C, L)`` or unbatched ``(C, L)``; weight ``(K, C/groups, k)``; padding an
    int, a 1-tuple, ``"valid"`` or ``"same"``.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.conv1d(torch.ones(1, 1, 4), torch.ones(1, 1, 2), padding="same").tolist()
    [[[2.0, 2.0, 2.0, 1.0]]]
    """
    return _conv_nd("conv1d", 1, _conv1d_op, F.conv1d, input, weight, bias, stride, padding,
                    dilation, groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """``torch.nn.functional.conv_transpose2d`` on :func:`fastnn.conv_transpose2d`.

    Same arguments and order (note ``groups`` before ``dilation``, as in PyTorch); weight
    ``(C_in, C_out/groups, kh, kw)``; unbatched ``(C, H, W)`` input allowed.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.conv_transpose2d(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 2, 2), stride=2).shape
    torch.Size([1, 1, 2, 4])
    """
    name = "conv_transpose2d"
    why = _why_not(input=input, weight=weight, bias=bias)
    if why is None:
        s, p, op, d = (_ints(v, 2) for v in (stride, padding, output_padding, dilation))
        if input.dim() not in (3, 4):
            why = f"input has {input.dim()} dimensions"
        for arg, parsed, value in (("stride", s, stride), ("padding", p, padding),
                                   ("output_padding", op, output_padding),
                                   ("dilation", d, dilation)):
            if why is None and parsed is None:
                why = _bad(arg, value)
        if why is None and not isinstance(groups, int):
            why = _bad("groups", groups)
    if why is not None:
        return _fallback(name, why, F.conv_transpose2d, input, weight, bias, stride, padding,
                         output_padding, groups, dilation)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    y = _run(_convt2d_op, x, weight, bias, list(s), list(p), list(op), list(d), groups)
    return y.squeeze(0) if unbatched else y


def _pool_args(nd, kernel_size, stride, padding):
    if type(kernel_size) is int and type(padding) is int and (stride is None
                                                               or type(stride) is int):
        k = (kernel_size,) * nd
        return k, k if stride is None else (stride,) * nd, (padding,) * nd
    k = _ints(kernel_size, nd)
    no_stride = stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0)
    s = k if no_stride else _ints(stride, nd)
    p = _ints(padding, nd)
    return k, s, p


def _pool_why(input, nd, k, s, p, kernel_size, stride, padding):
    why = _why_not(input=input)
    if why is None:
        if input.dim() not in (nd + 1, nd + 2):
            why = f"input has {input.dim()} dimensions"
        elif k is None:
            why = _bad("kernel_size", kernel_size)
        elif s is None:
            why = _bad("stride", stride)
        elif p is None:
            why = _bad("padding", padding)
    return why


def _max_pool(nd, op, torch_fn, input, kernel_size, stride, padding, dilation, ceil_mode,
              return_indices):
    name = f"max_pool{nd}d"
    k, s, p = _pool_args(nd, kernel_size, stride, padding)
    d = (1,) * nd if type(dilation) is int and dilation == 1 else _ints(dilation, nd)
    why = _pool_why(input, nd, k, s, p, kernel_size, stride, padding)
    if why is None:
        if d is None:
            why = _bad("dilation", dilation)
        elif (d[0] != 1 or d[-1] != 1) and not _MAX_POOL_ARGS["dilation"]:
            why = f"dilation={dilation!r} (the installed fastnn has no pooling dilation)"
        elif ceil_mode and not _MAX_POOL_ARGS["ceil_mode"]:
            why = "ceil_mode=True (the installed fastnn has no ceil_mode)"
    if why is not None:
        return _fallback(name, why, torch_fn, input, kernel_size, stride, padding, dilation,
                         ceil_mode=ceil_mode, return_indices=return_indices)
    unbatched = input.dim() == nd + 1
    x = input.unsqueeze(0) if unbatched else input
    y, idx = _run(op, x, list(k), list(s), list(p), list(d), bool(ceil_mode))
    if unbatched:
        y, idx = y.squeeze(0), idx.squeeze(0)
    return (y, idx) if return_indices else y


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """``torch.nn.functional.max_pool2d`` on :func:`fastnn.max_pool2d` (NCHW).

    Same arguments; indices (``return_indices=True``) are PyTorch's (flat in each plane).

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.max_pool2d(torch.arange(16.0).reshape(1, 1, 4, 4), 2).flatten().tolist()
    [5.0, 7.0, 13.0, 15.0]
    """
    return _max_pool(2, _max_pool2d_op, F.max_pool2d, input, kernel_size, stride, padding,
                     dilation, ceil_mode, return_indices)


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """``torch.nn.functional.max_pool1d`` on :func:`fastnn.max_pool1d` (NCW).

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.max_pool1d(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2).tolist()
    [[3.0, 2.0]]
    """
    return _max_pool(1, _max_pool1d_op, F.max_pool1d, input, kernel_size, stride, padding,
                     dilation, ceil_mode, return_indices)


def _avg_pool(nd, op, torch_fn, input, kernel_size, stride, padding, ceil_mode,
              count_include_pad, divisor_override):
    name = f"avg_pool{nd}d"
    k, s, p = _pool_args(nd, kernel_size, stride, padding)
    why = _pool_why(input, nd, k, s, p, kernel_size, stride, padding)
    if why is None:
        if ceil_mode and not _AVG_POOL_ARGS["ceil_mode"]:
            why = "ceil_mode=True (the installed fastnn has no ceil_mode)"
        elif count_include_pad and any(v != 0 for v in p) and \
                not _AVG_POOL_ARGS["count_include_pad"]:
            # Without padding every window is whole and the two rules agree.
            why = ("count_include_pad=True with padding (the installed fastnn divides by "
                   "the real elements only)")
        elif divisor_override is not None and not _AVG_POOL_ARGS["divisor_override"]:
            why = "divisor_override (the installed fastnn has no divisor_override)"
    if why is not None:
        extra = () if nd == 1 else (divisor_override,)
        return _fallback(name, why, torch_fn, input, kernel_size, stride, padding, ceil_mode,
                         count_include_pad, *extra)
    unbatched = input.dim() == nd + 1
    x = input.unsqueeze(0) if unbatched else input
    y = _run(op, x, list(k), list(s), list(p), bool(ceil_mode), bool(count_include_pad),
           divisor_override)
    return y.squeeze(0) if unbatched else y


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """``torch.nn.functional.avg_pool2d`` on :func:`fastnn.avg_pool2d` (NCHW).

    PyTorch's defaults, ``count_include_pad=True`` included (fastnn's own default is
    False; the adapter passes PyTorch's rule explicitly).

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.avg_pool2d(torch.arange(16.0).reshape(1, 1, 4, 4), 2).flatten().tolist()
    [2.5, 4.5, 10.5, 12.5]
    """
    return _avg_pool(2, _avg_pool2d_op, F.avg_pool2d, input, kernel_size, stride, padding,
                     ceil_mode, count_include_pad, divisor_override)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """``torch.nn.functional.avg_pool1d`` on :func:`fastnn.avg_pool1d` (NCW).

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.avg_pool1d(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 2).tolist()
    [[2.0, 1.0]]
    """
    return _avg_pool(1, _avg_pool1d_op, F.avg_pool1d, input, kernel_size, stride, padding,
                     ceil_mode, count_include_pad, None)


def _inplace(input, y, inplace):
    # The op's backward reads its output, never the input, so overwriting the input
    # keeps the graph valid (PyTorch refuses a leaf that requires grad, as for relu_).
    return input.copy_(y) if inplace else y


def relu(input, inplace=False):
    """``torch.nn.functional.relu`` on :func:`fastnn.relu` (``inplace=True`` writes the
    result into ``input`` and returns it).

    One difference from PyTorch: where the input is NaN the gradient is 0
    (:func:`fastnn.relu_backward` blocks NaN), PyTorch passes the incoming gradient.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.relu(torch.tensor([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 2.0]
    """
    why = _why_not(input=input)
    if why is not None:
        return _fallback("relu", why, F.relu, input, inplace=inplace)
    return _inplace(input, _run(_relu_op, input), inplace)


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """``torch.nn.functional.leaky_relu`` on :func:`fastnn.leaky_relu`.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.leaky_relu(torch.tensor([-1.0, 2.0]), 0.5).tolist()
    [-0.5, 2.0]
    """
    why = _why_not(input=input)
    if why is None and (isinstance(negative_slope, bool)
                        or not isinstance(negative_slope, (int, float))):
        why = _bad("negative_slope", negative_slope)
    if why is not None:
        return _fallback("leaky_relu", why, F.leaky_relu, input, negative_slope, inplace)
    return _inplace(input, _run(_leaky_relu_op, input, float(negative_slope)), inplace)


def _unary(name, op, torch_fn, input):
    why = _why_not(input=input)
    if why is not None:
        return _fallback(name, why, torch_fn, input)
    return _run(op, input)


def sigmoid(input):
    """``torch.sigmoid`` on :func:`fastnn.sigmoid`.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.sigmoid(torch.zeros(2)).tolist()
    [0.5, 0.5]
    """
    return _unary("sigmoid", _sigmoid_op, torch.sigmoid, input)


def tanh(input):
    """``torch.tanh`` on :func:`fastnn.tanh`.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.tanh(torch.zeros(2)).tolist()
    [0.0, 0.0]
    """
    return _unary("tanh", _tanh_op, torch.tanh, input)


def _softmax_like(name, op, torch_fn, input, dim, _stacklevel, dtype):
    if dtype is not None and isinstance(input, Tensor):
        input = input.to(dtype)         # PyTorch casts before the softmax too
    why = _why_not(input=input)
    if why is None:
        if dim is None:
            dim = F._get_softmax_dim(name, input.dim(), _stacklevel + 1)
        nd = max(input.dim(), 1)
        if isinstance(dim, bool) or not isinstance(dim, int) or not -nd <= dim < nd:
            why = _bad("dim", dim)
    if why is not None:
        return _fallback(name, why, torch_fn, input, dim)
    if input.dim() == 0:
        return _run(op, input.reshape(1), 0).reshape(())
    return _run(op, input, dim % input.dim())


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    """``torch.nn.functional.softmax`` on :func:`fastnn.softmax` (``dim=None`` picks
    PyTorch's legacy dimension, with its warning; ``dtype`` casts the input first).

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.softmax(torch.zeros(1, 4), dim=1).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """
    return _softmax_like("softmax", _softmax_op, F.softmax, input, dim, _stacklevel, dtype)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    """``torch.nn.functional.log_softmax`` on :func:`fastnn.log_softmax`.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> round(ft.log_softmax(torch.zeros(1, 2), dim=1)[0, 0].item(), 6)
    -0.693147
    """
    return _softmax_like("log_softmax", _log_softmax_op, F.log_softmax, input, dim, _stacklevel,
                         dtype)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """``torch.nn.functional.cross_entropy`` on :func:`fastnn.softmax_cross_entropy`.

    Same arguments: logits ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)``; class-index
    targets (int64) or class probabilities (logits' shape and dtype). ``weight``,
    ``ignore_index`` and ``label_smoothing`` go to fastnn where the installed version
    takes them, else the call runs on PyTorch (see :func:`fallback_counts`), as do
    probability targets that require grad.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> round(ft.cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3])).item(), 6)
    1.386294
    """
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    why = _why_not(input=input, weight=weight)
    if why is None and not isinstance(target, Tensor):
        why = "target is not a tensor"
    if why is None:
        probs = target.is_floating_point()
        if target.device.type != "cpu":
            why = f"target is on {target.device} (fastnn runs on the CPU)"
        elif probs and target.dtype != input.dtype:
            why = f"mixed dtypes (target is {target.dtype}, input {input.dtype})"
        elif probs and target.requires_grad:
            why = "target requires grad (fastnn has no gradient for probability targets)"
        elif not probs and target.dtype not in (torch.int64, torch.uint8):
            why = f"target has dtype {target.dtype} (class indices must be int64 or uint8)"
        elif reduction not in ("mean", "sum", "none"):
            why = _bad("reduction", reduction)
        elif input.dim() == 0:
            why = "input is 0-d"
        elif input.dim() > 2 and not _XENT_SPATIAL:
            why = "(N, C, d1, ...) logits (the installed fastnn takes (N, C) only)"
        elif weight is not None and not _XENT_ARGS["weight"]:
            why = "weight (the installed fastnn has no class weights)"
        elif weight is not None and weight.requires_grad:
            why = "weight requires grad"
        elif label_smoothing and not _XENT_ARGS["label_smoothing"]:
            why = "label_smoothing (the installed fastnn has no label smoothing)"
        elif (not probs and not _XENT_ARGS["ignore_index"] and not _compiling()
              and bool((target == ignore_index).any())):
            why = (f"target holds ignore_index={ignore_index} (the installed fastnn cannot "
                   f"ignore it)")
    if why is not None:
        return _fallback("cross_entropy", why, F.cross_entropy, input, target, weight, None,
                         ignore_index, None, reduction, label_smoothing)
    unbatched = input.dim() == 1
    x, t = (input.unsqueeze(0), target.unsqueeze(0)) if unbatched else (input, target)
    loss = _run(_xent_op, x, t, weight, int(ignore_index), reduction, float(label_smoothing))
    return loss.squeeze(0) if unbatched and reduction == "none" else loss


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    """``torch.nn.functional.unfold`` (im2col) on :func:`fastnn.im2col`.

    Input ``(N, C, H, W)`` or unbatched ``(C, H, W)``; result ``(N, C*kh*kw, L)``, rows
    ordered (c, i, j) as PyTorch's.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.unfold(torch.arange(9.0).reshape(1, 1, 3, 3), 2)[0, :, 0].tolist()
    [0.0, 1.0, 3.0, 4.0]
    """
    k, d, p, s = (_ints(v, 2) for v in (kernel_size, dilation, padding, stride))
    why = _why_not(input=input)
    if why is None:
        if input.dim() not in (3, 4):
            why = f"input has {input.dim()} dimensions"
        for arg, parsed, value in (("kernel_size", k, kernel_size), ("dilation", d, dilation),
                                   ("padding", p, padding), ("stride", s, stride)):
            if why is None and parsed is None:
                why = _bad(arg, value)
    if why is not None:
        return _fallback("unfold", why, F.unfold, input, kernel_size, dilation, padding, stride)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    y = _run(_unfold_op, x, list(k), list(d), list(p), list(s))
    return y.squeeze(0) if unbatched else y


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """``torch.nn.functional.fold`` (col2im, overlaps summed) on :func:`fastnn.col2im`.

    Input ``(N, C*kh*kw, L)`` or unbatched ``(C*kh*kw, L)``.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.fold(torch.ones(1, 4, 4), (3, 3), 2)[0, 0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
    """
    o, k, d, p, s = (_ints(v, 2) for v in (output_size, kernel_size, dilation, padding, stride))
    why = _why_not(input=input)
    if why is None:
        if input.dim() not in (2, 3):
            why = f"input has {input.dim()} dimensions"
        for arg, parsed, value in (("output_size", o, output_size),
                                   ("kernel_size", k, kernel_size), ("dilation", d, dilation),
                                   ("padding", p, padding), ("stride", s, stride)):
            if why is None and parsed is None:
                why = _bad(arg, value)
    if why is not None:
        return _fallback("fold", why, F.fold, input, output_size, kernel_size, dilation, padding,
                         stride)
    unbatched = input.dim() == 2
    x = input.unsqueeze(0) if unbatched else input
    y = _run(_fold_op, x, list(o), list(k), list(d), list(p), list(s))
    return y.squeeze(0) if unbatched else y


def _band_torch(weight, num_lower, num_upper):
    """band_part of an (out, in) matrix in PyTorch ops (the fallback's weight)."""
    w = weight
    if num_upper >= 0:
        w = w.tril(num_upper)
    if num_lower >= 0:
        w = w.triu(-num_lower)
    return w


def banded_linear(x, weight, num_lower, num_upper, bias=None):
    """A linear layer whose ``(out, in)`` weight is banded, on :func:`fastnn.banded_matmul`.

    ``y = x @ band(weight).T + bias`` where ``band`` keeps ``weight[o, i]`` when
    ``o - i <= num_lower`` and ``i - o <= num_upper`` (a negative bound keeps that whole
    side): ``num_lower`` counts the diagonals kept *below* the main diagonal of the
    ``(out, in)`` matrix as stored (``nn.Linear``'s layout), ``num_upper`` those above,
    exactly ``tf.linalg.band_part(weight, num_lower, num_upper)``. (fastnn's
    ``banded_matmul`` takes the transposed ``(in, out)`` matrix, whose band is the mirror
    image; the adapter passes a transposed view and swaps the bounds.)

    Work is proportional to the band; the weight gradient is zero outside it.

    Parameters
    ----------
    x : Tensor
        ``(..., in)``.
    weight : Tensor
        ``(out, in)``.
    num_lower, num_upper : int
    bias : Tensor, optional
        ``(out,)``.

    Returns
    -------
    Tensor
        ``(..., out)``.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> ft.banded_linear(torch.tensor([[1., 2., 3.]]), torch.ones(3, 3), 0, 1).tolist()
    [[3.0, 5.0, 3.0]]
    """
    why = _why_not(x=x, weight=weight, bias=bias)
    if why is None:
        for arg, v in (("num_lower", num_lower), ("num_upper", num_upper)):
            if why is None and (isinstance(v, bool) or not isinstance(v, int)):
                why = _bad(arg, v)
        if why is None and (x.dim() < 1 or weight.dim() != 2):
            why = f"x has {x.dim()} and weight {weight.dim()} dimensions"
    if why is not None:
        return _fallback("banded_linear", why,
                         lambda: F.linear(x, _band_torch(weight, int(num_lower), int(num_upper)),
                                          bias))
    return _run(_banded_op, x, weight, bias, num_lower, num_upper)


def masked_linear(x, weight, mask, bias=None):
    """A linear layer with a fixed sparsity mask, on :func:`fastnn.masked_matmul`.

    ``y = x @ (weight * mask).T + bias`` with ``weight`` and ``mask`` in ``nn.Linear``'s
    ``(out, in)`` layout; a weight is used where the mask is non-zero and is an exact
    zero elsewhere (even a NaN weight). Sparse masks cost in proportion to their
    non-zeros; the weight gradient is zero where the mask is.

    Parameters
    ----------
    x : Tensor
        ``(..., in)``.
    weight : Tensor
        ``(out, in)``.
    mask : Tensor
        ``(out, in)``, bool, integer or float (not differentiated).
    bias : Tensor, optional
        ``(out,)``.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> mask = torch.tensor([[True, False], [False, True]])
    >>> ft.masked_linear(torch.tensor([[1., 2.]]), torch.ones(2, 2), mask).tolist()
    [[1.0, 2.0]]
    """
    why = _why_not(x=x, weight=weight, bias=bias)
    if why is None:
        if not isinstance(mask, Tensor):
            why = "mask is not a tensor"
        elif mask.device.type != "cpu":
            why = f"mask is on {mask.device} (fastnn runs on the CPU)"
        elif mask.requires_grad:
            why = "mask requires grad (fastnn does not differentiate the mask)"
        elif mask.dtype.is_complex:
            why = f"mask has dtype {mask.dtype}"
        elif x.dim() < 1:
            why = "x is 0-d"
    if why is not None:
        return _fallback("masked_linear", why,
                         lambda: F.linear(x, torch.where(mask != 0, weight, 0), bias))
    return _run(_masked_op, x, weight, mask, bias)


def _local_torch(input, weight, bias, k, s, pads):
    """The locally connected layer in PyTorch ops (unfold + one product per position)."""
    x = F.pad(input, (pads[2], pads[3], pads[0], pads[1]))
    N, C = x.shape[:2]
    Ho, Wo, K, P = weight.shape
    cols = F.unfold(x, k, stride=s)                                     # (N, C*kh*kw, L)
    cols = cols.reshape(N, C, k[0] * k[1], -1).transpose(1, 2).reshape(N, P, -1)
    y = torch.einsum("npl,lkp->nkl", cols, weight.reshape(Ho * Wo, K, P))
    y = y.reshape(N, K, Ho, Wo)
    return y if bias is None else y + bias.permute(2, 0, 1)


def locally_connected2d(input, weight, bias=None, *, kernel_size, stride=1, padding=0):
    """A 2-D locally connected layer (unshared convolution), NCHW, on
    :func:`fastnn.locally_connected2d`.

    One ``nn.Linear`` per output pixel: ``weight[oh, ow]`` is that pixel's ``(out, in)``
    matrix over its ``kh x kw x C`` input patch, the patch flattened in (i, j, c) order
    (kernel row, kernel column, channel -- fastnn's NHWC im2col order; a weight in
    ``F.unfold``'s (c, i, j) order converts with
    ``w.unflatten(-1, (C, kh, kw)).permute(0, 1, 2, 4, 5, 3).flatten(-3)``).

    Parameters
    ----------
    input : Tensor
        ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
    weight : Tensor
        ``(Ho, Wo, K, kh*kw*C)``.
    bias : Tensor, optional
        ``(Ho, Wo, K)``.
    kernel_size, stride : int or (int, int)
    padding : int, (int, int), "valid" or "same"
        Zero padding (symmetric; ``"same"``: stride 1, the odd element after).

    Returns
    -------
    Tensor
        ``(N, K, Ho, Wo)`` (or ``(K, Ho, Wo)``).

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
    >>> ft.locally_connected2d(x, torch.ones(1, 1, 1, 4), kernel_size=2).flatten().tolist()
    [6.0]
    """
    k, s = _ints(kernel_size, 2), _ints(stride, 2)
    pads = None if k is None or s is None else _conv_padding(padding, 2, k, s, (1, 1))
    why = _why_not(input=input, weight=weight, bias=bias)
    if why is None:
        if input.dim() not in (3, 4):
            why = f"input has {input.dim()} dimensions"
        elif k is None:
            why = _bad("kernel_size", kernel_size)
        elif s is None:
            why = _bad("stride", stride)
        elif pads is None:
            why = _bad("padding", padding)
        elif weight.dim() != 4:
            why = f"weight has {weight.dim()} dimensions, expected (Ho, Wo, K, kh*kw*C)"
    unbatched = isinstance(input, Tensor) and input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    if why is not None:
        if k is None or s is None or pads is None:
            raise ValueError(f"locally_connected2d: {why}")
        y = _fallback("locally_connected2d", why, _local_torch, x, weight, bias, k, s, pads)
    else:
        y = _run(_local2d_op, x, weight, bias, list(k), list(s), pads)
    return y.squeeze(0) if unbatched else y


# ================================================================== recurrent helpers
def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _sequence_layer(sequence, x, states, weights, flags, batch_first):
    """One layer and direction on a sequence op: (output, final states)."""
    tensors = (x, *states, *weights)
    res = _run(sequence.fwd, *tensors, *flags, batch_first, _needs_grad(*tensors))
    return res[0], tuple(res[1:1 + sequence.n_states])


# ================================================================== modules
class Conv1d(nn.Conv1d):
    """``torch.nn.Conv1d`` running on fastnn (:func:`conv1d`); same arguments,
    parameters and ``state_dict``. Non-zero ``padding_mode`` pads with ``F.pad`` first,
    as PyTorch does."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            return conv1d(F.pad(input, self._reversed_padding_repeated_twice,
                                mode=self.padding_mode), weight, bias, self.stride, 0,
                          self.dilation, self.groups)
        return conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` running on fastnn (:func:`conv2d`); same arguments,
    parameters and ``state_dict``.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> torch.manual_seed(0) and None
    >>> ours = ft.Conv2d(3, 4, 3, padding=1)
    >>> torch.manual_seed(0) and None
    >>> theirs = torch.nn.Conv2d(3, 4, 3, padding=1)
    >>> x = torch.randn(2, 3, 5, 5)
    >>> bool(torch.allclose(ours(x), theirs(x), atol=1e-5)), list(ours.state_dict())
    (True, ['weight', 'bias'])
    """

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            return conv2d(F.pad(input, self._reversed_padding_repeated_twice,
                                mode=self.padding_mode), weight, bias, self.stride, 0,
                          self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` running on fastnn (:func:`conv_transpose2d`),
    ``output_size`` included."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation)


class MaxPool1d(nn.MaxPool1d):
    """``torch.nn.MaxPool1d`` running on fastnn (:func:`max_pool1d`)."""

    def forward(self, input):
        return max_pool1d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class MaxPool2d(nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` running on fastnn (:func:`max_pool2d`)."""

    def forward(self, input):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool1d(nn.AvgPool1d):
    """``torch.nn.AvgPool1d`` running on fastnn (:func:`avg_pool1d`)."""

    def forward(self, input):
        return avg_pool1d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad)


class AvgPool2d(nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` running on fastnn (:func:`avg_pool2d`)."""

    def forward(self, input):
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)


class ReLU(nn.ReLU):
    """``torch.nn.ReLU`` running on fastnn (:func:`relu`)."""

    def forward(self, input):
        return relu(input, inplace=self.inplace)


class LeakyReLU(nn.LeakyReLU):
    """``torch.nn.LeakyReLU`` running on fastnn (:func:`leaky_relu`)."""

    def forward(self, input):
        return leaky_relu(input, self.negative_slope, self.inplace)


class Sigmoid(nn.Sigmoid):
    """``torch.nn.Sigmoid`` running on fastnn (:func:`sigmoid`)."""

    def forward(self, input):
        return sigmoid(input)


class Tanh(nn.Tanh):
    """``torch.nn.Tanh`` running on fastnn (:func:`tanh`)."""

    def forward(self, input):
        return tanh(input)


class Softmax(nn.Softmax):
    """``torch.nn.Softmax`` running on fastnn (:func:`softmax`)."""

    def forward(self, input):
        return softmax(input, self.dim, _stacklevel=5)


class LogSoftmax(nn.LogSoftmax):
    """``torch.nn.LogSoftmax`` running on fastnn (:func:`log_softmax`)."""

    def forward(self, input):
        return log_softmax(input, self.dim, _stacklevel=5)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` running on fastnn (:func:`cross_entropy`)."""

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)


class Unfold(nn.Unfold):
    """``torch.nn.Unfold`` running on fastnn (:func:`unfold`)."""

    def forward(self, input):
        return unfold(input, self.kernel_size, self.dilation, self.padding, self.stride)


class Fold(nn.Fold):
    """``torch.nn.Fold`` running on fastnn (:func:`fold`)."""

    def forward(self, input):
        return fold(input, self.output_size, self.kernel_size, self.dilation, self.padding,
                    self.stride)


class LSTMCell(nn.LSTMCell):
    """``torch.nn.LSTMCell`` running on fastnn (``torch.ops.fastnn.lstm_cell``)."""

    def forward(self, input, hx=None):
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D "
                             f"instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got "
                                     f"{value.dim()}D instead")
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        why = _why_not(input=x, h=hx[0], c=hx[1], weight_ih=self.weight_ih,
                       weight_hh=self.weight_hh, bias_ih=self.bias_ih, bias_hh=self.bias_hh)
        if why is not None:
            ret = _fallback("lstm_cell", why, torch._VF.lstm_cell, x, hx, self.weight_ih,
                            self.weight_hh, self.bias_ih, self.bias_hh)
        else:
            ret = _run(_lstm_cell_op, x, hx[0], hx[1], self.weight_ih, self.weight_hh,
                       self.bias_ih, self.bias_hh)
        if not is_batched:
            ret = (ret[0].squeeze(0), ret[1].squeeze(0))
        return tuple(ret)


class GRUCell(nn.GRUCell):
    """``torch.nn.GRUCell`` running on fastnn (``torch.ops.fastnn.gru_cell``)."""

    def forward(self, input, hx=None):
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D "
                             f"instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D "
                             f"instead")
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        why = _why_not(input=x, hx=hx, weight_ih=self.weight_ih, weight_hh=self.weight_hh,
                       bias_ih=self.bias_ih, bias_hh=self.bias_hh)
        if why is not None:
            ret = _fallback("gru_cell", why, torch._VF.gru_cell, x, hx, self.weight_ih,
                            self.weight_hh, self.bias_ih, self.bias_hh)
        else:
            ret = _run(_gru_cell_op, x, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                       self.bias_hh)
        return ret if is_batched else ret.squeeze(0)


class _RecurrentBase(nn.Module):
    """torch.nn.RNNBase's constructor, parameters (names, shapes, order, initialisation)
    and argument checks, without being an RNNBase (Dynamo refuses those), and the
    forward the recurrent twins share: per layer and direction one sequence op
    (``_sequence``), PyTorch's own forward (``_torch_forward``) for what fastnn does
    not run."""

    _GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
    _sequence = None
    _torch_forward = None

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
                 dtype=None):
        super().__init__()
        for name, value in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be greater than zero")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             "probability of an element being zeroed")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable "
                             "projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if mode != "LSTM" and proj_size:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bias, batch_first
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bidirectional, \
            proj_size
        factory = {"device": device, "dtype": dtype}
        gate_size = self._GATES[mode] * hidden_size
        dirs = 2 if bidirectional else 1
        real_hidden = proj_size if proj_size > 0 else hidden_size
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            for direction in range(dirs):
                layer_in = input_size if layer == 0 else real_hidden * dirs
                shapes = [(gate_size, layer_in), (gate_size, real_hidden)]
                names = ["weight_ih_l{}{}", "weight_hh_l{}{}"]
                if bias:
                    shapes += [(gate_size,), (gate_size,)]
                    names += ["bias_ih_l{}{}", "bias_hh_l{}{}"]
                if proj_size > 0:
                    shapes.append((proj_size, hidden_size))
                    names.append("weight_hr_l{}{}")
                suffix = "_reverse" if direction == 1 else ""
                names = [n.format(layer, suffix) for n in names]
                for name, shape in zip(names, shapes):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    # PyTorch's own checks and its forward (the fallback) work on these attributes.
    @property
    def _flat_weights(self):
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self):
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def _update_flat_weights(self):
        pass

    def flatten_parameters(self):
        pass

    reset_parameters = nn.RNNBase.reset_parameters
    extra_repr = nn.RNNBase.extra_repr
    check_input = nn.RNNBase.check_input
    get_expected_hidden_size = nn.RNNBase.get_expected_hidden_size
    check_hidden_size = nn.RNNBase.check_hidden_size

    def _fastnn_reason(self, input, hx):
        if isinstance(input, nn.utils.rnn.PackedSequence):
            return "a PackedSequence input (fastnn runs padded batches only)"
        if self.proj_size > 0:
            return "proj_size > 0 (fastnn's LSTM has no projection)"
        states = hx if isinstance(hx, tuple) else (hx,)
        return _why_not(input=input, **{f"hx[{i}]": s for i, s in enumerate(states)},
                        **{n: getattr(self, n) for n in self._flat_weights_names})

    def _layers(self, input, states):
        """Run the stack, one sequence op per layer and direction; the reverse direction
        runs on the time-reversed input. Returns the output and the final states of every
        layer and direction."""
        time_dim = 1 if self.batch_first else 0
        dirs = 2 if self.bidirectional else 1
        flags = self._flags()
        finals = []
        x = input
        for layer in range(self.num_layers):
            outs = []
            for direction in range(dirs):
                idx = layer * dirs + direction
                weights = [getattr(self, n) for n in self._all_weights[idx]]
                if not self.bias:
                    weights += [None, None]
                h = [None if s is None else s[idx] for s in states]
                xd = x if direction == 0 else x.flip(time_dim)
                out, last = _sequence_layer(self._sequence, xd, h, weights, flags,
                                            self.batch_first)
                outs.append(out if direction == 0 else out.flip(time_dim))
                finals.append(last)
            x = outs[0] if dirs == 1 else torch.cat(outs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, finals

    def _flags(self):
        """The sequence op's own arguments (between the weights and batch_first)."""
        return ()

    def forward(self, input, hx=None):
        why = self._fastnn_reason(input, hx)
        if why is not None:
            return _fallback(self._sequence.name, why, self._torch_forward, input, hx)
        name = type(self).__name__
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        n = self._sequence.n_states
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        x = input if is_batched else input.unsqueeze(batch_dim)
        if hx is not None:
            states = tuple(hx) if n > 1 else (hx,)
            want = 3 if is_batched else 2
            if any(s.dim() != want for s in states):
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                if n > 1:
                    got = ", ".join(f"{s.dim()}-D" for s in states)
                    raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D "
                                       f"but got ({got}) tensors")
                raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got "
                                   f"{hx.dim()}-D tensor")
            if not is_batched:
                states = tuple(s.unsqueeze(1) for s in states)
            self.check_forward_args(x, states if n > 1 else states[0], None)
        else:
            self.check_input(x, None)
            states = (None,) * n
        out, finals = self._layers(x, states)
        h_n = tuple(torch.stack([f[i] for f in finals]) for i in range(n))
        if not is_batched:
            out, h_n = out.squeeze(batch_dim), tuple(h.squeeze(1) for h in h_n)
        return out, (h_n if n > 1 else h_n[0])


class LSTM(_RecurrentBase):
    """``torch.nn.LSTM`` running on fastnn (``torch.ops.fastnn.lstm`` per layer and
    direction); same constructor, parameter names (``weight_ih_l0``, ...), initialisation
    and ``state_dict``, but a plain ``nn.Module`` so ``torch.compile(fullgraph=True)``
    traces it.

    fastnn runs unidirectional layers; ``bidirectional=True`` runs the reverse direction
    on the time-reversed input, ``dropout`` applies ``F.dropout`` between layers as
    PyTorch does. A ``PackedSequence`` input or ``proj_size > 0`` runs on PyTorch's
    LSTM (counted in :func:`fallback_counts` under "lstm").

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> torch.manual_seed(0) and None
    >>> ours = ft.LSTM(3, 5, batch_first=True)
    >>> torch.manual_seed(0) and None
    >>> theirs = torch.nn.LSTM(3, 5, batch_first=True)
    >>> x = torch.randn(2, 4, 3)
    >>> bool(torch.allclose(ours(x)[0], theirs(x)[0], atol=1e-5))
    True
    >>> list(ours.state_dict()) == list(theirs.state_dict())
    True
    """
    _sequence = _LSTM
    _torch_forward = nn.LSTM.forward

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden


class GRU(_RecurrentBase):
    """``torch.nn.GRU`` running on fastnn (``torch.ops.fastnn.gru`` per layer and
    direction); same constructor, parameter names, initialisation and ``state_dict``, a
    plain ``nn.Module`` (see :class:`LSTM`). A ``PackedSequence`` input runs on PyTorch.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> gru = ft.GRU(3, 5, num_layers=2)
    >>> out, h = gru(torch.randn(4, 2, 3))
    >>> out.shape, h.shape
    (torch.Size([4, 2, 5]), torch.Size([2, 2, 5]))
    """
    _sequence = _GRU
    _torch_forward = nn.GRU.forward

    def __init__(self, *args, **kwargs):
        super().__init__("GRU", *args, **kwargs)

    check_forward_args = nn.RNNBase.check_forward_args
    permute_hidden = nn.RNNBase.permute_hidden


class RNN(_RecurrentBase):
    """``torch.nn.RNN`` (Elman, ``nonlinearity`` "tanh" or "relu") running on fastnn
    (``torch.ops.fastnn.rnn`` per layer and direction, :func:`fastnn.simple_rnn`); same
    constructor (``nonlinearity`` the fourth positional argument, as PyTorch's), parameter
    names, initialisation and ``state_dict``, a plain ``nn.Module`` (see :class:`LSTM`).
    A ``PackedSequence`` input runs on PyTorch (counted under "rnn").

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> torch.manual_seed(0) and None
    >>> ours = ft.RNN(3, 5, nonlinearity="relu", batch_first=True)
    >>> torch.manual_seed(0) and None
    >>> theirs = torch.nn.RNN(3, 5, nonlinearity="relu", batch_first=True)
    >>> x = torch.randn(2, 4, 3)
    >>> bool(torch.allclose(ours(x)[0], theirs(x)[0], atol=1e-5))
    True
    """
    _sequence = _RNN
    _torch_forward = nn.RNN.forward

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        super().__init__(modes[nonlinearity], *args, **kwargs)
        self.nonlinearity = nonlinearity

    check_forward_args = nn.RNNBase.check_forward_args
    permute_hidden = nn.RNNBase.permute_hidden

    def _flags(self):
        return (self.nonlinearity,)


class BandedLinear(nn.Module):
    """A linear layer with a banded ``(out_features, in_features)`` weight
    (:func:`banded_linear`; ``num_lower`` diagonals below the main one kept, ``num_upper``
    above, negative = all). Parameters ``weight`` and ``bias`` as ``nn.Linear``'s,
    initialised the same way and zero outside the band.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> layer = ft.BandedLinear(6, 6, num_lower=1, num_upper=1)
    >>> layer(torch.randn(2, 6)).shape, int((layer.weight != 0).sum())
    (torch.Size([2, 6]), 16)
    """

    def __init__(self, in_features, out_features, num_lower, num_upper, bias=True, device=None,
                 dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.num_lower, self.num_upper = int(num_lower), int(num_upper)
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        if not bias:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        nn.Linear.reset_parameters(self)
        with torch.no_grad():
            self.weight.copy_(_band_torch(self.weight, self.num_lower, self.num_upper))

    def forward(self, input):
        return banded_linear(input, self.weight, self.num_lower, self.num_upper, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_lower={self.num_lower}, num_upper={self.num_upper}, "
                f"bias={self.bias is not None}")


class MaskedLinear(nn.Module):
    """A linear layer with a fixed sparsity mask (:func:`masked_linear`): ``weight`` and
    ``bias`` as ``nn.Linear``'s, the ``(out_features, in_features)`` mask a bool buffer
    ``mask`` (in the ``state_dict``).

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> layer = ft.MaskedLinear(4, 3, mask=torch.rand(3, 4) < 0.5)
    >>> layer(torch.randn(2, 4)).shape, sorted(layer.state_dict())
    (torch.Size([2, 3]), ['bias', 'mask', 'weight'])
    """

    def __init__(self, in_features, out_features, mask, bias=True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        mask = torch.as_tensor(mask, device=device) != 0
        if tuple(mask.shape) != (out_features, in_features):
            raise ValueError(f"MaskedLinear: mask must have shape (out_features, in_features) "
                             f"= {(out_features, in_features)}, got {tuple(mask.shape)}")
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("mask", mask)
        self.reset_parameters()

    reset_parameters = nn.Linear.reset_parameters

    def forward(self, input):
        return masked_linear(input, self.weight, self.mask, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nonzeros={int(self.mask.sum())}, bias={self.bias is not None}")


class LocallyConnected2d(nn.Module):
    """A 2-D locally connected layer, NCHW (:func:`locally_connected2d`): an unshared
    convolution, one ``(out_channels, kh*kw*in_channels)`` matrix per output pixel.

    Parameters ``weight`` ``(Ho, Wo, out_channels, kh*kw*in_channels)`` (patch in (i, j, c)
    order) and ``bias`` ``(Ho, Wo, out_channels)``, initialised like ``nn.Conv2d``
    (uniform in +-1/sqrt(fan_in)). ``input_size`` (H, W) fixes the output grid.

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> layer = ft.LocallyConnected2d(3, 4, input_size=(6, 6), kernel_size=3)
    >>> layer(torch.randn(2, 3, 6, 6)).shape, tuple(layer.weight.shape)
    (torch.Size([2, 4, 4, 4]), (4, 4, 4, 27))
    """

    def __init__(self, in_channels, out_channels, input_size, kernel_size, stride=1, padding=0,
                 bias=True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        k, s, size = _ints(kernel_size, 2), _ints(stride, 2), _ints(input_size, 2)
        for name, v, raw in (("kernel_size", k, kernel_size), ("stride", s, stride),
                             ("input_size", size, input_size)):
            if v is None or min(v) < 1:
                raise ValueError(f"LocallyConnected2d: {name} must be a positive int or a pair, "
                                 f"got {raw!r}")
        pads = _conv_padding(padding, 2, k, s, (1, 1))
        if pads is None:
            raise ValueError(f"LocallyConnected2d: padding must be an int, a pair, 'valid' or "
                             f"'same' (stride 1), got {padding!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size, self.kernel_size, self.stride, self.padding = size, k, s, padding
        Ho = _conv_out(size[0], k[0], s[0], pads[0] + pads[1], 1)
        Wo = _conv_out(size[1], k[1], s[1], pads[2] + pads[3], 1)
        if Ho < 1 or Wo < 1:
            raise ValueError(f"LocallyConnected2d: kernel_size {k} is larger than the padded "
                             f"input {size}")
        self.output_size = (Ho, Wo)
        fan_in = k[0] * k[1] * in_channels
        self.weight = nn.Parameter(torch.empty((Ho, Wo, out_channels, fan_in), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty((Ho, Wo, out_channels), **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.weight.shape[-1]) if self.weight.shape[-1] else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return locally_connected2d(input, self.weight, self.bias, kernel_size=self.kernel_size,
                                   stride=self.stride, padding=self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"
                f", bias={self.bias is not None}")


# ================================================================== swap
# torch.nn class -> twin. Exact types only: a user's subclass may override forward.
_TWINS = {
    nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.ConvTranspose2d: ConvTranspose2d,
    nn.MaxPool1d: MaxPool1d, nn.MaxPool2d: MaxPool2d, nn.AvgPool1d: AvgPool1d,
    nn.AvgPool2d: AvgPool2d, nn.ReLU: ReLU, nn.LeakyReLU: LeakyReLU, nn.Sigmoid: Sigmoid,
    nn.Tanh: Tanh, nn.Softmax: Softmax, nn.LogSoftmax: LogSoftmax,
    nn.CrossEntropyLoss: CrossEntropyLoss, nn.Unfold: Unfold, nn.Fold: Fold,
    nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN,
}


def _static_reason(module):
    """Why a module's configuration would always run on PyTorch (None: fastnn runs it)."""
    if isinstance(module, nn.ConvTranspose2d) and module.padding_mode != "zeros":
        return "padding_mode"
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
        d = module.dilation if isinstance(module.dilation, tuple) else (module.dilation,)
        if any(v != 1 for v in d) and not _MAX_POOL_ARGS["dilation"]:
            return "dilation"
        if module.ceil_mode and not _MAX_POOL_ARGS["ceil_mode"]:
            return "ceil_mode"
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)):
        if module.ceil_mode and not _AVG_POOL_ARGS["ceil_mode"]:
            return "ceil_mode"
        p = module.padding if isinstance(module.padding, tuple) else (module.padding,)
        if module.count_include_pad and any(v != 0 for v in p) \
                and not _AVG_POOL_ARGS["count_include_pad"]:
            return "count_include_pad"
        if getattr(module, "divisor_override", None) is not None \
                and not _AVG_POOL_ARGS["divisor_override"]:
            return "divisor_override"
    if isinstance(module, nn.CrossEntropyLoss):
        if module.weight is not None and not _XENT_ARGS["weight"]:
            return "weight"
        if module.label_smoothing and not _XENT_ARGS["label_smoothing"]:
            return "label_smoothing"
    if isinstance(module, nn.LSTM) and module.proj_size > 0:
        return "proj_size"
    return None


def _twin(module):
    cls = _TWINS[type(module)]
    if issubclass(cls, _RecurrentBase):
        twin = cls.__new__(cls)
        nn.Module.__init__(twin)
        for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first",
                     "dropout", "bidirectional", "proj_size", "nonlinearity"):
            if hasattr(module, attr):
                setattr(twin, attr, getattr(module, attr))
        twin._flat_weights_names = list(module._flat_weights_names)
        twin._all_weights = [list(names) for names in module._all_weights]
        for name in module._flat_weights_names:
            twin.register_parameter(name, getattr(module, name))
        twin.training = module.training
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                      "_state_dict_hooks", "_load_state_dict_pre_hooks"):
            if hasattr(module, hooks):
                getattr(twin, hooks).update(getattr(module, hooks))
        return twin
    # The twins subclass the torch.nn class and add no state: the same attributes (fresh
    # containers holding the same Parameter, buffer and hook objects) make the twin.
    twin = cls.__new__(cls)
    twin.__dict__.update({k: (v.copy() if isinstance(v, dict) else v)
                          for k, v in module.__dict__.items()})
    return twin


def swap(model, inplace=False):
    """Replace every ``torch.nn`` submodule that fastnn runs by its fastnn twin.

    The twins share the replaced modules' ``Parameter`` and buffer objects (and hooks),
    so the model computes the same outputs and gradients, trains with the same
    optimizer, and keeps its ``state_dict``. Modules of other types (``nn.Linear``,
    ``nn.BatchNorm2d``, ...), subclasses, and configurations that would always run on
    PyTorch (e.g. ``proj_size > 0``) stay as they are; a module used at several places
    is replaced by one twin.

    Parameters
    ----------
    model : torch.nn.Module
    inplace : bool
        False (default): work on ``copy.deepcopy(model)`` and leave ``model`` untouched;
        True: replace the submodules of ``model`` itself.

    Returns
    -------
    torch.nn.Module
        The model with twins (``model`` itself when ``inplace``, unless ``model`` is a
        supported module, which is returned as its twin).

    Examples
    --------
    >>> import torch, fastnn.torch as ft
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten())
    >>> fast = ft.swap(net)
    >>> [type(m).__module__ + "." + type(m).__name__ for m in fast]
    ['fastnn.torch.Conv2d', 'fastnn.torch.ReLU', 'torch.nn.modules.flatten.Flatten']
    >>> x = torch.randn(1, 1, 5, 5)
    >>> bool(torch.allclose(fast(x), net(x), atol=1e-6))
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"swap: model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    memo = {}

    def convert_module(module):
        if id(module) in memo:
            return memo[id(module)]
        result = module
        if type(module) in _TWINS and _static_reason(module) is None:
            result = _twin(module)
        memo[id(module)] = result
        for name, child in list(result._modules.items()):
            if child is not None:
                new = convert_module(child)
                if new is not child:
                    result._modules[name] = new
        return result

    return convert_module(model)
