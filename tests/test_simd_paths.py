"""Every runtime-dispatched kernel path (baseline, AVX2+FMA, AVX-512) against the
float64 reference: FASTNN_UKERNEL_MAX caps the path chosen at import, so each level
runs in its own interpreter."""
import textwrap

import pytest

from helpers import run_at_simd_level

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {here!r})
    import reference as ref
    import fastnn
    from fastnn_ext import _conv
    level = int(sys.argv[1])
    assert _conv.UKERNEL_LEVEL <= level, _conv.UKERNEL_LEVEL
    rng = np.random.default_rng(level)
    cases = [  # N, C, H, W, K, groups, kh, kw, stride, padding, dilation, layout
        (2, 4, 9, 11, 6, 2, 3, 2, 1, 1, 1, "NCHW"),
        (1, 3, 13, 12, 37, 1, 5, 3, 2, "same", 1, "NCHW"),
        (2, 2, 10, 10, 9, 1, 3, 3, (1, 2), ((0, 2), (1, 0)), 2, "NCHW"),
        (2, 16, 8, 9, 32, 1, 3, 3, 1, 1, 1, "NHWC"),
        (1, 32, 7, 7, 40, 2, 3, 3, 2, "same", 1, "NHWC"),
        (2, 3, 9, 9, 5, 1, 2, 2, 1, 0, 1, "NHWC"),
        # Few output channels in NHWC: the channel-major kernel's tile is stored
        # through the blocked transpose (8 floats / 4 doubles a block, the rest
        # one by one; rows of 10 and 13 pixels).
        (2, 3, 10, 13, 12, 1, 3, 3, 1, 1, 1, "NHWC"),
        (1, 2, 9, 12, 7, 1, 2, 3, 1, 0, 1, "NHWC"),
    ]
    worst = 0.0
    for N, C, H, W, K, G, kh, kw, s, p, d, layout in cases:
        for dtype in (np.float32, np.float64):
            if layout == "NCHW":
                x = rng.standard_normal((N, C, H, W)); w = rng.standard_normal((K, C // G, kh, kw))
            else:
                x = rng.standard_normal((N, H, W, C)); w = rng.standard_normal((kh, kw, C // G, K))
            b = rng.standard_normal(K)
            kw_ = dict(stride=s, padding=p, dilation=d, groups=G, layout=layout)
            y = fastnn.conv2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), **kw_)
            want = ref.conv2d(x, w, b, **kw_)
            gy = rng.standard_normal(want.shape)
            got_b = fastnn.conv2d_backward(gy.astype(dtype), x.astype(dtype), w.astype(dtype), **kw_)
            want_b = ref.conv2d_backward(gy, x, w, **kw_)
            tol = 1e-4 if dtype == np.float32 else 1e-10
            for got, exp in [(y, want)] + list(zip(got_b, want_b)):
                err = np.linalg.norm(got - exp) / max(np.linalg.norm(exp), 1e-300)
                assert err < tol, (level, layout, dtype, err)
                worst = max(worst, err)
    print("ok", _conv.UKERNEL_LEVEL, worst)
""")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_kernel_path_matches_reference(level):
    run_at_simd_level(SCRIPT, level, timeout=300)


# The other families with per-ISA code (_simd.h): the recurrent gate passes and their
# products, the banded/masked/sparse tiles, locally connected layers (banded's tiles
# and products), pooling's 2x2 stride-2 kernel (its general loops are baseline only,
# checked at each level all the same). Forward against the float64 reference; backward against the
# reference's adjoint where it has one, else against a central difference of the
# reference forward along a random direction (float64 inputs).
FAMILIES_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {here!r})
    import reference as ref
    import fastnn
    from fastnn_ext import _activations, _banded, _conv, _pooling, _recurrent, _winograd
    level = int(sys.argv[1])
    levels = {{m.__name__: m.SIMD_LEVEL for m in (_activations, _banded, _conv, _pooling,
                                                  _recurrent, _winograd)}}
    assert len(set(levels.values())) == 1 and _conv.SIMD_LEVEL <= level, levels
    rng = np.random.default_rng(10 + level)

    def err(got, want):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300)

    def directional(f, args, i, grad, g_out, eps=1e-6):
        # <grad, v> against d/dt sum(g_out * f(args with args[i] + t v)) at t = 0.
        v = rng.standard_normal(args[i].shape)
        plus = [a.copy() for a in args]; plus[i] = args[i] + eps * v
        minus = [a.copy() for a in args]; minus[i] = args[i] - eps * v
        fd = (np.sum(g_out * f(*plus)) - np.sum(g_out * f(*minus))) / (2 * eps)
        return abs(float(np.sum(grad * v)) - fd) / max(abs(fd), 1e-12)

    worst = {{}}
    def check(name, e, tol):
        assert e < tol, (level, name, e)
        worst[name] = max(worst.get(name, 0.0), e)

    B, T, I, H = 9, 5, 7, 24          # B > 4: the packed (panel) recurrent path
    for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-10)):
        for B_ in (2, B):
            x = rng.standard_normal((B_, T, I)); h0 = rng.standard_normal((B_, H))
            c0 = rng.standard_normal((B_, H))
            k = rng.standard_normal((I + H, 4 * H)) * 0.3; b = rng.standard_normal(4 * H)
            out, (hT, cT), cache = fastnn.lstm(*(a.astype(dtype) for a in (x, h0, c0, k, b)),
                                               training=True)
            want = ref.lstm(x, h0, c0, k, b)
            check("lstm", max(err(out, want[0]), err(hT, want[1]), err(cT, want[2])), tol)
            if dtype == np.float64:
                g = rng.standard_normal(out.shape)
                grads = fastnn.lstm_backward(g, None, None, cache)
                f = lambda x_, k_: ref.lstm(x_, h0, c0, k_, b)[0]
                check("lstm_backward", max(directional(f, [x, k], 0, grads[0], g),
                                           directional(f, [x, k], 1, grads[3], g)), 1e-6)
            kx = rng.standard_normal((I, 3 * H)) * 0.3; kr = rng.standard_normal((H, 3 * H)) * 0.3
            gb = rng.standard_normal((2, 3 * H))
            res = fastnn.gru(*(a.astype(dtype) for a in (x, h0, kx, kr, gb)), training=True)
            want = ref.gru(x, h0, kx, kr, gb)
            check("gru", max(err(res[0], want[0]), err(res[1], want[1])), tol)
            if dtype == np.float64:
                g = rng.standard_normal(res[0].shape)
                grads = fastnn.gru_backward(g, None, res[-1])
                f = lambda x_, kr_: ref.gru(x_, h0, kx, kr_, gb)[0]
                check("gru_backward", max(directional(f, [x, kr], 0, grads[0], g),
                                          directional(f, [x, kr], 1, grads[3], g)), 1e-6)
            kx = rng.standard_normal((I, H)) * 0.3; kr = rng.standard_normal((H, H)) * 0.3
            rb = rng.standard_normal(H)
            res = fastnn.simple_rnn(*(a.astype(dtype) for a in (x, h0, kx, kr, rb)), training=True)
            want = ref.simple_rnn(x, h0, kx, kr, rb)
            check("simple_rnn", max(err(res[0], want[0]), err(res[1], want[1])), tol)

        # banded (diagonal tiles), masked (dense and sparse), with gradients
        n = 150
        xb = rng.standard_normal((11, n)); w = rng.standard_normal((n, n)); bias = rng.standard_normal(n)
        gy = rng.standard_normal((11, n))
        for lo, up in ((3, 5), (40, 0)):
            got = fastnn.banded_matmul(xb.astype(dtype), w.astype(dtype), lo, up, bias.astype(dtype))
            check("banded", err(got, ref.banded_matmul(xb, w, lo, up, bias)), tol)
            got = fastnn.banded_matmul_backward(gy.astype(dtype), xb.astype(dtype), w.astype(dtype), lo, up)
            want = ref.banded_matmul_backward(gy, xb, w, lo, up)
            check("banded_backward", max(err(a, b_) for a, b_ in zip(got, want)), tol)
        for density in (0.02, 0.6):
            mask = rng.random((n, n)) < density
            got = fastnn.masked_matmul(xb.astype(dtype), w.astype(dtype), fastnn.prepare_mask(mask))
            check("masked", err(got, ref.masked_matmul(xb, w, mask)), tol)
            got = fastnn.masked_matmul_backward(gy.astype(dtype), xb.astype(dtype), w.astype(dtype), mask)
            want = ref.masked_matmul_backward(gy, xb, w, mask)
            check("masked_backward", max(err(a, b_) for a, b_ in zip(got, want)), tol)

        # locally connected (NHWC, Keras-2 layout weight)
        xl = rng.standard_normal((3, 9, 8, 5))
        kw = dict(kernel_size=(3, 2), stride=(2, 1), padding=0)
        ho, wo = (9 - 3) // 2 + 1, 8 - 2 + 1
        wl = rng.standard_normal((ho, wo, 3 * 2 * 5, 6)); bl = rng.standard_normal((ho, wo, 6))
        got = fastnn.locally_connected2d(xl.astype(dtype), wl.astype(dtype), bl.astype(dtype), **kw)
        want = ref.locally_connected2d(xl, wl, bl, (3, 2), (2, 1), ((0, 0), (0, 0)))
        check("local", err(got, want), tol)
        gl = rng.standard_normal(want.shape)
        got = fastnn.locally_connected2d_backward(gl.astype(dtype), xl.astype(dtype), wl.astype(dtype), **kw)
        want = ref.locally_connected2d_backward(gl, xl, wl, (3, 2), (2, 1), ((0, 0), (0, 0)))
        check("local_backward", max(err(a, b_) for a, b_ in zip(got, want)), tol)

        # pooling, both layouts
        xp = rng.standard_normal((2, 3, 11, 10))
        for layout in ("NCHW", "NHWC"):
            xin = xp if layout == "NCHW" else xp.transpose(0, 2, 3, 1)
            got = fastnn.max_pool2d(xin.astype(dtype), 3, stride=2, padding=1, layout=layout)
            want = ref.pool2d(xin, (3, 3), (2, 2), ((1, 1), (1, 1)), "max", layout)[0]
            check("max_pool", err(got, want), tol)
            got = fastnn.avg_pool2d(xin.astype(dtype), 2, layout=layout)
            want = ref.pool2d(xin, (2, 2), (2, 2), ((0, 0), (0, 0)), "avg", layout)
            check("avg_pool", err(got, want), tol)
            gp = rng.standard_normal(want.shape)
            got = fastnn.avg_pool2d_backward(gp.astype(dtype), xin.astype(dtype), 2, layout=layout)
            want = ref.pool2d_backward(gp, xin.shape, (2, 2), (2, 2), ((0, 0), (0, 0)), "avg",
                                       layout=layout)
            check("avg_pool_backward", err(got, want), tol)
        # the 2x2 stride-2 kernels: ties, NaN and -inf decide values and indices; odd
        # H, rows of 17 outputs (the row loop) and 8x8 / 4x6 planes (the small-plane
        # path, which pairs the taps in another order)
        xts = []
        for shape in ((3, 5, 9, 34), (3, 5, 8, 8), (2, 4, 4, 6)):
            xt = rng.integers(-2, 3, shape).astype(np.float64)
            xt[0, 0, 0, :4] = np.nan
            xt[1, 2, 2:4, 2:4] = -np.inf
            xt[-1, 1, 3, 1] = np.nan
            xts.append(xt)
        xa = rng.standard_normal((2, 3, 8, 7))
        for layout, xt in [(lo, xt) for lo in ("NCHW", "NHWC") for xt in xts]:
            xin = xt if layout == "NCHW" else xt.transpose(0, 2, 3, 1)
            got, gi = fastnn.max_pool2d(xin.astype(dtype), 2, return_indices=True,
                                        layout=layout)
            want, wi = ref.pool2d(xin, (2, 2), (2, 2), ((0, 0), (0, 0)), "max", layout)
            assert np.array_equal(gi, wi), "max_pool 2x2 indices " + layout
            assert np.array_equal(np.isnan(got), np.isnan(want)), "max_pool 2x2 NaN"
            fin = ~np.isnan(want)
            assert np.array_equal(got[fin], want[fin].astype(dtype)), "max_pool 2x2 values"
            assert np.array_equal(fastnn.max_pool2d(xin.astype(dtype), 2, layout=layout), got,
                                  equal_nan=True)
            xin = xa if layout == "NCHW" else xa.transpose(0, 2, 3, 1)
            got = fastnn.avg_pool2d(xin.astype(dtype), 2, divisor_override=3, layout=layout)
            want = ref.pool2d(xin, (2, 2), (2, 2), ((0, 0), (0, 0)), "avg", layout,
                              divisor_override=3)
            check("avg_pool 2x2 divisor_override", err(got, want), tol)
    print("ok", _conv.SIMD_LEVEL, worst)
""")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_family_at_every_level_matches_reference(level):
    run_at_simd_level(FAMILIES_SCRIPT, level, timeout=300)


# The register-blocked kernel computes a last block of at most half its rows with a
# half-height block (_ukernel_block.h). Row i's bits must not depend on which block
# computed it: every M from 1 to 48 against the same rows of a 48-row product (whole
# blocks at every level: 48 is a multiple of 4, 6, 8 and 16 rows), at widths that
# take the full, the partial (zero-padded) and the narrow column panels, and depths
# within one chunk of K and over three (chunks of 512, the last one partial).
UGEMM_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from fastnn_ext import _conv
    level = int(sys.argv[1])
    assert _conv.UKERNEL_LEVEL <= level, _conv.UKERNEL_LEVEL
    rng = np.random.default_rng(20 + level)
    worst = 0.0
    for dtype in (np.float32, np.float64):
        for N in (1, 8, 16, 17, 32, 45):
            for K in (1, 7, 64, 1100):
                a = rng.standard_normal((48, K)).astype(dtype)
                b = rng.standard_normal((K, N)).astype(dtype)
                whole = np.full((48, N), np.nan, dtype)
                _conv._ugemm_check(a, b, whole)
                want = a.astype(np.float64) @ b.astype(np.float64)
                e = np.abs(whole - want).max() / np.abs(want).max()
                assert e < (1e-5 if dtype == np.float32 else 1e-13), (dtype, N, K, e)
                worst = max(worst, e)
                for M in range(1, 48):
                    part = np.full((M, N), np.nan, dtype)
                    _conv._ugemm_check(np.ascontiguousarray(a[:M]), b, part)
                    assert np.array_equal(part, whole[:M]), (level, dtype, M, N, K)
    print("ok", _conv.UKERNEL_LEVEL, worst)
""")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_register_block_rows_have_the_same_bits_in_any_block(level):
    run_at_simd_level(UGEMM_SCRIPT, level, timeout=300)
