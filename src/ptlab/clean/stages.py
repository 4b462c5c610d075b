"""The per-page work of `ptlab clean`, shared by the local and the Ray engine: reading and validating pages, the
newest page per URL, `clean_page` (or Gopher's rules) per page, then line de-duplication, language ID and bad words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ptlab.clean.dedup import LineOwners, UrlWinners, dedupe_page
from ptlab.clean.gopher import gopher_page
from ptlab.clean.rules import CleanConfig, Report, clean_page, final_filters
from ptlab.data.readers import BadRecord, ReadStats, iter_located
from ptlab.errors import PtlabError


@dataclass(frozen=True)
class Page:
    index: int  # position among the valid input records
    origin: str  # "file:line", for messages and as the page's identity when it has no url or id
    record: dict


# ---- input ---------------------------------------------------------------------------------------------------------

def _origin(path: Path, number: int | None) -> str:
    return f"{path}:{number}" if number is not None else str(path)


def read_pages(paths: Iterable[str | Path], report: Report, strict: bool = False, text_field: str = "text",
               text_mode: str = "file") -> Iterator[Page]:
    """Valid records of the inputs, any format `ptlab.data.readers` reads (other fields kept; plain-text documents
    get their file, or file:line for blocks, as `id`). Bad input is counted in `report` and skipped, or fatal with
    `strict`."""
    def bad(err: BadRecord) -> None:
        report.bad(f"{_origin(err.path, err.number)}: {err.reason}")

    stats = ReadStats(on_skip=bad)
    located = iter_located(paths, text_field, text_mode, skip_bad=not strict, stats=stats)
    try:
        for index, (path, _, number, record) in enumerate(located):
            yield Page(index, _origin(path, number), record)
    except BadRecord as err:
        raise PtlabError(f"{_origin(err.path, err.number)}: {err.reason} (drop --strict to skip bad input)") from None


# ---- per-page work (runs in worker processes) -----------------------------------------------------------------------

_WORKER: dict = {}


def init_worker(cfg: CleanConfig, owners: LineOwners | None = None) -> None:
    _WORKER["cfg"], _WORKER["owners"] = cfg, owners


def first_stage(pages: list[Page], cfg: CleanConfig | None = None) -> tuple[list[tuple[Page, str]], Report]:
    """page_length (url_dedup is decided before) and clean_page; returns the kept pages with their cleaned text."""
    cfg = cfg or _WORKER["cfg"]
    report, kept = Report(), []
    for page in pages:
        text = page.record["text"]
        if cfg.on("page_length") and len(text) > cfg.max_page_length:
            report.page("page_length", text, len(text.splitlines()))
            continue
        cleaned = gopher_page(text, cfg, report) if cfg.rules == "gopher" else clean_page(text, cfg, report)
        if cleaned is not None:
            kept.append((page, cleaned))
    return kept, report


def second_stage(items: list[tuple[Page, str, int]], cfg: CleanConfig | None = None,
                 owners: LineOwners | None = None) -> tuple[list[tuple[int, dict]], Report]:
    """dedup_lines, language, bad words; returns (index, output record) for the kept pages."""
    cfg = cfg or _WORKER["cfg"]
    owners = owners if owners is not None else _WORKER["owners"]
    report, out = Report(), []
    for page, text, key in items:
        if owners is not None:
            text = dedupe_page(text, key, owners, cfg, report)
            if text is None:
                continue
        if final_filters(text, cfg, report):
            out.append((page.index, {**page.record, "text": text}))
    return out, report


def url_winners(inputs: list, strict: bool, report: Report, cfg: CleanConfig, **read) -> UrlWinners:
    """Pass 1: validate everything once and find the newest page per URL among those page_length keeps."""
    winners = UrlWinners()
    for page in read_pages(inputs, report, strict, **read):
        report.docs_in += 1
        report.lines_in += len(page.record["text"].splitlines())
        if isinstance(page.record.get("url"), str) and not _too_long(page, cfg):
            winners.add(page.record["url"], page.record.get("timestamp"), page.index)
    return winners


def _too_long(page: Page, cfg: CleanConfig) -> bool:
    # C4 drops these before de-duplicating URLs, so an over-long copy never displaces a shorter, older one
    return cfg.on("page_length") and len(page.record["text"]) > cfg.max_page_length


def keep_url(page: Page, winners: UrlWinners, cfg: CleanConfig, report: Report) -> bool:
    url = page.record.get("url")
    if (cfg.on("url_dedup") and isinstance(url, str) and not _too_long(page, cfg)
            and not winners.keeps(url, page.index)):
        report.page("url_dedup", f"[{url}] {page.record['text']}", len(page.record["text"].splitlines()))
        return False
    return True
