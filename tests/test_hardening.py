"""Hostile and careless inputs: failed allocations, uninitialised outputs, byte order,
editable objects, geometry sized by the arguments, unnamed errors, size-0 paths.

Each test here covers one class of failure (see the section comments); the generic
checks over the whole API are in test_contract.py.
"""
import subprocess
import sys

from unittest import mock

import numpy as np
import pytest
from hypothesis import given

import fastnn
import fastnn._geometry
import reference as ref
from helpers import HERE, PROPERTY, assert_close
from test_conv import geo_kwargs, geometries, make_conv_inputs


# ------------------------------------------------------------ failed allocations
# Each case runs in a fresh interpreter whose address space is capped just above
# what it already uses (inputs built, thread pool started), so the kernel's scratch
# allocation fails: the call must raise a MemoryError naming the function, never
# return a result with skipped (zero) blocks.
_LIMITED = r"""
import resource, sys
sys.path.insert(0, {here!r})
import numpy as np
import fastnn

# Start the thread pool (its stacks) before the cap.
fastnn.conv2d(np.ones((4, 8, 32, 32), np.float32), np.ones((8, 8, 3, 3), np.float32))

{setup}


def vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024


soft, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + {margin}, hard))
try:
    result = {call}
except MemoryError as exc:
    print("MemoryError:", exc)
else:
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    arrays = result if isinstance(result, tuple) else (result,)
    print("returned:", [float(np.abs(a).max()) if a is not None and a.size else None
                        for a in arrays])
"""

MiB = 1 << 20

_MEMORY_CASES = {
    # The diagonal kernel: per-thread scratch of nd x 256 values (512 MiB here).
    "banded_matmul-diag": (
        "N = 2_000_000\n"
        "x = np.ones((1, N), np.float32)\n"
        "w = np.broadcast_to(np.float32(1), (N, N))",
        "fastnn.banded_matmul(x, w, N // 8, N // 8)", "banded_matmul"),
    # GEMM tiles (batch >= 8, wide band): a (rows x 256) tile of w per thread.
    "banded_matmul-tiled": (
        "N = 1_000_000\n"
        "x = np.ones((8, N), np.float32)\n"
        "w = np.broadcast_to(np.float32(1), (N, N))",
        "fastnn.banded_matmul(x, w, N // 4, N // 4)", "banded_matmul"),
    # Backward: grad_x through the transposed band, then grad_w by diagonals.
    "banded_matmul_backward": (
        "N = 2_000_000\n"
        "x = np.ones((1, 1), np.float32)\n"
        "w = np.broadcast_to(np.float32(1), (1, N))\n"
        "gy = np.ones((1, N), np.float32)",
        "fastnn.banded_matmul_backward(gy, x, w, 0, N // 4)", "banded_matmul_backward"),
    # The register-blocked kernel's scratch grows with the taps (32 values each).
    "conv2d": (
        "K = 4_000_000\n"
        "x = np.ones((1, 1, 1, K), np.float32)\n"
        "w = np.ones((1, 1, 1, K), np.float32)",
        "fastnn.conv2d(x, w)", "conv2d"),
    "conv2d_backward": (
        "K = 4_000_000\n"
        "x = np.ones((1, 1, 1, K), np.float32)\n"
        "w = np.ones((1, 1, 1, K), np.float32)\n"
        "gy = np.ones((1, 1, 1, 1), np.float32)",
        "fastnn.conv2d_backward(gy, x, w)", "conv2d_backward"),
    "conv1d": (
        "K = 4_000_000\n"
        "x = np.ones((1, 1, K), np.float32)\n"
        "w = np.ones((1, 1, K), np.float32)",
        "fastnn.conv1d(x, w)", "conv1d"),
    # The table of the patch taps' offsets in the image (8 bytes a tap: 64 MiB here).
    "locally_connected2d": (
        "C = 8_000_000\n"
        "x = np.ones((1, 1, 1, C), np.float32)\n"
        "w = np.ones((1, 1, C, 1), np.float32)",
        "fastnn.locally_connected2d(x, w, kernel_size=1)", "locally_connected2d"),
    # A scratch row of the output width per thread, allocated after grad_x.
    "avg_pool2d_backward": (
        "W = 32_000_000\n"
        "x = np.ones((1, 1, 1, W), np.float32)\n"
        "gy = np.ones((1, 1, 1, W), np.float32)",
        "fastnn.avg_pool2d_backward(gy, x, 1)", "avg_pool2d_backward"),
    # The gate pre-activations (B x 4H), allocated after the outputs.
    "lstm_cell": (
        "B, H = 4_000_000, 4\n"
        "x = np.ones((B, 0), np.float32)\n"
        "h = np.ones((B, H), np.float32)\n"
        "c = np.ones((B, H), np.float32)\n"
        "k = np.ones((H, 4 * H), np.float32)\n"
        "b = np.ones(4 * H, np.float32)",
        "fastnn.lstm_cell(x, h, c, k, b)", "lstm_cell"),
}


