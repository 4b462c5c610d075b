"""Does pre-training help downstream, and from what budget? Fine-tunes checkpoints of one pre-training run taken at
several training-time budgets, and the same architecture from scratch, on rt_polarity (accuracy) and
debian_summaries (ROUGE-L) over several seeds, plus a linear probe on rt_polarity; writes a markdown table.

    python studies/downstream_budget.py runs/budget --minutes 5 15 30 --seeds 0 1 2 --jobs 2

The checkpoints are the run's saved ones nearest each budget of training seconds (metrics.jsonl). Results go to
RUN_DIR/downstream/{results.jsonl, table.md}; finished cells are reused when the script is run again.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from ptlab.config import FinetuneConfig, TaskConfig, TrainConfig
from ptlab.train.checkpoint import list_checkpoints, load_checkpoint_config
from ptlab.train.metrics import read_metrics

TASKS = {
    "rt_polarity": (TaskConfig(name="rt_polarity", max_train_examples=6000, max_eval_examples=1000,
                               max_input_length=96), "accuracy", 2.0),
    "debian_summaries": (TaskConfig(name="debian_summaries", max_train_examples=3000, max_eval_examples=300,
                                    max_input_length=128, max_target_length=24), "rougeL", 2.0),
}


def budget_checkpoints(run_dir: Path, minutes: list[float]) -> dict[float, Path]:
    seconds_at = {r["step"]: r["seconds"] for r in read_metrics(run_dir) if "seconds" in r and "loss" in r}
    saved = {int(c.name.split("_")[1]): c for c in list_checkpoints(run_dir)}
    chosen = {}
    for budget in minutes:
        candidates = [s for s in saved if s in seconds_at and seconds_at[s] <= budget * 60 * 1.02]
        if candidates:
            chosen[budget] = saved[max(candidates)]
    return chosen


def run_cell(job: dict) -> dict:
    from ptlab.finetune import finetune, linear_probe

    torch.set_num_threads(job["threads"])
    task_cfg, metric, epochs = TASKS[job["task"]]
    train = TrainConfig(batch_size=32, optimizer=job["optimizer"], lr=job["lr"], schedule="linear",
                        warmup_steps=50, min_lr_ratio=0.0, eval_every=125, precision="bf16", tensorboard=False,
                        threads=job["threads"])
    cfg = FinetuneConfig(run_dir=job["out"], seed=job["seed"], init=job["init"], tokenizer=job["tokenizer"],
                         model=copy.deepcopy(job["model"]), task=copy.deepcopy(task_cfg), train=train, epochs=epochs,
                         patience=3)
    cfg.validate()
    result = finetune(cfg, show_progress=False)
    row = {**{k: job[k] for k in ("label", "task", "seed", "init")}, "metric": metric,
           "score": result.test[metric], "validation": result.validation.get(metric), "seconds": result.seconds}
    if job["task"] == "rt_polarity":
        probe_task = TaskConfig(name="rt_polarity", max_train_examples=4000, max_eval_examples=1000,
                                max_input_length=96)
        if job["init"] == "none":  # the probe floor: the same architecture, randomly initialised
            from ptlab.finetune import _initial_model

            model, tokenizer = _initial_model(cfg)
            row["probe"] = linear_probe(None, probe_task, model=model, tokenizer=tokenizer, split="test")
        else:
            row["probe"] = linear_probe(job["init"], probe_task, split="test")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 15, 30])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--jobs", type=int, default=2, help="parallel fine-tunes (one thread each)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--optimizer", default="adamw_scale")
    parser.add_argument("--name", default="downstream", help="results subdirectory of RUN_DIR")
    args = parser.parse_args()

    out_dir = args.run_dir / args.name
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.jsonl"
    done = [json.loads(line) for line in results_path.open()] if results_path.is_file() else []
    finished = {(r["label"], r["task"], r["seed"]) for r in done}

    checkpoints = budget_checkpoints(args.run_dir, args.minutes)
    run_cfg = load_checkpoint_config(next(iter(checkpoints.values())))
    inits = [("scratch", "none")] + [(f"{m:g} min", str(p)) for m, p in checkpoints.items()]
    jobs = []
    for task in args.tasks:
        for seed in args.seeds:
            for label, init in inits:
                if (label, task, seed) in finished:
                    continue
                jobs.append({"label": label, "init": init, "task": task, "seed": seed, "lr": args.lr,
                             "optimizer": args.optimizer,
                             "tokenizer": run_cfg.data.tokenizer, "model": run_cfg.model, "threads": 1,
                             "out": str(out_dir / f"{task}-{label.replace(' ', '')}-seed{seed}")})
    print(f"{len(jobs)} fine-tunes to run; checkpoints: " + ", ".join(f"{m:g} min = {p.name}"
                                                                      for m, p in checkpoints.items()), flush=True)
    with ProcessPoolExecutor(args.jobs) as pool, results_path.open("a") as log:
        for row in pool.map(run_cell, jobs):
            log.write(json.dumps(row) + "\n")
            log.flush()
            done.append(row)
            print(json.dumps(row), flush=True)
    write_table(done, [label for label, _ in inits], args.tasks, out_dir / "table.md")
    print((out_dir / "table.md").read_text())


def write_table(rows: list[dict], labels: list[str], tasks: list[str], path: Path) -> None:
    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {spread:.1f} (n={len(values)})"

    header = "| pre-training | " + " | ".join(f"{t} ({TASKS[t][1]}, test)" for t in tasks) + \
             " | rt_polarity linear probe |"
    lines = [header, "|" + "---|" * (len(tasks) + 2)]
    for label in labels:
        scores = [cell([r["score"] for r in rows if r["label"] == label and r["task"] == t]) for t in tasks]
        probe = cell([r["probe"] for r in rows if r["label"] == label and "probe" in r])
        lines.append(f"| {label} | " + " | ".join(scores) + f" | {probe} |")
    lines.append("")
    lines.append("Mean over seeds ± half the range (max - min) / 2. Probe: logistic regression on mean-pooled "
                 "encoder states of the frozen model (scratch: random initialisation).")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
