"""The backends: ``base`` (the Backend lifecycle, the registry and ``load()``) and one module per
backend (``ort``, ``ov``). TensorRT lives in ``deploy/trt/`` beside its builder and engine cache; the
PyTorch reference backend lives on the torch side, in ``alexnet/backend.py``."""
