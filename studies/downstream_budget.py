"""Does pre-training help downstream, and from what budget? Fine-tunes pre-trained checkpoints of several budgets,
and the same architecture from scratch, on a study's tasks with the study's fine-tuning recipe and seeds, plus a
linear probe on rt_polarity; writes a markdown table.

    python studies/downstream_budget.py runs/bart-1460 runs/bart-4230 runs/bart-8960 --out runs/budget-table
    python studies/downstream_budget.py runs/budget --minutes 5 15 30 --out runs/budget-table-midway \\
        --max-train-examples rt_polarity=6000 debian_summaries=3000

With several runs (each its own complete schedule: the fair comparison), each run's last checkpoint is one budget.
With one run and --minutes, its saved checkpoints nearest each budget of training seconds (metrics.jsonl) are the
budgets: checkpoints taken midway through one schedule, at a high learning rate.
The tasks, the fine-tuning recipe and the seeds come from --study (default configs/study-tiny.yaml, the objectives
grid), so the table is comparable with that grid. Results go to OUT/{results.jsonl, table.md}; finished
fine-tunes are reused when the script is run again.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ptlab.config import TaskConfig
from ptlab.lab.study import StudyCell, finetune_config, load_study, read_results, task_label
from ptlab.train.checkpoint import list_checkpoints, load_checkpoint_config
from ptlab.train.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[1]
# The probe is a fixed diagnostic, independent of the fine-tuning recipe: logistic regression on frozen states.
PROBE_TASK = TaskConfig(name="rt_polarity", max_train_examples=4000, max_eval_examples=1000, max_input_length=96)


def budget_checkpoints(run_dir: Path, minutes: list[float]) -> dict[float, Path]:
    seconds_at = {r["step"]: r["seconds"] for r in read_metrics(run_dir) if "seconds" in r and "loss" in r}
    saved = {int(c.name.split("_")[1]): c for c in list_checkpoints(run_dir)}
    chosen = {}
    for budget in minutes:
        candidates = [s for s in saved if s in seconds_at and seconds_at[s] <= budget * 60 * 1.02]
        if candidates:
            chosen[budget] = saved[max(candidates)]
    return chosen


def run_label(run_dir: Path, checkpoint: Path) -> str:
    """A budget by its steps and the tokens trained on (as last logged before the checkpoint)."""
    step = int(checkpoint.name.split("_")[1])
    logged = [r for r in read_metrics(run_dir) if "tokens" in r and "loss" in r and r["step"] <= step]
    return f"{step} steps, {logged[-1]['tokens'] / 1e6:.1f}M tokens" if logged else f"{step} steps"


def run_cell(job: dict) -> dict:
    from ptlab.data.tasks import resolve_task
    from ptlab.downstream.finetune import _initial_model, finetune
    from ptlab.downstream.probe import linear_probe

    cfg = finetune_config(job["study"], StudyCell(name=job["label"]), job["run_cfg"], job["task"], job["seed"],
                          None if job["init"] == "none" else job["init"])
    cfg.validate()
    result = finetune(cfg, show_progress=False)
    metric = resolve_task(job["task"]).metrics[0]
    scores = result.test or result.validation
    row = {"label": job["label"], "task": task_label(job["task"]), "seed": job["seed"], "init": job["init"],
           "metric": metric, "score": scores[metric], "split": "test" if result.test else "validation",
           "validation": result.validation.get(metric), "seconds": result.seconds}
    if job["probe"]:
        if job["init"] == "none":  # the probe floor: the same architecture, randomly initialised
            model, tokenizer = _initial_model(cfg)
            row["probe"] = linear_probe(None, PROBE_TASK, model=model, tokenizer=tokenizer, split="test")
        else:
            row["probe"] = linear_probe(job["init"], PROBE_TASK, split="test")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="pre-training run directories")
    parser.add_argument("--minutes", type=float, nargs="+", help="budgets within one run (training minutes)")
    parser.add_argument("--out", type=Path, required=True, help="where the fine-tunes and the table go")
    parser.add_argument("--study", type=Path, default=ROOT / "configs" / "study-tiny.yaml",
                        help="the study whose tasks, fine-tuning recipe and seeds to use")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the study, e.g. finetune.train.lr=3e-3")
    parser.add_argument("--tasks", nargs="*", help="only these of the study's tasks")
    parser.add_argument("--max-train-examples", nargs="*", default=[], metavar="TASK=N",
                        help="fine-tuning examples per task instead of the study's")
    parser.add_argument("--jobs", type=int, default=2, help="parallel fine-tunes (one thread each)")
    args = parser.parse_args()

    study, _ = load_study(args.study, args.set)
    if args.tasks:
        study.tasks = [t for t in study.tasks if task_label(t) in args.tasks]
    sizes = dict(item.split("=", 1) for item in args.max_train_examples)
    unknown = set(sizes) - {task_label(t) for t in study.tasks}
    if unknown:
        raise SystemExit(f"--max-train-examples: {', '.join(sorted(unknown))} is not a task of {args.study}")
    tasks = [dataclasses.replace(t, max_train_examples=int(sizes[task_label(t)])) if task_label(t) in sizes else t
             for t in study.tasks]
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    study.run_dir = str(out_dir)
    results_path = out_dir / "results.jsonl"
    done = read_results(results_path)
    finished = {(r["label"], r["task"], r["seed"]) for r in done}

    if args.minutes:
        if len(args.runs) != 1:
            raise SystemExit("--minutes picks budgets within one run; give exactly one run directory")
        checkpoints = {f"{m:g} min": p for m, p in budget_checkpoints(args.runs[0], args.minutes).items()}
    else:
        last = {run: list_checkpoints(run)[-1] for run in args.runs if list_checkpoints(run)}
        checkpoints = {run_label(run, checkpoint): checkpoint for run, checkpoint in last.items()}
    if len(checkpoints) < (len(args.minutes) if args.minutes else len(args.runs)):
        raise SystemExit(f"a budget has no checkpoint (found: {', '.join(checkpoints) or 'none'})")
    run_cfg = load_checkpoint_config(next(iter(checkpoints.values())))
    run_cfg.train.threads = 1  # one thread per fine-tune, --jobs of them side by side
    inits = [("scratch", "none")] + [(label, str(p)) for label, p in checkpoints.items()]
    jobs = []
    for task in tasks:
        for seed in study.seeds:
            for label, init in inits:
                if (label, task_label(task), seed) not in finished:
                    jobs.append({"label": label, "init": init, "task": copy.deepcopy(task), "seed": seed,
                                 "study": study, "run_cfg": run_cfg,
                                 "probe": task.name == PROBE_TASK.name})
    print(f"{len(jobs)} fine-tunes to run; checkpoints: " + ", ".join(f"{label} = {p}"
                                                                      for label, p in checkpoints.items()), flush=True)
    with ProcessPoolExecutor(args.jobs) as pool, results_path.open("a") as log:
        for row in pool.map(run_cell, jobs):
            log.write(json.dumps(row) + "\n")
            log.flush()
            done.append(row)
            print(json.dumps(row), flush=True)
    write_table(done, [label for label, _ in inits], tasks, out_dir / "table.md")
    print((out_dir / "table.md").read_text())


def write_table(rows: list[dict], labels: list[str], tasks: list[TaskConfig], path: Path) -> None:
    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {spread:.1f} (n={len(values)})"

    names = [task_label(t) for t in tasks]
    metrics = {n: next((r["metric"] for r in rows if r["task"] == n), "?") for n in names}
    header = ("| pre-training | " + " | ".join(f"{n} ({metrics[n]}, {t.max_train_examples} examples)"
                                             for n, t in zip(names, tasks)) + " | rt_polarity linear probe |")
    lines = [header, "|" + "---|" * (len(names) + 2)]
    for label in labels:
        scores = [cell([r["score"] for r in rows if r["label"] == label and r["task"] == n]) for n in names]
        probe = cell([r["probe"] for r in rows if r["label"] == label and "probe" in r])
        lines.append(f"| {label} | " + " | ".join(scores) + f" | {probe} |")
    lines.append("")
    lines.append("Mean ± standard deviation over fine-tuning seeds (the study's convention). Probe: logistic regression "
                 "on mean-pooled encoder states of the frozen model (scratch: random initialisation).")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
