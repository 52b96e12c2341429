"""Bad input gets a clear error naming the op and what was expected, the same in both backends."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import pyops

BAD_DTYPES = [np.int64, np.int32, np.bool_, np.float16, np.complex128, object]


def unary_ops(ops):
    """(name, op factory, a valid 2-D input) for the one-input ops."""
    return [
        ("Relu", ops.Relu, np.ones((4, 3))),
        ("Softmax", ops.Softmax, np.ones((4, 3))),
        ("Log", ops.Log, np.ones((4, 3))),
    ]


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_bad_dtype_forward(ops, bad):
    for name, make, x in unary_ops(ops):
        with pytest.raises(TypeError, match=rf"^{name}\.forward: x must have dtype float32 or float64, got"):
            make().forward(x.astype(bad))
    with pytest.raises(TypeError, match=r"^Matmul\.forward: x must have dtype float32 or float64"):
        ops.Matmul().forward(np.ones((2, 3)).astype(bad), np.ones((3, 2)))
    with pytest.raises(TypeError, match=r"^Matmul\.forward: W must have dtype float32 or float64"):
        ops.Matmul().forward(np.ones((2, 3)), np.ones((3, 2)).astype(bad))
    with pytest.raises(TypeError, match=r"^SoftmaxCrossEntropy\.forward: z must have dtype"):
        ops.SoftmaxCrossEntropy().forward(np.ones((2, 3)).astype(bad), np.eye(3)[:2])


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_bad_dtype_backward(ops, bad):
    for name, make, x in unary_ops(ops):
        op = make()
        y = op.forward(x)
        with pytest.raises(TypeError, match=rf"^{name}\.backward: grad_y must have dtype float32 or float64"):
            op.backward(np.ones_like(y).astype(bad))


def test_xent_backward_scalar(ops):
    """grad_y is a real scalar: Python ints of any size that fit a float are one."""
    op = ops.SoftmaxCrossEntropy()
    op.forward(np.zeros((2, 3)), np.eye(3)[:2])
    np.testing.assert_allclose(op.backward(2 ** 100), 2.0 ** 100 * op.backward(1.0))
    with pytest.raises(ValueError, match=r"^SoftmaxCrossEntropy\.backward: grad_y is an integer "
                                         r"too large for a float \(401 digits\)"):
        op.backward(10 ** 400)
    for bad in ("a", np.ones(2), True):
        with pytest.raises(TypeError, match=r"^SoftmaxCrossEntropy\.backward: grad_y must be a "
                                            r"real scalar"):
            op.backward(bad)


def test_float32_in_float32_out(ops):
    x = np.full((3, 4), 0.5, np.float32)
    for _, make, _ in unary_ops(ops):
        op = make()
        assert op.forward(x).dtype == np.float32
        assert op.backward(x).dtype == np.float32
    mm = ops.Matmul()
    assert mm.forward(x, x.T.copy()).dtype == np.float32
    assert all(g.dtype == np.float32 for g in mm.backward(np.ones((3, 3), np.float32)))


@pytest.mark.parametrize("fwd,bwd", [(np.float32, np.float64), (np.float64, np.float32)],
                         ids=["f32-forward-f64-grad", "f64-forward-f32-grad"])
def test_grad_of_other_float_dtype_is_rejected(ops, fwd, bwd):
    """The rule: grad_y must have the forward dtype; no silent up- or down-cast."""
    for name, make, x in unary_ops(ops):
        op = make()
        op.forward(x.astype(fwd))
        with pytest.raises(TypeError, match=rf"^{name}\.backward: grad_y has dtype {np.dtype(bwd)} but the forward output is {np.dtype(fwd)}"):
            op.backward(np.ones((4, 3), bwd))
    mm = ops.Matmul()
    mm.forward(np.ones((2, 3), fwd), np.ones((3, 2), fwd))
    with pytest.raises(TypeError, match=r"^Matmul\.backward: grad_y has dtype"):
        mm.backward(np.ones((2, 2), bwd))


def test_matmul_mixed_dtypes(ops):
    with pytest.raises(TypeError, match=r"^Matmul\.forward: W has dtype float32 but x is float64"):
        ops.Matmul().forward(np.ones((2, 3)), np.ones((3, 2), np.float32))


def test_wrong_ndim(ops):
    with pytest.raises(ValueError, match=r"^Softmax\.forward: x must be 2-D \(N, c\), got 1-D array of shape \(5,\)"):
        ops.Softmax().forward(np.ones(5))
    with pytest.raises(ValueError, match=r"^Softmax\.forward: x must be 2-D"):
        ops.Softmax().forward(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"^Matmul\.forward: x must be 2-D \(N, d\)"):
        ops.Matmul().forward(np.ones(3), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"^Matmul\.forward: W must be 2-D \(d, d'\)"):
        ops.Matmul().forward(np.ones((2, 3)), np.ones(3))
    with pytest.raises(ValueError, match=r"^SoftmaxCrossEntropy\.forward: z must be 2-D"):
        ops.SoftmaxCrossEntropy().forward(np.ones(3), np.ones(3))


def test_matmul_shape_mismatch(ops):
    with pytest.raises(ValueError, match=re.escape("Matmul.forward: W must have shape (3, d') to match x of shape (2, 3), got (4, 2)")):
        ops.Matmul().forward(np.ones((2, 3)), np.ones((4, 2)))


def test_grad_shape_mismatch(ops):
    for name, make, x in unary_ops(ops):
        op = make()
        op.forward(x)
        with pytest.raises(ValueError, match=re.escape(f"{name}.backward: grad_y must have shape (4, 3) (the forward output's shape), got (3, 4)")):
            op.backward(np.ones((3, 4)))
    mm = ops.Matmul()
    mm.forward(np.ones((2, 3)), np.ones((3, 5)))
    with pytest.raises(ValueError, match=re.escape("Matmul.backward: grad_y must have shape (2, 5)")):
        mm.backward(np.ones((5, 2)))


def test_backward_before_forward(ops):
    for name, make, x in unary_ops(ops) + [("Matmul", ops.Matmul, None), ("SoftmaxCrossEntropy", ops.SoftmaxCrossEntropy, None)]:
        with pytest.raises(RuntimeError, match=rf"^{name}\.backward called before forward"):
            make().backward(np.ones((4, 3)))


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_out_errors(ops):
    x = np.ones((4, 3))
    with pytest.raises(TypeError, match=r"^Relu\.forward: out must have dtype float64, got float32"):
        ops.Relu().forward(x, out=np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match=re.escape("Relu.forward: out must have shape (4, 3), got (3, 4)")):
        ops.Relu().forward(x, out=np.empty((3, 4)))
    with pytest.raises(ValueError, match=r"^Softmax\.forward: out must be C-contiguous"):
        ops.Softmax().forward(x, out=np.empty((3, 4)).T)
    ro = np.empty((4, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"^Log\.forward: out is read-only"):
        ops.Log().forward(x, out=ro)
    with pytest.raises(TypeError, match=r"^Log\.forward: out must be a numpy.ndarray, got list"):
        ops.Log().forward(x, out=[[0.0] * 3] * 4)
    for make in (ops.Relu, ops.Softmax, ops.Log):  # np.matrix cannot be flattened: refused by both
        with pytest.raises(TypeError, match=r"\.forward: out must be a numpy.ndarray, got matrix"):
            make().forward(x, out=np.asmatrix(np.empty((4, 3))))
    big = np.arange(16.0)
    with pytest.raises(ValueError, match=r"^Relu\.forward: out overlaps an input without being identical"):
        ops.Relu().forward(big[:12].reshape(4, 3), out=big[4:].reshape(4, 3))
    # allowed: a view identical to the input (in place), and disjoint parts of one buffer
    x_in = big[:12].reshape(4, 3) - 8.0
    assert ops.Relu().forward(x_in, out=x_in[:]).base is x_in
    assert x_in.min() == 0.0
    halves = np.linspace(-1, 1, 24).reshape(8, 3)
    np.testing.assert_array_equal(ops.Relu().forward(halves[:4], out=halves[4:]), np.maximum(halves[:4], 0))
    mm = ops.Matmul(input_grad=False)
    mm.forward(x, np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"^Matmul\.backward: out\[0\] must be None when input_grad=False"):
        mm.backward(np.ones((4, 2)), out=(np.empty((4, 3)), None))


def test_out_is_checked_against_the_callers_strided_arrays(ops):
    """The cython backend copies a strided input for its kernels; ``out=`` is still checked
    against the caller's array, so both backends refuse the same calls."""
    buf = np.linspace(0.5, 1.5, 48).reshape(4, 12)
    x = buf[:, ::4]  # (4, 3), not contiguous
    out = buf[1:, :].reshape(-1)[:12].reshape(4, 3)  # contiguous, inside x's span
    assert np.shares_memory(x, out)
    for name, make, _ in unary_ops(ops):
        kept = name == "Log"  # Log keeps x in mem: any sharing is refused, not just overlap
        msg = "must not share memory with x" if kept else "overlaps an input without being identical"
        with pytest.raises(ValueError, match=rf"^{name}\.forward: out {msg}"):
            make().forward(x, out=out)
    g = np.ones((4, 12))[:, ::4]
    g_out = g.base.reshape(-1)[2:14].reshape(4, 3)
    op = ops.Relu()
    op.forward(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"^Relu\.backward: out overlaps an input"):
        op.backward(g, out=g_out)
    np.testing.assert_array_equal(buf, np.linspace(0.5, 1.5, 48).reshape(4, 12))


