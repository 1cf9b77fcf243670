# cython: language_level=3
"""Activation kernels: relu, leaky_relu, sigmoid, tanh and their gradients,
softmax / log_softmax and their gradients, fused softmax cross-entropy.

Three layers (DESIGN.md). The ``def`` entry points take flat C-contiguous
buffers that the Python layer (:mod:`fastnn.activations`) has validated and
allocated. The drivers (``cdef`` functions with a ``prange``) split the work by
shape alone -- fixed blocks of elements, or groups of whole rows -- and every output
element is computed by one work item in a fixed order, so results are bitwise
identical for any thread count. The kernels a work item runs (an op over a
contiguous span, a group of softmax or cross-entropy rows, a block of softmax or
cross-entropy columns) are branch-free load-compute-select loops that gcc vectorises.

Why those kernels are C (the verbatim block below) and not Cython: they are
compiled three times, for AVX-512, AVX2+FMA and the build's baseline, and one set
is picked at import (runtime dispatch, like the conv micro-kernels), which needs
gcc's ``target`` attribute on the function -- something Cython-generated functions
cannot carry. Measured on Zen 4, float32 sigmoid runs at 2.4 ns/element with the
SSE2 baseline, 0.75 with AVX2+FMA. ``exp`` is our own for the same reason: a libm
call stops the vectoriser; sigmoid and tanh use its one-sided forms (_vecmath.h), which
give the same bits in fewer instructions: 2^20 elements, 2 threads, Zen 4, sigmoid
0.183 ms against 0.257 with the general exp, tanh 0.245 against 0.331 (float32; float64
0.51 / 0.64 and 0.64 / 0.80). ``FASTNN_UKERNEL_MAX`` (0 baseline, 1 AVX2, 2 AVX-512)
caps the level, for tests and debugging; the paths differ only in rounding (FMA
contraction), never in NaN / Inf behaviour.
"""
from cython cimport floating
from cython.parallel cimport prange
from fastnn_ext._cost cimport FASTNN_SERIAL_BELOW_ELEMENTWISE, FASTNN_SERIAL_BELOW_EXP
from libc.stdint cimport int64_t


cdef extern from "_act_kernels.h":
    void fastnn_span_f32(int op, const float* g, const float* x, float* y, Py_ssize_t n,
                         float a, float b) noexcept nogil
    void fastnn_span_f64(int op, const double* g, const double* x, double* y, Py_ssize_t n,
                         double a, double b) noexcept nogil
    void fastnn_rows_f32(const float* g, const float* x, float* y, Py_ssize_t rows,
                         Py_ssize_t n, int log_) noexcept nogil
    void fastnn_rows_f64(const double* g, const double* x, double* y, Py_ssize_t rows,
                         Py_ssize_t n, int log_) noexcept nogil
    void fastnn_cols_f32(const float* g, const float* x, float* y, Py_ssize_t n,
                         Py_ssize_t inner, Py_ssize_t w, int log_) noexcept nogil
    void fastnn_cols_f64(const double* g, const double* x, double* y, Py_ssize_t n,
                         Py_ssize_t inner, Py_ssize_t w, int log_) noexcept nogil
    ctypedef struct fastnn_xent_opts:
        const void* weight
        double smoothing
        double wsum
        int64_t ignore_index
        int has_ignore
    void fastnn_xent_f32(const float* x, const float* t, const int64_t* labels,
                         const fastnn_xent_opts* o, double* loss, const float* scale,
                         Py_ssize_t scale_step, float* gx, Py_ssize_t rows,
                         Py_ssize_t C) noexcept nogil
    void fastnn_xent_f64(const double* x, const double* t, const int64_t* labels,
                         const fastnn_xent_opts* o, double* loss, const double* scale,
                         Py_ssize_t scale_step, double* gx, Py_ssize_t rows,
                         Py_ssize_t C) noexcept nogil
    void fastnn_xent_cols_f32(const float* x, const float* t, const int64_t* labels,
                              const fastnn_xent_opts* o, double* loss, const float* scale,
                              Py_ssize_t scale_step, float* gx, Py_ssize_t C, Py_ssize_t inner,
                              Py_ssize_t nw) noexcept nogil
    void fastnn_xent_cols_f64(const double* x, const double* t, const int64_t* labels,
                              const fastnn_xent_opts* o, double* loss, const double* scale,
                              Py_ssize_t scale_step, double* gx, Py_ssize_t C,
                              Py_ssize_t inner, Py_ssize_t nw) noexcept nogil
    int fastnn_act_pick() noexcept nogil
    enum:
        FASTNN_COLS
        FASTNN_OP_RELU
        FASTNN_OP_LEAKY
        FASTNN_OP_SIGMOID
        FASTNN_OP_TANH
        FASTNN_OP_RELU_BWD
        FASTNN_OP_RELU_BWD_AT_ZERO
        FASTNN_OP_LEAKY_BWD
        FASTNN_OP_SIGMOID_BWD
        FASTNN_OP_TANH_BWD


