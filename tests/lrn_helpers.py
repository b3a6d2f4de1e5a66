"""A small real LRN network for the LRN-rewrite and OpenVINO tests.

``LrnNet`` has AlexNet-2012's pattern (conv -> relu -> LRN -> maxpool, twice) at toy size. Conv1's
weights are scaled up so its activations reach the hundreds on real images: then the LRN
denominator is far from its bias and a wrong window or exponent shows in the logits. It is exported
with the project's native-LRN module swap (export/torch_lrn.py) and the dynamo exporter, as the
real exporter does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alexnet_deploy.deploy.bundle import Manifest, TensorSpec, make_artifact, write_manifest
from alexnet_deploy.deploy.preprocess import PreprocessSpec, list_class_folder, preprocess

SIZE = 64
CLASSES = 3


def lrn_net(seed: int = 0, conv1_gain: float = 12.0):
    """The toy AlexNet-like model (eval mode, fixed seed)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 24, 5, stride=2, padding=2), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0),
        nn.MaxPool2d(3, 2), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 64), nn.ReLU(),
        nn.Linear(64, CLASSES),
    )
    with torch.no_grad():
        model[0].weight.mul_(conv1_gain)
        model[4].weight.mul_(0.05)  # keep the logits O(1) after the large conv1 activations
    return model.eval()


def export_native(model, path: Path, size: int = SIZE) -> Path:
    """fp32 ONNX with native LRN nodes and a dynamic batch axis (input ``input``, output ``logits``)."""
    import torch

    from alexnet_deploy.export.torch_lrn import swap_lrn

    swapped, _ = swap_lrn(model, "native", 18)
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(swapped, (torch.zeros(1, 3, size, size),), str(path), dynamo=True, opset_version=18,
                      input_names=["input"], output_names=["logits"], dynamic_shapes=({0: batch},),
                      external_data=False, verbose=False)
    return path


def torch_logits(model, inputs: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(inputs)).numpy()


def images(folder: Path, count: int, size: int = SIZE) -> np.ndarray:
    """The first ``count`` images of each class of ``folder``, preprocessed at ``size`` px."""
    _, samples = list_class_folder(folder)
    by_class: dict[int, list[Path]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    chosen = [p for paths in by_class.values() for p in paths[:count]]
    return preprocess(chosen, PreprocessSpec.for_image_size(size))


def to_fp16(fp32_path: Path, out: Path, **kwargs) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True, **kwargs), str(out))
    return out


def quantize_int8(fp32_path: Path, out: Path, calib: np.ndarray, exclude: list[str]) -> Path:
    """Symmetric per-channel Q/DQ int8 (the project's TensorRT-compatible settings, 7-bit weights so
    every CPU's int8 kernels compute it exactly)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    class Reader:
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i:i + 4]} for i in range(0, len(calib), 4)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=exclude, reduce_range=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    return out


def write_bundle(folder: Path, files: dict[str, str], size: int = SIZE, max_batch: int = 8) -> Path:
    """manifest.json for ONNX files already in ``folder`` (``files``: precision -> file name)."""
    manifest = Manifest(classes=tuple(f"class_{i}" for i in range(CLASSES)),
                        input=TensorSpec("input", (-1, 3, size, size)), output=TensorSpec("logits", (-1, CLASSES)),
                        preprocess=PreprocessSpec.for_image_size(size), max_batch=max_batch)
    for precision, name in files.items():
        built_with = {"weight_bits": 7} if precision == "int8" else {}
        manifest = manifest.with_artifact(make_artifact(folder, name, "onnx", precision, built_with))
    write_manifest(folder, manifest)
    return folder
