"""torch.distributed helpers: the process group torchrun describes, and metric reduction."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from spikezoo.train.config import RecipeError

__all__ = [
    "DistributedContext",
    "all_gather_objects",
    "init_distributed",
    "reduce_sum",
    "synchronize_buffers",
]


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 writes checkpoints and logs).
        world_size: number of processes.
        local_rank: rank on this node (the CUDA device index).
        device: the device this process trains on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group torchrun's environment describes (``WORLD_SIZE`` > 1).

    NCCL on CUDA, gloo on the CPU. Without torchrun's variables this is one process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise RecipeError(f"run.device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError("run.device is 'cuda' but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, torch_device)


def reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """``values`` summed over all processes (float64, so sums of counts stay exact)."""
    total = values.detach().to(context.device, torch.float64).clone()
    if context.distributed:
        dist.all_reduce(total)
    return total.cpu()


def all_gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """``[value of rank 0, value of rank 1, ...]`` (a one-element list in one process)."""
    if not context.distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def synchronize_buffers(model: torch.nn.Module, context: DistributedContext) -> None:
    """Make every rank's buffers equal: BatchNorm statistics averaged (timm's
    ``distribute_bn``), the other buffers (e.g. DSSA firing rates) copied from rank 0.

    DDP keeps the parameters in sync, but each rank updates its buffers from its own shard.
    """
    if not context.distributed:
        return
    from timm.utils import distribute_bn

    distribute_bn(model, context.world_size, reduce=True)
    for name, buffer in model.named_buffers():
        if "running_mean" not in name and "running_var" not in name:
            dist.broadcast(buffer, 0)
