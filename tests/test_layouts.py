"""Strides, order, read-only, empty batches, NaN, out= and input immutability."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import TOL


def run_all(ops, x, g):
    """Forward and backward of every one-input op on (N, c) input x and gradient g."""
    results = {}
    for name in ("Relu", "Softmax", "Log"):
        op = getattr(ops, name)()
        xin = np.abs(x) if name == "Log" else x
        results[name] = (op.forward(xin), op.backward(g))
    mm = ops.Matmul()
    W = np.ascontiguousarray(x[:3].T)
    y = mm.forward(x, W)
    results["Matmul"] = (y, mm.backward(g[:, :3]))
    return results


def layouts(a):
    """The same values in other memory layouts."""
    f = np.asfortranarray(a)
    wide = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
    wide[:, ::2] = a
    t = np.ascontiguousarray(a.T).T
    ro = a.copy()
    ro.flags.writeable = False
    return {"fortran": f, "strided": wide[:, ::2], "transposed": t, "read-only": ro}


@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed", "read-only"])
def test_layouts_give_same_results(ops, dtype, layout, rng):
    x = rng.normal(size=(40, 7)).astype(dtype)
    g = rng.normal(size=(40, 7)).astype(dtype)
    want = run_all(ops, x, g)
    got = run_all(ops, layouts(x)[layout], layouts(g)[layout])
    for name in want:
        for w, v in zip(want[name], got[name]):
            if isinstance(w, tuple):
                for a, b in zip(w, v):
                    np.testing.assert_allclose(b, a, **TOL[dtype])
            else:
                np.testing.assert_allclose(v, w, **TOL[dtype], err_msg=name)


def test_inputs_are_not_modified(ops, dtype, rng):
    x = rng.normal(size=(30, 10)).astype(dtype)
    g = rng.normal(size=(30, 10)).astype(dtype)
    x0, g0 = x.copy(), g.copy()
    run_all(ops, x, g)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(g, g0)


@pytest.mark.parametrize("n,c", [(0, 10), (0, 0), (5, 0)])
def test_empty(ops, dtype, n, c):
    x = np.ones((n, c), dtype)
    for name in ("Relu", "Softmax", "Log"):
        op = getattr(ops, name)()
        y = op.forward(x)
        assert y.shape == (n, c) and y.dtype == dtype
        assert op.backward(np.ones((n, c), dtype)).shape == (n, c)
    mm = ops.Matmul()
    assert mm.forward(x, np.ones((c, 4), dtype)).shape == (n, 4)
    gx, gW = mm.backward(np.ones((n, 4), dtype))
    assert gx.shape == (n, c)
    np.testing.assert_array_equal(gW, np.zeros((c, 4)))


def test_zero_dimensional_and_3d_elementwise(ops, dtype):
    for shape in [(), (2, 3, 4)]:
        x = np.full(shape, 2.0, dtype)
        for name in ("Relu", "Log"):
            op = getattr(ops, name)()
            y = op.forward(x)
            assert y.shape == shape and y.dtype == dtype
            assert op.backward(np.ones(shape, dtype)).shape == shape


def test_nan_propagates(ops, dtype):
    x = np.array([[np.nan, -1.0, 2.0], [0.5, 1.0, 1.5]], dtype)
    assert np.isnan(ops.Relu().forward(x)[0, 0])
    assert np.isnan(ops.Log().forward(np.abs(x))[0, 0])
    s = ops.Softmax().forward(x)
    assert np.isnan(s[0, 0])
    np.testing.assert_allclose(s[1], np.exp(x[1]) / np.exp(x[1]).sum(), **TOL[dtype])
    relu = ops.Relu()
    relu.forward(np.array([-1.0, 0.0, 1.0], dtype))
    # A product, as TensorFlow's ReluGrad: NaN in grad_y stays NaN where x <= 0.
    assert np.isnan(relu.backward(np.full(3, np.nan, dtype))).all()


def test_out_is_filled_and_returned(ops, dtype, rng):
    x = rng.normal(size=(20, 10)).astype(dtype)
    for name in ("Relu", "Softmax", "Log"):
        want_op, op = getattr(ops, name)(), getattr(ops, name)()
        xin = np.abs(x)
        out = np.empty_like(x)
        assert op.forward(xin, out=out) is out
        np.testing.assert_array_equal(out, want_op.forward(xin))
        gout = np.empty_like(x)
        assert op.backward(x, out=gout) is gout
        np.testing.assert_array_equal(gout, want_op.backward(x))
    mm = ops.Matmul()
    y = np.empty((20, 3), dtype)
    assert mm.forward(x, x[:3].T.copy(), out=y) is y
    gx, gW = np.empty_like(x), np.empty((10, 3), dtype)
    res = mm.backward(np.ones((20, 3), dtype), out=(gx, gW))
    assert res[0] is gx and res[1] is gW


def test_matmul_fills_c_or_f_contiguous_out_alike(ops, dtype, rng):
    """BLAS writes either layout, so Matmul takes both (the MLP keeps W1_grad F-contiguous);
    the values are those of a C-contiguous out, and other layouts are refused."""
    x, W = rng.normal(size=(30, 8)).astype(dtype), rng.normal(size=(8, 5)).astype(dtype)
    g = rng.normal(size=(30, 5)).astype(dtype)
    mm = ops.Matmul()
    want_y = mm.forward(x, W)
    want_gx, want_gW = mm.backward(g)
    y, gx, gW = (np.empty(a.shape[::-1], dtype).T for a in (want_y, want_gx, want_gW))
    assert y.flags.f_contiguous and not y.flags.c_contiguous
    assert mm.forward(x, W, out=y) is y
    assert mm.backward(g, out=(gx, gW)) == (gx, gW)
    for got, want in ((y, want_y), (gx, want_gx), (gW, want_gW)):
        np.testing.assert_allclose(got, want, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"])
    strided = np.empty((8, 10), dtype)[:, ::2]
    with pytest.raises(ValueError, match=r"^Matmul\.backward: out\[1\] must be C- or F-contiguous"):
        mm.backward(g, out=(None, strided))


@pytest.mark.parametrize("name", ["Relu", "Softmax", "Log"])
def test_in_place_out(ops, dtype, rng, name):
    """Where in place is allowed, it gives the out-of-place results, and backward stays right."""
    x = rng.normal(size=(50, 10)).astype(dtype)
    if name == "Log":
        x = np.abs(x)
    g = rng.normal(size=x.shape).astype(dtype)
    ref = getattr(ops, name)()
    want_y, want_gx = ref.forward(x), ref.backward(g)
    op = getattr(ops, name)()
    if name == "Log":  # mem keeps x, so only the backward may run in place
        y = op.forward(x)
    else:
        y = x.copy()
        assert op.forward(y, out=y) is y
    g2 = g.copy()
    assert op.backward(g2, out=g2) is g2
    np.testing.assert_allclose(y, want_y, **TOL[dtype])
    np.testing.assert_allclose(g2, want_gx, **TOL[dtype])


def test_mem_holds_what_backward_needs(ops, dtype):
    x = np.ones((2, 3), dtype)
    relu, soft, log, mm = ops.Relu(), ops.Softmax(), ops.Log(), ops.Matmul()
    relu.forward(x)
    s = soft.forward(x)
    log.forward(x)
    mm.forward(x, x.T.copy())
    assert set(relu.mem) == {"x"} and set(log.mem) == {"x"} and set(mm.mem) == {"x", "W"}
    assert soft.mem["out"] is s


def test_relu_of_negative_zero_is_positive_zero(ops, dtype):
    y = ops.Relu().forward(np.array([-0.0, 0.0, -1.0, 2.0], dtype))
    np.testing.assert_array_equal(y, [0, 0, 0, 2])
    assert not np.signbit(y).any()


@pytest.mark.parametrize("label_kind", ["int", "one-hot"])
def test_cross_entropy_with_masked_logits(ops, dtype, label_kind):
    """A logit of -inf (a mask) adds nothing where the label is 0: the loss stays finite."""
    z = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]], dtype)
    labels = np.array([0, 1]) if label_kind == "int" else np.eye(3, dtype=dtype)[[0, 1]]
    want = -np.mean([0.0 - np.log(1 + np.e), 0.5 - np.log(np.exp(2.0) + np.exp(0.5))])
    op = ops.SoftmaxCrossEntropy()
    assert op.forward(z, labels) == pytest.approx(want, rel=1e-6)
    grad = op.backward()
    assert np.isfinite(grad).all()
    assert grad[0, 1] == 0 and grad[1, 2] == 0
    # a label on a masked class is an infinite loss, not NaN
    assert op.forward(z, np.array([1, 0]) if label_kind == "int" else np.eye(3, dtype=dtype)[[1, 0]]) == np.inf
