# cython: language_level=3
"""Locally connected layers (unshared weights, one kernel per output position): the
products of every position over the im2col patches of :mod:`fastnn.local`.

Three layers (DESIGN.md). The Python layer builds the patches ``cols`` (N, P, ckk)
with the convolutions' im2col and calls these with C-contiguous buffers; each
position p is one work item, its product computed whole by one thread on the
register-blocked kernel (``pgemm``), so the results are bitwise identical for any
thread count.
"""
from cython cimport floating
from cython.parallel cimport prange

from fastnn_ext._openmp cimport team
from fastnn_ext._ukernel cimport fastnn_ukernel_pick, pgemm

# The SIMD level of the products (_simd.h; FASTNN_UKERNEL_MAX caps it).
SIMD_LEVEL = fastnn_ukernel_pick()


def local_forward(const floating[:, :, ::1] cols, const floating[:, :, ::1] w,
                  floating[:, :, ::1] y, floating beta, int num_threads):
    """y[:, p, :] = cols[:, p, :] @ w[p] + beta * y[:, p, :] for every position p."""
    cdef Py_ssize_t N = cols.shape[0], P = cols.shape[1], ckk = cols.shape[2], K = w.shape[2], p
    if N == 0 or P == 0 or K == 0:
        return
    with nogil:
        for p in prange(P, schedule="static", num_threads=team(num_threads, P)):
            pgemm(False, False, N, K, ckk, <floating>1, &cols[0, p, 0] if ckk else NULL, P * ckk,
                 &w[p, 0, 0] if ckk else NULL, K, beta, &y[0, p, 0], P * K)


def local_weight_grad(const floating[:, :, ::1] cols, const floating[:, :, ::1] gy,
                      floating[:, :, ::1] gw, int num_threads):
    """gw[p] = cols[:, p, :]^T @ gy[:, p, :]."""
    cdef Py_ssize_t N = cols.shape[0], P = gw.shape[0], ckk = gw.shape[1], K = gw.shape[2], p
    if P == 0 or ckk == 0 or K == 0:
        return
    with nogil:
        for p in prange(P, schedule="static", num_threads=team(num_threads, P)):
            pgemm(True, False, ckk, K, N, <floating>1, &cols[0, p, 0] if N else NULL, P * ckk,
                 &gy[0, p, 0] if N else NULL, P * K, <floating>0, &gw[p, 0, 0], K)


def local_cols_grad(const floating[:, :, ::1] gy, const floating[:, :, ::1] w,
                    floating[:, :, ::1] gcols, int num_threads):
    """gcols[:, p, :] = gy[:, p, :] @ w[p]^T."""
    cdef Py_ssize_t N = gy.shape[0], P = gy.shape[1], K = gy.shape[2], ckk = w.shape[1], p
    if N == 0 or P == 0 or ckk == 0:
        return
    with nogil:
        for p in prange(P, schedule="static", num_threads=team(num_threads, P)):
            pgemm(False, True, N, ckk, K, <floating>1, &gy[0, p, 0] if K else NULL, P * K,
                 &w[p, 0, 0] if K else NULL, K, <floating>0, &gcols[0, p, 0], P * ckk)
