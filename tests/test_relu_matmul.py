"""``relu_matmul_forward`` and ``relu_matmul_backward``: the model's second layer
(``relu(h1) @ W2``) run forward and backward in one pass each, on both kernel tables and every
compiled CPU variant, against the two ops they replace.  The backward takes the relu's input
``x`` (the model's ``h1``) and applies relu as it reads it; given ``h = relu(x)`` instead it
gives the same bits."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import pyops
from conftest import TOL, before_guard_page, built_runnable_variants
from kernels import _dispatch, _table
from pyops.backend import get_kernels

# (N, k, c): tails of the 4-row blocks (N % 4 from 0 to 3) and of the forward's 8-row ones
# (where c <= lanes, e.g. 13 and 4094 rows end in 8 + 4 + 1 and 8 + 4 + 2), of the vector
# lanes (k % 8, k % 16, k below one vector), one column or class, and sizes above the
# threading threshold (N * k >= 32768), with every N % 4 and k below one vector there too.
SHAPES = [(0, 5, 3), (1, 1, 1), (3, 5, 2), (4, 16, 3), (5, 17, 10), (8, 3, 4), (13, 100, 10),
          (6, 9, 2), (1001, 33, 17), (2048, 100, 10), (6001, 24, 1), (6002, 7, 10), (4094, 9, 3)]


def inputs(n, k, c, dtype, rng):
    """g (n, c), x (n, k) with about half its values negative, W (k, c)."""
    g = rng.normal(size=(n, c)).astype(dtype)
    x = rng.normal(size=(n, k)).astype(dtype)
    return g, x, rng.normal(size=(k, c)).astype(dtype)


def separate_ops(g, x, W, backend):
    """What the model computed before: Matmul.backward at relu(x), then Relu.backward."""
    ops = pyops.get_ops(backend)
    relu, mul = ops.Relu(), ops.Matmul()
    h = relu.forward(x)
    mul.forward(h, W)
    dh, dW = mul.backward(g)
    return relu.backward(dh), dW


def assert_close(got, want, dtype):
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=TOL[dtype]["rtol"] * 10,
                                   atol=TOL[dtype]["atol"] * 10 * max(1.0, np.abs(b).max(initial=0)))


def backward_from_x_and_h(backward, g, x, W):
    """``backward(g, x, W, out_dx, out_dW)`` from x and from relu(x): the outputs from x,
    after checking that those from relu(x) are the same bits."""
    got = []
    for given in (x, np.maximum(x, 0)):
        dx, dW = np.full(x.shape, np.nan, x.dtype), np.full(W.shape, np.nan, x.dtype)
        backward(g, given, W, dx, dW)
        got.append((dx, dW))
    for a, b in zip(*got):
        np.testing.assert_array_equal(a, b)
    return got[0]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_both_tables_match_the_separate_ops(ops, shape, dtype, rng):
    g, x, W = inputs(*shape, dtype, rng)
    dx, dW = np.full(x.shape, np.nan, dtype), np.full(W.shape, np.nan, dtype)
    got = get_kernels(ops.backend).relu_matmul_backward(g, x, W, dx, dW)
    assert got[0] is dx and got[1] is dW
    assert_close((dx, dW), separate_ops(g, x, W, "numpy"), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_from_x_or_from_relu_x_alike(ops, shape, dtype, rng):
    g, x, W = inputs(*shape, dtype, rng)
    backward_from_x_and_h(get_kernels(ops.backend).relu_matmul_backward, g, x, W)


@pytest.mark.parametrize("stream", [False, True], ids=["cached", "streamed"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("variant", built_runnable_variants())
def test_every_cpu_variant(variant, shape, stream, dtype, rng, monkeypatch):
    """Each build, with dx written through the caches or streamed past them (forced here
    for small arrays; the table streams from STREAM_MIN_BYTES on), from x or relu(x)."""
    monkeypatch.setattr(_table, "STREAM_MIN_BYTES", 0 if stream else 1 << 62)
    mod = _dispatch.load_variant(variant)
    g, x, W = inputs(*shape, dtype, rng)
    got = backward_from_x_and_h(
        lambda *args: _table._relu_matmul_backward_on(mod, *args), g, x, W)
    assert_close(got, separate_ops(g, x, W, "numpy"), dtype)


def test_streamed_rows_need_no_alignment(dtype, rng, monkeypatch):
    """dx one element off 16-byte alignment: written with plain stores, still right."""
    monkeypatch.setattr(_table, "STREAM_MIN_BYTES", 0)
    g, x, W = inputs(1001, 33, 10, dtype, rng)
    raw = np.zeros(x.size + 1, dtype)
    dx = raw[1:].reshape(x.shape)
    assert dx.ctypes.data % 16 != 0
    _table.relu_matmul_backward(g, x, W, dx, np.empty_like(W))
    np.testing.assert_allclose(dx, separate_ops(g, x, W, "numpy")[0],
                               rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 100)
    assert raw[0] == 0


def test_large_batch_is_streamed_and_right(rng):
    """The training step's shape: (60000, 100) float32 is 24 MB, past STREAM_MIN_BYTES."""
    g, x, W = inputs(60000, 100, 10, np.float32, rng)
    dx = np.empty_like(x)
    assert dx.nbytes >= _table.STREAM_MIN_BYTES
    dW = np.empty_like(W)
    _table.relu_matmul_backward(g, x, W, dx, dW)
    assert_close((dx, dW), separate_ops(g, x, W, "numpy"), np.float32)


