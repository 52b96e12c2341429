"""Input checks shared by every op of every backend.

Each op validates dtype, ndim, shape and ``out=`` here, in Python, before any
numpy expression or unchecked compiled loop runs.  The messages name the op and
say what was expected, so both backends fail the same way on the same input.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np

FLOAT_DTYPES: Tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))
_ACCEPTED = "float32 or float64"


def as_float_array(where: str, name: str, a: Any) -> np.ndarray:
    """Return ``a`` as an ndarray of float32/float64 without copying it.

    Raises TypeError for any other dtype (ints, bools, float16, complex, object)
    rather than casting: a silent cast would hide a precision change.
    """
    arr = np.asarray(a)
    if arr.dtype not in FLOAT_DTYPES:
        hint = ""
        if arr.dtype.kind in "iub":
            hint = " (cast it with .astype(np.float64) first)"
        elif arr.dtype.kind == "f" and arr.dtype.newbyteorder("=") in FLOAT_DTYPES:
            hint = f" (byte-swapped: convert it with .astype(np.{arr.dtype.newbyteorder('=')}))"
        raise TypeError(f"{where}: {name} must have dtype {_ACCEPTED}, got {arr.dtype}{hint}")
    return arr


def check_hyperparameter(where: str, name: str, value: Any, positive: bool = False) -> float:
    """``value`` as a float: a real number (not a bool, not a string), finite, and >= 0
    (> 0 if ``positive``).  TypeError or ValueError naming ``where`` and ``name`` otherwise."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be a real number, got {value!r}")
    try:
        x = float(value)
    except OverflowError:  # an int beyond float's range
        x = math.inf
    if not (math.isfinite(x) and (x > 0 if positive else x >= 0)):
        raise ValueError(
            f"{where}: {name} must be finite and {'>' if positive else '>='} 0, got {value!r}"
        )
    return x


def check_fits_dtype(where: str, name: str, value: float, dtype: np.dtype) -> None:
    """ValueError if ``value`` (>= 0) would overflow to inf, or a positive one round to 0, in
    ``dtype``, the kernels' type."""
    if value > float(np.finfo(dtype).max):
        raise ValueError(
            f"{where}: {name}={value!r} overflows {np.dtype(dtype)} "
            f"(largest {np.finfo(dtype).max:.4g}); use a smaller {name} or float64"
        )
    if value > 0 and np.dtype(dtype).type(value) == 0:
        raise ValueError(
            f"{where}: {name}={value!r} rounds to 0 in {np.dtype(dtype)} "
            f"(smallest {np.finfo(dtype).smallest_subnormal:.4g}); use a larger {name}, or 0 on purpose"
        )


def check_same_dtype(where: str, name: str, a: np.ndarray, dtype: np.dtype, ref: str) -> None:
    """Raise TypeError unless ``a.dtype == dtype``; ``ref`` says where ``dtype`` came from."""
    if a.dtype != dtype:
        raise TypeError(
            f"{where}: {name} has dtype {a.dtype} but {ref} is {dtype}; "
            f"both must have the same dtype (cast with .astype(np.{dtype}))"
        )


def check_ndim(where: str, name: str, a: np.ndarray, ndim: int, layout: str) -> None:
    """Raise ValueError unless ``a.ndim == ndim``; ``layout`` names the axes, e.g. ``(N, c)``."""
    if a.ndim != ndim:
        raise ValueError(
            f"{where}: {name} must be {ndim}-D {layout}, got {a.ndim}-D array of shape {a.shape}"
        )


def check_shape(where: str, name: str, a: np.ndarray, shape: Tuple[int, ...], ref: str) -> None:
    """Raise ValueError unless ``a.shape == shape``; ``ref`` says where ``shape`` came from."""
    if a.shape != tuple(shape):
        raise ValueError(f"{where}: {name} must have shape {tuple(shape)} ({ref}), got {a.shape}")


