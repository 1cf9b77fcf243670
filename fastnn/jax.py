"""JAX adapter: fastnn's kernels as differentiable, jit-able, vmap-able JAX functions.

``import fastnn.jax`` (never done by ``import fastnn``) needs JAX:
``pip install "fastnn[jax]"``.

Every function here has the name and signature of the fastnn forward it wraps
(``fastnn.jax.conv2d(x, weight, bias=None, *, stride=1, ...)``), takes and returns
JAX arrays, and works under :func:`jax.jit`, :func:`jax.grad` (and the rest of JAX's
autodiff: ``vjp``, ``value_and_grad``; reverse mode only, there is no forward-mode
rule) and :func:`jax.vmap`, in float32 and, with ``jax_enable_x64``, float64.
The keyword arguments (stride, padding, layout, ...) are static Python values.

How it works
------------
Each function is a :func:`jax.custom_vjp` whose forward and backward are host calls of
fastnn's kernel and its ``*_backward``: the adapter computes nothing itself. The host
calls read JAX's buffers in place (read-only NumPy views) and never write to them;
each result is copied into JAX's result buffer. Output shapes are found at trace time
by calling the fastnn function on an empty batch, so shape and argument errors are
raised where the function is called, with fastnn's messages. Errors that depend on
values (a class label out of range) can only be found inside the host call and reach
the caller as JAX's runtime error (:class:`jax.errors.JaxRuntimeError`, whose message
gives the Python exception's type, message and traceback).

The backward computes only the gradients of the arguments being differentiated
(``need_input_grad`` / ``need_weight_grad`` / ``bias`` where fastnn has them) and
skips outputs whose cotangent is zero. Arguments fastnn has no gradient for
(integer labels, probability labels and class weights of the cross-entropy, masks)
are never differentiated: asking for their gradient raises ``NotImplementedError``
instead of returning zeros.

Under :func:`jax.vmap` the host calls use ``vmap_method="expand_dims"``: when the
weights are not mapped, the mapped axis is folded into the op's own batch axis and
fastnn runs once on the bigger batch (so ``vmap`` over examples costs one call);
otherwise (mapped weights, per-example weight gradients, reduced losses) fastnn is
called once per mapped element. Elementwise functions and softmax use
``"broadcast_all"`` and run once on the whole mapped array.

Recurrent layers (:func:`lstm`, :func:`gru`, :func:`simple_rnn`) keep the arrays of
fastnn's training cache as JAX residuals, so their backward does not redo the
forward's products.

Host calls: XLA FFI, or ``jax.pure_callback``
---------------------------------------------
fastnn's specification names :func:`jax.pure_callback` as the host-call mechanism.
By default this module deviates from it, for speed: each host call is an XLA FFI
custom call (:func:`jax.ffi.ffi_call` of one target, ``fastnn_host``, registered for
the CPU with :func:`jax.ffi.register_ffi_target`) whose handler is a Python function
behind a ``ctypes`` C function pointer (in ``fastnn._jax_ffi``); it answers XLA's
metadata query with the running XLA's FFI API version, acts only at the execute
stage, and turns a Python exception into an XLA error (made with the FFI API's own
error constructor), never a crash.
Like ``pure_callback`` the call has no side effect: JAX may drop an unused one, and
``vmap_method`` is the same. ``pure_callback``'s own machinery (wrapping the
arguments, ``device_put`` of the results) costs far more than the kernels of small
calls. Per call of a jitted ``fastnn.jax.relu`` of 1000 float32 (best of 5 x 3000
calls, ``block_until_ready``, on a loaded 2-core VM; the raw ``fastnn.relu`` takes
2 us and a jitted ``jnp.maximum(x, 0)`` 8 to 30 us there):

==================================  ==========  ===============
                                    FFI         pure_callback
==================================  ==========  ===============
jitted ``relu``, 1000 float32       22 us       106 us
jitted ``conv2d`` (1x3x8x8, 4x3x3)  54 us       203 us
``jax.jit(jax.grad(...))`` of it    137 us      321 us
==================================  ==========  ===============

The environment variable ``FASTNN_JAX_CALLBACK`` (``ffi``, the default, or
``pure_callback``) chooses the mechanism. It is read at each call of a fastnn.jax
function (each eager call, and each time ``jax.jit`` traces one); a function already
compiled keeps the mechanism it was compiled with. When ``jax.ffi`` lacks what the
FFI path needs (``ffi_call``, ``register_ffi_target``) or the registration fails, the
module uses ``pure_callback``, silently; the check runs once per process.

Caveats of the FFI path: its host objects (one per signature and direction) stay
registered for the life of the process, since a compiled executable names them by
number only; and a compiled executable is meaningful only in the process that traced
it (``jax.export`` refuses the unknown custom call target, as it refuses
``pure_callback``).

Examples
--------
>>> import jax, jax.numpy as jnp
>>> import fastnn.jax as fj
>>> x = jnp.ones((1, 1, 4, 4)); w = jnp.ones((1, 1, 2, 2))
>>> fj.conv2d(x, w, stride=2)[0, 0]
Array([[4., 4.],
       [4., 4.]], dtype=float32)
>>> g = jax.jit(jax.grad(lambda w: fj.relu(fj.conv2d(x, w)).sum()))(w)
>>> g[0, 0]
Array([[9., 9.],
       [9., 9.]], dtype=float32)
"""
try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError('fastnn.jax needs JAX, which is not installed: pip install "fastnn[jax]"'
                      ) from exc

import functools
import os

import numpy as np

import fastnn
from fastnn import _jax_ffi

