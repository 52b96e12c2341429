"""Peak resident memory (RSS) of a full-batch training run, per implementation.

    python -m bench.memory [--out bench/results/memory.json] [--steps 5] [--only IMPL ...]

Each implementation runs in its own subprocess: it builds synthetic MNIST-shaped data (60000
rows of 784 uniform pixels plus the bias column, one-hot labels), the model, then runs a few
full-batch training steps (the steps of ``bench/test_training_step.py``).  The child reports
its RSS before training (``VmRSS``: interpreter, framework, data and model) and its peak
(``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` where there is no ``/proc``); the
difference is what training adds: activations, gradients, temporaries.  TensorFlow's figure
includes its own copy of the input (``tf.constant``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import REPO_ROOT, RESULTS_DIR, benchmark_env, use_installed_packages  # noqa: E402

IMPLS = (
    ("numpy", "float64"), ("cython", "float64"), ("tensorflow", "float64"), ("torch", "float64"),
    ("numpy", "float32"), ("cython", "float32"), ("tensorflow", "float32"), ("torch", "float32"),
)


def _status_mb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def child(impl: str, dtype: str, steps: int) -> Dict[str, Any]:
    use_installed_packages()
    from bench import test_training_step as ts

    d = ts.data(dtype, reference=False)  # the benchmark's inputs, without its reference step

    if impl in ("numpy", "cython"):
        s = ts.pyops_step(impl, d)
    elif impl == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        s = ts.tensorflow_step(tf, d)
    elif impl == "torch":
        import torch

        s = ts.torch_step(torch, d)
    else:
        raise ValueError(impl)
    setup = _status_mb("VmRSS") or 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        s.step()
    return dict(impl=impl, dtype=dtype, steps=steps, setup_rss_mb=setup, peak_rss_mb=_peak_mb(),
                seconds_per_step=(time.perf_counter() - t0) / steps)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "memory.json")
    p.add_argument("--steps", type=int, default=5, help="full-batch steps per run")
    p.add_argument("--only", nargs="+", help="implementations to run (names as in the table)")
    p.add_argument("--child", nargs=2, metavar=("IMPL", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.steps)))
        return 0

    results = []
    for impl, dtype in IMPLS:
        if args.only and impl not in args.only:
            continue
        print(f"{impl} {dtype} ...", flush=True)
        cmd = [sys.executable, "-m", "bench.memory", "--child", impl, dtype, "--steps", str(args.steps)]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=benchmark_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            results.append(dict(impl=impl, dtype=dtype, error=proc.stderr[-500:]))
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    doc = dict(date=datetime.date.today().isoformat(), steps=args.steps,
               data="synthetic, 60000 x (784 + bias column), one-hot labels", results=results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{'implementation':16s} {'dtype':8s} {'peak MB':>8s} {'setup MB':>9s} {'added MB':>9s}")
    for r in results:
        if "peak_rss_mb" in r:
            print(f"{r['impl']:16s} {r['dtype']:8s} {r['peak_rss_mb']:8.0f} {r['setup_rss_mb']:9.0f} "
                  f"{r['peak_rss_mb'] - r['setup_rss_mb']:9.0f}")
        else:
            print(f"{r['impl']:16s} {r['dtype']:8s} failed")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
