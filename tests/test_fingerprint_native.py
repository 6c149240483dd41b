"""The sub-page full's block fingerprints in C (drtool/databases/_fingerprint.c) against the
pure-Python path they replace: the same value for every block, or the block maps written by
either would tell unchanged blocks for changed ones (and every night-2 block would be stored)."""
from __future__ import annotations

import random

import pytest
import xxhash

from drtool.databases import subpage_format as fmt


def test_the_compiled_helper_is_built() -> None:
    """scripts/test installs libxxhash-dev, so CI runs the compiled path (setup.py builds it)."""
    assert fmt._NATIVE is not None, "drtool/databases/_fingerprint.c was not built (pip install -e .)"


@pytest.mark.parametrize("seed", [0, 1, 0x9E3779B97F4A7C15, 2**64 - 1])
def test_the_same_fingerprints_as_the_python_path(seed: int) -> None:
    rng = random.Random(seed & 0xFFFF)
    pages = rng.randbytes(3 * 1024 * 1024) + bytes(16 * 1024) + rng.randbytes(fmt.BLOCK * 7)
    compiled = fmt.fingerprints(memoryview(pages), seed)
    python = fmt.fingerprints(memoryview(pages), seed, compiled=False)
    assert compiled == python
    assert len(compiled) == len(pages) // fmt.BLOCK
    first = pages[:fmt.BLOCK]
    assert compiled[0] == (xxhash.xxh3_64_intdigest(first, seed) or 1)


def test_a_buffer_of_partial_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match="512-byte blocks"):
        fmt.fingerprints(bytes(fmt.BLOCK + 1), 3)
