# cython: language_level=3
"""Row-major GEMM over scipy's BLAS (sgemm/dgemm), fused over float and double."""
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef void gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
               floating alpha, const floating* a, Py_ssize_t lda,
               const floating* b, Py_ssize_t ldb, floating beta,
               floating* c, Py_ssize_t ldc) noexcept nogil:
    # Row-major C (m x n) is column-major C^T (n x m) = op(B)^T op(A)^T, so the
    # operands are swapped. Leading dimensions are clamped to >= 1 (BLAS rejects 0
    # even when the matrix is empty) and empty products never reach BLAS.
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef int im = <int>m, in_ = <int>n, ik = <int>k
    cdef int ilda = <int>(lda if lda > 1 else 1)
    cdef int ildb = <int>(ldb if ldb > 1 else 1)
    cdef int ildc = <int>(ldc if ldc > 1 else 1)
    cdef Py_ssize_t i, j
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = 0 if beta == 0 else beta * c[i * ldc + j]
        return
    if floating is float:
        sgemm(&tb, &ta, &in_, &im, &ik, &alpha, <float*>b, &ildb, <float*>a, &ilda,
              &beta, c, &ildc)
    else:
        dgemm(&tb, &ta, &in_, &im, &ik, &alpha, <double*>b, &ildb, <double*>a, &ilda,
              &beta, c, &ildc)


def _gemm_check(a, b):
    """Test hook: row-major a @ b through the wrapper (a, b C-contiguous, same dtype)."""
    import numpy as np
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    if a.dtype == np.float32:
        _run[float](a, b, out)
    else:
        _run[double](a, b, out)
    return out


cdef _run(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out):
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = b.shape[1]
    with nogil:
        gemm(False, False, m, n, k, <floating>1, &a[0, 0] if m * k else NULL, k,
             &b[0, 0] if k * n else NULL, n, <floating>0,
             &out[0, 0] if m * n else NULL, n)
