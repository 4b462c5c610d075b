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

from ptlab.config import TrainConfig
from ptlab.data.pipeline import IGNORE_INDEX
from ptlab.train.batches import autocast, model_inputs, to_tensors
from ptlab.train.distributed import Runtime


@dataclass
class StepOutcome:
    loss: float  # token-weighted mean over the global batch
    grad_norm: float  # before clipping; nan when the loss was not finite
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
    loss_total = 0.0
    for i, part_rows in enumerate(parts):
        part = to_tensors(model_inputs({k: v[part_rows] for k, v in batch.items()}), device)
        sync = i == len(parts) - 1 or not hasattr(trained, "no_sync")
        with (contextlib.nullcontext() if sync else trained.no_sync()), autocast(cfg.precision, device):
            part_loss = loss_fn(part)
        # DDP and FSDP average gradients over ranks; scaling by the rank count makes that a sum
        (part_loss * runtime.world_size / max(total_labels, 1)).backward()
        loss_total += float(part_loss.detach())
    loss = runtime.sum(loss_total)[0] / max(total_labels, 1)
    if not math.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss, float("nan"), "loss")
    # With clipping off the norm is still computed: an inf or NaN gradient must never reach the optimizer.
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(trained.parameters(), max_norm))
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss, grad_norm, "gradient")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutcome(loss, grad_norm)


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
