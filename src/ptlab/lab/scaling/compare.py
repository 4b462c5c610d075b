"""Strategies compared as scaling curves: one fitted law per strategy (an objective, an architecture), their
exponents side by side, and where their compute-optimal curves cross, if they do. The T5 paper compared strategies
at one budget; a law per strategy says which one is ahead at every budget, and from where on.

Each law's compute-optimal curve is L*(C) = min over N of L(N, D) on the line C = k N D, where k is the FLOPs per
parameter and token of that strategy's own runs (the median of C / (N D) over its table: 6 in Chinchilla's count,
more with attention, and different for an encoder-decoder, whose N parameters do not all see every token). With
k in place of 6 the minimum keeps Hoffmann et al.'s closed form: L*(C) = L(N*(6C/k), D*(6C/k)). Its reducible part
L*(C) - E falls as C^-gamma with gamma = alpha beta / (alpha + beta), the law's compute exponent.

Curves cross where L*_a(C) - L*_b(C) changes sign: searched on a grid of log C from a decade below the smallest run
to CROSSING_SEARCH_MAX FLOPs and refined with Brent's method. Each pair of bootstrap laws (the i-th of each fit's
resamples) is searched the same way, for an interval of the crossing and the share of pairs that cross at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import brentq

from ptlab.errors import PtlabError
from ptlab.lab.scaling.fit import Fit, Law
from ptlab.lab.scaling.report import _interval

CROSSING_SEARCH_MAX = 1e27  # FLOPs: beyond any training run to date (GPT-4-class runs are ~2e25)
GRID_POINTS = 400


def optimal_loss(law: Law, flops_per_param_token: float, flops):
    """L*(C): the law's loss at its compute-optimal N and D on the line C = k N D."""
    params, tokens = law.optimal(np.asarray(flops, dtype=float) * 6 / flops_per_param_token)
    return law.loss(params, tokens)


def compute_exponent(law: Law) -> float:
    """gamma in L*(C) - E ~ C^-gamma."""
    return law.alpha * law.beta / (law.alpha + law.beta) if law.alpha + law.beta > 0 else math.nan


def params_exponent(law: Law) -> float:
    """a in N* ~ C^a (NaN for a law whose exponents do not add up to a positive number)."""
    return law.params_exponent if law.alpha + law.beta > 0 else math.nan


@dataclass(frozen=True)
class Curve:
    """A strategy's fitted law and the FLOPs per parameter and token of its runs."""
    name: str
    fit: Fit
    flops_per_param_token: float

    @classmethod
    def of(cls, name: str, fit: Fit) -> Curve:
        runs = fit.runs
        return cls(name, fit, float(np.median(runs.flops / (runs.params * runs.tokens))))

    @property
    def has_frontier(self) -> bool:
        return self.fit.law.alpha > 0 and self.fit.law.beta > 0

    def frontier(self, flops, law: Law | None = None):
        return optimal_loss(law or self.fit.law, self.flops_per_param_token, flops)


def crossings(a: Curve, b: Curve, low: float, high: float, law_a: Law | None = None, law_b: Law | None = None
              ) -> list[float]:
    """The computes in [low, high] where the two compute-optimal curves cross (the difference changes sign)."""
    law_a, law_b = law_a or a.fit.law, law_b or b.fit.law
    if not all(law.alpha > 0 and law.beta > 0 for law in (law_a, law_b)):
        return []

    def difference(log_c):
        with np.errstate(all="ignore"):
            return a.frontier(np.exp(log_c), law_a) - b.frontier(np.exp(log_c), law_b)

    grid = np.linspace(math.log(low), math.log(high), GRID_POINTS)
    values = difference(grid)
    if np.all(values[np.isfinite(values)] == 0):
        return []  # one curve twice
    found = []
    for i in np.flatnonzero(np.isfinite(values[:-1]) & np.isfinite(values[1:]) & (values[:-1] * values[1:] <= 0)):
        if values[i] == 0 and i > 0 and values[i - 1] == 0:
            continue  # the same curve: no crossing
        root = grid[i] if values[i] == 0 else brentq(difference, grid[i], grid[i + 1], xtol=1e-12)
        if not found or not math.isclose(found[-1], math.exp(root), rel_tol=1e-9):
            found.append(math.exp(root))
    return found


@dataclass(frozen=True)
class Crossing:
    a: str
    b: str
    flops: list[float]  # where the fitted curves cross, in the search range
    lower_below: str  # the curve that is lower at the low end of the range
    bootstrap_share: float | None  # share of bootstrap pairs whose curves cross in the range
    interval: tuple[float, float] | None  # percentile interval of the first crossing over those pairs


@dataclass(frozen=True)
class Comparison:
    curves: list[Curve]
    crossings: list[Crossing]
    search: tuple[float, float]  # the compute range searched for crossings
    measured: tuple[float, float]  # the compute range of the runs

    def to_json(self) -> dict:
        curves = []
        for curve in self.curves:
            fit = curve.fit
            gamma = fit.spread(compute_exponent)
            share = fit.spread(params_exponent)
            curves.append({"name": curve.name, "runs": len(fit.runs), "source": fit.runs.source,
                           "flops_per_param_token": curve.flops_per_param_token, "law": fit.to_json(),
                           "compute_exponent": {"value": compute_exponent(fit.law),
                                                "interval": list(gamma) if gamma else None},
                           "params_exponent": {"value": fit.law.params_exponent,
                                               "interval": list(share) if share else None}})
        return {"curves": curves, "search_flops": list(self.search), "measured_flops": list(self.measured),
                "crossings": [{"a": c.a, "b": c.b, "flops": c.flops, "lower_below": c.lower_below,
                               "bootstrap_share": c.bootstrap_share,
                               "interval": list(c.interval) if c.interval else None} for c in self.crossings]}


