"""From token shards to model batches: chunk sampling, the objective, padding.

Every example's randomness comes from (seed, example number), so a batch depends only on (seed, step): a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

from ptlab.config import Config, ObjectiveConfig
from ptlab.data.shards import ChunkSampler, TokenShard
from ptlab.objectives import SpecialIds, get_objective

IGNORE_INDEX = -100


def objective_params(cfg: ObjectiveConfig) -> dict:
    return {"noise_density": cfg.noise_density, "mean_span_length": cfg.mean_span_length,
            "random_roll": cfg.random_roll}


def pad_batch(rows: list[np.ndarray], length: int, value: int) -> np.ndarray:
    out = np.full((len(rows), length), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row[:length]
    return out


class PretrainBatches:
    """Batches of {input_ids, attention_mask, labels} for an encoder-decoder objective."""

    def __init__(self, shard: TokenShard, cfg: ObjectiveConfig, specials: SpecialIds, seed: int,
                 shuffle: bool = True):
        self.objective = get_objective(cfg.name)
        self.params = objective_params(cfg)
        self.specials = specials
        self.seed = seed
        self.raw_length, self.targets_length = self.objective.lengths(cfg.inputs_length, self.params)
        self.inputs_length = cfg.inputs_length
        self.sampler = ChunkSampler(shard, self.raw_length, seed, shuffle)

    def example(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, number])
        return self.objective.apply(self.sampler.chunk(number), rng, self.specials, self.params)

    def batch(self, first_example: int, size: int) -> dict[str, np.ndarray]:
        pairs = [self.example(first_example + i) for i in range(size)]
        inputs = pad_batch([p[0] for p in pairs], self.inputs_length, self.specials.pad)
        labels = pad_batch([p[1] for p in pairs], self.targets_length, IGNORE_INDEX)
        lengths = np.array([len(p[0]) for p in pairs])
        attention_mask = (np.arange(self.inputs_length)[None, :] < lengths[:, None]).astype(np.int64)
        return {"input_ids": inputs, "attention_mask": attention_mask, "labels": labels}


def validation_batches(shard: TokenShard, cfg: Config, specials: SpecialIds) -> list[dict[str, np.ndarray]]:
    """The fixed validation set: chunks drawn at random over the whole shard (so every source is represented, not
    just the first documents), corrupted with seed `cfg.seed + 1`.

    Up to `train.eval_batches` batches of `train.batch_size` examples (fewer when the shard is small).
    """
    data = PretrainBatches(shard, cfg.objective, specials, seed=cfg.seed + 1)
    size = min(cfg.train.batch_size, data.sampler.num_chunks)
    count = min(cfg.train.eval_batches, data.sampler.num_chunks // size)
    return [data.batch(i * size, size) for i in range(count)]