# The SIMD level of the kernels (0 baseline, 1 AVX2+FMA, 2 AVX-512), picked once at
# import like every family's (_simd.h; FASTNN_UKERNEL_MAX caps it).
SIMD_LEVEL = fastnn_act_pick()


# Elements per parallel work item of the elementwise kernels (32 KiB of float32):
# enough to amortise the scheduling, small enough that 2^15 elements already make
# four items and 2^20 balance over 16 threads.
DEF BLOCK = 8192
# Below these sizes the kernels run serially: waking the thread team costs more than
# splitting saves. Measured on a 2-core Zen 4 (AVX-512 path, float32, 1 vs 2 threads,
# GOMP_SPINCOUNT=10000 as `python -m fastnn bench` runs), median us per call:
#                   2^13        2^14        2^15        2^16
#   relu_backward   1.4 / 1.4   2.3 / 2.5   4.0 / 3.4   8.4 / 5.5
#   sigmoid         4.2 / 5.5   8.1 / 5.5   15.7 / 9.7  31 / 18.5
# The Python layer asks for the thread count only from these sizes on, and that
# costs ~2 us more (fastnn.get_num_threads reads the environment and the affinity
# mask). So cheap ops (relu and friends, the backwards: one or two loads, a select)
# go parallel from 2^16 elements (8.4 us serial vs 5.5 + 2), exp-based ones (sigmoid,
# tanh, softmax and cross-entropy rows) from 2^14 (8.1 vs 5.5 + 2). The team never
# has more threads than work items.
# The thresholds themselves are the cost model's (_cost.h): "elementwise" and "exp".


# ---------------------------------------------------------------- typed dispatch
cdef inline void span(int op, const floating* g, const floating* x, floating* y,
                      Py_ssize_t n, floating a, floating b) noexcept nogil:
    if floating is float:
        fastnn_span_f32(op, g, x, y, n, a, b)
    else:
        fastnn_span_f64(op, g, x, y, n, a, b)


cdef inline void rows(const floating* g, const floating* x, floating* y, Py_ssize_t nrows,
                      Py_ssize_t n, bint log_) noexcept nogil:
    if floating is float:
        fastnn_rows_f32(g, x, y, nrows, n, log_)
    else:
        fastnn_rows_f64(g, x, y, nrows, n, log_)


cdef inline void cols(const floating* g, const floating* x, floating* y, Py_ssize_t n,
                      Py_ssize_t inner, Py_ssize_t w, bint log_) noexcept nogil:
    if floating is float:
        fastnn_cols_f32(g, x, y, n, inner, w, log_)
    else:
        fastnn_cols_f64(g, x, y, n, inner, w, log_)


# ---------------------------------------------------------------- elementwise
cdef void elementwise(int op, const floating* g, const floating* x, floating* y,
                      Py_ssize_t n, floating a, int num_threads) noexcept nogil:
    # Fixed blocks whatever the thread count, so every element goes through the same
    # code (vector body or epilogue) in serial and parallel runs alike. The serial
    # case stays out of OpenMP altogether: an inactive parallel region still costs
    # ~0.8 us, more than a 2^12-element relu_backward.
    cdef Py_ssize_t nblocks = (n + BLOCK - 1) // BLOCK, blk, lo, m
    cdef Py_ssize_t par_min = FASTNN_SERIAL_BELOW_ELEMENTWISE
    if op == FASTNN_OP_SIGMOID or op == FASTNN_OP_TANH:
        par_min = FASTNN_SERIAL_BELOW_EXP
    if num_threads > nblocks:
        num_threads = <int>nblocks
    if num_threads > 1 and n >= par_min:
        for blk in prange(nblocks, schedule="static", num_threads=num_threads):
            lo = blk * BLOCK
            m = n - lo if n - lo < BLOCK else BLOCK
            span(op, g + lo if g != NULL else NULL, x + lo, y + lo, m, a, 0)
    else:
        for blk in range(nblocks):
            lo = blk * BLOCK
            m = n - lo if n - lo < BLOCK else BLOCK
            span(op, g + lo if g != NULL else NULL, x + lo, y + lo, m, a, 0)


