"""One optimizer step over a batch, the same machinery for pre-training and fine-tuning.

Each rank's share of the batch is split into `grad_accum` micro-batches; each runs forward under autocast and
backward with its summed token loss divided by the global label count, so the gradient is the token-weighted mean
over the global batch whatever the rank count and accumulation. A step whose loss or gradient norm is not finite is
skipped before the optimizer sees it: the weights and the optimizer's moments stay the last good ones.
"""

from __future__ import annotations

import contextlib
import math
import signal
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ptlab.config import TrainConfig
from ptlab.data.pipeline import IGNORE_INDEX
from ptlab.errors import PtlabError
from ptlab.train.batches import autocast, model_inputs, to_tensors
from ptlab.train.distributed import Runtime


def gradient_norm(model: nn.Module, clip: float) -> torch.Tensor:
    """The gradients' total norm (before clipping), on the device; clipped to `clip` unless it is 0. A non-finite
    norm is returned as it is, and the gradients it scaled are then discarded with the step."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def read_back(*scalars: torch.Tensor) -> list[float]:
    """Device scalars as Python floats in one transfer (a sharded model's norm is gathered first)."""
    full = [s.full_tensor() if isinstance(s, DTensor) else s for s in scalars]
    return torch.stack([s.to(full[0].device, torch.float64) for s in full]).tolist()


@dataclass
class StepOutcome:
    loss: float  # token-weighted mean over the global batch
    grad_norm: float  # before clipping
    skipped: str | None = None  # "loss" or "gradient" when the update was not applied

    @property
    def applied(self) -> bool:
        return self.skipped is None


def label_count(batch: dict[str, np.ndarray]) -> int:
    return int((batch["labels"] != IGNORE_INDEX).sum())


def optimizer_step(trained: nn.Module, optimizer: torch.optim.Optimizer,
                   loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], batch: dict[str, np.ndarray],
                   lr: float, total_labels: float, cfg: TrainConfig, runtime: Runtime) -> StepOutcome:
    """Forward and backward over `batch` (this rank's share), then clip and update unless the loss or the gradient
    norm is not finite. `total_labels` is the label count of the global batch, summed over ranks."""
    device = runtime.device
    for group in optimizer.param_groups:
        group["lr"] = lr
    rows = len(batch["labels"])
    parts = np.array_split(np.arange(rows), min(cfg.grad_accum, rows))
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    for i, part_rows in enumerate(parts):
        part = to_tensors(model_inputs({k: v[part_rows] for k, v in batch.items()}), device)
        sync = i == len(parts) - 1 or not hasattr(trained, "no_sync")
        with (contextlib.nullcontext() if sync else trained.no_sync()), autocast(cfg.precision, device):
            part_loss = loss_fn(part)
        # DDP and FSDP average gradients over ranks; scaling by the rank count makes that a sum
        (part_loss * runtime.world_size / max(total_labels, 1)).backward()
        loss_total += part_loss.detach()
    # the loss and the gradient norm come back to the host together: one device sync per step
    local_loss, grad_norm = read_back(loss_total, gradient_norm(trained, cfg.grad_clip))
    loss = runtime.sum(local_loss)[0] / max(total_labels, 1)
    if not math.isfinite(loss) or not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss, grad_norm, "loss" if not math.isfinite(loss) else "gradient")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss, grad_norm)


def too_many_bad_steps(outcome: StepOutcome, in_a_row: int, step: int, checkpoint) -> PtlabError:
    """The error that stops a run after `train.max_bad_steps` skipped steps in a row."""
    return PtlabError(f"loss or gradient norm was not finite for {in_a_row} steps in a row (up to step {step}: loss "
                      f"{outcome.loss}, gradient norm {outcome.grad_norm}); stopped with a checkpoint of the last "
                      f"good weights at {checkpoint}. Lower train.lr, raise train.warmup_steps or use "
                      "train.precision=fp32")


class StopSignals:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop after the current step."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
