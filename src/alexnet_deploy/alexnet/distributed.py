"""PyTorch DDP under torchrun: which rank this process is, joining the process group, wrapping the
model and summing numbers over ranks. Without torchrun everything is rank 0 of 1 and nothing here
touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from alexnet_deploy.errors import AlexNetDeployError


@dataclass(frozen=True)
class DistContext:
    """Where this process trains: its rank, the world size, its device (rank 0 of 1 on CPU by default)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def all_reduce(values: torch.Tensor, dist: DistContext) -> torch.Tensor:
    if dist.world > 1:
        device_values = values.to(dist.device)
        torch.distributed.all_reduce(device_values)
        return device_values.cpu()
    return values


def setup_distributed(device: str) -> DistContext:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise AlexNetDeployError("--device cuda: no CUDA device is visible to torch; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device="cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return DistContext(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size(),
                       device=f"cuda:{local}" if cuda else "cpu")


def wrap_ddp(model: nn.Module, dist: DistContext) -> nn.Module:
    if dist.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dist.device] if dist.device.startswith("cuda") else None)
