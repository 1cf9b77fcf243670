/* fastnn's one SIMD dispatch: every kernel family that has per-ISA code compiles it
 * three times -- baseline (the build flags), AVX2+FMA and AVX-512 -- each with its own
 * gcc target attribute, so a portable build (no -march) still runs full-width vectors.
 * At import each family's pick function (fastnn_<family>_pick, called once from its
 * .pyx) reads the level below and points the family's function pointers at one of the
 * three variants.
 *
 * Level: 0 = baseline, 1 = AVX2+FMA, 2 = AVX-512F (with AVX2+FMA), from one CPU check;
 * FASTNN_UKERNEL_MAX=0/1/2 in the environment at import caps it (tests run every
 * family at every level that way, tests/test_simd_paths.py; debugging).
 *
 * How a family uses it:
 *     #define MY_KERNELS(V, ATTR)  ATTR static void my_kernel_f32_##V(...) { ... }
 *     FASTNN_SIMD_VARIANTS(MY_KERNELS)          -- the three variants
 *     typedef void my_kernel_f32_fn(...);       -- the kernel's function type
 *     FASTNN_SIMD_POINTER(my_kernel_f32)        -- the pointer callers call through
 *     static int my_pick(void) {
 *         int level = fastnn_simd_level();
 *         FASTNN_SIMD_SET(level, my_kernel_f32);
 *         return level;
 *     }
 * The register-blocked GEMM (_ukernel.h) dispatches on the level in its one entry
 * point instead of a pointer, since it also picks a narrow block by product width.
 * Without FASTNN_GNU_C (_portable.h: MSVC, FASTNN_PORTABLE_C) only the baseline is
 * compiled and the level is 0. */
#ifndef FASTNN_SIMD_H
#define FASTNN_SIMD_H

#include <stdlib.h>

#include "_portable.h"

#if defined(FASTNN_GNU_C) && (defined(__x86_64__) || defined(__i386__))
#define FASTNN_SIMD_X86 1
#define FASTNN_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma,prefer-vector-width=512")))
#define FASTNN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

/* What the CPU can run. */
static int fastnn_simd_cpu_level(void) {
    int level = 0;
#ifdef FASTNN_SIMD_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        level = 1;
    if (level == 1 && __builtin_cpu_supports("avx512f"))
        level = 2;
#endif
    return level;
}

/* FASTNN_UKERNEL_MAX as a level cap, -1 when unset or not a number. */
static int fastnn_simd_cap(void) {
    const char* s = getenv("FASTNN_UKERNEL_MAX");
    int cap = -1;
    if (s == NULL)
        return -1;
    while (*s == ' ' || *s == '\t')
        s++;
    for (; *s >= '0' && *s <= '9'; s++)
        cap = (cap < 0 ? 0 : cap * 10) + (*s - '0');
    while (*s == ' ' || *s == '\t' || *s == '\n')
        s++;
    return *s ? -1 : (cap > 1000 ? 1000 : cap);
}

/* The level every family uses. */
static int fastnn_simd_level(void) {
    int level = fastnn_simd_cpu_level(), cap = fastnn_simd_cap();
    return cap >= 0 && level > cap ? cap : level;
}

/* Whether this CPU's 512-bit FMAs run at full width: at level 2, every AVX-512 CPU
 * except AMD's family 0x19 (Zen 4), which issues each 512-bit operation as two 256-bit
 * halves. Winograd's choice of shapes depends on it (fastnn.conv._winograd_blocks):
 * the direct products run twice as fast per cycle on Zen 5 (family 0x1a) as on Zen 4,
 * the transforms do not. 0 below level 2 (AVX2 machines behave like Zen 4 here). */
#ifdef FASTNN_SIMD_X86
#include <cpuid.h>
#endif
static int fastnn_simd_fma512_full(void) {
#ifdef FASTNN_SIMD_X86
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0, family;
    if (fastnn_simd_level() < 2 || !__get_cpuid(0, &eax, &ebx, &ecx, &edx))
        return 0;
    /* "AuthenticAMD": ebx, edx, ecx = "Auth", "enti", "cAMD" */
    int amd = ebx == 0x68747541u && edx == 0x69746e65u && ecx == 0x444d4163u;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    family = (eax >> 8) & 0xf;
    if (family == 0xf)
        family += (eax >> 20) & 0xff;
    return !(amd && family == 0x19);
#else
    return 0;
#endif
}

#ifdef FASTNN_SIMD_X86
#define FASTNN_SIMD_VARIANTS(DEFINE)                                                 \
    DEFINE(base, )                                                                   \
    DEFINE(avx2, FASTNN_TARGET_AVX2)                                                 \
    DEFINE(avx512, FASTNN_TARGET_AVX512)
#define FASTNN_SIMD_SET(level, name)                                                 \
    (name = (level) >= 2 ? name##_avx512 : (level) == 1 ? name##_avx2 : name##_base)
#else
#define FASTNN_SIMD_VARIANTS(DEFINE) DEFINE(base, )
#define FASTNN_SIMD_SET(level, name) (name = name##_base)
#endif
/* name##_fn is the function type (standard C has no typeof to take it from the base). */
#define FASTNN_SIMD_POINTER(name) static name##_fn *name = name##_base;

#endif
