"""The model's second layer, ``relu(h1) @ W2``, forward and backward: one pass or several.

``pyops.MLP`` runs its second layer through ``relu_matmul_forward`` and ``relu_matmul_backward``
of the backend's kernel table: forward from the pre-activations ``x`` (its ``h1``) to the logits
without keeping ``relu(x)``, backward from ``x`` again. On the compiled backend each is one pass
over the (N, 100) rows (``kernels/_relu_matmul.h``); before, and still on the baseline build,
the compiled relu and numpy's BLAS took two passes forward and three or four backward. This
group times both ways.

Group ``second-layer-<direction>-<dtype>``, (60000, 100) pre-activations, W2 (100, 10), grad
(60000, 10), outputs preallocated:

``numpy``
    The numpy table (``np.maximum`` and ``np.matmul``) as the model calls it.
``separate-1t``, ``separate-<cores>t``
    The compiled table with its one-pass kernels off (``RELU_MATMUL_FUSED`` False): the compiled
    relu on that many threads, numpy's BLAS on its own. Forward, relu into a kept ``h`` and
    ``h @ W`` (the model's calls before the one-pass kernel); backward from ``x``: relu, the two
    products, the mask.
``cython-1t``, ``cython-<cores>t``
    The compiled table as the model calls it: one pass, except on the baseline build.

Each result is checked against a float64 numpy reference after timing. ``separate-Nt`` and
``cython-Nt`` set the kernels' threads only: numpy's BLAS keeps its own.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
import pytest

from bench import ROWS as N, THREAD_COUNTS, split_impl

HIDDEN, CLASSES = 100, 10
DTYPES = ("float64", "float32")
DIRECTIONS = ("forward", "backward")
IMPLS = ["numpy"] + [f"{f}-{t}t" for f in ("separate", "cython") for t in THREAD_COUNTS]
CASES = [(direction, dtype, impl) for direction in DIRECTIONS for dtype in DTYPES for impl in IMPLS]
TOL = {"float64": 1e-10, "float32": 1e-4}  # of the largest value

_DATA: Dict[str, Tuple[np.ndarray, ...]] = {}


def inputs(dtype: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, W, g)``: pre-activations, weights and a gradient at the output."""
    if dtype not in _DATA:
        _DATA.clear()
        rng = np.random.default_rng(20240602)
        x = rng.standard_normal((N, HIDDEN)).astype(dtype)
        W = (rng.standard_normal((HIDDEN, CLASSES)) * 0.14).astype(dtype)
        g = rng.standard_normal((N, CLASSES)).astype(dtype)
        _DATA[dtype] = (x, W, g)
    return _DATA[dtype]


@pytest.mark.parametrize("direction,dtype,impl", CASES, ids=[f"{d}-{t}-{i}" for d, t, i in CASES])
def test_second_layer(benchmark, use_threads, monkeypatch, direction: str, dtype: str,
                      impl: str) -> None:
    from pyops.backend import get_kernels

    family, threads = split_impl(impl)
    benchmark.group = f"second-layer-{direction}-{dtype}"
    benchmark.extra_info.update(direction=direction, dtype=dtype, impl=impl, family=family,
                                threads=threads)
    table: Any = get_kernels("numpy" if family == "numpy" else "cython")
    if family != "numpy":
        use_threads("cython", threads)
    if family == "separate":  # "cython": as the build decides (the baseline build: separate)
        monkeypatch.setattr(table._k, "RELU_MATMUL_FUSED", False)
    x, W, g = inputs(dtype)
    ins = (x, W) if direction == "forward" else (g, x, W)
    shapes = [x.shape, (N, CLASSES)] if direction == "forward" else [x.shape, W.shape]
    outs = [np.empty(shape, dtype) for shape in shapes]
    if direction == "forward" and family != "separate":
        outs[0] = None  # relu(x) not kept, as the model calls it
    fn = getattr(table, f"relu_matmul_{direction}")
    if not benchmark.disabled:
        fn(*ins, *outs)  # first-touch the outputs' pages outside the timing
    benchmark(fn, *ins, *outs)
    x64, W64 = x.astype(np.float64), W.astype(np.float64)  # a float64 reference, not a table
    h64 = np.maximum(x64, 0)
    if direction == "forward":
        expected = [h64, h64 @ W64]
    else:
        g64 = g.astype(np.float64)
        expected = [(g64 @ W64.T) * (x64 > 0), h64.T @ g64]
    for got, ref in zip(outs, expected):
        if got is not None:
            np.testing.assert_allclose(got, ref, rtol=0,
                                       atol=TOL[dtype] * max(1.0, np.abs(ref).max()))
