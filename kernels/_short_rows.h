/* Loops over short rows, up to two AVX-512 vectors (32 floats, 16 doubles), for
 * kernels/_kernels.pxi: count_correct's row argmax, and the row max and row sums of softmax
 * and the fused cross-entropy (_shift_by_row_max, _normalize_rows).
 *
 * Layers:
 * - OPK_SHORT_ROWS_VECTORS: 1 with AVX-512 under GCC or clang (the x86-64-v4 build), else 0:
 *   then OPK_ROWS_MAX_C_<type> is 0, argmax runs its scalar loop and softmax its callers'.
 * - OPK_ROW_MASKS: the lane masks of the two vectors that hold a row of c values.  Loads
 *   are masked: nothing past c is read, so the last row of an array needs no care.
 * - argmax: opk_argmax_scalar_<type> (every build) and opk_argmax_<type>: the index of the
 *   first largest value, or of the first NaN, as np.argmax; opk_count_correct_<type>: the
 *   rows whose argmaxes agree, with a software prefetch OPK_ROWS_AHEAD rows ahead.
 * - softmax: opk_shift_rows_<type>, out = x - max(x) row by row (float: also whether some
 *   row has min - max < lo); opk_row_sums_<type>, the row sums in double into an array.
 *   Writing stays scalar (the shift here, the scaling in the caller): masked vector stores
 *   were slower, float32 softmax (60000, 10), one thread, output out of the caches: 0.97
 *   against 0.56-0.58 ms.
 *
 * Why.  With 10 classes a row is a short chain of compares or adds; the argmax's `v > m`
 * branch mispredicts about twice a row on random scores.  Alternating with the scalar build
 * in one process, (60000, 10), one thread:
 * - count_correct on random scores and one-hot labels in the caches: float32 0.52 -> 0.24 ms,
 *   float64 0.57 -> 0.35 ms.  After a matmul has read 188 MB (as in a training step) every
 *   4 KB page of the two 2.4 MB arrays starts with a TLB miss that the hardware prefetcher
 *   does not run ahead of: float32 0.93 ms without the software prefetch, 0.31 ms with it
 *   (in a C harness the scalar loop gained nothing from it).  A branch-free scalar argmax
 *   (conditional moves) was slower than the branches: 0.63 ms in the caches.
 * - softmax forward, input and output out of the caches: float32 0.61-0.66 -> 0.56-0.58 ms,
 *   float64 0.85-0.88 -> 0.70-0.73 ms; in the caches 0.58-0.61 -> 0.53-0.54 and 0.67-0.73
 *   -> 0.61-0.64 ms.
 *
 * Results.  The argmax is np.argmax's.  The row max is the scalar loop's except in rows
 * holding a NaN (which end all NaN either way) and in the sign of a zero max (x - m is the
 * same); a row's sum in double is added in a tree order (lanes j and j + L first), which
 * moves a float64 sum by about an ulp (float32 softmax gave the same bits on 600000 random
 * rows of 10).
 */
#ifndef OPKERNELS_SHORT_ROWS_H
#define OPKERNELS_SHORT_ROWS_H
#include <stddef.h>

#if defined(__AVX512F__) && defined(__GNUC__)
#define OPK_SHORT_ROWS_VECTORS 1
#include <immintrin.h>
#include <math.h>
#else
#define OPK_SHORT_ROWS_VECTORS 0
#endif

/* rows between a row and the one count_correct prefetches (one line of each array per row) */
#define OPK_ROWS_AHEAD 64
#if defined(__GNUC__)
#define OPK_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define OPK_PREFETCH(p) ((void)0)
#endif

/* ------------------------------------------------------------------------------ argmax */
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

#if OPK_SHORT_ROWS_VECTORS
#define OPK_ROWS_MAX_C_float 32
#define OPK_ROWS_MAX_C_double 16

