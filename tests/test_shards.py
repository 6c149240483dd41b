"""Sharded sources: many workers, one snapshot set (docs/scale.md "Many hosts, one repository").

* 4 worker processes against moto's S3 server with a throwaway PostgreSQL
  catalog; one of them is killed with SIGKILL while it holds a shard (its
  data written and indexed, its snapshot not yet): the others take the
  shard over once the lease expires, the set commits, the restore equals
  the bucket, no shard has two snapshots and no blob is indexed twice.
* One host on SQLite, a file tree: two workers at once, a worker killed
  after writing its shard's snapshot but before marking the shard done
  (the snapshot is adopted, not made twice), incremental re-runs per
  shard, forget keeping whole sets.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from conftest import DrEnv, make_env
from dbservers import PgServer, postgres_server, wait_for
from s3server import DUMMY_ENV, MotoServer, create_bucket, make_client, moto_server  # noqa: F401 - fixture

from drtool import api
from drtool.api import shardsets
from drtool.catalog.shardsets import ShardSets
from drtool.repository.objects import INDEX
from drtool.backends.s3_source import ListedObject
from drtool.backup.shards import shard_listing
from drtool.sources.shards import shard_of

PINNED = {"a/": 29, "a/ab/": 190, "Foo.jpg": 117}  # BLAKE2b-64 mod 256: pinned, never to change
LEASE = 5  # seconds: short, so the test waits little for the dead worker's lease (default: 300)


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with postgres_server() as server:
        yield server


def write_config(env: DrEnv, table: str) -> None:
    config = env.tmp / "drtool.toml"
    config.write_text(table)
    env.env["DRTOOL_CONFIG"] = str(config)


def spawn(env: DrEnv, *args: str, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "drtool", *args], env={**env.env, **(extra or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=env.tmp)


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def leases(env: DrEnv) -> list[dict]:
    session = env.session()
    try:
        sets = ShardSets(session.catalog)
        return [row for s in sets.sets() for row in sets.shards(s.id)]
    finally:
        session.close()


def indexed_blob_ids(session: api.Session) -> list[bytes]:
    """Every blob id of every index object in the repository (duplicates kept)."""
    ids: list[bytes] = []
    for info in session.repo.backend.list(INDEX + "/"):
        for pack in session.repo.read_index_object(info.name.rsplit("/", 1)[-1]):
            ids += [entry.blob_id for entry in pack.entries]
    return ids


# ----- 4 workers, S3 source, PostgreSQL catalog, one killed --------------------------------------
@pytest.mark.slow  # ~40 s idle (PostgreSQL start, 5 worker processes, a lease expiry); 64 s loaded
def test_four_workers_one_killed_mid_shard(moto_server: MotoServer, pg: PgServer,  # noqa: F811 - fixture
                                           tmp_path: Path) -> None:
    shards = 8
    bucket = create_bucket(moto_server.url)
    s3 = make_client(moto_server.url)
    objects = {f"media/{d:x}/{d:x}{e:x}/file-{i}.jpg": os.urandom(600 + 37 * i + d)
               for d in range(16) for e in range(2) for i in range(3)}
    objects["media/top.txt"] = b"an object above the unit level"
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/jpeg", Metadata={"k": key[-8:]})
    units = {shard_of(k[len("media/"):].split("/")[0] + ("/" if "/" in k[len("media/"):] else ""), shards)
             for k in objects}
    assert len(units) >= 5  # the keys really spread over the shards

    pg.sql("CREATE DATABASE shard_catalog")
    env = make_env(tmp_path / "dr")
    env.env.update(DUMMY_ENV, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                   AWS_EC2_METADATA_DISABLED="true",
                   DRTOOL_CATALOG=f"postgresql+psycopg://postgres@/shard_catalog?host={pg.root}&port={pg.port}")
    env.catalog = env.env["DRTOOL_CATALOG"]  # type: ignore[assignment]
    write_config(env, f"""
