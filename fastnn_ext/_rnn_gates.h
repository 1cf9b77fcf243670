/* Fused gate passes of the recurrent kernels (fastnn_ext/_recurrent.pyx). */
#ifndef FASTNN_RNN_GATES_H
#define FASTNN_RNN_GATES_H

#include <stddef.h>
#include "_simd.h"
#include "_vecmath.h"  /* fastnn_sigmoid_*, fastnn_tanh_* */

/* For a time loop run by one thread team from start to end: a barrier (orphaned:
 * it binds to the team of the calling thread, a no-op outside any) and the team's
 * size. */
#ifdef _OPENMP
#include <omp.h>
static void fastnn_team_barrier(void) {
    #pragma omp barrier
}
static int fastnn_team_size(void) { return omp_get_num_threads(); }
#else
static void fastnn_team_barrier(void) {}
static int fastnn_team_size(void) { return 1; }
#endif

enum {
    FASTNN_LSTM_FWD, FASTNN_LSTM_BWD,
    FASTNN_GRU_FWD, FASTNN_GRU_BWD,             /* reset_after=True */
    FASTNN_GRU0_FWD_A, FASTNN_GRU0_FWD_B,       /* reset_after=False, before / after */
    FASTNN_GRU0_BWD_A, FASTNN_GRU0_BWD_B,       /*   the product (r * h) @ U_h */
    FASTNN_RNN_FWD, FASTNN_RNN_BWD,
    FASTNN_MATVEC                               /* z (+)= [x, h_prev] @ w, rows of G */
};

/* The operands of one step's gate pass, rows [r0, r1) of the batch. Gate rows are
 * contiguous, G*H wide; per-row state rows H wide; g (the gradient arriving from the
 * step's output) has row stride ldg, 0 meaning one row of zeros. Pointers are void*
 * so that one struct serves both dtypes. */
typedef struct {
    ptrdiff_t H, ldg;
    void *z, *q, *h_out, *c_out, *tc, *rh, *dh, *dc, *dz, *dq;
    const void *bias, *bias2, *h_prev, *c_prev, *g, *x, *w;
    ptrdiff_t n_in, G;
    double forget_bias;
    int store, relu, acc;
} fastnn_rnn_args;

#define FASTNN_RNN_INLINE FASTNN_ALWAYS_INLINE
#define RP(T, p) ((T* __restrict)(p))
/* FASTNN_IVDEP (_portable.h) on the gate loops: the rows a pass reads and writes
 * never overlap except element for element (an in-place c), but they are too many
 * for gcc's run-time alias checks (at most 10) and gcc does not take restrict from
 * local pointers: without it the gate loops stay scalar (measured 3x slower on
 * float32). */

