"""C4's de-duplication: pages by normalised URL (the newest is kept), and lines across the whole corpus (each line
is kept on exactly one page: the one whose URL has the smallest md5, so the choice is deterministic but not biased
towards any source), after which a page needs 3 sentences again."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

import numpy as np

from ptlab.data.clean import CleanConfig, Report, count_sentences

_SCHEME = re.compile(r"https?:\/\/(www\.)?")
_TRACKING_TAIL = re.compile(r"\?(utm_|ref|feed).*")


def normalize_url(url: str) -> str:
    """C4's `normalize_url`: no scheme or "www.", no tracking query tail (utm_*, ref, feed), no trailing "/"."""
    return _TRACKING_TAIL.sub("", _SCHEME.sub("", url)).rstrip("/")


def timestamp_key(value) -> tuple:
    """A sortable form of a page's timestamp (ISO strings and epoch numbers; anything else sorts first)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value))
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return (1, parsed.timestamp())
        except ValueError:
            return (0, value)
    return (0, "")


class UrlWinners:
    """The newest page per normalised URL (ties: the first in input order)."""

    def __init__(self) -> None:
        self._best: dict[str, tuple[tuple, int]] = {}

    def add(self, url: str, timestamp, index: int) -> None:
        key = normalize_url(url)
        candidate = (timestamp_key(timestamp), -index)
        best = self._best.get(key)
        if best is None or candidate > (best[0], -best[1]):
            self._best[key] = (candidate[0], index)

    def keeps(self, url: str, index: int) -> bool:
        return self._best[normalize_url(url)][1] == index


def md5_int(text: str) -> int:
    """The first 8 bytes of md5(text) as a signed 64-bit integer (sortable in numpy)."""
    return int.from_bytes(hashlib.md5(text.encode("utf-8")).digest()[:8], "big", signed=True)


def line_hash(line: str) -> int:
    """C4 hashes each line stripped and lower-cased."""
    return md5_int(line.strip().lower())


def page_key(record: dict, fallback: str) -> int:
    """Which page owns a shared line: md5 of the normalised URL (C4), else of the id, else of `fallback`."""
    if isinstance(record.get("url"), str):
        return md5_int(normalize_url(record["url"]))
    if record.get("id") is not None:
        return md5_int(str(record["id"]))
    return md5_int(fallback)


class LineOwners:
    """For every distinct line hash, the smallest page key among the pages holding it."""

    def __init__(self, hashes: np.ndarray, keys: np.ndarray):
        order = np.lexsort((keys, hashes))
        hashes, keys = hashes[order], keys[order]
        first = np.ones(len(hashes), dtype=bool)
        first[1:] = hashes[1:] != hashes[:-1]
        self.hashes, self.owners = hashes[first], keys[first]

    @classmethod
    def from_pairs(cls, chunks: list[tuple[np.ndarray, np.ndarray]]) -> "LineOwners":
        if not chunks:
            return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        return cls(np.concatenate([h for h, _ in chunks]), np.concatenate([k for _, k in chunks]))

    def owner(self, hashes: np.ndarray) -> np.ndarray:
        position = np.searchsorted(self.hashes, hashes)
        return self.owners[np.minimum(position, len(self.owners) - 1)]


def page_line_hashes(text: str, key: int) -> tuple[np.ndarray, np.ndarray]:
    hashes = np.array([line_hash(line) for line in text.split("\n")], dtype=np.int64)
    return hashes, np.full(len(hashes), key, dtype=np.int64)


def dedupe_page(text: str, key: int, owners: LineOwners, cfg: CleanConfig, report: Report) -> str | None:
    """C4's `_remove_lines_from_text`: drop lines owned by another page and repeats within the page; then the page
    must still hold `min_sentences` sentences."""
    lines = text.split("\n")
    owner = owners.owner(np.array([line_hash(line) for line in lines], dtype=np.int64))
    kept, seen = [], set()
    for line, line_owner in zip(lines, owner.tolist()):
        hashed = line_hash(line)
        if line_owner != key or hashed in seen:
            report.line("dedup_lines", line)
            continue
        seen.add(hashed)
        kept.append(line)
    new_text = "\n".join(kept)
    if not new_text or (cfg.min_sentences and count_sentences(new_text) < cfg.min_sentences):
        report.page("dedup_lines", new_text or text, lines=len(kept))
        return None
    return new_text
