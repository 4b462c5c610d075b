"""Text-to-text fine-tuning and evaluation, for encoder-decoders and decoder-only models.

An encoder-decoder reads the input and produces the target. A decoder-only model reads `input </s> target </s>` with
the loss on the target only. Classification tasks are scored by ranking the likelihood of each label string (a
prediction is always a valid label); generation tasks by greedy decoding.

    result = finetune(load_config("configs/finetune-rt.yaml", [], cls=FinetuneConfig))
    scores = evaluate_checkpoint("runs/ft/best", TaskConfig(name="rt_polarity"), split="test")
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ptlab.config import Config, FinetuneConfig, TaskConfig, save_config
from ptlab.data.pipeline import IGNORE_INDEX, decoder_batch, encoder_decoder_batch
from ptlab.data.tokenizer import PtlabTokenizer, load_tokenizer
from ptlab.errors import PtlabError
from ptlab.metrics import compute_metrics
from ptlab.models import build_model, count_parameters
from ptlab.models.generate import generate
from ptlab.objectives import Example
from ptlab.tasks import Task, resolve_task
from ptlab.train.checkpoint import load_checkpoint_tokenizer, load_model, write_checkpoint
from ptlab.train.distributed import pick_device
from ptlab.train.host import configure_host
from ptlab.train.loop import autocast, batch_logits, fill_model_ids, model_inputs, to_tensors
from ptlab.train.optim import build_optimizer, lr_factor


@dataclass
class FinetuneResult:
    run_dir: Path
    checkpoint: Path
    best_step: int
    validation: dict[str, float]
    test: dict[str, float] | None
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def encode_pairs(pairs: list[tuple[str, str]], tokenizer: PtlabTokenizer, task: Task) -> list[Example]:
    """Token ids of (input, target) pairs: each side cut to its length limit and ended with EOS."""
    eos = tokenizer.specials.eos
    sources = tokenizer.encode_batch([s for s, _ in pairs])
    targets = tokenizer.encode_batch([t for _, t in pairs])
    return [Example(np.array(s[:task.max_input_length - 1] + [eos], dtype=np.int64),
                    np.array(t[:task.max_target_length - 1] + [eos], dtype=np.int64))
            for s, t in zip(sources, targets)]


def make_batch(model: nn.Module, examples: list[Example], pad: int) -> dict[str, np.ndarray]:
    if model.is_encoder_decoder:
        return encoder_decoder_batch(examples, 0, 0, pad, model.config.decoder_start_token_id)
    return decoder_batch(examples, 0, pad)


def _label_log_likelihoods(model: nn.Module, examples: list[Example], label_ids: list[np.ndarray], pad: int,
                           precision: str, device) -> np.ndarray:
    """[examples, labels] summed log-probability of each label's tokens (EOS included) given each input."""
    rows = [Example(e.inputs, label) for e in examples for label in label_ids]
    batch = to_tensors(model_inputs(make_batch(model, rows, pad)), device)
    with torch.no_grad(), autocast(precision, device):
        logits = batch_logits(model, batch).float()
    labels = batch["labels"]
    log_probs = F.log_softmax(logits, dim=-1)
    mask = labels != IGNORE_INDEX
    picked = log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * mask
    return picked.sum(dim=1).view(len(examples), len(label_ids)).cpu().numpy()


