/* Elementwise activation and loss kernels of fastnn_ext/_activations.pyx. */
#ifndef FASTNN_ACT_KERNELS_H
#define FASTNN_ACT_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_simd.h"

#define FASTNN_ACT_INLINE FASTNN_ALWAYS_INLINE

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

#define FASTNN_ACT_DEFINE(T, S)                                                       \
FASTNN_ACT_INLINE void fastnn_span_impl_##S(int op, const T* g, const T* x, T* y,    \
                                            ptrdiff_t n, T a, T b) {                  \
    /* One loop per op, the op test outside it. y may be x or g itself: each       \
     * element is read before it is written, in the same iteration. */              \
    ptrdiff_t i;                                                                      \
    switch (op) {                                                                     \
    case FASTNN_OP_RELU:     /* np.maximum(x, 0): NaN stays NaN, -0.0 gives +0.0 */   \
        for (i = 0; i < n; i++) { T v = x[i]; y[i] = v <= 0 ? (T)0 : v; } break;      \
    case FASTNN_OP_LEAKY:                                                             \
        for (i = 0; i < n; i++) { T v = x[i]; y[i] = v > 0 ? v : v * a; } break;      \
    case FASTNN_OP_SIGMOID:                                                           \
        for (i = 0; i < n; i++) { y[i] = fastnn_sigmoid_##S(x[i]); } break;            \
    case FASTNN_OP_TANH:                                                              \
        for (i = 0; i < n; i++) { y[i] = fastnn_tanh_##S(x[i]); } break;               \
    case FASTNN_OP_RELU_BWD: /* a select: NaN / Inf in g at blocked x gives 0 */      \
        for (i = 0; i < n; i++) { T gv = g[i]; y[i] = x[i] > 0 ? gv : (T)0; } break;  \
    case FASTNN_OP_RELU_BWD_AT_ZERO:                                                  \
        for (i = 0; i < n; i++) {                                                     \
            T v = x[i], gv = g[i];                                                    \
            y[i] = v > 0 ? gv : (v == 0 ? a * gv : (T)0);                             \
        } break;                                                                      \
    case FASTNN_OP_LEAKY_BWD:                                                         \
        for (i = 0; i < n; i++) { T gv = g[i]; y[i] = x[i] > 0 ? gv : gv * a; } break; \
    case FASTNN_OP_SIGMOID_BWD:                                                       \
        for (i = 0; i < n; i++) { T v = x[i]; y[i] = g[i] * (v * (1 - v)); } break;   \
    case FASTNN_OP_TANH_BWD:                                                          \
        for (i = 0; i < n; i++) { T v = x[i]; y[i] = g[i] * ((1 - v) * (1 + v)); } break; \
    case FASTNN_OP_EXP_SHIFT:                                                         \
        for (i = 0; i < n; i++) { y[i] = fastnn_exp_##S(x[i] - a); } break;            \
    case FASTNN_OP_SCALE:                                                             \
        for (i = 0; i < n; i++) { y[i] = x[i] * a; } break;                           \
    case FASTNN_OP_SUB2:                                                              \
        for (i = 0; i < n; i++) { y[i] = (x[i] - a) - b; } break;                     \
    case FASTNN_OP_SOFTMAX_BWD:                                                       \
        for (i = 0; i < n; i++) { y[i] = x[i] * (g[i] - a); } break;                  \
    case FASTNN_OP_LOGSM_BWD:                                                         \
        for (i = 0; i < n; i++) { y[i] = g[i] - fastnn_exp_##S(x[i]) * a; } break;     \
    case FASTNN_OP_SCALE_SUB:                                                         \
        for (i = 0; i < n; i++) { y[i] = x[i] * a - b * g[i]; } break;                \
    case FASTNN_OP_AXPB:                                                              \
        for (i = 0; i < n; i++) { y[i] = x[i] * a + b; } break;                       \
    }                                                                                 \
}                                                                                     \
FASTNN_ACT_INLINE double fastnn_lanes_total_##S(double* acc) {                        \
    int w, l;                                                                         \
    for (w = FASTNN_LANES / 2; w >= 1; w /= 2)                                        \
        for (l = 0; l < w; l++) acc[l] = acc[l] + acc[l + w];                         \
    return acc[0];                                                                    \
}                                                                                     \
FASTNN_ACT_INLINE double fastnn_chunk_sum_##S(int op, const T* p, const T* q, T shift, \
                                              ptrdiff_t n) {                          \
    /* op is FASTNN_RED_SUM, FASTNN_RED_SUBSUM or FASTNN_RED_DOT. */                  \
    double acc[FASTNN_LANES];                                                         \
    ptrdiff_t i, l, nv = n - n % FASTNN_LANES;                                        \
    for (l = 0; l < FASTNN_LANES; l++) acc[l] = 0;                                    \
    if (op == FASTNN_RED_SUM) {                                                       \
        for (i = 0; i < nv; i += FASTNN_LANES)                                        \
            for (l = 0; l < FASTNN_LANES; l++) acc[l] += p[i + l];                    \
        for (l = 0; l < n - nv; l++) acc[l] += p[nv + l];                             \
    } else if (op == FASTNN_RED_SUBSUM) {                                             \
        for (i = 0; i < nv; i += FASTNN_LANES)                                        \
            for (l = 0; l < FASTNN_LANES; l++) acc[l] += p[i + l] - shift;            \
        for (l = 0; l < n - nv; l++) acc[l] += p[nv + l] - shift;                     \
    } else {                                                                          \
        for (i = 0; i < nv; i += FASTNN_LANES)                                        \
            for (l = 0; l < FASTNN_LANES; l++)                                        \
                acc[l] += p[i + l] * (q[i + l] - shift);                              \
        for (l = 0; l < n - nv; l++) acc[l] += p[nv + l] * (q[nv + l] - shift);       \
    }                                                                                 \
    return fastnn_lanes_total_##S(acc);                                               \
}                                                                                     \
FASTNN_ACT_INLINE double fastnn_reduce_impl_##S(int op, const T* p, const T* q,       \
                                                T shift, T* store, ptrdiff_t n) {     \
    T acc[FASTNN_LANES];                                                              \
    T buf[FASTNN_CHUNK];                                                              \
    ptrdiff_t i, l, c0, c1, nv;                                                       \
    double total = 0;                                                                 \
    if (op == FASTNN_RED_MAX) {                                                       \
        nv = n - n % FASTNN_LANES;                                                    \
        for (l = 0; l < FASTNN_LANES; l++) acc[l] = p[0];                             \
        for (i = 0; i < nv; i += FASTNN_LANES)                                        \
            for (l = 0; l < FASTNN_LANES; l++) {                                      \
                T v = p[i + l];                                                       \
                acc[l] = v > acc[l] ? v : acc[l];                                     \
            }                                                                         \
        for (l = 0; l < n - nv; l++) {                                                \
            T v = p[nv + l];                                                          \
            acc[l] = v > acc[l] ? v : acc[l];                                         \
        }                                                                             \
        int w;                                                                        \
        for (w = FASTNN_LANES / 2; w >= 1; w /= 2)                                    \
            for (l = 0; l < w; l++) acc[l] = acc[l + w] > acc[l] ? acc[l + w] : acc[l]; \
        return acc[0];                                                                \
    }                                                                                 \
    for (c0 = 0; c0 < n; c0 += FASTNN_CHUNK) {                                        \
        c1 = c0 + FASTNN_CHUNK < n ? c0 + FASTNN_CHUNK : n;                           \
        if (op == FASTNN_RED_EXPSUM) {                                                \
            T* e = store ? store + c0 : buf;                                          \
            for (i = c0; i < c1; i++) e[i - c0] = fastnn_exp_##S(p[i] - shift);       \
            total += fastnn_chunk_sum_##S(FASTNN_RED_SUM, e, NULL, 0, c1 - c0);       \
        } else {                                                                      \
            total += fastnn_chunk_sum_##S(op, p + c0, q ? q + c0 : NULL, shift, c1 - c0); \
        }                                                                             \
    }                                                                                 \
    return total;                                                                     \
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
#define FASTNN_ACT_DEFINE_SOFTMAX(T, S)                                               \
FASTNN_ACT_INLINE void fastnn_rows_impl_##S(const T* g, const T* x, T* y,            \
                                            ptrdiff_t rows, ptrdiff_t n, int log_) {  \
    ptrdiff_t r, j;                                                                   \
    for (r = 0; r < rows; r++) {                                                      \
        const T* xr = x + r * n;                                                      \
        T* yr = y + r * n;                                                            \
        const T* gr = g ? g + r * n : NULL;                                           \
        double s = 0;                                                                 \
        T c;                                                                          \
        if (n < FASTNN_SHORT_ROW) {                                                   \
            if (!g) {                                                                 \
                T m = xr[0];                                                          \
                for (j = 1; j < n; j++) m = xr[j] > m ? xr[j] : m;                    \
                for (j = 0; j < n; j++) { T e = fastnn_exp_##S(xr[j] - m); yr[j] = e; s += e; } \
                if (log_) {                                                           \
                    c = (T)log(s);                                                    \
                    for (j = 0; j < n; j++) yr[j] = (xr[j] - m) - c;                  \
                } else {                                                              \
                    c = (T)(1.0 / s);                                                 \
                    for (j = 0; j < n; j++) yr[j] = yr[j] * c;                        \
                }                                                                     \
            } else if (log_) {                                                        \
                for (j = 0; j < n; j++) s += gr[j];                                   \
                c = (T)s;                                                             \
                for (j = 0; j < n; j++) yr[j] = gr[j] - fastnn_exp_##S(xr[j]) * c;     \
            } else {                                                                  \
                for (j = 0; j < n; j++) s += gr[j] * xr[j];                           \
                c = (T)s;                                                             \
                for (j = 0; j < n; j++) yr[j] = xr[j] * (gr[j] - c);                  \
            }                                                                         \
            continue;                                                                 \
        }                                                                             \
        if (!g) {                                                                     \
            T m = (T)fastnn_reduce_impl_##S(FASTNN_RED_MAX, xr, NULL, 0, NULL, n);    \
            s = fastnn_reduce_impl_##S(FASTNN_RED_EXPSUM, xr, NULL, m, yr, n);        \
            if (log_)                                                                 \
                fastnn_span_impl_##S(FASTNN_OP_SUB2, NULL, xr, yr, n, m, (T)log(s));   \
            else                                                                      \
                fastnn_span_impl_##S(FASTNN_OP_SCALE, NULL, yr, yr, n, (T)(1.0 / s), 0); \
        } else if (log_) {                                                            \
            c = (T)fastnn_reduce_impl_##S(FASTNN_RED_SUM, gr, NULL, 0, NULL, n);       \
            fastnn_span_impl_##S(FASTNN_OP_LOGSM_BWD, gr, xr, yr, n, c, 0);           \
        } else {                                                                      \
            c = (T)fastnn_reduce_impl_##S(FASTNN_RED_DOT, gr, xr, 0, NULL, n);         \
            fastnn_span_impl_##S(FASTNN_OP_SOFTMAX_BWD, gr, xr, yr, n, c, 0);         \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
FASTNN_ACT_INLINE void fastnn_cols_impl_##S(const T* g, const T* x, T* y, ptrdiff_t n, \
                                            ptrdiff_t inner, ptrdiff_t w, int log_) { \
    /* w <= FASTNN_COLS columns of an (n, inner) slab starting at x, y (and g). */    \
    T mx[FASTNN_COLS];                                                                \
    T c[FASTNN_COLS];                                                                 \
    double sm[FASTNN_COLS];                                                           \
    ptrdiff_t i, j;                                                                   \
    for (j = 0; j < w; j++) sm[j] = 0;                                                \
    if (g) {                                                                          \
        for (i = 0; i < n; i++) {                                                     \
            const T* gr = g + i * inner;                                              \
            const T* xr = x + i * inner;                                              \
            if (log_) { for (j = 0; j < w; j++) sm[j] += gr[j]; }                     \
            else { for (j = 0; j < w; j++) sm[j] += gr[j] * xr[j]; }                  \
        }                                                                             \
        for (j = 0; j < w; j++) c[j] = (T)sm[j];                                      \
        for (i = 0; i < n; i++) {                                                     \
            const T* gr = g + i * inner;                                              \
            const T* xr = x + i * inner;                                              \
            T* yr = y + i * inner;                                                    \
            if (log_) { for (j = 0; j < w; j++) yr[j] = gr[j] - fastnn_exp_##S(xr[j]) * c[j]; } \
            else { for (j = 0; j < w; j++) yr[j] = xr[j] * (gr[j] - c[j]); }          \
        }                                                                             \
        return;                                                                       \
    }                                                                                 \
    for (j = 0; j < w; j++) mx[j] = x[j];                                             \
    for (i = 1; i < n; i++) {                                                         \
        const T* xr = x + i * inner;                                                  \
        for (j = 0; j < w; j++) mx[j] = xr[j] > mx[j] ? xr[j] : mx[j];                \
    }                                                                                 \
    for (i = 0; i < n; i++) {                                                         \
        const T* xr = x + i * inner;                                                  \
        T* yr = y + i * inner;                                                        \
        for (j = 0; j < w; j++) { T e = fastnn_exp_##S(xr[j] - mx[j]); yr[j] = e; sm[j] += e; } \
    }                                                                                 \
    if (log_) {                                                                       \
        for (j = 0; j < w; j++) c[j] = (T)log(sm[j]);                                 \
        for (i = 0; i < n; i++) {                                                     \
            const T* xr = x + i * inner;                                              \
            T* yr = y + i * inner;                                                    \
            for (j = 0; j < w; j++) yr[j] = (xr[j] - mx[j]) - c[j];                   \
        }                                                                             \
    } else {                                                                          \
        for (j = 0; j < w; j++) c[j] = (T)(1.0 / sm[j]);                              \
        for (i = 0; i < n; i++) {                                                     \
            T* yr = y + i * inner;                                                    \
            for (j = 0; j < w; j++) yr[j] = yr[j] * c[j];                             \
        }                                                                             \
    }                                                                                 \
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

#define FASTNN_ACT_DEFINE_XENT(T, S)                                                  \
FASTNN_ACT_INLINE void fastnn_xent_impl_##S(const T* x, const T* t,                   \
        const int64_t* labels, const fastnn_xent_opts* o, double* loss,              \
        const T* scale, ptrdiff_t scale_step, T* gx, ptrdiff_t rows, ptrdiff_t C) {   \
    ptrdiff_t r, j;                                                                   \
    const T* w = (const T*)o->weight;                                                 \
    int plain = !labels || fastnn_xent_plain(o);                                      \
    double eps = o->smoothing, ec = o->smoothing / (double)C;                         \
    for (r = 0; r < rows; r++) {                                                      \
        const T* xr = x + r * C;                                                      \
        const T* tr = t ? t + r * C : NULL;                                           \
        T* g = gx ? gx + r * C : NULL;                                                \
        int64_t label = labels ? labels[r] : 0;                                       \
        int short_row = C < FASTNN_SHORT_ROW;                                         \
        double s = 0, tsum = 1, dot = 0;                                              \
        T m;                                                                          \
        if (!plain && o->has_ignore && label == o->ignore_index) {                    \
            if (g) { for (j = 0; j < C; j++) g[j] = 0; } else loss[r] = 0;            \
            continue;                                                                 \
        }                                                                             \
        if (short_row) {                                                              \
            m = xr[0];                                                                \
            for (j = 1; j < C; j++) m = xr[j] > m ? xr[j] : m;                        \
            for (j = 0; j < C; j++) {                                                 \
                T e = fastnn_exp_##S(xr[j] - m);                                      \
                if (g) g[j] = e;                                                      \
                s += e;                                                               \
            }                                                                         \
            if (tr) {                                                                 \
                tsum = 0;                                                             \
                for (j = 0; j < C; j++) { tsum += tr[j]; dot += tr[j] * (xr[j] - m); } \
            }                                                                         \
        } else {                                                                      \
            m = (T)fastnn_reduce_impl_##S(FASTNN_RED_MAX, xr, NULL, 0, NULL, C);      \
            s = fastnn_reduce_impl_##S(FASTNN_RED_EXPSUM, xr, NULL, m, g, C);         \
            if (tr) {                                                                 \
                tsum = fastnn_reduce_impl_##S(FASTNN_RED_SUM, tr, NULL, 0, NULL, C);  \
                if (!g) dot = fastnn_reduce_impl_##S(FASTNN_RED_DOT, tr, xr, m, NULL, C); \
            }                                                                         \
        }                                                                             \
        double wy = w && !tr ? (double)w[label] : 1.0;                                \
        if (!g) {                                                                     \
            double ls = log(s);                                                       \
            if (tr) loss[r] = ls * tsum - dot;                                        \
            else if (plain) loss[r] = ls - ((double)xr[label] - (double)m);           \
            else {                                                                    \
                double l = wy * (ls - ((double)xr[label] - (double)m));               \
                if (eps != 0) {                                                       \
                    double dw = w ? fastnn_reduce_impl_##S(FASTNN_RED_DOT, w, xr, m, NULL, C) \
                                  : fastnn_reduce_impl_##S(FASTNN_RED_SUBSUM, xr, NULL, m, NULL, C); \
                    l = (1 - eps) * l + ec * (o->wsum * ls - dw);                     \
                }                                                                     \
                loss[r] = l;                                                          \
            }                                                                         \
            continue;                                                                 \
        }                                                                             \
        T sc = scale[r * scale_step];                                                 \
        if (tr) {                                                                     \
            T a = (T)(sc * tsum / s);                                                 \
            if (short_row) { for (j = 0; j < C; j++) g[j] = g[j] * a - sc * tr[j]; }  \
            else fastnn_span_impl_##S(FASTNN_OP_SCALE_SUB, tr, g, g, C, a, sc);       \
        } else {                                                                      \
            double ey = (double)g[label];                                             \
            double rest = s - ey;                                                     \
            if (rest < 0.0009765625 * s) {                                            \
                /* s - e_label cancels: sum the other classes again. */               \
                rest = 0;                                                             \
                for (j = 0; j < C; j++) rest += j == label ? 0.0 : (double)g[j];      \
            }                                                                         \
            if (plain) {                                                              \
                T a = (T)(sc / s);                                                    \
                if (short_row) { for (j = 0; j < C; j++) g[j] = g[j] * a; }           \
                else fastnn_span_impl_##S(FASTNN_OP_SCALE, NULL, g, g, C, a, 0);      \
                g[label] = (T)(-rest / s * sc);                                       \
            } else {                                                                  \
                T a = (T)(sc * ((1 - eps) * wy + ec * o->wsum) / s);                  \
                T b = (T)(sc * ec);                                                   \
                if (eps == 0) fastnn_span_impl_##S(FASTNN_OP_SCALE, NULL, g, g, C, a, 0); \
                else if (w) fastnn_span_impl_##S(FASTNN_OP_SCALE_SUB, w, g, g, C, a, b); \
                else fastnn_span_impl_##S(FASTNN_OP_AXPB, NULL, g, g, C, a, -b);      \
                g[label] = (T)(sc / s * (-rest * wy * (1 - eps + ec)                  \
                                         + ec * (o->wsum - wy) * ey));                \
            }                                                                         \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
FASTNN_ACT_INLINE void fastnn_xent_cols_impl_##S(const T* x, const T* t,              \
        const int64_t* labels, const fastnn_xent_opts* o, double* loss,              \
        const T* scale, ptrdiff_t scale_step, T* gx, ptrdiff_t C, ptrdiff_t inner,    \
        ptrdiff_t nw) {                                                               \
    /* The same for nw <= FASTNN_COLS positions of (C, inner) logits (class axis    \
     * 1 of (N, C, d1, ...)): x, t and gx point at the block's first position of   \
     * class 0, labels, loss and scale (times scale_step) at its first position.   \
     * Vectorised along the positions; the sums run over the classes in order, in  \
     * double, one accumulator per position. */                                    \
    T mx[FASTNN_COLS], ca[FASTNN_COLS], cb[FASTNN_COLS], lv[FASTNN_COLS];              \
    double sm[FASTNN_COLS], aux[FASTNN_COLS], ts[FASTNN_COLS];                        \
    int64_t lab[FASTNN_COLS];                                                         \
    unsigned char ign[FASTNN_COLS];                                                   \
    const T* w = (const T*)o->weight;                                                 \
    int plain = !labels || fastnn_xent_plain(o);                                      \
    double eps = o->smoothing, ec = o->smoothing / (double)C;                         \
    ptrdiff_t i, j;                                                                   \
    for (j = 0; j < nw; j++) {                                                        \
        lab[j] = labels ? labels[j] : 0;                                              \
        ign[j] = labels && o->has_ignore && lab[j] == o->ignore_index;                \
        if (ign[j]) lab[j] = 0;       /* any class: the position is zeroed at the end */ \
        mx[j] = x[j];                                                                 \
        sm[j] = 0; aux[j] = 0; ts[j] = 0;                                             \
    }                                                                                 \
    for (i = 1; i < C; i++) {                                                         \
        const T* xr = x + i * inner;                                                  \
        for (j = 0; j < nw; j++) mx[j] = xr[j] > mx[j] ? xr[j] : mx[j];               \
    }                                                                                 \
    for (i = 0; i < C; i++) {                                                         \
        const T* xr = x + i * inner;                                                  \
        if (gx) {                                                                     \
            T* gr = gx + i * inner;                                                   \
            for (j = 0; j < nw; j++) {                                                \
                T e = fastnn_exp_##S(xr[j] - mx[j]);                                  \
                gr[j] = e;                                                            \
                sm[j] += e;                                                           \
            }                                                                         \
        } else {                                                                      \
            for (j = 0; j < nw; j++) sm[j] += fastnn_exp_##S(xr[j] - mx[j]);           \
        }                                                                             \
    }                                                                                 \
    if (t) {                                                                          \
        for (i = 0; i < C; i++) {                                                     \
            const T* xr = x + i * inner;                                              \
            const T* tr = t + i * inner;                                              \
            for (j = 0; j < nw; j++) { ts[j] += tr[j]; aux[j] += tr[j] * (xr[j] - mx[j]); } \
        }                                                                             \
    } else if (eps != 0 && !gx) {                                                     \
        for (i = 0; i < C; i++) {                                                     \
            const T* xr = x + i * inner;                                              \
            T wi = w ? w[i] : (T)1;                                                   \
            for (j = 0; j < nw; j++) aux[j] += wi * (xr[j] - mx[j]);                  \
        }                                                                             \
    }                                                                                 \
    if (!gx) {                                                                        \
        for (j = 0; j < nw; j++) {                                                    \
            double ls = log(sm[j]);                                                   \
            if (t) { loss[j] = ls * ts[j] - aux[j]; continue; }                      \
            if (ign[j]) { loss[j] = 0; continue; }                                    \
            double l = ls - ((double)x[lab[j] * inner + j] - (double)mx[j]);          \
            if (!plain) {                                                             \
                l *= w ? (double)w[lab[j]] : 1.0;                                     \
                if (eps != 0) l = (1 - eps) * l + ec * (o->wsum * ls - aux[j]);       \
            }                                                                         \
            loss[j] = l;                                                              \
        }                                                                             \
        return;                                                                       \
    }                                                                                 \
    for (j = 0; j < nw; j++) {                                                        \
        T sc = scale[j * scale_step];                                                 \
        double s = sm[j];                                                             \
        if (t) { ca[j] = (T)(sc * ts[j] / s); cb[j] = sc; continue; }                 \
        if (ign[j]) { ca[j] = 0; cb[j] = 0; continue; }                               \
        double ey = (double)gx[lab[j] * inner + j], rest = s - ey;                    \
        if (rest < 0.0009765625 * s) {                                                \
            rest = 0;                                                                 \
            for (i = 0; i < C; i++) rest += i == lab[j] ? 0.0 : (double)gx[i * inner + j]; \
        }                                                                             \
        if (plain) {                                                                  \
            ca[j] = (T)(sc / s); cb[j] = 0;                                           \
            lv[j] = (T)(-rest / s * sc);                                              \
        } else {                                                                      \
            double wy = w ? (double)w[lab[j]] : 1.0;                                  \
            ca[j] = (T)(sc * ((1 - eps) * wy + ec * o->wsum) / s);                    \
            cb[j] = (T)(sc * ec);                                                     \
            lv[j] = (T)(sc / s * (-rest * wy * (1 - eps + ec) + ec * (o->wsum - wy) * ey)); \
        }                                                                             \
    }                                                                                 \
    for (i = 0; i < C; i++) {                                                         \
        T* gr = gx + i * inner;                                                       \
        if (t) {                                                                      \
            const T* tr = t + i * inner;                                              \
            for (j = 0; j < nw; j++) gr[j] = gr[j] * ca[j] - cb[j] * tr[j];           \
        } else if (eps != 0) {                                                        \
            T wi = w ? w[i] : (T)1;                                                   \
            for (j = 0; j < nw; j++) gr[j] = gr[j] * ca[j] - cb[j] * wi;              \
        } else {                                                                      \
            for (j = 0; j < nw; j++) gr[j] = gr[j] * ca[j];                           \
        }                                                                             \
    }                                                                                 \
    if (t) return;                                                                    \
    for (j = 0; j < nw; j++) {                                                        \
        if (ign[j]) { for (i = 0; i < C; i++) gx[i * inner + j] = 0; }                \
        else gx[lab[j] * inner + j] = lv[j];                                          \
    }                                                                                 \
}

FASTNN_ACT_DEFINE_XENT(float, f32)
FASTNN_ACT_DEFINE_XENT(double, f64)

/* One compiled copy of the kernels per instruction set, collected in a table. */
#define FASTNN_ACT_TABLE_TYPE(T, S)                                                   \
typedef struct {                                                                      \
    void (*span)(int, const T*, const T*, T*, ptrdiff_t, T, T);                       \
    void (*rows)(const T*, const T*, T*, ptrdiff_t, ptrdiff_t, int);                  \
    void (*cols)(const T*, const T*, T*, ptrdiff_t, ptrdiff_t, ptrdiff_t, int);       \
    void (*xent)(const T*, const T*, const int64_t*, const fastnn_xent_opts*,         \
                 double*, const T*, ptrdiff_t, T*, ptrdiff_t, ptrdiff_t);             \
    void (*xent_cols)(const T*, const T*, const int64_t*, const fastnn_xent_opts*,    \
                      double*, const T*, ptrdiff_t, T*, ptrdiff_t, ptrdiff_t, ptrdiff_t); \
} fastnn_act_table_##S;
FASTNN_ACT_TABLE_TYPE(float, f32)
FASTNN_ACT_TABLE_TYPE(double, f64)

#define FASTNN_ACT_VARIANT(T, S, SUFFIX, ATTR)                                        \
ATTR static void fastnn_span_##S##_##SUFFIX(int op, const T* g, const T* x, T* y,     \
                                            ptrdiff_t n, T a, T b)                    \
{ fastnn_span_impl_##S(op, g, x, y, n, a, b); }                                       \
ATTR static void fastnn_rows_##S##_##SUFFIX(const T* g, const T* x, T* y,             \
                                            ptrdiff_t rows, ptrdiff_t n, int log_)    \
{ fastnn_rows_impl_##S(g, x, y, rows, n, log_); }                                     \
ATTR static void fastnn_cols_##S##_##SUFFIX(const T* g, const T* x, T* y, ptrdiff_t n, \
                                            ptrdiff_t inner, ptrdiff_t w, int log_)   \
{ fastnn_cols_impl_##S(g, x, y, n, inner, w, log_); }                                 \
ATTR static void fastnn_xent_##S##_##SUFFIX(const T* x, const T* t,                   \
        const int64_t* labels, const fastnn_xent_opts* o, double* loss,              \
        const T* scale, ptrdiff_t scale_step, T* gx, ptrdiff_t rows, ptrdiff_t C)     \
{ fastnn_xent_impl_##S(x, t, labels, o, loss, scale, scale_step, gx, rows, C); }      \
ATTR static void fastnn_xent_cols_##S##_##SUFFIX(const T* x, const T* t,              \
        const int64_t* labels, const fastnn_xent_opts* o, double* loss,              \
        const T* scale, ptrdiff_t scale_step, T* gx, ptrdiff_t C, ptrdiff_t inner,    \
        ptrdiff_t nw)                                                                 \
{ fastnn_xent_cols_impl_##S(x, t, labels, o, loss, scale, scale_step, gx, C, inner, nw); } \
static const fastnn_act_table_##S fastnn_act_##S##_##SUFFIX = {                       \
    fastnn_span_##S##_##SUFFIX, fastnn_rows_##S##_##SUFFIX,                           \
    fastnn_cols_##S##_##SUFFIX, fastnn_xent_##S##_##SUFFIX,                           \
    fastnn_xent_cols_##S##_##SUFFIX};

/* Each variant is a table of the five entry points (_simd.h's levels). */
#define FASTNN_ACT_VARIANTS(V, ATTR)                                                  \
    FASTNN_ACT_VARIANT(float, f32, V, ATTR) FASTNN_ACT_VARIANT(double, f64, V, ATTR)
FASTNN_SIMD_VARIANTS(FASTNN_ACT_VARIANTS)
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

/* The level of _simd.h, once at import. */
static int fastnn_act_pick(void) {
    int level = fastnn_simd_level();
    fastnn_act_f32 = &fastnn_act_f32_base;
    fastnn_act_f64 = &fastnn_act_f64_base;
#ifdef FASTNN_SIMD_X86
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

#endif
