"""Each op, forward and backward, on full-batch MNIST shapes, against its peers.

Shapes: relu on (60000, 100); softmax, log and the fused softmax-cross-entropy (``xent``) on
(60000, 10); matmul ``(60000, 785) @ (785, 100)`` and its two gradients. float64 and float32.
One pytest-benchmark group per op, direction and dtype (``relu-forward-float64``), with one
benchmark per implementation:

``numpy``, ``cython-1t``, ``cython-<cores>t``
    This package's backends (``pyops.get_ops``), ``out=`` buffers preallocated; backward is
    timed alone (forward ran once in setup).  ``-Nt``: ``kernels.set_num_threads(N)``.
``best-numpy``
    The fastest plain-numpy form of the same math we found, with ``out=`` everywhere, so the
    reference is not a straw man (see :func:`best_numpy`).
``tensorflow``
    The TensorFlow op (``tf.nn.relu``, ``tf.nn.softmax``, ...; eager when it is one op, else a
    ``tf.function``), the gradient as TensorFlow's registered gradient computes it (the raw
    ``ReluGrad`` op, ``_SoftmaxGrad``'s formula, ...). Tensors made in setup.
``torch-1t``, ``torch-<cores>t``
    PyTorch CPU with ``out=`` (``aten.relu.out``, ``aten._softmax.out``,
    ``aten._softmax_backward_data.out``, ``aten.threshold_backward``); the cross-entropy's
    backward is autograd's. ``torch.from_numpy`` in setup; ``-Nt``: ``torch.set_num_threads``.
``copy-limit-1t``, ``copy-limit-<cores>t``
    **Not the op**: ``np.copyto`` of as many bytes as the op reads plus writes (split into one
    contiguous chunk per Python thread for ``-<cores>t``), the memory-bandwidth limit of a
    memory-bound kernel; the report takes the faster.  Read + written per element of the op's
    array: forward of relu,
    softmax and log reads x and writes y (2 arrays: copy of 1x the array, which reads 1 and
    writes 1); their backward and the cross-entropy backward read two arrays and write one
    (3 arrays: copy of 1.5x); the cross-entropy forward reads logits and labels and writes the
    softmax it keeps (1.5x).  No copy limit for matmul (it is compute-bound).

``softmax-far-forward-<dtype>`` groups
    softmax forward once more, on logits ``FAR_SCALE`` times a standard normal: rows about 200
    apart, as a notebook-initialized model gives on MNIST (the usual groups' logits are 2 times
    a standard normal).  In float32, exp then leaves the normal numbers (below -87.3), where
    libmvec's vector exp falls back to scalar code; the compiled kernels must not.

``<op>-<direction>-<dtype>-paired`` groups (:func:`test_kernel_paired`)
    relu once more, in rounds that alternate with a copy of its bytes, TensorFlow and PyTorch,
    so that the kernel and each of them run under the same conditions.

After timing, each result is checked against a float64 numpy reference (correctness only;
there are no timing asserts).  ``extra_info`` records op, direction, dtype, implementation,
threads and the bytes the op moves.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

import pyops
from bench import N_CORES, ROWS as N, THREAD_COUNTS, split_impl  # N: 60000 (bench/__init__)

HIDDEN, CLASSES, FEATURES = 100, 10, 785
EPS = 1e-12
DTYPES = ("float64", "float32")
OPS = ("relu", "softmax", "log", "xent", "matmul")
DIRECTIONS = ("forward", "backward")
#: Relative tolerance against the float64 reference, and absolute tolerance as a fraction of
#: the reference's largest magnitude (sums of 60000 float32 terms need the latter).
TOL = {"float64": (1e-9, 1e-11), "float32": (2e-4, 2e-5)}
#: Arrays of the op's size read plus written, for the copy limit (module docstring).
ARRAYS_MOVED = {
    ("relu", "forward"): 2, ("relu", "backward"): 3,
    ("softmax", "forward"): 2, ("softmax", "backward"): 3,
    ("log", "forward"): 2, ("log", "backward"): 3,
    ("xent", "forward"): 3, ("xent", "backward"): 3,
}
#: The ops whose arrays exceed the caches, timed once more in rounds alternating with the copy
#: and the peers (the (60000, 10) ops' arrays stay in cache, and their 40-microsecond kernels
#: would mostly time their threads waking up after the others ran).
PAIRED = (("relu", "forward"), ("relu", "backward"))
#: softmax forward on logits far apart (module docstring): its own op name, the same op
FAR = "softmax-far"
FAR_SCALE = 60.0
PAIRED_ROUNDS = 200


def implementations() -> List[str]:
    impls = ["numpy", "best-numpy"]
    impls += [f"cython-{t}t" for t in THREAD_COUNTS]
    impls += ["tensorflow"]
    impls += [f"torch-{t}t" for t in THREAD_COUNTS]
    impls += [f"copy-limit-{t}t" for t in THREAD_COUNTS]
    return impls


def applies(impl: str, op: str) -> bool:
    if impl.startswith("copy-limit"):
        return op != "matmul"
    return True


# op-major, so that each op's inputs are made once and dropped before the next op's
CASES = [
    (op, direction, dtype, impl)
    for op in OPS
    for dtype in DTYPES
    for direction in DIRECTIONS
    for impl in implementations()
    if applies(impl, op)
] + [
    (FAR, "forward", dtype, impl)
    for dtype in DTYPES
    for impl in implementations()
    if not impl.startswith("copy-limit")
]


# --------------------------------------------------------------------------- data
@dataclass
class Data:
    """Inputs of one op in one dtype, and the float64 reference results."""

    inputs: Dict[str, np.ndarray]
    forward: Any            # reference forward result (array, or float for xent)
    backward: Any           # reference backward result (array, or tuple for matmul)
    size: int               # elements of the op's main array (for the copy limit)
    extra: Dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=1)
def _master(op: str) -> Dict[str, np.ndarray]:
    """float64 inputs, fixed seed; every dtype is cast from these."""
    rng = np.random.default_rng(20240601 + (OPS + (FAR,)).index(op))
    if op == "relu":
        return {"x": rng.standard_normal((N, HIDDEN)), "g": rng.standard_normal((N, HIDDEN))}
    if op in ("softmax", "xent", FAR):
        z = (FAR_SCALE if op == FAR else 2.0) * rng.standard_normal((N, CLASSES))
        y = np.zeros((N, CLASSES))
        y[np.arange(N), rng.integers(0, CLASSES, N)] = 1.0
        return {"x": z, "g": rng.standard_normal((N, CLASSES)), "y": y}
    if op == "log":
        z = 2.0 * rng.standard_normal((N, CLASSES))
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return {"x": e / e.sum(axis=1, keepdims=True), "g": rng.standard_normal((N, CLASSES))}
    if op == "matmul":
        return {
            "x": rng.random((N, FEATURES)),                      # pixels in [0, 1)
            "W": 0.05 * rng.standard_normal((FEATURES, HIDDEN)),
            "g": rng.standard_normal((N, HIDDEN)),
        }
    raise ValueError(op)


_DATA: Dict[Tuple[str, str], Data] = {}
_BUFFERS: Dict[Tuple[str, Tuple[int, ...], str], np.ndarray] = {}
_TF_TENSORS: Dict[str, Any] = {}


@dataclass
class Rows:
    """A reference known only on some rows (the (60000, 785) products are checked on a sample)."""

    rows: np.ndarray
    values: np.ndarray


def _chunked_xT_g(x: np.ndarray, g: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``x.T @ g`` in float64 without a float64 copy of all of ``x``."""
    acc = np.zeros((x.shape[1], g.shape[1]))
    for a in range(0, x.shape[0], chunk):
        acc += x[a:a + chunk].astype(np.float64).T @ g[a:a + chunk].astype(np.float64)
    return acc


