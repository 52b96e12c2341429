"""The one place where the backend is chosen.

Backends are kernel namespaces with the same op classes:

- ``"numpy"``: :mod:`pyops`'s pure-numpy reference (always available);
- ``"cython"``: :mod:`kernels`, compiled by ``pip install .``.

The active backend starts as ``$PYOPS_BACKEND`` (default ``"numpy"``), read
once at import.  Asking for ``"cython"`` when the extension is not built raises
ImportError with the command that builds it; there is never a silent fallback.
A ``$PYOPS_BACKEND`` that names no backend, or one that does not load, does not
stop ``import pyops`` (so ``pyops --help`` still works): its error is raised by
every use of the active backend until :func:`set_backend` chooses one.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from types import ModuleType, SimpleNamespace
from typing import Iterator, Optional, Tuple

BACKENDS: Tuple[str, ...] = ("numpy", "cython")
OP_NAMES: Tuple[str, ...] = ("Matmul", "Relu", "Softmax", "Log", "SoftmaxCrossEntropy")
_MODULES = {"numpy": "pyops.ops", "cython": "kernels"}

_active: str = "numpy"
#: Why ``$PYOPS_BACKEND`` could not be made active: raised by every use of the active backend
#: (``get_backend()``, ``get_ops()`` with no name) until ``set_backend`` replaces it.
_env_error: Optional[Exception] = None


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends are {', '.join(map(repr, BACKENDS))}")
    return name


def get_ops(name: Optional[str] = None) -> SimpleNamespace:
    """Return the op classes of backend ``name`` (default: the active one).

    The namespace has ``Matmul``, ``Relu``, ``Softmax``, ``Log`` and
    ``SoftmaxCrossEntropy`` plus ``backend``, its name.

    Raises
    ------
    ValueError
        If ``name`` is not a known backend.
    ImportError
        If ``name`` is ``"cython"`` and the compiled extension is not built.
    """
    name = _check_name(get_backend() if name is None else name)
    module = importlib.import_module(_MODULES[name])
    return SimpleNamespace(backend=name, **{op: getattr(module, op) for op in OP_NAMES})


def get_kernels(name: Optional[str] = None) -> ModuleType:
    """The kernel table behind backend ``name``'s ops (default: the active backend).

    ``pyops._numpy_kernels`` or the compiled ``kernels._table``: the arithmetic the op
    classes call, and the fused update :class:`pyops.model.Adam` runs.  Same errors as
    :func:`get_ops`.
    """
    return get_ops(name).Relu._kernels


def available_backends() -> Tuple[str, ...]:
    """The backends that can be used here (``"cython"`` only if it is built and loads)."""
    found = []
    for name in BACKENDS:
        try:
            get_ops(name)
        except ImportError:
            continue
        found.append(name)
    return tuple(found)


def get_backend() -> str:
    """The name of the active backend.

    Raises the ValueError or ImportError of a ``$PYOPS_BACKEND`` that could not be made
    active at import, until :func:`set_backend` chooses a backend.
    """
    if _env_error is not None:
        raise type(_env_error)(str(_env_error))
    return _active


def set_backend(name: str) -> None:
    """Make ``name`` the active backend, after checking that it loads."""
    global _active, _env_error
    get_ops(_check_name(name))  # a name: get_ops(None) would mean "the active one"
    _active, _env_error = name, None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[SimpleNamespace]:
    """Context manager: ``with use_backend("cython") as ops: ...`` then restore the previous one."""
    global _active, _env_error
    previous = _active, _env_error
    set_backend(name)
    try:
        yield get_ops(name)
    finally:
        _active, _env_error = previous


def _from_environment() -> None:
    """Make ``$PYOPS_BACKEND`` active, or keep its error for the first use (see module doc)."""
    global _env_error
    name = os.environ.get("PYOPS_BACKEND", "").strip()
    if not name:
        return
    try:
        _check_name(name)
    except ValueError as e:
        _env_error = ValueError(f"PYOPS_BACKEND: {e}")
        return
    try:
        set_backend(name)
    except ImportError as e:
        _env_error = ImportError(f"PYOPS_BACKEND={name!r}: {e}")
