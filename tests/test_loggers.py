"""TensorBoard and Weights & Biases logging, read back from the files each writes.

One tiny 2-epoch run through the real CLI with ``--tensorboard --wandb PROJECT`` and W&B in offline
mode (no network). TensorBoard's event files are read with TensorBoard's own EventAccumulator; the W&B
run is read from its offline transaction log (``run-*.wandb``: W&B's record protobufs in LevelDB's
log framing, the file ``wandb sync`` uploads). Both must hold what metrics.jsonl holds.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from conftest import PIPELINE_WIDTH, scratch_dir, write_image_folder

pytest.importorskip("torch")

PROJECT = "alexnet-deploy-test"
# What a W&B user of the seed recipe looks for, per epoch.
EXPECTED = ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "grad_norm", "train_images_per_s")


def _env(root: Path) -> dict[str, str]:
    """W&B offline, with its config and cache dirs inside the test's folder."""
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "WANDB_CONFIG_DIR": str(root / "wandb-config"), "WANDB_CACHE_DIR": str(root / "wandb-cache"),
            "WANDB_DATA_DIR": str(root / "wandb-data")}


def _train(root: Path, *flags: str) -> subprocess.CompletedProcess:
    data = root / "data"
    if not data.is_dir():
        write_image_folder(data, classes=3, per_class=4, size=40)
    command = [sys.executable, "-m", "alexnet_deploy", "train", "--data", str(data), "--val-split", "0.25",
               "--out", str(root / "run"), "--image-size", "63", "--resize", "64", "--epochs", "2",
               "--batch-size", "6", "--workers", "1", "--width", str(PIPELINE_WIDTH), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env(root))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    with scratch_dir(tmp_path_factory, "loggers") as root:
        proc = _train(root, "--tensorboard", "--wandb", PROJECT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield root / "run"


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _resolved_config(run: Path) -> dict:
    from alexnet_deploy.alexnet.train import load_config_file

    return load_config_file(run / "config.toml")


# --- TensorBoard --------------------------------------------------------------------------------

@pytest.mark.slow  # shares one ~8-15 s training run (W&B's service start is most of it)
def test_tensorboard_events_hold_every_metric_of_every_epoch(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    rows = _metrics(run_dir)
    assert set(EXPECTED) <= set(events.Tags()["scalars"])
    for key in rows[0]:
        if key == "epoch":
            continue
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [row["epoch"] for row in rows], key
        # Event files store float32.
        assert [e.value for e in logged] == pytest.approx([row[key] for row in rows], rel=1e-6, abs=1e-6), key


@pytest.mark.slow  # shares one ~8-15 s training run (W&B's service start is most of it)
def test_tensorboard_holds_the_run_config(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    (text,) = events.Tensors("config/text_summary")
    logged = json.loads(text.tensor_proto.string_val[0].decode().strip("`\n"))
    assert logged == {**logged, **_resolved_config(run_dir)}  # config.toml leaves out None values


# --- Weights & Biases (offline) ---------------------------------------------------------------

def _wandb_records(path: Path) -> list:
    """Every record of an offline run file: a 7-byte header (':W&B', magic, version), then LevelDB's
    log format (32 KiB blocks; chunks of crc32, length, type = full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    records, pos, pending, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad checksum at {pos}"
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@pytest.fixture(scope="module")
def wandb_run(run_dir):
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = _wandb_records(path)
    by_type: dict[str, list] = {}
    for record in records:
        by_type.setdefault(record.WhichOneof("record_type"), []).append(record)
    return by_type


@pytest.mark.slow  # shares one ~8-15 s training run (W&B's service start is most of it)
def test_wandb_history_is_metrics_jsonl(run_dir, wandb_run):
    history = [_items(r.history.item) for r in wandb_run["history"]]
    rows = _metrics(run_dir)
    assert len(history) == len(rows) == 2
    for logged, row in zip(history, rows):
        assert set(EXPECTED) <= set(logged)
        assert {k: logged[k] for k in row} == pytest.approx(row)


@pytest.mark.slow  # shares one ~8-15 s training run (W&B's service start is most of it)
def test_wandb_run_config_project_and_summary(run_dir, wandb_run):
    (run,) = [r.run for r in wandb_run["run"]]
    assert run.project == PROJECT and run.display_name == "run"
    config = _items(run.config.update)
    assert config == {**config, **_resolved_config(run_dir)}
    summary: dict = {}
    for record in wandb_run["summary"]:
        summary.update(_items(record.summary.update))
    last = _metrics(run_dir)[-1]
    assert {k: summary[k] for k in last} == pytest.approx(last)
    assert wandb_run["exit"][0].exit.exit_code == 0


# --- a missing package ----------------------------------------------------------------------------

@pytest.mark.parametrize("flags, package", [(["--tensorboard"], "tensorboard"), (["--wandb", PROJECT], "wandb")])
def test_missing_logger_package_is_a_one_line_error_naming_the_extra(tmp_path, flags, package):
    """The package made unimportable in a fresh interpreter, as on a machine without it."""
    write_image_folder(tmp_path / "data", classes=3, per_class=4, size=40)
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{package!r}] = None
        sys.argv = ["alexnet-deploy", "train", "--data", {str(tmp_path / "data")!r}, "--val-split", "0.25",
                    "--out", {str(tmp_path / "run")!r}, *{flags!r}]
        from alexnet_deploy.cli import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_env(tmp_path))
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ") and f"pip install 'alexnet-deploy[{package}]'" in lines[0]