def data(op: str, dtype: str) -> Data:
    """Inputs in ``dtype`` and the references computed in float64 from those very inputs."""
    key = (op, dtype)
    if key in _DATA:
        return _DATA[key]
    # keep one op's arrays alive at a time (matmul's are 377 MB in float64)
    _DATA.clear()
    _BUFFERS.clear()
    _TF_TENSORS.clear()
    inputs = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in _master(op).items()}
    if op == "matmul":
        x, W, g = inputs["x"], inputs["W"].astype(np.float64), inputs["g"]
        rows = np.unique(np.r_[np.arange(0, N, 61), N - 1])
        fwd = Rows(rows, x[rows].astype(np.float64) @ W)
        bwd = (Rows(rows, g[rows].astype(np.float64) @ W.T), _chunked_xT_g(x, g))
        _DATA[key] = Data(inputs, fwd, bwd, x.size)
        return _DATA[key]
    a = {k: v.astype(np.float64) for k, v in inputs.items()}
    x, g = a["x"], a["g"]
    if op == "relu":
        fwd, bwd = np.maximum(x, 0.0), g * (x > 0)
    elif op in ("softmax", FAR):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        s = e / e.sum(axis=1, keepdims=True)
        fwd, bwd = s, s * (g - np.sum(g * s, axis=1, keepdims=True))
    elif op == "log":
        fwd, bwd = np.log(x + EPS), g / (x + EPS)
    elif op == "xent":
        y = a["y"]
        m = x.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))
        fwd = float(-np.mean(np.sum(y * (x - lse), axis=1)))
        bwd = (np.exp(x - lse) - y) / N
    else:
        raise ValueError(op)
    _DATA[key] = Data(inputs, fwd, bwd, inputs["x"].size)
    return _DATA[key]


