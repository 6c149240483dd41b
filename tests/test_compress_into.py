"""zstd into a reused output area (repository/compressinto.py) and the envelope's use of it."""
from __future__ import annotations

import os

import pytest
import zstandard

from drtool.repository import compressinto
from treegen import dump_like_text
from drtool.repository.envelope import INTO_MIN, RAW, ZSTD, Envelope

pytestmark = pytest.mark.skipif(not compressinto.available(), reason="zstd's cffi backend is not installed")


@pytest.mark.parametrize("profile", ["long", "text", "comp"])
def test_frames_are_the_ones_the_c_backend_writes_with_the_same_profile(profile: str) -> None:
    envelope = Envelope(os.urandom(32))
    envelope.text_ldm = profile == "long"
    long = profile != "comp"
    data = dump_like_text(3 * 1024 * 1024)
    out = bytearray(compressinto.bound(len(data)))
    size = envelope._into(long).compress_into(data, out)
    assert bytes(out[:size]) == envelope._compressor(long).compress(data)
    assert zstandard.ZstdDecompressor().decompress(bytes(out[:size])) == data


def test_one_context_compresses_frame_after_frame_into_the_same_area() -> None:
    comp = compressinto.IntoCompressor(level=3)
    area = compressinto.OutputArea()
    first, second = dump_like_text(2_000_000, seed=2), dump_like_text(1_500_000, seed=3)
    out = area.take(compressinto.bound(len(first)))
    with memoryview(out) as view:
        size = comp.compress_into(first, view)
        assert zstandard.ZstdDecompressor().decompress(bytes(view[:size])) == first
    again = area.take(compressinto.bound(len(second)))
    assert again is out  # no new mapping for a frame that fits
    with memoryview(again) as view:
        size = comp.compress_into(second, view)
        assert zstandard.ZstdDecompressor().decompress(bytes(view[:size])) == second
    old_size = len(out)
    bigger = area.take(old_size + 1)
    assert len(bigger) > old_size and out.closed  # grown: the smaller mapping is unmapped
    area.release()  # pages handed back; the mapping stays usable
    with memoryview(bigger) as view:
        size = comp.compress_into(first, view)
        assert zstandard.ZstdDecompressor().decompress(bytes(view[:size])) == first


def test_an_output_below_zstd_s_bound_is_refused() -> None:
    comp = compressinto.IntoCompressor(level=3)
    data = os.urandom(100_000)
    with pytest.raises(ValueError):
        comp.compress_into(data, bytearray(compressinto.bound(len(data)) - 1))


@pytest.mark.parametrize("long", [True, False])
@pytest.mark.parametrize("size", [100, 50_000, INTO_MIN, 2_000_000])
def test_sealed_objects_open_to_their_plaintext_compressed_or_raw(long: bool, size: int) -> None:
    envelope = Envelope(os.urandom(32))
    text, noise = dump_like_text(size), os.urandom(size)
    sealed_text = envelope.seal(b"group", b"", memoryview(text), long=long)
    sealed_noise = envelope.seal(b"group", b"", noise, long=long)
    if size > 1000:  # a hundred bytes need not compress; the rest must
        assert sealed_text[1] == ZSTD and len(sealed_text) < len(text) * 0.9
    assert sealed_noise[1] == RAW  # incompressible (by the sample, from 64 KiB on): stored as it is
    assert bytes(envelope.open(b"group", b"", sealed_text)) == text
    assert bytes(envelope.open(b"group", b"", sealed_noise)) == noise
    envelope.release_output()
    assert bytes(envelope.open(b"group", b"", envelope.seal(b"group", b"", text, long=long))) == text


def test_without_cffi_groups_are_sealed_by_the_c_backend_and_read_by_either(tmp_path) -> None:
    """An installation without zstd's cffi backend keeps ZstdCompressor.compress; what either
    path seals, both open."""
    import subprocess
    import sys

    key, text = os.urandom(32), dump_like_text(3_000_000, seed=4)
    (tmp_path / "plain").write_bytes(text)
    sealed_here = Envelope(key).seal(b"group", b"", text, long=True)
    (tmp_path / "here").write_bytes(sealed_here)
    script = f"""
import sys
sys.modules["zstandard._cffi"] = None  # as if zstandard's cffi backend could not load
from pathlib import Path
from drtool.repository import compressinto
from drtool.repository.envelope import Envelope
assert not compressinto.available()
base = Path({str(tmp_path)!r})
envelope = Envelope(bytes.fromhex({key.hex()!r}))
plain = (base / "plain").read_bytes()
assert bytes(envelope.open(b"group", b"", (base / "here").read_bytes())) == plain
(base / "there").write_bytes(envelope.seal(b"group", b"", plain, long=True))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    sealed_there = (tmp_path / "there").read_bytes()
    assert sealed_there[1] == ZSTD
    assert bytes(Envelope(key).open(b"group", b"", sealed_there)) == text