def predict(model: nn.Module, tokenizer: PtlabTokenizer, task: Task, examples: list[Example], precision: str = "fp32",
            batch_size: int = 32, device="cpu", show_progress: bool = False) -> list[str]:
    """Predicted target strings: the most likely label (classification) or the greedy decoding."""
    model.eval()
    pad = tokenizer.specials.pad
    predictions: list[str] = []
    label_ids = [np.array(ids + [tokenizer.specials.eos], dtype=np.int64) for ids in
                 tokenizer.encode_batch(task.labels)] if task.is_classification else []
    step = max(1, batch_size // max(1, len(label_ids))) if label_ids else batch_size
    for start in tqdm(range(0, len(examples), step), desc=f"evaluating {task.name}", unit="batch",
                      disable=not show_progress):
        chunk = examples[start:start + step]
        if label_ids:
            scores = _label_log_likelihoods(model, chunk, label_ids, pad, precision, device)
            predictions.extend(task.labels[i] for i in scores.argmax(axis=1))
            continue
        if model.is_encoder_decoder:
            batch = encoder_decoder_batch(chunk, 0, 0, pad, model.config.decoder_start_token_id)
            inputs, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
        else:  # left-pad the prompts (input and separator) so that generation continues them
            width = max(len(e.inputs) for e in chunk)
            inputs = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, e in enumerate(chunk):
                inputs[i, width - len(e.inputs):] = torch.from_numpy(e.inputs)
                mask[i, width - len(e.inputs):] = 1
        with torch.no_grad(), autocast(precision, device):
            out = generate(model, inputs.to(device), mask.to(device), max_new_tokens=task.max_target_length)
        for row in out.tolist():
            eos = tokenizer.specials.eos
            predictions.append(tokenizer.decode(row[:row.index(eos)] if eos in row else row).strip())
    return predictions


def score(model: nn.Module, tokenizer: PtlabTokenizer, task: Task, split: str, precision: str = "fp32",
          device="cpu", show_progress: bool = False) -> tuple[dict[str, float], list[dict]]:
    """The task's metrics on a split, and the predictions (input, target, prediction per example)."""
    pairs = task.examples(split)
    predictions = predict(model, tokenizer, task, encode_pairs(pairs, tokenizer, task), precision, device=device,
                          show_progress=show_progress)
    references = [t for _, t in pairs]
    scores = compute_metrics(task.metrics, predictions, references, task.labels)
    rows = [{"input": s, "target": t, "prediction": p} for (s, t), p in zip(pairs, predictions)]
    return scores, rows


def _initial_model(cfg: FinetuneConfig) -> tuple[nn.Module, PtlabTokenizer]:
    if cfg.init != "none":
        return load_model(cfg.init), load_checkpoint_tokenizer(cfg.init)
    tokenizer = load_tokenizer(cfg.tokenizer)
    holder = Config(model=copy.deepcopy(cfg.model))
    fill_model_ids(holder, tokenizer.vocab_size, tokenizer.specials)
    torch.manual_seed(cfg.seed)
    return build_model(holder.model), tokenizer


def finetune(cfg: FinetuneConfig, show_progress: bool = True) -> FinetuneResult:
    """Fine-tune as configured; keeps the weights with the best validation score (first metric), saves them to
    RUN_DIR/best, and scores them on the test split when there is one."""
    train_cfg = cfg.train
    configure_host(train_cfg.threads)
    task = resolve_task(cfg.task)
    model, tokenizer = _initial_model(cfg)
    device = pick_device(train_cfg.device)
    model.to(device).train()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    train = encode_pairs(task.examples("train"), tokenizer, task)
    validation = task.examples("validation") if task.files.get("validation") else None
    steps_per_epoch = math.ceil(len(train) / train_cfg.batch_size)
    max_steps = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
    schedule = dataclasses.replace(train_cfg, max_steps=max_steps)
    optimizer = build_optimizer(model, train_cfg)
    pad = tokenizer.specials.pad
    rng = np.random.default_rng(cfg.seed)
    order = np.concatenate([rng.permutation(len(train)) for _ in range(math.ceil(max_steps / steps_per_epoch) + 1)])
    metric = task.metrics[0]
    best_score, best_state, best_step, since_best = -math.inf, None, 0, 0
    history: list[dict] = []
    log = open(run_dir / "metrics.jsonl", "w", encoding="utf-8")

    def record(entry: dict) -> None:
        history.append(entry)
        log.write(json.dumps(entry) + "\n")
        log.flush()

    def validate(step: int) -> bool:
        """Score on validation; True when patience ran out."""
        nonlocal best_score, best_state, best_step, since_best
        if validation is None:
            return False
        scores, _ = score(model, tokenizer, task, "validation", train_cfg.precision, device=device)
        model.train()
        record({"step": step, **{f"val_{k}": v for k, v in scores.items()}})
        if scores[metric] > best_score:
            best_score, best_step, since_best = scores[metric], step, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        return since_best >= cfg.patience

    started = time.perf_counter()
    eval_every = train_cfg.eval_every or steps_per_epoch
    bar = tqdm(total=max_steps, desc=f"fine-tuning on {task.name}", unit="step", disable=not show_progress)
    step = 0
    for step in range(1, max_steps + 1):
        lr = train_cfg.lr * lr_factor(step - 1, schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = order[(step - 1) * train_cfg.batch_size: step * train_cfg.batch_size]
        batch = to_tensors(model_inputs(make_batch(model, [train[i] for i in rows], pad)), device)
        with autocast(train_cfg.precision, device):
            logits = batch_logits(model, batch)
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        if train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if step % train_cfg.log_every == 0:
            record({"step": step, "loss": loss_value, "lr": lr})
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", best=f"{best_score:.1f}" if best_state else "-")
        if step % eval_every == 0 and step != max_steps and validate(step):
            break
    bar.close()
    if step % eval_every != 0 or step == max_steps:
        validate(step)
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_step = step
    model.eval()
    checkpoint = write_checkpoint(run_dir / "best", model, Config(run_dir=str(run_dir), model=model.config), tokenizer,
                                  best_step, metrics={f"val_{metric}": best_score})
    validation_scores = {k[4:]: v for k, v in next((h for h in history if h["step"] == best_step
                                                    and f"val_{metric}" in h), {}).items() if k.startswith("val_")}
    test_scores = None
    if task.files.get("test") is not None and task.files["test"].is_file():
        test_scores, rows = score(model, tokenizer, task, "test", train_cfg.precision, device=device)
        _write_predictions(run_dir / "test_predictions.jsonl", rows)
        record({"step": best_step, **{f"test_{k}": v for k, v in test_scores.items()}})
    log.close()
    summary = {"task": task.name, "init": cfg.init, "parameters": count_parameters(model), "best_step": best_step,
               "validation": validation_scores, "test": test_scores, "seconds": time.perf_counter() - started}
    (run_dir / "scores.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return FinetuneResult(run_dir, checkpoint, best_step, validation_scores, test_scores, step,
                          time.perf_counter() - started, history)


def _write_predictions(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def evaluate_checkpoint(checkpoint: str | Path, task_cfg: TaskConfig, split: str = "test",
                        output: str | Path | None = None, show_progress: bool = True) -> dict[str, float]:
    """Scores of a checkpoint on a task split; predictions are written to `output` (JSONL) when given."""
    model, tokenizer = load_model(checkpoint), load_checkpoint_tokenizer(checkpoint)
    task = resolve_task(task_cfg)
    scores, rows = score(model, tokenizer, task, split, show_progress=show_progress)
    if output is not None:
        _write_predictions(Path(output), rows)
    return scores


@torch.no_grad()
def pooled_states(model: nn.Module, examples: list[Example], pad: int, batch_size: int = 64) -> np.ndarray:
    """Mean of the final hidden states over the input tokens (encoder output, or the decoder's last layer)."""
    model.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        width = max(len(e.inputs) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width))
        for i, e in enumerate(chunk):
            ids[i, :len(e.inputs)] = torch.from_numpy(e.inputs)
            mask[i, :len(e.inputs)] = 1
        states = model.encode(ids, mask.long()) if model.is_encoder_decoder else model.hidden_states(ids)
        out.append(((states.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy())
    return np.concatenate(out)


def linear_probe(checkpoint: str | Path | None, task_cfg: TaskConfig, model: nn.Module | None = None,
                 tokenizer: PtlabTokenizer | None = None, split: str = "validation", seed: int = 0) -> float:
    """Accuracy of a logistic regression on mean-pooled frozen states (train split -> `split`): does the model's
    representation carry the task's signal? A random model gives the floor to compare with."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if model is None:
        model, tokenizer = load_model(checkpoint), load_checkpoint_tokenizer(checkpoint)
    task = resolve_task(task_cfg)
    if not task.is_classification:
        raise PtlabError(f"the linear probe needs a classification task; {task.name} has no labels")
    pad = tokenizer.specials.pad
    train_pairs, eval_pairs = task.examples("train"), task.examples(split)
    x_train = pooled_states(model, encode_pairs(train_pairs, tokenizer, task), pad)
    x_eval = pooled_states(model, encode_pairs(eval_pairs, tokenizer, task), pad)
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(x_train),
                                                                     [t for _, t in train_pairs])
    return 100.0 * probe.score(scaler.transform(x_eval), [t for _, t in eval_pairs])


def print_scores(name: str, scores: dict[str, float], out=sys.stdout) -> None:
    print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), file=out)
