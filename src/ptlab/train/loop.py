"""Pre-training, the same on a laptop CPU and under torchrun, and the one step loop (`TrainingLoop`) that it shares
with fine-tuning: a run gives the loop its batches, its evaluation and its checkpoints (`LoopHooks`).

Each step reads the global batch's examples `[step * batch_size, (step + 1) * batch_size)` (shifted by a batch-size
warmup's smaller first batches, `examples_before`); rank r of W takes its
contiguous share, split into `grad_accum` micro-batches. The loss is token-weighted over the global batch, so any
rank count and accumulation gives the same gradient. The learning rate is a pure function of the step, batches a
pure function of (seed, step), and checkpoints hold model, optimizer (keyed by parameter name), RNG state and
the data position: a run killed at any point and resumed logs the same losses as one never stopped (on CPU).
"""

from __future__ import annotations

import contextlib
import json
import functools
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from tqdm import tqdm

from ptlab.config import Config, TrainConfig, save_config
from ptlab.data import ensure_shards, ensure_tokenizer
from ptlab.data.pipeline import IGNORE_INDEX, PretrainBatches, pretrain_batches, resolve_objective, validation_batches
from ptlab.data.stream import TrainingStream
from ptlab.errors import PtlabError
from ptlab.models import build_model, count_parameters
from ptlab.models.flops import peak_tflops, training_flops
from ptlab.models.head_loss import head_loss_sum, training_chunk_tokens
from ptlab.models.kernels import cross_entropy_sum
from ptlab.objectives import SpecialIds
from ptlab.train import distributed
from ptlab.train.batches import (
    autocast,
    batch_hidden,
    batch_label_log_probs,
    batch_logits,
    batch_tokens,
    bits_per_byte,
    model_inputs,
    target_bytes,
    to_tensors,
    unwrapped,
)
from ptlab.train.checkpoint import (
    CHECKPOINTS,
    checkpoint_dir,
    failed_writes_named,
    finish_checkpoint,
    latest_valid_checkpoint,
    list_checkpoints,
    load_trainer_state,
    load_weights,
    prune_checkpoints,
    save_checkpoint,
    staging_dir,
    start_checkpoint,
    state_dict_for_saving,
)
from ptlab.train.continued import InitSource, prepare_init
from ptlab.train.host import configure_host, denormals_restored
from ptlab.train.optim import build_optimizer, lr_factor
from ptlab.train.runlog import MetricsLog, read_metrics
from ptlab.train.sharded import BackgroundSaves, host_snapshot, is_sharded, load_sharded, load_sharded_weights, save_sharded
from ptlab.train.step import (
    PendingStep,
    SpikeGuard,
    StepOutcome,
    StopSignals,
    label_count,
    read_pending,
    step_on_device,
)


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    initial_val_loss: float | None
    final_val_loss: float | None
    tokens_per_second: float
    train_seconds: float
    parameters: int
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None
    interrupted: str | None = None  # the signal's name when a SIGINT/SIGTERM stopped the run
    skipped_steps: int = 0
    mfu: float | None = None
    initial_val_bpb: float | None = None  # bits per UTF-8 byte of the validation targets (`Validation`)
    final_val_bpb: float | None = None


def summed_loss(model: nn.Module, batch: dict[str, torch.Tensor], chunk_tokens: int = 0) -> torch.Tensor:
    """Summed token cross-entropy over the labels that are not IGNORE_INDEX. With `chunk_tokens` > 0 the head and
    the loss run fused, that many tokens at a time (`ptlab.models.head_loss`), never holding the whole batch's
    logits; 0 computes the logits, then the loss."""
    labels = batch["labels"]
    if chunk_tokens > 0:
        hidden = batch_hidden(model, batch)
        return head_loss_sum(hidden, labels, unwrapped(model).output_head(), chunk_tokens, IGNORE_INDEX)
    logits = batch_logits(model, batch)
    return cross_entropy_sum(logits.view(-1, logits.shape[-1]), labels.view(-1), IGNORE_INDEX)


def loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed token cross-entropy, and how many labels it covers, for evaluation: the head applied a chunk of
    tokens at a time (`batch_label_log_probs`), so the batch's whole logits are never held."""
    return -batch_label_log_probs(model, batch).sum(dtype=torch.float64), int((batch["labels"] != IGNORE_INDEX).sum())


COMPILE_BACKEND = "inductor"  # tests swap in a backend that records the graph, or one that fails


