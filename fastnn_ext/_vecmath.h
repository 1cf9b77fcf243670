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
 * 13 for double, truncation 4e-18), and 2^n built in the exponent bits as two
 * factors, so that results in
 * the subnormal range are rounded once and correctly. Clamping the argument keeps
 * the integer arithmetic in range: exp(x >= 89) overflows to +inf and
 * exp(x <= -104) underflows to 0 (float; 710 / -746 for double) by themselves.
 * exp(NaN) is NaN through the last select. Measured max error 1.01 ulp (float,
 * 3e7 random arguments against libm in double), 1.2 ulp (double, against long
 * double). */
FASTNN_VM_INLINE float fastnn_exp_f32(float x) {
    const float shifter = 12582912.0f;            /* 1.5 * 2^23 */
    float xc = x < 89.0f ? x : 89.0f;
    xc = xc > -104.0f ? xc : -104.0f;
    float t = xc * 1.44269504088896341f + shifter;
    float n = t - shifter;
    int32_t ti;
    memcpy(&ti, &t, sizeof ti);
    int32_t ni = ti - 0x4B400000;                 /* bits of the shifter */
    float r = xc - n * 0.693359375f;              /* ln2 high part: exact product */
    r = r - n * -2.12194440e-4f;                  /* ln2 low part */
    /* Cephes expf: minimax on |r| <= ln2/2, e^r = 1 + r + r^2 P(r). */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t n1 = ni >> 1;
    int32_t n2 = ni - n1;
    int32_t b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    float y = (p * s1) * s2;
    return x != x ? x : y;
}

FASTNN_VM_INLINE double fastnn_exp_f64(double x) {
    const double shifter = 6755399441055744.0;    /* 1.5 * 2^52 */
    double xc = x < 710.0 ? x : 710.0;
    xc = xc > -746.0 ? xc : -746.0;
    double t = xc * 1.4426950408889634 + shifter;
    double n = t - shifter;
    int64_t ti;
    memcpy(&ti, &t, sizeof ti);
    int64_t ni = ti - (int64_t)0x4338000000000000LL;
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
    p = p * r + 1.0;
    /* n is in [-1076, 1024]; halve it with a logical shift of a non-negative
     * number (SSE2 and AVX2 have no 64-bit arithmetic shift). */
    uint64_t m = (uint64_t)(ni + 1100);
    int64_t n1 = (int64_t)(m >> 1) - 550;
    int64_t n2 = ni - n1;
    uint64_t b1 = (uint64_t)(n1 + 1023) << 52, b2 = (uint64_t)(n2 + 1023) << 52;
    double s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    double y = (p * s1) * s2;
    return x != x ? x : y;
}

#define FASTNN_VM_DEFINE(T, S)                                                        \
FASTNN_VM_INLINE T fastnn_sigmoid_##S(T v) {                                         \
    /* e = exp(-|v|) never overflows; 1/(1+e) for v >= 0, e/(1+e) for v < 0 keep   \
     * full relative accuracy in both tails (subnormal results included). */       \
    T a = v < 0 ? -v : v;                                                             \
    T e = fastnn_exp_##S(-a);                                                         \
    T r = 1 / (1 + e);                                                                \
    return v >= 0 ? r : e * r;                                                        \
}                                                                                     \
FASTNN_VM_INLINE T fastnn_tanh_##S(T v) {                                            \
    /* |v| >= 0.1: 1 - 2/(exp(2|v|) + 1) with the sign of v (<= ~10 ulp of           \
     * cancellation at the switch). |v| < 0.1: the Taylor series to v^13 (truncation \
     * 2e-17 relative) as v * (1 + ...), so tanh(-0.0) = -0.0. Both computed, one    \
     * selected; NaN falls through to the exp form. */                               \
    T a = v < 0 ? -v : v;                                                             \
    T z = v * v;                                                                      \
    T big = 1 - 2 / (fastnn_exp_##S(2 * a) + 1);                                      \
    T small = v * (1 + z * ((T)(-1.0 / 3) + z * ((T)(2.0 / 15) + z * ((T)(-17.0 / 315) \
              + z * ((T)(62.0 / 2835) + z * ((T)(-1382.0 / 155925)                    \
              + z * (T)(21844.0 / 6081075)))))));                                     \
    big = v < 0 ? -big : big;                                                         \
    return a < (T)0.1 ? small : big;                                                  \
}

FASTNN_VM_DEFINE(float, f32)
FASTNN_VM_DEFINE(double, f64)

#endif
