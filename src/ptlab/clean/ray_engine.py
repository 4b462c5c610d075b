"""The Ray Data engine of `ptlab clean` (`--engine ray`; `pip install 'ptlab[ray]'`).

The same per-page functions as the local engine, as Ray Data `map_batches` stages; the cross-document line
de-duplication is a Ray Data `groupby(line hash).min(page key)`, the key being an md5 hex digest (string order is
C4's order). The driver reads and validates the input (pass 1, which also picks the newest page per URL) and the
results come back sorted by input position, so the output equals the local engine's. `ray.init()` joins a running
cluster when `RAY_ADDRESS` is set, else starts a local one.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ptlab.clean.dedup import LineOwners, digest_words, line_hash, page_key
from ptlab.clean.rules import CleanConfig, Report
from ptlab.clean.stages import Page, first_stage, keep_url, read_pages, second_stage, url_winners
from ptlab.errors import PtlabError


def _report_json(report: Report) -> str:
    return json.dumps({"counts": [report.docs_in, report.docs_out, report.lines_in, report.lines_out,
                                  report.bad_input],
                       "rules": {k: [c.lines, c.pages, c.examples] for k, c in report.rules.items()}})


def _merge_json(report: Report, text: str) -> None:
    data = json.loads(text)
    part = Report()
    part.docs_in, part.docs_out, part.lines_in, part.lines_out, part.bad_input = data["counts"]
    for name, (lines, pages, examples) in data["rules"].items():
        count = part.rules[name]
        count.lines, count.pages, count.examples = lines, pages, examples
    report.merge(part)


def _rows(pages: list[Page], texts: list[str]) -> dict[str, list]:
    return {"index": [p.index for p in pages], "origin": [p.origin for p in pages],
            "record": [json.dumps(p.record, ensure_ascii=False) for p in pages], "text": texts}


def _pages(batch: dict) -> list[Page]:
    return [Page(int(i), str(o), json.loads(r)) for i, o, r in zip(batch["index"], batch["origin"], batch["record"])]


def clean_on_ray(inputs: list, cfg: CleanConfig, strict: bool, show_progress: bool,
                 **read) -> tuple[Report, list[dict]]:
    try:
        import ray
        import ray.data
    except ImportError:
        raise PtlabError("--engine ray needs Ray Data: pip install 'ptlab[ray]'") from None

    report = Report()
    winners = url_winners(inputs, strict, report, cfg, **read)
    quiet = Report()
    survivors = [p for p in read_pages(inputs, quiet, strict, **read) if keep_url(p, winners, cfg, report)]
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show_progress
    context.execution_options.preserve_order = True  # reports merge in input order, so their examples match
    if not survivors:
        return report, []

    def clean_batch(batch: dict) -> dict:
        kept, part = first_stage(_pages(batch), cfg)
        rows = _rows([p for p, _ in kept], [t for _, t in kept])
        rows["key"] = [page_key(p.record, p.origin) for p, _ in kept]
        rows["report"] = [_report_json(part)] + [""] * (len(kept) - 1) if kept else []
        if not kept:  # keep the batch's report even when every page was dropped
            rows = {"index": [-1], "origin": [""], "record": ["{}"], "text": [""], "key": [""],
                    "report": [_report_json(part)]}
        return rows

    stage1 = ray.data.from_items([{"index": p.index, "origin": p.origin,
                                   "record": json.dumps(p.record, ensure_ascii=False)} for p in survivors])
    stage1 = stage1.map_batches(clean_batch, batch_format="numpy").materialize()
    for text in stage1.select_columns(["report"]).to_pandas()["report"]:
        if text:
            _merge_json(report, text)
    kept = stage1.filter(lambda row: row["index"] >= 0)

    owners = None
    if cfg.on("dedup_lines"):
        def line_pairs(row: dict) -> list[dict]:
            return [{"hash": line_hash(line), "key": str(row["key"])} for line in row["text"].split("\n")]

        table = kept.flat_map(line_pairs).groupby("hash").min("key").to_pandas()
        owners = LineOwners(table["hash"].to_numpy(np.int64), digest_words(table["min(key)"].tolist()))
    owners_ref = ray.put(owners)

    def filter_batch(batch: dict) -> dict:
        pages = _pages(batch)
        items = [(p, t, str(k)) for p, t, k in zip(pages, batch["text"], batch["key"])]
        out, part = second_stage(items, cfg, ray.get(owners_ref))
        return {"index": [i for i, _ in out] + [-1],
                "record": [json.dumps(r, ensure_ascii=False) for _, r in out] + [_report_json(part)]}

    results = kept.map_batches(filter_batch, batch_format="numpy").to_pandas()
    records = []
    for index, payload in sorted(zip(results["index"], results["record"]), key=lambda item: item[0]):
        if index < 0:
            _merge_json(report, payload)
        else:
            records.append(json.loads(payload))
    return report, records
