"""Helpers for the robustness tests: a really unwritable directory, the CLI in-process, bad images.

Tests may run as root, where chmod does not stop writes. Then an immutable directory
(``chattr +i``, refused even to root) or a read-only tmpfs mount is used instead; when neither is
possible here the test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from alexnet_deploy.cli import cli


def run_cli(*args: str):
    """The real CLI in-process; stdout and stderr kept apart."""
    return CliRunner().invoke(cli, [str(a) for a in args], obj={})


# What the progress renderer writes when stderr is not a terminal ("stage: ..."), and a log record's start.
_PROGRESS_LINE = re.compile(r"[A-Za-z0-9][\w ./-]*: ")
_LOG_RECORD = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def one_error_line(result) -> str:
    """The single `Error: ...` line a failed command prints, last (and no traceback); before it
    only the progress lines of the work done until then."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    assert all(_PROGRESS_LINE.match(ln) and not _LOG_RECORD.match(ln) and not ln.startswith("Error: ")
               for ln in lines[:-1]), result.stderr
    assert "Traceback" not in result.output + result.stderr
    return lines[-1]


def _cannot_write(directory: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=directory):
            return False
    except OSError:
        return True


def _try(*command: str) -> bool:
    found = shutil.which(command[0])
    return bool(found) and subprocess.run([found, *command[1:]], capture_output=True).returncode == 0


@contextmanager
def read_only_dir(parent: Path) -> Iterator[Path]:
    """A directory under ``parent`` in which no file can be created, by the first real means that
    works here: chmod 0555 (non-root), chattr +i, or a read-only tmpfs mount."""
    path = parent / "read-only"
    path.mkdir()
    undo = None
    if os.geteuid() != 0:
        path.chmod(0o555)
        undo = lambda: path.chmod(0o755)  # noqa: E731
    elif _try("chattr", "+i", str(path)):
        undo = lambda: _try("chattr", "-i", str(path))  # noqa: E731
    elif _try("mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)):
        undo = lambda: _try("umount", str(path))  # noqa: E731
    try:
        if undo is None or not _cannot_write(path):
            pytest.skip("running as root and neither chattr +i nor a read-only tmpfs mount works here, so no "
                        "directory can be made unwritable")
        yield path
    finally:
        if undo is not None:
            undo()


def truncated_jpeg(path: Path, source: Path) -> Path:
    """The first half of a real JPEG: Pillow opens the header and fails while decoding."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