@pytest.mark.parametrize("case", sorted(_MEMORY_CASES))
def test_failed_allocation_raises_named_memory_error(case):
    setup, call, fn = _MEMORY_CASES[case]
    margin = {"lstm_cell": 200 * MiB, "avg_pool2d_backward": 192 * MiB,
              "locally_connected2d": 32 * MiB}.get(case, 128 * MiB)
    script = _LIMITED.format(here=HERE, setup=setup, call=call, margin=margin)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.strip().splitlines()[-1]
    assert out.startswith("MemoryError:"), f"{case}: no MemoryError under the cap: {out}"
    assert out.startswith(f"MemoryError: {fn}:"), f"{case}: error does not name {fn}: {out}"


# ------------------------------------------------------------ uninitialised outputs
def _dirty_heap(nbytes):
    """Free blocks full of NaN of about this size, so that a result np.empty leaves
    unwritten shows NaN instead of whatever zeros a fresh page holds."""
    for n in {max(nbytes // 8, 1), 64, 512, 4096}:
        a = np.full(n, np.nan)
        del a


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_transpose2d_without_input_channels_is_bias(layout, stride, with_bias, dtype):
    nhwc = layout == "NHWC"
    x = np.ones((2, 4, 4, 0) if nhwc else (2, 0, 4, 4), dtype)
    w = np.ones((3, 3, 5, 0) if nhwc else (0, 5, 3, 3), dtype)
    bias = np.arange(1, 6, dtype=dtype) if with_bias else None
    for _ in range(3):
        _dirty_heap(2 * 5 * 12 * 12 * np.dtype(dtype).itemsize)
        y = fastnn.conv_transpose2d(x, w, bias, stride=stride, layout=layout)
        want = np.zeros(y.shape, dtype)
        if with_bias:
            want += bias if nhwc else bias[:, None, None]
        np.testing.assert_array_equal(y, want)


# ------------------------------------------------------------ byte order
def _swapped(a):
    """The same values in the other byte order."""
    return a.astype(a.dtype.newbyteorder("S"))


def _lstm_cell_args(dtype, B=3, I=2, H=4):
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s).astype(dtype)
            for s in ((B, I), (B, H), (B, H), (I + H, 4 * H), (4 * H,))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("which", ["all", "x", "h", "c", "kernel", "bias"])
def test_lstm_cell_byte_swapped_inputs_are_converted(dtype, which):
    args = _lstm_cell_args(dtype)
    want = fastnn.lstm_cell(*args)
    names = ["x", "h", "c", "kernel", "bias"]
    swapped = [_swapped(a) if which in ("all", n) else a for a, n in zip(args, names)]
    got = fastnn.lstm_cell(*swapped)
    for g, w in zip(got, want):
        assert g.dtype == np.dtype(dtype) and g.dtype.isnative
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_cell_in_place_on_byte_swapped_state(dtype):
    x, h, c, kernel, bias = _lstm_cell_args(dtype)
    want_h, want_c = fastnn.lstm_cell(x, h, c, kernel, bias)
    hs, cs = _swapped(h), _swapped(c)
    got_h, got_c = fastnn.lstm_cell(_swapped(x), hs, cs, _swapped(kernel), _swapped(bias),
                                    out_h=hs, out_c=cs)
    assert got_h is hs and got_c is cs
    np.testing.assert_array_equal(hs, want_h)
    np.testing.assert_array_equal(cs, want_c)


def test_byte_swapped_out_buffer_is_written_correctly():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    want = fastnn.conv2d(x, w)
    out = np.zeros(want.shape, np.dtype(np.float32).newbyteorder("S"))
    assert fastnn.conv2d(_swapped(x), _swapped(w), out=out) is out
    np.testing.assert_array_equal(out, want)


# ------------------------------------------------------------ objects a user can edit
def _caches():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, 3))
    return {
        "lstm": (fastnn.lstm(x, None, None, rng.standard_normal((7, 16)), np.zeros(16),
                             training=True)[-1],
                 lambda c: fastnn.lstm_backward(None, np.ones((2, 4)), None, c)),
        "gru": (fastnn.gru(x, None, rng.standard_normal((3, 12)), rng.standard_normal((4, 12)),
                           np.zeros((2, 12)), training=True)[-1],
                lambda c: fastnn.gru_backward(None, np.ones((2, 4)), c)),
        "gru-reset-before": (fastnn.gru(x, None, rng.standard_normal((3, 12)),
                                        rng.standard_normal((4, 12)), np.zeros(12),
                                        reset_after=False, training=True)[-1],
                             lambda c: fastnn.gru_backward(None, np.ones((2, 4)), c)),
        "simple_rnn": (fastnn.simple_rnn(x, None, rng.standard_normal((3, 4)),
                                         rng.standard_normal((4, 4)), np.zeros(4),
                                         training=True)[-1],
                       lambda c: fastnn.simple_rnn_backward(None, np.ones((2, 4)), c)),
    }


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru-reset-before", "simple_rnn"])
def test_recurrent_cache_fields_cannot_be_set(kind):
    cache, backward = _caches()[kind]
    want = backward(cache)
    for name in fastnn.RecurrentCache.__slots__:
        with pytest.raises(AttributeError, match="read-only"):
            setattr(cache, name, getattr(cache, name))
        with pytest.raises(AttributeError, match="read-only"):
            delattr(cache, name)
    import pickle
    again = backward(pickle.loads(pickle.dumps(cache)))
    for a, b in zip(want, again):
        np.testing.assert_array_equal(a, b)


