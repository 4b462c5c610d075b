"""Weighted mixtures of pre-training sources (`data.mixture`), and fine-tuning tasks' inputs as training text.

Which source serves global example i is Megatron-LM's blended-dataset rule: the source whose realised count lags
`weight * (i + 1)` most (ties to the first listed). The rule runs once over a block of BLOCK examples and the block
repeats, so the counts at any example index come from one table lookup: a resumed run recomputes its position from
the step alone, and the realised shares are within 1/BLOCK + 1/i of the weights. Within its source an example is
that source's count so far, fed to the source's own `ChunkSampler` (seeded per source).

`epochs_cap` bounds how many passes over its chunks a source may serve. When a source reaches its cap, its weight
is redistributed over the sources left (the rule restarts over them from that example on, deterministically); a
run asking for more examples than the caps allow in total stops at the start with a one-line error.

A `task:NAME` (bundled) or `task:path/to/task.yaml` (custom task definition) entry among training files stands for
the input texts of that task's training split, written once as a JSONL file whose name and content identify the
task (so the shard fingerprint changes with it).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ptlab.config import DataConfig
from ptlab.data.corpus import sample_texts
from ptlab.data.decontaminate import decontaminate_files
from ptlab.data.readers import ReadStats, reader_options
from ptlab.data.shards import ChunkSampler, TokenShard, ensure_shard, lists_shards, open_shards
from ptlab.data.tasks import TASK_PREFIX, task_input_texts
from ptlab.data.tokenizer import PtlabTokenizer
from ptlab.errors import PtlabError
from ptlab.files import write_text_atomic

BLOCK = 16384  # examples per repeat of the source pattern: shares are exact to 1/BLOCK


def shards_root(cfg: DataConfig) -> Path:
    return Path(cfg.shards_dir) if cfg.shards_dir else Path(cfg.tokenizer) / "shards"


# ---------------------------------------------------------------- tasks as training text


def materialise_tasks(files: list[str], directory: Path) -> list[str]:
    """`files` with every `task:...` entry replaced by a JSONL file of that task's training inputs (no labels)."""
    out = []
    for entry in files:
        if not str(entry).startswith(TASK_PREFIX):
            out.append(entry)
            continue
        name, texts = task_input_texts(str(entry)[len(TASK_PREFIX):])
        body = "".join(json.dumps({"text": text, "source": f"task:{name}"}, ensure_ascii=False) + "\n"
                       for text in texts)
        path = directory / f"task-{name}-{hashlib.sha256(body.encode()).hexdigest()[:12]}.jsonl"
        if not path.is_file():
            write_text_atomic(path, body)
        out.append(str(path))
    return out


def training_text_files(files: list[str], cfg: DataConfig, sources: list[str], show_progress: bool) -> list[str]:
    """The files to tokenize for training: `task:` entries materialised, and, with `data.decontaminate`, every
    document that overlaps those tasks' validation or test splits left out (`ptlab.data.decontaminate`)."""
    files = materialise_tasks(files, shards_root(cfg) / "tasks")
    if not cfg.decontaminate:
        return files
    files, _ = decontaminate_files(files, cfg.decontaminate, shards_root(cfg) / "decontaminated", sources,
                                   show_progress=show_progress, **reader_options(cfg))
    return files


# ---------------------------------------------------------------- the schedule


def _pattern(weights: np.ndarray, length: int) -> np.ndarray:
    """[length + 1, sources] counts of each source among the first k examples, by the lag rule from zero."""
    shares, counts, rows = weights.tolist(), [0] * len(weights), [[0] * len(weights)]
    sources = range(len(shares))
    for i in range(1, length + 1):
        counts[max(sources, key=lambda s: shares[s] * i - counts[s])] += 1  # max: the first of equal lags
        rows.append(list(counts))
    return np.asarray(rows, dtype=np.int64)


@dataclass
class _Phase:
    start: int  # first global example of the phase
    base: np.ndarray  # each source's count at `start`
    table: np.ndarray  # the pattern of the sources still active, zero columns for the exhausted ones

    def __post_init__(self) -> None:
        self.served = np.argmax(np.diff(self.table, axis=0), axis=1).tolist()  # the source of each block position

    def counts(self, n: int) -> np.ndarray:
        blocks, rest = divmod(n - self.start, len(self.table) - 1)
        return self.base + blocks * self.table[-1] + self.table[rest]

    def assign(self, example: int) -> tuple[int, int]:
        blocks, rest = divmod(example - self.start, len(self.table) - 1)
        source = self.served[rest]
        return source, int(self.base[source] + blocks * self.table[-1, source] + self.table[rest, source])


