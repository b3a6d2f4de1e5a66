"""Live classification from a camera or video file through OpenCV, on the torch-free runtime.

    python examples/camera.py BUNDLE_OR_ARCHIVE [--source 0] [--backend auto] [--precision fp16]
                              [--no-display] [--frames N]

``--source`` is a camera index (0), a video file, or a GStreamer pipeline (Jetson CSI camera, see
examples/README.md). Press q to quit the window; ``--no-display`` prints one line per frame
instead (headless Jetson, ssh). Needs OpenCV (``pip install opencv-python``, or JetPack's
``python3-opencv`` with GStreamer in a venv made with ``--system-site-packages``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def import_cv2():
    """OpenCV, or a clear message and exit code 2 when it is not installed."""
    try:
        import cv2
    except ImportError:
        print("camera.py needs OpenCV, which is not installed: pip install opencv-python "
              "(on a Jetson: sudo apt install python3-opencv, and make the venv with --system-site-packages "
              "so it is visible). examples/classify_folder.py works without it.", file=sys.stderr)
        raise SystemExit(2)
    return cv2


def open_source(cv2, source: str):
    """A cv2.VideoCapture for a camera index, a file or a GStreamer pipeline."""
    if source.isdigit():
        cap = cv2.VideoCapture(int(source))
    elif "!" in source:
        cap = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
    else:
        cap = cv2.VideoCapture(str(Path(source)))
    if not cap.isOpened():
        print(f"cannot open video source {source!r}", file=sys.stderr)
        raise SystemExit(1)
    return cap


def run(model, cap, cv2, display: bool, frames: int | None) -> int:
    """Classify frames until the source ends, q is pressed, or ``frames`` were shown."""
    from PIL import Image

    count, fps, last = 0, 0.0, time.perf_counter()
    while frames is None or count < frames:
        ok, frame = cap.read()
        if not ok:
            break
        pred = model.classify([Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))], topk=1)[0]
        now = time.perf_counter()
        fps = 0.9 * fps + 0.1 / max(now - last, 1e-6) if count else 1.0 / max(now - last, 1e-6)
        last, count = now, count + 1
        text = f"{pred.label} {pred.probability:.0%}  {fps:.1f} fps"
        if display:
            cv2.putText(frame, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 0), 2)
            cv2.imshow("alexnet-deploy", frame)
            if cv2.waitKey(1) & 0xFF == ord("q"):
                break
        else:
            print(f"frame {count}: {text}", flush=True)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--source", default="0", help="camera index, video file or GStreamer pipeline")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--no-display", action="store_true", help="print results instead of opening a window")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    args = parser.parse_args(argv)
    cv2 = import_cv2()   # first, so a missing OpenCV is reported before any model loads

    from alexnet_deploy.deploy import load
    from alexnet_deploy.deploy.bundle.archive import open_bundle
    from alexnet_deploy.errors import AlexNetDeployError

    cap = open_source(cv2, args.source)
    try:
        with load(open_bundle(args.bundle), backend=args.backend, precision=args.precision) as model:
            print(f"# {model.describe()}", flush=True)
            shown = run(model, cap, cv2, not args.no_display, args.frames)
            print(f"# {shown} frames", flush=True)
    except AlexNetDeployError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    finally:
        cap.release()
        if not args.no_display:
            cv2.destroyAllWindows()
    return 0


if __name__ == "__main__":
    sys.exit(main())
