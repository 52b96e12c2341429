"""``kernels.Matmul``'s products: large ones split over the kernels' threads, BLAS on one thread.

Layers: :func:`matmul` (the kernel table's entry, called by the op classes after their
checks) -> :func:`split_plan` (how many parts, if any, and along which axis:
:func:`split_axis`) -> :func:`_parts` (the calls), run by the compiled module's
``run_calls``: one ``numpy.matmul`` per OpenMP thread, the threads that run the other
kernels.

Why not let numpy's OpenBLAS thread the product itself: after each threaded call its idle
threads spin for about 0.1 s (``OPENBLAS_THREAD_TIMEOUT``, read once at numpy's import) on
the cores the compiled kernels that follow want; on 2 cores a full-batch training step's
kernels then ran slower on two threads than on one.  Held to one thread, OpenBLAS wakes
none of its threads.  The split is also faster for the step's ``X.T @ G``, cut along its
summed axis (the 60000 rows), each part's sum added after: full batch, float32, two
threads, this project's machine: 27.2 against 31.3 ms (float64 58.4 against 60.5 ms);
``X @ W1`` about as fast either way.  The parts run on the OpenMP threads, not on a
Python thread pool: a pool thread woken while the kernels' thread still spun after the
kernel before was placed on the caller's core and shared it for tens of milliseconds
(float64 ``X.T @ G`` in the step: 90 against 58 ms).

The split runs only when all of these hold: the kernels use two or more threads
(:func:`kernels.set_num_threads`) and were built with OpenMP, numpy's BLAS is a bundled
OpenBLAS whose thread count can be set (:mod:`pyops._blas`), and each part has at least
:data:`SPLIT_MIN_MACS` multiply-adds.  Otherwise the product is one ``numpy.matmul``
call, threaded as numpy's BLAS likes.  OpenBLAS's thread count is one setting for the
whole process (:func:`pyops._blas.one_blas_thread`): while a split product runs, a BLAS
call from another Python thread also gets one thread.
"""
from __future__ import annotations

from types import ModuleType
from typing import List, Optional, Tuple

import numpy as np

from pyops._blas import one_blas_thread, openblas_thread_functions

#: Least multiply-adds per part for a product to be split (smaller products run as one
#: numpy call): 2^28, about 3400 rows of a (N, 785) x (785, 100) product per part.  Measured
#: on this project's 2-core machine, two parts against OpenBLAS's two threads: 8192 rows,
#: X @ W1 1.02x and X.T @ G 1.24x as fast in float32 (1.02x and 1.09x in float64); from
#: 4096 rows down, a split after a pause was up to 3x slower (waking the threads costs
#: about as much as such a product).
SPLIT_MIN_MACS: int = 1 << 28


def split_available(openmp: bool) -> bool:
    """Whether products can be split at all: OpenMP in the build, and numpy's bundled
    OpenBLAS found (whose thread count the split holds to one)."""
    return bool(openmp) and openblas_thread_functions() is not None


def split_plan(m: int, k: int, n: int, threads: int, openmp: bool = True) -> Tuple[int, str]:
    """``(parts, axis)``: how many parts ``(m, k) @ (k, n)`` is cut into on ``threads``
    threads (1: not split), and along which axis (:func:`split_axis`).

    At most one part per thread, each of :data:`SPLIT_MIN_MACS` multiply-adds or more, and no
    more than the axis cut is long."""
    if threads < 2 or not split_available(openmp):
        return 1, "rows"
    parts = int(max(1, min(threads, (m * k * n) // SPLIT_MIN_MACS)))
    axis = split_axis(m, k, n, parts)
    return min(parts, {"rows": m, "summed": k, "columns": n}[axis]), axis


def split_parts(m: int, k: int, n: int, threads: int, openmp: bool = True) -> int:
    """How many parts ``(m, k) @ (k, n)`` is split into on ``threads`` threads; 1: not split
    (:func:`split_plan`)."""
    return split_plan(m, k, n, threads, openmp)[0]


def split_axis(m: int, k: int, n: int, parts: int) -> str:
    """Which axis of ``(m, k) @ (k, n)`` to cut into ``parts``: the rows of ``a`` when it has
    at least as many rows as columns; else the summed axis, if the partial outputs that
    needs (``parts - 1`` more ``(m, n)`` arrays, added after) are small beside ``a``, as for
    ``X.T @ G``; else the columns of ``b``."""
    if m >= k:
        return "rows"
    if (parts - 1) * m * n * 8 <= m * k:
        return "summed"
    return "columns"


def _parts(a: np.ndarray, b: np.ndarray, out: np.ndarray, parts: int,
           axis: str) -> Tuple[List[tuple], List[np.ndarray]]:
    """The ``(a_part, b_part, out_part)`` calls of ``out = a @ b`` in ``parts`` pieces along
    ``axis`` (of :func:`split_plan`), and the partial outputs to add into ``out`` afterwards."""
    m, k = a.shape
    size = {"rows": m, "summed": k, "columns": b.shape[1]}[axis]
    cut = [size * i // parts for i in range(parts + 1)]
    spans = list(zip(cut[:-1], cut[1:]))
    if axis == "rows":
        return [(a[lo:hi], b, out[lo:hi]) for lo, hi in spans], []
    if axis == "columns":
        return [(a, b[:, lo:hi], out[:, lo:hi]) for lo, hi in spans], []
    partial = [np.empty_like(out) for _ in range(parts - 1)]  # the same layout as out
    outs = [out] + partial
    return [(a[:, lo:hi], b[lo:hi], o) for (lo, hi), o in zip(spans, outs)], partial


def matmul(a: np.ndarray, b: np.ndarray, out: Optional[np.ndarray],
           module: ModuleType) -> np.ndarray:
    """``a @ b`` (2-D, checked by the caller: ``out`` overlaps neither) into ``out`` (or a
    new array), split over the compiled ``module``'s threads when large enough (see the
    module note)."""
    m, k = a.shape
    n = b.shape[1]
    parts, axis = split_plan(m, k, n, module.get_num_threads(), module.OPENMP)
    if parts < 2:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, n), np.result_type(a, b))
    calls, partial = _parts(a, b, out, parts, axis)
    with one_blas_thread():
        module.run_calls(np.matmul, calls)
    for p in partial:
        np.add(out, p, out=out)
    return out
