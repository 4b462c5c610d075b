"""Text-to-text fine-tuning, for encoder-decoders and decoder-only models, with early stopping on the validation
score (see `ptlab.downstream.evaluate` for the scoring).

An encoder-decoder reads the input and produces the target. A decoder-only model reads `input </s> target </s>` with
the loss on the target only.

    result = finetune(load_config("configs/finetune-rt.yaml", [], cls=FinetuneConfig))
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from tqdm import tqdm

from ptlab.config import Config, FinetuneConfig, check_seed, save_config
from ptlab.data.tasks import Task, resolve_task
from ptlab.data.tokenizer import PtlabTokenizer, load_tokenizer
from ptlab.downstream.evaluate import _write_predictions, encode_pairs, make_batch, score
from ptlab.errors import PtlabError
from ptlab.files import write_text_atomic
from ptlab.models import build_model, count_parameters
from ptlab.models.head_loss import training_chunk_tokens
from ptlab.train.checkpoint import (
    CHECKPOINTS,
    latest_valid_checkpoint,
    load_checkpoint_tokenizer,
    load_model,
    load_trainer_state,
    load_weights,
    save_checkpoint,
    write_checkpoint,
)
from ptlab.train.distributed import Runtime, pick_device
from ptlab.train.host import configure_host, denormals_restored
from ptlab.train.loop import compile_enabled, fill_model_ids, training_loss
from ptlab.train.optim import build_optimizer, lr_factor
from ptlab.train.runlog import MetricsLog, read_metrics
from ptlab.train.step import PendingStep, StopSignals, label_count, read_pending, step_on_device


@dataclass
class FinetuneResult:
    run_dir: Path
    checkpoint: Path
    best_step: int
    validation: dict[str, float]
    test: dict[str, float] | None
    steps: int
    seconds: float  # training, validation and test scoring, summed over resumptions
    history: list[dict] = field(default_factory=list)
    interrupted: str | None = None  # the signal's name when a SIGINT/SIGTERM stopped the run


def _initial_model(cfg: FinetuneConfig) -> tuple[nn.Module, PtlabTokenizer]:
    if cfg.init != "none":
        return load_model(cfg.init), load_checkpoint_tokenizer(cfg.init)
    tokenizer = load_tokenizer(cfg.tokenizer)
    holder = Config(model=copy.deepcopy(cfg.model))
    fill_model_ids(holder, tokenizer.vocab_size, tokenizer.specials)
    torch.manual_seed(cfg.seed)
    return build_model(holder.model), tokenizer


def finetune_identity(cfg: FinetuneConfig, task: Task, max_steps: int) -> dict:
    """What must not change between a fine-tuning checkpoint and its resumption."""
    train = cfg.train
    return {"task": task.name, "train_file": str(task.files.get("train")), "init": cfg.init, "seed": cfg.seed,
            "batch_size": train.batch_size, "lr": train.lr, "max_steps": max_steps, "eval_every": train.eval_every,
            "patience": cfg.patience, "metric": task.metrics[0]}


def finetune(cfg: FinetuneConfig, show_progress: bool = True, resume: str = "auto") -> FinetuneResult:
    """Fine-tune as configured; keeps the weights with the best validation score (first metric) in RUN_DIR/best,
    and scores them on the test split when there is one.

    The steps run on the trainer's machinery (`ptlab.train.step`: autocast, accumulation, clipping, non-finite
    skips, optional compile). A checkpoint is written at every evaluation, every `train.checkpoint_every` steps and
    on SIGINT/SIGTERM; `resume` as for `pretrain` ("auto" continues the run directory's newest valid checkpoint,
    "always" requires one, "never" starts afresh), and a resumed run ends with the scores of an uninterrupted one.
    """
    with denormals_restored():
        return _finetune(cfg, show_progress, resume)


def _finetune(cfg: FinetuneConfig, show_progress: bool, resume: str) -> FinetuneResult:
    train_cfg = cfg.train
    check_seed(cfg.seed, "config key 'seed'")  # a config that skipped validate(): not numpy's error mid-run
    configure_host(train_cfg.threads)
    task = resolve_task(cfg.task)
    train = task.examples("train")
    for split in ("validation", "test"):  # a broken split fails now, not after training
        if task.files.get(split) is not None:
            task.examples(split)
    run_dir = Path(cfg.run_dir)
    if resume == "never":
        for stale in (run_dir / CHECKPOINTS, run_dir / "best", run_dir / "tensorboard"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in ("metrics.jsonl", "scores.json", "test_predictions.jsonl"):
            (run_dir / stale).unlink(missing_ok=True)
    model, tokenizer = _initial_model(cfg)
    runtime = Runtime(0, 1, pick_device(train_cfg.device))
    device = runtime.device
    model.to(device).train()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    train = encode_pairs(train, tokenizer, task)
    has_validation = task.files.get("validation") is not None
    steps_per_epoch = math.ceil(len(train) / train_cfg.batch_size)
    max_steps = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
    schedule = dataclasses.replace(train_cfg, max_steps=max_steps)
    optimizer = build_optimizer(model, train_cfg)
    identity = finetune_identity(cfg, task, max_steps)
    checkpoint = None if resume == "never" else latest_valid_checkpoint(
        run_dir, warn=lambda m: print(f"ptlab: warning: {m}", file=sys.stderr))
    if resume == "always" and checkpoint is None:
        raise PtlabError(f"nothing to resume: no valid checkpoint in {run_dir / CHECKPOINTS}")
    progress = {"best_score": -math.inf, "best_step": 0, "since_best": 0, "seconds": 0.0, "skipped_steps": 0,
                "finished": False}
    start_step = 0
    if checkpoint is not None:
        state = load_trainer_state(checkpoint)
        changed = [k for k in identity if state["data"].get(k) != identity[k]]
        if changed:
            raise PtlabError(f"{checkpoint} was fine-tuned with other settings ({', '.join(changed)} changed); "
                             f"use --restart or a new run_dir")
        load_weights(model, load_file(str(checkpoint / "model.safetensors")), f"{checkpoint}/model.safetensors")
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
        torch.set_rng_state(state["rng"]["torch"])
        start_step, progress = state["step"], state["progress"]
    loss_fn = training_loss(model, compile_enabled(schedule, device), on_fallback=lambda error: (
        print(f"ptlab: warning: compiling failed, fine-tuning eagerly ({error})", file=sys.stderr),
        record({"step": start_step, "event": "compile_fallback", "error": error})),
        chunk_tokens=training_chunk_tokens(train_cfg.loss_chunk_tokens, model.config.vocab_size))
    pad = tokenizer.specials.pad
    rng = np.random.default_rng(cfg.seed)
    order = np.concatenate([rng.permutation(len(train)) for _ in range(math.ceil(max_steps / steps_per_epoch) + 1)])
    metric = task.metrics[0]
    log = MetricsLog(run_dir, resume_step=start_step if checkpoint is not None else None, config=cfg)
    history: list[dict] = read_metrics(run_dir) if checkpoint is not None else []

    def record(entry: dict) -> None:
        history.append(entry)
        log.write(entry)

    def save_best(step: int) -> None:
        scores = {f"val_{metric}": progress["best_score"]} if has_validation else {}
        write_checkpoint(run_dir / "best", model, Config(run_dir=str(run_dir), model=model.config), tokenizer,
                         step, metrics=scores)

    def validate(step: int) -> bool:
        """Score on validation and keep the best weights on disk; True when patience ran out."""
        if not has_validation:
            return False
        scores, _ = score(model, tokenizer, task, "validation", train_cfg.precision, device=device)
        model.train()
        record({"step": step, **{f"val_{k}": v for k, v in scores.items()}})
        if scores[metric] > progress["best_score"]:
            progress.update(best_score=scores[metric], best_step=step, since_best=0)
            save_best(step)
        else:
            progress["since_best"] += 1
        return progress["since_best"] >= cfg.patience

    def checkpoint_now(step: int) -> Path:
        rng_state = {"torch": torch.get_rng_state()}
        optimizer_state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        trainer_state = {"step": step, "optimizer": optimizer_state, "rng": rng_state, "progress": dict(progress),
                         "data": identity}
        return save_checkpoint(run_dir, step, model, Config(run_dir=str(run_dir), model=model.config), tokenizer,
                               trainer_state, keep=2)

    eval_every = train_cfg.eval_every or steps_per_epoch
    step, bad_in_row, interrupted = start_step, 0, None
    pending: list[tuple[int, PendingStep]] = []  # steps not read back from the device yet
    outcome = None
    try:
        with StopSignals() as signals:
            bar = tqdm(total=max_steps, initial=start_step, desc=f"fine-tuning on {task.name}", unit="step",
                       disable=not show_progress)
            while not progress["finished"] and step < max_steps:
                step += 1
                started = time.perf_counter()
                lr = train_cfg.lr * lr_factor(step - 1, schedule)
                rows = order[(step - 1) * train_cfg.batch_size: step * train_cfg.batch_size]
                batch = make_batch(model, [train[i] for i in rows], pad)
                pending.append((step, step_on_device(model, optimizer, loss_fn, batch, lr, label_count(batch),
                                                     train_cfg, runtime)))
                evaluated = step % eval_every == 0 or step == max_steps
                logged = step % train_cfg.log_every == 0
                checkpointing = bool(train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0)
                stop = signals.received
                if logged or evaluated or checkpointing or stop:  # the only places the host waits for the device
                    outcomes, bad_in_row = read_pending(pending, bad_in_row, runtime, train_cfg.max_bad_steps,
                                                        record, lambda done, _: checkpoint_now(done))
                    progress["skipped_steps"] += sum(not o.applied for o in outcomes)
                    outcome, pending = outcomes[-1], []
                    if logged and outcome.applied:
                        record({"step": step, "loss": outcome.loss, "lr": lr, "grad_norm": outcome.grad_norm})
                bar.update(1)
                if outcome is not None:
                    bar.set_postfix(loss=f"{outcome.loss:.3f}",
                                    best=f"{progress['best_score']:.1f}" if progress["best_step"] else "-")
                if evaluated and validate(step):
                    progress["finished"] = True
                progress["finished"] |= step == max_steps
                progress["seconds"] += time.perf_counter() - started
                saved = None
                if evaluated or checkpointing:
                    saved = checkpoint_now(step)
                if stop and not progress["finished"]:
                    interrupted = stop
                    saved = saved or checkpoint_now(step)
                    record({"step": step, "event": "interrupted", "signal": interrupted, "checkpoint": str(saved)})
                    break
            bar.close()
        if interrupted:
            return FinetuneResult(run_dir, saved, progress["best_step"], {}, None, step, progress["seconds"],
                                  history, interrupted)
        if progress["best_step"]:
            best = run_dir / "best"
            load_weights(model, load_file(str(best / "model.safetensors")), f"{best}/model.safetensors")
        else:  # no validation split: the last weights are the result
            progress["best_step"] = step
            save_best(step)
        model.eval()
        best_step = progress["best_step"]
        validation_scores = {k[4:]: v for k, v in next((h for h in history if h.get("step") == best_step
                                                        and f"val_{metric}" in h), {}).items() if k.startswith("val_")}
        test_scores = None
        if task.files.get("test") is not None and task.files["test"].is_file():
            started = time.perf_counter()
            test_scores, rows = score(model, tokenizer, task, "test", train_cfg.precision, device=device)
            progress["seconds"] += time.perf_counter() - started
            _write_predictions(run_dir / "test_predictions.jsonl", rows)
        record({"event": "end", "step": best_step, "checkpoint": str(run_dir / "best"),
                **{f"test_{k}": v for k, v in (test_scores or {}).items()}})
    finally:
        log.close()
    summary = {"task": task.name, "init": cfg.init, "parameters": count_parameters(model), "best_step": best_step,
               "validation": validation_scores, "test": test_scores, "seconds": progress["seconds"],
               "skipped_steps": progress["skipped_steps"]}
    write_text_atomic(run_dir / "scores.json", json.dumps(summary, indent=2) + "\n")
    return FinetuneResult(run_dir, run_dir / "best", best_step, validation_scores, test_scores, step,
                          progress["seconds"], history)
