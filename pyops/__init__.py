"""pyops: neural-network ops with hand-derived gradients, numpy reference and backend switch.

Ops (``Matmul``, ``Relu``, ``Softmax``, ``Log``, ``SoftmaxCrossEntropy``) have
``forward(...)``, ``backward(grad_y)`` and a ``mem`` dict.  The classes here are
the pure-numpy reference; :mod:`kernels` has the same classes with compiled
arithmetic.  Choose between them with :func:`set_backend`, :func:`use_backend`
or ``PYOPS_BACKEND``, and get the active classes from :func:`get_ops`.
"""
from __future__ import annotations

from .backend import (
    BACKENDS,
    available_backends,
    get_backend,
    get_ops,
    set_backend,
    use_backend,
)
from .ops import Log, Matmul, Op, Relu, Softmax, SoftmaxCrossEntropy
from .model import MLP, test, train_one_step

__version__ = "0.1.0"

__all__ = [
    "Op", "Matmul", "Relu", "Softmax", "Log", "SoftmaxCrossEntropy",
    "BACKENDS", "available_backends", "get_backend", "get_ops", "set_backend", "use_backend",
    "set_num_threads", "get_num_threads",
    "MLP", "train_one_step", "test",
]


def set_num_threads(n: int) -> None:
    """Use at most ``n`` threads in each compiled kernel call (the ``cython`` backend).

    ``n`` is an integer from 1 to ``kernels.MAX_THREADS`` (TypeError or ValueError
    otherwise).  The numpy backend's only threads are those of numpy's BLAS (``Matmul``),
    which ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` set before start-up.
    Raises ImportError if the compiled extension is not built.
    """
    get_ops("cython")
    import kernels

    kernels.set_num_threads(n)


def get_num_threads() -> int:
    """The most threads a compiled kernel call uses (ImportError if not built)."""
    get_ops("cython")
    import kernels

    return kernels.get_num_threads()


from .backend import _from_environment  # noqa: E402

_from_environment()
del _from_environment
