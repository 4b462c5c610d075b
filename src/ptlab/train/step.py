"""One optimizer step over a batch, the same machinery for pre-training and fine-tuning.

Each rank's share of the batch is split into `grad_accum` micro-batches; each runs forward under autocast and
backward with its summed token loss divided by the global label count, so the gradient is the token-weighted mean
over the global batch whatever the rank count and accumulation. A step whose loss or gradient norm is not finite is
skipped: the weights and the optimizer's moments stay the last good ones. So is, with a `SpikeGuard`, a step whose
loss jumps far above its recent mean. That is decided on the device (the optimizer gets a `found_inf` flag, as under
a GradScaler), so a step never waits for the device: the loss and the gradient norm stay there until the caller
reads a run of steps back at once (`read_steps`, at log steps).
"""

from __future__ import annotations

import contextlib
import math
import signal
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from ptlab.config import TrainConfig
from ptlab.data.pipeline import IGNORE_INDEX
from ptlab.errors import PtlabError
from ptlab.train.batches import autocast, model_inputs, to_tensors
from ptlab.train.distributed import Runtime
from ptlab.train.optim import AdamWScale


def gradient_norm(model: nn.Module, clip: float) -> torch.Tensor:
    """The gradients' total norm (before clipping), on the device; clipped to `clip` unless it is 0. A non-finite
    norm is returned as it is, and the gradients it scaled are then discarded with the step."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


class SpikeGuard:
    """Skips a step whose loss is more than `sigmas` standard deviations above the mean of the last `window` steps'
    losses (OLMo-core's skip-step optimizer), decided on the device. A spike enters the history clipped to the
    threshold it crossed, so one wild batch does not blind the guard for a window, while a lasting shift of the
    loss (a new data source) is absorbed within a few windows instead of skipping every step. Its history is part
    of the trainer state, so a resumed run skips the same steps."""

    def __init__(self, sigmas: float, window: int, device: torch.device):
        self.sigmas, self.window = sigmas, window
        self.losses = torch.zeros(window, dtype=torch.float64, device=device)
        self.seen = torch.zeros((), dtype=torch.int64, device=device)

    def check(self, loss: torch.Tensor) -> torch.Tensor:
        """Whether `loss` (the global batch's mean, a float64 scalar on the device) is a spike; records it."""
        threshold = self.losses.mean() + self.sigmas * self.losses.std()
        spike = (self.seen >= self.window) & (loss > threshold)
        finite = torch.isfinite(loss)
        slot = (self.seen % self.window).reshape(1)
        kept = torch.where(spike, threshold, loss).reshape(1)
        self.losses.index_copy_(0, slot, torch.where(finite, kept, self.losses.index_select(0, slot)))
        self.seen += finite.long()
        return spike

    def state_dict(self) -> dict:
        return {"losses": self.losses.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if state["losses"].shape != self.losses.shape:  # train.spike_window changed: start the history afresh
            return
        self.losses.copy_(state["losses"])
        self.seen.copy_(state["seen"])


@dataclass
class StepOutcome:
    loss: float  # token-weighted mean over the global batch
    grad_norm: float  # before clipping
    skipped: str | None = None  # "loss", "gradient" or "spike" when the update was not applied

    @property
    def finite(self) -> bool:
        return self.skipped in (None, "spike")

    @property
    def applied(self) -> bool:
        return self.skipped is None


@dataclass
class PendingStep:
    """A step's figures, still on the device; `read_steps` brings any number of them back in one transfer."""
    loss_sum: torch.Tensor  # this rank's summed token loss
    grad_norm: torch.Tensor  # the gradients' total norm before clipping
    total_labels: float  # the global batch's label count
    spike: torch.Tensor | None = None  # whether the spike guard skipped the step


def label_count(batch: dict[str, np.ndarray]) -> int:
    """Labels in a (host, numpy) batch: counted without a device round trip."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


def read_steps(pending: list[PendingStep], runtime: Runtime) -> list[StepOutcome]:
    """The steps' losses (summed over ranks) and gradient norms as Python floats: one device sync for them all."""
    if not pending:
        return []
    no_spike = torch.zeros((), dtype=torch.bool)
    values = torch.stack([v.to(pending[0].loss_sum.device, torch.float64)
                          for p in pending for v in (p.loss_sum, p.grad_norm,
                                                     no_spike if p.spike is None else p.spike)]).tolist()
    losses = runtime.sum(*values[0::3])
    outcomes = []
    for p, local_loss, grad_norm, spike in zip(pending, losses, values[1::3], values[2::3]):
        loss = local_loss / max(p.total_labels, 1)
        skipped = ("loss" if not math.isfinite(loss) else "gradient" if not math.isfinite(grad_norm)
                   else "spike" if spike else None)
        outcomes.append(StepOutcome(loss, grad_norm, skipped))
    return outcomes


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer takes a `found_inf` flag (as under a GradScaler) and then leaves weights, moments and
    step count untouched without the host reading the flag: fused AdamW and `AdamWScale` do, Adafactor does not."""
    return isinstance(optimizer, AdamWScale) or bool(optimizer.defaults.get("fused"))


def optimizer_step(trained: nn.Module, optimizer: torch.optim.Optimizer,
                   loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], batch: dict[str, np.ndarray],
                   lr: float, total_labels: float, cfg: TrainConfig, runtime: Runtime) -> StepOutcome:
    """`step_on_device`, then its figures read back (one device sync)."""
    return read_steps([step_on_device(trained, optimizer, loss_fn, batch, lr, total_labels, cfg, runtime)],
                      runtime)[0]


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """train.lr's scheduled value `lr` on every group; a group with an `lr_ratio` (Muon's matrices, the
    embeddings under `train.embedding_lr`) takes that multiple of it."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)


def step_on_device(trained: nn.Module, optimizer: torch.optim.Optimizer,
                   loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor], batch: dict[str, np.ndarray],
                   lr: float, total_labels: float, cfg: TrainConfig, runtime: Runtime,
                   spike_guard: SpikeGuard | None = None) -> PendingStep:
    """Forward and backward over `batch` (this rank's share), then clip and update unless the loss or the gradient
    norm is not finite or `spike_guard` finds the loss a spike, decided on the device: the host waits for nothing
    (but with Adafactor and Muon, which cannot skip on the device). `total_labels` is the label count of the
    global batch, summed over ranks. `lr` is train.lr's scheduled value (`set_learning_rate`)."""
    device = runtime.device
    set_learning_rate(optimizer, lr)
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
    grad_norm = gradient_norm(trained, cfg.grad_clip)
    if isinstance(grad_norm, DTensor):  # a sharded model's norm, whole on every rank
        grad_norm = grad_norm.full_tensor()
    finite = (torch.isfinite(loss_total) & torch.isfinite(grad_norm)).float()
    if runtime.distributed:  # one rank's non-finite loss skips the step on every rank
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    spike = None
    if spike_guard is not None:
        global_loss = loss_total.clone()
        if runtime.distributed:
            dist.all_reduce(global_loss)
        spike = spike_guard.check(global_loss / max(total_labels, 1))
        finite = finite * (~spike).float()
    if skips_on_device(optimizer):
        optimizer.found_inf = 1.0 - finite
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):  # a host sync, for the optimizers that cannot skip on the device
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return PendingStep(loss_total, grad_norm.detach(), total_labels, spike)


