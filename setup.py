"""Builds the optional C extension of the IoU tally (netdissect.tally._kernel); everything else is
in pyproject.toml.

The extension is optional: when it cannot be compiled, netdissect uses its torch code path.
-ffp-contract=off keeps the compiler from fusing a multiply and an add that torch keeps apart:
the kernel is used only where its arithmetic equals torch's bit for bit.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "netdissect.tally._kernel", ["src/netdissect/tally/_kernel.c"],
    extra_compile_args=["-O3", "-ffp-contract=off", "-std=c99"], libraries=["m"], optional=True)])
