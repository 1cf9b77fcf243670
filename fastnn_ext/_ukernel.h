/* Register-blocked GEMM kernels with runtime CPU dispatch (AVX-512 / AVX2+FMA /
 * baseline). Each path is compiled with its own target attribute, so a portable
 * build (no -march) still runs AVX-512 code on a CPU that has it. */
#ifndef FASTNN_UKERNEL_H
#define FASTNN_UKERNEL_H
#include <stddef.h>
#include <string.h>

#include "_simd.h"
#include "_transpose.h"

#define UK_CAT_(a, b) a##b
#define UK_CAT(a, b) UK_CAT_(a, b)

#ifdef FASTNN_SIMD_X86
/* AVX-512: 8 rows x 32 floats (16 zmm accumulators). */
#define UK_TARGET FASTNN_TARGET_AVX512
#define UK_T float
#define UK_VW 16
#define UK_MR 8
#define UK_NV 2
#define UK_NAME fastnn_sgemm_avx512
#include "_ukernel_impl.h"
#undef UK_T
#undef UK_VW
#undef UK_NAME
#define UK_T double
#define UK_VW 8
#define UK_NAME fastnn_dgemm_avx512
#include "_ukernel_impl.h"
#undef UK_T
#undef UK_VW
#undef UK_NAME
#undef UK_MR
#undef UK_NV
/* AVX-512, narrow: 16 rows x 16 floats, for products only 16 columns wide (few
 * output channels): the wide block would multiply half padding there. */
#define UK_MR 16
#define UK_NV 1
#define UK_T float
#define UK_VW 16
#define UK_NAME fastnn_sgemm_avx512n
#include "_ukernel_impl.h"
#undef UK_T
#undef UK_VW
#undef UK_NAME
#define UK_T double
#define UK_VW 8
#define UK_NAME fastnn_dgemm_avx512n
#include "_ukernel_impl.h"
#undef UK_T
#undef UK_VW
#undef UK_NAME
#undef UK_MR
#undef UK_NV
#undef UK_TARGET
/* AVX2 + FMA: 6 rows x 16 floats (12 ymm accumulators). */
#define UK_TARGET FASTNN_TARGET_AVX2
#define UK_MR 6
#define UK_NV 2
#define UK_T float
#define UK_VW 8
#define UK_NAME fastnn_sgemm_avx2
#include "_ukernel_impl.h"
#undef UK_T
#undef UK_VW
#undef UK_NAME
#define UK_T double
#define UK_VW 4
#define UK_NAME fastnn_dgemm_avx2
#include "_ukernel_impl.h"
#undef UK_T
#undef UK_VW
#undef UK_NAME
#undef UK_MR
#undef UK_NV
#undef UK_TARGET
#endif

/* Baseline (whatever the build flags allow): 4 rows x 8 floats. */
#define UK_TARGET
#define UK_MR 4
#define UK_NV 2
#define UK_T float
#define UK_VW 4
#define UK_NAME fastnn_sgemm_base
#include "_ukernel_impl.h"
#undef UK_T
#undef UK_VW
#undef UK_NAME
#define UK_T double
#define UK_VW 2
#define UK_NAME fastnn_dgemm_base
#include "_ukernel_impl.h"
#undef UK_T
#undef UK_VW
#undef UK_NAME
#undef UK_MR
#undef UK_NV
#undef UK_TARGET

/* The level of _simd.h, set at import by each module that includes this file; until
 * then the baseline. */
static int fastnn_ukernel_level = 0;

static int fastnn_ukernel_pick(void)
{
    fastnn_ukernel_level = fastnn_simd_level();
    fastnn_transpose_pick();   /* pgemm packs a transposed B through it */
    return fastnn_ukernel_level;
}

#define UK_ARGS M, N, K, a, sam, amoff, aoff, b, boff, c, ldc, accumulate, bias_row, bias_col, scratch
#ifdef FASTNN_SIMD_X86
#define UK_X86_PATHS(P)                                                             \
    if (fastnn_ukernel_level == 2 && N * (ptrdiff_t)sizeof(*a) <= 64) {             \
        P##gemm_avx512n(UK_ARGS); /* the product is at most one vector wide */     \
        return;                                                                     \
    }                                                                               \
    if (fastnn_ukernel_level == 2) {                                                \
        P##gemm_avx512(UK_ARGS);                                                    \
        return;                                                                     \
    }                                                                               \
    if (fastnn_ukernel_level == 1) {                                                \
        P##gemm_avx2(UK_ARGS);                                                      \
        return;                                                                     \
    }
#else
#define UK_X86_PATHS(P)
#endif
#define UK_DISPATCH(NAME, P, T)                                                     \
    static void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const T *a, ptrdiff_t sam, \
                     const ptrdiff_t *amoff, const ptrdiff_t *aoff, const T *b,     \
                     const ptrdiff_t *boff, T *c, ptrdiff_t ldc, int accumulate,    \
                     const T *bias_row, const T *bias_col, T *scratch)              \
    {                                                                               \
        UK_X86_PATHS(P)                                                             \
        P##gemm_base(UK_ARGS);                                                      \
    }
UK_DISPATCH(fastnn_ugemm_f, fastnn_s, float)
UK_DISPATCH(fastnn_ugemm_d, fastnn_d, double)

