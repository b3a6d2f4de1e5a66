"""Training: loss goes down, resume is bit-exact, run directory contents, config and recipes."""

from __future__ import annotations

import dataclasses
import math
import json
import shutil
from pathlib import Path

import pytest

from conftest import PIPELINE_WIDTH, scratch_dir, write_image_folder

torch = pytest.importorskip("torch")

from alexnet_deploy.alexnet.checkpoint import load_checkpoint  # noqa: E402
from alexnet_deploy.alexnet.train import (  # noqa: E402
    RECIPES, TrainConfig, TrainProgress, config_to_toml, load_config_file, lr_factor, train)
from alexnet_deploy.errors import AlexNetDeployError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("tiny") / "data", classes=3, per_class=8, size=40)


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), val_split=0.25, out=str(out), image_size=63, resize=66, batch_size=6,
                epochs=2, workers=1, lr=2e-4, warmup_epochs=0.0, width=PIPELINE_WIDTH)
    base.update(kw)
    return TrainConfig(**base)


class _Recorder(TrainProgress):
    def __init__(self, stop_after: int | None = None):
        self.rows, self.phases, self.stop_after = [], [], stop_after

    def phase(self, name, total):
        self.phases.append((name, total))

    def epoch_end(self, row):
        self.rows.append(row)
        if self.stop_after is not None and row["epoch"] >= self.stop_after:
            raise KeyboardInterrupt("simulated kill after an epoch")


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    progress = _Recorder()
    with scratch_dir(tmp_path_factory, "run") as root:
        # The pipeline-width model learns these images in 6 epochs at lr 1e-3 (measured: the loss fell
        # by 0.23-0.50 for seeds 0-5; 3 epochs at 3e-4, enough for the full-size model, do not suffice).
        yield train(_config(tiny_data, root / "run", epochs=6, schedule="constant", lr=1e-3), progress), progress


def test_training_lowers_the_loss_and_writes_the_run_dir(finished_run):
    out, progress = finished_run
    losses = [row["train_loss"] for row in progress.rows]
    assert losses[-1] < losses[0] - 0.1, losses
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "metrics.jsonl", "metrics.csv",
                                               "curves.png", "config.toml", "train.log"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all((r["train_images"], r["val_images"]) == (18, 6) for r in rows)
    assert len((out / "metrics.csv").read_text().splitlines()) == 7
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = load_checkpoint(out / "best.pt")
    assert best.metrics["val_top1"] == max(r["val_top1"] for r in rows)
    assert best.classes == ("class_0", "class_1", "class_2") and best.width == PIPELINE_WIDTH
    assert (best.preprocess.resize, best.preprocess.crop) == (66, 63)
    assert best.config["optimizer"] == "adamw" and "optimizer_state" not in best.raw
    assert "optimizer_state" in load_checkpoint(out / "last.pt").raw
    assert "epoch 6" in (out / "train.log").read_text()
    assert ("decode train", 18) in progress.phases


def test_resume_is_bit_exact(tiny_data, tmp_path):
    """2 epochs in one go == 1 epoch, killed, then --resume for the 2nd (dropout, augmentation,
    optimizer and cosine schedule state all restored)."""
    straight = train(_config(tiny_data, tmp_path / "straight"))
    a = load_checkpoint(straight / "last.pt")
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_data, tmp_path / "split"), _Recorder(stop_after=1))
    assert load_checkpoint(tmp_path / "split" / "last.pt").epoch == 1
    resumed = train(_config(tiny_data, tmp_path / "split", resume=str(tmp_path / "split" / "last.pt")))
    b = load_checkpoint(resumed / "last.pt")
    assert a.epoch == b.epoch == 2
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    metrics = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]


def test_streamed_training_equals_ram_cached_training(tiny_data, tmp_path):
    """--cache stream decodes per batch (for folders over the RAM budget) and must train the same weights."""
    weights = {}
    for cache in ("ram", "stream"):
        out = train(_config(tiny_data, tmp_path / cache, epochs=1, cache=cache))
        weights[cache] = load_checkpoint(out / "last.pt").model.state_dict()
        shutil.rmtree(out)
    for key, value in weights["ram"].items():
        assert torch.equal(value, weights["stream"][key]), key


