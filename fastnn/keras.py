"""Keras 3 layers on fastnn's kernels.

``import fastnn.keras`` (never done by ``import fastnn``) needs Keras 3:
``pip install "fastnn[keras]"``, and a backend chosen with ``KERAS_BACKEND`` before
Keras is imported.

Layers
------
- :class:`Conv2D`: ``keras.layers.Conv2D`` (same arguments and weights) on
  :func:`fastnn.conv2d`.
- :class:`LocallyConnected1D`, :class:`LocallyConnected2D`: the layers Keras 3 removed,
  with Keras 2's arguments and weight layout (``implementation=1``), on
  :func:`fastnn.locally_connected1d` / :func:`fastnn.locally_connected2d`.
- :class:`BandedDense`, :class:`MaskedDense`: ``keras.layers.Dense`` with a banded or
  masked kernel (the kernel has Dense's shape; entries outside the band or mask are
  never used and get no gradient).
- :class:`LSTM`, :class:`GRU`: ``keras.layers.LSTM`` / ``GRU`` for the arguments fastnn
  supports (tanh / sigmoid, no dropout, not stateful), with Keras's weights.

``get_weights()`` / ``set_weights()`` are interchangeable with the matching Keras
layer (Conv2D with ``keras.layers.Conv2D``, LSTM / GRU with ``keras.layers.LSTM`` /
``GRU``, BandedDense / MaskedDense with ``keras.layers.Dense``).

Backends
--------
- ``jax``: through :mod:`fastnn.jax` (``jax.custom_vjp`` over XLA FFI host calls),
  so ``model.fit`` trains under ``jax.jit``.
- ``torch``: a ``torch.autograd.Function`` whose forward and backward are fastnn's
  kernels on zero-copy NumPy views of the CPU tensors.
- ``numpy``: inference (Keras's numpy backend does not train).

The layers add no numerics of their own: layout changes (a transposed kernel, the
LSTM gate order) are backend ops on the weights, whose gradients the backend
handles; the rest is fastnn's forward and backward.

Examples
--------
>>> import numpy as np, fastnn.keras as fk
>>> layer = fk.LocallyConnected2D(2, 3)
>>> tuple(layer(np.ones((1, 5, 5, 1), np.float32)).shape)
(1, 3, 3, 2)
>>> [w.shape for w in layer.get_weights()]
[(9, 9, 2), (3, 3, 2)]
"""
try:
    import keras
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    if getattr(exc, "name", None) == "keras":
        raise ImportError('fastnn.keras needs Keras 3, which is not installed: '
                          'pip install "fastnn[keras]"') from exc
    raise ImportError(f"fastnn.keras: Keras could not load its backend ({exc}); choose an "
                      f"installed one with KERAS_BACKEND=torch, jax or numpy before importing "
                      f'Keras (and pip install "fastnn[keras]")') from exc

import functools

import numpy as np

import fastnn
from fastnn import convert

__all__ = ["Conv2D", "LocallyConnected1D", "LocallyConnected2D", "BandedDense", "MaskedDense",
           "LSTM", "GRU"]

if int(keras.__version__.split(".")[0]) < 3:  # pragma: no cover
    raise ImportError(f'fastnn.keras needs Keras 3, found {keras.__version__}: '
                      f'pip install "fastnn[keras]"')

ops = keras.ops
_BACKENDS = ("jax", "torch", "numpy")


# ------------------------------------------------------------------ backend dispatch
class _Affine:
    """``y = forward(x, w, b)`` with ``backward(grad_y, x, w, need) -> (gx, gw, gb)``,
    ``need`` saying which of the three are wanted (the bias's only if there is one)."""

    def __init__(self, forward, backward):
        self.forward, self.backward_fn = forward, backward

    def infer(self, arrays):
        return (self.forward(*arrays),)

    def train(self, arrays):
        return self.infer(arrays), None

    def backward(self, arrays, extra, grads, need):
        x, w, b = arrays
        return self.backward_fn(grads[0], x, w, (need[0], need[1], b is not None and need[2]))


