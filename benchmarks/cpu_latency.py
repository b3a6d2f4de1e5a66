"""CPU latency of an AlexNet-2012 checkpoint (227 px by default) against the memory-bandwidth floor.

In one run: read bandwidth (numpy sums over a buffer far larger than L3) and the floor it sets,
weight bytes / bandwidth (at batch 1 the FC layers make AlexNet memory-bound); batch-1 and batch-32
latency of torch eager (the ``pt`` backend), ONNX Runtime "before" (native LRN, plain SessionOptions)
and the ``ort`` and ``ov`` backends at fp32 / fp16 / int8 on bundles exported with each LRN
formulation (deploy/onnx/lrn.py), with ratios to torch and to the floors, timed round-robin so load
from other processes hits every row alike; every row's top-1 agreement with torch (and top-1, with
--data). The models are what users ship (the project's export and calibration, 7-bit int8 weights);
the timing is deploy/evaluate/timing.py's. Extra modes: ``--ort-tuning`` measures SessionOptions, ``--profile``
prints ONNX Runtime's and OpenVINO's per-op profiles, ``--weight-bits`` times 7-bit (portable)
against 8-bit int8 weights.

    .venv/bin/python benchmarks/cpu_latency.py --checkpoint runs/cifar64-default/best.pt   # the table
    .venv/bin/python benchmarks/cpu_latency.py --checkpoint runs/c64/best.pt --ort-tuning --profile
    .venv/bin/python benchmarks/cpu_latency.py --checkpoint runs/c64/best.pt --skip-table --weight-bits
    .venv/bin/python benchmarks/cpu_latency.py --checkpoint runs/c64/best.pt --image-size 64 --iters 3 --iters32 2 --no-ov  # a quick check
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from alexnet_deploy.deploy import Backend, load
from alexnet_deploy.deploy.evaluate.bench import EvalSet, latency_input, load_eval_set, load_reference_npz
from alexnet_deploy.deploy.evaluate.timing import LatencyStats, latency_stats, measure
from alexnet_deploy.deploy.bundle import read_manifest
from alexnet_deploy.deploy.evaluate.compare import compare_logits
from alexnet_deploy.deploy.onnx.sessions import import_ort, session_options

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "runs" / "cifar64-default" / "best.pt"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-train"
PRECISIONS = ("fp32", "fp16", "int8")
MAX_BATCH = 32
# Untimed calls before each block (timing.measure warms up by time, at least one call): a block's
# first call after another row's block is the slow one. Sleep before each block: see time_round_robin.
WARMUP_S, SETTLE_S = 0.05, 0.2
# A row of the tables: (name, LRN formulation, the open backend).
Row = tuple[str, str, Backend]


def read_bandwidth(mib: int = 1024, repeats: int = 5, threads: int | None = None) -> float:
    """Best-of-``repeats`` read bandwidth in GB/s: each thread sums its slice of a ``mib`` MiB buffer.
    numpy's reductions release the GIL, so the threads really read in parallel; the buffer is far
    larger than any L3, so the number is DRAM bandwidth, what the FC weights are read at."""
    threads = threads or os.cpu_count() or 1
    buffer = np.ones(mib * (1 << 20) // 4, dtype=np.float32)
    slices = np.array_split(buffer, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, slices))
            best = min(best, time.perf_counter() - start)
    return buffer.nbytes / best / 1e9


# ---------------------------------------------------------------------------- bundles and images
def calibrate(args, bundle: Path, weight_bits: int, method: str) -> None:
    """The project's calibration; without --data on random inputs, which is enough for latency: the
    method and the images change the scales, not the graph that runs."""
    from alexnet_deploy.calibration import calibrate_bundle

    calibrate_bundle(bundle, calib_dir=args.data, allow_random=args.data is None, num_images=args.calib_images,
                     method=method, num_val=args.eval_images, batch_size=16, weight_bits=weight_bits)


def build_bundle(args, folder: Path, lrn: str) -> Path:
    """fp32 + fp16 + int8 bundle of --checkpoint at --image-size, unless ``folder`` (a --work of an
    earlier run) already holds one of the same checkpoint and size."""
    from alexnet_deploy.deploy.bundle.files import sha256_file
    from alexnet_deploy.export.pipeline import export_bundle

    old = read_manifest(folder) if (folder / "manifest.json").is_file() else None
    if old and old.input.shape[-1] == args.image_size and old.artifact("int8") \
            and old.provenance.get("checkpoint_sha256") == sha256_file(args.checkpoint):
        return folder
    print(f"exporting ({lrn} LRN) and calibrating {args.checkpoint} at {args.image_size} px into {folder}")
    export_bundle(args.checkpoint, folder, fp16=True, lrn=lrn, image_size=args.image_size, max_batch=MAX_BATCH,
                  engines=False, verify_data=args.data)
    calibrate(args, folder, 7, args.calib_method)
    return folder


def model_path(bundle: Path, precision: str) -> Path:
    return bundle / read_manifest(bundle).artifact(precision).file


def eval_images(args, bundle: Path) -> EvalSet:
    """--eval-images labelled images of --data, picked as `alexnet-deploy bench --data` picks them, else
    the export's verification inputs (unlabelled)."""
    manifest = read_manifest(bundle)
    if args.data is None:
        return load_reference_npz(bundle, manifest)
    return load_eval_set(args.data, manifest, args.eval_images, workers=args.threads)


