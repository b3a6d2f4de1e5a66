"""Commands that must fail loudly, early and in one line: bench exit codes, outputs checked before the
work, train flags/config/run directory, checkpoints that are not checkpoints.

Every case runs the real CLI on real files; the unwritable paths are really unwritable (see
robustness_helpers.read_only_dir). None of these starts a training run: each fails before one would.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import pytest

from alexnet_deploy.deploy.bundle import bundle_lock
from device_helpers import tiny_bundle
from robustness_helpers import one_error_line, read_only_dir, run_cli

BENCH_FAST = ("--batch", "1", "--min-iters", "1", "--min-time-s", "0", "--warmup-s", "0")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- calibrate: outputs checked before any work -------------------------------------------------

def test_calibrate_report_to_an_unwritable_path_leaves_the_bundle_untouched(bundle: Path, tmp_path: Path) -> None:
    before = _digests(bundle)
    with read_only_dir(tmp_path) as locked:
        result = run_cli("calibrate", bundle, "--calib", bundle.parent / "images", "--num-images", "6",
                         "--method", "minmax", "--report", locked / "report.json")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"--report {locked / 'report.json'}: cannot write there" in line
    assert _digests(bundle) == before and not (bundle / "model.int8.onnx").exists()


def test_calibrate_refuses_a_bundle_another_process_is_writing(bundle: Path) -> None:
    import subprocess
    import sys

    # The lock is held by this test process; the CLI runs as a second, real process.
    with bundle_lock(bundle, "--out"):
        child = subprocess.run([sys.executable, "-m", "alexnet_deploy", "calibrate", str(bundle), "--calib",
                                str(bundle.parent / "images")], capture_output=True, text=True, timeout=120)
    assert child.returncode == 1
    assert "another alexnet-deploy process" in child.stderr and "Traceback" not in child.stderr
    assert not (bundle / "model.int8.onnx").exists()


# ---- bench: exit codes and outputs --------------------------------------------------------------

def test_bench_fails_when_a_row_fails_its_checksum(bundle: Path, tmp_path: Path) -> None:
    shutil.copy(bundle / "model.onnx", bundle / "model.fp16.onnx")   # a valid model, not the listed one
    result = run_cli("bench", bundle, "--backend", "ort", *BENCH_FAST, "--json", tmp_path / "b.json")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "ort fp16" in line and "sha256 mismatch" in line
    assert (tmp_path / "b.json").is_file()   # the report is still written for CI to keep


def test_bench_fails_when_no_backend_can_run(bundle: Path) -> None:
    result = run_cli("bench", bundle, "--backend", "trt", *BENCH_FAST)
    assert result.exit_code == 1 and "no backend could run" in one_error_line(result)


def test_bench_merely_unavailable_rows_do_not_fail(bundle: Path) -> None:
    result = run_cli("bench", bundle, "--backend", "ort", "--backend", "trt", "--precision", "fp32", *BENCH_FAST)
    assert result.exit_code == 0, result.stderr
    assert "unavailable" in result.stdout


def test_bench_fails_with_a_wrong_checkpoint(bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    wrong = tmp_path / "wrong.pt"
    wrong.write_text("not the exported checkpoint")
    result = run_cli("bench", bundle, "--backend", "pt", "--backend", "ort", "--checkpoint", wrong, *BENCH_FAST)
    assert result.exit_code == 1
    assert "pt fp32" in one_error_line(result) and "wrong.pt" in result.stderr


@pytest.mark.parametrize("flag", ["--json", "--csv", "--plot"])
def test_bench_outputs_are_checked_before_the_run(bundle: Path, tmp_path: Path, flag: str) -> None:
    with read_only_dir(tmp_path) as locked:
        target = locked / ("plots" if flag == "--plot" else "out.json")
        result = run_cli("bench", bundle, "--backend", "ort", *BENCH_FAST, flag, target)
    assert result.exit_code == 1
    assert f"{flag} {target}: cannot write there" in one_error_line(result)
    assert "alexnet-deploy bench" not in result.stdout   # no table: nothing was run


# ---- train: flags, config file and run directory ------------------------------------------------

@pytest.fixture
def data(tmp_path: Path) -> Path:
    from conftest import write_image_folder

    return write_image_folder(tmp_path / "data", classes=2, per_class=2, size=32)


@pytest.mark.parametrize("flags, expect", [
    (("--dropout", "2"), "--dropout 2.0: expected 0.0 <= x < 1.0"),
    (("--workers", "-1"), "--workers must be > 0, got -1"),
    (("--val-split", "1.5"), "--val-split 1.5: expected a fraction between 0 and 1"),
    (("--width", "0"), "--width 0.0: expected 0 < x <= 1 (1.0 is the paper's network)"),
    (("--width", "1.5"), "--width 1.5: expected 0 < x <= 1 (1.0 is the paper's network)"),
])
def test_train_bad_values_name_the_flag(data: Path, tmp_path: Path, flags, expect: str) -> None:
    result = run_cli("train", "--data", data, "--out", tmp_path / "run", *flags)
    assert result.exit_code == 1 and expect in one_error_line(result)
    assert not (tmp_path / "run").exists()


def test_train_config_with_a_wrong_type_names_file_and_key(data: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[train]\ndata = "{data}"\nepochs = "abc"\n')
    result = run_cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert f"{config}: epochs = 'abc': expected an integer" in one_error_line(result)
    config.write_text(f'[train]\ndata = "{data}"\nwidth = "narrow"\n')
    result = run_cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 1 and f"{config}: width = 'narrow': expected a number" in one_error_line(result)
    config.write_text(f'[train]\ndata = "{data}"\nwidth = -0.5\n')
    result = run_cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 1 and "--width -0.5: expected 0 < x <= 1" in one_error_line(result)


def test_train_out_that_is_a_file_or_unwritable(data: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    result = run_cli("train", "--data", data, "--out", a_file)   # click's own check: a usage error
    assert result.exit_code == 2 and "--out" in result.stderr and "Traceback" not in result.output
    config = tmp_path / "config.toml"
    config.write_text(f'data = "{data}"\nout = "{a_file}"\n')   # the library's check
    result = run_cli("train", "--config", config)
    assert result.exit_code == 1 and f"--out {a_file}: exists and is not a directory" in one_error_line(result)
    with read_only_dir(tmp_path) as locked:
        result = run_cli("train", "--data", data, "--out", locked / "run")
    assert result.exit_code == 1 and f"--out {locked / 'run'}: cannot write there" in one_error_line(result)


def test_train_refuses_to_replace_an_earlier_run(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"an earlier run's weights")
    result = run_cli("train", "--data", data, "--out", run)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "holds an earlier run (best.pt)" in line and "--resume" in line and "--overwrite" in line
    assert (run / "best.pt").read_bytes() == b"an earlier run's weights"


# ---- checkpoints that are not checkpoints -------------------------------------------------------

def test_text_file_as_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("model weights v1\nlayer1 0.5\n")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    result = run_cli("predict", text, image)
    assert result.exit_code == 1 and "not a PyTorch checkpoint" in one_error_line(result)


def test_refused_pickle_never_advises_weights_only_false(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(print, protocol=2))   # a global torch's safe loader refuses
    result = run_cli("export", evil, "--out", tmp_path / "b")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "weights_only loading refuses" in line
    assert "weights_only=False" not in line and "set to `False`" not in line and "safe_globals" not in line
    assert not (tmp_path / "b").exists()   # the --out this failed export made is gone


def test_export_names_a_missing_calib_folder(tmp_path: Path) -> None:
    result = run_cli("export", tmp_path / "x.pt", "--out", tmp_path / "b", "--int8", "--calib", tmp_path / "nope")
    assert result.exit_code == 2 and "--calib" in result.stderr and "--verify-data" not in result.stderr
