"""Token shards: a corpus tokenized once into a flat memory-mapped array, plus a small JSON index.

Layout of a shard directory:
    tokens.bin      all documents' token ids back to back (uint16 when the vocabulary fits, else uint32),
                    each followed by EOS when the separator is "eos"
    doc_starts.npy  int64 offset of every document's first token
    index.json      dtype, counts, separator, tokenizer fingerprint and a fingerprint of the input files
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from ptlab.data.corpus import iter_texts
from ptlab.data.readers import expand_inputs, input_files
from ptlab.data.tokenizer import PtlabTokenizer, batched, token_dtype
from ptlab.errors import PtlabError

INDEX_VERSION = 1


def files_fingerprint(paths: Iterable[str | Path], sources: Iterable[str] = (), text_field: str = "text",
                      text_mode: str = "file", **_error_policy) -> str:
    """Cheap identity of the inputs: names, sizes and a hash of each file's first and last MiB, plus the filter.

    Directories and globs are fingerprinted as the files they expand to (a `datasets` directory as its state and Arrow
    files). The text field and mode count only when not the default, so shards built before they existed stay valid;
    `skip_bad`/`stats` do not change the text of a readable corpus.
    """
    digest = hashlib.sha256()
    for path in (file for source in expand_inputs(paths) for file in input_files(source)):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            digest.update(f.read())
    digest.update(",".join(sorted(sources)).encode())
    if (text_field, text_mode) != ("text", "file"):
        digest.update(f"|{text_field}|{text_mode}".encode())
    return digest.hexdigest()[:16]


@dataclass
class TokenShard:
    """A read-only view of a shard directory."""

    directory: Path
    tokens: np.ndarray
    doc_starts: np.ndarray
    index: dict

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


def build_shard(paths: list[str], tokenizer: PtlabTokenizer, out_dir: str | Path, separator: str = "eos",
                sources: Iterable[str] = (), batch_docs: int = 512, show_progress: bool = True,
                **reader_options) -> TokenShard:
    """Tokenize `paths` into `out_dir`, streaming (memory bounded by one batch of documents).

    Written to a temporary directory and renamed into place, so a crash never leaves a half-built shard.
    """
    out_dir = Path(out_dir)
    sources = list(sources)
    dtype = token_dtype(tokenizer.vocab_size)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    eos = tokenizer.specials.eos
    doc_starts: list[int] = []
    total = 0
    bar = tqdm(desc=f"tokenizing -> {out_dir.name}", unit=" docs", disable=not show_progress, leave=False)
    with open(tmp / "tokens.bin", "wb") as out:
        for texts in batched(iter_texts(paths, sources, **reader_options), batch_docs):
            for ids in tokenizer.encode_batch(texts):
                if separator == "eos":
                    ids.append(eos)
                if not ids:
                    continue
                doc_starts.append(total)
                out.write(np.asarray(ids, dtype=dtype).tobytes())
                total += len(ids)
            bar.update(len(texts))
            bar.set_postfix(tokens=f"{total:,}")
    bar.close()
    if total == 0:
        shutil.rmtree(tmp)
        raise PtlabError(f"no text found in {', '.join(map(str, paths))}"
                         + (f" for sources {sources}" if sources else ""))
    np.save(tmp / "doc_starts.npy", np.asarray(doc_starts, dtype=np.int64))
    index = {"version": INDEX_VERSION, "dtype": dtype.name, "num_tokens": total, "num_documents": len(doc_starts),
             "separator": separator, "vocab_size": tokenizer.vocab_size,
             "tokenizer_fingerprint": tokenizer.fingerprint(), "data_fingerprint": files_fingerprint(paths, sources, **reader_options),
             "files": [str(p) for p in paths], "sources": sources}
    (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return open_shard(out_dir)


def open_shard(directory: str | Path) -> TokenShard:
    directory = Path(directory)
    index_path = directory / "index.json"
    if not index_path.is_file():
        raise PtlabError(f"no token shard at {directory} (index.json missing)")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    tokens = np.memmap(directory / "tokens.bin", dtype=np.dtype(index["dtype"]), mode="r")
    if tokens.shape[0] != index["num_tokens"]:
        raise PtlabError(f"{directory}/tokens.bin holds {tokens.shape[0]} tokens, index says {index['num_tokens']}")
    return TokenShard(directory, tokens, np.load(directory / "doc_starts.npy"), index)


def ensure_shard(paths: list[str], tokenizer: PtlabTokenizer, out_dir: str | Path, separator: str = "eos",
                 sources: Iterable[str] = (), show_progress: bool = True, **reader_options) -> TokenShard:
    """Open the shard at `out_dir` if it was built from these files with this tokenizer, else (re)build it."""
    out_dir = Path(out_dir)
    sources = list(sources)
    if (out_dir / "index.json").is_file():
        shard = open_shard(out_dir)
        if (shard.index.get("tokenizer_fingerprint") == tokenizer.fingerprint()
                and shard.index.get("data_fingerprint") == files_fingerprint(paths, sources, **reader_options)
                and shard.index.get("separator") == separator):
            return shard
    return build_shard(paths, tokenizer, out_dir, separator, sources, show_progress=show_progress, **reader_options)


class ChunkSampler:
    """Deterministic order over fixed-length chunks of a shard, a fresh permutation per epoch.

    Example number g (counted from the start of training) is chunk `perm_e[g mod n]` of epoch e = g // n, with perm_e
    drawn from (seed, e): any step's batch can be recomputed without replaying earlier ones, so resume is exact.
    """

    def __init__(self, shard: TokenShard, chunk_length: int, seed: int, shuffle: bool = True):
        self.shard, self.chunk_length, self.seed, self.shuffle = shard, chunk_length, seed, shuffle
        self.num_chunks = shard.num_tokens // chunk_length
        if self.num_chunks == 0:
            raise PtlabError(f"shard {shard.directory} has {shard.num_tokens} tokens, fewer than one chunk of "
                             f"{chunk_length}; use more text or a shorter objective.inputs_length")
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_chunks)
            else:
                self._perm = np.arange(self.num_chunks)
            self._epoch = epoch
        return self._perm

    def chunk(self, example: int) -> np.ndarray:
        epoch, position = divmod(example, self.num_chunks)
        start = int(self._permutation(epoch)[position]) * self.chunk_length
        return np.asarray(self.shard.tokens[start:start + self.chunk_length], dtype=np.int64)
