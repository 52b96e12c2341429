"""Every op x backend x dtype against TensorFlow's GradientTape, and the notebook's chain."""
from __future__ import annotations

import numpy as np
import pytest


def tf_value_and_grad(tf, fn, inputs, grad_y):
    """Forward values and the vector-Jacobian products of ``fn`` at ``inputs`` for ``grad_y``."""
    xs = [tf.constant(a) for a in inputs]
    with tf.GradientTape() as tape:
        for x in xs:
            tape.watch(x)
        y = fn(*xs)
    grads = tape.gradient(y, xs, output_gradients=tf.constant(grad_y))
    return y.numpy(), [g.numpy() for g in grads]


def relu_input(rng, shape, dtype):
    """Normal values kept away from the kink at 0, plus exact zeros (gradient 0 there, as TF)."""
    x = rng.normal(size=shape)
    x[np.abs(x) < 1e-3] = 0.5
    x.flat[::7] = 0.0
    return x.astype(dtype)


def check_matmul(tf, op, dtype, tol, rng, n, d, k):
    """``op`` (a Matmul) forward and backward on (n, d) x (d, k) against TensorFlow."""
    x = rng.normal(size=(n, d)).astype(dtype)
    W = rng.normal(size=(d, k)).astype(dtype)
    g = rng.normal(size=(n, k)).astype(dtype)
    y = op.forward(x, W)
    grad_x, grad_W = op.backward(g)
    y_tf, (gx_tf, gW_tf) = tf_value_and_grad(tf, tf.matmul, [x, W], g)
    for got, want in [(y, y_tf), (grad_x, gx_tf), (grad_W, gW_tf)]:
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **tol)


def test_matmul(tf, ops, dtype, tol, rng):
    check_matmul(tf, ops.Matmul(), dtype, tol, rng, 7, 5, 3)


def test_matmul_without_input_grad(tf, ops, dtype, tol, rng):
    x = rng.normal(size=(6, 4)).astype(dtype)
    W = rng.normal(size=(4, 2)).astype(dtype)
    g = rng.normal(size=(6, 2)).astype(dtype)
    op = ops.Matmul(input_grad=False)
    op.forward(x, W)
    grad_x, grad_W = op.backward(g)
    _, (_, gW_tf) = tf_value_and_grad(tf, tf.matmul, [x, W], g)
    assert grad_x is None
    np.testing.assert_allclose(grad_W, gW_tf, **tol)


@pytest.mark.parametrize("n_threads", [2, 3])
def test_matmul_split_over_kernel_threads(tf, dtype, tol, rng, monkeypatch, kernel_threads,
                                          n_threads):
    """kernels.Matmul with every product split over the kernels' threads (forced here; the
    real threshold splits only large ones): rows of x forward, the summed rows for grad_W."""
    import kernels
    from kernels import _matmul
    from pyops import _blas

    if _blas.openblas_thread_functions() is None:
        pytest.skip("numpy's BLAS here is not a bundled OpenBLAS: products are never split")
    monkeypatch.setattr(_matmul, "SPLIT_MIN_MACS", 1)
    kernel_threads(n_threads)
    check_matmul(tf, kernels.Matmul(), dtype, tol, rng, 41, 6, 4)


@pytest.mark.parametrize("shape", [(8, 10), (60, 100), (3, 4, 5)], ids=str)
def test_relu(tf, ops, dtype, tol, rng, shape):
    x = relu_input(rng, shape, dtype)
    g = rng.normal(size=shape).astype(dtype)
    op = ops.Relu()
    y, grad = op.forward(x), op.backward(g)
    y_tf, (g_tf,) = tf_value_and_grad(tf, tf.nn.relu, [x], g)
    assert y.dtype == grad.dtype == dtype
    np.testing.assert_array_equal(y, y_tf)
    np.testing.assert_array_equal(grad, g_tf)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4], ids=lambda s: f"logits*{s:g}")
