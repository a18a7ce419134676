"""A long command's progress (`aiserver-ledger export`, `reprice`): without a terminal the first
line, a line every PROGRESS_EVERY_S and the last one; on a terminal one line redrawn in place.
Before, `reprice` wrote a line per batch: 1,320 lines for 660,000 events."""

from __future__ import annotations

import io

import pytest

from aiserver.ledger.cli import common
from aiserver.ledger.cli.common import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    ticking = Clock()
    monkeypatch.setattr(common.time, "monotonic", ticking)
    return ticking


def test_off_a_terminal_the_first_line_one_every_10_s_and_the_last(
    clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = Progress(enabled=True, first=True)  # reprice's: the first batch at once
    for n in range(1, 1321):  # a batch every 0.1 s: 132 s
        shown.update(f"run 1: {n * 500:,} examined")
        clock.now += 0.1
    shown.finish()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "run 1: 500 examined"
    assert lines[-1] == "run 1: 660,000 examined"
    assert len(lines) == 2 + 13  # the first, one every 10 s, the last
    shown.finish()  # twice: nothing more
    assert capsys.readouterr().err == ""


def test_on_a_terminal_one_line_redrawn(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(terminal, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(common.sys, "stderr", terminal)
    shown = Progress(enabled=True)
    for n in range(1, 101):  # 100 updates in 1 s: drawn at most 5 times a second
        shown.update(f"{n} events")
        clock.now += 0.01
    shown.finish()
    text = terminal.getvalue()
    assert text.count("\r") == 5
    assert "\n" not in text[:-1]
    assert text.endswith("\n")


def test_without_first_a_short_run_writes_nothing_and_a_long_one_ends_with_its_last(
    clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """export's: its summary line counts the events; progress is for a long export."""
    shown = Progress(enabled=True)
    for n in range(50):
        shown.update(f"{n} events")
        clock.now += 0.1
    shown.finish()
    assert capsys.readouterr().err == ""
    shown = Progress(enabled=True)
    for n in range(250):  # 25 s
        shown.update(f"{n} events")
        clock.now += 0.1
    shown.finish()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3  # at 10 s, at 20 s, and the last
    assert lines[-1] == "249 events"


def test_disabled_writes_nothing(clock: Clock, capsys: pytest.CaptureFixture[str]) -> None:
    shown = Progress(enabled=False)
    shown.update("1 events")
    shown.finish()
    assert capsys.readouterr().err == ""
