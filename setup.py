"""Builds the optional C kernel of the IoU tally; everything else is in pyproject.toml.

The kernel is optional: when it cannot be compiled, netdissect uses its torch code path.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "netdissect._tallykernel", ["src/netdissect/_tallykernel.c"],
    extra_compile_args=["-O3", "-ffp-contract=off", "-std=c99"], libraries=["m"], optional=True)])