def test_auto_cache_streams_only_the_split_over_the_ram_budget(tiny_data, tmp_path, monkeypatch):
    import alexnet_deploy.alexnet.train as train_module

    # Budget for the 6 val images at 63 px but not the 18 train images at 66 px (real RAM cannot shrink).
    monkeypatch.setattr(train_module, "ram_budget", lambda: 6 * 3 * 63 * 63 + 1)
    progress = _Recorder()
    messages: list[str] = []
    progress.message = messages.append
    out = train(_config(tiny_data, tmp_path / "run", epochs=1), progress)
    assert [p for p in progress.phases if p[0].startswith("decode")] == [("decode val", 6)]
    assert any(m.startswith("train: decoded images would need") for m in messages), messages
    assert progress.rows[0]["train_images"] == 18 and progress.rows[0]["val_images"] == 6
    shutil.rmtree(out)


def test_resume_refuses_a_checkpoint_without_optimizer_state(finished_run, tiny_data, tmp_path):
    out, _ = finished_run
    with pytest.raises(AlexNetDeployError, match="best.pt: has no optimizer state"):
        train(_config(tiny_data, tmp_path / "run2", resume=str(out / "best.pt")))


def test_resume_refuses_another_width(finished_run, tiny_data, tmp_path):
    out, _ = finished_run
    with pytest.raises(AlexNetDeployError, match=rf"last.pt: was trained at --width {PIPELINE_WIDTH:g}, not 0.25"):
        train(_config(tiny_data, tmp_path / "run2", resume=str(out / "last.pt"), width=0.25))


def test_paper_recipe_is_exact():
    config = TrainConfig(data="x", recipe="paper").resolved()
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay, config.clip_grad, config.init,
            config.schedule, config.label_smoothing, config.warmup_epochs) == (
        "sgd", 0.01, 0.9, 5e-4, 1.0, "paper", "step", 0.0, 0.0)
    assert (config.image_size, config.resize) == (227, 259)
    overridden = TrainConfig(data="x", recipe="paper", lr=0.02, schedule="cosine").resolved()
    assert (overridden.lr, overridden.schedule, overridden.optimizer) == (0.02, "cosine", "sgd")
    assert RECIPES["default"]["optimizer"] == "adamw"
    assert (config.batch_size, TrainConfig(data="x").resolved().batch_size) == (128, 64)


def test_lr_schedules():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert [lr_factor(s, 100, 0, "step") for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(70, 100, 0, "constant") == 1.0


def test_config_toml_round_trip_and_errors(tmp_path):
    config = TrainConfig(data="d", val_split=0.1, epochs=3, amp=True).resolved()
    (tmp_path / "c.toml").write_text(config_to_toml(config))
    assert TrainConfig(**load_config_file(tmp_path / "c.toml")) == config
    (tmp_path / "bad.toml").write_text("[train]\nbatch-size = 8\nlearning-rate = 1\n")
    with pytest.raises(AlexNetDeployError, match=r"bad\.toml: unknown keys \['learning_rate'\]"):
        load_config_file(tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text("epochs = [")
    with pytest.raises(AlexNetDeployError, match="not valid TOML"):
        load_config_file(tmp_path / "broken.toml")


@pytest.mark.parametrize("kwargs, match", [
    ({"arch": "resnet"}, "--arch"), ({"epochs": 0}, "--epochs"), ({"image_size": 40}, "63 and 512"),
    ({"image_size": 64, "resize": 60}, "--resize 60"), ({"optimizer": "lion"}, "--optimizer"),
    ({"cache": "disk"}, "--cache")])
def test_bad_config_values(kwargs, match):
    with pytest.raises(AlexNetDeployError, match=match):
        TrainConfig(data="x", **kwargs).resolved()


def test_amp_bf16_trains(tiny_data, tmp_path):
    progress = _Recorder()
    train(_config(tiny_data, tmp_path / "amp", epochs=1, amp=True), progress)
    assert math.isfinite(progress.rows[0]["train_loss"])
    assert 0.0 <= progress.rows[0]["val_top1"] <= 1.0


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig(data="x").epochs = 3  # type: ignore[misc]


