/* Winograd F(4x4, 3x3) transforms (Lavin & Gray, "Fast Algorithms for Convolutional
 * Neural Networks", 2016; interpolation points 0, +-1, +-2, infinity):
 *   input   V = B^T d B     (6x6 input tile d)
 *   weight  U = G g G^T     (3x3 kernel g)
 *   output  Y = A^T M A     (M = sum over channels of U * V, per tile position)
 * Each kernel transforms L independent lanes (channels, or neighbouring tiles of one
 * tile row) at once, lanes contiguous in memory on both sides: tile position p = 6i + j
 * of lane l is read or stored at [p * sp + l]. The lanes go in GCC vectors of the
 * variant's width (16, 32 or 64 bytes: FASTNN_SIMD_VARIANTS of _simd.h), the last
 * L % width one at a time; how lanes are split depends on L only, so the bits depend
 * on the shape and the SIMD level, never on the thread count. fastnn_winograd_pick
 * points the callers' pointers at one variant.
 *
 * Non-finite values: a tile transform mixes its 36 inputs, so an Inf turns outputs
 * whose windows do not hold it into NaN (Inf - Inf); wg_finite lets the caller see
 * that and fall back to the direct convolution, which propagates like the reference.
 *
 * Measured float32 error of the whole convolution (norm-wise against float64, random
 * normal data and 1/sqrt(fan-in) weights, C up to 512): 1e-6 to 4.5e-6 (the direct
 * product: 2e-7 to 1.2e-6); float64 below 1e-14. */
#ifndef FASTNN_WINOGRAD_H
#define FASTNN_WINOGRAD_H
#include <stddef.h>

#include "_simd.h"

#define WG_WIDTH_base 16
#define WG_WIDTH_avx2 32
#define WG_WIDTH_avx512 64
/* GNU C: W lanes of a variant's width in one vector. Portable C (_portable.h): the
 * "vector" is one scalar, so the vector loop below does every lane one at a time. */
#ifdef FASTNN_GNU_C
#define WG_VEC_TYPEDEF(T, V)                                                          \
    typedef T wg_vec_##T##_##V __attribute__((vector_size(WG_WIDTH_##V), aligned(sizeof(T))));
#define WG_LANES(T, V) (WG_WIDTH_##V / (ptrdiff_t)sizeof(T))
#else
#define WG_VEC_TYPEDEF(T, V) typedef T wg_vec_##T##_##V;
#define WG_LANES(T, V) 1
#endif
#define WG_LD(VT, p) (*(const VT *)(p))
#define WG_ST(VT, p, x) (*(VT *)(p) = (x))

/* B^T row combinations of six values (one column or row of a tile). */
#define WG_BT(T, VT, o, s, d0, d1, d2, d3, d4, d5)                                       \
    do {                                                                              \
        VT b14_ = d4 - (T)4 * d2, b23_ = d3 - (T)4 * d1;                              \
        VT c14_ = d4 - d2, c23_ = (T)2 * (d3 - d1);                                   \
        WG_ST(VT, (o), (T)4 * d0 - (T)5 * d2 + d4);                                   \
        WG_ST(VT, (o) + (s), b14_ + b23_);                                            \
        WG_ST(VT, (o) + 2 * (s), b14_ - b23_);                                        \
        WG_ST(VT, (o) + 3 * (s), c14_ + c23_);                                        \
        WG_ST(VT, (o) + 4 * (s), c14_ - c23_);                                        \
        WG_ST(VT, (o) + 5 * (s), (T)4 * d1 - (T)5 * d3 + d5);                         \
    } while (0)

