"""The runtime: a leaf that imports stdlib, numpy and Pillow only, never torch."""

from alexnet_deploy.deploy.preprocess import PreprocessSpec, preprocess

__all__ = ["PreprocessSpec", "preprocess"]
