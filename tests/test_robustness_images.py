"""Bad images and bad inputs: skipped, counted and named by `predict DIR` and `bench --data DIR`
(as train and calibrate do), fatal with --strict; clear errors for inputs the runtime cannot use.

Real files (a truncated JPEG, a 0x0-sized header, a 1 x 40000 PNG) through the real CLI and the
public API on the tiny real ONNX bundle of device_helpers.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_deploy.deploy import load, preprocess
from alexnet_deploy.deploy.preprocess import PreprocessSpec, load_image
from alexnet_deploy.errors import AlexNetDeployError, DataError
from device_helpers import tiny_bundle
from robustness_helpers import one_error_line, run_cli, truncated_jpeg

BENCH_FAST = ("--backend", "ort", "--precision", "fp32", "--batch", "1", "--min-iters", "1", "--min-time-s", "0",
              "--warmup-s", "0")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path, fp16=False)


@pytest.fixture
def folder_with_bad_file(bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The bundle's class folders copied, plus a truncated JPEG whose name is also rich markup."""
    data = shutil.copytree(bundle.parent / "images", tmp_path / "data")
    good = next((data / "class_1").iterdir())
    bad = truncated_jpeg(data / "class_1" / "[red]broken.jpg", good)
    return data, bad


# ---- one bad file: reported by path, skipped, counted; --strict makes it fatal ------------------

def test_predict_dir_skips_and_names_a_bad_file(bundle: Path, folder_with_bad_file) -> None:
    data, bad = folder_with_bad_file
    result = run_cli("predict", bundle, data, "--json", "--backend", "ort")
    assert result.exit_code == 0, result.stderr
    paths = [item["path"] for item in json.loads(result.stdout)]
    assert len(paths) == 6 and str(bad) not in paths
    assert f"skipped: {bad}" in result.stderr and "skipped 1 unreadable image(s)" in result.stderr


def test_predict_dir_strict_stops_at_the_bad_file(bundle: Path, folder_with_bad_file) -> None:
    data, bad = folder_with_bad_file
    result = run_cli("predict", bundle, data, "--strict", "--backend", "ort")
    assert result.exit_code == 1 and str(bad) in one_error_line(result)


def test_predict_table_prints_file_names_verbatim(bundle: Path, folder_with_bad_file) -> None:
    data, bad = folder_with_bad_file
    named = shutil.copy(next((data / "class_0").iterdir()), data / "class_0" / "[red]x.jpg")
    bad.unlink()
    result = run_cli("predict", bundle, named, "--backend", "ort", "--topk", "1")
    assert result.exit_code == 0 and "[red]x.jpg" in result.stdout


def test_bench_data_skips_and_counts_a_bad_file(bundle: Path, folder_with_bad_file, tmp_path: Path) -> None:
    data, bad = folder_with_bad_file
    result = run_cli("bench", bundle, "--data", data, *BENCH_FAST, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "skipped 1 unreadable image(s)" in result.stdout and "[red]broken.jpg" in result.stdout
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["config"]["skipped_images"] == [str(bad)] and report["rows"][0]["n_images"] == 6
    strict = run_cli("bench", bundle, "--data", data, *BENCH_FAST, "--strict")
    assert strict.exit_code == 1 and str(bad) in one_error_line(strict) and "--strict" in strict.stderr


def test_classify_api_skips_only_when_asked(bundle: Path, folder_with_bad_file) -> None:
    data, bad = folder_with_bad_file
    files = sorted((data / "class_1").iterdir())
    with load(bundle, backend="ort") as model:
        with pytest.raises(DataError, match="broken.jpg"):
            model.classify(files)
        skipped: list = []
        results = model.classify(files, skipped=skipped)
    assert [r.path for r in results] == [str(f) for f in files if f != bad]
    assert [path for path, _ in skipped] == [str(bad)]


# ---- inputs the runtime cannot use: clear errors ------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height (Pillow reads the size from the header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def test_zero_sized_image_is_a_data_error(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "empty.png", 0, 0)
    with pytest.raises(DataError, match="empty.png"):
        preprocess([path], PreprocessSpec(resize=36, crop=32))
    with pytest.raises(DataError, match="no pixels"):
        preprocess([Image.new("RGB", (0, 0))], PreprocessSpec(resize=36, crop=32))


def test_extreme_aspect_ratio_is_refused_before_resizing(tmp_path: Path) -> None:
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 40000), (10, 20, 30)).save(strip)
    with pytest.raises(DataError, match=r"strip.png: image is 1x40000: resizing .* over the"):
        preprocess([strip], PreprocessSpec(resize=256, crop=224))


def test_decoded_pixels_are_capped_from_the_header(tmp_path: Path) -> None:
    # Between Pillow's warning (89 M) and its error (179 M): Pillow alone would decode it.
    huge = _png_header_only(tmp_path / "huge.png", 12000, 12000)
    with pytest.raises(DataError, match="huge.png: image is 12000x12000 .* pixel limit"):
        load_image(huge)


def test_infer_refuses_nan_and_inf(bundle: Path) -> None:
    with load(bundle, backend="ort") as model:
        batch = np.zeros((2, 3, 32, 32), np.float32)
        assert model.infer(batch).shape == (2, 3)
        batch[1, 0, 0, 0] = np.nan
        batch[0, 1, 2, 3] = np.inf
        with pytest.raises(AlexNetDeployError, match="2 NaN/inf values"):
            model.infer(batch)


def test_classify_takes_an_hwc_uint8_array_and_refuses_others(bundle: Path) -> None:
    path = next((bundle.parent / "images" / "class_2").iterdir())
    pixels = np.asarray(Image.open(path).convert("RGB"))
    with load(bundle, backend="ort") as model:
        from_array = model.classify(pixels, topk=3)
        from_file = model.classify(path, topk=3)
        assert from_array[0].topk == from_file[0].topk and from_array[0].path is None
        assert len(model.classify(np.stack([pixels, pixels]))) == 2   # NHWC: one per image
        with pytest.raises(DataError, match="HWC uint8"):
            model.classify(pixels.astype(np.float32))
        with pytest.raises(DataError, match="cannot read an image from a int"):
            model.classify([3])


def test_infer_after_close_says_so(bundle: Path) -> None:
    model = load(bundle, backend="ort")
    model.close()
    with pytest.raises(AlexNetDeployError, match=r"infer\(\) after close\(\)"):
        model.infer(np.zeros((1, 3, 32, 32), np.float32))


def test_bad_thread_and_worker_counts(bundle: Path) -> None:
    with pytest.raises(AlexNetDeployError, match="threads=-1: expected a positive integer"):
        load(bundle, backend="ort", threads=-1)
    with load(bundle, backend="ort") as model:
        with pytest.raises(DataError, match="workers=-1"):
            model.classify([next((bundle.parent / "images" / "class_0").iterdir())], workers=-1)
