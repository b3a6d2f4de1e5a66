"""Where a training step's time goes, with torch's per-element optimizer step vs. the fused one.

One AlexNet, one batch of random images (the data pipeline is ``train_throughput.py``'s subject),
and the library's own optimizer (``alexnet.train.make_optimizer``: fused on CPU and CUDA) against
the same optimizer and parameter groups with ``fused=False, foreach=False``, torch's default on CPU.
Each step is split into forward + backward, gradient clipping and the optimizer step. Rounds
alternate between the two so that other load on a shared machine hits both alike; medians of the
rounds are printed, with the fused/default ratio of training images/s.

    python benchmarks/train_step.py --image-size 64 --batch-size 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from alexnet_deploy.alexnet.model import build_model
from alexnet_deploy.alexnet.train import TrainConfig, make_optimizer

PARTS = ("forward+backward", "clip", "optimizer")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--arch", default="alexnet2012")
    parser.add_argument("--recipe", default="default", choices=["default", "paper"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round")
    return parser.parse_args()


def unfused_copy(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer class, groups and hyperparameters, on torch's per-element CPU path."""
    groups = [{**group, "fused": False, "foreach": False} for group in optimizer.param_groups]
    return type(optimizer)(groups)


def time_steps(model: nn.Module, optimizer: torch.optim.Optimizer, images, labels, steps: int) -> dict:
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    seconds = dict.fromkeys(PARTS, 0.0)
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), labels).backward()
        backward_done = time.perf_counter()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        clipped = time.perf_counter()
        optimizer.step()
        done = time.perf_counter()
        for part, took in zip(PARTS, (backward_done - start, clipped - backward_done, done - clipped)):
            seconds[part] += took / steps
    return seconds


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    config = TrainConfig(data=".", recipe=args.recipe).resolved()
    model = build_model(args.arch, num_classes=10)
    fused = make_optimizer(config, model)
    optimizers = {"default": unfused_copy(fused), "fused": fused}
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 10, (args.batch_size,))
    for optimizer in optimizers.values():  # warm-up: allocate optimizer state, first-call costs
        time_steps(model, optimizer, images, labels, 1)
    rounds = {name: [] for name in optimizers}
    for _ in range(args.rounds):
        for name, optimizer in optimizers.items():
            rounds[name].append(time_steps(model, optimizer, images, labels, args.steps))
    print(f"{args.arch}, {args.image_size} px, batch {args.batch_size}, {config.optimizer}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds x {args.steps} steps")
    rate = {}
    for name, measured in rounds.items():
        median = {part: statistics.median(r[part] for r in measured) for part in PARTS}
        step = sum(median.values())
        rate[name] = args.batch_size / step
        parts = " | ".join(f"{part} {median[part] * 1e3:6.1f} ms" for part in PARTS)
        print(f"{name:>8} step: {parts} | step {step * 1e3:6.1f} ms, {rate[name]:6.1f} img/s")
    print(f"fused / default: {rate['fused'] / rate['default']:.2f}x training images/s")


if __name__ == "__main__":
    main()
