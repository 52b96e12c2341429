"""Op classes: ``Matmul``, ``Relu``, ``Softmax``, ``Log``, ``SoftmaxCrossEntropy``.

Each op follows the notebook's contract: ``forward(...)`` computes the output
and keeps in ``self.mem`` what ``backward`` needs; ``backward(grad_y)`` returns
the gradient of the loss with respect to the forward inputs, derived with the
differential method (``docs/derivations.md``).

The classes hold the checks and the bookkeeping; the arithmetic lives in a
*kernel table* (``_kernels``): :mod:`pyops._numpy_kernels` here, the compiled
table in :mod:`kernels`.  ``kernels.Relu`` is this ``Relu`` with the compiled
table swapped in, so both backends share one API and fail the same way.

Dtype rule: inputs must be float32 or float64 (TypeError otherwise, no silent
cast); every array of one call, including ``grad_y`` and ``out``, must have the
dtype of the forward input; results have that dtype.

Memory rule: ``mem`` holds references, not copies, where it can: the caller's input
(``Relu``, ``Log``, ``Matmul``, and ``SoftmaxCrossEntropy``'s float labels; on the numpy
backend, or for an already C-contiguous input on the cython one) or the returned output
(``Softmax``).  Changing those arrays in place between ``forward`` and ``backward``
changes the gradient; ``out=`` refuses such aliases.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Optional, Tuple

import numpy as np

from . import _numpy_kernels
from ._checks import (as_float_array, check_fits_dtype, check_hyperparameter, check_ndim, check_out,
                      check_same_dtype, check_shape)

__all__ = ["Op", "Matmul", "Relu", "Softmax", "Log", "SoftmaxCrossEntropy"]


class Op:
    """Base class of every op: a ``mem`` dict and a kernel table.

    Attributes
    ----------
    mem : dict
        What ``backward`` needs from ``forward``; empty until forward runs.
    backend : str
        ``"numpy"`` or ``"cython"``: which kernel table does the arithmetic.
    """

    backend: str = "numpy"
    _kernels: ModuleType = _numpy_kernels

    def __init__(self) -> None:
        self.mem: dict = {}

    def __repr__(self) -> str:
        return f"{type(self).__module__.split('.')[0]}.{type(self).__name__}()"

    def _where(self, method: str) -> str:
        return f"{type(self).__name__}.{method}"

    def _input(self, method: str, name: str, a: Any) -> np.ndarray:
        """Check the dtype of input ``a`` (the caller's array: ``out=`` is checked against it)."""
        return as_float_array(self._where(method), name, a)

    def _c(self, a: np.ndarray) -> np.ndarray:
        """``a``, or the C-contiguous copy of it that compiled kernels need.

        Called after ``check_out``, so that both backends check ``out=`` against the
        caller's arrays rather than against a private copy.
        """
        if self._kernels.CONTIGUOUS_INPUTS and not a.flags.c_contiguous:
            a = a.copy(order="C")  # not np.ascontiguousarray: it turns 0-d into 1-d
        return a

    def _recall(self, *keys: str) -> Tuple[np.ndarray, ...]:
        if not self.mem:
            raise RuntimeError(
                f"{self._where('backward')} called before forward: "
                f"there is nothing in mem to differentiate"
            )
        return tuple(self.mem[k] for k in keys)

    def _grad(self, grad_y: Any, like: np.ndarray) -> np.ndarray:
        """Check ``grad_y`` against the forward output it is the gradient of."""
        where = self._where("backward")
        g = self._input("backward", "grad_y", grad_y)
        check_same_dtype(where, "grad_y", g, like.dtype, "the forward output")
        check_shape(where, "grad_y", g, like.shape, "the forward output's shape")
        return g

    @staticmethod
    def _alloc(out: Optional[np.ndarray], shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype) if out is None else out


class Matmul(Op):
    """Matrix product ``Y = X W``.

    forward:  ``Y = X @ W`` with X (N, d), W (d, d') -> Y (N, d').
    backward: ``dL/dX = G @ W.T`` (N, d) and ``dL/dW = X.T @ G`` (d, d'),
              from ``dL = tr(G^T dY)`` with ``dY = dX W + X dW``.

    Both backends use numpy's BLAS for the products, so ``out=`` arrays may be
    C- or F-contiguous: BLAS writes either layout, and which is faster depends on
    the shapes (for ``x.T @ G`` with x (60000, 785) and G (60000, 100), numpy's
    OpenBLAS here fills an F-contiguous ``grad_W`` 1.3x faster in float64).  The
    compiled backend splits a large product over its kernels' threads, each part
    one BLAS call on one thread (:mod:`kernels._matmul`); the numpy backend makes
    one call, which BLAS threads itself.

    Parameters
    ----------
    input_grad : bool, default True
        If False, ``backward`` skips the ``G @ W.T`` product and returns
        ``(None, grad_W)``: a first layer needs no gradient for its input.

    Examples
    --------
    >>> import numpy as np, pyops
    >>> op = pyops.Matmul()
    >>> y = op.forward(np.ones((2, 3)), np.ones((3, 4)))
    >>> grad_x, grad_W = op.backward(np.ones_like(y))
    >>> grad_x.shape, grad_W.shape
    ((2, 3), (3, 4))
    """

    def __init__(self, input_grad: bool = True) -> None:
        super().__init__()
        self.input_grad = bool(input_grad)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f"input_grad={self.input_grad})"

    def forward(self, x: Any, W: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Return ``x @ W``; keeps ``x`` and ``W`` in ``mem``."""
        where = self._where("forward")
        x = as_float_array(where, "x", x)
        W = as_float_array(where, "W", W)
        check_ndim(where, "x", x, 2, "(N, d)")
        check_ndim(where, "W", W, 2, "(d, d')")
        check_same_dtype(where, "W", W, x.dtype, "x")
        if W.shape[0] != x.shape[1]:
            raise ValueError(
                f"{where}: W must have shape ({x.shape[1]}, d') to match x of shape {x.shape}, "
                f"got {W.shape}"
            )
        shape = (x.shape[0], W.shape[1])
        out = check_out(where, out, shape, x.dtype, kept={"x": x, "W": W}, fortran_ok=True)
        self.mem = {"x": x, "W": W}
        return self._kernels.matmul(x, W, out)

    def backward(
        self,
        grad_y: Any,
        out: Optional[Tuple[Optional[np.ndarray], Optional[np.ndarray]]] = None,
    ) -> Tuple[Optional[np.ndarray], np.ndarray]:
        """Return ``(grad_x, grad_W) = (G @ W.T, x.T @ G)``; ``grad_x`` is None if ``input_grad=False``.

        ``out``, if given, is a pair ``(grad_x_out, grad_W_out)``; either may be None.
        """
        where = self._where("backward")
        x, W = self._recall("x", "W")
        g = as_float_array(where, "grad_y", grad_y)
        check_same_dtype(where, "grad_y", g, x.dtype, "the forward output")
        check_shape(where, "grad_y", g, (x.shape[0], W.shape[1]), "the forward output's shape")
        if not (out is None or (isinstance(out, (tuple, list)) and len(out) == 2)):
            raise TypeError(f"{where}: out must be a pair (grad_x_out, grad_W_out), got {type(out).__name__}")
        gx_out, gW_out = (None, None) if out is None else out
        if not self.input_grad and gx_out is not None:
            raise ValueError(f"{where}: out[0] must be None when input_grad=False")
        # nothing may alias: grad_W is computed after grad_x, from x and G
        gW_out = check_out(where, gW_out, W.shape, x.dtype, name="out[1]",
                           kept={"x": x, "W": W, "grad_y": g}, fortran_ok=True)
        grad_x = None
        if self.input_grad:
            gx_out = check_out(where, gx_out, x.shape, x.dtype, name="out[0]",
                               kept={"x": x, "W": W, "grad_y": g, "out[1]": gW_out},
                               fortran_ok=True)
            grad_x = self._kernels.matmul(g, W.T, gx_out)
        return grad_x, self._kernels.matmul(x.T, g, gW_out)


class Relu(Op):
    """Rectified linear unit, elementwise on an array of any shape.

    forward:  ``y = max(x, 0)``; ``relu(nan)`` is nan.
    backward: ``dL/dx = G * (x > 0)``: ``dy = 1[x > 0] ⊙ dx``; gradient 0 at
              exactly 0 and a product, not a select, both as TensorFlow's
              ReluGrad (so a NaN in G stays NaN even where ``x <= 0``).
    Shapes: x, y, G and dL/dx all have the same shape.
    """

    def forward(self, x: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Return ``max(x, 0)``; keeps ``x`` in ``mem``."""
        x = self._input("forward", "x", x)
        # in place is safe: backward needs only the sign of x, and relu keeps it
        out = check_out(self._where("forward"), out, x.shape, x.dtype, (x,))
        x = self._c(x)
        self.mem = {"x": x}
        return self._kernels.relu_forward(x, self._alloc(out, x.shape, x.dtype))

    def backward(self, grad_y: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Return ``grad_y * (x > 0)``."""
        (x,) = self._recall("x")
        g = self._grad(grad_y, x)
        out = check_out(self._where("backward"), out, x.shape, x.dtype, (g,), kept={"x": x})
        return self._kernels.relu_backward(x, self._c(g), self._alloc(out, x.shape, x.dtype))


class Softmax(Op):
    """Softmax over the last axis of an (N, c) batch.

    forward:  ``s_i = exp(x_i - max x_i) / sum(exp(x_i - max x_i))`` per row;
              subtracting the row max leaves the value unchanged and keeps
              ``exp`` from overflowing (logits of 1e4 are fine).
    backward: the vector-Jacobian product with ``J = diag(s) - s s^T`` per row,
              ``dL/dx = s * (G - sum(G * s, axis=1, keepdims=True))``, in O(N c):
              the N x c x c Jacobian is never built.
    Shapes: x, s, G and dL/dx are all (N, c).
    """

    def forward(self, x: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Return the row softmax of ``x``; keeps the output ``s`` in ``mem``."""
        where = self._where("forward")
        x = self._input("forward", "x", x)
        check_ndim(where, "x", x, 2, "(N, c)")
        out = check_out(where, out, x.shape, x.dtype, (x,))
        s = self._kernels.softmax_forward(self._c(x), self._alloc(out, x.shape, x.dtype))
        self.mem = {"out": s}
        return s

    def backward(self, grad_y: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Return ``s * (grad_y - <grad_y, s>)`` row by row."""
        (s,) = self._recall("out")
        g = self._grad(grad_y, s)
        out = check_out(self._where("backward"), out, s.shape, s.dtype, (g,), kept={"s": s})
        return self._kernels.softmax_backward(s, self._c(g), self._alloc(out, s.shape, s.dtype))


class Log(Op):
    """Natural logarithm with a floor, elementwise on an array of any shape.

    forward:  ``y = log(x + eps)``, ``eps = 1e-12`` (attribute ``eps``), so a
              probability of exactly 0 gives a finite value.  At or below
              ``-eps`` it gives -inf or NaN, as ``np.log``, and warns
              (``RuntimeWarning`` naming ``Log``) on both backends.
    backward: ``dL/dx = G / (x + eps)``, from ``dy = dx ⊘ (x + eps)``.
    Shapes: x, y, G and dL/dx all have the same shape.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = check_hyperparameter("Log", "eps", eps)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f"eps={self.eps!r})"

    def forward(self, x: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Return ``log(x + eps)``; keeps ``x`` in ``mem``."""
        x = self._input("forward", "x", x)
        check_fits_dtype(self._where("forward"), "eps", self.eps, x.dtype)  # kernels use x's dtype
        out = check_out(self._where("forward"), out, x.shape, x.dtype, kept={"x": x})
        x = self._c(x)
        self.mem = {"x": x}
        return self._kernels.log_forward(x, self.eps, self._alloc(out, x.shape, x.dtype))

    def backward(self, grad_y: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Return ``grad_y / (x + eps)``."""
        (x,) = self._recall("x")
        g = self._grad(grad_y, x)
        out = check_out(self._where("backward"), out, x.shape, x.dtype, (g,), kept={"x": x})
        return self._kernels.log_backward(x, self._c(g), self.eps, self._alloc(out, x.shape, x.dtype))


class SoftmaxCrossEntropy(Op):
    """Softmax followed by the mean cross-entropy, fused.

    forward:  ``L = -(1/N) sum_i y_i . log_softmax(z_i)`` for logits z (N, c)
              and labels y, either one-hot / probability rows (N, c) of z's
              dtype or integer class indices (N,) in ``[0, c)``. Returns a
              Python float (0.0 for an empty batch).
    backward: ``dL/dz = grad_y * (softmax(z) - y) / N`` (N, c), valid when each
              label row sums to 1, in one pass.  ``grad_y`` defaults to 1.

    Equivalent to ``Softmax`` then ``Log`` then ``-mean(sum(y * log_prob))``
    but cheaper and stable: no probability is logged, nothing is divided by s.
    """

    def forward(self, z: Any, labels: Any) -> float:
        """Return the mean cross-entropy; keeps ``softmax(z)`` and the label rows in ``mem``."""
        where = self._where("forward")
        z = self._c(self._input("forward", "z", z))
        check_ndim(where, "z", z, 2, "(N, c)")
        y = self._labels(where, labels, z)
        s = np.empty_like(z)
        loss = self._kernels.xent_forward(z, y, s)
        self.mem = {"out": s, "labels": y}
        return loss

    def _labels(self, where: str, labels: Any, z: np.ndarray) -> np.ndarray:
        lab = np.asarray(labels)
        n, c = z.shape
        if lab.dtype.kind in "iu":
            check_ndim(where, "integer labels", lab, 1, "(N,)")
            check_shape(where, "labels", lab, (n,), "one class index per row of z")
            if n and (lab.min() < 0 or lab.max() >= c):
                raise ValueError(
                    f"{where}: integer labels must lie in [0, {c}), "
                    f"got values in [{lab.min()}, {lab.max()}]"
                )
            y = np.zeros_like(z)
            y[np.arange(n), lab] = 1
            return y
        y = self._c(self._input("forward", "labels", lab))
        check_same_dtype(where, "labels", y, z.dtype, "z")
        check_shape(where, "labels", y, z.shape, "one-hot rows, same shape as z")
        return y

    def backward(self, grad_y: float = 1.0, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Return ``grad_y * (softmax(z) - y) / N``."""
        s, y = self._recall("out", "labels")
        if type(grad_y) is int:  # numpy keeps ints beyond 64 bits as objects
            try:
                grad_y = float(grad_y)
            except OverflowError:
                raise ValueError(f"{self._where('backward')}: grad_y is an integer too large "
                                 f"for a float ({len(str(abs(grad_y)))} digits)") from None
        g = np.asarray(grad_y)
        if g.ndim != 0 or g.dtype.kind not in "fiu":
            raise TypeError(f"{self._where('backward')}: grad_y must be a real scalar, got {grad_y!r}")
        out = check_out(self._where("backward"), out, s.shape, s.dtype, kept={"s": s, "labels": y})
        scale = float(g) / max(s.shape[0], 1)
        return self._kernels.xent_backward(s, y, scale, self._alloc(out, s.shape, s.dtype))
