"""The notebook's two-layer network, its training step, and small optimizers.

:class:`MLP` is the notebook's ``myModel``: input images plus a constant bias
column (``W1`` is ``(785, 100)``), ``relu``, ``W2`` ``(100, 10)``, softmax, log.
It is built from the op classes of one backend (:func:`pyops.get_ops`), so the
same model runs on the numpy reference or on the compiled kernels, in float64
or float32.  :func:`train_one_step` and :func:`test` keep the notebook's names
and return ``(loss, accuracy)`` as Python floats.

The bias column
---------------
The first layer computes ``[x, 1] @ W1``: the last row of ``W1`` is the bias.
The augmented input ``[x, 1]`` of shape ``(N, 785)`` is never rebuilt per step:

* the fast path: build it once per dataset with :meth:`MLP.prepare` (or
  :func:`add_bias_column`) and pass that array to ``forward`` /
  :func:`train_one_step` / :func:`test`; it is used as is, without any copy;
* the notebook path: pass the images, ``(N, 28, 28)`` or ``(N, 784)``, and the
  model copies them into the first 784 columns of an input buffer it keeps per
  batch size, whose column of ones was written once when the buffer was made.
  That costs one copy of the images per call, so loops over the same data
  should prepare it once instead.

Buffers
-------
Activations and gradients are written with ``out=`` into buffers the model
keeps per batch size (the most recent :data:`MLP.MAX_CACHED_SIZES` sizes), so a
full-batch step allocates nothing of size ``(60000, 100)``.  The attributes the
notebook exposes (``h1``, ``h1_relu``, ``h2``, ``h2_soft``, ``h2_log``,
``h2_log_grad``, ``h2_soft_grad``, ``h2_grad``, ``h1_relu_grad``, ``W1_grad``,
``W2_grad``) are those buffers: they are **overwritten by the next call** of
the same batch size; copy them to keep them.  What the methods *return* is
always fresh: losses and accuracies are Python floats, :meth:`MLP.predict`
returns a new array.  ``W1`` and ``W2`` are the live parameters, views into one
flat array :attr:`MLP.params` (``W1_grad``/``W2_grad`` likewise into
:attr:`MLP.grads`), so an optimizer updates both with one set of numpy calls;
assigning ``model.W1 = a`` copies ``a`` into that storage.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _numpy_kernels
from ._blas import one_blas_thread
from ._checks import check_fits_dtype, check_hyperparameter, same_shape_2d
from .backend import get_kernels, get_ops

__all__ = [
    "MLP", "ModelFileError", "train_one_step", "test", "add_bias_column", "compute_loss", "compute_accuracy",
    "SGD", "Adam", "cosine_lr", "LOSSES", "INITS",
]

#: Loss modes of :class:`MLP`.
LOSSES: Tuple[str, ...] = ("notebook", "xent")
#: Weight initialisations of :class:`MLP`.
INITS: Tuple[str, ...] = ("normal", "he")

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
PathLike = Union[str, "os.PathLike[str]"]


def _float_dtype(where: str, dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype!r}") from e
    if dt not in _FLOATS:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dt}")
    return dt


def add_bias_column(
    x: Any,
    dtype: Any = np.float64,
    n_features: Optional[int] = None,
    divide_by: Optional[float] = None,
) -> np.ndarray:
    """Return the images with a constant column of ones appended: ``[x, 1]``.

    Parameters
    ----------
    x : array_like, shape (N, H, W) or (N, d)
        Images (any real dtype); each is flattened to ``d = H * W`` values.
    dtype : float32 or float64, default float64
        dtype of the result.
    n_features : int, optional
        If given, ``d`` must equal it (784 for MNIST).
    divide_by : float, optional
        Divide the values by this after conversion to ``dtype``, e.g. ``255.0``
        for uint8 pixels: the result is then exactly the notebook's ``x / 255.0``
        (for float64) without a float64 copy of the images in between.

    Returns
    -------
    numpy.ndarray, shape (N, d + 1)
        New C-contiguous array; column ``d`` is all ones.

    Examples
    --------
    >>> add_bias_column(np.zeros((2, 2, 2)), np.float32)
    array([[0., 0., 0., 0., 1.],
           [0., 0., 0., 0., 1.]], dtype=float32)
    """
    dt = _float_dtype("add_bias_column", dtype)
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"add_bias_column: x must hold real numbers, got dtype {a.dtype}")
    if a.ndim not in (2, 3):
        raise ValueError(
            f"add_bias_column: x must be (N, H, W) images or (N, d) rows, got shape {a.shape}"
        )
    n = a.shape[0]
    d = int(np.prod(a.shape[1:]))
    if n_features is not None and d != n_features:
        raise ValueError(
            f"add_bias_column: x must have {n_features} values per image, got shape {a.shape}"
        )
    out = np.empty((n, d + 1), dt)
    body = out[:, :d]
    np.copyto(body, a.reshape(n, d), casting="unsafe")
    if divide_by is not None:
        np.divide(body, dt.type(divide_by), out=body)
    out[:, d] = 1
    return out


def compute_loss(log_prob: np.ndarray, labels: np.ndarray) -> float:
    """The notebook's loss: ``mean(sum(-log_prob * labels, axis=1))``, as a Python float.

    Computed as ``-vdot(log_prob, labels) / N``: one pass and no ``(N, c)``
    temporaries (the notebook's expression makes three; at full batch that
    was about 1.3 ms of a float32 step), with numpy's BLAS held to one thread:
    a threaded ``vdot`` (OpenBLAS threads it from about 10000 elements) saves tens of
    microseconds and leaves BLAS's threads spinning for 0.1 s on the cores the
    compiled kernels that follow use.  0.0 for ``N == 0``, as
    :class:`~pyops.SoftmaxCrossEntropy`.
    """
    log_prob, labels = same_shape_2d("compute_loss", log_prob=log_prob, labels=labels)
    n = log_prob.shape[0]
    if not n:
        return 0.0
    with one_blas_thread():
        return -float(np.vdot(log_prob, labels)) / n


def compute_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose largest score is at the one-hot label's position (NaN if N == 0).

    ``argmax(scores) == argmax(labels)`` row by row; :meth:`MLP.accuracy` computes the
    same with its backend's kernel.
    """
    scores, labels = same_shape_2d("compute_accuracy", scores=scores, labels=labels)
    n = scores.shape[0]
    return _numpy_kernels.count_correct(scores, labels) / n if n else float("nan")


