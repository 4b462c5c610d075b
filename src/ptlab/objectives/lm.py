"""Language-model objectives for decoder-only models.

The token stream already holds EOS between documents, so a causal-LM example is simply a window of it. An `Example`
for a decoder-only model is read as the sequence `inputs + targets` with the loss on the targets only.
"""

from __future__ import annotations

import numpy as np

from ptlab.errors import PtlabError
from ptlab.objectives.base import Example, SpecialIds


def causal_lm(tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds) -> Example:
    """Predict every next token: no prefix, the whole window is the target."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or len(tokens) < 2:
        raise PtlabError("causal LM needs a 1-D window of at least 2 tokens")
    return Example(tokens[:0], tokens)


def decoder_prefix_lm(tokens: np.ndarray, rng: np.random.Generator, specials: SpecialIds) -> Example:
    """Prefix LM for decoder-only models: split at a point uniform in [1, L-1]; the prefix is fully visible and
    carries no loss, the rest is predicted causally."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or len(tokens) < 2:
        raise PtlabError("prefix LM needs a 1-D window of at least 2 tokens")
    split = int(rng.integers(1, len(tokens)))
    return Example(tokens[:split], tokens[split:])
