/* y = relu(x) @ W in one pass over the rows, forward and backward (kernels/_kernels.pxi,
 * relu_matmul_forward and relu_matmul_backward).  For rows x (n, k), h = relu(x), W (k, c):
 *
 *   forward:   y = h @ W  (n, c), and h (n, k) if the caller keeps it (h may be NULL)
 *   backward:  for grad_y g (n, c), from x again (the forward's input, or h: relu(h) = h),
 *              dx = (g @ W^T) * (x > 0)      (n, k), the gradient at x
 *              dW^T += g^T @ relu(x)         (c, k), accumulated by the caller's threads
 *
 * numpy needs two passes over the (n, k) arrays forward (relu, then BLAS reads h again) and
 * three backward from h (g @ W^T, h^T @ g, the mask; four from x, relu first); here x is
 * read once each way, h written at most once and dx once, streamed past the caches when
 * they are large (the backward's dx is read next by the X^T @ dx GEMM, from memory anyway).
 * Taking x, not h, backward saves the forward's write of h, and x, read by the forward, may
 * still be in the last-level cache.
 *
 * Layers: GCC vector types as wide as the -march level's registers (16, 32 or 64 bytes).
 * - forward, OPK_RELU_MATMUL_FWD: eight rows at a time where W is one vector wide, else four
 *   (then one block of four); relu of their k contiguous values each into h, or into a
 *   scratch (then streamed to h, if h is kept); then y's rows as sums of broadcast h values
 *   times W's rows, vectorized along the c outputs (W zero-padded to (k, cp), cp = c rounded
 *   up to the lanes), eight independent sums per step in either block; a one-row loop for the
 *   last n % 4.
 * - backward, OPK_RELU_MATMUL_BWD: four rows at a time (one load of W^T and of the
 *   accumulator per four rows), one chunk of L columns at a time or two (OPK_RM_PAIRS_*), relu
 *   applied to x as it is read (float32: the four rows copied, relu'd, into an aligned
 *   scratch first), into a scratch of four rows of dx, then copied or streamed to dx;
 *   the k % lanes tail chunk first, with full-width loads and
 *   stores (lanes past k read zeros in float32's copy, in float64 the next row, whose W^T is
 *   zero-padded, with zero-padded copies only at the end of x; stores spill into columns
 *   written next); a one-row loop for the last n % 4 rows.
 * Without GCC vector extensions (MSVC) the same functions are plain loops.
 *
 * Layout the caller provides.  Forward: wp = W zero-padded to (k, cp); scratch 8 * (k + cp)
 * values.  Backward: wt = W^T zero-padded to (c, kp) with kp = k rounded up to
 * OPK_RM_LANES_<type>; acc and blk (c, kp) zeroed; scratch 4 * k + lanes values, then 4 * kp
 * values and 64 bytes (four rows of relu(x), aligned).  Rows are summed into blk and blk
 * into acc every OPK_RM_BLOCK rows (float32 sums of 30000 terms lose digits).
 */
#ifndef OPKERNELS_RELU_MATMUL_H
#define OPKERNELS_RELU_MATMUL_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* The widest vector the -march level has: wider GCC vectors than that are split into
   pieces passed through memory (measured 35x slower on x86-64-v3). */
#if defined(__AVX512F__)
#define OPK_RM_BYTES 64
#elif defined(__AVX__)
#define OPK_RM_BYTES 32
#else
#define OPK_RM_BYTES 16
#endif
#define OPK_RM_LANES_float (OPK_RM_BYTES / 4)
#define OPK_RM_LANES_double (OPK_RM_BYTES / 8)
#define OPK_RM_BLOCK 256
/* float64's backward takes two chunks of columns at a time where there are 32 vector
   registers (AVX-512): eight independent sums per step.  Alternating with the one-chunk build
   in one process, (60000, 100) x 10, one thread: float64 4.4-5.0 -> 3.4 ms; float32 2.06-2.12
   -> 2.18-2.23 ms, so float32 keeps one.  With 16 registers (AVX2) the 24 vectors it holds
   spill (float32, in a C harness: 3.7 -> 5.0 ms). */