class _Buffers:
    """The activation and gradient buffers of one batch size (allocated on first use)."""

    def __init__(self, n: int, n_in: int, n_hidden: int, n_out: int, dtype: np.dtype) -> None:
        self.n, self.n_in, self.dtype = n, n_in, dtype
        self.h1 = np.empty((n, n_hidden), dtype)
        self.h2 = np.empty((n, n_out), dtype)
        self.grad_hidden = np.empty((n, n_hidden), dtype)  # h1_relu_grad (= h2_grad)
        self.grad_logits = np.empty((n, n_out), dtype)      # h2_soft_grad
        self._notebook: Optional[Tuple[np.ndarray, ...]] = None
        self._x: Optional[np.ndarray] = None
        self._h1_relu: Optional[np.ndarray] = None

    def h1_relu(self) -> np.ndarray:
        """The buffer of ``relu(h1)``, made only if someone asks for ``MLP.h1_relu``."""
        if self._h1_relu is None:
            self._h1_relu = np.empty_like(self.h1)
        return self._h1_relu

    def notebook(self) -> Tuple[np.ndarray, ...]:
        """``(h2_soft, h2_log, -label, h2_log_grad)`` buffers of the notebook loss."""
        if self._notebook is None:
            self._notebook = tuple(np.empty_like(self.h2) for _ in range(4))
        return self._notebook

    def x(self) -> np.ndarray:
        """The bias-augmented input buffer; its column of ones is written once, here."""
        if self._x is None:
            self._x = np.empty((self.n, self.n_in + 1), self.dtype)
            self._x[:, self.n_in] = 1
        return self._x


class ModelFileError(ValueError):
    """A file given to :meth:`MLP.load` is not a model written by :meth:`MLP.save`."""


def _layer_sizes(n_in: Any, n_hidden: Any, n_out: Any) -> Tuple[int, int, int]:
    """``(n_in, n_hidden, n_out)`` as ints; ValueError unless each is a positive int."""
    for name, size in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"MLP: {name} must be a positive int, got {size!r}")
    return int(n_in), int(n_hidden), int(n_out)


