"""Token shards: a corpus tokenized once into flat memory-mapped arrays, plus a small JSON index.

A shard directory is one of two layouts. One process (`build_shard`) writes a single piece:
    tokens.bin      all documents' token ids back to back (uint16 when the vocabulary fits, else uint32),
                    each followed by EOS when the separator is "eos"
    doc_starts.npy  int64 offset of every document's first token
    index.json      dtype, counts, separator, tokenizer fingerprint and a fingerprint of the input files
Several workers (`ptlab.data.tokenize_parallel`) write one piece per chunk of consecutive documents:
    pieces/NNNNN.bin, pieces/NNNNN.starts.npy   a chunk's tokens and its documents' offsets within the piece
    manifest.json   the index.json fields plus `pieces` (in document order, with their token and document counts)
Concatenating the pieces in manifest order gives the one-process tokens.bin byte for byte. `open_shards` reads
several shard directories as one logical token stream (`ConcatTokens`), which is what the samplers see.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from ptlab.data.corpus import iter_texts
from ptlab.data.readers import expand_inputs, input_files
from ptlab.data.tokenizer import PtlabTokenizer, batched, token_dtype
from ptlab.errors import PtlabError
from ptlab.files import digest_file_ends

INDEX_VERSION = 1
MANIFEST_VERSION = 2
MANIFEST = "manifest.json"
INDEX = "index.json"


def files_fingerprint(paths: Iterable[str | Path], sources: Iterable[str] = (), text_field: str = "text",
                      text_mode: str = "file", **_error_policy) -> str:
    """Cheap identity of the inputs: names, sizes and a hash of each file's first and last MiB, plus the filter.

    Directories and globs are fingerprinted as the files they expand to (a `datasets` directory as its state and Arrow
    files). The text field and mode count only when not the default, so shards built before they existed stay valid;
    `skip_bad`/`stats` do not change the text of a readable corpus.
    """
    digest = hashlib.sha256()
    for path in (file for source in expand_inputs(paths) for file in input_files(source)):
        digest_file_ends(digest, path)
    digest.update(",".join(sorted(sources)).encode())
    if (text_field, text_mode) != ("text", "file"):
        digest.update(f"|{text_field}|{text_mode}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class PieceFile:
    """A piece's tokens file, memory-mapped only while `ConcatTokens` needs it (a mapping holds a file descriptor,
    and a large corpus has more pieces than a process may keep open)."""

    path: Path
    dtype: np.dtype
    length: int

    def __len__(self) -> int:
        return self.length

    def open(self) -> np.ndarray:
        if self.length == 0:
            return np.empty(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.length,))


class ConcatTokens:
    """Several token arrays (or piece files) read as one: slicing (what the samplers do), `len`, `shape`, `dtype`.

    A slice that spans pieces is copied out of each; `np.asarray(tokens)` copies the whole stream (small corpora only).
    At most `MAX_OPEN` piece files are mapped at a time, the most recently used.
    """

    MAX_OPEN = 64

    def __init__(self, parts: list[np.ndarray | PieceFile]):
        self.parts = parts
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])
        self.dtype = np.result_type(*(p.dtype for p in parts))
        self.shape = (int(self.offsets[-1]),)
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self.shape[0]

    def _part(self, i: int) -> np.ndarray:
        part = self.parts[i]
        if not isinstance(part, PieceFile):
            return part
        if i in self._open:
            self._open.move_to_end(i)
        else:
            self._open[i] = part.open()
            if len(self._open) > self.MAX_OPEN:
                self._open.popitem(last=False)
        return self._open[i]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return np.asarray(self)[key]
            out, position = [], start
            while position < stop:
                part = int(np.searchsorted(self.offsets, position, side="right")) - 1
                end = min(stop, int(self.offsets[part + 1]))
                out.append(self._part(part)[position - self.offsets[part]:end - self.offsets[part]])
                position = end
            if not out:
                return np.empty(0, dtype=self.dtype)
            return np.asarray(out[0], dtype=self.dtype) if len(out) == 1 else np.concatenate(out).astype(self.dtype)
        position = int(key) + (len(self) if int(key) < 0 else 0)
        if not 0 <= position < len(self):
            raise IndexError(f"token {key} out of range for {len(self)} tokens")
        part = int(np.searchsorted(self.offsets, position, side="right")) - 1
        return self._part(part)[position - self.offsets[part]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype, copy=False)


@dataclass
class TokenShard:
    """A read-only view of one shard directory, or of several read as one stream (`open_shards`).

    `tokens` is a memmap for a single piece and a `ConcatTokens` for several; `doc_starts` are offsets into it.
    """

    directory: Path
    tokens: np.ndarray | ConcatTokens
    doc_starts: np.ndarray
    index: dict

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def fingerprint(self) -> str:
        """What the data identity of a resumed run compares: the inputs the shard was built from."""
        return self.index["data_fingerprint"]

    @property
    def weights(self) -> dict[str, float]:
        """One unnamed source (a `ptlab.data.stream.TrainingStream` that names none)."""
        return {}

    def sampler(self, chunk_length: int, seed: int, shuffle: bool = True) -> "ChunkSampler":
        return ChunkSampler(self, chunk_length, seed, shuffle)


def encode_piece(tokenizer: PtlabTokenizer, texts: list[str], separator: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `texts` back to back (EOS after each when the separator is "eos") and each document's start.

    The one encoding step of every engine, so that one process and many write the same bytes.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    arrays, starts, total = [], [], 0
    for ids in tokenizer.encode_batch(texts):
        if separator == "eos":
            ids.append(tokenizer.eos_id)
        if not ids:
            continue
        starts.append(total)
        arrays.append(np.asarray(ids, dtype=dtype))
        total += len(ids)
    tokens = np.concatenate(arrays) if arrays else np.empty(0, dtype=dtype)
    return tokens, np.asarray(starts, dtype=np.int64)


def shard_index(paths: list[str], tokenizer: PtlabTokenizer, separator: str, sources: list[str], num_tokens: int,
                num_documents: int, **reader_options) -> dict:
    """The index.json fields (a manifest has them too): what was tokenized, how, and the counts."""
    return {"version": INDEX_VERSION, "dtype": token_dtype(tokenizer.vocab_size).name, "num_tokens": num_tokens,
            "num_documents": num_documents, "separator": separator, "vocab_size": tokenizer.vocab_size,
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "data_fingerprint": files_fingerprint(paths, sources, **reader_options),
            "files": [str(p) for p in paths], "sources": sources}


def no_text_error(paths: list[str], sources: list[str]) -> PtlabError:
    return PtlabError(f"no text found in {', '.join(map(str, paths))}"
                      + (f" for sources {sources}" if sources else ""))


def build_shard(paths: list[str], tokenizer: PtlabTokenizer, out_dir: str | Path, separator: str = "eos",
                sources: Iterable[str] = (), batch_docs: int = 512, show_progress: bool = True,
                **reader_options) -> TokenShard:
    """Tokenize `paths` into `out_dir` in this process, streaming (memory bounded by one batch of documents).

    `reader_options` go to the document reader. Written to a temporary directory and renamed into place, so a crash
    never leaves a half-built shard. `ptlab.data.tokenize_parallel` does the same with several processes.
    """
    out_dir = Path(out_dir)
    sources = list(sources)
    doc_starts: list[np.ndarray] = []
    total = 0
    with shard_in_progress(out_dir, show_progress) as (tmp, bar):
        with open(tmp / "tokens.bin", "wb") as out:
            for texts in batched(iter_texts(paths, sources, **reader_options), batch_docs):
                tokens, starts = encode_piece(tokenizer, texts, separator)
                out.write(tokens.tobytes())
                doc_starts.append(starts + total)
                total += len(tokens)
                bar.update(len(texts))
                bar.set_postfix(tokens=f"{total:,}")
        if total == 0:
            raise no_text_error(paths, sources)
        starts = np.concatenate(doc_starts)
        np.save(tmp / "doc_starts.npy", starts)
        index = shard_index(paths, tokenizer, separator, sources, total, len(starts), **reader_options)
        (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return open_shard(out_dir)


@contextmanager
def shard_in_progress(out_dir: Path, show_progress: bool = True) -> Iterator[tuple[Path, tqdm]]:
    """Build a shard in `OUT.tmp/` with a progress bar: yields the (fresh, empty) directory and the bar. When the
    block ends it renames the directory to `out_dir`, replacing what was there; on any error (Ctrl-C included) it
    removes the directory and leaves `out_dir` as it was. `build_shard` and `tokenize_parallel` both write this way."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bar = tqdm(desc=f"tokenizing -> {out_dir.name}", unit=" docs", disable=not show_progress, leave=False)
    try:
        yield tmp, bar
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def is_shard_directory(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / MANIFEST).is_file() or (path / INDEX).is_file())