/* the masks k0, k1 of the two L-lane vectors holding c values, 1 <= c <= 2 L */
#define OPK_ROW_MASKS(MASK, L, c, k0, k1)                                                       \
    MASK k0 = (c) >= (L) ? (MASK)~0u : (MASK)((1u << (c)) - 1);                                 \
    MASK k1 = (c) > (L) ? (MASK)((1u << ((c) - (L))) - 1) : 0

/* x[0:c], c >= 1.  T, lanes L, vector VEC, mask MASK, intrinsic suffix S (ps / pd). */
#define OPK_ARGMAX_VECTOR(T, L, VEC, MASK, S)                                                   \
static inline ptrdiff_t opk_argmax_##T(const T* x, ptrdiff_t c) {                              \
    if (c > 2 * L) return opk_argmax_scalar_##T(x, c);                                          \
    OPK_ROW_MASKS(MASK, L, c, k0, k1);                                                          \
    VEC lo = _mm512_set1_##S(-INFINITY);                                                        \
    VEC v0 = _mm512_mask_loadu_##S(lo, k0, x);  /* lanes past c: -inf */                        \
    VEC v1 = _mm512_mask_loadu_##S(lo, k1, x + (k1 ? L : 0));  /* k1 0: reads nothing */        \
    /* the two vectors' lanes as one bit mask each way, so that no branch depends on which     \
       vector holds the max (a branch there mispredicted, float64: 0.72 ms against 0.55) */    \
    unsigned long long nan = _mm512_cmp_##S##_mask(v0, v0, _CMP_UNORD_Q)                       \
        | (unsigned long long)_mm512_cmp_##S##_mask(v1, v1, _CMP_UNORD_Q) << L;                 \
    if (nan) return __builtin_ctzll(nan);  /* the first NaN */                                  \
    VEC m = _mm512_set1_##S(_mm512_reduce_max_##S(_mm512_max_##S(v0, v1)));                     \
    return __builtin_ctzll(_mm512_mask_cmp_##S##_mask(k0, v0, m, _CMP_EQ_OQ)                   \
        | (unsigned long long)_mm512_mask_cmp_##S##_mask(k1, v1, m, _CMP_EQ_OQ) << L);         \
}
OPK_ARGMAX_VECTOR(float, 16, __m512, __mmask16, ps)
OPK_ARGMAX_VECTOR(double, 8, __m512d, __mmask8, pd)
#else
#define OPK_ROWS_MAX_C_float 0
#define OPK_ROWS_MAX_C_double 0
#define OPK_ARGMAX_ANY(T)                                                                       \
static inline ptrdiff_t opk_argmax_##T(const T* x, ptrdiff_t c) {                              \
    return opk_argmax_scalar_##T(x, c);                                                         \
}
OPK_ARGMAX_ANY(float)
OPK_ARGMAX_ANY(double)
#endif

/* Rows (n of c values, c >= 1) of scores and labels whose argmaxes agree. */
#define OPK_COUNT_CORRECT(T)                                                                    \
static inline ptrdiff_t opk_count_correct_##T(const T* scores, const T* labels, ptrdiff_t n,   \
                                              ptrdiff_t c) {                                    \
    ptrdiff_t count = 0;                                                                        \
    for (ptrdiff_t r = 0; r < n; r++) {                                                         \
        if (r + OPK_ROWS_AHEAD < n) {                                                           \
            OPK_PREFETCH(scores + (r + OPK_ROWS_AHEAD) * c);                                    \
            OPK_PREFETCH(labels + (r + OPK_ROWS_AHEAD) * c);                                    \
        }                                                                                       \
        count += opk_argmax_##T(scores + r * c, c) == opk_argmax_##T(labels + r * c, c);        \
    }                                                                                           \
    return count;                                                                               \
}
OPK_COUNT_CORRECT(float)
OPK_COUNT_CORRECT(double)

