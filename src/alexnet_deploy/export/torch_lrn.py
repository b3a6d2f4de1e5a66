"""How ``nn.LocalResponseNorm`` enters the exported ONNX graph (torch side of the LRN choice).

The dynamo exporter decomposes ``LocalResponseNorm`` into Pad/AveragePool/Pow/Div, which runs
markedly slower than one ONNX ``LRN`` node (docs/lrn.md) and which some converters cannot fuse back.
Each formulation here is a function that returns an export-time replacement module for one LRN
layer; ``FORMULATIONS`` maps the name recorded in the manifest (``export.lrn``) to it. Faster
graph-level formulations (e.g. ``"conv"``: a banded 1x1 convolution for the cross-channel sum) are
ONNX rewrites of the native ``LRN`` node in ``deploy/onnx/lrn.py`` (``rewrite_lrn``); ``export/onnx.py``
exports native and then applies that rewrite for any name not listed here.

Conventions checked numerically in tests/test_export_onnx.py: torch's LocalResponseNorm and ONNX
``LRN`` both compute ``x / (k + alpha / size * sum_window x^2) ** beta``; for odd ``size`` both
windows are centred (size // 2 on each side). For even sizes torch puts the extra channel before
the centre and ONNX after it, so the native formulation refuses even sizes instead of silently
computing something else.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from alexnet_deploy.errors import ExportError


class NativeLRN(nn.Module):
    """Exports as exactly one ONNX ``LRN`` node; computes torch's LRN when run eagerly."""

    def __init__(self, lrn: nn.LocalResponseNorm, opset: int) -> None:
        super().__init__()
        if lrn.size % 2 == 0:
            raise ExportError(f"LocalResponseNorm(size={lrn.size}): ONNX LRN centres even windows differently "
                              "from torch; use --lrn decomposed for even window sizes")
        self.size, self.alpha, self.beta, self.k = int(lrn.size), float(lrn.alpha), float(lrn.beta), float(lrn.k)
        self.opset = opset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            # torch.onnx.ops.symbolic emits the op verbatim in the default ONNX domain ("::LRN").
            return torch.onnx.ops.symbolic(
                "::LRN", (x,), {"size": self.size, "alpha": self.alpha, "beta": self.beta, "bias": self.k},
                dtype=x.dtype, shape=x.shape, version=self.opset)
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)


def _native(lrn: nn.LocalResponseNorm, opset: int) -> nn.Module:
    return NativeLRN(lrn, opset)


def _decomposed(lrn: nn.LocalResponseNorm, opset: int) -> nn.Module:
    # Keep torch's module: the exporter decomposes it into Pad/AveragePool/Pow/Div (slower, but
    # correct for any window size and readable by converters that lack LRN).
    return lrn


FORMULATIONS: dict[str, Callable[[nn.LocalResponseNorm, int], nn.Module]] = {
    "native": _native,
    "decomposed": _decomposed,
}


def swap_lrn(model: nn.Module, formulation: str, opset: int) -> tuple[nn.Module, int]:
    """A deep copy of ``model`` with every LocalResponseNorm replaced for export; returns (copy, count).

    ``formulation`` is a key of FORMULATIONS (graph-rewrite formulations export as "native" first).
    """
    make = FORMULATIONS.get(formulation, _native)
    model = copy.deepcopy(model).eval()
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LocalResponseNorm):
                setattr(parent, name, make(child, opset))
                count += 1
    return model, count


__all__ = ["FORMULATIONS", "NativeLRN", "swap_lrn"]
