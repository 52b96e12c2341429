/* Row reductions of softmax and the fused cross-entropy (kernels/_kernels.pxi,
 * _shift_by_row_max and _normalize_rows) for rows of at most OPK_ROWS_MAX_C_<type> values:
 * with AVX-512 (the x86-64-v4 build), 32 floats or 16 doubles, two vectors.  Other builds
 * define OPK_ROWS_MAX_C_<type> 0 and the callers keep their scalar loops.
 *
 * Layers:
 * - opk_shift_rows_<type>: out = x - max(x) row by row, the max (and for float the min: is
 *   some min - max < lo?) from masked loads, which read nothing past c.
 * - opk_row_sums_<type>: the sums of the rows, in double (the float values converted, as
 *   the scalar loop adds them), into an array; the caller scales the rows.
 *
 * Why.  With 10 classes the scalar loops over a row are short chains of compares and adds.
 * softmax forward on (60000, 10), one thread, alternating with the scalar build in one
 * process, its input and output out of the caches (as in a training step): float32
 * 0.61-0.66 -> 0.56-0.58 ms, float64 0.85-0.88 -> 0.70-0.73 ms; in the caches 0.58-0.61 ->
 * 0.53-0.54 and 0.67-0.73 -> 0.61-0.64.  Writing stays scalar (see OPK_SHIFT_ROWS; in a C
 * harness, masked vector stores of each row after the exp loop's stores made the float32
 * softmax 1.25-1.45 ms against 0.55 ms).
 *
 * Results: the max is the same value as the scalar loop's (a NaN in a row makes the whole
 * row NaN in the end either way); a row's sum in double is added in another order (a tree,
 * lanes j and j + L first), which moves a float64 sum by about an ulp.
 */
#ifndef OPKERNELS_SOFTMAX_ROWS_H
#define OPKERNELS_SOFTMAX_ROWS_H
#include <stddef.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#include <math.h>
#define OPK_ROWS_MAX_C_float 32
#define OPK_ROWS_MAX_C_double 16

/* masks of the two vectors covering c values (c <= 2 L) */
#define OPK_ROWS_MASKS(MASK, L, c, k0, k1)                                                      \
    MASK k0 = (c) >= (L) ? (MASK)~0u : (MASK)((1u << (c)) - 1);                                 \
    MASK k1 = (c) > (L) ? (MASK)((1u << ((c) - (L))) - 1) : 0

/* T, lanes L, vector VEC, mask MASK, intrinsic suffix S; FIND_BELOW: also the row min.
   The shifted row is written by a scalar loop: masked vector stores were slower into an
   output out of the caches (float32 (60000, 10), one thread: 0.97 against 0.56-0.58 ms). */
#define OPK_SHIFT_ROWS(T, L, VEC, MASK, S, FIND_BELOW)                                          \
static inline int opk_shift_rows_##T(const T* x, T* out, ptrdiff_t rows, ptrdiff_t c, T lo) {  \
    OPK_ROWS_MASKS(MASK, L, c, k0, k1);                                                         \
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

static inline void opk_row_sums_float(const float* e, double* sums, ptrdiff_t rows, ptrdiff_t c) {
    OPK_ROWS_MASKS(__mmask16, 16, c, k0, k1);
    const float* e1 = e + (k1 ? 16 : 0);
    for (ptrdiff_t r = 0; r < rows; r++) {
        __m512 v0 = _mm512_maskz_loadu_ps(k0, e + r * c), v1 = _mm512_maskz_loadu_ps(k1, e1 + r * c);
        __m512d lo = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v0)),
                                   _mm512_cvtps_pd(_mm512_extractf32x8_ps(v0, 1)));
        __m512d hi = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v1)),
                                   _mm512_cvtps_pd(_mm512_extractf32x8_ps(v1, 1)));
        sums[r] = _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
    }
}

static inline void opk_row_sums_double(const double* e, double* sums, ptrdiff_t rows, ptrdiff_t c) {
    OPK_ROWS_MASKS(__mmask8, 8, c, k0, k1);
    const double* e1 = e + (k1 ? 8 : 0);
    for (ptrdiff_t r = 0; r < rows; r++)
        sums[r] = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_maskz_loadu_pd(k0, e + r * c),
                                                     _mm512_maskz_loadu_pd(k1, e1 + r * c)));
}
#else
#define OPK_ROWS_MAX_C_float 0
#define OPK_ROWS_MAX_C_double 0
/* never called (the callers check OPK_ROWS_MAX_C_*): declared for the Cython code */
static inline int opk_shift_rows_float(const float* x, float* out, ptrdiff_t rows, ptrdiff_t c,
                                       float lo) {
    (void)x; (void)out; (void)rows; (void)c; (void)lo; return 0;
}
static inline int opk_shift_rows_double(const double* x, double* out, ptrdiff_t rows,
                                        ptrdiff_t c, double lo) {
    (void)x; (void)out; (void)rows; (void)c; (void)lo; return 0;
}
static inline void opk_row_sums_float(const float* e, double* sums, ptrdiff_t rows, ptrdiff_t c) {
    (void)e; (void)sums; (void)rows; (void)c;
}
static inline void opk_row_sums_double(const double* e, double* sums, ptrdiff_t rows,
                                       ptrdiff_t c) {
    (void)e; (void)sums; (void)rows; (void)c;
}
#endif

#endif
