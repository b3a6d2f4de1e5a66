"""fp32 ONNX export: one LRN node per layer, dynamic batch, parity with PyTorch, bundle contents.

Exports are real (torch.onnx dynamo exporter -> onnx.checker -> ONNX Runtime CPU). One briefly
trained AlexNet-2012 at conftest.PIPELINE_WIDTH (the paper's layers, ~4 MB of ONNX) is exported once
per module and several tests read that bundle; the full-size network (~233 MB whatever the input
size) is exported once, at 227 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alexnet_deploy.deploy.bundle import read_manifest, verify_artifacts
from alexnet_deploy.deploy.evaluate.compare import check_parity, require_parity
from alexnet_deploy.deploy.onnx.sessions import cpu_logits as ort_logits
from alexnet_deploy.deploy.precision import PRECISIONS
from alexnet_deploy.deploy.preprocess import PreprocessSpec, list_class_folder, preprocess
from alexnet_deploy.errors import ExportError
from alexnet_deploy.export.pipeline import export_bundle
from conftest import PIPELINE_WIDTH, scratch_dir, train_briefly, write_image_folder

FP32 = PRECISIONS["fp32"].export

torch = pytest.importorskip("torch")


def save_ckpt(path: Path, model, classes, size: int = 64) -> Path:
    from alexnet_deploy.alexnet.checkpoint import save_checkpoint

    return save_checkpoint(path, model=model, arch="alexnet2012", classes=classes,
                           preprocess=PreprocessSpec.for_image_size(size), config={"note": "test"}, epoch=1,
                           metrics={"top1": 0.5})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A briefly trained 3-class AlexNet-2012 (64 px, pipeline width) exported with --fp16, verified on real images."""
    from alexnet_deploy.alexnet.model import build_model

    with scratch_dir(tmp_path_factory, "export") as root:
        images = write_image_folder(root / "images", classes=3, per_class=6, size=64)
        classes, samples = list_class_folder(images)
        spec = PreprocessSpec.for_image_size(64)
        x = preprocess([p for p, _ in samples], spec)
        torch.manual_seed(0)
        model = build_model("alexnet2012", num_classes=3, width=PIPELINE_WIDTH)
        train_briefly(model, x, np.array([i for _, i in samples], np.int64))
        ckpt = save_ckpt(root / "best.pt", model, classes)
        out = root / "bundle"
        manifest = export_bundle(ckpt, out, fp16=True, verify_data=images, verify_count=12, lrn="native")
        yield {"root": root, "images": images, "ckpt": ckpt, "out": out, "manifest": manifest, "model": model,
               "classes": classes, "spec": spec}


def test_bundle_files_and_checksums(trained: dict) -> None:
    out, manifest = trained["out"], trained["manifest"]
    assert read_manifest(out) == manifest
    assert {a.file for a in manifest.artifacts} == {"model.onnx", "model.fp16.onnx", "reference.npz"}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.fp16.onnx", "model.onnx",
                                                      "reference.npz"], "no stray files"
    assert len(verify_artifacts(out)) == 3
    assert manifest.classes == tuple(trained["classes"]) and manifest.input.shape == (-1, 3, 64, 64)
    assert manifest.output.shape == (-1, 3) and manifest.preprocess == trained["spec"]
    prov = manifest.provenance
    assert prov["checkpoint_path"] == str(trained["ckpt"].resolve()) and len(prov["checkpoint_sha256"]) == 64
    assert prov["train_config"] == {"note": "test"} and "torch" in prov["export_versions"]
    assert manifest.export["opset"] == 18 and manifest.export["exporter"] == "torch.onnx.export(dynamo=True)"
    assert manifest.export["lrn"] == "native" and manifest.export["lrn_nodes"] == 2
    engines = manifest.export["engines"]
    assert engines["status"] in ("skipped", "built")
    if engines["status"] == "skipped":
        assert engines["command"] == f"alexnet-deploy build-engine {out} --fp16"


