"""Data parallelism through PyTorch's own engine: torchrun sets RANK/WORLD_SIZE, ptlab wraps the model in DDP or
FSDP2 (`fully_shard` per block), gloo on CPU and NCCL on GPU. A single process needs none of it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ptlab.errors import PtlabError

T = TypeVar("T")


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """Sum numbers over ranks (identity on one process)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum(float(flag))[0] > 0

    def main_first(self, what: str, main: Callable[[], T], others: Callable[[], T]) -> T:
        """Rank 0 runs `main` (which writes files: a tokenizer, shards, an imported model), then the other ranks run
        `others` (which reads them); the result is this rank's. A failure on rank 0 is shared with every rank, so all
        fail alike instead of the others waiting at a collective forever: rank 0 raises its own error, the others
        "rank 0 failed while WHAT (see its error)"."""
        error, result = None, None
        if self.is_main:
            try:
                result = main()
            except Exception as err:  # re-raised below, after telling the other ranks
                error = err
        if self.any(error is not None):
            if error is not None:
                raise error
            raise PtlabError(f"rank 0 failed while {what} (see its error)")
        return result if self.is_main else others()


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """`train.device` as a torch device: `auto` takes CUDA when there is one; `cuda` without one is a config error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PtlabError("config key 'train.device': cuda requested but no CUDA device is available")
    return torch.device("cuda", local_rank)


def setup(device: str = "auto") -> Runtime:
    """Join the process group when launched by torchrun; pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = pick_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Runtime(rank, world_size, target)


_BEFORE_TEARDOWN: list[Callable[[], None]] = []


def before_teardown(callback: Callable[[], None]) -> None:
    """Run CALLBACK (once) before the process group goes: work still in flight on it, such as a background save."""
    _BEFORE_TEARDOWN.append(callback)


def teardown() -> None:
    try:
        while _BEFORE_TEARDOWN:
            _BEFORE_TEARDOWN.pop(0)()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def wrap(model: nn.Module, runtime: Runtime, mode: str) -> nn.Module:
    """The model to train: itself (one process), DistributedDataParallel, or FSDP2-sharded in place."""
    if not runtime.distributed:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The Transformer blocks of any ptlab model (the unit of FSDP sharding and activation checkpointing)."""
    found = []
    for name in ("encoder_blocks", "decoder_blocks", "blocks"):
        found.extend(getattr(model, name, []))
    return found
