/* Window loops of the pooling kernels (fastnn_ext/_pooling.pyx). */
#ifndef FASTNN_POOL_KERNELS_H
#define FASTNN_POOL_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include "_simd.h"

/* dh, dw: dilation (max pooling). hp, wp: the padded end H + pad_bottom,
 * W + pad_right. mode: how an average window is divided -- 0 by its real
 * elements, 1 by its extent clipped at the padded end (count_include_pad), 2 by
 * div (divisor_override). */
typedef struct {
    ptrdiff_t N, C, H, W, kh, kw, sh, sw, pt, pl, Ho, Wo, dh, dw, hp, wp, mode, div;
} fastnn_pool_geom;

/* The general loops are compiled at the build's baseline only, no per-ISA variants
 * (_simd.h): memory-bound, measured no faster with AVX2 or AVX-512 variants (the 2x2
 * stride-2 NCHW plane loop was slower with them). The 2x2 stride-2 kernel at the end
 * has variants. */
#define FASTNN_POOL_INLINE FASTNN_ALWAYS_INLINE

/* Strides 1 and 2 as constants: a variable stride is a "complicated access
 * pattern" to gcc's vectoriser, a constant one becomes loads and shuffles. */
#define FASTNN_BY_STRIDE(s, LOOP) \
    if ((s) == 1) { LOOP(1) } else if ((s) == 2) { LOOP(2) } else { LOOP(s) }

/* Outputs o with 0 <= o*s + off < size, clipped to [0, nout). */
FASTNN_POOL_INLINE void fastnn_tap_range(ptrdiff_t off, ptrdiff_t s, ptrdiff_t size,
                                         ptrdiff_t nout, ptrdiff_t* lo, ptrdiff_t* hi) {
    ptrdiff_t a = off >= 0 ? 0 : (-off + s - 1) / s;
    ptrdiff_t b = size - 1 - off < 0 ? 0 : (size - 1 - off) / s + 1;
    if (b > nout) b = nout;
    *lo = a;
    *hi = b > a ? b : a;
}

/* Window o along one axis, taps lo, lo + d, ..., lo + (k - 1) d with lo = o s - p:
 * its first tap inside the input at *a and an exclusive bound *b, so that the real
 * taps are a, a + d, ... below b (for d = 1 the real part [a, b)). */
FASTNN_POOL_INLINE void fastnn_window(ptrdiff_t o, ptrdiff_t s, ptrdiff_t p, ptrdiff_t k,
                                      ptrdiff_t d, ptrdiff_t size, ptrdiff_t* a,
                                      ptrdiff_t* b) {
    ptrdiff_t lo = o * s - p, hi = lo + (k - 1) * d + 1;
    *a = lo >= 0 ? lo : lo + (-lo + d - 1) / d * d;
    *b = hi < size ? hi : size;
}

/* The divisor of average window (ho, wo) with real part [h0, h1) x [w0, w1):
 * PyTorch's rule -- the real elements, or (count_include_pad) the window clipped
 * at the padded end, so a ceil_mode window hanging past it counts only its
 * padded part, or divisor_override. */
FASTNN_POOL_INLINE ptrdiff_t fastnn_divisor(const fastnn_pool_geom* g, ptrdiff_t ho,
                                            ptrdiff_t wo, ptrdiff_t h0, ptrdiff_t h1,
                                            ptrdiff_t w0, ptrdiff_t w1) {
    if (g->mode == 0) return (h1 - h0) * (w1 - w0);
    if (g->mode == 2) return g->div;
    ptrdiff_t a = ho * g->sh - g->pt, b = wo * g->sw - g->pl;
    ptrdiff_t ae = a + g->kh < g->hp ? a + g->kh : g->hp;
    ptrdiff_t be = b + g->kw < g->wp ? b + g->kw : g->wp;
    return (ae - a) * (be - b);
}

/* xr (gr) points at the first tap read, output lo's: row start + off may lie
 * far outside the plane (a large padding), so no pointer is formed there. */