def buffer(name: str, like: np.ndarray, shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
    """An output buffer shared by the implementations of one op, filled with NaN.

    Sharing saves page-faulting a fresh 377 MB array per implementation; the NaN fill makes
    sure a result checked after timing was written by the implementation under test.
    """
    shape = like.shape if shape is None else shape
    key = (name, shape, like.dtype.str)
    buf = _BUFFERS.get(key)
    if buf is None:
        buf = _BUFFERS[key] = np.empty(shape, like.dtype)
    buf.fill(np.nan)
    return buf


def tf_tensors(tf: Any, d: Data) -> Dict[str, Any]:
    """The op's inputs as TensorFlow tensors, made once per op and dtype."""
    if not _TF_TENSORS:
        _TF_TENSORS.update({k: tf.constant(v) for k, v in d.inputs.items()})
    return _TF_TENSORS


# --------------------------------------------------------------------------- implementations
@dataclass
class Case:
    """What to time: ``fn(*args)``; ``result`` turns its return value into numpy for the check."""

    fn: Callable[..., Any]
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)
    result: Callable[[Any], Any] = lambda r: r
    threads: Optional[int] = None
    note: str = ""


def pyops_case(backend: str, op: str, direction: str, d: Data) -> Case:
    """The package's own op object, with preallocated ``out=`` buffers."""
    ops = pyops.get_ops(backend)
    x, g = d.inputs["x"], d.inputs["g"]
    if op == "matmul":
        o = ops.Matmul()
        W = d.inputs["W"]
        if direction == "forward":
            return Case(o.forward, (x, W), {"out": buffer("h", x, (N, HIDDEN))})
        o.forward(x, W, out=buffer("h", x, (N, HIDDEN)))
        out = (buffer("gx", x), buffer("gW", W))
        return Case(o.backward, (g,), {"out": out})
    if op == "xent":
        o = ops.SoftmaxCrossEntropy()
        if direction == "forward":
            return Case(o.forward, (x, d.inputs["y"]))
        o.forward(x, d.inputs["y"])
        return Case(o.backward, (1.0,), {"out": buffer("out", x)})
    o = {"relu": ops.Relu, "softmax": ops.Softmax, "log": ops.Log}[op]()
    if direction == "forward":
        return Case(o.forward, (x,), {"out": buffer("out", x)})
    o.forward(x, out=buffer("y", x))
    return Case(o.backward, (g,), {"out": buffer("out", x)})