/* Scratch elements fastnn_ugemm_* needs for a product with inner dimension K
 * (a padded panel, an output block, a bias row, then K offsets of 8 bytes). */
#define FASTNN_UGEMM_SCRATCH(K) ((K) * 32 + 8 * 32 + 32 + 2 * (K) + 8)
/* Row-major C (m x n) = op(A) @ op(B) (+ C when accumulate), on the register-blocked
 * kernel, for products computed inside a prange. BLAS is not used there: its result
 * bits depend on its own thread count (OpenBLAS splits some shapes differently on 1
 * and 2 threads), and holding it to one thread would change it for every other
 * thread of the process. K is cut in blocks (partial sums added in a fixed order):
 * of FASTNN_PG_KB, the register-blocked kernel's own K chunk; with a transposed B, of
 * FASTNN_PG_KB_PACKED rows, packed FASTNN_PG_NB_PACKED columns at a time (32 KB of
 * floats, in L1) into a buffer on the stack through _transpose.h's blocked copy. The
 * block sizes depend on nothing but the transposes: callers split m and n over a team
 * (the recurrent products), and the bits must not depend on those splits (a K block
 * taken from n made them differ between thread counts). No allocation, no failure.
 * Measured against K blocks of 64 with 256-column element-by-element packing (2
 * threads, Zen 5, interleaved A/B): conv2d_backward N32 C3 64x64 K8 k4 NCHW (its
 * weight gradient: a transposed B of 8 columns, k the pixels of a tile) 2.08 -> 1.81
 * ms; K blocks of 512 with a transposed B (a 64 KB panel) made locally_connected2d
 * N32 16x16x32 k3 7% slower, these 0.99-1.0x. */
#define FASTNN_PG_KB 512
#define FASTNN_PG_KB_PACKED 256
#define FASTNN_PG_NB_PACKED 32
#define FASTNN_PG_PANEL_ELEMS (FASTNN_PG_KB_PACKED * FASTNN_PG_NB_PACKED)
/* The packing buffer: a variable-length array only as long as needed with gcc; MSVC
 * has no variable-length arrays (optional in C11), so the portable spelling always
 * reserves the whole buffer (64 KB of doubles). */
#ifdef FASTNN_GNU_C
#define FASTNN_PG_PANEL(T) T panel[trans_b ? FASTNN_PG_PANEL_ELEMS : 1]
#else
#define FASTNN_PG_PANEL(T) T panel[FASTNN_PG_PANEL_ELEMS]
#endif
#define UK_PGEMM(NAME, UG, T, TR)                                                         \
    static void NAME(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,  \
                     const T *a, ptrdiff_t lda, const T *b, ptrdiff_t ldb, int accumulate, \
                     T *c, ptrdiff_t ldc)                                               \
    {                                                                                   \
        T scratch[FASTNN_UGEMM_SCRATCH(FASTNN_PG_KB)];                                  \
        FASTNN_PG_PANEL(T);                                                             \
        ptrdiff_t aoff[FASTNN_PG_KB], boff[FASTNN_PG_KB];                               \
        ptrdiff_t k0, kk, n0, j, kbmax = FASTNN_PG_KB;                                  \
        if (m <= 0 || n <= 0)                                                           \
            return;                                                                     \
        if (trans_b)                                                                    \
            kbmax = FASTNN_PG_KB_PACKED;                                                \
        if (k <= 0) {                                                                   \
            if (!accumulate)                                                            \
                for (k0 = 0; k0 < m; k0++)                                              \
                    for (j = 0; j < n; j++)                                             \
                        c[k0 * ldc + j] = (T)0;                                         \
            return;                                                                     \
        }                                                                               \
        for (k0 = 0; k0 < k; k0 += kbmax) {                                             \
            ptrdiff_t kb = k - k0 < kbmax ? k - k0 : kbmax;                             \
            int acc = accumulate || k0 > 0;                                             \
            for (kk = 0; kk < kb; kk++)                                                 \
                aoff[kk] = trans_a ? (k0 + kk) * lda : k0 + kk;                         \
            if (!trans_b) {                                                             \
                for (kk = 0; kk < kb; kk++)                                             \
                    boff[kk] = (k0 + kk) * ldb;                                         \
                UG(m, n, kb, a, trans_a ? 1 : lda, NULL, aoff, b, boff, c, ldc, acc,    \
                   NULL, NULL, scratch);                                                \
                continue;                                                               \
            }                                                                           \
            for (n0 = 0; n0 < n; n0 += FASTNN_PG_NB_PACKED) {                           \
                ptrdiff_t nb = n - n0 < FASTNN_PG_NB_PACKED ? n - n0 : FASTNN_PG_NB_PACKED; \
                TR(b + n0 * ldb + k0, ldb, panel, nb, nb, kb);                          \
                for (kk = 0; kk < kb; kk++)                                             \
                    boff[kk] = kk * nb;                                                 \
                UG(m, nb, kb, a, trans_a ? 1 : lda, NULL, aoff, panel, boff, c + n0,    \
                   ldc, acc, NULL, NULL, scratch);                                      \
            }                                                                           \
        }                                                                               \
    }
UK_PGEMM(fastnn_pgemm_f, fastnn_ugemm_f, float, fastnn_transpose_f)
UK_PGEMM(fastnn_pgemm_d, fastnn_ugemm_d, double, fastnn_transpose_d)
#endif