def training_loss(model: nn.Module, compiled: bool, on_fallback: Callable[[str], None] = lambda error: None,
                  chunk_tokens: int = 0) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """The trainer's per-batch summed loss, the head and loss fused in chunks of `chunk_tokens` tokens
    (`train.loss_chunk_tokens`; 0: the whole batch's logits, then the loss). Compiled, the model and the loss are
    one graph. Should the compiler fail, this run continues eagerly and `on_fallback` gets the error in one line."""
    def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return summed_loss(model, batch, chunk_tokens)
    if not compiled:
        return loss
    # Every model compiles this same function; the compiler caches at most 8 versions of it per process and then
    # silently runs eagerly (a study running cells one after another would lose compilation at its ninth cell).
    torch._dynamo.reset()
    return _CompiledOrEager(loss, on_fallback)


class _CompiledOrEager:
    """A compiled function that turns into the eager one for good once the compiler fails. Scoped to one run,
    unlike torch._dynamo's process-wide `suppress_errors`, and the failure is reported instead of silent."""

    def __init__(self, eager: Callable, on_fallback: Callable[[str], None]):
        self.eager, self.on_fallback = eager, on_fallback
        self.compiled: Callable | None = torch.compile(eager, backend=COMPILE_BACKEND)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                # the backward graph is compiled here too, not at the first backward, so its failure lands here
                with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                    return self.compiled(*args)
            except torch._dynamo.exc.TorchDynamoException as error:  # compiler failures, inductor's included
                self.compiled = None
                self.on_fallback(_one_line(error))
        return self.eager(*args)


def _one_line(error: BaseException) -> str:
    """The compiler's error in one line: the backend's own exception where it wrapped one."""
    error = getattr(error, "inner_exception", None) or error
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


@dataclass(frozen=True)
class Validation:
    """One validation pass: `loss`, the mean cross-entropy in nats per target token, and `bpb`, the same
    likelihood in bits per UTF-8 byte of the text the target tokens decode to: summed nats / (ln 2 x target bytes),
    special tokens (EOS, sentinels) counting no bytes. bpb does not depend on the tokenizer; it is None without the
    tokenizer's byte counts or when the targets hold no text."""

    loss: float | None
    bpb: float | None = None
    tokens: int = 0
    bytes: int = 0


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[dict[str, torch.Tensor]], precision: str,
             device: torch.device | str = "cpu", token_bytes: np.ndarray | None = None) -> Validation:
    """The validation loss of `batches`, and with `token_bytes` (`PtlabTokenizer.token_bytes`) its bits per
    byte."""
    was_training = model.training
    model.eval()
    total, count, num_bytes = 0.0, 0, 0
    for batch in batches:
        with autocast(precision, device):
            loss, n = loss_sum(model, batch)
        total += float(loss)
        count += n
        if token_bytes is not None:
            num_bytes += target_bytes(batch["labels"], token_bytes)
    model.train(was_training)
    bpb = bits_per_byte(total, num_bytes) if token_bytes is not None else None
    return Validation(total / max(count, 1), bpb, count, num_bytes)


def evaluate_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]], precision: str,
                  device: torch.device | str = "cpu") -> float:
    """The mean cross-entropy in nats per target token of `batches`."""
    return evaluate(model, batches, precision, device).loss


def batch_rows(step: int, cfg: TrainConfig, world_size: int = 1) -> int:
    """Examples in step `step`'s global batch: train.batch_size, or during the batch-size warmup a linear ramp
    from batch_warmup_start of it, rounded down to a multiple of the rank count (at least one example per rank).
    With the warmup on, the data stream therefore depends on the rank count, as the batch's split always does."""
    cfg_steps = cfg.batch_warmup_steps
    if not cfg_steps or step >= cfg_steps:
        return cfg.batch_size
    fraction = cfg.batch_warmup_start + (1 - cfg.batch_warmup_start) * step / cfg_steps
    return max(world_size, int(cfg.batch_size * fraction) // world_size * world_size)


def examples_before(step: int, cfg: TrainConfig, world_size: int = 1) -> int:
    """Examples the steps before `step` read: where step `step`'s batch starts in the example stream."""
    warmup = min(step, cfg.batch_warmup_steps)
    return sum(batch_rows(s, cfg, world_size) for s in range(warmup)) + (step - warmup) * cfg.batch_size


# torch.compile pays for its compilation (tens of seconds on a CPU) only over a run this long.
COMPILE_MIN_STEPS = {"cpu": 1000, "cuda": 200}


def compile_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether to torch.compile: as configured, or for `auto` when the run is long enough to repay compiling."""
    return cfg.compile is True or (cfg.compile == "auto" and cfg.max_steps >= COMPILE_MIN_STEPS.get(
        device.type, COMPILE_MIN_STEPS["cuda"]))


def fill_model_ids(cfg: Config, vocab_size: int, specials: SpecialIds) -> None:
    """Take the vocabulary size and special ids the model needs (to generate) from the tokenizer."""
    model = cfg.model
    if model.vocab_size is None:
        model.vocab_size = vocab_size
    elif model.vocab_size < vocab_size:
        raise PtlabError(f"config key 'model.vocab_size': {model.vocab_size} is smaller than the tokenizer's "
                         f"{vocab_size}")
    for key, value in (("pad_token_id", specials.pad), ("eos_token_id", specials.eos),
                       ("bos_token_id", specials.bos)):
        if getattr(model, key) is None:
            setattr(model, key, value)
    if model.decoder_start_token_id is None and model.is_encoder_decoder:
        # the family's start token (`spec.decoder_start`): T5 starts decoding from pad, BART from EOS (fairseq's
        # `</s> <s> ...`)
        model.decoder_start_token_id = getattr(specials, model.spec.decoder_start)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations during backward (less memory, about a third more compute). The
    forward is wrapped in place, so parameter names do not change."""
    for block in distributed.blocks(model):
        block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)


