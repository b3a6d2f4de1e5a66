"""Folder classification throughput: decode overlapped with inference vs. one after the other.

``Backend.classify`` decodes chunk i + 1 (``deploy.preprocess.one_ahead``) while chunk i is
inferred. The baseline is the loop it replaced: decode a chunk, infer it, repeat. Both produce the
same predictions (checked); rounds alternate so background load hits both alike; medians reported.

    python benchmarks/classify_overlap.py BUNDLE IMAGE_DIR --precision int8
"""

from __future__ import annotations

import argparse
import statistics
import time

from alexnet_deploy.deploy import load
from alexnet_deploy.deploy.preprocess import image_files, preprocess_threaded, softmax


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("images", help="folder of images (searched recursively)")
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--max-images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    files = image_files([args.images])[: args.max_images]
    with load(args.bundle, backend=args.backend, precision=args.precision) as model:
        def serial():
            out = []
            for start in range(0, len(files), model.max_batch):
                chunk = files[start:start + model.max_batch]
                batch = preprocess_threaded(chunk, model.manifest.preprocess)
                out.extend(model._predictions(softmax(model.infer(batch)), chunk, 5))  # classify's own formatting
            return out

        def overlapped():
            return model.classify(files, topk=5)

        if [p.label for p in serial()] != [p.label for p in overlapped()]:
            raise SystemExit("the two paths disagree")
        times: dict[str, list[float]] = {"serial": [], "overlapped": []}
        for _ in range(args.rounds):
            for name, run in (("serial", serial), ("overlapped", overlapped)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        serial_s, overlapped_s = statistics.median(times["serial"]), statistics.median(times["overlapped"])
        print(f"{model.name} {args.precision}, chunks of {model.max_batch}, {len(files)} images: "
              f"serial {len(files) / serial_s:.0f} img/s | overlapped {len(files) / overlapped_s:.0f} img/s | "
              f"speed-up {serial_s / overlapped_s:.2f}x")


if __name__ == "__main__":
    main()
