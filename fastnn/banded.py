"""Banded and masked weights: products whose cost follows the kept weights.

A locally connected dense layer (each output sees a window of inputs) is usually
written ``x @ (w * band_mask)``: a dense product that spends almost all of its work
on zeros. Here the weights outside the band (or under a zero mask) are structural
zeros: they are never read, never multiplied, and their gradient is exactly zero,
so masked weights never learn.

Conventions
-----------
``w`` is dense ``(n_in, n_out)`` and ``x`` is ``(..., n_in)``; ``y = x @ w' + bias``
with ``w'`` the band (``band_part``) or the masked weight. Because the weights
outside the band or mask are skipped rather than multiplied by zero, a NaN or Inf
in ``x[..., i]`` reaches the outputs that keep a weight in row ``i`` (and, on the
dense-GEMM paths, may reach the others, as ``x @ (w * mask)`` would); a NaN in a
dropped weight never reaches ``y``.

The locally connected layers (:func:`locally_connected1d`, :func:`locally_connected2d`
and their backward functions) live in :mod:`fastnn.local` and are importable from
here too.
"""
from __future__ import annotations

import math

import numpy as np

from fastnn._threads import threads_for
from fastnn._typing import ArrayLike, FloatArray, NDArray
from fastnn._validation import (as_array, as_bool, as_float_array, as_int, check_bias,
                                check_ndim, contiguous, finish_out, memory_error, prepare_out,
                                result_dtype)
from fastnn.local import (locally_connected1d, locally_connected1d_backward,  # noqa: F401
                          locally_connected2d, locally_connected2d_backward)
from fastnn_ext import _banded

__all__ = ["band_part", "banded_matmul", "banded_matmul_backward", "masked_matmul",
           "masked_matmul_backward", "prepare_mask", "PreparedMask", "locally_connected1d",
           "locally_connected1d_backward",
           "locally_connected2d", "locally_connected2d_backward"]

# Paths of banded_matmul, by the band's number of diagonals (nd = lower + upper + 1),
# the batch and the density (kept entries / n_in*n_out). Measured float32, one thread:
#   diagonal kernel (register tiles of 4 rows x 2 vectors of columns, vectorised
#     along the columns, reads only the band, no GEMM call overhead) for
#     nd <= DIAG_MAX_DIAGONALS or a batch below DIAG_MAX_BATCH rows. Against GEMM
#     tiles: B64 n4096 band(8,8) 0.34 vs 0.69 ms, B256 n4096 band(32,32) 3.0 vs
#     4.3 ms, B64 n2048 band(64,64) 0.89 vs 1.25 ms; B128 n2048 band(256,256)
#     7.9 vs 5.6 ms (the tiles win from here on), B1 n4096 band(3,3) 0.05 vs 0.24.
#   GEMM on diagonal tiles of max(nd, DIAG_TILE_MIN) .. DIAG_TILE_MAX columns,
#     whose work is only (block + nd) / nd times the band's, at GEMM speed.
#   density >= DENSE_BAND_DENSITY: one masking pass and one dense GEMM. At B128
#     n2048 band(256,256) (density 0.23) the tiles took 5.6 ms against 28 ms dense;
#     the tiles compute at most about twice the band, so dense wins only from
#     about half the matrix on.
DIAG_MAX_DIAGONALS = 160
DIAG_MAX_BATCH = 8
DIAG_TILE_MIN = 64
DIAG_TILE_MAX = 256
DENSE_BAND_DENSITY = 0.5
# masked_matmul: below this density the compressed index (cost ~ nnz * batch, the
# batch a contiguous vector) beats masking w and one dense GEMM. Measured float32,
# one thread, B64 2048x2048, prepared mask: sparse 0.95 / 2.3 / 4.1 / 6.3 / 11 ms at
# 1 / 3 / 6 / 10 / 20 % against 7.4-8.5 ms dense (crossover ~12 %); a mask array
# indexed on every call adds ~1 ms at 1 %, more as it fills (crossover ~6-8 %).
DENSE_MASK_DENSITY = 0.1


