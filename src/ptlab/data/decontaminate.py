"""Decontamination: drop pre-training documents that share a long word sequence with a downstream task's
validation or test split, so that a fine-tuned score measures transfer and not memorised answers.

The rule is GPT-3's (Brown et al. 2020, appendix C): lower-cased words, punctuation ignored, a document is dropped
when it shares any 13-word sequence with an evaluation text. Evaluation texts shorter than 13 words match as a
whole (GPT-3 did the same); those under `MIN_WORDS` words are too common to identify anything and are not used.
Every string field of an evaluation record counts (a summary's document and its summary alike), not only the
fine-tuning input, because a corpus that holds the answer next to the question leaks as much as one that holds
the question.

Why it matters here: the bundled corpus holds Debian's package descriptions as "<package>: <synopsis>" followed by
the long description, so without this step 78% of `debian_summaries`' test documents appear in pre-training text
next to their reference summaries.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ptlab.data.readers import iter_records
from ptlab.data.shards import files_fingerprint
from ptlab.data.tasks import Task, task_from_reference
from ptlab.errors import PtlabError
from ptlab.files import digest_file_ends, json_text, write_text_atomic

NGRAM = 13
MIN_WORDS = 8
# An evaluation n-gram found in more training documents than this is shared boilerplate ("This package contains the
# development files for ..."), not a leaked example, and does not drop documents: without this rule a third of the
# bundled corpus goes for the Debian task's sake.
MAX_SHARED_DOCUMENTS = 10
EVALUATION_SPLITS = ("validation", "test")
_WORD = re.compile(r"\w+")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial hash below is a bijection on each position


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class _Vocabulary:
    """Word -> integer id, grown as documents are read; ids are only compared within one process."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> np.ndarray:
        ids = self.ids
        return np.fromiter((ids.setdefault(w, len(ids) + 1) for w in words(text)), dtype=np.uint64)


def window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of every n-word window of `ids` (empty when there are fewer than n words)."""
    if len(ids) < n:
        return np.empty(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)
    with np.errstate(over="ignore"):  # the arithmetic wraps modulo 2**64, as intended
        powers = np.cumprod(np.full(n, _MULTIPLIER, dtype=np.uint64))[::-1]
        return (windows * powers).sum(axis=1, dtype=np.uint64)


class _RollingHashes:
    """`window_hashes` for several window lengths of one document in O(words) each, not O(words x n): with
    M^-1 the inverse of the odd multiplier modulo 2**64 and Q[k] the sum over t < k of ids[t] M^-t, the window at i
    hashes to M^(n+i) (Q[i+n] - Q[i]), the same 64-bit value, exactly (every product and sum wraps modulo 2**64).
    Decontaminating the bundled corpus hashes ~15M words at six window lengths (evaluation texts of 8-13 words)."""

    def __init__(self) -> None:
        self.up = np.ones(1, dtype=np.uint64)  # M^k
        self.down = np.ones(1, dtype=np.uint64)  # M^-k

    def _grow(self, length: int) -> None:
        if len(self.up) >= length:
            return
        size = max(length, 2 * len(self.up))
        inverse = np.uint64(pow(int(_MULTIPLIER), -1, 2**64))
        with np.errstate(over="ignore"):
            self.up = np.cumprod(np.concatenate([[np.uint64(1)], np.full(size - 1, _MULTIPLIER)]), dtype=np.uint64)
            self.down = np.cumprod(np.concatenate([[np.uint64(1)], np.full(size - 1, inverse)]), dtype=np.uint64)

    def __call__(self, ids: np.ndarray, lengths: Iterable[int]) -> dict[int, np.ndarray]:
        self._grow(len(ids) + 1)
        with np.errstate(over="ignore"):
            prefix = np.concatenate([[np.uint64(0)], np.cumsum(ids * self.down[:len(ids)], dtype=np.uint64)])
            return {n: (self.up[n:len(ids) + 1] * (prefix[n:] - prefix[:-n]) if len(ids) >= n
                        else np.empty(0, dtype=np.uint64)) for n in lengths}


@dataclass
class Contamination:
    """The n-grams of some tasks' evaluation texts, and a test for documents that share one."""

    tasks: list[str]
    grams: dict[int, np.ndarray] = field(default_factory=dict)  # window length -> sorted unique hashes
    _pending: dict[int, list[np.ndarray]] = field(default_factory=dict)
    texts: int = 0  # evaluation texts used
    too_short: int = 0  # evaluation texts under MIN_WORDS words, not used
    vocabulary: _Vocabulary = field(default_factory=_Vocabulary)
    _hashes: _RollingHashes = field(default_factory=_RollingHashes)

    def add(self, text: str) -> None:
        ids = self.vocabulary.encode(text)
        if len(ids) < MIN_WORDS:
            self.too_short += 1
            return
        self.texts += 1
        n = min(NGRAM, len(ids))
        self._pending.setdefault(n, []).append(window_hashes(ids, n))

    def matches(self, text: str) -> np.ndarray:
        """The distinct evaluation n-grams (as hashes, unique across window lengths) that `text` contains."""
        for n, pending in self._pending.items():
            self.grams[n] = np.unique(np.concatenate([self.grams.get(n, np.empty(0, np.uint64)), *pending]))
        self._pending.clear()
        ids = self.vocabulary.encode(text)
        found = []
        for n, hashes in self._hashes(ids, self.grams).items():
            grams = self.grams[n]
            if len(hashes) and len(grams):
                at = np.minimum(np.searchsorted(grams, hashes), len(grams) - 1)
                with np.errstate(over="ignore"):
                    found.append(hashes[grams[at] == hashes] + np.uint64(n))
        return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.uint64)


