"""kernels.Matmul's large products, split over the kernels' OpenMP threads with numpy's
OpenBLAS held to one thread (kernels._matmul), and the hold itself (pyops._blas)."""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

import kernels
import pyops
from conftest import TOL
from kernels import _matmul, _table
from pyops import _blas

needs_openblas = pytest.mark.skipif(_blas.openblas_thread_functions() is None,
                                    reason="numpy's BLAS here is not a bundled OpenBLAS")


@pytest.fixture(autouse=True)
def blas_at_three_threads():
    """Each test starts with numpy's OpenBLAS at 3 threads (whatever the machine's count), so
    that a count not put back to it shows; the count before is put back after."""
    before = _blas.set_blas_threads(3)
    yield
    if before is not None:
        _blas.set_blas_threads(before)


@pytest.fixture
def split_always(monkeypatch):
    """Split every product (the real threshold keeps test-sized ones whole); count the splits."""
    monkeypatch.setattr(_matmul, "SPLIT_MIN_MACS", 1)
    holds = []
    real = _matmul.one_blas_thread

    @contextlib.contextmanager
    def counted():
        with real() as held:
            holds.append(held)
            yield held

    monkeypatch.setattr(_matmul, "one_blas_thread", counted)
    return holds


class RecordingModule:
    """The compiled module with ``run_calls`` recorded: its calls, each call's thread and
    numpy's BLAS thread count while it ran."""

    def __init__(self, n_threads: int):
        self.n_threads = n_threads
        self.OPENMP = _table._k.OPENMP
        self.parts = []

    def get_num_threads(self):
        return self.n_threads

    def run_calls(self, function, calls):
        def recorded(*args):
            self.parts.append((threading.get_native_id(), _blas.get_blas_threads(),
                               [a.shape for a in args]))
            return function(*args)

        return _table._k.run_calls(recorded, calls)


def product_case(rng, dtype, m, k, n, out_layout):
    a = rng.normal(size=(m, k)).astype(dtype)
    b = rng.normal(size=(k, n)).astype(dtype)
    out = None if out_layout is None else np.full((m, n), np.nan, dtype, order=out_layout)
    return a, b, out, a.astype(np.float64) @ b.astype(np.float64)


@needs_openblas
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("out_layout", ["C", "F", None])
@pytest.mark.parametrize("m, k, n, axis", [(50, 7, 3, "rows"), (7, 50, 3, "summed"),
                                           (9, 9, 4, "rows"), (1, 40, 2, "summed"),
                                           (6, 40, 30, "columns"), (3, 5, 2, "columns")], ids=str)
