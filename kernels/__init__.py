"""Compiled op kernels with the API of :mod:`pyops`.

``kernels.Relu``, ``kernels.Softmax``, ``kernels.Log`` and
``kernels.SoftmaxCrossEntropy`` are the :mod:`pyops` classes with their
arithmetic done by Cython loops over typed memoryviews (float32/float64,
OpenMP threads over rows); ``kernels.Matmul`` uses numpy's BLAS like
``pyops.Matmul``, but splits a large product over the kernels' threads with
BLAS held to one thread (:mod:`kernels._matmul`).  Checks, errors, ``mem``
and ``out=`` are shared, so swapping one backend for the other changes
speed, not behaviour.

Importing this package raises ImportError, with the command that builds it,
when the compiled extension is missing.
"""
from __future__ import annotations

import operator
from typing import Any, Dict

from pyops import ops as _ops

from . import _dispatch, _matmul, _table
from ._dispatch import built_variants, runnable_variants

__all__ = [
    "Matmul", "Relu", "Softmax", "Log", "SoftmaxCrossEntropy",
    "build_info", "set_num_threads", "get_num_threads", "MAX_THREADS",
]


class _Compiled:
    backend = "cython"
    _kernels = _table


class Matmul(_Compiled, _ops.Matmul):
    __doc__ = _ops.Matmul.__doc__


class Relu(_Compiled, _ops.Relu):
    __doc__ = _ops.Relu.__doc__


class Softmax(_Compiled, _ops.Softmax):
    __doc__ = _ops.Softmax.__doc__


class Log(_Compiled, _ops.Log):
    __doc__ = _ops.Log.__doc__


class SoftmaxCrossEntropy(_Compiled, _ops.SoftmaxCrossEntropy):
    __doc__ = _ops.SoftmaxCrossEntropy.__doc__


#: The most threads :func:`set_num_threads` accepts (one kernel call's partial sums are kept
#: on the stack); a larger ``OMP_NUM_THREADS`` is held to it.
MAX_THREADS: int = _table._k.MAX_THREADS


def set_num_threads(n: int) -> None:
    """Use at most ``n`` OpenMP threads per kernel call (default: ``OMP_NUM_THREADS`` or all cores).

    ``n`` is an integer from 1 to :data:`MAX_THREADS`; TypeError or ValueError otherwise.
    """
    try:
        if isinstance(n, bool):  # an index, but True meaning 1 thread is a bug in the caller
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an integer, got {n!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be between 1 and {MAX_THREADS}, got {n}")
    _table._k.set_num_threads(n)


def get_num_threads() -> int:
    """The most threads a kernel call uses; small inputs always run on one."""
    return _table._k.get_num_threads()


def build_info() -> Dict[str, Any]:
    """What is loaded: CPU variant, OpenMP on or off, vector exp/log, the Cython that generated
    it, threads, module path.

    ``omp_wait`` says how long idle OpenMP threads spin (None without OpenMP).
    ``matmul_split``: whether ``Matmul`` splits large products over the kernels' threads
    (needs OpenMP and numpy's bundled OpenBLAS; still only from two threads and
    ``matmul_split_min_macs`` multiply-adds per part, see :mod:`kernels._matmul`).
    """
    info = dict(_table._k.build_info())
    info.update(
        threads=get_num_threads(),
        omp_wait=_dispatch.omp_wait if info["openmp"] else None,
        parallel_min_elements=_table._k.PARALLEL_MIN_ELEMENTS,
        matmul_split=_matmul.split_available(info["openmp"]),
        matmul_split_min_macs=_matmul.SPLIT_MIN_MACS,
        built_variants=built_variants(),
        runnable_variants=runnable_variants(),
        module=_table._k.__file__,
    )
    return info
