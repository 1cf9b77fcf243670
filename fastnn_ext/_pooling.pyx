# cython: language_level=3
"""Pooling kernels: max and average pooling over 2-D windows, forward and backward,
for NCHW and NHWC images (1-D pooling is the height-1 case).

Three layers (DESIGN.md). The ``def`` entry points take flat C-contiguous buffers
and a geometry tuple that :mod:`fastnn.pooling` has validated. Work items are whole
(image, channel) planes for NCHW and (image, channel block) columns for NHWC, so
every output element -- and, in the backward passes, every input-gradient element
-- belongs to one item and is summed in a fixed order: the results are bitwise
identical for any thread count.

The work items are C (the verbatim block below), so that every pointer can be
``restrict``. For each kernel tap the range of
outputs whose tap lies inside the image is computed first, and the loop over that
range is a branch-free load-compare-select that gcc vectorises (NCHW along output
columns, with strides 1 and 2 as constants; NHWC along channels). Without indices
an NCHW window is reduced over its rows first (a contiguous pass) and then over its
columns, a third of the strided loads (with indices the row-major tie order needs
the taps one by one). Padding is never
materialised: max pooling's -inf padding and average pooling's "count only real
elements" both follow from skipping padded taps.

PyTorch's extra arguments are index arithmetic on the same loops: a dilated window's
rows and tap columns step by the dilation (outside the vectorised loops, so the
dilation-1 code is unchanged), a ceil_mode window hanging past the input is clipped
like any other, and count_include_pad / divisor_override only change the divisor
(:c:func:`fastnn_divisor`).

Max pooling takes the first maximum of a window in row-major order, and a NaN
anywhere in the window wins (the last NaN gives the index), as PyTorch does.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from fastnn_ext._cost cimport FASTNN_SERIAL_BELOW_POOL
from fastnn_ext._openmp cimport team
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

cdef extern from "_pool_kernels.h":
    ctypedef struct fastnn_pool_geom:
        Py_ssize_t N, C, H, W, kh, kw, sh, sw, pt, pl, Ho, Wo, dh, dw, hp, wp, mode, div
    void fastnn_pool_plane_f32(const float* x, float* y, int64_t* idx, float* col,
                               const fastnn_pool_geom* g, int is_max) noexcept nogil
    void fastnn_pool_plane_f64(const double* x, double* y, int64_t* idx, double* col,
                               const fastnn_pool_geom* g, int is_max) noexcept nogil
    void fastnn_pool_column_f32(const float* x, float* y, int64_t* idx,
                                const fastnn_pool_geom* g, Py_ssize_t n, Py_ssize_t c0,
                                Py_ssize_t c1, int is_max) noexcept nogil
    void fastnn_pool_column_f64(const double* x, double* y, int64_t* idx,
                                const fastnn_pool_geom* g, Py_ssize_t n, Py_ssize_t c0,
                                Py_ssize_t c1, int is_max) noexcept nogil
    void fastnn_pool_2x2_rows_f32(const float* x, float* y, int64_t* idx,
                                  const fastnn_pool_geom* g, Py_ssize_t r0, Py_ssize_t r1,
                                  int is_max, Py_ssize_t div) noexcept nogil
    void fastnn_pool_2x2_rows_f64(const double* x, double* y, int64_t* idx,
                                  const fastnn_pool_geom* g, Py_ssize_t r0, Py_ssize_t r1,
                                  int is_max, Py_ssize_t div) noexcept nogil
    void fastnn_pool_2x2_nhwc_rows_f32(const float* x, float* y, int64_t* idx,
                                       const fastnn_pool_geom* g, Py_ssize_t r0,
                                       Py_ssize_t r1, int is_max, Py_ssize_t div) noexcept nogil
    void fastnn_pool_2x2_nhwc_rows_f64(const double* x, double* y, int64_t* idx,
                                       const fastnn_pool_geom* g, Py_ssize_t r0,
                                       Py_ssize_t r1, int is_max, Py_ssize_t div) noexcept nogil
    int fastnn_pool_pick() noexcept nogil
    int fastnn_pool_plane_back_f32(const float* gy, const int64_t* idx, float* gx,
                                    float* sc, const fastnn_pool_geom* g) noexcept nogil
    int fastnn_pool_plane_back_f64(const double* gy, const int64_t* idx, double* gx,
                                    double* sc, const fastnn_pool_geom* g) noexcept nogil
    int fastnn_pool_column_back_f32(const float* gy, const int64_t* idx, float* gx,
                                     float* sc, const fastnn_pool_geom* g, Py_ssize_t n,
                                     Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    int fastnn_pool_column_back_f64(const double* gy, const int64_t* idx, double* gx,
                                     double* sc, const fastnn_pool_geom* g, Py_ssize_t n,
                                     Py_ssize_t c0, Py_ssize_t c1) noexcept nogil

# The SIMD level of the 2x2 stride-2 kernels (_simd.h); the general loops are baseline.
SIMD_LEVEL = fastnn_pool_pick()

# Inputs below FASTNN_SERIAL_BELOW_POOL elements run serially (the cost model, _cost.h).
# NHWC work items: a column of this many channels of one image.
DEF CBLOCK = 64


cdef fastnn_pool_geom make_geom(tuple g):
    cdef fastnn_pool_geom r
    (r.N, r.C, r.H, r.W, r.kh, r.kw, r.sh, r.sw, r.pt, r.pl, r.Ho, r.Wo,
     r.dh, r.dw, r.hp, r.wp, r.mode, r.div) = g
    return r


# ---------------------------------------------------------------- typed items
cdef inline void pool_item(const floating* x, floating* y, int64_t* idx, floating* col,
                           const fastnn_pool_geom* g, bint nhwc, Py_ssize_t it,
                           Py_ssize_t nblk, bint is_max) noexcept nogil:
    cdef Py_ssize_t n, c0, c1, pin = g.H * g.W, pout = g.Ho * g.Wo
    if not nhwc:
        if floating is float:
            fastnn_pool_plane_f32(x + it * pin, y + it * pout,
                                  idx + it * pout if idx != NULL else NULL, col, g, is_max)
        else:
            fastnn_pool_plane_f64(x + it * pin, y + it * pout,
                                  idx + it * pout if idx != NULL else NULL, col, g, is_max)
        return
    n = it // nblk
    c0 = (it % nblk) * CBLOCK
    c1 = c0 + CBLOCK if c0 + CBLOCK < g.C else g.C
    if floating is float:
        fastnn_pool_column_f32(x, y, idx, g, n, c0, c1, is_max)
    else:
        fastnn_pool_column_f64(x, y, idx, g, n, c0, c1, is_max)


cdef inline int back_item(const floating* gy, const int64_t* idx, floating* gx,
                          floating* scratch, const fastnn_pool_geom* g, bint nhwc,
                          Py_ssize_t it, Py_ssize_t nblk) noexcept nogil:
    """Returns 1 when an index outside its plane was skipped."""
    cdef Py_ssize_t n, c0, c1, pin = g.H * g.W, pout = g.Ho * g.Wo
    if not nhwc:
        if floating is float:
            return fastnn_pool_plane_back_f32(gy + it * pout,
                                              idx + it * pout if idx != NULL else NULL,
                                              gx + it * pin, scratch, g)
        else:
            return fastnn_pool_plane_back_f64(gy + it * pout,
                                              idx + it * pout if idx != NULL else NULL,
                                              gx + it * pin, scratch, g)
    n = it // nblk
    c0 = (it % nblk) * CBLOCK
    c1 = c0 + CBLOCK if c0 + CBLOCK < g.C else g.C
    if floating is float:
        return fastnn_pool_column_back_f32(gy, idx, gx, scratch, g, n, c0, c1)
    else:
        return fastnn_pool_column_back_f64(gy, idx, gx, scratch, g, n, c0, c1)


cdef inline bint is_2x2_stride_2(const fastnn_pool_geom* g) noexcept nogil:
    """2x2 windows at stride 2, no padding or dilation, every window whole."""
    return (g.kh == 2 and g.kw == 2 and g.sh == 2 and g.sw == 2 and g.pt == 0
            and g.pl == 0 and g.dh == 1 and g.dw == 1 and g.Ho == g.H // 2
            and g.Wo == g.W // 2)


# Output rows per work item of the 2x2 path (a few kB of input each).
DEF ROWS_2X2 = 16


cdef void pool_2x2(const floating* x, floating* y, int64_t* ip, const fastnn_pool_geom* g,
                   bint nhwc, bint is_max, int nt) noexcept nogil:
    # Work items: ROWS_2X2 output rows (NCHW: of every plane; NHWC: of every image, C
    # channels a pixel).
    cdef Py_ssize_t rows = g.N * g.Ho * (1 if nhwc else g.C), it, r0, r1
    cdef Py_ssize_t items = (rows + ROWS_2X2 - 1) // ROWS_2X2
    cdef Py_ssize_t div = g.div if g.mode == 2 else 4
    if nt > items:
        nt = <int>items
    with parallel(num_threads=nt, use_threads_if=nt > 1):
        for it in prange(items, schedule="static"):
            r0 = it * ROWS_2X2
            r1 = min(r0 + ROWS_2X2, rows)
            if floating is float:
                if nhwc:
                    fastnn_pool_2x2_nhwc_rows_f32(x, y, ip, g, r0, r1, is_max, div)
                else:
                    fastnn_pool_2x2_rows_f32(x, y, ip, g, r0, r1, is_max, div)
            else:
                if nhwc:
                    fastnn_pool_2x2_nhwc_rows_f64(x, y, ip, g, r0, r1, is_max, div)
                else:
                    fastnn_pool_2x2_rows_f64(x, y, ip, g, r0, r1, is_max, div)


# ---------------------------------------------------------------- entry points
def pool2d_forward(const floating[::1] x, floating[::1] y, int64_t[::1] idx, tuple geom,
                   bint nhwc, bint is_max, int num_threads):
    """y (and, for max pooling, idx when not None) from x; see the module notes."""
    cdef fastnn_pool_geom g = make_geom(geom)
    cdef int64_t* ip = &idx[0] if idx is not None else NULL
    cdef Py_ssize_t it, nblk = (g.C + CBLOCK - 1) // CBLOCK
    cdef Py_ssize_t items = g.N * (nblk if nhwc else g.C)
    cdef int nt = team(num_threads, items) if g.N * g.C * g.H * g.W >= FASTNN_SERIAL_BELOW_POOL else 1
    cdef floating* col = NULL
    if items == 0:
        return
    if is_2x2_stride_2(&g):
        if g.Ho and g.Wo and g.C:
            pool_2x2(&x[0], &y[0], ip, &g, nhwc, is_max, nt)
        return
    with nogil, parallel(num_threads=nt, use_threads_if=nt > 1):
        # Per-thread scratch row; without it (no memory) the plane kernels skip the
        # separable path and give the same result.
        col = NULL if nhwc else <floating*>malloc((g.W + 1) * sizeof(floating))
        for it in prange(items, schedule="static"):
            pool_item(&x[0], &y[0], ip, col, &g, nhwc, it, nblk, is_max)
        free(col)


def pool2d_backward(const floating[::1] gy, const int64_t[::1] idx, floating[::1] gx,
                    tuple geom, bint nhwc, int num_threads):
    """gx from gy: scattered to the argmax positions ``idx`` (flat h*W + w in each
    plane) for max pooling, spread over each window's real elements when idx is None
    (average pooling). Returns True when some index lay outside its plane (skipped;
    the caller raises)."""
    cdef fastnn_pool_geom g = make_geom(geom)
    cdef const int64_t* ip = &idx[0] if idx is not None else NULL
    cdef Py_ssize_t it, nblk = (g.C + CBLOCK - 1) // CBLOCK
    cdef Py_ssize_t items = g.N * (nblk if nhwc else g.C)
    cdef int nt = team(num_threads, items) if g.N * g.C * g.H * g.W >= FASTNN_SERIAL_BELOW_POOL else 1
    cdef floating* scratch = NULL
    cdef int failed = 0, bad = 0
    cdef int* failed_p = &failed
    cdef int* bad_p = &bad
    if items == 0:
        return False
    with nogil, parallel(num_threads=nt, use_threads_if=nt > 1):
        scratch = <floating*>malloc((g.Wo + CBLOCK + 1) * sizeof(floating))
        for it in prange(items, schedule="static"):
            if scratch == NULL:
                failed_p[0] = 1
            elif back_item(&gy[0], ip, &gx[0], scratch, &g, nhwc, it, nblk):
                bad_p[0] = 1
        free(scratch)
    if failed:
        raise MemoryError(f"could not allocate {(g.Wo + CBLOCK + 1) * sizeof(floating)} bytes "
                          f"of per-thread scratch for the pooling backward")
    return bool(bad)