class MLP:
    """The notebook's network ``log(softmax(relu([x, 1] W1) W2))`` on one backend.

    Parameters
    ----------
    backend : {"numpy", "cython"}, optional
        Whose op classes to use; default the active backend (:func:`pyops.get_ops`).
    dtype : float32 or float64, default float64
        dtype of the weights, activations and gradients.
    loss : {"notebook", "xent"}, default "notebook"
        ``"notebook"``: ``Softmax`` then ``Log``; the loss is
        ``mean(sum(-log_prob * y, axis=1))`` but ``backward(y)`` starts from
        ``-y``, as the notebook does, so the gradients are those of the *sum*
        over the batch (N times the mean's).  ``"xent"``: the fused
        ``SoftmaxCrossEntropy`` op; the same mean loss, computed stably, and
        the gradients of that mean, ``(softmax - y) / N`` at the logits.
    init : {"normal", "he"}, default "normal"
        ``"normal"``: every weight from N(0, 1), as the notebook.  ``"he"``:
        ``W1`` from N(0, 2 / n_in) with a zero bias row, ``W2`` from
        N(0, 2 / (n_hidden + n_out)) (Glorot).
    seed : int, optional
        Seed of the initialisation (``numpy.random.default_rng(seed)``).
    rng : numpy.random.Generator, optional
        Generator for the initialisation; give ``seed`` or ``rng``, not both.
    n_in, n_hidden, n_out : int, default 784, 100, 10
        Layer sizes; ``W1`` is ``(n_in + 1, n_hidden)``, ``W2`` ``(n_hidden, n_out)``.

    Attributes
    ----------
    W1, W2 : numpy.ndarray
        The weights (views into :attr:`params`; assigning copies into them).
    W1_grad, W2_grad : numpy.ndarray
        Gradients of the last :meth:`backward` (views into :attr:`grads`,
        overwritten by the next backward).
    params, grads : numpy.ndarray
        Flat storage of ``(W1, W2)`` and of their gradients: ``W1.T`` row by row
        (``W1`` and ``W1_grad`` are F-contiguous views, the layout in which
        numpy's BLAS computes ``X.T @ G`` fastest here), then ``W2``.
    h1, h1_relu, h2, h2_soft, h2_log : numpy.ndarray
        Activations of the last :meth:`forward`; buffers overwritten by the next
        call with the same batch size.  ``h2_soft``/``h2_log`` are None in
        ``"xent"`` mode.  ``h2`` comes from ``h1`` in one pass over the rows
        (``relu_matmul_forward`` of the backend's kernel table), which on the
        compiled backend does not keep ``relu(h1)``: there ``h1_relu`` is
        computed into its buffer when first read after a forward (backward
        reads ``h1`` again instead), so an array read before a forward keeps
        its values until ``h1_relu`` is read again.
    h2_log_grad, h2_soft_grad, h2_grad, h1_relu_grad : numpy.ndarray
        Gradients of the last :meth:`backward`, named as in the notebook (each
        is what the op of that name returned: ``h2_soft_grad`` is the gradient
        at the logits, ``h1_relu_grad`` at ``h1``).  ``h2_grad``, the gradient
        at ``h1_relu``, is the same buffer as ``h1_relu_grad``: the second
        layer's product and relu run backward as one (``relu_matmul_backward``
        of the backend's kernel table), so it is never kept unmasked.
        ``h2_log_grad`` is None in ``"xent"`` mode.
    h1_grad : None
        The gradient at the input images is never computed (the first
        ``Matmul`` has ``input_grad=False``).

    Examples
    --------
    >>> import numpy as np, pyops
    >>> model = pyops.MLP(seed=0, n_in=4, n_hidden=3, n_out=2)
    >>> x = model.prepare(np.ones((5, 4)))       # (5, 5): bias column built once
    >>> y = np.eye(2)[[0, 1, 0, 1, 0]]
    >>> loss = model.forward(x, y)
    >>> model.backward(y)
    >>> model.W1_grad.shape, model.W2_grad.shape
    ((5, 3), (3, 2))
    """

    #: How many batch sizes keep their buffers (e.g. batch, last batch, test set).
    MAX_CACHED_SIZES = 4

    def __init__(
        self,
        backend: Optional[str] = None,
        dtype: Any = np.float64,
        *,
        loss: str = "notebook",
        init: str = "normal",
        seed: Optional[int] = None,
        rng: Optional[np.random.Generator] = None,
        n_in: int = 784,
        n_hidden: int = 100,
        n_out: int = 10,
    ) -> None:
        self.dtype = _float_dtype("MLP", dtype)
        if loss not in LOSSES:
            raise ValueError(f"MLP: loss must be one of {LOSSES}, got {loss!r}")
        if init not in INITS:
            raise ValueError(f"MLP: init must be one of {INITS}, got {init!r}")
        sizes = _layer_sizes(n_in, n_hidden, n_out)
        if seed is not None and rng is not None:
            raise ValueError("MLP: give seed or rng, not both")
        if seed is not None:
            message = f"MLP: seed must be an integer >= 0 or None (or pass rng=), got {seed!r}"
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
                raise TypeError(message)
            if seed < 0:
                raise ValueError(message)
        self.loss_mode = loss
        self.init = init
        self.n_in, self.n_hidden, self.n_out = sizes

        ops = get_ops(backend)
        self.backend: str = ops.backend
        self.mul_h1 = ops.Matmul(input_grad=False)
        self.softmax = ops.Softmax()
        self.log = ops.Log()
        self.xent = ops.SoftmaxCrossEntropy()
        # the second layer (relu, then W2) one pass each way; accuracy's row-argmax count
        self._kernels = get_kernels(self.backend)

        k = (self.n_in + 1) * self.n_hidden
        size = k + self.n_hidden * self.n_out
        self.params = np.zeros(size, self.dtype)
        self.grads = np.zeros(size, self.dtype)
        # W1 and its gradient are stored transposed (F-contiguous views): numpy's BLAS writes
        # X.T @ G into that layout faster (full batch, this machine's OpenBLAS: 62 against 84
        # ms in float64, 1.2 ms less for both products in float32) and reads W1 as fast.  The
        # cost is in small batches: X @ W1 on 128 rows took 120 instead of 103 us (float32,
        # one BLAS thread; about 3% of a default-recipe step).
        self._W1 = self.params[:k].reshape(self.n_hidden, self.n_in + 1).T
        self._W2 = self.params[k:].reshape(self.n_hidden, self.n_out)
        self._W1_grad = self.grads[:k].reshape(self.n_hidden, self.n_in + 1).T
        self._W2_grad = self.grads[k:].reshape(self._W2.shape)
        self._init_weights(rng if rng is not None else np.random.default_rng(seed))

        self._cache: Dict[int, _Buffers] = {}
        self._last: Optional[_Buffers] = None   # buffers of the last forward
        self._xent_labels: Any = None           # labels the fused op last saw in forward
        self.h1 = self.h2 = None
        self._h1_relu_fresh = False             # whether h1_relu's buffer holds relu(h1)
        self.h2_soft = self.h2_log = None
        self.h2_log_grad = self.h2_soft_grad = self.h2_grad = self.h1_relu_grad = None
        self.h1_grad = None
        self.metadata: Dict[str, Any] = {}  # what MLP.load read from the file's metadata

    # ------------------------------------------------------------------ weights
    def _init_weights(self, rng: np.random.Generator) -> None:
        n_in, h, c = self.n_in, self.n_hidden, self.n_out
        W1 = rng.standard_normal((n_in + 1, h))
        W2 = rng.standard_normal((h, c))
        if self.init == "he":
            W1 *= math.sqrt(2.0 / n_in)
            W1[n_in] = 0.0
            W2 *= math.sqrt(2.0 / (h + c))
        self._W1[...] = W1
        self._W2[...] = W2

    def _set(self, name: str, target: np.ndarray, value: Any) -> None:
        a = np.asarray(value)
        if a.shape != target.shape:
            raise ValueError(f"MLP: {name} must have shape {target.shape}, got {a.shape}")
        if a.dtype.kind != "f":
            raise TypeError(f"MLP: {name} must be a float array, got dtype {a.dtype}")
        if a is not target:
            target[...] = a

    @property
    def W1(self) -> np.ndarray:
        """First-layer weights ``(n_in + 1, n_hidden)``; the last row is the bias.  An
        F-contiguous view: the storage holds ``W1.T`` (see :attr:`params`)."""
        return self._W1

    @W1.setter
    def W1(self, value: Any) -> None:
        self._set("W1", self._W1, value)

    @property
    def W2(self) -> np.ndarray:
        """Second-layer weights ``(n_hidden, n_out)``."""
        return self._W2

    @W2.setter
    def W2(self, value: Any) -> None:
        self._set("W2", self._W2, value)

    @property
    def W1_grad(self) -> np.ndarray:
        """Gradient of ``W1`` from the last :meth:`backward` (a buffer)."""
        return self._W1_grad

    @property
    def W2_grad(self) -> np.ndarray:
        """Gradient of ``W2`` from the last :meth:`backward` (a buffer)."""
        return self._W2_grad

    def __repr__(self) -> str:
        return (
            f"pyops.MLP(backend={self.backend!r}, dtype={self.dtype.name!r}, loss={self.loss_mode!r}, "
            f"sizes=({self.n_in}+1, {self.n_hidden}, {self.n_out}))"
        )

    # ------------------------------------------------------------------- inputs
    def prepare(self, x: Any) -> np.ndarray:
        """Return ``[x, 1]`` in the model's dtype, to pass to :meth:`forward` many times.

        Parameters
        ----------
        x : array_like of float, shape (N, 28, 28), (N, 784) or (N, 785)
            Images in [0, 1], or an array already augmented (returned as is if
            it has the model's dtype).

        Returns
        -------
        numpy.ndarray, shape (N, n_in + 1)
            C-contiguous; :meth:`forward` uses it without copying.
        """
        a = self._check_x("MLP.prepare", x)
        if a.ndim == 2 and a.shape[1] == self.n_in + 1:
            self._check_bias("MLP.prepare", a)
            return a if a.dtype == self.dtype and a.flags.c_contiguous else np.ascontiguousarray(a, self.dtype)
        return add_bias_column(a, self.dtype)

    def _check_x(self, where: str, x: Any) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype.kind != "f":
            raise TypeError(
                f"{where}: x must be float images in [0, 1], got dtype {a.dtype}"
                + (" (divide uint8 pixels by 255.0 first)" if a.dtype.kind in "iub" else "")
            )
        d = self.n_in
        ok = (a.ndim == 2 and a.shape[1] in (d, d + 1)) or (
            a.ndim == 3 and a.shape[1] * a.shape[2] == d
        )
        if not ok:
            raise ValueError(
                f"{where}: x must have shape (N, {d}) or (N, H, W) with H*W = {d}, "
                f"or be bias-augmented (N, {d + 1}); got {a.shape}"
            )
        if a.shape[0] == 0:
            raise ValueError(f"{where}: x has no rows")
        return a

    def _check_bias(self, where: str, a: np.ndarray) -> None:
        # the column copied first: comparing the strided column itself took twice as long
        # (float32 (60000, 785), out of the caches: 0.46 against 0.25 ms)
        if not np.all(a[:, self.n_in].copy() == 1):
            raise ValueError(
                f"{where}: an (N, {self.n_in + 1}) x is taken as bias-augmented, but its last "
                f"column is not all ones; build it with model.prepare(images)"
            )

    def _input(self, x: Any) -> np.ndarray:
        """The augmented input of ``x``: itself if already augmented, else the buffer."""
        a = self._check_x("MLP.forward", x)
        n = a.shape[0]
        if a.ndim == 2 and a.shape[1] == self.n_in + 1:
            if a.dtype != self.dtype:
                raise TypeError(
                    f"MLP.forward: the bias-augmented x has dtype {a.dtype} but the model is "
                    f"{self.dtype}; build it with model.prepare(images)"
                )
            self._check_bias("MLP.forward", a)
            return a
        buf = self._buffers(n).x()
        np.copyto(buf[:, : self.n_in], a.reshape(n, self.n_in), casting="same_kind")
        return buf

    def _labels(self, where: str, y: Any, n: int) -> np.ndarray:
        a = np.asarray(y)
        if a.dtype.kind != "f":
            raise TypeError(
                f"{where}: y must be one-hot float rows (N, {self.n_out}), got dtype {a.dtype}"
                + (" (use pyops.data.one_hot(labels))" if a.dtype.kind in "iub" else "")
            )
        if a.shape != (n, self.n_out):
            raise ValueError(
                f"{where}: y must have shape ({n}, {self.n_out}) (one-hot rows matching x), got {a.shape}"
            )
        return a if a.dtype == self.dtype else a.astype(self.dtype)

    def _buffers(self, n: int) -> _Buffers:
        b = self._cache.get(n)
        if b is None:
            if len(self._cache) >= self.MAX_CACHED_SIZES:
                del self._cache[next(iter(self._cache))]  # the oldest size
            b = self._cache[n] = _Buffers(n, self.n_in, self.n_hidden, self.n_out, self.dtype)
        return b

    # ---------------------------------------------------------------- the passes
    def forward(self, x: Any, y: Any = None) -> Optional[float]:
        """Run the network on ``x``; return the mean loss if labels ``y`` are given.

        Parameters
        ----------
        x : array_like of float
            ``(N, 28, 28)`` or ``(N, 784)`` images in [0, 1] (copied into the
            input buffer), or an ``(N, 785)`` array from :meth:`prepare` (used
            without a copy; it must have the model's dtype).
        y : array_like of float, shape (N, n_out), optional
            One-hot labels.

        Returns
        -------
        float or None
            ``mean(sum(-log_prob * y, axis=1))`` if ``y`` is given, else None.
            The activations are in the buffers ``h1`` ... ``h2_log``.
        """
        X = self._input(x)
        b = self._buffers(X.shape[0])
        self._last = b
        self._xent_labels = None
        self._h1_relu_fresh = False
        self.h1 = self.mul_h1.forward(X, self._W1, out=b.h1)
        # Relu.forward then Matmul.forward in one pass over the (N, n_hidden) rows on the
        # compiled backend; the same numpy calls on numpy
        keep = self._kernels.relu_matmul_keeps_h()  # numpy computes relu(h1) whole anyway
        self._kernels.relu_matmul_forward(self.h1, self._W2, b.h1_relu() if keep else None, b.h2)
        self.h2 = b.h2
        self._h1_relu_fresh = keep
        if self.loss_mode == "notebook":
            soft, log, _, _ = b.notebook()
            self.h2_soft = self.softmax.forward(self.h2, out=soft)
            self.h2_log = self.log.forward(self.h2_soft, out=log)
        if y is None:
            return None
        Y = self._labels("MLP.forward", y, X.shape[0])
        if self.loss_mode == "notebook":
            return compute_loss(self.h2_log, Y)
        loss = self.xent.forward(self.h2, Y)
        self._xent_labels = y
        return float(loss)

    def backward(self, y: Any) -> None:
        """Compute ``W1_grad`` and ``W2_grad`` for the labels ``y`` of the last forward.

        ``"notebook"`` mode starts from ``-y`` at the log-probabilities, as the
        notebook (gradient of the summed loss); ``"xent"`` mode uses the fused
        op's ``(softmax - y) / N`` (gradient of the mean loss).  The gradient at
        the input is not computed.
        """
        b = self._last
        if b is None:
            raise RuntimeError("MLP.backward called before forward")
        Y = self._labels("MLP.backward", y, b.n)
        if self.loss_mode == "notebook":
            _, _, neg_y, log_grad = b.notebook()
            np.negative(Y, out=neg_y)
            self.h2_log_grad = self.log.backward(neg_y, out=log_grad)
            self.h2_soft_grad = self.softmax.backward(self.h2_log_grad, out=b.grad_logits)
        else:
            if self._xent_labels is None or self._xent_labels is not y:
                self.xent.forward(self.h2, Y)
            self.h2_log_grad = None
            self.h2_soft_grad = self.xent.backward(1.0, out=b.grad_logits)
        # Matmul.backward then Relu.backward from h1 in one pass over the (N, n_hidden) rows
        # on the compiled backend (relu(h1) again, as it reads h1); numpy calls on numpy
        self._kernels.relu_matmul_backward(self.h2_soft_grad, self.h1, self._W2,
                                           b.grad_hidden, self._W2_grad)
        self.h2_grad = self.h1_relu_grad = b.grad_hidden
        self.h1_grad, _ = self.mul_h1.backward(self.h1_relu_grad, out=(None, self._W1_grad))

    @property
    def h1_relu(self) -> Optional[np.ndarray]:
        """``relu(h1)`` of the last forward (None before one): a buffer, filled when first
        read after each forward, since the passes themselves do not need it kept."""
        b = self._last
        if b is None:
            return None
        if not self._h1_relu_fresh:
            self._kernels.relu_forward(b.h1, b.h1_relu())
            self._h1_relu_fresh = True
        return b.h1_relu()

    def scores(self) -> np.ndarray:
        """The last forward's class scores (a buffer): ``h2_log``, or the logits ``h2`` in xent mode."""
        if self._last is None:
            raise RuntimeError("MLP.scores called before forward")
        return self.h2_log if self.loss_mode == "notebook" else self.h2

    def accuracy(self, y: Any) -> float:
        """Accuracy of the last forward against one-hot ``y``, as a Python float.

        As :func:`compute_accuracy`, in one pass on the compiled backend (numpy's two
        ``argmax`` calls took about 2% of a full-batch float32 step).
        """
        if self._last is None:
            raise RuntimeError("MLP.accuracy called before forward")
        scores = self.scores()
        n = scores.shape[0]  # >= 1: forward refuses empty batches
        labels = np.ascontiguousarray(self._labels("MLP.accuracy", y, n))
        return self._kernels.count_correct(scores, labels) / n

    def predict(self, x: Any) -> np.ndarray:
        """Class index of each row of ``x``: a new int array of shape (N,)."""
        self.forward(x)
        return np.argmax(self.scores(), axis=1)

    # -------------------------------------------------------------- persistence
    def save(self, path: PathLike, **metadata: Any) -> None:
        """Write the weights and the model's settings to an ``.npz`` file.

        Extra keyword arguments (JSON-serialisable) are stored as ``metadata``.
        """
        config = dict(
            dtype=self.dtype.name, loss=self.loss_mode, init=self.init,
            n_in=self.n_in, n_hidden=self.n_hidden, n_out=self.n_out,
        )
        with open(os.fspath(path), "wb") as f:
            np.savez(
                f, W1=self._W1, W2=self._W2,
                config=np.array(json.dumps(config)), metadata=np.array(json.dumps(metadata)),
            )

    @classmethod
    def load(cls, path: PathLike, backend: Optional[str] = None) -> "MLP":
        """Return the model saved by :meth:`save`, on ``backend`` (default: the active one).

        Raises :class:`ModelFileError` (a ValueError) if ``path`` is not such a file.
        """
        not_saved = f"MLP.load: {os.fspath(path)} is not a model written by MLP.save"
        try:
            f = np.load(os.fspath(path), allow_pickle=False)
        except (ValueError, EOFError) as e:  # not .npy/.npz (numpy then suggests pickle)
            raise ModelFileError(f"{not_saved} (not an .npz archive)") from e
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ModelFileError(f"{not_saved} (a single .npy array, not an .npz archive)")
        with f:
            missing = {"W1", "W2", "config"} - set(f.files)
            if missing:
                raise ModelFileError(f"{not_saved} (missing {sorted(missing)})")
            try:
                config = json.loads(str(f["config"]))
                metadata = json.loads(str(f["metadata"])) if "metadata" in f.files else {}
                W1, W2 = f["W1"], f["W2"]
                # the sizes are checked before the model is built: a corrupt one must not
                # allocate its weights
                n_in, n_hidden, n_out = _layer_sizes(config["n_in"], config["n_hidden"], config["n_out"])
                settings = dict(dtype=config["dtype"], loss=config["loss"],
                                init=config.get("init", "normal"), n_in=n_in,
                                n_hidden=n_hidden, n_out=n_out)
            except (ValueError, KeyError, TypeError) as e:
                raise ModelFileError(f"{not_saved} (bad config: {e!r})") from e
        if W1.shape != (n_in + 1, n_hidden) or W2.shape != (n_hidden, n_out):
            raise ModelFileError(f"{not_saved} (weights of shapes {W1.shape} and {W2.shape} do not "
                                 f"fit layer sizes {n_in}+1-{n_hidden}-{n_out})")
        get_ops(backend)  # an unknown or unbuilt backend is the caller's error, not the file's
        try:
            model = cls(backend, seed=0, **settings)
            model.W1, model.W2 = W1, W2
        except (ValueError, TypeError) as e:  # a dtype, loss or init MLP refuses; non-float weights
            raise ModelFileError(f"{not_saved} ({e})") from e
        model.metadata = metadata
        return model