class MixtureSchedule:
    """Which source serves each global example, as a pure function of the example index.

    `capacities[s]`: the most examples source s may serve (None: unbounded)."""

    def __init__(self, weights: list[float], capacities: list[int | None], block: int = BLOCK):
        weights = np.asarray(weights, dtype=np.float64)
        self.phases: list[_Phase] = []
        self.end: int | None = None  # examples available in total (None: unbounded)
        self._starts: list[int] = []
        active = np.ones(len(weights), dtype=bool)
        start, base = 0, np.zeros(len(weights), dtype=np.int64)
        while True:
            share = np.where(active, weights, 0.0)
            table = np.zeros((block + 1, len(weights)), dtype=np.int64)
            table[:, active] = _pattern(share[active] / share[active].sum(), block)
            phase = _Phase(start, base, table)
            self.phases.append(phase)
            self._starts.append(start)
            ends = {s: self._reaches(phase, s, capacities[s]) for s in np.flatnonzero(active)
                    if capacities[s] is not None}
            ends = {s: e for s, e in ends.items() if e is not None}
            if not ends:
                return
            start = min(ends.values())
            base = phase.counts(start)
            active &= ~np.isin(np.arange(len(weights)), [s for s, e in ends.items() if e == start])
            if not active.any():
                self.end = start
                return

    @staticmethod
    def _reaches(phase: _Phase, source: int, capacity: int) -> int | None:
        """The global example index at which `source` has served `capacity` examples in `phase`."""
        remaining = capacity - int(phase.base[source])
        per_block = int(phase.table[-1, source])
        if per_block == 0:
            return None
        blocks = (remaining - 1) // per_block
        within = int(np.searchsorted(phase.table[:, source], remaining - blocks * per_block, side="left"))
        return phase.start + blocks * (len(phase.table) - 1) + within

    def _phase(self, n: int) -> _Phase:
        if self.end is not None and n > self.end:
            raise PtlabError(f"data.mixture: every source reached its epochs_cap after {self.end} examples")
        return self.phases[bisect.bisect_right(self._starts, n) - 1]

    def counts(self, n: int) -> np.ndarray:
        """Examples each source served among global examples [0, n)."""
        return self._phase(n).counts(n)

    def assign(self, example: int) -> tuple[int, int]:
        """(source, that source's own example number) of global example `example`."""
        self._phase(example + 1)  # the example must exist
        return self._phase(example).assign(example)


# ---------------------------------------------------------------- sources and sampling


