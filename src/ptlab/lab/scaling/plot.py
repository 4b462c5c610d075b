"""The scaling plots in one PNG: loss against compute with the fitted law's compute-optimal frontier; the isoFLOP
curves where the runs share compute levels; predicted against measured loss for held-out runs. And strategies side
by side: each one's runs and compute-optimal curve, with their crossings (`plot_comparison`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ptlab.lab.scaling.approaches import Approach
from ptlab.lab.scaling.compare import Comparison
from ptlab.lab.scaling.fit import Fit
from ptlab.lab.scaling.predict import Holdout


def plot_scaling(fit: Fit, output: str | Path, isoflops: Approach | None = None, holdout: Holdout | None = None
                 ) -> Path:
    """Write the panels that apply: always loss against compute; the isoFLOP parabolas when `isoflops` has any;
    predicted against measured when `holdout` is given (its runs are drawn in the first panel too)."""
    plt = _pyplot()
    panels = 1 + bool(isoflops and isoflops.parabolas) + bool(holdout)
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    axes = list(axes[0])
    _loss_against_compute(axes.pop(0), fit, holdout)
    if isoflops and isoflops.parabolas:
        _isoflop_curves(axes.pop(0), isoflops)
    if holdout:
        _predicted_against_measured(axes.pop(0), holdout)
    return _save(figure, output)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(figure, output: str | Path) -> Path:
    plt = _pyplot()
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp.png")  # as ptlab.lab.plot: a crash leaves no half-written PNG
    try:
        figure.savefig(tmp, dpi=120)
        os.replace(tmp, output)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
    return output


def plot_comparison(comparison: Comparison, output: str | Path) -> Path:
    """Each strategy's runs (loss against their FLOPs) and its compute-optimal curve L*(C) with its bootstrap band,
    and a dotted line at each crossing."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 5))
    low, high = comparison.measured
    grid = np.geomspace(low / 10, high * 100, 100)
    shown = []  # the losses the axis must show: runs and central curves (a loose fit's band can run far above)
    for index, curve in enumerate(comparison.curves):
        color = f"C{index % 10}"
        runs = curve.fit.runs
        axis.scatter(runs.flops, runs.loss, color=color, s=14, alpha=0.6)
        shown.append(runs.loss)
        if not curve.has_frontier:
            continue
        central = curve.frontier(grid)
        axis.plot(grid, central, color=color, label=f"{curve.name} L*(C)")
        shown.append(central)
        band = [curve.fit.spread(lambda law, c=c: curve.frontier(c, law) if law.alpha > 0 and law.beta > 0
                                 else np.nan) for c in grid]
        if all(band):
            axis.fill_between(grid, [b[0] for b in band], [b[1] for b in band], color=color, alpha=0.12)
    for crossing in comparison.crossings:
        for flops in crossing.flops:
            if grid[0] <= flops <= grid[-1]:
                axis.axvline(flops, color="gray", linestyle=":", label=f"{crossing.a} = {crossing.b}")
    _limit_losses(axis, shown)
    _label(axis, "training FLOPs C", "loss", "strategies as scaling curves", log_x=True)
    return _save(figure, output)


def _limit_losses(axis, shown: list[np.ndarray]) -> None:
    """The loss axis spans the runs and the central curves with a margin; bootstrap bands are cut at its edges."""
    values = np.concatenate([np.asarray(v, dtype=float).ravel() for v in shown])
    values = values[np.isfinite(values)]
    if len(values):
        low, high = values.min(), values.max()
        margin = 0.1 * (high - low) or 0.05 * abs(high) or 0.1
        axis.set_ylim(low - margin, high + margin)


def _loss_against_compute(axis, fit: Fit, holdout: Holdout | None) -> None:
    runs = fit.runs
    compute = 6 * runs.params * runs.tokens
    points = axis.scatter(compute, runs.loss, c=np.log10(runs.params), cmap="viridis", s=18, label="runs (fitted)")
    axis.figure.colorbar(points, ax=axis, label="log10 parameters")
    every = [compute]
    if holdout:
        held = np.array([6 * p.params * p.tokens for p in holdout.predictions])
        axis.scatter(held, [p.measured for p in holdout.predictions], marker="*", s=90, color="C3",
                     label="held out")
        every.append(held)
    every = np.concatenate(every)
    grid = np.geomspace(every.min(), every.max() * 10, 100)
    law = fit.law
    shown = [runs.loss] + ([np.array([p.measured for p in holdout.predictions])] if holdout else [])
    if law.alpha > 0 and law.beta > 0:
        n, d = law.optimal(grid)
        shown.append(law.loss(n, d))
        axis.plot(grid, shown[-1], color="black", label="law's compute-optimal frontier")
        band = [fit.spread(lambda b, c=c: b.loss(*b.optimal(c)) if b.alpha > 0 and b.beta > 0 else np.nan)
                for c in grid]
        if all(band):
            axis.fill_between(grid, [b[0] for b in band], [b[1] for b in band], color="black", alpha=0.12,
                              label=f"{fit.level:.0%} bootstrap interval")
    _limit_losses(axis, shown)
    _label(axis, "compute C = 6ND (FLOPs)", "loss", "loss against compute", log_x=True)


def _isoflop_curves(axis, isoflops: Approach) -> None:
    for index, parabola in enumerate(isoflops.parabolas):
        color = f"C{index % 10}"
        axis.scatter(*zip(*parabola.points), color=color, s=18)
        x = np.linspace(*parabola.log_params_range, 50)
        axis.plot(np.exp(x), np.polyval(parabola.coefficients, x), color=color, label=f"C {parabola.flops:.2g}")
        vertex = -parabola.coefficients[1] / (2 * parabola.coefficients[0])
        axis.plot(np.exp(vertex), np.polyval(parabola.coefficients, vertex), marker="v", color=color)
    _label(axis, "parameters N", "loss", "isoFLOP curves (approach 2)", log_x=True)


def _predicted_against_measured(axis, holdout: Holdout) -> None:
    predictions = holdout.predictions
    measured = np.array([p.measured for p in predictions])
    predicted = np.array([p.predicted for p in predictions])
    axis.plot(measured, predicted, "*", color="C3", markersize=10)
    # each interval drawn from its own ends: with few resamples a point estimate can fall outside its bootstrap
    # percentile interval, which an error bar (lengths from the point) cannot show
    ranged = [(m, p.interval) for m, p in zip(measured, predictions) if p.interval]
    if ranged:
        axis.vlines([m for m, _ in ranged], [i[0] for _, i in ranged], [i[1] for _, i in ranged], color="C3")
    low, high = min(measured.min(), predicted.min()), max(measured.max(), predicted.max())
    pad = (high - low) * 0.2 or high * 0.02
    axis.plot([low - pad, high + pad], [low - pad, high + pad], color="gray", linestyle="--",
              label="predicted = measured")
    _label(axis, "measured loss", "predicted loss (fit without these runs)", f"{len(predictions)} held-out run(s)")


def _label(axis, x: str, y: str, title: str, log_x: bool = False) -> None:
    """Every panel's axes, title, grid and legend, alike."""
    if log_x:
        axis.set_xscale("log")
    axis.set_xlabel(x)
    axis.set_ylabel(y)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
