"""Time to 97% test accuracy on MNIST: the pyops CLI's default recipe against PyTorch and Keras.

    python -m bench.time_to_accuracy [--out bench/results/time_to_accuracy.json] [--only NAME ...]

Each run is its own subprocess (so one framework's threads and memory never touch another's):

``pyops-numpy``, ``pyops-cython``
    ``python -m pyops train --backend B --quiet --log ...``: the CLI's default recipe as it is
    (``pyops.cli.RECIPES["default"]``), and its own ``time_to_97``.
``torch``, ``keras``
    The same network and recipe, read from ``pyops.cli.RECIPES["default"]``: 784-100-10 with a
    bias on the first layer only, He-normal first layer (zero bias) and Glorot-normal second,
    float32, batches of 128 reshuffled each epoch, AdamW (Adam with decoupled weight decay) with
    a cosine decay of the learning rate to 0 over all steps, cross-entropy with label smoothing.
    Keras trains with ``model.fit``; PyTorch with a plain loop.  Both on one thread, like
    pyops (whose recipe sets numpy's BLAS to one thread; its kernels run small batches on one).

The clock is the CLI's: wall time from the start of training to the end of the first epoch
whose test accuracy (evaluated after every epoch, evaluation included) is at least 97%; data
loading is excluded.  Every run trains the recipe's full number of epochs and reports its final
test accuracy too.  Prints a table and writes JSON (read by ``python -m bench.report``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import REPO_ROOT, RESULTS_DIR, benchmark_env, use_installed_packages  # noqa: E402

TARGET = 0.97
#: Threads of PyTorch and TensorFlow (intra-op): one, like pyops, whose BLAS the default recipe
#: sets to one thread and whose kernels run batches of 128 x 100 on one thread.
THREADS = 1
IMPLS = ("pyops-numpy", "pyops-cython", "torch", "keras")


def recipe(epochs: Optional[int] = None) -> Dict[str, Any]:
    use_installed_packages()
    from pyops.cli import RECIPES

    r = dict(RECIPES["default"])
    if epochs:
        r["epochs"] = epochs
    return r


def _mnist(dtype: str):
    use_installed_packages()
    import numpy as np
    from pyops import data

    (x, y), (xt, yt) = data.load_mnist(verbose=False)
    X = (np.asarray(x).reshape(len(x), -1) / 255.0).astype(dtype)
    Xt = (np.asarray(xt).reshape(len(xt), -1) / 255.0).astype(dtype)
    return X, np.asarray(y).astype(np.int64), Xt, np.asarray(yt).astype(np.int64)


def _cosine(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / total))


def _summary(history: List[Dict[str, float]], n_steps: int) -> Dict[str, Any]:
    reached = [h for h in history if h["test_accuracy"] >= TARGET]
    train_time = sum(h["time"] for h in history)
    return dict(
        seconds=reached[0]["elapsed"] if reached else None,
        epoch=reached[0]["epoch"] if reached else None,
        epochs_run=len(history),
        steps=(reached[0]["epoch"] + 1) * n_steps if reached else None,
        best_accuracy=max(h["test_accuracy"] for h in history),
        final_accuracy=history[-1]["test_accuracy"],
        ms_per_step=1e3 * train_time / (len(history) * n_steps),
        history=history,
    )


# --------------------------------------------------------------------------- children
def run_pyops(backend: str, epochs: Optional[int]) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.json"
        cmd = [sys.executable, "-m", "pyops", "train", "--backend", backend, "--quiet", "--log", str(log)]
        cmd += ["--epochs", str(epochs)] if epochs else []
        # from a neutral directory: the installed pyops, never the source tree
        subprocess.run(cmd, check=True, cwd=tmp, env=benchmark_env(), stdout=subprocess.DEVNULL)
        doc = json.loads(log.read_text())
    cfg = doc["config"]
    history = [dict(epoch=e["epoch"], test_accuracy=e["test_accuracy"], time=e["time"],
                    elapsed=e["elapsed"]) for e in doc["epochs"]]
    out = _summary(history, cfg["steps_per_epoch"])
    if doc.get("time_to_97") is not None:  # the CLI's own figure, same definition
        out["seconds"] = doc["time_to_97"]
    out.update(dtype=cfg["dtype"], config={k: cfg[k] for k in cfg if k != "data"},
               threads=doc.get("versions", {}).get("kernels", {}).get("threads"))
    return out


def run_torch(r: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    X, y, Xt, yt = _mnist(r["dtype"])
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    X, y, Xt, yt = map(torch.from_numpy, (X, y, Xt, yt))
    model = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10, bias=False))
    with torch.no_grad():
        torch.nn.init.normal_(model[0].weight, std=math.sqrt(2.0 / 784))
        model[0].bias.zero_()
        torch.nn.init.normal_(model[2].weight, std=math.sqrt(2.0 / 110))
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=r["label_smoothing"])
    n, bs = X.shape[0], r["batch_size"]
    steps = math.ceil(n / bs)
    total = r["epochs"] * steps
    g = torch.Generator().manual_seed(0)
    history, step, start = [], 0, time.perf_counter()
    for epoch in range(r["epochs"]):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=g)
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            for group in opt.param_groups:
                group["lr"] = _cosine(r["lr"], step, total)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
            step += 1
        epoch_time = time.perf_counter() - t0
        with torch.no_grad():
            acc = float((model(Xt).argmax(1) == yt).float().mean())
        history.append(dict(epoch=epoch, test_accuracy=acc, time=epoch_time,
                            elapsed=time.perf_counter() - start))
    out = _summary(history, steps)
    out.update(dtype=r["dtype"], threads=torch.get_num_threads(), version=torch.__version__)
    return out


def run_keras(r: Dict[str, Any]) -> Dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)

    X, y, Xt, yt = _mnist(r["dtype"])
    keras.utils.set_random_seed(0)
    keras.backend.set_floatx(r["dtype"])
    Y = np.eye(10, dtype=r["dtype"])[y]
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(100, activation="relu", kernel_initializer=keras.initializers.HeNormal(0)),
        keras.layers.Dense(10, use_bias=False, kernel_initializer=keras.initializers.GlorotNormal(0)),
    ])
    steps = math.ceil(X.shape[0] / r["batch_size"])
    schedule = keras.optimizers.schedules.CosineDecay(r["lr"], decay_steps=r["epochs"] * steps)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=r["weight_decay"]),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=r["label_smoothing"]),
    )
    history: List[Dict[str, float]] = []

    class EvalEachEpoch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_time = time.perf_counter() - self.t0
            scores = self.model.predict(Xt, batch_size=10_000, verbose=0)
            acc = float(np.mean(np.argmax(scores, axis=1) == yt))
            history.append(dict(epoch=epoch, test_accuracy=acc, time=epoch_time,
                                elapsed=time.perf_counter() - self.start))

    model.fit(X, Y, batch_size=r["batch_size"], epochs=r["epochs"], shuffle=True, verbose=0,
              callbacks=[EvalEachEpoch()])
    out = _summary(history, steps)
    out.update(dtype=r["dtype"], threads=THREADS, version=keras.__version__)
    return out


def child(impl: str, epochs: Optional[int]) -> Dict[str, Any]:
    use_installed_packages()
    if impl.startswith("pyops-"):
        return run_pyops(impl.split("-", 1)[1], epochs)
    r = recipe(epochs)
    return run_torch(r) if impl == "torch" else run_keras(r)


# --------------------------------------------------------------------------- parent
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.time_to_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "time_to_accuracy.json")
    p.add_argument("--only", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--epochs", type=int, help="train this many epochs instead of the recipe's (for trying)")
    p.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.epochs)))
        return 0

    r = recipe(args.epochs)
    results = []
    for impl in args.only:
        print(f"training {impl} ...", flush=True)
        t0 = time.time()
        cmd = [sys.executable, "-m", "bench.time_to_accuracy", "--child", impl]
        cmd += ["--epochs", str(args.epochs)] if args.epochs else []
        proc = subprocess.run(cmd,
                              cwd=REPO_ROOT, env=benchmark_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            results.append(dict(impl=impl, dtype=r["dtype"], error=proc.stderr[-500:], seconds=None,
                                best_accuracy=float("nan")))
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["impl"] = impl
        res["wall_seconds"] = time.time() - t0
        results.append(res)

    recipe_text = (f"{r['epochs']} epochs, batch {r['batch_size']}, {r['dtype']}, "
                   f"{'AdamW' if r['weight_decay'] else 'Adam'} lr {r['lr']:g} ({r['schedule']} decay, "
                   f"weight decay {r['weight_decay']:g}), label smoothing {r['label_smoothing']:g}, "
                   f"{r['init']} init")
    doc = dict(target=TARGET, date=datetime.date.today().isoformat(), recipe=recipe_text,
               eval_every="epoch", config=r, results=results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\ntime to {100 * TARGET:.0f}% test accuracy ({recipe_text}):")
    print(f"{'implementation':14s} {'dtype':8s} {'seconds':>8s} {'epoch':>6s} {'best acc':>9s} {'ms/step':>8s}")
    for res in results:
        sec = "-" if res.get("seconds") is None else f"{res['seconds']:.1f}"
        ep = "-" if res.get("epoch") is None else str(res["epoch"])
        print(f"{res['impl']:14s} {res.get('dtype', '?'):8s} {sec:>8s} {ep:>6s} "
              f"{100 * res.get('best_accuracy', float('nan')):9.2f} {res.get('ms_per_step', float('nan')):8.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