@pytest.mark.parametrize("n_threads", [2, 3])
def test_split_product_matches_float64_numpy(rng, dtype, out_layout, m, k, n, axis, n_threads,
                                              monkeypatch):
    monkeypatch.setattr(_matmul, "SPLIT_MIN_MACS", 1)
    a, b, out, want = product_case(rng, dtype, m, k, n, out_layout)
    a_before, b_before = a.copy(), b.copy()
    module = RecordingModule(n_threads)
    before = _blas.get_blas_threads()
    got = _matmul.matmul(a, b, out, module)
    parts = min(n_threads, {"rows": m, "summed": k, "columns": n}[axis])
    assert _matmul.split_axis(m, k, n, parts) == axis
    assert len(module.parts) == parts
    if axis == "rows":  # row blocks of a, all of b
        assert sorted(s[0][0] for _, _, s in module.parts) == sorted(
            m * (i + 1) // parts - m * i // parts for i in range(parts))
        assert all(s[1] == (k, n) for _, _, s in module.parts)
    elif axis == "summed":  # column blocks of a with the matching row blocks of b
        assert all(s[0][1] == s[1][0] and s[0][0] == m for _, _, s in module.parts)
        assert sum(s[0][1] for _, _, s in module.parts) == k
    else:  # all of a, column blocks of b and out: no partial outputs
        assert all(s[0] == (m, k) and s[1][1] == s[2][1] for _, _, s in module.parts)
        assert sum(s[1][1] for _, _, s in module.parts) == n
    assert all(blas == 1 for _, blas, _ in module.parts), "BLAS held to one thread in the parts"
    if _table._k.OPENMP:
        assert len({tid for tid, _, _ in module.parts}) == parts, "one OpenMP thread per part"
    assert _blas.get_blas_threads() == before, "BLAS's thread count put back"
    if out is not None:
        assert got is out
    assert got.shape == (m, n) and got.dtype == dtype
    np.testing.assert_allclose(got, want, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)


@pytest.mark.parametrize("n_threads, macs, openmp, expected", [
    (1, 1 << 40, True, 1),              # one kernel thread: BLAS threads the product itself
    (2, 1 << 40, False, 1),             # no OpenMP: the parts would run one after another
    (2, (1 << 29) - 1, True, 1),        # below SPLIT_MIN_MACS per part
    (2, 1 << 29, True, 2),
    (4, 3 << 28, True, 3),              # as many parts as have SPLIT_MIN_MACS each
    (8, 1 << 40, True, 8),
])
@needs_openblas
def test_split_parts_threshold(n_threads, macs, openmp, expected):
    assert _matmul.SPLIT_MIN_MACS == 1 << 28
    assert _matmul.split_parts(macs, 1, 1, n_threads, openmp) == expected


def test_no_split_without_a_settable_openblas(monkeypatch, rng):
    monkeypatch.setattr(_matmul, "SPLIT_MIN_MACS", 1)
    monkeypatch.setattr(_matmul, "openblas_thread_functions", lambda: None)
    a, b, out, want = product_case(rng, np.float64, 20, 6, 3, "C")
    module = RecordingModule(2)
    _matmul.matmul(a, b, out, module)
    assert module.parts == []
    np.testing.assert_allclose(out, want, **TOL[np.float64])


@needs_openblas
def test_split_error_is_raised_after_every_part_and_blas_is_put_back(monkeypatch):
    if not _table._k.OPENMP:
        pytest.skip("without OpenMP the parts run one after another")
    before = _blas.get_blas_threads()
    started, finished = threading.Event(), []

    def part(i):
        if i == 0:
            started.wait(10)  # part 1 has started (a call not started when one fails is skipped)
            raise RuntimeError("part 0 failed")
        started.set()
        threading.Event().wait(0.05)  # still running when part 0 raises
        finished.append(i)

    with pytest.raises(RuntimeError, match="part 0 failed"):
        with _blas.one_blas_thread():
            _table._k.run_calls(part, [(0,), (1,)])
    assert finished == [1], "run_calls returns only after every started call"
    assert _blas.get_blas_threads() == before


@needs_openblas
def test_one_blas_thread_holds_nests_and_restores():
    before = _blas.get_blas_threads()
    with _blas.one_blas_thread() as held:
        assert held and _blas.get_blas_threads() == 1
        with _blas.one_blas_thread():
            assert _blas.get_blas_threads() == 1
        assert _blas.get_blas_threads() == 1
    assert _blas.get_blas_threads() == before
    with pytest.raises(KeyError):
        with _blas.one_blas_thread():
            raise KeyError("inside")
    assert _blas.get_blas_threads() == before


def test_one_blas_thread_without_openblas_changes_nothing(monkeypatch):
    monkeypatch.setattr(_blas, "openblas_thread_functions", lambda: None)
    with _blas.one_blas_thread() as held:
        assert held is False


@needs_openblas
def test_concurrent_split_products_are_right_hold_blas_and_put_it_back(kernel_threads, split_always,
                                                                       rng):
    """Split products from four Python threads at once: each right, every part run with BLAS
    at one thread (the hold is one at a time), and the count put back at the end."""
    kernel_threads(2)
    cases = [product_case(rng, np.float64, 400, 60, 50, "C") for _ in range(4)]
    module = RecordingModule(2)
    errors = []

    def work(case):
        a, b, out, want = case
        try:
            for _ in range(25):
                out[...] = np.nan
                np.testing.assert_allclose(_matmul.matmul(a, b, out, module), want,
                                           **TOL[np.float64])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(c,)) for c in cases]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert len(split_always) == 4 * 25 and len(module.parts) == 2 * 4 * 25
    assert {blas for _, blas, _ in module.parts} == {1}
    assert _blas.get_blas_threads() == 3


