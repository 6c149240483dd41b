"""The table ``scripts/bench --databases`` prints (docs/performance.md, "Databases"): one row per
figure, MariaDB and PostgreSQL side by side, each drtool figure with its ratio to the floor."""
from __future__ import annotations

from typing import Any, Callable


def table(maria: dict[str, Any] | None, pg: dict[str, Any] | None) -> str:
    def mib(n: float) -> str:
        return f"{n / 2**20:.0f} MiB"
    lines = ["| | MariaDB | PostgreSQL |", "|---|---|---|"]

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        cells = [fn(d) if d else "—" for d in (maria, pg)]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")

    def cpu(d: dict[str, Any], key: str) -> str:
        sys_key = key.replace("_cpu_s", "_sys_s")
        return (f", CPU {d[key]:.1f} s" + (f" (sys {d[sys_key]:.1f})" if d.get(sys_key) is not None else "")
                if d.get(key) else "")

    def ratio(d: dict[str, Any], a: str, b: str) -> str:
        return f"{d[a]:.1f} s ({d[a] / d[b]:.2f}×)" if d.get(a) is not None else "—"
    row("data size (data + indexes)", lambda d: mib(d["data_bytes"]))
    row("native backup into a local directory", lambda d: f"{d['native_backup_s']:.1f} s")
    row("drtool physical backup, night 1 (× native)", lambda d: ratio(d, "physical_backup_s", "native_backup_s"))
    row("  CPU, user + sys with children: native / drtool (×)",
        lambda d: f"{d['native_backup_cpu_s']:.1f} s / {d['physical_backup_cpu_s']:.1f} s "
                  f"({d['physical_backup_cpu_s'] / d['native_backup_cpu_s']:.2f}×)"
                  + (f"; sys {d['native_backup_sys_s']:.1f} / {d['physical_backup_sys_s']:.1f} s"
                     if "native_backup_sys_s" in d else "") if d.get("native_backup_cpu_s")
        else "—")
    row("native backup + sync -f (on disk, as drtool's packs are)", lambda d: f"{d['native_durable_s']:.1f} s"
        if "native_durable_s" in d else "—")
    row("drtool physical backup, night 1 (× native + sync)",
        lambda d: ratio(d, "physical_backup_s", "native_durable_s") + (
            f"; runs {' / '.join(f'{w:.1f}' for w in d['physical_backup_runs_s'])} s"
            if "physical_backup_runs_s" in d else "") if "native_durable_s" in d else "—")
    row("  cold (caches dropped): native + sync / drtool (×)",
        lambda d: f"{d['native_cold_durable_s']:.1f} s / {d['physical_cold_s']:.1f} s "
                  f"({d['physical_cold_s'] / d['native_cold_durable_s']:.2f}×); native alone "
                  f"{d['native_cold_s']:.1f} s" if "physical_cold_s" in d else "—")
    row("  stored", lambda d: mib(d["physical_night1_stored"]))
    row("drtool physical, night 2 after 1 % rows changed", lambda d: f"{d['physical_night2_s']:.1f} s"
        + (f" ({d['physical_night2_type']})" if "physical_night2_type" in d else "")
        + (f", CPU {d['physical_night2_cpu_s']:.1f} s" if d.get("physical_night2_cpu_s") else ""))
    row("  stored (share of data size)", lambda d: f"{mib(d['physical_night2_stored'])} "
                                                 f"({d['physical_night2_stored'] / d['data_bytes']:.1%})"
        + (f", streamed {mib(d['physical_night2_streamed'])}" if d.get("physical_night2_streamed") else "")
        + (f"; {d['physical_night2_subpage']['pages_as_blocks']} of {d['physical_night2_subpage']['pages']} "
           f"changed pages as blocks" if d.get("physical_night2_subpage") else ""))
    row("  the same night 2 as a full backup: time / stored",
        lambda d: f"{d['physical_night2_full_s']:.1f} s / {mib(d['physical_night2_full_stored'])} "
                  f"({d['physical_night2_full_stored'] / d['data_bytes']:.1%})" if "physical_night2_full_s" in d
        else "—")
    row("drtool logical backup night 1 / night 2", lambda d: f"{d['logical_backup_s']:.1f} s / "
                                                            f"{d['logical_night2_s']:.1f} s"
        if "logical_backup_s" in d else "—")
    row("  logical night 2 stored", lambda d: mib(d["logical_night2_stored"]) if "logical_night2_stored" in d else "—")
    row("drtool fixed cost per command (start-up, key derivation, index)", lambda d: f"{d['fixed_s']:.1f} s"
        if "fixed_s" in d else "—")
    row("drtool mydumper backup night 1 / night 2 (2 threads)",
        lambda d: f"{d['mydumper_backup_s']:.1f} s / {d['mydumper_night2_s']:.1f} s" if "mydumper_backup_s" in d
        else "—")
    row("  mydumper night 2 stored", lambda d: mib(d["mydumper_night2_stored"]) if "mydumper_night2_stored" in d
        else "—")
    row("restore floor by hand (cp -a [+ prepare])",
        lambda d: f"{d['floor_restore_s']:.1f} s" + cpu(d, "floor_restore_cpu_s"))
    row("drtool physical restore of night 1, a full (× floor)",
        lambda d: ratio(d, "physical_full_restore_s", "floor_restore_s") + cpu(d, "physical_full_restore_cpu_s")
        if "physical_full_restore_s" in d else "—")
    row("restore floor + sync -f (on disk, as drtool's restore ends)",
        lambda d: f"{d['floor_durable_s']:.1f} s" if "floor_durable_s" in d else "—")
    row("drtool physical restore of night 1 (× floor + sync)",
        lambda d: ratio(d, "physical_full_restore_s", "floor_durable_s") if "floor_durable_s" in d else "—")
    row("  cold (caches dropped): floor + sync / drtool night 1 (×)",
        lambda d: f"{d['floor_cold_s']:.1f} s / {d['physical_full_cold_s']:.1f} s "
                  f"({d['physical_full_cold_s'] / d['floor_cold_s']:.2f}×)" if "floor_cold_s" in d else "—")
    row("drtool physical restore of night 2 (× floor)",
        lambda d: ratio(d, "physical_restore_s", "floor_restore_s") + cpu(d, "physical_restore_cpu_s"))
    row("  where the restores' time went (night 1; night 2)",
        lambda d: "; ".join(", ".join(f"{kind} {sec:.1f} s" for kind, sec in d.get(key, {}).items()) or "—"
                            for key in ("physical_full_restore_stages", "physical_restore_stages")))
    row("drtool logical restore (load)", lambda d: f"{d['logical_restore_s']:.1f} s" if "logical_restore_s" in d else "—")
    row("drtool mydumper restore: database / one of 4 tables (2 threads)",
        lambda d: f"{d['mydumper_restore_s']:.1f} s / {d['mydumper_table_restore_s']:.1f} s"
        if "mydumper_restore_s" in d else "—")
    row("PITR replay rate (MariaDB: binlog by drtool; PostgreSQL: WAL by the server, --start)",
        lambda d: f"{d['replay_mib_s']:.1f} MiB/s of {d.get('log_kind', 'binlog')} ({mib(d['replay_bytes'])})"
        + (f"; {d['prefetch']['taken']} of {d['prefetch']['planned']} files fetched ahead" if d.get("prefetch") else "")
        if d.get("replay_mib_s") else "—")
    row("PostgreSQL replay, server started by the operator (pg_ctl after a restore without --start)",
        lambda d: f"{d['operator_replay_mib_s']:.1f} MiB/s; {d.get('operator_prefetch', '')}"
        if d.get("operator_replay_mib_s") else "—")
    return "\n".join(lines)