def best_numpy(op: str, direction: str, d: Data) -> Case:
    """The fastest plain-numpy form of each op we found (ufuncs with ``out=``, no temporaries).

    - relu: ``np.maximum(x, 0, out=y)``; backward ``np.greater(x, 0, out=mask)`` then
      ``np.multiply(g, mask, out=)`` with a preallocated bool mask.
    - softmax: the row max as 9 column-wise ``np.maximum`` (``x.max(axis=1)`` over rows of 10
      is slower), in-place ``subtract``/``exp``/``divide``, row sums by ``einsum``; backward
      ``s * (g - <g, s>)`` with the row dot by ``einsum``.
    - log: ``np.add(x, eps, out=y)`` then ``np.log(y, out=y)``; backward ``g / (x + eps)`` in
      one buffer.
    - xent: the stable log-sum-exp; the loss is ``(sum(m) + sum(log(rowsum)) - <y, z>) / N``
      (rows of y sum to 1); backward ``(s - y) * (1/N)`` in place.
    - matmul: ``np.matmul(..., out=)`` (numpy's BLAS).
    """
    x, g = d.inputs["x"], d.inputs["g"]
    dt = x.dtype
    out = buffer("out", x)
    if op == "relu":
        if direction == "forward":
            return Case(lambda x, y: np.maximum(x, 0, out=y), (x, out))
        mask = np.empty(x.shape, bool)

        def relu_backward(x, g, mask, out):
            np.greater(x, 0, out=mask)
            return np.multiply(g, mask, out=out)

        return Case(relu_backward, (x, g, mask, out))
    col = np.empty(N, dt)

    def row_max(z, m):
        np.maximum(z[:, 0], z[:, 1], out=m)
        for j in range(2, z.shape[1]):
            np.maximum(m, z[:, j], out=m)
        return m

    def softmax(z, s, col):
        m = row_max(z, col)
        np.subtract(z, m[:, None], out=s)
        np.exp(s, out=s)
        np.einsum("ij->i", s, out=col)
        np.divide(s, col[:, None], out=s)
        return s

    if op == "softmax":
        if direction == "forward":
            return Case(softmax, (x, out, col))
        s = softmax(x, buffer("y", x), col)

        def softmax_backward(s, g, col, out):
            np.einsum("ij,ij->i", g, s, out=col)
            np.subtract(g, col[:, None], out=out)
            return np.multiply(out, s, out=out)

        return Case(softmax_backward, (s, g, col, out))
    if op == "log":
        if direction == "forward":
            def log_forward(x, y):
                np.add(x, EPS, out=y)
                return np.log(y, out=y)

            return Case(log_forward, (x, out))

        def log_backward(x, g, out):
            np.add(x, EPS, out=out)
            return np.divide(g, out, out=out)

        return Case(log_backward, (x, g, out))
    if op == "xent":
        y = d.inputs["y"]
        lse = np.empty(N, dt)

        def xent_forward(z, y, s, m, lse):
            row_max(z, m)
            np.subtract(z, m[:, None], out=s)
            np.exp(s, out=s)
            np.einsum("ij->i", s, out=lse)
            np.divide(s, lse[:, None], out=s)           # s is kept for backward
            np.log(lse, out=lse)
            return float((m.sum() + lse.sum() - np.vdot(y, z)) / z.shape[0])

        if direction == "forward":
            return Case(xent_forward, (x, y, out, col, lse))
        s = buffer("y", x)
        xent_forward(x, y, s, col, lse)

        def xent_backward(s, y, out):
            np.subtract(s, y, out=out)
            return np.multiply(out, 1.0 / s.shape[0], out=out)

        return Case(xent_backward, (s, y, out))
    if op == "matmul":
        W = d.inputs["W"]
        if direction == "forward":
            return Case(lambda x, W, h: np.matmul(x, W, out=h), (x, W, buffer("h", x, (N, HIDDEN))))
        gx, gW = buffer("gx", x), buffer("gW", W)
        return Case(
            lambda x, W, g: (np.matmul(g, W.T, out=gx), np.matmul(x.T, g, out=gW)), (x, W, g)
        )
    raise ValueError(op)


