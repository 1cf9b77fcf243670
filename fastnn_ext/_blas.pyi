import numpy as np
from numpy.typing import NDArray

def _gemm_check(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.floating]: ...
