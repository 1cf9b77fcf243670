# cython: language_level=3
"""Banded and masked matrix products (forward and backward).

Every driver splits its work into items chosen from the shape alone (column
blocks, rows, output positions), each output element is produced by exactly one
item and every reduction runs in a fixed order inside its item, so results are
bitwise identical for any thread count. Products inside a ``prange`` run on the
register-blocked kernel (``pgemm``), never BLAS.

Band convention: ``lower`` and ``upper`` are already clipped to the matrix
(``0 <= lower < n_in``, ``0 <= upper < n_out``); entry ``(i, j)`` of w is in the
band when ``-upper <= i - j <= lower``, i.e. on diagonal ``d = i - j``.
"""
from cython cimport floating
from fastnn_ext._openmp cimport team
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.stdint cimport uint8_t, uint64_t, int64_t

from fastnn_ext._ukernel cimport fastnn_ukernel_pick, pgemm, transpose_tile


import numpy as np


# Output columns per item of the diagonal kernels: the item's slice of a y row
# (1 KiB in float32) and its diagonals of w stay in L1/L2 while every batch row
# streams past them.
DEF DIAG_COLS = 256
# Rows of w requested ahead while a diagonal block is gathered.
DEF PREFETCH_ROWS = 16
# Rows of the sparse products' output per item.
DEF SPARSE_ROWS = 64


cdef inline Py_ssize_t imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline Py_ssize_t imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


# The inner loops of the diagonal and sparse kernels, in C: they carry `restrict`
# (gcc vectorises the streaming loops without alias checks), the register tiles use
# explicit GCC/clang vector types (gcc's SLP pass turned the equivalent arrays
# of scalars into scalar code: measured 3x slower on the sparse rows), and gcc
# compiles each for AVX-512, AVX2 and the baseline, picked at import (_simd.h), so a
# portable build still runs full-width vectors.
cdef extern from "_band_tiles.h":
    int fastnn_band_pick() noexcept nogil
    void fastnn_band_rows4_f32(float* y0, float* y1, float* y2, float* y3, const float* x0,
                               const float* x1, const float* x2, const float* x3,
                               const float* wk, Py_ssize_t n) noexcept nogil
    void fastnn_band_rows4_f64(double* y0, double* y1, double* y2, double* y3, const double* x0,
                               const double* x1, const double* x2, const double* x3,
                               const double* wk, Py_ssize_t n) noexcept nogil
    void fastnn_band_tile4_f32(float* y, Py_ssize_t ldy, const float* x, Py_ssize_t ldx,
                               const float* wd, Py_ssize_t ldw, Py_ssize_t nd) noexcept nogil
    void fastnn_band_tile4_f64(double* y, Py_ssize_t ldy, const double* x, Py_ssize_t ldx,
                               const double* wd, Py_ssize_t ldw, Py_ssize_t nd) noexcept nogil
    void fastnn_band_gtile4_f32(float* gd, Py_ssize_t ldg, const float* x, Py_ssize_t ldx,
                                const float* gy, Py_ssize_t ldgy, Py_ssize_t B) noexcept nogil
    void fastnn_band_gtile4_f64(double* gd, Py_ssize_t ldg, const double* x, Py_ssize_t ldx,
                                const double* gy, Py_ssize_t ldgy, Py_ssize_t B) noexcept nogil
    void fastnn_band_row_f32(float* y, const float* x, const float* wk,
                             Py_ssize_t n) noexcept nogil
    void fastnn_band_row_f64(double* y, const double* x, const double* wk,
                             Py_ssize_t n) noexcept nogil
    void fastnn_sparse_row_f32(float* y, const float* src, Py_ssize_t ld, const float* vals,
                               const int64_t* idx, Py_ssize_t p0, Py_ssize_t p1,
                               Py_ssize_t n) noexcept nogil
    void fastnn_sparse_row_f64(double* y, const double* src, Py_ssize_t ld, const double* vals,
                               const int64_t* idx, Py_ssize_t p0, Py_ssize_t p1,
                               Py_ssize_t n) noexcept nogil
    void fastnn_prefetch(const void* p) noexcept nogil
    Py_ssize_t fastnn_count_ones(const uint8_t* m, Py_ssize_t n) noexcept nogil
    uint64_t fastnn_nonzero_bits64(const uint8_t* m) noexcept nogil
    int fastnn_lowest_bit(uint64_t v) noexcept nogil
    void fastnn_mask_f32(const float* w, const uint8_t* m, float* out, Py_ssize_t n) noexcept nogil
    void fastnn_mask_f64(const double* w, const uint8_t* m, double* out,
                         Py_ssize_t n) noexcept nogil


