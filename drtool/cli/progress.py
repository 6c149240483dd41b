"""Progress bars on a terminal, nothing otherwise (cron stays quiet)."""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def byte_progress(description: str, total: int | None) -> Iterator[Callable[[int], None] | None]:
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                        transient=True)
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@contextlib.contextmanager
def walk_progress(description: str) -> Iterator[Callable[[Any], None] | None]:
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.status import Status

    status = Status(description, console=Console(stderr=True))
    with status:
        def update(stats: Any) -> None:
            if stats.files_read % 50 == 0:
                status.update(f"{description}: {stats.files} files, {stats.size / 2**20:.0f} MiB scanned")
        yield update


@contextlib.contextmanager
def restore_stages() -> Iterator[None]:
    """A database restore's stages on a terminal: a live bar for the current one, a line for each
    one finished (what it moved, how long it took).  Nothing when stderr is not a terminal."""
    from drtool.api.databases import watching
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[moved]}"),
                        TimeElapsedColumn(), TextColumn("{task.fields[detail]}"), console=Console(stderr=True),
                        transient=True)
    with progress, watching(_StageDisplay(progress)):
        yield


class _StageDisplay:
    """A stage watcher (``drtool.core.stages.StageWatcher``) drawing on a rich ``Progress``."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._tasks: dict[int, Any] = {}

    def begun(self, stage: Any) -> None:
        self._tasks[id(stage)] = self._progress.add_task(stage.text, total=stage.total_bytes, detail="",
                                                         moved=_moved(stage))

    def advanced(self, stage: Any, nbytes: int) -> None:
        self._progress.update(self._tasks[id(stage)], advance=nbytes, moved=_moved(stage))

    def noted(self, stage: Any, detail: str) -> None:
        self._progress.update(self._tasks[id(stage)], detail=detail)

    def ended(self, stage: Any, ok: bool) -> None:
        task = self._tasks.pop(id(stage))
        self._progress.remove_task(task)
        moved = f", {_mib(stage.done_bytes)}" if stage.done_bytes else ""
        detail = f", {stage.detail}" if stage.detail else ""
        self._progress.console.print(f"{'done' if ok else 'FAILED'}: {stage.text} ({stage.seconds:.1f} s{moved}"
                                     f"{detail})", highlight=False, markup=False)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def _moved(stage: Any) -> str:
    """'1,234.5 of 2,000.0 MiB', or '' for a stage that moves no bytes (a prepare, a wait)."""
    if stage.total_bytes:
        return f"{_mib(stage.done_bytes)[:-4]} of {_mib(stage.total_bytes)}"
    return _mib(stage.done_bytes) if stage.done_bytes else ""
