# cython: language_level=3
"""Recurrent kernels: LSTM (TensorFlow BasicLSTMCell layout), GRU and SimpleRNN (Keras
layouts), forward over a sequence and backpropagation through time.

Three layers (DESIGN.md). The ``def`` entry points take C-contiguous buffers that
:mod:`fastnn.recurrent` validated and allocated; everything runs time-major with the
GIL released once per call. A step is one GEMM for the recurrent product (the input
projection of all steps is one GEMM up front) plus one fused pass over the gate
pre-activations: all gate nonlinearities and the state update in a single sweep, so the
gates never make a second trip through memory. Backward runs the gate pass in reverse
per step with only the recurrent GEMM ``dh_prev = dz_t @ W_h^T`` inside the loop; the
weight, bias and input gradients of all steps are then three big GEMMs and a column sum
over the stacked gate gradients. For LSTM batches above a few rows the recurrent kernel
is packed once per call and the whole time loop runs in one parallel region (see
``panels_init`` and ``lstm_fwd_team``); tiny batches multiply inside the gate-pass loop
(``xh_product``); everything else goes through BLAS.

The gate passes are C (the verbatim block) for the same reason as the activation
kernels: compiled for AVX-512, AVX2+FMA and the baseline, one set picked at import
(``FASTNN_UKERNEL_MAX`` caps it). Each output element is computed by one work item in
the same order whatever the thread count, so results are bitwise identical for any
count; the column sums of the bias gradients run down the rows in a fixed order.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from fastnn_ext._blas cimport gemm
from fastnn_ext._cost cimport FASTNN_SERIAL_BELOW_GATE, FASTNN_SERIAL_BELOW_RECURRENT
from fastnn_ext._openmp cimport fastnn_omp_thread_id, fastnn_team_would_get, team
from fastnn_ext._ukernel cimport FASTNN_UGEMM_SCRATCH, fastnn_ukernel_pick, pgemm, ugemm


cnp.import_array()

cdef extern from "_rnn_gates.h":
    ctypedef struct fastnn_rnn_args:
        Py_ssize_t H, ldg
        void *z
        void *q
        void *h_out
        void *c_out
        void *tc
        void *rh
        void *dh
        void *dc
        void *dz
        void *dq
        const void *bias
        const void *bias2
        const void *h_prev
        const void *c_prev
        const void *g
        const void *x
        const void *w
        Py_ssize_t n_in, G
        double forget_bias
        int store, relu, acc
    void fastnn_rnn_pass_f32(int op, const fastnn_rnn_args* a, Py_ssize_t r0,
                             Py_ssize_t r1) noexcept nogil
    void fastnn_rnn_pass_f64(int op, const fastnn_rnn_args* a, Py_ssize_t r0,
                             Py_ssize_t r1) noexcept nogil
    int fastnn_rnn_pick() noexcept nogil
    void fastnn_team_barrier() noexcept nogil
    int fastnn_team_size() noexcept nogil
    enum:
        FASTNN_LSTM_FWD
        FASTNN_LSTM_BWD
        FASTNN_GRU_FWD
        FASTNN_GRU_BWD
        FASTNN_GRU0_FWD_A
        FASTNN_GRU0_FWD_B
        FASTNN_GRU0_BWD_A
        FASTNN_GRU0_BWD_B
        FASTNN_RNN_FWD
        FASTNN_RNN_BWD
        FASTNN_MATVEC


# The SIMD level of the gate passes and of the products on the register-blocked kernel,
# picked once at import like every family's (_simd.h; FASTNN_UKERNEL_MAX caps it).
SIMD_LEVEL = fastnn_rnn_pick()
fastnn_ukernel_pick()

# A gate pass goes parallel from FASTNN_SERIAL_BELOW_GATE units (rows * H) on, the
# recurrent products from FASTNN_SERIAL_BELOW_RECURRENT multiply-adds (the cost model,
# _cost.h), in work items of about ITEM_UNITS units (whole rows).
DEF ITEM_UNITS = 4096


# ---------------------------------------------------------------- drivers
cdef void run_pass(bint dbl, int op, const fastnn_rnn_args* a, Py_ssize_t rows,
                   int num_threads) noexcept nogil:
    cdef Py_ssize_t per, items, it, r0, r1
    if rows <= 0 or a.H <= 0:
        return
    per = ITEM_UNITS // a.H if a.H < ITEM_UNITS else 1
    items = (rows + per - 1) // per
    if num_threads > items:
        num_threads = <int>items
    if num_threads > 1 and rows * a.H >= FASTNN_SERIAL_BELOW_GATE:
        for it in prange(items, schedule="static", num_threads=num_threads):
            r0 = it * per
            r1 = r0 + per if r0 + per < rows else rows
            if dbl:
                fastnn_rnn_pass_f64(op, a, r0, r1)
            else:
                fastnn_rnn_pass_f32(op, a, r0, r1)
    elif dbl:
        fastnn_rnn_pass_f64(op, a, 0, rows)
    else:
        fastnn_rnn_pass_f32(op, a, 0, rows)


cdef void column_sums(const floating* a, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lda,
                      floating* out, int num_threads) noexcept nogil:
    # out[j] = sum over rows of a[r, j], added in row order: each column's sum is one
    # work item's, so the thread count cannot change it. Blocks of 256 columns keep the
    # running sums in registers / L1 while the rows stream past.
    cdef Py_ssize_t nb = (cols + 255) // 256, blk, j0, j1, r, j
    if num_threads > nb:
        num_threads = <int>nb
    memset(out, 0, cols * sizeof(floating))
    if num_threads > 1 and rows * cols >= 4 * FASTNN_SERIAL_BELOW_GATE:
        for blk in prange(nb, schedule="static", num_threads=num_threads):
            j0 = blk * 256
            j1 = j0 + 256 if j0 + 256 < cols else cols
            for r in range(rows):
                for j in range(j0, j1):
                    out[j] = out[j] + a[r * lda + j]
    else:
        for r in range(rows):
            for j in range(cols):
                out[j] = out[j] + a[r * lda + j]


cdef inline void zero_args(fastnn_rnn_args* a, Py_ssize_t H) noexcept nogil:
    memset(a, 0, sizeof(fastnn_rnn_args))
    a.H = H


cdef void weight_grads(const floating* x, Py_ssize_t N, Py_ssize_t I, const floating* kernel,
                       const floating* hprev, Py_ssize_t H, const floating* dz, Py_ssize_t G,
                       floating* grad_kernel, floating* grad_rkernel, floating* grad_bias,
                       floating* grad_x, int num_threads) noexcept nogil:
    # The products of all steps at once: X^T dZ, H_prev^T dZ, sum(dZ), dZ W_x^T.
    gemm(True, False, I, G, N, <floating>1, x, I, dz, G, <floating>0, grad_kernel, G)
    if grad_rkernel != NULL:
        gemm(True, False, H, G, N, <floating>1, hprev, H, dz, G, <floating>0, grad_rkernel, G)
    column_sums(dz, N, G, G, grad_bias, num_threads)
    gemm(False, True, N, I, G, <floating>1, dz, G, kernel, G, <floating>0, grad_x, I)


# Batches up to this size multiply by the kernel in the gate pass's own loop (rows of w
# streamed from cache into a z row held in L1) instead of calling BLAS: at batch 1 a
# BLAS call costs ~1 us of setup, and packing the kernel is wasted on one row (float32,
# (I, H) = (12, 64): 0.3 us against 1.7 us). Past a few rows BLAS's reuse of each
# packed kernel panel across rows wins.
DEF SMALL_B = 4


cdef void xh_product(const floating* x, const floating* h, const floating* w, floating* z,
                     Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t G,
                     bint acc, int num_threads) noexcept nogil:
    # z (+)= x @ w[:I] + h @ w[I:], rows of G.
    cdef fastnn_rnn_args a
    if B <= SMALL_B:
        zero_args(&a, H)
        a.x = x
        a.h_prev = h
        a.w = w
        a.n_in = I
        a.G = G
        a.z = z
        a.acc = acc
        if floating is double:
            fastnn_rnn_pass_f64(FASTNN_MATVEC, &a, 0, B)
        else:
            fastnn_rnn_pass_f32(FASTNN_MATVEC, &a, 0, B)
        return
    cdef floating* xh = NULL
    cdef Py_ssize_t r
    # One product over [x, h] rows copied side by side rather than two into the same z:
    # z is written once and the threads start once -- one parallel region on fastnn's
    # pool (fwd_product), or one BLAS call for the bigger products (measured when every
    # product went through BLAS: float32 B16 I128 H256 175 us against 197; no slower at
    # B64 I512 H512).
    if not acc and I:
        xh = <floating*>malloc(B * (I + H) * sizeof(floating))
    if xh != NULL:
        for r in range(B):
            memcpy(xh + r * (I + H), x + r * I, I * sizeof(floating))
            memcpy(xh + r * (I + H) + I, h + r * H, H * sizeof(floating))
        fwd_product(B, G, I + H, xh, I + H, w, G, False, z, G, num_threads)
        free(xh)
        return
    fwd_product(B, G, I, x, I, w, G, acc, z, G, num_threads)
    fwd_product(B, G, H, h, H, w + I * G, G, True, z, G, num_threads)


# Products on fastnn's own pool (row-major, _blas.gemm's arguments, alpha 1, beta 0 or
# 1). SciPy's OpenBLAS would run them on its own thread pool, which fights the pool of
# NumPy's OpenBLAS when that one still spins after a NumPy call (an lstm_cell step right
# after a 384x384 NumPy matmul: 13x its time alone), and which fastnn.threads(n) does not
# limit. Here the output is cut in fixed blocks of PRODUCT_MB rows x PRODUCT_NB columns,
# each computed whole by one thread on the register-blocked kernel: the bits depend on
# the shape only, the team shrinks like every fastnn team when other tasks hold the
# cores, and below FASTNN_SERIAL_BELOW_RECURRENT multiply-adds the call stays serial.
DEF PRODUCT_MB = 96
DEF PRODUCT_NB = 256


cdef void product(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                  const floating* a, Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                  bint accumulate, floating* c, Py_ssize_t ldc,
                  int num_threads) noexcept nogil:
    cdef Py_ssize_t mblocks = (m + PRODUCT_MB - 1) // PRODUCT_MB
    cdef Py_ssize_t nblocks = (n + PRODUCT_NB - 1) // PRODUCT_NB
    cdef Py_ssize_t it, m0, n0, mb, nb
    cdef floating beta = 1 if accumulate else 0
    if m <= 0 or n <= 0:
        return
    # A team shrunk to one (another library's workers hold the cores) takes the one
    # product, not the blocks one after the other (lstm_cell B16 I128 H256 after a
    # NumPy matmul: ~3 us of ~90 slower that way).
    if (num_threads < 2 or m * n * k < FASTNN_SERIAL_BELOW_RECURRENT
            or fastnn_team_would_get(num_threads) < 2):
        pgemm(trans_a, trans_b, m, n, k, <floating>1, a, lda, b, ldb, beta, c, ldc)
        return
    for it in prange(mblocks * nblocks, schedule="static",
                     num_threads=team(num_threads, mblocks * nblocks)):
        m0 = (it // nblocks) * PRODUCT_MB
        n0 = (it % nblocks) * PRODUCT_NB
        mb = m - m0 if m - m0 < PRODUCT_MB else PRODUCT_MB
        nb = n - n0 if n - n0 < PRODUCT_NB else PRODUCT_NB
        pgemm(trans_a, trans_b, mb, nb, k, <floating>1,
              (a + m0) if trans_a else (a + m0 * lda), lda,
              (b + n0 * ldb) if trans_b else (b + n0), ldb, beta, c + m0 * ldc + n0, ldc)


# Which products go to the pool: up to 2^24 multiply-adds without transposes (measured,
# float32, 2 threads, each alone: (16 x 384) @ (384 x 1024) 102 us on the pool against
# 180 through OpenBLAS, float64 168 against 201; (64 x 1024) @ (1024 x 2048) 2.85 ms
# against 2.28, and the transposed products of the backward passes 1.4-4x slower here,
# since the kernel packs a transposed operand a block at a time). Bigger products and
# the transposed ones stay on BLAS, whose packing wins there.
DEF POOL_PRODUCT_MAX = 16777216


cdef inline void fwd_product(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a,
                             Py_ssize_t lda, const floating* b, Py_ssize_t ldb,
                             bint accumulate, floating* c, Py_ssize_t ldc,
                             int num_threads) noexcept nogil:
    # c (+)= a @ b, row-major.
    if m * n * k <= POOL_PRODUCT_MAX:
        product(False, False, m, n, k, a, lda, b, ldb, accumulate, c, ldc, num_threads)
    else:
        gemm(False, False, m, n, k, <floating>1, a, lda, b, ldb,
             <floating>(1 if accumulate else 0), c, ldc)


def _product_check(a, b, bint trans_a, bint trans_b, bint pool, int num_threads, int reps=1):
    """Test and timing hook: op(a) @ op(b) (C-contiguous, one dtype) on fastnn's pool
    (pool=True) or through _blas.gemm."""
    import numpy as np
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    m = a.shape[1] if trans_a else a.shape[0]
    k = a.shape[0] if trans_a else a.shape[1]
    n = b.shape[0] if trans_b else b.shape[1]
    if (b.shape[1] if trans_b else b.shape[0]) != k or a.dtype != b.dtype:
        raise ValueError("_product_check: shapes or dtypes do not match")
    out = np.empty((m, n), dtype=a.dtype)
    if a.dtype == np.float32:
        _product_run[float](a, b, out, trans_a, trans_b, pool, num_threads, reps)
    else:
        _product_run[double](a, b, out, trans_a, trans_b, pool, num_threads, reps)
    return out


cdef _product_run(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] out,
                  bint trans_a, bint trans_b, bint pool, int num_threads, int reps):
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t lda = a.shape[1], ldb = b.shape[1]
    cdef const floating* pa = &a[0, 0] if a.shape[0] * a.shape[1] else NULL
    cdef const floating* pb = &b[0, 0] if b.shape[0] * b.shape[1] else NULL
    cdef int r
    if m == 0 or n == 0:
        return
    with nogil:
        for r in range(reps):
            if pool:
                product(trans_a, trans_b, m, n, k, pa, lda, pb, ldb, False, &out[0, 0], n,
                        num_threads)
            else:
                gemm(trans_a, trans_b, m, n, k, <floating>1, pa, lda, pb, ldb, <floating>0,
                     &out[0, 0], n)


# The per-step recurrent products (B, H) @ (H, G) and (B, G) @ (G, H) against a weight
# that stays the same for all T steps: BLAS would pack the weight again at every step,
# and its threads synchronise per call. So the weight is packed once per call into
# column panels of PANEL_W values (contiguous rows of one panel, no 4 KiB-stride
# aliasing in L1) and multiplied by the register-blocked kernel of the convolutions, in
# parallel over panels (each panel's columns are one work item's: bitwise the same for
# any thread count). The panel width is a multiple of every SIMD path's block width.
cdef bint USE_PANELS = True


def _use_panels(bint on):
    """Test hook: False sends every recurrent product to BLAS."""
    global USE_PANELS
    USE_PANELS = on


cdef struct Panels:
    void* packed
    Py_ssize_t* aoff
    Py_ssize_t* boff
    void* scratch
    Py_ssize_t K, N, W, per_thread


cdef bint panels_init(Panels* p, const floating* w, Py_ssize_t sk, Py_ssize_t sn,
                      Py_ssize_t K, Py_ssize_t N, int num_threads) noexcept nogil:
    # B[k, n] = w[k * sk + n * sn] for k < K, n < N; False (nothing allocated) when N is
    # not a whole number of panels or memory is short: the caller then uses BLAS.
    cdef Py_ssize_t W = 16 if floating is double else 32, i, k, j
    cdef floating* dst
    memset(p, 0, sizeof(Panels))
    if N % W or K == 0 or not USE_PANELS:
        return False
    p.K, p.N, p.W = K, N, W
    p.per_thread = FASTNN_UGEMM_SCRATCH(K)
    p.packed = malloc(K * N * sizeof(floating))
    p.aoff = <Py_ssize_t*>malloc(K * sizeof(Py_ssize_t))
    p.boff = <Py_ssize_t*>malloc(K * sizeof(Py_ssize_t))
    p.scratch = malloc(p.per_thread * (num_threads if num_threads > 1 else 1) * sizeof(floating))
    if p.packed == NULL or p.aoff == NULL or p.boff == NULL or p.scratch == NULL:
        panels_free(p)
        return False
    dst = <floating*>p.packed
    for i in range(N // W):
        for k in range(K):
            for j in range(W):
                dst[(i * K + k) * W + j] = w[k * sk + (i * W + j) * sn]
    for k in range(K):
        p.aoff[k] = k
        p.boff[k] = k * W
    return True


cdef void panels_free(Panels* p) noexcept nogil:
    free(p.packed)
    free(p.aoff)
    free(p.boff)
    free(p.scratch)
    memset(p, 0, sizeof(Panels))


cdef void panels_product(const Panels* p, const floating* a, Py_ssize_t M, floating* c,
                         Py_ssize_t ldc, bint accumulate, int num_threads) noexcept nogil:
    # c (M, N) (+)= a (M, K) @ B, a C-contiguous.
    cdef Py_ssize_t n = p.N // p.W, i, K = p.K, W = p.W
    cdef const floating* packed = <const floating*>p.packed
    cdef floating* scratch = <floating*>p.scratch
    if num_threads > n:
        num_threads = <int>n
    if num_threads > 1 and M * p.N * K >= FASTNN_SERIAL_BELOW_RECURRENT:
        for i in prange(n, schedule="static", num_threads=num_threads):
            ugemm(M, W, K, a, K, NULL, p.aoff, packed + i * K * W, p.boff, c + i * W, ldc,
                  accumulate, NULL, NULL, scratch + fastnn_omp_thread_id() * p.per_thread)
    else:
        for i in range(n):
            ugemm(M, W, K, a, K, NULL, p.aoff, packed + i * K * W, p.boff, c + i * W, ldc,
                  accumulate, NULL, NULL, scratch)


# The LSTM time loops on packed kernels run inside ONE parallel region, each thread
# doing its share of every step between two barriers (its panels of the product, then
# its rows of the gate pass), instead of opening two regions per step: between regions
# idle threads go to sleep after GOMP_SPINCOUNT spins, and waking them costs more than a
# step's work where wake-ups are slow (measured 1 ms per step on a shared VM). The shares
# are fixed by the thread's index, and every panel and row is computed by the same code
# whatever the split: results stay bitwise identical for any thread count.
cdef inline void panels_part(const Panels* p, const floating* a, Py_ssize_t M, floating* c,
                             Py_ssize_t ldc, bint accumulate, int tid, int nth) noexcept nogil:
    cdef Py_ssize_t n = p.N // p.W, i, K = p.K, W = p.W
    cdef const floating* packed = <const floating*>p.packed
    cdef floating* scratch = <floating*>p.scratch + tid * p.per_thread
    for i in range(n * tid // nth, n * (tid + 1) // nth):
        ugemm(M, W, K, a, K, NULL, p.aoff, packed + i * K * W, p.boff, c + i * W, ldc,
              accumulate, NULL, NULL, scratch)


cdef inline void pass_part(bint dbl, int op, const fastnn_rnn_args* a, Py_ssize_t rows,
                           int tid, int nth) noexcept nogil:
    cdef Py_ssize_t r0 = rows * tid // nth, r1 = rows * (tid + 1) // nth
    if r1 <= r0:
        return
    if dbl:
        fastnn_rnn_pass_f64(op, a, r0, r1)
    else:
        fastnn_rnn_pass_f32(op, a, r0, r1)


cdef inline void lstm_fwd_args(fastnn_rnn_args* a, const floating* bias, double forget_bias,
                               Py_ssize_t H, bint training) noexcept nogil:
    zero_args(a, H)
    a.bias = bias
    a.forget_bias = forget_bias
    a.store = training


cdef inline void lstm_fwd_step(fastnn_rnn_args* a, floating* z, floating* hs, floating* cs,
                               floating* tc, Py_ssize_t t, Py_ssize_t B, Py_ssize_t H,
                               bint training) noexcept nogil:
    # hs, cs: T + 1 blocks of (B, H), block 0 the initial state. Without training, cs
    # has 2 blocks used in turn (c_T ends in block T % 2).
    cdef Py_ssize_t BH = B * H
    a.z = z + t * B * 4 * H
    a.h_out = hs + (t + 1) * BH
    a.c_prev = cs + (t if training else t % 2) * BH
    a.c_out = cs + (t + 1 if training else (t + 1) % 2) * BH
    a.tc = tc + t * BH if training else NULL


cdef void lstm_fwd_team(const Panels* wx, const Panels* wh, const floating* x,
                        const floating* bias, double forget_bias, floating* z, floating* hs,
                        floating* cs, floating* tc, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                        bint training, int tid, int nth) noexcept nogil:
    cdef Py_ssize_t G = 4 * H, BH = B * H, t
    cdef fastnn_rnn_args a
    lstm_fwd_args(&a, bias, forget_bias, H, training)
    panels_part(wx, x, T * B, z, G, False, tid, nth)
    fastnn_team_barrier()
    for t in range(T):
        panels_part(wh, hs + t * BH, B, z + t * B * G, G, True, tid, nth)
        fastnn_team_barrier()
        lstm_fwd_step(&a, z, hs, cs, tc, t, B, H, training)
        pass_part(floating is double, FASTNN_LSTM_FWD, &a, B, tid, nth)
        fastnn_team_barrier()


cdef void lstm_bwd_team(const Panels* wt, const floating* gates, const floating* tc,
                        const floating* cs, const floating* g, Py_ssize_t g_step, Py_ssize_t ldg,
                        floating* dh, floating* dc, floating* dz, Py_ssize_t T, Py_ssize_t B,
                        Py_ssize_t H, int tid, int nth) noexcept nogil:
    cdef Py_ssize_t G = 4 * H, t
    cdef fastnn_rnn_args a
    zero_args(&a, H)
    a.ldg = ldg
    a.dh = dh
    a.dc = dc
    for t in range(T - 1, -1, -1):
        a.z = <void*>(gates + t * B * G)
        a.tc = <void*>(tc + t * B * H)
        a.c_prev = cs + t * B * H
        a.g = g + t * g_step
        a.dz = dz + t * B * G
        pass_part(floating is double, FASTNN_LSTM_BWD, &a, B, tid, nth)
        fastnn_team_barrier()
        panels_part(wt, dz + t * B * G, B, dh, H, False, tid, nth)
        fastnn_team_barrier()


# ---------------------------------------------------------------- LSTM
cdef void lstm_steps(const floating* x, const floating* kernel, const floating* bias,
                     double forget_bias, floating* z, floating* hs, floating* cs, floating* tc,
                     Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, bint training,
                     int num_threads) noexcept nogil:
    cdef Py_ssize_t G = 4 * H, BH = B * H, t
    cdef fastnn_rnn_args a
    lstm_fwd_args(&a, bias, forget_bias, H, training)
    cdef Panels wh, wx
    cdef bint packed = B > SMALL_B and T > 1 and panels_init(&wh, kernel + I * G, G, 1, H, G,
                                                             num_threads)
    # With the steps on the packed kernel the input projection goes there too: one kind
    # of thread team for the whole call (BLAS's threads and OpenMP's, taking turns on the
    # same cores, each spin-wait while the other works).
    if packed and panels_init(&wx, kernel, G, 1, I, G, num_threads):
        if num_threads > 1:
            with parallel(num_threads=num_threads):
                lstm_fwd_team(&wx, &wh, x, bias, forget_bias, z, hs, cs, tc, T, B, H,
                              training, fastnn_omp_thread_id(), fastnn_team_size())
        else:
            lstm_fwd_team(&wx, &wh, x, bias, forget_bias, z, hs, cs, tc, T, B, H, training,
                          0, 1)
        panels_free(&wx)
        panels_free(&wh)
        return
    fwd_product(T * B, G, I, x, I, kernel, G, False, z, G, num_threads)
    for t in range(T):
        if packed:
            panels_product(&wh, hs + t * BH, B, z + t * B * G, G, True, num_threads)
        else:
            xh_product(<floating*>NULL, hs + t * BH, kernel + I * G, z + t * B * G, B, 0, H,
                       G, True, num_threads)
        lstm_fwd_step(&a, z, hs, cs, tc, t, B, H, training)
        run_pass(floating is double, FASTNN_LSTM_FWD, &a, B, num_threads)
    if packed:
        panels_free(&wh)


def lstm_forward(const floating[:, ::1] x, const floating[:, ::1] kernel,
                 const floating[::1] bias, double forget_bias, floating[:, ::1] z,
                 floating[:, ::1] hs, floating[:, ::1] cs, floating[:, ::1] tc,
                 Py_ssize_t T, Py_ssize_t B, bint training, int num_threads):
    """x (T*B, I) time-major; z (T*B, 4H) scratch, the gate activations when training;
    hs ((T+1)*B, H) and cs ((T+1)*B or 2*B, H) with the initial state in the first B
    rows; tc (T*B, H) tanh(c) when training (else unused). B, T >= 1."""
    cdef Py_ssize_t I = x.shape[1], H = hs.shape[1]
    with nogil:
        lstm_steps(&x[0, 0] if I else NULL, &kernel[0, 0], &bias[0], forget_bias, &z[0, 0],
                   &hs[0, 0], &cs[0, 0], &tc[0, 0] if training else NULL, T, B, I, H,
                   training, num_threads)


# Exact ndarrays of the common call: float32 / float64 in native byte order (the type
# number is the same for a byte-swapped array), C-contiguous and aligned.
cdef inline bint plain(object a, int ndim, int typenum):
    return (cnp.PyArray_CheckExact(a) and cnp.PyArray_NDIM(<cnp.ndarray>a) == ndim
            and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>a)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a))


cdef inline void* data(object a):
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef int cell_step(const floating* x, const floating* h, const floating* c,
                   const floating* kernel, const floating* bias, double forget_bias,
                   floating* h_out, floating* c_out, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                   int num_threads) except -1:
    cdef Py_ssize_t G = 4 * H
    cdef fastnn_rnn_args a
    cdef floating* z = <floating*>malloc(B * G * sizeof(floating))
    if z == NULL:
        raise MemoryError(f"could not allocate {B * G * sizeof(floating)} bytes for the gates")
    with nogil:
        xh_product(x, h, kernel, z, B, I, H, G, False, num_threads)
        zero_args(&a, H)
        a.z = z
        a.bias = bias
        a.forget_bias = forget_bias
        a.c_prev = c
        a.c_out = c_out
        a.h_out = h_out
        run_pass(floating is double, FASTNN_LSTM_FWD, &a, B, num_threads)
    free(z)
    return 0


def lstm_cell(x, h, c, kernel, bias, double forget_bias, out_h, out_c, threads):
    """One LSTM step for the common call, or None when the call is not the common one.

    The common call: exact ndarrays of one dtype (float32 / float64, native byte order),
    C-contiguous and aligned, consistent shapes (x (B, I), h and c (B, H), kernel (I + H, 4H), bias
    (4H,)), out_h None or h itself and out_c None or c itself (writeable). Anything else
    returns None and :func:`fastnn.lstm_cell` takes its general path, which converts the
    arguments and raises the errors. ``threads()`` gives the thread count; it is called
    only for batches big enough to use it. Why this entry checks its own arguments: at
    batch 1 the step itself takes ~1 us, while typed memoryviews cost ~0.15 us per
    argument to acquire and the Python-level checks ~2 us.
    """
    cdef int tn, nt
    cdef Py_ssize_t B, I, H
    cdef cnp.npy_intp dims[2]
    if not cnp.PyArray_CheckExact(x):
        return None
    tn = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if tn != cnp.NPY_FLOAT and tn != cnp.NPY_DOUBLE:
        return None
    if not (plain(x, 2, tn) and plain(h, 2, tn) and plain(c, 2, tn) and plain(kernel, 2, tn)
            and plain(bias, 1, tn)):
        return None
    B = cnp.PyArray_DIM(<cnp.ndarray>x, 0)
    I = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    H = cnp.PyArray_DIM(<cnp.ndarray>h, 1)
    if (cnp.PyArray_DIM(<cnp.ndarray>h, 0) != B or cnp.PyArray_DIM(<cnp.ndarray>c, 0) != B
            or cnp.PyArray_DIM(<cnp.ndarray>c, 1) != H
            or cnp.PyArray_DIM(<cnp.ndarray>kernel, 0) != I + H
            or cnp.PyArray_DIM(<cnp.ndarray>kernel, 1) != 4 * H
            or cnp.PyArray_DIM(<cnp.ndarray>bias, 0) != 4 * H):
        return None
    dims[0] = B
    dims[1] = H
    if out_h is None:
        out_h = cnp.PyArray_EMPTY(2, dims, tn, 0)
    elif out_h is not h or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>h):
        return None
    if out_c is None:
        out_c = cnp.PyArray_EMPTY(2, dims, tn, 0)
    elif out_c is not c or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>c):
        return None
    if B == 0 or H == 0:
        return out_h, out_c
    # Threads pay from GATE_UNITS units of the gate pass or RECURRENT multiply-adds of
    # the product (fwd_product: on fastnn's pool for this size).
    nt = (threads() if B * H >= FASTNN_SERIAL_BELOW_GATE
          or B * (I + H) * 4 * H >= FASTNN_SERIAL_BELOW_RECURRENT else 1)
    if tn == cnp.NPY_DOUBLE:
        cell_step[double](<const double*>data(x), <const double*>data(h), <const double*>data(c),
                  <const double*>data(kernel), <const double*>data(bias), forget_bias,
                  <double*>data(out_h), <double*>data(out_c), B, I, H, nt)
    else:
        cell_step[float](<const float*>data(x), <const float*>data(h), <const float*>data(c),
                  <const float*>data(kernel), <const float*>data(bias), forget_bias,
                  <float*>data(out_h), <float*>data(out_c), B, I, H, nt)
    return out_h, out_c


def lstm_cell_general(const floating[:, ::1] x, const floating[:, ::1] h,
                      const floating[:, ::1] c, const floating[:, ::1] kernel,
                      const floating[::1] bias, double forget_bias, floating[:, ::1] h_out,
                      floating[:, ::1] c_out, int num_threads):
    """One step; h_out / c_out may be h / c themselves (B, H >= 1)."""
    cell_step(&x[0, 0] if x.shape[1] else NULL, &h[0, 0], &c[0, 0], &kernel[0, 0], &bias[0],
              forget_bias, &h_out[0, 0], &c_out[0, 0], x.shape[0], x.shape[1], h.shape[1],
              num_threads)


def lstm_backward(const floating[:, ::1] x, const floating[:, ::1] kernel,
                  const floating[:, ::1] gates, const floating[:, ::1] tc,
                  const floating[:, ::1] hs, const floating[:, ::1] cs,
                  const floating[::1] g, Py_ssize_t g_step, Py_ssize_t ldg,
                  floating[:, ::1] dh, floating[:, ::1] dc, floating[:, ::1] dz,
                  floating[:, ::1] grad_x, floating[:, ::1] grad_kernel,
                  floating[::1] grad_bias, Py_ssize_t T, Py_ssize_t B, int num_threads):
    """BPTT over the cache of :func:`lstm_forward`. g: the output gradient, step t's
    rows at g[t * g_step + b * ldg] (g_step = ldg = 0: one row of zeros). dh, dc: in the
    gradients of h_T, c_T, out those of h_0, c_0. dz (T*B, 4H) scratch."""
    cdef Py_ssize_t I = x.shape[1], H = hs.shape[1], G = 4 * H, BH = B * H, t
    cdef const floating* kx = &kernel[0, 0]
    cdef fastnn_rnn_args a
    cdef Panels wt
    cdef bint packed
    with nogil:
        # B[k, n] = W_h[n, k]: the transposed recurrent kernel
        packed = B > SMALL_B and T > 1 and panels_init(&wt, kx + I * G, 1, G, G, H,
                                                       num_threads)
        if packed and num_threads > 1:
            with parallel(num_threads=num_threads):
                lstm_bwd_team(&wt, &gates[0, 0], &tc[0, 0], &cs[0, 0], &g[0], g_step, ldg,
                              &dh[0, 0], &dc[0, 0], &dz[0, 0], T, B, H,
                              fastnn_omp_thread_id(), fastnn_team_size())
        elif packed:
            lstm_bwd_team(&wt, &gates[0, 0], &tc[0, 0], &cs[0, 0], &g[0], g_step, ldg,
                          &dh[0, 0], &dc[0, 0], &dz[0, 0], T, B, H, 0, 1)
        else:
            zero_args(&a, H)
            a.ldg = ldg
            a.dh = &dh[0, 0]
            a.dc = &dc[0, 0]
            for t in range(T - 1, -1, -1):
                a.z = <void*>&gates[t * B, 0]
                a.tc = <void*>&tc[t * B, 0]
                a.c_prev = &cs[t * B, 0]
                a.g = &g[t * g_step]
                a.dz = &dz[t * B, 0]
                run_pass(floating is double, FASTNN_LSTM_BWD, &a, B, num_threads)
                gemm(False, True, B, H, G, <floating>1, &dz[t * B, 0], G, kx + I * G, G,
                     <floating>0, &dh[0, 0], H)
        if packed:
            panels_free(&wt)
        weight_grads(&x[0, 0] if I else NULL, T * B, I, kx, &hs[0, 0], H, &dz[0, 0], G,
                     &grad_kernel[0, 0], &grad_kernel[I, 0], &grad_bias[0],
                     &grad_x[0, 0] if I else NULL, num_threads)


# ---------------------------------------------------------------- GRU
def gru_forward(const floating[:, ::1] x, const floating[:, ::1] kernel,
                const floating[:, ::1] rkernel, const floating[::1] bias,
                const floating[::1] rbias, floating[:, ::1] z, floating[:, ::1] q,
                floating[:, ::1] qh, floating[:, ::1] rh, floating[:, ::1] hs,
                Py_ssize_t T, Py_ssize_t B, bint reset_after, bint training, int num_threads):
    """x (T*B, I) time-major; z (T*B, 3H) scratch, the gates (z, r, hh) when training;
    hs ((T+1)*B, H), h_0 in the first B rows. reset_after: q (T*B or B, 3H) receives
    h U (+ b_rec for h), kept per step when training; rbias is the recurrent bias.
    Otherwise q (B, 2H) and qh (B, H) are scratch and rh (T*B or B, H) receives r * h."""
    cdef Py_ssize_t I = x.shape[1], H = hs.shape[1], G = 3 * H, BH = B * H, t, s
    cdef const floating* kr = &rkernel[0, 0]
    cdef fastnn_rnn_args a
    cdef bint dbl = floating is double
    with nogil:
        zero_args(&a, H)
        a.bias = &bias[0]
        a.store = training
        fwd_product(T * B, G, I, &x[0, 0] if I else NULL, I, &kernel[0, 0] if I else NULL,
                    G, False, &z[0, 0], G, num_threads)
        for t in range(T):
            s = t if training else 0
            a.z = &z[t * B, 0]
            a.h_prev = &hs[t * B, 0]
            a.h_out = &hs[(t + 1) * B, 0]
            if reset_after:
                fwd_product(B, G, H, &hs[t * B, 0], H, kr, G, False, &q[s * B, 0], G,
                            num_threads)
                a.q = &q[s * B, 0]
                a.bias2 = &rbias[0]
                run_pass(dbl, FASTNN_GRU_FWD, &a, B, num_threads)
            else:
                fwd_product(B, 2 * H, H, &hs[t * B, 0], H, kr, G, False, &q[0, 0], 2 * H,
                            num_threads)
                a.q = &q[0, 0]
                a.rh = &rh[s * B, 0]
                run_pass(dbl, FASTNN_GRU0_FWD_A, &a, B, num_threads)
                fwd_product(B, H, H, &rh[s * B, 0], H, kr + 2 * H, G, False, &qh[0, 0], H,
                            num_threads)
                a.q = &qh[0, 0]
                run_pass(dbl, FASTNN_GRU0_FWD_B, &a, B, num_threads)


def gru_backward(const floating[:, ::1] x, const floating[:, ::1] kernel,
                 const floating[:, ::1] rkernel, const floating[:, ::1] gates,
                 const floating[:, ::1] q, const floating[:, ::1] rh,
                 const floating[:, ::1] hs, const floating[::1] g, Py_ssize_t g_step,
                 Py_ssize_t ldg, floating[:, ::1] dh, floating[:, ::1] dz, floating[:, ::1] dq,
                 floating[:, ::1] grad_x, floating[:, ::1] grad_kernel,
                 floating[:, ::1] grad_rkernel, floating[:, ::1] grad_bias,
                 Py_ssize_t T, Py_ssize_t B, bint reset_after, int num_threads):
    """BPTT over the cache of :func:`gru_forward` (training). dh: in the gradient of
    h_T, out that of h_0. dz (T*B, 3H) scratch; dq (T*B, 3H) scratch with reset_after,
    else (B, H). grad_bias (2, 3H) with reset_after, else (1, 3H)."""
    cdef Py_ssize_t I = x.shape[1], H = hs.shape[1], G = 3 * H, N = T * B, t
    cdef const floating* kr = &rkernel[0, 0]
    cdef fastnn_rnn_args a
    cdef bint dbl = floating is double
    with nogil:
        zero_args(&a, H)
        a.ldg = ldg
        a.dh = &dh[0, 0]
        for t in range(T - 1, -1, -1):
            a.z = <void*>&gates[t * B, 0]
            a.h_prev = &hs[t * B, 0]
            a.g = &g[t * g_step]
            a.dz = &dz[t * B, 0]
            if reset_after:
                a.q = <void*>&q[t * B, 0]
                a.dq = &dq[t * B, 0]
                run_pass(dbl, FASTNN_GRU_BWD, &a, B, num_threads)
                gemm(False, True, B, H, G, <floating>1, &dq[t * B, 0], G, kr, G,
                     <floating>1, &dh[0, 0], H)
            else:
                run_pass(dbl, FASTNN_GRU0_BWD_A, &a, B, num_threads)
                gemm(False, True, B, H, H, <floating>1, &dz[t * B, 2 * H], G, kr + 2 * H, G,
                     <floating>0, &dq[0, 0], H)
                a.dq = &dq[0, 0]
                run_pass(dbl, FASTNN_GRU0_BWD_B, &a, B, num_threads)
                gemm(False, True, B, H, 2 * H, <floating>1, &dz[t * B, 0], G, kr, G,
                     <floating>1, &dh[0, 0], H)
        if reset_after:
            weight_grads(&x[0, 0] if I else NULL, N, I, &kernel[0, 0] if I else NULL,
                         &hs[0, 0], H, &dz[0, 0], G, &grad_kernel[0, 0] if I else NULL, NULL,
                         &grad_bias[0, 0], &grad_x[0, 0] if I else NULL, num_threads)
            gemm(True, False, H, G, N, <floating>1, &hs[0, 0], H, &dq[0, 0], G,
                 <floating>0, &grad_rkernel[0, 0], G)
            column_sums(&dq[0, 0], N, G, G, &grad_bias[1, 0], num_threads)
        else:
            weight_grads(&x[0, 0] if I else NULL, N, I, &kernel[0, 0] if I else NULL,
                         &hs[0, 0], H, &dz[0, 0], G, &grad_kernel[0, 0] if I else NULL, NULL,
                         &grad_bias[0, 0], &grad_x[0, 0] if I else NULL, num_threads)
            gemm(True, False, H, 2 * H, N, <floating>1, &hs[0, 0], H, &dz[0, 0], G,
                 <floating>0, &grad_rkernel[0, 0], G)
            gemm(True, False, H, H, N, <floating>1, &rh[0, 0], H, &dz[0, 2 * H], G,
                 <floating>0, &grad_rkernel[0, 2 * H], G)


# ---------------------------------------------------------------- SimpleRNN
def rnn_forward(const floating[:, ::1] x, const floating[:, ::1] kernel,
                const floating[:, ::1] rkernel, const floating[::1] bias,
                floating[:, ::1] z, floating[:, ::1] hs, Py_ssize_t T, Py_ssize_t B,
                bint relu, int num_threads):
    """x (T*B, I) time-major; z (T*B, H) scratch; hs ((T+1)*B, H), h_0 in the first B rows."""
    cdef Py_ssize_t I = x.shape[1], H = hs.shape[1], t
    cdef fastnn_rnn_args a
    with nogil:
        zero_args(&a, H)
        a.bias = &bias[0]
        a.relu = relu
        fwd_product(T * B, H, I, &x[0, 0] if I else NULL, I, &kernel[0, 0] if I else NULL,
                    H, False, &z[0, 0], H, num_threads)
        for t in range(T):
            fwd_product(B, H, H, &hs[t * B, 0], H, &rkernel[0, 0], H, True, &z[t * B, 0], H,
                        num_threads)
            a.z = &z[t * B, 0]
            a.h_out = &hs[(t + 1) * B, 0]
            run_pass(floating is double, FASTNN_RNN_FWD, &a, B, num_threads)


def rnn_backward(const floating[:, ::1] x, const floating[:, ::1] kernel,
                 const floating[:, ::1] rkernel, const floating[:, ::1] hs,
                 const floating[::1] g, Py_ssize_t g_step, Py_ssize_t ldg,
                 floating[:, ::1] dh, floating[:, ::1] dz, floating[:, ::1] grad_x,
                 floating[:, ::1] grad_kernel, floating[:, ::1] grad_rkernel,
                 floating[::1] grad_bias, Py_ssize_t T, Py_ssize_t B, bint relu,
                 int num_threads):
    """BPTT over the states hs of :func:`rnn_forward`; dh in/out as for the LSTM."""
    cdef Py_ssize_t I = x.shape[1], H = hs.shape[1], t
    cdef fastnn_rnn_args a
    with nogil:
        zero_args(&a, H)
        a.ldg = ldg
        a.relu = relu
        a.dh = &dh[0, 0]
        for t in range(T - 1, -1, -1):
            a.h_out = <void*>&hs[(t + 1) * B, 0]
            a.g = &g[t * g_step]
            a.dz = &dz[t * B, 0]
            run_pass(floating is double, FASTNN_RNN_BWD, &a, B, num_threads)
            gemm(False, True, B, H, H, <floating>1, &dz[t * B, 0], H, &rkernel[0, 0], H,
                 <floating>0, &dh[0, 0], H)
        weight_grads(&x[0, 0] if I else NULL, T * B, I, &kernel[0, 0] if I else NULL,
                     &hs[0, 0], H, &dz[0, 0], H, &grad_kernel[0, 0] if I else NULL,
                     &grad_rkernel[0, 0], &grad_bias[0], &grad_x[0, 0] if I else NULL,
                     num_threads)