def test_same_thread_count_gives_the_same_bits(rng):
    g, x, W = inputs(6001, 100, 10, np.float64, rng)
    first = [np.empty_like(x), np.empty_like(W)]
    again = [np.empty_like(x), np.empty_like(W)]
    _table.relu_matmul_backward(g, x, W, *first)
    _table.relu_matmul_backward(g, x, W, *again)
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[0], again[0])


def test_nan_and_masked_entries_as_the_separate_ops(ops, dtype):
    """NaN in g stays NaN, also where x <= 0 (g * (x > 0) is a product); x <= 0 masks, and
    relu(x) is 0 there in W's gradient: -inf adds 0, not NaN."""
    g = np.array([[np.nan, 1.0], [2.0, -1.0]], dtype)
    x = np.array([[-1.0, 1.0, 2.0], [-np.inf, -0.0, 3.0]], dtype)
    W = np.arange(6, dtype=dtype).reshape(3, 2)
    dx, dW = np.empty_like(x), np.empty_like(W)
    get_kernels(ops.backend).relu_matmul_backward(g, x, W, dx, dW)
    assert np.isnan(dx[0]).all()
    np.testing.assert_array_equal(dx[1], [0.0, 0.0, 2.0 * 4.0 - 5.0])
    assert np.isnan(dW[:, 0]).all()
    np.testing.assert_array_equal(dW[:, 1], np.maximum(x, 0).T @ g[:, 1])


@pytest.mark.parametrize("variant", built_runnable_variants())
def test_special_values_in_x_through_every_path(variant, dtype):
    """NaN, inf, -inf and -0.0 in x, through the 4-row blocks, the one-row tail and the
    k % lanes tail chunk: NaN rows of x give NaN in dx (masked: 0 * NaN) only where x is
    NaN, and W's gradient has NaN exactly in the rows of a NaN column."""
    mod = _dispatch.load_variant(variant)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.5, -1.5], dtype)
    n, k, c = 9, 23, 3
    x = np.resize(specials, n * k).reshape(n, k)
    g = np.arange(1, n * c + 1, dtype=dtype).reshape(n, c) / 7
    W = np.linspace(-1, 1, k * c).astype(dtype).reshape(k, c)
    dx, dW = np.empty_like(x), np.empty_like(W)
    _table._relu_matmul_backward_on(mod, g, x, W, dx, dW)
    with np.errstate(invalid="ignore"):  # inf * 0 in numpy's products
        want_dx, want_dW = separate_ops(g, x, W, "numpy")
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(want_dx))
    np.testing.assert_array_equal(np.isnan(dW), np.isnan(want_dW))
    np.testing.assert_array_equal(np.isinf(dW), np.isinf(want_dW))
    finite = np.isfinite(want_dx)
    np.testing.assert_allclose(dx[finite], want_dx[finite], rtol=1e-5)


