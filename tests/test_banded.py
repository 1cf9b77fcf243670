"""Tests of fastnn.banded: band_part, banded_matmul, masked_matmul, locally connected
layers and their backwards.

Against the float64 references of tests/reference.py (property tests over shapes,
bands, masks, paddings and layouts, with every kernel path forced in turn), finite
differences in float64, PyTorch autograd (where installed), the bad-input rules,
memory layouts, out=, empty batches and thread-count determinism.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

import fastnn
import fastnn.banded as fb
import reference as ref
from helpers import (DTYPES, assert_close, assert_finite_difference_grads, call_raises,
                     property_settings, snapshot)

PROPERTY = property_settings(40, HealthCheck.function_scoped_fixture)


def normal(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# Every banded path on demand: the diagonal kernel, GEMM tiles, dense GEMM.
BAND_PATHS = {
    "diag": dict(DIAG_MAX_DIAGONALS=10 ** 9, DENSE_BAND_DENSITY=2.0),
    "tiled": dict(DIAG_MAX_DIAGONALS=0, DIAG_MAX_BATCH=0, DENSE_BAND_DENSITY=2.0,
                  DIAG_TILE_MIN=4, DIAG_TILE_MAX=8),
    "dense": dict(DENSE_BAND_DENSITY=0.0),
}
MASK_PATHS = {"sparse": dict(DENSE_MASK_DENSITY=2.0), "dense": dict(DENSE_MASK_DENSITY=0.0)}


def force(monkeypatch, settings_):
    for name, value in settings_.items():
        monkeypatch.setattr(fb, name, value)


band_bound = st.one_of(st.just(-1), st.integers(0, 3), st.integers(0, 40))


# ------------------------------------------------------------------ band_part
@PROPERTY
@given(shape=st.lists(st.integers(0, 6), min_size=2, max_size=4), lower=band_bound,
       upper=band_bound, seed=st.integers(0, 2 ** 32 - 1))
def test_band_part_matches_reference(shape, lower, upper, seed):
    w = normal(np.random.default_rng(seed), shape)
    got = fastnn.band_part(w, lower, upper)
    np.testing.assert_array_equal(got, ref.band_part(w, lower, upper))


def test_band_part_drops_nan_outside_and_keeps_dtype():
    w = np.full((3, 3), np.nan, dtype=np.float32)
    got = fastnn.band_part(w, 0, 0)
    assert got.dtype == np.float32
    assert np.isnan(np.diag(got)).all() and (got[~np.eye(3, dtype=bool)] == 0).all()


# ------------------------------------------------------------------ banded_matmul
@pytest.mark.parametrize("path", BAND_PATHS)
@PROPERTY
@given(batch=st.lists(st.integers(0, 5), min_size=0, max_size=2), n_in=st.integers(0, 30),
       n_out=st.integers(0, 30), lower=band_bound, upper=band_bound, with_bias=st.booleans(),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 32 - 1))
def test_banded_matmul_matches_reference(monkeypatch, path, batch, n_in, n_out, lower, upper,
                                         with_bias, dtype, seed):
    force(monkeypatch, BAND_PATHS[path])
    rng = np.random.default_rng(seed)
    x = normal(rng, tuple(batch) + (n_in,), dtype)
    w = normal(rng, (n_in, n_out), dtype)
    bias = normal(rng, (n_out,), dtype) if with_bias else None
    y = fastnn.banded_matmul(x, w, lower, upper, bias)
    assert_close(y, ref.banded_matmul(x, w, lower, upper, bias), dtype, f"y ({path})",
                 check_dtype=True)
    g = normal(rng, y.shape, dtype)
    gx, gw, gb = fastnn.banded_matmul_backward(g, x, w, lower, upper, bias=with_bias)
    rx, rw, rb = ref.banded_matmul_backward(g, x, w, lower, upper)
    assert_close(gx, rx, dtype, f"grad_x ({path})", check_dtype=True)
    assert_close(gw, rw, dtype, f"grad_w ({path})", check_dtype=True)
    outside = ~ref.band_keep(n_in, n_out, lower, upper)
    assert (gw[outside] == 0).all(), "grad_w must be exactly zero outside the band"
    if with_bias:
        assert_close(gb, rb, dtype, "grad_bias", check_dtype=True)
    else:
        assert gb is None


@pytest.mark.parametrize("path", BAND_PATHS)
def test_banded_matmul_larger_shapes(monkeypatch, path):
    # Several column blocks of every kernel, batch not a multiple of the row unroll.
    force(monkeypatch, dict(BAND_PATHS[path], DIAG_TILE_MIN=64, DIAG_TILE_MAX=256))
    rng = np.random.default_rng(1)
    for (B, n_in, n_out, lower, upper) in [(7, 700, 600, 5, 9), (9, 300, 520, 70, 3)]:
        x, w = normal(rng, (B, n_in)), normal(rng, (n_in, n_out))
        assert_close(fastnn.banded_matmul(x, w, lower, upper),
                     ref.banded_matmul(x, w, lower, upper), np.float64, path, check_dtype=True)
        g = normal(rng, (B, n_out))
        for got, want in zip(fastnn.banded_matmul_backward(g, x, w, lower, upper),
                             ref.banded_matmul_backward(g, x, w, lower, upper)):
            assert_close(got, want, np.float64, path, check_dtype=True)


def test_banded_matmul_picks_each_path():
    assert fb._BandPlan(64, 1024, 1024, 1, 1).path == "diag"
    assert fb._BandPlan(64, 4096, 4096, 8, 8).path == "diag"
    assert fb._BandPlan(128, 2048, 2048, 256, 256).path == "tiled"
    assert fb._BandPlan(1, 4096, 4096, 8, 8).path == "diag"
    assert fb._BandPlan(64, 100, 100, 99, 99).path == "dense"


@pytest.mark.parametrize("path", BAND_PATHS)
def test_banded_matmul_gradient_finite_differences(monkeypatch, path):
    force(monkeypatch, BAND_PATHS[path])
    rng = np.random.default_rng(2)
    x, w, b = normal(rng, (3, 9)), normal(rng, (9, 7)), normal(rng, (7,))
    g = normal(rng, (3, 7))

    assert_finite_difference_grads(lambda: fastnn.banded_matmul(x, w, 2, 1, b),
                                   fastnn.banded_matmul_backward(g, x, w, 2, 1), [x, w, b],
                                   ["x", "w", "bias"], g)


def test_banded_matmul_nan_rules():
    # A NaN in a dropped weight never reaches y; a NaN in x reaches the columns
    # whose band covers it.
    w = np.ones((5, 5))
    w[4, 0] = np.nan
    y = fastnn.banded_matmul(np.ones((1, 5)), w, 1, 1)
    assert np.isfinite(y).all()
    x = np.ones((1, 5))
    x[0, 2] = np.nan
    y = fastnn.banded_matmul(x, np.ones((5, 5)), 1, 1)
    assert np.isnan(y[0, 1:4]).all()


def test_banded_matmul_out_and_overlap():
    rng = np.random.default_rng(3)
    x, w = normal(rng, (4, 6)), normal(rng, (6, 6))
    want = ref.banded_matmul(x, w, 1, 2)
    out = np.empty((4, 6))
    assert fastnn.banded_matmul(x, w, 1, 2, out=out) is out
    assert_close(out, want, np.float64, check_dtype=True)
    xx = x.copy()
    assert fastnn.banded_matmul(xx, w, 1, 2, out=xx) is xx     # out is x itself
    assert_close(xx, want, np.float64, check_dtype=True)
    fortran = np.asfortranarray(np.empty((4, 6)))
    fastnn.banded_matmul(x, w, 1, 2, out=fortran)
    assert_close(fortran, want, np.float64, check_dtype=True)


def test_banded_matmul_layouts_and_readonly():
    rng = np.random.default_rng(4)
    x = normal(rng, (12, 20))[::-2, ::2]          # (6, 10), negative and gapped strides
    w = np.asfortranarray(normal(rng, (10, 8)))
    w.flags.writeable = False
    snap = snapshot([x, w])
    for path in BAND_PATHS:
        with pytest.MonkeyPatch.context() as mp:
            force(mp, BAND_PATHS[path])
            assert_close(fastnn.banded_matmul(x, w, 2, 3), ref.banded_matmul(x, w, 2, 3),
                         np.float64, path, check_dtype=True)
            g = normal(rng, (6, 8))
            got = fastnn.banded_matmul_backward(g, x, w, 2, 3)
            for a, b in zip(got, ref.banded_matmul_backward(g, x, w, 2, 3)):
                assert_close(a, b, np.float64, path, check_dtype=True)
    for arr, before in snap:
        np.testing.assert_array_equal(arr, before)


def test_banded_matmul_mixed_dtypes_promote():
    x = np.ones((2, 3), dtype=np.float32)
    w = np.ones((3, 3), dtype=np.float64)
    assert fastnn.banded_matmul(x, w, 1, 1).dtype == np.float64
    assert fastnn.banded_matmul(x, w.astype(np.float32), 1, 1).dtype == np.float32


def test_banded_matmul_empty_batch():
    w = np.ones((5, 4))
    y = fastnn.banded_matmul(np.ones((0, 5)), w, 1, 1, np.ones(4))
    assert y.shape == (0, 4)
    gx, gw, gb = fastnn.banded_matmul_backward(np.ones((0, 4)), np.ones((0, 5)), w, 1, 1)
    assert gx.shape == (0, 5) and (gw == 0).all() and (gb == 0).all()


def test_banded_matmul_bad_input():
    x, w = np.ones((2, 5)), np.ones((5, 4))
    call_raises(TypeError, "num_lower", fastnn.banded_matmul, x, w, 1.5, 1)
    call_raises(TypeError, "num_upper", fastnn.banded_matmul, x, w, 1, True)
    call_raises(TypeError, "num_upper", fastnn.banded_matmul, x, w, 1, "2")
    call_raises(ValueError, r"banded_matmul: x has 4 features.*n_in = 5",
                fastnn.banded_matmul, np.ones((2, 4)), w, 1, 1)
    call_raises(ValueError, "w must be 2-D", fastnn.banded_matmul, x, np.ones(5), 1, 1)
    call_raises(TypeError, "x must have dtype", fastnn.banded_matmul, x.astype(int), w, 1, 1)
    call_raises(TypeError, "w must have dtype", fastnn.banded_matmul, x, w.astype(np.float16), 1, 1)
    call_raises(ValueError, r"bias must have shape \(4,\)", fastnn.banded_matmul, x, w, 1, 1,
                np.ones(5))
    call_raises(ValueError, "out has shape", fastnn.banded_matmul, x, w, 1, 1,
                out=np.empty((2, 5)))
    call_raises(TypeError, "out has dtype", fastnn.banded_matmul, x, w, 1, 1,
                out=np.empty((2, 4), dtype=np.float32))
    call_raises(ValueError, "grad_y must have the output shape",
                fastnn.banded_matmul_backward, np.ones((2, 5)), x, w, 1, 1)
    call_raises(TypeError, "num_lower", fastnn.band_part, w, None, 1)


# ------------------------------------------------------------------ masked_matmul
@pytest.mark.parametrize("path", MASK_PATHS)
@PROPERTY
@given(batch=st.lists(st.integers(0, 5), min_size=0, max_size=2), n_in=st.integers(0, 25),
       n_out=st.integers(0, 25), density=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
       mask_kind=st.sampled_from(["bool", "int", "float", "prepared"]),
       with_bias=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 32 - 1))
def test_masked_matmul_matches_reference(monkeypatch, path, batch, n_in, n_out, density,
                                         mask_kind, with_bias, dtype, seed):
    force(monkeypatch, MASK_PATHS[path])
    rng = np.random.default_rng(seed)
    x = normal(rng, tuple(batch) + (n_in,), dtype)
    w = normal(rng, (n_in, n_out), dtype)
    keep = rng.random((n_in, n_out)) < density
    mask = {"bool": keep, "int": keep.astype(np.int8), "float": keep * rng.random(keep.shape),
            "prepared": None}[mask_kind]
    if mask_kind == "prepared":
        mask = fastnn.prepare_mask(keep)
        assert mask.nnz == keep.sum()
    bias = normal(rng, (n_out,), dtype) if with_bias else None
    y = fastnn.masked_matmul(x, w, mask, bias)
    assert_close(y, ref.masked_matmul(x, w, keep, bias), dtype, f"y ({path})", check_dtype=True)
    g = normal(rng, y.shape, dtype)
    gx, gw, gb = fastnn.masked_matmul_backward(g, x, w, mask, bias=with_bias)
    rx, rw, rb = ref.masked_matmul_backward(g, x, w, keep)
    assert_close(gx, rx, dtype, f"grad_x ({path})", check_dtype=True)
    assert_close(gw, rw, dtype, f"grad_w ({path})", check_dtype=True)
    assert (gw[~keep] == 0).all(), "grad_w must be exactly zero where the mask is zero"
    if with_bias:
        assert_close(gb, rb, dtype, "grad_bias", check_dtype=True)


@pytest.mark.parametrize("path", MASK_PATHS)
def test_masked_matmul_gradient_finite_differences(monkeypatch, path):
    force(monkeypatch, MASK_PATHS[path])
    rng = np.random.default_rng(5)
    x, w, b = normal(rng, (4, 8)), normal(rng, (8, 6)), normal(rng, (6,))
    mask = rng.random((8, 6)) < 0.4
    g = normal(rng, (4, 6))

    assert_finite_difference_grads(lambda: fastnn.masked_matmul(x, w, mask, b),
                                   fastnn.masked_matmul_backward(g, x, w, mask), [x, w, b],
                                   ["x", "w", "bias"], g)


@pytest.mark.parametrize("path", MASK_PATHS)
def test_masked_gradients_match_torch_autograd(monkeypatch, path):
    torch = pytest.importorskip("torch")
    force(monkeypatch, MASK_PATHS[path])
    rng = np.random.default_rng(6)
    x, w, b = normal(rng, (5, 9)), normal(rng, (9, 7)), normal(rng, (7,))
    mask = rng.random((9, 7)) < 0.3
    g = normal(rng, (5, 7))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = tx @ (tw * torch.tensor(mask, dtype=torch.float64)) + tb
    ty.backward(torch.tensor(g))
    assert_close(fastnn.masked_matmul(x, w, mask, b), ty.detach().numpy(), np.float64,
                 check_dtype=True)
    gx, gw, gb = fastnn.masked_matmul_backward(g, x, w, mask)
    for got, t in zip((gx, gw, gb), (tx, tw, tb)):
        assert_close(got, t.grad.numpy(), np.float64, check_dtype=True)
    # Banded as the same masked product.
    keep = ref.band_keep(9, 7, 1, 2)
    tw.grad = None
    (torch.tensor(x) @ (tw * torch.tensor(keep, dtype=torch.float64))).backward(torch.tensor(g))
    assert_close(fastnn.banded_matmul_backward(g, x, w, 1, 2)[1], tw.grad.numpy(), np.float64,
                 check_dtype=True)


def test_masked_matmul_nan_under_zero_mask_is_dropped():
    for path in MASK_PATHS:
        with pytest.MonkeyPatch.context() as mp:
            force(mp, MASK_PATHS[path])
            w = np.array([[1.0, np.nan], [np.nan, 1.0]])
            y = fastnn.masked_matmul(np.ones((1, 2)), w, np.eye(2))
            np.testing.assert_array_equal(y, [[1.0, 1.0]])
            with np.errstate(invalid="ignore"):
                gx, gw, _ = fastnn.masked_matmul_backward(np.full((1, 2), np.inf),
                                                          np.ones((1, 2)), w, np.eye(2))
            assert gw[0, 1] == 0 and gw[1, 0] == 0


def test_prepared_mask_is_a_snapshot():
    keep = np.eye(3, dtype=bool)
    prepared = fastnn.prepare_mask(keep)
    keep[0, 1] = True
    y = fastnn.masked_matmul(np.ones((1, 3)), np.ones((3, 3)), prepared)
    np.testing.assert_array_equal(y, [[1.0, 1.0, 1.0]])
    assert fastnn.prepare_mask(prepared) is prepared
    assert "nnz=3" in repr(prepared)


def test_masked_matmul_out_layouts_empty():
    rng = np.random.default_rng(7)
    x = normal(rng, (10, 8))[::2]                 # (5, 8), gapped rows
    w = np.asfortranarray(normal(rng, (8, 8)))
    mask = (rng.random((8, 8)) < 0.2)[:, ::-1]
    snap = snapshot([x, w, mask])
    for path in MASK_PATHS:
        with pytest.MonkeyPatch.context() as mp:
            force(mp, MASK_PATHS[path])
            out = np.empty((5, 8))
            assert fastnn.masked_matmul(x, w, mask, out=out) is out
            assert_close(out, ref.masked_matmul(x, w, mask), np.float64, path, check_dtype=True)
            xx = np.array(x)
            fastnn.masked_matmul(xx, w, mask, out=xx)
            assert_close(xx, ref.masked_matmul(x, w, mask), np.float64, path, check_dtype=True)
            assert fastnn.masked_matmul(np.ones((0, 8)), w, mask).shape == (0, 8)
            gx, gw, gb = fastnn.masked_matmul_backward(np.ones((0, 8)), np.ones((0, 8)), w, mask)
            assert gx.shape == (0, 8) and (gw == 0).all() and (gb == 0).all()
    for arr, before in snap:
        np.testing.assert_array_equal(arr, before)


def test_masked_matmul_bad_input():
    x, w = np.ones((2, 5)), np.ones((5, 4))
    call_raises(ValueError, r"masked_matmul: mask must have the shape of w \(5, 4\)",
                fastnn.masked_matmul, x, w, np.ones((4, 5)))
    call_raises(ValueError, "mask must be 2-D", fastnn.masked_matmul, x, w, np.ones(20))
    call_raises(TypeError, "mask must be a bool", fastnn.masked_matmul, x, w,
                np.full((5, 4), "a"))
    call_raises(ValueError, "x has 3 features", fastnn.masked_matmul, np.ones((2, 3)), w,
                np.ones((5, 4)))
    call_raises(ValueError, "out has shape", fastnn.masked_matmul, x, w, np.ones((5, 4)),
                out=np.empty((2, 5)))
    call_raises(ValueError, "mask must have the shape of w", fastnn.masked_matmul_backward,
                np.ones((2, 4)), x, w, fastnn.prepare_mask(np.ones((4, 4))))


# ------------------------------------------------------------------ locally connected
padding_st = st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 2))


@PROPERTY
@given(N=st.integers(0, 3), H=st.integers(1, 6), W=st.integers(1, 6), C=st.integers(1, 3),
       K=st.integers(1, 3), kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 2),
       sw=st.integers(1, 2), padding=padding_st, layout=st.sampled_from(["NHWC", "NCHW"]),
       with_bias=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 32 - 1))
def test_locally_connected2d_matches_reference(N, H, W, C, K, kh, kw, sh, sw, padding, layout,
                                               with_bias, dtype, seed):
    pads = padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
    if not isinstance(padding, str):
        if H + 2 * padding < kh or W + 2 * padding < kw:
            return
    elif padding == "valid" and (H < kh or W < kw):
        return
    rng = np.random.default_rng(seed)
    x = normal(rng, (N, H, W, C), dtype)
    y0 = ref.locally_connected2d(x, np.zeros((64, 64, kh * kw * C, K)), None, (kh, kw),
                                 (sh, sw), pads)
    Ho, Wo = y0.shape[1:3]
    w = normal(rng, (Ho, Wo, kh * kw * C, K), dtype)
    b = normal(rng, (Ho, Wo, K), dtype) if with_bias else None
    want = ref.locally_connected2d(x, w, b, (kh, kw), (sh, sw), pads)
    g = normal(rng, want.shape, dtype)
    rx, rw, rb = ref.locally_connected2d_backward(g, x, w, (kh, kw), (sh, sw), pads)
    to = (lambda a: a) if layout == "NHWC" else (lambda a: a.transpose(0, 3, 1, 2))
    kw_args = dict(kernel_size=(kh, kw), stride=(sh, sw), padding=padding, layout=layout)
    y = fastnn.locally_connected2d(to(x), w, b, **kw_args)
    assert_close(y, to(want), dtype, "y", check_dtype=True)
    gx, gw, gb = fastnn.locally_connected2d_backward(to(g), to(x), w, bias=with_bias, **kw_args)
    assert_close(gx, to(rx), dtype, "grad_x", check_dtype=True)
    assert_close(gw, rw, dtype, "grad_weight", check_dtype=True)
    if with_bias:
        assert_close(gb, rb, dtype, "grad_bias", check_dtype=True)
    else:
        assert gb is None


@PROPERTY
@given(N=st.integers(0, 3), W=st.integers(1, 8), C=st.integers(1, 3), K=st.integers(1, 3),
       k=st.integers(1, 3), s=st.integers(1, 3), padding=padding_st,
       layout=st.sampled_from(["NWC", "NCW"]), seed=st.integers(0, 2 ** 32 - 1))
def test_locally_connected1d_matches_2d_reference(N, W, C, K, k, s, padding, layout, seed):
    if padding == "valid" and W < k or isinstance(padding, int) and W + 2 * padding < k:
        return
    pads = padding if isinstance(padding, str) else ((0, 0), (padding, padding))
    rng = np.random.default_rng(seed)
    x = normal(rng, (N, W, C))
    x4 = x[:, None]
    Wo = ref.locally_connected2d(x4, np.zeros((1, 64, k * C, K)), None, (1, k), (1, s),
                                 pads).shape[2]
    w, b = normal(rng, (Wo, k * C, K)), normal(rng, (Wo, K))
    want = ref.locally_connected2d(x4, w[None], b[None], (1, k), (1, s), pads)[:, 0]
    g = normal(rng, want.shape)
    rx, rw, rb = ref.locally_connected2d_backward(g[:, None], x4, w[None], (1, k), (1, s), pads)
    to = (lambda a: a) if layout == "NWC" else (lambda a: a.transpose(0, 2, 1))
    kw_args = dict(kernel_size=k, stride=s, padding=padding, layout=layout)
    assert_close(fastnn.locally_connected1d(to(x), w, b, **kw_args), to(want), np.float64,
                 check_dtype=True)
    gx, gw, gb = fastnn.locally_connected1d_backward(to(g), to(x), w, **kw_args)
    assert_close(gx, to(rx[:, 0]), np.float64, "grad_x", check_dtype=True)
    assert_close(gw, rw[0], np.float64, "grad_weight", check_dtype=True)
    assert_close(gb, rb[0], np.float64, "grad_bias", check_dtype=True)


def test_locally_connected2d_gradient_finite_differences():
    rng = np.random.default_rng(8)
    x, w, b = normal(rng, (2, 5, 4, 3)), normal(rng, (3, 2, 12, 2)), normal(rng, (3, 2, 2))
    kw_args = dict(kernel_size=(2, 2), stride=(2, 2), padding="same")
    g = normal(rng, (2, 3, 2, 2))

    assert_finite_difference_grads(lambda: fastnn.locally_connected2d(x, w, b, **kw_args),
                                   fastnn.locally_connected2d_backward(g, x, w, **kw_args),
                                   [x, w, b], ["x", "weight", "bias"], g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_locally_connected_over_several_slices(dtype):
    # More taps and more images than one depth slice of the kernel (64): the slices'
    # partial sums, the bias on the first slice only, the next position's prefetch,
    # and an output narrower than one vector; the same bits on 1 and 2 threads.
    rng = np.random.default_rng(10)
    x, w = normal(rng, (70, 6, 5, 9)), normal(rng, (3, 3, 81, 5))
    b, g = normal(rng, (3, 3, 5)), normal(rng, (70, 3, 3, 5))
    kw_args = dict(kernel_size=3, stride=2, padding=1)
    want = ref.locally_connected2d(x, w, b, (3, 3), (2, 2), ((1, 1), (1, 1)))
    rx, rw, rb = ref.locally_connected2d_backward(g, x, w, (3, 3), (2, 2), ((1, 1), (1, 1)))
    xs, ws, bs, gs = (a.astype(dtype) for a in (x, w, b, g))
    results = []
    for n in (1, 2):
        with fastnn.threads(n):
            y = fastnn.locally_connected2d(xs, ws, bs, **kw_args)
            results.append((y,) + fastnn.locally_connected2d_backward(gs, xs, ws, **kw_args))
    for got, exp in zip(results[0], (want, rx, rw, rb)):
        assert_close(got, exp, dtype, check_dtype=True)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_locally_connected_layouts_and_readonly():
    rng = np.random.default_rng(9)
    x = np.asfortranarray(normal(rng, (2, 5, 5, 3)))[:, ::-1]
    w = normal(rng, (5, 5, 27, 4))[..., ::-1]
    x.flags.writeable = False
    snap = snapshot([x, w])
    want = ref.locally_connected2d(x, w, None, (3, 3), (1, 1), "same")
    assert_close(fastnn.locally_connected2d(x, w, kernel_size=3, padding="same"), want,
                 np.float64, check_dtype=True)
    for arr, before in snap:
        np.testing.assert_array_equal(arr, before)


def test_locally_connected_bad_input():
    x = np.ones((2, 6, 6, 3))
    w = np.ones((6, 6, 27, 4))
    lc = fastnn.locally_connected2d
    call_raises(ValueError, r"locally_connected2d: weight must have shape \(6, 6, 27, 'K'\)",
                lc, x, np.ones((6, 6, 26, 4)), kernel_size=3, padding="same")
    call_raises(ValueError, "weight must be 4-D", lc, x, np.ones((6, 27, 4)), kernel_size=3,
                padding="same")
    call_raises(ValueError, "x must be 4-D", lc, np.ones((6, 6, 3)), w, kernel_size=3)
    call_raises(ValueError, "layout must be one of NHWC, NCHW", lc, x, w, kernel_size=3,
                padding="same", layout="NWC")
    call_raises(ValueError, r"bias must have shape \(6, 6, 4\)", lc, x, w, np.ones(4),
                kernel_size=3, padding="same")
    call_raises(TypeError, "kernel_size", lc, x, w, kernel_size=2.5)
    call_raises(ValueError, "stride must be >= 1", lc, x, w, kernel_size=3, stride=0)
    call_raises(ValueError, "padding", lc, x, w, kernel_size=3, padding="full")
    call_raises(ValueError, "grad_y must have the output shape",
                fastnn.locally_connected2d_backward, np.ones((2, 6, 6, 5)), x, w,
                kernel_size=3, padding="same")
    call_raises(ValueError, r"locally_connected1d: weight must have shape \(4, 6, 'K'\)",
                fastnn.locally_connected1d, np.ones((2, 6, 2)), np.ones((4, 5, 1)),
                kernel_size=3)


# ------------------------------------------------------------------ determinism
def _all_ops(rng):
    x, w = normal(rng, (37, 300), np.float32), normal(rng, (300, 280), np.float32)
    g = normal(rng, (37, 280), np.float32)
    mask = rng.random((300, 280)) < 0.05
    xl, wl = normal(rng, (9, 8, 8, 4)), normal(rng, (8, 8, 36, 5))
    gl = normal(rng, (9, 8, 8, 5))
    lc = dict(kernel_size=3, padding="same")
    ops = {
        "masked": lambda: fastnn.masked_matmul(x, w, mask),
        "masked_bwd": lambda: fastnn.masked_matmul_backward(g, x, w, mask),
        "masked_dense_bwd": lambda: fastnn.masked_matmul_backward(g, x, w, mask > -1),
        "lc2d": lambda: fastnn.locally_connected2d(xl, wl, **lc),
        "lc2d_bwd": lambda: fastnn.locally_connected2d_backward(gl, xl, wl, **lc),
    }
    for band in [(1, 1), (20, 30), (-1, 200)]:
        ops[f"banded{band}"] = lambda band=band: fastnn.banded_matmul(x, w, *band)
        ops[f"banded_bwd{band}"] = lambda band=band: fastnn.banded_matmul_backward(g, x, w, *band)
    return ops


def test_results_bitwise_identical_for_any_thread_count():
    ops = _all_ops(np.random.default_rng(10))
    for name, op in ops.items():
        results = []
        for n in (1, 2, 3):
            with fastnn.threads(n):
                r = op()
            results.append(r if isinstance(r, tuple) else (r,))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("mask_dtype", [np.bool_, np.uint8, np.int32, np.int64, np.float32,
                                        np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "transposed", "strided"])
def test_masked_matmul_masks_of_any_dtype_and_layout(mask_dtype, layout):
    # A non-bool mask in Fortran order or transposed used to be refused ("ndarray is not
    # C-contiguous") by the mask scan. Any non-zero keeps the weight (the docstring), so
    # every dtype and layout of a mask holding 0 and 1..3 gives the bool mask's bits.
    rng = np.random.default_rng(7)
    n_in, n_out = 37, 29
    keep = rng.random((n_in, n_out)) < 0.3
    values = np.where(keep, rng.integers(1, 4, keep.shape), 0).astype(mask_dtype)
    if layout == "F":
        mask = np.asfortranarray(values)
    elif layout == "transposed":
        mask = np.ascontiguousarray(values.T).T
    elif layout == "strided":
        big = np.zeros((2 * n_in, 3 * n_out), dtype=mask_dtype)
        big[::2, ::3] = values
        mask = big[::2, ::3]
    else:
        mask = values
    x = rng.standard_normal((5, n_in))
    w = rng.standard_normal((n_in, n_out))
    gy = rng.standard_normal((5, n_out))
    want = fastnn.masked_matmul(x, w, keep)
    np.testing.assert_allclose(want, ref.masked_matmul(x, w, keep), rtol=1e-12, atol=1e-12)
    assert np.array_equal(fastnn.masked_matmul(x, w, mask), want)
    assert np.array_equal(fastnn.masked_matmul(x, w, fastnn.prepare_mask(mask)), want)
    for got, exp in zip(fastnn.masked_matmul_backward(gy, x, w, mask),
                        fastnn.masked_matmul_backward(gy, x, w, keep)):
        assert np.array_equal(got, exp)


@pytest.mark.parametrize("shape", [(1, 200), (7, 130), (301, 64), (64, 1), (5, 0)])
def test_mask_index_matches_numpy_for_any_band_count(shape):
    # The sparse index is a counting sort in bands of rows (one per thread): the CSR
    # columns, the CSC rows and the CSR -> CSC map must be NumPy's order for any count,
    # across the 64-byte runs and their tails.
    rng = np.random.default_rng(11)
    mask = rng.random(shape) < 0.05
    if shape[1]:
        mask[:, -1] = True           # the last byte of every row's tail
    rows, cols = np.nonzero(mask)
    crow = np.nonzero(mask.T)[1]
    for n in (1, 2, 3, 8):
        with fastnn.threads(n):
            pm = fastnn.prepare_mask(mask)
        if pm.dense:
            continue
        np.testing.assert_array_equal(pm.row_cols, cols)
        np.testing.assert_array_equal(pm.col_rows, crow)
        np.testing.assert_array_equal(pm.col_ptr, np.concatenate([[0], np.cumsum(mask.sum(0))]))
        np.testing.assert_array_equal(pm.col_rows[pm.csr_to_csc], rows)
