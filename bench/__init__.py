"""Benchmarks of opkernels: pytest-benchmark suites and the scripts behind the README numbers.

- ``bench/test_ops.py``: each op, forward and backward, on full-batch MNIST shapes, against
  plain numpy, TensorFlow, PyTorch and a copy of the same bytes (the memory-bandwidth limit).
- ``bench/test_variants.py``: each compiled kernel as built for every CPU level the machine
  runs (baseline, x86-64-v3, x86-64-v4), on one thread.
- ``bench/test_second_layer.py``: the model's second layer, ``relu(h1) @ W2``, forward and
  backward, in one compiled pass or as the compiled relu beside numpy's BLAS.
- ``bench/test_training_step.py``: one full-batch training step of ``pyops.MLP`` per backend,
  beside TensorFlow and PyTorch steps of the same network and the two large GEMMs alone.
- ``bench/time_to_accuracy.py``, ``bench/memory.py``: scripts (minutes), each writing JSON.
- ``bench/report.py``: ``python -m bench.report`` runs the suite and renders the README tables.

The scripts import the *installed* ``pyops``/``kernels`` (the compiled build), never the
source tree: :func:`use_installed_packages` drops the repository root from ``sys.path``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Tuple

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

#: Variables that change how numpy's OpenBLAS runs and may be set on the machine for the tests;
#: benchmarks run without them (``bench.report`` sets ``OPENBLAS_THREAD_TIMEOUT`` again in a
#: second session of its own, labelled so).
UNSET_FOR_BENCHMARKS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_THREAD_TIMEOUT")

#: Rows of the full-batch arrays: MNIST's 60000.  ``OPKERNELS_BENCH_ROWS`` makes them smaller
#: for the untimed CI run (``pytest bench --benchmark-disable``), which checks that every
#: benchmark still runs and computes the right thing; ``python -m bench.report`` refuses it.
ROWS_VARIABLE = "OPKERNELS_BENCH_ROWS"
ROWS = int(os.environ.get(ROWS_VARIABLE) or 60_000)
if ROWS < 1:
    raise ValueError(f"{ROWS_VARIABLE} must be a positive number of rows, got {ROWS}")

#: All cores this process may run on; the thread counts benchmarked are 1 and this.
N_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
THREAD_COUNTS = sorted({1, N_CORES})


def split_impl(impl: str) -> Tuple[str, Optional[int]]:
    """``"cython-2t"`` -> ``("cython", 2)``; ``"tensorflow"`` -> ``("tensorflow", None)``."""
    name, _, suffix = impl.rpartition("-")
    if name and suffix.endswith("t") and suffix[:-1].isdigit():
        return name, int(suffix[:-1])
    return impl, None


def benchmark_env(extra: dict = None) -> dict:
    """The environment for a benchmark subprocess: this one without :data:`UNSET_FOR_BENCHMARKS`."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET_FOR_BENCHMARKS + (ROWS_VARIABLE,)}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.update(extra or {})
    return env


def use_installed_packages() -> None:
    """Remove the repository root from ``sys.path`` so ``import pyops`` finds the installed build.

    ``python -m bench.x`` run from the repository root puts the root first on ``sys.path``,
    where ``pyops`` is the source tree and ``kernels`` has no compiled module.
    """
    root = os.path.realpath(REPO_ROOT)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != root]
    for name in ("pyops", "kernels"):
        mod = sys.modules.get(name)
        if mod is not None and os.path.realpath(getattr(mod, "__file__", "") or "").startswith(root + os.sep):
            raise ImportError(f"{name} was imported from the source tree ({mod.__file__}) before "
                              "use_installed_packages(); import it afterwards")