__all__ = [
    "conv2d", "conv1d", "conv_transpose2d",
    "max_pool2d", "max_pool1d", "avg_pool2d", "avg_pool1d",
    "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax", "softmax_cross_entropy",
    "banded_matmul", "masked_matmul", "locally_connected1d", "locally_connected2d",
    "lstm", "gru", "simple_rnn", "lstm_cell", "gru_cell",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ------------------------------------------------------------------ host side
def _freeze(value):
    """A hashable form of a static argument (lists become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


class _Host:
    """A fastnn call as a host-call target (FFI handler or ``pure_callback``).

    ``fn(*arrays)`` works on the unmapped (base) shapes and returns a tuple of
    arrays. Under ``vmap_method="expand_dims"`` each argument arrives with the same
    number of extra leading axes (size 1 where it is not mapped). ``in_axes`` /
    ``out_axes`` give each base array's batch axis (None: no batch axis, like a
    weight); when every output has one and every argument without one is unmapped,
    the mapped axes are folded into the batch axis and ``fn`` runs once, else it
    runs once per mapped element. ``separable``: false for a function of the whole
    batch (a mean over it), which is never folded. ``elementwise``: ``fn`` takes any
    leading axes itself (``vmap_method="broadcast_all"``).
    """

    def __init__(self, fn, base_ndims, in_axes, out_specs, out_axes, elementwise=False,
                 separable=True, path="pure_callback"):
        self.fn = fn
        self.path = path
        self.separable = separable
        self.base_ndims = tuple(base_ndims)
        self.in_axes = tuple(in_axes)
        self.out_specs = tuple(out_specs)
        self.out_axes = tuple(out_axes)
        self.elementwise = elementwise
        self.vmap_method = "broadcast_all" if elementwise else "expand_dims"

    def __call__(self, *args):
        arrays = [np.asarray(a) for a in args]     # zero-copy, read-only views
        lead = arrays[0].ndim - self.base_ndims[0] if arrays else 0
        if lead == 0:
            return self._finish(self.fn(*arrays), ())
        batch = np.broadcast_shapes(*(a.shape[:lead] for a in arrays))
        if self.elementwise:        # broadcast_all: the leading axes are just more elements
            return self._finish(self.fn(*arrays), batch)
        mapped = [any(d != 1 for d in a.shape[:lead]) for a in arrays]
        if self.separable and all(ax is not None for ax in self.out_axes) and all(
                ax is not None or not m for ax, m in zip(self.in_axes, mapped)):
            return self._folded(arrays, lead, batch)
        return self._looped(arrays, lead, batch)

    def _finish(self, outs, batch):
        res = []
        for o, spec in zip(outs, self.out_specs):
            o = np.asarray(o, dtype=spec.dtype)
            if o.shape != batch + tuple(spec.shape):
                raise RuntimeError(f"fastnn.jax: a kernel returned shape {o.shape}, "
                                   f"expected {batch + tuple(spec.shape)}")
            res.append(o)
        return tuple(res)

    def _folded(self, arrays, lead, batch):
        folded = []
        for a, ax in zip(arrays, self.in_axes):
            if ax is None:
                folded.append(a.reshape(a.shape[lead:]))
                continue
            a = np.broadcast_to(a, batch + a.shape[lead:])
            if ax:
                a = np.moveaxis(a, tuple(range(lead)), tuple(range(ax, ax + lead)))
            folded.append(a.reshape(a.shape[:ax] + (-1,) + a.shape[ax + lead + 1:]))
        outs = []
        for o, spec, ax in zip(self.fn(*folded), self.out_specs, self.out_axes):
            n = spec.shape[ax]
            o = np.asarray(o).reshape(o.shape[:ax] + batch + (n,) + o.shape[ax + 1:])
            if ax:
                o = np.moveaxis(o, tuple(range(ax, ax + lead)), tuple(range(lead)))
            outs.append(o)
        return self._finish(outs, batch)

    def _looped(self, arrays, lead, batch):
        outs = [np.empty(batch + tuple(s.shape), s.dtype) for s in self.out_specs]
        for idx in np.ndindex(*batch):
            sub = [a[tuple(i if d != 1 else 0 for i, d in zip(idx, a.shape[:lead]))]
                   for a in arrays]
            for o, r in zip(outs, self.fn(*sub)):
                o[idx] = r
        return tuple(outs)

    def call(self, *args):
        if self.path == "ffi":
            return _jax_ffi.call(self, args)
        return jax.pure_callback(self, self.out_specs, *args, vmap_method=self.vmap_method)


_PATHS = ("ffi", "pure_callback")


def _host_call_path():
    """The host-call mechanism of a fastnn.jax call being made now: ``"ffi"`` (the
    default, when ``jax.ffi`` can register the handler) or ``"pure_callback"``, chosen by
    the environment variable ``FASTNN_JAX_CALLBACK`` as it is at the call."""
    wanted = os.environ.get("FASTNN_JAX_CALLBACK", "").strip().lower() or "ffi"
    if wanted not in _PATHS:
        raise ValueError(f"FASTNN_JAX_CALLBACK must be one of {', '.join(_PATHS)}, "
                         f"got {wanted!r}")
    if wanted == "ffi" and not _jax_ffi.available():
        return "pure_callback"
    return wanted


def _spec(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), jax.dtypes.canonicalize_dtype(dtype))


def _zeros(names, sig, in_axes, n):
    """Zero-stride zeros of the argument shapes (no memory, whatever their size), with
    the batch axes set to ``n`` (None: as they are)."""
    probe = {}
    for name, (shape, dtype), ax in zip(names, sig, in_axes):
        if n is not None and ax is not None:
            shape = shape[:ax] + (n,) + shape[ax + 1:]
        probe[name] = np.broadcast_to(np.zeros((), dtype), shape)
    return probe


def _empty_batch(op, st, names, sig, in_axes):
    """Output specs from a fastnn call on an empty batch (the batch axis set to 0)."""
    sizes = {shape[ax] for (shape, _), ax in zip(sig, in_axes) if ax is not None}
    n = sizes.pop() if len(sizes) == 1 else None
    try:
        outs = op.forward(st, **_zeros(names, sig, in_axes, 0 if n is not None else None))
    except (TypeError, ValueError):
        if n is None:
            raise
        # The caller's shapes in the message: fastnn checks them before computing.
        op.forward(st, **_zeros(names, sig, in_axes, None))
        raise
    specs = []
    for o, ax in zip(outs, op.out_axes(st)):
        shape = o.shape
        if n is not None and ax is not None:
            shape = shape[:ax] + (n,) + shape[ax + 1:]
        specs.append(_spec(shape, o.dtype))
    return specs


class _Op:
    """One fastnn function and its backward, as seen by the generic builder.

    Subclasses define ``forward(st, **arrays) -> tuple`` (absent optional arrays are
    None), ``backward(st, saved, cts, need) -> dict name -> grad`` (at least the
    gradients of the names in ``need``) and the batch axes.
    ``saved`` names what the backward needs: inputs by name, outputs as "y0", "y1",
    ... and extra training outputs (``train``) as "e0", "e1", ...
    """
    name = ""
    elementwise = False
    float_args = ()          # names that must be float32/float64 (cast to one dtype)

    zero_cotangents = False  # backward takes None for a zero output cotangent

    @property
    def differentiable(self):
        """Names of the arguments that get a gradient (when they are floats)."""
        return self.float_args

    def bind(self, st, names, sig):
        """The op for one signature (ops whose residuals depend on it override this)."""
        return self

    def in_axes(self, st, names):
        return tuple(self.batch_axes(st).get(n) for n in names)

    def batch_axes(self, st):
        return {}

    def out_axes(self, st):
        return (0,)

    def separable(self, st):
        """Whether the batch entries are independent (folding vmap into the batch is exact)."""
        return True

    def train(self, st, **arrays):
        """(outputs, extras) of the forward used under differentiation."""
        return self.forward(st, **arrays), ()

    def extra_specs(self, st, names, sig):
        return ()

    def out_specs(self, st, names, sig, in_axes):
        if self.elementwise:
            return [_spec(sig[0][0], sig[0][1])]
        return _empty_batch(self, st, names, sig, in_axes)


@functools.lru_cache(maxsize=1024)
def _build(op, st, names, sig, path):
    """The custom_vjp function of ``op`` for static arguments ``st`` and the array
    arguments ``names`` of shapes and dtypes ``sig``, calling the host through ``path``
    (cached: one callback object per signature keeps JAX's dispatch cache warm in eager
    mode; the path is part of the key because JAX caches the trace of each custom_vjp
    function)."""
    stat = dict(st)
    in_axes = op.in_axes(stat, names)
    base = [len(shape) for shape, _ in sig]
    out_specs = op.out_specs(stat, names, sig, in_axes)
    out_axes = op.out_axes(stat)
    n_out = len(out_specs)

    def forward(*arrays):
        return op.forward(stat, **dict(zip(names, arrays)))

    sep = op.separable(stat)
    primal = _Host(forward, base, in_axes, out_specs, out_axes, op.elementwise, sep, path)
    float_outs = tuple(i for i, s in enumerate(out_specs) if np.dtype(s.dtype) in _FLOATS)
    floats = tuple(i for i, (_, dt) in enumerate(sig) if np.dtype(dt) in _FLOATS)

    @functools.lru_cache(maxsize=None)
    def training():
        """The training forward's callback and the names of the saved arrays, made when
        first differentiated (a recurrent op's cache layout costs one forward to find)."""
        bound = op.bind(stat, names, sig)

        def train(*arrays):
            outs, extras = bound.train(stat, **dict(zip(names, arrays)))
            return tuple(outs) + tuple(extras)

        extra_specs = list(bound.extra_specs(stat, names, sig))
        trained = _Host(train, base, in_axes, out_specs + extra_specs,
                        tuple(out_axes) + (None,) * len(extra_specs), op.elementwise, sep,
                        path)
        pool = {n: (len(s), ax) for n, (s, _), ax in zip(names, sig, in_axes)}
        pool.update({f"y{i}": (len(s.shape), ax)
                     for i, (s, ax) in enumerate(zip(out_specs, out_axes))})
        pool.update({f"e{i}": (len(s.shape), None) for i, s in enumerate(extra_specs)})
        saved = tuple(n for n in bound.saves(stat, names) if n in pool)
        return bound, trained, saved, pool

    @functools.lru_cache(maxsize=None)
    def backward_host(wanted, live):
        """The backward callback for the arguments ``wanted`` (indices) given the
        cotangents of the float outputs ``live`` (the others are zero)."""
        bound, _, saved, pool = training()
        need = frozenset(names[i] for i in wanted)

        def backward(*arrays):
            held = dict(zip(saved, arrays[:len(saved)]))
            given = dict(zip(live, arrays[len(saved):]))
            cts = []
            for i in float_outs:
                ct = given.get(i)
                if ct is None and not bound.zero_cotangents:
                    ct = np.zeros(out_specs[i].shape, out_specs[i].dtype)
                cts.append(ct)
            grads = bound.backward(stat, held, cts, need)
            return tuple(grads[names[i]] for i in wanted)

        return _Host(backward,
                     [pool[n][0] for n in saved] + [len(out_specs[i].shape) for i in live],
                     [pool[n][1] for n in saved] + [out_axes[i] for i in live],
                     [_spec(*sig[i]) for i in wanted], [in_axes[i] for i in wanted],
                     op.elementwise, sep, path)

    @jax.custom_vjp
    def f(*arrays):
        return primal.call(*arrays)

    def f_fwd(*primals):
        arrays = [p.value for p in primals]
        wanted = []
        for i in floats:
            if not primals[i].perturbed:
                continue
            if names[i] not in op.differentiable:
                raise NotImplementedError(
                    f"{op.name}: no gradient with respect to {names[i]} (fastnn's backward "
                    f"gives the gradients of {', '.join(op.differentiable)}); wrap it in "
                    f"jax.lax.stop_gradient")
            wanted.append(i)
        _, trained, saved, _ = training()
        res = trained.call(*arrays)
        outs, extras = res[:n_out], res[n_out:]
        env = dict(zip(names, arrays))
        env.update({f"y{i}": o for i, o in enumerate(outs)})
        env.update({f"e{i}": e for i, e in enumerate(extras)})
        return tuple(outs), _Saved(tuple(env[n] for n in saved), tuple(wanted))

    def f_bwd(res, cts):
        full = [None] * len(names)
        live = tuple(i for i in float_outs
                     if not isinstance(cts[i], jax.custom_derivatives.SymbolicZero))
        if res.wanted and live:
            grads = backward_host(res.wanted, live).call(*res.arrays, *(cts[i] for i in live))
            for i, g in zip(res.wanted, grads):
                full[i] = g
        return tuple(full)

    f.defvjp(f_fwd, f_bwd, symbolic_zeros=True)
    return f


@jax.tree_util.register_pytree_node_class
class _Saved:
    """The residuals of a forward: the saved arrays, and (static) which arguments the
    backward must differentiate."""

    def __init__(self, arrays, wanted):
        self.arrays, self.wanted = arrays, wanted

    def tree_flatten(self):
        return self.arrays, self.wanted

    @classmethod
    def tree_unflatten(cls, wanted, arrays):
        return cls(tuple(arrays), wanted)


def _apply(op, static, arrays):
    """Validate and cast the array arguments, then call the cached custom_vjp."""
    st = tuple(sorted((k, _freeze(v)) for k, v in static.items()))
    present = [(n, a) for n, a in arrays if a is not None]
    conv = []
    for n, a in present:
        a = jnp.asarray(a)
        if n in op.float_args and np.dtype(a.dtype) not in _FLOATS:
            raise TypeError(f"{op.name}: {n} must have dtype float32 or float64, got {a.dtype}")
        conv.append((n, a))
    floats = [a for n, a in conv if n in op.float_args]
    if floats:
        dtype = jnp.result_type(*floats)
        conv = [(n, a.astype(dtype) if n in op.float_args else a) for n, a in conv]
    names = tuple(n for n, _ in conv)
    sig = tuple((tuple(a.shape), np.dtype(a.dtype)) for _, a in conv)
    path = _host_call_path()
    try:
        f = _build(op, st, names, sig, path)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
        f = _build.__wrapped__(op, st, names, sig, path)
    return f(*(a for _, a in conv))


# ------------------------------------------------------------------ convolution
class _Conv(_Op):
    float_args = ("x", "weight", "bias")

    def __init__(self, name, forward, backward):
        self.name, self._f, self._b = name, forward, backward

    def batch_axes(self, st):
        return {"x": 0}

    def forward(self, st, x, weight, bias=None):
        return (self._f(x, weight, bias, **st),)

    def saves(self, st, names):
        return ("x", "weight")

    def backward(self, st, saved, cts, need):
        gx, gw, gb = self._b(cts[0], saved["x"], saved["weight"], bias="bias" in need,
                             need_input_grad="x" in need, need_weight_grad="weight" in need,
                             **st)
        return {"x": gx, "weight": gw, "bias": gb}


_CONV2D = _Conv("conv2d", fastnn.conv2d, fastnn.conv2d_backward)
_CONV1D = _Conv("conv1d", fastnn.conv1d, fastnn.conv1d_backward)
_CONV_T2D = _Conv("conv_transpose2d", fastnn.conv_transpose2d, fastnn.conv_transpose2d_backward)


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW"):
    """:func:`fastnn.conv2d` as a differentiable JAX function.

    Same arguments and layouts (``"NCHW"`` with PyTorch weights ``(K, C/groups, kh, kw)``,
    ``"NHWC"`` with HWIO weights); the keyword arguments are static. Gradients come
    from :func:`fastnn.conv2d_backward`.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> x = jnp.arange(16.0).reshape(1, 1, 4, 4)
    >>> fj.conv2d(x, jnp.ones((1, 1, 2, 2)), stride=2)[0, 0]
    Array([[10., 18.],
           [42., 50.]], dtype=float32)
    """
    return _apply(_CONV2D, dict(stride=stride, padding=padding, dilation=dilation,
                                groups=groups, layout=layout),
                  (("x", x), ("weight", weight), ("bias", bias)))[0]


def conv1d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, layout="NCW"):
    """:func:`fastnn.conv1d` as a differentiable JAX function (layouts ``"NCW"``, ``"NWC"``).

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.conv1d(jnp.arange(6.0).reshape(1, 1, 6), jnp.ones((1, 1, 3)), padding="same")[0, 0]
    Array([ 1.,  3.,  6.,  9., 12.,  9.], dtype=float32)
    """
    return _apply(_CONV1D, dict(stride=stride, padding=padding, dilation=dilation,
                                groups=groups, layout=layout),
                  (("x", x), ("weight", weight), ("bias", bias)))[0]


