"""Running a study: the shared data prepared once, then each cell pre-trained and fine-tuned per task and seed, one
result line per fine-tune as it finishes (so a killed study restarts at its first unfinished piece), on one or
several processes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import yaml

from ptlab.config import (
    Config,
)
from ptlab.files import write_text_atomic
from ptlab.lab.study.plan import Plan, StudyCell, StudyConfig, data_key, finetune_config, task_label
from ptlab.lab.study.report import write_tables
from ptlab.train.host import job_pool, thread_share


def _done_marker(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "pretrain-done.json"


def run_cell(study: StudyConfig, cell: StudyCell, cfg: Config, finished: set[tuple[str, str, int]],
             results_path: Path, threads: int = 0, show_progress: bool = False) -> list[dict]:
    """Pre-train a cell (unless done or `pretrain: false`), then run its unfinished fine-tunes; each result is
    appended to `results_path` the moment it exists."""
    import torch

    from ptlab.data.tasks import resolve_task
    from ptlab.downstream.finetune import finetune
    from ptlab.train.loop import pretrain

    if threads:
        torch.set_num_threads(threads)
        cfg.train.threads = threads
    checkpoint, summary = None, {}
    if cell.pretrain:
        marker = _done_marker(cfg)
        if marker.is_file():
            summary = json.loads(marker.read_text(encoding="utf-8"))
        else:
            result = pretrain(cfg, show_progress=show_progress, resume="auto")
            if result.interrupted:
                raise KeyboardInterrupt(f"pre-training of {cell.name!r} interrupted ({result.interrupted})")
            summary = {"checkpoint": str(result.checkpoint), "final_val_loss": result.final_val_loss,
                       "seconds": result.train_seconds, "tokens_per_second": result.tokens_per_second,
                       "parameters": result.parameters}
            write_text_atomic(marker, json.dumps(summary, indent=2) + "\n")
        checkpoint = summary["checkpoint"]
    rows = []
    for task in study.tasks:
        for seed in study.seeds:
            if (cell.name, task_label(task), seed) in finished:
                continue
            ft_cfg = finetune_config(study, cell, cfg, task, seed, checkpoint)  # prepare_data made the tokenizer
            ft_cfg.validate()
            result = finetune(ft_cfg, show_progress=show_progress)
            metric = resolve_task(task).metrics[0]  # the task's headline metric, as fine-tuning early-stops on
            scores = result.test or result.validation
            row = {"cell": cell.name, "task": task_label(task), "seed": seed, "metric": metric,
                   "score": scores[metric], "scores": scores, "split": "test" if result.test else "validation",
                   "finetune_seconds": result.seconds, "pretrain_seconds": summary.get("seconds", 0.0),
                   "pretrain_val_loss": summary.get("final_val_loss")}
            with open(results_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
    return rows


def _run_cell_job(args: tuple) -> list[dict]:
    study, cell, cfg, finished, results_path, threads = args
    return run_cell(study, cell, cfg, finished, results_path, threads)


def read_results(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: that fine-tune runs again
                    continue
    return rows


def prepare_data(plan: Plan, show_progress: bool = True) -> None:
    """Clean (for `clean: true` cells), train the tokenizer and build every distinct shard set once, before cells run
    side by side."""
    from ptlab.clean.engine import clean_files
    from ptlab.data import ensure_shards, ensure_tokenizer

    built = set()
    for cell, cfg in plan.cells:
        if cell.clean:
            raw = list(cfg.data.train_files)
            digest = hashlib.sha256(json.dumps(raw).encode()).hexdigest()[:12]
            cleaned = plan.run_dir / "data" / f"cleaned-{digest}.jsonl.gz"
            if not cleaned.is_file():
                report = clean_files(raw, cleaned, cleaned.with_suffix(".report.json"), show_progress=show_progress)
                if show_progress:
                    print(f"cleaned {', '.join(raw)}: kept {report.docs_out:,} of {report.docs_in:,} documents", file=sys.stderr)
            cfg.data.train_files = [str(cleaned)]
            cfg.data.shards_dir = str(plan.run_dir / "shards" / data_key(cfg))
        tokenizer = ensure_tokenizer(cfg.data, show_progress)
        if cell.pretrain and cfg.data.shards_dir not in built:
            ensure_shards(cfg.data, tokenizer, show_progress)
            built.add(cfg.data.shards_dir)


def run_study(plan: Plan, jobs: int = 1, show_progress: bool = True, out=sys.stdout) -> Path:
    """Run every unfinished cell (`jobs` side by side), then write the table; returns the table's path."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / "study.yaml").write_text(yaml.safe_dump(dataclasses.asdict(plan.study), sort_keys=False),
                                             encoding="utf-8")
    results_path = plan.run_dir / "results.jsonl"
    finished = {(r["cell"], r["task"], r["seed"]) for r in read_results(results_path)}
    expected = {(cell.name, task_label(t), s) for cell, _ in plan.cells for t in plan.study.tasks
                for s in plan.study.seeds}
    todo = [(cell, cfg) for cell, cfg in plan.cells
            if any((cell.name, task_label(t), s) not in finished for t in plan.study.tasks for s in plan.study.seeds)]
    print(f"study {plan.run_dir}: {len(expected & finished)}/{len(expected)} fine-tunes done; "
          f"{len(todo)} of {len(plan.cells)} cells to run", file=out, flush=True)
    if todo:
        prepare_data(plan, show_progress)
    started = time.perf_counter()
    if jobs <= 1:
        for i, (cell, cfg) in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {cell.name}", file=out, flush=True)
            run_cell(plan.study, cell, cfg, finished, results_path, show_progress=show_progress)
    else:
        threads = thread_share(jobs)
        work = [(plan.study, cell, cfg, finished, results_path, threads) for cell, cfg in todo]
        with job_pool(jobs) as pool:
            for (cell, _), rows in zip(todo, pool.map(_run_cell_job, work)):
                print(f"done: {cell.name} ({len(rows)} fine-tunes)", file=out, flush=True)
    if todo:
        print(f"ran {len(todo)} cells in {(time.perf_counter() - started) / 60:.1f} minutes", file=out, flush=True)
    return write_tables(plan, read_results(results_path), out)
