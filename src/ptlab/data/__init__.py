"""Data: corpora, tokenizers, token shards and the batches fed to the trainer."""

from __future__ import annotations

import sys
from pathlib import Path

from ptlab.config import DataConfig
from ptlab.data.corpus import sample_texts
from ptlab.data.shards import TokenShard, ensure_shard
from ptlab.data.tokenizer import PtlabTokenizer, load_tokenizer, train_tokenizer


def ensure_tokenizer(cfg: DataConfig, show_progress: bool = True) -> PtlabTokenizer:
    """Load `cfg.tokenizer`, or train it on the training files (and save it there) when it does not exist yet."""
    directory = Path(cfg.tokenizer)
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    if show_progress:
        print(f"training a {cfg.tokenizer_kind} tokenizer ({cfg.vocab_size:,} ids) on up to "
              f"{cfg.tokenizer_sample_bytes / 1e6:g} MB of {', '.join(map(str, cfg.train_files))} ...",
              file=sys.stderr, flush=True)
    texts = sample_texts(cfg.train_files, cfg.sources, cfg.tokenizer_sample_bytes)
    tokenizer = train_tokenizer(texts, cfg.tokenizer_kind, cfg.vocab_size, cfg.num_sentinels,
                                show_progress=show_progress)
    tokenizer.save(directory)
    return tokenizer


def ensure_shards(cfg: DataConfig, tokenizer: PtlabTokenizer,
                  show_progress: bool = True) -> tuple[TokenShard, TokenShard | None]:
    """Train and validation shards for `cfg`, built on first use and reused while inputs and tokenizer match."""
    root = Path(cfg.shards_dir) if cfg.shards_dir else Path(cfg.tokenizer) / "shards"
    train = ensure_shard(cfg.train_files, tokenizer, root / "train", cfg.separator, cfg.sources, show_progress)
    validation = None
    if cfg.validation_files:
        validation = ensure_shard(cfg.validation_files, tokenizer, root / "validation", cfg.separator, cfg.sources,
                                  show_progress)
    return train, validation
