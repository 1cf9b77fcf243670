import numpy as np
from numpy.typing import NDArray

_F = NDArray[np.float32] | NDArray[np.float64]

SIMD_LEVEL: int
UKERNEL_LEVEL: int
FULL_WIDTH_512: bool

def transform_weight(w: _F, u: _F, C: int, K: int, nhwc: bool, num_threads: int,
                     flipped: bool = ...) -> None: ...
def conv3x3_forward(x: _F, u: _F, bias: _F | None, y: _F,
                    geom: tuple[int, int, int, int, int, int, int, int, int], nhwc: bool,
                    num_threads: int, tile_block: int, k_block: int) -> bool: ...
