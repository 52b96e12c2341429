"""The numpy kernel table: the reference arithmetic of every op.

Each function writes its result into ``out`` (allocated and validated by the op
class in :mod:`pyops.ops`) and returns it.  ``kernels`` provides a table with the
same functions, compiled; the op classes never know which one they call.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple, TypeVar

import numpy as np

from ._checks import (count_correct_inputs, relu_matmul_forward_inputs, relu_matmul_inputs,
                      warn_log_domain)

CONTIGUOUS_INPUTS = False  # numpy handles any strides; no copy needed

F = TypeVar("F", bound=Callable)


def _ieee(kernel: F) -> F:
    """Run ``kernel`` with numpy's floating-point warnings off, as the compiled kernels run.

    Infinities, NaNs and overflow give the IEEE results (``inf - inf`` is NaN, ...)
    silently on both backends; only ``Log``'s domain check warns (see :func:`log_forward`,
    not wrapped, so that the warning points at the caller).
    """
    @functools.wraps(kernel)
    def quiet(*args, **kwargs):
        with np.errstate(all="ignore"):
            return kernel(*args, **kwargs)
    return quiet  # type: ignore[return-value]


@_ieee
def relu_forward(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = max(x, 0)``; NaN propagates as in TensorFlow."""
    return np.maximum(x, 0, out=out)


