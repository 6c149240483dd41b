"""A short run of scripts/torture in CI: kills, crash points and S3 faults lose nothing.

The long run (``scripts/torture --minutes 20``) is for release testing; its
numbers are in docs/threat-model.md, "Measured".
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_short_torture_run_loses_nothing(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRTOOL_")}
    env["PYTHON"] = sys.executable
    proc = subprocess.run([str(ROOT / "scripts" / "torture"), "--minutes", "0.5", "--min-runs", "8", "--seed", "20240301",
                           "--work", str(tmp_path / "work"), "--json", str(summary)],
                          env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-3000:])
    assert summary.exists(), f"the torture run wrote no summary (exit {proc.returncode}): {proc.stderr[-3000:]}"
    total = json.loads(summary.read_text())["total"]
    assert total["data_lost"] == 0, proc.stdout[-3000:]
    assert total["problems"] == [], proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert total["kills"] + total["crash_points"] > 0 and total["faults"] > 0
    assert total["checks"] > 0 and total["verified"] > 0