def lists_shards(paths: Iterable[str | Path], what: str) -> bool:
    """Whether `paths` (the setting `what`) names token-shard directories rather than text inputs; a mix is an error,
    because the shard directories' order in the token stream would be ambiguous."""
    paths = list(paths)
    shards = [is_shard_directory(p) for p in paths]
    if any(shards) and not all(shards):
        raise PtlabError(f"config key '{what}': mixes token-shard directories "
                         f"({', '.join(str(p) for p, s in zip(paths, shards) if s)}) with text inputs "
                         f"({', '.join(str(p) for p, s in zip(paths, shards) if not s)}); tokenize the text with "
                         "`ptlab tokenize` and list its shard directory instead")
    return bool(paths) and all(shards)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PtlabError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise PtlabError(f"{path}: expected a JSON object")
    return data


def _piece_file(path: Path, dtype: str, expected: int) -> PieceFile:
    """A tokens file whose size matches its index entry (checked without mapping it)."""
    if not path.is_file():
        raise PtlabError(f"{path} is missing")
    dtype = np.dtype(dtype)
    size = path.stat().st_size
    if size != expected * dtype.itemsize:
        held = f"{size // dtype.itemsize}" if size % dtype.itemsize == 0 else f"{size} bytes of {dtype.name}, not whole"
        raise PtlabError(f"{path} holds {held} tokens, the index says {expected}")
    return PieceFile(path, dtype, expected)