# Edits that get past the read-only fields (object.__setattr__, an array reshaped in
# place, a cache built by hand) must be refused before a kernel reads out of bounds.
# In a subprocess: without the checks these crash the interpreter.
_CACHE_EDITS = r"""
import sys
sys.path.insert(0, {here!r})
import numpy as np
import fastnn
from test_hardening import _caches

kind, edit = sys.argv[1], sys.argv[2]
cache, backward = _caches()[kind]
if edit == "T":
    object.__setattr__(cache, "T", 10_000)
elif edit == "B":
    object.__setattr__(cache, "B", 10_000)
elif edit == "H":
    object.__setattr__(cache, "H", 1_000)
elif edit == "hs-reshaped":
    cache.hs.shape = (cache.hs.shape[0] // 2, 2 * cache.hs.shape[1])
elif edit == "hs-replaced":
    object.__setattr__(cache, "hs", np.zeros((2, 4)))
elif edit == "by-hand":
    fields = {{name: getattr(cache, name) for name in fastnn.RecurrentCache.__slots__}}
    fields["T"] = 50_000
    cache = fastnn.RecurrentCache(**fields)
try:
    backward(cache)
except ValueError as exc:
    print("ValueError:", exc)
else:
    print("accepted")
"""


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru-reset-before", "simple_rnn"])
@pytest.mark.parametrize("edit", ["T", "B", "H", "hs-reshaped", "hs-replaced", "by-hand"])
def test_recurrent_cache_edited_behind_its_back_is_refused(kind, edit):
    proc = subprocess.run([sys.executable, "-c", _CACHE_EDITS.format(here=HERE), kind, edit],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"crashed ({proc.returncode}): {proc.stderr[-2000:]}"
    fn = {"gru-reset-before": "gru"}.get(kind, kind)
    assert proc.stdout.startswith(f"ValueError: {fn}_backward: cache"), proc.stdout


def _sparse_mask():
    rng = np.random.default_rng(9)
    mask = rng.random((60, 50)) < 0.04
    return mask, fastnn.prepare_mask(mask)


def test_prepared_mask_is_immutable():
    mask, m = _sparse_mask()
    assert not m.dense
    for name in ("bytes", "shape", "nnz", "dense", "row_ptr", "row_cols", "col_ptr",
                 "col_rows", "csr_to_csc"):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(m, name, getattr(m, name))
    for name in ("bytes", "row_ptr", "row_cols", "col_ptr", "col_rows", "csr_to_csc"):
        a = getattr(m, name)
        with pytest.raises(ValueError):
            a.flat[0] = 10 ** 9
        with pytest.raises(ValueError):
            a.flags.writeable = True
    import pickle
    x = np.random.default_rng(1).standard_normal((3, 60))
    w = np.random.default_rng(2).standard_normal((60, 50))
    np.testing.assert_array_equal(fastnn.masked_matmul(x, w, pickle.loads(pickle.dumps(m))),
                                  fastnn.masked_matmul(x, w, m))


_MASK_EDITS = r"""
import sys
sys.path.insert(0, {here!r})
import numpy as np
import fastnn
from test_hardening import _sparse_mask

edit, call = sys.argv[1], sys.argv[2]
mask, m = _sparse_mask()
if edit == "col_rows-values":
    bad = np.full(m.nnz, 10 ** 9, dtype=np.int64)
    object.__setattr__(m, "col_rows", bad)
elif edit == "col_ptr-values":
    bad = np.array(m.col_ptr)
    bad[-1] = 10 ** 9
    object.__setattr__(m, "col_ptr", bad)
elif edit == "row_cols-reshaped":
    m.row_cols.shape = (1, m.nnz)
elif edit == "shape":
    object.__setattr__(m, "shape", (600, 500))
elif edit == "bytes":
    object.__setattr__(m, "bytes", np.ones((2, 2), np.uint8))
x = np.ones((3, 60))
w = np.ones((60, 50)) if edit != "shape" else np.ones((600, 500))
if edit == "shape":
    x = np.ones((3, 600))
try:
    if call == "forward":
        fastnn.masked_matmul(x, w, m)
    else:
        fastnn.masked_matmul_backward(np.ones((3, w.shape[1])), x, w, m)
except ValueError as exc:
    print("ValueError:", exc)
else:
    print("accepted")
"""


@pytest.mark.parametrize("call", ["forward", "backward"])
@pytest.mark.parametrize("edit", ["col_rows-values", "col_ptr-values", "row_cols-reshaped",
                                  "shape", "bytes"])
def test_prepared_mask_edited_behind_its_back_is_refused(edit, call):
    proc = subprocess.run([sys.executable, "-c", _MASK_EDITS.format(here=HERE), edit, call],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"crashed ({proc.returncode}): {proc.stderr[-2000:]}"
    fn = "masked_matmul" if call == "forward" else "masked_matmul_backward"
    assert proc.stdout.startswith(f"ValueError: {fn}: mask"), proc.stdout


# ------------------------------------------------------------ geometry sized by the arguments
# Huge stride, padding or dilation with a small output: the kernels must allocate by
# what the output reads. Each case runs capped at 256 MiB above the interpreter's
# footprint (the padded image these geometries describe is GiB to TiB) and must agree
# with the small problem it is equivalent to: with stride 10**5 only the first window
# exists; with dilation = padding = 10**6 only the centre tap of a 3x3 kernel lands
# in the image.
_HUGE_GEOMETRY = r"""
import resource, sys
sys.path.insert(0, {here!r})
import numpy as np
import fastnn
import reference as ref
from helpers import assert_close

fastnn.conv2d(np.ones((4, 8, 32, 32), np.float32), np.ones((8, 8, 3, 3), np.float32))
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
with open("/proc/self/status") as f:
    vm = [int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:")][0]
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), hard))

case, layout = sys.argv[1], sys.argv[2]
dt = np.float64
rng = np.random.default_rng(11)
nhwc = layout == "NHWC"
x = rng.standard_normal((2, 3, 8, 8))
w = rng.standard_normal((4, 3, 3, 3))
gy_small = None


def lay(a):      # an NCHW image in the layout under test
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if nhwc else a


def lay_w(a):    # an OIHW kernel in the layout under test
    return np.ascontiguousarray(a.transpose(2, 3, 1, 0)) if nhwc else a


def crop(a, h, w_):
    return a[:, :h, :w_, :] if nhwc else a[:, :, :h, :w_]


if case == "conv2d-stride":
    got = fastnn.conv2d(lay(x), lay_w(w), stride=10 ** 5, layout=layout)
    want = ref.conv2d(crop(lay(x), 3, 3), lay_w(w), layout=layout)
    assert_close(got, want, dt, case)
    gy = rng.standard_normal(got.shape)
    gx, gw, gb = fastnn.conv2d_backward(gy, lay(x), lay_w(w), stride=10 ** 5, layout=layout)
    rx, rw, rb = ref.conv2d_backward(gy, crop(lay(x), 3, 3), lay_w(w), layout=layout)
    assert_close(crop(gx, 3, 3), rx, dt, "grad_x")
    gx_rest = gx.copy()
    crop(gx_rest, 3, 3)[...] = 0
    assert not gx_rest.any()
    assert_close(gw, rw, dt, "grad_w")
    assert_close(gb, rb, dt, "grad_b")
elif case == "conv2d-padding-stride":
    # Windows start at -10**12, 0 and 10**12: only the middle one reads x.
    got = fastnn.conv2d(lay(x), lay_w(w), padding=10 ** 12, stride=10 ** 12, layout=layout)
    want = np.zeros(got.shape)
    crop(want, 2, 2)[...] = 0
    mid = ref.conv2d(crop(lay(x), 3, 3), lay_w(w), layout=layout)
    if nhwc:
        want[:, 1:2, 1:2, :] = mid
    else:
        want[:, :, 1:2, 1:2] = mid
    assert got.shape == want.shape and not (got - want)[want == 0].any()
    assert_close(got, want, dt, case)
elif case == "conv2d-dilation-padding":
    centre = w[:, :, 1:2, 1:2]
    got = fastnn.conv2d(lay(x), lay_w(w), dilation=10 ** 6, padding=10 ** 6, layout=layout)
    assert_close(got, ref.conv2d(lay(x), lay_w(centre), layout=layout), dt, case)
    gy = rng.standard_normal(got.shape)
    gx, gw, gb = fastnn.conv2d_backward(gy, lay(x), lay_w(w), dilation=10 ** 6,
                                        padding=10 ** 6, layout=layout)
    rx, rw, rb = ref.conv2d_backward(gy, lay(x), lay_w(centre), layout=layout)
    assert_close(gx, rx, dt, "grad_x")
    full = np.zeros_like(w)
    full[:, :, 1:2, 1:2] = rw if not nhwc else rw.transpose(3, 2, 0, 1)
    assert_close(gw, lay_w(full), dt, "grad_w")
elif case == "conv1d-stride":
    x1, w1 = x[:, :, 0], w[:, :, 0]
    if nhwc:
        x1, w1 = np.ascontiguousarray(x1.transpose(0, 2, 1)), np.ascontiguousarray(w1.transpose(2, 1, 0))
    l1 = "NWC" if nhwc else "NCW"
    got = fastnn.conv1d(x1, w1, stride=10 ** 9, layout=l1)
    want = ref.conv1d(x1[:, :3] if nhwc else x1[:, :, :3], w1, padding=(0, 0), layout=l1)
    assert_close(got, want, dt, case)
    gy = rng.standard_normal(got.shape)
    gx, gw, gb = fastnn.conv1d_backward(gy, x1, w1, stride=10 ** 9, layout=l1)
    rx, rw, rb = ref.conv1d_backward(gy, x1[:, :3] if nhwc else x1[:, :, :3], w1,
                                     padding=(0, 0), layout=l1)
    assert_close(gw, rw, dt, "grad_w")
    assert_close(gx[:, :3] if nhwc else gx[:, :, :3], rx, dt, "grad_x")
elif case == "conv_transpose2d-stride":
    x1 = rng.standard_normal((2, 4, 1, 1))
    wt = rng.standard_normal((4, 3, 3, 3))
    wt_l = np.ascontiguousarray(wt.transpose(2, 3, 1, 0)) if nhwc else wt
    # A 1x1 input: the stride never separates two pixels.
    got = fastnn.conv_transpose2d(lay(x1), wt_l, stride=10 ** 5, layout=layout)
    assert_close(got, ref.conv_transpose2d(lay(x1), wt_l, layout=layout), dt, case)
    gy = rng.standard_normal(got.shape)
    for a, b, what in zip(fastnn.conv_transpose2d_backward(gy, lay(x1), wt_l, stride=10 ** 5,
                                                           layout=layout),
                          ref.conv_transpose2d_backward(gy, lay(x1), wt_l, layout=layout),
                          ("grad_x", "grad_w", "grad_b")):
        assert_close(a, b, dt, what)
elif case == "im2col":
    cols = fastnn.im2col(lay(x), 3, dilation=10 ** 6, padding=10 ** 6, layout=layout)
    want = ref.im2col(lay(x), 1, layout=layout)
    if nhwc:
        assert cols.shape == (2, 64, 27)
        np.testing.assert_array_equal(cols.reshape(2, 64, 9, 3)[:, :, 4], want)
        assert not np.delete(cols.reshape(2, 64, 9, 3), 4, axis=2).any()
    else:
        assert cols.shape == (2, 27, 64)
        np.testing.assert_array_equal(cols.reshape(2, 3, 9, 64)[:, :, 4], want.reshape(2, 3, 64))
        assert not np.delete(cols.reshape(2, 3, 9, 64), 4, axis=2).any()
elif case == "max_pool2d":
    got = fastnn.max_pool2d(lay(x), 2, stride=10 ** 9, layout=layout)
    want = crop(lay(x), 2, 2).max(axis=(1, 2) if nhwc else (2, 3), keepdims=True)
    np.testing.assert_array_equal(got, want)
print("ok")
"""


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", ["conv2d-stride", "conv2d-padding-stride",
                                  "conv2d-dilation-padding", "conv1d-stride",
                                  "conv_transpose2d-stride", "im2col", "max_pool2d"])
