"""Scoring a model on a task split: classification by ranking each label string's summed log-likelihood (a prediction
is always a label), generation by greedy decoding; the task's metrics over the predictions.

    scores = evaluate_checkpoint("runs/ft/best", TaskConfig(name="rt_polarity"), split="test")
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ptlab.config import TaskConfig
from ptlab.data.pipeline import decoder_batch, encoder_decoder_batch
from ptlab.data.tasks import Task, resolve_task
from ptlab.data.tokenizer import PtlabTokenizer
from ptlab.downstream.metrics import compute_metrics
from ptlab.models.generate import generate
from ptlab.objectives import Example
from ptlab.train.batches import (
    autocast,
    batch_label_log_probs,
    bits_per_byte,
    model_inputs,
    target_bytes,
    to_tensors,
)
from ptlab.train.checkpoint import load_checkpoint_tokenizer, load_model


EVAL_BATCH_SIZE = 32  # rows per scoring batch: examples x labels when ranking labels, examples when decoding


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
        picked = batch_label_log_probs(model, batch)
    return picked.sum(dim=1).view(len(examples), len(label_ids)).cpu().numpy()


def predict(model: nn.Module, tokenizer: PtlabTokenizer, task: Task, examples: list[Example], precision: str = "fp32",
            batch_size: int = EVAL_BATCH_SIZE, device="cpu", show_progress: bool = False) -> list[str]:
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


@torch.no_grad()
def target_bits_per_byte(model: nn.Module, tokenizer: PtlabTokenizer, examples: list[Example],
                         precision: str = "fp32", batch_size: int = EVAL_BATCH_SIZE, device="cpu") -> float | None:
    """The model's loss on the reference targets given their inputs (teacher-forced), in bits per UTF-8 byte of
    the target text (its EOS counts no bytes; `ptlab.train.loop.Validation`). None when the targets hold no text."""
    model.eval()
    pad, nats, num_bytes = tokenizer.specials.pad, 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = make_batch(model, examples[start:start + batch_size], pad)
        num_bytes += target_bytes(batch["labels"], tokenizer.token_bytes)
        with autocast(precision, device):
            picked = batch_label_log_probs(model, to_tensors(model_inputs(batch), device))
        nats -= float(picked.sum(dtype=torch.float64))
    return bits_per_byte(nats, num_bytes)


def _write_predictions(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def evaluate_checkpoint(checkpoint: str | Path, task_cfg: TaskConfig, split: str = "test",
                        output: str | Path | None = None, show_progress: bool = True) -> dict[str, float]:
    """Scores of a checkpoint on a task split, and `target_bpb`, its loss on the reference targets in bits per
    byte (`target_bits_per_byte`); predictions are written to `output` (JSONL) when given."""
    model, tokenizer = load_model(checkpoint), load_checkpoint_tokenizer(checkpoint)
    task = resolve_task(task_cfg)
    scores, rows = score(model, tokenizer, task, split, show_progress=show_progress)
    bpb = target_bits_per_byte(model, tokenizer, encode_pairs(task.examples(split), tokenizer, task))
    if bpb is not None:
        scores["target_bpb"] = bpb
    if output is not None:
        _write_predictions(Path(output), rows)
    return scores


def print_scores(name: str, scores: dict[str, float], out=sys.stdout) -> None:
    print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), file=out)