#define FASTNN_MAX_LOOP(S)                                                      \
    for (ptrdiff_t o = lo; o < hi; o++) {                                      \
        T v = xr[(o - lo) * (S)], a = yr[o];                                   \
        yr[o] = (v > a || v != v) ? v : a;                                     \
    }
#define FASTNN_MAX_IDX_LOOP(S)                                                  \
    for (ptrdiff_t o = lo; o < hi; o++) {                                      \
        T v = xr[(o - lo) * (S)], a = yr[o];                                   \
        int take = (v > a) | (v != v);                                         \
        yr[o] = take ? v : a;                                                  \
        ir[o] = take ? base + (o - lo) * (S) : ir[o];                          \
    }
#define FASTNN_ADD_LOOP(S) for (ptrdiff_t o = lo; o < hi; o++) yr[o] += xr[(o - lo) * (S)];
#define FASTNN_ADD_BACK_LOOP(S) \
    for (ptrdiff_t o = lo; o < hi; o++) gr[(o - lo) * (S)] += sc[o];

/* The kernel columns j whose taps j*dw - pl + o*sw land in [0, W) for some
 * output o: the others read only padding (a kernel_size of 10**9 has 10**9 of
 * them, not worth a loop). */
FASTNN_POOL_INLINE void fastnn_real_columns(const fastnn_pool_geom* g, ptrdiff_t* jlo,
                                            ptrdiff_t* jhi) {
    ptrdiff_t t = g->pl - (g->Wo - 1) * g->sw;
    *jlo = t <= 0 ? 0 : (t + g->dw - 1) / g->dw;
    *jhi = (g->W - 1 + g->pl) / g->dw + 1;
    if (*jhi > g->kw) *jhi = g->kw;
}

#define FASTNN_POOL_KERNELS(T, SUF)                                              \
/* One (image, channel) plane: y (Ho, Wo) from x (H, W); idx NULL or (Ho, Wo). */ \
/* col: W elements of scratch for the separable path, or NULL (the taps are  \
 * then read row by row: the same result). */                                \
