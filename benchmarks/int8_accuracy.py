"""INT8 / FP16 accuracy of a trained AlexNet against fp32, on held-out images, for each calibration method.

    .venv/bin/python benchmarks/int8_accuracy.py [--checkpoint runs/cifar64-default/best.pt] [--out DIR]

1. Rebuilds the training run's held-out split from the checkpoint's own config (data, val_split,
   seed, max_per_class), so the images were never seen in training; the calibration pool is drawn
   from the training part only, so calibration and evaluation images are disjoint as well.
2. Exports the bundle with the project's library (`export_bundle`, fp32 + fp16; no engines).
3. Measures fp32 and fp16 on ORT CPU, then for each method runs `calibrate_bundle` (cold cache,
   timed) and reads top-1, agreement with fp32 and flips from its report (measured on the Q/DQ
   model's own semantics); then `auto` with the accuracy budget for each --weight-bits (the
   default, 7, last: it is the bundle left on disk).
4. Runs that bundle's int8 model through the runtime backends (ORT and OpenVINO, their real int8
   kernels on this CPU) over the same held-out images: top-1, agreement with fp32, and agreement
   with the model's own semantics. With --emulate-avx2 N (needs qemu-x86_64-static) it also runs
   them on an emulated AVX2-only CPU (Haswell: no AVX-512, no VNNI) over the first N images, the
   code path of most rented servers.
Prints the CPU's ISA flags and a table, writes `int8_accuracy.json` and `int8_accuracy.md` in --out.
Targets: int8 within 0.3 top-1 points of fp32 with >= 99 % agreement, for ORT and OpenVINO, on any
CPU; fp16 within 0.1 points with >= 99.9 % agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = ROOT / "runs" / "cifar64-default" / "best.pt"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-train"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--data", type=Path, default=None, help="image folder the run trained on (default: from "
                                                                "the checkpoint config, else ../shared CIFAR-10)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "int8-accuracy")
    parser.add_argument("--num-images", type=int, default=512, help="calibration images")
    parser.add_argument("--pool-per-class", type=int, default=200, help="training images per class to sample from")
    parser.add_argument("--num-val", type=int, default=5000, help="held-out images to measure on (at most)")
    parser.add_argument("--methods", nargs="+", default=["entropy", "percentile", "minmax"])
    parser.add_argument("--max-drop", type=float, default=0.3, help="top-1 budget for the final auto run")
    parser.add_argument("--min-agreement", type=float, default=99.0, help="agreement budget for the final auto run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weight-bits", type=int, nargs="+", default=[8, 7],
                        help="weight bits for the budgeted auto runs; the last one is kept")
    parser.add_argument("--backends", nargs="+", default=["ort", "ov"])
    parser.add_argument("--emulate-avx2", type=int, default=0, metavar="N",
                        help="also run the backends on N held-out images on an emulated AVX2-only CPU")
    return parser.parse_args(argv)


def held_out_split(ckpt_path: Path, data: Path | None):
    """(classes, train samples, held-out samples) exactly as the training run split them."""
    from alexnet_deploy.alexnet.checkpoint import load_checkpoint
    from alexnet_deploy.alexnet.data import resolve_splits

    ckpt = load_checkpoint(ckpt_path)
    # The run's resolved config; keys are the CLI flag names (hyphens or underscores).
    config = {str(k).replace("-", "_"): v for k, v in dict(ckpt.config).items()}
    config = {**config, **{k.replace("-", "_"): v for k, v in dict(config.get("train") or {}).items()}}
    data = data or Path(config.get("data") or DEFAULT_DATA)
    val_split = config.get("val_split") or 0.1
    splits = resolve_splits(data, val=config.get("val"), val_split=None if config.get("val") else val_split,
                            seed=int(config.get("seed", 0)), max_per_class=config.get("max_per_class"))
    return ckpt, splits


def link_folder(root: Path, classes, samples) -> Path:
    """A class folder of symlinks to ``samples`` (so the project's folder-based APIs see exactly them)."""
    if root.exists():
        shutil.rmtree(root)
    for path, label in samples:
        target = root / classes[label] / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(Path(path).resolve(), target)
    return root


def pool(samples, per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    by_class: dict[int, list] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    return [s for items in by_class.values() for s in (items[i] for i in rng.permutation(len(items))[:per_class])]


def float_rows(bundle: Path, val_dir: Path, num_val: int, batch: int):
    """fp32 and fp16 rows, plus (fp32 logits, labels, images) of the held-out set."""
    from alexnet_deploy.calibration.budget import accuracy, logits
    from alexnet_deploy.calibration.dataset import load_set
    from alexnet_deploy.deploy.bundle import read_manifest

    manifest = read_manifest(bundle)
    val = load_set(val_dir, manifest.preprocess, count=num_val, seed=1, role="val")
    index = np.asarray([manifest.classes.index(c) for c in val.classes])[val.labels]
    ref = logits(bundle / "model.onnx", val.images, batch)
    rows = []
    for precision in ("fp32", "fp16"):
        artifact = manifest.artifact(precision)
        if artifact is None:
            continue
        out = ref if precision == "fp32" else logits(bundle / artifact.file, val.images, batch)
        acc = accuracy(out, ref, index)
        rows.append({"precision": precision, "method": "-", "top1": acc.top1, "agreement": acc.agreement,
                     "flips": acc.flips, "n_images": acc.n_images, "calib_s": None,
                     "max_abs_diff": float(np.max(np.abs(out - ref)))})
    return rows, ref, index, val.images


# Run on the emulated CPU: the bundle's int8 model through each backend; logits saved to an npz.
_EMULATED = """
import sys, numpy as np
from alexnet_deploy.deploy import load
from alexnet_deploy.deploy.platform.cpu import detect
bundle, images_npz, out_npz, *backends = sys.argv[1:]
images = np.load(images_npz)["images"]
found = {"cpu": np.array(detect().describe())}
for name in backends:
    with load(bundle, backend=name, precision="int8") as model:
        found[name] = model.infer_all(images)
np.savez(out_npz, **found)
"""


def runtime_row(name: str, out: np.ndarray, ref: np.ndarray, oracle: np.ndarray, index: np.ndarray) -> dict:
    from alexnet_deploy.calibration.budget import accuracy

    acc = accuracy(out, ref[:len(out)], index[:len(out)])
    return {"precision": "int8", "method": name, "top1": acc.top1, "agreement": acc.agreement, "flips": acc.flips,
            "n_images": acc.n_images, "calib_s": None,
            "oracle_agreement": round(float(np.mean(out.argmax(1) == oracle[:len(out)].argmax(1)) * 100), 4),
            "oracle_max_abs_diff": float(np.max(np.abs(out - oracle[:len(out)])))}


def backend_rows(bundle: Path, images: np.ndarray, ref: np.ndarray, index: np.ndarray, args) -> list[dict]:
    """The kept int8 model on each backend's real int8 kernels, here and (optionally) emulated."""
    from alexnet_deploy.calibration.budget import logits
    from alexnet_deploy.deploy import load
    from alexnet_deploy.deploy.platform.cpu import detect

    oracle = logits(bundle / "model.int8.onnx", images, args.batch_size, semantic=True)
    rows = []
    for name in args.backends:
        with load(bundle, backend=name, precision="int8") as model:
            rows.append(runtime_row(f"{name} runtime on this CPU ({detect().describe()})", model.infer_all(images),
                                    ref, oracle, index))
        print(json.dumps(rows[-1]))
    if args.emulate_avx2:
        rows += emulated_rows(bundle, images[:args.emulate_avx2], ref, oracle, index, args)
    return rows


def emulated_rows(bundle: Path, images: np.ndarray, ref: np.ndarray, oracle: np.ndarray, index: np.ndarray,
                  args) -> list[dict]:
    import subprocess

    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None:
        print("no qemu-x86_64-static: the AVX2-only run is skipped (apt install qemu-user-static)")
        return []
    np.savez(args.out / "emulated-in.npz", images=images)
    started = time.perf_counter()
    run = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, "-c", _EMULATED, str(bundle),
                          str(args.out / "emulated-in.npz"), str(args.out / "emulated-out.npz"), *args.backends],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:   # e.g. an 8-bit-weight model, refused on that CPU: say so, keep the rest
        reason = [line for line in run.stderr.splitlines() if "Error" in line or "refus" in line][-1:]
        print(f"emulated AVX2-only run failed: {reason[0] if reason else run.stderr[-500:]}")
        return []
    rows = []
    with np.load(args.out / "emulated-out.npz") as found:
        for name in args.backends:
            rows.append(runtime_row(f"{name} runtime, EMULATED AVX2-only CPU ({found['cpu']})", found[name], ref,
                                    oracle, index))
            print(json.dumps(rows[-1]))
    print(f"emulated run: {len(images)} images in {time.perf_counter() - started:.0f} s (emulated: not a speed)")
    return rows


def int8_row(bundle: Path, pool_dir: Path, val_dir: Path, args, method: str, budget: bool = False,
             weight_bits: int = 7) -> dict:
    from alexnet_deploy.calibration import BudgetNotMet, calibrate_bundle
    from alexnet_deploy.calibration.dataset import default_cache_dir

    for cached in default_cache_dir().glob("calib-*.npz"):
        cached.unlink()   # cold calibration cache, so the time includes decoding the images
    started = time.perf_counter()
    try:
        report = calibrate_bundle(bundle, calib_dir=pool_dir, val_dir=val_dir, num_images=args.num_images,
                                  method=method, batch_size=args.batch_size, num_val=args.num_val,
                                  max_drop=args.max_drop if budget else None,
                                  min_agreement=args.min_agreement if budget else None, weight_bits=weight_bits)
    except BudgetNotMet as exc:
        report = exc.report   # the best reached is still worth a row
    wall = time.perf_counter() - started
    name = (report.method if method != "auto" else f"auto→{report.method}") + f", {weight_bits}-bit weights"
    if budget:
        name += f" (budget {'met' if report.budget_met else 'MISSED'})"
    return {"precision": "int8", "method": name,
            "top1": report.int8.top1, "agreement": report.int8.agreement, "flips": report.int8.flips,
            "n_images": report.int8.n_images, "calib_s": report.timings["calibration_seconds"],
            "wall_s": round(wall, 2), "kept_float": list(report.kept_float), "kernels": report.int8_kernels}


def markdown(rows: list[dict], fp32_top1: float) -> str:
    lines = ["| precision | method / where | images | top-1 % | Δ vs fp32 (pts) | agreement % | flips | "
             "agreement with int8 semantics % | calibration s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = r["top1"] - fp32_top1
        calib = "-" if r.get("calib_s") is None else f"{r['calib_s']:.1f}"
        kept = f" (float: {', '.join(r['kept_float'])})" if r.get("kept_float") else ""
        oracle = "-" if r.get("oracle_agreement") is None else f"{r['oracle_agreement']:.2f}"
        lines.append(f"| {r['precision']} | {r['method']}{kept} | {r['n_images']} | {r['top1']:.2f} | {delta:+.2f} | "
                     f"{r['agreement']:.2f} | {r['flips']} | {oracle} | {calib} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    from alexnet_deploy.deploy.platform.cpu import detect

    print(f"CPU: {detect().describe()} (int8 dot product: {detect().int8_dot_product})")
    if not args.checkpoint.is_file():
        print(f"checkpoint {args.checkpoint} not found; train one with `alexnet-deploy train ... --out DIR`",
              file=sys.stderr)
        return 1
    from alexnet_deploy.export.pipeline import export_bundle

    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["ALEXNET_DEPLOY_CACHE"] = str(args.out / "cache")   # our own cache, safe to clear
    ckpt, splits = held_out_split(args.checkpoint, args.data)
    classes = splits.classes
    val_dir = link_folder(args.out / "heldout", classes, splits.val)
    pool_dir = link_folder(args.out / "calib-pool", classes, pool(splits.train, args.pool_per_class))
    bundle = args.out / "bundle"
    started = time.perf_counter()
    export_bundle(args.checkpoint, bundle, fp16=True, engines=False)
    print(f"exported {bundle} in {time.perf_counter() - started:.1f} s; held-out {len(splits.val)} images "
          f"({splits.source}); calibration pool {args.pool_per_class}/class from the training part")
    rows, ref, index, images = float_rows(bundle, val_dir, args.num_val, args.batch_size)
    fp32_top1 = rows[0]["top1"]
    for method in args.methods:
        rows.append(int8_row(bundle, pool_dir, val_dir, args, method))
        print(json.dumps(rows[-1]))
    for bits in args.weight_bits:
        rows.append(int8_row(bundle, pool_dir, val_dir, args, "auto", budget=True, weight_bits=bits))
        print(json.dumps(rows[-1]))
    rows += backend_rows(bundle, images, ref, index, args)
    table = markdown(rows, fp32_top1)
    print(table)
    result = {"checkpoint": str(args.checkpoint), "epoch": ckpt.epoch, "split": splits.source,
              "cpu": detect().to_dict(),
              "num_images": args.num_images, "rows": rows}
    (args.out / "int8_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "int8_accuracy.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