def test_huge_geometry_allocates_by_the_output(case, layout):
    proc = subprocess.run([sys.executable, "-c", _HUGE_GEOMETRY.format(here=HERE), case, layout],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), \
        proc.stdout[-2000:] + proc.stderr[-3000:]


@PROPERTY
@given(geometries(min_batch=0))
def test_packed_tile_path_matches_reference(g):
    """The path those geometries take (packed im2col tiles reading x in place), forced
    on ordinary ones: forward and both gradients against the float64 reference."""
    x, w, b = make_conv_inputs(g["seed"], g["layout"], g["dtype"], g["N"], g["C"], g["H"],
                               g["W"], g["K"], g["G"], g["kh"], g["kw"])
    kw = dict(groups=g["G"], **geo_kwargs(g))
    with mock.patch.object(fastnn._geometry.Geometry, "split_is_cheap", property(lambda s: False)):
        y = fastnn.conv2d(x, w, b, **kw)
        gy = np.random.default_rng(g["seed"] + 1).standard_normal(y.shape).astype(g["dtype"])
        grads = fastnn.conv2d_backward(gy, x, w, **kw)
    assert_close(y, ref.conv2d(x, w, b, **kw), g["dtype"], "conv2d",
                 ref.conv2d(abs(x), abs(w), abs(b), **kw))
    want = ref.conv2d_backward(gy, x, w, **kw)
    scale = ref.conv2d_backward(abs(gy), abs(x), abs(w), **kw)
    for got, r, a, what in zip(grads, want, scale, ("grad_x", "grad_w", "grad_b")):
        assert_close(got, r, g["dtype"], what, a)