#define OPK_RM_PAIRS_double (OPK_RM_BYTES == 64)
#define OPK_RM_PAIRS_float 0

#if defined(__GNUC__)
typedef float opk_vf __attribute__((vector_size(OPK_RM_BYTES)));
typedef double opk_vd __attribute__((vector_size(OPK_RM_BYTES)));
typedef int32_t opk_vif __attribute__((vector_size(OPK_RM_BYTES)));
typedef int64_t opk_vid __attribute__((vector_size(OPK_RM_BYTES)));
#define OPK_RM_VECTORS 1
#else
#define OPK_RM_VECTORS 0
#endif

/* Non-temporal 16-byte stores of n values (n * sizeof(T) a multiple of 16, dst 16-aligned). */
#if defined(__SSE2__)
#define OPK_STREAM(T, STEP, STORE, LOAD)                                                        \
static inline void opk_stream_##T(T* dst, const T* src, ptrdiff_t n) {                          \
    for (ptrdiff_t i = 0; i < n; i += STEP) STORE(dst + i, LOAD(src + i));                      \
}
OPK_STREAM(float, 4, _mm_stream_ps, _mm_loadu_ps)
OPK_STREAM(double, 2, _mm_stream_pd, _mm_loadu_pd)
#else
#define OPK_STREAM(T)                                                                           \
static inline void opk_stream_##T(T* dst, const T* src, ptrdiff_t n) {                          \
    memcpy(dst, src, (size_t)n * sizeof(T));                                                    \
}
OPK_STREAM(float)
OPK_STREAM(double)
#endif
static inline void opk_stream_fence(void) {
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

/* Add blk into acc and zero blk (c * kp values). */
#define OPK_RM_FLUSH(T, acc, blk, count) \
    do { for (ptrdiff_t _i = 0; _i < (count); _i++) { (acc)[_i] += (blk)[_i]; (blk)[_i] = 0; } } while (0)

/* relu as kernels/_kernels.pxi's _relu_fwd: -0.0 gives +0.0, NaN propagates (m values). */
#define OPK_RELU(T)                                                                             \
static inline void opk_relu_##T(const T* x, T* h, ptrdiff_t m) {                                \
    for (ptrdiff_t i = 0; i < m; i++) { T v = x[i]; h[i] = v <= 0 ? 0 : v; }                  \
}
OPK_RELU(float)
OPK_RELU(double)

