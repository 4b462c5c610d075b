"""Prompting a pre-trained model: zero-shot and in-context (few-shot) evaluation, GPT-2's and GPT-3's way.

    result = evaluate_prompted("runs/gpt2", TaskConfig(name="rt_polarity"), shots=4, seed=0)

Each evaluated example becomes the task's prompt (`task.prompt`, e.g. "Review: {text}\\nSentiment:") after K
demonstrations, each the prompt of a training example followed by its answer (the label's verbalizer words, or the
target after a space), separated by blank lines. The demonstrations are drawn from the training split only, seeded by
(seed, example number), and never one whose prompt is also an evaluated one's. When the prompt does not fit the
model's context, the demonstrations farthest from the query are dropped first, then the query is cut from the left;
how many fitted is reported.

Classification ranks the labels by the log-likelihood of their words after the prompt, summed and per token (both
reported); generation decodes greedily and stops at the first newline or EOS. Both also report `target_bpb`, the
model's loss on the reference answer (the true label's words; the target after a space, cut at the task's
max_target_length tokens) after the prompt, in bits per UTF-8 byte of that answer: the unit in which models with
different tokenizers compare (`ptlab evaluate` without --shots reports the same for fine-tuned models).
Decoder-only models read the prompt then the answer as one sequence; encoder-decoders read the prompt (ended with
EOS, as in pre-training) in the encoder and the answer as the decoder's target. The prompt and answer are
tokenized the way lm-evaluation-harness does (the answer's tokens are those the whole text has past the prompt's),
so the two score alike.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ptlab.config import Config, TaskConfig, check_seed
from ptlab.data.tasks import Task, resolve_task
from ptlab.data.tokenizer import PtlabTokenizer
from ptlab.downstream.evaluate import make_batch
from ptlab.downstream.metrics import compute_metrics
from ptlab.errors import PtlabError
from ptlab.files import json_text, prepare_output, write_text_atomic
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
from ptlab.train.checkpoint import (
    load_checkpoint_config,
    load_checkpoint_tokenizer,
    load_model,
)

SEPARATOR = "\n\n"  # between demonstrations, and before the query
STOP = "\n"  # generation: the answer ends at the first newline (or EOS)


@dataclass
class Prompted:
    """One evaluated example as the model reads it."""

    text: str  # the prompt: demonstrations that fitted, then the query's prompt
    target: str
    context: list[int]  # the prompt's tokens (cut from the left when even the query alone did not fit)
    shots: int  # demonstrations that fitted
    answers: list[list[int]] = field(default_factory=list)  # classification: each label's answer tokens


def build_prompt(demonstrations: list[str], query: str) -> str:
    """The demonstrations (each a prompt and its answer) and the query's prompt, a blank line between each."""
    return "".join(d + SEPARATOR for d in demonstrations) + query


def draw_demonstrations(candidates: int, shots: int, seed: int, example_number: int) -> list[int]:
    """`shots` distinct candidate numbers (all of them when there are fewer), from (seed, example number) alone: an
    example gets the same demonstrations whichever other examples are evaluated with it."""
    rng = np.random.default_rng([check_seed(seed), example_number])
    return rng.choice(candidates, size=min(shots, candidates), replace=False).tolist()