def tensorflow_case(tf: Any, op: str, direction: str, d: Data) -> Case:
    """TensorFlow's op and TensorFlow's own gradient formula."""
    T = tf_tensors(tf, d)
    x, g = T["x"], T["g"]
    function = tf.function  # several ops; a single op runs eager (as fast, less call overhead)

    numpy_result = lambda r: r.numpy()  # noqa: E731
    if op == "relu":
        if direction == "forward":
            return Case(tf.nn.relu, (x,), result=numpy_result)
        relu_grad = lambda g, x: tf.raw_ops.ReluGrad(gradients=g, features=x)  # noqa: E731
        return Case(relu_grad, (g, x), result=numpy_result)
    if op == "softmax":
        if direction == "forward":
            return Case(tf.nn.softmax, (x,), result=numpy_result)

        def softmax_grad(s, g):  # TensorFlow's registered gradient of Softmax (nn_grad.py)
            return (g - tf.reduce_sum(g * s, -1, keepdims=True)) * s

        return Case(function(softmax_grad), (tf.nn.softmax(x), g), result=numpy_result)
    if op == "log":
        if direction == "forward":
            return Case(function(lambda x: tf.math.log(x + EPS)), (x,), result=numpy_result)
        return Case(function(lambda x, g: g / (x + EPS)), (x, g), result=numpy_result)
    if op == "xent":
        y = T["y"]

        def xent(z, y):  # the fused op computes the loss rows and the gradient rows
            loss, backprop = tf.raw_ops.SoftmaxCrossEntropyWithLogits(features=z, labels=y)
            return tf.reduce_mean(loss), backprop

        if direction == "forward":
            return Case(function(xent), (x, y), result=lambda r: float(r[0]))
        _, backprop = function(xent)(x, y)
        scale = tf.constant(1.0 / N, dtype=x.dtype)
        # registered gradient: grad_loss[:, None] * backprop, grad_loss = 1/N from the mean
        return Case(function(lambda bp, c: bp * c), (backprop, scale), result=numpy_result)
    if op == "matmul":
        W = T["W"]
        if direction == "forward":
            return Case(tf.matmul, (x, W), result=numpy_result)

        def matmul_grad(x, W, g):
            return tf.matmul(g, W, transpose_b=True), tf.matmul(x, g, transpose_a=True)

        return Case(function(matmul_grad), (x, W, g), result=lambda r: (r[0].numpy(), r[1].numpy()))
    raise ValueError(op)


def torch_case(torch: Any, op: str, direction: str, d: Data, out_name: str = "out") -> Case:
    """PyTorch's CPU kernels with ``out=`` (into ``buffer(out_name)``); the cross-entropy
    backward via autograd."""
    T = {k: torch.from_numpy(v) for k, v in d.inputs.items()}
    x, g = T["x"], T["g"]
    aten = torch.ops.aten
    out = torch.from_numpy(buffer(out_name, d.inputs["x"]))
    numpy_result = lambda r: r.numpy()  # noqa: E731
    if op == "relu":
        if direction == "forward":
            return Case(lambda x, out: aten.relu.out(x, out=out), (x, out), result=numpy_result)
        return Case(lambda g, x, out: aten.threshold_backward.grad_input(g, x, 0, grad_input=out),
                    (g, x, out), result=numpy_result)
    if op == "softmax":
        if direction == "forward":
            return Case(lambda x, out: aten._softmax.out(x, 1, False, out=out), (x, out),
                        result=numpy_result)
        s = torch.softmax(x, 1)
        return Case(
            lambda g, s, out: aten._softmax_backward_data.out(g, s, 1, s.dtype, grad_input=out),
            (g, s, out), result=numpy_result,
        )
    if op == "log":
        if direction == "forward":
            def log_forward(x, out):
                torch.add(x, EPS, out=out)
                return torch.log(out, out=out)

            return Case(log_forward, (x, out), result=numpy_result)

        def log_backward(x, g, out):
            torch.add(x, EPS, out=out)
            return torch.div(g, out, out=out)

        return Case(log_backward, (x, g, out), result=numpy_result)
    if op == "xent":
        y = T["y"]
        F = torch.nn.functional
        if direction == "forward":
            def xent_forward(z, y):
                with torch.no_grad():
                    return F.cross_entropy(z, y)

            return Case(xent_forward, (x, y), result=lambda r: float(r))
        z = x.clone().requires_grad_(True)
        loss = F.cross_entropy(z, y)
        return Case(lambda loss, z: torch.autograd.grad(loss, z, retain_graph=True)[0], (loss, z),
                    result=numpy_result)
    if op == "matmul":
        W = T["W"]
        if direction == "forward":
            h = torch.from_numpy(buffer("h", d.inputs["x"], (N, HIDDEN)))
            return Case(lambda x, W, h: torch.matmul(x, W, out=h), (x, W, h), result=numpy_result)
        gx = torch.from_numpy(buffer("gx", d.inputs["x"]))
        gW = torch.from_numpy(buffer("gW", d.inputs["W"]))

        def matmul_grad(x, W, g):
            return torch.matmul(g, W.T, out=gx), torch.matmul(x.T, g, out=gW)

        return Case(matmul_grad, (x, W, g), result=lambda r: (r[0].numpy(), r[1].numpy()))
    raise ValueError(op)


