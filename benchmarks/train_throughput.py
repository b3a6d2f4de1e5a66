"""Training images/s through the real data pipeline vs. on in-memory tensors, in one run.

Both sides run the library's own training step (``alexnet.train.train_one_epoch``: forward,
backward, clipping, optimizer and scheduler step) on the same model, batch size and crop size. The
only difference is where the batches come from:

* RAM cache: ``BatchStream`` over the decoded uint8 cache (random crop + flip + normalize per batch),
  the path ``alexnet-deploy train`` uses when the decoded images fit in RAM;
* streamed: ``BatchStream`` over a ``StreamedSet`` (``--cache stream``, what folders over the RAM
  budget use): every batch's JPEGs decoded by threads while the model trains on the previous batch;
* in-memory: the same number of ready float32 tensors made before timing.

Rounds alternate between the three so that other load on a shared machine hits all alike; the
median rate of each is reported with its ratio to in-memory (target >= 0.9 for the RAM cache).

    python benchmarks/train_throughput.py --data ../shared/data/cifar10-train --image-size 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from alexnet_deploy.alexnet.data import BatchStream, StreamedSet, decode_eval, resolve_splits, train_spec
from alexnet_deploy.alexnet.model import build_model
from alexnet_deploy.alexnet.distributed import DistContext
from alexnet_deploy.alexnet.train import TrainConfig, make_optimizer, make_scheduler, train_one_epoch
from alexnet_deploy.deploy.preprocess import PreprocessSpec


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10-train", help="image folder of class sub-folders")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--arch", default="alexnet2012")
    parser.add_argument("--images-per-class", type=int, default=200, help="images decoded per class")
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each kind")
    return parser.parse_args()


def timed(config, model, optimizer, scheduler, scaler, batches) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) of one train_one_epoch pass.

    The CPU-time rate is what to trust on a shared machine: other processes slow the wall clock of
    both sides, but the data pipeline's extra work shows up as extra CPU time of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    sums = train_one_epoch(config, DistContext(), model, optimizer, scheduler, scaler, batches)
    return sums[2] / (time.perf_counter() - wall), sums[2] / (time.process_time() - cpu)


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    config = TrainConfig(data=args.data, val_split=0.1, image_size=args.image_size, batch_size=args.batch_size,
                         arch=args.arch).resolved()
    splits = resolve_splits(args.data, val_split=0.1, max_per_class=args.images_per_class)
    t0 = time.perf_counter()
    cache = decode_eval(splits.train, train_spec(config.resize), workers=2)   # as train.py decodes it
    decode_s = time.perf_counter() - t0
    spec = PreprocessSpec(resize=config.resize, crop=config.image_size)
    stream = BatchStream(cache, args.batch_size, spec, augment="crop-flip", shuffle=True)
    streamed = BatchStream(StreamedSet(splits.train, train_spec(config.resize), workers=2), args.batch_size, spec,
                           augment="crop-flip", shuffle=True)
    if len(stream) < args.steps:
        raise SystemExit(f"only {len(stream)} batches decoded; raise --images-per-class")
    model = build_model(args.arch, num_classes=len(splits.classes))
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch=10_000)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    memory = [(torch.randn(args.batch_size, 3, args.image_size, args.image_size),
               torch.randint(0, len(splits.classes), (args.batch_size,))) for _ in range(args.steps)]
    timed(config, model, optimizer, scheduler, scaler, memory[:1])  # warm-up (allocations, oneDNN kernels)
    rates: dict[str, list[tuple[float, float]]] = {"RAM cache": [], "streamed": [], "in-memory": []}
    for round_ in range(args.rounds):
        for name, source in (("RAM cache", stream), ("streamed", streamed)):
            source.epoch = round_
            batches = (b for _, b in zip(range(args.steps), source))
            rates[name].append(timed(config, model, optimizer, scheduler, scaler, batches))
        rates["in-memory"].append(timed(config, model, optimizer, scheduler, scaler, memory))
    print(f"{args.arch} {args.image_size} px, batch {args.batch_size}, {torch.get_num_threads()} threads; "
          f"decoded {len(cache)} images in {decode_s:.1f} s ({len(cache) / decode_s:.0f} img/s, once per run)")
    for index, unit in ((0, "img/s (wall)"), (1, "img per CPU-second")):
        mem = statistics.median(r[index] for r in rates["in-memory"])
        ram = statistics.median(r[index] for r in rates["RAM cache"])
        streamed_rate = statistics.median(r[index] for r in rates["streamed"])
        print(f"{unit:>18}: in-memory tensors {mem:7.1f} | RAM cache {ram:7.1f}, ratio {ram / mem:.3f} "
              f"(target >= 0.9) | streamed {streamed_rate:7.1f}, ratio {streamed_rate / mem:.3f}")


if __name__ == "__main__":
    main()