# ---------------------------------------------------------------- softmax
cdef inline void softmax_item(const floating* g, const floating* x, floating* y,
                              Py_ssize_t it, Py_ssize_t outer, Py_ssize_t n, Py_ssize_t inner,
                              Py_ssize_t per, Py_ssize_t nb, bint log_) noexcept nogil:
    # Forward when g == NULL (x is the input), else backward (x is the forward output).
    # Item `it`: `per` whole rows (inner == 1), or (outer index, block of FASTNN_COLS
    # columns of the (n, inner) slab).
    cdef Py_ssize_t r0, o, j0, w, off
    if inner == 1:
        r0 = it * per
        off = r0 * n
        rows(g + off if g != NULL else NULL, x + off, y + off,
             outer - r0 if outer - r0 < per else per, n, log_)
    else:
        o = it // nb
        j0 = (it % nb) * FASTNN_COLS
        w = inner - j0 if inner - j0 < FASTNN_COLS else FASTNN_COLS
        off = o * n * inner + j0
        cols(g + off if g != NULL else NULL, x + off, y + off, n, inner, w, log_)


cdef void softmax_driver(const floating* g, const floating* x, floating* y, Py_ssize_t outer,
                         Py_ssize_t n, Py_ssize_t inner, bint log_, int num_threads) noexcept nogil:
    # Softmax along axis 1 of (outer, n, inner). Rows are grouped into items of about
    # BLOCK elements (short rows would otherwise cost more to schedule than to compute).
    cdef Py_ssize_t per = BLOCK // n if n < BLOCK else 1
    cdef Py_ssize_t nb = (inner + FASTNN_COLS - 1) // FASTNN_COLS
    cdef Py_ssize_t items = outer * nb if inner > 1 else (outer + per - 1) // per
    cdef Py_ssize_t it
    if num_threads > items:
        num_threads = <int>items
    if num_threads > 1 and outer * n * inner >= FASTNN_SERIAL_BELOW_EXP:
        for it in prange(items, schedule="static", num_threads=num_threads):
            softmax_item(g, x, y, it, outer, n, inner, per, nb, log_)
    else:
        for it in range(items):
            softmax_item(g, x, y, it, outer, n, inner, per, nb, log_)


# ---------------------------------------------------------------- cross-entropy
cdef inline void xent(const floating* x, const floating* t, const int64_t* labels,
                      const fastnn_xent_opts* o, double* loss, const floating* scale,
                      Py_ssize_t scale_step, floating* gx, Py_ssize_t nrows,
                      Py_ssize_t C) noexcept nogil:
    if floating is float:
        fastnn_xent_f32(x, t, labels, o, loss, scale, scale_step, gx, nrows, C)
    else:
        fastnn_xent_f64(x, t, labels, o, loss, scale, scale_step, gx, nrows, C)


cdef inline void xent_cols(const floating* x, const floating* t, const int64_t* labels,
                           const fastnn_xent_opts* o, double* loss, const floating* scale,
                           Py_ssize_t scale_step, floating* gx, Py_ssize_t C, Py_ssize_t inner,
                           Py_ssize_t nw) noexcept nogil:
    if floating is float:
        fastnn_xent_cols_f32(x, t, labels, o, loss, scale, scale_step, gx, C, inner, nw)
    else:
        fastnn_xent_cols_f64(x, t, labels, o, loss, scale, scale_step, gx, C, inner, nw)