static void fastnn_pool_plane_##SUF(const T* restrict x, T* restrict y,        \
                                    int64_t* restrict idx, T* col,             \
                                    const fastnn_pool_geom* g, int is_max) {   \
    if (idx || g->kh == 1) col = NULL;                                         \
    ptrdiff_t jlo, jhi;                                                        \
    fastnn_real_columns(g, &jlo, &jhi);                                        \
    for (ptrdiff_t ho = 0; ho < g->Ho; ho++) {                                 \
        T* restrict yr = y + ho * g->Wo;                                       \
        int64_t* restrict ir = idx ? idx + ho * g->Wo : NULL;                  \
        ptrdiff_t h0, h1, w0, w1;                                              \
        fastnn_window(ho, g->sh, g->pt, g->kh, g->dh, g->H, &h0, &h1);                \
        for (ptrdiff_t wo = 0; wo < g->Wo; wo++) yr[wo] = is_max ? -INFINITY : 0; \
        if (ir)                                                                \
            for (ptrdiff_t wo = 0; wo < g->Wo; wo++) {                         \
                fastnn_window(wo, g->sw, g->pl, g->kw, g->dw, g->W, &w0, &w1);        \
                ir[wo] = h0 * g->W + w0;                                       \
            }                                                                  \
        if (col && !ir) {                                                      \
            /* Separable: the window's rows reduced into col (contiguous), then \
             * col's taps; a third of the strided loads of tap by tap. */      \
            const T* restrict x0 = x + h0 * g->W;                              \
            for (ptrdiff_t w = 0; w < g->W; w++) col[w] = x0[w];               \
            for (ptrdiff_t h = h0 + g->dh; h < h1; h += g->dh) {               \
                const T* restrict xh = x + h * g->W;                           \
                if (is_max)                                                    \
                    for (ptrdiff_t w = 0; w < g->W; w++) {                     \
                        T v = xh[w], a = col[w];                               \
                        col[w] = (v > a || v != v) ? v : a;                    \
                    }                                                          \
                else                                                           \
                    for (ptrdiff_t w = 0; w < g->W; w++) col[w] += xh[w];      \
            }                                                                  \
        }                                                                      \
        for (ptrdiff_t h = h0; h < (col && !ir ? h0 + 1 : h1); h += g->dh)     \
            for (ptrdiff_t j = jlo; j < jhi; j++) {                            \
                ptrdiff_t lo, hi, off = j * g->dw - g->pl;                     \
                fastnn_tap_range(off, g->sw, g->W, g->Wo, &lo, &hi);           \
                if (hi <= lo) continue;                                        \
                const T* restrict xr = (col && !ir ? col : x + h * g->W)       \
                                       + (off + lo * g->sw);                   \
                int64_t base = h * g->W + off + lo * g->sw;                    \
                if (!is_max) { FASTNN_BY_STRIDE(g->sw, FASTNN_ADD_LOOP) }      \
                else if (ir) { FASTNN_BY_STRIDE(g->sw, FASTNN_MAX_IDX_LOOP) }  \
                else { FASTNN_BY_STRIDE(g->sw, FASTNN_MAX_LOOP) }              \
            }                                                                  \
        if (!is_max)                                                           \
            for (ptrdiff_t wo = 0; wo < g->Wo; wo++) {                         \
                fastnn_window(wo, g->sw, g->pl, g->kw, g->dw, g->W, &w0, &w1);        \
                yr[wo] = yr[wo] / (T)fastnn_divisor(g, ho, wo, h0, h1, w0, w1); \
            }                                                                  \
    }                                                                          \
}                                                                              \
/* Channels [c0, c1) of image n, every output pixel (NHWC). */                 \
static void fastnn_pool_column_##SUF(const T* restrict x, T* restrict y,       \
                                     int64_t* restrict idx,                    \
                                     const fastnn_pool_geom* g, ptrdiff_t n,   \
                                     ptrdiff_t c0, ptrdiff_t c1, int is_max) { \
    ptrdiff_t nc = c1 - c0;                                                    \
    for (ptrdiff_t ho = 0; ho < g->Ho; ho++)                                   \
        for (ptrdiff_t wo = 0; wo < g->Wo; wo++) {                             \
            ptrdiff_t h0, h1, w0, w1, o = ((n * g->Ho + ho) * g->Wo + wo) * g->C + c0; \
            fastnn_window(ho, g->sh, g->pt, g->kh, g->dh, g->H, &h0, &h1);            \
            fastnn_window(wo, g->sw, g->pl, g->kw, g->dw, g->W, &w0, &w1);            \
            T* restrict yp = y + o;                                            \
            int64_t* restrict ip = idx ? idx + o : NULL;                       \
            for (ptrdiff_t c = 0; c < nc; c++) yp[c] = is_max ? -INFINITY : 0; \
            if (ip) for (ptrdiff_t c = 0; c < nc; c++) ip[c] = h0 * g->W + w0; \
            for (ptrdiff_t h = h0; h < h1; h += g->dh)                         \
                for (ptrdiff_t w = w0; w < w1; w += g->dw) {                   \
                    const T* restrict xp = x + ((n * g->H + h) * g->W + w) * g->C + c0; \
                    int64_t p = h * g->W + w;                                  \
                    if (!is_max)                                               \
                        for (ptrdiff_t c = 0; c < nc; c++) yp[c] += xp[c];     \
                    else if (ip)                                               \
                        for (ptrdiff_t c = 0; c < nc; c++) {                   \
                            T v = xp[c], a = yp[c];                            \
                            int take = (v > a) | (v != v);                     \
                            yp[c] = take ? v : a;                              \
                            ip[c] = take ? p : ip[c];                          \
                        }                                                      \
                    else                                                       \
                        for (ptrdiff_t c = 0; c < nc; c++) {                   \
                            T v = xp[c], a = yp[c];                            \
                            yp[c] = (v > a || v != v) ? v : a;                 \
                        }                                                      \
                }                                                              \
            if (!is_max) {                                                     \
                T cnt = (T)fastnn_divisor(g, ho, wo, h0, h1, w0, w1);          \
                for (ptrdiff_t c = 0; c < nc; c++) yp[c] = yp[c] / cnt;        \
            }                                                                  \
        }                                                                      \
}                                                                              \
/* Backward of one NCHW plane: gx = scatter-add of gy to the argmaxes (max), or \
 * of gy / count over each window's real elements (average, idx NULL). */      \
