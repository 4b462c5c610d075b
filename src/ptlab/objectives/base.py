"""What every objective shares: the special-token ids it may use and the example it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np

from ptlab.errors import PtlabError

# UL2's mode tokens, one per denoiser family: R (regular span corruption), X (extreme), S (sequential, prefix LM).
MODE_TOKENS = {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}


@dataclass(frozen=True)
class SpecialIds:
    """Token ids an objective may insert, plus per-id facts about the vocabulary (no tokenizer object).

    `mask` is BART's/BERT's mask token; a vocabulary without one uses `<extra_id_0>`, as T5's BERT-style objective
    does. `word_start[i]` says whether token i begins a word (BART masks whole words); `sentence_end[i]` whether it
    ends a sentence (BART permutes sentences). `modes` maps a UL2 mode ("R", "X", "S") to the ids of its mode token.
    """

    pad: int
    eos: int
    unk: int
    sentinels: tuple[int, ...]  # sentinels[i] is the id of <extra_id_i>
    mask: int | None = None
    bos: int | None = None
    modes: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False)
    vocab_size: int | None = None
    word_start: np.ndarray | None = field(default=None, compare=False, repr=False)
    sentence_end: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def sentinel_array(self) -> np.ndarray:
        return np.asarray(self.sentinels, dtype=np.int64)

    @property
    def mask_id(self) -> int:
        if self.mask is not None:
            return self.mask
        if not self.sentinels:
            raise PtlabError("this objective needs a <mask> token or at least one sentinel, and the tokenizer has "
                             "neither")
        return self.sentinels[0]

    @cached_property
    def ordinary_ids(self) -> np.ndarray:
        """Ids of ordinary tokens: everything but pad/eos/unk/bos/mask, sentinels and mode tokens."""
        if self.vocab_size is None:
            raise PtlabError("this objective draws random tokens and needs the vocabulary size (SpecialIds.vocab_size)")
        special = {self.pad, self.eos, self.unk, *self.sentinels}
        special.update(i for i in (self.mask, self.bos) if i is not None)
        for ids in self.modes.values():
            if len(ids) == 1:
                special.add(ids[0])
        keep = np.ones(self.vocab_size, dtype=bool)
        keep[[i for i in special if 0 <= i < self.vocab_size]] = False
        return np.flatnonzero(keep)

    def random_tokens(self, rng: np.random.Generator, count: int) -> np.ndarray:
        ordinary = self.ordinary_ids
        return ordinary[rng.integers(len(ordinary), size=count)]

    def mode(self, kind: str) -> tuple[int, ...]:
        if kind not in self.modes:
            raise PtlabError(f"the tokenizer has no ids for UL2's mode token {MODE_TOKENS[kind]}")
        return self.modes[kind]


class Example(NamedTuple):
    """One training example.

    Encoder-decoder models read `inputs` with the encoder and produce `targets`. Decoder-only models read the
    concatenation `inputs + targets`: `inputs` is the prefix (fully visible in prefix-LM attention, no loss) and the
    loss covers the `targets`. Causal LM has empty inputs.
    """

    inputs: np.ndarray
    targets: np.ndarray


def with_eos(tokens: np.ndarray, eos_id: int) -> np.ndarray:
    return np.concatenate([tokens, np.array([eos_id], dtype=tokens.dtype)])
