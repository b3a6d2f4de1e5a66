"""The one renderer of the library's progress events (deploy/progress.py), for every command.

On a terminal: a rich bar for the stage being counted (a spinner when its total is unknown),
each note printed above it, and the latest note as a spinner while nothing is counted (an export
step or an engine build can take minutes). Anywhere else (``make demo > log``, CI, nohup) rich's live
display cannot redraw, and replays its bars when it stops, so there the renderer writes plain
lines: every note once, and for each counted stage a line when it starts, when it ends, and in
between only when it advanced ``every_percent`` and ``min_seconds`` passed since its last line,
or ``max_seconds`` passed. Everything goes to stderr: stdout keeps the command's results.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars
from rich.text import Text

from alexnet_deploy.deploy.progress import Progress


def progress_renderer(stream: TextIO | None = None, *, terminal: bool | None = None,
                      **throttle: float) -> "RichRenderer | PlainRenderer":
    """A context manager that is the ``progress`` callback: rich on a terminal, plain lines
    elsewhere. ``stream`` defaults to stderr, ``terminal`` to asking rich whether it is one;
    ``throttle`` sets PlainRenderer's ``every_percent``, ``min_seconds`` and ``max_seconds``."""
    stream = stream or sys.stderr
    console = Console(file=stream)
    if console.is_terminal if terminal is None else terminal:
        return RichRenderer(console)
    return PlainRenderer(stream, **throttle)


# --------------------------------------------------------------------------- plain lines

@dataclass
class _Stage:
    """The counted stage being shown: when it started, its latest event, the last one printed."""

    started: float
    latest: Progress
    printed: Progress
    printed_at: float


class PlainRenderer:
    """One line per note; a counted stage's first event, its end and a few lines in between."""

    def __init__(self, stream: TextIO, *, every_percent: float = 20.0, min_seconds: float = 10.0,
                 max_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self.every_percent, self.min_seconds, self.max_seconds = every_percent, min_seconds, max_seconds
        self.stage: _Stage | None = None

    def __enter__(self) -> "PlainRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, event: Progress) -> None:
        if event.is_note:
            self._write(f"{event.stage}: {event.message}")
        elif self._is_new(event):
            self._end_stage()
            now = self.clock()
            self.stage = _Stage(now, event, event, now)
            self._write(count_line(event, 0.0))
        else:
            self.stage.latest = event
            if self._due(event):
                self._print(event)

    def close(self) -> None:
        """Print where the current stage stopped, if that line is not out yet."""
        self._end_stage()

    def _is_new(self, event: Progress) -> bool:
        return self.stage is None or new_stage(self.stage.latest, event)

    def _due(self, event: Progress) -> bool:
        printed, since = self.stage.printed, self.clock() - self.stage.printed_at
        if event.done == printed.done:
            return False
        if event.total is not None and event.done >= event.total:
            return printed.done < event.total   # the end
        if since >= self.max_seconds:
            return True
        if since < self.min_seconds or not event.total:
            return False
        return (event.done - printed.done) * 100 >= self.every_percent * event.total

    def _end_stage(self) -> None:
        if self.stage is not None and self.stage.latest.done != self.stage.printed.done:
            self._print(self.stage.latest)
        self.stage = None

    def _print(self, event: Progress) -> None:
        now = self.clock()
        self._write(count_line(event, now - self.stage.started))
        self.stage.printed, self.stage.printed_at = event, now

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


def new_stage(latest: Progress, event: Progress) -> bool:
    """Whether ``event`` starts another stage than the one ``latest`` was counting: another name,
    or the same name counting from lower again (two bench runs, say)."""
    return latest.stage != event.stage or event.done < latest.done


def count_line(event: Progress, seconds: float) -> str:
    """``epoch 1/5: 640/1000 images (64%), 12.3 s, 52 images/s, ETA 6.9 s, loss 1.234``."""
    unit = f" {event.unit}" if event.unit else ""
    if event.total:
        parts = [f"{event.done}/{event.total}{unit} ({100 * event.done / event.total:.0f}%)"]
    else:
        parts = [f"{event.done}{unit}"]
    if event.done and seconds > 0:
        rate = event.done / seconds
        parts.append(f"{_duration(seconds)}, {_number(rate)}{unit}/s")
        if event.total and event.done < event.total:
            parts.append(f"ETA {_duration((event.total - event.done) / rate)}")
    if event.message:
        parts.append(event.message)
    return f"{event.stage}: " + ", ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


# --------------------------------------------------------------------------- rich, on a terminal

class _Rate(ProgressColumn):
    """Units per second of the task (rich's own speed columns are for bytes)."""

    def render(self, task) -> Text:
        speed = task.speed
        return Text(f"{_number(speed)} {task.fields['unit']}/s" if speed else "")


class RichRenderer:
    """Bars for counts, notes printed above them; a finished stage leaves the display."""

    def __init__(self, console: Console) -> None:
        # Descriptions are data (file names, messages): no markup in them.
        self.bars = Bars(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                         TextColumn("{task.fields[count]}", markup=False), _Rate(), TimeElapsedColumn(),
                         console=console, transient=True)
        self.task: TaskID | None = None          # the counted stage's bar
        self.latest: Progress | None = None      # its latest event
        self.activity: TaskID | None = None      # the spinner showing the latest note

    def __enter__(self) -> "RichRenderer":
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def __call__(self, event: Progress) -> None:
        self._drop_activity()
        if event.is_note:
            line = f"{event.stage}: {event.message}"
            self.bars.console.print(line, markup=False, highlight=False)
            self.activity = self.bars.add_task(line, total=None, count="", unit="")
        else:
            self._count(event)

    def _count(self, event: Progress) -> None:
        if self.latest is None or new_stage(self.latest, event):
            self._drop_stage()
            self.task = self.bars.add_task(event.stage, total=event.total, unit=event.unit, count="")
        self.latest = event
        unit = f" {event.unit}" if event.unit else ""
        self.bars.update(self.task, completed=event.done, total=event.total,
                         count=f"{event.done}/{event.total}{unit}" if event.total else f"{event.done}{unit}",
                         description=f"{event.stage} {event.message}".strip())
        if event.total is not None and event.done >= event.total:
            self._drop_stage()

    def _drop_stage(self) -> None:
        if self.task is not None:
            self.bars.remove_task(self.task)
        self.task = self.latest = None

    def _drop_activity(self) -> None:
        if self.activity is not None:
            self.bars.remove_task(self.activity)
        self.activity = None


__all__ = ["progress_renderer", "PlainRenderer", "RichRenderer", "count_line", "new_stage"]
