"""C4's de-duplication: pages by normalised URL (the newest is kept), and lines across the whole corpus, after
which a page needs 3 sentences again. Each line is kept on exactly one page, the one tensorflow-datasets'
`remove_duplicate_text` keeps: the page whose key has the smallest md5 hex digest (`Top.PerKey(1,
key=_hash_text, reverse=True)`), so the choice is deterministic but not biased towards any domain. The key is the
normalised URL (tensorflow-datasets' 2020 code keys pages by it once URLs are de-duplicated; its current code hashes
the raw `page.url`, which picks another page wherever the two differ), else the record's id, else the page's place
in the input (C4 has no page without a URL). Lines are told apart by a 64-bit md5 prefix where C4 compares the full
digest: n distinct lines share a prefix with odds of about n^2 / 2^65."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

import numpy as np

from ptlab.clean.rules import CleanConfig, Report, count_sentences

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
    """The first 8 bytes of md5(text) as a signed 64-bit integer (sortable in numpy): a line's identity."""
    return int.from_bytes(hashlib.md5(text.encode("utf-8")).digest()[:8], "big", signed=True)


def md5_hex(text: str) -> str:
    """C4's `_hash_text`."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def line_hash(line: str) -> int:
    """C4 hashes each line stripped and lower-cased."""
    return md5_int(line.strip().lower())


def page_key(record: dict, fallback: str) -> str:
    """The md5 hex digest that decides which page keeps a shared line: of the normalised URL (C4), else of the
    id, else of `fallback` (the page's place in the input)."""
    if isinstance(record.get("url"), str):
        return md5_hex(normalize_url(record["url"]))
    if record.get("id") is not None:
        return md5_hex(str(record["id"]))
    return md5_hex(fallback)


def digest_words(keys: list[str] | np.ndarray) -> np.ndarray:
    """md5 hex digests -> [n, 2] unsigned 64-bit words (high, low). Compared high word first, they order exactly
    as the hex strings do (equal length, big-endian); a signed comparison would not."""
    raw = bytes.fromhex("".join(keys))
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 2)


class LineOwners:
    """For every distinct line hash, the owning page's key: the smallest md5 hex digest among the pages holding
    the line, kept as its two 64-bit words."""

    def __init__(self, hashes: np.ndarray, keys: np.ndarray):
        order = np.lexsort((keys[:, 1], keys[:, 0], hashes))
        hashes, keys = hashes[order], keys[order]
        first = np.ones(len(hashes), dtype=bool)
        first[1:] = hashes[1:] != hashes[:-1]
        self.hashes, self.owners = hashes[first], keys[first]

    @classmethod
    def from_pairs(cls, chunks: list[tuple[np.ndarray, np.ndarray]]) -> "LineOwners":
        if not chunks:
            return cls(np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.uint64))
        return cls(np.concatenate([h for h, _ in chunks]), np.concatenate([k for _, k in chunks]))

    def owner(self, hashes: np.ndarray) -> np.ndarray:
        position = np.searchsorted(self.hashes, hashes)
        return self.owners[np.minimum(position, len(self.owners) - 1)]


def page_line_hashes(text: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    hashes = np.array([line_hash(line) for line in text.split("\n")], dtype=np.int64)
    return hashes, np.repeat(digest_words([key]), len(hashes), axis=0)


def dedupe_page(text: str, key: str, owners: LineOwners, cfg: CleanConfig, report: Report) -> str | None:
    """C4's `_remove_lines_from_text`: drop lines owned by another page and repeats within the page; then the page
    must still hold `min_sentences` sentences."""
    lines = text.split("\n")
    hashes = np.array([line_hash(line) for line in lines], dtype=np.int64)
    owned = (owners.owner(hashes) == digest_words([key])).all(axis=1)
    kept, seen = [], set()
    for line, hashed, mine in zip(lines, hashes.tolist(), owned.tolist()):
        if not mine or hashed in seen:
            report.line("dedup_lines", line)
            continue
        seen.add(hashed)
        kept.append(line)
    new_text = "\n".join(kept)
    if not new_text or (cfg.min_sentences and count_sentences(new_text) < cfg.min_sentences):
        report.page("dedup_lines", new_text or text, lines=len(kept))
        return None
    return new_text
