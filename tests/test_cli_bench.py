"""`alexnet-deploy bench` and `bench-diff` through the CLI (click's runner, real backends)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import runtime_bundle
from alexnet_deploy.cli import cli

FAST = ["--warmup-s", "0.01", "--min-iters", "3", "--min-time-s", "0.05"]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return runtime_bundle.bundle(tmp_path_factory)


def _run(args):
    return CliRunner().invoke(cli, args, obj={}, catch_exceptions=False)


def test_bench_writes_table_json_csv_plots(bundle, tmp_path, tmp_path_factory):
    images = runtime_bundle.images(tmp_path_factory)
    out = tmp_path / "out"
    result = _run(["bench", str(bundle), "--data", str(images), "--backend", "ort", "--backend", "trt",
                   "--precision", "fp32", "--precision", "fp16", "--batch", "1", "--batch", "2", *FAST,
                   "--json", str(out / "r.json"), "--csv", str(out / "r.csv"), "--plot", str(out / "plots")])
    assert result.exit_code == 0, result.output
    assert "alexnet-deploy bench" in result.output and "unavailable [1]" in result.output
    assert "[1] TensorRT is not installed" in result.output or "[1] no CUDA GPU" in result.output
    rows = json.loads((out / "r.json").read_text())["rows"]
    assert [(r["backend"], r["precision"], r["batch"], r["status"]) for r in rows] == [
        ("ort", "fp32", 1, "ok"), ("ort", "fp32", 2, "ok"), ("ort", "fp16", 1, "ok"), ("ort", "fp16", 2, "ok"),
        ("trt", "fp32", 1, "unavailable"), ("trt", "fp32", 2, "unavailable"),
        ("trt", "fp16", 1, "unavailable"), ("trt", "fp16", 2, "unavailable")]
    # Without pt in the list, the reference is still pt fp32 (torch is installed here).
    assert rows[0]["reference"] == "pt fp32" and rows[0]["n_images"] == 18
    assert (out / "r.csv").read_text().count("\n") == 9
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["latency_vs_batch.png", "top1_vs_latency.png"]


def test_bench_user_errors_are_one_line(bundle, tmp_path):
    result = CliRunner().invoke(cli, ["bench", str(bundle), "--backend", "ort", "--batch", "64"], obj={})
    assert result.exit_code == 1 and result.output.startswith("Error: --batch 64 is outside 1..4")
    assert result.output.count("\n") == 1
    result = CliRunner().invoke(cli, ["bench", str(tmp_path)], obj={})
    assert result.exit_code == 1 and "manifest.json: not found" in result.output
    result = CliRunner().invoke(cli, ["bench", str(bundle), "--end-to-end", "--backend", "ort"], obj={})
    assert result.exit_code == 1 and "--end-to-end needs --data" in result.output
    result = CliRunner().invoke(cli, ["bench", str(bundle), "--batch", "0"], obj={})
    assert result.exit_code == 2 and "--batch" in result.output
    result = CliRunner().invoke(cli, ["bench", str(bundle), "--precision", "bf16"], obj={})
    assert result.exit_code == 2


def _report(path, rows):
    path.write_text(json.dumps({"system": {}, "rows": rows}))
    return str(path)


def _row(p50, top1, backend="ort", batch=1, status="ok"):
    return {"backend": backend, "precision": "fp32", "batch": batch, "status": status, "p50_ms": p50, "top1": top1}


def test_bench_diff_exit_codes(tmp_path):
    old = _report(tmp_path / "old.json", [_row(10.0, 0.80), _row(30.0, 0.80, batch=8),
                                          _row(None, None, "trt", status="unavailable")])
    same = _report(tmp_path / "same.json", [_row(10.4, 0.80), _row(29.0, 0.801, batch=8),
                                           _row(None, None, "trt", status="unavailable")])
    slower = _report(tmp_path / "slower.json", [_row(12.0, 0.80), _row(30.0, 0.80, batch=8)])
    worse = _report(tmp_path / "worse.json", [_row(10.0, 0.78), _row(30.0, 0.80, batch=8)])

    ok = _run(["bench-diff", old, same])
    assert ok.exit_code == 0 and "no regressions" in ok.output
    result = CliRunner().invoke(cli, ["bench-diff", old, slower], obj={})
    assert result.exit_code == 1 and "p50 +20.0% > 10%" in result.output and "1 regression" in result.output
    assert _run(["bench-diff", old, slower, "--max-latency-regress", "25"]).exit_code == 0
    result = CliRunner().invoke(cli, ["bench-diff", old, worse], obj={})
    assert result.exit_code == 1 and "top-1 -2.00 pts" in result.output
    assert _run(["bench-diff", old, worse, "--max-acc-drop", "3"]).exit_code == 0


def test_bench_diff_bad_input(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    result = CliRunner().invoke(cli, ["bench-diff", str(tmp_path / "broken.json"), str(tmp_path / "x.json")], obj={})
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "broken.json" in result.output
    result = CliRunner().invoke(cli, ["bench-diff", str(tmp_path / "missing.json"), str(tmp_path / "x.json")], obj={})
    assert result.exit_code == 1 and "missing.json: not found" in result.output


def test_predict_accepts_a_bundle_and_backend(bundle, tmp_path_factory):
    from alexnet_deploy.deploy import load

    folder = runtime_bundle.images(tmp_path_factory) / "class_2"
    result = _run(["predict", str(bundle), str(folder), "--backend", "ort", "--topk", "2", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    with load(bundle, backend="ort") as model:
        expected = model.classify(sorted(folder.glob("*.jpg")), topk=2)
    assert [p["path"] for p in printed] == [e.path for e in expected]
    assert [p["top"][0]["class"] for p in printed] == [e.label for e in expected]
    result = CliRunner().invoke(cli, ["predict", str(bundle / "manifest.json"), str(folder), "--backend", "ort"],
                                obj={})
    assert result.exit_code == 2 and "--backend needs a bundle SOURCE" in result.output
    result = CliRunner().invoke(cli, ["predict", str(bundle), str(folder), "--num-classes", "3"], obj={})
    assert result.exit_code == 2 and "--arch and --num-classes describe a checkpoint SOURCE" in result.output
