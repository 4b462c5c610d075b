"""The training stream: what the trainer and `PretrainBatches` ask of training data, which a single token shard
(`ptlab.data.shards.TokenShard`) and a weighted mixture of shards (`ptlab.data.mixture.Mixture`) both answer.

A stream gives a sampler for a chunk length and a seed, whose `chunk(example)` is a pure function of the global
example number (so a resumed run recomputes any step's batch), and says what a resumed run must find unchanged
(`fingerprint`), its named sources' normalised weights and the chunk tokens each served (a single shard names none:
both are empty), and how many examples it can serve in all (`capacity`, None when passes repeat without end).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class StreamSampler(Protocol):
    chunk_length: int

    @property
    def num_chunks(self) -> int: ...

    @property
    def capacity(self) -> int | None:
        """Examples it can serve in all (None: unbounded)."""

    def chunk(self, example: int) -> np.ndarray:
        """The token chunk of global example `example`."""

    def source_tokens(self, examples: int) -> dict[str, int]:
        """Chunk tokens each named source contributed to global examples [0, examples)."""


@runtime_checkable
class TrainingStream(Protocol):
    @property
    def num_tokens(self) -> int: ...

    @property
    def fingerprint(self) -> str:
        """What the data identity of a resumed run compares."""

    @property
    def weights(self) -> dict[str, float]:
        """Each named source's share of the examples, normalised to sum to 1."""

    def sampler(self, chunk_length: int, seed: int, shuffle: bool = True) -> StreamSampler: ...