# ---------------------------------------------------------------------------- timing
class SessionBackend(Backend):
    """The bundle's model on ONNX Runtime's CPU provider with other SessionOptions than the ort
    backend's (the "before" rows, --ort-tuning); a Backend, so it runs and is timed like the others."""

    name = "ort"

    def __init__(self, bundle: Path, precision: str, options, label: str) -> None:
        super().__init__(bundle, precision)
        self.session = import_ort().InferenceSession(str(model_path(bundle, precision)), options,
                                                     providers=["CPUExecutionProvider"])
        self.provider = label

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.manifest.input.name: batch})[0]


def time_round_robin(models: list[Backend], batch: np.ndarray, iters: int, rounds: int = 3) -> list[LatencyStats]:
    """timing.measure on every model, ``iters`` timed calls each, in ``rounds`` blocks per model in
    turn. Alternating blocks lets background load on a shared machine hit every row alike; blocks (not
    single calls) keep one runtime's idle spinning threads (ORT, OpenVINO, torch's OpenMP) from slowing
    the next one's timed calls, and SETTLE_S of sleep before each block lets them go idle."""
    times, walls = [[] for _ in models], [0.0] * len(models)
    for _ in range(rounds):
        for i, model in enumerate(models):
            time.sleep(SETTLE_S)
            block, wall = measure(lambda model=model: model.infer(batch), model.synchronize, warmup_s=WARMUP_S,
                                  min_iters=max(1, -(-iters // rounds)), min_time_s=0.0)
            times[i] += block
            walls[i] += wall
    return [latency_stats(t, len(batch), wall) for t, wall in zip(times, walls)]


def timed_rows(args, rows: list[Row], images: EvalSet | None = None, iters32: int | None = None) -> list[dict]:
    """Batch-1 and batch-32 latency of every row, round-robin, on ``images`` tiled to the batch (as
    `alexnet-deploy bench` times) or seeded noise: one dict per row and batch."""
    out = []
    for batch, iters in ((1, args.iters), (MAX_BATCH, iters32 or args.iters32)):
        x = latency_input(batch, images, rows[0][2].input_shape, 0)
        stats = time_round_robin([model for _, _, model in rows], x, iters)
        out += [{"row": name, "precision": model.precision, "lrn": lrn, "batch": batch, **dataclasses.asdict(s),
                 "note": model.provider} for (name, lrn, model), s in zip(rows, stats)]
    return out


def print_rows(prefix: str, rows: list[dict]) -> None:
    for r in rows:
        print(f"{prefix}  {r['precision']}  batch {r['batch']:2d}  {r['row']:22s} p50 {r['p50_ms']:8.2f} ms  "
              f"min {r['min_ms']:8.2f} ms  {r['throughput_ips']:7.1f} img/s")


# ---------------------------------------------------------------------------- the table
def table_rows(bundles: dict[str, Path], threads: int, with_ov: bool) -> list[Row]:
    """torch, the "before" rows, then every backend x precision x LRN formulation."""
    plain = import_ort().SessionOptions
    rows = [("torch eager", "torch", load(bundles["conv"], "pt", threads=threads))]
    rows += [("ort default opts", "native", SessionBackend(bundles["native"], p, plain(), "ORT default SessionOptions"))
             for p in ("fp32", "int8")]
    for backend in ("ort", "ov") if with_ov else ("ort",):
        # ov puts native LRN nodes back into a conv bundle by default; here each form runs as exported.
        options = {"lrn": "as-exported"} if backend == "ov" else {}
        rows += [(backend, lrn, load(bundle, backend, p, threads=threads, **options))
                 for p in PRECISIONS for lrn, bundle in bundles.items()]
    if with_ov:
        rows.append(("ov-bf16", "native", load(bundles["native"], "ov", threads=threads, inference_precision="bf16")))
    return rows


def latency_table(args, bundles: dict[str, Path]) -> dict:
    """Bandwidth, floors, accuracy and the batch-1 and batch-32 tables, printed and returned."""
    manifest = read_manifest(bundles["conv"])
    bandwidth, bandwidth_1 = read_bandwidth(), read_bandwidth(threads=1)
    floors = {p: 1e3 * manifest.artifact(p).bytes / (bandwidth * 1e9) for p in PRECISIONS}
    print(f"read bandwidth {bandwidth:.1f} GB/s with {os.cpu_count()} threads, {bandwidth_1:.1f} GB/s with 1; "
          "floors (weight bytes / all-thread bandwidth): " + ", ".join(f"{p} {ms:.2f} ms" for p, ms in floors.items())
          + f" (int8 at 1-thread bandwidth: {floors['int8'] * bandwidth / bandwidth_1:.2f} ms)")
    rows, images = table_rows(bundles, args.threads, with_ov=not args.no_ov), eval_images(args, bundles["conv"])
    reference = rows[0][2].infer_all(images.inputs)
    accuracy = [compare_logits(model.infer_all(images.inputs), images.labels, reference) for _, _, model in rows]
    timed = timed_rows(args, rows, images)
    for i, r in enumerate(timed):   # batch 1's rows, then batch 32's, each in the order of ``rows``
        torch_ms, acc = timed[i - i % len(rows)]["p50_ms"], accuracy[i % len(rows)]
        r.update(x_torch=r["p50_ms"] / torch_ms, x_floor=r["p50_ms"] / floors[r["precision"]],
                 x_int8_floor=r["p50_ms"] / floors["int8"], agreement=acc.agreement, max_abs_diff=acc.max_abs_diff,
                 top1=acc.top1)
    for batch, iters in ((1, args.iters), (MAX_BATCH, args.iters32)):
        print_table(f"AlexNet-2012 {args.image_size} px, batch {batch}, {iters} round-robin iterations, "
                    f"{args.threads} threads, {args.checkpoint}", [r for r in timed if r["batch"] == batch])
    return {"bandwidth_gbs": bandwidth, "bandwidth_1thread_gbs": bandwidth_1, "floors_ms": floors,
            "source": str(args.checkpoint), "n_images": len(images.inputs), "rows": timed,
            "targets": print_targets(timed, floors, bandwidth / bandwidth_1)}


def print_table(title: str, rows: list[dict]) -> None:
    print(f"{title}\n{'row':16s} {'prec':4s} {'LRN':6s} {'p50 ms':>8s} {'p90 ms':>8s} {'img/s':>7s} {'x torch':>7s} "
          f"{'x floor':>7s} {'x int8 fl':>9s} {'agree':>6s} {'max|diff|':>9s} {'top-1':>6s}  note")
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{r['top1']:.1%}"
        print(f"{r['row']:16s} {r['precision']:4s} {r['lrn']:6s} {r['p50_ms']:8.2f} {r['p90_ms']:8.2f} "
              f"{r['throughput_ips']:7.1f} {r['x_torch']:7.2f} {r['x_floor']:7.2f} {r['x_int8_floor']:9.2f} "
              f"{r['agreement']:6.1%} {r['max_abs_diff']:9.2e} {top1:>6s}  {r['note']}")


def print_targets(rows: list[dict], floors: dict[str, float], bandwidth_ratio: float) -> dict:
    """The three goals this benchmark tracks: the fastest batch-1 row within 2x of the int8 floor,
    ONNX Runtime fp32 no slower than OpenVINO fp32, batch-32 throughput at least 4x torch eager's."""
    one, many = ([r for r in rows if r["batch"] == b] for b in (1, MAX_BATCH))
    fast, best = min(one, key=lambda r: r["p50_ms"]), max(many, key=lambda r: r["throughput_ips"])
    ort32, ov32 = (min((r["p50_ms"] for r in one if r["row"] == n and r["precision"] == "fp32"), default=np.nan)
                   for n in ("ort", "ov"))
    t = {"fastest_b1": " ".join(fast[k] for k in ("row", "precision", "lrn")), "fastest_b1_ms": fast["p50_ms"],
         "x_int8_floor": fast["p50_ms"] / floors["int8"], "ort_fp32_ms": ort32, "ov_fp32_ms": ov32,
         "x_int8_floor_1thread_bw": fast["p50_ms"] / (floors["int8"] * bandwidth_ratio), "ort_over_ov": ort32 / ov32,
         "fastest_b32": " ".join(best[k] for k in ("row", "precision", "lrn")), "b32_ips": best["throughput_ips"],
         "b32_x_torch": best["throughput_ips"] / many[0]["throughput_ips"]}
    print(f"target 1: fastest batch 1 = {t['fastest_b1']} {t['fastest_b1_ms']:.2f} ms = {t['x_int8_floor']:.2f}x "
          f"the int8 floor ({floors['int8']:.2f} ms; {t['x_int8_floor_1thread_bw']:.2f}x at 1-thread bandwidth); "
          f"goal <= 2x; top-1 agreement with torch {fast['agreement']:.1%}\n"
          f"target 2: ORT fp32 {ort32:.2f} ms vs OpenVINO fp32 (f32) {ov32:.2f} ms = {t['ort_over_ov']:.2f}x; "
          "goal <= 1\n"
          f"target 3: batch-{MAX_BATCH} best {t['fastest_b32']} {t['b32_ips']:.1f} img/s = {t['b32_x_torch']:.2f}x "
          "torch eager fp32; goal >= 4x")
    return t


# ---------------------------------------------------------------------------- extra modes
def weight_bits_study(args, bundle: Path, work: Path) -> list[dict]:
    """Latency of the portable int8 model (7-bit weights) against the same calibration with 8-bit
    weights, batch 1 and 32, ORT and OpenVINO, round-robin in one run, and how often their top-1 agree."""
    from alexnet_deploy.deploy.platform.cpu import detect

    bundles = {7: bundle, 8: work / "conv-8bit"}
    shutil.rmtree(bundles[8], ignore_errors=True)
    # Hard links: calibration replaces files (atomic renames), it never writes into them.
    shutil.copytree(bundle, bundles[8], copy_function=os.link)
    calibrate(args, bundles[8], 8, read_manifest(bundle).calibration["method"])   # same thresholds
    if not detect().int8_safe(8):
        print("weight bits: this CPU's int8 kernels compute 8-bit weights wrongly; those rows are latency only")
    # allow_unsafe_int8: without VNNI the backends refuse 8-bit weights; here only the time counts.
    rows = [(f"{b} {bits}-bit weights", "conv", load(path, b, "int8", threads=args.threads, allow_unsafe_int8=True))
            for b in ("ort",) + (() if args.no_ov else ("ov",)) for bits, path in bundles.items()]
    timed = timed_rows(args, rows)
    print_rows("weight bits", timed)
    inputs = eval_images(args, bundle).inputs
    top1 = [model.infer_all(inputs).argmax(1) for _, _, model in rows[:2]]
    timed.append({"top1_agreement_7_vs_8_bit": float(np.mean(top1[0] == top1[1])), "n_images": len(inputs)})
    print("weight bits", timed[-1])
    return timed


ORT_VARIANTS = ("project defaults", "ORT defaults", "threads 1", "opt BASIC", "opt EXTENDED", "opt DISABLE",
                "no mem arena", "no mem pattern", "parallel exec", "spinning on", "spinning off")


def ort_options(ort, name: str, threads: int):
    """SessionOptions ``name``: the project's (deploy.onnx.sessions.session_options) with one change, or ORT's own."""
    if name == "ORT defaults":
        return ort.SessionOptions()
    options = session_options(1 if name == "threads 1" else threads,
                              spinning={"spinning on": True, "spinning off": False}.get(name))
    level = ort.GraphOptimizationLevel
    change = {"opt BASIC": ("graph_optimization_level", level.ORT_ENABLE_BASIC),
              "opt EXTENDED": ("graph_optimization_level", level.ORT_ENABLE_EXTENDED),
              "opt DISABLE": ("graph_optimization_level", level.ORT_DISABLE_ALL),
              "no mem arena": ("enable_cpu_mem_arena", False), "no mem pattern": ("enable_mem_pattern", False),
              "parallel exec": ("execution_mode", ort.ExecutionMode.ORT_PARALLEL)}.get(name)
    if change:
        setattr(options, *change)
    return options


def ort_tuning(args, bundle: Path) -> list[dict]:
    """Batch-1 and batch-32 latency of each SessionOptions variant on the bundle's fp32 and int8 models."""
    ort, timed = import_ort(), []
    for precision in ("fp32", "int8"):
        rows = [(name, "conv", SessionBackend(bundle, precision, ort_options(ort, name, args.threads), name))
                for name in ORT_VARIANTS]
        timed += timed_rows(args, rows, iters32=max(3, args.iters32 // 2))
        print_rows("ort tuning", timed[-2 * len(rows):])
    return timed


def ort_profile(args, bundle: Path, work: Path, precision: str, iters: int = 30) -> dict:
    """ORT's own profiler at batch 1: ms per op type, and the op types of ORT's optimized graph (which
    int8 kernels it really selects)."""
    from alexnet_deploy.calibration.qdq import optimized_op_types

    options = session_options(args.threads)
    options.enable_profiling, options.profile_file_prefix = True, str(work / f"profile_{precision}")
    model = SessionBackend(bundle, precision, options, "profiled")
    batch = latency_input(1, None, model.input_shape, 0)
    for _ in range(iters):
        model.infer(batch)
    per_op: collections.Counter = collections.Counter()
    for event in json.loads(Path(model.session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event.get("args", {}).get("op_name", "?")] += event["dur"] / 1e3 / iters
    kernels = dict(collections.Counter(optimized_op_types(model_path(bundle, precision))).most_common())
    print_profile(f"ORT profile {bundle.name} {precision} batch 1: {sum(per_op.values()):.2f} ms in kernels per "
                  f"run; optimized graph ops: {kernels}", per_op)
    return {"per_op_ms": dict(per_op), "kernels": kernels, "model": f"{bundle.name}/{precision}"}


def ov_profile(args, bundle: Path, precision: str, iters: int = 30) -> dict:
    """OpenVINO's per-layer counters (PERF_COUNT) at batch 1, with the ov backend's settings."""
    import openvino as ov

    core, shape = ov.Core(), read_manifest(bundle).input.shape[1:]
    model = core.read_model(str(model_path(bundle, precision)))
    model.reshape({model.inputs[0].get_any_name(): [1, *shape]})
    request = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                                "PERF_COUNT": True, "INFERENCE_NUM_THREADS": args.threads}
                                 ).create_infer_request()
    batch, per_layer = latency_input(1, None, shape, 0), collections.Counter()
    for i in range(5 + iters):   # the first 5 untimed
        request.infer({0: batch})
        for info in request.profiling_info if i >= 5 else ():
            if info.status == info.Status.EXECUTED:
                key = f"{info.node_name[:44]} [{info.node_type} {info.exec_type}]"
                per_layer[key] += info.real_time.total_seconds() * 1e3 / iters
    print_profile(f"OpenVINO profile {bundle.name} {precision} batch 1: {sum(per_layer.values()):.2f} ms in "
                  "layers per run", per_layer, 16)
    return {"per_layer_ms": dict(per_layer), "model": f"{bundle.name}/{precision}"}


def print_profile(title: str, ms: collections.Counter, top: int | None = None) -> None:
    print(title)
    for name, value in ms.most_common(top):
        print(f"  {name:86s} {value:7.3f} ms  {100 * value / sum(ms.values()):5.1f}%")


# ---------------------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the trained checkpoint to export")
    add("--data", type=Path, default=DEFAULT_DATA, help="image folder (class sub-folders): calibration and accuracy")
    add("--work", type=Path, default=None, help="where the bundles go, reused by the next run (default: a temp dir)")
    add("--image-size", type=int, default=227, help="input size of the exported bundles")
    add("--calib-method", default="minmax", choices=("minmax", "entropy", "percentile", "auto"),
        help="calibration method (it changes the scales, not the latency)")
    add("--threads", type=int, default=os.cpu_count() or 1)
    add("--iters", type=int, default=30, help="round-robin iterations at batch 1")
    add("--iters32", type=int, default=6, help="round-robin iterations at batch 32")
    add("--calib-images", type=int, default=128)
    add("--eval-images", type=int, default=256)
    add("--no-ov", action="store_true", help="skip OpenVINO rows")
    add("--skip-table", action="store_true", help="only the extra modes")
    add("--ort-tuning", action="store_true", help="measure ORT SessionOptions")
    add("--weight-bits", action="store_true", help="latency of 7-bit (portable) vs 8-bit int8 weights")
    add("--profile", action="store_true", help="per-op profiles at batch 1, int8 and fp32: ORT and OpenVINO")
    add("--json", type=Path, default=None, help="write all results here")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file (train one with `alexnet-deploy train`)")
    args.data = args.data if args.data and args.data.is_dir() else None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="cpu_latency.") as tmp:
        work = args.work or Path(tmp)
        bundles = {lrn: build_bundle(args, work / lrn, lrn) for lrn in ("native", "conv")}
        manifest = read_manifest(bundles["conv"])
        print(f"model: {manifest.arch}, {len(manifest.classes)} classes, {args.checkpoint}")
        if not args.skip_table:
            results["table"] = latency_table(args, bundles)
        if args.ort_tuning:
            results["ort_tuning"] = ort_tuning(args, bundles["conv"])
        if args.weight_bits:
            results["weight_bits"] = weight_bits_study(args, bundles["conv"], work)
        if args.profile:   # fp32 too: where ORT fp32 loses to OpenVINO fp32 shows per op
            results["profile"] = {f"ort_{p}": ort_profile(args, bundles["conv"], work, p) for p in ("int8", "fp32")}
            if not args.no_ov:
                results["profile"].update({f"ov_{p}": ov_profile(args, bundles["native"], p) for p in ("int8", "fp32")})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
