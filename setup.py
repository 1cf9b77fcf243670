"""Extension list, compiler flags and the OpenMP probe for fastnn_ext.

Environment switches:
  FASTNN_OPENMP=0   build without OpenMP (single-threaded kernels)
  FASTNN_OPENMP=1   require OpenMP: fail the build if the probe fails
  FASTNN_NATIVE=1   add -march=native (local builds only; wheels must stay portable)
  FASTNN_DEBUG=1    Cython bounds checks on, -O1 -g (for sanitizer and debug jobs)
  FASTNN_SANITIZE=1 -fsanitize=address,undefined (.ci/sanitize; needs libasan preloaded)
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

have_openmp = False
if want_openmp is not False:
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
SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fastnn_ext", "_omp_shim.h")

build_flags = " ".join(compile_args)
macros = [
    ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
    ("FASTNN_BUILD_FLAGS", '"%s"' % build_flags),
    ("FASTNN_OPENMP_PROBED", "1" if have_openmp else "0"),
]

extensions = [
    Extension(
        "fastnn_ext." + name,
        ["fastnn_ext/%s.pyx" % name],
        include_dirs=[numpy.get_include(), "fastnn_ext"],
        extra_compile_args=compile_args + ([] if name == "_runtime" else ["-include", SHIM]),
        extra_link_args=link_args,
        define_macros=macros,
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

setup(ext_modules=cythonize(extensions, compiler_directives=directives))