@pytest.mark.parametrize("bad, error, message", [
    (dict(g=np.zeros((4, 3))), ValueError, r"shapes must be g \(N, c\), x \(N, k\), W \(k, c\)"),
    (dict(W=np.zeros((2, 2), np.float32)), TypeError, "g, x and W must have one dtype, float32 or float64"),
    (dict(x=np.zeros((5, 4))[:, ::2]), ValueError, "x must be C-contiguous"),
    (dict(g=[[1.0, 2.0]] * 5), TypeError, "g must be a numpy.ndarray, got list"),
    (dict(W=np.zeros(2)), ValueError, r"W must be 2-D, got shape \(2,\)"),
    (dict(out_dx=np.zeros((5, 3))), ValueError, r"out_dx must have shape \(5, 2\)"),
    (dict(out_dW=np.zeros((2, 2), np.float32)), TypeError, "out_dW must have dtype float64"),
    (dict(out_dx=None), TypeError, "out_dx must be a numpy.ndarray, got None"),
], ids=["g-shape", "W-dtype", "x-strided", "g-list", "W-1d", "out_dx-shape", "out_dW-dtype",
        "out_dx-None"])
def test_bad_arguments_name_the_function(ops, bad, error, message):
    args = dict(g=np.zeros((5, 2)), x=np.zeros((5, 2)), W=np.zeros((2, 2)),
                out_dx=np.zeros((5, 2)), out_dW=np.zeros((2, 2)))
    args.update(bad)
    with pytest.raises(error, match="relu_matmul_backward: " + message):
        get_kernels(ops.backend).relu_matmul_backward(**args)


def test_outputs_may_not_share_memory_with_inputs(ops):
    g, x, W = np.ones((5, 2)), np.ones((5, 2)), np.ones((2, 2))
    table = get_kernels(ops.backend)
    with pytest.raises(ValueError, match="relu_matmul_backward: out_dx must not share memory with x"):
        table.relu_matmul_backward(g, x, W, x, np.zeros((2, 2)))
    dx = np.zeros((5, 2))
    with pytest.raises(ValueError, match="out_dW must not share memory with out_dx"):
        table.relu_matmul_backward(g, x, W, dx, dx[:2])


@pytest.mark.parametrize("fused", [True, False], ids=["one-pass", "four-passes"])
def test_compiled_table_either_way(fused, dtype, rng, monkeypatch):
    """The table runs the one-pass kernel where the build's vectors make it faster
    (RELU_MATMUL_FUSED), else the compiled relu and relu backward beside BLAS's products."""
    monkeypatch.setattr(_table._k, "RELU_MATMUL_FUSED", fused)
    g, x, W = inputs(1001, 100, 10, dtype, rng)
    got = backward_from_x_and_h(_table.relu_matmul_backward, g, x, W)
    assert_close(got, separate_ops(g, x, W, "numpy"), dtype)


def test_only_the_baseline_build_prefers_three_passes():
    for variant in built_runnable_variants():
        assert _dispatch.load_variant(variant).RELU_MATMUL_FUSED is (variant != "baseline"), variant


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_compiled_drivers_refuse_short_work_rows(direction, dtype, rng):
    """The compiled drivers trust their arrays except for the work rows' length, the one
    size a caller outside kernels._table could get wrong by a formula."""
    mod = _table._k
    g, x, W = inputs(8, 5, 3, dtype, rng)
    if direction == "forward":
        wp = _table._padded_rows(mod, W)
        work = np.zeros((1, 8 * (x.shape[1] + wp.shape[1]) - 1), dtype)
        with pytest.raises(ValueError, match="relu_matmul_forward: work rows too short"):
            mod.relu_matmul_forward(x, wp, None, np.empty((8, 3), dtype), work, False)
    else:
        wt = _table._padded_rows(mod, W.T)
        c, kp = wt.shape
        values = _table._backward_work_values(mod, np.dtype(dtype), 5, kp, c)
        work = np.zeros((1, values - 1), dtype)
        with pytest.raises(ValueError, match="relu_matmul_backward: work rows too short"):
            mod.relu_matmul_backward(g, x, wt, np.empty_like(x), work, False)


def test_no_classes_gives_a_zero_gradient(ops, dtype):
    """c == 0: g @ W.T is an (N, k) matrix of zeros, on both tables (dx filled, not left)."""
    dx = np.full((5, 3), np.nan, dtype)
    dW = np.empty((3, 0), dtype)
    get_kernels(ops.backend).relu_matmul_backward(
        np.zeros((5, 0), dtype), np.ones((5, 3), dtype), np.zeros((3, 0), dtype), dx, dW)
    np.testing.assert_array_equal(dx, 0)


