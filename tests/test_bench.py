"""bench library: percentile maths, the timing loop, accuracy/agreement, rows, JSON/CSV, bench-diff."""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest

import runtime_bundle
from alexnet_deploy.deploy.evaluate.bench import ROW_FIELDS, BenchConfig, BenchRow, run_bench
from alexnet_deploy.deploy.evaluate.report import read_report, write_csv, write_json, write_plots
from alexnet_deploy.deploy.evaluate.compare import compare_logits, diff_reports, topk_accuracy
from alexnet_deploy.deploy.evaluate.timing import latency_stats, measure, percentile
from alexnet_deploy.errors import AlexNetDeployError, DataError

# The fields every bench row has (docs/architecture.md, "Reports"): tools that read bench JSON rely on them.
REQUIRED_FIELDS = ("backend", "precision", "provider", "status", "reason", "batch", "iters", "p50_ms", "p90_ms",
                   "p99_ms", "mean_ms", "std_ms", "throughput_ips", "top1", "top5", "agreement", "max_abs_diff",
                   "n_images", "model_bytes")
FAST = dict(warmup_s=0.01, min_iters=3, min_time_s=0.05)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return runtime_bundle.bundle(tmp_path_factory)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    return runtime_bundle.images(tmp_path_factory)


# ---- maths -------------------------------------------------------------------------------------

def test_percentile_follows_trtexec():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50 and percentile(values, 90) == 90 and percentile(values, 99) == 99
    assert percentile(values, 100) == 100 and percentile(values, 0) == 1
    ten = list(range(1, 11))
    assert percentile(ten, 50) == 5 and percentile(ten, 90) == 9 and percentile(ten, 99) == 10
    assert percentile([7.5], 99) == 7.5
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_stats():
    times = [0.010, 0.012, 0.011, 0.020, 0.010]  # seconds
    stats = latency_stats(times, batch=4, wall_s=0.1)
    ms = np.array(times) * 1000
    assert stats.iters == 5 and stats.p50_ms == pytest.approx(11.0) and stats.p99_ms == pytest.approx(20.0)
    assert stats.mean_ms == pytest.approx(ms.mean()) and stats.std_ms == pytest.approx(ms.std(ddof=1))
    assert stats.cv == pytest.approx(ms.std(ddof=1) / ms.mean())
    assert stats.throughput_ips == pytest.approx(5 * 4 / 0.1)
    assert stats.min_ms == pytest.approx(10.0) and stats.max_ms == pytest.approx(20.0)


def test_measure_runs_until_both_minimums():
    calls, syncs = [], []
    times, wall = measure(lambda: (calls.append(1), time.sleep(0.002)), lambda: syncs.append(1),
                          warmup_s=0.01, min_iters=5, min_time_s=0.06)
    assert len(times) >= 5 and wall >= 0.06 and sum(times) <= wall
    assert len(calls) == len(syncs) > len(times)  # warm-up calls happened and every call was synced
    times, _ = measure(lambda: time.sleep(0.001), lambda: None, warmup_s=0, min_iters=40, min_time_s=0)
    assert len(times) == 40


def test_compare_logits_counts_flips():
    labels = np.array([0, 1, 2, 0])
    reference = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 5], [0, 5, 0]], np.float32)  # right, right, right, wrong
    logits = np.array([[5, 0, 0], [5, 0, 0], [0, 0, 5], [5, 0, 0]], np.float32)     # right, wrong, right, right
    acc = compare_logits(logits, labels, reference)
    assert acc.top1 == pytest.approx(0.75) and acc.agreement == pytest.approx(0.5)
    assert acc.flips_right_to_wrong == 1 and acc.flips_wrong_to_right == 1 and acc.max_abs_diff == 5.0
    assert topk_accuracy(logits, labels, 2) == pytest.approx(1.0)
    assert compare_logits(logits).top1 is None and compare_logits(logits, labels).agreement is None
    with pytest.raises(AlexNetDeployError):
        compare_logits(logits, labels, reference[:2])