def conv_transpose2d(x, weight, bias=None, *, stride=1, padding=0, output_padding=0,
                     dilation=1, groups=1, layout="NCHW"):
    """:func:`fastnn.conv_transpose2d` (PyTorch semantics) as a differentiable JAX function.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.conv_transpose2d(jnp.array([[[[1.0, 2.0]]]]), jnp.ones((1, 1, 2, 2)), stride=2)[0, 0]
    Array([[1., 1., 2., 2.],
           [1., 1., 2., 2.]], dtype=float32)
    """
    return _apply(_CONV_T2D, dict(stride=stride, padding=padding, output_padding=output_padding,
                                  dilation=dilation, groups=groups, layout=layout),
                  (("x", x), ("weight", weight), ("bias", bias)))[0]


# ------------------------------------------------------------------ pooling
class _Pool(_Op):
    float_args = ("x",)

    def __init__(self, name, forward, backward, is_max):
        self.name, self._f, self._b, self.is_max = name, forward, backward, is_max

    def batch_axes(self, st):
        return {"x": 0}

    def out_axes(self, st):
        return (0, 0) if st["return_indices"] else (0,)

    def forward(self, st, x):
        res = self._f(x, **st)
        return res if st["return_indices"] else (res,)

    def train(self, st, x):
        if not self.is_max:
            return self.forward(st, x), ()
        y, idx = self._f(x, **dict(st, return_indices=True))
        return ((y, idx), ()) if st["return_indices"] else ((y,), (idx,))

    def extra_specs(self, st, names, sig):
        if not self.is_max or st["return_indices"]:
            return ()
        (y,) = self.out_specs(st, names, sig, self.in_axes(st, names))
        return (_spec(y.shape, np.int64),)

    def saves(self, st, names):
        if not self.is_max:
            return ("x",)
        return ("x", "y1" if st["return_indices"] else "e0")

    def backward(self, st, saved, cts, need):
        kw = {k: v for k, v in st.items() if k != "return_indices"}
        if self.is_max:
            idx = saved["y1"] if st["return_indices"] else saved["e0"]
            return {"x": self._b(cts[0], saved["x"], indices=idx, **kw)}
        return {"x": self._b(cts[0], saved["x"], **kw)}