def _open_manifest(directory: Path) -> TokenShard:
    manifest = _read_json(directory / MANIFEST)
    try:
        dtype, pieces = manifest["dtype"], manifest["pieces"]
        parts = [_piece_file(directory / p["tokens"], dtype, p["num_tokens"]) for p in pieces]
        starts = [np.load(directory / p["doc_starts"]) for p in pieces]
        counts = [(p["num_tokens"], p["num_documents"]) for p in pieces]
        expected = (manifest["num_tokens"], manifest["num_documents"])
    except KeyError as err:
        raise PtlabError(f"{directory / MANIFEST}: missing key {err}") from None
    except (TypeError, ValueError, OSError) as err:
        raise PtlabError(f"{directory / MANIFEST}: malformed piece list ({err})") from None
    for piece, (num_tokens, num_documents), piece_starts in zip(pieces, counts, starts):
        if len(piece_starts) != num_documents:
            raise PtlabError(f"{directory / piece['doc_starts']} holds {len(piece_starts)} documents, the manifest "
                             f"says {num_documents}")
    if (sum(c[0] for c in counts), sum(c[1] for c in counts)) != tuple(expected):
        raise PtlabError(f"{directory / MANIFEST}: its pieces do not add up to num_tokens and num_documents")
    tokens = parts[0].open() if len(parts) == 1 else ConcatTokens(parts)
    return TokenShard(directory, tokens, _global_starts(starts, [len(p) for p in parts]), manifest)


