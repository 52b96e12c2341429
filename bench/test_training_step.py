"""One full-batch training step of the 785-100-10 network, per implementation.

A step is: forward (``[x, 1] W1``, relu, ``W2``, softmax, log), the loss and accuracy of that
forward, backward for ``W1`` and ``W2`` (never for the input), and the plain SGD update
``W -= lr * grad``: :func:`pyops.train_one_step` on a :class:`pyops.MLP` in its default
(notebook) loss mode, whose gradient is that of the loss *summed* over the batch.  Data are
synthetic, of MNIST's shape: 60000 rows of 784 uniform [0, 1) pixels plus the bias column,
random one-hot labels, fixed seed; every implementation starts from the same weights
(He-scaled normal, so the logits stay moderate).

Group ``train-step-<dtype>``:

``numpy``, ``cython-1t``, ``cython-<cores>t``
    ``pyops.train_one_step(MLP(backend, dtype), model.prepare(x), y)``.  The model's two large
    products are timed inside each step as well (``extra_info["rest_ms"]``: the median over the
    timed rounds of step time less theirs, the work beside the GEMMs in the state the GEMMs
    leave behind).
``tensorflow``
    A ``tf.function`` doing the same step with ``GradientTape`` and ``assign_sub``.
``torch-1t``, ``torch-<cores>t``
    PyTorch eager with autograd (``torch.autograd.grad``) and an in-place update.
``gemm-floor``
    **Not a step**: the two large products alone, ``X @ W1`` and ``X.T @ G``
    (60000 x 785 x 100 each) with numpy's BLAS and ``out=``, ``W1`` and the gradient in the
    model's layout (F-contiguous): what a step that calls numpy for them cannot go below.
``gemm-split-<cores>t``
    **Not a step**: the same two products as the ``cython-<cores>t`` step runs them,
    ``kernels.Matmul`` forward and backward, each split over the kernels' threads with
    numpy's BLAS held to one thread (``kernels._matmul``): that step's own GEMMs alone.

After timing, each implementation runs one step from the initial weights and its updated
weights are checked against a float64 numpy reference (correctness only).

Group ``train-step-parts-<dtype>``: the step taken apart, in rounds short enough (milliseconds)
for their medians to survive a VM that stalls, where whole steps (0.1-2 s) do not:

``numpy-without-gemms``, ``cython-1t-without-gemms``, ``cython-<cores>t-without-gemms``
    The same ``train_one_step``, with the first layer's two products (``X @ W1`` forward,
    ``X.T @ G`` backward) skipped: its forward output and ``W1_grad`` keep the values a real
    step computed.  Everything else of the step runs at full size: relu on (60000, 100), the
    small products, the loss, accuracy and update.
``gemm-slice``
    The two large products on the first :data:`SLICE` rows only (the report scales the time
    by ``N / SLICE``: the products cost the same per row).

``python -m bench.report`` estimates the step as ``without-gemms + scaled gemm-slice`` beside
the measured whole-step times: an estimate from parts, not a measurement of the step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import pytest

import pyops

from bench import N_CORES, ROWS as N, THREAD_COUNTS, split_impl

D, HIDDEN, CLASSES = 784, 100, 10
#: rows of the ``gemm-slice`` products: X's slice is 25 MB in float64, beyond the caches, as X is
SLICE = min(N, 4096)
LR = 1e-5
EPS = 1e-12
DTYPES = ("float64", "float32")
#: tolerance on the weight change of one step, as a fraction of its largest magnitude
TOL = {"float64": 1e-9, "float32": 2e-3}


def implementations(dtype: str):
    impls = ["numpy"] + [f"cython-{t}t" for t in THREAD_COUNTS]
    impls += ["tensorflow"] + [f"torch-{t}t" for t in THREAD_COUNTS]
    return impls + ["gemm-floor"] + [f"gemm-split-{t}t" for t in THREAD_COUNTS if t > 1]


CASES = [(dtype, impl) for dtype in DTYPES for impl in implementations(dtype)]


# --------------------------------------------------------------------------- data
@dataclass
class Data:
    X: np.ndarray        # (N, 785) with the bias column
    Y: np.ndarray        # (N, 10) one-hot
    W1: np.ndarray       # (785, 100) initial weights
    W2: np.ndarray       # (100, 10)
    dW1: Optional[np.ndarray]  # float64 reference weight change of one step (None: not computed)
    dW2: Optional[np.ndarray]


_DATA: Dict[str, Data] = {}


def model_layout_w1(W1: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``W1`` and an empty gradient for it in the layout :class:`pyops.MLP` keeps them in
    (F-contiguous: numpy's BLAS writes ``X.T @ G`` into it fastest), so that the GEMM floor
    runs the step's own two products."""
    return np.asfortranarray(W1), np.empty(W1.shape, W1.dtype, order="F")