[sources.media]
type = "s3"
endpoint = "{moto_server.url}"
bucket = "{bucket}"
prefix = "media/"
addressing_style = "path"
connections = 2
shards = {shards}
lease_seconds = {LEASE}
""")
    env.init()

    # the victim starts first and claims shard 0; it dies (SIGKILL) after its shard's packs and
    # index are stored, before the snapshot is written: the crash point kills it like a power cut
    victim = spawn(env, "backup", "--source", "media", "--json", extra={"DRTOOL_CRASH_AT": "backup-before-snapshot"})
    wait_for(lambda: any(r["state"] == "leased" for r in leases(env)), timeout=60, what="the victim's lease")
    workers = [spawn(env, "backup", "--source", "media", "--json") for _ in range(3)]
    code, _out, err = finish(victim)
    assert code == -9, err
    outcomes = [finish(w) for w in workers]
    for code, _out, err in outcomes:
        assert code == 0, err
    docs = [json.loads(out) for _c, out, _e in outcomes]
    assert len({d["set"] for d in docs}) == 1  # all joined the victim's set
    assert sum(d["committed_here"] for d in docs) == 1
    assert all(d["state"] == "committed" for d in docs)
    rows = leases(env)
    assert [r["state"] for r in rows] == ["done"] * shards
    taken_over = [r for r in rows if r["attempts"] > 1]
    assert len(taken_over) == 1 and taken_over[0]["shard"] == 0  # the victim's shard, after the lease expired

    session = env.session()
    try:
        (snapset,) = shardsets.snapshot_sets(session, "media")
        assert snapset.complete and not snapset.extra  # one snapshot per shard, no duplicates
        assert len(session.snapshots()) == shards
        blobs = indexed_blob_ids(session)
        assert len(blobs) == len(set(blobs))  # nothing stored twice: the taker found the victim's blobs
        assert len(set(blobs)) >= len(objects)
    finally:
        session.close()

    target = tmp_path / "restored"
    result = env.run("restore", snapset.id, "--target", str(target))
    assert result.code == 0, result.err
    found = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert found == {k[len("media/"):]: v for k, v in objects.items()}

    copy = create_bucket(moto_server.url)
    result = env.run("restore", "latest", "--source", "media", "--to-bucket", f"s3://{copy}/back")
    assert result.code == 0, result.err
    for key, body in objects.items():
        got = s3.get_object(Bucket=copy, Key=f"back/{key[len('media/'):]}")
        assert got["Body"].read() == body and got["Metadata"] == {"k": key[-8:]}

    # a second set: one worker alone, incremental per shard (no GET, no new blob)
    s3.put_object(Bucket=bucket, Key="media/3/30/file-0.jpg", Body=b"changed")
    code, out, err = finish(spawn(env, "backup", "--source", "media", "--json"))
    assert code == 0, err
    second = json.loads(out)
    assert second["set"] != snapset.id and second["state"] == "committed"
    gets = sum(s["requests"]["source_gets"] for s in second["snapshots"])
    assert gets == 1
    assert sum(s["summary"]["files_unchanged"] for s in second["snapshots"]) == len(objects) - 1
    listing = env.run("snapshots")
    assert listing.code == 0 and listing.out.count("set-") == 2, listing.out


# ----- one host, SQLite catalog, a file tree ---------------------------------------------------
def make_tree(root: Path) -> dict[str, bytes]:
    files = {}
    for top in range(12):
        for i in range(4):
            rel = f"d{top:02d}/sub/f{i}.bin" if top % 3 else f"f{top:02d}-{i}.txt"
            files[rel] = os.urandom(300 + top * 10 + i)
    for rel, body in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return files


def test_sqlite_single_host_file_tree_sets(tmp_path: Path) -> None:
    src = tmp_path / "wiki"
    files = make_tree(src)
    env = make_env(tmp_path / "dr")
    write_config(env, f"""
[sources.tree]
type = "files"
paths = ["{src}"]
shards = 4
lease_seconds = {LEASE}

