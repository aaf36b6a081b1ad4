"""Builds the optional C extensions (everything else is in pyproject.toml):

  netdissect.tally._kernel      the IoU tally's fused upsample + threshold + count
  netdissect.stats._topvalues   the exact threshold state
  netdissect.report._overlay    the report's overlay indices (tiles.compose_overlays)

The extensions are optional: when one cannot be compiled, netdissect uses its torch or numpy
code path, which gives the same results. -ffp-contract=off keeps the compiler from fusing a
multiply and an add that torch keeps apart: the kernel is used only where its arithmetic equals
torch's bit for bit.
"""
from setuptools import Extension, setup

FLAGS = dict(extra_compile_args=["-O3", "-ffp-contract=off", "-std=c99"], libraries=["m"], optional=True)

setup(ext_modules=[
    Extension("netdissect.tally._kernel", ["src/netdissect/tally/_kernel.c"], **FLAGS),
    Extension("netdissect.stats._topvalues", ["src/netdissect/stats/_topvalues.c"], **FLAGS),
    Extension("netdissect.report._overlay", ["src/netdissect/report/_overlay.c"], **FLAGS),
])
