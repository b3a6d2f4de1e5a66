"""Make examples/data/cifar10-sample: a small, seeded, credited subset of CIFAR-10 for the demo.

Copies (byte for byte, no re-encoding) a seeded random choice of JPEGs per class from a CIFAR-10
image folder into ``train/<class>/`` and ``val/<class>/`` (disjoint), and writes README.md.

    python examples/make_sample_dataset.py --src ../shared/data/cifar10-train --out examples/data/cifar10-sample
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

README = """# CIFAR-10 sample (demo data)

{train} training and {val} validation images per class, 10 classes, 32x32 JPEG, {total} images in all,
chosen at random (seed {seed}) from the CIFAR-10 training set and copied unchanged by
`examples/make_sample_dataset.py`. Layout: `train/<class>/*.jpg`, `val/<class>/*.jpg`.

Enough for `make demo` to train a model clearly better than chance in a few minutes on 2 CPU
cores and to calibrate and measure INT8 on images it never trained on; for real numbers train on
the full CIFAR-10.

CIFAR-10 was collected by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton:
Alex Krizhevsky, *Learning Multiple Layers of Features from Tiny Images*, technical report,
University of Toronto, 2009. https://www.cs.toronto.edu/~kriz/cifar.html
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("../shared/data/cifar10-train"))
    parser.add_argument("--out", type=Path, default=Path("examples/data/cifar10-sample"))
    parser.add_argument("--train", type=int, default=500, help="training images per class")
    parser.add_argument("--val", type=int, default=50, help="validation images per class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classes = sorted(p.name for p in args.src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SystemExit(f"{args.src}: no class folders")
    if args.out.exists():
        shutil.rmtree(args.out)
    for name in classes:
        files = sorted((args.src / name).glob("*.jpg"))
        chosen = random.Random(f"{args.seed}-{name}").sample(files, args.train + args.val)
        for split, part in (("train", chosen[:args.train]), ("val", chosen[args.train:])):
            folder = args.out / split / name
            folder.mkdir(parents=True)
            for path in sorted(part):
                shutil.copyfile(path, folder / path.name)
    total = len(classes) * (args.train + args.val)
    (args.out / "README.md").write_text(README.format(train=args.train, val=args.val, total=total, seed=args.seed))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {total} images of {len(classes)} classes to {args.out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