def test_softmax(tf, ops, dtype, tol, rng, scale):
    x = (rng.normal(size=(17, 10)) * scale).astype(dtype)
    g = rng.normal(size=(17, 10)).astype(dtype)
    op = ops.Softmax()
    s, grad = op.forward(x), op.backward(g)
    s_tf, (g_tf,) = tf_value_and_grad(tf, tf.nn.softmax, [x], g)
    assert np.all(np.isfinite(s)), "softmax overflowed"
    assert s.dtype == grad.dtype == dtype
    np.testing.assert_allclose(s, s_tf, **tol)
    np.testing.assert_allclose(np.sum(s, axis=1), 1, rtol=10 * tol["rtol"])
    np.testing.assert_allclose(grad, g_tf, rtol=tol["rtol"], atol=10 * tol["atol"])


def test_log(tf, ops, dtype, tol, rng):
    x = rng.uniform(0.05, 3.0, size=(9, 10)).astype(dtype)
    g = rng.normal(size=(9, 10)).astype(dtype)
    op = ops.Log()
    y, grad = op.forward(x), op.backward(g)
    # The op is log(x + eps); TensorFlow gets the same eps added so the oracle is exact.
    y_tf, (g_tf,) = tf_value_and_grad(tf, lambda t: tf.math.log(t + op.eps), [x], g)
    assert op.eps == 1e-12
    np.testing.assert_allclose(y, y_tf, **tol)
    np.testing.assert_allclose(grad, g_tf, **tol)


@pytest.mark.parametrize("labels", ["one-hot", "integer"])
def test_softmax_cross_entropy(tf, ops, dtype, tol, rng, labels):
    z = (rng.normal(size=(12, 10)) * 5).astype(dtype)
    classes = rng.integers(0, 10, size=12)
    onehot = np.eye(10, dtype=dtype)[classes]
    op = ops.SoftmaxCrossEntropy()
    loss = op.forward(z, onehot if labels == "one-hot" else classes)
    grad = op.backward()
    zt = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(zt)
        loss_tf = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=zt))
    np.testing.assert_allclose(loss, loss_tf.numpy(), rtol=10 * tol["rtol"])
    np.testing.assert_allclose(grad, tape.gradient(loss_tf, zt).numpy(), rtol=tol["rtol"], atol=tol["atol"])
    assert grad.dtype == dtype


def test_notebook_chain(tf, ops, dtype, rng):
    """matmul -> relu -> matmul -> softmax -> log -> sum(label * log_prob), as the notebook checks."""
    x = rng.normal(size=(5, 6)).astype(dtype)
    W1 = rng.normal(size=(6, 5)).astype(dtype)
    W2 = rng.normal(size=(5, 6)).astype(dtype)
    label = np.eye(6, dtype=dtype)[[1, 0, 3, 5, 0]]

    mul1, relu, mul2, softmax, log = ops.Matmul(), ops.Relu(), ops.Matmul(), ops.Softmax(), ops.Log()
    log_prob = log.forward(softmax.forward(mul2.forward(relu.forward(mul1.forward(x, W1)), W2)))
    loss = np.sum(label * log_prob)
    h2_grad, W2_grad = mul2.backward(softmax.backward(log.backward(label)))
    x_grad, W1_grad = mul1.backward(relu.backward(h2_grad))

    xt, W1t, W2t = (tf.constant(a) for a in (x, W1, W2))
    with tf.GradientTape() as tape:
        tape.watch([xt, W1t, W2t])
        prob = tf.nn.softmax(tf.matmul(tf.nn.relu(tf.matmul(xt, W1t)), W2t))
        loss_tf = tf.reduce_sum(label * tf.math.log(prob + 1e-12))
    want = tape.gradient(loss_tf, [xt, W1t, W2t])
    # Loose in float32: log(s) amplifies the rounding of small probabilities.
    rtol = 2e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(loss, loss_tf.numpy(), rtol=rtol)
    for got, w in zip((x_grad, W1_grad, W2_grad), want):
        np.testing.assert_allclose(got, w.numpy(), rtol=rtol, atol=rtol * np.abs(w.numpy()).max())
