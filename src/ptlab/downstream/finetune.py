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

from ptlab.config import Config, FinetuneConfig, TrainConfig, check_seed, save_config
from ptlab.data.tasks import Task, resolve_task
from ptlab.data.tokenizer import PtlabTokenizer, load_tokenizer
from ptlab.downstream.evaluate import _write_predictions, encode_pairs, make_batch, score
from ptlab.errors import PtlabError
from ptlab.files import write_text_atomic
from ptlab.models import build_model, count_parameters
from ptlab.models.head_loss import training_chunk_tokens
from ptlab.objectives import Example
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
from ptlab.train.loop import LoopEnd, LoopHooks, TrainingLoop, compile_enabled, fill_model_ids
from ptlab.train.optim import build_optimizer
from ptlab.train.runlog import MetricsLog, read_metrics
from ptlab.train.step import StepOutcome


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

    The steps run through pre-training's loop (`ptlab.train.loop.TrainingLoop`: autocast, accumulation, clipping,
    non-finite skips, optional compile, deferred read-backs), with `_FineTuning`'s batches, validation and early
    stopping. A checkpoint is written at every evaluation, every `train.checkpoint_every` steps and
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
    steps_per_epoch = math.ceil(len(train) / train_cfg.batch_size)
    max_steps = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
    # the loop's settings: this run's steps, validated every epoch unless train.eval_every says otherwise
    schedule = dataclasses.replace(train_cfg, max_steps=max_steps, eval_every=train_cfg.eval_every or steps_per_epoch)
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
    log = MetricsLog(run_dir, resume_step=start_step if checkpoint is not None else None, config=cfg)
    run = _FineTuning(cfg, schedule, task, train, model, optimizer, tokenizer, device, identity, progress, log,
                      read_metrics(run_dir) if checkpoint is not None else [])
    history = run.history
    loop = TrainingLoop(model, optimizer, schedule, runtime, run, compiled=compile_enabled(schedule, device),
                        chunk_tokens=training_chunk_tokens(train_cfg.loss_chunk_tokens, model.config.vocab_size,
                                                           train_cfg.precision),
                        desc=f"fine-tuning on {task.name}", show=show_progress)
    try:
        end = LoopEnd(start_step, checkpoint) if progress["finished"] else loop.run(start_step)
        if end.interrupted:
            return FinetuneResult(run_dir, end.checkpoint, progress["best_step"], {}, None, end.steps,
                                  progress["seconds"], history, end.interrupted)
        if progress["best_step"]:
            best = run_dir / "best"
            load_weights(model, load_file(str(best / "model.safetensors")), f"{best}/model.safetensors")
        else:  # no validation split: the last weights are the result
            progress["best_step"] = end.steps
            run.save_best(end.steps)
        model.eval()
        best_step, metric = progress["best_step"], task.metrics[0]
        validation_scores = {k[4:]: v for k, v in next((h for h in history if h.get("step") == best_step
                                                        and f"val_{metric}" in h), {}).items() if k.startswith("val_")}
        test_scores = None
        if task.files.get("test") is not None and task.files["test"].is_file():
            started = time.perf_counter()
            test_scores, rows = score(model, tokenizer, task, "test", train_cfg.precision, device=device)
            progress["seconds"] += time.perf_counter() - started
            _write_predictions(run_dir / "test_predictions.jsonl", rows)
        run.record({"event": "end", "step": best_step, "checkpoint": str(run_dir / "best"),
                    **{f"test_{k}": v for k, v in (test_scores or {}).items()}})
    finally:
        log.close()
    summary = {"task": task.name, "init": cfg.init, "parameters": count_parameters(model), "best_step": best_step,
               "validation": validation_scores, "test": test_scores, "seconds": progress["seconds"],
               "skipped_steps": progress["skipped_steps"]}
    write_text_atomic(run_dir / "scores.json", json.dumps(summary, indent=2) + "\n")
    return FinetuneResult(run_dir, run_dir / "best", best_step, validation_scores, test_scores, end.steps,
                          progress["seconds"], history)


@dataclass
class _FineTuning(LoopHooks):
    """Fine-tuning's hooks into `TrainingLoop`: batches of the task's training examples, shuffled anew each epoch
    (seeded); validation on the first metric, the best weights kept in RUN_DIR/best, the run ended once `patience`
    validations in a row brought no better score; a checkpoint after every validation, which the best so far is
    part of."""

    cfg: FinetuneConfig
    schedule: TrainConfig  # the run's steps and validation cadence
    task: Task
    train: list[Example]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    tokenizer: PtlabTokenizer
    device: torch.device
    identity: dict
    progress: dict
    log: MetricsLog
    history: list[dict]
    save_validations = True

    def __post_init__(self):
        self.run_dir, self.metric = Path(self.cfg.run_dir), self.task.metrics[0]
        self.has_validation = self.task.files.get("validation") is not None
        steps_per_epoch = math.ceil(len(self.train) / self.schedule.batch_size)
        rng = np.random.default_rng(self.cfg.seed)
        self.order = np.concatenate([rng.permutation(len(self.train))
                                     for _ in range(math.ceil(self.schedule.max_steps / steps_per_epoch) + 1)])

    def record(self, entry: dict) -> None:
        self.history.append(entry)
        self.log.write(entry)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        size = self.schedule.batch_size
        rows = self.order[step * size: (step + 1) * size]
        return make_batch(self.model, [self.train[i] for i in rows], self.tokenizer.specials.pad)

    def validate(self, done: int) -> bool:
        """Score on validation and keep the best weights on disk; True when patience ran out or the run is done.
        Its time counts in the run's seconds."""
        started, progress = time.perf_counter(), self.progress
        if self.has_validation:
            scores, _ = score(self.model, self.tokenizer, self.task, "validation", self.schedule.precision,
                              device=self.device)
            self.model.train()
            self.record({"step": done, **{f"val_{k}": v for k, v in scores.items()}})
            if scores[self.metric] > progress["best_score"]:
                progress.update(best_score=scores[self.metric], best_step=done, since_best=0)
                self.save_best(done)
            else:
                progress["since_best"] += 1
            progress["finished"] = progress["since_best"] >= self.cfg.patience
        progress["finished"] |= done == self.schedule.max_steps
        progress["seconds"] += time.perf_counter() - started
        return progress["finished"]

    def save_best(self, step: int) -> None:
        scores = {f"val_{self.metric}": self.progress["best_score"]} if self.has_validation else {}
        write_checkpoint(self.run_dir / "best", self.model, self._config(), self.tokenizer, step, metrics=scores)

    def save(self, done: int, newest: StepOutcome) -> Path:
        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        trainer_state = {"step": done, "optimizer": optimizer_state, "rng": {"torch": torch.get_rng_state()},
                         "progress": dict(self.progress), "data": self.identity}
        return save_checkpoint(self.run_dir, done, self.model, self._config(), self.tokenizer, trainer_state, keep=2)

    def postfix(self) -> dict:
        return {"best": f"{self.progress['best_score']:.1f}" if self.progress["best_step"] else "-"}

    def _config(self) -> Config:
        return Config(run_dir=str(self.run_dir), model=self.model.config)
