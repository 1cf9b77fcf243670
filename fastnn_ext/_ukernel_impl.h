/* One instantiation of the register-blocked GEMM (the convolutions, the products of the
 * banded, locally connected and recurrent kernels: ugemm and pgemm in _ukernel.h).
 * Included by _ukernel.h with UK_NAME, UK_T (float/double), UK_VW (lanes per
 * vector), UK_MR (rows per block), UK_NV (vectors per row block) and UK_TARGET set.
 *
 * C (M x N, row stride ldc) = A (M x K) @ B (K x N) [+ C] [+ bias] where
 *   A[m, k] = a[arow(m) + aoff[k]]   and   B[k, n] = b[boff[k] + n],
 * arow(m) = amoff[m] when a row table is given, else m * sam.
 * The offset tables express plain strides (aoff[k] = k, boff[k] = k * ldb) as well
 * as implicit im2col: for a stride-1 convolution B's row k is the padded image
 * shifted by kernel tap k, so the patches are never copied. Neither operand is
 * repacked: B's rows are read as vectors, A's elements are broadcast. */
/* K runs in chunks of UK_KC: each output element is the sum over its first chunk (k
 * ascending), plus the biases and C, then the sum over each later chunk added to that
 * running value -- an order fixed by K alone, whatever M, N, the row block or the
 * thread count. A chunk of a panel (UK_KC x 64 bytes x UK_NV) serves every row block
 * before the next chunk is read. Measured on Zen 5 (float32, 2 threads, ms,
 * interleaved A/B; with the NHWC weight blocks of _conv.pyx): N1 C256 14x14 K256 3x3
 * NHWC with the whole K 0.76 (0.82 without the blocks in that run), in chunks of
 * 128 / 256 / 512 0.61 / 0.59 / 0.51 (0.91 without blocks or chunks in that run);
 * NCHW 0.60 without chunks, 0.62 / 0.61 / 0.60; N1 C512 7x7 NHWC 0.88 without
 * either, 0.77 / 0.71 / 0.70. */
#ifndef UK_KC
#define UK_KC 512
#endif
#ifdef FASTNN_GNU_C
typedef UK_T UK_CAT(UK_NAME, _vec) __attribute__((vector_size(UK_VW * sizeof(UK_T)), aligned(sizeof(UK_T))));
#endif
#define UK_BMR UK_MR
#define UK_BNAME UK_CAT(UK_NAME, _block)
#include "_ukernel_block.h"
#undef UK_BMR
#undef UK_BNAME
#define UK_BMR (UK_MR / 2)
#define UK_BNAME UK_CAT(UK_NAME, _half)
#include "_ukernel_block.h"
#undef UK_BMR
#undef UK_BNAME

/* One row block of mr rows: a last block of at most half the rows runs the
 * half-height block (Wo = 28 or 14 pixels per row cost 4 full blocks of 8 for 3.5 or
 * 2); both sum in the same order. */
static inline UK_TARGET void UK_CAT(UK_NAME, _rows)(
        ptrdiff_t K, const UK_T *a, ptrdiff_t sam, const ptrdiff_t *amoff, const ptrdiff_t *aoff,
        const UK_T *b, const ptrdiff_t *boff, UK_T *c, ptrdiff_t ldc, int mr,
        int accumulate, const UK_T *bias_row, const UK_T *bias_col)
{
    if (mr <= UK_MR / 2)
        UK_CAT(UK_NAME, _half)(K, a, sam, amoff, aoff, b, boff, c, ldc, mr, accumulate,
                               bias_row, bias_col);
    else
        UK_CAT(UK_NAME, _block)(K, a, sam, amoff, aoff, b, boff, c, ldc, mr, accumulate,
                                bias_row, bias_col);
}