/* ----------------------------------------------------------------------------- softmax */
#if OPK_SHORT_ROWS_VECTORS
/* T, lanes L, vector VEC, mask MASK, intrinsic suffix S; FIND_BELOW: also the row min */
#define OPK_SHIFT_ROWS(T, L, VEC, MASK, S, FIND_BELOW)                                          \
static inline int opk_shift_rows_##T(const T* x, T* out, ptrdiff_t rows, ptrdiff_t c, T lo) {  \
    OPK_ROW_MASKS(MASK, L, c, k0, k1);                                                          \
    const T* x1 = x + (k1 ? L : 0);  /* k1 0: the second vector reads nothing */                \
    VEC ninf = _mm512_set1_##S(-INFINITY), pinf = _mm512_set1_##S(INFINITY);                    \
    int below = 0;                                                                              \
    for (ptrdiff_t r = 0; r < rows; r++) {                                                      \
        VEC v0 = _mm512_mask_loadu_##S(ninf, k0, x + r * c);                                    \
        VEC v1 = _mm512_mask_loadu_##S(ninf, k1, x1 + r * c);                                   \
        T m = _mm512_reduce_max_##S(_mm512_max_##S(v0, v1));                                    \
        if (FIND_BELOW) {                                                                       \
            T mn = _mm512_reduce_min_##S(_mm512_min_##S(_mm512_mask_mov_##S(pinf, k0, v0),      \
                                                        _mm512_mask_mov_##S(pinf, k1, v1)));    \
            below |= mn - m < lo;                                                               \
        }                                                                                       \
        for (ptrdiff_t j = 0; j < c; j++) out[r * c + j] = x[r * c + j] - m;                    \
    }                                                                                           \
    return below;                                                                               \
}
OPK_SHIFT_ROWS(float, 16, __m512, __mmask16, ps, 1)
OPK_SHIFT_ROWS(double, 8, __m512d, __mmask8, pd, 0)

/* the 16 floats of v as doubles, lanes j and j + 8 added (AVX-512F only: no extractf32x8) */
static inline __m512d opk_halves_pd(__m512 v) {
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(hi));
}

static inline void opk_row_sums_float(const float* e, double* sums, ptrdiff_t rows, ptrdiff_t c) {
    OPK_ROW_MASKS(__mmask16, 16, c, k0, k1);
    const float* e1 = e + (k1 ? 16 : 0);
    for (ptrdiff_t r = 0; r < rows; r++)
        sums[r] = _mm512_reduce_add_pd(_mm512_add_pd(
            opk_halves_pd(_mm512_maskz_loadu_ps(k0, e + r * c)),
            opk_halves_pd(_mm512_maskz_loadu_ps(k1, e1 + r * c))));
}

static inline void opk_row_sums_double(const double* e, double* sums, ptrdiff_t rows, ptrdiff_t c) {
    OPK_ROW_MASKS(__mmask8, 8, c, k0, k1);
    const double* e1 = e + (k1 ? 8 : 0);
    for (ptrdiff_t r = 0; r < rows; r++)
        sums[r] = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_maskz_loadu_pd(k0, e + r * c),
                                                     _mm512_maskz_loadu_pd(k1, e1 + r * c)));
}
#else
/* never called (the callers check OPK_ROWS_MAX_C_*): declared for the Cython code */
#define OPK_SOFTMAX_ROWS_NONE(T)                                                                \
static inline int opk_shift_rows_##T(const T* x, T* out, ptrdiff_t rows, ptrdiff_t c, T lo) {  \
    (void)x; (void)out; (void)rows; (void)c; (void)lo;                                          \
    return 0;                                                                                   \
}                                                                                               \
static inline void opk_row_sums_##T(const T* e, double* sums, ptrdiff_t rows, ptrdiff_t c) {   \
    (void)e; (void)sums; (void)rows; (void)c;                                                   \
}
OPK_SOFTMAX_ROWS_NONE(float)
OPK_SOFTMAX_ROWS_NONE(double)
#endif

#endif
