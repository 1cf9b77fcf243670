/* Inner loops and register tiles of the banded, masked and sparse products
 * (fastnn_ext/_banded.pyx). */
#ifndef FASTNN_BAND_TILES_H
#define FASTNN_BAND_TILES_H

#include "_simd.h"

/* Row loops, plain C for both spellings (_portable.h); FASTNN_SPARSE_ROW below. */
#define FASTNN_BAND_LOOPS(T, S, V, ATTR)                                                       \
ATTR static void fastnn_band_rows4_##S##_##V(                             \
        T* restrict y0, T* restrict y1, T* restrict y2, T* restrict y3,             \
        const T* restrict x0, const T* restrict x1, const T* restrict x2,           \
        const T* restrict x3, const T* restrict wk, Py_ssize_t n) {                 \
    for (Py_ssize_t j = 0; j < n; j++) {                                            \
        T v = wk[j];                                                                \
        y0[j] += x0[j] * v; y1[j] += x1[j] * v;                                     \
        y2[j] += x2[j] * v; y3[j] += x3[j] * v;                                     \
    }                                                                               \
}                                                                                   \
ATTR static void fastnn_band_row_##S##_##V(                             \
        T* restrict y, const T* restrict x, const T* restrict wk,                   \
        Py_ssize_t n) {                                                             \
    for (Py_ssize_t j = 0; j < n; j++) y[j] += x[j] * wk[j];                         \
}                                                                                   \
FASTNN_SPARSE_ROW(T, S, V, ATTR)

#ifdef FASTNN_GNU_C
/* One 512-bit vector of T (GCC/clang vector extensions, lowered to narrower
   registers in the AVX2 and baseline variants); loads and stores are unaligned. */
typedef float fastnn_v_f32 __attribute__((vector_size(64), aligned(4), may_alias));
typedef double fastnn_v_f64 __attribute__((vector_size(64), aligned(8), may_alias));
#define FASTNN_V(S) fastnn_v_##S
#define FASTNN_VL(S) ((Py_ssize_t)(64 / sizeof(((fastnn_v_##S){0})[0])))
#define FASTNN_LOAD(S, p) (*(const fastnn_v_##S*)(p))
#define FASTNN_STORE(S, p, v) (*(fastnn_v_##S*)(p) = (v))
#define FASTNN_SPARSE_ROW(T, S, V, ATTR)                                                       \
ATTR static void fastnn_sparse_row_##S##_##V(                            \
        T* restrict y, const T* restrict src, Py_ssize_t ld, const T* restrict vals, \
        const int64_t* restrict idx, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t n) {   \
    Py_ssize_t b0 = 0;                                                              \
    for (; b0 + FASTNN_VL(S) <= n; b0 += FASTNN_VL(S)) {                            \
        FASTNN_V(S) acc = FASTNN_LOAD(S, y + b0);                                   \
        for (Py_ssize_t p = p0; p < p1; p++)                                        \
            acc += vals[p] * FASTNN_LOAD(S, src + idx[p] * ld + b0);                 \
        FASTNN_STORE(S, y + b0, acc);                                               \
    }                                                                               \
    for (Py_ssize_t p = p0; p < p1 && b0 < n; p++) {                                \
        const T a = vals[p]; const T* restrict x = src + idx[p] * ld;                \
        for (Py_ssize_t j = b0; j < n; j++) y[j] += a * x[j];                        \
    }                                                                               \
}
/* Four rows by two vectors of columns of y held in registers over all nd diagonals: per
   diagonal, one load of wd serves four rows and y is loaded and stored once per
   tile instead of once per diagonal. x points at x[row, j + d0] (d0 the first
   diagonal), y at y[row, j], wd at this tile's column of diagonal 0. */
