"""Tests of the Winograd F(4x4, 3x3) path of conv2d (fastnn_ext/_winograd.pyx).

``FASTNN_WINOGRAD=1`` sends every 3x3 stride-1 convolution there, whatever its size;
a counting wrapper around ``fastnn.conv._winograd_forward`` proves that the path ran.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
import fastnn.conv
from fastnn._geometry import Geometry
import reference as ref
from helpers import HERE, assert_close, run_at_simd_level, x_shape_of
from test_conv import make_conv_inputs
from test_hardening import _LIMITED, MiB

LAYOUTS = ("NCHW", "NHWC")


@pytest.fixture
def calls(monkeypatch):
    """Force the Winograd path; the list collects one entry per Winograd call."""
    monkeypatch.setenv("FASTNN_WINOGRAD", "1")
    seen = []
    inner = fastnn.conv._winograd_forward

    def counted(*args, **kwargs):
        seen.append(args[4].x_shape)
        return inner(*args, **kwargs)
    monkeypatch.setattr(fastnn.conv, "_winograd_forward", counted)
    return seen


SHAPES = [
    # N, C, H, W, K, padding
    (1, 1, 3, 3, 1, 0),          # one output pixel: one tile, mostly outside
    (1, 1, 6, 6, 1, 0),          # exactly one 4x4 tile
    (2, 3, 7, 9, 5, 1),          # odd sizes, not multiples of the tile
    (1, 16, 13, 11, 20, "same"),
    (3, 40, 10, 17, 33, 0),
    (2, 8, 9, 5, 6, ((0, 2), (1, 0))),   # asymmetric padding
    (1, 5, 4, 4, 3, 4),          # padding wider than the kernel: outputs of bias only
    (1, 300, 5, 6, 7, 1),        # many channels in
    (2, 7, 6, 5, 300, 1),        # many channels out (several channel blocks)
    (5, 16, 18, 14, 24, 1),      # more tiles than one work item holds
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(calls, shape, dtype, layout):
    N, C, H, W, K, pad = shape
    x, w, b = make_conv_inputs(1, layout, dtype, N, C, H, W, K, 1, 3, 3)
    y = fastnn.conv2d(x, w, b, padding=pad, layout=layout)
    assert calls, "the Winograd path did not run"
    assert y.dtype == dtype
    want = ref.conv2d(x, w, b, padding=pad, layout=layout)
    assert_close(y, want, dtype, f"{shape} {layout}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_without_bias_and_empty_batch(calls, layout):
    x, w, _ = make_conv_inputs(2, layout, np.float32, 2, 6, 9, 10, 4, 1, 3, 3)
    assert_close(fastnn.conv2d(x, w, padding=1, layout=layout),
                 ref.conv2d(x, w, padding=1, layout=layout), np.float32, "no bias")
    x0 = x[:0]
    y0 = fastnn.conv2d(x0, w, padding=1, layout=layout)
    assert y0.shape == ref.conv2d(x0, w, padding=1, layout=layout).shape == (
        (0, 4, 9, 10) if layout == "NCHW" else (0, 9, 10, 4))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_error_on_default_shapes(calls, layout):
    # The bench's 3x3 cases (smaller batches): random normal data, weights scaled by
    # 1/sqrt(fan-in). Measured about 2e-6; DESIGN's float32 tolerance is 1e-4.
    rng = np.random.default_rng(3)
    for N, C, H, K in [(1, 64, 56, 64), (1, 256, 14, 256), (4, 16, 32, 32), (1, 512, 9, 32)]:
        x = rng.standard_normal((N, C, H, H) if layout == "NCHW" else (N, H, H, C))
        w = rng.standard_normal((K, C, 3, 3) if layout == "NCHW" else (3, 3, C, K))
        w /= np.sqrt(9 * C)
        y = fastnn.conv2d(x.astype(np.float32), w.astype(np.float32), padding=1, layout=layout)
        want = ref.conv2d(x, w, padding=1, layout=layout)
        err = np.linalg.norm(y - want) / np.linalg.norm(want)
        assert err < 2e-5, (N, C, H, K, err)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pad", [0, 1, 2, "same"])
def test_input_gradient_matches_reference(calls, pad, dtype, layout):
    x, w, b = make_conv_inputs(4, layout, dtype, 2, 12, 11, 9, 18, 1, 3, 3)
    y = ref.conv2d(x, w, b, padding=pad, layout=layout)
    gy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
    gx, gw, gb = fastnn.conv2d_backward(gy, x, w, padding=pad, layout=layout)
    assert calls, "the input gradient did not run on the Winograd path"
    want = ref.conv2d_backward(gy, x, w, padding=pad, layout=layout)
    for got, exp, what in zip((gx, gw, gb), want, ("grad_x", "grad_weight", "grad_bias")):
        assert_close(got, exp, dtype, what)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pad", [1, 0, ((2, 0), (0, 1))])
def test_input_gradient_reads_the_flipped_kernel_in_place(calls, pad, dtype, layout):
    # grad_x transforms the flipped, transposed kernel straight from the forward
    # weight; it must give the bits of the forward convolution of grad_y with that
    # kernel copied out (C != K, so a transposition mix-up cannot pass).
    x, w, b = make_conv_inputs(9, layout, dtype, 2, 7, 10, 9, 12, 1, 3, 3)
    y = ref.conv2d(x, w, b, padding=pad, layout=layout)
    gy = np.random.default_rng(9).standard_normal(y.shape).astype(dtype)
    gx = fastnn.conv2d_backward(gy, x, w, padding=pad, layout=layout,
                                need_weight_grad=False)[0]
    g = Geometry("conv2d", layout, x.shape, (3, 3), 12, 1, 1, pad, 1)
    hw = ((2 - g.pt, 2 - g.pb), (2 - g.pl, 2 - g.pr))
    if layout == "NCHW":
        wt = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        gy_pad = np.pad(gy, ((0, 0), (0, 0)) + hw)
    else:
        wt = np.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))
        gy_pad = np.pad(gy, ((0, 0),) + hw + ((0, 0),))
    np.testing.assert_array_equal(gx, fastnn.conv2d(gy_pad, wt, layout=layout))
    assert len(calls) == 2 and calls[0] == gy.shape      # both on the Winograd path
    assert_close(gx, ref.conv2d_backward(gy, x, w, padding=pad, layout=layout)[0], dtype,
                 "grad_x")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bitwise_identical_for_any_thread_count(calls, layout):
    # Many work items (tile blocks x channel blocks), partial last blocks.
    x, w, b = make_conv_inputs(6, layout, np.float32, 3, 20, 23, 30, 150, 1, 3, 3)
    results = []
    for n in (1, 2, 3):
        with fastnn.threads(n):
            results.append(fastnn.conv2d(x, w, b, padding=1, layout=layout))
    assert len(calls) == 3
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def _direct(monkeypatch, f):
    """f() with the Winograd path removed by the test hook."""
    with monkeypatch.context() as m:
        m.setattr(fastnn.conv, "_winograd_blocks", lambda geom, dtype: None)
        return f()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_switch_off_gives_the_direct_path(monkeypatch, layout):
    x, w, b = make_conv_inputs(7, layout, np.float32, 4, 32, 28, 28, 32, 1, 3, 3)

    def f():
        return fastnn.conv2d(x, w, b, padding=1, layout=layout)
    direct = _direct(monkeypatch, f)
    monkeypatch.delenv("FASTNN_WINOGRAD", raising=False)
    auto = f()        # large enough for Winograd by the measured rule on any CPU
    assert not np.array_equal(auto, direct), "the default did not take Winograd"
    monkeypatch.setenv("FASTNN_WINOGRAD", "0")
    np.testing.assert_array_equal(f(), direct)


# (N, C, H, K, layout) -> Winograd taken by the default rule, where 512-bit FMAs run as
# two halves (Zen 4, AVX2 machines) and where they run at full width (Zen 5).
RULE_CASES = [
    ((8, 64, 56, 64, "NCHW"), True, True),
    ((8, 64, 56, 64, "NHWC"), True, True),
    ((64, 16, 32, 32, "NCHW"), True, False),     # 16 channels: too thin at full width
    ((1, 256, 14, 256, "NHWC"), True, False),    # 16 tiles
    ((1, 128, 28, 128, "NHWC"), True, False),    # 49 tiles
    ((16, 32, 32, 32, "NHWC"), True, True),
    ((4, 256, 14, 256, "NCHW"), True, False),    # 4x4 tiles per image, NCHW
    ((2, 8, 28, 32, "NCHW"), False, False),      # 8 input channels
    ((1, 32, 8, 32, "NCHW"), False, False),      # 4 tiles
]


@pytest.mark.parametrize("full_width", [False, True])
@pytest.mark.parametrize("shape, half_rule, full_rule", RULE_CASES)
def test_default_rule_depends_on_the_fma_width(monkeypatch, shape, half_rule, full_rule,
                                               full_width):
    N, C, H, K, layout = shape
    monkeypatch.delenv("FASTNN_WINOGRAD", raising=False)
    monkeypatch.setattr(fastnn.conv._winograd, "FULL_WIDTH_512", full_width)
    geom = Geometry("conv2d", layout, x_shape_of(layout, N, C, H, H), (3, 3), K, 1, 1, 1, 1)
    taken = fastnn.conv._winograd_blocks(geom, np.float32) is not None
    assert taken == (full_rule if full_width else half_rule)


def test_full_width_flag_matches_the_cpu():
    # Zen 4 (AMD family 0x19) issues 512-bit FMAs as two halves; a capped SIMD level
    # (FASTNN_UKERNEL_MAX < 2) or a CPU without AVX-512 never counts as full width.
    from fastnn_ext import _winograd
    assert isinstance(_winograd.FULL_WIDTH_512, bool)
    if _winograd.UKERNEL_LEVEL < 2:
        assert not _winograd.FULL_WIDTH_512
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with")
    fields = dict(line.split(":", 1) for line in info.splitlines()[:30] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25":
        assert not _winograd.FULL_WIDTH_512
    elif fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "26":
        assert _winograd.FULL_WIDTH_512 == (_winograd.UKERNEL_LEVEL == 2)


def test_switch_off_in_a_fresh_process(monkeypatch, tmp_path):
    x, w, b = make_conv_inputs(8, "NCHW", np.float32, 2, 32, 20, 20, 32, 1, 3, 3)
    np.savez(tmp_path / "in.npz", x=x, w=w, b=b)
    script = (f"import sys; sys.path.insert(0, {HERE!r}); import numpy as np, fastnn\n"
              f"d = np.load({str(tmp_path / 'in.npz')!r})\n"
              f"np.save({str(tmp_path / 'y.npy')!r}, fastnn.conv2d(d['x'], d['w'], d['b'], padding=1))")
    env = dict(os.environ, FASTNN_WINOGRAD="0")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    direct = _direct(monkeypatch, lambda: fastnn.conv2d(x, w, b, padding=1))
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), direct)


@pytest.mark.parametrize("kwargs", [
    dict(stride=2), dict(dilation=2), dict(groups=2), dict(kernel=5), dict(kernel=(3, 1)),
])
def test_other_convolutions_never_take_it(calls, kwargs):
    kh, kw = np.broadcast_to(kwargs.pop("kernel", 3), 2)
    x, w, b = make_conv_inputs(9, "NCHW", np.float32, 1, 8, 12, 12, 8,
                               kwargs.get("groups", 1), kh, kw)
    y = fastnn.conv2d(x, w, b, padding=1, **kwargs)
    assert not calls
    assert_close(y, ref.conv2d(x, w, b, padding=1, **kwargs), np.float32)


@pytest.mark.parametrize("shape, dtype, wanted", [
    ((1, 3, 32, 32, 16), np.float32, False),     # too few input channels
    ((4, 64, 16, 16, 8), np.float32, False),     # too few output channels
    ((1, 32, 8, 8, 32), np.float32, False),      # 4 tiles
    ((1, 32, 16, 16, 32), np.float32, True),     # 16 tiles
    ((1, 32, 16, 16, 32), np.float64, False),    # float64 wants 32
    ((2, 32, 16, 16, 32), np.float64, True),
])
def test_measured_rule(monkeypatch, calls, shape, dtype, wanted):
    # The rule where 512-bit FMAs run as two halves (Zen 4); the full-width rule is
    # test_default_rule_depends_on_the_fma_width's.
    monkeypatch.delenv("FASTNN_WINOGRAD")
    monkeypatch.setattr(fastnn.conv._winograd, "FULL_WIDTH_512", False)
    N, C, H, W, K = shape
    x, w, _ = make_conv_inputs(10, "NHWC", dtype, N, C, H, W, K, 1, 3, 3)
    fastnn.conv2d(x, w, padding=1, layout="NHWC")
    assert bool(calls) == wanted


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nan_inf_propagate_like_reference(calls, layout):
    x, w, b = make_conv_inputs(11, layout, np.float64, 2, 4, 13, 12, 5, 1, 3, 3)
    x[(0, 1, 2, 3) if layout == "NCHW" else (0, 2, 3, 1)] = np.nan
    x[(1, 0, 9, 0) if layout == "NCHW" else (1, 9, 0, 0)] = np.inf
    y = fastnn.conv2d(x, w, b, padding=1, layout=layout)
    assert calls
    want = ref.conv2d(x, w, b, padding=1, layout=layout)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(want))
    finite = np.isfinite(want)
    assert_close(y[finite], want[finite], np.float64, "finite part")


SIMD_SCRIPT = """
import os, sys
import numpy as np
sys.path.insert(0, {here!r})
os.environ["FASTNN_WINOGRAD"] = "1"
import reference as ref
import fastnn
from fastnn_ext import _winograd
level = int(sys.argv[1])
assert _winograd.SIMD_LEVEL == _winograd.UKERNEL_LEVEL <= level
rng = np.random.default_rng(level)
worst = 0.0
for layout in ("NCHW", "NHWC"):
    for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-10)):
        # 37 channels: full vectors and a scalar tail at every width.
        x = rng.standard_normal((2, 37, 11, 10) if layout == "NCHW" else (2, 11, 10, 37))
        w = rng.standard_normal((19, 37, 3, 3) if layout == "NCHW" else (3, 3, 37, 19))
        b = rng.standard_normal(19)
        y = fastnn.conv2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), padding=1,
                          layout=layout)
        want = ref.conv2d(x, w, b, padding=1, layout=layout)
        err = np.linalg.norm(y - want) / np.linalg.norm(want)
        assert err < tol, (layout, dtype, err)
        worst = max(worst, err / tol)
print("ok", _winograd.SIMD_LEVEL, worst)
"""


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_simd_level(level):
    run_at_simd_level(SIMD_SCRIPT, level)


def test_failed_scratch_allocation_names_conv2d():
    # 64 tiles of 32768 channels: about 300 MB of per-thread scratch, far more than
    # the inputs and the transformed kernel.
    setup = ("import os\n"
             "os.environ['FASTNN_WINOGRAD'] = '1'\n"
             "x = np.ones((64, 32768, 1, 1), np.float32)\n"
             "w = np.ones((1, 32768, 3, 3), np.float32)")
    script = _LIMITED.format(here=HERE, setup=setup, call="fastnn.conv2d(x, w, padding=1)",
                             margin=128 * MiB)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.strip().splitlines()[-1]
    assert out.startswith("MemoryError: conv2d:"), out
    assert "Winograd" in out, out
