"""The compiled kernels against the numpy reference: random inputs, every built CPU variant,
sizes on both sides of the threading threshold, finite differences, and hypothesis."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kernels
import pyops
from conftest import TOL, before_guard_page, built_runnable_variants
from kernels import _dispatch
from pyops.backend import get_kernels

# (N, c): below and above kernels' PARALLEL_MIN_ELEMENTS, and ragged thread chunks.
SHAPES = [(1, 1), (3, 10), (129, 10), (6001, 10), (1001, 100)]
UNARY = ["Relu", "Softmax", "Log", "SoftmaxCrossEntropy"]


def forward_backward(ops, name, x, g):
    op = getattr(ops, name)()
    if name == "SoftmaxCrossEntropy":
        labels = np.eye(x.shape[1], dtype=x.dtype)[np.arange(x.shape[0]) % x.shape[1]]
        return np.asarray(op.forward(x, labels)), op.backward(2.0)
    if name == "Log":
        x = np.abs(x)
    return op.forward(x), op.backward(g)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", UNARY)
def test_cython_matches_numpy(name, shape, dtype, rng):
    x = (rng.normal(size=shape) * 3).astype(dtype)
    g = rng.normal(size=shape).astype(dtype)
    want = forward_backward(pyops.get_ops("numpy"), name, x, g)
    got = forward_backward(pyops.get_ops("cython"), name, x, g)
    for w, v in zip(want, got):
        assert v.dtype == w.dtype
        np.testing.assert_allclose(v, w, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)


@pytest.mark.parametrize("variant", built_runnable_variants())
def test_every_cpu_variant_matches_numpy(variant, dtype, rng):
    """Each compiled build this CPU can run, called directly (PYOPS_CPU_VARIANT picks one per process)."""
    mod = _dispatch.load_variant(variant)
    x = (rng.normal(size=(6001, 10)) * 3).astype(dtype)
    g = rng.normal(size=x.shape).astype(dtype)
    ref = pyops._numpy_kernels
    tol = dict(rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)
    for fn, args in [("relu_forward", (x,)), ("relu_backward", (x, g)), ("softmax_forward", (x,)),
                     ("log_forward", (np.abs(x), 1e-12)), ("log_backward", (np.abs(x), g, 1e-12))]:
        want = getattr(ref, fn)(*args, out=np.empty_like(x))
        out = np.empty_like(x)
        flat = fn != "softmax_forward"
        call_args = [a.reshape(-1) if flat and isinstance(a, np.ndarray) else a for a in args]
        getattr(mod, fn)(*call_args, out.reshape(-1) if flat else out)
        np.testing.assert_allclose(out, want, **tol, err_msg=f"{variant}.{fn}")
    s = ref.softmax_forward(x, np.empty_like(x))
    out = np.empty_like(x)
    mod.softmax_backward(s, g, out)
    np.testing.assert_allclose(out, ref.softmax_backward(s, g, np.empty_like(x)), **tol)


def scores_and_labels(shape, dtype, rng):
    """Random scores and smoothed one-hot labels, with ties, NaN and infinities in some rows."""
    n, c = shape
    scores = rng.integers(-2, 3, size=shape).astype(dtype)   # small ints: many ties
    labels = np.full(shape, 0.1 / c, dtype)
    labels[np.arange(n), rng.integers(0, c, n)] += 0.9
    rows = rng.permutation(n)[:max(1, n // 8)]
    for k, r in enumerate(rows):
        j = int(rng.integers(0, c))
        if k % 4 == 0:
            scores[r, j] = np.nan
        elif k % 4 == 1:
            scores[r, j] = np.inf
        elif k % 4 == 2:
            scores[r, :] = -np.inf
        else:
            labels[r, j] = np.nan
    return scores, labels


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_count_correct_is_numpys_argmax(shape, dtype, rng):
    """The compiled count of rows whose argmax agree, in every variant: np.argmax's ties and NaN."""
    scores, labels = scores_and_labels(shape, dtype, rng)
    want = int(np.count_nonzero(np.argmax(scores, axis=1) == np.argmax(labels, axis=1)))
    for variant in built_runnable_variants():
        got = _dispatch.load_variant(variant).count_correct(scores, labels)
        assert type(got) is int and got == want, variant
    assert 0 < want < shape[0] or shape[0] < 8  # the case is not trivially all or none


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect guard pages: Linux")
def test_count_correct_every_row_width_up_to_a_guard_page(dtype, rng):
    """Rows 1 to 35 wide: one and two vectors of every CPU variant (AVX-512: 16 floats or 8
    doubles each, lanes past the row masked), wider rows on the scalar loop; ties, NaN and
    infinities in either vector, rows with several NaN (the first counts), -0.0 beside +0.0;
    arrays that end at an inaccessible page, so that a load past the last row faults.  Each
    row's argmax is checked on its own: against labels at np.argmax every row counts, against
    labels one column off none does."""
    for c in range(1, 36):
        scores, labels = scores_and_labels((40, c), dtype, rng)
        scores[0] = 0.0
        scores[0, ::2] = -0.0                   # -0.0 first: the max is the first zero
        for r, cols in ((1, [c // 2, c - 1]), (2, [c - 1, 0]), (3, [c // 3, c // 2, c - 1])):
            scores[r] = rng.normal(size=c)
            scores[r, cols] = np.nan            # several NaN, in one or both vectors
        want = int(np.count_nonzero(np.argmax(scores, axis=1) == np.argmax(labels, axis=1)))
        at = np.eye(c, dtype=dtype)[np.argmax(scores, axis=1)]
        off = np.eye(c, dtype=dtype)[(np.argmax(scores, axis=1) + 1) % c]
        scores, labels, at, off = (before_guard_page(a) for a in (scores, labels, at, off))
        for variant in built_runnable_variants():
            mod = _dispatch.load_variant(variant)
            assert mod.count_correct(scores, labels) == want, (variant, c)
            assert mod.count_correct(scores, at) == len(scores), (variant, c)
            assert mod.count_correct(scores, off) == (0 if c > 1 else len(scores)), (variant, c)


@pytest.mark.skipif(not kernels.build_info()["openmp"], reason="kernels built without OpenMP")
def test_threads_do_not_change_results(dtype, rng):
    """Forward and backward of every op, and the accuracy count, on 1 and 2 threads, above the
    parallel threshold."""
    x = rng.normal(size=(3000, 100)).astype(dtype)
    g = rng.normal(size=x.shape).astype(dtype)
    assert x.size >= kernels.build_info()["parallel_min_elements"]
    ops = pyops.get_ops("cython")
    scores, labels = scores_and_labels(x.shape, dtype, rng)
    before = kernels.get_num_threads()
    results = {}
    try:
        for n in (1, 2):
            kernels.set_num_threads(n)
            assert kernels.get_num_threads() == n
            results[n] = [a for name in UNARY for a in forward_backward(ops, name, x, g)]
            results[n].append(np.array(get_kernels("cython").count_correct(scores, labels)))
    finally:
        kernels.set_num_threads(before)
    for a, b in zip(results[1], results[2]):
        if a.ndim == 0:  # the cross-entropy loss: a sum, added up in another order per thread
            np.testing.assert_allclose(a, b, rtol=TOL[dtype]["rtol"])
        else:            # elementwise and row-wise results: bit for bit
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not kernels.build_info()["openmp"], reason="kernels built without OpenMP")
def test_a_sum_over_threads_is_the_same_every_call(rng):
    """The loss adds per-thread partial sums in chunk order, not by an OpenMP reduction
    (whose order varies from call to call once there are more threads than cores)."""
    z = rng.normal(size=(200_000, 10))
    labels = rng.integers(0, 10, 200_000)
    before = kernels.get_num_threads()
    try:
        for n in (2, 3, 5):
            kernels.set_num_threads(n)
            losses = {kernels.SoftmaxCrossEntropy().forward(z, labels) for _ in range(12)}
            assert len(losses) == 1, (n, losses)
    finally:
        kernels.set_num_threads(before)


def test_float32_long_rows_are_summed_accurately(ops, rng):
    """Rows of 200000 classes (a vocabulary): the row sums behind softmax and the loss.

    A float32 running sum drifts by ~c * 2**-24 (it gave 9e-6 relative error in softmax and
    2e-4 in a label-smoothed loss here); the kernels sum in double, numpy pairwise."""
    c = 200_000
    z = rng.normal(size=(2, c)).astype(np.float32)
    z64 = z.astype(np.float64)
    e = np.exp(z64 - z64.max(axis=1, keepdims=True))
    s64 = e / e.sum(axis=1, keepdims=True)
    s = ops.Softmax().forward(z)
    assert np.max(np.abs(s - s64) / s64) < 2e-6
    y = np.full((2, c), 0.1 / c, np.float32)
    y[:, 7] += 0.9  # label smoothing 0.1
    want = -np.mean(np.sum(y.astype(np.float64) * np.log(s64), axis=1))
    got = ops.SoftmaxCrossEntropy().forward(z, y)
    assert abs(got - want) / want < 1e-6, (got, want)


def numeric_grad(f, x, g, h=1e-6):
    """Central differences of <g, f(x)> with respect to x."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        grad[i] = (np.sum(g * f(xp)) - np.sum(g * f(xm))) / (2 * h)
    return grad


@pytest.mark.parametrize("name", ["Relu", "Softmax", "Log", "Matmul-x", "Matmul-W"])
def test_finite_differences(ops, name, rng):
    x = rng.normal(size=(4, 5))
    x[np.abs(x) < 0.05] = 0.3  # away from relu's kink
    W = rng.normal(size=(5, 3))
    if name == "Log":
        x = np.abs(x) + 0.1
    if name.startswith("Matmul"):
        g = rng.normal(size=(4, 3))
        op = ops.Matmul()
        op.forward(x, W)
        gx, gW = op.backward(g)
        if name == "Matmul-x":
            np.testing.assert_allclose(gx, numeric_grad(lambda a: a @ W, x, g), rtol=1e-6, atol=1e-8)
        else:
            np.testing.assert_allclose(gW, numeric_grad(lambda a: x @ a, W, g), rtol=1e-6, atol=1e-8)
        return
    g = rng.normal(size=x.shape)
    op = getattr(ops, name)()
    op.forward(x)
    f = lambda a: getattr(ops, name)().forward(a)  # noqa: E731
    np.testing.assert_allclose(op.backward(g), numeric_grad(f, x, g), rtol=1e-6, atol=1e-8)


def test_cross_entropy_finite_differences(ops, rng):
    z = rng.normal(size=(6, 4))
    y = np.eye(4)[[0, 1, 2, 3, 0, 1]]
    op = ops.SoftmaxCrossEntropy()
    op.forward(z, y)
    num = numeric_grad(lambda a: np.asarray(ops.SoftmaxCrossEntropy().forward(a, y)), z, np.ones(()))
    np.testing.assert_allclose(op.backward(), num, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- property-based

float_arrays = st.sampled_from([np.float32, np.float64]).flatmap(
    lambda dt: hnp.arrays(
        dt,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40),
        elements=st.floats(-50, 50, width=np.dtype(dt).itemsize * 8, allow_nan=False),
    )
)


def strided(a, step, order):
    """``a``'s values with another memory layout: every ``step``-th row of a bigger array, or F order."""
    if order == "F":
        return np.asfortranarray(a)
    big = np.zeros((a.shape[0] * step, a.shape[1]), a.dtype)
    big[::step] = a
    return big[::step]


@settings(max_examples=60, deadline=None)
@given(x=float_arrays, step=st.integers(1, 3), order=st.sampled_from(["C", "F"]))
def test_property_cython_equals_numpy(x, step, order):
    g = np.cos(x).astype(x.dtype)  # a deterministic gradient with both signs
    xs, gs = strided(x, step, order), strided(g, step, order)
    tol = dict(rtol=TOL[x.dtype.type]["rtol"] * 10, atol=TOL[x.dtype.type]["atol"] * 10)
    for name in ("Relu", "Softmax", "Log"):
        want = forward_backward(pyops.get_ops("numpy"), name, x, g)
        got = forward_backward(pyops.get_ops("cython"), name, xs, gs)
        for w, v in zip(want, got):
            np.testing.assert_allclose(v, w, **tol, err_msg=name)


@settings(max_examples=40, deadline=None)
@given(x=float_arrays)
def test_property_softmax_rows_are_distributions(x):
    if x.shape[1] == 0:
        return
    s = pyops.get_ops("cython").Softmax().forward(x * 1e3)  # large logits must not overflow
    assert np.all(np.isfinite(s)) and np.all(s >= 0)
    np.testing.assert_allclose(s.sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("size", [5, 100_003], ids=["1-thread", "threaded"])
def test_log_domain_flag_in_every_variant(size, dtype):
    """Each variant's log_forward returns True when some x + eps <= 0, wherever it is, and
    False on valid input (the flag pyops turns into Log's RuntimeWarning)."""
    for variant in built_runnable_variants():
        mod = _dispatch.load_variant(variant)
        for bad_at in (None, 0, size // 2, size - 1):
            x = np.ones(size, dtype)
            if bad_at is not None:
                x[bad_at] = -0.5
            flag = mod.log_forward(x, dtype(0.5), np.empty_like(x))
            assert flag is (bad_at is not None), (variant, bad_at)


def test_a_zero_loss_is_positive_zero_on_both_backends(ops, dtype):
    """A masked (-inf) logit beside the labelled one: the loss is exactly 0, and +0.0, not -0.0."""
    loss = ops.SoftmaxCrossEntropy().forward(np.array([[-np.inf, 1.0]], dtype), np.array([1]))
    assert loss == 0 and np.copysign(1.0, loss) == 1.0


# Logits this far below their row's max, around where exp leaves the normal numbers:
# log(FLT_MIN) = -87.34 and log(DBL_MIN) = -708.40.
FAR_OFFSETS = [0.0, -1.0, -80.0, -87.0, -87.33, -87.34, -90.0, -104.0, -200.0,
               -708.0, -708.39, -708.4, -800.0, -np.inf]


def far_apart_logits(dtype, every=1):
    """6001 rows (threaded), each rolled and shifted: FAR_OFFSETS on every ``every``-th row,
    logits 0 to -5 on the others (blocks of rows with and without far-apart logits)."""
    far, near = np.array(FAR_OFFSETS), np.linspace(0.0, -5.0, len(FAR_OFFSETS))
    rows = [np.roll(far if r % every == 0 else near, r) + r % 7 for r in range(6001)]
    return np.array(rows).astype(dtype)


def exact_softmax(x):
    """Softmax in np.longdouble (float64 inputs too: -800 does not underflow there on x86)."""
    z = x.astype(np.longdouble)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def assert_softmax_close(got, x, flushed):
    """Within the dtype's rtol, or below an absolute 1.01 * its smallest normal number; with
    ``flushed`` (the compiled float32 kernels), exactly 0 where a logit is more than 87.34
    below its row's max (exp of the difference is then below the smallest normal number)."""
    tiny = np.finfo(x.dtype).tiny
    want = exact_softmax(x)
    err = np.abs(got.astype(np.longdouble) - want)
    bound = np.maximum(TOL[x.dtype.type]["rtol"] * want, 1.01 * tiny)
    assert np.all(err <= bound), float(np.max(err / bound))
    if flushed:
        shifted = x - x.max(axis=1, keepdims=True)
        assert np.all(got[shifted < np.log(tiny)] == 0)


@pytest.mark.parametrize("every", [1, 150], ids=["every-row", "some-rows"])
@pytest.mark.parametrize("variant", built_runnable_variants())
def test_softmax_of_logits_far_apart_in_every_variant(variant, every, dtype):
    """float32 exp lanes that would leave the normal numbers give 0 (the kernels' clamp, which
    keeps libmvec off its scalar slow path; float64 keeps libm's subnormals); every other
    probability keeps full precision."""
    mod = _dispatch.load_variant(variant)
    x = far_apart_logits(dtype, every)
    s = np.empty_like(x)
    mod.softmax_forward(x, s)
    assert_softmax_close(s, x, flushed=dtype == np.float32)
    labels = np.eye(x.shape[1], dtype=dtype)[np.arange(x.shape[0]) % x.shape[1]]
    s2 = np.empty_like(x)
    loss = mod.softmax_cross_entropy(x, labels, s2)
    np.testing.assert_array_equal(s2, s)
    shifted = (x - x.max(axis=1, keepdims=True)).astype(np.float64)
    want = -np.sum(labels * np.where(labels > 0, shifted, 0.0)) + np.sum(
        np.log(np.sum(np.exp(shifted), axis=1)))
    assert loss == pytest.approx(want, rel=1e-6 if dtype == np.float32 else 1e-12)


def test_softmax_of_logits_far_apart_on_both_backends(ops, dtype):
    x = far_apart_logits(dtype)
    assert_softmax_close(ops.Softmax().forward(x), x, flushed=ops.backend == "cython" and dtype == np.float32)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect guard pages: Linux")
@pytest.mark.parametrize("variant", built_runnable_variants())
def test_softmax_every_row_width_in_every_variant(variant, dtype, rng):
    """Rows 1 to 40 wide: one and two vectors of the AVX-512 row loops (up to 32 floats or 16
    doubles), wider rows on the scalar loops, on arrays that end at an inaccessible page;
    -inf masks, a NaN row and an all -inf row (NaN, as 0/0 in numpy); the fused op gives the
    same probabilities.  Then rows whose only far-apart logit is their last, in the second
    vector from 17 columns on: float32 must still find it (the row min) and give exact 0."""
    mod = _dispatch.load_variant(variant)
    for c in range(1, 41):
        x = (rng.normal(size=(70, c)) * 4).astype(dtype)
        x[rng.random(x.shape) < 0.2] = -np.inf
        x[:, 0] = np.where(np.isinf(x[:, 0]), 0, x[:, 0])  # a finite logit in every row ...
        x[5, c // 2] = np.nan
        x[6] = -np.inf                                     # ... but these two
        x = before_guard_page(x)
        s = np.empty_like(x)
        mod.softmax_forward(x, s)
        ok = np.ones(len(x), bool)
        ok[[5, 6]] = False
        assert_softmax_close(s[ok], x[ok], flushed=dtype == np.float32)
        assert np.all(np.isnan(s[~ok])), c
        labels = before_guard_page(np.eye(c, dtype=dtype)[np.zeros(len(x), int)])
        s2 = np.empty_like(x)
        mod.softmax_cross_entropy(x, labels, s2)
        np.testing.assert_array_equal(s2, s, err_msg=f"c={c}")
        if c > 1:
            far = rng.normal(size=(70, c)).astype(dtype)
            far[:, -1] -= 95  # below the float32 exp clamp (-87.33), no -inf anywhere
            far = before_guard_page(far)
            s3 = np.empty_like(far)
            mod.softmax_forward(far, s3)
            assert_softmax_close(s3, far, flushed=dtype == np.float32)


@pytest.mark.parametrize("variant", built_runnable_variants())
def test_softmax_keeps_nan_in_every_variant(variant, dtype):
    """A NaN logit makes its row NaN, even beside logits the exp clamp zeroes (NaN * 0)."""
    mod = _dispatch.load_variant(variant)
    x = np.zeros((2, 4), dtype)
    x[0] = [np.nan, 0.0, -np.inf, -1000.0]
    x[1] = [0.0, -1000.0, -np.inf, np.nan]
    s = np.empty_like(x)
    mod.softmax_forward(x, s)
    assert np.all(np.isnan(s))
