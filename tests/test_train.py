"""Training: loss goes down, resume is bit-exact, run directory contents, config and recipes."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import json
import shutil
from pathlib import Path

import pytest

from conftest import PIPELINE_WIDTH, scratch_dir, write_image_folder

torch = pytest.importorskip("torch")

from alexnet_deploy.alexnet.checkpoint import load_checkpoint  # noqa: E402
from alexnet_deploy.alexnet.train import (  # noqa: E402
    RECIPES, TrainConfig, config_to_toml, load_config_file, make_optimizer, make_scheduler, train)
from alexnet_deploy.errors import AlexNetDeployError  # noqa: E402


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("tiny") / "data", classes=3, per_class=8, size=40)


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), val_split=0.25, out=str(out), image_size=63, resize=66, batch_size=6,
                epochs=2, workers=1, lr=2e-4, warmup_epochs=0.0, width=PIPELINE_WIDTH)
    base.update(kw)
    return TrainConfig(**base)


class _Recorder:
    """A progress callback keeping each counted stage's (name, total), the notes and the epochs'
    metrics rows; with ``stop_after`` it raises after that epoch, as a killed run."""

    def __init__(self, stop_after: int | None = None):
        self.rows, self.phases, self.notes, self.stop_after = [], [], [], stop_after

    def __call__(self, event):
        if not event.is_note:
            if event.done == 0:
                self.phases.append((event.stage, event.total))
            return
        self.notes.append(event.message)
        if event.metrics:
            self.rows.append(dict(event.metrics))
            if self.stop_after is not None and event.metrics["epoch"] >= self.stop_after:
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
    table = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [(int(r["epoch"]), float(r["val_top1"])) for r in table] == [(r["epoch"], r["val_top1"]) for r in rows]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = load_checkpoint(out / "best.pt")
    assert best.metrics["val_top1"] == max(r["val_top1"] for r in rows)
    assert best.classes == ("class_0", "class_1", "class_2") and best.width == PIPELINE_WIDTH
    assert (best.preprocess.resize, best.preprocess.crop) == (66, 63)
    assert best.config["optimizer"] == "adamw" and "optimizer_state" not in best.raw
    assert "optimizer_state" in load_checkpoint(out / "last.pt").raw
    assert "epoch 6" in (out / "train.log").read_text()
    assert progress.phases[:4] == [("decode train", 18), ("decode val", 6), ("epoch 1/6", 18), ("validate", 6)]
    assert [row["epoch"] for row in progress.rows] == [1, 2, 3, 4, 5, 6]


def test_resume_is_bit_exact(tiny_data, tmp_path):
    """2 epochs in one go == 1 epoch, killed, then --resume for the 2nd (dropout, augmentation,
    optimizer and schedule state all restored; the kill falls inside the 4-step warm-up of the
    3-step epochs, so the resumed run also switches from warm-up to cosine)."""
    straight = train(_config(tiny_data, tmp_path / "straight", warmup_epochs=1.5))
    a = load_checkpoint(straight / "last.pt")
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_data, tmp_path / "split", warmup_epochs=1.5), _Recorder(stop_after=1))
    assert load_checkpoint(tmp_path / "split" / "last.pt").epoch == 1
    resumed = train(_config(tiny_data, tmp_path / "split", warmup_epochs=1.5,
                            resume=str(tmp_path / "split" / "last.pt")))
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
    out = train(_config(tiny_data, tmp_path / "run", epochs=1), progress)
    assert [p for p in progress.phases if p[0].startswith("decode")] == [("decode val", 6)]
    assert any(m.startswith("train: decoded images would need") for m in progress.notes), progress.notes
    assert progress.rows[0]["train_images"] == 18 and progress.rows[0]["val_images"] == 6
    shutil.rmtree(out)


def test_resume_refuses_a_checkpoint_without_optimizer_state(finished_run, tiny_data, tmp_path):
    out, _ = finished_run
    with pytest.raises(AlexNetDeployError, match="best.pt: has no optimizer state"):
        train(_config(tiny_data, tmp_path / "run2", resume=str(out / "best.pt")))


def test_resume_refuses_another_schedule(finished_run, tiny_data, tmp_path):
    out, _ = finished_run   # trained with the constant schedule
    with pytest.raises(AlexNetDeployError, match="last.pt: its learning-rate schedule state does not fit "
                                                 "--schedule cosine"):
        train(_config(tiny_data, tmp_path / "run2", schedule="cosine", resume=str(out / "last.pt")))


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


@pytest.mark.parametrize("recipe", ["default", "paper"])
def test_fused_optimizer_makes_the_reference_update(recipe):
    """The fused step (one pass per tensor) changes speed, not the update: weight decay on weights
    only for AdamW, on everything for the paper's SGD, as torch's per-element step with those groups."""
    config = TrainConfig(data="x", recipe=recipe).resolved()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    fused = make_optimizer(config, model)
    if recipe == "paper":
        plain = torch.optim.SGD(reference, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, foreach=False)
    else:
        plain = torch.optim.AdamW([{"params": [p for p in reference if p.ndim > 1], "weight_decay": config.weight_decay},
                                   {"params": [p for p in reference if p.ndim <= 1], "weight_decay": 0.0}],
                                  lr=config.lr, foreach=False)
    assert all(group["fused"] for group in fused.param_groups)
    x = torch.randn(8, 3, 8, 8)
    for _ in range(3):
        for params, optimizer in ((list(model.parameters()), fused), (reference, plain)):
            optimizer.zero_grad()
            logits = torch.nn.functional.linear(torch.nn.functional.conv2d(x, params[0], params[1]).flatten(1),
                                                params[2], params[3])
            logits.square().mean().backward()
            optimizer.step()
    for got, want in zip(model.parameters(), reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _lr_formula(step: int, total: int, warmup: int, schedule: str) -> float:
    """The schedule written out: the multiplier of the peak lr at optimizer step ``step``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))