def _task(reference: str) -> Task:
    return task_from_reference(reference, f"config key 'data.decontaminate': {reference!r}")


def evaluation_contamination(references: Iterable[str]) -> Contamination:
    """The n-grams of every string field (ids excepted) of the tasks' validation and test records."""
    references = list(references)
    found = Contamination(references)
    for reference in references:
        task = _task(reference)
        for split in EVALUATION_SPLITS:
            if task.files.get(split) is None:
                continue
            for record in task.records(split):
                for key, value in record.items():
                    if key != "id" and isinstance(value, str):
                        found.add(value)
    return found


@dataclass
class DecontaminationReport:
    tasks: list[str]
    documents: int
    dropped: int
    evaluation_texts: int
    too_short: int
    boilerplate: int  # evaluation n-grams ignored for being in more than MAX_SHARED_DOCUMENTS documents

    def line(self) -> str:
        return (f"decontaminated against {', '.join(self.tasks)}: dropped {self.dropped:,} of {self.documents:,} "
                f"documents sharing a {NGRAM}-word sequence with {self.evaluation_texts:,} validation/test texts "
                f"({self.too_short:,} texts under {MIN_WORDS} words not used; {self.boilerplate:,} sequences found in "
                f"over {MAX_SHARED_DOCUMENTS} documents ignored as boilerplate)")


def decontaminate_files(files: list[str], tasks: list[str], directory: Path, sources: Iterable[str] = (),
                        text_field: str = "text", show_progress: bool = True,
                        **reader_options) -> tuple[list[str], DecontaminationReport]:
    """`files` as one JSONL file without the documents that overlap the tasks' evaluation splits, cached in
    `directory` under a name derived from the inputs and the tasks. Returns the new file list and what was dropped.
    The kept records keep their `source` so `data.sources` still selects them."""
    sources = list(sources)
    key = hashlib.sha256(json.dumps([files_fingerprint(files, sources, text_field, **reader_options),
                                     sorted(tasks), NGRAM, MIN_WORDS, _task_fingerprints(tasks)]).encode())
    path = directory / f"decontaminated-{key.hexdigest()[:16]}.jsonl"
    report_path = path.with_suffix(".report.json")
    if path.is_file() and report_path.is_file():
        return [str(path)], DecontaminationReport(**json.loads(report_path.read_text(encoding="utf-8")))
    contamination = evaluation_contamination(tasks)
    matched: dict[int, np.ndarray] = {}  # document number -> the evaluation n-grams it holds
    documents = 0
    records = iter_records(files, text_field=text_field, sources=sources, **reader_options)
    for documents, record in enumerate(tqdm(records, desc="decontaminating", unit=" docs",
                                            disable=not show_progress, leave=False), start=1):
        found = contamination.matches(record["text"])
        if len(found):
            matched[documents] = found
    held = np.concatenate(list(matched.values())) if matched else np.empty(0, np.uint64)  # every (doc, n-gram)
    grams, counts = np.unique(held, return_counts=True)
    boilerplate = grams[counts > MAX_SHARED_DOCUMENTS]
    # a document goes when any evaluation n-gram it holds is not boilerplate
    holder = np.repeat(np.fromiter(matched, dtype=np.int64, count=len(matched)), [len(f) for f in matched.values()])
    drop = set(holder[~np.isin(held, boilerplate)].tolist())
    if drop and len(drop) == documents:
        raise PtlabError(f"config key 'data.decontaminate': all {documents:,} training documents overlap the "
                         f"evaluation splits of {', '.join(tasks)}; nothing is left to pre-train on")
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    try:
        with open(partial, "w", encoding="utf-8") as out:  # streamed: the corpus may not fit in memory
            records = iter_records(files, text_field=text_field, sources=sources, **reader_options)
            for number, record in enumerate(records, start=1):
                if number not in drop:
                    kept = {text_field: record["text"], **({"source": record["source"]} if "source" in record
                                                           else {})}
                    out.write(json.dumps(kept, ensure_ascii=False) + "\n")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    report = DecontaminationReport(sorted(tasks), documents, len(drop), contamination.texts,
                                   contamination.too_short, len(boilerplate))
    write_text_atomic(report_path, json_text(report.__dict__))
    if show_progress:
        print(f"ptlab: {report.line()}", file=sys.stderr, flush=True)
    return [str(path)], report


def _task_fingerprints(tasks: list[str]) -> list[str]:
    """Evaluation files' identities, so an edited task invalidates the cached copy."""
    digest = hashlib.sha256()
    for reference in sorted(tasks):
        task = _task(reference)
        for split in EVALUATION_SPLITS:
            if task.files.get(split) is not None:
                digest_file_ends(digest, Path(task.files[split]))
    return [digest.hexdigest()]