def _global_starts(starts: list[np.ndarray], lengths: list[int]) -> np.ndarray:
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)[:-1]])
    return np.concatenate([s.astype(np.int64) + o for s, o in zip(starts, offsets)] or [np.empty(0, np.int64)])


def open_shard(directory: str | Path) -> TokenShard:
    """A shard directory of either layout (manifest.json with pieces, or index.json with one tokens.bin)."""
    directory = Path(directory)
    if (directory / MANIFEST).is_file():
        return _open_manifest(directory)
    if not (directory / INDEX).is_file():
        raise PtlabError(f"no token shard at {directory} (neither {MANIFEST} nor {INDEX} found)")
    index = _read_json(directory / INDEX)
    if "dtype" not in index or "num_tokens" not in index:
        raise PtlabError(f"{directory / INDEX}: missing dtype or num_tokens")
    tokens = _piece_file(directory / "tokens.bin", index["dtype"], index["num_tokens"]).open()
    return TokenShard(directory, tokens, np.load(directory / "doc_starts.npy"), index)


def open_shards(directories: list[str | Path], tokenizer_fingerprint: str | None = None,
                separator: str | None = None, what: str = "shards") -> TokenShard:
    """Several shard directories as one token stream, in the order given (documents never straddle two).

    Every directory must come from the same tokenizer (and `tokenizer_fingerprint`, `separator` when given); `what`
    names the setting they came from in error messages. The combined index's `data_fingerprint` covers all of them
    in order, so a resumed run notices when the list changes.
    """
    if not directories:
        raise PtlabError(f"{what}: no shard directories given")
    shards = [open_shard(d) for d in directories]
    first = shards[0]
    for shard in shards:
        index = shard.index
        expected = tokenizer_fingerprint or first.index.get("tokenizer_fingerprint")
        if index.get("tokenizer_fingerprint") != expected:
            raise PtlabError(f"{what}: {shard.directory} was tokenized with another tokenizer (fingerprint "
                             f"{index.get('tokenizer_fingerprint')}, expected {expected})")
        if index.get("separator") != (separator or first.index.get("separator")):
            raise PtlabError(f"{what}: {shard.directory} has separator {index.get('separator')!r}, expected "
                             f"{separator or first.index.get('separator')!r}")
    if len(shards) == 1:
        return first
    parts = [p for s in shards for p in (s.tokens.parts if isinstance(s.tokens, ConcatTokens) else [s.tokens])]
    digest = hashlib.sha256(",".join(str(s.index.get("data_fingerprint")) for s in shards).encode()).hexdigest()[:16]
    index = {**first.index, "num_tokens": sum(s.num_tokens for s in shards),
             "num_documents": sum(int(s.index["num_documents"]) for s in shards), "data_fingerprint": digest,
             "files": [f for s in shards for f in s.index.get("files", [])],
             "shards": [str(s.directory) for s in shards]}
    index.pop("pieces", None)
    doc_starts = _global_starts([s.doc_starts for s in shards], [s.num_tokens for s in shards])
    return TokenShard(first.directory, ConcatTokens(parts), doc_starts, index)


def ensure_shard(paths: list[str], tokenizer: PtlabTokenizer, out_dir: str | Path, separator: str = "eos",
                 sources: Iterable[str] = (), show_progress: bool = True, **reader_options) -> TokenShard:
    """Open the shard at `out_dir` if it was built from these files with this tokenizer, else (re)build it."""
    out_dir = Path(out_dir)
    sources = list(sources)
    if is_shard_directory(out_dir):
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
            where = ", ".join(shard.index.get("shards", [str(shard.directory)]))
            raise PtlabError(f"shard {where} has {shard.num_tokens} tokens, fewer than one chunk of "
                             f"{chunk_length}; use more text or a shorter objective.inputs_length")
        self._epoch, self._perm = -1, None

    capacity = None  # examples it can serve in all: unbounded, a fresh permutation per pass

    def source_tokens(self, examples: int) -> dict[str, int]:
        """Chunk tokens per named source: a single shard names none."""
        return {}

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
