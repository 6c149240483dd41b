"""Catalog bytes per object on PostgreSQL for a sharded files source (docs/scale.md).

Usage (from the repository root, with .venv): .venv/bin/python scripts/bench_shard_catalog.py [DIRS] [HASH]
(DIRS x 100 files of 64 bytes, shards = 8, two workers, two sets; a throwaway PostgreSQL from tests/dbservers.py).
HASH: content_hash = "sha1" or "sha256" for the source (the per-row cost of a recorded hash: an
object-store source records an ETag, "etag:" + 32 hex digits, a little shorter than "sha1:" + 40).
"""
import json, os, subprocess, sys, time
if any(a in ("-h", "--help") for a in sys.argv[1:]):
    print(__doc__.strip())
    sys.exit(0)
sys.path.insert(0, "tests")
from pathlib import Path
from dbservers import postgres_server
from conftest import make_env

N_DIRS, PER_DIR, SHARDS = int(sys.argv[1]) if len(sys.argv) > 1 else 200, 100, 8
HASH_LINE = f'content_hash = "{sys.argv[2]}"\n' if len(sys.argv) > 2 else ""
tmp = Path(os.environ.get("TMPDIR", "/var/tmp")) / "drtool-shard-catalog"; subprocess.run(["rm", "-rf", str(tmp)]); tmp.mkdir(parents=True)
src = tmp / "media"
for d in range(N_DIRS):
    (src / f"{d:03x}").mkdir(parents=True)
    for i in range(PER_DIR):
        (src / f"{d:03x}" / f"File_{d}_{i}_some_name.jpg").write_bytes(os.urandom(64))
objects = N_DIRS * PER_DIR
with postgres_server() as pg:
    pg.sql("CREATE DATABASE cat")
    env = make_env(tmp / "dr")
    env.env["DRTOOL_CATALOG"] = f"postgresql+psycopg://postgres@/cat?host={pg.root}&port={pg.port}"
    (tmp / "drtool.toml").write_text(f'[sources.media]\ntype = "files"\npaths = ["{src}"]\nshards = {SHARDS}\n{HASH_LINE}')
    env.env["DRTOOL_CONFIG"] = str(tmp / "drtool.toml")
    assert env.run("init").code == 0
    def sizes():
        rows = pg.sql("SELECT relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                      "WHERE n.nspname='public' AND c.relkind='r' ORDER BY 2 DESC", dbname="cat")
        return {r[0]: int(r[1]) for r in rows}
    base = sizes()
    for run in range(2):
        t = time.time()
        procs = [subprocess.Popen([sys.executable, "-m", "drtool", "backup", "--source", "media", "--json"], env=env.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate() for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        wall = time.time() - t
        now = sizes()
        print(json.dumps({"run": run, "objects": objects, "wall_s": round(wall, 1),
                          "growth": {k: now[k] - base.get(k, 0) for k in now if now[k] != base.get(k, 0)},
                          "total_growth_per_object": round((sum(now.values()) - sum(base.values())) / objects, 1)}))
        base = now
    print(pg.sql("SELECT count(*) FROM file_versions", dbname="cat"), pg.sql("SELECT count(*) FROM shard_leases", dbname="cat"))