def same_shape_2d(where: str, **arrays: Any) -> Tuple[np.ndarray, np.ndarray]:
    """The two keyword arrays as ndarrays; ValueError unless both are 2-D of one shape."""
    (a_name, a), (b_name, b) = ((k, np.asarray(v)) for k, v in arrays.items())
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{where}: {a_name} and {b_name} must be 2-D arrays of the same shape, "
                         f"got {a.shape} and {b.shape}")
    return a, b


def count_correct_inputs(where: str, scores: Any, labels: Any) -> Tuple[np.ndarray, np.ndarray]:
    """``scores`` and ``labels`` for a row-argmax count: 2-D, one shape, real, at least one
    column if there are rows; as C-contiguous arrays of one float dtype (float32 if both
    are float32, else float64: exact for floats, bools and integers up to 2**53)."""
    s, lab = same_shape_2d(where, scores=scores, labels=labels)
    for name, a in (("scores", s), ("labels", lab)):
        if a.dtype.kind not in "fiub":
            raise TypeError(f"{where}: {name} must hold real numbers, got dtype {a.dtype}")
    if s.shape[0] and not s.shape[1]:
        raise ValueError(f"{where}: rows with no columns have no argmax, got shape {s.shape}")
    dtype = np.float32 if s.dtype == lab.dtype == np.float32 else np.float64
    return np.ascontiguousarray(s, dtype), np.ascontiguousarray(lab, dtype)


def _matrices(where: str, arrays: Dict[str, Any]) -> np.dtype:
    """Check that ``arrays`` (name -> array) are C-contiguous 2-D ndarrays of one float dtype
    (float32 or float64), and return it."""
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or isinstance(a, np.matrix):  # as check_out
            raise TypeError(f"{where}: {name} must be a numpy.ndarray, got {type(a).__name__}")
        if a.ndim != 2:
            raise ValueError(f"{where}: {name} must be 2-D, got shape {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{where}: {name} must be C-contiguous")
    dtypes = [a.dtype for a in arrays.values()]
    if dtypes[0] not in (np.float32, np.float64) or any(d != dtypes[0] for d in dtypes):
        *first, last = arrays
        raise TypeError(f"{where}: {', '.join(first)} and {last} must have one dtype, float32 "
                        f"or float64; got {', '.join(str(d) for d in dtypes)}")
    return dtypes[0]


def _required(where: str, **outputs: Any) -> None:
    """Outputs that are not optional (check_out lets None through)."""
    for name, out in outputs.items():
        if out is None:
            raise TypeError(f"{where}: {name} must be a numpy.ndarray, got None")


def relu_matmul_forward_inputs(where: str, x: Any, W: Any, out_h: Any, out_y: Any) -> None:
    """Check the arrays of a ``relu_matmul_forward``: ``x`` (N, k) and ``W`` (k, c)
    C-contiguous ndarrays of one float dtype (float32 or float64); ``out_y`` (N, c), and
    ``out_h`` (N, k) unless it is None (h not kept), writeable, C-contiguous, of that dtype,
    sharing no memory with the inputs or each other (the loop reads ``W`` and ``out_h`` after
    it began writing)."""
    arrays = {"x": x, "W": W}
    dtype = _matrices(where, arrays)
    _required(where, out_y=out_y)
    (n, k), c = x.shape, W.shape[1]
    if W.shape[0] != k:
        raise ValueError(f"{where}: shapes must be x (N, k), W (k, c); got x {x.shape}, "
                         f"W {W.shape}")
    check_out(where, out_h, (n, k), dtype, name="out_h", kept=arrays)
    check_out(where, out_y, (n, c), dtype, name="out_y", kept={**arrays, "out_h": out_h})


