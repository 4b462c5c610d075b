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
from ptlab.data.readers import BadRecord, ReadStats, iter_located
from ptlab.data.tokenizer import batched
from ptlab.errors import PtlabError
from ptlab.files import json_text, prepare_output, write_text_atomic

BATCH = 256


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
                show_progress: bool = True, text_field: str = "text", text_mode: str = "file") -> Report:
    """Clean `inputs` into the JSONL file `output` (gzip when it ends in .gz); returns the report.

    `text_field` names the field to clean (its cleaned text is written as "text"); `text_mode` splits .txt inputs.
    """
    unknown = sorted(cfg.skip - set(ALL_RULES))
    if unknown:
        raise PtlabError(f"unknown rule(s) to skip: {', '.join(unknown)}; rules: {', '.join(ALL_RULES)}")
    if cfg.rules not in ("c4", "gopher"):
        raise PtlabError(f"unknown rule set {cfg.rules!r} (use c4 or gopher)")
    output = prepare_output(output, "--output")
    if report_path is not None:
        report_path = prepare_output(report_path, "--report")
        if report_path.resolve() == output.resolve():
            raise PtlabError(f"--report and --output are the same file: {output}")
    if any(Path(p).resolve() == output.resolve() for p in inputs):
        raise PtlabError(f"--output {output} is also an input; write the cleaned text elsewhere")
    read = {"text_field": text_field, "text_mode": text_mode}
    if engine == "ray":
        from ptlab.cleaning_ray import clean_on_ray

        report, records = clean_on_ray(inputs, cfg, strict, show_progress, **read)
        _write_jsonl(output, records, report)
    elif engine == "local":
        report = _clean_local(inputs, output, cfg, workers, strict, show_progress, **read)
    else:
        raise PtlabError(f"unknown engine {engine!r} (use local or ray)")
    if report_path is not None:
        try:
            write_text_atomic(report_path, json_text(report.to_dict(cfg), indent=2) + "\n")
        except BaseException:  # a run without its report failed: leave no complete-looking output behind
            output.unlink(missing_ok=True)
            raise
    return report


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


def _clean_local(inputs: list, output: Path, cfg: CleanConfig, workers: int, strict: bool,
                 show_progress: bool, **read) -> Report:
    report = Report()
    winners = url_winners(inputs, strict, report, cfg, **read)
    spill_path = output.with_name(output.name + ".spill.jsonl")
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    dedup = cfg.on("dedup_lines")
    try:
        with open(spill_path, "w", encoding="utf-8") as spill, tqdm(
                total=report.docs_in, desc="cleaning pages", unit="doc", disable=not show_progress) as bar:
            quiet = Report()  # pass 2 re-reads the input: its bad records were counted in pass 1

            def survivors() -> Iterator[Page]:
                for page in read_pages(inputs, quiet, strict, **read):
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
                try:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                except UnicodeEncodeError:  # lone surrogates: a failed write wrote nothing; escape them instead
                    f.write(json_text(record) + "\n")
                if report is not None:
                    report.docs_out += 1
                    report.lines_out += len(record["text"].splitlines())
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def print_report(report: Report, cfg: CleanConfig, out=sys.stdout) -> None:
    print(report.format_table(cfg), file=out)
