"""Build the compiled kernels of opkernels.

The same Cython source (kernels/_kernels.pxi) is compiled once per CPU variant
listed in VARIANTS; ``kernels._dispatch`` loads the best one the CPU runs.
OpenMP is used when a test compile with it succeeds.

Environment variables:
  OPKERNELS_NO_OPENMP=1     build without OpenMP (kernels then run on one thread)
  OPKERNELS_VARIANTS=a,b    build only these variants (default: all this machine's
                            architecture supports; "baseline" is always built)
"""
import os
import platform
import sys
import tempfile
import textwrap

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
# name -> extra compile flags (gcc/clang). Only the baseline is built off x86-64.
VARIANTS = {
    "baseline": [],
    "x86_64_v3": ["-march=x86-64-v3"],
    "x86_64_v4": ["-march=x86-64-v4", "-mprefer-vector-width=512"],
}
# -fno-math-errno lets gcc call libmvec's vector exp/log (see kernels/_simd_math.h).
# -fno-trapping-math lets gcc vectorize relu backward's `g * (x > 0)`: without it gcc 12 keeps
# a branch per element on the baseline and x86-64-v3 (13x slower on random signs, measured)
# and a slower masked loop on x86-64-v4. It changes no result: nothing here reads the
# floating-point exception flags.
# Never -ffast-math: on the link line it turns on flush-to-zero for the whole process.
COMMON_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math"]


def _wanted_variants():
    names = [n for n in VARIANTS if IS_X86_64 or n == "baseline"]
    chosen = os.environ.get("OPKERNELS_VARIANTS")
    if chosen:
        asked = {v.strip() for v in chosen.split(",") if v.strip()}
        unknown = asked - set(VARIANTS)
        if unknown:
            sys.exit(f"OPKERNELS_VARIANTS: unknown variant(s) {sorted(unknown)}; known: {list(VARIANTS)}")
        names = [n for n in names if n in asked or n == "baseline"]
    return names


class BuildExt(build_ext):
    """Add compiler-specific optimisation and OpenMP flags (at compile *and* link)."""

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        openmp = self._openmp_flags(msvc)
        for ext in self.extensions:
            variant = ext.name.rsplit("_kernels_", 1)[1]
            ext.define_macros.append(("OPK_VARIANT", f'"{variant}"'))
            if msvc:
                ext.extra_compile_args += ["/O2"] + openmp
            else:
                ext.extra_compile_args += COMMON_FLAGS + VARIANTS[variant] + openmp
                ext.extra_link_args += openmp
        super().build_extensions()

    def _openmp_flags(self, msvc):
        if os.environ.get("OPKERNELS_NO_OPENMP", "").strip() not in ("", "0"):
            print("opkernels: OPKERNELS_NO_OPENMP is set, building without OpenMP")
            return []
        flags = ["/openmp"] if msvc else ["-fopenmp"]
        code = textwrap.dedent(
            """
            #include <omp.h>
            int main(void) { int n = 0;
            #pragma omp parallel
            { n = omp_get_num_threads(); }
            return n > 0 ? 0 : 1; }
            """
        )
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp_test.c")
            with open(src, "w") as f:
                f.write(code)
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
                self.compiler.link_executable(objs, "omp_test", output_dir=tmp, extra_postargs=flags)
            except Exception as exc:  # CompileError, LinkError
                print(
                    "opkernels: WARNING: the compiler could not build an OpenMP test program "
                    f"({type(exc).__name__}); the kernels will run on one thread. "
                    "Install OpenMP support (gcc's libgomp, or libomp for clang) to get threads."
                )
                return []
        return flags


extensions = [
    Extension(
        f"kernels._kernels_{name}",
        [f"kernels/_kernels_{name}.pyx"],
        include_dirs=["kernels"],
        libraries=["m"] if sys.platform.startswith("linux") else [],
    )
    for name in _wanted_variants()
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3},
        include_path=["kernels"],
    ),
    cmdclass={"build_ext": BuildExt},
)