#define FASTNN_BAND_TILE(T, S, V, ATTR)                                                     \
ATTR static void fastnn_band_tile4_##S##_##V(                             \
        T* restrict y, Py_ssize_t ldy, const T* restrict x, Py_ssize_t ldx,         \
        const T* restrict wd, Py_ssize_t ldw, Py_ssize_t nd) {                      \
    const Py_ssize_t L = FASTNN_VL(S);                                              \
    FASTNN_V(S) acc[4][2];                                                          \
    for (int r = 0; r < 4; r++) {                                                   \
        acc[r][0] = FASTNN_LOAD(S, y + r * ldy);                                    \
        acc[r][1] = FASTNN_LOAD(S, y + r * ldy + L);                                \
    }                                                                               \
    for (Py_ssize_t k = 0; k < nd; k++) {                                           \
        FASTNN_V(S) w0 = FASTNN_LOAD(S, wd + k * ldw);                              \
        FASTNN_V(S) w1 = FASTNN_LOAD(S, wd + k * ldw + L);                          \
        for (int r = 0; r < 4; r++) {                                               \
            const T* restrict xr = x + r * ldx + k;                                 \
            acc[r][0] += FASTNN_LOAD(S, xr) * w0;                                   \
            acc[r][1] += FASTNN_LOAD(S, xr + L) * w1;                               \
        }                                                                           \
    }                                                                               \
    for (int r = 0; r < 4; r++) {                                                   \
        FASTNN_STORE(S, y + r * ldy, acc[r][0]);                                    \
        FASTNN_STORE(S, y + r * ldy + L, acc[r][1]);                                \
    }                                                                               \
}
/* The weight gradient's tile: four diagonals by two vectors of columns of
   gd[k, j] = sum_b x[b, j + d_k] * gy[b, j] in registers over the whole batch
   (b ascending). x points at x[0, j + d_k] of the first of the four diagonals,
   gy at gy[0, j], gd at gd[k, j]. */
#define FASTNN_BAND_GTILE(T, S, V, ATTR)                                                     \
ATTR static void fastnn_band_gtile4_##S##_##V(                             \
        T* restrict gd, Py_ssize_t ldg, const T* restrict x, Py_ssize_t ldx,        \
        const T* restrict gy, Py_ssize_t ldgy, Py_ssize_t B) {                      \
    const Py_ssize_t L = FASTNN_VL(S);                                              \
    FASTNN_V(S) acc[4][2];                                                          \
    for (int r = 0; r < 4; r++) {                                                   \
        acc[r][0] = (FASTNN_V(S)){0};                                               \
        acc[r][1] = (FASTNN_V(S)){0};                                               \
    }                                                                               \
    for (Py_ssize_t b = 0; b < B; b++) {                                            \
        FASTNN_V(S) g0 = FASTNN_LOAD(S, gy + b * ldgy);                             \
        FASTNN_V(S) g1 = FASTNN_LOAD(S, gy + b * ldgy + L);                         \
        for (int r = 0; r < 4; r++) {                                               \
            const T* restrict xr = x + b * ldx + r;                                 \
            acc[r][0] += FASTNN_LOAD(S, xr) * g0;                                   \
            acc[r][1] += FASTNN_LOAD(S, xr + L) * g1;                               \
        }                                                                           \
    }                                                                               \
    for (int r = 0; r < 4; r++) {                                                   \
        FASTNN_STORE(S, gd + r * ldg, acc[r][0]);                                   \
        FASTNN_STORE(S, gd + r * ldg + L, acc[r][1]);                               \
    }                                                                               \
}
#else
/* Portable C: the same tiles as arrays of 2 x 64 bytes of columns per row, the same
   products summed in the same order (diagonals, or batch rows, ascending). */