[sources.tree.retention]
keep_last = 1
""")
    env.init()
    # one worker dies after writing its shard's snapshot, before marking the shard done
    victim = spawn(env, "backup", "--source", "tree", extra={"DRTOOL_CRASH_AT": "shard-before-done"})
    assert finish(victim)[0] == -9
    both = [spawn(env, "backup", "--source", "tree", "--json") for _ in range(2)]
    docs = []
    for proc in both:
        code, out, err = finish(proc)
        assert code == 0, err
        docs.append(json.loads(out))
    assert sum(len(d["adopted_shards"]) for d in docs) == 1  # the dead worker's snapshot, not a second one
    assert sum(len(d["snapshots"]) for d in docs) == 3
    for snap in (s for d in docs for s in d["snapshots"]):  # each shard counts its own new blobs (file
        summary = snap["summary"]                            # bodies, trees), not its worker's running total
        assert summary["blobs_added"] <= summary["files"] + summary["dirs"] + 2, summary
    session = env.session()
    try:
        (snapset,) = shardsets.snapshot_sets(session, "tree")
        assert snapset.complete and not snapset.extra
    finally:
        session.close()

    (src / "d01" / "sub" / "f0.bin").write_bytes(b"new")
    code, out, err = finish(spawn(env, "backup", "--source", "tree", "--json"))
    assert code == 0, err
    second = json.loads(out)
    assert sum(s["summary"]["files_unchanged"] for s in second["snapshots"]) == len(files) - 1, \
        [(s.get("parent"), s["summary"]) for s in second["snapshots"]]  # seen once at 0: which part failed
    assert all(s["parent"] for s in second["snapshots"])  # each shard's parent: its previous snapshot
    files["d01/sub/f0.bin"] = b"new"
    # find --name of a sharded source searches every shard's series: both versions of the file
    found = env.run("find", "f0.bin", "--name", "tree", "--json")
    assert found.code == 0, found.err
    versions = json.loads(found.out)
    named = sum(1 for rel in files if rel.endswith("/f0.bin"))
    assert len(versions) == named + 1, found.out  # every f0.bin once, d01's twice (old and new)
    assert [v["size"] for v in versions].count(3) == 1, found.out
    assert env.run("find", "f0.bin", "--name", "tre", "--json").out.strip() == "[]"  # not a prefix match

    target = tmp_path / "out"
    plan = env.run("restore", "latest", "--source", "tree", "--target", str(target), "--dry-run", "--json")
    assert plan.code == 0 and not target.exists(), plan.err
    assert sum(r["files"] for r in json.loads(plan.out)["results"]) == len(files)
    result = env.run("restore", "latest", "--source", "tree", "--target", str(target))
    assert result.code == 0, result.err
    found = {str(p.relative_to(target / "wiki")): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert found == files

    result = env.run("forget", "--json")  # keep_last = 1 keeps the newest *set*: all its 4 shards
    assert result.code == 0, result.err
    session = env.session()
    try:
        (kept,) = shardsets.snapshot_sets(session, "tree")
        assert kept.id == second["set"] and kept.complete and len(session.snapshots()) == 4
    finally:
        session.close()

    # a rehearsal restores the whole set into one sandbox and checks it as one unit
    env.env["DRTOOL_SANDBOX_ROOT"] = str(tmp_path / "sandboxes")
    rehearsal = env.run("rehearse", "--sample", "1", "--json")
    assert rehearsal.code == 0, rehearsal.err
    step = json.loads(rehearsal.out)[0]["steps"][0]
    assert step["status"] == "passed" and step["restored"]["files"] == len(files), step
    # a drill can restore a sample of the set's shards: which ones is drawn, the checks hold for them
    book = tmp_path / "sample.toml"
    book.write_text('name = "sample"\nsource = "tree"\nshards = 2\n\n[[validations]]\ntype = "files"\n'
                    'tolerance = "0%"\n\n[[validations]]\ntype = "sample"\ncount = 5\n')
    sampled = env.run("rehearse", str(book), "--json")
    assert sampled.code == 0, sampled.err
    step = json.loads(sampled.out)[0]["steps"][0]
    assert step["status"] == "passed", step
    assert step["shards"]["of"] == 4 and len(set(step["shards"]["restored"])) == 2, step["shards"]
    assert set(step["shards"]["restored"]) <= {0, 1, 2, 3}
    assert 0 < step["restored"]["files"] < len(files), step["restored"]
    status = env.run("status", "--json")
    (tree,) = [s for s in json.loads(status.out)["sources"] if s["name"] == "tree"]
    assert tree["snapshots"] == 1 and "never backed up" not in status.out, status.out

    result = env.run("forget", kept.id[:12])  # by set id: every shard goes
    assert result.code == 0, result.err
    assert env.run("snapshots", "--json").out.strip() == "[]"


# ----- the pieces: unit hash, shard listing, leases -----------------------------------------------
def test_unit_hash_is_pinned_and_config_is_checked() -> None:
    # the hash decides which series (parent) a key's object is compared with: it must never change
    pinned = {u: shard_of(u, 256) for u in ("a/", "a/ab/", "Foo.jpg")}
    assert pinned == PINNED, pinned
    from drtool.errors import ConfigError
    from drtool.sources.shards import sharding_from_table, shard_series
    assert shard_series("media", 7, 256) == "media/shard-007-of-256"
    assert sharding_from_table("m", {}) is None
    assert sharding_from_table("m", {"shards": 4}).lease_seconds == 300  # type: ignore[union-attr]
    for bad in ({"shards": 0}, {"shards": True}, {"shards": 4, "shard_depth": 9}, {"shards": 4, "lease_seconds": 0},
                {"lease_seconds": 5}):
        with pytest.raises(ConfigError):
            sharding_from_table("m", bad)


class FakeStore:
    """The listing interface of the object-store clients over a sorted key list."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = sorted(keys)

    def iter_objects(self, prefix: str) -> Iterator[ListedObject]:
        return (ListedObject(k, 1, "e", 0) for k in self.keys if k.startswith(prefix))

    def iter_level(self, prefix: str) -> Iterator[tuple[str, ListedObject | None]]:
        seen = set()
        for key in self.keys:
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if "/" in rest:
                sub = prefix + rest.split("/", 1)[0] + "/"
                if sub not in seen:
                    seen.add(sub)
                    yield sub, None
            else:
                yield key, ListedObject(key, 1, "e", 0)