# The SIMD level of the tiles above and of the products inside the pranges (the
# register-blocked kernel, pgemm), like every family's (_simd.h).
SIMD_LEVEL = fastnn_band_pick()
fastnn_ukernel_pick()


cdef inline void band_rows4(floating* y0, floating* y1, floating* y2, floating* y3,
                            const floating* x0, const floating* x1, const floating* x2,
                            const floating* x3, const floating* wk,
                            Py_ssize_t n) noexcept nogil:
    # y_r[j] += x_r[j] * wk[j] for j < n, four rows sharing one load of wk.
    if floating is float:
        fastnn_band_rows4_f32(y0, y1, y2, y3, x0, x1, x2, x3, wk, n)
    else:
        fastnn_band_rows4_f64(y0, y1, y2, y3, x0, x1, x2, x3, wk, n)


cdef inline Py_ssize_t tile_cols(floating* dummy) noexcept nogil:
    # Columns of one register tile of fastnn_band_tile4 (two 512-bit vectors).
    return 32 if floating is float else 16


cdef inline void band_tile4(floating* y, Py_ssize_t ldy, const floating* x, Py_ssize_t ldx,
                            const floating* wd, Py_ssize_t ldw, Py_ssize_t nd) noexcept nogil:
    if floating is float:
        fastnn_band_tile4_f32(y, ldy, x, ldx, wd, ldw, nd)
    else:
        fastnn_band_tile4_f64(y, ldy, x, ldx, wd, ldw, nd)


cdef inline void band_gtile4(floating* gd, Py_ssize_t ldg, const floating* x, Py_ssize_t ldx,
                             const floating* gy, Py_ssize_t ldgy, Py_ssize_t B) noexcept nogil:
    if floating is float:
        fastnn_band_gtile4_f32(gd, ldg, x, ldx, gy, ldgy, B)
    else:
        fastnn_band_gtile4_f64(gd, ldg, x, ldx, gy, ldgy, B)


cdef inline void band_row(floating* y, const floating* x, const floating* wk,
                          Py_ssize_t n) noexcept nogil:
    if floating is float:
        fastnn_band_row_f32(y, x, wk, n)
    else:
        fastnn_band_row_f64(y, x, wk, n)


cdef inline void sparse_row(floating* y, const floating* src, Py_ssize_t ld,
                            const floating* vals, const int64_t* idx, Py_ssize_t p0,
                            Py_ssize_t p1, Py_ssize_t n) noexcept nogil:
    # y[:n] += sum over p in [p0, p1) of vals[p] * src[idx[p] * ld :][:n], p in order.
    if floating is float:
        fastnn_sparse_row_f32(y, src, ld, vals, idx, p0, p1, n)
    else:
        fastnn_sparse_row_f64(y, src, ld, vals, idx, p0, p1, n)


