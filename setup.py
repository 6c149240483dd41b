"""The compiled helpers (drtool/sources/_fsbatch.c, drtool/databases/_fingerprint.c,
drtool/repository/_idprobe.c); everything else is in setup.cfg.

Optional: where one cannot be built (no compiler, no Python headers; for _fingerprint, no
libxxhash-dev) the install goes on and drtool uses its pure-Python path
(drtool/sources/fsbatch.py, drtool/databases/subpage_format.fingerprints,
drtool/repository/idtable.IdTable.answerer).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("drtool.sources._fsbatch", ["drtool/sources/_fsbatch.c"],
                             extra_compile_args=["-O2", "-Wall"], optional=True),
                   Extension("drtool.databases._fingerprint", ["drtool/databases/_fingerprint.c"],
                             libraries=["xxhash"], extra_compile_args=["-O2", "-Wall"], optional=True),
                   Extension("drtool.repository._idprobe", ["drtool/repository/_idprobe.c"],
                             extra_compile_args=["-O2", "-Wall"], optional=True)])