def test_graph_has_one_lrn_node_per_layer_and_dynamic_batch(trained: dict) -> None:
    import onnx

    model = onnx.load(str(trained["out"] / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("LRN") == 2
    assert "Pow" not in ops and "AveragePool" not in ops, "LRN must not be decomposed"
    lrn = next(n for n in model.graph.node if n.op_type == "LRN")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lrn.attribute}
    assert attrs["size"] == 5 and attrs["beta"] == pytest.approx(0.75) and attrs["bias"] == pytest.approx(2.0)
    assert attrs["alpha"] == pytest.approx(5e-4), "torch's alpha (already divided-by-size convention) is kept"
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.shape.dim[0].dim_param and not inp.type.tensor_type.shape.dim[0].dim_value
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == list(trained["classes"])
    assert PreprocessSpec.from_dict(json.loads(meta["preprocess"])) == trained["spec"]
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_dynamic_batch_matches_torch(trained: dict, batch: int) -> None:
    x = np.random.default_rng(batch).normal(0, 1, (batch, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = trained["model"](torch.from_numpy(x)).numpy()
    got = ort_logits(trained["out"] / "model.onnx", x)
    assert got.shape == (batch, 3)
    assert check_parity(expected, got, FP32).passed


def test_parity_on_real_images_is_recorded(trained: dict) -> None:
    fp32 = trained["manifest"].parity
    assert fp32["source"] == "verify-data" and fp32["n"] == 12
    check = fp32["fp32"]["onnx_vs_torch"]
    assert check["passed"] and check["max_abs_diff"] <= check["allowed_abs_diff"] and check["min_cosine"] > 0.9999
    assert check["top1_agreement"] == 1.0


def test_reference_npz_is_golden_and_pickle_free(trained: dict) -> None:
    out = trained["out"]
    with np.load(out / "reference.npz", allow_pickle=False) as ref:
        inputs, logits, labels, files = ref["inputs"], ref["logits"], ref["labels"], ref["files"]
    assert inputs.shape == (12, 3, 64, 64) and inputs.dtype == np.float32 and logits.shape == (12, 3)
    assert sorted(set(labels.tolist())) == [0, 1, 2], "round-robin over classes"
    assert all((trained["images"] / f).is_file() for f in files)
    with torch.no_grad():
        np.testing.assert_allclose(logits, trained["model"](torch.from_numpy(inputs)).numpy(), rtol=1e-5, atol=1e-5)
    assert check_parity(logits, ort_logits(out / "model.onnx", inputs), FP32).passed


def test_export_at_63_px_opset_17_from_a_64_px_checkpoint(trained: dict, tmp_path: Path) -> None:
    """The smallest input AlexNet runs at (the 6x6 adaptive pool must not break the export), at the
    opset TensorRT 8.6 reads."""
    import onnx

    manifest = export_bundle(trained["ckpt"], tmp_path / "b63", image_size=63, simplify=False, verify_count=4,
                             engines=False, opset=17)
    model = onnx.load(str(tmp_path / "b63" / "model.onnx"))
    assert [o.version for o in model.opset_import if o.domain == ""] == [17] and manifest.export["opset"] == 17
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 2 and "GatherND" not in ops and "ReduceMean" not in ops
    assert manifest.export["adaptive_pool"] == ["matmul 1x1->6x6"]
    assert manifest.input.shape == (-1, 3, 63, 63)
    assert manifest.preprocess.crop == 63 and manifest.preprocess.resize == round(63 * 73 / 64)
    assert manifest.parity["source"] == "generated"
    assert manifest.parity["fp32"]["onnx_vs_torch"]["passed"] and not manifest.export["simplified"]
    assert manifest.export["engines"]["status"] == "disabled"


def test_too_small_image_size_is_a_clear_error(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"--image-size 40: the model cannot run at 40 px.*at least 63 px"):
        export_bundle(trained["ckpt"], tmp_path / "b40", image_size=40, verify_count=2, engines=False)


@pytest.mark.slow
def test_export_at_227_px_random_weights(trained: dict, tmp_path: Path) -> None:
    """The full-size paper network (~58 M parameters) through the default export and its parity check."""
    from alexnet_deploy.alexnet.model import build_model

    torch.manual_seed(1)
    ckpt = save_ckpt(tmp_path / "r.pt", build_model("alexnet2012", num_classes=10), [f"c{i}" for i in range(10)],
                     size=227)
    manifest = export_bundle(ckpt, tmp_path / "b227", verify_count=4, engines=False)
    assert manifest.input.shape == (-1, 3, 227, 227)
    assert manifest.export["lrn"] == "conv", "conv LRN is the default"
    assert manifest.export["lrn_nodes"] == 0 and manifest.export["lrn_layers"] == 2
    assert manifest.parity["fp32"]["onnx_vs_torch"]["passed"]


def test_fixed_adaptive_pool_equals_torch() -> None:
    from alexnet_deploy.export.torch_pool import fix_adaptive_pools

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveAvgPool2d((6, 6))).eval()
    expected = {5: "matmul 5x5->6x6", 6: "identity", 12: "avgpool 2x2", 8: "matmul 8x8->6x6", 1: "matmul 1x1->6x6"}
    for size, description in expected.items():
        x = torch.randn(2, 3, size, size)
        fixed, done = fix_adaptive_pools(net, size)
        assert done == [description]
        with torch.no_grad():
            torch.testing.assert_close(fixed(x), net(x), rtol=1e-6, atol=1e-6)


def test_native_lrn_matches_torch_and_onnx_convention(tmp_path: Path) -> None:
    """torch LocalResponseNorm == ONNX LRN (both divide alpha by size) for odd windows; even ones are refused."""
    from alexnet_deploy.export.torch_lrn import NativeLRN, swap_lrn

    lrn = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), lrn).eval()
    x = torch.randn(2, 3, 12, 12) * 20  # large activations make the LRN term matter
    swapped, count = swap_lrn(net, "native", 18)
    assert count == 1 and isinstance(swapped[2], NativeLRN)
    with torch.no_grad():
        expected = net(x).numpy()
        assert np.array_equal(swapped(x).numpy(), expected)
    program = torch.onnx.export(swapped, (x,), None, dynamo=True, opset_version=18, input_names=["input"],
                                output_names=["logits"], verbose=False)
    assert [n.op_type for n in program.model_proto.graph.node].count("LRN") == 1
    got = ort_logits(program.model_proto, x.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ExportError, match="even window"):
        swap_lrn(torch.nn.Sequential(torch.nn.LocalResponseNorm(4)), "native", 18)


