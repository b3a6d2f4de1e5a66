"""INT8 calibration: Q/DQ ONNX from real images (no torch)."""