_X = np.ones((1, 3, 8, 8))
_W = np.ones((4, 3, 3, 3))
_OVERFLOW = {
    "im2col-2**62": (fastnn.im2col, (_X, 3), dict(padding=2 ** 62, dilation=2 ** 62)),
    "conv2d-stride=2**70": (fastnn.conv2d, (_X, _W), dict(stride=2 ** 70)),
    "conv2d-dilation=2**62": (fastnn.conv2d, (_X, _W), dict(dilation=2 ** 62, padding=2 ** 62)),
    "conv2d_backward": (fastnn.conv2d_backward, (np.ones((1, 4, 3, 3)), _X, _W),
                        dict(padding=2 ** 62, stride=2 ** 62)),
    "conv_transpose2d-output": (fastnn.conv_transpose2d, (np.ones((1, 4, 2, 2)), _W),
                                dict(stride=2 ** 40)),
    "conv1d": (fastnn.conv1d, (_X[:, :, 0], _W[:, :, 0]), dict(dilation=2 ** 62, padding=2 ** 62)),
    "conv_transpose2d": (fastnn.conv_transpose2d, (np.ones((1, 4, 2, 2)), _W),
                         dict(stride=2 ** 62)),
    "col2im-x_shape": (fastnn.col2im, (np.ones((1, 27, 1)), (2 ** 20, 2 ** 20, 2 ** 20, 3), 3),
                       dict(stride=2 ** 20)),
    "im2col-cols": (fastnn.im2col, (_X, 3), dict(padding=2 ** 30)),
    "col2im": (fastnn.col2im, (np.ones((1, 27, 1)), (1, 3, 8, 8), 3),
               dict(padding=2 ** 62, stride=2 ** 63)),
    "max_pool2d": (fastnn.max_pool2d, (_X, 3), dict(stride=2 ** 62)),
    "avg_pool1d": (fastnn.avg_pool1d, (_X[:, :, 0], 3), dict(stride=2 ** 63)),
    "locally_connected2d": (fastnn.locally_connected2d, (np.ones((1, 8, 8, 3)), np.ones((1, 1, 27, 2))),
                            dict(kernel_size=3, stride=2 ** 62)),
}


