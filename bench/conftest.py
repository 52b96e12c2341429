"""Fixtures of the benchmark suite, and what each JSON record says about the machine.

Run the suite with ``pytest bench --benchmark-only`` (timed) or ``pytest bench
--benchmark-disable`` (each body once, untimed: the CI check that the benchmarks still run).
``--benchmark-skip`` is in the project's ``addopts``; here ``--benchmark-disable`` lifts it,
so that the untimed run really runs the bodies instead of skipping them.

The ``machine_info`` of ``--benchmark-json`` gets an ``opkernels`` entry: CPU model and cores,
versions, ``kernels.build_info()`` (the CPU variant that ran), numpy's BLAS and the OpenBLAS
core it picked, the OpenBLAS/OpenMP environment variables and the load average.
``bench/report.py`` renders its README section from that record alone.
"""
from __future__ import annotations

import ctypes
import datetime
import importlib.metadata
import os
import platform
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench import N_CORES, ROWS  # noqa: E402

try:  # before any torch import: torch ships a libgomp.so.1 too, and the first one loaded wins
    import kernels  # noqa: E402,F401  (starts libgomp with kernels' spin setting)
except ImportError:  # not built: the cython cases skip and say so
    pass

_ENV_VARS = (
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "PYOPS_CPU_VARIANT", "PYOPS_BACKEND",
)


_LOAD_AT_START = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
_STALLS_AT_START: Optional[float] = None


def stall_fraction(seconds: float = 2.0) -> float:
    """Fraction of wall time lost to stalls while a fixed pure-Python loop runs ``seconds``.

    The loop is cut into slices of a few microseconds; on a quiet machine every slice takes
    about the median time and the fraction is ~0.  On a shared VM whose virtual CPUs are
    throttled or descheduled, slices that straddle a stall take far longer, and the fraction
    says how much of any wall-clock measurement of the same period was not our code running.
    """
    import math
    import time

    slices: List[float] = []
    clock = time.perf_counter
    end = clock() + seconds
    while True:
        t = clock()
        for _ in range(100):
            math.cos(0.5)
        slices.append(clock() - t)
        if t > end:
            break
    slices.sort()
    median = slices[len(slices) // 2]
    return max(0.0, 1.0 - median * len(slices) / sum(slices))


# --------------------------------------------------------------------------- pytest hooks
@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    global _LOAD_AT_START, _STALLS_AT_START
    _LOAD_AT_START = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    bs = getattr(config, "_benchmarksession", None)
    if bs is not None and not bs.disabled and not bs.skip:
        _STALLS_AT_START = stall_fraction()
    # `--benchmark-skip` comes from addopts; an explicit `--benchmark-disable` asks to run the
    # bodies once, so it wins here (this conftest only loads when bench/ is collected).
    if bs is not None and bs.disabled and bs.skip:
        bs.skip = False
    if bs is not None and bs.disabled:
        _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Untimed runs only: let glibc reuse freed memory instead of returning it to the kernel.

    The suite allocates many arrays of 48-377 MB; by default each is a fresh ``mmap`` whose
    pages fault in on first write, which on a small VM costs more than the rest of the
    untimed run.  Timed runs keep the default allocator behaviour that users get.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: Dict[str, Any]) -> None:
    info = environment_info()
    bs = getattr(config, "_benchmarksession", None)
    if bs is not None and not bs.disabled:
        info["stall_fraction"] = {"start": _STALLS_AT_START, "end": stall_fraction()}
    machine_info["opkernels"] = info


# --------------------------------------------------------------------------- environment
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _openblas_libraries() -> List[str]:
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    return sorted(paths)


def _call_first(lib: ctypes.CDLL, names: List[str], restype: Any) -> Any:
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = restype
            value = fn()
            return value.decode() if isinstance(value, bytes) else value
    return None


def blas_info() -> Dict[str, Any]:
    """numpy's BLAS: its build configuration and, for OpenBLAS, the core and threads in use."""
    info: Dict[str, Any] = {}
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info.update(name=deps.get("name"), version=deps.get("version"),
                    configuration=deps.get("openblas configuration"))
    except Exception:  # numpy < 1.25 has no mode="dicts"
        pass
    try:
        from threadpoolctl import threadpool_info  # optional

        info["threadpools"] = [
            {k: p.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "architecture")}
            for p in threadpool_info()
        ]
    except ImportError:
        pass
    for path in _openblas_libraries():  # what threadpoolctl reads, without needing it
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        prefixes = ["openblas", "scipy_openblas"]
        suffixes = ["", "64_", "_64"]
        names = lambda what: [f"{p}_{what}{s}" for p in prefixes for s in suffixes]  # noqa: E731
        core = _call_first(lib, names("get_corename"), ctypes.c_char_p)
        if core is None:
            continue
        info["openblas_core"] = core
        info["openblas_threads"] = _call_first(lib, names("get_num_threads"), ctypes.c_int)
        info["openblas_library"] = os.path.basename(path)
        break
    return info


def environment_info() -> Dict[str, Any]:
    """Machine, versions, kernel build and BLAS of this process, for the benchmark JSON."""
    info: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cores": N_CORES,
        "rows": ROWS,
        "cpu_count": os.cpu_count(),
        "load_average_start": _LOAD_AT_START,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in (
            "opkernels", "numpy", "Cython", "tensorflow", "tensorflow-cpu", "torch", "pytest-benchmark",
        )},
        "env": {k: os.environ.get(k) for k in _ENV_VARS},
        "blas": blas_info(),
    }
    try:
        import kernels

        info["kernels"] = kernels.build_info()
    except ImportError as e:
        info["kernels"] = {"error": str(e)}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = {"mkl": bool(torch.backends.mkl.is_available()),
                         "mkldnn": bool(torch.backends.mkldnn.is_available())}
    return info


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tf():
    """TensorFlow, or a clean skip where it is not installed."""
    return pytest.importorskip("tensorflow", reason="TensorFlow is not installed")


@pytest.fixture(scope="session")
def torch():
    """PyTorch (CPU), or a clean skip where it is not installed."""
    return pytest.importorskip("torch", reason="PyTorch is not installed")


@pytest.fixture
def use_threads() -> Iterator[Callable[[str, int], None]]:
    """``use_threads("cython" | "torch", n)``: that library's thread count for this test only."""
    restore: List[Callable[[], None]] = []

    def set_threads(lib: str, n: int) -> None:
        if lib == "cython":
            import kernels

            previous = kernels.get_num_threads()
            kernels.set_num_threads(n)
            restore.append(lambda: kernels.set_num_threads(previous))
        elif lib == "torch":
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(n)
            restore.append(lambda: torch.set_num_threads(previous))
        else:
            raise ValueError(f"use_threads: unknown library {lib!r}")

    yield set_threads
    for undo in reversed(restore):
        undo()