static UK_TARGET void UK_NAME(
        ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const UK_T *a, ptrdiff_t sam,
        const ptrdiff_t *amoff, const ptrdiff_t *aoff, const UK_T *b, const ptrdiff_t *boff, UK_T *c, ptrdiff_t ldc,
        int accumulate, const UK_T *bias_row, const UK_T *bias_col, UK_T *scratch)
{
    /* scratch: FASTNN_UGEMM_SCRATCH(K) elements, for the last, partial column panel. */
    const ptrdiff_t NR = UK_VW * UK_NV;
    ptrdiff_t n0, m0, k, k0, j;
    ptrdiff_t *poff = (ptrdiff_t *)(scratch + K * NR + UK_MR * NR + NR);
    for (n0 = 0; n0 < N; n0 += NR) {
        ptrdiff_t nr = N - n0 < NR ? N - n0 : NR;
        const UK_T *bp = b + n0;
        const ptrdiff_t *bo = boff;
        const UK_T *bc = bias_col ? bias_col + n0 : NULL;
        UK_T *cbuf = NULL;
        if (nr < NR) {
            /* Zero-pad the partial panel (and its bias) to the full width. */
            UK_T *panel = scratch;
            cbuf = scratch + K * NR;
            /* Whole vectors copied as vectors, the one straddling nr zeroed and
             * then filled: a select per element (and a plain copy loop, with its
             * alias checks per row) cost most of a small image's product. */
            for (k = 0; k < K; k++) {
                const UK_T *src = b + boff[k] + n0;
                UK_T *dst = panel + k * NR;
                int v;
                for (v = 0; v < UK_NV; v++) {
                    ptrdiff_t j0 = (ptrdiff_t)v * UK_VW;
                    UK_T t[UK_VW] = {0};   /* fixed-size copies: vector moves */
                    if (j0 + UK_VW <= nr)
                        memcpy(&t, src + j0, sizeof t);
                    memcpy(dst + j0, &t, sizeof t);
                    if (j0 < nr && j0 + UK_VW > nr)
                        for (j = j0; j < nr; j++)
                            dst[j] = src[j];
                }
                poff[k] = k * NR;
            }
            bp = panel;
            bo = poff;
            if (bias_col) {
                UK_T *bpad = cbuf + UK_MR * NR;
                for (j = 0; j < NR; j++)
                    bpad[j] = j < nr ? bias_col[n0 + j] : (UK_T)0;
                bc = bpad;
            }
        }
        if (!cbuf) {
            /* K in chunks of UK_KC, each run over every row block before the next. */
            for (k0 = 0; k0 == 0 || k0 < K; k0 += UK_KC) {
                ptrdiff_t kb = K - k0 < UK_KC ? K - k0 : UK_KC;
                int first = k0 == 0;
                for (m0 = 0; m0 < M; m0 += UK_MR) {
                    int mr = (int)(M - m0 < UK_MR ? M - m0 : UK_MR);
                    const UK_T *ap = amoff ? a : a + m0 * sam;
                    const ptrdiff_t *am = amoff ? amoff + m0 : NULL;
                    const UK_T *br = first && bias_row ? bias_row + m0 : NULL;
                    UK_CAT(UK_NAME, _rows)(kb, ap, sam, am, aoff + k0, bp, bo + k0,
                                           c + m0 * ldc + n0, ldc, mr, accumulate || !first, br,
                                           first ? bc : NULL);
                }
            }
            continue;
        }
        /* The last, partial panel: one row block at a time through the padded output
         * buffer, its K chunks summed in the same order as above. */
        for (m0 = 0; m0 < M; m0 += UK_MR) {
            int mr = (int)(M - m0 < UK_MR ? M - m0 : UK_MR);
            const UK_T *ap = amoff ? a : a + m0 * sam;
            const ptrdiff_t *am = amoff ? amoff + m0 : NULL;
            const UK_T *br = bias_row ? bias_row + m0 : NULL;
            int i;
            for (i = 0; i < mr; i++)
                for (j = 0; j < NR; j++)
                    cbuf[i * NR + j] = accumulate && j < nr ? c[(m0 + i) * ldc + n0 + j] : (UK_T)0;
            for (k0 = 0; k0 == 0 || k0 < K; k0 += UK_KC) {
                ptrdiff_t kb = K - k0 < UK_KC ? K - k0 : UK_KC;
                int first = k0 == 0;
                UK_CAT(UK_NAME, _rows)(kb, ap, sam, am, aoff + k0, bp, bo + k0, cbuf, NR, mr,
                                       accumulate || !first, first ? br : NULL,
                                       first ? bc : NULL);
            }
            for (i = 0; i < mr; i++)
                for (j = 0; j < nr; j++)
                    c[(m0 + i) * ldc + n0 + j] = cbuf[i * NR + j];
        }
    }
}