def train_one_step(model: MLP, x: Any, y: Any, lr: float = 1e-5) -> Tuple[float, float]:
    """One step of plain gradient descent, as the notebook: ``W -= lr * W_grad``.

    Parameters
    ----------
    model : MLP
    x : array_like
        Images ``(N, 28, 28)`` / ``(N, 784)`` in [0, 1], or ``model.prepare(images)``
        (faster: no copy).
    y : array_like, shape (N, 10)
        One-hot labels.
    lr : float, default 1e-5
        Learning rate (the notebook's, for its summed-loss gradient): finite and > 0.

    Returns
    -------
    (loss, accuracy) : tuple of float
        Of the forward pass *before* the update, as the notebook prints them.
    """
    lr = check_hyperparameter("train_one_step", "lr", lr, positive=True)
    loss = model.forward(x, y)
    accuracy = model.accuracy(y)
    model.backward(y)
    model.params -= lr * model.grads
    return float(loss), float(accuracy)


def test(model: MLP, x: Any, y: Any) -> Tuple[float, float]:
    """Return ``(loss, accuracy)`` of ``model`` on images ``x`` and one-hot ``y``, as floats."""
    loss = model.forward(x, y)
    return float(loss), model.accuracy(y)


test.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported


# ---------------------------------------------------------------------------
# Optimizers: numpy updates, in place, whatever the backend of the model
# ---------------------------------------------------------------------------