@pytest.mark.parametrize("case", sorted(_OVERFLOW))
def test_geometry_overflowing_int64_is_refused(case):
    fn, args, kwargs = _OVERFLOW[case]
    with pytest.raises(ValueError, match=rf"^{fn.__name__}: .*too large"):
        fn(*args, **kwargs)


# ------------------------------------------------------------ unnamed errors
def _lstm_args():
    rng = np.random.default_rng(4)
    return (rng.standard_normal((2, 3, 2)), None, None, rng.standard_normal((6, 16)),
            np.zeros(16))


_R = np.random.default_rng(8)
_G = np.ones((2, 3))
_HUGE_REALS = [
    ("relu_backward", lambda v: fastnn.relu_backward(_G, _R.standard_normal((2, 3)), at_zero=v),
     "at_zero"),
    ("leaky_relu", lambda v: fastnn.leaky_relu(_G, negative_slope=v), "negative_slope"),
    ("leaky_relu_backward", lambda v: fastnn.leaky_relu_backward(_G, _G, negative_slope=v),
     "negative_slope"),
    ("lstm", lambda v: fastnn.lstm(*_lstm_args(), forget_bias=v), "forget_bias"),
    ("lstm_cell", lambda v: fastnn.lstm_cell(np.ones((2, 2)), np.ones((2, 4)), np.ones((2, 4)),
                                             np.ones((6, 16)), np.ones(16), forget_bias=v),
     "forget_bias"),
    ("lstm_cell_backward", lambda v: fastnn.lstm_cell_backward(
        None, None, np.ones((2, 2)), np.ones((2, 4)), np.ones((2, 4)), np.ones((6, 16)),
        np.ones(16), forget_bias=v), "forget_bias"),
    ("softmax_cross_entropy", lambda v: fastnn.softmax_cross_entropy(
        np.ones((2, 3)), np.array([0, 1]), label_smoothing=v), "label_smoothing"),
    ("softmax_cross_entropy_backward", lambda v: fastnn.softmax_cross_entropy_backward(
        v, np.ones((2, 3)), np.array([0, 1])), "grad_loss"),
]