/* One vector (or one scalar) of lanes: B^T d B with d[i][j] at col[j] + i * sh + l. */
#define WG_INPUT_LANES(T, VT)                                                            \
    do {                                                                              \
        VT t_[36];                                                                    \
        int i_, j_;                                                                   \
        for (j_ = 0; j_ < 6; j_++) {                                                  \
            const T *c_ = col[j_] + l;                                                \
            VT d0 = WG_LD(VT, c_), d1 = WG_LD(VT, c_ + sh), d2 = WG_LD(VT, c_ + 2 * sh); \
            VT d3 = WG_LD(VT, c_ + 3 * sh), d4 = WG_LD(VT, c_ + 4 * sh);              \
            VT d5 = WG_LD(VT, c_ + 5 * sh);                                           \
            WG_BT(T, VT, t_ + j_, 6, d0, d1, d2, d3, d4, d5);                            \
        }                                                                             \
        for (i_ = 0; i_ < 6; i_++) {                                                  \
            const VT *r_ = t_ + 6 * i_;                                               \
            T *o_ = v + 6 * i_ * sp + l;                                              \
            WG_BT(T, VT, o_, sp, r_[0], r_[1], r_[2], r_[3], r_[4], r_[5]);              \
        }                                                                             \
    } while (0)

/* G row combinations of three values. */
#define WG_G(T, VT, o, s, g0, g1, g2)                                                    \
    do {                                                                              \
        VT e_ = g0 + g2, f_ = g0 * (T)(1.0 / 4) + g2;                                 \
        WG_ST(VT, (o), g0 * (T)(1.0 / 4));                                            \
        WG_ST(VT, (o) + (s), (e_ + g1) * (T)(-1.0 / 6));                              \
        WG_ST(VT, (o) + 2 * (s), (e_ - g1) * (T)(-1.0 / 6));                          \
        WG_ST(VT, (o) + 3 * (s), (f_ + g1 * (T)(1.0 / 2)) * (T)(1.0 / 6));            \
        WG_ST(VT, (o) + 4 * (s), (f_ - g1 * (T)(1.0 / 2)) * (T)(1.0 / 6));            \
        WG_ST(VT, (o) + 5 * (s), g2);                                                 \
    } while (0)

/* G g G^T with g[i][j] at g + i * si + j * sj + l. */
#define WG_WEIGHT_LANES(T, VT)                                                           \
    do {                                                                              \
        VT t_[18];                                                                    \
        int i_, j_;                                                                   \
        for (j_ = 0; j_ < 3; j_++) {                                                  \
            const T *c_ = g + j_ * sj + l;                                            \
            VT g0 = WG_LD(VT, c_), g1 = WG_LD(VT, c_ + si), g2 = WG_LD(VT, c_ + 2 * si); \
            WG_G(T, VT, t_ + j_, 3, g0, g1, g2);                                         \
        }                                                                             \
        for (i_ = 0; i_ < 6; i_++) {                                                  \
            const VT *r_ = t_ + 3 * i_;                                               \
            WG_G(T, VT, u + 6 * i_ * sp + l, sp, r_[0], r_[1], r_[2]);                   \
        }                                                                             \
    } while (0)

/* A^T row combinations of six values, plus z (zero, or the bias). */
#define WG_AT(T, VT, o, s, z, m0, m1, m2, m3, m4, m5)                                 \
    do {                                                                              \
        VT a_ = m1 + m2, b_ = m1 - m2, c_ = m3 + m4, e_ = m3 - m4;                    \
        WG_ST(VT, (o), m0 + a_ + c_ z);                                               \
        WG_ST(VT, (o) + (s), b_ + (T)2 * e_ z);                                       \
        WG_ST(VT, (o) + 2 * (s), a_ + (T)4 * c_ z);                                   \
        WG_ST(VT, (o) + 3 * (s), b_ + (T)8 * e_ + m5 z);                              \
    } while (0)

/* A^T M A with M[p] at m + p * sp + l, Y[i][j] (+ bias[l] when bias is given)
 * stored at y + i * syi + j * syj + l. */
