"""Checkpoints: metadata round trip, weights_only safety, plain state_dicts, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from alexnet_deploy.alexnet import build_model  # noqa: E402
from alexnet_deploy.alexnet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from alexnet_deploy.deploy.bundle.files import sha256_file  # noqa: E402
from alexnet_deploy.deploy.preprocess import PreprocessSpec  # noqa: E402
from alexnet_deploy.errors import CheckpointError  # noqa: E402

CLASSES = ["cat", "dog", "frog"]
# Our checkpoints' mechanics do not depend on the model's size: they are written at 1/8 width
# (~4 MB instead of ~230 MB). Plain state_dicts (foreign files, detected from their shapes) stay full size.
WIDTH = 0.125


def _save(path: Path, arch: str = "alexnet2012", **extra) -> Path:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=len(CLASSES), width=WIDTH)
    return save_checkpoint(path, model=model, arch=arch, classes=CLASSES,
                           preprocess=PreprocessSpec(resize=73, crop=64),
                           config={"data": Path("/data"), "epochs": 2, "sizes": (1, 2)},
                           epoch=2, metrics={"val_top1": 0.5}, **extra)


def test_round_trip_metadata_and_weights(tmp_path):
    path = _save(tmp_path / "a.pt")
    raw = torch.load(path, weights_only=True)
    for key in ("state_dict", "arch", "num_classes", "classes", "preprocess", "config", "epoch",
                "metrics", "versions"):
        assert key in raw
    ckpt = load_checkpoint(path)
    assert ckpt.arch == "alexnet2012" and ckpt.num_classes == 3 and ckpt.classes == tuple(CLASSES)
    assert ckpt.preprocess == PreprocessSpec(resize=73, crop=64)
    assert ckpt.config == {"data": "/data", "epochs": 2, "sizes": [1, 2]}
    assert ckpt.epoch == 2 and ckpt.metrics == {"val_top1": 0.5}
    assert ckpt.sha256 == sha256_file(path) and ckpt.width == WIDTH
    assert not ckpt.model.training
    torch.manual_seed(0)
    fresh = build_model("alexnet2012", num_classes=3, width=WIDTH)
    for key, value in fresh.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[key], value)


@pytest.mark.parametrize("arch", ["alexnet2012", "torchvision"])
def test_width_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=3, width=0.3)   # 0.3: channel counts that had to be rounded
    path = save_checkpoint(tmp_path / "narrow.pt", model=model, arch=arch, classes=CLASSES,
                           preprocess=PreprocessSpec(resize=73, crop=64), config={}, epoch=1, metrics={})
    assert torch.load(path, weights_only=True)["width"] == 0.3
    ckpt = load_checkpoint(path)
    assert ckpt.width == 0.3 and ckpt.model.features[0].out_channels == model.features[0].out_channels
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[key], value)


def test_checkpoint_without_width_is_full_width(tmp_path):
    """Checkpoints written before the width was recorded load as the paper's network."""
    model = build_model("alexnet2012", num_classes=3)
    save_checkpoint(tmp_path / "a.pt", model=model, arch="alexnet2012", classes=CLASSES,
                    preprocess=PreprocessSpec(resize=73, crop=64), config={}, epoch=1, metrics={})
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert raw.pop("width") == 1.0
    torch.save(raw, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt.width == 1.0 and ckpt.model.features[0].out_channels == 96


@pytest.mark.parametrize("width", [0.0, 2.0, "half"])
def test_bad_width_metadata_is_one_clear_error(tmp_path, width):
    raw = torch.load(_save(tmp_path / "a.pt"), weights_only=True)
    torch.save({**raw, "width": width}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: bad width .* 0 < width <= 1"):
        load_checkpoint(tmp_path / "bad.pt")


def test_training_state_loads_with_weights_only(tmp_path):
    model = build_model("alexnet2012", num_classes=3, width=WIDTH)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, 3, 64, 64)).sum().backward()
    opt.step()
    rng = torch.get_rng_state()
    path = _save(tmp_path / "b.pt", optimizer_state=opt.state_dict(), rng_state={"torch": rng})
    raw = load_checkpoint(path).raw
    assert "optimizer_state" in raw and torch.equal(raw["rng_state"]["torch"], rng)


def test_save_is_atomic_on_failure(tmp_path):
    path = _save(tmp_path / "c.pt")
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, model=build_model("alexnet2012", num_classes=3, width=WIDTH), arch="alexnet2012",
                        classes=CLASSES, preprocess=PreprocessSpec(73, 64), config={}, epoch=0,
                        metrics={}, optimizer_state={"bad": lambda: None})  # lambdas cannot be pickled
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


@pytest.mark.parametrize("prefix", ["", "module."])
def test_plain_torchvision_state_dict(tmp_path, prefix):
    torchvision = pytest.importorskip("torchvision")
    state = torchvision.models.alexnet(weights=None, num_classes=5).state_dict()
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "tv.pt")
    ckpt = load_checkpoint(tmp_path / "tv.pt", arch="torchvision", num_classes=5)
    assert ckpt.arch == "torchvision" and ckpt.classes == tuple(f"class_{i}" for i in range(5))
    assert (ckpt.preprocess.resize, ckpt.preprocess.crop) == (256, 224)
    assert torch.equal(ckpt.model.state_dict()["features.0.weight"], state["features.0.weight"])
    assert load_checkpoint(tmp_path / "tv.pt").arch == "torchvision"  # detected from shapes


def test_features_module_prefix_from_dataparallel(tmp_path):
    state = build_model("alexnet2012", num_classes=4).state_dict()
    wrapped = {k.replace("features.", "features.module."): v for k, v in state.items()}
    torch.save(wrapped, tmp_path / "dp.pt")
    ckpt = load_checkpoint(tmp_path / "dp.pt", arch="alexnet2012", num_classes=4,
                           classes=["a", "b", "c", "d"])
    assert ckpt.classes == ("a", "b", "c", "d") and (ckpt.preprocess.resize, ckpt.preprocess.crop) == (259, 227)


def test_wrong_arch_is_one_clear_error(tmp_path):
    torch.save(build_model("torchvision", num_classes=3).state_dict(), tmp_path / "tv.pt")
    with pytest.raises(CheckpointError, match=r"tv\.pt.*do not fit arch 'alexnet2012'.*--arch torchvision"):
        load_checkpoint(tmp_path / "tv.pt", arch="alexnet2012")
    path = _save(tmp_path / "ours.pt")
    with pytest.raises(CheckpointError, match="--arch alexnet2012"):
        load_checkpoint(path, arch="torchvision")


def test_wrong_class_count(tmp_path):
    path = _save(tmp_path / "ours.pt")
    with pytest.raises(CheckpointError, match="3 classes but 10"):
        load_checkpoint(path, num_classes=10)
    with pytest.raises(CheckpointError, match="3 classes but 2 class names"):
        load_checkpoint(path, classes=["a", "b"])


def test_truncated_missing_and_empty_files(tmp_path):
    path = _save(tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    for name in ("cut.pt", "empty.pt", "junk.pt", "missing.pt"):
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as info:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value)


def test_pickled_object_is_refused(tmp_path):
    """weights_only loading refuses arbitrary objects (a pickled module would run code)."""
    torch.save({"state_dict": build_model("alexnet2012", num_classes=2, width=WIDTH)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "evil.pt")