@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400)])
@pytest.mark.parametrize("fn, call, name", _HUGE_REALS, ids=[c[0] for c in _HUGE_REALS])
def test_int_too_large_for_a_float_names_the_argument(fn, call, name, value):
    with pytest.raises((OverflowError, ValueError), match=rf"^{fn}: {name}\b"):
        call(value)


def _flag_calls():
    x4, w4 = np.ones((1, 2, 5, 5)), np.ones((3, 2, 2, 2))
    gy4 = np.ones((1, 3, 4, 4))
    x3, w3, gy3 = np.ones((1, 2, 5)), np.ones((3, 2, 2)), np.ones((1, 3, 4))
    xt, wt, gyt = np.ones((1, 3, 4, 4)), np.ones((3, 2, 2, 2)), np.ones((1, 2, 5, 5))
    xb, wb, gyb = np.ones((2, 4)), np.ones((4, 4)), np.ones((2, 4))
    xl, wl, gyl = np.ones((1, 4, 4, 2)), np.ones((3, 3, 8, 2)), np.ones((1, 3, 3, 2))
    xs = np.ones((2, 3, 2))
    gru_w = (np.ones((2, 12)), np.ones((4, 12)), np.ones((2, 12)))
    rnn_w = (np.ones((2, 4)), np.ones((4, 4)), np.ones(4))
    return [
        ("conv2d_backward", lambda **k: fastnn.conv2d_backward(gy4, x4, w4, **k),
         ("bias", "need_input_grad", "need_weight_grad")),
        ("conv1d_backward", lambda **k: fastnn.conv1d_backward(gy3, x3, w3, **k),
         ("bias", "need_input_grad", "need_weight_grad")),
        ("conv_transpose2d_backward", lambda **k: fastnn.conv_transpose2d_backward(
            gyt, xt, wt, **k), ("bias", "need_input_grad", "need_weight_grad")),
        ("banded_matmul_backward", lambda **k: fastnn.banded_matmul_backward(
            gyb, xb, wb, 1, 1, **k), ("bias",)),
        ("masked_matmul_backward", lambda **k: fastnn.masked_matmul_backward(
            gyb, xb, wb, np.eye(4), **k), ("bias",)),
        ("locally_connected2d_backward", lambda **k: fastnn.locally_connected2d_backward(
            gyl, xl, wl, kernel_size=2, **k), ("bias",)),
        ("locally_connected1d_backward", lambda **k: fastnn.locally_connected1d_backward(
            np.ones((1, 3, 2)), np.ones((1, 4, 2)), np.ones((3, 4, 2)), kernel_size=2, **k),
         ("bias",)),
        ("lstm", lambda **k: fastnn.lstm(*_lstm_args(), **k),
         ("time_major", "return_state", "training")),
        ("gru", lambda **k: fastnn.gru(xs, None, *gru_w, **k),
         ("reset_after", "time_major", "return_state", "training")),
        ("gru_cell", lambda **k: fastnn.gru_cell(xs[:, 0], np.ones((2, 4)), *gru_w, **k),
         ("reset_after",)),
        ("gru_cell_backward", lambda **k: fastnn.gru_cell_backward(
            np.ones((2, 4)), xs[:, 0], np.ones((2, 4)), *gru_w, **k), ("reset_after",)),
        ("simple_rnn", lambda **k: fastnn.simple_rnn(xs, None, *rnn_w, **k),
         ("time_major", "training")),
        ("max_pool2d", lambda **k: fastnn.max_pool2d(x4, 2, **k), ("return_indices", "ceil_mode")),
        ("avg_pool2d", lambda **k: fastnn.avg_pool2d(x4, 2, **k),
         ("ceil_mode", "count_include_pad")),
        ("max_pool1d", lambda **k: fastnn.max_pool1d(x3, 2, **k), ("return_indices", "ceil_mode")),
        ("avg_pool1d", lambda **k: fastnn.avg_pool1d(x3, 2, **k),
         ("ceil_mode", "count_include_pad")),
    ]


_FLAG_CASES = [(fn, call, flag) for fn, call, flags in _flag_calls() for flag in flags]


