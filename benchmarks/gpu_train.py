"""Training images/s on the training device, by where the batches come from, in one process.

Every path runs the library's own training step (``alexnet.train.train_one_epoch``: forward,
backward, clipping, optimizer and scheduler step; on CUDA channels_last, AMP and the sync-free
statistics) on the same model, batch size, precision and crop size:

* (a) limit: ready float32 batches already on the device (no data pipeline at all);
* (b) GPU-resident: ``BatchStream`` over the decoded uint8 set kept on the GPU (``--cache gpu``);
  crop, flip and normalize run there (CUDA only);
* (c) pinned RAM: the decoded uint8 set in RAM, each batch copied from pinned memory
  (``--cache ram``), transformed on the device;
* (d) streamed: JPEGs decoded per batch by threads (``--cache stream``);
* (e) with ``--compile``: (a) with the model under torch.compile (``train --compile``), to show
  whether compiling pays on this device (compilation itself is left out of the timing).

The reference CIFAR-10 recipe (13 epochs of 45,000 training images) is projected from the fastest
data path's rate: the time its training steps would take (decoding and validation not included).

Each is reported as images/s and as a ratio to (a); rounds alternate so that other load hits all
alike, and the median of each is kept. On a machine without a GPU it runs on the CPU ((b) is then
skipped), which gives the CPU's before/after of the same paths.

    python benchmarks/gpu_train.py --data examples/data/cifar10-sample/train --image-size 227 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from alexnet_deploy.alexnet.data import BatchStream, StreamedSet, decode_eval, resolve_splits, train_spec
from alexnet_deploy.alexnet.distributed import DistContext
from alexnet_deploy.alexnet.model import build_model
from alexnet_deploy.alexnet.train import (TrainConfig, amp_dtype, compiled, make_optimizer, make_scheduler,
                                          on_device, train_one_epoch)
from alexnet_deploy.deploy.preprocess import PreprocessSpec


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="examples/data/cifar10-sample/train", help="image folder of class sub-folders")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--images-per-class", type=int, default=300, help="images decoded per class")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each path")
    parser.add_argument("--compile", action="store_true", help="also time (a) under torch.compile, as (e)")
    parser.add_argument("--json", help="also write the figures here")
    return parser.parse_args()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(config, dist, model, optimizer, scheduler, scaler, batches) -> float:
    """Images per second of one train_one_epoch pass over ``batches`` (waiting for the device)."""
    _sync(dist.device)
    start = time.perf_counter()
    sums = train_one_epoch(config, dist, model, optimizer, scheduler, scaler, batches)
    _sync(dist.device)
    return sums[2] / (time.perf_counter() - start)


def _sources(args, config, splits, dist: DistContext) -> dict[str, object]:
    spec = PreprocessSpec(resize=config.resize, crop=config.image_size)
    cache = decode_eval(splits.train, train_spec(config.resize), workers=4)
    common = dict(augment="crop-flip", shuffle=True, device=dist.device)
    sources = {}
    if dist.device.startswith("cuda"):
        sources["(b) GPU-resident"] = BatchStream(cache.to(dist.device), args.batch_size, spec, **common)
    sources["(c) pinned RAM" if dist.device.startswith("cuda") else "(c) RAM"] = BatchStream(
        cache, args.batch_size, spec, **common)
    sources["(d) streamed"] = BatchStream(StreamedSet(splits.train, train_spec(config.resize), workers=4),
                                          args.batch_size, spec, **common)
    return sources


def compiled_or_none(config, dist, model, optimizer, scheduler, scaler, limit):
    """The model under torch.compile, compiled by two untimed steps; None (with the reason printed)
    where it cannot compile here, so the other figures are still measured."""
    try:
        fast = compiled(model, dist.device)
        timed(config, dist, fast, optimizer, scheduler, scaler, limit[:2])
    except Exception as exc:   # any compiler failure: (e) is optional, the run must go on
        print(f"  (e) limit, compiled: skipped, torch.compile failed here: {str(exc).splitlines()[0][:300]}")
        return None
    return fast


def main() -> None:
    args = parse_args()
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist = DistContext(device=device)
    torch.manual_seed(0)
    config = TrainConfig(data=args.data, val_split=0.1, image_size=args.image_size, batch_size=args.batch_size,
                         amp=device == "cuda", device=device).resolved()
    splits = resolve_splits(args.data, val_split=0.1, max_per_class=args.images_per_class)
    sources = _sources(args, config, splits, dist)
    model = on_device(build_model("alexnet2012", num_classes=len(splits.classes), width=args.width), device)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch=100_000)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and amp_dtype(device) == torch.float16)
    limit = [(torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device),
              torch.randint(0, len(splits.classes), (args.batch_size,), device=device)) for _ in range(args.steps)]
    timed(config, dist, model, optimizer, scheduler, scaler, limit[:2])   # warm-up: allocations, cuDNN autotuning
    rates: dict[str, list[float]] = {"(a) limit": [], **{name: [] for name in sources}}
    fast = compiled_or_none(config, dist, model, optimizer, scheduler, scaler, limit) if args.compile else None
    if fast is not None:
        rates["(e) limit, compiled"] = []
    for round_ in range(args.rounds):
        rates["(a) limit"].append(timed(config, dist, model, optimizer, scheduler, scaler, limit))
        if fast is not None:
            rates["(e) limit, compiled"].append(timed(config, dist, fast, optimizer, scheduler, scaler, limit))
        for name, source in sources.items():
            source.epoch = round_
            batches = (b for _, b in zip(range(args.steps), source))
            rates[name].append(timed(config, dist, model, optimizer, scheduler, scaler, batches))
    report(args, device, config, rates)


def report(args, device: str, config, rates: dict[str, list[float]]) -> None:
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    amp = f"AMP {str(amp_dtype(device)).split('.')[-1]}" if config.amp else "fp32"
    print(f"AlexNet-2012 width {args.width:g}, {args.image_size} px, batch {args.batch_size}, {amp}, on {where} "
          f"(torch {torch.__version__}); median of {args.rounds} rounds of {args.steps} steps")
    limit = statistics.median(rates["(a) limit"])
    figures = {}
    for name, values in rates.items():
        rate = statistics.median(values)
        figures[name] = {"images_per_s": round(rate, 1), "ratio_to_limit": round(rate / limit, 3)}
        print(f"  {name:20s} {rate:9.1f} img/s   {rate / limit:5.3f} of (a)")
    best = max((name for name in figures if name[1] in "bcd"), key=lambda name: figures[name]["images_per_s"])
    recipe = RECIPE_IMAGES / figures[best]["images_per_s"]
    print(f"  reference recipe (13 epochs x 45,000 images) at {args.image_size} px, batch {args.batch_size}, "
          f"on {best}: {recipe:.0f} s of training steps")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": where, "torch": torch.__version__, "image_size": args.image_size,
                       "batch_size": args.batch_size, "precision": amp, "paths": figures,
                       "recipe_projection": {"path": best, "images": RECIPE_IMAGES, "seconds": round(recipe, 1)}},
                      fh, indent=2)


RECIPE_IMAGES = 13 * 45_000   # the reference CIFAR-10 recipe: 13 epochs of a 45,000-image training split


if __name__ == "__main__":
    main()