def _rows(a, n):
    """``a`` as (rows, n): its leading axes flattened (also when n or a row count is 0)."""
    return a.reshape(math.prod(a.shape[:-1]), n)


def _band_mask(rows, cols, num_lower, num_upper):
    i = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    keep = np.ones((rows, cols), dtype=bool)
    if num_lower >= 0:
        keep &= i - j <= num_lower
    if num_upper >= 0:
        keep &= j - i <= num_upper
    return keep


def band_part(w: ArrayLike, num_lower: int, num_upper: int) -> FloatArray:
    """Copy of ``w`` with the entries outside a band set to zero.

    ``tf.linalg.band_part`` semantics on the last two axes: keep ``w[..., i, j]``
    where ``(num_lower < 0 or i - j <= num_lower) and (num_upper < 0 or
    j - i <= num_upper)``.

    Parameters
    ----------
    w : array_like
        ``(..., M, N)``, at least 2-D.
    num_lower, num_upper : int
        Diagonals kept below / above the main one; negative keeps that whole
        triangle; bounds past the matrix are allowed.

    Returns
    -------
    ndarray
        Same shape and dtype as ``w``; entries outside the band are exactly 0
        (also where ``w`` held NaN).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> fastnn.band_part(np.ones((3, 3)), 1, 0)
    array([[1., 0., 0.],
           [1., 1., 0.],
           [0., 1., 1.]])
    """
    fn = "band_part"
    w = as_float_array(w, "w", fn)
    num_lower = as_int(num_lower, "num_lower", fn)
    num_upper = as_int(num_upper, "num_upper", fn)
    if w.ndim < 2:
        raise ValueError(f"{fn}: w must be at least 2-D (..., M, N), got shape {w.shape}")
    keep = _band_mask(w.shape[-2], w.shape[-1], num_lower, num_upper)
    return np.where(keep, w, w.dtype.type(0))


# ------------------------------------------------------------------ banded_matmul
def _check_x_w(fn, x, w, xname="x"):
    check_ndim(w, 2, "w", fn, "(n_in, n_out)")
    if x.ndim < 1:
        raise ValueError(f"{fn}: {xname} must be at least 1-D (..., n_in), got shape {x.shape}")
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"{fn}: {xname} has {x.shape[-1]} features (last axis of shape "
                         f"{x.shape}), w expects n_in = {w.shape[0]} (w has shape {w.shape})")


def _clip_band(fn, num_lower, num_upper, n_in, n_out):
    """(lower, upper) clipped to the matrix: 0 <= lower < n_in, 0 <= upper < n_out."""
    num_lower = as_int(num_lower, "num_lower", fn)
    num_upper = as_int(num_upper, "num_upper", fn)
    lower = n_in - 1 if num_lower < 0 else min(num_lower, n_in - 1)
    upper = n_out - 1 if num_upper < 0 else min(num_upper, n_out - 1)
    return max(lower, 0), max(upper, 0)


def _band_count(n_in, n_out, lower, upper):
    """Entries of an (n_in, n_out) matrix on diagonals i - j in [-upper, lower]."""
    d = np.arange(-upper, lower + 1)
    return int(np.maximum(0, np.minimum(n_in - d, n_out) - np.maximum(0, -d)).sum())


class _BandPlan:
    """The path (diagonal kernel, GEMM tiles or dense) for one band and shape."""

    def __init__(self, batch, n_in, n_out, lower, upper):
        self.batch, self.lower, self.upper = batch, lower, upper
        self.diagonals = lower + upper + 1
        self.count = _band_count(n_in, n_out, lower, upper)
        density = self.count / max(n_in * n_out, 1)
        if density >= DENSE_BAND_DENSITY:
            self.path = "dense"
        elif self.diagonals <= DIAG_MAX_DIAGONALS or batch < DIAG_MAX_BATCH:
            self.path = "diag"
        else:
            self.path = "tiled"
        self.block = int(min(max(self.diagonals, DIAG_TILE_MIN), DIAG_TILE_MAX))

    def transposed(self, n_in, n_out):
        return _BandPlan(self.batch, n_out, n_in, self.upper, self.lower)


