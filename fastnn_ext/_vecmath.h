/* Vectorisable exp, sigmoid and tanh shared by the elementwise kernels (_activations)
 * and the recurrent gate passes (_recurrent): static, always inlined, so each caller's
 * SIMD variant (gcc target attribute) compiles its own copy. */
#ifndef FASTNN_VECMATH_H
#define FASTNN_VECMATH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_portable.h"

#define FASTNN_VM_INLINE FASTNN_ALWAYS_INLINE

/* exp that gcc vectorises: no libm call, no branch (selects only), no table.
 * Cody-Waite reduction x = n ln2 + r with |r| <= ln2/2 (n found by the
 * round-to-integer "shifter" trick, which needs no SSE4.1 rounding), a polynomial
 * for e^r (Cephes' minimax 1 + r + r^2 P5(r) for float; the Taylor series to degree
 * 13 for double, truncation 4e-18), and 2^n built in the exponent bits, so that
 * results in the subnormal range are rounded once and correctly. Clamping the
 * argument keeps the integer arithmetic in range: exp(x >= 89) overflows to +inf and
 * exp(x <= -104) underflows to 0 (float; 710 / -746 for double) by themselves.
 * Measured max error 1.01 ulp (float, 3e7 random arguments against libm in double),
 * 1.2 ulp (double, against long double).
 *
 * fastnn_exp_poly_* is the reduction and the polynomial (e^r, and n through *ni);
 * three scalings of it follow. fastnn_exp_*: any x, 2^n as two factors (n spans
 * [-150, 128]), exp(NaN) = NaN by a last select. fastnn_expneg_* (x <= 0, the
 * sigmoid's exp(-|v|)) and fastnn_exppos_* (x >= 0, tanh's exp(2|v|)): n stays within
 * 32 (64 for double) of the normal range, so p * 2^(n + 32) (2^(n - 32)) is exact
 * and one product with the constant 2^-32 (2^32) rounds it -- to the value the two
 * factors round to: the same bits (checked over every float32 argument), in fewer
 * instructions. Their one clamp is written so that a NaN passes it (a false
 * comparison keeps x) and propagates through the arithmetic: no select. */
FASTNN_VM_INLINE float fastnn_exp_poly_f32(float xc, int32_t *ni) {
    const float shifter = 12582912.0f;            /* 1.5 * 2^23 */
    float t = xc * 1.44269504088896341f + shifter;
    float n = t - shifter;
    int32_t ti;
    memcpy(&ti, &t, sizeof ti);
    *ni = ti - 0x4B400000;                        /* bits of the shifter */
    float r = xc - n * 0.693359375f;              /* ln2 high part: exact product */
    r = r - n * -2.12194440e-4f;                  /* ln2 low part */
    /* Cephes expf: minimax on |r| <= ln2/2, e^r = 1 + r + r^2 P(r). */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    return p * (r * r) + r + 1.0f;
}

FASTNN_VM_INLINE float fastnn_pow2_f32(int32_t e) {
    int32_t b = (e + 127) << 23;
    float s;
    memcpy(&s, &b, sizeof s);
    return s;
}

FASTNN_VM_INLINE float fastnn_exp_f32(float x) {
    float xc = x < 89.0f ? x : 89.0f;
    xc = xc > -104.0f ? xc : -104.0f;
    int32_t ni;
    float p = fastnn_exp_poly_f32(xc, &ni);
    int32_t n1 = ni >> 1;
    float y = (p * fastnn_pow2_f32(n1)) * fastnn_pow2_f32(ni - n1);
    return x != x ? x : y;
}

FASTNN_VM_INLINE double fastnn_exp_poly_f64(double xc, int64_t *ni) {
    const double shifter = 6755399441055744.0;    /* 1.5 * 2^52 */
    double t = xc * 1.4426950408889634 + shifter;
    double n = t - shifter;
    int64_t ti;
    memcpy(&ti, &t, sizeof ti);
    *ni = ti - (int64_t)0x4338000000000000LL;
    double r = xc - n * 6.93147180369123816490e-01;   /* fdlibm ln2_hi / ln2_lo */
    r = r - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;                     /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    return p * r + 1.0;
}

FASTNN_VM_INLINE double fastnn_pow2_f64(int64_t e) {
    uint64_t b = (uint64_t)(e + 1023) << 52;
    double s;
    memcpy(&s, &b, sizeof s);
    return s;
}

FASTNN_VM_INLINE double fastnn_exp_f64(double x) {
    double xc = x < 710.0 ? x : 710.0;
    xc = xc > -746.0 ? xc : -746.0;
    int64_t ni;
    double p = fastnn_exp_poly_f64(xc, &ni);
    /* n is in [-1076, 1024]; halve it with a logical shift of a non-negative
     * number (SSE2 and AVX2 have no 64-bit arithmetic shift). */
    uint64_t m = (uint64_t)(ni + 1100);
    int64_t n1 = (int64_t)(m >> 1) - 550;
    double y = (p * fastnn_pow2_f64(n1)) * fastnn_pow2_f64(ni - n1);
    return x != x ? x : y;
}