_MAX2D = _Pool("max_pool2d", fastnn.max_pool2d, fastnn.max_pool2d_backward, True)
_AVG2D = _Pool("avg_pool2d", fastnn.avg_pool2d, fastnn.avg_pool2d_backward, False)
_MAX1D = _Pool("max_pool1d", fastnn.max_pool1d, fastnn.max_pool1d_backward, True)
_AVG1D = _Pool("avg_pool1d", fastnn.avg_pool1d, fastnn.avg_pool1d_backward, False)


def _pool(op, x, return_indices, **static):
    if not isinstance(return_indices, (bool, np.bool_)):
        raise TypeError(f"{op.name}: return_indices must be a bool, got {return_indices!r}")
    out = _apply(op, dict(static, return_indices=bool(return_indices)), (("x", x),))
    return tuple(out) if return_indices else out[0]


def max_pool2d(x, kernel_size, *, stride=None, padding=0, dilation=1, ceil_mode=False,
               layout="NCHW", return_indices=False):
    """:func:`fastnn.max_pool2d` as a differentiable JAX function.

    With ``return_indices=True`` it also returns the argmax indices (int64 with
    ``jax_enable_x64``, else int32; not differentiable). The backward scatters to the
    argmax that the forward found (kept as a residual, not recomputed).

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.max_pool2d(jnp.array([[[[1., 5.], [3., 4.]]]]), 2)
    Array([[[[5.]]]], dtype=float32)
    """
    return _pool(_MAX2D, x, return_indices, kernel_size=kernel_size, stride=stride,
                 padding=padding, dilation=dilation, ceil_mode=ceil_mode, layout=layout)


