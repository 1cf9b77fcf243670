from typing import Callable

import numpy as np
from numpy.typing import NDArray

_F = NDArray[np.float32] | NDArray[np.float64]

SIMD_LEVEL: int

# C-contiguous buffers of one dtype, time-major (rows ordered (t, b)); nothing is validated
# here except by lstm_cell, which returns None for anything but the common call (see
# fastnn.recurrent).
def lstm_cell(x: object, h: object, c: object, kernel: object, bias: object, forget_bias: float,
              out_h: object, out_c: object,
              threads: Callable[[], int]) -> tuple[_F, _F] | None: ...
def lstm_cell_general(x: _F, h: _F, c: _F, kernel: _F, bias: _F, forget_bias: float, h_out: _F,
                      c_out: _F, num_threads: int) -> None: ...
def lstm_forward(x: _F, kernel: _F, bias: _F, forget_bias: float, z: _F, hs: _F, cs: _F, tc: _F,
                 T: int, B: int, training: bool, num_threads: int) -> None: ...
def lstm_backward(x: _F, kernel: _F, gates: _F, tc: _F, hs: _F, cs: _F, g: _F, g_step: int,
                  ldg: int, dh: _F, dc: _F, dz: _F, grad_x: _F, grad_kernel: _F, grad_bias: _F,
                  T: int, B: int, num_threads: int) -> None: ...
def gru_forward(x: _F, kernel: _F, rkernel: _F, bias: _F, rbias: _F, z: _F, q: _F, qh: _F, rh: _F,
                hs: _F, T: int, B: int, reset_after: bool, training: bool,
                num_threads: int) -> None: ...
def gru_backward(x: _F, kernel: _F, rkernel: _F, gates: _F, q: _F, rh: _F, hs: _F, g: _F,
                 g_step: int, ldg: int, dh: _F, dz: _F, dq: _F, grad_x: _F, grad_kernel: _F,
                 grad_rkernel: _F, grad_bias: _F, T: int, B: int, reset_after: bool,
                 num_threads: int) -> None: ...
def rnn_forward(x: _F, kernel: _F, rkernel: _F, bias: _F, z: _F, hs: _F, T: int, B: int,
                relu: bool, num_threads: int) -> None: ...
def rnn_backward(x: _F, kernel: _F, rkernel: _F, hs: _F, g: _F, g_step: int, ldg: int, dh: _F,
                 dz: _F, grad_x: _F, grad_kernel: _F, grad_rkernel: _F, grad_bias: _F, T: int,
                 B: int, relu: bool, num_threads: int) -> None: ...
def _use_panels(on: bool) -> None: ...