@dataclass
class Mixture:
    """The training sources of `data.mixture`, each with its token shard (a `ptlab.data.stream.TrainingStream`)."""

    names: list[str]
    shards: list[TokenShard]
    weights: dict[str, float]  # by name, normalised to sum to 1 (here only: `ensure_mixture`)
    epochs_caps: list[float | None]

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.shards)

    @property
    def fingerprint(self) -> str:
        """What the data identity of a resumed run compares: each source's data, weight and cap."""
        parts = [[n, s.index.get("data_fingerprint"), self.weights[n], c]
                 for n, s, c in zip(self.names, self.shards, self.epochs_caps)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def sampler(self, chunk_length: int, seed: int, shuffle: bool = True) -> "MixtureSampler":
        return MixtureSampler(self, chunk_length, seed, shuffle)


def source_seed(seed: int, name: str) -> int:
    """A source's own chunk-order seed: sources never share a permutation, and adding one changes no other's."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


class MixtureSampler:
    """The chunk of every global example of a mixture (a `ptlab.data.stream.StreamSampler`, as `ChunkSampler`)."""

    def __init__(self, mixture: Mixture, chunk_length: int, seed: int, shuffle: bool = True):
        self.mixture, self.chunk_length = mixture, chunk_length
        self.samplers = [ChunkSampler(shard, chunk_length, source_seed(seed, name), shuffle)
                         for name, shard in zip(mixture.names, mixture.shards)]
        capacities = [None if cap is None else max(1, int(cap * sampler.num_chunks))
                      for cap, sampler in zip(mixture.epochs_caps, self.samplers)]
        self.schedule = MixtureSchedule([mixture.weights[n] for n in mixture.names], capacities)

    @property
    def num_chunks(self) -> int:
        return sum(s.num_chunks for s in self.samplers)

    @property
    def capacity(self) -> int | None:
        """Examples the epochs caps allow in total (None: unbounded)."""
        return self.schedule.end

    def source(self, example: int) -> int:
        return self.schedule.assign(example)[0]

    def chunk(self, example: int) -> np.ndarray:
        source, number = self.schedule.assign(example)
        return self.samplers[source].chunk(number)

    def source_tokens(self, examples: int) -> dict[str, int]:
        """Chunk tokens each source contributed to global examples [0, examples)."""
        counts = self.schedule.counts(examples)
        return {name: int(c) * self.chunk_length for name, c in zip(self.mixture.names, counts)}


def _files_key(index: int) -> str:
    return f"data.mixture[{index}].files"


def training_shard(files: list[str], sources: list[str], name: str, what: str, cfg: DataConfig,
                   tokenizer: PtlabTokenizer, show_progress: bool = True, stats: ReadStats | None = None) -> TokenShard:
    """The token shard of training `files` (config key `what`, `data.train_files` or a mixture source's): the shard
    directories they list, read as one stream in order, or their text (`training_text_files`) tokenized on first
    use into `<shards root>/NAME`."""
    if lists_shards(files, what):
        return open_shards(files, tokenizer.fingerprint(), cfg.separator, f"config key '{what}'")
    files = training_text_files(files, cfg, sources, show_progress)
    # a decontaminated copy gets its own shard, so runs with and without it do not rebuild each other's
    name = f"{name}-{Path(files[0]).stem}" if cfg.decontaminate else name
    return ensure_shard(files, tokenizer, shards_root(cfg) / name, cfg.separator, sources, show_progress,
                        **reader_options(cfg), stats=stats)


def ensure_mixture(cfg: DataConfig, tokenizer: PtlabTokenizer, show_progress: bool = True,
                   stats: ReadStats | None = None) -> Mixture:
    """Every source's training shard (under `<shards root>/<name>-train`), built on first use, and the weights
    normalised to sum to 1 (the one place they are)."""
    total = sum(s.weight for s in cfg.mixture)
    return Mixture([s.name for s in cfg.mixture],
                   [training_shard(s.files, s.sources or cfg.sources, f"{s.name}-train", _files_key(i), cfg,
                                   tokenizer, show_progress, stats) for i, s in enumerate(cfg.mixture)],
                   {s.name: s.weight / total for s in cfg.mixture}, [s.epochs_cap for s in cfg.mixture])


def validation_files(cfg: DataConfig) -> list[str]:
    """The sources' own validation files when any source gives some, else `data.validation_files`."""
    own = [f for s in cfg.mixture for f in s.validation_files]
    return materialise_tasks(own or cfg.validation_files, shards_root(cfg) / "tasks")


def tokenizer_texts(cfg: DataConfig) -> Iterator[str]:
    """Text to train the tokenizer on: about `tokenizer_sample_bytes`, spread over the training files, or over a
    mixture's text sources in proportion to their weights (token-shard sources are already tokenized)."""
    tasks = shards_root(cfg) / "tasks"
    if not cfg.mixture:
        return sample_texts(materialise_tasks(cfg.train_files, tasks), cfg.sources, cfg.tokenizer_sample_bytes,
                            **reader_options(cfg))
    sources = [s for i, s in enumerate(cfg.mixture) if not lists_shards(s.files, _files_key(i))]
    if not sources:
        raise PtlabError(f"data.mixture: every source is a token shard, so there is no text to train the tokenizer "
                         f"{cfg.tokenizer} on; point data.tokenizer at the tokenizer the shards were built with")
    total = sum(s.weight for s in sources)
    budgets = [max(1, int(cfg.tokenizer_sample_bytes * s.weight / total)) for s in sources]
    return itertools.chain.from_iterable(
        _within(sample_texts(materialise_tasks(s.files, tasks), s.sources or cfg.sources, budget,
                             **reader_options(cfg)), budget)
        for s, budget in zip(sources, budgets))


def _within(texts: Iterator[str], budget: int) -> Iterator[str]:
    """Whole texts until `budget` bytes are reached (thinning by a whole-document stride can overshoot it)."""
    used = 0
    for text in texts:
        if used >= budget:
            return
        used += len(text.encode("utf-8"))
        yield text
