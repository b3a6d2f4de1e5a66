#!/usr/bin/env bash
# The whole pipeline on the bundled CIFAR-10 sample (5,000 training + 500 validation images), on the
# CPU: train -> predict -> export (fp32 + fp16 + int8 Q/DQ, verified) -> pack -> verify -> bench.
# Run by `make demo` (which puts .venv/bin first on PATH). Outputs go to $OUT (default demo-out/).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=examples/data/cifar10-sample
OUT=${OUT:-demo-out}
# AlexNet trained from scratch stays near chance for its first ~10k images; 8 passes over the 5,000
# images get it clearly past that. At half width (--width 0.5: every conv layer and the FC hidden
# size halved, 14.6 M instead of 58.3 M parameters) the layers are AlexNet-2012's and training takes
# ~3 min on 2 cores (the full-size model trains ~3.4x fewer images/s); a real run uses the full
# width and the full dataset.
EPOCHS=${EPOCHS:-8}
WIDTH=${WIDTH:-0.5}
rm -rf "$OUT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/6 train AlexNet-2012 at width $WIDTH, 64 px, on $DATA/train ($EPOCHS epochs; a real run uses the full width and dataset)"
alexnet-deploy train --data "$DATA/train" --val "$DATA/val" --out "$OUT/run" \
  --image-size 64 --resize 64 --epochs "$EPOCHS" --batch-size 32 --seed 0 --width "$WIDTH"

step "2/6 predict with the checkpoint"
alexnet-deploy predict "$OUT/run/best.pt" "$DATA/val/cat" --topk 3 | head -n 12

step "3/6 export: verified fp32 ONNX, fp16 ONNX, int8 Q/DQ calibrated on training images, measured on val"
alexnet-deploy export "$OUT/run/best.pt" --out "$OUT/bundle" --fp16 --int8 --calib "$DATA/train" \
  --verify-data "$DATA/val" --max-batch 16

step "4/6 pack the bundle and open it where the device would"
alexnet-deploy pack "$OUT/bundle" -o "$OUT/bundle.tar.gz"
alexnet-deploy unpack "$OUT/bundle.tar.gz" "$OUT/device/bundle"

step "5/6 verify on the 'device' (checksums, golden vectors, preprocessing)"
alexnet-deploy verify "$OUT/device/bundle" --backend ort

step "6/6 bench: accuracy and latency across backends and precisions"
alexnet-deploy bench "$OUT/device/bundle" --checkpoint "$OUT/run/best.pt" --data "$DATA/val" \
  --batch 1 --batch 16 --min-time-s 1 --json "$OUT/bench.json" --csv "$OUT/bench.csv" --plot "$OUT/plots"