def avg_pool2d(x, kernel_size, *, stride=None, padding=0, ceil_mode=False,
               count_include_pad=False, divisor_override=None, layout="NCHW",
               return_indices=False):
    """:func:`fastnn.avg_pool2d` as a differentiable JAX function (by default the
    average over the real, unpadded elements of each window).

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.avg_pool2d(jnp.arange(6.0).reshape(1, 1, 2, 3), 2, padding="same")
    Array([[[[2. , 3.5]]]], dtype=float32)
    """
    return _pool(_AVG2D, x, return_indices, kernel_size=kernel_size, stride=stride,
                 padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                 divisor_override=divisor_override, layout=layout)


def max_pool1d(x, kernel_size, *, stride=None, padding=0, dilation=1, ceil_mode=False,
               layout="NCW", return_indices=False):
    """:func:`fastnn.max_pool1d` as a differentiable JAX function (see :func:`max_pool2d`).

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.max_pool1d(jnp.array([[[1., 3., 2., 0.]]]), 3, stride=1, padding="same")
    Array([[[3., 3., 3., 2.]]], dtype=float32)
    """
    return _pool(_MAX1D, x, return_indices, kernel_size=kernel_size, stride=stride,
                 padding=padding, dilation=dilation, ceil_mode=ceil_mode, layout=layout)


def avg_pool1d(x, kernel_size, *, stride=None, padding=0, ceil_mode=False,
               count_include_pad=False, divisor_override=None, layout="NCW",
               return_indices=False):
    """:func:`fastnn.avg_pool1d` as a differentiable JAX function.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.avg_pool1d(jnp.array([[[1., 3., 2., 0.]]]), 2)
    Array([[[2., 1.]]], dtype=float32)
    """
    return _pool(_AVG1D, x, return_indices, kernel_size=kernel_size, stride=stride,
                 padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                 divisor_override=divisor_override, layout=layout)


# ------------------------------------------------------------------ activations
class _Elementwise(_Op):
    elementwise = True
    float_args = ("x",)

    def __init__(self, name, forward, backward, from_output, params=()):
        self.name, self._f, self._b = name, forward, backward
        self.from_output, self.params = from_output, params

    def forward(self, st, x):
        return (self._f(x, *(st[p] for p in self.params)),)

    def saves(self, st, names):
        return ("y0",) if self.from_output else ("x",)

    def backward(self, st, saved, cts, need):
        ref = saved["y0"] if self.from_output else saved["x"]
        return {"x": self._b(cts[0], ref, *(st[p] for p in self.params))}


_RELU = _Elementwise("relu", fastnn.relu, fastnn.relu_backward, False)
_LEAKY = _Elementwise("leaky_relu", fastnn.leaky_relu, fastnn.leaky_relu_backward, False,
                      ("negative_slope",))
_SIGMOID = _Elementwise("sigmoid", fastnn.sigmoid, fastnn.sigmoid_backward, True)
_TANH = _Elementwise("tanh", fastnn.tanh, fastnn.tanh_backward, True)


class _Softmax(_Elementwise):
    def forward(self, st, x):
        return (self._f(x, st["axis"]),)

    def backward(self, st, saved, cts, need):
        return {"x": self._b(cts[0], saved["y0"], st["axis"])}


_SOFTMAX = _Softmax("softmax", fastnn.softmax, fastnn.softmax_backward, True)
_LOG_SOFTMAX = _Softmax("log_softmax", fastnn.log_softmax, fastnn.log_softmax_backward, True)


def relu(x):
    """:func:`fastnn.relu` as a differentiable JAX function (gradient 0 at x == 0).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, fastnn.jax as fj
    >>> jax.grad(lambda x: fj.relu(x).sum())(jnp.array([-1.0, 0.0, 2.0]))
    Array([0., 0., 1.], dtype=float32)
    """
    return _apply(_RELU, {}, (("x", x),))[0]


def leaky_relu(x, negative_slope=0.01):
    """:func:`fastnn.leaky_relu` as a differentiable JAX function (``negative_slope`` static).

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.leaky_relu(jnp.array([-2.0, 3.0]), 0.5)
    Array([-1.,  3.], dtype=float32)
    """
    return _apply(_LEAKY, {"negative_slope": float(negative_slope)}, (("x", x),))[0]


def sigmoid(x):
    """:func:`fastnn.sigmoid` as a differentiable JAX function.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.sigmoid(jnp.zeros(2))
    Array([0.5, 0.5], dtype=float32)
    """
    return _apply(_SIGMOID, {}, (("x", x),))[0]


def tanh(x):
    """:func:`fastnn.tanh` as a differentiable JAX function.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.tanh(jnp.zeros(2))
    Array([0., 0.], dtype=float32)
    """
    return _apply(_TANH, {}, (("x", x),))[0]


