"""Argument checks shared by every public function: dtypes, ints, out= buffers."""
import numbers
import operator

import numpy as np

# np.may_share_memory without its __array_function__ dispatch (the C function it
# wraps, 0.08 against 0.18 us a call): every out= check calls it once per input.
_may_share_memory = getattr(np.may_share_memory, "_implementation", np.may_share_memory)

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_array(a, name, fn):
    """``np.asarray(a)``, a TypeError naming the argument if it cannot be converted."""
    try:
        return np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{fn}: {name} could not be converted to an array ({exc})") from None


def as_float_array(a, name, fn):
    """``np.asarray(a)``, refusing anything but float32/float64 with a TypeError.

    A non-native byte order (``'>f4'`` on a little-endian machine) is the same float
    type: it is converted to a native copy here, so no kernel ever reads it raw; so is
    a misaligned array (a view at an odd byte offset), which the kernels would read
    with misaligned loads.
    """
    arr = a if type(a) is np.ndarray else as_array(a, name, fn)
    if arr.dtype not in FLOAT_DTYPES:
        native = arr.dtype.newbyteorder("=")
        if arr.dtype.kind == "f" and native in FLOAT_DTYPES:
            return arr.astype(native)
        raise TypeError(f"{fn}: {name} must have dtype float32 or float64, got {arr.dtype}")
    if not arr.flags.aligned:
        return arr.copy()
    return arr


def check_bias(bias, n, fn):
    """None, or ``bias`` as a float array of shape (n,)."""
    if bias is None:
        return None
    bias = as_float_array(bias, "bias", fn)
    if bias.shape != (n,):
        raise ValueError(f"{fn}: bias must have shape ({n},), got {bias.shape}")
    return bias


def result_dtype(*arrays):
    """NumPy promotion over the float inputs (None entries are skipped)."""
    return np.result_type(*[a.dtype for a in arrays if a is not None])


def check_ndim(arr, ndim, name, fn, what):
    """A ValueError unless ``arr`` (an array, or its shape as a tuple) is ``ndim``-D."""
    shape = arr if type(arr) is tuple else arr.shape
    if len(shape) != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D {what}, got shape {shape}")


def contiguous(arr, dtype):
    """A C-contiguous, aligned array of ``dtype``, copying only when needed (never in
    place)."""
    out = np.ascontiguousarray(arr, dtype=dtype)
    return out if out.flags.aligned else out.copy()


def as_real(value, name, fn):
    """A real Python / NumPy scalar as a float (bool, complex, arrays refused; an int
    too large for a float is an OverflowError naming the argument)."""
    if type(value) is float:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise OverflowError(f"{fn}: {name} is too large for a float, got {value!r}") from None


def as_bool(value, name, fn):
    """A flag: True / False (or a NumPy bool), nothing else ("no" is not False)."""
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{fn}: {name} must be a bool, got {value!r}")


def as_int(value, name, fn, minimum=None):
    if type(value) is int:      # the common case, without the ABC checks (~1 us)
        if minimum is not None and value < minimum:
            raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
        return value
    if not is_int(value):
        raise TypeError(f"{fn}: {name} must be an int, got {value!r}")
    value = operator.index(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return value


def as_items(value, name, fn, forms):
    """``tuple(value)``; a TypeError "``name`` must be ``forms``" when it is not a
    sequence."""
    try:
        return tuple(value)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be {forms}, got {value!r}") from None


def int_tuple(value, n, name, fn, minimum=None):
    """An int or a sequence of ``n`` ints, as a tuple of ``n`` ints."""
    if type(value) is int or is_int(value):
        return (as_int(value, name, fn, minimum),) * n
    items = as_items(value, name, fn, f"an int or a tuple of {n} ints")
    if len(items) != n:
        raise ValueError(f"{fn}: {name} must be an int or a tuple of {n} ints, got {value!r}")
    return tuple(as_int(v, name, fn, minimum) for v in items)


def _same_view(a, b):
    """The same elements in the same order (an exact alias, as for ``out=x``)."""
    return a is b or (a.shape == b.shape and a.strides == b.strides
                      and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def prepare_out(out, shape, dtype, fn, inputs, name="out", exact_alias_ok=False):
    """Check a user ``out`` buffer.

    Returns ``(buffer, target)``: the kernel writes into ``buffer`` (C-contiguous,
    native byte order, not overlapping any input); when ``buffer`` is not ``target``
    the caller copies it into ``target`` afterwards. An ``out`` of the result dtype in
    the other byte order is accepted (written through a buffer). ``target`` is ``None``
    when no out was given.
    ``exact_alias_ok``: an input that ``out`` aliases exactly is no overlap (for
    kernels that read and write element by element).
    """
    if out is None:
        return np.empty(shape, dtype=dtype), None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{fn}: {name} has shape {out.shape}, expected {tuple(shape)}")
    native = out.dtype == dtype     # (one comparison: this runs on every small call)
    if not native and out.dtype.newbyteorder("=") != dtype:
        raise TypeError(f"{fn}: {name} has dtype {out.dtype}, expected {np.dtype(dtype)}")
    if not out.flags.writeable:
        raise ValueError(f"{fn}: {name} is read-only")
    if not native or not out.flags.c_contiguous:
        # (a byte-swapped out is written through a native buffer)
        return np.empty(shape, dtype=dtype), out
    for a in inputs:
        if (a is not None and _may_share_memory(out, a)
                and not (exact_alias_ok and _same_view(a, out))):
            return np.empty(shape, dtype=dtype), out
    return out, out


def finish_out(buffer, target):
    if target is None or target is buffer:
        return buffer
    np.copyto(target, buffer)
    return target


def memory_error(fn, exc):
    """``exc`` (a MemoryError from a kernel or a NumPy allocation) with a message that
    names the public function ``fn``."""
    msg = str(exc) or "out of memory"
    return MemoryError(msg if msg.startswith(fn + ":") else f"{fn}: {msg}")


def is_int(value):
    """An integer (Python or NumPy), but not a bool."""
    if type(value) is int:
        return True
    return (isinstance(value, (numbers.Integral, np.integer))
            and not isinstance(value, (bool, np.bool_)))


def by_dtype(module, name):
    """The float32 / float64 specialisations of the fused Cython kernel ``module.name``,
    looked up once and keyed by NumPy dtype: calling one directly skips Cython's
    fused-type dispatch (0.2-0.5 us a call, as much as a small kernel)."""
    kernel = getattr(module, name)
    f32, f64 = kernel["float"], kernel["double"]
    # Keyed by the scalar types too: a dtype and its type compare equal but hash apart.
    return {np.dtype(np.float32): f32, np.dtype(np.float64): f64, np.float32: f32,
            np.float64: f64}


def check_layout(layout, fn, allowed):
    """``layout`` upper-cased, a ValueError unless it is one of ``allowed``."""
    if not isinstance(layout, str) or layout.upper() not in allowed:
        raise ValueError(f"{fn}: layout must be one of {', '.join(allowed)}, got {layout!r}")
    return layout.upper()


def check_shape(arr, shape, name, fn, what=""):
    """A ValueError unless ``arr.shape == shape``; ``what`` names the axes."""
    if arr.shape != shape:
        what = f" ({what})" if what else ""
        raise ValueError(f"{fn}: {name} must have shape {shape}{what}, got {arr.shape}")
