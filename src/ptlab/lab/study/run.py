"""Running a study: the shared data prepared once, then each pre-training run (after the run it continues, if any)
and each fine-tune, one result line per fine-tune as it finishes (so a killed study restarts at its first
unfinished piece), on one or several processes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import yaml

from ptlab.files import write_text_atomic
from ptlab.lab.adaptive import write_task_definition
from ptlab.lab.study.plan import (
    FinetuneRun,
    Plan,
    PretrainRun,
    StudyConfig,
    data_key,
    finetune_config,
    task_label,
)
from ptlab.lab.study.report import result_key, write_tables
from ptlab.lab.study.schedule import Job, run_jobs


def _done_marker(run: PretrainRun) -> Path:
    return Path(run.cfg.run_dir) / "pretrain-done.json"


def finished_pretraining(run: PretrainRun) -> dict | None:
    marker = _done_marker(run)
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


def run_pretraining(run: PretrainRun, init_summary: dict | None = None, threads: int = 0,
                    show_progress: bool = False) -> dict:
    """Pre-train one run (resuming its checkpoint if any) unless it is done; returns its summary. Its init run,
    if any, has finished (its directory is the run's `init`)."""
    from ptlab.train.loop import pretrain

    summary = finished_pretraining(run)
    if summary is not None:
        return summary
    _use_threads(run.cfg, threads)
    result = pretrain(run.cfg, show_progress=show_progress, resume="auto")
    if result.interrupted:
        raise KeyboardInterrupt(f"pre-training {run.name} interrupted ({result.interrupted})")
    summary = {"checkpoint": str(result.checkpoint), "final_val_loss": result.final_val_loss,
               "final_val_bpb": result.final_val_bpb,
               "seconds": result.train_seconds, "tokens_per_second": result.tokens_per_second,
               "parameters": result.parameters}
    write_text_atomic(_done_marker(run), json.dumps(summary, indent=2) + "\n")
    return summary


def run_finetune(study: StudyConfig, run: FinetuneRun, results_path: Path, summary: dict | None, threads: int = 0,
                 show_progress: bool = False) -> dict:
    """Fine-tune one (cell, task, pre-training seed, seed) and append its result line the moment it exists."""
    from ptlab.data.tasks import resolve_task
    from ptlab.downstream.finetune import finetune

    cfg = dataclasses.replace(run.cfg, train=dataclasses.replace(run.cfg.train))
    _use_threads(cfg, threads)
    summary = summary or {}
    ft_cfg = finetune_config(study, run.cell, cfg, run.task, run.seed, summary.get("checkpoint"), run.directory)
    ft_cfg.validate()
    result = finetune(ft_cfg, show_progress=show_progress)
    metric = resolve_task(run.task).metrics[0]  # the task's headline metric, as fine-tuning early-stops on
    scores = result.test or result.validation
    row = {"cell": run.cell.name, "task": task_label(run.task), "seed": run.seed,
           "pretrain_seed": run.pretrain.pretrain_seed if run.pretrain else None, "metric": metric,
           "score": scores[metric], "scores": scores, "split": "test" if result.test else "validation",
           "finetune_seconds": result.seconds, "pretrain_seconds": summary.get("seconds", 0.0),
           "pretrain_val_loss": summary.get("final_val_loss"), "pretrain_val_bpb": summary.get("final_val_bpb")}
    with open(results_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return row


def _use_threads(cfg, threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
        cfg.train.threads = threads


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


def prepare_data(plan: Plan, runs: list[PretrainRun] | None = None, show_progress: bool = True) -> None:
    """Clean (for `clean: true` cells), write custom tasks' definitions (adapting cells), train the tokenizer and
    build every distinct shard set once, before runs go side by side. `runs`: those about to pre-train (default
    all)."""
    from ptlab.clean.engine import clean_files
    from ptlab.data import ensure_shards, ensure_tokenizer

    built = set()
    for cfg in [cfg for _, cfg in plan.cells]:
        ensure_tokenizer(cfg.data, show_progress)
    for run in plan.pretrains if runs is None else runs:
        cfg = run.cfg
        if run.cell.clean and run.task is None:
            raw = list(cfg.data.train_files)
            digest = hashlib.sha256(json.dumps(raw).encode()).hexdigest()[:12]
            cleaned = plan.run_dir / "data" / f"cleaned-{digest}.jsonl.gz"
            if not cleaned.is_file():
                report = clean_files(raw, cleaned, cleaned.with_suffix(".report.json"), show_progress=show_progress)
                if show_progress:
                    print(f"cleaned {', '.join(raw)}: kept {report.docs_out:,} of {report.docs_in:,} documents",
                          file=sys.stderr)
            cfg.data.train_files = [str(cleaned)]
            cfg.data.shards_dir = str(plan.run_dir / "shards" / data_key(cfg))
        if run.cell.adapt == "task":
            write_task_definition(run.task, plan.run_dir / "data")
        if cfg.data.shards_dir not in built:
            # an init run's own tokenizer is a copy of the study's, made when it starts: build with the original
            data = dataclasses.replace(cfg.data, tokenizer=run.tokenizer)
            ensure_shards(data, ensure_tokenizer(data, show_progress), show_progress)
            built.add(cfg.data.shards_dir)


def _jobs(plan: Plan, finished: set, results_path: Path) -> list[Job]:
    """The unfinished fine-tunes and the pre-training runs they need (a finished one as a job that is done), each
    after the run it needs, in plan order: one process runs a pre-training and then its fine-tunes."""
    pretraining: dict[int, Job] = {}
    ordered: list[Job] = []

    def add_pretraining(run: PretrainRun) -> Job:
        if id(run) not in pretraining:
            done = finished_pretraining(run)
            after = add_pretraining(run.init) if run.init is not None and done is None else None
            pretraining[id(run)] = job = Job(f"pre-training {run.name}", run_pretraining, (run,), after, done,
                                             urgent=True)
            ordered.append(job)
        return pretraining[id(run)]

    for run in plan.finetunes:
        if run.key not in finished:
            after = add_pretraining(run.pretrain) if run.pretrain is not None else None
            ordered.append(Job(f"{run.cell.name} / {run.directory}", run_finetune, (plan.study, run, results_path),
                               after))
    return ordered


def run_study(plan: Plan, jobs: int = 1, show_progress: bool = True, out=sys.stdout) -> Path:
    """Run every unfinished pre-training and fine-tune (`jobs` side by side, a pre-training run only after the
    run it continues), then write the table; returns the table's path."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / "study.yaml").write_text(yaml.safe_dump(dataclasses.asdict(plan.study), sort_keys=False),
                                             encoding="utf-8")
    results_path = plan.run_dir / "results.jsonl"
    finished = {result_key(r, plan) for r in read_results(results_path)}
    expected = {run.key for run in plan.finetunes}
    todo = _jobs(plan, finished, results_path)
    pretraining = [j.args[0] for j in todo if j.function is run_pretraining and j.done is None]
    print(f"study {plan.run_dir}: {len(expected & finished)}/{len(expected)} fine-tunes done; "
          f"{len(pretraining)} pre-training runs and {len(expected - finished)} fine-tunes to run",
          file=out, flush=True)
    if todo:
        prepare_data(plan, pretraining, show_progress)
    started = time.perf_counter()
    for job, result in run_jobs(todo, jobs, show_progress):
        if job.function is run_finetune:
            print(f"done: {job.name}: {result['metric']} {result['score']:.1f}", file=out, flush=True)
        elif job.done is None:
            print(f"done: {job.name}", file=out, flush=True)
    if todo:
        print(f"ran {len(pretraining)} pre-training runs and {len(expected - finished)} fine-tunes in "
              f"{(time.perf_counter() - started) / 60:.1f} minutes", file=out, flush=True)
    return write_tables(plan, read_results(results_path), out)
