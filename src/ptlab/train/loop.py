"""The pre-training loop: batches from the objective, AdamW, schedule, clipping, accumulation, eval, checkpoints."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ptlab.config import Config, save_config
from ptlab.data import ensure_shards, ensure_tokenizer
from ptlab.data.pipeline import IGNORE_INDEX, pretrain_batches, resolve_objective, validation_batches
from ptlab.errors import PtlabError
from ptlab.models import build_model, count_parameters
from ptlab.objectives import SpecialIds
from ptlab.train.checkpoint import save_checkpoint
from ptlab.train.metrics import MetricsLog
from ptlab.train.optim import build_optimizer, build_scheduler


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


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def batch_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if model.is_encoder_decoder:
        return model(batch["input_ids"], batch["decoder_input_ids"], batch["attention_mask"])
    return model(batch["input_ids"], position_ids=batch["position_ids"], segment_ids=batch["segment_ids"],
                 prefix_mask=batch["prefix_mask"])


def batch_tokens(batch: dict[str, np.ndarray]) -> int:
    """Tokens the model reads and predicts in a batch (for throughput)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum()) + int((batch["labels"] != IGNORE_INDEX).sum())
    return int((batch["segment_ids"] > 0).sum())


def loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed token cross-entropy over non-ignored labels, and how many labels that was."""
    labels = batch["labels"]
    logits = batch_logits(model, batch)
    loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: list[dict[str, torch.Tensor]], precision: str) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        with autocast(precision):
            loss, n = loss_sum(model, batch)
        total += float(loss)
        count += n
    model.train(was_training)
    return total / max(count, 1)


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
        # T5 starts decoding from pad, BART from EOS (fairseq's `</s> <s> ...`)
        model.decoder_start_token_id = specials.eos if model.family == "bart" else specials.pad


def pretrain(cfg: Config, show_progress: bool = True) -> PretrainResult:
    """Run pre-training as configured; returns where the final checkpoint is and the headline figures."""
    train_cfg = cfg.train
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    # Tiny optimizer statistics become subnormal floats after a few hundred steps, which x86 CPUs handle
    # in microcode, doubling step time; flushing them to zero changes nothing measurable in training.
    torch.set_flush_denormal(True)
    objective = resolve_objective(cfg.objective)
    if objective.decoder_only and cfg.model.is_encoder_decoder:
        raise PtlabError(f"objective {objective.name} is for decoder-only models; model.family {cfg.model.family} "
                         "is an encoder-decoder")
    tokenizer = ensure_tokenizer(cfg.data, show_progress)
    specials = tokenizer.specials
    fill_model_ids(cfg, tokenizer.vocab_size, specials)
    train_shard, val_shard = ensure_shards(cfg.data, tokenizer, show_progress)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    model.train()
    optimizer = build_optimizer(model, train_cfg)
    scheduler = build_scheduler(optimizer, train_cfg)

    train_data = pretrain_batches(cfg, objective, train_shard, specials)
    eval_set = ([to_tensors(b) for b in validation_batches(pretrain_batches(cfg, objective, val_shard, specials,
                                                                            validation=True), cfg)]
                if val_shard else [])

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    log = MetricsLog(run_dir, append=False)
    parameters = count_parameters(model)
    log.write({"event": "start", "parameters": parameters, "raw_length": train_data.raw_length,
               "inputs_length": train_data.inputs_length, "targets_length": train_data.targets_length,
               "train_tokens": train_shard.num_tokens, "vocab_size": tokenizer.vocab_size})

    history: list[dict] = []

    def run_eval(step: int) -> float | None:
        if not eval_set:
            return None
        val_loss = evaluate_loss(model, eval_set, train_cfg.precision)
        record = {"step": step, "val_loss": val_loss}
        log.write(record)
        history.append(record)
        return val_loss

    initial_val = run_eval(0)
    tokens_done, train_seconds = 0, 0.0
    val_loss = initial_val
    bar = tqdm(total=train_cfg.max_steps, desc="pre-training", unit="step", disable=not show_progress,
               dynamic_ncols=True)
    for step in range(train_cfg.max_steps):
        started = time.perf_counter()
        batch = train_data.batch(step * train_cfg.batch_size, train_cfg.batch_size)
        total_labels = int((batch["labels"] != IGNORE_INDEX).sum())
        step_tokens = batch_tokens(batch)
        loss_total = 0.0
        rows = len(batch["labels"])  # packed decoder batches have fewer rows than examples
        for part_rows in np.array_split(np.arange(rows), min(train_cfg.grad_accum, rows)):
            part = to_tensors({k: v[part_rows] for k, v in batch.items()})
            with autocast(train_cfg.precision):
                part_loss, _ = loss_sum(model, part)
            (part_loss / total_labels).backward()
            loss_total += float(part_loss.detach())
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
                     if train_cfg.grad_clip > 0 else torch.tensor(float("nan")))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_total / total_labels
        if not math.isfinite(loss):
            log.write({"step": step + 1, "event": "non_finite_loss", "loss": loss})
            raise PtlabError(f"loss became {loss} at step {step + 1}; lower train.lr or use train.precision=fp32")
        train_seconds += time.perf_counter() - started
        tokens_done += step_tokens
        tokens_per_second = tokens_done / train_seconds
        done = step + 1
        if done % train_cfg.log_every == 0 or done == train_cfg.max_steps:
            record = {"step": done, "loss": loss, "lr": lr, "grad_norm": float(grad_norm),
                      "tokens": tokens_done, "tokens_per_second": tokens_per_second, "seconds": train_seconds}
            log.write(record)
            history.append(record)
        if train_cfg.eval_every and done % train_cfg.eval_every == 0 and done != train_cfg.max_steps:
            val_loss = run_eval(done)
        if train_cfg.checkpoint_every and done % train_cfg.checkpoint_every == 0 and done != train_cfg.max_steps:
            save_checkpoint(run_dir, done, model, cfg, tokenizer, optimizer, scheduler, {"loss": loss})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{val_loss:.3f}" if val_loss is not None else "-",
                        tok_s=f"{tokens_per_second:,.0f}")
    bar.close()
    final_val = run_eval(train_cfg.max_steps)
    checkpoint = save_checkpoint(run_dir, train_cfg.max_steps, model, cfg, tokenizer, optimizer, scheduler,
                                 {"val_loss": final_val})
    log.write({"event": "end", "step": train_cfg.max_steps, "val_loss": final_val,
               "tokens_per_second": tokens_done / max(train_seconds, 1e-9), "checkpoint": str(checkpoint)})
    log.close()
    return PretrainResult(run_dir, checkpoint, train_cfg.max_steps, initial_val, final_val,
                          tokens_done / max(train_seconds, 1e-9), train_seconds, parameters, history)
