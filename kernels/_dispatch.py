"""Pick the compiled build of the kernels that this CPU can run.

setup.py compiles the same source for several x86-64 levels; the fastest the
CPU supports is loaded (numpy's own CPU-feature detection decides), the
baseline elsewhere.  ``PYOPS_CPU_VARIANT`` forces one, for tests and benchmarks.

Loading the module also starts libgomp, the OpenMP runtime, whose idle threads
spin before they sleep; see :data:`GOMP_SPINCOUNT` for why kernels shortens that.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Dict, List, Optional, Tuple

# Fastest first: variant name -> numpy CPU feature it needs (None: any CPU).
VARIANTS: Tuple[Tuple[str, Optional[str]], ...] = (
    ("x86_64_v4", "X86_V4"),
    ("x86_64_v3", "X86_V3"),
    ("baseline", None),
)
#: Spins of an idle libgomp thread before it sleeps, unless the user sets ``GOMP_SPINCOUNT``
#: or ``OMP_WAIT_POLICY``.  libgomp's default, 300000, is milliseconds of spinning after
#: every kernel call, on a core that numpy's BLAS wants for the matmul that follows: a
#: two-thread 8192-row training step measured 6-10x slower than with 1000-3000 spins.
#: 3000 spins (20-40 microseconds on the 2-core machine) still catch the next kernel call
#: of a back-to-back chain; 1000 did not, and each call then paid a wake-up (~40 us there).
GOMP_SPINCOUNT = "3000"
_WAIT_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
#: How libgomp's wait was set when the module loaded (reported by ``kernels.build_info()``).
omp_wait: Optional[str] = None

BUILD_HINT = (
    "build it with `pip install .` from a checkout of opkernels (a C compiler and "
    "Cython 3 are needed), and import it from outside the source tree"
)


def _cpu_features() -> Dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


#: numpy < 2.4 has no X86_V3 / X86_V4 keys, only single features: what each level adds that
#: numpy can see (AVX512_SKX is AVX-512 F, CD, VL, BW and DQ, v4's set).  v3's BMI1/2, LZCNT
#: and MOVBE are not listed by numpy; every CPU known with AVX2, FMA3 and F16C has them.
_LEVEL_FEATURES: Dict[str, Tuple[str, ...]] = {
    "X86_V3": ("AVX", "AVX2", "FMA3", "F16C"),
    "X86_V4": ("AVX", "AVX2", "FMA3", "F16C", "AVX512_SKX"),
}


def cpu_supports(level: str, features: Dict[str, bool]) -> bool:
    """Can a CPU with numpy's ``features`` run x86-64 ``level`` (``"X86_V3"``, ``"X86_V4"``)?"""
    if level in features:  # numpy >= 2.4 detects the level itself
        return bool(features[level])
    return all(features.get(f, False) for f in _LEVEL_FEATURES[level])


def runnable_variants() -> List[str]:
    """Variants this CPU can execute, fastest first (built or not)."""
    features = _cpu_features()
    return [name for name, need in VARIANTS if need is None or cpu_supports(need, features)]


def built_variants() -> List[str]:
    """Variants whose compiled module is installed, fastest first."""
    return [n for n, _ in VARIANTS if importlib.util.find_spec(f"kernels._kernels_{n}") is not None]


def load_variant(name: str) -> ModuleType:
    """Import the compiled module of variant ``name``; ImportError says how to build it."""
    known = [n for n, _ in VARIANTS]
    if name not in known:
        raise ValueError(f"unknown CPU variant {name!r}; known variants are {known}")
    if name not in runnable_variants():
        raise ImportError(f"this CPU cannot run the {name!r} build of kernels")
    try:
        return _import_with_short_spin(f"kernels._kernels_{name}")
    except ImportError as exc:
        raise ImportError(
            f"the compiled {name!r} build of kernels is not available ({exc}); "
            + (_shadowed_message(name) or BUILD_HINT)
        ) from exc


def _libgomp_loaded() -> bool:
    """Is the system libgomp already in this process (then it has read its settings)?"""
    try:
        with open("/proc/self/maps") as maps:
            return any("/libgomp.so" in line for line in maps)
    except OSError:  # no /proc: cannot tell
        return False


def _import_with_short_spin(module: str) -> ModuleType:
    """Import ``module``, starting libgomp with :data:`GOMP_SPINCOUNT` unless the user chose.

    libgomp reads its environment once, when it is loaded (by the first such import), so
    the variable is set for the import only and the environment is left as it was found.
    """
    global omp_wait
    user = [f"{k}={os.environ[k]}" for k in _WAIT_VARIABLES if k in os.environ]
    ours = not user and not _libgomp_loaded()
    if user:
        how = " ".join(user) + " (from the environment)"
    elif ours:
        how = f"GOMP_SPINCOUNT={GOMP_SPINCOUNT} (set by kernels)"
        os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    else:
        how = "libgomp was loaded before kernels: its own setting applies"
    try:
        mod = importlib.import_module(module)
    finally:
        if ours:
            del os.environ["GOMP_SPINCOUNT"]
    if omp_wait is None:  # the first module loaded started libgomp
        omp_wait = how
    return mod


def load() -> ModuleType:
    """The compiled module to use: ``$PYOPS_CPU_VARIANT`` if set, else the best runnable build."""
    forced = os.environ.get("PYOPS_CPU_VARIANT", "").strip()
    if forced:
        try:
            return load_variant(forced)
        except (ValueError, ImportError) as exc:
            # An ImportError, whatever the cause, so that pyops.available_backends() and the
            # backend switch treat a bad forced variant as "cython cannot be loaded".
            raise ImportError(f"PYOPS_CPU_VARIANT={forced!r}: {exc}") from exc
    built = set(built_variants())
    for name in runnable_variants():
        if name in built:
            return load_variant(name)
    raise ImportError(_first_shadow(runnable_variants())
                      or f"the compiled extension of kernels is not built; {BUILD_HINT}")


def _first_shadow(variants: List[str]) -> Optional[str]:
    """The :func:`_shadowed_message` of the first of ``variants`` that is shadowed, if any."""
    return next((m for m in map(_shadowed_message, variants) if m), None)


def _compiled_in(directory: str, variant: str) -> bool:
    """Does ``directory`` hold a compiled module of ``variant``?"""
    import importlib.machinery

    prefix = f"_kernels_{variant}."
    try:
        return any(f.startswith(prefix) and f.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
                   for f in os.listdir(directory))
    except OSError:
        return False


def _shadowed_message(variant: str) -> Optional[str]:
    """If this ``kernels``, with no compiled module of ``variant``, hides one later on
    ``sys.path``, as a source checkout's does when Python runs from its root, say so."""
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    if _compiled_in(here, variant):
        return None
    what = f"compiled {variant!r} module"
    for entry in sys.path:
        other = os.path.join(os.path.abspath(entry or os.curdir), "kernels")
        if other != here and os.path.isdir(other) and _compiled_in(other, variant):
            return (f"kernels was imported from {here}, which has no {what} and hides "
                    f"the built one in {other}: run Python from another directory than the "
                    f"source checkout's root, and keep it off PYTHONPATH (the first match on sys.path wins)")
    return None