# ------------------------------------------------------------------ banded: diagonal kernel
cdef inline Py_ssize_t diag_span(Py_ssize_t k, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t j1,
                                 Py_ssize_t n_in, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    # Diagonal k of a column block is d = i - j = k - upper; its columns j in
    # [lo, hi) are those of [j0, j1) whose row j + d lies in [0, n_in).
    cdef Py_ssize_t d = k - upper
    lo[0] = imax(j0, -d)
    hi[0] = imin(j1, n_in - d)
    return d


cdef inline void diag_rows4(const floating[:, ::1] x, floating[:, ::1] y, const floating* wd,
                            Py_ssize_t nd, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t width,
                            Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t b) noexcept nogil:
    # Rows b..b+3, columns [c0, c1) of the diagonal block that starts at column j0
    # (wd holds its diagonals, width columns each), streaming y once per diagonal.
    cdef Py_ssize_t k, d, lo, hi, n_in = x.shape[1]
    if c1 <= c0:
        return
    for k in range(nd):
        d = diag_span(k, upper, c0, c1, n_in, &lo, &hi)
        if hi > lo:
            band_rows4(&y[b, lo], &y[b + 1, lo], &y[b + 2, lo], &y[b + 3, lo], &x[b, lo + d],
                       &x[b + 1, lo + d], &x[b + 2, lo + d], &x[b + 3, lo + d],
                       wd + k * width + lo - j0, hi - lo)


cdef void diag_item(const floating[:, ::1] x, const floating[:, :] w, floating[:, ::1] y,
                    Py_ssize_t lower, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t j1,
                    floating* wd) noexcept nogil:
    # wd[k, jj] = w[j0 + jj + d, j0 + jj] with d = k - upper: the band of this
    # column block stored by diagonals, so that the inner loop runs along j with
    # unit stride in x, wd and y alike (vectorises for any band width). It is
    # gathered row by row: each row's band is a contiguous run of w, where walking
    # a diagonal of a wide w would touch a new page per element.
    cdef Py_ssize_t B = x.shape[0], n_in = x.shape[1]
    cdef Py_ssize_t nd = lower + upper + 1, width = j1 - j0
    cdef Py_ssize_t k, d, j, lo, hi, b, i
    cdef Py_ssize_t i_end = imin(n_in, j1 + lower), ip
    if w.strides[1] <= w.strides[0]:
        for i in range(imax(0, j0 - upper), i_end):
            # Each row's run lies a whole row of w past the previous one, a stride
            # the hardware prefetcher does not follow: ask for rows ahead.
            ip = i + PREFETCH_ROWS
            if ip < i_end:
                fastnn_prefetch(&w[ip, imin(imax(j0, ip - lower), w.shape[1] - 1)])
            for j in range(imax(j0, i - lower), imin(j1, i + upper + 1)):
                wd[(i - j + upper) * width + j - j0] = w[i, j]
    else:   # a transposed w (the backward's grad_x): its columns are the runs
        for j in range(j0, j1):
            ip = j + PREFETCH_ROWS
            if ip < j1:
                fastnn_prefetch(&w[imin(imax(0, ip - upper), n_in - 1), ip])
            for i in range(imax(0, j - upper), imin(n_in, j + lower + 1)):
                wd[(i - j + upper) * width + j - j0] = w[i, j]
    # Columns [a, e) read only rows of x that exist on every diagonal; whole
    # register tiles cover [a, t), the streaming loops the edges.
    cdef Py_ssize_t tc = tile_cols(wd), ldy = y.shape[1], a, e, t, c
    a = imin(imax(j0, upper), j1)
    e = imax(imin(j1, n_in - lower), a)
    t = a + (e - a) // tc * tc
    b = 0
    while b + 4 <= B:
        diag_rows4(x, y, wd, nd, upper, j0, width, j0, a, b)
        c = a
        while c < t:
            band_tile4(&y[b, c], ldy, &x[b, c - upper], n_in, wd + c - j0, width, nd)
            c += tc
        diag_rows4(x, y, wd, nd, upper, j0, width, t, j1, b)
        b += 4
    while b < B:
        for k in range(nd):
            d = diag_span(k, upper, j0, j1, n_in, &lo, &hi)
            if hi > lo:
                band_row(&y[b, lo], &x[b, lo + d], wd + k * width + lo - j0, hi - lo)
        b += 1


cdef inline void stream_grad(floating* gk, const floating* xr, const floating* gr, Py_ssize_t d,
                             Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # gk[j] += xr[j + d] * gr[j] for j in [lo, hi) (gk indexed by column).
    if hi > lo:
        band_row(gk + lo, xr + lo + d, gr + lo, hi - lo)


cdef void diag_grad_item(const floating[:, ::1] x, const floating[:, ::1] gy, floating[:, ::1] gw,
                         Py_ssize_t lower, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t j1,
                         floating* gd) noexcept nogil:
    # gd[k, jj] = sum_b x[b, j + d] * gy[b, j] for j = j0 + jj, summed over b in order,
    # then written to gw row by row (contiguous runs, as the gather of diag_item).
    # Register tiles (four diagonals by tile_cols columns) cover the columns that
    # every diagonal reaches, [a, t), for the first kt diagonals; the streaming loop
    # does the rest.
    cdef Py_ssize_t B = x.shape[0], n_in = x.shape[1], n_out = gy.shape[1]
    cdef Py_ssize_t nd = lower + upper + 1, width = j1 - j0
    cdef Py_ssize_t k, d, j, lo, hi, b, i, c
    cdef Py_ssize_t tc = tile_cols(gd), a, e, t, kt = nd // 4 * 4
    a = imin(imax(j0, upper), j1)
    e = imax(imin(j1, n_in - lower), a)
    t = a + (e - a) // tc * tc
    for k in range(nd * width):
        gd[k] = 0
    for k in range(0, kt, 4):
        c = a
        while c < t:
            band_gtile4(gd + k * width + c - j0, width, &x[0, c + k - upper], n_in, &gy[0, c],
                        n_out, B)
            c += tc
    for b in range(B):
        for k in range(nd):
            d = diag_span(k, upper, j0, j1, n_in, &lo, &hi)
            if k < kt and t > a:
                stream_grad(gd + k * width - j0, &x[b, 0], &gy[b, 0], d, lo, a)
                stream_grad(gd + k * width - j0, &x[b, 0], &gy[b, 0], d, t, hi)
            else:
                stream_grad(gd + k * width - j0, &x[b, 0], &gy[b, 0], d, lo, hi)
    for i in range(imax(0, j0 - upper), imin(n_in, j1 + lower)):
        for j in range(imax(j0, i - lower), imin(j1, i + upper + 1)):
            gw[i, j] = gd[(i - j + upper) * width + j - j0]


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
    cdef int failed = 0
    cdef int* failed_p = &failed
    if num_threads > nblocks:
        num_threads = <int>nblocks
    with nogil:
        for blk in prange(nblocks, schedule="static", num_threads=team(num_threads, nblocks)):
            scratch = <floating*>malloc(nd * DIAG_COLS * sizeof(floating))
            if scratch == NULL:
                # A skipped block would leave its columns silently wrong.
                failed_p[0] = 1
            else:
                j0 = blk * DIAG_COLS
                j1 = imin(j0 + DIAG_COLS, n_out)
                if weight_grad:
                    diag_grad_item(x, gy, out, lower, upper, j0, j1, scratch)
                else:
                    diag_item(x, w, out, lower, upper, j0, j1, scratch)
                free(scratch)
    if failed:
        raise MemoryError(f"could not allocate {nd * DIAG_COLS * sizeof(floating)} bytes of "
                          f"scratch for the band's diagonals ({nd} diagonals)")


# ------------------------------------------------------------------ banded: GEMM tiles
cdef inline void tile_rows(Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t lower, Py_ssize_t upper,
                           Py_ssize_t n_in, Py_ssize_t* i0, Py_ssize_t* i1) noexcept nogil:
    # Rows of w that columns [j0, j1) touch inside the band.
    i0[0] = imax(0, j0 - upper)
    i1[0] = imin(n_in, j1 - 1 + lower + 1)
    if i1[0] < i0[0]:
        i1[0] = i0[0]


cdef inline void band_tile_row(floating* row, const floating* src, Py_ssize_t i,
                               Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t lower,
                               Py_ssize_t upper) noexcept nogil:
    # row[j - j0] = src[j - j0] on row i's band columns of [j0, j1), 0 elsewhere (exact
    # zeros: a NaN outside the band is dropped). src may be row itself.
    cdef Py_ssize_t j, lo = imax(j0, i - lower), hi = imin(j1, i + upper + 1)
    if hi < lo:
        hi = lo = j1
    for j in range(j0, lo):
        row[j - j0] = 0
    if src != <const floating*>row:
        for j in range(lo, hi):
            row[j - j0] = src[j - j0]
    for j in range(hi, j1):
        row[j - j0] = 0


cdef void tiled_item(const floating[:, ::1] x, const floating[:, :] w, floating[:, ::1] y,
                     Py_ssize_t lower, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t j1,
                     floating* tile) noexcept nogil:
    # The tile of band(w) (rows [i0, i1), columns [j0, j1)) is copied a row at a time
    # (runs, not a test per element); a transposed w (backward: w.T) through the blocked
    # transpose of _transpose.h, then masked. Element by element with the band test,
    # these copies took as long as the products (banded_matmul_backward B128 n2048
    # band (256, 256)).
    cdef Py_ssize_t B = x.shape[0], n_in = x.shape[1], n_out = y.shape[1]
    cdef Py_ssize_t i0, i1, i, j, width = j1 - j0
    cdef Py_ssize_t s0 = w.strides[0] // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t s1 = w.strides[1] // <Py_ssize_t>sizeof(floating)
    tile_rows(j0, j1, lower, upper, n_in, &i0, &i1)
    if i1 <= i0:
        return
    if s1 == 1:
        for i in range(i0, i1):
            band_tile_row(tile + (i - i0) * width, &w[i, j0], i, j0, j1, lower, upper)
    elif s0 == 1:
        transpose_tile(&w[i0, j0], s1, tile, width, width, i1 - i0)
        for i in range(i0, i1):
            band_tile_row(tile + (i - i0) * width, tile + (i - i0) * width, i, j0, j1,
                          lower, upper)
    else:
        for j in range(j0, j1):
            for i in range(i0, i1):
                tile[(i - i0) * width + j - j0] = \
                    w[i, j] if (i - j <= lower and j - i <= upper) else 0
    pgemm(False, False, B, width, i1 - i0, <floating>1, &x[0, i0], n_in,
         tile, width, <floating>1, &y[0, j0], n_out)


cdef void tiled_grad_item(const floating[:, ::1] x, const floating[:, ::1] gy, floating[:, ::1] gw,
                          Py_ssize_t lower, Py_ssize_t upper, Py_ssize_t j0, Py_ssize_t j1,
                          floating* tile) noexcept nogil:
    cdef Py_ssize_t B = x.shape[0], n_in = x.shape[1], n_out = gy.shape[1]
    cdef Py_ssize_t i0, i1, i, j, width = j1 - j0
    tile_rows(j0, j1, lower, upper, n_in, &i0, &i1)
    if i1 <= i0:
        return
    pgemm(True, False, i1 - i0, width, B, <floating>1, &x[0, i0], n_in,
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
    cdef int failed = 0
    cdef int* failed_p = &failed
    if num_threads > nblocks:
        num_threads = <int>nblocks
    with nogil:
        for blk in prange(nblocks, schedule="static", num_threads=team(num_threads, nblocks)):
            tile = <floating*>malloc(tile_size * sizeof(floating))
            if tile == NULL:
                failed_p[0] = 1
            else:
                j0 = blk * block
                j1 = imin(j0 + block, n_out)
                if weight_grad:
                    tiled_grad_item(x, gy, out, lower, upper, j0, j1, tile)
                else:
                    tiled_item(x, w, out, lower, upper, j0, j1, tile)
                free(tile)
    if failed:
        raise MemoryError(f"could not allocate {tile_size * sizeof(floating)} bytes of scratch "
                          f"for a tile of the band")


# ------------------------------------------------------------------ masks
def apply_mask(const floating[:, ::1] w, const uint8_t[:, ::1] mask, floating[:, ::1] out,
               int num_threads):
    """out = w where mask else 0 (exact zeros: a NaN under a zero mask is dropped).
    ``out`` may be ``w`` itself."""
    cdef Py_ssize_t n0 = out.shape[0], n1 = out.shape[1], i
    if n1 == 0:
        return
    with nogil:
        for i in prange(n0, schedule="static", num_threads=team(num_threads, n0)):
            if floating is float:
                fastnn_mask_f32(&w[i, 0], &mask[i, 0], &out[i, 0], n1)
            else:
                fastnn_mask_f64(&w[i, 0], &mask[i, 0], &out[i, 0], n1)


# ------------------------------------------------------------------ masked: sparse index
cdef Py_ssize_t fill_row(const uint8_t* m, Py_ssize_t n, int64_t* cols) noexcept nogil:
    # The columns of the non-zeros of a mask row into cols; returns their count.
    # 64 bytes at a time: the run's non-zero bytes as the bits of one word (bit
    # arithmetic, no branch per byte; _band_tiles.h), then only the set bits are
    # visited, lowest first.
    cdef Py_ssize_t j = 0, c = 0
    cdef uint64_t bits
    while j + 64 <= n:
        bits = fastnn_nonzero_bits64(m + j)
        while bits:
            cols[c] = j + fastnn_lowest_bit(bits)
            c += 1
            bits &= bits - 1
        j += 64
    while j < n:
        if m[j]:
            cols[c] = j
            c += 1
        j += 1
    return c


def mask_row_counts(const uint8_t[:, ::1] mask, int64_t[::1] counts, int num_threads):
    """counts[i] = non-zeros of mask row i."""
    cdef Py_ssize_t n0 = mask.shape[0], n1 = mask.shape[1], i
    with nogil:
        for i in prange(n0, schedule="static", num_threads=team(num_threads, n0)):
            counts[i] = fastnn_count_ones(&mask[i, 0], n1) if n1 else 0


def mask_index(const uint8_t[:, ::1] mask, const int64_t[::1] row_ptr, int64_t[::1] row_cols,
               int64_t[::1] col_ptr, int64_t[::1] col_rows, int64_t[::1] csr_to_csc,
               int num_threads):
    """Fill the CSR column indices (row_ptr given), the CSC row indices (rows
    ascending within each column; col_ptr has n1 + 1 entries, filled here) and,
    for each CSR entry, its position in the CSC order.

    A counting sort in bands of rows, one band per thread: each band counts its
    entries per column, the counts give every band its first slot in each column
    (bands in row order, so the order is the same for any number of bands), and each
    band writes its entries there."""
    cdef Py_ssize_t n0 = mask.shape[0], n1 = mask.shape[1], i, j, p, q, b, r0, r1, total
    cdef Py_ssize_t bands = team(num_threads, n0)
    cdef int64_t* slots
    cdef int64_t* mine
    if n0 == 0:
        col_ptr[:] = 0
        return
    slots = <int64_t*>malloc(bands * (n1 + 1) * sizeof(int64_t))
    if slots == NULL:
        raise MemoryError(f"could not allocate {bands * (n1 + 1) * sizeof(int64_t)} bytes "
                          f"for the mask's column counts")
    with nogil:
        for b in prange(bands, schedule="static", num_threads=bands):
            mine = slots + b * (n1 + 1)
            for j in range(n1 + 1):
                mine[j] = 0
            r0 = b * n0 // bands
            r1 = (b + 1) * n0 // bands
            for i in range(r0, r1):
                if n1 and row_ptr[i + 1] > row_ptr[i]:
                    fill_row(&mask[i, 0], n1, &row_cols[row_ptr[i]])
                    for p in range(row_ptr[i], row_ptr[i + 1]):
                        mine[row_cols[p]] += 1
        total = 0
        for j in range(n1):
            col_ptr[j] = total
            for b in range(bands):
                q = slots[b * (n1 + 1) + j]
                slots[b * (n1 + 1) + j] = total
                total = total + q
        col_ptr[n1] = total
        for b in prange(bands, schedule="static", num_threads=bands):
            mine = slots + b * (n1 + 1)
            r0 = b * n0 // bands
            r1 = (b + 1) * n0 // bands
            for i in range(r0, r1):
                for p in range(row_ptr[i], row_ptr[i + 1]):
                    j = row_cols[p]
                    col_rows[mine[j]] = i
                    csr_to_csc[p] = mine[j]
                    mine[j] += 1
    free(slots)


def gather_values(const floating[:, ::1] w, const int64_t[::1] row_ptr,
                  const int64_t[::1] row_cols, const int64_t[::1] perm, bint permuted,
                  floating[::1] vals, int num_threads):
    """vals[q] = w[i, row_cols[p]] for the CSR entries p of row i, with q = p or
    (``permuted``) q = perm[p]: w is read in memory order whatever order vals
    takes, so a CSC walk never strides down the columns of a large w."""
    cdef Py_ssize_t n0 = w.shape[0], i, p
    with nogil:
        for i in prange(n0, schedule="static", num_threads=team(num_threads, n0)):
            if permuted:
                for p in range(row_ptr[i], row_ptr[i + 1]):
                    vals[perm[p]] = w[i, row_cols[p]]
            else:
                for p in range(row_ptr[i], row_ptr[i + 1]):
                    vals[p] = w[i, row_cols[p]]


cdef void sparse_block(const floating[:, ::1] src_t, const floating[::1] vals,
                       const int64_t[::1] ptr, const int64_t[::1] idx, floating[:, ::1] dst_t,
                       Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    # Rows [r0, r1) of dst_t, one cache line of batch columns at a time: the
    # slice of src_t that the rows gather from (n_src x 64 bytes) stays in L2, where
    # whole rows of a wide batch would be fetched from further out for every
    # non-zero.
    cdef Py_ssize_t B = dst_t.shape[1], ld = src_t.shape[1], b0 = 0, r, nb
    cdef Py_ssize_t chunk = 64 // sizeof(floating)
    while b0 < B:
        nb = imin(chunk, B - b0)
        for r in range(r0, r1):
            if ptr[r + 1] > ptr[r]:
                sparse_row(&dst_t[r, b0], &src_t[0, b0], ld, &vals[0], &idx[0], ptr[r],
                           ptr[r + 1], nb)
        b0 += chunk


def sparse_rows(const floating[:, ::1] src_t, const floating[::1] vals, const int64_t[::1] ptr,
                const int64_t[::1] idx, floating[:, ::1] dst_t, int num_threads):
    """dst_t[r, :] += sum_p vals[p] * src_t[idx[p], :] over p in ptr[r]:ptr[r+1].

    The batch is the contiguous last axis, so every non-zero is a vector update."""
    cdef Py_ssize_t n_dst = dst_t.shape[0], B = dst_t.shape[1], blk
    cdef Py_ssize_t nblocks = (n_dst + SPARSE_ROWS - 1) // SPARSE_ROWS
    if B == 0 or vals.shape[0] == 0:
        return
    with nogil:
        for blk in prange(nblocks, schedule="static", num_threads=team(num_threads, nblocks)):
            sparse_block(src_t, vals, ptr, idx, dst_t, blk * SPARSE_ROWS,
                         imin(blk * SPARSE_ROWS + SPARSE_ROWS, n_dst))


def transpose(const floating[:, :] a, floating[:, ::1] out, int num_threads):
    """out = a.T in 32 x 32 blocks (a any strides): the sparse kernels want the batch
    as the contiguous axis, and NumPy's strided copy of a transpose is ~10x slower."""
    cdef Py_ssize_t n0 = out.shape[0], n1 = out.shape[1], nb = (n0 + 31) // 32
    cdef Py_ssize_t blk, i0, j0, i, j
    with nogil:
        for blk in prange(nb, schedule="static", num_threads=team(num_threads, nb)):
            i0 = blk * 32
            for j0 in range(0, n1, 32):
                # The inner loop walks the long axis, so that the strided side
                # steps by the short one: a 32-row block at a stride of many KiB
                # would map every row to the same cache set.
                if n1 <= n0:
                    for j in range(j0, imin(j0 + 32, n1)):
                        for i in range(i0, imin(i0 + 32, n0)):
                            out[i, j] = a[j, i]
                else:
                    for i in range(i0, imin(i0 + 32, n0)):
                        for j in range(j0, imin(j0 + 32, n1)):
                            out[i, j] = a[j, i]


def sparse_weight_grad(const floating[:, ::1] x_t, const floating[:, ::1] gy_t,
                       const int64_t[::1] row_ptr, const int64_t[::1] row_cols,
                       floating[:, ::1] gw, int num_threads):
    """gw[i, j] = x_t[i, :] . gy_t[j, :] at the non-zeros (gw is zero elsewhere)."""
    cdef Py_ssize_t n0 = gw.shape[0], B = x_t.shape[1], i, p, j, b
    cdef floating s
    cdef const floating* xr
    cdef const floating* gr
    with nogil:
        for i in prange(n0, schedule="static", num_threads=team(num_threads, n0)):
            xr = &x_t[i, 0] if B else NULL
            for p in range(row_ptr[i], row_ptr[i + 1]):
                j = row_cols[p]
                s = 0
                if B:
                    gr = &gy_t[j, 0]
                    for b in range(B):
                        s = s + xr[b] * gr[b]
                gw[i, j] = s
