"""Small real bundles for the device tests (verify, pack, engines, triton, cli device).

The model is a tiny ONNX graph written with onnx.helper (Conv -> Relu -> GlobalAveragePool ->
Flatten -> Gemm), so a bundle takes milliseconds to make; the "torch" reference logits are
computed by ONNX Runtime on the fp32 model, as the exporter does with torch. The end-to-end test
in test_cli_device.py uses the real `alexnet-deploy export` instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alexnet_deploy.deploy.bundle import Manifest, TensorSpec, make_artifact, write_manifest
from alexnet_deploy.deploy.onnx.sessions import cpu_session, run_batches
from alexnet_deploy.deploy.preprocess import PreprocessSpec, list_class_folder, load_image, preprocess
from conftest import write_image_folder


def tiny_onnx(path: Path, classes: int, size: int, seed: int = 0, metadata: dict | None = None) -> Path:
    """Write a small classifier ONNX with a dynamic batch axis: input `input` -> `logits`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (8,)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (classes, 8)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"]),
        helper.make_node("Flatten", ["p1"], ["f1"], axis=1),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def tiny_bundle(root: Path, classes: int = 3, size: int = 32, fp16: bool = True, n_ref: int = 6,
                raw_images: bool = False, metadata: bool = True) -> Path:
    """A complete bundle in ``root/bundle``: model.onnx (+ fp16), reference.npz, manifest.json.
    ``raw_images`` keeps the original uint8 images in reference.npz (as ``images``);
    ``metadata`` stores classes and preprocessing in the ONNX metadata_props, as the exporter does."""
    images = write_image_folder(root / "images", classes=classes, per_class=2, size=40)
    names, samples = list_class_folder(images)
    spec = PreprocessSpec(resize=size + 4, crop=size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    bundle = root / "bundle"
    bundle.mkdir(parents=True)
    metadata = {"classes": json.dumps(names), "preprocess": json.dumps(spec.to_dict())}
    tiny_onnx(bundle / "model.onnx", classes, size, metadata=metadata if metadata else None)
    files = [("model.onnx", "onnx", "fp32")]
    if fp16:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = convert_float_to_float16(onnx.load(str(bundle / "model.onnx")), keep_io_types=True)
        onnx.save(half, str(bundle / "model.fp16.onnx"))
        files.append(("model.fp16.onnx", "onnx", "fp16"))
    paths = [p for p, _ in samples][:n_ref]
    inputs = preprocess(paths, spec)
    logits = run_batches(cpu_session(bundle / "model.onnx"), inputs)
    extra = {"images": np.stack([np.asarray(load_image(p)) for p in paths])} if raw_images else {}
    np.savez(bundle / "reference.npz", inputs=inputs, logits=logits,
             labels=np.asarray([label for _, label in samples][:n_ref], np.int64),
             files=np.asarray([p.name for p in paths]), **extra)
    files.append(("reference.npz", "npz", "fp32"))
    manifest = Manifest(classes=tuple(names), input=TensorSpec("input", (-1, 3, size, size)),
                        output=TensorSpec("logits", (-1, classes)), preprocess=spec, max_batch=8)
    for rel, kind, precision in files:
        manifest = manifest.with_artifact(make_artifact(bundle, rel, kind, precision))
    write_manifest(bundle, manifest)
    return bundle


def edit_manifest(bundle: Path, edit) -> None:
    """Apply ``edit(dict)`` to manifest.json in place (what a careless or hostile hand would do)."""
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def replace_artifact(bundle: Path, rel: str, source: Path, kind: str = "onnx", precision: str = "fp16") -> None:
    """Swap an artifact for another file and record its new sha256 (a consistent but wrong bundle)."""
    from alexnet_deploy.deploy.bundle import read_manifest

    (bundle / rel).write_bytes(source.read_bytes())
    write_manifest(bundle, read_manifest(bundle).with_artifact(make_artifact(bundle, rel, kind, precision)))