class _SequenceImpl:
    """fastnn.lstm / gru over (x, states..., weights...): outputs, then final states.
    The training forward's cache is kept for the backward (no products redone)."""

    def __init__(self, forward, backward, n_states, **static):
        self.forward, self.backward_fn = forward, backward
        self.n_states, self.static = n_states, static

    def _run(self, arrays, training):
        res = self.forward(*arrays, training=training, **self.static)
        state = res[1] if isinstance(res[1], tuple) else (res[1],)
        return (res[0],) + state, (res[2] if training else None)

    def infer(self, arrays):
        return self._run(arrays, False)[0]

    def train(self, arrays):
        return self._run(arrays, True)

    def backward(self, arrays, cache, grads, need):
        res = self.backward_fn(*grads, cache)
        return tuple(None if a is None else g for a, g in zip(arrays, res))


@functools.lru_cache(maxsize=None)
def _torch_function():
    import torch

    def to_torch(a, device):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    class FastnnFunction(torch.autograd.Function):
        """fastnn forward and backward on NumPy views of CPU tensors."""

        @staticmethod
        def forward(ctx, impl, *tensors):
            arrays = [None if t is None else t.detach().cpu().numpy() for t in tensors]
            outs, extra = impl.train(arrays)
            ctx.impl, ctx.extra = impl, extra
            ctx.present = [t is not None for t in tensors]
            ctx.device = next(t.device for t in tensors if t is not None)
            ctx.save_for_backward(*(t for t in tensors if t is not None))
            return tuple(to_torch(o, ctx.device) for o in outs)

        @staticmethod
        def backward(ctx, *grads):
            saved = iter(ctx.saved_tensors)
            arrays = [next(saved).detach().cpu().numpy() if p else None for p in ctx.present]
            res = ctx.impl.backward(arrays, ctx.extra,
                                    [g.detach().cpu().numpy() for g in grads],
                                    ctx.needs_input_grad[1:])
            return (None,) + tuple(
                to_torch(r, ctx.device) if r is not None and need else None
                for r, need in zip(res, ctx.needs_input_grad[1:]))

    return torch, FastnnFunction


def _backend(layer):
    name = keras.backend.backend()
    if name not in _BACKENDS:
        raise NotImplementedError(f"{type(layer).__name__}: the Keras backend {name!r} is not "
                                  f"supported by fastnn.keras (use {', '.join(_BACKENDS)})")
    return name


def _run(layer, impl, jax_fn, tensors):
    """The fastnn computation ``impl`` (or ``jax_fn`` on the jax backend) on backend
    tensors (None entries allowed); returns a tuple of backend tensors."""
    name = _backend(layer)
    if name == "jax":
        out = jax_fn(*tensors)
        return out if isinstance(out, tuple) else (out,)
    if name == "numpy":
        return impl.infer([None if t is None else np.asarray(t) for t in tensors])
    torch, function = _torch_function()
    present = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return function.apply(impl, *tensors)
    device = present[0].device
    outs = impl.infer([None if t is None else t.detach().cpu().numpy() for t in tensors])
    return tuple(torch.from_numpy(np.ascontiguousarray(o)).to(device) for o in outs)


def _fastnn_jax():
    import fastnn.jax
    return fastnn.jax


def _tensor(value):
    return None if value is None else ops.convert_to_tensor(value)


def _int_tuple(value, n, name, cls):
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (int(value),) * n
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{cls}: {name} must be an int or a tuple of {n} ints, got {value!r}") \
            from None
    if len(items) != n or any(v < 1 for v in items):
        raise ValueError(f"{cls}: {name} must be {n} positive ints, got {value!r}")
    return items


def _data_format(value, cls):
    value = keras.config.image_data_format() if value is None else str(value).lower()
    if value not in ("channels_last", "channels_first"):
        raise ValueError(f"{cls}: data_format must be 'channels_last' or 'channels_first', "
                         f"got {value!r}")
    return value


