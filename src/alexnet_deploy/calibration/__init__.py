"""INT8 calibration: TensorRT-compatible symmetric Q/DQ ONNX from real images (no torch).

Public API: ``calibrate_bundle`` (what `alexnet-deploy calibrate` calls; ``calibrate_staged`` is the same
inside a transaction the caller holds, for `export --int8`),
``CalibrationReport``, ``BudgetNotMet``, ``check_qdq``, ``CalibrationSet`` and ``load_set``.
onnx / onnxruntime are imported only when a function needs them.
"""

from alexnet_deploy.calibration.dataset import CalibrationSet, load_set
from alexnet_deploy.calibration.pipeline import calibrate_bundle, calibrate_staged
from alexnet_deploy.calibration.qdq import check_qdq
from alexnet_deploy.calibration.report import BudgetNotMet, CalibrationReport

__all__ = ["calibrate_bundle", "calibrate_staged", "CalibrationReport", "BudgetNotMet", "check_qdq", "CalibrationSet", "load_set"]