@_ieee
def relu_backward(x: np.ndarray, g: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = g * (x > 0)``: a product, as TensorFlow's ReluGrad (NaN in g stays NaN)."""
    return np.multiply(g, x > 0, out=out)


@_ieee
def softmax_forward(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Row softmax, stable: ``exp(x - max(x)) / sum(exp(x - max(x)))``."""
    if x.size == 0:
        return out
    np.subtract(x, x.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


@_ieee
def softmax_backward(s: np.ndarray, g: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Batched VJP ``s * (g - <g, s>)``: the product with ``J = diag(s) - s s^T`` per row."""
    if s.size == 0:
        return out
    dot = np.einsum("ij,ij->i", g, s)[:, None]
    np.subtract(g, dot, out=out)
    out *= s
    return out


def log_forward(x: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    """``out = log(x + eps)``; warns, naming ``Log``, if some ``x + eps <= 0``."""
    with np.errstate(over="ignore"):  # x + eps beyond the dtype's range is inf, as in C
        np.add(x, x.dtype.type(eps), out=out)
    try:
        with np.errstate(invalid="raise", divide="raise"):  # np.log's flags: x + eps < 0, == 0
            return np.log(out, out=out)
    except FloatingPointError:
        pass
    with np.errstate(all="ignore"):
        np.log(np.add(x, x.dtype.type(eps), out=out), out=out)
    warn_log_domain(x, eps)
    return out


@_ieee
def log_backward(x: np.ndarray, g: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    """``out = g / (x + eps)``; ``out`` may be ``g`` itself (then a temporary holds ``x + eps``).

    Silent at ``x + eps == 0`` and on overflow, like the compiled kernel: the forward pass
    has warned.
    """
    if np.may_share_memory(out, g):
        return np.divide(g, x + x.dtype.type(eps), out=out)
    np.add(x, x.dtype.type(eps), out=out)
    return np.divide(g, out, out=out)


@_ieee
def xent_forward(z: np.ndarray, y: np.ndarray, s_out: np.ndarray) -> float:
    """Mean softmax cross-entropy of logits ``z`` against label rows ``y``.

    Writes ``softmax(z)`` into ``s_out`` and returns
    ``-mean_i sum_j y_ij * log_softmax(z)_ij``, with the log-sum-exp taken
    after the row max is subtracted, so no probability is ever logged.
    """
    n = z.shape[0]
    if n == 0:
        return 0.0
    if z.shape[1] == 0:
        return 0.0
    shifted = z - z.max(axis=1, keepdims=True)
    np.exp(shifted, out=s_out)
    row_sum = s_out.sum(axis=1, keepdims=True)
    s_out /= row_sum
    log_softmax = shifted - np.log(row_sum)
    total = np.einsum("ij,ij->", y, log_softmax)
    if np.isnan(total):  # maybe 0 * -inf from a masked (-inf) logit: redo without the y == 0 terms
        np.copyto(log_softmax, 0, where=(y == 0))
        total = np.einsum("ij,ij->", y, log_softmax)
    return float(-total / n) + 0.0  # + 0.0: a zero loss is +0.0, as the compiled kernel's


@_ieee
def xent_backward(s: np.ndarray, y: np.ndarray, scale: float, out: np.ndarray) -> np.ndarray:
    """``out = scale * (s - y)``; the op passes ``scale = grad / N``."""
    np.subtract(s, y, out=out)
    out *= s.dtype.type(scale)
    return out


def matmul(a: np.ndarray, b: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    """``a @ b`` (2-D, checked by the op) into ``out`` or a new array: one numpy call, whose
    BLAS threads it as it likes."""
    return np.matmul(a, b, out=out)


@_ieee
def relu_matmul_forward(x: np.ndarray, W: np.ndarray, out_h: Optional[np.ndarray],
                        out_y: np.ndarray) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """The forward pass of ``y = relu(x) @ W``: ``out_y = relu(x) @ W``, and ``out_h =
    relu(x)`` unless ``out_h`` is None (then ``relu(x)`` lives in a temporary here; the
    compiled kernel keeps only a few rows of it).  What ``Relu.forward`` then
    ``Matmul.forward`` compute, with no op class in front (:meth:`pyops.MLP.forward` calls
    it): the arguments are checked here."""
    relu_matmul_forward_inputs("relu_matmul_forward", x, W, out_h, out_y)
    return _relu_matmul_forward_apart(x, W, out_h, out_y)


def _relu_matmul_forward_apart(x, W, out_h, out_y, relu=relu_forward):
    """:func:`relu_matmul_forward` unchecked, as relu then BLAS, with the given ``relu(x, out)``
    (the compiled table's where its build has no one-pass kernel)."""
    h = relu(x, np.empty_like(x) if out_h is None else out_h)
    np.matmul(h, W, out=out_y)
    return out_h, out_y


def relu_matmul_keeps_h() -> bool:
    """Whether :meth:`pyops.MLP.forward` should keep ``relu(x)``: here it is computed whole
    anyway, so keeping it costs nothing and spares a temporary (N, k) array."""
    return True


@_ieee
def relu_matmul_backward(g: np.ndarray, x: np.ndarray, W: np.ndarray, out_dx: np.ndarray,
                         out_dW: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The backward pass of ``y = relu(x) @ W``: ``out_dx = (g @ W.T) * (x > 0)`` (the
    gradient at ``x``) and ``out_dW = relu(x).T @ g``.  ``x`` is the forward's input; its
    output ``h = relu(x)`` gives the same results (``relu(h) = h``, ``h > 0`` exactly where
    ``x > 0``).  What ``Matmul.backward`` then ``Relu.backward`` compute, with no op class
    in front (:meth:`pyops.MLP.backward` calls it): the arguments are checked here."""
    relu_matmul_inputs("relu_matmul_backward", g, x, W, out_dx, out_dW)
    return _relu_matmul_backward_apart(g, x, W, out_dx, out_dW)


def _relu_matmul_backward_apart(g, x, W, out_dx, out_dW, relu=relu_forward,
                               relu_grad=relu_backward):
    """:func:`relu_matmul_backward` unchecked, in four passes, with the given ``relu(x, out)``
    and ``relu_grad(x, g, out)`` (the compiled table's where its build has no one-pass
    kernel)."""
    np.matmul(relu(x, out_dx).T, g, out=out_dW)  # out_dx holds relu(x) until the next line
    np.matmul(g, W.T, out=out_dx)
    relu_grad(x, out_dx, out_dx)
    return out_dx, out_dW


def count_correct(scores: np.ndarray, labels: np.ndarray) -> int:
    """Rows of ``(N, c)`` ``scores`` whose argmax is the argmax of their ``labels`` row."""
    scores, labels = count_correct_inputs("count_correct", scores, labels)
    if scores.shape[0] == 0:  # np.argmax refuses (0, 0); no rows, none correct
        return 0
    return int(np.count_nonzero(np.argmax(scores, axis=1) == np.argmax(labels, axis=1)))


def _flush_subnormals(a: np.ndarray, scratch: np.ndarray, mask: np.ndarray) -> None:
    """Set the entries of ``a`` smaller in magnitude than the smallest normal float to 0."""
    np.abs(a, out=scratch)
    np.less(scratch, np.finfo(a.dtype).tiny, out=mask)
    np.copyto(a, 0, where=mask)


def adam_workspace(p: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The scratch :func:`adam_update` needs for ``p``: a float array and a bool mask."""
    return np.empty(p.shape, p.dtype), np.empty(p.shape, bool)


def adam_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, b1: float, b2: float,
                eps: float, decay: float, step_size: float, inv_root_c2: float,
                work: tuple) -> None:
    """One Adam update in place (see :class:`pyops.model.Adam`); ``work = (scratch, bool mask)``.

    ``m += (1 - b1) (g - m)``, ``v += (1 - b2) (g^2 - v)``, each with subnormals set to 0,
    then ``p = p * decay - step_size * m / (sqrt(v) * inv_root_c2 + eps)``.
    """
    tmp, small = work
    np.subtract(g, m, out=tmp)
    tmp *= 1.0 - b1
    m += tmp
    _flush_subnormals(m, tmp, small)
    np.square(g, out=tmp)
    tmp -= v
    tmp *= 1.0 - b2
    v += tmp
    _flush_subnormals(v, tmp, small)
    np.sqrt(v, out=tmp)
    tmp *= inv_root_c2
    tmp += eps
    np.divide(m, tmp, out=tmp)
    tmp *= step_size
    if decay != 1.0:
        p *= decay
    p -= tmp