def _softmax_axis(fn, x, axis):
    ndim = jnp.ndim(x)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{fn}: axis must be an int, got {axis!r}")
    n = max(ndim, 1)
    if not -n <= axis < n:
        raise ValueError(f"{fn}: axis {axis} is out of bounds for an array of dimension {ndim}")
    # counted from the end, so extra leading (vmapped) axes leave it unchanged
    return int(axis) % n - n if ndim else -1


def softmax(x, axis=-1):
    """:func:`fastnn.softmax` along ``axis`` (static) as a differentiable JAX function.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.softmax(jnp.array([[1.0, 0.0], [1.0, 0.0]]), axis=0)
    Array([[0.5, 0.5],
           [0.5, 0.5]], dtype=float32)
    """
    return _apply(_SOFTMAX, {"axis": _softmax_axis("softmax", x, axis)}, (("x", x),))[0]


def log_softmax(x, axis=-1):
    """:func:`fastnn.log_softmax` along ``axis`` (static) as a differentiable JAX function.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.log_softmax(jnp.array([0.0, -1000.0]))
    Array([    0., -1000.], dtype=float32)
    """
    return _apply(_LOG_SOFTMAX, {"axis": _softmax_axis("log_softmax", x, axis)},
                  (("x", x),))[0]


class _CrossEntropy(_Op):
    name = "softmax_cross_entropy"
    float_args = ("logits", "weight")
    differentiable = ("logits",)

    def batch_axes(self, st):
        return {"logits": 0, "labels": 0}

    def out_axes(self, st):
        return (0,) if st["reduction"] == "none" else (None,)

    def separable(self, st):
        return st["reduction"] == "none"

    def forward(self, st, logits, labels, weight=None):
        return (fastnn.softmax_cross_entropy(logits, labels, weight=weight, **st),)

    def saves(self, st, names):
        return ("logits", "labels", "weight")

    def backward(self, st, saved, cts, need):
        return {"logits": fastnn.softmax_cross_entropy_backward(
            cts[0], saved["logits"], saved["labels"], weight=saved.get("weight"), **st)}


_XENT = _CrossEntropy()


def softmax_cross_entropy(logits, labels, *, reduction="mean", weight=None, ignore_index=None,
                          label_smoothing=0.0):
    """:func:`fastnn.softmax_cross_entropy` (PyTorch's ``cross_entropy``) as a
    differentiable JAX function.

    ``logits`` ``(N, C)`` or ``(N, C, d1, ...)``; ``labels`` integer class indices
    ``(N, d1, ...)`` or float probabilities shaped like the logits. ``weight``
    (``(C,)``) is an array argument; ``reduction``, ``ignore_index`` and
    ``label_smoothing`` are static. The gradient is the logits' one,
    :func:`fastnn.softmax_cross_entropy_backward`; differentiating with respect to
    the labels or the weights raises ``NotImplementedError`` (stop their gradient).
    Label values are checked inside the callback (an out-of-range label is a JAX
    runtime error).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, fastnn.jax as fj
    >>> logits = jnp.zeros((1, 2))
    >>> jax.grad(fj.softmax_cross_entropy)(logits, jnp.array([1]))
    Array([[ 0.5, -0.5]], dtype=float32)
    """
    labels = jnp.asarray(labels)
    if np.dtype(labels.dtype) in _FLOATS:
        labels = labels.astype(jnp.result_type(logits, labels))
    static = dict(reduction=reduction, ignore_index=ignore_index,
                  label_smoothing=float(label_smoothing))
    return _apply(_XENT, static,
                  (("logits", logits), ("labels", labels), ("weight", weight)))[0]


# ------------------------------------------------------------------ banded, masked, local
class _Matmul(_Op):
    float_args = ("x", "w", "bias")

    def batch_axes(self, st):
        return {"x": 0}

    def saves(self, st, names):
        return ("x", "w", "mask")


class _Banded(_Matmul):
    name = "banded_matmul"

    def forward(self, st, x, w, bias=None):
        return (fastnn.banded_matmul(x, w, st["num_lower"], st["num_upper"], bias),)

    def backward(self, st, saved, cts, need):
        gx, gw, gb = fastnn.banded_matmul_backward(cts[0], saved["x"], saved["w"],
                                                   st["num_lower"], st["num_upper"],
                                                   bias="bias" in need)
        return {"x": gx, "w": gw, "bias": gb}


class _Masked(_Matmul):
    name = "masked_matmul"

    def forward(self, st, x, w, mask=None, bias=None):
        return (fastnn.masked_matmul(x, w, st["prepared"] if mask is None else mask, bias),)

    def backward(self, st, saved, cts, need):
        mask = saved.get("mask", st["prepared"])
        gx, gw, gb = fastnn.masked_matmul_backward(cts[0], saved["x"], saved["w"], mask,
                                                   bias="bias" in need)
        return {"x": gx, "w": gw, "bias": gb}


_BANDED = _Banded()
_MASKED = _Masked()


def _rows(fn, x, w):
    """x (..., n_in) as rows (M, n_in): the batch axis the vmap fold uses."""
    x, w = jnp.asarray(x), jnp.asarray(w)
    if x.ndim < 1 or w.ndim != 2:
        raise ValueError(f"{fn}: x must be (..., n_in) and w (n_in, n_out), got shapes "
                         f"{x.shape} and {w.shape}")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"{fn}: x has {x.shape[-1]} features (last axis of shape {x.shape}), "
                         f"w expects n_in = {w.shape[0]} (w has shape {w.shape})")
    return x.reshape((-1, x.shape[-1])), x.shape[:-1]


def banded_matmul(x, w, num_lower, num_upper, bias=None):
    """:func:`fastnn.banded_matmul` (``x @ band_part(w) + bias``) as a differentiable
    JAX function; ``num_lower`` and ``num_upper`` are static, ``w``'s gradient is zero
    outside the band.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> fj.banded_matmul(jnp.array([[1., 2., 3.]]), jnp.ones((3, 3)), 0, 1)
    Array([[1., 3., 5.]], dtype=float32)
    """
    x2, lead = _rows("banded_matmul", x, w)
    y = _apply(_BANDED, dict(num_lower=num_lower, num_upper=num_upper),
               (("x", x2), ("w", w), ("bias", bias)))[0]
    return y.reshape(lead + y.shape[-1:])


