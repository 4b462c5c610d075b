"""Reading document corpora: JSON Lines files (optionally gzip-compressed) with a `text` field per record."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Iterable, Iterator

from ptlab.errors import PtlabError


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict")


def iter_records(paths: Iterable[str | Path], sources: Iterable[str] = ()) -> Iterator[dict]:
    """Yield records from JSONL files in order; `sources`, when given, keeps only records with those `source` values.

    A malformed line is a `PtlabError` naming the file and line.
    """
    keep = set(sources)
    for path in map(Path, paths):
        if not path.is_file():
            raise PtlabError(f"corpus file not found: {path}")
        line_no = 0
        try:
            with _open_text(path) as lines:
                for line_no, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise PtlabError(f"{path} line {line_no}: invalid JSON ({err.msg})") from None
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise PtlabError(f"{path} line {line_no}: record has no string 'text' field")
                    if keep and record.get("source") not in keep:
                        continue
                    yield record
        except UnicodeDecodeError:
            raise PtlabError(f"{path} line {line_no + 1}: not valid UTF-8") from None
        except (OSError, EOFError) as err:  # truncated or corrupt gzip
            raise PtlabError(f"{path}: cannot read ({err})") from None


def iter_texts(paths: Iterable[str | Path], sources: Iterable[str] = ()) -> Iterator[str]:
    for record in iter_records(paths, sources):
        if record["text"].strip():
            yield record["text"]


def sample_texts(paths: list[str | Path], sources: Iterable[str] = (), max_bytes: int = 0) -> Iterator[str]:
    """Texts of the corpus, thinned to about `max_bytes` by keeping every k-th document (0: everything).

    Spreading the sample over the whole corpus keeps every source represented, which a prefix would not.
    """
    sources = list(sources)
    if max_bytes <= 0:
        yield from iter_texts(paths, sources)
        return
    total = sum(len(t.encode("utf-8")) for t in iter_texts(paths, sources))
    stride = max(1, -(-total // max_bytes))
    for i, text in enumerate(iter_texts(paths, sources)):
        if i % stride == 0:
            yield text