def split_answer(tokenizer: PtlabTokenizer, context: str, answer: str) -> tuple[list[int], list[int]]:
    """(context tokens, answer tokens) as lm-evaluation-harness splits them: spaces ending the context move to the
    answer, and the answer's tokens are those the whole text has past the context's."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, answer = context[:-spaces], context[-spaces:] + answer
    whole, context_ids = tokenizer.encode_batch([context + answer, context])
    answer_ids = whole[len(context_ids):]
    return context_ids, answer_ids or tokenizer.encode(answer)


def fit_prompt(tokenizer: PtlabTokenizer, demonstrations: list[str], query: str, answers: list[str], budget: int,
               answers_in_context: bool = True, reserve: int = 0) -> tuple[str, list[int], list[list[int]], int]:
    """The prompt with as many demonstrations as fit (the ones nearest the query kept) in `budget` tokens, with
    `reserve` tokens to spare and, when `answers_in_context` (decoder-only), room for the longest answer. Returns
    (text, context tokens, each answer's tokens, demonstrations kept); with none kept and the query still too long,
    the context is cut from the left."""
    for kept in range(len(demonstrations), -1, -1):
        text = build_prompt(demonstrations[len(demonstrations) - kept:], query)
        pairs = [split_answer(tokenizer, text, a) for a in answers] or [(tokenizer.encode(text.rstrip()), [])]
        context = pairs[0][0]
        room = budget - reserve - (max(len(answer) for _, answer in pairs) if answers_in_context else 0)
        if len(context) <= room or kept == 0:
            return text, context[-max(room, 1):], [answer for _, answer in pairs], kept
    raise AssertionError("unreachable: the loop returns when no demonstration is left")


def prompted_examples(task: Task, tokenizer: PtlabTokenizer, split: str, shots: int, seed: int, budget: int,
                      encoder_decoder: bool = False, show_progress: bool = False) -> list[Prompted]:
    """The evaluated split's examples as prompts with up to `shots` demonstrations from the training split, each
    fitted into `budget` tokens (an encoder-decoder's encoder; a decoder-only model's prompt and answer)."""
    if shots < 0:
        raise PtlabError(f"--shots must be >= 0, got {shots}")
    check_seed(seed)  # before any prompt is built, even when no demonstration is drawn
    evaluated = task.prompts(split)
    candidates: list[tuple[str, str]] = []
    if shots:
        if split == "train":
            raise PtlabError("--shots draws its demonstrations from the train split; evaluate another split")
        queries = {prompt for prompt, _ in evaluated}
        # a training example whose prompt is also an evaluated one's would hand the model its answer
        candidates = [(p, t) for p, t in task.prompts("train") if p not in queries]
        if not candidates:
            raise PtlabError(f"task {task.name}: no training example left to draw demonstrations from")
    labels = task.labels
    answers = [task.answer(label) for label in labels]
    # an encoder's input ends with EOS; a decoder-only model generates its answer in its own context
    reserve = 1 if encoder_decoder else 0 if labels else task.max_target_length
    out = []
    for number, (query, target) in enumerate(tqdm(evaluated, desc="building prompts", unit="example",
                                                  disable=not show_progress)):
        chosen = draw_demonstrations(len(candidates), shots, seed, number) if shots else []
        demonstrations = [candidates[i][0] + task.answer(candidates[i][1]) for i in chosen]
        text, context, answer_ids, kept = fit_prompt(tokenizer, demonstrations, query, answers, budget,
                                                     not encoder_decoder, reserve)
        out.append(Prompted(text, target, context, kept, answer_ids if labels else []))
    return out


def answer_log_likelihoods(model: nn.Module, rows: list[Example], pad: int, precision: str = "fp32", device="cpu",
                           batch_size: int = 16) -> np.ndarray:
    """Summed log-probability of each row's target tokens after its input tokens (decoder-only: one sequence;
    encoder-decoder: input in the encoder, target in the decoder)."""
    sums = []
    for start in range(0, len(rows), batch_size):
        batch = to_tensors(model_inputs(make_batch(model, rows[start:start + batch_size], pad)), device)
        with torch.no_grad(), autocast(precision, device):
            sums.append(batch_label_log_probs(model, batch).sum(dim=1).cpu().numpy())
    return np.concatenate(sums) if sums else np.zeros(0)


def _model_input(model: nn.Module, tokenizer: PtlabTokenizer, context: list[int]) -> np.ndarray:
    # encoder inputs end with EOS, as every pre-training and fine-tuning input does
    return np.array(context + [tokenizer.specials.eos] if model.is_encoder_decoder else context, dtype=np.int64)


def rank_labels(model: nn.Module, tokenizer: PtlabTokenizer, prompted: list[Prompted], precision: str = "fp32",
                device="cpu", batch_size: int = 16, show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """([examples, labels] summed log-likelihood of each label's answer, [examples, labels] its token count)."""
    model.eval()
    rows = [Example(_model_input(model, tokenizer, p.context), np.array(answer, dtype=np.int64))
            for p in prompted for answer in p.answers]
    labels = len(prompted[0].answers)
    sums = [answer_log_likelihoods(model, rows[start:start + batch_size], tokenizer.specials.pad, precision, device,
                                   batch_size)
            for start in tqdm(range(0, len(rows), batch_size), desc="ranking labels", unit="batch",
                              disable=not show_progress)]
    lengths = np.array([[len(a) for a in p.answers] for p in prompted], dtype=np.float64)
    return np.concatenate(sums).reshape(-1, labels), lengths


def generate_answers(model: nn.Module, tokenizer: PtlabTokenizer, prompted: list[Prompted], max_new_tokens: int,
                     precision: str = "fp32", device="cpu", batch_size: int = 16,
                     show_progress: bool = False) -> list[str]:
    """Greedy continuations of the prompts, each cut at its first newline (or EOS)."""
    model.eval()
    pad, eos = tokenizer.specials.pad, tokenizer.specials.eos
    out = []
    for start in tqdm(range(0, len(prompted), batch_size), desc="generating", unit="batch",
                      disable=not show_progress):
        chunk = [_model_input(model, tokenizer, p.context) for p in prompted[start:start + batch_size]]
        width = max(len(c) for c in chunk)
        inputs = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, ids in enumerate(chunk):  # encoder inputs padded on the right, decoder prompts on the left
            where = slice(0, len(ids)) if model.is_encoder_decoder else slice(width - len(ids), width)
            inputs[i, where], mask[i, where] = torch.from_numpy(ids), 1
        with torch.no_grad(), autocast(precision, device):
            new = generate(model, inputs.to(device), mask.to(device), max_new_tokens=max_new_tokens)
        for row in new.tolist():
            text = tokenizer.decode(row[:row.index(eos)] if eos in row else row)
            out.append(text.lstrip(" ").split(STOP, 1)[0].strip())
    return out


def answer_bits_per_byte(log_likelihoods: np.ndarray, answers: list[list[int]], tokenizer: PtlabTokenizer
                         ) -> float | None:
    """Summed log-likelihoods of answers as bits per UTF-8 byte of the text they decode to (None for no bytes)."""
    tokens = np.fromiter((t for answer in answers for t in answer), dtype=np.int64)
    return bits_per_byte(-float(np.sum(log_likelihoods, dtype=np.float64)), target_bytes(tokens, tokenizer.token_bytes))


def context_length(config: Config) -> int:
    """The tokens a model can read: its learned positions (GPT-2, BART), else (T5's relative positions, Llama's
    rotary ones) the sequence length it was pre-trained on."""
    if config.model.spec.positions == "learned":
        return config.model.max_position_embeddings
    return config.objective.inputs_length


def majority_floor(task: Task, targets: list[str]) -> tuple[str, float]:
    """The training split's most frequent label, and the accuracy (%) of always answering it."""
    counts = Counter(t for _, t in task.examples("train"))
    label = max(task.labels, key=lambda name: (counts[name], name))
    return label, 100.0 * float(np.mean([t == label for t in targets]))


def score_prompted(model: nn.Module, tokenizer: PtlabTokenizer, task: Task, split: str = "test", shots: int = 0,
                   seed: int = 0, budget: int = 512, precision: str = "fp32", device="cpu", batch_size: int = 16,
                   show_progress: bool = False) -> tuple[dict, list[dict]]:
    """(scores, prediction rows) of a model prompted with `shots` demonstrations (see the module docstring)."""
    prompted = prompted_examples(task, tokenizer, split, shots, seed, budget, model.is_encoder_decoder,
                                 show_progress)
    targets = [p.target for p in prompted]
    fitted = [p.shots for p in prompted]
    info = {"shots": shots, "seed": seed, "examples": len(prompted), "context_tokens": budget,
            "shots_fitted_mean": float(np.mean(fitted)), "shots_fitted_min": int(min(fitted))}
    if task.is_classification:
        sums, lengths = rank_labels(model, tokenizer, prompted, precision, device, batch_size, show_progress)
        by_sum = [task.labels[i] for i in sums.argmax(axis=1)]
        per_token = [task.labels[i] for i in (sums / lengths).argmax(axis=1)]
        scores = compute_metrics(task.metrics, by_sum, targets, task.labels)
        scores["accuracy_per_token"] = compute_metrics(["accuracy"], per_token, targets, task.labels)["accuracy"]
        gold = [task.labels.index(t) for t in targets]  # the reference answer is the true label's words
        bpb = answer_bits_per_byte(sums[np.arange(len(gold)), gold], [p.answers[g] for p, g in zip(prompted, gold)],
                                   tokenizer)
        floor_label, floor = majority_floor(task, targets)
        info |= {"majority_class": floor_label, "majority_accuracy": floor}
        rows = [{"prompt": p.text, "target": p.target, "prediction": s, "prediction_per_token": n, "shots": p.shots,
                 "log_likelihoods": dict(zip(task.labels, map(float, row)))}
                for p, s, n, row in zip(prompted, by_sum, per_token, sums)]
    else:
        predictions = generate_answers(model, tokenizer, prompted, task.max_target_length, precision, device,
                                       batch_size, show_progress)
        scores = compute_metrics(task.metrics, predictions, targets, task.labels)
        rows = [{"prompt": p.text, "target": p.target, "prediction": g, "shots": p.shots}
                for p, g in zip(prompted, predictions)]
        # the reference answer: the target after a space, its tokens as `split_answer` cuts them, at most as many
        # as generation may write
        answers = [split_answer(tokenizer, p.text, task.answer(p.target))[1][:task.max_target_length]
                   for p in prompted]
        model_rows = [Example(_model_input(model, tokenizer, p.context), np.array(a, dtype=np.int64))
                      for p, a in zip(prompted, answers)]
        bpb = answer_bits_per_byte(answer_log_likelihoods(model, model_rows, tokenizer.specials.pad, precision,
                                                          device, batch_size), answers, tokenizer)
    if bpb is not None:
        scores["target_bpb"] = bpb
    return {**scores, **info}, rows


def evaluate_prompted(checkpoint: str | Path, task_cfg: TaskConfig, shots: int = 0, seed: int = 0,
                      split: str = "test", output: str | Path | None = None, scores_path: str | Path | None = None,
                      context: int | None = None, show_progress: bool = True) -> dict:
    """Scores of a pre-trained checkpoint prompted on a task split; predictions (JSONL) and scores (JSON) are
    written atomically when paths are given. `context` overrides the model's context length (`context_length`)."""
    for path, what in ((output, "--output"), (scores_path, "--scores")):
        if path is not None:
            prepare_output(path, what)
    if context is not None and context < 8:
        raise PtlabError(f"--context must be at least 8 tokens, got {context}")
    model, tokenizer = load_model(checkpoint), load_checkpoint_tokenizer(checkpoint)
    budget = context or context_length(load_checkpoint_config(checkpoint))
    task = resolve_task(task_cfg)
    scores, rows = score_prompted(model, tokenizer, task, split, shots, seed, budget, show_progress=show_progress)
    if output is not None:
        write_text_atomic(output, "".join(json_text(row) + "\n" for row in rows))
    if scores_path is not None:
        write_text_atomic(scores_path, json.dumps({"task": task.name, "split": split, **scores}, indent=2) + "\n")
    return scores


def print_prompted(name: str, scores: dict, out=sys.stdout) -> None:
    """Two lines: the scores, then how many demonstrations fitted and the majority-class floor."""
    info = ("shots", "seed", "examples", "context_tokens", "shots_fitted_mean", "shots_fitted_min", "majority_class",
            "majority_accuracy")
    print(f"{name}, {scores['shots']}-shot: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()
                                                          if k not in info), file=out)
    line = (f"demonstrations fitted in {scores['context_tokens']} tokens: {scores['shots_fitted_mean']:.1f} on "
            f"average (fewest {scores['shots_fitted_min']}) of {scores['shots']} asked")
    if "majority_class" in scores:
        line += f"; majority-class floor ({scores['majority_class']}): accuracy {scores['majority_accuracy']:.2f}"
    print(line, file=out)