#define WG_OUTPUT_LANES(T, VT)                                                        \
    do {                                                                              \
        VT t_[24];                                                                    \
        int i_, j_;                                                                   \
        for (j_ = 0; j_ < 6; j_++) {                                                  \
            const T *c_ = m + j_ * sp + l;                                            \
            VT m0 = WG_LD(VT, c_), m1 = WG_LD(VT, c_ + 6 * sp);                       \
            VT m2 = WG_LD(VT, c_ + 12 * sp), m3 = WG_LD(VT, c_ + 18 * sp);            \
            VT m4 = WG_LD(VT, c_ + 24 * sp), m5 = WG_LD(VT, c_ + 30 * sp);            \
            WG_AT(T, VT, t_ + j_, 6, , m0, m1, m2, m3, m4, m5);                       \
        }                                                                             \
        for (i_ = 0; i_ < 4; i_++) {                                                  \
            const VT *r_ = t_ + 6 * i_;                                               \
            if (bias) {                                                               \
                VT bv_ = WG_LD(VT, bias + l);                                         \
                WG_AT(T, VT, y + i_ * syi + l, syj, + bv_, r_[0], r_[1], r_[2], r_[3], r_[4], \
                      r_[5]);                                                         \
            } else {                                                                  \
                WG_AT(T, VT, y + i_ * syi + l, syj, , r_[0], r_[1], r_[2], r_[3], r_[4], r_[5]); \
            }                                                                         \
        }                                                                             \
    } while (0)

#define WG_KERNELS_T(V, ATTR, T)                                                      \
    WG_VEC_TYPEDEF(T, V)                                                              \
    ATTR static void wg_input_##T##_##V(const T *const *col, ptrdiff_t sh, ptrdiff_t L, \
                                        T *v, ptrdiff_t sp)                           \
    {                                                                                 \
        const ptrdiff_t W = WG_LANES(T, V);                                           \
        ptrdiff_t l = 0;                                                              \
        for (; l + W <= L; l += W)                                                    \
            WG_INPUT_LANES(T, wg_vec_##T##_##V);                                         \
        for (; l < L; l++)                                                            \
            WG_INPUT_LANES(T, T);                                                        \
    }                                                                                 \
    ATTR static void wg_weight_##T##_##V(const T *g, ptrdiff_t si, ptrdiff_t sj,      \
                                         ptrdiff_t L, T *u, ptrdiff_t sp)             \
    {                                                                                 \
        const ptrdiff_t W = WG_LANES(T, V);                                           \
        ptrdiff_t l = 0;                                                              \
        for (; l + W <= L; l += W)                                                    \
            WG_WEIGHT_LANES(T, wg_vec_##T##_##V);                                        \
        for (; l < L; l++)                                                            \
            WG_WEIGHT_LANES(T, T);                                                       \
    }                                                                                 \
    ATTR static void wg_output_##T##_##V(const T *m, ptrdiff_t sp, ptrdiff_t L, T *y,     \
                                         ptrdiff_t syi, ptrdiff_t syj, const T *bias) \
    {                                                                                 \
        const ptrdiff_t W = WG_LANES(T, V);                                           \
        ptrdiff_t l = 0;                                                              \
        for (; l + W <= L; l += W)                                                    \
            WG_OUTPUT_LANES(T, wg_vec_##T##_##V);                                        \
        for (; l < L; l++)                                                            \
            WG_OUTPUT_LANES(T, T);                                                       \
    }                                                                                 \
    ATTR static int wg_finite_##T##_##V(const T *y, ptrdiff_t n)                      \
    {                                                                                 \
        ptrdiff_t q;                                                                  \
        int bad = 0;                                                                  \
        for (q = 0; q < n; q++)                                                       \
            bad |= !(y[q] - y[q] == 0); /* NaN for Inf and NaN */                     \
        return !bad;                                                                  \
    }
/* NCHW tile rows: split a row into its four column phases, o[j * so + l] = src[4l + j]
 * (the gather of neighbouring tiles), and merge them back with the bias added,
 * dst[4l + j] = s[j * ss + l] + b (the store of neighbouring output tiles). */
#define WG_PHASES_T(V, ATTR, T)                                                       \
    ATTR static void wg_split4_##T##_##V(const T *restrict src, ptrdiff_t n,          \
                                         T *restrict o, ptrdiff_t so)                 \
    {                                                                                 \
        ptrdiff_t l;                                                                  \
        for (l = 0; l < n; l++) {                                                     \
            o[l] = src[4 * l];                                                        \
            o[so + l] = src[4 * l + 1];                                               \
            o[2 * so + l] = src[4 * l + 2];                                           \
            o[3 * so + l] = src[4 * l + 3];                                           \
        }                                                                             \
    }                                                                                 \
    ATTR static void wg_merge4_##T##_##V(const T *restrict s, ptrdiff_t ss, ptrdiff_t n, \
                                         T b, T *restrict dst)                        \
    {                                                                                 \
        ptrdiff_t l;                                                                  \
        for (l = 0; l < n; l++) {                                                     \
            dst[4 * l] = s[l] + b;                                                    \
            dst[4 * l + 1] = s[ss + l] + b;                                           \
            dst[4 * l + 2] = s[2 * ss + l] + b;                                       \
            dst[4 * l + 3] = s[3 * ss + l] + b;                                       \
        }                                                                             \
    }
