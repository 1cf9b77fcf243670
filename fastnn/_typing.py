"""Type aliases of the public API's annotations (for type checkers and IDEs).

Inputs are ``ArrayLike`` (anything ``np.asarray`` accepts); results are float32 or
float64 arrays (``FloatArray``). The aliases are evaluated when fastnn is imported,
so they use ``typing.Union`` (the ``|`` of types needs Python 3.10 at run time); the
modules' own annotations are strings (``from __future__ import annotations``).
"""
from typing import Any, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["ArrayLike", "NDArray", "FloatArray", "IndexArray", "IntPair", "Int1",
           "Padding2D", "Padding1D", "PoolSize2D", "PoolStride2D", "PoolStride1D",
           "PoolPadding2D", "Grads3", "Grads5"]

#: A float32 or float64 array: what every kernel returns.
FloatArray = NDArray[np.floating[Any]]
#: The int64 argmax of a max pooling (``return_indices=True``).
IndexArray = NDArray[np.int64]

#: An int for both axes, or one per axis (stride, dilation, kernel_size of 2-D ops).
IntPair = Union[int, Tuple[int, int]]
#: An int, or a tuple of one (stride, dilation of 1-D ops).
Int1 = Union[int, Tuple[int]]
#: 2-D padding: an int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same".
Padding2D = Union[int, str, Tuple[int, int], Tuple[Tuple[int, int], Tuple[int, int]]]
#: 1-D padding: an int, (p,), (left, right), "valid" or "same".
Padding1D = Union[int, str, Tuple[int], Tuple[int, int]]

#: Pooling's kernel_size (and dilation): an int, (k,) for both axes, or (kh, kw).
PoolSize2D = Union[int, Tuple[int], Tuple[int, int]]
#: Pooling's stride: as kernel_size, or None or () for kernel_size.
PoolStride2D = Union[PoolSize2D, Tuple[()], None]
PoolStride1D = Union[Int1, Tuple[()], None]
#: Pooling's padding: as a convolution's, or (p,) for both axes.
PoolPadding2D = Union[Padding2D, Tuple[int]]

#: (grad_x, grad_weight, grad_bias) of a backward; an entry not asked for is None.
Grads3 = Tuple[Optional[FloatArray], Optional[FloatArray], Optional[FloatArray]]
#: The five gradients of a recurrent backward (inputs, initial state, three weights).
Grads5 = Tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]