static int fastnn_pool_plane_back_##SUF(const T* restrict gy,                  \
                                         const int64_t* restrict idx,          \
                                         T* restrict gx, T* restrict sc,       \
                                         const fastnn_pool_geom* g) {          \
    for (ptrdiff_t p = 0; p < g->H * g->W; p++) gx[p] = 0;                     \
    if (idx) {                                                                 \
        /* An index outside the plane is skipped and reported, not followed. */ \
        int bad = 0;                                                           \
        for (ptrdiff_t o = 0; o < g->Ho * g->Wo; o++) {                        \
            int64_t k = idx[o];                                                \
            if ((uint64_t)k < (uint64_t)(g->H * g->W)) gx[k] += gy[o];         \
            else bad = 1;                                                      \
        }                                                                      \
        return bad;                                                            \
    }                                                                          \
    ptrdiff_t jlo, jhi;                                                        \
    fastnn_real_columns(g, &jlo, &jhi);                                        \
    for (ptrdiff_t ho = 0; ho < g->Ho; ho++) {                                 \
        ptrdiff_t h0, h1, w0, w1;                                              \
        fastnn_window(ho, g->sh, g->pt, g->kh, g->dh, g->H, &h0, &h1);                \
        for (ptrdiff_t wo = 0; wo < g->Wo; wo++) {                             \
            fastnn_window(wo, g->sw, g->pl, g->kw, g->dw, g->W, &w0, &w1);            \
            sc[wo] = gy[ho * g->Wo + wo] / (T)fastnn_divisor(g, ho, wo, h0, h1, w0, w1); \
        }                                                                      \
        for (ptrdiff_t h = h0; h < h1; h += g->dh)                             \
            for (ptrdiff_t j = jlo; j < jhi; j++) {                            \
                ptrdiff_t lo, hi, off = j * g->dw - g->pl;                     \
                fastnn_tap_range(off, g->sw, g->W, g->Wo, &lo, &hi);           \
                if (hi <= lo) continue;                                        \
                T* restrict gr = gx + h * g->W + (off + lo * g->sw);           \
                FASTNN_BY_STRIDE(g->sw, FASTNN_ADD_BACK_LOOP)                  \
            }                                                                  \
    }                                                                          \
    return 0;                                                                  \
}                                                                              \
/* Backward of channels [c0, c1) of image n (NHWC), as the plane version. */  \
static int fastnn_pool_column_back_##SUF(const T* restrict gy,                 \
                                          const int64_t* restrict idx,         \
                                          T* restrict gx, T* restrict sc,      \
                                          const fastnn_pool_geom* g,           \
                                          ptrdiff_t n, ptrdiff_t c0,           \
                                          ptrdiff_t c1) {                      \
    ptrdiff_t nc = c1 - c0, HW = g->H * g->W;                                  \
    int bad = 0;                                                               \
    T* restrict gxn = gx + n * HW * g->C + c0;                                 \
    for (ptrdiff_t p = 0; p < HW; p++)                                         \
        for (ptrdiff_t c = 0; c < nc; c++) gxn[p * g->C + c] = 0;              \
    for (ptrdiff_t ho = 0; ho < g->Ho; ho++)                                   \
        for (ptrdiff_t wo = 0; wo < g->Wo; wo++) {                             \
            ptrdiff_t o = ((n * g->Ho + ho) * g->Wo + wo) * g->C + c0;         \
            const T* restrict gp = gy + o;                                     \
            if (idx) {                                                         \
                const int64_t* restrict ip = idx + o;                          \
                for (ptrdiff_t c = 0; c < nc; c++) {                               \
                    if ((uint64_t)ip[c] < (uint64_t)HW) gxn[ip[c] * g->C + c] += gp[c]; \
                    else bad = 1;                                              \
                }                                                              \
                continue;                                                      \
            }                                                                  \
            ptrdiff_t h0, h1, w0, w1;                                          \
            fastnn_window(ho, g->sh, g->pt, g->kh, g->dh, g->H, &h0, &h1);            \
            fastnn_window(wo, g->sw, g->pl, g->kw, g->dw, g->W, &w0, &w1);            \
            T cnt = (T)fastnn_divisor(g, ho, wo, h0, h1, w0, w1);              \
            for (ptrdiff_t c = 0; c < nc; c++) sc[c] = gp[c] / cnt;            \
            for (ptrdiff_t h = h0; h < h1; h += g->dh)                         \
                for (ptrdiff_t w = w0; w < w1; w += g->dw) {                   \
                    T* restrict q = gxn + (h * g->W + w) * g->C;               \
                    for (ptrdiff_t c = 0; c < nc; c++) q[c] += sc[c];          \
                }                                                              \
        }                                                                      \
    return bad;                                                                \
}

