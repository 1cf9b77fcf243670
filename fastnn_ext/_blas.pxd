# The one GEMM wrapper: row-major C = alpha * op(A) @ op(B) + beta * C over
# scipy.linalg.cython_blas, fused over float/double.
from cython cimport floating

cdef void gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
               floating alpha, const floating* a, Py_ssize_t lda,
               const floating* b, Py_ssize_t ldb, floating beta,
               floating* c, Py_ssize_t ldc) noexcept nogil