class ParallelCopy:
    """``np.copyto`` split into one contiguous chunk per thread (numpy releases the GIL)."""

    def __init__(self, dst: np.ndarray, src: np.ndarray, threads: int) -> None:
        self.dst, self.src = dst, src
        self.note = f"np.copyto of {src.size} elements, {threads} thread(s)"
        bounds = np.linspace(0, src.size, threads + 1).astype(int)
        flat_d, flat_s = dst.reshape(-1), src.reshape(-1)
        self.chunks = [(flat_d[a:b], flat_s[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        self.pool = ThreadPoolExecutor(threads - 1) if threads > 1 else None

    def __call__(self) -> None:
        futures = [self.pool.submit(np.copyto, dd, ss) for dd, ss in self.chunks[1:]] if self.pool else []
        np.copyto(*self.chunks[0])
        for f in futures:
            f.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def copy_of_op_bytes(request: Any, d: Data, op: str, direction: str, threads: int) -> ParallelCopy:
    """A copy of as many bytes as ``op`` reads plus writes (``ARRAYS_MOVED``: a copy reads n and
    writes n elements, n = moved/2 times the op's array) on ``threads``, between the shared
    ``copy-src``/``copy-dst`` buffers; its threads are shut down when the test ends."""
    n = d.size * ARRAYS_MOVED[(op, direction)] // 2
    src = buffer("copy-src", d.inputs["x"], (n,))
    copy = ParallelCopy(buffer("copy-dst", src), src, threads)
    request.addfinalizer(copy.close)
    return copy


# --------------------------------------------------------------------------- the benchmark
def _check(got: Any, want: Any, dtype: str, what: str) -> None:
    rtol, atol_frac = TOL[dtype]
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), what
        for i, (a, b) in enumerate(zip(got, want)):
            _check(a, b, dtype, f"{what}[{i}]")
        return
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=rtol * 10), what
        return
    got = np.asarray(got)
    if isinstance(want, Rows):
        assert got.shape[0] == N, f"{what}: {got.shape[0]} rows"
        got, want = got[want.rows], want.values
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_frac * np.max(np.abs(want)), err_msg=what)


@pytest.mark.parametrize(
    "op,direction,dtype,impl", CASES, ids=[f"{o}-{di}-{dt}-{i}" for o, di, dt, i in CASES]
)
def test_op(benchmark, request, use_threads, op, direction, dtype, impl):
    family, threads = split_impl(impl)
    benchmark.group = f"{op}-{direction}-{dtype}"
    d = data(op, dtype)
    op = "softmax" if op == FAR else op  # the same op on other data
    itemsize = np.dtype(dtype).itemsize
    moved = ARRAYS_MOVED.get((op, direction))
    benchmark.extra_info.update(
        op=op, direction=direction, dtype=dtype, impl=impl, family=family,
        bytes_moved=None if moved is None else moved * d.size * itemsize,
    )

    if family.startswith("copy-limit"):
        copy = copy_of_op_bytes(request, d, op, direction, threads)
        copy.src.fill(1)
        if not benchmark.disabled:
            copy()  # touch dst's pages and start the threads outside the timing
        benchmark.extra_info.update(threads=threads, note=copy.note)
        benchmark(copy)
        assert np.array_equal(copy.dst, copy.src)
        return

    # numpy's ufuncs run on one thread; matmul runs on numpy's BLAS threads (None here)
    numpy_threads = None if op == "matmul" else 1
    if family == "cython":
        use_threads("cython", threads)
        case = pyops_case("cython", op, direction, d)
        case.threads = numpy_threads if op == "matmul" else threads
    elif family == "numpy":
        case = pyops_case("numpy", op, direction, d)
        case.threads = numpy_threads
    elif family == "best-numpy":
        case = best_numpy(op, direction, d)
        case.threads = numpy_threads
    elif family == "tensorflow":
        tf = request.getfixturevalue("tf")
        case = tensorflow_case(tf, op, direction, d)
        case.threads = tf.config.threading.get_intra_op_parallelism_threads() or N_CORES
    elif family == "torch":
        torch = request.getfixturevalue("torch")
        use_threads("torch", threads)
        case = torch_case(torch, op, direction, d)
        case.threads = threads
    else:
        raise ValueError(impl)
    benchmark.extra_info.update(threads=case.threads)

    if not benchmark.disabled:  # warm up: first-touch pages, TensorFlow tracing
        case.fn(*case.args, **case.kwargs)
    result = benchmark(case.fn, *case.args, **case.kwargs)
    want = d.forward if direction == "forward" else d.backward
    _check(case.result(result), want, dtype, f"{impl} {op} {direction} {dtype}")


