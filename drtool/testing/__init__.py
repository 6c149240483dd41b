"""Fakes and checks for storage backends: for drtool's tests, and for anyone writing a backend.

Importable by anyone, imported by no product module (tests/test_layering.py):

* :class:`MemoryBackend` -- a consistent in-memory store;
* :class:`FaultyBackend` -- wraps any backend and fails, damages or drops
  chosen operations, deterministically;
* :class:`LaggingListings` -- wraps any backend so that listings lag puts
  and deletes by a chosen number of listings, as S3-compatible stores may;
* :func:`verify_backend` -- the storage contract as executable checks: one
  call verifies a backend and names every check it fails, and why.
"""
from drtool.testing.conformance import (CHECKS, BackendCheck, BackendCheckFailed, CheckOutcome, run_check,
                                        verify_backend)
from drtool.testing.faults import FaultRule, FaultyBackend
from drtool.testing.lagging import LaggingListings
from drtool.testing.memory import MemoryBackend

__all__ = ["CHECKS", "BackendCheck", "BackendCheckFailed", "CheckOutcome", "FaultRule", "FaultyBackend",
           "LaggingListings", "MemoryBackend", "run_check", "verify_backend"]
