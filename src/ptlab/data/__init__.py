"""Data: corpora, tokenizers, token shards and the batches fed to the trainer."""

from __future__ import annotations

import sys
from pathlib import Path

from ptlab.config import DataConfig
from ptlab.data.mixture import ensure_mixture, shards_root, tokenizer_texts, training_shard, validation_files
from ptlab.data.readers import ReadStats, reader_options
from ptlab.data.shards import TokenShard, ensure_shard, lists_shards, open_shards
from ptlab.data.stream import TrainingStream
from ptlab.data.tokenizer import PtlabTokenizer, load_tokenizer, train_tokenizer
from ptlab.errors import PtlabError


def ensure_tokenizer(cfg: DataConfig, show_progress: bool = True) -> PtlabTokenizer:
    """Load `cfg.tokenizer`, or train it on the training files (and save it there) when it does not exist yet."""
    directory = Path(cfg.tokenizer)
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    if not cfg.mixture and lists_shards(cfg.train_files, "data.train_files"):
        raise PtlabError(f"config key 'data.tokenizer': {directory} has no tokenizer.json, and data.train_files "
                         "lists token shards, which hold no text to train one on; point it at the tokenizer the "
                         "shards were built with")
    if show_progress:
        inputs = cfg.train_files or [f"mixture source {m.name}" for m in cfg.mixture]
        print(f"training a {cfg.tokenizer_kind} tokenizer ({cfg.vocab_size:,} ids) on up to "
              f"{cfg.tokenizer_sample_bytes / 1e6:g} MB of {', '.join(map(str, inputs))} ...",
              file=sys.stderr, flush=True)
    texts = tokenizer_texts(cfg)
    tokenizer = train_tokenizer(texts, cfg.tokenizer_kind, cfg.vocab_size, cfg.num_sentinels,
                                show_progress=show_progress)
    tokenizer.save(directory)
    return tokenizer


def ensure_shards(cfg: DataConfig, tokenizer: PtlabTokenizer,
                  show_progress: bool = True) -> tuple[TrainingStream, TokenShard | None]:
    """The training stream for `cfg` (a `Mixture` of shards for `data.mixture`, else the shard of
    `data.train_files`) and the validation shard, built on first use and reused while inputs and tokenizer match."""
    root = shards_root(cfg)
    stats = ReadStats()
    train = (ensure_mixture(cfg, tokenizer, show_progress, stats) if cfg.mixture else
             training_shard(cfg.train_files, cfg.sources, "train", "data.train_files", cfg, tokenizer, show_progress,
                            stats))
    validation, files = None, validation_files(cfg)
    if files and lists_shards(files, "data.validation_files"):
        validation = open_shards(files, tokenizer.fingerprint(), cfg.separator, "config key 'data.validation_files'")
    elif files:
        validation = ensure_shard(files, tokenizer, root / "validation", cfg.separator, cfg.sources, show_progress,
                                  **reader_options(cfg), stats=stats)
    if stats.bad:
        print(f"ptlab: skipped {stats.bad:,} bad input record(s) (data.skip_bad), the first: {stats.examples[0]}",
              file=sys.stderr, flush=True)
    return train, validation
