# Register-blocked GEMM with runtime CPU dispatch (see _ukernel.h): A[m, k] =
# a[(amoff[m] if amoff else m*sam) + aoff[k]], B[k, n] = b[boff[k] + n]. Offset tables let a stride-1
# convolution read shifted rows of the padded image directly (implicit im2col).
from cython cimport floating

cdef extern from "_ukernel.h" nogil:
    int fastnn_ukernel_pick()
    int fastnn_ukernel_level
    void fastnn_ugemm_f(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* a,
                        Py_ssize_t sam, const Py_ssize_t* amoff, const Py_ssize_t* aoff, const float* b,
                        const Py_ssize_t* boff,
                        float* c, Py_ssize_t ldc, int accumulate, const float* bias_row,
                        const float* bias_col, float* scratch)
    void fastnn_ugemm_d(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const double* a,
                        Py_ssize_t sam, const Py_ssize_t* amoff, const Py_ssize_t* aoff, const double* b,
                        const Py_ssize_t* boff,
                        double* c, Py_ssize_t ldc, int accumulate, const double* bias_row,
                        const double* bias_col, double* scratch)
    Py_ssize_t FASTNN_UGEMM_SCRATCH(Py_ssize_t K)
    # _transpose.h (included by _ukernel.h, picked by fastnn_ukernel_pick)
    void fastnn_transpose_f(const float* src, Py_ssize_t lds, float* dst, Py_ssize_t ldd,
                            Py_ssize_t nk, Py_ssize_t np)
    void fastnn_transpose_d(const double* src, Py_ssize_t lds, double* dst, Py_ssize_t ldd,
                            Py_ssize_t nk, Py_ssize_t np)
    void fastnn_pgemm_f(int trans_a, int trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                        const float* a, Py_ssize_t lda, const float* b, Py_ssize_t ldb,
                        int accumulate, float* c, Py_ssize_t ldc)
    void fastnn_pgemm_d(int trans_a, int trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                        const double* a, Py_ssize_t lda, const double* b, Py_ssize_t ldb,
                        int accumulate, double* c, Py_ssize_t ldc)


cdef inline void ugemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* a,
                       Py_ssize_t sam, const Py_ssize_t* amoff, const Py_ssize_t* aoff, const floating* b,
                       const Py_ssize_t* boff,
                       floating* c, Py_ssize_t ldc, bint accumulate, const floating* bias_row,
                       const floating* bias_col, floating* scratch) noexcept nogil:
    if floating is float:
        fastnn_ugemm_f(M, N, K, a, sam, amoff, aoff, b, boff, c, ldc, accumulate, bias_row, bias_col,
                       scratch)
    else:
        fastnn_ugemm_d(M, N, K, a, sam, amoff, aoff, b, boff, c, ldc, accumulate, bias_row, bias_col,
                       scratch)


cdef inline void pgemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       floating alpha, const floating* a, Py_ssize_t lda, const floating* b,
                       Py_ssize_t ldb, floating beta, floating* c, Py_ssize_t ldc) noexcept nogil:
    # Row-major C = op(A) op(B) + beta C for products inside a prange, with _blas.gemm's
    # arguments; alpha must be 1 and beta 0 or 1. Deterministic for any thread count
    # and never touching BLAS (see _ukernel.h).
    if floating is float:
        fastnn_pgemm_f(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta != 0, c, ldc)
    else:
        fastnn_pgemm_d(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta != 0, c, ldc)


cdef inline void transpose_tile(const floating* src, Py_ssize_t lds, floating* dst, Py_ssize_t ldd,
                                Py_ssize_t nk, Py_ssize_t np) noexcept nogil:
    # dst[p * ldd + k] = src[k * lds + p] for k < nk, p < np, in register blocks
    # (_transpose.h); the values are moved, never changed.
    if floating is float:
        fastnn_transpose_f(src, lds, dst, ldd, nk, np)
    else:
        fastnn_transpose_d(src, lds, dst, ldd, nk, np)
