/* count_correct (kernels/_kernels.pxi): how many rows of scores and labels (n, c) have their
 * argmax, as np.argmax (the first largest value, or the first NaN), in the same column.
 *
 * Layers:
 * - opk_argmax_scalar_<type>: one value at a time, a branch per value (every build).
 * - opk_argmax_<type>: with AVX-512 (the x86-64-v4 build) and c up to two vectors (32
 *   floats, 16 doubles), whole vectors: masked loads (lanes past c are not read, so the
 *   last row of an array needs no care, and hold -inf), a NaN test, the row's max, then the
 *   first lane of the first c equal to it.  Elsewhere, the scalar loop.
 * - opk_count_correct_<type>: the rows, with a software prefetch OPK_ARGMAX_AHEAD rows ahead.
 *
 * Why.  On random scores the scalar loop's `v > m` branch mispredicts about twice a row;
 * the vector argmax has no branch on the values.  (60000, 10) random scores and one-hot
 * labels, one thread, alternating with the scalar build in one process, arrays in the
 * caches: float32 0.52 -> 0.24 ms, float64 0.57 -> 0.35 ms.  Out of the caches (as in a
 * training step, after a matmul has read 188 MB) every 4 KB page of the two 2.4 MB arrays
 * starts with a TLB miss, which the hardware prefetcher does not run ahead of: float32,
 * after a matmul, 0.93 ms without the software prefetch, 0.31 ms with it (in a C harness:
 * scalar 0.46-0.50 ms, which the prefetch does not help, vector 0.65-0.79 -> 0.23-0.26).
 * A branch-free scalar loop (conditional moves) was slower than the branches, 0.63 ms
 * warm: each value then waits for the max before it.
 */
#ifndef OPKERNELS_ARGMAX_H
#define OPKERNELS_ARGMAX_H
#include <stddef.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#include <math.h>
#endif

/* rows between a row and the one the loop prefetches (one line of each array per row) */
#define OPK_ARGMAX_AHEAD 64

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
/* x[0:c], c >= 1.  T, lanes L, vector VEC, mask MASK, intrinsic suffix S (ps / pd). */
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
#define OPK_ARGMAX_ANY(T)                                                                       \
static inline ptrdiff_t opk_argmax_##T(const T* x, ptrdiff_t c) {                              \
    return opk_argmax_scalar_##T(x, c);                                                         \
}
OPK_ARGMAX_ANY(float)
OPK_ARGMAX_ANY(double)
#endif

#if defined(__GNUC__)
#define OPK_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define OPK_PREFETCH(p) ((void)0)
#endif

/* Rows (n of c values, c >= 1) of scores and labels whose argmaxes agree. */
#define OPK_COUNT_CORRECT(T)                                                                    \
static inline ptrdiff_t opk_count_correct_##T(const T* scores, const T* labels, ptrdiff_t n,   \
                                              ptrdiff_t c) {                                    \
    ptrdiff_t count = 0;                                                                        \
    for (ptrdiff_t r = 0; r < n; r++) {                                                         \
        if (r + OPK_ARGMAX_AHEAD < n) {                                                         \
            OPK_PREFETCH(scores + (r + OPK_ARGMAX_AHEAD) * c);                                  \
            OPK_PREFETCH(labels + (r + OPK_ARGMAX_AHEAD) * c);                                  \
        }                                                                                       \
        count += opk_argmax_##T(scores + r * c, c) == opk_argmax_##T(labels + r * c, c);        \
    }                                                                                           \
    return count;                                                                               \
}
OPK_COUNT_CORRECT(float)
OPK_COUNT_CORRECT(double)

#endif