/* The one-sided forms, LO / HI the clamps of fastnn_exp_*, SH the shift (32 or 64)
 * and 2^-SH, 2^SH their constants. */
#define FASTNN_VM_ONE_SIDED(T, I, S, LO, HI, SH, DOWN, UP)                           \
FASTNN_VM_INLINE T fastnn_expneg_##S(T x) {                                          \
    I ni;                                                                             \
    T p = fastnn_exp_poly_##S(x < LO ? LO : x, &ni);                                  \
    return (p * fastnn_pow2_##S(ni + SH)) * DOWN;                                     \
}                                                                                     \
FASTNN_VM_INLINE T fastnn_exppos_##S(T x) {                                          \
    I ni;                                                                             \
    T p = fastnn_exp_poly_##S(x > HI ? HI : x, &ni);                                  \
    return (p * fastnn_pow2_##S(ni - SH)) * UP;                                       \
}
FASTNN_VM_ONE_SIDED(float, int32_t, f32, -104.0f, 89.0f, 32, 2.3283064365386963e-10f,
                    4294967296.0f)
FASTNN_VM_ONE_SIDED(double, int64_t, f64, -746.0, 710.0, 64, 5.421010862427522e-20,
                    18446744073709551616.0)

/* |v| and -|v| by the sign bit: one instruction each (a NaN stays a NaN), where the
 * select v < 0 ? -v : v costs a compare, a negation and a blend; and x with the
 * sign of v, for x >= 0 (an OR of v's sign bit). */
#define FASTNN_VM_SIGN(T, U, S, SIGN)                                                  \
FASTNN_VM_INLINE T fastnn_abs_##S(T v) {                                             \
    U u; memcpy(&u, &v, sizeof u); u &= ~(U)SIGN; memcpy(&v, &u, sizeof v); return v; \
}                                                                                     \
FASTNN_VM_INLINE T fastnn_negabs_##S(T v) {                                          \
    U u; memcpy(&u, &v, sizeof u); u |= (U)SIGN; memcpy(&v, &u, sizeof v); return v;  \
}                                                                                     \
FASTNN_VM_INLINE T fastnn_signof_##S(T x, T v) {                                     \
    U u, w; memcpy(&u, &x, sizeof u); memcpy(&w, &v, sizeof w);                       \
    u |= w & (U)SIGN; memcpy(&x, &u, sizeof x); return x;                             \
}
FASTNN_VM_SIGN(float, uint32_t, f32, 0x80000000u)
FASTNN_VM_SIGN(double, uint64_t, f64, 0x8000000000000000ull)

#define FASTNN_VM_DEFINE(T, S)                                                        \
FASTNN_VM_INLINE T fastnn_sigmoid_##S(T v) {                                         \
    /* e = exp(-|v|) never overflows; 1/(1+e) for v >= 0, e/(1+e) for v < 0 keep   \
     * full relative accuracy in both tails (subnormal results included). */       \
    T e = fastnn_expneg_##S(fastnn_negabs_##S(v));                                    \
    T r = 1 / (1 + e);                                                                \
    return v >= 0 ? r : e * r;                                                        \
}                                                                                     \
FASTNN_VM_INLINE T fastnn_tanh_##S(T v) {                                            \
    /* |v| >= 0.1: 1 - 2/(exp(2|v|) + 1) with the sign of v (<= ~10 ulp of           \
     * cancellation at the switch). |v| < 0.1: the Taylor series to v^13 (truncation \
     * 2e-17 relative) as v * (1 + ...), so tanh(-0.0) = -0.0. Both computed, one    \
     * selected; NaN falls through to the exp form. */                               \
    T a = fastnn_abs_##S(v);                                                          \
    T z = v * v;                                                                      \
    T big = 1 - 2 / (fastnn_exppos_##S(2 * a) + 1);                                   \
    T small = v * (1 + z * ((T)(-1.0 / 3) + z * ((T)(2.0 / 15) + z * ((T)(-17.0 / 315) \
              + z * ((T)(62.0 / 2835) + z * ((T)(-1382.0 / 155925)                    \
              + z * (T)(21844.0 / 6081075)))))));                                     \
    big = fastnn_signof_##S(big, v);   /* big >= 0 (or NaN) */                        \
    return a < (T)0.1 ? small : big;                                                  \
}

FASTNN_VM_DEFINE(float, f32)
FASTNN_VM_DEFINE(double, f64)

#endif