#if OPK_RM_VECTORS
#define OPK_RELU_MATMUL_BWD(T, V, VI, COPY)                                                     \
static inline V opk_ld_##T(const T* p) { V v; memcpy(&v, p, sizeof v); return v; }             \
static inline void opk_st_##T(T* p, V v) { memcpy(p, &v, sizeof v); }                          \
/* relu(v), as opk_relu: lanes <= 0 (and -0.0) to +0.0, NaN kept; a bit mask, no branch */      \
static inline V opk_relu_v_##T(V v) {                                                           \
    V zero = {0};                                                                               \
    return (V)((VI)v & ~(VI)(v <= zero));                                                       \
}                                                                                               \
static inline V opk_ldr_##T(const T* p) { return opk_relu_v_##T(opk_ld_##T(p)); }              \
/* a load, relu'd if relu (a constant where it is called) */                                    \
static inline V opk_ldx_##T(const T* p, int relu) {                                             \
    return relu ? opk_ldr_##T(p) : opk_ld_##T(p);                                               \
}                                                                                               \
/* s * (h > 0), as a product (NaN in s stays NaN, -0.0 as numpy's g * (x > 0)) */               \
static inline V opk_mask_##T(V s, V h) {                                                        \
    V zero = {0};                                                                               \
    VI one = (h > zero) & 1;                                                                    \
    return s * __builtin_convertvector(one, V);                                                 \
}                                                                                               \
/* one row: dx[0:k], and blk += g x relu(x) */                                                 \
static inline void opk_rm_row_##T(const T* g, const T* x, const T* wt, T* dx, T* blk,          \
                                  ptrdiff_t k, ptrdiff_t kp, ptrdiff_t c) {                     \
    enum { L = OPK_RM_LANES_##T };                                                              \
    ptrdiff_t kv = k / L * L;                                                                   \
    T hp[L], sp[L];                                                                             \
    for (ptrdiff_t jb = 0; jb < kp; jb += L) {                                                  \
        V hv, s = {0};                                                                          \
        if (jb < kv) hv = opk_ldr_##T(x + jb);                                                  \
        else { memset(hp, 0, sizeof hp); memcpy(hp, x + jb, (size_t)(k - jb) * sizeof(T));     \
               hv = opk_ldr_##T(hp); }                                                          \
        for (ptrdiff_t o = 0; o < c; o++) {                                                     \
            s += g[o] * opk_ld_##T(wt + o * kp + jb);                                           \
            opk_st_##T(blk + o * kp + jb, opk_ld_##T(blk + o * kp + jb) + g[o] * hv);           \
        }                                                                                       \
        s = opk_mask_##T(s, hv);                                                                \
        if (jb < kv) opk_st_##T(dx + jb, s);                                                    \
        else { opk_st_##T(sp, s); memcpy(dx + jb, sp, (size_t)(k - jb) * sizeof(T)); }          \
    }                                                                                           \
}                                                                                               \
/* one chunk of L columns [jb, jb + L) of four rows: results into out (row stride k, full   \
   vectors: a tail chunk spills into the next row, which the caller writes afterwards) */      \
static inline void opk_rm_chunk4_##T(const T* g0, ptrdiff_t c, V a0, V a1, V a2, V a3,         \
                                     const T* wt, T* blk, T* out, ptrdiff_t jb, ptrdiff_t k,   \
                                     ptrdiff_t kp) {                                            \
    V s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                                                   \
    const T *g1 = g0 + c, *g2 = g1 + c, *g3 = g2 + c;                                           \
    for (ptrdiff_t o = 0; o < c; o++) {                                                         \
        V w = opk_ld_##T(wt + o * kp + jb);                                                     \
        s0 += g0[o] * w; s1 += g1[o] * w; s2 += g2[o] * w; s3 += g3[o] * w;                    \
        V b = opk_ld_##T(blk + o * kp + jb);                                                    \
        b += g0[o] * a0 + g1[o] * a1 + g2[o] * a2 + g3[o] * a3;                                 \
        opk_st_##T(blk + o * kp + jb, b);                                                       \
    }                                                                                           \
    opk_st_##T(out + jb, opk_mask_##T(s0, a0));                                                 \
    opk_st_##T(out + k + jb, opk_mask_##T(s1, a1));                                             \
    opk_st_##T(out + 2 * k + jb, opk_mask_##T(s2, a2));                                         \
    opk_st_##T(out + 3 * k + jb, opk_mask_##T(s3, a3));                                         \
}                                                                                               \
/* as opk_rm_chunk4, for two chunks [jb, jb + 2 L) read from src (row stride rs): eight     \
   independent sums per step instead of four (where OPK_RM_PAIRS_<type>) */                   \
static inline void opk_rm_chunk4x2_##T(const T* g0, ptrdiff_t c, const T* src, ptrdiff_t rs,   \
                                       int relu, const T* wt, T* blk, T* out, ptrdiff_t jb,   \
                                       ptrdiff_t k, ptrdiff_t kp) {                            \
    enum { L = OPK_RM_LANES_##T };                                                              \
    const T *g1 = g0 + c, *g2 = g1 + c, *g3 = g2 + c;                                           \
    V a0 = opk_ldx_##T(src + jb, relu), a1 = opk_ldx_##T(src + rs + jb, relu);                  \
    V a2 = opk_ldx_##T(src + 2 * rs + jb, relu), a3 = opk_ldx_##T(src + 3 * rs + jb, relu);     \
    V e0 = opk_ldx_##T(src + jb + L, relu), e1 = opk_ldx_##T(src + rs + jb + L, relu);          \
    V e2 = opk_ldx_##T(src + 2 * rs + jb + L, relu);                                            \
    V e3 = opk_ldx_##T(src + 3 * rs + jb + L, relu);                                            \
    V s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, t0 = {0}, t1 = {0}, t2 = {0}, t3 = {0};           \
    for (ptrdiff_t o = 0; o < c; o++) {                                                         \
        V w = opk_ld_##T(wt + o * kp + jb), u = opk_ld_##T(wt + o * kp + jb + L);               \
        T h0 = g0[o], h1 = g1[o], h2 = g2[o], h3 = g3[o];                                       \
        s0 += h0 * w; s1 += h1 * w; s2 += h2 * w; s3 += h3 * w;                                 \
        t0 += h0 * u; t1 += h1 * u; t2 += h2 * u; t3 += h3 * u;                                 \
        V b = opk_ld_##T(blk + o * kp + jb), d = opk_ld_##T(blk + o * kp + jb + L);             \
        b += h0 * a0 + h1 * a1 + h2 * a2 + h3 * a3;                                             \
        d += h0 * e0 + h1 * e1 + h2 * e2 + h3 * e3;                                             \
        opk_st_##T(blk + o * kp + jb, b);                                                       \
        opk_st_##T(blk + o * kp + jb + L, d);                                                   \
    }                                                                                           \
    opk_st_##T(out + jb, opk_mask_##T(s0, a0));                                                 \
    opk_st_##T(out + k + jb, opk_mask_##T(s1, a1));                                             \
    opk_st_##T(out + 2 * k + jb, opk_mask_##T(s2, a2));                                         \
    opk_st_##T(out + 3 * k + jb, opk_mask_##T(s3, a3));                                         \
    opk_st_##T(out + jb + L, opk_mask_##T(t0, e0));                                             \
    opk_st_##T(out + k + jb + L, opk_mask_##T(t1, e1));                                         \
    opk_st_##T(out + 2 * k + jb + L, opk_mask_##T(t2, e2));                                     \
    opk_st_##T(out + 3 * k + jb + L, opk_mask_##T(t3, e3));                                     \
}                                                                                               \
/* scratch: 4 * k + L values, where dx's four rows are computed, then copied (or streamed);  \
   then 4 * kp values and 64 bytes, for xs (COPY: four rows of relu(x), 64-byte aligned) */  \
static void opk_relu_matmul_bwd_##T(const T* g, const T* x, const T* wt, T* dx,                \
                                    T* acc, T* blk, T* scratch, ptrdiff_t n, ptrdiff_t k,      \
                                    ptrdiff_t kp, ptrdiff_t c, int stream) {                    \
    enum { L = OPK_RM_LANES_##T };                                                              \
    ptrdiff_t kv = k / L * L, r = 0, since = 0;                                                 \
    T hp[4][L];                                                                                 \
    /* COPY: relu of four rows of x first, into rows kp apart from a 64-byte boundary (zero   \
       past k), so that the loads that follow are aligned whatever x's alignment: float32,   \
       one thread, (60000, 100) x 10: 2.0-2.2 ms for any x, against 2.3 ms with x on a cache  \
       line and 3.5-5.4 ms off it; float64 loses more to the copy than to alignment. */       \
    T* xs = (T*)(((uintptr_t)(scratch + 4 * k + L) + 63) & ~(uintptr_t)63);                     \
    if (COPY) memset(xs, 0, (size_t)(4 * kp) * sizeof(T));                                      \
    stream = stream && ((uintptr_t)dx % 16 == 0);                                               \
    for (; r + 4 <= n; r += 4) {                                                                \
        /* the rows read: COPY, their relu'd aligned copy; else x itself, relu'd as loaded */   \
        const T* src = COPY ? xs : x + r * k;                                                   \
        ptrdiff_t rs = COPY ? kp : k;                                                           \
        if (COPY) for (int q = 0; q < 4; q++) opk_relu_##T(x + (r + q) * k, xs + q * kp, k);    \
        if (kv < k) {  /* the tail chunk first: its spill lands on columns written next */      \
            V a[4];                                                                             \
            if (COPY || (r + 3) * k + kp <= n * k) {  /* full loads stay inside xs or x:    */  \
                /* lanes past k are the copy's zeros, or the next row's (wt 0, blk unused) */   \
                for (int q = 0; q < 4; q++) a[q] = opk_ldx_##T(src + q * rs + kv, !COPY);       \
            } else {                                                                            \
                memset(hp, 0, sizeof hp);                                                       \
                for (int q = 0; q < 4; q++) {                                                   \
                    memcpy(hp[q], src + q * rs + kv, (size_t)(k - kv) * sizeof(T));             \
                    a[q] = opk_ldr_##T(hp[q]);                                                  \
                }                                                                               \
            }                                                                                   \
            opk_rm_chunk4_##T(g + r * c, c, a[0], a[1], a[2], a[3], wt, blk, scratch, kv, k, kp);\
        }                                                                                       \
        ptrdiff_t jb = 0;                                                                       \
        if (OPK_RM_PAIRS_##T) for (; jb + 2 * L <= kv; jb += 2 * L)                             \
            opk_rm_chunk4x2_##T(g + r * c, c, src, rs, !COPY, wt, blk, scratch, jb, k, kp);     \
        for (; jb < kv; jb += L)                                                                \
            opk_rm_chunk4_##T(g + r * c, c, opk_ldx_##T(src + jb, !COPY),                       \
                              opk_ldx_##T(src + rs + jb, !COPY),                                \
                              opk_ldx_##T(src + 2 * rs + jb, !COPY),                            \
                              opk_ldx_##T(src + 3 * rs + jb, !COPY), wt, blk, scratch, jb, k, kp);\
        if (stream) opk_stream_##T(dx + r * k, scratch, 4 * k);                                 \
        else memcpy(dx + r * k, scratch, (size_t)(4 * k) * sizeof(T));                          \
        if ((since += 4) >= OPK_RM_BLOCK) { OPK_RM_FLUSH(T, acc, blk, c * kp); since = 0; }     \
    }                                                                                           \
    for (; r < n; r++) opk_rm_row_##T(g + r * c, x + r * k, wt, dx + r * k, blk, k, kp, c);    \
    OPK_RM_FLUSH(T, acc, blk, c * kp);                                                          \
    if (stream) opk_stream_fence();                                                             \
}
OPK_RELU_MATMUL_BWD(float, opk_vf, opk_vif, 1)
OPK_RELU_MATMUL_BWD(double, opk_vd, opk_vid, 0)

/* y rows [0, rows) (rows 8, 4 or 1) from their h rows hr (row stride k): ys (rows, cp) first,
   then copied to y (row stride c): full vectors whose spill past c lands on the next row,
   written after it, unless full tells that the spill would pass y's end; then value by value. */
#define OPK_RELU_MATMUL_FWD(T, V)                                                               \
static inline void opk_rm_fwd_rows_##T(const T* hr, const T* wp, T* ys, T* y, int rows,        \
                                       ptrdiff_t k, ptrdiff_t c, ptrdiff_t cp, int full) {      \
    enum { L = OPK_RM_LANES_##T };                                                              \
    ptrdiff_t vb = 0;                                                                           \
    if (rows == 4) for (; vb + 2 * L <= cp; vb += 2 * L) {  /* two vectors: 8 sums per load */ \
        V s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, t0 = {0}, t1 = {0}, t2 = {0}, t3 = {0};       \
        for (ptrdiff_t j = 0; j < k; j++) {                                                     \
            V w = opk_ld_##T(wp + j * cp + vb), u = opk_ld_##T(wp + j * cp + vb + L);           \
            T a0 = hr[j], a1 = hr[k + j], a2 = hr[2 * k + j], a3 = hr[3 * k + j];               \
            s0 += a0 * w; s1 += a1 * w; s2 += a2 * w; s3 += a3 * w;                             \
            t0 += a0 * u; t1 += a1 * u; t2 += a2 * u; t3 += a3 * u;                             \
        }                                                                                       \
        opk_st_##T(ys + vb, s0); opk_st_##T(ys + cp + vb, s1);                                  \
        opk_st_##T(ys + 2 * cp + vb, s2); opk_st_##T(ys + 3 * cp + vb, s3);                     \
        opk_st_##T(ys + vb + L, t0); opk_st_##T(ys + cp + vb + L, t1);                          \
        opk_st_##T(ys + 2 * cp + vb + L, t2); opk_st_##T(ys + 3 * cp + vb + L, t3);             \
    }                                                                                           \
    if (rows == 8) for (; vb < cp; vb += L) {  /* eight sums per load: 8 FMA chains */       \
        V s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0}, s7 = {0};       \
        for (ptrdiff_t j = 0; j < k; j++) {                                                     \
            V w = opk_ld_##T(wp + j * cp + vb);                                                 \
            s0 += hr[j] * w; s1 += hr[k + j] * w; s2 += hr[2 * k + j] * w;                      \
            s3 += hr[3 * k + j] * w; s4 += hr[4 * k + j] * w; s5 += hr[5 * k + j] * w;          \
            s6 += hr[6 * k + j] * w; s7 += hr[7 * k + j] * w;                                   \
        }                                                                                       \
        opk_st_##T(ys + vb, s0); opk_st_##T(ys + cp + vb, s1);                                  \
        opk_st_##T(ys + 2 * cp + vb, s2); opk_st_##T(ys + 3 * cp + vb, s3);                     \
        opk_st_##T(ys + 4 * cp + vb, s4); opk_st_##T(ys + 5 * cp + vb, s5);                     \
        opk_st_##T(ys + 6 * cp + vb, s6); opk_st_##T(ys + 7 * cp + vb, s7);                     \
    }                                                                                           \
    for (; vb < cp; vb += L) {                                                                  \
        V s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                                               \
        if (rows == 4) {                                                                        \
            for (ptrdiff_t j = 0; j < k; j++) {                                                 \
                V w = opk_ld_##T(wp + j * cp + vb);                                             \
                s0 += hr[j] * w; s1 += hr[k + j] * w; s2 += hr[2 * k + j] * w;                  \
                s3 += hr[3 * k + j] * w;                                                        \
            }                                                                                   \
            opk_st_##T(ys + cp + vb, s1); opk_st_##T(ys + 2 * cp + vb, s2);                     \
            opk_st_##T(ys + 3 * cp + vb, s3);                                                   \
        } else {                                                                                \
            for (ptrdiff_t j = 0; j < k; j++) s0 += hr[j] * opk_ld_##T(wp + j * cp + vb);       \
        }                                                                                       \
        opk_st_##T(ys + vb, s0);                                                                \
    }                                                                                           \
    for (int q = 0; q < rows; q++) {                                                            \
        if (full) for (ptrdiff_t vb = 0; vb < cp; vb += L)                                      \
            opk_st_##T(y + q * c + vb, opk_ld_##T(ys + q * cp + vb));                           \
        else for (ptrdiff_t o = 0; o < c; o++) y[q * c + o] = ys[q * cp + o];                  \
    }                                                                                           \
}                                                                                               \
/* scratch: 8 * (k + cp) values: eight rows of h (streamed or not kept: h NULL) and of y */     \
static void opk_relu_matmul_fwd_##T(const T* x, const T* wp, T* h, T* y, T* scratch,           \
                                    ptrdiff_t n, ptrdiff_t k, ptrdiff_t c, ptrdiff_t cp,        \
                                    int stream) {                                               \
    ptrdiff_t r = 0;                                                                            \
    T* ys = scratch + 8 * k;                                                                    \
    stream = stream && h && ((uintptr_t)h % 16 == 0);                                           \
    /* eight rows where W is one vector wide (float32 on AVX-512: four rows are four FMA      \
       chains, half the FMA units' rate; 1.73 -> 1.55 ms on (60000, 100) x 10, one thread),   \
       else four (two vectors of W: eight chains already; eight rows was slower in float64) */ \
    for (int rows = cp < 2 * OPK_RM_LANES_##T ? 8 : 4; rows >= 4; rows -= 4)                   \
        for (; r + rows <= n; r += rows) {                                                      \
            T* hr = (stream || !h) ? scratch : h + r * k;                                       \
            /* a line of y 64 rows ahead, for writing, one per block: y (N, c) is small (4 KB \
               pages) and, after a large matmul, out of the caches and the TLB.  float32      \
               (eight-row blocks), (60000, 100) x 10, one thread, y evicted first: 1.61-1.67   \
               -> 1.39-1.41 ms (a line per 64 bytes of the block did no better); float64      \
               unchanged (its four-row blocks read twice the bytes of x): eight-row blocks. */ \
            if (rows == 8 && r + 64 + rows <= n) __builtin_prefetch(y + (r + 64) * c, 1, 3);    \
            opk_relu_##T(x + r * k, hr, rows * k);                                              \
            if (stream) opk_stream_##T(h + r * k, scratch, rows * k);                           \
            opk_rm_fwd_rows_##T(hr, wp, ys, y + r * c, rows, k, c, cp,                          \
                                (r + rows - 1) * c + cp <= n * c);                              \
        }                                                                                       \
    for (; r < n; r++) {                                                                        \
        T* hr = h ? h + r * k : scratch;                                                        \
        opk_relu_##T(x + r * k, hr, k);                                                         \
        opk_rm_fwd_rows_##T(hr, wp, ys, y + r * c, 1, k, c, cp, r * c + cp <= n * c);           \
    }                                                                                           \
    if (stream) opk_stream_fence();                                                             \
}
OPK_RELU_MATMUL_FWD(float, opk_vf)
OPK_RELU_MATMUL_FWD(double, opk_vd)

#else  /* plain loops: same results, no vectors, no streaming */
#define OPK_RELU_MATMUL_BWD_PLAIN(T)                                                            \
static void opk_relu_matmul_bwd_##T(const T* g, const T* x, const T* wt, T* dx,                \
                                    T* acc, T* blk, T* scratch, ptrdiff_t n, ptrdiff_t k,      \
                                    ptrdiff_t kp, ptrdiff_t c, int stream) {                    \
    ptrdiff_t since = 0;                                                                        \
    (void)scratch; (void)stream;                                                                \
    for (ptrdiff_t r = 0; r < n; r++) {                                                         \
        for (ptrdiff_t j = 0; j < k; j++) {                                                     \
            T s = 0, hj = x[r * k + j];                                                         \
            hj = hj <= 0 ? 0 : hj;                                                              \
            for (ptrdiff_t o = 0; o < c; o++) {                                                 \
                s += g[r * c + o] * wt[o * kp + j];                                             \
                blk[o * kp + j] += g[r * c + o] * hj;                                           \
            }                                                                                   \
            dx[r * k + j] = s * (T)(hj > 0);                                                    \
        }                                                                                       \
        if (++since >= OPK_RM_BLOCK) { OPK_RM_FLUSH(T, acc, blk, c * kp); since = 0; }          \
    }                                                                                           \
    OPK_RM_FLUSH(T, acc, blk, c * kp);                                                          \
}
OPK_RELU_MATMUL_BWD_PLAIN(float)
OPK_RELU_MATMUL_BWD_PLAIN(double)
#define OPK_RELU_MATMUL_FWD_PLAIN(T)                                                            \
static void opk_relu_matmul_fwd_##T(const T* x, const T* wp, T* h, T* y, T* scratch,           \
                                    ptrdiff_t n, ptrdiff_t k, ptrdiff_t c, ptrdiff_t cp,        \
                                    int stream) {                                               \
    (void)stream;                                                                               \
    for (ptrdiff_t r = 0; r < n; r++) {                                                         \
        T* hr = h ? h + r * k : scratch;                                                        \
        opk_relu_##T(x + r * k, hr, k);                                                         \
        for (ptrdiff_t o = 0; o < c; o++) {                                                     \
            T s = 0;                                                                            \
            for (ptrdiff_t j = 0; j < k; j++) s += hr[j] * wp[j * cp + o];                     \
            y[r * c + o] = s;                                                                   \
        }                                                                                       \
    }                                                                                           \
}
OPK_RELU_MATMUL_FWD_PLAIN(float)
OPK_RELU_MATMUL_FWD_PLAIN(double)
#endif

#endif
