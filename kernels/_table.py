"""The compiled kernel table: the functions of :mod:`pyops._numpy_kernels`, compiled.

Each function has the signature of its numpy twin and hands the compiled module
flat (elementwise ops) or (N, c) C-contiguous views.  The op classes in
:mod:`pyops.ops` have already checked dtypes, shapes, contiguity and overlap.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from pyops._checks import (count_correct_inputs, relu_matmul_forward_inputs, relu_matmul_inputs,
                           warn_log_domain)
from pyops._numpy_kernels import _relu_matmul_backward_apart, _relu_matmul_forward_apart

from . import _matmul
from ._dispatch import load

_k = load()

CONTIGUOUS_INPUTS = True  # the op classes pass C-contiguous arrays


def relu_forward(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    _k.relu_forward(x.reshape(-1), out.reshape(-1))
    return out


def relu_backward(x: np.ndarray, g: np.ndarray, out: np.ndarray) -> np.ndarray:
    _k.relu_backward(x.reshape(-1), g.reshape(-1), out.reshape(-1))
    return out


def softmax_forward(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    _k.softmax_forward(x, out)
    return out


def softmax_backward(s: np.ndarray, g: np.ndarray, out: np.ndarray) -> np.ndarray:
    _k.softmax_backward(s, g, out)
    return out


def log_forward(x: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    if _k.log_forward(x.reshape(-1), eps, out.reshape(-1)):  # maybe some x + eps <= 0
        warn_log_domain(x, eps)
    return out


def log_backward(x: np.ndarray, g: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    _k.log_backward(x.reshape(-1), g.reshape(-1), eps, out.reshape(-1))
    return out


def xent_forward(z: np.ndarray, y: np.ndarray, s_out: np.ndarray) -> float:
    n = z.shape[0]
    return 0.0 if n == 0 else _k.softmax_cross_entropy(z, y, s_out) / n


def xent_backward(s: np.ndarray, y: np.ndarray, scale: float, out: np.ndarray) -> np.ndarray:
    _k.scaled_difference(s.reshape(-1), y.reshape(-1), scale, out.reshape(-1))
    return out


def matmul(a: np.ndarray, b: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    """As :func:`pyops._numpy_kernels.matmul`; large products split over the kernels' threads,
    numpy's BLAS held to one (:mod:`kernels._matmul`).  ``out`` must not overlap ``a`` or
    ``b`` (the op classes check)."""
    return _matmul.matmul(a, b, out, _k)


def count_correct(scores: np.ndarray, labels: np.ndarray) -> int:
    # no op class in front of this one: check here what the unchecked loop relies on
    return _k.count_correct(*count_correct_inputs("count_correct", scores, labels))


#: The (N, k) output of relu_matmul_forward (h) or _backward (dh) is written past the caches
#: (non-temporal stores) from this many bytes: beyond the last-level cache it goes to memory
#: anyway, and stores through the caches first read every line they write (the forward on
#: (60000, 100) x 10 float32, one thread: 2.2 ms streamed, 3.2 ms through the caches).
STREAM_MIN_BYTES = 8 << 20


def relu_matmul_forward(x: np.ndarray, W: np.ndarray, out_h: Optional[np.ndarray],
                        out_y: np.ndarray) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """As :func:`pyops._numpy_kernels.relu_matmul_forward`, in one pass over the rows."""
    relu_matmul_forward_inputs("relu_matmul_forward", x, W, out_h, out_y)
    if not _k.RELU_MATMUL_FUSED:  # this build's one-pass kernel is slower: relu, then BLAS
        return _relu_matmul_forward_apart(x, W, out_h, out_y, relu_forward)
    return _relu_matmul_forward_on(_k, x, W, out_h, out_y)


def relu_matmul_keeps_h() -> bool:
    """As :func:`pyops._numpy_kernels.relu_matmul_keeps_h`: only where this build runs relu and
    BLAS apart; the one-pass kernel needs eight or four rows of ``relu(x)`` at a time."""
    return not _k.RELU_MATMUL_FUSED


def _relu_matmul_forward_on(module, x, W, out_h, out_y, stream=None):
    """:func:`relu_matmul_forward` on a given compiled ``module`` (a CPU variant), unchecked;
    ``stream``: write ``out_h`` past the caches (default: from :data:`STREAM_MIN_BYTES`)."""
    wp = _padded_rows(module, W)
    k, cp = wp.shape
    # per thread: 8 rows of h (streamed or not kept) and 8 rows of y
    work = _work_rows(module.get_num_threads(), 8 * (k + cp), x.dtype)
    if stream is None:
        stream = out_h is not None and out_h.nbytes >= STREAM_MIN_BYTES
    module.relu_matmul_forward(x, wp, out_h, out_y, work, stream)
    return out_h, out_y


def _aligned_zeros(rows, cols, dtype):
    """A zeroed C-contiguous (rows, cols) array that starts on a 64-byte boundary (a cache
    line, and an AVX-512 vector): its rows do too if they are whole lines long.

    For the one-pass kernels' W copies and work rows, which they load and store as whole
    vectors: numpy's small arrays start 16 bytes past a line, and every vector access to
    them then splits across two (relu_matmul_backward, float32 (60000, 100) x 10, one
    thread, in a C harness: 2.40 ms with W^T and the work row aligned, 2.57-3.44 ms 16
    bytes off)."""
    dtype = np.dtype(dtype)
    nbytes = rows * cols * dtype.itemsize
    buf = np.zeros(nbytes + 64, np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start:start + nbytes].view(dtype).reshape(rows, cols)


def _work_rows(threads, values, dtype):
    """Zeroed work rows, one per thread, of at least ``values`` values: whole 64-byte lines,
    each row on a line (:func:`_aligned_zeros`)."""
    per_line = 64 // np.dtype(dtype).itemsize
    return _aligned_zeros(threads, -(-values // per_line) * per_line, dtype)


def _padded_rows(module, a):
    """A copy of the 2-D ``a`` with its rows zero-padded to whole vectors of ``module``, from
    a 64-byte boundary (every row then starts on one where vectors are 64 bytes wide)."""
    lanes = module.RELU_MATMUL_LANES[a.dtype.name]
    rows, cols = a.shape
    out = _aligned_zeros(rows, -(-cols // lanes) * lanes, a.dtype)
    out[:, :cols] = a
    return out


def _backward_work_values(module, dtype, k, kp, c):
    """Values per work row of ``module.relu_matmul_backward``, one row per thread: its part
    of g^T @ relu(x) and a block sum, (c, kp) each; four rows of dx and a vector (4 k +
    lanes); four rows of relu(x), kp apart, from a 64-byte boundary (4 kp values and 64
    bytes)."""
    lanes = module.RELU_MATMUL_LANES[dtype.name]
    return 2 * c * kp + 4 * k + lanes + 4 * kp + 64 // dtype.itemsize


def _backward_work(module, dtype, threads, k, kp, c):
    """The zeroed work rows of ``module.relu_matmul_backward`` (:func:`_backward_work_values`)."""
    return _work_rows(threads, _backward_work_values(module, dtype, k, kp, c), dtype)


def relu_matmul_backward(g: np.ndarray, x: np.ndarray, W: np.ndarray, out_dx: np.ndarray,
                         out_dW: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """As :func:`pyops._numpy_kernels.relu_matmul_backward`, in one pass over the rows: relu
    is applied to ``x`` as it is read."""
    relu_matmul_inputs("relu_matmul_backward", g, x, W, out_dx, out_dW)
    if not _k.RELU_MATMUL_FUSED:  # this build's one-pass kernel is slower: four passes
        return _relu_matmul_backward_apart(g, x, W, out_dx, out_dW, relu_forward, relu_backward)
    return _relu_matmul_backward_on(_k, g, x, W, out_dx, out_dW)


def _relu_matmul_backward_on(module, g, x, W, out_dx, out_dW):
    """:func:`relu_matmul_backward` on a given compiled ``module`` (a CPU variant), unchecked."""
    k = W.shape[0]
    wt = _padded_rows(module, W.T)
    c, kp = wt.shape
    work = _backward_work(module, g.dtype, module.get_num_threads(), k, kp, c)
    module.relu_matmul_backward(g, x, wt, out_dx, work, out_dx.nbytes >= STREAM_MIN_BYTES)
    # thread parts added in thread order: a given thread count gives the same sum every call
    total = work[0, :c * kp].copy()
    for part in work[1:, :c * kp]:
        total += part
    out_dW[...] = total.reshape(c, kp)[:, :k].T
    return out_dx, out_dW


def adam_workspace(p: np.ndarray) -> None:
    """The compiled update works in registers: no scratch."""
    return None


def adam_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, b1: float, b2: float,
                eps: float, decay: float, step_size: float, inv_root_c2: float,
                work: None) -> None:
    # C-contiguous p, g, m, v of one dtype (pyops.model.Adam checks, and passes F-contiguous
    # params as their transposes)
    _k.adam_update(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), b1, b2, eps,
                   decay, step_size, inv_root_c2)
