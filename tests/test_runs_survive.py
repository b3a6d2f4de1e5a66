"""Training runs and report tools under hostile conditions, each with the real thing: a real resume
with other data, a real SIGKILL/SIGTERM of a training process, a truncated metrics.jsonl, a real
full file system (a small tmpfs), a real symlink, a real unreadable folder (a real unprivileged
user), a class name with a line break, and malformed bench reports."""

from __future__ import annotations

import json
import os
import pwd
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import PIPELINE_WIDTH, write_image_folder

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def _train_cmd(data: Path, out: Path, epochs: int = 2, *extra: str) -> list[str]:
    return [sys.executable, "-m", "alexnet_deploy", "train", "--data", str(data), "--val-split", "0.25",
            "--out", str(out), "--image-size", "63", "--resize", "66", "--batch-size", "6", "--epochs", str(epochs),
            "--workers", "1", "--lr", "0.0002", "--warmup-epochs", "0", "--width", str(PIPELINE_WIDTH), *extra]


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("runs") / "data", classes=3, per_class=8, size=40)


@pytest.fixture(scope="module")
def one_epoch(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    result = _run(_train_cmd(data, out, 1))
    assert result.returncode == 0, result.stderr
    return out


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# ---- 1: a resumed run with other data ----------------------------------------------------------

def test_resume_with_other_class_names_is_refused(one_epoch, tmp_path):
    other = write_image_folder(tmp_path / "other", classes=3, per_class=8, size=40)
    for index, name in enumerate(sorted(p.name for p in other.iterdir())):
        (other / name).rename(other / f"animal_{index}")
    run = _copy_run(one_epoch, tmp_path / "run")
    result = _run(_train_cmd(other, run, 2, "--resume", str(run / "last.pt")))
    assert result.returncode == 1 and "was trained on classes" in result.stderr and "animal_0" in result.stderr
    assert "Traceback" not in result.stderr


# ---- 2 and 3: one commit for checkpoint and history; a truncated metrics.jsonl ------------------

def test_history_comes_from_the_checkpoint_even_when_metrics_jsonl_lost_an_epoch(one_epoch, data, tmp_path):
    run = _copy_run(one_epoch, tmp_path / "run")
    (run / "metrics.jsonl").write_text("")   # as a kill between last.pt and metrics.jsonl would leave it
    result = _run(_train_cmd(data, run, 2, "--resume", str(run / "last.pt")))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_truncated_metrics_jsonl_does_not_stop_resume(one_epoch, data, tmp_path):
    from alexnet_deploy.alexnet.run_dir import read_history

    run = _copy_run(one_epoch, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "train_loss": 1.0')   # a crash mid-line
    assert [row["epoch"] for row in read_history(run, 5)] == [1]
    result = _run(_train_cmd(data, run, 2, "--resume", str(run / "last.pt")))
    assert result.returncode == 0 and "unexpected" not in result.stderr, result.stderr
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.slow
def test_random_kills_then_resume_end_like_an_uninterrupted_run():
    """benchmarks/kill_resume.py with a few kills (the closing note runs it with 50)."""
    result = _run([sys.executable, str(ROOT / "benchmarks" / "kill_resume.py"), "--kills", "2", "--seed", "1"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 resumed runs differ" in result.stdout


# ---- 4: SIGTERM is handled like Ctrl-C ----------------------------------------------------------

def test_sigterm_stops_training_with_a_clear_last_line(data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(data, out, 40), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    last_lines = stderr.strip().splitlines()[-2:]
    assert last_lines[-1] == "Error: terminated (SIGTERM)" and "--resume" in last_lines[0], stderr
    assert "Traceback" not in stderr and not list(out.glob(".*.tmp"))


# ---- 5: a full disk ------------------------------------------------------------------------------

# A real full file system: the size of the tmpfs that conftest's small_tmpfs mounts.
TMPFS_SIZE = "2m"


def test_a_full_disk_names_the_checkpoint_and_keeps_nothing_half_written(data, small_tmpfs):
    # 2 MiB holds the run's small files but not a checkpoint of the model (a few MB).
    result = _run(_train_cmd(data, small_tmpfs / "run", 1))
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "the disk is full" in line and ("last.pt" in line or "best.pt" in line), line
    assert "unexpected" not in result.stderr and not list((small_tmpfs / "run").glob(".*.tmp"))


# ---- 6: train.log is never written through a symlink --------------------------------------------

def test_a_train_log_symlink_is_refused(data, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").symlink_to(outside)
    result = _run(_train_cmd(data, run, 1))
    assert result.returncode == 1 and "is a symbolic link" in result.stderr, result.stderr
    assert outside.read_text() == "precious\n"


# ---- 7: an unreadable sub-folder is skipped and named -------------------------------------------

def _unprivileged() -> tuple[int, int]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as another user (an unreadable folder is readable by root)")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user to run as")
    return nobody.pw_uid, nobody.pw_gid


def _as_user(uid: int, gid: int, fn) -> str:
    """Run ``fn()`` in a forked child that has dropped root for ``uid``/``gid``; return what it returned
    (a string) or the one-line error it raised. Forked, not exec'd: the unprivileged user may not be
    allowed to run this checkout's Python at all."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: drop root, run, report, exit without running pytest's cleanup
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            text = str(fn())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            text = f"{exc.__class__.__name__}: {exc}"
        os.write(write, text.encode()[:60000])
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        text = fh.read().decode()
    os.waitpid(pid, 0)
    return text


@pytest.fixture
def open_tmp():
    """A folder under /tmp itself that other users may enter (pytest's own are root's alone, 0700)."""
    root = Path(tempfile.mkdtemp(prefix="unreadable."))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_an_unreadable_sub_folder_is_skipped_and_named(open_tmp):
    from alexnet_deploy.deploy.preprocess import image_files, list_class_folder

    uid, gid = _unprivileged()
    root = open_tmp
    data = write_image_folder(root / "data", classes=3, per_class=6, size=40)
    locked = data / "class_1" / "locked"
    locked.mkdir()
    shutil.copy(data / "class_1" / "img_000.jpg", locked / "hidden.jpg")
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid)
    os.chmod(root, 0o755)
    locked.chmod(0o000)

    def listing() -> str:
        import logging

        seen: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: seen.append(record.getMessage())
        logging.getLogger("alexnet_deploy").addHandler(handler)
        classes, samples = list_class_folder(data)
        return f"{len(samples)} images; {len(image_files([data]))} for predict; warnings: {seen}"

    text = _as_user(uid, gid, listing)
    assert text.startswith("18 images; 18 for predict") and f"skipping unreadable folder {locked}" in text, text
    strict = _as_user(uid, gid, lambda: list_class_folder(data, strict=True))
    assert strict.startswith("DataError: ") and f"{locked}: cannot read this folder" in strict, strict
    assert "PermissionError" not in text + strict


# ---- 8: labels Triton cannot represent are refused ------------------------------------------------

def test_export_triton_refuses_a_class_name_with_a_line_break(tmp_path):
    from device_helpers import edit_manifest, tiny_bundle

    bundle = tiny_bundle(tmp_path, fp16=False)
    edit_manifest(bundle, lambda m: m.update(classes=["cat", "dog\nfish", "bird"]))
    result = _run([sys.executable, "-m", "alexnet_deploy", "export-triton", str(bundle), str(tmp_path / "triton")])
    assert result.returncode == 1 and "'dog\\nfish'" in result.stderr and "labels.txt" in result.stderr
    assert not (tmp_path / "triton").exists()


# ---- 9: bench-diff accepts only well-formed reports ---------------------------------------------

def _report(**row) -> dict:
    base = {"backend": "ort", "precision": "fp32", "batch": 1, "status": "ok", "p50_ms": 3.0, "top1": 0.5}
    return {"system": {}, "rows": [{**base, **row}]}


@pytest.mark.parametrize(("row", "field"), [
    ({"p50_ms": "fast"}, "p50_ms"), ({"p50_ms": float("nan")}, None), ({"p50_ms": 0}, "p50_ms"),
    ({"p50_ms": -5}, "p50_ms"), ({"top1": 7}, "top1"), ({"batch": "one"}, "batch"), ({"status": "great"}, "status"),
])
def test_bench_diff_refuses_a_malformed_report(tmp_path, row, field):
    good = tmp_path / "old.json"
    good.write_text(json.dumps(_report()))
    bad = tmp_path / "new.json"
    bad.write_text(json.dumps(_report(**row)))   # json.dumps writes NaN, which strict JSON refuses
    result = _run([sys.executable, "-m", "alexnet_deploy", "bench-diff", str(good), str(bad)])
    assert result.returncode == 1 and "unexpected" not in result.stderr, result.stderr
    assert "new.json" in result.stderr and (field is None or f".{field}" in result.stderr), result.stderr


def test_bench_diff_prints_odd_backend_names_and_bounds_what_it_reads(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_report(backend="[/bogus]")))
    new.write_text(json.dumps(_report(backend="[/bogus]", p50_ms=6.0)))
    result = _run([sys.executable, "-m", "alexnet_deploy", "bench-diff", str(old), str(new)])
    assert result.returncode == 1 and "[/bogus]" in result.stdout and "p50 +100.0%" in result.stdout
    for hostile in ("/dev/zero", "[" * 100_000, '{"rows": [' + "1" * 5000 + "]}"):
        if not hostile.startswith("/"):
            (tmp_path / "h.json").write_text(hostile)
        target = hostile if hostile.startswith("/") else str(tmp_path / "h.json")
        result = _run([sys.executable, "-m", "alexnet_deploy", "bench-diff", str(old), target])
        assert result.returncode == 1 and "unexpected" not in result.stderr, result.stderr


# ---- 10: a cached calibration set is said so ------------------------------------------------------

def test_a_repeated_calibrate_says_its_images_came_from_the_cache(tmp_path):
    from device_helpers import tiny_bundle

    bundle = tiny_bundle(tmp_path, fp16=False)
    cmd = [sys.executable, "-m", "alexnet_deploy", "calibrate", str(bundle), "--calib", str(tmp_path / "images"),
           "--num-images", "3", "--num-val", "3", "--method", "minmax"]
    env = {**os.environ, "ALEXNET_DEPLOY_CACHE": str(tmp_path / "cache")}
    first = _run(cmd, env=env)
    assert first.returncode == 0 and "from cache" not in first.stdout, first.stderr
    second = _run(cmd, env=env)
    assert second.returncode == 0 and "calibration images: 3 from cache" in second.stdout, second.stdout
