"""Builds the optional C extensions: the IoU tally (netdissect.tally._kernel) and the exact
threshold state (netdissect.stats._topvalues); everything else is in pyproject.toml.

The extensions are optional: when one cannot be compiled, netdissect uses its torch code path.
-ffp-contract=off keeps the compiler from fusing a multiply and an add that torch keeps apart:
the kernel is used only where its arithmetic equals torch's bit for bit.
"""
from setuptools import Extension, setup

FLAGS = dict(extra_compile_args=["-O3", "-ffp-contract=off", "-std=c99"], libraries=["m"], optional=True)

setup(ext_modules=[
    Extension("netdissect.tally._kernel", ["src/netdissect/tally/_kernel.c"], **FLAGS),
    Extension("netdissect.stats._topvalues", ["src/netdissect/stats/_topvalues.c"], **FLAGS),
])