@pytest.mark.parametrize("depth", [1, 2])
def test_shard_listings_partition_the_bucket_in_key_order(depth: int) -> None:
    keys = [f"m/{a}/{a}{b}/f{i}" for a in "0a-/" if a != "/" for b in "01" for i in range(3)]
    keys += ["m/top", "m/0", "m/0-x", "m/a!", "m/", "m/z/", "other/x"]
    store = FakeStore(keys)
    parts = [list(shard_listing(store, i, 5, depth)("m/")) for i in range(5)]  # type: ignore[arg-type]
    for part in parts:
        assert [o.key for o in part] == sorted(o.key for o in part)  # the tree builder needs key order
    got = sorted(o.key for part in parts for o in part)
    assert got == sorted(k for k in keys if k.startswith("m/"))  # every key once, nothing outside
    assert sum(1 for part in parts if part) >= 3


def test_leases_expire_are_taken_over_and_guard_every_write(tmp_path: Path) -> None:
    env = make_env(tmp_path / "dr")
    env.init()
    session = env.session()
    try:
        sets = ShardSets(session.catalog)
        started = datetime.now(timezone.utc)
        first = sets.open_set("media", 2, "h1")
        assert first is not None and sets.open_set("media", 2, "h2") == first  # one open set per source
        from drtool.errors import ConfigError
        with pytest.raises(ConfigError):
            sets.open_set("media", 3, "h2")
        a = sets.claim(first.id, "h1:1", 0.5)
        b = sets.claim(first.id, "h2:2", 30)
        assert a is not None and b is not None and {a.shard, b.shard} == {0, 1}
        assert sets.claim(first.id, "h3:3", 30) is None  # both held
        time.sleep(0.7)  # a's lease expires (its worker "died")
        c = sets.claim(first.id, "h3:3", 30)
        assert c is not None and c.shard == a.shard and c.attempt == 2
        assert not sets.renew(a, 30) and not sets.holds(a) and not sets.finish(a, "x" * 64)  # a lost it
        assert not sets.release(a, "late error")
        assert sets.finish(c, "c" * 64) and not sets.try_commit(first.id)  # b is still working
        assert sets.renew(b, 30) and sets.holds(b) and sets.finish(b, "b" * 64)
        assert sets.try_commit(first.id) and not sets.try_commit(first.id)  # committed exactly once
        late = sets.open_set("media", 2, "h4", since=started)  # started with the others, came late
        assert late is not None and late.id == first.id and late.state == "committed"
        second = sets.open_set("media", 2, "h1")
        assert second is not None and second.id != first.id
        lease = sets.claim(second.id, "h1:1", 30)
        assert lease is not None
        for _attempt in range(3):  # a shard that keeps failing fails the set
            failed = sets.release(lease, "bucket gone")
            lease = sets.claim(second.id, "h1:1", 30) or lease
        assert failed and sets.get_set(second.id).state == "failed"  # type: ignore[union-attr]
        assert sets.open_set("media", 2, "h1", join_only=True) is None
    finally:
        session.close()


