/* Transposing copy of a channel-major tile into channel-last memory:
 *     dst[p * ldd + k] = src[k * lds + p]     for k < nk, p < np.
 * The convolutions with few output channels per group (NHWC output from the
 * channel-major kernel, _conv.pyx implicit_item) store their tile this way.
 *
 * Why not a plain loop: element by element, each output pixel takes nk scalar loads
 * nk rows apart and nk scalar stores into an output that is not in cache yet; the
 * store queue fills up waiting for those lines. In blocks of 8 floats (4 doubles) x
 * as many pixels, the block is loaded as vectors, transposed in registers and stored
 * a pixel per vector, 8 (4) times fewer stores. Measured on Zen 5 (N32 C3 64x64 K8
 * k4 "same" NHWC forward, 2 threads, the bench's isolation environment, min over
 * interleaved rounds): 0.55 ms with the plain loop, 0.43 with the blocks; there the
 * plain loop had taken 29% of one thread's samples. The values are moved, not
 * computed: every variant gives the same bits. */
#ifndef FASTNN_TRANSPOSE_H
#define FASTNN_TRANSPOSE_H

#include <stddef.h>
#include <string.h>

#include "_simd.h"

#ifdef FASTNN_GNU_C
typedef float fastnn_tr_v8f __attribute__((vector_size(32), aligned(4)));
typedef int fastnn_tr_v8i __attribute__((vector_size(32)));
typedef double fastnn_tr_v4d __attribute__((vector_size(32), aligned(8)));
typedef long long fastnn_tr_v4i __attribute__((vector_size(32)));

/* 8 x 8 floats: rows r[k] (8 pixels of channel k) to rows of 8 channels a pixel. */
#define FASTNN_TR_BLOCK_F(V, ATTR)                                                       \
    ATTR static inline void fastnn_tr_block_f_##V(const float *src, ptrdiff_t lds,       \
                                                  float *dst, ptrdiff_t ldd)             \
    {                                                                                    \
        fastnn_tr_v8f r0, r1, r2, r3, r4, r5, r6, r7, t0, t1, t2, t3, t4, t5, t6, t7;   \
        fastnn_tr_v8f u0, u1, u2, u3, u4, u5, u6, u7;                                    \
        const fastnn_tr_v8i lo = {0, 8, 1, 9, 4, 12, 5, 13};                             \
        const fastnn_tr_v8i hi = {2, 10, 3, 11, 6, 14, 7, 15};                           \
        const fastnn_tr_v8i q0 = {0, 1, 8, 9, 4, 5, 12, 13};                             \
        const fastnn_tr_v8i q1 = {2, 3, 10, 11, 6, 7, 14, 15};                           \
        const fastnn_tr_v8i h0 = {0, 1, 2, 3, 8, 9, 10, 11};                             \
        const fastnn_tr_v8i h1 = {4, 5, 6, 7, 12, 13, 14, 15};                           \
        memcpy(&r0, src, 32);                                                            \
        memcpy(&r1, src + lds, 32);                                                      \
        memcpy(&r2, src + 2 * lds, 32);                                                  \
        memcpy(&r3, src + 3 * lds, 32);                                                  \
        memcpy(&r4, src + 4 * lds, 32);                                                  \
        memcpy(&r5, src + 5 * lds, 32);                                                  \
        memcpy(&r6, src + 6 * lds, 32);                                                  \
        memcpy(&r7, src + 7 * lds, 32);                                                  \
        t0 = __builtin_shuffle(r0, r1, lo);                                              \
        t1 = __builtin_shuffle(r0, r1, hi);                                              \
        t2 = __builtin_shuffle(r2, r3, lo);                                              \
        t3 = __builtin_shuffle(r2, r3, hi);                                              \
        t4 = __builtin_shuffle(r4, r5, lo);                                              \
        t5 = __builtin_shuffle(r4, r5, hi);                                              \
        t6 = __builtin_shuffle(r6, r7, lo);                                              \
        t7 = __builtin_shuffle(r6, r7, hi);                                              \
        u0 = __builtin_shuffle(t0, t2, q0);                                              \
        u1 = __builtin_shuffle(t0, t2, q1);                                              \
        u2 = __builtin_shuffle(t1, t3, q0);                                              \
        u3 = __builtin_shuffle(t1, t3, q1);                                              \
        u4 = __builtin_shuffle(t4, t6, q0);                                              \
        u5 = __builtin_shuffle(t4, t6, q1);                                              \
        u6 = __builtin_shuffle(t5, t7, q0);                                              \
        u7 = __builtin_shuffle(t5, t7, q1);                                              \
        r0 = __builtin_shuffle(u0, u4, h0);                                              \
        r1 = __builtin_shuffle(u1, u5, h0);                                              \
        r2 = __builtin_shuffle(u2, u6, h0);                                              \
        r3 = __builtin_shuffle(u3, u7, h0);                                              \
        r4 = __builtin_shuffle(u0, u4, h1);                                              \
        r5 = __builtin_shuffle(u1, u5, h1);                                              \
        r6 = __builtin_shuffle(u2, u6, h1);                                              \
        r7 = __builtin_shuffle(u3, u7, h1);                                              \
        memcpy(dst, &r0, 32);                                                            \
        memcpy(dst + ldd, &r1, 32);                                                      \
        memcpy(dst + 2 * ldd, &r2, 32);                                                  \
        memcpy(dst + 3 * ldd, &r3, 32);                                                  \
        memcpy(dst + 4 * ldd, &r4, 32);                                                  \
        memcpy(dst + 5 * ldd, &r5, 32);                                                  \
        memcpy(dst + 6 * ldd, &r6, 32);                                                  \
        memcpy(dst + 7 * ldd, &r7, 32);                                                  \
    }