cdef inline void xent_item(const floating* x, const floating* t, const int64_t* labels,
                           const fastnn_xent_opts* o, double* loss, const floating* scale,
                           Py_ssize_t scale_step, floating* gx, Py_ssize_t it, Py_ssize_t per,
                           Py_ssize_t nb, Py_ssize_t N, Py_ssize_t C,
                           Py_ssize_t inner) noexcept nogil:
    # inner == 1: rows [it * per, it * per + per) -- their losses (gx == NULL), or their
    # gradient. inner > 1: image it // nb, block it % nb of FASTNN_COLS positions.
    cdef Py_ssize_t r0, off, n, j0, p0
    if inner == 1:
        r0 = it * per
        off = r0 * C
        xent(x + off, t + off if t != NULL else NULL, labels + r0 if labels != NULL else NULL,
             o, loss + r0 if loss != NULL else NULL,
             scale + r0 * scale_step if scale != NULL else NULL, scale_step,
             gx + off if gx != NULL else NULL, N - r0 if N - r0 < per else per, C)
        return
    n = it // nb
    j0 = (it % nb) * FASTNN_COLS
    off = n * C * inner + j0
    p0 = n * inner + j0
    xent_cols(x + off, t + off if t != NULL else NULL, labels + p0 if labels != NULL else NULL,
              o, loss + p0 if loss != NULL else NULL,
              scale + p0 * scale_step if scale != NULL else NULL, scale_step,
              gx + off if gx != NULL else NULL, C, inner,
              inner - j0 if inner - j0 < FASTNN_COLS else FASTNN_COLS)


cdef void xent_driver(const floating* x, const floating* t, const int64_t* labels,
                      const fastnn_xent_opts* o, double* loss, const floating* scale,
                      Py_ssize_t scale_step, floating* gx, Py_ssize_t N, Py_ssize_t C,
                      Py_ssize_t inner, int num_threads) noexcept nogil:
    # (N, C) rows grouped into items of about BLOCK elements, as softmax_driver; the
    # class axis of (N, C, inner) is read in place in blocks of positions, like
    # softmax along a non-last axis -- no transposed copy.
    cdef Py_ssize_t per = BLOCK // C if C < BLOCK else 1
    cdef Py_ssize_t nb = (inner + FASTNN_COLS - 1) // FASTNN_COLS
    cdef Py_ssize_t items = N * nb if inner > 1 else (N + per - 1) // per
    cdef Py_ssize_t it
    if num_threads > items:
        num_threads = <int>items
    if num_threads > 1 and N * C * inner >= FASTNN_SERIAL_BELOW_EXP:
        for it in prange(items, schedule="static", num_threads=num_threads):
            xent_item(x, t, labels, o, loss, scale, scale_step, gx, it, per, nb, N, C, inner)
    else:
        for it in range(items):
            xent_item(x, t, labels, o, loss, scale, scale_step, gx, it, per, nb, N, C, inner)


cdef fastnn_xent_opts make_opts(const void* weight, double smoothing, double wsum,
                                object ignore_index):
    cdef fastnn_xent_opts o
    o.weight = weight
    o.smoothing = smoothing
    o.wsum = wsum
    o.has_ignore = ignore_index is not None
    o.ignore_index = ignore_index if ignore_index is not None else 0
    return o


# ---------------------------------------------------------------- entry points
def relu(const floating[::1] x, floating[::1] y, int num_threads):
    """y = max(x, 0) (NaN stays NaN, -0.0 gives +0.0)."""
    with nogil:
        elementwise(FASTNN_OP_RELU, NULL, &x[0], &y[0], x.shape[0], 0, num_threads)


def relu_backward(const floating[::1] grad_y, const floating[::1] x, floating[::1] out,
                  double at_zero, int num_threads):
    """out = grad_y where x > 0, at_zero * grad_y where x == 0 (at_zero != 0), else 0."""
    cdef int op = FASTNN_OP_RELU_BWD if at_zero == 0 else FASTNN_OP_RELU_BWD_AT_ZERO
    with nogil:
        elementwise(op, &grad_y[0], &x[0], &out[0], x.shape[0], <floating>at_zero,
                    num_threads)


def leaky_relu(const floating[::1] x, floating[::1] y, double negative_slope, int num_threads):
    with nogil:
        elementwise(FASTNN_OP_LEAKY, NULL, &x[0], &y[0], x.shape[0], <floating>negative_slope,
                    num_threads)


def leaky_relu_backward(const floating[::1] grad_y, const floating[::1] x, floating[::1] out,
                        double negative_slope, int num_threads):
    with nogil:
        elementwise(FASTNN_OP_LEAKY_BWD, &grad_y[0], &x[0], &out[0], x.shape[0],
                    <floating>negative_slope, num_threads)