def _as_list(arrays: Any) -> List[np.ndarray]:
    return [arrays] if isinstance(arrays, np.ndarray) else list(arrays)


class _Optimizer:
    def __init__(self, params: Any, lr: float) -> None:
        self.params = _as_list(params)
        for p in self.params:
            if not (isinstance(p, np.ndarray) and p.dtype in _FLOATS and p.flags.writeable):
                raise TypeError(
                    f"{type(self).__name__}: params must be writeable float32/float64 arrays"
                )
        self.lr = check_hyperparameter(type(self).__name__, "lr", lr, positive=True)

    def _step_lr(self, lr: Optional[float]) -> float:
        """The learning rate of this step: ``self.lr``, or the override (0 allowed: a schedule's end)."""
        if lr is None:
            return self.lr
        return check_hyperparameter(f"{type(self).__name__}.step", "lr", lr)

    def _grads(self, grads: Any, contiguous: bool = False) -> List[np.ndarray]:
        where = f"{type(self).__name__}.step"
        gs = _as_list(grads)
        if len(gs) != len(self.params) or any(
            not isinstance(g, np.ndarray) or g.shape != p.shape for g, p in zip(gs, self.params)
        ):
            raise ValueError(f"{where}: grads must be arrays matching params one to one in shape")
        for g, p in zip(gs, self.params):
            if g.dtype != p.dtype:
                raise TypeError(f"{where}: a gradient has dtype {g.dtype}, its parameter {p.dtype}")
        return [np.ascontiguousarray(g) for g in gs] if contiguous else gs


