"""`alexnet-deploy train` / `predict` through the real click command (in-process and as a subprocess)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import PIPELINE_WIDTH, scratch_dir, write_image_folder

pytest.importorskip("torch")

from alexnet_deploy.cli import cli  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny run through the CLI, with a --config file that a flag overrides."""
    with scratch_dir(tmp_path_factory, "cli") as root:
        data = write_image_folder(root / "data", classes=3, per_class=6, size=40)
        (root / "c.toml").write_text('[train]\nepochs = 3\nbatch-size = 6\nimage-size = 63\nval-split = 0.34\n'
                                     'lr = 0.0002\nwidth = 0.5\n')
        result = CliRunner().invoke(cli, ["train", "--data", str(data), "--config", str(root / "c.toml"),
                                          "--epochs", "1", "--out", str(root / "run"), "--workers", "1",
                                          "--width", str(PIPELINE_WIDTH)])
        assert result.exit_code == 0, result.output
        yield root


def test_config_file_feeds_defaults_and_flags_override(trained):
    resolved = (trained / "run" / "config.toml").read_text()
    assert "epochs = 1" in resolved and f"width = {PIPELINE_WIDTH}" in resolved  # flags beat the file's 3 and 0.5
    assert "batch-size = 6" in resolved and "image-size = 63" in resolved  # from the file
    assert len((trained / "run" / "metrics.csv").read_text().splitlines()) == 2


def test_export_rebuilds_the_width_reduced_model(trained, tmp_path):
    """The checkpoint records --width, so export builds the same narrow model and its parity holds."""
    import onnx
    import torch
    from onnx import numpy_helper

    from alexnet_deploy.alexnet.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained / "run" / "best.pt")
    assert ckpt.width == PIPELINE_WIDTH and ckpt.model.features[0].out_channels == 12
    result = CliRunner().invoke(cli, ["export", str(trained / "run" / "best.pt"), "--out", str(tmp_path / "b"),
                                      "--no-simplify", "--verify-count", "4", "--no-engine"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["parity"]["fp32"]["onnx_vs_torch"]["passed"] and manifest["input"]["shape"] == [-1, 3, 63, 63]
    graph = onnx.load(str(tmp_path / "b" / "model.onnx")).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    # The three FC matrices are the largest 2-D weights (the 6x6 pool's fix at 63 px adds two 6-element ones).
    fc = sorted(w.size for w in weights.values() if w.ndim == 2)[-3:]
    assert fc == sorted(m.weight.numel() for m in ckpt.model.classifier if isinstance(m, torch.nn.Linear))
    assert sum(p.numel() for p in ckpt.model.parameters()) < 1_000_000


def test_predict_table_and_json(trained):
    image = trained / "data" / "class_1" / "img_000.jpg"
    result = CliRunner().invoke(cli, ["predict", str(trained / "run" / "best.pt"), str(image), "--topk", "2"])
    assert result.exit_code == 0, result.output
    assert "probability" in result.output and len(re.findall(r"\b[01]\.\d{4}\b", result.output)) == 2
    result = CliRunner().invoke(cli, ["predict", str(trained / "run" / "best.pt"), str(trained / "data" / "class_0"),
                                      "--json", "--topk", "3"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 6 and all(len(r["top"]) == 3 for r in rows)
    for row in rows:
        probs = [t["probability"] for t in row["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert {t["class"] for t in row["top"]} == {"class_0", "class_1", "class_2"}
    pinned = CliRunner().invoke(cli, ["predict", str(trained / "run" / "best.pt"), str(trained / "data" / "class_0"),
                                      "--json", "--topk", "3", "--backend", "pt"])
    assert pinned.exit_code == 0 and json.loads(pinned.output) == rows   # a checkpoint's "auto" is pt


def test_predict_errors_are_one_line(trained, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["predict", str(tmp_path / "nope.pt"), str(trained / "data")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "nope.pt" in result.output
    result = runner.invoke(cli, ["predict", str(trained / "run" / "best.pt"), str(tmp_path / "missing.jpg")])
    assert result.exit_code == 1 and "missing.jpg" in result.output
    result = runner.invoke(cli, ["predict", str(trained / "run" / "best.pt"), str(trained / "data"),
                                 "--arch", "torchvision"])
    assert result.exit_code == 1 and "--arch alexnet2012" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_train_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["train"])
    assert result.exit_code == 2 and "--data is required" in result.output
    data = write_image_folder(tmp_path / "data", classes=2, per_class=2)
    result = runner.invoke(cli, ["train", "--data", str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--val-split" in result.output
    result = runner.invoke(cli, ["train", "--data", str(data), "--val-split", "0.5", "--image-size", "32"])
    assert result.exit_code == 1 and "Error: --image-size must be between 63 and 512" in result.output


@pytest.mark.parametrize("command", ["train", "predict"])
def test_help_and_bad_flag_subprocess(command):
    """The installed entry point: --help works and an unknown flag is a usage error (exit 2)."""
    help_run = subprocess.run([sys.executable, "-m", "alexnet_deploy", command, "--help"],
                              capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0 and "Example" in help_run.stdout
    if command == "train":
        for flag in ("--data", "--val-split", "--arch", "--resume", "--config", "--max-per-class", "--recipe",
                     "--amp", "--label-smoothing", "--strict", "--wandb", "--tensorboard"):
            assert flag in help_run.stdout
    bad = subprocess.run([sys.executable, "-m", "alexnet_deploy", command, "--no-such-flag"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "No such option" in bad.stderr


def test_piped_train_log_has_each_line_once(tmp_path):
    """`alexnet-deploy train ... > log 2>&1`: no terminal, so plain lines instead of rich's bars
    (which it would replay when it stops): each epoch's metrics line once, each stage's start and
    end line once, no bars and no terminal control codes."""
    data = write_image_folder(tmp_path / "data", classes=3, per_class=4, size=40)
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.run([sys.executable, "-m", "alexnet_deploy", "train", "--data", str(data), "--val-split",
                               "0.25", "--image-size", "63", "--epochs", "2", "--batch-size", "6", "--workers", "1",
                               "--out", str(tmp_path / "run")], stdout=log, stderr=subprocess.STDOUT, timeout=600)
    text = (tmp_path / "log").read_text()
    assert proc.returncode == 0, text
    lines = text.splitlines()
    for stage in ("decode train", "decode val", "epoch 1/2", "epoch 2/2"):
        starts = [ln for ln in lines if re.fullmatch(rf"{stage}: 0/\d+ images \(0%\)", ln)]
        ends = [ln for ln in lines if re.match(rf"{stage}: (\d+)/\1 images \(100%\), ", ln)]
        assert len(starts) == len(ends) == 1, text
    assert sum(ln.startswith("validate: 0/3 images (0%)") for ln in lines) == 2, text
    for epoch in (1, 2):
        assert sum(ln.startswith(f"epoch {epoch}/2: train loss ") for ln in lines) == 1, text
    first_epoch = next(i for i, ln in enumerate(lines) if ln.startswith("epoch 1/2: train loss "))
    second_start = next(i for i, ln in enumerate(lines) if ln.startswith("epoch 2/2: 0/"))
    assert first_epoch < second_start, text   # printed as the epoch ended, not replayed at the end
    assert not re.search(r"^(decode|epoch|validate).*━", text, re.M) and "\x1b[" not in text, text
    assert sum(ln.startswith(("decode ", "epoch ", "validate", "train: ")) for ln in lines) == 15, text
