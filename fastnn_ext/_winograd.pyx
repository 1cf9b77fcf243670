# cython: language_level=3
"""Winograd F(4x4, 3x3) convolution (3x3, stride 1, dilation 1, one group), NCHW and NHWC.

Each output 4x4 tile is A^T [sum over c of U[k, c] * V[c]] A, with V = B^T d B the
transformed 6x6 input tile and U = G g G^T the transformed kernel (_winograd.h). The
sum over channels is, for each of the 36 tile positions, one product
(K x C) @ (C x tiles) on the register-blocked kernel (ugemm): 36 products of 16 output
pixels each instead of 9 taps per pixel -- 2.25x fewer multiplications than any
GEMM formulation of the direct convolution.

Work items are (block of tiles, block of output channels), fixed by the shape alone;
an item transforms its tiles' input (for all channels), multiplies and writes its
output tiles, so every output element comes from one item in a fixed order and the
result is bitwise identical for any thread count. Padding is handled while a tile row
is gathered into per-thread scratch: no padded copy of x is made.
"""
from cython cimport floating
from cython.parallel cimport prange, parallel
from libc.stdlib cimport malloc, free
from libc.string cimport memset, memcpy

from fastnn_ext._openmp cimport team
from fastnn_ext._ukernel cimport ugemm, fastnn_ukernel_pick, FASTNN_UGEMM_SCRATCH

cdef extern from "_winograd.h" nogil:
    int fastnn_winograd_pick()
    int fastnn_simd_fma512_full()
    void wg_input_float(const float** col, Py_ssize_t sh, Py_ssize_t L, float* v, Py_ssize_t sp)
    void wg_input_double(const double** col, Py_ssize_t sh, Py_ssize_t L, double* v,
                         Py_ssize_t sp)
    void wg_weight_float(const float* g, Py_ssize_t si, Py_ssize_t sj, Py_ssize_t L, float* u,
                         Py_ssize_t sp)
    void wg_weight_double(const double* g, Py_ssize_t si, Py_ssize_t sj, Py_ssize_t L,
                          double* u, Py_ssize_t sp)
    void wg_output_float(const float* m, Py_ssize_t sp, Py_ssize_t L, float* y,
                         Py_ssize_t syi, Py_ssize_t syj, const float* bias)
    void wg_output_double(const double* m, Py_ssize_t sp, Py_ssize_t L, double* y,
                          Py_ssize_t syi, Py_ssize_t syj, const double* bias)
    void wg_split4_float(const float* src, Py_ssize_t n, float* o, Py_ssize_t so)
    void wg_split4_double(const double* src, Py_ssize_t n, double* o, Py_ssize_t so)
    void wg_merge4_float(const float* s, Py_ssize_t ss, Py_ssize_t n, float b, float* dst)
    void wg_merge4_double(const double* s, Py_ssize_t ss, Py_ssize_t n, double b, double* dst)
    int wg_finite_float(const float* y, Py_ssize_t n)
    int wg_finite_double(const double* y, Py_ssize_t n)

# The SIMD level of the transforms (0 baseline, 1 AVX2+FMA, 2 AVX-512), picked once
# at import (_simd.h; FASTNN_UKERNEL_MAX caps it), with this module's copy of the
# register-blocked product (_ukernel.h) at the same level.
SIMD_LEVEL = fastnn_winograd_pick()
UKERNEL_LEVEL = fastnn_ukernel_pick()
# Whether 512-bit FMAs run at full width here (_simd.h): which shapes Winograd wins on.
FULL_WIDTH_512 = bool(fastnn_simd_fma512_full())

# Transformed tile positions (6x6) and output tile side.
DEF NPOS = 36
DEF TILE = 4


cdef struct WGeom:
    Py_ssize_t N, C, H, W, K, pt, pl, Ho, Wo
    Py_ssize_t th, tw, tpi, T          # tile rows, tile columns, tiles per image, all tiles
    Py_ssize_t TB, KB                  # tiles and output channels per work item


cdef inline void input_lanes(const floating** col, Py_ssize_t sh, Py_ssize_t L, floating* v,
                             Py_ssize_t sp) noexcept nogil:
    if floating is float:
        wg_input_float(col, sh, L, v, sp)
    else:
        wg_input_double(col, sh, L, v, sp)


cdef inline void output_lanes(const floating* m, Py_ssize_t sp, Py_ssize_t L,
                              floating* y, Py_ssize_t syi, Py_ssize_t syj,
                              const floating* bias) noexcept nogil:
    if floating is float:
        wg_output_float(m, sp, L, y, syi, syj, bias)
    else:
        wg_output_double(m, sp, L, y, syi, syj, bias)