def _band_product(x2, w, plan, y2, dtype):
    """y2 += x2 @ band(w) (y2 holds the bias or zeros); w may be any strided view."""
    B = x2.shape[0]
    if B == 0 or y2.shape[1] == 0 or x2.shape[1] == 0:
        return
    nt = threads_for(B * plan.count)
    if plan.path == "dense":
        wm = np.where(_band_mask(*w.shape, plan.lower, plan.upper), w, 0).astype(dtype, copy=False)
        y2 += np.matmul(x2, wm)
    elif plan.path == "diag":
        _banded.band_diag(x2, w.astype(dtype, copy=False), x2, y2, plan.lower, plan.upper,
                          False, nt)
    else:
        _banded.band_tiled(x2, w.astype(dtype, copy=False), x2, y2, plan.lower, plan.upper,
                           plan.block, False, nt)


def _fill_bias(y2, bias):
    if bias is None:
        y2.fill(0)
    else:
        y2[...] = bias


def banded_matmul(x: ArrayLike, w: ArrayLike, num_lower: int, num_upper: int,
                  bias: ArrayLike | None = None, *, out: FloatArray | None = None
                  ) -> FloatArray:
    """``x @ band_part(w, num_lower, num_upper) + bias`` at the cost of the band.

    Only the band of ``w`` is read; the work is proportional to the number of
    entries in the band, not to ``n_in * n_out``.

    Parameters
    ----------
    x : array_like
        ``(..., n_in)``; leading axes are batch axes.
    w : array_like
        Dense ``(n_in, n_out)`` (rectangular allowed); entry ``(i, j)`` is kept when
        ``i - j <= num_lower`` and ``j - i <= num_upper`` (negative: no limit).
    num_lower, num_upper : int
        The band, as in :func:`band_part`.
    bias : array_like, optional
        ``(n_out,)``.
    out : ndarray, optional
        ``(..., n_out)`` result buffer of the result dtype.

    Returns
    -------
    y : ndarray
        ``(..., n_out)`` in the promoted dtype of the inputs.

    Notes
    -----
    Narrow bands run a kernel over the band's diagonals, wider ones GEMM on
    diagonal tiles, and bands holding half of ``w`` or more one dense GEMM (see the
    thresholds in this module). Weights outside the band are never multiplied, so
    a NaN in ``x`` reaches the outputs whose band covers it (on the dense path,
    all outputs, like ``x @ band_part(w)``).

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> x = np.array([[1., 2., 3.]])
    >>> fastnn.banded_matmul(x, np.ones((3, 3)), 0, 1)
    array([[1., 3., 5.]])
    """
    fn = "banded_matmul"
    x = as_float_array(x, "x", fn)
    w = as_float_array(w, "w", fn)
    _check_x_w(fn, x, w)
    n_in, n_out = w.shape
    bias = check_bias(bias, n_out, fn)
    lower, upper = _clip_band(fn, num_lower, num_upper, n_in, n_out)
    dtype = result_dtype(x, w, bias)
    buf, target = prepare_out(out, x.shape[:-1] + (n_out,), dtype, fn, (x, w, bias))
    y2 = _rows(buf, n_out)
    _fill_bias(y2, bias)
    if y2.size and n_in:
        x2 = _rows(contiguous(x, dtype), n_in)
        try:
            _band_product(x2, w, _BandPlan(x2.shape[0], n_in, n_out, lower, upper), y2, dtype)
        except MemoryError as exc:
            raise memory_error(fn, exc) from None
    return finish_out(buf, target)


def _check_grad_y(fn, grad_y, x, n_out):
    grad_y = as_float_array(grad_y, "grad_y", fn)
    want = x.shape[:-1] + (n_out,)
    if grad_y.shape != want:
        raise ValueError(f"{fn}: grad_y must have the output shape {want}, got {grad_y.shape}")
    return grad_y


def _sum_rows(gy2, dtype):
    # NumPy adds the rows in order, whatever the thread count.
    return np.add.reduce(gy2, axis=0, dtype=dtype)