def test_a_worker_that_looks_as_the_last_shard_ends_reports_the_set_committed(tmp_path: Path) -> None:
    """The race seen in the four-worker test: with no shard left to claim, a worker tried to commit
    (another still held a shard), that other worker finished its shard at once, and this one then
    saw nobody holding a shard and left saying "open" while the set was complete.  It now looks
    once more and commits it (or finds it committed)."""
    from drtool.api.shardsets import sharded_source
    from drtool.backup.shards import WorkerOptions, run_worker
    from drtool.config import load_config
    (tmp_path / "tree").mkdir()
    env = make_env(tmp_path / "dr")
    write_config(env, f'[sources.tree]\ntype = "files"\npaths = ["{tmp_path / "tree"}"]\nshards = 2\n')
    env.init()
    session = env.session()
    try:
        others = ShardSets(session.catalog)
        row = others.open_set("tree", 2, "other-host")
        assert row is not None
        held = [others.claim(row.id, "other-host:1", 300) for _ in range(2)]  # the other worker's two shards

        class OtherWorkerEndsMeanwhile(ShardSets):
            def try_commit(self, set_id: str) -> bool:
                committed = super().try_commit(set_id)
                while held:  # ... and just after this commit attempt, the other worker's shards are done
                    lease = held.pop()
                    assert lease is not None and super().finish(lease, "f" * 64)
                return committed

        def no_sleep(seconds: float) -> None:
            raise AssertionError("the worker waited although nobody held a shard")

        src = sharded_source(load_config(env.env["DRTOOL_CONFIG"]), "tree")
        result = run_worker(session, src, options=WorkerOptions(sets_factory=OtherWorkerEndsMeanwhile,
                                                                 sleep=no_sleep))
        assert result.set_id == row.id and not result.results  # it claimed nothing
        assert (result.state, result.committed_here) == ("committed", True)
        assert others.get_set(row.id).state == "committed"  # type: ignore[union-attr]
    finally:
        session.close()


def test_concurrent_claims_on_postgresql_never_share_a_shard(pg: PgServer, tmp_path: Path) -> None:
    """SKIP LOCKED: 8 claimers at once, each shard to exactly one of them, nobody waits on a row."""
    import threading
    pg.sql("CREATE DATABASE lease_race")
    env = make_env(tmp_path / "dr")
    env.env["DRTOOL_CATALOG"] = f"postgresql+psycopg://postgres@/lease_race?host={pg.root}&port={pg.port}"
    env.catalog = env.env["DRTOOL_CATALOG"]  # type: ignore[assignment]
    env.init()
    session = env.session()
    try:
        sets = ShardSets(session.catalog)
        row = sets.open_set("media", 64, "h")
        assert row is not None
        claimed: list[tuple[str, int]] = []
        gate = threading.Barrier(8)

        def claimer(name: str) -> None:
            gate.wait()
            while (lease := sets.claim(row.id, name, 60)) is not None:
                claimed.append((name, lease.shard))
                assert sets.finish(lease, "0" * 64)
        threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(shard for _n, shard in claimed) == list(range(64))  # each shard once
        assert len({name for name, _s in claimed}) >= 2
        assert sets.try_commit(row.id)
    finally:
        session.close()


def test_a_worker_knows_when_it_started_to_the_tick() -> None:
    """A set committed just before a worker started must not count as committed after it:
    /proc/stat's whole-second boot time once made the start up to a second early."""
    import subprocess
    import sys
    from datetime import datetime, timedelta, timezone
    before = datetime.now(timezone.utc)
    out = subprocess.run([sys.executable, "-c", "from drtool.backup.shards import process_started_at; "
                          "print(process_started_at().isoformat())"], capture_output=True, text=True, check=True)
    after = datetime.now(timezone.utc)
    started = datetime.fromisoformat(out.stdout.strip())
    assert before - timedelta(milliseconds=30) <= started <= after, (before, started, after)
