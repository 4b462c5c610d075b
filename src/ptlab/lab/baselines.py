"""Reference losses a model must beat to show it learned more than token frequencies."""

from __future__ import annotations

import numpy as np

from ptlab.data.pipeline import IGNORE_INDEX
from ptlab.objectives import SpecialIds


def unigram_target_baseline(train_tokens: np.ndarray, labels: np.ndarray, specials: SpecialIds,
                            vocab_size: int) -> float:
    """Mean cross-entropy (nats) of a predictor that knows where sentinels and EOS go and nothing else.

    Sentinels and EOS in the targets are predicted perfectly (loss 0); every other target token gets its unigram
    probability among ordinary tokens of the training text (add-one smoothed). A model that only learned token
    frequencies sits on this line; beating it by a margin means the model uses context.
    """
    structural = np.zeros(vocab_size, dtype=bool)
    structural[list(specials.sentinels) + [specials.eos, specials.pad]] = True
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size)[:vocab_size].astype(float)
    counts[structural] = 0.0
    ordinary = ~structural
    counts[ordinary] += 1.0
    log_prob = np.log(counts / counts[ordinary].sum(), where=ordinary, out=np.zeros(vocab_size))
    labels = np.asarray(labels)
    valid = labels != IGNORE_INDEX
    targets = labels[valid]
    losses = np.where(structural[targets], 0.0, -log_prob[targets])
    return float(losses.mean()) if len(losses) else float("nan")
