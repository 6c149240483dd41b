"""Key slots: several passphrases open the same repository; rotation re-wraps."""
from __future__ import annotations

import json
from pathlib import Path

from conftest import DrEnv


def test_add_list_remove_and_passwd(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    assert repo_env.run("backup", str(src), "--name", "n").code == 0
    added = repo_env.run("key", "add", "--label", "second site", "--json",
                         env={"DRTOOL_NEW_PASSWORD": "second passphrase"})
    assert added.code == 0, added.err
    second_id = json.loads(added.out)["id"]
    slots = json.loads(repo_env.run("key", "list", "--json").out)
    assert len(slots) == 2 and {s["label"] for s in slots} == {"initial", "second site"}
    # the new passphrase opens the repository and sees the same snapshots
    other = repo_env.run("snapshots", "--json", env={"DRTOOL_PASSWORD": "second passphrase"})
    assert other.code == 0 and len(json.loads(other.out)) == 1
    # the slot in use cannot be removed; another one can
    current = next(s["id"] for s in slots if s["current"])
    assert repo_env.run("key", "remove", current).code == 2
    assert repo_env.run("key", "remove", second_id).code == 0
    assert repo_env.run("snapshots", env={"DRTOOL_PASSWORD": "second passphrase"}).code == 12
    # passwd: the old passphrase stops working, the new one works, data intact
    changed = repo_env.run("key", "passwd", env={"DRTOOL_NEW_PASSWORD": "rotated"})
    assert changed.code == 0, changed.err
    assert repo_env.run("snapshots").code == 12
    restored = repo_env.run("restore", "latest", "--target", str(tmp_path / "out"),
                            env={"DRTOOL_PASSWORD": "rotated"})
    assert restored.code == 0
    assert (tmp_path / "out" / "src" / "f").read_text() == "data"


def test_last_slot_cannot_be_removed(repo_env: DrEnv) -> None:
    session = repo_env.session()
    try:
        (slot,) = session.repo.list_key_slots()
        from drtool.errors import DrtoolError
        try:
            session.repo.remove_key_slot(slot.slot_id)
        except DrtoolError as exc:
            assert "last key slot" in str(exc)
        else:
            raise AssertionError("removing the last key slot must fail")
    finally:
        session.close()


def test_key_slot_stores_no_secret_in_clear(repo_env: DrEnv) -> None:
    (key,) = list((repo_env.repo / "keys").iterdir())
    data = json.loads(key.read_text())
    assert data["kdf"] == "argon2id" and "salt" in data and "wrapped" in data
    assert "correct horse" not in key.read_text()


def test_concurrent_default_derivations_in_one_process_neither_hang_nor_fail() -> None:
    """Two 4-lane Argon2id derivations at once deadlocked (or failed with "Not enough memory to
    derive key") in the OpenSSL that cryptography ships; the CLI's start-up thread and a command
    derive concurrently, so derivations are serialised and remembered per process."""
    import threading
    from drtool.crypto.keys import KdfParams, derive_wrapping_key
    params = KdfParams()  # the default: 64 MiB, 3 passes, 4 lanes
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def derive(i: int) -> None:
        try:
            results[i] = derive_wrapping_key(f"passphrase {i % 2}".encode(), b"s" * 16, params)
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever happened
            errors.append(exc)

    threads = [threading.Thread(target=derive, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a key derivation hung"
    assert not errors, errors
    assert results[0] == results[2] and results[1] == results[3] and results[0] != results[1]
