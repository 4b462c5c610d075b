"""A study's results as tables and a chart: mean and spread per cell and task over all its runs (pre-training
seeds x fine-tuning seeds), and the spread across pre-training seeds alone (table.md, table.csv, chart.png)."""

from __future__ import annotations

import csv
import os
import statistics
import sys
from pathlib import Path

from ptlab.files import write_text_atomic
from ptlab.lab.study.estimate import cell_figures
from ptlab.lab.study.plan import Plan, adapts_per_task, task_label


def result_key(row: dict, plan: Plan) -> tuple:
    """(cell, task, pre-training seed, seed) of a result line; a line written before studies had pre-training
    seeds is the pre-training with the base config's seed (its cell pre-trains) or none."""
    if "pretrain_seed" in row:
        return row["cell"], row["task"], row["pretrain_seed"], row["seed"]
    cell, cfg = next(((c, cfg) for c, cfg in plan.cells if c.name == row["cell"]), (None, None))
    return row["cell"], row["task"], cfg.seed if cell is not None and cell.pretrain else None, row["seed"]


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(plan: Plan, rows: list[dict]) -> list[dict]:
    """Per cell and task: mean and std over all its runs (pre-training seeds x fine-tuning seeds), their count, and
    the std across pre-training seeds of the per-pre-training-seed means (None with fewer than two); per cell the
    average over tasks of the task means (when it ran every task). Rows of runs the plan does not hold (seeds
    since removed) do not count."""
    tasks = [task_label(t) for t in plan.study.tasks]
    planned = {run.key for run in plan.finetunes}
    latest = {key: row for row in rows if (key := result_key(row, plan)) in planned}
    summary = []
    for cell, cfg in plan.cells:
        figures = cell_figures(cfg)
        entry = {"cell": cell.name, "architecture": cell.architecture,
                 "objective": cfg.objective.name if cell.pretrain else "none",
                 "parameters": figures["parameters"], "flops_per_example": figures["flops_per_example"],
                 "pretrain_tokens": figures["pretrain_tokens"] if cell.pretrain else 0, "tasks": {},
                 "pretrain_seed_std": {}}
        mine = {key: row for key, row in latest.items() if key[0] == cell.name}
        for task in tasks:
            seen = {key: row for key, row in mine.items() if key[1] == task}
            scores = [row["score"] for row in seen.values()]
            if seen:
                entry["metric_" + task] = next(iter(seen.values()))["metric"]
            entry["tasks"][task] = (statistics.mean(scores) if scores else None, _std(scores), len(scores))
            by_seed: dict = {}
            for key, row in seen.items():
                by_seed.setdefault(key[2], []).append(row["score"])
            means = [statistics.mean(v) for s, v in by_seed.items() if s is not None]
            entry["pretrain_seed_std"][task] = _std(means) if len(means) > 1 else None
        runs = {}  # one entry per pre-training run: its seconds, validation loss and bits per byte
        per_task = cell.pretrain and adapts_per_task(plan.study, cell)
        for key, row in mine.items():
            runs[(key[2], key[1] if per_task else None)] = (row["pretrain_seconds"], row.get("pretrain_val_loss"),
                                                            row.get("pretrain_val_bpb"))  # absent in older rows
        for column, figure in (("pretrain_val_loss", 1), ("pretrain_val_bpb", 2)):
            values = [run[figure] for run in runs.values() if run[figure] is not None]
            entry[column] = statistics.mean(values) if values else None
        means = [m for m, _, n in entry["tasks"].values() if n]
        entry["average"] = statistics.mean(means) if len(means) == len(tasks) else None
        entry["minutes"] = (sum(r["finetune_seconds"] for r in mine.values())
                            + sum(run[0] for run in runs.values())) / 60
        summary.append(entry)
    return summary


