"""`ptlab clean`: C4's cleaning over files of any size, streamed, on local worker processes or on Ray.

Three streaming passes keep memory bounded by the number of URLs and line hashes, never by the text:
  1. read and validate the input; remember the newest page per URL;
  2. page_length, url_dedup, clean_page per page (in parallel); kept pages go to a spill file next to the output,
     and each kept line's hash with its page's key goes into the de-duplication table;
  3. per page (in parallel): drop lines owned by another page, language ID, bad words; write in input order.
The output and the report are written under temporary names and renamed, so a crash leaves no half file.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from ptlab.data.clean import ALL_RULES, CleanConfig, Report, clean_page, final_filters
from ptlab.data.dedup import LineOwners, UrlWinners, dedupe_page, page_key, page_line_hashes
from ptlab.data.gopher import gopher_page
from ptlab.data.tokenizer import batched
from ptlab.errors import PtlabError
from ptlab.files import write_text_atomic

BATCH = 256


@dataclass(frozen=True)
class Page:
    index: int  # position among the valid input records
    origin: str  # "file:line", for messages and as the page's identity when it has no url or id
    record: dict


# ---- input ---------------------------------------------------------------------------------------------------------

def _files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise PtlabError(f"input not found: {path}")


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson"))


def read_pages(paths: Iterable[str | Path], report: Report, strict: bool = False) -> Iterator[Page]:
    """Valid records from JSONL files (a `text` string per object; other fields kept) and plain-text files (one
    document each). Bad input is counted in `report` and skipped, or fatal with `strict`."""
    def bad(message: str) -> None:
        if strict:
            raise PtlabError(message + " (drop --strict to skip bad input)")
        report.bad(message)

    index = 0
    for path in _files(paths):
        if path.stat().st_size == 0:
            bad(f"{path}: empty file")
            continue
        if not _is_jsonl(path):
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as err:
                bad(f"{path}: not UTF-8 ({err.reason} at byte {err.start})")
                continue
            yield Page(index, str(path), {"id": str(path), "text": text})
            index += 1
            continue
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                for number, raw in enumerate(f, start=1):
                    where = f"{path}:{number}"
                    if not raw.strip():
                        continue
                    try:
                        record = json.loads(raw.decode("utf-8"))
                    except UnicodeDecodeError as err:
                        bad(f"{where}: not UTF-8 ({err.reason} at byte {err.start})")
                        continue
                    except json.JSONDecodeError as err:
                        bad(f"{where}: invalid JSON ({err.msg})")
                        continue
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        bad(f"{where}: no 'text' string in the record")
                        continue
                    yield Page(index, where, record)
                    index += 1
        except (OSError, EOFError) as err:  # a truncated or corrupt .gz
            bad(f"{path}: unreadable ({err})")


# ---- per-page work (runs in worker processes) -----------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(cfg: CleanConfig, owners: LineOwners | None = None) -> None:
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


def _ordered_map(fn: Callable, batches: Iterable, workers: int, initargs: tuple) -> Iterator:
    """fn over batches in order, on `workers` processes with a bounded number in flight."""
    if workers <= 1:
        _init_worker(*initargs)
        for batch in batches:
            yield fn(batch)
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=initargs) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(fn, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ---- the local engine -----------------------------------------------------------------------------------------------

def clean_files(inputs: list[str | Path], output: str | Path, report_path: str | Path | None = None,
                cfg: CleanConfig = CleanConfig(), workers: int = 1, engine: str = "local", strict: bool = False,
                show_progress: bool = True) -> Report:
    """Clean `inputs` into the JSONL file `output` (gzip when it ends in .gz); returns the report."""
    unknown = sorted(cfg.skip - set(ALL_RULES))
    if unknown:
        raise PtlabError(f"unknown rule(s) to skip: {', '.join(unknown)}; rules: {', '.join(ALL_RULES)}")
    if cfg.rules not in ("c4", "gopher"):
        raise PtlabError(f"unknown rule set {cfg.rules!r} (use c4 or gopher)")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if engine == "ray":
        from ptlab.cleaning_ray import clean_on_ray

        report, records = clean_on_ray(inputs, cfg, strict, show_progress)
        _write_jsonl(output, records, report)
    elif engine == "local":
        report = _clean_local(inputs, output, cfg, workers, strict, show_progress)
    else:
        raise PtlabError(f"unknown engine {engine!r} (use local or ray)")
    if report_path is not None:
        write_text_atomic(report_path, json.dumps(report.to_dict(cfg), indent=2, ensure_ascii=False) + "\n")
    return report


def url_winners(inputs: list, strict: bool, report: Report) -> UrlWinners:
    """Pass 1: validate everything once and find the newest page per URL."""
    winners = UrlWinners()
    for page in read_pages(inputs, report, strict):
        report.docs_in += 1
        report.lines_in += len(page.record["text"].splitlines())
        if isinstance(page.record.get("url"), str):
            winners.add(page.record["url"], page.record.get("timestamp"), page.index)
    return winners


def keep_url(page: Page, winners: UrlWinners, cfg: CleanConfig, report: Report) -> bool:
    url = page.record.get("url")
    if cfg.on("url_dedup") and isinstance(url, str) and not winners.keeps(url, page.index):
        report.page("url_dedup", f"[{url}] {page.record['text']}", len(page.record["text"].splitlines()))
        return False
    return True


def _clean_local(inputs: list, output: Path, cfg: CleanConfig, workers: int, strict: bool,
                 show_progress: bool) -> Report:
    report = Report()
    winners = url_winners(inputs, strict, report)
    spill_path = output.with_name(output.name + ".spill.jsonl")
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    dedup = cfg.on("dedup_lines")
    try:
        with open(spill_path, "w", encoding="utf-8") as spill, tqdm(
                total=report.docs_in, desc="cleaning pages", unit="doc", disable=not show_progress) as bar:
            quiet = Report()  # pass 2 re-reads the input: its bad records were counted in pass 1

            def survivors() -> Iterator[Page]:
                for page in read_pages(inputs, quiet, strict):
                    bar.update(1)
                    if keep_url(page, winners, cfg, report):
                        yield page

            for kept, part in _ordered_map(first_stage, batched(survivors(), BATCH), workers, (cfg,)):
                report.merge(part)
                for page, text in kept:
                    key = page_key(page.record, page.origin)
                    spill.write(json.dumps({"i": page.index, "o": page.origin, "k": key, "r": page.record,
                                            "t": text}, ensure_ascii=False) + "\n")
                    if dedup:
                        chunks.append(page_line_hashes(text, key))
        owners = LineOwners.from_pairs(chunks) if dedup else None
        chunks.clear()

        def spilled() -> Iterator[tuple[Page, str, int]]:
            with open(spill_path, encoding="utf-8") as f:
                for line in f:
                    item = json.loads(line)
                    yield Page(item["i"], item["o"], item["r"]), item["t"], item["k"]

        def results() -> Iterator[dict]:
            for out, part in _ordered_map(second_stage, batched(spilled(), BATCH), workers, (cfg, owners)):
                report.merge(part)
                for _, record in out:
                    yield record

        with tqdm(desc="de-duplicating and filtering", unit="doc", disable=not show_progress) as bar:
            def counted() -> Iterator[dict]:
                for record in results():
                    bar.update(1)
                    yield record
            _write_jsonl(output, counted(), report)
    finally:
        spill_path.unlink(missing_ok=True)
    return report


def _write_jsonl(output: Path, records: Iterable[dict], report: Report | None = None) -> None:
    tmp = output.with_name(output.name + ".tmp")
    opener = (lambda p: gzip.open(p, "wt", encoding="utf-8")) if output.name.endswith(".gz") else (
        lambda p: open(p, "w", encoding="utf-8"))
    try:
        with opener(tmp) as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                if report is not None:
                    report.docs_out += 1
                    report.lines_out += len(record["text"].splitlines())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def print_report(report: Report, cfg: CleanConfig, out=sys.stdout) -> None:
    print(report.format_table(cfg), file=out)