def test_out_must_not_alias_what_the_op_still_needs(ops):
    """Aliases that would corrupt mem or a later read are refused, naming op and array."""
    x = np.abs(np.linspace(-1, 1, 12).reshape(4, 3)) + 0.5
    msg = r"^{}: {} must not share memory with {}, which the op still needs"
    log = ops.Log()
    with pytest.raises(ValueError, match=msg.format(r"Log\.forward", "out", "x")):
        log.forward(x, out=x)
    log.forward(x)
    with pytest.raises(ValueError, match=msg.format(r"Log\.backward", "out", "x")):
        log.backward(np.ones_like(x), out=x)
    soft = ops.Softmax()
    s = soft.forward(x)
    with pytest.raises(ValueError, match=msg.format(r"Softmax\.backward", "out", "s")):
        soft.backward(np.ones_like(x), out=s)
    sq = np.eye(3) + x[:3]
    mm = ops.Matmul()
    with pytest.raises(ValueError, match=msg.format(r"Matmul\.forward", "out", "x")):
        mm.forward(sq, sq.copy(), out=sq)
    W = sq.copy()
    mm.forward(sq, W)
    g = np.ones((3, 3))
    with pytest.raises(ValueError, match=msg.format(r"Matmul\.backward", r"out\[0\]", "x")):
        mm.backward(g, out=(sq, None))
    with pytest.raises(ValueError, match=msg.format(r"Matmul\.backward", r"out\[1\]", "W")):
        mm.backward(g, out=(None, W))
    with pytest.raises(ValueError, match=msg.format(r"Matmul\.backward", r"out\[0\]", "grad_y")):
        mm.backward(g, out=(g, None))
    both = np.empty((3, 3))
    with pytest.raises(ValueError, match=msg.format(r"Matmul\.backward", r"out\[0\]", r"out\[1\]")):
        mm.backward(g, out=(both, both))
    with pytest.raises(TypeError, match=r"^Matmul\.backward: out must be a pair"):
        mm.backward(g, out=np.empty((3, 3)))
    xent = ops.SoftmaxCrossEntropy()
    xent.forward(x, np.eye(3)[[0, 1, 2, 0]])
    with pytest.raises(ValueError, match=msg.format(r"SoftmaxCrossEntropy\.backward", "out", "s")):
        xent.backward(1.0, out=xent.mem["out"])
    # nothing was corrupted by the refused calls
    np.testing.assert_allclose(mm.forward(sq, W), sq @ W)


