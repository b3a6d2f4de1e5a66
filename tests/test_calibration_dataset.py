"""CalibrationSet: deterministic stratified sampling, the .npz cache and its invalidation,
bad images reported, held-out sets disjoint from the calibration sample."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image_folder
from PIL import Image

from alexnet_deploy.calibration.dataset import (default_cache_dir, load_set, prune_cache, random_set,
                                                stratified_split)
from alexnet_deploy.deploy.preprocess import PreprocessSpec, preprocess
from alexnet_deploy.errors import CalibrationError, DataError

SPEC = PreprocessSpec(resize=32, crop=32)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images", classes=3, per_class=8, size=36)


def test_sampling_is_deterministic_stratified_and_seeded(folder: Path) -> None:
    first = load_set(folder, SPEC, count=9, seed=3)
    again = load_set(folder, SPEC, count=9, seed=3)
    other = load_set(folder, SPEC, count=9, seed=4)
    assert first.files == again.files and np.array_equal(first.images, again.images)
    assert first.files != other.files
    assert Counter(first.labels.tolist()) == {0: 3, 1: 3, 2: 3}
    assert first.images.shape == (9, 3, 32, 32) and first.images.dtype == np.float32
    assert all(f.startswith(f"class_{label}/") for f, label in zip(first.files, first.labels))


def test_images_are_bit_identical_to_deploy_preprocess(folder: Path, tmp_path: Path) -> None:
    fresh = load_set(folder, SPEC, count=6, seed=0, cache_dir=tmp_path / "cache")
    cached = load_set(folder, SPEC, count=6, seed=0, cache_dir=tmp_path / "cache")
    expected = preprocess([folder / f for f in fresh.files], SPEC)
    assert np.array_equal(fresh.images, expected) and np.array_equal(cached.images, expected)


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALEXNET_DEPLOY_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a" / "calibration"
    monkeypatch.delenv("ALEXNET_DEPLOY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "alexnet-deploy" / "calibration"


def test_stratified_split_groups_are_disjoint_and_balanced() -> None:
    labels = [0] * 10 + [1] * 10 + [2] * 4
    calib, val = stratified_split(labels, [6, 9], seed=0)
    assert not set(calib) & set(val)
    assert Counter(labels[i] for i in calib) == {0: 2, 1: 2, 2: 2}
    assert len(val) == 9


def test_cache_is_reused_when_nothing_changed(folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    built = load_set(folder, SPEC, count=6, seed=0, cache_dir=cache)
    reused = load_set(folder, SPEC, count=6, seed=0, cache_dir=cache)
    assert not built.cache_hit and reused.cache_hit
    assert reused.cache_key == built.cache_key and reused.files == built.files
    assert np.array_equal(reused.images, built.images) and np.array_equal(reused.labels, built.labels)
    assert len(list(cache.glob("calib-*.npz"))) == 1


def test_corrupt_cache_file_is_rebuilt(folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    built = load_set(folder, SPEC, count=6, seed=0, cache_dir=cache)
    path = next(cache.glob("calib-*.npz"))
    path.write_bytes(b"PK\x03\x04 not really a zip archive")   # what a cut-off copy leaves
    rebuilt = load_set(folder, SPEC, count=6, seed=0, cache_dir=cache)
    assert not rebuilt.cache_hit and np.array_equal(rebuilt.images, built.images)


def test_cache_is_capped_least_recently_used_first(folder: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    first = load_set(folder, SPEC, count=6, seed=0, cache_dir=cache)
    one_set = Path(first.cache_path).stat().st_size
    # Room for two sets: the third write must evict the least recently used one.
    monkeypatch.setenv("ALEXNET_DEPLOY_CACHE_MAX_GIB", str(2.5 * one_set / 1024**3))
    second = load_set(folder, SPEC, count=6, seed=1, cache_dir=cache)
    os.utime(second.cache_path, (1, 1))                        # make seed 1 the oldest...
    assert load_set(folder, SPEC, count=6, seed=0, cache_dir=cache).cache_hit   # ...and touch seed 0
    third = load_set(folder, SPEC, count=6, seed=2, cache_dir=cache)
    remaining = sorted(p.name for p in cache.glob("*.npz"))
    assert remaining == sorted(Path(s.cache_path).name for s in (first, third))
    assert load_set(folder, SPEC, count=6, seed=0, cache_dir=cache).cache_hit


def test_prune_never_removes_the_set_just_written(tmp_path: Path) -> None:
    big = tmp_path / "calib-new.npz"
    big.write_bytes(b"x" * 100)
    old = tmp_path / "calib-old.npz"
    old.write_bytes(b"x" * 10)
    os.utime(old, (1, 1))
    assert prune_cache(tmp_path, keep=big, budget=50) == [old]
    assert big.is_file()


@pytest.mark.parametrize("change", ["content", "count", "seed", "preprocessing", "file list"])
def test_cache_is_invalidated_by_any_input_change(folder: Path, tmp_path: Path, change: str) -> None:
    cache = tmp_path / "cache"
    built = load_set(folder, SPEC, count=6, seed=0, cache_dir=cache)
    count, seed, spec = 6, 0, SPEC
    if change == "content":
        path = folder / built.files[0]
        Image.fromarray(np.full((36, 36, 3), 7, np.uint8)).save(path, quality=95)
    elif change == "count":
        count = 7
    elif change == "seed":
        seed = 1
    elif change == "preprocessing":
        spec = PreprocessSpec(resize=32, crop=32, mean=(0.5, 0.5, 0.5))
    else:
        Image.fromarray(np.zeros((36, 36, 3), np.uint8)).save(folder / "class_1" / "new.jpg")
    rebuilt = load_set(folder, spec, count=count, seed=seed, cache_dir=cache)
    assert not rebuilt.cache_hit
    assert rebuilt.cache_key != built.cache_key
    if change == "content":
        assert not np.array_equal(rebuilt.images[0], built.images[0])


def test_bad_images_are_skipped_and_reported(folder: Path) -> None:
    (folder / "class_0" / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "class_2" / "empty.png").write_bytes(b"")
    result = load_set(folder, SPEC, count=100, seed=0)
    assert set(result.skipped) == {"class_0/broken.jpg", "class_2/empty.png"}
    assert len(result) == 24 and not set(result.skipped) & set(result.files)


def test_held_out_set_excludes_the_calibration_sample(folder: Path) -> None:
    calib = load_set(folder, SPEC, count=12, seed=0)
    val = load_set(folder, SPEC, count=100, seed=1, role="val", exclude=calib.files)
    assert len(val) == 12 and not set(val.files) & set(calib.files)
    with pytest.raises(DataError, match="no images left"):
        load_set(folder, SPEC, count=5, role="val", exclude=calib.files + val.files)


def test_bad_count_and_missing_folder_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="--num-images"):
        load_set(tmp_path, SPEC, count=0)
    with pytest.raises(DataError, match="not a directory"):
        load_set(tmp_path / "missing", SPEC, count=4)


def test_random_set_is_stamped_random() -> None:
    data = random_set(SPEC, 4, seed=0)
    assert data.random and data.files == () and data.images.shape == (4, 3, 32, 32)
    assert np.array_equal(data.images, random_set(SPEC, 4, seed=0).images)


def test_calibration_package_never_imports_torch() -> None:
    code = ("import sys, alexnet_deploy.calibration, alexnet_deploy.calibration.budget, alexnet_deploy.cli.calibrate;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
