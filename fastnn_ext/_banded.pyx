# cython: language_level=3
"""Banded, masked and locally connected matrix products (forward and backward).

Every driver splits its work into items chosen from the shape alone (column
blocks, rows, output positions), each output element is produced by exactly one
item and every reduction runs in a fixed order inside its item, so results are
bitwise identical for any thread count. Drivers that call GEMM from a ``prange``
expect the Python layer to hold BLAS to one thread.

Band convention: ``lower`` and ``upper`` are already clipped to the matrix
(``0 <= lower < n_in``, ``0 <= upper < n_out``); entry ``(i, j)`` of w is in the
band when ``-upper <= i - j <= lower``, i.e. on diagonal ``d = i - j``.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.string cimport memcpy

from fastnn_ext._blas cimport gemm

import numpy as np

# Output columns per item of the diagonal kernels: the item's slice of a y row
# (1 KiB in float32) and its diagonals of w stay in L1/L2 while every batch row
# streams past them.
DEF DIAG_COLS = 256


cdef inline Py_ssize_t imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline Py_ssize_t imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


# ------------------------------------------------------------------ banded: diagonal kernel
cdef inline Py_ssize_t diag_span(Py_ssize_t k, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t j1,
                                 Py_ssize_t n_in, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    # Diagonal k of a column block is d = i - j = k - upper; its columns j in
    # [lo, hi) are those of [j0, j1) whose row j + d lies in [0, n_in).
    cdef Py_ssize_t d = k - upper
    lo[0] = imax(j0, -d)
    hi[0] = imin(j1, n_in - d)
    return d


cdef void diag_item(const floating[:, ::1] x, const floating[:, :] w, floating[:, ::1] y,
                    Py_ssize_t lower, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t j1,
                    floating* wd) noexcept nogil:
    # wd[k, jj] = w[j0 + jj + d, j0 + jj] with d = k - upper: the band of this
    # column block stored by diagonals, so that the inner loop runs along j with
    # unit stride in x, wd and y alike (vectorises for any band width).
    cdef Py_ssize_t B = x.shape[0], n_in = x.shape[1]
    cdef Py_ssize_t nd = lower + upper + 1, width = j1 - j0
    cdef Py_ssize_t k, d, j, lo, hi, b
    cdef const floating* xr0
    cdef const floating* xr1
    cdef const floating* xr2
    cdef const floating* xr3
    cdef floating* yr0
    cdef floating* yr1
    cdef floating* yr2
    cdef floating* yr3
    cdef floating* wk
    cdef floating v
    for k in range(nd):
        d = diag_span(k, upper, j0, j1, n_in, &lo, &hi)
        for j in range(lo, hi):
            wd[k * width + j - j0] = w[j + d, j]
    b = 0
    while b + 4 <= B:
        yr0 = &y[b, 0]
        yr1 = &y[b + 1, 0]
        yr2 = &y[b + 2, 0]
        yr3 = &y[b + 3, 0]
        xr0 = &x[b, 0]
        xr1 = &x[b + 1, 0]
        xr2 = &x[b + 2, 0]
        xr3 = &x[b + 3, 0]
        for k in range(nd):
            d = diag_span(k, upper, j0, j1, n_in, &lo, &hi)
            wk = wd + k * width - j0
            for j in range(lo, hi):
                v = wk[j]
                yr0[j] += xr0[j + d] * v
                yr1[j] += xr1[j + d] * v
                yr2[j] += xr2[j + d] * v
                yr3[j] += xr3[j + d] * v
        b += 4
    while b < B:
        yr0 = &y[b, 0]
        xr0 = &x[b, 0]
        for k in range(nd):
            d = diag_span(k, upper, j0, j1, n_in, &lo, &hi)
            wk = wd + k * width - j0
            for j in range(lo, hi):
                yr0[j] += xr0[j + d] * wk[j]
        b += 1


cdef void diag_grad_item(const floating[:, ::1] x, const floating[:, ::1] gy, floating[:, ::1] gw,
                         Py_ssize_t lower, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t j1,
                         floating* gd) noexcept nogil:
    # gd[k, jj] = sum_b x[b, j + d] * gy[b, j] for j = j0 + jj, summed over b in order.
    cdef Py_ssize_t B = x.shape[0], n_in = x.shape[1]
    cdef Py_ssize_t nd = lower + upper + 1, width = j1 - j0
    cdef Py_ssize_t k, d, j, lo, hi, b
    cdef const floating* xr
    cdef const floating* gr
    cdef floating* gk
    for k in range(nd * width):
        gd[k] = 0
    for b in range(B):
        xr = &x[b, 0]
        gr = &gy[b, 0]
        for k in range(nd):
            d = diag_span(k, upper, j0, j1, n_in, &lo, &hi)
            gk = gd + k * width - j0
            for j in range(lo, hi):
                gk[j] += xr[j + d] * gr[j]
    for k in range(nd):
        d = diag_span(k, upper, j0, j1, n_in, &lo, &hi)
        for j in range(lo, hi):
            gw[j + d, j] = gd[k * width + j - j0]


def band_diag(const floating[:, ::1] x, const floating[:, :] w, const floating[:, ::1] gy,
              floating[:, ::1] out, Py_ssize_t lower, Py_ssize_t upper, bint weight_grad,
              int num_threads):
    """By diagonals, per block of output columns: ``out += x @ band(w)`` (out holds
    the bias or zeros), or with ``weight_grad`` ``out[band] = (x^T @ gy)[band]``
    (out is zero outside the band on entry; w is not read)."""
    cdef Py_ssize_t n_out = out.shape[1]
    cdef Py_ssize_t nblocks = (n_out + DIAG_COLS - 1) // DIAG_COLS, blk, j0, j1
    cdef Py_ssize_t nd = lower + upper + 1
    cdef floating* scratch
    if num_threads > nblocks:
        num_threads = <int>nblocks
    with nogil:
        for blk in prange(nblocks, schedule="static", num_threads=num_threads):
            scratch = <floating*>malloc(nd * DIAG_COLS * sizeof(floating))
            if scratch != NULL:
                j0 = blk * DIAG_COLS
                j1 = imin(j0 + DIAG_COLS, n_out)
                if weight_grad:
                    diag_grad_item(x, gy, out, lower, upper, j0, j1, scratch)
                else:
                    diag_item(x, w, out, lower, upper, j0, j1, scratch)
                free(scratch)


# ------------------------------------------------------------------ banded: GEMM tiles
cdef inline void tile_rows(Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t lower, Py_ssize_t upper,
                           Py_ssize_t n_in, Py_ssize_t* i0, Py_ssize_t* i1) noexcept nogil:
    # Rows of w that columns [j0, j1) touch inside the band.
    i0[0] = imax(0, j0 - upper)
    i1[0] = imin(n_in, j1 - 1 + lower + 1)
    if i1[0] < i0[0]:
        i1[0] = i0[0]


cdef void tiled_item(const floating[:, ::1] x, const floating[:, :] w, floating[:, ::1] y,
                     Py_ssize_t lower, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t j1,
                     floating* tile) noexcept nogil:
    cdef Py_ssize_t B = x.shape[0], n_in = x.shape[1], n_out = y.shape[1]
    cdef Py_ssize_t i0, i1, i, j, width = j1 - j0
    tile_rows(j0, j1, lower, upper, n_in, &i0, &i1)
    if i1 <= i0:
        return
    for i in range(i0, i1):
        for j in range(j0, j1):
            tile[(i - i0) * width + j - j0] = \
                w[i, j] if (i - j <= lower and j - i <= upper) else 0
    gemm(False, False, B, width, i1 - i0, <floating>1, &x[0, i0], n_in,
         tile, width, <floating>1, &y[0, j0], n_out)


cdef void tiled_grad_item(const floating[:, ::1] x, const floating[:, ::1] gy, floating[:, ::1] gw,
                          Py_ssize_t lower, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t j1,
                          floating* tile) noexcept nogil:
    cdef Py_ssize_t B = x.shape[0], n_in = x.shape[1], n_out = gy.shape[1]
    cdef Py_ssize_t i0, i1, i, j, width = j1 - j0
    tile_rows(j0, j1, lower, upper, n_in, &i0, &i1)
    if i1 <= i0:
        return
    gemm(True, False, i1 - i0, width, B, <floating>1, &x[0, i0], n_in,
         &gy[0, j0], n_out, <floating>0, tile, width)
    for i in range(i0, i1):
        for j in range(imax(j0, i - lower), imin(j1, i + upper + 1)):
            gw[i, j] = tile[(i - i0) * width + j - j0]


def band_tiled(const floating[:, ::1] x, const floating[:, :] w, const floating[:, ::1] gy,
               floating[:, ::1] out, Py_ssize_t lower, Py_ssize_t upper, Py_ssize_t block,
               bint weight_grad, int num_threads):
    """One GEMM per block of ``block`` output columns on the rows of w that the
    block's band touches: ``out += x @ band(w)`` through a masked copy of that tile
    of w, or with ``weight_grad`` ``out[band] = (x^T @ gy)[band]`` through a tile
    of x^T @ gy (out is zero outside the band on entry; w is not read)."""
    cdef Py_ssize_t n_in = x.shape[1], n_out = out.shape[1]
    cdef Py_ssize_t nblocks = (n_out + block - 1) // block, blk, j0, j1
    cdef Py_ssize_t tile_size = imax(1, imin(n_in, block + lower + upper) * block)
    cdef floating* tile
    if num_threads > nblocks:
        num_threads = <int>nblocks
    with nogil:
        for blk in prange(nblocks, schedule="static", num_threads=num_threads):
            tile = <floating*>malloc(tile_size * sizeof(floating))
            if tile != NULL:
                j0 = blk * block
                j1 = imin(j0 + block, n_out)
                if weight_grad:
                    tiled_grad_item(x, gy, out, lower, upper, j0, j1, tile)
                else:
                    tiled_item(x, w, out, lower, upper, j0, j1, tile)
                free(tile)


# ------------------------------------------------------------------ dense helpers
def dense_gemm(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
               bint trans_b, floating beta):
    """c = a @ op(b) + beta * c by one BLAS call (BLAS may use its own threads)."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], k = a.shape[1]
    cdef Py_ssize_t ldb = b.shape[1]
    if m == 0 or n == 0:
        return
    with nogil:
        gemm(False, trans_b, m, n, k, <floating>1, &a[0, 0] if k else NULL, k,
             &b[0, 0] if k else NULL, ldb, beta, &c[0, 0], n)