@pytest.mark.parametrize("eps, error", [("abc", TypeError), (None, TypeError), (-1.0, ValueError),
                                         (float("nan"), ValueError), (float("inf"), ValueError)])
def test_log_rejects_a_bad_eps(ops, eps, error):
    with pytest.raises(error, match=r"^Log: eps must be"):
        ops.Log(eps=eps)


@pytest.mark.parametrize("eps", [True, np.bool_(False), "0.1", np.array(0.1), None], ids=repr)
def test_log_eps_must_be_a_real_number_not_a_bool_or_string(ops, eps):
    with pytest.raises(TypeError, match=r"^Log: eps must be a real number"):
        ops.Log(eps=eps)


def test_log_eps_that_overflows_the_dtype(ops):
    op = ops.Log(eps=1e300)  # fine in float64, inf in float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no stray numpy overflow warning on the way
        assert np.isfinite(op.forward(np.ones(3))).all()
        with pytest.raises(ValueError, match=r"^Log\.forward: eps=1e\+300 overflows float32"):
            op.forward(np.ones(3, np.float32))


def test_log_eps_that_rounds_to_zero_in_the_dtype(ops):
    op = ops.Log(eps=1e-46)  # a float64 subnormal, 0 in float32: log(0) would be -inf
    assert np.isfinite(op.forward(np.zeros(3))).all()
    with pytest.raises(ValueError, match=r"^Log\.forward: eps=1e-46 rounds to 0 in float32"):
        op.forward(np.zeros(3, np.float32))
    with pytest.warns(RuntimeWarning, match="-inf for 3 at -eps"):  # eps=0 is allowed on purpose
        assert np.isneginf(ops.Log(eps=0).forward(np.zeros(3, np.float32))).all()


def test_byte_swapped_floats_are_refused_with_a_hint(ops):
    x = np.ones((2, 3), ">f8" if np.little_endian else "<f8")
    with pytest.raises(TypeError, match=r"^Relu\.forward: x must have dtype float32 or float64, got "
                                        r".*byte-swapped: convert it with \.astype\(np\.float64\)"):
        ops.Relu().forward(x)


