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
