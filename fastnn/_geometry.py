"""Convolution and pooling geometry shared by conv, pooling, banded and local: the
padding forms, the output-size arithmetic and the 64-bit index limits."""
import functools
import math

from fastnn._validation import as_int, as_items, int_tuple, is_int


def same_padding(size, k, s, d):
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def parse_padding(padding, in_size, kernel_size, stride, dilation, fn):
    """Padding as ((top, bottom), (left, right)) from every accepted form."""
    nd = len(in_size)
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0),) * nd
        if mode == "same":
            return tuple(same_padding(in_size[a], kernel_size[a], stride[a], dilation[a])
                         for a in range(nd))
        raise ValueError(f"{fn}: padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
    if is_int(padding):
        p = as_int(padding, "padding", fn, minimum=0)
        return ((p, p),) * nd
    items = as_items(padding, "padding", fn, "an int, a tuple, 'valid' or 'same'")
    if len(items) != nd:
        hint = ""
        if nd == 2 and len(items) == 4:
            hint = (f"; for four sides write ((top, bottom), (left, right)), e.g. "
                    f"padding=(({items[0]!r}, {items[1]!r}), ({items[2]!r}, {items[3]!r}))")
        raise ValueError(f"{fn}: padding must have {nd} entries (one per spatial axis), "
                         f"got {padding!r}{hint}")
    sides = []
    for item in items:
        if is_int(item):
            p = as_int(item, "padding", fn, minimum=0)
            sides.append((p, p))
        else:
            pair = int_tuple(item, 2, "padding", fn, minimum=0)
            sides.append(pair)
    return tuple(sides)


# The kernels' index arithmetic (a tap's row oh*stride - pad + i*dilation, a flat
# offset into an image plus such a column, times the channels) stays within
# channels x (padded extent + window + stride) of each axis, beyond the arrays' own
# sizes. Geometry that takes that past 2**56 (a padding, dilation, stride or kernel
# size of 2**62, whatever the arrays' real sizes) is refused before any int64
# arithmetic can wrap; the margin up to 2**63 covers the geometries derived from it
# (the flipped convolution of an input gradient reaches about 3 times as far).
INDEX_LIMIT = 1 << 56
DERIVED_LIMIT = 1 << 60


def check_index_range(fn, C, ext_h, ext_w, what="stride, padding, dilation or kernel size",
                      limit=INDEX_LIMIT):
    """ValueError unless max(C, 1) * ext < limit on both axes."""
    if max(C, 1) * max(ext_h, ext_w) >= limit:
        raise ValueError(f"{fn}: geometry too large for 64-bit index arithmetic: padded extent "
                         f"plus window and stride {ext_h}x{ext_w} with {C} channels (the "
                         f"{what} is too large)")


def check_result_size(fn, what, shape):
    """ValueError for a result no array can hold (NumPy's "array is too big")."""
    if math.prod(shape) >= INDEX_LIMIT:
        raise ValueError(f"{fn}: {what} would have shape {tuple(shape)}, too large for any "
                         f"array")


def image_shape(nhwc, N, C, H, W):
    return (N, H, W, C) if nhwc else (N, C, H, W)


def _plain(value):
    """An exact int, str or None, or a tuple of them (nested tuples too): values whose
    equality means they are the same argument (``True == 1`` and ``1.0 == 1`` but
    neither is plain)."""
    t = type(value)
    if t is int or t is str or value is None:
        return True
    if t is tuple:
        for v in value:
            tv = type(v)
            if not (tv is int or (tv is tuple and _plain(v))):
                return False
        return True
    return False


_CACHE: dict = {}
_CACHE_SIZE = 512


def cached(cls, *args, **kwargs):
    """``cls(*args, **kwargs)``, memoised for plain arguments: a training loop calls a
    kernel with the same shapes and options every step, and validating them costs a
    few microseconds, as much as a small kernel. The geometry objects are never
    modified after construction. Only plain arguments (:func:`_plain`; a keyword may
    also be a bool, keyed with its type) are cached, never arguments that raise, so
    every error is raised as before."""
    for a in args:                  # _plain, with its common cases inlined
        t = type(a)
        if t is int or t is str or a is None:
            continue
        if t is tuple:
            for v in a:
                if type(v) is not int and not (type(v) is tuple and _plain(v)):
                    return cls(*args, **kwargs)
            continue
        return cls(*args, **kwargs)
    kw = ()
    if kwargs:
        for v in kwargs.values():
            if not (type(v) is bool or _plain(v)):
                return cls(*args, **kwargs)
        # Keyed in the caller's order (another order is another entry, not a wrong one).
        kw = (tuple(kwargs.items()), tuple(map(type, kwargs.values())))
    key = (cls, args, kw)
    geom = _CACHE.get(key)
    if geom is None:
        geom = cls(*args, **kwargs)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = geom
    return geom


class Geometry:
    """Normalised convolution geometry (2-D; 1-D uses H = 1)."""

    def __init__(self, fn, layout, x_shape, kernel_size, channels_out, groups,
                 stride, padding, dilation, ndim=2, limit=INDEX_LIMIT):
        self.fn = fn
        self.layout = layout
        self.nhwc = layout == "NHWC"
        if self.nhwc:
            self.N, self.H, self.W, self.C = x_shape
        else:
            self.N, self.C, self.H, self.W = x_shape
        self.K = channels_out
        self.groups = groups
        self.kh, self.kw = kernel_size
        self.sh, self.sw = int_tuple(stride, 2, "stride", fn, minimum=1)
        self.dh, self.dw = int_tuple(dilation, 2, "dilation", fn, minimum=1)
        (self.pt, self.pb), (self.pl, self.pr) = parse_padding(
            padding, (self.H, self.W), kernel_size, (self.sh, self.sw), (self.dh, self.dw), fn)
        span_h = self.dh * (self.kh - 1) + 1
        span_w = self.dw * (self.kw - 1) + 1
        check_index_range(fn, max(self.C, self.K),
                          self.H + self.pt + self.pb + span_h + self.sh,
                          self.W + self.pl + self.pr + span_w + self.sw, limit=limit)
        self.Ho = (self.H + self.pt + self.pb - span_h) // self.sh + 1
        self.Wo = (self.W + self.pl + self.pr - span_w) // self.sw + 1
        if ndim == 1 and self.Wo < 1:
            raise ValueError(
                f"{fn}: kernel (dilated extent {span_w}) is larger than the padded input "
                f"({self.W + self.pl + self.pr}); output width would be {self.Wo}")
        if self.Ho < 1 or self.Wo < 1:
            raise ValueError(
                f"{fn}: kernel (dilated extent {span_h}x{span_w}) is larger than the padded "
                f"input ({self.H + self.pt + self.pb}x{self.W + self.pl + self.pr}); "
                f"output would be {self.Ho}x{self.Wo}")
        check_result_size(fn, "the output", (self.N, max(self.K, 1), self.Ho, self.Wo))

        # Fixed from here on: a cached geometry serves every later call of this shape.
        self.out_shape = image_shape(self.nhwc, self.N, self.K, self.Ho, self.Wo)
        self.x_shape = image_shape(self.nhwc, self.N, self.C, self.H, self.W)
        # Multiply-adds of the convolution (the cost model's "conv" unit).
        self.macs = (self.N * self.K * self.Ho * self.Wo * (self.C // max(self.groups, 1))
                     * self.kh * self.kw)
        self.kernel_args = (self.N, self.C, self.H, self.W, self.K, self.kh, self.kw, self.sh,
                            self.sw, self.dh, self.dw, self.pt, self.pl, self.Ho, self.Wo,
                            self.groups)

    @functools.cached_property
    def split_is_cheap(self):
        """Whether the padded, phase-split image (what the implicit-im2col kernels read)
        stays within a small multiple of x plus the patches the output reads. A stride
        or padding far larger than the image (stride 10**5 on an 8x8 image) would make
        it as large as the arguments, not the work: those problems take the packed
        im2col tiles instead, which read x in place and allocate one tile per thread."""
        sh, sw = self.sh, self.sw
        split = (-(-(self.H + self.pt + self.pb) // sh) * sh
                 * -(-(self.W + self.pl + self.pr) // sw) * sw)
        return split <= 4 * self.H * self.W + self.kh * self.kw * self.Ho * self.Wo


def parse_padding_1d(padding, fn):
    """1-D padding in the 2-D form the conv2d machinery takes (H gets none)."""
    if isinstance(padding, str):
        return padding
    if is_int(padding):
        p = as_int(padding, "padding", fn, minimum=0)
        return ((0, 0), (p, p))
    items = as_items(padding, "padding", fn, "an int, (left, right), 'valid' or 'same'")
    if len(items) == 1:
        items = items[0]
        if is_int(items):
            p = as_int(items, "padding", fn, minimum=0)
            return ((0, 0), (p, p))
    return ((0, 0), int_tuple(items, 2, "padding", fn, minimum=0))
