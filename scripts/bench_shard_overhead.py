"""Fixed cost per shard: one worker, a 20,000-file tree, unsharded vs shards = 8 and 32 (docs/scale.md).

Usage (repository root, with .venv): .venv/bin/python scripts/bench_shard_overhead.py
"""
import os, subprocess, sys, time
if any(a in ("-h", "--help") for a in sys.argv[1:]):
    print(__doc__.strip())
    sys.exit(0)
sys.path.insert(0, "tests")
from pathlib import Path
from conftest import make_env
tmp = Path("/var/tmp/drtool-shard-overhead"); subprocess.run(["rm", "-rf", str(tmp)]); tmp.mkdir(parents=True)
src = tmp / "media"
for d in range(200):
    (src / f"{d:03x}").mkdir(parents=True)
    for i in range(100):
        (src / f"{d:03x}" / f"f{i}.jpg").write_bytes(os.urandom(64))
for shards in (None, 8, 32):
    env = make_env(tmp / f"dr-{shards}")
    cfg = tmp / f"c-{shards}.toml"
    cfg.write_text(f'[sources.m]\ntype = "files"\npaths = ["{src}"]\n' + (f"shards = {shards}\n" if shards else ""))
    env.env["DRTOOL_CONFIG"] = str(cfg)
    assert env.run("init").code == 0
    times = []
    for run in range(2):
        t = time.time()
        r = subprocess.run([sys.executable, "-m", "drtool", "backup", "--source", "m"], env=env.env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        times.append(round(time.time() - t, 1))
    print(f"shards={shards}: first {times[0]} s, unchanged {times[1]} s", flush=True)
