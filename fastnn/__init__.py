"""fastnn: fast CPU neural-network kernels behind a NumPy-compatible API.

NumPy arrays in, NumPy arrays out (float32 and float64); hot loops in Cython with
OpenMP, matrix products in BLAS. See ``fastnn.show_config()`` for the build.
"""
from fastnn._threads import get_num_threads, set_num_threads, threads
from fastnn._config import show_config
from fastnn.conv import col2im, conv2d, conv2d_backward, flip_kernel, im2col
from fastnn.activations import (leaky_relu, leaky_relu_backward, log_softmax, log_softmax_backward,
                                relu, relu_backward, sigmoid, sigmoid_backward, softmax,
                                softmax_backward, softmax_cross_entropy,
                                softmax_cross_entropy_backward, tanh, tanh_backward)
from fastnn.banded import (band_part, banded_matmul, banded_matmul_backward, locally_connected1d,
                           locally_connected1d_backward, locally_connected2d,
                           locally_connected2d_backward, masked_matmul, masked_matmul_backward,
                           prepare_mask)

__version__ = "0.1.0"

__all__ = [
    "__version__", "show_config", "set_num_threads", "get_num_threads", "threads",
    "conv2d", "conv2d_backward", "im2col", "col2im", "flip_kernel",
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "softmax_cross_entropy", "softmax_cross_entropy_backward",
    "band_part", "banded_matmul", "banded_matmul_backward", "masked_matmul",
    "masked_matmul_backward", "prepare_mask", "locally_connected1d", "locally_connected1d_backward",
    "locally_connected2d", "locally_connected2d_backward",
]
