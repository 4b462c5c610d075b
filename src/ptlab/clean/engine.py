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
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from ptlab.clean.dedup import LineOwners, page_key, page_line_hashes
from ptlab.clean.rules import ALL_RULES, CleanConfig, Report
from ptlab.clean.stages import Page, first_stage, init_worker, keep_url, read_pages, second_stage, url_winners
from ptlab.data.tokenizer import batched
from ptlab.errors import PtlabError
from ptlab.files import json_text, prepare_output, write_text_atomic

BATCH = 256


def _ordered_map(fn: Callable, batches: Iterable, workers: int, initargs: tuple) -> Iterator:
    """fn over batches in order, on `workers` processes with a bounded number in flight."""
    if workers <= 1:
        init_worker(*initargs)
        for batch in batches:
            yield fn(batch)
        return
    with ProcessPoolExecutor(workers, initializer=init_worker, initargs=initargs) as pool:
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
        from ptlab.clean.ray_engine import clean_on_ray

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
