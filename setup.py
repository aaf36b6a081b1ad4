"""Builds the optional C extensions (everything else is in pyproject.toml):

  netdissect.tally._kernel      the IoU tally's fused upsample + threshold + count
  netdissect.stats._topvalues   the exact threshold state
  netdissect.report._overlay    the report's overlay indices (tiles.compose_overlays)

The extensions are optional: when one cannot be compiled, netdissect uses its torch or numpy
code path, which gives the same results. -ffp-contract=off keeps the compiler from fusing a
multiply and an add that torch keeps apart: the kernel is used only where its arithmetic equals
torch's bit for bit. Where the compiler has OpenMP, the pass's two kernels are built with it, so
that they run on the OpenMP threads torch's CPU operations use (see _topvalues.c); elsewhere
they are built without it and slice their work over threads of their own.
"""
import os
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FLAGS = dict(extra_compile_args=["-O3", "-ffp-contract=off", "-std=c99"], libraries=["m"], optional=True)
OPENMP = ["-fopenmp"]
USES_OPENMP = ("netdissect.tally._kernel", "netdissect.stats._topvalues")

PROBE = """#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+ : n)
n += 1;
return n > 0 ? 0 : 1; }
"""


class BuildExt(build_ext):
    """build_ext that adds OpenMP to the extensions that use it when a probe compiles and links."""

    def build_extensions(self):
        if self._has_openmp():
            for ext in self.extensions:
                if ext.name in USES_OPENMP:
                    ext.extra_compile_args = ext.extra_compile_args + OPENMP
                    ext.extra_link_args = ext.extra_link_args + OPENMP
        super().build_extensions()

    def _has_openmp(self) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as f:
                f.write(PROBE)
            try:
                objects = self.compiler.compile([source], output_dir=tmp, extra_postargs=OPENMP)
                self.compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=OPENMP)
            except Exception:   # CompileError, LinkError, or no compiler: build without OpenMP
                return False
        return True


setup(cmdclass={"build_ext": BuildExt}, ext_modules=[
    Extension("netdissect.tally._kernel", ["src/netdissect/tally/_kernel.c"], **FLAGS),
    Extension("netdissect.stats._topvalues", ["src/netdissect/stats/_topvalues.c"], **FLAGS),
    Extension("netdissect.report._overlay", ["src/netdissect/report/_overlay.c"], **FLAGS),
])
