"""drtool.digests gives hashlib's digests and secrets' tokens without loading libcrypto."""
from __future__ import annotations

import hashlib
import subprocess
import sys

from drtool import digests


def test_the_digests_are_hashlibs() -> None:
    data = bytes(range(256)) * 300
    assert digests.blake2b(data, digest_size=16).digest() == hashlib.blake2b(data, digest_size=16).digest()
    keyed = digests.blake2b(data, key=b"k" * 64, person=b"drtool-kdf-memo", digest_size=32).digest()
    assert keyed == hashlib.blake2b(data, key=b"k" * 64, person=b"drtool-kdf-memo", digest_size=32).digest()
    assert digests.sha256(data).digest() == hashlib.sha256(data).digest()
    for name in ("sha256", "sha1"):
        assert digests.new_hash(name, memoryview(data)[:1000]).hexdigest() == hashlib.new(name, data[:1000]).hexdigest()


def test_tokens_and_random_bits() -> None:
    tokens = {digests.token_hex(16) for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)
    assert len(digests.token_hex(4)) == 8
    values = [digests.random_bits(63) for _ in range(2000)]
    assert all(0 <= v < 2 ** 63 for v in values)
    assert max(values) >= 2 ** 62  # the top bit is used (~1 in 2**2000 to fail by chance)
    assert {digests.random_bits(3) for _ in range(500)} == set(range(8))


def test_importing_it_loads_no_libcrypto() -> None:
    probe = ("import sys\nimport drtool.digests\n"
             "print(sorted(m for m in ('hashlib', '_hashlib', 'hmac', 'secrets') if m in sys.modules))\n"
             "print(any('libcrypto' in line for line in open('/proc/self/maps')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "False", out
