"""Classify every image in a folder with a bundle, on the torch-free runtime.

    python examples/classify_folder.py BUNDLE_OR_ARCHIVE FOLDER [--backend auto] [--precision fp16] [--topk 3]

BUNDLE_OR_ARCHIVE is a bundle directory or a packed ``.tar.gz`` (``alexnet-deploy pack``); an
archive is extracted safely, once, into the cache. ``--backend auto`` picks TensorRT when an engine
for this GPU exists (``alexnet-deploy build-engine``), else ONNX Runtime on CUDA, else on the CPU.
Needs only numpy, Pillow and a backend (onnxruntime, or TensorRT + cuda-python): no torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from alexnet_deploy.deploy import load
from alexnet_deploy.deploy.bundle.archive import open_bundle
from alexnet_deploy.deploy.preprocess import image_files
from alexnet_deploy.errors import AlexNetDeployError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--backend", default="auto", help="auto, trt, ort, ort-cuda, ...")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--topk", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="images decoded and classified per step")
    args = parser.parse_args(argv)

    try:
        files = image_files([args.folder])   # recursive, sorted, hidden skipped; an error when there are none
        bundle = open_bundle(args.bundle)   # checks every artifact's sha256 (and extracts an archive)
        with load(bundle, backend=args.backend, precision=args.precision) as model:
            print(f"# {model.describe()} on {len(files)} images")
            start = time.perf_counter()
            for i in range(0, len(files), args.batch):
                chunk = files[i:i + args.batch]
                for path, pred in zip(chunk, model.classify(chunk, topk=args.topk)):
                    others = ", ".join(f"{label} {p:.1%}" for label, p in pred.topk[1:])
                    print(f"{path}\t{pred.label}\t{pred.probability:.1%}\t{others}")
            seconds = time.perf_counter() - start
            print(f"# {len(files) / seconds:.1f} images/s end to end (decode + preprocess + inference)")
    except AlexNetDeployError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