def sigmoid(const floating[::1] x, floating[::1] y, int num_threads):
    with nogil:
        elementwise(FASTNN_OP_SIGMOID, NULL, &x[0], &y[0], x.shape[0], 0, num_threads)


def sigmoid_backward(const floating[::1] grad_y, const floating[::1] y, floating[::1] out,
                     int num_threads):
    """out = grad_y * y * (1 - y), from the forward output y."""
    with nogil:
        elementwise(FASTNN_OP_SIGMOID_BWD, &grad_y[0], &y[0], &out[0], y.shape[0], 0,
                    num_threads)


def tanh(const floating[::1] x, floating[::1] y, int num_threads):
    with nogil:
        elementwise(FASTNN_OP_TANH, NULL, &x[0], &y[0], x.shape[0], 0, num_threads)


def tanh_backward(const floating[::1] grad_y, const floating[::1] y, floating[::1] out,
                  int num_threads):
    """out = grad_y * (1 - y) * (1 + y), from the forward output y."""
    with nogil:
        elementwise(FASTNN_OP_TANH_BWD, &grad_y[0], &y[0], &out[0], y.shape[0], 0, num_threads)


def softmax(const floating[::1] x, floating[::1] y, Py_ssize_t outer, Py_ssize_t n,
            Py_ssize_t inner, bint log, int num_threads):
    """Softmax (log_softmax when ``log``) over axis 1 of x viewed as (outer, n, inner), n >= 1."""
    with nogil:
        softmax_driver(NULL, &x[0], &y[0], outer, n, inner, log, num_threads)


def softmax_backward(const floating[::1] grad_y, const floating[::1] y, floating[::1] out,
                     Py_ssize_t outer, Py_ssize_t n, Py_ssize_t inner, bint log,
                     int num_threads):
    """Gradient of softmax (log_softmax) from its output y, same view as :func:`softmax`."""
    with nogil:
        softmax_driver(&grad_y[0], &y[0], &out[0], outer, n, inner, log, num_threads)


def cross_entropy(const floating[::1] logits, const int64_t[::1] labels,
                  const floating[::1] target, const floating[::1] weight, double[::1] loss,
                  Py_ssize_t N, Py_ssize_t C, Py_ssize_t inner, object ignore_index,
                  double smoothing, double wsum, int num_threads):
    """Per-position loss of (N, C, inner) logits (C >= 1) with class indices ``labels``
    (N, inner) in [0, C) or equal to ``ignore_index`` (None: nothing ignored), or, when
    labels is None, probability targets ``target`` shaped like the logits. ``weight``
    (C,) or None and ``smoothing`` apply to class indices; ``wsum`` is the sum of the
    weights (C without them)."""
    cdef const int64_t* lp = &labels[0] if labels is not None else NULL
    cdef const floating* tp = &target[0] if target is not None else NULL
    cdef fastnn_xent_opts o = make_opts(&weight[0] if weight is not None else NULL,
                                        smoothing, wsum, ignore_index)
    with nogil:
        xent_driver(&logits[0], tp, lp, &o, &loss[0], NULL, 0, NULL, N, C, inner, num_threads)


def cross_entropy_backward(const floating[::1] logits, const int64_t[::1] labels,
                           const floating[::1] target, const floating[::1] weight,
                           const floating[::1] scale, floating[::1] grad, Py_ssize_t N,
                           Py_ssize_t C, Py_ssize_t inner, object ignore_index,
                           double smoothing, double wsum, int num_threads):
    """grad = scale_i * (softmax(logits) * sum(t) - t) per position, t the (weighted,
    smoothed) target of :func:`cross_entropy`, 0 at ignored positions; ``scale`` has
    N * inner entries or 1."""
    cdef const int64_t* lp = &labels[0] if labels is not None else NULL
    cdef const floating* tp = &target[0] if target is not None else NULL
    cdef Py_ssize_t step = 1 if scale.shape[0] == N * inner else 0
    cdef fastnn_xent_opts o = make_opts(&weight[0] if weight is not None else NULL,
                                        smoothing, wsum, ignore_index)
    with nogil:
        xent_driver(&logits[0], tp, lp, &o, NULL, &scale[0], step, &grad[0], N, C, inner,
                    num_threads)