def read_pending(pending: list[tuple[int, PendingStep]], bad_in_row: int, runtime: Runtime, max_bad_steps: int,
                 record: Callable[[dict], None], checkpoint: Callable[[int, StepOutcome], object]
                 ) -> tuple[list[StepOutcome], int]:
    """Read back the (step number, figures) of the steps since the last read (one device sync), record each skipped
    one and count the non-finite ones in a row; once `max_bad_steps` came in a row, stop the run with
    `checkpoint(newest step, its outcome)` (a skipped step changes nothing, so that holds the last good weights).
    Read at log, evaluation and checkpoint steps only, the stop may come up to `train.log_every` - 1 steps after
    the limit was reached. A spike the guard skipped is recorded but neither counts nor breaks a run of bad steps.
    Returns the outcomes and the bad steps in a row."""
    outcomes = read_steps([figures for _, figures in pending], runtime)
    limit_reached = None
    for (done, _), outcome in zip(pending, outcomes):
        if outcome.applied:
            bad_in_row = 0
            continue
        if outcome.finite:  # the spike guard's skip
            record({"step": done, "event": "skipped_step", "reason": outcome.skipped, "loss": outcome.loss,
                    "grad_norm": outcome.grad_norm})
            continue
        bad_in_row += 1
        record({"step": done, "event": "skipped_step", "reason": outcome.skipped, "loss": outcome.loss,
                "grad_norm": outcome.grad_norm, "in_a_row": bad_in_row})
        if bad_in_row >= max_bad_steps and limit_reached is None:
            limit_reached = (outcome, bad_in_row, done)
    if limit_reached is not None:
        outcome, in_a_row, reached = limit_reached
        raise too_many_bad_steps(outcome, in_a_row, reached, checkpoint(pending[-1][0], outcomes[-1]))
    return outcomes, bad_in_row


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