def caption(plan: Plan) -> str:
    """What the table's numbers are means and spreads over, in words."""
    study = plan.study
    if not study.pretrain_seeds:
        return (f"Study `{plan.run_dir}` (size {study.size}; fine-tuning seeds {study.seeds}; mean ± std over "
                "seeds; average = mean of the task means)")
    text = (f"Study `{plan.run_dir}` (size {study.size}): mean ± std over {len(study.pretrain_seeds)} pre-training "
            f"x {len(study.seeds)} fine-tuning seeds (pre-training seeds {study.pretrain_seeds}, fine-tuning seeds "
            f"{study.seeds})")
    if len(study.pretrain_seeds) > 1:
        text += ("; [s]: the std across pre-training seeds of the per-pre-training-seed means (compare it with the "
                 "whole std to see which noise dominates)")
    if any(not cell.pretrain for cell in study.cells):
        text += f"; cells without pre-training: over the {len(study.seeds)} fine-tuning seeds (no pre-training seed)"
    return text + "; -: a task the cell does not run; average = mean of the task means"


def write_tables(plan: Plan, rows: list[dict], out=sys.stdout) -> Path:
    summary = summarize(plan, rows)
    tasks = [task_label(t) for t in plan.study.tasks]
    metric_of = {task: next((e["metric_" + task] for e in summary if "metric_" + task in e), "") for task in tasks}
    header = ["cell", "architecture", "objective", "params", "FLOPs/ex", "pre-train val loss",
              "pre-train val bpb"] + [
        f"{t} ({metric_of[t]})" for t in tasks] + ["average", "minutes"]
    md = [caption(plan), "",
          "| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    csv_rows = []
    for e in summary:
        cells = [e["cell"], e["architecture"], e["objective"], f"{e['parameters'] / 1e6:.1f}M",
                 f"{e['flops_per_example'] / 1e9:.2f}G",
                 f"{e['pretrain_val_loss']:.2f}" if e["pretrain_val_loss"] is not None else "-",
                 f"{e['pretrain_val_bpb']:.3f}" if e["pretrain_val_bpb"] is not None else "-"]
        record = {"cell": e["cell"], "architecture": e["architecture"], "objective": e["objective"],
                  "parameters": e["parameters"], "flops_per_example": e["flops_per_example"],
                  "pretrain_tokens": e["pretrain_tokens"], "pretrain_val_loss": e["pretrain_val_loss"],
                  "pretrain_val_bpb": e["pretrain_val_bpb"]}
        for task in tasks:
            mean, std, n = e["tasks"][task]
            spread = e["pretrain_seed_std"][task]
            spread_text = f" [{spread:.1f}]" if spread is not None else ""
            cells.append(f"{mean:.1f} ± {std:.1f}{spread_text}" if n else "-")
            record[f"{task}_mean"], record[f"{task}_std"], record[f"{task}_seeds"] = mean, std, n
            record[f"{task}_pretrain_seed_std"] = spread
        cells.append(f"{e['average']:.1f}" if e["average"] is not None else "-")
        cells.append(f"{e['minutes']:.1f}")
        record["average"], record["minutes"] = e["average"], e["minutes"]
        md.append("| " + " | ".join(cells) + " |")
        csv_rows.append(record)
    table = "\n".join(md) + "\n"
    write_text_atomic(plan.run_dir / "table.md", table)
    tmp = plan.run_dir / "table.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        writer.writeheader()
        writer.writerows(csv_rows)
    os.replace(tmp, plan.run_dir / "table.csv")
    _chart(summary, tasks, plan.run_dir / "chart.png")
    print("\n" + table, file=out, flush=True)
    return plan.run_dir / "table.md"


def _chart(summary: list[dict], tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [e["cell"] for e in summary]
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4.5))
    for i, task in enumerate(tasks):
        means = [e["tasks"][task][0] if e["tasks"][task][2] else np.nan for e in summary]
        stds = [e["tasks"][task][1] for e in summary]
        ax.bar(np.arange(len(names)) + (i - (len(tasks) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=task)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("score (mean ± std over all runs)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
