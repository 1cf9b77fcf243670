"""thinc backend: :class:`FastnnOps`, a ``thinc.api.NumpyOps`` that runs fastnn's kernels.

Importing this module registers the ops under the name ``"fastnn"``, so the usual
thinc calls select it::

    import fastnn.thinc
    from thinc.api import get_ops, set_current_ops, use_ops
    set_current_ops(get_ops("fastnn"))
    with use_ops("fastnn"):
        ...

``FastnnOps`` keeps NumpyOps's results exactly (to rounding) and only changes who
computes them. Each overridden method takes the fastnn path where fastnn computes
what NumpyOps computes, and hands every other call (other dtypes, shapes, argument
values, invalid input) to NumpyOps unchanged, so errors and corner cases are
NumpyOps's own.

Overridden:

- ``relu``, ``backprop_relu``: :func:`fastnn.relu` / :func:`fastnn.relu_backward`,
  ``inplace=True`` writes into ``X`` / ``dY`` and returns it.
- ``softmax``, ``backprop_softmax``: :func:`fastnn.softmax` /
  :func:`fastnn.softmax_backward` along ``axis``; ``temperature`` divides the input
  (the gradient) first, as thinc does. Like NumpyOps, ``softmax`` never writes into
  its argument, even with ``inplace=True``.
- ``seq2col``, ``backprop_seq2col``: :func:`fastnn.im2col` / :func:`fastnn.col2im` on
  the sequences as ``(1, length, width)`` images, for one sequence or sequences of
  one common length (zero-length sequences allowed in between).
- ``lstm_forward_training``, ``lstm_forward_inference``: :func:`fastnn.lstm` per layer
  and direction on thinc's packed, length-sorted layout and parameter vector; the
  forward state is NumpyOps's own ``(Y, G, C, X)``.

Left to NumpyOps: ``backprop_lstm`` (its result is not the gradient of the forward
-- the first time step's gates are never differentiated and the weight gradients
start from the weights themselves -- so fastnn's exact gradient would change what
thinc models compute) and everything fastnn has no kernel for.
"""
try:
    from thinc.api import NumpyOps as _NumpyOps
    from thinc.api import registry as _registry
except ImportError as exc:      # pragma: no cover - exercised without thinc only
    raise ImportError('fastnn.thinc needs thinc: pip install "fastnn[thinc]"') from exc

import numbers

import numpy as np

import fastnn

