/* The register block of one _ukernel_impl.h instantiation: UK_BMR rows x UK_NV
 * vectors of C, included with UK_BNAME and UK_BMR set (the full block, UK_MR rows,
 * and a half-height one for a last block of at most UK_MR / 2 rows: the full block
 * would multiply its missing rows as copies of row 0). Both sum every element in
 * the same order (k ascending, then the biases, then C), so which one computes a
 * row never changes its bits. */
#ifdef FASTNN_GNU_C
static UK_TARGET void UK_BNAME(
        ptrdiff_t K, const UK_T *a, ptrdiff_t sam, const ptrdiff_t *amoff, const ptrdiff_t *aoff,
        const UK_T *b, const ptrdiff_t *boff, UK_T *c, ptrdiff_t ldc, int mr,
        int accumulate, const UK_T *bias_row, const UK_T *bias_col)
{
    typedef UK_CAT(UK_NAME, _vec) V;
    V acc[UK_BMR][UK_NV];
    const UK_T *arow[UK_BMR];
    int i, v;
    ptrdiff_t k;
    /* Rows past mr repeat row 0: the block stays fully unrolled and those
     * results are simply not stored. */
    for (i = 0; i < UK_BMR; i++)
        arow[i] = a + (amoff ? amoff[i < mr ? i : 0] : (i < mr ? i : 0) * sam);
#pragma GCC unroll 16
    for (i = 0; i < UK_BMR; i++)
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
        for (i = 0; i < UK_BMR; i++) {
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
static UK_TARGET void UK_BNAME(
        ptrdiff_t K, const UK_T *a, ptrdiff_t sam, const ptrdiff_t *amoff, const ptrdiff_t *aoff,
        const UK_T *b, const ptrdiff_t *boff, UK_T *c, ptrdiff_t ldc, int mr,
        int accumulate, const UK_T *bias_row, const UK_T *bias_col)
{
    UK_T acc[UK_BMR][UK_VW * UK_NV];
    const UK_T *arow[UK_BMR];
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