def relu_matmul_inputs(where: str, g: Any, x: Any, W: Any, out_dx: Any, out_dW: Any) -> None:
    """Check the arrays of a ``relu_matmul_backward``: ``g`` (N, c), ``x`` (N, k) and ``W``
    (k, c) C-contiguous ndarrays of one float dtype (float32 or float64); ``out_dx`` (N, k)
    and ``out_dW`` (k, c) writeable, C-contiguous, of that dtype, sharing no memory with the
    inputs or each other (the loop reads every input after it began writing)."""
    arrays = {"g": g, "x": x, "W": W}
    dtype = _matrices(where, arrays)
    _required(where, out_dx=out_dx, out_dW=out_dW)
    (n, c), k = g.shape, W.shape[0]
    if x.shape[0] != n or W.shape[1] != c or x.shape[1] != k:
        raise ValueError(f"{where}: shapes must be g (N, c), x (N, k), W (k, c); got "
                         f"g {g.shape}, x {x.shape}, W {W.shape}")
    check_out(where, out_dx, (n, k), dtype, name="out_dx", kept=arrays)
    check_out(where, out_dW, (k, c), dtype, name="out_dW", kept={**arrays, "out_dx": out_dx})


def check_out(
    where: str,
    out: Optional[np.ndarray],
    shape: Tuple[int, ...],
    dtype: np.dtype,
    inputs: Tuple[np.ndarray, ...] = (),
    name: str = "out",
    kept: Optional[Dict[str, np.ndarray]] = None,
    fortran_ok: bool = False,
) -> Optional[np.ndarray]:
    """Validate a caller-supplied output array, or pass ``None`` through.

    ``out`` must be a writeable, C-contiguous ndarray of exactly ``shape`` and
    ``dtype`` (or F-contiguous, if ``fortran_ok``: BLAS writes either layout).
    It may be one of ``inputs`` exactly (an in-place update), but must not
    partially overlap any of them: elementwise loops would then read
    values they already overwrote.  It must not share any memory with the
    arrays in ``kept`` (name -> array): those the op keeps in ``mem`` for
    backward, or reads again after ``out`` is written.
    """
    if out is None:
        return None
    if not isinstance(out, np.ndarray) or isinstance(out, np.matrix):  # a matrix stays 2-D
        raise TypeError(f"{where}: {name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{where}: {name} must have dtype {dtype}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{where}: {name} must have shape {tuple(shape)}, got {out.shape}")
    if not (out.flags.c_contiguous or (fortran_ok and out.flags.f_contiguous)):
        raise ValueError(f"{where}: {name} must be {'C- or F-' if fortran_ok else 'C-'}contiguous "
                         f"(use np.empty(shape, dtype))")
    if not out.flags.writeable:
        raise ValueError(f"{where}: {name} is read-only")
    for a in inputs:
        # may_share_memory (a bounds test) first: the usual case, no overlap, costs ~1 us
        if a is None or a is out or not np.may_share_memory(a, out):
            continue
        same = (
            a.__array_interface__["data"][0] == out.__array_interface__["data"][0]
            and a.shape == out.shape
            and a.strides == out.strides
        )
        if not same:
            raise ValueError(f"{where}: {name} overlaps an input without being identical to it")
    for label, a in (kept or {}).items():
        if a is not None and np.may_share_memory(a, out):
            raise ValueError(
                f"{where}: {name} must not share memory with {label}, which the op still needs "
                f"(kept in mem for backward, or read after {name} is written); pass another array"
            )
    return out


def warn_log_domain(x: np.ndarray, eps: float) -> None:
    """Warn (RuntimeWarning) if some ``x + eps <= 0``, where ``Log`` gives NaN or -inf.

    Both kernel tables call this after their forward pass flagged such a value, so a
    bad input warns the same way on each backend (``np.log`` itself warns only on
    numpy, and without naming the op).  The count here is exact: a false alarm from
    the compiled kernel's cheap flag stays silent.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = x + x.dtype.type(eps)  # the kernels' own rounding
    below = int(np.count_nonzero(shifted < 0))
    at = int(np.count_nonzero(shifted == 0))
    if below or at:
        warnings.warn(
            f"Log.forward: {below + at} of {x.size} inputs are <= -eps (eps={eps!r}): "
            f"log(x + eps) is NaN for {below} below -eps and -inf for {at} at -eps",
            RuntimeWarning,
            stacklevel=4,  # warn_log_domain <- kernel table <- Log.forward <- its caller
        )
