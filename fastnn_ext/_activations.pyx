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
call stops the vectoriser. ``FASTNN_UKERNEL_MAX`` (0 baseline, 1 AVX2, 2 AVX-512)
caps the level, for tests and debugging; the paths differ only in rounding (FMA
contraction), never in NaN / Inf behaviour.
"""
from cython cimport floating
from cython.parallel cimport prange
from fastnn_ext._cost cimport FASTNN_SERIAL_BELOW_ELEMENTWISE, FASTNN_SERIAL_BELOW_EXP
from libc.stdint cimport int64_t

import os as _os

cdef extern from *:
    """
    #include <math.h>
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>

    #define FASTNN_ACT_INLINE static inline __attribute__((always_inline))

    #include "_vecmath.h"  /* fastnn_exp_*, fastnn_sigmoid_*, fastnn_tanh_* */

    /* Ops of the span kernel: y[i] = f(x[i]) or f(g[i], x[i]) with scalars a, b. */
    enum {
        FASTNN_OP_RELU, FASTNN_OP_LEAKY, FASTNN_OP_SIGMOID, FASTNN_OP_TANH,
        FASTNN_OP_RELU_BWD, FASTNN_OP_RELU_BWD_AT_ZERO, FASTNN_OP_LEAKY_BWD,
        FASTNN_OP_SIGMOID_BWD,    /* y = g * (x * (1 - x)), x the sigmoid output */
        FASTNN_OP_TANH_BWD,       /* y = g * ((1 - x) * (1 + x)), x the tanh output: 1 - x
                                   * is exact near |x| = 1, where 1 - x * x cancels */
        FASTNN_OP_EXP_SHIFT,      /* y = exp(x - a) */
        FASTNN_OP_SCALE,          /* y = x * a */
        FASTNN_OP_SUB2,           /* y = (x - a) - b */
        FASTNN_OP_SOFTMAX_BWD,    /* y = x * (g - a), x the softmax output */
        FASTNN_OP_LOGSM_BWD,      /* y = g - exp(x) * a, x the log_softmax output */
        FASTNN_OP_SCALE_SUB,      /* y = x * a - b * g */
        FASTNN_OP_AXPB            /* y = x * a + b */
    };
    /* Row reductions (sums accumulated in double). */
    enum {
        FASTNN_RED_MAX,           /* max(p) (n >= 1; NaN need not win, see the callers) */
        FASTNN_RED_SUM,           /* sum(p) */
        FASTNN_RED_DOT,           /* sum(p * (q - shift)) */
        FASTNN_RED_EXPSUM,        /* sum(exp(p - shift)), stored into `store` when given */
        FASTNN_RED_SUBSUM         /* sum(p - shift) */
    };

    /* Independent accumulators of the reductions: several vectors' worth, so gcc
     * vectorises max and sum without reordering one running value (IEEE rules forbid
     * that), and 64 stay a loop (16 get unrolled and then not if-converted). The
     * lanes are combined in a fixed order. Sums accumulate in double also for float32:
     * the loss of a confident float32 prediction, log(1 + 1e-10), would round to 0
     * otherwise (measured: no slower, the exp pass dominates). exp(x - max) goes
     * through a stack buffer of FASTNN_CHUNK elements when it is not stored. */
    #define FASTNN_LANES 64
    #define FASTNN_CHUNK 1024

    #define FASTNN_ACT_DEFINE(T, S)                                                       \\
    FASTNN_ACT_INLINE void fastnn_span_impl_##S(int op, const T* g, const T* x, T* y,    \\
                                                ptrdiff_t n, T a, T b) {                  \\
        /* One loop per op, the op test outside it. y may be x or g itself: each       \\
         * element is read before it is written, in the same iteration. */              \\
        ptrdiff_t i;                                                                      \\
        switch (op) {                                                                     \\
        case FASTNN_OP_RELU:     /* np.maximum(x, 0): NaN stays NaN, -0.0 gives +0.0 */   \\
            for (i = 0; i < n; i++) { T v = x[i]; y[i] = v <= 0 ? (T)0 : v; } break;      \\
        case FASTNN_OP_LEAKY:                                                             \\
            for (i = 0; i < n; i++) { T v = x[i]; y[i] = v > 0 ? v : v * a; } break;      \\
        case FASTNN_OP_SIGMOID:                                                           \\
            for (i = 0; i < n; i++) { y[i] = fastnn_sigmoid_##S(x[i]); } break;            \\
        case FASTNN_OP_TANH:                                                              \\
            for (i = 0; i < n; i++) { y[i] = fastnn_tanh_##S(x[i]); } break;               \\
        case FASTNN_OP_RELU_BWD: /* a select: NaN / Inf in g at blocked x gives 0 */      \\
            for (i = 0; i < n; i++) { T gv = g[i]; y[i] = x[i] > 0 ? gv : (T)0; } break;  \\
        case FASTNN_OP_RELU_BWD_AT_ZERO:                                                  \\
            for (i = 0; i < n; i++) {                                                     \\
                T v = x[i], gv = g[i];                                                    \\
                y[i] = v > 0 ? gv : (v == 0 ? a * gv : (T)0);                             \\
            } break;                                                                      \\
        case FASTNN_OP_LEAKY_BWD:                                                         \\
            for (i = 0; i < n; i++) { T gv = g[i]; y[i] = x[i] > 0 ? gv : gv * a; } break; \\
        case FASTNN_OP_SIGMOID_BWD:                                                       \\
            for (i = 0; i < n; i++) { T v = x[i]; y[i] = g[i] * (v * (1 - v)); } break;   \\
        case FASTNN_OP_TANH_BWD:                                                          \\
            for (i = 0; i < n; i++) { T v = x[i]; y[i] = g[i] * ((1 - v) * (1 + v)); } break; \\
        case FASTNN_OP_EXP_SHIFT:                                                         \\
            for (i = 0; i < n; i++) { y[i] = fastnn_exp_##S(x[i] - a); } break;            \\
        case FASTNN_OP_SCALE:                                                             \\
            for (i = 0; i < n; i++) { y[i] = x[i] * a; } break;                           \\
        case FASTNN_OP_SUB2:                                                              \\
            for (i = 0; i < n; i++) { y[i] = (x[i] - a) - b; } break;                     \\
        case FASTNN_OP_SOFTMAX_BWD:                                                       \\
            for (i = 0; i < n; i++) { y[i] = x[i] * (g[i] - a); } break;                  \\
        case FASTNN_OP_LOGSM_BWD:                                                         \\
            for (i = 0; i < n; i++) { y[i] = g[i] - fastnn_exp_##S(x[i]) * a; } break;     \\
        case FASTNN_OP_SCALE_SUB:                                                         \\
            for (i = 0; i < n; i++) { y[i] = x[i] * a - b * g[i]; } break;                \\
        case FASTNN_OP_AXPB:                                                              \\
            for (i = 0; i < n; i++) { y[i] = x[i] * a + b; } break;                       \\
        }                                                                                 \\
    }                                                                                     \\
    FASTNN_ACT_INLINE double fastnn_lanes_total_##S(double* acc) {                        \\
        int w, l;                                                                         \\
        for (w = FASTNN_LANES / 2; w >= 1; w /= 2)                                        \\
            for (l = 0; l < w; l++) acc[l] = acc[l] + acc[l + w];                         \\
        return acc[0];                                                                    \\
    }                                                                                     \\
    FASTNN_ACT_INLINE double fastnn_chunk_sum_##S(int op, const T* p, const T* q, T shift, \\
                                                  ptrdiff_t n) {                          \\
        /* op is FASTNN_RED_SUM, FASTNN_RED_SUBSUM or FASTNN_RED_DOT. */                  \\
        double acc[FASTNN_LANES];                                                         \\
        ptrdiff_t i, l, nv = n - n % FASTNN_LANES;                                        \\
        for (l = 0; l < FASTNN_LANES; l++) acc[l] = 0;                                    \\
        if (op == FASTNN_RED_SUM) {                                                       \\
            for (i = 0; i < nv; i += FASTNN_LANES)                                        \\
                for (l = 0; l < FASTNN_LANES; l++) acc[l] += p[i + l];                    \\
            for (l = 0; l < n - nv; l++) acc[l] += p[nv + l];                             \\
        } else if (op == FASTNN_RED_SUBSUM) {                                             \\
            for (i = 0; i < nv; i += FASTNN_LANES)                                        \\
                for (l = 0; l < FASTNN_LANES; l++) acc[l] += p[i + l] - shift;            \\
            for (l = 0; l < n - nv; l++) acc[l] += p[nv + l] - shift;                     \\
        } else {                                                                          \\
            for (i = 0; i < nv; i += FASTNN_LANES)                                        \\
                for (l = 0; l < FASTNN_LANES; l++)                                        \\
                    acc[l] += p[i + l] * (q[i + l] - shift);                              \\
            for (l = 0; l < n - nv; l++) acc[l] += p[nv + l] * (q[nv + l] - shift);       \\
        }                                                                                 \\
        return fastnn_lanes_total_##S(acc);                                               \\
    }                                                                                     \\
    FASTNN_ACT_INLINE double fastnn_reduce_impl_##S(int op, const T* p, const T* q,       \\
                                                    T shift, T* store, ptrdiff_t n) {     \\
        T acc[FASTNN_LANES];                                                              \\
        T buf[FASTNN_CHUNK];                                                              \\
        ptrdiff_t i, l, c0, c1, nv;                                                       \\
        double total = 0;                                                                 \\
        if (op == FASTNN_RED_MAX) {                                                       \\
            nv = n - n % FASTNN_LANES;                                                    \\
            for (l = 0; l < FASTNN_LANES; l++) acc[l] = p[0];                             \\
            for (i = 0; i < nv; i += FASTNN_LANES)                                        \\
                for (l = 0; l < FASTNN_LANES; l++) {                                      \\
                    T v = p[i + l];                                                       \\
                    acc[l] = v > acc[l] ? v : acc[l];                                     \\
                }                                                                         \\
            for (l = 0; l < n - nv; l++) {                                                \\
                T v = p[nv + l];                                                          \\
                acc[l] = v > acc[l] ? v : acc[l];                                         \\
            }                                                                             \\
            int w;                                                                        \\
            for (w = FASTNN_LANES / 2; w >= 1; w /= 2)                                    \\
                for (l = 0; l < w; l++) acc[l] = acc[l + w] > acc[l] ? acc[l + w] : acc[l]; \\
            return acc[0];                                                                \\
        }                                                                                 \\
        for (c0 = 0; c0 < n; c0 += FASTNN_CHUNK) {                                        \\
            c1 = c0 + FASTNN_CHUNK < n ? c0 + FASTNN_CHUNK : n;                           \\
            if (op == FASTNN_RED_EXPSUM) {                                                \\
                T* e = store ? store + c0 : buf;                                          \\
                for (i = c0; i < c1; i++) e[i - c0] = fastnn_exp_##S(p[i] - shift);       \\
                total += fastnn_chunk_sum_##S(FASTNN_RED_SUM, e, NULL, 0, c1 - c0);       \\
            } else {                                                                      \\
                total += fastnn_chunk_sum_##S(op, p + c0, q ? q + c0 : NULL, shift, c1 - c0); \\
            }                                                                             \\
        }                                                                                 \\
        return total;                                                                     \\
    }

    FASTNN_ACT_DEFINE(float, f32)
    FASTNN_ACT_DEFINE(double, f64)

    /* Softmax / log_softmax over whole rows, and over a block of columns of a
     * (n, inner) slab (softmax along a non-last axis, vectorised along the columns).
     * g == NULL: forward, y = softmax(x). Else backward, x the forward output:
     * softmax:     y = x * (g - sum(g * x))
     * log_softmax: y = g - exp(x) * sum(g)
     * Rows shorter than FASTNN_SHORT_ROW are done in one scalar sweep each (a few
     * elements cannot fill a vector, and four passes would cost more than the work);
     * longer rows read the row three times while it sits in cache (max; exp into y
     * and sum; scale), so memory sees one pass. */
    #define FASTNN_SHORT_ROW 32
    #define FASTNN_COLS 256
    #define FASTNN_ACT_DEFINE_SOFTMAX(T, S)                                               \\
    FASTNN_ACT_INLINE void fastnn_rows_impl_##S(const T* g, const T* x, T* y,            \\
                                                ptrdiff_t rows, ptrdiff_t n, int log_) {  \\
        ptrdiff_t r, j;                                                                   \\
        for (r = 0; r < rows; r++) {                                                      \\
            const T* xr = x + r * n;                                                      \\
            T* yr = y + r * n;                                                            \\
            const T* gr = g ? g + r * n : NULL;                                           \\
            double s = 0;                                                                 \\
            T c;                                                                          \\
            if (n < FASTNN_SHORT_ROW) {                                                   \\
                if (!g) {                                                                 \\
                    T m = xr[0];                                                          \\
                    for (j = 1; j < n; j++) m = xr[j] > m ? xr[j] : m;                    \\
                    for (j = 0; j < n; j++) { T e = fastnn_exp_##S(xr[j] - m); yr[j] = e; s += e; } \\
                    if (log_) {                                                           \\
                        c = (T)log(s);                                                    \\
                        for (j = 0; j < n; j++) yr[j] = (xr[j] - m) - c;                  \\
                    } else {                                                              \\
                        c = (T)(1.0 / s);                                                 \\
                        for (j = 0; j < n; j++) yr[j] = yr[j] * c;                        \\
                    }                                                                     \\
                } else if (log_) {                                                        \\
                    for (j = 0; j < n; j++) s += gr[j];                                   \\
                    c = (T)s;                                                             \\
                    for (j = 0; j < n; j++) yr[j] = gr[j] - fastnn_exp_##S(xr[j]) * c;     \\
                } else {                                                                  \\
                    for (j = 0; j < n; j++) s += gr[j] * xr[j];                           \\
                    c = (T)s;                                                             \\
                    for (j = 0; j < n; j++) yr[j] = xr[j] * (gr[j] - c);                  \\
                }                                                                         \\
                continue;                                                                 \\
            }                                                                             \\
            if (!g) {                                                                     \\
                T m = (T)fastnn_reduce_impl_##S(FASTNN_RED_MAX, xr, NULL, 0, NULL, n);    \\
                s = fastnn_reduce_impl_##S(FASTNN_RED_EXPSUM, xr, NULL, m, yr, n);        \\
                if (log_)                                                                 \\
                    fastnn_span_impl_##S(FASTNN_OP_SUB2, NULL, xr, yr, n, m, (T)log(s));   \\
                else                                                                      \\
                    fastnn_span_impl_##S(FASTNN_OP_SCALE, NULL, yr, yr, n, (T)(1.0 / s), 0); \\
            } else if (log_) {                                                            \\
                c = (T)fastnn_reduce_impl_##S(FASTNN_RED_SUM, gr, NULL, 0, NULL, n);       \\
                fastnn_span_impl_##S(FASTNN_OP_LOGSM_BWD, gr, xr, yr, n, c, 0);           \\
            } else {                                                                      \\
                c = (T)fastnn_reduce_impl_##S(FASTNN_RED_DOT, gr, xr, 0, NULL, n);         \\
                fastnn_span_impl_##S(FASTNN_OP_SOFTMAX_BWD, gr, xr, yr, n, c, 0);         \\
            }                                                                             \\
        }                                                                                 \\
    }                                                                                     \\
    FASTNN_ACT_INLINE void fastnn_cols_impl_##S(const T* g, const T* x, T* y, ptrdiff_t n, \\
                                                ptrdiff_t inner, ptrdiff_t w, int log_) { \\
        /* w <= FASTNN_COLS columns of an (n, inner) slab starting at x, y (and g). */    \\
        T mx[FASTNN_COLS];                                                                \\
        T c[FASTNN_COLS];                                                                 \\
        double sm[FASTNN_COLS];                                                           \\
        ptrdiff_t i, j;                                                                   \\
        for (j = 0; j < w; j++) sm[j] = 0;                                                \\
        if (g) {                                                                          \\
            for (i = 0; i < n; i++) {                                                     \\
                const T* gr = g + i * inner;                                              \\
                const T* xr = x + i * inner;                                              \\
                if (log_) { for (j = 0; j < w; j++) sm[j] += gr[j]; }                     \\
                else { for (j = 0; j < w; j++) sm[j] += gr[j] * xr[j]; }                  \\
            }                                                                             \\
            for (j = 0; j < w; j++) c[j] = (T)sm[j];                                      \\
            for (i = 0; i < n; i++) {                                                     \\
                const T* gr = g + i * inner;                                              \\
                const T* xr = x + i * inner;                                              \\
                T* yr = y + i * inner;                                                    \\
                if (log_) { for (j = 0; j < w; j++) yr[j] = gr[j] - fastnn_exp_##S(xr[j]) * c[j]; } \\
                else { for (j = 0; j < w; j++) yr[j] = xr[j] * (gr[j] - c[j]); }          \\
            }                                                                             \\
            return;                                                                       \\
        }                                                                                 \\
        for (j = 0; j < w; j++) mx[j] = x[j];                                             \\
        for (i = 1; i < n; i++) {                                                         \\
            const T* xr = x + i * inner;                                                  \\
            for (j = 0; j < w; j++) mx[j] = xr[j] > mx[j] ? xr[j] : mx[j];                \\
        }                                                                                 \\
        for (i = 0; i < n; i++) {                                                         \\
            const T* xr = x + i * inner;                                                  \\
            T* yr = y + i * inner;                                                        \\
            for (j = 0; j < w; j++) { T e = fastnn_exp_##S(xr[j] - mx[j]); yr[j] = e; sm[j] += e; } \\
        }                                                                                 \\
        if (log_) {                                                                       \\
            for (j = 0; j < w; j++) c[j] = (T)log(sm[j]);                                 \\
            for (i = 0; i < n; i++) {                                                     \\
                const T* xr = x + i * inner;                                              \\
                T* yr = y + i * inner;                                                    \\
                for (j = 0; j < w; j++) yr[j] = (xr[j] - mx[j]) - c[j];                   \\
            }                                                                             \\
        } else {                                                                          \\
            for (j = 0; j < w; j++) c[j] = (T)(1.0 / sm[j]);                              \\
            for (i = 0; i < n; i++) {                                                     \\
                T* yr = y + i * inner;                                                    \\
                for (j = 0; j < w; j++) yr[j] = yr[j] * c[j];                             \\
            }                                                                             \\
        }                                                                                 \\
    }

    FASTNN_ACT_DEFINE_SOFTMAX(float, f32)
    FASTNN_ACT_DEFINE_SOFTMAX(double, f64)

    /* Softmax cross-entropy over rows of (rows, C) logits x, with class indices
     * `labels` or probability rows t (labels == NULL). gx == NULL: the loss of each
     * row into `loss` (double): logsumexp(x) - x[label], or sum_c t_c (logsumexp(x) -
     * x_c) = log(s) sum(t) - sum(t (x - m)) with m = max(x), s = sum(exp(x - m)) --
     * the row is read twice while in cache, nothing is stored. Else the gradient
     * scale_r * (softmax(x) sum(t) - t) into gx: exp(x - m) goes straight into gx and
     * is scaled there. At the label, p - 1 = -(s - e_label) / s from the double sum
     * (a confident prediction's p = 1 - 1e-10 would round to 1 in float32: exactly 0);
     * when s - e_label loses more than 10 bits to cancellation, the other classes'
     * terms are summed again instead.
     *
     * PyTorch's options for class indices (fastnn_xent_opts; for probability targets
     * the caller folds them into t): class weights w, label smoothing eps and an
     * ignored label value. A row's loss is (1 - eps) w_y (lse - x_y) + eps / C
     * sum_c w_c (lse - x_c): the target t_c = (1 - eps) w_y [c = y] + eps w_c / C. So
     * the gradient is scale_r (p A - t) with A = sum(t) = (1 - eps) w_y + eps W / C
     * (W = sum w), and at the label, from s - e_label as above,
     * (-(s - e_y) w_y (1 - eps + eps / C) + eps / C (W - w_y) e_y) / s. An ignored row
     * is not read: loss 0, gradient 0 (PyTorch's). Without any option the rows take
     * the plain path, the code as it was before the options. */
    typedef struct {
        const void* weight;       /* (C,) class weights of the kernel's type, or NULL */
        double smoothing;         /* label smoothing eps in [0, 1] */
        double wsum;              /* sum of the weights (C when there are none) */
        int64_t ignore_index;
        int has_ignore;
    } fastnn_xent_opts;

    FASTNN_ACT_INLINE int fastnn_xent_plain(const fastnn_xent_opts* o) {
        return !o->weight && o->smoothing == 0 && !o->has_ignore;
    }

    #define FASTNN_ACT_DEFINE_XENT(T, S)                                                  \\
    FASTNN_ACT_INLINE void fastnn_xent_impl_##S(const T* x, const T* t,                   \\
            const int64_t* labels, const fastnn_xent_opts* o, double* loss,              \\
            const T* scale, ptrdiff_t scale_step, T* gx, ptrdiff_t rows, ptrdiff_t C) {   \\
        ptrdiff_t r, j;                                                                   \\
        const T* w = (const T*)o->weight;                                                 \\
        int plain = !labels || fastnn_xent_plain(o);                                      \\
        double eps = o->smoothing, ec = o->smoothing / (double)C;                         \\
        for (r = 0; r < rows; r++) {                                                      \\
            const T* xr = x + r * C;                                                      \\
            const T* tr = t ? t + r * C : NULL;                                           \\
            T* g = gx ? gx + r * C : NULL;                                                \\
            int64_t label = labels ? labels[r] : 0;                                       \\
            int short_row = C < FASTNN_SHORT_ROW;                                         \\
            double s = 0, tsum = 1, dot = 0;                                              \\
            T m;                                                                          \\
            if (!plain && o->has_ignore && label == o->ignore_index) {                    \\
                if (g) { for (j = 0; j < C; j++) g[j] = 0; } else loss[r] = 0;            \\
                continue;                                                                 \\
            }                                                                             \\
            if (short_row) {                                                              \\
                m = xr[0];                                                                \\
                for (j = 1; j < C; j++) m = xr[j] > m ? xr[j] : m;                        \\
                for (j = 0; j < C; j++) {                                                 \\
                    T e = fastnn_exp_##S(xr[j] - m);                                      \\
                    if (g) g[j] = e;                                                      \\
                    s += e;                                                               \\
                }                                                                         \\
                if (tr) {                                                                 \\
                    tsum = 0;                                                             \\
                    for (j = 0; j < C; j++) { tsum += tr[j]; dot += tr[j] * (xr[j] - m); } \\
                }                                                                         \\
            } else {                                                                      \\
                m = (T)fastnn_reduce_impl_##S(FASTNN_RED_MAX, xr, NULL, 0, NULL, C);      \\
                s = fastnn_reduce_impl_##S(FASTNN_RED_EXPSUM, xr, NULL, m, g, C);         \\
                if (tr) {                                                                 \\
                    tsum = fastnn_reduce_impl_##S(FASTNN_RED_SUM, tr, NULL, 0, NULL, C);  \\
                    if (!g) dot = fastnn_reduce_impl_##S(FASTNN_RED_DOT, tr, xr, m, NULL, C); \\
                }                                                                         \\
            }                                                                             \\
            double wy = w && !tr ? (double)w[label] : 1.0;                                \\
            if (!g) {                                                                     \\
                double ls = log(s);                                                       \\
                if (tr) loss[r] = ls * tsum - dot;                                        \\
                else if (plain) loss[r] = ls - ((double)xr[label] - (double)m);           \\
                else {                                                                    \\
                    double l = wy * (ls - ((double)xr[label] - (double)m));               \\
                    if (eps != 0) {                                                       \\
                        double dw = w ? fastnn_reduce_impl_##S(FASTNN_RED_DOT, w, xr, m, NULL, C) \\
                                      : fastnn_reduce_impl_##S(FASTNN_RED_SUBSUM, xr, NULL, m, NULL, C); \\
                        l = (1 - eps) * l + ec * (o->wsum * ls - dw);                     \\
                    }                                                                     \\
                    loss[r] = l;                                                          \\
                }                                                                         \\
                continue;                                                                 \\
            }                                                                             \\
            T sc = scale[r * scale_step];                                                 \\
            if (tr) {                                                                     \\
                T a = (T)(sc * tsum / s);                                                 \\
                if (short_row) { for (j = 0; j < C; j++) g[j] = g[j] * a - sc * tr[j]; }  \\
                else fastnn_span_impl_##S(FASTNN_OP_SCALE_SUB, tr, g, g, C, a, sc);       \\
            } else {                                                                      \\
                double ey = (double)g[label];                                             \\
                double rest = s - ey;                                                     \\
                if (rest < 0.0009765625 * s) {                                            \\
                    /* s - e_label cancels: sum the other classes again. */               \\
                    rest = 0;                                                             \\
                    for (j = 0; j < C; j++) rest += j == label ? 0.0 : (double)g[j];      \\
                }                                                                         \\
                if (plain) {                                                              \\
                    T a = (T)(sc / s);                                                    \\
                    if (short_row) { for (j = 0; j < C; j++) g[j] = g[j] * a; }           \\
                    else fastnn_span_impl_##S(FASTNN_OP_SCALE, NULL, g, g, C, a, 0);      \\
                    g[label] = (T)(-rest / s * sc);                                       \\
                } else {                                                                  \\
                    T a = (T)(sc * ((1 - eps) * wy + ec * o->wsum) / s);                  \\
                    T b = (T)(sc * ec);                                                   \\
                    if (eps == 0) fastnn_span_impl_##S(FASTNN_OP_SCALE, NULL, g, g, C, a, 0); \\
                    else if (w) fastnn_span_impl_##S(FASTNN_OP_SCALE_SUB, w, g, g, C, a, b); \\
                    else fastnn_span_impl_##S(FASTNN_OP_AXPB, NULL, g, g, C, a, -b);      \\
                    g[label] = (T)(sc / s * (-rest * wy * (1 - eps + ec)                  \\
                                             + ec * (o->wsum - wy) * ey));                \\
                }                                                                         \\
            }                                                                             \\
        }                                                                                 \\
    }                                                                                     \\
    FASTNN_ACT_INLINE void fastnn_xent_cols_impl_##S(const T* x, const T* t,              \\
            const int64_t* labels, const fastnn_xent_opts* o, double* loss,              \\
            const T* scale, ptrdiff_t scale_step, T* gx, ptrdiff_t C, ptrdiff_t inner,    \\
            ptrdiff_t nw) {                                                               \\
        /* The same for nw <= FASTNN_COLS positions of (C, inner) logits (class axis    \\
         * 1 of (N, C, d1, ...)): x, t and gx point at the block's first position of   \\
         * class 0, labels, loss and scale (times scale_step) at its first position.   \\
         * Vectorised along the positions; the sums run over the classes in order, in  \\
         * double, one accumulator per position. */                                    \\
        T mx[FASTNN_COLS], ca[FASTNN_COLS], cb[FASTNN_COLS], lv[FASTNN_COLS];              \\
        double sm[FASTNN_COLS], aux[FASTNN_COLS], ts[FASTNN_COLS];                        \\
        int64_t lab[FASTNN_COLS];                                                         \\
        unsigned char ign[FASTNN_COLS];                                                   \\
        const T* w = (const T*)o->weight;                                                 \\
        int plain = !labels || fastnn_xent_plain(o);                                      \\
        double eps = o->smoothing, ec = o->smoothing / (double)C;                         \\
        ptrdiff_t i, j;                                                                   \\
        for (j = 0; j < nw; j++) {                                                        \\
            lab[j] = labels ? labels[j] : 0;                                              \\
            ign[j] = labels && o->has_ignore && lab[j] == o->ignore_index;                \\
            if (ign[j]) lab[j] = 0;       /* any class: the position is zeroed at the end */ \\
            mx[j] = x[j];                                                                 \\
            sm[j] = 0; aux[j] = 0; ts[j] = 0;                                             \\
        }                                                                                 \\
        for (i = 1; i < C; i++) {                                                         \\
            const T* xr = x + i * inner;                                                  \\
            for (j = 0; j < nw; j++) mx[j] = xr[j] > mx[j] ? xr[j] : mx[j];               \\
        }                                                                                 \\
        for (i = 0; i < C; i++) {                                                         \\
            const T* xr = x + i * inner;                                                  \\
            if (gx) {                                                                     \\
                T* gr = gx + i * inner;                                                   \\
                for (j = 0; j < nw; j++) {                                                \\
                    T e = fastnn_exp_##S(xr[j] - mx[j]);                                  \\
                    gr[j] = e;                                                            \\
                    sm[j] += e;                                                           \\
                }                                                                         \\
            } else {                                                                      \\
                for (j = 0; j < nw; j++) sm[j] += fastnn_exp_##S(xr[j] - mx[j]);           \\
            }                                                                             \\
        }                                                                                 \\
        if (t) {                                                                          \\
            for (i = 0; i < C; i++) {                                                     \\
                const T* xr = x + i * inner;                                              \\
                const T* tr = t + i * inner;                                              \\
                for (j = 0; j < nw; j++) { ts[j] += tr[j]; aux[j] += tr[j] * (xr[j] - mx[j]); } \\
            }                                                                             \\
        } else if (eps != 0 && !gx) {                                                     \\
            for (i = 0; i < C; i++) {                                                     \\
                const T* xr = x + i * inner;                                              \\
                T wi = w ? w[i] : (T)1;                                                   \\
                for (j = 0; j < nw; j++) aux[j] += wi * (xr[j] - mx[j]);                  \\
            }                                                                             \\
        }                                                                                 \\
        if (!gx) {                                                                        \\
            for (j = 0; j < nw; j++) {                                                    \\
                double ls = log(sm[j]);                                                   \\
                if (t) { loss[j] = ls * ts[j] - aux[j]; continue; }                      \\
                if (ign[j]) { loss[j] = 0; continue; }                                    \\
                double l = ls - ((double)x[lab[j] * inner + j] - (double)mx[j]);          \\
                if (!plain) {                                                             \\
                    l *= w ? (double)w[lab[j]] : 1.0;                                     \\
                    if (eps != 0) l = (1 - eps) * l + ec * (o->wsum * ls - aux[j]);       \\
                }                                                                         \\
                loss[j] = l;                                                              \\
            }                                                                             \\
            return;                                                                       \\
        }                                                                                 \\
        for (j = 0; j < nw; j++) {                                                        \\
            T sc = scale[j * scale_step];                                                 \\
            double s = sm[j];                                                             \\
            if (t) { ca[j] = (T)(sc * ts[j] / s); cb[j] = sc; continue; }                 \\
            if (ign[j]) { ca[j] = 0; cb[j] = 0; continue; }                               \\
            double ey = (double)gx[lab[j] * inner + j], rest = s - ey;                    \\
            if (rest < 0.0009765625 * s) {                                                \\
                rest = 0;                                                                 \\
                for (i = 0; i < C; i++) rest += i == lab[j] ? 0.0 : (double)gx[i * inner + j]; \\
            }                                                                             \\
            if (plain) {                                                                  \\
                ca[j] = (T)(sc / s); cb[j] = 0;                                           \\
                lv[j] = (T)(-rest / s * sc);                                              \\
            } else {                                                                      \\
                double wy = w ? (double)w[lab[j]] : 1.0;                                  \\
                ca[j] = (T)(sc * ((1 - eps) * wy + ec * o->wsum) / s);                    \\
                cb[j] = (T)(sc * ec);                                                     \\
                lv[j] = (T)(sc / s * (-rest * wy * (1 - eps + ec) + ec * (o->wsum - wy) * ey)); \\
            }                                                                             \\
        }                                                                                 \\
        for (i = 0; i < C; i++) {                                                         \\
            T* gr = gx + i * inner;                                                       \\
            if (t) {                                                                      \\
                const T* tr = t + i * inner;                                              \\
                for (j = 0; j < nw; j++) gr[j] = gr[j] * ca[j] - cb[j] * tr[j];           \\
            } else if (eps != 0) {                                                        \\
                T wi = w ? w[i] : (T)1;                                                   \\
                for (j = 0; j < nw; j++) gr[j] = gr[j] * ca[j] - cb[j] * wi;              \\
            } else {                                                                      \\
                for (j = 0; j < nw; j++) gr[j] = gr[j] * ca[j];                           \\
            }                                                                             \\
        }                                                                                 \\
        if (t) return;                                                                    \\
        for (j = 0; j < nw; j++) {                                                        \\
            if (ign[j]) { for (i = 0; i < C; i++) gx[i * inner + j] = 0; }                \\
            else gx[lab[j] * inner + j] = lv[j];                                          \\
        }                                                                                 \\
    }

    FASTNN_ACT_DEFINE_XENT(float, f32)
    FASTNN_ACT_DEFINE_XENT(double, f64)

    /* One compiled copy of the kernels per instruction set, collected in a table. */
    #define FASTNN_ACT_TABLE_TYPE(T, S)                                                   \\
    typedef struct {                                                                      \\
        void (*span)(int, const T*, const T*, T*, ptrdiff_t, T, T);                       \\
        void (*rows)(const T*, const T*, T*, ptrdiff_t, ptrdiff_t, int);                  \\
        void (*cols)(const T*, const T*, T*, ptrdiff_t, ptrdiff_t, ptrdiff_t, int);       \\
        void (*xent)(const T*, const T*, const int64_t*, const fastnn_xent_opts*,         \\
                     double*, const T*, ptrdiff_t, T*, ptrdiff_t, ptrdiff_t);             \\
        void (*xent_cols)(const T*, const T*, const int64_t*, const fastnn_xent_opts*,    \\
                          double*, const T*, ptrdiff_t, T*, ptrdiff_t, ptrdiff_t, ptrdiff_t); \\
    } fastnn_act_table_##S;
    FASTNN_ACT_TABLE_TYPE(float, f32)
    FASTNN_ACT_TABLE_TYPE(double, f64)

    #define FASTNN_ACT_VARIANT(T, S, SUFFIX, ATTR)                                        \\
    ATTR static void fastnn_span_##S##_##SUFFIX(int op, const T* g, const T* x, T* y,     \\
                                                ptrdiff_t n, T a, T b)                    \\
    { fastnn_span_impl_##S(op, g, x, y, n, a, b); }                                       \\
    ATTR static void fastnn_rows_##S##_##SUFFIX(const T* g, const T* x, T* y,             \\
                                                ptrdiff_t rows, ptrdiff_t n, int log_)    \\
    { fastnn_rows_impl_##S(g, x, y, rows, n, log_); }                                     \\
    ATTR static void fastnn_cols_##S##_##SUFFIX(const T* g, const T* x, T* y, ptrdiff_t n, \\
                                                ptrdiff_t inner, ptrdiff_t w, int log_)   \\
    { fastnn_cols_impl_##S(g, x, y, n, inner, w, log_); }                                 \\
    ATTR static void fastnn_xent_##S##_##SUFFIX(const T* x, const T* t,                   \\
            const int64_t* labels, const fastnn_xent_opts* o, double* loss,              \\
            const T* scale, ptrdiff_t scale_step, T* gx, ptrdiff_t rows, ptrdiff_t C)     \\
    { fastnn_xent_impl_##S(x, t, labels, o, loss, scale, scale_step, gx, rows, C); }      \\
    ATTR static void fastnn_xent_cols_##S##_##SUFFIX(const T* x, const T* t,              \\
            const int64_t* labels, const fastnn_xent_opts* o, double* loss,              \\
            const T* scale, ptrdiff_t scale_step, T* gx, ptrdiff_t C, ptrdiff_t inner,    \\
            ptrdiff_t nw)                                                                 \\
    { fastnn_xent_cols_impl_##S(x, t, labels, o, loss, scale, scale_step, gx, C, inner, nw); } \\
    static const fastnn_act_table_##S fastnn_act_##S##_##SUFFIX = {                       \\
        fastnn_span_##S##_##SUFFIX, fastnn_rows_##S##_##SUFFIX,                           \\
        fastnn_cols_##S##_##SUFFIX, fastnn_xent_##S##_##SUFFIX,                           \\
        fastnn_xent_cols_##S##_##SUFFIX};

    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    #define FASTNN_ACT_X86 1
    #define FASTNN_ACT_AVX512 __attribute__((target("avx512f,fma,prefer-vector-width=512")))
    #define FASTNN_ACT_AVX2 __attribute__((target("avx2,fma")))
    FASTNN_ACT_VARIANT(float, f32, avx512, FASTNN_ACT_AVX512)
    FASTNN_ACT_VARIANT(double, f64, avx512, FASTNN_ACT_AVX512)
    FASTNN_ACT_VARIANT(float, f32, avx2, FASTNN_ACT_AVX2)
    FASTNN_ACT_VARIANT(double, f64, avx2, FASTNN_ACT_AVX2)
    #endif
    FASTNN_ACT_VARIANT(float, f32, base, )
    FASTNN_ACT_VARIANT(double, f64, base, )

    static const fastnn_act_table_f32* fastnn_act_f32 = &fastnn_act_f32_base;
    static const fastnn_act_table_f64* fastnn_act_f64 = &fastnn_act_f64_base;

    static inline void fastnn_span_f32(int op, const float* g, const float* x, float* y,
                                       ptrdiff_t n, float a, float b)
    { fastnn_act_f32->span(op, g, x, y, n, a, b); }
    static inline void fastnn_span_f64(int op, const double* g, const double* x, double* y,
                                       ptrdiff_t n, double a, double b)
    { fastnn_act_f64->span(op, g, x, y, n, a, b); }
    static inline void fastnn_rows_f32(const float* g, const float* x, float* y, ptrdiff_t rows,
                                       ptrdiff_t n, int log_)
    { fastnn_act_f32->rows(g, x, y, rows, n, log_); }
    static inline void fastnn_rows_f64(const double* g, const double* x, double* y,
                                       ptrdiff_t rows, ptrdiff_t n, int log_)
    { fastnn_act_f64->rows(g, x, y, rows, n, log_); }
    static inline void fastnn_cols_f32(const float* g, const float* x, float* y, ptrdiff_t n,
                                       ptrdiff_t inner, ptrdiff_t w, int log_)
    { fastnn_act_f32->cols(g, x, y, n, inner, w, log_); }
    static inline void fastnn_cols_f64(const double* g, const double* x, double* y, ptrdiff_t n,
                                       ptrdiff_t inner, ptrdiff_t w, int log_)
    { fastnn_act_f64->cols(g, x, y, n, inner, w, log_); }

    static inline void fastnn_xent_f32(const float* x, const float* t, const int64_t* labels,
                                       const fastnn_xent_opts* o, double* loss,
                                       const float* scale, ptrdiff_t scale_step, float* gx,
                                       ptrdiff_t rows, ptrdiff_t C)
    { fastnn_act_f32->xent(x, t, labels, o, loss, scale, scale_step, gx, rows, C); }
    static inline void fastnn_xent_f64(const double* x, const double* t, const int64_t* labels,
                                       const fastnn_xent_opts* o, double* loss,
                                       const double* scale, ptrdiff_t scale_step, double* gx,
                                       ptrdiff_t rows, ptrdiff_t C)
    { fastnn_act_f64->xent(x, t, labels, o, loss, scale, scale_step, gx, rows, C); }
    static inline void fastnn_xent_cols_f32(const float* x, const float* t,
                                            const int64_t* labels, const fastnn_xent_opts* o,
                                            double* loss, const float* scale,
                                            ptrdiff_t scale_step, float* gx, ptrdiff_t C,
                                            ptrdiff_t inner, ptrdiff_t nw)
    { fastnn_act_f32->xent_cols(x, t, labels, o, loss, scale, scale_step, gx, C, inner, nw); }
    static inline void fastnn_xent_cols_f64(const double* x, const double* t,
                                            const int64_t* labels, const fastnn_xent_opts* o,
                                            double* loss, const double* scale,
                                            ptrdiff_t scale_step, double* gx, ptrdiff_t C,
                                            ptrdiff_t inner, ptrdiff_t nw)
    { fastnn_act_f64->xent_cols(x, t, labels, o, loss, scale, scale_step, gx, C, inner, nw); }

    /* 0 = baseline, 1 = AVX2+FMA, 2 = AVX-512 (as the conv micro-kernels); cap < 0: none. */
    static int fastnn_act_pick(int cap) {
        int level = fastnn_simd_level(cap);
        fastnn_act_f32 = &fastnn_act_f32_base;
        fastnn_act_f64 = &fastnn_act_f64_base;
    #ifdef FASTNN_ACT_X86
        if (level == 1) {
            fastnn_act_f32 = &fastnn_act_f32_avx2;
            fastnn_act_f64 = &fastnn_act_f64_avx2;
        } else if (level == 2) {
            fastnn_act_f32 = &fastnn_act_f32_avx512;
            fastnn_act_f64 = &fastnn_act_f64_avx512;
        }
    #endif
        return level;
    }
    """
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
    int fastnn_act_pick(int cap) noexcept nogil
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


def _pick_simd():
    """Select the SIMD path of the C kernels (FASTNN_UKERNEL_MAX caps it:
    0 baseline, 1 AVX2+FMA, 2 AVX-512). Returns the level in use."""
    cap = _os.environ.get("FASTNN_UKERNEL_MAX", "")
    return fastnn_act_pick(int(cap) if cap.strip().isdigit() else -1)


SIMD_LEVEL = _pick_simd()


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
