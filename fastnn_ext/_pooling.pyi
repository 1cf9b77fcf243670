import numpy as np
from numpy.typing import NDArray

_F = NDArray[np.float32] | NDArray[np.float64]
_I64 = NDArray[np.int64]
# (N, C, H, W, kh, kw, sh, sw, pad_top, pad_left, Ho, Wo, dh, dw,
#  H + pad_bottom, W + pad_right, divisor mode (0 real elements, 1 count_include_pad,
#  2 divisor_override), divisor_override)
_Geom = tuple[int, int, int, int, int, int, int, int, int, int, int, int,
              int, int, int, int, int, int]

SIMD_LEVEL: int  # of the 2x2 stride-2 kernels (_simd.h); the general loops are baseline

# Flat, C-contiguous buffers of one dtype; nothing is validated here (see fastnn.pooling).
def pool2d_forward(x: _F, y: _F, idx: _I64 | None, geom: _Geom, nhwc: bool, is_max: bool,
                   num_threads: int) -> None: ...
def pool2d_backward(gy: _F, idx: _I64 | None, gx: _F, geom: _Geom, nhwc: bool,
                    num_threads: int) -> bool: ...