def _chunked_xT_g(x: np.ndarray, g: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``x.T @ g`` in float64 without a float64 copy of all of ``x``."""
    acc = np.zeros((x.shape[1], g.shape[1]))
    for a in range(0, x.shape[0], chunk):
        acc += x[a:a + chunk].astype(np.float64).T @ g[a:a + chunk].astype(np.float64)
    return acc


def reference_step(X: np.ndarray, Y: np.ndarray, W1: np.ndarray, W2: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The weight changes ``-lr * grad`` of one step, in float64 numpy (``X`` in any dtype)."""
    Y, W1, W2 = Y.astype(np.float64), W1.astype(np.float64), W2.astype(np.float64)
    h1 = X @ W1 if X.dtype == np.float64 else np.concatenate(
        [X[a:a + 4096].astype(np.float64) @ W1 for a in range(0, X.shape[0], 4096)])
    r = np.maximum(h1, 0.0)
    z = r @ W2
    e = np.exp(z - z.max(axis=1, keepdims=True))
    s = e / e.sum(axis=1, keepdims=True)
    g_log = -Y / (s + EPS)                                   # d(sum -Y log(s + eps)) / ds
    g_z = s * (g_log - np.sum(g_log * s, axis=1, keepdims=True))
    gW2 = r.T @ g_z
    g_h1 = (g_z @ W2.T) * (h1 > 0)
    gW1 = _chunked_xT_g(X, g_h1)
    return -LR * gW1, -LR * gW2


def data(dtype: str, reference: bool = True) -> Data:
    """The synthetic inputs and initial weights of ``dtype``, and the reference step.

    ``reference=False`` (``bench/memory.py``): the inputs only, not cached, so that a
    peak-memory measurement counts nothing but what the implementation itself allocates.
    """
    if reference and dtype in _DATA:
        return _DATA[dtype]
    _DATA.clear()  # one dtype's arrays at a time
    rng = np.random.default_rng(20240602)
    X = np.empty((N, D + 1), dtype)
    for a in range(0, N, 4096):
        X[a:a + 4096, :D] = rng.random((min(4096, N - a), D))
    X[:, D] = 1
    Y = np.zeros((N, CLASSES), dtype)
    Y[np.arange(N), rng.integers(0, CLASSES, N)] = 1
    W1 = rng.standard_normal((D + 1, HIDDEN)) * np.sqrt(2.0 / D)
    W1[D] = 0.0
    W2 = rng.standard_normal((HIDDEN, CLASSES)) * np.sqrt(2.0 / (HIDDEN + CLASSES))
    W1, W2 = W1.astype(dtype), W2.astype(dtype)
    if not reference:
        return Data(X, Y, W1, W2, None, None)
    dW1, dW2 = reference_step(X, Y, W1, W2)
    _DATA[dtype] = Data(X, Y, W1, W2, dW1, dW2)
    return _DATA[dtype]


# --------------------------------------------------------------------------- implementations
@dataclass
class Step:
    """``step()`` runs one training step; ``reset()`` restores the initial weights;
    ``weights()`` returns the current ``(W1, W2)`` as numpy arrays; ``model``: the
    :class:`pyops.MLP` stepped (pyops implementations only)."""

    step: Callable[[], Any]
    reset: Callable[[], None]
    weights: Callable[[], Tuple[np.ndarray, np.ndarray]]
    model: Any = None


def pyops_step(backend: str, d: Data) -> Step:
    if not hasattr(pyops, "MLP"):
        pytest.skip("the installed pyops has no MLP yet: reinstall with `pip install .`")
    model = pyops.MLP(backend, d.X.dtype, seed=0)
    X = model.prepare(d.X)  # the fast path: the bias column is built once per dataset

    def reset():
        model.W1, model.W2 = d.W1, d.W2

    reset()
    return Step(lambda: pyops.train_one_step(model, X, d.Y, lr=LR), reset,
                lambda: (model.W1.copy(), model.W2.copy()), model)


def tensorflow_step(tf: Any, d: Data) -> Step:
    X, Y = tf.constant(d.X), tf.constant(d.Y)
    W1, W2 = tf.Variable(d.W1), tf.Variable(d.W2)
    lr = tf.constant(LR, dtype=X.dtype)

    def step(X, Y):
        with tf.GradientTape() as tape:
            h1 = tf.nn.relu(tf.matmul(X, W1))
            log_prob = tf.math.log(tf.nn.softmax(tf.matmul(h1, W2)) + EPS)
            loss_sum = -tf.reduce_sum(log_prob * Y)
        gW1, gW2 = tape.gradient(loss_sum, [W1, W2])
        W1.assign_sub(lr * gW1)
        W2.assign_sub(lr * gW2)
        correct = tf.equal(tf.argmax(log_prob, 1), tf.argmax(Y, 1))
        return loss_sum / X.shape[0], tf.reduce_mean(tf.cast(correct, X.dtype))

    fn = tf.function(step)

    def reset():
        W1.assign(d.W1)
        W2.assign(d.W2)

    return Step(lambda: tuple(float(v) for v in fn(X, Y)), reset,
                lambda: (W1.numpy(), W2.numpy()))


def torch_step(torch: Any, d: Data) -> Step:
    X, Y = torch.from_numpy(d.X), torch.from_numpy(d.Y)
    W1 = torch.from_numpy(d.W1.copy()).requires_grad_(True)
    W2 = torch.from_numpy(d.W2.copy()).requires_grad_(True)

    def step():
        h1 = torch.relu(X @ W1)
        log_prob = torch.log(torch.softmax(h1 @ W2, dim=1) + EPS)
        loss_sum = -(log_prob * Y).sum()
        gW1, gW2 = torch.autograd.grad(loss_sum, [W1, W2])
        with torch.no_grad():
            W1.add_(gW1, alpha=-LR)
            W2.add_(gW2, alpha=-LR)
            accuracy = (log_prob.argmax(1) == Y.argmax(1)).to(X.dtype).mean()
        return float(loss_sum.detach()) / X.shape[0], float(accuracy)

    def reset():
        with torch.no_grad():
            W1.copy_(torch.from_numpy(d.W1))
            W2.copy_(torch.from_numpy(d.W2))

    return Step(step, reset, lambda: (W1.detach().numpy().copy(), W2.detach().numpy().copy()))


def check_one_step(s: Step, d: Data, label: str) -> None:
    """One step of ``s`` from the initial weights changes them as the float64 reference does."""
    s.reset()
    s.step()
    W1, W2 = s.weights()
    for name, got, w0, want in (("W1", W1, d.W1, d.dW1), ("W2", W2, d.W2, d.dW2)):
        change = got.astype(np.float64) - w0.astype(np.float64)
        tol = TOL[str(d.X.dtype)] * np.abs(want).max()
        np.testing.assert_allclose(change, want, rtol=0, atol=tol, err_msg=f"{label} {name}")


# More rounds than the suite's 5: a step is long enough for a VM's stalls to hit most rounds,
# and the report's IQR check needs enough of them to tell a noisy time from a steady one.
@pytest.mark.benchmark(min_rounds=11)
@pytest.mark.parametrize("dtype,impl", CASES, ids=[f"{dt}-{i}" for dt, i in CASES])
def test_train_step(benchmark, request, use_threads, dtype, impl):
    family, threads = split_impl(impl)
    benchmark.group = f"train-step-{dtype}"
    benchmark.extra_info.update(op="train-step", dtype=dtype, impl=impl, family=family)
    d = data(dtype)

    if family in ("gemm-floor", "gemm-split"):
        G = np.random.default_rng(1).standard_normal((N, HIDDEN)).astype(dtype)
        h1, W1, gW1 = np.empty((N, HIDDEN), dtype), *model_layout_w1(d.W1)
        if family == "gemm-floor":
            def gemms():
                np.matmul(d.X, W1, out=h1)
                np.matmul(d.X.T, G, out=gW1)

            note = "X @ W1 and X.T @ G, numpy's BLAS"
        else:
            use_threads("cython", threads)
            op = pyops.get_ops("cython").Matmul(input_grad=False)  # as MLP.mul_h1

            def gemms():
                op.forward(d.X, W1, out=h1)
                op.backward(G, out=(None, gW1))

            note = "X @ W1 and X.T @ G, kernels.Matmul (split over the kernels' threads)"
        if not benchmark.disabled:
            gemms()
        benchmark.extra_info.update(threads=threads, note=note)
        benchmark(gemms)
        rows = np.arange(0, N, 61)
        want_h1 = d.X[rows].astype(np.float64) @ d.W1.astype(np.float64)
        want_gW1 = _chunked_xT_g(d.X, G)
        tol = TOL[dtype]
        np.testing.assert_allclose(h1[rows], want_h1, rtol=tol, atol=tol * np.abs(want_h1).max())
        np.testing.assert_allclose(gW1, want_gW1, rtol=tol, atol=tol * np.abs(want_gW1).max())
        return

    if family in ("numpy", "cython"):
        if family == "cython":
            use_threads("cython", threads)
        s = pyops_step(family, d)
    elif family == "tensorflow":
        tf = request.getfixturevalue("tf")
        s = tensorflow_step(tf, d)
        threads = tf.config.threading.get_intra_op_parallelism_threads() or N_CORES
    elif family == "torch":
        torch = request.getfixturevalue("torch")
        use_threads("torch", threads)
        s = torch_step(torch, d)
    else:
        raise ValueError(impl)
    benchmark.extra_info.update(threads=threads)

    if not benchmark.disabled:
        s.step()  # warm up: buffers, tracing
    if s.model is None:
        benchmark(s.step)
    else:  # time the two large products inside each step too: the rest is the step's own work
        timed = _TimedFirstLayer(s.model.mul_h1)
        s.model.mul_h1 = timed
        rest: list = []

        def step() -> None:
            timed.seconds = 0.0
            start = time.perf_counter()
            s.step()
            rest.append(time.perf_counter() - start - timed.seconds)

        benchmark(step)
        if benchmark.stats is not None:  # None when disabled: nothing timed
            # the timed rounds are the last calls (after calibration and warm-up)
            timed_calls = len(benchmark.stats.stats.data) * benchmark.stats.iterations
            benchmark.extra_info.update(rest_ms=1e3 * float(np.median(rest[-timed_calls:])))

    check_one_step(s, d, f"{impl} {dtype}")


class _TimedFirstLayer:
    """Stands in for ``MLP.mul_h1``: runs it, and adds the time of its products (``X @ W1``
    forward, ``X.T @ G`` backward) to :attr:`seconds`."""

    def __init__(self, op: Any) -> None:
        self.op, self.seconds = op, 0.0

    def _timed(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self.op.forward, *args, **kwargs)

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self.op.backward, *args, **kwargs)


