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
#ifdef FASTNN_GNU_C
typedef UK_T UK_CAT(UK_NAME, _vec) __attribute__((vector_size(UK_VW * sizeof(UK_T)), aligned(sizeof(UK_T))));

static UK_TARGET void UK_CAT(UK_NAME, _block)(
        ptrdiff_t K, const UK_T *a, ptrdiff_t sam, const ptrdiff_t *amoff, const ptrdiff_t *aoff,
        const UK_T *b, const ptrdiff_t *boff, UK_T *c, ptrdiff_t ldc, int mr,
        int accumulate, const UK_T *bias_row, const UK_T *bias_col)
{
    typedef UK_CAT(UK_NAME, _vec) V;
    V acc[UK_MR][UK_NV];
    const UK_T *arow[UK_MR];
    int i, v;
    ptrdiff_t k;
    /* Rows past mr repeat row 0: the block stays fully unrolled and those
     * results are simply not stored. */
    for (i = 0; i < UK_MR; i++)
        arow[i] = a + (amoff ? amoff[i < mr ? i : 0] : (i < mr ? i : 0) * sam);
#pragma GCC unroll 16
    for (i = 0; i < UK_MR; i++)
#pragma GCC unroll 4
        for (v = 0; v < UK_NV; v++)
            acc[i][v] = (V){0};
    for (k = 0; k < K; k++) {
        V bv[UK_NV];
        const UK_T *bk = b + boff[k];
        ptrdiff_t ak = aoff[k];
#pragma GCC unroll 4
        for (v = 0; v < UK_NV; v++)
            bv[v] = *(const V *)(bk + v * UK_VW);
#pragma GCC unroll 16
        for (i = 0; i < UK_MR; i++) {
            /* scalar - (+0) is exact for every value (-0 included), so this is a
             * plain broadcast; (V){0} + s would keep a real add for s = -0. */
            V av = arow[i][ak] - (V){0};
#pragma GCC unroll 4
            for (v = 0; v < UK_NV; v++)
                acc[i][v] += av * bv[v];
        }
    }
    for (i = 0; i < mr; i++) {
        UK_T *ci = c + i * ldc;
        UK_T br = bias_row ? bias_row[i] : (UK_T)0;
#pragma GCC unroll 4
        for (v = 0; v < UK_NV; v++) {
            V r = acc[i][v] + br;
            if (bias_col)
                r += *(const V *)(bias_col + v * UK_VW);
            if (accumulate)
                r += *(V *)(ci + v * UK_VW);
            *(V *)(ci + v * UK_VW) = r;
        }
    }
}
#else
/* Portable C (_portable.h): the block's accumulators as a plain array, the same
 * products summed in the same order (k ascending, then the biases, then C). */
static UK_TARGET void UK_CAT(UK_NAME, _block)(
        ptrdiff_t K, const UK_T *a, ptrdiff_t sam, const ptrdiff_t *amoff, const ptrdiff_t *aoff,
        const UK_T *b, const ptrdiff_t *boff, UK_T *c, ptrdiff_t ldc, int mr,
        int accumulate, const UK_T *bias_row, const UK_T *bias_col)
{
    UK_T acc[UK_MR][UK_VW * UK_NV];
    const UK_T *arow[UK_MR];
    int i, j;
    ptrdiff_t k;
    for (i = 0; i < mr; i++) {
        arow[i] = a + (amoff ? amoff[i] : i * sam);
        for (j = 0; j < UK_VW * UK_NV; j++)
            acc[i][j] = 0;
    }
    for (k = 0; k < K; k++) {
        const UK_T *bk = b + boff[k];
        ptrdiff_t ak = aoff[k];
        for (i = 0; i < mr; i++) {
            UK_T av = arow[i][ak];
            for (j = 0; j < UK_VW * UK_NV; j++)
                acc[i][j] += av * bk[j];
        }
    }
    for (i = 0; i < mr; i++) {
        UK_T *ci = c + i * ldc;
        UK_T br = bias_row ? bias_row[i] : (UK_T)0;
        for (j = 0; j < UK_VW * UK_NV; j++) {
            UK_T r = acc[i][j] + br;
            if (bias_col)
                r += bias_col[j];
            if (accumulate)
                r += ci[j];
            ci[j] = r;
        }
    }
}
#endif

static UK_TARGET void UK_NAME(
        ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const UK_T *a, ptrdiff_t sam,
        const ptrdiff_t *amoff, const ptrdiff_t *aoff, const UK_T *b, const ptrdiff_t *boff, UK_T *c, ptrdiff_t ldc,
        int accumulate, const UK_T *bias_row, const UK_T *bias_col, UK_T *scratch)
{
    /* scratch: FASTNN_UGEMM_SCRATCH(K) elements, for the last, partial column panel. */
    const ptrdiff_t NR = UK_VW * UK_NV;
    ptrdiff_t n0, m0, k, j;
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
            for (k = 0; k < K; k++) {
                for (j = 0; j < NR; j++)
                    panel[k * NR + j] = j < nr ? b[boff[k] + n0 + j] : (UK_T)0;
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
        for (m0 = 0; m0 < M; m0 += UK_MR) {
            int mr = (int)(M - m0 < UK_MR ? M - m0 : UK_MR);
            const UK_T *ap = amoff ? a : a + m0 * sam;
            const ptrdiff_t *am = amoff ? amoff + m0 : NULL;
            const UK_T *br = bias_row ? bias_row + m0 : NULL;
            if (cbuf == NULL) {
                UK_CAT(UK_NAME, _block)(K, ap, sam, am, aoff, bp, bo, c + m0 * ldc + n0, ldc,
                                        mr, accumulate, br, bc);
            } else {
                int i;
                for (i = 0; i < mr; i++)
                    for (j = 0; j < NR; j++)
                        cbuf[i * NR + j] = accumulate && j < nr ? c[(m0 + i) * ldc + n0 + j] : (UK_T)0;
                UK_CAT(UK_NAME, _block)(K, ap, sam, am, aoff, bp, bo, cbuf, NR, mr,
                                        accumulate, br, bc);
                for (i = 0; i < mr; i++)
                    for (j = 0; j < nr; j++)
                        c[(m0 + i) * ldc + n0 + j] = cbuf[i * NR + j];
            }
        }
    }
}