PAIRED_CASES = [(op, direction, dtype, t) for op, direction in PAIRED
                for dtype in DTYPES for t in THREAD_COUNTS]


@pytest.mark.parametrize("op,direction,dtype,threads", PAIRED_CASES,
                         ids=[f"{o}-{di}-{dt}-{t}t" for o, di, dt, t in PAIRED_CASES])
def test_kernel_paired(benchmark, request, use_threads, op, direction, dtype, threads):
    """The cython kernel in rounds that alternate with a copy of its bytes and with its peers.

    :func:`test_op` times each implementation in its own rounds, seconds apart, each repeating
    on data it has just used. For relu's (60000, 100) arrays that has given medians that moved
    by 2x between report runs, and not together (the copy's two-thread time went from 0.89 to
    1.73 ms while the kernel's stayed at 0.78), so a ratio of two of them can compare two
    conditions.  Here pytest-benchmark times the kernel, and before each of its rounds (its
    untimed ``setup``) the copy (on as many threads), TensorFlow (on its own default threads)
    and PyTorch (on as many threads) run once each, timed with ``time.perf_counter``, in an
    order that rotates from round to round, so that no one always follows the same other.
    ``extra_info["paired"][name]`` holds each one's median, IQR, min and rounds (seconds) and
    the median and IQR of the per-round ratio kernel / it (:func:`pair_rounds`), which the
    report's relu checks use.  A peer that is not installed is left out.  Each writes its own
    output buffer, so the final check is of the kernel's result.
    """
    benchmark.group = f"{op}-{direction}-{dtype}-paired"
    d = data(op, dtype)
    use_threads("cython", threads)
    case = pyops_case("cython", op, direction, d)
    copy = copy_of_op_bytes(request, d, op, direction, threads)
    copy.src[...] = np.resize(d.inputs["x"].reshape(-1), copy.src.size)  # the op's own values
    others: Dict[str, Callable[[], Any]] = {"copy": copy}
    notes = {"copy": copy.note}
    for name in ("tensorflow", "torch"):
        try:
            lib = request.getfixturevalue("tf" if name == "tensorflow" else name)
        except pytest.skip.Exception:
            continue  # not installed: this comparison is left out
        if name == "torch":
            use_threads("torch", threads)
            peer = torch_case(lib, op, direction, d, out_name="torch-out")
            notes[name] = f"{threads} thread(s)"
        else:
            peer = tensorflow_case(lib, op, direction, d)  # a new output tensor per call
            notes[name] = "TensorFlow's default intra-op threads"
        others[name] = lambda peer=peer: peer.fn(*peer.args, **peer.kwargs)
    names = list(others)
    seconds: Dict[str, List[float]] = {name: [] for name in names}

    def run_others() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        start = len(seconds[names[0]]) % len(names)  # rotate: round i starts with names[i % k]
        for name in names[start:] + names[:start]:
            t0 = time.perf_counter()
            others[name]()
            seconds[name].append(time.perf_counter() - t0)
        return case.args, case.kwargs

    if not benchmark.disabled:  # first touch, thread start-up and tracing outside the timing
        run_others()
        case.fn(*case.args, **case.kwargs)
        for times in seconds.values():
            times.clear()
    warmup = 1
    result = benchmark.pedantic(case.fn, setup=run_others, rounds=PAIRED_ROUNDS, warmup_rounds=warmup)
    assert np.array_equal(copy.dst, copy.src)
    _check(case.result(result), d.forward if direction == "forward" else d.backward, dtype,
           f"cython-{threads}t {op} {direction} {dtype}, paired")
    benchmark.extra_info.update(
        op=op, direction=direction, dtype=dtype, impl=f"cython-{threads}t", family="cython",
        threads=threads, bytes_moved=ARRAYS_MOVED[(op, direction)] * d.size * np.dtype(dtype).itemsize)
    if benchmark.disabled:  # one untimed call: no rounds to pair
        return
    paired = pair_rounds(list(benchmark.stats.stats.data), seconds, warmup)
    benchmark.extra_info["paired"] = {name: dict(p, note=notes[name]) for name, p in paired.items()}