class SGD(_Optimizer):
    """Gradient descent with optional momentum, updating arrays in place.

    ``v = momentum * v + g`` then ``p -= lr * v`` (PyTorch's form); with
    ``momentum=0`` it is exactly the notebook's ``p -= lr * g``.

    Parameters
    ----------
    params : ndarray or sequence of ndarray
        Arrays updated in place by :meth:`step`.
    lr : float
        Learning rate (a :meth:`step` call may override it, for schedules).
    momentum : float, default 0
        Momentum coefficient in [0, 1).
    weight_decay : float, default 0
        L2 penalty: ``g + weight_decay * p`` is used for ``g``.
    """

    def __init__(self, params: Any, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum = check_hyperparameter("SGD", "momentum", momentum)
        if not self.momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        self.weight_decay = check_hyperparameter("SGD", "weight_decay", weight_decay)
        self._v = [np.zeros_like(p) for p in self.params] if momentum else None
        self._tmp = [np.empty(p.shape, p.dtype) for p in self.params]

    def step(self, grads: Any, lr: Optional[float] = None) -> None:
        """Update every parameter with its gradient; ``lr`` overrides ``self.lr`` for this step."""
        lr = self._step_lr(lr)
        for i, (p, g) in enumerate(zip(self.params, self._grads(grads))):
            tmp = self._tmp[i]
            if self.weight_decay:
                np.multiply(p, self.weight_decay, out=tmp)
                tmp += g
                g = tmp
            if self._v is not None:
                v = self._v[i]
                v *= self.momentum
                v += g
                g = v
            np.multiply(g, lr, out=tmp)
            p -= tmp


class Adam(_Optimizer):
    """Adam (Kingma & Ba), with decoupled weight decay (AdamW) if asked, in place.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` with the bias corrections
    ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)``.

    Moments that decay below the smallest normal float are set to zero.  Without this, the
    moments of weights whose gradient is zero for a while (MNIST's rarely-lit border pixels)
    decay into subnormal numbers and stay there (``0.9 * m`` rounds back up to the smallest
    subnormal), and arithmetic on subnormals is about a hundred times slower on x86: the
    update of the 785-100-10 network took 1.2 ms instead of 0.2 ms.  The flush changes each
    update by less than ``lr * 1e-30`` (float32).  The process's flush-to-zero mode is not
    touched.

    Parameters
    ----------
    params : ndarray or sequence of ndarray
        Arrays updated in place by :meth:`step`.
    lr : float, default 1e-3
        Learning rate (a :meth:`step` call may override it, for schedules).
    betas : tuple, list or 1-D array of two floats in [0, 1), default (0.9, 0.999)
        Decay rates of the running means of the gradient and of its square.
    eps : float, default 1e-8
    weight_decay : float, default 0
        Decoupled decay: ``p -= lr * weight_decay * p`` each step.
    backend : {"numpy", "cython"}, optional
        Whose update runs (default: the active backend, as for :class:`MLP`): numpy's
        twenty array operations, or the compiled kernel's single pass over ``p``, ``g``, ``m``
        and ``v`` (the same arithmetic; it needs C- or F-contiguous ``params``).

    Examples
    --------
    >>> p = np.array([5.0, -3.0])
    >>> opt = Adam(p, lr=0.1, backend="numpy")
    >>> for _ in range(500):
    ...     opt.step(2 * p)           # gradient of sum(p**2)
    >>> bool(np.all(np.abs(p) < 1e-2))
    True
    """

    def __init__(self, params: Any, lr: float = 1e-3,
                 betas: Union[Tuple[float, float], List[float], np.ndarray] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, backend: Optional[str] = None):
        super().__init__(params, lr)
        self.backend: str = get_ops(backend).backend
        self._kernels = get_kernels(self.backend)
        # the compiled update runs over each array's memory in order: an F-contiguous param
        # (MLP.W1) as its C-contiguous transpose, with moments of that shape
        contiguous = self._kernels.CONTIGUOUS_INPUTS
        if contiguous and not all(p.flags.c_contiguous or p.flags.f_contiguous for p in self.params):
            raise ValueError(
                f"Adam: the {self.backend} backend updates C- or F-contiguous params in place; "
                "got an array with other strides (pass a contiguous array, or backend='numpy')"
            )
        self._views = [p.T if contiguous and not p.flags.c_contiguous else p for p in self.params]
        if not (isinstance(betas, (tuple, list, np.ndarray)) and np.ndim(betas) == 1 and len(betas) == 2):
            raise TypeError(f"Adam: betas must be a pair of numbers in [0, 1), got {betas!r}")
        b1, b2 = (check_hyperparameter("Adam", f"betas[{i}]", b) for i, b in enumerate(betas))
        for i, b in enumerate((b1, b2)):
            if not b < 1:
                raise ValueError(f"Adam: betas[{i}] must be in [0, 1), got {betas[i]}")
        self.betas = (b1, b2)
        self.eps = check_hyperparameter("Adam", "eps", eps)
        for p in self.params:  # the update computes in each parameter's dtype
            check_fits_dtype("Adam", "eps", self.eps, p.dtype)
        self.weight_decay = check_hyperparameter("Adam", "weight_decay", weight_decay)
        self.t = 0
        self._m = [np.zeros(p.shape, p.dtype) for p in self._views]
        self._v = [np.zeros(p.shape, p.dtype) for p in self._views]
        # scratch for the update, if the backend's needs any (numpy: two arrays; compiled: none)
        self._work = [self._kernels.adam_workspace(p) for p in self._views]

    def step(self, grads: Any, lr: Optional[float] = None) -> None:
        """Update every parameter with its gradient; ``lr`` overrides ``self.lr`` for this step."""
        lr = self._step_lr(lr)
        gs = self._grads(grads)
        if self._kernels.CONTIGUOUS_INPUTS:  # each gradient laid out as its param's view
            gs = [np.ascontiguousarray(g if v is p else g.T)
                  for g, p, v in zip(gs, self.params, self._views)]
        self.t += 1
        b1, b2 = self.betas
        step_size = lr / (1.0 - b1 ** self.t)
        inv_root_c2 = 1.0 / math.sqrt(1.0 - b2 ** self.t)
        decay = 1.0 - lr * self.weight_decay
        for p, g, m, v, work in zip(self._views, gs, self._m, self._v, self._work):
            self._kernels.adam_update(p, g, m, v, b1, b2, self.eps, decay, step_size,
                                      inv_root_c2, work)


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0,
              final_lr: float = 0.0) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine decay to ``final_lr``.

    Examples
    --------
    >>> cosine_lr(1.0, 0, 10), cosine_lr(1.0, 5, 10), cosine_lr(1.0, 10, 10)
    (1.0, 0.5, 0.0)
    """
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0), span) / span
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
