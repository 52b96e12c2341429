"""Shared fixtures: backends, dtypes with their tolerances, TensorFlow as the oracle; arrays
that end at a guard page."""
from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np
import pytest

import pyops
from kernels import _dispatch

BACKENDS = ("numpy", "cython")
DTYPES = (np.float32, np.float64)
# rtol/atol per dtype for comparisons with TensorFlow and between backends.
TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def pytest_configure(config):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def ops(backend):
    """The op classes of one backend. A missing compiled extension is an error, not a skip."""
    return pyops.get_ops(backend)


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


@pytest.fixture
def tol(dtype):
    return TOL[dtype]


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, the oracle. Skipped only where it cannot be installed; CI sets
    OPKERNELS_REQUIRE_TF=1 so that a missing TensorFlow fails there instead."""
    if os.environ.get("OPKERNELS_REQUIRE_TF") == "1":
        import tensorflow

        return tensorflow
    return pytest.importorskip("tensorflow", reason="TensorFlow (the test oracle) is not installed")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def kernel_threads():
    """``kernel_threads(n)``: the compiled kernels' thread count for one test, put back after."""
    import kernels

    before = kernels.get_num_threads()
    yield kernels.set_num_threads
    kernels.set_num_threads(before)


def built_runnable_variants():
    """The compiled CPU variants this build has and this CPU runs (for tests of each)."""
    return [v for v in _dispatch.runnable_variants() if v in _dispatch.built_variants()]


def before_guard_page(a):
    """A copy of ``a`` whose last byte is the last before a PROT_NONE page."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE
    pages = -(-a.nbytes // page) + 1
    m = mmap.mmap(-1, pages * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    assert libc.mprotect(base + (pages - 1) * page, page, 0) == 0, ctypes.get_errno()
    out = np.frombuffer(m, np.uint8, a.nbytes, (pages - 1) * page - a.nbytes)
    out = out.view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
