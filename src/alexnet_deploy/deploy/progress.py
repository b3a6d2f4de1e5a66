"""One progress event for every long-running call, and the callback type that receives it.

The library never prints. What takes a while (train, export, calibrate, bench, build-engine,
verify) takes ``progress=``, a :data:`ProgressCallback`, and calls it with a :class:`Progress`
as work advances; the CLI renders those (cli/progress.py), a script may log or collect them.

An event is one of two kinds:

* a count (``done`` is set): ``done`` of ``total`` units of ``stage`` so far, ``total`` None
  when it is not known in advance. A stage sends many, ``done`` growing; renderers draw a bar
  and may skip some. ``message`` says what is being worked on (``loss 1.234``, ``ort fp32: batch 8``).
* a note (``done`` is None): one line worth keeping, e.g. a data summary, an epoch's metrics or
  an engine taken from the cache. Renderers show every note once.

Only the standard library here: the runtime stays light.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Progress:
    """What one long-running call reports: see the module docstring for counts and notes."""

    stage: str                      # "epoch 2/5", "calibration images", "bench", "fp16 engine", "export"
    done: int | None = None         # units of the stage finished so far; None: this event is a note
    total: int | None = None        # units the stage has, when known
    unit: str = ""                  # what is counted: "images", "batches", "layers", "rows", "checks"
    message: str = ""               # the note's text, or what a count is working on
    # The numbers behind a note, for callers that want more than its text (an epoch's metrics row).
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_note(self) -> bool:
        return self.done is None


ProgressCallback = Callable[[Progress], None]


@dataclass
class Tally:
    """One stage's running count, for loops that know what they just did rather than the total
    so far: ``advance(n)`` sends the count with ``done`` grown by ``n``."""

    progress: ProgressCallback | None
    stage: str
    total: int | None = None
    unit: str = ""
    done: int = 0

    def update(self, message: str = "") -> "Tally":
        """Send the count as it stands: the stage's start (before a first unit that may take a
        while), or a new message about what is being worked on."""
        self._send(message)
        return self

    def advance(self, n: int = 1, message: str = "") -> None:
        self.done += n
        self._send(message)

    def _send(self, message: str) -> None:
        if self.progress is not None:
            self.progress(Progress(self.stage, self.done, self.total, self.unit, message))


def note(progress: ProgressCallback | None, stage: str, message: str,
         metrics: Mapping[str, Any] | None = None) -> None:
    """Send a note (when there is a callback)."""
    if progress is not None:
        progress(Progress(stage, message=message, metrics=dict(metrics or {})))


__all__ = ["Progress", "ProgressCallback", "Tally", "note"]