def test_ieee_specials_give_no_numpy_warnings(ops, dtype):
    """inf and NaN inputs give IEEE results silently on both backends (no raw numpy
    RuntimeWarning from the reference kernels); only Log's domain check warns."""
    z = np.array([[np.inf, 0.0, 1.0], [-np.inf, 1.0, 2.0], [np.nan, 0.0, 0.0]], dtype)
    g = np.array([[np.inf, -np.inf, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        relu = ops.Relu()
        relu.forward(-np.abs(z))
        relu.backward(g)
        soft = ops.Softmax()
        s = soft.forward(z)
        soft.backward(g)
        xent = ops.SoftmaxCrossEntropy()
        xent.forward(z, np.eye(3, dtype=dtype))
        xent.backward()
    assert np.isnan(s[0]).all() and np.isnan(s[2]).all()  # inf - inf, NaN propagate
    big = np.finfo(dtype).max
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log = ops.Log(eps=0.0)
        y = log.forward(np.array([big, np.finfo(dtype).tiny / 16, 1.0], dtype))
        grad = log.backward(np.array([1.0, 1.0, 1.0], dtype))  # 1 / subnormal overflows
        y_over = ops.Log(eps=float(big)).forward(np.array([big], dtype))  # x + eps overflows
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[0], np.log(big), rtol=1e-6)
    assert grad[1] == np.inf and grad[2] == 1.0 and y_over[0] == np.inf
    np.testing.assert_allclose(s[1], [0.0, 1 / (1 + np.e), np.e / (1 + np.e)], rtol=1e-6)


def test_integer_labels_out_of_range(ops):
    with pytest.raises(ValueError, match=re.escape("SoftmaxCrossEntropy.forward: integer labels must lie in [0, 3), got values in [0, 3]")):
        ops.SoftmaxCrossEntropy().forward(np.ones((2, 3)), np.array([0, 3]))


def test_both_backends_raise_the_same_message():
    """One set of checks serves both backends, so the messages are identical."""
    cases = [
        lambda o: o.Relu().forward(np.ones(3, np.int32)),
        lambda o: o.Softmax().forward(np.ones(3)),
        lambda o: o.Log().backward(np.ones(3)),
        lambda o: o.Matmul().forward(np.ones((2, 3)), np.ones((2, 3))),
    ]
    for case in cases:
        messages = []
        for name in ("numpy", "cython"):
            with pytest.raises(Exception) as info:
                case(pyops.get_ops(name))
            messages.append((type(info.value), str(info.value)))
        assert messages[0] == messages[1]


# ------------------------------------------------------------ Log outside its domain
# Not an error: log(x + eps) is NaN below -eps and -inf at -eps, as np.log gives, but both
# backends warn the same way, naming the op.  Sizes on both sides of the threading threshold,
# with the bad value last, so that it lies in the last thread's chunk.
@pytest.mark.parametrize("size", [7, 100_003])
def test_log_outside_its_domain_warns_on_both_backends(ops, dtype, size):
    eps = 0.25
    x = np.full(size, 2.0, dtype)
    x[-1] = -1.0            # below -eps: NaN
    x[size // 2] = -eps     # at -eps: -inf
    kept = x.copy()
    with pytest.warns(RuntimeWarning, match=r"^Log\.forward: 2 of \d+ inputs are <= -eps \(eps=0\.25\): "
                                            r"log\(x \+ eps\) is NaN for 1 below -eps and -inf for 1 at -eps"):
        y = ops.Log(eps=eps).forward(x)
    assert np.isnan(y[-1]) and y[size // 2] == -np.inf
    np.testing.assert_allclose(y[:3], np.log(dtype(2.25)), rtol=1e-6)
    np.testing.assert_array_equal(x, kept)


@pytest.mark.parametrize("size", [7, 100_003])
def test_log_in_its_domain_is_silent(ops, dtype, size):
    """No warning for valid inputs: NaN in (NaN out, as np.log), +inf, and tiny positive
    values, which the compiled kernel's cheap float32 flag catches as a false alarm in float64."""
    x = np.full(size, 1.0, dtype)
    x[0], x[1], x[2] = np.nan, np.inf, np.finfo(dtype).tiny
    if dtype == np.float64:
        x[3] = 1e-300      # positive, but 0 once rounded to float32
    op = ops.Log(eps=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = op.forward(x)
        op.backward(np.ones_like(x))
        want = np.log(x)
    np.testing.assert_array_equal(y, want)


def test_log_backward_at_minus_eps_is_silent(ops, dtype):
    """The forward pass has warned; backward gives g / 0 = inf on both backends without a second warning."""
    x = np.array([0.0, 1.0], dtype)
    op = ops.Log(eps=0.0)
    with pytest.warns(RuntimeWarning, match=r"^Log\.forward: 1 of 2"):
        op.forward(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = op.backward(np.array([1.0, 1.0], dtype))
    assert g[0] == np.inf and g[1] == 1.0
