import numpy as np
from numpy.typing import NDArray

_F = NDArray[np.float32] | NDArray[np.float64]

SIMD_LEVEL: int

def local_forward(xp: _F, w: _F, bias: _F | None, y: _F, geom: tuple[int, int, int, int, int, int],
                  num_threads: int) -> None: ...
def local_weight_grad(xp: _F, gy: _F, gw: _F, geom: tuple[int, int, int, int, int, int],
                      num_threads: int) -> None: ...
def local_cols_grad(gy: _F, w: _F, gcols: _F, num_threads: int) -> None: ...
