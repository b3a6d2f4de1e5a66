"""Artifacts: checkpoint -> ONNX, FP16 ONNX, TensorRT engines."""
