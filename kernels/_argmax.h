/* Row argmax for count_correct (kernels/_kernels.pxi): the index of the first largest of
 * x[0:c], or of the first NaN, as np.argmax.
 *
 * Layers:
 * - opk_argmax_scalar_<type>: one value at a time, a branch per value (every build).
 * - opk_argmax_<type>: with AVX-512 (the x86-64-v4 build) and c up to two vectors (32
 *   floats, 16 doubles), whole vectors: masked loads (lanes past c are not read, so the
 *   last row of an array needs no care, and hold -inf), a NaN test per vector, the row's
 *   max, then the first lane of the first c equal to it.  Elsewhere, the scalar loop.
 *
 * Why: on random scores the scalar loop's `v > m` branch mispredicts about twice a row.
 * count_correct on (60000, 10) random scores and one-hot labels, one thread, alternating
 * with the scalar build in one process: float32 0.52 -> 0.24 ms, float64 0.57 -> 0.35 ms.
 * A branch-free scalar loop (conditional moves) was slower than the branches, 0.63 ms:
 * each value then waits for the max before it.
 */
#ifndef OPKERNELS_ARGMAX_H
#define OPKERNELS_ARGMAX_H
#include <stddef.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#include <math.h>
#endif

#define OPK_ARGMAX_SCALAR(T)                                                                    \
static inline ptrdiff_t opk_argmax_scalar_##T(const T* x, ptrdiff_t c) {                       \
    ptrdiff_t best = 0;                                                                         \
    T m = x[0];                                                                                 \
    if (m != m) return 0;                                                                       \
    for (ptrdiff_t j = 1; j < c; j++) {                                                         \
        T v = x[j];                                                                             \
        if (v != v) return j;                                                                   \
        if (v > m) { m = v; best = j; }                                                         \
    }                                                                                           \
    return best;                                                                                \
}
OPK_ARGMAX_SCALAR(float)
OPK_ARGMAX_SCALAR(double)

#if defined(__AVX512F__)
/* T, lanes L, vector VEC, mask MASK, intrinsic suffix S (ps / pd) */
#define OPK_ARGMAX_AVX512(T, L, VEC, MASK, S)                                                   \
static inline ptrdiff_t opk_argmax_##T(const T* x, ptrdiff_t c) {                              \
    VEC lo = _mm512_set1_##S(-INFINITY), v0, v1;                                                \
    MASK k0 = (MASK)~0u, k1 = 0;                                                                \
    if (c > 2 * L) return opk_argmax_scalar_##T(x, c);                                          \
    if (c < L) k0 = (MASK)((1u << c) - 1);                                                      \
    else if (c > L) k1 = (MASK)((1u << (c - L)) - 1);                                           \
    v0 = _mm512_mask_loadu_##S(lo, k0, x);                                                      \
    v1 = _mm512_mask_loadu_##S(lo, k1, x + (k1 ? L : 0));  /* k1 0: reads nothing */            \
    /* the two vectors' lanes as one bit mask each way, so that no branch depends on which     \
       vector holds the max (a branch there mispredicted, float64: 0.72 ms against 0.55) */    \
    unsigned long long nan = _mm512_cmp_##S##_mask(v0, v0, _CMP_UNORD_Q)                       \
        | (unsigned long long)_mm512_cmp_##S##_mask(v1, v1, _CMP_UNORD_Q) << L;                 \
    if (nan) return __builtin_ctzll(nan);  /* the first NaN (lanes past c are -inf) */          \
    VEC m = _mm512_set1_##S(_mm512_reduce_max_##S(_mm512_max_##S(v0, v1)));                     \
    return __builtin_ctzll(_mm512_mask_cmp_##S##_mask(k0, v0, m, _CMP_EQ_OQ)                   \
        | (unsigned long long)_mm512_mask_cmp_##S##_mask(k1, v1, m, _CMP_EQ_OQ) << L);         \
}
OPK_ARGMAX_AVX512(float, 16, __m512, __mmask16, ps)
OPK_ARGMAX_AVX512(double, 8, __m512d, __mmask8, pd)
#else
static inline ptrdiff_t opk_argmax_float(const float* x, ptrdiff_t c) {
    return opk_argmax_scalar_float(x, c);
}
static inline ptrdiff_t opk_argmax_double(const double* x, ptrdiff_t c) {
    return opk_argmax_scalar_double(x, c);
}
#endif

#endif
