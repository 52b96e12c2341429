/* Vector variants of exp/log for gcc's auto-vectorizer, without -ffast-math.
 *
 * glibc's libmvec provides _ZGV*_exp and friends, but <math.h> declares them
 * only under __FAST_MATH__.  Redeclaring the functions with the same
 * `simd("notinbranch")` attribute lets gcc call them from vectorized loops
 * (it also needs -fno-math-errno).  Elsewhere (clang, musl, other arches)
 * this header is plain <math.h> and the loops call scalar libm.
 */
#ifndef OPKERNELS_SIMD_MATH_H
#define OPKERNELS_SIMD_MATH_H
#include <math.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) \
    && !defined(__FAST_MATH__) && !defined(OPKERNELS_NO_LIBMVEC)
#define OPKERNELS_LIBMVEC 1
__attribute__((simd("notinbranch"))) extern double exp(double);
__attribute__((simd("notinbranch"))) extern float expf(float);
__attribute__((simd("notinbranch"))) extern double log(double);
__attribute__((simd("notinbranch"))) extern float logf(float);
#else
#define OPKERNELS_LIBMVEC 0
#endif

#endif