cdef inline void split4(const floating* src, Py_ssize_t n, floating* o,
                        Py_ssize_t so) noexcept nogil:
    if floating is float:
        wg_split4_float(src, n, o, so)
    else:
        wg_split4_double(src, n, o, so)


cdef inline void merge4(const floating* s, Py_ssize_t ss, Py_ssize_t n, floating b,
                        floating* dst) noexcept nogil:
    if floating is float:
        wg_merge4_float(s, ss, n, b, dst)
    else:
        wg_merge4_double(s, ss, n, b, dst)


cdef inline int all_finite(const floating* y, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return wg_finite_float(y, n)
    else:
        return wg_finite_double(y, n)


cdef inline void weight_lanes(const floating* g, Py_ssize_t si, Py_ssize_t sj, Py_ssize_t L,
                              floating* u, Py_ssize_t sp) noexcept nogil:
    if floating is float:
        wg_weight_float(g, si, sj, L, u, sp)
    else:
        wg_weight_double(g, si, sj, L, u, sp)


cdef inline Py_ssize_t aligned(Py_ssize_t n) noexcept nogil:
    # Scratch segments start on 64-byte boundaries.
    return (n + 15) // 16 * 16


cdef void gather_nchw(const floating* plane, const WGeom* g, Py_ssize_t h0, Py_ssize_t w0,
                      Py_ssize_t L, floating* d, Py_ssize_t TB) noexcept nogil:
    # The 6x6 input tiles of L neighbouring tiles of one channel plane (rows from
    # h0, columns from w0, 4 apart), zero outside the image, tile position major:
    # d[(6r + j) * TB + l] = x[h0 + r, w0 + 4l + j] -- lanes contiguous for the transform.
    # The tiles inside the image take each row split by column phase twice, from
    # w0 + 4l (j = 0..3) and w0 + 4l + 4 (j = 4, 5, and 6, 7, which the next row
    # overwrites: d has 38 rows); the edge tiles are copied one by one.
    cdef Py_ssize_t r, j, l, h, w, lo, hi
    cdef const floating* src
    cdef floating* o
    lo = (-w0 + TILE - 1) // TILE if w0 < 0 else 0
    hi = (g.W - w0 - 8) // TILE + 1 if g.W - w0 - 8 >= 0 else 0
    hi = L if hi > L else hi
    if hi < lo:
        hi = lo
    for r in range(6):
        h = h0 + r
        o = d + 6 * r * TB
        if h < 0 or h >= g.H:
            for j in range(6):
                memset(o + j * TB, 0, L * sizeof(floating))
            continue
        src = plane + h * g.W + w0
        if hi > lo:
            split4(src + TILE * lo, hi - lo, o + lo, TB)
            split4(src + TILE * (lo + 1), hi - lo, o + 4 * TB + lo, TB)
        for l in range(L):
            if lo <= l < hi:
                continue
            for j in range(6):
                w = w0 + TILE * l + j
                o[j * TB + l] = src[TILE * l + j] if 0 <= w < g.W else 0


cdef void gather_nhwc(const floating* img, const WGeom* g, Py_ssize_t h0, Py_ssize_t w0,
                      Py_ssize_t ncols, floating* strip) noexcept nogil:
    # Six input rows from h0 and ncols columns from w0 of one NHWC image, all
    # channels, zero outside: strip[(r * ncols + q) * C + c].
    cdef Py_ssize_t r, h, lo, hi, C = g.C
    cdef floating* row
    lo = -w0 if w0 < 0 else 0
    hi = g.W - w0 if w0 + ncols > g.W else ncols
    for r in range(6):
        h = h0 + r
        row = strip + r * ncols * C
        if h < 0 or h >= g.H or hi <= lo:
            memset(row, 0, ncols * C * sizeof(floating))
            continue
        if lo > 0:
            memset(row, 0, lo * C * sizeof(floating))
        memcpy(row + lo * C, img + (h * g.W + w0 + lo) * C, (hi - lo) * C * sizeof(floating))
        if hi < ncols:
            memset(row + hi * C, 0, (ncols - hi) * C * sizeof(floating))


cdef inline Py_ssize_t tile_run(const WGeom* g, Py_ssize_t t, Py_ssize_t t1, Py_ssize_t* n,
                                 Py_ssize_t* ti, Py_ssize_t* tj) noexcept nogil:
    # Tile t (flat over images, tile rows, tile columns): its image, tile row and
    # column, and how many tiles from it to t1 lie in the same tile row.
    cdef Py_ssize_t r
    n[0] = t // g.tpi
    r = t - n[0] * g.tpi
    ti[0] = r // g.tw
    tj[0] = r - ti[0] * g.tw
    return g.tw - tj[0] if g.tw - tj[0] < t1 - t else t1 - t


cdef int forward_item(const floating* x, const floating* u, const floating* bias,
                       floating* y, const WGeom* g, Py_ssize_t t0, Py_ssize_t t1,
                       Py_ssize_t k0, Py_ssize_t k1, bint nhwc, floating* V, floating* M,
                       floating* strip, floating* ot, floating* scratch,
                       const Py_ssize_t* aoff, const Py_ssize_t* boff) noexcept nogil:
    # Tiles [t0, t1) and output channels [k0, k1); returns 0 if an output is not
    # finite (the caller then takes the direct path). NCHW: V[p][c][t], U[p][k][c],
    # M[p][k][t] (tiles along the vectors); NHWC: V[p][t][c], U[p][c][k], M[p][t][k]
    # (channels along the vectors).
    cdef Py_ssize_t TB = g.TB, C = g.C, K = g.K, tb = t1 - t0, kb = k1 - k0
    cdef Py_ssize_t t, n, ti, tj, L, c, l, j, p, k, i, oh, ow, nw, ncols, h0, w0, row
    cdef floating b
    cdef const floating* base
    cdef const floating* bk
    cdef int finite = 1
    cdef const floating* col[6]
    cdef floating* dst
    cdef const floating* src
    # Input transform.
    if not nhwc:
        for c in range(C):
            t = t0
            while t < t1:
                L = tile_run(g, t, t1, &n, &ti, &tj)
                gather_nchw(x + (n * C + c) * g.H * g.W, g, ti * TILE - g.pt,
                            tj * TILE - g.pl, L, strip + (t - t0), TB)
                t += L
            for j in range(6):
                col[j] = strip + j * TB
            input_lanes(col, 6 * TB, tb, V + c * TB, C * TB)
    else:
        t = t0
        while t < t1:
            L = tile_run(g, t, t1, &n, &ti, &tj)
            ncols = TILE * L + 2
            h0 = ti * TILE - g.pt
            w0 = tj * TILE - g.pl
            if h0 >= 0 and h0 + 6 <= g.H and w0 >= 0 and w0 + ncols <= g.W:
                # Inside the image: the tiles are read in place.
                base = x + ((n * g.H + h0) * g.W + w0) * C
                row = g.W * C
            else:
                gather_nhwc(x + n * g.H * g.W * C, g, h0, w0, ncols, strip)
                base = strip
                row = ncols * C
            for l in range(L):
                for j in range(6):
                    col[j] = base + (TILE * l + j) * C
                input_lanes(col, row, C, V + (t - t0 + l) * C, TB * C)
            t += L
    # One product per tile position.
    for p in range(NPOS):
        if not nhwc:
            ugemm(kb, tb, C, u + (p * K + k0) * C, C, <Py_ssize_t*>NULL, aoff,
                  V + p * C * TB, boff, M + p * kb * TB, TB, False, <floating*>NULL,
                  <floating*>NULL, scratch)
        else:
            ugemm(tb, kb, C, V + p * TB * C, C, <Py_ssize_t*>NULL, aoff, u + p * C * K + k0,
                  boff, M + p * TB * kb, kb, False, <floating*>NULL, <floating*>NULL, scratch)
    # Output transform and store (plus bias), clipped at the bottom and right edges.
    if not nhwc:
        for k in range(kb):
            output_lanes(M + k * TB, kb * TB, tb, ot, TILE * tb, tb, <floating*>NULL)
            finite &= all_finite(ot, 16 * tb)
            b = bias[k0 + k] if bias != NULL else 0
            t = t0
            while t < t1:
                L = tile_run(g, t, t1, &n, &ti, &tj)
                nw = g.Wo - tj * TILE if g.Wo - tj * TILE < TILE * L else TILE * L
                for i in range(TILE):
                    oh = ti * TILE + i
                    if oh >= g.Ho:
                        break
                    dst = y + ((n * K + k0 + k) * g.Ho + oh) * g.Wo + tj * TILE
                    src = ot + TILE * i * tb + (t - t0)
                    merge4(src, tb, nw // TILE, b, dst)
                    for j in range(nw % TILE):
                        dst[nw - nw % TILE + j] = src[j * tb + nw // TILE] + b
                t += L
        return finite
    t = t0
    while t < t1:
        L = tile_run(g, t, t1, &n, &ti, &tj)
        for l in range(L):
            oh = ti * TILE
            ow = (tj + l) * TILE
            dst = y + ((n * g.Ho + oh) * g.Wo + ow) * K + k0
            bk = bias + k0 if bias != NULL else NULL
            if oh + TILE <= g.Ho and ow + TILE <= g.Wo:
                # A whole tile: stored in place, checked there.
                output_lanes(M + (t - t0 + l) * kb, TB * kb, kb, dst, g.Wo * K, K, bk)
                for i in range(TILE):
                    for j in range(TILE):
                        finite &= all_finite(dst + (i * g.Wo + j) * K, kb)
                continue
            output_lanes(M + (t - t0 + l) * kb, TB * kb, kb, ot, TILE * kb, kb, bk)
            finite &= all_finite(ot, 16 * kb)
            for i in range(TILE):
                if oh + i >= g.Ho:
                    break
                for j in range(TILE):
                    if ow + j >= g.Wo:
                        break
                    memcpy(dst + (i * g.Wo + j) * K, ot + (TILE * i + j) * kb,
                           kb * sizeof(floating))
        t += L
    return finite


cdef void taps_by_channel(const floating* wk, Py_ssize_t C, Py_ssize_t stride, bint flip,
                          floating* tmp) noexcept nogil:
    # One output channel's OIHW taps (C x 9, channel c's `stride` apart) transposed to
    # (9 x C): channels contiguous. flip: the taps reversed -- for wk = w + o * 9 and
    # stride K * 9, output channel o of the flipped, transposed kernel of a forward
    # OIHW w (C x K x 3 x 3): tmp[t * C + i] = w[i, o, 8 - t], what the copy
    # w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3) gives.
    cdef Py_ssize_t c, tap
    for c in range(C):
        for tap in range(9):
            tmp[tap * C + c] = wk[c * stride + (8 - tap if flip else tap)]


cdef void taps_flipped_lanes(const floating* wi, Py_ssize_t K, Py_ssize_t Cin,
                             floating* tmp) noexcept nogil:
    # NHWC: the flipped kernel's taps for its input channel i, output channels as
    # lanes, read in place from the forward HWIO weight (3 x 3 x K x Cin, wi = w + i):
    # tmp[t * K + o] = w[8 - t, o, i] -- what weight_lanes reads of the copy
    # w[::-1, ::-1].transpose(0, 1, 3, 2).
    cdef Py_ssize_t o, tap
    cdef const floating* src
    for tap in range(9):
        src = wi + (8 - tap) * K * Cin
        for o in range(K):
            tmp[tap * K + o] = src[o * Cin]


cdef void fill_offsets(Py_ssize_t* offs, Py_ssize_t C, Py_ssize_t row) noexcept nogil:
    # The product's offset tables: A's channel c at c, B's at c * row.
    cdef Py_ssize_t c
    for c in range(C):
        offs[c] = c
        offs[C + c] = c * row


def transform_weight(const floating[::1] w, floating[::1] u, Py_ssize_t C, Py_ssize_t K,
                     bint nhwc, int num_threads, bint flipped=False):
    """u = G g G^T for every (k, c): NCHW (OIHW w) gives u[p][k][c], NHWC (HWIO w)
    u[p][c][k], p the 36 tile positions.

    ``flipped``: w is a forward kernel whose flipped, transposed kernel is the one to
    transform (grad_x convolves grad_y with it), read in place instead of copied. NCHW:
    w is C x K x 3 x 3 (C output channels of the forward, K its inputs) for the
    K x C x 3 x 3 kernel; NHWC: w is 3 x 3 x K x C for the 3 x 3 x C x K one."""
    cdef Py_ssize_t it, items = C if nhwc else K
    cdef Py_ssize_t scratch = 9 * (K if nhwc else C)
    cdef bint need_tmp = flipped or not nhwc
    cdef floating* tmp = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    if C == 0 or K == 0:
        return
    with nogil, parallel(num_threads=team(num_threads, items),
                         use_threads_if=num_threads > 1 and items > 1):
        tmp = NULL
        if need_tmp:
            tmp = <floating*>malloc(scratch * sizeof(floating))
        for it in prange(items, schedule="static"):
            if nhwc and not flipped:
                weight_lanes(&w[0] + it * K, 3 * C * K, C * K, K, &u[0] + it * K, C * K)
                continue
            if tmp == NULL:
                failed_p[0] = 1
                continue
            if nhwc:
                taps_flipped_lanes(&w[0] + it, K, C, tmp)
                weight_lanes(tmp, 3 * K, K, K, &u[0] + it * K, C * K)
                continue
            if flipped:
                taps_by_channel(&w[0] + it * 9, C, K * 9, True, tmp)
            else:
                taps_by_channel(&w[0] + it * C * 9, C, 9, False, tmp)
            weight_lanes(tmp, 3 * C, C, C, &u[0] + it * C, K * C)
        free(tmp)
    if failed:
        raise MemoryError(f"could not allocate {scratch * sizeof(floating)} bytes of "
                          f"per-thread scratch for the Winograd weight transform")


def conv3x3_forward(const floating[::1] x, const floating[::1] u, const floating[::1] bias,
                    floating[::1] y, tuple geom, bint nhwc, int num_threads,
                    Py_ssize_t tile_block, Py_ssize_t k_block):
    """y = conv(x, w) + bias for a 3x3 stride-1 kernel, u = transform_weight(w).

    ``geom`` = (N, C, H, W, K, pad_top, pad_left, Ho, Wo); ``tile_block`` 4x4 output
    tiles and ``k_block`` output channels per work item. Returns False when an output
    is not finite: y then need not propagate Inf and NaN like the direct convolution."""
    cdef WGeom g
    cdef Py_ssize_t nkb, nitems, it, t0, t1, k0, k1, TB, KB
    cdef Py_ssize_t v_size, m_size, strip_size, ot_size, g_size, total, tw_run
    cdef const floating* bp = &bias[0] if bias is not None else NULL
    cdef floating* buf = NULL
    cdef Py_ssize_t* offs = NULL
    cdef int failed = 0, nonfinite = 0
    cdef int* failed_p = &failed
    cdef int* nonfinite_p = &nonfinite
    (g.N, g.C, g.H, g.W, g.K, g.pt, g.pl, g.Ho, g.Wo) = geom
    g.th = (g.Ho + TILE - 1) // TILE
    g.tw = (g.Wo + TILE - 1) // TILE
    g.tpi = g.th * g.tw
    g.T = g.N * g.tpi
    if g.T == 0 or g.K == 0 or g.C == 0:
        return True
    TB = g.TB = tile_block if tile_block < g.T else g.T
    KB = g.KB = k_block if k_block < g.K else g.K
    nkb = (g.K + KB - 1) // KB
    nitems = ((g.T + TB - 1) // TB) * nkb
    v_size = aligned(NPOS * g.C * TB)
    m_size = aligned(NPOS * KB * TB)
    tw_run = TB if TB < g.tw else g.tw
    strip_size = aligned(6 * (TILE * tw_run + 2) * g.C if nhwc else (NPOS + 2) * TB)
    ot_size = aligned(16 * (KB if nhwc else TB))
    g_size = FASTNN_UGEMM_SCRATCH(g.C)
    total = v_size + m_size + strip_size + ot_size + g_size
    with nogil, parallel(num_threads=team(num_threads, nitems),
                         use_threads_if=num_threads > 1 and nitems > 1):
        buf = <floating*>malloc(total * sizeof(floating))
        offs = <Py_ssize_t*>malloc(2 * g.C * sizeof(Py_ssize_t))
        if offs != NULL:
            fill_offsets(offs, g.C, g.K if nhwc else TB)
        for it in prange(nitems, schedule="dynamic"):
            if buf == NULL or offs == NULL:
                failed_p[0] = 1
                continue
            t0 = (it // nkb) * TB
            t1 = t0 + TB if t0 + TB < g.T else g.T
            k0 = (it % nkb) * KB
            k1 = k0 + KB if k0 + KB < g.K else g.K
            if not forward_item(&x[0], &u[0], bp, &y[0], &g, t0, t1, k0, k1, nhwc, buf,
                         buf + v_size, buf + v_size + m_size,
                         buf + v_size + m_size + strip_size,
                         buf + v_size + m_size + strip_size + ot_size, offs, offs + g.C):
                nonfinite_p[0] = 1
        free(buf)
        free(offs)
    if failed:
        raise MemoryError(f"could not allocate {total * sizeof(floating)} bytes of "
                          f"per-thread scratch for the Winograd convolution")
    return not nonfinite
