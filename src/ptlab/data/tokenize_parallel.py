"""Tokenizing with several processes (`ptlab tokenize --workers N`) or on Ray Data (`--engine ray`).

The parent reads the document stream and cuts it into chunks of consecutive documents (about `chunk_chars`
characters each). Chunk k becomes piece k of the output (`pieces/0000k.bin` and `.starts.npy`, see
`ptlab.data.shards`), tokenized by whichever worker is free, with `shards.encode_piece`, the same function the
one-process `build_shard` uses; `manifest.json` lists the pieces in document order, so their concatenation equals
the one-process `tokens.bin` byte for byte.

Each worker tokenizes with one thread (`TOKENIZERS_PARALLELISM=false`): N workers use N cores, instead of every
worker's batch encoder also spreading over all cores. Reading stays in the parent: decompressing and parsing JSONL is
a few percent of the cost of tokenizing it (see benchmarks/tokenize.py), and a single reader keeps every input format
and its error messages (file and line) exactly as the one-process path has them. At most `2 * workers` chunks are in
flight, so memory stays bounded by a few chunks of text.

Everything is written to `OUT.tmp/` and renamed to `OUT` at the end; any error removes `OUT.tmp/` and leaves `OUT`
as it was.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

# The reader and fingerprint shards.py uses, so that switching the reader there switches it here too.
from ptlab.data.shards import (
    MANIFEST,
    MANIFEST_VERSION,
    TokenShard,
    build_shard,
    encode_piece,
    iter_texts,
    no_text_error,
    open_shard,
    shard_in_progress,
    shard_index,
)
from ptlab.data.tokenizer import PtlabTokenizer
from ptlab.errors import PtlabError

ENGINES = ("local", "ray")
PIECES = "pieces"
DEFAULT_CHUNK_CHARS = 4_000_000  # ~1-2 s of tokenizing per chunk: small next to it, a pool hand-off is noise


@dataclass(frozen=True)
class TokenizerSpec:
    """What a worker needs to rebuild the tokenizer: plain strings and ints, cheap to send to a process."""

    json: str
    kind: str
    num_sentinels: int
    pad_id: int
    eos_id: int
    unk_id: int

    @classmethod
    def of(cls, tokenizer: PtlabTokenizer) -> "TokenizerSpec":
        return cls(tokenizer.tokenizer.to_str(), tokenizer.kind, tokenizer.num_sentinels, tokenizer.pad_id,
                   tokenizer.eos_id, tokenizer.unk_id)

    def build(self) -> PtlabTokenizer:
        return PtlabTokenizer(Tokenizer.from_str(self.json), self.kind, self.num_sentinels, self.pad_id, self.eos_id,
                              self.unk_id)


def iter_chunks(texts: Iterable[str], chunk_chars: int) -> Iterator[list[str]]:
    """Consecutive documents grouped into lists of at least `chunk_chars` characters (the last may be shorter)."""
    chunk, size = [], 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def piece_names(index: int) -> tuple[str, str]:
    return f"{PIECES}/{index:05d}.bin", f"{PIECES}/{index:05d}.starts.npy"


def write_piece(directory: Path, index: int, tokens: np.ndarray, starts: np.ndarray) -> dict:
    """Write chunk `index`'s piece under `directory` and return its manifest entry."""
    tokens_name, starts_name = piece_names(index)
    with open(directory / tokens_name, "wb") as out:
        out.write(tokens.tobytes())
    np.save(directory / starts_name, starts)
    return {"tokens": tokens_name, "doc_starts": starts_name, "num_tokens": int(len(tokens)),
            "num_documents": int(len(starts))}


# Worker-process state, set once per process by _init_worker (the tokenizer is loaded once, not per chunk).
_WORKER: dict = {}


def _init_worker(spec: TokenizerSpec, separator: str, directory: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: N workers, N cores
    _WORKER.update(tokenizer=spec.build(), separator=separator, directory=Path(directory))


def _tokenize_chunk(index: int, texts: list[str]) -> dict:
    tokens, starts = encode_piece(_WORKER["tokenizer"], texts, _WORKER["separator"])
    return write_piece(_WORKER["directory"], index, tokens, starts)


def _run_local(chunks: Iterator[list[str]], spec: TokenizerSpec, separator: str, tmp: Path, workers: int,
               bar: tqdm) -> list[dict]:
    """Chunks to a process pool, at most `2 * workers` in flight; manifest entries in chunk order."""
    # spawn: a forked child would inherit the parent's tokenizer thread pool and reader state
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(spec, separator, str(tmp)))
    pending: deque = deque()
    pieces: list[dict] = []

    def collect() -> None:
        count, future = pending.popleft()
        try:
            pieces.append(future.result())
        except BrokenProcessPool:
            raise PtlabError("a tokenizing worker died (out of memory?); try fewer --workers") from None
        except PtlabError:
            raise
        except Exception as err:  # a worker's own failure (disk full, ...), in one line
            raise PtlabError(f"a tokenizing worker failed: {type(err).__name__}: {err}") from None
        bar.update(count)

    try:
        for index, texts in enumerate(chunks):
            pending.append((len(texts), pool.submit(_tokenize_chunk, index, texts)))
            if len(pending) >= 2 * workers:
                collect()
        while pending:
            collect()
        return pieces
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# Ray workers are long-lived processes: keep each tokenizer they build, keyed by its spec.
_RAY_TOKENIZERS: dict[TokenizerSpec, PtlabTokenizer] = {}