def masked_matmul(x, w, mask, bias=None):
    """:func:`fastnn.masked_matmul` (``x @ (w * mask) + bias``) as a differentiable JAX
    function; ``w``'s gradient is zero where the mask is.

    ``mask`` is an array (traced like any other argument, never differentiated) or a
    :func:`fastnn.prepare_mask` result, which is static and skips the per-call scan
    of the mask.

    Examples
    --------
    >>> import numpy as np, jax.numpy as jnp, fastnn.jax as fj
    >>> mask = fastnn.prepare_mask(np.eye(2, dtype=bool))
    >>> fj.masked_matmul(jnp.array([[1., 2.]]), jnp.ones((2, 2)), mask)
    Array([[1., 2.]], dtype=float32)
    """
    prepared = mask if isinstance(mask, fastnn.banded.PreparedMask) else None
    if prepared is None:
        mask = jnp.asarray(mask)
    x2, lead = _rows("masked_matmul", x, w)
    y = _apply(_MASKED, {"prepared": prepared},
               (("x", x2), ("w", w), ("mask", None if prepared is not None else mask),
                ("bias", bias)))[0]
    return y.reshape(lead + y.shape[-1:])


class _Local(_Conv):
    """As :class:`_Conv`; the backward computes every gradient but the bias's."""

    def backward(self, st, saved, cts, need):
        gx, gw, gb = self._b(cts[0], saved["x"], saved["weight"], bias="bias" in need, **st)
        return {"x": gx, "weight": gw, "bias": gb}


_LOCAL2D = _Local("locally_connected2d", fastnn.locally_connected2d,
                  fastnn.locally_connected2d_backward)
_LOCAL1D = _Local("locally_connected1d", fastnn.locally_connected1d,
                  fastnn.locally_connected1d_backward)


def locally_connected2d(x, weight, bias=None, *, kernel_size, stride=1, padding=0,
                        layout="NHWC"):
    """:func:`fastnn.locally_connected2d` (unshared weights ``(Ho, Wo, kh*kw*C, K)``,
    bias ``(Ho, Wo, K)``) as a differentiable JAX function.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    >>> fj.locally_connected2d(x, jnp.ones((1, 1, 4, 1)), kernel_size=2)[..., 0]
    Array([[[6.]]], dtype=float32)
    """
    return _apply(_LOCAL2D, dict(kernel_size=kernel_size, stride=stride, padding=padding,
                                 layout=layout),
                  (("x", x), ("weight", weight), ("bias", bias)))[0]


def locally_connected1d(x, weight, bias=None, *, kernel_size, stride=1, padding=0, layout="NWC"):
    """:func:`fastnn.locally_connected1d` (weights ``(Wo, kw*C, K)``, bias ``(Wo, K)``)
    as a differentiable JAX function.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> x = jnp.arange(3.0).reshape(1, 3, 1)
    >>> fj.locally_connected1d(x, jnp.ones((2, 2, 1)), kernel_size=2)[..., 0]
    Array([[1., 3.]], dtype=float32)
    """
    return _apply(_LOCAL1D, dict(kernel_size=kernel_size, stride=stride, padding=padding,
                                 layout=layout),
                  (("x", x), ("weight", weight), ("bias", bias)))[0]


# ------------------------------------------------------------------ recurrent
class _Sequence(_Op):
    """lstm / gru / simple_rnn. Under differentiation the arrays of the training
    forward's :class:`fastnn.RecurrentCache` travel as JAX residuals, and the backward
    rebuilds the cache from them, so it reuses the forward's products."""
    zero_cotangents = True

    def __init__(self, name, forward, backward, states, weights, layout=None):
        self.name, self._f, self._b = name, forward, backward
        self.states, self.weights = states, weights      # argument names after x
        self.float_args = ("x",) + states + weights
        self.layout = layout      # (array fields, other fields) of the cache, once bound

    def batch_axes(self, st):
        axes = {"x": 1 if st["time_major"] else 0}
        axes.update({s: 0 for s in self.states})
        return axes

    def out_axes(self, st):
        return (1 if st["time_major"] else 0,) + (0,) * len(self.states)

    def _call(self, st, arrays, training):
        states = [arrays.get(s) for s in self.states]
        res = self._f(arrays["x"], *states, *(arrays[w] for w in self.weights),
                      training=training, **st)
        state = res[1] if isinstance(res[1], tuple) else (res[1],)
        return (res[0],) + state, (res[2] if training else None)

    def forward(self, st, **arrays):
        return self._call(st, arrays, False)[0]

    def bind(self, st, names, sig):
        # One training forward on zeros of these shapes tells which cache fields are
        # arrays (and their shapes); it runs once per signature (``_build`` is cached).
        zeros = {n: np.zeros(s, d) for n, (s, d) in zip(names, sig)}
        _, cache = self._call(st, zeros, True)
        arrays, others = [], {}
        for field in type(cache).__slots__:
            value = getattr(cache, field)
            if isinstance(value, np.ndarray):
                arrays.append((field, value.shape, value.dtype))
            else:
                others[field] = value
        return type(self)(self.name, self._f, self._b, self.states, self.weights,
                          (tuple(arrays), others))

    def extra_specs(self, st, names, sig):
        return tuple(_spec(shape, dtype) for _, shape, dtype in self.layout[0])

    def train(self, st, **arrays):
        outs, cache = self._call(st, arrays, True)
        extras = []
        for field, shape, _ in self.layout[0]:
            value = getattr(cache, field)
            if value.shape != shape:
                raise RuntimeError(f"fastnn.jax.{self.name}: cache field {field} has shape "
                                   f"{value.shape}, expected {shape}")
            extras.append(value)
        return outs, tuple(extras)

    def saves(self, st, names):
        return tuple(f"e{i}" for i in range(len(self.layout[0])))

    def backward(self, st, saved, cts, need):
        fields = {f: saved[f"e{i}"] for i, (f, _, _) in enumerate(self.layout[0])}
        cache = fastnn.RecurrentCache(**self.layout[1], **fields)
        grads = self._b(*cts, cache)
        return dict(zip(("x",) + self.states + self.weights, grads))


_LSTM = _Sequence("lstm", fastnn.lstm, fastnn.lstm_backward, ("h0", "c0"), ("kernel", "bias"))
_GRU = _Sequence("gru", fastnn.gru, fastnn.gru_backward, ("h0",),
                 ("kernel", "recurrent_kernel", "bias"))