# ------------------------------------------------------------------ Conv2D
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` computed by :func:`fastnn.conv2d`.

    Same constructor arguments, weights (kernel ``(kh, kw, C/groups, filters)``, bias
    ``(filters,)``), ``"same"`` padding rule and outputs as the Keras layer; forward
    and backward run on fastnn's kernels.

    Examples
    --------
    >>> import numpy as np, fastnn.keras as fk
    >>> layer = fk.Conv2D(4, 3, padding="same")
    >>> tuple(layer(np.ones((2, 8, 8, 3), np.float32)).shape)
    (2, 8, 8, 4)
    """

    def call(self, inputs):
        kernel = self.kernel
        last = self.data_format == "channels_last"
        static = dict(stride=self.strides, padding=self.padding, dilation=self.dilation_rate,
                      groups=self.groups, layout="NHWC" if last else "NCHW")
        if not last:           # fastnn's NCHW layout takes PyTorch's (K, C/groups, kh, kw)
            kernel = ops.transpose(kernel, (3, 2, 0, 1))
        impl = _Affine(functools.partial(fastnn.conv2d, **static),
                       lambda gy, x, w, need: fastnn.conv2d_backward(
                           gy, x, w, bias=need[2], need_input_grad=need[0],
                           need_weight_grad=need[1], **static))
        (y,) = _run(self, impl, lambda x, w, b: _fastnn_jax().conv2d(x, w, b, **static),
                    [_tensor(inputs), _tensor(kernel),
                     _tensor(self.bias) if self.use_bias else None])
        return self.activation(y) if self.activation is not None else y

    def quantize(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not support quantization")


# ------------------------------------------------------------------ locally connected
class _LocallyConnected(keras.layers.Layer):
    rank = 0

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 implementation=1, **kwargs):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        cls = type(self).__name__
        if isinstance(filters, (bool, np.bool_)) or not isinstance(filters, (int, np.integer)) \
                or filters < 1:
            raise ValueError(f"{cls}: filters must be a positive int, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = _int_tuple(kernel_size, self.rank, "kernel_size", cls)
        self.strides = _int_tuple(strides, self.rank, "strides", cls)
        if not isinstance(padding, str) or padding.lower() != "valid":
            raise ValueError(f"{cls}: padding must be 'valid' (Keras 2's implementation=1 "
                             f"layer has no other), got {padding!r}")
        self.padding = "valid"
        if implementation != 1:
            raise ValueError(f"{cls}: implementation must be 1 (this layer keeps Keras 2's "
                             f"implementation=1 weight layout), got {implementation!r}")
        self.implementation = 1
        self.data_format = _data_format(data_format, cls)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2)

    def _split_shape(self, input_shape):
        """(spatial sizes, channels) of an input shape."""
        if self.data_format == "channels_last":
            return tuple(input_shape[1:-1]), input_shape[-1]
        return tuple(input_shape[2:]), input_shape[1]

    def _output_sizes(self, spatial):
        cls = type(self).__name__
        if any(s is None for s in spatial):
            raise ValueError(f"{cls}: the spatial dimensions of the input must be known, "
                             f"got {spatial}")
        out = tuple((s - k) // st + 1 for s, k, st in zip(spatial, self.kernel_size,
                                                            self.strides))
        if any(o < 1 for o in out):
            raise ValueError(f"{cls}: kernel_size {self.kernel_size} is larger than the "
                             f"input's spatial size {spatial}")
        return out

    def build(self, input_shape):
        spatial, channels = self._split_shape(input_shape)
        self.output_sizes = self._output_sizes(spatial)
        self.input_channels = channels
        positions = int(np.prod(self.output_sizes))
        self.kernel = self.add_weight(
            name="kernel", shape=(positions, int(np.prod(self.kernel_size)) * channels,
                                  self.filters),
            initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=self.output_sizes + (self.filters,),
                initializer=self.bias_initializer, regularizer=self.bias_regularizer,
                constraint=self.bias_constraint)
        axis = -1 if self.data_format == "channels_last" else 1
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2, axes={axis: channels})

    def compute_output_shape(self, input_shape):
        spatial, _ = self._split_shape(input_shape)
        out = self._output_sizes(spatial)
        if self.data_format == "channels_last":
            return (input_shape[0],) + out + (self.filters,)
        return (input_shape[0], self.filters) + out

    def _fastnn_weights(self):
        """Keras 2's kernel and bias in fastnn's layout (backend ops, so gradients flow).

        Keras 2 flattens each patch in the input's memory order -- (i, j, c) for
        channels_last, (c, i, j) for channels_first -- and adds the (..., filters) bias
        to a channels_first output by a plain reshape to (filters, ...) (its bias_add);
        fastnn takes (i, j, c) patches and an (..., filters) bias in both layouts.
        """
        out, k, K, C = self.output_sizes, self.kernel_size, self.filters, self.input_channels
        kernel, bias = self.kernel, self.bias
        if self.data_format == "channels_last":
            kernel = ops.reshape(kernel, out + (int(np.prod(k)) * C, K))
        else:
            n = len(out)
            kernel = ops.reshape(kernel, out + (C,) + k + (K,))
            order = tuple(range(n)) + tuple(range(n + 1, 2 * n + 1)) + (n, 2 * n + 1)
            kernel = ops.reshape(ops.transpose(kernel, order), out + (int(np.prod(k)) * C, K))
            if bias is not None:
                bias = ops.transpose(ops.reshape(bias, (K,) + out), tuple(range(1, n + 1)) + (0,))
        return kernel, bias

    def call(self, inputs):
        kernel, bias = self._fastnn_weights()
        static = dict(kernel_size=self.kernel_size, stride=self.strides, padding=0,
                      layout=self._layouts[self.data_format])
        fwd, bwd, name = self._functions
        impl = _Affine(functools.partial(fwd, **static),
                       lambda gy, x, w, need: bwd(gy, x, w, bias=need[2], **static))
        (y,) = _run(self, impl, lambda x, w, b: getattr(_fastnn_jax(), name)(x, w, b, **static),
                    [_tensor(inputs), _tensor(kernel), _tensor(bias)])
        return self.activation(y) if self.activation is not None else y

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
            padding=self.padding, data_format=self.data_format,
            activation=keras.activations.serialize(self.activation), use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
            kernel_constraint=keras.constraints.serialize(self.kernel_constraint),
            bias_constraint=keras.constraints.serialize(self.bias_constraint),
            implementation=self.implementation)
        return config


class LocallyConnected2D(_LocallyConnected):
    """Keras 2's ``LocallyConnected2D``: a convolution with one kernel per output pixel,
    on :func:`fastnn.locally_connected2d`.

    Parameters
    ----------
    filters : int
    kernel_size, strides : int or (int, int)
    padding : "valid"
        The only padding of Keras 2's ``implementation=1`` layer.
    data_format : {"channels_last", "channels_first"}, optional
        Default: ``keras.config.image_data_format()``.
    activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
    bias_regularizer, activity_regularizer, kernel_constraint, bias_constraint
        As in Keras.
    implementation : 1
        Keras 2's weight layout for implementation 1 (the only one accepted).

    Notes
    -----
    kernel ``(out_rows * out_cols, kh * kw * channels, filters)`` with each patch
    flattened in the input's order ((i, j, c) for channels_last, (c, i, j) for
    channels_first), bias ``(out_rows, out_cols, filters)`` -- Keras 2's layout, so
    ``set_weights`` takes a Keras 2 layer's ``get_weights()``. With channels_first,
    Keras 2 adds that bias reshaped (not transposed) to ``(filters, out_rows,
    out_cols)``; this layer does the same.

    Examples
    --------
    >>> import numpy as np, fastnn.keras as fk
    >>> layer = fk.LocallyConnected2D(4, (3, 2), strides=2)
    >>> tuple(layer(np.ones((2, 7, 6, 3), np.float32)).shape)
    (2, 3, 3, 4)
    """
    rank = 2
    _layouts = {"channels_last": "NHWC", "channels_first": "NCHW"}
    _functions = (fastnn.locally_connected2d, fastnn.locally_connected2d_backward,
                  "locally_connected2d")


class LocallyConnected1D(_LocallyConnected):
    """Keras 2's ``LocallyConnected1D`` on :func:`fastnn.locally_connected1d`.

    Arguments as :class:`LocallyConnected2D` with one spatial axis. Weights: kernel
    ``(out_length, kernel_size * channels, filters)`` (patches (j, c) for
    channels_last, (c, j) for channels_first), bias ``(out_length, filters)``.

    Examples
    --------
    >>> import numpy as np, fastnn.keras as fk
    >>> layer = fk.LocallyConnected1D(4, 3)
    >>> tuple(layer(np.ones((2, 10, 5), np.float32)).shape)
    (2, 8, 4)
    >>> [w.shape for w in layer.get_weights()]
    [(8, 15, 4), (8, 4)]
    """
    rank = 1
    _layouts = {"channels_last": "NWC", "channels_first": "NCW"}
    _functions = (fastnn.locally_connected1d, fastnn.locally_connected1d_backward,
                  "locally_connected1d")


# ------------------------------------------------------------------ banded, masked
class _FastnnDense(keras.layers.Dense):
    def call(self, inputs, training=None):
        fwd, bwd, jax_fn = self._functions()
        (y,) = _run(self, _Affine(fwd, bwd), jax_fn,
                    [_tensor(inputs), _tensor(self.kernel), _tensor(self.bias)])
        return self.activation(y) if self.activation is not None else y

    def quantize(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not support quantization")


class BandedDense(_FastnnDense):
    """``keras.layers.Dense`` whose kernel is banded: ``x @ band_part(kernel, num_lower,
    num_upper) + bias`` by :func:`fastnn.banded_matmul`, at the cost of the band.

    Parameters
    ----------
    units : int
    num_lower, num_upper : int
        Kernel entry ``(i, j)`` is used when ``i - j <= num_lower`` and
        ``j - i <= num_upper`` (negative: no limit), as ``tf.linalg.band_part``.
    **kwargs
        ``keras.layers.Dense``'s other arguments.

    The kernel has Dense's shape ``(input_dim, units)``; entries outside the band
    are never used and get a zero gradient, so weights from a Dense layer whose
    kernel is zero outside the band give the same outputs.

    Examples
    --------
    >>> import numpy as np, fastnn.keras as fk
    >>> layer = fk.BandedDense(6, num_lower=1, num_upper=1)
    >>> tuple(layer(np.ones((2, 6), np.float32)).shape)
    (2, 6)
    """

    def __init__(self, units, num_lower, num_upper, **kwargs):
        for name, v in (("num_lower", num_lower), ("num_upper", num_upper)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"BandedDense: {name} must be an int, got {v!r}")
        super().__init__(units, **kwargs)
        self.num_lower, self.num_upper = int(num_lower), int(num_upper)

    def _functions(self):
        lo, up = self.num_lower, self.num_upper
        return (lambda x, w, b: fastnn.banded_matmul(x, w, lo, up, b),
                lambda gy, x, w, need: fastnn.banded_matmul_backward(gy, x, w, lo, up,
                                                                     bias=need[2]),
                lambda x, w, b: _fastnn_jax().banded_matmul(x, w, lo, up, b))

    def get_config(self):
        config = super().get_config()
        config.update(num_lower=self.num_lower, num_upper=self.num_upper)
        return config


class MaskedDense(_FastnnDense):
    """``keras.layers.Dense`` with a fixed kernel mask: ``x @ (kernel * mask) + bias`` by
    :func:`fastnn.masked_matmul`, at a cost following the mask's non-zeros.

    Parameters
    ----------
    units : int
    mask : array_like
        ``(input_dim, units)``; a kernel entry is used where the mask is non-zero.
        Copied (and compressed once) at construction.
    **kwargs
        ``keras.layers.Dense``'s other arguments.

    Examples
    --------
    >>> import numpy as np, fastnn.keras as fk
    >>> layer = fk.MaskedDense(3, mask=np.eye(4, 3, dtype=bool))
    >>> tuple(layer(np.ones((2, 4), np.float32)).shape)
    (2, 3)
    """

    def __init__(self, units, mask, **kwargs):
        mask = np.array(mask)
        if mask.ndim != 2 or mask.shape[1] != units:
            raise ValueError(f"MaskedDense: mask must have shape (input_dim, {units}), "
                             f"got {mask.shape}")
        super().__init__(units, **kwargs)
        self.mask = mask
        self._prepared = fastnn.prepare_mask(mask)

    def build(self, input_shape):
        if input_shape[-1] != self.mask.shape[0]:
            raise ValueError(f"MaskedDense: mask has {self.mask.shape[0]} rows, the input has "
                             f"{input_shape[-1]} features (mask shape must be (input_dim, "
                             f"units) = ({input_shape[-1]}, {self.units}))")
        super().build(input_shape)

    def _functions(self):
        m = self._prepared
        return (lambda x, w, b: fastnn.masked_matmul(x, w, m, b),
                lambda gy, x, w, need: fastnn.masked_matmul_backward(gy, x, w, m,
                                                                     bias=need[2]),
                lambda x, w, b: _fastnn_jax().masked_matmul(x, w, m, b))

    def get_config(self):
        config = super().get_config()
        config.update(mask=self.mask.tolist())
        return config


# ------------------------------------------------------------------ recurrent
class _ForgetBias(keras.initializers.Initializer):
    """Keras's ``unit_forget_bias``: the bias initializer, with ones on the forget block."""

    def __init__(self, initializer, units):
        self.initializer, self.units = keras.initializers.get(initializer), units

    def __call__(self, shape, dtype=None):
        h = self.units
        return ops.concatenate([self.initializer((h,), dtype=dtype), ops.ones((h,), dtype=dtype),
                                self.initializer((2 * h,), dtype=dtype)])

    def get_config(self):
        return {"initializer": keras.initializers.serialize(self.initializer),
                "units": self.units}


class _Recurrent(keras.layers.Layer):
    gates = 0
    option = None    # the name of the layer's own bool argument (default True), if any

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, use_cudnn="auto", **kwargs):
        flag = kwargs.pop(self.option, True) if self.option else None
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if self.option:
            setattr(self, self.option, bool(flag))
        cls = type(self).__name__
        if isinstance(units, (bool, np.bool_)) or not isinstance(units, (int, np.integer)) \
                or units < 1:
            raise ValueError(f"{cls}: units must be a positive int, got {units!r}")
        self.units = int(units)
        if keras.activations.get(activation) is not keras.activations.tanh:
            raise ValueError(f"{cls}: activation must be 'tanh' (fastnn's cell), "
                             f"got {activation!r}")
        if keras.activations.get(recurrent_activation) is not keras.activations.sigmoid:
            raise ValueError(f"{cls}: recurrent_activation must be 'sigmoid' (fastnn's cell), "
                             f"got {recurrent_activation!r}")
        for name, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if value:
                raise ValueError(f"{cls}: {name} is not supported (must be 0), got {value!r}")
        if stateful:
            raise ValueError(f"{cls}: stateful=True is not supported")
        self.activation, self.recurrent_activation = "tanh", "sigmoid"
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.recurrent_constraint = keras.constraints.get(recurrent_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.dropout, self.recurrent_dropout, self.seed = 0.0, 0.0, seed
        self.return_sequences, self.return_state = bool(return_sequences), bool(return_state)
        self.go_backwards, self.stateful = bool(go_backwards), False
        self.unroll, self.use_cudnn = unroll, use_cudnn       # accepted, no effect here
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def _bias_shape(self):
        return (self.gates * self.units,)

    def _bias_initializer(self):
        return self.bias_initializer

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__}: the input's feature dimension must be "
                             f"known, got shape {input_shape}")
        self.input_dim = int(input_shape[-1])
        n = self.gates * self.units
        self.kernel = self.add_weight(
            name="kernel", shape=(self.input_dim, n), initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer, constraint=self.kernel_constraint)
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(self.units, n),
            initializer=self.recurrent_initializer, regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=self._bias_shape(), initializer=self._bias_initializer(),
                regularizer=self.bias_regularizer, constraint=self.bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: self.input_dim})

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        batch = sequences_shape[0]
        out = (batch, sequences_shape[1], self.units) if self.return_sequences \
            else (batch, self.units)
        if self.return_state:
            return [out] + [(batch, self.units)] * self.n_states
        return out

    def call(self, sequences, initial_state=None, mask=None, training=None):
        if mask is not None:
            raise ValueError(f"{type(self).__name__}: masked (padded) sequences are not "
                             f"supported")
        x = ops.flip(sequences, axis=1) if self.go_backwards else sequences
        if initial_state is None:
            states = [None] * self.n_states
        else:
            states = list(initial_state) if isinstance(initial_state, (list, tuple)) \
                else [initial_state]
            if len(states) != self.n_states:
                raise ValueError(f"{type(self).__name__}: initial_state must hold "
                                 f"{self.n_states} tensors, got {len(states)}")
        outs = self._sequence(_tensor(x), [_tensor(s) for s in states])
        output = outs[0] if self.return_sequences else outs[1]
        if self.return_state:
            return [output] + list(outs[1:])
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, activation=self.activation,
            recurrent_activation=self.recurrent_activation, use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            recurrent_initializer=keras.initializers.serialize(self.recurrent_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            recurrent_regularizer=keras.regularizers.serialize(self.recurrent_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
            kernel_constraint=keras.constraints.serialize(self.kernel_constraint),
            recurrent_constraint=keras.constraints.serialize(self.recurrent_constraint),
            bias_constraint=keras.constraints.serialize(self.bias_constraint),
            dropout=self.dropout, recurrent_dropout=self.recurrent_dropout, seed=self.seed,
            return_sequences=self.return_sequences, return_state=self.return_state,
            go_backwards=self.go_backwards, stateful=self.stateful, unroll=self.unroll,
            use_cudnn=self.use_cudnn)
        if self.option:
            config[self.option] = getattr(self, self.option)
        return config


@functools.lru_cache(maxsize=None)
def _lstm_index(input_dim, units):
    """Where :func:`fastnn.convert.lstm_from_keras` puts each Keras weight: the flat
    indices (into kernel then recurrent_kernel, and into bias) of fastnn's kernel and
    bias entries. Found by converting index arrays, so fastnn.convert stays the one
    definition of the layout."""
    n = 4 * units
    kernel = np.arange(input_dim * n, dtype=np.float64).reshape(input_dim, n)
    recurrent = (input_dim * n + np.arange(units * n, dtype=np.float64)).reshape(units, n)
    k, b = convert.lstm_from_keras(kernel, recurrent, np.arange(n, dtype=np.float64))
    k_idx, b_idx = k.astype(np.int64), b.astype(np.int64)
    assert np.array_equal(np.sort(k_idx.ravel()), np.arange((input_dim + units) * n))
    assert np.array_equal(np.sort(b_idx), np.arange(n))
    return k_idx, b_idx


class LSTM(_Recurrent):
    """``keras.layers.LSTM`` computed by :func:`fastnn.lstm` (forward and BPTT).

    Parameters
    ----------
    units : int
    activation, recurrent_activation : "tanh", "sigmoid"
        The only ones fastnn's cell computes.
    use_bias, unit_forget_bias, *_initializer, *_regularizer, *_constraint
        As in Keras.
    return_sequences, return_state, go_backwards : bool
        As in Keras (``go_backwards`` returns the outputs in processing order).
    dropout, recurrent_dropout : 0
    stateful : False
    seed, unroll, use_cudnn
        Accepted; no effect.

    Weights are Keras's (kernel ``(input_dim, 4 units)``, recurrent_kernel ``(units,
    4 units)``, bias ``(4 units,)``, gates (i, f, c, o)); each call gathers them into
    fastnn's layout (:func:`fastnn.convert.lstm_from_keras`, ``forget_bias=0``) with a
    backend op. Call with ``initial_state=[h, c]`` as in Keras; masks are refused.

    Examples
    --------
    >>> import numpy as np, fastnn.keras as fk
    >>> layer = fk.LSTM(4, return_sequences=True, return_state=True)
    >>> out, h, c = layer(np.ones((2, 5, 3), np.float32))
    >>> tuple(out.shape), tuple(h.shape), tuple(c.shape)
    ((2, 5, 4), (2, 4), (2, 4))
    """
    gates = 4
    n_states = 2
    option = "unit_forget_bias"

    def _bias_initializer(self):
        if self.unit_forget_bias:
            return _ForgetBias(self.bias_initializer, self.units)
        return self.bias_initializer

    def _sequence(self, x, states):
        k_idx, b_idx = _lstm_index(self.input_dim, self.units)
        flat = ops.concatenate([ops.reshape(self.kernel, (-1,)),
                                ops.reshape(self.recurrent_kernel, (-1,))])
        kernel = ops.reshape(ops.take(flat, k_idx.ravel()), k_idx.shape)
        bias = ops.take(self.bias, b_idx) if self.use_bias \
            else ops.zeros((4 * self.units,), dtype=self.compute_dtype)
        impl = _SequenceImpl(fastnn.lstm, fastnn.lstm_backward, 2, forget_bias=0.0)

        def on_jax(x, h0, c0, k, b):
            out, (h, c) = _fastnn_jax().lstm(x, h0, c0, k, b, forget_bias=0.0)
            return out, h, c

        return _run(self, impl, on_jax, [x, states[0], states[1], _tensor(kernel),
                                         _tensor(bias)])


class GRU(_Recurrent):
    """``keras.layers.GRU`` computed by :func:`fastnn.gru` (forward and BPTT).

    Arguments as :class:`LSTM` (no ``unit_forget_bias``) plus ``reset_after`` (True:
    Keras's default and cuDNN's, bias ``(2, 3 units)``; False: bias ``(3 units,)``).
    fastnn's GRU uses Keras's weight layout (gates z, r, h), so the weights are used
    as they are.

    Examples
    --------
    >>> import numpy as np, fastnn.keras as fk
    >>> layer = fk.GRU(4)
    >>> tuple(layer(np.ones((2, 5, 3), np.float32)).shape)
    (2, 4)
    >>> [w.shape for w in layer.get_weights()]
    [(3, 12), (4, 12), (2, 12)]
    """
    gates = 3
    n_states = 1
    option = "reset_after"

    def _bias_shape(self):
        n = 3 * self.units
        return (2, n) if self.reset_after else (n,)

    def _sequence(self, x, states):
        bias = self.bias if self.use_bias else ops.zeros(self._bias_shape(),
                                                         dtype=self.compute_dtype)
        ra = self.reset_after
        impl = _SequenceImpl(fastnn.gru, fastnn.gru_backward, 1, reset_after=ra)
        return _run(self, impl,
                    lambda x, h0, k, rk, b: _fastnn_jax().gru(x, h0, k, rk, b, reset_after=ra),
                    [x, states[0], _tensor(self.kernel), _tensor(self.recurrent_kernel),
                     _tensor(bias)])