/* 4 x 4 doubles, the same way. */
#define FASTNN_TR_BLOCK_D(V, ATTR)                                                       \
    ATTR static inline void fastnn_tr_block_d_##V(const double *src, ptrdiff_t lds,      \
                                                  double *dst, ptrdiff_t ldd)            \
    {                                                                                    \
        fastnn_tr_v4d r0, r1, r2, r3, t0, t1, t2, t3;                                    \
        const fastnn_tr_v4i lo = {0, 4, 2, 6}, hi = {1, 5, 3, 7};                        \
        const fastnn_tr_v4i h0 = {0, 1, 4, 5}, h1 = {2, 3, 6, 7};                        \
        memcpy(&r0, src, 32);                                                            \
        memcpy(&r1, src + lds, 32);                                                      \
        memcpy(&r2, src + 2 * lds, 32);                                                  \
        memcpy(&r3, src + 3 * lds, 32);                                                  \
        t0 = __builtin_shuffle(r0, r1, lo);                                              \
        t1 = __builtin_shuffle(r0, r1, hi);                                              \
        t2 = __builtin_shuffle(r2, r3, lo);                                              \
        t3 = __builtin_shuffle(r2, r3, hi);                                              \
        r0 = __builtin_shuffle(t0, t2, h0);                                              \
        r1 = __builtin_shuffle(t1, t3, h0);                                              \
        r2 = __builtin_shuffle(t0, t2, h1);                                              \
        r3 = __builtin_shuffle(t1, t3, h1);                                              \
        memcpy(dst, &r0, 32);                                                            \
        memcpy(dst + ldd, &r1, 32);                                                      \
        memcpy(dst + 2 * ldd, &r2, 32);                                                  \
        memcpy(dst + 3 * ldd, &r3, 32);                                                  \
    }
#define FASTNN_TR_BF 8
#define FASTNN_TR_BD 4
#else
#define FASTNN_TR_BF 0
#define FASTNN_TR_BD 0
#endif

/* The whole tile: full blocks, then the channels and pixels left over one by one. */
#define FASTNN_TR_TILE(V, ATTR, T, S, B)                                                 \
    ATTR static void fastnn_transpose_##S##_##V(const T *src, ptrdiff_t lds, T *dst,     \
                                                ptrdiff_t ldd, ptrdiff_t nk,             \
                                                ptrdiff_t np)                            \
    {                                                                                    \
        ptrdiff_t k0 = 0, p, k;                                                          \
        if (B > 0)                                                                       \
            for (; k0 + B <= nk; k0 += B) {                                              \
                for (p = 0; p + B <= np; p += B)                                         \
                    FASTNN_TR_CALL(S, V, src + k0 * lds + p, lds, dst + p * ldd + k0, ldd); \
                for (; p < np; p++)                                                      \
                    for (k = k0; k < k0 + B; k++)                                        \
                        dst[p * ldd + k] = src[k * lds + p];                             \
            }                                                                            \
        for (p = 0; p < np && k0 < nk; p++)                                              \
            for (k = k0; k < nk; k++)                                                    \
                dst[p * ldd + k] = src[k * lds + p];                                     \
    }

#ifdef FASTNN_GNU_C
#define FASTNN_TR_CALL(S, V, s, ls, d, ld) fastnn_tr_block_##S##_##V(s, ls, d, ld)
#define FASTNN_TR_KERNELS(V, ATTR)                                                       \
    FASTNN_TR_BLOCK_F(V, ATTR)                                                           \
    FASTNN_TR_BLOCK_D(V, ATTR)                                                           \
    FASTNN_TR_TILE(V, ATTR, float, f, FASTNN_TR_BF)                                      \
    FASTNN_TR_TILE(V, ATTR, double, d, FASTNN_TR_BD)
#else
#define FASTNN_TR_CALL(S, V, s, ls, d, ld) ((void)0)
#define FASTNN_TR_KERNELS(V, ATTR)                                                       \
    FASTNN_TR_TILE(V, ATTR, float, f, FASTNN_TR_BF)                                      \
    FASTNN_TR_TILE(V, ATTR, double, d, FASTNN_TR_BD)
#endif

FASTNN_SIMD_VARIANTS(FASTNN_TR_KERNELS)

typedef void fastnn_transpose_f_fn(const float *, ptrdiff_t, float *, ptrdiff_t, ptrdiff_t,
                                   ptrdiff_t);
typedef void fastnn_transpose_d_fn(const double *, ptrdiff_t, double *, ptrdiff_t, ptrdiff_t,
                                   ptrdiff_t);
FASTNN_SIMD_POINTER(fastnn_transpose_f)
FASTNN_SIMD_POINTER(fastnn_transpose_d)

static int fastnn_transpose_pick(void)
{
    int level = fastnn_simd_level();
    FASTNN_SIMD_SET(level, fastnn_transpose_f);
    FASTNN_SIMD_SET(level, fastnn_transpose_d);
    return level;
}

#endif