__all__ = ["FastnnOps"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_F32 = np.dtype(np.float32)
_I32 = np.dtype(np.int32)

# thinc's LSTM parameter blocks are ordered (f, i, o, c); fastnn's kernel column blocks
# are (i, j, f, o) with j the candidate: fastnn block k is thinc block _TO_FASTNN[k],
# and thinc's gate g is fastnn's block _TO_THINC[g].
_TO_FASTNN = [1, 3, 0, 2]
_TO_THINC = [2, 0, 3, 1]


def _float_array(x):
    return type(x) is np.ndarray and x.dtype in _FLOATS


def _int_arg(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _common_length(lengths, B):
    """The one length all non-empty sequences share, or None (fastnn path not taken).

    ``lengths`` must be what NumpyOps accepts and checks (1-D contiguous int32, each
    >= 0, summing to B); anything else returns None so NumpyOps raises its own error.
    """
    if lengths is None:
        return B
    if (type(lengths) is not np.ndarray or lengths.dtype != _I32 or lengths.ndim != 1
            or not lengths.flags.c_contiguous):
        return None
    if lengths.size == 0 or lengths.min() < 0 or int(lengths.sum()) != B:
        return None
    nonzero = lengths[lengths > 0]
    if nonzero.size == 0:
        return 0
    L = int(nonzero[0])
    return L if bool((nonzero == L).all()) else None


def _lstm_layout(params, H0, C0, X, size_at_t):
    """(depth, dirs, nO, sizes) when the fastnn path computes exactly what NumpyOps
    does, else None. NumpyOps reads X and size_at_t as raw float32 / int32 buffers and
    steps through size_at_t assuming non-increasing batch sizes, so only that input is
    taken here."""
    if not (type(params) is np.ndarray and params.dtype == _F32 and params.ndim == 1):
        return None
    if not (type(X) is np.ndarray and X.dtype == _F32 and X.ndim == 2
            and X.flags.c_contiguous and X.shape[0] > 0 and X.shape[1] > 0):
        return None
    for init in (H0, C0):
        if not (type(init) is np.ndarray and init.ndim == 3 and init.dtype.kind == "f"):
            return None
    if H0.shape != C0.shape:
        return None
    depth, dirs, nO = H0.shape
    if depth < 1 or dirs not in (1, 2) or nO < 1:
        return None
    if not (type(size_at_t) is np.ndarray and size_at_t.dtype == _I32 and size_at_t.ndim == 1
            and size_at_t.flags.c_contiguous and size_at_t.size > 0):
        return None
    sizes = size_at_t.astype(np.intp)
    if sizes.min() < 1 or (sizes.size > 1 and bool((np.diff(sizes) > 0).any())):
        return None
    if int(sizes.sum()) != X.shape[0]:
        return None
    nI = X.shape[1]
    expected = 0
    for i in range(depth):
        n_in = nI if i == 0 else nO * dirs
        expected += dirs * (4 * nO * n_in + 4 * nO + 4 * nO * nO + 4 * nO)
    if params.size != expected:
        return None
    return depth, dirs, nO, sizes


def _lstm_weights(params, offset, nO, nI):
    """fastnn (kernel, bias) for one layer and direction of thinc's parameter vector,
    and the offset after it. thinc stores Wx (4 blocks of (nO, nI)), bx, Wh, bh and
    uses the sum of both biases."""
    Wx = params[offset:offset + 4 * nO * nI].reshape(4, nO, nI)
    offset += 4 * nO * nI
    bx = params[offset:offset + 4 * nO].reshape(4, nO)
    offset += 4 * nO
    Wh = params[offset:offset + 4 * nO * nO].reshape(4, nO, nO)
    offset += 4 * nO * nO
    bh = params[offset:offset + 4 * nO].reshape(4, nO)
    offset += 4 * nO
    kernel = np.empty((nI + nO, 4 * nO), dtype=np.float32)
    kernel[:nI] = Wx[_TO_FASTNN].transpose(2, 0, 1).reshape(nI, 4 * nO)
    kernel[nI:] = Wh[_TO_FASTNN].transpose(2, 0, 1).reshape(nO, 4 * nO)
    bias = (bx + bh)[_TO_FASTNN].reshape(4 * nO)
    return kernel, bias, offset


class _Packing:
    """Where each row of thinc's packed sequence batch sits in a padded (T, B) grid.

    Rows are ordered by time step, then sequence; step t holds the first ``sizes[t]``
    sequences (thinc sorts them by decreasing length). The right-to-left direction
    runs each sequence reversed within its own length.
    """

    def __init__(self, sizes):
        T, B = sizes.size, int(sizes[0])
        self.T, self.B = T, B
        self.dense = bool((sizes == B).all())
        t = np.repeat(np.arange(T), sizes)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        b = np.arange(t.size) - starts[t]
        seq_len = (sizes[:, None] > np.arange(B)[None, :]).sum(axis=0)
        self.rows = (t, b)
        self.reversed_rows = (seq_len[b] - 1 - t, b)

    def pad(self, X, reverse):
        """X (N, width) as a time-major (T, B, width) grid, zeros where no row is."""
        if self.dense and not reverse:
            return X.reshape(self.T, self.B, X.shape[1])
        grid = np.zeros((self.T, self.B, X.shape[1]), dtype=X.dtype)
        grid[self.reversed_rows if reverse else self.rows] = X
        return grid

    def unpad(self, grid, reverse):
        """The packed (N, ...) rows of a (T, B, ...) grid."""
        if self.dense and not reverse:
            return grid.reshape((self.T * self.B,) + grid.shape[2:])
        return grid[self.reversed_rows if reverse else self.rows]


def _lstm_forward(params, H0, C0, X, layout, training):
    """thinc's LSTM forward (NumpyOps's results and forward state) on fastnn.lstm."""
    depth, dirs, nO, sizes = layout
    pack = _Packing(sizes)
    N = X.shape[0]
    T, B = pack.T, pack.B
    Y = np.empty((depth, dirs, N, nO), dtype=np.float32)
    G = np.empty((depth, dirs, N, 4 * nO), dtype=np.float32) if training else None
    C = np.empty((depth, dirs, N, nO), dtype=np.float32) if training else None
    offset = 0
    layer_in = X
    for i in range(depth):
        nI = layer_in.shape[1]
        for d in range(dirs):
            kernel, bias, offset = _lstm_weights(params, offset, nO, nI)
            reverse = d == 1
            # NumpyOps passes its first initial-state argument (H0) as the initial
            # cell and the second (C0) as the initial hidden state; kept as it is.
            h0 = np.broadcast_to(C0[i, d].astype(np.float32), (B, nO))
            c0 = np.broadcast_to(H0[i, d].astype(np.float32), (B, nO))
            x = pack.pad(layer_in, reverse)
            if training:
                out, _, cache = fastnn.lstm(x, h0, c0, kernel, bias, forget_bias=0.0,
                                            time_major=True, training=True)
                # The cache holds the gate activations (i, j, f, o) and the cells of
                # every step; thinc keeps the activations unit by unit as (f, i, o, c).
                gates = cache.gates.reshape(T, B, 4, nO)[:, :, _TO_THINC]
                G[i, d] = pack.unpad(gates, reverse).transpose(0, 2, 1).reshape(N, 4 * nO)
                C[i, d] = pack.unpad(cache.cs[B:].reshape(T, B, nO), reverse)
            else:
                out = fastnn.lstm(x, h0, c0, kernel, bias, forget_bias=0.0, time_major=True,
                                  return_state=False)
            Y[i, d] = pack.unpad(out, reverse)
        H = Y[i].transpose(1, 0, 2).reshape(N, -1)
        if dirs == 2:
            H = np.ascontiguousarray(H)
        layer_in = H
    return H, ((Y, G, C, X) if training else None)


class FastnnOps(_NumpyOps):
    """thinc's NumpyOps with relu, softmax, seq2col and the LSTM forward on fastnn.

    Registered as the ops name ``"fastnn"`` when this module is imported. Results
    match NumpyOps's; a call outside what fastnn computes exactly goes to NumpyOps.

    Examples
    --------
    >>> import numpy as np
    >>> import fastnn.thinc
    >>> from thinc.api import get_ops
    >>> ops = get_ops("fastnn")
    >>> type(ops).__name__, ops.name
    ('FastnnOps', 'fastnn')
    >>> ops.relu(np.array([[-1.0, 2.0]], dtype="float32"))
    array([[0., 2.]], dtype=float32)
    >>> ops.seq2col(np.array([[1.0], [2.0], [3.0]], dtype="float32"), 1)
    array([[0., 1., 2.],
           [1., 2., 3.],
           [2., 3., 0.]], dtype=float32)
    """

    name = "fastnn"

    def relu(self, X, inplace=False):
        if not _float_array(X) or (inplace and not X.flags.writeable):
            return super().relu(X, inplace=inplace)
        return fastnn.relu(X, out=X if inplace else None)

    def backprop_relu(self, dY, Y, inplace=False):
        # NumpyOps: float32 zeroes dY where Y <= 0 (a NaN in Y lets dY through);
        # other dtypes compute dY * (Y > 0) (a NaN or Inf in dY at a blocked position
        # gives NaN). fastnn's select blocks NaN positions and gives 0 there, so each
        # dtype takes the fastnn path only when those cases cannot occur.
        if (not _float_array(dY) or not _float_array(Y) or dY.dtype != Y.dtype
                or dY.shape != Y.shape or dY.size == 0
                or (inplace and not dY.flags.writeable)):
            return super().backprop_relu(dY, Y, inplace=inplace)
        if dY.dtype == _F32:
            if np.isnan(Y.max()):
                return super().backprop_relu(dY, Y, inplace=inplace)
        elif not np.isfinite(dY.sum()):     # a finite sum: no NaN or Inf in dY
            return super().backprop_relu(dY, Y, inplace=inplace)
        return fastnn.relu_backward(dY, Y, out=dY if inplace else None)

    def softmax(self, x, *, inplace=False, axis=-1, temperature=1.0):
        # thinc's softmax returns a new array whatever ``inplace`` says (layers such
        # as MultiSoftmax depend on that), so neither path writes into x.
        if not _float_array(x) or x.ndim == 0 or not _int_arg(axis) or not -x.ndim <= axis < x.ndim:
            return super().softmax(x, inplace=inplace, axis=axis, temperature=temperature)
        if temperature != 1.0:
            x = x / temperature
            if not _float_array(x):
                return super().softmax(x, inplace=inplace, axis=axis)
        return fastnn.softmax(x, axis=int(axis))

    def backprop_softmax(self, Y, dY, *, axis=-1, temperature=1.0):
        if (not _float_array(Y) or not _float_array(dY) or Y.shape != dY.shape or Y.ndim == 0
                or not _int_arg(axis) or not -Y.ndim <= axis < Y.ndim):
            return super().backprop_softmax(Y, dY, axis=axis, temperature=temperature)
        if temperature != 1.0:
            dY = dY / temperature
            if not _float_array(dY):
                return super().backprop_softmax(Y, dY, axis=axis)
        return fastnn.softmax_backward(dY, Y, axis=int(axis))

    def _seq2col_geometry(self, arr, nW, lengths, per_row):
        """(sequences, length, width) for the fastnn path, or None."""
        if (not _float_array(arr) or arr.ndim != 2 or not arr.flags.c_contiguous
                or not _int_arg(nW) or nW < 0 or nW > 2**30):
            return None
        B, cols = arr.shape
        nF = 2 * int(nW) + 1
        if per_row and cols % nF:
            return None       # NumpyOps truncates the width; leave that to it
        L = _common_length(lengths, B)
        if L is None:
            return None
        return (B // L if L else 0), L, (cols // nF if per_row else cols)

    def seq2col(self, seq, nW, *, lengths=None):
        cols = self._seq2col(seq, nW, lengths, backward=False)
        return super().seq2col(seq, nW, lengths=lengths) if cols is None else cols

    def backprop_seq2col(self, dY, nW, *, lengths=None):
        dX = self._seq2col(dY, nW, lengths, backward=True)
        return super().backprop_seq2col(dY, nW, lengths=lengths) if dX is None else dX

    def _seq2col(self, arr, nW, lengths, backward):
        """seq2col (the windows of ``arr``) or its backprop (``arr`` the windows'
        gradient) as im2col / col2im over S sequences of length L; None where fastnn
        does not take the input."""
        geometry = self._seq2col_geometry(arr, nW, lengths, per_row=backward)
        if geometry is None:
            return None
        S, L, I = geometry
        nF = 2 * int(nW) + 1
        width = I if backward else nF * I
        if S == 0 or L == 0 or I == 0:
            return np.zeros((arr.shape[0], width), dtype=arr.dtype)
        if backward:
            out = fastnn.col2im(arr.reshape(S, L, nF * I), (S, 1, L, I), (1, nF),
                                padding=(0, int(nW)), layout="NHWC")
        else:
            out = fastnn.im2col(arr.reshape(S, 1, L, I), (1, nF), padding=(0, int(nW)),
                                layout="NHWC")
        return out.reshape(S * L, width)

    def lstm_forward_training(self, params, H0, C0, X, size_at_t):
        layout = _lstm_layout(params, H0, C0, X, size_at_t)
        if layout is None:
            return super().lstm_forward_training(params, H0, C0, X, size_at_t)
        return _lstm_forward(params, H0, C0, X, layout, training=True)

    def lstm_forward_inference(self, params, H0, C0, X, size_at_t):
        layout = _lstm_layout(params, H0, C0, X, size_at_t)
        if layout is None:
            return super().lstm_forward_inference(params, H0, C0, X, size_at_t)
        return _lstm_forward(params, H0, C0, X, layout, training=False)[0]


# thinc finds ops classes through its ``registry.ops`` catalogue (get_ops matches the
# class's ``name``); registering adds "fastnn" and changes nothing else.
_registry.ops.register("FastnnOps", func=FastnnOps)
