"""The runtime: a leaf that imports stdlib, numpy and Pillow only, never torch.

Embedding API::

    from alexnet_deploy.deploy import load
    model = load("bundle/")                       # the fastest runtime here for the precision (AUTO_ORDER)
    for p in model.classify(["cat.jpg", "dog.jpg"], topk=3):
        print(p.label, p.probability, p.topk)
    logits = model.infer(batch)                   # float32 NCHW -> float32 logits

Backends (torch, onnxruntime, tensorrt) are imported only when one is constructed.
"""

from alexnet_deploy.deploy.backends.base import BACKENDS, Backend, Prediction, load
from alexnet_deploy.deploy.bundle import Bundle
from alexnet_deploy.deploy.preprocess import PreprocessSpec, load_image, preprocess, preprocess_threaded, softmax

__all__ = ["BACKENDS", "Backend", "Bundle", "Prediction", "load", "PreprocessSpec", "load_image", "preprocess",
           "preprocess_threaded", "softmax"]
