# Compiled kernels of Relu, Softmax, Log and SoftmaxCrossEntropy, forward and backward,
# the row-argmax count behind MLP.accuracy, the model's second layer (relu then W2) in one
# pass each way (the C of _relu_matmul.h), and the fused Adam update of pyops.model.Adam.
#
# Layers, top to bottom:
#   1. C glue: OpenMP present or not, libmvec exp/log (see _simd_math.h), the build variant.
#   2. `cdef inline ... noexcept nogil` helpers over raw pointers and a length: one per
#      kernel, written so gcc vectorizes them (no branches on loaded values, locals first).
#      Loops over rows of ~10 classes (softmax's row max and sums, the row argmax) are too
#      short for that: on AVX-512 they are vector loops in C (_short_rows.h), elsewhere
#      scalar loops.
#   3. Drivers `def relu_forward(...)` etc. over typed memoryviews (fused float/double,
#      inputs `const`, outputs passed in): split rows or elements into one static chunk
#      per thread with `prange`, below PARALLEL_MIN_ELEMENTS on one thread.
#   4. `run_calls`: Python calls (the parts of a large matmul, kernels._matmul), one per
#      OpenMP thread, so that BLAS runs on the kernels' threads.
# Every driver trusts its caller (kernels._table, via pyops.ops or pyops.model) to have
# checked dtype, shape, contiguity and overlap: bounds checks are off.
#
# This file is included by one .pyx per CPU variant (baseline, x86-64-v3, x86-64-v4);
# setup.py compiles the same code with different -march flags.

from cython cimport floating
from cython.parallel cimport prange
from libc.float cimport DBL_MIN, FLT_MIN
from libc.math cimport sqrt, sqrtf