def test_parity_failure_says_by_how_much() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 5, (8, 10)).astype(np.float32)
    assert check_parity(ref, ref + 1e-6, FP32).passed
    with pytest.raises(ExportError, match=r"max abs diff 0\.5 > allowed .*x\)"):
        require_parity(ref, ref + 0.5, FP32, "fp32 ONNX vs PyTorch")
    nan = ref.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ExportError, match="NaN or Inf"):
        require_parity(ref, nan, FP32, "fp16")
    tied = np.zeros((4, 3), np.float32)  # all logits tied: a flipped argmax is not a decisive disagreement
    flipped = tied.copy()
    flipped[:, 2] = 1e-6
    result = check_parity(tied, flipped, FP32)
    assert result.top1_agreement == 0.0 and result.decisive_top1_agreement == 1.0 and result.passed


@pytest.mark.slow
@pytest.mark.cifar
def test_parity_on_real_cifar_images(trained: dict, cifar_dir: Path, tmp_path: Path) -> None:
    """Real CIFAR-10 JPEGs as --verify-data (their classes are not the model's: parity without labels)."""
    manifest = export_bundle(trained["ckpt"], tmp_path / "bc", fp16=True, verify_data=cifar_dir, verify_count=20,
                             simplify=False, engines=False)
    assert manifest.parity["source"] == "verify-data" and manifest.parity["n"] == 20
    assert manifest.parity["fp32"]["onnx_vs_torch"]["passed"] and manifest.parity["fp16_vs_fp32"]["passed"]
    with np.load(tmp_path / "bc" / "reference.npz", allow_pickle=False) as ref:
        assert "labels" not in ref.files and len({f.split("/")[0] for f in ref["files"]}) == 10


def test_reexport_starts_from_the_old_bundles_unlisted_files_only(tmp_path: Path) -> None:
    from alexnet_deploy.deploy.bundle import Manifest, TensorSpec, make_artifact, transaction, write_manifest

    out = tmp_path / "bundle"
    (out / "engines").mkdir(parents=True)
    (out / "model.int8.onnx").write_bytes(b"old int8")
    (out / "engines" / "int8-sm87-trt10.3.0.plan").write_bytes(b"old plan")
    (out / "engines" / "int8-sm87-trt10.3.0.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    write_manifest(out, Manifest(classes=("a",), input=TensorSpec("input", (-1, 3, 8, 8)),
                                 output=TensorSpec("logits", (-1, 1)), preprocess=PreprocessSpec(10, 8),
                                 artifacts=(make_artifact(out, "model.int8.onnx", "onnx", "int8"),
                                            make_artifact(out, "engines/int8-sm87-trt10.3.0.plan", "trt-plan",
                                                          "int8"))))
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(RuntimeError, match="killed"):
        with transaction(out, "--out", keep="unlisted", create=True) as staging:
            # What a re-export starts from: the user's files, none of the old model's artifacts.
            assert sorted(p.name for p in staging.path.rglob("*")) == ["engines", "notes.txt"]
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.rglob("*")) == before, "an aborted re-export leaves the old bundle whole"