def _ray_tokenize(spec: TokenizerSpec, separator: str, row: dict) -> dict:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if spec not in _RAY_TOKENIZERS:
        _RAY_TOKENIZERS[spec] = spec.build()
    tokens, starts = encode_piece(_RAY_TOKENIZERS[spec], list(row["texts"]), separator)
    return {"index": row["index"], "dtype": tokens.dtype.name, "tokens": tokens.tobytes(), "starts": starts.tobytes()}


def _run_ray(chunks: Iterator[list[str]], spec: TokenizerSpec, separator: str, tmp: Path, workers: int,
             bar: tqdm) -> list[dict]:
    """The same chunks as Ray Data `map` tasks. Tokens come back to the driver, which writes the pieces, so the
    output directory need not be on a file system the cluster shares."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise PtlabError("--engine ray needs Ray Data: pip install 'ptlab[ray]'") from None
    if not ray.is_initialized():  # joins a running cluster when RAY_ADDRESS is set, else starts a local one
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts documents
    context.execution_options.preserve_order = True
    tokenize = partial(_ray_tokenize, spec, separator)
    pieces: list[dict] = []
    window: list[tuple[int, list[str]]] = []

    def flush() -> None:
        items = [{"index": i, "texts": texts} for i, texts in window]
        try:
            rows = sorted(ray.data.from_items(items).map(tokenize).take_all(), key=lambda r: r["index"])
        except Exception as err:  # Ray wraps worker errors in its own types, with multi-line tracebacks
            raise PtlabError(f"Ray tokenizing failed: {str(err).strip().splitlines()[-1]}") from None
        for row, (_, texts) in zip(rows, window):
            tokens = np.frombuffer(row["tokens"], dtype=np.dtype(row["dtype"]))
            pieces.append(write_piece(tmp, int(row["index"]), tokens, np.frombuffer(row["starts"], dtype=np.int64)))
            bar.update(len(texts))
        window.clear()

    # a window of chunks per Ray dataset bounds the driver's memory, and keeps every worker busy
    for index, texts in enumerate(chunks):
        window.append((index, texts))
        if len(window) >= 4 * workers:
            flush()
    if window:
        flush()
    return pieces


def tokenize_to_shard(paths: list[str], tokenizer: PtlabTokenizer, out_dir: str | Path, separator: str = "eos",
                      sources: Iterable[str] = (), workers: int = 1, engine: str = "local",
                      chunk_chars: int = DEFAULT_CHUNK_CHARS, show_progress: bool = True,
                      **reader_options) -> TokenShard:
    """Tokenize `paths` into the shard directory `out_dir`: one process (`build_shard`'s single tokens.bin) when
    `workers` is 1 with the local engine, else pieces plus a manifest. Same token stream either way.

    The local workers are spawned processes: a script that calls this must do so under `if __name__ == "__main__":`.
    """
    if engine not in ENGINES:
        raise PtlabError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if workers < 1:
        raise PtlabError(f"--workers must be at least 1, got {workers}")
    if chunk_chars < 1:
        raise PtlabError(f"chunk_chars must be at least 1, got {chunk_chars}")
    sources = list(sources)
    if engine == "local" and workers == 1:
        return build_shard(paths, tokenizer, out_dir, separator, sources, show_progress=show_progress,
                           **reader_options)
    out_dir = Path(out_dir)
    run = _run_local if engine == "local" else _run_ray
    with shard_in_progress(out_dir, show_progress) as (tmp, bar):
        (tmp / PIECES).mkdir()
        chunks = iter_chunks(iter_texts(paths, sources, **reader_options), chunk_chars)
        pieces = run(chunks, TokenizerSpec.of(tokenizer), separator, tmp, workers, bar)
        num_tokens = sum(p["num_tokens"] for p in pieces)
        if num_tokens == 0:
            raise no_text_error(paths, sources)
        manifest = {**shard_index(paths, tokenizer, separator, sources, num_tokens,
                                  sum(p["num_documents"] for p in pieces), **reader_options),
                    "version": MANIFEST_VERSION, "engine": engine, "workers": workers, "pieces": pieces}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return open_shard(out_dir)