class _Prefetcher:
    """Builds the next step's batch in a background thread while the current step trains. A batch depends only
    on its step, so this changes nothing but the waiting: resume stays exact. Calls never overlap."""

    def __init__(self, make: Callable[[int], dict]):
        self.make, self.pool, self.future, self.ahead = make, ThreadPoolExecutor(1, "ptlab-batches"), None, None

    def get(self, step: int) -> dict:
        batch = self.future.result() if self.future is not None and self.ahead == step else self.make(step)
        self.ahead, self.future = step + 1, self.pool.submit(self.make, step + 1)
        return batch

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class LoopHooks:
    """What a run gives `TrainingLoop`: all that pre-training and fine-tuning differ in. The batch source (`batch`),
    the evaluation and what "best" means (`validate`, which may end the run early), the checkpoint (`save`), and
    what the log records and the progress bar show beside the loss. `progress` holds the figures its checkpoints
    keep; the loop adds each step's time to 'seconds', its skips to 'skipped_steps', and `measure`'s counts."""

    progress: dict
    save_validations = False  # a checkpoint after every validation too (fine-tuning: the best so far is state)

    def record(self, entry: dict) -> None:
        """One record of metrics.jsonl."""
        raise NotImplementedError

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This rank's share of step `step`'s batch (0-based), on the host. The loop builds it a step ahead in a
        thread, so it depends on the step alone."""
        raise NotImplementedError

    def measure(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """Counts of this rank's batch that the loop sums over the ranks into `progress` (tokens, FLOPs)."""
        return {}

    def validate(self, done: int) -> bool:
        """Evaluate after `done` steps and record it; True ends the run there (early stopping)."""
        return False

    def save(self, done: int, newest: StepOutcome) -> Path | None:
        """Checkpoint after `done` steps; `newest` is the last step read back."""
        raise NotImplementedError

    def log_fields(self, done: int) -> dict:
        """What a loss record holds beside the step, loss, learning rate and gradient norm."""
        return {}

    def postfix(self) -> dict:
        """What the progress bar shows beside the loss."""
        return {}


@dataclass
class LoopEnd:
    steps: int  # steps done when the loop ended
    checkpoint: Path | None  # the last checkpoint it wrote
    interrupted: str | None = None  # the signal's name when a SIGINT/SIGTERM stopped the run


def _every(done: int, period: int) -> bool:
    return bool(period) and done % period == 0