def test_diff_reports_flags_regressions():
    def row(backend, p50, top1, status="ok", batch=1):
        return {"backend": backend, "precision": "fp32", "batch": batch, "p50_ms": p50, "top1": top1, "status": status}

    old = [row("ort", 10.0, 0.80), row("pt", 20.0, 0.80), row("trt", None, None, "unavailable"), row("ov", 5, 0.8)]
    new = [row("ort", 10.5, 0.799), row("pt", 25.0, 0.80), row("trt", None, None, "unavailable"),
           row("ov", None, None, "failed"), row("new", 1.0, 0.5)]
    diffs = {d.key[0]: d for d in diff_reports(old, new, max_latency_regress_pct=10, max_acc_drop_pts=0.5)}
    assert diffs["ort"].regressions == () and diffs["ort"].latency_change_pct == pytest.approx(5.0)
    assert diffs["pt"].regressions and "p50 +25.0%" in diffs["pt"].regressions[0]
    assert diffs["trt"].regressions == ()
    assert diffs["ov"].regressions and "status failed" in diffs["ov"].regressions[0]
    assert diffs["new"].note == "only in NEW"
    acc = diff_reports([row("ort", 10, 0.80)], [row("ort", 10, 0.79)], max_acc_drop_pts=0.5)[0]
    assert acc.top1_change_pts == pytest.approx(-1.0) and "top-1 -1.00 pts" in acc.regressions[0]


# ---- run_bench on a real bundle ------------------------------------------------------------------

@pytest.fixture(scope="session")
def report(bundle, images):
    config = BenchConfig(backends=("pt", "ort", "ort-cuda", "trt"), batches=(1, 3), data=str(images), **FAST)
    return run_bench(bundle, config)


def _rows(report, backend, precision):
    return [r for r in report.rows if (r.backend, r.precision) == (backend, precision)]


def test_rows_cover_every_backend_precision_batch(report):
    keys = [(r.backend, r.precision, r.batch) for r in report.rows]
    expected = [("pt", "fp32", b) for b in (1, 3)] + [(n, p, b) for n in ("ort", "ort-cuda", "trt")
                                                      for p in ("fp32", "fp16", "int8") for b in (1, 3)]
    assert keys == expected  # pt has no fp16/int8 at all; everything else has a row, run or not


def test_ok_rows_have_latency_and_accuracy(report):
    for backend, precision in (("pt", "fp32"), ("ort", "fp32"), ("ort", "fp16")):
        for row in _rows(report, backend, precision):
            assert row.status == "ok" and row.reason == "", row
            assert row.iters >= 3 and 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
            assert row.throughput_ips > 0 and row.model_bytes > 0 and row.n_images == 18
            assert 0 <= row.top1 <= 1 and row.top5 is None  # 3 classes: top-5 would always be 100 %
            assert row.reference == "pt fp32" and row.mode == "model"
    pt = _rows(report, "pt", "fp32")[0]
    assert pt.agreement == 1.0 and pt.max_abs_diff == 0.0 and pt.flips_right_to_wrong == 0
    ort = _rows(report, "ort", "fp16")[0]
    assert ort.agreement == 1.0 and 0 < ort.max_abs_diff < 1e-2 and ort.top1 == pt.top1


def test_unavailable_rows_say_why(report):
    for row in _rows(report, "ort", "int8"):
        assert row.status == "unavailable" and "alexnet-deploy calibrate" in row.reason and row.p50_ms is None
    for row in _rows(report, "ort-cuda", "fp32"):
        assert row.status == "unavailable" and "CUDA GPU" in row.reason
    for row in _rows(report, "trt", "fp16"):
        assert row.status == "unavailable" and ("TensorRT" in row.reason or "GPU" in row.reason)


