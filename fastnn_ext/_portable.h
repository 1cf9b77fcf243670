/* The one switch between the two spellings of fastnn's C kernels.
 *
 * FASTNN_GNU_C (gcc and clang): GCC vector types, target attributes for the per-ISA
 * variants of _simd.h, always_inline, builtins (CPU check, prefetch, ctz).
 * Otherwise (MSVC; or gcc given -DFASTNN_PORTABLE_C=1, setup.py's FASTNN_PORTABLE_C=1
 * switch, so that Linux compiles and tests this branch): portable C11 -- plain loops
 * over arrays in place of the vector types, the baseline variant only, no builtins, no
 * variable-length arrays. Both compute the same sums in the same order; the portable
 * one is only not as fast. */
#ifndef FASTNN_PORTABLE_H
#define FASTNN_PORTABLE_H

#include <stddef.h>

#if defined(__GNUC__) && !defined(FASTNN_PORTABLE_C)
#define FASTNN_GNU_C 1
#endif

/* MSVC's C before /std:c11 knows inline and restrict only as __inline / __restrict. */
#if defined(_MSC_VER) && !defined(__clang__) && !defined(__cplusplus) &&               \
    (!defined(__STDC_VERSION__) || __STDC_VERSION__ < 199901L)
#ifndef inline
#define inline __inline
#endif
#ifndef restrict
#define restrict __restrict
#endif
#endif

/* Small helpers that each SIMD variant must compile into its own body. */
#if defined(FASTNN_GNU_C)
#define FASTNN_ALWAYS_INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define FASTNN_ALWAYS_INLINE static __forceinline
#else
#define FASTNN_ALWAYS_INLINE static inline
#endif

/* "No loop-carried dependence through memory here" (see _rnn_gates.h for why). */
#ifdef FASTNN_GNU_C
#define FASTNN_IVDEP _Pragma("GCC ivdep")
#else
#define FASTNN_IVDEP
#endif

/* Ask for [p, p + bytes) in L2 ahead of use, a 64-byte line at a time (a no-op
 * without GNU C). */
static inline void fastnn_prefetch_range(const void *p, ptrdiff_t bytes)
{
#ifdef FASTNN_GNU_C
    const char *c = (const char *)p;
    for (ptrdiff_t i = 0; i < bytes; i += 64)
        __builtin_prefetch(c + i, 0, 2);
#else
    (void)p;
    (void)bytes;
#endif
}

#endif
