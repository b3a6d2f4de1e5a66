"""ONNX helpers of the runtime: ``sessions`` (ONNX Runtime sessions), ``lrn`` (the LRN graph rewrite
and its undo) and ``facts`` (what an ONNX file says about itself: I/O, classes, preprocessing).

``import onnx`` inside this package still means the onnx library: imports are absolute."""
