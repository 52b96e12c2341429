"""The backend switch, the compiled build, and what happens when it is missing."""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import kernels
import pyops
from pyops.backend import get_kernels

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd=None, unset=(), **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, by default outside the source tree."""
    full_env = {k: v for k, v in {**os.environ, **env}.items() if k not in unset}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd or tempfile.gettempdir(), env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_get_ops_returns_each_backends_classes():
    np_ops, cy_ops = pyops.get_ops("numpy"), pyops.get_ops("cython")
    assert np_ops.Relu is pyops.Relu and cy_ops.Relu is kernels.Relu
    assert np_ops.backend == "numpy" and cy_ops.backend == "cython"
    assert kernels.Softmax().backend == "cython" and pyops.Softmax().backend == "numpy"
    assert pyops.available_backends() == ("numpy", "cython")


def test_set_get_and_context_manager():
    start = pyops.get_backend()
    try:
        pyops.set_backend("cython")
        assert pyops.get_backend() == "cython"
        assert pyops.get_ops().Log is kernels.Log
        with pyops.use_backend("numpy") as ops:
            assert ops.Log is pyops.Log and pyops.get_backend() == "numpy"
        assert pyops.get_backend() == "cython"
    finally:
        pyops.set_backend(start)


def test_unknown_backend_lists_valid_ones():
    before = pyops.get_backend()
    with pytest.raises(ValueError, match=r"unknown backend 'torch'; valid backends are 'numpy', 'cython'"):
        pyops.set_backend("torch")
    with pytest.raises(ValueError, match=r"unknown backend None"):
        pyops.set_backend(None)
    assert pyops.get_backend() == before
    with pytest.raises(ValueError, match="unknown backend"):
        pyops.get_ops("cuda")


def test_environment_variable_is_read_at_import():
    out = run_python("import pyops; print(pyops.get_backend())", PYOPS_BACKEND="cython")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cython"


def test_bad_environment_variable_fails_every_use_until_a_backend_is_set():
    """A bad name does not break ``import pyops``; the active backend raises until chosen."""
    script = (
        "import pyops\n"
        "for use in (pyops.get_backend, pyops.get_ops, lambda: pyops.MLP(n_in=4, n_hidden=3, n_out=2)):\n"
        "    try:\n"
        "        use()\n"
        "    except ValueError as e:\n"
        "        print('ValueError', e)\n"
        "print(pyops.get_ops('numpy').backend)\n"  # a named backend does not need the active one
        "with pyops.use_backend('cython') as ops:\n"
        "    print(ops.backend, pyops.get_backend())\n"
        "try:\n"
        "    pyops.get_backend()\n"  # the context manager restores the error, not a guess
        "except ValueError as e:\n"
        "    print('ValueError again')\n"
        "pyops.set_backend('numpy')\n"
        "print(pyops.get_backend())\n"
    )
    out = run_python(script, PYOPS_BACKEND="jax")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    message = "ValueError PYOPS_BACKEND: unknown backend 'jax'; valid backends are 'numpy', 'cython'"
    assert lines[:3] == [message] * 3
    assert lines[3:] == ["numpy", "cython cython", "ValueError again", "numpy"]


def test_same_model_code_runs_on_either_backend():
    x = np.linspace(-2, 2, 30).reshape(3, 10)
    results = []
    for name in ("numpy", "cython"):
        with pyops.use_backend(name):
            ops = pyops.get_ops()
            results.append(ops.Log().forward(ops.Softmax().forward(ops.Relu().forward(x))))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12)


def test_kernel_tables_offer_the_same_functions():
    """Both tables behind the op classes and Adam: same names, same parameters."""
    def functions(table):
        return {name: list(inspect.signature(f).parameters)
                for name, f in vars(table).items()
                if inspect.isfunction(f) and not name.startswith("_") and f.__module__ == table.__name__}

    numpy_table, compiled = functions(get_kernels("numpy")), functions(get_kernels("cython"))
    assert numpy_table == compiled
    assert {"relu_forward", "log_backward", "relu_matmul_forward", "relu_matmul_backward", "adam_update", "adam_workspace"} <= set(compiled)


def test_installed_kernels_are_the_compiled_extension():
    """The tests import the installed package, never the source tree."""
    info = kernels.build_info()
    assert Path(kernels.__file__).resolve().parent != REPO / "kernels"
    assert Path(info["module"]).suffix in (".so", ".pyd")
    assert info["variant"] in info["built_variants"]
    assert info["variant"] == info["runnable_variants"][0], "the best variant this CPU runs was not loaded"


def test_shadow_is_named_only_for_the_variant_missing(tmp_path, monkeypatch):
    """A tree whose kernels has the baseline build only, before one with x86_64_v4 on sys.path:
    the shadow message is for the v4 variant, not for "no compiled module at all"."""
    import importlib.machinery

    from kernels import _dispatch

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    here, other = tmp_path / "a" / "kernels", tmp_path / "b" / "kernels"
    for d, variant in ((here, "baseline"), (other, "x86_64_v4")):
        d.mkdir(parents=True)
        (d / f"_kernels_{variant}{suffix}").touch()
    monkeypatch.setattr(_dispatch, "__file__", str(here / "_dispatch.py"))
    monkeypatch.setattr(sys, "path", [str(here.parent), str(other.parent)])
    assert _dispatch._shadowed_message("baseline") is None  # here has it
    assert _dispatch._shadowed_message("x86_64_v3") is None  # nobody has it: build, not shadow
    assert _dispatch._shadowed_message("x86_64_v4") == (
        f"kernels was imported from {here}, which has no compiled 'x86_64_v4' module and hides the "
        f"built one in {other}: run Python from another directory than the source checkout's root, "
        "and keep it off PYTHONPATH (the first match on sys.path wins)")
    # load() on a CPU without AVX-512: here's v4 build cannot run, the baseline one is shadowed
    (other / f"_kernels_baseline{suffix}").touch()
    (here / f"_kernels_baseline{suffix}").unlink()
    (here / f"_kernels_x86_64_v4{suffix}").touch()
    assert f"no compiled 'baseline' module and hides the built one in {other}" in \
        _dispatch._first_shadow(["x86_64_v3", "baseline"])
    assert _dispatch._first_shadow(["x86_64_v4"]) is None


def test_missing_extension_raises_with_build_instructions(tmp_path):
    """From the source tree (no compiled module there), asking for cython must fail loudly:
    saying how to build it, or, where the tree hides an installed build, saying that."""
    if list((REPO / "kernels").glob("_kernels_*.so")):
        pytest.skip("this checkout has an in-place build; the check needs a tree without one")
    code = "import pyops\ntry:\n    pyops.get_ops('cython')\nexcept ImportError as e:\n    print('ImportError:', e)\n"
    # the source tree first on sys.path, the installed build after it (Python run from the root)
    out = run_python(code, cwd=REPO, PYTHONPATH=str(REPO))
    installed = Path(kernels.__file__).parent
    best = kernels.runnable_variants()[0]
    assert f"ImportError: kernels was imported from {REPO / 'kernels'}, which has no compiled {best!r} module " \
           f"and hides the built one in {installed}" in out.stdout, out.stdout + out.stderr
    assert "cython" not in run_python("import pyops; print(pyops.available_backends())",
                                      cwd=REPO, PYTHONPATH=str(REPO)).stdout
    # the same when a CPU variant is forced (tests and benchmarks do): the shadow is named
    forced = run_python(code, cwd=REPO, PYTHONPATH=str(REPO), PYOPS_CPU_VARIANT="baseline")
    assert "PYOPS_CPU_VARIANT='baseline': the compiled 'baseline' build of kernels is not available" \
        in forced.stdout and f"hides the built one in {installed}" in forced.stdout, forced.stdout + forced.stderr
    # no installed build anywhere: only the source tree and numpy on the path (python -S)
    numpy_dir = Path(np.__file__).parent
    for name in (numpy_dir.name, numpy_dir.name + ".libs"):
        if (numpy_dir.parent / name).exists():
            (tmp_path / name).symlink_to(numpy_dir.parent / name)
    bare = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}, timeout=120)
    assert "ImportError: the compiled extension of kernels is not built; build it with `pip install .`" \
        in bare.stdout, bare.stdout + bare.stderr


def test_cpu_levels_from_numpy_features_old_and_new():
    """numpy >= 2.4 names the x86-64 levels; older numpy only single features (AVX2, ...)."""
    from kernels._dispatch import cpu_supports

    skylake_old_numpy = {"AVX": True, "AVX2": True, "FMA3": True, "F16C": True, "AVX512_SKX": True}
    assert cpu_supports("X86_V3", skylake_old_numpy) and cpu_supports("X86_V4", skylake_old_numpy)
    haswell_old_numpy = dict(skylake_old_numpy, AVX512_SKX=False)
    assert cpu_supports("X86_V3", haswell_old_numpy) and not cpu_supports("X86_V4", haswell_old_numpy)
    assert not cpu_supports("X86_V3", dict(haswell_old_numpy, FMA3=False))
    assert not cpu_supports("X86_V3", {})
    # numpy's own verdict on a level wins over the single features
    assert not cpu_supports("X86_V4", dict(skylake_old_numpy, X86_V4=False))
    assert cpu_supports("X86_V3", {"X86_V3": True})


@pytest.mark.parametrize("variant", ["baseline", "x86_64_v3", "x86_64_v4"])
def test_forcing_a_cpu_variant(variant):
    from kernels import _dispatch

    if variant not in _dispatch.runnable_variants() or variant not in _dispatch.built_variants():
        pytest.skip(f"{variant} is not built or this CPU cannot run it")
    out = run_python("import kernels; print(kernels.build_info()['variant'])", PYOPS_CPU_VARIANT=variant)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == variant


def test_forcing_an_unknown_variant_fails():
    out = run_python("import kernels", PYOPS_CPU_VARIANT="avx9000")
    assert out.returncode != 0
    assert "ImportError: PYOPS_CPU_VARIANT='avx9000': unknown CPU variant 'avx9000'" in out.stderr


def test_an_unknown_variant_makes_cython_unavailable_not_pyops_unusable():
    # the numpy backend keeps working; asking for cython names the variable at fault
    script = (
        "import pyops\n"
        "print(pyops.available_backends())\n"
        "try:\n"
        "    pyops.set_backend('cython')\n"
        "except ImportError as e:\n"
        "    print('ImportError', e)\n"
    )
    out = run_python(script, PYOPS_CPU_VARIANT="avx9000")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "('numpy',)"
    assert lines[1].startswith("ImportError PYOPS_CPU_VARIANT='avx9000': unknown CPU variant")
    both = run_python("import pyops; pyops.get_ops()", PYOPS_CPU_VARIANT="avx9000", PYOPS_BACKEND="cython")
    assert both.returncode != 0
    assert "ImportError: PYOPS_BACKEND='cython': PYOPS_CPU_VARIANT='avx9000'" in both.stderr


@pytest.mark.parametrize("hex_version, text", [
    (0x030301F0, "3.3.1"), (0x030400B2, "3.4.0b2"), (0x03000AA1, "3.0.10a1"), (0x040000C3, "4.0.0rc3"),
    (0x03040051, "3.4.0?1"),  # an unknown release level is shown, not guessed
])
def test_cython_version_from_its_hex_form(hex_version, text):
    from kernels import _table
    assert _table._k._version_from_hex(hex_version) == text


def test_build_info_and_threads():
    info = kernels.build_info()
    assert {"variant", "openmp", "libmvec", "threads"} <= set(info)
    # the Cython that generated the module: pyproject.toml asks for Cython>=3.0
    version = re.fullmatch(r"(\d+)\.\d+\.\d+((a|b|rc)\d+)?", info["cython"])
    assert version and int(version.group(1)) >= 3, info["cython"]
    before = kernels.get_num_threads()
    try:
        pyops.set_num_threads(1)
        assert kernels.get_num_threads() == 1 and kernels.build_info()["threads"] == 1
    finally:
        kernels.set_num_threads(before)
    limit = kernels.MAX_THREADS
    for bad in (0, -1, limit + 1, 10**20):  # a huge count crashed libgomp at the next kernel call
        with pytest.raises(ValueError, match=f"n must be between 1 and {limit}, got {bad}"):
            pyops.set_num_threads(bad)
    with pytest.raises(TypeError, match="n must be an integer, got 2.5"):
        kernels.set_num_threads(2.5)
    with pytest.raises(TypeError, match="n must be an integer, got True"):
        pyops.set_num_threads(True)
    assert kernels.get_num_threads() == before


def test_omp_num_threads_is_honoured():
    out = run_python("import kernels; print(kernels.get_num_threads())", OMP_NUM_THREADS="1")
    assert out.stdout.strip() == "1", out.stderr


def test_import_does_not_enable_flush_to_zero():
    """A -ffast-math link would set FTZ/DAZ for the whole process on import."""
    code = (
        "import numpy as np, kernels\n"
        "tiny = np.array([np.finfo(np.float64).smallest_subnormal, np.finfo(np.float32).smallest_subnormal])\n"
        "print(float(tiny[0] * 1.0) > 0, np.float32(tiny[1]) * np.float32(1) > 0,"
        " float(np.finfo(np.float64).tiny / 2) > 0)\n"
    )
    out = run_python(code)
    assert out.stdout.split() == ["True", "True", "True"], out.stdout + out.stderr


needs_openmp = pytest.mark.skipif(not kernels.build_info()["openmp"],
                                  reason="kernels was built without OpenMP")
WAIT_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")
SHOW_WAIT = "import os, kernels; print(kernels.build_info()['omp_wait']); print(os.environ.get('GOMP_SPINCOUNT'))"


@needs_openmp
def test_import_shortens_libgomp_spin_and_leaves_the_environment():
    """libgomp itself reports the spin count it started with (OMP_DISPLAY_ENV)."""
    from kernels import _dispatch

    out = run_python(SHOW_WAIT, unset=WAIT_VARIABLES, OMP_DISPLAY_ENV="verbose")
    assert f"GOMP_SPINCOUNT = '{_dispatch.GOMP_SPINCOUNT}'" in out.stderr, out.stderr
    assert out.stdout.split("\n")[:2] == [f"GOMP_SPINCOUNT={_dispatch.GOMP_SPINCOUNT} (set by kernels)", "None"]


@needs_openmp
@pytest.mark.parametrize("variable,value,shown", [("GOMP_SPINCOUNT", "5000", "GOMP_SPINCOUNT = '5000'"),
                                                  ("OMP_WAIT_POLICY", "active", "OMP_WAIT_POLICY = 'ACTIVE'")])
def test_users_openmp_wait_setting_wins(variable, value, shown):
    others = [v for v in WAIT_VARIABLES if v != variable]
    out = run_python(SHOW_WAIT, unset=others, OMP_DISPLAY_ENV="verbose", **{variable: value})
    assert shown in out.stderr, out.stderr
    left = value if variable == "GOMP_SPINCOUNT" else "None"
    assert out.stdout.split("\n")[:2] == [f"{variable}={value} (from the environment)", left]


@needs_openmp
def test_libgomp_loaded_first_is_reported():
    """libgomp read its settings when it was loaded; kernels says so instead of claiming its own."""
    code = "import ctypes; ctypes.CDLL('libgomp.so.1'); " + SHOW_WAIT
    out = run_python(code, unset=WAIT_VARIABLES)
    assert out.stdout.startswith("libgomp was loaded before kernels"), out.stdout + out.stderr
