"""``pyops``: train and evaluate the notebook's MNIST network from the command line.

Usage::

    pyops train [--recipe {default,notebook}] [--backend {numpy,cython}] [options]
    pyops evaluate model.npz [--data PATH] [--backend {numpy,cython}]
    python -m pyops ...            # the same

Two recipes train the same 785-100-10 network (:class:`pyops.MLP`):

``notebook``
    The original notebook, reproduced: weights from N(0, 1), images ``x / 255.0``,
    float64, full batch (all 60000 images per step), plain gradient descent with
    learning rate 1e-5 on the summed loss's gradient, 50 epochs.
``default``
    The most out of the same architecture: He/Glorot init with a zero bias row,
    the fused softmax-cross-entropy (mean loss) with label smoothing 0.1,
    float32, mini-batches of 128 reshuffled every epoch, Adam, a cosine
    learning-rate decay to 0, decoupled weight decay 0.05 (AdamW), 15 epochs.

Options not given on the command line take the recipe's value.  After every
epoch the test set is evaluated (cheap); ``time_to_97`` is the wall-clock time
since the start of training (evaluations included, data loading excluded) at
the end of the first epoch whose test accuracy is at least 97%.

Threads: ``--threads`` sets the compiled kernels' OpenMP threads (cython
backend).  The matrix products use numpy's BLAS in both backends, whose threads
are set by ``--blas-threads`` or by ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``
before start-up; on the cython backend a large product (the full-batch
recipe's) is instead split over the kernels' threads, each part on one BLAS
thread (see :mod:`kernels._matmul`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from . import __version__
from . import data as _data
from ._blas import get_blas_threads, set_blas_threads
from .backend import BACKENDS, get_backend, get_ops
from .model import MLP, SGD, Adam, ModelFileError, add_bias_column, cosine_lr, test

__all__ = ["main", "build_parser", "RECIPES", "train", "evaluate", "set_blas_threads"]

#: The settings of each recipe; command-line options override them one by one.
RECIPES: Dict[str, Dict[str, Any]] = {
    "default": dict(
        epochs=15, batch_size=128, lr=3e-3, dtype="float32", optimizer="adam",
        schedule="cosine", warmup=0, weight_decay=0.05, label_smoothing=0.1,
        blas_threads=1, loss="xent", init="he",
    ),
    "notebook": dict(
        epochs=50, batch_size=0, lr=1e-5, dtype="float64", optimizer="sgd",
        schedule="constant", warmup=0, weight_decay=0.0, label_smoothing=0.0,
        blas_threads=None, loss="notebook", init="normal",
    ),
}
#: Options a recipe fills in when they are not given.
_RECIPE_KEYS = ("epochs", "batch_size", "lr", "dtype", "optimizer", "schedule", "weight_decay",
                "label_smoothing", "blas_threads")
TARGET_ACCURACY = 0.97
#: Momentum coefficient of ``--optimizer momentum``.
MOMENTUM = 0.9


# ---------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert(text)`` if that works and ``ok`` accepts it, else
    the error ``expected <expected>, got '<text>'``."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_batch_size = _checked(lambda t: 0 if t.strip().lower() == "full" else int(t), lambda v: v >= 0,
                       "a positive integer, 0 or 'full'")
_positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
_non_negative_float = _checked(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
_smoothing = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
_seed = _checked(int, lambda v: v >= 0, "an integer >= 0")


def _output_file(text: str) -> str:
    """An argparse ``type=`` for a file written after training: its folder must exist and be
    writable now, so that a typo fails in a second rather than after the whole run."""
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"folder {folder!r} of {text!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"folder {folder!r} of {text!r} is not writable")
    return text


def _recipe_table() -> str:
    rows = ["recipe defaults (used for options not given):"]
    for name, r in RECIPES.items():
        bs = "full" if r["batch_size"] == 0 else r["batch_size"]
        rows.append(
            f"  {name:9s} epochs={r['epochs']} batch-size={bs} lr={r['lr']:g} dtype={r['dtype']} "
            f"optimizer={r['optimizer']} schedule={r['schedule']} weight-decay={r['weight_decay']:g} "
            f"label-smoothing={r['label_smoothing']:g} blas-threads={r['blas_threads'] or 'unchanged'} "
            f"loss={r['loss']} init={r['init']}"
        )
    return "\n".join(rows)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written; appends ``(default: ...)`` to options that have one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "%(default)" not in text and "default:" not in text
                and action.default is not None and action.default is not False
                and action.default != argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _recipe_default(key: str) -> str:
    """``(default: 12 for recipe default, 50 for notebook)`` for the help of a recipe option."""
    def show(v: Any) -> str:
        if v is None:
            return "unchanged"
        return "full" if key == "batch_size" and v == 0 else f"{v:g}" if isinstance(v, float) else str(v)
    return "(default: " + ", ".join(f"{show(r[key])} for {name}" for name, r in RECIPES.items()) + ")"


def build_parser() -> argparse.ArgumentParser:
    """The ``pyops`` argument parser, with the ``train`` and ``evaluate`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="pyops",
        description="Train and evaluate the notebook's 785-100-10 MNIST network on the "
        "numpy or Cython backend of opkernels.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"opkernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tr = sub.add_parser(
        "train", help="train on MNIST, evaluate on the test set after every epoch",
        description="Train the 785-100-10 network on MNIST. 'notebook' reproduces the original "
        "notebook (N(0,1) weights, full batch, gradient descent with lr 1e-5, 50 epochs); "
        "'default' is a modern recipe for the same network (He init, softmax-cross-entropy with "
        "label smoothing, batches of 128, Adam, cosine decay).",
        epilog=_recipe_table() + "\n\nThreads: --threads sets the compiled kernels' OpenMP threads "
        "(cython backend); the matrix products use numpy's BLAS in both backends, whose threads "
        "--blas-threads sets (numpy's bundled OpenBLAS) or OPENBLAS_NUM_THREADS before start-up. "
        "On the cython backend with 2 or more --threads, large products (full batch) are split "
        "over the kernels' threads instead, each part on one BLAS thread.",
        formatter_class=_Formatter,
    )
    tr.add_argument("--recipe", choices=sorted(RECIPES), default="default", help="training recipe")
    tr.add_argument("--backend", choices=BACKENDS, default=None,
                    help="op backend (default: the active one, $PYOPS_BACKEND or numpy)")
    tr.add_argument("--epochs", type=_positive_int, default=None, help="epochs " + _recipe_default("epochs"))
    tr.add_argument("--batch-size", type=_batch_size, default=None, metavar="N|full",
                    help="batch size; 0 or 'full' for the whole training set " + _recipe_default("batch_size"))
    tr.add_argument("--lr", type=_positive_float, default=None,
                    help="(peak) learning rate " + _recipe_default("lr"))
    tr.add_argument("--dtype", choices=("float32", "float64"), default=None,
                    help="float type of weights and activations " + _recipe_default("dtype"))
    tr.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), default=None,
                    help="update rule " + _recipe_default("optimizer"))
    tr.add_argument("--schedule", choices=("constant", "cosine"), default=None,
                    help="learning-rate schedule over all steps " + _recipe_default("schedule"))
    tr.add_argument("--weight-decay", type=_non_negative_float, default=None,
                    help="decoupled weight decay (Adam) or L2 (SGD) " + _recipe_default("weight_decay"))
    tr.add_argument("--label-smoothing", type=_smoothing, default=None, metavar="EPS",
                    help="train on labels (1 - EPS) * onehot + EPS / 10; the training loss shown "
                    "includes it, the test loss does not " + _recipe_default("label_smoothing"))
    tr.add_argument("--threads", type=_positive_int, default=None,
                    help="OpenMP threads of the cython kernels (pyops.set_num_threads), which "
                    "also run large matrix products; BLAS threads are separate (default: unchanged)")
    tr.add_argument("--blas-threads", type=_positive_int, default=None, metavar="N",
                    help="threads of numpy's OpenBLAS (the matrix products, both backends), set "
                    "at run time; small mini-batch products run faster on one "
                    + _recipe_default("blas_threads"))
    tr.add_argument("--seed", type=_seed, default=0,
                    help="seed of the initialisation and of the shuffling")
    tr.add_argument("--data", metavar="PATH", default=None,
                    help="mnist.npz to use (default: pyops.data.load_mnist's cache or download)")
    tr.add_argument("--save", metavar="PATH", type=_output_file, default=None,
                    help="write the trained model (.npz)")
    tr.add_argument("--log", metavar="PATH", type=_output_file, default=None,
                    help="write a JSON log: config, versions, per-epoch metrics, times")
    tr.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    tr.set_defaults(func=train)

    ev = sub.add_parser(
        "evaluate", help="print the test loss and accuracy of a saved model",
        description="Evaluate a model saved by 'pyops train --save' on the MNIST test set.",
        formatter_class=_Formatter,
    )
    ev.add_argument("model", metavar="MODEL.npz", help="model file written by 'pyops train --save'")
    ev.add_argument("--data", metavar="PATH", default=None,
                    help="mnist.npz to use (default: pyops.data.load_mnist's cache or download)")
    ev.add_argument("--backend", choices=BACKENDS, default=None,
                    help="op backend (default: the active one)")
    ev.set_defaults(func=evaluate)
    return parser


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def resolve_config(args: argparse.Namespace) -> Dict[str, Any]:
    """The recipe's settings, overridden by the options given."""
    cfg = dict(RECIPES[args.recipe], recipe=args.recipe)
    for key in _RECIPE_KEYS:
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    cfg["momentum"] = MOMENTUM if cfg["optimizer"] == "momentum" else 0.0
    cfg.update(
        backend=args.backend or get_backend(), seed=args.seed, threads=args.threads,
        data=args.data,
    )
    return cfg


def _load_data(path: Optional[str], dtype: np.dtype, verbose: bool):
    """MNIST as bias-augmented ``x / 255`` in ``dtype``, one-hot labels and class indices."""
    (x, y), (xt, yt) = _data._load_mnist(path, verbose=verbose, origin="--data")
    d = int(np.prod(np.shape(x)[1:]))
    X = add_bias_column(x, dtype, n_features=d, divide_by=255.0)
    Xt = add_bias_column(xt, dtype, n_features=d, divide_by=255.0)
    y, yt = np.asarray(y).astype(np.intp), np.asarray(yt).astype(np.intp)
    return X, _data.one_hot(y, 10, dtype), y, Xt, _data.one_hot(yt, 10, dtype), d


def _ms(seconds: float) -> str:
    """Milliseconds for a line of output, never with an exponent: whole from 100 ms up, at
    most 3 significant digits from 0.001 ms up (``"1"`` for 1.0), six decimals below."""
    ms = 1e3 * seconds
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 0.001:
        return f"{ms:.3g}"  # no exponent from 0.001 up
    return f"{ms:.6f}"  # below a microsecond: fixed point, not '5e-05'


def _versions(backend: str) -> Dict[str, Any]:
    import tqdm

    info: Dict[str, Any] = {
        "opkernels": __version__, "numpy": np.__version__, "tqdm": tqdm.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "blas_threads_env": {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
                             if k in os.environ},
    }
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = {k: blas.get(k) for k in ("name", "version")}
    except Exception:  # older numpy: not essential
        pass
    info["blas_threads"] = get_blas_threads()
    if backend == "cython":
        import kernels

        info["kernels"] = kernels.build_info()
    return info


def _make_optimizer(cfg: Dict[str, Any], params: np.ndarray, backend: str):
    if cfg["optimizer"] == "adam":
        return Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], backend=backend)
    return SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])


def _say(line: str, quiet: bool) -> None:
    if not quiet:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def train(args: argparse.Namespace) -> int:
    """``pyops train``: run a recipe; print per-epoch lines and a summary."""
    cfg = resolve_config(args)
    ops = get_ops(cfg["backend"])  # ImportError now if the cython backend is not built
    restore = []  # thread settings to put back afterwards (matters when called in-process)
    if cfg["threads"] is not None:
        if ops.backend == "cython":
            from . import get_num_threads, set_num_threads

            restore.append((set_num_threads, get_num_threads()))
            set_num_threads(cfg["threads"])
        else:
            print("pyops train: note: --threads only sets the cython kernels' threads; "
                  "numpy's BLAS threads are set by --blas-threads", file=sys.stderr)
    if cfg["blas_threads"] is not None:
        before = set_blas_threads(cfg["blas_threads"])
        if before is None:
            cfg["blas_threads"] = None
            print("pyops train: note: numpy's BLAS is not a bundled OpenBLAS; --blas-threads "
                  "ignored (set its own thread variable before start-up)", file=sys.stderr)
        else:
            restore.append((set_blas_threads, before))
    try:
        return _train(cfg, ops, args)
    finally:
        for setter, value in reversed(restore):
            setter(value)


def _train(cfg: Dict[str, Any], ops: Any, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    quiet = args.quiet
    dtype = np.dtype(cfg["dtype"])

    t_data = time.perf_counter()
    X, Y, labels, Xt, Yt, n_in = _load_data(cfg["data"], dtype, verbose=not quiet)
    if cfg["label_smoothing"]:
        eps = cfg["label_smoothing"]
        Y = Y * dtype.type(1 - eps) + dtype.type(eps / Y.shape[1])
    data_time = time.perf_counter() - t_data

    init_seq, shuffle_seq = np.random.SeedSequence(cfg["seed"]).spawn(2)
    shuffle_rng = np.random.default_rng(shuffle_seq)
    model = MLP(ops.backend, dtype, loss=cfg["loss"], init=cfg["init"],
                rng=np.random.default_rng(init_seq), n_in=n_in)
    optimizer = _make_optimizer(cfg, model.params, model.backend)

    n = X.shape[0]
    batch = n if cfg["batch_size"] in (0, None) or cfg["batch_size"] >= n else cfg["batch_size"]
    full = batch == n
    steps = math.ceil(n / batch)
    total_steps = cfg["epochs"] * steps
    cfg["steps_per_epoch"] = steps
    # Batch buffers, gathered into with np.take(..., out=) each step (no allocation).
    sizes = sorted({batch, n - (steps - 1) * batch})
    bufs = {s: (np.empty((s, X.shape[1]), dtype), np.empty((s, Y.shape[1]), dtype),
                np.empty(s, np.intp)) for s in sizes}

    def lr_at(step: int) -> float:
        if cfg["schedule"] == "cosine":
            return cosine_lr(cfg["lr"], step, total_steps, cfg["warmup"])
        return cfg["lr"]

    _say(f"pyops train: recipe {cfg['recipe']}, backend {ops.backend}, {dtype.name}, "
         f"{cfg['epochs']} epochs of {steps} step(s) (batch {batch}), {cfg['optimizer']} "
         f"lr {cfg['lr']:g} {cfg['schedule']}, label smoothing {cfg['label_smoothing']:g}, "
         f"seed {cfg['seed']}", quiet)
    history: List[Dict[str, Any]] = []
    time_to_97 = epoch_to_97 = None
    epochs_bar = tqdm(total=cfg["epochs"], desc="train", unit="epoch", disable=quiet or not full,
                      leave=False)
    step = 0
    # Every step's wall time: their median is the speed of the code, which the total (also
    # printed) is not on a machine whose CPU is sometimes taken away for long stalls.
    step_times = np.empty(total_steps)
    start = time.perf_counter()
    for epoch in range(cfg["epochs"]):
        bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="step", leave=False,
                   disable=quiet or full, mininterval=0.2)
        t0 = time.perf_counter()
        perm = None if full else shuffle_rng.permutation(n)
        loss_sum = 0.0
        correct = 0
        for s in range(steps):
            t_step = time.perf_counter()
            if full:
                xb, yb, lb = X, Y, labels
            else:
                idx = perm[s * batch:(s + 1) * batch]
                xb, yb, lb = bufs[len(idx)]
                np.take(X, idx, axis=0, out=xb, mode="clip")
                np.take(Y, idx, axis=0, out=yb, mode="clip")
                np.take(labels, idx, out=lb, mode="clip")
            loss = model.forward(xb, yb)
            correct += int(np.count_nonzero(np.argmax(model.scores(), axis=1) == lb))
            model.backward(yb)
            optimizer.step(model.grads, lr_at(step))
            step_times[step] = time.perf_counter() - t_step
            step += 1
            loss_sum += loss * len(lb)
            if not full:
                bar.update(1)
                if s % 50 == 0:
                    seen = s * batch + len(lb)
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                                    refresh=False)
        epoch_time = time.perf_counter() - t0
        bar.close()
        test_loss, test_acc = test(model, Xt, Yt)
        elapsed = time.perf_counter() - start
        record = dict(epoch=epoch, loss=loss_sum / n, accuracy=correct / n, test_loss=test_loss,
                      test_accuracy=test_acc, time=epoch_time, elapsed=elapsed,
                      lr=lr_at(step - 1))
        history.append(record)
        if time_to_97 is None and test_acc >= TARGET_ACCURACY:
            time_to_97, epoch_to_97 = elapsed, epoch
        if full:
            epochs_bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.4f}",
                                   time=f"{epoch_time:.2f}s", refresh=False)
            epochs_bar.update(1)
        _say(f"epoch {epoch} : loss {record['loss']:.6g} ; accuracy {record['accuracy']:.4f} ; "
             f"test loss {test_loss:.6g} ; test accuracy {test_acc:.4f} ; {epoch_time:.3f} s", quiet)
    epochs_bar.close()
    total_time = time.perf_counter() - start
    train_time = sum(r["time"] for r in history)
    final = history[-1]
    quartiles = [float(q) for q in np.percentile(step_times, [25, 50, 75])]
    median_step = quartiles[1]

    t97 = "not reached" if time_to_97 is None else f"{time_to_97:.2f} s (epoch {epoch_to_97})"
    print(f"train accuracy {history[0]['accuracy']:.4f} at epoch 0, {final['accuracy']:.4f} at "
          f"epoch {final['epoch']}")
    print(f"test loss {final['test_loss']:.6g} ; test accuracy {final['test_accuracy']:.4f}")
    print(f"total {total_time:.2f} s ; {train_time / len(history):.3f} s per epoch ; "
          f"median step {_ms(median_step)} ms ; time_to_97 {t97} ; backend {ops.backend}, "
          f"{dtype.name}")

    result = dict(
        command="train", config=cfg, backend=ops.backend, versions=_versions(ops.backend),
        epochs=history, data_time=data_time, total_time=total_time, train_time=train_time,
        seconds_per_epoch=train_time / len(history), median_step_seconds=median_step,
        step_seconds_quartiles=quartiles,
        test_loss=final["test_loss"],
        test_accuracy=final["test_accuracy"], time_to_97=time_to_97, epoch_to_97=epoch_to_97,
    )
    failed = []  # both are attempted: a failing --log must not lose the model, nor the reverse
    if args.log:
        try:
            with open(args.log, "w") as f:
                json.dump(result, f, indent=2, default=str)
                f.write("\n")
        except OSError as e:
            failed.append(f"--log {args.log}: {e.strerror or e}")
    if args.save:
        try:
            model.save(args.save, recipe=cfg["recipe"], config=cfg, test_accuracy=final["test_accuracy"])
        except OSError as e:
            failed.append(f"--save {args.save}: {e.strerror or e}")
        except BaseException:
            if failed:  # an unexpected error (or Ctrl-C) in save must not hide that --log failed
                print(f"pyops {args.command}: error: {failed[0]}", file=sys.stderr)
            raise
    if failed:
        raise OSError("; ".join(failed))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``pyops evaluate``: test loss and accuracy of a saved model."""
    model = MLP.load(args.model, backend=args.backend)
    (_, _), (xt, yt) = _data._load_mnist(args.data, verbose=True, origin="--data")
    pixels, classes = int(np.prod(np.shape(xt)[1:])), int(np.max(yt)) + 1
    if model.n_in != pixels or model.n_out < classes:
        print(f"pyops evaluate: error: {args.model} holds a {model.n_in}+1-{model.n_hidden}-"
              f"{model.n_out} network; the test set needs {pixels} inputs and {classes} outputs",
              file=sys.stderr)
        return 1
    Xt = add_bias_column(xt, model.dtype, n_features=model.n_in, divide_by=255.0)
    Yt = _data.one_hot(np.asarray(yt).astype(np.intp), model.n_out, model.dtype)
    loss, acc = test(model, Xt, Yt)
    print(f"test loss {loss:.6g} ; test accuracy {acc:.4f} ; backend {model.backend}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pyops`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "backend") and args.backend is None:
            args.backend = get_backend()  # a bad $PYOPS_BACKEND is reported here, not at import
    except (ValueError, ImportError) as e:
        print(f"pyops {args.command}: error: {e}", file=sys.stderr)
        return 1
    try:
        return args.func(args)
    except (ImportError, OSError, _data.MNISTUnavailableError, _data.MNISTIntegrityError,
            ModelFileError) as e:
        print(f"pyops {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\npyops {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
