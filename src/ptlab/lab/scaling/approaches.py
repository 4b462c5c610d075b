"""Hoffmann et al. 2022's approaches 1 and 2: the compute-optimal size read off the runs themselves, not off a fitted
surface. Both end in power laws N_opt = k C^a and D_opt = k' C^b, to set beside approach 3's a = beta / (alpha + beta).

1. The compute frontier: in each band of compute, the run with the lowest loss (Hoffmann took the envelope of the
   training curves; a table of final losses has one point per run, so here a band must hold two runs or more).
2. IsoFLOP parabolas: at each compute level that several runs share, a parabola of loss against log N; its vertex
   is N_opt(C), and D_opt = C / 6 N_opt.

Each needs a ladder shaped for it; where the table does not allow one, the result says why instead of guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptlab.lab.scaling.runs import Runs

MIN_POINTS = 3  # optima a power law is fitted to: two would always fit exactly


@dataclass(frozen=True)
class Optimum:
    """A compute-optimal point: the budget, the size and data that minimise the loss there, and that loss."""
    flops: float
    params: float
    tokens: float
    loss: float


@dataclass(frozen=True)
class Parabola:
    """Loss against log N at one compute level: loss = c[0] (log N)^2 + c[1] log N + c[2], fitted to the level's
    runs, given as (N, loss) `points`."""
    flops: float
    coefficients: tuple[float, float, float]
    points: tuple[tuple[float, float], ...]

    @property
    def log_params_range(self) -> tuple[float, float]:
        logs = np.log([n for n, _ in self.points])
        return float(logs.min()), float(logs.max())


@dataclass(frozen=True)
class Approach:
    """N_opt = params_coefficient * C^params_exponent and the same for D, fitted to `optima`; or, where the runs
    do not allow it, `reason` says why and the exponents are None."""
    name: str
    optima: tuple[Optimum, ...] = ()
    params_exponent: float | None = None
    params_coefficient: float | None = None
    tokens_exponent: float | None = None
    tokens_coefficient: float | None = None
    reason: str | None = None
    parabolas: tuple[Parabola, ...] = ()
    notes: tuple[str, ...] = ()  # levels left out, and why

    @property
    def fitted(self) -> bool:
        return self.reason is None


def _power_laws(name: str, optima: list[Optimum], **extra) -> Approach:
    log_c = np.log([o.flops for o in optima])
    a, log_k = np.polyfit(log_c, np.log([o.params for o in optima]), 1)
    b, log_k_tokens = np.polyfit(log_c, np.log([o.tokens for o in optima]), 1)
    return Approach(name, tuple(optima), float(a), math.exp(log_k), float(b), math.exp(log_k_tokens), **extra)


def compute_frontier(runs: Runs, bins_per_decade: int = 4) -> Approach:
    """Approach 1: the lowest-loss run in each band of 1/`bins_per_decade` of a decade of compute that holds two
    runs or more, and power laws through those runs."""
    name = "compute frontier (approach 1)"
    band = np.floor(np.log10(runs.flops) * bins_per_decade + 1e-9)
    optima = []
    for value in np.unique(band):
        members = np.flatnonzero(band == value)
        if len(members) < 2:  # a lone run is the frontier of nothing
            continue
        best = members[np.argmin(runs.loss[members])]
        optima.append(Optimum(float(runs.flops[best]), float(runs.params[best]), float(runs.tokens[best]),
                              float(runs.loss[best])))
    if len(optima) < MIN_POINTS:
        return Approach(name, tuple(optima), reason=f"{len(optima)} band(s) of compute hold two runs or more; the "
                                                    f"frontier needs {MIN_POINTS}")
    if len({o.params for o in optima}) == 1:
        return Approach(name, tuple(optima), reason="every band's best run has the same size; the ladder's sizes do "
                                                    "not span its budgets")
    return _power_laws(name, optima)


def isoflop_levels(runs: Runs, tolerance: float = 0.02) -> list[np.ndarray]:
    """Indices of the runs at each compute level: runs whose compute is within `tolerance` (relative) of the
    level's smallest."""
    order = np.argsort(runs.flops, kind="stable")
    levels: list[list[int]] = []
    for i in order:
        if levels and runs.flops[i] <= runs.flops[levels[-1][0]] * (1 + tolerance):
            levels[-1].append(int(i))
        else:
            levels.append([int(i)])
    return [np.array(level) for level in levels]


def isoflop_parabolas(runs: Runs, tolerance: float = 0.02) -> Approach:
    """Approach 2: a parabola of loss against log N at each compute level with three sizes or more (runs within
    `tolerance` of one compute share a level); its vertex is N_opt(C) when it is a minimum inside the sizes tried."""
    name = "isoFLOP parabolas (approach 2)"
    optima, parabolas, notes = [], [], []
    for level in isoflop_levels(runs, tolerance):
        if len(np.unique(runs.params[level])) < 3:
            continue
        flops = float(np.exp(np.log(runs.flops[level]).mean()))
        x = np.log(runs.params[level])
        coefficients = np.polyfit(x, runs.loss[level], 2)
        if coefficients[0] <= 0:
            notes.append(f"C {flops:.3g}: the loss has no minimum over the sizes tried")
            continue
        vertex = -coefficients[1] / (2 * coefficients[0])
        if not x.min() <= vertex <= x.max():  # an extrapolated minimum says where to look, not where it is
            notes.append(f"C {flops:.3g}: the minimum lies outside the sizes tried")
            continue
        points = tuple((float(n), float(loss)) for n, loss in zip(runs.params[level], runs.loss[level]))
        parabolas.append(Parabola(flops, tuple(float(c) for c in coefficients), points))
        params = math.exp(vertex)
        optima.append(Optimum(flops, params, flops / (6 * params), float(np.polyval(coefficients, vertex))))
    if len(optima) < MIN_POINTS:
        why = (f"{len(optima)} compute level(s) with a minimum inside three sizes or more; the parabolas need "
               f"{MIN_POINTS} (an isoFLOP ladder: several sizes at each of several budgets)")
        return Approach(name, tuple(optima), reason=why, parabolas=tuple(parabolas), notes=tuple(notes))
    return _power_laws(name, optima, parabolas=tuple(parabolas), notes=tuple(notes))