cdef extern from "_simd_math.h" nogil:
    double exp(double)
    float expf(float)
    double log(double)
    float logf(float)
    int OPKERNELS_LIBMVEC

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define OPK_OPENMP 1
    static int opk_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define OPK_OPENMP 0
    static int opk_max_threads(void) { return 1; }
    #endif
    #ifndef OPK_VARIANT
    #define OPK_VARIANT "unknown"
    #endif
    """
    int OPK_OPENMP
    const char* OPK_VARIANT
    # the version of the Cython that generated this C file (0xMMmmppXX), from its own header
    long CYTHON_HEX_VERSION
    int opk_max_threads() nogil

cdef enum:
    # Below this many elements a parallel region costs more than it saves (KERNEL_NOTES).
    MIN_PARALLEL = 32768
    # Rows per softmax block: one long exp loop over ROW_BLOCK * c values.
    ROW_BLOCK = 64
    # Most threads of one kernel call (the per-thread partial sums live on the stack).
    THREAD_LIMIT = 256

PARALLEL_MIN_ELEMENTS = MIN_PARALLEL
OPENMP = bool(OPK_OPENMP)
MAX_THREADS = THREAD_LIMIT

cdef int _n_threads = min(opk_max_threads(), <int>THREAD_LIMIT)


def set_num_threads(int n):
    """Use at most ``n`` threads in every kernel of this module (1 <= n <= MAX_THREADS)."""
    global _n_threads
    if not 1 <= n <= THREAD_LIMIT:
        raise ValueError(f"set_num_threads: n must be between 1 and {MAX_THREADS}, got {n}")
    _n_threads = n


def get_num_threads():
    """The most threads a kernel of this module will use."""
    return _n_threads


def _version_from_hex(long v):
    """``0x030301F0`` -> ``"3.3.1"``; ``0x030400B2`` -> ``"3.4.0b2"`` (PY_VERSION_HEX's layout)."""
    level = (v >> 4) & 0xF
    return "%d.%d.%d%s" % (v >> 24, (v >> 16) & 0xFF, (v >> 8) & 0xFF,
                           "" if level == 0xF else "%s%d" % ({0xA: "a", 0xB: "b", 0xC: "rc"}.get(level, "?"), v & 0xF))


def build_info():
    """How this module was built: variant, OpenMP, vector exp/log, the Cython that generated it."""
    return {
        "variant": OPK_VARIANT.decode(),
        "cython": _version_from_hex(CYTHON_HEX_VERSION),
        "openmp": bool(OPK_OPENMP),
        "libmvec": bool(OPKERNELS_LIBMVEC),
    }


cdef inline int _threads_for(Py_ssize_t n_elements) noexcept nogil:
    if n_elements < MIN_PARALLEL or not OPK_OPENMP:
        return 1
    return _n_threads


cdef inline Py_ssize_t _chunk(Py_ssize_t n, int parts, Py_ssize_t align) noexcept nogil:
    """Elements per part, rounded up to a multiple of ``align``."""
    cdef Py_ssize_t c = (n + parts - 1) // parts
    return ((c + align - 1) // align) * align


# ---------------------------------------------------------------- helpers, one range each

cdef inline void _relu_fwd(const floating* x, floating* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = x[i]
        out[i] = 0 if v <= 0 else v         # -0.0 gives +0.0, as numpy; NaN is not <= 0: it propagates


cdef inline void _relu_bwd(const floating* x, const floating* g, floating* out,
                           Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi
    for i in range(n):
        gi = g[i]                           # load first: the loop vectorizes
        out[i] = gi * (x[i] > 0)            # a product, as TensorFlow: NaN in g stays NaN


cdef inline int _log_fwd(const floating* x, floating eps, floating* out,
                         Py_ssize_t n) noexcept nogil:
    """out = log(x + eps); return nonzero if some x + eps may be <= 0 (a NaN or -inf out).

    The flag is cheap, not exact: a double is compared after rounding to float, because gcc
    vectorizes a double compare-reduction only from AVX2 on, so a positive double below
    ~1e-45 also raises it.  The caller recounts exactly before it warns.
    """
    cdef Py_ssize_t i
    cdef floating v
    cdef int maybe = 0
    if floating is float:
        for i in range(n):
            v = x[i] + eps
            out[i] = logf(v)
            maybe |= v <= 0
    else:
        for i in range(n):
            v = x[i] + eps
            out[i] = log(v)
            maybe |= <float>v <= 0
    return maybe


cdef inline void _log_bwd(const floating* x, const floating* g, floating eps, floating* out,
                          Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = g[i] / (x[i] + eps)


cdef inline void _scaled_diff(const floating* s, const floating* y, floating scale,
                              floating* out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = scale * (s[i] - y[i])


cdef extern from *:
    """
    /* The lower clamp of _exp_inplace's float loop, just above log(FLT_MIN) = -87.3365 (exp of
       it is still a normal number).  volatile, and read once per call, so that gcc cannot
       fold exp(lo) into a constant: with it, gcc rewrites exp(v < lo ? lo : v) * (v >= lo) as
       (v >= lo) ? exp(v) : 0, and calls exp on every v unclamped again (measured: the slow
       path below stays). */
    static volatile float opk_exp_lo_f = -87.33f;
    """
    float opk_exp_lo_f


cdef inline void _exp_inplace(floating* a, Py_ssize_t n, bint below) noexcept nogil:
    """a = exp(a); for float with ``below`` (some a < opk_exp_lo_f), results under about
    FLT_MIN come out as 0.

    libmvec's vector exp hands the whole vector to scalar libm when one lane underflows below
    the smallest normal: float32 softmax took 8x longer on logits more than 87.34 apart (as a
    notebook-initialized model's are), and on -inf (a mask).  So a float block with an
    argument below lo takes a second loop, which raises each argument to lo and multiplies the
    result by (v >= lo): exact 0 for -inf, an absolute error below 1.2e-38 for the others, NaN
    stays NaN (NaN * 0).  The mask is taken from the argument: a select on exp's result doubled
    the loop's time (gcc 12, AVX-512).  Other blocks keep the plain loop: the second costs
    about 20% more (40% on the baseline build).  The caller finds ``below`` while it writes the arguments: a separate pass here
    cost up to 15% (its vector loads waited on the caller's scalar stores).
    double has the plain loop only: finding ``below`` (a row min beside the row max) made
    float64 softmax 10-15% slower on ordinary logits, and float64 reaches the slow path only
    beyond a spread of 708 or at a -inf mask (13x slower then, but exact: libm's subnormal
    results, as numpy's).
    """
    cdef Py_ssize_t i
    cdef floating v, e, lo
    if floating is float:
        if below:
            lo = opk_exp_lo_f
            for i in range(n):
                v = a[i]
                e = expf(lo if v < lo else v)
                a[i] = e * (v >= lo)
            return
        for i in range(n):
            a[i] = expf(a[i])
    else:
        for i in range(n):
            a[i] = exp(a[i])


cdef extern from "_short_rows.h" nogil:
    enum:
        OPK_ROWS_MAX_C_float
        OPK_ROWS_MAX_C_double
    int opk_shift_rows_float(const float* x, float* out, Py_ssize_t rows, Py_ssize_t c, float lo)
    int opk_shift_rows_double(const double* x, double* out, Py_ssize_t rows, Py_ssize_t c,
                              double lo)
    void opk_row_sums_float(const float* e, double* sums, Py_ssize_t rows, Py_ssize_t c)
    void opk_row_sums_double(const double* e, double* sums, Py_ssize_t rows, Py_ssize_t c)
    Py_ssize_t opk_count_correct_float(const float* scores, const float* labels, Py_ssize_t n,
                                       Py_ssize_t c)
    Py_ssize_t opk_count_correct_double(const double* scores, const double* labels,
                                        Py_ssize_t n, Py_ssize_t c)


cdef inline bint _rows_in_vectors(floating* dummy, Py_ssize_t c) noexcept nogil:
    """Whether _short_rows.h's vector loops take rows of c values (AVX-512, short rows); the
    unused ``dummy`` only selects the float type."""
    if floating is float:
        return c <= OPK_ROWS_MAX_C_float
    else:
        return c <= OPK_ROWS_MAX_C_double


cdef inline bint _shift_by_row_max(const floating* x, floating* out, Py_ssize_t rows,
                                   Py_ssize_t c) noexcept nogil:
    """out = x - max(x) row by row (a NaN max makes the row NaN); for float, return whether
    some out is below opk_exp_lo_f (min - max, on the way: a -inf, or a spread beyond exp's
    normal range); for double, False (see _exp_inplace).  Short rows on AVX-512: vector
    loops (_short_rows.h)."""
    cdef Py_ssize_t r, j
    cdef floating m, mn, v
    cdef bint below = False
    if _rows_in_vectors(out, c):
        if floating is float:
            return opk_shift_rows_float(x, out, rows, c, opk_exp_lo_f)
        else:
            return opk_shift_rows_double(x, out, rows, c, 0)
    for r in range(rows):
        m = x[r * c]
        mn = m
        for j in range(1, c):
            v = x[r * c + j]
            if v > m:
                m = v
            if floating is float:
                if v < mn:
                    mn = v
        if floating is float:
            below = below | (mn - m < opk_exp_lo_f)
        for j in range(c):
            out[r * c + j] = x[r * c + j] - m
    return below


cdef inline double _normalize_rows(floating* e, Py_ssize_t rows, Py_ssize_t c,
                                   const double* weights) noexcept nogil:
    """Divide each row of e by its sum t_r; return sum_r weights[r] * log(t_r) (0 if weights is NULL).

    Row sums are accumulated in double for float32 too: a float32 sum of c terms drifts by
    ~c * 2**-24 relative, 1e-3 at a vocabulary-sized c = 1e5 (the row sums are a sequential
    chain either way, so double costs nothing here).  Short rows on AVX-512 are summed by
    vector loops (_short_rows.h), in double too, in a tree order.
    """
    cdef Py_ssize_t r, j
    cdef double total
    cdef floating inv
    cdef double acc = 0
    cdef double sums[ROW_BLOCK]
    cdef bint vector = _rows_in_vectors(e, c) and rows <= ROW_BLOCK
    if vector:  # short rows on AVX-512 (_short_rows.h); the scaling below stays scalar
        if floating is float:
            opk_row_sums_float(e, sums, rows, c)
        else:
            opk_row_sums_double(e, sums, rows, c)
    for r in range(rows):
        if vector:
            total = sums[r]
        else:
            total = 0
            for j in range(c):
                total = total + e[r * c + j]
        inv = <floating>(1 / total)
        for j in range(c):
            e[r * c + j] = e[r * c + j] * inv
        if weights != NULL:
            acc += weights[r] * log(total)
    return acc


cdef inline void _softmax_fwd(const floating* x, floating* out, Py_ssize_t rows,
                              Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t r0, nb
    cdef bint below
    for r0 from 0 <= r0 < rows by ROW_BLOCK:
        nb = min(<Py_ssize_t>ROW_BLOCK, rows - r0)
        below = _shift_by_row_max(x + r0 * c, out + r0 * c, nb, c)
        _exp_inplace(out + r0 * c, nb * c, below)
        _normalize_rows(out + r0 * c, nb, c, NULL)


cdef inline void _softmax_bwd(const floating* s, const floating* g, floating* out,
                              Py_ssize_t rows, Py_ssize_t c) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef double dot  # in double for float32 too, as _normalize_rows
    cdef floating d
    for r in range(rows):
        dot = 0
        for j in range(c):
            dot = dot + <double>g[r * c + j] * s[r * c + j]
        d = <floating>dot
        for j in range(c):
            out[r * c + j] = s[r * c + j] * (g[r * c + j] - d)


cdef inline double _xent_fwd(const floating* z, const floating* y, floating* s,
                             Py_ssize_t rows, Py_ssize_t c) noexcept nogil:
    """Write softmax(z) into s; return sum_i -<y_i, log_softmax(z_i)>.

    With shifted = z - max(z) and t = sum(exp(shifted)), log_softmax = shifted - log(t), so
    -<y, log_softmax> = <y, 1> log(t) - <y, shifted>: no probability is ever logged.
    Classes with y == 0 add nothing, even at a logit of -inf (a mask): not 0 * -inf = NaN.
    """
    cdef Py_ssize_t r0, nb, r, j
    cdef double loss = 0
    cdef double ydot, ys  # in double for float32 too, as _normalize_rows
    cdef floating yj
    cdef double label_mass[ROW_BLOCK]
    cdef bint below
    for r0 from 0 <= r0 < rows by ROW_BLOCK:
        nb = min(<Py_ssize_t>ROW_BLOCK, rows - r0)
        below = _shift_by_row_max(z + r0 * c, s + r0 * c, nb, c)
        for r in range(r0, r0 + nb):
            ydot = 0
            ys = 0
            for j in range(c):
                ydot = ydot + <double>y[r * c + j] * s[r * c + j]
                ys = ys + y[r * c + j]
            if ydot != ydot:  # NaN: maybe 0 * -inf from a mask; redo without the y == 0 terms
                ydot = 0
                for j in range(c):
                    yj = y[r * c + j]
                    if yj != 0:
                        ydot = ydot + <double>yj * s[r * c + j]
            loss -= ydot
            label_mass[r - r0] = ys
        _exp_inplace(s + r0 * c, nb * c, below)
        loss += _normalize_rows(s + r0 * c, nb, c, label_mass)
    return loss


cdef inline double _count_correct(const floating* scores, const floating* labels, Py_ssize_t rows,
                                  Py_ssize_t c) noexcept nogil:
    """Rows whose argmax of scores is the argmax of labels (as np.argmax: the first largest,
    or the first NaN); c >= 1.  In C (_short_rows.h): vector argmax on AVX-512, a prefetch."""
    if floating is float:
        return opk_count_correct_float(scores, labels, rows, c)
    else:
        return opk_count_correct_double(scores, labels, rows, c)


# ------------------------------------------------- threading: one static chunk per thread

cdef enum Kind:
    RELU_FWD
    RELU_BWD
    LOG_FWD
    LOG_BWD
    SCALED_DIFF
    SOFTMAX_FWD
    SOFTMAX_BWD
    XENT_FWD
    COUNT_CORRECT


cdef inline double _range(Kind kind, const floating* a, const floating* b, floating k,
                          floating* out, Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    """Run one kernel on n elements (c == 1) or n rows of c values.

    LOG_FWD, XENT_FWD and COUNT_CORRECT return a value (COUNT_CORRECT writes nothing: out is NULL).
    """
    if kind == RELU_FWD:
        _relu_fwd(a, out, n)
    elif kind == RELU_BWD:
        _relu_bwd(a, b, out, n)
    elif kind == LOG_FWD:
        return _log_fwd(a, k, out, n)
    elif kind == LOG_BWD:
        _log_bwd(a, b, k, out, n)
    elif kind == SCALED_DIFF:
        _scaled_diff(a, b, k, out, n)
    elif kind == SOFTMAX_FWD:
        _softmax_fwd(a, out, n, c)
    elif kind == SOFTMAX_BWD:
        _softmax_bwd(a, b, out, n, c)
    elif kind == XENT_FWD:
        return _xent_fwd(a, b, out, n, c)
    elif kind == COUNT_CORRECT:
        return _count_correct(a, b, n, c)
    return 0


cdef double _run(Kind kind, const floating* a, const floating* b, floating k, floating* out,
                 Py_ssize_t n, Py_ssize_t c) noexcept nogil:
    """Split n elements/rows (of c values) into one static chunk per thread; sum the results.

    The chunks' results are added in chunk order after the parallel loop, not by an OpenMP
    reduction (whose order varies): a given thread count gives the same sum every call.
    """
    cdef int nt = _threads_for(n * c)
    cdef int t
    cdef Py_ssize_t step, start
    cdef double total = 0
    cdef double partial[THREAD_LIMIT]
    if n == 0 or c == 0:
        return 0
    if nt == 1:
        return _range(kind, a, b, k, out, n, c)
    # Chunks of whole cache lines (elementwise) or whole softmax blocks (rows).
    step = _chunk(n, nt, 16 if c == 1 else ROW_BLOCK)
    for t in prange(nt, schedule="static", num_threads=nt):
        start = t * step
        partial[t] = 0
        if start < n:
            partial[t] = _range(kind, a + start * c, (b + start * c) if b != NULL else b, k,
                                (out + start * c) if out != NULL else out, min(step, n - start), c)
    for t in range(nt):
        total += partial[t]
    return total


# ----------------------------------------------------------- drivers Python calls
# Each returns early on empty input, so &x[0] below always points into a buffer.

def relu_forward(const floating[::1] x,  # IN
                 floating[::1] out):     # OUT  max(x, 0)
    if x.shape[0] == 0:
        return
    with nogil:
        _run(RELU_FWD, &x[0], NULL, 0, &out[0], x.shape[0], 1)


def relu_backward(const floating[::1] x,  # IN   forward input
                  const floating[::1] g,  # IN   grad_y
                  floating[::1] out):     # OUT  g * (x > 0)
    if x.shape[0] == 0:
        return
    with nogil:
        _run(RELU_BWD, &x[0], &g[0], 0, &out[0], x.shape[0], 1)


def log_forward(const floating[::1] x,  # IN
                floating eps,
                floating[::1] out):     # OUT  log(x + eps)
    """Fill out; return True if some x + eps may be <= 0 (see _log_fwd: recount to be sure)."""
    cdef double maybe
    if x.shape[0] == 0:
        return False
    with nogil:
        maybe = _run(LOG_FWD, &x[0], NULL, eps, &out[0], x.shape[0], 1)
    return maybe != 0


def log_backward(const floating[::1] x,  # IN   forward input
                 const floating[::1] g,  # IN   grad_y
                 floating eps,
                 floating[::1] out):     # OUT  g / (x + eps)
    if x.shape[0] == 0:
        return
    with nogil:
        _run(LOG_BWD, &x[0], &g[0], eps, &out[0], x.shape[0], 1)


def scaled_difference(const floating[::1] s,  # IN
                      const floating[::1] y,  # IN
                      floating scale,
                      floating[::1] out):     # OUT  scale * (s - y)
    if s.shape[0] == 0:
        return
    with nogil:
        _run(SCALED_DIFF, &s[0], &y[0], scale, &out[0], s.shape[0], 1)


def softmax_forward(const floating[:, ::1] x,  # IN   (N, c) logits
                    floating[:, ::1] out):     # OUT  (N, c) row softmax
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    with nogil:
        _run(SOFTMAX_FWD, &x[0, 0], NULL, 0, &out[0, 0], x.shape[0], x.shape[1])


def softmax_backward(const floating[:, ::1] s,  # IN   (N, c) forward output
                     const floating[:, ::1] g,  # IN   (N, c) grad_y
                     floating[:, ::1] out):     # OUT  (N, c) s * (g - <g, s>)
    if s.shape[0] == 0 or s.shape[1] == 0:
        return
    with nogil:
        _run(SOFTMAX_BWD, &s[0, 0], &g[0, 0], 0, &out[0, 0], s.shape[0], s.shape[1])


def softmax_cross_entropy(const floating[:, ::1] z,  # IN   (N, c) logits
                          const floating[:, ::1] y,  # IN   (N, c) label rows
                          floating[:, ::1] s_out):   # OUT  (N, c) softmax(z)
    """Return sum_i -<y_i, log_softmax(z_i)> (not divided by N) and fill s_out."""
    cdef double total
    if z.shape[0] == 0 or z.shape[1] == 0:
        return 0.0
    with nogil:
        total = _run(XENT_FWD, &z[0, 0], &y[0, 0], 0, &s_out[0, 0], z.shape[0], z.shape[1])
    return total


def count_correct(const floating[:, ::1] scores,  # IN   (N, c) class scores
                  const floating[:, ::1] labels):  # IN   (N, c) label rows
    """Number of rows whose first largest score is at the first largest label (NaN counts as largest)."""
    cdef double total
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        return 0
    with nogil:
        total = _run(COUNT_CORRECT, &scores[0, 0], &labels[0, 0], 0, <floating*>NULL,
                     scores.shape[0], scores.shape[1])
    return <Py_ssize_t>total


# ------------------------------------------- relu then matmul, in one pass each way
# The C of _relu_matmul.h (GCC vector types): the model's second layer, relu(h1) @ W2.

cdef extern from "_relu_matmul.h" nogil:
    enum:
        OPK_RM_BYTES
        OPK_RM_LANES_float
        OPK_RM_LANES_double
    void opk_relu_matmul_fwd_float(const float* x, const float* wp, float* h, float* y,
                                   float* scratch, Py_ssize_t n, Py_ssize_t k, Py_ssize_t c,
                                   Py_ssize_t cp, int stream)
    void opk_relu_matmul_fwd_double(const double* x, const double* wp, double* h, double* y,
                                    double* scratch, Py_ssize_t n, Py_ssize_t k, Py_ssize_t c,
                                    Py_ssize_t cp, int stream)
    void opk_relu_matmul_bwd_float(const float* g, const float* h, const float* wt, float* dh,
                                   float* acc, float* blk, float* scratch, Py_ssize_t n,
                                   Py_ssize_t k, Py_ssize_t kp, Py_ssize_t c, int stream)
    void opk_relu_matmul_bwd_double(const double* g, const double* h, const double* wt,
                                    double* dh, double* acc, double* blk, double* scratch,
                                    Py_ssize_t n, Py_ssize_t k, Py_ssize_t kp, Py_ssize_t c,
                                    int stream)

#: Vector lanes per float type: relu_matmul_backward's wt and work rows are padded to them.
RELU_MATMUL_LANES = {"float32": OPK_RM_LANES_float, "float64": OPK_RM_LANES_double}
#: Whether the one-pass kernels beat relu and BLAS's products here.  With 16-byte vectors (the
#: baseline build, SSE2, no FMA) they are compute-bound: on (60000, 100) x 10, one thread,
#: float32, backward 6.5 ms against 4.2 (x86-64-v3: 2.8 against 4.3), forward 5.2 against
#: 2.5 (x86-64-v3: 2.3 against 2.6).
RELU_MATMUL_FUSED = OPK_RM_BYTES >= 32


cdef inline void _relu_matmul_fwd_range(const floating* x, const floating* wp, floating* h,
                                        floating* y, floating* scratch, Py_ssize_t n,
                                        Py_ssize_t k, Py_ssize_t c, Py_ssize_t cp,
                                        int stream) noexcept nogil:
    if floating is float:
        opk_relu_matmul_fwd_float(x, wp, h, y, scratch, n, k, c, cp, stream)
    else:
        opk_relu_matmul_fwd_double(x, wp, h, y, scratch, n, k, c, cp, stream)


def relu_matmul_forward(const floating[:, ::1] x,   # IN   (N, k)
                        const floating[:, ::1] wp,  # IN   (k, cp) W, zero-padded to the lanes
                        floating[:, ::1] h,         # OUT  (N, k) relu(x), or None: not kept
                        floating[:, ::1] y,         # OUT  (N, c) relu(x) @ W
                        floating[:, ::1] work,      # OUT  (threads, 8 (k + cp)) scratch
                        bint stream):
    """Fill y = relu(x) @ W, and h = relu(x) unless h is None; stream: write h past the
    caches (see _relu_matmul.h)."""
    cdef Py_ssize_t n = x.shape[0], k = x.shape[1], c = y.shape[1], cp = wp.shape[1]
    cdef Py_ssize_t step, start
    cdef int nt = min(_threads_for(n * k), <int>work.shape[0])
    cdef int t
    cdef floating* hp = NULL  # h's first value, NULL when h is not kept
    if work.shape[1] < 8 * (k + cp):  # the one check here: the loop writes this much per row
        raise ValueError("relu_matmul_forward: work rows too short, need 8 (k + cp) values")
    if n == 0:
        return
    if k == 0:  # sums of nothing
        y[:, :] = 0
        return
    if h is not None:
        hp = &h[0, 0]
    with nogil:
        if c == 0:  # no outputs: relu alone, if h is kept
            if hp != NULL:
                _run(RELU_FWD, &x[0, 0], NULL, 0, hp, n * k, 1)
        elif nt == 1:
            _relu_matmul_fwd_range(&x[0, 0], &wp[0, 0], hp, &y[0, 0], &work[0, 0],
                                   n, k, c, cp, stream)
        else:
            step = _chunk(n, nt, 4)  # whole 4-row blocks: h's streamed rows stay aligned
            for t in prange(nt, schedule="static", num_threads=nt):
                start = t * step
                if start < n:
                    _relu_matmul_fwd_range(&x[start, 0], &wp[0, 0],
                                           NULL if hp == NULL else hp + start * k,
                                           &y[start, 0], &work[t, 0], min(step, n - start),
                                           k, c, cp, stream)


cdef inline void _relu_matmul_range(const floating* g, const floating* x, const floating* wt,
                                    floating* dh, floating* work, Py_ssize_t n, Py_ssize_t k,
                                    Py_ssize_t kp, Py_ssize_t c, int stream) noexcept nogil:
    # work: acc (c * kp), blk (c * kp), scratch (4 * k + lanes, then 4 * kp + 64 bytes)
    if floating is float:
        opk_relu_matmul_bwd_float(g, x, wt, dh, work, work + c * kp, work + 2 * c * kp,
                                  n, k, kp, c, stream)
    else:
        opk_relu_matmul_bwd_double(g, x, wt, dh, work, work + c * kp, work + 2 * c * kp,
                                   n, k, kp, c, stream)


def relu_matmul_backward(const floating[:, ::1] g,   # IN   (N, c) grad_y
                         const floating[:, ::1] x,   # IN   (N, k) the relu's input (or relu(x))
                         const floating[:, ::1] wt,  # IN   (c, kp) W^T, zero-padded
                         floating[:, ::1] dh,        # OUT  (N, k) (g @ W^T) * (x > 0)
                         floating[:, ::1] work,      # OUT  (threads, see _table._backward_work), 0:
                                                     #      rows start with g^T @ relu(x) parts
                         bint stream):
    """Fill dh and the first c * kp values of work's rows (one per thread, the rest 0), whose
    sum is g^T @ relu(x); stream: write dh past the caches (see _relu_matmul.h)."""
    cdef Py_ssize_t n = g.shape[0], c = g.shape[1], k = x.shape[1], kp = wt.shape[1]
    cdef Py_ssize_t step, start
    cdef int nt = min(_threads_for(n * k), <int>work.shape[0])
    cdef int t
    cdef Py_ssize_t lanes = OPK_RM_LANES_float if floating is float else OPK_RM_LANES_double
    # the one check here: the loop writes every value of a work row this long
    if work.shape[1] < 2 * c * kp + 4 * k + lanes + 4 * kp + 64 // work.itemsize:
        raise ValueError("relu_matmul_backward: work rows too short (see _table._backward_work)")
    if n == 0 or k == 0:
        return
    if c == 0:  # g @ W^T of no classes: zeros
        dh[:, :] = 0
        return
    with nogil:
        if nt == 1:
            _relu_matmul_range(&g[0, 0], &x[0, 0], &wt[0, 0], &dh[0, 0], &work[0, 0],
                               n, k, kp, c, stream)
        else:
            step = _chunk(n, nt, 4)  # whole 4-row blocks: dh's streamed rows stay aligned
            for t in prange(nt, schedule="static", num_threads=nt):
                start = t * step
                if start < n:
                    _relu_matmul_range(&g[start, 0], &x[start, 0], &wt[0, 0], &dh[start, 0],
                                       &work[t, 0], min(step, n - start), k, kp, c, stream)


# ----------------------------------------------------------- the Adam update
# One pass over the parameters instead of numpy's twenty: m, v and p are read and written
# once.  The arithmetic follows pyops.model.Adam step for step (see its docstring),
# including setting moments below the smallest normal float to zero.

cdef inline void _adam_range(floating* p, const floating* g, floating* m, floating* v,
                             Py_ssize_t n, floating one_minus_b1, floating one_minus_b2,
                             floating eps, floating decay, floating step_size,
                             floating inv_root_c2) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, mi, vi, root
    cdef floating tiny = FLT_MIN if floating is float else DBL_MIN
    for i in range(n):
        gi = g[i]
        mi = m[i] + one_minus_b1 * (gi - m[i])
        mi = 0 if (mi < tiny and mi > -tiny) else mi
        vi = v[i] + one_minus_b2 * (gi * gi - v[i])
        vi = 0 if vi < tiny else vi
        m[i] = mi
        v[i] = vi
        if floating is float:
            root = sqrtf(vi)
        else:
            root = sqrt(vi)
        p[i] = p[i] * decay - (mi / (root * inv_root_c2 + eps)) * step_size


def adam_update(floating[::1] p,        # IN/OUT  parameters
                const floating[::1] g,  # IN      their gradient
                floating[::1] m,        # IN/OUT  first moment
                floating[::1] v,        # IN/OUT  second moment
                double b1, double b2, double eps, double decay, double step_size,
                double inv_root_c2):
    """``m, v`` updated, then ``p = p * decay - step_size * m / (sqrt(v) * inv_root_c2 + eps)``."""
    cdef Py_ssize_t n = p.shape[0], step, start
    cdef int nt = _threads_for(n)
    cdef int t
    cdef floating* pp
    cdef const floating* gp
    cdef floating* mp
    cdef floating* vp
    cdef floating c1 = <floating>(1.0 - b1), c2 = <floating>(1.0 - b2)
    if g.shape[0] != n or m.shape[0] != n or v.shape[0] != n:  # Adam checks; this is cheap
        raise ValueError(f"adam_update: p, g, m, v must have one length, got "
                         f"{n}, {g.shape[0]}, {m.shape[0]}, {v.shape[0]}")
    if n == 0:
        return
    pp, gp, mp, vp = &p[0], &g[0], &m[0], &v[0]
    with nogil:
        if nt == 1:
            _adam_range(pp, gp, mp, vp, n, c1, c2, <floating>eps, <floating>decay,
                        <floating>step_size, <floating>inv_root_c2)
        else:
            step = _chunk(n, nt, 16)
            for t in prange(nt, schedule="static", num_threads=nt):
                start = t * step
                if start < n:
                    _adam_range(pp + start, gp + start, mp + start, vp + start,
                                min(step, n - start), c1, c2, <floating>eps, <floating>decay,
                                <floating>step_size, <floating>inv_root_c2)


# ------------------------------------------------ calls on the kernels' OpenMP threads

def run_calls(object function, list calls):
    """``function(*calls[t])`` for every t, each on its own OpenMP thread (one static chunk
    per thread), then return.

    For kernels._matmul, whose ``function`` is numpy.matmul on one part of a product: numpy
    releases the GIL while BLAS computes, so the parts run at once, on the threads that run
    the kernels (awake, or spinning briefly, after the kernel before).  Each thread takes
    the GIL to enter and leave the parallel region and to start and finish its call, so
    another busy Python thread can delay each hand-over by its switch interval.  An
    exception in a call is raised here after every call that started has returned; calls
    not yet started then are skipped.  Without OpenMP the calls run one after another.
    """
    cdef Py_ssize_t t, n = len(calls)
    if n == 0:
        return
    with nogil:
        for t in prange(n, schedule="static", num_threads=<int>min(n, THREAD_LIMIT)):
            with gil:
                function(*calls[t])