def test_json_and_csv_schema(report, tmp_path):
    data = json.loads(write_json(report, tmp_path / "r.json").read_text())
    assert set(data) == {"system", "config", "rows"} and len(data["rows"]) == len(report.rows)
    for row in data["rows"]:
        assert set(REQUIRED_FIELDS) <= set(row) and row["status"] in ("ok", "unavailable", "failed")
    assert data["system"]["cpu"] and data["system"]["cpu_count"] >= 1 and "packages" in data["system"]
    assert data["config"]["batches"] == [1, 3]
    assert read_report(tmp_path / "r.json")["rows"] == data["rows"]
    with open(write_csv(report.rows, tmp_path / "r.csv"), newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert tuple(lines[0]) == ROW_FIELDS and len(lines) == len(report.rows)
    ok = next(line for line in lines if line["status"] == "ok")
    assert math.isclose(float(ok["p50_ms"]), report.rows[0].p50_ms, rel_tol=1e-9)


def test_plots_are_png(report, tmp_path):
    written = write_plots(report, tmp_path / "plots")
    assert [p.name for p in written] == ["latency_vs_batch.png", "top1_vs_latency.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_end_to_end_and_reference_npz(bundle, images):
    e2e = run_bench(bundle, BenchConfig(backends=("ort",), precisions=("fp32",), batches=(2,), data=str(images),
                                        end_to_end=True, **FAST))
    (row,) = e2e.rows
    assert row.status == "ok" and row.mode == "end-to-end" and row.p50_ms > 0
    # Without --data, agreement comes from the exporter's reference.npz (torch logits).
    plain = run_bench(bundle, BenchConfig(backends=("ort",), precisions=("fp16",), batches=(1,), **FAST))
    (row,) = plain.rows
    assert row.top1 is None and row.agreement == 1.0 and row.n_images == 32 and "reference.npz" in row.reference


def test_random_calibration_is_stamped(bundle, tmp_path):
    copy = runtime_bundle.linked_copy(bundle, tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["calibration"] = {"random": True}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = run_bench(copy, BenchConfig(backends=("ort",), precisions=("int8",), batches=(1,), **FAST))
    assert report.rows[0].random_calibration and "RANDOM" in report.rows[0].warnings[0]


def test_user_errors(bundle, images, tmp_path):
    with pytest.raises(DataError, match="--end-to-end needs --data"):
        run_bench(bundle, BenchConfig(backends=("ort",), end_to_end=True))
    with pytest.raises(AlexNetDeployError, match="--batch 9 is outside 1..4"):
        run_bench(bundle, BenchConfig(backends=("ort",), batches=(9,)))
    with pytest.raises(AlexNetDeployError, match="unknown backend 'tensorflow'"):
        run_bench(bundle, BenchConfig(backends=("tensorflow",)))
    runtime_bundle.write_image_folder(tmp_path / "other", classes=1, per_class=1)
    (tmp_path / "other" / "class_0").rename(tmp_path / "other" / "zebra")
    with pytest.raises(DataError, match="'zebra'.*not among the model's classes"):
        run_bench(bundle, BenchConfig(backends=("ort",), data=str(tmp_path / "other")))
    with pytest.raises(AlexNetDeployError, match="not a bench JSON"):
        (tmp_path / "bad.json").write_text("{}")
        read_report(tmp_path / "bad.json")


def test_bench_row_defaults_are_a_failed_row_shape():
    row = BenchRow(backend="trt", precision="fp16", status="failed", reason="boom", batch=8)
    data = row.to_dict()
    assert tuple(data) == ROW_FIELDS and data["p50_ms"] is None and data["warnings"] == []


def test_a_broken_artifact_is_a_failed_row_not_a_crash(bundle, tmp_path):
    copy = runtime_bundle.linked_copy(bundle, tmp_path / "b")
    manifest = json.loads((copy / "manifest.json").read_text())
    next(a for a in manifest["artifacts"] if a["file"] == "model.fp16.onnx")["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = run_bench(copy, BenchConfig(backends=("ort",), precisions=("fp32", "fp16"), batches=(1,), **FAST))
    assert [(r.precision, r.status) for r in report.rows] == [("fp32", "ok"), ("fp16", "failed")]
    assert "model.fp16.onnx: sha256 mismatch" in report.rows[1].reason