#define FASTNN_RNN_DEFINE(T, S)                                                       \
FASTNN_RNN_INLINE void fastnn_lstm_fwd_##S(const fastnn_rnn_args* a, ptrdiff_t r) {   \
    /* c_prev and c_out may be the same row (an in-place cell): each element is read \
     * before it is written, so they are the only pointers not marked restrict. */   \
    ptrdiff_t H = a->H, k;                                                            \
    T* __restrict z = RP(T, a->z) + r * 4 * H;                                        \
    const T* __restrict b = (const T*)a->bias;                                        \
    const T* cp = (const T*)a->c_prev + r * H;                                        \
    T* co = (T*)a->c_out + r * H;                                                     \
    T* __restrict ho = RP(T, a->h_out) + r * H;                                       \
    T fb = (T)a->forget_bias;                                                         \
    T* __restrict tc = RP(T, a->tc) + r * H;                                          \
    int store = a->store;                                                             \
    FASTNN_IVDEP                                                                      \
    for (k = 0; k < H; k++) {                                                         \
        T si = fastnn_sigmoid_##S(z[k] + b[k]);                                       \
        T tj = fastnn_tanh_##S(z[H + k] + b[H + k]);                                  \
        T sf = fastnn_sigmoid_##S((z[2 * H + k] + b[2 * H + k]) + fb);                \
        T so = fastnn_sigmoid_##S(z[3 * H + k] + b[3 * H + k]);                       \
        T cn = cp[k] * sf + si * tj;                                                  \
        T t = fastnn_tanh_##S(cn);                                                    \
        co[k] = cn; ho[k] = t * so;                                                   \
        if (store) {                                                                  \
            z[k] = si; z[H + k] = tj; z[2 * H + k] = sf; z[3 * H + k] = so; tc[k] = t;\
        }                                                                             \
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_lstm_bwd_##S(const fastnn_rnn_args* a, ptrdiff_t r) {   \
    /* z holds the gate activations (i, j, f, o), tc = tanh(c_new). dc: in the     \
     * gradient reaching c_new from the next step, out the one reaching c_prev. */  \
    ptrdiff_t H = a->H, k;                                                            \
    const T* __restrict z = (const T*)a->z + r * 4 * H;                               \
    const T* __restrict tc = (const T*)a->tc + r * H;                                 \
    const T* __restrict cp = (const T*)a->c_prev + r * H;                             \
    const T* __restrict g = (const T*)a->g + r * a->ldg;                              \
    const T* __restrict dh = (const T*)a->dh + r * H;                                 \
    T* __restrict dc = RP(T, a->dc) + r * H;                                          \
    T* __restrict dz = RP(T, a->dz) + r * 4 * H;                                      \
    FASTNN_IVDEP                                                                      \
    for (k = 0; k < H; k++) {                                                         \
        T si = z[k], tj = z[H + k], sf = z[2 * H + k], so = z[3 * H + k], t = tc[k];  \
        T d = dh[k] + g[k];                                                           \
        T dcn = dc[k] + d * so * ((1 - t) * (1 + t));                                 \
        dz[k] = dcn * tj * (si * (1 - si));                                           \
        dz[H + k] = dcn * si * ((1 - tj) * (1 + tj));                                 \
        dz[2 * H + k] = dcn * cp[k] * (sf * (1 - sf));                                \
        dz[3 * H + k] = d * t * (so * (1 - so));                                      \
        dc[k] = dcn * sf;                                                             \
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_gru_fwd_##S(const fastnn_rnn_args* a, ptrdiff_t r) {    \
    /* reset_after: z = x W + b_in, q = h U (+ b_rec here). Stores (z, r, hh) in z   \
     * and h U_h + b_rec_h in q for the backward. */                                  \
    ptrdiff_t H = a->H, k;                                                            \
    T* __restrict z = RP(T, a->z) + r * 3 * H;                                        \
    T* __restrict q = RP(T, a->q) + r * 3 * H;                                        \
    const T* __restrict b = (const T*)a->bias;                                        \
    const T* __restrict b2 = (const T*)a->bias2;                                      \
    const T* __restrict hp = (const T*)a->h_prev + r * H;                             \
    T* __restrict ho = RP(T, a->h_out) + r * H;                                       \
    int store = a->store;                                                             \
    FASTNN_IVDEP                                                                      \
    for (k = 0; k < H; k++) {                                                         \
        T qh = q[2 * H + k] + b2[2 * H + k];                                          \
        T zg = fastnn_sigmoid_##S((z[k] + b[k]) + (q[k] + b2[k]));                    \
        T rg = fastnn_sigmoid_##S((z[H + k] + b[H + k]) + (q[H + k] + b2[H + k]));    \
        T hh = fastnn_tanh_##S((z[2 * H + k] + b[2 * H + k]) + rg * qh);              \
        ho[k] = zg * hp[k] + (1 - zg) * hh;                                           \
        if (store) { z[k] = zg; z[H + k] = rg; z[2 * H + k] = hh; q[2 * H + k] = qh; }\
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_gru_bwd_##S(const fastnn_rnn_args* a, ptrdiff_t r) {    \
    /* dz: gradient of x W + b_in; dq: of h U + b_rec; dh: in the gradient from the  \
     * next step, out the direct part z * dh of the one reaching h_prev. */          \
    ptrdiff_t H = a->H, k;                                                            \
    const T* __restrict z = (const T*)a->z + r * 3 * H;                               \
    const T* __restrict q = (const T*)a->q + r * 3 * H;                               \
    const T* __restrict hp = (const T*)a->h_prev + r * H;                             \
    const T* __restrict g = (const T*)a->g + r * a->ldg;                              \
    T* __restrict dh = RP(T, a->dh) + r * H;                                          \
    T* __restrict dz = RP(T, a->dz) + r * 3 * H;                                      \
    T* __restrict dq = RP(T, a->dq) + r * 3 * H;                                      \
    FASTNN_IVDEP                                                                      \
    for (k = 0; k < H; k++) {                                                         \
        T zg = z[k], rg = z[H + k], hh = z[2 * H + k];                                \
        T d = dh[k] + g[k];                                                           \
        T dzp = d * (hp[k] - hh) * (zg * (1 - zg));                                   \
        T dhp = d * (1 - zg) * ((1 - hh) * (1 + hh));                                 \
        T drp = dhp * q[2 * H + k] * (rg * (1 - rg));                                 \
        dz[k] = dzp; dz[H + k] = drp; dz[2 * H + k] = dhp;                            \
        dq[k] = dzp; dq[H + k] = drp; dq[2 * H + k] = dhp * rg;                       \
        dh[k] = d * zg;                                                               \
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_gru0_fwd_a_##S(const fastnn_rnn_args* a, ptrdiff_t r) { \
    /* reset_after=False, first half: q = h U_zr (2H wide); z, r into z; r * h. */   \
    ptrdiff_t H = a->H, k;                                                            \
    T* __restrict z = RP(T, a->z) + r * 3 * H;                                        \
    const T* __restrict q = (const T*)a->q + r * 2 * H;                               \
    const T* __restrict b = (const T*)a->bias;                                        \
    const T* __restrict hp = (const T*)a->h_prev + r * H;                             \
    T* __restrict rh = RP(T, a->rh) + r * H;                                          \
    FASTNN_IVDEP                                                                      \
    for (k = 0; k < H; k++) {                                                         \
        T zg = fastnn_sigmoid_##S((z[k] + b[k]) + q[k]);                              \
        T rg = fastnn_sigmoid_##S((z[H + k] + b[H + k]) + q[H + k]);                  \
        z[k] = zg; z[H + k] = rg; rh[k] = rg * hp[k];                                 \
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_gru0_fwd_b_##S(const fastnn_rnn_args* a, ptrdiff_t r) { \
    /* second half: q = (r * h) U_h (H wide); hh into z, the new state. */           \
    ptrdiff_t H = a->H, k;                                                            \
    T* __restrict z = RP(T, a->z) + r * 3 * H;                                        \
    const T* __restrict q = (const T*)a->q + r * H;                                   \
    const T* __restrict b = (const T*)a->bias;                                        \
    const T* __restrict hp = (const T*)a->h_prev + r * H;                             \
    T* __restrict ho = RP(T, a->h_out) + r * H;                                       \
    FASTNN_IVDEP                                                                      \
    for (k = 0; k < H; k++) {                                                         \
        T hh = fastnn_tanh_##S((z[2 * H + k] + b[2 * H + k]) + q[k]);                 \
        T zg = z[k];                                                                  \
        ho[k] = zg * hp[k] + (1 - zg) * hh;                                           \
        z[2 * H + k] = hh;                                                            \
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_gru0_bwd_a_##S(const fastnn_rnn_args* a, ptrdiff_t r) { \
    ptrdiff_t H = a->H, k;                                                            \
    const T* __restrict z = (const T*)a->z + r * 3 * H;                               \
    const T* __restrict hp = (const T*)a->h_prev + r * H;                             \
    const T* __restrict g = (const T*)a->g + r * a->ldg;                              \
    T* __restrict dh = RP(T, a->dh) + r * H;                                          \
    T* __restrict dz = RP(T, a->dz) + r * 3 * H;                                      \
    FASTNN_IVDEP                                                                      \
    for (k = 0; k < H; k++) {                                                         \
        T zg = z[k], hh = z[2 * H + k];                                               \
        T d = dh[k] + g[k];                                                           \
        dz[k] = d * (hp[k] - hh) * (zg * (1 - zg));                                   \
        dz[2 * H + k] = d * (1 - zg) * ((1 - hh) * (1 + hh));                         \
        dh[k] = d * zg;                                                               \
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_gru0_bwd_b_##S(const fastnn_rnn_args* a, ptrdiff_t r) { \
    /* dq = d(r * h), the gradient through U_h. */                                    \
    ptrdiff_t H = a->H, k;                                                            \
    const T* __restrict z = (const T*)a->z + r * 3 * H;                               \
    const T* __restrict hp = (const T*)a->h_prev + r * H;                             \
    const T* __restrict dq = (const T*)a->dq + r * H;                                 \
    T* __restrict dh = RP(T, a->dh) + r * H;                                          \
    T* __restrict dz = RP(T, a->dz) + r * 3 * H;                                      \
    FASTNN_IVDEP                                                                      \
    for (k = 0; k < H; k++) {                                                         \
        T rg = z[H + k];                                                              \
        dz[H + k] = dq[k] * hp[k] * (rg * (1 - rg));                                  \
        dh[k] = dh[k] + dq[k] * rg;                                                   \
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_rnn_fwd_##S(const fastnn_rnn_args* a, ptrdiff_t r) {    \
    ptrdiff_t H = a->H, k;                                                            \
    const T* __restrict z = (const T*)a->z + r * H;                                   \
    const T* __restrict b = (const T*)a->bias;                                        \
    T* __restrict ho = RP(T, a->h_out) + r * H;                                       \
    if (a->relu) {  /* np.maximum(v, 0): NaN stays NaN */                             \
        FASTNN_IVDEP                                                                  \
        for (k = 0; k < H; k++) { T v = z[k] + b[k]; ho[k] = v <= 0 ? (T)0 : v; }     \
    } else {                                                                          \
        FASTNN_IVDEP                                                                  \
        for (k = 0; k < H; k++) ho[k] = fastnn_tanh_##S(z[k] + b[k]);                 \
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_rnn_bwd_##S(const fastnn_rnn_args* a, ptrdiff_t r) {    \
    /* h_out: the step's output y, from which the derivative is taken. */             \
    ptrdiff_t H = a->H, k;                                                            \
    const T* __restrict y = (const T*)a->h_out + r * H;                               \
    const T* __restrict g = (const T*)a->g + r * a->ldg;                              \
    const T* __restrict dh = (const T*)a->dh + r * H;                                 \
    T* __restrict dz = RP(T, a->dz) + r * H;                                          \
    if (a->relu) {                                                                    \
        FASTNN_IVDEP                                                                  \
        for (k = 0; k < H; k++) { T d = dh[k] + g[k]; dz[k] = y[k] > 0 ? d : (T)0; }  \
    } else {                                                                          \
        FASTNN_IVDEP                                                                  \
        for (k = 0; k < H; k++) {                                                     \
            T v = y[k];                                                               \
            dz[k] = (dh[k] + g[k]) * ((1 - v) * (1 + v));                             \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_matvec_##S(const fastnn_rnn_args* a, ptrdiff_t r) {     \
    /* One row of [x, h] @ w for a small batch, where a BLAS call costs more than     \
     * the product: w (I + H, G) streams once per row from cache, four of its rows    \
     * per sweep over z (held in L1) so that each load and store of z feeds four      \
     * FMAs. acc: add to z instead of overwriting it. */                              \
    ptrdiff_t ni = a->n_in, H = a->H, G = a->G, n = ni + H, k, j;                     \
    T* __restrict z = RP(T, a->z) + r * G;                                            \
    const T* __restrict x = (const T*)a->x + r * ni;                                  \
    const T* __restrict hp = (const T*)a->h_prev + r * H;                             \
    const T* __restrict w = (const T*)a->w;                                           \
    if (!a->acc) {                                                                    \
        for (j = 0; j < G; j++) z[j] = 0;                                             \
    }                                                                                 \
    for (k = 0; k + 4 <= n; k += 4) {                                                 \
        T v0 = k < ni ? x[k] : hp[k - ni];                                            \
        T v1 = k + 1 < ni ? x[k + 1] : hp[k + 1 - ni];                                \
        T v2 = k + 2 < ni ? x[k + 2] : hp[k + 2 - ni];                                \
        T v3 = k + 3 < ni ? x[k + 3] : hp[k + 3 - ni];                                \
        const T* __restrict w0 = w + k * G;                                           \
        FASTNN_IVDEP                                                                  \
        for (j = 0; j < G; j++)                                                       \
            z[j] = z[j] + (v0 * w0[j] + v1 * w0[G + j] + v2 * w0[2 * G + j]           \
                           + v3 * w0[3 * G + j]);                                     \
    }                                                                                 \
    for (; k < n; k++) {                                                              \
        T v = k < ni ? x[k] : hp[k - ni];                                             \
        const T* __restrict w0 = w + k * G;                                           \
        FASTNN_IVDEP                                                                  \
        for (j = 0; j < G; j++) z[j] = z[j] + v * w0[j];                              \
    }                                                                                 \
}                                                                                     \
FASTNN_RNN_INLINE void fastnn_rnn_pass_impl_##S(int op, const fastnn_rnn_args* a,    \
                                                ptrdiff_t r0, ptrdiff_t r1) {         \
    ptrdiff_t r;                                                                      \
    for (r = r0; r < r1; r++) {                                                       \
        switch (op) {                                                                 \
        case FASTNN_LSTM_FWD: fastnn_lstm_fwd_##S(a, r); break;                       \
        case FASTNN_LSTM_BWD: fastnn_lstm_bwd_##S(a, r); break;                       \
        case FASTNN_GRU_FWD: fastnn_gru_fwd_##S(a, r); break;                         \
        case FASTNN_GRU_BWD: fastnn_gru_bwd_##S(a, r); break;                         \
        case FASTNN_GRU0_FWD_A: fastnn_gru0_fwd_a_##S(a, r); break;                   \
        case FASTNN_GRU0_FWD_B: fastnn_gru0_fwd_b_##S(a, r); break;                   \
        case FASTNN_GRU0_BWD_A: fastnn_gru0_bwd_a_##S(a, r); break;                   \
        case FASTNN_GRU0_BWD_B: fastnn_gru0_bwd_b_##S(a, r); break;                   \
        case FASTNN_RNN_FWD: fastnn_rnn_fwd_##S(a, r); break;                         \
        case FASTNN_RNN_BWD: fastnn_rnn_bwd_##S(a, r); break;                         \
        case FASTNN_MATVEC: fastnn_matvec_##S(a, r); break;                           \
        }                                                                             \
    }                                                                                 \
}

FASTNN_RNN_DEFINE(float, f32)
FASTNN_RNN_DEFINE(double, f64)

typedef void (*fastnn_rnn_pass_fn)(int, const fastnn_rnn_args*, ptrdiff_t, ptrdiff_t);

#define FASTNN_RNN_VARIANT(SUFFIX, ATTR)                                              \
ATTR static void fastnn_rnn_pass_f32_##SUFFIX(int op, const fastnn_rnn_args* a,       \
                                              ptrdiff_t r0, ptrdiff_t r1)             \
{ fastnn_rnn_pass_impl_f32(op, a, r0, r1); }                                          \
ATTR static void fastnn_rnn_pass_f64_##SUFFIX(int op, const fastnn_rnn_args* a,       \
                                              ptrdiff_t r0, ptrdiff_t r1)             \
{ fastnn_rnn_pass_impl_f64(op, a, r0, r1); }

FASTNN_SIMD_VARIANTS(FASTNN_RNN_VARIANT)
typedef void fastnn_rnn_pass_f32_fn(int, const fastnn_rnn_args*, ptrdiff_t, ptrdiff_t);
typedef fastnn_rnn_pass_f32_fn fastnn_rnn_pass_f64_fn;
FASTNN_SIMD_POINTER(fastnn_rnn_pass_f32)
FASTNN_SIMD_POINTER(fastnn_rnn_pass_f64)

/* 0 = baseline, 1 = AVX2+FMA, 2 = AVX-512 (as the other kernels); cap < 0: none. */
static int fastnn_rnn_pick(void) {
    int level = fastnn_simd_level();
    FASTNN_SIMD_SET(level, fastnn_rnn_pass_f32);
    FASTNN_SIMD_SET(level, fastnn_rnn_pass_f64);
    return level;
}

#endif