#define T float
FASTNN_POOL_KERNELS(float, f32)
#undef T
#define T double
FASTNN_POOL_KERNELS(double, f64)
#undef T

/* The small-plane path of the 2x2 kernel: its bound on the input columns 2 Wo and the
 * output rows per buffered block (a 16 x 32 buffer: 2 kB float, 4 kB double, plus
 * 2 kB of flags). */
#define FASTNN_POOL_SMALL_IN 32
#define FASTNN_POOL_SMALL_ROWS 16

#define FASTNN_POOL_2X2(T, SUF, V, ATTR)                                        \
/* The 2x2 stride-2 window without padding or dilation (LeNet's and VGG's), NCHW: \
 * output rows [r0, r1) of the whole batch, row r being row r % Ho of plane      \
 * r / Ho, read from input rows 2 ho and 2 ho + 1. A plane of a few rows costs    \
 * the general loop its setup per row and tap; here every output is four loads,   \
 * combined in the general loop's order (the same bits: the separable order      \
 * without indices, the taps in row-major order with them). The selects are      \
 * written max first, then NaN (the form gcc vectorises). is_max 0: the window    \
 * sum (a + c) + (b + d), divided by div. Compiled at every SIMD level         \
 * (_simd.h): with indices the AVX2 / AVX-512 loops measured about 4x the       \
 * baseline one (4.8 / 4.3 vs 17.4 ms for N32 C64 56x56, one thread), which has   \
 * no 64-bit selects. */                                                          \
/* Small planes of the 2x2 stride-2 kernel (NCHW, rows of fewer than 16 outputs:     \
 * 2 Wo < FASTNN_POOL_SMALL_IN input columns, LeNet's 8x8 and 28x28 images): such    \
 * rows never reach the vector loop of fastnn_pool_2x2_rows (perf: scalar selects,  \
 * 14 cycles an output with indices). Here blocks of up to FASTNN_POOL_SMALL_ROWS     \
 * output rows go through a buffer in two passes, one of them flat over the block.  \
 * Without indices: vertical pairs row by row (contiguous), then horizontal pairs    \
 * flat -- the general loop's separable order. With indices (even H and W only,      \
 * where the block's input rows are contiguous): horizontal pairs flat, then         \
 * vertical pairs row by row. The order of the taps is the row-major one of the      \
 * general loop: "take the later tap where it is larger or NaN" is associative, so   \
 * pairing (a, b) and (c, d) first picks the same tap as a, b, c, d in turn. The     \
 * sum: (0 + (a + c)) + (0 + (b + d)) has the bits of (0 + (a + c)) + (b + d), the    \
 * first sum never being -0. From 16 outputs a row the row loop is as fast or faster \
 * (N32 C64 56x56, 28 a row: 0.43 against 0.53 ms through the buffer). */            \