#define WG_KERNELS(V, ATTR) WG_KERNELS_T(V, ATTR, float) WG_KERNELS_T(V, ATTR, double) \
    WG_PHASES_T(V, ATTR, float) WG_PHASES_T(V, ATTR, double)
FASTNN_SIMD_VARIANTS(WG_KERNELS)
/* The kernels' function types, for FASTNN_SIMD_POINTER. */
#define WG_TYPES_T(T)                                                                 \
    typedef void wg_input_##T##_fn(const T *const *, ptrdiff_t, ptrdiff_t, T *, ptrdiff_t); \
    typedef void wg_weight_##T##_fn(const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, T *, ptrdiff_t); \
    typedef void wg_output_##T##_fn(const T *, ptrdiff_t, ptrdiff_t, T *, ptrdiff_t, ptrdiff_t, \
                                    const T *);                                       \
    typedef int wg_finite_##T##_fn(const T *, ptrdiff_t);                             \
    typedef void wg_split4_##T##_fn(const T *, ptrdiff_t, T *, ptrdiff_t);            \
    typedef void wg_merge4_##T##_fn(const T *, ptrdiff_t, ptrdiff_t, T, T *);
WG_TYPES_T(float)
WG_TYPES_T(double)
FASTNN_SIMD_POINTER(wg_input_float)
FASTNN_SIMD_POINTER(wg_input_double)
FASTNN_SIMD_POINTER(wg_weight_float)
FASTNN_SIMD_POINTER(wg_weight_double)
FASTNN_SIMD_POINTER(wg_output_float)
FASTNN_SIMD_POINTER(wg_output_double)
FASTNN_SIMD_POINTER(wg_finite_float)
FASTNN_SIMD_POINTER(wg_finite_double)
FASTNN_SIMD_POINTER(wg_split4_float)
FASTNN_SIMD_POINTER(wg_split4_double)
FASTNN_SIMD_POINTER(wg_merge4_float)
FASTNN_SIMD_POINTER(wg_merge4_double)

static int fastnn_winograd_pick(void)
{
    int level = fastnn_simd_level();
    FASTNN_SIMD_SET(level, wg_input_float);
    FASTNN_SIMD_SET(level, wg_input_double);
    FASTNN_SIMD_SET(level, wg_weight_float);
    FASTNN_SIMD_SET(level, wg_weight_double);
    FASTNN_SIMD_SET(level, wg_output_float);
    FASTNN_SIMD_SET(level, wg_output_double);
    FASTNN_SIMD_SET(level, wg_finite_float);
    FASTNN_SIMD_SET(level, wg_finite_double);
    FASTNN_SIMD_SET(level, wg_split4_float);
    FASTNN_SIMD_SET(level, wg_split4_double);
    FASTNN_SIMD_SET(level, wg_merge4_float);
    FASTNN_SIMD_SET(level, wg_merge4_double);
    return level;
}
#endif
