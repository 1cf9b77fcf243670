# cython: language_level=3
"""im2col / col2im convolution kernels (forward and backward), NCHW and NHWC.

Every kernel splits its work into items chosen from the shape alone (never from
the thread count), runs them in a ``prange`` with per-thread scratch, and calls
GEMM from each item with BLAS held to one thread by the Python layer. Each output
element is produced by one item in a fixed order, so results are bitwise identical
for any thread count.
"""
from cython cimport floating
from fastnn_ext._openmp cimport team
from cython.parallel cimport prange, parallel
from libc.stdlib cimport malloc, free
from libc.string cimport memset, memcpy

from fastnn_ext._cost cimport FASTNN_SERIAL_BELOW_ELEMENTWISE
from fastnn_ext._ukernel cimport (pgemm, ugemm, transpose_tile, fastnn_ukernel_pick,
                                  FASTNN_UGEMM_SCRATCH)



# The SIMD level of the register-blocked kernel (0 baseline, 1 AVX2+FMA, 2 AVX-512),
# picked once at import like every family's (_simd.h; FASTNN_UKERNEL_MAX caps it).
SIMD_LEVEL = UKERNEL_LEVEL = fastnn_ukernel_pick()


cdef struct Geom:
    Py_ssize_t N, C, H, W, K, kh, kw, sh, sw, dh, dw, pt, pl, Ho, Wo, G
    Py_ssize_t Cg, Kg, khkw, ckk, P
    bint nhwc, direct        # direct: 1x1, stride 1, no padding -> x is its own im2col


# Scratch budget for one im2col tile (per thread): half of a Zen 4 core's 1 MiB L2,
# leaving the rest for the weight panel and the output tile. Measured on one thread
# (N64 C16 32x32 K32 k3 forward): 64 KiB 11.0 ms, 256 KiB 9.8 ms, 512 KiB 9.5 ms;
# 1-2 MiB gained nothing more and would crowd a 512 KiB-L2 part.
DEF TILE_BYTES = 512 * 1024
# Work items wanted per call so that small batches still spread over the cores.
DEF MIN_ITEMS = 8
# NHWC implicit forward: the weight block one item multiplies (all its pixels run
# against one 32-channel panel of it before the next panel), at most half of a 1 MiB
# L2. A whole 3x3x256x256 weight (2.4 MB) read once per output row came from L3:
# N1 C256 14x14 K256 took 1.06 ms NHWC against 0.63 NCHW.
DEF NHWC_WEIGHT_BYTES = 512 * 1024
# Partial weight-gradient buffers (reduced in a fixed order afterwards).
DEF MAX_CHUNKS = 16
# NHWC products vectorise along output channels: below this many per group the
# register-blocked kernel would mostly multiply padding, so BLAS takes them.
DEF SMALL_K = 16
SMALL_K_CHANNELS = SMALL_K   # for the Python layer
DEF MAX_PARTIAL_BYTES = 64 * 1024 * 1024


cdef Geom make_geom(tuple p, bint nhwc):
    cdef Geom g
    (g.N, g.C, g.H, g.W, g.K, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl,
     g.Ho, g.Wo, g.G) = p
    g.Cg = g.C // g.G
    g.Kg = g.K // g.G
    g.khkw = g.kh * g.kw
    g.ckk = g.Cg * g.khkw
    g.P = g.Ho * g.Wo
    g.nhwc = nhwc
    g.direct = (g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.pt == 0
                and g.pl == 0 and g.Ho == g.H and g.Wo == g.W)
    return g


cdef inline Py_ssize_t floor_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # b > 0; C division truncates toward zero.
    cdef Py_ssize_t q = a // b
    if (a % b != 0) and (a < 0):
        q -= 1
    return q