def compare(curves: list[Curve]) -> Comparison:
    """Every pair of curves: where they cross between a decade below the smallest run and CROSSING_SEARCH_MAX."""
    if len(curves) < 2:
        raise PtlabError(f"a comparison needs two curves or more, got {len(curves)}")
    names = [c.name for c in curves]
    if len(set(names)) != len(names):
        raise PtlabError(f"two curves have the same name: {sorted(n for n in names if names.count(n) > 1)[0]!r}")
    every = np.concatenate([c.fit.runs.flops for c in curves])
    measured = (float(every.min()), float(every.max()))
    search = (measured[0] / 10, max(CROSSING_SEARCH_MAX, measured[1] * 10))
    found = []
    for i, a in enumerate(curves):
        for b in curves[i + 1:]:
            if not (a.has_frontier and b.has_frontier):
                continue
            with np.errstate(all="ignore"):
                lower = a.name if a.frontier(search[0]) <= b.frontier(search[0]) else b.name
            pairs = min(len(a.fit.samples), len(b.fit.samples))
            firsts = [next(iter(crossings(a, b, *search, law_a, law_b)), math.nan)
                      for law_a, law_b in zip(a.fit.bootstrap_laws[:pairs], b.fit.bootstrap_laws[:pairs])]
            found.append(Crossing(a.name, b.name, crossings(a, b, *search), lower,
                                  float(np.isfinite(firsts).mean()) if pairs else None,
                                  a.fit.percentiles(firsts) if pairs else None))
    return Comparison(curves, found, search, measured)


def format_comparison(comparison: Comparison, note: str = "") -> str:
    lines = ["strategies as scaling curves: one law per strategy; L*(C) is its loss at the compute-optimal N and D "
             "on C = k N D (k: its runs' FLOPs per parameter and token)",
             f"{'strategy':<16} {'runs':>4} {'k':>6}  {'alpha':<22} {'beta':<22} {'gamma (L*-E ~ C^-gamma)':<24} "
             f"{'N* ~ C^a':<20} {'E':>7}"]
    for curve in comparison.curves:
        fit, law = curve.fit, curve.fit.law
        fmt = lambda v: f"{v:.3f}"  # noqa: E731
        cell = lambda value, interval: f"{value:.3f}{_interval(interval, fmt)}"  # noqa: E731
        share = fit.spread(params_exponent)
        lines.append(f"{curve.name[:16]:<16} {len(fit.runs):>4} {curve.flops_per_param_token:>6.2f}  "
                     f"{cell(law.alpha, fit.interval('alpha')):<22} {cell(law.beta, fit.interval('beta')):<22} "
                     f"{cell(compute_exponent(law), fit.spread(compute_exponent)):<24} "
                     f"{cell(law.params_exponent, share):<20} {law.E:>7.4g}")
    low, high = comparison.search
    lines.append(f"crossings of the compute-optimal curves between {low:.2g} and {high:.2g} FLOPs (runs: "
                 f"{comparison.measured[0]:.2g} to {comparison.measured[1]:.2g}):")
    for c in comparison.crossings:
        other = c.b if c.lower_below == c.a else c.a
        boot = ""
        if c.bootstrap_share is not None:
            boot = (f"; {c.bootstrap_share:.0%} of bootstrap pairs cross"
                    + (f", first at {c.interval[0]:.2g} to {c.interval[1]:.2g}" if c.interval else ""))
        if not c.flops:
            lines.append(f"  {c.a} and {c.b}: no crossing; {c.lower_below} is lower throughout{boot}")
            continue
        where = ", ".join(f"{f:.3g}" + (" (inside the runs' range)" if comparison.measured[0] <= f
                                        <= comparison.measured[1] else
                                        f" ({math.log10(f / comparison.measured[1]):.1f} decades beyond the largest "
                                        "run)" if f > comparison.measured[1] else " (below the smallest run)")
                          for f in c.flops)
        order = (f"below it {c.lower_below} is lower, above it {other}" if len(c.flops) == 1 else
                 f"below the first {c.lower_below} is lower, and the lead changes at each")
        lines.append(f"  {c.a} and {c.b} cross at C = {where}: {order}{boot}")
    skipped = [c.name for c in comparison.curves if not c.has_frontier]
    if skipped:
        lines.append(f"  no compute-optimal curve (alpha or beta <= 0): {', '.join(skipped)}")
    if note:
        lines.append(note)
    return "\n".join(lines)


def named_table(argument: str) -> tuple[str, str]:
    """`NAME=PATH` or `PATH` (named after its folder when the file is a ladder's points.csv, else its stem)."""
    name, sep, path = argument.partition("=")
    if sep and name and "/" not in name:
        return name, path
    path = Path(argument)
    return (path.parent.name if path.stem == "points" and path.parent.name else path.stem), argument
