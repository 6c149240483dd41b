"""The compiled helper (drtool/sources/_fsbatch.c); everything else is in setup.cfg.

Optional: where it cannot be built (no compiler, no Python headers) the
install goes on and drtool uses its pure-Python path (drtool/sources/fsbatch.py).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("drtool.sources._fsbatch", ["drtool/sources/_fsbatch.c"],
                             extra_compile_args=["-O2", "-Wall"], optional=True)])
