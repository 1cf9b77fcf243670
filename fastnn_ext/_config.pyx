# cython: language_level=3
"""Build facts compiled into the extension: OpenMP, compiler, flags, SIMD macros."""
from fastnn_ext._openmp cimport fastnn_omp_enabled, fastnn_omp_version

cdef extern from *:
    """
    #define FASTNN_STR_(x) #x
    #define FASTNN_STR(x) FASTNN_STR_(x)
    #if defined(_MSC_VER) && !defined(__clang__)
    #define FASTNN_CC_NAME "msvc"
    #define FASTNN_CC_VERSION FASTNN_STR(_MSC_FULL_VER)
    #elif defined(__VERSION__)
    #define FASTNN_CC_NAME "gcc"
    #define FASTNN_CC_VERSION __VERSION__
    #else
    #define FASTNN_CC_NAME "gcc"
    #define FASTNN_CC_VERSION "unknown"
    #endif
    static int fastnn_simd_avx512f(void) {
    #ifdef __AVX512F__
        return 1;
    #else
        return 0;
    #endif
    }
    static int fastnn_simd_avx2(void) {
    #ifdef __AVX2__
        return 1;
    #else
        return 0;
    #endif
    }
    static int fastnn_simd_fma(void) {
    #ifdef __FMA__
        return 1;
    #else
        return 0;
    #endif
    }
    """
    const char* FASTNN_CC_NAME
    const char* FASTNN_CC_VERSION
    const char* FASTNN_BUILD_FLAGS
    int FASTNN_OPENMP_PROBED
    int fastnn_simd_avx512f()
    int fastnn_simd_avx2()
    int fastnn_simd_fma()


def build_info():
    """Return a dict of the facts the compiled extension was built with."""
    simd = ["SSE2"]
    if fastnn_simd_avx2():
        simd.append("AVX2")
    if fastnn_simd_fma():
        simd.append("FMA")
    if fastnn_simd_avx512f():
        simd.append("AVX512F")
    return {
        "compiler": (FASTNN_CC_NAME + b" " + FASTNN_CC_VERSION).decode("ascii", "replace"),
        "flags": FASTNN_BUILD_FLAGS.decode("ascii", "replace"),
        "openmp": bool(fastnn_omp_enabled()),
        "openmp_version": int(fastnn_omp_version()),
        "openmp_probed": bool(FASTNN_OPENMP_PROBED),
        "simd_baseline": simd,
    }