class TrainingLoop:
    """The one step loop of pre-training and fine-tuning (OLMo-core's `Trainer`): what differs is in `hooks`.

    `cfg` is the run's: its `max_steps`, cadences, learning-rate schedule and step settings. Each step's batch
    comes from `hooks.batch` (built a step ahead in a thread) and runs on the device (`step_on_device`); the
    steps' losses and gradient norms are read back together (`read_pending`, one sync) only where the host needs
    them. Every `log_every` steps and at the last, a loss record; every `eval_every` steps and at the last,
    `hooks.validate`; every `checkpoint_every` steps, at the last, after a validation that ends the run (or after
    every one, `hooks.save_validations`) and on SIGINT/SIGTERM, `hooks.save`. A signal stops the run after that
    checkpoint with an `interrupted` record, unless the step was the run's last. `train.max_bad_steps` non-finite
    steps in a row stop it with an error. Nothing here draws random numbers: a resumed run repeats the steps of an
    uninterrupted one."""

    def __init__(self, trained: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 runtime: distributed.Runtime, hooks: LoopHooks, *, compiled: bool, chunk_tokens: int,
                 spike_guard: SpikeGuard | None = None, desc: str = "training", show: bool = True):
        self.trained, self.optimizer, self.cfg, self.runtime, self.hooks = trained, optimizer, cfg, runtime, hooks
        self.compiled, self.chunk_tokens, self.spike_guard = compiled, chunk_tokens, spike_guard
        self.desc, self.show, self.running = desc, show, 0

    def run(self, start: int) -> LoopEnd:
        """The steps after `start` (0, or a checkpoint's step) up to `cfg.max_steps`, or fewer: early stopping,
        a signal."""
        cfg, runtime, hooks, progress = self.cfg, self.runtime, self.hooks, self.hooks.progress
        loss_fn = training_loss(self.trained, self.compiled, self._compile_fallback, self.chunk_tokens)
        batches = _Prefetcher(hooks.batch)
        bar = tqdm(total=cfg.max_steps, initial=start, desc=self.desc, unit="step", disable=not self.show,
                   dynamic_ncols=True)
        pending: list[tuple[int, PendingStep]] = []  # steps not read back yet: (step number, its figures)
        outcome, bad_in_row, checkpoint = None, 0, None
        with StopSignals() as signals, contextlib.closing(batches), contextlib.closing(bar):
            for step in range(start, cfg.max_steps):
                started = time.perf_counter()
                lr = cfg.lr * lr_factor(step, cfg)
                batch = batches.get(step)
                counts = hooks.measure(batch)
                total_labels, *sums = runtime.sum(label_count(batch), *counts.values())
                self.running = done = step + 1
                pending.append((done, step_on_device(self.trained, self.optimizer, loss_fn, batch, lr, total_labels,
                                                     cfg, runtime, self.spike_guard)))
                last = done == cfg.max_steps
                validate = last or _every(done, cfg.eval_every)
                stop = runtime.any(signals.received is not None)
                save = (stop or last or _every(done, cfg.checkpoint_every)
                        or (validate and hooks.save_validations))
                logged = last or done % cfg.log_every == 0
                if logged or save or validate:  # the only places the host waits for the device
                    outcome, bad_in_row = self._read(pending, bad_in_row)
                    pending = []
                progress["seconds"] += time.perf_counter() - started
                for key, value in zip(counts, sums):
                    progress[key] += value
                if logged and outcome.applied:
                    hooks.record({"step": done, "loss": outcome.loss, "lr": lr, "grad_norm": outcome.grad_norm,
                                  **hooks.log_fields(done)})
                finished = (validate and hooks.validate(done)) or last
                if save or finished:
                    checkpoint = hooks.save(done, outcome)
                bar.update(1)
                if outcome is not None:
                    bar.set_postfix(loss=f"{outcome.loss:.3f}", **hooks.postfix())
                if finished:
                    return LoopEnd(done, checkpoint)
                if stop:
                    name = signals.received or "SIGTERM"
                    hooks.record({"step": done, "event": "interrupted", "signal": name,
                                  "checkpoint": str(checkpoint)})
                    return LoopEnd(done, checkpoint, name)
        return LoopEnd(start, None)

    def _read(self, pending: list[tuple[int, PendingStep]], bad_in_row: int) -> tuple[StepOutcome, int]:
        """`read_pending` for this run: the newest step's outcome and the bad steps in a row."""
        outcomes, bad_in_row = read_pending(pending, bad_in_row, self.runtime, self.cfg.max_bad_steps,
                                            self.hooks.record, self.hooks.save)
        self.hooks.progress["skipped_steps"] += sum(not outcome.applied for outcome in outcomes)
        return outcomes[-1], bad_in_row

    def _compile_fallback(self, error: str) -> None:
        if self.runtime.is_main:
            print(f"ptlab: warning: torch.compile failed, this run continues eagerly ({error})", file=sys.stderr,
                  flush=True)
        self.hooks.record({"step": self.running, "event": "compile_fallback", "error": error})


def data_identity(cfg: Config, train: TrainingStream, tokenizer_fingerprint: str,
                  init: InitSource | None = None) -> dict:
    """What must not change between a checkpoint and its resumption for the data stream to continue exactly (a
    mixture's sources, weights and caps included), and where the run started (`init`)."""
    identity = {"train_data": train.fingerprint, "tokenizer": tokenizer_fingerprint,
                "objective": cfg.objective.to_dict(), "seed": cfg.seed, "batch_size": cfg.train.batch_size,
                "inputs_length": cfg.objective.inputs_length}
    if cfg.train.batch_warmup_steps:  # the ramp moves every later batch's examples
        identity["batch_warmup"] = [cfg.train.batch_warmup_steps, cfg.train.batch_warmup_start]
    if init is not None:
        identity["init"] = init.record()
    return identity


def check_mixture_capacity(data: PretrainBatches, cfg: TrainConfig) -> None:
    """A mixture whose every source is capped must hold the run's examples (checked before the first step)."""
    capacity = data.sampler.capacity
    if capacity is not None and capacity < cfg.max_steps * cfg.batch_size:
        raise PtlabError(f"config key 'data.mixture': the sources' epochs_cap allow {capacity:,} examples in all, "
                         f"fewer than train.max_steps x train.batch_size = {cfg.max_steps * cfg.batch_size:,}; "
                         f"raise a cap or lower train.max_steps to {capacity // cfg.batch_size}")


