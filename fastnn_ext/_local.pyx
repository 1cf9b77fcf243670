# cython: language_level=3
"""Locally connected layers (unshared weights, one kernel per output position): the
products of every position over its patches of the image.

Three layers (DESIGN.md). Each position p is one work item, its product computed
whole by one thread on the register-blocked kernel (``ugemm`` / ``pgemm``), so the
results are bitwise identical for any thread count.

The forward and the weight gradient read the patches straight from the zero-padded
NHWC image ``xp`` (N, Hp, Wp, C) through the kernel's offset tables (implicit im2col):
tap ``(i, j, c)`` of image n at position (ho, wo) is
``xp[n, ho*sh + i, wo*sw + j, c]``. The image (N*Hp*Wp*C elements) stays in cache and
is read by every position that overlaps it; only each position's own weights stream
from memory, and the matching slice of the next position's weights is requested
(prefetched to L2) while the current one is multiplied. The depth is cut in slices of
``SLICE`` (= FASTNN_PG_KB, pgemm's depth block), so the partial sums are those of a
product over explicit patches. The input gradient is computed on explicit patch
gradients (``gcols``, (N, P, ckk)) and folded back by the caller's col2im.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport malloc, free

from fastnn_ext._openmp cimport team
from fastnn_ext._ukernel cimport FASTNN_UGEMM_SCRATCH, fastnn_ukernel_pick, pgemm, ugemm

cdef extern from "_portable.h" nogil:
    void fastnn_prefetch_range(const void* p, Py_ssize_t nbytes)

# The SIMD level of the products (_simd.h; FASTNN_UKERNEL_MAX caps it).
SIMD_LEVEL = fastnn_ukernel_pick()

DEF SLICE = 64


cdef inline void prefetch_rows(const floating* a, Py_ssize_t ld, Py_ssize_t rows,
                               Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(rows):
        fastnn_prefetch_range(a + r * ld, width * sizeof(floating))


cdef Py_ssize_t* tap_table(Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t C,
                           Py_ssize_t Wp) noexcept nogil:
    # offset of tap (i, j, c) in the padded image, in the patches' (i, j, c) order
    cdef Py_ssize_t* t = <Py_ssize_t*>malloc(kh * kw * C * sizeof(Py_ssize_t))
    cdef Py_ssize_t i, j, c, k = 0
    if t != NULL:
        for i in range(kh):
            for j in range(kw):
                for c in range(C):
                    t[k] = (i * Wp + j) * C + c
                    k = k + 1
    return t


cdef object _scratch_error(Py_ssize_t n, size_t itemsize):
    return MemoryError(f"could not allocate {n * itemsize} bytes of scratch for the "
                       f"locally connected products")


def local_forward(const floating[:, :, :, ::1] xp, const floating[:, :, ::1] w, bias,
                  floating[:, :, ::1] y, tuple geom, int num_threads):
    """y[:, p, :] = patches(xp, p) @ w[p] (+ bias[p]) for every position p = ho*Wo + wo.

    geom = (Ho, Wo, kh, kw, sh, sw); bias is None or C-contiguous (P, K)."""
    cdef Py_ssize_t Ho = geom[0], Wo = geom[1], kh = geom[2], kw = geom[3]
    cdef Py_ssize_t sh = geom[4], sw = geom[5]
    cdef Py_ssize_t N = xp.shape[0], Hp = xp.shape[1], Wp = xp.shape[2], C = xp.shape[3]
    cdef Py_ssize_t P = Ho * Wo, K = w.shape[2], ckk = kh * kw * C
    cdef Py_ssize_t p, k0, kb, size = FASTNN_UGEMM_SCRATCH(SLICE)
    cdef const floating[:, ::1] bv
    cdef const floating* bp = NULL
    cdef const floating* img
    cdef floating* scratch = NULL
    cdef Py_ssize_t* taps
    cdef Py_ssize_t boff[SLICE]
    cdef int failed = 0
    cdef int* failed_p = &failed
    if N == 0 or P == 0 or K == 0:
        return
    if bias is not None:
        bv = bias
        bp = &bv[0, 0]
    if ckk == 0:
        return                           # the caller fills y
    for k0 in range(SLICE):
        boff[k0] = k0 * K
    img = &xp[0, 0, 0, 0]
    taps = tap_table(kh, kw, C, Wp)
    if taps == NULL:
        raise _scratch_error(ckk, sizeof(Py_ssize_t))
    with nogil, parallel(num_threads=team(num_threads, P), use_threads_if=num_threads > 1 and P > 1):
        scratch = <floating*>malloc(size * sizeof(floating))
        for p in prange(P, schedule="static"):
            if scratch == NULL:
                failed_p[0] = 1
                continue
            for k0 in range(0, ckk, SLICE):
                kb = ckk - k0 if ckk - k0 < SLICE else SLICE
                if p + 1 < P:
                    fastnn_prefetch_range(&w[p + 1, k0, 0], kb * K * sizeof(floating))
                ugemm(N, K, kb, img + ((p // Wo) * sh * Wp + (p % Wo) * sw) * C, Hp * Wp * C,
                      NULL, taps + k0, &w[p, k0, 0], boff, &y[0, p, 0], P * K, k0 > 0, NULL,
                      bp + p * K if bp != NULL and k0 == 0 else NULL, scratch)
        free(scratch)
    free(taps)
    if failed:
        raise _scratch_error(size, sizeof(floating))


def local_weight_grad(const floating[:, :, :, ::1] xp, const floating[:, :, ::1] gy,
                      floating[:, :, ::1] gw, tuple geom, int num_threads):
    """gw[p] = patches(xp, p)^T @ gy[:, p, :]; geom as for :func:`local_forward`."""
    cdef Py_ssize_t Ho = geom[0], Wo = geom[1], kh = geom[2], kw = geom[3]
    cdef Py_ssize_t sh = geom[4], sw = geom[5]
    cdef Py_ssize_t N = xp.shape[0], Hp = xp.shape[1], Wp = xp.shape[2], C = xp.shape[3]
    cdef Py_ssize_t P = Ho * Wo, K = gw.shape[2], ckk = kh * kw * C
    cdef Py_ssize_t p, k0, kb, size = FASTNN_UGEMM_SCRATCH(SLICE)
    cdef const floating* img
    cdef floating* scratch = NULL
    cdef Py_ssize_t* taps
    cdef Py_ssize_t aoff[SLICE]
    cdef Py_ssize_t boff[SLICE]
    cdef int failed = 0
    cdef int* failed_p = &failed
    if P == 0 or ckk == 0 or K == 0:
        return
    if N == 0:
        gw[:, :, :] = 0
        return
    for k0 in range(SLICE):
        aoff[k0] = k0 * Hp * Wp * C      # image k0 of the slice
        boff[k0] = k0 * P * K            # its row of gy
    img = &xp[0, 0, 0, 0]
    taps = tap_table(kh, kw, C, Wp)
    if taps == NULL:
        raise _scratch_error(ckk, sizeof(Py_ssize_t))
    with nogil, parallel(num_threads=team(num_threads, P), use_threads_if=num_threads > 1 and P > 1):
        scratch = <floating*>malloc(size * sizeof(floating))
        for p in prange(P, schedule="static"):
            if scratch == NULL:
                failed_p[0] = 1
                continue
            for k0 in range(0, N, SLICE):
                kb = N - k0 if N - k0 < SLICE else SLICE
                if p + 1 < P:
                    prefetch_rows(&gy[k0, p + 1, 0], P * K, kb, K)
                ugemm(ckk, K, kb,
                      img + (k0 * Hp * Wp + (p // Wo) * sh * Wp + (p % Wo) * sw) * C, 0,
                      taps, aoff, &gy[k0, p, 0], boff, &gw[p, 0, 0], K, k0 > 0, NULL, NULL,
                      scratch)
        free(scratch)
    free(taps)
    if failed:
        raise _scratch_error(size, sizeof(floating))


def local_cols_grad(const floating[:, :, ::1] gy, const floating[:, :, ::1] w,
                    floating[:, :, ::1] gcols, int num_threads):
    """gcols[:, p, :] = gy[:, p, :] @ w[p]^T."""
    cdef Py_ssize_t N = gy.shape[0], P = gy.shape[1], K = gy.shape[2], ckk = w.shape[1]
    cdef Py_ssize_t p, n0, nb
    if N == 0 or P == 0 or ckk == 0:
        return
    if K == 0:
        gcols[:, :, :] = 0
        return
    with nogil:
        for p in prange(P, schedule="static", num_threads=team(num_threads, P)):
            for n0 in range(0, ckk, SLICE):
                nb = ckk - n0 if ckk - n0 < SLICE else SLICE
                if p + 1 < P:
                    fastnn_prefetch_range(&w[p + 1, n0, 0], nb * K * sizeof(floating))
                pgemm(False, True, N, nb, K, <floating>1, &gy[0, p, 0], P * K,
                      &w[p, n0, 0], K, <floating>0, &gcols[0, p, n0], P * ckk)