@pytest.mark.parametrize("value", ["no", "yes", 0, 1, None, 1.0, np.array(True)], ids=repr)
@pytest.mark.parametrize("fn, call, flag", _FLAG_CASES, ids=[f"{c[0]}-{c[2]}" for c in _FLAG_CASES])
def test_flags_must_be_bools(fn, call, flag, value):
    with pytest.raises(TypeError, match=rf"^{fn}: {flag} must be a bool"):
        call(**{flag: value})
    if flag != "reset_after":       # (its bias shape depends on it)
        call(**{flag: np.True_})
        call(**{flag: False})


# ------------------------------------------------------------ size-0 paths
# A kernel must not take the address of element 0 of an empty operand (the debug
# build's bounds checks raise IndexError there, and the release build reads past an
# allocation). These run in every build; .ci/sanitize runs them with FASTNN_DEBUG=1.
def _sequence(kind, x, h0, kernel, weights, reset_after):
    if kind == "lstm":
        return fastnn.lstm(x, h0, None, kernel, *weights, training=True)
    if kind == "gru":
        return fastnn.gru(x, h0, kernel, *weights, reset_after=reset_after, training=True)
    return fastnn.simple_rnn(x, h0, kernel, *weights, activation=kind[4:], training=True)


def _sequence_backward(kind, out, cache):
    g = np.ones_like(out)
    if kind == "lstm":
        return fastnn.lstm_backward(g, np.ones((2, 4)), None, cache)
    if kind == "gru":
        return fastnn.gru_backward(g, np.ones((2, 4)), cache)
    return fastnn.simple_rnn_backward(g, np.ones((2, 4)), cache)


@pytest.mark.parametrize("kind, reset_after", [("lstm", True), ("gru", True), ("gru", False),
                                               ("rnn-tanh", True), ("rnn-relu", True)])
def test_sequences_without_input_features(kind, reset_after):
    """I = 0 (an empty (0, 3H) kernel for gru) is the problem with one input feature
    that is always zero: the same outputs and state and weight gradients."""
    rng = np.random.default_rng(2)
    H = 4
    h0 = rng.standard_normal((2, H))
    G = {"lstm": 4, "gru": 3}.get(kind, 1) * H
    if kind == "lstm":      # kernel (I + H, 4H): the rows of x, then those of h
        rec = rng.standard_normal((H, G))
        weights = (rng.standard_normal(G),)
        k0, k1 = rec, np.vstack([rng.standard_normal((1, G)), rec])
    else:
        weights = (rng.standard_normal((H, G)),
                   rng.standard_normal((2, G) if kind == "gru" and reset_after else G))
        k0, k1 = np.zeros((0, G)), rng.standard_normal((1, G))
    empty = _sequence(kind, np.zeros((2, 3, 0)), h0, k0, weights, reset_after)
    one = _sequence(kind, np.zeros((2, 3, 1)), h0, k1, weights, reset_after)
    np.testing.assert_allclose(empty[0], one[0], rtol=1e-12, atol=1e-12)
    g_empty = _sequence_backward(kind, empty[0], empty[-1])
    g_one = _sequence_backward(kind, one[0], one[-1])
    assert g_empty[0].shape == (2, 3, 0)
    for a, b in zip(g_empty[1:], g_one[1:]):
        if kind == "lstm" and a.shape == (H, G):       # grad_kernel without its x row
            b = b[1:]
        elif a.shape != b.shape:                       # grad_kernel (0, G) vs (1, G)
            assert a.shape == (0,) + b.shape[1:]
            continue
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("stride", [1, 2])
def test_convolutions_without_input_channels(layout, stride):
    nhwc = layout == "NHWC"
    x = np.ones((2, 5, 5, 0) if nhwc else (2, 0, 5, 5))
    w = np.ones((2, 2, 0, 3) if nhwc else (3, 0, 2, 2))
    bias = np.array([1.0, -2.0, 3.0])
    y = fastnn.conv2d(x, w, bias, stride=stride, layout=layout)
    np.testing.assert_array_equal(y, np.broadcast_to(bias if nhwc else bias[:, None, None],
                                                     y.shape))
    gx, gw, gb = fastnn.conv2d_backward(np.ones(y.shape), x, w, stride=stride, layout=layout)
    assert gx.shape == x.shape and gw.shape == w.shape
    np.testing.assert_array_equal(gb, np.full(3, y[0].size // 3 * 2))
    y1 = fastnn.conv1d(x[:, 0] if nhwc else x[:, :, 0], w[0] if nhwc else w[:, :, 0], bias,
                       stride=stride, layout="NWC" if nhwc else "NCW")
    np.testing.assert_array_equal(y1, np.broadcast_to(bias if nhwc else bias[:, None], y1.shape))