def dense_at_b(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c):
    """c = a^T @ b by one BLAS call."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], k = a.shape[0]
    if m == 0 or n == 0:
        return
    with nogil:
        gemm(True, False, m, n, k, <floating>1, &a[0, 0] if k else NULL, m,
             &b[0, 0] if k else NULL, n, <floating>0, &c[0, 0], n)


def apply_mask(const floating[:, :] w, const uint8_t[:, ::1] mask, floating[:, ::1] out,
               int num_threads):
    """out = w where mask else 0 (exact zeros: a NaN under a zero mask is dropped)."""
    cdef Py_ssize_t n0 = out.shape[0], n1 = out.shape[1], i, j
    with nogil:
        for i in prange(n0, schedule="static", num_threads=num_threads):
            for j in range(n1):
                out[i, j] = w[i, j] if mask[i, j] else 0


# ------------------------------------------------------------------ masked: sparse index
cdef Py_ssize_t count_row(const uint8_t* m, Py_ssize_t n) noexcept nogil:
    # Skips zero bytes eight at a time: sparse masks are mostly zero words.
    cdef Py_ssize_t j = 0, c = 0
    cdef uint64_t word
    while j + 8 <= n:
        memcpy(&word, m + j, 8)
        if word != 0:
            c += (m[j] != 0) + (m[j + 1] != 0) + (m[j + 2] != 0) + (m[j + 3] != 0) \
                + (m[j + 4] != 0) + (m[j + 5] != 0) + (m[j + 6] != 0) + (m[j + 7] != 0)
        j += 8
    while j < n:
        c += m[j] != 0
        j += 1
    return c


def mask_row_counts(const uint8_t[:, ::1] mask, int64_t[::1] counts, int num_threads):
    """counts[i] = non-zeros of mask row i."""
    cdef Py_ssize_t n0 = mask.shape[0], n1 = mask.shape[1], i
    with nogil:
        for i in prange(n0, schedule="static", num_threads=num_threads):
            counts[i] = count_row(&mask[i, 0], n1) if n1 else 0


def mask_index(const uint8_t[:, ::1] mask, const int64_t[::1] row_ptr, int64_t[::1] row_cols,
               int64_t[::1] col_ptr, int64_t[::1] col_rows, int num_threads):
    """Fill the CSR column indices (row_ptr given) and the CSC row indices (rows
    ascending within each column; col_ptr has n1 + 1 entries, filled here)."""
    cdef Py_ssize_t n0 = mask.shape[0], n1 = mask.shape[1], i, j, p, q
    cdef int64_t[::1] fill = np.empty(n1 + 1, dtype=np.int64)
    with nogil:
        for i in prange(n0, schedule="static", num_threads=num_threads):
            q = row_ptr[i]
            for j in range(n1):
                if mask[i, j]:
                    row_cols[q] = j
                    q = q + 1
        for j in range(n1 + 1):
            col_ptr[j] = 0
        for p in range(row_ptr[n0]):
            col_ptr[row_cols[p] + 1] += 1
        for j in range(n1):
            col_ptr[j + 1] += col_ptr[j]
        for j in range(n1):
            fill[j] = col_ptr[j]
        for i in range(n0):
            for p in range(row_ptr[i], row_ptr[i + 1]):
                j = row_cols[p]
                col_rows[fill[j]] = i
                fill[j] += 1


def sparse_rows(const floating[:, ::1] src_t, const floating[:, :] w, const int64_t[::1] ptr,
                const int64_t[::1] idx, floating[:, ::1] dst_t, int num_threads):
    """dst_t[r, :] += sum_p w[r, idx[p]] * src_t[idx[p], :] over p in ptr[r]:ptr[r+1].

    The batch is the contiguous last axis, so every non-zero is a vector update."""
    cdef Py_ssize_t n_dst = dst_t.shape[0], B = dst_t.shape[1], r, p, c, b
    cdef floating v
    cdef floating* dr
    cdef const floating* sr
    if B == 0:
        return
    with nogil:
        for r in prange(n_dst, schedule="static", num_threads=num_threads):
            dr = &dst_t[r, 0]
            for p in range(ptr[r], ptr[r + 1]):
                c = idx[p]
                v = w[r, c]
                sr = &src_t[c, 0]
                for b in range(B):
                    dr[b] += v * sr[b]


def sparse_weight_grad(const floating[:, ::1] x_t, const floating[:, ::1] gy_t,
                       const int64_t[::1] row_ptr, const int64_t[::1] row_cols,
                       floating[:, ::1] gw, int num_threads):
    """gw[i, j] = x_t[i, :] . gy_t[j, :] at the non-zeros (gw is zero elsewhere)."""
    cdef Py_ssize_t n0 = gw.shape[0], B = x_t.shape[1], i, p, j, b
    cdef floating s
    cdef const floating* xr
    cdef const floating* gr
    with nogil:
        for i in prange(n0, schedule="static", num_threads=num_threads):
            xr = &x_t[i, 0] if B else NULL
            for p in range(row_ptr[i], row_ptr[i + 1]):
                j = row_cols[p]
                s = 0
                if B:
                    gr = &gy_t[j, 0]
                    for b in range(B):
                        s = s + xr[b] * gr[b]
                gw[i, j] = s


# ------------------------------------------------------------------ locally connected
def local_forward(const floating[:, :, ::1] cols, const floating[:, :, ::1] w,
                  floating[:, :, ::1] y, floating beta, int num_threads):
    """y[:, p, :] = cols[:, p, :] @ w[p] + beta * y[:, p, :] for every position p."""
    cdef Py_ssize_t N = cols.shape[0], P = cols.shape[1], ckk = cols.shape[2], K = w.shape[2], p
    if N == 0 or P == 0 or K == 0:
        return
    with nogil:
        for p in prange(P, schedule="static", num_threads=num_threads):
            gemm(False, False, N, K, ckk, <floating>1, &cols[0, p, 0] if ckk else NULL, P * ckk,
                 &w[p, 0, 0] if ckk else NULL, K, beta, &y[0, p, 0], P * K)


def local_weight_grad(const floating[:, :, ::1] cols, const floating[:, :, ::1] gy,
                      floating[:, :, ::1] gw, int num_threads):
    """gw[p] = cols[:, p, :]^T @ gy[:, p, :]."""
    cdef Py_ssize_t N = cols.shape[0], P = gw.shape[0], ckk = gw.shape[1], K = gw.shape[2], p
    if P == 0 or ckk == 0 or K == 0:
        return
    with nogil:
        for p in prange(P, schedule="static", num_threads=num_threads):
            gemm(True, False, ckk, K, N, <floating>1, &cols[0, p, 0] if N else NULL, P * ckk,
                 &gy[0, p, 0] if N else NULL, P * K, <floating>0, &gw[p, 0, 0], K)


def local_cols_grad(const floating[:, :, ::1] gy, const floating[:, :, ::1] w,
                    floating[:, :, ::1] gcols, int num_threads):
    """gcols[:, p, :] = gy[:, p, :] @ w[p]^T."""
    cdef Py_ssize_t N = gy.shape[0], P = gy.shape[1], K = gy.shape[2], ckk = w.shape[1], p
    if N == 0 or P == 0 or ckk == 0:
        return
    with nogil:
        for p in prange(P, schedule="static", num_threads=num_threads):
            gemm(False, True, N, ckk, K, <floating>1, &gy[0, p, 0] if K else NULL, P * K,
                 &w[p, 0, 0] if K else NULL, K, <floating>0, &gcols[0, p, 0], P * ckk)