def banded_matmul_backward(grad_y: ArrayLike, x: ArrayLike, w: ArrayLike, num_lower: int,
                           num_upper: int, *, bias: bool = True
                           ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Gradients of :func:`banded_matmul`.

    Parameters
    ----------
    grad_y : array_like
        ``(..., n_out)``, the gradient of the loss with respect to y.
    x, w, num_lower, num_upper
        As given to the forward call.
    bias : bool
        Whether the forward had a bias (compute ``grad_bias``).

    Returns
    -------
    grad_x : ndarray
        ``(..., n_in)``: ``grad_y @ band_part(w)^T`` (a band product with the
        bounds swapped).
    grad_w : ndarray
        ``(n_in, n_out)``: ``x^T @ grad_y`` inside the band, exactly 0 outside;
        only the band is computed.
    grad_bias : ndarray or None
        ``(n_out,)``, rows summed in order.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> gx, gw, gb = fastnn.banded_matmul_backward(np.ones((1, 2)), np.ones((1, 2)),
    ...                                           np.ones((2, 2)), 0, 0)
    >>> gx, gw, gb
    (array([[1., 1.]]), array([[1., 0.],
           [0., 1.]]), array([1., 1.]))
    """
    fn = "banded_matmul_backward"
    bias = as_bool(bias, "bias", fn)
    x = as_float_array(x, "x", fn)
    w = as_float_array(w, "w", fn)
    _check_x_w(fn, x, w)
    n_in, n_out = w.shape
    grad_y = _check_grad_y(fn, grad_y, x, n_out)
    lower, upper = _clip_band(fn, num_lower, num_upper, n_in, n_out)
    try:
        return _banded_backward(grad_y, x, w, lower, upper, bias)
    except MemoryError as exc:
        raise memory_error(fn, exc) from None


def _banded_backward(grad_y, x, w, lower, upper, bias):
    n_in, n_out = w.shape
    dtype = result_dtype(grad_y, x, w)
    gy2 = _rows(contiguous(grad_y, dtype), n_out)
    x2 = _rows(contiguous(x, dtype), n_in)
    plan = _BandPlan(x2.shape[0], n_in, n_out, lower, upper)
    grad_x = np.zeros(x.shape, dtype=dtype)
    _band_product(gy2, w.T, plan.transposed(n_in, n_out), _rows(grad_x, n_in), dtype)
    grad_w = np.zeros((n_in, n_out), dtype=dtype)
    B = x2.shape[0]
    if B and grad_w.size:
        nt = threads_for(B * plan.count)
        if plan.path == "dense":
            np.matmul(x2.T, gy2, out=grad_w)
            np.copyto(grad_w, 0, where=~_band_mask(n_in, n_out, lower, upper))
        elif plan.path == "diag":
            _banded.band_diag(x2, grad_w, gy2, grad_w, lower, upper, True, nt)
        else:
            _banded.band_tiled(x2, grad_w, gy2, grad_w, lower, upper, plan.block, True, nt)
    grad_b = _sum_rows(gy2, dtype) if bias else None
    return grad_x, grad_w, grad_b


# ------------------------------------------------------------------ masked_matmul
class PreparedMask:
    """A weight mask compressed once for :func:`masked_matmul` (see :func:`prepare_mask`).

    Holds a snapshot of the mask (later changes to the array it came from are not
    seen), its non-zero count, and for sparse masks the column indices of each
    row's non-zeros (CSR) and the row indices of each column's (CSC). It is
    immutable: its attributes cannot be set, and the index arrays of a prepared
    mask are read-only (over memory no view can make writeable again), because the
    sparse kernels index by them without bounds checks.

    Attributes
    ----------
    shape : tuple of int
        ``(n_in, n_out)``.
    nnz : int
        Number of non-zeros.
    dense : bool
        Whether products take the dense path (density at least
        ``DENSE_MASK_DENSITY``).
    """

    __slots__ = ("bytes", "shape", "nnz", "dense", "row_ptr", "row_cols", "col_ptr",
                 "col_rows", "csr_to_csc", "frozen")
    shape: tuple[int, int]
    nnz: int
    dense: bool

    def __init__(self, mask: ArrayLike, fn: str = "prepare_mask", snapshot: bool = False
                 ) -> None:
        m = as_array(mask, "mask", fn)
        if m.dtype.kind not in "biuf":
            raise TypeError(f"{fn}: mask must be a bool, integer or float array, got {m.dtype}")
        if m.ndim != 2:
            raise ValueError(f"{fn}: mask must be 2-D (n_in, n_out), got shape {m.shape}")
        # One byte per weight, C order: the comparison keeps a Fortran-ordered or
        # transposed mask's layout, so it is made contiguous either way.
        mbytes = np.ascontiguousarray(m if m.dtype == np.bool_ else m != 0).view(np.uint8)
        n_in, n_out = m.shape
        nt = threads_for(n_in * n_out // 8)
        counts = np.empty(n_in, dtype=np.int64)
        _banded.mask_row_counts(mbytes, counts, nt)
        nnz = int(counts.sum())
        dense = nnz >= DENSE_MASK_DENSITY * n_in * n_out
        index = (None,) * 5
        if not dense:
            row_ptr = np.zeros(n_in + 1, dtype=np.int64)
            np.cumsum(counts, out=row_ptr[1:])
            index = (row_ptr, np.empty(nnz, dtype=np.int64), np.empty(n_out + 1, dtype=np.int64),
                     np.empty(nnz, dtype=np.int64), np.empty(nnz, dtype=np.int64))
            _banded.mask_index(mbytes, *index, nt)
        if snapshot:
            # Kept by the caller: a copy over immutable memory (also the snapshot).
            mbytes = _frozen(mbytes)
            index = tuple(None if a is None else _frozen(a) for a in index)
        fields = dict(zip(("row_ptr", "row_cols", "col_ptr", "col_rows", "csr_to_csc"), index),
                      bytes=mbytes, shape=(n_in, n_out), nnz=nnz, dense=dense, frozen=snapshot)
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"PreparedMask is immutable (cannot set {name!r}); "
                             f"prepare the changed mask again")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"PreparedMask is immutable (cannot delete {name!r})")

    def __reduce__(self) -> tuple[type[PreparedMask], tuple[NDArray[np.bool_], str, bool]]:
        return (PreparedMask, (self.bytes.view(np.bool_), "prepare_mask", True))

    def __repr__(self) -> str:
        return f"PreparedMask(shape={self.shape}, nnz={self.nnz}, dense={self.dense})"

    def _check(self, fn):
        """What the kernels rely on, in O(1): the arrays' shapes and dtypes agree with
        shape and nnz, and (for a prepared mask) still lie over immutable memory."""
        n_in, n_out = self.shape
        want = {"bytes": ((n_in, n_out), np.uint8)}
        if not self.dense:
            want.update(row_ptr=((n_in + 1,), np.int64), col_ptr=((n_out + 1,), np.int64),
                        row_cols=((self.nnz,), np.int64), col_rows=((self.nnz,), np.int64),
                        csr_to_csc=((self.nnz,), np.int64))
        for name, (shape, dtype) in want.items():
            a = getattr(self, name)
            if (not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype
                    or not a.flags.c_contiguous
                    or (self.frozen and not isinstance(_owner(a), bytes))):
                raise ValueError(f"{fn}: mask is a PreparedMask whose {name} was modified "
                                 f"(expected a C-contiguous {np.dtype(dtype)} array of shape {shape}); "
                                 f"prepare the mask again")

    def _masked(self, w, dtype):
        """``w`` (of the mask's shape) where the mask is non-zero, exact zeros elsewhere,
        as ``dtype``."""
        wm = np.empty(self.shape, dtype=dtype)
        _banded.apply_mask(contiguous(w, dtype), self.bytes, wm, threads_for(wm.size // 4))
        return wm

    def _values(self, w, dtype, csc):
        """The kept weights of ``w`` (of the mask's shape) in CSC (column by column) or
        CSR order, as ``dtype``."""
        vals = np.empty(self.nnz, dtype=dtype)
        _banded.gather_values(contiguous(w, dtype), self.row_ptr, self.row_cols,
                              self.csr_to_csc, csc, vals, threads_for(self.nnz))
        return vals


def _owner(a):
    """The object that owns an array's memory."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def _frozen(a):
    """A copy of ``a`` over a bytes object: read-only, and no view of it can be made
    writeable."""
    return np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)


def prepare_mask(mask: ArrayLike | PreparedMask) -> PreparedMask:
    """Compress a weight mask once, for repeated :func:`masked_matmul` calls.

    ``masked_matmul(x, w, mask)`` with a plain array scans the mask and builds its
    index on every call (O(n_in * n_out)); a prepared mask makes the sparse
    products cost only in proportion to the non-zeros. The mask is copied: to
    change it, prepare it again.

    Parameters
    ----------
    mask : array_like
        ``(n_in, n_out)``, bool, integer or float; non-zero keeps the weight.

    Returns
    -------
    PreparedMask

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> m = fastnn.prepare_mask(np.eye(3, dtype=bool))
    >>> m.nnz
    3
    >>> fastnn.masked_matmul(np.ones((1, 3)), np.full((3, 3), 2.0), m)
    array([[2., 2., 2.]])
    """
    if isinstance(mask, PreparedMask):
        return mask
    return PreparedMask(mask, snapshot=True)


def _transposed(a2, dtype, nt):
    out = np.empty(a2.shape[::-1], dtype=dtype)
    _banded.transpose(a2.astype(dtype, copy=False), out, nt)
    return out


def _masked_setup(fn, x, w, mask):
    x = as_float_array(x, "x", fn)
    w = as_float_array(w, "w", fn)
    _check_x_w(fn, x, w)
    if isinstance(mask, PreparedMask):
        plan = mask
        plan._check(fn)
    else:
        plan = PreparedMask(mask, fn)
    if plan.shape != w.shape:
        raise ValueError(f"{fn}: mask must have the shape of w {w.shape}, got {plan.shape}")
    return x, w, plan


def masked_matmul(x: ArrayLike, w: ArrayLike, mask: ArrayLike | PreparedMask,
                  bias: ArrayLike | None = None, *, out: FloatArray | None = None
                  ) -> FloatArray:
    """``x @ (w * mask) + bias`` at a cost following the mask's non-zeros.

    Parameters
    ----------
    x : array_like
        ``(..., n_in)``.
    w : array_like
        ``(n_in, n_out)``.
    mask : array_like or PreparedMask
        ``(n_in, n_out)``, bool, integer or float; a weight is kept where the mask
        is non-zero and is an exact zero elsewhere (even where ``w`` holds NaN).
        A :func:`prepare_mask` result skips the per-call scan of the mask.
    bias : array_like, optional
        ``(n_out,)``.
    out : ndarray, optional
        ``(..., n_out)`` result buffer.

    Returns
    -------
    y : ndarray
        ``(..., n_out)`` in the promoted dtype of x, w and bias.

    Notes
    -----
    Masks with fewer than ``DENSE_MASK_DENSITY`` non-zeros use a compressed index
    (per column, the rows kept) and cost in proportion to the non-zeros, the batch
    being the vectorised axis; denser masks take one masking pass and one dense
    GEMM. A plain-array mask is scanned and indexed on every call (the scan skips
    zero bytes eight at a time); use :func:`prepare_mask` when the mask is reused.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> mask = np.array([[True, False], [False, True]])
    >>> fastnn.masked_matmul(np.array([[1., 2.]]), np.ones((2, 2)), mask)
    array([[1., 2.]])
    """
    fn = "masked_matmul"
    x, w, plan = _masked_setup(fn, x, w, mask)
    n_in, n_out = w.shape
    bias = check_bias(bias, n_out, fn)
    dtype = result_dtype(x, w, bias)
    buf, target = prepare_out(out, x.shape[:-1] + (n_out,), dtype, fn, (x, w, bias))
    y2 = _rows(buf, n_out)
    B = y2.shape[0]
    if B and n_in and n_out and plan.dense:
        np.matmul(_rows(contiguous(x, dtype), n_in), plan._masked(w, dtype), out=y2)
        if bias is not None:
            y2 += bias
    elif B and n_in and n_out:
        nt = threads_for(B * plan.nnz)
        x_t = _transposed(_rows(x, n_in), dtype, nt)
        y_t = np.zeros((n_out, B), dtype=dtype)
        if bias is not None:
            y_t += bias[:, None]
        _banded.sparse_rows(x_t, plan._values(w, dtype, True), plan.col_ptr, plan.col_rows,
                            y_t, nt)
        _banded.transpose(y_t, y2, nt)
    else:
        _fill_bias(y2, bias)
    return finish_out(buf, target)


def masked_matmul_backward(grad_y: ArrayLike, x: ArrayLike, w: ArrayLike,
                           mask: ArrayLike | PreparedMask, *, bias: bool = True
                           ) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Gradients of :func:`masked_matmul`; ``grad_w`` is exactly 0 where mask is 0.

    Parameters
    ----------
    grad_y : array_like
        ``(..., n_out)``.
    x, w, mask
        As given to the forward call (``mask`` may be a :func:`prepare_mask` result).
    bias : bool
        Whether the forward had a bias (compute ``grad_bias``).

    Returns
    -------
    grad_x : ndarray
        ``(..., n_in)``: ``grad_y @ (w * mask)^T``.
    grad_w : ndarray
        ``(n_in, n_out)``: ``(x^T @ grad_y) * mask`` (computed only at the
        non-zeros for sparse masks).
    grad_bias : ndarray or None
        ``(n_out,)`` when ``bias`` is true.

    Examples
    --------
    >>> import numpy as np, fastnn
    >>> mask = np.array([[1, 0], [0, 1]])
    >>> gx, gw, gb = fastnn.masked_matmul_backward(np.ones((1, 2)), np.ones((1, 2)),
    ...                                           np.full((2, 2), 2.0), mask)
    >>> gx, gw
    (array([[2., 2.]]), array([[1., 0.],
           [0., 1.]]))
    """
    fn = "masked_matmul_backward"
    bias = as_bool(bias, "bias", fn)
    x, w, plan = _masked_setup(fn, x, w, mask)
    n_in, n_out = w.shape
    grad_y = _check_grad_y(fn, grad_y, x, n_out)
    dtype = result_dtype(grad_y, x, w)
    gy2 = _rows(contiguous(grad_y, dtype), n_out)
    x2 = _rows(contiguous(x, dtype), n_in)
    B = x2.shape[0]
    grad_x = np.zeros(x.shape, dtype=dtype)
    if plan.dense:
        grad_w = np.zeros((n_in, n_out), dtype=dtype)
        if B and n_in and n_out:    # (grad_w stays zero for an empty batch)
            np.matmul(gy2, plan._masked(w, dtype).T, out=_rows(grad_x, n_in))
            np.matmul(x2.T, gy2, out=grad_w)
            _banded.apply_mask(grad_w, plan.bytes, grad_w, threads_for(grad_w.size // 4))
    else:
        grad_w = np.zeros((n_in, n_out), dtype=dtype)
        if B and plan.nnz:
            nt = threads_for(B * plan.nnz)
            x_t = _transposed(x2, dtype, nt)
            gy_t = _transposed(gy2, dtype, nt)
            gx_t = np.zeros((n_in, B), dtype=dtype)
            _banded.sparse_rows(gy_t, plan._values(w, dtype, False), plan.row_ptr,
                                plan.row_cols, gx_t, nt)
            _banded.transpose(gx_t, _rows(grad_x, n_in), nt)
            _banded.sparse_weight_grad(x_t, gy_t, plan.row_ptr, plan.row_cols, grad_w, nt)
    grad_b = _sum_rows(gy2, dtype) if bias else None
    return grad_x, grad_w, grad_b