_RNN = _Sequence("simple_rnn", fastnn.simple_rnn, fastnn.simple_rnn_backward, ("h0",),
                 ("kernel", "recurrent_kernel", "bias"))


def _check_bool(fn, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool, got {value!r}")
    return bool(value)


def lstm(x, h0, c0, kernel, bias, *, forget_bias=1.0, time_major=False, return_state=True):
    """:func:`fastnn.lstm` (TensorFlow BasicLSTMCell layout) as a differentiable JAX function.

    Returns ``(outputs, (h_T, c_T))``, or ``outputs`` with ``return_state=False``.
    ``h0`` / ``c0`` may be None (zeros). Gradients flow to x, the initial states,
    kernel and bias through :func:`fastnn.lstm_backward`.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> out, (h, c) = fj.lstm(jnp.ones((2, 5, 3)), None, None, jnp.full((7, 16), 0.1),
    ...                       jnp.zeros(16))
    >>> out.shape, h.shape
    ((2, 5, 4), (2, 4))
    """
    fn = "lstm"
    st = dict(forget_bias=float(forget_bias), time_major=_check_bool(fn, "time_major", time_major))
    return_state = _check_bool(fn, "return_state", return_state)
    out = _apply(_LSTM, st, (("x", x), ("h0", h0), ("c0", c0), ("kernel", kernel), ("bias", bias)))
    return (out[0], (out[1], out[2])) if return_state else out[0]


def gru(x, h0, kernel, recurrent_kernel, bias, *, reset_after=True, time_major=False,
        return_state=True):
    """:func:`fastnn.gru` (Keras layout) as a differentiable JAX function.

    Returns ``(outputs, h_T)``, or ``outputs`` with ``return_state=False``.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> out, h = fj.gru(jnp.ones((2, 5, 3)), None, jnp.full((3, 12), 0.1),
    ...                 jnp.full((4, 12), 0.1), jnp.zeros((2, 12)))
    >>> out.shape, h.shape
    ((2, 5, 4), (2, 4))
    """
    fn = "gru"
    st = dict(reset_after=_check_bool(fn, "reset_after", reset_after),
              time_major=_check_bool(fn, "time_major", time_major))
    return_state = _check_bool(fn, "return_state", return_state)
    out = _apply(_GRU, st, (("x", x), ("h0", h0), ("kernel", kernel),
                            ("recurrent_kernel", recurrent_kernel), ("bias", bias)))
    return (out[0], out[1]) if return_state else out[0]


def simple_rnn(x, h0, kernel, recurrent_kernel, bias, *, activation="tanh", time_major=False):
    """:func:`fastnn.simple_rnn` (Keras layout) as a differentiable JAX function.

    Returns ``(outputs, h_T)``.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> out, h = fj.simple_rnn(jnp.ones((1, 3, 2)), None, jnp.full((2, 2), 0.5), jnp.eye(2),
    ...                        jnp.zeros(2), activation="relu")
    >>> out[0, :, 0]
    Array([1., 2., 3.], dtype=float32)
    """
    st = dict(activation=activation, time_major=_check_bool("simple_rnn", "time_major",
                                                             time_major))
    out = _apply(_RNN, st, (("x", x), ("h0", h0), ("kernel", kernel),
                            ("recurrent_kernel", recurrent_kernel), ("bias", bias)))
    return out[0], out[1]


class _Cell(_Op):
    zero_cotangents = True

    def __init__(self, name, forward, backward, states, weights):
        self.name, self._f, self._b = name, forward, backward
        self.states, self.weights = states, weights
        self.float_args = ("x",) + states + weights

    def batch_axes(self, st):
        return {n: 0 for n in ("x",) + self.states}

    def out_axes(self, st):
        return (0,) * len(self.states)

    def forward(self, st, **arrays):
        res = self._f(*(arrays[n] for n in ("x",) + self.states + self.weights), **st)
        return res if isinstance(res, tuple) else (res,)

    def saves(self, st, names):
        return ("x",) + self.states + self.weights

    def backward(self, st, saved, cts, need):
        args = [saved[n] for n in ("x",) + self.states + self.weights]
        grads = self._b(*cts, *args, **st)
        return dict(zip(("x",) + self.states + self.weights, grads))


_LSTM_CELL = _Cell("lstm_cell", fastnn.lstm_cell, fastnn.lstm_cell_backward, ("h", "c"),
                   ("kernel", "bias"))
_GRU_CELL = _Cell("gru_cell", fastnn.gru_cell, fastnn.gru_cell_backward, ("h",),
                  ("kernel", "recurrent_kernel", "bias"))


def lstm_cell(x, h, c, kernel, bias, *, forget_bias=1.0):
    """:func:`fastnn.lstm_cell` as a differentiable JAX function: ``(h_new, c_new)``.

    Its backward is :func:`fastnn.lstm_cell_backward` (which reruns the step).

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> h, c = fj.lstm_cell(jnp.ones((2, 3)), jnp.zeros((2, 4)), jnp.zeros((2, 4)),
    ...                     jnp.full((7, 16), 0.1), jnp.zeros(16))
    >>> round(float(c[0, 0]), 5)
    0.16734
    """
    out = _apply(_LSTM_CELL, dict(forget_bias=float(forget_bias)),
                 (("x", x), ("h", h), ("c", c), ("kernel", kernel), ("bias", bias)))
    return out[0], out[1]


def gru_cell(x, h, kernel, recurrent_kernel, bias, *, reset_after=True):
    """:func:`fastnn.gru_cell` (Keras layout) as a differentiable JAX function: ``h_new``.

    Examples
    --------
    >>> import jax.numpy as jnp, fastnn.jax as fj
    >>> h = fj.gru_cell(jnp.ones((1, 2)), jnp.zeros((1, 3)), jnp.full((2, 9), 0.1),
    ...                 jnp.full((3, 9), 0.1), jnp.zeros(9), reset_after=False)
    >>> round(float(h[0, 0]), 5)
    0.08885
    """
    st = dict(reset_after=_check_bool("gru_cell", "reset_after", reset_after))
    return _apply(_GRU_CELL, st, (("x", x), ("h", h), ("kernel", kernel),
                                  ("recurrent_kernel", recurrent_kernel), ("bias", bias)))[0]
