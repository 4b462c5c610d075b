"""Linear probes: does a frozen model's representation carry a task's signal? A logistic regression on the mean-pooled
final states, against a random model's as the floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ptlab.config import TaskConfig, check_seed
from ptlab.data.tasks import resolve_task
from ptlab.data.tokenizer import PtlabTokenizer
from ptlab.downstream.evaluate import encode_pairs
from ptlab.errors import PtlabError
from ptlab.objectives import Example
from ptlab.train.checkpoint import load_checkpoint_tokenizer, load_model


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

    seed = check_seed(seed)
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
    # scikit-learn takes seeds below 2**32 only
    probe = LogisticRegression(max_iter=2000, random_state=seed % 2**32)
    probe.fit(scaler.transform(x_train), [t for _, t in train_pairs])
    return 100.0 * probe.score(scaler.transform(x_eval), [t for _, t in eval_pairs])
