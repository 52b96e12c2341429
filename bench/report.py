"""Run the benchmark suite and render its results into README.md.

Usage, from the repository root::

    python -m bench.report                    # run bench/ (5-30 min on 2 cores), render, rewrite README
    python -m bench.report --json bench/results/latest.json   # render an existing run only
    python -m bench.report --with-training    # also run bench/memory.py, bench/time_to_accuracy.py
    python -m bench.report -k relu            # a partial run: printed, saved as bench/results/partial.json

The suite runs in one pytest session (every implementation of a table timed in the same
process run), in a subprocess whose environment has ``OPENBLAS_CORETYPE``,
``OPENBLAS_L2_SIZE`` and ``OPENBLAS_THREAD_TIMEOUT`` removed, and writes
``bench/results/latest.json``; a second, short session times the training step again with
``OPENBLAS_THREAD_TIMEOUT=4`` (numpy's BLAS threads sleep at once instead of spinning) into
``bench/results/train_step_blas_timeout.json``, stamped with the date of the first session's
run so that it is rendered only beside that run.  Rendering reads only JSON files:
``latest.json`` (with the machine, versions, BLAS and kernel build recorded by
``bench/conftest.py``), and ``train_step_blas_timeout.json`` / ``memory.json`` /
``time_to_accuracy.json`` if they exist.
Outputs: the section between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` in
README.md, ``bench/results/report.md`` (the same plus the target check) and
``bench/results/speedups.png``.  Times are medians.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from . import RESULTS_DIR, REPO_ROOT, ROWS_VARIABLE, UNSET_FOR_BENCHMARKS, benchmark_env

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
README = REPO_ROOT / "README.md"
DEFAULT_JSON = RESULTS_DIR / "latest.json"
PARTIAL_JSON = RESULTS_DIR / "partial.json"  # a -k run's, not committed
PNG = RESULTS_DIR / "speedups.png"
#: The training step once more, with numpy's OpenBLAS told to put its idle threads to sleep at
#: once (they spin about 0.1 s after every call by default, on the cores the kernels use).
#: A second pytest session: OpenBLAS reads the variable only when numpy loads.
SPIN_ENV = {"OPENBLAS_THREAD_TIMEOUT": "4"}
SPIN_JSON = RESULTS_DIR / "train_step_blas_timeout.json"
SPIN_KEYWORD = "test_train_step and not parts and not tensorflow and not torch"
#: Key of the second session's JSON holding the ``date`` of the first session it accompanies.
SPIN_STAMP = "opkernels_main_run"

#: pytest-benchmark settings of the report's run (kept in the JSON's header too).
PYTEST_BENCHMARK_OPTIONS = [
    "--benchmark-min-rounds=5",
    "--benchmark-max-time=0.5",
    "--benchmark-warmup=on",
    "--benchmark-warmup-iterations=1",
    "--benchmark-sort=name",
    "--benchmark-columns=min,median,iqr,rounds",
]
# Runs pytest with sys.path[0] (the repository root, under `-c`) removed, so the suite imports
# the installed pyops and kernels rather than the source tree.
_PYTEST_RUNNER = "import sys; del sys.path[0]; import pytest; raise SystemExit(pytest.main(sys.argv[1:]))"

OPS = ("relu", "softmax", "log", "xent", "matmul")
DIRECTIONS = ("forward", "backward")
OP_LABEL = {"relu": "relu", "softmax": "softmax", "log": "log", "xent": "softmax-xent", "matmul": "matmul"}
#: A time whose rounds' interquartile range exceeds this fraction of its median is too noisy
#: for a target check (shown as "unclear"), and is marked in the tables (NOISY_MARK in the op
#: tables, "(noisy)" in the training-step table).
NOISY = 0.25
#: ops bound by memory traffic: they are "within 5%" of a peer for the target check
MEMORY_BOUND = {("relu", "forward"), ("relu", "backward"), ("softmax", "backward"),
                ("log", "backward"), ("xent", "backward")}
#: On relu's (60000, 100) arrays (24-48 MB, beyond the caches' reach per core) a kernel that moves
#: the copy's bytes cannot beat the copy by more than this: if it does, the copy's rounds were
#: slowed (a stall), and a "within Nx of copy" check against it is reported as unclear.
COPY_BEATEN_BY_NOISE = 1.1
NOISY_MARK = "†"


# --------------------------------------------------------------------------- running
def run_suite(json_path: Path, extra: List[str], env: Optional[Dict[str, str]] = None) -> int:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", _PYTEST_RUNNER, "bench", "--benchmark-only",
           f"--benchmark-json={json_path}", *PYTEST_BENCHMARK_OPTIONS,
           "-p", "no:randomly", "-q", *extra]
    print("+ env", " ".join(f"-u {v}" for v in UNSET_FOR_BENCHMARKS),
          " ".join(f"{k}={v}" for k, v in (env or {}).items()), " ".join(cmd[:2]), "...",
          " ".join(cmd[3:]), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=REPO_ROOT, env=benchmark_env(env))
    print(f"suite finished in {time.time() - t0:.0f} s with exit code {rc}", flush=True)
    return rc


def run_script(module: str, args: List[str]) -> int:
    cmd = [sys.executable, "-m", module, *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO_ROOT, env=benchmark_env())


# --------------------------------------------------------------------------- loading
class Results:
    """Medians (ms) of one pytest-benchmark JSON, by group and implementation."""

    def __init__(self, doc: Dict[str, Any]) -> None:
        self.doc = doc
        self.machine = doc.get("machine_info", {})
        self.env = self.machine.get("opkernels", {})
        self.median: Dict[str, Dict[str, float]] = {}
        self.iqr: Dict[str, Dict[str, float]] = {}
        self.min: Dict[str, Dict[str, float]] = {}
        self.info: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self.rounds: Dict[str, Dict[str, int]] = {}
        for b in doc.get("benchmarks", []):
            extra = b.get("extra_info", {})
            impl = extra.get("impl") or b.get("param") or b["name"]
            group = b.get("group") or ""
            self.median.setdefault(group, {})[impl] = 1e3 * b["stats"]["median"]
            self.iqr.setdefault(group, {})[impl] = 1e3 * b["stats"]["iqr"]
            self.min.setdefault(group, {})[impl] = 1e3 * b["stats"]["min"]
            self.rounds.setdefault(group, {})[impl] = int(b["stats"]["rounds"])
            self.info[(group, impl)] = extra
        self.cores = int(self.env.get("cores") or 1)

    def get(self, group: str, impl: str) -> Optional[float]:
        return self.median.get(group, {}).get(impl)

    def noisy(self, group: str, impl: str) -> bool:
        """The rounds spread too widely for the median to be trusted: IQR > NOISY x median."""
        t, iqr = self.get(group, impl), self.iqr.get(group, {}).get(impl)
        return t is not None and iqr is not None and iqr > NOISY * t

    def best(self, group: str, impls: List[str]) -> Tuple[Optional[float], Optional[str]]:
        found = [(self.get(group, i), i) for i in impls if self.get(group, i) is not None]
        return min(found) if found else (None, None)

    def noisy_best(self, group: str, impls: List[str]) -> bool:
        """The fastest median of ``impls`` (:meth:`best`) cannot be trusted as the fastest: it is
        noisy, or another of them is noisy with a round faster than it (that one's true median
        may be lower: stalls only add time)."""
        t, chosen = self.best(group, impls)
        if chosen is None:
            return False
        return any(self.noisy(group, i) and (i == chosen or self.min[group][i] < t)
                   for i in impls if self.get(group, i) is not None)

    def threads(self, prefix: str) -> List[str]:
        counts = sorted({1, self.cores})
        return [f"{prefix}-{t}t" for t in counts]

    def family(self, group: str, prefix: str) -> List[str]:
        return [i for i in self.median.get(group, {}) if i.startswith(prefix)]

    @property
    def cython(self) -> str:
        """The cython configuration the speedups are about: all cores (the default)."""
        return f"cython-{self.cores}t"


# --------------------------------------------------------------------------- formatting
def ms(t: Optional[float]) -> str:
    if t is None:
        return "-"
    if t >= 100:
        return f"{t:.0f}"
    if t >= 10:
        return f"{t:.1f}"
    if t >= 1:
        return f"{t:.2f}"
    return f"{t:.3f}"


def ratio(num: Optional[float], den: Optional[float], suffix: str = "x") -> str:
    if num is None or den is None or den == 0:
        return "-"
    r = num / den
    return f"{r:.2f}{suffix}" if r < 10 else f"{r:.1f}{suffix}"


def table(header: List[str], rows: List[List[str]], align: Optional[List[str]] = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _tag(impl: Optional[str], family: str) -> str:
    """``torch-2t`` -> `` (2t)``, for the "faster of 1 thread and all cores" cells."""
    if not impl:
        return ""
    rest = impl[len(family):].lstrip("-")
    return f" ({rest})" if rest else ""


# --------------------------------------------------------------------------- op tables
def op_rows(res: Results, dtype: str) -> Tuple[List[List[str]], List[Dict[str, Any]]]:
    rows, records = [], []
    cy = res.cython
    for op in OPS:
        for direction in DIRECTIONS:
            group = f"{op}-{direction}-{dtype}"
            if group not in res.median:
                continue
            g = lambda impl: res.get(group, impl)  # noqa: E731
            cell = lambda impl: ms(g(impl)) + (NOISY_MARK if res.noisy(group, impl) else "")  # noqa: E731
            t_cy = g(cy)
            tf_t = g("tensorflow")
            th_t, th_i = res.best(group, res.threads("torch"))
            copy_t, copy_i = res.best(group, res.family(group, "copy-limit"))
            peer_t = min([t for t in (tf_t, th_t) if t is not None], default=None)
            rows.append([
                f"{OP_LABEL[op]} {direction}",
                cell("numpy"), cell("best-numpy"), *(cell(i) for i in res.threads("cython")),
                cell("tensorflow"), cell(th_i) + _tag(th_i, "torch"),
                cell(copy_i) + _tag(copy_i, "copy-limit"),
                ratio(g("numpy"), t_cy), ratio(g("best-numpy"), t_cy), ratio(peer_t, t_cy),
                ratio(copy_t, t_cy, ""),
            ])
            cy_best, cy_best_i = res.best(group, res.threads("cython"))
            # which of the record's times rest on noisy rounds
            noisy = {k for k, i in {"cython": cy, "numpy": "numpy", "best_numpy": "best-numpy",
                                    "tensorflow": "tensorflow"}.items() if res.noisy(group, i)}
            noisy |= {k for k, family in {"cython_best": res.threads("cython"), "torch": res.threads("torch"),
                                          "copy": res.family(group, "copy-limit")}.items()
                      if res.noisy_best(group, family)}
            records.append(dict(op=op, direction=direction, dtype=dtype, cython=t_cy, cython_best=cy_best,
                                numpy=g("numpy"), best_numpy=g("best-numpy"),
                                tensorflow=tf_t, torch=th_t,
                                peer=peer_t, copy=copy_t,
                                noisy=noisy))
    return rows, records


def op_tables(res: Results) -> Tuple[str, List[Dict[str, Any]]]:
    out, records = [], []
    cy_cols = [f"cython {i.split('-')[-1]}" for i in res.threads("cython")]
    header = ["op", "numpy", "best numpy", *cy_cols, "tensorflow", "torch",
              "copy limit", "cython vs numpy", "vs best numpy", "vs fastest peer", "limit fraction"]
    for dtype in ("float64", "float32"):
        rows, recs = op_rows(res, dtype)
        if not rows:
            continue
        records += recs
        out.append(f"**{dtype}**, median ms (speedups and limit fraction of `{res.cython}`; "
                   f"{NOISY_MARK}: rounds too spread to trust the median, IQR > {NOISY:.0%} of it):\n")
        out.append(table(header, rows))
        out.append("")
    return "\n".join(out), records



#: The far-apart-logits softmax groups of bench/test_ops.py (its FAR): ``softmax-far-forward-<dtype>``.
FAR_OP = "softmax-far"


def far_table(res: Results) -> str:
    """softmax forward on logits far apart beside the same op on the usual logits, per
    implementation: the time, and how many times the usual time it takes."""
    groups = {dt: (f"{FAR_OP}-forward-{dt}", f"softmax-forward-{dt}") for dt in ("float64", "float32")
              if f"{FAR_OP}-forward-{dt}" in res.median}
    if not groups:
        return ""
    impls = ["numpy", "best-numpy", *res.threads("cython"), "tensorflow", *res.threads("torch")]
    rows = []
    for impl in impls:
        if not any(res.get(far, impl) is not None for far, _ in groups.values()):
            continue
        row = [f"`{impl}`"]
        for far, usual in groups.values():
            mark = NOISY_MARK if res.noisy(far, impl) or res.noisy(usual, impl) else ""
            row += [ms(res.get(far, impl)) + mark, ratio(res.get(far, impl), res.get(usual, impl)) + mark]
        rows.append(row)
    header = ["implementation"] + [h for dt in groups for h in (f"{dt} ms", f"{dt} / usual logits")]
    return table(header, rows)


VARIANT_ORDER = ["baseline", "x86_64_v3", "x86_64_v4"]


#: The "within k x of a copy" targets: (op, direction) -> k.
COPY_TARGETS = {("relu", "forward"): 1.2, ("relu", "backward"): 1.2, ("log", "backward"): 1.3}


PAIRED_SUFFIX = "-paired"
PAIRED_OTHERS = ("copy", "tensorflow", "torch")


def paired(res: Results) -> Dict[Tuple[str, str, str], Dict[str, Dict[str, Any]]]:
    """The ``-paired`` groups (``bench/test_ops.py::test_kernel_paired``): for each op,
    direction and dtype, per ``cython-Nt``: the kernel's median (ms) and, per other
    implementation timed in the same alternating rounds, its median (ms) and the median of the
    per-round ratio kernel / other, with whether each is noisy."""
    out: Dict[Tuple[str, str, str], Dict[str, Dict[str, Any]]] = {}
    for group, impls in res.median.items():
        if not group.endswith(PAIRED_SUFFIX):
            continue
        op, direction, dtype = group[: -len(PAIRED_SUFFIX)].split("-")
        for impl, t in impls.items():
            others = {}
            for name, o in (res.info[(group, impl)].get("paired") or {}).items():
                q = o.get("ratio") or {}
                if o.get("median") and q.get("median"):
                    others[name] = dict(ms=1e3 * o["median"], noisy=o.get("iqr", 0) > NOISY * o["median"],
                                        ratio=q["median"], ratio_noisy=q.get("iqr", 0) > NOISY * q["median"])
            if others:
                out.setdefault((op, direction, dtype), {})[impl] = dict(
                    cython=t, cython_noisy=res.noisy(group, impl), others=others)
    return out


def paired_ratio(pairs: Dict[str, Dict[str, Any]], other: str, impl: str,
                 best: bool) -> Optional[Dict[str, Any]]:
    """The paired record of ``other`` in the rounds of ``impl`` (``cython-Nt``), or with
    ``best`` in the rounds of the faster kernel; None if not timed there."""
    if best and pairs:
        impl = min(pairs, key=lambda i: pairs[i]["cython"])
    p = pairs.get(impl)
    return p["others"].get(other) if p else None


def paired_table(res: Results) -> str:
    pairs = paired(res)
    if not pairs:
        return ""
    names = [n for n in PAIRED_OTHERS if any(n in p["others"] for by in pairs.values() for p in by.values())]
    mark = lambda noisy: NOISY_MARK if noisy else ""  # noqa: E731
    rows = []
    for (op, direction, dtype), by_impl in pairs.items():
        for impl in res.threads("cython"):
            p = by_impl.get(impl)
            if p is None:
                continue
            o = p["others"]
            rows.append([f"{OP_LABEL[op]} {direction}", dtype, impl.split("-")[-1],
                         ms(p["cython"]) + mark(p["cython_noisy"]),
                         *(ms(o[n]["ms"]) + mark(o[n]["noisy"]) if n in o else "-" for n in names),
                         *(f"{o[n]['ratio']:.2f}x" + mark(o[n]["ratio_noisy"]) if n in o else "-"
                           for n in names)])
    header = ["op", "dtype", "threads", "cython", *names, *(f"cython / {n}, per round" for n in names)]
    return table(header, rows, ["---", "---", "---"] + ["---:"] * (len(header) - 3))


def variants_table(res: Results) -> str:
    """Each compiled kernel per CPU variant, one thread (``bench/test_variants.py``)."""
    seen = {i for g, r in res.median.items() if g.startswith("variant-") for i in r}
    variants = [v for v in VARIANT_ORDER if v in seen] + sorted(seen - set(VARIANT_ORDER))
    if not variants:
        return ""
    header = ["kernel"] + [f"{dtype} {v}" for dtype in ("float64", "float32") for v in variants]
    rows = []
    for op in OPS:
        for direction in DIRECTIONS:
            groups = {dtype: f"variant-{op}-{direction}-{dtype}" for dtype in ("float64", "float32")}
            if not any(g in res.median for g in groups.values()):
                continue
            rows.append([f"{OP_LABEL[op]} {direction}"] + [
                ms(res.get(g, v)) + (NOISY_MARK if res.noisy(g, v) else "")
                for g in groups.values() for v in variants])
    return table(header, rows)


def second_layer_table(res: Results) -> str:
    """The model's second layer, forward and backward, in one pass (``cython``) or as relu and
    BLAS apart (``separate``): median ms per implementation, and separate / cython per thread
    count (``bench/test_second_layer.py``)."""
    rows = []
    counts = sorted({1, res.cores})
    for direction in ("forward", "backward"):
        for dtype in ("float64", "float32"):
            group = f"second-layer-{direction}-{dtype}"
            if group not in res.median:
                continue
            impls = ["numpy", *res.threads("separate"), *res.threads("cython")]
            cells = [ms(res.get(group, i)) + (NOISY_MARK if res.noisy(group, i) else "")
                     for i in impls]
            ratios = [ratio(res.get(group, f"separate-{t}t"), res.get(group, f"cython-{t}t"))
                      for t in counts]
            rows.append([f"{direction} {dtype}", *cells, *ratios])
    if not rows:
        return ""
    header = (["pass", "numpy", *[f"separate {t}t" for t in counts],
               *[f"one pass {t}t" for t in counts], *[f"separate / one pass {t}t" for t in counts]])
    return table(header, rows)


# --------------------------------------------------------------------------- training step
TRAIN_ORDER = ["numpy", "cython", "tensorflow", "torch", "gemm-floor", "gemm-split"]


def train_table(res: Results) -> Tuple[str, Dict[str, Any]]:
    groups = {dt: f"train-step-{dt}" for dt in ("float64", "float32") if f"train-step-{dt}" in res.median}
    if not groups:
        return "", {}
    impls: List[str] = []
    for family in TRAIN_ORDER:
        expanded = res.threads(family) if family in ("cython", "torch", "gemm-split") else [family]
        impls += [i for i in expanded if any(res.get(g, i) is not None for g in groups.values())]
    header = ["implementation"]
    for dt in groups:
        header += [f"{dt} ms", f"{dt} IQR ms", f"{dt} / GEMM floor", f"{dt} rest in step ms"]
    rows = []
    for impl in impls:
        row = [f"`{impl}`"]
        for g in groups.values():
            t, floor = res.get(g, impl), res.get(g, "gemm-floor")
            iqr = res.iqr.get(g, {}).get(impl)
            row += [ms(t), ms(iqr) + (" (noisy)" if res.noisy(g, impl) else ""), ratio(t, floor),
                    ms(res.info.get((g, impl), {}).get("rest_ms"))]
        rows.append(row)
    summary = {dt: {i: res.get(g, i) for i in impls} for dt, g in groups.items()}
    summary.update({f"noisy-{dt}": {i for i in impls if res.noisy(g, i)} for dt, g in groups.items()})
    return table(header, rows), summary


def parts_table(res: Results) -> Tuple[str, Dict[str, Tuple[float, bool]]]:
    """The step estimated from short-round parts (``train-step-parts-<dtype>``).

    Returns the table and, per dtype, the estimated ratio of the ``cython-<cores>t`` step to its
    two large GEMMs, ``(rest + gemms) / gemms`` with the GEMMs timed on a slice and scaled,
    and whether either median is noisy.
    """
    groups = {dt: f"train-step-parts-{dt}" for dt in ("float64", "float32")
              if f"train-step-parts-{dt}" in res.median}
    rows, estimate = [], {}
    impls = ["numpy", *res.threads("cython")]
    for dt, g in groups.items():
        mark = lambda i: NOISY_MARK if res.noisy(g, i) else ""  # noqa: E731
        gemm = res.get(g, "gemm-slice")
        scale = res.info.get((g, "gemm-slice"), {}).get("scale")
        gemms = gemm * scale if gemm is not None and scale else None
        rest = {i: res.get(g, f"{i}-without-gemms") for i in impls}
        cy = rest.get(res.cython)
        if gemms and cy is not None:
            estimate[dt] = ((cy + gemms) / gemms,
                            res.noisy(g, "gemm-slice") or res.noisy(g, f"{res.cython}-without-gemms"))
        rows.append([dt, (ms(gemm) + mark("gemm-slice")) if gemm is not None else "-", ms(gemms)]
                    + [ms(rest[i]) + mark(f"{i}-without-gemms") for i in impls]
                    + [ratio(cy + gemms, gemms) if gemms and cy is not None else "-"])
    if not rows:
        return "", {}
    rows_sliced = res.info.get((next(iter(groups.values())), "gemm-slice"), {}).get("rows", "?")
    header = ["dtype", f"GEMMs on {rows_sliced} rows", "scaled to 60000 rows",
              *(f"rest of step, {i}" for i in impls), f"estimated {res.cython} step / GEMMs"]
    return table(header, rows), estimate


def spin_section(path: Path, res: Results) -> str:
    """The training-step table of the second session, run with :data:`SPIN_ENV`, beside ``res``.

    Empty (with a warning saying why) unless ``path`` holds a run stamped with ``res``'s date, its
    environment had :data:`SPIN_ENV` and ``res``'s did not, and it has a training-step table.
    """
    if not path.exists():
        return ""
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"a JSON {type(doc).__name__}, not a pytest-benchmark document")
        spin = Results(doc)
        spin_env, main_env = (spin.env.get("env") or {}), (res.env.get("env") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return _left_out(path, f"it cannot be read ({exc})")
    stamp, date = doc.get(SPIN_STAMP), res.env.get("date")
    if not stamp or not date:
        return _left_out(path, "it or this run has no date to tell which run it belongs to")
    if stamp != date:
        return _left_out(path, f"it belongs to the run of {stamp}, not to this one of {date}")
    for name, value in SPIN_ENV.items():
        if spin_env.get(name) != value:
            return _left_out(path, f"it was not run with {name}={value}")
        if main_env.get(name) == value:
            return _left_out(path, f"this run had {name}={value} too: the two do not differ")
    md, _ = train_table(spin)
    if not md:
        return _left_out(path, "it has no training-step benchmarks")
    setting = " ".join(f"`{k}={v}`" for k, v in SPIN_ENV.items())
    return (f"The same step in a second pytest session with {setting} "
            f"(`{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}`, "
            f"{spin.env.get('date', '?')}): numpy's OpenBLAS then puts its idle threads to sleep "
            "at once instead of letting them spin for about 0.1 s after every call, on the cores "
            "the kernels that follow want. Not the setting of the targets above (OpenBLAS "
            "variables unset), and only the implementations that use numpy's BLAS:\n\n" + md)


def _left_out(path: Path, why: str) -> str:
    print(f"{path.name}: its table is left out: {why}", file=sys.stderr)
    return ""


# --------------------------------------------------------------------------- optional tables
def memory_table(path: Path) -> str:
    if not path.exists():
        return ""
    doc = json.loads(path.read_text())
    rows = [[f"`{r['impl']}`", r["dtype"], f"{r['peak_rss_mb']:.0f}", f"{r['setup_rss_mb']:.0f}",
             f"{r['peak_rss_mb'] - r['setup_rss_mb']:.0f}", str(r["steps"])]
            for r in doc["results"] if "peak_rss_mb" in r]
    text = table(["implementation", "dtype", "peak RSS MB", "RSS before training MB",
                  "added by training MB", "full-batch steps"], rows,
                 ["---", "---", "---:", "---:", "---:", "---:"])
    return (f"Peak resident memory of a full-batch training run, each in its own process "
            f"(`bench/memory.py`, {doc.get('date', '?')}; data: {doc.get('data', 'synthetic')}):\n\n"
            + text)


def accuracy_table(path: Path) -> str:
    if not path.exists():
        return ""
    doc = json.loads(path.read_text())
    rows = []
    for r in doc["results"]:
        reached = r.get("seconds") is not None
        rows.append([f"`{r['impl']}`", r["dtype"], f"{r['seconds']:.1f}" if reached else "not reached",
                     str(r.get("epochs_run", "-")), str(r.get("steps", "-")),
                     f"{100 * r['best_accuracy']:.2f}", f"{r.get('ms_per_step', float('nan')):.2f}"])
    text = table(["implementation", "dtype", f"seconds to {100 * doc['target']:.0f}%", "epochs run",
                  f"steps to {100 * doc['target']:.0f}%", "best test accuracy %",
                  "mean ms per step (whole run)"], rows,
                 ["---", "---", "---:", "---:", "---:", "---:", "---:"])
    return (f"Time to {100 * doc['target']:.0f}% test accuracy on MNIST (`bench/time_to_accuracy.py`, "
            f"{doc.get('date', '?')}), the `pyops train` default recipe in each framework: "
            f"{doc.get('recipe', '')}. Wall time from the start of training to the end of the "
            f"first epoch whose test accuracy reaches the target (the test set is evaluated after "
            f"every epoch, included, as `pyops train` counts it).\n\n" + text)


# --------------------------------------------------------------------------- environment
def environment(res: Results, second_session: bool = False) -> str:
    e = res.env
    v = e.get("versions", {})
    k = e.get("kernels", {})
    blas = e.get("blas", {})
    envvars = e.get("env", {})
    tf_version = v.get("tensorflow") or v.get("tensorflow-cpu")
    blas_env = ", ".join(f"`{n}` {'unset' if not envvars.get(n) else '= ' + repr(envvars[n])}"
                         for n in UNSET_FOR_BENCHMARKS if n in envvars)
    blas_core = blas.get("openblas_core")
    load_start = e.get("load_average_start")
    load_end = e.get("load_average")
    fmt_load = lambda l: "/".join(f"{x:.1f}" for x in l) if l else "?"  # noqa: E731
    opts = " ".join(res.doc.get("opkernels_options", [])) or "see bench/report.py"
    lines = [
        f"- Date: {e.get('date', res.doc.get('datetime', '?'))}; machine: {e.get('cpu_model', '?')}, "
        f"{e.get('cores', '?')} cores; load average (1/5/15 min) {fmt_load(load_start)} at the start, "
        f"{fmt_load(load_end)} at the end.",
        f"- Python {e.get('python', '?')}, numpy {v.get('numpy')}, "
        f"Cython {k.get('cython') or v.get('Cython') or '?'} (the kernels' build), "
        f"TensorFlow {tf_version or 'not installed'}, PyTorch {v.get('torch') or 'not installed'}, "
        f"pytest-benchmark {v.get('pytest-benchmark')}.",
        f"- Kernels: CPU variant `{k.get('variant', '?')}` (built: {', '.join(k.get('built_variants', []))}), "
        f"OpenMP {'on' if k.get('openmp') else 'off'}, vector exp/log (libmvec) "
        f"{'on' if k.get('libmvec') else 'off'}, {k.get('threads', '?')} threads by default"
        + (f", idle OpenMP threads: {k['omp_wait']}" if k.get("omp_wait") else "") + ".",
        f"- numpy's BLAS: {blas.get('name', '?')} {blas.get('version', '')}"
        + (f", core `{blas_core}`, {blas.get('openblas_threads')} threads" if blas_core else "")
        + f"; {blas_env}.",
        "- Medians of pytest-benchmark rounds, the tables of ops, variants and the training step "
        "from one pytest session" + (" (the `" + " ".join(f"{k}={v}" for k, v in SPIN_ENV.items())
                                     + "` table from a second)" if second_session else "")
        + f"; options `{opts}`.",
    ]
    stalls = e.get("stall_fraction") or {}
    if stalls.get("end") is not None:
        pct = lambda f: "?" if f is None else f"{100 * f:.0f}%"  # noqa: E731
        lines.append(
            f"- Machine noise: a fixed pure-Python loop lost {pct(stalls.get('start'))} of its wall "
            f"time to stalls (the CPU taken away) in 2 s at the start of the run and "
            f"{pct(stalls.get('end'))} at the end; about 0% on a quiet machine. Medians of short "
            f"rounds resist such stalls; the long rounds (matmul, training step) are hit most, "
            f"and threaded ones more (a stall on either core holds up the whole call).")
        if max(f for f in stalls.values() if f is not None) > 0.10:
            lines.append("- **This machine was stalling**: read the matmul and training-step times "
                         "(rounds of 0.1-2 s) as unreliable; their spread is in the IQR column. "
                         f"Any median whose rounds spread more than {NOISY:.0%} of it is marked "
                         f"({NOISY_MARK} or \"noisy\"), and a target check that such a time could have "
                         "decided (a \"yes\" against a noisy peer, a \"no\" on a noisy kernel time: "
                         "stalls only add time) is reported as unclear.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- target check
def _times(q: float, limit: float) -> str:
    """``q`` as ``1.12x``; with more decimals (up to 6) where fewer would read as ``limit`` itself."""
    digits = 2
    while q != limit and digits < 6 and f"{q:.{digits}f}" == f"{limit:.{digits}f}":
        digits += 1
    return f"{q:.{digits}f}x"


def targets(records: List[Dict[str, Any]], train: Dict[str, Any], res: Results,
            best: bool = False, estimate: Optional[Dict[str, Tuple[float, bool]]] = None,
            ) -> List[Tuple[str, str, Optional[bool]]]:
    """The project's kernel targets, for ``cython-<cores>t`` or (``best``) the faster thread count.

    Each is ``(name, measured, met)``.  Every check has the form "the kernel's time <= k x
    another time", and the noise on this kind of machine is stalls, which only ever add time.
    So ``met`` is None ("unclear") when noise could have decided the verdict: a "yes" whose
    other time is too noisy (:data:`NOISY`; its true value may be lower), or a "no" whose
    kernel time is (the kernel may be faster), for the per-op checks and the training step
    alike; and for a relu copy check whose copy ran slower than the kernel
    (:data:`COPY_BEATEN_BY_NOISE`).  A time that is the faster of 1 thread and all cores
    (torch, the copy, cython in ``best`` mode) counts as noisy by :meth:`Results.noisy_best`.
    relu's checks against the copy, TensorFlow and PyTorch use the per-round ratios of the
    alternating rounds where they exist (:func:`paired`): unclear if those ratios spread, and
    for the copy also if the kernel beat it by more than :data:`COPY_BEATEN_BY_NOISE`.
    ``estimate`` (dtype -> (ratio, noisy), from :func:`parts_table`) adds the step-to-GEMMs
    ratio estimated from parts: shown, never a verdict (always unclear).
    """
    out: List[Tuple[str, str, Optional[bool]]] = []
    train = {dt: t for dt, t in train.items() if not dt.startswith("noisy-")}
    if best:
        def best_of(r: Dict[str, Any]) -> Dict[str, Any]:
            noisy = (r["noisy"] - {"cython"}) | ({"cython"} if "cython_best" in r["noisy"] else set())
            return dict(r, cython=r["cython_best"], noisy=noisy)

        records = [best_of(r) for r in records]
    by = {(r["op"], r["direction"], r["dtype"]): r for r in records}
    pairs = paired(res)

    def add(name: str, ok: bool, detail: str, noisy: Set[str], other: str, suspect: bool = False) -> None:
        """One check of "cython <= k x other"; ``noisy`` names the noisy ones of the two times."""
        unclear = suspect or (other in noisy if ok else "cython" in noisy)
        out.append((name, detail, None if unclear else ok))

    for dtype in ("float64", "float32"):
        def r(op: str, d: str) -> Dict[str, Any]:
            return by.get((op, d, dtype), {})

        for (op, d), limit in COPY_TARGETS.items():
            x = r(op, d)
            # kernel and copy in alternating rounds, on as many threads: the median of the
            # per-round ratios in res.cython's rounds, or (best) in the faster kernel's
            p = paired_ratio(pairs.get((op, d, dtype), {}), "copy", res.cython, best)
            if p:
                q = p["ratio"]
                # a kernel that moves the copy's bytes cannot beat it by much (see
                # COPY_BEATEN_BY_NOISE): if it does, the copy's rounds are suspect
                beaten = q * COPY_BEATEN_BY_NOISE < 1
                add(f"{op} {d} {dtype} within {limit}x of copy", q <= limit,
                    f"{_times(q, limit)} copy (alternating rounds"
                    + ("; copy slower than the kernel: suspect)" if beaten else ")"),
                    {"cython", "copy"} if p["ratio_noisy"] else set(), "copy", suspect=beaten)
            elif x.get("cython") and x.get("copy"):
                q = x["cython"] / x["copy"]
                slow_copy = op == "relu" and q * COPY_BEATEN_BY_NOISE < 1
                add(f"{op} {d} {dtype} within {limit}x of copy", q <= limit,
                    f"{_times(q, limit)} copy" + (" (copy slower than the kernel: suspect)" if slow_copy else ""),
                    x["noisy"], "copy", suspect=slow_copy)
        x = r("softmax", "backward")
        if x.get("cython") and x.get("torch"):
            q = x["torch"] / x["cython"]
            add(f"softmax backward {dtype} >= 5x faster than torch", q >= 5, f"{q:.1f}x",
                x["noisy"], "torch")
        x = r("log", "forward")
        np_log = x.get("best_numpy")
        if x.get("cython") and np_log:
            add(f"log forward {dtype} faster than np.log", x["cython"] < np_log,
                f"{np_log / x['cython']:.2f}x", x["noisy"], "best_numpy")
        for op in OPS:
            if op == "matmul":
                continue
            for d in DIRECTIONS:
                x = r(op, d)
                if not x.get("cython"):
                    continue
                slack = 1.05 if (op, d) in MEMORY_BOUND else 1.0
                for peer in ("best_numpy", "tensorflow", "torch"):
                    p = paired_ratio(pairs.get((op, d, dtype), {}), peer, res.cython, best)
                    if p:  # timed in alternating rounds with the kernel: their per-round ratio
                        add(f"{op} {d} {dtype} faster than {peer}" + (" (5% slack)" if slack > 1 else ""),
                            p["ratio"] <= slack, f"{1 / p['ratio']:.2f}x (alternating rounds)",
                            {"cython", peer} if p["ratio_noisy"] else set(), peer)
                    elif x.get(peer):
                        q = x[peer] / x["cython"]
                        add(f"{op} {d} {dtype} faster than {peer.replace('_', '-')}"
                            + (" (5% slack)" if slack > 1 else ""), x["cython"] <= slack * x[peer],
                            f"{q:.2f}x", x["noisy"], peer)
    for dtype, t in train.items():
        group = f"train-step-{dtype}"
        cy_impl = res.cython
        if best:
            cy_impl = res.best(group, res.threads("cython"))[1] or cy_impl
        cy, tf_t, floor = t.get(cy_impl), t.get("tensorflow"), t.get("gemm-floor")
        cy_noisy = res.noisy_best(group, res.threads("cython")) if best else res.noisy(group, cy_impl)
        noisy = {i for i in ("tensorflow", "gemm-floor") if res.noisy(group, i)} | ({"cython"} if cy_noisy else set())
        if cy and tf_t:
            add(f"train step {dtype} no slower than TF tf.function", cy <= tf_t, _times(tf_t / cy, 1.0),
                noisy, "tensorflow")
        if cy and floor:
            add(f"train step {dtype} at most 1.15x its two GEMMs", cy <= 1.15 * floor, f"{_times(cy / floor, 1.15)} floor",
                noisy, "gemm-floor")
        # the step's own two products: split over the kernels' threads from two threads on
        own = cy_impl.replace("cython-", "gemm-split-")
        split = t.get(own)
        if cy and split:
            add(f"train step {dtype} at most 1.15x its own two GEMMs (split)", cy <= 1.15 * split,
                f"{_times(cy / split, 1.15)} {own}",
                (noisy - {"gemm-floor"}) | ({own} if res.noisy(group, own) else set()), own)
    for dtype, (q, noisy_part) in (estimate or {}).items():
        if not best:
            out.append((f"train step {dtype} at most 1.15x its two GEMMs, estimated from parts",
                        f"{q:.2f}x (estimate{', noisy' if noisy_part else ''})", None))
    return out


# --------------------------------------------------------------------------- chart
def chart(records: List[Dict[str, Any]], train: Dict[str, Any], res: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    dtypes = [dt for dt in ("float64", "float32") if any(r["dtype"] == dt for r in records)]
    series = [("numpy", "vs numpy backend", "#9e9e9e"), ("best_numpy", "vs best numpy", "#4c72b0"),
              ("peer", "vs fastest of TensorFlow/PyTorch", "#dd8452")]
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes), 6.5), sharey=True, squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        # matmul is BLAS in both backends (split over threads on cython): a few percent, noise
        recs = [r for r in records if r["dtype"] == dtype and r["cython"] and r["op"] != "matmul"]
        labels = [f"{OP_LABEL[r['op']]} {'fwd' if r['direction'] == 'forward' else 'bwd'}" for r in recs]
        values = {key: [(r[key] / r["cython"]) if r.get(key) else np.nan for r in recs] for key, _, _ in series}
        t = train.get(dtype, {})
        if t.get(res.cython) and res.cython not in train.get(f"noisy-{dtype}", set()):
            labels.append("train step")
            values["numpy"].append(t["numpy"] / t[res.cython] if t.get("numpy") else np.nan)
            values["best_numpy"].append(np.nan)
            peers = [x for x in (t.get("tensorflow"), *(t.get(i) for i in res.threads("torch"))) if x]
            values["peer"].append(min(peers) / t[res.cython] if peers else np.nan)
        y = np.arange(len(labels))
        h = 0.8 / len(series)
        for i, (key, label, color) in enumerate(series):  # top to bottom in legend order
            ax.barh(y + (1 - i) * h, values[key], height=h, label=label, color=color)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        finite = [v for vs in values.values() for v in vs if np.isfinite(v) and v > 0]
        lo, hi = min(finite + [1.0]) / 1.3, max(finite + [1.0]) * 1.3
        ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if lo <= t <= hi]
        ax.set_xlim(lo, hi)
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_title(f"{dtype}: speedup of {res.cython} (>1 = cython faster)")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0][0].legend(loc="lower right", fontsize="small")
    fig.suptitle(f"opkernels, {res.env.get('cpu_model', '')}, {res.cores} cores, "
                 f"variant {res.env.get('kernels', {}).get('variant', '?')}", fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- README
def render(res: Results, results_dir: Path, second_session: bool = True) -> Tuple[str, str]:
    """The README section and the target table of ``res``; ``second_session`` adds the table
    of :data:`SPIN_JSON` (in ``results_dir``) if it accompanies ``res``."""
    ops_md, records = op_tables(res)
    train_md, train = train_table(res)
    parts = [
        "<!-- Generated by `python -m bench.report`; edits between the markers are overwritten. -->",
        "",
        "### Ops, full-batch MNIST shapes",
        "",
        "relu on (60000, 100); softmax, log and the fused softmax-cross-entropy on (60000, 10); "
        "matmul (60000, 785) @ (785, 100), backward = both gradients. *numpy*: this package's "
        "numpy backend; *best numpy*: the fastest numpy form we found; torch: the faster of 1 "
        "thread and all cores (marked); *copy limit*: `np.copyto` of the bytes the op reads and "
        "writes (the faster of 1 thread and all cores). Speedups are `time(other) / "
        "time(cython)`; *limit fraction* is `time(copy) / time(cython)`.",
        "",
        ops_md,
    ]
    far_md = far_table(res)
    if far_md:
        parts += [
            "### softmax forward on logits far apart",
            "",
            "The same softmax forward on (60000, 10) logits 60 times a standard normal, about 200 "
            "apart in a row as a notebook-initialized model's on MNIST, where the tables above use "
            "2 times a standard normal. In float32, exp of many of them is then below the "
            "smallest normal number (exp(-87.3)); glibc's vector exp handles such vectors in "
            "scalar code, and the compiled float32 kernels send those lanes to 0 instead "
            "(float64 reaches that range only beyond a spread of 708). The *usual logits* "
            "columns divide this time by the same implementation's in the op table "
            f"({NOISY_MARK}: noisy rounds).",
            "",
            far_md,
            "",
        ]
    paired_md = paired_table(res)
    if paired_md:
        rounds = min(n for g, r in res.rounds.items() if g.endswith(PAIRED_SUFFIX) for n in r.values())
        parts += [
            "### relu against a copy and its peers, in alternating rounds",
            "",
            "relu once more, in rounds in which the copy of its bytes, TensorFlow and PyTorch "
            "(the copy and PyTorch on as many threads) each run once before the kernel "
            f"(`bench/test_ops.py::test_kernel_paired`, {rounds} rounds, median ms). Above, each "
            "implementation repeats on data it has just used, in its own rounds seconds apart, "
            "and between report runs relu's medians there have moved by more than 2x, not all "
            "together. Here every call follows another's memory traffic, so all run under the "
            "same conditions (and can be slower than above); the order of the others rotates "
            "from round to round. *per round* is the median over rounds of the kernel's time "
            "divided by the other's in the same round. The target checks of relu against the "
            "copy, TensorFlow and PyTorch use these ratios: in the rounds of the default thread "
            f"count (`{res.cython}`; the copy and PyTorch on as many threads, TensorFlow on its "
            "own), or of the faster kernel for *faster of 1t/all cores*.",
            "",
            paired_md,
            "",
        ]
    variants_md = variants_table(res)
    if variants_md:
        parts += [
            "### Compiled kernels per CPU variant",
            "",
            "The same kernels as built for each CPU level this machine runs (`bench/test_variants.py`), "
            "one thread, median ms: what a CPU without AVX-512 (`x86_64_v3`) or without AVX2 "
            "(`baseline`) gets. `kernels` loads the last of them here.",
            "",
            variants_md,
            "",
        ]
    second_md = second_layer_table(res)
    if second_md:
        parts += [
            "### The second layer in one pass",
            "",
            "The model's `relu(h1) @ W2` on (60000, 100) x (100, 10), forward (the logits, "
            "`relu(h1)` not kept) and backward from `h1` (the gradient at `h1` and `W2_grad`), "
            "as `pyops.MLP` runs it (`bench/test_second_layer.py`), median ms: *one pass*, the "
            "compiled table's `relu_matmul_forward`/`_backward`; *separate*, the same table with "
            "those kernels off, the compiled relu beside numpy's BLAS (two passes over the rows "
            "forward, writing `relu(h1)`, four backward; what the baseline build runs); *numpy*, "
            "the numpy table. "
            "The thread counts are the kernels'; numpy's BLAS keeps its own in every column "
            f"({NOISY_MARK}: noisy rounds).",
            "",
            second_md,
            "",
        ]
    if train_md:
        parts += [
            "### Training step",
            "",
            "One full-batch step (forward, loss and accuracy, backward for W1 and W2, SGD update) of "
            "the 785-100-10 network on synthetic MNIST-shaped data; *GEMM floor*: `X @ W1` and "
            "`X.T @ G` alone with numpy's BLAS, `W1` and its gradient F-contiguous as the model "
            "keeps them; `gemm-split-<n>t`: the same two products as the `cython-<n>t` step runs "
            "them, `kernels.Matmul` split over n kernel threads with numpy's BLAS held to one (that "
            "step's own GEMMs alone; the one-thread step makes one numpy call, as the floor). "
            "Medians of at least "
            f"{min(n for g, r in res.rounds.items() if g.startswith('train-step') for n in r.values())} "
            "rounds each. *rest in step* (this package's steps only): each step's time less that "
            "of its own two large products, timed inside it, median over the same timed rounds: "
            "the work beside the GEMMs, in the state the GEMMs leave the machine in (for instance "
            "BLAS threads still spinning).",
            "",
            train_md,
            "",
        ]
    spin_md = spin_section(results_dir / SPIN_JSON.name, res) if second_session else ""
    if spin_md:
        parts += [spin_md, ""]
    parts_md, estimate = parts_table(res)
    if parts_md:
        parts += [
            "The same step taken apart, in rounds of milliseconds, whose medians a stalling "
            "machine spoils far less than those of whole steps: *rest of step* is "
            "`train_one_step` at full size with the two large products skipped (their outputs "
            "kept from a real step), and the two products are timed on a slice of `X` and "
            "scaled by rows. Their sum estimates the step; it is an estimate from parts, not a "
            "measurement of it (it leaves out how the parts disturb each other, such as BLAS "
            "threads still spinning when the next kernel starts).",
            "",
            parts_md,
            "",
        ]
    acc = accuracy_table(results_dir / "time_to_accuracy.json")
    if acc:
        parts += ["### Time to accuracy", "", acc, ""]
    mem = memory_table(results_dir / "memory.json")
    if mem:
        parts += ["### Memory", "", mem, ""]
    parts += ["### Where these numbers come from", "", environment(res, second_session=bool(spin_md)), "",
              f"![speedups](bench/results/{PNG.name})", ""]
    section = "\n".join(parts)
    checks = targets(records, train, res, estimate=estimate)
    best = {n: (d, ok) for n, d, ok in targets(records, train, res, best=True)}
    yes = lambda ok: "unclear" if ok is None else "yes" if ok else "**no**"  # noqa: E731
    target_md = table(
        ["target", f"{res.cython}", "met", "faster of 1t/all cores", "met"],
        [[n, d, yes(ok), *((best[n][0], yes(best[n][1])) if n in best else ("-", "-"))]
         for n, d, ok in checks],
        ["---", "---:", "---", "---:", "---"])
    return section, target_md


def write_readme(section: str, readme: Path = README) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} markers; add them where the tables go")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + START + "\n" + section.rstrip() + "\n" + END + tail)


def _tidy_json(path: Path, **extra: Any) -> Dict[str, Any]:
    """Record the options of the run (and ``extra``) in its JSON, and drop every round's time
    (megabytes); returns the document."""
    doc = json.loads(path.read_text())
    doc["opkernels_options"] = PYTEST_BENCHMARK_OPTIONS
    doc.update(extra)
    for b in doc.get("benchmarks", []):  # the stats stay
        b.get("stats", {}).pop("data", None)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def run_second_session(main_doc: Dict[str, Any]) -> bool:
    """Time the training step again with :data:`SPIN_ENV` into :data:`SPIN_JSON`, stamped with the
    date of ``main_doc`` (the first session's run); on failure no file is left."""
    date = (main_doc.get("machine_info") or {}).get("opkernels", {}).get("date")
    if not date:
        print("the first session's JSON has no date: the OPENBLAS_THREAD_TIMEOUT session is "
              "skipped (its table could not be tied to that run)", file=sys.stderr)
        return False
    running = SPIN_JSON.with_name(SPIN_JSON.stem + ".running.json")
    ok = run_suite(running, ["-k", SPIN_KEYWORD], env=SPIN_ENV) == 0
    if ok:
        _tidy_json(running, **{SPIN_STAMP: date})
        running.replace(SPIN_JSON)
    else:
        running.unlink(missing_ok=True)
        print("the OPENBLAS_THREAD_TIMEOUT session failed; its table is left out", file=sys.stderr)
    return ok


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="render this pytest-benchmark JSON instead of running the suite")
    p.add_argument("--with-training", action="store_true",
                   help="also run bench/memory.py and bench/time_to_accuracy.py (minutes)")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    p.add_argument("-k", dest="keyword",
                   help="pytest -k expression: a partial run, for trying things; it writes "
                        f"{PARTIAL_JSON.relative_to(REPO_ROOT)} and prints, leaving the "
                        "committed results and README alone")
    args = p.parse_args(argv)
    if args.keyword is not None and (args.json is not None or args.with_training):
        # a partial run must not touch the committed results: --json renders into report.md
        # and README, --with-training rewrites memory.json and time_to_accuracy.json
        p.error("-k is a partial benchmark run and cannot be combined with --json or --with-training")
    try:
        import matplotlib  # noqa: F401  (the chart; checked before a 30-minute run, not after)
    except ImportError:
        p.error("matplotlib is needed for the chart: pip install \".[bench]\"")

    partial = args.keyword is not None
    json_path = args.json or (PARTIAL_JSON if partial else DEFAULT_JSON)
    if args.json is None:
        extra = ["-k", args.keyword] if args.keyword else []
        rc = run_suite(json_path, extra)
        if rc != 0:
            print(f"the benchmark run failed (exit code {rc}); README left unchanged", file=sys.stderr)
            return rc
        main_doc = _tidy_json(json_path)
        if not partial:
            SPIN_JSON.unlink(missing_ok=True)  # never a second-session table from an older run
            run_second_session(main_doc)
    if args.with_training:
        for module, out in (("bench.memory", "memory.json"), ("bench.time_to_accuracy", "time_to_accuracy.json")):
            if run_script(module, ["--out", str(RESULTS_DIR / out)]) != 0:
                print(f"{module} failed; its table is left out or stale", file=sys.stderr)

    res = Results(json.loads(json_path.read_text()))
    rows = res.env.get("rows", 60_000)
    if rows != 60_000:
        print(f"{json_path} was run on {rows} rows ({ROWS_VARIABLE}), not MNIST's 60000: "
              "its times say nothing about full-batch MNIST; not rendered", file=sys.stderr)
        return 2
    section, target_md = render(res, RESULTS_DIR, second_session=not partial)
    if partial:
        print(section)
        print("\n### Targets\n")
        print(target_md)
        print(f"\na partial run (-k): wrote {json_path.relative_to(REPO_ROOT)} only")
        return 0
    ops_md, records = op_tables(res)
    _, train = train_table(res)
    chart(records, train, res, PNG)
    (RESULTS_DIR / "report.md").write_text(section + "\n### Targets\n\n" + target_md + "\n")
    if not args.no_readme:
        write_readme(section)
    print(section)
    print("\n### Targets\n")
    print(target_md)
    print(f"\nwrote {PNG.relative_to(REPO_ROOT)}, {(RESULTS_DIR / 'report.md').relative_to(REPO_ROOT)}"
          + ("" if args.no_readme else ", README.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
