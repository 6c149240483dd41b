"""Progress bars on a terminal, nothing otherwise (cron stays quiet)."""
from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator

from drtool.cli.values import mib

if TYPE_CHECKING:  # the databases' modules load only for a database restore
    from drtool.api.databases import Stage


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
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from drtool.api.databases import watching

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[moved]}"),
                        TimeElapsedColumn(), TextColumn("{task.fields[detail]}"), console=Console(stderr=True),
                        transient=True)
    with progress, watching(_StageDisplay(progress)):
        yield


class _StageDisplay:
    """A stage watcher drawing on a rich ``Progress``: a bar while a stage runs, its summary line
    once it ends."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._tasks: dict[int, Any] = {}

    def begun(self, stage: Stage) -> None:
        self._tasks[id(stage)] = self._progress.add_task(stage.text, total=stage.total_bytes, detail="",
                                                         moved=_moved(stage))

    def advanced(self, stage: Stage, nbytes: int) -> None:
        self._progress.update(self._tasks[id(stage)], advance=nbytes, moved=_moved(stage))

    def noted(self, stage: Stage, detail: str) -> None:
        self._progress.update(self._tasks[id(stage)], detail=detail)

    def ended(self, stage: Stage, ok: bool) -> None:
        self._progress.remove_task(self._tasks.pop(id(stage)))
        self._progress.console.print(stage.summary(ok), highlight=False, markup=False)


def _moved(stage: Stage) -> str:
    """'1234.5 of 2000.0 MiB', or '' for a stage that moves no bytes (a prepare, a wait)."""
    if stage.total_bytes:
        return f"{mib(stage.done_bytes)[:-4]} of {mib(stage.total_bytes)}"
    return mib(stage.done_bytes) if stage.done_bytes else ""
