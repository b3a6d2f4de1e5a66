"""What one `export --fp16 --int8` costs in file I/O: manifest reads and writes, sha256
computations and other reads of model.onnx, image decodes and content hashes, lock files.

Counts come from a Python audit hook on ``open`` (every file Python opens, whoever calls it; ONNX
Runtime's own C++ reads are not seen), around one real export of a small width-reduced AlexNet-2012
checkpoint on generated images. Run it on two checkouts to compare them:

    python benchmarks/bundle_io.py                      # this checkout
    PYTHONPATH=/other/checkout/src python benchmarks/bundle_io.py
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _inputs(root: Path) -> Path:
    import torch

    from alexnet_deploy.alexnet.checkpoint import save_checkpoint
    from alexnet_deploy.alexnet.model import build_model
    from alexnet_deploy.deploy.preprocess import PreprocessSpec
    from conftest import write_image_folder

    write_image_folder(root / "calib", classes=3, per_class=24, size=80)
    write_image_folder(root / "val", classes=3, per_class=8, size=80, seed=1)
    torch.manual_seed(0)
    model = build_model("alexnet2012", num_classes=3, width=0.125)
    return save_checkpoint(root / "c.pt", model=model, arch="alexnet2012", classes=("class_0", "class_1", "class_2"),
                           preprocess=PreprocessSpec(resize=72, crop=64), config={}, epoch=0, metrics={})


def _kind(path: str, mode: str, root: Path) -> str | None:
    name = Path(path).name
    writing = any(c in mode for c in "wax+")
    if name == "manifest.json" and not writing:
        return "manifest.json reads"
    if name.startswith(".manifest.json.") or (name == "manifest.json" and writing):
        return "manifest.json writes"
    if name == "model.onnx" and not writing:
        return "model.onnx sha256 computations" if _caller_is("sha256_file") else "model.onnx other reads (onnx.load)"
    if name.endswith(".lock") and path.startswith(str(root)):
        return "lock files opened"
    if name.endswith((".jpg", ".png")) and path.startswith(str(root)):
        return "image decodes" if _called_from_pillow() else "image files read (content hashes)"
    return None


def _caller_is(function: str) -> bool:
    frame = sys._getframe(3)   # _caller_is <- _kind <- the audit hook <- the function that opened the file
    return frame is not None and frame.f_code.co_name == function


def _called_from_pillow() -> bool:
    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            return False
        if frame.f_globals.get("__name__", "").startswith("PIL"):
            return True
        frame = frame.f_back
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bundle-io."))
    checkpoint = _inputs(root)
    os.environ["ALEXNET_DEPLOY_CACHE"] = str(root / "cache")   # a cold calibration cache, as on a first run
    counts: collections.Counter[str] = collections.Counter()
    written: set[str] = set()

    def hook(event: str, event_args) -> None:
        # builtins.open gives a mode string; os.open (mkstemp) gives None and flags: a new file.
        if event == "open" and isinstance(event_args[0], (str, Path)):
            path, mode = str(event_args[0]), event_args[1] if event_args[1] is not None else "w"
            kind = _kind(path, str(mode), root)
            if kind == "manifest.json writes":
                if path not in written:   # one atomic write opens its temporary file twice
                    written.add(path)
                    counts[kind] += 1
            elif kind:
                counts[kind] += 1

    from alexnet_deploy.export.pipeline import export_bundle

    sys.addaudithook(hook)
    export_bundle(checkpoint, root / "bundle", fp16=True, int8=True, calib_dir=root / "calib",
                  verify_data=root / "val", engines=False, verify_count=8)
    images = sum(1 for _ in (root / "calib").rglob("*.jpg")) + sum(1 for _ in (root / "val").rglob("*.jpg"))
    print(f"one export --fp16 --int8 ({images} images in --calib and --verify-data):")
    for kind in ("manifest.json reads", "manifest.json writes", "model.onnx sha256 computations",
                 "model.onnx other reads (onnx.load)",
                 "image decodes", "image files read (content hashes)", "lock files opened"):
        print(f"  {kind:32s} {counts[kind]}")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
