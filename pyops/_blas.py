"""numpy's BLAS threads at run time: find numpy's bundled OpenBLAS, read and set its thread count.

Used by ``pyops train --blas-threads`` and by :mod:`kernels`, whose ``Matmul`` holds
OpenBLAS to one thread while it splits a large product over its own threads.  Only
numpy's bundled OpenBLAS (scipy-openblas, or a plain OpenBLAS in the wheel) is found;
with MKL, Accelerate or a system BLAS the functions here return None and change nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import threading
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

__all__ = ["openblas_thread_functions", "get_blas_threads", "set_blas_threads", "one_blas_thread"]

#: Names of OpenBLAS's thread setter/getter in numpy's bundled library (scipy-openblas) and plain builds.
_OPENBLAS_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


@functools.lru_cache(maxsize=None)
def openblas_thread_functions() -> Optional[Tuple[Callable[[int], None], Callable[[], int]]]:
    """``(set, get)`` of numpy's bundled OpenBLAS as ctypes functions, or None if not found.

    OpenBLAS's thread count is one setting for the whole process (its
    ``openblas_set_num_threads_local`` sets the same global count).
    """
    root = os.path.dirname(os.path.dirname(np.__file__))
    patterns = ("numpy.libs/*openblas*", "numpy/.dylibs/*openblas*")
    for path in sorted({p for pat in patterns for p in glob.glob(os.path.join(root, pat))}):
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: the same library instance
        except OSError:
            continue
        for set_name, get_name in _OPENBLAS_SYMBOLS:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                return setter, getter
    return None


def get_blas_threads() -> Optional[int]:
    """The thread count of numpy's bundled OpenBLAS, or None when it cannot be found."""
    functions = openblas_thread_functions()
    return None if functions is None else int(functions[1]())


def set_blas_threads(n: int) -> Optional[int]:
    """Set the threads of numpy's bundled OpenBLAS at run time; return the previous count.

    Returns None (and changes nothing) when numpy does not use a bundled
    OpenBLAS that can be found (e.g. MKL or Accelerate builds); then use the
    BLAS's own environment variable before start-up.
    """
    functions = openblas_thread_functions()
    if functions is None:
        return None
    setter, getter = functions
    previous = int(getter())
    setter(int(n))
    return previous


_hold = threading.RLock()  # one holder at a time: the count is global, and is put back after
_held_from: Optional[int] = None  # the count the outermost holder put back at its end


def _after_fork_in_child() -> None:
    """A child forked while another thread held the count: that thread does not exist in the
    child, so free the lock it held and put back the count it would have."""
    global _hold, _held_from
    _hold = threading.RLock()
    if _held_from is not None:
        functions = openblas_thread_functions()
        if functions is not None:
            functions[0](_held_from)
        _held_from = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[bool]:
    """Run the block with numpy's bundled OpenBLAS held to one thread, then put its count back.

    Yields whether it could (False, and nothing changes, when the OpenBLAS is not found).
    Why: after a threaded call OpenBLAS's idle threads spin for about 0.1 s on the other
    cores, where the compiled kernels that follow run; even ``numpy.vdot`` of a full-batch
    loss is threaded.  Held to one thread, OpenBLAS wakes none of them.  The count is one
    setting for the process: BLAS calls from other Python threads meanwhile get one thread
    too, and a second holder waits for the first.  A child forked meanwhile starts with the
    count put back and the hold free.
    """
    global _held_from
    functions = openblas_thread_functions()
    if functions is None:
        yield False
        return
    setter, getter = functions
    with _hold:
        before = int(getter())
        if before != 1:
            setter(1)
            _held_from = before
        try:
            yield True
        finally:
            if before != 1:
                setter(before)
                _held_from = None