@pytest.mark.parametrize("threads", [3, 5])
def test_more_threads_than_cores(threads, dtype, rng):
    """Thread chunks of whole 4-row blocks, with remainders, however many threads split them."""
    g, x, W = inputs(4097, 9, 10, dtype, rng)
    dx, dW = np.empty_like(x), np.empty_like(W)
    before = _table._k.get_num_threads()
    _table._k.set_num_threads(threads)
    try:
        _table._relu_matmul_backward_on(_table._k, g, x, W, dx, dW)
    finally:
        _table._k.set_num_threads(before)
    assert_close((dx, dW), separate_ops(g, x, W, "numpy"), dtype)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect guard pages: Linux")
@pytest.mark.parametrize("variant", built_runnable_variants())
def test_no_access_past_any_array(variant, dtype, rng):
    """Every array the compiled kernel gets ends at an inaccessible page: a read or write one
    value past any of them (the tail chunk's full-width loads, the scratch spill) faults."""
    mod = _dispatch.load_variant(variant)
    lanes = mod.RELU_MATMUL_LANES[np.dtype(dtype).name]
    for n in (1, 2, 3, 4, 5, 6, 7, 9):
        for k in sorted({1, max(1, lanes - 1), lanes, lanes + 1, 2 * lanes + 1}):
            for c in (1, 3):
                kp = -(-k // lanes) * lanes
                W = rng.normal(size=(k, c)).astype(dtype)
                wt = np.zeros((c, kp), dtype)
                wt[:, :k] = W.T
                g = before_guard_page(rng.normal(size=(n, c)).astype(dtype))
                x = before_guard_page(rng.normal(size=(n, k)).astype(dtype))
                wt = before_guard_page(wt)
                dx = before_guard_page(np.full((n, k), np.nan, dtype))
                size = _table._backward_work_values(mod, np.dtype(dtype), k, kp, c)
                # work rows ending at the guard page, or `spare` values before it (NaN that must
                # stay NaN): the row then starts at other alignments, which the aligned copy of
                # relu(x) at its end rounds up from
                for stream, spare in ((False, 0), (True, 0), (False, 1), (True, 3)):
                    buf = before_guard_page(np.full((1, size + spare), np.nan, dtype))
                    work = buf[:, :size]
                    work[...] = 0
                    mod.relu_matmul_backward(g, x, wt, dx, work, stream)
                    np.testing.assert_allclose(dx, (g @ W.T) * (x > 0), rtol=1e-4, atol=1e-5)
                    np.testing.assert_allclose(work[0, :c * kp].reshape(c, kp)[:, :k].T,
                                               np.maximum(x, 0).T @ g, rtol=1e-4, atol=1e-5)
                    assert np.isnan(buf[0, size:]).all(), "a write past the work row"


# ------------------------------------------------------------------------------- forward

def separate_ops_forward(x, W, backend):
    """What the model computed before: Relu.forward, then Matmul.forward."""
    ops = pyops.get_ops(backend)
    h = ops.Relu().forward(x)
    return h, ops.Matmul().forward(h, W)


def forward_inputs(n, k, c, dtype, rng):
    return rng.normal(size=(n, k)).astype(dtype), rng.normal(size=(k, c)).astype(dtype)


def assert_forward(h, y, x, W, dtype):
    want_h, want_y = separate_ops_forward(x, W, "numpy")
    np.testing.assert_array_equal(h, want_h)  # relu is exact
    assert_close((y,), (want_y,), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_both_tables_match_the_separate_ops(ops, shape, dtype, rng):
    x, W = forward_inputs(*shape, dtype, rng)
    h, y = np.full(x.shape, np.nan, dtype), np.full((x.shape[0], W.shape[1]), np.nan, dtype)
    got = get_kernels(ops.backend).relu_matmul_forward(x, W, h, y)
    assert got[0] is h and got[1] is y
    assert_forward(h, y, x, W, dtype)
    assert_same_y_without_h(get_kernels(ops.backend).relu_matmul_forward, x, W, y)


def assert_same_y_without_h(forward, x, W, y):
    """``forward(x, W, None, out_y)`` (h not kept) gives the bits of y with h kept."""
    x_before = x.copy()
    y_none = np.full_like(y, np.nan)
    got = forward(x, W, None, y_none)
    assert got[0] is None and got[1] is y_none
    np.testing.assert_array_equal(y_none, y)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("stream", [False, True], ids=["cached", "streamed"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("variant", built_runnable_variants())
def test_forward_every_cpu_variant(variant, shape, stream, dtype, rng):
    x, W = forward_inputs(*shape, dtype, rng)
    h, y = np.full(x.shape, np.nan, dtype), np.full((x.shape[0], W.shape[1]), np.nan, dtype)
    mod = _dispatch.load_variant(variant)
    _table._relu_matmul_forward_on(mod, x, W, h, y, stream)
    assert_forward(h, y, x, W, dtype)
    assert_same_y_without_h(lambda *args: _table._relu_matmul_forward_on(mod, *args, stream),
                            x, W, y)


def test_forward_large_batch_unaligned_and_threads(dtype, rng):
    """The training step's shape (streamed from STREAM_MIN_BYTES), h off 16-byte alignment
    (plain stores), and 1, 3 or 5 threads splitting the rows: the compiled kernel gives the
    same h and y bits every way."""
    x, W = forward_inputs(60001, 100, 10, dtype, rng)
    h, y = np.empty_like(x), np.empty((x.shape[0], 10), dtype)
    assert h.nbytes >= _table.STREAM_MIN_BYTES
    _table.relu_matmul_forward(x, W, h, y)
    assert_forward(h, y, x, W, dtype)
    raw = np.zeros(x.size + 1, dtype)
    h_odd = raw[1:].reshape(x.shape)
    assert h_odd.ctypes.data % 16 != 0
    before = _table._k.get_num_threads()
    results = []
    try:
        for threads in (1, 3, 5):
            _table._k.set_num_threads(threads)
            for h_t in (np.empty_like(x), h_odd, None):  # streamed, plain stores, not kept
                y_t = np.empty_like(y)
                _table._relu_matmul_forward_on(_table._k, x, W, h_t, y_t, True)
                results.append((None if h_t is None else h_t.copy(), y_t))
    finally:
        _table._k.set_num_threads(before)
    for h_t, y_t in results:
        if h_t is not None:
            np.testing.assert_array_equal(h_t, h)
        np.testing.assert_array_equal(y_t, results[0][1])  # rows are independent
    assert raw[0] == 0


def test_forward_nan_inf_and_zero_signs(ops, dtype):
    """NaN in x propagates to h and its row of y; inf too; -0.0 gives +0.0 as numpy's relu.
    Nine rows (two 4-row blocks and the one-row tail) and 40 classes (past two vectors)."""
    x = np.tile(np.array([[np.nan, 1.0, -2.0], [np.inf, -np.inf, -0.0], [1.0, 2.0, 3.0]],
                         dtype), (3, 1))
    W = np.arange(3 * 40, dtype=dtype).reshape(3, 40) + 1
    h, y = np.empty_like(x), np.empty((9, 40), dtype)
    get_kernels(ops.backend).relu_matmul_forward(x, W, h, y)
    for r in range(0, 9, 3):
        assert np.isnan(h[r, 0]) and np.isnan(y[r]).all()
        np.testing.assert_array_equal(h[r + 1], [np.inf, 0.0, 0.0])
        assert not np.signbit(h[r + 1, 2])
        np.testing.assert_array_equal(y[r + 1], np.inf)
        np.testing.assert_array_equal(y[r + 2], x[r + 2] @ W)


def test_forward_no_classes_or_no_inputs(ops, dtype):
    """c == 0: h is still relu(x) (or nothing, not kept); k == 0: y is sums of nothing, zeros."""
    table = get_kernels(ops.backend)
    x = np.array([[-1.0, 2.0]] * 5, dtype)
    h = np.full_like(x, np.nan)
    table.relu_matmul_forward(x, np.zeros((2, 0), dtype), h, np.empty((5, 0), dtype))
    np.testing.assert_array_equal(h, np.maximum(x, 0))
    table.relu_matmul_forward(x, np.zeros((2, 0), dtype), None, np.empty((5, 0), dtype))
    for out_h in (np.empty((5, 0), dtype), None):
        y = np.full((5, 3), np.nan, dtype)
        table.relu_matmul_forward(np.empty((5, 0), dtype), np.zeros((0, 3), dtype), out_h, y)
        np.testing.assert_array_equal(y, 0)


@pytest.mark.parametrize("fused", [True, False], ids=["one-pass", "relu-then-blas"])
def test_forward_compiled_table_either_way(fused, dtype, rng, monkeypatch):
    monkeypatch.setattr(_table._k, "RELU_MATMUL_FUSED", fused)
    x, W = forward_inputs(1001, 100, 10, dtype, rng)
    h, y = np.full(x.shape, np.nan, dtype), np.full((1001, 10), np.nan, dtype)
    _table.relu_matmul_forward(x, W, h, y)
    assert_forward(h, y, x, W, dtype)
    assert_same_y_without_h(_table.relu_matmul_forward, x, W, y)


@pytest.mark.parametrize("bad, error, message", [
    (dict(W=np.zeros((3, 2))), ValueError, r"shapes must be x \(N, k\), W \(k, c\)"),
    (dict(W=np.zeros((2, 2), np.float32)), TypeError, "x and W must have one dtype, float32 or float64"),
    (dict(x=np.zeros((5, 4))[:, ::2]), ValueError, "x must be C-contiguous"),
    (dict(x=[[1.0, 2.0]] * 5), TypeError, "x must be a numpy.ndarray, got list"),
    (dict(out_h=np.zeros((5, 3))), ValueError, r"out_h must have shape \(5, 2\)"),
    (dict(out_y=np.zeros((5, 2), np.float32)), TypeError, "out_y must have dtype float64"),
    (dict(out_y=None), TypeError, "out_y must be a numpy.ndarray, got None"),
], ids=["W-shape", "W-dtype", "x-strided", "x-list", "out_h-shape", "out_y-dtype", "out_y-None"])
def test_forward_bad_arguments_name_the_function(ops, bad, error, message):
    args = dict(x=np.zeros((5, 2)), W=np.zeros((2, 2)), out_h=np.zeros((5, 2)),
                out_y=np.zeros((5, 2)))
    args.update(bad)
    with pytest.raises(error, match="relu_matmul_forward: " + message):
        get_kernels(ops.backend).relu_matmul_forward(**args)


def test_forward_outputs_may_not_share_memory(ops):
    x, W = np.ones((5, 2)), np.ones((2, 2))
    table = get_kernels(ops.backend)
    with pytest.raises(ValueError, match="relu_matmul_forward: out_h must not share memory with x"):
        table.relu_matmul_forward(x, W, x, np.zeros((5, 2)))
    h = np.zeros((5, 2))
    with pytest.raises(ValueError, match="out_y must not share memory with out_h"):
        table.relu_matmul_forward(x, W, h, h)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect guard pages: Linux")
@pytest.mark.parametrize("variant", built_runnable_variants())
def test_forward_no_access_past_any_array(variant, dtype, rng):
    """As test_no_access_past_any_array, for the forward: y's full-vector spill stops at its
    end, and no loop reads past x, wp or the scratch."""
    mod = _dispatch.load_variant(variant)
    lanes = mod.RELU_MATMUL_LANES[np.dtype(dtype).name]
    # eight-row blocks (c <= lanes), then a four-row one and single rows; from 11 or 19 rows
    # y's spill stores start
    for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 15, 17, 21, 40):
        for k in (1, 3):
            for c in sorted({1, max(1, lanes - 1), lanes, lanes + 1, 2 * lanes + 1}):
                cp = -(-c // lanes) * lanes
                x, W = forward_inputs(n, k, c, dtype, rng)
                wp = np.zeros((k, cp), dtype)
                wp[:, :c] = W
                x, wp = before_guard_page(x), before_guard_page(wp)
                for stream, keep_h in ((False, True), (True, True), (False, False)):
                    h = before_guard_page(np.full((n, k), np.nan, dtype)) if keep_h else None
                    y = before_guard_page(np.full((n, c), np.nan, dtype))
                    work = before_guard_page(np.zeros((1, 8 * (k + cp)), dtype))
                    mod.relu_matmul_forward(x, wp, h, y, work, stream)
                    np.testing.assert_allclose(y, np.maximum(x, 0) @ W, rtol=1e-4, atol=1e-5)