#define FASTNN_TILE_COLS(T) (128 / (int)sizeof(T))
#define FASTNN_SPARSE_ROW(T, S, V, ATTR)                                             \
ATTR static void fastnn_sparse_row_##S##_##V(                                        \
        T* restrict y, const T* restrict src, Py_ssize_t ld, const T* restrict vals, \
        const int64_t* restrict idx, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t n) {   \
    for (Py_ssize_t p = p0; p < p1; p++) {                                          \
        const T a = vals[p]; const T* restrict x = src + idx[p] * ld;                \
        for (Py_ssize_t j = 0; j < n; j++) y[j] += a * x[j];                         \
    }                                                                               \
}
#define FASTNN_BAND_TILE(T, S, V, ATTR)                                              \
ATTR static void fastnn_band_tile4_##S##_##V(                                        \
        T* restrict y, Py_ssize_t ldy, const T* restrict x, Py_ssize_t ldx,         \
        const T* restrict wd, Py_ssize_t ldw, Py_ssize_t nd) {                      \
    T acc[4][FASTNN_TILE_COLS(T)];                                                  \
    for (int r = 0; r < 4; r++)                                                     \
        for (int j = 0; j < FASTNN_TILE_COLS(T); j++) acc[r][j] = y[r * ldy + j];   \
    for (Py_ssize_t k = 0; k < nd; k++) {                                           \
        const T* restrict wk = wd + k * ldw;                                        \
        for (int r = 0; r < 4; r++) {                                               \
            const T* restrict xr = x + r * ldx + k;                                 \
            for (int j = 0; j < FASTNN_TILE_COLS(T); j++) acc[r][j] += xr[j] * wk[j]; \
        }                                                                           \
    }                                                                               \
    for (int r = 0; r < 4; r++)                                                     \
        for (int j = 0; j < FASTNN_TILE_COLS(T); j++) y[r * ldy + j] = acc[r][j];   \
}
#define FASTNN_BAND_GTILE(T, S, V, ATTR)                                             \
ATTR static void fastnn_band_gtile4_##S##_##V(                                       \
        T* restrict gd, Py_ssize_t ldg, const T* restrict x, Py_ssize_t ldx,        \
        const T* restrict gy, Py_ssize_t ldgy, Py_ssize_t B) {                      \
    T acc[4][FASTNN_TILE_COLS(T)];                                                  \
    for (int r = 0; r < 4; r++)                                                     \
        for (int j = 0; j < FASTNN_TILE_COLS(T); j++) acc[r][j] = 0;                \
    for (Py_ssize_t b = 0; b < B; b++) {                                            \
        const T* restrict gb = gy + b * ldgy;                                       \
        for (int r = 0; r < 4; r++) {                                               \
            const T* restrict xr = x + b * ldx + r;                                 \
            for (int j = 0; j < FASTNN_TILE_COLS(T); j++) acc[r][j] += xr[j] * gb[j]; \
        }                                                                           \
    }                                                                               \
    for (int r = 0; r < 4; r++)                                                     \
        for (int j = 0; j < FASTNN_TILE_COLS(T); j++) gd[r * ldg + j] = acc[r][j];  \
}
#endif
/* out = w where m != 0 else +0.0, by masking the bits: branch-free, vectorised,
   and exact (a NaN under a zero mask becomes 0, where w * 0 would stay NaN).
   out may be w itself (same index only: no loop-carried dependence). */
#define FASTNN_MASK_LOOP(T, U, S, V, ATTR)                                                  \
ATTR static void fastnn_mask_##S##_##V(const T* w, const unsigned char* m,     \
                                          T* out, Py_ssize_t n) {               \
    const U* wb = (const U*)w; U* ob = (U*)out;                                      \
    FASTNN_IVDEP                                                                     \
    for (Py_ssize_t j = 0; j < n; j++) ob[j] = wb[j] & ((U)0 - (U)(m[j] != 0));     \
}
static inline void fastnn_prefetch(const void* p) {
#ifdef FASTNN_GNU_C
    __builtin_prefetch(p);
#else
    (void)p;
#endif
}
/* Count of the non-zero bytes of a run. */
#define FASTNN_COUNT_ONES(V, ATTR)                                                   \
ATTR static Py_ssize_t fastnn_count_ones_##V(const unsigned char* m, Py_ssize_t n) {  \
    uint32_t c = 0; Py_ssize_t total = 0;                                            \
    for (Py_ssize_t j0 = 0; j0 < n; j0 += 1 << 20) {   /* no 32-bit overflow */     \
        Py_ssize_t j1 = j0 + (1 << 20) < n ? j0 + (1 << 20) : n;                     \
        c = 0;                                                                       \
        for (Py_ssize_t j = j0; j < j1; j++) c += m[j] != 0;                         \
        total += c;                                                                  \
    }                                                                                \
    return total;                                                                    \
}

/* Every kernel above for float and double, at each SIMD level (_simd.h). */
#define FASTNN_BAND_KERNELS(V, ATTR)                                                 \
    FASTNN_BAND_LOOPS(float, f32, V, ATTR) FASTNN_BAND_LOOPS(double, f64, V, ATTR)   \
    FASTNN_BAND_TILE(float, f32, V, ATTR) FASTNN_BAND_TILE(double, f64, V, ATTR)     \
    FASTNN_BAND_GTILE(float, f32, V, ATTR) FASTNN_BAND_GTILE(double, f64, V, ATTR)   \
    FASTNN_MASK_LOOP(float, uint32_t, f32, V, ATTR)                                  \
    FASTNN_MASK_LOOP(double, uint64_t, f64, V, ATTR)                                 \
    FASTNN_COUNT_ONES(V, ATTR)
