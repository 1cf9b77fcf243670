"""fastnn: fast CPU neural-network kernels behind a NumPy-compatible API.

NumPy arrays in, NumPy arrays out (float32 and float64); hot loops in Cython with
OpenMP, matrix products in BLAS. See ``fastnn.show_config()`` for the build.
"""
from fastnn._threads import (get_coexistence, get_num_threads, set_coexistence, set_num_threads,
                             threads)
from fastnn._config import show_config
from fastnn.conv import (col2im, conv1d, conv1d_backward, conv2d, conv2d_backward, conv_transpose2d,
                         conv_transpose2d_backward, flip_kernel, im2col)
from fastnn.pooling import (avg_pool1d, avg_pool1d_backward, avg_pool2d, avg_pool2d_backward,
                            max_pool1d, max_pool1d_backward, max_pool2d, max_pool2d_backward)
from fastnn.activations import (leaky_relu, leaky_relu_backward, log_softmax, log_softmax_backward,
                                relu, relu_backward, sigmoid, sigmoid_backward, softmax,
                                softmax_backward, softmax_cross_entropy,
                                softmax_cross_entropy_backward, tanh, tanh_backward)
from fastnn.recurrent import (RecurrentCache, gru, gru_backward, gru_cell, gru_cell_backward, lstm,
                              lstm_backward, lstm_cell, lstm_cell_backward, simple_rnn,
                              simple_rnn_backward)
from fastnn import convert
from fastnn.banded import (band_part, banded_matmul, banded_matmul_backward, masked_matmul,
                           masked_matmul_backward, prepare_mask)
from fastnn.local import (locally_connected1d, locally_connected1d_backward, locally_connected2d,
                          locally_connected2d_backward)

from fastnn._version import __version__

__all__ = [
    "__version__", "show_config", "set_num_threads", "get_num_threads", "threads",
    "set_coexistence", "get_coexistence",
    "conv2d", "conv2d_backward", "conv1d", "conv1d_backward", "conv_transpose2d",
    "conv_transpose2d_backward", "im2col", "col2im", "flip_kernel",
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward", "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "softmax_cross_entropy", "softmax_cross_entropy_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "max_pool1d", "max_pool1d_backward", "avg_pool1d", "avg_pool1d_backward",
    "lstm_cell", "lstm_cell_backward", "lstm", "lstm_backward", "gru_cell", "gru_cell_backward",
    "gru", "gru_backward", "simple_rnn", "simple_rnn_backward", "RecurrentCache", "convert",
    "band_part", "banded_matmul", "banded_matmul_backward", "masked_matmul",
    "masked_matmul_backward", "prepare_mask", "locally_connected1d", "locally_connected1d_backward",
    "locally_connected2d", "locally_connected2d_backward",
]