# --------------------------------------------------------------------------- the step in parts
PART_CASES = [(dtype, impl) for dtype in DTYPES
              for impl in ["numpy-without-gemms", *(f"cython-{t}t-without-gemms" for t in THREAD_COUNTS),
                           "gemm-slice"]]


class _SkipFirstLayerProducts:
    """Stands in for ``MLP.mul_h1``: returns the buffers its ``out=`` names, untouched."""

    def __init__(self) -> None:
        self.calls = 0

    def forward(self, x: np.ndarray, W: np.ndarray, out: np.ndarray) -> np.ndarray:
        self.calls += 1
        return out

    def backward(self, grad_y: np.ndarray, out: Tuple[None, np.ndarray]) -> Tuple[None, np.ndarray]:
        self.calls += 1
        return None, out[1]


@pytest.mark.parametrize("dtype,impl", PART_CASES, ids=[f"{dt}-{i}" for dt, i in PART_CASES])
def test_train_step_parts(benchmark, use_threads, dtype, impl):
    family, threads = split_impl(impl.replace("-without-gemms", ""))
    benchmark.group = f"train-step-parts-{dtype}"
    benchmark.extra_info.update(op="train-step-parts", dtype=dtype, impl=impl, family=family)
    d = data(dtype)

    if family == "gemm-slice":
        X, G = d.X[:SLICE], np.random.default_rng(1).standard_normal((SLICE, HIDDEN)).astype(dtype)
        h1, W1, gW1 = np.empty((SLICE, HIDDEN), dtype), *model_layout_w1(d.W1)

        def gemms():
            np.matmul(X, W1, out=h1)
            np.matmul(X.T, G, out=gW1)

        benchmark.extra_info.update(threads=None, rows=SLICE, scale=N / SLICE,
                                    note=f"X[:{SLICE}] @ W1 and X[:{SLICE}].T @ G, numpy's BLAS")
        benchmark(gemms)
        tol = TOL[dtype]
        want_h1, want_gW1 = X.astype(np.float64) @ d.W1.astype(np.float64), _chunked_xT_g(X, G)
        np.testing.assert_allclose(h1, want_h1, rtol=tol, atol=tol * np.abs(want_h1).max())
        np.testing.assert_allclose(gW1, want_gW1, rtol=tol, atol=tol * np.abs(want_gW1).max())
        return

    if family == "cython":
        use_threads("cython", threads)
    s = pyops_step(family, d)
    s.step()  # a real step from the initial weights: h1 and W1_grad hold its products
    stub = _SkipFirstLayerProducts()
    s.model.mul_h1 = stub
    benchmark.extra_info.update(threads=threads, note="train_one_step without X @ W1 and X.T @ G")
    benchmark(s.step)
    assert stub.calls >= 2, "the step did not go through MLP.mul_h1"

    # From the initial weights the kept h1 and W1_grad are those of the first step, so the
    # step without the products must still change the weights as the reference step does.
    check_one_step(s, d, f"{impl} {dtype}")