def pretrain(cfg: Config, show_progress: bool = True, resume: str = "auto",
             allow_data_change: bool = False) -> PretrainResult:
    """Run pre-training as configured; returns where the final checkpoint is and the headline figures.

    `resume`: "auto" continues from the run directory's newest valid checkpoint when there is one, "always"
    requires one, "never" deletes the run directory's checkpoints and metrics and starts afresh.
    """
    runtime = distributed.setup(cfg.train.device)
    try:
        with denormals_restored():
            return _Trainer(cfg, runtime, show_progress).run(resume, allow_data_change)
    finally:
        distributed.teardown()


class _Trainer(LoopHooks):
    """Pre-training: the data, model and checkpoints of a run, and its hooks into `TrainingLoop`."""

    def __init__(self, cfg: Config, runtime: distributed.Runtime, show_progress: bool):
        self.cfg, self.runtime = cfg, runtime
        self.show = show_progress and runtime.is_main
        self.run_dir = Path(cfg.run_dir)
        self.log: MetricsLog | None = None
        self.history: list[dict] = []

    def note(self, message: str) -> None:
        if self.runtime.is_main:
            print(f"ptlab: {message}", file=sys.stderr, flush=True)

    def _prepare_data(self):
        """One process trains the tokenizer and writes the shards, then the others read them. A failure there is
        shared with every rank (instead of leaving them waiting at a barrier forever)."""
        def prepare(show: bool):
            tokenizer = ensure_tokenizer(self.cfg.data, show)
            return tokenizer, ensure_shards(self.cfg.data, tokenizer, show)

        return self.runtime.main_first("preparing the data", lambda: prepare(self.show), lambda: prepare(False))

    def _prepare_init(self, resume: str) -> InitSource | None:
        """Rank 0 imports the init model and copies its tokenizer into the run, then the others read them; a
        failure there stops every rank."""
        if self.cfg.init is None:
            return None
        resuming = resume != "never" and bool(list_checkpoints(self.run_dir))
        return self.runtime.main_first("preparing init", lambda: prepare_init(self.cfg, resuming=resuming),
                                       lambda: prepare_init(self.cfg, create=False, resuming=resuming))

    def _start_record(self, init: InitSource | None) -> dict:
        """The run's data and starting point, for the start event of metrics.jsonl."""
        record = {}
        if self.train_stream.weights:
            record["mixture"] = dict(self.train_stream.weights)
        if init is not None:
            record["init"] = init.record()
        return record

    def _check_config(self, objective) -> None:
        cfg, world = self.cfg, self.runtime.world_size
        if objective.decoder_only and cfg.model.is_encoder_decoder:
            raise PtlabError(f"objective {objective.name} is for decoder-only models; model.family "
                             f"{cfg.model.family} is an encoder-decoder")
        if cfg.train.batch_size % world:
            raise PtlabError(f"config key 'train.batch_size': {cfg.train.batch_size} examples do not split evenly "
                             f"over {world} processes")
        if world > 1 and cfg.train.distributed == "fsdp" and cfg.model.shared_encoder_decoder:
            raise PtlabError("config key 'train.distributed': FSDP cannot shard a shared encoder-decoder's blocks "
                             "twice; use ddp")

    def run(self, resume: str, allow_data_change: bool) -> PretrainResult:
        configure_host(self.cfg.train.threads)
        self._prepare(resume, allow_data_change)
        self._open_log()
        try:
            return self._train()
        finally:
            if self.log is not None:
                self.log.close()

    def record(self, entry: dict) -> None:
        if self.log is not None:
            self.log.write(entry)
        self.history.append(entry)

    def _prepare(self, resume: str, allow_data_change: bool) -> None:
        """Data, model, optimizer and the batches, restored from the newest checkpoint when resuming."""
        cfg, runtime, train_cfg = self.cfg, self.runtime, self.cfg.train
        init = self._prepare_init(resume)
        objective = resolve_objective(cfg.objective, quiet=not runtime.is_main)
        self._check_config(objective)
        if resume == "never" and runtime.is_main:
            for stale in (self.run_dir / CHECKPOINTS, self.run_dir / "tensorboard"):
                shutil.rmtree(stale, ignore_errors=True)
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        checkpoint = None if resume == "never" else latest_valid_checkpoint(
            self.run_dir, warn=lambda m: self.note(f"warning: {m}"))
        if resume == "always" and checkpoint is None:  # before the data is prepared, which may take long
            raise PtlabError(f"nothing to resume: no valid checkpoint in {self.run_dir / CHECKPOINTS}")
        self.tokenizer, (self.train_stream, val_shard) = self._prepare_data()
        specials = self.tokenizer.specials
        fill_model_ids(cfg, self.tokenizer.vocab_size, specials)
        self.identity = data_identity(cfg, self.train_stream, self.tokenizer.fingerprint(), init)
        self.init, self.checkpoint = init, checkpoint
        self.state = load_trainer_state(checkpoint) if checkpoint is not None else None
        if self.state is not None:
            self._check_identity(self.state["data"], self.identity, checkpoint, allow_data_change)
        self._build_model()
        progress = self.state["progress"] if self.state is not None else {}
        self.progress = {"tokens": progress.get("tokens", 0.0), "flops": progress.get("flops", 0.0),
                         "seconds": progress.get("seconds", 0.0), "skipped_steps": progress.get("skipped_steps", 0)}
        self.start_step = self.state["step"] if self.state is not None else 0
        if self.state is not None:
            self.note(f"resuming {self.run_dir} from step {self.start_step} ({checkpoint.name})")
        self.train_data = pretrain_batches(cfg, objective, self.train_stream, specials)
        check_mixture_capacity(self.train_data, train_cfg)
        self.eval_set = ([to_tensors(model_inputs(b), runtime.device) for b in validation_batches(
            pretrain_batches(cfg, objective, val_shard, specials, validation=True), cfg)] if val_shard else [])

    def _build_model(self) -> None:
        """The model with its starting weights (the checkpoint's, the init's or fresh), wrapped for the rank
        layout, and its optimizer; a resumed run also gets its optimizer state and RNG back."""
        cfg, runtime, train_cfg, device = self.cfg, self.runtime, self.cfg.train, self.runtime.device
        checkpoint, init = self.checkpoint, self.init
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)
        if checkpoint is not None:
            if not is_sharded(checkpoint):  # a sharded one is loaded once the model has its final layout
                load_weights(model, load_file(str(checkpoint / "model.safetensors")),
                             f"{checkpoint}/model.safetensors")
        elif init is not None and is_sharded(init.checkpoint):  # an FSDP run's checkpoint, consolidated
            load_sharded_weights(init.checkpoint, model)
        elif init is not None:  # init only seeds step 0: a resumed run continues from its own checkpoint
            load_weights(model, load_file(str(init.checkpoint / "model.safetensors")),
                         f"{init.checkpoint}/model.safetensors")
        model.to(device)
        if train_cfg.activation_checkpointing:
            enable_activation_checkpointing(model)
        self.model = model
        self.trained = distributed.wrap(model, runtime, train_cfg.distributed)
        self.compiled = compile_enabled(train_cfg, device)
        self.optimizer = build_optimizer(self.trained, train_cfg)
        if self.state is not None:
            if is_sharded(checkpoint):  # resharded to this run's layout: any rank count, FSDP, DDP or one process
                load_sharded(checkpoint, self.trained, self.optimizer)
            else:
                set_optimizer_state_dict(self.trained, self.optimizer, optim_state_dict=self.state["optimizer"],
                                         options=StateDictOptions(full_state_dict=True))
            torch.set_rng_state(self.state["rng"]["torch"])
            if device.type == "cuda" and self.state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(self.state["rng"]["cuda"], device)
        self.spike_guard = (SpikeGuard(train_cfg.spike_sigmas, train_cfg.spike_window, device)
                            if train_cfg.spike_sigmas else None)
        if self.spike_guard is not None and self.state is not None and "spike_guard" in self.state:
            self.spike_guard.load_state_dict(self.state["spike_guard"])
        model.train()

    def _open_log(self) -> None:
        """metrics.jsonl (and the trackers) on the main process, opened with a start or resume record."""
        cfg, runtime, device = self.cfg, self.runtime, self.runtime.device
        self.parameters = count_parameters(self.model)
        self.peak, peak_source = peak_tflops(device, cfg.train.precision, cfg.train.peak_tflops)
        if not runtime.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "config.yaml")
        resumed = self.state is not None
        self.log = MetricsLog(self.run_dir, resume_step=self.start_step if resumed else None, config=cfg)
        data = self.train_data
        self.log.write({"event": "resume" if resumed else "start", "step": self.start_step,
                        "parameters": self.parameters, "raw_length": data.raw_length,
                        "inputs_length": data.inputs_length, "targets_length": data.targets_length,
                        "train_tokens": self.train_stream.num_tokens, "vocab_size": self.tokenizer.vocab_size,
                        "world_size": runtime.world_size, "device": str(device), "compiled": self.compiled,
                        "peak_tflops": self.peak, "peak_source": peak_source, **self._start_record(self.init)})

    def _evaluate(self, step: int) -> Validation:
        """The validation pass after `step` steps, recorded."""
        if not self.eval_set:
            return Validation(None)
        validation = evaluate(self.trained, self.eval_set, self.cfg.train.precision, self.runtime.device,  # eager
                              self.tokenizer.token_bytes)
        self.record({"step": step, "val_loss": validation.loss, "val_bpb": validation.bpb})
        return validation

    def _mfu(self) -> float | None:
        progress = self.progress
        if not progress["flops"]:
            return None
        return progress["flops"] / max(progress["seconds"], 1e-9) / 1e12 / (self.peak * self.runtime.world_size)

    def _result(self, steps: int, checkpoint: Path | None, initial_val: Validation, final_val: Validation,
                interrupted=None) -> PretrainResult:
        progress = self.progress
        return PretrainResult(self.run_dir, checkpoint, steps, initial_val.loss, final_val.loss,
                              progress["tokens"] / max(progress["seconds"], 1e-9), progress["seconds"],
                              self.parameters, self.history, self.start_step if self.state is not None else None,
                              interrupted, progress["skipped_steps"], self._mfu(), initial_val.bpb, final_val.bpb)

    def _train(self) -> PretrainResult:
        """The steps from the start (or the checkpoint) to train.max_steps, the last with the final evaluation and
        checkpoint (`TrainingLoop`); SIGINT/SIGTERM stop it after a step with a checkpoint."""
        train_cfg = self.cfg.train
        self.val = self._evaluate(0) if self.state is None else next(
            (Validation(r["val_loss"], r.get("val_bpb")) for r in read_metrics(self.run_dir)
             if r.get("step") == 0 and "val_loss" in r), Validation(None))  # val_bpb: absent in older runs
        initial_val, self.val_step = self.val, 0
        loop = TrainingLoop(self.trained, self.optimizer, train_cfg, self.runtime, self, compiled=self.compiled,
                            chunk_tokens=training_chunk_tokens(train_cfg.loss_chunk_tokens, self.cfg.model.vocab_size,
                                                               train_cfg.precision),
                            spike_guard=self.spike_guard, desc="pre-training", show=self.show)
        end = loop.run(self.start_step)
        if end.interrupted:
            return self._result(end.steps, end.checkpoint, initial_val, self.val, end.interrupted)
        final = end.checkpoint
        if self.start_step >= train_cfg.max_steps and self.checkpoint is not None:
            self.note(f"{self.run_dir} already finished {self.start_step} steps "
                      f"(train.max_steps={train_cfg.max_steps})")
            final = self.checkpoint
            saved = json.loads((final / "meta.json").read_text(encoding="utf-8")).get("metrics", {})
            self.val = Validation(saved.get("val_loss"), saved.get("val_bpb"))  # the finished run's, not step 0's
        result = self._result(train_cfg.max_steps, final, initial_val, self.val)
        self.record({"event": "end", "step": train_cfg.max_steps, "val_loss": self.val.loss,
                     "val_bpb": self.val.bpb,
                     "tokens_per_second": result.tokens_per_second, "mfu": result.mfu,
                     "skipped_steps": self.progress["skipped_steps"], "checkpoint": str(final)})
        return result

    # LoopHooks: pre-training's batches, evaluation and checkpoints

    def batch(self, step: int) -> dict:
        runtime, train_cfg = self.runtime, self.cfg.train
        share = batch_rows(step, train_cfg, runtime.world_size) // runtime.world_size
        return self.train_data.batch(examples_before(step, train_cfg, runtime.world_size) + runtime.rank * share,
                                     share)

    def measure(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        return {"tokens": batch_tokens(batch), "flops": self._flops(batch)}

    def validate(self, done: int) -> bool:
        """The validation loss; pre-training never stops early (its result is the last weights)."""
        self.val, self.val_step = self._evaluate(done), done
        return False

    def save(self, done: int, newest: StepOutcome) -> Path | None:
        """The final checkpoint holds the final validation's figures, the others the step's loss."""
        final = done == self.cfg.train.max_steps and self.val_step == done
        metrics = {"val_loss": self.val.loss, "val_bpb": self.val.bpb} if final else {"loss": newest.loss}
        return self._save(done, self.model, self.trained, self.optimizer, self.tokenizer, self.identity,
                          dict(self.progress), metrics)

    def log_fields(self, done: int) -> dict:
        progress = self.progress
        return {"tokens": progress["tokens"], "tokens_per_second": progress["tokens"] / progress["seconds"],
                "tflops": progress["flops"] / progress["seconds"] / 1e12, "mfu": self._mfu(),
                "seconds": progress["seconds"], **self._source_tokens(done)}

    def postfix(self) -> dict:
        val, progress = self.val, self.progress
        return {"val": f"{val.loss:.3f}" if val.loss is not None else "-",
                "bpb": f"{val.bpb:.3f}" if val.bpb is not None else "-",
                "tok_s": f"{progress['tokens'] / progress['seconds']:,.0f}", "mfu": f"{self._mfu():.1%}"}

    def _source_tokens(self, done: int) -> dict:
        """A mixture's cumulative chunk tokens per source after `done` steps (a pure function of the step)."""
        tokens = self.train_data.source_tokens(examples_before(done, self.cfg.train, self.runtime.world_size))
        return {"source_tokens": tokens} if tokens else {}

    @functools.cache
    def _flops_per_example(self, inputs: int, targets: int) -> float:
        return training_flops(self.cfg.model, inputs, targets)

    def _flops(self, batch: dict[str, np.ndarray]) -> float:
        """Training FLOPs of the batch's padded shapes."""
        if "decoder_input_ids" in batch:
            rows, inputs = batch["input_ids"].shape
            return rows * self._flops_per_example(inputs, batch["labels"].shape[1])
        rows, length = batch["input_ids"].shape
        return rows * self._flops_per_example(0, length)

    def _check_identity(self, saved: dict, current: dict, checkpoint: Path, allow_data_change: bool) -> None:
        changed = [key for key in current if saved.get(key) != current[key]]
        if changed and not allow_data_change:
            raise PtlabError(f"{checkpoint} was trained on different data settings ({', '.join(changed)} changed); "
                             "resuming would not continue the same data stream. Pass --allow-data-change to "
                             "resume anyway, or use a new run_dir")
        if changed:
            self.note(f"warning: resuming although {', '.join(changed)} changed (--allow-data-change)")

    def _save(self, step: int, model: nn.Module, trained: nn.Module, optimizer, tokenizer, identity: dict,
              progress: dict, metrics: dict) -> Path | None:
        """One process or DDP: the main process writes the full state (safetensors). FSDP on several ranks: every
        rank writes its own shards of model and optimizer (DCP), then rank 0 adds the rest and renames the
        checkpoint into place."""
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.runtime.device) if self.runtime.device.type == "cuda" else None}
        trainer_state = {"step": step, "rng": rng, "progress": progress,
                         "data": {**identity, "examples_seen": examples_before(step, self.cfg.train,
                                                                               self.runtime.world_size)}}
        if self.spike_guard is not None:
            trainer_state["spike_guard"] = self.spike_guard.state_dict()
        self._background_saves.wait()  # the previous background save is committed before the next starts
        if self.runtime.distributed and self.cfg.train.distributed == "fsdp":
            return self._save_sharded(step, trained, optimizer, tokenizer, trainer_state, metrics)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        trainer_state["optimizer"] = get_optimizer_state_dict(trained, optimizer, options=options)
        if not self.runtime.is_main:
            self.runtime.barrier()
            return None
        weights = state_dict_for_saving(model)

        def write(weights: dict, trainer_state: dict) -> Path:
            return save_checkpoint(self.run_dir, step, weights, self.cfg, tokenizer, trainer_state, metrics,
                                   keep=self.cfg.train.keep_checkpoints)

        if self._in_background(step):
            self._background_saves.start_writing(functools.partial(write, host_snapshot(weights),
                                                                   host_snapshot(trainer_state)))
            path = checkpoint_dir(self.run_dir, step)
        else:
            path = write(weights, trainer_state)
        self.runtime.barrier()
        return path

    def _in_background(self, step: int) -> bool:
        """`train.async_checkpoint`: every save but the final one is written while training goes on."""
        return self.cfg.train.async_checkpoint and step < self.cfg.train.max_steps

    def _save_sharded(self, step: int, trained: nn.Module, optimizer, tokenizer, trainer_state: dict,
                      metrics: dict) -> Path:
        """All ranks write into one staging directory; after the last shard (DCP's index is written once every
        rank has reported) rank 0 checksums and renames it, so a crash at any point leaves no partial step_N.
        With `train.async_checkpoint` all but the final save are written in the background."""
        target = checkpoint_dir(self.run_dir, step)
        if self.runtime.is_main:
            start_checkpoint(target)
        self.runtime.barrier()

        def commit() -> None:
            if self.runtime.is_main:
                with failed_writes_named(target, self.run_dir):
                    finish_checkpoint(target, self.cfg, tokenizer, step, trainer_state, metrics)
                prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)

        if self._in_background(step):
            self._background_saves.start(staging_dir(target), trained, optimizer, commit)
            return target
        save_sharded(staging_dir(target), trained, optimizer)
        commit()
        self.runtime.barrier()
        return target

    @functools.cached_property
    def _background_saves(self) -> BackgroundSaves:
        saves = BackgroundSaves()
        distributed.before_teardown(saves.wait)  # a save still in flight when the run ends is committed
        return saves
