"""Each compiled kernel once per CPU variant this machine runs, on one thread.

``kernels`` loads the best build the CPU supports, so ``bench/test_ops.py`` only ever times that
one. The others are what a CPU without AVX-512 (``x86_64_v3``) or without AVX2 (``baseline``)
gets, and a variant whose loop gcc failed to vectorize is as slow as a branch per element (relu
backward on ``baseline`` and ``x86_64_v3`` once took 26 ms where ``x86_64_v4`` took 2 ms). This
group shows such a gap.

Group ``variant-<op>-<direction>-<dtype>``, one benchmark per runnable variant: the variant's
compiled module called directly (``kernels._dispatch.load_variant``) on the inputs of
``bench/test_ops.py`` (relu on (60000, 100), the others on (60000, 10)), outputs preallocated,
the module held to 1 thread. Each result is checked against the float64 reference after timing.
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

import numpy as np
import pytest

from bench import ROWS as N
from bench.test_ops import DTYPES, EPS, _check, buffer, data

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

KERNELS = [("relu", "forward"), ("relu", "backward"), ("softmax", "forward"), ("softmax", "backward"),
           ("log", "forward"), ("log", "backward"), ("xent", "forward"), ("xent", "backward")]


def _variants():
    try:
        from kernels import _dispatch
    except ImportError:  # reported by test_ops (the cython cases fail there)
        return []
    built = set(_dispatch.built_variants())
    return [v for v in _dispatch.runnable_variants() if v in built]


VARIANTS = _variants()
CASES = [(op, direction, dtype, v) for op, direction in KERNELS for dtype in DTYPES for v in VARIANTS]


def call(k: Any, op: str, direction: str, d: Any) -> Tuple[Callable[[], Any], Callable[[Any], Any]]:
    """``(fn, result)``: ``fn()`` runs the kernel of module ``k``; ``result(fn())`` is what to check."""
    x, g = d.inputs["x"], d.inputs["g"]
    out = buffer("out", x)
    flat = lambda a: a.reshape(-1)  # noqa: E731  (elementwise kernels take 1-D views)
    result: Callable[[Any], Any] = lambda _: out  # noqa: E731
    if op == "relu":
        fn = ((lambda: k.relu_forward(flat(x), flat(out))) if direction == "forward"
              else (lambda: k.relu_backward(flat(x), flat(g), flat(out))))
    elif op == "log":
        fn = ((lambda: k.log_forward(flat(x), EPS, flat(out))) if direction == "forward"
              else (lambda: k.log_backward(flat(x), flat(g), EPS, flat(out))))
    elif op == "softmax":
        s = np.ascontiguousarray(d.forward, dtype=x.dtype)  # backward's input: the softmax of x
        fn = ((lambda: k.softmax_forward(x, out)) if direction == "forward"
              else (lambda: k.softmax_backward(s, g, out)))
    elif op == "xent":
        y = d.inputs["y"]
        if direction == "forward":
            fn = lambda: k.softmax_cross_entropy(x, y, out)  # noqa: E731
            result = lambda loss: loss / N  # noqa: E731  (the module returns the sum)
        else:
            m = x.astype(np.float64).max(axis=1, keepdims=True)
            e = np.exp(x - m)
            s = np.ascontiguousarray(e / e.sum(axis=1, keepdims=True), dtype=x.dtype)
            fn = lambda: k.scaled_difference(flat(s), flat(y), 1.0 / N, flat(out))  # noqa: E731
    else:
        raise ValueError(op)
    return fn, result


@pytest.mark.skipif(not VARIANTS, reason="the compiled kernels are not installed")
@pytest.mark.parametrize("op,direction,dtype,variant", CASES,
                         ids=[f"{o}-{di}-{dt}-{v}" for o, di, dt, v in CASES])
def test_variant(benchmark, op: str, direction: str, dtype: str, variant: str) -> None:
    from kernels import _dispatch

    benchmark.group = f"variant-{op}-{direction}-{dtype}"
    benchmark.extra_info.update(op=op, direction=direction, dtype=dtype, impl=variant, threads=1)
    k = _dispatch.load_variant(variant)
    d = data(op, dtype)
    fn, result = call(k, op, direction, d)
    before = k.get_num_threads()
    k.set_num_threads(1)
    try:
        if not benchmark.disabled:
            fn()  # warm up: first-touch pages
        got = benchmark(fn)
    finally:
        k.set_num_threads(before)
    want = d.forward if direction == "forward" else d.backward
    _check(result(got), want, dtype, f"{variant} {op} {direction} {dtype}")