ATTR static void fastnn_pool_2x2_small_##SUF##_##V(                         \
        const T* restrict x, T* restrict y, int64_t* restrict idx,              \
        const fastnn_pool_geom* g, ptrdiff_t r0, ptrdiff_t r1, int is_max,      \
        ptrdiff_t div) {                                                        \
    const ptrdiff_t W = g->W, Wo = g->Wo, Ho = g->Ho, HW = g->H * g->W;         \
    const ptrdiff_t W2 = 2 * Wo;                                                \
    T buf[FASTNN_POOL_SMALL_ROWS * FASTNN_POOL_SMALL_IN];                       \
    int32_t flag[FASTNN_POOL_SMALL_ROWS * FASTNN_POOL_SMALL_IN];                \
    for (ptrdiff_t b0 = r0; b0 < r1; b0 += FASTNN_POOL_SMALL_ROWS) {            \
        const ptrdiff_t nr = r1 - b0 < FASTNN_POOL_SMALL_ROWS                  \
                             ? r1 - b0 : FASTNN_POOL_SMALL_ROWS;               \
        const ptrdiff_t b1 = b0 + nr;                                           \
        T* restrict yb = y + b0 * Wo;                                           \
        if (!idx) {                                                             \
            ptrdiff_t plane = b0 / Ho, ho = b0 - plane * Ho;                    \
            for (ptrdiff_t r = b0; r < b1; r++) {                               \
                const T* restrict x0 = x + plane * HW + 2 * ho * W;             \
                const T* restrict x1 = x0 + W;                                  \
                T* restrict t = buf + (r - b0) * W2;                            \
                if (++ho == Ho) { ho = 0; plane++; }                            \
                if (is_max)                                                     \
                    for (ptrdiff_t j = 0; j < W2; j++) {                        \
                        T a = x0[j], c = x1[j], m = c > a ? c : a;              \
                        t[j] = c != c ? c : m;                                  \
                    }                                                           \
                else                                                            \
                    for (ptrdiff_t j = 0; j < W2; j++) t[j] = (T)0 + (x0[j] + x1[j]); \
            }                                                                   \
            if (is_max)                                                         \
                for (ptrdiff_t e = 0; e < nr * Wo; e++) {                       \
                    T m0 = buf[2 * e], m1 = buf[2 * e + 1], m = m1 > m0 ? m1 : m0; \
                    yb[e] = m1 != m1 ? m1 : m;                                  \
                }                                                               \
            else                                                                \
                for (ptrdiff_t e = 0; e < nr * Wo; e++)                         \
                    yb[e] = (buf[2 * e] + buf[2 * e + 1]) / (T)div;             \
            continue;                                                           \
        }                                                                       \
        const T* restrict xb = x + b0 * 2 * W;                                  \
        for (ptrdiff_t e = 0; e < nr * W; e++) {                                \
            T a = xb[2 * e], b = xb[2 * e + 1];                                 \
            int32_t take = (b > a) | (b != b);                                  \
            buf[e] = take ? b : a;                                              \
            flag[e] = take;                                                     \
        }                                                                       \
        ptrdiff_t ho = b0 % Ho;                                                 \
        for (ptrdiff_t r = b0; r < b1; r++) {                                   \
            const ptrdiff_t k = r - b0, i0 = 2 * ho * W;                        \
            if (++ho == Ho) ho = 0;                                             \
            const T* restrict mt = buf + 2 * k * Wo;                            \
            const T* restrict mb = mt + Wo;                                     \
            const int32_t* restrict ft = flag + 2 * k * Wo;                     \
            const int32_t* restrict fb = ft + Wo;                               \
            T* restrict yr = yb + k * Wo;                                       \
            int64_t* restrict ir = idx + r * Wo;                                \
            for (ptrdiff_t wo = 0; wo < Wo; wo++) {                             \
                T t = mt[wo], b = mb[wo];                                       \
                int take = (b > t) | (b != b);                                  \
                yr[wo] = take ? b : t;                                          \
                ir[wo] = i0 + 2 * wo + (take ? W + fb[wo] : ft[wo]);            \
            }                                                                   \
        }                                                                       \
    }                                                                           \
}                                                                               \
ATTR static void fastnn_pool_2x2_rows_##SUF##_##V(                          \
        const T* restrict x, T* restrict y, int64_t* restrict idx,              \
        const fastnn_pool_geom* g, ptrdiff_t r0, ptrdiff_t r1, int is_max,      \
        ptrdiff_t div) {                                                        \
    const ptrdiff_t W = g->W, Wo = g->Wo, Ho = g->Ho, HW = g->H * g->W;         \
    if (2 * Wo < FASTNN_POOL_SMALL_IN                                           \
            && (!idx || (W == 2 * Wo && g->H == 2 * Ho))) {                     \
        fastnn_pool_2x2_small_##SUF##_##V(x, y, idx, g, r0, r1, is_max, div);   \
        return;                                                                 \
    }                                                                           \
    for (ptrdiff_t r = r0; r < r1; r++) {                                       \
        const ptrdiff_t plane = r / Ho, ho = r - plane * Ho;                    \
        const T* restrict x0 = x + plane * HW + 2 * ho * W;                     \
        const T* restrict x1 = x0 + W;                                          \
        T* restrict yr = y + r * Wo;                                            \
        if (!is_max) {                                                          \
            for (ptrdiff_t wo = 0; wo < Wo; wo++) {                             \
                T s = (T)0 + (x0[2 * wo] + x1[2 * wo]);                         \
                yr[wo] = (s + (x0[2 * wo + 1] + x1[2 * wo + 1])) / (T)div;      \
            }                                                                   \
        } else if (idx) {                                                       \
            int64_t* restrict ir = idx + r * Wo;                                \
            const int64_t i0 = 2 * ho * W;                                      \
            for (ptrdiff_t wo = 0; wo < Wo; wo++) {                             \
                T m = x0[2 * wo], v;                                            \
                int64_t i = i0 + 2 * wo;                                        \
                v = x0[2 * wo + 1];                                             \
                i = v > m ? i0 + 2 * wo + 1 : i; m = v > m ? v : m;             \
                i = v != v ? i0 + 2 * wo + 1 : i; m = v != v ? v : m;           \
                v = x1[2 * wo];                                                 \
                i = v > m ? i0 + W + 2 * wo : i; m = v > m ? v : m;             \
                i = v != v ? i0 + W + 2 * wo : i; m = v != v ? v : m;           \
                v = x1[2 * wo + 1];                                             \
                i = v > m ? i0 + W + 2 * wo + 1 : i; m = v > m ? v : m;         \
                i = v != v ? i0 + W + 2 * wo + 1 : i; m = v != v ? v : m;       \
                yr[wo] = m;                                                     \
                ir[wo] = i;                                                     \
            }                                                                   \
        } else {                                                                \
            for (ptrdiff_t wo = 0; wo < Wo; wo++) {                             \
                T a = x0[2 * wo], c = x1[2 * wo], b = x0[2 * wo + 1], d = x1[2 * wo + 1]; \
                T m0 = c > a ? c : a, m1 = d > b ? d : b;                       \
                m0 = c != c ? c : m0;                                           \
                m1 = d != d ? d : m1;                                           \
                T m = m1 > m0 ? m1 : m0;                                        \
                yr[wo] = m1 != m1 ? m1 : m;                                     \
            }                                                                   \
        }                                                                       \
    }                                                                           \
}                                                                               \
/* The same windows in NHWC: output rows [r0, r1) of the batch (row r = image     \
 * r / Ho, row r % Ho), each Wo pixels of C channels from two input rows; the     \
 * four taps are contiguous channel vectors, combined in the general column       \
 * loop's order: taps (0,0), (0,1), (1,0), (1,1) one after the other from -inf    \
 * (max) or 0 (sum). */                                                           \
