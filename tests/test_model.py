"""Tests for :mod:`pyops.model`: the notebook's MLP, its training step, the optimizers.

Everything runs on small generated data; nothing needs MNIST or the network.
"""
from __future__ import annotations

import numpy as np
import pytest

import pyops
from pyops.model import (
    MLP,
    SGD,
    Adam,
    add_bias_column,
    compute_accuracy,
    compute_loss,
    cosine_lr,
    train_one_step,
)

from conftest import BACKENDS
from pyops.backend import get_kernels

DTYPES = [np.float32, np.float64]
LOSSES = ["notebook", "xent"]
# Tolerances between backends / against TensorFlow, per dtype.
TOL = {np.float32: dict(rtol=2e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}

TINY = dict(n_in=6, n_hidden=5, n_out=4)


def _data(n=12, n_in=6, n_out=4, seed=1, dtype=np.float64, images=False):
    rng = np.random.default_rng(seed)
    shape = (n, 2, n_in // 2) if images else (n, n_in)
    x = rng.random(shape).astype(dtype)
    labels = np.arange(n) % n_out
    return x, np.eye(n_out, dtype=dtype)[labels]


def _blobs(n=240, n_in=16, n_out=3, seed=0, dtype=np.float64):
    """Linearly separable clusters with values in [0, 1]."""
    rng = np.random.default_rng(seed)
    centers = rng.random((n_out, n_in))
    labels = rng.integers(0, n_out, n)
    x = np.clip(centers[labels] + 0.05 * rng.standard_normal((n, n_in)), 0, 1).astype(dtype)
    return x, np.eye(n_out, dtype=dtype)[labels]


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", LOSSES)
def test_shapes_and_dtypes_full_size(backend, loss):
    model = MLP(backend, np.float32, loss=loss, seed=0)
    assert model.W1.shape == (785, 100) and model.W2.shape == (100, 10)
    x, y = _data(n=7, n_in=784, n_out=10, dtype=np.float32)
    value = model.forward(x.reshape(7, 28, 28), y)
    assert isinstance(value, float) and np.isfinite(value)
    assert model.h1.shape == model.h1_relu.shape == (7, 100)
    assert model.h2.shape == (7, 10)
    if loss == "notebook":
        assert model.h2_log.shape == (7, 10)
    model.backward(y)
    assert model.W1_grad.shape == (785, 100) and model.W2_grad.shape == (100, 10)
    assert model.h1_grad is None
    for a in (model.h1, model.h2, model.W1, model.W1_grad, model.W2_grad):
        assert a.dtype == np.float32
    assert model.backend == backend


def test_default_backend_is_the_active_one():
    with pyops.use_backend("numpy"):
        assert MLP(seed=0, **TINY).backend == "numpy"
    with pyops.use_backend("cython"):
        model = MLP(seed=0, **TINY)
    assert model.backend == "cython"
    assert type(model.softmax).__module__ == "kernels"


def test_weights_are_views_of_flat_params():
    model = MLP(seed=0, **TINY)
    assert np.shares_memory(model.W1, model.params) and np.shares_memory(model.W2, model.params)
    assert np.shares_memory(model.W1_grad, model.grads)
    new = np.full(model.W1.shape, 0.5)
    model.W1 = new
    assert np.all(model.params[: new.size] == 0.5) and model.W1 is not new
    with pytest.raises(ValueError, match="MLP: W2 must have shape"):
        model.W2 = np.zeros((3, 3))


def test_init_normal_and_he():
    normal = MLP(seed=0)
    assert abs(normal.W1.std() - 1) < 0.02 and abs(normal.W2.std() - 1) < 0.2
    he = MLP(seed=0, init="he")
    assert np.all(he.W1[784] == 0), "He init has a zero bias row"
    assert abs(he.W1[:784].std() - np.sqrt(2 / 784)) < 0.002
    assert abs(he.W2.std() - np.sqrt(2 / 110)) < 0.02


# ----------------------------------------------------------------- bias column / copies


def test_add_bias_column():
    x = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    a = add_bias_column(x, np.float32, divide_by=255.0)
    assert a.shape == (2, 7) and a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(a[:, 6], 1)
    np.testing.assert_array_equal(a[:, :6], (x.reshape(2, 6) / np.float32(255)).astype(np.float32))
    b = add_bias_column(x, np.float64, divide_by=255.0)
    np.testing.assert_array_equal(b[:, :6], x.reshape(2, 6) / 255.0)  # the notebook's x / 255.0
    with pytest.raises(ValueError, match="add_bias_column"):
        add_bias_column(x, n_features=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prepared_input_is_used_without_copy(backend):
    model = MLP(backend, seed=0, **TINY)
    x, y = _data()
    X = model.prepare(x)
    assert X.shape == (12, 7) and np.all(X[:, -1] == 1)
    assert model.prepare(X) is X, "an augmented array of the right dtype is returned as is"
    model.forward(X, y)
    assert model.mul_h1.mem["x"] is X
    model.backward(y)
    assert model.mul_h1.mem["x"] is X


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_images_go_into_a_kept_buffer_whose_bias_column_is_written_once(backend):
    model = MLP(backend, seed=0, **TINY)
    x1, y = _data(images=True)
    x2, _ = _data(images=True, seed=2)
    model.forward(x1, y)
    buf = model.mul_h1.mem["x"]
    np.testing.assert_array_equal(buf[:, :6], x1.reshape(12, 6))
    buf[:, 6] = 2.0  # a sentinel: rebuilding the bias column would reset it to 1
    model.forward(x2, y)
    assert model.mul_h1.mem["x"] is buf
    np.testing.assert_array_equal(buf[:, :6], x2.reshape(12, 6))
    np.testing.assert_array_equal(buf[:, 6], 2.0)


def test_raw_and_prepared_input_give_the_same_result():
    x, y = _data(images=True)
    a, b = MLP(seed=3, **TINY), MLP(seed=3, **TINY)
    assert a.forward(x, y) == b.forward(b.prepare(x), y)
    a.backward(y)
    b.backward(y)
    np.testing.assert_array_equal(a.grads, b.grads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hidden_buffers_are_reused_between_steps(backend):
    model = MLP(backend, seed=0, **TINY)
    X, y = model.prepare(_data()[0]), _data()[1]
    train_one_step(model, X, y, lr=1e-3)
    kept = [model.h1, model.h1_relu, model.h2, model.h2_soft, model.h2_log, model.h2_grad,
            model.h2_soft_grad]
    train_one_step(model, X, y, lr=1e-3)
    now = [model.h1, model.h1_relu, model.h2, model.h2_soft, model.h2_log, model.h2_grad,
           model.h2_soft_grad]
    assert all(a is b for a, b in zip(kept, now))
    assert model.h1_relu_grad is model.h2_grad, "relu backward runs in place"


@pytest.mark.parametrize("backend", BACKENDS)
def test_h1_relu_is_relu_of_the_last_forward(backend):
    """The one-pass kernels do not keep relu(h1) (backward reads h1 again): h1_relu is filled
    when read, from the last forward of whatever batch size, and never before a forward."""
    model = MLP(backend, seed=0, **TINY)
    assert model.h1_relu is None
    x, y = _data()
    model.forward(x, y)
    if not model._kernels.relu_matmul_keeps_h():
        assert model._last._h1_relu is None, "no buffer for relu(h1) until someone reads it"
    first = model.h1_relu
    np.testing.assert_array_equal(first, np.maximum(model.h1, 0))
    assert (model.h1 < 0).any() and (first == 0).any()
    assert model.h1_relu is first  # the same buffer, not recomputed into a new array
    model.forward(-x, y)
    np.testing.assert_array_equal(model.h1_relu, np.maximum(model.h1, 0))
    model.forward(x[:5], y[:5])  # another batch size: its own buffers
    np.testing.assert_array_equal(model.h1_relu, np.maximum(model.h1, 0))
    assert model.h1_relu.shape == (5, TINY["n_hidden"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_w1_is_stored_transposed_in_params(backend):
    """W1 and W1_grad are F-contiguous views of the first block of params / grads, which
    holds W1.T row by row; the gradient lands there without a copy."""
    model = MLP(backend, seed=0, **TINY)
    k = (TINY["n_in"] + 1) * TINY["n_hidden"]
    assert model.W1.flags.f_contiguous and model.W1_grad.flags.f_contiguous
    assert np.shares_memory(model.W1, model.params[:k])
    np.testing.assert_array_equal(model.params[:k], model.W1.T.reshape(-1))
    np.testing.assert_array_equal(model.params[k:], model.W2.reshape(-1))
    x, y = _data()
    model.forward(x, y)
    model.backward(y)
    np.testing.assert_array_equal(model.grads[:k], model.W1_grad.T.reshape(-1))
    X = model.prepare(x)
    g = model.h1_relu_grad
    np.testing.assert_allclose(model.W1_grad, X.T @ g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_allocates_no_hidden_sized_array(backend):
    """Buffers are kept: a step after the first allocates less than half an (N, 100) array
    (numpy's own temporaries, such as a bool mask, are smaller)."""
    import tracemalloc
    model = MLP(backend, seed=0)
    x, y = _data(n=3000, n_in=784, n_out=10, dtype=np.float64)
    X = model.prepare(x)
    train_one_step(model, X, y, lr=1e-3)
    tracemalloc.start()
    try:
        train_one_step(model, X, y, lr=1e-3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3000 * 100 * 8 / 2, peak


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_takes_the_models_layers_as_params(backend):
    """Per-layer params: W1 is F-contiguous (stored transposed); the compiled update runs over
    its memory in order and gives numpy's result."""
    results = []
    for b in (backend, "numpy"):
        model = MLP(b, seed=0, **TINY)
        x, y = _data()
        opt = Adam([model.W1, model.W2], lr=1e-2, weight_decay=0.1, backend=b)
        for _ in range(3):
            model.forward(x, y)
            model.backward(y)
            opt.step([model.W1_grad, model.W2_grad])
        results.append(model.params.copy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-12)
    assert not np.array_equal(results[0], MLP(backend, seed=0, **TINY).params)


def test_input_gradient_is_not_computed(monkeypatch):
    model = MLP("numpy", seed=0, **TINY)
    assert model.mul_h1.input_grad is False
    x, y = _data()
    model.forward(model.prepare(x), y)
    calls = []
    real = np.matmul

    def spy(a, b, *args, **kwargs):
        calls.append((a.shape, b.shape))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(np, "matmul", spy)
    model.backward(y)
    monkeypatch.undo()
    # layer 2: relu(h1)^T G and G W2^T; layer 1: only X^T G (never G W1^T of shape (N, 7)).
    assert calls == [((5, 12), (12, 4)), ((12, 4), (4, 5)), ((7, 12), (12, 5))]
    assert model.h1_grad is None


def test_returned_values_are_fresh():
    model = MLP(seed=0, **TINY)
    x, y = _data()
    loss, acc = train_one_step(model, x, y)
    assert type(loss) is float and type(acc) is float
    p = model.predict(x)
    kept = p.copy()
    model.forward(x[::-1].copy())  # same batch size: the model's buffers are overwritten
    np.testing.assert_array_equal(p, kept)
    assert p.shape == (12,)
    loss2, acc2 = pyops.test(model, x, y)
    assert type(loss2) is float and type(acc2) is float


# ------------------------------------------------------------------------- errors


def test_errors_name_mlp():
    with pytest.raises(TypeError, match="MLP: dtype"):
        MLP(dtype=np.int32)
    with pytest.raises(ValueError, match="MLP: loss"):
        MLP(loss="mse")
    with pytest.raises(ValueError, match="unknown backend"):
        MLP(backend="torch")
    model = MLP(seed=0, **TINY)
    x, y = _data()
    with pytest.raises(RuntimeError, match="MLP.backward called before forward"):
        model.backward(y)
    with pytest.raises(ValueError, match=r"MLP.forward: x must have shape \(N, 6\)"):
        model.forward(np.zeros((3, 5)))
    with pytest.raises(TypeError, match="MLP.forward: x must be float.*255"):
        model.forward(np.zeros((3, 6), np.uint8))
    with pytest.raises(ValueError, match="last column is not all ones"):
        model.forward(np.zeros((3, 7)))
    with pytest.raises(TypeError, match="MLP.forward: the bias-augmented x has dtype float32"):
        model.forward(add_bias_column(x, np.float32))
    with pytest.raises(ValueError, match=r"MLP.forward: y must have shape \(12, 4\)"):
        model.forward(x, y[:5])
    with pytest.raises(TypeError, match="MLP.forward: y must be one-hot float"):
        model.forward(x, np.arange(12))
    model.forward(x)
    with pytest.raises(ValueError, match="MLP.backward: y must have shape"):
        model.backward(np.zeros((12, 3)))


# --------------------------------------------------------------- gradients and backends


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("loss", LOSSES)
def test_numpy_and_cython_backends_agree(dtype, loss):
    x, y = _data(n=64, n_in=784, n_out=10, dtype=dtype)
    models = {b: MLP(b, dtype, loss=loss, init="he", seed=5) for b in ("numpy", "cython")}
    out = {}
    for b, model in models.items():
        X = model.prepare(x)
        first = pyops.test(model, X, y)
        model.backward(y)
        grads = model.grads.copy()
        steps = [train_one_step(model, X, y, lr=1e-3) for _ in range(3)]
        out[b] = first, grads, steps, model.params.copy()
    (f_np, g_np, s_np, p_np), (f_cy, g_cy, s_cy, p_cy) = out["numpy"], out["cython"]
    tol = TOL[dtype]
    np.testing.assert_allclose(f_cy[0], f_np[0], **tol)
    assert f_cy[1] == f_np[1]
    np.testing.assert_allclose(g_cy, g_np, rtol=tol["rtol"], atol=tol["atol"] * 100)
    np.testing.assert_allclose([s[0] for s in s_cy], [s[0] for s in s_np], **tol)
    assert [s[1] for s in s_cy] == [s[1] for s in s_np]
    np.testing.assert_allclose(p_cy, p_np, **tol)


def _loss_of(model, X, y, params):
    saved = model.params.copy()
    model.params[...] = params
    value = model.forward(X, y)
    model.params[...] = saved
    return value


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", LOSSES)
def test_gradient_matches_finite_differences(backend, loss):
    model = MLP(backend, np.float64, loss=loss, init="he", seed=2, **TINY)
    x, y = _data()
    X = model.prepare(x)
    model.forward(X, y)
    model.backward(y)
    analytic = model.grads.copy()
    # "notebook" mode differentiates the summed loss (-y at the log-probabilities).
    scale = X.shape[0] if loss == "notebook" else 1.0
    p0 = model.params.copy()
    numeric = np.empty_like(p0)
    h = 1e-6
    for i in range(p0.size):
        e = np.zeros_like(p0)
        e[i] = h
        numeric[i] = (_loss_of(model, X, y, p0 + e) - _loss_of(model, X, y, p0 - e)) / (2 * h)
    np.testing.assert_allclose(analytic, scale * numeric, rtol=1e-5, atol=1e-7)
    assert np.abs(analytic).max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", LOSSES)
def test_gradients_match_tensorflow(backend, loss):
    tf = pytest.importorskip("tensorflow")
    model = MLP(backend, np.float64, loss=loss, seed=4, **TINY)  # N(0, 1) weights, as the notebook
    x, y = _data(n=9)
    X = model.prepare(x)
    model.forward(X, y)
    model.backward(y)
    W1, W2 = tf.Variable(model.W1.copy()), tf.Variable(model.W2.copy())
    with tf.GradientTape() as tape:
        logits = tf.matmul(tf.nn.relu(tf.matmul(tf.constant(X), W1)), W2)
        if loss == "notebook":  # the notebook's graph: sum of -label * log(softmax + eps)
            target = -tf.reduce_sum(y * tf.math.log(tf.nn.softmax(logits) + 1e-12))
        else:
            target = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(y, logits))
    g1, g2 = tape.gradient(target, [W1, W2])
    np.testing.assert_allclose(model.W1_grad, g1.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.W2_grad, g2.numpy(), rtol=1e-9, atol=1e-12)


def _notebook_reference_step(W1, W2, x, label, lr):
    """The notebook's myModel + train_one_step, written out in plain numpy."""
    x = x.reshape(-1, W1.shape[0] - 1)
    x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    h1 = x @ W1
    h1_relu = np.where(h1 > 0, h1, 0)
    h2 = h1_relu @ W2
    e = np.exp(h2 - h2.max(axis=1, keepdims=True))
    s = e / e.sum(axis=1, keepdims=True)
    log_prob = np.log(s + 1e-12)
    g = -label / (s + 1e-12)
    g = s * (g - np.sum(g * s, axis=1, keepdims=True))
    W2_grad = h1_relu.T @ g
    g = (g @ W2.T) * (h1 > 0)
    W1_grad = x.T @ g
    loss = np.mean(np.sum(-log_prob * label, axis=1))
    acc = np.mean(np.argmax(log_prob, axis=1) == np.argmax(label, axis=1))
    return W1 - lr * W1_grad, W2 - lr * W2_grad, loss, acc


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_one_step_reproduces_the_notebook(backend):
    model = MLP(backend, seed=8, n_in=16, n_hidden=10, n_out=3)
    x, y = _blobs(n=50)
    W1, W2 = model.W1.copy(), model.W2.copy()
    for _ in range(3):
        W1, W2, ref_loss, ref_acc = _notebook_reference_step(W1, W2, x, y, 1e-3)
        loss, acc = train_one_step(model, x, y, lr=1e-3)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        assert acc == ref_acc
        np.testing.assert_allclose(model.W1, W1, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(model.W2, W2, rtol=1e-10, atol=1e-12)


def test_xent_loss_equals_notebook_loss_away_from_underflow():
    x, y = _data()
    a = MLP(seed=1, init="he", **TINY)
    b = MLP(seed=1, init="he", loss="xent", **TINY)
    np.testing.assert_allclose(a.forward(x, y), b.forward(x, y), rtol=1e-9)
    assert a.accuracy(y) == b.accuracy(y)
    a.backward(y)
    b.backward(y)
    np.testing.assert_allclose(a.grads, 12 * b.grads, rtol=1e-7, atol=1e-12)


def test_xent_backward_without_labels_in_forward():
    x, y = _data()
    a = MLP(seed=1, loss="xent", **TINY)
    b = MLP(seed=1, loss="xent", **TINY)
    a.forward(x, y)
    a.backward(y)
    b.forward(x)
    b.backward(y.copy())
    np.testing.assert_array_equal(a.grads, b.grads)


def test_compute_loss_and_accuracy():
    log_prob = np.log(np.array([[0.7, 0.3], [0.4, 0.6]]))
    labels = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert compute_loss(log_prob, labels) == pytest.approx(-(np.log(0.7) + np.log(0.4)) / 2)
    assert compute_accuracy(log_prob, labels) == 0.5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compute_loss_matches_the_notebook_expression(dtype):
    rng = np.random.default_rng(3)
    log_prob = np.log(rng.random((500, 10))).astype(dtype)
    labels = np.eye(10, dtype=dtype)[rng.integers(0, 10, 500)]
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    for rows in (slice(None), slice(None, None, 2)):  # contiguous, and a strided view
        lp, lab = log_prob[rows], labels[rows]
        expected = np.mean(np.sum(-lp.astype(np.float64) * lab, axis=1))
        assert compute_loss(lp, lab) == pytest.approx(expected, rel=rtol)


def test_compute_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="compute_loss: .* same shape"):
        compute_loss(np.zeros((4, 10)), np.zeros((4, 9)))
    with pytest.raises(ValueError, match="compute_loss"):
        compute_loss(np.zeros(10), np.zeros(10))
    # an empty batch: 0.0, as the fused op
    assert compute_loss(np.zeros((0, 10)), np.zeros((0, 10))) == 0.0
    assert pyops.SoftmaxCrossEntropy().forward(np.zeros((0, 10)), np.zeros((0, 10))) == 0.0



def test_compute_accuracy_rejects_mismatched_shapes_and_is_nan_when_empty():
    with pytest.raises(ValueError, match="compute_accuracy: .* same shape"):
        compute_accuracy(np.zeros((4, 10)), np.zeros((4, 9)))
    assert np.isnan(compute_accuracy(np.zeros((0, 10)), np.zeros((0, 10))))
    for table in (get_kernels("numpy"), get_kernels("cython")):
        with pytest.raises(ValueError, match="count_correct: .* same shape"):
            table.count_correct(np.zeros((4, 10)), np.zeros((5, 10)))


def test_both_count_correct_tables_take_any_real_2d_input_alike():
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((10, 37))[:, ::3]          # (10, 13), not contiguous
    labels = np.eye(13, dtype=np.int64)[rng.integers(0, 13, 10)]
    labels[0] = np.eye(13, dtype=np.int64)[int(np.argmax(scores[0]))]  # at least one hit
    want = int(np.sum(np.argmax(scores, 1) == np.argmax(labels, 1)))
    for table in (get_kernels("numpy"), get_kernels("cython")):
        assert table.count_correct(scores, labels) == want
        assert table.count_correct(scores.astype(np.float32), labels.astype(bool)) == want
        with pytest.raises(ValueError, match=r"^count_correct: rows with no columns have no argmax"):
            table.count_correct(np.zeros((2, 0)), np.zeros((2, 0)))
        assert table.count_correct(np.zeros((0, 3)), np.zeros((0, 3))) == 0
        assert table.count_correct(np.zeros((0, 0)), np.zeros((0, 0))) == 0
        with pytest.raises(TypeError, match=r"^count_correct: scores must hold real numbers"):
            table.count_correct(scores.astype(complex), labels)


@pytest.mark.parametrize("loss", ["notebook", "xent"])
def test_accuracy_of_each_backend_is_compute_accuracy(backend, dtype, loss):
    """MLP.accuracy counts with its backend's kernel; the result is numpy's argmax rule."""
    rng = np.random.default_rng(4)
    n = 4000                                     # above the kernels' threading threshold
    x = rng.random((n, 784)).astype(dtype)
    y = np.eye(10, dtype=dtype)[rng.integers(0, 10, n)]
    model = MLP(backend, dtype, loss=loss, seed=2)
    model.forward(x, y)
    other = np.float64 if dtype == np.float32 else np.float32
    for labels in (y, np.repeat(y, 2, axis=0)[::2], np.asfortranarray(y), y.astype(other)):
        acc = model.accuracy(labels)
        assert acc == compute_accuracy(model.scores(), y)
        assert 0.02 < acc < 0.5                  # an untrained model: near chance, not 0 or 1


# ------------------------------------------------------------------------- training


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_adam_training_on_separable_data_reaches_high_accuracy(backend, dtype):
    x, y = _blobs(dtype=dtype)
    model = MLP(backend, dtype, loss="xent", init="he", seed=0, n_in=16, n_hidden=10, n_out=3)
    X = model.prepare(x)
    first, acc0 = pyops.test(model, X, y)
    opt = Adam(model.params, lr=1e-2, backend=backend)
    for _ in range(150):
        model.forward(X, y)
        model.backward(y)
        opt.step(model.grads)
    last, acc = pyops.test(model, X, y)
    assert last < 0.2 * first
    assert acc >= 0.98 > acc0


@pytest.mark.parametrize("backend", BACKENDS)
def test_notebook_gradient_descent_reduces_the_loss(backend):
    x, y = _blobs()
    model = MLP(backend, seed=0, n_in=16, n_hidden=20, n_out=3)
    X = model.prepare(x)
    losses = [train_one_step(model, X, y, lr=1e-3)[0] for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    assert pyops.test(model, X, y)[1] > 0.9


def test_same_seed_gives_an_identical_run():
    x, y = _blobs()

    def run(seed):
        model = MLP(seed=seed, loss="xent", init="he", n_in=16, n_hidden=10, n_out=3)
        opt = Adam(model.params, lr=1e-2)
        losses = []
        for _ in range(5):
            losses.append(model.forward(x, y))
            model.backward(y)
            opt.step(model.grads)
        return losses, model.params.copy()

    a, b, c = run(7), run(7), run(8)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    rng = np.random.default_rng(7)
    assert np.array_equal(MLP(rng=rng, **TINY).params, MLP(seed=7, **TINY).params)
    with pytest.raises(ValueError, match="seed or rng"):
        MLP(seed=1, rng=rng)


def test_save_and_load_round_trip(tmp_path):
    model = MLP(dtype=np.float32, loss="xent", init="he", seed=3, **TINY)
    path = tmp_path / "m.npz"
    model.save(path, note="hi")
    back = MLP.load(path)
    assert back.dtype == np.float32 and back.loss_mode == "xent" and back.n_in == 6
    np.testing.assert_array_equal(back.params, model.params)
    assert back.metadata == {"note": "hi"}
    x, y = _data(dtype=np.float32)
    assert pyops.test(back, x, y) == pyops.test(model, x, y)


# ----------------------------------------------------------------------- optimizers


def test_adam_converges_on_a_quadratic(backend):
    c = np.array([1.0, -2.0, 3.0])
    a = np.array([1.0, 10.0, 100.0])  # badly conditioned
    p = np.zeros(3)
    opt = Adam(p, lr=0.05, backend=backend)
    for _ in range(2000):
        opt.step(2 * a * (p - c))
    np.testing.assert_allclose(p, c, atol=1e-3)
    assert opt.t == 2000


def test_adam_first_step_is_lr_times_sign(backend):
    p = np.array([1.0, -1.0], np.float32)
    Adam(p, lr=0.1, backend=backend).step(np.array([3.0, -0.01], np.float32))
    np.testing.assert_allclose(p, [0.9, -0.9], rtol=1e-5)
    assert p.dtype == np.float32


def test_adam_weight_decay_shrinks_without_gradient(backend):
    p = np.ones(4)
    opt = Adam(p, lr=0.1, weight_decay=0.5, backend=backend)
    opt.step(np.zeros(4))
    np.testing.assert_allclose(p, 0.95)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_moments_never_stay_subnormal(backend, dtype):
    # One gradient, then zeros: m decays by 0.9 a step and, unflushed, would stick at the
    # smallest subnormal (0.9 * it rounds back to it), which makes every later step slow.
    p = np.zeros(3, dtype)
    opt = Adam(p, lr=1e-3, backend=backend)
    tiny = np.finfo(dtype).tiny
    opt.step(np.array([1.0, -1e-3 * np.sqrt(tiny), 0.0], dtype))   # its square is subnormal
    for _ in range(8000):
        opt.step(np.zeros(3, dtype))
        for moment in (opt._m[0], opt._v[0]):
            assert not np.any((moment != 0) & (np.abs(moment) < tiny))
    assert opt._m[0][0] == 0          # decayed all the way to zero, not stuck above it
    assert opt._v[0][1] == 0          # (1 - b2) g^2 was subnormal: flushed at once


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_backends_agree(dtype):
    # 40000 elements: the compiled update runs its threaded path (above 32768 elements) too.
    rng = np.random.default_rng(3)
    shapes = [(200, 200), (7,)]
    init = [rng.standard_normal(sh).astype(dtype) for sh in shapes]
    params = {b: [a.copy() for a in init] for b in ("numpy", "cython")}
    opts = {b: Adam(params[b], lr=0.01, weight_decay=0.1, backend=b) for b in ("numpy", "cython")}
    for step in range(20):
        grads = [rng.standard_normal(sh).astype(dtype) * 10.0 ** -step for sh in shapes]
        grads[0][:50] = 0.0                       # rows without gradient: decaying moments
        for b in ("numpy", "cython"):
            before = [g.copy() for g in grads]
            opts[b].step(grads, lr=0.01 * (1 - step / 20))
            assert all(np.array_equal(g, h) for g, h in zip(grads, before))  # inputs untouched
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(*params.values()):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    for m_a, m_b in zip(opts["numpy"]._m + opts["numpy"]._v, opts["cython"]._m + opts["cython"]._v):
        # near a sign change of m, rounding differences (the C loop may fuse a multiply-add)
        # are large relative to m itself but not to the moment's scale
        np.testing.assert_allclose(m_a, m_b, rtol=tol, atol=tol * np.abs(m_a).max())


def test_adam_rejects_what_it_cannot_update(backend):
    p = np.zeros((4, 3))
    with pytest.raises(TypeError, match=r"Adam.step: a gradient has dtype float32, its parameter float64"):
        Adam(p, backend=backend).step(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"Adam.step: grads must be arrays matching params"):
        Adam(p, backend=backend).step(np.zeros((3, 4)))
    g = np.ones((3, 4)).T                         # any strides are fine for a gradient
    opt = Adam(p, lr=0.1, backend=backend)
    opt.step(g)
    np.testing.assert_allclose(p, -0.1)
    q = np.zeros((3, 4)).T                        # F-contiguous: updated in place on both
    Adam(q, lr=0.1, backend=backend).step(np.ones((4, 3)))
    np.testing.assert_allclose(q, -0.1)
    if backend == "cython":
        with pytest.raises(ValueError, match=r"C- or F-contiguous params.*backend='numpy'"):
            Adam(np.zeros((3, 8))[:, ::2], backend="cython")
    else:
        r = np.zeros((3, 8))[:, ::2]
        Adam(r, lr=0.1, backend="numpy").step(np.ones((3, 4)))
        np.testing.assert_allclose(r, -0.1)


def test_sgd_is_the_notebook_update_and_momentum_converges():
    p = np.array([1.0, 2.0])
    g = np.array([0.5, -0.5])
    SGD(p, lr=0.1).step(g)
    np.testing.assert_array_equal(p, np.array([1.0, 2.0]) - 0.1 * g)
    q = np.array([5.0])
    opt = SGD([q], lr=0.05, momentum=0.9)
    for _ in range(300):
        opt.step([2 * (q - 1)], lr=0.05)
    np.testing.assert_allclose(q, 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="SGD: momentum"):
        SGD(q, momentum=1.0)
    with pytest.raises(ValueError, match="shape"):
        opt.step([np.zeros(2)])


@pytest.mark.parametrize("kwargs, error", [
    (dict(lr=0.0), r"SGD: lr must be finite and > 0, got 0\.0"),
    (dict(lr=float("inf")), r"SGD: lr must be finite and > 0, got inf"),
    (dict(lr=-1), r"SGD: lr must be finite and > 0, got -1"),
    (dict(lr=0.1, weight_decay=float("nan")), r"SGD: weight_decay must be finite and >= 0"),
    (dict(lr=0.1, weight_decay=-0.1), r"SGD: weight_decay must be finite and >= 0"),
])
def test_sgd_rejects_bad_hyperparameters(kwargs, error):
    with pytest.raises(ValueError, match=error):
        SGD(np.zeros(2), **kwargs)


@pytest.mark.parametrize("kwargs, error", [
    (dict(lr=float("nan")), r"Adam: lr must be finite and > 0"),
    (dict(eps=float("inf")), r"Adam: eps must be finite and >= 0, got inf"),
    (dict(eps=-1e-8), r"Adam: eps must be finite and >= 0"),
    (dict(weight_decay=-1.0), r"Adam: weight_decay must be finite and >= 0"),
])
def test_adam_rejects_bad_hyperparameters(backend, kwargs, error):
    with pytest.raises(ValueError, match=error):
        Adam(np.zeros(2), backend=backend, **kwargs)
    with pytest.raises(TypeError, match=r"Adam: eps must be a real number, got 'small'"):
        Adam(np.zeros(2), eps="small", backend=backend)


@pytest.mark.parametrize("make", [lambda v: SGD(np.zeros(2), lr=v), lambda v: Adam(np.zeros(2), lr=v)],
                         ids=["SGD", "Adam"])
@pytest.mark.parametrize("value", [True, "0.1", None, np.array(0.1)], ids=repr)
def test_a_hyperparameter_must_be_a_real_number(make, value):
    with pytest.raises(TypeError, match=r"^(SGD|Adam): lr must be a real number"):
        make(value)


@pytest.mark.parametrize("make, error, message", [
    (lambda: SGD(np.zeros(2), momentum="a"), TypeError, r"^SGD: momentum must be a real number, got 'a'"),
    (lambda: SGD(np.zeros(2), momentum=-0.5), ValueError, r"^SGD: momentum must be finite and >= 0"),
    (lambda: Adam(np.zeros(2), betas="ab"), TypeError, r"^Adam: betas must be a pair of numbers"),
    (lambda: Adam(np.zeros(2), betas=(0.9, 0.99, 0.999)), TypeError, r"^Adam: betas must be a pair"),
    (lambda: Adam(np.zeros(2), betas=0.9), TypeError, r"^Adam: betas must be a pair"),
    (lambda: Adam(np.zeros(2), betas=(0.9, None)), TypeError, r"^Adam: betas\[1\] must be a real number, got None"),
    (lambda: Adam(np.zeros(2), betas=(0.9, 1.0)), ValueError, r"^Adam: betas\[1\] must be in \[0, 1\), got 1.0"),
    (lambda: Adam(np.zeros(2), betas=(-0.1, 0.9)), ValueError, r"^Adam: betas\[0\] must be finite and >= 0"),
    (lambda: Adam(np.zeros(2), betas={0.9: 1, 0.99: 2}), TypeError, r"^Adam: betas must be a pair"),
    (lambda: Adam(np.zeros(2), betas=np.array([0.9, 1.0])), ValueError, r"^Adam: betas\[1\] must be in \[0, 1\), got 1.0$"),
    (lambda: Adam(np.zeros(2), betas=(0.9, 1)), ValueError, r"^Adam: betas\[1\] must be in \[0, 1\), got 1$"),
    (lambda: MLP(seed="a"), TypeError, r"^MLP: seed must be an integer >= 0 or None"),
    (lambda: MLP(seed=-1), ValueError, r"^MLP: seed must be an integer >= 0 or None"),
    (lambda: MLP(seed=True), TypeError, r"^MLP: seed must be an integer >= 0 or None"),
], ids=["sgd-momentum-str", "sgd-momentum-neg", "betas-str", "betas-three", "betas-scalar", "betas-none",
        "betas-one", "betas-negative", "betas-dict", "betas-array-one", "betas-int-one", "seed-str", "seed-neg", "seed-bool"])
def test_other_arguments_are_checked_and_named(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_train_one_step_checks_lr():
    model = MLP(seed=0, n_in=4, n_hidden=3, n_out=2)
    x, y = np.ones((5, 4)), np.eye(2)[[0, 1, 0, 1, 0]]
    before = model.params.copy()
    for bad, error in ((float("nan"), ValueError), (float("inf"), ValueError), (-1e-3, ValueError),
                       (0.0, ValueError), ("a", TypeError)):
        with pytest.raises(error, match=r"^train_one_step: lr must be"):
            train_one_step(model, x, y, lr=bad)
    np.testing.assert_array_equal(model.params, before)  # refused before any step


def test_an_int_beyond_float_range_is_not_finite():
    with pytest.raises(ValueError, match=r"^SGD: lr must be finite and > 0"):
        SGD(np.zeros(2), lr=10 ** 400)


def test_adam_eps_must_fit_the_params_dtype(backend):
    Adam(np.zeros(2), eps=1e300, backend=backend)  # float64: fine
    with pytest.raises(ValueError, match=r"^Adam: eps=1e\+300 overflows float32"):
        Adam([np.zeros(2), np.zeros(2, np.float32)], eps=1e300, backend=backend)


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1), lambda p: Adam(p, lr=0.1, backend="numpy")],
                         ids=["SGD", "Adam"])
def test_a_step_lr_may_be_zero_but_not_negative_or_inf(make):
    p = np.ones(2)
    opt = make(p)
    name = type(opt).__name__
    opt.step(np.ones(2), lr=0.0)  # the end of a cosine schedule
    np.testing.assert_array_equal(p, 1.0)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=rf"^{name}\.step: lr must be finite and >= 0"):
            opt.step(np.ones(2), lr=bad)
    np.testing.assert_array_equal(p, 1.0)


def test_cosine_schedule():
    assert cosine_lr(1.0, 0, 100) == 1.0
    assert cosine_lr(1.0, 50, 100) == pytest.approx(0.5)
    assert cosine_lr(1.0, 100, 100) == pytest.approx(0.0)
    assert cosine_lr(1.0, 0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(1.0, 10, 100, warmup_steps=10) == pytest.approx(1.0)
    lrs = [cosine_lr(2.0, s, 40) for s in range(41)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