cdef inline void valid_range(Py_ssize_t off, Py_ssize_t s, Py_ssize_t n_in,
                             Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    # Output indices o with 0 <= o*s + off < n_in are exactly [lo, hi).
    lo[0] = 0 if off >= 0 else floor_div(-off + s - 1, s)
    hi[0] = 0 if n_in - 1 - off < 0 else floor_div(n_in - 1 - off, s) + 1
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef Py_ssize_t chunk_size(Py_ssize_t items, Py_ssize_t partial_bytes) noexcept nogil:
    # Items per weight-gradient chunk: at most MAX_CHUNKS chunks (each owns a partial
    # of partial_bytes, reduced in chunk order), fewer when the partials would pass
    # MAX_PARTIAL_BYTES. From the shape alone, so the bits never depend on threads.
    cdef Py_ssize_t nchunks = items if items < MAX_CHUNKS else MAX_CHUNKS
    while nchunks > 1 and nchunks * partial_bytes > MAX_PARTIAL_BYTES:
        nchunks //= 2
    return (items + nchunks - 1) // nchunks


cdef Py_ssize_t tile_pixels(const Geom* g, Py_ssize_t units, Py_ssize_t itemsize) noexcept nogil:
    # Pixels per im2col tile: fill TILE_BYTES, then shrink so that at least
    # MIN_ITEMS items exist across `units` independent (image, group) pairs.
    cdef Py_ssize_t t = TILE_BYTES // ((g.ckk if g.ckk > 0 else 1) * itemsize)
    cdef Py_ssize_t want
    if units < 1:
        units = 1
    if t < 16:
        t = 16
    elif t > 64:
        t -= t % 16
    if units * ((g.P + t - 1) // t) < MIN_ITEMS:
        want = (MIN_ITEMS + units - 1) // units
        t = (g.P + want - 1) // want
        if t < 32:
            t = 32
    if t > g.P:
        t = g.P
    if t < 1:
        t = 1
    return t


cdef Py_ssize_t tile_rows(const Geom* g, Py_ssize_t units, Py_ssize_t Wq, Py_ssize_t itemsize,
                          Py_ssize_t* nkb) noexcept nogil:
    # Output rows per item of the implicit (stride-phase) kernel, and in *nkb the
    # number of output-channel blocks. NCHW: row tiles whose output block
    # (Kg x rows x Wq) fills TILE_BYTES; too few items: split the output channels
    # first (each block still runs whole 8-row kernel blocks over full-width panels),
    # then the rows. NHWC: whole images (in blocks of output channels when the
    # weight is large), split in rows until MIN_ITEMS items exist.
    cdef Py_ssize_t rows, ntiles, want
    nkb[0] = 1
    if units < 1:
        units = 1
    if not g.nhwc:
        rows = TILE_BYTES // (g.Kg * Wq * itemsize)
        if rows < 1:
            rows = 1
        if rows > g.Ho:
            rows = g.Ho
        ntiles = (g.Ho + rows - 1) // rows
        want = (MIN_ITEMS + units * ntiles - 1) // (units * ntiles)
        if want > 1 and g.Kg >= 64:
            nkb[0] = want if want < g.Kg // 32 else g.Kg // 32
        want = (MIN_ITEMS + units * nkb[0] - 1) // (units * nkb[0])
        if ntiles < want:
            rows = (g.Ho + want - 1) // want
    else:
        # Blocks of output channels first when the weight would not stay in L2
        # (NHWC_WEIGHT_BYTES), then rows.
        if g.Kg >= 64 and g.ckk * g.Kg * itemsize > NHWC_WEIGHT_BYTES:
            nkb[0] = (g.ckk * g.Kg * itemsize + NHWC_WEIGHT_BYTES - 1) // NHWC_WEIGHT_BYTES
            if nkb[0] > g.Kg // 32:
                nkb[0] = g.Kg // 32
        want = (MIN_ITEMS + units * nkb[0] - 1) // (units * nkb[0])
        rows = (g.Ho + want - 1) // want
    return rows if rows >= 1 else 1


# ---------------------------------------------------------------- im2col tiles
cdef inline void fill_zero(floating* d, Py_ssize_t n) noexcept nogil:
    # Inline loops instead of memset/memcpy: the runs are short (a row of a tile),
    # where a libc call costs more than the copy itself.
    cdef Py_ssize_t k
    for k in range(n):
        d[k] = 0


cdef inline void copy_run(floating* d, const floating* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        d[k] = s[k]


def pad_planes(const floating[::1] x, floating[::1] xp, Py_ssize_t planes, Py_ssize_t H,
               Py_ssize_t W, Py_ssize_t C, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t Hp,
               Py_ssize_t Wp, int num_threads):
    """xp (planes, Hp, Wp, C) = x (planes, H, W, C) placed at row pt, column pl, zeros
    around it; NCHW images are planes = N*C with C = 1. Every element of xp is written
    once, a plane at a time: one zero run between consecutive rows of x (a row's right
    padding and the next one's left). NumPy's zeros-then-assign writes the interior
    twice. The caller guarantees 0 <= pt, pt + H <= Hp, 0 <= pl, pl + W <= Wp."""
    cdef Py_ssize_t plane_out = Hp * Wp * C, run = W * C, gap = (Wp - W) * C
    cdef Py_ssize_t lead = (pt * Wp + pl) * C, p, r, pos
    cdef floating* d
    cdef const floating* src
    if planes == 0 or plane_out == 0:
        return
    with nogil:
        for p in prange(planes, num_threads=team(num_threads, planes), schedule="static",
                        use_threads_if=num_threads > 1
                        and planes * plane_out >= FASTNN_SERIAL_BELOW_ELEMENTWISE):
            d = &xp[0] + p * plane_out
            src = &x[0] + p * H * run
            fill_zero(d, lead if H else plane_out)
            pos = lead
            for r in range(H):
                copy_run(d + pos, src + r * run, run)
                pos = pos + run
                if r + 1 < H:
                    fill_zero(d + pos, gap)
                    pos = pos + gap
                elif H:
                    fill_zero(d + pos, plane_out - pos)


def split_planes(const floating[::1] x, floating[::1] xq, Py_ssize_t planes, Py_ssize_t H,
                 Py_ssize_t W, Py_ssize_t C, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t sh,
                 Py_ssize_t sw, Py_ssize_t Hq, Py_ssize_t Wq, int num_threads):
    """The stride phases of a zero-padded image in one pass: xq (planes, sh, sw, Hq, Wq,
    C)[p, a, b, u, v] = x padded by pt rows on top and pl columns on the left, at row
    u*sh + a and column v*sw + b (zero outside x); NHWC images, runs of C elements
    (NCHW would be planes = N*C with C = 1). A NumPy pad and a strided copy took 0.28
    ms for a 1x224x224x3 NHWC image with stride 2, this pass 0.06."""
    cdef Py_ssize_t rows = planes * sh * sw * Hq, run = Wq * C
    cdef Py_ssize_t it, p, rem, a, b, r, v, v_lo, v_hi, c
    cdef floating* d
    cdef const floating* src
    if rows == 0 or run == 0:
        return
    with nogil:
        for it in prange(rows, num_threads=team(num_threads, rows), schedule="static",
                         use_threads_if=num_threads > 1
                         and rows * run >= FASTNN_SERIAL_BELOW_ELEMENTWISE):
            p = it // (sh * sw * Hq)
            rem = it % (sh * sw * Hq)
            a = rem // (sw * Hq)
            b = (rem // Hq) % sw
            r = (rem % Hq) * sh + a - pt
            d = &xq[0] + it * run
            if r < 0 or r >= H:
                fill_zero(d, run)
                continue
            # The phase columns v that land inside x: pl <= v*sw + b < W + pl.
            v_lo = (pl - b + sw - 1) // sw if pl > b else 0
            v_hi = (W + pl - b + sw - 1) // sw if W + pl > b else 0
            if v_hi > Wq:
                v_hi = Wq
            if v_lo > v_hi:
                v_lo = v_hi
            src = &x[0] + (p * H + r) * W * C
            fill_zero(d, v_lo * C)
            for v in range(v_lo, v_hi):
                copy_run(d + v * C, src + (v * sw + b - pl) * C, C)
            fill_zero(d + v_hi * C, (Wq - v_hi) * C)


DEF FLIP_BLOCK = 32   # channels per side of one transposed block of the flipped kernel


def flip_kernel_transposed(const floating[::1] w, floating[::1] wt, Py_ssize_t G,
                           Py_ssize_t kg, Py_ssize_t cg, Py_ssize_t taps, bint nhwc,
                           int num_threads):
    """The kernel of the input gradient: w's taps reversed and its channel axes
    swapped within each group. NCHW: w (G*kg, cg, taps) -> wt (G*cg, kg, taps); NHWC:
    w (taps, cg, G*kg) -> wt (taps, kg, G*cg). In blocks of FLIP_BLOCK x FLIP_BLOCK
    channels, so that both sides are read and written a cache line at a time (a
    strided NumPy assignment took 0.35 ms NCHW and 0.54 ms NHWC for a 256x256x3x3
    kernel, a plain copy of it 0.05)."""
    cdef Py_ssize_t ncb = (cg + FLIP_BLOCK - 1) // FLIP_BLOCK
    cdef Py_ssize_t nkb = (kg + FLIP_BLOCK - 1) // FLIP_BLOCK
    cdef Py_ssize_t outer = taps if nhwc else G
    cdef Py_ssize_t nitems = outer * ncb * nkb, it, o, c0, c1, k0, k1, c, k, t
    cdef Py_ssize_t Ctot = G * cg, Ktot = G * kg, grp
    cdef const floating* src
    cdef floating* dst
    if nitems == 0 or taps == 0:
        return
    with nogil:
        for it in prange(nitems, num_threads=team(num_threads, nitems), schedule="static",
                         use_threads_if=num_threads > 1
                         and G * kg * cg * taps >= FASTNN_SERIAL_BELOW_ELEMENTWISE):
            o = it // (ncb * nkb)
            c0 = ((it // nkb) % ncb) * FLIP_BLOCK
            k0 = (it % nkb) * FLIP_BLOCK
            c1 = c0 + FLIP_BLOCK if c0 + FLIP_BLOCK < cg else cg
            k1 = k0 + FLIP_BLOCK if k0 + FLIP_BLOCK < kg else kg
            if not nhwc:
                # o is the group: wt[o*cg + c, k, t] = w[o*kg + k, c, taps-1-t]
                for c in range(c0, c1):
                    for k in range(k0, k1):
                        src = &w[0] + ((o * kg + k) * cg + c) * taps
                        dst = &wt[0] + ((o * cg + c) * kg + k) * taps
                        for t in range(taps):
                            dst[t] = src[taps - 1 - t]
            else:
                # o is the tap: wt[o, k, grp*cg + c] = w[taps-1-o, c, grp*kg + k]
                for grp in range(G):
                    for k in range(k0, k1):
                        src = &w[0] + (taps - 1 - o) * cg * Ktot + grp * kg + k
                        dst = &wt[0] + (o * kg + k) * Ctot + grp * cg
                        for c in range(c0, c1):
                            dst[c] = src[c * Ktot]


DEF MAX_KW = 64   # column bounds of up to this many kernel columns are precomputed


cdef void pack_nchw(const floating* xg, const Geom* g, Py_ssize_t p0, Py_ssize_t p1,
                    floating* cols, Py_ssize_t ld) noexcept nogil:
    # cols[r * ld + (q - p0)] = x[c, ih, iw] for rows r = (c, i, j) and pixels
    # q in [p0, p1); xg points at channel 0 of the group.
    cdef Py_ssize_t c, i, j, oh, qa, qb, ow_a, ow_b, ih, off, lo, hi, ow, a, b
    cdef Py_ssize_t Wo = g.Wo, sw = g.sw
    cdef Py_ssize_t los[MAX_KW]
    cdef Py_ssize_t his[MAX_KW]
    cdef const floating* src
    cdef floating* d
    # Integer divisions cost more than a short copy: hoist the column bounds.
    for j in range(g.kw if g.kw < MAX_KW else MAX_KW):
        valid_range(j * g.dw - g.pl, sw, g.W, &los[j], &his[j])
    for c in range(g.Cg):
        for i in range(g.kh):
            for oh in range(p0 // Wo, (p1 - 1) // Wo + 1):
                qa = p0 if p0 > oh * Wo else oh * Wo
                qb = p1 if p1 < (oh + 1) * Wo else (oh + 1) * Wo
                ow_a = qa - oh * Wo
                ow_b = qb - oh * Wo
                ih = oh * g.sh - g.pt + i * g.dh
                for j in range(g.kw):
                    # d[ow - ow_a] receives output column ow of this row.
                    d = cols + ((c * g.kh + i) * g.kw + j) * ld + (qa - p0)
                    if ih < 0 or ih >= g.H:
                        fill_zero(d, ow_b - ow_a)
                        continue
                    off = j * g.dw - g.pl
                    if j < MAX_KW:
                        lo = los[j]
                        hi = his[j]
                    else:
                        valid_range(off, sw, g.W, &lo, &hi)
                    # [a, b) = the copied part of [ow_a, ow_b); both clamped into it.
                    a = lo if lo > ow_a else ow_a
                    if a > ow_b:
                        a = ow_b
                    b = hi if hi < ow_b else ow_b
                    if b < a:
                        b = a
                    fill_zero(d, a - ow_a)
                    if b > a:
                        # Pointers only to elements read: x's row start plus off
                        # can lie far outside x (a padding of 10**12 columns).
                        src = xg + ((c * g.H + ih) * g.W + off + a * sw)
                        if sw == 1:
                            copy_run(d + (a - ow_a), src, b - a)
                        else:
                            for ow in range(b - a):
                                d[a - ow_a + ow] = src[ow * sw]
                    fill_zero(d + (b - ow_a), ow_b - b)


cdef void scatter_nchw(floating* gxg, const Geom* g, Py_ssize_t p0, Py_ssize_t p1,
                       const floating* cols, Py_ssize_t ld, Py_ssize_t h0,
                       Py_ssize_t h1) noexcept nogil:
    # Adjoint of pack_nchw restricted to input rows [h0, h1): gx += cols.
    cdef Py_ssize_t c, i, j, oh, qa, qb, ow_a, ow_b, ih, off, lo, hi, ow, a, b
    cdef Py_ssize_t Wo = g.Wo, sw = g.sw
    cdef floating* dst
    cdef const floating* s
    for c in range(g.Cg):
        for i in range(g.kh):
            for j in range(g.kw):
                off = j * g.dw - g.pl
                valid_range(off, sw, g.W, &lo, &hi)
                for oh in range(p0 // Wo, (p1 - 1) // Wo + 1):
                    ih = oh * g.sh - g.pt + i * g.dh
                    if ih < h0 or ih >= h1:
                        continue
                    qa = p0 if p0 > oh * Wo else oh * Wo
                    qb = p1 if p1 < (oh + 1) * Wo else (oh + 1) * Wo
                    ow_a = qa - oh * Wo
                    ow_b = qb - oh * Wo
                    a = lo if lo > ow_a else ow_a
                    b = hi if hi < ow_b else ow_b
                    if b <= a:
                        continue
                    s = cols + ((c * g.kh + i) * g.kw + j) * ld + (qa - p0) + (a - ow_a)
                    dst = gxg + ((c * g.H + ih) * g.W + off + a * sw)
                    if sw == 1:
                        for ow in range(b - a):
                            dst[ow] += s[ow]
                    else:
                        for ow in range(b - a):
                            dst[ow * sw] += s[ow]


cdef void pack_nhwc(const floating* xn, Py_ssize_t c0, const Geom* g, Py_ssize_t p0,
                    Py_ssize_t p1, floating* cols, Py_ssize_t ld) noexcept nogil:
    # Row (q - p0) of cols = the patch of pixel q, ordered (i, j, c) over the
    # group's channels [c0, c0 + Cg); xn points at image n.
    cdef Py_ssize_t q, oh, ow, i, j, ih, off, lo, hi, Cg = g.Cg, rowlen = g.kw * g.Cg
    cdef floating* d
    cdef floating* di
    cdef const floating* src
    # With one group and no dilation a patch row (i, j=lo..hi) is contiguous in x.
    cdef bint rows_contiguous = g.G == 1 and g.dw == 1
    for q in range(p0, p1):
        oh = q // g.Wo
        ow = q - oh * g.Wo
        d = cols + (q - p0) * ld
        off = ow * g.sw - g.pl
        valid_range(off, g.dw, g.W, &lo, &hi)
        if hi > g.kw:
            hi = g.kw
        if lo > hi:
            lo = hi
        for i in range(g.kh):
            di = d + i * rowlen
            ih = oh * g.sh - g.pt + i * g.dh
            if ih < 0 or ih >= g.H:
                fill_zero(di, rowlen)
                continue
            fill_zero(di, lo * Cg)
            if hi > lo:
                # (a pointer to the first tap read: off alone may lie far outside x)
                src = xn + ((ih * g.W + off + lo * g.dw) * g.C + c0)
                if rows_contiguous:
                    copy_run(di + lo * Cg, src, (hi - lo) * Cg)
                else:
                    for j in range(lo, hi):
                        copy_run(di + j * Cg, src + (j - lo) * g.dw * g.C, Cg)
            fill_zero(di + hi * Cg, (g.kw - hi) * Cg)


cdef void scatter_nhwc(floating* gxn, Py_ssize_t c0, const Geom* g, Py_ssize_t p0,
                       Py_ssize_t p1, const floating* cols, Py_ssize_t ld,
                       Py_ssize_t h0, Py_ssize_t h1) noexcept nogil:
    # Adjoint of pack_nhwc restricted to input rows [h0, h1).
    cdef Py_ssize_t q, oh, ow, i, j, c, ih, off, lo, hi, Cg = g.Cg
    cdef const floating* s
    cdef floating* dst
    for q in range(p0, p1):
        oh = q // g.Wo
        ow = q - oh * g.Wo
        off = ow * g.sw - g.pl
        valid_range(off, g.dw, g.W, &lo, &hi)
        if hi > g.kw:
            hi = g.kw
        for i in range(g.kh):
            ih = oh * g.sh - g.pt + i * g.dh
            if ih < h0 or ih >= h1:
                continue
            for j in range(lo, hi):
                s = cols + (q - p0) * ld + (i * g.kw + j) * Cg
                dst = gxn + (ih * g.W + off + j * g.dw) * g.C + c0
                for c in range(Cg):
                    dst[c] += s[c]


# ------------------------------------------------------------ work-item bodies
cdef void forward_item(const floating* x, const floating* w, const floating* bias,
                       floating* y, const Geom* g, Py_ssize_t n, Py_ssize_t grp,
                       Py_ssize_t p0, Py_ssize_t p1, floating* cols, Py_ssize_t* aoff,
                       Py_ssize_t* boff, floating* scratch) noexcept nogil:
    # One output tile: im2col into cols, then the register-blocked kernel straight
    # from the tile (BLAS would copy the tile once more into its own panels).
    cdef Py_ssize_t tp = p1 - p0, r, ldb
    cdef const floating* b
    cdef const floating* bg = bias + grp * g.Kg if bias != NULL else NULL
    if not g.nhwc:
        if g.direct:
            b = x + (n * g.C + grp * g.Cg) * g.P + p0
            ldb = g.P
        else:
            pack_nchw(x + (n * g.C + grp * g.Cg) * g.H * g.W, g, p0, p1, cols, tp)
            b = cols
            ldb = tp
        for r in range(g.ckk):
            aoff[r] = r
            boff[r] = r * ldb
        # y_tile (Kg x tp) = w_g (Kg x ckk) @ cols (ckk x tp) + bias per row
        ugemm(g.Kg, tp, g.ckk, w + grp * g.Kg * g.ckk, g.ckk, <Py_ssize_t*>NULL, aoff, b, boff,
              y + (n * g.K + grp * g.Kg) * g.P + p0, g.P, False, bg, <floating*>NULL, scratch)
    else:
        if g.direct:
            b = x + (n * g.P + p0) * g.C + grp * g.Cg
            ldb = g.C
        else:
            pack_nhwc(x + n * g.H * g.W * g.C, grp * g.Cg, g, p0, p1, cols, g.ckk)
            b = cols
            ldb = g.ckk
        if g.Kg < SMALL_K:
            # Too few output channels for the column-panel kernel: the packed product.
            pgemm(False, False, tp, g.Kg, g.ckk, <floating>1, b, ldb, w + grp * g.Kg, g.K,
                 <floating>0, y + (n * g.P + p0) * g.K + grp * g.Kg, g.K)
            if bg != NULL:
                for r in range(tp):
                    for ldb in range(g.Kg):
                        y[(n * g.P + p0 + r) * g.K + grp * g.Kg + ldb] += bg[ldb]
            return
        for r in range(g.ckk):
            aoff[r] = r
            boff[r] = r * g.K
        # y_tile (tp x Kg) = cols (tp x ckk) @ w_g (ckk x Kg) + bias per column
        ugemm(tp, g.Kg, g.ckk, b, ldb, <Py_ssize_t*>NULL, aoff, w + grp * g.Kg, boff,
              y + (n * g.P + p0) * g.K + grp * g.Kg, g.K, False, <floating*>NULL, bg, scratch)


cdef void implicit_tables(const Geom* g, Py_ssize_t Hq, Py_ssize_t Wq, Py_ssize_t* aoff,
                          Py_ssize_t* boff) noexcept nogil:
    # Offsets of kernel tap r = (c, i, j) (NCHW) or (i, j, c) (NHWC) in the
    # phase-split padded image: tap row i*dh lands in phase (i*dh) % sh, shifted by
    # (i*dh) // sh rows there (columns alike), so every tap reads a contiguous run.
    cdef Py_ssize_t c, i, j, r, ph, shift, plane = Hq * Wq
    for c in range(g.Cg):
        for i in range(g.kh):
            for j in range(g.kw):
                ph = ((i * g.dh) % g.sh) * g.sw + (j * g.dw) % g.sw
                shift = ((i * g.dh) // g.sh) * Wq + (j * g.dw) // g.sw
                if not g.nhwc:
                    r = (c * g.kh + i) * g.kw + j
                    aoff[r] = r
                    boff[r] = (c * g.sh * g.sw + ph) * plane + shift
                else:
                    r = (i * g.kw + j) * g.Cg + c
                    aoff[r] = (ph * plane + shift) * g.C + c
                    boff[r] = r * g.K


cdef struct OutView:
    # Element strides of the output: y[n, k, oh, ow] is y[n*sn + k*sk + oh*sh + ow*sw]
    # (the output of one stride phase of a transposed convolution is a strided view).
    Py_ssize_t sn, sk, sh, sw


cdef void implicit_item(const floating* xq, const floating* w, const floating* bias,
                        floating* y, const OutView* v, const Geom* g, Py_ssize_t Hq,
                        Py_ssize_t Wq, Py_ssize_t n, Py_ssize_t grp, Py_ssize_t oh0,
                        Py_ssize_t oh1, Py_ssize_t k0, Py_ssize_t k1, const Py_ssize_t* aoff,
                        const Py_ssize_t* boff, floating* tmp, floating* scratch,
                        bint out_nhwc, Py_ssize_t* amoff) noexcept nogil:
    # Output rows [oh0, oh1), channels [k0, k1) of the group, read straight from the
    # phase-split padded image: no im2col copy.
    cdef Py_ssize_t tq, k, oh, ow, plane = Hq * Wq
    cdef const floating* bg = bias + grp * g.Kg + k0 if bias != NULL else NULL
    cdef const floating* src
    cdef floating* dst
    if not g.nhwc and not out_nhwc and v.sw == 1 and g.Wo % 32 == 0:
        # Output rows a whole number of column panels wide (32 floats, 16 doubles at
        # most): one product per row straight into y, without the phase width's extra
        # columns and the copy out of a tile (N64 C16 32x32 K32 3x3 forward NCHW
        # 1.13x; A/B on Zen 5).
        for oh in range(oh0, oh1):
            ugemm(k1 - k0, g.Wo, g.ckk, w + (grp * g.Kg + k0) * g.ckk, g.ckk, <Py_ssize_t*>NULL,
                  aoff, xq + (n * g.C + grp * g.Cg) * g.sh * g.sw * plane + oh * Wq, boff,
                  y + n * v.sn + (grp * g.Kg + k0) * v.sk + oh * v.sh, v.sk, False, bg,
                  <floating*>NULL, scratch)
        return
    if not g.nhwc:
        # Columns run over the phase width: column q = (oh - oh0) * Wq + ow. The
        # Wq - Wo columns past each row's end are computed and dropped; stopping at
        # the last row's Wo keeps every read inside the group's channels.
        tq = (oh1 - oh0 - 1) * Wq + g.Wo
        ugemm(k1 - k0, tq, g.ckk, w + (grp * g.Kg + k0) * g.ckk, g.ckk, <Py_ssize_t*>NULL, aoff,
              xq + (n * g.C + grp * g.Cg) * g.sh * g.sw * plane + oh0 * Wq, boff, tmp, tq,
              False, bg, <floating*>NULL, scratch)
        if out_nhwc:
            # NHWC output from the channel-major tile (few output channels), a row at
            # a time through the blocked transpose of _transpose.h.
            # (NHWC channels are contiguous: v.sk == 1, checked at the entry point)
            for oh in range(oh0, oh1):
                transpose_tile(tmp + (oh - oh0) * Wq, tq,
                               y + n * v.sn + oh * v.sh + grp * g.Kg + k0, v.sw, k1 - k0, g.Wo)
            return
        for k in range(k1 - k0):
            for oh in range(oh0, oh1):
                src = tmp + k * tq + (oh - oh0) * Wq
                dst = y + n * v.sn + (grp * g.Kg + k0 + k) * v.sk + oh * v.sh
                if v.sw == 1:
                    copy_run(dst, src, g.Wo)
                else:
                    for ow in range(g.Wo):
                        dst[ow * v.sw] = src[ow]
    else:
        # Channels are contiguous in an NHWC output (v.sk == 1), pixels v.sw apart.
        # Where the output rows follow each other (not a stride phase's view), all
        # rows are one product over a row table of pixels: each weight panel then
        # serves every pixel of the item while it is in cache.
        if v.sh == g.Wo * v.sw:
            tq = 0
            for oh in range(oh0, oh1):
                for ow in range(g.Wo):
                    amoff[tq] = (oh * Wq + ow) * g.C
                    tq = tq + 1
            ugemm(tq, k1 - k0, g.ckk, xq + n * g.sh * g.sw * plane * g.C + grp * g.Cg, g.C,
                  amoff, aoff, w + grp * g.Kg + k0, boff,
                  y + n * v.sn + oh0 * v.sh + grp * g.Kg + k0, v.sw, False,
                  <floating*>NULL, bg, scratch)
            return
        for oh in range(oh0, oh1):
            ugemm(g.Wo, k1 - k0, g.ckk, xq + (n * g.sh * g.sw * plane + oh * Wq) * g.C + grp * g.Cg,
                  g.C, <Py_ssize_t*>NULL, aoff, w + grp * g.Kg + k0, boff,
                  y + n * v.sn + oh * v.sh + grp * g.Kg + k0, v.sw, False,
                  <floating*>NULL, bg, scratch)


cdef void weight_grad_item(const floating* x, const floating* gy, floating* gw,
                           const Geom* g, Py_ssize_t grp, Py_ssize_t t0, Py_ssize_t t1,
                           Py_ssize_t ntiles, Py_ssize_t T, floating* cols,
                           bint transposed) noexcept nogil:
    # gw (this chunk's buffer, full weight shape) gets the group's block summed over
    # tile items [t0, t1) in order; the first product overwrites. transposed: the
    # buffer holds each group's block transposed, NCHW gw_g^T (ckk x Kg), NHWC
    # gw_g^T (Kg x ckk).
    cdef Py_ssize_t ti, n, p0, p1, tp
    cdef const floating* a
    cdef Py_ssize_t lda
    cdef floating beta = 0
    for ti in range(t0, t1):
        n = ti // ntiles
        p0 = (ti - n * ntiles) * T
        p1 = p0 + T if p0 + T < g.P else g.P
        tp = p1 - p0
        if not g.nhwc:
            if g.direct:
                a = x + (n * g.C + grp * g.Cg) * g.P + p0
                lda = g.P
            else:
                pack_nchw(x + (n * g.C + grp * g.Cg) * g.H * g.W, g, p0, p1, cols, tp)
                a = cols
                lda = tp
            if transposed:
                # gw_g^T (ckk x Kg) += cols (ckk x tp) @ gy_tile^T (tp x Kg)
                pgemm(False, True, g.ckk, g.Kg, tp, <floating>1, a, lda,
                      gy + (n * g.K + grp * g.Kg) * g.P + p0, g.P, beta,
                      gw + grp * g.Kg * g.ckk, g.Kg)
            else:
                # gw_g (Kg x ckk) += gy_tile (Kg x tp) @ cols^T (tp x ckk)
                pgemm(False, True, g.Kg, g.ckk, tp, <floating>1,
                      gy + (n * g.K + grp * g.Kg) * g.P + p0, g.P, a, lda, beta,
                      gw + grp * g.Kg * g.ckk, g.ckk)
        else:
            if g.direct:
                a = x + (n * g.P + p0) * g.C + grp * g.Cg
                lda = g.C
            else:
                pack_nhwc(x + n * g.H * g.W * g.C, grp * g.Cg, g, p0, p1, cols, g.ckk)
                a = cols
                lda = g.ckk
            if transposed:
                # gw_g^T (Kg x ckk) += gy_tile^T (Kg x tp) @ cols (tp x ckk)
                pgemm(True, False, g.Kg, g.ckk, tp, <floating>1,
                      gy + (n * g.P + p0) * g.K + grp * g.Kg, g.K, a, lda, beta,
                      gw + grp * g.Kg * g.ckk, g.ckk)
            else:
                # gw_g (ckk x Kg, ld K) += cols^T (ckk x tp) @ gy_tile (tp x Kg)
                pgemm(True, False, g.ckk, g.Kg, tp, <floating>1, a, lda,
                     gy + (n * g.P + p0) * g.K + grp * g.Kg, g.K, beta,
                     gw + grp * g.Kg, g.K)
        beta = 1


cdef void zero_rows(floating* gx, const Geom* g, Py_ssize_t n, Py_ssize_t grp,
                    Py_ssize_t h0, Py_ssize_t h1) noexcept nogil:
    cdef Py_ssize_t c, h, w
    cdef floating* p
    if not g.nhwc:
        for c in range(grp * g.Cg, (grp + 1) * g.Cg):
            memset(gx + ((n * g.C + c) * g.H + h0) * g.W, 0,
                   (h1 - h0) * g.W * sizeof(floating))
    elif g.G == 1:
        memset(gx + (n * g.H + h0) * g.W * g.C, 0, (h1 - h0) * g.W * g.C * sizeof(floating))
    else:
        for h in range(h0, h1):
            for w in range(g.W):
                p = gx + ((n * g.H + h) * g.W + w) * g.C + grp * g.Cg
                memset(p, 0, g.Cg * sizeof(floating))


cdef void input_grad_item(const floating* gy, const floating* w, floating* gx,
                          const Geom* g, Py_ssize_t n, Py_ssize_t grp, Py_ssize_t h0,
                          Py_ssize_t h1, Py_ssize_t T, floating* gcols) noexcept nogil:
    # gx rows [h0, h1) of (image n, group grp): recompute the im2col-gradient for
    # every output row that reaches them, tile by tile, and gather-add.
    cdef Py_ssize_t oh_lo, oh_hi, p0, p1, q0, q1, tp
    if g.direct:
        # 1x1 stride 1: gx rows are exactly the output pixels [h0*W, h1*W).
        q0 = h0 * g.W
        q1 = h1 * g.W
        if not g.nhwc:
            pgemm(True, False, g.Cg, q1 - q0, g.Kg, <floating>1, w + grp * g.Kg * g.ckk,
                 g.ckk, gy + (n * g.K + grp * g.Kg) * g.P + q0, g.P, <floating>0,
                 gx + (n * g.C + grp * g.Cg) * g.P + q0, g.P)
        else:
            pgemm(False, False, q1 - q0, g.Cg, g.Kg, <floating>1,
                 gy + (n * g.P + q0) * g.K + grp * g.Kg, g.K, w + grp * g.Kg * g.Cg, g.Cg,
                 <floating>0, gx + (n * g.P + q0) * g.C + grp * g.Cg, g.C)
        return
    zero_rows(gx, g, n, grp, h0, h1)
    oh_lo = floor_div(h0 + g.pt - (g.kh - 1) * g.dh + g.sh - 1, g.sh)
    if oh_lo < 0:
        oh_lo = 0
    oh_hi = floor_div(h1 - 1 + g.pt, g.sh)
    if oh_hi > g.Ho - 1:
        oh_hi = g.Ho - 1
    if oh_lo > oh_hi:
        return
    q0 = oh_lo * g.Wo
    q1 = (oh_hi + 1) * g.Wo
    p0 = q0
    while p0 < q1:
        p1 = p0 + T if p0 + T < q1 else q1
        tp = p1 - p0
        if not g.nhwc:
            # gcols (ckk x tp) = w_g^T (ckk x Kg) @ gy_tile (Kg x tp)
            pgemm(True, False, g.ckk, tp, g.Kg, <floating>1, w + grp * g.Kg * g.ckk, g.ckk,
                 gy + (n * g.K + grp * g.Kg) * g.P + p0, g.P, <floating>0, gcols, tp)
            scatter_nchw(gx + (n * g.C + grp * g.Cg) * g.H * g.W, g, p0, p1, gcols, tp,
                         h0, h1)
        else:
            # gcols (tp x ckk) = gy_tile (tp x Kg) @ w_g^T (Kg x ckk); w is given
            # transposed, (K, ckk), so the product reads its rows in place
            pgemm(False, False, tp, g.ckk, g.Kg, <floating>1,
                 gy + (n * g.P + p0) * g.K + grp * g.Kg, g.K, w + grp * g.Kg * g.ckk, g.ckk,
                 <floating>0, gcols, g.ckk)
            scatter_nhwc(gx + n * g.H * g.W * g.C, grp * g.Cg, g, p0, p1, gcols, g.ckk,
                         h0, h1)
        p0 = p1


cdef double sum_run(const floating* p, Py_ssize_t n) noexcept nogil:
    # Eight independent float64 lanes (vectorisable, no serial add chain), combined
    # in a fixed order: the same bits on every call.
    cdef double lanes[8]
    cdef Py_ssize_t q, j, n8 = n - n % 8
    cdef double total = 0
    for j in range(8):
        lanes[j] = 0
    for q in range(0, n8, 8):
        for j in range(8):
            lanes[j] += p[q + j]
    for q in range(n8, n):
        total += p[q]
    for j in range(8):
        total += lanes[j]
    return total


cdef void bias_grad_block(const floating* gy, double* out, Py_ssize_t rows, Py_ssize_t K,
                          Py_ssize_t k0) noexcept nogil:
    # Channels [k0, k0 + 16) of an (rows, K) gradient summed in float64 into out[0:16]:
    # rows taken four at a time into four sets of sums (four independent add chains,
    # not one per channel: 0.43 -> 0.1 ms for 2^20 values in 8 channels), combined
    # in a fixed order.
    cdef double accs[4][16]
    cdef Py_ssize_t q, k, j, nk = K - k0 if K - k0 < 16 else 16, r4 = rows - rows % 4
    for j in range(4):
        for k in range(16):
            accs[j][k] = 0
    for q in range(0, r4, 4):
        for j in range(4):
            for k in range(nk):
                accs[j][k] = accs[j][k] + gy[(q + j) * K + k0 + k]
    for q in range(r4, rows):
        for k in range(nk):
            accs[0][k] = accs[0][k] + gy[q * K + k0 + k]
    for k in range(nk):
        out[k] = (accs[0][k] + accs[1][k]) + (accs[2][k] + accs[3][k])


# -------------------------------------------------------------- entry points
def conv2d_forward(const floating[::1] x, const floating[::1] w, const floating[::1] bias,
                   floating[::1] y, tuple geom, bint nhwc, int num_threads,
                   const floating[::1] xq=None, Py_ssize_t Hq=0, Py_ssize_t Wq=0,
                   bint out_nhwc=False, Py_ssize_t x_off=0, tuple y_view=None):
    """y = conv(x, w) + bias on flat C-contiguous buffers (geometry in ``geom``).

    With ``xq`` -- x zero-padded and split by stride phase, NCHW (N, C, sh, sw, Hq, Wq)
    or NHWC (N, sh, sw, Hq, Wq, C) -- the kernel reads shifted rows of it directly
    (implicit im2col); without it, im2col tiles are packed. ``out_nhwc`` (with an
    NCHW ``xq`` and OIHW ``w``) stores y as NHWC: for NHWC convolutions with too few
    output channels to vectorise along them.

    ``x_off`` and ``y_view`` (implicit path only): the window of ``xq`` starts
    ``x_off`` elements in (its images still ``Hq x Wq`` planes apart), and y is written
    at the element strides ``(sn, sk, sh, sw)`` of ``y_view`` from the start of ``y``
    -- one stride phase of a transposed convolution, whose outputs are interleaved.
    The caller guarantees that every read and write stays inside the buffers.
    """
    cdef Geom g = make_geom(geom, nhwc)
    cdef bint implicit = xq is not None
    cdef OutView view
    cdef Py_ssize_t T = tile_pixels(&g, g.N * g.G, sizeof(floating))
    cdef Py_ssize_t ntiles, nkb = 1, kbs, nitems, it, n, grp, t, p0, p1, k0, k1
    cdef Py_ssize_t units = g.N * g.G, tmp_size = 0, scratch_size, amoff_n = 0
    cdef const floating* bp = &bias[0] if bias is not None else NULL
    cdef const floating* xqp = &xq[0] if implicit else NULL
    cdef floating* tmp = NULL
    cdef Py_ssize_t* tables = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    if units == 0 or g.K == 0 or g.P == 0:
        return
    if y_view is not None:
        if not implicit or x_off < 0:
            raise ValueError("y_view and x_off need the implicit path (xq)")
        view.sn, view.sk, view.sh, view.sw = y_view
        if (g.nhwc or out_nhwc) and view.sk != 1:
            raise ValueError("an NHWC y_view needs contiguous channels")
    elif nhwc or out_nhwc:
        view.sn, view.sk, view.sh, view.sw = g.P * g.K, 1, g.Wo * g.K, g.K
    else:
        view.sn, view.sk, view.sh, view.sw = g.K * g.P, g.P, g.Wo, 1
    if implicit:
        xqp += x_off
        T = tile_rows(&g, units, Wq, sizeof(floating), &nkb)
        if g.nhwc:
            amoff_n = T * g.Wo     # the row table of one item's pixels
        ntiles = (g.Ho + T - 1) // T
        if not g.nhwc:
            tmp_size = g.Kg * T * Wq
    else:
        ntiles = (g.P + T - 1) // T
        if not g.direct:
            tmp_size = g.ckk * T
    kbs = (g.Kg + nkb - 1) // nkb
    # Whole 8-row kernel blocks (NCHW) or whole 32-column panels (NHWC) per block.
    kbs = (kbs + 31) // 32 * 32 if implicit and g.nhwc else (kbs + 7) // 8 * 8
    nkb = (g.Kg + kbs - 1) // kbs
    tmp_size = (tmp_size + 15) // 16 * 16   # keep the kernel scratch (offset table) aligned
    scratch_size = tmp_size + FASTNN_UGEMM_SCRATCH(g.ckk)
    nitems = units * ntiles * nkb
    with nogil, parallel(num_threads=team(num_threads, nitems), use_threads_if=num_threads > 1 and nitems > 1):
        tmp = <floating*>malloc(scratch_size * sizeof(floating))
        tables = <Py_ssize_t*>malloc((2 * g.ckk + 1 + amoff_n) * sizeof(Py_ssize_t))
        if implicit and tables != NULL:
            implicit_tables(&g, Hq, Wq, tables, tables + g.ckk)
        for it in prange(nitems, schedule="dynamic"):
            if tmp == NULL or tables == NULL:
                failed_p[0] = 1
                continue
            # item = ((n, grp), tile, k-block), k-block fastest
            n = it // (g.G * ntiles * nkb)
            grp = (it // (ntiles * nkb)) % g.G
            t = (it // nkb) % ntiles
            k0 = (it % nkb) * kbs
            k1 = k0 + kbs if k0 + kbs < g.Kg else g.Kg
            p0 = t * T
            if implicit:
                p1 = p0 + T if p0 + T < g.Ho else g.Ho
                implicit_item(xqp, &w[0], bp, &y[0], &view, &g, Hq, Wq, n, grp, p0, p1, k0, k1,
                              tables, tables + g.ckk, tmp, tmp + tmp_size, out_nhwc,
                              tables + 2 * g.ckk + 1)
            else:
                p1 = p0 + T if p0 + T < g.P else g.P
                forward_item(&x[0], &w[0], bp, &y[0], &g, n, grp, p0, p1, tmp, tables,
                             tables + g.ckk, tmp + tmp_size)
        free(tmp)
        free(tables)
    if failed:
        raise MemoryError(f"could not allocate {scratch_size * sizeof(floating)} bytes of "
                          f"per-thread scratch for the convolution kernel")


def conv2d_weight_grad(const floating[::1] x, const floating[::1] gy, floating[::1] gw,
                       tuple geom, bint nhwc, int num_threads):
    """gw = sum over images and pixels of gy (x) patches; fixed-order chunk reduction."""
    cdef Geom g = make_geom(geom, nhwc)
    cdef Py_ssize_t T = tile_pixels(&g, g.N * g.G, sizeof(floating))
    cdef Py_ssize_t ntiles = (g.P + T - 1) // T
    cdef Py_ssize_t ntile_items = g.N * ntiles
    cdef Py_ssize_t wsize = g.K * g.ckk
    cdef Py_ssize_t nchunks, per, nitems, it, ci, grp, t0, t1, e, e0, e1, nblk, src, r
    cdef floating* partial
    cdef floating* cols = NULL
    cdef floating acc
    cdef int failed = 0
    cdef int* failed_p = &failed
    # NCHW with few output channels per group: the product's transposed operand is
    # packed a block at a time inside pgemm, and gy_tile^T (tp x Kg) is Kg / ckk the
    # size of cols^T (tp x ckk). So the chunk buffers hold gw^T and the reduction
    # transposes (N32 C3 64x64 K8 k4: the weight gradient 3.2x faster than with cols^T
    # packed, measured alone).
    # NHWC alike with fewer output channels per group than one vector: the product is
    # then vectorised along ckk instead of along a part-filled Kg vector (weight
    # gradient alone, float32, ms: N16 C8 32x32 K4 k3 0.33 -> 0.28, N8 C16 32x32 K8
    # 0.32 -> 0.23, N8 C32 28x28 K12 groups 2 0.47 -> 0.38, N4 C3 96x96 K8 k5 1.06 ->
    # 0.76; N32 C3 64x64 K8 k4 2.33 -> 2.42, within the noise).
    cdef bint transposed = ((not g.nhwc and 4 * g.Kg <= g.ckk)
                            or (g.nhwc and g.Kg * <Py_ssize_t>sizeof(floating) < 64
                                and 4 * g.Kg <= g.ckk))
    if wsize == 0:
        return
    if ntile_items == 0:
        memset(&gw[0], 0, wsize * sizeof(floating))
        return
    per = chunk_size(ntile_items, wsize * sizeof(floating))
    nchunks = (ntile_items + per - 1) // per
    if nchunks == 1 and not transposed:
        partial = &gw[0]
    else:
        partial = <floating*>malloc(nchunks * wsize * sizeof(floating))
        if partial == NULL:
            raise MemoryError(f"could not allocate {nchunks * wsize * sizeof(floating)} bytes "
                              f"of weight-gradient partials")
    nitems = nchunks * g.G
    with nogil:
        with parallel(num_threads=team(num_threads, nitems), use_threads_if=num_threads > 1 and nitems > 1):
            cols = NULL
            if not g.direct:
                cols = <floating*>malloc((g.ckk * T + 1) * sizeof(floating))
            for it in prange(nitems, schedule="dynamic"):
                if cols == NULL and not g.direct:
                    failed_p[0] = 1
                    continue
                ci = it // g.G
                grp = it % g.G
                t0 = ci * per
                t1 = t0 + per if t0 + per < ntile_items else ntile_items
                weight_grad_item(&x[0], &gy[0], partial + ci * wsize, &g, grp, t0, t1,
                                 ntiles, T, cols, transposed)
            free(cols)
        if (nchunks > 1 or transposed) and not failed:
            nblk = (wsize + 4095) // 4096
            for it in prange(nblk, num_threads=team(num_threads, nblk),
                             use_threads_if=num_threads > 1 and nblk > 1):
                e0 = it * 4096
                e1 = e0 + 4096 if e0 + 4096 < wsize else wsize
                for e in range(e0, e1):
                    src = e
                    if transposed and not g.nhwc:
                        # e = (grp * Kg + kk) * ckk + c  <-  grp * Kg * ckk + c * Kg + kk
                        grp = e // (g.Kg * g.ckk)
                        r = e - grp * g.Kg * g.ckk
                        src = grp * g.Kg * g.ckk + (r % g.ckk) * g.Kg + r // g.ckk
                    elif transposed:
                        # e = c * K + grp * Kg + kk  <-  grp * Kg * ckk + kk * ckk + c
                        r = e % g.K
                        grp = r // g.Kg
                        src = grp * g.Kg * g.ckk + (r - grp * g.Kg) * g.ckk + e // g.K
                    acc = partial[src]
                    for ci in range(1, nchunks):
                        acc = acc + partial[ci * wsize + src]
                    gw[e] = acc
    if nchunks > 1 or transposed:
        free(partial)
    if failed:
        raise MemoryError(f"could not allocate {(g.ckk * T + 1) * sizeof(floating)} bytes of "
                          f"per-thread im2col scratch for the weight gradient")


cdef void weight_grad_implicit_item(const floating* xq, const floating* gy, floating* part,
                                    const Geom* g, Py_ssize_t Hq, Py_ssize_t Wq,
                                    Py_ssize_t grp, Py_ssize_t m0, Py_ssize_t m1,
                                    Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t ntiles,
                                    Py_ssize_t rows, const Py_ssize_t* taps, Py_ssize_t* aoff,
                                    Py_ssize_t* boff, floating* gyt,
                                    floating* scratch) noexcept nogil:
    # part[grp] (ckk x Kg, tap-major) rows [m0, m1) += sum over tile items [t0, t1) of
    # patches (taps x pixels, read in place from the phase-split image) @ gy tile
    # (pixels x Kg). Only real output pixels enter the sum (the offset tables skip
    # the phase rows' padding columns), so an Inf there cannot leak into gw.
    cdef Py_ssize_t ti, n, oh0, oh1, nv, kk, k, plane = Hq * Wq
    cdef const floating* a
    cdef const floating* b
    cdef const floating* src
    cdef bint first = True
    for ti in range(t0, t1):
        n = ti // ntiles
        oh0 = (ti - n * ntiles) * rows
        oh1 = oh0 + rows if oh0 + rows < g.Ho else g.Ho
        nv = (oh1 - oh0) * g.Wo
        for kk in range(nv):
            aoff[kk] = ((kk // g.Wo) * Wq + kk % g.Wo) * (g.C if g.nhwc else 1)
        if not g.nhwc:
            a = xq + (n * g.C + grp * g.Cg) * g.sh * g.sw * plane + oh0 * Wq
            # gy tile transposed to pixels x Kg (cheap next to the product).
            for k in range(g.Kg):
                src = gy + ((n * g.K + grp * g.Kg + k) * g.Ho + oh0) * g.Wo
                for kk in range(nv):
                    gyt[kk * g.Kg + k] = src[kk]
            for kk in range(nv):
                boff[kk] = kk * g.Kg
            b = gyt
        else:
            a = xq + (n * g.sh * g.sw * plane + oh0 * Wq) * g.C + grp * g.Cg
            for kk in range(nv):
                boff[kk] = kk * g.K
            b = gy + (n * g.P + oh0 * g.Wo) * g.K + grp * g.Kg
        ugemm(m1 - m0, g.Kg, nv, a, 0, taps + m0, aoff, b, boff,
              part + (grp * g.ckk + m0) * g.Kg, g.Kg, not first, <floating*>NULL,
              <floating*>NULL, scratch)
        first = False


def conv2d_weight_grad_cols(const floating[::1] cols, const floating[::1] gy,
                            floating[::1] gw, Py_ssize_t N, Py_ssize_t P, Py_ssize_t ckk,
                            Py_ssize_t K, bint nhwc, int num_threads):
    """gw from the whole patches of a few images (one group): NCHW gw (K x ckk) =
    sum_n gy[n] (K x P) @ cols[n]^T, NHWC gw (ckk x K) = sum_n cols[n]^T @ gy[n], with
    cols as :func:`im2col` writes it. Work items are blocks of gw (columns in NCHW,
    rows in NHWC) that sum every image and pixel in the same order, so the bits do not
    depend on the thread count."""
    cdef Py_ssize_t nb = 128 if not nhwc else 64
    cdef Py_ssize_t nitems = (ckk + nb - 1) // nb
    cdef Py_ssize_t it, n, c0, c1
    if ckk == 0 or K == 0:
        return
    if N == 0 or P == 0:
        memset(&gw[0], 0, K * ckk * sizeof(floating))
        return
    with nogil:
        for it in prange(nitems, num_threads=team(num_threads, nitems), schedule="static",
                         use_threads_if=num_threads > 1 and nitems > 1):
            c0 = it * nb
            c1 = c0 + nb if c0 + nb < ckk else ckk
            for n in range(N):
                if not nhwc:
                    pgemm(False, True, K, c1 - c0, P, <floating>1, &gy[0] + n * K * P, P,
                          &cols[0] + (n * ckk + c0) * P, P, <floating>(n > 0), &gw[0] + c0,
                          ckk)
                else:
                    pgemm(True, False, c1 - c0, K, P, <floating>1, &cols[0] + n * P * ckk + c0,
                          ckk, &gy[0] + n * P * K, K, <floating>(n > 0), &gw[0] + c0 * K, K)


def conv2d_weight_grad_implicit(const floating[::1] xq, const floating[::1] gy,
                                floating[::1] gw, tuple geom, bint nhwc, int num_threads,
                                Py_ssize_t Hq, Py_ssize_t Wq):
    """gw from the phase-split padded x (see conv2d_forward) with the register-blocked
    kernel: no im2col copy. Row tiles of images are summed in fixed chunks, the chunk
    partials reduced in a fixed order: bitwise identical for any thread count."""
    cdef Geom g = make_geom(geom, nhwc)
    cdef Py_ssize_t rows, ntiles, ntile_items, nchunks, per, nmb, mbs, nitems, wsize
    cdef Py_ssize_t it, ci, grp, mb, m0, m1, t0, t1, nblk, k, r, tq
    cdef floating* partial
    cdef floating* gyt = NULL
    cdef Py_ssize_t* tables = NULL
    cdef floating acc
    cdef int failed = 0
    cdef int* failed_p = &failed
    wsize = g.K * g.ckk
    if wsize == 0:
        return
    if g.N == 0 or g.P == 0:
        memset(&gw[0], 0, wsize * sizeof(floating))
        return
    # Row tiles: the transposed gy tile (pixels x Kg) fills half of TILE_BYTES.
    rows = TILE_BYTES // 2 // (g.Wo * g.Kg * <Py_ssize_t>sizeof(floating))
    if rows < 1:
        rows = 1
    if rows > g.Ho:
        rows = g.Ho
    ntiles = (g.Ho + rows - 1) // rows
    ntile_items = g.N * ntiles
    per = chunk_size(ntile_items, wsize * sizeof(floating))
    nchunks = (ntile_items + per - 1) // per
    # Too few chunks x groups: split the taps (rows of the product) as well.
    nmb = (MIN_ITEMS + nchunks * g.G - 1) // (nchunks * g.G)
    if nmb > g.ckk // 64:
        nmb = g.ckk // 64
    if nmb < 1:
        nmb = 1
    mbs = ((g.ckk + nmb - 1) // nmb + 7) // 8 * 8
    nmb = (g.ckk + mbs - 1) // mbs
    nitems = nchunks * g.G * nmb
    tq = rows * g.Wo
    partial = <floating*>malloc(nchunks * wsize * sizeof(floating))
    if partial == NULL:
        raise MemoryError(f"could not allocate {nchunks * wsize * sizeof(floating)} bytes "
                          f"of weight-gradient partials")
    with nogil:
        with parallel(num_threads=team(num_threads, nitems), use_threads_if=num_threads > 1 and nitems > 1):
            gyt = <floating*>malloc((tq * g.Kg + 16 + FASTNN_UGEMM_SCRATCH(tq)) * sizeof(floating))
            tables = <Py_ssize_t*>malloc((2 * g.ckk + 2 * tq + 1) * sizeof(Py_ssize_t))
            if tables != NULL:
                # tables[:ckk] = the offset of each tap in the image (rows of A)
                implicit_tables(&g, Hq, Wq, tables, tables + g.ckk)
                if not g.nhwc:
                    for r in range(g.ckk):
                        tables[r] = tables[g.ckk + r]
            for it in prange(nitems, schedule="dynamic"):
                if gyt == NULL or tables == NULL:
                    failed_p[0] = 1
                    continue
                ci = it // (g.G * nmb)
                grp = (it // nmb) % g.G
                mb = it % nmb
                m0 = mb * mbs
                m1 = m0 + mbs if m0 + mbs < g.ckk else g.ckk
                t0 = ci * per
                t1 = t0 + per if t0 + per < ntile_items else ntile_items
                weight_grad_implicit_item(&xq[0], &gy[0], partial + ci * wsize, &g, Hq, Wq,
                                          grp, m0, m1, t0, t1, ntiles, rows, tables,
                                          tables + 2 * g.ckk, tables + 2 * g.ckk + tq, gyt,
                                          gyt + (tq * g.Kg + 15) // 16 * 16)
            free(gyt)
            free(tables)
        if not failed:
            # gw = sum of the chunk partials in chunk order, from the tap-major
            # partial layout [grp][tap][k] to the weight's own layout.
            nblk = g.G * g.ckk
            for it in prange(nblk, num_threads=team(num_threads, nblk),
                             use_threads_if=num_threads > 1 and nblk > 1):
                grp = it // g.ckk
                r = it - grp * g.ckk
                for k in range(g.Kg):
                    acc = partial[it * g.Kg + k]
                    for ci in range(1, nchunks):
                        acc = acc + partial[ci * wsize + it * g.Kg + k]
                    if g.nhwc:
                        gw[r * g.K + grp * g.Kg + k] = acc
                    else:
                        gw[(grp * g.Kg + k) * g.ckk + r] = acc
    free(partial)
    if failed:
        raise MemoryError("could not allocate the per-thread scratch of the weight gradient")


def conv2d_input_grad(const floating[::1] gy, const floating[::1] w, floating[::1] gx,
                      tuple geom, bint nhwc, int num_threads):
    """gx = col2im(w^T gy): items own disjoint input rows, so no write conflicts.

    NCHW takes the weight as given, (K, C/groups * kh * kw); NHWC takes it transposed,
    (K, kh * kw * C/groups), so that the products read w_g^T's rows in place instead of
    repacking the transpose for every tile (fastnn.conv._input_grad)."""
    cdef Geom g = make_geom(geom, nhwc)
    cdef Py_ssize_t T = tile_pixels(&g, g.N * g.G, sizeof(floating))
    cdef Py_ssize_t units = g.N * g.G
    cdef Py_ssize_t nhb, hbs, nitems, it, n, grp, hb, h0, h1
    cdef floating* gcols = NULL
    cdef int failed = 0
    cdef int* failed_p = &failed
    if units == 0 or g.C == 0:
        return
    if g.K == 0:
        memset(&gx[0], 0, g.N * g.C * g.H * g.W * sizeof(floating))
        return
    # Row blocks only when there are too few (image, group) pairs: every block
    # recomputes the output rows its halo needs.
    nhb = (MIN_ITEMS + units - 1) // units
    if nhb > g.H:
        nhb = g.H
    hbs = (g.H + nhb - 1) // nhb
    nhb = (g.H + hbs - 1) // hbs
    nitems = units * nhb
    with nogil, parallel(num_threads=team(num_threads, nitems), use_threads_if=num_threads > 1 and nitems > 1):
        gcols = NULL
        if not g.direct:
            gcols = <floating*>malloc((g.ckk * T + 1) * sizeof(floating))
        for it in prange(nitems, schedule="dynamic"):
            if gcols == NULL and not g.direct:
                failed_p[0] = 1
                continue
            n = it // (g.G * nhb)
            grp = (it // nhb) % g.G
            hb = it % nhb
            h0 = hb * hbs
            h1 = h0 + hbs if h0 + hbs < g.H else g.H
            input_grad_item(&gy[0], &w[0], &gx[0], &g, n, grp, h0, h1, T, gcols)
        free(gcols)
    if failed:
        raise MemoryError(f"could not allocate {(g.ckk * T + 1) * sizeof(floating)} bytes of "
                          f"per-thread col2im scratch for the input gradient")


def conv2d_bias_grad(const floating[::1] gy, floating[::1] gb, tuple geom, bint nhwc,
                     int num_threads):
    """gb[k] = sum of gy over images and pixels, accumulated in float64 in a fixed order."""
    cdef Geom g = make_geom(geom, nhwc)
    cdef Py_ssize_t k, n, rows = g.N * g.P
    cdef double acc
    with nogil:
        if not g.nhwc:
            for k in prange(g.K, num_threads=team(num_threads, g.K),
                            use_threads_if=num_threads > 1 and g.K > 1):
                acc = 0
                for n in range(g.N):
                    acc = acc + sum_run(&gy[0] + (n * g.K + k) * g.P, g.P)
                gb[k] = <floating>acc
    if g.nhwc:
        nhwc_bias_grad(&gy[0], &gb[0], rows, g.K, num_threads)


# Rows of an NHWC gradient per work item of its bias gradient: fixed, so that the
# partial sums, and their order, depend on the shape only.
cdef enum:
    BIAS_ROWS = 4096


cdef int nhwc_bias_grad(const floating* gy, floating* gb, Py_ssize_t rows, Py_ssize_t K,
                        int num_threads) except -1:
    # (rows, K) -> gb[K]: items are (block of BIAS_ROWS rows, block of 16 channels),
    # each summing into its own float64 partials; the partials are added in row-block
    # order.
    cdef Py_ssize_t nrb = (rows + BIAS_ROWS - 1) // BIAS_ROWS, nkb = (K + 15) // 16
    cdef Py_ssize_t nitems = nrb * nkb, it, rb, kb, r0, r1, k
    cdef double acc
    cdef double* part = <double*>malloc(nrb * nkb * 16 * sizeof(double) + 1)
    if part == NULL:
        raise MemoryError(f"could not allocate {nrb * nkb * 16 * sizeof(double)} bytes of "
                          f"bias-gradient partials")
    with nogil:
        for it in prange(nitems, num_threads=team(num_threads, nitems), schedule="static",
                         use_threads_if=num_threads > 1 and nitems > 1):
            rb = it // nkb
            kb = it % nkb
            r0 = rb * BIAS_ROWS
            r1 = r0 + BIAS_ROWS if r0 + BIAS_ROWS < rows else rows
            bias_grad_block(gy + r0 * K, part + it * 16, r1 - r0, K, kb * 16)
        for k in range(K):
            acc = 0
            for rb in range(nrb):
                acc = acc + part[(rb * nkb + k // 16) * 16 + k % 16]
            gb[k] = <floating>acc
    free(part)
    return 0


def im2col(const floating[::1] x, floating[::1] cols, tuple geom, bint nhwc,
           int num_threads):
    """Unfold x into cols: NCHW (N, C*kh*kw, P) rows (c, i, j); NHWC (N, P, kh*kw*C)."""
    cdef Geom g = make_geom(geom, nhwc)
    cdef Py_ssize_t T = tile_pixels(&g, g.N, sizeof(floating))
    cdef Py_ssize_t ntiles = (g.P + T - 1) // T
    cdef Py_ssize_t nitems = g.N * ntiles
    cdef Py_ssize_t it, n, p0, p1
    if nitems == 0 or g.ckk == 0:
        return
    with nogil:
        for it in prange(nitems, num_threads=team(num_threads, nitems), schedule="dynamic",
                         use_threads_if=num_threads > 1 and nitems > 1):
            n = it // ntiles
            p0 = (it % ntiles) * T
            p1 = p0 + T if p0 + T < g.P else g.P
            if not g.nhwc:
                pack_nchw(&x[0] + n * g.C * g.H * g.W, &g, p0, p1,
                          &cols[0] + n * g.ckk * g.P + p0, g.P)
            else:
                pack_nhwc(&x[0] + n * g.H * g.W * g.C, 0, &g, p0, p1,
                          &cols[0] + (n * g.P + p0) * g.ckk, g.ckk)


def col2im(const floating[::1] cols, floating[::1] x, tuple geom, bint nhwc,
           int num_threads):
    """Fold cols back (the adjoint of im2col): overlapping patches are summed."""
    cdef Geom g = make_geom(geom, nhwc)
    cdef Py_ssize_t nhb, hbs, nitems, it, n, hb, h0, h1, oh_lo, oh_hi, q0, q1
    if g.N == 0 or g.C == 0 or g.H == 0 or g.W == 0:
        return
    nhb = (MIN_ITEMS + g.N - 1) // g.N
    if nhb > g.H:
        nhb = g.H
    hbs = (g.H + nhb - 1) // nhb
    nhb = (g.H + hbs - 1) // hbs
    nitems = g.N * nhb
    with nogil:
        for it in prange(nitems, num_threads=team(num_threads, nitems), schedule="dynamic",
                         use_threads_if=num_threads > 1 and nitems > 1):
            n = it // nhb
            hb = it % nhb
            h0 = hb * hbs
            h1 = h0 + hbs if h0 + hbs < g.H else g.H
            zero_rows(&x[0], &g, n, 0, h0, h1)
            oh_lo = floor_div(h0 + g.pt - (g.kh - 1) * g.dh + g.sh - 1, g.sh)
            if oh_lo < 0:
                oh_lo = 0
            oh_hi = floor_div(h1 - 1 + g.pt, g.sh)
            if oh_hi > g.Ho - 1:
                oh_hi = g.Ho - 1
            if oh_lo > oh_hi:
                continue
            q0 = oh_lo * g.Wo
            q1 = (oh_hi + 1) * g.Wo
            if not g.nhwc:
                scatter_nchw(&x[0] + n * g.C * g.H * g.W, &g, q0, q1,
                             &cols[0] + n * g.ckk * g.P + q0, g.P, h0, h1)
            else:
                scatter_nhwc(&x[0] + n * g.H * g.W * g.C, 0, &g, q0, q1,
                             &cols[0] + (n * g.P + q0) * g.ckk, g.ckk, h0, h1)


def _ugemm_check(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out):
    """Test hook: out = a @ b through the register-blocked kernel (plain strides)."""
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = b.shape[1], r
    cdef Py_ssize_t* tables = <Py_ssize_t*>malloc((2 * K + 1) * sizeof(Py_ssize_t))
    cdef floating* scratch = <floating*>malloc(FASTNN_UGEMM_SCRATCH(K) * sizeof(floating))
    if tables == NULL or scratch == NULL:
        free(tables)
        free(scratch)
        raise MemoryError("could not allocate the kernel's scratch")
    for r in range(K):
        tables[r] = r
        tables[K + r] = r * N
    ugemm(M, N, K, &a[0, 0], K, <Py_ssize_t*>NULL, tables, &b[0, 0], tables + K, &out[0, 0], N, False,
          <floating*>NULL, <floating*>NULL, scratch)
    free(tables)
    free(scratch)
