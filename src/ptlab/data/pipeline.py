"""From token shards to model batches: chunk sampling, the objective, then batching for either architecture.

Every example's randomness comes from (seed, example number), so a batch depends only on (seed, which examples):
a resumed run sees exactly the batches an uninterrupted one would.

Encoder-decoder batches: input_ids, attention_mask, decoder_input_ids (targets shifted right from the decoder start
token), labels (-100 on padding). Decoder-only batches hold each example as one sequence `inputs + targets`:
input_ids, labels (-100 on the prefix and padding), position_ids, segment_ids (1, 2, ... per packed example, 0 on
padding) and prefix_mask (True on the fully visible prefix, for prefix-LM attention).
"""

from __future__ import annotations

import sys

import numpy as np

from ptlab.config import Config, ObjectiveConfig, check_seed
from ptlab.data.stream import TrainingStream
from ptlab.errors import PtlabError
from ptlab.objectives import BoundObjective, Example, SpecialIds, build_objective

IGNORE_INDEX = -100


def resolve_objective(cfg: ObjectiveConfig, quiet: bool = False) -> BoundObjective:
    """Build the configured objective and write its full parameter set back into `cfg`, so that the config saved
    with a run states every parameter it used."""
    objective, dropped = build_objective(cfg.name, cfg.params, cfg.inherited)
    if dropped and not quiet:
        print(f"ptlab: note: objective switched to {cfg.name}, which does not take "
              f"{', '.join(dropped)} from the config file; using its defaults", file=sys.stderr)
    cfg.params, cfg.inherited = objective.as_dict(), {}
    return objective


def pad_batch(rows: list[np.ndarray], length: int, value: int) -> np.ndarray:
    """Stack rows into [len(rows), max(length, longest row)], padding with `value` (never truncating)."""
    length = max([length] + [len(r) for r in rows])
    out = np.full((len(rows), length), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def encoder_decoder_batch(examples: list[Example], inputs_length: int, targets_length: int, pad_id: int,
                          decoder_start_id: int) -> dict[str, np.ndarray]:
    input_ids = pad_batch([e.inputs for e in examples], inputs_length, pad_id)
    labels = pad_batch([e.targets for e in examples], targets_length, IGNORE_INDEX)
    attention_mask = (np.arange(input_ids.shape[1])[None, :]
                      < np.array([len(e.inputs) for e in examples])[:, None]).astype(np.int64)
    decoder_input_ids = np.full_like(labels, pad_id)
    decoder_input_ids[:, 0] = decoder_start_id
    decoder_input_ids[:, 1:] = np.where(labels[:, :-1] == IGNORE_INDEX, pad_id, labels[:, :-1])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids,
            "labels": labels}


def _decoder_rows(example: Example) -> tuple[np.ndarray, np.ndarray, int]:
    """(input ids, labels, prefix length) of one example as a single left-to-right sequence."""
    sequence = np.concatenate([example.inputs, example.targets]).astype(np.int64)
    prefix = len(example.inputs)
    labels = sequence[1:].copy()
    labels[:max(prefix - 1, 0)] = IGNORE_INDEX  # position t predicts token t+1: no loss while that is in the prefix
    return sequence[:-1], labels, prefix


def decoder_batch(examples: list[Example], length: int, pad_id: int, pack: bool = False) -> dict[str, np.ndarray]:
    """One row per example, or with `pack` as many consecutive examples per row as fit in `length` tokens (an
    example longer than that gets a row of its own and widens the batch)."""
    pieces = [_decoder_rows(e) for e in examples]
    rows: list[list[tuple[np.ndarray, np.ndarray, int]]] = []
    for piece in pieces:
        if pack and rows and sum(len(p[0]) for p in rows[-1]) + len(piece[0]) <= length:
            rows[-1].append(piece)
        else:
            rows.append([piece])
    width = max([length] + [sum(len(p[0]) for p in row) for row in rows])
    batch = {"input_ids": np.full((len(rows), width), pad_id, dtype=np.int64),
             "labels": np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64),
             "position_ids": np.zeros((len(rows), width), dtype=np.int64),
             "segment_ids": np.zeros((len(rows), width), dtype=np.int64),
             "prefix_mask": np.zeros((len(rows), width), dtype=bool)}
    for r, row in enumerate(rows):
        start = 0
        for segment, (ids, labels, prefix) in enumerate(row, start=1):
            stop = start + len(ids)
            batch["input_ids"][r, start:stop] = ids
            batch["labels"][r, start:stop] = labels
            batch["position_ids"][r, start:stop] = np.arange(len(ids))
            batch["segment_ids"][r, start:stop] = segment
            batch["prefix_mask"][r, start:start + prefix] = True
            start = stop
    return batch


