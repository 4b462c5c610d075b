"""Loss curves of one or several runs in one PNG (`ptlab plot RUN_DIR ... --output curves.png`)."""

from __future__ import annotations

import os
from pathlib import Path

from ptlab.errors import PtlabError
from ptlab.train.runlog import read_metrics


def plot_runs(run_dirs: list[str | Path], output: str | Path, x: str = "step", log_y: bool = False) -> Path:
    """Training loss (thin) and validation loss (markers) against `x` ("step" or "tokens") for each run, and
    beside them validation bits per byte where a run logged it (`val_bpb`): the unit in which runs with different
    tokenizers compare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in ("step", "tokens"):
        raise PtlabError(f"--x must be 'step' or 'tokens', got {x!r}")
    runs = [(run_dir, read_metrics(run_dir)) for run_dir in run_dirs]
    with_bpb = any("val_bpb" in r for _, records in runs for r in records)
    figure, axes = plt.subplots(1, 2 if with_bpb else 1, figsize=(14 if with_bpb else 8, 5), squeeze=False)
    axis, bpb_axis = axes[0][0], axes[0][-1]
    for index, (run_dir, records) in enumerate(runs):
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
        bpb = [r for r in val if r.get("val_bpb") is not None]
        if with_bpb and bpb:
            bpb_axis.plot([position[r["step"]] for r in bpb], [r["val_bpb"] for r in bpb], color=color, marker="o",
                          markersize=3, linestyle="--", label=f"{label} validation")
    axis.set_ylabel("loss (nats per target token)")
    if with_bpb:
        bpb_axis.set_ylabel("validation bits per UTF-8 byte of the targets")
    for panel in axes[0]:
        panel.set_xlabel("optimizer step" if x == "step" else "tokens")
        if log_y:
            panel.set_yscale("log")
        panel.grid(alpha=0.3)
        panel.legend(fontsize=8)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    os.replace(tmp, output)
    return output