@needs_openblas
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_model_step_split_matches_numpy_backend(kernel_threads, split_always, dtype):
    """A whole training step with both of the first layer's products split: the same loss,
    accuracy and weights as the numpy backend."""
    kernel_threads(2)
    rng = np.random.default_rng(3)
    x = rng.random((300, 784)).astype(dtype)
    y = np.eye(10, dtype=dtype)[rng.integers(0, 10, 300)]
    models = {b: pyops.MLP(b, dtype, seed=0) for b in ("numpy", "cython")}
    results = {b: pyops.train_one_step(m, x, y, lr=1e-3) for b, m in models.items()}
    assert split_always == [True, True], "X @ W1 and X.T @ G were split"
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(results["cython"], results["numpy"], **tol)
    np.testing.assert_allclose(models["cython"].params, models["numpy"].params, **tol)


@needs_openblas
def test_notebook_loss_holds_blas_to_one_thread(monkeypatch):
    """The full-batch loss's vdot is threaded by OpenBLAS otherwise (its idle threads then
    spin beside the kernels)."""
    seen = []
    real_vdot = np.vdot
    monkeypatch.setattr(np, "vdot", lambda a, b: (seen.append(_blas.get_blas_threads()),
                                                  real_vdot(a, b))[1])
    before = _blas.get_blas_threads()
    log_prob = np.log(np.full((4, 3), 1 / 3))
    labels = np.eye(3)[[0, 1, 2, 0]]
    assert pyops.model.compute_loss(log_prob, labels) == pytest.approx(np.log(3))
    assert seen == [1]
    assert _blas.get_blas_threads() == before


@needs_openblas
def test_restore_checks_start_from_three_blas_threads():
    assert _blas.get_blas_threads() == 3


@needs_openblas
def test_every_product_of_the_op_goes_through_the_split(kernel_threads, split_always, rng):
    """forward's x @ W and backward's g @ W.T and x.T @ g."""
    kernel_threads(2)
    x, W, g = rng.normal(size=(30, 4)), rng.normal(size=(4, 3)), rng.normal(size=(30, 3))
    op = kernels.Matmul()
    op.forward(x, W)
    op.backward(g)
    assert split_always == [True, True, True]


def test_build_info_says_whether_products_are_split(monkeypatch):
    found = _blas.openblas_thread_functions() is not None
    assert kernels.build_info()["matmul_split"] == (bool(_table._k.OPENMP) and found)
    assert kernels.build_info()["matmul_split_min_macs"] == _matmul.SPLIT_MIN_MACS
    monkeypatch.setattr(_matmul, "openblas_thread_functions", lambda: None)
    assert kernels.build_info()["matmul_split"] is False


@needs_openblas
def test_summed_axis_split_needs_no_large_partial_outputs():
    """A product with about as many rows as columns in a, and a large output, is cut along
    the columns of b, not the summed axis (whose partial outputs would be full-size)."""
    assert _matmul.split_axis(1000, 1001, 5000, 2) == "columns"
    assert _matmul.split_axis(785, 60000, 100, 2) == "summed"   # the step's X.T @ G
    assert _matmul.split_axis(60000, 785, 100, 2) == "rows"     # X @ W1


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@needs_openblas
def test_a_child_forked_while_blas_is_held_starts_free():
    """The holder thread does not exist in a forked child: the child's hold is free and its
    OpenBLAS count is the one the holder would have put back."""
    import os

    held, release = threading.Event(), threading.Event()

    def holder():
        with _blas.one_blas_thread():
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(10)
        assert _blas.get_blas_threads() == 1
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code, never return into pytest
            import signal

            signal.alarm(20)  # a child stuck on the parent's hold dies instead of hanging
            code = 1
            try:
                with _blas.one_blas_thread():  # would wait forever on the parent's hold
                    pass
                code = 0 if _blas.get_blas_threads() == 3 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        t.join()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert _blas.get_blas_threads() == 3