ATTR static void fastnn_pool_2x2_nhwc_rows_##SUF##_##V(                     \
        const T* restrict x, T* restrict y, int64_t* restrict idx,              \
        const fastnn_pool_geom* g, ptrdiff_t r0, ptrdiff_t r1, int is_max,      \
        ptrdiff_t div) {                                                        \
    const ptrdiff_t W = g->W, C = g->C, Wo = g->Wo, Ho = g->Ho;                 \
    for (ptrdiff_t r = r0; r < r1; r++) {                                       \
        const ptrdiff_t n = r / Ho, ho = r - n * Ho;                            \
        const T* restrict x0 = x + (n * g->H + 2 * ho) * W * C;                 \
        const T* restrict x1 = x0 + W * C;                                      \
        for (ptrdiff_t wo = 0; wo < Wo; wo++) {                                 \
            const T* restrict a = x0 + 2 * wo * C;                              \
            const T* restrict b = a + C;                                        \
            const T* restrict c = x1 + 2 * wo * C;                              \
            const T* restrict d = c + C;                                        \
            T* restrict yp = y + (r * Wo + wo) * C;                             \
            if (!is_max) {                                                      \
                for (ptrdiff_t k = 0; k < C; k++)                               \
                    yp[k] = ((((T)0 + a[k]) + b[k]) + c[k] + d[k]) / (T)div;    \
            } else if (idx) {                                                   \
                int64_t* restrict ip = idx + (r * Wo + wo) * C;                 \
                const int64_t p = 2 * ho * W + 2 * wo;                          \
                for (ptrdiff_t k = 0; k < C; k++) {                             \
                    T m = a[k], v;                                              \
                    int64_t i = p;                                              \
                    v = b[k];                                                   \
                    i = v > m ? p + 1 : i; m = v > m ? v : m;                   \
                    i = v != v ? p + 1 : i; m = v != v ? v : m;                 \
                    v = c[k];                                                   \
                    i = v > m ? p + W : i; m = v > m ? v : m;                   \
                    i = v != v ? p + W : i; m = v != v ? v : m;                 \
                    v = d[k];                                                   \
                    i = v > m ? p + W + 1 : i; m = v > m ? v : m;               \
                    i = v != v ? p + W + 1 : i; m = v != v ? v : m;             \
                    yp[k] = m;                                                  \
                    ip[k] = i;                                                  \
                }                                                               \
            } else {                                                            \
                for (ptrdiff_t k = 0; k < C; k++) {                             \
                    T m = a[k], v, t;                                           \
                    v = b[k]; t = v > m ? v : m; m = v != v ? v : t;            \
                    v = c[k]; t = v > m ? v : m; m = v != v ? v : t;            \
                    v = d[k]; t = v > m ? v : m; m = v != v ? v : t;            \
                    yp[k] = m;                                                  \
                }                                                               \
            }                                                                   \
        }                                                                       \
    }                                                                           \
}
#define FASTNN_POOL_2X2_KERNELS(V, ATTR)                                        \
    FASTNN_POOL_2X2(float, f32, V, ATTR) FASTNN_POOL_2X2(double, f64, V, ATTR)