class PretrainBatches:
    """Batches of examples drawn from a training stream (a token shard, or a weighted mixture of shards) through an
    objective, laid out for `architecture` ("encoder_decoder" or "decoder")."""

    def __init__(self, stream: TrainingStream, objective: BoundObjective, inputs_length: int,
                 specials: SpecialIds, seed: int, architecture: str = "encoder_decoder",
                 decoder_start_id: int | None = None, pack: bool = False, shuffle: bool = True):
        objective.check(inputs_length, specials)
        if pack and architecture != "decoder":
            raise PtlabError("config key 'objective.pack': packing several examples per row is for decoder-only "
                             "models")
        self.objective = objective
        self.specials = specials
        self.seed = seed
        self.architecture = architecture
        self.decoder_start_id = specials.pad if decoder_start_id is None else decoder_start_id
        self.pack = pack
        self.requested_length = inputs_length
        self.raw_length, self.inputs_length, self.targets_length = objective.lengths(inputs_length, specials)
        self.sampler = stream.sampler(self.raw_length, seed, shuffle)

    def source_tokens(self, examples: int) -> dict[str, int]:
        """A mixture's chunk tokens per source over the first `examples` examples (empty for a single shard)."""
        return self.sampler.source_tokens(examples)

    @property
    def sequence_length(self) -> int:
        """Tokens per row for a decoder-only model."""
        return self.inputs_length + self.targets_length - 1

    def example(self, number: int) -> Example:
        rng = np.random.default_rng([self.seed, number])
        return self.objective(self.sampler.chunk(number), rng, self.specials, self.requested_length)

    def batch(self, first_example: int, size: int) -> dict[str, np.ndarray]:
        examples = [self.example(first_example + i) for i in range(size)]
        if self.architecture == "decoder":
            return decoder_batch(examples, self.sequence_length, self.specials.pad, self.pack)
        return encoder_decoder_batch(examples, self.inputs_length, self.targets_length, self.specials.pad,
                                     self.decoder_start_id)


def pretrain_batches(cfg: Config, objective: BoundObjective, stream: TrainingStream, specials: SpecialIds,
                     validation: bool = False) -> PretrainBatches:
    """The configured batches from `stream` (validation data uses seed + 1, so it never repeats training draws)."""
    check_seed(cfg.seed, "config key 'seed'")  # a config that skipped validate(): not numpy's error from a batch
    model = cfg.model
    return PretrainBatches(stream, objective, cfg.objective.inputs_length, specials,
                           seed=cfg.seed + 1 if validation else cfg.seed,
                           architecture="encoder_decoder" if model.is_encoder_decoder else "decoder",
                           decoder_start_id=model.decoder_start_token_id, pack=cfg.objective.pack)


def validation_batches(data: PretrainBatches, cfg: Config) -> list[dict[str, np.ndarray]]:
    """The fixed validation set: up to `train.eval_batches` batches of `train.batch_size` examples (fewer when the
    shard is small), with chunks spread over the whole shard so that every source is represented. `data` must be
    built on the validation shard with seed `cfg.seed + 1`."""
    size = min(cfg.train.batch_size, data.sampler.num_chunks)
    count = min(cfg.train.eval_batches, data.sampler.num_chunks // size)
    return [data.batch(i * size, size) for i in range(count)]
