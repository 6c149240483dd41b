"""The stages a long restore tells (drtool.core.stages): what a watcher hears, and when."""
from __future__ import annotations

import re
import threading

import pytest

from drtool.core import stages


class Heard:
    """A watcher that writes down every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def begun(self, stage: stages.Stage) -> None:
        self.calls.append(("begun", stage.text, str(stage.total_bytes)))

    def advanced(self, stage: stages.Stage, nbytes: int) -> None:
        self.calls.append(("advanced", stage.text, str(nbytes)))

    def noted(self, stage: stages.Stage, detail: str) -> None:
        self.calls.append(("noted", stage.text, detail))

    def ended(self, stage: stages.Stage, ok: bool) -> None:
        self.calls.append(("ended", stage.text, "ok" if ok else "failed", str(stage.done_bytes)))


def test_a_watcher_hears_each_stage_its_bytes_and_notes_in_order() -> None:
    heard = Heard()
    with stages.watching(heard):
        with stages.stage("extracting", 6) as step:
            assert list(step.counted([b"abc", memoryview(bytearray(b"xyz")), bytearray(b"")])) \
                == [b"abc", memoryview(b"xyz"), bytearray(b"")]
        with stages.stage("replaying") as step:
            step.note("events up to 03:00")
    assert heard.calls == [("begun", "extracting", "6"), ("advanced", "extracting", "3"),
                           ("advanced", "extracting", "3"), ("advanced", "extracting", "0"),
                           ("ended", "extracting", "ok", "6"),
                           ("begun", "replaying", "None"), ("noted", "replaying", "events up to 03:00"),
                           ("ended", "replaying", "ok", "0")]


def test_a_stage_that_raises_ends_failed_and_the_error_goes_on() -> None:
    heard = Heard()
    with stages.watching(heard), pytest.raises(OSError, match="disk full"):
        with stages.stage("extracting"):
            raise OSError("disk full")
    assert heard.calls[-1] == ("ended", "extracting", "failed", "0")


def test_memoryviews_count_bytes_not_items() -> None:
    with stages.stage("wide") as step:
        list(step.counted([memoryview(bytearray(16)).cast("I")]))  # 4 items of 4 bytes
    assert step.done_bytes == 16 and step.ended_at is not None and step.seconds >= 0


def test_nobody_watching_is_quiet_and_watching_ends_with_its_block() -> None:
    heard = Heard()
    with stages.stage("alone") as step:
        step.advance(5)
        step.note("nobody hears this")
    assert step.done_bytes == 5
    with stages.watching(heard):
        with stages.watching(None):
            with stages.stage("unwatched"):
                pass
        with stages.stage("watched"):
            pass
    with stages.stage("after"):
        pass
    assert [call[1] for call in heard.calls] == ["watched", "watched"]


def test_bytes_counted_from_several_threads_add_up() -> None:
    with stages.stage("parallel") as step:
        def feed() -> None:
            for _ in range(10_000):
                step.advance(3)
        threads = [threading.Thread(target=feed) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert step.done_bytes == 120_000


def test_a_watcher_may_hear_only_the_ends_and_each_leaves_one_summary_line() -> None:
    class Ends(stages.StageWatcher):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def ended(self, stage: stages.Stage, ok: bool) -> None:
            self.lines.append(stage.summary(ok))

    ends = Ends()
    with stages.watching(ends):
        with stages.stage("extracting", 3 * 2**30) as step:
            step.advance(3 * 2**30)
            step.note("12 page(s) rebuilt")
        with pytest.raises(OSError), stages.stage("preparing"):
            raise OSError("disk full")
    assert re.fullmatch(r"done: extracting \(\d+\.\d s, 3,072\.0 MiB, 12 page\(s\) rebuilt\)", ends.lines[0])
    assert re.fullmatch(r"FAILED: preparing \(\d+\.\d s\)", ends.lines[1]), ends.lines
