"""Export-time replacement of ``nn.AdaptiveAvgPool2d`` by fixed ops for the export's input size.

The ONNX input has a fixed H and W (only the batch axis is dynamic), so the adaptive pool's input
size is known at export time. The dynamo exporter writes a non-6x6 adaptive pool as
Transpose/GatherND/Transpose/ReduceMean; ReduceMean's opset-18 form (axes as an input) cannot be
converted down to opset 17, which TensorRT 8.6 (JetPack 6.0) reads. Fixed equivalents:

- same size: the identity;
- input a multiple of the output: ``AvgPool2d(kernel = stride = in // out)`` (exact);
- otherwise: ``P_h @ x @ P_w^T`` with constant averaging matrices (exact up to float summation
  order; e.g. a 3x3 map pooled "up" to 6x6 repeats each cell, as PyTorch does).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _pairs(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def averaging_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) matrix whose row i averages PyTorch's adaptive window i."""
    matrix = torch.zeros(out_size, in_size)
    for i in range(out_size):
        start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class MatMulPool(nn.Module):
    """Adaptive average pooling for one fixed input size, as two constant matrix products."""

    def __init__(self, out_hw: tuple[int, int], in_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", averaging_matrix(out_hw[0], in_hw[0]))
        self.register_buffer("cols_t", averaging_matrix(out_hw[1], in_hw[1]).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols_t)


def _replacement(pool: nn.AdaptiveAvgPool2d, in_hw: tuple[int, int]) -> tuple[nn.Module, str]:
    out_hw = _pairs(pool.output_size)
    if None in out_hw:
        return pool, "adaptive"
    if in_hw == out_hw:
        return nn.Identity(), "identity"
    if in_hw[0] % out_hw[0] == 0 and in_hw[1] % out_hw[1] == 0:
        kernel = (in_hw[0] // out_hw[0], in_hw[1] // out_hw[1])
        return nn.AvgPool2d(kernel, stride=kernel), f"avgpool {kernel[0]}x{kernel[1]}"
    return MatMulPool(out_hw, in_hw), f"matmul {in_hw[0]}x{in_hw[1]}->{out_hw[0]}x{out_hw[1]}"


def fix_adaptive_pools(model: nn.Module, image_size: int) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` whose AdaptiveAvgPool2d layers are fixed ops for ``image_size`` inputs;
    returns (copy, one description per replaced layer)."""
    model = copy.deepcopy(model).eval()
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(id(mod), tuple(args[0].shape[-2:])))
             for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    done = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and id(child) in sizes:
                new, description = _replacement(child, sizes[id(child)])
                setattr(parent, name, new)
                done.append(description)
    return model, done


__all__ = ["averaging_matrix", "MatMulPool", "fix_adaptive_pools"]