FASTNN_SIMD_VARIANTS(FASTNN_POOL_2X2_KERNELS)
#define FASTNN_POOL_2X2_TYPE(T, SUF)                                            \
    typedef void fastnn_pool_2x2_rows_##SUF##_fn(const T*, T*, int64_t*,        \
                                                 const fastnn_pool_geom*, ptrdiff_t, \
                                                 ptrdiff_t, int, ptrdiff_t);
FASTNN_POOL_2X2_TYPE(float, f32)
FASTNN_POOL_2X2_TYPE(double, f64)
typedef fastnn_pool_2x2_rows_f32_fn fastnn_pool_2x2_nhwc_rows_f32_fn;
typedef fastnn_pool_2x2_rows_f64_fn fastnn_pool_2x2_nhwc_rows_f64_fn;
FASTNN_SIMD_POINTER(fastnn_pool_2x2_rows_f32)
FASTNN_SIMD_POINTER(fastnn_pool_2x2_rows_f64)
FASTNN_SIMD_POINTER(fastnn_pool_2x2_nhwc_rows_f32)
FASTNN_SIMD_POINTER(fastnn_pool_2x2_nhwc_rows_f64)

/* Points the 2x2 kernels at the CPU's level; returns the level. */
static int fastnn_pool_pick(void) {
    int level = fastnn_simd_level();
    FASTNN_SIMD_SET(level, fastnn_pool_2x2_rows_f32);
    FASTNN_SIMD_SET(level, fastnn_pool_2x2_rows_f64);
    FASTNN_SIMD_SET(level, fastnn_pool_2x2_nhwc_rows_f32);
    FASTNN_SIMD_SET(level, fastnn_pool_2x2_nhwc_rows_f64);
    return level;
}

#endif