def _lrs(config: TrainConfig, steps_per_epoch: int, steps: int, state: tuple | None = None) -> tuple[list, tuple]:
    """The lr of each of ``steps`` optimizer steps and the one after them, and the
    (optimizer, scheduler) state at the end; ``state`` continues from one."""
    optimizer = make_optimizer(config, torch.nn.Linear(3, 2))
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    if state:
        optimizer.load_state_dict(state[0])
        scheduler.load_state_dict(state[1])
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    seen.append(optimizer.param_groups[0]["lr"])
    return seen, (optimizer.state_dict(), scheduler.state_dict())


@pytest.mark.parametrize("schedule, warmup_epochs, epochs, steps_per_epoch", [
    ("cosine", 0.3, 5, 7), ("cosine", 0.0, 3, 4), ("cosine", 9.0, 2, 3), ("step", 0.0, 4, 25),
    ("step", 1.5, 6, 3), ("constant", 0.5, 3, 4), ("constant", 0.0, 2, 2)])
def test_schedule_follows_the_formula(schedule, warmup_epochs, epochs, steps_per_epoch):
    """Every step's lr, so also each epoch's (metrics.jsonl's lr is the one after the epoch's last step)."""
    config = TrainConfig(data="x", schedule=schedule, warmup_epochs=warmup_epochs, epochs=epochs, lr=0.01).resolved()
    total, warmup = epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch)
    seen, _ = _lrs(config, steps_per_epoch, total)
    assert seen == pytest.approx([0.01 * _lr_formula(s, total, warmup, schedule) for s in range(total + 1)],
                                 rel=1e-9, abs=1e-15)
    if (schedule, warmup) == ("step", 0):
        assert [seen[s] for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_schedule_state_resumes_exactly_through_a_weights_only_load(schedule):
    """Stopped inside the warm-up (before SequentialLR hands over) and saved the way last.pt is."""
    config = TrainConfig(data="x", schedule=schedule, warmup_epochs=1.5, epochs=4, lr=0.01).resolved()
    straight, _ = _lrs(config, 4, 16)
    first, state = _lrs(config, 4, 5)
    buffer = io.BytesIO()
    torch.save({"optimizer": state[0], "scheduler": state[1]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    rest, _ = _lrs(config, 4, 11, (saved["optimizer"], saved["scheduler"]))
    assert first[:-1] + rest == straight   # exactly, not approximately


@pytest.mark.parametrize("config", [
    TrainConfig(data="d", val_split=0.1, epochs=3, amp=True),
    TrainConfig(data='C:\\data\\"quoted" folder', val="v", recipe="paper", wandb="proj", lr=1e-5, warmup_epochs=0.25,
                tensorboard=True, max_per_class=7)])
def test_config_toml_round_trip(tmp_path, config):
    config = config.resolved()
    text = config_to_toml(config)
    assert text.startswith("# resolved by alexnet-deploy train") and "\n[train]\n" in text
    assert "overwrite" not in text and "resume" not in text   # never written / None: left out
    (tmp_path / "c.toml").write_text(text)
    assert TrainConfig(**load_config_file(tmp_path / "c.toml")) == config


def test_config_file_errors(tmp_path):
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




def test_sync_free_steps_give_the_same_run(tiny_data, tmp_path, monkeypatch):
    """Statistics kept on the device and read every 4 steps (as on a GPU) give the same weights and the
    same metrics as reading them every step (the CPU's default)."""
    import alexnet_deploy.alexnet.train as train_module

    every_step = train(_config(tiny_data, tmp_path / "each", epochs=2))
    monkeypatch.setattr(train_module, "sync_interval", lambda device: 4)
    batched = train(_config(tiny_data, tmp_path / "batched", epochs=2))
    rows = [[json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            for out in (every_step, batched)]
    for a, b in zip(*rows):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "grad_norm"):
            assert a[key] == b[key], key
    for key, value in load_checkpoint(every_step / "last.pt").model.state_dict().items():
        assert torch.equal(value, load_checkpoint(batched / "last.pt").model.state_dict()[key]), key


def test_a_diverging_run_stops_within_one_sync_interval(tiny_data, tmp_path, monkeypatch):
    import alexnet_deploy.alexnet.train as train_module

    monkeypatch.setattr(train_module, "sync_interval", lambda device: 100)   # longer than the epoch
    with pytest.raises(AlexNetDeployError, match="training diverged"):
        train(_config(tiny_data, tmp_path / "nan", epochs=1, lr=1e30, clip_grad=0.0))


@pytest.mark.slow
def test_compiled_training_keeps_the_eager_run_and_a_plain_checkpoint(tiny_data, tmp_path):
    """--compile runs the same training (torch.compile fuses, so equal to float tolerance) and its
    checkpoints hold the plain model's weights (no compiler wrapper in the names). Without dropout:
    compiled dropout draws its masks from the compiler's own generator, not eager's."""
    eager = train(_config(tiny_data, tmp_path / "eager", epochs=1, dropout=0.0))
    fast = train(_config(tiny_data, tmp_path / "compiled", epochs=1, dropout=0.0, compile=True))
    a, b = load_checkpoint(eager / "last.pt"), load_checkpoint(fast / "last.pt")
    for (name, x), (other, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert name == other and torch.allclose(x, y, atol=1e-4), name
    rows = [json.loads(line) for run in (eager, fast) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_loss"] == pytest.approx(rows[1]["train_loss"], rel=1e-3)


def test_compile_without_a_compiler_says_what_is_missing(tiny_data, tmp_path):
    """A real PATH without any C++ compiler: one line before training starts, not a stack trace."""
    import subprocess
    import sys

    bare = tmp_path / "bin"
    bare.mkdir()
    run = subprocess.run([sys.executable, "-m", "alexnet_deploy", "train", "--data", str(tiny_data),
                          "--val-split", "0.25", "--image-size", "63", "--epochs", "1", "--batch-size", "6",
                          "--width", str(PIPELINE_WIDTH), "--device", "cpu", "--compile", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300, env={"PATH": str(bare), "HOME": str(tmp_path)})
    assert run.returncode == 1, run.stderr
    assert "--compile on the CPU needs a C++ compiler" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "run" / "last.pt").exists()
