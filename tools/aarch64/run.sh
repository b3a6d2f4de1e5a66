#!/usr/bin/env bash
# The torch-free runtime on aarch64 (a Jetson's CPU architecture) under QEMU user-mode emulation:
# export a small bundle on this host, install the project from the working tree into the arm64
# root filesystem that prepare.sh made (without torch), and run there what a Jetson user runs:
# verify (checksums + golden vectors fp32/fp16/int8 on ONNX Runtime), predict, bench and the
# Python API. Prints the CLI's own output; exit 1 when any step fails.
#
#   tools/aarch64/run.sh            # full run (prepares first when needed)
#   tools/aarch64/run.sh --smoke    # fp32-only bundle, verify + Python API: the cheap check
#
# Timings measured here are EMULATED: QEMU translates every arm64 instruction, so they say nothing
# about a real Jetson's speed. Outputs (log, bench JSON) go to $AARCH64_CACHE/last-run/.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
source tools/aarch64/common.sh

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
HOST_BIN=${HOST_VENV:-$REPO/.venv}/bin
DATA=$REPO/examples/data/cifar10-sample
WORK=$ROOTFS/work           # seen as /work inside the root filesystem
OUT=$CACHE/last-run

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# A command in the arm64 userland, echoed first, timed (wall seconds under emulation). ONNX Runtime's
# cpuinfo warnings (it finds no /sys and an x86 /proc/cpuinfo under QEMU) are dropped.
arm() {
    printf '$ %s\n' "$*"
    local t0=$SECONDS
    local status=0
    in_rootfs "$@" 2>&1 | { grep -v -E '^(Error in cpuinfo|onnxruntime (cpuid_info )?warning)' || true; } || status=$?
    printf '(%d s, emulated)\n' "$((SECONDS - t0))"
    return "$status"
}

# One epoch on the bundled sample: a real checkpoint (labels, preprocessing, trained weights) in
# seconds; its accuracy is near chance and is not what this checks.
export_bundle() {
    rm -rf "$WORK" && mkdir -p "$WORK/data"
    cp -r "$DATA/val" "$WORK/data/val"
    step "host: train 1 epoch at 64 px and export (x86_64, torch)"
    rm -rf "$OUT/run"
    "$HOST_BIN/alexnet-deploy" train --data "$DATA/train" --val "$DATA/val" --out "$OUT/run" \
        --image-size 64 --resize 64 --epochs 1 --batch-size 32 --seed 0 2>&1 | tail -n 4
    if [ "$SMOKE" = 1 ]; then
        "$HOST_BIN/alexnet-deploy" export "$OUT/run/best.pt" --out "$WORK/bundle" --max-batch 8 2>&1 | tail -n 3
    else
        "$HOST_BIN/alexnet-deploy" export "$OUT/run/best.pt" --out "$WORK/bundle" --fp16 --int8 \
            --calib "$DATA/train" --verify-data "$DATA/val" --max-batch 8 2>&1 | tail -n 12
    fi
}

# The project as PyPI would ship it: a wheel built from the working tree, installed with the `ort`
# extra (onnxruntime on aarch64). torch must not come along.
install_project() {
    step "host: build the wheel from the working tree; arm64: pip install 'alexnet_deploy-*.whl[ort]'"
    rm -rf "$WORK/wheel"
    "$HOST_BIN/python" -m pip wheel -q --no-deps -w "$WORK/wheel" "$REPO" >/dev/null
    local wheel
    wheel=$(cd "$WORK/wheel" && ls alexnet_deploy-*.whl)
    in_rootfs pip uninstall -q -y alexnet-deploy >/dev/null 2>&1 || true
    arm pip install -q "/work/wheel/$wheel[ort]"
    in_rootfs python -c 'import importlib.util, sys
torch = importlib.util.find_spec("torch")
print("torch importable:", torch is not None)
sys.exit(torch is not None)'
}

api_check() {
    cat >"$WORK/api_check.py" <<'EOF'
"""The Python API on arm64: load each precision, classify the validation cats, time one batch."""
import platform, sys, time
from pathlib import Path
import onnxruntime
from alexnet_deploy.deploy import load

bundle = Path("/work/bundle")
print(f"machine {platform.machine()}, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
      f"torch imported: {'torch' in sys.modules}")
cats = sorted(Path("/work/data/val/cat").iterdir())
for precision, file in (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")):
    if not (bundle / file).exists():  # the smoke bundle is fp32 only
        continue
    with load(bundle, backend="ort", precision=precision) as model:
        t0 = time.perf_counter()
        predictions = model.classify(cats, topk=3)
        seconds = time.perf_counter() - t0
        right = sum(p.label == "cat" for p in predictions)
        print(f"{precision}: {len(predictions)} cat images, {right} labelled cat, first: {predictions[0].label} "
              f"p={predictions[0].probability:.3f}; {seconds:.1f} s (emulated)")
assert "torch" not in sys.modules
EOF
    arm python /work/api_check.py
}

main() {
    local t_start=$SECONDS
    mkdir -p "$OUT"
    bash tools/aarch64/prepare.sh
    enable_binfmt
    mount_rootfs
    trap umount_rootfs EXIT
    export_bundle
    install_project
    step "arm64: what runs here"
    arm sh -c 'uname -m; python -V; pip list 2>/dev/null | grep -i -E "^(alexnet-deploy|onnxruntime|onnx|numpy|pillow) "'
    step "arm64: alexnet-deploy verify (checksums, golden vectors on ONNX Runtime)"
    arm alexnet-deploy verify /work/bundle --backend ort
    step "arm64: Python API (alexnet_deploy.deploy.load)"
    api_check
    if [ "$SMOKE" = 0 ]; then
        step "arm64: alexnet-deploy predict"
        arm alexnet-deploy predict /work/bundle /work/data/val/cat --backend ort --topk 3
        # 20 images: emulated fp16 runs ~4 s per image (ORT casts every layer), so accuracy over the
        # whole sample would take most of the run.
        step "arm64: alexnet-deploy bench --batch 1 --batch 8  (ALL TIMINGS EMULATED under QEMU: not a Jetson's speed)"
        arm alexnet-deploy bench /work/bundle --backend ort --data /work/data/val --batch 1 --batch 8 \
            --max-images 20 --warmup-s 0.5 --min-iters 5 --min-time-s 2 --threads 2 --json /work/bench.json
        cp "$WORK/bench.json" "$OUT/bench-emulated.json"
    fi
    say "done in $((SECONDS - t_start)) s (host export + emulated arm64 run)"
}

main 2>&1 | tee "$CACHE/last-run.log"
exit "${PIPESTATUS[0]}"
