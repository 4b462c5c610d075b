"""Loss curves of one or several runs in one PNG (`ptlab plot RUN_DIR ... --output curves.png`)."""

from __future__ import annotations

import os
from pathlib import Path

from ptlab.errors import PtlabError
from ptlab.train.runlog import read_metrics


def plot_runs(run_dirs: list[str | Path], output: str | Path, x: str = "step", log_y: bool = False) -> Path:
    """Training loss (thin) and validation loss (markers) against `x` ("step" or "tokens") for each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in ("step", "tokens"):
        raise PtlabError(f"--x must be 'step' or 'tokens', got {x!r}")
    figure, axis = plt.subplots(figsize=(8, 5))
    for index, run_dir in enumerate(run_dirs):
        records = read_metrics(run_dir)
        train = [r for r in records if "loss" in r and "event" not in r]
        if not train:
            raise PtlabError(f"{run_dir}/metrics.jsonl has no training records")
        color = f"C{index % 10}"
        label = Path(run_dir).name
        axis.plot([r[x] for r in train], [r["loss"] for r in train], color=color, linewidth=0.8, alpha=0.7,
                  label=f"{label} train")
        position = {0: 0, **{r["step"]: r[x] for r in train}}  # where each step sits on the x axis
        val = [r for r in records if "val_loss" in r and "event" not in r and r["step"] in position]
        if val:
            axis.plot([position[r["step"]] for r in val], [r["val_loss"] for r in val], color=color, marker="o",
                      markersize=3, linestyle="--", label=f"{label} validation")
    axis.set_xlabel("optimizer step" if x == "step" else "tokens")
    axis.set_ylabel("loss (nats per target token)")
    if log_y:
        axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    os.replace(tmp, output)
    return output
