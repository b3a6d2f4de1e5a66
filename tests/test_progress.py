"""The progress event (deploy/progress.py) and its renderer (cli/progress.py): what a log gets
when stderr is not a terminal, how often, and the rich display's bookkeeping on a terminal."""

from __future__ import annotations

import io
import re

from rich.console import Console

from alexnet_deploy.cli.progress import PlainRenderer, RichRenderer, count_line, progress_renderer
from alexnet_deploy.deploy.progress import Progress, Tally, note


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _plain(**throttle) -> tuple[PlainRenderer, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    return PlainRenderer(out, clock=clock, **throttle), out, clock


def _done(lines: list[str], stage: str) -> list[int]:
    """The ``done`` of each count line of ``stage``."""
    return [int(re.match(rf"{re.escape(stage)}: (\d+)", line).group(1)) for line in lines
            if re.match(rf"{re.escape(stage)}: \d", line)]


def test_tally_sends_the_running_count_and_note_sends_a_note():
    events: list[Progress] = []
    tally = Tally(events.append, "epoch 1/2", 18, "images").update()
    tally.advance(6, "loss 1.1")
    tally.advance(12)
    note(events.append, "epoch 1/2", "train loss 1.0", {"epoch": 1})
    Tally(None, "nobody listens", 3).advance()   # no callback: nothing to do, no error
    assert [(e.done, e.total, e.message) for e in events[:3]] == [(0, 18, ""), (6, 18, "loss 1.1"), (18, 18, "")]
    assert not any(e.is_note for e in events[:3]) and events[3].is_note
    assert events[3].metrics == {"epoch": 1} and events[3].done is None


def test_count_line():
    event = Progress("epoch 1/5", 640, 1000, "images", "loss 1.234")
    assert count_line(event, 12.8) == "epoch 1/5: 640/1000 images (64%), 12.8 s, 50 images/s, ETA 7.2 s, loss 1.234"
    assert count_line(Progress("verify", 7, unit="checks", message="golden ort fp32: pass"), 95.0) == (
        "verify: 7 checks, 1.6 min, 0.1 checks/s, golden ort fp32: pass")
    assert count_line(Progress("bench", 0, 4, "rows", "loading images"), 0.0) == "bench: 0/4 rows (0%), loading images"


def test_a_slow_stage_prints_its_start_every_20_percent_and_its_end():
    render, out, clock = _plain(every_percent=20, min_seconds=10, max_seconds=300)
    for done in range(101):   # one unit a second
        clock.now = float(done)
        render(Progress("epoch 1/1", done, 100, "images"))
    assert _done(out.getvalue().splitlines(), "epoch 1/1") == [0, 20, 40, 60, 80, 100]
    render.close()   # the end is out already: nothing more
    assert len(out.getvalue().splitlines()) == 6


def test_a_fast_stage_prints_only_its_start_and_end():
    render, out, clock = _plain(every_percent=20, min_seconds=10, max_seconds=300)
    for done in range(1001):
        clock.now = done / 1000
        render(Progress("decode train", done, 1000, "images"))
    assert out.getvalue().splitlines() == ["decode train: 0/1000 images (0%)",
                                           "decode train: 1000/1000 images (100%), 1.0 s, 1000 images/s"]


def test_a_very_long_stage_still_prints_every_max_seconds():
    render, out, clock = _plain(every_percent=20, min_seconds=10, max_seconds=300)
    for done in range(13):   # 1 % of the stage per 100 s: 20 % would take over half an hour
        clock.now = 100.0 * done
        render(Progress("epoch 1/90", done, 100))
    assert _done(out.getvalue().splitlines(), "epoch 1/90") == [0, 3, 6, 9, 12]


def test_notes_print_once_and_a_new_stage_closes_the_last_one():
    render, out, clock = _plain(every_percent=20, min_seconds=10, max_seconds=300)
    with render:
        render(Progress("verify", 1, None, "checks", "manifest manifest.json: pass"))
        clock.now = 1.0
        render(Progress("verify", 2, None, "checks", "sha256 model.onnx: pass"))
        render(Progress("export", message="loading checkpoint"))
        render(Progress("verify", 3, None, "checks", "golden ort fp32: pass"))
        render(Progress("calibration images", 1, 4, "images"))   # another stage: verify's last count first
        clock.now = 2.0
        render(Progress("calibration images", 2, 4, "images"))
    # Leaving the renderer prints where the unfinished stage stopped.
    assert out.getvalue().splitlines() == [
        "verify: 1 checks, manifest manifest.json: pass",
        "export: loading checkpoint",
        "verify: 3 checks, 1.0 s, 3.0 checks/s, golden ort fp32: pass",
        "calibration images: 1/4 images (25%)",
        "calibration images: 2/4 images (50%), 1.0 s, 2.0 images/s, ETA 1.0 s"]


def test_the_same_stage_counting_again_is_a_new_stage():
    render, out, _ = _plain()
    for _ in range(2):   # two bench runs in one process
        for done in range(3):
            render(Progress("bench", done, 2, "rows"))
    assert _done(out.getvalue().splitlines(), "bench") == [0, 2, 0, 2]


def test_progress_renderer_is_plain_unless_on_a_terminal():
    assert isinstance(progress_renderer(io.StringIO()), PlainRenderer)
    assert isinstance(progress_renderer(io.StringIO(), terminal=True), RichRenderer)


def test_rich_renderer_shows_the_counted_stage_or_the_latest_note():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with RichRenderer(console) as render:
        render(Progress("train", message="data split: 18 train / 6 val images"))
        assert [t.description for t in render.bars.tasks] == ["train: data split: 18 train / 6 val images"]
        render(Progress("epoch 1/2", 0, 18, "images"))
        render(Progress("epoch 1/2", 6, 18, "images", "loss 1.270"))
        (task,) = render.bars.tasks
        assert (task.description, task.completed, task.total, task.fields["count"]) == (
            "epoch 1/2 loss 1.270", 6, 18, "6/18 images")
        render(Progress("epoch 1/2", 18, 18, "images"))
        assert render.bars.tasks == []   # a finished stage leaves the display
        render(Progress("verify", 4, None, "checks"))
        render(Progress("bench", 0, 2, "rows"))
        assert [t.description for t in render.bars.tasks] == ["bench"]
    assert "train: data split: 18 train / 6 val images\n" in console.file.getvalue()
