"""A study's results as tables and a chart: mean and spread per cell and task over seeds (table.md, table.csv,
chart.png)."""

from __future__ import annotations

import csv
import os
import statistics
import sys
from pathlib import Path

from ptlab.files import write_text_atomic
from ptlab.lab.study.plan import Plan, cell_figures, task_label


def summarize(plan: Plan, rows: list[dict]) -> list[dict]:
    """Per cell: mean and std over seeds per task, and the average over tasks of the task means."""
    tasks = [task_label(t) for t in plan.study.tasks]
    summary = []
    for cell, cfg in plan.cells:
        figures = cell_figures(cfg)
        entry = {"cell": cell.name, "architecture": cell.architecture,
                 "objective": cfg.objective.name if cell.pretrain else "none",
                 "parameters": figures["parameters"], "flops_per_example": figures["flops_per_example"],
                 "pretrain_tokens": figures["pretrain_tokens"] if cell.pretrain else 0, "tasks": {}}
        mine = [r for r in rows if r["cell"] == cell.name]
        for task in tasks:
            seen = [r for r in mine if r["task"] == task]
            scores = [r["score"] for r in seen]
            if seen:
                entry["metric_" + task] = seen[0]["metric"]
            entry["tasks"][task] = (statistics.mean(scores) if scores else None,
                                    statistics.stdev(scores) if len(scores) > 1 else 0.0, len(scores))
        entry["pretrain_val_loss"] = mine[0].get("pretrain_val_loss") if mine else None
        means = [m for m, _, n in entry["tasks"].values() if n]
        entry["average"] = statistics.mean(means) if len(means) == len(tasks) else None
        entry["minutes"] = (sum(r["finetune_seconds"] for r in mine) + (mine[0]["pretrain_seconds"] if mine else 0)) / 60
        summary.append(entry)
    return summary


def write_tables(plan: Plan, rows: list[dict], out=sys.stdout) -> Path:
    summary = summarize(plan, rows)
    tasks = [task_label(t) for t in plan.study.tasks]
    metric_of = {task: next((e["metric_" + task] for e in summary if "metric_" + task in e), "") for task in tasks}
    header = ["cell", "architecture", "objective", "params", "FLOPs/ex", "pre-train val loss"] + [
        f"{t} ({metric_of[t]})" for t in tasks] + ["average", "minutes"]
    md = [f"Study `{plan.run_dir}` (size {plan.study.size}; fine-tuning seeds {plan.study.seeds}; mean ± std over "
          "seeds; average = mean of the task means)", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    csv_rows = []
    for e in summary:
        cells = [e["cell"], e["architecture"], e["objective"], f"{e['parameters'] / 1e6:.1f}M",
                 f"{e['flops_per_example'] / 1e9:.2f}G",
                 f"{e['pretrain_val_loss']:.2f}" if e["pretrain_val_loss"] is not None else "-"]
        record = {"cell": e["cell"], "architecture": e["architecture"], "objective": e["objective"],
                  "parameters": e["parameters"], "flops_per_example": e["flops_per_example"],
                  "pretrain_tokens": e["pretrain_tokens"], "pretrain_val_loss": e["pretrain_val_loss"]}
        for task in tasks:
            mean, std, n = e["tasks"][task]
            cells.append(f"{mean:.1f} ± {std:.1f}" if n else "-")
            record[f"{task}_mean"], record[f"{task}_std"], record[f"{task}_seeds"] = mean, std, n
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
    ax.set_ylabel("score (mean ± std over seeds)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
