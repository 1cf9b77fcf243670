"""Extension list, compiler flags and the OpenMP probe for fastnn_ext.

Environment switches:
  FASTNN_OPENMP=0   build without OpenMP (single-threaded kernels)
  FASTNN_OPENMP=1   require OpenMP: fail the build if the probe fails
  FASTNN_NATIVE=1   add -march=native (local builds only; wheels must stay portable)
  FASTNN_DEBUG=1    Cython bounds checks on, -O1 -g (for sanitizer and debug jobs)
  FASTNN_SANITIZE=1 -fsanitize=address,undefined (.ci/sanitize; needs libasan preloaded)
  FASTNN_PORTABLE_C=1 gcc compiles what MSVC compiles: the portable C of the headers
                    (fastnn_ext/_portable.h) and the serial runtime, no OpenMP, C11
                    without variable-length arrays (.ci/windows-check, CONTRIBUTING.md)

MSVC (Windows) builds are serial, with /O2 /fp:precise (BuildExt below).
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# _runtime (the thread pool) comes first: fastnn_ext/__init__.py loads it before the kernels.
MODULES = ["_runtime", "_config", "_blas", "_conv", "_activations", "_pooling", "_recurrent", "_banded", "_local", "_winograd"]

PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d\n", n);
    return n > 0 ? 0 : 1;
}
"""


def _env_flag(name):
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    return value not in ("0", "false", "no", "off")


def _probe_openmp():
    """Compile and run a tiny OpenMP program; True when it works."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    tmp = tempfile.mkdtemp(prefix="fastnn-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(PROBE)
        try:
            subprocess.run(cc + ["-fopenmp", src, "-o", exe], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run([exe], check=True, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError):
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


want_openmp = _env_flag("FASTNN_OPENMP")
native = bool(_env_flag("FASTNN_NATIVE"))
debug = bool(_env_flag("FASTNN_DEBUG"))
sanitize = bool(_env_flag("FASTNN_SANITIZE"))
portable = bool(_env_flag("FASTNN_PORTABLE_C"))

have_openmp = False
if sys.platform == "win32" or portable:
    # Serial: _omp_shim.h forwards gcc's GOMP_* calls only (MSVC's OpenMP calls vcomp),
    # and Windows has no "cc" for the probe.
    if want_openmp:
        sys.exit("FASTNN_OPENMP=1: the Windows and FASTNN_PORTABLE_C builds have no OpenMP")
elif want_openmp is not False:
    have_openmp = _probe_openmp()
    if want_openmp and not have_openmp:
        sys.exit("FASTNN_OPENMP=1 but the OpenMP probe failed to compile or run")

# -fno-math-errno / -fno-trapping-math let gcc vectorise selects and math.
# Never -ffast-math: with gcc it links crtfastmath and flushes denormals process-wide.
compile_args = ["-O1", "-g"] if debug else ["-O3"]
compile_args += ["-fno-math-errno", "-fno-trapping-math", "-Wno-unused-function"]
# The kernels are compiled with -fopenmp (gcc lowers prange to GOMP_* calls) but not
# linked with libgomp: _omp_shim.h, force-included, sends those calls to fastnn's own
# pool (_runtime.h). See the notes at the top of _runtime.h for why.
link_args = ["-pthread"]
if sanitize:
    compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    link_args += ["-fsanitize=address,undefined"]
if native:
    compile_args.append("-march=native")
if have_openmp:
    compile_args.append("-fopenmp")
if portable:
    compile_args += ["-DFASTNN_PORTABLE_C=1", "-std=c11", "-Wvla", "-Werror=vla"]
SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastnn_ext", "_omp_shim.h")


def _macros(flags):
    return [
        ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
        ("FASTNN_BUILD_FLAGS", '"%s"' % " ".join(flags)),
        ("FASTNN_OPENMP_PROBED", "1" if have_openmp else "0"),
    ]


# MSVC: /fp:precise keeps IEEE semantics (its default, said explicitly: never /fp:fast,
# the -ffast-math of MSVC). No shim, no -pthread: the build is serial.
MSVC_COMPILE_ARGS = ["/Od", "/Zi"] if debug else ["/O2", "/fp:precise"]


class BuildExt(build_ext):
    """The gcc/clang flags above, or MSVC's when the compiler is MSVC."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            if native or sanitize:
                sys.exit("FASTNN_NATIVE and FASTNN_SANITIZE are gcc/clang switches")
            for ext in self.extensions:
                ext.extra_compile_args = list(MSVC_COMPILE_ARGS)
                ext.extra_link_args = []
                ext.define_macros = _macros(MSVC_COMPILE_ARGS)
        super().build_extensions()


extensions = [
    Extension(
        "fastnn_ext." + name,
        ["fastnn_ext/%s.pyx" % name],
        include_dirs=[numpy.get_include(), "fastnn_ext"],
        extra_compile_args=compile_args + ([] if name == "_runtime" or portable
                                           else ["-include", SHIM]),
        extra_link_args=link_args,
        define_macros=_macros(compile_args),
        depends=sorted(glob.glob("fastnn_ext/*.h")),
    )
    for name in MODULES
]

directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": False,
    "initializedcheck": debug,
    "cdivision": True,
    "nonecheck": False,
    "embedsignature": True,
}

setup(ext_modules=cythonize(extensions, compiler_directives=directives),
      cmdclass={"build_ext": BuildExt})