FASTNN_SIMD_VARIANTS(FASTNN_BAND_KERNELS)
/* The kernels' function types, for FASTNN_SIMD_POINTER. */
#define FASTNN_BAND_TYPES(T, S)                                                      \
    typedef void fastnn_band_rows4_##S##_fn(T*, T*, T*, T*, const T*, const T*,      \
                                            const T*, const T*, const T*, Py_ssize_t); \
    typedef void fastnn_band_row_##S##_fn(T*, const T*, const T*, Py_ssize_t);       \
    typedef void fastnn_sparse_row_##S##_fn(T*, const T*, Py_ssize_t, const T*,      \
                                            const int64_t*, Py_ssize_t, Py_ssize_t,  \
                                            Py_ssize_t);                             \
    typedef void fastnn_band_tile4_##S##_fn(T*, Py_ssize_t, const T*, Py_ssize_t,    \
                                            const T*, Py_ssize_t, Py_ssize_t);       \
    typedef void fastnn_band_gtile4_##S##_fn(T*, Py_ssize_t, const T*, Py_ssize_t,   \
                                             const T*, Py_ssize_t, Py_ssize_t);      \
    typedef void fastnn_mask_##S##_fn(const T*, const unsigned char*, T*, Py_ssize_t);
FASTNN_BAND_TYPES(float, f32)
FASTNN_BAND_TYPES(double, f64)
typedef Py_ssize_t fastnn_count_ones_fn(const unsigned char*, Py_ssize_t);
#define FASTNN_BAND_EACH(X)                                                          \
    X(fastnn_band_rows4_f32) X(fastnn_band_rows4_f64)                                \
    X(fastnn_band_row_f32) X(fastnn_band_row_f64)                                    \
    X(fastnn_sparse_row_f32) X(fastnn_sparse_row_f64)                                \
    X(fastnn_band_tile4_f32) X(fastnn_band_tile4_f64)                                \
    X(fastnn_band_gtile4_f32) X(fastnn_band_gtile4_f64)                              \
    X(fastnn_mask_f32) X(fastnn_mask_f64) X(fastnn_count_ones)
FASTNN_BAND_EACH(FASTNN_SIMD_POINTER)

static int fastnn_band_pick(void) {
    int level = fastnn_simd_level();
#define FASTNN_BAND_SET(name) FASTNN_SIMD_SET(level, name);
    FASTNN_BAND_EACH(FASTNN_BAND_SET)
#undef FASTNN_BAND_SET
    return level;
}
/* Bit b of the result is set where byte m[b] of a 64-byte run is non-zero. On
   little-endian targets eight words at a time: each word's non-zero bytes get their
   top bit set by bit arithmetic, and a multiply gathers those eight bits into one
   byte (the eight shifted copies land on distinct bits, so nothing carries). */
static inline uint64_t fastnn_nonzero_bits64(const unsigned char* m) {
    uint64_t bits = 0;
#if (defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) || defined(_WIN32)
    const uint64_t low7 = 0x7F7F7F7F7F7F7F7FULL;
    for (int q = 0; q < 8; q++) {
        uint64_t w;
        memcpy(&w, m + 8 * q, 8);
        if (!w)
            continue;   /* most words of a sparse mask: masked_matmul B64 2048x2048
                           at 1% density with a mask array, 2 threads, 0.59 -> 0.51 ms */
        w = (((w & low7) + low7) | w) & ~low7;
        bits |= ((w >> 7) * 0x0102040810204080ULL >> 56) << (8 * q);
    }
#else
    for (int b = 0; b < 64; b++)
        bits |= (uint64_t)(m[b] != 0) << b;
#endif
    return bits;
}
/* Index of the lowest set bit of a non-zero word. */
static inline int fastnn_lowest_bit(uint64_t v) {
#ifdef FASTNN_GNU_C
    return __builtin_ctzll(v);
#else
    int k = 0;
    while (!(v & 1)) {
        v >>= 1;
        k++;
    }
    return k;
#endif
}

#endif