def pair_rounds(kernel_rounds: List[float], seconds: Dict[str, List[float]],
                warmup: int) -> Dict[str, Dict[str, Any]]:
    """:func:`paired_stats` of each other implementation: its calls after the ``warmup``
    rounds' are the ones before the kernel's timed rounds, one each, in order."""
    return {name: paired_stats(kernel_rounds, times[warmup:warmup + len(kernel_rounds)])
            for name, times in seconds.items()}


def paired_stats(kernel_rounds: List[float], other_rounds: List[float]) -> Dict[str, Any]:
    """Median, IQR, min and count of the other's rounds (seconds), and the median and IQR of
    the per-round ratio kernel / other, for rounds in the order they ran (other i with kernel i)."""
    if len(kernel_rounds) != len(other_rounds) or not kernel_rounds:
        raise ValueError(f"paired_stats: {len(kernel_rounds)} kernel rounds and {len(other_rounds)} "
                         "rounds of the other; they must pair one to one")
    c = np.asarray(other_rounds, dtype=float)
    r = np.asarray(kernel_rounds, dtype=float) / c
    (c1, cm, c3), (r1, rm, r3) = np.percentile(c, [25, 50, 75]), np.percentile(r, [25, 50, 75])
    return dict(median=float(cm), iqr=float(c3 - c1), min=float(c.min()), rounds=len(c),
                ratio=dict(median=float(rm), iqr=float(r3 - r1)))


def test_paired_stats_pair_each_round_with_its_own_copy():
    # rounds in two machine states: the medians of kernel (1.0) and copy (2.0) fall in
    # different ones, a ratio of 0.5 that no round had; the rounds' own ratios say 0.95
    kernel = [1.0, 1.9, 1.0, 1.9, 1.0]
    copy = [2.0, 2.0, 1.0, 2.0, 1.0]
    stats = paired_stats(kernel, copy)
    ratio = stats.pop("ratio")
    assert ratio["median"] == pytest.approx(0.95) and ratio["iqr"] == pytest.approx(0.05)
    assert stats == {"median": 2.0, "iqr": 1.0, "min": 1.0, "rounds": 5}
    with pytest.raises(ValueError, match="must pair one to one"):
        paired_stats(kernel, copy[:-1])


def test_pair_rounds_drops_the_warmup_and_aligns_each_round():
    # the warm-up round's call (9.0) is not paired; call i + warmup goes with kernel round i
    kernel = [1.0, 2.0, 3.0]
    got = pair_rounds(kernel, {"copy": [9.0, 2.0, 4.0, 6.0], "torch": [9.0, 1.0, 2.0, 3.0, 7.0]}, warmup=1)
    assert got["copy"]["ratio"]["median"] == pytest.approx(0.5) and got["copy"]["rounds"] == 3
    assert got["torch"]["ratio"] == {"median": pytest.approx(1.0), "iqr": pytest.approx(0.0)}
    assert got["torch"]["median"] == 2.0  # 7.0, a call after the last round, is not counted
